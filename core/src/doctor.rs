//! The verdicts `peercache-host doctor` prints and the popup shows, from facts
//! gathered elsewhere: is the host registered with a browser, is the extension
//! connected, can other peers reach this one directly (as the server sees it).
//! Each verdict says in plain words what is wrong and what to do about it. Pure
//! logic, shared by the host and the extension (wasm).

use serde::{Deserialize, Serialize};

/// `POST /v1/reach`: a registered host asks how the server sees it (signed, like
/// a registration). The server dials it now, by key, as it would for a ping.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReachRequest {
    /// The asking host's id.
    pub peer_id: String,
}

/// Answer to [`ReachRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReachResponse {
    /// The address the server gives other peers for this host; `None` when it
    /// is not listed as serving (not registered, or it registered as a client only).
    pub addr: Option<String>,
    /// Whether the host answered the server's ping.
    pub answered: bool,
    /// Whether the connection went direct (not only through the relay).
    pub direct: bool,
    /// The ping's round trip.
    pub rtt_ms: Option<u32>,
}

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    /// All is well.
    Ok,
    /// Works, but not as well as it could.
    Warn,
    /// Does not work.
    Fail,
}

/// One line of the doctor's report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    /// What was checked, e.g. "Chromium" or "reachable from `https://example.org`".
    pub topic: String,
    /// How it came out.
    pub level: Level,
    /// What was found, in plain words.
    pub finding: String,
    /// What to do about it (empty when nothing needs doing).
    pub fix: String,
}

impl Verdict {
    fn new(topic: &str, level: Level, finding: String, fix: &str) -> Self {
        Self {
            topic: topic.to_string(),
            level,
            finding,
            fix: fix.to_string(),
        }
    }

    /// The verdict as text lines for a terminal.
    pub fn render(&self) -> String {
        let mark = match self.level {
            Level::Ok => "ok  ",
            Level::Warn => "warn",
            Level::Fail => "FAIL",
        };
        let mut s = format!("[{mark}] {}: {}\n", self.topic, self.finding);
        if !self.fix.is_empty() {
            s.push_str(&format!("       fix: {}\n", self.fix));
        }
        s
    }
}

/// A browser's registration as found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistrationFact {
    /// Registered (the manifest's path).
    Registered(String),
    /// No manifest.
    Missing,
    /// A manifest that will not work, and why.
    Broken(String, String),
    /// The browser is a Snap or Flatpak; the advice to give.
    Sandboxed(String),
}

/// The verdict on one installed browser's registration.
pub fn registration(browser: &str, fact: &RegistrationFact) -> Verdict {
    match fact {
        RegistrationFact::Registered(path) => Verdict::new(
            browser,
            Level::Ok,
            format!("the host is registered ({path})"),
            "",
        ),
        RegistrationFact::Missing => Verdict::new(
            browser,
            Level::Fail,
            "the host is not registered, so the extension cannot start it".into(),
            "run `peercache-host install` (or install the peercache package)",
        ),
        RegistrationFact::Broken(path, why) => Verdict::new(
            browser,
            Level::Fail,
            format!("the registration at {path} will not work: {why}"),
            "run `peercache-host install` again to rewrite it",
        ),
        RegistrationFact::Sandboxed(advice) => {
            Verdict::new(browser, Level::Warn, advice.clone(), "")
        }
    }
}

/// The verdict on whether the extension talks to the host: `last_start` is how
/// many seconds ago a browser last started the host (if ever), `running` whether
/// that host still answers.
pub fn extension(last_start_secs_ago: Option<u64>, running: bool) -> Verdict {
    const TOPIC: &str = "extension";
    match (last_start_secs_ago, running) {
        (_, true) => Verdict::new(
            TOPIC,
            Level::Ok,
            "the extension is connected to the host now".into(),
            "",
        ),
        (None, false) => Verdict::new(
            TOPIC,
            Level::Fail,
            "no browser has ever started the host".into(),
            "add the peercache extension to your browser (and check the registration above); \
             then open its popup once",
        ),
        (Some(ago), false) => Verdict::new(
            TOPIC,
            Level::Warn,
            format!(
                "the extension started the host {} ago, but it is not running now",
                crate::units::format_secs(ago)
            ),
            "open the browser; if the popup says the host is missing, restart the browser",
        ),
    }
}

/// The verdict on how `server` sees this host: `Ok(answer)` from
/// `POST /v1/reach`, `Err(message)` when the server could not be asked.
pub fn reach(server: &str, answer: &Result<ReachResponse, String>) -> Verdict {
    let topic = format!("reachable by peers of {server}");
    match answer {
        Err(e) => Verdict::new(
            &topic,
            Level::Fail,
            format!("the server could not be asked: {e}"),
            "check the address and your connection; a site you visit over https needs https:// here",
        ),
        Ok(r) if r.addr.is_none() => Verdict::new(
            &topic,
            Level::Warn,
            "the server does not list this host as a peer: it downloads, but serves nobody".into(),
            "keep the browser open on the site for a moment so the host registers, then check again",
        ),
        Ok(r) if !r.answered => Verdict::new(
            &topic,
            Level::Fail,
            "the server could not reach this host: other peers cannot either".into(),
            "allow peercache-host through your firewall (outgoing UDP); on a company network, \
             ask whether UDP is blocked",
        ),
        Ok(r) if !r.direct => Verdict::new(
            &topic,
            Level::Warn,
            format!(
                "reachable only through the site's relay{}: you help less, and relayed bytes \
                 still cost the site",
                r.rtt_ms.map(|ms| format!(" ({ms} ms)")).unwrap_or_default()
            ),
            "your router blocks direct connections (a strict NAT): enable UPnP or NAT-PMP on it, \
             or forward a UDP port and start the host with PEERCACHE_PEER_LISTEN=0.0.0.0:PORT",
        ),
        Ok(r) => Verdict::new(
            &topic,
            Level::Ok,
            format!(
                "other peers reach this host directly{}",
                r.rtt_ms
                    .map(|ms| format!(" ({ms} ms from the server)"))
                    .unwrap_or_default()
            ),
            "",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(addr: bool, answered: bool, direct: bool) -> Result<ReachResponse, String> {
        Ok(ReachResponse {
            addr: addr.then(|| "peer:abc".to_string()),
            answered,
            direct,
            rtt_ms: Some(12),
        })
    }

    #[test]
    fn each_failure_comes_with_a_fix() {
        let verdicts = [
            registration("Chromium", &RegistrationFact::Missing),
            registration(
                "Chromium",
                &RegistrationFact::Broken("/x".into(), "gone".into()),
            ),
            extension(None, false),
            extension(Some(90), false),
            reach("https://s", &Err("connection refused".into())),
            reach("https://s", &answer(true, false, false)),
            reach("https://s", &answer(true, true, false)),
            reach("https://s", &answer(false, false, false)),
        ];
        for v in verdicts {
            assert_ne!(v.level, Level::Ok, "{v:?}");
            assert!(!v.fix.is_empty(), "{v:?}");
        }
        let ok = reach("https://s", &answer(true, true, true));
        assert_eq!(ok.level, Level::Ok);
        assert!(ok.finding.contains("12 ms"));
        assert!(extension(Some(90), false).finding.contains("1 min"));
        assert_eq!(extension(None, true).level, Level::Ok);
    }
}
