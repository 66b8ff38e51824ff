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
            .peer_addr
            .map(|a| format!("http://{a}"))
            .unwrap_or_default(),
        peer_id: node.client.peer_id().to_string(),
        counters: node.counters.snapshot(),
    }
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
        Ok(ToHost::GetStatus) => vec![status(node)],
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
    loop {
        tokio::select! {
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
