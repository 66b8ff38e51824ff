//! The shared state of one server process ([`AppState`]): settings, the object
//! registry, the look-up table, the egress pipe, the live figures, the recent
//! decisions, the announce rate limiter and the record-signing key.
//!
//! Every route module reads this one; this module imports none of them, so the
//! state can be built (in `run` and in tests) without the router.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, header};
use metrics::{counter, gauge};
use peercache_core::decide::Explained;
use peercache_core::hash::ObjectHash;
use serde::Serialize;

use crate::config::Config;
use crate::egress::EgressPipe;
use crate::site::{Site, SiteObject};
use crate::store::{Store, StoreError, now_ms};

/// How long a signed record stays valid.
const RECORD_TTL_SECS: u64 = 24 * 3600;
/// Samples of the offload history kept for `/admin` (one per housekeeping tick).
const HISTORY: usize = 150;
/// Decisions kept for `/admin`.
pub const RECENT_DECISIONS: usize = 64;

/// A figure kept both as a live atomic (for `/admin`) and as a Prometheus
/// counter (for `/metrics`): [`Figures::add`] bumps both, so they never drift.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tally {
    /// `200`s with a body.
    Served,
    /// `300`s.
    Referred,
    /// Body bytes sent.
    BytesServed,
    /// Bytes clients reported receiving from peers.
    BytesFromPeers,
    /// Mismatch reports.
    Mismatches,
    /// Look-up table failures (each answered by serving directly).
    StoreErrors,
}

impl Tally {
    /// Every tally.
    pub const ALL: [Tally; 6] = [
        Tally::Served,
        Tally::Referred,
        Tally::BytesServed,
        Tally::BytesFromPeers,
        Tally::Mismatches,
        Tally::StoreErrors,
    ];

    /// Its Prometheus counter.
    pub fn metric(self) -> &'static str {
        match self {
            Tally::Served => "peercache_requests_served_total",
            Tally::Referred => "peercache_requests_referred_total",
            Tally::BytesServed => "peercache_bytes_served_total",
            Tally::BytesFromPeers => "peercache_bytes_reported_from_peers_total",
            Tally::Mismatches => "peercache_mismatch_reports_total",
            Tally::StoreErrors => "peercache_store_errors_total",
        }
    }
}

/// Live figures for `/admin` (the same events also go to the metrics recorder,
/// through [`Figures::add`]).
#[derive(Debug, Default)]
pub struct Figures {
    served: AtomicU64,
    referred: AtomicU64,
    bytes_served: AtomicU64,
    bytes_from_peers: AtomicU64,
    mismatches: AtomicU64,
    store_errors: AtomicU64,
    /// (unix seconds, bytes served, bytes from peers) samples.
    pub history: Mutex<VecDeque<(u64, u64, u64)>>,
}

impl Figures {
    fn cell(&self, t: Tally) -> &AtomicU64 {
        match t {
            Tally::Served => &self.served,
            Tally::Referred => &self.referred,
            Tally::BytesServed => &self.bytes_served,
            Tally::BytesFromPeers => &self.bytes_from_peers,
            Tally::Mismatches => &self.mismatches,
            Tally::StoreErrors => &self.store_errors,
        }
    }

    /// Adds `n` to the figure and to its Prometheus counter.
    pub fn add(&self, t: Tally, n: u64) {
        self.cell(t).fetch_add(n, Ordering::Relaxed);
        counter!(t.metric()).increment(n);
    }

    /// The figure now.
    pub fn get(&self, t: Tally) -> u64 {
        self.cell(t).load(Ordering::Relaxed)
    }
}

/// One serve / refer / defer decision, as `/admin` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DecisionRecord {
    /// Wall-clock milliseconds.
    pub at_ms: u64,
    /// The URL path asked for.
    pub path: String,
    /// The client's peer id, if it gave one.
    pub client: Option<String>,
    /// The figures, verdict and reason.
    pub explained: Explained,
}

/// The last [`RECENT_DECISIONS`] decisions, newest last.
#[derive(Debug, Default)]
pub struct RecentDecisions {
    ring: Mutex<VecDeque<DecisionRecord>>,
}

impl RecentDecisions {
    /// Remembers `record`, forgetting the oldest when full.
    pub fn push(&self, record: DecisionRecord) {
        let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        while ring.len() >= RECENT_DECISIONS {
            ring.pop_front();
        }
        ring.push_back(record);
    }

    /// The decisions kept, newest first.
    pub fn newest_first(&self) -> Vec<DecisionRecord> {
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        ring.iter().rev().cloned().collect()
    }
}

/// Per-peer token buckets for announces (B6).
#[derive(Debug, Default)]
pub struct RateLimiter {
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    /// Takes a token from `key`'s bucket (refilled at `per_sec`, holding four
    /// seconds' worth); false when it is empty.
    pub fn allow(&self, key: &str, per_sec: u32) -> bool {
        let mut b = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if b.len() > 100_000 {
            b.clear();
        }
        let cap = f64::from(per_sec.max(1)) * 4.0;
        let now = Instant::now();
        let (tokens, last) = b.entry(key.to_string()).or_insert((cap, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * f64::from(per_sec)).min(cap);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Transfers from the server to clients in flight, per object (an input of
/// the deferral rule).
#[derive(Debug, Default)]
pub struct Sending {
    counts: Mutex<HashMap<ObjectHash, u32>>,
}

impl Sending {
    /// A transfer of `hash` starts.
    pub fn start(&self, hash: ObjectHash) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        *counts.entry(hash).or_default() += 1;
    }

    /// A transfer of `hash` ends (sent or dropped).
    pub fn end(&self, hash: &ObjectHash) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(hash) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(hash);
            }
        }
    }

    /// Transfers of `hash` in flight.
    pub fn count(&self, hash: &ObjectHash) -> u32 {
        self.counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(hash)
            .copied()
            .unwrap_or(0)
    }
}

/// Shared state of one server process.
#[derive(Debug)]
pub struct AppState {
    /// Settings.
    pub config: Config,
    /// The object registry.
    pub site: Site,
    /// The look-up table.
    pub store: Store,
    /// The egress model and throttle.
    pub egress: EgressPipe,
    /// Live figures.
    pub figures: Figures,
    /// The last decisions, for `/admin`.
    pub decisions: RecentDecisions,
    /// Client for the upstream's helpers.
    pub http: reqwest::Client,
    /// The server's own peer endpoint: pings and possession proofs go to peers
    /// over their QUIC connections, dialed by key. `None` until `run` binds it.
    pub peers: Option<Arc<peercache_net::PeerDialer>>,
    /// Relays hosts are told to use (the site's own first).
    pub relays: Vec<peercache_core::protocol::RelayInfo>,
    /// The site's own relay, when it runs one.
    pub site_relay: Option<crate::relay::SiteRelay>,
    /// The origin, in upstream mode.
    pub upstream: Option<crate::upstream::Upstream>,
    /// The record-signing key (B8).
    pub signer: peercache_core::record::RecordSigner,
    /// Transfers in flight per object.
    pub sending: Sending,
    /// Announce, register and report rate limits per peer (B6).
    pub announce_limiter: RateLimiter,
    /// The Prometheus recorder, when installed.
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// Recently signed records, by URL and hash.
    signed: Mutex<HashMap<(String, ObjectHash), peercache_core::record::SignedRecord>>,
    tls: bool,
}

impl AppState {
    /// State for `config` with a connected store.
    pub fn new(
        config: Config,
        store: Store,
        metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
        tls: bool,
    ) -> Self {
        let others = [
            "peercache_announces_total",
            "peercache_pings_total",
            "peercache_ping_failures_total",
            "peercache_requests_headers_only_total",
            "peercache_requests_deferred_total",
            "peercache_range_requests_total",
            "peercache_reports_unreferred_total",
            "peercache_auth_failures_total",
            "peercache_bytes_reported_relayed_total",
        ];
        for name in Tally::ALL.iter().map(|t| t.metric()).chain(others) {
            counter!(name).increment(0);
        }
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(5))
            .no_proxy()
            .build()
            .unwrap_or_default();
        Self {
            site: Site::new(config.root.clone()),
            store,
            egress: EgressPipe::new(config.egress_limit),
            figures: Figures::default(),
            decisions: RecentDecisions::default(),
            http,
            peers: None,
            relays: Vec::new(),
            site_relay: None,
            upstream: None,
            signer: peercache_core::record::RecordSigner::from_secret(rand::random()),
            sending: Sending::default(),
            signed: Mutex::new(HashMap::new()),
            announce_limiter: RateLimiter::default(),
            config,
            metrics,
            tls,
        }
    }

    /// Expires lapsed peers, refreshes gauges and samples the offload history.
    pub fn spawn_housekeeping(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(2));
            loop {
                tick.tick().await;
                let Some(state) = weak.upgrade() else { break };
                let now = now_ms();
                if let Err(e) = state.store.expire(now).await {
                    tracing::warn!(error = %e, "expiring peers failed");
                }
                if let Ok(s) = state.store.stats(now).await {
                    gauge!("peercache_peers", "state" => "live").set(s.peers as f64);
                    gauge!("peercache_peers", "state" => "serving").set(s.serving_peers as f64);
                    gauge!("peercache_peers", "state" => "delisted").set(s.delisted as f64);
                    gauge!("peercache_objects_listed").set(s.objects as f64);
                }
                if let Some(relay) = &state.site_relay {
                    let (out, inn) = relay.bytes();
                    counter!("peercache_relay_bytes_total", "direction" => "to_peers")
                        .absolute(out);
                    counter!("peercache_relay_bytes_total", "direction" => "from_peers")
                        .absolute(inn);
                }
                let f = &state.figures;
                let mut h = f.history.lock().unwrap_or_else(|p| p.into_inner());
                if h.len() >= HISTORY {
                    h.pop_front();
                }
                h.push_back((
                    now / 1000,
                    f.get(Tally::BytesServed),
                    f.get(Tally::BytesFromPeers),
                ));
            }
        });
    }

    /// The server's own base URL, as the client addressed it.
    pub fn own_url(&self, headers: &HeaderMap) -> String {
        if let Some(url) = &self.config.public_url {
            return url.trim_end_matches('/').to_string();
        }
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("localhost");
        format!("{}://{host}", if self.tls { "https" } else { "http" })
    }

    /// Signs the record of `obj` as served at `url` (valid for a day). Signatures
    /// are reused for an hour, so a hot object costs one signature, not one per
    /// request.
    pub fn sign(&self, url: &str, obj: &SiteObject) -> peercache_core::record::SignedRecord {
        let now = now_ms() / 1000;
        let key = (url.to_string(), obj.hash);
        let mut signed = self.signed.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(rec) = signed.get(&key)
            && rec.record.expires >= now + RECORD_TTL_SECS - 3600
        {
            return rec.clone();
        }
        let rec = self.signer.sign(peercache_core::record::ObjectRecord {
            url: url.to_string(),
            hash: obj.hash,
            size: obj.size,
            content_type: obj.content_type.clone(),
            expires: now + RECORD_TTL_SECS,
        });
        if signed.len() >= 100_000 {
            signed.clear();
        }
        signed.insert(key, rec.clone());
        rec
    }

    /// True if the server knows this object (from its directory or its upstream).
    pub fn knows(&self, hash: &ObjectHash) -> bool {
        self.site.knows(hash) || self.upstream.as_ref().is_some_and(|u| u.knows(hash))
    }

    /// The object with this hash. Blocking (it may hash a file).
    pub fn object_by_hash(&self, hash: &ObjectHash) -> Option<SiteObject> {
        match &self.upstream {
            Some(u) => u.by_hash(hash),
            None => self.site.by_hash(hash),
        }
    }

    /// Counts and logs a look-up table failure the request survives (it is
    /// answered by serving directly).
    pub fn store_failed(&self, e: &StoreError) {
        self.figures.add(Tally::StoreErrors, 1);
        tracing::warn!(error = %e, "look-up table unavailable");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use peercache_core::decide::{Inputs, explain};

    #[test]
    fn the_decision_ring_keeps_the_newest_and_stays_bounded() {
        let ring = RecentDecisions::default();
        for i in 0..(RECENT_DECISIONS as u64 + 10) {
            ring.push(DecisionRecord {
                at_ms: i,
                path: format!("/{i}"),
                client: None,
                explained: explain(&Inputs::default()),
            });
        }
        let kept = ring.newest_first();
        assert_eq!(kept.len(), RECENT_DECISIONS);
        assert_eq!(kept[0].at_ms, RECENT_DECISIONS as u64 + 9);
        assert_eq!(kept[RECENT_DECISIONS - 1].at_ms, 10);
    }

    #[test]
    fn a_tally_bumps_the_figure() {
        let f = Figures::default();
        f.add(Tally::BytesServed, 5);
        f.add(Tally::BytesServed, 7);
        assert_eq!(f.get(Tally::BytesServed), 12);
        assert_eq!(f.get(Tally::Served), 0);
    }
}
