//! The router and its state: the site with serve-or-refer, the `/v1/` peer API,
//! `/metrics` and `/admin`.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
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
use crate::store::{Store, StoreError, now_ms};

/// Largest JSON body the API accepts.
pub const MAX_API_BODY: usize = 64 * 1024;
/// Most hashes in one announce.
pub const MAX_ANNOUNCE_HASHES: usize = 10_000;
/// How long a signed record stays valid.
const RECORD_TTL_SECS: u64 = 24 * 3600;
/// Most possession proofs the server runs for one announce.
const MAX_PROOFS_PER_ANNOUNCE: usize = 8;
/// Samples of the offload history kept for `/admin` (one per housekeeping tick).
const HISTORY: usize = 150;

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
    /// Look-up table failures (each answered by serving directly).
    pub store_errors: AtomicU64,
    /// (unix seconds, bytes served, bytes from peers) samples.
    pub history: Mutex<VecDeque<(u64, u64, u64)>>,
}

/// Per-peer token buckets for announces (B6).
#[derive(Debug, Default)]
struct RateLimiter {
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    fn allow(&self, key: &str, per_sec: u32) -> bool {
        let mut b = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if b.len() > 100_000 {
            b.clear();
        }
        let cap = f64::from(per_sec.max(1)) * 4.0;
        let now = Instant::now();
        let (tokens, last) = b.entry(key.to_string()).or_insert((cap, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * f64::from(per_sec)).min(cap);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Shared state of one server process.
#[derive(Debug)]
pub struct AppState {
    /// Settings.
    pub config: Config,
    /// The object registry.
    pub site: Site,
    /// The look-up table.
    pub store: Store,
    /// The egress model and throttle.
    pub egress: EgressPipe,
    /// Live figures.
    pub figures: Figures,
    /// Client for the upstream's helpers.
    pub http: reqwest::Client,
    /// The server's own peer endpoint: pings and possession proofs go to peers
    /// over their QUIC connections, dialed by key. `None` until `run` binds it.
    pub peers: Option<Arc<peercache_net::PeerDialer>>,
    /// Relays hosts are told to use (the site's own first).
    pub relays: Vec<peercache_core::protocol::RelayInfo>,
    /// The site's own relay, when it runs one.
    pub site_relay: Option<crate::relay::SiteRelay>,
    /// The origin, in upstream mode.
    pub upstream: Option<crate::upstream::Upstream>,
    /// The record-signing key (B8).
    pub signer: peercache_core::record::RecordSigner,
    /// Transfers in flight per object.
    sending: Mutex<HashMap<ObjectHash, u32>>,
    /// Recently signed records, by URL and hash.
    signed: Mutex<HashMap<(String, ObjectHash), peercache_core::record::SignedRecord>>,
    announce_limiter: RateLimiter,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    tls: bool,
}

impl AppState {
    /// State for `config` with a connected store.
    pub fn new(
        config: Config,
        store: Store,
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
            "peercache_store_errors_total",
            "peercache_pings_total",
            "peercache_ping_failures_total",
            "peercache_requests_headers_only_total",
            "peercache_requests_deferred_total",
            "peercache_range_requests_total",
            "peercache_reports_unreferred_total",
            "peercache_auth_failures_total",
            "peercache_bytes_reported_relayed_total",
        ] {
            counter!(name).increment(0);
        }
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(5))
            .no_proxy()
            .build()
            .unwrap_or_default();
        Self {
            site: Site::new(config.root.clone()),
            store,
            egress: EgressPipe::new(config.egress_limit),
            figures: Figures::default(),
            http,
            peers: None,
            relays: Vec::new(),
            site_relay: None,
            upstream: None,
            signer: peercache_core::record::RecordSigner::from_secret(rand::random()),
            sending: Mutex::new(HashMap::new()),
            signed: Mutex::new(HashMap::new()),
            announce_limiter: RateLimiter::default(),
            config,
            metrics,
            tls,
        }
    }

    /// Expires lapsed peers, refreshes gauges and samples the offload history.
    pub fn spawn_housekeeping(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(2));
            loop {
                tick.tick().await;
                let Some(state) = weak.upgrade() else { break };
                let now = now_ms();
                if let Err(e) = state.store.expire(now).await {
                    tracing::warn!(error = %e, "expiring peers failed");
                }
                if let Ok(s) = state.store.stats(now).await {
                    gauge!("peercache_peers", "state" => "live").set(s.peers as f64);
                    gauge!("peercache_peers", "state" => "serving").set(s.serving_peers as f64);
                    gauge!("peercache_peers", "state" => "delisted").set(s.delisted as f64);
                    gauge!("peercache_objects_listed").set(s.objects as f64);
                }
                if let Some(relay) = &state.site_relay {
                    let (out, inn) = relay.bytes();
                    counter!("peercache_relay_bytes_total", "direction" => "to_peers")
                        .absolute(out);
                    counter!("peercache_relay_bytes_total", "direction" => "from_peers")
                        .absolute(inn);
                }
                let f = &state.figures;
                let mut h = f.history.lock().unwrap_or_else(|p| p.into_inner());
                if h.len() >= HISTORY {
                    h.pop_front();
                }
                h.push_back((
                    now / 1000,
                    f.bytes_served.load(Ordering::Relaxed),
                    f.bytes_from_peers.load(Ordering::Relaxed),
                ));
            }
        });
    }

    /// The server's own base URL, as the client addressed it.
    pub fn own_url(&self, headers: &HeaderMap) -> String {
        if let Some(url) = &self.config.public_url {
            return url.trim_end_matches('/').to_string();
        }
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("localhost");
        format!("{}://{host}", if self.tls { "https" } else { "http" })
    }

    /// Signs the record of `obj` as served at `url` (valid for a day). Signatures
    /// are reused for an hour, so a hot object costs one signature, not one per
    /// request.
    pub fn sign(&self, url: &str, obj: &SiteObject) -> peercache_core::record::SignedRecord {
        let now = now_ms() / 1000;
        let key = (url.to_string(), obj.hash);
        let mut signed = self.signed.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(rec) = signed.get(&key)
            && rec.record.expires >= now + RECORD_TTL_SECS - 3600
        {
            return rec.clone();
        }
        let rec = self.signer.sign(peercache_core::record::ObjectRecord {
            url: url.to_string(),
            hash: obj.hash,
            size: obj.size,
            content_type: obj.content_type.clone(),
            expires: now + RECORD_TTL_SECS,
        });
        if signed.len() >= 100_000 {
            signed.clear();
        }
        signed.insert(key, rec.clone());
        rec
    }

    /// Transfers of `hash` in flight.
    fn sending_count(&self, hash: &ObjectHash) -> u32 {
        self.sending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(hash)
            .copied()
            .unwrap_or(0)
    }

    /// True if the server knows this object (from its directory or its upstream).
    pub fn knows(&self, hash: &ObjectHash) -> bool {
        self.site.knows(hash) || self.upstream.as_ref().is_some_and(|u| u.knows(hash))
    }

    /// The object with this hash. Blocking (it may hash a file).
    pub fn object_by_hash(&self, hash: &ObjectHash) -> Option<SiteObject> {
        match &self.upstream {
            Some(u) => u.by_hash(hash),
            None => self.site.by_hash(hash),
        }
    }

    fn store_failed(&self, e: &StoreError) {
        counter!("peercache_store_errors_total").increment(1);
        self.figures.store_errors.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(error = %e, "look-up table unavailable");
    }
}

fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::UnknownPeer => ApiError::UnknownPeer("(delisted or lapsed)".into()),
        StoreError::Full => ApiError::Unavailable("peer table full".into()),
        StoreError::Unavailable(e) => ApiError::Unavailable(e),
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
        .route("/v1/objects/{hash}/outboard", get(object_outboard))
        .route("/v1/key", get(server_key))
        .route("/metrics", get(metrics_text))
        .route("/admin", get(crate::admin::page))
        .route("/admin/stats.json", get(crate::admin::stats_json))
        .layer(DefaultBodyLimit::max(MAX_API_BODY))
        .fallback(site)
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

fn now_secs() -> u64 {
    now_ms() / 1000
}

/// Checks a request's `Peercache-Auth` signature (a peer is its key, B6) and
/// parses its JSON body; the body must name the key that signed it.
fn authenticated<T: serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    path: &str,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
    peer_of: impl Fn(&T) -> &str,
) -> Result<(String, T), ApiError> {
    let body = body.map_err(|r| ApiError::Rejected(r.status(), r.body_text()))?;
    let auth = headers.get(headers::AUTH).and_then(|v| v.to_str().ok());
    let id =
        peercache_core::auth::authenticate(auth, "POST", path, &body, now_secs()).map_err(|e| {
            counter!("peercache_auth_failures_total").increment(1);
            ApiError::Unauthorized(e.to_string())
        })?;
    let value: T = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("malformed JSON: {e}")))?;
    if peer_of(&value) != id {
        counter!("peercache_auth_failures_total").increment(1);
        return Err(ApiError::Unauthorized(
            peercache_core::auth::AuthError::WrongPeer.to_string(),
        ));
    }
    Ok((id, value))
}

/// What the server lists of a host's dial info (B6): its relay only if it is one
/// this server offers; of its direct addresses only those on the address its
/// connection came from (or, when none is, that address with its endpoint's
/// port). `None` when nothing is left to dial.
pub fn listable_dial(
    reported: Option<peercache_core::peer::DialInfo>,
    port: Option<u16>,
    seen: std::net::IpAddr,
    relays: &[peercache_core::protocol::RelayInfo],
) -> Option<peercache_core::peer::DialInfo> {
    let reported = reported?;
    let same = |a: &str, b: &str| a.trim_end_matches('/') == b.trim_end_matches('/');
    let relay = reported
        .relay
        .filter(|r| relays.iter().any(|known| same(&known.url, r)));
    let mut direct: Vec<SocketAddr> = reported
        .direct
        .into_iter()
        .filter(|a| a.ip() == seen && a.port() != 0)
        .collect();
    if direct.is_empty()
        && let Some(port) = port.filter(|p| *p != 0)
    {
        direct.push(SocketAddr::new(seen, port));
    }
    let info = peercache_core::peer::DialInfo { relay, direct };
    (!info.is_empty()).then_some(info)
}

async fn register(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req_headers: HeaderMap,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<RegisterResponse>, ApiError> {
    let (id, req) =
        authenticated::<RegisterRequest>(&req_headers, "/v1/peers", body, |r| &r.peer_id)?;
    if !state
        .announce_limiter
        .allow(&id, state.config.announce_rate)
    {
        return Err(ApiError::TooManyRequests);
    }
    let dial = listable_dial(req.dial, req.port, peer.ip(), &state.relays);
    let addr = state
        .store
        .register(
            &id,
            peer.ip(),
            dial.map(|d| d.to_dial_string()),
            req.load,
            now_ms(),
        )
        .await
        .map_err(|e| match e {
            StoreError::UnknownPeer => ApiError::Forbidden("peer is delisted".into()),
            other => store_error(other),
        })?;
    tracing::info!(peer = %id, ?addr, "peer registered");
    Ok(Json(RegisterResponse {
        peer_id: id,
        addr,
        ttl_secs: state.store.limits().ttl_ms / 1000,
        relays: state.relays.clone(),
    }))
}

/// Checks that the peer `id` at `addr` really holds `obj`: asks it, over its QUIC
/// connection, for a small random range and compares with the server's own
/// bytes (B6, "proves it holds it").
async fn proves_possession(state: &AppState, id: &str, addr: &str, obj: &SiteObject) -> bool {
    if obj.size == 0 {
        return true;
    }
    let (Some(peers), Ok(dial)) = (&state.peers, peercache_core::peer::DialInfo::parse(addr))
    else {
        return false;
    };
    let len = obj.size.min(4096);
    let offset = rand::random_range(0..=obj.size - len);
    let mine = {
        use std::io::{Read, Seek, SeekFrom};
        let path = obj.path.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
            let mut f = std::fs::File::open(path)?;
            f.seek(SeekFrom::Start(offset))?;
            let mut buf = vec![0u8; len as usize];
            f.read_exact(&mut buf)?;
            Ok(buf)
        })
        .await
    };
    let Ok(Ok(mine)) = mine else { return false };
    let theirs = async {
        let (_, mut body) = peers
            .object(id, &dial, obj.hash, Some((offset, offset + len - 1)))
            .await
            .ok()?;
        let mut got = Vec::with_capacity(len as usize);
        while let Ok(Some(chunk)) = body.next_chunk().await {
            got.extend_from_slice(&chunk);
        }
        Some(got)
    };
    match tokio::time::timeout(Duration::from_secs(5), theirs).await {
        Ok(Some(got)) => got == mine,
        _ => false,
    }
}

async fn announce(
    State(state): State<Arc<AppState>>,
    req_headers: HeaderMap,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<AnnounceResponse>, ApiError> {
    let (_, a) = authenticated::<Announce>(&req_headers, "/v1/announce", body, |a| &a.peer_id)?;
    if a.have.len() + a.dropped.len() > MAX_ANNOUNCE_HASHES {
        return Err(ApiError::BadRequest(format!(
            "at most {MAX_ANNOUNCE_HASHES} hashes per announce"
        )));
    }
    if !state
        .announce_limiter
        .allow(&a.peer_id, state.config.announce_rate)
    {
        return Err(ApiError::TooManyRequests);
    }
    counter!("peercache_announces_total").increment(1);
    let now = now_ms();
    let addr = state
        .store
        .peer_addr(&a.peer_id, now)
        .await
        .map_err(store_error)?;
    let mut listable = Vec::with_capacity(a.have.len());
    let mut rejected = Vec::new();
    let mut proofs = 0;
    for hash in &a.have {
        let ok = if !state.knows(hash) {
            false
        } else if state
            .store
            .fetched(&a.peer_id, hash)
            .await
            .map_err(store_error)?
        {
            true
        } else if let (Some(addr), true) = (&addr, proofs < MAX_PROOFS_PER_ANNOUNCE) {
            proofs += 1;
            let st = state.clone();
            let h = *hash;
            let obj = tokio::task::spawn_blocking(move || st.object_by_hash(&h))
                .await
                .ok()
                .flatten();
            match obj {
                Some(obj) if proves_possession(&state, &a.peer_id, addr, &obj).await => {
                    state
                        .store
                        .record_fetch(&a.peer_id, hash)
                        .await
                        .map_err(store_error)?;
                    true
                }
                _ => false,
            }
        } else {
            false
        };
        if ok {
            listable.push(*hash);
        } else {
            rejected.push(*hash);
        }
    }
    let accepted = state
        .store
        .announce(&a.peer_id, &listable, &a.dropped, a.load, now)
        .await
        .map_err(|e| match e {
            StoreError::UnknownPeer => ApiError::UnknownPeer(a.peer_id.clone()),
            other => store_error(other),
        })?;
    Ok(Json(AnnounceResponse {
        accepted,
        rejected,
        ttl_secs: state.store.limits().ttl_ms / 1000,
    }))
}

async fn report(
    State(state): State<Arc<AppState>>,
    req_headers: HeaderMap,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<StatusCode, ApiError> {
    let (reporter, r) = authenticated::<Report>(&req_headers, "/v1/report", body, |r| &r.peer_id)?;
    if !state.announce_limiter.allow(
        &format!("report:{reporter}"),
        state.config.announce_rate * 4,
    ) {
        return Err(ApiError::TooManyRequests);
    }
    // A report counts only for a source this client was referred to for this
    // object, once per referral (B6): nobody can report a peer out of the table,
    // or inflate its use, without having been sent to it.
    let referred = state
        .store
        .take_offer(
            &reporter,
            &r.hash,
            &r.source,
            now_ms(),
            matches!(r.outcome, Outcome::Served | Outcome::Mismatch),
        )
        .await
        .map_err(store_error)?;
    if !referred {
        counter!("peercache_reports_unreferred_total").increment(1);
        tracing::info!(%reporter, source = %r.source, "report about a source this client was not referred to; ignored");
        return Ok(StatusCode::ACCEPTED);
    }
    if let Some(direct) = r.direct {
        state
            .store
            .note_path(&r.source, direct)
            .await
            .map_err(store_error)?;
    }
    let outcome = match r.outcome {
        Outcome::Served => "served",
        Outcome::Mismatch => "mismatch",
        Outcome::Failed => "failed",
        Outcome::Unused => "unused",
    };
    counter!("peercache_reports_total", "outcome" => outcome).increment(1);
    if r.outcome == Outcome::Served && r.direct == Some(false) {
        // Relayed bytes crossed the site: egress, never offload.
        counter!("peercache_bytes_reported_relayed_total").increment(r.bytes);
    } else if r.outcome == Outcome::Served && r.source != SERVER_PROXY_ID {
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
    state.store.report(&r).await.map_err(store_error)?;
    Ok(StatusCode::NO_CONTENT)
}

fn parse_hash(s: &str) -> Result<ObjectHash, ApiError> {
    s.parse()
        .map_err(|e: peercache_core::hash::InvalidHash| ApiError::BadRequest(e.to_string()))
}

async fn object_peers(
    State(state): State<Arc<AppState>>,
    Path(hash): Path<String>,
) -> Result<Json<Vec<Proxy>>, ApiError> {
    let hash = parse_hash(&hash)?;
    let stats = state
        .store
        .holder_stats(&hash, None, now_ms())
        .await
        .map_err(store_error)?;
    Ok(Json(peercache_core::select::rank_holders(
        stats,
        state.store.limits().slow_threshold_ms,
        state.config.max_proxies,
    )))
}

/// The server as a source in a referral (its own proxy-list entry): objects by
/// hash, with `Range`, so a client can resume from the server where peers failed.
async fn object_by_hash(
    State(state): State<Arc<AppState>>,
    method: Method,
    req_headers: HeaderMap,
    Path(hash): Path<String>,
) -> Result<Response, ApiError> {
    let hash = parse_hash(&hash)?;
    let st = state.clone();
    let obj = tokio::task::spawn_blocking(move || st.object_by_hash(&hash))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .ok_or(ApiError::NotFound)?;
    let range = match req_headers.get(header::RANGE) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|v| headers::parse_range(v, obj.size).ok())
                .ok_or(ApiError::RangeNotSatisfiable(obj.size))?,
        ),
    };
    send_object_range(&state, &obj, method == Method::HEAD, range).await
}

/// The object's group CVs (see `peercache_core::verified`), for verified streaming
/// from the server as a source.
async fn object_outboard(
    State(state): State<Arc<AppState>>,
    Path(hash): Path<String>,
) -> Result<Response, ApiError> {
    let hash = parse_hash(&hash)?;
    let st = state.clone();
    let outboard = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, ApiError> {
        let obj = st.object_by_hash(&hash).ok_or(ApiError::NotFound)?;
        let file = std::fs::File::open(&obj.path).map_err(|e| ApiError::Internal(e.to_string()))?;
        peercache_core::verified::outboard_from_reader(std::io::BufReader::new(file), obj.size)
            .map_err(|e| ApiError::Internal(e.to_string()))
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))??;
    Ok((
        [(header::CONTENT_TYPE, "application/octet-stream")],
        outboard,
    )
        .into_response())
}

async fn server_key(
    State(state): State<Arc<AppState>>,
) -> Json<peercache_core::protocol::ServerKey> {
    Json(peercache_core::protocol::ServerKey {
        public_key: state.signer.public_hex(),
    })
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
    let obj = match &state.upstream {
        Some(up) => {
            let pq = uri.path_and_query().map_or("/", |p| p.as_str());
            match up.fetch(&method, pq, &headers).await {
                Ok(crate::upstream::Fetched::Object(obj)) => obj,
                Ok(crate::upstream::Fetched::PassThrough(mut resp)) => {
                    let ad = Advertisement {
                        scope: state.config.scope.clone(),
                    };
                    if let Ok(v) = HeaderValue::from_str(&ad.to_header_value()) {
                        resp.headers_mut().insert(headers::ADVERTISEMENT, v);
                    }
                    counter!("peercache_requests_passed_through_total").increment(1);
                    return Ok(resp);
                }
                Err(e) => return Err(ApiError::BadGateway(e.to_string())),
            }
        }
        None => {
            let path = state.site.resolve(uri.path()).map_err(|e| match e {
                SiteError::InvalidPath => ApiError::BadRequest("invalid path".into()),
                _ => ApiError::NotFound,
            })?;
            let st = state.clone();
            tokio::task::spawn_blocking(move || st.site.object(&path))
                .await
                .map_err(|e| ApiError::Internal(e.to_string()))?
                .map_err(|e| match e {
                    SiteError::NotFound => ApiError::NotFound,
                    SiteError::InvalidPath => ApiError::BadRequest("invalid path".into()),
                    SiteError::Io(e) => ApiError::Internal(e.to_string()),
                })?
        }
    };

    let client = match headers.get(headers::CLIENT) {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .map_err(|_| ApiError::BadRequest("Peercache-Client is not ASCII".into()))
                .and_then(|v| {
                    ClientHeader::parse(v).map_err(|e| ApiError::BadRequest(e.to_string()))
                })?,
        ),
    };
    let shareable = uri.path().starts_with(&state.config.scope)
        && request_shareable(method.as_str(), &header_pairs(&headers)).is_ok();
    if let (Some(client), true) = (&client, shareable) {
        let answer = decide_for(&state, client, &obj).await;
        if let Answer::Wait(secs) = answer {
            counter!("peercache_requests_deferred_total").increment(1);
            let mut resp = (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(serde_json::json!({
                    "error": "the object is on its way to another client; ask again to be referred to it",
                    "retry_after": secs,
                })),
            )
                .into_response();
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
            return Ok(resp);
        }
        if let Answer::Refer(holders, base_ms) = answer {
            if let Some(id) = &client.peer_id
                && let Err(e) = state.store.record_fetch(id, &obj.hash).await
            {
                state.store_failed(&e);
            }
            if let Some(id) = &client.peer_id {
                let offered: Vec<String> = holders.iter().map(|p| p.id.clone()).collect();
                if let Err(e) = state
                    .store
                    .book_offer(id, &obj.hash, &offered, now_ms())
                    .await
                {
                    state.store_failed(&e);
                }
            }
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
        if let Some(id) = &client.peer_id
            && let Err(e) = state.store.record_fetch(id, &obj.hash).await
        {
            state.store_failed(&e);
        }
    }
    let url = format!(
        "{}{}",
        state.own_url(&headers),
        uri.path_and_query().map_or("/", |p| p.as_str())
    );
    // Firefox's extension replaces the body of this very request with verified
    // bytes from peers (filterResponseData) and asks for headers only, so no byte
    // travels twice.
    let headers_only = shareable
        && headers
            .get(headers::HEADERS_ONLY)
            .is_some_and(|v| v.as_bytes() == b"1");
    let mut resp = if headers_only {
        counter!("peercache_requests_headers_only_total").increment(1);
        let mut r = send_object(&state, &obj, true).await?;
        r.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        // Tells the extension this body is empty on purpose: it fills it in. Never
        // stored by the browser's cache, which would otherwise serve the empty body.
        r.headers_mut()
            .insert(headers::HEADERS_ONLY, HeaderValue::from_static("1"));
        r.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        r
    } else {
        // Resumed downloads and media seek with `Range`; so does the extension when
        // it finishes a body the gateway could not (with `If-Range`, so it never
        // splices two versions).
        let range = if method == Method::GET {
            site_range(&headers, &obj)?
        } else {
            None
        };
        if range.is_some() {
            counter!("peercache_range_requests_total").increment(1);
        }
        send_object_range(&state, &obj, method == Method::HEAD, range).await?
    };
    if shareable
        && let Ok(v) = HeaderValue::from_str(&headers::encode_record(&state.sign(&url, &obj)))
    {
        resp.headers_mut().insert(headers::RECORD, v);
    }
    Ok(resp)
}

/// The byte range a GET of a site file asks for (RFC 9110 §14): none when absent,
/// when `If-Range` names another version, or when the header is not a single
/// byte range we understand (the whole file is sent); `416` only for a range
/// that starts at or past the end.
fn site_range(req: &HeaderMap, obj: &SiteObject) -> Result<Option<(u64, u64)>, ApiError> {
    let Some(value) = req.get(header::RANGE).and_then(|v| v.to_str().ok()) else {
        return Ok(None);
    };
    if let Some(tag) = req.get(header::IF_RANGE)
        && tag.as_bytes() != etag(obj).as_bytes()
    {
        return Ok(None);
    }
    if let Ok(range) = headers::parse_range(value, obj.size) {
        return Ok(Some(range));
    }
    let starts_past_end = value
        .trim()
        .strip_prefix("bytes=")
        .filter(|spec| !spec.contains(','))
        .and_then(|spec| spec.split_once('-'))
        .and_then(|(first, _)| first.trim().parse::<u64>().ok())
        .is_some_and(|first| first >= obj.size);
    if starts_past_end {
        return Err(ApiError::RangeNotSatisfiable(obj.size));
    }
    Ok(None)
}

/// A site file's strong validator: its hash.
fn etag(obj: &SiteObject) -> String {
    format!("\"{}\"", obj.hash.to_hex())
}

/// `Some((holders, base period))` when the client should be referred.
/// What to do with a referral-capable client's request.
enum Answer {
    /// Send the bytes.
    Serve,
    /// Refer to these holders.
    Refer(Vec<Proxy>, u64),
    /// Nobody holds it yet, the server is too slow for this client, and the object
    /// is already on its way to another client: come back in this many seconds
    /// (by then that client can serve it).
    Wait(u64),
}

async fn decide_for(state: &AppState, client: &ClientHeader, obj: &SiteObject) -> Answer {
    match decide_inner(state, client, obj).await {
        Some((holders, base_ms)) => Answer::Refer(holders, base_ms),
        None => {
            let base_ms = u64::try_from(state.config.target_period.as_millis()).unwrap_or(u64::MAX);
            let too_slow = decide(
                obj.size,
                state.egress.snapshot(),
                client.bandwidth,
                base_ms,
                1,
            ) == Decision::Refer;
            let in_flight = state.sending_count(&obj.hash) > 0;
            match (too_slow, in_flight, state.config.egress_limit) {
                (true, true, Some(limit)) if limit > 0 => {
                    // About one object's time on the whole pipe, bounded.
                    Answer::Wait(obj.size.div_ceil(limit).clamp(1, 30))
                }
                _ => Answer::Serve,
            }
        }
    }
}

async fn decide_inner(
    state: &AppState,
    client: &ClientHeader,
    obj: &SiteObject,
) -> Option<(Vec<Proxy>, u64)> {
    let base_ms = u64::try_from(state.config.target_period.as_millis()).unwrap_or(u64::MAX);
    // Ask the table only when the server would be too slow with any holder at all.
    if decide(
        obj.size,
        state.egress.snapshot(),
        client.bandwidth,
        base_ms,
        1,
    ) == Decision::Serve
    {
        return None;
    }
    let holders = match state
        .store
        .holders(
            &obj.hash,
            client.peer_id.as_deref(),
            now_ms(),
            state.config.max_proxies,
        )
        .await
    {
        Ok(h) => h,
        Err(e) => {
            // No table, no referral: the client is served directly.
            state.store_failed(&e);
            return None;
        }
    };
    (decide(
        obj.size,
        state.egress.snapshot(),
        client.bandwidth,
        base_ms,
        holders.len(),
    ) == Decision::Refer)
        .then_some((holders, base_ms))
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
        direct: Some(true),
        rtt_ms: None,
        load: None,
    });
    let period = target_period_ms(base_ms, obj.size, bandwidth);
    let url = format!("{own}{}", uri.path_and_query().map_or("/", |p| p.as_str()));
    let body = Referral {
        object: ObjectInfo {
            url: url.clone(),
            size: obj.size,
            hash: obj.hash,
            content_type: obj.content_type.clone(),
        },
        proxies,
        server: own,
        target_period_ms: period,
        target_speed: target_speed(obj.size, period.max(1)),
        record: Some(state.sign(&url, obj)),
        why: None,
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
    if let Ok(v) = HeaderValue::from_str(&etag(obj)) {
        h.insert(header::ETAG, v);
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
    hash: ObjectHash,
}

impl Drop for Owed {
    fn drop(&mut self) {
        self.state.egress.sent(self.remaining);
        let mut sending = self.state.sending.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = sending.get_mut(&self.hash) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                sending.remove(&self.hash);
            }
        }
    }
}

async fn send_object(
    state: &Arc<AppState>,
    obj: &SiteObject,
    head_only: bool,
) -> Result<Response, ApiError> {
    send_object_range(state, obj, head_only, None).await
}

/// Sends an object, or the inclusive byte range `range` of it (`206`).
async fn send_object_range(
    state: &Arc<AppState>,
    obj: &SiteObject,
    head_only: bool,
    range: Option<(u64, u64)>,
) -> Result<Response, ApiError> {
    let (status, first, len) = match range {
        Some((a, b)) => (StatusCode::PARTIAL_CONTENT, a, b - a + 1),
        None => (StatusCode::OK, 0, obj.size),
    };
    let mut builder = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, &obj.content_type)
        .header(header::CONTENT_LENGTH, len)
        .header(header::CACHE_CONTROL, "no-cache");
    if range.is_some() {
        builder = builder.header(
            header::CONTENT_RANGE,
            format!("bytes {first}-{}/{}", first + len - 1, obj.size),
        );
    }
    if let Some(h) = builder.headers_mut() {
        add_object_headers(state, h, obj);
    }
    if head_only {
        return builder
            .body(Body::empty())
            .map_err(|e| ApiError::Internal(e.to_string()));
    }
    let mut file = tokio::fs::File::open(&obj.path)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    if first > 0 {
        use tokio::io::AsyncSeekExt;
        file.seek(std::io::SeekFrom::Start(first))
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?;
    }
    counter!("peercache_requests_served_total").increment(1);
    state.figures.served.fetch_add(1, Ordering::Relaxed);
    state.egress.owe(len);
    *state
        .sending
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(obj.hash)
        .or_default() += 1;
    let owed = Owed {
        state: state.clone(),
        remaining: len,
        hash: obj.hash,
    };
    use tokio::io::AsyncReadExt;
    let reader = tokio_util::io::ReaderStream::with_capacity(file.take(len), 64 * 1024);
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
