//! Verified, multi-source downloads (DESIGN B1, B3).
//!
//! 1. The group CVs (the outboard, `peercache_core::verified`) come from the first
//!    peer whose list adds up to the server's hash; a peer whose list does not is
//!    a liar (reported) and is not used.
//! 2. The object is cut into 1 MiB segments. Workers, one per source, take
//!    segments from a shared queue and fetch them with `Range`; each 16 KiB group
//!    is checked against its CV before it is written (at its offset) into a temp
//!    file in the cache. Large objects use up to four peers at once.
//! 3. A source that fails, stalls or lies puts the rest of its segment back in the
//!    queue (nothing verified is fetched twice) and the next source takes over;
//!    the server, asked by hash, is the last one.
//! 4. The caller receives the verified bytes in order as soon as they are
//!    contiguous, so a large object streams with bounded memory.

use std::collections::{HashMap, VecDeque};
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use metrics::counter;
use peercache_core::hash::ObjectHash;
use peercache_core::peer::DialInfo;
use peercache_core::protocol::{Outcome, Proxy, SERVER_PROXY_ID};
use peercache_core::verified::{GROUP, group_count, group_len, verify_group, verify_outboard};
use tokio::sync::{Notify, mpsc};

use crate::client::{Client, FetchError, Source, SourceReport};

fn failed_report(plan: &Plan, id: &str, took: Duration) -> SourceReport {
    SourceReport {
        hash: plan.hash,
        source: id.to_string(),
        outcome: Outcome::Failed,
        bytes: 0,
        took,
        direct: None,
    }
}

/// Groups per segment (1 MiB).
const SEGMENT_GROUPS: u64 = 64;
/// Most sources downloading at once.
const MAX_PARALLEL: usize = 4;
/// Objects from this size up are fetched from several peers at once.
const PARALLEL_FROM: u64 = 4 << 20;
/// A source that sends nothing for this long is dropped.
const STALL: Duration = Duration::from_secs(10);

/// What to download.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The server's origin (for announces and reports).
    pub origin: String,
    /// The server's base URL as a source (`/v1/objects/{hash}`).
    pub server: String,
    /// The object.
    pub hash: ObjectHash,
    /// Its size.
    pub size: u64,
    /// Peers, best first.
    pub peers: Vec<Proxy>,
    /// Bytes per second below which a peer loses its work (see [`floor_for`]).
    pub floor: u64,
}

/// The slowest a peer may deliver, for a referral's target speed: a sixteenth
/// of it, within 16..256 KiB/s (a target speed from a 0 s period would
/// otherwise be unreachable, and a modest home uplink must stay usable). A peer below it for [`FLOOR_WINDOW`] hands the
/// rest of its ranges to the next source (issue 13: a trickling peer costs a
/// download at most that long). The server, the last resort, has no floor.
pub fn floor_for(target_speed: u64) -> u64 {
    (target_speed / 16).clamp(16 * 1024, 256 * 1024)
}

/// How long a peer's delivery is measured against the floor.
pub const FLOOR_WINDOW: Duration = Duration::from_secs(3);
/// How often an idle read wakes up to check the stall and the floor.
const TICK: Duration = Duration::from_millis(500);

/// One source: the server over HTTP, or a peer over its QUIC connection.
#[derive(Debug, Clone)]
struct SourceRef {
    id: String,
    kind: SourceKind,
}

#[cfg(test)]
mod floor_tests {
    #[test]
    fn the_floor_follows_the_target_within_bounds() {
        assert_eq!(super::floor_for(0), 16 * 1024);
        assert_eq!(super::floor_for(1 << 20), 64 * 1024);
        assert_eq!(super::floor_for(u64::MAX), 256 * 1024);
    }
}

#[derive(Debug, Clone)]
enum SourceKind {
    /// The server's base URL (`/v1/objects/{hash}`).
    Server(String),
    /// How to dial the peer.
    Peer(DialInfo),
}

impl SourceRef {
    fn is_server(&self) -> bool {
        matches!(self.kind, SourceKind::Server(_))
    }

    fn peer(p: &Proxy) -> Option<Self> {
        let dial = DialInfo::parse(&p.addr).ok()?;
        Some(Self {
            id: p.id.clone(),
            kind: SourceKind::Peer(dial),
        })
    }

    /// How the popup shows where the bytes came from.
    fn display(&self) -> String {
        match &self.kind {
            SourceKind::Server(base) => base.clone(),
            SourceKind::Peer(dial) => dial.display(),
        }
    }
}

/// A body arriving from a source, read piece by piece.
enum Body {
    Http(futures_util::stream::BoxStream<'static, reqwest::Result<Bytes>>),
    Peer(peercache_net::ObjectBody),
}

impl Body {
    async fn next(&mut self) -> Option<Result<Bytes, String>> {
        match self {
            Body::Http(s) => s.next().await.map(|r| r.map_err(|e| e.to_string())),
            Body::Peer(b) => b.next_chunk().await.map_err(|e| e.to_string()).transpose(),
        }
    }
}

/// Opens bytes `first..=last` of the object at `source` (`whole`: all of it).
async fn open_range(
    job: &Job,
    source: &SourceRef,
    first: u64,
    last: u64,
    whole: bool,
) -> Result<Body, WorkerError> {
    match &source.kind {
        SourceKind::Server(base) => {
            let mut req = job
                .client
                .http()
                .get(format!(
                    "{}/v1/objects/{}",
                    base.trim_end_matches('/'),
                    job.plan.hash
                ))
                .timeout(Duration::from_secs(3600));
            if !whole {
                req = req.header(reqwest::header::RANGE, format!("bytes={first}-{last}"));
            }
            let resp = req
                .send()
                .await
                .map_err(|e| WorkerError::Failed(e.to_string()))?;
            let ok = resp.status() == reqwest::StatusCode::PARTIAL_CONTENT
                || (whole && resp.status() == reqwest::StatusCode::OK);
            if !ok {
                return Err(WorkerError::Failed(format!("status {}", resp.status())));
            }
            Ok(Body::Http(resp.bytes_stream().boxed()))
        }
        SourceKind::Peer(dial) => {
            let range = (!whole).then_some((first, last));
            let (header, body) = job
                .client
                .dialer()
                .object(&source.id, dial, job.plan.hash, range)
                .await
                .map_err(|e| WorkerError::Failed(e.to_string()))?;
            if header.size.is_some_and(|s| s != job.plan.size) {
                return Err(WorkerError::Mismatch);
            }
            let direct = body.is_direct();
            lock(&job.shared).paths.insert(source.id.clone(), direct);
            Ok(Body::Peer(body))
        }
    }
}

#[derive(Debug)]
enum WorkerError {
    Mismatch,
    Failed(String),
}

#[derive(Debug, Default)]
struct Shared {
    queue: VecDeque<(u64, u64)>,
    done: Vec<bool>,
    by_source: HashMap<String, u64>,
    /// Whether each peer's connection went direct.
    paths: HashMap<String, bool>,
}

fn lock(m: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct Job {
    client: Arc<Client>,
    plan: Plan,
    cvs: Arc<Vec<peercache_core::verified::ChainingValue>>,
    file: Arc<std::fs::File>,
    shared: Arc<Mutex<Shared>>,
    progress: Arc<Notify>,
}

async fn fetch_outboard(
    client: &Client,
    source: &SourceRef,
    plan: &Plan,
) -> Result<Vec<peercache_core::verified::ChainingValue>, WorkerError> {
    let limit = group_count(plan.size) * 32;
    let body = match &source.kind {
        SourceKind::Server(base) => {
            let resp = client
                .http()
                .get(format!(
                    "{}/v1/objects/{}/outboard",
                    base.trim_end_matches('/'),
                    plan.hash
                ))
                .timeout(Duration::from_secs(30))
                .send()
                .await
                .map_err(|e| WorkerError::Failed(e.to_string()))?;
            if !resp.status().is_success() {
                return Err(WorkerError::Failed(format!(
                    "outboard: status {}",
                    resp.status()
                )));
            }
            if resp.content_length().is_some_and(|l| l > limit) {
                return Err(WorkerError::Mismatch);
            }
            resp.bytes()
                .await
                .map_err(|e| WorkerError::Failed(e.to_string()))?
                .to_vec()
        }
        SourceKind::Peer(dial) => client
            .dialer()
            .outboard(&source.id, dial, plan.hash, limit)
            .await
            .map_err(|e| match e {
                // Longer than the object's CVs can be: a liar.
                peercache_net::PeerError::TooLong(_) => WorkerError::Mismatch,
                other => WorkerError::Failed(other.to_string()),
            })?,
    };
    verify_outboard(&plan.hash, plan.size, &body).map_err(|_| WorkerError::Mismatch)
}

async fn worker(job: Arc<Job>, source: SourceRef) -> (SourceRef, Result<(), WorkerError>) {
    let result = worker_inner(&job, &source).await;
    (source, result)
}

async fn worker_inner(job: &Job, source: &SourceRef) -> Result<(), WorkerError> {
    let size = job.plan.size;
    loop {
        let Some((g0, g1)) = lock(&job.shared).queue.pop_front() else {
            return Ok(());
        };
        let mut g = g0;
        let outcome = async {
            let first = g0 * GROUP;
            let last = (g1 * GROUP).min(size).saturating_sub(1);
            let whole = first == 0 && last + 1 >= size;
            let mut stream = open_range(job, source, first, last, whole).await?;
            let mut buf = BytesMut::new();
            // Verified groups are written in batches of up to a segment (1 MiB).
            let mut batch = BytesMut::new();
            let mut batch_start = g;
            let floor = if source.is_server() {
                0
            } else {
                job.plan.floor
            };
            let (mut window_start, mut window_bytes) = (Instant::now(), 0u64);
            let mut idle = Duration::ZERO;
            while g < g1 {
                let need = group_len(size, g) as usize;
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
                        flush(job, source, &mut batch, batch_start, g).await?;
                        return Err(WorkerError::Failed(failure));
                    }
                }
                let bytes = buf.split_to(need).freeze();
                if !verify_group(&job.plan.hash, size, &job.cvs, g, &bytes) {
                    flush(job, source, &mut batch, batch_start, g).await?;
                    return Err(WorkerError::Mismatch);
                }
                batch.extend_from_slice(&bytes);
                g += 1;
                if batch.len() >= (SEGMENT_GROUPS * GROUP) as usize || g == g1 {
                    flush(job, source, &mut batch, batch_start, g).await?;
                    batch_start = g;
                }
            }
            Ok(())
        }
        .await;
        if let Err(e) = outcome {
            // Give back what this source did not deliver, and stop using it.
            if g < g1 {
                lock(&job.shared).queue.push_front((g, g1));
            }
            job.progress.notify_one();
            return Err(e);
        }
    }
}

/// Writes verified groups `[first, end)` held in `batch` at their offset and marks
/// them done.
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
        tokio::task::spawn_blocking(move || file.write_all_at(&data, first * GROUP))
            .await
            .map_err(|e| WorkerError::Failed(e.to_string()))?
            .map_err(|e| WorkerError::Failed(format!("writing the cache: {e}")))?;
    }
    {
        let mut sh = lock(&job.shared);
        for g in first..end {
            sh.done[g as usize] = true;
        }
        *sh.by_source.entry(source.id.clone()).or_default() += n;
    }
    let counters = &job.client.counters;
    if source.is_server() {
        counters
            .bytes_from_server
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        counter!("peercache_bytes_from_server_total").increment(n);
    } else {
        job.client
            .note_peer_bytes(&job.plan.origin, &source.id, &source.display(), n);
        counters
            .bytes_from_peers
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        counter!("peercache_bytes_from_peers_total").increment(n);
    }
    job.progress.notify_one();
    Ok(())
}

/// Runs the download; verified bytes go to `tx` in order. Returns the source that
/// sent the most bytes.
pub async fn run(
    client: Arc<Client>,
    plan: Plan,
    tx: mpsc::Sender<Result<Bytes, FetchError>>,
) -> Result<Source, FetchError> {
    let started = Instant::now();
    let mut candidates: VecDeque<SourceRef> = plan
        .peers
        .iter()
        .filter(|p| p.id != SERVER_PROXY_ID)
        .filter_map(SourceRef::peer)
        .collect();
    let server = SourceRef {
        id: SERVER_PROXY_ID.to_string(),
        kind: SourceKind::Server(plan.server.clone()),
    };

    // 1. The outboard, from a peer whose list adds up to the server's hash.
    let mut cvs = Vec::new();
    if plan.size > GROUP {
        let mut found = None;
        while let Some(src) = candidates.pop_front() {
            match fetch_outboard(&client, &src, &plan).await {
                Ok(list) => {
                    found = Some(list);
                    candidates.push_front(src);
                    break;
                }
                Err(WorkerError::Mismatch) => {
                    client
                        .note_mismatch(&plan.origin, plan.hash, &src.id, started.elapsed())
                        .await;
                }
                Err(WorkerError::Failed(e)) => {
                    tracing::info!(peer = %src.id, error = %e, "peer unusable");
                    client
                        .report(
                            plan.origin.clone(),
                            failed_report(&plan, &src.id, started.elapsed()),
                        )
                        .await;
                }
            }
        }
        cvs = match found {
            Some(list) => list,
            None if plan.server.is_empty() => {
                return Err(FetchError::ServerDown("no peer could prove the object"));
            }
            None => fetch_outboard(&client, &server, &plan)
                .await
                .map_err(|_| FetchError::Status(502))?,
        };
    }

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
    let tmp = client.cache().temp_path();
    let file = std::fs::OpenOptions::new()
        .create_new(true)
        .read(true)
        .write(true)
        .open(&tmp)
        .and_then(|f| f.set_len(plan.size).map(|()| f));
    let file = match file {
        Ok(f) => Arc::new(f),
        Err(e) => {
            tracing::warn!(error = %e, "cannot create a temp file in the cache");
            return Err(FetchError::Status(507));
        }
    };
    let job = Arc::new(Job {
        client: client.clone(),
        plan: plan.clone(),
        cvs: Arc::new(cvs),
        file: file.clone(),
        shared: Arc::new(Mutex::new(Shared {
            queue,
            done: vec![false; groups as usize],
            by_source: HashMap::new(),
            paths: HashMap::new(),
        })),
        progress: Arc::new(Notify::new()),
    });
    let mut workers = tokio::task::JoinSet::new();
    while workers.len() < parallel {
        let Some(src) = candidates.pop_front() else {
            break;
        };
        workers.spawn(worker(job.clone(), src));
    }
    // With no server (it is down), "started" means "never to be started".
    let mut server_started = plan.server.is_empty();
    if workers.is_empty() && !server_started {
        server_started = true;
        workers.spawn(worker(job.clone(), server.clone()));
    }

    let cleanup = |tmp: &std::path::Path| {
        let _ = std::fs::remove_file(tmp);
    };
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
            let len = ((run * GROUP).min(plan.size) - offset) as usize;
            let f = file.clone();
            let bytes = tokio::task::spawn_blocking(move || {
                let mut buf = vec![0u8; len];
                f.read_exact_at(&mut buf, offset).map(|()| buf)
            })
            .await;
            let Ok(Ok(bytes)) = bytes else {
                workers.abort_all();
                cleanup(&tmp);
                return Err(FetchError::Status(500));
            };
            if tx.send(Ok(Bytes::from(bytes))).await.is_err() {
                // The browser went away.
                workers.abort_all();
                cleanup(&tmp);
                return Err(FetchError::Cancelled);
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
                        WorkerError::Mismatch => client.note_mismatch(&plan.origin, plan.hash, &src.id, started.elapsed()).await,
                        WorkerError::Failed(why) => {
                            tracing::info!(source = %src.id, error = %why, "source failed; resuming elsewhere");
                            if !src.is_server() {
                                client.report(plan.origin.clone(), failed_report(&plan, &src.id, started.elapsed())).await;
                            }
                        }
                    }
                    if src.is_server() {
                        workers.abort_all();
                        cleanup(&tmp);
                        return Err(FetchError::Status(502));
                    }
                }
                let pending = !lock(&job.shared).queue.is_empty();
                if pending {
                    if let Some(src) = candidates.pop_front() {
                        workers.spawn(worker(job.clone(), src));
                    } else if workers.is_empty() && !server_started {
                        server_started = true;
                        workers.spawn(worker(job.clone(), server.clone()));
                    }
                }
            }
        }
        if workers.is_empty()
            && next < groups
            && lock(&job.shared).queue.is_empty()
            && !lock(&job.shared).done.iter().all(|d| *d)
        {
            // Nothing queued, nobody working, not done: cannot happen, but never hang.
            cleanup(&tmp);
            return Err(FetchError::Status(500));
        }
        if workers.is_empty() && !lock(&job.shared).queue.is_empty() {
            if server_started {
                // Every peer failed and there is no server to finish the job.
                cleanup(&tmp);
                return Err(FetchError::ServerDown("every peer failed"));
            }
            server_started = true;
            workers.spawn(worker(job.clone(), server.clone()));
        }
    }
    workers.abort_all();

    // 3. Keep, announce, report.
    let by_source = std::mem::take(&mut lock(&job.shared).by_source);
    let paths = std::mem::take(&mut lock(&job.shared).paths);
    let cache = client.cache().clone();
    let (hash, size) = (plan.hash, plan.size);
    let outboard = job
        .cvs
        .iter()
        .flat_map(|cv| cv.iter().copied())
        .collect::<Vec<u8>>();
    let kept = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<ObjectHash>> {
        file.sync_all()?;
        drop(file);
        let dropped = cache.adopt(&hash, &tmp, size)?;
        cache.store_outboard(&hash, &outboard);
        Ok(dropped)
    })
    .await;
    match kept {
        Ok(Ok(dropped)) => {
            if let Err(e) = client.announce(&plan.origin, &[plan.hash], &[]).await {
                tracing::warn!(error = %e, "announce failed");
            }
            client.announce_dropped(&dropped).await;
        }
        _ => {
            counter!("peercache_cache_write_failures_total").increment(1);
            tracing::warn!(hash = %plan.hash, "could not keep the object; not sharing it");
        }
    }
    let took = started.elapsed();
    for (id, bytes) in &by_source {
        if id != SERVER_PROXY_ID {
            client.remember(id, *bytes, took);
            if paths.get(id) == Some(&false) {
                counter!("peercache_bytes_from_peers_relayed_total").increment(*bytes);
            }
            let served = SourceReport {
                hash: plan.hash,
                source: id.clone(),
                outcome: Outcome::Served,
                bytes: *bytes,
                took,
                direct: paths.get(id).copied(),
            };
            client.report(plan.origin.clone(), served).await;
        }
    }
    let main = by_source
        .iter()
        .max_by_key(|(_, b)| **b)
        .map(|(id, _)| id.clone());
    Ok(match main {
        Some(id) if id != SERVER_PROXY_ID => Source::Peer(id),
        _ => Source::Server,
    })
}
