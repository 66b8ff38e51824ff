//! `peercache-server`: the coordination server of a peercache site.
//!
//! Layout (a library plus a thin `main`, as in mini-redis):
//! - [`config`]: settings from flags and an optional TOML file.
//! - [`state`]: [`AppState`], shared by every route: figures, recent decisions,
//!   rate limiter, transfers in flight, record signing. Imports no route module.
//! - [`routes`]: the axum router, one module per job with its sub-router:
//!   [`routes::site`] (the site with serve / refer / defer), [`routes::peers`]
//!   (register, announce, report), [`routes::objects`] (the server as a source),
//!   [`routes::admin`] (the live `/admin` page), [`routes::metrics`].
//! - [`send`]: streaming an object's bytes through the egress pipe.
//! - [`site`]: the files it serves and their hashes (the object registry).
//! - [`outboards`]: the group CVs handed out for verified streaming, kept.
//! - [`store`]: the look-up table content → peers (in memory or in Redis), with
//!   the peer lifecycle rules shared by both in [`store::rules`].
//! - [`health`]: pinging peers and demoting or dropping slow and dead ones.
//! - [`egress`]: the model (and the real throttle) of the server's own upload.
//! - [`relay`]: the site's own relay for peers behind routers (B10).
//! - [`listen`]: connection caps (total, per address) and the write timeout of
//!   the site listener.
//! - [`error`]: the API error enum: `4xx` with a reason, `5xx` with a fixed
//!   sentence (the detail only logged).
//!
//! Modules import downwards only: `routes::*` → `send` → `state` →
//! `store`, `site`, `egress`, `upstream`, `relay`, `config`; `site` →
//! `outboards`; `health` →
//! `state`; `error` → `store`.
//!
//! The site request path, step by step (file :: function):
//!
//! ```text
//! GET /static/a.bin   (Peercache-Client: id=…; bw=…)
//!  │
//!  ├─ routes/mod.rs   :: app                 the router; unclaimed paths fall back to the site
//!  ├─ routes/site.rs  :: site                the chain below, top to bottom
//!  │   1 resolve      :: resolve             path → SiteObject
//!  │       site.rs    :: Site::resolve, Site::object          (a file under the root)
//!  │       upstream.rs:: Upstream::fetch                      (or the origin; private → pass through)
//!  │   2 decide       :: decide              only for a referral-capable client, shareable request
//!  │       core decide:: over_target         too slow even with a holder? then …
//!  │       store/mod.rs:: Store::holders      … ask the look-up table (ranked by core select)
//!  │       core decide:: explain             Inputs → Explained { verdict, reason, figures }
//!  │       state.rs   :: RecentDecisions::push   kept for /admin; logged with tracing
//!  │   3 answer       :: answer              act on the verdict
//!  │       Defer      :: deferral            503 + Retry-After
//!  │       Refer      :: referral            300 + holders + why (the Explained)
//!  │       Serve      :: serve               headers only | range (core range::choose_range) | whole
//!  │           send.rs:: send_object         streamed through egress.rs :: EgressPipe::throttle
//!  └─ error.rs        :: ApiError            4xx with a reason, 5xx with a fixed sentence
//! ```
//!
//! [`run`] serves on a listener the caller binds (so tests use `127.0.0.1:0`) until
//! the shutdown future resolves.
//!
//! Goals: the serve-or-refer decision of `peercache-core` applied to real traffic;
//! every request answered (a `200` whenever no better answer exists).
//! - [`upstream`]: `--upstream URL` mode, a reverse proxy that keeps shareable
//!   responses by hash.
//!
//! A peer is its key: registration, announce and report take effect only when
//! signed by the key whose public half is the peer id, and the server reaches
//! peers (pings, possession proofs) over QUIC connections dialed by that key.
//!
//! Non-goals: HTTP caching of private responses (they pass through untouched).

pub mod config;
pub mod egress;
pub mod error;
pub mod forwarded;
pub mod health;
pub mod listen;
pub mod outboards;
pub mod relay;
pub mod routes;
pub mod send;
pub mod site;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod upstream;

use std::future::Future;
use std::sync::Arc;

pub use config::Config;
pub use routes::app;
pub use state::AppState;

/// Errors that stop the server from starting.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The site root is not a readable directory.
    #[error("site root {0}: {1}")]
    Root(String, std::io::Error),
    /// TLS certificate or key could not be loaded.
    #[error("TLS: {0}")]
    Tls(std::io::Error),
    /// The Redis CA certificate could not be read.
    #[error("Redis CA certificate {0}: {1}")]
    RedisCa(String, std::io::Error),
    /// The look-up table could not be reached.
    #[error("look-up table: {0}")]
    Store(#[from] store::StoreError),
    /// The signing key could not be read or written.
    #[error("signing key: {0}")]
    Key(std::io::Error),
    /// The listener failed.
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
    /// The relay could not start.
    #[error(transparent)]
    Relay(#[from] relay::RelayError),
    /// The peer endpoint could not start.
    #[error("peer endpoint: {0}")]
    Peers(#[from] peercache_net::NetError),
    /// The relay needs a public address to be named by.
    #[error(
        "the relay needs the site's public address: listen on a specific IP or set --public-url (or pass --no-relay)"
    )]
    RelayHost,
}

/// Serves `config` on `listener` (the public site) and, when given, the
/// operator's pages on `admin` (`/admin`, `/metrics`: never on the site
/// listener) until `shutdown` resolves.
pub async fn run(
    listener: tokio::net::TcpListener,
    admin: Option<tokio::net::TcpListener>,
    config: Config,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let upstream = match &config.upstream {
        Some(url) => Some(Arc::new(
            upstream::Upstream::new(
                url,
                config.upstream_cache.clone(),
                config.upstream_cache_max,
                config.ca_cert.as_deref(),
            )
            .map_err(|e| StartError::Root(url.clone(), std::io::Error::other(e.to_string())))?,
        )),
        None => {
            let root_meta = std::fs::metadata(&config.root)
                .map_err(|e| StartError::Root(config.root.display().to_string(), e))?;
            if !root_meta.is_dir() {
                return Err(StartError::Root(
                    config.root.display().to_string(),
                    std::io::Error::other("not a directory"),
                ));
            }
            None
        }
    };
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(
            axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
                .await
                .map_err(StartError::Tls)?,
        ),
        _ => None,
    };
    let limits = store::StoreLimits {
        ttl_ms: u64::try_from(config.peer_ttl.as_millis()).unwrap_or(u64::MAX),
        max_strikes: config.max_strikes,
        slow_threshold_ms: u32::try_from(config.slow_threshold.as_millis()).unwrap_or(u32::MAX),
    };
    let table = match &config.store {
        config::StoreKind::Memory => store::Store::Memory(store::MemoryStore::new(limits)),
        config::StoreKind::Redis(url) => {
            let ca_pem = match &config.redis_ca_cert {
                Some(path) => Some(
                    std::fs::read(path)
                        .map_err(|e| StartError::RedisCa(path.display().to_string(), e))?,
                ),
                None => None,
            };
            let options = store::RedisOptions { ca_pem };
            store::Store::Redis(
                store::RedisStore::connect_with(url, "pc:", limits, &options).await?,
            )
        }
    };
    let key_file = config.signing_key_path();
    let site_relay = match (&config.tls_cert, &config.tls_key, config.relay) {
        (Some(cert), Some(key), true) => Some(start_relay(&config, &listener, cert, key).await?),
        _ => None,
    };
    let mut relays: Vec<_> = site_relay.iter().map(|r| r.info().clone()).collect();
    relays.extend(
        config
            .relay_urls
            .iter()
            .map(|url| peercache_core::protocol::RelayInfo {
                url: url.clone(),
                qad_port: Some(config::DEFAULT_QAD_PORT),
            }),
    );
    let endpoint = peercache_net::endpoint::bind(&peercache_net::EndpointOptions {
        secret: rand::random(),
        bind: std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
        ca_cert: config.ca_cert.clone(),
        accept: false,
    })
    .await?;
    if !relays.is_empty() {
        // The server reaches peers behind routers through the relays too.
        let (ep, r) = (endpoint.clone(), relays.clone());
        tokio::spawn(async move {
            peercache_net::endpoint::add_relays(&ep, &r, std::time::Duration::from_secs(5)).await;
        });
    }
    let mut app_state = AppState::new(config, table, metrics, tls.is_some());
    app_state.peers = Some(Arc::new(peercache_net::PeerDialer::new(endpoint)));
    app_state.relays = relays;
    app_state.site_relay = site_relay;
    app_state.upstream = upstream;
    let own = load_or_create_key(&key_file).map_err(StartError::Key)?;
    let rotations = load_rotations(&key_file).map_err(StartError::Key)?;
    // Replicas sharing a look-up table sign with one key: the first one's
    // (or a rotated one's).
    let (shared, rotations) = app_state
        .store
        .shared_signing_key(own.secret(), &rotations)
        .await?;
    app_state.signer = peercache_core::record::RecordSigner::from_secret(shared);
    app_state.key_rotations = rotations;
    tracing::info!(key = %app_state.signer.public_hex(), "record-signing key");
    let state = Arc::new(app_state);
    if state.upstream.is_none() {
        let indexer = state.clone();
        let indexed = tokio::task::spawn_blocking(move || indexer.site.index_all())
            .await
            .unwrap_or(0);
        tracing::info!(files = indexed, "site indexed");
    }
    state.spawn_housekeeping();
    health::spawn_pinger(&state);
    let limits = listen::ConnLimits::new(state.config.max_conns, state.config.max_conns_per_ip);
    let guard = listen::Guard::new(limits, state.config.write_timeout);
    let header_timeout = state.config.header_timeout;
    let admin_task = admin.map(|admin| {
        let router = routes::admin_app(state.clone())
            .into_make_service_with_connect_info::<std::net::SocketAddr>();
        tokio::spawn(async move {
            if let Err(e) = axum::serve(admin, router).await {
                tracing::warn!(error = %e, "admin listener failed");
            }
        })
    });
    let router = app(state).into_make_service_with_connect_info::<std::net::SocketAddr>();
    let handle = axum_server::Handle::new();
    let h2 = handle.clone();
    tokio::spawn(async move {
        shutdown.await;
        h2.graceful_shutdown(Some(std::time::Duration::from_secs(5)));
    });
    let std_listener = listener.into_std()?;
    let served = match tls {
        None => {
            let mut server = axum_server::from_tcp(std_listener)?.acceptor(guard);
            configure(server.http_builder(), header_timeout);
            server
                .first_request_timeout(header_timeout)
                .handle(handle)
                .serve(router)
                .await
        }
        Some(tls) => {
            let mut server = axum_server::from_tcp_rustls(std_listener, tls)?
                .map(|a| a.handshake_timeout(header_timeout).acceptor(guard));
            configure(server.http_builder(), header_timeout);
            server
                .first_request_timeout(header_timeout)
                .handle(handle)
                .serve(router)
                .await
        }
    };
    if let Some(task) = admin_task {
        task.abort();
    }
    served?;
    Ok(())
}

/// Hyper's limits on the site listener: the time to send a request's headers
/// (also the longest a kept-alive connection may idle), and few HTTP/2 streams.
fn configure(
    builder: &mut hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>,
    header_timeout: std::time::Duration,
) {
    builder.http1().header_read_timeout(header_timeout);
    builder
        .http2()
        .max_concurrent_streams(128)
        .keep_alive_interval(Some(header_timeout))
        .keep_alive_timeout(header_timeout);
}

/// Starts the site's own relay on the listener's address (or the host of
/// `--public-url`), with the site's certificate.
async fn start_relay(
    config: &Config,
    listener: &tokio::net::TcpListener,
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<relay::SiteRelay, StartError> {
    let local = listener.local_addr()?;
    let public_host = match &config.public_url {
        Some(url) => reqwest::Url::parse(url)
            .ok()
            .and_then(|u| u.host_str().map(|h| h.trim_matches(['[', ']']).to_string()))
            .ok_or(StartError::RelayHost)?,
        None if local.ip().is_unspecified() => return Err(StartError::RelayHost),
        None => local.ip().to_string(),
    };
    let https_port = config.relay_port.unwrap_or(config::DEFAULT_RELAY_PORT);
    let qad_port = config.relay_qad_port.unwrap_or(config::DEFAULT_QAD_PORT);
    let options = relay::RelayOptions {
        https: std::net::SocketAddr::new(local.ip(), https_port),
        qad: std::net::SocketAddr::new(local.ip(), qad_port),
        public_host,
        client_rate: u32::try_from(config.relay_rate).unwrap_or(u32::MAX),
    };
    Ok(relay::SiteRelay::spawn(&options, cert, key).await?)
}

/// Reads the 32-byte record-signing secret from `path`, creating it (mode 0600)
/// on first start, so clients' pinned key survives restarts. Two servers
/// starting at once agree on the one written first.
pub fn load_or_create_key(
    path: &std::path::Path,
) -> std::io::Result<peercache_core::record::RecordSigner> {
    match create_key(path) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => create_key(path),
        other => other,
    }
}

/// Where the rotation statements of the key at `key_file` are kept.
fn rotations_path(key_file: &std::path::Path) -> std::path::PathBuf {
    let mut name = key_file.as_os_str().to_os_string();
    name.push(".rotations");
    name.into()
}

/// The rotation statements that led to the key at `key_file` (none when the
/// key was never rotated).
pub fn load_rotations(
    key_file: &std::path::Path,
) -> std::io::Result<Vec<peercache_core::record::KeyRotation>> {
    let path = rotations_path(key_file);
    match std::fs::read(&path) {
        Ok(bytes) => {
            let mut list: Vec<peercache_core::record::KeyRotation> = serde_json::from_slice(&bytes)
                .map_err(|e| std::io::Error::other(format!("{}: {e}", path.display())))?;
            list.truncate(peercache_core::record::MAX_ROTATIONS);
            Ok(list)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// Replaces the key at `key_file` with a new one (issue 14): the old secret is
/// kept beside it (`…old-<first 16 digits of its public key>`), and a
/// statement of the rotation signed by the old key is added to
/// `…rotations`, which `/v1/key` publishes so clients that pinned the old key
/// pin the new one. Returns the old and the new public key.
pub fn rotate_key(key_file: &std::path::Path) -> std::io::Result<(String, String)> {
    use peercache_core::record::{MAX_ROTATIONS, RecordSigner};
    let old = load_or_create_key(key_file)?;
    let new = RecordSigner::from_secret(rand::random());
    let mut rotations = load_rotations(key_file)?;
    rotations.push(old.rotate_to(&new));
    let excess = rotations.len().saturating_sub(MAX_ROTATIONS);
    rotations.drain(..excess);
    let mut kept = key_file.as_os_str().to_os_string();
    kept.push(format!(
        ".old-{}",
        old.public_hex().get(..16).unwrap_or_default()
    ));
    write_secret(std::path::Path::new(&kept), &old.secret())?;
    // The statement first: a crash before the key is replaced leaves a
    // statement for a key never used, which harms nobody.
    let json = serde_json::to_vec_pretty(&rotations).map_err(std::io::Error::other)?;
    write_secret(&rotations_path(key_file), &json)?;
    write_secret(key_file, &new.secret())?;
    Ok((old.public_hex(), new.public_hex()))
}

/// Writes `bytes` to `path` atomically (a 0600 temporary file renamed over it).
fn write_secret(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut tmp = path.as_os_str().to_os_string();
    tmp.push(format!(".tmp-{}", std::process::id()));
    let tmp = std::path::PathBuf::from(tmp);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    opts.mode(0o600);
    let mut f = opts.open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

fn create_key(path: &std::path::Path) -> std::io::Result<peercache_core::record::RecordSigner> {
    match std::fs::read(path) {
        Ok(bytes) => {
            let secret: [u8; 32] = bytes.try_into().map_err(|_| {
                std::io::Error::other(format!("{} is not a 32-byte key", path.display()))
            })?;
            Ok(peercache_core::record::RecordSigner::from_secret(secret))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let signer = peercache_core::record::RecordSigner::from_secret(rand::random());
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            use std::io::Write;
            #[cfg(unix)]
            use std::os::unix::fs::OpenOptionsExt;
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create_new(true);
            #[cfg(unix)]
            opts.mode(0o600);
            let mut f = opts.open(path)?;
            f.write_all(&signer.secret())?;
            f.sync_all()?;
            Ok(signer)
        }
        Err(e) => Err(e),
    }
}
