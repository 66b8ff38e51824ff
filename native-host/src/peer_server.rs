//! The peer server ("proxy server client"): other peers fetch cached objects here.
//!
//! - `GET /v1/ping` → `204` with `Peercache-Load: active/limit`.
//! - `GET|HEAD /v1/objects/{hash}` → the cached bytes; `404` when not held; `503` +
//!   `Retry-After` when every upload slot is busy (M12).
//! - `GET /metrics` → Prometheus text.
//!
//! Only what is in the cache is ever served, and the path is built from a parsed
//! hash alone.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::StreamExt;
use metrics::counter;
use peercache_core::hash::ObjectHash;
use peercache_core::headers;

use crate::cache::Cache;
use crate::client::HostCounters;
use crate::workload::Workload;

/// State of the peer server.
#[derive(Debug, Clone)]
pub struct PeerState {
    /// The cache served from.
    pub cache: Cache,
    /// Workload limits.
    pub slots: Arc<Workload>,
    /// Counters.
    pub counters: Arc<HostCounters>,
    /// Prometheus handle, when the binary installed a recorder.
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// The host's client (for its knowledge and to pass cascade queries on).
    pub client: Arc<crate::client::Client>,
    /// Cascade queries seen recently (loop protection).
    pub seen: Arc<crate::knowledge::SeenQueries>,
}

/// Query of `GET /v1/locate`.
#[derive(Debug, serde::Deserialize)]
struct LocateQuery {
    url: String,
    #[serde(default)]
    ttl: u8,
    qid: String,
}

/// The peer server's router.
pub fn router(state: PeerState) -> Router {
    Router::new()
        .route("/v1/ping", get(ping))
        .route("/v1/objects/{hash}", get(object))
        .route("/v1/objects/{hash}/outboard", get(outboard))
        .route("/v1/locate", get(locate))
        .route("/metrics", get(metrics_text))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

fn load_header(slots: &Workload) -> HeaderValue {
    let l = slots.load();
    HeaderValue::from_str(&format!("{}/{}", l.active, l.limit))
        .unwrap_or(HeaderValue::from_static("0/0"))
}

async fn ping(State(state): State<PeerState>) -> Response {
    let mut resp = StatusCode::NO_CONTENT.into_response();
    resp.headers_mut()
        .insert(headers::LOAD, load_header(&state.slots));
    resp
}

async fn metrics_text(State(state): State<PeerState>) -> Response {
    match &state.metrics {
        Some(h) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            h.render(),
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "metrics recorder not installed").into_response(),
    }
}

/// A cascade query (M11): does this host, or a peer it knows, hold the object at
/// `url`? Answers with the holders found and the server's signed record; passes
/// the query on with `ttl - 1` when it has nothing itself. A query id seen before
/// gets an empty answer, so loops end.
async fn locate(
    State(state): State<PeerState>,
    axum::extract::Query(q): axum::extract::Query<LocateQuery>,
) -> Response {
    if q.url.len() > 4096 || q.qid.is_empty() || q.qid.len() > 64 {
        return (StatusCode::BAD_REQUEST, "bad locate query").into_response();
    }
    counter!("peercache_locate_queries_total").increment(1);
    let mut answer = peercache_core::protocol::LocateResponse::default();
    if !state.seen.first_time(&q.qid) {
        return axum::Json(answer).into_response();
    }
    let knowledge = &state.client.knowledge;
    if let Some(rec) = knowledge.record_for(&q.url) {
        if state.cache.contains(&rec.record.hash) {
            answer.holders.push(peercache_core::protocol::Proxy {
                id: state.client.peer_id().to_string(),
                addr: String::new(),
                rtt_ms: None,
                load: Some(state.slots.load()),
            });
        }
        answer.record = Some(rec);
    }
    let ttl = q.ttl.min(crate::client::LOCATE_TTL);
    if answer.holders.is_empty()
        && ttl > 0
        && let Ok(url) = reqwest::Url::parse(&q.url)
    {
        let origin = crate::client::origin(&url);
        let me = state.client.peer_id().to_string();
        let ask: Vec<_> = knowledge
            .aux_peers(&origin)
            .into_iter()
            .filter(|p| p.id != me)
            .take(8)
            .collect();
        let found = futures_util::future::join_all(
            ask.iter()
                .map(|p| state.client.locate(p, &q.url, ttl - 1, &q.qid)),
        )
        .await;
        for f in found {
            if answer.record.is_none() {
                answer.record = f.record;
            }
            for h in f.holders {
                if !answer.holders.iter().any(|x| x.id == h.id) {
                    answer.holders.push(h);
                }
            }
        }
    }
    axum::Json(answer).into_response()
}

/// The group CVs of a cached object, for verified streaming (B1).
async fn outboard(State(state): State<PeerState>, Path(hash): Path<String>) -> Response {
    let Ok(hash) = hash.parse::<ObjectHash>() else {
        return (StatusCode::BAD_REQUEST, "not a BLAKE3 hash").into_response();
    };
    if !state.cache.contains(&hash) {
        return (StatusCode::NOT_FOUND, "not held").into_response();
    }
    let cache = state.cache.clone();
    match tokio::task::spawn_blocking(move || cache.outboard(&hash)).await {
        Ok(Ok(ob)) => ([(header::CONTENT_TYPE, "application/octet-stream")], ob).into_response(),
        _ => (StatusCode::NOT_FOUND, "not held").into_response(),
    }
}

/// Holds one upload slot until dropped.
struct Slot(Arc<Workload>);

impl Slot {
    fn try_take(slots: &Arc<Workload>) -> Option<Self> {
        slots.try_take().then(|| Slot(slots.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.release();
    }
}

async fn object(
    State(state): State<PeerState>,
    method: Method,
    axum::extract::ConnectInfo(requester): axum::extract::ConnectInfo<std::net::SocketAddr>,
    req_headers: axum::http::HeaderMap,
    Path(hash): Path<String>,
) -> Response {
    if !state.slots.allow_requester(requester.ip()) {
        counter!("peercache_requests_rate_limited_total").increment(1);
        let mut resp = (
            StatusCode::TOO_MANY_REQUESTS,
            "too many requests from your address",
        )
            .into_response();
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return resp;
    }
    let Ok(hash) = hash.parse::<ObjectHash>() else {
        return (StatusCode::BAD_REQUEST, "not a BLAKE3 hash").into_response();
    };
    let path = state.cache.path_of(&hash);
    let file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(_) => return (StatusCode::NOT_FOUND, "not held").into_response(),
    };
    let size = match file.metadata().await {
        Ok(m) => m.len(),
        Err(_) => return (StatusCode::NOT_FOUND, "not held").into_response(),
    };
    let range = match req_headers
        .get(header::RANGE)
        .map(|v| v.to_str().map(|v| headers::parse_range(v, size)))
    {
        None => None,
        Some(Ok(Ok(r))) => Some(r),
        Some(_) => {
            let mut resp =
                (StatusCode::RANGE_NOT_SATISFIABLE, "unsatisfiable range").into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                resp.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return resp;
        }
    };
    let headers_only = method == Method::HEAD;
    let slot = if headers_only {
        None
    } else {
        match Slot::try_take(&state.slots) {
            Some(s) => Some(s),
            None => {
                counter!("peercache_uploads_refused_total").increment(1);
                let mut resp =
                    (StatusCode::SERVICE_UNAVAILABLE, "all upload slots busy").into_response();
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                resp.headers_mut()
                    .insert(headers::LOAD, load_header(&state.slots));
                return resp;
            }
        }
    };
    let (status, first, len) = match range {
        Some((a, b)) => (StatusCode::PARTIAL_CONTENT, a, b - a + 1),
        None => (StatusCode::OK, 0, size),
    };
    let mut builder = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, len)
        .header(header::ACCEPT_RANGES, "bytes");
    if range.is_some() {
        builder = builder.header(
            header::CONTENT_RANGE,
            format!("bytes {first}-{}/{size}", first + len - 1),
        );
    }
    if headers_only {
        return builder
            .body(Body::empty())
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
    }
    counter!("peercache_uploads_total").increment(1);
    state.cache.touch(&hash);
    let counters = state.counters.clone();
    let mut file = file;
    if first > 0 {
        use tokio::io::AsyncSeekExt;
        if file.seek(std::io::SeekFrom::Start(first)).await.is_err() {
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
    }
    use tokio::io::AsyncReadExt;
    let reader = tokio_util::io::ReaderStream::with_capacity(file.take(len), 64 * 1024);
    let workload = state.slots.clone();
    let stream = reader.then(move |chunk| {
        // The slot is held until the body is dropped (finished or aborted).
        let _held = &slot;
        let workload = workload.clone();
        let counters = counters.clone();
        async move {
            if let Ok(c) = &chunk {
                workload.throttle(c.len() as u64).await;
                counters
                    .bytes_served
                    .fetch_add(c.len() as u64, Ordering::Relaxed);
                counter!("peercache_bytes_uploaded_total").increment(c.len() as u64);
            }
            chunk
        }
    });
    builder
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}
