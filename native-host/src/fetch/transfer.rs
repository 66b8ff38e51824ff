//! Transfer ranges (B1, B3): a verified, multi-source transfer of one object
//! whose hash and size are known.
//!
//! 1. The [`Proof`] (group CVs) comes from the first source whose list adds up
//!    to the hash; a source whose list does not is a liar and is not used. The
//!    server, asked by hash, is the last to be asked.
//! 2. The object is cut into 128 KiB pieces (`peercache_core::pieces`).
//!    Workers, one per source, first ask the source which groups it holds (a
//!    peer still downloading holds some: its have-map), then take pieces by
//!    `pieces::pick` (rarest among the sources first, the end game asks a
//!    second source for the last pieces in flight) and fetch them with `Range`,
//!    saying how much they still lack (a peer serving a crowd sends first to
//!    whoever is nearest the end: `crate::upload_turns`);
//!    each 16 KiB group is checked before it is written (at its offset) into
//!    the object's partial file, whose have-map grows with it so this host's
//!    peer server serves those groups at once (`crate::partial`). A source
//!    that holds nothing needed now is asked again as it grows. Large objects
//!    use up to eight sources at once (`MAX_PARALLEL`); the server is
//!    asked for sources that appeared since the referral ([`MoreSources`]: a
//!    crowd's first clients learn of the later ones) after 0.25 s, then at
//!    doubling waits up to every [`REFRESH_SOURCES`].
//!    Beside the peers, the server is asked as a seed (`SEED_REQUESTS`
//!    pieces at a time) for pieces the swarm lacks; it answers only in a
//!    crowd. Referred with no holders at all (a crowd's first asker, whom
//!    the server seeds instead of sending the object whole), the transfer
//!    starts with the seeding alone and learns its peers as they appear;
//!    the server as a source is asked only once the seeding stops.
//! 3. A source that fails, stalls, lies, stays below the floor or stops
//!    growing gives its pieces back (nothing verified is fetched twice) and the
//!    next source takes over; the server is the last one. Only a liar is gone
//!    for good: the others rest and are asked again (`peercache_core::retry`:
//!    a busy one after the wait it named, making room for a waiting source
//!    meanwhile; one that faltered after 1, 2, 4 s), and are reported failed
//!    only when given up.
//! 4. The caller receives the verified bytes in order as soon as they are
//!    contiguous, so a large object streams with bounded memory.
//!
//! Every source tried, failed and every verified range is an event.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::future::BoxFuture;
use metrics::counter;
use peercache_core::explain::DownloadEvent;
use peercache_core::hash::ObjectHash;
use peercache_core::pieces::{self, HaveMap, PIECE_GROUPS, Pick, PieceState};
use peercache_core::protocol::{Proxy, SERVER_PROXY_ID};
use peercache_core::retry;
use peercache_core::verified::{GROUP, group_count, group_len};
use tokio::sync::{Notify, mpsc};

use super::error::BodySender;
use super::events::Events;
use super::source::{SourceError, SourceRef, Transport};
use super::verify::Proof;
use crate::cache::Cache;
use crate::partial::Partial;

/// Groups per segment (1 MiB): the most verified bytes written at once, and
/// the longest run of pieces asked of one source when several share the work.
const SEGMENT_GROUPS: u64 = 64;
/// Ranges a partial holder may refuse though its have-map named them.
const MAX_REFUSALS: u32 = 4;
/// How often a source that holds nothing needed now is asked what it holds.
const HAVE_REFRESH: Duration = Duration::from_millis(200);
/// How long a partial holder that had nothing needed rests after making room
/// for a waiting source.
const NOTHING_NEEDED_REST: Duration = Duration::from_secs(1);
/// How many times in a row a source with nothing needed makes room; then it
/// waits like any source with nothing needed (and fails after [`STALL`]), so
/// partial holders taking turns can never keep the server from being asked.
const MAX_GIVE_WAYS: u32 = 10;
/// Most sources downloading at once. Each shares its uplink among those it
/// serves, and a worker idles between runs and while its source holds
/// nothing needed; eight keep a crowd's uplinks busier than four (flash
/// crowd of 16, `BENCHMARKS.md`: peers' uplinks 72 of 80 MB/s mid-crowd
/// against 62). A peer serves eight at once (its slots), so a crowd of N
/// asks about eight of each.
const MAX_PARALLEL: usize = 8;
/// Objects from this size up are fetched from several peers at once.
const PARALLEL_FROM: u64 = pieces::SWARM_FROM;
/// Pieces asked of the server as a seed at once (one transfer): while one
/// piece's answer is on its way the next request is too, so the link does
/// not idle for a round trip between pieces.
const SEED_REQUESTS: usize = 2;
/// "Busy" answers in a row after which a seed request stops.
const MAX_SEED_BUSY: u32 = 5;
/// How often a large object's transfer asks for more sources
/// ([`MoreSources`]) once the crowd has formed.
pub const REFRESH_SOURCES: Duration = Duration::from_secs(2);
/// The first ask for more sources; the wait doubles up to
/// [`REFRESH_SOURCES`]. A crowd forms in its first second: those asking
/// after a client become its sources then, and a client that learns of them
/// only two seconds in leaves their uplinks idle meanwhile.
const FIRST_REFRESH: Duration = Duration::from_millis(250);
/// Longest one ask for more sources may take.
const REFRESH_TIMEOUT: Duration = Duration::from_secs(5);
/// Most sources one transfer ever knows (its referral's and those added
/// since): a server listing new ones at every ask cannot grow it further.
const MAX_KNOWN_SOURCES: usize = 256;
/// A source that sends nothing, or holds nothing more that is needed and does
/// not grow, for this long is dropped.
const STALL: Duration = Duration::from_secs(10);
/// How long a peer's delivery is measured against the floor.
pub const FLOOR_WINDOW: Duration = Duration::from_secs(3);
/// How often an idle read wakes up to check the stall and the floor.
const TICK: Duration = Duration::from_millis(500);
/// Longest one source may keep a transfer waiting by answering "busy": it is
/// asked again after the wait it names until then, and counts as failed after.
/// With the server down; with the server as the last source, a busy peer
/// waits at most [`BUSY_BUDGET_WITH_SERVER`] before the server takes over.
pub const BUSY_BUDGET: Duration = Duration::from_secs(30);
/// See [`BUSY_BUDGET`].
pub const BUSY_BUDGET_WITH_SERVER: Duration = Duration::from_secs(5);

/// The slowest a peer may deliver, for a referral's target speed: a sixteenth
/// of it, within 16..256 KiB/s (a target speed from a 0 s period would
/// otherwise be unreachable, and a modest home uplink must stay usable). A peer
/// below it for [`FLOOR_WINDOW`] hands the rest of its ranges to the next
/// source (a trickling peer costs a download at most that long). The server,
/// the last resort, has no floor.
pub fn floor_for(target_speed: u64) -> u64 {
    (target_speed / 16).clamp(16 * 1024, 256 * 1024)
}

/// What to transfer.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The object.
    pub hash: ObjectHash,
    /// Its size.
    pub size: u64,
    /// Peers, best first (the server's entry, if listed, is ignored here).
    pub peers: Vec<Proxy>,
    /// The server's base URL as the last source; `None` when it is down.
    pub server: Option<String>,
    /// Bytes per second below which a peer loses its work; 0 for none.
    pub floor: u64,
    /// Where sources that appear during the transfer are learned; `None`:
    /// the referral's list is all there is.
    pub more_sources: Option<MoreSources>,
}

/// Asks for the sources of the object that appeared since the referral (the
/// server's `POST /v1/sources`); an empty list when there are none or the ask
/// failed.
#[derive(Clone)]
pub struct MoreSources(Arc<dyn Fn() -> BoxFuture<'static, Vec<Proxy>> + Send + Sync>);

impl MoreSources {
    /// Wraps the ask.
    pub fn new(ask: impl Fn() -> BoxFuture<'static, Vec<Proxy>> + Send + Sync + 'static) -> Self {
        Self(Arc::new(ask))
    }
}

impl std::fmt::Debug for MoreSources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MoreSources")
    }
}

/// A background task stopped when its handle is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Asks `more` every [`REFRESH_SOURCES`] and passes each answer on (one
/// waiting at most: an answer not yet taken is not replaced by a newer ask).
fn refresh_sources(more: MoreSources) -> (AbortOnDrop, mpsc::Receiver<Vec<Proxy>>) {
    let (tx, rx) = mpsc::channel(1);
    let task = tokio::spawn(async move {
        let mut wait = FIRST_REFRESH;
        loop {
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(REFRESH_SOURCES);
            let found = tokio::time::timeout(REFRESH_TIMEOUT, (more.0)())
                .await
                .unwrap_or_default();
            if tx.send(found).await.is_err() {
                return;
            }
        }
    });
    (AbortOnDrop(task), rx)
}

/// A finished transfer: every byte verified and in the temp file.
#[derive(Debug)]
pub struct Transferred {
    /// The temp file.
    pub file: Arc<std::fs::File>,
    /// Its path.
    pub path: PathBuf,
    /// The group CVs every byte was checked against.
    pub proof: Proof,
    /// Verified bytes per source id.
    pub by_source: HashMap<String, u64>,
    /// Whether each peer's connection went direct.
    pub paths: HashMap<String, bool>,
    /// The partial download others were served from, if the file is one.
    pub partial: Option<Arc<Partial>>,
}

/// A source that failed, and when.
#[derive(Debug)]
pub struct FailedSource {
    /// Its id.
    pub id: String,
    /// How.
    pub error: SourceError,
    /// Time since the transfer began.
    pub after: Duration,
}

/// Why a transfer failed.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// No source could prove the object (no outboard anywhere).
    #[error("no source could prove the object")]
    NoProof,
    /// Every peer failed and there is no server to finish the job.
    #[error("every peer failed")]
    PeersFailed,
    /// The server failed as the last source.
    #[error("the server failed: {0}")]
    ServerFailed(String),
    /// The temp file could not be created, written or read.
    #[error("local disk: {0}")]
    Disk(std::io::Error),
    /// The receiver went away.
    #[error("cancelled")]
    Cancelled,
}

#[derive(Debug, Default)]
struct Shared {
    /// Per group: verified and written.
    done: Vec<bool>,
    /// Bytes of the groups in `done` (counted once each, as they are done).
    held: u64,
    /// Per piece: done, fetched by how many sources, held by how many.
    pieces: Vec<PieceState>,
    /// Sources working now (whose pieces count in `holders`).
    sources: u32,
    by_source: HashMap<String, u64>,
    paths: HashMap<String, bool>,
    /// Per source: times it made room with nothing needed since it last
    /// delivered a run (at most one entry per known source).
    gave_way: HashMap<String, u32>,
}

impl Shared {
    fn all_done(&self) -> bool {
        self.done.iter().all(|d| *d)
    }
}

fn lock(m: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Why a worker stopped early.
enum WorkerError {
    Source(SourceError),
    Disk(std::io::Error),
}

impl From<SourceError> for WorkerError {
    fn from(e: SourceError) -> Self {
        WorkerError::Source(e)
    }
}

struct Job {
    transport: Transport,
    plan: Plan,
    proof: Proof,
    file: Arc<std::fs::File>,
    partial: Option<Arc<Partial>>,
    shared: Mutex<Shared>,
    progress: Notify,
    events: Arc<Events>,
    /// Pieces asked of one source at most in one request (lowered to a
    /// segment's when a second source joins).
    max_run: std::sync::atomic::AtomicU64,
    /// Breaks ties between equally rare pieces (per download).
    seed: u64,
    /// Whether sources wait for a worker: a busy one then makes room for
    /// them instead of waiting for its slot.
    others_waiting: std::sync::atomic::AtomicBool,
}

/// Runs the transfer into the object's partial file in `cache` (or a temp
/// file when another download owns it); verified bytes go to `tx` in order,
/// and every source that fails goes to `failures` at once (so a liar is
/// reported while the transfer goes on).
pub async fn run(
    transport: Transport,
    plan: Plan,
    cache: &Cache,
    events: Arc<Events>,
    tx: BodySender,
    failures: mpsc::Sender<FailedSource>,
) -> Result<Transferred, TransferError> {
    let failed = Failures {
        events: events.clone(),
        to: failures,
        started: Instant::now(),
    };
    let mut made = None;
    let result = run_inner(transport, plan, cache, &mut made, events, tx, &failed).await;
    if result.is_err()
        && let Some((path, partial)) = made
    {
        tokio::task::spawn_blocking(move || {
            let _ = std::fs::remove_file(&path);
            if let Some(p) = partial {
                p.abandon();
            }
        });
    }
    result
}

/// The file a transfer writes to: the object's partial file (served to others
/// as it grows) when this download may own it, else a private temp file.
fn create_file(
    cache: &Cache,
    hash: ObjectHash,
    size: u64,
) -> std::io::Result<(std::fs::File, PathBuf, Option<Arc<Partial>>)> {
    if size > GROUP
        && let Some((partial, file, path)) = Partial::claim(cache, hash, size)?
    {
        return Ok((file, path, Some(Arc::new(partial))));
    }
    let path = cache.temp_path();
    let file = std::fs::OpenOptions::new()
        .create_new(true)
        .read(true)
        .write(true)
        .open(&path)
        .and_then(|f| f.set_len(size).map(|()| f))?;
    Ok((file, path, None))
}

/// Where failed sources go: an event, and the reporter.
struct Failures {
    events: Arc<Events>,
    to: mpsc::Sender<FailedSource>,
    started: Instant,
}

impl Failures {
    async fn add(&self, id: &str, error: SourceError) {
        self.events.emit(DownloadEvent::SourceFailed {
            source: id.to_string(),
            why: error.to_string(),
            mismatch: matches!(error, SourceError::Mismatch),
        });
        let failed = FailedSource {
            id: id.to_string(),
            error,
            after: self.started.elapsed(),
        };
        // The reporter drains as fast as the server answers; if it is gone,
        // the failure is still in the events.
        let _ = self.to.send(failed).await;
    }
}

async fn run_inner(
    transport: Transport,
    plan: Plan,
    cache: &Cache,
    made: &mut Option<(PathBuf, Option<Arc<Partial>>)>,
    events: Arc<Events>,
    tx: BodySender,
    failed: &Failures,
) -> Result<Transferred, TransferError> {
    // Each peer once, however many ways it was found.
    let mut listed = HashSet::new();
    let mut candidates: VecDeque<SourceRef> = plan
        .peers
        .iter()
        .filter(|p| p.id != SERVER_PROXY_ID && listed.insert(p.id.clone()))
        .filter_map(SourceRef::peer)
        .collect();
    let server = plan.server.as_deref().map(SourceRef::server);

    // 1. The proof, from a source whose list adds up to the hash. A source
    // that has none yet (a download that has not begun) may still send bytes
    // later; one whose list is wrong is a liar and is not used.
    let mut later = VecDeque::new();
    let proof = if plan.size > GROUP {
        let mut found = None;
        while let Some(src) = candidates.pop_front() {
            events.emit(DownloadEvent::SourceTried {
                source: src.id.clone(),
                what: "outboard".into(),
            });
            match Proof::from_source(&transport, &src, plan.hash, plan.size).await {
                Ok(p) => {
                    found = Some(p);
                    candidates.push_front(src);
                    break;
                }
                Err(SourceError::NotHeld | SourceError::Busy(_)) => later.push_back(src),
                Err(e) => failed.add(&src.id, e).await,
            }
        }
        match (found, &server) {
            (Some(p), _) => p,
            (None, None) => return Err(TransferError::NoProof),
            (None, Some(server)) => {
                events.emit(DownloadEvent::SourceTried {
                    source: server.id.clone(),
                    what: "outboard".into(),
                });
                Proof::from_source(&transport, server, plan.hash, plan.size)
                    .await
                    .map_err(|_| TransferError::NoProof)?
            }
        }
    } else {
        Proof::single_group(plan.hash, plan.size)
    };
    candidates.extend(later);

    // 2. Pieces, workers, in-order emission.
    let groups = group_count(plan.size);
    let refreshing = plan.size >= PARALLEL_FROM && plan.more_sources.is_some();
    let parallel = if plan.size >= PARALLEL_FROM && (candidates.len() >= 2 || refreshing) {
        MAX_PARALLEL
    } else {
        1
    };
    // Every source of the referral (liars included) and every one added
    // since, by id: a refresh adds only new ones.
    let mut known: HashSet<String> = plan.peers.iter().map(|p| p.id.clone()).collect();
    let (_refresher, mut more_rx) = match (&plan.more_sources, refreshing) {
        (Some(more), true) => {
            let (guard, rx) = refresh_sources(more.clone());
            (Some(guard), Some(rx))
        }
        _ => (None, None),
    };
    // One source: one request for all it holds (the rest is asked again on
    // failure). Several: runs of at most a segment, so they share the work.
    // One source while others may join: runs of four segments (a round trip
    // between requests costs little), a segment's once a second one works.
    let shared_run = SEGMENT_GROUPS / PIECE_GROUPS;
    let max_run = if parallel == 1 {
        u64::MAX
    } else if candidates.len() >= 2 {
        shared_run
    } else {
        4 * shared_run
    };
    let (cache2, hash, size) = (cache.clone(), plan.hash, plan.size);
    let (file, path, partial) =
        tokio::task::spawn_blocking(move || create_file(&cache2, hash, size))
            .await
            .map_err(|e| TransferError::Disk(std::io::Error::other(e)))?
            .map_err(TransferError::Disk)?;
    *made = Some((path.clone(), partial.clone()));
    if let Some(p) = partial.clone() {
        let ob = proof.outboard();
        // Only now may others be served from it: the CVs are beside it.
        tokio::task::spawn_blocking(move || p.set_outboard(&ob))
            .await
            .map_err(|e| TransferError::Disk(std::io::Error::other(e)))?
            .map_err(TransferError::Disk)?;
    }
    let file = Arc::new(file);
    let job = Arc::new(Job {
        transport,
        plan,
        proof,
        file: file.clone(),
        partial: partial.clone(),
        shared: Mutex::new(Shared {
            done: vec![false; groups as usize],
            pieces: vec![PieceState::default(); pieces::piece_count(groups) as usize],
            ..Shared::default()
        }),
        progress: Notify::new(),
        events: events.clone(),
        max_run: std::sync::atomic::AtomicU64::new(max_run),
        seed: rand::random(),
        others_waiting: std::sync::atomic::AtomicBool::new(false),
    });
    // Sources that had a setback rest here until they may be asked again
    // (`peercache_core::retry`), with how many setbacks each had.
    let mut resting: Vec<(tokio::time::Instant, SourceRef)> = Vec::new();
    let mut setbacks: HashMap<String, u32> = HashMap::new();
    let mut workers = tokio::task::JoinSet::new();
    while workers.len() < parallel {
        let Some(src) = candidates.pop_front() else {
            break;
        };
        workers.spawn(worker(job.clone(), src));
    }
    // Referred for a large object: the server seeds what the swarm lacks
    // meanwhile, if there is a crowd (it answers "nothing" otherwise).
    // Referred with no holders at all (the crowd's first asker), the seeding
    // comes first and the server as a source only once it stops.
    let mut seeders = tokio::task::JoinSet::new();
    if refreshing && let Some(server) = &server {
        for _ in 0..SEED_REQUESTS {
            seeders.spawn(seed_from_server(job.clone(), server.clone()));
        }
    }
    // With no server (it is down), "started" means "never to be started".
    let mut server_started = server.is_none();
    if workers.is_empty()
        && seeders.is_empty()
        && let Some(server) = &server
    {
        server_started = true;
        workers.spawn(worker(job.clone(), server.clone()));
    }

    let size = job.plan.size;
    let mut next: u64 = 0;
    loop {
        loop {
            // The run of contiguous verified groups from `next`, up to a segment.
            let run = {
                let sh = lock(&job.shared);
                let mut end = next;
                while end < groups && end - next < SEGMENT_GROUPS && sh.done[end as usize] {
                    end += 1;
                }
                end
            };
            if run == next {
                break;
            }
            let offset = next * GROUP;
            let len = ((run * GROUP).min(size) - offset) as usize;
            let f = file.clone();
            let bytes = tokio::task::spawn_blocking(move || {
                let mut buf = vec![0u8; len];
                read_exact_at(&f, &mut buf, offset).map(|()| buf)
            })
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r);
            let bytes = match bytes {
                Ok(b) => b,
                Err(e) => {
                    workers.abort_all();
                    return Err(TransferError::Disk(e));
                }
            };
            if tx.send(Ok(Bytes::from(bytes))).await.is_err() {
                // The browser went away.
                workers.abort_all();
                return Err(TransferError::Cancelled);
            }
            next = run;
        }
        if next >= groups {
            break;
        }
        job.others_waiting
            .store(!candidates.is_empty(), std::sync::atomic::Ordering::Relaxed);
        tokio::select! {
            _ = job.progress.notified() => {}
            Some(found) = recv_more(&mut more_rx) => {
                for proxy in found {
                    if known.len() >= MAX_KNOWN_SOURCES {
                        break;
                    }
                    if proxy.id == SERVER_PROXY_ID || !known.insert(proxy.id.clone()) {
                        continue;
                    }
                    if let Some(src) = SourceRef::peer(&proxy) {
                        events.emit(DownloadEvent::SourceFound { source: src.id.clone() });
                        candidates.push_back(src);
                    }
                }
                while workers.len() < parallel && let Some(src) = candidates.pop_front() {
                    workers.spawn(worker(job.clone(), src));
                }
                if workers.len() >= 2 {
                    job.max_run.store(shared_run, std::sync::atomic::Ordering::Relaxed);
                }
            }
            () = tokio::time::sleep_until(next_wake(&resting)), if !resting.is_empty() => {
                let now = tokio::time::Instant::now();
                let mut i = 0;
                while i < resting.len() {
                    if resting[i].0 <= now {
                        candidates.push_back(resting.swap_remove(i).1);
                    } else {
                        i += 1;
                    }
                }
                while workers.len() < parallel && let Some(src) = candidates.pop_front() {
                    workers.spawn(worker(job.clone(), src));
                }
            }
            Some(_) = seeders.join_next(), if !seeders.is_empty() => {}
            Some(joined) = workers.join_next(), if !workers.is_empty() => {
                if let Ok((src, Err(e))) = joined {
                    match e {
                        WorkerError::Disk(e) => {
                            workers.abort_all();
                            return Err(TransferError::Disk(e));
                        }
                        WorkerError::Source(e) if src.is_server() => {
                            let why = e.to_string();
                            failed.add(&src.id, e).await;
                            workers.abort_all();
                            return Err(TransferError::ServerFailed(why));
                        }
                        WorkerError::Source(e) => {
                            let earlier = setbacks.get(&src.id).copied().unwrap_or(0);
                            match retry::rest_after(setback_of(&e), earlier) {
                                Some(rest) if resting.len() < MAX_KNOWN_SOURCES => {
                                    tracing::debug!(source = %src.id, error = %e, ?rest, "source rests");
                                    // Making room while busy is no setback.
                                    if !matches!(e, SourceError::Busy(_)) {
                                        setbacks.insert(src.id.clone(), earlier + 1);
                                    }
                                    resting.push((tokio::time::Instant::now() + rest, src));
                                }
                                _ => failed.add(&src.id, e).await,
                            }
                        }
                    }
                }
                let pending = !lock(&job.shared).all_done();
                if pending {
                    if let Some(src) = candidates.pop_front() {
                        workers.spawn(worker(job.clone(), src));
                    } else if workers.is_empty()
                        && seeders.is_empty()
                        && !server_started
                        && let Some(server) = &server
                    {
                        server_started = true;
                        workers.spawn(worker(job.clone(), server.clone()));
                    }
                }
            }
        }
        let all_done = lock(&job.shared).all_done();
        if workers.is_empty() && !all_done {
            match &server {
                // Seeding: the server is asked as a source once it stops.
                Some(_) if !server_started && !seeders.is_empty() => {}
                Some(server) if !server_started => {
                    server_started = true;
                    workers.spawn(worker(job.clone(), server.clone()));
                }
                // Every peer failed (none rests) and there is no server to
                // finish the job.
                _ if resting.is_empty() => return Err(TransferError::PeersFailed),
                // Wait for a resting one.
                _ => {}
            }
        }
    }
    workers.abort_all();
    drop(workers);
    let (by_source, paths) = {
        let mut sh = lock(&job.shared);
        (
            std::mem::take(&mut sh.by_source),
            std::mem::take(&mut sh.paths),
        )
    };
    let proof = job.proof.clone();
    Ok(Transferred {
        file,
        path,
        proof,
        by_source,
        paths,
        partial,
    })
}

/// When the first resting source may be asked again.
fn next_wake(resting: &[(tokio::time::Instant, SourceRef)]) -> tokio::time::Instant {
    resting
        .iter()
        .map(|(at, _)| *at)
        .min()
        .unwrap_or_else(tokio::time::Instant::now)
}

/// A source's failure as a setback (`peercache_core::retry`).
fn setback_of(e: &SourceError) -> retry::Setback {
    match e {
        SourceError::Mismatch => retry::Setback::Lied,
        SourceError::Busy(wait) => retry::Setback::Busy(*wait),
        SourceError::Failed(_) | SourceError::NotHeld => retry::Setback::Faltered,
    }
}

/// The server as a seed (issue 12 point 3): while peers work, asks the
/// server for a piece this download lacks (sending the groups it holds or
/// is fetching), checks and writes it like any range, and asks again; stops
/// when the server has nothing to seed it, or at the first failure (the
/// server stays the last source either way).
async fn seed_from_server(job: Arc<Job>, server: SourceRef) {
    let groups = group_count(job.plan.size);
    // A have-map the server would refuse as too large (objects past 8 GiB):
    // no seeding, the peers and then the server as usual.
    if HaveMap::byte_len(groups) > peercache_core::protocol::MAX_API_BODY {
        return;
    }
    job.events.emit(DownloadEvent::SourceTried {
        source: server.id.clone(),
        what: "seed pieces".into(),
    });
    let mut busy_in_a_row = 0;
    loop {
        let has = {
            let sh = lock(&job.shared);
            if sh.all_done() {
                return;
            }
            let mut has = HaveMap::empty(groups);
            for (p, piece) in sh.pieces.iter().enumerate() {
                if piece.done || piece.in_flight > 0 {
                    let (a, b) = pieces::piece_groups(groups, p as u64);
                    (a..b).for_each(|g| has.set(g));
                }
            }
            for (g, done) in sh.done.iter().enumerate() {
                if *done {
                    has.set(g as u64);
                }
            }
            has
        };
        let (range, body) = match server
            .seed_piece(&job.transport, job.plan.hash, job.plan.size, &has)
            .await
        {
            Ok(Some(got)) => got,
            Ok(None) => return,
            // Asked too often (its rate limit): asked again after the wait
            // it named, a few times in a row at most.
            Err(SourceError::Busy(wait)) if busy_in_a_row < MAX_SEED_BUSY => {
                busy_in_a_row += 1;
                tokio::time::sleep(wait).await;
                continue;
            }
            Err(e) => {
                tracing::debug!(error = %e, "the server stopped seeding");
                return;
            }
        };
        busy_in_a_row = 0;
        // `seed_piece` checked it is a run of whole pieces.
        let (g0, g1) = (range.0 / GROUP, (range.1 + 1).div_ceil(GROUP));
        let run = (g0 / PIECE_GROUPS) as usize..g1.div_ceil(PIECE_GROUPS) as usize;
        for p in lock(&job.shared)
            .pieces
            .get_mut(run.clone())
            .into_iter()
            .flatten()
        {
            p.in_flight += 1;
        }
        let mut g = g0;
        let outcome = receive(&job, &server, body, g1, &mut g).await;
        for p in lock(&job.shared).pieces.get_mut(run).into_iter().flatten() {
            p.in_flight = p.in_flight.saturating_sub(1);
        }
        job.progress.notify_waiters();
        if outcome.is_err() {
            return;
        }
    }
}

/// The next answer of the source refresher, or never when there is none.
async fn recv_more(rx: &mut Option<mpsc::Receiver<Vec<Proxy>>>) -> Option<Vec<Proxy>> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn worker(job: Arc<Job>, source: SourceRef) -> (SourceRef, Result<(), WorkerError>) {
    job.events.emit(DownloadEvent::SourceTried {
        source: source.id.clone(),
        what: "bytes".into(),
    });
    let result = take_pieces(&job, &source).await;
    (source, result)
}

/// What `source` holds: `None` for all of it (the server; a peer with the
/// whole object, or one that does not say).
/// A busy source is asked again later: until then it holds what it held
/// (`before`).
async fn have_of(
    job: &Job,
    source: &SourceRef,
    before: Option<HaveMap>,
) -> Result<Option<HaveMap>, SourceError> {
    match source
        .have(&job.transport, job.plan.hash, job.plan.size)
        .await
    {
        Ok(have) => Ok(have.filter(|h| !h.is_complete())),
        Err(SourceError::Busy(_)) => Ok(before),
        Err(e) => Err(e),
    }
}

/// How long one source may keep this transfer waiting by answering "busy".
fn busy_budget(job: &Job) -> Duration {
    if job.plan.server.is_some() {
        BUSY_BUDGET_WITH_SERVER
    } else {
        BUSY_BUDGET
    }
}

/// What `source` holds when its worker starts (a busy answer is handled as
/// [`on_busy`] says).
async fn first_have(job: &Job, source: &SourceRef) -> Result<Option<HaveMap>, WorkerError> {
    let mut busy_for = Duration::ZERO;
    loop {
        match source
            .have(&job.transport, job.plan.hash, job.plan.size)
            .await
        {
            Ok(have) => return Ok(have.filter(|h| !h.is_complete())),
            Err(SourceError::Busy(wait)) => on_busy(job, source, wait, &mut busy_for).await?,
            Err(e) => return Err(e.into()),
        }
    }
}

/// A busy answer from `source`, which has kept this worker waiting
/// `busy_for` so far: when other sources wait for a worker it makes room for
/// them (the source rests and is asked again later); else the worker waits
/// the time it named and asks again, within the busy budget; past the budget
/// the source counts as failed.
async fn on_busy(
    job: &Job,
    source: &SourceRef,
    wait: Duration,
    busy_for: &mut Duration,
) -> Result<(), WorkerError> {
    if job
        .others_waiting
        .load(std::sync::atomic::Ordering::Relaxed)
    {
        return Err(SourceError::Busy(wait).into());
    }
    let budget = busy_budget(job);
    if *busy_for >= budget {
        return Err(
            SourceError::Failed(format!("busy for more than {} s", budget.as_secs())).into(),
        );
    }
    counter!("peercache_busy_retries_total").increment(1);
    tracing::debug!(source = %source.id, ?wait, "source busy; asking again");
    let wait = wait.min(budget - *busy_for);
    *busy_for += wait;
    tokio::time::sleep(wait).await;
    Ok(())
}

/// Counts (`add`) or uncounts the pieces `have` holds (all for `None`).
fn count_holders(sh: &mut Shared, have: Option<&HaveMap>, add: bool) {
    sh.sources = if add {
        sh.sources.saturating_add(1)
    } else {
        sh.sources.saturating_sub(1)
    };
    for (i, p) in sh.pieces.iter_mut().enumerate() {
        if have.is_none_or(|h| h.has_piece(i as u64)) {
            p.holders = if add {
                p.holders.saturating_add(1)
            } else {
                p.holders.saturating_sub(1)
            };
        }
    }
}

/// Takes pieces from `source` until every piece is done or it fails (see the
/// module docs); its pieces count as held while it works.
async fn take_pieces(job: &Job, source: &SourceRef) -> Result<(), WorkerError> {
    let mut have = first_have(job, source).await?;
    count_holders(&mut lock(&job.shared), have.as_ref(), true);
    let result = take_from(job, source, &mut have).await;
    count_holders(&mut lock(&job.shared), have.as_ref(), false);
    result
}

async fn take_from(
    job: &Job,
    source: &SourceRef,
    have: &mut Option<HaveMap>,
) -> Result<(), WorkerError> {
    let groups = group_count(job.plan.size);
    let mut busy_for = Duration::ZERO;
    let mut idle = Duration::ZERO;
    let mut refused = 0u32;
    loop {
        let picked = {
            let view: &Option<HaveMap> = have;
            let holds = |p: u64| view.as_ref().is_none_or(|h| h.has_piece(p));
            let mut sh = lock(&job.shared);
            let pick = pieces::pick(&sh.pieces, holds, job.seed, sh.sources);
            let run = match pick {
                Pick::Fresh(p) => Some((
                    p,
                    pieces::extend_run(
                        &sh.pieces,
                        holds,
                        p,
                        job.max_run.load(std::sync::atomic::Ordering::Relaxed),
                    ),
                )),
                Pick::Duplicate(p) => Some((p, p + 1)),
                Pick::Wait | Pick::Finished => None,
            };
            match run {
                Some((p0, p1)) => {
                    for p in p0..p1 {
                        sh.pieces[p as usize].in_flight += 1;
                    }
                    // From the first group not verified yet.
                    let (g_start, _) = pieces::piece_groups(groups, p0);
                    let (_, g_end) = pieces::piece_groups(groups, p1 - 1);
                    let g0 = (g_start..g_end)
                        .find(|g| !sh.done[*g as usize])
                        .unwrap_or(g_end);
                    Ok((p0, p1, g0, g_end))
                }
                None => Err(pick),
            }
        };
        let (p0, p1, g0, g1) = match picked {
            Ok(run) => run,
            Err(Pick::Finished) => return Ok(()),
            Err(_) => {
                // Nothing it holds is needed now. When other sources wait for
                // a worker, one of them may hold what is needed: this one
                // makes room and is asked again after a short rest (no
                // setback). Else wait for it to grow (or the end game),
                // asking again what it holds.
                if have.is_some()
                    && job
                        .others_waiting
                        .load(std::sync::atomic::Ordering::Relaxed)
                {
                    let mut sh = lock(&job.shared);
                    let turns = sh.gave_way.entry(source.id.clone()).or_insert(0);
                    if *turns < MAX_GIVE_WAYS {
                        *turns += 1;
                        return Err(SourceError::Busy(NOTHING_NEEDED_REST).into());
                    }
                }
                if have.is_some() && idle >= STALL {
                    return Err(SourceError::Failed(format!(
                        "held nothing more that was needed for {} s",
                        STALL.as_secs()
                    ))
                    .into());
                }
                let _ = tokio::time::timeout(HAVE_REFRESH, job.progress.notified()).await;
                idle += HAVE_REFRESH;
                if have.is_some() {
                    let before = have.as_ref().map_or(0, HaveMap::count);
                    let fresh = have_of(job, source, have.clone()).await?;
                    let mut sh = lock(&job.shared);
                    count_holders(&mut sh, have.as_ref(), false);
                    count_holders(&mut sh, fresh.as_ref(), true);
                    *have = fresh;
                    if have.as_ref().is_none_or(|h| h.count() > before) {
                        idle = Duration::ZERO;
                    }
                }
                continue;
            }
        };
        idle = Duration::ZERO;
        let mut g = g0;
        let outcome = if g < g1 {
            segment(job, source, g1, &mut g).await
        } else {
            Ok(())
        };
        {
            let mut sh = lock(&job.shared);
            for p in p0..p1 {
                let piece = &mut sh.pieces[p as usize];
                piece.in_flight = piece.in_flight.saturating_sub(1);
            }
            if outcome.is_ok() {
                sh.gave_way.remove(&source.id);
            }
        }
        job.progress.notify_waiters();
        if let Err(e) = outcome {
            match e {
                WorkerError::Source(SourceError::Busy(wait)) => {
                    on_busy(job, source, wait, &mut busy_for).await?;
                }
                // A partial holder whose map was older than its file (it
                // restarted its download): ask what it holds, a few times.
                WorkerError::Source(SourceError::NotHeld)
                    if have.is_some() && refused < MAX_REFUSALS =>
                {
                    refused += 1;
                    let fresh = have_of(job, source, have.clone()).await?;
                    let mut sh = lock(&job.shared);
                    count_holders(&mut sh, have.as_ref(), false);
                    count_holders(&mut sh, fresh.as_ref(), true);
                    *have = fresh;
                }
                // Stop using it.
                other => return Err(other),
            }
        }
    }
}

/// Fetches groups `*g..g1` from `source`, advancing `*g` past every group
/// verified and written.
async fn segment(job: &Job, source: &SourceRef, g1: u64, g: &mut u64) -> Result<(), WorkerError> {
    let size = job.plan.size;
    let first = *g * GROUP;
    let last = (g1 * GROUP).min(size).saturating_sub(1);
    let whole = first == 0 && last + 1 >= size;
    // A swarm download tells its peers how much it still lacks: each serves
    // whoever is nearest the end first (`crate::upload_turns`).
    let remaining = (size >= PARALLEL_FROM).then(|| size.saturating_sub(lock(&job.shared).held));
    let (stream, direct) = source
        .open_range(
            &job.transport,
            job.plan.hash,
            size,
            (first, last),
            whole,
            remaining,
        )
        .await?;
    if let Some(direct) = direct {
        lock(&job.shared).paths.insert(source.id.clone(), direct);
    }
    receive(job, source, stream, g1, g).await
}

/// Reads groups `*g..g1` from `stream`, checking each against the proof and
/// writing them in batches, advancing `*g` past every group verified and
/// written; a peer below the floor, a stall or a mismatch ends it.
async fn receive(
    job: &Job,
    source: &SourceRef,
    mut stream: super::source::Body,
    g1: u64,
    g: &mut u64,
) -> Result<(), WorkerError> {
    let size = job.plan.size;
    let mut buf = BytesMut::new();
    // Verified groups are written in batches of up to a segment (1 MiB).
    let mut batch = BytesMut::new();
    let mut batch_start = *g;
    let floor = if source.is_server() {
        0
    } else {
        job.plan.floor
    };
    let (mut window_start, mut window_bytes) = (Instant::now(), 0u64);
    let mut idle = Duration::ZERO;
    while *g < g1 {
        // In the end game another source may have finished the rest.
        let finished = {
            let sh = lock(&job.shared);
            (*g..g1).all(|x| sh.done[x as usize])
        };
        if finished {
            flush(job, source, &mut batch, batch_start, *g).await?;
            *g = g1;
            return Ok(());
        }
        let need = group_len(size, *g) as usize;
        while buf.len() < need {
            let next = tokio::time::timeout(TICK, stream.next()).await;
            let mut failure = match next {
                Ok(Some(Ok(chunk))) => {
                    window_bytes += chunk.len() as u64;
                    idle = Duration::ZERO;
                    buf.extend_from_slice(&chunk);
                    None
                }
                Ok(Some(Err(e))) => Some(e),
                Ok(None) => Some("stream ended early".to_string()),
                Err(_) => {
                    idle += TICK;
                    (idle >= STALL).then(|| "stalled".to_string())
                }
            };
            let measured = window_start.elapsed();
            if failure.is_none() && floor > 0 && measured >= FLOOR_WINDOW {
                let rate = window_bytes as f64 / measured.as_secs_f64();
                if rate < floor as f64 {
                    counter!("peercache_slow_sources_dropped_total").increment(1);
                    failure = Some(format!(
                        "too slow: {rate:.0} B/s, below the {floor} B/s floor"
                    ));
                }
                (window_start, window_bytes) = (Instant::now(), 0);
            }
            if let Some(failure) = failure {
                flush(job, source, &mut batch, batch_start, *g).await?;
                return Err(SourceError::Failed(failure).into());
            }
        }
        let bytes = buf.split_to(need).freeze();
        if !job.proof.check_group(*g, &bytes) {
            flush(job, source, &mut batch, batch_start, *g).await?;
            return Err(SourceError::Mismatch.into());
        }
        batch.extend_from_slice(&bytes);
        *g += 1;
        if batch.len() >= (SEGMENT_GROUPS * GROUP) as usize || *g == g1 {
            flush(job, source, &mut batch, batch_start, *g).await?;
            batch_start = *g;
        }
    }
    Ok(())
}

/// Writes verified groups `[first, end)` held in `batch` at their offset and
/// marks them done.
async fn flush(
    job: &Job,
    source: &SourceRef,
    batch: &mut BytesMut,
    first: u64,
    end: u64,
) -> Result<(), WorkerError> {
    if first >= end {
        return Ok(());
    }
    let data = std::mem::take(batch).freeze();
    let n = data.len() as u64;
    if n > 0 {
        let file = job.file.clone();
        let partial = job.partial.clone();
        tokio::task::spawn_blocking(move || {
            write_all_at(&file, &data, first * GROUP)?;
            // Written, then named in the have-map: others may ask for it now.
            match partial {
                Some(p) => p.mark(first, end),
                None => Ok(()),
            }
        })
        .await
        .map_err(|e| WorkerError::Disk(std::io::Error::other(e)))?
        .map_err(WorkerError::Disk)?;
    }
    {
        let mut sh = lock(&job.shared);
        // Credit only groups no other source verified first (the end game
        // asks twice for the last pieces; a byte counts once).
        let fresh: u64 = (first..end)
            .filter(|g| !sh.done[*g as usize])
            .map(|g| group_len(job.plan.size, g))
            .sum();
        for g in first..end {
            sh.done[g as usize] = true;
        }
        sh.held = sh.held.saturating_add(fresh);
        let groups = sh.done.len() as u64;
        let (p0, p1) = (first / PIECE_GROUPS, end.div_ceil(PIECE_GROUPS));
        for p in p0..p1 {
            let (a, b) = pieces::piece_groups(groups, p);
            if (a..b).all(|g| sh.done[g as usize])
                && let Some(piece) = sh.pieces.get_mut(p as usize)
            {
                piece.done = true;
            }
        }
        if fresh > 0 {
            *sh.by_source.entry(source.id.clone()).or_default() += fresh;
        }
    }
    job.events.emit(DownloadEvent::RangeDone {
        source: source.id.clone(),
        first: first * GROUP,
        end: first * GROUP + n,
    });
    job.progress.notify_waiters();
    job.progress.notify_one();
    Ok(())
}

/// Reads `buf.len()` bytes at `offset` without moving a shared cursor.
#[cfg(unix)]
fn read_exact_at(file: &std::fs::File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

/// Writes all of `data` at `offset` without moving a shared cursor.
#[cfg(unix)]
fn write_all_at(file: &std::fs::File, data: &[u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(file, data, offset)
}

/// Reads `buf.len()` bytes at `offset` (Windows: positioned reads, looped).
#[cfg(windows)]
fn read_exact_at(file: &std::fs::File, mut buf: &mut [u8], mut offset: u64) -> std::io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        match file.seek_read(buf, offset) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes all of `data` at `offset` (Windows: positioned writes, looped).
#[cfg(windows)]
fn write_all_at(file: &std::fs::File, mut data: &[u8], mut offset: u64) -> std::io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !data.is_empty() {
        match file.seek_write(data, offset) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                data = &data[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_floor_follows_the_target_within_bounds() {
        assert_eq!(super::floor_for(0), 16 * 1024);
        assert_eq!(super::floor_for(1 << 20), 64 * 1024);
        assert_eq!(super::floor_for(u64::MAX), 256 * 1024);
    }
}
