//! The LAN query (DESIGN M10), in a network namespace with multicast on its
//! loopback: with the server gone and no peer known from earlier referrals, a
//! client finds a holder by asking the local network, and trusts the answer
//! because the record is signed with the key it pinned.

use std::path::Path;

use peercache_tests::{TempDir, bin, make_site, spawn_peer_cmd, spawn_server_cmd, test_bytes};
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
}
