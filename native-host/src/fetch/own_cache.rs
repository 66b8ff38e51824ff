//! The object from this host's own cache: re-verified whole first (a disk can
//! rot; a corrupt copy is removed), then streamed.

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
