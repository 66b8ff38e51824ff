//! The server's record-signing key lasts: kept in its state directory across
//! restarts (one per site), and shared by replicas through the look-up table.

use peercache_tests::{Server, TempDir, fetch_cli, make_site, spawn_redis, state_for, test_bytes};

async fn server(root: &std::path::Path, state: &std::path::Path, args: &[&str]) -> Server {
    let mut cmd = tokio::process::Command::new(peercache_tests::bin("peercache-server"));
    cmd.arg("--root")
        .arg(root)
        .args(["--listen", "127.0.0.1:0", "--no-relay"])
        .args(args)
        .env("PEERCACHE_STATE_DIR", state);
    peercache_tests::spawn_server_cmd(cmd).await.unwrap()
}

async fn key(server: &Server) -> String {
    let v: serde_json::Value = reqwest::get(format!("{}/v1/key", server.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["public_key"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn the_signing_key_survives_a_restart_and_is_one_per_site() {
    let dir = TempDir::new("keys-restart");
    let root = make_site(&dir, &[("a.bin", &test_bytes(1000, 1))]);
    let state = dir.join("state");
    let mut first = server(&root, &state, &[]).await;
    let before = key(&first).await;
    first.proc.stop().await;
    let second = server(&root, &state, &[]).await;
    assert_eq!(key(&second).await, before, "the same key after a restart");
    let other_dir = TempDir::new("keys-other-site");
    let other_root = make_site(&other_dir, &[("b.bin", &test_bytes(1000, 2))]);
    let other = server(&other_root, &state, &[]).await;
    assert_ne!(key(&other).await, before, "another site, its own key");
}

#[tokio::test]
async fn replicas_sharing_a_table_sign_with_one_key() {
    let dir = TempDir::new("keys-replicas");
    let redis = spawn_redis().await.unwrap();
    let root = make_site(&dir, &[("a.bin", &test_bytes(1000, 3))]);
    let url = redis.url();
    let a = server(&root, &dir.join("state-a"), &["--store", &url]).await;
    let b = server(&root, &dir.join("state-b"), &["--store", &url]).await;
    let (ka, kb) = (key(&a).await, key(&b).await);
    assert_eq!(ka, kb, "one key for the replicas");
    drop(a);
    let c = server(&root, &dir.join("state-c"), &["--store", &url]).await;
    assert_eq!(key(&c).await, ka, "a replica started later gets it too");
}

/// Issue 14, point 5: `--rotate-key` replaces the key, keeps the old one and
/// publishes a statement signed by it; a client that pinned the old key pins
/// the new one, and with the server down trusts records signed by the new key.
#[tokio::test]
async fn a_rotated_key_is_pinned_by_clients_and_server_down_fallback_keeps_working() {
    let dir = TempDir::new("keys-rotate");
    let (f, g, k) = (
        test_bytes(300_000, 11),
        test_bytes(200_000, 12),
        test_bytes(100_000, 13),
    );
    let root = make_site(&dir, &[("f.bin", &f), ("g.bin", &g), ("k.bin", &k)]);
    let key_file = dir.join("server.key");
    let key_arg = key_file.to_string_lossy().into_owned();
    let args = |listen: String| {
        let mut cmd = tokio::process::Command::new(peercache_tests::bin("peercache-server"));
        cmd.arg("--root").arg(&root).args([
            "--listen",
            &listen,
            "--no-relay",
            "--egress-limit",
            "64MiB",
            "--target-period",
            "0s",
            "--ping-interval",
            "0s",
            "--key-file",
            &key_arg,
        ]);
        cmd
    };
    let pinned = |cache: &str| -> String {
        let text =
            std::fs::read_to_string(state_for(&dir.join(cache)).join("servers.json")).unwrap();
        let map: std::collections::BTreeMap<String, String> = serde_json::from_str(&text).unwrap();
        map.into_values().next().unwrap()
    };
    let mut first = peercache_tests::spawn_server_cmd(args("127.0.0.1:0".into()))
        .await
        .unwrap();
    let url = first.url.clone();
    let old_key = key(&first).await;
    // C pins the first key.
    let (ok, err) = fetch_cli(&url, "/static/k.bin", &dir.join("o"), &dir.join("c"))
        .await
        .unwrap();
    assert!(ok, "{err}");
    assert_eq!(pinned("c"), old_key);
    first.proc.stop().await;
    drop(first);

    // The operator rotates the key; the old one is kept beside it.
    let out = std::process::Command::new(peercache_tests::bin("peercache-server"))
        .arg("--root")
        .arg(&root)
        .args(["--key-file", &key_arg, "--rotate-key"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{said} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains(&old_key), "{said}");
    let kept = std::fs::read_dir(dir.join("."))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("server.key.old-")
        })
        .count();
    assert_eq!(kept, 1, "the old key is kept");

    let port = url.rsplit(':').next().unwrap().to_string();
    let server = peercache_tests::spawn_server_cmd(args(format!("127.0.0.1:{port}")))
        .await
        .unwrap();
    let new_key = key(&server).await;
    assert_ne!(new_key, old_key, "a new key after the rotation");
    let published: serde_json::Value = reqwest::get(format!("{url}/v1/key"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(published["rotations"][0]["old_key"], old_key.as_str());
    assert_eq!(published["rotations"][0]["new_key"], new_key.as_str());

    // A holds f and g (records signed by the new key) and serves them.
    for p in ["/static/f.bin", "/static/g.bin"] {
        let (ok, err) = fetch_cli(&url, p, &dir.join("o"), &dir.join("a"))
            .await
            .unwrap();
        assert!(ok, "{err}");
    }
    let a = peercache_tests::spawn_peer(&url, &dir.join("a"), &[])
        .await
        .unwrap();
    // C, which pinned the old key, gets g from A and now pins the new key.
    let (ok, err) = fetch_cli(&url, "/static/g.bin", &dir.join("o"), &dir.join("c"))
        .await
        .unwrap();
    assert!(ok && err.contains(&format!("from peer {}", a.id)), "{err}");
    assert_eq!(pinned("c"), new_key, "the rotation was followed: {err}");

    // The server goes silent: C gets f from A, trusting A's record (signed by
    // the new key) because it pinned the new key.
    let pid = server.pid().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-STOP", &pid])
            .status()
            .unwrap()
            .success()
    );
    let (ok, err) = fetch_cli(&url, "/static/f.bin", &dir.join("f.out"), &dir.join("c"))
        .await
        .unwrap();
    let _ = std::process::Command::new("kill")
        .args(["-CONT", &pid])
        .status();
    assert!(ok, "{err}");
    assert!(err.contains(&format!("from peer {}", a.id)), "{err}");
    assert_eq!(std::fs::read(dir.join("f.out")).unwrap(), f);
    drop(server);
}

/// A key presented without a statement signed by the pinned key is not pinned
/// (an impostor cannot claim a rotation).
#[tokio::test]
async fn a_new_key_without_a_statement_is_not_pinned() {
    let dir = TempDir::new("keys-no-statement");
    let root = make_site(&dir, &[("a.bin", &test_bytes(1000, 21))]);
    let (k1, k2) = (dir.join("k1"), dir.join("k2"));
    let spawn = |key: &std::path::Path, listen: String| {
        let mut cmd = tokio::process::Command::new(peercache_tests::bin("peercache-server"));
        cmd.arg("--root")
            .arg(&root)
            .args(["--listen", &listen, "--no-relay", "--key-file"])
            .arg(key);
        peercache_tests::spawn_server_cmd(cmd)
    };
    let mut first = spawn(&k1, "127.0.0.1:0".into()).await.unwrap();
    let url = first.url.clone();
    let old_key = key(&first).await;
    let (ok, err) = fetch_cli(&url, "/static/a.bin", &dir.join("o"), &dir.join("c"))
        .await
        .unwrap();
    assert!(ok, "{err}");
    first.proc.stop().await;
    drop(first);
    let port = url.rsplit(':').next().unwrap().to_string();
    let other = spawn(&k2, format!("127.0.0.1:{port}")).await.unwrap();
    assert_ne!(key(&other).await, old_key);
    let (ok, err) = fetch_cli(&url, "/static/a.bin", &dir.join("o2"), &dir.join("c"))
        .await
        .unwrap();
    assert!(ok, "{err}");
    let servers = std::fs::read_to_string(state_for(&dir.join("c")).join("servers.json")).unwrap();
    assert!(
        servers.contains(&old_key),
        "the pinned key stays: {servers}"
    );
}

/// A replica whose key was rotated from the shared one replaces it in the
/// table, with its statements: replicas started later sign with the new key
/// and publish the rotation.
#[tokio::test]
async fn a_rotation_reaches_replicas_through_the_table() {
    let dir = TempDir::new("keys-rotate-replicas");
    let redis = spawn_redis().await.unwrap();
    let root = make_site(&dir, &[("a.bin", &test_bytes(1000, 4))]);
    let url = redis.url();
    let a = server(&root, &dir.join("state-a"), &["--store", &url]).await;
    let old = key(&a).await;
    drop(a);
    // The operator rotates replica a's key (its own state directory).
    let out = std::process::Command::new(peercache_tests::bin("peercache-server"))
        .arg("--root")
        .arg(&root)
        .arg("--rotate-key")
        .env("PEERCACHE_STATE_DIR", dir.join("state-a"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let a = server(&root, &dir.join("state-a"), &["--store", &url]).await;
    let new = key(&a).await;
    assert_ne!(new, old, "a signs with its rotated key");
    let b = server(&root, &dir.join("state-b"), &["--store", &url]).await;
    assert_eq!(key(&b).await, new, "a replica started later gets it too");
    let published: serde_json::Value = reqwest::get(format!("{}/v1/key", b.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(published["rotations"][0]["old_key"], old.as_str());
    assert_eq!(published["rotations"][0]["new_key"], new.as_str());
}
