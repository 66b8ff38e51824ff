//! `peercache-host` command line.
//!
//! Started by a browser (its first argument is the caller's `chrome-extension://…/`
//! origin, or Firefox's manifest path), it speaks native messaging on stdin/stdout.
//! Otherwise: `serve`, `fetch`, `install`, `uninstall`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use peercache_core::units::parse_size;
use peercache_host::fetch::{PeerPolicy, Source};
use peercache_host::install::{self, Browser, Scope};
use peercache_host::node::{self, NodeOptions};

/// peercache native host: gateway, cache and peer server beside the browser.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a headless peer that serves its cache to others.
    Serve {
        /// The coordination server, e.g. https://198.51.100.2
        #[arg(long, env = "PEERCACHE_SERVER")]
        server: Option<String>,
        /// The UDP address the peer endpoint (QUIC) listens on [default: 0.0.0.0:0].
        /// Nothing needs opening: peers behind routers are reached by hole punching
        /// or the site's relay.
        #[arg(long, env = "PEERCACHE_LISTEN")]
        listen: Option<SocketAddr>,
        /// Cache directory.
        #[arg(long, env = "PEERCACHE_CACHE_DIR")]
        cache: Option<PathBuf>,
        /// State directory: the peer key [default: ~/.local/state/peercache].
        #[arg(long, env = "PEERCACHE_STATE_DIR")]
        state: Option<PathBuf>,
        /// Operator-only `/metrics` listener [default: 127.0.0.1:0].
        #[arg(long, env = "PEERCACHE_METRICS_LISTEN")]
        metrics_listen: Option<SocketAddr>,
        /// Upload slots (workload limit) [default: 8].
        #[arg(long, env = "PEERCACHE_MAX_UPLOADS")]
        max_uploads: Option<u32>,
        /// Upload cap, e.g. `10MiB` (per second).
        #[arg(long, env = "PEERCACHE_UPLOAD_LIMIT")]
        upload_limit: Option<String>,
        /// Cache size limit, e.g. `2GiB`.
        #[arg(long, env = "PEERCACHE_CACHE_MAX")]
        cache_max: Option<String>,
        /// How to choose among referred peers.
        #[arg(long, env = "PEERCACHE_POLICY", value_enum)]
        policy: Option<PeerPolicy>,
        /// Target speed for `first-meeting-target`, e.g. `5MiB` (per second).
        #[arg(long, env = "PEERCACHE_TARGET_SPEED")]
        target_speed: Option<String>,
        /// Requests per second one requester may make [default: 100].
        #[arg(long, env = "PEERCACHE_REQUESTER_RATE")]
        requester_rate: Option<f64>,
        /// How long the server may stay silent before known peers are asked, e.g. `3s`.
        #[arg(long, env = "PEERCACHE_SERVER_TIMEOUT")]
        server_timeout: Option<String>,
        /// TOML config file (keys as the long flags, with `_`); flags override it.
        #[arg(long, env = "PEERCACHE_CONFIG")]
        config: Option<PathBuf>,
        /// Extra trusted root certificate (PEM).
        #[arg(long, env = "PEERCACHE_CA_CERT")]
        ca_cert: Option<PathBuf>,
    },
    /// Download one path through the client protocol.
    Fetch {
        /// The coordination server, e.g. https://198.51.100.2
        #[arg(long, env = "PEERCACHE_SERVER")]
        server: String,
        /// Path on the server, e.g. /static/big.bin
        path: String,
        /// Output file (written atomically).
        #[arg(short, long)]
        output: PathBuf,
        /// Cache directory.
        #[arg(long, env = "PEERCACHE_CACHE_DIR")]
        cache: Option<PathBuf>,
        /// State directory: the peer key [default: ~/.local/state/peercache].
        #[arg(long, env = "PEERCACHE_STATE_DIR")]
        state: Option<PathBuf>,
        /// Extra trusted root certificate (PEM).
        #[arg(long, env = "PEERCACHE_CA_CERT")]
        ca_cert: Option<PathBuf>,
        /// Longest total wait while the server defers this download (the object
        /// is on its way to another client), e.g. `20s` [default: 60s]; then the
        /// bytes come from the server.
        #[arg(long, env = "PEERCACHE_MAX_DEFERRAL")]
        max_deferral: Option<String>,
        /// Print why the download went as it did: the server's decision and its
        /// figures, every candidate with its measured round trip, throughput and
        /// load, the order chosen and why, and which source sent which bytes.
        #[arg(long)]
        explain: bool,
    },
    /// Register this binary as the native-messaging host of a browser.
    Install {
        /// Browser to register with.
        #[arg(long, value_enum)]
        browser: Browser,
        /// A custom Chrome/Chromium profile directory.
        #[arg(long, conflicts_with = "system")]
        user_data_dir: Option<PathBuf>,
        /// Register system-wide (needs root).
        #[arg(long)]
        system: bool,
        /// Extension id to allow (defaults to peercache's own ids).
        #[arg(long)]
        extension_id: Option<String>,
    },
    /// Remove the registration.
    Uninstall {
        /// Browser to unregister from.
        #[arg(long, value_enum)]
        browser: Browser,
        /// A custom Chrome/Chromium profile directory.
        #[arg(long, conflicts_with = "system")]
        user_data_dir: Option<PathBuf>,
        /// Remove the system-wide registration.
        #[arg(long)]
        system: bool,
    },
}

/// `serve`'s TOML config file; every key optional, flags win.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ServeConfig {
    server: Option<String>,
    listen: Option<SocketAddr>,
    cache: Option<PathBuf>,
    state: Option<PathBuf>,
    metrics_listen: Option<SocketAddr>,
    max_uploads: Option<u32>,
    upload_limit: Option<String>,
    cache_max: Option<String>,
    policy: Option<PeerPolicy>,
    target_speed: Option<String>,
    requester_rate: Option<f64>,
    server_timeout: Option<String>,
    ca_cert: Option<PathBuf>,
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,tower_http=warn".into());
    // stdout is the native-messaging channel: logs go to stderr or a file, never stdout.
    if let Some(path) = std::env::var_os("PEERCACHE_LOG")
        && let Ok(file) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
    {
        tracing_subscriber::fmt()
            .with_writer(std::sync::Mutex::new(file))
            .with_ansi(false)
            .with_env_filter(filter)
            .init();
        return;
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .init();
}

fn scope(user_data_dir: Option<PathBuf>, system: bool) -> Scope {
    match (user_data_dir, system) {
        (Some(d), _) => Scope::UserDataDir(d),
        (None, true) => Scope::System,
        (None, false) => Scope::User,
    }
}

fn install_metrics() -> anyhow::Result<metrics_exporter_prometheus::PrometheusHandle> {
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .context("installing the metrics recorder")?;
    for name in [
        "peercache_uploads_total",
        "peercache_bytes_uploaded_total",
        "peercache_uploads_refused_total",
        "peercache_partial_uploads_total",
        "peercache_bytes_uploaded_partial_total",
        "peercache_bytes_from_peers_total",
        "peercache_bytes_from_server_total",
        "peercache_bytes_from_cache_total",
        "peercache_verification_failures_total",
    ] {
        metrics::counter!(name).increment(0);
    }
    Ok(handle)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_logging();
    peercache_host::node::raise_fd_limit();
    let argv: Vec<String> = std::env::args().collect();
    if let Some(first) = argv.get(1)
        && (first.starts_with("chrome-extension://") || first.ends_with(".json"))
    {
        return native_mode(first).await;
    }
    let args = Args::parse();
    match args.command {
        Command::Serve {
            server,
            listen,
            cache,
            state,
            metrics_listen,
            max_uploads,
            upload_limit,
            cache_max,
            policy,
            target_speed,
            requester_rate,
            server_timeout,
            config,
            ca_cert,
        } => {
            let file: ServeConfig = match &config {
                Some(path) => {
                    let text = std::fs::read_to_string(path)
                        .with_context(|| format!("reading config {}", path.display()))?;
                    toml::from_str(&text)
                        .with_context(|| format!("parsing config {}", path.display()))?
                }
                None => ServeConfig::default(),
            };
            let Some(server) = server.or(file.server) else {
                bail!("--server URL is required (the coordination server to serve for)");
            };
            let mut options = NodeOptions::new(
                cache.or(file.cache).unwrap_or_else(node::default_cache_dir),
                state
                    .or(file.state)
                    .unwrap_or_else(peercache_host::identity::default_state_dir),
            );
            options.metrics_listen = Some(
                metrics_listen
                    .or(file.metrics_listen)
                    .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0))),
            );
            options.peer_listen = Some(
                listen
                    .or(file.listen)
                    .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0))),
            );
            options.max_uploads = max_uploads.or(file.max_uploads).unwrap_or(8);
            if let Some(s) = upload_limit.or(file.upload_limit) {
                options.upload_limit = parse_size(&s)?;
            }
            if let Some(s) = cache_max.or(file.cache_max) {
                options.cache_max = parse_size(&s)?;
            }
            options.policy = policy.or(file.policy).unwrap_or_default();
            if let Some(s) = target_speed.or(file.target_speed) {
                options.target_speed = Some(parse_size(&s)?);
            }
            options.ca_cert = ca_cert.or(file.ca_cert);
            options.requester_rate = requester_rate.or(file.requester_rate);
            if let Some(s) = server_timeout.or(file.server_timeout) {
                options.server_timeout = Some(peercache_core::units::parse_duration(&s)?);
            }
            options.metrics = Some(install_metrics()?);
            let node = node::start(options).await?;
            let server = server.trim_end_matches('/').to_string();
            let parts = node.fetcher.parts();
            // Only what was fetched from this server (see `Knowledge::fetched_from`).
            let held = parts.knowledge.fetched_from(&server, &parts.cache.list()?);
            // A server whose look-up table is down for a moment answers 503: try
            // again with backoff (about 30 s in all) before giving up.
            let mut wait = Duration::from_millis(250);
            let accepted = loop {
                match parts.link.announce_all(&server, &held).await {
                    Ok(accepted) => break accepted,
                    Err(e) if e.is_transient() && wait <= Duration::from_secs(16) => {
                        tracing::warn!(error = %e, retry_in = ?wait, "registering failed; trying again");
                        tokio::time::sleep(wait).await;
                        wait *= 2;
                    }
                    Err(e) => {
                        return Err(e).with_context(|| format!("registering with {server}"));
                    }
                }
            };
            if let Some(port) = node.peer_port {
                println!("peer endpoint on udp port {port}");
            }
            if let Some(addr) = node.metrics_addr {
                println!("metrics on {addr}");
            }
            println!("peer id {}", parts.link.peer_id());
            println!("announced {accepted} of {} cached objects", held.len());
            tokio::signal::ctrl_c().await.ok();
            Ok(())
        }
        Command::Fetch {
            server,
            path,
            output,
            cache,
            state,
            ca_cert,
            max_deferral,
            explain,
        } => {
            if !path.starts_with('/') {
                bail!("PATH must start with '/': {path:?}");
            }
            let mut options = NodeOptions::new(
                cache.unwrap_or_else(node::default_cache_dir),
                state.unwrap_or_else(peercache_host::identity::default_state_dir),
            );
            options.ca_cert = ca_cert;
            if let Some(s) = max_deferral {
                options.max_deferral = Some(peercache_core::units::parse_duration(&s)?);
            }
            let node = node::start(options).await?;
            let url = format!("{}{path}", server.trim_end_matches('/'));
            let fetched = download_to_file(&node.fetcher, &url, &output).await;
            // Let peers see the connection end cleanly.
            node.fetcher.parts().dialer.endpoint().close().await;
            if explain {
                let story = node
                    .fetcher
                    .parts()
                    .recent
                    .explanations()
                    .into_iter()
                    .next()
                    .unwrap_or_default();
                eprint!("{}", story.render());
            }
            let (bytes, source) = fetched.with_context(|| format!("fetching {url}"))?;
            let from = match source {
                Source::Server => "the server".to_string(),
                Source::Cache => "the local cache".to_string(),
                Source::Peer(id) => format!("peer {id}"),
            };
            eprintln!(
                "fetched {bytes} bytes from {from} into {}",
                output.display()
            );
            Ok(())
        }
        Command::Install {
            browser,
            user_data_dir,
            system,
            extension_id,
        } => {
            let exe = std::env::current_exe().context("locating this binary")?;
            let path = install::install(
                browser,
                &scope(user_data_dir, system),
                &exe,
                extension_id.as_deref(),
            )?;
            println!(
                "registered {} for {browser:?} in {}",
                install::HOST_NAME,
                path.display()
            );
            Ok(())
        }
        Command::Uninstall {
            browser,
            user_data_dir,
            system,
        } => {
            match install::uninstall(browser, &scope(user_data_dir, system))? {
                Some(path) => println!("removed {}", path.display()),
                None => println!("nothing was registered"),
            }
            Ok(())
        }
    }
}

/// Streams a download into `output` through a temp file beside it: the output
/// appears only complete and verified (never partial).
async fn download_to_file(
    fetcher: &Arc<peercache_host::fetch::Fetcher>,
    url: &str,
    output: &std::path::Path,
) -> anyhow::Result<(u64, Source)> {
    use tokio::io::AsyncWriteExt;
    let mut dl = fetcher.open(url).await?;
    let name = output
        .file_name()
        .map_or_else(|| "out".into(), |n| n.to_string_lossy().into_owned());
    let tmp = output.with_file_name(format!(".{name}.partial-{}", std::process::id()));
    let result = async {
        let mut file = tokio::fs::File::create(&tmp)
            .await
            .with_context(|| format!("creating {}", tmp.display()))?;
        let mut total = 0u64;
        while let Some(chunk) = dl.body.recv().await {
            let chunk = chunk?;
            file.write_all(&chunk).await?;
            total += chunk.len() as u64;
        }
        let source = dl.finish().await?;
        file.sync_all().await?;
        drop(file);
        tokio::fs::rename(&tmp, output)
            .await
            .with_context(|| format!("writing {}", output.display()))?;
        Ok::<_, anyhow::Error>((total, source))
    }
    .await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(&tmp).await;
    }
    result
}

async fn native_mode(caller: &str) -> anyhow::Result<()> {
    let mut options = NodeOptions::new(
        node::default_cache_dir(),
        peercache_host::identity::default_state_dir(),
    );
    options.gateway = true;
    let metrics =
        std::env::var("PEERCACHE_METRICS_LISTEN").unwrap_or_else(|_| "127.0.0.1:0".into());
    options.metrics_listen = Some(
        metrics
            .parse()
            .with_context(|| format!("PEERCACHE_METRICS_LISTEN={metrics}"))?,
    );
    let listen = std::env::var("PEERCACHE_PEER_LISTEN").unwrap_or_else(|_| "0.0.0.0:0".into());
    options.peer_listen = Some(
        listen
            .parse()
            .with_context(|| format!("PEERCACHE_PEER_LISTEN={listen}"))?,
    );
    options.ca_cert = std::env::var_os("PEERCACHE_CA_CERT").map(PathBuf::from);
    options.metrics = Some(install_metrics()?);
    if caller.starts_with("chrome-extension://") {
        options.extension_origins = vec![caller.trim_end_matches('/').to_string()];
    }
    let node = Arc::new(node::start(options).await?);
    peercache_host::native::run_session(node, std::io::stdin(), std::io::stdout()).await;
    Ok(())
}
