//! The HTTP surface, one module per job, each with its sub-router beside its
//! handlers (as in axum's examples); [`app`] merges them.
//!
//! - [`site`]: the site itself, `GET|HEAD /{path}`: resolve → decide → answer.
//! - [`peers`]: `POST /v1/peers`, `/v1/announce`, `/v1/report` (signed by the peer's key).
//! - [`objects`]: `/v1/objects/{hash}` (the server as a source), its outboard and
//!   peers, `/v1/key`.
//! - [`admin`]: `/admin` and `/admin/stats.json`.
//! - [`metrics`]: the Prometheus text at `/metrics`.

pub mod admin;
pub mod metrics;
pub mod objects;
pub mod peers;
pub mod site;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use tower_http::trace::TraceLayer;

use crate::state::AppState;

/// Largest JSON body the API accepts.
pub const MAX_API_BODY: usize = 64 * 1024;

/// Builds the router: the API sub-routers, and the site for every other path.
pub fn app(state: Arc<AppState>) -> Router {
    Router::new()
        .merge(peers::router())
        .merge(objects::router())
        .merge(metrics::router())
        .merge(admin::router())
        .layer(DefaultBodyLimit::max(MAX_API_BODY))
        .fallback(site::site)
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}
