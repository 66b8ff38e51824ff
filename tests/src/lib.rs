//! The swarm harness: starts the real `peercache-server` and real `peercache-host`
//! processes on `127.0.0.1:0` and talks to them over HTTP and native messaging.
//! Used by the integration tests in `tests/tests/` (and by benchmarks).
//!
//! The binaries must be built first (`cargo build --bins`); the harness looks for
//! them next to the test executable, or in `$PEERCACHE_BIN_DIR`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

pub mod fuzz;
pub mod netns;
pub mod origin;
pub mod redis_setups;

/// Where the workspace binaries are.
pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("PEERCACHE_BIN_DIR") {
        return PathBuf::from(d);
    }
    // target/<profile>/deps/<test> or target/<profile>/<bin> → target/<profile>
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().map(Path::to_path_buf).unwrap_or(dir)
    } else {
        dir
    }
}

/// Path of a workspace binary, with a clear error if it was not built.
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.is_file(),
        "{} is missing: run `cargo build --bins` before the integration tests",
        p.display()
    );
    p
}

/// A fresh temporary directory, removed on drop.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// Creates one.
    pub fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!(
            "peercache-{tag}-{}-{}",
            std::process::id(),
            rand_u64()
        ));
        std::fs::create_dir_all(&p).unwrap_or_else(|e| panic!("creating {}: {e}", p.display()));
        Self(p)
    }

    /// A path inside it.
    pub fn join(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.finish()
}

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce. Distinct
/// seeds give distinct bytes.
pub fn test_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A site directory with `index.html` and the given files under `static/`.
pub fn make_site(dir: &TempDir, files: &[(&str, &[u8])]) -> PathBuf {
    let root = dir.join("site");
    std::fs::create_dir_all(root.join("static")).expect("site dir");
    std::fs::write(root.join("index.html"), b"<!doctype html><title>t</title>").expect("index");
    for (name, bytes) in files {
        std::fs::write(root.join("static").join(name), bytes).expect("site file");
    }
    root
}

/// A running process, killed on drop.
#[derive(Debug)]
pub struct Proc {
    /// The child.
    pub child: Child,
    /// Lines it printed on stdout before it was ready.
    pub banner: Vec<String>,
}

impl Proc {
    /// Kills the process and waits until it has exited, so its ports are free.
    pub async fn stop(&mut self) {
        let _ = self.child.kill().await;
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Spawns `cmd` and waits (30 s at most) until it prints a line containing `ready`.
pub async fn spawn_until(mut cmd: Command, ready: &str) -> anyhow::Result<Proc> {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let mut child = cmd.spawn().context("spawning")?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let mut banner = Vec::new();
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await? {
            let done = line.contains(ready);
            banner.push(line);
            if done {
                return Ok::<bool, std::io::Error>(true);
            }
        }
        Ok(false)
    })
    .await
    .context("timed out waiting for the process to start")??;
    if !found {
        bail!("process exited before printing {ready:?}: {banner:?}");
    }
    // Keep draining stdout so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(Proc { child, banner })
}

/// A running `peercache-server`.
#[derive(Debug)]
pub struct Server {
    /// The process.
    pub proc: Proc,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// `http://127.0.0.1:PORT` of its operator listener (`/admin`, `/metrics`,
    /// the holders of an object).
    pub admin_url: String,
}

impl Server {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.proc.child.id().unwrap_or(0)
    }

    /// Its peak resident memory (`VmHWM`), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        proc_status_kib(self.pid(), "VmHWM:")
    }

    /// Its resident memory now (`VmRSS`), in KiB.
    pub fn rss_kib(&self) -> u64 {
        proc_status_kib(self.pid(), "VmRSS:")
    }

    /// Its open file descriptors.
    pub fn open_fds(&self) -> usize {
        proc_usage(self.pid()).1
    }

    /// `/admin/stats.json` from the operator listener.
    pub async fn admin_stats(&self) -> anyhow::Result<serde_json::Value> {
        Ok(reqwest::get(format!("{}/admin/stats.json", self.admin_url))
            .await?
            .json()
            .await?)
    }
}

/// A `/proc/PID/status` figure in KiB (0 when unreadable).
pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// Starts `peercache-server --root ROOT --listen 127.0.0.1:0 ARGS…`.
pub async fn spawn_server(root: &Path, args: &[&str]) -> anyhow::Result<Server> {
    let mut cmd = Command::new(bin("peercache-server"));
    cmd.arg("--root")
        .arg(root)
        .args(["--listen", "127.0.0.1:0"])
        .args(args);
    spawn_server_cmd(cmd).await
}

/// Starts a server from a prepared command (which must listen on `127.0.0.1:0`).
pub async fn spawn_server_cmd(mut cmd: Command) -> anyhow::Result<Server> {
    // The server keeps its signing key in a state directory: the tests' own,
    // unless the test chose one.
    if !cmd
        .as_std()
        .get_envs()
        .any(|(k, _)| k == "PEERCACHE_STATE_DIR")
    {
        cmd.env(
            "PEERCACHE_STATE_DIR",
            std::env::temp_dir().join("peercache-tests-server-state"),
        );
    }
    let proc = spawn_until(cmd, "listening on").await?;
    let addr = proc
        .banner
        .iter()
        .find_map(|l| l.strip_prefix("listening on "))
        .context("no address")?
        .to_string();
    let admin = proc
        .banner
        .iter()
        .find_map(|l| l.strip_prefix("admin on "))
        .context("no admin address")?
        .to_string();
    Ok(Server {
        url: format!("http://{addr}"),
        admin_url: format!("http://{admin}"),
        proc,
    })
}

/// A running headless peer (`peercache-host serve`).
#[derive(Debug)]
pub struct Peer {
    /// The process.
    pub proc: Proc,
    /// `http://127.0.0.1:PORT` of its operator-only `/metrics` listener.
    pub url: String,
    /// The UDP port of its peer endpoint.
    pub port: u16,
    /// Its peer id (public key).
    pub id: String,
}

impl Peer {
    /// How to dial it on this machine.
    pub fn dial(&self) -> peercache_core::peer::DialInfo {
        peercache_core::peer::DialInfo {
            relay: None,
            direct: vec![std::net::SocketAddr::from(([127, 0, 0, 1], self.port))],
        }
    }
}

/// The state directory (peer key) that belongs with a cache directory in these
/// tests: `fetch` and `serve` on the same cache are one peer, other caches are
/// other peers.
pub fn state_for(cache: &Path) -> PathBuf {
    let mut name = cache.file_name().unwrap_or_default().to_os_string();
    name.push("-state");
    cache.with_file_name(name)
}

/// A peer key for requests a test makes by hand (fake holders, attackers).
#[derive(Debug, Clone)]
pub struct TestKey {
    /// The secret.
    pub secret: [u8; 32],
    /// The peer id (public key, hex).
    pub id: String,
}

impl TestKey {
    /// A key derived from `seed` (distinct seeds, distinct keys).
    pub fn new(seed: u64) -> Self {
        let bytes = test_bytes(32, seed ^ 0x5eed);
        let mut secret = [0u8; 32];
        secret.copy_from_slice(&bytes);
        Self {
            id: peercache_core::auth::peer_id_of(&secret),
            secret,
        }
    }
}

/// POSTs `body` to `server` + `path`, signed by `key`; returns the response.
pub async fn signed_post(
    server: &str,
    path: &str,
    key: &TestKey,
    body: &serde_json::Value,
) -> anyhow::Result<reqwest::Response> {
    signed_post_with(&reqwest::Client::new(), server, path, key, body).await
}

/// A peer endpoint for tests to talk the peer protocol to real hosts.
pub async fn peer_dialer() -> anyhow::Result<peercache_net::PeerDialer> {
    let endpoint = peercache_net::endpoint::bind(&peercache_net::EndpointOptions {
        secret: TestKey::new(rand_u64()).secret,
        bind: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        ca_cert: None,
        accept: false,
    })
    .await?;
    Ok(peercache_net::PeerDialer::new(endpoint))
}

/// A dialer with a fresh key whose endpoint is bound to `ip` (another loopback
/// address, e.g. `127.0.0.2`, stands for another machine).
pub async fn peer_dialer_at(ip: [u8; 4]) -> anyhow::Result<peercache_net::PeerDialer> {
    let endpoint = peercache_net::endpoint::bind(&peercache_net::EndpointOptions {
        secret: TestKey::new(rand_u64()).secret,
        bind: std::net::SocketAddr::from((ip, 0)),
        ca_cert: None,
        accept: false,
    })
    .await?;
    Ok(peercache_net::PeerDialer::new(endpoint))
}

/// Peak resident memory (VmHWM, KiB) and open descriptors of process `pid`.
pub fn proc_usage(pid: u32) -> (u64, usize) {
    let hwm = proc_status_kib(pid, "VmHWM:");
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0);
    (hwm, fds)
}

/// Starts `peercache-host serve --server URL --cache DIR --listen 127.0.0.1:0 ARGS…`.
pub async fn spawn_peer(server: &str, cache: &Path, args: &[&str]) -> anyhow::Result<Peer> {
    let mut cmd = Command::new(bin("peercache-host"));
    cmd.args([
        "serve",
        "--server",
        server,
        "--listen",
        "127.0.0.1:0",
        "--cache",
    ])
    .arg(cache)
    .arg("--state")
    .arg(state_for(cache))
    .args(args);
    spawn_peer_cmd(cmd).await
}

/// Starts a peer from a prepared `peercache-host serve` command.
pub async fn spawn_peer_cmd(cmd: Command) -> anyhow::Result<Peer> {
    let proc = spawn_until(cmd, "announced").await?;
    let port: u16 = proc
        .banner
        .iter()
        .find_map(|l| l.strip_prefix("peer endpoint on udp port "))
        .context("no peer port")?
        .parse()?;
    let addr = proc
        .banner
        .iter()
        .find_map(|l| l.strip_prefix("metrics on "))
        .context("no metrics address")?
        .to_string();
    let id = proc
        .banner
        .iter()
        .find_map(|l| l.strip_prefix("peer id "))
        .context("no peer id")?
        .to_string();
    Ok(Peer {
        url: format!("http://{addr}"),
        port,
        id,
        proc,
    })
}

/// A peer that holds `path`: fetched once through `server` into `cache` (the
/// bytes also written to `out`), then serving from that cache.
pub async fn seed_peer(
    server: &str,
    path: &str,
    out: &Path,
    cache: &Path,
    args: &[&str],
) -> anyhow::Result<Peer> {
    let (ok, err) = fetch_cli(server, path, out, cache).await?;
    anyhow::ensure!(ok, "fetching {path} for the peer failed: {err}");
    spawn_peer(server, cache, args).await
}

/// Runs `peercache-host fetch`; returns (success, stderr).
pub async fn fetch_cli(
    server: &str,
    path: &str,
    out: &Path,
    cache: &Path,
) -> anyhow::Result<(bool, String)> {
    fetch_cli_with(server, path, out, cache, &[]).await
}

/// [`fetch_cli`] with more arguments (e.g. `--explain`).
pub async fn fetch_cli_with(
    server: &str,
    path: &str,
    out: &Path,
    cache: &Path,
    args: &[&str],
) -> anyhow::Result<(bool, String)> {
    let output = fetch_command(server, path, out, cache, args)
        .output()
        .await?;
    Ok((
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

/// `peercache-host fetch` of `path` from `server` into `out`, with its cache
/// and state directory, as the fetch helpers run it.
fn fetch_command(server: &str, path: &str, out: &Path, cache: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(bin("peercache-host"));
    cmd.args(["fetch", "--server", server, path, "-o"])
        .arg(out)
        .args(args)
        .arg("--cache")
        .arg(cache)
        .arg("--state")
        .arg(state_for(cache))
        .env("RUST_LOG", "warn");
    cmd
}

/// [`fetch_cli_with`] that also watches the fetch process's peak resident
/// memory (`VmHWM`, KiB) while it runs, read every 20 ms.
pub async fn fetch_cli_watched(
    server: &str,
    path: &str,
    out: &Path,
    cache: &Path,
    args: &[&str],
) -> anyhow::Result<(bool, String, u64)> {
    let mut child = fetch_command(server, path, out, cache, args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().context("no pid")?;
    let mut stderr = child.stderr.take().context("no stderr")?;
    let reader = tokio::spawn(async move {
        let mut s = String::new();
        let _ = tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut s).await;
        s
    });
    let mut peak = 0;
    let status = loop {
        peak = peak.max(proc_status_kib(pid, "VmHWM:"));
        if let Some(status) = child.try_wait()? {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    Ok((status.success(), reader.await?, peak))
}

/// A TCP gate in front of a server: it holds every connection until `crowd`
/// connections have arrived (or 30 s passed), then lets them all through at
/// once. Processes that start at different speeds on a loaded machine so
/// reach the server together, as a real flash crowd does.
#[derive(Debug)]
pub struct Gate {
    /// `http://127.0.0.1:PORT`, to use in place of the server's URL.
    pub url: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts a [`Gate`] in front of `server` (`http://host:port`).
pub async fn spawn_gate(server: &str, crowd: usize) -> anyhow::Result<Gate> {
    let upstream = server
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let (open_tx, open_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(async move {
        let mut arrived = 0;
        while let Ok((mut inbound, _)) = listener.accept().await {
            arrived += 1;
            if arrived >= crowd {
                let _ = open_tx.send(true);
            }
            let (mut open, upstream) = (open_rx.clone(), upstream.clone());
            tokio::spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(30), open.wait_for(|o| *o)).await;
                if let Ok(mut out) = tokio::net::TcpStream::connect(&upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                }
            });
        }
    });
    Ok(Gate { url, task })
}

/// Prometheus text → sums per metric name.
pub async fn metrics(base: &str) -> anyhow::Result<HashMap<String, f64>> {
    let text = reqwest::get(format!("{base}/metrics"))
        .await?
        .text()
        .await?;
    let mut out: HashMap<String, f64> = HashMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name_labels, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let name = name_labels.split('{').next().unwrap_or("");
        if let Ok(v) = value.parse::<f64>() {
            *out.entry(name.to_string()).or_default() += v;
        }
    }
    Ok(out)
}

/// A native-messaging session with a real host process, as a browser runs it.
#[derive(Debug)]
pub struct NativeSession {
    /// The host process.
    pub child: Child,
    stdin: Option<ChildStdin>,
    stdout: ChildStdout,
}

impl NativeSession {
    /// Starts `peercache-host chrome-extension://<id>/` with `env`.
    pub async fn start(env: &[(&str, &Path)]) -> anyhow::Result<Self> {
        let mut cmd = Command::new(bin("peercache-host"));
        cmd.arg("chrome-extension://fmfjkafobffmfmdigggcgcdafihpelgn/")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
            if *k == "PEERCACHE_CACHE_DIR" && !env.iter().any(|(k, _)| *k == "PEERCACHE_STATE_DIR")
            {
                cmd.env("PEERCACHE_STATE_DIR", state_for(v));
            }
        }
        let mut child = cmd.spawn()?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().context("stdout")?;
        Ok(Self {
            child,
            stdin,
            stdout,
        })
    }

    /// Sends raw bytes (for malformed frames).
    pub async fn send_raw(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        let stdin = self.stdin.as_mut().context("stdin closed")?;
        stdin.write_all(bytes).await?;
        stdin.flush().await?;
        Ok(())
    }

    /// Sends one framed message.
    pub async fn send(&mut self, msg: &serde_json::Value) -> anyhow::Result<()> {
        let body = serde_json::to_vec(msg)?;
        let mut frame = (body.len() as u32).to_ne_bytes().to_vec();
        frame.extend_from_slice(&body);
        self.send_raw(&frame).await
    }

    /// Reads one framed message (10 s timeout).
    pub async fn recv(&mut self) -> anyhow::Result<serde_json::Value> {
        tokio::time::timeout(Duration::from_secs(10), async {
            let mut len = [0u8; 4];
            self.stdout.read_exact(&mut len).await?;
            let len = u32::from_ne_bytes(len) as usize;
            if len > 1 << 20 {
                bail!("host sent a frame of {len} bytes");
            }
            let mut body = vec![0u8; len];
            self.stdout.read_exact(&mut body).await?;
            Ok(serde_json::from_slice(&body)?)
        })
        .await
        .context("timed out waiting for a frame")?
    }

    /// Reads frames until one of type `ty`.
    pub async fn recv_type(&mut self, ty: &str) -> anyhow::Result<serde_json::Value> {
        for _ in 0..20 {
            let m = self.recv().await?;
            if m["type"] == ty {
                return Ok(m);
            }
        }
        bail!("no {ty} message")
    }

    /// Closes stdin, as a browser does when the port closes.
    pub fn close_stdin(&mut self) {
        self.stdin.take();
    }

    /// Reads whatever is left on stdout until EOF.
    pub async fn rest_of_stdout(&mut self) -> anyhow::Result<Vec<u8>> {
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), self.stdout.read_to_end(&mut rest)).await??;
        Ok(rest)
    }
}

/// A running `redis-server` on a free loopback port (no persistence).
#[derive(Debug)]
pub struct Redis {
    /// The process.
    pub proc: Option<Child>,
    /// Its port.
    pub port: u16,
}

impl Redis {
    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Stops it (as an outage would).
    pub async fn stop(&mut self) {
        if let Some(mut c) = self.proc.take() {
            let _ = c.kill().await;
            let _ = c.wait().await;
        }
    }

    /// Starts it again on the same port.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop().await;
        self.proc = Some(start_redis(self.port).await?);
        Ok(())
    }
}

async fn start_redis(port: u16) -> anyhow::Result<Child> {
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("starting redis-server (is it installed? scripts/setup.sh installs it)")?;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(child);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("redis-server did not start on port {port}")
}

/// Starts a real `redis-server` on a free port.
pub async fn spawn_redis() -> anyhow::Result<Redis> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    Ok(Redis {
        proc: Some(start_redis(port).await?),
        port,
    })
}

/// Registers `key` with the server, listed at `127.0.0.1:port` when `port` is
/// given (nothing need listen there), and fetches `path` through it with
/// `Peercache-Client` (so the server may list it later); returns the status.
pub async fn register_and_fetch(
    server: &str,
    key: &TestKey,
    port: Option<u16>,
    path: &str,
) -> anyhow::Result<u16> {
    let dial =
        port.map(|p| serde_json::json!({"relay": null, "direct": [format!("127.0.0.1:{p}")]}));
    let r = signed_post(
        server,
        "/v1/peers",
        key,
        &serde_json::json!({"peer_id": key.id, "dial": dial, "port": port}),
    )
    .await?;
    if !r.status().is_success() {
        bail!("register: {}", r.status());
    }
    let r = reqwest::Client::new()
        .get(format!("{server}{path}"))
        .header("Peercache-Client", format!("id={}", key.id))
        .send()
        .await?;
    let status = r.status().as_u16();
    r.bytes().await?;
    Ok(status)
}

/// Announces `hashes` for `key`; returns the accepted ones.
pub async fn announce(
    server: &str,
    key: &TestKey,
    hashes: &[String],
    load: Option<(u32, u32)>,
) -> anyhow::Result<Vec<String>> {
    let mut body = serde_json::json!({"peer_id": key.id, "have": hashes});
    if let Some((active, limit)) = load {
        body["load"] = serde_json::json!({"active": active, "limit": limit});
    }
    let r = signed_post(server, "/v1/announce", key, &body).await?;
    if !r.status().is_success() {
        bail!("announce: {}", r.status());
    }
    let v: serde_json::Value = r.json().await?;
    Ok(v["accepted"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default())
}

/// GETs `path` with `Peercache-Client: id=ID` and returns (status, body as JSON if a referral).
pub async fn ask(
    server: &str,
    id: &str,
    path: &str,
) -> anyhow::Result<(u16, Option<serde_json::Value>)> {
    let r = reqwest::Client::new()
        .get(format!("{server}{path}"))
        .header("Peercache-Client", format!("id={id}"))
        .send()
        .await?;
    let status = r.status().as_u16();
    if status == 300 {
        Ok((status, Some(r.json().await?)))
    } else {
        r.bytes().await?;
        Ok((status, None))
    }
}

/// A hand-made peer on the real peer protocol, for the server to ping: it
/// answers pings after `ping_delay` (a peer on a bad link) and holds nothing.
#[derive(Debug)]
pub struct FakePeer {
    /// Its key.
    pub key: TestKey,
    /// Its UDP port on 127.0.0.1.
    pub port: u16,
    _router: iroh::protocol::Router,
}

/// What a fake holder holds: the hash, the bytes, the outboard, and the pause
/// after each byte it sends.
type HeldObject = (peercache_core::ObjectHash, Vec<u8>, Vec<u8>, Duration);

/// How a fake holder lies about an object's outboard (the group CVs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadOutboard {
    /// Announces the true length, then sends zeros forever.
    Endless,
    /// Announces a terabyte, then sends zeros forever.
    Huge,
}

/// A prover that holds nothing and answers a possession proof by fetching the
/// asked range from the server through another address (a third machine).
#[derive(Debug)]
pub struct RelayedProof {
    /// The object's URL on the server.
    pub url: String,
    /// The client it fetches with (bound to the third machine's address).
    pub client: reqwest::Client,
    /// Ranges it was asked for.
    pub asked: std::sync::atomic::AtomicUsize,
    /// Ranges the server sent it in full (for the relay to pass on).
    pub fetched: std::sync::atomic::AtomicUsize,
}

#[derive(Debug, Clone)]
struct FakeHandler {
    ping_delay: Duration,
    /// Answers object requests by fetching from the server meanwhile.
    relay: Option<std::sync::Arc<RelayedProof>>,
    /// Answers outboard requests for the object it holds with this lie.
    bad_outboard: Option<BadOutboard>,
    /// Answers requests for this object with a body that never ends.
    endless: Option<peercache_core::ObjectHash>,
    /// An object it holds, its outboard, and the pause after each byte it sends.
    object: Option<std::sync::Arc<HeldObject>>,
}

impl iroh::protocol::ProtocolHandler for FakeHandler {
    async fn accept(
        &self,
        conn: iroh::endpoint::Connection,
    ) -> Result<(), iroh::protocol::AcceptError> {
        use peercache_core::peer::{PeerRequest, PeerResponse, PeerStatus};
        use peercache_net::wire::{read_frame, write_frame};
        while let Ok((mut send, mut recv)) = conn.accept_bi().await {
            let (delay, object, endless) = (self.ping_delay, self.object.clone(), self.endless);
            let bad_outboard = self.bad_outboard;
            let relay = self.relay.clone();
            tokio::spawn(async move {
                let Ok(req) = read_frame::<PeerRequest>(&mut recv).await else {
                    return;
                };
                let load = Some(peercache_core::protocol::Load {
                    active: 0,
                    limit: 4,
                });
                let held = |h: &peercache_core::ObjectHash| object.as_ref().filter(|o| o.0 == *h);
                if let PeerRequest::Object { hash, range, .. } = &req
                    && endless == Some(*hash)
                {
                    // Promise the range, then send zeros forever.
                    let len = range.map_or(4096, |(a, b)| b - a + 1);
                    let _ = write_frame(&mut send, &PeerResponse::body(len, load)).await;
                    let zeros = vec![0u8; 64 * 1024];
                    while send.write_all(&zeros).await.is_ok() {}
                    return;
                }
                if let (PeerRequest::Object { range, .. }, Some(relay)) = (&req, &relay) {
                    use std::sync::atomic::Ordering::SeqCst;
                    relay.asked.fetch_add(1, SeqCst);
                    let (a, b) = range.unwrap_or((0, 0));
                    let got = relay
                        .client
                        .get(&relay.url)
                        .header("range", format!("bytes={a}-{b}"))
                        .send()
                        .await;
                    let bytes = match got {
                        Ok(r) if r.status() == 206 => r.bytes().await.ok(),
                        _ => None,
                    };
                    let Some(bytes) = bytes.filter(|got| got.len() as u64 == b - a + 1) else {
                        return;
                    };
                    relay.fetched.fetch_add(1, SeqCst);
                    let header = PeerResponse::body(bytes.len() as u64, load);
                    let _ = write_frame(&mut send, &header).await;
                    let _ = send.write_all(&bytes).await;
                    let _ = send.finish();
                    let _ = send.stopped().await;
                    return;
                }
                if let (PeerRequest::Outboard { hash }, Some(lie)) = (&req, bad_outboard)
                    && let Some(o) = held(hash)
                {
                    let len = match lie {
                        BadOutboard::Endless => o.2.len() as u64,
                        BadOutboard::Huge => 1 << 40,
                    };
                    let _ = write_frame(&mut send, &PeerResponse::body(len, load)).await;
                    let zeros = vec![0u8; 64 * 1024];
                    while send.write_all(&zeros).await.is_ok() {}
                    return;
                }
                let (header, body, pause) = match req {
                    PeerRequest::Ping => {
                        tokio::time::sleep(delay).await;
                        (PeerResponse::status(PeerStatus::Ok, load), Vec::new(), None)
                    }
                    PeerRequest::Outboard { hash } if held(&hash).is_some() => {
                        let ob = held(&hash).map(|o| o.2.clone()).unwrap_or_default();
                        (PeerResponse::body(ob.len() as u64, load), ob, None)
                    }
                    // It holds the whole object, like a real holder says.
                    PeerRequest::Have { hash } if held(&hash).is_some() => {
                        let Some(o) = held(&hash) else { return };
                        let size = o.1.len() as u64;
                        let map = peercache_core::pieces::HaveMap::full(
                            peercache_core::verified::group_count(size),
                        );
                        let header = PeerResponse {
                            size: Some(size),
                            ..PeerResponse::body(map.as_bytes().len() as u64, load)
                        };
                        (header, map.as_bytes().to_vec(), None)
                    }
                    PeerRequest::Object { hash, range, .. } if held(&hash).is_some() => {
                        let Some(o) = held(&hash) else { return };
                        let (a, b) = range.unwrap_or((0, o.1.len() as u64 - 1));
                        let bytes = o.1[a as usize..=b as usize].to_vec();
                        let header = PeerResponse {
                            size: Some(o.1.len() as u64),
                            ..PeerResponse::body(bytes.len() as u64, load)
                        };
                        (header, bytes, Some(o.3))
                    }
                    _ => (
                        PeerResponse::status(PeerStatus::NotHeld, load),
                        Vec::new(),
                        None,
                    ),
                };
                let _ = write_frame(&mut send, &header).await;
                match pause {
                    // The right bytes, one at a time.
                    Some(pause) => {
                        for byte in body {
                            if send.write_all(&[byte]).await.is_err() {
                                return;
                            }
                            tokio::time::sleep(pause).await;
                        }
                    }
                    None => {
                        let _ = send.write_all(&body).await;
                    }
                }
                let _ = send.finish();
                let _ = send.stopped().await;
            });
        }
        Ok(())
    }
}

/// Starts a [`FakePeer`] on 127.0.0.1.
pub async fn spawn_fake_peer(key: TestKey, ping_delay: Duration) -> anyhow::Result<FakePeer> {
    spawn_fake_holder(key, ping_delay, None, None, None).await
}

/// Starts a [`FakePeer`] that holds `object` (its true bytes and outboard) and
/// sends it one byte per `pause`: a peer that trickles.
pub async fn spawn_trickling_holder(
    key: TestKey,
    object: &[u8],
    pause: Duration,
) -> anyhow::Result<FakePeer> {
    let held = held_object(object, pause)?;
    spawn_fake_holder(key, Duration::ZERO, Some(held), None, None).await
}

/// What a fake holder holds of `object`: its hash, bytes and outboard, and the
/// pause after each byte it sends.
fn held_object(object: &[u8], pause: Duration) -> anyhow::Result<std::sync::Arc<HeldObject>> {
    let outboard = peercache_core::verified::outboard_from_reader(object, object.len() as u64)?;
    Ok(std::sync::Arc::new((
        peercache_core::ObjectHash::of(object),
        object.to_vec(),
        outboard,
        pause,
    )))
}

/// Starts a [`FakePeer`] that holds `object` and serves its bytes honestly (so
/// it passes the server's possession proof) but lies about its outboard.
pub async fn spawn_bad_outboard_holder(
    key: TestKey,
    object: &[u8],
    lie: BadOutboard,
) -> anyhow::Result<FakePeer> {
    let held = held_object(object, Duration::ZERO)?;
    spawn_fake_holder(key, Duration::ZERO, Some(held), None, Some(lie)).await
}

/// Starts a [`FakePeer`] that answers any request for `hash` with a body that
/// never ends (an attacker against whoever reads from it).
pub async fn spawn_endless_holder(
    key: TestKey,
    hash: peercache_core::ObjectHash,
) -> anyhow::Result<FakePeer> {
    spawn_fake_holder(key, Duration::ZERO, None, Some(hash), None).await
}

/// [`signed_post`] through a given client (e.g. one bound to another
/// loopback address).
pub async fn signed_post_with(
    client: &reqwest::Client,
    server: &str,
    path: &str,
    key: &TestKey,
    body: &serde_json::Value,
) -> anyhow::Result<reqwest::Response> {
    let bytes = serde_json::to_vec(body)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let auth = peercache_core::auth::sign_request(&key.secret, "POST", path, now, &bytes);
    Ok(client
        .post(format!("{server}{path}"))
        .header("peercache-auth", auth)
        .header("content-type", "application/json")
        .body(bytes)
        .send()
        .await?)
}

async fn spawn_fake_holder(
    key: TestKey,
    ping_delay: Duration,
    object: Option<std::sync::Arc<HeldObject>>,
    endless: Option<peercache_core::ObjectHash>,
    bad_outboard: Option<BadOutboard>,
) -> anyhow::Result<FakePeer> {
    spawn_fake(key, ping_delay, object, endless, bad_outboard, None).await
}

/// Starts a [`FakePeer`] that holds nothing and answers possession proofs
/// with bytes it fetches from `url` meanwhile, from the address `via`.
pub async fn spawn_relaying_prover(
    key: TestKey,
    url: &str,
    via: [u8; 4],
) -> anyhow::Result<(FakePeer, std::sync::Arc<RelayedProof>)> {
    let relay = std::sync::Arc::new(RelayedProof {
        url: url.to_string(),
        client: reqwest::Client::builder()
            .local_address(std::net::IpAddr::from(via))
            .build()?,
        asked: Default::default(),
        fetched: Default::default(),
    });
    let peer = spawn_fake(key, Duration::ZERO, None, None, None, Some(relay.clone())).await?;
    Ok((peer, relay))
}

async fn spawn_fake(
    key: TestKey,
    ping_delay: Duration,
    object: Option<std::sync::Arc<HeldObject>>,
    endless: Option<peercache_core::ObjectHash>,
    bad_outboard: Option<BadOutboard>,
    relay: Option<std::sync::Arc<RelayedProof>>,
) -> anyhow::Result<FakePeer> {
    let endpoint = peercache_net::endpoint::bind(&peercache_net::EndpointOptions {
        secret: key.secret,
        bind: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        ca_cert: None,
        accept: true,
    })
    .await?;
    let port = peercache_net::endpoint::bound_port(&endpoint).context("no port")?;
    let router = iroh::protocol::Router::builder(endpoint)
        .accept(
            peercache_core::peer::ALPN,
            FakeHandler {
                ping_delay,
                relay,
                bad_outboard,
                object,
                endless,
            },
        )
        .spawn();
    Ok(FakePeer {
        key,
        port,
        _router: router,
    })
}

/// Asks for `path` as client `key` (which must be referred: a `300`), then sends
/// a signed report about `source` with `outcome`; returns the report's status.
pub async fn referred_report(
    server: &str,
    key: &TestKey,
    path: &str,
    source: &str,
    outcome: &str,
) -> anyhow::Result<u16> {
    let (status, referral) = ask(server, &key.id, path).await?;
    anyhow::ensure!(status == 300, "expected a referral, got {status}");
    let referral = referral.context("referral body")?;
    let hash = referral["object"]["hash"].clone();
    let r = signed_post(
        server,
        "/v1/report",
        key,
        &serde_json::json!({"peer_id": key.id, "hash": hash, "source": source, "outcome": outcome, "bytes": 1}),
    )
    .await?;
    Ok(r.status().as_u16())
}
