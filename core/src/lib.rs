//! `peercache-core`: everything in peercache that *decides*, and nothing that does I/O.
//!
//! The server, the native host and the browser extension's wasm brain all link this
//! crate, so the rules they apply are the same code:
//!
//! - [`auth`]: a peer is its key: signed requests to the server (B6).
//! - [`peer`]: the peer plane: dial info and the peer protocol's messages.
//! - [`proxy`]: a holder as a referral lists it (id, dial string, load).
//! - [`protocol`]: the JSON messages of `/v1/` and of native messaging (serde types).
//! - [`headers`]: the `Peercache-Client`, `Peercache-Object` and `Peercache` headers.
//! - [`range`]: which bytes a `GET` gets (`Range`, `If-Range`, `416`).
//! - [`conditional`]: when a conditional `GET` gets `304 Not Modified`.
//! - [`coding`]: what `Content-Encoding` says about a body (what `fetch` decodes).
//! - [`hash`]: object hashes (BLAKE3) and their hex form.
//! - [`record`]: signed object records (B8).
//! - [`decide`]: serve-or-refer, from an egress model and the target period (M1, M3, M4).
//! - [`explain`]: a download told as events, and the "why" they add up to.
//! - [`select`]: ordering a referral's proxy list (M5, M6).
//! - [`shareable`]: which requests and responses may ever be shared with peers (B2).
//! - [`extension`]: the extension's settings and the interception rules they produce.
//! - [`verified`]: BLAKE3 verified streaming in 16 KiB groups (B1).
//! - [`pieces`]: have-maps of partial holders, rarest-first piece choice, end game.
//! - [`retry`]: when a download asks a source again after a setback.
//! - [`uplink`]: the server's uplink estimated from its own transfers.
//! - [`units`]: `10MiB` sizes and `500ms` durations for flags and config files.
//!
//! Who applies which rule, along the data path (drawn in full, with files and
//! functions, in `docs/data-path.md`):
//! - the extension: [`extension`] (origin, scope, interception rules, request
//!   refusals) and [`shareable`];
//! - the server's site path: [`decide::over_target`] then [`decide::explain`]
//!   (serve, refer or defer, with the figures and the reason), holders ordered
//!   by [`select::order_holders`], ranges by [`range::choose_range`];
//! - the host's download: [`select::choose_explained`] (the order and a verdict
//!   per candidate), [`pieces::pick`] (which piece from which source),
//!   [`verified`] (every 16 KiB group), [`explain`] (the story);
//! - both sides of the peer plane: [`peer`], [`auth`], [`record`], [`range::span`].
//!
//! Modules import downwards: [`protocol`] (the messages) builds on the others;
//! [`proxy`] and [`hash`] are the bottom.
//!
//! Goals: small, deterministic, exhaustively tested, builds for `wasm32-unknown-unknown`.
//! Non-goals: networking, clocks, files, randomness. Callers pass `now` and measured
//! figures in; this crate never reads them itself.

pub mod auth;
pub mod coding;
pub mod conditional;
pub mod decide;
pub mod doctor;
pub mod explain;
pub mod extension;
pub mod hash;
pub mod headers;
pub mod peer;
pub mod pieces;
pub mod protocol;
pub mod proxy;
pub mod range;
pub mod record;
pub mod retry;
pub mod select;
pub mod shareable;
pub mod units;
pub mod uplink;
pub mod verified;

pub use hash::ObjectHash;

/// Version of the wire protocol spoken under `/v1/` and over native messaging.
pub const PROTOCOL_VERSION: u32 = 1;
