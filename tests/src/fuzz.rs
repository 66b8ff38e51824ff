//! Fuzz targets for every parser that takes bytes from outside the process, and
//! the engine that feeds them (used by the `peercache-fuzz` binary for long runs
//! and by `tests/tests/fuzz.rs` for a short pass in CI). See `docs/fuzzing.md`.
//!
//! Inputs come from a seeded PRNG (splitmix64), either as random bytes or as
//! *mutations of valid examples*: bits flipped, bytes inserted, deleted or
//! duplicated, pieces of other examples spliced in, numbers set to extremes,
//! strings filled with odd escapes, JSON nested thousands deep. Each input gets:
//! - no panic (every call runs under `catch_unwind`);
//! - bounded allocation (no single allocation over [`MAX_ALLOC`], as counted by
//!   [`CountingAlloc`] when a binary installs it) and bounded time;
//! - the target's properties: what parses round-trips (`parse(serialize(x)) == x`),
//!   a record or request that verifies is the one that was signed, and so on.
//!
//! Input `i` of worker `w` is generated from its own seed, so any input can be
//! made again from `(seed, target, worker, i)` (the watchdog does so on a hang).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::{Cell, RefCell};
use std::fmt::Debug;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

use peercache_core::auth::{AuthHeader, is_peer_key, peer_id_of, sign_request};
use peercache_core::decide::{Egress, Inputs, explain};
use peercache_core::explain::Explanation;
use peercache_core::extension::{Gateway, MAX_SITES, Settings, in_scope, origin_of};
use peercache_core::hash::ObjectHash;
use peercache_core::headers::{
    Advertisement, ClientHeader, ObjectHeader, decode_record, encode_record, parse_range,
};
use peercache_core::peer::{
    DialInfo, LocateResponse, MAX_DIRECT_ADDRS, MAX_FRAME, PeerRequest, PeerResponse, PeerStatus,
    decode_frame, encode_frame, frame_len, is_relay_url,
};
use peercache_core::protocol::{
    Announce, AnnounceResponse, Counters, EnabledSite, FromHost, HostLimits, Load, ObjectInfo,
    Outcome, Proxy, RecentPeer, Referral, RegisterRequest, RegisterResponse, RelayInfo, Report,
    ServerKey, ToHost,
};
use peercache_core::range::{RangeChoice, choose_range, span};
use peercache_core::record::{ObjectRecord, RecordError, RecordSigner, SignedRecord};
use peercache_core::units::{parse_duration, parse_size};
use peercache_core::verified::{
    GROUP, group_count, group_len, outboard, verify_group, verify_outboard,
};
use peercache_host::lan::LanMessage;
use peercache_host::native::{Inbound, read_frames};
use serde::Serialize;
use serde::de::DeserializeOwned;

// ---------------------------------------------------------------------------
// Randomness

/// splitmix64: small, fast, and good enough to drive mutations.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }

    /// True one time in `n`.
    pub fn one_in(&mut self, n: u64) -> bool {
        self.next_u64().is_multiple_of(n.max(1))
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Mixes seeds into one (so streams for different targets and workers differ).
pub fn mix(a: u64, b: u64) -> u64 {
    Rng::new(a ^ b.rotate_left(29) ^ 0xD1B5_4A32_D192_ED03).next_u64()
}

// ---------------------------------------------------------------------------
// Allocation and panics

/// Largest single allocation an input may cause before it counts as unbounded.
pub const MAX_ALLOC: usize = 4 << 20;
/// Longest input the generator makes.
pub const MAX_INPUT: usize = 96 * 1024;

thread_local! {
    static LARGEST_ALLOC: Cell<usize> = const { Cell::new(0) };
    static IN_FUZZ: Cell<bool> = const { Cell::new(false) };
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// The system allocator, noting the largest single allocation per thread. A
/// binary that installs it (`#[global_allocator]`) gets unbounded allocations
/// reported as failures.
pub struct CountingAlloc;

static COUNTING: AtomicBool = AtomicBool::new(false);

fn note(size: usize) {
    let _ = LARGEST_ALLOC.try_with(|m| {
        if size > m.get() {
            m.set(size);
        }
    });
}

// SAFETY: every call is forwarded unchanged to `System`; the bookkeeping only
// touches a const-initialised thread-local `Cell`, which never allocates.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        COUNTING.store(true, Ordering::Relaxed);
        note(layout.size());
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: same contract as ours.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// True when [`CountingAlloc`] is the global allocator (allocations are checked).
pub fn allocations_counted() -> bool {
    COUNTING.load(Ordering::Relaxed)
}

fn install_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if IN_FUZZ.with(Cell::get) {
                let text = info.to_string();
                LAST_PANIC.with(|p| *p.borrow_mut() = Some(text));
            } else {
                previous(info);
            }
        }));
    });
}

// ---------------------------------------------------------------------------
// Targets

/// One parser (or a few parsing the same bytes) and what must hold for it.
pub struct Target {
    /// Name for `--target`.
    pub name: &'static str,
    /// What it feeds, to what.
    pub about: &'static str,
    /// Valid inputs to mutate.
    pub seeds: fn() -> Vec<Vec<u8>>,
    /// Tokens worth splicing in.
    pub dict: &'static [&'static str],
    /// The input is JSON (deep nesting and string escapes are tried).
    pub json: bool,
    /// Runs the parser; `Ok(true)` when the input was accepted, `Err` when a
    /// property failed.
    pub check: fn(&[u8]) -> Result<bool, String>,
    /// Inputs for the CI pass (verifying signatures is slow in debug builds).
    pub ci_inputs: u64,
}

const JSON_DICT: &[&str] = &[
    "null",
    "true",
    "false",
    "\"\"",
    "{}",
    "[]",
    "[[]]",
    "{\"\":{}}",
    ",",
    ":",
    "\"",
    "\\",
    "\\u0000",
    "\\ud800",
    "\\udfff",
    "\\ud83d\\ude00",
    "1e400",
    "-0",
    "0.0",
    "\"type\"",
    "\"op\"",
    "\"status\"",
    "\"t\"",
    "\"hash\"",
    "\"record\"",
    "\"load\"",
    "\"url\"",
    "\"size\"",
    "\"range\"",
    "\"peer_id\"",
    "\"sites\"",
];

const HEADER_DICT: &[&str] = &[
    ";",
    "=",
    "\"",
    " ",
    "\t",
    ",",
    "-",
    "id=",
    "bw=",
    "blake3=",
    "size=",
    "scope=",
    "ts=",
    "sig=",
    "bytes=",
    "v=1",
    "/",
    "..",
    "é",
    "\u{10FFFF}",
    "\0",
    "\r\n",
    "%",
    "?",
    "#",
    "*",
];

fn str_of(data: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(data)
}

fn json<T: Serialize>(x: &T) -> Vec<u8> {
    serde_json::to_vec(x).unwrap_or_default()
}

/// `parse(serialize(x)) == x`.
fn round_trip<T: Serialize + DeserializeOwned + PartialEq + Debug>(x: &T) -> Result<(), String> {
    let text = serde_json::to_vec(x).map_err(|e| format!("{x:?} does not serialize: {e}"))?;
    let back: T = serde_json::from_slice(&text).map_err(|e| {
        format!(
            "{x:?} serializes to {} which does not parse: {e}",
            String::from_utf8_lossy(&text)
        )
    })?;
    if &back != x {
        return Err(format!("round trip turned {x:?} into {back:?}"));
    }
    Ok(())
}

/// Parses as `T`; what parses must round-trip.
fn json_as<T: Serialize + DeserializeOwned + PartialEq + Debug>(
    data: &[u8],
) -> Result<bool, String> {
    match serde_json::from_slice::<T>(data) {
        Ok(x) => round_trip(&x).map(|()| true),
        Err(_) => Ok(false),
    }
}

fn hash() -> ObjectHash {
    ObjectHash::of(b"hello")
}

fn load() -> Option<Load> {
    Some(Load {
        active: 1,
        limit: 4,
    })
}

const AUTH_SECRET: [u8; 32] = [7; 32];
const RECORD_SECRET: [u8; 32] = [9; 32];

fn signer() -> RecordSigner {
    RecordSigner::from_secret(RECORD_SECRET)
}

/// The pinned server key (hex).
fn pinned() -> &'static str {
    static PINNED: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PINNED.get_or_init(|| signer().public_hex())
}

/// The records the pinned key signed (made once: signing is slow in debug builds).
fn records() -> &'static [SignedRecord] {
    static RECORDS: std::sync::OnceLock<Vec<SignedRecord>> = std::sync::OnceLock::new();
    RECORDS.get_or_init(make_records)
}

fn make_records() -> Vec<SignedRecord> {
    let s = signer();
    vec![
        s.sign(ObjectRecord {
            url: "https://example.org/static/app.js".into(),
            hash: hash(),
            size: 5,
            content_type: "text/javascript".into(),
            expires: 2_000_000_000,
        }),
        s.sign(ObjectRecord {
            url: "http://127.0.0.1:8080/a b?\u{e9}#x".into(),
            hash: ObjectHash::of(b""),
            size: u64::MAX,
            content_type: String::new(),
            expires: u64::MAX,
        }),
    ]
}

fn proxy() -> Proxy {
    Proxy {
        id: peer_id_of(&AUTH_SECRET),
        addr:
            "peer:?relay=https://198.51.100.2:8443/&direct=198.51.100.7:5000&direct=[2001:db8::1]:9"
                .into(),
        direct: Some(true),
        rtt_ms: Some(12),
        load: load(),
    }
}

fn to_host_examples() -> Vec<ToHost> {
    vec![
        ToHost::Hello {
            version: "0.1.0".into(),
        },
        ToHost::Config {
            enabled: true,
            sites: vec![
                EnabledSite {
                    origin: "https://example.org".into(),
                    scope: "/static/".into(),
                },
                EnabledSite {
                    origin: "http://127.0.0.1:8080".into(),
                    scope: "/".into(),
                },
            ],
        },
        ToHost::Limits {
            max_uploads: 8,
            upload_rate: 1_000_000,
            cache_max: 2 << 30,
        },
        ToHost::GetStatus,
        ToHost::DirectReady {
            url: "https://example.org/static/x.js".into(),
        },
    ]
}

fn from_host_examples() -> Vec<FromHost> {
    let recent = Explanation {
        url: "https://example.org/a".into(),
        hash: Some(hash()),
        size: Some(5),
        path: "referred".into(),
        decision: Some(explain(&Inputs {
            size: 1 << 20,
            egress: Egress {
                limit_bytes_per_s: Some(1000),
                bytes_in_flight: 5,
            },
            client_bandwidth: Some(10),
            base_target_ms: 2000,
            usable_holders: 0,
            sending_this_object: 1,
        })),
        ..Explanation::default()
    };
    vec![
        FromHost::Hello {
            version: "0.1.0".into(),
            protocol: 1,
        },
        FromHost::Status {
            gateway_port: 4321,
            token: "tok".into(),
            peer_addr: "1.2.3.4:5".into(),
            peer_id: peer_id_of(&AUTH_SECRET),
            counters: Counters {
                bytes_from_peers: 1,
                bytes_from_server: 2,
                bytes_served: 3,
                verification_failures: 4,
                bytes_from_cache: 5,
            },
            limits: HostLimits {
                max_uploads: 8,
                upload_rate: 0,
                cache_max: 1,
                cache_bytes: 2,
            },
            peers: vec![RecentPeer {
                site: "https://example.org".into(),
                id: "p".into(),
                addr: "a".into(),
                bytes: 9,
                idle_secs: 1,
            }],
            recent: vec![recent],
            doctor: vec![peercache_core::doctor::reach(
                "https://example.org",
                &Err("connection refused".into()),
            )],
        },
        FromHost::NotShareable {
            url: "https://example.org/x".into(),
            reason: "Set-Cookie".into(),
        },
        FromHost::Event {
            kind: "fetched".into(),
            detail: "d".into(),
        },
        FromHost::Error {
            message: "m".into(),
        },
    ]
}

fn native_frame(body: &[u8]) -> Vec<u8> {
    let mut f = u32::try_from(body.len())
        .unwrap_or(u32::MAX)
        .to_ne_bytes()
        .to_vec();
    f.extend_from_slice(body);
    f
}

fn native_seeds() -> Vec<Vec<u8>> {
    let msgs: Vec<Vec<u8>> = to_host_examples().iter().map(json).collect();
    let mut out: Vec<Vec<u8>> = msgs.iter().map(|m| native_frame(m)).collect();
    out.push(msgs.iter().flat_map(|m| native_frame(m)).collect());
    let mut big = u32::try_from(64 * 1024 + 1)
        .unwrap_or(u32::MAX)
        .to_ne_bytes()
        .to_vec();
    big.extend(std::iter::repeat_n(b'x', 64 * 1024 + 1));
    big.extend(native_frame(&msgs[0]));
    out.push(big);
    out.push(native_frame(&[0xff, 0xfe, b'{']));
    out
}

fn check_native(data: &[u8]) -> Result<bool, String> {
    let (tx, mut rx) = tokio::sync::mpsc::channel(1 << 16);
    read_frames(std::io::Cursor::new(data), &tx);
    drop(tx);
    let (mut items, mut accepted) = (0usize, false);
    while let Ok(item) = rx.try_recv() {
        items += 1;
        if let Inbound::Message(text) = item {
            if text.len() > peercache_host::native::MAX_FRAME {
                return Err(format!("a message of {} bytes passed the cap", text.len()));
            }
            if let Ok(m) = serde_json::from_str::<ToHost>(&text) {
                round_trip(&m)?;
                accepted = true;
            }
        }
    }
    if items > data.len() / 4 + 1 {
        return Err(format!("{items} items from {} bytes", data.len()));
    }
    Ok(accepted)
}

fn to_host_seeds() -> Vec<Vec<u8>> {
    to_host_examples().iter().map(json).collect()
}

fn from_host_seeds() -> Vec<Vec<u8>> {
    from_host_examples().iter().map(json).collect()
}

fn peer_requests() -> Vec<PeerRequest> {
    vec![
        PeerRequest::Ping,
        PeerRequest::Outboard { hash: hash() },
        PeerRequest::Have { hash: hash() },
        PeerRequest::Object {
            hash: hash(),
            range: Some((1, 2)),
            remaining: Some(u64::MAX),
        },
        PeerRequest::Object {
            hash: hash(),
            range: None,
            remaining: None,
        },
        PeerRequest::locate(
            "https://example.org/a",
            "https://example.org",
            3,
            "0123456789abcdef",
        ),
    ]
}

fn peer_responses() -> Vec<PeerResponse> {
    vec![
        PeerResponse::body(100, load()),
        PeerResponse {
            status: PeerStatus::Ok,
            load: None,
            size: Some(1 << 40),
            body_len: 1 << 40,
        },
        PeerResponse::status(PeerStatus::NotHeld, None),
        PeerResponse::status(
            PeerStatus::Busy {
                retry_after_ms: 1000,
            },
            load(),
        ),
        PeerResponse::status(PeerStatus::RateLimited { retry_after_ms: 5 }, None),
        PeerResponse::status(PeerStatus::RangeNotSatisfiable, None),
        PeerResponse::status(PeerStatus::BadRequest { reason: "x".into() }, None),
    ]
}

fn locate_example() -> LocateResponse {
    LocateResponse {
        record: records().first().cloned(),
        holders: vec![proxy()],
    }
}

fn peer_frame_seeds() -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = peer_requests().iter().map(encode_frame).collect();
    out.extend(peer_responses().iter().map(encode_frame));
    out.push(encode_frame(&locate_example()));
    out.push(peer_requests().iter().flat_map(encode_frame).collect());
    out
}

/// The stream a peer reads (`peercache_net::wire::read_frame`): a length
/// checked by `frame_len` before anything is allocated, then that much JSON.
fn check_peer_frames(data: &[u8]) -> Result<bool, String> {
    let mut rest = data;
    let mut accepted = false;
    while let Some((prefix, tail)) = rest.split_first_chunk::<4>() {
        let Ok(len) = frame_len(*prefix) else {
            return Ok(accepted);
        };
        if len > MAX_FRAME {
            return Err(format!("frame_len let {len} bytes through"));
        }
        let Some(body) = tail.get(..len) else {
            return Ok(accepted);
        };
        rest = &tail[len..];
        if let Ok(r) = decode_frame::<PeerRequest>(body) {
            accepted = true;
            round_trip(&r)?;
            frame_round_trip(&r)?;
        }
        if let Ok(r) = decode_frame::<PeerResponse>(body) {
            accepted = true;
            round_trip(&r)?;
            frame_round_trip(&r)?;
        }
        if let Ok(r) = decode_frame::<LocateResponse>(body) {
            accepted = true;
            round_trip(&r)?;
        }
    }
    Ok(accepted)
}

fn frame_round_trip<T: Serialize + DeserializeOwned + PartialEq + Debug>(
    x: &T,
) -> Result<(), String> {
    let f = encode_frame(x);
    let prefix: [u8; 4] = f
        .first_chunk::<4>()
        .copied()
        .ok_or("a frame without its prefix")?;
    let len = frame_len(prefix).map_err(|e| format!("{x:?}: {e}"))?;
    if len != f.len() - 4 {
        return Err(format!(
            "{x:?}: prefix says {len}, frame has {}",
            f.len() - 4
        ));
    }
    let back: T = decode_frame(&f[4..]).map_err(|e| format!("{x:?}: {e}"))?;
    if &back != x {
        return Err(format!("frame round trip turned {x:?} into {back:?}"));
    }
    Ok(())
}

fn dial_seeds() -> Vec<Vec<u8>> {
    [
        "peer:?relay=https://198.51.100.2:8443/&direct=198.51.100.7:5000&direct=[2001:db8::1]:9",
        "peer:?",
        "peer:?direct=1.2.3.4:5&direct=1.2.3.4:6&direct=1.2.3.4:7&direct=1.2.3.4:8",
        "peer:?relay=http://relay.example/&",
        "peer:?direct=[fe80::1%2]:443",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

fn check_dial(data: &[u8]) -> Result<bool, String> {
    let s = str_of(data);
    let Ok(info) = DialInfo::parse(&s) else {
        return Ok(false);
    };
    if info.direct.len() > MAX_DIRECT_ADDRS {
        return Err(format!("{} direct addresses", info.direct.len()));
    }
    if let Some(r) = &info.relay
        && !is_relay_url(r)
    {
        return Err(format!("relay {r:?} passed"));
    }
    let text = info.to_dial_string();
    match DialInfo::parse(&text) {
        Ok(back) if back == info => {}
        other => return Err(format!("{info:?} as {text:?} parses as {other:?}")),
    }
    let _ = info.display();
    round_trip(&info)?;
    Ok(true)
}

fn server_seeds() -> Vec<Vec<u8>> {
    let id = peer_id_of(&AUTH_SECRET);
    let record = records().first().cloned();
    vec![
        json(&RegisterRequest {
            peer_id: id.clone(),
            dial: DialInfo::parse(
                "peer:?relay=https://198.51.100.2:8443/&direct=198.51.100.7:5000",
            )
            .ok(),
            port: Some(5000),
            load: load(),
        }),
        json(&RegisterResponse {
            peer_id: id.clone(),
            addr: Some("peer:?direct=198.51.100.7:5000".into()),
            ttl_secs: 120,
            relays: vec![RelayInfo {
                url: "https://198.51.100.2:8443/".into(),
                qad_port: Some(7842),
            }],
        }),
        json(&Announce {
            peer_id: id.clone(),
            have: vec![hash(), ObjectHash::of(b"")],
            dropped: vec![hash()],
            load: load(),
        }),
        json(&AnnounceResponse {
            accepted: vec![hash()],
            rejected: vec![],
            ttl_secs: 60,
        }),
        json(&Report {
            peer_id: id.clone(),
            hash: hash(),
            source: "server".into(),
            outcome: Outcome::Mismatch,
            bytes: 10,
            duration_ms: 20,
            direct: Some(false),
        }),
        json(&Referral {
            object: ObjectInfo {
                url: "https://example.org/static/app.js".into(),
                size: 5,
                hash: hash(),
                content_type: "text/javascript".into(),
            },
            proxies: vec![proxy(), proxy()],
            server: "https://example.org".into(),
            target_period_ms: 2000,
            target_speed: 10,
            record,
            why: Some(explain(&Inputs {
                size: 5,
                usable_holders: 2,
                ..Inputs::default()
            })),
            headers: vec![("cache-control".into(), "max-age=60".into())],
        }),
        json(&ServerKey {
            public_key: pinned().to_string(),
            rotations: vec![],
        }),
        json(&locate_example()),
    ]
}

fn check_server(data: &[u8]) -> Result<bool, String> {
    let results = [
        json_as::<RegisterRequest>(data)?,
        json_as::<RegisterResponse>(data)?,
        json_as::<Announce>(data)?,
        json_as::<AnnounceResponse>(data)?,
        json_as::<Report>(data)?,
        json_as::<Referral>(data)?,
        json_as::<ServerKey>(data)?,
        json_as::<LocateResponse>(data)?,
    ];
    Ok(results.iter().any(|&r| r))
}

fn lines(data: &[u8], n: usize) -> Vec<String> {
    let text = str_of(data);
    let mut parts: Vec<String> = text.splitn(n, '\n').map(str::to_string).collect();
    parts.resize(n, String::new());
    parts
}

fn client_seeds() -> Vec<Vec<u8>> {
    [
        "id=abc-1; bw=1000000",
        "v=1",
        "bw=18446744073709551615",
        "id=\"x_y\";bw=\"5\"; extra=1",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

fn object_seeds() -> Vec<Vec<u8>> {
    vec![
        ObjectHeader {
            hash: hash(),
            size: 5,
        }
        .to_header_value()
        .into_bytes(),
        format!("size=\"18446744073709551615\"; BLAKE3=\"{}\"", hash()).into_bytes(),
    ]
}

fn ad_seeds() -> Vec<Vec<u8>> {
    ["scope=\"/static/\"", "scope=/", "x=1; scope=\"/a/b c\""]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect()
}

fn check_headers(data: &[u8]) -> Result<bool, String> {
    let s = str_of(data);
    let mut accepted = false;
    if let Ok(c) = ClientHeader::parse(&s) {
        accepted = true;
        let back = ClientHeader::parse(&c.to_header_value());
        if back.as_ref() != Ok(&c) {
            return Err(format!("{c:?} comes back as {back:?}"));
        }
    }
    if let Ok(o) = ObjectHeader::parse(&s) {
        accepted = true;
        let back = ObjectHeader::parse(&o.to_header_value());
        if back != Ok(o) {
            return Err(format!("{o:?} comes back as {back:?}"));
        }
    }
    if let Ok(a) = Advertisement::parse(&s) {
        accepted = true;
        if !a.scope.starts_with('/') || a.scope.contains("..") {
            return Err(format!("scope {:?} passed", a.scope));
        }
        let back = Advertisement::parse(&a.to_header_value());
        if back.as_ref() != Ok(&a) {
            return Err(format!("{a:?} comes back as {back:?}"));
        }
    }
    Ok(accepted)
}

fn range_seeds() -> Vec<Vec<u8>> {
    [
        "1000\nbytes=0-99\n\n\"abc\"",
        "1000\nbytes=900-\n\"abc\"\n\"abc\"",
        "1000\nbytes=-100\n\"old\"\n\"abc\"",
        "0\nbytes=0-\n\n\"abc\"",
        "18446744073709551615\nbytes=18446744073709551614-18446744073709551615\n\n\"e\"",
        "5\nbytes=0-1,3-4\n\n\"e\"",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

/// `size \n Range \n If-Range \n ETag` (an empty If-Range line means none).
fn check_range(data: &[u8]) -> Result<bool, String> {
    let [size, range, if_range, etag]: [String; 4] = lines(data, 4)
        .try_into()
        .map_err(|_| "lines() gave the wrong count")?;
    let size = size.trim().parse::<u64>().unwrap_or(size.len() as u64);
    let if_range = (!if_range.is_empty()).then_some(if_range.as_bytes());
    let parsed = parse_range(&range, size);
    if let Ok((first, last)) = parsed {
        if first > last || last >= size {
            return Err(format!("parse_range gave {first}-{last} of {size}"));
        }
        if span(Some((first, last)), size) != Some((first, last - first + 1)) {
            return Err(format!("span refuses {first}-{last} of {size}"));
        }
    }
    let choice = choose_range(Some(&range), if_range, &etag, size);
    let version_matches = if_range.is_none_or(|t| t == etag.as_bytes());
    match choice {
        RangeChoice::Part { first, last } if parsed != Ok((first, last)) => {
            return Err(format!(
                "choose_range gave {first}-{last}, parse_range {parsed:?}"
            ));
        }
        RangeChoice::Whole | RangeChoice::NotSatisfiable if parsed.is_ok() && version_matches => {
            return Err(format!("{choice:?} although parse_range gave {parsed:?}"));
        }
        RangeChoice::Part { .. } | RangeChoice::NotSatisfiable if !version_matches => {
            return Err(format!("{choice:?} for another version"));
        }
        _ => {}
    }
    if choose_range(None, if_range, &etag, size) != RangeChoice::Whole {
        return Err("no Range header but not the whole object".into());
    }
    Ok(parsed.is_ok())
}

fn record_header_seeds() -> Vec<Vec<u8>> {
    records()
        .iter()
        .map(|r| encode_record(r).into_bytes())
        .collect()
}

fn check_record_header(data: &[u8]) -> Result<bool, String> {
    let Some(r) = decode_record(&str_of(data)) else {
        return Ok(false);
    };
    let text = encode_record(&r);
    if decode_record(&text).as_ref() != Some(&r) {
        return Err(format!("{r:?} does not come back from {text:?}"));
    }
    check_signed(&r)?;
    Ok(true)
}

/// A record that verifies against the pinned key is one the key signed: same
/// hash, same URL, same everything.
fn check_signed(r: &SignedRecord) -> Result<(), String> {
    let pinned = pinned();
    for now in [0, r.record.expires, u64::MAX] {
        match r.verify(pinned, &r.record.url, now) {
            Ok(ok) if !records().iter().any(|s| &s.record == ok) => {
                return Err(format!("{ok:?} verifies but was never signed"));
            }
            Err(RecordError::BadSignature | RecordError::BadKey) => break,
            _ => {}
        }
    }
    // Garbage keys and URLs: refused, never a panic.
    let garbage = [
        String::new(),
        r.signature.clone(),
        r.record.url.clone(),
        "00".repeat(32),
        "ff".repeat(32),
        pinned.to_uppercase(),
        format!("{pinned}0"),
    ];
    for key in &garbage {
        let res = r.verify(key, &r.record.url, 0);
        let same_key = peercache_core::hash::decode_hex::<32>(key)
            == peercache_core::hash::decode_hex::<32>(pinned);
        if res.is_ok() && !same_key {
            return Err(format!("verifies under key {key:?}"));
        }
    }
    Ok(())
}

fn record_seeds() -> Vec<Vec<u8>> {
    records().iter().map(json).collect()
}

fn check_record(data: &[u8]) -> Result<bool, String> {
    let Ok(r) = serde_json::from_slice::<SignedRecord>(data) else {
        return Ok(false);
    };
    round_trip(&r)?;
    check_signed(&r)?;
    Ok(r.verify(pinned(), &r.record.url, 0).is_ok())
}

/// What the auth target's seeds sign: method, path, ts, body.
fn auth_examples() -> Vec<(&'static str, &'static str, u64, &'static [u8])> {
    vec![
        ("POST", "/v1/announce", 1_000_000, b"{\"peer_id\":\"x\"}"),
        ("post", "/v1/peers", 5, b""),
        ("GET", "/v1/report?x=\u{e9}", u64::MAX, b"\0\xff"),
    ]
}

fn auth_seeds() -> Vec<Vec<u8>> {
    auth_examples()
        .into_iter()
        .map(|(m, p, ts, body)| {
            let mut v = format!(
                "{m}\n{p}\n{ts}\n{}\n",
                sign_request(&AUTH_SECRET, m, p, ts, body)
            )
            .into_bytes();
            v.extend_from_slice(body);
            v
        })
        .collect()
}

/// `method \n path \n now \n header \n body`.
fn check_auth(data: &[u8]) -> Result<bool, String> {
    let mut parts = data.splitn(5, |&b| b == b'\n');
    let mut next = || parts.next().unwrap_or_default();
    let (method, path, now, header, body) = (next(), next(), next(), next(), next());
    let (method, path, header) = (str_of(method), str_of(path), str_of(header));
    let now = str_of(now).trim().parse::<u64>().unwrap_or(0);
    let Ok(h) = AuthHeader::parse(&header) else {
        return Ok(false);
    };
    if !is_peer_key(&h.id) {
        return Err(format!("id {:?} passed", h.id));
    }
    let again = format!("sig={}; id={}; ts={}", to_hex(&h.sig), h.id, h.ts);
    if AuthHeader::parse(&again).as_ref() != Ok(&h) {
        return Err(format!("{h:?} does not come back from {again:?}"));
    }
    for now in [now, h.ts] {
        if h.verify(&method, &path, body, now).is_ok() {
            let signed = auth_examples().into_iter().any(|(m, p, ts, b)| {
                method.to_ascii_uppercase() == m.to_ascii_uppercase()
                    && p == path
                    && ts == h.ts
                    && b == body
            });
            if !signed || h.id != peer_id_of(&AUTH_SECRET) {
                return Err(format!(
                    "{method} {path} ts={} verifies but was never signed",
                    h.ts
                ));
            }
        }
    }
    Ok(true)
}

fn lan_seeds() -> Vec<Vec<u8>> {
    vec![
        json(&LanMessage::WhoHas {
            d: peercache_core::peer::lan_digest("https://example.org/a"),
            qid: "0123456789abcdef".into(),
            pad: "-".repeat(64),
        }),
        json(&LanMessage::IHave {
            qid: "q".into(),
            id: peer_id_of(&AUTH_SECRET),
            port: 47777,
            record: records().first().cloned(),
        }),
        json(&LanMessage::IHave {
            qid: "q".into(),
            id: "x".into(),
            port: 0,
            record: None,
        }),
    ]
}

fn check_lan(data: &[u8]) -> Result<bool, String> {
    let accepted = json_as::<LanMessage>(data)?;
    if let Ok(LanMessage::IHave {
        record: Some(r), ..
    }) = serde_json::from_slice(data)
    {
        check_signed(&r)?;
    }
    Ok(accepted)
}

fn units_seeds() -> Vec<Vec<u8>> {
    [
        "10MiB",
        "4096",
        "5MB",
        "1GiB",
        "64 KiB",
        "0",
        "500ms",
        "2s",
        "5m",
        "1h",
        "18446744073709551615",
        "18446744073709551615ms",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

fn check_units(data: &[u8]) -> Result<bool, String> {
    let s = str_of(data);
    let mut accepted = false;
    if let Ok(n) = parse_size(&s) {
        accepted = true;
        if parse_size(&n.to_string()) != Ok(n) {
            return Err(format!("size {n} does not come back"));
        }
    }
    if let Ok(d) = parse_duration(&s) {
        accepted = true;
        let ms = u64::try_from(d.as_millis()).map_err(|_| format!("{d:?} is over u64 ms"))?;
        if parse_duration(&format!("{ms}ms")) != Ok(d) {
            return Err(format!("duration {d:?} does not come back"));
        }
    }
    Ok(accepted)
}

fn settings_example() -> Settings {
    let mut s = Settings {
        access: peercache_core::extension::HostAccess::everywhere(),
        ..Settings::default()
    };
    s.advertised("https://example.org/a", "scope=\"/static/\"");
    s.advertised("http://127.0.0.1:8080/", "scope=/");
    s.set_site_enabled("https://example.org", true);
    s.fetch_directly("https://example.org/static/private.js#frag");
    s
}

fn extension_seeds() -> Vec<Vec<u8>> {
    let settings = json(&settings_example());
    [
        "https://Example.ORG:443/static/app.js?x#y\nscope=\"/static/\"\n",
        "http://[::1]:80/\nscope=/\n",
        "HTTP://a:443:443/x\nscope=\"/a\"\n",
    ]
    .iter()
    .map(|s| {
        let mut v = s.as_bytes().to_vec();
        v.extend_from_slice(&settings);
        v
    })
    .collect()
}

/// `url \n Peercache header \n Settings JSON`: the extension's origin rule, an
/// advertisement seen on a response, and stored settings turned into rules.
fn check_extension(data: &[u8]) -> Result<bool, String> {
    let [url, header, settings]: [String; 3] = lines(data, 3)
        .try_into()
        .map_err(|_| "lines() gave the wrong count")?;
    let origin = origin_of(&url);
    if let Some(o) = &origin {
        if !(o.starts_with("https://") || o.starts_with("http://"))
            || o.bytes().any(|b| b.is_ascii_uppercase())
        {
            return Err(format!("origin {o:?} of {url:?}"));
        }
        if origin_of(o).as_ref() != Some(o) {
            return Err(format!(
                "origin {o:?} of {url:?} has the origin {:?}",
                origin_of(o)
            ));
        }
    }
    let mut s = match serde_json::from_slice::<Settings>(settings.as_bytes()) {
        Ok(s) => {
            round_trip(&s)?;
            s
        }
        Err(_) => settings_example(),
    };
    let before = s.sites.len();
    let changed = s.advertised(&url, &header);
    if changed {
        let (Some(o), Ok(ad)) = (&origin, Advertisement::parse(&header)) else {
            return Err("advertised() took what origin_of or the header parse refuse".into());
        };
        if s.sites.get(o).map(|e| &e.scope) != Some(&ad.scope) {
            return Err(format!("site {o:?} not recorded with scope {:?}", ad.scope));
        }
        if before < MAX_SITES && s.sites.len() > MAX_SITES {
            return Err(format!("{} sites", s.sites.len()));
        }
    }
    let gw = Gateway {
        port: 4321,
        token: "tok".into(),
    };
    let granted = s.sites.keys().cloned().collect();
    let rules = s.rules(Some(&gw), &granted);
    if let Some(g) = s.gateway_url(Some(&gw), &url) {
        if !g.starts_with("http://127.0.0.1:4321/g/") {
            return Err(format!("gateway URL {g:?}"));
        }
        let o = origin.as_deref().unwrap_or_default();
        if !s.enabled_sites().iter().any(|e| e.origin == o) || rules.is_empty() {
            return Err(format!("{url:?} sent to the gateway for no enabled site"));
        }
    }
    let _ = s.fetch_directly(&url);
    let _ = in_scope(&url, &header);
    Ok(origin.is_some() || changed)
}

/// Reference objects for the verified-streaming target.
struct Object {
    data: Vec<u8>,
    hash: ObjectHash,
    outboard: Vec<u8>,
}

fn objects() -> &'static [Object] {
    static OBJECTS: std::sync::OnceLock<Vec<Object>> = std::sync::OnceLock::new();
    OBJECTS.get_or_init(|| {
        [0usize, 100, 16 * 1024, 16 * 1024 + 1, 40_000, 70_000]
            .iter()
            .map(|&len| {
                let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
                Object {
                    hash: ObjectHash::of(&data),
                    outboard: outboard(&data),
                    data,
                }
            })
            .collect()
    })
}

fn verified_seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for (i, o) in objects().iter().enumerate() {
        let sel = u8::try_from(i).unwrap_or(0);
        // Mode 0: the outboard. Mode 1: group `index` of the data.
        let mut v = vec![sel, 0];
        v.extend_from_slice(&(o.data.len() as u64).to_le_bytes());
        v.extend_from_slice(&0u64.to_le_bytes());
        v.extend_from_slice(&o.outboard);
        out.push(v);
        for g in 0..group_count(o.data.len() as u64) {
            let start = (g * GROUP) as usize;
            let end = (start + GROUP as usize).min(o.data.len());
            let mut v = vec![sel, 1];
            v.extend_from_slice(&(o.data.len() as u64).to_le_bytes());
            v.extend_from_slice(&g.to_le_bytes());
            v.extend_from_slice(&o.data[start..end]);
            out.push(v);
        }
    }
    out
}

/// `object (1 byte) | mode (1) | size (u64 LE) | index (u64 LE) | payload`:
/// mode even checks the payload as the object's outboard, odd as group `index`.
fn check_verified(data: &[u8]) -> Result<bool, String> {
    let objs = objects();
    let Some((head, payload)) = data.split_first_chunk::<18>() else {
        return Ok(false);
    };
    let o = &objs[head[0] as usize % objs.len()];
    let le = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap_or([0; 8]));
    let (size, index) = (le(&head[2..10]), le(&head[10..18]));
    let real = o.data.len() as u64;
    if head[1] % 2 == 0 {
        return match verify_outboard(&o.hash, size, payload) {
            Ok(cvs) if size > GROUP => {
                if payload != o.outboard || group_count(size) != group_count(real) {
                    return Err(format!("a false outboard verifies for size {size}"));
                }
                if cvs.len() as u64 != group_count(size) {
                    return Err("wrong number of CVs".into());
                }
                Ok(true)
            }
            Ok(cvs) => {
                if !payload.is_empty() || !cvs.is_empty() {
                    return Err("a small object with an outboard".into());
                }
                Ok(true)
            }
            Err(_) => Ok(false),
        };
    }
    let cvs = verify_outboard(&o.hash, real, &o.outboard)
        .map_err(|e| format!("the reference outboard fails: {e}"))?;
    let ok = verify_group(&o.hash, size, &cvs, index, payload);
    if ok {
        let start = usize::try_from(index.saturating_mul(GROUP)).unwrap_or(usize::MAX);
        let end = start.saturating_add(payload.len());
        if o.data.get(start..end) != Some(payload) || payload.len() as u64 != group_len(real, index)
        {
            return Err(format!(
                "group {index} of {} bytes verifies for size {size} but is not the object's",
                payload.len()
            ));
        }
    }
    Ok(ok)
}

/// Every target.
pub fn targets() -> &'static [Target] {
    &TARGETS
}

/// The target named `name`.
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

static TARGETS: [Target; 15] = [
    Target {
        name: "native-frames",
        about: "the host's stdin: 32-bit native-endian length + JSON (native::read_frames), each message as ToHost",
        seeds: native_seeds,
        dict: JSON_DICT,
        json: false,
        check: check_native,
        ci_inputs: 3000,
    },
    Target {
        name: "to-host",
        about: "ToHost messages from the extension (serde_json), round trip",
        seeds: to_host_seeds,
        dict: JSON_DICT,
        json: true,
        check: |d| json_as::<ToHost>(d),
        ci_inputs: 4000,
    },
    Target {
        name: "from-host",
        about: "FromHost messages (status, with explanations), round trip",
        seeds: from_host_seeds,
        dict: JSON_DICT,
        json: true,
        check: |d| json_as::<FromHost>(d),
        ci_inputs: 3000,
    },
    Target {
        name: "peer-frames",
        about: "peer streams: frame_len + decode_frame as PeerRequest, PeerResponse, LocateResponse; round trips",
        seeds: peer_frame_seeds,
        dict: JSON_DICT,
        json: false,
        check: check_peer_frames,
        ci_inputs: 3000,
    },
    Target {
        name: "dial-info",
        about: "DialInfo::parse (peer:?relay=…&direct=…), round trip",
        seeds: dial_seeds,
        dict: &[
            "&",
            "=",
            "relay=",
            "direct=",
            "https://",
            "http://",
            "[::1]:1",
            "1.2.3.4:5",
            "%",
            "[fe80::1%4294967295]:65535",
            ":",
        ],
        json: false,
        check: check_dial,
        ci_inputs: 4000,
    },
    Target {
        name: "server-json",
        about: "server messages: RegisterRequest/Response, Announce/Response, Report, Referral, ServerKey, LocateResponse; round trips",
        seeds: server_seeds,
        dict: JSON_DICT,
        json: true,
        check: check_server,
        ci_inputs: 3000,
    },
    Target {
        name: "headers",
        about: "ClientHeader, ObjectHeader and Advertisement parse; round trips",
        seeds: || {
            let mut v = client_seeds();
            v.extend(object_seeds());
            v.extend(ad_seeds());
            v
        },
        dict: HEADER_DICT,
        json: false,
        check: check_headers,
        ci_inputs: 4000,
    },
    Target {
        name: "range",
        about: "parse_range and choose_range (Range, If-Range, ETag, size)",
        seeds: range_seeds,
        dict: HEADER_DICT,
        json: false,
        check: check_range,
        ci_inputs: 4000,
    },
    Target {
        name: "record-header",
        about: "decode_record (Peercache-Record hex), round trip, then verify",
        seeds: record_header_seeds,
        dict: &["0", "f", "7b", "7d", "22", "5c", "00", "ff", "zz"],
        json: false,
        check: check_record_header,
        ci_inputs: 1000,
    },
    Target {
        name: "record",
        about: "SignedRecord JSON, verify against the pinned key and garbage keys",
        seeds: record_seeds,
        dict: JSON_DICT,
        json: true,
        check: check_record,
        ci_inputs: 600,
    },
    Target {
        name: "auth",
        about: "Peercache-Auth parse and verify (method, path, now, header, body)",
        seeds: auth_seeds,
        dict: HEADER_DICT,
        json: false,
        check: check_auth,
        ci_inputs: 600,
    },
    Target {
        name: "lan",
        about: "LanMessage (who_has / i_have) JSON, round trip, records verified",
        seeds: lan_seeds,
        dict: JSON_DICT,
        json: true,
        check: check_lan,
        ci_inputs: 1000,
    },
    Target {
        name: "units",
        about: "parse_size and parse_duration, round trips",
        seeds: units_seeds,
        dict: &[
            "KiB", "MiB", "GiB", "kB", "MB", "GB", "ms", "s", "m", "h", " ", "B", "+", "-",
        ],
        json: false,
        check: check_units,
        ci_inputs: 4000,
    },
    Target {
        name: "extension",
        about: "origin_of, Settings::advertised, Settings JSON and its rules",
        seeds: extension_seeds,
        dict: JSON_DICT,
        json: false,
        check: check_extension,
        ci_inputs: 2000,
    },
    Target {
        name: "verified",
        about: "verify_outboard and verify_group with random sizes, indexes and bytes",
        seeds: verified_seeds,
        dict: &["\0\0\0\0\0\0\0\0", "\u{7f}"],
        json: false,
        check: check_verified,
        ci_inputs: 1500,
    },
];

/// Hex text of an input (as saved and as the regression corpus holds it).
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes from hex text (whitespace ignored).
pub fn from_hex(text: &str) -> Option<Vec<u8>> {
    let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    digits
        .chunks(2)
        .map(|pair| {
            let s = std::str::from_utf8(pair).ok()?;
            if s.len() == 2 {
                u8::from_str_radix(s, 16).ok()
            } else {
                None
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Mutation

const INTERESTING_NUMBERS: &[&str] = &[
    "0",
    "-1",
    "1",
    "255",
    "256",
    "65535",
    "65536",
    "4294967295",
    "4294967296",
    "9007199254740991",
    "9007199254740993",
    "9223372036854775807",
    "9223372036854775808",
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775808",
    "99999999999999999999999999999",
    "1e308",
    "1e999",
    "-0",
    "0.5",
    "1E2",
    "00",
    "+1",
];

const INTERESTING_BYTES: &[u8] = &[
    0, 0xff, 0x7f, 0x80, 0xc3, 0xe9, b'"', b'\\', b'{', b'}', b'[', b']', b',', b':', b';', b'=',
    b' ', b'\n', b'0', b'9', b'-', b'&', b'/', b'%',
];

const ODD_STRINGS: &[&str] = &[
    "\\u0000",
    "\\ud800",
    "\\udc00x",
    "\\ud83d\\ude00",
    "\\\"",
    "\\\\",
    "\\/",
    "\\n",
    "é",
    "\u{10FFFF}",
    "\u{202e}",
];

/// One input for `target`, from `rng`.
pub fn generate(rng: &mut Rng, seeds: &[Vec<u8>], target: &Target) -> Vec<u8> {
    let mut v = match rng.below(32) {
        0 => {
            let cap = if rng.one_in(8) { 4096 } else { 256 };
            let len = rng.below(cap);
            (0..len).map(|_| rng.next_u64() as u8).collect()
        }
        1 => {
            const ALPHABET: &[u8] = b"{}[]\":,0123456789-.eE truefalsnul\\abcdefxyz;=/&?#";
            let len = rng.below(256);
            (0..len).map(|_| *rng.pick(ALPHABET)).collect()
        }
        _ => rng.pick(seeds).clone(),
    };
    let rounds = if rng.one_in(3) { 1 } else { 1 + rng.below(8) };
    for _ in 0..rounds {
        mutate(rng, &mut v, seeds, target);
    }
    v.truncate(MAX_INPUT);
    v
}

fn mutate(rng: &mut Rng, v: &mut Vec<u8>, seeds: &[Vec<u8>], target: &Target) {
    let len = v.len();
    let at = rng.below(len + 1);
    match rng.below(if target.json { 16 } else { 14 }) {
        0 if len > 0 => {
            let i = rng.below(len);
            v[i] ^= 1 << rng.below(8);
        }
        1 if len > 0 => {
            let i = rng.below(len);
            v[i] = rng.next_u64() as u8;
        }
        2 if len > 0 => {
            let i = rng.below(len);
            v[i] = *rng.pick(INTERESTING_BYTES);
        }
        3 => {
            let n = 1 + rng.below(8);
            let bytes: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
            v.splice(at..at, bytes);
        }
        4 if len > 0 => {
            let n = 1 + rng.below((len - at.min(len - 1)).min(64));
            let start = at.min(len - 1);
            v.drain(start..(start + n).min(len));
        }
        5 if len > 0 => {
            let start = rng.below(len);
            let n = 1 + rng.below((len - start).min(256));
            let piece = v[start..start + n].to_vec();
            let times = if rng.one_in(16) { 1 + rng.below(64) } else { 1 };
            for _ in 0..times {
                let at = rng.below(v.len() + 1);
                v.splice(at..at, piece.iter().copied());
            }
        }
        6 => {
            // Splice a piece of another example.
            let other = rng.pick(seeds);
            if !other.is_empty() {
                let start = rng.below(other.len());
                let n = 1 + rng.below(other.len() - start);
                v.splice(at..at, other[start..start + n].iter().copied());
            }
        }
        7 => {
            // Crossover: our head, another example's tail.
            let other = rng.pick(seeds);
            let from = rng.below(other.len() + 1);
            v.truncate(at);
            v.extend_from_slice(&other[from..]);
        }
        8 => {
            let token = rng.pick(target.dict).as_bytes();
            v.splice(at..at, token.iter().copied());
        }
        9 => replace_number(rng, v),
        10 if len > 0 => v.truncate(rng.below(len)),
        11 => {
            // A string: odd escapes, or very long.
            let Some(q) = find_from(v, rng.below(len + 1), b'"') else {
                return;
            };
            let fill: Vec<u8> = if rng.one_in(4) {
                vec![b'a'; 1 + rng.below(20_000)]
            } else {
                rng.pick(ODD_STRINGS).as_bytes().to_vec()
            };
            v.splice(q + 1..q + 1, fill);
        }
        12 if len > 0 && rng.one_in(8) => {
            // The whole input again, to long lengths.
            let copy = v.clone();
            for _ in 0..rng.below(64) {
                v.extend_from_slice(&copy);
                if v.len() > MAX_INPUT {
                    break;
                }
            }
        }
        13 => {
            // Length prefixes of both byte orders, big or small.
            let n: u32 = *rng.pick(&[0, 1, 4, 0xffff, 0x4000, 0x4001, 0x10000, 0x10001, u32::MAX]);
            let bytes = if rng.one_in(2) {
                n.to_be_bytes()
            } else {
                n.to_le_bytes()
            };
            if len >= 4 && rng.one_in(2) {
                let i = rng.below(len - 3);
                v[i..i + 4].copy_from_slice(&bytes);
            } else {
                v.splice(at..at, bytes);
            }
        }
        14 | 15 => nest(rng, v, at),
        _ => {}
    }
}

fn find_from(v: &[u8], from: usize, b: u8) -> Option<usize> {
    v.get(from..)?
        .iter()
        .position(|&x| x == b)
        .map(|i| from + i)
        .or_else(|| v.iter().position(|&x| x == b))
}

fn replace_number(rng: &mut Rng, v: &mut Vec<u8>) {
    let start = rng.below(v.len() + 1);
    let Some(first) = (start..v.len())
        .chain(0..start)
        .find(|&i| v[i].is_ascii_digit())
    else {
        return;
    };
    let mut a = first;
    while a > 0 && (v[a - 1].is_ascii_digit() || v[a - 1] == b'-') {
        a -= 1;
    }
    let mut b = first;
    while b < v.len() && (v[b].is_ascii_digit() || matches!(v[b], b'.' | b'e' | b'E')) {
        b += 1;
    }
    let n = rng.pick(INTERESTING_NUMBERS).as_bytes();
    v.splice(a..b, n.iter().copied());
}

fn nest(rng: &mut Rng, v: &mut Vec<u8>, at: usize) {
    let depth = *rng.pick(&[2usize, 20, 100, 126, 127, 128, 129, 200, 1000, 5000, 20_000]);
    let (open, close): (&[u8], &[u8]) = match rng.below(3) {
        0 => (b"[", b"]"),
        1 => (b"{\"a\":", b"}"),
        _ => (b"{\"sites\":[", b"]}"),
    };
    let mut out = Vec::with_capacity(v.len() + depth * (open.len() + close.len()));
    let wrap_all = rng.one_in(2);
    let (head, tail) = if wrap_all {
        (&v[..0], &v[..])
    } else {
        v.split_at(at.min(v.len()))
    };
    out.extend_from_slice(head);
    for _ in 0..depth {
        out.extend_from_slice(open);
    }
    out.extend_from_slice(if wrap_all { tail } else { b"1" });
    if rng.one_in(4) {
        // Left open: the parser meets the end first.
    } else {
        for _ in 0..depth {
            out.extend_from_slice(close);
        }
    }
    if !wrap_all {
        out.extend_from_slice(tail);
    }
    *v = out;
}

// ---------------------------------------------------------------------------
// Running

/// One input that broke a property, panicked, allocated too much or took too long.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The target.
    pub target: &'static str,
    /// The input.
    pub input: Vec<u8>,
    /// What went wrong.
    pub message: String,
}

/// Runs one input through `target`: `Ok(accepted)` or what went wrong.
pub fn check_one(target: &Target, input: &[u8]) -> Result<bool, String> {
    install_hook();
    LARGEST_ALLOC.with(|m| m.set(0));
    IN_FUZZ.with(|f| f.set(true));
    let result = catch_unwind(AssertUnwindSafe(|| (target.check)(input)));
    IN_FUZZ.with(|f| f.set(false));
    let largest = LARGEST_ALLOC.with(Cell::get);
    match result {
        Err(_) => Err(format!(
            "panic: {}",
            LAST_PANIC
                .with(|p| p.borrow_mut().take())
                .unwrap_or_else(|| "(no message)".into())
        )),
        Ok(_) if largest > MAX_ALLOC => Err(format!(
            "one allocation of {largest} bytes for an input of {} bytes",
            input.len()
        )),
        Ok(r) => r,
    }
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Inputs run.
    pub inputs: u64,
    /// Inputs the parser accepted.
    pub accepted: u64,
    /// The slowest input.
    pub slowest: Duration,
    /// What failed (at most [`MAX_FAILURES`] kept).
    pub failures: Vec<Failure>,
    /// Wall time.
    pub elapsed: Duration,
}

/// Failures kept per run.
pub const MAX_FAILURES: usize = 20;

/// How to run a target.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Base seed.
    pub seed: u64,
    /// Inputs in total (split over the threads).
    pub iterations: u64,
    /// Worker threads.
    pub threads: usize,
    /// An input slower than this is a failure.
    pub max_input_time: Duration,
    /// An input still running after this is a hang: `on_hang` is called with it.
    pub hang_after: Duration,
}

fn worker_seed(seed: u64, target: &Target, worker: usize) -> u64 {
    let name = target.name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    mix(mix(seed, name), worker as u64)
}

/// Input `i` of worker `worker` (the same bytes every time).
pub fn input_at(seed: u64, target: &Target, worker: usize, i: u64, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut rng = Rng::new(mix(worker_seed(seed, target, worker), i));
    generate(&mut rng, seeds, target)
}

/// Runs `target` as `config` says. `on_hang(input)` is called from a watchdog
/// thread when an input runs longer than `hang_after` (the caller may save it
/// and exit: a hung parser cannot be interrupted).
pub fn run(target: &'static Target, config: &RunConfig, on_hang: fn(&Failure)) -> Stats {
    let seeds = Arc::new((target.seeds)());
    let threads = config.threads.max(1);
    let start = Instant::now();
    let done = Arc::new(AtomicBool::new(false));
    // Per worker: (input index + 1, start in ms since `start`), 0 when idle.
    let progress: Arc<Vec<(AtomicU64, AtomicU64)>> = Arc::new(
        (0..threads)
            .map(|_| (AtomicU64::new(0), AtomicU64::new(0)))
            .collect(),
    );
    let watchdog = {
        let (done, progress, seeds, config) = (
            done.clone(),
            progress.clone(),
            seeds.clone(),
            config.clone(),
        );
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                std::thread::park_timeout(Duration::from_millis(200));
                let now = start.elapsed().as_millis() as u64;
                for (w, (index, began)) in progress.iter().enumerate() {
                    let (i, t) = (index.load(Ordering::Relaxed), began.load(Ordering::Relaxed));
                    if i > 0 && now.saturating_sub(t) > config.hang_after.as_millis() as u64 {
                        let input = input_at(config.seed, target, w, i - 1, &seeds);
                        on_hang(&Failure {
                            target: target.name,
                            message: format!(
                                "hang: input {} of worker {w} ran over {:?}",
                                i - 1,
                                config.hang_after
                            ),
                            input,
                        });
                        index.store(0, Ordering::Relaxed);
                    }
                }
            }
        })
    };
    let per = config.iterations.div_ceil(threads as u64);
    let workers: Vec<_> = (0..threads)
        .map(|w| {
            let (seeds, progress, config) = (seeds.clone(), progress.clone(), config.clone());
            std::thread::spawn(move || {
                let mut stats = Stats::default();
                let first = per * w as u64;
                let last = (first + per).min(config.iterations);
                let wseed = worker_seed(config.seed, target, w);
                for i in 0..last.saturating_sub(first) {
                    let mut rng = Rng::new(mix(wseed, i));
                    let input = generate(&mut rng, &seeds, target);
                    progress[w]
                        .1
                        .store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
                    progress[w].0.store(i + 1, Ordering::Relaxed);
                    let t0 = Instant::now();
                    let result = check_one(target, &input);
                    let took = t0.elapsed();
                    progress[w].0.store(0, Ordering::Relaxed);
                    stats.inputs += 1;
                    stats.slowest = stats.slowest.max(took);
                    let failure = match result {
                        Ok(accepted) => {
                            stats.accepted += u64::from(accepted);
                            (took > config.max_input_time)
                                .then(|| format!("slow: {took:?} for one input"))
                        }
                        Err(message) => Some(message),
                    };
                    if let Some(message) = failure
                        && stats.failures.len() < MAX_FAILURES
                    {
                        stats.failures.push(Failure {
                            target: target.name,
                            input,
                            message,
                        });
                    }
                }
                stats
            })
        })
        .collect();
    let mut total = Stats::default();
    for w in workers {
        let Ok(s) = w.join() else { continue };
        total.inputs += s.inputs;
        total.accepted += s.accepted;
        total.slowest = total.slowest.max(s.slowest);
        total.failures.extend(s.failures);
    }
    total.failures.truncate(MAX_FAILURES);
    total.elapsed = start.elapsed();
    done.store(true, Ordering::Relaxed);
    watchdog.thread().unpark();
    let _ = watchdog.join();
    total
}
