//! Benchmarks of the coordination server (results go into BENCHMARKS.md).
//!
//! ```text
//! cargo run --release -p peercache-tests --bin peercache-bench -- table
//! cargo run --release -p peercache-tests --bin peercache-bench -- table-redis
//! cargo run --release -p peercache-tests --bin peercache-bench -- latency
//! cargo run --release -p peercache-tests --bin peercache-bench -- nat
//! cargo run --release -p peercache-tests --bin peercache-bench -- flash-crowd --n 8,16,32
//! ```
//! `latency` needs `cargo build --release --bins` first (it starts the real server).

mod crowd;
mod nat;

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use peercache_core::decide::{Egress, decide};
use peercache_core::hash::ObjectHash;
use peercache_core::protocol::Load;
use peercache_server::store::{MemoryStore, RedisStore, Store, StoreLimits};

fn limits() -> StoreLimits {
    StoreLimits {
        ttl_ms: 3_600_000,
        max_strikes: 3,
        slow_threshold_ms: 500,
    }
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map_or(0, |pages| pages * 4096)
}

fn hash(i: u64) -> ObjectHash {
    ObjectHash::of(&i.to_le_bytes())
}

const IP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));

/// Fills a store with `peers` peers and `objects` objects, `holders` holders each.
async fn fill(store: &Store, peers: u64, objects: u64, holders: u64) -> anyhow::Result<()> {
    let now = 1;
    for p in 0..peers {
        store
            .register(
                &format!("peer{p}"),
                IP,
                Some(format!("peer:?direct=10.0.0.1:{}", 10_000 + (p % 50_000))),
                Some(Load {
                    active: 0,
                    limit: 1_000_000,
                }),
                now,
            )
            .await?;
    }
    // Peer p holds objects o where o % peers in [p, p + holders).
    let per_peer = objects * holders / peers;
    for p in 0..peers {
        let hashes: Vec<ObjectHash> = (0..per_peer)
            .map(|k| {
                let o = (k * peers + p) / holders;
                hash(o % objects)
            })
            .collect();
        for chunk in hashes.chunks(5_000) {
            store
                .announce(&format!("peer{p}"), chunk, &[], None, now)
                .await?;
        }
    }
    Ok(())
}

/// Referral decisions per second from `tasks` concurrent tasks, each a
/// look-up of a random object's holders, their ranking, the booking against the
/// first one's load, and `decide`.
async fn decisions_per_sec(
    store: &std::sync::Arc<Store>,
    objects: u64,
    seconds: f64,
    tasks: usize,
) -> anyhow::Result<(f64, usize)> {
    let egress = Egress {
        limit_bytes_per_s: Some(10 << 20),
        bytes_in_flight: 50 << 20,
    };
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for t in 0..tasks {
        let store = store.clone();
        set.spawn(async move {
            let mut n = 0u64;
            let mut referred = 0usize;
            let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ (t as u64 + 1).wrapping_mul(0x2545_F491);
            while started.elapsed().as_secs_f64() < seconds {
                for _ in 0..1000 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let h = hash(x % objects);
                    let list = store.holders(&h, Some("client"), 2, 8).await?;
                    if decide(1 << 20, egress, None, 2000, list.len())
                        == peercache_core::decide::Decision::Refer
                    {
                        referred += 1;
                    }
                    n += 1;
                }
            }
            anyhow::Ok((n, referred))
        });
    }
    let (mut n, mut referred) = (0u64, 0usize);
    while let Some(r) = set.join_next().await {
        let (tn, tr) = r??;
        n += tn;
        referred += tr;
    }
    Ok((n as f64 / started.elapsed().as_secs_f64(), referred))
}

async fn table_memory(objects: u64, peers: u64, holders: u64) -> anyhow::Result<()> {
    let before = rss_bytes();
    let store = Store::Memory(MemoryStore::new(limits()));
    let t = Instant::now();
    fill(&store, peers, objects, holders).await?;
    let filled = t.elapsed();
    let after = rss_bytes();
    let entries = objects * holders;
    println!(
        "memory backend: {objects} objects, {peers} peers, {entries} holder entries, filled in {:.1} s",
        filled.as_secs_f64()
    );
    println!(
        "memory backend: RSS +{:.0} MiB = {:.0} bytes per holder entry",
        (after - before) as f64 / (1 << 20) as f64,
        (after - before) as f64 / entries as f64
    );
    let store = std::sync::Arc::new(store);
    let (rate, referred) = decisions_per_sec(&store, objects, 5.0, 1).await?;
    println!(
        "memory backend: {rate:.0} referral decisions/s on one core (look-up + ranking + decide; {referred} referrals)"
    );
    Ok(())
}

async fn redis_info_memory(url: &str) -> anyhow::Result<u64> {
    let client = redis::Client::open(url)?;
    let mut c = client.get_multiplexed_async_connection().await?;
    let info: String = redis::cmd("INFO").arg("memory").query_async(&mut c).await?;
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .context("no used_memory in INFO")
}

/// The reference for the Redis figure: plain `GET`s (one round trip each) from
/// `tasks` concurrent tasks through one multiplexed connection, as the store uses.
async fn plain_gets_per_sec(url: &str, seconds: f64, tasks: usize) -> anyhow::Result<f64> {
    let client = redis::Client::open(url)?;
    let conn = client.get_multiplexed_async_connection().await?;
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..tasks {
        let mut c = conn.clone();
        set.spawn(async move {
            let mut n = 0u64;
            while started.elapsed().as_secs_f64() < seconds {
                for _ in 0..1000 {
                    let _: Option<String> = redis::cmd("GET")
                        .arg("bench:ref")
                        .query_async(&mut c)
                        .await?;
                    n += 1;
                }
            }
            anyhow::Ok(n)
        });
    }
    let mut n = 0;
    while let Some(r) = set.join_next().await {
        n += r??;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

async fn table_redis(objects: u64, peers: u64, holders: u64) -> anyhow::Result<()> {
    let redis = peercache_tests::spawn_redis().await?;
    let before = redis_info_memory(&redis.url()).await?;
    let store = Store::Redis(RedisStore::connect(&redis.url(), "bench:", limits()).await?);
    let t = Instant::now();
    fill(&store, peers, objects, holders).await?;
    let filled = t.elapsed();
    let after = redis_info_memory(&redis.url()).await?;
    let entries = objects * holders;
    println!(
        "redis backend: {objects} objects, {peers} peers, {entries} holder entries, filled in {:.1} s",
        filled.as_secs_f64()
    );
    println!(
        "redis backend: used_memory +{:.0} MiB = {:.0} bytes per holder entry",
        (after - before) as f64 / (1 << 20) as f64,
        (after - before) as f64 / entries as f64
    );
    let store = std::sync::Arc::new(store);
    for tasks in [1, 4] {
        let (rate, referred) = decisions_per_sec(&store, objects, 5.0, tasks).await?;
        let gets = plain_gets_per_sec(&redis.url(), 5.0, tasks).await?;
        println!(
            "redis backend: {rate:.0} referral decisions/s from {tasks} concurrent task(s) ({referred} referrals); \
             reference in the same run: {gets:.0} plain GETs/s (one round trip each) from {tasks} task(s); ratio {:.2}",
            rate / gets
        );
    }
    Ok(())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn run_wave(
    url: &str,
    header: Option<&str>,
    concurrency: usize,
    per_task: usize,
) -> anyhow::Result<(Vec<Duration>, f64, Vec<u16>)> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()?;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let client = client.clone();
        let url = url.to_string();
        let header = header.map(String::from);
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::with_capacity(per_task);
            for _ in 0..per_task {
                let t = Instant::now();
                let mut req = client.get(&url);
                if let Some(h) = &header {
                    req = req.header("Peercache-Client", h);
                }
                let status = match req.send().await {
                    Ok(r) => {
                        let s = r.status().as_u16();
                        let _ = r.bytes().await;
                        s
                    }
                    Err(_) => 0,
                };
                out.push((t.elapsed(), status));
            }
            out
        }));
    }
    let mut lat = Vec::new();
    let mut statuses = Vec::new();
    for t in tasks {
        for (d, s) in t.await? {
            lat.push(d);
            statuses.push(s);
        }
    }
    let rps = lat.len() as f64 / started.elapsed().as_secs_f64();
    lat.sort();
    Ok((lat, rps, statuses))
}

async fn latency() -> anyhow::Result<()> {
    let dir = peercache_tests::TempDir::new("bench-latency");
    let body = peercache_tests::test_bytes(16 * 1024, 5);
    let root = peercache_tests::make_site(&dir, &[("obj.bin", &body)]);
    let server = peercache_tests::spawn_server(
        &root,
        &[
            "--egress-limit",
            "1MiB",
            "--target-period",
            "0s",
            "--ping-interval",
            "0s",
        ],
    )
    .await?;
    // One registered holder, listed the way a real peer gets listed.
    let holder = peercache_tests::TestKey::new(1);
    peercache_tests::register_and_fetch(&server.url, &holder, Some(40000), "/static/obj.bin")
        .await?;
    let h = ObjectHash::of(&body).to_hex();
    let accepted =
        peercache_tests::announce(&server.url, &holder, &[h], Some((0, 1_000_000))).await?;
    if accepted.len() != 1 {
        bail!("holder not listed");
    }
    let url = format!("{}/static/obj.bin", server.url);
    let _ = run_wave(&url, Some("id=warm"), 50, 20).await?;
    let (lat, rps, statuses) = run_wave(&url, Some("id=client"), 500, 20).await?;
    let referrals = statuses.iter().filter(|s| **s == 300).count();
    println!(
        "referrals: 500 concurrent clients x 20 requests: {referrals}/{} answered 300, {rps:.0} req/s, p50 {:.1} ms, p99 {:.1} ms",
        lat.len(),
        percentile(&lat, 0.5).as_secs_f64() * 1000.0,
        percentile(&lat, 0.99).as_secs_f64() * 1000.0
    );
    // The same server answering the same path with the 16 KiB file (no referral header).
    let plain = peercache_tests::spawn_server(&root, &["--ping-interval", "0s"]).await?;
    let (plat, prps, pstat) =
        run_wave(&format!("{}/static/obj.bin", plain.url), None, 500, 20).await?;
    println!(
        "plain 200s of the 16 KiB file from peercache-server: {}/{} ok, {prps:.0} req/s, p50 {:.1} ms, p99 {:.1} ms",
        pstat.iter().filter(|s| **s == 200).count(),
        plat.len(),
        percentile(&plat, 0.5).as_secs_f64() * 1000.0,
        percentile(&plat, 0.99).as_secs_f64() * 1000.0
    );
    if let Some(nginx) = nginx(&root).await? {
        let (nlat, nrps, nstat) = run_wave(
            &format!("http://127.0.0.1:{}/static/obj.bin", nginx.1),
            None,
            500,
            20,
        )
        .await?;
        println!(
            "nginx static 200s of the same file: {}/{} ok, {nrps:.0} req/s, p50 {:.1} ms, p99 {:.1} ms",
            nstat.iter().filter(|s| **s == 200).count(),
            nlat.len(),
            percentile(&nlat, 0.5).as_secs_f64() * 1000.0,
            percentile(&nlat, 0.99).as_secs_f64() * 1000.0
        );
        println!(
            "ratio: referral p99 / nginx p99 = {:.2}; referral req/s / nginx req/s = {:.2}",
            percentile(&lat, 0.99).as_secs_f64() / percentile(&nlat, 0.99).as_secs_f64(),
            rps / nrps
        );
        drop(nginx);
    }
    Ok(())
}

async fn timed_get(url: &str) -> anyhow::Result<(u64, Duration)> {
    let t = Instant::now();
    let mut r = reqwest::get(url).await?;
    if !r.status().is_success() {
        bail!("{url}: {}", r.status());
    }
    let mut n = 0u64;
    while let Some(chunk) = r.chunk().await? {
        n += chunk.len() as u64;
    }
    Ok((n, t.elapsed()))
}

/// Downloads `hash` whole from a peer over its QUIC connection (unverified: the
/// transport alone); returns the bytes and the time.
async fn timed_peer_get(
    dialer: &peercache_net::PeerDialer,
    id: &str,
    dial: &peercache_core::peer::DialInfo,
    hash: ObjectHash,
) -> anyhow::Result<(u64, Duration)> {
    let started = Instant::now();
    let (_, mut body) = dialer.object(id, dial, hash, None).await?;
    let mut n = 0u64;
    while let Some(chunk) = body.next_chunk().await? {
        n += chunk.len() as u64;
    }
    Ok((n, started.elapsed()))
}

/// CPU time (user + system) of process `pid` so far, in seconds (`/proc`).
fn cpu_seconds(pid: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the command name (which may hold spaces).
            let rest = s.rsplit_once(')')?.1.split_whitespace().collect::<Vec<_>>();
            let utime: f64 = rest.get(11)?.parse().ok()?;
            let stime: f64 = rest.get(12)?.parse().ok()?;
            Some((utime + stime) / 100.0)
        })
        .unwrap_or(0.0)
}

/// CPU seconds spent by `server` and by this process (the client) during `f`.
async fn with_cpu<T>(
    server: u32,
    f: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<(T, f64, f64)> {
    let (s0, c0) = (cpu_seconds(&server.to_string()), cpu_seconds("self"));
    let out = f.await?;
    let (s1, c1) = (cpu_seconds(&server.to_string()), cpu_seconds("self"));
    Ok((out, s1 - s0, c1 - c0))
}

/// Which build this is and how loaded the machine was at the start.
fn print_build_and_load() {
    println!(
        "build: {}; load average at start: {}",
        if cfg!(debug_assertions) {
            "DEBUG (use --release)"
        } else {
            "release"
        },
        loadavg()
    );
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Issue 12 point 4: what the host's gateway adds to a cached 48 KiB image,
/// without a browser: the same GET (kept-alive connection, whole body read)
/// straight from the site and through the gateway of a real host holding it,
/// alternating, 300 of each; medians and 90th percentiles.
async fn gateway_latency() -> anyhow::Result<()> {
    print_build_and_load();
    let dir = peercache_tests::TempDir::new("bench-gateway");
    let image = peercache_tests::test_bytes(48 * 1024, 11);
    let root = peercache_tests::make_site(&dir, &[("image.bin", &image)]);
    let server = peercache_tests::spawn_server(&root, &["--ping-interval", "0s"]).await?;
    let mut session =
        peercache_tests::NativeSession::start(&[("PEERCACHE_CACHE_DIR", &dir.join("cache"))])
            .await?;
    session
        .send(&serde_json::json!({"type": "hello", "version": "bench"}))
        .await?;
    let status = session.recv_type("status").await?;
    let port = status["gateway_port"].as_u64().context("gateway port")?;
    let token = status["token"].as_str().context("token")?.to_string();
    session
        .send(&serde_json::json!({"type": "config", "enabled": true,
            "sites": [{"origin": server.url, "scope": "/static/"}]}))
        .await?;
    session.recv_type("status").await?;
    let http = reqwest::Client::new();
    let via = format!("http://127.0.0.1:{port}/g/{}/static/image.bin", server.url);
    let direct = format!("{}/static/image.bin", server.url);
    let get = |url: String, gateway: bool| {
        let http = http.clone();
        let token = token.clone();
        async move {
            let mut req = http.get(&url);
            if gateway {
                req = req.header("x-peercache-token", token);
            }
            let t = Instant::now();
            let r = req.send().await?;
            let status = r.status();
            let source = r
                .headers()
                .get("peercache-source")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let body = r.bytes().await?;
            anyhow::Ok((t.elapsed(), status, source, body))
        }
    };
    // Once each first: the gateway's fetch fills the host's cache.
    for _ in 0..3 {
        let (_, status, _, body) = get(via.clone(), true).await?;
        ensure!(
            status.is_success() && body[..] == image[..],
            "gateway: {status}"
        );
        let (_, status, _, body) = get(direct.clone(), false).await?;
        ensure!(
            status.is_success() && body[..] == image[..],
            "site: {status}"
        );
    }
    let (mut through, mut straight) = (Vec::new(), Vec::new());
    let mut sources = std::collections::BTreeMap::<String, u32>::new();
    for _ in 0..300 {
        let (d, status, source, body) = get(via.clone(), true).await?;
        ensure!(status.is_success() && body.len() == image.len());
        *sources.entry(source).or_default() += 1;
        through.push(d.as_secs_f64() * 1000.0);
        let (d, status, _, body) = get(direct.clone(), false).await?;
        ensure!(status.is_success() && body.len() == image.len());
        straight.push(d.as_secs_f64() * 1000.0);
    }
    let pct = |v: &mut Vec<f64>, p: f64| {
        v.sort_by(f64::total_cmp);
        v[((v.len() - 1) as f64 * p).round() as usize]
    };
    let (s50, s90) = (pct(&mut straight, 0.5), pct(&mut straight, 0.9));
    let (t50, t90) = (pct(&mut through, 0.5), pct(&mut through, 0.9));
    println!("48 KiB image, 300 GETs each, alternating, one kept-alive client:");
    println!("  straight from the site:   p50 {s50:.2} ms, p90 {s90:.2} ms");
    println!("  through the host gateway: p50 {t50:.2} ms, p90 {t90:.2} ms ({sources:?})");
    println!(
        "  added by the gateway: p50 {:+.2} ms, p90 {:+.2} ms",
        t50 - s50,
        t90 - s90
    );
    drop(session);
    drop(server);
    Ok(())
}

/// Peer serving vs nginx (256 MiB object; 16 KiB objects), and a verified
/// download through the client protocol vs a plain download. Besides the
/// rates it prints the CPU time each side spent per MiB: on this shared
/// 2-core machine the rates follow the CPU left over by other work, the CPU
/// cost per byte does not.
async fn peer_serving() -> anyhow::Result<()> {
    print_build_and_load();
    let dir = peercache_tests::TempDir::new("bench-peer");
    let big = peercache_tests::test_bytes(256 << 20, 7);
    let small = peercache_tests::test_bytes(16 * 1024, 8);
    let root = peercache_tests::make_site(&dir, &[("big.bin", &big), ("small.bin", &small)]);
    let server = peercache_tests::spawn_server(
        &root,
        &[
            "--egress-limit",
            "1GiB",
            "--target-period",
            "0s",
            "--ping-interval",
            "0s",
        ],
    )
    .await?;
    for p in ["/static/big.bin", "/static/small.bin"] {
        let (ok, err) =
            peercache_tests::fetch_cli(&server.url, p, &dir.join("seed.out"), &dir.join("seed"))
                .await?;
        if !ok {
            bail!("{err}");
        }
    }
    let peer = peercache_tests::spawn_peer(
        &server.url,
        &dir.join("seed"),
        &["--max-uploads", "4096", "--requester-rate", "1000000"],
    )
    .await?;
    let peer_pid = peer.proc.child.id().unwrap_or(0);
    let (hb, hs) = (ObjectHash::of(&big), ObjectHash::of(&small));
    let dialer = peercache_tests::peer_dialer().await?;
    let dial = peer.dial();
    let nginx = nginx(&dir.join("seed")).await?;
    let nginx_pid = nginx.as_ref().and_then(|(g, _)| g.0.id()).unwrap_or(0);
    // 256 MiB, three runs each, best of three; CPU per MiB summed over the runs.
    let mut best_peer = f64::MAX;
    let mut best_nginx = f64::MAX;
    let (mut cpu_peer, mut cpu_nginx) = ((0.0, 0.0), (0.0, 0.0));
    for _ in 0..3 {
        let ((n, d), s, c) =
            with_cpu(peer_pid, timed_peer_get(&dialer, &peer.id, &dial, hb)).await?;
        assert_eq!(n, big.len() as u64);
        best_peer = best_peer.min(d.as_secs_f64());
        cpu_peer = (cpu_peer.0 + s, cpu_peer.1 + c);
        if let Some((_, port)) = &nginx {
            let ((n, d), s, c) = with_cpu(
                nginx_pid,
                timed_get(&format!("http://127.0.0.1:{port}/objects/{hb}")),
            )
            .await?;
            assert_eq!(n, big.len() as u64);
            best_nginx = best_nginx.min(d.as_secs_f64());
            cpu_nginx = (cpu_nginx.0 + s, cpu_nginx.1 + c);
        }
    }
    let per_mib = |cpu: f64| 1000.0 * cpu / (3.0 * 256.0);
    let peer_rate = 256.0 / best_peer;
    println!(
        "256 MiB from the peer: {peer_rate:.0} MiB/s (best of 3); CPU per MiB: peer {:.2} ms, client {:.2} ms",
        per_mib(cpu_peer.0),
        per_mib(cpu_peer.1)
    );
    if nginx.is_some() {
        let nginx_rate = 256.0 / best_nginx;
        println!(
            "256 MiB from nginx:    {nginx_rate:.0} MiB/s (best of 3); CPU per MiB: nginx {:.2} ms, client {:.2} ms; ratio peer/nginx = {:.2}",
            per_mib(cpu_nginx.0),
            per_mib(cpu_nginx.1),
            peer_rate / nginx_rate
        );
    }
    // 16 KiB objects, 64 concurrent requests on one QUIC connection.
    let dialer = std::sync::Arc::new(dialer);
    let small_wave = {
        let (dialer, id, dial) = (dialer.clone(), peer.id.clone(), dial.clone());
        async move {
            let started = Instant::now();
            let mut tasks = tokio::task::JoinSet::new();
            for _ in 0..64 {
                let (dialer, id, dial) = (dialer.clone(), id.clone(), dial.clone());
                tasks.spawn(async move {
                    let mut ok = 0u32;
                    for _ in 0..200 {
                        if timed_peer_get(&dialer, &id, &dial, hs)
                            .await
                            .is_ok_and(|(n, _)| n == 16 * 1024)
                        {
                            ok += 1;
                        }
                    }
                    ok
                });
            }
            let mut ok = 0;
            while let Some(n) = tasks.join_next().await {
                ok += n?;
            }
            Ok::<_, anyhow::Error>((ok, started.elapsed()))
        }
    };
    let ((ok, took), s, c) = with_cpu(peer_pid, small_wave).await?;
    let prps = f64::from(ok) / took.as_secs_f64();
    println!(
        "16 KiB objects from the peer: {prps:.0} req/s ({ok}/12800 ok); CPU per request: peer {:.0} µs, client {:.0} µs",
        1e6 * s / f64::from(ok.max(1)),
        1e6 * c / f64::from(ok.max(1))
    );
    if let Some((_, port)) = &nginx {
        let ((_, nrps, _), s, c) = with_cpu(
            nginx_pid,
            run_wave(
                &format!("http://127.0.0.1:{port}/objects/{hs}"),
                None,
                64,
                200,
            ),
        )
        .await?;
        println!(
            "16 KiB objects from nginx:    {nrps:.0} req/s; CPU per request: nginx {:.0} µs, client {:.0} µs; ratio peer/nginx = {:.2}",
            1e6 * s / 12800.0,
            1e6 * c / 12800.0,
            prps / nrps
        );
    }
    drop(nginx);
    // Verified download through the whole client protocol vs a plain download.
    let mut best_plain = f64::MAX;
    let mut best_verified = f64::MAX;
    for i in 0..3 {
        let (_, d) = timed_peer_get(&dialer, &peer.id, &dial, hb).await?;
        best_plain = best_plain.min(d.as_secs_f64());
        let t = Instant::now();
        let cache = dir.join(&format!("client{i}"));
        let (ok, err) =
            peercache_tests::fetch_cli(&server.url, "/static/big.bin", &dir.join("v.out"), &cache)
                .await?;
        if !ok || !err.contains("from peer") {
            bail!("verified download did not come from the peer: {err}");
        }
        best_verified = best_verified.min(t.elapsed().as_secs_f64());
        let _ = std::fs::remove_dir_all(&cache);
    }
    println!(
        "verified download of 256 MiB (fetch CLI: referral, probe, outboard, per-16-KiB BLAKE3 checks, cache write): {:.0} MiB/s; plain GET of the same bytes: {:.0} MiB/s; ratio {:.2}",
        256.0 / best_verified,
        256.0 / best_plain,
        best_plain / best_verified
    );
    println!("load average at the end: {}", loadavg());
    Ok(())
}

/// N clients fetch one 64 MiB object at once from a capped server; each serves
/// it (capped) as soon as it has it.
async fn flash_crowd(n: usize) -> anyhow::Result<()> {
    const F: u64 = 64 << 20;
    const U_SERVER: u64 = 16 << 20;
    const U_PEER: u64 = 32 << 20;
    let dir = peercache_tests::TempDir::new("bench-crowd");
    let data = peercache_tests::test_bytes(F as usize, 9);
    let root = peercache_tests::make_site(&dir, &[("v.bin", &data)]);
    let server = peercache_tests::spawn_server(
        &root,
        &[
            "--egress-limit",
            "16MiB",
            "--target-period",
            "1s",
            "--ping-interval",
            "0s",
        ],
    )
    .await?;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..n {
        let url = server.url.clone();
        let out = dir.join(&format!("out{i}"));
        let cache = dir.join(&format!("c{i}"));
        tasks.push(tokio::spawn(async move {
            let r = peercache_tests::fetch_cli(&url, "/static/v.bin", &out, &cache).await;
            let done = started.elapsed();
            let peer = match &r {
                Ok((true, _)) => peercache_tests::spawn_peer(
                    &url,
                    &cache,
                    &["--upload-limit", "32MiB", "--max-uploads", "4"],
                )
                .await
                .ok(),
                _ => None,
            };
            (r, done, peer)
        }));
    }
    let mut times = Vec::new();
    let mut peers = Vec::new();
    let mut from_peers = 0;
    for t in tasks {
        let (r, done, peer) = t.await?;
        let (ok, err) = r?;
        if !ok {
            bail!("{err}");
        }
        if err.contains("from peer") {
            from_peers += 1;
        }
        times.push(done.as_secs_f64());
        peers.extend(peer);
    }
    times.sort_by(f64::total_cmp);
    let m = peercache_tests::metrics(&server.admin_url).await?;
    let served = m
        .get("peercache_served_bytes_total")
        .copied()
        .unwrap_or(0.0);
    let total = (F as f64) * n as f64;
    let bound = (F as f64 / U_SERVER as f64)
        .max(n as f64 * F as f64 / (U_SERVER as f64 + n as f64 * U_PEER as f64));
    println!(
        "flash crowd N={n}: 64 MiB each, server capped at 16 MiB/s, peers at 32 MiB/s upload: completion min {:.1} s, median {:.1} s, max {:.1} s; lower bound {:.1} s (max/bound {:.1}); bytes from peers {:.0}% ({} of {n} clients mainly from peers)",
        times[0],
        times[times.len() / 2],
        times[times.len() - 1],
        bound,
        times[times.len() - 1] / bound,
        100.0 * (total - served).max(0.0) / total,
        from_peers
    );
    drop(peers);
    Ok(())
}

/// Starts Debian's nginx on a free port serving `root`, if nginx is installed.
async fn nginx(root: &std::path::Path) -> anyhow::Result<Option<(NginxGuard, u16)>> {
    if !std::path::Path::new("/usr/sbin/nginx").exists() {
        println!("(nginx not installed: `apt-get install nginx` for the comparison)");
        return Ok(None);
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let dir = root.parent().context("root has a parent")?.join("nginx");
    std::fs::create_dir_all(&dir)?;
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off; master_process off; worker_processes 1; pid {pid}; error_log {err};\n\
             events {{ worker_connections 4096; }}\n\
             http {{ access_log off; sendfile on; keepalive_requests 100000;\n\
               server {{ listen 127.0.0.1:{port}; root {root}; }} }}\n",
            pid = dir.join("nginx.pid").display(),
            err = dir.join("error.log").display(),
            root = root.display()
        ),
    )?;
    let child = tokio::process::Command::new("/usr/sbin/nginx")
        .arg("-c")
        .arg(&conf)
        .arg("-p")
        .arg(&dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(Some((NginxGuard(child), port)));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("nginx did not start")
}

/// Kills nginx on drop.
struct NginxGuard(tokio::process::Child);

impl Drop for NginxGuard {
    fn drop(&mut self) {
        let _ = self.0.start_kill();
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let what = std::env::args().nth(1).unwrap_or_default();
    match what.as_str() {
        "table" => table_memory(1_000_000, 10_000, 3).await,
        "table-redis" => table_redis(100_000, 10_000, 3).await,
        "latency" => latency().await,
        "peer-serving" => peer_serving().await,
        "gateway-latency" => gateway_latency().await,
        "flash-crowd" => crowd::bench(std::env::args().skip(2).collect()).await,
        "flash-crowd-loopback" => {
            flash_crowd(8).await?;
            flash_crowd(16).await
        }
        "nat" => nat::bench().await,
        "nat-probe" => nat::probe(std::env::args().skip(2).collect()).await,
        _ => bail!(
            "usage: peercache-bench table|table-redis|latency|peer-serving|gateway-latency|flash-crowd|flash-crowd-loopback|nat"
        ),
    }
}
