//! The LAN query (DESIGN M10): when the server is silent, a host asks its local
//! network over UDP multicast "who has `<url>`?" and hosts that hold the object
//! answer "I have it" (unicast, with their peer port and the server's signed
//! record). The requester trusts only records signed with the pinned key and
//! measures the holders like any other.
//!
//! Group `239.255.77.77:47777`; `PEERCACHE_LAN=off` disables it,
//! `PEERCACHE_LAN_IFACE` picks the interface address (default: any).

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use peercache_core::protocol::Proxy;
use peercache_core::record::SignedRecord;
use serde::{Deserialize, Serialize};
use socket2::{Domain, Protocol, Socket, Type};

use crate::cache::Cache;
use crate::knowledge::Knowledge;

/// The multicast group.
pub const GROUP: Ipv4Addr = Ipv4Addr::new(239, 255, 77, 77);
/// The port.
pub const PORT: u16 = 47777;
/// Largest datagram read.
const MAX_DATAGRAM: usize = 8 * 1024;

/// The two messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum LanMessage {
    /// Who holds the object at `url`?
    WhoHas {
        /// The URL.
        url: String,
        /// Query id (replies carry it back).
        qid: String,
    },
    /// I do: dial my key at the datagram's source address, UDP `port`.
    IHave {
        /// The query id.
        qid: String,
        /// The holder's peer id.
        id: String,
        /// Its peer endpoint's UDP port on the address the datagram came from.
        port: u16,
        /// The server's signed record it keeps.
        record: Option<SignedRecord>,
    },
}

/// True unless `PEERCACHE_LAN=off`.
pub fn enabled() -> bool {
    std::env::var("PEERCACHE_LAN").map_or(true, |v| v != "off")
}

fn iface() -> Ipv4Addr {
    std::env::var("PEERCACHE_LAN_IFACE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(Ipv4Addr::UNSPECIFIED)
}

/// Answers who-has queries for what this host (`peer_id`) holds in `cache`,
/// with the records in `knowledge`.
pub fn spawn_responder(
    knowledge: Arc<Knowledge>,
    cache: Cache,
    peer_id: String,
    peer_port: u16,
) -> std::io::Result<()> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&SocketAddr::from(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, PORT)).into())?;
    socket.join_multicast_v4(&GROUP, &iface())?;
    socket.set_nonblocking(true)?;
    let udp = tokio::net::UdpSocket::from_std(socket.into())?;
    tokio::spawn(async move {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            let Ok((n, from)) = udp.recv_from(&mut buf).await else {
                continue;
            };
            let Ok(LanMessage::WhoHas { url, qid }) = serde_json::from_slice(&buf[..n]) else {
                continue;
            };
            if url.len() > 4096 || qid.len() > 64 {
                continue;
            }
            let Some(record) = knowledge.record_for(&url) else {
                continue;
            };
            if !cache.contains(&record.record.hash) {
                continue;
            }
            let reply = LanMessage::IHave {
                qid,
                id: peer_id.clone(),
                port: peer_port,
                record: Some(record),
            };
            if let Ok(bytes) = serde_json::to_vec(&reply) {
                let _ = udp.send_to(&bytes, from).await;
            }
        }
    });
    Ok(())
}

/// Asks the LAN who holds `url`; collects answers for `wait`.
pub async fn query(url: &str, wait: Duration) -> Vec<(Proxy, Option<SignedRecord>)> {
    let run = async {
        let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
        socket.set_multicast_if_v4(&iface())?;
        socket.set_multicast_loop_v4(true)?;
        socket.bind(&SocketAddr::from(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)).into())?;
        socket.set_nonblocking(true)?;
        let udp = tokio::net::UdpSocket::from_std(socket.into())?;
        let qid = format!("{:016x}", rand::random::<u64>());
        let ask = serde_json::to_vec(&LanMessage::WhoHas {
            url: url.to_string(),
            qid: qid.clone(),
        })
        .map_err(std::io::Error::other)?;
        udp.send_to(&ask, SocketAddrV4::new(GROUP, PORT)).await?;
        let mut found = Vec::new();
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let deadline = tokio::time::Instant::now() + wait;
        while let Ok(Ok((n, from))) =
            tokio::time::timeout_at(deadline, udp.recv_from(&mut buf)).await
        {
            if let Ok(LanMessage::IHave {
                qid: q,
                id,
                port,
                record,
            }) = serde_json::from_slice(&buf[..n])
                && q == qid
                && port != 0
                && found.len() < 32
            {
                // Dialed at the address the answer came from, by its key.
                let addr = peercache_core::peer::DialInfo {
                    relay: None,
                    direct: vec![SocketAddr::new(from.ip(), port)],
                }
                .to_dial_string();
                if !peercache_core::auth::is_peer_key(&id) {
                    continue;
                }
                found.push((
                    Proxy {
                        id,
                        addr,
                        direct: Some(true),
                        rtt_ms: None,
                        load: None,
                    },
                    record,
                ));
            }
        }
        Ok::<_, std::io::Error>(found)
    };
    match run.await {
        Ok(found) => found,
        Err(e) => {
            tracing::info!(error = %e, "LAN query failed");
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_garbage_is_rejected() {
        let m = LanMessage::WhoHas {
            url: "https://s/a".into(),
            qid: "q".into(),
        };
        let json = serde_json::to_string(&m).unwrap();
        assert!(json.contains("\"t\":\"who_has\""));
        assert_eq!(serde_json::from_str::<LanMessage>(&json).unwrap(), m);
        assert!(serde_json::from_slice::<LanMessage>(b"\xff\x00garbage").is_err());
    }
}
