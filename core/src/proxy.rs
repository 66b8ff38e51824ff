//! A holder as a referral lists it: its id, how to dial it, what the server
//! knows of its path, round trip and load. The lowest layer of the messages:
//! `select`, `explain`, `peer` and `protocol` all build on it.

use serde::{Deserialize, Serialize};

/// Upload slots in use against the peer's limit (M12).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Load {
    /// Uploads in progress.
    pub active: u32,
    /// Most uploads the peer accepts at once.
    pub limit: u32,
}

impl Load {
    /// True when the peer would refuse another upload.
    pub fn is_full(&self) -> bool {
        self.limit == 0 || self.active >= self.limit
    }
}

/// One entry of a referral's proxy list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proxy {
    /// Peer id (its public key), or `server` for the server's own entry.
    pub id: String,
    /// For a peer, its dial string (`crate::peer::DialInfo`, e.g.
    /// `peer:?relay=https://198.51.100.2:8443/&direct=198.51.100.7:5000`); for
    /// the server, its base URL.
    pub addr: String,
    /// Whether connections to it were seen to go direct (`Some(false)`: relay
    /// only), if known.
    #[serde(default)]
    pub direct: Option<bool>,
    /// The server's smoothed round-trip time to it, if measured.
    #[serde(default)]
    pub rtt_ms: Option<u32>,
    /// Its last reported load.
    #[serde(default)]
    pub load: Option<Load>,
}

/// Id of the server's own entry in a proxy list.
pub const SERVER_PROXY_ID: &str = "server";
