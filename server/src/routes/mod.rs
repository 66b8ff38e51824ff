//! The HTTP surface, one module per job, each with its sub-router beside its
//! handlers (as in axum's examples); [`app`] merges them.
//!
//! - [`site`]: the site itself, `GET|HEAD /{path}`: resolve → decide → answer.
//! - [`peers`]: `POST /v1/peers`, `/v1/announce`, `/v1/report` (signed by the peer's key).
//! - [`objects`]: `/v1/objects/{hash}` (the server as a source), its outboard,
//!   `/v1/key`.
//! - [`admin`]: `/admin` and `/admin/stats.json`.
//! - [`metrics`]: the Prometheus text at `/metrics`.
//!
//! [`app`] is the public site listener; [`admin_app`] (`/admin`, its JSON,
//! `/metrics` and the holders of an object) is served only on the operator's
//! listener (`--admin-listen`, loopback by default): visitors cannot read the
//! operator's figures nor ask which visitors hold what.

pub mod admin;
pub mod metrics;
pub mod objects;
pub mod peers;
pub mod site;

use std::sync::Arc;

use std::net::SocketAddr;

use axum::Router;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tower_http::trace::TraceLayer;

use crate::state::AppState;

/// Largest JSON body the API accepts.
pub const MAX_API_BODY: usize = peercache_core::protocol::MAX_API_BODY;

/// Builds the public router: the API sub-routers (rate-limited per client
/// address), and the site for every other path. No operator page here.
pub fn app(state: Arc<AppState>) -> Router {
    let api = Router::new()
        .merge(peers::router())
        .merge(objects::router())
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            per_source_limit,
        ));
    Router::new()
        .merge(api)
        .route("/healthz", axum::routing::get(healthz))
        .layer(DefaultBodyLimit::max(MAX_API_BODY))
        .fallback(site::site)
        .layer(axum::middleware::from_fn(timed))
        .layer(TraceLayer::new_for_http())
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            client_address,
        ))
        .with_state(state)
}

/// `GET /healthz`: `200 ok` while the look-up table answers, `503` otherwise
/// (for load balancers and orchestrators).
async fn healthz(State(state): State<Arc<AppState>>) -> Response {
    match state.store.stats(crate::store::now_ms()).await {
        Ok(_) => (axum::http::StatusCode::OK, "ok\n").into_response(),
        Err(e) => (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            format!("look-up table unavailable: {e}\n"),
        )
            .into_response(),
    }
}

/// Times each request into `peercache_request_duration_seconds`, labelled by
/// its route pattern (`site` for the site itself).
async fn timed(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "site".to_string(), |p| p.as_str().to_string());
    let started = std::time::Instant::now();
    let response = next.run(req).await;
    ::metrics::histogram!("peercache_request_duration_seconds", "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

/// Behind a trusted proxy (`--trusted-proxy`), takes the client's address from
/// the forwarding headers (every handler then sees it as the connection's);
/// from anyone else, drops those headers.
async fn client_address(
    State(state): State<Arc<AppState>>,
    mut req: Request,
    next: Next,
) -> Response {
    let from = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let trusted = &state.config.trusted_proxies;
    match from {
        Some(addr) if crate::forwarded::is_trusted(addr.ip(), trusted) => {
            if let Some(ip) = crate::forwarded::client_ip(req.headers(), trusted) {
                req.extensions_mut()
                    .insert(ConnectInfo(SocketAddr::new(ip, addr.port())));
            }
        }
        _ => {
            for h in crate::forwarded::HEADERS {
                req.headers_mut().remove(h);
            }
        }
    }
    next.run(req).await
}

/// Builds the operator's router: `/admin`, `/admin/stats.json`, `/metrics` and
/// `/v1/objects/{hash}/peers`.
pub fn admin_app(state: Arc<AppState>) -> Router {
    Router::new()
        .merge(metrics::router())
        .merge(admin::router())
        .merge(objects::admin_router())
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// `429` for a client address past its API rate (`--source-rate`), whatever
/// ids it signs with.
async fn per_source_limit(
    State(state): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Response {
    if let Some(ConnectInfo(addr)) = req.extensions().get::<ConnectInfo<SocketAddr>>()
        && !state
            .source_limiter
            .allow(&addr.ip().to_string(), state.config.source_rate)
    {
        ::metrics::counter!("peercache_source_rate_limited_total").increment(1);
        return crate::error::ApiError::TooManyRequests.into_response();
    }
    next.run(req).await
}
