//! The peer plane's pure parts: how a peer is addressed and what peers say to each
//! other (DESIGN section 4, "Peer").
//!
//! Peers talk QUIC (iroh), dialed by the peer's public key, on the ALPN [`ALPN`].
//! Each request is one bidirectional stream:
//!
//! ```text
//! client → peer:  frame(PeerRequest)                      then finish
//! peer → client:  frame(PeerResponse)  body (body_len bytes)  then finish
//! ```
//!
//! A frame is a 4-byte big-endian length and that many bytes of JSON, at most
//! [`MAX_FRAME`]. The body is raw bytes (object bytes or the outboard) or JSON (a
//! locate answer); its length is announced in the response and each reader caps
//! it by what it can legitimately be.
//!
//! A [`DialInfo`] is what a server hands out so others can reach a peer: its relay
//! URL and the direct addresses it reported. Its text form (in `Proxy::addr`) is
//! `peer:?relay=<url>&direct=<ip:port>&direct=…`.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::hash::ObjectHash;
use crate::proxy::{Load, Proxy};

/// The ALPN of peercache's peer protocol.
pub const ALPN: &[u8] = b"peercache/peer/1";
/// Largest request or response header frame.
pub const MAX_FRAME: usize = 16 * 1024;
/// Largest locate answer accepted.
pub const MAX_LOCATE_BODY: u64 = 256 * 1024;
/// Most direct addresses kept per peer.
pub const MAX_DIRECT_ADDRS: usize = 8;
/// Longest relay URL accepted.
pub const MAX_RELAY_URL: usize = 256;

/// The context of [`lan_digest`].
pub const LAN_DIGEST_CONTEXT: &str = "peercache 2026-12 LAN who-has: URL digest";

/// What a LAN who-has and a cascade query carry instead of the URL (hex): a
/// digest of the URL under a fixed context, so neither the LAN nor the peer
/// asked sees a URL in clear; a responder compares it with the digests of the
/// URLs whose records it holds, and learns nothing about a URL it does not
/// know already. The cascade names the site the same way (the digest of the
/// origin).
pub fn lan_digest(url: &str) -> String {
    let mut h = blake3::Hasher::new_derive_key(LAN_DIGEST_CONTEXT);
    h.update(url.as_bytes());
    h.finalize().to_hex().to_string()
}

/// Smallest LAN who-has datagram (padded up to it): a reply is never larger
/// than the query it answers, so the responder cannot amplify a spoofed one.
pub const LAN_QUERY_SIZE: usize = 1200;

/// True if `s` has the form of a [`lan_digest`]: 64 hex digits.
pub fn is_digest(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// How to reach a peer besides its key.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DialInfo {
    /// The relay it is connected to, if any.
    pub relay: Option<String>,
    /// The direct (UDP) addresses it reported.
    pub direct: Vec<SocketAddr>,
}

/// Why a dial string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a peer address: {0}")]
pub struct BadDialInfo(pub String);

/// True if `url` may stand as a relay URL: http(s), bounded, nothing that
/// would break the dial string.
pub fn is_relay_url(url: &str) -> bool {
    (url.starts_with("https://") || url.starts_with("http://"))
        && url.len() <= MAX_RELAY_URL
        && !url
            .bytes()
            .any(|b| matches!(b, b'&' | b'#' | b' ' | b'"' | b'<' | b'>') || b < 0x21)
}

impl DialInfo {
    /// The text form used in `Proxy::addr` and the look-up table.
    pub fn to_dial_string(&self) -> String {
        let mut parts = Vec::new();
        if let Some(r) = &self.relay {
            parts.push(format!("relay={r}"));
        }
        for d in &self.direct {
            parts.push(format!("direct={d}"));
        }
        format!("peer:?{}", parts.join("&"))
    }

    /// Parses the text form; refuses anything else, at most
    /// [`MAX_DIRECT_ADDRS`] direct addresses.
    pub fn parse(s: &str) -> Result<Self, BadDialInfo> {
        let bad = || BadDialInfo(s.chars().take(80).collect());
        let rest = s.strip_prefix("peer:?").ok_or_else(bad)?;
        let mut info = DialInfo::default();
        for part in rest.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').ok_or_else(bad)?;
            match k {
                "relay" if info.relay.is_none() && is_relay_url(v) => {
                    info.relay = Some(v.to_string());
                }
                "direct" if info.direct.len() < MAX_DIRECT_ADDRS => {
                    info.direct.push(v.parse().map_err(|_| bad())?);
                }
                _ => return Err(bad()),
            }
        }
        Ok(info)
    }

    /// True when there is no way to dial (no relay, no address).
    pub fn is_empty(&self) -> bool {
        self.relay.is_none() && self.direct.is_empty()
    }

    /// A short human form for the popup and the admin page.
    pub fn display(&self) -> String {
        match (self.direct.first(), &self.relay) {
            (Some(d), _) => d.to_string(),
            (None, Some(r)) => format!("relay {r}"),
            (None, None) => "unreachable".into(),
        }
    }
}

/// A request on one stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum PeerRequest {
    /// Round trip and current load (M6, M8, M12).
    Ping,
    /// The group CVs of an object, for verified streaming (B1).
    Outboard {
        /// The object.
        hash: ObjectHash,
    },
    /// An object's bytes, whole or the inclusive byte range `first..=last`.
    Object {
        /// The object.
        hash: ObjectHash,
        /// The range, if any.
        #[serde(default)]
        range: Option<(u64, u64)>,
        /// Bytes of the object the requester still lacks, sent by a swarm
        /// download: a peer asked by a crowd sends first to whoever is
        /// nearest the end (the host's upload turns). A hint: absent (a
        /// single-source download, an older host), the bytes are sent at
        /// once, outside the turns, as before.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        remaining: Option<u64>,
    },
    /// Which groups of an object this peer holds verified: the body is a
    /// `pieces::HaveMap` (all ones for a whole object), `size` the object's.
    /// Asked again as a partial holder grows, one cheap stream per source.
    Have {
        /// The object.
        hash: ObjectHash,
    },
    /// The server-silent cascade query (M10, M11). It names the object and
    /// its site by digest ([`lan_digest`] of the URL and of the origin): a
    /// peer answers only about what it already knows, and learns no URL.
    Locate {
        /// The digest of the URL asked for.
        object: String,
        /// The digest of the URL's origin (whom to pass the query on to).
        site: String,
        /// Hops left.
        ttl: u8,
        /// Query id (loop protection).
        qid: String,
    },
}

impl PeerRequest {
    /// The cascade query for the object at `url` on the site `origin`, both
    /// by digest.
    pub fn locate(url: &str, origin: &str, ttl: u8, qid: &str) -> Self {
        PeerRequest::Locate {
            object: lan_digest(url),
            site: lan_digest(origin),
            ttl,
            qid: qid.to_string(),
        }
    }
}

/// How a request went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum PeerStatus {
    /// The body follows.
    Ok,
    /// The peer does not hold the object.
    NotHeld,
    /// Over the workload limit: ask again after this long (M12).
    Busy {
        /// Milliseconds to wait.
        retry_after_ms: u64,
    },
    /// This requester asks too often.
    RateLimited {
        /// Milliseconds to wait.
        retry_after_ms: u64,
    },
    /// The range is outside the object.
    RangeNotSatisfiable,
    /// The request was malformed.
    BadRequest {
        /// Why.
        reason: String,
    },
}

/// The header of an answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerResponse {
    /// The outcome.
    #[serde(flatten)]
    pub status: PeerStatus,
    /// The peer's load (slots in use against its limit).
    #[serde(default)]
    pub load: Option<Load>,
    /// The whole object's size, for `Object`.
    #[serde(default)]
    pub size: Option<u64>,
    /// Bytes of body that follow.
    #[serde(default)]
    pub body_len: u64,
}

impl PeerResponse {
    /// An `ok` answer whose `body_len` bytes follow.
    pub fn body(body_len: u64, load: Option<Load>) -> Self {
        Self {
            status: PeerStatus::Ok,
            load,
            size: None,
            body_len,
        }
    }

    /// An answer without body.
    pub fn status(status: PeerStatus, load: Option<Load>) -> Self {
        Self {
            status,
            load,
            size: None,
            body_len: 0,
        }
    }
}

/// A locate answer is a [`LocateResponse`] in JSON.
pub type LocateAnswer = LocateResponse;

/// Why a frame could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The announced length is over [`MAX_FRAME`].
    #[error("frame of {0} bytes is over the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    /// The JSON does not parse as the expected message.
    #[error("malformed frame: {0}")]
    Malformed(String),
}

/// Encodes a message as a frame.
pub fn encode_frame<T: Serialize>(msg: &T) -> Vec<u8> {
    let json = serde_json::to_vec(msg).unwrap_or_default();
    let mut out = Vec::with_capacity(4 + json.len());
    out.extend_from_slice(&u32::try_from(json.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(&json);
    out
}

/// Checks a frame's 4-byte length prefix; returns the length to read.
pub fn frame_len(prefix: [u8; 4]) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    Ok(len)
}

/// Decodes a frame's JSON.
pub fn decode_frame<T: for<'de> Deserialize<'de>>(json: &[u8]) -> Result<T, FrameError> {
    serde_json::from_slice(json).map_err(|e| FrameError::Malformed(e.to_string()))
}

/// Answer of a peer's `GET /v1/locate?url=…&ttl=N&qid=…` (M10, M11): holders of
/// the object at `url` found here or deeper in the tree of peers, and the
/// server's signed record of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct LocateResponse {
    /// The signed record, if any peer on the way kept one.
    pub record: Option<crate::record::SignedRecord>,
    /// Peers holding the object; an empty `addr` means "the peer you asked".
    pub holders: Vec<Proxy>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dial_strings_round_trip() {
        let info = DialInfo {
            relay: Some("https://198.51.100.2:4443/".into()),
            direct: vec![
                "198.51.100.7:5000".parse().unwrap(),
                "[2001:db8::1]:9".parse().unwrap(),
            ],
        };
        let s = info.to_dial_string();
        assert_eq!(DialInfo::parse(&s).unwrap(), info);
        assert_eq!(DialInfo::parse("peer:?").unwrap(), DialInfo::default());
    }

    #[test]
    fn bad_dial_strings_are_refused() {
        let many = format!(
            "peer:?{}",
            ["direct=1.2.3.4:5"; MAX_DIRECT_ADDRS + 1].join("&")
        );
        for s in [
            "http://1.2.3.4:5",
            "peer:?relay=ftp://x",
            "peer:?direct=nope",
            "peer:?other=1",
            "peer:?relay=https://a&relay=https://b",
            many.as_str(),
        ] {
            assert!(DialInfo::parse(s).is_err(), "{s}");
        }
    }

    #[test]
    fn frames_round_trip_and_are_bounded() {
        let req = PeerRequest::Object {
            hash: ObjectHash::of(b"x"),
            range: Some((1, 2)),
            remaining: Some(7),
        };
        let f = encode_frame(&req);
        let len = frame_len(f[..4].try_into().unwrap()).unwrap();
        assert_eq!(decode_frame::<PeerRequest>(&f[4..4 + len]).unwrap(), req);
        assert_eq!(
            frame_len((MAX_FRAME as u32 + 1).to_be_bytes()),
            Err(FrameError::TooLarge(MAX_FRAME + 1))
        );
        assert!(decode_frame::<PeerRequest>(b"{\"op\":\"nope\"}").is_err());
        // A request from a host without the swarm hint still parses, and one
        // without a hint is sent as such a host sends it.
        let plain = br#"{"op":"object","hash":"HASH","range":[0,9]}"#;
        let hex = ObjectHash::of(b"x").to_hex();
        let plain = String::from_utf8_lossy(plain).replace("HASH", &hex);
        let parsed: PeerRequest = decode_frame(plain.as_bytes()).unwrap();
        let without = PeerRequest::Object {
            hash: ObjectHash::of(b"x"),
            range: Some((0, 9)),
            remaining: None,
        };
        assert_eq!(parsed, without);
        assert!(!String::from_utf8_lossy(&encode_frame(&without)).contains("remaining"));
        let resp = PeerResponse {
            status: PeerStatus::Busy {
                retry_after_ms: 1000,
            },
            load: Some(Load {
                active: 1,
                limit: 1,
            }),
            size: None,
            body_len: 0,
        };
        let f = encode_frame(&resp);
        assert_eq!(decode_frame::<PeerResponse>(&f[4..]).unwrap(), resp);
    }

    #[test]
    fn a_cascade_query_carries_no_url() {
        let url = "https://shop.example/account/orders/4711.pdf";
        let req = PeerRequest::locate(url, "https://shop.example", 3, "q1");
        let wire = String::from_utf8(encode_frame(&req)[4..].to_vec()).unwrap();
        for part in ["shop", "example", "orders", "4711", "https"] {
            assert!(!wire.contains(part), "{part} in {wire}");
        }
        let PeerRequest::Locate { object, site, .. } = req else {
            panic!("not a locate")
        };
        assert!(is_digest(&object) && is_digest(&site));
        assert_eq!(object, lan_digest(url));
        assert!(!is_digest("https://shop.example/a") && !is_digest(&"g".repeat(64)));
    }
}
