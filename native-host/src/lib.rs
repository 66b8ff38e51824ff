//! `peercache-host`: the native host that runs beside the browser.
//!
//! Layout:
//! - [`identity`]: the host's key (its peer id is the public half), kept in its
//!   state directory; it signs registrations, announces and reports.
//! - [`cache`]: the on-disk content cache (files named by hex hash, crash-safe writes).
//! - [`client`]: the client protocol: ask the server, follow a referral to a peer,
//!   verify every byte against the server's hash, fall back to the server, store,
//!   announce and report.
//! - [`download`]: verified multi-source downloads with resume (B1, B3).
//! - [`peer_server`]: the "proxy server client": serves cached objects to other
//!   peers by hash over QUIC connections dialed by this host's key
//!   (`peercache_net`), with upload slots; no plain-TCP port.
//! - [`gateway`]: the local gateway on 127.0.0.1 that the extension redirects
//!   enrolled requests to (token and Host checked, enrolled origins only).
//! - [`native`]: native messaging with the extension on stdin/stdout (framed, capped,
//!   stdout reserved for frames).
//! - [`workload`]: upload slots, upload rate cap, per-requester rate (M12).
//! - [`knowledge`]: pinned server keys, signed records, the auxiliary proxy list.
//! - [`install`]: writing and removing the browsers' host manifests.
//! - [`node`]: wiring of the above into one running peer (used by `serve` and by
//!   native-messaging mode).
//!
//! Goals: no unverified byte ever reaches the browser or the cache; every failure
//! ends in the bytes from the server, or a clear error.
//! - [`lan`]: the UDP multicast who-has / i-have query of the local network.
//!
//! Non-goals: serving partial objects (a peer serves only what it holds whole).

pub mod cache;
pub mod counters;
pub mod fetch;
pub mod gateway;
pub mod identity;
pub mod install;
pub mod knowledge;
pub mod lan;
pub mod native;
pub mod node;
pub mod peer_memory;
pub mod peer_server;
pub mod server_link;
pub mod workload;

/// Version reported in `hello`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
