//! The server goes silent (DESIGN M10, M11, B8): a client finds the object through
//! the peers it met before, the query cascades through a peer that lacks the
//! object to one that has it, and the hash is trusted only because the server
//! signed the record with the key the client pinned on an earlier visit.

use peercache_tests::{
    TempDir, fetch_cli, make_site, metrics, seed_peer, spawn_peer, spawn_server, test_bytes,
};

#[tokio::test]
async fn with_the_server_stopped_a_cascade_through_peers_delivers_verified_bytes() {
    let dir = TempDir::new("server-down");
    let f = test_bytes(700_000, 61);
    let g = test_bytes(200_000, 71);
    let k = test_bytes(200_000, 81);
    let root = make_site(&dir, &[("f.bin", &f), ("g.bin", &g), ("k.bin", &k)]);
    let key = dir.join("server.key");
    let key_arg = key.to_string_lossy().into_owned();
    let args = [
        "--egress-limit",
        "64MiB",
        "--target-period",
        "0s",
        "--ping-interval",
        "0s",
        "--key-file",
        key_arg.as_str(),
    ];
    let server = spawn_server(&root, &args).await.unwrap();
    let fetch = |path: &'static str, cache: &'static str, out: &'static str| {
        let (url, dir_cache, dir_out) = (server.url.clone(), dir.join(cache), dir.join(out));
        async move { fetch_cli(&url, path, &dir_out, &dir_cache).await.unwrap() }
    };

    // A holds f and g.
    for p in ["/static/f.bin", "/static/g.bin"] {
        let (ok, err) = fetch(p, "a", "o").await;
        assert!(ok, "{err}");
    }
    let a = spawn_peer(&server.url, &dir.join("a"), &[]).await.unwrap();
    // B gets g from A (so B knows A) and k from the server; B does not hold f.
    let (ok, err) = fetch("/static/g.bin", "b", "o").await;
    assert!(ok && err.contains(&format!("from peer {}", a.id)), "{err}");
    let (ok, err) = fetch("/static/k.bin", "b", "o").await;
    assert!(ok && err.contains("from the server"), "{err}");
    let b = spawn_peer(&server.url, &dir.join("b"), &[]).await.unwrap();
    // C gets k from B: C knows only B, and pinned the server's key.
    let (ok, err) = fetch("/static/k.bin", "c", "o").await;
    assert!(ok && err.contains(&format!("from peer {}", b.id)), "{err}");
    let aux = std::fs::read_to_string(dir.join("c/aux.json")).unwrap();
    assert!(aux.contains(&b.id) && !aux.contains(&a.id), "{aux}");

    // The server goes silent: it still accepts connections but answers nothing
    // (stopped with SIGSTOP), so the client waits out its period, then asks peers.
    let url = server.url.clone();
    let pid = server.proc.child.id().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-STOP", &pid])
            .status()
            .unwrap()
            .success()
    );

    // C asks for f: B lacks it and passes the query to A, which has it.
    let (ok, err) = fetch_cli(&url, "/static/f.bin", &dir.join("f.out"), &dir.join("c"))
        .await
        .unwrap();
    assert!(ok, "{err}");
    assert!(err.contains(&format!("from peer {}", a.id)), "{err}");
    assert_eq!(std::fs::read(dir.join("f.out")).unwrap(), f);
    let mb = metrics(&b.url).await.unwrap();
    assert!(
        mb["peercache_locate_queries_total"] >= 1.0,
        "the query went through B"
    );

    // A client that never pinned the server's key gets nothing from peers.
    let (ok, err) = fetch_cli(
        &url,
        "/static/f.bin",
        &dir.join("nope"),
        &dir.join("stranger"),
    )
    .await
    .unwrap();
    assert!(!ok && err.contains("server unreachable"), "{err}");
    assert!(!dir.join("nope").exists());
    let _ = std::process::Command::new("kill")
        .args(["-CONT", &pid])
        .status();
    drop(server);
}

#[tokio::test]
async fn a_record_signed_with_another_key_is_never_used() {
    let dir = TempDir::new("forged-record");
    let f = test_bytes(300_000, 64);
    let root = make_site(&dir, &[("f.bin", &f)]);
    let key1 = dir.join("k1");
    let k1 = key1.to_string_lossy().into_owned();
    let server = spawn_server(
        &root,
        &[
            "--egress-limit",
            "64MiB",
            "--target-period",
            "0s",
            "--ping-interval",
            "0s",
            "--key-file",
            k1.as_str(),
        ],
    )
    .await
    .unwrap();
    // The client pins the real key.
    let (ok, err) = fetch_cli(&server.url, "/static/f.bin", &dir.join("o"), &dir.join("c"))
        .await
        .unwrap();
    assert!(ok, "{err}");
    let url = server.url.clone();
    let port = url.rsplit(':').next().unwrap().to_string();
    let mut server = server;
    server.proc.stop().await;
    drop(server);
    // An impostor on the same address, with its own key, seeds a peer.
    let key2 = dir.join("k2");
    let k2 = key2.to_string_lossy().into_owned();
    let mut cmd = tokio::process::Command::new(peercache_tests::bin("peercache-server"));
    cmd.arg("--root").arg(&root).args([
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--ping-interval",
        "0s",
        "--no-relay",
        "--key-file",
        k2.as_str(),
    ]);
    let impostor = peercache_tests::spawn_server_cmd(cmd).await.unwrap();
    let _p = seed_peer(
        &impostor.url,
        "/static/f.bin",
        &dir.join("o"),
        &dir.join("p"),
        &[],
    )
    .await
    .unwrap();
    // The client met that peer in a referral from the impostor…
    let (ok, err) = fetch_cli(
        &impostor.url,
        "/static/f.bin",
        &dir.join("o2"),
        &dir.join("c"),
    )
    .await
    .unwrap();
    assert!(ok, "{err}");
    drop(impostor);
    // …but with the server down, the peer's record (signed by the impostor's key)
    // does not verify against the pinned key, so it is not used.
    std::fs::remove_dir_all(dir.join("c/objects")).unwrap();
    std::fs::remove_dir_all(dir.join("c/records")).ok();
    let (ok, err) = fetch_cli(&url, "/static/f.bin", &dir.join("o3"), &dir.join("c"))
        .await
        .unwrap();
    assert!(!ok && err.contains("signed by the pinned key"), "{err}");
}
