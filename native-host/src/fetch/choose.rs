//! Measure and choose (M6, B10): every candidate is pinged at once over its QUIC
//! connection (a relayed one is given a moment to find a direct path), then
//! ordered by the named policy in `peercache_core::select`. Every candidate,
//! what was measured and the verdict on it are events.

use std::time::Duration;

use peercache_core::explain::{Candidate, DownloadEvent};
use peercache_core::peer::DialInfo;
use peercache_core::protocol::{Proxy, SERVER_PROXY_ID};
use peercache_core::select::{Choice, Policy, Probed, choose_explained};

use super::events::Events;
use crate::peer_memory::PeerMemory;

/// How long a probe's ping may take before the peer counts as unreachable (a
/// dial through a relay included); the wait for a direct path comes after.
const PROBE_DEADLINE: Duration = Duration::from_millis(2500);
/// How long a probe waits for a relayed connection to find a direct path.
const DIRECT_PATH_WAIT: Duration = Duration::from_millis(600);

/// How the client picks among a referral's peers (M6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PeerPolicy {
    /// The fastest ping first.
    #[default]
    Fastest,
    /// The first (in the server's order) whose known throughput meets the target speed.
    FirstMeetingTarget,
}

impl PeerPolicy {
    /// The rule in `peercache_core::select` for a download whose target speed is
    /// `target` (overridden by `fixed_target` when the user set one).
    pub fn rule(self, fixed_target: Option<u64>, target: u64) -> Policy {
        match self {
            PeerPolicy::Fastest => Policy::Fastest,
            PeerPolicy::FirstMeetingTarget => {
                Policy::FirstMeetingTarget(fixed_target.unwrap_or(target))
            }
        }
    }

    fn name(self) -> &'static str {
        match self {
            PeerPolicy::Fastest => "fastest",
            PeerPolicy::FirstMeetingTarget => "first-meeting-target",
        }
    }
}

/// Pings every candidate at once; the server's own entry is not pinged.
pub async fn measure(
    dialer: &peercache_net::PeerDialer,
    memory: &PeerMemory,
    proxies: &[Proxy],
) -> Vec<Probed> {
    let probes = proxies.iter().map(|p| async move {
        if p.id == SERVER_PROXY_ID {
            return Probed {
                proxy: p.clone(),
                rtt_ms: Some(0),
                throughput: None,
                direct: Some(true),
            };
        }
        let pinged = match DialInfo::parse(&p.addr) {
            // The deadline is for reaching the peer; one that answered is
            // reachable, and a relayed answer then gets its moment to find a
            // direct path whatever the ping took (else a slow relay under
            // load made a relay-only peer "unreachable", and it was never
            // reported relay-only).
            Ok(dial) => match tokio::time::timeout(PROBE_DEADLINE, dialer.ping(&p.id, &dial)).await
            {
                Ok(Ok(pinged)) => {
                    let direct = pinged.direct
                        || tokio::time::timeout(
                            DIRECT_PATH_WAIT * 2,
                            dialer.wait_direct(&p.id, &dial, DIRECT_PATH_WAIT),
                        )
                        .await
                        .unwrap_or(false);
                    Some((pinged.rtt, direct, pinged.load))
                }
                _ => None,
            },
            Err(_) => None,
        };
        if pinged.is_none() {
            dialer.disconnect(&p.id);
        }
        // The load the peer just reported is fresher than the one it was listed with.
        let mut proxy = p.clone();
        if let Some(load) = pinged.and_then(|(_, _, l)| l) {
            proxy.load = Some(load);
        }
        Probed {
            proxy,
            rtt_ms: pinged.map(|(rtt, _, _)| u32::try_from(rtt.as_millis()).unwrap_or(u32::MAX)),
            throughput: memory.throughput(&p.id),
            direct: pinged.map(|(_, d, _)| d),
        }
    });
    futures_util::future::join_all(probes).await
}

/// Orders the measured candidates by `policy` and records both steps.
pub fn choose(probed: Vec<Probed>, policy: PeerPolicy, rule: Policy, events: &Events) -> Choice {
    events.emit(DownloadEvent::Measured {
        policy: policy.name().to_string(),
        candidates: probed
            .iter()
            .enumerate()
            .map(|(listed, c)| Candidate {
                id: c.proxy.id.clone(),
                addr: c.proxy.addr.clone(),
                listed,
                rtt_ms: c.rtt_ms,
                throughput: c.throughput,
                load: c.proxy.load,
                direct: c.direct,
            })
            .collect(),
    });
    let choice = choose_explained(probed, rule);
    events.emit(DownloadEvent::Chosen {
        order: choice.order.iter().map(|p| p.id.clone()).collect(),
        verdicts: choice.verdicts.clone(),
    });
    choice
}
