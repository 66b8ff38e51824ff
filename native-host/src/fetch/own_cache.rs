//! The object from this host's own cache: re-verified whole first (a disk can
//! rot; a corrupt copy is removed), then streamed. Also how long a copy may be
//! used without asking the server: the site's caching headers, read by
//! `http-cache-semantics` as a private cache (issue 14).

use futures_util::StreamExt;
use peercache_core::explain::DownloadEvent;
use peercache_core::hash::{ObjectHash, StreamHasher};

use super::error::{BodyReceiver, FetchError, body_channel};
use super::events::{CACHE_SOURCE, Events};
use crate::cache::Cache;

/// The verified copy's bytes, streamed, or `None` when the cache does not hold
/// an intact copy.
pub async fn open(
    cache: &Cache,
    hash: &ObjectHash,
    size: u64,
    events: std::sync::Arc<Events>,
) -> Option<BodyReceiver> {
    if !cache.contains(hash) {
        return None;
    }
    let path = cache.path_of(hash);
    let (h, p) = (*hash, path.clone());
    let intact = tokio::task::spawn_blocking(move || -> std::io::Result<bool> {
        let mut f = std::fs::File::open(&p)?;
        let mut hasher = StreamHasher::new();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = std::io::Read::read(&mut f, &mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        Ok(hasher.len() == size && hasher.finish() == h)
    })
    .await;
    if !matches!(intact, Ok(Ok(true))) {
        tracing::warn!(%hash, "cached copy is corrupt; removing it");
        cache.remove(hash);
        return None;
    }
    cache.touch(hash);
    let file = tokio::fs::File::open(&path).await.ok()?;
    events.emit(DownloadEvent::FromCache { hash: *hash });
    events.emit(DownloadEvent::Verified { hash: *hash });
    let (tx, rx) = body_channel();
    tokio::spawn(async move {
        let mut reader = tokio_util::io::ReaderStream::with_capacity(file, 64 * 1024);
        let mut offset = 0u64;
        while let Some(chunk) = reader.next().await {
            let item = match chunk {
                Ok(c) => {
                    let end = offset + c.len() as u64;
                    events.emit(DownloadEvent::RangeDone {
                        source: CACHE_SOURCE.into(),
                        first: offset,
                        end,
                    });
                    offset = end;
                    Ok(c)
                }
                Err(e) => Err(FetchError::Disk(e)),
            };
            let failed = item.is_err();
            if tx.send(item).await.is_err() || failed {
                return;
            }
        }
        events.emit(DownloadEvent::Finished {
            main_source: CACHE_SOURCE.into(),
        });
    });
    Some(rx)
}

/// Unix seconds until which a response to `GET url` with `status` and
/// `headers` may be used without asking (0 when it must be revalidated).
pub fn fresh_until(
    url: &reqwest::Url,
    status: u16,
    headers: &reqwest::header::HeaderMap,
    now: std::time::SystemTime,
) -> u64 {
    use http_cache_semantics::{CacheOptions, CachePolicy};
    let Ok(req) = axum::http::Request::get(url.as_str()).body(()) else {
        return 0;
    };
    let mut resp = axum::http::Response::new(());
    *resp.status_mut() = axum::http::StatusCode::from_u16(status).unwrap_or_default();
    *resp.headers_mut() = headers.clone();
    let options = CacheOptions {
        shared: false,
        ..CacheOptions::default()
    };
    let policy = CachePolicy::new_options(&req, &resp, now, options);
    if !policy.is_storable() {
        return 0;
    }
    let ttl = policy.time_to_live(now);
    if ttl.is_zero() {
        return 0;
    }
    now.checked_add(ttl)
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freshness_follows_the_site_headers() {
        let url = reqwest::Url::parse("https://s.example/a").unwrap();
        let now = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
        let h = |pairs: &[(&'static str, &'static str)]| {
            let mut m = reqwest::header::HeaderMap::new();
            for (k, v) in pairs {
                m.insert(*k, reqwest::header::HeaderValue::from_static(v));
            }
            m
        };
        assert_eq!(
            fresh_until(&url, 200, &h(&[("cache-control", "max-age=600")]), now),
            1_000_600
        );
        assert_eq!(
            fresh_until(&url, 200, &h(&[("cache-control", "no-cache")]), now),
            0
        );
        assert_eq!(
            fresh_until(
                &url,
                200,
                &h(&[("cache-control", "no-store, max-age=600")]),
                now
            ),
            0
        );
        assert_eq!(
            fresh_until(
                &url,
                200,
                &h(&[("cache-control", "max-age=600"), ("age", "100")]),
                now
            ),
            1_000_500
        );
    }
}
