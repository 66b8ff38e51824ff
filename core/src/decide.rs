//! Serve or refer (M1, M3, M4): can the server send this object to this client
//! within the target period?
//!
//! The server models its egress as a pipe of `egress_limit` bytes per second shared
//! by every transfer in flight. A new object of `size` bytes would finish after
//! `(bytes_in_flight + size) / egress_limit` seconds. The client cannot receive faster
//! than its own link either, so its own floor is `size / client_bandwidth`.
//!
//! The target period varies with the client's speed: `target = base + size / client_bw`.
//! A slow client needs longer whatever the source, so the server only counts the
//! delay *it* adds beyond what the client's link imposes; a fast client, which a
//! congested server would hold back the most, gets referred soonest. `base` is the
//! configured `--target-period` (default 2 s).
//!
//! Goals: one pure function, same answer in every replica. Non-goals: measuring
//! anything (callers pass the figures in).

/// Figures about the server's own sending capacity at the moment of the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Egress {
    /// Configured limit, bytes per second; `None` means unlimited.
    pub limit_bytes_per_s: Option<u64>,
    /// Bytes still owed to transfers in flight.
    pub bytes_in_flight: u64,
}

/// What the server should do with a request from a referral-capable client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Send the bytes.
    Serve,
    /// Answer `300` with the proxy list.
    Refer,
}

/// Milliseconds to move `bytes` at `rate` bytes per second (rounded up).
fn transfer_ms(bytes: u64, rate: u64) -> u64 {
    if rate == 0 {
        return u64::MAX;
    }
    let ms = (u128::from(bytes) * 1000).div_ceil(u128::from(rate));
    u64::try_from(ms).unwrap_or(u64::MAX)
}

/// The client's own floor: how long its link needs for `size` bytes.
pub fn client_floor_ms(size: u64, client_bandwidth: Option<u64>) -> u64 {
    client_bandwidth.map_or(0, |bw| transfer_ms(size, bw))
}

/// Target period for this client and object (see the module docs for the rule).
pub fn target_period_ms(base_ms: u64, size: u64, client_bandwidth: Option<u64>) -> u64 {
    base_ms.saturating_add(client_floor_ms(size, client_bandwidth))
}

/// Estimated milliseconds until this client has the whole object from the server.
pub fn estimated_send_ms(size: u64, egress: Egress, client_bandwidth: Option<u64>) -> u64 {
    let server_ms = egress.limit_bytes_per_s.map_or(0, |limit| {
        transfer_ms(egress.bytes_in_flight.saturating_add(size), limit)
    });
    server_ms.max(client_floor_ms(size, client_bandwidth))
}

/// Speed a peer must reach to deliver `size` bytes within `period_ms`.
pub fn target_speed(size: u64, period_ms: u64) -> u64 {
    if period_ms == 0 {
        return size.saturating_mul(1000);
    }
    let speed = (u128::from(size) * 1000).div_ceil(u128::from(period_ms));
    u64::try_from(speed).unwrap_or(u64::MAX)
}

/// Serve or refer. Refers only when a usable holder exists and the server's
/// estimate exceeds the client's target period.
pub fn decide(
    size: u64,
    egress: Egress,
    client_bandwidth: Option<u64>,
    base_target_ms: u64,
    usable_holders: usize,
) -> Decision {
    if usable_holders == 0 {
        return Decision::Serve;
    }
    let estimate = estimated_send_ms(size, egress, client_bandwidth);
    if estimate > target_period_ms(base_target_ms, size, client_bandwidth) {
        Decision::Refer
    } else {
        Decision::Serve
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn refers_when_the_pipe_is_busy_and_serves_when_idle() {
        let idle = Egress {
            limit_bytes_per_s: Some(10 * MIB),
            bytes_in_flight: 0,
        };
        let busy = Egress {
            limit_bytes_per_s: Some(10 * MIB),
            bytes_in_flight: 100 * MIB,
        };
        assert_eq!(decide(MIB, idle, None, 2000, 1), Decision::Serve);
        assert_eq!(decide(MIB, busy, None, 2000, 1), Decision::Refer);
        assert_eq!(decide(MIB, busy, None, 2000, 0), Decision::Serve);
    }

    #[test]
    fn slow_clients_get_a_longer_period() {
        assert!(
            target_period_ms(2000, 10 * MIB, Some(MIB))
                > target_period_ms(2000, 10 * MIB, Some(100 * MIB))
        );
        // A 1 MiB/s client would need 10 s anyway; a 5 s server delay adds nothing.
        let egress = Egress {
            limit_bytes_per_s: Some(2 * MIB),
            bytes_in_flight: 0,
        };
        assert_eq!(
            decide(10 * MIB, egress, Some(MIB), 2000, 1),
            Decision::Serve
        );
        assert_eq!(
            decide(10 * MIB, egress, Some(100 * MIB), 2000, 1),
            Decision::Refer
        );
    }

    #[test]
    fn zero_target_refers_whenever_the_server_is_limited() {
        let egress = Egress {
            limit_bytes_per_s: Some(MIB),
            bytes_in_flight: 0,
        };
        assert_eq!(decide(1, egress, None, 0, 1), Decision::Refer);
        assert_eq!(decide(1, Egress::default(), None, 0, 1), Decision::Serve);
    }

    proptest! {
        #[test]
        fn more_load_never_turns_refer_into_serve(size in 0u64..1<<40, inflight in 0u64..1<<40, extra in 0u64..1<<40,
            limit in 1u64..1<<34, bw in proptest::option::of(1u64..1<<34), base in 0u64..100_000) {
            let a = Egress { limit_bytes_per_s: Some(limit), bytes_in_flight: inflight };
            let b = Egress { limit_bytes_per_s: Some(limit), bytes_in_flight: inflight.saturating_add(extra) };
            if decide(size, a, bw, base, 1) == Decision::Refer {
                prop_assert_eq!(decide(size, b, bw, base, 1), Decision::Refer);
            }
        }
    }
}
