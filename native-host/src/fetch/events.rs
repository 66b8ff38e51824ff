//! Every step of a download as a [`DownloadEvent`], fed to the log, the
//! metrics, the byte counters, the popup's peer list and the download's
//! [`Explanation`] (for `fetch --explain` and the popup's "why").
//!
//! One download has one [`Events`]; [`RecentDownloads`] keeps the last few
//! (newest first, bounded) for the popup.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use metrics::counter;
use peercache_core::explain::{DownloadEvent, Explanation};
use peercache_core::protocol::SERVER_PROXY_ID;

use crate::counters::{Counted, HostCounters};
use crate::peer_memory::PeerMemory;

/// The source id of bytes answered from the own cache.
pub const CACHE_SOURCE: &str = "cache";
/// Most downloads the popup's "why" keeps.
pub const MAX_RECENT_DOWNLOADS: usize = 16;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The events of one download (see the module docs).
#[derive(Debug)]
pub struct Events {
    site: String,
    story: Mutex<Explanation>,
    counters: Arc<HostCounters>,
    memory: Arc<PeerMemory>,
}

impl Events {
    /// Events of a download from `site` (the server's origin).
    pub fn new(site: &str, counters: Arc<HostCounters>, memory: Arc<PeerMemory>) -> Self {
        Self {
            site: site.to_string(),
            story: Mutex::new(Explanation::default()),
            counters,
            memory,
        }
    }

    /// Records one step.
    pub fn emit(&self, event: DownloadEvent) {
        self.account(&event);
        log(&event);
        lock(&self.story).apply(&event);
    }

    /// The download's story so far.
    pub fn explanation(&self) -> Explanation {
        lock(&self.story).clone()
    }

    /// Counters and the popup's peer list, from the bytes each source sent.
    fn account(&self, event: &DownloadEvent) {
        counter!("peercache_download_events_total", "event" => name(event)).increment(1);
        match event {
            DownloadEvent::RangeDone { source, first, end } => {
                let n = end.saturating_sub(*first);
                match source.as_str() {
                    SERVER_PROXY_ID => self.counters.add(Counted::FromServer, n),
                    CACHE_SOURCE => self.counters.add(Counted::FromCache, n),
                    peer => {
                        self.counters.add(Counted::FromPeers, n);
                        let addr = lock(&self.story)
                            .candidates
                            .iter()
                            .find(|c| c.id == peer)
                            .map(|c| c.addr.clone())
                            .unwrap_or_default();
                        self.memory.note_peer_bytes(&self.site, peer, &addr, n);
                    }
                }
            }
            DownloadEvent::SourceFailed { mismatch: true, .. } => {
                self.counters.add(Counted::VerificationFailure, 1);
            }
            _ => {}
        }
    }
}

/// The event's name, as the metric's label.
fn name(event: &DownloadEvent) -> &'static str {
    match event {
        DownloadEvent::Started { .. } => "started",
        DownloadEvent::Deferred { .. } => "deferred",
        DownloadEvent::DeferralEnded => "deferral_ended",
        DownloadEvent::ServedByServer { .. } => "served_by_server",
        DownloadEvent::Referred { .. } => "referred",
        DownloadEvent::ServerSilent => "server_silent",
        DownloadEvent::Discovered { .. } => "discovered",
        DownloadEvent::FromCache { .. } => "from_cache",
        DownloadEvent::Measured { .. } => "measured",
        DownloadEvent::Chosen { .. } => "chosen",
        DownloadEvent::SourceFound { .. } => "source_found",
        DownloadEvent::SourceTried { .. } => "source_tried",
        DownloadEvent::SourceFailed { .. } => "source_failed",
        DownloadEvent::RangeDone { .. } => "range_done",
        DownloadEvent::Verified { .. } => "verified",
        DownloadEvent::Kept { .. } => "kept",
        DownloadEvent::NotKept { .. } => "not_kept",
        DownloadEvent::Finished { .. } => "finished",
        DownloadEvent::Failed { .. } => "failed",
    }
}

fn log(event: &DownloadEvent) {
    match event {
        DownloadEvent::RangeDone { source, first, end } => {
            tracing::debug!(%source, first, end, "range verified");
        }
        DownloadEvent::SourceTried { source, what } => {
            tracing::debug!(%source, %what, "source tried")
        }
        DownloadEvent::SourceFound { source } => {
            tracing::info!(%source, "a source listed since the referral joins")
        }
        DownloadEvent::SourceFailed {
            source,
            why,
            mismatch,
        } => tracing::info!(%source, %why, mismatch, "source failed; its work goes to the next"),
        DownloadEvent::Measured { policy, candidates } => {
            for c in candidates {
                tracing::info!(policy, peer = %c.id, rtt_ms = ?c.rtt_ms, throughput = ?c.throughput, direct = ?c.direct, "candidate measured");
            }
        }
        DownloadEvent::Chosen { order, verdicts } => {
            for (id, v) in verdicts {
                tracing::info!(peer = %id, verdict = %peercache_core::explain::describe_verdict(v), "candidate");
            }
            tracing::info!(?order, "order chosen");
        }
        DownloadEvent::Referred {
            hash,
            holders,
            target_speed,
            why,
            ..
        } => {
            tracing::info!(%hash, holders, target_speed, reason = ?why.map(|w| w.reason), "referred")
        }
        DownloadEvent::Failed { why } => tracing::warn!(%why, "download failed"),
        DownloadEvent::Started { url } => tracing::info!(%url, "download started"),
        DownloadEvent::Deferred { retry_after_s } => {
            tracing::info!(retry_after_s, "server deferred the request");
        }
        DownloadEvent::DeferralEnded => {
            tracing::info!("deferred long enough; asking the server for the bytes");
        }
        DownloadEvent::ServedByServer { hash, size } => {
            tracing::info!(hash = ?hash.map(|h| h.to_hex()), ?size, "the server sends the bytes");
        }
        DownloadEvent::ServerSilent => tracing::info!("server silent; asking known peers"),
        DownloadEvent::Discovered { via, holders } => {
            tracing::info!(?via, holders, "holders discovered");
        }
        DownloadEvent::FromCache { hash } => tracing::info!(%hash, "held already; re-verified"),
        DownloadEvent::Verified { hash } => tracing::info!(%hash, "every byte verified"),
        DownloadEvent::Kept { hash } => tracing::info!(%hash, "kept; serving it to others"),
        DownloadEvent::NotKept { why } => tracing::warn!(%why, "not kept"),
        DownloadEvent::Finished { main_source } => {
            tracing::info!(%main_source, "download finished");
        }
    }
}

/// The last downloads, newest first (see the module docs).
#[derive(Debug, Default)]
pub struct RecentDownloads {
    list: Mutex<VecDeque<Arc<Events>>>,
}

impl RecentDownloads {
    /// Starts the events of a new download, which the list keeps until
    /// [`MAX_RECENT_DOWNLOADS`] newer ones push it out.
    pub fn start(&self, events: Events) -> Arc<Events> {
        let events = Arc::new(events);
        let mut list = lock(&self.list);
        list.push_front(events.clone());
        list.truncate(MAX_RECENT_DOWNLOADS);
        events
    }

    /// The explanations, newest first.
    pub fn explanations(&self) -> Vec<Explanation> {
        lock(&self.list).iter().map(|e| e.explanation()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use peercache_core::explain::Candidate;

    #[test]
    fn bytes_are_counted_once_by_source_and_the_list_is_bounded() {
        let counters = Arc::new(HostCounters::default());
        let memory = Arc::new(PeerMemory::default());
        let recent = RecentDownloads::default();
        let ev = recent.start(Events::new(
            "https://s.example",
            counters.clone(),
            memory.clone(),
        ));
        ev.emit(DownloadEvent::Measured {
            policy: "fastest".into(),
            candidates: vec![Candidate {
                id: "p1".into(),
                addr: "peer:?direct=192.0.2.1:1".into(),
                listed: 0,
                rtt_ms: Some(1),
                throughput: None,
                load: None,
                direct: Some(true),
            }],
        });
        ev.emit(DownloadEvent::RangeDone {
            source: "p1".into(),
            first: 0,
            end: 10,
        });
        ev.emit(DownloadEvent::RangeDone {
            source: SERVER_PROXY_ID.into(),
            first: 10,
            end: 15,
        });
        ev.emit(DownloadEvent::RangeDone {
            source: CACHE_SOURCE.into(),
            first: 0,
            end: 3,
        });
        ev.emit(DownloadEvent::SourceFailed {
            source: "p2".into(),
            why: "lied".into(),
            mismatch: true,
        });
        let s = counters.snapshot();
        assert_eq!(
            (
                s.bytes_from_peers,
                s.bytes_from_server,
                s.bytes_from_cache,
                s.verification_failures
            ),
            (10, 5, 3, 1)
        );
        let peers = memory.recent_peers();
        assert_eq!(peers.len(), 1);
        assert_eq!(
            (peers[0].bytes, peers[0].addr.as_str()),
            (10, "peer:?direct=192.0.2.1:1")
        );
        for _ in 0..(MAX_RECENT_DOWNLOADS + 5) {
            recent.start(Events::new(
                "https://s.example",
                counters.clone(),
                memory.clone(),
            ));
        }
        assert_eq!(recent.explanations().len(), MAX_RECENT_DOWNLOADS);
    }
}
