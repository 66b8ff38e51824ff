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
//! When nobody holds the object yet but it is already on its way to another
//! client, and the server is too slow for this one, the server *defers* it for
//! about one object's time on its pipe (at most [`MAX_DEFER_S`] seconds): by then
//! that client holds it and can be referred to.
//!
//! [`explain`] takes every figure in one [`Inputs`] and returns the verdict with
//! the figures it came from and a [`Reason`]; the server logs it, shows it on
//! `/admin` and puts it in the referral, so a client can say why it was referred.
//!
//! Goals: one pure function, same answer in every replica. Non-goals: measuring
//! anything (callers pass the figures in).

use serde::{Deserialize, Serialize};

/// Figures about the server's own sending capacity at the moment of the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
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

/// Longest a deferral asks a client to wait, in seconds.
pub const MAX_DEFER_S: u64 = 30;

/// Every figure a serve / refer / defer decision is made from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Inputs {
    /// Object size in bytes.
    pub size: u64,
    /// The server's egress at the moment of the request.
    pub egress: Egress,
    /// The client's own link speed (bytes/s), if it said.
    pub client_bandwidth: Option<u64>,
    /// The configured base target period.
    pub base_target_ms: u64,
    /// Holders the look-up table listed for this client.
    pub usable_holders: usize,
    /// Transfers of this object from the server to clients right now.
    pub sending_this_object: u32,
}

/// What the server does with a referral-capable client's request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    /// Send the bytes.
    Serve,
    /// Answer `300` with the holders.
    Refer,
    /// Answer `503` with `Retry-After`: the object is on its way to another client.
    Defer {
        /// Seconds to wait.
        retry_after_s: u64,
    },
}

impl Verdict {
    /// Its name, as logs, metrics labels and `/admin` show it.
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Serve => "serve",
            Verdict::Refer => "refer",
            Verdict::Defer { .. } => "defer",
        }
    }
}

/// Why the verdict is what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The server's estimate fits within the client's target period.
    WithinTarget,
    /// The server is too slow, and holders exist.
    OverTargetWithHolders,
    /// The server is too slow, nobody holds the object, and another client is
    /// receiving it now.
    OverTargetOnItsWay,
    /// The server is too slow but nobody holds the object or is receiving it.
    OverTargetNoHolders,
    /// The server is too slow, nobody holds a large object or is receiving
    /// it: the server seeds its pieces to this client and to the clients
    /// that ask next (referred to this one), who pass them on (issue 12).
    OverTargetSeeded,
    /// A reason a later version gave, unknown to this one (a referral naming
    /// it is still a referral).
    #[serde(other)]
    Unknown,
}

impl Reason {
    /// One sentence for people.
    pub fn describe(self) -> &'static str {
        match self {
            Reason::WithinTarget => "the server can send it within the target period",
            Reason::OverTargetWithHolders => {
                "the server cannot send it within the target period and peers hold it"
            }
            Reason::OverTargetOnItsWay => {
                "the server cannot send it in time; nobody holds it yet but another client is receiving it"
            }
            Reason::OverTargetNoHolders => {
                "the server cannot send it in time, but no peer holds it, so the server sends it"
            }
            Reason::Unknown => "a reason this version does not know",
            Reason::OverTargetSeeded => {
                "the server cannot send it in time and no peer holds it: the server sends its pieces to this client and to those asking after it, who pass them on"
            }
        }
    }
}

/// A decision with the figures it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Explained {
    /// The inputs.
    pub inputs: Inputs,
    /// The server's estimate until this client would have the object from it.
    pub estimate_ms: u64,
    /// This client's target period.
    pub target_ms: u64,
    /// Serve, refer or defer.
    #[serde(flatten)]
    pub verdict: Verdict,
    /// Why.
    pub reason: Reason,
}

/// Whether the server is too slow for this client even before asking for
/// holders (so the look-up table is asked only when a referral can follow).
pub fn over_target(size: u64, egress: Egress, client_bandwidth: Option<u64>, base_ms: u64) -> bool {
    decide(size, egress, client_bandwidth, base_ms, 1) == Decision::Refer
}

/// Serve, refer or defer, with the figures and the reason (see the module docs).
pub fn explain(inputs: &Inputs) -> Explained {
    let estimate_ms = estimated_send_ms(inputs.size, inputs.egress, inputs.client_bandwidth);
    let target_ms = target_period_ms(inputs.base_target_ms, inputs.size, inputs.client_bandwidth);
    let over = estimate_ms > target_ms;
    let (verdict, reason) = if !over {
        (Verdict::Serve, Reason::WithinTarget)
    } else if inputs.usable_holders > 0 {
        (Verdict::Refer, Reason::OverTargetWithHolders)
    } else {
        match inputs.egress.limit_bytes_per_s {
            Some(limit) if limit > 0 && inputs.sending_this_object > 0 => (
                Verdict::Defer {
                    // About one object's time on the whole pipe, bounded.
                    retry_after_s: inputs.size.div_ceil(limit).clamp(1, MAX_DEFER_S),
                },
                Reason::OverTargetOnItsWay,
            ),
            _ => (Verdict::Serve, Reason::OverTargetNoHolders),
        }
    };
    Explained {
        inputs: *inputs,
        estimate_ms,
        target_ms,
        verdict,
        reason,
    }
}

/// A crowd for a large object nobody holds (issue 12): the client the server
/// would send it to whole (too slow, nobody to refer to) is referred instead,
/// with no holders yet, and fetches it as a swarm, the server seeding its
/// pieces to it and to those asking after it (who are referred to it). So the
/// server's uplink puts each piece into the swarm once instead of a whole
/// copy into one client whose uplink must pass it all on. The caller applies
/// it only to a serving peer that became the object's receiver.
pub fn seeded_instead(explained: Explained) -> Explained {
    if explained.verdict == Verdict::Serve
        && explained.reason == Reason::OverTargetNoHolders
        && explained.inputs.size >= crate::pieces::SWARM_FROM
    {
        Explained {
            verdict: Verdict::Refer,
            reason: Reason::OverTargetSeeded,
            ..explained
        }
    } else {
        explained
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn explain_refers_defers_or_serves_and_says_why() {
        let busy = Inputs {
            size: 4 * MIB,
            egress: Egress {
                limit_bytes_per_s: Some(MIB),
                bytes_in_flight: 8 * MIB,
            },
            base_target_ms: 1000,
            ..Inputs::default()
        };
        let e = explain(&Inputs {
            usable_holders: 2,
            ..busy
        });
        assert_eq!(
            (e.verdict, e.reason),
            (Verdict::Refer, Reason::OverTargetWithHolders)
        );
        assert_eq!((e.estimate_ms, e.target_ms), (12_000, 1000));
        let e = explain(&Inputs {
            sending_this_object: 1,
            ..busy
        });
        assert_eq!(e.verdict, Verdict::Defer { retry_after_s: 4 });
        assert_eq!(explain(&busy).reason, Reason::OverTargetNoHolders);
        let idle = Inputs {
            egress: Egress::default(),
            usable_holders: 3,
            ..busy
        };
        assert_eq!(explain(&idle).verdict, Verdict::Serve);
        assert_eq!(explain(&idle).reason, Reason::WithinTarget);
        // Seeded instead of served whole: only a large object the server
        // would otherwise send whole for want of holders.
        let large = Inputs {
            size: crate::pieces::SWARM_FROM,
            ..busy
        };
        assert_eq!(
            (
                seeded_instead(explain(&large)).verdict,
                seeded_instead(explain(&large)).reason
            ),
            (Verdict::Refer, Reason::OverTargetSeeded)
        );
        let small = Inputs {
            size: crate::pieces::SWARM_FROM - 1,
            ..busy
        };
        assert_eq!(seeded_instead(explain(&small)), explain(&small));
        let fast = Inputs {
            egress: Egress::default(),
            ..large
        };
        assert_eq!(seeded_instead(explain(&fast)).verdict, Verdict::Serve);
        // Round trip as the referral carries it.
        let json = serde_json::to_string(&explain(&busy)).unwrap();
        assert!(json.contains(r#""verdict":"serve""#), "{json}");
        let back: Explained = serde_json::from_str(&json).unwrap();
        assert_eq!(back, explain(&busy));
        // A reason from a later version is read as unknown, not refused.
        let later = json.replace("over_target_no_holders", "a_reason_from_later");
        let back: Explained = serde_json::from_str(&later).unwrap();
        assert_eq!(back.reason, Reason::Unknown);
    }

    proptest! {
        #[test]
        fn explain_agrees_with_decide(size in 0u64..1<<40, inflight in 0u64..1<<40,
            limit in proptest::option::of(1u64..1<<34), bw in proptest::option::of(1u64..1<<34),
            base in 0u64..100_000, holders in 0usize..4, sending in 0u32..3) {
            let egress = Egress { limit_bytes_per_s: limit, bytes_in_flight: inflight };
            let e = explain(&Inputs { size, egress, client_bandwidth: bw, base_target_ms: base,
                usable_holders: holders, sending_this_object: sending });
            let refer = decide(size, egress, bw, base, holders) == Decision::Refer;
            prop_assert_eq!(e.verdict == Verdict::Refer, refer);
            if let Verdict::Defer { retry_after_s } = e.verdict {
                prop_assert!(holders == 0 && sending > 0 && (1..=MAX_DEFER_S).contains(&retry_after_s));
            }
        }
    }

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
