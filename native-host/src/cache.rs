//! The on-disk content cache.
//!
//! Objects live in `<dir>/objects/<64 hex digits>`; nothing from a URL or a request
//! ever reaches a path (only a parsed [`ObjectHash`] does). Writes go to a temp file
//! that is fsynced and renamed, so a crash never leaves a partial object visible.
//! Only verified bytes are ever written.

use std::io::Write;
use std::path::{Path, PathBuf};

use peercache_core::hash::ObjectHash;

/// A content cache rooted at a directory.
#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
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

impl Cache {
    /// Opens (creating) the cache at `dir` and clears temp files left by a crash.
    pub fn open(dir: impl Into<PathBuf>) -> std::io::Result<Self> {
        let dir = dir.into();
        let objects = dir.join("objects");
        std::fs::create_dir_all(&objects)?;
        for entry in std::fs::read_dir(&objects)?.flatten() {
            if entry.file_name().to_string_lossy().starts_with(".tmp-") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(Self { dir })
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where an object lives (whether or not it is there).
    pub fn path_of(&self, hash: &ObjectHash) -> PathBuf {
        self.dir.join("objects").join(hash.to_hex())
    }

    /// True if the object is cached.
    pub fn contains(&self, hash: &ObjectHash) -> bool {
        self.path_of(hash).is_file()
    }

    /// Stores verified bytes. The caller has checked them against `hash`.
    pub fn put(&self, hash: &ObjectHash, bytes: &[u8]) -> std::io::Result<()> {
        write_atomically(&self.path_of(hash), bytes)
    }

    /// Every cached object.
    pub fn list(&self) -> std::io::Result<Vec<ObjectHash>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(self.dir.join("objects"))?.flatten() {
            if let Some(name) = entry.file_name().to_str()
                && let Ok(hash) = name.parse::<ObjectHash>()
            {
                out.push(hash);
            }
        }
        out.sort();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_list_and_no_leftovers() {
        let dir = std::env::temp_dir().join(format!("pc-cache-{}", rand::random::<u64>()));
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
        assert!(!dir.join("objects/.tmp-1-2").exists());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
