//! Native messaging with the extension: 32-bit native-endian length + JSON, framed
//! with the `native_messaging` crate.
//!
//! - Frames above [`MAX_FRAME`] (64 KiB) are refused *before* allocating: the body
//!   is skipped in small reads, an `error` message goes back, and the session goes on.
//! - A malformed message gets an `error` reply; the host keeps running.
//! - stdout carries frames only (logs go to stderr); when the browser closes stdin
//!   the session ends and the host exits cleanly.
//! - Both directions go through bounded channels.

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use native_messaging::host::{NmError, decode_message_opt, send_json};
use peercache_core::PROTOCOL_VERSION;
use peercache_core::protocol::{FromHost, ToHost};

use crate::gateway::Enrolment;
use crate::node::Node;

/// Largest message accepted from the extension.
pub const MAX_FRAME: usize = 64 * 1024;
/// Depth of the inbound and outbound queues.
const QUEUE: usize = 64;

/// What the reader thread hands to the session.
#[derive(Debug)]
pub enum Inbound {
    /// A frame's text.
    Message(String),
    /// A frame that was refused, and why.
    Refused(String),
}

/// Reads frames until EOF, refusing oversized ones without allocating them.
pub fn read_frames<R: Read>(mut reader: R, tx: &tokio::sync::mpsc::Sender<Inbound>) {
    loop {
        let item = match decode_message_opt(&mut reader, MAX_FRAME) {
            Ok(Some(text)) => Inbound::Message(text),
            Ok(None) => return,
            Err(NmError::IncomingTooLarge { len, max }) => {
                let skipped =
                    std::io::copy(&mut (&mut reader).take(len as u64), &mut std::io::sink());
                if !matches!(skipped, Ok(n) if n == len as u64) {
                    return;
                }
                Inbound::Refused(format!(
                    "message of {len} bytes is over the {max}-byte limit"
                ))
            }
            Err(NmError::IncomingNotUtf8(_)) => Inbound::Refused("message is not UTF-8".into()),
            Err(_) => return,
        };
        if tx.blocking_send(item).is_err() {
            return;
        }
    }
}

fn status(node: &Node) -> FromHost {
    let (gateway_port, token) = node.gateway.clone().unwrap_or_default();
    FromHost::Status {
        gateway_port,
        token,
        peer_addr: node
            .router
            .as_ref()
            .map(|r| peercache_net::endpoint::dial_info(r.endpoint()).display())
            .unwrap_or_default(),
        peer_id: node.fetcher.parts().link.peer_id().to_string(),
        counters: node.counters.snapshot(),
        limits: peercache_core::protocol::HostLimits {
            max_uploads: node.workload.load().limit,
            upload_rate: node.workload.rate(),
            cache_max: node.fetcher.parts().cache.max_bytes(),
            cache_bytes: node.fetcher.parts().cache.total_bytes(),
        },
        peers: node.fetcher.parts().memory.recent_peers(),
        recent: node.fetcher.parts().recent.explanations(),
        doctor: verdicts(node),
    }
}

/// Which family of browser started this process: `Some(true)` Firefox,
/// `Some(false)` Chromium; set once by native mode.
static CALLER_IS_FIREFOX: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

/// Notes who started this host: `caller` is the first argument a browser passes
/// (a `chrome-extension://…/` origin, or Firefox's manifest path).
pub fn note_caller(caller: &str) {
    let _ = CALLER_IS_FIREFOX.set(!caller.starts_with("chrome-extension://"));
}

/// The doctor's verdicts for the popup: the browsers' registrations (looked at
/// once per session) and the servers' recent answers on reachability. A browser
/// of the family that started this session evidently found the host (from a
/// profile or place `doctor` cannot see), so its family's registration
/// failures are left out.
fn verdicts(node: &Node) -> Vec<peercache_core::doctor::Verdict> {
    static BROWSERS: std::sync::OnceLock<Vec<peercache_core::doctor::Verdict>> =
        std::sync::OnceLock::new();
    let caller_firefox = CALLER_IS_FIREFOX.get().copied();
    let mut all: Vec<peercache_core::doctor::Verdict> = BROWSERS
        .get_or_init(crate::doctor::browser_verdicts)
        .iter()
        .filter(|v| {
            let family = crate::install::Browser::ALL
                .iter()
                .find(|b| b.label() == v.topic)
                .map(|b| b.is_firefox_family());
            v.level == peercache_core::doctor::Level::Ok
                || caller_firefox.is_none()
                || family.is_some_and(|f| Some(f) != caller_firefox)
        })
        .cloned()
        .collect();
    let knowledge = &node.fetcher.parts().knowledge;
    let now = crate::doctor::now_secs();
    let fresh: Vec<String> = knowledge
        .reach_notes()
        .into_iter()
        .filter(|(_, n)| now.saturating_sub(n.at) <= 3 * crate::doctor::REACH_MAX_AGE.as_secs())
        .map(|(s, _)| s)
        .take(8)
        .collect();
    all.extend(crate::doctor::reach_verdicts(knowledge, &fresh));
    all
}

/// Asks each server this host registered with how it sees the host, soon after
/// registering and then every [`crate::doctor::REACH_MAX_AGE`], while `node` lives.
pub fn spawn_reach_checks(node: &Arc<Node>) {
    let weak = Arc::downgrade(node);
    tokio::spawn(async move {
        let mut checked: std::collections::HashMap<String, tokio::time::Instant> =
            std::collections::HashMap::new();
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            let Some(node) = weak.upgrade() else { break };
            let link = node.fetcher.parts().link.clone();
            for origin in link.registered_origins().await.into_iter().take(16) {
                let due = checked
                    .get(&origin)
                    .is_none_or(|t| t.elapsed() >= crate::doctor::REACH_MAX_AGE);
                if due {
                    checked.insert(origin.clone(), tokio::time::Instant::now());
                    if let Err(e) = link.reach(&origin).await {
                        tracing::info!(%origin, error = %e, "asking the server how it sees this host failed");
                    }
                }
            }
        }
    });
}

/// Handles one message; returns the replies.
pub async fn handle(node: &Node, text: &str) -> Vec<FromHost> {
    match serde_json::from_str::<ToHost>(text) {
        Ok(ToHost::Hello { version }) => {
            tracing::info!(extension = %version, "extension connected");
            vec![
                FromHost::Hello {
                    version: crate::VERSION.to_string(),
                    protocol: PROTOCOL_VERSION,
                },
                status(node),
            ]
        }
        Ok(ToHost::Config { enabled, sites }) => {
            if sites.len() > peercache_core::extension::MAX_SITES {
                return vec![FromHost::Error {
                    message: "too many sites".into(),
                }];
            }
            *node.enrolment.write().await = Enrolment { enabled, sites };
            vec![status(node)]
        }
        Ok(ToHost::Limits {
            max_uploads,
            upload_rate,
            cache_max,
        }) => {
            if max_uploads > peercache_core::extension::MAX_UPLOAD_SLOTS {
                return vec![FromHost::Error {
                    message: format!(
                        "max_uploads must be at most {}",
                        peercache_core::extension::MAX_UPLOAD_SLOTS
                    ),
                }];
            }
            node.workload.set(max_uploads, upload_rate);
            let cache = node.fetcher.parts().cache.clone();
            let dropped = tokio::task::spawn_blocking(move || cache.set_max_bytes(cache_max))
                .await
                .unwrap_or_default();
            node.fetcher.parts().link.announce_dropped(&dropped).await;
            tracing::info!(
                max_uploads,
                upload_rate,
                cache_max,
                evicted = dropped.len(),
                "limits applied"
            );
            vec![status(node)]
        }
        Ok(ToHost::GetStatus) => vec![status(node)],
        Ok(ToHost::DirectReady { url }) => {
            let woken = node.acks.release(&url);
            tracing::debug!(%url, woken, "the extension sends this URL to the site");
            Vec::new()
        }
        Err(e) => vec![FromHost::Error {
            message: format!("malformed message: {e}"),
        }],
    }
}

/// Runs a session over `reader`/`writer` (stdin/stdout in production) until the
/// reader reaches EOF.
pub async fn run_session<R, W>(node: Arc<Node>, reader: R, mut writer: W)
where
    R: Read + Send + 'static,
    W: Write + Send + 'static,
{
    let (in_tx, mut in_rx) = tokio::sync::mpsc::channel::<Inbound>(QUEUE);
    let (out_tx, out_rx) = std::sync::mpsc::sync_channel::<FromHost>(QUEUE);
    std::thread::spawn(move || read_frames(reader, &in_tx));
    let writer_thread = std::thread::spawn(move || {
        while let Ok(msg) = out_rx.recv() {
            if let Err(e) = send_json(&mut writer, &msg) {
                tracing::warn!(error = %e, "writing to the extension failed");
                return;
            }
        }
    });
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    let mut last_counters = node.counters.snapshot();
    let mut notices = node
        .notices
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    loop {
        tokio::select! {
            Some(notice) = async { match notices.as_mut() { Some(rx) => rx.recv().await, None => None } } => {
                if out_tx.try_send(notice).is_err() {
                    tracing::warn!("the extension is not reading; a notice was dropped");
                }
            }
            item = in_rx.recv() => {
                let replies = match item {
                    None => break,
                    Some(Inbound::Message(text)) => handle(&node, &text).await,
                    Some(Inbound::Refused(message)) => vec![FromHost::Error { message }],
                };
                for r in replies {
                    if out_tx.send(r).is_err() {
                        break;
                    }
                }
            }
            _ = tick.tick() => {
                let now = node.counters.snapshot();
                if now != last_counters {
                    last_counters = now;
                    let _ = out_tx.try_send(status(&node));
                }
            }
        }
    }
    drop(out_tx);
    let _ = tokio::task::spawn_blocking(move || writer_thread.join()).await;
    tracing::info!("extension closed the connection; exiting");
}

#[cfg(test)]
mod fuzz {
    //! The frame decoder against many random streams: it never panics, never
    //! allocates for a frame over the cap, and stays in step.

    use super::*;
    use proptest::prelude::*;

    fn frame(body: &[u8]) -> Vec<u8> {
        let mut f = (body.len() as u32).to_ne_bytes().to_vec();
        f.extend_from_slice(body);
        f
    }

    fn run(stream: Vec<u8>) -> Vec<Inbound> {
        let (tx, mut rx) = tokio::sync::mpsc::channel(1 << 16);
        read_frames(std::io::Cursor::new(stream), &tx);
        drop(tx);
        let mut out = Vec::new();
        while let Ok(x) = rx.try_recv() {
            out.push(x);
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 5000, ..ProptestConfig::default() })]

        /// Arbitrary bytes: no panic, and never more items than 4-byte headers.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let n = run(bytes.clone()).len();
            prop_assert!(n <= bytes.len() / 4 + 1);
        }

        /// Well-formed frames, some oversized, some not UTF-8: each gives exactly one
        /// item, in order, and the oversized ones are refused.
        #[test]
        fn framed_streams_stay_in_step(frames in proptest::collection::vec(
            prop_oneof![
                "[ -~]{0,200}".prop_map(|s| (s.into_bytes(), 0u8)),
                (MAX_FRAME + 1..MAX_FRAME + 5000).prop_map(|n| (vec![b'x'; n], 1u8)),
                Just((vec![0xff, 0xfe, 0xfd], 2u8)),
            ], 0..12)) {
            let stream: Vec<u8> = frames.iter().flat_map(|(b, _)| frame(b)).collect();
            let items = run(stream);
            prop_assert_eq!(items.len(), frames.len());
            for ((body, kind), item) in frames.iter().zip(items) {
                match (kind, item) {
                    (0, Inbound::Message(text)) => prop_assert_eq!(text.as_bytes(), &body[..]),
                    (1, Inbound::Refused(why)) => prop_assert!(why.contains("limit")),
                    (2, Inbound::Refused(why)) => prop_assert!(why.contains("UTF-8")),
                    (k, other) => prop_assert!(false, "kind {k} gave {other:?}"),
                }
            }
        }
    }

    #[test]
    fn a_huge_claimed_length_on_a_short_stream_ends_the_session_without_allocating() {
        let mut stream = u32::MAX.to_ne_bytes().to_vec();
        stream.extend_from_slice(b"short");
        assert!(run(stream).is_empty());
    }
}
