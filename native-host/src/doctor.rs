//! The facts `peercache-host doctor` and the popup judge (the verdicts and their
//! words are `peercache_core::doctor`'s): each installed browser's registration,
//! whether a browser's extension has the host running, and how each server sees
//! this host.
//!
//! A host started by a browser leaves `session.json` in the data directory (when
//! it started, its gateway's port); `doctor`, a separate process, reads it and
//! knocks on that port to tell whether the host still runs.

use std::path::Path;
use std::time::Duration;

use peercache_core::doctor::{self, RegistrationFact, Verdict};

use crate::install;

/// The file a browser-started host leaves in the data directory.
const SESSION_FILE: &str = "session.json";
/// A reach answer older than this is checked again.
pub const REACH_MAX_AGE: Duration = Duration::from_secs(10 * 60);

/// What a browser-started host notes about itself.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Session {
    /// When it started (seconds since the Unix epoch).
    pub started: u64,
    /// Its gateway's port on 127.0.0.1.
    pub gateway_port: u16,
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Notes that a browser started this host, with its gateway on `gateway_port`.
pub fn note_session(data_dir: &Path, gateway_port: u16) -> std::io::Result<()> {
    std::fs::create_dir_all(data_dir)?;
    let session = Session {
        started: now_secs(),
        gateway_port,
    };
    crate::cache::write_atomically(
        &data_dir.join(SESSION_FILE),
        &serde_json::to_vec(&session).unwrap_or_default(),
    )
}

/// The last session a browser started, if any.
pub fn last_session(data_dir: &Path) -> Option<Session> {
    let bytes = std::fs::read(data_dir.join(SESSION_FILE)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Whether something answers on `127.0.0.1:port` (the host's gateway).
pub async fn gateway_answers(port: u16) -> bool {
    if port == 0 {
        return false;
    }
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    matches!(
        tokio::time::timeout(
            Duration::from_millis(800),
            tokio::net::TcpStream::connect(addr)
        )
        .await,
        Ok(Ok(_))
    )
}

/// A verdict on each supported browser found on this machine (none found is a
/// verdict too).
pub fn browser_verdicts() -> Vec<Verdict> {
    let found = install::detect();
    if found.is_empty() {
        return vec![Verdict {
            topic: "browsers".into(),
            level: doctor::Level::Fail,
            finding: "none of the supported browsers was found (Chrome, Chromium, Edge, Brave, \
                      Vivaldi, Firefox, LibreWolf)"
                .into(),
            fix: "install one, or register by name: `peercache-host install --browser NAME`".into(),
        }];
    }
    found
        .iter()
        .map(|f| {
            let fact = match install::sandbox_advice(f) {
                Some(advice) => RegistrationFact::Sandboxed(advice),
                None => match install::registration(f.browser) {
                    install::Registration::Ok(p) => {
                        RegistrationFact::Registered(p.display().to_string())
                    }
                    install::Registration::Missing => RegistrationFact::Missing,
                    install::Registration::Broken(p, why) => {
                        RegistrationFact::Broken(p.display().to_string(), why)
                    }
                },
            };
            doctor::registration(f.browser.label(), &fact)
        })
        .collect()
}

/// Reach verdicts from the answers kept in `knowledge` for `servers`.
pub fn reach_verdicts(knowledge: &crate::knowledge::Knowledge, servers: &[String]) -> Vec<Verdict> {
    let notes = knowledge.reach_notes();
    servers
        .iter()
        .filter_map(|s| notes.get(s).map(|n| doctor::reach(s, &n.answer)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_noted_and_read_back() {
        let dir = std::env::temp_dir().join(format!("pc-session-{}", rand::random::<u64>()));
        assert_eq!(last_session(&dir), None);
        note_session(&dir, 4242).unwrap();
        let s = last_session(&dir).unwrap();
        assert_eq!(s.gateway_port, 4242);
        assert!(now_secs() - s.started < 60);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn a_closed_port_does_not_answer() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        assert!(gateway_answers(port).await);
        drop(l);
        assert!(!gateway_answers(port).await);
        assert!(!gateway_answers(0).await);
    }
}
