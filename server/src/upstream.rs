//! Upstream mode (`--upstream URL`): the server is a reverse proxy in front of an
//! origin. Responses a shared cache may store (DESIGN B2, `peercache-core`'s
//! `shareable` rules, and a positive freshness lifetime) are kept on disk by hash
//! and take part in serve-or-refer exactly like the files of a site directory.
//! Everything else passes through untouched: never stored, never hashed, never
//! referred.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, Method, StatusCode, header};
use axum::response::Response;
use futures_util::StreamExt;
use peercache_core::hash::{ObjectHash, StreamHasher};
use peercache_core::shareable::{request_shareable, response_shareable};
use tokio::io::AsyncWriteExt;

use crate::site::SiteObject;

/// Largest object kept from the upstream.
pub const MAX_UPSTREAM_OBJECT: u64 = 1 << 30;
/// Most entries kept.
const MAX_ENTRIES: usize = 100_000;
/// Freshness when the origin gives none (a conservative heuristic).
const DEFAULT_TTL: Duration = Duration::from_secs(60);

/// Request headers forwarded to the origin.
const FORWARDED: [HeaderName; 6] = [
    header::ACCEPT,
    header::ACCEPT_LANGUAGE,
    header::USER_AGENT,
    header::COOKIE,
    header::AUTHORIZATION,
    header::RANGE,
];

/// Response headers passed back on pass-through.
const PASSED_BACK: [HeaderName; 9] = [
    header::CONTENT_TYPE,
    header::CONTENT_LENGTH,
    header::CACHE_CONTROL,
    header::SET_COOKIE,
    header::VARY,
    header::LOCATION,
    header::CONTENT_RANGE,
    header::LAST_MODIFIED,
    header::ETAG,
];

#[derive(Debug, Clone)]
struct Entry {
    object: SiteObject,
    fresh_until: Instant,
}

/// The origin and what was kept from it.
#[derive(Debug)]
pub struct Upstream {
    base: String,
    http: reqwest::Client,
    dir: PathBuf,
    entries: Mutex<HashMap<String, Entry>>,
    by_hash: Mutex<HashMap<ObjectHash, SiteObject>>,
    /// Objects on disk, oldest first, and their total size (`--upstream-cache-max`).
    kept: Mutex<(std::collections::VecDeque<(ObjectHash, u64)>, u64)>,
    max_bytes: u64,
}

/// What the origin answered.
#[derive(Debug)]
pub enum Fetched {
    /// A shareable object, stored and hashed.
    Object(SiteObject),
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

/// Freshness lifetime from `Cache-Control` (`s-maxage` over `max-age`; `no-cache`
/// means zero), or the default heuristic.
pub fn freshness(headers: &[(String, String)]) -> Duration {
    let mut max_age = None;
    let mut s_maxage = None;
    for (k, v) in headers {
        if !k.eq_ignore_ascii_case("cache-control") {
            continue;
        }
        for d in v.split(',') {
            let d = d.trim();
            let (name, value) = d.split_once('=').unwrap_or((d, ""));
            let secs = value.trim_matches('"').parse::<u64>().ok();
            match name.to_ascii_lowercase().as_str() {
                "no-cache" => return Duration::ZERO,
                "max-age" => max_age = secs,
                "s-maxage" => s_maxage = secs,
                _ => {}
            }
        }
    }
    s_maxage
        .or(max_age)
        .map_or(DEFAULT_TTL, Duration::from_secs)
}

fn pairs(h: &reqwest::header::HeaderMap) -> Vec<(String, String)> {
    h.iter()
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
        .collect()
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
            .timeout(Duration::from_secs(300))
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
            kept: Mutex::new((std::collections::VecDeque::new(), 0)),
            max_bytes,
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
        &self,
        method: &Method,
        path_and_query: &str,
        headers: &HeaderMap,
    ) -> Result<Fetched, UpstreamError> {
        let req_pairs: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
            .collect();
        let cacheable_request = request_shareable(method.as_str(), &req_pairs).is_ok()
            && !headers.contains_key(header::RANGE);
        if cacheable_request
            && let Some(e) = lock(&self.entries).get(path_and_query)
            && e.fresh_until > Instant::now()
            && e.object.path.is_file()
        {
            return Ok(Fetched::Object(e.object.clone()));
        }
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path_and_query}", self.base));
        for name in FORWARDED {
            if let Some(v) = headers.get(&name) {
                req = req.header(name, v);
            }
        }
        let resp = req
            .send()
            .await
            .map_err(|e| UpstreamError::Unreachable(e.to_string()))?;
        let resp_pairs = pairs(resp.headers());
        let ttl = freshness(&resp_pairs);
        let storable = cacheable_request
            && *method == Method::GET
            && resp.status() == StatusCode::OK
            && response_shareable(&resp_pairs).is_ok()
            && !ttl.is_zero()
            && resp.content_length().is_none_or(|l| l <= self.object_cap());
        if !storable {
            return Ok(Fetched::PassThrough(pass_through(resp)));
        }
        let content_type = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/octet-stream")
            .to_string();
        let object = self.store(resp, content_type).await?;
        let mut entries = lock(&self.entries);
        if entries.len() >= MAX_ENTRIES {
            entries.clear();
        }
        entries.insert(
            path_and_query.to_string(),
            Entry {
                object: object.clone(),
                fresh_until: Instant::now() + ttl,
            },
        );
        drop(entries);
        let new = lock(&self.by_hash)
            .insert(object.hash, object.clone())
            .is_none();
        if new {
            self.keep(&object);
        }
        Ok(Fetched::Object(object))
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
        lock(&self.entries).retain(|_, e| !evicted.contains(&e.object.hash));
        metrics::counter!("peercache_upstream_evictions_total").increment(evicted.len() as u64);
    }

    /// Streams the body to a temp file while hashing, then renames it to its hash.
    async fn store(
        &self,
        resp: reqwest::Response,
        content_type: String,
    ) -> Result<SiteObject, UpstreamError> {
        let tmp = self.dir.join(format!(".tmp-{}", rand::random::<u64>()));
        let result = async {
            let mut file = tokio::fs::File::create(&tmp).await?;
            let mut hasher = StreamHasher::new();
            let mut stream = resp.bytes_stream();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| UpstreamError::Unreachable(e.to_string()))?;
                if hasher.len() + chunk.len() as u64 > self.object_cap() {
                    return Err(UpstreamError::Io(std::io::Error::other("object too large")));
                }
                hasher.update(&chunk);
                file.write_all(&chunk).await?;
            }
            file.sync_all().await?;
            let hash = hasher.finish();
            let path = self.dir.join(hash.to_hex());
            tokio::fs::rename(&tmp, &path).await?;
            Ok(SiteObject {
                path,
                hash,
                size: hasher.len(),
                content_type,
            })
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        result
    }
}

fn pass_through(resp: reqwest::Response) -> Response {
    let mut out = Response::builder().status(resp.status().as_u16());
    if let Some(h) = out.headers_mut() {
        for name in PASSED_BACK {
            for v in resp.headers().get_all(&name) {
                h.append(name.clone(), v.clone());
            }
        }
    }
    out.body(Body::from_stream(resp.bytes_stream()))
        .unwrap_or_else(|_| Response::new(Body::empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cc(v: &str) -> Vec<(String, String)> {
        vec![("Cache-Control".into(), v.into())]
    }

    #[test]
    fn freshness_rules() {
        assert_eq!(
            freshness(&cc("public, max-age=300")),
            Duration::from_secs(300)
        );
        assert_eq!(
            freshness(&cc("max-age=300, s-maxage=30")),
            Duration::from_secs(30)
        );
        assert_eq!(freshness(&cc("no-cache")), Duration::ZERO);
        assert_eq!(freshness(&[]), DEFAULT_TTL);
    }
}
