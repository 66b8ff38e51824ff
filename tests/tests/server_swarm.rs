//! The coordination server with real peers and real processes: flash crowds,
//! peer health, sharing the table through Redis, Redis outages, delisting.

use std::time::Duration;

use peercache_core::hash::ObjectHash;
use peercache_tests::{
    TempDir, announce, ask, fetch_cli, make_site, metrics, register_and_fetch, seed_peer,
    spawn_peer, spawn_redis, spawn_server, test_bytes,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A peer that answers pings, slowly: stands in for a peer on a bad link.
async fn slow_pinger(delay: Duration) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 2048];
                let _ = sock.read(&mut buf).await;
                tokio::time::sleep(delay).await;
                let _ = sock
                    .write_all(b"HTTP/1.1 204 No Content\r\nPeercache-Load: 0/4\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .await;
            });
        }
    });
    port
}

async fn holders(server: &str, hash: &ObjectHash) -> Vec<serde_json::Value> {
    let v: serde_json::Value = reqwest::get(format!("{server}/v1/objects/{hash}/peers"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v.as_array().cloned().unwrap_or_default()
}

#[tokio::test]
async fn a_flash_crowd_turns_on_referrals_spreads_them_and_they_stop_after() {
    let dir = TempDir::new("crowd");
    let data = test_bytes(1_500_000, 11);
    let root = make_site(&dir, &[("v.bin", &data)]);
    // Alone, a client gets 1.5 MB in 0.75 s < 1 s: served. A crowd is not.
    let server = spawn_server(&root, &["--egress-limit", "2MiB", "--target-period", "1s"])
        .await
        .unwrap();
    let mut seeds = Vec::new();
    for name in ["seed-a", "seed-b"] {
        let (ok, err) = fetch_cli(
            &server.url,
            "/static/v.bin",
            &dir.join(&format!("{name}.out")),
            &dir.join(name),
        )
        .await
        .unwrap();
        assert!(ok && err.contains("from the server"), "{err}");
        seeds.push(
            spawn_peer(&server.url, &dir.join(name), &["--max-uploads", "2"])
                .await
                .unwrap(),
        );
    }
    let before = metrics(&server.url).await.unwrap();

    let mut crowd = Vec::new();
    for i in 0..8 {
        let url = server.url.clone();
        let out = dir.join(&format!("crowd{i}.out"));
        let cache = dir.join(&format!("crowd{i}"));
        crowd.push(tokio::spawn(async move {
            fetch_cli(&url, "/static/v.bin", &out, &cache).await
        }));
    }
    let mut from_peers = 0;
    for (i, c) in crowd.into_iter().enumerate() {
        let (ok, err) = c.await.unwrap().unwrap();
        assert!(ok, "{err}");
        assert_eq!(
            std::fs::read(dir.join(&format!("crowd{i}.out"))).unwrap(),
            data
        );
        if err.contains("from peer") {
            from_peers += 1;
        }
    }
    let after = metrics(&server.url).await.unwrap();
    let referred =
        after["peercache_requests_referred_total"] - before["peercache_requests_referred_total"];
    let served =
        after["peercache_requests_served_total"] - before["peercache_requests_served_total"];
    assert!(
        referred >= 4.0,
        "the crowd was referred ({referred} referrals)"
    );
    assert!(
        served >= 1.0,
        "the first of the crowd was served ({served})"
    );
    assert!(
        from_peers >= 4,
        "{from_peers} of 8 got their bytes from peers"
    );
    for seed in &seeds {
        let m = metrics(&seed.url).await.unwrap();
        assert!(
            m["peercache_uploads_total"] >= 1.0,
            "the crowd was spread over both seeds: {m:?}"
        );
    }

    // Once the crowd is served, a lone client is served directly again.
    let (ok, err) = fetch_cli(
        &server.url,
        "/static/v.bin",
        &dir.join("late.out"),
        &dir.join("late"),
    )
    .await
    .unwrap();
    assert!(ok && err.contains("from the server"), "{err}");
}

#[tokio::test]
async fn the_server_pings_peers_demotes_slow_ones_and_drops_dead_ones() {
    let dir = TempDir::new("health");
    let data = test_bytes(100_000, 12);
    let hash = ObjectHash::of(&data);
    let root = make_site(&dir, &[("h.bin", &data)]);
    let server = spawn_server(&root, &["--ping-interval", "200ms"])
        .await
        .unwrap();

    // A slow holder, and the most used one.
    let slow_port = slow_pinger(Duration::from_millis(700)).await;
    assert_eq!(
        register_and_fetch(&server.url, "slowpoke", Some(slow_port), "/static/h.bin")
            .await
            .unwrap(),
        200
    );
    assert_eq!(
        announce(&server.url, "slowpoke", &[hash.to_hex()], Some((0, 4)))
            .await
            .unwrap()
            .len(),
        1
    );
    let fast = seed_peer(
        &server.url,
        "/static/h.bin",
        &dir.join("o"),
        &dir.join("fast"),
        &[],
    )
    .await
    .unwrap();
    // The slow one was used most.
    for _ in 0..3 {
        reqwest::Client::new()
            .post(format!("{}/v1/report", server.url))
            .json(&serde_json::json!({"peer_id": "x", "hash": hash.to_hex(), "source": "slowpoke", "outcome": "served", "bytes": 1}))
            .send()
            .await
            .unwrap();
    }

    let mut order = Vec::new();
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let h = holders(&server.url, &hash).await;
        if h.len() == 2 && h.iter().all(|p| p["rtt_ms"].is_u64()) {
            order = h;
            break;
        }
    }
    assert_eq!(order.len(), 2, "both peers pinged");
    assert_eq!(
        order[0]["id"], fast.id,
        "the slow peer is demoted despite its use: {order:?}"
    );
    assert!(order[1]["rtt_ms"].as_u64().unwrap() >= 500);

    // The fast peer dies: after three failed pings it is gone.
    drop(fast);
    let mut gone = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let h = holders(&server.url, &hash).await;
        if h.len() == 1 && h[0]["id"] == "slowpoke" {
            gone = true;
            break;
        }
    }
    assert!(gone, "the dead peer was dropped");
    let m = metrics(&server.url).await.unwrap();
    assert!(m["peercache_ping_failures_total"] >= 3.0);
}

#[tokio::test]
async fn two_servers_sharing_redis_give_the_same_referrals() {
    let dir = TempDir::new("replicas");
    let data = test_bytes(200_000, 13);
    let hash = ObjectHash::of(&data);
    let root = make_site(&dir, &[("r.bin", &data)]);
    let redis = spawn_redis().await.unwrap();
    let store = redis.url();
    let args = [
        "--store",
        store.as_str(),
        "--egress-limit",
        "1MiB",
        "--target-period",
        "0s",
        "--ping-interval",
        "0s",
    ];
    let one = spawn_server(&root, &args).await.unwrap();
    let two = spawn_server(&root, &args).await.unwrap();

    // A peer fetches through replica one and announces there…
    let peer = seed_peer(
        &one.url,
        "/static/r.bin",
        &dir.join("o"),
        &dir.join("p"),
        &[],
    )
    .await
    .unwrap();
    // …and replica two refers to it.
    let (status, referral) = ask(&two.url, "someone", "/static/r.bin").await.unwrap();
    assert_eq!(status, 300);
    let referral = referral.unwrap();
    assert_eq!(referral["proxies"][0]["id"], peer.id);
    assert_eq!(referral["object"]["hash"], hash.to_hex());
    // Both replicas list the same holders.
    assert_eq!(
        holders(&one.url, &hash).await,
        holders(&two.url, &hash).await
    );
    // A client of replica two downloads from the peer.
    let (ok, err) = fetch_cli(&two.url, "/static/r.bin", &dir.join("o2"), &dir.join("q"))
        .await
        .unwrap();
    assert!(
        ok && err.contains(&format!("from peer {}", peer.id)),
        "{err}"
    );
}

#[tokio::test]
async fn when_redis_goes_away_clients_are_served_directly_and_referrals_resume_after() {
    let dir = TempDir::new("outage");
    let data = test_bytes(200_000, 14);
    let root = make_site(&dir, &[("o.bin", &data)]);
    let mut redis = spawn_redis().await.unwrap();
    let store = redis.url();
    let server = spawn_server(
        &root,
        &[
            "--store",
            &store,
            "--egress-limit",
            "1MiB",
            "--target-period",
            "0s",
            "--ping-interval",
            "0s",
        ],
    )
    .await
    .unwrap();
    let peer = seed_peer(
        &server.url,
        "/static/o.bin",
        &dir.join("o"),
        &dir.join("p"),
        &[],
    )
    .await
    .unwrap();
    assert_eq!(
        ask(&server.url, "c1", "/static/o.bin").await.unwrap().0,
        300
    );

    redis.stop().await;
    for i in 0..5 {
        let r = reqwest::Client::new()
            .get(format!("{}/static/o.bin", server.url))
            .header("Peercache-Client", format!("id=c{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            200,
            "no failed client request during the outage"
        );
        assert_eq!(r.bytes().await.unwrap(), data);
    }
    let m = metrics(&server.url).await.unwrap();
    assert!(m["peercache_store_errors_total"] >= 1.0);

    redis.restart().await.unwrap();
    // The data went with Redis; the peer's heartbeat (or a restart) re-announces.
    // Here the peer re-registers at once by being restarted with the same cache.
    drop(peer);
    let peer = spawn_peer(&server.url, &dir.join("p"), &[]).await.unwrap();
    assert!(
        peer.proc
            .banner
            .iter()
            .any(|l| l == "announced 1 of 1 cached objects"),
        "{:?}",
        peer.proc.banner
    );
    let (status, referral) = ask(&server.url, "c9", "/static/o.bin").await.unwrap();
    assert_eq!(status, 300, "referrals resume");
    assert_eq!(referral.unwrap()["proxies"][0]["id"], peer.id);
}

#[tokio::test]
async fn liars_are_delisted_and_announce_floods_are_refused() {
    let dir = TempDir::new("abuse");
    let data = test_bytes(10_000, 15);
    let hash = ObjectHash::of(&data);
    let root = make_site(&dir, &[("a.bin", &data)]);
    let server = spawn_server(&root, &["--ping-interval", "0s"])
        .await
        .unwrap();
    register_and_fetch(&server.url, "liar", Some(40100), "/static/a.bin")
        .await
        .unwrap();
    for _ in 0..3 {
        announce(&server.url, "liar", &[hash.to_hex()], None)
            .await
            .unwrap();
        let r = reqwest::Client::new()
            .post(format!("{}/v1/report", server.url))
            .json(&serde_json::json!({"peer_id": "victim", "hash": hash.to_hex(), "source": "liar", "outcome": "mismatch"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
    }
    let r = reqwest::Client::new()
        .post(format!("{}/v1/peers", server.url))
        .json(&serde_json::json!({"peer_id": "liar", "port": 40100}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "delisted after three verified mismatches");
    assert!(holders(&server.url, &hash).await.is_empty());

    register_and_fetch(&server.url, "chatty", Some(40101), "/static/a.bin")
        .await
        .unwrap();
    let mut refused = 0;
    for _ in 0..60 {
        let r = reqwest::Client::new()
            .post(format!("{}/v1/announce", server.url))
            .json(&serde_json::json!({"peer_id": "chatty", "have": []}))
            .send()
            .await
            .unwrap();
        if r.status() == 429 {
            assert!(r.headers().contains_key("retry-after"));
            refused += 1;
        }
    }
    assert!(refused > 0, "announces are rate-limited per peer");
}
