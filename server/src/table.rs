//! The look-up table content → peers (M7), with liveness (TTL refreshed by
//! announces), per-object use counts (M9), load (M12) and strikes (B6).
//!
//! This is the embedded in-memory backend. Everything about it is behind [`Table`]
//! so that a shared backend (Redis, for replicas) can implement the same calls.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use peercache_core::hash::ObjectHash;
use peercache_core::protocol::{Load, Outcome, Proxy, Report};

use crate::site::lock;

/// Most peers remembered at once.
pub const MAX_PEERS: usize = 100_000;
/// Most objects one peer may be listed for.
pub const MAX_HOLDINGS_PER_PEER: usize = 100_000;

#[derive(Debug, Clone)]
struct PeerRecord {
    addr: Option<String>,
    last_seen: Instant,
    load: Option<Load>,
    strikes: u32,
    holdings: usize,
}

#[derive(Debug, Default)]
struct Inner {
    peers: HashMap<String, PeerRecord>,
    holders: HashMap<ObjectHash, HashMap<String, u64>>,
}

/// Why a table call was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    /// The peer never registered, lapsed, or was delisted.
    #[error("unknown or delisted peer")]
    UnknownPeer,
    /// The table is full.
    #[error("table full")]
    Full,
}

/// Counts for metrics and the admin page.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TableStats {
    /// Live peers.
    pub peers: usize,
    /// Peers able to serve (with an address).
    pub serving_peers: usize,
    /// Objects with at least one holder.
    pub objects: usize,
    /// Peers delisted for mismatches.
    pub delisted: usize,
}

/// One peer as the admin page shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerRow {
    /// Peer id.
    pub id: String,
    /// Serving address, if any.
    pub addr: Option<String>,
    /// Last reported load.
    pub load: Option<Load>,
    /// Verified mismatch reports against it.
    pub strikes: u32,
    /// Objects it is listed for.
    pub holdings: usize,
}

/// The in-memory look-up table.
#[derive(Debug)]
pub struct Table {
    inner: Mutex<Inner>,
    ttl: Duration,
    max_strikes: u32,
}

/// The base URL of a peer server at `ip:port`.
pub fn peer_url(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(v4) => format!("http://{v4}:{port}"),
        IpAddr::V6(v6) => format!("http://[{v6}]:{port}"),
    }
}

impl Table {
    /// An empty table.
    pub fn new(ttl: Duration, max_strikes: u32) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            ttl,
            max_strikes,
        }
    }

    /// Registration TTL.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Records a peer at the address its connection came from.
    pub fn register(
        &self,
        id: &str,
        ip: IpAddr,
        port: Option<u16>,
        load: Option<Load>,
        now: Instant,
    ) -> Result<Option<String>, TableError> {
        let mut inner = lock(&self.inner);
        let addr = port.map(|p| peer_url(ip, p));
        if let Some(rec) = inner.peers.get_mut(id) {
            if rec.strikes >= self.max_strikes {
                return Err(TableError::UnknownPeer);
            }
            rec.addr = addr.clone();
            rec.last_seen = now;
            rec.load = load.or(rec.load);
            return Ok(addr);
        }
        if inner.peers.len() >= MAX_PEERS {
            return Err(TableError::Full);
        }
        inner.peers.insert(
            id.to_string(),
            PeerRecord {
                addr: addr.clone(),
                last_seen: now,
                load,
                strikes: 0,
                holdings: 0,
            },
        );
        Ok(addr)
    }

    /// Applies an announce (the caller filtered `have` to hashes it knows).
    pub fn announce(
        &self,
        id: &str,
        have: &[ObjectHash],
        dropped: &[ObjectHash],
        load: Option<Load>,
        now: Instant,
    ) -> Result<Vec<ObjectHash>, TableError> {
        let mut guard = lock(&self.inner);
        let inner = &mut *guard;
        let rec = inner.peers.get_mut(id).ok_or(TableError::UnknownPeer)?;
        if rec.strikes >= self.max_strikes {
            return Err(TableError::UnknownPeer);
        }
        rec.last_seen = now;
        if load.is_some() {
            rec.load = load;
        }
        for hash in dropped {
            if let Some(h) = inner.holders.get_mut(hash)
                && h.remove(id).is_some()
            {
                rec.holdings = rec.holdings.saturating_sub(1);
                if h.is_empty() {
                    inner.holders.remove(hash);
                }
            }
        }
        let mut accepted = Vec::with_capacity(have.len());
        for hash in have {
            let entry = inner.holders.entry(*hash).or_default();
            if !entry.contains_key(id) {
                if rec.holdings >= MAX_HOLDINGS_PER_PEER {
                    break;
                }
                entry.insert(id.to_string(), 0);
                rec.holdings += 1;
            }
            accepted.push(*hash);
        }
        Ok(accepted)
    }

    /// Live, listed holders of `hash` with a serving address, most used first, then
    /// by free slots; at most `max`. `exclude` is the requester itself.
    pub fn holders(
        &self,
        hash: &ObjectHash,
        exclude: Option<&str>,
        now: Instant,
        max: usize,
    ) -> Vec<Proxy> {
        let inner = lock(&self.inner);
        let Some(holders) = inner.holders.get(hash) else {
            return Vec::new();
        };
        let mut found: Vec<(u64, Proxy)> = holders
            .iter()
            .filter(|(id, _)| Some(id.as_str()) != exclude)
            .filter_map(|(id, uses)| {
                let rec = inner.peers.get(id)?;
                let live = now.saturating_duration_since(rec.last_seen) <= self.ttl;
                let listed = rec.strikes < self.max_strikes;
                let free = !rec.load.is_some_and(|l| l.is_full());
                if !(live && listed && free) {
                    return None;
                }
                Some((
                    *uses,
                    Proxy {
                        id: id.clone(),
                        addr: rec.addr.clone()?,
                        rtt_ms: None,
                        load: rec.load,
                    },
                ))
            })
            .collect();
        found.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.id.cmp(&b.1.id)));
        let ordered =
            peercache_core::select::order_holders(found.into_iter().map(|(_, p)| p).collect());
        ordered.into_iter().take(max).collect()
    }

    /// Applies a client's report: a served download counts for the source; a
    /// mismatch is a strike against it.
    pub fn report(&self, report: &Report) {
        let mut inner = lock(&self.inner);
        match report.outcome {
            Outcome::Served => {
                if let Some(uses) = inner
                    .holders
                    .get_mut(&report.hash)
                    .and_then(|h| h.get_mut(&report.source))
                {
                    *uses += 1;
                }
            }
            Outcome::Mismatch => {
                if let Some(rec) = inner.peers.get_mut(&report.source) {
                    rec.strikes += 1;
                }
                // The source no longer counts as a holder of what it got wrong.
                if let Some(h) = inner.holders.get_mut(&report.hash) {
                    h.remove(&report.source);
                }
            }
            Outcome::Failed => {}
        }
    }

    /// Forgets peers silent for longer than the TTL, and their holdings.
    pub fn expire(&self, now: Instant) {
        let mut inner = lock(&self.inner);
        let ttl = self.ttl;
        let max_strikes = self.max_strikes;
        let dead: Vec<String> = inner
            .peers
            .iter()
            .filter(|(_, r)| {
                now.saturating_duration_since(r.last_seen) > ttl && r.strikes < max_strikes
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in &dead {
            inner.peers.remove(id);
        }
        inner.holders.retain(|_, h| {
            h.retain(|id, _| !dead.contains(id));
            !h.is_empty()
        });
    }

    /// Current counts.
    pub fn stats(&self, now: Instant) -> TableStats {
        let inner = lock(&self.inner);
        let mut s = TableStats {
            objects: inner.holders.len(),
            ..TableStats::default()
        };
        for r in inner.peers.values() {
            if r.strikes >= self.max_strikes {
                s.delisted += 1;
            } else if now.saturating_duration_since(r.last_seen) <= self.ttl {
                s.peers += 1;
                if r.addr.is_some() {
                    s.serving_peers += 1;
                }
            }
        }
        s
    }

    /// Rows for the admin page.
    pub fn peer_rows(&self) -> Vec<PeerRow> {
        let inner = lock(&self.inner);
        let mut rows: Vec<_> = inner
            .peers
            .iter()
            .map(|(id, r)| PeerRow {
                id: id.clone(),
                addr: r.addr.clone(),
                load: r.load,
                strikes: r.strikes,
                holdings: r.holdings,
            })
            .collect();
        rows.sort_by(|a, b| a.id.cmp(&b.id));
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const IP: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1));

    #[test]
    fn holders_are_live_listed_and_never_the_requester() {
        let t = Table::new(Duration::from_secs(60), 2);
        let now = Instant::now();
        let h = ObjectHash::of(b"x");
        assert_eq!(
            t.announce("a", &[h], &[], None, now),
            Err(TableError::UnknownPeer)
        );
        t.register("a", IP, Some(1000), None, now).unwrap();
        t.register("b", IP, None, None, now).unwrap();
        t.announce("a", &[h], &[], None, now).unwrap();
        t.announce("b", &[h], &[], None, now).unwrap();
        // b has no serving address; a is the requester.
        assert!(t.holders(&h, Some("a"), now, 8).is_empty());
        let list = t.holders(&h, None, now, 8);
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].addr, "http://198.51.100.1:1000");
        // Lapsed.
        assert!(
            t.holders(&h, None, now + Duration::from_secs(61), 8)
                .is_empty()
        );
        // Two strikes delist.
        for _ in 0..2 {
            t.announce("a", &[h], &[], None, now).unwrap();
            t.report(&Report {
                peer_id: "c".into(),
                hash: h,
                source: "a".into(),
                outcome: Outcome::Mismatch,
                bytes: 0,
                duration_ms: 0,
            });
        }
        assert_eq!(
            t.announce("a", &[h], &[], None, now),
            Err(TableError::UnknownPeer)
        );
        assert!(t.holders(&h, None, now, 8).is_empty());
    }

    #[test]
    fn full_peers_are_not_referred_and_dropped_objects_are_forgotten() {
        let t = Table::new(Duration::from_secs(60), 3);
        let now = Instant::now();
        let h = ObjectHash::of(b"y");
        t.register("a", IP, Some(1), None, now).unwrap();
        t.announce(
            "a",
            &[h],
            &[],
            Some(Load {
                active: 2,
                limit: 2,
            }),
            now,
        )
        .unwrap();
        assert!(t.holders(&h, None, now, 8).is_empty());
        t.announce(
            "a",
            &[],
            &[],
            Some(Load {
                active: 0,
                limit: 2,
            }),
            now,
        )
        .unwrap();
        assert_eq!(t.holders(&h, None, now, 8).len(), 1);
        t.announce("a", &[], &[h], None, now).unwrap();
        assert!(t.holders(&h, None, now, 8).is_empty());
        assert_eq!(t.stats(now).objects, 0);
    }
}
