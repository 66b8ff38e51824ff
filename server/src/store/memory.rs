//! The embedded in-memory look-up table (the default backend).

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Mutex;

use peercache_core::hash::ObjectHash;
use peercache_core::protocol::{Load, Outcome, Report};
use peercache_core::select::HolderStats;

use super::rules::{
    holdings_room, is_delisted, is_expired, is_live, pending_after_booking, pending_now,
    ping_failures_drop, smooth_rtt,
};
use super::{
    MAX_HOLDINGS_PER_PEER, MAX_OFFERS, MAX_PEERS, OFFER_TTL_MS, PathWitness, PeerRow, StoreError,
    StoreLimits, TableStats,
};

#[derive(Debug, Clone)]
struct PeerRecord {
    ip: IpAddr,
    addr: Option<String>,
    last_seen: u64,
    load: Option<Load>,
    pending: u32,
    /// Referrals booked within the window, reported or not.
    recent: u32,
    pending_at: u64,
    rtt_ms: Option<u32>,
    ping_failures: u32,
    strikes: u32,
    direct: Option<bool>,
    /// Who found `direct`.
    path_by: Option<PathWitness>,
    held: HashSet<ObjectHash>,
    fetched: HashSet<ObjectHash>,
}

#[derive(Debug, Default)]
struct Inner {
    peers: HashMap<String, PeerRecord>,
    holders: HashMap<ObjectHash, HashMap<String, u64>>,
    /// (client, hash) → (peers it was referred to, when).
    offers: HashMap<(String, ObjectHash), (HashSet<String>, u64)>,
}

/// The in-memory table.
#[derive(Debug)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
    limits: StoreLimits,
}

fn lock(m: &Mutex<Inner>) -> std::sync::MutexGuard<'_, Inner> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl MemoryStore {
    /// An empty table.
    pub fn new(limits: StoreLimits) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            limits,
        }
    }

    pub(super) fn limits(&self) -> StoreLimits {
        self.limits
    }

    fn live(&self, r: &PeerRecord, now: u64) -> bool {
        is_live(Some(r.last_seen), r.strikes, now, &self.limits)
    }

    pub(super) fn register(
        &self,
        id: &str,
        ip: IpAddr,
        dial: Option<String>,
        load: Option<Load>,
        now: u64,
    ) -> Result<Option<String>, StoreError> {
        let mut inner = lock(&self.inner);
        if let Some(rec) = inner.peers.get_mut(id) {
            if is_delisted(rec.strikes, &self.limits) {
                return Err(StoreError::UnknownPeer);
            }
            rec.ip = ip;
            if dial.is_some() {
                rec.addr = dial;
            }
            rec.last_seen = now;
            rec.ping_failures = 0;
            if load.is_some() {
                rec.load = load;
                rec.pending = 0;
            }
            return Ok(rec.addr.clone());
        }
        if inner.peers.len() >= MAX_PEERS {
            return Err(StoreError::Full);
        }
        inner.peers.insert(
            id.to_string(),
            PeerRecord {
                ip,
                addr: dial.clone(),
                last_seen: now,
                load,
                pending: 0,
                recent: 0,
                pending_at: 0,
                rtt_ms: None,
                ping_failures: 0,
                strikes: 0,
                direct: None,
                path_by: None,
                held: HashSet::new(),
                fetched: HashSet::new(),
            },
        );
        Ok(dial)
    }

    pub(super) fn book_offer(
        &self,
        client: &str,
        hash: &ObjectHash,
        peers: &[String],
        now: u64,
    ) -> Result<(), StoreError> {
        let mut inner = lock(&self.inner);
        if inner.offers.len() >= MAX_OFFERS {
            inner
                .offers
                .retain(|_, (_, at)| now.saturating_sub(*at) <= OFFER_TTL_MS);
            if inner.offers.len() >= MAX_OFFERS {
                // Still full of live offers: all go (their clients' reports are
                // then ignored); memory stays bounded.
                inner.offers.clear();
            }
        }
        let entry = inner
            .offers
            .entry((client.to_string(), *hash))
            .or_insert_with(|| (HashSet::new(), now));
        entry.1 = now;
        for p in peers.iter().take(64) {
            entry.0.insert(p.clone());
        }
        Ok(())
    }

    pub(super) fn take_offer(
        &self,
        client: &str,
        hash: &ObjectHash,
        peer: &str,
        now: u64,
        consume: bool,
    ) -> Result<bool, StoreError> {
        let mut inner = lock(&self.inner);
        let key = (client.to_string(), *hash);
        let Some((peers, at)) = inner.offers.get_mut(&key) else {
            return Ok(false);
        };
        if now.saturating_sub(*at) > OFFER_TTL_MS {
            inner.offers.remove(&key);
            return Ok(false);
        }
        if !consume {
            return Ok(peers.contains(peer));
        }
        let taken = peers.remove(peer);
        if peers.is_empty() {
            inner.offers.remove(&key);
        }
        Ok(taken)
    }

    pub(super) fn note_path(
        &self,
        peer: &str,
        direct: bool,
        by: PathWitness,
    ) -> Result<(), StoreError> {
        if let Some(r) = lock(&self.inner).peers.get_mut(peer)
            && by.overrides(r.path_by)
        {
            r.direct = Some(direct);
            r.path_by = Some(by);
        }
        Ok(())
    }

    pub(super) fn announce(
        &self,
        id: &str,
        have: &[ObjectHash],
        dropped: &[ObjectHash],
        load: Option<Load>,
        now: u64,
    ) -> Result<Vec<ObjectHash>, StoreError> {
        let mut guard = lock(&self.inner);
        let inner = &mut *guard;
        let rec = inner.peers.get_mut(id).ok_or(StoreError::UnknownPeer)?;
        if !is_live(Some(rec.last_seen), rec.strikes, now, &self.limits) {
            return Err(StoreError::UnknownPeer);
        }
        rec.last_seen = now;
        if load.is_some() {
            rec.load = load;
            rec.pending = 0;
        }
        for hash in dropped {
            rec.held.remove(hash);
            if let Some(h) = inner.holders.get_mut(hash) {
                h.remove(id);
                if h.is_empty() {
                    inner.holders.remove(hash);
                }
            }
        }
        let mut accepted = Vec::with_capacity(have.len());
        for hash in have {
            if !rec.held.contains(hash) {
                if holdings_room(rec.held.len()) == 0 {
                    break;
                }
                rec.held.insert(*hash);
                inner
                    .holders
                    .entry(*hash)
                    .or_default()
                    .entry(id.to_string())
                    .or_insert(0);
            }
            accepted.push(*hash);
        }
        Ok(accepted)
    }

    pub(super) fn holder_stats(
        &self,
        hash: &ObjectHash,
        exclude: Option<&str>,
        now: u64,
    ) -> Result<Vec<HolderStats>, StoreError> {
        let inner = lock(&self.inner);
        let Some(holders) = inner.holders.get(hash) else {
            return Ok(Vec::new());
        };
        Ok(holders
            .iter()
            .filter(|(id, _)| Some(id.as_str()) != exclude)
            .filter_map(|(id, uses)| {
                let r = inner.peers.get(id)?;
                if !self.live(r, now) {
                    return None;
                }
                Some(HolderStats {
                    id: id.clone(),
                    addr: r.addr.clone()?,
                    rtt_ms: r.rtt_ms,
                    direct: r.direct,
                    load: r.load,
                    pending: pending_now(r.pending, r.pending_at, now),
                    recent: pending_now(r.recent, r.pending_at, now),
                    uses: *uses,
                })
            })
            .collect())
    }

    pub(super) fn book_referral(&self, id: &str, now: u64) -> Result<(), StoreError> {
        if let Some(r) = lock(&self.inner).peers.get_mut(id) {
            r.pending = pending_after_booking(r.pending, r.pending_at, now);
            r.recent = pending_after_booking(r.recent, r.pending_at, now);
            r.pending_at = now;
        }
        Ok(())
    }

    pub(super) fn report(&self, report: &Report) -> Result<(), StoreError> {
        let mut guard = lock(&self.inner);
        let inner = &mut *guard;
        // The referral this report closes no longer counts as load.
        if let Some(rec) = inner.peers.get_mut(&report.source) {
            rec.pending = rec.pending.saturating_sub(1);
        }
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
                    rec.held.remove(&report.hash);
                }
                if let Some(h) = inner.holders.get_mut(&report.hash) {
                    h.remove(&report.source);
                }
            }
            Outcome::Failed | Outcome::Unused => {}
        }
        Ok(())
    }

    pub(super) fn record_fetch(&self, peer: &str, hash: &ObjectHash) -> Result<(), StoreError> {
        if let Some(r) = lock(&self.inner).peers.get_mut(peer)
            && r.fetched.len() < MAX_HOLDINGS_PER_PEER
        {
            r.fetched.insert(*hash);
        }
        Ok(())
    }

    pub(super) fn fetched(&self, peer: &str, hash: &ObjectHash) -> Result<bool, StoreError> {
        Ok(lock(&self.inner)
            .peers
            .get(peer)
            .is_some_and(|r| r.fetched.contains(hash)))
    }

    pub(super) fn peer_addr(&self, peer: &str, now: u64) -> Result<Option<String>, StoreError> {
        Ok(lock(&self.inner)
            .peers
            .get(peer)
            .filter(|r| self.live(r, now))
            .and_then(|r| r.addr.clone()))
    }

    pub(super) fn serving_peers(&self, now: u64) -> Result<Vec<(String, String)>, StoreError> {
        Ok(lock(&self.inner)
            .peers
            .iter()
            .filter(|(_, r)| self.live(r, now))
            .filter_map(|(id, r)| Some((id.clone(), r.addr.clone()?)))
            .collect())
    }

    pub(super) fn record_ping(
        &self,
        peer: &str,
        rtt_ms: Option<u32>,
        load: Option<Load>,
    ) -> Result<(), StoreError> {
        let mut guard = lock(&self.inner);
        let inner = &mut *guard;
        let Some(r) = inner.peers.get_mut(peer) else {
            return Ok(());
        };
        match rtt_ms {
            Some(rtt) => {
                r.rtt_ms = Some(smooth_rtt(r.rtt_ms, rtt));
                r.ping_failures = 0;
                if load.is_some() {
                    r.load = load;
                    r.pending = 0;
                }
            }
            None => {
                r.ping_failures += 1;
                if ping_failures_drop(r.ping_failures) {
                    inner.peers.remove(peer);
                    inner.holders.retain(|_, h| {
                        h.remove(peer);
                        !h.is_empty()
                    });
                }
            }
        }
        Ok(())
    }

    pub(super) fn expire(&self, now: u64) -> Result<(), StoreError> {
        let mut inner = lock(&self.inner);
        let dead: HashSet<String> = inner
            .peers
            .iter()
            .filter(|(_, r)| is_expired(Some(r.last_seen), r.strikes, now, &self.limits))
            .map(|(id, _)| id.clone())
            .collect();
        if dead.is_empty() {
            return Ok(());
        }
        inner.peers.retain(|id, _| !dead.contains(id));
        inner.holders.retain(|_, h| {
            h.retain(|id, _| !dead.contains(id));
            !h.is_empty()
        });
        Ok(())
    }

    pub(super) fn stats(&self, now: u64) -> Result<TableStats, StoreError> {
        let inner = lock(&self.inner);
        let mut s = TableStats {
            objects: inner.holders.len(),
            ..TableStats::default()
        };
        for r in inner.peers.values() {
            if is_delisted(r.strikes, &self.limits) {
                s.delisted += 1;
            } else if self.live(r, now) {
                s.peers += 1;
                if r.addr.is_some() {
                    s.serving_peers += 1;
                }
            }
        }
        Ok(s)
    }

    pub(super) fn peer_rows(&self, now: u64) -> Result<Vec<PeerRow>, StoreError> {
        let inner = lock(&self.inner);
        let mut rows: Vec<PeerRow> = inner
            .peers
            .iter()
            .filter(|(_, r)| self.live(r, now) || is_delisted(r.strikes, &self.limits))
            .map(|(id, r)| PeerRow {
                id: id.clone(),
                addr: r.addr.clone(),
                load: r.load,
                rtt_ms: r.rtt_ms,
                strikes: r.strikes,
                direct: r.direct,
                holdings: r.held.len(),
            })
            .collect();
        rows.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(rows)
    }
}
