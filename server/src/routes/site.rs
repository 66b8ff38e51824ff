//! The site, `GET|HEAD /{path}` (every path no API route claims): the bytes, or
//! for a client that accepts referrals when the server cannot send in time, a
//! `300` referral to peers that hold them.
//!
//! A request goes down one chain, top to bottom:
//! 1. [`resolve`]: the path → a [`SiteObject`] (a file under the root, or in
//!    upstream mode the origin's response kept by hash; private responses pass
//!    through and leave here).
//! 2. [`decide`]: for a referral-capable client asking for a shareable object,
//!    serve, refer or defer, by `peercache_core::decide::explain`; the look-up
//!    table is asked for holders only when the server is over the client's
//!    target. Every decision is logged and kept for `/admin`.
//! 3. [`answer`]: the response for the verdict: a `503` with `Retry-After`
//!    (defer), a `300` with the holders and the decision's figures (refer), or
//!    the bytes (serve: whole, a range, or headers only) with a signed record.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use metrics::counter;
use peercache_core::decide::{
    Explained, Inputs, Verdict, explain, over_target, seeded_instead, target_speed,
};
use peercache_core::headers::{self, ClientHeader};
use peercache_core::protocol::{ObjectInfo, Proxy, Referral, SERVER_PROXY_ID};
use peercache_core::range::{RangeChoice, choose_range};
use peercache_core::shareable::request_shareable;

use crate::error::ApiError;
use crate::send::{Recipient, add_advertisement, add_object_headers, etag, send_object};
use crate::site::{SiteError, SiteObject};
use crate::state::{AppState, DecisionRecord, Tally};
use crate::store::now_ms;

/// Longest URL path kept with a decision for `/admin`.
const MAX_LOGGED_PATH: usize = 256;

/// A site request as the chain sees it.
pub struct Asked<'a> {
    /// `GET` or `HEAD`.
    pub method: &'a Method,
    /// The URL asked for.
    pub uri: &'a Uri,
    /// The request's headers.
    pub headers: &'a HeaderMap,
    /// Its `Peercache-Client` header: present when it accepts referrals.
    pub client: Option<ClientHeader>,
    /// In the advertised scope and free of credentials (B2).
    pub shareable: bool,
    /// The address the request came from (absent in router-only tests).
    pub from: Option<std::net::IpAddr>,
}

/// The handler: resolve → (not modified?) → decide → answer.
pub async fn site(
    State(state): State<Arc<AppState>>,
    connect: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    counter!("peercache_site_requests_total").increment(1);
    let safe = method == Method::GET || method == Method::HEAD;
    if !safe && state.upstream.is_none() {
        return Err(ApiError::MethodNotAllowed);
    }
    let (obj, representation) = match resolve(&state, &method, &uri, &headers, body).await? {
        Resolved::Object(obj, representation) => (obj, representation),
        Resolved::PassThrough(resp) => return Ok(resp),
    };
    if let Some(resp) = not_modified(&state, &headers, &representation) {
        return Ok(resp);
    }
    let asked = Asked {
        method: &method,
        uri: &uri,
        headers: &headers,
        client: client_header(&headers)?,
        shareable: peercache_core::extension::in_scope(uri.path(), &state.config.scope)
            && request_shareable(method.as_str(), &header_pairs(&headers)).is_ok(),
        from: connect.map(|c| c.0.0.ip()),
    };
    let decided = match (&asked.client, asked.shareable) {
        (Some(client), true) => {
            Some(decide(&state, uri.path(), client, &obj, asks_whole(&asked)).await)
        }
        _ => None,
    };
    answer(&state, &asked, &obj, &representation, decided).await
}

/// What a site path resolves to.
pub enum Resolved {
    /// An object the server can serve and peers can share, with the headers
    /// it goes out with (its representation: the origin's end-to-end headers
    /// plus `Age` in upstream mode; `ETag`, `Last-Modified` and `Cache-Control`
    /// for a file of the site).
    Object(SiteObject, HeaderMap),
    /// The origin's own response, passed through untouched (upstream mode).
    PassThrough(Response),
}

/// Step 1: the path → an object (from the site root, or the upstream).
pub async fn resolve(
    state: &Arc<AppState>,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Body,
) -> Result<Resolved, ApiError> {
    if let Some(up) = &state.upstream {
        let pq = uri.path_and_query().map_or("/", |p| p.as_str());
        return match up.fetch(method, pq, headers, body).await {
            Ok(crate::upstream::Fetched::Object { object, headers }) => {
                Ok(Resolved::Object(object, headers))
            }
            Ok(crate::upstream::Fetched::PassThrough(mut resp)) => {
                add_advertisement(state, resp.headers_mut());
                counter!("peercache_requests_passed_through_total").increment(1);
                Ok(Resolved::PassThrough(resp))
            }
            Err(e) => Err(ApiError::bad_gateway(e)),
        };
    }
    let path = state.site.resolve(uri.path()).map_err(|e| match e {
        SiteError::InvalidPath => ApiError::BadRequest("invalid path".into()),
        _ => ApiError::NotFound,
    })?;
    let st = state.clone();
    let obj = tokio::task::spawn_blocking(move || st.site.object(&path))
        .await
        .map_err(ApiError::internal)?
        .map_err(|e| match e {
            SiteError::NotFound => ApiError::NotFound,
            SiteError::InvalidPath => ApiError::BadRequest("invalid path".into()),
            SiteError::Io(e) => ApiError::internal(e),
        })?;
    let representation = file_representation(state, uri.path(), &obj);
    Ok(Resolved::Object(obj, representation))
}

/// The headers a file of the site goes out with: its hash as `ETag`, its
/// modification time as `Last-Modified`, and the `Cache-Control` the operator
/// set for its path (`no-cache` unless told otherwise).
fn file_representation(state: &AppState, path: &str, obj: &SiteObject) -> HeaderMap {
    let mut h = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&etag(obj)) {
        h.insert(header::ETAG, v);
    }
    if let Some(t) = obj.modified
        && let Ok(v) = HeaderValue::from_str(&peercache_core::conditional::format_date(t))
    {
        h.insert(header::LAST_MODIFIED, v);
    }
    let cc = state
        .config
        .cache_control_for(path)
        .and_then(|v| HeaderValue::from_str(v).ok())
        .unwrap_or(HeaderValue::from_static("no-cache"));
    h.insert(header::CACHE_CONTROL, cc);
    h
}

/// A `304 Not Modified` when the client's conditional `GET`/`HEAD` names the
/// version at hand (`peercache_core::conditional`).
fn not_modified(state: &AppState, req: &HeaderMap, rep: &HeaderMap) -> Option<Response> {
    let text = |h: &HeaderMap, name: header::HeaderName| {
        h.get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let (inm, ims) = (
        text(req, header::IF_NONE_MATCH),
        text(req, header::IF_MODIFIED_SINCE),
    );
    if inm.is_none() && ims.is_none() {
        return None;
    }
    let (tag, lm) = (text(rep, header::ETAG), text(rep, header::LAST_MODIFIED));
    let current = peercache_core::conditional::not_modified(
        peercache_core::conditional::Conditions {
            if_none_match: inm.as_deref(),
            if_modified_since: ims.as_deref(),
        },
        peercache_core::conditional::Validators {
            etag: tag.as_deref(),
            last_modified: lm.as_deref(),
        },
    );
    if !current {
        return None;
    }
    counter!("peercache_requests_not_modified_total").increment(1);
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::NOT_MODIFIED;
    let h = resp.headers_mut();
    for (k, v) in rep {
        if !matches!(
            k.as_str(),
            "content-length" | "content-range" | "transfer-encoding"
        ) {
            h.append(k.clone(), v.clone());
        }
    }
    add_advertisement(state, h);
    Some(resp)
}

/// A decision and, for a referral, the holders it names.
#[derive(Debug, Clone)]
pub struct Decided {
    /// The figures, verdict and reason.
    pub explained: Explained,
    /// The holders the look-up table listed (empty unless asked).
    pub holders: Vec<Proxy>,
    /// A serve that listed its client, dialed at this address, as the
    /// object's receiver (`Receivers::claim`), to be undone if the bytes
    /// never start.
    pub claimed: Option<String>,
}

/// A `GET` of the whole body (no `Range`, not headers only): what a receiver
/// asks for.
fn asks_whole(asked: &Asked<'_>) -> bool {
    *asked.method == Method::GET
        && !asked.headers.contains_key(header::RANGE)
        && !asked.headers.contains_key(headers::HEADERS_ONLY)
}

/// Step 2: serve, refer or defer this client's request for `obj`.
pub async fn decide(
    state: &AppState,
    path: &str,
    client: &ClientHeader,
    obj: &SiteObject,
    whole: bool,
) -> Decided {
    let base_target_ms = u64::try_from(state.config.target_period.as_millis()).unwrap_or(u64::MAX);
    // Ask the table only when the server would be too slow with any holder at all.
    let over = over_target(
        obj.size,
        state.egress.snapshot(),
        client.bandwidth,
        base_target_ms,
    );
    let mut holders = if over {
        let mut holders = state
            .store
            .holders(
                &obj.hash,
                client.peer_id.as_deref(),
                now_ms(),
                state.config.max_proxies,
            )
            .await
            .unwrap_or_else(|e| {
                // No table, no referral: the client is served (or deferred).
                state.store_failed(&e);
                Vec::new()
            });
        // Then peers receiving it now (partial holders, issue 12 point 1).
        if state.config.refer_to_receivers {
            let max = state.config.max_proxies;
            for r in state
                .receivers
                .list(&obj.hash, client.peer_id.as_deref(), max)
            {
                if holders.len() >= max {
                    break;
                }
                if !holders.iter().any(|h| h.id == r.id) {
                    holders.push(r);
                }
            }
        }
        holders
    } else {
        Vec::new()
    };
    let mut inputs = Inputs {
        size: obj.size,
        egress: state.egress.snapshot(),
        client_bandwidth: client.bandwidth,
        base_target_ms,
        usable_holders: holders.len(),
        // Only transfers to a serving peer that keep moving, for a bounded time.
        sending_this_object: state.sending.deferrable(&obj.hash, state.config.max_defer),
    };
    let mut explained = explain(&inputs);
    // Too slow for anyone and nobody to refer to: this client is served (or,
    // for a large object, seeded) and becomes the receiver the next ones are
    // referred to, unless a client asking at the same moment claimed that
    // first (then it is referred too).
    let mut claimed = None;
    if over
        && whole
        && state.config.refer_to_receivers
        && explained.verdict == Verdict::Serve
        && let Some(id) = client.peer_id.as_deref()
        && let Some(addr) = state
            .store
            .peer_addr(id, now_ms())
            .await
            .unwrap_or_else(|e| {
                state.store_failed(&e);
                None
            })
    {
        let others = state
            .receivers
            .claim(obj.hash, id, &addr, state.config.max_proxies);
        if others.is_empty() {
            // A large object: seeded to this client and the crowd after it
            // rather than sent whole (`decide::seeded_instead`).
            let seeded = seeded_instead(explained);
            if state.config.seed_crowds
                && seeded.verdict == Verdict::Refer
                && state.seeds.open(obj.hash, obj.size)
            {
                explained = seeded;
            } else {
                claimed = Some(addr);
            }
        } else {
            for r in others {
                if holders.len() < state.config.max_proxies && !holders.iter().any(|h| h.id == r.id)
                {
                    holders.push(r);
                }
            }
            inputs.usable_holders = holders.len();
            explained = explain(&inputs);
        }
    }
    if matches!(explained.verdict, Verdict::Defer { .. }) {
        state.sending.deferred(obj.hash);
    }
    let client_id = client.peer_id.as_deref();
    tracing::info!(
        path,
        client = client_id.map_or("-", |id| id.get(..8).unwrap_or(id)),
        verdict = explained.verdict.name(),
        reason = ?explained.reason,
        estimate_ms = explained.estimate_ms,
        target_ms = explained.target_ms,
        bytes_in_flight = explained.inputs.egress.bytes_in_flight,
        holders = explained.inputs.usable_holders,
        "decision"
    );
    state.decisions.push(DecisionRecord {
        at_ms: now_ms(),
        path: bounded(path, MAX_LOGGED_PATH),
        client: client_id.map(str::to_string),
        explained,
    });
    Decided {
        explained,
        holders,
        claimed,
    }
}

/// Step 3: the response for the verdict (the bytes when there was no decision
/// to make).
pub async fn answer(
    state: &Arc<AppState>,
    asked: &Asked<'_>,
    obj: &SiteObject,
    representation: &HeaderMap,
    decided: Option<Decided>,
) -> Result<Response, ApiError> {
    let peer_id = asked.client.as_ref().and_then(|c| c.peer_id.as_deref());
    let mut to = None;
    let mut claimed = false;
    if let Some(decided) = decided {
        claimed = decided.claimed.is_some();
        match decided.explained.verdict {
            Verdict::Defer { retry_after_s } => return Ok(deferral(retry_after_s)),
            Verdict::Refer => {
                // A referral is no copy: the client is listed only once it has
                // the bytes from this server, or proves it holds them.
                if let Some(id) = peer_id {
                    let offered: Vec<String> =
                        decided.holders.iter().map(|p| p.id.clone()).collect();
                    if let Err(e) = state
                        .store
                        .book_offer(id, &obj.hash, &offered, now_ms())
                        .await
                    {
                        state.store_failed(&e);
                    }
                    // A serving client fetching from peers holds part of the
                    // object soon, and serves it: the next ones may use it.
                    if state.config.refer_to_receivers
                        && let Ok(Some(addr)) = state.store.peer_addr(id, now_ms()).await
                    {
                        state.receivers.add(obj.hash, id, &addr);
                    }
                }
                return Ok(referral(state, asked, obj, representation, decided));
            }
            Verdict::Serve => {
                // Listed later only if every byte goes out (send.rs); a
                // claimed receiver keeps the address it claimed with.
                if let Some(id) = peer_id {
                    let addr = match decided.claimed {
                        Some(addr) => Some(addr),
                        None => match state.store.peer_addr(id, now_ms()).await {
                            Ok(addr) => addr,
                            Err(e) => {
                                state.store_failed(&e);
                                None
                            }
                        },
                    };
                    to = Some(Recipient {
                        peer_id: id.to_string(),
                        serving: addr.is_some(),
                        addr,
                    });
                }
            }
        }
    }
    let served = serve(state, asked, obj, representation, to.as_ref()).await;
    if served.is_err()
        && claimed
        && let Some(id) = peer_id
    {
        // It was listed as the receiver but is sent nothing.
        state.receivers.remove(&obj.hash, id);
    }
    served
}

/// `503` with `Retry-After`: the object is on its way to another client.
fn deferral(retry_after_s: u64) -> Response {
    counter!("peercache_requests_deferred_total").increment(1);
    let mut resp = (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(serde_json::json!({
            "error": "the object is on its way to another client; ask again to be referred to it",
            "retry_after": retry_after_s,
        })),
    )
        .into_response();
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_s));
    resp
}

/// `300`: the holders, the server last, and why.
fn referral(
    state: &AppState,
    asked: &Asked<'_>,
    obj: &SiteObject,
    representation: &HeaderMap,
    decided: Decided,
) -> Response {
    let own = state.own_url(asked.headers);
    let mut proxies = decided.holders;
    proxies.push(Proxy {
        id: SERVER_PROXY_ID.to_string(),
        addr: own.clone(),
        direct: Some(true),
        rtt_ms: None,
        load: None,
    });
    let period = decided.explained.target_ms;
    let url = format!(
        "{own}{}",
        asked.uri.path_and_query().map_or("/", |p| p.as_str())
    );
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
        why: Some(decided.explained),
        headers: representation
            .iter()
            .filter(|(k, _)| {
                !matches!(
                    k.as_str(),
                    "content-length" | "transfer-encoding" | "content-range" | "accept-ranges"
                )
            })
            .filter_map(|(k, v)| Some((k.to_string(), v.to_str().ok()?.to_string())))
            .collect(),
    };
    state.figures.add(Tally::Referred, 1);
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

/// The bytes: headers only (Firefox's extension fills the body in from peers),
/// a range, or the whole object; a shareable one with its signed record.
async fn serve(
    state: &Arc<AppState>,
    asked: &Asked<'_>,
    obj: &SiteObject,
    representation: &HeaderMap,
    to: Option<&Recipient>,
) -> Result<Response, ApiError> {
    // Nobody gets the object's bytes while a proof of it runs (a proof must
    // not be answerable through the server).
    if !state.proving.wait_clear(&obj.hash).await {
        return Err(ApiError::Conflict(
            "a possession proof of this object is under way".into(),
        ));
    }
    let headers = asked.headers;
    let url = format!(
        "{}{}",
        state.own_url(headers),
        asked.uri.path_and_query().map_or("/", |p| p.as_str())
    );
    // Firefox's extension replaces the body of this very request with verified
    // bytes from peers (filterResponseData) and asks for headers only, so no byte
    // travels twice.
    let headers_only = asked.shareable
        && headers
            .get(headers::HEADERS_ONLY)
            .is_some_and(|v| v.as_bytes() == b"1");
    let mut resp = if headers_only {
        counter!("peercache_requests_headers_only_total").increment(1);
        let mut r = send_object(state, obj, true, None, None).await?;
        apply_representation(&mut r, representation);
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
        let range = if *asked.method == Method::GET {
            site_range(headers, obj, representation)?
        } else {
            None
        };
        if range.is_some() {
            counter!("peercache_range_requests_total").increment(1);
        }
        let mut r = send_object(state, obj, *asked.method == Method::HEAD, range, to).await?;
        apply_representation(&mut r, representation);
        r
    };
    if asked.shareable
        && let Ok(v) = HeaderValue::from_str(&headers::encode_record(&state.sign(&url, obj)))
    {
        resp.headers_mut().insert(headers::RECORD, v);
    }
    Ok(resp)
}

/// The object's representation headers on a `200`/`206` (the origin's, in
/// upstream mode), over the defaults `send_object` put; `Accept-Ranges` added.
fn apply_representation(resp: &mut Response, representation: &HeaderMap) {
    let h = resp.headers_mut();
    h.remove(header::CACHE_CONTROL);
    h.remove(header::ETAG);
    // A 206's own Content-Range wins; a stored 200 keeps the origin's.
    let ranged = h.contains_key(header::CONTENT_RANGE);
    let kept = |k: &header::HeaderName| {
        let framing = matches!(
            k.as_str(),
            "content-length" | "transfer-encoding" | "accept-ranges"
        );
        let own_range = ranged && k == header::CONTENT_RANGE;
        !framing && !own_range
    };
    for k in representation.keys().filter(|k| kept(k)) {
        h.remove(k);
    }
    for (k, v) in representation.iter().filter(|(k, _)| kept(k)) {
        h.append(k.clone(), v.clone());
    }
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
}

/// The byte range a GET of a site file gets, by `peercache_core::range`,
/// `If-Range` compared with the representation's `ETag`.
fn site_range(
    req: &HeaderMap,
    obj: &SiteObject,
    representation: &HeaderMap,
) -> Result<Option<(u64, u64)>, ApiError> {
    let tag = representation
        .get(header::ETAG)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let choice = choose_range(
        req.get(header::RANGE).and_then(|v| v.to_str().ok()),
        req.get(header::IF_RANGE).map(HeaderValue::as_bytes),
        tag,
        obj.size,
    );
    match choice {
        RangeChoice::Whole => Ok(None),
        RangeChoice::Part { first, last } => Ok(Some((first, last))),
        RangeChoice::NotSatisfiable => Err(ApiError::RangeNotSatisfiable(obj.size)),
    }
}

/// The `Peercache-Client` header, if any (malformed: `400`).
fn client_header(headers: &HeaderMap) -> Result<Option<ClientHeader>, ApiError> {
    let Some(value) = headers.get(headers::CLIENT) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| ApiError::BadRequest("Peercache-Client is not ASCII".into()))?;
    ClientHeader::parse(value)
        .map(Some)
        .map_err(|e| ApiError::BadRequest(e.to_string()))
}

fn header_pairs(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
        .collect()
}

/// `s`, cut to at most `max` bytes on a character boundary.
fn bounded(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

#[cfg(test)]
pub(crate) mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use axum::http::Request;
    use tower::ServiceExt;

    use super::*;
    use crate::config::Config;
    use crate::store::{MemoryStore, Store, StoreLimits};

    const SIZE: usize = 10_000;

    /// A site with `/static/a.bin` and a server that is over every client's
    /// target (1 MiB/s, a target period of 0 s).
    fn referring_state(tag: &str) -> (Arc<AppState>, peercache_core::ObjectHash) {
        referring_state_with(tag, &(0..SIZE).map(|i| (i % 251) as u8).collect::<Vec<_>>())
    }

    /// The same with `data` as `/static/a.bin`.
    pub(crate) fn referring_state_with(
        tag: &str,
        data: &[u8],
    ) -> (Arc<AppState>, peercache_core::ObjectHash) {
        referring_state_configured(tag, data, |_| {})
    }

    /// The same, its configuration changed by `tweak`.
    pub(crate) fn referring_state_configured(
        tag: &str,
        data: &[u8],
        tweak: impl FnOnce(&mut Config),
    ) -> (Arc<AppState>, peercache_core::ObjectHash) {
        let root = std::env::temp_dir().join(format!("pc-site-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("static")).unwrap();
        std::fs::write(root.join("static/a.bin"), data).unwrap();
        let mut config = Config::new(&root);
        config.egress_limit = Some(1 << 20);
        config.target_period = std::time::Duration::ZERO;
        tweak(&mut config);
        let store = Store::Memory(MemoryStore::new(StoreLimits {
            ttl_ms: 60_000,
            max_strikes: 3,
            slow_threshold_ms: 1000,
        }));
        let state = Arc::new(AppState::new(config, store, None, false));
        (state, peercache_core::ObjectHash::of(data))
    }

    pub(crate) async fn get(
        state: &Arc<AppState>,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Response {
        let mut req = Request::get(path);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        crate::routes::app(state.clone())
            .merge(crate::routes::admin_app(state.clone()))
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap()
    }

    async fn json(resp: Response) -> serde_json::Value {
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn a_referral_says_why_and_admin_lists_the_decision() {
        let (state, hash) = referring_state("refer");
        // Nobody holds it: served, and the reason says so.
        let r = get(&state, "/static/a.bin", &[("peercache-client", "id=me")]).await;
        assert_eq!(r.status(), StatusCode::OK);
        axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();

        let now = now_ms();
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let dial = "peer:?direct=127.0.0.1:40001".to_string();
        state
            .store
            .register("holder1", ip, Some(dial), None, now)
            .await
            .unwrap();
        state.store.record_fetch("holder1", &hash).await.unwrap();
        state
            .store
            .announce("holder1", &[hash], &[], None, now)
            .await
            .unwrap();

        let r = get(
            &state,
            "/static/a.bin",
            &[("peercache-client", "id=me; bw=100000000")],
        )
        .await;
        assert_eq!(r.status(), StatusCode::MULTIPLE_CHOICES);
        let referral = json(r).await;
        assert_eq!(referral["proxies"][0]["id"], "holder1");
        let why = &referral["why"];
        assert_eq!(why["verdict"], "refer");
        assert_eq!(why["reason"], "over_target_with_holders");
        assert_eq!(why["inputs"]["size"], SIZE);
        assert_eq!(why["inputs"]["usable_holders"], 1);
        assert_eq!(why["inputs"]["client_bandwidth"], 100_000_000);
        assert_eq!(why["inputs"]["egress"]["limit_bytes_per_s"], 1 << 20);
        assert_eq!(why["target_ms"], referral["target_period_ms"]);
        assert!(why["estimate_ms"].as_u64().unwrap() > why["target_ms"].as_u64().unwrap());

        let stats = json(get(&state, "/admin/stats.json", &[]).await).await;
        let decisions = stats["decisions"].as_array().unwrap();
        assert_eq!(decisions.len(), 2);
        let newest = &decisions[0];
        assert_eq!(newest["path"], "/static/a.bin");
        assert_eq!(newest["client"], "me");
        assert_eq!(newest["verdict"], "refer");
        assert_eq!(newest["reason"], "over_target_with_holders");
        assert_eq!(newest["inputs"], why["inputs"]);
        assert_eq!(newest["estimate_ms"], why["estimate_ms"]);
        assert_eq!(
            newest["why"],
            peercache_core::decide::Reason::OverTargetWithHolders.describe()
        );
        let first = &decisions[1];
        assert_eq!(first["verdict"], "serve");
        assert_eq!(first["reason"], "over_target_no_holders");
        assert_eq!(first["inputs"]["usable_holders"], 0);
        // The page draws the table.
        let page = get(&state, "/admin", &[]).await;
        let html = axum::body::to_bytes(page.into_body(), 1 << 20)
            .await
            .unwrap();
        assert!(String::from_utf8_lossy(&html).contains("decision-rows"));
    }

    #[tokio::test]
    async fn of_a_crowd_asking_at_once_one_is_served_and_the_rest_referred_to_it() {
        let (state, _) = referring_state("crowd");
        let now = now_ms();
        let ids: Vec<String> = (0..6).map(|i| format!("crowd{i}")).collect();
        for (i, id) in ids.iter().enumerate() {
            let dial = format!("peer:?direct=127.0.0.1:{}", 41000 + i);
            state
                .store
                .register(id, IpAddr::V4(Ipv4Addr::LOCALHOST), Some(dial), None, now)
                .await
                .unwrap();
        }
        // All six ask before any is sent a byte (each waits at its file open).
        let asks = ids.iter().map(|id| {
            let header = format!("id={id}; bw=100000000");
            let state = state.clone();
            async move { get(&state, "/static/a.bin", &[("peercache-client", &header)]).await }
        });
        let answers = futures_util::future::join_all(asks).await;
        let served = answers
            .iter()
            .filter(|r| r.status() == StatusCode::OK)
            .count();
        assert_eq!(served, 1, "one whole copy, not one per asker");
        for r in answers
            .into_iter()
            .filter(|r| r.status() == StatusCode::MULTIPLE_CHOICES)
        {
            let referral = json(r).await;
            let first = referral["proxies"][0]["id"].as_str().unwrap().to_string();
            assert!(ids.contains(&first), "referred to a receiver: {referral}");
        }
    }

    #[tokio::test]
    async fn clients_without_the_header_are_served_and_not_recorded() {
        let (state, _) = referring_state("plain");
        let r = get(&state, "/static/a.bin", &[]).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert!(state.decisions.newest_first().is_empty());
    }

    #[tokio::test]
    async fn site_ranges_follow_the_core_rule() {
        let (state, hash) = referring_state("range");
        let r = get(&state, "/static/a.bin", &[("range", "bytes=10-19")]).await;
        assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
        assert_eq!(r.headers()[header::CONTENT_RANGE], "bytes 10-19/10000");
        let tag = format!("\"{}\"", hash.to_hex());
        let r = get(
            &state,
            "/static/a.bin",
            &[("range", "bytes=10-19"), ("if-range", "\"old\"")],
        )
        .await;
        assert_eq!(r.status(), StatusCode::OK, "another version: all of it");
        let r = get(
            &state,
            "/static/a.bin",
            &[("range", "bytes=10-19"), ("if-range", tag.as_str())],
        )
        .await;
        assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
        let r = get(&state, "/static/a.bin", &[("range", "bytes=20000-")]).await;
        assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(r.headers()[header::CONTENT_RANGE], "bytes */10000");
    }
}
