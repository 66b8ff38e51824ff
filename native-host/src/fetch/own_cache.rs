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
    if size <= READ_WHOLE_UP_TO {
        return small(cache, hash, size, path, events).await;
    }
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

/// Objects up to this size are read once into memory, checked, and sent from
/// there: one trip to the blocking pool instead of one to check the copy, one
/// to open it and one or two per read to stream it. Each trip waits for a
/// thread, which on a busy machine costs milliseconds (a cached image through
/// the gateway, issue 12 point 4). Bounds what one request holds in memory.
const READ_WHOLE_UP_TO: u64 = 256 * 1024;

/// [`open`] for a small object: read whole, checked, sent as one chunk.
async fn small(
    cache: &Cache,
    hash: &ObjectHash,
    size: u64,
    path: std::path::PathBuf,
    events: std::sync::Arc<Events>,
) -> Option<BodyReceiver> {
    let h = *hash;
    let read = tokio::task::spawn_blocking(move || -> std::io::Result<Option<Vec<u8>>> {
        let f = std::fs::File::open(&path)?;
        // One byte more than the object: a longer file is not the object.
        let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        std::io::Read::read_to_end(&mut std::io::Read::take(f, size + 1), &mut bytes)?;
        let intact = bytes.len() as u64 == size && ObjectHash::of(&bytes) == h;
        Ok(intact.then_some(bytes))
    })
    .await;
    let Ok(Ok(Some(bytes))) = read else {
        tracing::warn!(%hash, "cached copy is corrupt; removing it");
        cache.remove(hash);
        return None;
    };
    cache.touch(hash);
    events.emit(DownloadEvent::FromCache { hash: *hash });
    events.emit(DownloadEvent::Verified { hash: *hash });
    let (tx, rx) = body_channel();
    if size > 0 {
        events.emit(DownloadEvent::RangeDone {
            source: CACHE_SOURCE.into(),
            first: 0,
            end: size,
        });
        // The channel is new and holds more than one chunk: this does not wait.
        tx.try_send(Ok(bytes::Bytes::from(bytes))).ok()?;
    }
    events.emit(DownloadEvent::Finished {
        main_source: CACHE_SOURCE.into(),
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

    fn events() -> std::sync::Arc<Events> {
        std::sync::Arc::new(Events::new(
            "http://site",
            std::sync::Arc::default(),
            std::sync::Arc::default(),
        ))
    }

    async fn body(mut rx: BodyReceiver) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(chunk) = rx.recv().await {
            out.extend_from_slice(&chunk.expect("chunk"));
        }
        out
    }

    /// Small objects (read whole) and large ones (checked, then streamed):
    /// an intact copy is sent as it is; a changed or longer one is never
    /// sent, and is removed.
    #[tokio::test]
    async fn only_an_intact_copy_is_sent_and_a_spoiled_one_is_removed() {
        let dir = std::env::temp_dir().join(format!("pc-own-{}", rand::random::<u64>()));
        let cache = Cache::open(&dir).unwrap();
        for size in [0usize, 48 * 1024, READ_WHOLE_UP_TO as usize, 600 * 1024] {
            let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
            let hash = ObjectHash::of(&data);
            cache.put(&hash, &data).unwrap();
            let rx = open(&cache, &hash, size as u64, events()).await;
            assert!(body(rx.expect("intact")).await == data, "{size} bytes");

            if size > 0 {
                let mut spoiled = data.clone();
                spoiled[size / 2] ^= 1;
                std::fs::write(cache.path_of(&hash), &spoiled).unwrap();
                assert!(open(&cache, &hash, size as u64, events()).await.is_none());
                assert!(!cache.contains(&hash), "a spoiled copy is removed");
            }

            cache.put(&hash, &data).unwrap();
            let mut longer = data.clone();
            longer.push(0);
            std::fs::write(cache.path_of(&hash), &longer).unwrap();
            assert!(open(&cache, &hash, size as u64, events()).await.is_none());
            assert!(!cache.contains(&hash), "a longer file is not the object");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

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
