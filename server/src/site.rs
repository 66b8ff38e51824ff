//! The site's files and their hashes: the server's object registry.
//!
//! A request path is decoded, checked (no `..`, no hidden files, no NUL) and mapped
//! under the root. Each file's BLAKE3 is computed once per version and kept (a
//! version is its length, modification time, inode and status-change time, so
//! a same-size, same-mtime replacement, e.g. `cp -p` or a rename over it, is
//! noticed: either changes the inode or the ctime),
//! so every `200` can carry `Peercache-Object` and the server knows which hashes it
//! may list peers for.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use peercache_core::hash::{ObjectHash, StreamHasher};
use peercache_core::verified::OutboardHasher;

use crate::outboards::OutboardCache;

/// Files from this size up are fetched by crowds from several sources, each
/// asking for the outboard first: theirs is computed while the file is hashed.
const OUTBOARD_FROM: u64 = peercache_core::pieces::SWARM_FROM;
/// Files above this size are only hashed (their outboard, 32 bytes per
/// 16 KiB, would crowd out the others kept; it is computed when asked for).
const OUTBOARD_UP_TO: u64 = 4 << 30;

/// A file of the site with its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteObject {
    /// Where it is on disk.
    pub path: PathBuf,
    /// Its hash.
    pub hash: ObjectHash,
    /// Its size.
    pub size: u64,
    /// Its media type.
    pub content_type: String,
    /// Its modification time (`Last-Modified`), for a file of the site.
    pub modified: Option<SystemTime>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    /// Device, inode and status-change time (ns): any write, `touch -d`, or
    /// replacement changes one of them even when length and mtime stay.
    identity: (u64, u64, i64, i64),
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Self {
        #[cfg(unix)]
        let identity = {
            use std::os::unix::fs::MetadataExt;
            (meta.dev(), meta.ino(), meta.ctime(), meta.ctime_nsec())
        };
        #[cfg(not(unix))]
        let identity = (0, 0, 0, 0);
        Self {
            len: meta.len(),
            modified: meta.modified().ok(),
            identity,
        }
    }
}

/// Most objects remembered; beyond it the oldest half is forgotten (they are
/// re-hashed on the next request).
const MAX_OBJECTS: usize = 1_000_000;

/// The registry.
#[derive(Debug)]
pub struct Site {
    root: PathBuf,
    /// Where the outboards of large files are kept as they are hashed.
    outboards: Arc<OutboardCache>,
    by_path: Mutex<HashMap<PathBuf, (Stamp, SiteObject)>>,
    by_hash: Mutex<HashMap<ObjectHash, PathBuf>>,
}

/// Why a path cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum SiteError {
    /// Traversal, hidden file, bad encoding.
    #[error("invalid path")]
    InvalidPath,
    /// Nothing there.
    #[error("not found")]
    NotFound,
    /// Reading failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl Site {
    /// A site rooted at `root`, keeping the outboards of its large files in
    /// `outboards`.
    pub fn new(root: PathBuf, outboards: Arc<OutboardCache>) -> Self {
        Self {
            root,
            outboards,
            by_path: Mutex::new(HashMap::new()),
            by_hash: Mutex::new(HashMap::new()),
        }
    }

    /// Maps a URL path to a file under the root.
    pub fn resolve(&self, url_path: &str) -> Result<PathBuf, SiteError> {
        let decoded = percent_encoding::percent_decode_str(url_path)
            .decode_utf8()
            .map_err(|_| SiteError::InvalidPath)?;
        if decoded.contains('\0') || decoded.contains('\\') {
            return Err(SiteError::InvalidPath);
        }
        let mut rel = PathBuf::new();
        for comp in Path::new(decoded.trim_start_matches('/')).components() {
            match comp {
                Component::Normal(c) if !c.to_string_lossy().starts_with('.') => rel.push(c),
                Component::CurDir => {}
                _ => return Err(SiteError::InvalidPath),
            }
        }
        let mut path = self.root.join(rel);
        if decoded.ends_with('/') || decoded.is_empty() || path.is_dir() {
            path.push("index.html");
        }
        Ok(path)
    }

    /// The object at `path`, hashing it if it is new or changed. Blocking: call from
    /// `spawn_blocking`.
    pub fn object(&self, path: &Path) -> Result<SiteObject, SiteError> {
        let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => SiteError::NotFound,
            _ => SiteError::Io(e),
        })?;
        if !meta.is_file() {
            return Err(SiteError::NotFound);
        }
        let stamp = Stamp::of(&meta);
        if let Some((s, obj)) = lock(&self.by_path).get(path)
            && *s == stamp
        {
            return Ok(obj.clone());
        }
        let file = std::fs::File::open(path)?;
        let (hash, size) = if (OUTBOARD_FROM..=OUTBOARD_UP_TO).contains(&meta.len()) {
            // One pass gives the hash and the outboard (read no further than
            // the limit: a file growing meanwhile cannot grow the outboard).
            let mut hasher = OutboardHasher::new();
            read_through(file.take(OUTBOARD_UP_TO + 1), |b| hasher.update(b))?;
            let (hash, outboard, size) = hasher.finish();
            if size > OUTBOARD_UP_TO {
                return Err(SiteError::Io(std::io::Error::other(
                    "the file grew while it was hashed",
                )));
            }
            self.outboards.put(hash, outboard.into());
            (hash, size)
        } else {
            let mut hasher = StreamHasher::new();
            read_through(file, |b| hasher.update(b))?;
            (hasher.finish(), hasher.len())
        };
        let obj = SiteObject {
            path: path.to_path_buf(),
            hash,
            size,
            content_type: mime_guess::from_path(path)
                .first_or_octet_stream()
                .essence_str()
                .to_string(),
            modified: stamp.modified,
        };
        {
            let mut by_path = lock(&self.by_path);
            if by_path.len() >= MAX_OBJECTS {
                by_path.clear();
            }
            by_path.insert(path.to_path_buf(), (stamp, obj.clone()));
        }
        {
            let mut by_hash = lock(&self.by_hash);
            if by_hash.len() >= MAX_OBJECTS {
                by_hash.clear();
            }
            by_hash.insert(obj.hash, path.to_path_buf());
        }
        Ok(obj)
    }

    /// Hashes every file under the root (hidden files skipped, at most
    /// `MAX_OBJECTS`), so peers can be listed for them from the first request, also
    /// after a restart. Blocking. Returns how many files were indexed.
    pub fn index_all(&self) -> usize {
        let mut stack = vec![self.root.clone()];
        let mut count = 0;
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().starts_with('.') {
                    continue;
                }
                let path = entry.path();
                match entry.file_type() {
                    Ok(t) if t.is_dir() => stack.push(path),
                    Ok(t) if t.is_file() => {
                        if count >= MAX_OBJECTS {
                            return count;
                        }
                        if self.object(&path).is_ok() {
                            count += 1;
                        }
                    }
                    _ => {}
                }
            }
        }
        count
    }

    /// The object with this hash, if the server has served it.
    pub fn by_hash(&self, hash: &ObjectHash) -> Option<SiteObject> {
        let path = lock(&self.by_hash).get(hash).cloned()?;
        let obj = self.object(&path).ok()?;
        (obj.hash == *hash).then_some(obj)
    }

    /// True if the server knows this hash (so peers may be listed for it).
    pub fn knows(&self, hash: &ObjectHash) -> bool {
        lock(&self.by_hash).contains_key(hash)
    }
}

/// Feeds every byte `reader` gives to `feed`, 256 KiB at a time.
fn read_through(mut reader: impl Read, mut feed: impl FnMut(&[u8])) -> std::io::Result<()> {
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        feed(&buf[..n]);
    }
}

/// Locks a mutex, recovering from poisoning (the data are caches; a panic elsewhere
/// must not take the server down).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traversal_and_hidden_files_are_refused() {
        let site = Site::new(PathBuf::from("/srv/site"), Default::default());
        for bad in [
            "/../etc/passwd",
            "/a/%2e%2e/b",
            "/.git/config",
            "/a\\b",
            "/%00",
        ] {
            assert!(site.resolve(bad).is_err(), "{bad}");
        }
        assert_eq!(
            site.resolve("/static/a%20b.js").unwrap(),
            PathBuf::from("/srv/site/static/a b.js")
        );
        assert_eq!(
            site.resolve("/").unwrap(),
            PathBuf::from("/srv/site/index.html")
        );
    }

    #[test]
    fn a_large_file_is_hashed_with_its_outboard_kept_and_a_small_one_is_only_hashed() {
        let root = std::env::temp_dir().join(format!("peercache-site-{}", std::process::id()));
        std::fs::create_dir_all(&root).unwrap();
        let large: Vec<u8> = (0..OUTBOARD_FROM + 12_345)
            .map(|i| (i % 251) as u8)
            .collect();
        std::fs::write(root.join("large.bin"), &large).unwrap();
        std::fs::write(root.join("small.bin"), &large[..100_000]).unwrap();
        let outboards = Arc::new(OutboardCache::default());
        let site = Site::new(root.clone(), outboards.clone());
        assert_eq!(site.index_all(), 2);

        let obj = site.object(&root.join("large.bin")).unwrap();
        assert_eq!(obj.hash, ObjectHash::of(&large));
        assert_eq!(obj.size, large.len() as u64);
        assert_eq!(
            outboards.get(&obj.hash).as_deref(),
            Some(&peercache_core::verified::outboard(&large)[..])
        );
        let small = site.object(&root.join("small.bin")).unwrap();
        assert_eq!(small.hash, ObjectHash::of(&large[..100_000]));
        assert_eq!(outboards.get(&small.hash), None);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
