//! The LAN query (DESIGN M10), in a network namespace with multicast on its
//! loopback: with the server gone and no peer known from earlier referrals, a
//! client finds a holder by asking the local network, and trusts the answer
//! because the record is signed with the key it pinned.

use std::path::Path;

use peercache_tests::{TempDir, bin, make_site, spawn_peer_cmd, spawn_server_cmd, test_bytes};
use tokio::io::AsyncBufReadExt;
use tokio::process::Command;

struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.0])
            .status();
    }
}

fn ip(args: &[&str]) {
    let ok = std::process::Command::new("ip")
        .args(args)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "ip {args:?} failed (this test needs root, as CI has)");
}

fn in_ns(ns: &str, program: &Path) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).arg(program);
    c
}

async fn fetch_in(ns: &str, server: &str, path: &str, out: &Path, cache: &Path) -> (bool, String) {
    let o = in_ns(ns, &bin("peercache-host"))
        .args(["fetch", "--server", server, path, "-o"])
        .arg(out)
        .arg("--cache")
        .arg(cache)
        .arg("--state")
        .arg(peercache_tests::state_for(cache))
        .env("RUST_LOG", "warn")
        .output()
        .await
        .unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[tokio::test]
async fn with_the_server_gone_a_client_finds_a_holder_on_the_lan() {
    let ns = Netns(format!("pclan{}", std::process::id()));
    ip(&["netns", "add", &ns.0]);
    ip(&["netns", "exec", &ns.0, "ip", "link", "set", "lo", "up"]);
    ip(&[
        "netns",
        "exec",
        &ns.0,
        "ip",
        "link",
        "set",
        "lo",
        "multicast",
        "on",
    ]);
    ip(&[
        "netns",
        "exec",
        &ns.0,
        "ip",
        "route",
        "add",
        "224.0.0.0/4",
        "dev",
        "lo",
    ]);

    let dir = TempDir::new("lan");
    let f = test_bytes(400_000, 91);
    let g = test_bytes(100_000, 92);
    let root = make_site(&dir, &[("f.bin", &f), ("g.bin", &g)]);
    let mut cmd = in_ns(&ns.0, &bin("peercache-server"));
    cmd.arg("--root")
        .arg(&root)
        .args(["--listen", "127.0.0.1:0", "--ping-interval", "0s"]);
    let server = spawn_server_cmd(cmd).await.unwrap();

    // A fetches f and serves it.
    let (ok, err) = fetch_in(
        &ns.0,
        &server.url,
        "/static/f.bin",
        &dir.join("a.out"),
        &dir.join("a"),
    )
    .await;
    assert!(ok, "{err}");
    let mut cmd = in_ns(&ns.0, &bin("peercache-host"));
    cmd.args([
        "serve",
        "--server",
        &server.url,
        "--listen",
        "127.0.0.1:0",
        "--cache",
    ])
    .arg(dir.join("a"))
    .arg("--state")
    .arg(peercache_tests::state_for(&dir.join("a")));
    let a = spawn_peer_cmd(cmd).await.unwrap();

    // C visits the site once (g, from the server): it pins the key but knows no peer.
    let (ok, err) = fetch_in(
        &ns.0,
        &server.url,
        "/static/g.bin",
        &dir.join("c.out"),
        &dir.join("c"),
    )
    .await;
    assert!(ok && err.contains("from the server"), "{err}");
    assert!(
        !std::fs::read_to_string(dir.join("c/aux.json"))
            .unwrap_or_default()
            .contains(&a.id)
    );

    let url = server.url.clone();
    drop(server);
    // An eavesdropper on the LAN records every datagram to the group.
    // It says when it listens (a loaded machine starts Python slowly); what
    // it prints is collected until it is stopped after the fetch.
    let mut sniffer = in_ns_py(&ns.0, SNIFF)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(sniffer.stdout.take().unwrap()).lines();
    let ready = tokio::time::timeout(std::time::Duration::from_secs(20), lines.next_line())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ready.as_deref(), Some("listening"));
    let collected = tokio::spawn(async move {
        let mut seen = String::new();
        while let Ok(Some(line)) = lines.next_line().await {
            seen.push_str(&line);
            seen.push('\n');
        }
        seen
    });
    let (ok, err) = fetch_in(
        &ns.0,
        &url,
        "/static/f.bin",
        &dir.join("f.out"),
        &dir.join("c"),
    )
    .await;
    assert!(ok, "{err}");
    assert!(
        err.contains(&format!("from peer {}", a.id)),
        "found on the LAN: {err}"
    );
    assert_eq!(std::fs::read(dir.join("f.out")).unwrap(), f);

    // Datagrams still in the socket are read before it stops.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    sniffer.kill().await.unwrap();
    let seen = collected.await.unwrap();
    let f_url = format!("{url}/static/f.bin");
    assert!(seen.contains("who_has"), "the query was seen: {seen}");
    assert!(
        seen.contains(&peercache_core::peer::lan_digest(&f_url)),
        "it carries the digest"
    );
    assert!(
        !seen.contains("f.bin"),
        "no URL in clear on the LAN: {seen}"
    );

    // An attacker on the link asks A directly: an unpadded query (spoofable
    // for amplification) gets no reply larger than itself; padded ones get a
    // reply without the URL; a burst gets at most the per-source rate.
    let probe = in_ns_py(&ns.0, PROBE)
        .arg(peercache_core::peer::lan_digest(&f_url))
        .output()
        .await
        .unwrap();
    let out = String::from_utf8_lossy(&probe.stdout).into_owned();
    println!("LAN probe: {out}");
    let field = |k: &str| -> usize {
        out.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{k}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or(usize::MAX)
    };
    assert_eq!(field("small_reply_len"), 0, "{out}");
    let (q, r) = (field("padded_len"), field("padded_reply_len"));
    assert!(
        r > 0 && r <= q,
        "a reply, never larger than the query: {out}"
    );
    assert_eq!(field("reply_has_url"), 0, "{out}");
    let burst = field("burst_replies");
    assert!((1..=8).contains(&burst), "rate-limited per source: {out}");
}

fn in_ns_py(ns: &str, script: &str) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, "python3", "-c", script]);
    c
}

/// Prints "listening" once it has joined the LAN group, then every datagram
/// sent to the group (for at most 60 s; the test stops it sooner).
const SNIFF: &str = r#"
import socket, struct, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
s.bind(("0.0.0.0", 47777))
s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, struct.pack("4s4s", socket.inet_aton("239.255.77.77"), socket.inet_aton("0.0.0.0")))
s.settimeout(0.5)
print("listening", flush=True)
end = time.time() + 60
while time.time() < end:
    try:
        d, a = s.recvfrom(65536)
        print(d.decode("utf-8", "replace"), flush=True)
    except socket.timeout:
        pass
"#;

/// Queries the responder at 127.0.0.1 directly (digest in argv[1]).
const PROBE: &str = r#"
import socket, sys, json, time
d = sys.argv[1]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 0))
s.settimeout(0.7)
def ask(msg):
    s.sendto(msg, ("127.0.0.1", 47777))
    try:
        return s.recvfrom(65536)[0]
    except socket.timeout:
        return b""
small = json.dumps({"t": "who_has", "d": d, "qid": "q1"}).encode()
r = ask(small)
print("small_len=%d small_reply_len=%d" % (len(small), len(r)))
time.sleep(1.1)
base = json.dumps({"t": "who_has", "d": d, "qid": "q2", "pad": ""}).encode()
padded = json.dumps({"t": "who_has", "d": d, "qid": "q2", "pad": "-" * (1200 - len(base))}).encode()
r = ask(padded)
print("padded_len=%d padded_reply_len=%d reply_has_url=%d" % (len(padded), len(r), int(b"f.bin" in r)))
time.sleep(1.1)
for i in range(40):
    s.sendto(padded, ("127.0.0.1", 47777))
n = 0
while True:
    try:
        s.recvfrom(65536); n += 1
    except socket.timeout:
        break
print("burst_replies=%d" % n)
"#;
