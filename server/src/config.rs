//! Server settings: defaults, then a TOML file, then flags (flags win).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// Everything the server needs to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Directory served as the site.
    pub root: PathBuf,
    /// Path prefix advertised for peer delivery (`Peercache: scope=…`).
    pub scope: String,
    /// Base target period (M3, M4).
    pub target_period: Duration,
    /// The server's egress capacity in bytes per second; `None` = unlimited.
    pub egress_limit: Option<u64>,
    /// How long a registration or listing lives without a heartbeat.
    pub peer_ttl: Duration,
    /// Verified mismatch reports after which a peer is delisted.
    pub max_strikes: u32,
    /// Most peers in one referral.
    pub max_proxies: usize,
    /// Public base URL for the server's own proxy-list entry; derived from the
    /// request's `Host` when unset.
    pub public_url: Option<String>,
    /// TLS certificate chain (PEM).
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    pub tls_key: Option<PathBuf>,
}

impl Config {
    /// Defaults for a site root.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            scope: "/static/".to_string(),
            target_period: Duration::from_secs(2),
            egress_limit: None,
            peer_ttl: Duration::from_secs(60),
            max_strikes: 3,
            max_proxies: 8,
            public_url: None,
            tls_cert: None,
            tls_key: None,
        }
    }
}

/// The `[server]` table of a TOML config file; every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Site root.
    pub root: Option<PathBuf>,
    /// Listen address.
    pub listen: Option<String>,
    /// Advertised scope.
    pub scope: Option<String>,
    /// e.g. `2s`.
    pub target_period: Option<String>,
    /// e.g. `10MiB`.
    pub egress_limit: Option<String>,
    /// e.g. `60s`.
    pub peer_ttl: Option<String>,
    /// Public base URL.
    pub public_url: Option<String>,
    /// TLS certificate.
    pub tls_cert: Option<PathBuf>,
    /// TLS key.
    pub tls_key: Option<PathBuf>,
}
