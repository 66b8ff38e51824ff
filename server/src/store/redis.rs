//! The Redis backend of the look-up table (B4): several server replicas share it.
//!
//! Keys (prefix `pc:` by default):
//! - `peer:{id}` hash: `ip addr seen active limit pending rtt fails strikes
//!   pending_at direct recent`
//!   (expires at twice the TTL, refreshed by registrations and announces);
//! - `held:{id}` set of hashes it holds; `fetched:{id}` set of hashes it fetched
//!   through a server (expires after a day);
//! - `holders:{hash}` sorted set of peer ids scored by served reports (M9);
//! - `offer:{client}:{hash}` set of peer ids a client was referred to (expires
//!   after [`OFFER_TTL_MS`]); a report takes its member out;
//! - `peers`, `objects`, `delisted`: sets for the pinger, counts and bans;
//! - `signing-key`: the record-signing secret (hex) all replicas use, set by
//!   the first to start (or by one whose key was rotated from it);
//! - `signing-rotations`: the rotation statements that led to it (JSON).
//!
//! Every call has a short response timeout; a failure is reported as
//! [`StoreError::Unavailable`] so the server can serve directly instead.

use std::net::IpAddr;
use std::time::Duration;

use peercache_core::hash::ObjectHash;
use peercache_core::protocol::{Load, Outcome, Report};
use peercache_core::select::HolderStats;
use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::rules::{
    bookings_faded, holdings_room, is_delisted, is_expired, is_live, pending_now,
    ping_failures_drop, smooth_rtt,
};
use super::{OFFER_TTL_MS, PeerRow, StoreError, StoreLimits, TableStats};

/// Most holders read for one referral.
const MAX_HOLDERS_READ: isize = 256;
/// Most peers scanned by the pinger, expiry and stats.
const MAX_PEERS_SCANNED: usize = 100_000;
const FETCHED_TTL_MS: i64 = 24 * 3600 * 1000;

/// The Redis table.
#[derive(Clone)]
pub struct RedisStore {
    conn: ConnectionManager,
    prefix: String,
    limits: StoreLimits,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .finish()
    }
}

fn unavailable(e: redis::RedisError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// One peer's hash fields, parsed.
#[derive(Debug, Default, Clone)]
struct PeerFields {
    addr: Option<String>,
    seen: Option<u64>,
    load: Option<Load>,
    pending: u32,
    pending_at: u64,
    recent: u32,
    rtt: Option<u32>,
    strikes: u32,
    direct: Option<bool>,
}

const FIELDS: [&str; 12] = [
    "ip",
    "addr",
    "seen",
    "active",
    "limit",
    "pending",
    "rtt",
    "fails",
    "strikes",
    "pending_at",
    "direct",
    "recent",
];

fn parse_fields(v: Vec<Option<String>>) -> PeerFields {
    let num = |i: usize| {
        v.get(i)
            .cloned()
            .flatten()
            .and_then(|s| s.parse::<i64>().ok())
    };
    let load = match (num(3), num(4)) {
        (Some(a), Some(l)) if a >= 0 && l >= 0 => Some(Load {
            active: a as u32,
            limit: l as u32,
        }),
        _ => None,
    };
    PeerFields {
        addr: v.get(1).cloned().flatten().filter(|s| !s.is_empty()),
        seen: num(2).map(|s| s.max(0) as u64),
        load,
        pending: num(5).unwrap_or(0).max(0) as u32,
        pending_at: num(9).unwrap_or(0).max(0) as u64,
        rtt: num(6).filter(|r| *r >= 0).map(|r| r as u32),
        strikes: num(8).unwrap_or(0).max(0) as u32,
        direct: num(10).map(|d| d == 1),
        recent: num(11).unwrap_or(0).max(0) as u32,
    }
}

impl RedisStore {
    /// Connects (failing fast if Redis is not there at start-up).
    pub async fn connect(url: &str, prefix: &str, limits: StoreLimits) -> Result<Self, StoreError> {
        let client = redis::Client::open(url).map_err(unavailable)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(500)))
            .set_response_timeout(Some(Duration::from_millis(500)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(unavailable)?;
        Ok(Self {
            conn,
            prefix: prefix.to_string(),
            limits,
        })
    }

    pub(super) fn limits(&self) -> StoreLimits {
        self.limits
    }

    /// The stored record-signing secret and its rotations, or `candidate`
    /// stored as it (when none is stored, or `rotations` lead from the stored
    /// key to `candidate`).
    pub async fn shared_signing_key(
        &self,
        candidate: [u8; 32],
        rotations: &[peercache_core::record::KeyRotation],
    ) -> Result<([u8; 32], Vec<peercache_core::record::KeyRotation>), StoreError> {
        use peercache_core::record::{RecordSigner, follow_rotations};
        let mut c = self.conn.clone();
        let (key, rot_key) = (
            self.set_key("signing-key"),
            self.set_key("signing-rotations"),
        );
        let _: Option<String> = redis::cmd("SET")
            .arg(&key)
            .arg(hex::encode(candidate))
            .arg("NX")
            .query_async(&mut c)
            .await
            .map_err(unavailable)?;
        let stored: Option<String> = c.get(&key).await.map_err(unavailable)?;
        let stored = stored
            .and_then(|h| hex::decode(h.trim()).ok())
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or_else(|| StoreError::Unavailable(format!("{key} is not a 32-byte hex key")))?;
        let ours = RecordSigner::from_secret(candidate).public_hex();
        let theirs = RecordSigner::from_secret(stored).public_hex();
        if stored == candidate || follow_rotations(&theirs, &ours, rotations).is_ok() {
            let json = serde_json::to_string(rotations).unwrap_or_default();
            let () = c.set(&rot_key, json).await.map_err(unavailable)?;
            if stored != candidate {
                let () = c
                    .set(&key, hex::encode(candidate))
                    .await
                    .map_err(unavailable)?;
            }
            return Ok((candidate, rotations.to_vec()));
        }
        let json: Option<String> = c.get(&rot_key).await.map_err(unavailable)?;
        let mut theirs_rot: Vec<peercache_core::record::KeyRotation> = json
            .and_then(|j| serde_json::from_str(&j).ok())
            .unwrap_or_default();
        theirs_rot.truncate(peercache_core::record::MAX_ROTATIONS);
        Ok((stored, theirs_rot))
    }

    fn k(&self, kind: &str, id: impl std::fmt::Display) -> String {
        format!("{}{kind}:{id}", self.prefix)
    }

    fn set_key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    fn live(&self, f: &PeerFields, now: u64) -> bool {
        is_live(f.seen, f.strikes, now, &self.limits)
    }

    async fn fields(&self, id: &str) -> Result<PeerFields, StoreError> {
        let mut c = self.conn.clone();
        let v: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(self.k("peer", id))
            .arg(&FIELDS[..])
            .query_async(&mut c)
            .await
            .map_err(unavailable)?;
        Ok(parse_fields(v))
    }

    async fn many_fields(&self, ids: &[String]) -> Result<Vec<PeerFields>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.cmd("HMGET").arg(self.k("peer", id)).arg(&FIELDS[..]);
        }
        let mut c = self.conn.clone();
        let rows: Vec<Vec<Option<String>>> = pipe.query_async(&mut c).await.map_err(unavailable)?;
        Ok(rows.into_iter().map(parse_fields).collect())
    }

    fn load_args(load: Option<Load>) -> Vec<(&'static str, i64)> {
        match load {
            Some(l) => vec![
                ("active", i64::from(l.active)),
                ("limit", i64::from(l.limit)),
                ("pending", 0),
            ],
            None => Vec::new(),
        }
    }

    pub(super) async fn register(
        &self,
        id: &str,
        ip: IpAddr,
        dial: Option<String>,
        load: Option<Load>,
        now: u64,
    ) -> Result<Option<String>, StoreError> {
        let mut c = self.conn.clone();
        let banned: bool = c
            .sismember(self.set_key("delisted"), id)
            .await
            .map_err(unavailable)?;
        if banned {
            return Err(StoreError::UnknownPeer);
        }
        let old = self.fields(id).await?;
        let addr = dial.or(old.addr);
        let key = self.k("peer", id);
        let mut pipe = redis::pipe();
        pipe.cmd("HSET")
            .arg(&key)
            .arg("ip")
            .arg(ip.to_string())
            .arg("addr")
            .arg(addr.clone().unwrap_or_default())
            .arg("seen")
            .arg(now)
            .arg("fails")
            .arg(0)
            .ignore();
        for (f, v) in Self::load_args(load) {
            pipe.hset(&key, f, v).ignore();
        }
        let ttl = (self.limits.ttl_ms * 2) as i64;
        pipe.pexpire(&key, ttl).ignore();
        pipe.pexpire(self.k("held", id), ttl).ignore();
        pipe.sadd(self.set_key("peers"), id).ignore();
        pipe.query_async::<()>(&mut c).await.map_err(unavailable)?;
        Ok(addr)
    }

    pub(super) async fn announce(
        &self,
        id: &str,
        have: &[ObjectHash],
        dropped: &[ObjectHash],
        load: Option<Load>,
        now: u64,
    ) -> Result<Vec<ObjectHash>, StoreError> {
        let f = self.fields(id).await?;
        if !self.live(&f, now) {
            return Err(StoreError::UnknownPeer);
        }
        let mut c = self.conn.clone();
        let held_key = self.k("held", id);
        let held: usize = c.scard(&held_key).await.map_err(unavailable)?;
        let room = holdings_room(held);
        let accepted: Vec<ObjectHash> = have.iter().take(room).copied().collect();
        let key = self.k("peer", id);
        let ttl = (self.limits.ttl_ms * 2) as i64;
        let mut pipe = redis::pipe();
        pipe.hset(&key, "seen", now).ignore();
        for (fld, v) in Self::load_args(load) {
            pipe.hset(&key, fld, v).ignore();
        }
        for h in dropped {
            pipe.srem(&held_key, h.to_hex()).ignore();
            pipe.zrem(self.k("holders", h), id).ignore();
        }
        for h in &accepted {
            pipe.sadd(&held_key, h.to_hex()).ignore();
            pipe.cmd("ZADD")
                .arg(self.k("holders", h))
                .arg("NX")
                .arg(0)
                .arg(id)
                .ignore();
            pipe.sadd(self.set_key("objects"), h.to_hex()).ignore();
        }
        pipe.pexpire(&key, ttl).ignore();
        pipe.pexpire(&held_key, ttl).ignore();
        pipe.query_async::<()>(&mut c).await.map_err(unavailable)?;
        Ok(accepted)
    }

    pub(super) async fn holder_stats(
        &self,
        hash: &ObjectHash,
        exclude: Option<&str>,
        now: u64,
    ) -> Result<Vec<HolderStats>, StoreError> {
        let mut c = self.conn.clone();
        let key = self.k("holders", hash);
        let members: Vec<(String, f64)> = c
            .zrevrange_withscores(&key, 0, MAX_HOLDERS_READ - 1)
            .await
            .map_err(unavailable)?;
        let ids: Vec<String> = members.iter().map(|(id, _)| id.clone()).collect();
        let fields = self.many_fields(&ids).await?;
        let mut out = Vec::new();
        let mut stale = Vec::new();
        for ((id, uses), f) in members.into_iter().zip(fields) {
            if f.seen.is_none() {
                stale.push(id);
                continue;
            }
            if Some(id.as_str()) == exclude || !self.live(&f, now) {
                continue;
            }
            let Some(addr) = f.addr.clone() else { continue };
            out.push(HolderStats {
                id,
                addr,
                rtt_ms: f.rtt,
                direct: f.direct,
                load: f.load,
                pending: pending_now(f.pending, f.pending_at, now),
                recent: pending_now(f.recent, f.pending_at, now),
                uses: uses.max(0.0) as u64,
            });
        }
        if !stale.is_empty() {
            let _: Result<(), _> = c.zrem(&key, stale).await;
        }
        Ok(out)
    }

    pub(super) async fn book_referral(&self, id: &str, now: u64) -> Result<(), StoreError> {
        let f = self.fields(id).await?;
        let key = self.k("peer", id);
        let mut pipe = redis::pipe();
        // `rules::pending_after_booking`, as a reset and an atomic increment
        // (replicas book concurrently).
        if bookings_faded(f.pending_at, now) {
            pipe.hset(&key, "pending", 0).ignore();
            pipe.hset(&key, "recent", 0).ignore();
        }
        pipe.hincr(&key, "pending", 1).ignore();
        pipe.hincr(&key, "recent", 1).ignore();
        pipe.hset(&key, "pending_at", now).ignore();
        let mut c = self.conn.clone();
        pipe.query_async::<()>(&mut c).await.map_err(unavailable)
    }

    pub(super) async fn report(&self, report: &Report) -> Result<(), StoreError> {
        let mut c = self.conn.clone();
        let holders = self.k("holders", report.hash);
        // The referral this report closes no longer counts as load (never below 0).
        let peer_key = self.k("peer", &report.source);
        let exists: bool = c.exists(&peer_key).await.map_err(unavailable)?;
        if exists {
            let left: i64 = c
                .hincr(&peer_key, "pending", -1)
                .await
                .map_err(unavailable)?;
            if left < 0 {
                c.hset::<_, _, _, ()>(&peer_key, "pending", 0)
                    .await
                    .map_err(unavailable)?;
            }
        }
        match report.outcome {
            Outcome::Served => {
                redis::cmd("ZADD")
                    .arg(&holders)
                    .arg("XX")
                    .arg("INCR")
                    .arg(1)
                    .arg(&report.source)
                    .query_async::<Option<f64>>(&mut c)
                    .await
                    .map_err(unavailable)?;
            }
            Outcome::Mismatch => {
                let strikes: i64 = c
                    .hincr(self.k("peer", &report.source), "strikes", 1)
                    .await
                    .map_err(unavailable)?;
                let mut pipe = redis::pipe();
                pipe.zrem(&holders, &report.source).ignore();
                pipe.srem(self.k("held", &report.source), report.hash.to_hex())
                    .ignore();
                if is_delisted(
                    u32::try_from(strikes.max(0)).unwrap_or(u32::MAX),
                    &self.limits,
                ) {
                    pipe.sadd(self.set_key("delisted"), &report.source).ignore();
                }
                pipe.query_async::<()>(&mut c).await.map_err(unavailable)?;
            }
            Outcome::Failed | Outcome::Unused => {}
        }
        Ok(())
    }

    pub(super) async fn book_offer(
        &self,
        client: &str,
        hash: &ObjectHash,
        peers: &[String],
        _now: u64,
    ) -> Result<(), StoreError> {
        let key = self.k("offer", format!("{client}:{hash}"));
        let mut pipe = redis::pipe();
        for p in peers.iter().take(64) {
            pipe.sadd(&key, p).ignore();
        }
        pipe.pexpire(&key, OFFER_TTL_MS as i64).ignore();
        let mut c = self.conn.clone();
        pipe.query_async::<()>(&mut c).await.map_err(unavailable)
    }

    pub(super) async fn take_offer(
        &self,
        client: &str,
        hash: &ObjectHash,
        peer: &str,
        _now: u64,
        consume: bool,
    ) -> Result<bool, StoreError> {
        let mut c = self.conn.clone();
        let key = self.k("offer", format!("{client}:{hash}"));
        if !consume {
            return c.sismember(&key, peer).await.map_err(unavailable);
        }
        let removed: i64 = c.srem(&key, peer).await.map_err(unavailable)?;
        Ok(removed == 1)
    }

    pub(super) async fn note_path(&self, peer: &str, direct: bool) -> Result<(), StoreError> {
        let mut c = self.conn.clone();
        let key = self.k("peer", peer);
        let exists: bool = c.exists(&key).await.map_err(unavailable)?;
        if exists {
            c.hset::<_, _, _, ()>(&key, "direct", i64::from(direct))
                .await
                .map_err(unavailable)?;
        }
        Ok(())
    }

    pub(super) async fn record_fetch(
        &self,
        peer: &str,
        hash: &ObjectHash,
    ) -> Result<(), StoreError> {
        let mut c = self.conn.clone();
        let key = self.k("fetched", peer);
        let mut pipe = redis::pipe();
        pipe.sadd(&key, hash.to_hex()).ignore();
        pipe.pexpire(&key, FETCHED_TTL_MS).ignore();
        pipe.query_async::<()>(&mut c).await.map_err(unavailable)
    }

    pub(super) async fn fetched(&self, peer: &str, hash: &ObjectHash) -> Result<bool, StoreError> {
        let mut c = self.conn.clone();
        c.sismember(self.k("fetched", peer), hash.to_hex())
            .await
            .map_err(unavailable)
    }

    pub(super) async fn peer_addr(
        &self,
        peer: &str,
        now: u64,
    ) -> Result<Option<String>, StoreError> {
        let f = self.fields(peer).await?;
        Ok(if self.live(&f, now) { f.addr } else { None })
    }

    async fn all_peers(&self) -> Result<Vec<String>, StoreError> {
        let mut c = self.conn.clone();
        let mut ids: Vec<String> = c
            .smembers(self.set_key("peers"))
            .await
            .map_err(unavailable)?;
        ids.truncate(MAX_PEERS_SCANNED);
        Ok(ids)
    }

    pub(super) async fn serving_peers(
        &self,
        now: u64,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let ids = self.all_peers().await?;
        let fields = self.many_fields(&ids).await?;
        Ok(ids
            .into_iter()
            .zip(fields)
            .filter(|(_, f)| self.live(f, now))
            .filter_map(|(id, f)| Some((id, f.addr?)))
            .collect())
    }

    async fn drop_peer(&self, id: &str) -> Result<(), StoreError> {
        let mut c = self.conn.clone();
        let held: Vec<String> = c.smembers(self.k("held", id)).await.map_err(unavailable)?;
        let mut pipe = redis::pipe();
        for h in held {
            pipe.zrem(self.k("holders", h), id).ignore();
        }
        pipe.del(self.k("peer", id)).ignore();
        pipe.del(self.k("held", id)).ignore();
        pipe.srem(self.set_key("peers"), id).ignore();
        pipe.query_async::<()>(&mut c).await.map_err(unavailable)
    }

    pub(super) async fn record_ping(
        &self,
        peer: &str,
        rtt_ms: Option<u32>,
        load: Option<Load>,
    ) -> Result<(), StoreError> {
        let mut c = self.conn.clone();
        let key = self.k("peer", peer);
        match rtt_ms {
            Some(rtt) => {
                let f = self.fields(peer).await?;
                if f.seen.is_none() {
                    return Ok(());
                }
                let mut pipe = redis::pipe();
                pipe.hset(&key, "rtt", smooth_rtt(f.rtt, rtt)).ignore();
                pipe.hset(&key, "fails", 0).ignore();
                for (fld, v) in Self::load_args(load) {
                    pipe.hset(&key, fld, v).ignore();
                }
                pipe.query_async::<()>(&mut c).await.map_err(unavailable)
            }
            None => {
                let fails: i64 = c.hincr(&key, "fails", 1).await.map_err(unavailable)?;
                if ping_failures_drop(u32::try_from(fails.max(0)).unwrap_or(u32::MAX)) {
                    self.drop_peer(peer).await?;
                }
                Ok(())
            }
        }
    }

    pub(super) async fn expire(&self, now: u64) -> Result<(), StoreError> {
        let ids = self.all_peers().await?;
        let fields = self.many_fields(&ids).await?;
        for (id, f) in ids.into_iter().zip(fields) {
            if is_expired(f.seen, f.strikes, now, &self.limits) {
                self.drop_peer(&id).await?;
            }
        }
        Ok(())
    }

    pub(super) async fn stats(&self, now: u64) -> Result<TableStats, StoreError> {
        let ids = self.all_peers().await?;
        let fields = self.many_fields(&ids).await?;
        let mut c = self.conn.clone();
        let objects: usize = c
            .scard(self.set_key("objects"))
            .await
            .map_err(unavailable)?;
        let delisted: usize = c
            .scard(self.set_key("delisted"))
            .await
            .map_err(unavailable)?;
        let mut s = TableStats {
            objects,
            delisted,
            ..TableStats::default()
        };
        for f in fields.iter().filter(|f| self.live(f, now)) {
            s.peers += 1;
            if f.addr.is_some() {
                s.serving_peers += 1;
            }
        }
        Ok(s)
    }

    pub(super) async fn peer_rows(&self, now: u64) -> Result<Vec<PeerRow>, StoreError> {
        let ids = self.all_peers().await?;
        let fields = self.many_fields(&ids).await?;
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.scard(self.k("held", id));
        }
        let mut c = self.conn.clone();
        let held: Vec<usize> = if ids.is_empty() {
            Vec::new()
        } else {
            pipe.query_async(&mut c).await.map_err(unavailable)?
        };
        let mut rows: Vec<PeerRow> = ids
            .into_iter()
            .zip(fields)
            .zip(held)
            .filter(|((_, f), _)| self.live(f, now) || is_delisted(f.strikes, &self.limits))
            .map(|((id, f), holdings)| PeerRow {
                id,
                addr: f.addr,
                load: f.load,
                rtt_ms: f.rtt,
                strikes: f.strikes,
                direct: f.direct,
                holdings,
            })
            .collect();
        rows.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(rows)
    }
}
