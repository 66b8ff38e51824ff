//! The LAN query (DESIGN M10): when the server is silent, a host asks its local
//! network over UDP multicast "who has the URL with this digest?" and hosts that
//! hold the object answer "I have it" (unicast, with their peer port and the
//! server's signed record, its URL left out: the requester fills it in). The
//! requester trusts only records signed with the pinned key and measures the
//! holders like any other.
//!
//! Privacy and abuse: no URL crosses the LAN in clear (the query carries
//! `peercache_core::peer::lan_digest`, the answer a record without its URL); the
//! responder answers only sources on one of this host's own subnets, at most
//! [`PER_SOURCE_PER_SECOND`] a second per source and [`TOTAL_PER_SECOND`] in
//! all, and never with a datagram larger than the query (queries are padded to
//! `peercache_core::peer::LAN_QUERY_SIZE`).
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

/// Replies to one source per second, at most.
pub const PER_SOURCE_PER_SECOND: u32 = 8;
/// Replies per second in all, at most.
pub const TOTAL_PER_SECOND: u32 = 64;
/// Sources tracked for the rate limit (the table is cleared when full).
const MAX_SOURCES: usize = 1024;

/// The two messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum LanMessage {
    /// Who holds the object at the URL whose `lan_digest` is `d`?
    WhoHas {
        /// The URL's digest (`peercache_core::peer::lan_digest`), hex.
        d: String,
        /// Query id (replies carry it back).
        qid: String,
        /// Padding up to `LAN_QUERY_SIZE` (room for the reply).
        #[serde(default)]
        pad: String,
    },
    /// I do: dial my key at the datagram's source address, UDP `port`.
    IHave {
        /// The query id.
        qid: String,
        /// The holder's peer id.
        id: String,
        /// Its peer endpoint's UDP port on the address the datagram came from.
        port: u16,
        /// The server's signed record it keeps, its URL left empty.
        record: Option<SignedRecord>,
    },
}

/// The who-has for `url`, padded to `LAN_QUERY_SIZE`.
pub fn who_has(url: &str, qid: &str) -> Vec<u8> {
    let mut msg = LanMessage::WhoHas {
        d: peercache_core::peer::lan_digest(url),
        qid: qid.to_string(),
        pad: String::new(),
    };
    let len = serde_json::to_vec(&msg).map(|b| b.len()).unwrap_or(0);
    if let LanMessage::WhoHas { pad, .. } = &mut msg {
        *pad = "-".repeat(peercache_core::peer::LAN_QUERY_SIZE.saturating_sub(len));
    }
    serde_json::to_vec(&msg).unwrap_or_default()
}

/// The IPv4 subnets of this host's interfaces (address, prefix length), at most 256.
fn local_subnets() -> Vec<(Ipv4Addr, u32)> {
    let Ok(interfaces) = if_addrs::get_if_addrs() else {
        return Vec::new();
    };
    interfaces
        .into_iter()
        .filter_map(|i| match i.addr {
            if_addrs::IfAddr::V4(v4) => Some((v4.ip, u32::from(v4.prefixlen))),
            if_addrs::IfAddr::V6(_) => None,
        })
        .take(256)
        .collect()
}

/// Whether `ip` is on one of `subnets`.
fn on_link(ip: std::net::IpAddr, subnets: &[(Ipv4Addr, u32)]) -> bool {
    let std::net::IpAddr::V4(ip) = ip else {
        return false;
    };
    // A sender on this host with no source address yet (a reply to it stays
    // on this host).
    if ip.is_unspecified() {
        return true;
    }
    subnets.iter().any(|(net, prefix)| {
        let mask = if *prefix == 0 {
            0
        } else {
            u32::MAX << (32 - prefix.min(&32))
        };
        u32::from(ip) & mask == u32::from(*net) & mask
    })
}

/// Per-second reply counts, per source and in all.
#[derive(Debug, Default)]
struct RateLimit {
    second: Option<std::time::Instant>,
    total: u32,
    per_source: std::collections::HashMap<std::net::IpAddr, u32>,
}

impl RateLimit {
    fn allow(&mut self, from: std::net::IpAddr) -> bool {
        let now = std::time::Instant::now();
        if self
            .second
            .is_none_or(|s| now.duration_since(s) >= Duration::from_secs(1))
        {
            self.second = Some(now);
            self.total = 0;
            self.per_source.clear();
        }
        if self.total >= TOTAL_PER_SECOND {
            return false;
        }
        if self.per_source.len() >= MAX_SOURCES && !self.per_source.contains_key(&from) {
            return false;
        }
        let n = self.per_source.entry(from).or_default();
        if *n >= PER_SOURCE_PER_SECOND {
            return false;
        }
        *n += 1;
        self.total += 1;
        true
    }
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
    // Several hosts on one machine share the group port (on Windows
    // SO_REUSEADDR alone allows that; SO_REUSEPORT does not exist there).
    socket.set_reuse_address(true)?;
    #[cfg(unix)]
    socket.set_reuse_port(true)?;
    socket.bind(&SocketAddr::from(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, PORT)).into())?;
    socket.join_multicast_v4(&GROUP, &iface())?;
    socket.set_nonblocking(true)?;
    let udp = tokio::net::UdpSocket::from_std(socket.into())?;
    tokio::spawn(async move {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let mut limit = RateLimit::default();
        let mut subnets = local_subnets();
        let mut subnets_at = std::time::Instant::now();
        loop {
            let Ok((n, from)) = udp.recv_from(&mut buf).await else {
                continue;
            };
            if subnets_at.elapsed() >= Duration::from_secs(30) {
                subnets = local_subnets();
                subnets_at = std::time::Instant::now();
            }
            if !on_link(from.ip(), &subnets) {
                metrics::counter!("peercache_lan_off_link_total").increment(1);
                continue;
            }
            let Ok(LanMessage::WhoHas { d, qid, .. }) = serde_json::from_slice(&buf[..n]) else {
                continue;
            };
            if d.len() != 64 || qid.len() > 64 {
                continue;
            }
            if !limit.allow(from.ip()) {
                metrics::counter!("peercache_lan_rate_limited_total").increment(1);
                continue;
            }
            let Some(mut record) = knowledge.record_for_digest(&d) else {
                continue;
            };
            if !cache.contains(&record.record.hash) {
                continue;
            }
            // The requester knows the URL; it is not sent back.
            record.record.url = String::new();
            let mut reply = LanMessage::IHave {
                qid,
                id: peer_id.clone(),
                port: peer_port,
                record: Some(record),
            };
            let mut bytes = serde_json::to_vec(&reply).unwrap_or_default();
            if bytes.len() > n {
                // Never larger than the query: without the record, if that fits.
                if let LanMessage::IHave { record, .. } = &mut reply {
                    *record = None;
                }
                bytes = serde_json::to_vec(&reply).unwrap_or_default();
            }
            if !bytes.is_empty() && bytes.len() <= n {
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
        let ask = who_has(url, &qid);
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
                // The record comes without its URL: it is the one asked for
                // (the signature covers it, so another URL's record fails).
                let record = record.map(|mut r| {
                    if r.record.url.is_empty() {
                        r.record.url = url.to_string();
                    }
                    r
                });
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
        let bytes = who_has("https://s/a", "q");
        assert_eq!(bytes.len(), peercache_core::peer::LAN_QUERY_SIZE, "padded");
        let json = String::from_utf8(bytes.clone()).unwrap();
        assert!(json.contains("\"t\":\"who_has\""));
        assert!(!json.contains("https://s/a"), "no URL in clear");
        let LanMessage::WhoHas { d, qid, .. } = serde_json::from_slice(&bytes).unwrap() else {
            panic!("not a who-has");
        };
        assert_eq!(
            (d, qid.as_str()),
            (peercache_core::peer::lan_digest("https://s/a"), "q")
        );
        assert!(serde_json::from_slice::<LanMessage>(b"\xff\x00garbage").is_err());
    }

    #[test]
    fn only_the_local_link_and_at_a_bounded_rate() {
        let subnets = [
            (Ipv4Addr::new(192, 168, 1, 7), 24),
            (Ipv4Addr::LOCALHOST, 8),
        ];
        assert!(on_link("192.168.1.200".parse().unwrap(), &subnets));
        assert!(on_link("127.0.0.2".parse().unwrap(), &subnets));
        assert!(!on_link("192.168.2.1".parse().unwrap(), &subnets));
        assert!(!on_link("8.8.8.8".parse().unwrap(), &subnets));
        let mut limit = RateLimit::default();
        let a = "192.168.1.2".parse().unwrap();
        let allowed = (0..100).filter(|_| limit.allow(a)).count();
        assert_eq!(allowed, PER_SOURCE_PER_SECOND as usize);
        let total = (0..200u8)
            .filter(|i| limit.allow(std::net::IpAddr::from([10, 0, 0, *i])))
            .count();
        assert_eq!(total + allowed, TOTAL_PER_SECOND as usize);
    }
}
