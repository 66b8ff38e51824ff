//! `peercache-net`: the peer plane (DESIGN section 4, "Peer"; B10).
//!
//! Every exchange with a peer goes over one authenticated, encrypted transport: a
//! QUIC connection (iroh) dialed by the peer's public key, hole-punched through
//! home routers, through the site's relay only when no direct path exists. The
//! messages themselves (and their limits) are pure data in
//! `peercache_core::peer`; this crate is the I/O around them.
//!
//! Layout:
//! - [`endpoint`]: building a host's or server's endpoint (key, bind address,
//!   trusted roots, relays) and reading back how others can dial it.
//! - [`wire`]: framed requests and answers on one QUIC stream, every read bounded.
//! - [`dialer`]: the requesting side: a bounded pool of connections by peer id,
//!   and one call per operation (ping, outboard, object range, locate), each
//!   failing with a typed [`PeerError`].
//!
//! The answering side lives with the cache it serves (`peercache-host`'s
//! `peer_server`); it uses [`wire`] for its frames.

pub mod dialer;
pub mod endpoint;
pub mod wire;

pub use dialer::{ObjectBody, PeerDialer, Pinged};
pub use endpoint::{EndpointOptions, NetError};
pub use iroh::Endpoint;

use peercache_core::peer::{FrameError, PeerStatus};

/// Why an exchange with a peer failed. Each names the direction and stage.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// The id is not a public key.
    #[error("not a peer id: {0}")]
    BadId(String),
    /// Neither a relay nor a direct address is known.
    #[error("no address to dial the peer at")]
    NoAddress,
    /// The connection could not be set up in time.
    #[error("dialing the peer timed out")]
    DialTimeout,
    /// The connection could not be set up.
    #[error("dialing the peer failed: {0}")]
    Dial(String),
    /// A stream broke (reset, connection lost).
    #[error("the peer's stream failed: {0}")]
    Stream(String),
    /// The peer did not answer within the deadline.
    #[error("the peer did not answer in time")]
    Timeout,
    /// The peer's frame was malformed or too large.
    #[error("bad frame from the peer: {0}")]
    Frame(#[from] FrameError),
    /// The peer answered, but not with the body (not held, busy, …).
    #[error("the peer refused: {0:?}")]
    Refused(PeerStatus),
    /// The answer is longer than it can legitimately be.
    #[error("the peer's answer is longer than the {0}-byte limit")]
    TooLong(u64),
    /// The answer ended before its announced length.
    #[error("the peer's answer ended early")]
    Truncated,
}
