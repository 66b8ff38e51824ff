//! Ordering a referral's proxy list and choosing a source (M5, M6, M12).
//!
//! The server orders holders by health and use; the client re-orders by what it
//! measured. Both use the functions here so that the rules agree.

use crate::proxy::{Proxy, SERVER_PROXY_ID};

/// A candidate after the client measured it.
#[derive(Debug, Clone, PartialEq)]
pub struct Probed {
    /// The proxy-list entry.
    pub proxy: Proxy,
    /// Measured round trip, `None` if the probe failed or timed out.
    pub rtt_ms: Option<u32>,
    /// Throughput learned from earlier downloads, bytes per second.
    pub throughput: Option<u64>,
    /// Whether the probe's connection went direct (`Some(false)`: only through a
    /// relay), if known.
    pub direct: Option<bool>,
}

/// Granularity at which RTTs are compared: below it every RTT is equal, above
/// it RTTs are compared in doubling steps ([`rtt_class`]).
pub const RTT_STEP_MS: u32 = 10;

/// The class in which an RTT is compared: 0 below [`RTT_STEP_MS`], then one
/// class per doubling (10–19 ms, 20–39 ms, 40–79 ms, …). A ping measured on a
/// busy host easily varies by 10 ms or by half; a finer comparison would let
/// that noise, not the server's load-spread order, pick the peer, and a crowd
/// measuring at once would all pick the same one.
pub fn rtt_class(rtt_ms: u32) -> u32 {
    match rtt_ms / RTT_STEP_MS {
        0 => 0,
        steps => 1 + steps.ilog2(),
    }
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

/// Why a measured candidate was left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dropped {
    /// It did not answer the probe in time.
    Unreachable,
    /// It said all its upload slots are taken.
    Full,
    /// Reached only through a relay while a direct source exists (B10).
    RelayOnly,
}

/// Why a candidate got its place in the order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Placed {
    /// First in the server's order whose remembered throughput meets the target.
    MeetsTarget,
    /// By measured round trip (in doubling classes, [`rtt_class`]; ties keep
    /// the server's order).
    ByRoundTrip,
    /// The server itself, always last.
    ServerLast,
}

/// What [`choose_explained`] did with one candidate.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Kept, at this place (0 = tried first), for this reason.
    Chosen(usize, Placed),
    /// Left out, for this reason.
    Dropped(Dropped),
}

/// The chosen order and what happened to every candidate.
#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    /// Sources to try, best first; the server's entry (if any) last.
    pub order: Vec<Proxy>,
    /// Every candidate's id with its verdict, in the input order.
    pub verdicts: Vec<(String, Verdict)>,
}

/// Orders measured candidates by policy; unreachable ones are dropped. The server's
/// own entry, if present, always stays last as the fallback. Peers reached only
/// through a relay are dropped when a direct source exists (another peer, or the
/// server): a relayed byte crosses the site anyway, so it saves nothing (B10).
pub fn choose(candidates: Vec<Probed>, policy: Policy) -> Vec<Proxy> {
    choose_explained(candidates, policy).order
}

/// [`choose`], also saying for each candidate why it is where it is.
pub fn choose_explained(candidates: Vec<Probed>, policy: Policy) -> Choice {
    let mut verdicts: Vec<(String, Verdict)> = Vec::with_capacity(candidates.len());
    let (servers, peers): (Vec<_>, Vec<_>) = candidates
        .into_iter()
        .partition(|c| c.proxy.id == SERVER_PROXY_ID);
    let mut drop_as =
        |c: &Probed, why: Dropped| verdicts.push((c.proxy.id.clone(), Verdict::Dropped(why)));
    let mut usable = Vec::with_capacity(peers.len());
    for c in peers {
        if c.rtt_ms.is_none() {
            drop_as(&c, Dropped::Unreachable);
        } else if c.proxy.load.is_some_and(|l| l.is_full()) {
            drop_as(&c, Dropped::Full);
        } else {
            usable.push(c);
        }
    }
    let direct_source = !servers.is_empty() || usable.iter().any(|c| c.direct != Some(false));
    let mut peers = Vec::with_capacity(usable.len());
    for c in usable {
        if direct_source && c.direct == Some(false) {
            drop_as(&c, Dropped::RelayOnly);
        } else {
            peers.push(c);
        }
    }
    let mut ordered: Vec<(Probed, Placed)> = Vec::with_capacity(peers.len() + servers.len());
    if let Policy::FirstMeetingTarget(target) = policy
        && let Some(i) = peers
            .iter()
            .position(|c| c.throughput.is_some_and(|t| t >= target))
    {
        ordered.push((peers.remove(i), Placed::MeetsTarget));
    }
    // RTTs within the same class count as equal: the (stable) sort then keeps
    // the server's order, which spreads a crowd by load; noise must not undo that.
    peers.sort_by_key(|c| c.rtt_ms.map_or(u32::MAX, rtt_class));
    ordered.extend(peers.into_iter().map(|c| (c, Placed::ByRoundTrip)));
    ordered.extend(servers.into_iter().map(|c| (c, Placed::ServerLast)));
    for (rank, (c, why)) in ordered.iter().enumerate() {
        verdicts.push((c.proxy.id.clone(), Verdict::Chosen(rank, *why)));
    }
    Choice {
        order: ordered.into_iter().map(|(c, _)| c.proxy).collect(),
        verdicts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::Load;

    fn proxy(id: &str, rtt: Option<u32>, load: Option<Load>) -> Proxy {
        Proxy {
            id: id.into(),
            addr: format!("http://{id}"),
            direct: None,
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
            direct: None,
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
            ids(choose(list.clone(), Policy::FirstMeetingTarget(5))),
            ["slow", "fast", "server"]
        );
        let choice = choose_explained(list, Policy::FirstMeetingTarget(5));
        let verdict = |id: &str| {
            choice
                .verdicts
                .iter()
                .find(|(i, _)| i == id)
                .map(|(_, v)| v.clone())
                .unwrap()
        };
        assert_eq!(verdict("slow"), Verdict::Chosen(0, Placed::MeetsTarget));
        assert_eq!(verdict("fast"), Verdict::Chosen(1, Placed::ByRoundTrip));
        assert_eq!(verdict("server"), Verdict::Chosen(2, Placed::ServerLast));
        assert_eq!(verdict("dead"), Verdict::Dropped(Dropped::Unreachable));
        assert_eq!(choice.verdicts.len(), 4, "every candidate has a verdict");
    }
}

/// What a server knows about one holder of an object when it builds a referral.
#[derive(Debug, Clone, PartialEq)]
pub struct HolderStats {
    /// The peer.
    pub id: String,
    /// Its serving address.
    pub addr: String,
    /// Smoothed RTT of the server's pings, if any answered.
    pub rtt_ms: Option<u32>,
    /// Whether connections to it go direct (`Some(false)`: relay only), if known.
    pub direct: Option<bool>,
    /// Last reported load.
    pub load: Option<crate::proxy::Load>,
    /// Referrals to it handed out since its last load report.
    pub pending: u32,
    /// Referrals to it handed out lately (within the server's booking window),
    /// whether or not they were reported since: among equally loaded peers the
    /// one referred to least lately goes first, so a crowd that arrives one
    /// client at a time (each done before the next asks) still spreads.
    pub recent: u32,
    /// Clients' served reports for this object (M9).
    pub uses: u64,
}

impl HolderStats {
    /// Active uploads plus referrals not yet reflected in a report.
    fn effective_active(&self) -> Option<(u32, u32)> {
        self.load
            .map(|l| (l.active.saturating_add(self.pending), l.limit))
    }

    /// True when it should not be referred at all (M12).
    pub fn is_full(&self) -> bool {
        self.effective_active()
            .is_some_and(|(active, limit)| limit == 0 || active >= limit)
    }
}

/// A peer is slow when its RTT is above `threshold_ms`, or above four times the
/// median of the measured holders (M8).
pub fn is_slow(rtt_ms: Option<u32>, median_ms: Option<u32>, threshold_ms: u32) -> bool {
    match rtt_ms {
        None => false,
        Some(rtt) => {
            rtt > threshold_ms || median_ms.is_some_and(|m| rtt > m.saturating_mul(4).max(20))
        }
    }
}

/// Ranks holders for a referral: full peers dropped; slow peers after the rest;
/// peers reached only through a relay after those reached directly (B10: a relayed
/// byte crosses the site anyway); then the least loaded (counting referrals
/// handed out since the last report, so a crowd spreads over peers); then the
/// least referred to lately (so clients arriving one by one spread too, rather
/// than each finding the last one's peer idle again and most used); then the
/// most used (M9); then the lowest RTT.
pub fn rank_holders(holders: Vec<HolderStats>, slow_threshold_ms: u32, max: usize) -> Vec<Proxy> {
    let mut measured: Vec<u32> = holders.iter().filter_map(|h| h.rtt_ms).collect();
    measured.sort_unstable();
    let median = measured.get(measured.len() / 2).copied();
    let mut usable: Vec<HolderStats> = holders.into_iter().filter(|h| !h.is_full()).collect();
    usable.sort_by_key(|h| {
        let load_permille = h
            .effective_active()
            .map_or(0, |(a, l)| u64::from(a) * 1000 / u64::from(l.max(1)));
        (
            is_slow(h.rtt_ms, median, slow_threshold_ms),
            h.direct == Some(false),
            load_permille,
            h.recent,
            std::cmp::Reverse(h.uses),
            h.rtt_ms.unwrap_or(u32::MAX),
            h.id.clone(),
        )
    });
    usable
        .into_iter()
        .take(max)
        .map(|h| Proxy {
            id: h.id,
            addr: h.addr,
            direct: h.direct,
            rtt_ms: h.rtt_ms,
            load: h.load,
        })
        .collect()
}

#[cfg(test)]
mod relay_tests {
    use super::*;

    fn probed(id: &str, rtt: u32, direct: Option<bool>) -> Probed {
        Probed {
            proxy: Proxy {
                id: id.into(),
                addr: String::new(),
                direct: None,
                rtt_ms: None,
                load: None,
            },
            rtt_ms: Some(rtt),
            throughput: None,
            direct,
        }
    }

    #[test]
    fn a_relay_only_peer_is_used_only_when_nothing_direct_exists() {
        let ids = |v: Vec<Proxy>| v.into_iter().map(|p| p.id).collect::<Vec<_>>();
        // A direct peer exists: the relayed one is not used, however fast.
        let list = vec![
            probed("relayed", 1, Some(false)),
            probed("direct", 50, Some(true)),
        ];
        assert_eq!(ids(choose(list, Policy::Fastest)), ["direct"]);
        // Only the server is direct: it is used, not the relay.
        let list = vec![
            probed("relayed", 1, Some(false)),
            probed(SERVER_PROXY_ID, 0, Some(true)),
        ];
        assert_eq!(ids(choose(list, Policy::Fastest)), [SERVER_PROXY_ID]);
        // The server is down and no direct peer: the relay is better than nothing.
        let mut dead = probed("dead", 1, None);
        dead.rtt_ms = None;
        let list = vec![probed("relayed", 1, Some(false)), dead];
        assert_eq!(ids(choose(list, Policy::Fastest)), ["relayed"]);
    }
}

#[cfg(test)]
mod rtt_tests {
    use super::*;

    fn probed(id: &str, rtt: u32) -> Probed {
        Probed {
            proxy: Proxy {
                id: id.into(),
                addr: String::new(),
                direct: None,
                rtt_ms: None,
                load: None,
            },
            rtt_ms: Some(rtt),
            throughput: None,
            direct: Some(true),
        }
    }

    #[test]
    fn rtt_classes_double() {
        let classes: Vec<u32> = [0, 9, 10, 19, 20, 39, 40, 79, 80, 5000]
            .into_iter()
            .map(rtt_class)
            .collect();
        assert_eq!(classes, [0, 0, 1, 1, 2, 2, 3, 3, 4, 9]);
    }

    #[test]
    fn ping_noise_keeps_the_servers_spread_order() {
        let ids = |v: Vec<Proxy>| v.into_iter().map(|p| p.id).collect::<Vec<_>>();
        // The server put `b` first (`a` just got a client); `a` answered the
        // ping a few ms faster on a busy host: `b` stays first.
        let list = vec![probed("b", 27), probed("a", 21)];
        assert_eq!(ids(choose(list, Policy::Fastest)), ["b", "a"]);
        // A real difference still counts.
        let list = vec![probed("b", 90), probed("a", 21)];
        assert_eq!(ids(choose(list, Policy::Fastest)), ["a", "b"]);
    }
}

#[cfg(test)]
mod rank_tests {
    use super::*;
    use crate::proxy::Load;
    use proptest::prelude::*;

    fn h(id: &str, rtt: Option<u32>, active: u32, pending: u32, uses: u64) -> HolderStats {
        HolderStats {
            id: id.into(),
            addr: format!("http://{id}"),
            rtt_ms: rtt,
            direct: None,
            load: Some(Load { active, limit: 4 }),
            pending,
            recent: pending,
            uses,
        }
    }

    #[test]
    fn slow_last_full_dropped_crowd_spread_most_used_first() {
        let ids = |v: Vec<Proxy>| v.into_iter().map(|p| p.id).collect::<Vec<_>>();
        let ranked = rank_holders(
            vec![
                h("slow", Some(900), 0, 0, 50),
                h("full", Some(5), 2, 2, 9),
                h("used", Some(9), 0, 0, 7),
                h("new", Some(5), 0, 0, 0),
            ],
            500,
            8,
        );
        assert_eq!(ids(ranked), ["used", "new", "slow"]);
        // Pending referrals count as load: the next client goes elsewhere.
        let ranked = rank_holders(
            vec![h("used", Some(9), 0, 1, 7), h("new", Some(5), 0, 0, 0)],
            500,
            8,
        );
        assert_eq!(ids(ranked), ["new", "used"]);
    }

    #[test]
    fn clients_arriving_one_by_one_alternate_between_idle_peers() {
        let ids = |v: Vec<Proxy>| v.into_iter().map(|p| p.id).collect::<Vec<_>>();
        // `a` served the last client, who reported (nothing pending, one more
        // use): both are idle, but `a` was referred to lately, `b` not.
        let mut a = h("a", Some(5), 0, 0, 1);
        a.recent = 1;
        let b = h("b", Some(5), 0, 0, 0);
        assert_eq!(
            ids(rank_holders(vec![a.clone(), b.clone()], 500, 8)),
            ["b", "a"]
        );
        // Referred to as often lately: the most used goes first again (M9).
        let mut b = b;
        b.recent = 1;
        assert_eq!(ids(rank_holders(vec![b, a], 500, 8)), ["a", "b"]);
    }

    #[test]
    fn peers_reached_only_through_a_relay_go_after_direct_ones() {
        let ids = |v: Vec<Proxy>| v.into_iter().map(|p| p.id).collect::<Vec<_>>();
        let mut relayed = h("relayed", Some(5), 0, 0, 9);
        relayed.direct = Some(false);
        let mut direct = h("direct", Some(40), 1, 0, 0);
        direct.direct = Some(true);
        let unknown = h("unknown", Some(30), 1, 0, 0);
        let ranked = rank_holders(vec![relayed, direct, unknown], 500, 8);
        assert_eq!(ids(ranked.clone()), ["unknown", "direct", "relayed"]);
        assert_eq!(
            ranked[2].direct,
            Some(false),
            "the flag travels to the client"
        );
    }

    proptest! {
        #[test]
        fn never_lists_a_full_peer_and_respects_max(
            specs in proptest::collection::vec((proptest::option::of(0u32..2000), 0u32..6, 0u32..6, 0u64..10), 0..20),
            max in 0usize..10,
        ) {
            let holders: Vec<_> = specs.iter().enumerate()
                .map(|(i, (rtt, a, p, u))| h(&format!("p{i}"), *rtt, *a, *p, *u)).collect();
            let full: Vec<String> = holders.iter().filter(|x| x.is_full()).map(|x| x.id.clone()).collect();
            let ranked = rank_holders(holders, 500, max);
            prop_assert!(ranked.len() <= max);
            prop_assert!(ranked.iter().all(|p| !full.contains(&p.id)));
        }
    }
}
