//! Announce and report, the last stage: tell the server this host now holds
//! the object (and what the cache dropped for it), report how each source of
//! a referred download did (served, failed, lied, unused), and remember each
//! peer's speed and the own link's.

use std::collections::HashMap;
use std::time::Duration;

use metrics::counter;
use peercache_core::hash::ObjectHash;
use peercache_core::protocol::{Outcome, SERVER_PROXY_ID};

use super::keep::Kept;
use super::source::SourceError;
use super::transfer::FailedSource;
use crate::peer_memory::PeerMemory;
use crate::server_link::{ServerLink, SourceReport};

/// Announces a kept object to the server at `origin`, and what the cache
/// evicted for it to every server.
pub async fn announce_kept(link: &ServerLink, origin: &str, hash: ObjectHash, kept: &Kept) {
    if let Err(e) = link.announce(origin, &[hash], &[]).await {
        tracing::warn!(error = %e, "announce failed");
    }
    link.announce_dropped(&kept.dropped).await;
}

/// Reports each failed source as it fails (a liar gets its strike while the
/// download goes on), until the transfer drops its sender.
pub async fn report_failures(
    link: &ServerLink,
    origin: &str,
    hash: ObjectHash,
    mut failures: tokio::sync::mpsc::Receiver<FailedSource>,
) {
    while let Some(f) = failures.recv().await {
        if f.id == SERVER_PROXY_ID {
            continue;
        }
        let outcome = match f.error {
            SourceError::Mismatch => Outcome::Mismatch,
            SourceError::Failed(_) | SourceError::Busy(_) | SourceError::NotHeld => Outcome::Failed,
        };
        link.report(origin, SourceReport::nothing(hash, &f.id, outcome, f.after))
            .await;
    }
}

/// How the sources of one download did.
#[derive(Debug, Default)]
pub struct Tally {
    /// Verified bytes per source id.
    pub by_source: HashMap<String, u64>,
    /// Whether each peer's connection went direct.
    pub paths: HashMap<String, bool>,
    /// Peers listed but not used (left out as relay-only, or not needed).
    pub unused: Vec<(String, Option<bool>)>,
    /// The whole download's time.
    pub took: Duration,
}

/// Reports the sources that served or went unused to the server at `origin`
/// (nothing without one) and remembers the speeds.
pub async fn report_sources(
    link: &ServerLink,
    memory: &PeerMemory,
    origin: &str,
    hash: ObjectHash,
    tally: Tally,
) {
    for (id, direct) in tally.unused {
        let mut r = SourceReport::nothing(hash, &id, Outcome::Unused, Duration::ZERO);
        r.direct = direct;
        link.report(origin, r).await;
    }
    for (id, bytes) in &tally.by_source {
        if id == SERVER_PROXY_ID {
            continue;
        }
        memory.remember(id, *bytes, tally.took);
        let direct = tally.paths.get(id).copied();
        if direct == Some(false) {
            counter!("peercache_bytes_from_peers_relayed_total").increment(*bytes);
        }
        let served = SourceReport {
            hash,
            source: id.clone(),
            outcome: Outcome::Served,
            bytes: *bytes,
            took: tally.took,
            direct,
        };
        link.report(origin, served).await;
    }
    let total: u64 = tally.by_source.values().sum();
    memory.note_link(total, tally.took);
}
