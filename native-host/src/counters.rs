//! The host's byte counters: one place that bumps both the popup's figures
//! (atomics, sent in `status`) and the Prometheus counters, so they cannot drift.

use std::sync::atomic::{AtomicU64, Ordering};

use metrics::counter;
use peercache_core::protocol::Counters;

/// What a counted byte or event was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    /// Verified bytes received from peers.
    FromPeers,
    /// Bytes received from the server.
    FromServer,
    /// Bytes answered from the own cache.
    FromCache,
    /// Bytes uploaded to other peers.
    Served,
    /// A peer download that failed verification (counted once per event).
    VerificationFailure,
}

/// Counters of one host, shared with the popup (via `status`) and `/metrics`.
#[derive(Debug, Default)]
pub struct HostCounters {
    from_peers: AtomicU64,
    from_server: AtomicU64,
    served: AtomicU64,
    verification_failures: AtomicU64,
    from_cache: AtomicU64,
}

impl HostCounters {
    /// Adds `n` to the counter for `what`, and to its Prometheus counter.
    pub fn add(&self, what: Counted, n: u64) {
        let (cell, name) = match what {
            Counted::FromPeers => (&self.from_peers, "peercache_bytes_from_peers_total"),
            Counted::FromServer => (&self.from_server, "peercache_bytes_from_server_total"),
            Counted::FromCache => (&self.from_cache, "peercache_bytes_from_cache_total"),
            Counted::Served => (&self.served, "peercache_bytes_uploaded_total"),
            Counted::VerificationFailure => (
                &self.verification_failures,
                "peercache_verification_failures_total",
            ),
        };
        cell.fetch_add(n, Ordering::Relaxed);
        counter!(name).increment(n);
    }

    /// A snapshot for the `status` message.
    pub fn snapshot(&self) -> Counters {
        Counters {
            bytes_from_peers: self.from_peers.load(Ordering::Relaxed),
            bytes_from_server: self.from_server.load(Ordering::Relaxed),
            bytes_served: self.served.load(Ordering::Relaxed),
            verification_failures: self.verification_failures.load(Ordering::Relaxed),
            bytes_from_cache: self.from_cache.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_lands_in_its_own_figure() {
        let c = HostCounters::default();
        c.add(Counted::FromPeers, 5);
        c.add(Counted::FromServer, 7);
        c.add(Counted::FromCache, 11);
        c.add(Counted::Served, 13);
        c.add(Counted::VerificationFailure, 1);
        let s = c.snapshot();
        assert_eq!(
            (
                s.bytes_from_peers,
                s.bytes_from_server,
                s.bytes_from_cache,
                s.bytes_served,
                s.verification_failures
            ),
            (5, 7, 11, 13, 1)
        );
    }
}
