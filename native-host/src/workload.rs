//! The peer's workload limits (M12), adjustable at run time (the popup sets them):
//! upload slots, an upload rate cap shared by all uploads, and a per-requester
//! request rate.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use peercache_core::protocol::Load;

/// Requests per second one requester may make by default (burst: 4×).
pub const PER_REQUESTER_RATE: f64 = 100.0;

/// The limits and the current use.
#[derive(Debug)]
pub struct Workload {
    active: AtomicU32,
    limit: AtomicU32,
    rate: AtomicU64,
    next_free: tokio::sync::Mutex<Instant>,
    requesters: Mutex<HashMap<IpAddr, (f64, Instant)>>,
    requester_rate: f64,
    turns: std::sync::Arc<crate::upload_turns::UploadTurns>,
}

impl Workload {
    /// `slots` upload slots and an upload cap of `rate` bytes/s (0 = none).
    pub fn new(slots: u32, rate: u64) -> Self {
        Self {
            active: AtomicU32::new(0),
            limit: AtomicU32::new(slots),
            rate: AtomicU64::new(rate),
            next_free: tokio::sync::Mutex::new(Instant::now()),
            requesters: Mutex::new(HashMap::new()),
            requester_rate: PER_REQUESTER_RATE,
            turns: Default::default(),
        }
    }

    /// Whose swarm upload sends next (`crate::upload_turns`).
    pub fn turns(&self) -> &std::sync::Arc<crate::upload_turns::UploadTurns> {
        &self.turns
    }

    /// Sets the per-requester request rate (requests per second).
    pub fn with_requester_rate(mut self, rate: f64) -> Self {
        self.requester_rate = rate.max(1.0);
        self
    }

    /// The current load.
    pub fn load(&self) -> Load {
        Load {
            active: self.active.load(Ordering::Relaxed),
            limit: self.limit.load(Ordering::Relaxed),
        }
    }

    /// Changes the limits at once (running uploads keep their slots).
    pub fn set(&self, slots: u32, rate: u64) {
        self.limit.store(slots, Ordering::Relaxed);
        self.rate.store(rate, Ordering::Relaxed);
    }

    /// The upload cap in bytes per second (0 = none).
    pub fn rate(&self) -> u64 {
        self.rate.load(Ordering::Relaxed)
    }

    /// Takes a slot if one is free.
    pub fn try_take(&self) -> bool {
        let limit = self.limit.load(Ordering::Relaxed);
        self.active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |a| {
                (a < limit).then_some(a + 1)
            })
            .is_ok()
    }

    /// Gives a slot back.
    pub fn release(&self) {
        let _ = self
            .active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |a| {
                Some(a.saturating_sub(1))
            });
    }

    /// Waits until `bytes` more fit under the upload cap.
    pub async fn throttle(&self, bytes: u64) {
        let rate = self.rate();
        if rate == 0 {
            return;
        }
        let slot = Duration::from_secs_f64(bytes as f64 / rate as f64);
        let wake = {
            let mut next = self.next_free.lock().await;
            let start = (*next).max(Instant::now());
            *next = start + slot;
            start + slot
        };
        tokio::time::sleep_until(tokio::time::Instant::from_std(wake)).await;
    }

    /// True if `who` may make another request now (token bucket per address).
    pub fn allow_requester(&self, who: IpAddr) -> bool {
        let mut map = self.requesters.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > 10_000 {
            map.clear();
        }
        let rate = self.requester_rate;
        let cap = rate * 4.0;
        let now = Instant::now();
        let (tokens, last) = map.entry(who).or_insert((cap, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * rate).min(cap);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_and_requesters() {
        let w = Workload::new(2, 0);
        assert!(w.try_take() && w.try_take());
        assert!(!w.try_take());
        assert_eq!(
            w.load(),
            Load {
                active: 2,
                limit: 2
            }
        );
        w.release();
        assert!(w.try_take());
        w.set(5, 0);
        assert!(w.try_take());
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let w = w.with_requester_rate(20.0);
        let allowed = (0..200).filter(|_| w.allow_requester(ip)).count();
        assert!((80..=85).contains(&allowed), "{allowed}");
        assert!(w.allow_requester("10.0.0.2".parse().unwrap()));
    }

    #[tokio::test]
    async fn the_rate_cap_paces_uploads() {
        let w = Workload::new(1, 1_000_000);
        let t = Instant::now();
        for _ in 0..5 {
            w.throttle(100_000).await;
        }
        assert!(
            t.elapsed() >= Duration::from_millis(450),
            "{:?}",
            t.elapsed()
        );
    }
}
