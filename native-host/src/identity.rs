//! The host's identity: an Ed25519 secret key, created on first start and kept as
//! `peer-key` (64 hex digits, mode 0600 on Unix) in the host's *data* directory:
//! the OS's place for an application's data (`directories`: `~/.local/share/peercache`
//! on Linux, `~/Library/Application Support/org.peercache.peercache` on macOS,
//! `%LOCALAPPDATA%\peercache\peercache\data` on Windows), never in the cache (a
//! cache cleaner must not change who a peer is). A key left at an older place
//! (`~/.local/state/peercache`, or the cache directory) is moved on first start. The peer id is the
//! public key: the key other peers dial and that signs every registration,
//! announce and report (DESIGN B6).
//!
//! `fetch` and `serve` with the same state directory are one peer.

use std::path::{Path, PathBuf};

use rand::RngCore;

/// The file name of the key.
pub const KEY_FILE: &str = "peer-key";

/// A host's key pair.
#[derive(Clone)]
pub struct Identity {
    secret: [u8; 32],
    peer_id: String,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("peer_id", &self.peer_id)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// A key from its 32 secret bytes.
    pub fn from_secret(secret: [u8; 32]) -> Self {
        Self {
            peer_id: peercache_core::auth::peer_id_of(&secret),
            secret,
        }
    }

    /// The secret bytes (for the endpoint and for signing).
    pub fn secret(&self) -> &[u8; 32] {
        &self.secret
    }

    /// The peer id: the public key, 64 hex digits.
    pub fn peer_id(&self) -> &str {
        &self.peer_id
    }

    /// The `Peercache-Auth` header for a request (`peercache_core::auth`).
    pub fn sign(&self, method: &str, path: &str, body: &[u8]) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        peercache_core::auth::sign_request(&self.secret, method, path, now, body)
    }
}

/// The default data directory: `$PEERCACHE_STATE_DIR`, else the OS's local data
/// directory for peercache, else `./peercache-data` (no home directory at all).
pub fn default_state_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("PEERCACHE_STATE_DIR") {
        return PathBuf::from(d);
    }
    directories::ProjectDirs::from("org", "peercache", "peercache").map_or_else(
        || PathBuf::from("peercache-data"),
        |dirs| dirs.data_local_dir().to_path_buf(),
    )
}

/// Where earlier versions kept the key by default: `$XDG_STATE_HOME/peercache`
/// or `~/.local/state/peercache` (Unix only).
pub fn legacy_state_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if cfg!(unix) {
        if let Some(d) = std::env::var_os("XDG_STATE_HOME") {
            dirs.push(PathBuf::from(d).join("peercache"));
        }
        if let Some(home) = directories::BaseDirs::new() {
            dirs.push(
                home.home_dir()
                    .join(".local")
                    .join("state")
                    .join("peercache"),
            );
        }
    }
    dirs
}

/// The data directory to use and the older places to move a key from: an
/// explicit directory (`--state`, `PEERCACHE_STATE_DIR`) is used as it is; the
/// default one takes over a key from the old default and from `cache_dir`.
pub fn resolve_data_dir(explicit: Option<PathBuf>, cache_dir: &Path) -> (PathBuf, Vec<PathBuf>) {
    match explicit {
        Some(dir) => (dir, Vec::new()),
        None => {
            let mut legacy = legacy_state_dirs();
            legacy.push(cache_dir.to_path_buf());
            (default_state_dir(), legacy)
        }
    }
}

fn parse_key(text: &str) -> Option<[u8; 32]> {
    peercache_core::hash::decode_hex::<32>(text.trim())
}

/// Reads the key from `dir`, creating it (mode 0600) on first use; a key found
/// in one of `legacy` (directories that held `peer-key` before) is moved into
/// `dir` first, so an upgrade keeps the peer's identity.
pub fn load_or_create_migrating(dir: &Path, legacy: &[PathBuf]) -> std::io::Result<Identity> {
    let path = dir.join(KEY_FILE);
    if !path.exists() {
        for old in legacy.iter().map(|d| d.join(KEY_FILE)) {
            if old == path {
                continue;
            }
            let Ok(text) = std::fs::read_to_string(&old) else {
                continue;
            };
            if parse_key(&text).is_none() {
                tracing::warn!(path = %old.display(), "ignoring an old peer key that does not parse");
                continue;
            }
            std::fs::create_dir_all(dir)?;
            write_private(&path, text.trim().as_bytes())?;
            if let Err(e) = std::fs::remove_file(&old) {
                tracing::warn!(path = %old.display(), error = %e, "the old peer key could not be removed");
            }
            tracing::info!(from = %old.display(), to = %path.display(), "moved the peer key to the data directory");
            break;
        }
    }
    load_or_create(dir)
}

/// Reads the key from `dir`, creating it (mode 0600) on first use.
pub fn load_or_create(dir: &Path) -> std::io::Result<Identity> {
    let path = dir.join(KEY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            return parse_key(&text).map(Identity::from_secret).ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{} does not hold a valid peer key", path.display()),
                )
            });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::create_dir_all(dir)?;
    let mut secret = [0u8; 32];
    rand::rng().fill_bytes(&mut secret);
    let text: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    write_private(&path, text.as_bytes())?;
    // Two processes starting at once: whoever renamed last wins; both use it.
    let text = std::fs::read_to_string(&path)?;
    parse_key(&text)
        .map(Identity::from_secret)
        .ok_or_else(|| std::io::Error::other("the new key did not read back"))
}

/// Writes `bytes` to `path` readable by the owner only, atomically.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp)?;
    let written = file.write_all(bytes).and_then(|()| file.sync_all());
    drop(file);
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_created_once_private_and_read_back() {
        let dir = std::env::temp_dir().join(format!("peercache-id-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let a = load_or_create(&dir).unwrap();
        let b = load_or_create(&dir).unwrap();
        assert_eq!(a.peer_id(), b.peer_id());
        assert!(peercache_core::auth::is_peer_key(a.peer_id()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(dir.join(KEY_FILE), "garbage").unwrap();
        assert!(
            load_or_create(&dir).is_err(),
            "a damaged key is an error, not a new identity"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_old_key_moves_to_the_data_directory() {
        let root = std::env::temp_dir().join(format!("peercache-mig-{}", rand::random::<u64>()));
        let old = root.join("old");
        let cache = root.join("cache");
        let new = root.join("new");
        let first = load_or_create(&old).unwrap();
        std::fs::create_dir_all(&cache).unwrap();
        std::fs::write(cache.join(KEY_FILE), "not a key").unwrap();
        let moved = load_or_create_migrating(&new, &[cache.clone(), old.clone()]).unwrap();
        assert_eq!(
            moved.peer_id(),
            first.peer_id(),
            "the identity survives the move"
        );
        assert!(!old.join(KEY_FILE).exists(), "the old copy is gone");
        assert!(
            cache.join(KEY_FILE).exists(),
            "a damaged old file is left alone"
        );
        let again = load_or_create_migrating(&new, std::slice::from_ref(&old)).unwrap();
        assert_eq!(again.peer_id(), first.peer_id());
        let _ = std::fs::remove_dir_all(&root);
    }
}
