//! The peer lifecycle rules both backends apply, as pure functions over the
//! figures each keeps (so the memory table and Redis cannot drift apart):
//! when a peer is live, lapsed or delisted, how booked referrals fade, when
//! failed pings drop it, how much room its holdings have, how an RTT sample is
//! smoothed.

use super::{MAX_HOLDINGS_PER_PEER, MAX_PING_FAILURES, PENDING_WINDOW_MS, StoreLimits};

/// Delisted: enough verified mismatches that the peer is never listed again.
pub fn is_delisted(strikes: u32, limits: &StoreLimits) -> bool {
    strikes >= limits.max_strikes
}

/// Heard from within the TTL (`last_seen` is `None` when never).
pub fn is_fresh(last_seen: Option<u64>, now: u64, limits: &StoreLimits) -> bool {
    last_seen.is_some_and(|s| now.saturating_sub(s) <= limits.ttl_ms)
}

/// Live: fresh and not delisted (only live peers are listed, pinged, counted).
pub fn is_live(last_seen: Option<u64>, strikes: u32, now: u64, limits: &StoreLimits) -> bool {
    is_fresh(last_seen, now, limits) && !is_delisted(strikes, limits)
}

/// Expired: lapsed past the TTL and forgotten. Delisted peers are kept, so
/// their ban outlives their registration.
pub fn is_expired(last_seen: Option<u64>, strikes: u32, now: u64, limits: &StoreLimits) -> bool {
    !is_fresh(last_seen, now, limits) && !is_delisted(strikes, limits)
}

/// Whether the referrals booked against a peer's load (last at `pending_at`)
/// have faded: after [`PENDING_WINDOW_MS`] without a newer booking they no
/// longer count.
pub fn bookings_faded(pending_at: u64, now: u64) -> bool {
    now.saturating_sub(pending_at) > PENDING_WINDOW_MS
}

/// Referrals booked against a peer's load that still count.
pub fn pending_now(pending: u32, pending_at: u64, now: u64) -> u32 {
    if bookings_faded(pending_at, now) {
        0
    } else {
        pending
    }
}

/// The pending count after one more referral is booked at `now`.
pub fn pending_after_booking(pending: u32, pending_at: u64, now: u64) -> u32 {
    pending_now(pending, pending_at, now).saturating_add(1)
}

/// Whether this many consecutive failed pings drop the peer.
pub fn ping_failures_drop(failures: u32) -> bool {
    failures >= MAX_PING_FAILURES
}

/// How many more objects a peer holding `held` may be listed for.
pub fn holdings_room(held: usize) -> usize {
    MAX_HOLDINGS_PER_PEER.saturating_sub(held)
}

/// Smooths an RTT sample into the running value (EWMA, α = 1/4).
pub fn smooth_rtt(old: Option<u32>, sample: u32) -> u32 {
    match old {
        None => sample,
        Some(old) => ((u64::from(old) * 3 + u64::from(sample)) / 4) as u32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: StoreLimits = StoreLimits {
        ttl_ms: 1000,
        max_strikes: 2,
        slow_threshold_ms: 100,
    };

    #[test]
    fn live_lapsed_and_delisted() {
        assert!(is_live(Some(0), 0, 1000, &LIMITS));
        assert!(!is_live(Some(0), 0, 1001, &LIMITS));
        assert!(!is_live(None, 0, 0, &LIMITS));
        assert!(!is_live(Some(1000), 2, 1000, &LIMITS), "delisted");
        assert!(is_expired(Some(0), 1, 1001, &LIMITS));
        assert!(is_expired(None, 0, 0, &LIMITS));
        assert!(!is_expired(Some(0), 2, 5000, &LIMITS), "a ban is kept");
        assert!(!is_expired(Some(500), 0, 1000, &LIMITS));
    }

    #[test]
    fn bookings_fade_and_pings_drop() {
        assert_eq!(pending_now(3, 0, PENDING_WINDOW_MS), 3);
        assert_eq!(pending_now(3, 0, PENDING_WINDOW_MS + 1), 0);
        assert_eq!(pending_after_booking(3, 0, 1), 4);
        assert_eq!(pending_after_booking(3, 0, PENDING_WINDOW_MS + 1), 1);
        assert!(!ping_failures_drop(MAX_PING_FAILURES - 1));
        assert!(ping_failures_drop(MAX_PING_FAILURES));
        assert_eq!(holdings_room(MAX_HOLDINGS_PER_PEER + 5), 0);
        assert_eq!(smooth_rtt(None, 40), 40);
        assert_eq!(smooth_rtt(Some(100), 20), 80);
    }
}
