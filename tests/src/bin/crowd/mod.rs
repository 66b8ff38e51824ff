//! `peercache-bench flash-crowd`: N clients ask for one new 32 MiB file at the
//! same instant, in network namespaces with `tc` bandwidth caps, and the same
//! crowd is served in the same run by three systems:
//!
//! - peercache: the real `peercache-server` (`--egress-limit` = the origin's
//!   cap, `--target-period 1s`, `--scope /`); each client a `peercache-host
//!   serve` on its cache plus a `peercache-host fetch` into that same cache;
//! - plain nginx serving the file (each client a `curl`);
//! - BitTorrent: `opentracker` and an `aria2c` seed at the origin, each client
//!   an `aria2c` that keeps seeding (torrent made with `mktorrent`).
//!
//! Topology: one bridge; the origin at 198.18.0.1 (upload capped at 80 Mbit/s,
//! `tbf` on its interface), client i at 198.18.1.i (upload 40 Mbit/s on its
//! interface, download 200 Mbit/s on its bridge port). No added delay.
//!
//! Per system and N it reports p50 and last completion over the bound
//! max(F/u_s, F/d_min, N·F/(u_s + Σu_i)), the bytes the origin's interface sent
//! over F (everything: payload, headers, acknowledgements, tracker), and how
//! many clients finished. `--slower K` divides every cap by K (the file stays
//! 32 MiB, so the bound grows K times): the same crowd at a K-th of the bytes
//! per second, to tell a protocol's losses from a CPU bound on a small machine.
//! Results go to a JSON and a markdown file. Needs root,
//! `ip`, `tc`, `curl`, and for the comparisons `nginx`, `aria2c`, `opentracker`,
//! `mktorrent` (`apt-get install nginx aria2 opentracker mktorrent`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use peercache_tests::netns::{Topology, in_ns, run};
use peercache_tests::{TempDir, bin, spawn_until, state_for, test_bytes};
use serde::Serialize;
use tokio::process::Command;

/// The file's size.
const F: u64 = 32 << 20;
/// Origin upload, bits per second.
const U_ORIGIN: u64 = 80_000_000;
/// Client upload, bits per second.
const U_CLIENT: u64 = 40_000_000;
/// Client download, bits per second.
const D_CLIENT: u64 = 200_000_000;
const ORIGIN_IP: &str = "198.18.0.1";
const SERVER_PORT: u16 = 8000;
const NGINX_PORT: u16 = 8080;
const TRACKER_PORT: u16 = 6969;

/// What to run, from the command line.
#[derive(Debug, Clone)]
struct Options {
    ns: Vec<usize>,
    systems: Vec<String>,
    out: PathBuf,
    timeout: Duration,
    caps: Caps,
}

/// The bandwidth caps of one run, bits per second.
#[derive(Debug, Clone, Copy)]
struct Caps {
    origin_up: u64,
    client_up: u64,
    client_down: u64,
}

impl Caps {
    /// The caps divided by `k`.
    fn slower(k: u64) -> Self {
        Self {
            origin_up: U_ORIGIN / k,
            client_up: U_CLIENT / k,
            client_down: D_CLIENT / k,
        }
    }
}

fn parse_options(args: &[String]) -> anyhow::Result<Options> {
    let mut o = Options {
        ns: vec![8, 16],
        systems: vec!["peercache".into(), "nginx".into(), "bittorrent".into()],
        out: PathBuf::from("flash-crowd"),
        timeout: Duration::from_secs(240),
        caps: Caps::slower(1),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--n" => {
                o.ns = value()?
                    .split(',')
                    .map(|s| s.trim().parse::<usize>())
                    .collect::<Result<_, _>>()
                    .context("--n takes numbers like 8,16,32")?;
            }
            "--systems" => {
                o.systems = value()?.split(',').map(|s| s.trim().to_string()).collect();
            }
            "--out" => o.out = PathBuf::from(value()?),
            "--timeout" => o.timeout = Duration::from_secs(value()?.parse()?),
            "--slower" => {
                let k: u64 = value()?.parse().context("--slower takes a whole number")?;
                if !(1..=16).contains(&k) {
                    bail!("--slower must be 1..=16");
                }
                o.caps = Caps::slower(k);
            }
            _ => bail!(
                "usage: peercache-bench flash-crowd [--n 8,16,32] [--systems peercache,nginx,bittorrent] [--slower K] [--out PREFIX] [--timeout SECONDS]"
            ),
        }
    }
    if o.ns.iter().any(|&n| n == 0 || n > 250) {
        bail!("N must be 1..=250");
    }
    for s in &o.systems {
        if !["peercache", "nginx", "bittorrent"].contains(&s.as_str()) {
            bail!("unknown system {s:?} (peercache, nginx, bittorrent)");
        }
    }
    Ok(o)
}

/// One system with N clients.
#[derive(Debug, Serialize)]
struct Row {
    n: usize,
    system: String,
    bound_s: f64,
    finished: usize,
    p50_s: Option<f64>,
    last_s: Option<f64>,
    p50_over_bound: Option<f64>,
    last_over_bound: Option<f64>,
    origin_sent_over_f: f64,
    /// Server counters (peercache only): referred, deferred, served.
    notes: String,
}

/// The Kumar–Ross lower bound on the time for all N to finish.
fn bound(n: usize, caps: Caps) -> f64 {
    let f = (F * 8) as f64;
    let n = n as f64;
    (f / caps.origin_up as f64)
        .max(f / caps.client_down as f64)
        .max(n * f / (caps.origin_up as f64 + n * caps.client_up as f64))
}

/// The namespaces of one N: the origin `o`, clients `c1..cN`, the bridge `b`.
struct Net {
    topology: Topology,
    n: usize,
    caps: Caps,
}

impl Net {
    fn build(n: usize, caps: Caps) -> Self {
        let mut topology = Topology::new(&format!("pcfc{}-", std::process::id()));
        let b = topology.add_ns("b");
        run(&["ip", "-n", &b, "link", "add", "br0", "type", "bridge"]);
        run(&["ip", "-n", &b, "link", "set", "br0", "up"]);
        let attach = |topology: &mut Topology, name: &str, ip: &str, up: u64, down: Option<u64>| {
            let ns = topology.add_ns(name);
            let port = format!("p{name}");
            run(&[
                "ip", "-n", &ns, "link", "add", "eth0", "type", "veth", "peer", "name", &port,
                "netns", &b,
            ]);
            run(&["ip", "-n", &b, "link", "set", &port, "master", "br0", "up"]);
            run(&[
                "ip",
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{ip}/16"),
                "dev",
                "eth0",
            ]);
            run(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
            let cap = |ns: &str, dev: &str, bits: u64| {
                run(&[
                    "ip",
                    "netns",
                    "exec",
                    ns,
                    "tc",
                    "qdisc",
                    "add",
                    "dev",
                    dev,
                    "root",
                    "tbf",
                    "rate",
                    &format!("{bits}bit"),
                    "burst",
                    "64kb",
                    "latency",
                    "50ms",
                ]);
            };
            cap(&ns, "eth0", up);
            if let Some(d) = down {
                cap(&b, &port, d);
            }
        };
        attach(&mut topology, "o", ORIGIN_IP, caps.origin_up, None);
        for i in 1..=n {
            attach(
                &mut topology,
                &format!("c{i}"),
                &client_ip(i),
                caps.client_up,
                Some(caps.client_down),
            );
        }
        Self { topology, n, caps }
    }

    fn origin(&self) -> String {
        self.topology.ns("o")
    }

    fn client(&self, i: usize) -> String {
        self.topology.ns(&format!("c{i}"))
    }

    /// Bytes the origin's interface has sent so far.
    async fn origin_tx(&self) -> anyhow::Result<u64> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.origin(), "cat"])
            .arg("/sys/class/net/eth0/statistics/tx_bytes")
            .output()
            .await?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
    }
}

fn client_ip(i: usize) -> String {
    format!("198.18.1.{i}")
}

fn has(program: &str) -> bool {
    ["/usr/bin", "/usr/sbin", "/bin", "/sbin"]
        .iter()
        .any(|d| Path::new(d).join(program).is_file())
}

/// Runs `cmds` all at once; returns each one's completion time (None: failed
/// or still running at the deadline; those are killed).
/// With `logs`, each client's whole stderr is written to `client<i>.log` there.
async fn race(
    cmds: Vec<Command>,
    timeout: Duration,
    logs: Option<PathBuf>,
) -> anyhow::Result<Vec<Option<f64>>> {
    let started = Instant::now();
    let mut children = Vec::new();
    for mut c in cmds {
        c.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        children.push(c.spawn().context("spawning a client")?);
    }
    let mut tasks = tokio::task::JoinSet::new();
    for (i, child) in children.into_iter().enumerate() {
        let logs = logs.clone();
        tasks.spawn(async move {
            let r = tokio::time::timeout(
                timeout.saturating_sub(started.elapsed()),
                child.wait_with_output(),
            )
            .await;
            let t = started.elapsed().as_secs_f64();
            if let (Some(dir), Ok(Ok(out))) = (&logs, &r) {
                let _ = std::fs::write(dir.join(format!("client{}.log", i + 1)), &out.stderr);
            }
            match r {
                Ok(Ok(out)) if out.status.success() => (i, Some(t), String::new()),
                Ok(Ok(out)) => (
                    i,
                    None,
                    String::from_utf8_lossy(&out.stderr)
                        .lines()
                        .last()
                        .unwrap_or_default()
                        .to_string(),
                ),
                Ok(Err(e)) => (i, None, e.to_string()),
                Err(_) => (i, None, "timed out".into()),
            }
        });
    }
    let mut times = vec![None; tasks.len()];
    while let Some(r) = tasks.join_next().await {
        let (i, t, why) = r?;
        if t.is_none() {
            eprintln!("  client {} did not finish: {why}", i + 1);
        }
        times[i] = t;
    }
    Ok(times)
}

/// Checks that each finished client's file is whole; a short one counts as not
/// finished.
fn check_outputs(times: &mut [Option<f64>], path_of: impl Fn(usize) -> PathBuf) {
    for (i, t) in times.iter_mut().enumerate() {
        if t.is_some() {
            let len = std::fs::metadata(path_of(i + 1)).map_or(0, |m| m.len());
            if len != F {
                eprintln!("  client {}: output has {len} of {F} bytes", i + 1);
                *t = None;
            }
        }
    }
}

fn row(net: &Net, system: &str, times: &[Option<f64>], sent: u64, notes: String) -> Row {
    let n = net.n;
    let mut done: Vec<f64> = times.iter().flatten().copied().collect();
    done.sort_by(f64::total_cmp);
    let b = bound(n, net.caps);
    let p50 = (!done.is_empty()).then(|| done[(done.len() - 1) / 2]);
    // The last client's time only means something when everyone finished.
    let last = (done.len() == n).then(|| done[done.len() - 1]);
    Row {
        n,
        system: system.into(),
        bound_s: b,
        finished: done.len(),
        p50_s: p50,
        last_s: last,
        p50_over_bound: p50.map(|t| t / b),
        last_over_bound: last.map(|t| t / b),
        origin_sent_over_f: sent as f64 / F as f64,
        notes,
    }
}

async fn wait_quiet() {
    // Let the queues drain between systems.
    tokio::time::sleep(Duration::from_secs(2)).await;
}

async fn run_peercache(
    net: &Net,
    dir: &TempDir,
    root: &Path,
    timeout: Duration,
) -> anyhow::Result<Row> {
    let n = net.n;
    let limit = (net.caps.origin_up / 8).to_string();
    let mut cmd = in_ns(&net.origin(), &bin("peercache-server"));
    cmd.arg("--root")
        .arg(root)
        .args(["--listen", &format!("{ORIGIN_IP}:{SERVER_PORT}")])
        .args(["--admin-listen", "127.0.0.1:9090"])
        .args(["--egress-limit", &limit, "--target-period", "1s"])
        .args(["--scope", "/"]);
    // Deferrals are 503s, which the HTTP trace layer logs as errors.
    cmd.env("RUST_LOG", "warn,tower_http=off");
    let _server = spawn_until(cmd, "listening on").await?;
    let url = format!("http://{ORIGIN_IP}:{SERVER_PORT}");
    let cache = |i: usize| dir.join(&format!("pc/c{i}"));
    let mut peers = Vec::new();
    for i in 1..=n {
        let mut cmd = in_ns(&net.client(i), &bin("peercache-host"));
        cmd.args(["serve", "--server", &url, "--listen"])
            .arg(format!("{}:0", client_ip(i)))
            .arg("--cache")
            .arg(cache(i))
            .arg("--state")
            .arg(state_for(&cache(i)))
            // PEERCACHE_BENCH_SERVE_ARGS: more `serve` flags (e.g. an upload
            // limit), split on spaces.
            .args(
                std::env::var("PEERCACHE_BENCH_SERVE_ARGS")
                    .unwrap_or_default()
                    .split_whitespace(),
            )
            .env("RUST_LOG", "warn");
        peers.push(spawn_until(cmd, "announced").await?);
    }
    let before = net.origin_tx().await?;
    // PEERCACHE_BENCH_LOGS=DIR: each client's explanation and debug log
    // (with timestamps) go to DIR/client<i>.log, to see where the time goes.
    let logs = std::env::var_os("PEERCACHE_BENCH_LOGS").map(PathBuf::from);
    if let Some(dir) = &logs {
        std::fs::create_dir_all(dir)?;
    }
    let cmds = (1..=n)
        .map(|i| {
            let mut c = in_ns(&net.client(i), &bin("peercache-host"));
            c.args(["fetch", "--server", &url, "/static/v.bin", "-o"])
                .arg(dir.join(&format!("pc/out{i}")))
                .arg("--cache")
                .arg(cache(i))
                .arg("--state")
                .arg(state_for(&cache(i)));
            if logs.is_some() {
                c.arg("--explain")
                    .env("RUST_LOG", "warn,peercache_host=debug");
            } else {
                c.env("RUST_LOG", "warn");
            }
            c
        })
        .collect();
    let mut times = race(cmds, timeout, logs).await?;
    let sent = net.origin_tx().await? - before;
    check_outputs(&mut times, |i| dir.join(&format!("pc/out{i}")));
    let metrics = Command::new("ip")
        .args(["netns", "exec", &net.origin(), "curl", "-s"])
        .arg("http://127.0.0.1:9090/metrics")
        .output()
        .await?;
    let text = String::from_utf8_lossy(&metrics.stdout);
    let m = |name: &str| peercache_tests::netns::metric(&text, name, "");
    let notes = format!(
        "server: {} served, {} referred, {} deferrals",
        m("peercache_requests_served_total"),
        m("peercache_requests_referred_total"),
        m("peercache_requests_deferred_total")
    );
    drop(peers);
    Ok(row(net, "peercache", &times, sent, notes))
}

async fn run_nginx(
    net: &Net,
    dir: &TempDir,
    root: &Path,
    timeout: Duration,
) -> anyhow::Result<Row> {
    let n = net.n;
    let ndir = dir.join("nginx");
    std::fs::create_dir_all(&ndir)?;
    let conf = ndir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off; master_process off; worker_processes 1; pid {pid}; error_log {err};\n\
             events {{ worker_connections 1024; }}\n\
             http {{ access_log off; sendfile on;\n\
               server {{ listen {ORIGIN_IP}:{NGINX_PORT}; root {root}; }} }}\n",
            pid = ndir.join("nginx.pid").display(),
            err = ndir.join("error.log").display(),
            root = root.display()
        ),
    )?;
    let mut cmd = in_ns(&net.origin(), Path::new("/usr/sbin/nginx"));
    cmd.arg("-c").arg(&conf).arg("-p").arg(&ndir);
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let _nginx = cmd.spawn()?;
    let url = format!("http://{ORIGIN_IP}:{NGINX_PORT}/static/v.bin");
    let mut up = false;
    for _ in 0..100 {
        let out = Command::new("ip")
            .args(["netns", "exec", &net.origin(), "curl", "-sfI", &url])
            .output()
            .await?;
        if out.status.success() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if !up {
        bail!("nginx did not start");
    }
    let before = net.origin_tx().await?;
    let out = |i: usize| dir.join(&format!("nginx/out{i}"));
    let cmds = (1..=n)
        .map(|i| {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &net.client(i), "curl", "-sSf", "-o"])
                .arg(out(i))
                .arg(&url);
            c
        })
        .collect();
    let mut times = race(cmds, timeout, None).await?;
    let sent = net.origin_tx().await? - before;
    check_outputs(&mut times, out);
    Ok(row(net, "nginx", &times, sent, String::new()))
}

async fn run_bittorrent(
    net: &Net,
    dir: &TempDir,
    root: &Path,
    timeout: Duration,
) -> anyhow::Result<Row> {
    let n = net.n;
    let bt = dir.join("bt");
    std::fs::create_dir_all(&bt)?;
    let torrent = bt.join("v.torrent");
    let announce = format!("http://{ORIGIN_IP}:{TRACKER_PORT}/announce");
    let made = std::process::Command::new("mktorrent")
        .args(["-a", &announce, "-l", "18", "-o"])
        .arg(&torrent)
        .arg(root.join("static/v.bin"))
        .output()?;
    if !made.status.success() {
        bail!("mktorrent: {}", String::from_utf8_lossy(&made.stderr));
    }
    let shown = std::process::Command::new("aria2c")
        .arg("-S")
        .arg(&torrent)
        .output()?;
    let info_hash = String::from_utf8_lossy(&shown.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("Info Hash: ").map(str::to_string))
        .context("no info hash from aria2c -S")?;
    // opentracker as Debian builds it serves only whitelisted torrents.
    std::fs::write(bt.join("whitelist"), format!("{info_hash}\n"))?;
    let mut cmd = in_ns(&net.origin(), Path::new("/usr/bin/opentracker"));
    cmd.args(["-i", ORIGIN_IP, "-p", &TRACKER_PORT.to_string()])
        .args(["-P", &TRACKER_PORT.to_string(), "-d"])
        .arg(&bt)
        .args(["-w", "whitelist"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let _tracker = cmd.spawn()?;
    // Every aria2c: no DHT, no local discovery, seed forever; the hook marks
    // the moment the download completed.
    let hook = bt.join("done.sh");
    std::fs::write(&hook, "#!/bin/sh\ntouch \"$3.done\"\n")?;
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let aria = |ns: &str, dir: &Path| {
        let mut c = in_ns(ns, Path::new("/usr/bin/aria2c"));
        c.arg(format!("--dir={}", dir.display()))
            .args([
                "--enable-dht=false",
                "--enable-dht6=false",
                "--bt-enable-lpd=false",
                "--disable-ipv6=true",
                "--seed-ratio=0.0",
                "--file-allocation=none",
                "--summary-interval=0",
                "--console-log-level=error",
                "--bt-seed-unverified=true",
                "--listen-port=6881",
            ])
            .arg(format!("--on-bt-download-complete={}", hook.display()))
            .arg(&torrent)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        c
    };
    let _seed = aria(&net.origin(), &root.join("static")).spawn()?;
    // The seed announces itself before the crowd arrives.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let cdir = |i: usize| bt.join(format!("c{i}"));
    for i in 1..=n {
        std::fs::create_dir_all(cdir(i))?;
    }
    let before = net.origin_tx().await?;
    let started = Instant::now();
    let mut clients = Vec::new();
    for i in 1..=n {
        clients.push(aria(&net.client(i), &cdir(i)).spawn()?);
    }
    let mut times: Vec<Option<f64>> = vec![None; n];
    while started.elapsed() < timeout && times.iter().any(Option::is_none) {
        for (i, t) in times.iter_mut().enumerate() {
            if t.is_none() && cdir(i + 1).join("v.bin.done").exists() {
                *t = Some(started.elapsed().as_secs_f64());
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let sent = net.origin_tx().await? - before;
    check_outputs(&mut times, |i| cdir(i).join("v.bin"));
    drop(clients);
    Ok(row(
        net,
        "bittorrent (aria2c + opentracker)",
        &times,
        sent,
        String::new(),
    ))
}

fn fmt(v: Option<f64>) -> String {
    v.map_or("—".into(), |v| format!("{v:.2}"))
}

fn markdown(rows: &[Row]) -> String {
    let mut s = String::from(
        "| N | system | bound | p50 | p50 / bound | last / bound | origin sent / F | finished | notes |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        s.push_str(&format!(
            "| {} | {} | {:.2} s | {} s | {} | {} | {:.2} | {} / {} | {} |\n",
            r.n,
            r.system,
            r.bound_s,
            fmt(r.p50_s),
            fmt(r.p50_over_bound),
            fmt(r.last_over_bound),
            r.origin_sent_over_f,
            r.finished,
            r.n,
            r.notes
        ));
    }
    s
}

/// The whole benchmark.
pub async fn bench(args: Vec<String>) -> anyhow::Result<()> {
    let o = parse_options(&args)?;
    let mut missing: Vec<&str> = ["ip", "tc", "curl"]
        .into_iter()
        .filter(|p| !has(p))
        .collect();
    if o.systems.iter().any(|s| s == "nginx") && !has("nginx") {
        missing.push("nginx");
    }
    if o.systems.iter().any(|s| s == "bittorrent") {
        missing.extend(
            ["aria2c", "opentracker", "mktorrent"]
                .into_iter()
                .filter(|p| !has(p)),
        );
    }
    if !missing.is_empty() {
        bail!(
            "missing {missing:?}: apt-get install iproute2 curl nginx aria2 opentracker mktorrent (and run as root)"
        );
    }
    let dir = TempDir::new("bench-crowd");
    let data = test_bytes(F as usize, 12);
    let root = peercache_tests::make_site(&dir, &[("v.bin", &data)]);
    let mut rows = Vec::new();
    for &n in &o.ns {
        let net = Net::build(n, o.caps);
        for system in &o.systems {
            eprintln!("flash crowd: N={n}, {system}");
            let sub = TempDir::new(&format!("crowd-{system}"));
            let r = match system.as_str() {
                "peercache" => run_peercache(&net, &sub, &root, o.timeout).await?,
                "nginx" => run_nginx(&net, &sub, &root, o.timeout).await?,
                _ => run_bittorrent(&net, &sub, &root, o.timeout).await?,
            };
            eprintln!(
                "  {}/{n} finished, p50 {} s, last {} s (bound {:.2} s), origin sent {:.2} × F {}",
                r.finished,
                fmt(r.p50_s),
                fmt(r.last_s),
                r.bound_s,
                r.origin_sent_over_f,
                r.notes
            );
            rows.push(r);
            wait_quiet().await;
        }
    }
    let md = markdown(&rows);
    println!("{md}");
    let json = o.out.with_extension("json");
    let mdp = o.out.with_extension("md");
    std::fs::write(&json, serde_json::to_vec_pretty(&rows)?)?;
    std::fs::write(&mdp, md)?;
    eprintln!("wrote {} and {}", json.display(), mdp.display());
    Ok(())
}
