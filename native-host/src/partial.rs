//! A download in progress as other peers see it (issue 12 point 2): its bytes
//! live in `<cache>/partial/<hash>` (sized to the object from the start, each
//! 16 KiB group written only once verified), its have-map (which groups are
//! verified, `peercache_core::pieces::HaveMap`) in `<hash>.have` and the
//! object's group CVs in `<hash>.ob` beside it. The peer server of any process
//! on the same cache (a `serve` beside the `fetch`) serves the verified groups
//! from there while the download goes on; when it ends the same file is renamed
//! into `objects/` (each byte written once), or removed on failure.
//!
//! One download per object and cache owns the partial file ([`Partial::claim`]
//! creates it exclusively); a second one at the same time downloads into an
//! ordinary temp file. The have-map is replaced by a rename after the groups it
//! names were written, so a reader never sees a bit before its bytes. Files
//! left over from a crash are cleared when the cache is opened
//! (`Cache::open`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use peercache_core::hash::ObjectHash;
use peercache_core::pieces::HaveMap;
use peercache_core::verified::group_count;

use crate::cache::Cache;

fn dir_of(cache: &Cache) -> PathBuf {
    cache.dir().join("partial")
}

fn data_path(cache: &Cache, hash: &ObjectHash) -> PathBuf {
    dir_of(cache).join(hash.to_hex())
}

fn have_path(cache: &Cache, hash: &ObjectHash) -> PathBuf {
    dir_of(cache).join(format!("{}.have", hash.to_hex()))
}

fn outboard_path(cache: &Cache, hash: &ObjectHash) -> PathBuf {
    dir_of(cache).join(format!("{}.ob", hash.to_hex()))
}

/// Replaces `path` by `bytes` through a temp file and a rename (no fsync: a
/// partial download does not outlive a crash).
fn replace(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp-{}", rand::random::<u64>()));
    let written = std::fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(bytes))
        .and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// The owner's side of a partial download (see the module docs).
#[derive(Debug)]
pub struct Partial {
    cache: Cache,
    hash: ObjectHash,
    have: Mutex<HaveMap>,
    /// Whether the group CVs are beside it (nothing is served before).
    proved: std::sync::atomic::AtomicBool,
}

impl Partial {
    /// Creates the partial file of `hash` (`size` bytes) for this download;
    /// `None` when another download of it owns the partial file already.
    /// Blocking.
    pub fn claim(
        cache: &Cache,
        hash: ObjectHash,
        size: u64,
    ) -> std::io::Result<Option<(Self, std::fs::File, PathBuf)>> {
        std::fs::create_dir_all(dir_of(cache))?;
        let path = data_path(cache, &hash);
        let file = match std::fs::OpenOptions::new()
            .create_new(true)
            .read(true)
            .write(true)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(None),
            Err(e) => return Err(e),
        };
        let partial = Self {
            cache: cache.clone(),
            hash,
            have: Mutex::new(HaveMap::empty(group_count(size))),
            proved: std::sync::atomic::AtomicBool::new(false),
        };
        if let Err(e) = file.set_len(size) {
            partial.abandon();
            return Err(e);
        }
        Ok(Some((partial, file, path)))
    }

    /// Puts the object's verified group CVs beside it; from now on its verified
    /// groups are served. Blocking.
    pub fn set_outboard(&self, outboard: &[u8]) -> std::io::Result<()> {
        replace(&outboard_path(&self.cache, &self.hash), outboard)?;
        self.proved
            .store(true, std::sync::atomic::Ordering::Release);
        self.publish()
    }

    /// Groups `[first, end)` are verified and written. Blocking.
    pub fn mark(&self, first: u64, end: u64) -> std::io::Result<()> {
        {
            let mut have = self.have.lock().unwrap_or_else(|p| p.into_inner());
            for g in first..end {
                have.set(g);
            }
        }
        self.publish()
    }

    fn publish(&self) -> std::io::Result<()> {
        if !self.proved.load(std::sync::atomic::Ordering::Acquire) {
            return Ok(());
        }
        let bytes = self
            .have
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_bytes()
            .to_vec();
        replace(&have_path(&self.cache, &self.hash), &bytes)
    }

    /// The download ended and its file was renamed into the cache (or is
    /// removed): the have-map and CVs go. Blocking.
    pub fn finish(&self) {
        let _ = std::fs::remove_file(have_path(&self.cache, &self.hash));
        let _ = std::fs::remove_file(outboard_path(&self.cache, &self.hash));
    }

    /// The download failed: everything goes. Blocking.
    pub fn abandon(&self) {
        let _ = std::fs::remove_file(data_path(&self.cache, &self.hash));
        self.finish();
    }
}

/// What a partial download of `hash` in `cache` holds now: the object's size
/// and its have-map, if one is published. Blocking.
pub fn held(cache: &Cache, hash: &ObjectHash) -> Option<(u64, HaveMap)> {
    let size = std::fs::metadata(data_path(cache, hash)).ok()?.len();
    let groups = group_count(size);
    let bytes = std::fs::read(have_path(cache, hash)).ok()?;
    let have = HaveMap::from_bytes(groups, &bytes).ok()?;
    Some((size, have))
}

/// The group CVs of a partial download of `hash`. Blocking.
pub fn outboard(cache: &Cache, hash: &ObjectHash) -> Option<Vec<u8>> {
    let size = std::fs::metadata(data_path(cache, hash)).ok()?.len();
    let ob = std::fs::read(outboard_path(cache, hash)).ok()?;
    (ob.len() as u64 == group_count(size) * 32).then_some(ob)
}

/// The partial file of `hash`, to serve verified groups from.
pub fn data_file(cache: &Cache, hash: &ObjectHash) -> PathBuf {
    data_path(cache, hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partial_download_publishes_only_proved_written_groups() {
        let dir = std::env::temp_dir().join(format!("pc-partial-{}", rand::random::<u64>()));
        let cache = Cache::open(&dir).unwrap();
        let hash = ObjectHash::of(b"x");
        let size = 5 * peercache_core::verified::GROUP;
        let (p, _file, path) = Partial::claim(&cache, hash, size).unwrap().unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), size);
        assert!(
            Partial::claim(&cache, hash, size).unwrap().is_none(),
            "one owner"
        );
        p.mark(0, 2).unwrap();
        assert!(held(&cache, &hash).is_none(), "nothing before the CVs");
        p.set_outboard(&[7u8; 5 * 32]).unwrap();
        let (s, have) = held(&cache, &hash).unwrap();
        assert_eq!(s, size);
        assert!(have.has_all(0, 2) && !have.has(2));
        assert_eq!(outboard(&cache, &hash).unwrap(), vec![7u8; 5 * 32]);
        p.abandon();
        assert!(held(&cache, &hash).is_none());
        assert!(!path.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
