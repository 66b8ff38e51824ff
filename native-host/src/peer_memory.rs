//! What this host remembers of the peers it downloaded from, and of its own link.
//!
//! - Throughput per peer, decaying towards "unknown" (half-life ten minutes): the
//!   `first-meeting-target` policy and `--explain` use it.
//! - The recent peers the popup lists (bounded, oldest out first).
//! - This host's own link speed: the best recent download rate, decayed the same
//!   way; the host sends it in `Peercache-Client` so the server's target period
//!   counts the client's own floor (DESIGN M3). It is kept in the state
//!   directory (`link.json`), so a `fetch` benefits from the one before.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use peercache_core::protocol::RecentPeer;

/// Half-life of remembered throughput measurements.
pub const THROUGHPUT_HALF_LIFE: Duration = Duration::from_secs(600);
/// Most peers whose throughput is remembered.
const MAX_REMEMBERED: usize = 10_000;
/// Most peers remembered for the popup's "current peers" list.
pub const MAX_RECENT_PEERS: usize = 32;
/// Downloads smaller than this say too little about a rate.
const MIN_SAMPLE_BYTES: u64 = 64 * 1024;
/// Downloads smaller than this say too little about the own link.
const MIN_LINK_SAMPLE_BYTES: u64 = 256 * 1024;

/// A remembered rate, decaying towards "unknown".
#[derive(Debug, Clone, Copy)]
struct Measured {
    bytes_per_s: f64,
    at: Instant,
}

impl Measured {
    /// The weight left after its age (1 fresh, halving every half-life).
    fn weight(&self, now: Instant) -> f64 {
        0.5f64.powf(now.duration_since(self.at).as_secs_f64() / THROUGHPUT_HALF_LIFE.as_secs_f64())
    }

    /// The value while it still weighs at least a tenth.
    fn current(&self, now: Instant) -> Option<u64> {
        (self.weight(now) >= 0.1).then_some(self.bytes_per_s as u64)
    }
}

#[derive(Debug)]
struct PeerUse {
    site: String,
    id: String,
    addr: String,
    bytes: u64,
    last: Instant,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The own link speed as kept on disk.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct SavedLink {
    bytes_per_s: f64,
    /// Unix seconds of the measurement.
    at: u64,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// See the module docs.
#[derive(Debug, Default)]
pub struct PeerMemory {
    throughput: Mutex<HashMap<String, Measured>>,
    recent: Mutex<Vec<PeerUse>>,
    link: Mutex<Option<Measured>>,
    link_file: Option<std::path::PathBuf>,
}

impl PeerMemory {
    /// A memory that keeps the own link speed in `state_dir` (and starts from
    /// what is kept there; an unreadable file is ignored).
    pub fn open(state_dir: &std::path::Path) -> Self {
        let path = state_dir.join("link.json");
        let saved = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<SavedLink>(&b).ok())
            .filter(|s| s.bytes_per_s.is_finite() && s.bytes_per_s > 0.0);
        let link = saved.and_then(|s| {
            let age = Duration::from_secs(unix_now().saturating_sub(s.at));
            Instant::now().checked_sub(age).map(|at| Measured {
                bytes_per_s: s.bytes_per_s,
                at,
            })
        });
        Self {
            link: Mutex::new(link),
            link_file: Some(path),
            ..Self::default()
        }
    }

    /// What this host remembers of a peer's throughput (decayed; `None` once
    /// the measurement has faded below a tenth of its weight).
    pub fn throughput(&self, peer: &str) -> Option<u64> {
        lock(&self.throughput).get(peer)?.current(Instant::now())
    }

    /// Records a download's throughput from `peer` for later choices.
    pub fn remember(&self, peer: &str, bytes: u64, took: Duration) {
        if took.is_zero() || bytes < MIN_SAMPLE_BYTES {
            return;
        }
        let sample = bytes as f64 / took.as_secs_f64();
        let now = Instant::now();
        let mut map = lock(&self.throughput);
        if map.len() >= MAX_REMEMBERED && !map.contains_key(peer) {
            map.clear();
        }
        let value = match map.get(peer) {
            // Blend with what is left of the old measurement.
            Some(old) => {
                let w = old.weight(now) * 0.5;
                old.bytes_per_s * w + sample * (1.0 - w)
            }
            None => sample,
        };
        map.insert(
            peer.to_string(),
            Measured {
                bytes_per_s: value,
                at: now,
            },
        );
    }

    /// Records how fast a whole download arrived (from any source): the own link
    /// carries at least that much.
    pub fn note_link(&self, bytes: u64, took: Duration) {
        if took.is_zero() || bytes < MIN_LINK_SAMPLE_BYTES {
            return;
        }
        let sample = bytes as f64 / took.as_secs_f64();
        let now = Instant::now();
        let mut link = lock(&self.link);
        let decayed = link.map_or(0.0, |m| m.bytes_per_s * m.weight(now));
        if sample >= decayed {
            *link = Some(Measured {
                bytes_per_s: sample,
                at: now,
            });
            if let Some(path) = &self.link_file {
                let saved = SavedLink {
                    bytes_per_s: sample,
                    at: unix_now(),
                };
                let written = serde_json::to_vec(&saved)
                    .map_err(std::io::Error::other)
                    .and_then(|b| crate::cache::write_atomically(path, &b));
                if let Err(e) = written {
                    tracing::debug!(error = %e, "could not keep the link speed");
                }
            }
        }
    }

    /// The own link speed as measured, bytes/s (`None` before any large
    /// download, or once the measurement has faded).
    pub fn link_speed(&self) -> Option<u64> {
        lock(&self.link).and_then(|m| m.current(Instant::now()))
    }

    /// Records `bytes` verified bytes received from peer `id` (at `addr`) for
    /// `site`; the oldest entry goes when the list is full.
    pub fn note_peer_bytes(&self, site: &str, id: &str, addr: &str, bytes: u64) {
        let mut list = lock(&self.recent);
        let now = Instant::now();
        if let Some(entry) = list.iter_mut().find(|p| p.site == site && p.id == id) {
            entry.bytes += bytes;
            entry.last = now;
            entry.addr = addr.to_string();
            return;
        }
        if list.len() >= MAX_RECENT_PEERS
            && let Some(oldest) = list
                .iter()
                .enumerate()
                .min_by_key(|(_, p)| p.last)
                .map(|(i, _)| i)
        {
            list.swap_remove(oldest);
        }
        list.push(PeerUse {
            site: site.to_string(),
            id: id.to_string(),
            addr: addr.to_string(),
            bytes,
            last: now,
        });
    }

    /// Peers that recently sent verified bytes, most recent first.
    pub fn recent_peers(&self) -> Vec<RecentPeer> {
        let list = lock(&self.recent);
        let mut out: Vec<_> = list
            .iter()
            .map(|p| {
                (
                    p.last,
                    RecentPeer {
                        site: p.site.clone(),
                        id: p.id.clone(),
                        addr: p.addr.clone(),
                        bytes: p.bytes,
                        idle_secs: p.last.elapsed().as_secs(),
                    },
                )
            })
            .collect();
        out.sort_by_key(|p| std::cmp::Reverse(p.0));
        out.into_iter().map(|(_, p)| p).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throughput_measurements_decay() {
        let now = Instant::now();
        let m = Measured {
            bytes_per_s: 1e6,
            at: now,
        };
        assert!((m.weight(now) - 1.0).abs() < 1e-9);
        let later = now + THROUGHPUT_HALF_LIFE;
        assert!((m.weight(later) - 0.5).abs() < 1e-6);
        assert!(
            m.weight(now + THROUGHPUT_HALF_LIFE * 4) < 0.1,
            "forgotten after four half-lives"
        );
        assert_eq!(m.current(now + THROUGHPUT_HALF_LIFE * 4), None);
    }

    #[test]
    fn the_link_speed_is_the_best_recent_download_and_small_ones_do_not_count() {
        let m = PeerMemory::default();
        assert_eq!(m.link_speed(), None);
        m.note_link(1024, Duration::from_millis(1));
        assert_eq!(m.link_speed(), None, "too small to say anything");
        m.note_link(1 << 20, Duration::from_secs(1));
        assert_eq!(m.link_speed(), Some(1 << 20));
        m.note_link(1 << 20, Duration::from_secs(2));
        assert_eq!(
            m.link_speed(),
            Some(1 << 20),
            "a slower download (a busy source) does not lower it"
        );
        m.note_link(4 << 20, Duration::from_secs(1));
        assert_eq!(m.link_speed(), Some(4 << 20));
    }

    #[test]
    fn the_link_speed_is_kept_across_runs() {
        let dir = std::env::temp_dir().join(format!("peercache-link-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let m = PeerMemory::open(&dir);
        assert_eq!(m.link_speed(), None);
        m.note_link(2 << 20, Duration::from_secs(1));
        assert_eq!(PeerMemory::open(&dir).link_speed(), Some(2 << 20));
        std::fs::write(dir.join("link.json"), b"{garbage").unwrap();
        assert_eq!(
            PeerMemory::open(&dir).link_speed(),
            None,
            "garbage is ignored"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_recent_peers_list_adds_up_per_peer_and_stays_bounded() {
        let m = PeerMemory::default();
        m.note_peer_bytes("https://a.example", "p1", "peer:?direct=192.0.2.1:1", 100);
        m.note_peer_bytes("https://a.example", "p1", "peer:?direct=192.0.2.1:1", 50);
        m.note_peer_bytes("https://b.example", "p1", "peer:?direct=192.0.2.1:1", 7);
        let list = m.recent_peers();
        assert_eq!(list.len(), 2, "one row per site and peer");
        assert_eq!(list[0].site, "https://b.example", "newest first");
        assert_eq!(list[1].bytes, 150);
        for i in 0..(MAX_RECENT_PEERS + 10) {
            m.note_peer_bytes(
                "https://a.example",
                &format!("x{i}"),
                "peer:?direct=192.0.2.2:1",
                1,
            );
        }
        let list = m.recent_peers();
        assert_eq!(list.len(), MAX_RECENT_PEERS);
        assert!(list.iter().all(|p| p.id != "p1"), "the oldest went first");
    }
}
