//! The router: the site with serve-or-refer, the `/v1/` peer API, `/metrics`, `/admin`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt;
use metrics::{counter, gauge};
use peercache_core::decide::{Decision, decide, target_period_ms, target_speed};
use peercache_core::hash::ObjectHash;
use peercache_core::headers::{self, Advertisement, ClientHeader, ObjectHeader};
use peercache_core::protocol::{
    Announce, AnnounceResponse, ObjectInfo, Outcome, Proxy, Referral, RegisterRequest,
    RegisterResponse, Report, SERVER_PROXY_ID,
};
use peercache_core::shareable::request_shareable;
use tower_http::trace::TraceLayer;

use crate::config::Config;
use crate::egress::EgressPipe;
use crate::error::ApiError;
use crate::site::{Site, SiteError, SiteObject};
use crate::table::{Table, TableError};

/// Largest JSON body the API accepts.
pub const MAX_API_BODY: usize = 64 * 1024;
/// Most hashes in one announce.
pub const MAX_ANNOUNCE_HASHES: usize = 10_000;

/// Live figures for `/admin` (the same events also go to the metrics recorder).
#[derive(Debug, Default)]
pub struct Figures {
    /// `200`s with a body.
    pub served: AtomicU64,
    /// `300`s.
    pub referred: AtomicU64,
    /// Body bytes sent.
    pub bytes_served: AtomicU64,
    /// Bytes clients reported receiving from peers.
    pub bytes_from_peers: AtomicU64,
    /// Mismatch reports.
    pub mismatches: AtomicU64,
}

/// Shared state of one server process.
#[derive(Debug)]
pub struct AppState {
    /// Settings.
    pub config: Config,
    /// The object registry.
    pub site: Site,
    /// The look-up table.
    pub table: Table,
    /// The egress model and throttle.
    pub egress: EgressPipe,
    /// Live figures.
    pub figures: Figures,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    tls: bool,
}

impl AppState {
    /// State for `config`.
    pub fn new(
        config: Config,
        metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
        tls: bool,
    ) -> Self {
        for name in [
            "peercache_requests_served_total",
            "peercache_requests_referred_total",
            "peercache_bytes_served_total",
            "peercache_bytes_reported_from_peers_total",
            "peercache_announces_total",
            "peercache_mismatch_reports_total",
        ] {
            counter!(name).increment(0);
        }
        Self {
            site: Site::new(config.root.clone()),
            table: Table::new(config.peer_ttl, config.max_strikes),
            egress: EgressPipe::new(config.egress_limit),
            figures: Figures::default(),
            config,
            metrics,
            tls,
        }
    }

    /// Expires lapsed peers and refreshes gauges every few seconds.
    pub fn spawn_housekeeping(self: Arc<Self>) {
        let weak = Arc::downgrade(&self);
        drop(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(2));
            loop {
                tick.tick().await;
                let Some(state) = weak.upgrade() else { break };
                let now = Instant::now();
                state.table.expire(now);
                let s = state.table.stats(now);
                gauge!("peercache_peers", "state" => "live").set(s.peers as f64);
                gauge!("peercache_peers", "state" => "serving").set(s.serving_peers as f64);
                gauge!("peercache_peers", "state" => "delisted").set(s.delisted as f64);
                gauge!("peercache_objects_listed").set(s.objects as f64);
            }
        });
    }

    fn own_url(&self, headers: &HeaderMap) -> String {
        if let Some(url) = &self.config.public_url {
            return url.trim_end_matches('/').to_string();
        }
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("localhost");
        format!("{}://{host}", if self.tls { "https" } else { "http" })
    }
}

/// Builds the router.
pub fn app(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/peers", post(register))
        .route("/v1/announce", post(announce))
        .route("/v1/report", post(report))
        .route("/v1/objects/{hash}", get(object_by_hash))
        .route("/v1/objects/{hash}/peers", get(object_peers))
        .route("/metrics", get(metrics_text))
        .route("/admin", get(admin))
        .layer(DefaultBodyLimit::max(MAX_API_BODY))
        .fallback(site)
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

async fn register(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Result<Json<RegisterRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<RegisterResponse>, ApiError> {
    let Json(req) = body?;
    if !headers::is_peer_id(&req.peer_id) {
        return Err(ApiError::BadRequest(
            "peer_id must be 1-64 characters of [A-Za-z0-9_-]".into(),
        ));
    }
    if req.port == Some(0) {
        return Err(ApiError::BadRequest("port must not be 0".into()));
    }
    let addr = state
        .table
        .register(&req.peer_id, peer.ip(), req.port, req.load, Instant::now())
        .map_err(|e| match e {
            TableError::UnknownPeer => ApiError::BadRequest("peer is delisted".into()),
            TableError::Full => ApiError::Internal("peer table full".into()),
        })?;
    tracing::info!(peer = %req.peer_id, ?addr, "peer registered");
    Ok(Json(RegisterResponse {
        peer_id: req.peer_id,
        addr,
        ttl_secs: state.table.ttl().as_secs(),
    }))
}

async fn announce(
    State(state): State<Arc<AppState>>,
    body: Result<Json<Announce>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<AnnounceResponse>, ApiError> {
    let Json(a) = body?;
    if a.have.len() + a.dropped.len() > MAX_ANNOUNCE_HASHES {
        return Err(ApiError::BadRequest(format!(
            "at most {MAX_ANNOUNCE_HASHES} hashes per announce"
        )));
    }
    counter!("peercache_announces_total").increment(1);
    let (known, rejected): (Vec<ObjectHash>, Vec<ObjectHash>) =
        a.have.iter().partition(|h| state.site.knows(h));
    let accepted = state
        .table
        .announce(&a.peer_id, &known, &a.dropped, a.load, Instant::now())
        .map_err(|_| ApiError::UnknownPeer(a.peer_id.clone()))?;
    Ok(Json(AnnounceResponse {
        accepted,
        rejected,
        ttl_secs: state.table.ttl().as_secs(),
    }))
}

async fn report(
    State(state): State<Arc<AppState>>,
    body: Result<Json<Report>, axum::extract::rejection::JsonRejection>,
) -> Result<StatusCode, ApiError> {
    let Json(r) = body?;
    let outcome = match r.outcome {
        Outcome::Served => "served",
        Outcome::Mismatch => "mismatch",
        Outcome::Failed => "failed",
    };
    counter!("peercache_reports_total", "outcome" => outcome).increment(1);
    if r.outcome == Outcome::Served && r.source != SERVER_PROXY_ID {
        counter!("peercache_bytes_reported_from_peers_total").increment(r.bytes);
        state
            .figures
            .bytes_from_peers
            .fetch_add(r.bytes, Ordering::Relaxed);
    }
    if r.outcome == Outcome::Mismatch {
        counter!("peercache_mismatch_reports_total").increment(1);
        state.figures.mismatches.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(source = %r.source, hash = %r.hash, "mismatch reported");
    }
    state.table.report(&r);
    Ok(StatusCode::NO_CONTENT)
}

async fn object_peers(
    State(state): State<Arc<AppState>>,
    Path(hash): Path<String>,
) -> Result<Json<Vec<Proxy>>, ApiError> {
    let hash: ObjectHash = hash
        .parse()
        .map_err(|e: peercache_core::hash::InvalidHash| ApiError::BadRequest(e.to_string()))?;
    Ok(Json(state.table.holders(
        &hash,
        None,
        Instant::now(),
        state.config.max_proxies,
    )))
}

async fn object_by_hash(
    State(state): State<Arc<AppState>>,
    method: Method,
    Path(hash): Path<String>,
) -> Result<Response, ApiError> {
    let hash: ObjectHash = hash
        .parse()
        .map_err(|e: peercache_core::hash::InvalidHash| ApiError::BadRequest(e.to_string()))?;
    let st = state.clone();
    let obj = tokio::task::spawn_blocking(move || st.site.by_hash(&hash))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .ok_or(ApiError::NotFound)?;
    send_object(&state, &obj, method == Method::HEAD).await
}

async fn metrics_text(State(state): State<Arc<AppState>>) -> Response {
    match &state.metrics {
        Some(h) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            h.render(),
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "metrics recorder not installed").into_response(),
    }
}

async fn admin(State(state): State<Arc<AppState>>) -> Html<String> {
    let f = &state.figures;
    let served = f.bytes_served.load(Ordering::Relaxed);
    let from_peers = f.bytes_from_peers.load(Ordering::Relaxed);
    let offload = if served + from_peers > 0 {
        100.0 * from_peers as f64 / (served + from_peers) as f64
    } else {
        0.0
    };
    let stats = state.table.stats(Instant::now());
    let mut rows = String::new();
    for row in state.table.peer_rows() {
        let load = row
            .load
            .map_or("-".to_string(), |l| format!("{}/{}", l.active, l.limit));
        let (strikes, holdings) = (row.strikes, row.holdings);
        rows.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{load}</td><td>{strikes}</td><td>{holdings}</td></tr>",
            html_escape(&row.id),
            html_escape(row.addr.as_deref().unwrap_or("(client only)")),
        ));
    }
    Html(format!(
        r#"<!doctype html><html><head><meta charset="utf-8"><title>peercache admin</title>
<meta http-equiv="refresh" content="2">
<style>body{{font:14px system-ui;margin:2em}}td,th{{padding:.2em .8em;text-align:left}}</style></head>
<body><h1>peercache server</h1>
<p>Requests served: <b id="served">{}</b> · referred: <b id="referred">{}</b></p>
<p>Bytes served: <b>{served}</b> · reported from peers: <b>{from_peers}</b> · offload: <b id="offload">{offload:.1}%</b></p>
<p>Live peers: {} (serving {}), objects listed: {}, delisted: {}, mismatch reports: {}</p>
<table><tr><th>peer</th><th>address</th><th>load</th><th>strikes</th><th>objects</th></tr>{rows}</table>
</body></html>"#,
        f.served.load(Ordering::Relaxed),
        f.referred.load(Ordering::Relaxed),
        stats.peers,
        stats.serving_peers,
        stats.objects,
        stats.delisted,
        f.mismatches.load(Ordering::Relaxed),
    ))
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn header_pairs(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
        .collect()
}

/// The site: `GET|HEAD /{path}`, answered with the bytes or, for a client that
/// accepts referrals and when the server cannot send in time, a `300` referral.
async fn site(
    State(state): State<Arc<AppState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if method != Method::GET && method != Method::HEAD {
        return Err(ApiError::MethodNotAllowed);
    }
    let path = state.site.resolve(uri.path()).map_err(|e| match e {
        SiteError::InvalidPath => ApiError::BadRequest("invalid path".into()),
        _ => ApiError::NotFound,
    })?;
    let st = state.clone();
    let obj = tokio::task::spawn_blocking(move || st.site.object(&path))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(|e| match e {
            SiteError::NotFound => ApiError::NotFound,
            SiteError::InvalidPath => ApiError::BadRequest("invalid path".into()),
            SiteError::Io(e) => ApiError::Internal(e.to_string()),
        })?;

    if let Some(value) = headers.get(headers::CLIENT) {
        let client = value
            .to_str()
            .map_err(|_| ApiError::BadRequest("Peercache-Client is not ASCII".into()))
            .and_then(|v| {
                ClientHeader::parse(v).map_err(|e| ApiError::BadRequest(e.to_string()))
            })?;
        let in_scope = uri.path().starts_with(&state.config.scope);
        if in_scope && request_shareable(method.as_str(), &header_pairs(&headers)).is_ok() {
            let holders = state.table.holders(
                &obj.hash,
                client.peer_id.as_deref(),
                Instant::now(),
                state.config.max_proxies,
            );
            let base_ms = u64::try_from(state.config.target_period.as_millis()).unwrap_or(u64::MAX);
            let decision = decide(
                obj.size,
                state.egress.snapshot(),
                client.bandwidth,
                base_ms,
                holders.len(),
            );
            if decision == Decision::Refer {
                return Ok(referral(
                    &state,
                    &headers,
                    &uri,
                    &obj,
                    holders,
                    base_ms,
                    client.bandwidth,
                ));
            }
        }
    }
    send_object(&state, &obj, method == Method::HEAD).await
}

fn referral(
    state: &AppState,
    headers: &HeaderMap,
    uri: &Uri,
    obj: &SiteObject,
    mut proxies: Vec<Proxy>,
    base_ms: u64,
    bandwidth: Option<u64>,
) -> Response {
    let own = state.own_url(headers);
    proxies.push(Proxy {
        id: SERVER_PROXY_ID.to_string(),
        addr: own.clone(),
        rtt_ms: None,
        load: None,
    });
    let period = target_period_ms(base_ms, obj.size, bandwidth);
    let body = Referral {
        object: ObjectInfo {
            url: format!("{own}{}", uri.path_and_query().map_or("/", |p| p.as_str())),
            size: obj.size,
            hash: obj.hash,
            content_type: obj.content_type.clone(),
        },
        proxies,
        server: own,
        target_period_ms: period,
        target_speed: target_speed(obj.size, period.max(1)),
    };
    counter!("peercache_requests_referred_total").increment(1);
    state.figures.referred.fetch_add(1, Ordering::Relaxed);
    let json = serde_json::to_vec(&body).unwrap_or_default();
    let mut resp = Response::new(Body::from(json));
    *resp.status_mut() = StatusCode::MULTIPLE_CHOICES;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(headers::REFERRAL_CONTENT_TYPE),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    add_object_headers(state, h, obj);
    resp
}

fn add_object_headers(state: &AppState, h: &mut HeaderMap, obj: &SiteObject) {
    let object = ObjectHeader {
        hash: obj.hash,
        size: obj.size,
    };
    if let Ok(v) = HeaderValue::from_str(&object.to_header_value()) {
        h.insert(headers::OBJECT, v);
    }
    let ad = Advertisement {
        scope: state.config.scope.clone(),
    };
    if let Ok(v) = HeaderValue::from_str(&ad.to_header_value()) {
        h.insert(headers::ADVERTISEMENT, v);
    }
}

/// Pays off whatever of a transfer was not sent when its body is dropped.
struct Owed {
    state: Arc<AppState>,
    remaining: u64,
}

impl Drop for Owed {
    fn drop(&mut self) {
        self.state.egress.sent(self.remaining);
    }
}

async fn send_object(
    state: &Arc<AppState>,
    obj: &SiteObject,
    head_only: bool,
) -> Result<Response, ApiError> {
    let mut builder = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, &obj.content_type)
        .header(header::CONTENT_LENGTH, obj.size)
        .header(header::CACHE_CONTROL, "no-cache");
    if let Some(h) = builder.headers_mut() {
        add_object_headers(state, h, obj);
    }
    if head_only {
        return builder
            .body(Body::empty())
            .map_err(|e| ApiError::Internal(e.to_string()));
    }
    let file = tokio::fs::File::open(&obj.path)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    counter!("peercache_requests_served_total").increment(1);
    state.figures.served.fetch_add(1, Ordering::Relaxed);
    state.egress.owe(obj.size);
    let owed = Owed {
        state: state.clone(),
        remaining: obj.size,
    };
    let reader = tokio_util::io::ReaderStream::with_capacity(file, 64 * 1024);
    let stream =
        futures_util::stream::unfold((reader, owed), |(mut reader, mut owed)| async move {
            match reader.next().await {
                Some(Ok(chunk)) => {
                    let n = chunk.len() as u64;
                    owed.state.egress.throttle(n).await;
                    owed.state.egress.sent(n);
                    owed.remaining = owed.remaining.saturating_sub(n);
                    owed.state
                        .figures
                        .bytes_served
                        .fetch_add(n, Ordering::Relaxed);
                    counter!("peercache_bytes_served_total").increment(n);
                    Some((Ok::<_, std::io::Error>(chunk), (reader, owed)))
                }
                Some(Err(e)) => Some((Err(e), (reader, owed))),
                None => None,
            }
        });
    builder
        .body(Body::from_stream(stream))
        .map_err(|e| ApiError::Internal(e.to_string()))
}
