//! Upstream mode (`--upstream URL`): the server is an RFC 9111 shared cache in
//! front of an origin.
//!
//! The cache semantics are `http-cache-semantics`' [`CachePolicy`] (freshness
//! from `s-maxage`, `max-age`, `Expires`, `Age`, `Date`, the `Last-Modified`
//! heuristic, invalid values, `Vary`, `no-store`, `private`, `no-cache`,
//! `must-revalidate`, revalidation requests and `304` merging). Around it, this
//! module adds:
//! - `CDN-Cache-Control` (RFC 9213): when present it replaces `Cache-Control`
//!   and `Expires` for this cache's decisions (the client still gets both);
//! - `stale-while-revalidate` (RFC 5861): a stale response inside the window is
//!   served at once and revalidated in the background;
//! - peercache's stricter sharing rules (`peercache-core`'s `shareable`): a
//!   request with credentials, a response with `Set-Cookie` or varying on
//!   `Cookie`, is never stored and passes through;
//! - bodies on disk by hash, taking part in serve-or-refer like the files of a
//!   site directory, within `--upstream-cache-max` (oldest evicted first);
//! - other methods forwarded with their bodies; an unsafe one that succeeds
//!   invalidates what is stored for its URL (and its `Location` /
//!   `Content-Location` on the same origin).
//!
//! Stored responses keep the origin's end-to-end headers (hop-by-hop ones
//! dropped) and gain `Age`. Only `200` responses to `GET` are stored; the rest
//! passes through untouched: never stored, never hashed, never referred.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, header};
use axum::response::Response;
use futures_util::StreamExt;
use http_cache_semantics::{AfterResponse, BeforeRequest, CacheOptions, CachePolicy};
use peercache_core::hash::{ObjectHash, StreamHasher};
use peercache_core::shareable::{request_shareable, response_shareable};
use tokio::io::AsyncWriteExt;

use crate::site::SiteObject;

/// Largest object kept from the upstream (larger ones pass through whole).
pub const MAX_UPSTREAM_OBJECT: u64 = 1 << 30;
/// Most URLs with stored responses.
const MAX_URLS: usize = 100_000;
/// Most stored variants (`Vary`) of one URL; the oldest is dropped first.
const MAX_VARIANTS: usize = 8;
/// Most background revalidations under way at once.
const MAX_BACKGROUND: usize = 64;

/// Hop-by-hop fields (RFC 9110 §7.6.1): never stored, never forwarded.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Fields a `304` must not change in the stored response (they describe its body).
const BODY_FIELDS: [&str; 4] = [
    "content-length",
    "content-encoding",
    "content-range",
    "content-type",
];

/// Request fields that make a request conditional or partial: the cache
/// evaluates them itself against a complete stored response.
const CLIENT_CONDITIONALS: [HeaderName; 6] = [
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_MATCH,
    header::IF_UNMODIFIED_SINCE,
    header::IF_RANGE,
    header::RANGE,
];

#[derive(Debug, Clone)]
struct Variant {
    /// The decisions (built from the effective headers: see [`effective`]).
    policy: CachePolicy,
    /// The origin's end-to-end headers as stored (merged on each `304`).
    headers: HeaderMap,
    /// Its freshness lifetime.
    lifetime: Duration,
    /// Its `stale-while-revalidate` window.
    swr: Duration,
    /// Its status (`200` ones take part in serve-or-refer; others, e.g. a
    /// `301` or `404`, are replayed as stored).
    status: StatusCode,
    /// The body.
    object: SiteObject,
}

/// The origin and what was kept from it.
#[derive(Debug)]
pub struct Upstream {
    base: String,
    http: reqwest::Client,
    dir: PathBuf,
    entries: Mutex<HashMap<String, Vec<Variant>>>,
    by_hash: Mutex<HashMap<ObjectHash, SiteObject>>,
    /// Objects on disk, oldest first, and their total size (`--upstream-cache-max`).
    kept: Mutex<(VecDeque<(ObjectHash, u64)>, u64)>,
    max_bytes: u64,
    /// Background revalidations under way.
    background: Mutex<std::collections::HashSet<String>>,
}

/// What the origin (or the cache) answered.
#[derive(Debug)]
pub enum Fetched {
    /// A stored object and the headers to send with it (the origin's end-to-end
    /// headers plus `Age`).
    Object {
        /// The body, by hash.
        object: SiteObject,
        /// Its headers.
        headers: HeaderMap,
    },
    /// Anything else: pass it through as is.
    PassThrough(Response),
}

/// Upstream failures.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The origin could not be reached.
    #[error("origin unreachable: {0}")]
    Unreachable(String),
    /// Storing failed.
    #[error("storing: {0}")]
    Io(#[from] std::io::Error),
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn pairs(h: &HeaderMap) -> Vec<(String, String)> {
    h.iter()
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
        .collect()
}

/// `h` without hop-by-hop fields (also those `Connection` names).
pub fn end_to_end(h: &HeaderMap) -> HeaderMap {
    let named: Vec<String> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .collect();
    let mut out = HeaderMap::with_capacity(h.len());
    for (k, v) in h {
        let name = k.as_str();
        if HOP_BY_HOP.contains(&name) || named.iter().any(|n| n == name) {
            continue;
        }
        out.append(k.clone(), v.clone());
    }
    out
}

/// The headers this cache decides by, read as RFC 9111 says before the
/// policy sees them:
/// - with `CDN-Cache-Control` (RFC 9213), its directives replace
///   `Cache-Control` and `Expires` is ignored;
/// - directive names are case-insensitive (`NO-CACHE` is `no-cache`);
/// - `Expires`, `Date` and `Last-Modified` are HTTP dates in one of the three
///   formats (§5.6.7 of RFC 9110); an invalid `Expires` means already expired,
///   an invalid `Date` or `Last-Modified` is ignored;
/// - `Age` is the first value of the first line.
fn effective(h: &HeaderMap) -> HeaderMap {
    let cdn = HeaderName::from_static("cdn-cache-control");
    let mut out = h.clone();
    // All lines form one dictionary; an invalid one is ignored as a whole.
    let cdn_lines: Vec<&str> = h
        .get_all(&cdn)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    if !cdn_lines.is_empty()
        && let Some(directives) = cdn_directives(&cdn_lines.join(", "))
        && let Ok(v) = HeaderValue::from_str(&directives)
    {
        out.remove(header::CACHE_CONTROL);
        out.remove(header::EXPIRES);
        out.insert(header::CACHE_CONTROL, v);
    }
    let directives: Vec<String> = out
        .get_all(header::CACHE_CONTROL)
        .iter()
        .map(|v| {
            String::from_utf8_lossy(v.as_bytes())
                .split(',')
                .map(|d| match d.split_once('=') {
                    Some((k, v)) => format!("{}={}", k.trim().to_ascii_lowercase(), v.trim()),
                    None => d.trim().to_ascii_lowercase(),
                })
                .collect::<Vec<_>>()
                .join(", ")
        })
        .collect();
    out.remove(header::CACHE_CONTROL);
    for d in directives {
        if let Ok(v) = HeaderValue::from_str(&d) {
            out.append(header::CACHE_CONTROL, v);
        }
    }
    for (name, invalid) in [
        (header::EXPIRES, Some("0")),
        (header::DATE, None),
        (header::LAST_MODIFIED, None),
    ] {
        let Some(v) = out.get(&name) else { continue };
        let parsed = v
            .to_str()
            .ok()
            .and_then(peercache_core::conditional::parse_date)
            .and_then(|t| HeaderValue::from_str(&peercache_core::conditional::format_date(t)).ok());
        match (parsed, invalid) {
            (Some(v), _) => {
                out.insert(name, v);
            }
            (None, Some(marker)) => {
                out.insert(name, HeaderValue::from_static(marker));
            }
            (None, None) => {
                out.remove(name);
            }
        }
    }
    if let Some(first) = out
        .get(header::AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .map(|v| v.trim().to_string())
        && let Ok(v) = HeaderValue::from_str(&first)
    {
        out.insert(header::AGE, v);
    }
    out
}

/// `CDN-Cache-Control` (a Structured Field dictionary, RFC 9213 §2) as
/// `Cache-Control` directives, or `None` when it is not a valid dictionary or
/// a delta-seconds directive is not a non-negative integer.
fn cdn_directives(value: &str) -> Option<String> {
    let dict: sfv::Dictionary = sfv::Parser::new(value).parse().ok()?;
    let mut out = Vec::new();
    for (key, entry) in &dict {
        let name = key.as_str();
        let sfv::ListEntry::Item(item) = entry else {
            return None;
        };
        let delta = matches!(
            name,
            "max-age" | "s-maxage" | "stale-while-revalidate" | "stale-if-error"
        );
        match (&item.bare_item, delta) {
            (sfv::BareItem::Integer(n), true) => {
                let n = i64::from(*n);
                if n < 0 {
                    return None;
                }
                out.push(format!("{name}={n}"));
            }
            (_, true) => return None,
            (sfv::BareItem::Boolean(true), false) => out.push(name.to_string()),
            (sfv::BareItem::Boolean(false), false) => {}
            (_, false) => out.push(name.to_string()),
        }
    }
    Some(out.join(", "))
}

/// The value of a `Cache-Control` delta-seconds directive `name`, if valid.
fn directive_secs(h: &HeaderMap, name: &str) -> Option<u64> {
    h.get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|d| {
            let (k, v) = d.split_once('=')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().trim_matches('"').parse().ok())?
        })
}

/// True if a `Cache-Control` directive `name` is present.
fn has_directive(h: &HeaderMap, name: &str) -> bool {
    h.get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|d| {
            d.split('=')
                .next()
                .is_some_and(|k| k.trim().eq_ignore_ascii_case(name))
        })
}

/// The freshness lifetime, or zero for a response stale on arrival (so a
/// `stale-while-revalidate` window is never stretched).
fn lifetime_of(policy: &CachePolicy, now: SystemTime) -> Duration {
    let ttl = policy.time_to_live(now);
    if ttl.is_zero() {
        Duration::ZERO
    } else {
        ttl + policy.age(now)
    }
}

fn options() -> CacheOptions {
    CacheOptions {
        shared: true,
        ..CacheOptions::default()
    }
}

/// The request the cache decides with: `GET` (a `HEAD` is answered from a
/// stored `GET`), without the client's conditionals and range.
fn base_request(pq: &str, headers: &HeaderMap) -> Request<()> {
    let mut req = Request::new(());
    *req.method_mut() = Method::GET;
    if let Ok(uri) = pq.parse() {
        *req.uri_mut() = uri;
    }
    let mut h = end_to_end(headers);
    for name in CLIENT_CONDITIONALS {
        h.remove(name);
    }
    *req.headers_mut() = h;
    req
}

/// Headers sent to the origin: the client's end-to-end ones, without `Host`
/// (the origin's own is set) and peercache's own.
fn to_origin(h: &HeaderMap) -> HeaderMap {
    let mut out = end_to_end(h);
    out.remove(header::HOST);
    let own: Vec<HeaderName> = out
        .keys()
        .filter(|k| k.as_str().starts_with("peercache-") || k.as_str() == "x-peercache-token")
        .cloned()
        .collect();
    for k in own {
        out.remove(k);
    }
    out
}

/// The stored headers to send with a hit: `Age` set to the response's age.
fn with_age(v: &Variant, now: SystemTime) -> HeaderMap {
    let mut h = v.headers.clone();
    h.insert(header::AGE, HeaderValue::from(v.policy.age(now).as_secs()));
    h
}

/// A stored response to send: status, body, headers (with `Age`).
type Hit = (StatusCode, SiteObject, HeaderMap);

fn hit(v: &Variant, now: SystemTime) -> Hit {
    (v.status, v.object.clone(), with_age(v, now))
}

/// A stored response as the client gets it: a `200` as an object (served,
/// ranged or referred by the site), any other status replayed from its file.
async fn stored_answer((status, object, headers): Hit) -> Result<Fetched, UpstreamError> {
    if status == StatusCode::OK {
        return Ok(Fetched::Object { object, headers });
    }
    let file = tokio::fs::File::open(&object.path).await?;
    let mut out = Response::new(Body::from_stream(tokio_util::io::ReaderStream::new(file)));
    *out.status_mut() = status;
    *out.headers_mut() = headers;
    out.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(object.size));
    Ok(Fetched::PassThrough(out))
}

/// What the store holds for a request.
enum Lookup {
    /// Fresh: serve it.
    Fresh(Hit),
    /// Stale within `stale-while-revalidate`: serve it, revalidate behind.
    StaleWhileRevalidate(Hit),
    /// Stale: ask the origin with these headers (the stored validators).
    Revalidate(HeaderMap),
    /// Nothing usable.
    Miss,
}

impl Upstream {
    /// A proxy for `base`, keeping at most `max_bytes` of objects under `dir`.
    pub fn new(
        base: &str,
        dir: PathBuf,
        max_bytes: u64,
        ca_cert: Option<&Path>,
    ) -> Result<Self, UpstreamError> {
        std::fs::create_dir_all(&dir)?;
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(5))
            .read_timeout(Duration::from_secs(60))
            .no_proxy();
        if let Some(path) = ca_cert {
            let pem = std::fs::read(path)?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .map_err(|e| UpstreamError::Unreachable(e.to_string()))?;
            builder = builder.tls_certs_merge([cert]);
        }
        Ok(Self {
            base: base.trim_end_matches('/').to_string(),
            http: builder
                .build()
                .map_err(|e| UpstreamError::Unreachable(e.to_string()))?,
            dir,
            entries: Mutex::new(HashMap::new()),
            by_hash: Mutex::new(HashMap::new()),
            kept: Mutex::new((VecDeque::new(), 0)),
            max_bytes,
            background: Mutex::new(std::collections::HashSet::new()),
        })
    }

    /// True if an object with this hash was kept.
    pub fn knows(&self, hash: &ObjectHash) -> bool {
        lock(&self.by_hash).contains_key(hash)
    }

    /// The kept object with this hash.
    pub fn by_hash(&self, hash: &ObjectHash) -> Option<SiteObject> {
        lock(&self.by_hash).get(hash).cloned()
    }

    /// Answers `method path_and_query` from what was kept or from the origin.
    pub async fn fetch(
        self: &Arc<Self>,
        method: &Method,
        path_and_query: &str,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<Fetched, UpstreamError> {
        if *method != Method::GET && *method != Method::HEAD {
            return self
                .forward_other(method, path_and_query, headers, body)
                .await;
        }
        // Peercache's own rule on top of RFC 9111: credentials go to the origin
        // and the answer is never stored.
        if request_shareable("GET", &pairs(headers)).is_err() {
            let resp = self
                .send(method, path_and_query, to_origin(headers), None)
                .await?;
            return Ok(Fetched::PassThrough(pass_through(resp)));
        }
        let base = base_request(path_and_query, headers);
        let now = SystemTime::now();
        match self.lookup(path_and_query, &base, now) {
            Lookup::Fresh(hit) => {
                metrics::counter!("peercache_upstream_hits_total").increment(1);
                stored_answer(hit).await
            }
            Lookup::StaleWhileRevalidate(hit) => {
                metrics::counter!("peercache_upstream_stale_served_total").increment(1);
                self.revalidate_behind(path_and_query, headers);
                stored_answer(hit).await
            }
            Lookup::Revalidate(conditional) => {
                metrics::counter!("peercache_upstream_revalidations_total").increment(1);
                self.revalidate(method, path_and_query, &base, conditional)
                    .await
            }
            Lookup::Miss => {
                metrics::counter!("peercache_upstream_misses_total").increment(1);
                self.miss(method, path_and_query, &base).await
            }
        }
    }

    /// Finds the stored variant for `base` (which keeps the client's own
    /// `Cache-Control`, e.g. `no-cache` or `max-age=0`).
    fn lookup(&self, pq: &str, base: &Request<()>, now: SystemTime) -> Lookup {
        let entries = lock(&self.entries);
        let Some(variants) = entries.get(pq) else {
            return Lookup::Miss;
        };
        for v in variants {
            if !v.object.path.is_file() {
                continue;
            }
            match v.policy.before_request(base, now) {
                BeforeRequest::Fresh(_) => return Lookup::Fresh(hit(v, now)),
                BeforeRequest::Stale { matches: false, .. } => continue,
                BeforeRequest::Stale { matches: true, .. } => {
                    let age = v.policy.age(now);
                    let client_insists = has_directive(base.headers(), "no-cache")
                        || directive_secs(base.headers(), "max-age").is_some()
                        || base
                            .headers()
                            .get(header::PRAGMA)
                            .is_some_and(|p| p.as_bytes().starts_with(b"no-cache"));
                    let eff = effective(&v.headers);
                    let must = has_directive(&eff, "must-revalidate")
                        || has_directive(&eff, "proxy-revalidate")
                        || has_directive(&eff, "no-cache");
                    if !client_insists && !must && age < v.lifetime + v.swr {
                        return Lookup::StaleWhileRevalidate(hit(v, now));
                    }
                    let BeforeRequest::Stale { request, .. } = v.policy.before_request(base, now)
                    else {
                        return Lookup::Fresh(hit(v, now));
                    };
                    return Lookup::Revalidate(request.headers);
                }
            }
        }
        Lookup::Miss
    }

    /// Asks the origin whether the stored response is still good; a `304`
    /// refreshes it (its headers merged in), anything else replaces it.
    async fn revalidate(
        &self,
        method: &Method,
        pq: &str,
        base: &Request<()>,
        conditional: HeaderMap,
    ) -> Result<Fetched, UpstreamError> {
        let resp = self
            .send(&Method::GET, pq, to_origin(&conditional), None)
            .await?;
        if resp.status() != StatusCode::NOT_MODIFIED {
            return self.answered(method, pq, base, resp).await;
        }
        let now = SystemTime::now();
        let got = end_to_end(resp.headers());
        if let Some(hit) = self.refresh(pq, base, &got, now) {
            return stored_answer(hit).await;
        }
        // A 304 for no version we hold: ask for the whole response.
        self.miss(method, pq, base).await
    }

    /// Merges a `304`'s headers into the stored variant it validates.
    fn refresh(
        &self,
        pq: &str,
        base: &Request<()>,
        got: &HeaderMap,
        now: SystemTime,
    ) -> Option<Hit> {
        let mut entries = lock(&self.entries);
        let variants = entries.get_mut(pq)?;
        for v in variants.iter_mut() {
            if !matches!(
                v.policy.before_request(base, now),
                BeforeRequest::Fresh(_) | BeforeRequest::Stale { matches: true, .. }
            ) {
                continue;
            }
            let mut parts = Response::new(()).into_parts().0;
            parts.status = StatusCode::NOT_MODIFIED;
            parts.headers = effective(got);
            let AfterResponse::NotModified(policy, _) = v.policy.after_response(base, &parts, now)
            else {
                return None;
            };
            for k in got.keys() {
                if !BODY_FIELDS.contains(&k.as_str()) {
                    v.headers.remove(k);
                }
            }
            for (k, val) in got {
                if !BODY_FIELDS.contains(&k.as_str()) {
                    v.headers.append(k.clone(), val.clone());
                }
            }
            v.headers.remove(header::AGE);
            if let Some(age) = got.get(header::AGE) {
                v.headers.insert(header::AGE, age.clone());
            }
            v.policy = policy;
            v.lifetime = lifetime_of(&v.policy, now);
            v.swr = Duration::from_secs(
                directive_secs(&effective(&v.headers), "stale-while-revalidate").unwrap_or(0),
            );
            return Some(hit(v, now));
        }
        None
    }

    /// Revalidates `pq` in the background (at most one at a time per URL, and
    /// [`MAX_BACKGROUND`] in all).
    fn revalidate_behind(self: &Arc<Self>, pq: &str, headers: &HeaderMap) {
        {
            let mut bg = lock(&self.background);
            if bg.len() >= MAX_BACKGROUND || !bg.insert(pq.to_string()) {
                return;
            }
        }
        let this = self.clone();
        let pq = pq.to_string();
        let headers = headers.clone();
        tokio::spawn(async move {
            let base = base_request(&pq, &headers);
            let now = SystemTime::now();
            let conditional = {
                let entries = lock(&this.entries);
                entries.get(&pq).and_then(|vs| {
                    vs.iter()
                        .find_map(|v| match v.policy.before_request(&base, now) {
                            BeforeRequest::Stale {
                                request,
                                matches: true,
                            } => Some(request.headers),
                            _ => None,
                        })
                })
            };
            if let Some(conditional) = conditional
                && let Err(e) = this.revalidate(&Method::GET, &pq, &base, conditional).await
            {
                tracing::warn!(error = %e, path = %pq, "background revalidation failed");
            }
            lock(&this.background).remove(&pq);
        });
    }

    /// Nothing stored: ask the origin (a `HEAD` as a `HEAD`, never stored).
    async fn miss(
        &self,
        method: &Method,
        pq: &str,
        base: &Request<()>,
    ) -> Result<Fetched, UpstreamError> {
        let resp = self
            .send(method, pq, to_origin(base.headers()), None)
            .await?;
        self.answered(method, pq, base, resp).await
    }

    /// The origin's full answer to `base`: stored when a shared cache may,
    /// passed through otherwise.
    async fn answered(
        &self,
        method: &Method,
        pq: &str,
        base: &Request<()>,
        resp: reqwest::Response,
    ) -> Result<Fetched, UpstreamError> {
        let now = SystemTime::now();
        let headers = end_to_end(resp.headers());
        let eff = effective(&headers);
        let mut parts = Response::new(()).into_parts().0;
        parts.status = resp.status();
        parts.headers = eff.clone();
        let policy = CachePolicy::new_options(base, &parts, now, options());
        let lifetime = lifetime_of(&policy, now);
        let validator =
            headers.contains_key(header::ETAG) || headers.contains_key(header::LAST_MODIFIED);
        let storable = *method == Method::GET
            && resp.status() != StatusCode::PARTIAL_CONTENT
            && policy.is_storable()
            && response_shareable(&pairs(&eff)).is_ok()
            && (!lifetime.is_zero() || validator)
            && resp.content_length().is_none_or(|l| l <= self.object_cap());
        if !storable {
            if *method == Method::GET && resp.status() != StatusCode::NOT_MODIFIED {
                // What is stored for this request is out of date.
                self.forget_variant(pq, base, now);
            }
            return Ok(Fetched::PassThrough(pass_through(resp)));
        }
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/octet-stream")
            .to_string();
        let status = resp.status();
        let object = match self.store(resp, content_type).await? {
            Stored::Object(o) => o,
            Stored::TooLarge(body) => {
                let mut out = Response::new(body);
                *out.status_mut() = status;
                *out.headers_mut() = headers;
                out.headers_mut().remove(header::CONTENT_LENGTH);
                return Ok(Fetched::PassThrough(out));
            }
        };
        let variant = Variant {
            status,
            swr: Duration::from_secs(directive_secs(&eff, "stale-while-revalidate").unwrap_or(0)),
            policy,
            headers: headers.clone(),
            lifetime,
            object: object.clone(),
        };
        {
            let mut entries = lock(&self.entries);
            if entries.len() >= MAX_URLS && !entries.contains_key(pq) {
                entries.clear();
            }
            let variants = entries.entry(pq.to_string()).or_default();
            variants.retain(|v| {
                !matches!(
                    v.policy.before_request(base, now),
                    BeforeRequest::Fresh(_) | BeforeRequest::Stale { matches: true, .. }
                )
            });
            variants.insert(0, variant);
            variants.truncate(MAX_VARIANTS);
        }
        let new = lock(&self.by_hash)
            .insert(object.hash, object.clone())
            .is_none();
        if new {
            self.keep(&object);
        }
        stored_answer((status, object, headers)).await
    }

    /// Drops the stored variant `base` selects.
    fn forget_variant(&self, pq: &str, base: &Request<()>, now: SystemTime) {
        let mut entries = lock(&self.entries);
        if let Some(vs) = entries.get_mut(pq) {
            vs.retain(|v| {
                !matches!(
                    v.policy.before_request(base, now),
                    BeforeRequest::Fresh(_) | BeforeRequest::Stale { matches: true, .. }
                )
            });
            if vs.is_empty() {
                entries.remove(pq);
            }
        }
    }

    /// Forwards a method other than `GET`/`HEAD` with its body; an unsafe one
    /// that succeeds invalidates the stored responses of its URL (RFC 9111 §4.4).
    async fn forward_other(
        &self,
        method: &Method,
        pq: &str,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<Fetched, UpstreamError> {
        let body = reqwest::Body::wrap_stream(body.into_data_stream());
        let resp = self
            .send(method, pq, to_origin(headers), Some(body))
            .await?;
        let safe = matches!(*method, Method::OPTIONS | Method::TRACE);
        let status = resp.status();
        if !safe && (status.is_success() || status.is_redirection()) {
            let mut urls = vec![pq.to_string()];
            for name in [header::LOCATION, header::CONTENT_LOCATION] {
                if let Some(target) = resp
                    .headers()
                    .get(&name)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| self.same_origin_path(pq, v))
                {
                    urls.push(target);
                }
            }
            let mut entries = lock(&self.entries);
            for url in urls {
                entries.remove(&url);
            }
            metrics::counter!("peercache_upstream_invalidations_total").increment(1);
        }
        Ok(Fetched::PassThrough(pass_through(resp)))
    }

    /// The path and query `reference` names, when it is on the origin
    /// (relative, or absolute with the origin's scheme and authority).
    fn same_origin_path(&self, pq: &str, reference: &str) -> Option<String> {
        let base = reqwest::Url::parse(&format!("{}{pq}", self.base)).ok()?;
        let target = base.join(reference).ok()?;
        if target.origin() != base.origin() {
            return None;
        }
        let mut out = target.path().to_string();
        if let Some(q) = target.query() {
            out.push('?');
            out.push_str(q);
        }
        Some(out)
    }

    async fn send(
        &self,
        method: &Method,
        pq: &str,
        headers: HeaderMap,
        body: Option<reqwest::Body>,
    ) -> Result<reqwest::Response, UpstreamError> {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{pq}", self.base))
            .headers(headers);
        if let Some(body) = body {
            req = req.body(body);
        }
        req.send()
            .await
            .map_err(|e| UpstreamError::Unreachable(e.to_string()))
    }

    /// The largest object kept: the smaller of [`MAX_UPSTREAM_OBJECT`] and the
    /// cache's size.
    fn object_cap(&self) -> u64 {
        MAX_UPSTREAM_OBJECT.min(self.max_bytes)
    }

    /// Books `object` on disk and evicts the oldest objects (file, hash and
    /// every path naming it) until the cache fits its size.
    fn keep(&self, object: &SiteObject) {
        let mut evicted = Vec::new();
        {
            let mut kept = lock(&self.kept);
            kept.0.push_back((object.hash, object.size));
            kept.1 += object.size;
            while kept.1 > self.max_bytes {
                let Some((hash, size)) = kept.0.pop_front() else {
                    break;
                };
                kept.1 = kept.1.saturating_sub(size);
                evicted.push(hash);
            }
        }
        if evicted.is_empty() {
            return;
        }
        {
            let mut by_hash = lock(&self.by_hash);
            for hash in &evicted {
                if let Some(obj) = by_hash.remove(hash)
                    && let Err(e) = std::fs::remove_file(&obj.path)
                {
                    tracing::warn!(error = %e, "removing an evicted upstream object");
                }
            }
        }
        {
            let mut entries = lock(&self.entries);
            entries.retain(|_, vs| {
                vs.retain(|v| !evicted.contains(&v.object.hash));
                !vs.is_empty()
            });
        }
        metrics::counter!("peercache_upstream_evictions_total").increment(evicted.len() as u64);
    }

    /// Streams the body to a temp file while hashing, then renames it to its
    /// hash. A body that grows past the cap is not kept: what was read so far
    /// and the rest of the origin's stream go to the client instead.
    async fn store(
        &self,
        resp: reqwest::Response,
        content_type: String,
    ) -> Result<Stored, UpstreamError> {
        let tmp = self.dir.join(format!(".tmp-{}", rand::random::<u64>()));
        let mut stream = resp.bytes_stream();
        let result = async {
            let mut file = tokio::fs::File::create(&tmp).await?;
            let mut hasher = StreamHasher::new();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| UpstreamError::Unreachable(e.to_string()))?;
                if hasher.len() + chunk.len() as u64 > self.object_cap() {
                    file.flush().await?;
                    drop(file);
                    return Ok(Err(chunk));
                }
                hasher.update(&chunk);
                file.write_all(&chunk).await?;
            }
            file.sync_all().await?;
            let hash = hasher.finish();
            let path = self.dir.join(hash.to_hex());
            tokio::fs::rename(&tmp, &path).await?;
            Ok(Ok(SiteObject {
                path,
                hash,
                size: hasher.len(),
                content_type,
                modified: None,
            }))
        }
        .await;
        match result {
            Ok(Ok(object)) => Ok(Stored::Object(object)),
            Ok(Err(pending)) => {
                // Read back what was written (the file is unlinked at once, the
                // open handle keeps it), then the chunk in hand, then the rest.
                let file = tokio::fs::File::open(&tmp).await;
                let _ = tokio::fs::remove_file(&tmp).await;
                let file = file?;
                let head = tokio_util::io::ReaderStream::with_capacity(file, 64 * 1024)
                    .map(|r| r.map_err(|e| std::io::Error::other(e.to_string())));
                let rest = futures_util::stream::once(async move { Ok(pending) })
                    .chain(stream.map(|r| r.map_err(std::io::Error::other)));
                Ok(Stored::TooLarge(Body::from_stream(head.chain(rest))))
            }
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                Err(e)
            }
        }
    }
}

/// The outcome of storing a body.
enum Stored {
    /// Kept by hash.
    Object(SiteObject),
    /// Over the cap: the whole body, streamed, for the client alone.
    TooLarge(Body),
}

fn pass_through(resp: reqwest::Response) -> Response {
    let mut out = Response::builder().status(resp.status().as_u16());
    if let Some(h) = out.headers_mut() {
        *h = end_to_end(resp.headers());
    }
    out.body(Body::from_stream(resp.bytes_stream()))
        .unwrap_or_else(|_| Response::new(Body::empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(*k, HeaderValue::from_static(v));
        }
        m
    }

    #[test]
    fn hop_by_hop_fields_are_dropped() {
        let got = end_to_end(&h(&[
            ("connection", "close, x-private-hop"),
            ("x-private-hop", "1"),
            ("transfer-encoding", "chunked"),
            ("content-encoding", "gzip"),
            ("x-frame-options", "DENY"),
        ]));
        assert!(got.get("x-private-hop").is_none());
        assert!(got.get("transfer-encoding").is_none());
        assert!(got.get("connection").is_none());
        assert_eq!(got["content-encoding"], "gzip");
        assert_eq!(got["x-frame-options"], "DENY");
    }

    #[test]
    fn cdn_cache_control_replaces_cache_control() {
        let eff = effective(&h(&[
            ("cache-control", "no-store"),
            ("expires", "0"),
            ("cdn-cache-control", "max-age=60"),
        ]));
        assert_eq!(eff["cache-control"], "max-age=60");
        assert!(eff.get("expires").is_none());
        let plain = h(&[("cache-control", "max-age=5")]);
        assert_eq!(effective(&plain), plain);
        for invalid in ["max-age=\"60\"", "max-age=60, &&&", "max-age=-1"] {
            let got = effective(&h(&[
                ("cache-control", "no-store"),
                ("cdn-cache-control", invalid),
            ]));
            assert_eq!(got["cache-control"], "no-store", "{invalid}: ignored");
        }
    }

    #[test]
    fn directives_parse() {
        let m = h(&[("cache-control", "max-age=5, stale-while-revalidate=\"30\"")]);
        assert_eq!(directive_secs(&m, "stale-while-revalidate"), Some(30));
        assert_eq!(directive_secs(&m, "s-maxage"), None);
        assert!(has_directive(&m, "MAX-AGE"));
        assert!(!has_directive(&m, "no-cache"));
    }
}
