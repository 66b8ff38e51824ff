//! The popup's "Why" section: each recent download told in a few short lines.
//!
//! [`WhyView::of`] turns a host's [`Explanation`] into text the popup shows as
//! is; the popup only picks the rows of the active tab's site (by `site`).

use peercache_core::explain::Explanation;
use peercache_core::extension::origin_of;
use peercache_core::protocol::SERVER_PROXY_ID;
use serde::Serialize;

/// One recent download as the popup shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WhyView {
    /// The origin the file belongs to (the popup filters on it).
    pub site: String,
    /// The full URL (a tooltip).
    pub url: String,
    /// The file name (last path segment).
    pub file: String,
    /// How it came: `server`, `peers`, `cache`.
    pub came: &'static str,
    /// The same in words, with the outcome if it failed.
    pub how: String,
    /// The server's reason in words.
    pub reason: String,
    /// The order sources were tried in, each with its round trip.
    pub order: Vec<String>,
    /// Verified bytes per source.
    pub bytes: Vec<String>,
}

/// A peer id short enough for the popup; the server's entry in words.
fn source_name(id: &str) -> String {
    if id == SERVER_PROXY_ID {
        "the site".to_string()
    } else {
        let short: String = id.chars().take(8).collect();
        if short.len() < id.len() {
            format!("peer\u{a0}{short}…")
        } else {
            format!("peer\u{a0}{short}")
        }
    }
}

/// Bytes for people (B, KiB, MiB, GiB), one decimal above bytes; a no-break
/// space keeps the number with its unit when the popup wraps a line.
pub fn bytes_text(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    if n < 1024 {
        return format!("{n}\u{a0}B");
    }
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    format!("{v:.1}\u{a0}{}", UNITS[i])
}

/// A duration for people: milliseconds below a second, else seconds.
fn ms_text(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms}\u{a0}ms")
    } else {
        format!("{:.1}\u{a0}s", ms as f64 / 1000.0)
    }
}

/// The last path segment of `url` (no query or fragment); the path if it has none.
fn file_name(url: &str) -> String {
    let no_query = url.split(['?', '#']).next().unwrap_or(url);
    let path = no_query.split_once("://").map_or(no_query, |(_, rest)| {
        rest.find('/').map_or("/", |i| &rest[i..])
    });
    match path.rsplit('/').find(|s| !s.is_empty()) {
        Some(name) => name.to_string(),
        None => path.to_string(),
    }
}

impl WhyView {
    /// The popup's lines for one explanation.
    pub fn of(e: &Explanation) -> WhyView {
        let (came, mut how) = match e.path.as_str() {
            "cache" => ("cache", "from your own cache (checked again)".to_string()),
            "server" => ("server", "from the site".to_string()),
            "referred" => ("peers", "from peers, on the site's referral".to_string()),
            "server-silent" => (
                "peers",
                "from peers found without the site (it did not answer)".to_string(),
            ),
            _ => ("server", "not known yet".to_string()),
        };
        if e.deferred_s > 0 {
            how.push_str(&format!(", after waiting {} s", e.deferred_s));
        }
        if e.outcome.starts_with("failed") {
            how.push_str(&format!(" — {}", e.outcome));
        } else if e.outcome.is_empty() {
            how.push_str(" (still running)");
        }
        let reason = match (&e.decision, e.path.as_str()) {
            (Some(d), _) => format!(
                "{} ({} by the site vs {} wanted)",
                d.reason.describe(),
                ms_text(d.estimate_ms),
                ms_text(d.target_ms)
            ),
            (None, "cache") => "the site was not asked".to_string(),
            (None, "server-silent") => "the site did not answer".to_string(),
            (None, _) => "the site gave no reason".to_string(),
        };
        let order = e
            .order
            .iter()
            .map(|id| {
                let rtt = e
                    .candidates
                    .iter()
                    .find(|c| c.id == *id)
                    .and_then(|c| c.rtt_ms);
                match rtt {
                    Some(ms) => format!("{} {}", source_name(id), ms_text(u64::from(ms))),
                    None => source_name(id),
                }
            })
            .collect();
        let bytes = e
            .contributions
            .iter()
            .map(|c| format!("{} {}", source_name(&c.source), bytes_text(c.bytes)))
            .collect();
        WhyView {
            site: origin_of(&e.url).unwrap_or_default(),
            url: e.url.clone(),
            file: file_name(&e.url),
            came,
            how,
            reason,
            order,
            bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use peercache_core::decide::{Explained, Inputs, Reason, Verdict};
    use peercache_core::explain::{Candidate, Contribution};

    fn candidate(id: &str, rtt_ms: Option<u32>) -> Candidate {
        Candidate {
            id: id.into(),
            addr: String::new(),
            listed: 0,
            rtt_ms,
            throughput: None,
            load: None,
            direct: Some(true),
        }
    }

    #[test]
    fn a_referred_download_reads_as_peers_with_the_reason_order_and_bytes() {
        let e = Explanation {
            url: "https://S.example:8443/static/big.bin?v=2#x".into(),
            path: "referred".into(),
            decision: Some(Explained {
                inputs: Inputs::default(),
                estimate_ms: 9000,
                target_ms: 2000,
                verdict: Verdict::Refer,
                reason: Reason::OverTargetWithHolders,
            }),
            candidates: vec![
                candidate("0123456789abcdef", Some(3)),
                candidate("fedcba9876543210", None),
            ],
            order: vec!["0123456789abcdef".into(), "server".into()],
            contributions: vec![
                Contribution {
                    source: "0123456789abcdef".into(),
                    bytes: 3 << 20,
                    ranges: vec![(0, 3 << 20)],
                },
                Contribution {
                    source: "server".into(),
                    bytes: 512,
                    ranges: vec![(3 << 20, (3 << 20) + 512)],
                },
            ],
            verified: true,
            outcome: "done".into(),
            ..Explanation::default()
        };
        let w = WhyView::of(&e);
        assert_eq!(w.site, "https://s.example:8443");
        assert_eq!(w.file, "big.bin");
        assert_eq!(w.came, "peers");
        assert_eq!(w.how, "from peers, on the site's referral");
        assert_eq!(
            w.reason,
            "the server cannot send it within the target period and peers hold it (9.0\u{a0}s by the site vs 2.0\u{a0}s wanted)"
        );
        assert_eq!(w.order, vec!["peer\u{a0}01234567… 3\u{a0}ms", "the site"]);
        assert_eq!(
            w.bytes,
            vec!["peer\u{a0}01234567… 3.0\u{a0}MiB", "the site 512\u{a0}B"]
        );
    }

    #[test]
    fn cache_server_and_failed_downloads_say_so() {
        let cache = WhyView::of(&Explanation {
            url: "https://s.example/".into(),
            path: "cache".into(),
            outcome: "done".into(),
            ..Explanation::default()
        });
        assert_eq!(cache.came, "cache");
        assert_eq!(cache.file, "/");
        assert_eq!(cache.reason, "the site was not asked");
        let failed = WhyView::of(&Explanation {
            url: "https://s.example/a/b.js".into(),
            path: "server".into(),
            deferred_s: 4,
            outcome: "failed: every source failed".into(),
            ..Explanation::default()
        });
        assert_eq!(failed.came, "server");
        assert_eq!(failed.file, "b.js");
        assert_eq!(
            failed.how,
            "from the site, after waiting 4 s — failed: every source failed"
        );
        assert_eq!(failed.reason, "the site gave no reason");
        assert!(failed.order.is_empty() && failed.bytes.is_empty());
        let running = WhyView::of(&Explanation {
            url: "https://s.example/x".into(),
            path: "server-silent".into(),
            ..Explanation::default()
        });
        assert_eq!(running.came, "peers");
        assert!(running.how.ends_with("(still running)"), "{}", running.how);
    }

    #[test]
    fn bytes_read_in_units() {
        assert_eq!(bytes_text(0), "0\u{a0}B");
        assert_eq!(bytes_text(1023), "1023\u{a0}B");
        assert_eq!(bytes_text(1536), "1.5\u{a0}KiB");
        assert_eq!(bytes_text(5 << 30), "5.0\u{a0}GiB");
    }
}
