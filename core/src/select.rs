//! Ordering a referral's proxy list and choosing a source (M5, M6, M12).
//!
//! The server orders holders by health and use; the client re-orders by what it
//! measured. Both use the functions here so that the rules agree.

use crate::protocol::{Proxy, SERVER_PROXY_ID};

/// A candidate after the client measured it.
#[derive(Debug, Clone, PartialEq)]
pub struct Probed {
    /// The proxy-list entry.
    pub proxy: Proxy,
    /// Measured round trip, `None` if the probe failed or timed out.
    pub rtt_ms: Option<u32>,
    /// Throughput learned from earlier downloads, bytes per second.
    pub throughput: Option<u64>,
}

/// How the client picks among measured candidates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// The fastest responder first.
    Fastest,
    /// The first in list order that meets the target speed, then the rest fastest first.
    FirstMeetingTarget(u64),
}

/// Orders holders for a referral: peers with free slots before full ones, then by
/// the server's smoothed RTT (unknown last), ties kept in the given order (which
/// callers sort by use). The server's own entry is not part of this list.
pub fn order_holders(mut proxies: Vec<Proxy>) -> Vec<Proxy> {
    proxies.retain(|p| p.id != SERVER_PROXY_ID);
    proxies.sort_by_key(|p| {
        (
            p.load.is_some_and(|l| l.is_full()),
            p.rtt_ms.unwrap_or(u32::MAX),
        )
    });
    proxies
}

/// Orders measured candidates by policy; unreachable ones are dropped. The server's
/// own entry, if present, always stays last as the fallback.
pub fn choose(candidates: Vec<Probed>, policy: Policy) -> Vec<Proxy> {
    let (servers, mut peers): (Vec<_>, Vec<_>) = candidates
        .into_iter()
        .partition(|c| c.proxy.id == SERVER_PROXY_ID);
    peers.retain(|c| c.rtt_ms.is_some() && !c.proxy.load.is_some_and(|l| l.is_full()));
    let mut ordered: Vec<Probed> = Vec::with_capacity(peers.len());
    if let Policy::FirstMeetingTarget(target) = policy
        && let Some(i) = peers
            .iter()
            .position(|c| c.throughput.is_some_and(|t| t >= target))
    {
        ordered.push(peers.remove(i));
    }
    peers.sort_by_key(|c| c.rtt_ms.unwrap_or(u32::MAX));
    ordered.extend(peers);
    ordered
        .into_iter()
        .chain(servers)
        .map(|c| c.proxy)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Load;

    fn proxy(id: &str, rtt: Option<u32>, load: Option<Load>) -> Proxy {
        Proxy {
            id: id.into(),
            addr: format!("http://{id}"),
            rtt_ms: rtt,
            load,
        }
    }

    #[test]
    fn full_peers_go_last_and_server_is_never_a_holder() {
        let full = Some(Load {
            active: 4,
            limit: 4,
        });
        let out = order_holders(vec![
            proxy("a", Some(1), full),
            proxy("server", Some(0), None),
            proxy("b", Some(50), None),
            proxy("c", None, None),
        ]);
        let ids: Vec<_> = out.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(ids, ["b", "c", "a"]);
    }

    #[test]
    fn choose_keeps_server_last_and_drops_dead_peers() {
        let c = |id: &str, rtt: Option<u32>, tp: Option<u64>| Probed {
            proxy: proxy(id, None, None),
            rtt_ms: rtt,
            throughput: tp,
        };
        let list = vec![
            c("server", Some(1), None),
            c("slow", Some(90), Some(10)),
            c("dead", None, None),
            c("fast", Some(5), Some(1)),
        ];
        let ids = |v: Vec<Proxy>| v.into_iter().map(|p| p.id).collect::<Vec<_>>();
        assert_eq!(
            ids(choose(list.clone(), Policy::Fastest)),
            ["fast", "slow", "server"]
        );
        assert_eq!(
            ids(choose(list, Policy::FirstMeetingTarget(5))),
            ["slow", "fast", "server"]
        );
    }
}
