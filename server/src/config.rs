//! Server settings: defaults, then a TOML file, then flags (flags win).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// Everything the server needs to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Directory served as the site (unused with `upstream`).
    pub root: PathBuf,
    /// Origin proxied instead of a directory (`--upstream URL`).
    pub upstream: Option<String>,
    /// Where objects kept from the upstream are stored.
    pub upstream_cache: PathBuf,
    /// Extra trusted root for the upstream (PEM).
    pub ca_cert: Option<PathBuf>,
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
    /// Where the look-up table lives.
    pub store: StoreKind,
    /// Extra trusted root (PEM) for a `rediss://` store.
    pub redis_ca_cert: Option<PathBuf>,
    /// How often the server pings serving peers (M8).
    pub ping_interval: Duration,
    /// RTT above which a peer is demoted.
    pub slow_threshold: Duration,
    /// Announces a peer may send per second (burst: 4×).
    pub announce_rate: u32,
    /// Where the record-signing key lives (created on first start); a fresh key
    /// per start when unset.
    pub key_file: Option<PathBuf>,
    /// TLS certificate chain (PEM).
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    pub tls_key: Option<PathBuf>,
    /// Run the site's own relay (with TLS only); `--no-relay` turns it off.
    pub relay: bool,
    /// Relays run separately, offered to hosts besides (or instead of) the own.
    pub relay_urls: Vec<String>,
    /// HTTPS port of the own relay; default 8443 (0 when the site listens on
    /// port 0, as tests do).
    pub relay_port: Option<u16>,
    /// UDP port of the own relay's address discovery; default 7842 (0 likewise).
    pub relay_qad_port: Option<u16>,
    /// Bytes per second the relay reads from each client (relayed bytes are site
    /// egress).
    pub relay_rate: u64,
    /// Most connections the site listener holds at once.
    pub max_conns: usize,
    /// Most connections it holds from one client address.
    pub max_conns_per_ip: usize,
    /// Time a connection has to send a request's headers (and most a kept-alive
    /// connection may idle).
    pub header_timeout: Duration,
    /// Longest a response may wait for its reader before the connection is cut
    /// (and what it still owed is released).
    pub write_timeout: Duration,
    /// API requests (register, announce, report, `/v1/objects/…`) one client
    /// address may make per second (burst: 4×).
    pub source_rate: u32,
    /// Most live peer ids registered from one client address.
    pub max_peers_per_ip: usize,
    /// Longest the server keeps deferring clients for one object, in total.
    pub max_defer: Duration,
    /// Most bytes kept on disk from the upstream (oldest evicted first).
    pub upstream_cache_max: u64,
    /// Proxies whose forwarding headers name the client (empty: none).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Refer clients to serving peers that are receiving the object right now
    /// (partial holders, issue 12 point 1) rather than defer them.
    pub refer_to_receivers: bool,
    /// The server as a seed (issue 12 point 3): the first serving peer to
    /// ask for a large object nobody holds is referred with no holders and
    /// sent its pieces (`POST /v1/objects/{hash}/piece`), as are those after
    /// it, each piece once and then up to 40 % more; off, the first asker is
    /// sent the object whole and nothing is seeded.
    pub seed_crowds: bool,
    /// `Cache-Control` of the site's files by path prefix (root mode; the
    /// longest matching prefix wins; `no-cache` where none matches).
    pub cache_control: Vec<(String, String)>,
    /// Where the server keeps its state across restarts (the record-signing
    /// key when no `key_file` is given).
    pub state_dir: PathBuf,
}

/// QUIC address discovery port of a relay named by `--relay-url` (the stock
/// relay's default).
pub const DEFAULT_QAD_PORT: u16 = 7842;
/// HTTPS port of the own relay by default.
pub const DEFAULT_RELAY_PORT: u16 = 8443;

impl Config {
    /// Defaults for a site root.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            upstream: None,
            upstream_cache: std::env::temp_dir()
                .join(format!("peercache-upstream-{}", std::process::id())),
            ca_cert: None,
            scope: "/static/".to_string(),
            target_period: Duration::from_secs(2),
            egress_limit: None,
            peer_ttl: Duration::from_secs(60),
            max_strikes: 3,
            max_proxies: 8,
            public_url: None,
            store: StoreKind::Memory,
            redis_ca_cert: None,
            ping_interval: Duration::from_secs(5),
            slow_threshold: Duration::from_millis(500),
            announce_rate: 5,
            key_file: None,
            tls_cert: None,
            tls_key: None,
            relay: true,
            relay_urls: Vec::new(),
            relay_port: None,
            relay_qad_port: None,
            relay_rate: 4 << 20,
            max_conns: 2048,
            max_conns_per_ip: 256,
            header_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(20),
            source_rate: 50,
            max_peers_per_ip: 64,
            max_defer: Duration::from_secs(10),
            upstream_cache_max: 2 << 30,
            trusted_proxies: Vec::new(),
            refer_to_receivers: true,
            seed_crowds: true,
            cache_control: Vec::new(),
            state_dir: default_state_dir(),
        }
    }

    /// The record-signing key file: `key_file`, or one per site (its root or
    /// its upstream) in the state directory, so clients' pinned key survives
    /// restarts.
    pub fn signing_key_path(&self) -> PathBuf {
        if let Some(path) = &self.key_file {
            return path.clone();
        }
        let site = match &self.upstream {
            Some(url) => url.clone(),
            None => std::fs::canonicalize(&self.root)
                .unwrap_or_else(|_| self.root.clone())
                .display()
                .to_string(),
        };
        let id = peercache_core::hash::ObjectHash::of(site.as_bytes()).to_hex();
        self.state_dir
            .join(format!("signing-key-{}", id.get(..16).unwrap_or_default()))
    }

    /// The `Cache-Control` set for a site path: the longest matching prefix.
    pub fn cache_control_for(&self, path: &str) -> Option<&str> {
        self.cache_control
            .iter()
            .filter(|(prefix, _)| path.starts_with(prefix.as_str()))
            .max_by_key(|(prefix, _)| prefix.len())
            .map(|(_, value)| value.as_str())
    }

    /// Parses `PREFIX=VALUE` (`--cache-control /static/v1/=public, max-age=31536000, immutable`).
    pub fn parse_cache_control(rule: &str) -> Result<(String, String), String> {
        let (prefix, value) = rule
            .split_once('=')
            .ok_or_else(|| format!("--cache-control must be PREFIX=VALUE, not {rule:?}"))?;
        if !prefix.starts_with('/') {
            return Err(format!(
                "--cache-control prefix must start with '/': {prefix:?}"
            ));
        }
        if value.trim().is_empty() || axum::http::HeaderValue::from_str(value).is_err() {
            return Err(format!(
                "--cache-control value is not a header value: {value:?}"
            ));
        }
        Ok((prefix.to_string(), value.trim().to_string()))
    }
}

/// `$PEERCACHE_STATE_DIR`, else `$XDG_STATE_HOME/peercache-server`, else
/// `~/.local/state/peercache-server`, else a directory under the temp dir.
pub fn default_state_dir() -> PathBuf {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    env("PEERCACHE_STATE_DIR")
        .or_else(|| env("XDG_STATE_HOME").map(|d| d.join("peercache-server")))
        .or_else(|| env("HOME").map(|d| d.join(".local/state/peercache-server")))
        .unwrap_or_else(|| std::env::temp_dir().join("peercache-server-state"))
}

/// Which backend holds the look-up table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreKind {
    /// Embedded, in this process (default).
    Memory,
    /// Shared through Redis at this URL.
    Redis(String),
}

impl std::str::FromStr for StoreKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "memory" {
            Ok(StoreKind::Memory)
        } else if [
            "redis://",
            "rediss://",
            "redis+cluster://",
            "rediss+cluster://",
        ]
        .iter()
        .any(|p| s.starts_with(p))
        {
            Ok(StoreKind::Redis(s.to_string()))
        } else {
            Err(format!(
                "--store must be `memory`, `redis://HOST:PORT` (`rediss://` for TLS) or \
                 `redis+cluster://HOST:PORT,HOST:PORT` (`rediss+cluster://`), not {s:?}"
            ))
        }
    }
}

/// A TOML config file: top-level keys named as the long flags with `_`
/// (`egress_limit = "10MiB"`), every key optional; unknown keys are refused.
/// `deploy/server.toml` lists every key with its default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Site root.
    pub root: Option<PathBuf>,
    /// Upstream origin.
    pub upstream: Option<String>,
    /// Upstream object store.
    pub upstream_cache: Option<PathBuf>,
    /// Extra trusted root.
    pub ca_cert: Option<PathBuf>,
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
    /// `memory` or `redis://…`.
    pub store: Option<String>,
    /// Extra trusted root (PEM) for `rediss://`.
    pub redis_ca_cert: Option<PathBuf>,
    /// e.g. `5s`.
    pub ping_interval: Option<String>,
    /// Record-signing key file.
    pub key_file: Option<PathBuf>,
    /// TLS certificate.
    pub tls_cert: Option<PathBuf>,
    /// TLS key.
    pub tls_key: Option<PathBuf>,
    /// `false` turns the own relay off.
    pub relay: Option<bool>,
    /// Relays run separately.
    pub relay_url: Option<Vec<String>>,
    /// HTTPS port of the own relay.
    pub relay_port: Option<u16>,
    /// UDP port of its address discovery.
    pub relay_qad_port: Option<u16>,
    /// e.g. `4MiB` (per client, per second).
    pub relay_rate: Option<String>,
    /// Operator listener (`/admin`, `/metrics`), e.g. `127.0.0.1:9090`.
    pub admin_listen: Option<String>,
    /// Most connections at once.
    pub max_conns: Option<usize>,
    /// Most connections from one address.
    pub max_conns_per_ip: Option<usize>,
    /// e.g. `10s`.
    pub header_timeout: Option<String>,
    /// e.g. `20s`.
    pub write_timeout: Option<String>,
    /// API requests per second per address.
    pub source_rate: Option<u32>,
    /// Live peers per address.
    pub max_peers_per_ip: Option<usize>,
    /// e.g. `10s`.
    pub max_defer: Option<String>,
    /// e.g. `2GiB`.
    pub upstream_cache_max: Option<String>,
    /// `false`: defer clients while an object is on its way, never refer to
    /// partial holders.
    pub refer_to_receivers: Option<bool>,
    /// `false`: never seed a crowd's pieces.
    pub seed_crowds: Option<bool>,
    /// `PREFIX=VALUE` rules: `Cache-Control` by path prefix (root mode).
    pub cache_control: Option<Vec<String>>,
    /// State directory (the signing key).
    pub state_dir: Option<PathBuf>,
    /// CIDRs of trusted proxies.
    pub trusted_proxy: Option<Vec<String>>,
    /// `text` or `json`.
    pub log_format: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../deploy/server.toml");

    /// The example with every commented-out `# key = value` line enabled.
    fn uncommented() -> String {
        EXAMPLE
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(rest)
                    if rest.split_once(" = ").is_some_and(|(k, _)| {
                        !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                    }) =>
                {
                    rest
                }
                _ => l,
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Every key the parser knows, from its own refusal of an unknown one.
    fn known_keys() -> Vec<String> {
        let err = toml::from_str::<FileConfig>("zz_unknown = 1")
            .expect_err("unknown keys are refused")
            .to_string();
        let list = err.split("expected one of").nth(1).expect("a key list");
        list.split(',')
            .map(|k| k.trim().trim_matches('`').to_string())
            .filter(|k| !k.is_empty())
            .collect()
    }

    #[test]
    fn the_example_config_parses_and_lists_every_key() {
        let file: FileConfig = toml::from_str(EXAMPLE).expect("deploy/server.toml parses");
        let all: FileConfig = toml::from_str(&uncommented()).expect("with every key set");
        assert!(all.root.is_some() && all.upstream.is_some() && all.key_file.is_some());
        let table: toml::Table = toml::from_str(&uncommented()).unwrap();
        let keys = known_keys();
        assert!(keys.len() > 25, "{keys:?}");
        for k in &keys {
            assert!(
                table.contains_key(k),
                "deploy/server.toml does not list `{k}`"
            );
        }
        // The values shown are the defaults.
        let d = Config::new("/srv");
        let dur = |s: &Option<String>| peercache_core::units::parse_duration(s.as_deref().unwrap());
        let size = |s: &Option<String>| peercache_core::units::parse_size(s.as_deref().unwrap());
        assert_eq!(dur(&file.target_period).unwrap(), d.target_period);
        assert_eq!(dur(&file.peer_ttl).unwrap(), d.peer_ttl);
        assert_eq!(dur(&file.ping_interval).unwrap(), d.ping_interval);
        assert_eq!(dur(&file.header_timeout).unwrap(), d.header_timeout);
        assert_eq!(dur(&file.write_timeout).unwrap(), d.write_timeout);
        assert_eq!(dur(&file.max_defer).unwrap(), d.max_defer);
        assert_eq!(size(&file.relay_rate).unwrap(), d.relay_rate);
        assert_eq!(
            size(&file.upstream_cache_max).unwrap(),
            d.upstream_cache_max
        );
        assert_eq!(file.scope.as_deref(), Some(d.scope.as_str()));
        assert_eq!(file.max_conns, Some(d.max_conns));
        assert_eq!(file.max_conns_per_ip, Some(d.max_conns_per_ip));
        assert_eq!(file.source_rate, Some(d.source_rate));
        assert_eq!(file.max_peers_per_ip, Some(d.max_peers_per_ip));
        assert_eq!(file.relay, Some(d.relay));
        assert_eq!(file.relay_port, Some(DEFAULT_RELAY_PORT));
        assert_eq!(file.relay_qad_port, Some(DEFAULT_QAD_PORT));
        assert_eq!(file.store.as_deref().map(str::parse), Some(Ok(d.store)));
        assert_eq!(file.trusted_proxy, Some(Vec::new()));
    }
}
