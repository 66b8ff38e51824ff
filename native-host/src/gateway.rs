//! The local gateway: the extension redirects enrolled requests to
//! `http://127.0.0.1:<port>/g/<original url>` and the gateway fetches them through
//! [`Fetcher::open`](crate::fetch::Fetcher::open).
//!
//! Rules (DESIGN section 5): listens on 127.0.0.1 only; answers only when the
//! `Host` header is its own and the per-install token is in `X-Peercache-Token`
//! (never in the URL); only GET and HEAD; only URLs inside the scope of a site the
//! user enabled; a request whose `Origin` is neither that site's nor the
//! extension's is refused; CORS only for those two, never `*`. Request headers
//! must arrive within [`HEADER_TIMEOUT`] and an idle connection is closed.
//!
//! A faithful proxy otherwise: the site's end-to-end headers reach the browser
//! (`Content-Encoding`, `Cache-Control`, `ETag`, CSP, …; never `Set-Cookie` or
//! the site's CORS); `Range` gets a `206` cut from the verified bytes (with
//! `If-Range` against the site's `ETag` or the object's hash); `HEAD` is the
//! site's own `HEAD`, no body fetched; an answer without an object (a
//! redirect, an error page) is passed on as the site sent it, a relative
//! `Location` made absolute.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use metrics::counter;
use peercache_core::headers;
use peercache_core::protocol::{EnabledSite, FromHost};
use std::time::{Duration, Instant};

use tokio::sync::{RwLock, oneshot};

use crate::fetch::{FetchError, Fetcher, Source};
use peercache_core::range::{RangeChoice, choose_range};

/// What the gateway may fetch for, as last set by the extension.
#[derive(Debug, Default, Clone)]
pub struct Enrolment {
    /// Global toggle.
    pub enabled: bool,
    /// Enabled sites.
    pub sites: Vec<EnabledSite>,
}

/// Gateway requests waiting for the extension to confirm that a URL now goes to
/// the site itself (`direct_ready`), so they can redirect the browser there and
/// the site's cookie lands where it belongs.
#[derive(Debug, Default)]
pub struct DirectAcks {
    waiting: std::sync::Mutex<std::collections::HashMap<String, Vec<oneshot::Sender<()>>>>,
    /// URLs not to wait for again until the given time: ones just redirected (if
    /// one comes back, the rule did not take: a redirect loop) and ones the
    /// extension did not answer for (an old extension, a URL it cannot keep).
    no_wait: std::sync::Mutex<std::collections::VecDeque<(String, Instant)>>,
}

/// How long a URL redirected to the site is not redirected again.
pub const REDIRECT_HOLD: Duration = Duration::from_secs(10);
/// How long a URL the extension did not answer for is not waited for again.
pub const UNANSWERED_HOLD: Duration = Duration::from_secs(600);

/// Most gateway requests waiting for a `direct_ready` at once.
pub const MAX_DIRECT_WAITING: usize = 64;
/// How long a gateway request waits for `direct_ready` before it sends the body
/// itself (without the cookie).
pub const DIRECT_ACK_WAIT: Duration = Duration::from_secs(2);

impl DirectAcks {
    /// Do not wait for `url` again for `hold`.
    pub fn hold(&self, url: &str, hold: Duration) {
        let mut list = self
            .no_wait
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        list.retain(|(u, until)| *until > now && u != url);
        if list.len() >= MAX_DIRECT_WAITING {
            list.pop_front();
        }
        list.push_back((url.to_string(), now + hold));
    }

    fn held(&self, url: &str) -> bool {
        let now = Instant::now();
        self.no_wait
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .any(|(u, until)| u == url && *until > now)
    }

    /// Registers a wait for `url`; `None` when too many are waiting already or the
    /// URL is held (see [`DirectAcks::hold`]).
    pub fn wait_for(&self, url: &str) -> Option<oneshot::Receiver<()>> {
        if self.held(url) {
            return None;
        }
        let mut waiting = self
            .waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        waiting.retain(|_, senders| {
            senders.retain(|s| !s.is_closed());
            !senders.is_empty()
        });
        if waiting.values().map(Vec::len).sum::<usize>() >= MAX_DIRECT_WAITING {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        waiting.entry(url.to_string()).or_default().push(tx);
        Some(rx)
    }

    /// The extension confirmed `url`: wakes every request waiting for it. Returns
    /// how many were waiting.
    pub fn release(&self, url: &str) -> usize {
        let senders = self
            .waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(url)
            .unwrap_or_default();
        senders
            .into_iter()
            .map(|s| s.send(()))
            .filter(Result::is_ok)
            .count()
    }
}

/// Gateway state.
#[derive(Debug, Clone)]
pub struct GatewayState {
    /// The client that does the fetching.
    pub fetcher: Arc<Fetcher>,
    /// The token expected in `X-Peercache-Token`.
    pub token: String,
    /// The only acceptable `Host` header, `127.0.0.1:<port>`.
    pub host: String,
    /// Enabled sites.
    pub enrolment: Arc<RwLock<Enrolment>>,
    /// Origins of the extension itself (`chrome-extension://<id>`, `moz-extension://…`).
    pub extension_origins: Vec<String>,
    /// Messages for the extension (bounded; dropped when the session is gone).
    pub notices: tokio::sync::mpsc::Sender<FromHost>,
    /// Requests waiting for `direct_ready`.
    pub acks: Arc<DirectAcks>,
}

/// The gateway's router: every path is handled by one function.
pub fn router(state: GatewayState) -> Router {
    Router::new().fallback(handle).with_state(state)
}

/// Longest a client may take to send a request's headers; also how long a
/// kept-alive connection may sit idle before its next request.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Most gateway connections open at once; more are closed at once (the
/// browser opens a handful per host).
pub const MAX_GATEWAY_CONNECTIONS: usize = 256;

/// Serves `router` on `listener` (HTTP/1.1) with the header and idle timeout and
/// the connection cap above. Returns only if accepting fails for good.
pub async fn serve(listener: tokio::net::TcpListener, router: Router) -> std::io::Result<()> {
    let open = Arc::new(tokio::sync::Semaphore::new(MAX_GATEWAY_CONNECTIONS));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(64 * 1024);
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors or the like: wait a moment, go on.
                tracing::warn!(error = %e, "gateway accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            counter!("peercache_gateway_connections_refused_total").increment(1);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        let conn = http.serve_connection(hyper_util::rt::TokioIo::new(tcp), service);
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "gateway connection ended");
            }
        });
    }
}

fn refuse(status: StatusCode, reason: &'static str) -> Response {
    (status, [(header::CACHE_CONTROL, "no-store")], reason).into_response()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn handle(
    State(state): State<GatewayState>,
    method: Method,
    uri: Uri,
    req_headers: HeaderMap,
) -> Response {
    let host_ok = req_headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .is_some_and(|h| h == state.host);
    if !host_ok {
        return refuse(StatusCode::FORBIDDEN, "wrong Host header");
    }
    let token_ok = req_headers
        .get(headers::GATEWAY_TOKEN)
        .is_some_and(|t| constant_time_eq(t.as_bytes(), state.token.as_bytes()));
    if !token_ok {
        return refuse(StatusCode::FORBIDDEN, "missing or wrong gateway token");
    }
    if method != Method::GET && method != Method::HEAD {
        return refuse(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD");
    }
    let Some(target) = uri
        .path_and_query()
        .and_then(|pq| pq.as_str().strip_prefix("/g/"))
    else {
        return refuse(StatusCode::NOT_FOUND, "gateway paths are /g/<url>");
    };
    let Ok(url) = reqwest::Url::parse(target) else {
        return refuse(StatusCode::BAD_REQUEST, "not a URL");
    };
    let site_origin = crate::fetch::origin(&url);
    let allowed = {
        let e = state.enrolment.read().await;
        e.enabled
            && e.sites.iter().any(|s| {
                s.origin == site_origin && peercache_core::extension::in_scope(url.path(), &s.scope)
            })
    };
    if !allowed {
        return refuse(StatusCode::FORBIDDEN, "not in the scope of an enabled site");
    }
    // A request from a page of another site (its `Origin`) is refused, token or
    // not: the gateway answers only the enrolled site and the extension.
    let cors_origin = match req_headers.get(header::ORIGIN) {
        None => None,
        Some(o) => {
            let own = o
                .to_str()
                .ok()
                .filter(|o| *o == site_origin || state.extension_origins.iter().any(|e| e == o));
            match own {
                Some(o) => HeaderValue::from_str(o).ok(),
                None => {
                    counter!("peercache_gateway_foreign_origin_total").increment(1);
                    return refuse(StatusCode::FORBIDDEN, "request from a foreign origin");
                }
            }
        }
    };

    if method == Method::HEAD {
        // Headers only: the site's own answer to a HEAD, no body behind it.
        return site_as_is(&state, &Method::HEAD, &url, cors_origin).await;
    }
    let dl = match state.fetcher.open(url.as_str()).await {
        Ok(d) => d,
        Err(FetchError::SiteStatus(status)) => {
            // Not an object (a redirect, an error page, …): the site's answer
            // as it is, Location and body included.
            tracing::debug!(status, %url, "the site answered without an object");
            return site_as_is(&state, &Method::GET, &url, cors_origin).await;
        }
        Err(e) => {
            tracing::warn!(error = %e, %url, "gateway fetch failed");
            let (status, why) = failure_response(&e);
            return refuse(status, why);
        }
    };
    if let Some(why) = dl.not_shareable {
        // The extension sends this URL to the site itself from now on. Once it
        // confirms, this request is redirected there too, so the response (and its
        // cookie) reaches the browser from the site's own origin. Without a
        // confirmation in time the page gets the bytes from here, without the
        // cookie (which would land on 127.0.0.1).
        counter!("peercache_gateway_not_shareable_total").increment(1);
        let ack = state.acks.wait_for(url.as_str());
        let told = state
            .notices
            .try_send(FromHost::NotShareable {
                url: url.to_string(),
                reason: why.to_string(),
            })
            .is_ok();
        if !told {
            tracing::warn!(%url, "no room to tell the extension a URL is not shareable");
        }
        let confirmed = match (told, ack) {
            (true, Some(rx)) => {
                let ok = matches!(tokio::time::timeout(DIRECT_ACK_WAIT, rx).await, Ok(Ok(())));
                if !ok {
                    state.acks.hold(url.as_str(), UNANSWERED_HOLD);
                }
                ok
            }
            _ => false,
        };
        if confirmed {
            state.acks.hold(url.as_str(), REDIRECT_HOLD);
            drop(dl); // stops the server's body
            counter!("peercache_gateway_sent_to_site_total").increment(1);
            let mut resp = Response::new(Body::empty());
            *resp.status_mut() = StatusCode::TEMPORARY_REDIRECT;
            let h = resp.headers_mut();
            if let Ok(v) = HeaderValue::from_str(url.as_str()) {
                h.insert(header::LOCATION, v);
            }
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            if let Some(o) = cors_origin {
                h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o);
                h.insert(header::VARY, HeaderValue::from_static("Origin"));
            }
            return resp;
        }
    }
    let source = match &dl.known_source {
        Some(Source::Server) => "server".to_string(),
        Some(Source::Cache) => "cache".to_string(),
        Some(Source::Peer(id)) => format!("peer {id}"),
        None => "peers".to_string(),
    };
    let (content_type, size) = (dl.content_type.clone(), dl.size);
    let site_headers = dl.site_headers.clone();
    // Range (and If-Range against the site's ETag, or the object's hash):
    // a part of the verified bytes, `206`.
    let choice = match size {
        Some(size) => {
            let tag = site_headers
                .get(header::ETAG)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
                .or_else(|| dl.hash.map(|h| format!("\"{}\"", h.to_hex())))
                .unwrap_or_default();
            choose_range(
                req_headers.get(header::RANGE).and_then(|v| v.to_str().ok()),
                req_headers.get(header::IF_RANGE).map(HeaderValue::as_bytes),
                &tag,
                size,
            )
        }
        None => RangeChoice::Whole,
    };
    let (status, first, len) = match (choice, size) {
        (RangeChoice::Part { first, last }, _) => {
            (StatusCode::PARTIAL_CONTENT, first, last - first + 1)
        }
        (RangeChoice::NotSatisfiable, Some(size)) => {
            let mut resp = refuse(StatusCode::RANGE_NOT_SATISFIABLE, "range not satisfiable");
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                resp.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return resp;
        }
        _ => (StatusCode::OK, 0, size.unwrap_or(u64::MAX)),
    };
    if status == StatusCode::PARTIAL_CONTENT {
        counter!("peercache_gateway_ranges_total").increment(1);
    }
    let mut resp = Response::new(Body::from_stream(verified_part(dl, first, len)));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    copy_site_headers(&site_headers, &url, h);
    if let Ok(v) = HeaderValue::from_str(&content_type) {
        h.insert(header::CONTENT_TYPE, v);
    }
    if let Some(size) = size {
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        if status == StatusCode::PARTIAL_CONTENT
            && let Ok(v) =
                HeaderValue::from_str(&format!("bytes {first}-{}/{size}", first + len - 1))
        {
            h.insert(header::CONTENT_RANGE, v);
        }
    }
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if !h.contains_key(header::CACHE_CONTROL) {
        // Bytes from peers carry no caching headers of the site's.
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    finish_headers(h, &source, cors_origin);
    resp
}

/// The verified bytes `first .. first + len` of a download, in order; a
/// failure mid-way aborts the body.
fn verified_part(
    dl: crate::fetch::Download,
    first: u64,
    len: u64,
) -> impl futures_util::Stream<Item = Result<bytes::Bytes, std::io::Error>> {
    futures_util::stream::unfold((dl, first, len), |(mut dl, mut skip, left)| async move {
        loop {
            if left == 0 {
                return None;
            }
            match dl.body.recv().await? {
                Err(e) => return Some((Err(std::io::Error::other(e.to_string())), (dl, 0, 0))),
                Ok(chunk) => {
                    let n = chunk.len() as u64;
                    if skip >= n {
                        skip -= n;
                        continue;
                    }
                    let from = usize::try_from(skip).unwrap_or(usize::MAX);
                    let take = (n - skip).min(left);
                    let to = from + usize::try_from(take).unwrap_or(usize::MAX);
                    return Some((Ok(chunk.slice(from..to)), (dl, 0, left - take)));
                }
            }
        }
    })
}

/// Response fields that never go from the site to the browser through the
/// gateway: hop-by-hop ones, the body's framing (set by the gateway),
/// cookies (they would land on 127.0.0.1), CORS (the gateway's own rule) and
/// peercache's own.
fn passed_to_browser(name: &str) -> bool {
    !matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
            | "content-length"
            | "content-range"
            | "set-cookie"
            | "set-cookie2"
    ) && !name.starts_with("access-control-")
        && !name.starts_with("peercache")
}

/// The site's end-to-end headers onto `h`; a relative `Location` made
/// absolute against the site's URL (relative to the gateway it would be wrong).
fn copy_site_headers(site: &HeaderMap, url: &reqwest::Url, h: &mut HeaderMap) {
    for (k, v) in site {
        if !passed_to_browser(k.as_str()) {
            continue;
        }
        if *k == header::LOCATION {
            if let Some(abs) = v
                .to_str()
                .ok()
                .and_then(|l| url.join(l).ok())
                .and_then(|u| HeaderValue::from_str(u.as_str()).ok())
            {
                h.append(header::LOCATION, abs);
            }
            continue;
        }
        h.append(k.clone(), v.clone());
    }
}

/// `nosniff`, the source, and CORS for the site or the extension only.
fn finish_headers(h: &mut HeaderMap, source: &str, cors_origin: Option<HeaderValue>) {
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if let Ok(v) = HeaderValue::from_str(source) {
        h.insert("peercache-source", v);
    }
    if let Some(o) = cors_origin {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o);
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("peercache-source"),
        );
        h.append(header::VARY, HeaderValue::from_static("Origin"));
    }
}

/// The site's answer passed on as it is (status, end-to-end headers, body):
/// for `HEAD`, and for a `GET` the site answers with no object (a redirect,
/// an error page).
async fn site_as_is(
    state: &GatewayState,
    method: &Method,
    url: &reqwest::Url,
    cors_origin: Option<HeaderValue>,
) -> Response {
    let link = &state.fetcher.parts().link;
    let sent = tokio::time::timeout(
        link.timeout(),
        link.http().request(method.clone(), url.clone()).send(),
    )
    .await;
    let site = match sent {
        Ok(Ok(r)) => r,
        _ => {
            return refuse(
                StatusCode::BAD_GATEWAY,
                "the site is unreachable and no peer could stand in",
            );
        }
    };
    let status = site.status();
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    copy_site_headers(site.headers(), url, h);
    if let Some(len) = site.headers().get(header::CONTENT_LENGTH) {
        h.insert(header::CONTENT_LENGTH, len.clone());
    }
    finish_headers(h, "server", cors_origin);
    if *method != Method::HEAD {
        *resp.body_mut() = Body::from_stream(site.bytes_stream());
    }
    resp
}

/// The status and the words the browser gets for a failed download: the real
/// cause, without internal detail.
fn failure_response(e: &FetchError) -> (StatusCode, &'static str) {
    match e {
        FetchError::SiteStatus(s) => (
            StatusCode::from_u16(*s).unwrap_or(StatusCode::BAD_GATEWAY),
            "the site answered with an error",
        ),
        FetchError::Disk(_) => (
            StatusCode::INSUFFICIENT_STORAGE,
            "this computer's cache could not be written",
        ),
        FetchError::BadUrl(_) => (StatusCode::BAD_REQUEST, "not an http(s) URL"),
        FetchError::ServerMismatch => (
            StatusCode::BAD_GATEWAY,
            "the site's bytes do not match its own hash",
        ),
        FetchError::TooLarge(_) => (StatusCode::BAD_GATEWAY, "the object is too large"),
        FetchError::Unreachable(_) | FetchError::ServerDown { .. } => (
            StatusCode::BAD_GATEWAY,
            "the site is unreachable and no peer could stand in",
        ),
        FetchError::BadReferral(_) | FetchError::Sources(_) | FetchError::Cancelled => (
            StatusCode::BAD_GATEWAY,
            "no source could deliver verified bytes",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_is_not_the_sites_error() {
        let disk = FetchError::Disk(std::io::Error::other("No space left on device"));
        assert_eq!(failure_response(&disk).0, StatusCode::INSUFFICIENT_STORAGE);
        let site = FetchError::SiteStatus(404);
        assert_eq!(
            failure_response(&site),
            (StatusCode::NOT_FOUND, "the site answered with an error")
        );
    }

    #[tokio::test]
    async fn waits_for_direct_ready_are_woken_per_url_and_bounded() {
        let acks = DirectAcks::default();
        let a1 = acks.wait_for("https://s/a").unwrap();
        let a2 = acks.wait_for("https://s/a").unwrap();
        let b = acks.wait_for("https://s/b").unwrap();
        assert_eq!(acks.release("https://s/a"), 2);
        assert!(a1.await.is_ok() && a2.await.is_ok());
        assert_eq!(acks.release("https://s/a"), 0, "already released");
        drop(b); // a request that gave up
        let mut held = Vec::new();
        for i in 0..MAX_DIRECT_WAITING {
            held.push(acks.wait_for(&format!("https://s/{i}")).unwrap());
        }
        assert!(acks.wait_for("https://s/one-more").is_none(), "bounded");
        held.pop();
        assert!(
            acks.wait_for("https://s/one-more").is_some(),
            "a request that gave up frees its place"
        );
    }

    #[test]
    fn a_held_url_is_not_waited_for() {
        let acks = DirectAcks::default();
        acks.hold("https://s/looping", REDIRECT_HOLD);
        assert!(acks.wait_for("https://s/looping").is_none());
        assert!(acks.wait_for("https://s/other").is_some());
        acks.hold("https://s/brief", Duration::from_millis(1));
        std::thread::sleep(Duration::from_millis(5));
        assert!(acks.wait_for("https://s/brief").is_some(), "the hold ends");
        for i in 0..(MAX_DIRECT_WAITING * 2) {
            acks.hold(&format!("https://s/{i}"), UNANSWERED_HOLD);
        }
        assert!(
            acks.no_wait.lock().unwrap().len() <= MAX_DIRECT_WAITING,
            "bounded"
        );
    }
}
