//! The JSON messages of peercache: the server's `/v1/` API, the referral body, and
//! the native-messaging messages between the extension and the host.
//!
//! One example of each lives in `docs/protocol.md`; the tests here keep the field
//! names stable.

use serde::{Deserialize, Serialize};

pub use crate::doctor::{ReachRequest, ReachResponse};
use crate::hash::ObjectHash;
pub use crate::peer::LocateResponse;
pub use crate::proxy::{Load, Proxy, SERVER_PROXY_ID};

/// `POST /v1/peers`: a host introduces itself, signed with its key
/// (`crate::auth`). Of the direct addresses it reports, the server lists only
/// those on the source address of the connection (B6); when none is, it lists that
/// source address with the endpoint's `port`. A client that does not serve sends
/// no `dial`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterRequest {
    /// The host's id: its public key, 64 hex digits.
    pub peer_id: String,
    /// How to reach its peer endpoint (relay and direct addresses), if it serves.
    #[serde(default)]
    pub dial: Option<crate::peer::DialInfo>,
    /// The UDP port its peer endpoint is bound to, if it serves.
    #[serde(default)]
    pub port: Option<u16>,
    /// Load at registration time.
    #[serde(default)]
    pub load: Option<Load>,
}

/// A relay the server offers its peers (B10).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayInfo {
    /// Its URL, e.g. `https://198.51.100.2:8443/`.
    pub url: String,
    /// The UDP port of its QUIC address discovery, if it runs one.
    #[serde(default)]
    pub qad_port: Option<u16>,
}

/// Answer to a registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterResponse {
    /// Echo of the id.
    pub peer_id: String,
    /// The address other peers will be given, if the host serves.
    pub addr: Option<String>,
    /// Seconds until the registration lapses without a heartbeat (an announce).
    pub ttl_secs: u64,
    /// Relays the host should keep a connection to, so peers behind routers can
    /// reach it (and it learns its public address).
    #[serde(default)]
    pub relays: Vec<RelayInfo>,
}

/// Largest request body the server's API accepts (register, announce, report).
pub const MAX_API_BODY: usize = 64 * 1024;

/// `POST /v1/sources`: a peer receiving an object asks, mid-download, for the
/// sources that appeared since its referral (issue 12): the object's holders
/// and the other peers receiving it now. Signed; answered with a list of
/// [`Proxy`] (the asker left out), each booked as offered to it so its
/// report about them counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourcesRequest {
    /// The asking peer (the signing key).
    pub peer_id: String,
    /// The object.
    pub hash: ObjectHash,
}

/// `POST /v1/announce`: what a peer now holds or dropped, and its load. Doubles as
/// the heartbeat that keeps the registration alive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announce {
    /// The announcing peer.
    pub peer_id: String,
    /// Objects newly held (or still held, on a full re-announce).
    #[serde(default)]
    pub have: Vec<ObjectHash>,
    /// Objects evicted.
    #[serde(default)]
    pub dropped: Vec<ObjectHash>,
    /// Current load.
    #[serde(default)]
    pub load: Option<Load>,
}

/// Answer to an announce.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnnounceResponse {
    /// Objects the server now lists this peer for.
    pub accepted: Vec<ObjectHash>,
    /// Objects it refused to list (unknown to the server, say).
    pub rejected: Vec<ObjectHash>,
    /// Seconds until the listing lapses without another announce.
    pub ttl_secs: u64,
}

/// How a download from a referred source ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// All bytes arrived and verified.
    Served,
    /// Bytes arrived that do not match the server's hash.
    Mismatch,
    /// The source failed (refused, timed out, broke off).
    Failed,
    /// The client did not use the peer it was referred to first (it had the object,
    /// or chose another): the referral booked against that peer's load is released.
    Unused,
}

/// `POST /v1/report`: which source served a referred download, and how (M9, B6).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// The reporting peer.
    pub peer_id: String,
    /// The object.
    pub hash: ObjectHash,
    /// Id of the source (a peer id, or `server`).
    pub source: String,
    /// What happened.
    pub outcome: Outcome,
    /// Bytes received from that source.
    #[serde(default)]
    pub bytes: u64,
    /// Time taken, milliseconds.
    #[serde(default)]
    pub duration_ms: u64,
    /// Whether the connection to the source went direct (`true`) or only through
    /// a relay (`false`), if known.
    #[serde(default)]
    pub direct: Option<bool>,
}

/// The object a referral is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectInfo {
    /// The URL the client asked for.
    pub url: String,
    /// Size in bytes.
    pub size: u64,
    /// BLAKE3 of the bytes: the only hash the client trusts.
    pub hash: ObjectHash,
    /// `Content-Type` the server would have sent.
    pub content_type: String,
}

/// Body of a `300 Multiple Choices`: where else to get the object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Referral {
    /// What to fetch.
    pub object: ObjectInfo,
    /// Peers holding it, best first; the server's own entry last.
    pub proxies: Vec<Proxy>,
    /// The server's base URL.
    pub server: String,
    /// The period within which the server could not send the object.
    pub target_period_ms: u64,
    /// Bytes per second a source should reach to deliver within the period.
    pub target_speed: u64,
    /// The server's signed record of the object (B8), for peers to pass on.
    #[serde(default)]
    pub record: Option<crate::record::SignedRecord>,
    /// Why the server referred: its figures and the rule's reason.
    #[serde(default)]
    pub why: Option<crate::decide::Explained>,
    /// The object's representation headers, as a `200` would carry them
    /// (`Cache-Control`, validators, `Content-Encoding`, the origin's other
    /// end-to-end headers): what the gateway hands the browser with bytes
    /// from peers, and what the host's freshness is computed from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<(String, String)>,
}

/// `GET /v1/key`: the server's record-signing key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerKey {
    /// Ed25519 public key, 64 hex digits.
    pub public_key: String,
    /// The rotations that led to it, each signed by the key before (issue 14),
    /// so a client that pinned an older key may pin this one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rotations: Vec<crate::record::KeyRotation>,
}

/// A site the user enabled: its origin and advertised scope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnabledSite {
    /// `https://example.org` (scheme, host, optional port; no path).
    pub origin: String,
    /// Path prefix that may go through peers.
    pub scope: String,
}

/// Counters the host keeps for the popup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Counters {
    /// Bytes received from peers (verified).
    pub bytes_from_peers: u64,
    /// Bytes received from the server.
    pub bytes_from_server: u64,
    /// Bytes uploaded to other peers.
    pub bytes_served: u64,
    /// Downloads whose peer bytes failed verification.
    pub verification_failures: u64,
    /// Bytes answered from this host's own cache (re-verified), without asking
    /// the site for the body.
    #[serde(default)]
    pub bytes_from_cache: u64,
}

impl Counters {
    /// Bytes the sites did not have to send: from peers plus from the own cache.
    pub fn bytes_saved(&self) -> u64 {
        self.bytes_from_peers.saturating_add(self.bytes_from_cache)
    }
}

/// A peer that recently sent this host verified bytes for a site, for the popup's
/// "current peers" list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecentPeer {
    /// The site (server origin) the bytes belonged to.
    pub site: String,
    /// The peer's id.
    pub id: String,
    /// The peer's address as the server listed it.
    pub addr: String,
    /// Verified bytes received from it in this session.
    pub bytes: u64,
    /// Seconds since it last sent a byte.
    pub idle_secs: u64,
}

/// The host's limits and cache use, as the popup shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct HostLimits {
    /// Upload slots.
    pub max_uploads: u32,
    /// Upload cap in bytes per second (0 = none).
    pub upload_rate: u64,
    /// Cache size limit in bytes (0 = none).
    pub cache_max: u64,
    /// Bytes cached now.
    pub cache_bytes: u64,
}

/// Messages from the extension to the native host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToHost {
    /// First message: the extension's version.
    Hello {
        /// Extension version.
        version: String,
    },
    /// The user's settings; replaces the previous ones at once.
    Config {
        /// Global toggle.
        enabled: bool,
        /// Sites the gateway may fetch for.
        sites: Vec<EnabledSite>,
    },
    /// The user's workload and cache limits; applied at once.
    Limits {
        /// Upload slots.
        max_uploads: u32,
        /// Upload cap in bytes per second (0 = none).
        upload_rate: u64,
        /// Cache size in bytes (0 = none).
        cache_max: u64,
    },
    /// Ask for a fresh `status`.
    GetStatus,
    /// Answer to `not_shareable`: the rule that sends `url` to the site itself is
    /// in force, so the gateway may redirect the browser there.
    DirectReady {
        /// The URL from `not_shareable`.
        url: String,
    },
}

/// Messages from the native host to the extension.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FromHost {
    /// Answer to `hello`.
    Hello {
        /// Host version.
        version: String,
        /// Protocol version.
        protocol: u32,
    },
    /// Where the gateway is and what the host has done.
    Status {
        /// Port of the local gateway on 127.0.0.1.
        gateway_port: u16,
        /// Token the gateway expects in `X-Peercache-Token`.
        token: String,
        /// Address of this host's peer server, as seen locally.
        peer_addr: String,
        /// The host's peer id.
        peer_id: String,
        /// Counters since start.
        counters: Counters,
        /// Limits in force.
        #[serde(default)]
        limits: HostLimits,
        /// Peers that recently sent this host verified bytes, newest first.
        #[serde(default)]
        peers: Vec<RecentPeer>,
        /// Recent downloads and why they went as they did, newest first.
        #[serde(default)]
        recent: Vec<crate::explain::Explanation>,
        /// `peercache-host doctor`'s verdicts: each browser's registration and
        /// how each server this host uses sees it (`crate::doctor`).
        #[serde(default)]
        doctor: Vec<crate::doctor::Verdict>,
    },
    /// The server answered `url` with a response that may never be shared
    /// (`Set-Cookie`, `private`, `no-store`, …). The extension stops sending that
    /// URL to the gateway, so the browser fetches it from the site itself, with its
    /// own cookies, from then on.
    NotShareable {
        /// The request URL.
        url: String,
        /// Why, for logs and the popup.
        reason: String,
    },
    /// Something happened (a fetch, an upload, a failure).
    Event {
        /// Kind of event, e.g. `fetched`.
        kind: String,
        /// Human-readable detail.
        detail: String,
    },
    /// The last message could not be handled.
    Error {
        /// Why.
        message: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_messages_use_type_tag() {
        let m: ToHost = serde_json::from_str(r#"{"type":"hello","version":"0.1.0"}"#).unwrap();
        assert_eq!(
            m,
            ToHost::Hello {
                version: "0.1.0".into()
            }
        );
        let e = serde_json::to_value(FromHost::Error {
            message: "x".into(),
        })
        .unwrap();
        assert_eq!(e["type"], "error");
        assert!(serde_json::from_str::<ToHost>(r#"{"type":"nope"}"#).is_err());
    }

    #[test]
    fn referral_field_names_are_stable() {
        let r = Referral {
            object: ObjectInfo {
                url: "https://s/a".into(),
                size: 3,
                hash: ObjectHash::of(b"abc"),
                content_type: "text/plain".into(),
            },
            proxies: vec![Proxy {
                id: "p".into(),
                addr: "peer:?direct=192.0.2.2:1".into(),
                direct: Some(true),
                rtt_ms: Some(3),
                load: Some(Load {
                    active: 0,
                    limit: 4,
                }),
            }],
            server: "https://s".into(),
            target_period_ms: 2000,
            target_speed: 10,
            record: None,
            why: None,
            headers: Vec::new(),
        };
        let v = serde_json::to_value(&r).unwrap();
        for key in [
            "object",
            "proxies",
            "server",
            "target_period_ms",
            "target_speed",
        ] {
            assert!(v.get(key).is_some(), "{key}");
        }
        assert_eq!(serde_json::from_value::<Referral>(v).unwrap(), r);
    }
}
