//! Keeping a verified object: the temp file it was written to becomes the
//! cache's copy (after an fsync), its verification data is stored beside it so
//! peers' requests never recompute it, and what the cache evicted to make room
//! is returned so it can be announced as dropped.
//!
//! Both ways bytes arrive (the server's whole body, a multi-source transfer)
//! end here; nothing unverified reaches this stage.

use std::path::PathBuf;

use peercache_core::hash::ObjectHash;

use crate::cache::Cache;

/// Why an object was not kept (the download itself still succeeded).
#[derive(Debug, thiserror::Error)]
#[error("could not keep the object in the cache: {0}")]
pub struct KeepError(#[from] std::io::Error);

/// A kept object.
#[derive(Debug)]
pub struct Kept {
    /// Objects the cache evicted to make room.
    pub dropped: Vec<ObjectHash>,
}

/// What to keep.
#[derive(Debug)]
pub struct ToKeep {
    /// The verified object.
    pub hash: ObjectHash,
    /// Its size.
    pub size: u64,
    /// The temp file holding its bytes (synced or not; synced here).
    pub file: std::sync::Arc<std::fs::File>,
    /// The temp file's path.
    pub path: PathBuf,
    /// Its group CVs if the transfer had them; computed from the file otherwise.
    pub outboard: Option<Vec<u8>>,
    /// The partial download the file is (`crate::partial`): renamed into the
    /// cache like a temp file, its have-map and CVs removed after.
    pub partial: Option<std::sync::Arc<crate::partial::Partial>>,
}

/// Keeps `it` in `cache` (see the module docs). On failure the temp file is gone.
pub async fn keep(cache: &Cache, it: ToKeep) -> Result<Kept, KeepError> {
    let cache = cache.clone();
    let path = it.path.clone();
    let partial = it.partial.clone();
    let kept = tokio::task::spawn_blocking(move || -> std::io::Result<Kept> {
        it.file.sync_all()?;
        drop(it.file);
        // The CVs first, so the object is served with them the moment it is in.
        if let Some(ob) = &it.outboard {
            cache.store_outboard(&it.hash, ob);
        }
        let dropped = cache.adopt(&it.hash, &it.path, it.size)?;
        if it.outboard.is_none() {
            // Computed once now, not per request of a peer.
            cache.outboard(&it.hash)?;
        }
        if let Some(p) = &it.partial {
            p.finish();
        }
        Ok(Kept { dropped })
    })
    .await
    .map_err(std::io::Error::other)
    .and_then(|r| r);
    if kept.is_err() {
        let _ = tokio::fs::remove_file(&path).await;
        if let Some(p) = partial {
            let _ = tokio::task::spawn_blocking(move || p.abandon()).await;
        }
    }
    Ok(kept?)
}
