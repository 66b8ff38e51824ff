//! Real `redis-server` set-ups beyond the plain one in the crate root: a TLS-only
//! server with a throw-away CA made by `openssl`, and a three-node Redis Cluster
//! created with `redis-cli --cluster create`. Processes die with their guard.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

use crate::TempDir;

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn run(cmd: &mut Command, what: &str) -> anyhow::Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

async fn wait_port(port: u16) -> anyhow::Result<()> {
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("redis-server did not start on port {port}")
}

fn redis_server(port_args: &[String], dir: &Path) -> anyhow::Result<Child> {
    Command::new("redis-server")
        .args(port_args)
        .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("starting redis-server (scripts/setup.sh installs it)")
}

/// A `redis-server` that speaks TLS only, with its CA.
#[derive(Debug)]
pub struct RedisTls {
    _proc: Child,
    /// Its TLS port.
    pub port: u16,
    /// The throw-away CA that signed its certificate (PEM).
    pub ca_pem: Vec<u8>,
    _dir: TempDir,
}

impl RedisTls {
    /// `rediss://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.port)
    }
}

/// Makes a CA and a server certificate for 127.0.0.1/localhost in `dir`
/// (`ca.pem`, `server.pem`, `server.key`).
pub async fn make_test_ca(dir: &Path) -> anyhow::Result<()> {
    let p = |n: &str| dir.join(n);
    run(
        Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .args(["-subj", "/CN=peercache test CA"])
            .arg("-keyout")
            .arg(p("ca.key"))
            .arg("-out")
            .arg(p("ca.pem")),
        "openssl (CA)",
    )
    .await?;
    run(
        Command::new("openssl")
            .args([
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=localhost",
            ])
            .arg("-keyout")
            .arg(p("server.key"))
            .arg("-out")
            .arg(p("server.csr")),
        "openssl (CSR)",
    )
    .await?;
    std::fs::write(
        p("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n",
    )?;
    run(
        Command::new("openssl")
            .args(["x509", "-req", "-days", "2", "-CAcreateserial"])
            .arg("-in")
            .arg(p("server.csr"))
            .arg("-CA")
            .arg(p("ca.pem"))
            .arg("-CAkey")
            .arg(p("ca.key"))
            .arg("-extfile")
            .arg(p("ext.cnf"))
            .arg("-out")
            .arg(p("server.pem")),
        "openssl (sign)",
    )
    .await?;
    Ok(())
}

/// Starts a real `redis-server` listening with TLS only (`--port 0
/// --tls-port P`), clients not asked for certificates.
pub async fn spawn_redis_tls() -> anyhow::Result<RedisTls> {
    let dir = TempDir::new("redis-tls");
    make_test_ca(&dir.0).await?;
    let port = free_port()?;
    let s = |p: &Path| p.display().to_string();
    let args = vec![
        "--port".to_string(),
        "0".to_string(),
        "--tls-port".to_string(),
        port.to_string(),
        "--tls-cert-file".to_string(),
        s(&dir.join("server.pem")),
        "--tls-key-file".to_string(),
        s(&dir.join("server.key")),
        "--tls-ca-cert-file".to_string(),
        s(&dir.join("ca.pem")),
        "--tls-auth-clients".to_string(),
        "no".to_string(),
    ];
    let proc = redis_server(&args, &dir.0)?;
    wait_port(port).await?;
    let ca_pem = std::fs::read(dir.join("ca.pem"))?;
    Ok(RedisTls {
        _proc: proc,
        port,
        ca_pem,
        _dir: dir,
    })
}

/// Three `redis-server` masters joined into one Redis Cluster.
#[derive(Debug)]
pub struct RedisCluster {
    _procs: Vec<Child>,
    /// Their ports.
    pub ports: Vec<u16>,
    _dir: TempDir,
}

impl RedisCluster {
    /// `redis+cluster://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3`.
    pub fn url(&self) -> String {
        let nodes: Vec<String> = self
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        format!("redis+cluster://{}", nodes.join(","))
    }
}

/// Starts three cluster-enabled `redis-server`s, creates the cluster (slots
/// spread over the three, no replicas) and waits until it reports `ok`.
pub async fn spawn_redis_cluster() -> anyhow::Result<RedisCluster> {
    let dir = TempDir::new("redis-cluster");
    let mut procs = Vec::new();
    let mut ports = Vec::new();
    for i in 0..3 {
        let port = free_port()?;
        let node_dir = dir.join(&format!("n{i}"));
        std::fs::create_dir_all(&node_dir)?;
        let args = vec![
            "--port".to_string(),
            port.to_string(),
            "--cluster-enabled".to_string(),
            "yes".to_string(),
            "--cluster-config-file".to_string(),
            "nodes.conf".to_string(),
            "--cluster-node-timeout".to_string(),
            "2000".to_string(),
        ];
        procs.push(redis_server(&args, &node_dir)?);
        ports.push(port);
    }
    for p in &ports {
        wait_port(*p).await?;
    }
    let mut create = Command::new("redis-cli");
    create.arg("--cluster").arg("create");
    for p in &ports {
        create.arg(format!("127.0.0.1:{p}"));
    }
    create.args(["--cluster-replicas", "0", "--cluster-yes"]);
    run(&mut create, "redis-cli --cluster create").await?;
    for _ in 0..200 {
        let mut ok = 0;
        for p in &ports {
            let info = run(
                Command::new("redis-cli")
                    .args(["-p", &p.to_string()])
                    .args(["cluster", "info"]),
                "redis-cli cluster info",
            )
            .await?;
            if info.contains("cluster_state:ok") {
                ok += 1;
            }
        }
        if ok == ports.len() {
            return Ok(RedisCluster {
                _procs: procs,
                ports,
                _dir: dir,
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the cluster did not reach cluster_state:ok")
}
