//! The requesting side of the peer protocol: connections by peer id (pooled,
//! bounded), and one call per operation. Every call has a deadline and every
//! body a cap by what it can legitimately be.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use iroh::endpoint::{Connection, RecvStream};
use iroh::{Endpoint, EndpointAddr, EndpointId, TransportAddr};
use peercache_core::hash::ObjectHash;
use peercache_core::peer::{ALPN, DialInfo, PeerRequest, PeerResponse, PeerStatus};
use peercache_core::protocol::{Load, LocateResponse};

use crate::PeerError;
use crate::wire::{read_frame, write_frame};

/// Most connections kept open to other peers.
pub const MAX_POOLED: usize = 256;
/// Longest a dial may take (relay round trips included).
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest the answer's header may take to arrive.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest piece read from a stream at once.
const READ_CHUNK: usize = 64 * 1024;

/// What a ping found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pinged {
    /// Round trip of the request (the connection already set up).
    pub rtt: Duration,
    /// The peer's load.
    pub load: Option<Load>,
    /// Whether the connection's selected path is direct (not the relay).
    pub direct: bool,
}

/// Connections to peers by id.
#[derive(Debug)]
pub struct PeerDialer {
    endpoint: Endpoint,
    pool: Mutex<HashMap<EndpointId, Connection>>,
}

/// True when the connection's selected path goes direct, not through a relay.
pub fn is_direct(conn: &Connection) -> bool {
    conn.paths().iter().any(|p| p.is_selected() && p.is_ip())
}

fn parse_id(id: &str) -> Result<EndpointId, PeerError> {
    if !peercache_core::auth::is_peer_key(id) {
        return Err(PeerError::BadId(id.chars().take(80).collect()));
    }
    id.parse().map_err(|_| PeerError::BadId(id.to_string()))
}

/// The iroh address of a peer.
pub fn endpoint_addr(id: EndpointId, dial: &DialInfo) -> EndpointAddr {
    let relay = dial
        .relay
        .as_deref()
        .and_then(|u| u.parse().ok())
        .map(TransportAddr::Relay);
    EndpointAddr::from_parts(
        id,
        relay
            .into_iter()
            .chain(dial.direct.iter().copied().map(TransportAddr::Ip)),
    )
}

/// A body on its way: at most the announced length is read, and less is an error.
#[derive(Debug)]
pub struct ObjectBody {
    recv: RecvStream,
    left: u64,
    conn: Connection,
}

impl ObjectBody {
    /// The next piece, `None` at the end. Fails if the stream ends early.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, PeerError> {
        if self.left == 0 {
            return Ok(None);
        }
        let max = usize::try_from(self.left)
            .unwrap_or(usize::MAX)
            .min(READ_CHUNK);
        match self.recv.read_chunk(max).await {
            Ok(Some(chunk)) => {
                self.left -= chunk.len() as u64;
                Ok(Some(chunk))
            }
            Ok(None) => Err(PeerError::Truncated),
            Err(e) => Err(PeerError::Stream(e.to_string())),
        }
    }

    /// Bytes still to come.
    pub fn remaining(&self) -> u64 {
        self.left
    }

    /// Whether the connection carrying it goes direct now.
    pub fn is_direct(&self) -> bool {
        is_direct(&self.conn)
    }
}

impl PeerDialer {
    /// A dialer on `endpoint`.
    pub fn new(endpoint: Endpoint) -> Self {
        Self {
            endpoint,
            pool: Mutex::new(HashMap::new()),
        }
    }

    /// The endpoint.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    fn pooled(&self, id: &EndpointId) -> Option<Connection> {
        let pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        pool.get(id).filter(|c| c.close_reason().is_none()).cloned()
    }

    fn keep(&self, id: EndpointId, conn: Connection) {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() >= MAX_POOLED {
            pool.retain(|_, c| c.close_reason().is_none());
        }
        if pool.len() >= MAX_POOLED
            && let Some(victim) = pool.keys().next().copied()
        {
            pool.remove(&victim);
        }
        pool.insert(id, conn);
    }

    fn forget(&self, id: &EndpointId) {
        self.pool
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }

    /// Drops the pooled connection to `id` (it stopped answering), so the next
    /// call dials afresh.
    pub fn disconnect(&self, id: &str) {
        if let Ok(id) = parse_id(id) {
            self.forget(&id);
        }
    }

    /// A connection to `id`, from the pool or newly dialed.
    pub async fn connect(&self, id: &str, dial: &DialInfo) -> Result<Connection, PeerError> {
        let id = parse_id(id)?;
        if let Some(c) = self.pooled(&id) {
            return Ok(c);
        }
        if dial.is_empty() {
            return Err(PeerError::NoAddress);
        }
        let conn = tokio::time::timeout(
            DIAL_TIMEOUT,
            self.endpoint.connect(endpoint_addr(id, dial), ALPN),
        )
        .await
        .map_err(|_| PeerError::DialTimeout)?
        .map_err(|e| PeerError::Dial(e.to_string()))?;
        self.keep(id, conn.clone());
        Ok(conn)
    }

    /// Sends `req` on a new stream and reads the answer's header. A pooled
    /// connection that turns out dead is dialed again once.
    pub async fn request(
        &self,
        id: &str,
        dial: &DialInfo,
        req: &PeerRequest,
    ) -> Result<(PeerResponse, RecvStream, Connection), PeerError> {
        for attempt in 0..2 {
            let conn = self.connect(id, dial).await?;
            let opened = conn.open_bi().await;
            let (mut send, mut recv) = match opened {
                Ok(s) => s,
                Err(e) => {
                    self.forget(&conn.remote_id());
                    if attempt == 0 {
                        continue;
                    }
                    return Err(PeerError::Stream(e.to_string()));
                }
            };
            let exchanged = async {
                write_frame(&mut send, req).await?;
                send.finish()
                    .map_err(|e| PeerError::Stream(e.to_string()))?;
                tokio::time::timeout(ANSWER_TIMEOUT, read_frame::<PeerResponse>(&mut recv))
                    .await
                    .map_err(|_| PeerError::Timeout)?
            }
            .await;
            return match exchanged {
                Ok(header) => Ok((header, recv, conn)),
                Err(e) => {
                    // A peer that went silent: the next call dials afresh.
                    self.forget(&conn.remote_id());
                    Err(e)
                }
            };
        }
        Err(PeerError::Stream("connection lost".into()))
    }

    /// A request whose body is read whole, refused past `max` bytes.
    async fn request_body(
        &self,
        id: &str,
        dial: &DialInfo,
        req: &PeerRequest,
        max: u64,
    ) -> Result<(PeerResponse, Vec<u8>), PeerError> {
        let (header, mut recv, _conn) = self.request(id, dial, req).await?;
        if header.status != PeerStatus::Ok {
            return Err(PeerError::Refused(header.status));
        }
        if header.body_len > max {
            return Err(PeerError::TooLong(max));
        }
        let len = usize::try_from(header.body_len).map_err(|_| PeerError::TooLong(max))?;
        let mut body = vec![0u8; len];
        tokio::time::timeout(ANSWER_TIMEOUT, recv.read_exact(&mut body))
            .await
            .map_err(|_| PeerError::Timeout)?
            .map_err(|_| PeerError::Truncated)?;
        Ok((header, body))
    }

    /// Round trip and load; also whether the path is direct.
    pub async fn ping(&self, id: &str, dial: &DialInfo) -> Result<Pinged, PeerError> {
        // Set the connection up first, so the round trip is the request's alone.
        self.connect(id, dial).await?;
        let started = Instant::now();
        let (header, _recv, conn) = self.request(id, dial, &PeerRequest::Ping).await?;
        let rtt = started.elapsed();
        if header.status != PeerStatus::Ok {
            return Err(PeerError::Refused(header.status));
        }
        Ok(Pinged {
            rtt,
            load: header.load,
            direct: is_direct(&conn),
        })
    }

    /// Waits up to `wait` for the connection to `id` to leave the relay for a
    /// direct path (hole punching completes a few round trips after connect).
    pub async fn wait_direct(&self, id: &str, dial: &DialInfo, wait: Duration) -> bool {
        let Ok(conn) = self.connect(id, dial).await else {
            return false;
        };
        let deadline = Instant::now() + wait;
        loop {
            if is_direct(&conn) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The group CVs of `hash`, at most `max` bytes.
    pub async fn outboard(
        &self,
        id: &str,
        dial: &DialInfo,
        hash: ObjectHash,
        max: u64,
    ) -> Result<Vec<u8>, PeerError> {
        self.request_body(id, dial, &PeerRequest::Outboard { hash }, max)
            .await
            .map(|(_, b)| b)
    }

    /// Which groups of `hash` the peer holds verified (a have-map of at most
    /// `max` bytes) and the object's size as it states it.
    pub async fn have(
        &self,
        id: &str,
        dial: &DialInfo,
        hash: ObjectHash,
        max: u64,
    ) -> Result<(Option<u64>, Vec<u8>), PeerError> {
        self.request_body(id, dial, &PeerRequest::Have { hash }, max)
            .await
            .map(|(h, b)| (h.size, b))
    }

    /// The bytes `first..=last` of `hash` (or all of it), as a stream whose
    /// length is checked against what was asked.
    pub async fn object(
        &self,
        id: &str,
        dial: &DialInfo,
        hash: ObjectHash,
        range: Option<(u64, u64)>,
    ) -> Result<(PeerResponse, ObjectBody), PeerError> {
        self.object_in_swarm(id, dial, hash, range, None).await
    }

    /// [`PeerDialer::object`] for a swarm download that still lacks
    /// `remaining` bytes of the object (a peer serving a crowd sends first to
    /// whoever is nearest the end).
    pub async fn object_in_swarm(
        &self,
        id: &str,
        dial: &DialInfo,
        hash: ObjectHash,
        range: Option<(u64, u64)>,
        remaining: Option<u64>,
    ) -> Result<(PeerResponse, ObjectBody), PeerError> {
        let req = PeerRequest::Object {
            hash,
            range,
            remaining,
        };
        let (header, recv, conn) = self.request(id, dial, &req).await?;
        if header.status != PeerStatus::Ok {
            return Err(PeerError::Refused(header.status));
        }
        let expected = match (range, header.size) {
            (Some((a, b)), _) => b.saturating_sub(a) + 1,
            (None, Some(size)) => size,
            (None, None) => header.body_len,
        };
        if header.body_len != expected {
            return Err(PeerError::TooLong(expected));
        }
        Ok((
            header.clone(),
            ObjectBody {
                recv,
                left: header.body_len,
                conn,
            },
        ))
    }

    /// A cascade query (M11, a `PeerRequest::Locate`); the answer is capped
    /// at `peercache_core::peer::MAX_LOCATE_BODY`.
    pub async fn locate(
        &self,
        id: &str,
        dial: &DialInfo,
        query: &PeerRequest,
    ) -> Result<LocateResponse, PeerError> {
        let (_, body) = self
            .request_body(id, dial, query, peercache_core::peer::MAX_LOCATE_BODY)
            .await?;
        serde_json::from_slice(&body).map_err(|e| {
            PeerError::Frame(peercache_core::peer::FrameError::Malformed(e.to_string()))
        })
    }
}
