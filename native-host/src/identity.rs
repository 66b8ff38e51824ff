//! The host's identity: a random peer id stored as `peer-id` in the cache
//! directory, so `fetch --cache DIR` and a later `serve --cache DIR` are one peer.

use std::path::Path;

use rand::RngCore;

/// Reads the peer id from `dir`, creating it on first use.
pub fn load_or_create(dir: &Path) -> std::io::Result<String> {
    let path = dir.join("peer-id");
    match std::fs::read_to_string(&path) {
        Ok(s) if peercache_core::headers::is_peer_id(s.trim()) => return Ok(s.trim().to_string()),
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{} does not hold a valid peer id", path.display()),
            ));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::create_dir_all(dir)?;
    let mut bytes = [0u8; 12];
    rand::rng().fill_bytes(&mut bytes);
    let id: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    crate::cache::write_atomically(&path, id.as_bytes())?;
    Ok(id)
}
