//! Why a download failed, as the caller (gateway, `fetch`) sees it, and the
//! channel verified bytes reach it through.

use bytes::Bytes;
use tokio::sync::mpsc;

/// Largest object the buffered [`Fetcher::fetch`](super::Fetcher::fetch) holds
/// in memory (streamed downloads have no such limit but the disk's).
pub const MAX_OBJECT_SIZE: u64 = 1 << 30;

/// Why a download failed. Each variant names its real cause: a full local disk
/// is not "the site answered with an error".
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The URL is not http(s).
    #[error("not an http(s) URL: {0}")]
    BadUrl(String),
    /// The server could not be reached or broke off.
    #[error("server unreachable: {}", crate::server_link::cause_chain(.0))]
    Unreachable(#[from] reqwest::Error),
    /// The site answered with this status (passed on to the browser as is).
    #[error("the site answered {0}")]
    SiteStatus(u16),
    /// The server's own bytes did not match its hash.
    #[error("the server's bytes do not match its own hash")]
    ServerMismatch,
    /// The referral was malformed.
    #[error("bad referral: {0}")]
    BadReferral(String),
    /// The object is larger than the buffered fetch holds.
    #[error("object of {0} bytes is larger than the {MAX_OBJECT_SIZE}-byte limit")]
    TooLarge(u64),
    /// The receiver went away before the end.
    #[error("cancelled")]
    Cancelled,
    /// The server is silent and peers could not stand in.
    #[error("server unreachable ({cause}), and {then}")]
    ServerDown {
        /// Why the server is silent: "connection refused", a TLS error, …
        cause: String,
        /// Why peers could not stand in.
        then: &'static str,
    },
    /// Every source failed, the server included.
    #[error("every source failed: {0}")]
    Sources(String),
    /// This computer's disk failed (the cache's temp file).
    #[error("local disk: {0}")]
    Disk(std::io::Error),
}

impl FetchError {
    /// Worth trying again later: the server is unreachable or answered 5xx/429
    /// (its look-up table may be down for a moment). Bad input is not.
    pub fn is_transient(&self) -> bool {
        match self {
            FetchError::Unreachable(_) | FetchError::ServerDown { .. } | FetchError::Sources(_) => {
                true
            }
            FetchError::SiteStatus(s) => *s >= 500 || *s == 429,
            _ => false,
        }
    }
}

/// Verified chunks in order; an `Err` item means the download failed there.
pub type BodyReceiver = mpsc::Receiver<Result<Bytes, FetchError>>;
/// The sending side of a [`BodyReceiver`].
pub type BodySender = mpsc::Sender<Result<Bytes, FetchError>>;
/// Depth of the channel carrying verified chunks to the caller.
pub const CHANNEL_DEPTH: usize = 16;

/// A new body channel.
pub fn body_channel() -> (BodySender, BodyReceiver) {
    mpsc::channel(CHANNEL_DEPTH)
}
