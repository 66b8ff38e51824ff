//! The peers' API, each request signed by the peer's key (a peer is its key,
//! B6): `POST /v1/peers` (register), `/v1/announce` (what it holds, checked:
//! fetched through this server or proven by a possession check) and
//! `/v1/report` (how a referral went, counted only for sources the client was
//! referred to), `/v1/reach` (how the server sees it) and `/v1/sources`
//! (sources that appeared since its referral, for a peer receiving an object).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use metrics::counter;
use peercache_core::headers;
use peercache_core::protocol::{
    Announce, AnnounceResponse, Outcome, Proxy, ReachRequest, ReachResponse, RegisterRequest,
    RegisterResponse, Report, SERVER_PROXY_ID, SourcesRequest,
};

use crate::error::ApiError;
use crate::site::SiteObject;
use crate::state::{AppState, Tally};
use crate::store::{PathWitness, StoreError, now_ms};

/// Most hashes in one announce.
pub const MAX_ANNOUNCE_HASHES: usize = 10_000;
/// Most possession proofs the server runs for one announce.
const MAX_PROOFS_PER_ANNOUNCE: usize = 8;

/// `POST /v1/peers`, `/v1/announce`, `/v1/report`, `/v1/reach`.
pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/peers", post(register))
        .route("/v1/reach", post(reach))
        .route("/v1/sources", post(sources))
        .route("/v1/announce", post(announce))
        .route("/v1/report", post(report))
}

fn now_secs() -> u64 {
    now_ms() / 1000
}

/// Checks a request's `Peercache-Auth` signature (a peer is its key, B6) and
/// parses its JSON body; the body must name the key that signed it.
fn authenticated<T: serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    path: &str,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
    peer_of: impl Fn(&T) -> &str,
) -> Result<(String, T), ApiError> {
    let body = body.map_err(|r| ApiError::Rejected(r.status(), r.body_text()))?;
    let id = signer(headers, path, &body)?;
    let value: T = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("malformed JSON: {e}")))?;
    if peer_of(&value) != id {
        counter!("peercache_auth_failures_total").increment(1);
        return Err(ApiError::Unauthorized(
            peercache_core::auth::AuthError::WrongPeer.to_string(),
        ));
    }
    Ok((id, value))
}

/// The peer that signed a `POST` to `path` with `body` (its `Peercache-Auth`
/// header, B6).
pub(crate) fn signer(headers: &HeaderMap, path: &str, body: &[u8]) -> Result<String, ApiError> {
    let auth = headers.get(headers::AUTH).and_then(|v| v.to_str().ok());
    peercache_core::auth::authenticate(auth, "POST", path, body, now_secs()).map_err(|e| {
        counter!("peercache_auth_failures_total").increment(1);
        ApiError::Unauthorized(e.to_string())
    })
}

/// What the server lists of a host's dial info (B6): its relay only if it is one
/// this server offers; of its direct addresses only those on the address its
/// connection came from (or, when none is, that address with its endpoint's
/// port). `None` when nothing is left to dial.
pub fn listable_dial(
    reported: Option<peercache_core::peer::DialInfo>,
    port: Option<u16>,
    seen: std::net::IpAddr,
    relays: &[peercache_core::protocol::RelayInfo],
) -> Option<peercache_core::peer::DialInfo> {
    let reported = reported?;
    let same = |a: &str, b: &str| a.trim_end_matches('/') == b.trim_end_matches('/');
    let relay = reported
        .relay
        .filter(|r| relays.iter().any(|known| same(&known.url, r)));
    let mut direct: Vec<SocketAddr> = reported
        .direct
        .into_iter()
        .filter(|a| a.ip() == seen && a.port() != 0)
        .collect();
    if direct.is_empty()
        && let Some(port) = port.filter(|p| *p != 0)
    {
        direct.push(SocketAddr::new(seen, port));
    }
    let info = peercache_core::peer::DialInfo { relay, direct };
    (!info.is_empty()).then_some(info)
}

async fn register(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req_headers: HeaderMap,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<RegisterResponse>, ApiError> {
    let (id, req) =
        authenticated::<RegisterRequest>(&req_headers, "/v1/peers", body, |r| &r.peer_id)?;
    if !state
        .announce_limiter
        .allow(&id, state.config.announce_rate)
    {
        return Err(ApiError::TooManyRequests);
    }
    // One address cannot fill the table with keys of its own making.
    if !state.peers_per_source.allow(
        peer.ip(),
        &id,
        state.config.max_peers_per_ip,
        state.config.peer_ttl,
    ) {
        counter!("peercache_registrations_refused_total").increment(1);
        return Err(ApiError::TooManyRequests);
    }
    let dial = listable_dial(req.dial, req.port, peer.ip(), &state.relays);
    let addr = state
        .store
        .register(
            &id,
            peer.ip(),
            dial.map(|d| d.to_dial_string()),
            req.load,
            now_ms(),
        )
        .await
        .map_err(|e| match e {
            StoreError::UnknownPeer => ApiError::Forbidden("peer is delisted".into()),
            other => ApiError::from(other),
        })?;
    tracing::info!(peer = %id, ?addr, "peer registered");
    Ok(Json(RegisterResponse {
        peer_id: id,
        addr,
        ttl_secs: state.store.limits().ttl_ms / 1000,
        relays: state.relays.clone(),
    }))
}

/// `POST /v1/reach`: how this server sees the signing host: the address it
/// lists for it, and whether a ping to it (dialed by key now, as the pinger
/// does) is answered, and directly. Limited like announces (per key).
async fn reach(
    State(state): State<Arc<AppState>>,
    req_headers: HeaderMap,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<ReachResponse>, ApiError> {
    let (id, _) = authenticated::<ReachRequest>(&req_headers, "/v1/reach", body, |r| &r.peer_id)?;
    if !state
        .announce_limiter
        .allow(&id, state.config.announce_rate)
    {
        return Err(ApiError::TooManyRequests);
    }
    let addr = state.store.peer_addr(&id, now_ms()).await?;
    let mut answer = ReachResponse {
        addr: addr.clone(),
        answered: false,
        direct: false,
        rtt_ms: None,
    };
    if let (Some(addr), Some(dialer)) = (addr, state.peers.clone())
        && let Ok(dial) = peercache_core::peer::DialInfo::parse(&addr)
        && let Some((pong, direct)) = crate::health::probe(&dialer, &id, &dial).await
    {
        answer.answered = true;
        answer.direct = direct;
        answer.rtt_ms = Some(
            u32::try_from(pong.rtt.as_millis())
                .unwrap_or(u32::MAX)
                .max(1),
        );
    }
    Ok(Json(answer))
}

/// `POST /v1/sources`: for a peer receiving an object (it was referred for
/// it or is being sent it), the holders and the other receivers now, as a
/// referral would list them (issue 12: a crowd's early clients learn of the
/// later ones, so the pieces spread among them all). Who holds an object is
/// told only to peers receiving it; limited like announces (per key).
async fn sources(
    State(state): State<Arc<AppState>>,
    req_headers: HeaderMap,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<Vec<Proxy>>, ApiError> {
    let (id, req) =
        authenticated::<SourcesRequest>(&req_headers, "/v1/sources", body, |r| &r.peer_id)?;
    // A bucket of its own: asking for sources never costs an announce.
    if !state
        .announce_limiter
        .allow(&format!("sources:{id}"), state.config.announce_rate)
    {
        return Err(ApiError::TooManyRequests);
    }
    // Asking keeps its listing as a receiver alive (`Receivers::touch`).
    if !state.receivers.touch(&req.hash, &id) {
        return Err(ApiError::Forbidden(
            "not receiving this object from this server".into(),
        ));
    }
    // Ranked as a referral ranks them, but no referral is booked against the
    // first one's load: a list of sources is not a referral.
    let max = state.config.max_proxies;
    let stats = state
        .store
        .holder_stats(&req.hash, Some(&id), now_ms())
        .await?;
    let mut list =
        peercache_core::select::rank_holders(stats, state.store.limits().slow_threshold_ms, max);
    for r in state.receivers.list(&req.hash, Some(&id), max) {
        if list.len() >= max {
            break;
        }
        if !list.iter().any(|h| h.id == r.id) {
            list.push(r);
        }
    }
    let offered: Vec<String> = list.iter().map(|p| p.id.clone()).collect();
    if !offered.is_empty() {
        state
            .store
            .book_offer(&id, &req.hash, &offered, now_ms())
            .await?;
    }
    counter!("peercache_source_refreshes_total").increment(1);
    Ok(Json(list))
}

/// Checks that the peer `id` at `addr` really holds `obj`: asks it, over its QUIC
/// connection, for a small random range and compares with the server's own
/// bytes (B6, "proves it holds it").
async fn proves_possession(state: &AppState, id: &str, addr: &str, obj: &SiteObject) -> bool {
    if obj.size == 0 {
        return true;
    }
    let (Some(peers), Ok(dial)) = (&state.peers, peercache_core::peer::DialInfo::parse(addr))
    else {
        return false;
    };
    let len = obj.size.min(4096);
    let offset = rand::random_range(0..=obj.size - len);
    let mine = {
        use std::io::{Read, Seek, SeekFrom};
        let path = obj.path.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
            let mut f = std::fs::File::open(path)?;
            f.seek(SeekFrom::Start(offset))?;
            let mut buf = vec![0u8; len as usize];
            f.read_exact(&mut buf)?;
            Ok(buf)
        })
        .await
    };
    let Ok(Ok(mine)) = mine else { return false };
    let theirs = async {
        let (_, mut body) = peers
            .object(id, &dial, obj.hash, Some((offset, offset + len - 1)))
            .await
            .ok()?;
        // Read at most what was asked for: a peer that sends more is lying,
        // and an endless answer must not grow the server.
        let want = usize::try_from(len).ok()?;
        let mut got = Vec::with_capacity(want);
        while let Ok(Some(chunk)) = body.next_chunk().await {
            if got.len() + chunk.len() > want {
                return None;
            }
            got.extend_from_slice(&chunk);
            if got.len() == want {
                break;
            }
        }
        Some(got)
    };
    match tokio::time::timeout(crate::state::PROOF_TIMEOUT, theirs).await {
        Ok(Some(got)) => got == mine,
        _ => false,
    }
}

async fn announce(
    State(state): State<Arc<AppState>>,
    req_headers: HeaderMap,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<AnnounceResponse>, ApiError> {
    let (_, a) = authenticated::<Announce>(&req_headers, "/v1/announce", body, |a| &a.peer_id)?;
    if a.have.len() + a.dropped.len() > MAX_ANNOUNCE_HASHES {
        return Err(ApiError::BadRequest(format!(
            "at most {MAX_ANNOUNCE_HASHES} hashes per announce"
        )));
    }
    if !state
        .announce_limiter
        .allow(&a.peer_id, state.config.announce_rate)
    {
        return Err(ApiError::TooManyRequests);
    }
    counter!("peercache_announces_total").increment(1);
    let now = now_ms();
    let addr = state.store.peer_addr(&a.peer_id, now).await?;
    let mut listable = Vec::with_capacity(a.have.len());
    let mut rejected = Vec::new();
    let mut proofs = 0;
    for hash in &a.have {
        let ok = if !state.knows(hash) {
            false
        } else if state.store.fetched(&a.peer_id, hash).await? {
            true
        } else if let (Some(addr), true) = (&addr, proofs < MAX_PROOFS_PER_ANNOUNCE) {
            proofs += 1;
            let st = state.clone();
            let h = *hash;
            let obj = tokio::task::spawn_blocking(move || st.object_by_hash(&h))
                .await
                .ok()
                .flatten();
            // While the proof runs, the server sends this object to nobody
            // (`Proving`), so the answer cannot be fetched from the server on
            // the fly, from any address.
            match (obj, state.proving.try_start(*hash)) {
                (Some(obj), Some(mut proof)) => {
                    if proves_possession(&state, &a.peer_id, addr, &obj).await {
                        drop(proof);
                        state.store.record_fetch(&a.peer_id, hash).await?;
                        true
                    } else {
                        proof.failed();
                        false
                    }
                }
                _ => false,
            }
        } else {
            false
        };
        if ok {
            listable.push(*hash);
        } else {
            rejected.push(*hash);
        }
    }
    let accepted = state
        .store
        .announce(&a.peer_id, &listable, &a.dropped, a.load, now)
        .await
        .map_err(|e| match e {
            StoreError::UnknownPeer => ApiError::UnknownPeer(a.peer_id.clone()),
            other => ApiError::from(other),
        })?;
    Ok(Json(AnnounceResponse {
        accepted,
        rejected,
        ttl_secs: state.store.limits().ttl_ms / 1000,
    }))
}

async fn report(
    State(state): State<Arc<AppState>>,
    req_headers: HeaderMap,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<StatusCode, ApiError> {
    let (reporter, r) = authenticated::<Report>(&req_headers, "/v1/report", body, |r| &r.peer_id)?;
    if !state.announce_limiter.allow(
        &format!("report:{reporter}"),
        state.config.announce_rate * 4,
    ) {
        return Err(ApiError::TooManyRequests);
    }
    // A report counts only for a source this client was referred to for this
    // object, once per referral (B6): nobody can report a peer out of the table,
    // or inflate its use, without having been sent to it.
    let referred = state
        .store
        .take_offer(
            &reporter,
            &r.hash,
            &r.source,
            now_ms(),
            matches!(r.outcome, Outcome::Served | Outcome::Mismatch),
        )
        .await?;
    if !referred {
        counter!("peercache_reports_unreferred_total").increment(1);
        tracing::info!(%reporter, source = %r.source, "report about a source this client was not referred to; ignored");
        return Ok(StatusCode::ACCEPTED);
    }
    if let Some(direct) = r.direct {
        state
            .store
            .note_path(&r.source, direct, PathWitness::Client)
            .await?;
    }
    // No more bytes than the object holds: the figures cannot be inflated.
    let st = state.clone();
    let hash = r.hash;
    let size = tokio::task::spawn_blocking(move || st.object_by_hash(&hash).map(|o| o.size))
        .await
        .ok()
        .flatten()
        .unwrap_or(0);
    let mut r = r;
    r.bytes = r.bytes.min(size);
    let outcome = match r.outcome {
        Outcome::Served => "served",
        Outcome::Mismatch => "mismatch",
        Outcome::Failed => "failed",
        Outcome::Unused => "unused",
    };
    counter!("peercache_reports_total", "outcome" => outcome).increment(1);
    if r.outcome == Outcome::Served && r.direct == Some(false) {
        // Relayed bytes crossed the site: egress, never offload.
        counter!("peercache_reported_relayed_bytes_total").increment(r.bytes);
    } else if r.outcome == Outcome::Served && r.source != SERVER_PROXY_ID {
        state.figures.add(Tally::BytesFromPeers, r.bytes);
    }
    if r.outcome == Outcome::Mismatch {
        state.figures.add(Tally::Mismatches, 1);
        tracing::warn!(source = %r.source, hash = %r.hash, "mismatch reported");
    }
    state.store.report(&r).await?;
    Ok(StatusCode::NO_CONTENT)
}
