//! One running peer: identity, cache, the peer endpoint (iroh; it always dials,
//! and accepts when the host serves), the client, the operator-only `/metrics`
//! listener, and (in native-messaging mode) the gateway, plus the heartbeat that
//! keeps its listings alive.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rand::RngCore;
use tokio::sync::RwLock;

use crate::cache::Cache;
use crate::counters::HostCounters;
use crate::fetch::{FetchOptions, Fetcher, Parts, PeerPolicy};
use crate::gateway::{Enrolment, GatewayState};
use crate::peer_server::{PeerService, PeerState};
use crate::workload::Workload;
use peercache_core::protocol::FromHost;
use peercache_net::{EndpointOptions, PeerDialer};

/// How to start a node.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// Cache directory.
    pub cache_dir: PathBuf,
    /// Data directory: the peer key and the pinned server keys.
    pub state_dir: PathBuf,
    /// Where earlier versions kept the peer key; a key found there is moved
    /// into `state_dir` (set only when `state_dir` is the default one).
    pub legacy_state_dirs: Vec<PathBuf>,
    /// The UDP address the peer endpoint accepts peers on; `None` = do not
    /// serve (the endpoint still dials, from an ephemeral port).
    pub peer_listen: Option<SocketAddr>,
    /// Where the operator-only `/metrics` listener binds; `None` = none.
    pub metrics_listen: Option<SocketAddr>,
    /// Start the local gateway on 127.0.0.1.
    pub gateway: bool,
    /// Extra trusted root.
    pub ca_cert: Option<PathBuf>,
    /// Upload slots.
    pub max_uploads: u32,
    /// Upload cap, bytes per second (0 = none).
    pub upload_limit: u64,
    /// Cache size limit in bytes (0 = none).
    pub cache_max: u64,
    /// Peer choice policy.
    pub policy: PeerPolicy,
    /// Target speed for the first-meeting-target policy (bytes/s).
    pub target_speed: Option<u64>,
    /// How long the server may stay silent before peers are asked.
    pub server_timeout: Option<Duration>,
    /// Longest total wait while the server defers this client.
    pub max_deferral: Option<Duration>,
    /// Requests per second one requester may make to the peer server.
    pub requester_rate: Option<f64>,
    /// Heartbeat interval.
    pub heartbeat: Duration,
    /// Prometheus handle for `/metrics`.
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// Origins of the extension, for the gateway's CORS.
    pub extension_origins: Vec<String>,
}

impl NodeOptions {
    /// Defaults for a cache and a state directory.
    pub fn new(cache_dir: PathBuf, state_dir: PathBuf) -> Self {
        Self {
            cache_dir,
            state_dir,
            legacy_state_dirs: Vec::new(),
            peer_listen: None,
            metrics_listen: None,
            gateway: false,
            ca_cert: None,
            max_uploads: 8,
            upload_limit: 0,
            cache_max: 0,
            policy: PeerPolicy::Fastest,
            target_speed: None,
            server_timeout: None,
            max_deferral: None,
            requester_rate: None,
            heartbeat: Duration::from_secs(20),
            metrics: None,
            extension_origins: Vec::new(),
        }
    }
}

/// A running node.
#[derive(Debug)]
pub struct Node {
    /// The download pipeline (and, through its parts, the server link, the
    /// cache, the knowledge and the recent downloads).
    pub fetcher: Arc<Fetcher>,
    /// The UDP port the peer endpoint accepts peers on, if it serves.
    pub peer_port: Option<u16>,
    /// The operator-only `/metrics` listener's address.
    pub metrics_addr: Option<SocketAddr>,
    /// The accepting side of the peer endpoint (dropping it stops serving).
    pub router: Option<iroh::protocol::Router>,
    /// The gateway's port and token.
    pub gateway: Option<(u16, String)>,
    /// What the gateway may fetch for.
    pub enrolment: Arc<RwLock<Enrolment>>,
    /// Counters.
    pub counters: Arc<HostCounters>,
    /// Workload limits (adjustable).
    pub workload: Arc<Workload>,
    /// Messages the gateway has for the extension; the native session takes the
    /// receiver.
    pub notices: std::sync::Mutex<Option<tokio::sync::mpsc::Receiver<FromHost>>>,
    /// Gateway requests waiting for the extension's `direct_ready`.
    pub acks: Arc<crate::gateway::DirectAcks>,
}

/// Windows has no soft limit on open handles to raise: nothing to do.
#[cfg(not(unix))]
pub fn raise_fd_limit() -> u64 {
    u64::MAX
}

/// Raises this process's soft limit on open files to the hard limit, so a
/// flood of peers cannot leave the gateway without descriptors (peer
/// connections share one UDP socket; the peer server opens a cache file only
/// while an upload holds a slot). Returns the soft limit now in force.
#[cfg(unix)]
pub fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed in.
    let got = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0;
    if !got {
        return 0;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        }
    }
    tracing::debug!(soft = lim.rlim_cur, "open-file limit");
    lim.rlim_cur
}

/// Most messages waiting for the extension before new ones are dropped.
pub const NOTICE_QUEUE: usize = 64;

/// The default cache directory: `$PEERCACHE_CACHE_DIR`, else the OS's cache
/// directory for peercache (`$XDG_CACHE_HOME/peercache` or `~/.cache/peercache`
/// on Linux, `~/Library/Caches/org.peercache.peercache` on macOS,
/// `%LOCALAPPDATA%\peercache\peercache\cache` on Windows).
pub fn default_cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("PEERCACHE_CACHE_DIR") {
        return PathBuf::from(d);
    }
    directories::ProjectDirs::from("org", "peercache", "peercache").map_or_else(
        || PathBuf::from("peercache-cache"),
        |dirs| dirs.cache_dir().to_path_buf(),
    )
}

fn random_token() -> String {
    let mut bytes = [0u8; 24];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Serves `/metrics` (Prometheus text) on `addr`, for operators only: never on
/// the peer endpoint. Returns the bound address.
async fn spawn_metrics(
    addr: SocketAddr,
    handle: metrics_exporter_prometheus::PrometheusHandle,
) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics listener on {addr}"))?;
    let bound = listener.local_addr()?;
    let router = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let handle = handle.clone();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4",
                    )],
                    handle.render(),
                )
            }
        }),
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!(error = %e, "metrics listener stopped");
        }
    });
    Ok(bound)
}

/// Starts the parts `options` ask for.
pub async fn start(options: NodeOptions) -> anyhow::Result<Node> {
    let cache = Cache::open(&options.cache_dir)
        .with_context(|| format!("opening cache {}", options.cache_dir.display()))?;
    // Evictions at start-up need no announce: the start-up announce lists what is left.
    let _ = cache.set_max_bytes(options.cache_max);
    let identity =
        crate::identity::load_or_create_migrating(&options.state_dir, &options.legacy_state_dirs)
            .with_context(|| format!("loading the peer key from {}", options.state_dir.display()))?;
    let counters = Arc::new(HostCounters::default());
    let mut workload = Workload::new(options.max_uploads, options.upload_limit);
    if let Some(rate) = options.requester_rate {
        workload = workload.with_requester_rate(rate);
    }
    let slots = Arc::new(workload);

    let serving = options.peer_listen.is_some();
    let endpoint = peercache_net::endpoint::bind(&EndpointOptions {
        secret: *identity.secret(),
        bind: options
            .peer_listen
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0))),
        ca_cert: options.ca_cert.clone(),
        accept: serving,
    })
    .await?;
    let peer_port = if serving {
        peercache_net::endpoint::bound_port(&endpoint)
    } else {
        None
    };
    let dialer = Arc::new(PeerDialer::new(endpoint.clone()));
    let knowledge = Arc::new(crate::knowledge::Knowledge::open(
        cache.dir(),
        &options.state_dir,
    ));
    let link = Arc::new(crate::server_link::ServerLink::new(
        crate::server_link::http_client(options.ca_cert.as_deref())?,
        identity,
        endpoint.clone(),
        serving,
        Some(slots.clone()),
        knowledge.clone(),
        options
            .server_timeout
            .unwrap_or(crate::server_link::DEFAULT_SERVER_TIMEOUT),
    ));
    let parts = Parts {
        link: link.clone(),
        cache: cache.clone(),
        dialer: dialer.clone(),
        knowledge: knowledge.clone(),
        memory: Arc::new(crate::peer_memory::PeerMemory::open(&options.state_dir)),
        counters: counters.clone(),
        recent: Arc::new(crate::fetch::events::RecentDownloads::default()),
    };
    let fetcher = Arc::new(Fetcher::new(
        parts,
        FetchOptions {
            policy: options.policy,
            target_speed: options.target_speed,
            max_deferral: options.max_deferral.unwrap_or(crate::fetch::MAX_DEFERRAL),
        },
    ));
    let router = if serving {
        let service = PeerService(PeerState {
            cache: cache.clone(),
            slots: slots.clone(),
            counters: counters.clone(),
            knowledge: knowledge.clone(),
            dialer: dialer.clone(),
            peer_id: link.peer_id().to_string(),
            seen: Arc::new(crate::knowledge::SeenQueries::default()),
            connections: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            per_remote: Arc::default(),
        });
        Some(
            iroh::protocol::Router::builder(endpoint.clone())
                .incoming_filter(service.incoming_filter())
                .accept(peercache_core::peer::ALPN, service)
                .spawn(),
        )
    } else {
        None
    };

    let metrics_addr = match (options.metrics_listen, options.metrics.clone()) {
        (Some(addr), Some(handle)) => Some(spawn_metrics(addr, handle).await?),
        _ => None,
    };

    if let Some(port) = peer_port
        && crate::lan::enabled()
        && let Err(e) = crate::lan::spawn_responder(
            knowledge.clone(),
            cache.clone(),
            link.peer_id().to_string(),
            port,
        )
    {
        tracing::info!(error = %e, "not answering LAN queries");
    }

    let enrolment = Arc::new(RwLock::new(Enrolment::default()));
    let (notices_tx, notices_rx) = tokio::sync::mpsc::channel(NOTICE_QUEUE);
    let acks = Arc::new(crate::gateway::DirectAcks::default());
    let gateway = if options.gateway {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the gateway on 127.0.0.1")?;
        let port = listener.local_addr()?.port();
        let token = random_token();
        let router = crate::gateway::router(GatewayState {
            fetcher: fetcher.clone(),
            token: token.clone(),
            host: format!("127.0.0.1:{port}"),
            enrolment: enrolment.clone(),
            extension_origins: options.extension_origins.clone(),
            notices: notices_tx,
            acks: acks.clone(),
        });
        tokio::spawn(async move {
            if let Err(e) = crate::gateway::serve(listener, router).await {
                tracing::error!(error = %e, "gateway stopped");
            }
        });
        Some((port, token))
    } else {
        None
    };

    let hb_link = Arc::downgrade(&link);
    let every = options.heartbeat;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(link) = hb_link.upgrade() else {
                break;
            };
            let have = cache.list().unwrap_or_default();
            link.heartbeat(&have).await;
        }
    });

    Ok(Node {
        fetcher,
        peer_port,
        metrics_addr,
        router,
        gateway,
        enrolment,
        counters,
        workload: slots,
        notices: std::sync::Mutex::new(Some(notices_rx)),
        acks,
    })
}
