//! Peer health (M8, B10): the server pings every serving peer over its QUIC
//! connection (dialed by key) on a schedule, keeps a smoothed RTT, the reported
//! load and whether the path is direct or only through the relay, and drops peers
//! that stop answering. Ranking (`rank_holders`) demotes slow and relay-only ones.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use metrics::counter;
use peercache_core::peer::DialInfo;

use crate::state::AppState;
use crate::store::{PathWitness, now_ms};

/// Pings at once.
const CONCURRENCY: usize = 32;
/// Longest one ping may take (dial included): a peer slower than that serves
/// nobody well (the slow threshold is far lower).
const PING_DEADLINE: Duration = Duration::from_secs(2);
/// How long a relayed connection is given to find a direct path.
const DIRECT_WAIT: Duration = Duration::from_millis(500);

/// Pings the peer `id` at `dial` once, as the pinger does: its answer and
/// whether the path went (or soon turned) direct; `None` when it did not answer
/// within the deadline.
pub async fn probe(
    dialer: &peercache_net::PeerDialer,
    id: &str,
    dial: &DialInfo,
) -> Option<(peercache_net::Pinged, bool)> {
    tokio::time::timeout(PING_DEADLINE, async {
        let p = dialer.ping(id, dial).await.ok()?;
        let direct = p.direct || dialer.wait_direct(id, dial, DIRECT_WAIT).await;
        Some((p, direct))
    })
    .await
    .ok()
    .flatten()
}

/// Pings every serving peer once.
pub async fn ping_all(state: &Arc<AppState>) {
    let Some(dialer) = state.peers.clone() else {
        return;
    };
    // Replicas sharing a Redis store take turns: the lease holder pings.
    match state.store.lead().await {
        Ok(true) => {}
        Ok(false) => return,
        Err(e) => {
            tracing::warn!(error = %e, "taking the lease failed");
            return;
        }
    }
    let peers = match state.store.serving_peers(now_ms()).await {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list peers to ping");
            return;
        }
    };
    futures_util::stream::iter(peers)
        .for_each_concurrent(CONCURRENCY, |(id, addr)| {
            let state = state.clone();
            let dialer = dialer.clone();
            async move {
                let pinged = match DialInfo::parse(&addr) {
                    Ok(dial) => probe(&dialer, &id, &dial).await,
                    Err(_) => None,
                };
                if pinged.is_none() {
                    dialer.disconnect(&id);
                }
                counter!("peercache_pings_total").increment(1);
                let (rtt, load) = match &pinged {
                    Some((p, _)) => {
                        metrics::histogram!("peercache_ping_duration_seconds")
                            .record(p.rtt.as_secs_f64());
                        (
                            Some(u32::try_from(p.rtt.as_millis()).unwrap_or(u32::MAX).max(1)),
                            p.load,
                        )
                    }
                    None => {
                        counter!("peercache_ping_failures_total").increment(1);
                        tracing::info!(peer = %id, %addr, "ping failed");
                        (None, None)
                    }
                };
                if let Err(e) = state.store.record_ping(&id, rtt, load).await {
                    tracing::warn!(error = %e, "recording a ping failed");
                }
                if let Some((_, direct)) = pinged
                    && let Err(e) = state
                        .store
                        .note_path(&id, direct, PathWitness::ServerPing)
                        .await
                {
                    tracing::warn!(error = %e, "recording a path failed");
                }
            }
        })
        .await;
}

/// Runs [`ping_all`] every `config.ping_interval` while the state lives.
pub fn spawn_pinger(state: &Arc<AppState>) {
    let weak = Arc::downgrade(state);
    let every = state.config.ping_interval;
    if every.is_zero() {
        return;
    }
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let Some(state) = weak.upgrade() else { break };
            ping_all(&state).await;
        }
    });
}
