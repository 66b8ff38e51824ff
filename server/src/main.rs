//! `peercache-server` command line: parse flags (and an optional TOML file), bind,
//! and run the library's server until Ctrl-C or SIGTERM.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Parser;
use peercache_core::units::{parse_duration, parse_size};
use peercache_server::Config;
use peercache_server::config::FileConfig;

/// The peercache coordination server: serves a site and refers browsers to peers.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// TOML config file (keys as the long flags, with `_`); flags override it.
    #[arg(long, env = "PEERCACHE_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on; prints `listening on ADDR` once bound [default: 127.0.0.1:8080].
    #[arg(long, env = "PEERCACHE_LISTEN")]
    listen: Option<String>,
    /// Directory to serve as the site.
    #[arg(long, env = "PEERCACHE_ROOT", conflicts_with = "upstream")]
    root: Option<PathBuf>,
    /// Origin to proxy instead of a directory, e.g. `https://origin.internal`.
    #[arg(long, env = "PEERCACHE_UPSTREAM")]
    upstream: Option<String>,
    /// Where objects kept from the upstream are stored [default: a directory in $TMPDIR].
    #[arg(long, env = "PEERCACHE_UPSTREAM_CACHE")]
    upstream_cache: Option<PathBuf>,
    /// Extra trusted root certificate (PEM) for the upstream.
    #[arg(long, env = "PEERCACHE_CA_CERT")]
    ca_cert: Option<PathBuf>,
    /// Path prefix advertised for delivery through peers [default: /static/].
    #[arg(long, env = "PEERCACHE_SCOPE")]
    scope: Option<String>,
    /// Server egress capacity, e.g. `10MiB` (per second) [default: unlimited].
    /// Each replica applies it to its own traffic: with N replicas behind a
    /// balancer, give each its share (total / N).
    #[arg(long, env = "PEERCACHE_EGRESS_LIMIT")]
    egress_limit: Option<String>,
    /// Base target period, e.g. `2s`, `500ms` [default: 2s].
    #[arg(long, env = "PEERCACHE_TARGET_PERIOD")]
    target_period: Option<String>,
    /// How long a peer stays listed without an announce, e.g. `60s` [default: 60s].
    #[arg(long, env = "PEERCACHE_PEER_TTL")]
    peer_ttl: Option<String>,
    /// Public base URL of this server (for its own proxy-list entry) [default:
    /// from the request's Host, and X-Forwarded-Proto from a trusted proxy].
    #[arg(long, env = "PEERCACHE_PUBLIC_URL")]
    public_url: Option<String>,
    /// Where the look-up table lives: `memory`, `redis://HOST:PORT`
    /// (`rediss://` for TLS) or `redis+cluster://HOST:PORT,HOST:PORT` [default: memory].
    #[arg(long, env = "PEERCACHE_STORE")]
    store: Option<String>,
    /// Extra trusted root certificate (PEM) for a `rediss://` store (the
    /// system's roots otherwise).
    #[arg(long, env = "PEERCACHE_REDIS_CA_CERT")]
    redis_ca_cert: Option<PathBuf>,
    /// How often to ping serving peers, e.g. `5s` (`0s` turns pinging off) [default: 5s].
    #[arg(long, env = "PEERCACHE_PING_INTERVAL")]
    ping_interval: Option<String>,
    /// Record-signing key file (created on first start). Clients pin this key
    /// [default: a fresh key per start].
    #[arg(long, env = "PEERCACHE_KEY_FILE")]
    key_file: Option<PathBuf>,
    /// TLS certificate chain (PEM); with --tls-key serves https.
    #[arg(long, env = "PEERCACHE_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, env = "PEERCACHE_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Do not run the site's own relay (it runs by default with TLS, so visitors
    /// behind routers can reach each other).
    #[arg(long, env = "PEERCACHE_NO_RELAY")]
    no_relay: bool,
    /// A relay run separately (the stock iroh-relay), offered to hosts; repeatable.
    #[arg(long = "relay-url", env = "PEERCACHE_RELAY_URL", value_delimiter = ',')]
    relay_url: Vec<String>,
    /// HTTPS port of the own relay, on the site's address [default: 8443].
    #[arg(long, env = "PEERCACHE_RELAY_PORT")]
    relay_port: Option<u16>,
    /// UDP port of the own relay's address discovery [default: 7842].
    #[arg(long, env = "PEERCACHE_RELAY_QAD_PORT")]
    relay_qad_port: Option<u16>,
    /// Bytes per second the relay accepts from each client, e.g. `4MiB` [default: 4MiB].
    #[arg(long, env = "PEERCACHE_RELAY_RATE")]
    relay_rate: Option<String>,
    /// Operator listener for `/admin`, `/admin/stats.json`, `/metrics` and the
    /// holders of an object; prints `admin on ADDR` once bound [default: 127.0.0.1:0].
    #[arg(long, env = "PEERCACHE_ADMIN_LISTEN")]
    admin_listen: Option<String>,
    /// Most connections the site listener holds at once [default: 2048].
    #[arg(long, env = "PEERCACHE_MAX_CONNS")]
    max_conns: Option<usize>,
    /// Most connections from one client address [default: 256].
    #[arg(long, env = "PEERCACHE_MAX_CONNS_PER_IP")]
    max_conns_per_ip: Option<usize>,
    /// Time to send a request's headers, and longest idle keep-alive, e.g. `10s` [default: 10s].
    #[arg(long, env = "PEERCACHE_HEADER_TIMEOUT")]
    header_timeout: Option<String>,
    /// Longest a response waits for a reader that stopped reading, e.g. `20s` [default: 20s].
    #[arg(long, env = "PEERCACHE_WRITE_TIMEOUT")]
    write_timeout: Option<String>,
    /// API requests per second one client address may make [default: 50; burst 4×].
    #[arg(long, env = "PEERCACHE_SOURCE_RATE")]
    source_rate: Option<u32>,
    /// Most live peer ids registered from one client address [default: 64].
    #[arg(long, env = "PEERCACHE_MAX_PEERS_PER_IP")]
    max_peers_per_ip: Option<usize>,
    /// Longest total time clients are deferred for one object, e.g. `10s` [default: 10s].
    #[arg(long, env = "PEERCACHE_MAX_DEFER")]
    max_defer: Option<String>,
    /// Most bytes kept on disk from the upstream, e.g. `2GiB` [default: 2GiB].
    #[arg(long, env = "PEERCACHE_UPSTREAM_CACHE_MAX")]
    upstream_cache_max: Option<String>,
    /// Proxies (load balancers) whose X-Forwarded-For / Forwarded and
    /// X-Forwarded-Proto headers are believed, as CIDRs, e.g. `10.0.0.0/8`;
    /// repeatable or comma-separated [default: none: the connection's address
    /// is the client's].
    #[arg(long, env = "PEERCACHE_TRUSTED_PROXY", value_delimiter = ',')]
    trusted_proxy: Vec<String>,
    /// Log format on stderr: `text` or `json` (one JSON object per line)
    /// [default: text].
    #[arg(long, env = "PEERCACHE_LOG_FORMAT", value_enum)]
    log_format: Option<LogFormat>,
    /// Never refer clients to peers still receiving an object (partial
    /// holders); defer them while it is on its way instead.
    #[arg(long, env = "PEERCACHE_NO_REFER_TO_RECEIVERS")]
    no_refer_to_receivers: bool,
    /// Never seed a crowd: the first asker of a large object nobody holds is
    /// sent it whole, the others get every byte from peers, the server last.
    #[arg(long, env = "PEERCACHE_NO_SEED_CROWDS")]
    no_seed_crowds: bool,
    /// `Cache-Control` for the site's files under a path prefix, as
    /// `PREFIX=VALUE` (repeatable; longest prefix wins) [default: no-cache],
    /// e.g. `/static/v1/=public, max-age=31536000, immutable`.
    #[arg(
        long = "cache-control",
        env = "PEERCACHE_CACHE_CONTROL",
        value_delimiter = ';'
    )]
    cache_control: Vec<String>,
    /// State kept across restarts (the record-signing key, one per site, when
    /// no --key-file is given) [default: $XDG_STATE_HOME/peercache-server or
    /// ~/.local/state/peercache-server].
    #[arg(long, env = "PEERCACHE_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Replace the record-signing key with a new one and exit: the old key is
    /// kept beside it and signs a statement of the rotation, which `/v1/key`
    /// publishes so clients that pinned the old key pin the new one. Restart
    /// the server (all replicas) afterwards.
    #[arg(long)]
    rotate_key: bool,
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,tower_http=warn".into());
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let file: FileConfig = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading config {}", path.display()))?;
            toml::from_str(&text).with_context(|| format!("parsing config {}", path.display()))?
        }
        None => FileConfig::default(),
    };
    let log_format = match (args.log_format, file.log_format.as_deref()) {
        (Some(f), _) => f,
        (None, None | Some("text")) => LogFormat::Text,
        (None, Some("json")) => LogFormat::Json,
        (None, Some(other)) => bail!("log_format must be `text` or `json`, not {other:?}"),
    };
    init_logs(log_format);
    let upstream = args.upstream.or(file.upstream);
    let root = args.root.or(file.root);
    let mut config = match (root, &upstream) {
        (Some(root), None) => {
            // Before anything is bound or printed: a wrong --root is a start-up error.
            match std::fs::metadata(&root) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => bail!("--root {} is not a directory", root.display()),
                Err(e) => bail!("--root {}: {e}", root.display()),
            }
            Config::new(root)
        }
        (None, Some(url)) => {
            if !url.starts_with("http://") && !url.starts_with("https://") {
                bail!("--upstream must be an http(s) URL: {url:?}");
            }
            let mut c = Config::new(PathBuf::new());
            c.upstream = Some(url.clone());
            c
        }
        (Some(_), Some(_)) => bail!("give either --root DIR or --upstream URL, not both"),
        (None, None) => bail!("--root DIR or --upstream URL is required (what to serve)"),
    };
    let rules = if args.cache_control.is_empty() {
        file.cache_control.unwrap_or_default()
    } else {
        args.cache_control
    };
    for rule in rules {
        config
            .cache_control
            .push(Config::parse_cache_control(&rule).map_err(anyhow::Error::msg)?);
    }
    if let Some(dir) = args.upstream_cache.or(file.upstream_cache) {
        config.upstream_cache = dir;
    }
    config.ca_cert = args.ca_cert.or(file.ca_cert);
    if let Some(scope) = args.scope.or(file.scope) {
        if !scope.starts_with('/') {
            bail!("--scope must start with '/': {scope:?}");
        }
        config.scope = scope;
    }
    if let Some(s) = args.egress_limit.or(file.egress_limit) {
        config.egress_limit = Some(parse_size(&s)?);
    }
    if let Some(s) = args.target_period.or(file.target_period) {
        config.target_period = parse_duration(&s)?;
    }
    if let Some(s) = args.peer_ttl.or(file.peer_ttl) {
        config.peer_ttl = parse_duration(&s)?;
    }
    config.public_url = args.public_url.or(file.public_url);
    config.key_file = args.key_file.or(file.key_file);
    if let Some(dir) = args.state_dir.or(file.state_dir) {
        config.state_dir = dir;
    }
    if let Some(s) = args.store.or(file.store) {
        config.store = s.parse().map_err(anyhow::Error::msg)?;
    }
    config.redis_ca_cert = args.redis_ca_cert.or(file.redis_ca_cert);
    if let Some(s) = args.ping_interval.or(file.ping_interval) {
        config.ping_interval = parse_duration(&s)?;
    }
    config.tls_cert = args.tls_cert.or(file.tls_cert);
    config.tls_key = args.tls_key.or(file.tls_key);
    config.relay = !args.no_relay && file.relay.unwrap_or(true);
    config.relay_urls = if args.relay_url.is_empty() {
        file.relay_url.unwrap_or_default()
    } else {
        args.relay_url
    };
    for url in &config.relay_urls {
        if !peercache_core::peer::is_relay_url(url) {
            bail!("--relay-url must be an http(s) URL: {url:?}");
        }
    }
    config.relay_port = args.relay_port.or(file.relay_port);
    config.relay_qad_port = args.relay_qad_port.or(file.relay_qad_port);
    if let Some(s) = args.relay_rate.or(file.relay_rate) {
        config.relay_rate = parse_size(&s)?;
    }
    if let Some(n) = args.max_conns.or(file.max_conns) {
        config.max_conns = n;
    }
    if let Some(n) = args.max_conns_per_ip.or(file.max_conns_per_ip) {
        config.max_conns_per_ip = n;
    }
    if let Some(s) = args.header_timeout.or(file.header_timeout) {
        config.header_timeout = parse_duration(&s)?;
    }
    if let Some(s) = args.write_timeout.or(file.write_timeout) {
        config.write_timeout = parse_duration(&s)?;
    }
    if let Some(n) = args.source_rate.or(file.source_rate) {
        config.source_rate = n;
    }
    if let Some(n) = args.max_peers_per_ip.or(file.max_peers_per_ip) {
        config.max_peers_per_ip = n;
    }
    if let Some(s) = args.max_defer.or(file.max_defer) {
        config.max_defer = parse_duration(&s)?;
    }
    if args.no_refer_to_receivers || file.refer_to_receivers == Some(false) {
        config.refer_to_receivers = false;
    }
    if args.no_seed_crowds || file.seed_crowds == Some(false) {
        config.seed_crowds = false;
    }
    if let Some(s) = args.upstream_cache_max.or(file.upstream_cache_max) {
        config.upstream_cache_max = parse_size(&s)?;
    }
    let proxies = if args.trusted_proxy.is_empty() {
        file.trusted_proxy.unwrap_or_default()
    } else {
        args.trusted_proxy
    };
    for p in &proxies {
        config.trusted_proxies.push(p.parse().with_context(|| {
            format!("--trusted-proxy must be a CIDR such as 10.0.0.0/8, not {p:?}")
        })?);
    }
    if config.tls_cert.is_some() != config.tls_key.is_some() {
        bail!("--tls-cert and --tls-key go together");
    }
    if args.rotate_key {
        let path = config.signing_key_path();
        let (old, new) = peercache_server::rotate_key(&path)
            .with_context(|| format!("rotating the key {}", path.display()))?;
        println!(
            "rotated the record-signing key {old} to {new} ({})",
            path.display()
        );
        return Ok(());
    }
    let listen = args
        .listen
        .or(file.listen)
        .unwrap_or_else(|| "127.0.0.1:8080".to_string());
    if listen.ends_with(":0") {
        // An ephemeral site (tests): the relay takes free ports too.
        config.relay_port = config.relay_port.or(Some(0));
        config.relay_qad_port = config.relay_qad_port.or(Some(0));
    }
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let handle = peercache_server::telemetry::install_recorder()
        .context("installing the metrics recorder")?;
    let admin_listen = args
        .admin_listen
        .or(file.admin_listen)
        .unwrap_or_else(|| "127.0.0.1:0".to_string());
    let admin = tokio::net::TcpListener::bind(&admin_listen)
        .await
        .with_context(|| format!("binding the admin listener {admin_listen}"))?;
    println!("admin on {}", admin.local_addr()?);
    println!("listening on {}", listener.local_addr()?);
    peercache_server::run(
        listener,
        Some(admin),
        config,
        Some(handle),
        shutdown_signal(),
    )
    .await?;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down");
}
