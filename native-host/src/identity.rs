//! The host's identity: an Ed25519 secret key, created on first start and kept as
//! `peer-key` (64 hex digits, mode 0600) in the host's *state* directory, not in
//! the cache (a cache cleaner must not change who a peer is). The peer id is the
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

/// The default state directory: `$PEERCACHE_STATE_DIR`, else
/// `$XDG_STATE_HOME/peercache`, else `~/.local/state/peercache`.
pub fn default_state_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("PEERCACHE_STATE_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_STATE_HOME") {
        return PathBuf::from(d).join("peercache");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".local").join("state").join("peercache")
}

fn parse_key(text: &str) -> Option<[u8; 32]> {
    peercache_core::hash::decode_hex::<32>(text.trim())
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
}
