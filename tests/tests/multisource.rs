//! Verified multi-source downloads and resume (DESIGN B1, B3) with real peers.

use std::time::Duration;

use peercache_tests::{
    TempDir, fetch_cli, make_site, metrics, spawn_peer, spawn_server, test_bytes,
};

#[tokio::test]
async fn a_large_object_comes_from_several_peers_at_once_and_no_byte_twice() {
    let dir = TempDir::new("multi");
    let data = test_bytes(8 << 20, 51);
    let root = make_site(&dir, &[("big.bin", &data)]);
    let server = spawn_server(
        &root,
        &[
            "--egress-limit",
            "64MiB",
            "--target-period",
            "0s",
            "--ping-interval",
            "0s",
        ],
    )
    .await
    .unwrap();
    let mut peers = Vec::new();
    for name in ["p1", "p2", "p3"] {
        let (ok, err) = fetch_cli(
            &server.url,
            "/static/big.bin",
            &dir.join("x"),
            &dir.join(name),
        )
        .await
        .unwrap();
        assert!(ok, "{err}");
        peers.push(
            spawn_peer(&server.url, &dir.join(name), &["--upload-limit", "16MiB"])
                .await
                .unwrap(),
        );
    }
    let before = metrics(&server.admin_url).await.unwrap();
    let (ok, err) = fetch_cli(
        &server.url,
        "/static/big.bin",
        &dir.join("out"),
        &dir.join("c"),
    )
    .await
    .unwrap();
    assert!(ok && err.contains("from peer"), "{err}");
    assert_eq!(std::fs::read(dir.join("out")).unwrap(), data);
    let after = metrics(&server.admin_url).await.unwrap();
    assert_eq!(
        after["peercache_reported_from_peers_bytes_total"]
            - before["peercache_reported_from_peers_bytes_total"],
        data.len() as f64,
        "every verified byte came from peers, none twice"
    );
    let mut used = 0;
    for p in &peers {
        if metrics(&p.url).await.unwrap()["peercache_bytes_uploaded_total"] > 0.0 {
            used += 1;
        }
    }
    assert!(used >= 2, "{used} peers shared the download");
}

#[tokio::test]
async fn when_a_peer_dies_mid_transfer_the_rest_comes_from_the_server_without_refetching() {
    let dir = TempDir::new("resume");
    let data = test_bytes(3 << 20, 52);
    let root = make_site(&dir, &[("f.bin", &data)]);
    let server = spawn_server(
        &root,
        &[
            "--egress-limit",
            "64MiB",
            "--target-period",
            "0s",
            "--ping-interval",
            "0s",
        ],
    )
    .await
    .unwrap();
    let (ok, err) = fetch_cli(
        &server.url,
        "/static/f.bin",
        &dir.join("x"),
        &dir.join("slow"),
    )
    .await
    .unwrap();
    assert!(ok, "{err}");
    // A peer on a slow uplink: 3 MiB take 6 s.
    let slow = spawn_peer(
        &server.url,
        &dir.join("slow"),
        &["--upload-limit", "512KiB"],
    )
    .await
    .unwrap();
    let before = metrics(&server.admin_url).await.unwrap();
    let url = server.url.clone();
    let (out, cache) = (dir.join("out"), dir.join("c"));
    let download =
        tokio::spawn(async move { fetch_cli(&url, "/static/f.bin", &out, &cache).await });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    drop(slow); // killed mid-transfer
    let (ok, err) = download.await.unwrap().unwrap();
    assert!(ok, "{err}");
    assert_eq!(
        std::fs::read(dir.join("out")).unwrap(),
        data,
        "complete and verified"
    );
    let after = metrics(&server.admin_url).await.unwrap();
    let from_peer = after["peercache_reported_from_peers_bytes_total"]
        - before["peercache_reported_from_peers_bytes_total"];
    let from_server =
        after["peercache_served_bytes_total"] - before["peercache_served_bytes_total"];
    assert!(
        from_peer > 0.0 && from_server > 0.0,
        "peer {from_peer}, server {from_server}"
    );
    assert_eq!(
        from_peer + from_server,
        data.len() as f64,
        "the server sent only what the peer had not"
    );
}
