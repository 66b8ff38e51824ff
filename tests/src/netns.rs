//! Peers as the internet has them, in network namespaces a test or benchmark
//! makes and removes itself: an "internet" bridge on a documentation range
//! (203.0.113.0/24), nodes on it, and home routers (nftables masquerade, an input
//! chain that drops unsolicited packets as consumer routers do) with one host
//! each on a benchmarking range (198.18.n.0/24). Needs root, `ip` and `nft`.

use std::path::{Path, PathBuf};

use tokio::process::Command;

use crate::TempDir;

/// The namespaces of one run, deleted on drop (their links go with them).
#[derive(Debug)]
pub struct Topology {
    prefix: String,
    names: Vec<String>,
}

impl Drop for Topology {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", n])
                .status();
        }
    }
}

/// Runs a set-up command; panics with its error output if it fails.
pub fn run(args: &[&str]) {
    let out = std::process::Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed (this test needs root and nftables, as CI has): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn nft(ns: &str, rules: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("nft");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(rules.as_bytes())
        .expect("rules");
    assert!(child.wait().expect("nft").success(), "nft in {ns}: {rules}");
}

impl Topology {
    /// An empty topology whose namespaces are named `prefix` + name.
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_string(),
            names: Vec::new(),
        }
    }

    /// The full name of namespace `name`.
    pub fn ns(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Adds an empty namespace (loopback up, IPv6 off).
    pub fn add_ns(&mut self, name: &str) -> String {
        let ns = self.ns(name);
        run(&["ip", "netns", "add", &ns]);
        self.names.push(ns.clone());
        run(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        for key in [
            "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1",
        ] {
            run(&["ip", "netns", "exec", &ns, "sysctl", "-qw", key]);
        }
        ns
    }

    /// A node on the "internet" bridge at `ip`.
    pub fn on_internet(&mut self, name: &str, ip: &str, port: usize) -> String {
        let ns = self.add_ns(name);
        let inet = self.ns("inet");
        let peer = format!("p{port}");
        run(&[
            "ip", "-n", &ns, "link", "add", "wan", "type", "veth", "peer", "name", &peer, "netns",
            &inet,
        ]);
        run(&[
            "ip", "-n", &inet, "link", "set", &peer, "master", "br0", "up",
        ]);
        run(&[
            "ip",
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{ip}/24"),
            "dev",
            "wan",
        ]);
        run(&["ip", "-n", &ns, "link", "set", "wan", "up"]);
        ns
    }

    /// A home router at `wan_ip` with one host behind it on 198.18.`n`.0/24.
    pub fn home(&mut self, n: u8, wan_ip: &str, symmetric: bool) -> String {
        let router = self.on_internet(&format!("r{n}"), wan_ip, 20 + usize::from(n));
        let host = self.add_ns(&format!("h{n}"));
        run(&[
            "ip", "-n", &router, "link", "add", "lan", "type", "veth", "peer", "name", "eth0",
            "netns", &host,
        ]);
        run(&[
            "ip",
            "-n",
            &router,
            "addr",
            "add",
            &format!("198.18.{n}.1/24"),
            "dev",
            "lan",
        ]);
        run(&["ip", "-n", &router, "link", "set", "lan", "up"]);
        run(&[
            "ip",
            "-n",
            &host,
            "addr",
            "add",
            &format!("198.18.{n}.2/24"),
            "dev",
            "eth0",
        ]);
        run(&["ip", "-n", &host, "link", "set", "eth0", "up"]);
        run(&[
            "ip",
            "-n",
            &host,
            "route",
            "add",
            "default",
            "via",
            &format!("198.18.{n}.1"),
        ]);
        run(&[
            "ip",
            "netns",
            "exec",
            &router,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ]);
        let masquerade = if symmetric {
            "masquerade random"
        } else {
            "masquerade"
        };
        nft(
            &router,
            &format!(
                "table ip nat {{
                   chain post {{
                     type nat hook postrouting priority 100; policy accept;
                     oifname \"wan\" {masquerade}
                   }}
                 }}
                 table inet filter {{
                   chain input {{
                     type filter hook input priority 0; policy drop;
                     iifname \"lo\" accept
                     iifname \"lan\" accept
                     ct state established,related accept
                   }}
                   chain forward {{
                     type filter hook forward priority 0; policy drop;
                     iifname \"lan\" accept
                     ct state established,related accept
                   }}
                 }}
"
            ),
        );
        host
    }
}

/// `program` run inside `ns`.
pub fn in_ns(ns: &str, program: &Path) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).arg(program);
    c
}

/// `curl` run inside `ns` (the test itself is not on the bridge).
pub async fn curl(ns: &str, ca: &Path, url: &str) -> String {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "curl",
            "-sS",
            "--max-time",
            "10",
            "--cacert",
        ])
        .arg(ca)
        .arg(url)
        .output()
        .await
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The sum of `name` over the label sets whose line contains `labels`.
pub fn metric(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#') && l.contains(labels))
        .filter(|l| l.split(['{', ' ']).next() == Some(name))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

/// A test CA and a certificate for `ip` signed by it: (CA, certificate, key).
pub fn make_certs(dir: &TempDir, ip: &str) -> (PathBuf, PathBuf, PathBuf) {
    let p = |n: &str| dir.join(n).display().to_string();
    run(&[
        "openssl",
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        &p("ca.key"),
        "-out",
        &p("ca.pem"),
        "-days",
        "2",
        "-subj",
        "/CN=peercache test CA",
    ]);
    run(&[
        "openssl",
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        &p("site.key"),
        "-out",
        &p("site.csr"),
        "-subj",
        &format!("/CN={ip}"),
    ]);
    std::fs::write(
        dir.join("ext.cnf"),
        format!("subjectAltName=IP:{ip}\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n"),
    )
    .expect("ext");
    run(&[
        "openssl",
        "x509",
        "-req",
        "-in",
        &p("site.csr"),
        "-CA",
        &p("ca.pem"),
        "-CAkey",
        &p("ca.key"),
        "-CAcreateserial",
        "-out",
        &p("site.pem"),
        "-days",
        "2",
        "-extfile",
        &p("ext.cnf"),
    ]);
    (
        dir.join("ca.pem"),
        dir.join("site.pem"),
        dir.join("site.key"),
    )
}

/// The site's address on the "internet".
pub const SITE_IP: &str = "203.0.113.2";
/// The site server's operator listener (`/admin`, `/metrics`, holders), reached
/// from the site's namespace.
pub const SITE_ADMIN: &str = "203.0.113.2:9090";
/// The public peer's address.
pub const PUBLIC_IP: &str = "203.0.113.10";

/// The standard lab: the internet bridge; the site (`peercache-server` with TLS
/// and `peercache-relay` beside it, so relaying survives a stopped server); a
/// node with a public address; hosts h1 and h2 behind home routers, h3 and h4
/// behind symmetric NATs.
#[derive(Debug)]
pub struct Lab {
    /// The namespaces (removed on drop, after the processes).
    pub topology: Topology,
    /// The site's namespace.
    pub site_ns: String,
    /// The public node's namespace.
    pub public_ns: String,
    /// h1..h4.
    pub hosts: [String; 4],
    /// The test CA (hosts trust the site and relay with it).
    pub ca: PathBuf,
    /// The relay's URL.
    pub relay_url: String,
    /// The relay's `/metrics`, reachable from the site's namespace.
    pub relay_metrics: String,
    /// The relay process.
    pub relay: crate::Proc,
    /// The server process.
    pub server: crate::Proc,
}

impl Lab {
    /// Builds the lab and starts the relay (`relay_args` added) and the server
    /// serving `root` (`server_args` added).
    pub async fn start(
        dir: &TempDir,
        prefix: &str,
        root: &Path,
        relay_args: &[&str],
        server_args: &[&str],
    ) -> anyhow::Result<Self> {
        let mut topology = Topology::new(prefix);
        let inet = topology.add_ns("inet");
        run(&["ip", "-n", &inet, "link", "add", "br0", "type", "bridge"]);
        run(&["ip", "-n", &inet, "link", "set", "br0", "up"]);
        let site_ns = topology.on_internet("site", SITE_IP, 2);
        let public_ns = topology.on_internet("pub", PUBLIC_IP, 10);
        let hosts = [
            topology.home(1, "203.0.113.21", false),
            topology.home(2, "203.0.113.22", false),
            topology.home(3, "203.0.113.23", true),
            topology.home(4, "203.0.113.24", true),
        ];
        let (ca, cert, key) = make_certs(dir, SITE_IP);
        let relay_url = format!("https://{SITE_IP}:8443/");
        let mut cmd = in_ns(&site_ns, &crate::bin("peercache-relay"));
        cmd.args(["--listen", &format!("{SITE_IP}:8443"), "--tls-cert"])
            .arg(&cert)
            .arg("--tls-key")
            .arg(&key)
            .args(relay_args);
        let relay = crate::spawn_until(cmd, "metrics on").await?;
        let relay_metrics = format!(
            "http://{}/metrics",
            relay
                .banner
                .iter()
                .find_map(|l| l.strip_prefix("metrics on "))
                .unwrap_or_default()
        );
        let mut cmd = in_ns(&site_ns, &crate::bin("peercache-server"));
        cmd.arg("--root")
            .arg(root)
            .args(["--listen", &format!("{SITE_IP}:443")])
            .args(["--admin-listen", SITE_ADMIN, "--tls-cert"])
            .arg(&cert)
            .arg("--tls-key")
            .arg(&key)
            .args(["--no-relay", "--relay-url", &relay_url, "--ca-cert"])
            .arg(&ca)
            .args(server_args);
        let server = crate::spawn_until(cmd, "listening on").await?;
        Ok(Self {
            topology,
            site_ns,
            public_ns,
            hosts,
            ca,
            relay_url,
            relay_metrics,
            relay,
            server,
        })
    }

    /// Payload bytes the relay delivered to peers so far (each of them also
    /// arrived from one).
    pub async fn relayed(&self) -> f64 {
        metric(
            &curl(&self.site_ns, &self.ca, &self.relay_metrics).await,
            "peercache_relay_bytes_total",
            "to_peers",
        )
    }
}
