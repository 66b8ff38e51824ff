//! The client protocol (DESIGN section 2): one download of one URL.
//!
//! 1. `GET url` from the server with `Peercache-Client`.
//! 2. `200`: the bytes, checked against `Peercache-Object`.
//!    `300`: a referral. Each listed peer is tried in order; its bytes are checked
//!    against the referral's hash (which came from the server, never from the peer)
//!    before anything is kept or passed on. A mismatch is reported and the next
//!    source is tried; the last resort is the server itself, asked without
//!    `Peercache-Client` so it must send the bytes.
//! 3. Verified bytes are stored in the cache and announced, and the source that
//!    served them is reported, so this host becomes a holder for the next client.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use metrics::counter;
use peercache_core::hash::ObjectHash;
use peercache_core::headers::{self, ClientHeader, ObjectHeader};
use peercache_core::protocol::Proxy;
use peercache_core::protocol::{
    Announce, AnnounceResponse, Counters, Outcome, Referral, RegisterRequest, RegisterResponse,
    Report, SERVER_PROXY_ID,
};
use peercache_core::select::{Policy, Probed, choose};
use peercache_core::shareable::response_shareable;
use tokio::io::AsyncWriteExt;
use tokio::sync::{Mutex, mpsc, oneshot};

use crate::cache::Cache;
use crate::workload::Workload;

/// Largest object the host buffers for verification (streaming verification of
/// larger objects is a later issue).
pub const MAX_OBJECT_SIZE: u64 = 1 << 30;
/// Largest referral body accepted.
const MAX_REFERRAL_BYTES: u64 = 256 * 1024;

/// Counters of one host, shared with the popup (via `status`) and `/metrics`.
#[derive(Debug, Default)]
pub struct HostCounters {
    /// Verified bytes from peers.
    pub bytes_from_peers: AtomicU64,
    /// Bytes from the server.
    pub bytes_from_server: AtomicU64,
    /// Bytes uploaded to other peers.
    pub bytes_served: AtomicU64,
    /// Peer downloads that failed verification.
    pub verification_failures: AtomicU64,
    /// Bytes answered from the own cache.
    pub bytes_from_cache: AtomicU64,
}

impl HostCounters {
    /// A snapshot for the `status` message.
    pub fn snapshot(&self) -> Counters {
        Counters {
            bytes_from_peers: self.bytes_from_peers.load(Ordering::Relaxed),
            bytes_from_server: self.bytes_from_server.load(Ordering::Relaxed),
            bytes_served: self.bytes_served.load(Ordering::Relaxed),
            verification_failures: self.verification_failures.load(Ordering::Relaxed),
            bytes_from_cache: self.bytes_from_cache.load(Ordering::Relaxed),
        }
    }
}

/// Where the bytes of a download came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The coordination server.
    Server,
    /// This host's own cache (re-verified).
    Cache,
    /// A peer, by id.
    Peer(String),
}

/// A finished, verified download.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The bytes (verified whenever a hash was given).
    pub bytes: Bytes,
    /// Their media type.
    pub content_type: String,
    /// Their hash, if the server named one.
    pub hash: Option<ObjectHash>,
    /// Who sent them.
    pub source: Source,
}

/// Why a download failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The server could not be reached or broke off.
    #[error("server unreachable: {0}")]
    Http(#[from] reqwest::Error),
    /// The server answered with an error status.
    #[error("server answered {0}")]
    Status(u16),
    /// The server's own bytes did not match its hash.
    #[error("the server's bytes do not match its own hash")]
    ServerMismatch,
    /// The referral was malformed.
    #[error("bad referral: {0}")]
    BadReferral(String),
    /// The object is larger than this host buffers.
    #[error("object of {0} bytes is larger than the {MAX_OBJECT_SIZE}-byte limit")]
    TooLarge(u64),
    /// The URL is not http(s).
    #[error("not an http(s) URL: {0}")]
    BadUrl(String),
    /// The receiver went away before the end.
    #[error("cancelled")]
    Cancelled,
    /// The server is silent and peers could not stand in.
    #[error("server unreachable, and {0}")]
    ServerDown(&'static str),
}

impl FetchError {
    /// Worth trying again later: the server is unreachable or answered 5xx/429
    /// (its look-up table may be down for a moment). Bad input is not.
    pub fn is_transient(&self) -> bool {
        match self {
            FetchError::Http(_) | FetchError::ServerDown(_) => true,
            FetchError::Status(s) => *s >= 500 || *s == 429,
            _ => false,
        }
    }
}

/// How the client picks among a referral's peers (M6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PeerPolicy {
    /// The fastest ping first.
    #[default]
    Fastest,
    /// The first (in the server's order) whose known throughput meets the target speed.
    FirstMeetingTarget,
}

/// Settings for a [`Client`].
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    /// Extra trusted root certificate (PEM) for servers with their own CA.
    pub ca_cert: Option<std::path::PathBuf>,
    /// This host serves other peers (its endpoint accepts peer connections), so
    /// registrations carry its dial info.
    pub serving: bool,
    /// Peer choice policy.
    pub policy: PeerPolicy,
    /// Target speed in bytes/s; `None` derives it from the referral.
    pub target_speed: Option<u64>,
    /// How long the server may stay silent before the client turns to peers it
    /// knows (M10); default [`DEFAULT_SERVER_TIMEOUT`].
    pub server_timeout: Option<Duration>,
    /// Longest the client waits in total while the server defers it (503 +
    /// `Retry-After`), before it asks for the bytes themselves; default
    /// [`MAX_DEFERRAL`].
    pub max_deferral: Option<Duration>,
}

/// How long the server may stay silent before the client turns to other peers.
pub const DEFAULT_SERVER_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest a client waits, in total, when the server defers it (503 +
/// `Retry-After`) because the object is on its way to another client.
pub const MAX_DEFERRAL: Duration = Duration::from_secs(60);
/// Hops a cascade query may travel (M11).
pub const LOCATE_TTL: u8 = 3;

/// How long a probe may take before the peer counts as unreachable (a dial
/// through a relay and the hole punch included).
const PROBE_DEADLINE: Duration = Duration::from_millis(2500);
/// How long a probe waits for a relayed connection to find a direct path.
const DIRECT_PATH_WAIT: Duration = Duration::from_millis(600);
/// How long a registration waits for the endpoint to reach the server's relay.
const RELAY_WAIT: Duration = Duration::from_secs(3);

/// What a client tells the server about one source of a referred download.
#[derive(Debug, Clone)]
pub struct SourceReport {
    /// The object.
    pub hash: ObjectHash,
    /// The source's peer id.
    pub source: String,
    /// How it went.
    pub outcome: Outcome,
    /// Verified bytes it sent.
    pub bytes: u64,
    /// Time taken.
    pub took: Duration,
    /// Whether the connection to it went direct, if known.
    pub direct: Option<bool>,
}
/// Half-life of remembered throughput measurements.
const THROUGHPUT_HALF_LIFE: Duration = Duration::from_secs(600);
/// Most peers whose throughput is remembered.
const MAX_REMEMBERED: usize = 10_000;

/// A remembered throughput measurement, decaying towards "unknown".
#[derive(Debug, Clone, Copy)]
struct Measured {
    bytes_per_s: f64,
    at: Instant,
}

impl Measured {
    /// The weight left after `age` (1 fresh, halving every half-life).
    fn weight(&self, now: Instant) -> f64 {
        0.5f64.powf(now.duration_since(self.at).as_secs_f64() / THROUGHPUT_HALF_LIFE.as_secs_f64())
    }
}

/// The client side of a host.
#[derive(Debug)]
pub struct Client {
    http: reqwest::Client,
    cache: Cache,
    identity: crate::identity::Identity,
    dialer: Arc<peercache_net::PeerDialer>,
    serving: bool,
    slots: Option<Arc<Workload>>,
    /// Servers registered with, and the dial info they were given.
    registered: Mutex<HashMap<String, Option<peercache_core::peer::DialInfo>>>,
    throughput: std::sync::Mutex<HashMap<String, Measured>>,
    policy: PeerPolicy,
    target_speed: Option<u64>,
    server_timeout: Duration,
    max_deferral: Duration,
    /// What this host remembers (pinned keys, records, auxiliary peers).
    pub knowledge: Arc<crate::knowledge::Knowledge>,
    /// Counters.
    pub counters: Arc<HostCounters>,
    recent_peers: std::sync::Mutex<Vec<PeerUse>>,
}

/// Most peers remembered for the popup's "current peers" list.
pub const MAX_RECENT_PEERS: usize = 32;

#[derive(Debug)]
struct PeerUse {
    site: String,
    id: String,
    addr: String,
    bytes: u64,
    last: Instant,
}

/// The origin (`scheme://host:port`) of a URL.
pub fn origin(url: &reqwest::Url) -> String {
    url.origin().ascii_serialization()
}

async fn read_limited(resp: reqwest::Response, max: u64) -> Result<Bytes, FetchError> {
    if let Some(len) = resp.content_length()
        && len > max
    {
        return Err(FetchError::TooLarge(len));
    }
    let mut buf = BytesMut::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        if buf.len() as u64 + chunk.len() as u64 > max {
            return Err(FetchError::TooLarge(buf.len() as u64 + chunk.len() as u64));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

fn header_pairs(h: &reqwest::header::HeaderMap) -> Vec<(String, String)> {
    h.iter()
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
        .collect()
}

impl Client {
    /// A client with its cache and identity.
    pub fn new(
        cache: Cache,
        identity: crate::identity::Identity,
        dialer: Arc<peercache_net::PeerDialer>,
        options: &ClientOptions,
        counters: Arc<HostCounters>,
        slots: Option<Arc<Workload>>,
    ) -> anyhow::Result<Self> {
        let knowledge = Arc::new(crate::knowledge::Knowledge::open(cache.dir()));
        Ok(Self {
            http: http_client(options.ca_cert.as_deref())?,
            cache,
            identity,
            dialer,
            serving: options.serving,
            slots,
            registered: Mutex::new(HashMap::new()),
            throughput: std::sync::Mutex::new(HashMap::new()),
            policy: options.policy,
            target_speed: options.target_speed,
            server_timeout: options.server_timeout.unwrap_or(DEFAULT_SERVER_TIMEOUT),
            max_deferral: options.max_deferral.unwrap_or(MAX_DEFERRAL),
            knowledge,
            counters,
            recent_peers: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// Records `bytes` verified bytes received from peer `id` (at `addr`) for
    /// `site`; the oldest entry goes when the list is full.
    pub fn note_peer_bytes(&self, site: &str, id: &str, addr: &str, bytes: u64) {
        let mut list = self
            .recent_peers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        if let Some(entry) = list.iter_mut().find(|p| p.site == site && p.id == id) {
            entry.bytes += bytes;
            entry.last = now;
            entry.addr = addr.to_string();
            return;
        }
        if list.len() >= MAX_RECENT_PEERS
            && let Some(oldest) = list
                .iter()
                .enumerate()
                .min_by_key(|(_, p)| p.last)
                .map(|(i, _)| i)
        {
            list.swap_remove(oldest);
        }
        list.push(PeerUse {
            site: site.to_string(),
            id: id.to_string(),
            addr: addr.to_string(),
            bytes,
            last: now,
        });
    }

    /// Peers that recently sent verified bytes, most recent first.
    pub fn recent_peers(&self) -> Vec<peercache_core::protocol::RecentPeer> {
        let list = self
            .recent_peers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut out: Vec<_> = list
            .iter()
            .map(|p| {
                (
                    p.last,
                    peercache_core::protocol::RecentPeer {
                        site: p.site.clone(),
                        id: p.id.clone(),
                        addr: p.addr.clone(),
                        bytes: p.bytes,
                        idle_secs: p.last.elapsed().as_secs(),
                    },
                )
            })
            .collect();
        out.sort_by_key(|p| std::cmp::Reverse(p.0));
        out.into_iter().map(|(_, p)| p).collect()
    }

    /// This host's peer id (its public key).
    pub fn peer_id(&self) -> &str {
        self.identity.peer_id()
    }

    /// The connections to other peers.
    pub fn dialer(&self) -> &Arc<peercache_net::PeerDialer> {
        &self.dialer
    }

    /// POSTs `body` as JSON to `origin` + `path`, signed with this host's key.
    async fn signed_post<T: serde::Serialize>(
        &self,
        origin: &str,
        path: &str,
        body: &T,
    ) -> Result<reqwest::Response, FetchError> {
        let bytes = serde_json::to_vec(body).map_err(|e| FetchError::BadReferral(e.to_string()))?;
        let auth = self.identity.sign("POST", path, &bytes);
        Ok(self
            .http
            .post(format!("{origin}{path}"))
            .header(headers::AUTH, auth)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(bytes)
            .timeout(self.server_timeout)
            .send()
            .await?)
    }

    fn registration(&self) -> RegisterRequest {
        let endpoint = self.dialer.endpoint();
        RegisterRequest {
            peer_id: self.peer_id().to_string(),
            dial: self
                .serving
                .then(|| peercache_net::endpoint::dial_info(endpoint)),
            port: self
                .serving
                .then(|| peercache_net::endpoint::bound_port(endpoint))
                .flatten(),
            load: self.slots.as_ref().map(|s| s.load()),
        }
    }

    /// The cache.
    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// Registers with the server at `origin`, proven by this host's key. When the
    /// server names relays, the endpoint connects to them (so peers behind other
    /// routers can reach it, and it learns its public address) and, if that
    /// changed how it can be dialed, registers again with the new dial info.
    pub async fn register(&self, origin: &str) -> Result<(), FetchError> {
        let req = self.registration();
        let resp = self.signed_post(origin, "/v1/peers", &req).await?;
        if !resp.status().is_success() {
            return Err(FetchError::Status(resp.status().as_u16()));
        }
        let answer: RegisterResponse = resp.json().await?;
        self.knowledge.learn_relays(origin, &answer.relays);
        let mut sent = req.dial;
        if !answer.relays.is_empty() {
            peercache_net::endpoint::add_relays(self.dialer.endpoint(), &answer.relays, RELAY_WAIT)
                .await;
            let again = self.registration();
            if self.serving && again.dial != sent {
                tracing::info!(dial = ?again.dial, "dial info changed; registering again");
                let resp = self.signed_post(origin, "/v1/peers", &again).await?;
                if !resp.status().is_success() {
                    return Err(FetchError::Status(resp.status().as_u16()));
                }
                sent = again.dial;
            }
        }
        self.registered
            .lock()
            .await
            .insert(origin.to_string(), sent);
        self.pin_server_key(origin).await;
        Ok(())
    }

    /// Pins the server's record-signing key on first contact (B8).
    async fn pin_server_key(&self, origin: &str) {
        if self.knowledge.pinned_key(origin).is_some() {
            return;
        }
        let key = async {
            let r = self
                .http
                .get(format!("{origin}/v1/key"))
                .timeout(self.server_timeout)
                .send()
                .await
                .ok()?;
            r.json::<peercache_core::protocol::ServerKey>().await.ok()
        }
        .await;
        if let Some(k) = key
            && !self.knowledge.pin(origin, &k.public_key)
        {
            tracing::warn!(%origin, "the server presents a different key than the one pinned; keeping the pinned one");
        }
    }

    /// Tells the server at `origin` what this host holds; registers first if needed
    /// (also after a server restart forgot it). Returns the accepted hashes.
    pub async fn announce(
        &self,
        origin: &str,
        have: &[ObjectHash],
        dropped: &[ObjectHash],
    ) -> Result<Vec<ObjectHash>, FetchError> {
        let known = self.registered.lock().await.contains_key(origin);
        if !known {
            self.register(origin).await?;
        }
        let body = Announce {
            peer_id: self.peer_id().to_string(),
            have: have.to_vec(),
            dropped: dropped.to_vec(),
            load: self.slots.as_ref().map(|s| s.load()),
        };
        for attempt in 0..2 {
            let resp = self.signed_post(origin, "/v1/announce", &body).await?;
            match resp.status().as_u16() {
                200 => {
                    let ans: AnnounceResponse = resp.json().await?;
                    return Ok(ans.accepted);
                }
                404 if attempt == 0 => self.register(origin).await?,
                s => return Err(FetchError::Status(s)),
            }
        }
        Err(FetchError::Status(404))
    }

    /// Re-announces everything cached to every server this host knows (heartbeat).
    pub async fn heartbeat(&self) {
        let registered: Vec<(String, Option<peercache_core::peer::DialInfo>)> = self
            .registered
            .lock()
            .await
            .iter()
            .map(|(o, d)| (o.clone(), d.clone()))
            .collect();
        let have = self.cache.list().unwrap_or_default();
        let now = self.registration().dial;
        for (origin, dial) in registered {
            // A new public address (the router's mapping changed, a new network):
            // tell the server how to dial this host now.
            if self.serving
                && dial != now
                && let Err(e) = self.register(&origin).await
            {
                tracing::warn!(%origin, error = %e, "re-registering failed");
            }
            for chunk in have.chunks(5_000).chain(have.is_empty().then_some(&[][..])) {
                if let Err(e) = self.announce(&origin, chunk, &[]).await {
                    tracing::warn!(%origin, error = %e, "heartbeat failed");
                    break;
                }
            }
        }
    }

    pub(crate) async fn report(&self, origin: String, report: SourceReport) {
        let report = Report {
            peer_id: self.peer_id().to_string(),
            hash: report.hash,
            source: report.source,
            outcome: report.outcome,
            bytes: report.bytes,
            duration_ms: u64::try_from(report.took.as_millis()).unwrap_or(u64::MAX),
            direct: report.direct,
        };
        let sent = self.signed_post(&origin, "/v1/report", &report).await;
        if let Err(e) = sent {
            tracing::warn!(error = %e, "report failed");
        }
    }

    /// What this host remembers of a peer's throughput (decayed; `None` once
    /// the measurement has faded below a tenth of its weight).
    pub fn remembered_throughput(&self, peer: &str) -> Option<u64> {
        let map = self.throughput.lock().unwrap_or_else(|p| p.into_inner());
        let m = map.get(peer)?;
        (m.weight(Instant::now()) >= 0.1).then_some(m.bytes_per_s as u64)
    }

    fn remember_throughput(&self, peer: &str, bytes: u64, took: Duration) {
        if took.is_zero() || bytes < 64 * 1024 {
            return;
        }
        let sample = bytes as f64 / took.as_secs_f64();
        let now = Instant::now();
        let mut map = self.throughput.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_REMEMBERED && !map.contains_key(peer) {
            map.clear();
        }
        let value = match map.get(peer) {
            // Blend with what is left of the old measurement.
            Some(old) => {
                let w = old.weight(now) * 0.5;
                old.bytes_per_s * w + sample * (1.0 - w)
            }
            None => sample,
        };
        map.insert(
            peer.to_string(),
            Measured {
                bytes_per_s: value,
                at: now,
            },
        );
    }

    /// Pings every candidate at once (deadline `PROBE_DEADLINE`) over its QUIC
    /// connection and orders them by the configured policy (M6). Unreachable ones
    /// are dropped; so are peers reached only through a relay when a direct source
    /// (another peer, or the server) exists, and those are reported to the server
    /// as relay-only (B10).
    pub async fn probe_and_order(
        &self,
        origin: &str,
        hash: ObjectHash,
        proxies: &[Proxy],
        target_speed: u64,
    ) -> Vec<Proxy> {
        let probes = proxies.iter().map(|p| async move {
            if p.id == SERVER_PROXY_ID {
                return Probed {
                    proxy: p.clone(),
                    rtt_ms: Some(0),
                    throughput: None,
                    direct: Some(true),
                };
            }
            let pinged = match peercache_core::peer::DialInfo::parse(&p.addr) {
                Ok(dial) => tokio::time::timeout(PROBE_DEADLINE, async {
                    let pinged = self.dialer.ping(&p.id, &dial).await.ok()?;
                    let direct = pinged.direct
                        || self
                            .dialer
                            .wait_direct(&p.id, &dial, DIRECT_PATH_WAIT)
                            .await;
                    Some((pinged.rtt, direct))
                })
                .await
                .ok()
                .flatten(),
                Err(_) => None,
            };
            if pinged.is_none() {
                self.dialer.disconnect(&p.id);
            }
            Probed {
                proxy: p.clone(),
                rtt_ms: pinged.map(|(rtt, _)| u32::try_from(rtt.as_millis()).unwrap_or(u32::MAX)),
                throughput: self.remembered_throughput(&p.id),
                direct: pinged.map(|(_, d)| d),
            }
        });
        let probed = futures_util::future::join_all(probes).await;
        let policy = match self.policy {
            PeerPolicy::Fastest => Policy::Fastest,
            PeerPolicy::FirstMeetingTarget => {
                Policy::FirstMeetingTarget(self.target_speed.unwrap_or(target_speed))
            }
        };
        let relay_only: Vec<String> = probed
            .iter()
            .filter(|c| c.direct == Some(false))
            .map(|c| c.proxy.id.clone())
            .collect();
        let chosen = choose(probed, policy);
        for id in relay_only {
            if chosen.iter().any(|p| p.id == id) {
                continue;
            }
            counter!("peercache_relay_only_peers_skipped_total").increment(1);
            tracing::info!(peer = %id, "skipping a peer reachable only through the relay");
            if !origin.is_empty() {
                self.report(
                    origin.to_string(),
                    SourceReport {
                        hash,
                        source: id,
                        outcome: Outcome::Unused,
                        bytes: 0,
                        took: Duration::ZERO,
                        direct: Some(false),
                    },
                )
                .await;
            }
        }
        chosen
    }

    /// The HTTP client (system roots plus `--ca-cert`, no redirects).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Records a download's throughput from `peer` for later choices.
    pub(crate) fn remember(&self, peer: &str, bytes: u64, took: Duration) {
        self.remember_throughput(peer, bytes, took);
    }

    /// A peer sent bytes (or CVs) that do not match the server's hash: count it
    /// and report it, so the server gives the peer a strike.
    pub(crate) async fn note_mismatch(
        &self,
        origin: &str,
        hash: ObjectHash,
        peer: &str,
        took: Duration,
    ) {
        self.counters
            .verification_failures
            .fetch_add(1, Ordering::Relaxed);
        counter!("peercache_verification_failures_total").increment(1);
        tracing::warn!(%peer, %hash, "peer sent bytes that do not match the server's hash");
        self.report(
            origin.to_string(),
            SourceReport {
                hash,
                source: peer.to_string(),
                outcome: Outcome::Mismatch,
                bytes: 0,
                took,
                direct: None,
            },
        )
        .await;
    }

    /// One download of `url` through the whole client protocol, buffered (for
    /// objects up to [`MAX_OBJECT_SIZE`]).
    pub async fn fetch(self: &Arc<Self>, url: &str) -> Result<Fetched, FetchError> {
        let mut dl = self.open(url).await?;
        let mut buf = BytesMut::new();
        while let Some(chunk) = dl.body.recv().await {
            let chunk = chunk?;
            if buf.len() as u64 + chunk.len() as u64 > MAX_OBJECT_SIZE {
                return Err(FetchError::TooLarge(buf.len() as u64 + chunk.len() as u64));
            }
            buf.extend_from_slice(&chunk);
        }
        let source = dl.finish().await?;
        Ok(Fetched {
            bytes: buf.freeze(),
            content_type: dl.content_type,
            hash: dl.hash,
            source,
        })
    }

    /// Starts one download of `url` through the whole client protocol. The
    /// returned [`Download`] yields verified bytes in order as they arrive.
    pub async fn open(self: &Arc<Self>, url: &str) -> Result<Download, FetchError> {
        let url = reqwest::Url::parse(url).map_err(|_| FetchError::BadUrl(url.to_string()))?;
        if url.scheme() != "https" && url.scheme() != "http" {
            return Err(FetchError::BadUrl(url.to_string()));
        }
        let origin = origin(&url);
        // Register first, so the server records that this peer fetched the object
        // through it (B6); failure only costs sharing, never the download.
        let known = self.registered.lock().await.contains_key(&origin);
        if !known {
            match self.register(&origin).await {
                Ok(()) => {}
                Err(FetchError::Http(e)) if e.is_timeout() || e.is_connect() => {
                    tracing::info!(%origin, "server silent; asking known peers");
                    counter!("peercache_server_silent_total").increment(1);
                    return self.open_without_server(origin, url).await;
                }
                Err(e) => tracing::debug!(error = %e, "registration failed; fetching anyway"),
            }
        }
        let client_header = ClientHeader {
            peer_id: Some(self.peer_id().to_string()),
            bandwidth: None,
        };
        let mut waited = Duration::ZERO;
        let mut as_client = true;
        let resp = loop {
            let mut req = self.http.get(url.clone());
            if as_client {
                req = req.header(headers::CLIENT, client_header.to_header_value());
            }
            let sent = tokio::time::timeout(self.server_timeout, req.send()).await;
            match sent {
                Ok(Ok(r)) if r.status().as_u16() == 503 && waited < self.max_deferral => {
                    // The server says the object is on its way to another client:
                    // wait as told, then ask again to be referred to that client.
                    let secs = r
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<u64>().ok());
                    match secs {
                        Some(secs) => {
                            let wait = Duration::from_secs(secs.clamp(1, 30))
                                .min(self.max_deferral - waited);
                            tracing::info!(?wait, "server deferred the request");
                            tokio::time::sleep(wait).await;
                            waited += wait;
                        }
                        None => {
                            counter!("peercache_server_silent_total").increment(1);
                            return self.open_without_server(origin, url).await;
                        }
                    }
                }
                Ok(Ok(r))
                    if r.status().as_u16() == 503
                        && as_client
                        && r.headers().contains_key(reqwest::header::RETRY_AFTER) =>
                {
                    // Deferred as long as deferral can pay: ask for the bytes
                    // themselves, which the server always sends (never fail here).
                    tracing::info!(
                        ?waited,
                        "deferred long enough; asking the server for the bytes"
                    );
                    counter!("peercache_deferrals_given_up_total").increment(1);
                    as_client = false;
                }
                Ok(Ok(r)) if !matches!(r.status().as_u16(), 502..=504) => break r,
                Ok(Err(e)) if !(e.is_connect() || e.is_timeout()) => {
                    return Err(FetchError::Http(e));
                }
                _ => {
                    // The server is silent past its period (or down): peers it told us about.
                    tracing::info!(%origin, "server silent; asking known peers");
                    counter!("peercache_server_silent_total").increment(1);
                    return self.open_without_server(origin, url).await;
                }
            }
        };
        if let Some(rec) = resp
            .headers()
            .get(headers::RECORD)
            .and_then(|v| v.to_str().ok())
            .and_then(headers::decode_record)
        {
            self.keep_record_if_valid(&origin, url.as_str(), &rec);
        }
        match resp.status().as_u16() {
            200 => Ok(self.stream_server_response(origin, resp, None)),
            300 => {
                let body = read_limited(resp, MAX_REFERRAL_BYTES).await?;
                let referral: Referral = serde_json::from_slice(&body)
                    .map_err(|e| FetchError::BadReferral(e.to_string()))?;
                self.follow_referral(origin, url, referral).await
            }
            s => Err(FetchError::Status(s)),
        }
    }

    async fn follow_referral(
        self: &Arc<Self>,
        origin: String,
        url: reqwest::Url,
        referral: Referral,
    ) -> Result<Download, FetchError> {
        let hash = referral.object.hash;
        let size = referral.object.size;
        let content_type = referral.object.content_type.clone();
        self.knowledge.learn_peers(&origin, &referral.proxies);
        if let Some(rec) = &referral.record
            && rec.record.hash == hash
        {
            self.keep_record_if_valid(&origin, url.as_str(), rec);
        }
        if let Some(dl) = self.open_own_cache(&hash, size, &content_type).await {
            counter!("peercache_cache_hits_total").increment(1);
            // Release the referral the server booked against its first peer.
            if let Some(first) = referral.proxies.iter().find(|p| p.id != SERVER_PROXY_ID) {
                let (client, first) = (self.clone(), first.id.clone());
                tokio::spawn(async move {
                    let unused = SourceReport {
                        hash,
                        source: first,
                        outcome: Outcome::Unused,
                        bytes: 0,
                        took: Duration::ZERO,
                        direct: None,
                    };
                    client.report(origin, unused).await;
                });
            }
            return Ok(dl);
        }
        let peers = self
            .probe_and_order(&origin, hash, &referral.proxies, referral.target_speed)
            .await;
        let plan = crate::download::Plan {
            origin: origin.clone(),
            server: referral.server.clone(),
            hash,
            size,
            peers,
            floor: crate::download::floor_for(referral.target_speed),
        };
        Ok(self.spawn_download(plan, content_type, Some(url)))
    }

    /// Keeps a signed record if it verifies against the pinned key.
    fn keep_record_if_valid(
        &self,
        origin: &str,
        url: &str,
        rec: &peercache_core::record::SignedRecord,
    ) {
        let Some(key) = self.knowledge.pinned_key(origin) else {
            return;
        };
        if rec.verify(&key, url, now_secs()).is_ok() {
            self.knowledge.keep_record(rec);
        }
    }

    /// Asks `peer` where the object at `url` is (a cascade query, M11), over its
    /// QUIC connection. Holders it names without an address are the peer itself.
    pub async fn locate(
        &self,
        peer: &Proxy,
        url: &str,
        ttl: u8,
        qid: &str,
    ) -> peercache_core::protocol::LocateResponse {
        let Ok(dial) = peercache_core::peer::DialInfo::parse(&peer.addr) else {
            return Default::default();
        };
        let deadline = Duration::from_millis(1000 * (u64::from(ttl) + 1));
        let asked =
            tokio::time::timeout(deadline, self.dialer.locate(&peer.id, &dial, url, ttl, qid))
                .await;
        let mut found = match asked {
            Ok(Ok(found)) => found,
            _ => return Default::default(),
        };
        found.holders.truncate(32);
        for h in &mut found.holders {
            if h.addr.is_empty() && h.id == peer.id {
                h.addr = peer.addr.clone();
            }
        }
        found
            .holders
            .retain(|h| peercache_core::peer::DialInfo::parse(&h.addr).is_ok());
        found
    }

    /// The server is silent: find holders through the auxiliary proxy list and
    /// the cascade, trust only a record signed with the pinned key, check the
    /// peers' speed, and download verified bytes from them (M10, M11, B8).
    async fn open_without_server(
        self: &Arc<Self>,
        origin: String,
        url: reqwest::Url,
    ) -> Result<Download, FetchError> {
        let key = self
            .knowledge
            .pinned_key(&origin)
            .ok_or(FetchError::ServerDown("no key pinned for this server yet"))?;
        let now = now_secs();
        // Peers behind routers are reached through the relays the server
        // offered before (it may be down, its relay need not be).
        peercache_net::endpoint::add_relays(
            self.dialer.endpoint(),
            &self.knowledge.relays(&origin),
            RELAY_WAIT,
        )
        .await;
        let ask = self.knowledge.aux_peers(&origin);
        let qid = format!("{:016x}", rand::random::<u64>());
        let answers = futures_util::future::join_all(
            ask.iter()
                .take(16)
                .map(|p| self.locate(p, url.as_str(), LOCATE_TTL, &qid)),
        )
        .await;
        let mut record = self
            .knowledge
            .record_for(url.as_str())
            .filter(|r| r.verify(&key, url.as_str(), now).is_ok());
        let mut holders: Vec<Proxy> = Vec::new();
        if crate::lan::enabled() {
            for (proxy, rec) in crate::lan::query(url.as_str(), Duration::from_millis(700)).await {
                if record.is_none()
                    && let Some(r) = rec
                    && r.verify(&key, url.as_str(), now).is_ok()
                {
                    record = Some(r);
                }
                if proxy.id != self.peer_id()
                    && !holders
                        .iter()
                        .any(|x| x.id == proxy.id && x.addr == proxy.addr)
                {
                    holders.push(proxy);
                }
            }
        }
        for a in answers {
            if record.is_none()
                && let Some(r) = a.record
                && r.verify(&key, url.as_str(), now).is_ok()
            {
                record = Some(r);
            }
            for h in a.holders {
                if h.id != self.peer_id()
                    && !holders.iter().any(|x| x.id == h.id && x.addr == h.addr)
                {
                    holders.push(h);
                }
            }
        }
        let record = record.ok_or(FetchError::ServerDown(
            "no peer has a record signed by the pinned key",
        ))?;
        let (hash, size, content_type) = (
            record.record.hash,
            record.record.size,
            record.record.content_type.clone(),
        );
        if let Some(dl) = self.open_own_cache(&hash, size, &content_type).await {
            return Ok(dl);
        }
        if holders.is_empty() {
            return Err(FetchError::ServerDown("no peer holds the object"));
        }
        // Check speed before downloading: first to meet the target, else fastest.
        let target = self.target_speed.unwrap_or_else(|| size.div_ceil(2).max(1));
        let probed = self.probe_and_order("", hash, &holders, target).await;
        let plan = crate::download::Plan {
            origin: origin.clone(),
            server: String::new(),
            hash,
            size,
            peers: probed,
            // With the server down, a slow peer is still better than none.
            floor: 0,
        };
        self.knowledge.keep_record(&record);
        Ok(self.spawn_download(plan, content_type, None))
    }

    /// Runs a verified download in the background. With `fallback_url`, when no
    /// source could even prove the object (no outboard anywhere), the whole object
    /// comes from the server at that URL, checked against the hash.
    fn spawn_download(
        self: &Arc<Self>,
        plan: crate::download::Plan,
        content_type: String,
        fallback_url: Option<reqwest::Url>,
    ) -> Download {
        let (hash, size, origin) = (plan.hash, plan.size, plan.origin.clone());
        let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
        let (done_tx, done_rx) = oneshot::channel();
        let client = self.clone();
        tokio::spawn(async move {
            let result = match (
                crate::download::run(client.clone(), plan, tx.clone()).await,
                fallback_url,
            ) {
                (Err(FetchError::Status(502)), Some(url)) => {
                    client.server_whole(origin, url, hash, tx).await
                }
                (other, _) => other,
            };
            let _ = done_tx.send(result);
        });
        Download {
            content_type,
            size: Some(size),
            hash: Some(hash),
            known_source: None,
            not_shareable: None,
            body: rx,
            done: Some(done_rx),
        }
    }

    /// The last resort: the server, asked without `Peercache-Client`, must send.
    async fn server_whole(
        self: &Arc<Self>,
        origin: String,
        url: reqwest::Url,
        hash: ObjectHash,
        tx: mpsc::Sender<Result<Bytes, FetchError>>,
    ) -> Result<Source, FetchError> {
        let resp = self
            .http
            .get(url)
            .timeout(Duration::from_secs(3600))
            .send()
            .await?;
        if resp.status().as_u16() != 200 {
            return Err(FetchError::Status(resp.status().as_u16()));
        }
        let mut dl = self.stream_server_response(origin, resp, Some(hash));
        while let Some(chunk) = dl.body.recv().await {
            if tx.send(chunk).await.is_err() {
                return Err(FetchError::Cancelled);
            }
        }
        dl.finish().await
    }

    /// Streams a server `200` to the caller while hashing it and writing it to a
    /// temp file; keeps and announces it if it matches the hash (given, or named
    /// in `Peercache-Object`) and may be shared.
    fn stream_server_response(
        self: &Arc<Self>,
        origin: String,
        resp: reqwest::Response,
        expected: Option<ObjectHash>,
    ) -> Download {
        let object = resp
            .headers()
            .get(headers::OBJECT)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| ObjectHeader::parse(v).ok());
        let verdict = response_shareable(&header_pairs(resp.headers()));
        let shareable = verdict.is_ok();
        let content_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/octet-stream")
            .to_string();
        let named = expected.or(object.map(|o| o.hash));
        let size = resp.content_length();
        let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
        let (done_tx, done_rx) = oneshot::channel();
        let client = self.clone();
        tokio::spawn(async move {
            let result = client
                .pump_server_body(origin, resp, named, shareable, tx)
                .await;
            let _ = done_tx.send(result);
        });
        Download {
            content_type,
            size,
            hash: named,
            known_source: Some(Source::Server),
            not_shareable: verdict.err(),
            body: rx,
            done: Some(done_rx),
        }
    }

    async fn pump_server_body(
        self: &Arc<Self>,
        origin: String,
        resp: reqwest::Response,
        named: Option<ObjectHash>,
        shareable: bool,
        tx: mpsc::Sender<Result<Bytes, FetchError>>,
    ) -> Result<Source, FetchError> {
        let already = named.is_some_and(|h| self.cache.contains(&h));
        if let (true, Some(h)) = (already, named) {
            self.cache.touch(&h);
        }
        let keep = named.is_some() && shareable && !already;
        let tmp = self.cache.temp_path();
        let mut file = if keep {
            tokio::fs::File::create(&tmp).await.ok()
        } else {
            None
        };
        let mut hasher = peercache_core::hash::StreamHasher::new();
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    let _ = tokio::fs::remove_file(&tmp).await;
                    let _ = tx.send(Err(FetchError::Http(e))).await;
                    return Err(FetchError::Status(502));
                }
            };
            if hasher.len() + chunk.len() as u64 > MAX_OBJECT_SIZE {
                let _ = tokio::fs::remove_file(&tmp).await;
                let _ = tx.send(Err(FetchError::TooLarge(hasher.len()))).await;
                return Err(FetchError::TooLarge(hasher.len()));
            }
            hasher.update(&chunk);
            self.counters
                .bytes_from_server
                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
            counter!("peercache_bytes_from_server_total").increment(chunk.len() as u64);
            if let Some(f) = file.as_mut()
                && f.write_all(&chunk).await.is_err()
            {
                // A full disk stops caching, not the download.
                counter!("peercache_cache_write_failures_total").increment(1);
                file = None;
                let _ = tokio::fs::remove_file(&tmp).await;
            }
            if tx.send(Ok(chunk)).await.is_err() {
                let _ = tokio::fs::remove_file(&tmp).await;
                return Err(FetchError::Cancelled);
            }
        }
        let actual = hasher.finish();
        if let Some(named) = named
            && named != actual
        {
            let _ = tokio::fs::remove_file(&tmp).await;
            let _ = tx.send(Err(FetchError::ServerMismatch)).await;
            return Err(FetchError::ServerMismatch);
        }
        if already
            && shareable
            && let Err(e) = self.announce(&origin, &[actual], &[]).await
        {
            tracing::warn!(error = %e, "announce failed");
        }
        if let Some(f) = file {
            let synced = f.sync_all().await;
            drop(f);
            let cache = self.cache.clone();
            let (len, tmp2) = (hasher.len(), tmp.clone());
            let kept = match synced {
                Ok(()) => tokio::task::spawn_blocking(move || cache.adopt(&actual, &tmp2, len))
                    .await
                    .ok(),
                Err(_) => None,
            };
            match kept {
                Some(Ok(dropped)) => {
                    // Verification data is computed once, when the object is kept,
                    // not per request of a peer.
                    let cache = self.cache.clone();
                    let _ = tokio::task::spawn_blocking(move || cache.outboard(&actual)).await;
                    if let Err(e) = self.announce(&origin, &[actual], &[]).await {
                        tracing::warn!(error = %e, "announce failed");
                    }
                    self.announce_dropped(&dropped).await;
                }
                _ => {
                    let _ = tokio::fs::remove_file(&tmp).await;
                    counter!("peercache_cache_write_failures_total").increment(1);
                    tracing::warn!(hash = %actual, "could not keep the object; not sharing it");
                }
            }
        }
        Ok(Source::Server)
    }

    /// Tells every server this host knows that it no longer holds `dropped`.
    pub async fn announce_dropped(&self, dropped: &[ObjectHash]) {
        if dropped.is_empty() {
            return;
        }
        let origins: Vec<String> = self.registered.lock().await.keys().cloned().collect();
        for origin in origins {
            if let Err(e) = self.announce(&origin, &[], dropped).await {
                tracing::warn!(%origin, error = %e, "announcing evictions failed");
            }
        }
    }

    /// The object from this host's own cache, re-verified whole first (a disk can
    /// rot), then streamed.
    async fn open_own_cache(
        &self,
        hash: &ObjectHash,
        size: u64,
        content_type: &str,
    ) -> Option<Download> {
        if !self.cache.contains(hash) {
            return None;
        }
        let path = self.cache.path_of(hash);
        let (h, p) = (*hash, path.clone());
        let intact = tokio::task::spawn_blocking(move || -> std::io::Result<bool> {
            let mut f = std::fs::File::open(&p)?;
            let mut hasher = peercache_core::hash::StreamHasher::new();
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                let n = std::io::Read::read(&mut f, &mut buf)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
            }
            Ok(hasher.len() == size && hasher.finish() == h)
        })
        .await;
        if !matches!(intact, Ok(Ok(true))) {
            tracing::warn!(%hash, "cached copy is corrupt; removing it");
            self.cache.remove(hash);
            return None;
        }
        self.cache.touch(hash);
        let file = tokio::fs::File::open(&path).await.ok()?;
        let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
        let counters = self.counters.clone();
        tokio::spawn(async move {
            let mut reader = tokio_util::io::ReaderStream::with_capacity(file, 64 * 1024);
            while let Some(chunk) = reader.next().await {
                if let Ok(c) = &chunk {
                    counters
                        .bytes_from_cache
                        .fetch_add(c.len() as u64, Ordering::Relaxed);
                    counter!("peercache_bytes_from_cache_total").increment(c.len() as u64);
                }
                let item = chunk.map_err(|_| FetchError::Status(500));
                if tx.send(item).await.is_err() {
                    break;
                }
            }
        });
        Some(Download {
            content_type: content_type.to_string(),
            size: Some(size),
            hash: Some(*hash),
            known_source: Some(Source::Cache),
            not_shareable: None,
            body: rx,
            done: None,
        })
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Depth of the channel carrying verified chunks to the caller.
const CHANNEL_DEPTH: usize = 16;

/// A download in progress: verified bytes in order, then who served them.
#[derive(Debug)]
pub struct Download {
    /// Media type.
    pub content_type: String,
    /// Size, when known in advance.
    pub size: Option<u64>,
    /// The hash the bytes are checked against, if any.
    pub hash: Option<ObjectHash>,
    /// The source, when known before the first byte.
    pub known_source: Option<Source>,
    /// Why the server's response may never be shared (B2), if so: it was neither
    /// kept nor announced, and the extension should stop routing its URL here.
    pub not_shareable: Option<peercache_core::shareable::NotShareable>,
    /// Verified chunks; an `Err` item means the download failed there.
    pub body: mpsc::Receiver<Result<Bytes, FetchError>>,
    done: Option<oneshot::Receiver<Result<Source, FetchError>>>,
}

impl Download {
    /// Waits for the end (after the body was read) and says who served the bytes.
    pub async fn finish(&mut self) -> Result<Source, FetchError> {
        match self.done.take() {
            None => Ok(self.known_source.clone().unwrap_or(Source::Cache)),
            Some(rx) => rx.await.unwrap_or(Err(FetchError::Cancelled)),
        }
    }
}

/// An HTTP client that trusts the system roots plus `ca_cert`, and never follows
/// redirects (a redirect could lead anywhere; the protocol has no use for them).
pub fn http_client(ca_cert: Option<&Path>) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(5))
        .no_proxy()
        .user_agent(concat!("peercache-host/", env!("CARGO_PKG_VERSION")));
    if let Some(path) = ca_cert {
        let pem = std::fs::read(path)
            .map_err(|e| anyhow::anyhow!("reading --ca-cert {}: {e}", path.display()))?;
        let cert = reqwest::Certificate::from_pem(&pem)
            .map_err(|e| anyhow::anyhow!("--ca-cert {}: {e}", path.display()))?;
        builder = builder.tls_certs_merge([cert]);
    }
    Ok(builder.build()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throughput_measurements_decay() {
        let now = Instant::now();
        let m = Measured {
            bytes_per_s: 1e6,
            at: now,
        };
        assert!((m.weight(now) - 1.0).abs() < 1e-9);
        let later = now + THROUGHPUT_HALF_LIFE;
        assert!((m.weight(later) - 0.5).abs() < 1e-6);
        assert!(
            m.weight(now + THROUGHPUT_HALF_LIFE * 4) < 0.1,
            "forgotten after four half-lives"
        );
    }

    #[tokio::test]
    async fn the_recent_peers_list_adds_up_per_peer_and_stays_bounded() {
        let dir = std::env::temp_dir().join(format!("peercache-recent-{}", std::process::id()));
        let cache = Cache::open(&dir).unwrap();
        let endpoint = peercache_net::endpoint::bind(&peercache_net::EndpointOptions {
            secret: [3; 32],
            bind: "127.0.0.1:0".parse().unwrap(),
            ca_cert: None,
            accept: false,
        })
        .await
        .unwrap();
        let client = Client::new(
            cache,
            crate::identity::Identity::from_secret([3; 32]),
            Arc::new(peercache_net::PeerDialer::new(endpoint)),
            &ClientOptions::default(),
            Arc::new(HostCounters::default()),
            None,
        )
        .unwrap();
        client.note_peer_bytes("https://a.example", "p1", "http://192.0.2.1:1", 100);
        client.note_peer_bytes("https://a.example", "p1", "http://192.0.2.1:1", 50);
        client.note_peer_bytes("https://b.example", "p1", "http://192.0.2.1:1", 7);
        let list = client.recent_peers();
        assert_eq!(list.len(), 2, "one row per site and peer");
        assert_eq!(list[0].site, "https://b.example", "newest first");
        assert_eq!(list[1].bytes, 150);
        for i in 0..(MAX_RECENT_PEERS + 10) {
            client.note_peer_bytes(
                "https://a.example",
                &format!("x{i}"),
                "http://192.0.2.2:1",
                1,
            );
        }
        let list = client.recent_peers();
        assert_eq!(list.len(), MAX_RECENT_PEERS);
        assert!(list.iter().all(|p| p.id != "p1"), "the oldest went first");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
