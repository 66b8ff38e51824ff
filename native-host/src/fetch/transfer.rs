//! Transfer ranges (B1, B3): a verified, multi-source transfer of one object
//! whose hash and size are known.
//!
//! 1. The [`Proof`] (group CVs) comes from the first source whose list adds up
//!    to the hash; a source whose list does not is a liar and is not used. The
//!    server, asked by hash, is the last to be asked.
//! 2. The object is cut into 1 MiB segments. Workers, one per source, take
//!    segments from a shared queue and fetch them with `Range`; each 16 KiB group
//!    is checked before it is written (at its offset) into the temp file. Large
//!    objects use up to four peers at once.
//! 3. A source that fails, stalls, lies or stays below the floor puts the rest
//!    of its segment back (nothing verified is fetched twice) and the next
//!    source takes over; the server is the last one.
//! 4. The caller receives the verified bytes in order as soon as they are
//!    contiguous, so a large object streams with bounded memory.
//!
//! Every source tried, failed and every verified range is an event.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use metrics::counter;
use peercache_core::explain::DownloadEvent;
use peercache_core::hash::ObjectHash;
use peercache_core::protocol::{Proxy, SERVER_PROXY_ID};
use peercache_core::verified::{GROUP, group_count, group_len};
use tokio::sync::{Notify, mpsc};

use super::error::BodySender;
use super::events::Events;
use super::source::{SourceError, SourceRef, Transport};
use super::verify::Proof;

/// Groups per segment (1 MiB).
const SEGMENT_GROUPS: u64 = 64;
/// Most sources downloading at once.
const MAX_PARALLEL: usize = 4;
/// Objects from this size up are fetched from several peers at once.
const PARALLEL_FROM: u64 = 4 << 20;
/// A source that sends nothing for this long is dropped.
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
    queue: VecDeque<(u64, u64)>,
    done: Vec<bool>,
    by_source: HashMap<String, u64>,
    paths: HashMap<String, bool>,
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
    shared: Mutex<Shared>,
    progress: Notify,
    events: Arc<Events>,
}

/// Runs the transfer into a new temp file at `path`; verified bytes go to `tx`
/// in order, and every source that fails goes to `failures` at once (so a liar
/// is reported while the transfer goes on).
pub async fn run(
    transport: Transport,
    plan: Plan,
    path: PathBuf,
    events: Arc<Events>,
    tx: BodySender,
    failures: mpsc::Sender<FailedSource>,
) -> Result<Transferred, TransferError> {
    let failed = Failures {
        events: events.clone(),
        to: failures,
        started: Instant::now(),
    };
    let result = run_inner(transport, plan, &path, events, tx, &failed).await;
    if result.is_err() {
        let _ = std::fs::remove_file(&path);
    }
    result
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
    path: &std::path::Path,
    events: Arc<Events>,
    tx: BodySender,
    failed: &Failures,
) -> Result<Transferred, TransferError> {
    let mut candidates: VecDeque<SourceRef> = plan
        .peers
        .iter()
        .filter(|p| p.id != SERVER_PROXY_ID)
        .filter_map(SourceRef::peer)
        .collect();
    let server = plan.server.as_deref().map(SourceRef::server);

    // 1. The proof, from a source whose list adds up to the hash.
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

    // 2. Segments, workers, in-order emission.
    let groups = group_count(plan.size);
    let parallel = if plan.size >= PARALLEL_FROM && candidates.len() >= 2 {
        MAX_PARALLEL
    } else {
        1
    };
    // One source: one request for everything (the rest is re-queued on failure).
    // Several: 1 MiB segments shared out.
    let segment = if parallel == 1 {
        groups
    } else {
        SEGMENT_GROUPS
    };
    let mut queue = VecDeque::new();
    let mut s = 0;
    while s < groups {
        queue.push_back((s, (s + segment).min(groups)));
        s += segment;
    }
    let file = std::fs::OpenOptions::new()
        .create_new(true)
        .read(true)
        .write(true)
        .open(path)
        .and_then(|f| f.set_len(plan.size).map(|()| f))
        .map_err(TransferError::Disk)?;
    let file = Arc::new(file);
    let job = Arc::new(Job {
        transport,
        plan,
        proof,
        file: file.clone(),
        shared: Mutex::new(Shared {
            queue,
            done: vec![false; groups as usize],
            ..Shared::default()
        }),
        progress: Notify::new(),
        events: events.clone(),
    });
    let mut workers = tokio::task::JoinSet::new();
    while workers.len() < parallel {
        let Some(src) = candidates.pop_front() else {
            break;
        };
        workers.spawn(worker(job.clone(), src));
    }
    // With no server (it is down), "started" means "never to be started".
    let mut server_started = server.is_none();
    if workers.is_empty()
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
        tokio::select! {
            _ = job.progress.notified() => {}
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
                        WorkerError::Source(e) => failed.add(&src.id, e).await,
                    }
                }
                let pending = !lock(&job.shared).queue.is_empty();
                if pending {
                    if let Some(src) = candidates.pop_front() {
                        workers.spawn(worker(job.clone(), src));
                    } else if workers.is_empty() && !server_started && let Some(server) = &server {
                        server_started = true;
                        workers.spawn(worker(job.clone(), server.clone()));
                    }
                }
            }
        }
        let (queued, all_done) = {
            let sh = lock(&job.shared);
            (!sh.queue.is_empty(), sh.done.iter().all(|d| *d))
        };
        if workers.is_empty() && !queued && !all_done {
            // Nothing queued, nobody working, not done: cannot happen, but never hang.
            return Err(TransferError::PeersFailed);
        }
        if workers.is_empty() && queued {
            match &server {
                Some(server) if !server_started => {
                    server_started = true;
                    workers.spawn(worker(job.clone(), server.clone()));
                }
                // Every peer failed and there is no server to finish the job.
                _ => return Err(TransferError::PeersFailed),
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
        path: path.to_path_buf(),
        proof,
        by_source,
        paths,
    })
}

async fn worker(job: Arc<Job>, source: SourceRef) -> (SourceRef, Result<(), WorkerError>) {
    job.events.emit(DownloadEvent::SourceTried {
        source: source.id.clone(),
        what: "bytes".into(),
    });
    let result = take_segments(&job, &source).await;
    (source, result)
}

/// Takes segments from the queue until it is empty or this source fails.
/// A source that answers "busy" is not failed: its segment goes back to the
/// queue (another source may take it), and it asks again after the wait it
/// named, for at most [`BUSY_BUDGET`] in all.
async fn take_segments(job: &Job, source: &SourceRef) -> Result<(), WorkerError> {
    let mut busy_for = Duration::ZERO;
    let budget = if job.plan.server.is_some() {
        BUSY_BUDGET_WITH_SERVER
    } else {
        BUSY_BUDGET
    };
    loop {
        let Some((g0, g1)) = lock(&job.shared).queue.pop_front() else {
            return Ok(());
        };
        let mut g = g0;
        let outcome = segment(job, source, g1, &mut g).await;
        if let Err(e) = outcome {
            // Give back what this source did not deliver.
            if g < g1 {
                lock(&job.shared).queue.push_front((g, g1));
            }
            job.progress.notify_one();
            match e {
                WorkerError::Source(SourceError::Busy(wait)) if busy_for < budget => {
                    counter!("peercache_busy_retries_total").increment(1);
                    tracing::debug!(source = %source.id, ?wait, "source busy; asking again");
                    let wait = wait.min(budget - busy_for);
                    busy_for += wait;
                    tokio::time::sleep(wait).await;
                }
                WorkerError::Source(SourceError::Busy(_)) => {
                    return Err(SourceError::Failed(format!(
                        "busy for more than {} s",
                        budget.as_secs()
                    ))
                    .into());
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
    let (mut stream, direct) = source
        .open_range(&job.transport, job.plan.hash, size, (first, last), whole)
        .await?;
    if let Some(direct) = direct {
        lock(&job.shared).paths.insert(source.id.clone(), direct);
    }
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
        tokio::task::spawn_blocking(move || write_all_at(&file, &data, first * GROUP))
            .await
            .map_err(|e| WorkerError::Disk(std::io::Error::other(e)))?
            .map_err(WorkerError::Disk)?;
    }
    {
        let mut sh = lock(&job.shared);
        for g in first..end {
            sh.done[g as usize] = true;
        }
        *sh.by_source.entry(source.id.clone()).or_default() += n;
    }
    job.events.emit(DownloadEvent::RangeDone {
        source: source.id.clone(),
        first: first * GROUP,
        end: first * GROUP + n,
    });
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
