//! The Redis backend of the look-up table (B4): several server replicas share it.
//!
//! Works with a single Redis (`redis://`, `rediss://` for TLS) and with Redis
//! Cluster (`redis+cluster://HOST:PORT,HOST:PORT`, `rediss+cluster://…`).
//!
//! Every key carries the hash tag of the prefix (`{pc}:` by default), so the
//! whole table lives in one hash slot: each read-modify-write is one Lua script
//! over keys of that slot (atomic, one round trip, legal on a Cluster). Keys:
//! - `peer:ID` hash: `ip addr seen active limit pending rtt fails strikes
//!   pending_at direct recent` (expires at twice the TTL, refreshed by registrations
//!   and announces);
//! - `held:ID` set of hashes it holds (expires with the peer); `fetched:ID` set
//!   of hashes it fetched through a server (expires after a day);
//! - `holders:HASH` sorted set of peer ids scored by served reports (M9;
//!   expires at twice the TTL after the last announce of it, and loses members
//!   as peers drop it or go);
//! - `offer:CLIENT:HASH` set of peer ids a client was referred to (expires after
//!   [`OFFER_TTL_MS`]); a report takes its member out;
//! - `seen` and `serving`: sorted sets of peer ids by last heartbeat (all
//!   registered; those with an address): expiry, the pinger and the counts read
//!   ranges of them instead of scanning every peer;
//! - `objects` sorted set of hashes by last announce (trimmed by expiry, and as
//!   holders go); `delisted` sorted set of banned ids by ban time (capped);
//! - `lease`: which replica does the pinging and expiry (`SET NX PX`, renewed by
//!   its holder; another takes over when it lapses);
//! - `figures` hash and `history` list (capped): the counters `/admin` shows,
//!   summed over replicas;
//! - `signing-key`: the record-signing secret (hex) all replicas use, set by
//!   the first to start (or by one whose key was rotated from it);
//! - `signing-rotations`: the rotation statements that led to it (JSON).
//!
//! A referral decision is one script call (holders and their figures); booking
//! the referral against the first holder's load is sent on the same connection
//! without waiting for its reply, so a decision costs one round trip and the
//! next command on that connection already sees the booking.
//!
//! Every call has a short response timeout; a failure is reported as
//! [`StoreError::Unavailable`] so the server can serve directly instead.

use std::net::IpAddr;
use std::time::Duration;

use peercache_core::hash::ObjectHash;
use peercache_core::protocol::{Load, Outcome, Report};
use peercache_core::select::HolderStats;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Cmd, Pipeline, RedisFuture, Script, Value};

use super::rules::{is_delisted, is_live, pending_now, ping_failures_drop, smooth_rtt};
use super::{
    MAX_HOLDINGS_PER_PEER, MAX_PEERS, OFFER_TTL_MS, PENDING_WINDOW_MS, PathWitness, PeerRow,
    StoreError, StoreLimits, TableStats, now_ms,
};

/// Most holders read for one referral.
const MAX_HOLDERS_READ: usize = 256;
/// Most peers read by the pinger and the admin page.
const MAX_PEERS_SCANNED: usize = 100_000;
/// Lapsed peers dropped per expiry batch, and batches per call.
const EXPIRE_BATCH: usize = 500;
const EXPIRE_BATCHES: usize = 20;
const FETCHED_TTL_MS: i64 = 24 * 3600 * 1000;
/// How long the pinging-and-expiry lease lasts without renewal.
pub const LEASE_MS: u64 = 15_000;
/// Samples of the shared history kept.
const HISTORY_KEPT: usize = 150;

/// Where the server's Redis lives and how to trust it.
#[derive(Debug, Clone, Default)]
pub struct RedisOptions {
    /// Extra trusted root (PEM) for `rediss://`; the system's roots otherwise.
    pub ca_pem: Option<Vec<u8>>,
}

/// One connection kind or the other, behind the same command interface.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// The scripts, compiled once.
struct Scripts {
    decide: Script,
    book: Script,
    register: Script,
    announce: Script,
    report: Script,
    drop_peer: Script,
    if_exists_hset: Script,
    note_path: Script,
    fail_ping: Script,
    lease: Script,
    figures: Script,
}

/// The Redis table.
#[derive(Clone)]
pub struct RedisStore {
    conn: Conn,
    /// `{tag}:`, the start of every key.
    prefix: String,
    limits: StoreLimits,
    scripts: std::sync::Arc<Scripts>,
    /// This replica's lease token.
    me: String,
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
    /// Referrals booked within the window, reported or not.
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
            active: u32::try_from(a).unwrap_or(u32::MAX),
            limit: u32::try_from(l).unwrap_or(u32::MAX),
        }),
        _ => None,
    };
    let count = |i: usize| u32::try_from(num(i).unwrap_or(0).max(0)).unwrap_or(u32::MAX);
    PeerFields {
        addr: v.get(1).cloned().flatten().filter(|s| !s.is_empty()),
        seen: num(2).map(|s| s.max(0).unsigned_abs()),
        load,
        pending: count(5),
        pending_at: num(9).unwrap_or(0).max(0).unsigned_abs(),
        rtt: num(6)
            .filter(|r| *r >= 0)
            .map(|r| u32::try_from(r).unwrap_or(u32::MAX)),
        strikes: count(8),
        direct: num(10).map(|d| d == 1),
        recent: count(11),
    }
}

/// The Lua list of [`FIELDS`], for HMGET inside scripts.
fn lua_fields() -> String {
    FIELDS
        .iter()
        .map(|f| format!("'{f}'"))
        .collect::<Vec<_>>()
        .join(", ")
}

// The scripts. Keys they name beyond KEYS are built from the prefix (ARGV) and
// share its hash tag, so they live in the same slot.

/// Holders of one object with their figures; drops members whose peer is gone.
/// KEYS: holders. ARGV: prefix, most to read.
const DECIDE: &str = r"
local p = ARGV[1]
local m = redis.call('ZREVRANGE', KEYS[1], 0, tonumber(ARGV[2]) - 1, 'WITHSCORES')
local out = {}
for i = 1, #m, 2 do
  local f = redis.call('HMGET', p .. 'peer:' .. m[i], FIELDS)
  if f[3] == false then
    redis.call('ZREM', KEYS[1], m[i])
  else
    out[#out + 1] = {m[i], m[i + 1], f}
  end
end
return out
";

/// Books one referral against a peer's load (`rules::pending_after_booking`:
/// bookings older than the window have faded).
/// KEYS: peer. ARGV: now, faded-before.
const BOOK: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local at = tonumber(redis.call('HGET', KEYS[1], 'pending_at') or '0') or 0
if at < tonumber(ARGV[2]) then redis.call('HSET', KEYS[1], 'pending', 0, 'recent', 0) end
redis.call('HINCRBY', KEYS[1], 'pending', 1)
redis.call('HINCRBY', KEYS[1], 'recent', 1)
redis.call('HSET', KEYS[1], 'pending_at', ARGV[1])
return 1
";

/// KEYS: peer, held, seen, serving, delisted.
/// ARGV: id, ip, dial ('' keeps the one in force), now, ttl, active ('' none), limit.
const REGISTER: &str = r"
if redis.call('ZSCORE', KEYS[5], ARGV[1]) then return {'banned'} end
local addr = ARGV[3]
if addr == '' then addr = redis.call('HGET', KEYS[1], 'addr') or '' end
redis.call('HSET', KEYS[1], 'ip', ARGV[2], 'addr', addr, 'seen', ARGV[4], 'fails', 0)
if ARGV[6] ~= '' then
  redis.call('HSET', KEYS[1], 'active', ARGV[6], 'limit', ARGV[7], 'pending', 0)
end
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
if addr ~= '' then
  redis.call('ZADD', KEYS[4], ARGV[4], ARGV[1])
else
  redis.call('ZREM', KEYS[4], ARGV[1])
end
return {'ok', addr}
";

/// Heartbeat, load, dropped and new holdings, in one step. Returns how many of
/// `have` (a prefix) were accepted, or -1 for a peer not live.
/// KEYS: peer, held, seen, serving, objects.
/// ARGV: id, prefix, now, fresh-from, ttl, max strikes, max holdings, active
/// ('' none), limit, dropped count, dropped…, have….
const ANNOUNCE: &str = r"
local seen = tonumber(redis.call('HGET', KEYS[1], 'seen') or '')
local strikes = tonumber(redis.call('HGET', KEYS[1], 'strikes') or '0') or 0
if seen == nil or seen < tonumber(ARGV[4]) or strikes >= tonumber(ARGV[6]) then return -1 end
local id, p, now, ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[5]
redis.call('HSET', KEYS[1], 'seen', now)
if ARGV[8] ~= '' then
  redis.call('HSET', KEYS[1], 'active', ARGV[8], 'limit', ARGV[9], 'pending', 0)
end
local nd = tonumber(ARGV[10])
local room = tonumber(ARGV[7]) - redis.call('SCARD', KEYS[2])
for i = 11, 10 + nd do
  local h = ARGV[i]
  local hk = p .. 'holders:' .. h
  redis.call('SREM', KEYS[2], h)
  redis.call('ZREM', hk, id)
  if redis.call('EXISTS', hk) == 0 then redis.call('ZREM', KEYS[5], h) end
end
local n = 0
for i = 11 + nd, #ARGV do
  if n >= room then break end
  local h = ARGV[i]
  local hk = p .. 'holders:' .. h
  redis.call('SADD', KEYS[2], h)
  redis.call('ZADD', hk, 'NX', 0, id)
  redis.call('PEXPIRE', hk, ttl)
  redis.call('ZADD', KEYS[5], now, h)
  n = n + 1
end
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[2], ttl)
redis.call('ZADD', KEYS[3], now, id)
if (redis.call('HGET', KEYS[1], 'addr') or '') ~= '' then redis.call('ZADD', KEYS[4], now, id) end
return n
";

/// A client's report: frees the booked referral; `served` counts a use; a
/// `mismatch` is a strike, unlists the object and may delist the peer.
/// KEYS: peer, holders, held, delisted, seen, serving, objects.
/// ARGV: source, outcome, max strikes, hash, now, ttl, most bans kept.
const REPORT: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then
  if redis.call('HINCRBY', KEYS[1], 'pending', -1) < 0 then
    redis.call('HSET', KEYS[1], 'pending', 0)
  end
end
if ARGV[2] == 'served' then
  redis.call('ZADD', KEYS[2], 'XX', 'INCR', 1, ARGV[1])
elseif ARGV[2] == 'mismatch' then
  local s = redis.call('HINCRBY', KEYS[1], 'strikes', 1)
  if redis.call('PTTL', KEYS[1]) < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[6]) end
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('SREM', KEYS[3], ARGV[4])
  if redis.call('EXISTS', KEYS[2]) == 0 then redis.call('ZREM', KEYS[7], ARGV[4]) end
  if s >= tonumber(ARGV[3]) then
    redis.call('ZADD', KEYS[4], ARGV[5], ARGV[1])
    redis.call('ZREM', KEYS[5], ARGV[1])
    redis.call('ZREM', KEYS[6], ARGV[1])
    local n = redis.call('ZCARD', KEYS[4])
    local keep = tonumber(ARGV[7])
    if n > keep then redis.call('ZREMRANGEBYRANK', KEYS[4], 0, n - keep - 1) end
  end
end
return 1
";

/// Forgets a peer and its listings (only if not seen since `seen-before`, when
/// given, so a peer that came back meanwhile stays).
/// KEYS: peer, held, seen, serving, objects. ARGV: id, prefix, seen-before ('' always).
const DROP_PEER: &str = r"
if ARGV[3] ~= '' then
  local s = redis.call('ZSCORE', KEYS[3], ARGV[1])
  if s and tonumber(s) >= tonumber(ARGV[3]) then return 0 end
end
for _, h in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local hk = ARGV[2] .. 'holders:' .. h
  redis.call('ZREM', hk, ARGV[1])
  if redis.call('EXISTS', hk) == 0 then redis.call('ZREM', KEYS[5], h) end
end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
return 1
";

/// Sets fields of a hash only if it exists (never recreates a dropped peer).
/// KEYS: peer. ARGV: field, value, ….
const IF_EXISTS_HSET: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
";

/// Notes a peer's path unless the server's ping would override a client's
/// finding (`PathWitness::overrides`). KEYS: peer. ARGV: direct (0/1), witness.
const NOTE_PATH: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if ARGV[2] == 'server' and redis.call('HGET', KEYS[1], 'path_by') == 'client' then return 0 end
redis.call('HSET', KEYS[1], 'direct', ARGV[1], 'path_by', ARGV[2])
return 1
";

/// Counts a failed ping; returns the failures in a row (-1: no such peer).
const FAIL_PING: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
return redis.call('HINCRBY', KEYS[1], 'fails', 1)
";

/// Takes or renews the lease. KEYS: lease. ARGV: token, ms.
const LEASE: &str = r"
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
if not v then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end
return 0
";

/// Adds one replica's counter deltas to the shared totals, appends a history
/// sample when asked, returns the totals and the history.
/// KEYS: figures, history. ARGV: n, names…, deltas…, sample time ('' none), kept.
const FIGURES: &str = r"
local n = tonumber(ARGV[1])
local totals = {}
for i = 1, n do
  totals[i] = redis.call('HINCRBY', KEYS[1], ARGV[1 + i], ARGV[1 + n + i])
end
local at = ARGV[2 + 2 * n]
if at ~= '' then
  redis.call('RPUSH', KEYS[2], at .. ',' .. table.concat(totals, ','))
  redis.call('LTRIM', KEYS[2], -tonumber(ARGV[3 + 2 * n]), -1)
end
return {totals, redis.call('LRANGE', KEYS[2], 0, -1)}
";

/// Shared counters and their history, as [`RedisStore::share_figures`] returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SharedFigures {
    /// Totals over all replicas, in the order asked.
    pub totals: Vec<u64>,
    /// Samples: (unix seconds, totals in the order asked).
    pub history: Vec<(u64, Vec<u64>)>,
}

/// Splits `redis+cluster://[user:pw@]h1:p1,h2:p2[?q]` into one URL per seed node.
fn cluster_seeds(url: &str) -> Option<Vec<String>> {
    let (scheme, rest) = if let Some(r) = url.strip_prefix("redis+cluster://") {
        ("redis", r)
    } else if let Some(r) = url.strip_prefix("rediss+cluster://") {
        ("rediss", r)
    } else {
        return None;
    };
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, format!("?{q}")),
        None => (rest, String::new()),
    };
    let rest = rest.trim_end_matches('/');
    let (auth, hosts) = match rest.rsplit_once('@') {
        Some((a, h)) => (format!("{a}@"), h),
        None => (String::new(), rest),
    };
    Some(
        hosts
            .split(',')
            .filter(|h| !h.is_empty())
            .map(|h| format!("{scheme}://{auth}{h}{query}"))
            .collect(),
    )
}

/// The key prefix for a name: its hash tag, so every key lands in one slot.
fn tagged(prefix: &str) -> String {
    let name = prefix.trim_end_matches(':');
    format!("{{{name}}}:")
}

impl RedisStore {
    /// Connects (failing fast if Redis is not there at start-up).
    pub async fn connect(url: &str, prefix: &str, limits: StoreLimits) -> Result<Self, StoreError> {
        Self::connect_with(url, prefix, limits, &RedisOptions::default()).await
    }

    /// Connects with options (an extra trusted root for TLS).
    pub async fn connect_with(
        url: &str,
        prefix: &str,
        limits: StoreLimits,
        options: &RedisOptions,
    ) -> Result<Self, StoreError> {
        // rustls picks the process-wide provider; the server uses ring.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let certs = || redis::TlsCertificates {
            client_tls: None,
            root_cert: options.ca_pem.clone(),
        };
        let conn = if let Some(seeds) = cluster_seeds(url) {
            if seeds.is_empty() {
                return Err(StoreError::Unavailable(format!(
                    "no cluster nodes in {url:?}"
                )));
            }
            let mut builder = redis::cluster::ClusterClientBuilder::new(seeds)
                .connection_timeout(Duration::from_millis(500))
                .response_timeout(Duration::from_millis(500))
                .retries(1);
            if options.ca_pem.is_some() {
                builder = builder.certs(certs());
            }
            let client = builder.build().map_err(unavailable)?;
            Conn::Cluster(client.get_async_connection().await.map_err(unavailable)?)
        } else {
            let client = match &options.ca_pem {
                Some(_) => redis::Client::build_with_tls(url, certs()),
                None => redis::Client::open(url),
            }
            .map_err(unavailable)?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(Duration::from_millis(500)))
                .set_response_timeout(Some(Duration::from_millis(500)))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_millis(500));
            Conn::Single(
                ConnectionManager::new_with_config(client, config)
                    .await
                    .map_err(unavailable)?,
            )
        };
        let fields = lua_fields();
        let scripts = Scripts {
            decide: Script::new(&DECIDE.replace("FIELDS", &fields)),
            book: Script::new(BOOK),
            register: Script::new(REGISTER),
            announce: Script::new(ANNOUNCE),
            report: Script::new(REPORT),
            drop_peer: Script::new(DROP_PEER),
            if_exists_hset: Script::new(IF_EXISTS_HSET),
            note_path: Script::new(NOTE_PATH),
            fail_ping: Script::new(FAIL_PING),
            lease: Script::new(LEASE),
            figures: Script::new(FIGURES),
        };
        let store = Self {
            conn,
            prefix: tagged(prefix),
            limits,
            scripts: std::sync::Arc::new(scripts),
            me: format!("{:016x}", rand::random::<u64>()),
        };
        // Fail at start-up, not at the first request.
        let mut c = store.conn.clone();
        redis::cmd("PING")
            .query_async::<String>(&mut c)
            .await
            .map_err(unavailable)?;
        store.load_decision_scripts().await?;
        Ok(store)
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

    /// Registrations heard from at or after this are fresh (`rules::is_fresh`).
    fn fresh_from(&self, now: u64) -> u64 {
        now.saturating_sub(self.limits.ttl_ms)
    }

    fn ttl2(&self) -> u64 {
        self.limits.ttl_ms.saturating_mul(2).max(1)
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

    fn peer_keys(&self, id: &str) -> [String; 2] {
        [self.k("peer", id), self.k("held", id)]
    }

    pub(super) async fn register(
        &self,
        id: &str,
        ip: IpAddr,
        dial: Option<String>,
        load: Option<Load>,
        now: u64,
    ) -> Result<Option<String>, StoreError> {
        let [peer, held] = self.peer_keys(id);
        let mut inv = self.scripts.register.prepare_invoke();
        inv.key(peer)
            .key(held)
            .key(self.set_key("seen"))
            .key(self.set_key("serving"))
            .key(self.set_key("delisted"))
            .arg(id)
            .arg(ip.to_string())
            .arg(dial.unwrap_or_default())
            .arg(now)
            .arg(self.ttl2());
        match load {
            Some(l) => inv.arg(l.active).arg(l.limit),
            None => inv.arg("").arg(""),
        };
        let mut c = self.conn.clone();
        let out: Vec<String> = inv.invoke_async(&mut c).await.map_err(unavailable)?;
        match out.first().map(String::as_str) {
            Some("ok") => Ok(out.get(1).filter(|a| !a.is_empty()).cloned()),
            _ => Err(StoreError::UnknownPeer),
        }
    }

    pub(super) async fn announce(
        &self,
        id: &str,
        have: &[ObjectHash],
        dropped: &[ObjectHash],
        load: Option<Load>,
        now: u64,
    ) -> Result<Vec<ObjectHash>, StoreError> {
        let [peer, held] = self.peer_keys(id);
        let mut inv = self.scripts.announce.prepare_invoke();
        inv.key(peer)
            .key(held)
            .key(self.set_key("seen"))
            .key(self.set_key("serving"))
            .key(self.set_key("objects"))
            .arg(id)
            .arg(&self.prefix)
            .arg(now)
            .arg(self.fresh_from(now))
            .arg(self.ttl2())
            .arg(self.limits.max_strikes)
            .arg(MAX_HOLDINGS_PER_PEER);
        match load {
            Some(l) => inv.arg(l.active).arg(l.limit),
            None => inv.arg("").arg(""),
        };
        inv.arg(dropped.len());
        for h in dropped {
            inv.arg(h.to_hex());
        }
        for h in have {
            inv.arg(h.to_hex());
        }
        let mut c = self.conn.clone();
        let n: i64 = inv.invoke_async(&mut c).await.map_err(unavailable)?;
        if n < 0 {
            return Err(StoreError::UnknownPeer);
        }
        let n = usize::try_from(n).unwrap_or(0);
        Ok(have.iter().take(n).copied().collect())
    }

    pub(super) async fn holder_stats(
        &self,
        hash: &ObjectHash,
        exclude: Option<&str>,
        now: u64,
    ) -> Result<Vec<HolderStats>, StoreError> {
        let mut c = self.conn.clone();
        let mut decide = redis::cmd("EVALSHA");
        decide
            .arg(self.scripts.decide.get_hash())
            .arg(1)
            .arg(self.k("holders", hash))
            .arg(&self.prefix)
            .arg(MAX_HOLDERS_READ);
        type Rows = Vec<(String, f64, Vec<Option<String>>)>;
        let rows: Rows = match decide.query_async(&mut c).await {
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                // Redis lost its scripts (a restart, a failover, SCRIPT
                // FLUSH): the booking's too, and it cannot notice by itself.
                self.load_decision_scripts().await?;
                decide.query_async(&mut c).await.map_err(unavailable)?
            }
            other => other.map_err(unavailable)?,
        };
        Ok(rows
            .into_iter()
            .filter_map(|(id, uses, v)| {
                let f = parse_fields(v);
                if Some(id.as_str()) == exclude || !self.live(&f, now) {
                    return None;
                }
                Some(HolderStats {
                    addr: f.addr?,
                    id,
                    rtt_ms: f.rtt,
                    direct: f.direct,
                    load: f.load,
                    pending: pending_now(f.pending, f.pending_at, now),
                    recent: pending_now(f.recent, f.pending_at, now),
                    uses: if uses.is_finite() && uses > 0.0 {
                        uses as u64
                    } else {
                        0
                    },
                })
            })
            .collect())
    }

    /// Loads the two scripts of a referral decision into Redis's script cache
    /// (every node of a cluster): the booking goes by its hash without a reply,
    /// so it must be there before it is sent. Called at start and whenever a
    /// decision finds the cache emptied.
    async fn load_decision_scripts(&self) -> Result<(), StoreError> {
        let mut c = self.conn.clone();
        for script in [&self.scripts.decide, &self.scripts.book] {
            script.load_async(&mut c).await.map_err(unavailable)?;
        }
        Ok(())
    }

    /// Books a referral against `id`'s load without waiting for the reply: the
    /// command is queued on the connection before this returns, so later
    /// commands on it see the booking. Sent by the script's hash (loaded by
    /// `load_decision_scripts`), not its text. A lost booking only
    /// fades sooner.
    pub(super) async fn book_referral(&self, id: &str, now: u64) -> Result<(), StoreError> {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(self.scripts.book.get_hash())
            .arg(1)
            .arg(self.k("peer", id))
            .arg(now)
            .arg(now.saturating_sub(PENDING_WINDOW_MS));
        cmd.set_no_response(true);
        let mut c = self.conn.clone();
        cmd.query_async::<()>(&mut c).await.map_err(unavailable)
    }

    pub(super) async fn report(&self, report: &Report) -> Result<(), StoreError> {
        let outcome = match report.outcome {
            Outcome::Served => "served",
            Outcome::Mismatch => "mismatch",
            Outcome::Failed | Outcome::Unused => "other",
        };
        let [peer, held] = self.peer_keys(&report.source);
        let mut c = self.conn.clone();
        self.scripts
            .report
            .key(peer)
            .key(self.k("holders", report.hash))
            .key(held)
            .key(self.set_key("delisted"))
            .key(self.set_key("seen"))
            .key(self.set_key("serving"))
            .key(self.set_key("objects"))
            .arg(&report.source)
            .arg(outcome)
            .arg(self.limits.max_strikes)
            .arg(report.hash.to_hex())
            .arg(now_ms())
            .arg(self.ttl2())
            .arg(MAX_PEERS)
            .invoke_async::<()>(&mut c)
            .await
            .map_err(unavailable)
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
        pipe.atomic();
        pipe.sadd(&key, peers.iter().take(64).collect::<Vec<_>>())
            .ignore();
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

    async fn set_if_exists(&self, id: &str, pairs: &[(&str, String)]) -> Result<(), StoreError> {
        let mut inv = self.scripts.if_exists_hset.key(self.k("peer", id));
        for (f, v) in pairs {
            inv.arg(*f).arg(v);
        }
        let mut c = self.conn.clone();
        inv.invoke_async::<()>(&mut c).await.map_err(unavailable)
    }

    pub(super) async fn note_path(
        &self,
        peer: &str,
        direct: bool,
        by: PathWitness,
    ) -> Result<(), StoreError> {
        let mut c = self.conn.clone();
        self.scripts
            .note_path
            .key(self.k("peer", peer))
            .arg(i64::from(direct))
            .arg(by.name())
            .invoke_async::<()>(&mut c)
            .await
            .map_err(unavailable)
    }

    pub(super) async fn record_fetch(
        &self,
        peer: &str,
        hash: &ObjectHash,
    ) -> Result<(), StoreError> {
        let mut c = self.conn.clone();
        let key = self.k("fetched", peer);
        let mut pipe = redis::pipe();
        pipe.atomic();
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

    /// Ids in a by-time sorted set heard from since `from`, at most `max`.
    async fn ids_since(&self, set: &str, from: u64, max: usize) -> Result<Vec<String>, StoreError> {
        let mut c = self.conn.clone();
        redis::cmd("ZRANGEBYSCORE")
            .arg(self.set_key(set))
            .arg(from)
            .arg("+inf")
            .arg("LIMIT")
            .arg(0)
            .arg(max)
            .query_async(&mut c)
            .await
            .map_err(unavailable)
    }

    pub(super) async fn serving_peers(
        &self,
        now: u64,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let ids = self
            .ids_since("serving", self.fresh_from(now), MAX_PEERS_SCANNED)
            .await?;
        let fields = self.many_fields(&ids).await?;
        Ok(ids
            .into_iter()
            .zip(fields)
            .filter(|(_, f)| self.live(f, now))
            .filter_map(|(id, f)| Some((id, f.addr?)))
            .collect())
    }

    fn drop_invocation<'a>(
        &'a self,
        id: &str,
        seen_before: Option<u64>,
    ) -> redis::ScriptInvocation<'a> {
        let [peer, held] = self.peer_keys(id);
        let mut inv = self.scripts.drop_peer.prepare_invoke();
        inv.key(peer)
            .key(held)
            .key(self.set_key("seen"))
            .key(self.set_key("serving"))
            .key(self.set_key("objects"))
            .arg(id)
            .arg(&self.prefix)
            .arg(seen_before.map(|s| s.to_string()).unwrap_or_default());
        inv
    }

    pub(super) async fn record_ping(
        &self,
        peer: &str,
        rtt_ms: Option<u32>,
        load: Option<Load>,
    ) -> Result<(), StoreError> {
        match rtt_ms {
            Some(rtt) => {
                // Only the replica holding the lease pings, so this read and
                // the write below do not race another writer of `rtt`.
                let f = self.fields(peer).await?;
                if f.seen.is_none() {
                    return Ok(());
                }
                let mut pairs = vec![
                    ("rtt", smooth_rtt(f.rtt, rtt).to_string()),
                    ("fails", "0".to_string()),
                ];
                if let Some(l) = load {
                    pairs.push(("active", l.active.to_string()));
                    pairs.push(("limit", l.limit.to_string()));
                    pairs.push(("pending", "0".to_string()));
                }
                self.set_if_exists(peer, &pairs).await
            }
            None => {
                let mut c = self.conn.clone();
                let fails: i64 = self
                    .scripts
                    .fail_ping
                    .key(self.k("peer", peer))
                    .invoke_async(&mut c)
                    .await
                    .map_err(unavailable)?;
                if fails > 0 && ping_failures_drop(u32::try_from(fails).unwrap_or(u32::MAX)) {
                    self.drop_invocation(peer, None)
                        .invoke_async::<()>(&mut c)
                        .await
                        .map_err(unavailable)?;
                }
                Ok(())
            }
        }
    }

    /// Drops peers not heard from within the TTL (read from the `seen` set, a
    /// batch at a time) and objects nobody announced for twice the TTL.
    pub(super) async fn expire(&self, now: u64) -> Result<(), StoreError> {
        let fresh_from = self.fresh_from(now);
        let mut c = self.conn.clone();
        for _ in 0..EXPIRE_BATCHES {
            let ids: Vec<String> = redis::cmd("ZRANGEBYSCORE")
                .arg(self.set_key("seen"))
                .arg("-inf")
                .arg(format!("({fresh_from}"))
                .arg("LIMIT")
                .arg(0)
                .arg(EXPIRE_BATCH)
                .query_async(&mut c)
                .await
                .map_err(unavailable)?;
            for id in &ids {
                self.drop_invocation(id, Some(fresh_from))
                    .invoke_async::<()>(&mut c)
                    .await
                    .map_err(unavailable)?;
            }
            if ids.len() < EXPIRE_BATCH {
                break;
            }
        }
        redis::cmd("ZREMRANGEBYSCORE")
            .arg(self.set_key("objects"))
            .arg("-inf")
            .arg(format!("({}", now.saturating_sub(self.ttl2())))
            .query_async::<()>(&mut c)
            .await
            .map_err(unavailable)
    }

    pub(super) async fn stats(&self, now: u64) -> Result<TableStats, StoreError> {
        let from = self.fresh_from(now);
        let mut pipe = redis::pipe();
        pipe.zcount(self.set_key("seen"), from, "+inf")
            .zcount(self.set_key("serving"), from, "+inf")
            .zcard(self.set_key("objects"))
            .zcard(self.set_key("delisted"));
        let mut c = self.conn.clone();
        let (peers, serving_peers, objects, delisted): (usize, usize, usize, usize) =
            pipe.query_async(&mut c).await.map_err(unavailable)?;
        Ok(TableStats {
            peers,
            serving_peers,
            objects,
            delisted,
        })
    }

    pub(super) async fn peer_rows(&self, now: u64) -> Result<Vec<PeerRow>, StoreError> {
        let mut ids = self
            .ids_since("seen", self.fresh_from(now), MAX_PEERS_SCANNED)
            .await?;
        ids.extend(self.ids_since("delisted", 0, MAX_PEERS_SCANNED).await?);
        ids.sort();
        ids.dedup();
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
        Ok(ids
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
            .collect())
    }

    /// Takes or renews the lease for pinging and expiry; true while this
    /// replica holds it.
    pub async fn lead(&self) -> Result<bool, StoreError> {
        let mut c = self.conn.clone();
        let got: i64 = self
            .scripts
            .lease
            .key(self.set_key("lease"))
            .arg(&self.me)
            .arg(LEASE_MS)
            .invoke_async(&mut c)
            .await
            .map_err(unavailable)?;
        Ok(got == 1)
    }

    /// Adds this replica's counter `deltas` (name, amount) to the totals all
    /// replicas share; with `sample_at` (unix seconds) appends a history
    /// sample of the totals. Returns the totals and the history.
    pub async fn share_figures(
        &self,
        deltas: &[(&str, u64)],
        sample_at: Option<u64>,
    ) -> Result<SharedFigures, StoreError> {
        let mut inv = self.scripts.figures.prepare_invoke();
        inv.key(self.set_key("figures"))
            .key(self.set_key("history"))
            .arg(deltas.len());
        for (name, _) in deltas {
            inv.arg(*name);
        }
        for (_, d) in deltas {
            inv.arg(*d);
        }
        inv.arg(sample_at.map(|s| s.to_string()).unwrap_or_default())
            .arg(HISTORY_KEPT);
        let mut c = self.conn.clone();
        let (totals, history): (Vec<i64>, Vec<String>) =
            inv.invoke_async(&mut c).await.map_err(unavailable)?;
        let as_u64 = |v: i64| u64::try_from(v).unwrap_or(0);
        Ok(SharedFigures {
            totals: totals.into_iter().map(as_u64).collect(),
            history: history
                .iter()
                .filter_map(|s| {
                    let mut it = s.split(',').map(|n| n.parse::<u64>().ok());
                    let at = it.next().flatten()?;
                    let vals: Option<Vec<u64>> = it.collect();
                    Some((at, vals?))
                })
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_urls_split_into_seeds() {
        assert_eq!(cluster_seeds("redis://a:1"), None);
        assert_eq!(
            cluster_seeds("redis+cluster://a:1,b:2").unwrap(),
            ["redis://a:1", "redis://b:2"]
        );
        assert_eq!(
            cluster_seeds("rediss+cluster://u:p@a:1,b:2/?insecure").unwrap(),
            ["rediss://u:p@a:1?insecure", "rediss://u:p@b:2?insecure"]
        );
    }

    #[test]
    fn keys_share_the_prefix_tag() {
        assert_eq!(tagged("pc:"), "{pc}:");
        assert_eq!(tagged("suite"), "{suite}:");
    }
}
