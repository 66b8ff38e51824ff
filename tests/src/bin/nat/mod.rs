//! `peercache-bench nat`: the peer transport through home routers, in network
//! namespaces (the topology of `tests/tests/nat.rs`), all in one run:
//!
//! - time to the first verified-size piece (16 KiB) from a holder behind a home
//!   NAT (dial through the relay, hole punch) and from a public holder;
//! - throughput of a 32 MiB object: direct through two home NATs, relayed between
//!   two symmetric NATs (relay uncapped here, to measure the transport), from the
//!   public holder, and, as the reference, a plain HTTPS GET of the same bytes
//!   from the server over TCP through the same home router.
//!
//! Each figure is measured by `peercache-bench nat-probe` run inside the
//! downloader's namespace, with a fresh endpoint (a new visitor).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use peercache_core::hash::ObjectHash;
use peercache_core::peer::DialInfo;
use peercache_core::protocol::RelayInfo;
use peercache_tests::netns::{Lab, in_ns};
use peercache_tests::{TempDir, bin, spawn_until, state_for, test_bytes};

const SITE: &str = peercache_tests::netns::SITE_IP;

const SIZE: usize = 32 << 20;

/// One measurement, as the probe prints it.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Probe {
    first_piece_ms: f64,
    mib_per_s: f64,
    direct: bool,
}

/// Inside a namespace: dial `id` through the relay, time the first 16 KiB, then
/// the whole object. Args: relay URL, CA file, peer id, dial string, hash, size.
pub async fn probe(args: Vec<String>) -> anyhow::Result<()> {
    let [relay, ca, id, dial, hash, size] = args.as_slice() else {
        bail!("usage: nat-probe RELAY_URL CA ID DIAL HASH SIZE");
    };
    let hash: ObjectHash = hash.parse()?;
    let size: u64 = size.parse()?;
    let dial = DialInfo::parse(dial)?;
    let endpoint = peercache_net::endpoint::bind(&peercache_net::EndpointOptions {
        secret: rand_secret(),
        bind: SocketAddr::from(([0, 0, 0, 0], 0)),
        ca_cert: Some(PathBuf::from(ca)),
        accept: false,
    })
    .await?;
    let relays = [RelayInfo {
        url: relay.clone(),
        qad_port: Some(7842),
    }];
    if !peercache_net::endpoint::add_relays(&endpoint, &relays, Duration::from_secs(5)).await {
        bail!("the relay is not reachable");
    }
    let dialer = peercache_net::PeerDialer::new(endpoint);
    let started = Instant::now();
    let (_, mut body) = dialer
        .object(id, &dial, hash, Some((0, 16 * 1024 - 1)))
        .await?;
    body.next_chunk().await?.context("no first piece")?;
    let first_piece = started.elapsed();
    while body.next_chunk().await?.is_some() {}
    // The hole punch completes a few round trips after connect; the transfer
    // itself is timed once the path has settled.
    dialer
        .wait_direct(id, &dial, Duration::from_millis(500))
        .await;
    let started = Instant::now();
    let (_, mut body) = dialer.object(id, &dial, hash, None).await?;
    let mut n = 0u64;
    while let Some(chunk) = body.next_chunk().await? {
        n += chunk.len() as u64;
    }
    let took = started.elapsed();
    anyhow::ensure!(n == size, "got {n} of {size} bytes");
    let out = Probe {
        first_piece_ms: first_piece.as_secs_f64() * 1000.0,
        mib_per_s: n as f64 / (1 << 20) as f64 / took.as_secs_f64(),
        direct: body.is_direct(),
    };
    println!("{}", serde_json::to_string(&out)?);
    dialer.endpoint().close().await;
    Ok(())
}

fn rand_secret() -> [u8; 32] {
    let bytes = test_bytes(32, u64::from(std::process::id()) ^ 0x9e37);
    let mut s = [0u8; 32];
    s.copy_from_slice(&bytes);
    s
}

async fn probe_in(
    ns: &str,
    relay: &str,
    ca: &std::path::Path,
    peer: &(String, String),
    hash: ObjectHash,
) -> anyhow::Result<Probe> {
    let out = in_ns(ns, &bin("peercache-bench"))
        .args(["nat-probe", relay])
        .arg(ca)
        .args([&peer.0, &peer.1, &hash.to_hex(), &SIZE.to_string()])
        .output()
        .await?;
    if !out.status.success() {
        bail!("probe in {ns}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// A holder in `ns`: fetched through the server, then serving; returns its id
/// and its dial string as the server lists it.
async fn holder(
    ns: &str,
    dir: &TempDir,
    name: &str,
    ca: &std::path::Path,
) -> anyhow::Result<(peercache_tests::Proc, String)> {
    let cache = dir.join(name);
    let server = format!("https://{SITE}");
    let out = in_ns(ns, &bin("peercache-host"))
        .args(["fetch", "--server", &server, "/static/x.bin", "-o"])
        .arg(dir.join(&format!("{name}.out")))
        .arg("--cache")
        .arg(&cache)
        .arg("--state")
        .arg(state_for(&cache))
        .arg("--ca-cert")
        .arg(ca)
        .output()
        .await?;
    anyhow::ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut cmd = in_ns(ns, &bin("peercache-host"));
    cmd.args(["serve", "--server", &server, "--cache"])
        .arg(&cache)
        .arg("--state")
        .arg(state_for(&cache))
        .arg("--ca-cert")
        .arg(ca);
    let proc = spawn_until(cmd, "announced").await?;
    let id = proc
        .banner
        .iter()
        .find_map(|l| l.strip_prefix("peer id "))
        .context("peer id")?
        .to_string();
    Ok((proc, id))
}

async fn listed_dial(
    site_ns: &str,
    ca: &std::path::Path,
    hash: ObjectHash,
    id: &str,
) -> anyhow::Result<String> {
    let text = peercache_tests::netns::curl(
        site_ns,
        ca,
        &format!(
            "http://{}/v1/objects/{hash}/peers",
            peercache_tests::netns::SITE_ADMIN
        ),
    )
    .await;
    let list: serde_json::Value = serde_json::from_str(&text)?;
    list.as_array()
        .and_then(|a| a.iter().find(|p| p["id"] == id))
        .and_then(|p| p["addr"].as_str().map(String::from))
        .context("holder not listed")
}

/// The whole benchmark.
pub async fn bench() -> anyhow::Result<()> {
    let dir = TempDir::new("bench-nat");
    let data = test_bytes(SIZE, 777);
    let hash = ObjectHash::of(&data);
    let root = peercache_tests::make_site(&dir, &[("x.bin", &data)]);
    // The relay uncapped: the transport itself is measured.
    let lab = Lab::start(
        &dir,
        &format!("pcbn{}-", std::process::id()),
        &root,
        &["--rate", "1GiB"],
        &["--ping-interval", "0s"],
    )
    .await?;
    let (ca, site_ns, relay_url) = (lab.ca.clone(), lab.site_ns.clone(), lab.relay_url.clone());
    let [h1, h2, h3, h4] = lab.hosts.clone();
    let public_ns = lab.public_ns.clone();

    let (_p1, id1) = holder(&h1, &dir, "h1", &ca).await?;
    let (_p3, id3) = holder(&h3, &dir, "h3", &ca).await?;
    let (_pp, idp) = holder(&public_ns, &dir, "pub", &ca).await?;
    let mut peers = Vec::new();
    for id in [&id1, &id3, &idp] {
        peers.push((id.clone(), listed_dial(&site_ns, &ca, hash, id).await?));
    }
    let [nat1, sym3, public] =
        <[(String, String); 3]>::try_from(peers).map_err(|_| anyhow::anyhow!("three holders"))?;

    let mut rows = Vec::new();
    for run_no in 0..3 {
        let nat = probe_in(&h2, &relay_url, &ca, &nat1, hash).await?;
        let public = probe_in(&h2, &relay_url, &ca, &public, hash).await?;
        let relayed = probe_in(&h4, &relay_url, &ca, &sym3, hash).await?;
        let get = in_ns(&h2, std::path::Path::new("curl"))
            .args([
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{time_starttransfer} %{speed_download}",
                "--cacert",
            ])
            .arg(&ca)
            .arg(format!("https://{SITE}/static/x.bin"))
            .output()
            .await?;
        let text = String::from_utf8_lossy(&get.stdout).into_owned();
        let mut parts = text.split_whitespace();
        let get_first_ms: f64 = parts.next().context("curl")?.parse::<f64>()? * 1000.0;
        let get_mibs: f64 = parts.next().context("curl")?.parse::<f64>()? / (1 << 20) as f64;
        println!(
            "run {run_no}: first 16 KiB from the NATed holder {:.1} ms (direct at the end: {}), from the public holder {:.1} ms; \
             32 MiB: direct through two home NATs {:.0} MiB/s, public holder {:.0} MiB/s, relayed (symmetric pair, direct: {}) {:.0} MiB/s, \
             plain HTTPS GET through the home NAT {:.0} MiB/s (first byte {:.1} ms)",
            nat.first_piece_ms,
            nat.direct,
            public.first_piece_ms,
            nat.mib_per_s,
            public.mib_per_s,
            relayed.direct,
            relayed.mib_per_s,
            get_mibs,
            get_first_ms
        );
        rows.push((nat, public, relayed, get_mibs));
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let direct = median(rows.iter().map(|r| r.0.mib_per_s).collect());
    let public = median(rows.iter().map(|r| r.1.mib_per_s).collect());
    let relayed = median(rows.iter().map(|r| r.2.mib_per_s).collect());
    let get = median(rows.iter().map(|r| r.3).collect());
    println!(
        "median of 3: first piece NATed {:.1} ms, public {:.1} ms; direct/GET {:.2}, public/GET {:.2}, relayed/GET {:.2}, relayed/direct {:.2}",
        median(rows.iter().map(|r| r.0.first_piece_ms).collect()),
        median(rows.iter().map(|r| r.1.first_piece_ms).collect()),
        direct / get,
        public / get,
        relayed / get,
        relayed / direct
    );
    drop(lab);
    Ok(())
}
