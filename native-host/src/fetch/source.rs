//! The sources a download takes bytes from: the server over HTTP (by hash,
//! `/v1/objects/{hash}`), or a peer over its QUIC connection, and how one
//! range of an object is opened at either.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use peercache_core::hash::ObjectHash;
use peercache_core::peer::DialInfo;
use peercache_core::pieces::HaveMap;
use peercache_core::protocol::{Proxy, SERVER_PROXY_ID};
use peercache_core::verified::group_count;

/// How a failed source failed; every failure is tied to its source.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// It sent bytes or verification data that do not match the server's hash.
    #[error("sent bytes that do not match the server's hash")]
    Mismatch,
    /// It could not be reached, broke off, stalled or was too slow.
    #[error("{0}")]
    Failed(String),
    /// It does not hold what was asked (yet: a peer still downloading may
    /// later).
    #[error("does not hold it")]
    NotHeld,
    /// It is busy (every upload slot taken, or a `503` with `Retry-After`): not
    /// a failure; ask again after this long.
    #[error("busy; ask again in {} ms", .0.as_millis())]
    Busy(Duration),
}

/// Longest wait a busy source's `retry after` is taken at (a larger one is cut
/// to this; the transfer's busy budget bounds the total).
pub const MAX_BUSY_WAIT: Duration = Duration::from_secs(5);

/// The wait a busy answer asks for, kept within `50 ms..=MAX_BUSY_WAIT`.
fn busy_wait(ms: u64) -> Duration {
    Duration::from_millis(ms).clamp(Duration::from_millis(50), MAX_BUSY_WAIT)
}

/// A peer's refusal, typed: busy or rate-limited is a wait, the rest a failure.
fn peer_failure(e: peercache_net::PeerError) -> SourceError {
    use peercache_core::peer::PeerStatus;
    match e {
        peercache_net::PeerError::Refused(
            PeerStatus::Busy { retry_after_ms } | PeerStatus::RateLimited { retry_after_ms },
        ) => SourceError::Busy(busy_wait(retry_after_ms)),
        peercache_net::PeerError::Refused(PeerStatus::NotHeld) => SourceError::NotHeld,
        other => SourceError::Failed(other.to_string()),
    }
}

/// A `503` or `429` with a `Retry-After` in seconds: busy for that long.
fn http_busy(resp: &reqwest::Response) -> Option<SourceError> {
    if resp.status() != reqwest::StatusCode::SERVICE_UNAVAILABLE
        && resp.status() != reqwest::StatusCode::TOO_MANY_REQUESTS
    {
        return None;
    }
    let secs: u64 = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(SourceError::Busy(busy_wait(secs.saturating_mul(1000))))
}

/// The parts a transfer talks through.
#[derive(Debug, Clone)]
pub struct Transport {
    /// HTTP to the server.
    pub http: reqwest::Client,
    /// QUIC to peers.
    pub dialer: Arc<peercache_net::PeerDialer>,
    /// Signs the requests that must name this peer (the seed's).
    pub link: Arc<crate::server_link::ServerLink>,
}

/// One source: the server or a peer.
#[derive(Debug, Clone)]
pub struct SourceRef {
    /// Its id (`server` for the server).
    pub id: String,
    kind: SourceKind,
}

#[derive(Debug, Clone)]
enum SourceKind {
    /// The server's base URL.
    Server(String),
    /// How to dial the peer.
    Peer(DialInfo),
}

impl SourceRef {
    /// The server at `base` (its own URL).
    pub fn server(base: &str) -> Self {
        Self {
            id: SERVER_PROXY_ID.to_string(),
            kind: SourceKind::Server(base.to_string()),
        }
    }

    /// A listed peer, if its dial info parses.
    pub fn peer(p: &Proxy) -> Option<Self> {
        let dial = DialInfo::parse(&p.addr).ok()?;
        Some(Self {
            id: p.id.clone(),
            kind: SourceKind::Peer(dial),
        })
    }

    /// Whether this is the server.
    pub fn is_server(&self) -> bool {
        matches!(self.kind, SourceKind::Server(_))
    }

    fn object_url(base: &str, hash: &ObjectHash, suffix: &str) -> String {
        format!("{}/v1/objects/{hash}{suffix}", base.trim_end_matches('/'))
    }

    /// The object's verification data (at most `limit` bytes; longer is a lie).
    pub async fn outboard(
        &self,
        transport: &Transport,
        hash: ObjectHash,
        limit: u64,
    ) -> Result<Vec<u8>, SourceError> {
        match &self.kind {
            SourceKind::Server(base) => {
                let resp = transport
                    .http
                    .get(Self::object_url(base, &hash, "/outboard"))
                    .timeout(Duration::from_secs(30))
                    .send()
                    .await
                    .map_err(|e| SourceError::Failed(e.to_string()))?;
                if !resp.status().is_success() {
                    return Err(SourceError::Failed(format!(
                        "outboard: status {}",
                        resp.status()
                    )));
                }
                if resp.content_length().is_some_and(|l| l > limit) {
                    return Err(SourceError::Mismatch);
                }
                let mut body = Vec::new();
                let mut stream = resp.bytes_stream();
                while let Some(chunk) = stream.next().await {
                    let chunk = chunk.map_err(|e| SourceError::Failed(e.to_string()))?;
                    if (body.len() + chunk.len()) as u64 > limit {
                        return Err(SourceError::Mismatch);
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(body)
            }
            SourceKind::Peer(dial) => transport
                .dialer
                .outboard(&self.id, dial, hash, limit)
                .await
                .map_err(|e| match e {
                    // Longer than the object's CVs can be: a liar.
                    peercache_net::PeerError::TooLong(_) => SourceError::Mismatch,
                    other => peer_failure(other),
                }),
        }
    }

    /// Which groups of the object the source holds: `None` for all of it (the
    /// server; a peer that does not know the question, which is then asked for
    /// ranges as a holder); an empty map from a peer that holds none yet (a
    /// download that has not begun). A map of the wrong size, or a size other
    /// than the object's, is a lie.
    pub async fn have(
        &self,
        transport: &Transport,
        hash: ObjectHash,
        size: u64,
    ) -> Result<Option<HaveMap>, SourceError> {
        let SourceKind::Peer(dial) = &self.kind else {
            return Ok(None);
        };
        let groups = group_count(size);
        let max = HaveMap::byte_len(groups) as u64;
        match transport.dialer.have(&self.id, dial, hash, max).await {
            Ok((stated, bytes)) => {
                if stated.is_some_and(|s| s != size) {
                    return Err(SourceError::Mismatch);
                }
                HaveMap::from_bytes(groups, &bytes)
                    .map(Some)
                    .map_err(|_| SourceError::Mismatch)
            }
            Err(peercache_net::PeerError::TooLong(_)) => Err(SourceError::Mismatch),
            Err(peercache_net::PeerError::Refused(peercache_core::peer::PeerStatus::NotHeld)) => {
                Ok(Some(HaveMap::empty(groups)))
            }
            Err(peercache_net::PeerError::Refused(
                peercache_core::peer::PeerStatus::BadRequest { .. },
            )) => Ok(None),
            Err(e) => Err(peer_failure(e)),
        }
    }

    /// Asks the server, as a seed, for pieces this download lacks (`has`:
    /// the groups it holds or is fetching): their inclusive byte range and
    /// their bytes, or `None` when the server has nothing to seed it. A range
    /// that is not a run of whole pieces of the object is a failure; a peer
    /// has no such request (`None`).
    pub async fn seed_piece(
        &self,
        transport: &Transport,
        hash: ObjectHash,
        size: u64,
        has: &HaveMap,
    ) -> Result<Option<((u64, u64), Body)>, SourceError> {
        let SourceKind::Server(base) = &self.kind else {
            return Ok(None);
        };
        // Signed: the server seeds only the peers receiving the object.
        let auth = transport.link.sign_post(
            &format!("/v1/objects/{}/piece", hash.to_hex()),
            has.as_bytes(),
        );
        let resp = transport
            .http
            .post(Self::object_url(base, &hash, "/piece"))
            .header(peercache_core::headers::AUTH, auth)
            .body(has.as_bytes().to_vec())
            .timeout(Duration::from_secs(3600))
            .send()
            .await
            .map_err(|e| SourceError::Failed(e.to_string()))?;
        if let Some(busy) = http_busy(&resp) {
            return Err(busy);
        }
        match resp.status() {
            reqwest::StatusCode::NO_CONTENT => return Ok(None),
            reqwest::StatusCode::PARTIAL_CONTENT => {}
            other => return Err(SourceError::Failed(format!("seed: status {other}"))),
        }
        let range = resp
            .headers()
            .get(reqwest::header::CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(peercache_core::headers::parse_content_range)
            .filter(|(first, last, total)| *total == size && is_piece_run(size, (*first, *last)))
            .ok_or_else(|| SourceError::Failed("seed: not whole pieces of the object".into()))?;
        Ok(Some((
            (range.0, range.1),
            Body::Http(resp.bytes_stream().boxed()),
        )))
    }

    /// Opens bytes `first..=last` of the object (`whole`: all of it). For a peer,
    /// also says whether the connection went direct. `remaining`: what a
    /// swarm download still lacks (a peer serving a crowd serves whoever is
    /// nearest the end first).
    pub async fn open_range(
        &self,
        transport: &Transport,
        hash: ObjectHash,
        size: u64,
        (first, last): (u64, u64),
        whole: bool,
        remaining: Option<u64>,
    ) -> Result<(Body, Option<bool>), SourceError> {
        match &self.kind {
            SourceKind::Server(base) => {
                let mut req = transport
                    .http
                    .get(Self::object_url(base, &hash, ""))
                    .timeout(Duration::from_secs(3600));
                if !whole {
                    req = req.header(reqwest::header::RANGE, format!("bytes={first}-{last}"));
                }
                let resp = req
                    .send()
                    .await
                    .map_err(|e| SourceError::Failed(e.to_string()))?;
                let ok = resp.status() == reqwest::StatusCode::PARTIAL_CONTENT
                    || (whole && resp.status() == reqwest::StatusCode::OK);
                if let Some(busy) = http_busy(&resp) {
                    return Err(busy);
                }
                if !ok {
                    return Err(SourceError::Failed(format!("status {}", resp.status())));
                }
                Ok((Body::Http(resp.bytes_stream().boxed()), None))
            }
            SourceKind::Peer(dial) => {
                let range = (!whole).then_some((first, last));
                let (header, body) = transport
                    .dialer
                    .object_in_swarm(&self.id, dial, hash, range, remaining)
                    .await
                    .map_err(peer_failure)?;
                if header.size.is_some_and(|s| s != size) {
                    return Err(SourceError::Mismatch);
                }
                let direct = body.is_direct();
                Ok((Body::Peer(body), Some(direct)))
            }
        }
    }
}

/// Whether `first..=last` is a run of whole pieces of an object of `size`
/// bytes (the last piece may be short).
fn is_piece_run(size: u64, (first, last): (u64, u64)) -> bool {
    use peercache_core::pieces::{PIECE_GROUPS, range_groups};
    let groups = group_count(size);
    range_groups(size, (first, last))
        .is_some_and(|(g0, g1)| g0 % PIECE_GROUPS == 0 && (g1 % PIECE_GROUPS == 0 || g1 == groups))
}

/// A body arriving from a source, read piece by piece.
pub enum Body {
    /// From the server.
    Http(futures_util::stream::BoxStream<'static, reqwest::Result<Bytes>>),
    /// From a peer.
    Peer(peercache_net::ObjectBody),
}

impl Body {
    /// The next piece; `None` at the end.
    pub async fn next(&mut self) -> Option<Result<Bytes, String>> {
        match self {
            Body::Http(s) => s.next().await.map(|r| r.map_err(|e| e.to_string())),
            Body::Peer(b) => b.next_chunk().await.map_err(|e| e.to_string()).transpose(),
        }
    }
}
