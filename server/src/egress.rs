//! The server's own upload: what is still owed to transfers in flight (the input
//! of the serve-or-refer estimate) and, with `--egress-limit`, a real throttle so
//! the model and the wire agree. Without it the uplink is estimated from what
//! the server's own transfers deliver (`peercache_core::uplink`) and the
//! estimate stands in for the limit in decisions (issue 12 point 5).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use peercache_core::decide::Egress;
use peercache_core::uplink::UplinkEstimate;

/// Shared egress state of one server process.
#[derive(Debug)]
pub struct EgressPipe {
    limit: Option<u64>,
    in_flight: AtomicU64,
    next_free: tokio::sync::Mutex<Instant>,
    uplink: std::sync::Mutex<UplinkEstimate>,
    born: Instant,
}

impl EgressPipe {
    /// A pipe of `limit` bytes per second (`None` = unlimited).
    pub fn new(limit: Option<u64>) -> Self {
        Self {
            limit: limit.filter(|l| *l > 0),
            in_flight: AtomicU64::new(0),
            next_free: tokio::sync::Mutex::new(Instant::now()),
            uplink: std::sync::Mutex::new(UplinkEstimate::default()),
            born: Instant::now(),
        }
    }

    /// Figures for [`peercache_core::decide::decide`]: the limit set, or
    /// without one the uplink as measured, once it is.
    pub fn snapshot(&self) -> Egress {
        Egress {
            limit_bytes_per_s: self.limit.or_else(|| self.estimate()),
            bytes_in_flight: self.in_flight.load(Ordering::Relaxed),
        }
    }

    /// The uplink as the server's own transfers show it (bytes per second).
    pub fn estimate(&self) -> Option<u64> {
        self.uplink
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .estimate()
    }

    /// `bytes` of a transfer went out (call before paying them off with
    /// [`EgressPipe::sent`]): a sample of the uplink while more was owed.
    pub fn delivered(&self, bytes: u64) {
        let busy = self.in_flight.load(Ordering::Relaxed) > bytes;
        let now_ms = u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX);
        let estimate = {
            let mut u = self.uplink.lock().unwrap_or_else(|p| p.into_inner());
            u.sent(now_ms, bytes, busy);
            u.estimate()
        };
        if let Some(e) = estimate {
            metrics::gauge!("peercache_egress_estimate_bytes_per_second").set(e as f64);
        }
    }

    /// Books `bytes` as owed; [`EgressPipe::sent`] pays them off.
    pub fn owe(&self, bytes: u64) {
        self.in_flight.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Pays off bytes that were sent (or will never be).
    pub fn sent(&self, bytes: u64) {
        let _ = self
            .in_flight
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(bytes))
            });
    }

    /// Waits until the pipe has room for `bytes` more (no-op when unlimited).
    /// Transfers share the pipe in arrival order of their chunks.
    pub async fn throttle(&self, bytes: u64) {
        let Some(limit) = self.limit else { return };
        let slot = Duration::from_secs_f64(bytes as f64 / limit as f64);
        let wake = {
            let mut next = self.next_free.lock().await;
            let start = (*next).max(Instant::now());
            *next = start + slot;
            start + slot
        };
        tokio::time::sleep_until(tokio::time::Instant::from_std(wake)).await;
    }
}
