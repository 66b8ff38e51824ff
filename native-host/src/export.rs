//! `fetch -o FILE` from the cache (issue 12 point 4): a verified download is
//! already in the cache, written and fsynced once; the file the user named is
//! made a second name of that copy (a hard link), so no byte is written or
//! synced twice. Where a link cannot be made (another file system, a file
//! system without links) the copy is copied by the kernel (`copy_file_range`
//! through `std::fs::copy`) and synced.
//!
//! On Unix the linked copy is made read-only: it is the cache's copy too, and
//! an edit through the user's name would change what this peer serves (peers
//! would find the change and count this host a liar). The user may still
//! delete or rename it, and eviction from the cache leaves it in place.
//! Elsewhere (Windows) a read-only file could not be evicted, so the file is
//! copied.

use std::path::Path;

use peercache_core::hash::ObjectHash;

use crate::cache::Cache;

/// How the file was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exported {
    /// A second name of the cache's copy: no byte written.
    Linked,
    /// A copy (the cache is on another file system).
    Copied,
}

/// Makes `to` hold the cached object `hash` (replacing what `to` held).
/// `NotFound` when the cache no longer holds it (evicted since it was kept):
/// the caller must fetch it again. Blocking.
pub fn from_cache(cache: &Cache, hash: &ObjectHash, to: &Path) -> std::io::Result<Exported> {
    if !cache.contains(hash) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "the object is no longer in the cache",
        ));
    }
    let from = cache.path_of(hash);
    match std::fs::remove_file(to) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    match link(&from, to) {
        Ok(()) => {
            read_only(to)?;
            Ok(Exported::Linked)
        }
        // Evicted between the check and the link.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !from.exists() => Err(e),
        Err(_) => {
            std::fs::copy(&from, to)?;
            // The copy may carry the cache's read-only mode: synced through
            // a read-only handle.
            std::fs::File::open(to)?.sync_all()?;
            Ok(Exported::Copied)
        }
    }
}

#[cfg(unix)]
fn link(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::hard_link(from, to)
}

/// Elsewhere a linked file could not be made read-only (the cache could not
/// evict it), and an edit would change what this peer serves: copied.
#[cfg(not(unix))]
fn link(_from: &Path, _to: &Path) -> std::io::Result<()> {
    Err(std::io::Error::other("no read-only links here"))
}

#[cfg(unix)]
fn read_only(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o444))
}

#[cfg(not(unix))]
fn read_only(_path: &Path) -> std::io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("pc-export-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_cached_object_is_linked_not_copied_and_outlives_its_eviction() {
        let dir = temp_dir();
        let cache = Cache::open(dir.join("cache")).unwrap();
        let bytes = b"the verified bytes".repeat(1000);
        let hash = ObjectHash::of(&bytes);
        cache.put(&hash, &bytes).unwrap();
        let out = dir.join("out.bin");
        std::fs::write(&out, b"an older file").unwrap();
        assert_eq!(from_cache(&cache, &hash, &out).unwrap(), Exported::Linked);
        assert_eq!(std::fs::read(&out).unwrap(), bytes);
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            let (a, b) = (
                std::fs::metadata(&out).unwrap(),
                std::fs::metadata(cache.path_of(&hash)).unwrap(),
            );
            assert_eq!(a.ino(), b.ino(), "one copy on disk");
            assert!(a.permissions().readonly(), "an edit would change the cache");
        }
        cache.remove(&hash);
        assert_eq!(std::fs::read(&out).unwrap(), bytes);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_object_gone_from_the_cache_is_not_found_and_nothing_is_written() {
        let dir = temp_dir();
        let cache = Cache::open(dir.join("cache")).unwrap();
        let out = dir.join("out.bin");
        let e = from_cache(&cache, &ObjectHash::of(b"never kept"), &out).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
        assert!(!out.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
