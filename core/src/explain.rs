//! One download told as events, and the explanation they add up to (issue 11).
//!
//! The host's download pipeline emits a [`DownloadEvent`] at every step: what the
//! server said and why, every candidate with what was measured, the order chosen
//! and why, every source tried and how it ended, which byte ranges came from
//! whom, and what was verified and kept. The same events feed the log, the
//! metrics, `peercache-host fetch --explain` and the popup's "why".
//!
//! [`Explanation::apply`] folds events into a bounded summary; [`Explanation::render`]
//! prints it for people. Both are pure, so the popup (wasm) and the host agree.

use serde::{Deserialize, Serialize};

use crate::decide::Explained;
use crate::hash::ObjectHash;
use crate::proxy::Load;
use crate::select::Verdict;

/// Most candidates, failures and ranges per source an explanation keeps.
pub const MAX_LISTED: usize = 64;

/// One candidate source as measured before the transfer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidate {
    /// Peer id (the server's entry is `server`).
    pub id: String,
    /// How it was listed (dial info, or the server's URL).
    pub addr: String,
    /// Its place in the list the candidates came from (0 = first).
    pub listed: usize,
    /// Measured round trip, if it answered.
    pub rtt_ms: Option<u32>,
    /// Remembered throughput from earlier downloads, bytes/s.
    pub throughput: Option<u64>,
    /// Upload slots in use, as the server last heard.
    pub load: Option<Load>,
    /// Whether the connection went direct (`false`: only through a relay).
    pub direct: Option<bool>,
}

/// Where the candidate sources came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Discovery {
    /// The server's referral.
    Referral,
    /// Peers met in earlier referrals (the server is silent).
    KnownPeers,
    /// Peers on the local network.
    Lan,
    /// Peers named by other peers (the cascade).
    Cascade,
}

/// A step of one download.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum DownloadEvent {
    /// The download of `url` began.
    Started {
        /// The URL.
        url: String,
    },
    /// The server deferred the request (the object is on its way to another client).
    Deferred {
        /// Seconds it asked to wait.
        retry_after_s: u64,
    },
    /// Deferred long enough: the client asks for the bytes themselves.
    DeferralEnded,
    /// The server sends the bytes itself.
    ServedByServer {
        /// The hash it named.
        hash: Option<ObjectHash>,
        /// The size it announced.
        size: Option<u64>,
    },
    /// The server referred to other peers.
    Referred {
        /// The object.
        hash: ObjectHash,
        /// Its size.
        size: u64,
        /// Speed a source should reach, bytes/s.
        target_speed: u64,
        /// Holders listed (the server's own entry not counted).
        holders: usize,
        /// The server's figures and reason, if it sent them.
        why: Option<Explained>,
    },
    /// The server was silent; sources are looked for elsewhere.
    ServerSilent,
    /// Sources found without the server.
    Discovered {
        /// Where.
        via: Discovery,
        /// How many.
        holders: usize,
    },
    /// This host already holds the object (re-verified).
    FromCache {
        /// The object.
        hash: ObjectHash,
    },
    /// Every candidate, measured.
    Measured {
        /// The policy in force (`fastest`, `first-meeting-target`).
        policy: String,
        /// The candidates.
        candidates: Vec<Candidate>,
    },
    /// The order chosen and the verdict on every candidate.
    Chosen {
        /// Ids in the order they will be tried.
        order: Vec<String>,
        /// Each candidate's verdict.
        verdicts: Vec<(String, Verdict)>,
    },
    /// A source that appeared since the referral joined the transfer (the
    /// server listed it mid-download: a holder or another receiver).
    SourceFound {
        /// Its id.
        source: String,
    },
    /// A source was asked for verification data or bytes.
    SourceTried {
        /// Its id.
        source: String,
        /// What for (`outboard`, `bytes`).
        what: String,
    },
    /// A source failed and handed back its work.
    SourceFailed {
        /// Its id.
        source: String,
        /// Why.
        why: String,
        /// It sent bytes that do not match the hash (a liar).
        mismatch: bool,
    },
    /// Verified bytes `[first, end)` arrived from a source.
    RangeDone {
        /// Its id.
        source: String,
        /// First byte.
        first: u64,
        /// One past the last byte.
        end: u64,
    },
    /// Every byte matched the hash.
    Verified {
        /// The object.
        hash: ObjectHash,
    },
    /// The object is in this host's cache and will be served to others.
    Kept {
        /// The object.
        hash: ObjectHash,
    },
    /// The object was not kept (why).
    NotKept {
        /// Why.
        why: String,
    },
    /// The download ended with every byte delivered.
    Finished {
        /// The source that sent the most bytes.
        main_source: String,
    },
    /// The download failed.
    Failed {
        /// Why.
        why: String,
    },
}

/// What one source contributed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Contribution {
    /// Its id.
    pub source: String,
    /// Verified bytes.
    pub bytes: u64,
    /// Byte ranges `[first, end)`, merged when adjacent, at most [`MAX_LISTED`].
    pub ranges: Vec<(u64, u64)>,
}

/// A failed try.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// The source.
    pub source: String,
    /// Why.
    pub why: String,
}

/// A download's story, folded from its events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Explanation {
    /// The URL.
    pub url: String,
    /// The object, once known.
    pub hash: Option<ObjectHash>,
    /// Its size, once known.
    pub size: Option<u64>,
    /// How the download went: `server`, `referred`, `cache`, `server-silent`.
    pub path: String,
    /// Seconds of deferral in total.
    pub deferred_s: u64,
    /// The target speed, if referred.
    pub target_speed: Option<u64>,
    /// Holders the server listed, if referred.
    pub holders: Option<usize>,
    /// The server's decision with its figures.
    pub decision: Option<Explained>,
    /// Where sources were found without the server.
    pub discovered: Vec<(Discovery, usize)>,
    /// The policy in force.
    pub policy: Option<String>,
    /// Candidates as measured.
    pub candidates: Vec<Candidate>,
    /// Verdict per candidate id.
    pub verdicts: Vec<(String, Verdict)>,
    /// The order sources were to be tried in.
    pub order: Vec<String>,
    /// Sources that joined during the transfer (listed by the server since).
    #[serde(default)]
    pub joined: Vec<String>,
    /// Failed tries, in order.
    pub failures: Vec<Failure>,
    /// Which source sent which bytes.
    pub contributions: Vec<Contribution>,
    /// Every byte matched the hash.
    pub verified: bool,
    /// Kept in the cache (and announced).
    pub kept: Option<bool>,
    /// `done`, `failed: …`, or empty while running.
    pub outcome: String,
}

impl Explanation {
    /// Adds one event.
    pub fn apply(&mut self, event: &DownloadEvent) {
        match event {
            DownloadEvent::Started { url } => self.url.clone_from(url),
            DownloadEvent::Deferred { retry_after_s } => {
                self.deferred_s = self.deferred_s.saturating_add(*retry_after_s);
            }
            DownloadEvent::DeferralEnded => {}
            DownloadEvent::ServedByServer { hash, size } => {
                self.path = "server".into();
                self.hash = *hash;
                self.size = *size;
            }
            DownloadEvent::Referred {
                hash,
                size,
                target_speed,
                holders,
                why,
            } => {
                self.path = "referred".into();
                self.hash = Some(*hash);
                self.size = Some(*size);
                self.target_speed = Some(*target_speed);
                self.holders = Some(*holders);
                self.decision = *why;
            }
            DownloadEvent::ServerSilent => self.path = "server-silent".into(),
            DownloadEvent::Discovered { via, holders } => {
                if self.discovered.len() < MAX_LISTED {
                    self.discovered.push((*via, *holders));
                }
            }
            DownloadEvent::FromCache { hash } => {
                self.path = "cache".into();
                self.hash = Some(*hash);
            }
            DownloadEvent::Measured { policy, candidates } => {
                self.policy = Some(policy.clone());
                self.candidates = candidates.iter().take(MAX_LISTED).cloned().collect();
            }
            DownloadEvent::Chosen { order, verdicts } => {
                self.order = order.iter().take(MAX_LISTED).cloned().collect();
                self.verdicts = verdicts.iter().take(MAX_LISTED).cloned().collect();
            }
            DownloadEvent::SourceTried { .. } => {}
            DownloadEvent::SourceFound { source } => {
                if self.joined.len() < MAX_LISTED {
                    self.joined.push(source.clone());
                }
            }
            DownloadEvent::SourceFailed { source, why, .. } => {
                if self.failures.len() < MAX_LISTED {
                    self.failures.push(Failure {
                        source: source.clone(),
                        why: why.clone(),
                    });
                }
            }
            DownloadEvent::RangeDone { source, first, end } => self.add_range(source, *first, *end),
            DownloadEvent::Verified { hash } => {
                self.verified = true;
                self.hash = Some(*hash);
            }
            DownloadEvent::Kept { .. } => self.kept = Some(true),
            DownloadEvent::NotKept { .. } => self.kept = Some(false),
            DownloadEvent::Finished { .. } => self.outcome = "done".into(),
            DownloadEvent::Failed { why } => self.outcome = format!("failed: {why}"),
        }
    }

    fn add_range(&mut self, source: &str, first: u64, end: u64) {
        if end <= first {
            return;
        }
        let i = match self.contributions.iter().position(|c| c.source == source) {
            Some(i) => i,
            None if self.contributions.len() < MAX_LISTED => {
                self.contributions.push(Contribution {
                    source: source.to_string(),
                    ..Contribution::default()
                });
                self.contributions.len() - 1
            }
            None => return,
        };
        let c = &mut self.contributions[i];
        c.bytes = c.bytes.saturating_add(end - first);
        let room = c.ranges.len() < MAX_LISTED;
        match c.ranges.last_mut() {
            Some(last) if last.1 == first => last.1 = end,
            // Past the cap the last range grows to cover the rest (a summary).
            Some(last) if !room => last.1 = last.1.max(end),
            _ => c.ranges.push((first, end)),
        }
    }

    /// The explanation for people, as `fetch --explain` prints it.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let _ = writeln!(out, "url: {}", self.url);
        if let Some(h) = &self.hash {
            let _ = writeln!(
                out,
                "object: {h} ({} bytes)",
                self.size.map_or("?".to_string(), |s| s.to_string())
            );
        }
        let path = match self.path.as_str() {
            "server" => "the server sent the bytes itself",
            "referred" => "the server referred this client to peers",
            "cache" => "this host already held the object (re-verified)",
            "server-silent" => "the server was silent; peers found without it",
            _ => "unknown",
        };
        let _ = writeln!(out, "path: {path}");
        if self.deferred_s > 0 {
            let _ = writeln!(
                out,
                "deferred: {} s in total (the object was on its way to another client)",
                self.deferred_s
            );
        }
        if let Some(d) = &self.decision {
            let limit = d
                .inputs
                .egress
                .limit_bytes_per_s
                .map_or("unlimited".to_string(), |l| format!("{l} B/s"));
            let _ = writeln!(
                out,
                "server's decision: {:?} because {}",
                d.verdict,
                d.reason.describe()
            );
            let _ = writeln!(
                out,
                "  estimate {} ms vs target {} ms (egress {limit}, {} bytes in flight, client link {}, {} holders)",
                d.estimate_ms,
                d.target_ms,
                d.inputs.egress.bytes_in_flight,
                d.inputs
                    .client_bandwidth
                    .map_or("unknown".to_string(), |b| format!("{b} B/s")),
                d.inputs.usable_holders
            );
        }
        if let Some(t) = self.target_speed {
            let _ = writeln!(
                out,
                "target speed: {t} B/s; holders listed: {}",
                self.holders.unwrap_or(0)
            );
        }
        for (via, n) in &self.discovered {
            let _ = writeln!(out, "found {n} holder(s) via {via:?}");
        }
        if !self.candidates.is_empty() {
            let _ = writeln!(
                out,
                "candidates (policy {}):",
                self.policy.as_deref().unwrap_or("?")
            );
            for c in &self.candidates {
                let verdict = self
                    .verdicts
                    .iter()
                    .find(|(id, _)| *id == c.id)
                    .map_or("not ranked".to_string(), |(_, v)| describe_verdict(v));
                let _ = writeln!(
                    out,
                    "  {} #{} rtt {} throughput {} load {} path {}: {verdict}",
                    short(&c.id),
                    c.listed,
                    c.rtt_ms.map_or("-".to_string(), |r| format!("{r} ms")),
                    c.throughput.map_or("-".to_string(), |t| format!("{t} B/s")),
                    c.load
                        .map_or("-".to_string(), |l| format!("{}/{}", l.active, l.limit)),
                    match c.direct {
                        Some(true) => "direct",
                        Some(false) => "relay",
                        None => "-",
                    },
                );
            }
        }
        if !self.order.is_empty() {
            let order: Vec<String> = self.order.iter().map(|id| short(id)).collect();
            let _ = writeln!(out, "order: {}", order.join(", "));
        }
        if !self.joined.is_empty() {
            let joined: Vec<String> = self.joined.iter().map(|id| short(id)).collect();
            let _ = writeln!(out, "joined later: {}", joined.join(", "));
        }
        for f in &self.failures {
            let _ = writeln!(out, "failed: {}: {}", short(&f.source), f.why);
        }
        for c in &self.contributions {
            let ranges: Vec<String> = c
                .ranges
                .iter()
                .map(|(a, b)| format!("{a}-{}", b.saturating_sub(1)))
                .collect();
            let _ = writeln!(
                out,
                "from {}: {} bytes, ranges {}",
                short(&c.source),
                c.bytes,
                ranges.join(" ")
            );
        }
        let _ = writeln!(
            out,
            "verified: {}; kept: {}; outcome: {}",
            if self.verified { "yes" } else { "no" },
            match self.kept {
                Some(true) => "yes",
                Some(false) => "no",
                None => "-",
            },
            if self.outcome.is_empty() {
                "running"
            } else {
                &self.outcome
            }
        );
        out
    }
}

/// A verdict in words.
pub fn describe_verdict(v: &Verdict) -> String {
    use crate::select::{Dropped, Placed};
    match v {
        Verdict::Chosen(rank, Placed::MeetsTarget) => {
            format!("chosen #{}: first to meet the target speed", rank + 1)
        }
        Verdict::Chosen(rank, Placed::ByRoundTrip) => {
            format!("chosen #{}: by round trip", rank + 1)
        }
        Verdict::Chosen(rank, Placed::ServerLast) => {
            format!("chosen #{}: the server, last resort", rank + 1)
        }
        Verdict::Dropped(Dropped::Unreachable) => "dropped: did not answer in time".into(),
        Verdict::Dropped(Dropped::Full) => "dropped: no free upload slot".into(),
        Verdict::Dropped(Dropped::RelayOnly) => {
            "dropped: reachable only through a relay, and a direct source exists".into()
        }
    }
}

/// The first 12 characters of a peer id (ids are 64 hex digits).
fn short(id: &str) -> String {
    id.chars().take(12).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::select::{Dropped, Placed};

    #[test]
    fn events_fold_into_a_bounded_story() {
        let hash = ObjectHash::of(b"x");
        let mut e = Explanation::default();
        let events = [
            DownloadEvent::Started {
                url: "https://s/a".into(),
            },
            DownloadEvent::Referred {
                hash,
                size: 300,
                target_speed: 100,
                holders: 2,
                why: None,
            },
            DownloadEvent::Measured {
                policy: "fastest".into(),
                candidates: vec![Candidate {
                    id: "aaaa".into(),
                    addr: "peer:?direct=192.0.2.1:1".into(),
                    listed: 0,
                    rtt_ms: Some(3),
                    throughput: None,
                    load: None,
                    direct: Some(true),
                }],
            },
            DownloadEvent::Chosen {
                order: vec!["aaaa".into(), "server".into()],
                verdicts: vec![
                    ("aaaa".into(), Verdict::Chosen(0, Placed::ByRoundTrip)),
                    ("bbbb".into(), Verdict::Dropped(Dropped::Unreachable)),
                ],
            },
            DownloadEvent::RangeDone {
                source: "aaaa".into(),
                first: 0,
                end: 100,
            },
            DownloadEvent::RangeDone {
                source: "aaaa".into(),
                first: 100,
                end: 200,
            },
            DownloadEvent::SourceFailed {
                source: "aaaa".into(),
                why: "stalled".into(),
                mismatch: false,
            },
            DownloadEvent::RangeDone {
                source: "server".into(),
                first: 200,
                end: 300,
            },
            DownloadEvent::Verified { hash },
            DownloadEvent::Kept { hash },
            DownloadEvent::Finished {
                main_source: "aaaa".into(),
            },
        ];
        for ev in &events {
            e.apply(ev);
        }
        assert_eq!(e.path, "referred");
        assert_eq!(
            e.contributions[0].ranges,
            vec![(0, 200)],
            "adjacent ranges merge"
        );
        assert_eq!(e.contributions[1].bytes, 100);
        let text = e.render();
        assert!(text.contains("chosen #1: by round trip"), "{text}");
        assert!(
            text.contains("from aaaa: 200 bytes, ranges 0-199"),
            "{text}"
        );
        assert!(text.contains("failed: aaaa: stalled"), "{text}");
        assert!(text.contains("outcome: done"), "{text}");
        // Many ranges from one source stay bounded.
        for i in 0..10_000u64 {
            e.apply(&DownloadEvent::RangeDone {
                source: "cccc".into(),
                first: i * 10,
                end: i * 10 + 5,
            });
        }
        assert!(e.contributions[2].ranges.len() <= MAX_LISTED);
        // The event's JSON is tagged.
        let json = serde_json::to_string(&events[0]).unwrap();
        assert_eq!(json, r#"{"event":"started","url":"https://s/a"}"#);
    }
}
