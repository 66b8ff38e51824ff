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
        server: String,
        /// The UDP address the peer endpoint (QUIC) listens on [default: 0.0.0.0:0].
        /// Nothing needs opening: peers behind routers are reached by hole punching
        /// or the site's relay.
        #[arg(long, env = "PEERCACHE_LISTEN")]
        listen: Option<SocketAddr>,
        /// Cache directory.
        #[arg(long, env = "PEERCACHE_CACHE_DIR")]
        cache: Option<PathBuf>,
        /// Data directory: the peer key and pinned server keys [default: the OS's
        /// data directory, e.g. ~/.local/share/peercache].
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
        /// TOML config file (keys as the long flags, with `_`, except `server`);
        /// flags override it.
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
        /// Data directory: the peer key and pinned server keys [default: the OS's
        /// data directory, e.g. ~/.local/share/peercache].
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
        /// Write the body as the site sent it: without this, a body with
        /// `Content-Encoding: gzip` or `deflate` is written decoded.
        #[arg(long)]
        raw: bool,
    },
    /// Register this binary as the native-messaging host of the browsers:
    /// without --browser, of every supported browser found on this machine
    /// (Chrome, Chromium, Edge, Brave, Vivaldi, Firefox, LibreWolf).
    Install {
        /// Browser to register with (repeatable) [default: every one installed].
        #[arg(long, value_enum)]
        browser: Vec<Browser>,
        /// A custom Chromium-family profile directory.
        #[arg(long, conflicts_with = "system")]
        user_data_dir: Option<PathBuf>,
        /// Register system-wide (needs root or an administrator); without
        /// --browser, for every browser that has a system-wide location.
        #[arg(long)]
        system: bool,
        /// Another extension id to allow (repeatable; Firefox: replaces peercache's).
        #[arg(long)]
        extension_id: Vec<String>,
        /// For packagers: write the system-wide manifests under this root
        /// instead of `/` (implies --system).
        #[arg(long, hide = true)]
        stage_root: Option<PathBuf>,
        /// For packagers: the program path the manifests name [default: this binary].
        #[arg(long, hide = true)]
        host_path: Option<PathBuf>,
    },
    /// Check this machine: the host registered for each installed browser, the
    /// extension connected, other peers able to reach this one (as each server
    /// sees it); says what to do about each failure. Exits 1 if one failed.
    Doctor {
        /// A coordination server to check reachability with (repeatable)
        /// [default: every server this host has talked to].
        #[arg(long, env = "PEERCACHE_SERVER")]
        server: Vec<String>,
        /// Cache directory.
        #[arg(long, env = "PEERCACHE_CACHE_DIR")]
        cache: Option<PathBuf>,
        /// Data directory: the peer key and pinned server keys [default: the
        /// OS's data directory].
        #[arg(long, env = "PEERCACHE_STATE_DIR")]
        state: Option<PathBuf>,
        /// Extra trusted root certificate (PEM).
        #[arg(long, env = "PEERCACHE_CA_CERT")]
        ca_cert: Option<PathBuf>,
    },
    /// Remove the registration.
    Uninstall {
        /// Browser to unregister from (repeatable) [default: every supported one].
        #[arg(long, value_enum)]
        browser: Vec<Browser>,
        /// A custom Chromium-family profile directory.
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
            let cache = cache.or(file.cache).unwrap_or_else(node::default_cache_dir);
            let (data, legacy) =
                peercache_host::identity::resolve_data_dir(state.or(file.state), &cache);
            let mut options = NodeOptions::new(cache, data);
            options.legacy_state_dirs = legacy;
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
            raw,
        } => {
            if !path.starts_with('/') {
                bail!("PATH must start with '/': {path:?}");
            }
            let cache = cache.unwrap_or_else(node::default_cache_dir);
            let (data, legacy) = peercache_host::identity::resolve_data_dir(state, &cache);
            let mut options = NodeOptions::new(cache, data);
            options.legacy_state_dirs = legacy;
            options.ca_cert = ca_cert;
            if let Some(s) = max_deferral {
                options.max_deferral = Some(peercache_core::units::parse_duration(&s)?);
            }
            let node = node::start(options).await?;
            let url = format!("{}{path}", server.trim_end_matches('/'));
            let fetched = download_to_file(&node.fetcher, &url, &output, raw).await;
            // Let peers see the connections end cleanly, but the file is
            // there: not for long.
            let closing = std::time::Instant::now();
            let closed =
                tokio::time::timeout(CLOSE_GRACE, node.fetcher.parts().dialer.endpoint().close())
                    .await;
            tracing::debug!(
                ms = closing.elapsed().as_millis(),
                in_time = closed.is_ok(),
                "peer endpoint closed"
            );
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
            let size = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
                format!("{}", indicatif::HumanBytes(bytes))
            } else {
                format!("{bytes} bytes")
            };
            eprintln!("fetched {size} from {from} into {}", output.display());
            Ok(())
        }
        Command::Install {
            browser,
            user_data_dir,
            system,
            extension_id,
            stage_root,
            host_path,
        } => {
            let exe = match host_path {
                Some(p) => p,
                None => std::env::current_exe().context("locating this binary")?,
            };
            if let Some(root) = stage_root {
                for path in install::stage_system(&root, &exe)? {
                    println!("{}", path.display());
                }
                return Ok(());
            }
            let scope = scope(user_data_dir, system);
            let found = install::detect();
            let browsers: Vec<Browser> = if !browser.is_empty() {
                browser
            } else if matches!(scope, Scope::User) {
                found.iter().map(|f| f.browser).collect()
            } else {
                Browser::ALL
                    .into_iter()
                    .filter(|b| install::manifest_paths(*b, &scope).is_ok())
                    .collect()
            };
            if browsers.is_empty() {
                bail!(
                    "found none of the supported browsers (Chrome, Chromium, Edge, Brave, Vivaldi, \
                     Firefox, LibreWolf); name one with --browser"
                );
            }
            let mut failed = 0;
            for b in browsers {
                match install::install(b, &scope, &exe, &extension_id) {
                    Ok(path) => println!("registered for {}: {}", b.label(), path.display()),
                    Err(e) => {
                        failed += 1;
                        eprintln!("not registered for {}: {e}", b.label());
                    }
                }
                if let Some(advice) = found
                    .iter()
                    .find(|f| f.browser == b)
                    .and_then(install::sandbox_advice)
                {
                    eprintln!("  note: {advice}");
                }
            }
            if failed > 0 {
                bail!("{failed} registration(s) failed");
            }
            println!(
                "next: add the peercache extension to the browser, then run `peercache-host doctor`"
            );
            Ok(())
        }
        Command::Doctor {
            server,
            cache,
            state,
            ca_cert,
        } => doctor(server, cache, state, ca_cert).await,
        Command::Uninstall {
            browser,
            user_data_dir,
            system,
        } => {
            let scope = scope(user_data_dir, system);
            let every = browser.is_empty();
            let browsers = if every {
                Browser::ALL.to_vec()
            } else {
                browser
            };
            let mut any = false;
            for b in browsers {
                // Of every browser, one with no location of this scope here has nothing to remove.
                if every && install::manifest_paths(b, &scope).is_err() {
                    continue;
                }
                if let Some(path) = install::uninstall(b, &scope)? {
                    any = true;
                    println!("removed {}", path.display());
                }
            }
            if !any {
                println!("nothing was registered");
            }
            Ok(())
        }
    }
}

/// A progress bar on stderr with human sizes, rate and time left; hidden when
/// stderr is not a terminal (a log or a pipe gets the plain summary only).
fn progress_bar(size: Option<u64>) -> indicatif::ProgressBar {
    let target = indicatif::ProgressDrawTarget::stderr();
    let bar = match size {
        Some(n) => indicatif::ProgressBar::with_draw_target(Some(n), target).with_style(
            indicatif::ProgressStyle::with_template(
                "{bar:30} {bytes}/{total_bytes} {binary_bytes_per_sec}, {eta} left",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        ),
        None => indicatif::ProgressBar::with_draw_target(None, target).with_style(
            indicatif::ProgressStyle::with_template("{spinner} {bytes} {binary_bytes_per_sec}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        ),
    };
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar
}

/// Longest `fetch` waits, once its file is written, for its peer connections
/// to close cleanly (peers see the rest as an idle connection).
const CLOSE_GRACE: std::time::Duration = std::time::Duration::from_millis(500);

/// Downloads `url` into `output` through a temp file beside it: the output
/// appears only complete and verified (never partial). A shareable download
/// is written once, into the cache, and `output` becomes a second name of
/// that copy (`peercache_host::export`); should the copy leave the cache
/// before it is linked, the object is fetched again and written as it streams.
async fn download_to_file(
    fetcher: &Arc<peercache_host::fetch::Fetcher>,
    url: &str,
    output: &std::path::Path,
    raw: bool,
) -> anyhow::Result<(u64, Source)> {
    if let Some(done) = download_once(fetcher, url, output, raw, true).await? {
        return Ok(done);
    }
    eprintln!(
        "note: the verified copy left the cache before it could be linked to {}: fetching it again",
        output.display()
    );
    download_once(fetcher, url, output, raw, false)
        .await?
        .context("the download was not written")
}

/// One download into `output`; `None` when it was to be linked from the
/// cache (`may_link`) but the cache no longer held it.
async fn download_once(
    fetcher: &Arc<peercache_host::fetch::Fetcher>,
    url: &str,
    output: &std::path::Path,
    raw: bool,
    may_link: bool,
) -> anyhow::Result<Option<(u64, Source)>> {
    use peercache_core::coding::{Coding, content_coding};
    use tokio::io::AsyncWriteExt;
    let mut dl = fetcher.open(url).await?;
    let coding = if raw {
        Coding::Identity
    } else {
        content_coding(
            dl.site_headers
                .get(reqwest::header::CONTENT_ENCODING)
                .and_then(|v| v.to_str().ok()),
        )
    };
    let cache = fetcher.parts().cache.clone();
    // Kept in the cache (shareable, named by its hash, within the cache's
    // limit) and written as sent: linked from there, not written twice.
    let link_from = dl.hash.filter(|_| {
        may_link
            && !matches!(coding, Coding::Gzip | Coding::Deflate)
            && dl.not_shareable.is_none()
            && dl
                .size
                .is_some_and(|s| cache.max_bytes() == 0 || s <= cache.max_bytes())
    });
    let name = output
        .file_name()
        .map_or_else(|| "out".into(), |n| n.to_string_lossy().into_owned());
    let tmp = output.with_file_name(format!(".{name}.partial-{}", std::process::id()));
    let decoded = output.with_file_name(format!(".{name}.decoded-{}", std::process::id()));
    let result = async {
        // Where the bytes go: a file, or nowhere (the cache has them). The
        // file is made either way, so a path that cannot be written fails
        // before the download, not after it.
        let created = tokio::fs::File::create(&tmp)
            .await
            .with_context(|| format!("creating {}", tmp.display()))?;
        let mut file = match link_from {
            Some(hash) => Err(hash),
            None => Ok(created),
        };
        let bar = progress_bar(dl.size);
        let mut total = 0u64;
        while let Some(chunk) = dl.body.recv().await {
            let chunk = chunk?;
            if let Ok(file) = &mut file {
                file.write_all(&chunk).await?;
            }
            total += chunk.len() as u64;
            bar.set_position(total);
        }
        bar.finish_and_clear();
        let source = dl.finish().await?;
        match file {
            Ok(file) => file.sync_all().await?,
            Err(hash) => {
                let to = tmp.clone();
                let linked = tokio::task::spawn_blocking(move || {
                    peercache_host::export::from_cache(&cache, &hash, &to)
                })
                .await?;
                match linked {
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                    Err(e) => {
                        return Err(e).with_context(|| format!("writing {}", tmp.display()));
                    }
                }
            }
        }
        let written = match &coding {
            Coding::Identity => &tmp,
            Coding::Other(name) => {
                eprintln!(
                    "note: the site sent the body encoded as {name:?} (Content-Encoding), \
                     which fetch does not decode: written as sent"
                );
                &tmp
            }
            Coding::Gzip | Coding::Deflate => {
                let (c, from, to) = (coding.clone(), tmp.clone(), decoded.clone());
                tokio::task::spawn_blocking(move || {
                    peercache_host::decode::decode_file(&c, &from, &to)
                })
                .await??;
                &decoded
            }
        };
        tokio::fs::rename(written, output)
            .await
            .with_context(|| format!("writing {}", output.display()))?;
        Ok::<_, anyhow::Error>(Some((total, source)))
    }
    .await;
    let _ = tokio::fs::remove_file(&tmp).await;
    let _ = tokio::fs::remove_file(&decoded).await;
    result
}

/// `peercache-host doctor`: see the command's help.
async fn doctor(
    servers: Vec<String>,
    cache: Option<PathBuf>,
    state: Option<PathBuf>,
    ca_cert: Option<PathBuf>,
) -> anyhow::Result<()> {
    use peercache_core::doctor::{self, Level};
    use peercache_host::doctor as facts;
    let cache = cache.unwrap_or_else(node::default_cache_dir);
    let (data, legacy) = peercache_host::identity::resolve_data_dir(state, &cache);
    let mut verdicts = facts::browser_verdicts();
    let session = facts::last_session(&data);
    let running = match &session {
        Some(s) => facts::gateway_answers(s.gateway_port).await,
        None => false,
    };
    let now = facts::now_secs();
    verdicts.push(doctor::extension(
        session.as_ref().map(|s| now.saturating_sub(s.started)),
        running,
    ));
    let knowledge = peercache_host::knowledge::Knowledge::open(&cache, &data);
    let servers: Vec<String> = if servers.is_empty() {
        knowledge.pinned_servers()
    } else {
        servers
            .iter()
            .map(|s| s.trim_end_matches('/').to_string())
            .collect()
    };
    if servers.is_empty() {
        verdicts.push(peercache_core::doctor::Verdict {
            topic: "reachable by peers".into(),
            level: Level::Warn,
            finding: "this host has not talked to any site's server yet".into(),
            fix: "visit a site that uses peercache with the extension on, or name its server \
                  with --server URL"
                .into(),
        });
    } else if running {
        // The browser's host checks for itself (one identity, one endpoint).
        let notes = knowledge.reach_notes();
        for s in &servers {
            match notes.get(s) {
                Some(n) if now.saturating_sub(n.at) <= 3 * facts::REACH_MAX_AGE.as_secs() => {
                    verdicts.push(doctor::reach(s, &n.answer));
                }
                _ => verdicts.push(peercache_core::doctor::Verdict {
                    topic: format!("reachable by peers of {s}"),
                    level: Level::Warn,
                    finding: "the running host has not checked this server lately".into(),
                    fix: "open a page of the site in the browser, wait a few seconds, and run \
                          doctor again"
                        .into(),
                }),
            }
        }
    } else {
        // No host running: start one with this identity, serving, and ask.
        let mut options = NodeOptions::new(cache, data);
        options.legacy_state_dirs = legacy;
        options.ca_cert = ca_cert;
        options.peer_listen = Some(SocketAddr::from(([0, 0, 0, 0], 0)));
        let node = node::start(options).await?;
        let link = node.fetcher.parts().link.clone();
        for s in &servers {
            let answer = match link.register(s).await {
                Ok(()) => link.reach(s).await.map_err(|e| e.cause()),
                Err(e) => Err(e.cause()),
            };
            verdicts.push(doctor::reach(s, &answer));
        }
        node.fetcher.parts().dialer.endpoint().close().await;
    }
    for v in &verdicts {
        print!("{}", v.render());
    }
    let failed = verdicts.iter().filter(|v| v.level == Level::Fail).count();
    if failed > 0 {
        bail!("{failed} check(s) failed; see the fixes above");
    }
    Ok(())
}

async fn native_mode(caller: &str) -> anyhow::Result<()> {
    peercache_host::native::note_caller(caller);
    let cache = node::default_cache_dir();
    let (data, legacy) = peercache_host::identity::resolve_data_dir(
        std::env::var_os("PEERCACHE_STATE_DIR").map(PathBuf::from),
        &cache,
    );
    let mut options = NodeOptions::new(cache, data);
    options.legacy_state_dirs = legacy;
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
    let data = options.state_dir.clone();
    let node = Arc::new(node::start(options).await?);
    if let Some((port, _)) = &node.gateway
        && let Err(e) = peercache_host::doctor::note_session(&data, *port)
    {
        tracing::warn!(error = %e, "could not note the session for `doctor`");
    }
    peercache_host::native::spawn_reach_checks(&node);
    peercache_host::native::run_session(node, std::io::stdin(), std::io::stdout()).await;
    Ok(())
}
