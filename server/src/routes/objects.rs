//! The server as a source, by hash: `GET|HEAD /v1/objects/{hash}` (with
//! `Range`, so a client resumes from the server where peers failed), its
//! outboard (the group CVs for verified streaming), its ranked holders, and
//! `GET /v1/key` (the record-signing key clients pin).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use peercache_core::hash::ObjectHash;
use peercache_core::headers;
use peercache_core::protocol::Proxy;

use crate::error::ApiError;
use crate::send::send_object;
use crate::state::AppState;
use crate::store::now_ms;

/// `/v1/objects/…` and `/v1/key` (public).
pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/objects/{hash}", get(object_by_hash))
        .route("/v1/objects/{hash}/outboard", get(object_outboard))
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

/// The server as a source in a referral (its own proxy-list entry): objects by
/// hash, with `Range` (strict: a range it cannot satisfy is a `416`, since a
/// source asked for a range must send that range or nothing).
async fn object_by_hash(
    State(state): State<Arc<AppState>>,
    method: Method,
    req_headers: HeaderMap,
    Path(hash): Path<String>,
) -> Result<Response, ApiError> {
    let hash = parse_hash(&hash)?;
    // Nobody gets the object's bytes while a proof of it runs (a proof must
    // not be answerable through the server).
    if !state.proving.wait_clear(&hash).await {
        return Err(ApiError::Conflict(
            "a possession proof of this object is under way".into(),
        ));
    }
    let st = state.clone();
    let obj = tokio::task::spawn_blocking(move || st.object_by_hash(&hash))
        .await
        .map_err(ApiError::internal)?
        .ok_or(ApiError::NotFound)?;
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

/// The object's group CVs (see `peercache_core::verified`), for verified streaming
/// from the server as a source.
async fn object_outboard(
    State(state): State<Arc<AppState>>,
    Path(hash): Path<String>,
) -> Result<Response, ApiError> {
    let hash = parse_hash(&hash)?;
    // Computed once per object and kept (it costs a read of the whole object).
    if let Some(outboard) = state.outboards.get(&hash) {
        return Ok(outboard_response(outboard));
    }
    let st = state.clone();
    let outboard = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, ApiError> {
        let obj = st.object_by_hash(&hash).ok_or(ApiError::NotFound)?;
        let file = std::fs::File::open(&obj.path).map_err(ApiError::internal)?;
        peercache_core::verified::outboard_from_reader(std::io::BufReader::new(file), obj.size)
            .map_err(ApiError::internal)
    })
    .await
    .map_err(ApiError::internal)??;
    let outboard = bytes::Bytes::from(outboard);
    state.outboards.put(hash, outboard.clone());
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
