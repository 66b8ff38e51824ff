//! The look-up table content → peers (M7), behind one type with two backends:
//! the embedded in-memory table (default) and Redis (`--store redis://…`, B4), so
//! several stateless server replicas can share it.
//!
//! What it keeps per peer: the address its connection came from (B6), its load
//! and the referrals handed out since its last load report (M12), the smoothed RTT
//! and failures of the server's pings (M8), strikes for verified mismatches (B6).
//! Per object: its holders and how often each served it (M9). Per peer and object:
//! whether the peer fetched it through this server (B6: only then, or with proof,
//! is it listed).
//!
//! Times are wall-clock milliseconds so replicas agree. Ranking is
//! `peercache_core::select::rank_holders`, and the lifecycle rules (live,
//! lapsed, delisted, fading bookings, dropping unreachable peers) are
//! [`rules`], the same for both backends.

mod memory;
mod redis;
pub mod rules;

use std::net::IpAddr;

use peercache_core::hash::ObjectHash;
use peercache_core::protocol::{Load, Proxy, Report};
use peercache_core::select::HolderStats;

pub use self::memory::MemoryStore;
pub use self::redis::{RedisOptions, RedisStore, SharedFigures};

/// Most peers remembered at once.
pub const MAX_PEERS: usize = 100_000;
/// Most objects one peer may be listed for.
pub const MAX_HOLDINGS_PER_PEER: usize = 100_000;
/// Referrals booked against a peer's load count for this long without a newer
/// load report or a client's report (clients served from their own cache never
/// report, so bookings must fade).
pub const PENDING_WINDOW_MS: u64 = 10_000;
/// Consecutive failed pings after which a peer is dropped.
pub const MAX_PING_FAILURES: u32 = 3;

/// Why a store call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The peer never registered, lapsed, or was delisted.
    #[error("unknown or delisted peer")]
    UnknownPeer,
    /// The table is full.
    #[error("table full")]
    Full,
    /// The backend failed (Redis down, timeout).
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

/// Counts for metrics and the admin page.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TableStats {
    /// Live peers.
    pub peers: usize,
    /// Live peers able to serve (with an address).
    pub serving_peers: usize,
    /// Objects with at least one holder.
    pub objects: usize,
    /// Peers delisted for mismatches.
    pub delisted: usize,
}

/// One peer as the admin page shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerRow {
    /// Peer id.
    pub id: String,
    /// Serving address, if any.
    pub addr: Option<String>,
    /// Last reported load.
    pub load: Option<Load>,
    /// Smoothed ping RTT.
    pub rtt_ms: Option<u32>,
    /// Verified mismatch reports against it.
    pub strikes: u32,
    /// Whether connections to it go direct (`Some(false)`: relay only).
    pub direct: Option<bool>,
    /// Objects it is listed for.
    pub holdings: usize,
}

/// Who found a peer's path (B10). The server sits on a public address, and a
/// home router lets in whatever answers a packet sent out, so the server's
/// pings go direct to peers that visitors behind other routers reach only
/// through the relay (a symmetric NAT opens a new port per destination). A
/// client's own connection is the better witness: the server's ping fills the
/// path in until a client reports one, and never overrides it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathWitness {
    /// The server's health ping.
    ServerPing,
    /// A client's report of its own connection.
    Client,
}

impl PathWitness {
    /// Whether a finding by `self` replaces one made by `earlier`.
    pub fn overrides(self, earlier: Option<PathWitness>) -> bool {
        !(self == PathWitness::ServerPing && earlier == Some(PathWitness::Client))
    }

    pub(super) fn name(self) -> &'static str {
        match self {
            PathWitness::ServerPing => "server",
            PathWitness::Client => "client",
        }
    }
}

/// Settings shared by both backends.
#[derive(Debug, Clone, Copy)]
pub struct StoreLimits {
    /// A registration lives this long without a heartbeat.
    pub ttl_ms: u64,
    /// Strikes that delist a peer.
    pub max_strikes: u32,
    /// RTT above which a peer is demoted.
    pub slow_threshold_ms: u32,
}

/// How long a referral lets its client report on the peers it named.
pub const OFFER_TTL_MS: u64 = 10 * 60 * 1000;
/// Most open referrals remembered (memory backend).
pub const MAX_OFFERS: usize = 200_000;

/// Wall-clock milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The look-up table.
#[derive(Debug)]
pub enum Store {
    /// Embedded, in this process.
    Memory(MemoryStore),
    /// Shared through Redis.
    Redis(RedisStore),
}

/// Calls the backend, timing the call into `peercache_store_duration_seconds`.
macro_rules! dispatch {
    ($self:ident, $op:literal, $s:ident => $call:expr) => {{
        let started = std::time::Instant::now();
        let out = match $self {
            Store::Memory($s) => $call,
            Store::Redis($s) => $call.await,
        };
        metrics::histogram!("peercache_store_duration_seconds", "op" => $op)
            .record(started.elapsed().as_secs_f64());
        out
    }};
}

impl Store {
    /// Limits in force.
    pub fn limits(&self) -> StoreLimits {
        match self {
            Store::Memory(s) => s.limits(),
            Store::Redis(s) => s.limits(),
        }
    }

    /// Records a peer (its key proven by the caller) seen from `ip`. `dial` is
    /// its dial string (`peercache_core::peer::DialInfo`); `None` (a client that
    /// does not serve, or a second process on the same identity) keeps the one
    /// registered before, so it never erases a serving listing. Returns the dial
    /// string in force.
    pub async fn register(
        &self,
        id: &str,
        ip: IpAddr,
        dial: Option<String>,
        load: Option<Load>,
        now: u64,
    ) -> Result<Option<String>, StoreError> {
        dispatch!(self, "register", s => s.register(id, ip, dial, load, now))
    }

    /// Remembers that `client` was referred to `peers` for `hash`: only then may
    /// it report on them, once each (B6).
    pub async fn book_offer(
        &self,
        client: &str,
        hash: &ObjectHash,
        peers: &[String],
        now: u64,
    ) -> Result<(), StoreError> {
        if peers.is_empty() {
            return Ok(());
        }
        dispatch!(self, "book_offer", s => s.book_offer(client, hash, peers, now))
    }

    /// True if `client` was referred to `peer` for `hash` recently. With
    /// `consume` the offer is used up (a verdict, `served` or `mismatch`, counts
    /// once per referral); without, it stays (`failed` or `unused` may precede
    /// the verdict on the same referral).
    pub async fn take_offer(
        &self,
        client: &str,
        hash: &ObjectHash,
        peer: &str,
        now: u64,
        consume: bool,
    ) -> Result<bool, StoreError> {
        dispatch!(self, "take_offer", s => s.take_offer(client, hash, peer, now, consume))
    }

    /// Records whether connections to `peer` go direct (`true`) or only through
    /// a relay, as `by` found (B10). A client's finding stands against the
    /// server's pings (see [`PathWitness`]).
    pub async fn note_path(
        &self,
        peer: &str,
        direct: bool,
        by: PathWitness,
    ) -> Result<(), StoreError> {
        dispatch!(self, "note_path", s => s.note_path(peer, direct, by))
    }

    /// Applies an announce: `have` are hashes the caller checked the peer may be
    /// listed for. Returns those accepted.
    pub async fn announce(
        &self,
        id: &str,
        have: &[ObjectHash],
        dropped: &[ObjectHash],
        load: Option<Load>,
        now: u64,
    ) -> Result<Vec<ObjectHash>, StoreError> {
        dispatch!(self, "announce", s => s.announce(id, have, dropped, load, now))
    }

    /// Live, listed holders with an address, ranked; the first gets a pending
    /// referral booked against its load.
    pub async fn holders(
        &self,
        hash: &ObjectHash,
        exclude: Option<&str>,
        now: u64,
        max: usize,
    ) -> Result<Vec<Proxy>, StoreError> {
        let stats = dispatch!(self, "holder_stats", s => s.holder_stats(hash, exclude, now))?;
        let ranked =
            peercache_core::select::rank_holders(stats, self.limits().slow_threshold_ms, max);
        if let Some(first) = ranked.first() {
            dispatch!(self, "book_referral", s => s.book_referral(&first.id, now))?;
        }
        Ok(ranked)
    }

    /// Raw holder figures (for tests and the admin page).
    pub async fn holder_stats(
        &self,
        hash: &ObjectHash,
        exclude: Option<&str>,
        now: u64,
    ) -> Result<Vec<HolderStats>, StoreError> {
        dispatch!(self, "holder_stats", s => s.holder_stats(hash, exclude, now))
    }

    /// Applies a client's report.
    pub async fn report(&self, report: &Report) -> Result<(), StoreError> {
        dispatch!(self, "report", s => s.report(report))
    }

    /// The record-signing secret every replica sharing this table uses, with
    /// the rotations that led to it: the stored one, or `candidate` when none
    /// is stored yet or when `rotations` show `candidate` replaces the stored
    /// one (this replica's key was rotated; then stored).
    pub async fn shared_signing_key(
        &self,
        candidate: [u8; 32],
        rotations: &[peercache_core::record::KeyRotation],
    ) -> Result<([u8; 32], Vec<peercache_core::record::KeyRotation>), StoreError> {
        match self {
            Store::Memory(_) => Ok((candidate, rotations.to_vec())),
            Store::Redis(s) => s.shared_signing_key(candidate, rotations).await,
        }
    }

    /// Notes that `peer` fetched `hash` through this server (or was referred for it).
    pub async fn record_fetch(&self, peer: &str, hash: &ObjectHash) -> Result<(), StoreError> {
        dispatch!(self, "record_fetch", s => s.record_fetch(peer, hash))
    }

    /// True if `peer` fetched `hash` through this server.
    pub async fn fetched(&self, peer: &str, hash: &ObjectHash) -> Result<bool, StoreError> {
        dispatch!(self, "fetched", s => s.fetched(peer, hash))
    }

    /// The serving address of a live peer.
    pub async fn peer_addr(&self, peer: &str, now: u64) -> Result<Option<String>, StoreError> {
        dispatch!(self, "peer_addr", s => s.peer_addr(peer, now))
    }

    /// Live peers with an address, for the pinger.
    pub async fn serving_peers(&self, now: u64) -> Result<Vec<(String, String)>, StoreError> {
        dispatch!(self, "serving_peers", s => s.serving_peers(now))
    }

    /// Records a ping: `Some(rtt)` answered, `None` failed. Too many failures drop
    /// the peer.
    pub async fn record_ping(
        &self,
        peer: &str,
        rtt_ms: Option<u32>,
        load: Option<Load>,
    ) -> Result<(), StoreError> {
        dispatch!(self, "record_ping", s => s.record_ping(peer, rtt_ms, load))
    }

    /// Forgets lapsed peers.
    pub async fn expire(&self, now: u64) -> Result<(), StoreError> {
        dispatch!(self, "expire", s => s.expire(now))
    }

    /// Counts.
    pub async fn stats(&self, now: u64) -> Result<TableStats, StoreError> {
        dispatch!(self, "stats", s => s.stats(now))
    }

    /// Whether this replica does the pinging and expiry now: always with the
    /// memory table; with Redis, while it holds the lease (taken or renewed by
    /// this call, so call it at least every `redis::LEASE_MS` / 2).
    pub async fn lead(&self) -> Result<bool, StoreError> {
        match self {
            Store::Memory(_) => Ok(true),
            Store::Redis(s) => s.lead().await,
        }
    }

    /// Admin rows.
    pub async fn peer_rows(&self, now: u64) -> Result<Vec<PeerRow>, StoreError> {
        dispatch!(self, "peer_rows", s => s.peer_rows(now))
    }
}
