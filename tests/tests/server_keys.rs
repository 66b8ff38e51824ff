//! The server's record-signing key lasts: kept in its state directory across
//! restarts (one per site), and shared by replicas through the look-up table.

use peercache_tests::{Server, TempDir, make_site, spawn_redis, test_bytes};

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
