//! Peer health (M8): the server pings every serving peer's `/v1/ping` on a
//! schedule, keeps a smoothed RTT and the reported load, and drops peers that stop
//! answering. Ranking (`rank_holders`) demotes slow ones.

use std::sync::Arc;
use std::time::Instant;

use futures_util::StreamExt;
use metrics::counter;
use peercache_core::headers;
use peercache_core::protocol::Load;

use crate::app::AppState;
use crate::store::now_ms;

/// Pings at once.
const CONCURRENCY: usize = 32;

fn parse_load(v: &str) -> Option<Load> {
    let (a, l) = v.split_once('/')?;
    Some(Load {
        active: a.trim().parse().ok()?,
        limit: l.trim().parse().ok()?,
    })
}

/// Pings every serving peer once.
pub async fn ping_all(state: &Arc<AppState>) {
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
            async move {
                let started = Instant::now();
                let resp = state.http.get(format!("{addr}/v1/ping")).send().await;
                let (rtt, load) = match resp {
                    Ok(r) if r.status().is_success() => {
                        let load = r
                            .headers()
                            .get(headers::LOAD)
                            .and_then(|v| v.to_str().ok())
                            .and_then(parse_load);
                        let ms = u32::try_from(started.elapsed().as_millis()).unwrap_or(u32::MAX);
                        (Some(ms.max(1)), load)
                    }
                    _ => (None, None),
                };
                counter!("peercache_pings_total").increment(1);
                if rtt.is_none() {
                    counter!("peercache_ping_failures_total").increment(1);
                    tracing::info!(peer = %id, %addr, "ping failed");
                }
                if let Err(e) = state.store.record_ping(&id, rtt, load).await {
                    tracing::warn!(error = %e, "recording a ping failed");
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

#[cfg(test)]
mod tests {
    #[test]
    fn load_header() {
        assert_eq!(
            super::parse_load("2/8").map(|l| (l.active, l.limit)),
            Some((2, 8))
        );
        assert!(super::parse_load("x").is_none());
    }
}
