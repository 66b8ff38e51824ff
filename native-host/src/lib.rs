//! `peercache-host`: the native host that runs beside the browser.
//!
//! Layout, in layers (each imports only the ones above it; no circles):
//! - [`identity`], [`cache`], [`knowledge`], [`workload`], [`counters`],
//!   [`peer_memory`]: state: the key, the on-disk cache, pinned server keys and
//!   records, upload slots, byte counters, remembered speeds.
//! - [`partial`]: a download in progress (its file, have-map and CVs), as
//!   the peer server serves it.
//! - [`server_link`]: the server's `/v1/` API, every request signed
//!   (register, announce, report, heartbeat).
//! - [`fetch`]: the download pipeline, one stage per module (below).
//! - [`peer_server`]: serves cached objects to other peers by hash over QUIC
//!   (`peercache_net`), with upload slots; answers cascade queries.
//! - [`lan`]: the UDP multicast who-has / i-have of the local network.
//! - [`gateway`]: the local gateway on 127.0.0.1 the extension redirects
//!   enrolled requests to (token and Host checked, enrolled origins only).
//! - [`native`]: native messaging with the extension on stdin/stdout.
//! - [`install`]: the browsers' host manifests (every supported browser, on
//!   Linux, macOS and Windows), and the browsers found on this machine.
//! - [`doctor`]: the facts `peercache-host doctor` and the popup judge.
//! - [`decode`]: `fetch -o FILE` writes a gzip or deflate body decoded.
//! - [`export`]: `fetch -o FILE` makes the file a second name of the
//!   cache's verified copy (each byte written once).
//! - [`node`]: wires the above into one running peer (`serve`, native mode).
//!
//! One request followed top to bottom (a page's `GET /static/app.js`):
//!
//! | step | file | function |
//! |---|---|---|
//! | the extension redirects it to the gateway | `gateway.rs` | `handle` |
//! | start the download, its events | `fetch/mod.rs`, `fetch/events.rs` | `Fetcher::open`, `RecentDownloads::start` |
//! | register, ask the server (deferral, silence) | `fetch/ask.rs`, `server_link.rs` | `ask`, `ServerLink::register` |
//! | a `200`: stream, hash, write | `fetch/from_server.rs` | `heads`, `pump` |
//! | a `300`: holders from the referral | `fetch/discover.rs` | `Referred`, `discover_all` |
//! | silence: known peers, cascade, LAN | `fetch/discover.rs` | `KnownPeers`, `Lan`, `locate` |
//! | held already? | `fetch/own_cache.rs` | `open` |
//! | measure and choose | `fetch/choose.rs` | `measure`, `choose` (rule: `peercache_core::select::choose_explained`) |
//! | ranges from sources, each group verified | `fetch/transfer.rs`, `fetch/source.rs`, `fetch/verify.rs` | `run`, `SourceRef::open_range`, `Proof::check_group` |
//! | keep | `fetch/keep.rs` | `keep` |
//! | announce and report | `fetch/settle.rs` | `announce_kept`, `report_sources` |
//! | bytes to the page | `gateway.rs` | `handle` (the body stream) |
//!
//! Goals: no unverified byte ever reaches the browser or the cache; every failure
//! ends in the bytes from the server, or an error naming its real cause.
//!
//! A download in progress is served too: [`partial`] keeps its verified
//! groups and have-map where the peer server finds them (issue 12 point 2).

pub mod cache;
pub mod counters;
pub mod decode;
pub mod doctor;
pub mod export;
pub mod fetch;
pub mod gateway;
pub mod identity;
pub mod install;
pub mod knowledge;
pub mod lan;
pub mod native;
pub mod node;
pub mod partial;
pub mod peer_memory;
pub mod peer_server;
pub mod server_link;
pub mod upload_turns;
pub mod workload;

/// Version reported in `hello`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
