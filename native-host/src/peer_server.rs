//! The peer server ("proxy server client"): other peers fetch cached objects here,
//! over QUIC connections dialed by this host's key (`peercache_net`), on the ALPN
//! `peercache_core::peer::ALPN`. One request per stream:
//!
//! - `ping` → the load (slots in use against the limit);
//! - `outboard {hash}` → the group CVs for verified streaming (B1);
//! - `have {hash}` → which groups it holds (a have-map: all of a cached
//!   object, the verified ones of a download in progress);
//! - `object {hash, range, remaining}` → the bytes; `busy` with a retry-after
//!   when every upload slot is taken (M12), `rate_limited` for a requester
//!   asking too often. A swarm download says how much it still lacks
//!   (`remaining`): such uploads take turns, nearest the end first
//!   (`crate::upload_turns`);
//! - `locate {object, site, ttl, qid}` → the server-silent cascade query (M10,
//!   M11), by the digests of the URL and its origin: a peer answers only about
//!   what it knows already and learns no URL.
//!
//! Only verified bytes are ever served: what is in the cache, and the verified
//! groups of a download in progress (`crate::partial`, a range of whole
//! groups all marked in its have-map). Paths are built from a parsed hash alone. No plain-TCP port is opened; `/metrics` is on the operator-only
//! listener (see `node`).

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use iroh::endpoint::{Connection, RecvStream, SendStream};
use iroh::protocol::{AcceptError, ProtocolHandler};
use metrics::counter;
use peercache_core::hash::ObjectHash;
use peercache_core::peer::{PeerRequest, PeerResponse, PeerStatus};
use peercache_core::pieces::HaveMap;
use peercache_core::protocol::{LocateResponse, Proxy};
use peercache_core::verified::group_count;
use peercache_net::wire::{read_frame, write_frame};

use crate::cache::Cache;
use crate::counters::{Counted, HostCounters};
use crate::workload::Workload;

/// Most peer connections served at once; more are closed at once.
pub const MAX_CONNECTIONS: usize = 512;
/// Most connections served at once from one remote address (many visitors may
/// share one public address behind a NAT).
pub const MAX_CONNECTIONS_PER_ADDRESS: usize = 64;
/// Most connections served at once for one remote key (an honest dialer keeps
/// one per peer).
pub const MAX_CONNECTIONS_PER_KEY: usize = 4;
/// Longest a requester may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest one piece of an upload may wait for the reader: a reader that stops
/// reading loses its slot.
const WRITE_TIMEOUT: Duration = Duration::from_secs(20);
/// Size of the pieces an upload is read and sent in: one read each, handed to
/// the transport without a copy. At most two are held per upload slot (the one
/// being sent and the one read ahead).
const UPLOAD_CHUNK: usize = 256 * 1024;

/// State of the peer server.
#[derive(Debug, Clone)]
pub struct PeerState {
    /// The cache served from.
    pub cache: Cache,
    /// Workload limits.
    pub slots: Arc<Workload>,
    /// Counters.
    pub counters: Arc<HostCounters>,
    /// Records and peers met before (to answer and pass on cascade queries).
    pub knowledge: Arc<crate::knowledge::Knowledge>,
    /// QUIC to other peers (to pass cascade queries on).
    pub dialer: Arc<peercache_net::PeerDialer>,
    /// This host's peer id.
    pub peer_id: String,
    /// Cascade queries seen recently (loop protection).
    pub seen: Arc<crate::knowledge::SeenQueries>,
    /// Connections being served.
    pub connections: Arc<AtomicUsize>,
    /// Connections being served per remote address and per remote key.
    pub per_remote: Arc<PerRemote>,
}

/// Connections open per remote address and per remote key (bounded by the
/// total cap: an entry exists only while a connection from it is served).
#[derive(Debug, Default)]
pub struct PerRemote {
    open: std::sync::Mutex<std::collections::HashMap<RemoteKey, usize>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum RemoteKey {
    Address(IpAddr),
    Key([u8; 32]),
}

impl PerRemote {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<RemoteKey, usize>> {
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// True if `remote` already has its cap of connections.
    fn at_cap(&self, remote: &RemoteKey) -> bool {
        let cap = match remote {
            RemoteKey::Address(_) => MAX_CONNECTIONS_PER_ADDRESS,
            RemoteKey::Key(_) => MAX_CONNECTIONS_PER_KEY,
        };
        self.lock().get(remote).copied().unwrap_or(0) >= cap
    }

    /// Counts one more connection from `address` with `key`, unless either is
    /// at its cap.
    fn try_open(self: &Arc<Self>, address: IpAddr, key: [u8; 32]) -> Option<RemoteGuard> {
        let (a, k) = (RemoteKey::Address(address), RemoteKey::Key(key));
        let mut open = self.lock();
        let at = |r: &RemoteKey| open.get(r).copied().unwrap_or(0);
        if at(&a) >= MAX_CONNECTIONS_PER_ADDRESS || at(&k) >= MAX_CONNECTIONS_PER_KEY {
            return None;
        }
        *open.entry(a.clone()).or_default() += 1;
        *open.entry(k.clone()).or_default() += 1;
        Some(RemoteGuard {
            map: self.clone(),
            keys: [a, k],
        })
    }
}

struct RemoteGuard {
    map: Arc<PerRemote>,
    keys: [RemoteKey; 2],
}

impl Drop for RemoteGuard {
    fn drop(&mut self) {
        let mut open = self.map.lock();
        for k in &self.keys {
            if let Some(n) = open.get_mut(k) {
                *n -= 1;
                if *n == 0 {
                    open.remove(k);
                }
            }
        }
    }
}

/// The protocol handler registered for the peer ALPN.
#[derive(Debug, Clone)]
pub struct PeerService(pub PeerState);

impl PeerService {
    /// The gate before the handshake: an attempt past the total cap, or from
    /// an address (or, through a relay, a key) at its cap, is refused before
    /// any cryptography is spent on it; past half the cap, an unvalidated
    /// source is sent a retry first. `accept` counts again after the
    /// handshake (attempts in flight race past this gate; the key of a direct
    /// connection is known only then).
    pub fn incoming_filter(&self) -> iroh::protocol::IncomingFilter {
        let (connections, per_remote) = (self.0.connections.clone(), self.0.per_remote.clone());
        Arc::new(move |incoming: &iroh::endpoint::Incoming| {
            use iroh::endpoint::IncomingAddr;
            use iroh::protocol::IncomingFilterOutcome;
            let remote = match incoming.remote_addr() {
                IncomingAddr::Ip(sa) => Some(RemoteKey::Address(sa.ip())),
                IncomingAddr::Relay { endpoint_id, .. } => {
                    Some(RemoteKey::Key(*endpoint_id.as_bytes()))
                }
                _ => None,
            };
            let open = connections.load(Ordering::Relaxed);
            if open >= MAX_CONNECTIONS || remote.is_some_and(|r| per_remote.at_cap(&r)) {
                counter!("peercache_peer_connections_refused_total").increment(1);
                IncomingFilterOutcome::Reject
            } else if open >= MAX_CONNECTIONS / 2 && !incoming.remote_addr_validated() {
                // Under load, a source proves its address (a QUIC retry)
                // before a handshake is spent on it: spoofed floods stop here.
                IncomingFilterOutcome::Retry
            } else {
                IncomingFilterOutcome::Accept
            }
        })
    }
}

struct ConnectionGuard(Arc<AtomicUsize>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The address a requester is rate-limited by: its direct address, or (when it
/// reaches us only through a relay) a stand-in derived from its key.
fn requester_key(conn: &Connection) -> IpAddr {
    let direct = conn.paths().iter().find_map(|p| match p.remote_addr() {
        iroh::TransportAddr::Ip(sa) => Some(sa.ip()),
        _ => None,
    });
    direct.unwrap_or_else(|| {
        let id = conn.remote_id();
        let mut b = [0u8; 16];
        b.copy_from_slice(&id.as_bytes()[..16]);
        IpAddr::from(b)
    })
}

impl ProtocolHandler for PeerService {
    async fn accept(&self, conn: Connection) -> Result<(), AcceptError> {
        let state = &self.0;
        if state.connections.fetch_add(1, Ordering::Relaxed) >= MAX_CONNECTIONS {
            state.connections.fetch_sub(1, Ordering::Relaxed);
            counter!("peercache_peer_connections_refused_total").increment(1);
            conn.close(1u32.into(), b"too many connections");
            return Ok(());
        }
        let _guard = ConnectionGuard(state.connections.clone());
        let requester = requester_key(&conn);
        let Some(_remote) = state
            .per_remote
            .try_open(requester, *conn.remote_id().as_bytes())
        else {
            counter!("peercache_peer_connections_refused_total").increment(1);
            conn.close(1u32.into(), b"too many connections from you");
            return Ok(());
        };
        // The transport caps the streams open at once per connection.
        while let Ok((send, recv)) = conn.accept_bi().await {
            let state = state.clone();
            tokio::spawn(async move {
                if let Err(e) = serve_stream(&state, requester, send, recv).await {
                    tracing::debug!(error = %e, "peer request failed");
                }
            });
        }
        Ok(())
    }
}

async fn answer(
    send: &mut SendStream,
    header: &PeerResponse,
    body: &[u8],
) -> Result<(), peercache_net::PeerError> {
    write_frame(send, header).await?;
    if !body.is_empty() {
        tokio::time::timeout(WRITE_TIMEOUT, send.write_all(body))
            .await
            .map_err(|_| peercache_net::PeerError::Timeout)?
            .map_err(|e| peercache_net::PeerError::Stream(e.to_string()))?;
    }
    send.finish()
        .map_err(|e| peercache_net::PeerError::Stream(e.to_string()))
}

async fn serve_stream(
    state: &PeerState,
    requester: IpAddr,
    mut send: SendStream,
    mut recv: RecvStream,
) -> Result<(), peercache_net::PeerError> {
    let req = tokio::time::timeout(REQUEST_TIMEOUT, read_frame::<PeerRequest>(&mut recv))
        .await
        .map_err(|_| peercache_net::PeerError::Timeout);
    let req = match req.and_then(|r| r) {
        Ok(r) => r,
        Err(e) => {
            let bad = PeerResponse::status(
                PeerStatus::BadRequest {
                    reason: e.to_string(),
                },
                None,
            );
            return answer(&mut send, &bad, &[]).await;
        }
    };
    let load = Some(state.slots.load());
    match req {
        PeerRequest::Ping => {
            counter!("peercache_peer_pings_total").increment(1);
            answer(&mut send, &PeerResponse::status(PeerStatus::Ok, load), &[]).await
        }
        PeerRequest::Outboard { hash } => {
            let cache = state.cache.clone();
            // A download in progress has its CVs beside its partial file.
            let ob = tokio::task::spawn_blocking(move || {
                if cache.contains(&hash) {
                    cache.outboard(&hash).ok()
                } else {
                    crate::partial::outboard(&cache, &hash)
                }
            })
            .await
            .ok()
            .flatten();
            match ob {
                Some(ob) => {
                    answer(&mut send, &PeerResponse::body(ob.len() as u64, load), &ob).await
                }
                None => {
                    answer(
                        &mut send,
                        &PeerResponse::status(PeerStatus::NotHeld, load),
                        &[],
                    )
                    .await
                }
            }
        }
        PeerRequest::Have { hash } => {
            counter!("peercache_peer_have_requests_total").increment(1);
            if !state.slots.allow_requester(requester) {
                counter!("peercache_requests_rate_limited_total").increment(1);
                let r = PeerResponse::status(
                    PeerStatus::RateLimited {
                        retry_after_ms: 1000,
                    },
                    load,
                );
                return answer(&mut send, &r, &[]).await;
            }
            let cache = state.cache.clone();
            let have = tokio::task::spawn_blocking(move || have_map(&cache, &hash))
                .await
                .ok()
                .flatten();
            match have {
                Some((size, map)) => {
                    let header = PeerResponse {
                        size: Some(size),
                        ..PeerResponse::body(map.as_bytes().len() as u64, load)
                    };
                    answer(&mut send, &header, map.as_bytes()).await
                }
                None => {
                    answer(
                        &mut send,
                        &PeerResponse::status(PeerStatus::NotHeld, load),
                        &[],
                    )
                    .await
                }
            }
        }
        PeerRequest::Locate {
            object,
            site,
            ttl,
            qid,
        } => {
            let found = locate(state, &object, &site, ttl, &qid).await;
            let body = match found {
                Ok(a) => serde_json::to_vec(&a).unwrap_or_default(),
                Err(reason) => {
                    let bad = PeerResponse::status(PeerStatus::BadRequest { reason }, load);
                    return answer(&mut send, &bad, &[]).await;
                }
            };
            answer(
                &mut send,
                &PeerResponse::body(body.len() as u64, load),
                &body,
            )
            .await
        }
        PeerRequest::Object {
            hash,
            range,
            remaining,
        } => upload(state, requester, &mut send, hash, range, remaining).await,
    }
}

/// Which groups of `hash` this host holds: all of a cached object, the
/// verified ones of a download in progress. Blocking.
fn have_map(cache: &Cache, hash: &ObjectHash) -> Option<(u64, HaveMap)> {
    if cache.contains(hash) {
        let size = std::fs::metadata(cache.path_of(hash)).ok()?.len();
        return Some((size, HaveMap::full(group_count(size))));
    }
    crate::partial::held(cache, hash)
}

/// Where an upload reads from: the cached object, or for a range made of
/// verified groups only, the partial file of a download in progress (then
/// `true`).
fn upload_path(
    cache: &Cache,
    hash: &ObjectHash,
    range: Option<(u64, u64)>,
) -> Option<(PathBuf, bool)> {
    if cache.contains(hash) {
        return Some((cache.path_of(hash), false));
    }
    let (size, have) = crate::partial::held(cache, hash)?;
    let whole = (0, size.checked_sub(1)?);
    let (first, end) = peercache_core::pieces::range_groups(size, range.unwrap_or(whole))?;
    have.has_all(first, end)
        .then(|| (crate::partial::data_file(cache, hash), true))
}

/// A cascade query (M11): does this host, or a peer it knows, hold the object
/// whose URL has the digest `object`? Answers with the holders found and the
/// server's signed record; passes the query on with `ttl - 1`, to the peers it
/// knows for the site whose origin has the digest `site`, when it has nothing
/// itself. It learns no URL it did not know already. A query id seen before
/// gets an empty answer, so loops end.
async fn locate(
    state: &PeerState,
    object: &str,
    site: &str,
    ttl: u8,
    qid: &str,
) -> Result<LocateResponse, String> {
    use peercache_core::peer::is_digest;
    if !is_digest(object) || !is_digest(site) || qid.is_empty() || qid.len() > 64 {
        return Err("bad locate query: object and site are 64-hex digests".into());
    }
    counter!("peercache_locate_queries_total").increment(1);
    let mut answer = LocateResponse::default();
    if !state.seen.first_time(qid) {
        return Ok(answer);
    }
    let knowledge = &state.knowledge;
    if let Some(mut rec) = knowledge.record_for_digest(object) {
        // The asker knows the URL (it made the digest); the answer carries
        // none, so a digest overheard elsewhere (on the LAN) reveals nothing.
        rec.record.url = String::new();
        if state.cache.contains(&rec.record.hash) {
            answer.holders.push(Proxy {
                id: state.peer_id.clone(),
                addr: String::new(),
                direct: None,
                rtt_ms: None,
                load: Some(state.slots.load()),
            });
        }
        answer.record = Some(rec);
    }
    let ttl = ttl.min(crate::fetch::LOCATE_TTL);
    if answer.holders.is_empty() && ttl > 0 {
        let me = state.peer_id.clone();
        let ask: Vec<_> = knowledge
            .aux_peers_of_site(site)
            .into_iter()
            .filter(|p| p.id != me)
            .take(8)
            .collect();
        let query = PeerRequest::Locate {
            object: object.to_string(),
            site: site.to_string(),
            ttl: ttl - 1,
            qid: qid.to_string(),
        };
        let found = futures_util::future::join_all(
            ask.iter()
                .map(|p| crate::fetch::discover::locate(&state.dialer, p, &query)),
        )
        .await;
        for f in found {
            if answer.record.is_none() {
                answer.record = f.record;
            }
            for h in f.holders {
                if answer.holders.len() < 32 && !answer.holders.iter().any(|x| x.id == h.id) {
                    answer.holders.push(h);
                }
            }
        }
    }
    Ok(answer)
}

/// Holds one upload slot until dropped.
struct Slot(Arc<Workload>);

impl Slot {
    fn try_take(slots: &Arc<Workload>) -> Option<Self> {
        slots.try_take().then(|| Slot(slots.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.release();
    }
}

/// An object opened for an upload: the file positioned after its first piece,
/// its size, the length asked for, and the first piece itself (for a small object
/// all of it), read in one trip to the blocking pool.
struct Opened {
    file: std::fs::File,
    size: u64,
    len: u64,
    piece: Bytes,
}

/// Why an object could not be opened for an upload.
enum OpenError {
    NotHeld,
    Range,
    Io(std::io::Error),
}

/// Reads up to `want` bytes from the file's position into a fresh buffer (that
/// buffer is handed to the transport as it is: no second copy). Short only at
/// the end of the file.
fn read_piece(file: &mut std::fs::File, want: usize) -> std::io::Result<Bytes> {
    use std::io::Read;
    let mut buf = BytesMut::zeroed(want);
    let mut filled = 0;
    while filled < want {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(filled);
    Ok(buf.freeze())
}

fn piece_len(left: u64) -> usize {
    usize::try_from(left)
        .unwrap_or(UPLOAD_CHUNK)
        .min(UPLOAD_CHUNK)
}

/// Opens the cached object, checks the range against its size and reads the
/// first piece (blocking: run on the blocking pool).
fn open_object(path: std::path::PathBuf, range: Option<(u64, u64)>) -> Result<Opened, OpenError> {
    use std::io::Seek;
    let mut file = std::fs::File::open(path).map_err(|_| OpenError::NotHeld)?;
    let size = file.metadata().map_err(|_| OpenError::NotHeld)?.len();
    let (first, len) = peercache_core::range::span(range, size).ok_or(OpenError::Range)?;
    if first > 0 {
        file.seek(std::io::SeekFrom::Start(first))
            .map_err(OpenError::Io)?;
    }
    let piece = read_piece(&mut file, piece_len(len)).map_err(OpenError::Io)?;
    Ok(Opened {
        file,
        size,
        len,
        piece,
    })
}

/// The next piece, read on the blocking pool while the current one is sent.
fn read_ahead(
    mut file: std::fs::File,
    want: usize,
) -> tokio::task::JoinHandle<std::io::Result<(std::fs::File, Bytes)>> {
    tokio::task::spawn_blocking(move || read_piece(&mut file, want).map(|b| (file, b)))
}

fn stream_error(e: impl std::fmt::Display) -> peercache_net::PeerError {
    peercache_net::PeerError::Stream(e.to_string())
}

async fn upload(
    state: &PeerState,
    requester: IpAddr,
    send: &mut SendStream,
    hash: ObjectHash,
    range: Option<(u64, u64)>,
    remaining: Option<u64>,
) -> Result<(), peercache_net::PeerError> {
    let refuse = |status: PeerStatus| PeerResponse::status(status, Some(state.slots.load()));
    if !state.slots.allow_requester(requester) {
        counter!("peercache_requests_rate_limited_total").increment(1);
        let r = refuse(PeerStatus::RateLimited {
            retry_after_ms: 1000,
        });
        return answer(send, &r, &[]).await;
    }
    let cache = state.cache.clone();
    let path = tokio::task::spawn_blocking(move || upload_path(&cache, &hash, range))
        .await
        .ok()
        .flatten();
    let Some((path, partial)) = path else {
        return answer(send, &refuse(PeerStatus::NotHeld), &[]).await;
    };
    // The slot before the file: a file is open only while its upload holds a
    // slot, so requests cannot use up the descriptors.
    let Some(_slot) = Slot::try_take(&state.slots) else {
        counter!("peercache_uploads_refused_total").increment(1);
        let r = refuse(PeerStatus::Busy {
            retry_after_ms: 1000,
        });
        return answer(send, &r, &[]).await;
    };
    let opened = tokio::task::spawn_blocking(move || open_object(path, range))
        .await
        .map_err(stream_error)?;
    let opened = match opened {
        Ok(o) => o,
        Err(OpenError::NotHeld) => {
            return answer(send, &refuse(PeerStatus::NotHeld), &[]).await;
        }
        Err(OpenError::Range) => {
            return answer(send, &refuse(PeerStatus::RangeNotSatisfiable), &[]).await;
        }
        Err(OpenError::Io(e)) => return Err(stream_error(e)),
    };
    let Opened {
        file,
        size,
        len,
        mut piece,
    } = opened;
    // A crowd's piece (the requester said how much it still lacks): it waits
    // for a turn, whoever is nearest the end first (`crate::upload_turns`).
    let turn = match remaining {
        Some(left) => {
            let turn = state
                .slots
                .turns()
                .take(left, crate::upload_turns::LONGEST_WAIT)
                .await;
            if turn.late {
                counter!("peercache_upload_turns_late_total").increment(1);
            }
            Some(turn)
        }
        None => None,
    };
    let header = PeerResponse {
        size: Some(size),
        ..PeerResponse::body(len, Some(state.slots.load()))
    };
    write_frame(send, &header).await?;
    counter!("peercache_uploads_total").increment(1);
    if partial {
        // Served while this host was still downloading it.
        counter!("peercache_partial_uploads_total").increment(1);
        counter!("peercache_bytes_uploaded_partial_total").increment(len);
    }
    state.cache.touch(&hash);
    let mut left = len;
    let mut file = Some(file);
    while left > 0 {
        if piece.is_empty() {
            // The file shrank under us: break the stream so the reader sees it.
            let _ = send.reset(2u32.into());
            return Err(peercache_net::PeerError::Truncated);
        }
        let n = piece.len() as u64;
        left -= n.min(left);
        // Read the next piece while this one is sent.
        let next = match file.take() {
            Some(f) if left > 0 => Some(read_ahead(f, piece_len(left))),
            _ => None,
        };
        state.slots.throttle(n).await;
        tokio::time::timeout(WRITE_TIMEOUT, send.write_chunk(piece))
            .await
            .map_err(|_| peercache_net::PeerError::Timeout)?
            .map_err(stream_error)?;
        state.counters.add(Counted::Served, n);
        let Some(next) = next else {
            break;
        };
        let (f, p) = next.await.map_err(stream_error)?.map_err(stream_error)?;
        file = Some(f);
        piece = p;
    }
    send.finish().map_err(stream_error)?;
    if turn.is_some() {
        // A turn lasts until the requester has the bytes, not only until they
        // are queued here: the next one's go out as these are acknowledged.
        let _ = tokio::time::timeout(WRITE_TIMEOUT, send.stopped()).await;
    }
    Ok(())
}
