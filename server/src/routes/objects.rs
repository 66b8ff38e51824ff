//! The server as a source, by hash: `GET|HEAD /v1/objects/{hash}` (with
//! `Range`, so a client resumes from the server where peers failed), its
//! outboard (the group CVs for verified streaming), its ranked holders, and
//! `GET /v1/key` (the record-signing key clients pin).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use peercache_core::hash::ObjectHash;
use peercache_core::headers;
use peercache_core::protocol::Proxy;

use crate::error::ApiError;
use crate::send::send_object;
use crate::site::SiteObject;
use crate::state::AppState;
use crate::store::now_ms;

/// `/v1/objects/…` and `/v1/key` (public).
pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/objects/{hash}", get(object_by_hash))
        .route("/v1/objects/{hash}/outboard", get(object_outboard))
        .route("/v1/objects/{hash}/piece", post(seed_piece))
        .route("/v1/key", get(server_key))
}

/// `/v1/objects/{hash}/peers`: which visitors hold an object, for the operator
/// only (served on the admin listener; visitors learn holders only in a
/// referral for the object's URL).
pub fn admin_router() -> Router<Arc<AppState>> {
    Router::new().route("/v1/objects/{hash}/peers", get(object_peers))
}

fn parse_hash(s: &str) -> Result<ObjectHash, ApiError> {
    s.parse()
        .map_err(|e: peercache_core::hash::InvalidHash| ApiError::BadRequest(e.to_string()))
}

/// The holders of an object, ranked as a referral would list them.
async fn object_peers(
    State(state): State<Arc<AppState>>,
    Path(hash): Path<String>,
) -> Result<Json<Vec<Proxy>>, ApiError> {
    let hash = parse_hash(&hash)?;
    let stats = state.store.holder_stats(&hash, None, now_ms()).await?;
    Ok(Json(peercache_core::select::rank_holders(
        stats,
        state.store.limits().slow_threshold_ms,
        state.config.max_proxies,
    )))
}

/// The object named by the hex `hash`, once no possession proof of it runs:
/// nobody gets its bytes during a proof (a proof must not be answerable
/// through the server).
async fn sendable(state: &Arc<AppState>, hash: &str) -> Result<SiteObject, ApiError> {
    let hash = parse_hash(hash)?;
    if !state.proving.wait_clear(&hash).await {
        return Err(ApiError::Conflict(
            "a possession proof of this object is under way".into(),
        ));
    }
    let st = state.clone();
    tokio::task::spawn_blocking(move || st.object_by_hash(&hash))
        .await
        .map_err(ApiError::internal)?
        .ok_or(ApiError::NotFound)
}

/// The server as a source in a referral (its own proxy-list entry): objects by
/// hash, with `Range` (strict: a range it cannot satisfy is a `416`, since a
/// source asked for a range must send that range or nothing).
async fn object_by_hash(
    State(state): State<Arc<AppState>>,
    method: Method,
    req_headers: HeaderMap,
    Path(hash): Path<String>,
) -> Result<Response, ApiError> {
    let obj = sendable(&state, &hash).await?;
    let range = match req_headers.get(header::RANGE) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|v| headers::parse_range(v, obj.size).ok())
                .ok_or(ApiError::RangeNotSatisfiable(obj.size))?,
        ),
    };
    send_object(&state, &obj, method == Method::HEAD, range, None).await
}

/// The server as a seed (issue 12 point 3): a serving peer receiving an
/// object (listed in `state::Receivers`: referred for it, or the first asker
/// of a crowd) sends its have-map (the groups it holds or is fetching),
/// signed (`Peercache-Auth` over `POST /v1/objects/{hash}/piece` and the
/// have-map), and gets a piece it lacks that the server has not seeded yet
/// (`peercache_core::pieces::seed_pick`; a run of them while it receives the
/// object alone, `seed_run_len`), as a `206` with its `Content-Range` (the
/// client checks it against the object's CVs like any range), or `204` when
/// there is nothing to seed it (every piece it lacks seeded already, no
/// crowd: none opened for its first asker and fewer than two receivers or no
/// whole copy on its way to the first, or seeding off: `--no-seed-crowds`).
/// So in a crowd the server's uplink puts each piece into the swarm once,
/// spread over those who pass it on, instead of into one receiver that must
/// pass all of it on. Others are refused: unsigned `401`, not receiving `403`
/// (a stranger cannot spend the ledger, each piece seeded once per crowd with
/// 40 % extra, nor take the turns); a peer holding its turns already `429`;
/// every turn taken too long `503`, both with `Retry-After: 1`.
async fn seed_piece(
    State(state): State<Arc<AppState>>,
    Path(hash): Path<String>,
    req_headers: HeaderMap,
    body: bytes::Bytes,
) -> Result<Response, ApiError> {
    let obj = sendable(&state, &hash).await?;
    let hash = obj.hash;
    let peer = crate::routes::peers::signer(
        &req_headers,
        &format!("/v1/objects/{}/piece", hash.to_hex()),
        &body,
    )?;
    // Asking keeps its listing as a receiver alive.
    if !state.receivers.touch(&hash, &peer) {
        return Err(ApiError::Forbidden(
            "not receiving this object from this server".into(),
        ));
    }
    if obj.size == 0 {
        return Ok(axum::http::StatusCode::NO_CONTENT.into_response());
    }
    let groups = peercache_core::verified::group_count(obj.size);
    let has = peercache_core::pieces::HaveMap::from_bytes(groups, &body)
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    // Only in a crowd for an object nobody held: one opened when its first
    // asker was referred to be seeded (`decide::seeded_instead`), or two or
    // more receiving it while the server sends its first whole copy. A client
    // referred to holders of the whole object gets it from them, not from
    // the server.
    use peercache_core::pieces::SeedOrder;
    let whole_copy = state.sending.whole_copy(&hash);
    let seeding = if !state.config.seed_crowds {
        None
    } else if let Some(carried) = whole_copy
        && state.receivers.count(&hash) >= 2
    {
        Some((carried, SeedOrder::FromBack))
    } else if state.seeds.is_open(&hash) {
        Some((0, SeedOrder::FromFront))
    } else {
        None
    };
    let Some((carried, order)) = seeding else {
        return Ok(axum::http::StatusCode::NO_CONTENT.into_response());
    };
    // A few pieces at a time, each at the full uplink (`state::SEED_SENDS`);
    // no turn in time: busy, ask again (not "nothing to seed").
    let turn = match state.seeds.turn(&peer).await {
        Ok(turn) => turn,
        Err(crate::state::TurnDenied::PeerHoldsItsTurns) => {
            return Err(ApiError::TooManyRequests);
        }
        Err(crate::state::TurnDenied::Busy) => {
            return Ok((
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, "1")],
            )
                .into_response());
        }
    };
    // Alone: the only one receiving it (the asker is one of them).
    let alone = state.receivers.count(&hash) <= 1;
    let Some((p0, p1)) = state.seeds.pick(hash, &has, carried, order, alone) else {
        return Ok(axum::http::StatusCode::NO_CONTENT.into_response());
    };
    let (g0, _) = peercache_core::pieces::piece_groups(groups, p0);
    let (_, g1) = peercache_core::pieces::piece_groups(groups, p1 - 1);
    let first = g0 * peercache_core::verified::GROUP;
    let last = (g1 * peercache_core::verified::GROUP)
        .min(obj.size)
        .saturating_sub(1);
    metrics::counter!("peercache_seeded_pieces_total").increment(p1 - p0);
    let sent = send_object(&state, &obj, false, Some((first, last)), None).await?;
    Ok(held_until_sent(sent, turn))
}

/// `resp` with `turn` held until its body is sent (or dropped).
fn held_until_sent(resp: Response, turn: crate::state::SeedTurn) -> Response {
    use futures_util::StreamExt;
    let (parts, body) = resp.into_parts();
    let body = body.into_data_stream().map(move |chunk| {
        let _turn = &turn;
        chunk
    });
    Response::from_parts(parts, axum::body::Body::from_stream(body))
}

/// The object's group CVs (see `peercache_core::verified`), for verified streaming
/// from the server as a source.
async fn object_outboard(
    State(state): State<Arc<AppState>>,
    Path(hash): Path<String>,
) -> Result<Response, ApiError> {
    let hash = parse_hash(&hash)?;
    if let Some(outboard) = state.outboards.get(&hash) {
        return Ok(outboard_response(outboard));
    }
    // Only an object the server knows gets a place in the cache.
    if !state.knows(&hash) {
        return Err(ApiError::NotFound);
    }
    // Computed once per object and kept (it costs a read of the whole object).
    let st = state.clone();
    let outboard = state
        .outboards
        .get_or_compute(hash, || async move {
            tokio::task::spawn_blocking(move || -> Result<bytes::Bytes, ApiError> {
                let obj = st.object_by_hash(&hash).ok_or(ApiError::NotFound)?;
                let file = std::fs::File::open(&obj.path).map_err(ApiError::internal)?;
                peercache_core::verified::outboard_from_reader(
                    std::io::BufReader::new(file),
                    obj.size,
                )
                .map(bytes::Bytes::from)
                .map_err(ApiError::internal)
            })
            .await
            .map_err(ApiError::internal)?
        })
        .await?;
    Ok(outboard_response(outboard))
}

fn outboard_response(outboard: bytes::Bytes) -> Response {
    (
        [(header::CONTENT_TYPE, "application/octet-stream")],
        outboard,
    )
        .into_response()
}

async fn server_key(
    State(state): State<Arc<AppState>>,
) -> Json<peercache_core::protocol::ServerKey> {
    Json(peercache_core::protocol::ServerKey {
        public_key: state.signer.public_hex(),
        rotations: state.key_rotations.clone(),
    })
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use peercache_core::pieces::{HaveMap, PIECE_GROUPS};
    use peercache_core::verified::{GROUP, group_count};
    use tower::ServiceExt;

    use super::*;
    use crate::routes::site::tests::{get, referring_state_configured, referring_state_with};

    const PIECE: u64 = PIECE_GROUPS * GROUP;

    /// A test peer: its id and the secret it signs with.
    #[derive(Clone)]
    struct Key {
        id: String,
        secret: [u8; 32],
    }

    fn key(n: u8) -> Key {
        let secret = [n; 32];
        Key {
            id: peercache_core::auth::peer_id_of(&secret),
            secret,
        }
    }

    /// The crowd's first asker (`whole_copy_to_a_peer`), two receivers, and
    /// the `i`-th of `six_ask_at_once`.
    fn first() -> Key {
        key(9)
    }
    fn a() -> Key {
        key(1)
    }
    fn b() -> Key {
        key(2)
    }
    fn crowd(i: u8) -> Key {
        key(20 + i)
    }

    /// `who` lists itself as receiving `hash`.
    fn receiving(state: &Arc<AppState>, hash: ObjectHash, who: &Key) {
        state
            .receivers
            .add(hash, &who.id, &format!("peer:{}", who.id));
    }

    async fn ask_seed(state: &Arc<AppState>, who: &Key, hash: &ObjectHash, has: &[u8]) -> Response {
        let path = format!("/v1/objects/{}/piece", hash.to_hex());
        let auth =
            peercache_core::auth::sign_request(&who.secret, "POST", &path, now_ms() / 1000, has);
        let req = Request::post(path)
            .header(headers::AUTH, auth)
            .body(Body::from(has.to_vec()))
            .unwrap();
        crate::routes::app(state.clone())
            .oneshot(req)
            .await
            .unwrap()
    }

    /// The first piece of a `206` answer.
    fn piece_of(r: &Response) -> u64 {
        let range = r.headers()[header::CONTENT_RANGE].to_str().unwrap();
        let (first, _, _) = peercache_core::headers::parse_content_range(range).unwrap();
        assert_eq!(first % PIECE, 0, "{range}");
        first / PIECE
    }

    /// A whole copy on its way to the registered serving peer `first` (the
    /// crowd's first asker, claimed as its receiver); its body not read yet.
    async fn whole_copy_to_a_peer(state: &Arc<AppState>) -> Response {
        state
            .store
            .register(
                &first().id,
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                Some("peer:?direct=127.0.0.1:42000".into()),
                None,
                now_ms(),
            )
            .await
            .unwrap();
        let header = format!("id={}; bw=100000000", first().id);
        let r = get(state, "/static/a.bin", &[("peercache-client", &header)]).await;
        assert_eq!(r.status(), StatusCode::OK);
        r
    }

    #[tokio::test]
    async fn in_a_crowd_the_server_seeds_each_piece_once_and_only_what_is_lacking() {
        // Three pieces, the last one short.
        let data: Vec<u8> = (0..2 * PIECE + PIECE / 3)
            .map(|i| (i % 253) as u8)
            .collect();
        let (state, hash) = referring_state_with("seed", &data);
        let nothing = HaveMap::empty(group_count(data.len() as u64));

        // Receivers referred to holders, a plain visitor's whole copy on its
        // way: no crowd for a new object, nothing seeded.
        let visitor = get(&state, "/static/a.bin", &[]).await;
        assert_eq!(visitor.status(), StatusCode::OK);
        receiving(&state, hash, &a());
        receiving(&state, hash, &b());
        let r = ask_seed(&state, &a(), &hash, nothing.as_bytes()).await;
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        drop(visitor);
        state.receivers.remove(&hash, &a().id);
        state.receivers.remove(&hash, &b().id);

        // The first asker is sent a whole copy; alone it is no crowd.
        let copy = whole_copy_to_a_peer(&state).await;
        assert!(state.receivers.contains(&hash, &first().id));
        let r = ask_seed(&state, &first(), &hash, nothing.as_bytes()).await;
        assert_eq!(r.status(), StatusCode::NO_CONTENT);

        // A second receiver: a crowd. Different pieces, the last first, each
        // the object's bytes.
        receiving(&state, hash, &a());
        let mut seen = Vec::new();
        for _ in 0..3 {
            let r = ask_seed(&state, &a(), &hash, nothing.as_bytes()).await;
            assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
            let range = r.headers()[header::CONTENT_RANGE]
                .to_str()
                .unwrap()
                .to_string();
            let (first, last, total) =
                peercache_core::headers::parse_content_range(&range).unwrap();
            assert_eq!(total, data.len() as u64);
            seen.push(piece_of(&r));
            let body = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
            assert_eq!(&body[..], &data[first as usize..=last as usize]);
        }
        assert_eq!(seen, [2, 1, 0]);
        // Every piece seeded once; then the extra budget (one piece of
        // three: the latest seeded), and the rest comes from peers.
        assert_eq!(peercache_core::pieces::seed_budget(3), 4);
        let r = ask_seed(&state, &a(), &hash, nothing.as_bytes()).await;
        assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
        assert_eq!(piece_of(&r), 0);
        let r = ask_seed(&state, &a(), &hash, nothing.as_bytes()).await;
        assert_eq!(r.status(), StatusCode::NO_CONTENT);

        // A have-map of the wrong length is refused, not guessed at.
        let r = ask_seed(&state, &a(), &hash, &[0u8; 1]).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        let r = ask_seed(
            &state,
            &a(),
            &ObjectHash::of(b"unknown"),
            nothing.as_bytes(),
        )
        .await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        drop(copy);
    }

    #[tokio::test]
    async fn pieces_a_whole_copy_already_carried_are_not_seeded() {
        use futures_util::StreamExt;
        let data: Vec<u8> = (0..4 * PIECE + PIECE / 3)
            .map(|i| (i % 241) as u8)
            .collect();
        let pieces = 5;
        let (state, hash) = referring_state_with("seed-carried", &data);
        // The first receiver's whole copy, past its first piece.
        let mut copy = whole_copy_to_a_peer(&state)
            .await
            .into_body()
            .into_data_stream();
        let mut got = 0;
        while got <= PIECE as usize {
            got += copy.next().await.unwrap().unwrap().len();
        }
        let carried = got as u64 / PIECE;
        assert!((1..pieces).contains(&carried), "{got}");
        receiving(&state, hash, &a());
        let nothing = HaveMap::empty(group_count(data.len() as u64));
        let mut seen = Vec::new();
        loop {
            let r = ask_seed(&state, &a(), &hash, nothing.as_bytes()).await;
            if r.status() == StatusCode::NO_CONTENT {
                break;
            }
            assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
            seen.push(piece_of(&r));
        }
        // The pieces the copy carried are not in the first round (from the
        // back, the copy going front to back); they come only as the extra
        // pieces the budget allows, counted with the carried ones. Without
        // the carried count the first round alone would send them.
        let budget = peercache_core::pieces::seed_budget(pieces);
        let expected: Vec<u64> = (carried..pieces).rev().chain(0..budget - pieces).collect();
        assert_eq!(seen, expected, "{carried} pieces carried");
        drop(copy);
    }

    /// Six registered serving peers ask for `/static/a.bin` at once; their
    /// answers in the order of the ids.
    async fn six_ask_at_once(state: &Arc<AppState>) -> Vec<Response> {
        let ids: Vec<String> = (0..6).map(|i| crowd(i).id).collect();
        for (i, id) in ids.iter().enumerate() {
            let dial = format!("peer:?direct=127.0.0.1:{}", 43000 + i);
            state
                .store
                .register(
                    id,
                    IpAddr::V4(Ipv4Addr::LOCALHOST),
                    Some(dial),
                    None,
                    now_ms(),
                )
                .await
                .unwrap();
        }
        let asks = ids.iter().map(|id| {
            let header = format!("id={id}; bw=100000000");
            async move { get(state, "/static/a.bin", &[("peercache-client", &header)]).await }
        });
        futures_util::future::join_all(asks).await
    }

    #[tokio::test]
    async fn a_crowd_for_a_large_object_is_seeded_and_nobody_is_sent_it_whole() {
        let size = peercache_core::pieces::SWARM_FROM + 1000;
        let data: Vec<u8> = (0..size).map(|i| (i % 239) as u8).collect();
        let (state, hash) = referring_state_with("seed-first", &data);
        let answers = six_ask_at_once(&state).await;
        let mut first_askers = Vec::new();
        let mut receivers = Vec::new();
        for (i, r) in (0..).zip(answers) {
            assert_eq!(
                r.status(),
                StatusCode::MULTIPLE_CHOICES,
                "nobody is sent a whole copy"
            );
            let body = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
            let referral: serde_json::Value = serde_json::from_slice(&body).unwrap();
            let peers: Vec<&str> = referral["proxies"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|p| p["id"].as_str())
                .filter(|id| *id != peercache_core::protocol::SERVER_PROXY_ID)
                .collect();
            if peers.is_empty() {
                // The first asker: to be seeded, nobody to fetch from yet.
                first_askers.push(i);
                assert_eq!(
                    referral["why"]["reason"], "over_target_seeded",
                    "{referral}"
                );
            } else {
                receivers.extend(peers.iter().map(|p| p.to_string()));
            }
        }
        assert_eq!(first_askers.len(), 1, "one first asker");
        let crowd_ids: Vec<String> = (0..6).map(|i| crowd(i).id).collect();
        assert!(receivers.iter().all(|id| crowd_ids.contains(id)));
        let seeded = crowd(first_askers[0]);
        // Seeded from the front, each piece once, the object's bytes.
        let pieces = peercache_core::pieces::piece_count(group_count(size));
        let nothing = HaveMap::empty(group_count(size));
        for want in 0..pieces {
            let r = ask_seed(&state, &seeded, &hash, nothing.as_bytes()).await;
            assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
            assert_eq!(piece_of(&r), want);
            let body = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
            let at = (want * PIECE) as usize;
            assert_eq!(&body[..], &data[at..at + body.len()]);
        }
        // Then the extra budget, and no more: the origin's bytes stay within
        // 1.4 × the object.
        let mut extra = 0;
        while ask_seed(&state, &seeded, &hash, nothing.as_bytes())
            .await
            .status()
            == StatusCode::PARTIAL_CONTENT
        {
            extra += 1;
        }
        assert_eq!(extra, peercache_core::pieces::seed_budget(pieces) - pieces);
        assert!(extra > 0);
    }

    #[tokio::test]
    async fn without_seeding_or_for_a_small_object_the_first_asker_is_sent_it_whole() {
        let large: Vec<u8> = vec![3u8; peercache_core::pieces::SWARM_FROM as usize];
        let (state, hash) =
            referring_state_configured("seed-first-off", &large, |c| c.seed_crowds = false);
        // Kept: a copy dropped unsent ends its receiver's listing.
        let answers = six_ask_at_once(&state).await;
        let served: Vec<u8> = (0..)
            .zip(&answers)
            .filter(|(_, r)| r.status() == StatusCode::OK)
            .map(|(i, _)| i)
            .collect();
        assert_eq!(served.len(), 1);
        // The one sent it whole is receiving it, and not seeded.
        let has = HaveMap::empty(group_count(large.len() as u64));
        let r = ask_seed(&state, &crowd(served[0]), &hash, has.as_bytes()).await;
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        let small = vec![3u8; peercache_core::pieces::SWARM_FROM as usize - 1];
        let (state, _) = referring_state_with("seed-first-small", &small);
        let served = six_ask_at_once(&state)
            .await
            .iter()
            .filter(|r| r.status() == StatusCode::OK)
            .count();
        assert_eq!(served, 1);
    }

    #[tokio::test]
    async fn seeded_pieces_go_a_few_at_a_time() {
        use std::time::Duration;
        let size = peercache_core::pieces::SWARM_FROM;
        let data: Vec<u8> = (0..size).map(|i| (i % 233) as u8).collect();
        let (state, hash) = referring_state_with("seed-turns", &data);
        // Known by its hash once asked for by its path.
        let visitor = get(&state, "/static/a.bin", &[]).await;
        assert_eq!(visitor.status(), StatusCode::OK);
        drop(visitor);
        assert!(state.seeds.open(hash, size));
        // A crowd: one piece per answer.
        let c = key(4);
        for who in [a(), b(), c.clone()] {
            receiving(&state, hash, &who);
        }
        let nothing = HaveMap::empty(group_count(size));
        let mut being_sent = Vec::new();
        for who in [a(), a(), b(), b()] {
            let r = ask_seed(&state, &who, &hash, nothing.as_bytes()).await;
            assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
            being_sent.push(r);
        }
        assert_eq!(being_sent.len(), crate::state::SEED_SENDS);
        // A peer holding its two turns is told to ask again at once: one
        // peer never holds every turn.
        let r = ask_seed(&state, &a(), &hash, nothing.as_bytes()).await;
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
        let next = tokio::time::timeout(
            Duration::from_millis(300),
            ask_seed(&state, &c, &hash, nothing.as_bytes()),
        )
        .await;
        assert!(next.is_err(), "one more waits while four are being sent");
        // Past its wait it is told "busy, ask again", not "nothing to seed".
        let r = ask_seed(&state, &c, &hash, nothing.as_bytes()).await;
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
        // One of them sent: the next one's turn.
        let r = being_sent.pop().unwrap();
        axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
        let r = tokio::time::timeout(
            Duration::from_secs(5),
            ask_seed(&state, &c, &hash, nothing.as_bytes()),
        )
        .await
        .expect("its turn came");
        assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
        let body = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
        assert_eq!(body.len() as u64, PIECE);
    }

    #[tokio::test]
    async fn only_a_peer_receiving_the_object_is_seeded() {
        let size = peercache_core::pieces::SWARM_FROM;
        let data: Vec<u8> = (0..size).map(|i| (i % 227) as u8).collect();
        let (state, hash) = referring_state_with("seed-who", &data);
        let visitor = get(&state, "/static/a.bin", &[]).await;
        drop(visitor);
        assert!(state.seeds.open(hash, size));
        receiving(&state, hash, &a());
        let nothing = HaveMap::empty(group_count(size));
        // Unsigned: refused, and nothing is counted as seeded.
        let path = format!("/v1/objects/{}/piece", hash.to_hex());
        let anonymous = Request::post(&path)
            .body(Body::from(nothing.as_bytes().to_vec()))
            .unwrap();
        let r = crate::routes::app(state.clone())
            .oneshot(anonymous)
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        // Signed by a peer not receiving it: refused.
        let r = ask_seed(&state, &b(), &hash, nothing.as_bytes()).await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        // Signed for another have-map than the one sent: refused.
        let auth =
            peercache_core::auth::sign_request(&a().secret, "POST", &path, now_ms() / 1000, b"x");
        let forged = Request::post(&path)
            .header(headers::AUTH, auth)
            .body(Body::from(nothing.as_bytes().to_vec()))
            .unwrap();
        let r = crate::routes::app(state.clone())
            .oneshot(forged)
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        // The receiver is seeded from the first piece: the refused asks took
        // nothing from the ledger.
        let r = ask_seed(&state, &a(), &hash, nothing.as_bytes()).await;
        assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
        assert_eq!(piece_of(&r), 0);
    }

    #[tokio::test]
    async fn a_client_receiving_alone_is_seeded_growing_runs() {
        let size = peercache_core::pieces::SWARM_FROM + 1000;
        let data: Vec<u8> = (0..size).map(|i| (i % 229) as u8).collect();
        let (state, hash) = referring_state_with("seed-alone", &data);
        let visitor = get(&state, "/static/a.bin", &[]).await;
        drop(visitor);
        assert!(state.seeds.open(hash, size));
        let alone = key(3);
        receiving(&state, hash, &alone);
        let mut has = HaveMap::empty(group_count(size));
        let mut runs = Vec::new();
        loop {
            let r = ask_seed(&state, &alone, &hash, has.as_bytes()).await;
            if r.status() == StatusCode::NO_CONTENT {
                break;
            }
            assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
            let range = r.headers()[header::CONTENT_RANGE]
                .to_str()
                .unwrap()
                .to_string();
            let (first, last, _) = peercache_core::headers::parse_content_range(&range).unwrap();
            let body = axum::body::to_bytes(r.into_body(), 64 << 20).await.unwrap();
            assert_eq!(&body[..], &data[first as usize..=last as usize]);
            runs.push((first / PIECE, last / PIECE + 1));
            (first / GROUP..=last / GROUP).for_each(|g| has.set(g));
        }
        // Runs of 1, 2, 4, … pieces (at most `SEED_RUN_ALONE`), the last
        // one what is left; all of it held, nothing more (the extra budget
        // is for what is lacking).
        let pieces = size.div_ceil(PIECE);
        let mut expected = Vec::new();
        let mut first = 0;
        while first < pieces {
            let len = (first + 1)
                .min(peercache_core::pieces::SEED_RUN_ALONE)
                .min(pieces - first);
            expected.push((first, first + len));
            first += len;
        }
        assert!(expected.len() >= 4, "{expected:?}");
        assert_eq!(runs, expected);
    }

    #[tokio::test]
    async fn seeding_off_seeds_nothing() {
        let data = vec![7u8; 300_000];
        let (state, hash) =
            referring_state_configured("seed-off", &data, |c| c.seed_crowds = false);
        let copy = whole_copy_to_a_peer(&state).await;
        receiving(&state, hash, &a());
        let has = HaveMap::empty(group_count(data.len() as u64));
        let r = ask_seed(&state, &a(), &hash, has.as_bytes()).await;
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        drop(copy);
    }
}
