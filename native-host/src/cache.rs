//! The on-disk content cache.
//!
//! Objects live in `<dir>/objects/<64 hex digits>`; nothing from a URL or a request
//! ever reaches a path (only a parsed [`ObjectHash`] does). Writes go to a temp file
//! that is fsynced and renamed, so a crash never leaves a partial object visible.
//! Only verified bytes are ever written.
//!
//! Size: with a limit set, the cache evicts least-recently-used objects when it
//! passes the limit (high watermark) until it is under 90 % of it (low
//! watermark); callers announce what was dropped. A failed write (a full disk)
//! stores nothing and is reported, so browsing goes on without caching.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use peercache_core::hash::ObjectHash;

#[derive(Debug, Default)]
struct Index {
    entries: HashMap<ObjectHash, (u64, u64)>,
    total: u64,
    tick: u64,
}

/// A content cache rooted at a directory. Clones share the index.
#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
    max_bytes: Arc<AtomicU64>,
    index: Arc<Mutex<Index>>,
}

/// Writes `bytes` to `path` via a temp file, fsync and rename.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let parent = path
        .parent()
        .ok_or_else(|| std::io::Error::other("path has no parent"))?;
    let tmp = parent.join(format!(
        ".tmp-{}-{}",
        std::process::id(),
        rand::random::<u64>()
    ));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = std::fs::File::open(parent) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Partial downloads (`crate::partial`) untouched for this long are left over
/// from a crash.
pub const PARTIAL_STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(3600);

/// Removes the files of partial downloads left over from a crash (untouched
/// for [`PARTIAL_STALE_AFTER`]; a download in progress writes its have-map
/// as it goes).
fn clear_stale_partials(cache_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(cache_dir.join("partial")) else {
        return;
    };
    for e in entries.flatten() {
        let stale = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age >= PARTIAL_STALE_AFTER);
        if stale {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

impl Cache {
    /// Opens (creating) the cache at `dir`, clears temp files left by a crash and
    /// indexes what is there (oldest modification first for LRU).
    pub fn open(dir: impl Into<PathBuf>) -> std::io::Result<Self> {
        let dir = dir.into();
        let objects = dir.join("objects");
        std::fs::create_dir_all(&objects)?;
        let mut found = Vec::new();
        for entry in std::fs::read_dir(&objects)?.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(".tmp-") {
                let _ = std::fs::remove_file(entry.path());
                continue;
            }
            if let (Ok(hash), Ok(meta)) = (name.parse::<ObjectHash>(), entry.metadata()) {
                found.push((meta.modified().ok(), hash, meta.len()));
            }
        }
        found.sort_by_key(|(m, _, _)| *m);
        clear_stale_partials(&dir);
        let mut index = Index::default();
        for (_, hash, len) in found {
            index.tick += 1;
            index.entries.insert(hash, (len, index.tick));
            index.total += len;
        }
        Ok(Self {
            dir,
            max_bytes: Arc::new(AtomicU64::new(0)),
            index: Arc::new(Mutex::new(index)),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Bytes cached.
    pub fn total_bytes(&self) -> u64 {
        self.lock().total
    }

    /// The size limit (0 = none).
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes.load(Ordering::Relaxed)
    }

    /// Sets the size limit and evicts down to it at once; returns what was dropped.
    pub fn set_max_bytes(&self, max: u64) -> Vec<ObjectHash> {
        self.max_bytes.store(max, Ordering::Relaxed);
        self.evict()
    }

    /// Where an object lives (whether or not it is there).
    pub fn path_of(&self, hash: &ObjectHash) -> PathBuf {
        self.dir.join("objects").join(hash.to_hex())
    }

    /// True if the object is cached. An object another process stored in the
    /// same cache since this one indexed it (a `fetch` beside a running `serve`:
    /// one peer, one cache) is taken into the index here, so it is served at once.
    /// Only verified objects are ever renamed into `objects/`.
    pub fn contains(&self, hash: &ObjectHash) -> bool {
        let Ok(meta) = std::fs::metadata(self.path_of(hash)) else {
            return false;
        };
        if !meta.is_file() {
            return false;
        }
        let mut idx = self.lock();
        if !idx.entries.contains_key(hash) {
            idx.tick += 1;
            let tick = idx.tick;
            idx.entries.insert(*hash, (meta.len(), tick));
            idx.total += meta.len();
        }
        true
    }

    /// Marks an object as just used (for LRU).
    pub fn touch(&self, hash: &ObjectHash) {
        let mut idx = self.lock();
        idx.tick += 1;
        let tick = idx.tick;
        if let Some(e) = idx.entries.get_mut(hash) {
            e.1 = tick;
        }
    }

    /// Stores verified bytes (the caller checked them against `hash`); returns the
    /// objects evicted to make room. An object larger than the limit is not kept.
    pub fn put(&self, hash: &ObjectHash, bytes: &[u8]) -> std::io::Result<Vec<ObjectHash>> {
        let max = self.max_bytes();
        if max > 0 && bytes.len() as u64 > max {
            return Err(std::io::Error::other("object larger than the cache limit"));
        }
        std::fs::create_dir_all(self.dir.join("objects"))?;
        write_atomically(&self.path_of(hash), bytes)?;
        {
            let mut idx = self.lock();
            idx.tick += 1;
            let tick = idx.tick;
            if let Some((old, _)) = idx.entries.insert(*hash, (bytes.len() as u64, tick)) {
                idx.total -= old;
            }
            idx.total += bytes.len() as u64;
        }
        Ok(self.evict_except(Some(hash)))
    }

    /// A fresh temp path inside the cache (removed at the next open if left over).
    /// The objects directory is made again if it was deleted while the host runs.
    pub fn temp_path(&self) -> PathBuf {
        let objects = self.dir.join("objects");
        if let Err(e) = std::fs::create_dir_all(&objects) {
            tracing::warn!(error = %e, "cache directory cannot be made");
        }
        objects.join(format!(
            ".tmp-dl-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ))
    }

    /// Moves a complete, verified, fsynced temp file into the cache as `hash`;
    /// returns the objects evicted to make room.
    pub fn adopt(
        &self,
        hash: &ObjectHash,
        tmp: &Path,
        size: u64,
    ) -> std::io::Result<Vec<ObjectHash>> {
        let max = self.max_bytes();
        if max > 0 && size > max {
            let _ = std::fs::remove_file(tmp);
            return Err(std::io::Error::other("object larger than the cache limit"));
        }
        std::fs::rename(tmp, self.path_of(hash))?;
        {
            let mut idx = self.lock();
            idx.tick += 1;
            let tick = idx.tick;
            if let Some((old, _)) = idx.entries.insert(*hash, (size, tick)) {
                idx.total -= old;
            }
            idx.total += size;
        }
        Ok(self.evict_except(Some(hash)))
    }

    /// The object's group CVs (verified-streaming outboard), computed once from
    /// the cached bytes and kept beside them. Blocking.
    pub fn outboard(&self, hash: &ObjectHash) -> std::io::Result<Vec<u8>> {
        let dir = self.dir.join("outboard");
        let path = dir.join(hash.to_hex());
        if let Ok(ob) = std::fs::read(&path) {
            return Ok(ob);
        }
        let file = std::fs::File::open(self.path_of(hash))?;
        let size = file.metadata()?.len();
        let ob =
            peercache_core::verified::outboard_from_reader(std::io::BufReader::new(file), size)?;
        std::fs::create_dir_all(&dir)?;
        write_atomically(&path, &ob)?;
        Ok(ob)
    }

    /// Keeps an outboard computed during a download (best effort).
    pub fn store_outboard(&self, hash: &ObjectHash, outboard: &[u8]) {
        let dir = self.dir.join("outboard");
        if std::fs::create_dir_all(&dir).is_ok() {
            let _ = write_atomically(&dir.join(hash.to_hex()), outboard);
        }
    }

    /// Removes one object.
    pub fn remove(&self, hash: &ObjectHash) {
        let mut idx = self.lock();
        if let Some((len, _)) = idx.entries.remove(hash) {
            idx.total -= len;
        }
        let _ = std::fs::remove_file(self.path_of(hash));
        let _ = std::fs::remove_file(self.dir.join("outboard").join(hash.to_hex()));
    }

    fn evict(&self) -> Vec<ObjectHash> {
        self.evict_except(None)
    }

    fn evict_except(&self, keep: Option<&ObjectHash>) -> Vec<ObjectHash> {
        let max = self.max_bytes();
        let mut idx = self.lock();
        if max == 0 || idx.total <= max {
            return Vec::new();
        }
        let low = max / 10 * 9;
        let mut by_age: Vec<(u64, ObjectHash, u64)> = idx
            .entries
            .iter()
            .filter(|(h, _)| Some(*h) != keep)
            .map(|(h, (len, tick))| (*tick, *h, *len))
            .collect();
        by_age.sort_unstable();
        let mut dropped = Vec::new();
        for (_, hash, len) in by_age {
            if idx.total <= low {
                break;
            }
            idx.entries.remove(&hash);
            idx.total -= len;
            let _ = std::fs::remove_file(self.path_of(&hash));
            let _ = std::fs::remove_file(self.dir.join("outboard").join(hash.to_hex()));
            dropped.push(hash);
        }
        dropped
    }

    /// Every cached object.
    pub fn list(&self) -> std::io::Result<Vec<ObjectHash>> {
        let mut out: Vec<ObjectHash> = self.lock().entries.keys().copied().collect();
        out.sort();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp() -> PathBuf {
        std::env::temp_dir().join(format!("pc-cache-{}", rand::random::<u64>()))
    }

    #[test]
    fn an_object_another_process_stored_is_seen_at_once() {
        let dir = temp();
        let serving = Cache::open(&dir).unwrap();
        let fetching = Cache::open(&dir).unwrap();
        let data = b"fetched beside a running serve";
        let h = ObjectHash::of(data);
        assert!(!serving.contains(&h));
        fetching.put(&h, data).unwrap();
        assert!(serving.contains(&h), "the serving process sees it");
        assert_eq!(serving.total_bytes(), data.len() as u64);
        assert!(serving.contains(&h));
        assert_eq!(serving.total_bytes(), data.len() as u64, "counted once");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn put_list_and_no_leftovers() {
        let dir = temp();
        let cache = Cache::open(&dir).unwrap();
        let data = b"hello peers";
        let h = ObjectHash::of(data);
        assert!(!cache.contains(&h));
        cache.put(&h, data).unwrap();
        assert!(cache.contains(&h));
        assert_eq!(std::fs::read(cache.path_of(&h)).unwrap(), data);
        assert_eq!(cache.list().unwrap(), vec![h]);
        std::fs::write(dir.join("objects/.tmp-1-2"), b"partial").unwrap();
        std::fs::write(dir.join("objects/not-a-hash"), b"x").unwrap();
        let reopened = Cache::open(&dir).unwrap();
        assert_eq!(reopened.list().unwrap(), vec![h]);
        assert_eq!(reopened.total_bytes(), data.len() as u64);
        assert!(!dir.join("objects/.tmp-1-2").exists());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn evicts_least_recently_used_down_to_the_low_watermark() {
        let dir = temp();
        let cache = Cache::open(&dir).unwrap();
        cache.set_max_bytes(1000);
        let objs: Vec<(ObjectHash, Vec<u8>)> = (0..4u8)
            .map(|i| {
                let b = vec![i; 300];
                (ObjectHash::of(&b), b)
            })
            .collect();
        for (h, b) in &objs[..3] {
            assert!(cache.put(h, b).unwrap().is_empty());
        }
        cache.touch(&objs[0].0);
        // 1200 > 1000: evict LRU (objs[1], then objs[2]) until ≤ 900.
        let dropped = cache.put(&objs[3].0, &objs[3].1).unwrap();
        assert_eq!(dropped, vec![objs[1].0]);
        assert_eq!(cache.total_bytes(), 900);
        assert!(!cache.path_of(&objs[1].0).exists());
        assert!(cache.contains(&objs[0].0), "recently used survives");
        let dropped = cache.set_max_bytes(400);
        assert_eq!(dropped.len(), 2);
        assert!(cache.total_bytes() <= 360);
        assert!(
            cache.put(&ObjectHash::of(&[9; 500]), &[9; 500]).is_err(),
            "larger than the limit"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
