//! Discover sources: who may hold the object at a URL. Every way of finding
//! holders sits behind [`Discover`]:
//!
//! - [`Referred`]: the server's referral (holders it chose, and its record);
//! - [`KnownPeers`]: peers met in earlier referrals, asked where the object is;
//!   each answers for itself and asks the peers it knows (the cascade, M11);
//! - [`Lan`]: who-has on the local network (M10).
//!
//! Discovery only finds candidates; measuring, choosing and downloading are
//! later stages. Records found here are not trusted yet: the caller checks
//! them against the pinned server key.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use peercache_core::explain::Discovery;
use peercache_core::peer::{DialInfo, PeerRequest};
use peercache_core::protocol::{LocateResponse, Proxy, Referral};
use peercache_core::record::SignedRecord;

/// Most holders one discovery keeps.
pub const MAX_HOLDERS: usize = 32;
/// Most known peers asked at once.
const MAX_ASKED: usize = 16;

/// Holders and records found.
#[derive(Debug, Clone, Default)]
pub struct Found {
    /// Candidate holders (dial info parsed at least once).
    pub holders: Vec<Proxy>,
    /// Records found on the way (not verified yet).
    pub records: Vec<SignedRecord>,
}

impl Found {
    /// Adds `other`'s holders not yet listed (by id and address), up to
    /// [`MAX_HOLDERS`], leaving out `me`.
    pub fn merge(&mut self, other: Found, me: &str) {
        for h in other.holders {
            if self.holders.len() < MAX_HOLDERS
                && h.id != me
                && !self
                    .holders
                    .iter()
                    .any(|x| x.id == h.id && x.addr == h.addr)
            {
                self.holders.push(h);
            }
        }
        self.records
            .extend(other.records.into_iter().take(MAX_HOLDERS));
    }
}

/// A way of finding holders (see the module docs).
pub trait Discover: Send + Sync {
    /// Which way this is (for the explanation).
    fn via(&self) -> Discovery;
    /// Looks for holders of `url`.
    fn find<'a>(&'a self, url: &'a str) -> BoxFuture<'a, Found>;
}

/// Asks every source at once and merges what they found; returns how many
/// holders each found.
pub async fn discover_all(
    sources: &[&dyn Discover],
    url: &str,
    me: &str,
) -> (Found, Vec<(Discovery, usize)>) {
    let found = futures_util::future::join_all(sources.iter().map(|s| s.find(url))).await;
    let mut all = Found::default();
    let mut counts = Vec::with_capacity(sources.len());
    for (source, f) in sources.iter().zip(found) {
        counts.push((source.via(), f.holders.len()));
        all.merge(f, me);
    }
    (all, counts)
}

/// The server's referral as a discovery.
#[derive(Debug)]
pub struct Referred<'r>(pub &'r Referral);

impl Discover for Referred<'_> {
    fn via(&self) -> Discovery {
        Discovery::Referral
    }

    fn find<'a>(&'a self, _url: &'a str) -> BoxFuture<'a, Found> {
        let found = Found {
            holders: self.0.proxies.clone(),
            records: self.0.record.iter().cloned().collect(),
        };
        Box::pin(async move { found })
    }
}

/// Peers met before, asked where the object is (the cascade).
#[derive(Debug)]
pub struct KnownPeers {
    /// QUIC to peers.
    pub dialer: Arc<peercache_net::PeerDialer>,
    /// Whom to ask.
    pub ask: Vec<Proxy>,
    /// Hops the query may travel.
    pub ttl: u8,
    /// The query's id (peers answer a query once).
    pub qid: String,
}

impl Discover for KnownPeers {
    fn via(&self) -> Discovery {
        Discovery::KnownPeers
    }

    fn find<'a>(&'a self, url: &'a str) -> BoxFuture<'a, Found> {
        Box::pin(async move {
            let Ok(parsed) = reqwest::Url::parse(url) else {
                return Found::default();
            };
            let query = PeerRequest::locate(url, &origin(&parsed), self.ttl, &self.qid);
            let answers = futures_util::future::join_all(
                self.ask
                    .iter()
                    .take(MAX_ASKED)
                    .map(|p| locate(&self.dialer, p, &query)),
            )
            .await;
            let mut found = Found::default();
            for a in answers {
                // Records come back without their URL (the query had only its
                // digest): the URL asked is put back before the signature is
                // checked against it.
                let records = a.record.into_iter().map(|mut r| {
                    if r.record.url.is_empty() {
                        r.record.url = url.to_string();
                    }
                    r
                });
                found.merge(
                    Found {
                        holders: a.holders,
                        records: records.collect(),
                    },
                    "",
                );
            }
            found
        })
    }
}

/// Who-has on the local network.
#[derive(Debug)]
pub struct Lan {
    /// How long answers are collected.
    pub wait: Duration,
}

impl Discover for Lan {
    fn via(&self) -> Discovery {
        Discovery::Lan
    }

    fn find<'a>(&'a self, url: &'a str) -> BoxFuture<'a, Found> {
        Box::pin(async move {
            let mut found = Found::default();
            if !crate::lan::enabled() {
                return found;
            }
            for (proxy, record) in crate::lan::query(url, self.wait).await {
                found.merge(
                    Found {
                        holders: vec![proxy],
                        records: record.into_iter().collect(),
                    },
                    "",
                );
            }
            found
        })
    }
}

/// Asks `peer` where an object is (a cascade query, M11: a
/// `PeerRequest::Locate`, which names the object by digest), over its QUIC
/// connection. Holders it names without an address are the peer itself;
/// holders whose dial info does not parse are left out.
pub async fn locate(
    dialer: &peercache_net::PeerDialer,
    peer: &Proxy,
    query: &PeerRequest,
) -> LocateResponse {
    let (Ok(dial), PeerRequest::Locate { ttl, .. }) = (DialInfo::parse(&peer.addr), query) else {
        return LocateResponse::default();
    };
    let deadline = Duration::from_millis(1000 * (u64::from(*ttl) + 1));
    let asked = tokio::time::timeout(deadline, dialer.locate(&peer.id, &dial, query)).await;
    let mut found = match asked {
        Ok(Ok(found)) => found,
        _ => return LocateResponse::default(),
    };
    found.holders.truncate(MAX_HOLDERS);
    for h in &mut found.holders {
        if h.addr.is_empty() && h.id == peer.id {
            h.addr.clone_from(&peer.addr);
        }
    }
    found.holders.retain(|h| DialInfo::parse(&h.addr).is_ok());
    found
}

/// The origin (`scheme://host[:port]`) of a URL, by the one rule in
/// `peercache_core::extension::origin_of`.
pub fn origin(url: &reqwest::Url) -> String {
    peercache_core::extension::origin_of(url.as_str())
        .unwrap_or_else(|| url.origin().ascii_serialization())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxy(id: &str, addr: &str) -> Proxy {
        Proxy {
            id: id.into(),
            addr: addr.into(),
            direct: None,
            rtt_ms: None,
            load: None,
        }
    }

    #[test]
    fn merging_drops_duplicates_and_myself_and_stays_bounded() {
        let mut all = Found::default();
        all.merge(
            Found {
                holders: vec![proxy("a", "x"), proxy("me", "y"), proxy("a", "x")],
                records: Vec::new(),
            },
            "me",
        );
        assert_eq!(all.holders.len(), 1);
        let many = (0..100).map(|i| proxy(&format!("p{i}"), "z")).collect();
        all.merge(
            Found {
                holders: many,
                records: Vec::new(),
            },
            "me",
        );
        assert_eq!(all.holders.len(), MAX_HOLDERS);
    }
}
