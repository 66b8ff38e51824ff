//! The shared state of one server process ([`AppState`]): settings, the object
//! registry, the look-up table, the egress pipe, the live figures, the recent
//! decisions, the announce rate limiter and the record-signing key.
//!
//! Every route module reads this one; this module imports none of them, so the
//! state can be built (in `run` and in tests) without the router.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, header};
use metrics::{counter, gauge};
use peercache_core::decide::Explained;
use peercache_core::hash::ObjectHash;
use serde::Serialize;

use crate::config::Config;
use crate::egress::EgressPipe;
use crate::outboards::OutboardCache;
use crate::site::{Site, SiteObject};
use crate::store::{Store, StoreError, now_ms};

/// How long a signed record stays valid.
const RECORD_TTL_SECS: u64 = 24 * 3600;
/// Samples of the offload history kept for `/admin` (one per housekeeping tick).
const HISTORY: usize = 150;
/// Decisions kept for `/admin`.
pub const RECENT_DECISIONS: usize = 64;

/// A figure kept both as a live atomic (for `/admin`) and as a Prometheus
/// counter (for `/metrics`): [`Figures::add`] bumps both, so they never drift.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tally {
    /// `200`s with a body.
    Served,
    /// `300`s.
    Referred,
    /// Body bytes sent.
    BytesServed,
    /// Bytes clients reported receiving from peers.
    BytesFromPeers,
    /// Mismatch reports.
    Mismatches,
    /// Look-up table failures (each answered by serving directly).
    StoreErrors,
}

impl Tally {
    /// Every tally.
    pub const ALL: [Tally; 6] = [
        Tally::Served,
        Tally::Referred,
        Tally::BytesServed,
        Tally::BytesFromPeers,
        Tally::Mismatches,
        Tally::StoreErrors,
    ];

    /// Its Prometheus counter.
    pub fn metric(self) -> &'static str {
        match self {
            Tally::Served => "peercache_requests_served_total",
            Tally::Referred => "peercache_requests_referred_total",
            Tally::BytesServed => "peercache_served_bytes_total",
            Tally::BytesFromPeers => "peercache_reported_from_peers_bytes_total",
            Tally::Mismatches => "peercache_mismatch_reports_total",
            Tally::StoreErrors => "peercache_store_errors_total",
        }
    }
}

/// Live figures for `/admin` (the same events also go to the metrics recorder,
/// through [`Figures::add`]).
#[derive(Debug, Default)]
pub struct Figures {
    served: AtomicU64,
    referred: AtomicU64,
    bytes_served: AtomicU64,
    bytes_from_peers: AtomicU64,
    mismatches: AtomicU64,
    store_errors: AtomicU64,
    /// (unix seconds, bytes served, bytes from peers) samples.
    pub history: Mutex<VecDeque<(u64, u64, u64)>>,
    /// Totals over all replicas (Redis store), in [`Tally::ALL`] order, as of
    /// the last housekeeping tick; `None` with the memory store.
    shared: Mutex<Option<[u64; 6]>>,
    /// This process's figures as last added to the shared totals.
    pushed: Mutex<[u64; 6]>,
}

impl Figures {
    fn cell(&self, t: Tally) -> &AtomicU64 {
        match t {
            Tally::Served => &self.served,
            Tally::Referred => &self.referred,
            Tally::BytesServed => &self.bytes_served,
            Tally::BytesFromPeers => &self.bytes_from_peers,
            Tally::Mismatches => &self.mismatches,
            Tally::StoreErrors => &self.store_errors,
        }
    }

    /// Adds `n` to the figure and to its Prometheus counter.
    pub fn add(&self, t: Tally, n: u64) {
        self.cell(t).fetch_add(n, Ordering::Relaxed);
        counter!(t.metric()).increment(n);
    }

    /// The figure now, in this process.
    pub fn get(&self, t: Tally) -> u64 {
        self.cell(t).load(Ordering::Relaxed)
    }

    /// The figure `/admin` shows: the total over all replicas when they share
    /// a Redis store (as of the last housekeeping tick plus this process's
    /// events since), else this process's.
    pub fn shown(&self, t: Tally) -> u64 {
        let i = Tally::ALL.iter().position(|x| *x == t).unwrap_or(0);
        let shared = *self.shared.lock().unwrap_or_else(|p| p.into_inner());
        match shared {
            Some(totals) => {
                let pushed = self.pushed.lock().unwrap_or_else(|p| p.into_inner())[i];
                totals[i].saturating_add(self.get(t).saturating_sub(pushed))
            }
            None => self.get(t),
        }
    }

    /// Adds what this process counted since the last call to the totals the
    /// replicas share; the lease holder also samples the shared history.
    async fn share(&self, store: &crate::store::RedisStore, sample_at: Option<u64>) {
        let now: Vec<u64> = Tally::ALL.iter().map(|t| self.get(*t)).collect();
        let before = *self.pushed.lock().unwrap_or_else(|p| p.into_inner());
        let deltas: Vec<(&str, u64)> = Tally::ALL
            .iter()
            .zip(now.iter().zip(before))
            .map(|(t, (n, b))| (t.metric(), n.saturating_sub(b)))
            .collect();
        match store.share_figures(&deltas, sample_at).await {
            Ok(shared) => {
                let mut pushed = self.pushed.lock().unwrap_or_else(|p| p.into_inner());
                for (i, n) in now.iter().enumerate() {
                    pushed[i] = *n;
                }
                let mut totals = [0u64; 6];
                for (i, v) in shared.totals.iter().take(6).enumerate() {
                    totals[i] = *v;
                }
                *self.shared.lock().unwrap_or_else(|p| p.into_inner()) = Some(totals);
                let at = |t: Tally| Tally::ALL.iter().position(|x| *x == t).unwrap_or(0);
                let (s, p) = (at(Tally::BytesServed), at(Tally::BytesFromPeers));
                let mut h = self.history.lock().unwrap_or_else(|p| p.into_inner());
                h.clear();
                h.extend(
                    shared
                        .history
                        .iter()
                        .rev()
                        .take(HISTORY)
                        .rev()
                        .map(|(t, v)| {
                            (
                                *t,
                                v.get(s).copied().unwrap_or(0),
                                v.get(p).copied().unwrap_or(0),
                            )
                        }),
                );
            }
            Err(e) => tracing::warn!(error = %e, "sharing the figures failed"),
        }
    }
}

/// One serve / refer / defer decision, as `/admin` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DecisionRecord {
    /// Wall-clock milliseconds.
    pub at_ms: u64,
    /// The URL path asked for.
    pub path: String,
    /// The client's peer id, if it gave one.
    pub client: Option<String>,
    /// The figures, verdict and reason.
    pub explained: Explained,
}

/// The last [`RECENT_DECISIONS`] decisions, newest last.
#[derive(Debug, Default)]
pub struct RecentDecisions {
    ring: Mutex<VecDeque<DecisionRecord>>,
}

impl RecentDecisions {
    /// Remembers `record`, forgetting the oldest when full.
    pub fn push(&self, record: DecisionRecord) {
        let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        while ring.len() >= RECENT_DECISIONS {
            ring.pop_front();
        }
        ring.push_back(record);
    }

    /// The decisions kept, newest first.
    pub fn newest_first(&self) -> Vec<DecisionRecord> {
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        ring.iter().rev().cloned().collect()
    }
}

/// Per-peer token buckets for announces (B6).
#[derive(Debug, Default)]
pub struct RateLimiter {
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    /// Takes a token from `key`'s bucket (refilled at `per_sec`, holding four
    /// seconds' worth); false when it is empty.
    pub fn allow(&self, key: &str, per_sec: u32) -> bool {
        let mut b = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if b.len() > 100_000 {
            b.clear();
        }
        let cap = f64::from(per_sec.max(1)) * 4.0;
        let now = Instant::now();
        let (tokens, last) = b.entry(key.to_string()).or_insert((cap, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * f64::from(per_sec)).min(cap);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// How recently a transfer must have moved bytes to count as making progress.
pub const PROGRESS_WINDOW: Duration = Duration::from_secs(2);

/// Transfers from the server to clients in flight, per object (an input of
/// the deferral rule), and how long clients have been deferred for each object.
///
/// A transfer counts for deferral only while it goes to a registered serving
/// peer (one that can pass the object on) and keeps moving bytes (within
/// [`PROGRESS_WINDOW`]); and an object is deferred for a bounded total time
/// (`--max-defer`), so a reader that trickles cannot make others wait.
#[derive(Debug, Default)]
pub struct Sending {
    inner: Mutex<SendingInner>,
}

#[derive(Debug, Default)]
struct SendingInner {
    next_id: u64,
    transfers: HashMap<u64, Transfer>,
    /// When clients were first deferred for an object (in this window).
    deferring: HashMap<ObjectHash, Instant>,
}

#[derive(Debug)]
struct Transfer {
    hash: ObjectHash,
    to_serving_peer: bool,
    /// The whole object, from its first byte.
    whole: bool,
    /// Bytes sent so far.
    sent: u64,
    last_progress: Instant,
}

impl Sending {
    fn lock(&self) -> std::sync::MutexGuard<'_, SendingInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A transfer of `hash` starts; `to_serving_peer` when its client is a
    /// registered peer others can be referred to, `whole` when it is the
    /// whole object. Returns its id.
    pub fn start(&self, hash: ObjectHash, to_serving_peer: bool, whole: bool) -> u64 {
        let mut s = self.lock();
        s.next_id += 1;
        let id = s.next_id;
        s.transfers.insert(
            id,
            Transfer {
                hash,
                to_serving_peer,
                whole,
                sent: 0,
                last_progress: Instant::now(),
            },
        );
        id
    }

    /// Transfer `id` moved `bytes` more.
    pub fn progress(&self, id: u64, bytes: u64) {
        if let Some(t) = self.lock().transfers.get_mut(&id) {
            t.last_progress = Instant::now();
            t.sent = t.sent.saturating_add(bytes);
        }
    }

    /// How far the furthest whole copy of `hash` on its way to a serving
    /// peer has got (bytes from the start: that peer serves them to the
    /// swarm already), or `None` when no such copy is on its way.
    pub fn whole_copy(&self, hash: &ObjectHash) -> Option<u64> {
        self.lock()
            .transfers
            .values()
            .filter(|t| t.hash == *hash && t.whole && t.to_serving_peer)
            .map(|t| t.sent)
            .max()
    }

    /// Transfer `id` ends (sent or dropped).
    pub fn end(&self, id: u64) {
        self.lock().transfers.remove(&id);
    }

    /// Transfers of `hash` in flight (whatever their pace).
    pub fn count(&self, hash: &ObjectHash) -> u32 {
        let n = self
            .lock()
            .transfers
            .values()
            .filter(|t| t.hash == *hash)
            .count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// Transfers of `hash` that justify deferring a client: to a serving peer,
    /// making progress, while the object's deferral time (`max_defer` in a
    /// window of six times that) is not used up.
    pub fn deferrable(&self, hash: &ObjectHash, max_defer: Duration) -> u32 {
        let now = Instant::now();
        let mut s = self.lock();
        if let Some(since) = s.deferring.get(hash).copied() {
            let elapsed = now.duration_since(since);
            if elapsed >= max_defer.saturating_mul(6) {
                s.deferring.remove(hash);
            } else if elapsed >= max_defer {
                return 0;
            }
        }
        let n = s
            .transfers
            .values()
            .filter(|t| {
                t.hash == *hash
                    && t.to_serving_peer
                    && now.duration_since(t.last_progress) < PROGRESS_WINDOW
            })
            .count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// A client was deferred for `hash` (starts the object's deferral clock).
    pub fn deferred(&self, hash: ObjectHash) {
        let mut s = self.lock();
        if s.deferring.len() >= 100_000 {
            s.deferring.clear();
        }
        s.deferring.entry(hash).or_insert_with(Instant::now);
    }
}

/// How long a serving peer counts as receiving an object after it started.
pub const RECEIVER_TTL: Duration = Duration::from_secs(60);
/// Receivers kept per object (the latest).
const MAX_RECEIVERS: usize = 32;
/// Objects with receivers kept.
const MAX_RECEIVING_OBJECTS: usize = 10_000;

/// Objects the server seeds at once, at most.
const MAX_SEEDED_OBJECTS: usize = 256;
/// A seeded object not asked for this long starts afresh (a later crowd is
/// seeded again).
const SEED_IDLE: Duration = Duration::from_secs(60);

/// The server as a seed (issue 12 point 3): per object, how often it has sent
/// each piece to clients fetching from peers (`POST /v1/objects/{hash}/piece`),
/// so that it hands out what the swarm lacks (`pieces::seed_pick`), and
/// whether a crowd was opened for it (its first asker referred to be seeded
/// instead of served whole, `decide::seeded_instead`). Per process; bounded
/// in objects, each entry one byte per 128 KiB piece.
#[derive(Debug)]
pub struct SeedLedger {
    inner: Mutex<HashMap<ObjectHash, SeedEntry>>,
    /// Pieces being sent now ([`SEED_SENDS`] at most).
    sends: Arc<tokio::sync::Semaphore>,
    /// Turns each peer holds ([`SEED_TURNS_PER_PEER`] at most).
    turns_by_peer: TurnsByPeer,
}

/// Seeded pieces sent at once. A crowd asks for many at the same moment;
/// sent all at once they would share the uplink and all arrive late
/// together, while a few at a time arrive one after the other, so the
/// peers have pieces to pass on from the first fraction of a second.
pub const SEED_SENDS: usize = 4;
/// Longest a request for a seeded piece waits for its turn; then it is told
/// the server is busy (`503`, ask again in a second).
pub const SEED_TURN_WAIT: Duration = Duration::from_secs(5);

/// Turns one peer may hold at once: as many as a host asks for at a time
/// (its `SEED_REQUESTS`), fewer than [`SEED_SENDS`].
pub const SEED_TURNS_PER_PEER: usize = 2;

impl Default for SeedLedger {
    fn default() -> Self {
        Self {
            inner: Mutex::default(),
            sends: Arc::new(tokio::sync::Semaphore::new(SEED_SENDS)),
            turns_by_peer: Arc::default(),
        }
    }
}

/// Why a peer is not sent seeded pieces now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TurnDenied {
    /// It holds [`SEED_TURNS_PER_PEER`] turns already.
    #[error("this peer is being sent as many seeded pieces as it may be at once")]
    PeerHoldsItsTurns,
    /// Every turn stayed taken for [`SEED_TURN_WAIT`].
    #[error("every seeding turn is taken")]
    Busy,
}

/// A turn to be sent seeded pieces: one of [`SEED_SENDS`], counted against
/// its peer until dropped.
#[derive(Debug)]
pub struct SeedTurn {
    _send: tokio::sync::OwnedSemaphorePermit,
    _held: PeerTurn,
}

/// Turns held per peer; an entry lives only while its peer holds one.
type TurnsByPeer = Arc<Mutex<HashMap<String, usize>>>;

/// One turn counted against a peer, given back when dropped.
#[derive(Debug)]
struct PeerTurn {
    by_peer: TurnsByPeer,
    peer: String,
}

impl PeerTurn {
    fn take(by_peer: &TurnsByPeer, peer: &str) -> Option<PeerTurn> {
        let mut map = by_peer.lock().unwrap_or_else(|p| p.into_inner());
        let held = map.entry(peer.to_string()).or_insert(0);
        if *held >= SEED_TURNS_PER_PEER {
            return None;
        }
        *held += 1;
        Some(PeerTurn {
            by_peer: by_peer.clone(),
            peer: peer.to_string(),
        })
    }
}

impl Drop for PeerTurn {
    fn drop(&mut self) {
        let mut map = self.by_peer.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(held) = map.get_mut(&self.peer) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                map.remove(&self.peer);
            }
        }
    }
}

/// One object's seeding.
#[derive(Debug)]
struct SeedEntry {
    /// Times each piece was sent.
    sent: Vec<u8>,
    /// Last asked for (or opened).
    at: Instant,
    /// Opened for a first asker: seeded with no whole copy on its way.
    opened: bool,
}

impl SeedLedger {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ObjectHash, SeedEntry>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The entry for `hash` with `pieces` pieces, fresh if it was idle too
    /// long or did not fit; `None` when there is no room for another object.
    fn entry(
        map: &mut HashMap<ObjectHash, SeedEntry>,
        hash: ObjectHash,
        pieces: usize,
        now: Instant,
    ) -> Option<&mut SeedEntry> {
        if map.len() >= MAX_SEEDED_OBJECTS && !map.contains_key(&hash) {
            map.retain(|_, e| now.duration_since(e.at) < SEED_IDLE);
            if map.len() >= MAX_SEEDED_OBJECTS {
                return None;
            }
        }
        let entry = map.entry(hash).or_insert_with(|| SeedEntry {
            sent: vec![0; pieces],
            at: now,
            opened: false,
        });
        if now.duration_since(entry.at) >= SEED_IDLE || entry.sent.len() != pieces {
            *entry = SeedEntry {
                sent: vec![0; pieces],
                at: now,
                opened: false,
            };
        }
        Some(entry)
    }

    /// A crowd opens for `hash` (of `size` bytes): its first asker was
    /// referred to be seeded (`decide::seeded_instead`), and so are those
    /// after it until the object goes idle. Whether it could be opened (no
    /// room for another object: the caller serves the client as before).
    pub fn open(&self, hash: ObjectHash, size: u64) -> bool {
        let groups = peercache_core::verified::group_count(size);
        let Ok(pieces) = usize::try_from(peercache_core::pieces::piece_count(groups)) else {
            return false;
        };
        let now = Instant::now();
        let mut map = self.lock();
        match Self::entry(&mut map, hash, pieces, now) {
            Some(entry) => {
                // A new crowd (its first asker found no receiver): a ledger
                // left from before, spent or not opened, starts afresh.
                let spent: u64 = entry.sent.iter().map(|c| u64::from(*c)).sum();
                let budget = peercache_core::pieces::seed_budget(pieces as u64);
                if !entry.opened || spent >= budget {
                    entry.sent.iter_mut().for_each(|c| *c = 0);
                }
                entry.opened = true;
                entry.at = now;
                true
            }
            None => false,
        }
    }

    /// Waits for `peer`'s turn to be sent seeded pieces (at most
    /// [`SEED_TURN_WAIT`], first come first served); the turn lasts as long as
    /// the [`SeedTurn`]. A peer holding [`SEED_TURNS_PER_PEER`] already is
    /// refused at once, so no one peer (reading slowly, say) holds every turn.
    pub async fn turn(&self, peer: &str) -> Result<SeedTurn, TurnDenied> {
        let held =
            PeerTurn::take(&self.turns_by_peer, peer).ok_or(TurnDenied::PeerHoldsItsTurns)?;
        let send = tokio::time::timeout(SEED_TURN_WAIT, self.sends.clone().acquire_owned())
            .await
            .map_err(|_| TurnDenied::Busy)?
            .map_err(|_| TurnDenied::Busy)?;
        Ok(SeedTurn {
            _send: send,
            _held: held,
        })
    }

    /// Whether a crowd is open for `hash` (see [`Self::open`]).
    pub fn is_open(&self, hash: &ObjectHash) -> bool {
        let now = Instant::now();
        self.lock()
            .get(hash)
            .is_some_and(|e| e.opened && now.duration_since(e.at) < SEED_IDLE)
    }

    /// Picks the pieces to send a client holding `has` of `hash` (a run,
    /// `first..end`; longer for a client receiving it `alone`,
    /// `pieces::seed_run_len`) and counts them as sent; `None` when there is
    /// nothing to seed it (or no room to track another object). The first
    /// `carried` bytes went out in a whole copy already: their pieces count
    /// as sent.
    pub fn pick(
        &self,
        hash: ObjectHash,
        has: &peercache_core::pieces::HaveMap,
        carried: u64,
        order: peercache_core::pieces::SeedOrder,
        alone: bool,
    ) -> Option<(u64, u64)> {
        use peercache_core::pieces;
        let count = usize::try_from(pieces::piece_count(has.groups())).ok()?;
        let mut map = self.lock();
        let entry = Self::entry(&mut map, hash, count, Instant::now())?;
        pieces::count_carried(&mut entry.sent, carried);
        let first = pieces::seed_pick(&entry.sent, has, order)?;
        let so_far: u64 = entry.sent.iter().map(|c| u64::from(*c)).sum();
        let end = pieces::seed_run(&entry.sent, has, first, pieces::seed_run_len(so_far, alone));
        // Idle is counted from the last piece seeded: asking without being
        // seeded anything does not keep a spent ledger alive.
        entry.at = Instant::now();
        for p in first..end {
            if let Some(c) = entry.sent.get_mut(usize::try_from(p).ok()?) {
                *c = c.saturating_add(1);
            }
        }
        Some((first, end))
    }
}

/// Serving peers receiving an object right now (issue 12 point 1): those the
/// server sends it to (until that transfer ends), and those it referred for it. They hold part of it and
/// serve what they verified (a peer's have-map tells which part), so the next
/// clients are referred to them straight away instead of waiting for someone
/// to hold it whole. Bounded per object and in objects; an entry lapses after
/// [`RECEIVER_TTL`].
#[derive(Debug, Default)]
pub struct Receivers {
    inner: Mutex<ReceiverMap>,
}

/// Per object: (peer id, dial string, since when), oldest first.
type ReceiverMap = HashMap<ObjectHash, VecDeque<(String, String, Instant)>>;

impl Receivers {
    fn lock(&self) -> std::sync::MutexGuard<'_, ReceiverMap> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Peer `id`, dialed at `addr`, started receiving `hash`.
    pub fn add(&self, hash: ObjectHash, id: &str, addr: &str) {
        Self::add_locked(&mut self.lock(), hash, id, addr);
    }

    /// Peer `id` (dialed at `addr`) is about to be sent `hash` whole by the
    /// server, unless another peer became its receiver since the caller
    /// looked: then up to `max` of those are returned and `id` is not listed.
    /// Looking and listing are one step under the lock, so of a crowd's
    /// simultaneous first askers one is served and the rest are referred to it
    /// (issue 12), instead of each being sent a whole copy.
    pub fn claim(
        &self,
        hash: ObjectHash,
        id: &str,
        addr: &str,
        max: usize,
    ) -> Vec<peercache_core::protocol::Proxy> {
        let now = Instant::now();
        let mut map = self.lock();
        let others: Vec<_> = map
            .get(&hash)
            .into_iter()
            .flatten()
            .filter(|(i, _, at)| i != id && now.duration_since(*at) < RECEIVER_TTL)
            .take(max)
            .map(|(i, a, _)| receiver_proxy(i, a))
            .collect();
        if others.is_empty() {
            Self::add_locked(&mut map, hash, id, addr);
        }
        others
    }

    fn add_locked(map: &mut ReceiverMap, hash: ObjectHash, id: &str, addr: &str) {
        let now = Instant::now();
        if map.len() >= MAX_RECEIVING_OBJECTS && !map.contains_key(&hash) {
            map.retain(|_, r| {
                r.back()
                    .is_some_and(|e| now.duration_since(e.2) < RECEIVER_TTL)
            });
            if map.len() >= MAX_RECEIVING_OBJECTS {
                return;
            }
        }
        let list = map.entry(hash).or_default();
        list.retain(|(i, _, at)| i != id && now.duration_since(*at) < RECEIVER_TTL);
        if list.len() >= MAX_RECEIVERS {
            list.pop_front();
        }
        list.push_back((id.to_string(), addr.to_string(), now));
    }

    /// Peer `id` no longer receives `hash` from this server (its transfer
    /// ended: it holds it whole and announces it, or it broke off).
    pub fn remove(&self, hash: &ObjectHash, id: &str) {
        let mut map = self.lock();
        if let Some(list) = map.get_mut(hash) {
            list.retain(|(i, _, _)| i != id);
            if list.is_empty() {
                map.remove(hash);
            }
        }
    }

    /// Whether peer `id` receives `hash` now; if so, its listing starts its
    /// [`RECEIVER_TTL`] afresh (it asked for sources or pieces: it is still
    /// receiving, however long the object takes).
    pub fn touch(&self, hash: &ObjectHash, id: &str) -> bool {
        let now = Instant::now();
        let mut map = self.lock();
        let Some(entry) = map.get_mut(hash).and_then(|list| {
            list.iter_mut()
                .find(|(i, _, at)| i == id && now.duration_since(*at) < RECEIVER_TTL)
        }) else {
            return false;
        };
        entry.2 = now;
        true
    }

    /// Whether peer `id` receives `hash` now.
    pub fn contains(&self, hash: &ObjectHash, id: &str) -> bool {
        let now = Instant::now();
        self.lock().get(hash).is_some_and(|list| {
            list.iter()
                .any(|(i, _, at)| i == id && now.duration_since(*at) < RECEIVER_TTL)
        })
    }

    /// How many receive `hash` now.
    pub fn count(&self, hash: &ObjectHash) -> usize {
        let now = Instant::now();
        self.lock().get(hash).map_or(0, |list| {
            list.iter()
                .filter(|(_, _, at)| now.duration_since(*at) < RECEIVER_TTL)
                .count()
        })
    }

    /// Up to `max` receivers of `hash` other than `exclude`, from a random
    /// place in the list on (so a crowd's requests spread over them).
    pub fn list(
        &self,
        hash: &ObjectHash,
        exclude: Option<&str>,
        max: usize,
    ) -> Vec<peercache_core::protocol::Proxy> {
        let now = Instant::now();
        let mut map = self.lock();
        let Some(list) = map.get_mut(hash) else {
            return Vec::new();
        };
        list.retain(|(_, _, at)| now.duration_since(*at) < RECEIVER_TTL);
        let start = if list.is_empty() {
            0
        } else {
            rand::random_range(0..list.len())
        };
        list.iter()
            .cycle()
            .skip(start)
            .take(list.len())
            .filter(|(id, _, _)| Some(id.as_str()) != exclude)
            .take(max)
            .map(|(id, addr, _)| receiver_proxy(id, addr))
            .collect()
    }
}

/// A receiver as a referral lists it: its id and dial string, nothing
/// measured yet.
fn receiver_proxy(id: &str, addr: &str) -> peercache_core::protocol::Proxy {
    peercache_core::protocol::Proxy {
        id: id.to_string(),
        addr: addr.to_string(),
        direct: None,
        rtt_ms: None,
        load: None,
    }
}

/// Live peer ids registered per client address (`--max-peers-per-ip`), so one
/// source cannot fill the look-up table.
#[derive(Debug, Default)]
pub struct PeersPerSource {
    map: Mutex<HashMap<std::net::IpAddr, HashMap<String, Instant>>>,
}

impl PeersPerSource {
    /// True when `id` may be registered from `ip`: it already is, or `ip` has
    /// fewer than `cap` ids seen within `ttl`.
    pub fn allow(&self, ip: std::net::IpAddr, id: &str, cap: usize, ttl: Duration) -> bool {
        let now = Instant::now();
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= 100_000 && !map.contains_key(&ip) {
            map.retain(|_, ids| {
                ids.retain(|_, seen| now.duration_since(*seen) < ttl);
                !ids.is_empty()
            });
            if map.len() >= 100_000 {
                return false;
            }
        }
        let ids = map.entry(ip).or_default();
        ids.retain(|_, seen| now.duration_since(*seen) < ttl);
        if !ids.contains_key(id) && ids.len() >= cap {
            return false;
        }
        ids.insert(id.to_string(), now);
        true
    }
}

/// Longest a possession proof may take (dial, ask, read 4 KiB).
pub const PROOF_TIMEOUT: Duration = Duration::from_secs(5);
/// After a proof of an object fails, no new proof of it starts for this long:
/// a prover that stalls every proof holds the object's senders back at most
/// `PROOF_TIMEOUT` out of every `PROOF_TIMEOUT + PROOF_COOLDOWN`.
pub const PROOF_COOLDOWN: Duration = Duration::from_secs(15);

/// Possession proofs under way, per object. While a proof of an object runs,
/// the server sends that object to nobody (requests wait until it ends), so a
/// proof cannot be answered by fetching from the server on the fly, not even
/// through a third machine. At most one proof of an object runs at a time,
/// and after a failed one the object cools down before the next.
#[derive(Debug, Default)]
pub struct Proving {
    state: Mutex<ProvingState>,
    ended: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct ProvingState {
    running: std::collections::HashSet<ObjectHash>,
    cooling: HashMap<ObjectHash, Instant>,
}

impl Proving {
    fn lock(&self) -> std::sync::MutexGuard<'_, ProvingState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a proof of `hash`, unless one runs or the object cools down
    /// after a failed one; the proof ends when the guard drops.
    pub fn try_start(self: &Arc<Self>, hash: ObjectHash) -> Option<ProvingGuard> {
        let mut st = self.lock();
        let now = Instant::now();
        st.cooling.retain(|_, until| *until > now);
        if st.cooling.contains_key(&hash) || !st.running.insert(hash) {
            return None;
        }
        Some(ProvingGuard {
            proving: self.clone(),
            hash,
            failed: false,
        })
    }

    /// True while a proof of `hash` runs.
    pub fn is_proving(&self, hash: &ObjectHash) -> bool {
        self.lock().running.contains(hash)
    }

    /// Waits until no proof of `hash` runs (at most a little longer than a
    /// proof can take); false if one still runs then.
    pub async fn wait_clear(&self, hash: &ObjectHash) -> bool {
        let deadline = tokio::time::Instant::now() + PROOF_TIMEOUT + Duration::from_secs(1);
        loop {
            // Made before the check: a proof that ends in between still wakes it.
            let ended = self.ended.notified();
            if !self.is_proving(hash) {
                return true;
            }
            if tokio::time::timeout_at(deadline, ended).await.is_err() {
                return !self.is_proving(hash);
            }
        }
    }
}

/// Ends a proof when dropped; a failed one starts the object's cooldown.
#[derive(Debug)]
pub struct ProvingGuard {
    proving: Arc<Proving>,
    hash: ObjectHash,
    failed: bool,
}

impl ProvingGuard {
    /// Marks the proof failed.
    pub fn failed(&mut self) {
        self.failed = true;
    }
}

impl Drop for ProvingGuard {
    fn drop(&mut self) {
        {
            let mut st = self.proving.lock();
            st.running.remove(&self.hash);
            if self.failed {
                st.cooling
                    .insert(self.hash, Instant::now() + PROOF_COOLDOWN);
            }
        }
        self.proving.ended.notify_waiters();
    }
}

/// Shared state of one server process.
#[derive(Debug)]
pub struct AppState {
    /// Settings.
    pub config: Config,
    /// The object registry.
    pub site: Site,
    /// The look-up table.
    pub store: Store,
    /// The egress model and throttle.
    pub egress: EgressPipe,
    /// Live figures.
    pub figures: Figures,
    /// The last decisions, for `/admin`.
    pub decisions: RecentDecisions,
    /// Client for the upstream's helpers.
    pub http: reqwest::Client,
    /// The server's own peer endpoint: pings and possession proofs go to peers
    /// over their QUIC connections, dialed by key. `None` until `run` binds it.
    pub peers: Option<Arc<peercache_net::PeerDialer>>,
    /// Relays hosts are told to use (the site's own first).
    pub relays: Vec<peercache_core::protocol::RelayInfo>,
    /// The site's own relay, when it runs one.
    pub site_relay: Option<crate::relay::SiteRelay>,
    /// The origin, in upstream mode.
    pub upstream: Option<Arc<crate::upstream::Upstream>>,
    /// The record-signing key (B8).
    pub signer: peercache_core::record::RecordSigner,
    /// The rotations that led to it, published in `/v1/key` (issue 14).
    pub key_rotations: Vec<peercache_core::record::KeyRotation>,
    /// Transfers in flight per object.
    pub sending: Sending,
    /// Serving peers receiving an object now (partial holders).
    pub receivers: Receivers,
    /// What the server has seeded of each object in a crowd.
    pub seeds: SeedLedger,
    /// Announce, register and report rate limits per peer (B6).
    pub announce_limiter: RateLimiter,
    /// API rate limits per client address (`--source-rate`).
    pub source_limiter: RateLimiter,
    /// Live peer ids per client address (`--max-peers-per-ip`).
    pub peers_per_source: PeersPerSource,
    /// Outboards computed once per object.
    pub outboards: Arc<OutboardCache>,
    /// Possession proofs under way.
    pub proving: Arc<Proving>,
    /// The Prometheus recorder, when installed.
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// Recently signed records, by URL and hash.
    signed: Mutex<HashMap<(String, ObjectHash), peercache_core::record::SignedRecord>>,
    tls: bool,
}

impl AppState {
    /// State for `config` with a connected store.
    pub fn new(
        config: Config,
        store: Store,
        metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
        tls: bool,
    ) -> Self {
        let others = [
            "peercache_announces_total",
            "peercache_pings_total",
            "peercache_ping_failures_total",
            "peercache_requests_headers_only_total",
            "peercache_requests_deferred_total",
            "peercache_range_requests_total",
            "peercache_reports_unreferred_total",
            "peercache_auth_failures_total",
            "peercache_reported_relayed_bytes_total",
        ];
        for name in Tally::ALL.iter().map(|t| t.metric()).chain(others) {
            counter!(name).increment(0);
        }
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(5))
            .no_proxy()
            .build()
            .unwrap_or_default();
        let outboards = Arc::new(OutboardCache::default());
        Self {
            site: Site::new(config.root.clone(), outboards.clone()),
            store,
            egress: EgressPipe::new(config.egress_limit),
            figures: Figures::default(),
            decisions: RecentDecisions::default(),
            http,
            peers: None,
            relays: Vec::new(),
            site_relay: None,
            upstream: None,
            signer: peercache_core::record::RecordSigner::from_secret(rand::random()),
            key_rotations: Vec::new(),
            sending: Sending::default(),
            receivers: Receivers::default(),
            seeds: SeedLedger::default(),
            signed: Mutex::new(HashMap::new()),
            announce_limiter: RateLimiter::default(),
            source_limiter: RateLimiter::default(),
            peers_per_source: PeersPerSource::default(),
            outboards,
            proving: Arc::default(),
            config,
            metrics,
            tls,
        }
    }

    /// Expires lapsed peers, refreshes gauges and samples the offload history.
    pub fn spawn_housekeeping(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(2));
            loop {
                tick.tick().await;
                let Some(state) = weak.upgrade() else { break };
                let now = now_ms();
                // One replica at a time expires (and pings): the lease holder.
                let lead = match state.store.lead().await {
                    Ok(lead) => lead,
                    Err(e) => {
                        tracing::warn!(error = %e, "taking the lease failed");
                        false
                    }
                };
                if lead && let Err(e) = state.store.expire(now).await {
                    tracing::warn!(error = %e, "expiring peers failed");
                }
                if let Ok(s) = state.store.stats(now).await {
                    gauge!("peercache_peers", "state" => "live").set(s.peers as f64);
                    gauge!("peercache_peers", "state" => "serving").set(s.serving_peers as f64);
                    gauge!("peercache_peers", "state" => "delisted").set(s.delisted as f64);
                    gauge!("peercache_objects_listed").set(s.objects as f64);
                }
                if let Some(relay) = &state.site_relay {
                    let (out, inn) = relay.bytes();
                    counter!("peercache_relay_bytes_total", "direction" => "to_peers")
                        .absolute(out);
                    counter!("peercache_relay_bytes_total", "direction" => "from_peers")
                        .absolute(inn);
                }
                let f = &state.figures;
                if let Store::Redis(redis) = &state.store {
                    f.share(redis, lead.then_some(now / 1000)).await;
                    continue;
                }
                let mut h = f.history.lock().unwrap_or_else(|p| p.into_inner());
                if h.len() >= HISTORY {
                    h.pop_front();
                }
                h.push_back((
                    now / 1000,
                    f.get(Tally::BytesServed),
                    f.get(Tally::BytesFromPeers),
                ));
            }
        });
    }

    /// The server's own base URL, as the client addressed it.
    pub fn own_url(&self, headers: &HeaderMap) -> String {
        if let Some(url) = &self.config.public_url {
            return url.trim_end_matches('/').to_string();
        }
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("localhost");
        // A scheme header survives only from a trusted proxy (`routes::app`).
        let scheme =
            crate::forwarded::scheme(headers).unwrap_or(if self.tls { "https" } else { "http" });
        format!("{scheme}://{host}")
    }

    /// Signs the record of `obj` as served at `url` (valid for a day). Signatures
    /// are reused for an hour, so a hot object costs one signature, not one per
    /// request.
    pub fn sign(&self, url: &str, obj: &SiteObject) -> peercache_core::record::SignedRecord {
        let now = now_ms() / 1000;
        let key = (url.to_string(), obj.hash);
        let mut signed = self.signed.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(rec) = signed.get(&key)
            && rec.record.expires >= now + RECORD_TTL_SECS - 3600
        {
            return rec.clone();
        }
        let rec = self.signer.sign(peercache_core::record::ObjectRecord {
            url: url.to_string(),
            hash: obj.hash,
            size: obj.size,
            content_type: obj.content_type.clone(),
            expires: now + RECORD_TTL_SECS,
        });
        if signed.len() >= 100_000 {
            signed.clear();
        }
        signed.insert(key, rec.clone());
        rec
    }

    /// True if the server knows this object (from its directory or its upstream).
    pub fn knows(&self, hash: &ObjectHash) -> bool {
        self.site.knows(hash) || self.upstream.as_ref().is_some_and(|u| u.knows(hash))
    }

    /// The object with this hash. Blocking (it may hash a file).
    pub fn object_by_hash(&self, hash: &ObjectHash) -> Option<SiteObject> {
        match &self.upstream {
            Some(u) => u.by_hash(hash),
            None => self.site.by_hash(hash),
        }
    }

    /// Counts and logs a look-up table failure the request survives (it is
    /// answered by serving directly).
    pub fn store_failed(&self, e: &StoreError) {
        self.figures.add(Tally::StoreErrors, 1);
        tracing::warn!(error = %e, "look-up table unavailable");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use peercache_core::decide::{Inputs, explain};

    #[test]
    fn a_spent_ledger_starts_afresh_for_the_next_crowd() {
        use peercache_core::pieces::{HaveMap, SeedOrder};
        let ledger = SeedLedger::default();
        let hash = ObjectHash::of(b"seeded");
        let size = 4 * peercache_core::pieces::PIECE_GROUPS * peercache_core::verified::GROUP;
        let nothing = HaveMap::empty(peercache_core::verified::group_count(size));
        assert!(ledger.open(hash, size));
        assert!(ledger.is_open(&hash));
        let mut seeded = 0;
        while let Some((a, b)) = ledger.pick(hash, &nothing, 0, SeedOrder::FromFront, false) {
            seeded += b - a;
        }
        assert_eq!(seeded, peercache_core::pieces::seed_budget(4));
        // Spent: a new crowd's first asker opens it afresh.
        assert!(ledger.open(hash, size));
        assert_eq!(
            ledger.pick(hash, &nothing, 0, SeedOrder::FromFront, false),
            Some((0, 1))
        );
        // A crowd still seeding is not reset by another open.
        assert!(ledger.open(hash, size));
        assert_eq!(
            ledger.pick(hash, &nothing, 0, SeedOrder::FromFront, false),
            Some((1, 2))
        );
    }

    #[tokio::test]
    async fn one_proof_per_object_a_failed_one_cools_it_down_and_senders_wait() {
        let proving = Arc::new(Proving::default());
        let (a, b) = (ObjectHash::of(b"a"), ObjectHash::of(b"b"));
        let first = proving.try_start(a).unwrap();
        assert!(
            proving.try_start(a).is_none(),
            "one proof of an object at a time"
        );
        let other = proving.try_start(b).unwrap();
        assert!(proving.is_proving(&a));
        // A sender of `a` waits until its proof ends.
        let waiter = {
            let p = proving.clone();
            tokio::spawn(async move { p.wait_clear(&a).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "nobody gets `a` during its proof");
        drop(first);
        assert!(waiter.await.unwrap());
        // A proof that succeeded leaves no cooldown; a failed one does.
        let mut again = proving.try_start(a).unwrap();
        again.failed();
        drop(again);
        assert!(
            proving.try_start(a).is_none(),
            "cooling down after a failure"
        );
        drop(other);
        assert!(proving.try_start(b).is_some());
    }

    #[test]
    fn the_decision_ring_keeps_the_newest_and_stays_bounded() {
        let ring = RecentDecisions::default();
        for i in 0..(RECENT_DECISIONS as u64 + 10) {
            ring.push(DecisionRecord {
                at_ms: i,
                path: format!("/{i}"),
                client: None,
                explained: explain(&Inputs::default()),
            });
        }
        let kept = ring.newest_first();
        assert_eq!(kept.len(), RECENT_DECISIONS);
        assert_eq!(kept[0].at_ms, RECENT_DECISIONS as u64 + 9);
        assert_eq!(kept[RECENT_DECISIONS - 1].at_ms, 10);
    }

    #[test]
    fn only_a_listed_receiver_is_touched() {
        let receivers = Receivers::default();
        let hash = ObjectHash::of(b"touch");
        assert!(!receivers.touch(&hash, "a"), "nobody listed");
        receivers.add(hash, "a", "peer:a");
        assert!(receivers.touch(&hash, "a"));
        assert!(!receivers.touch(&hash, "b"));
        assert!(!receivers.touch(&ObjectHash::of(b"other"), "a"));
        receivers.remove(&hash, "a");
        assert!(
            !receivers.touch(&hash, "a"),
            "a removed one is not brought back"
        );
    }

    #[tokio::test]
    async fn a_peer_holds_at_most_its_share_of_the_seeding_turns() {
        let seeds = SeedLedger::default();
        let first = seeds.turn("a").await.expect("a's first");
        let second = seeds.turn("a").await.expect("a's second");
        assert_eq!(
            seeds.turn("a").await.err(),
            Some(TurnDenied::PeerHoldsItsTurns)
        );
        let others = seeds.turn("b").await.expect("b's turn");
        drop(first);
        let again = seeds
            .turn("a")
            .await
            .expect("a turn given back is a's again");
        drop((second, again, others));
        assert!(
            seeds.turns_by_peer.lock().unwrap().is_empty(),
            "nothing is kept for peers holding no turn"
        );
    }

    #[test]
    fn of_simultaneous_first_askers_one_claims_and_the_rest_learn_of_it() {
        let receivers = Receivers::default();
        let hash = ObjectHash::of(b"crowd");
        assert!(receivers.claim(hash, "a", "peer:a", 8).is_empty());
        assert!(receivers.contains(&hash, "a"));
        // The second asker looked before `a` claimed: it is told of `a`.
        let told = receivers.claim(hash, "b", "peer:b", 8);
        assert_eq!(told.len(), 1);
        assert_eq!(told[0].id, "a");
        assert_eq!(told[0].addr, "peer:a");
        assert!(!receivers.contains(&hash, "b"), "b is not listed");
        // Asking again as `a` keeps `a` the receiver (not "someone else").
        assert!(receivers.claim(hash, "a", "peer:a", 8).is_empty());
        // Another object is unaffected; once `a` ends, the next one claims.
        assert!(
            receivers
                .claim(ObjectHash::of(b"other"), "b", "peer:b", 8)
                .is_empty()
        );
        receivers.remove(&hash, "a");
        assert!(receivers.claim(hash, "b", "peer:b", 8).is_empty());
    }

    #[test]
    fn a_tally_bumps_the_figure() {
        let f = Figures::default();
        f.add(Tally::BytesServed, 5);
        f.add(Tally::BytesServed, 7);
        assert_eq!(f.get(Tally::BytesServed), 12);
        assert_eq!(f.get(Tally::Served), 0);
    }
}
