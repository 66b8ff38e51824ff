//! The coordination server with real peers and real processes: flash crowds,
//! peer health, sharing the table through Redis, Redis outages, delisting.

use std::time::Duration;

use peercache_core::hash::ObjectHash;
use peercache_tests::{
    TempDir, TestKey, announce, ask, fetch_cli, fetch_cli_with, make_site, metrics,
    referred_report, register_and_fetch, seed_peer, signed_post, spawn_fake_peer, spawn_peer,
    spawn_redis, spawn_server, test_bytes,
};

/// A server that refers whenever a holder exists (a target period of 0 s) and
/// does not ping.
async fn referring_server(root: &std::path::Path) -> peercache_tests::Server {
    spawn_server(
        root,
        &[
            "--ping-interval",
            "0s",
            "--egress-limit",
            "8MiB",
            "--target-period",
            "0s",
        ],
    )
    .await
    .unwrap()
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
    let data = test_bytes(3_800_000, 11);
    let root = make_site(&dir, &[("v.bin", &data)]);
    // Alone, a client gets 3.8 MB in 7.25 s < 8 s: served. A crowd is not:
    // anyone asking within 6.5 s of a served start would wait over 8 s (the
    // window is wide so that a loaded machine's slow process starts, which
    // spread the crowd's asks over seconds, still make a crowd). Referrals
    // list the two seeds only (not the crowd's own receivers, which
    // `swarm.rs` covers), so that how the server spreads them shows.
    let server = spawn_server(
        &root,
        &[
            "--egress-limit",
            "512KiB",
            "--target-period",
            "8s",
            "--no-refer-to-receivers",
        ],
    )
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
            // Two slots each and a capped uplink: each upload lasts a while,
            // so the crowd overlaps on a seed and the server must spread it
            // (a full seed is not referred to; pending referrals count as load).
            spawn_peer(
                &server.url,
                &dir.join(name),
                &["--max-uploads", "2", "--upload-limit", "2MiB"],
            )
            .await
            .unwrap(),
        );
    }
    let before = metrics(&server.admin_url).await.unwrap();

    // The crowd reaches the server together whatever the machine's load.
    let gate = peercache_tests::spawn_gate(&server.url, 8).await.unwrap();
    let mut crowd = Vec::new();
    for i in 0..8 {
        let url = gate.url.clone();
        let out = dir.join(&format!("crowd{i}.out"));
        let cache = dir.join(&format!("crowd{i}"));
        crowd.push(tokio::spawn(async move {
            fetch_cli_with(&url, "/static/v.bin", &out, &cache, &["--explain"]).await
        }));
    }
    let mut from_peers = 0;
    // Which seed each referral listed first: the server's spreading, seen in
    // what it sent (which seed a client then picks is the client's choice,
    // by its own round trips).
    let mut listed_first = [0; 2];
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
        for (n, seed) in seeds.iter().enumerate() {
            if err.contains(&format!("  {} #0 rtt ", &seed.id[..12])) {
                listed_first[n] += 1;
            }
        }
    }
    drop(gate);
    let after = metrics(&server.admin_url).await.unwrap();
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
    eprintln!("referrals listing each seed first: {listed_first:?}");
    assert!(
        listed_first.iter().all(|&n| n >= 1),
        "the server spread the crowd: each seed was listed first in some \
         referral (times listed first: {listed_first:?})"
    );
    let mut uploads = 0.0;
    for seed in &seeds {
        uploads += metrics(&seed.url).await.unwrap()["peercache_uploads_total"];
    }
    assert!(
        uploads >= 1.0,
        "the seeds served the crowd ({uploads} uploads)"
    );

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
    // A target period of 0 s makes the server refer whenever a holder exists.
    let server = spawn_server(
        &root,
        &[
            "--ping-interval",
            "200ms",
            "--egress-limit",
            "8MiB",
            "--target-period",
            "0s",
        ],
    )
    .await
    .unwrap();

    // A slow holder (a real peer endpoint that answers pings after 700 ms), and
    // the most used one.
    let slow = spawn_fake_peer(TestKey::new(40), Duration::from_millis(700))
        .await
        .unwrap();
    assert_eq!(
        register_and_fetch(&server.url, &slow.key, Some(slow.port), "/static/h.bin")
            .await
            .unwrap(),
        200
    );
    assert_eq!(
        announce(&server.url, &slow.key, &[hash.to_hex()], Some((0, 4)))
            .await
            .unwrap()
            .len(),
        1
    );
    // Three clients referred to it report it served them.
    for i in 0..3 {
        let status = referred_report(
            &server.url,
            &TestKey::new(50 + i),
            "/static/h.bin",
            &slow.key.id,
            "served",
        )
        .await
        .unwrap();
        assert_eq!(status, 204);
    }
    let fast = seed_peer(
        &server.url,
        "/static/h.bin",
        &dir.join("o"),
        &dir.join("fast"),
        &[],
    )
    .await
    .unwrap();

    let mut order = Vec::new();
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let h = holders(&server.admin_url, &hash).await;
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
    assert_eq!(order[0]["direct"], true, "on loopback the path is direct");

    // The fast peer dies: after three failed pings it is gone.
    drop(fast);
    let mut gone = false;
    // Each failed ping waits out its 2 s deadline.
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let h = holders(&server.admin_url, &hash).await;
        if h.len() == 1 && h[0]["id"] == slow.key.id.as_str() {
            gone = true;
            break;
        }
    }
    assert!(gone, "the dead peer was dropped");
    let m = metrics(&server.admin_url).await.unwrap();
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
        holders(&one.admin_url, &hash).await,
        holders(&two.admin_url, &hash).await
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
    let m = metrics(&server.admin_url).await.unwrap();
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
    let server = referring_server(&root).await;
    let liar = TestKey::new(60);
    register_and_fetch(&server.url, &liar, Some(40100), "/static/a.bin")
        .await
        .unwrap();
    announce(&server.url, &liar, &[hash.to_hex()], None)
        .await
        .unwrap();
    for i in 0..3 {
        let status = referred_report(
            &server.url,
            &TestKey::new(70 + i),
            "/static/a.bin",
            &liar.id,
            "mismatch",
        )
        .await
        .unwrap();
        assert_eq!(status, 204);
        // Announcing again re-lists it until the strikes delist it.
        let _ = announce(&server.url, &liar, &[hash.to_hex()], None).await;
    }
    let r = signed_post(
        &server.url,
        "/v1/peers",
        &liar,
        &serde_json::json!({"peer_id": liar.id, "port": 40100}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 403, "delisted after three verified mismatches");
    assert!(holders(&server.admin_url, &hash).await.is_empty());

    let chatty = TestKey::new(61);
    register_and_fetch(&server.url, &chatty, Some(40101), "/static/a.bin")
        .await
        .unwrap();
    let mut refused = 0;
    // One connection, as a flooding peer would use (a new client per request
    // is slow enough on a loaded machine to stay under the rate).
    let http = reqwest::Client::new();
    for _ in 0..60 {
        let r = peercache_tests::signed_post_with(
            &http,
            &server.url,
            "/v1/announce",
            &chatty,
            &serde_json::json!({"peer_id": chatty.id, "have": []}),
        )
        .await
        .unwrap();
        if r.status() == 429 {
            assert!(r.headers().contains_key("retry-after"));
            refused += 1;
        }
    }
    assert!(refused > 0, "announces are rate-limited per peer");
}

#[tokio::test]
async fn a_peer_is_its_key_and_only_referred_clients_count() {
    let dir = TempDir::new("keys");
    let data = test_bytes(10_000, 16);
    let hash = ObjectHash::of(&data);
    let root = make_site(&dir, &[("a.bin", &data)]);
    let server = referring_server(&root).await;
    let holder = TestKey::new(80);
    let mallory = TestKey::new(81);
    register_and_fetch(&server.url, &holder, Some(40200), "/static/a.bin")
        .await
        .unwrap();
    announce(&server.url, &holder, &[hash.to_hex()], Some((0, 4)))
        .await
        .unwrap();
    let listed = || async { holders(&server.admin_url, &hash).await };
    assert_eq!(listed().await.len(), 1);
    let before = listed().await[0]["addr"].clone();

    // Without the holder's key: unsigned, signed by another key, or replayed
    // onto another body: refused, and nothing changes.
    let http = reqwest::Client::new();
    let unsigned = http
        .post(format!("{}/v1/announce", server.url))
        .json(&serde_json::json!({"peer_id": holder.id, "dropped": [hash.to_hex()]}))
        .send()
        .await
        .unwrap();
    assert_eq!(unsigned.status(), 401);
    for (path, body) in [
        (
            "/v1/announce",
            serde_json::json!({"peer_id": holder.id, "dropped": [hash.to_hex()]}),
        ),
        (
            "/v1/peers",
            serde_json::json!({"peer_id": holder.id, "dial": {"relay": null, "direct": ["127.0.0.1:1"]}, "port": 1}),
        ),
        (
            "/v1/report",
            serde_json::json!({"peer_id": holder.id, "hash": hash.to_hex(), "source": holder.id, "outcome": "mismatch"}),
        ),
    ] {
        let r = signed_post(&server.url, path, &mallory, &body)
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{path} for someone else's id");
    }
    // A valid signature over another body.
    let body = serde_json::to_vec(&serde_json::json!({"peer_id": holder.id, "have": []})).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let auth =
        peercache_core::auth::sign_request(&holder.secret, "POST", "/v1/announce", now, &body);
    let swapped = http
        .post(format!("{}/v1/announce", server.url))
        .header("peercache-auth", auth)
        .header("content-type", "application/json")
        .body(
            serde_json::to_vec(
                &serde_json::json!({"peer_id": holder.id, "dropped": [hash.to_hex()]}),
            )
            .unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(swapped.status(), 401);
    assert_eq!(listed().await.len(), 1, "still listed");
    assert_eq!(listed().await[0]["addr"], before, "at the same address");

    // Three mismatch reports from clients never referred to it: no effect.
    for i in 0..3 {
        let stranger = TestKey::new(90 + i);
        let r = signed_post(
            &server.url,
            "/v1/report",
            &stranger,
            &serde_json::json!({"peer_id": stranger.id, "hash": hash.to_hex(), "source": holder.id, "outcome": "mismatch"}),
        )
        .await
        .unwrap();
        assert_eq!(r.status(), 202, "accepted, and ignored");
    }
    assert_eq!(
        listed().await.len(),
        1,
        "three unreferred mismatches leave it listed"
    );
    // One referral allows one report, not two.
    let client = TestKey::new(99);
    assert_eq!(
        referred_report(
            &server.url,
            &client,
            "/static/a.bin",
            &holder.id,
            "mismatch"
        )
        .await
        .unwrap(),
        204
    );
    let again = signed_post(
        &server.url,
        "/v1/report",
        &client,
        &serde_json::json!({"peer_id": client.id, "hash": hash.to_hex(), "source": holder.id, "outcome": "mismatch"}),
    )
    .await
    .unwrap();
    assert_eq!(again.status(), 202, "the referral was used up");
    let m = metrics(&server.admin_url).await.unwrap();
    assert_eq!(m["peercache_mismatch_reports_total"], 1.0);
    assert_eq!(m["peercache_reports_unreferred_total"], 4.0);
    assert!(m["peercache_auth_failures_total"] >= 5.0);
}

/// `/admin` on any replica shows the figures of all replicas sharing a Redis
/// store, and its history is the shared one.
#[tokio::test]
async fn replicas_sharing_redis_show_the_same_admin_figures() {
    let dir = TempDir::new("replica-figures");
    let data = test_bytes(300_000, 17);
    let root = make_site(&dir, &[("f.bin", &data)]);
    let redis = spawn_redis().await.unwrap();
    let store = redis.url();
    let args = ["--store", store.as_str(), "--ping-interval", "0s"];
    let one = spawn_server(&root, &args).await.unwrap();
    let two = spawn_server(&root, &args).await.unwrap();
    // Two plain downloads through replica one, none through two.
    for _ in 0..2 {
        let body = reqwest::get(format!("{}/static/f.bin", one.url))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(body.len(), data.len());
    }
    let stats = |admin: String| async move {
        reqwest::get(format!("{admin}/admin/stats.json"))
            .await
            .unwrap()
            .json::<serde_json::Value>()
            .await
            .unwrap()
    };
    let want = 2 * data.len() as u64;
    let mut seen = (0, 0, 0);
    for _ in 0..100 {
        let (a, b) = (
            stats(one.admin_url.clone()).await,
            stats(two.admin_url.clone()).await,
        );
        let served = |v: &serde_json::Value| v["bytes_served"].as_u64().unwrap_or(0);
        let hist = |v: &serde_json::Value| v["history"].as_array().map_or(0, Vec::len);
        seen = (served(&a), served(&b), hist(&b));
        if seen.0 >= want && seen.1 >= want && seen.2 >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(seen.0 >= want, "replica one counts its own bytes: {seen:?}");
    assert!(
        seen.1 >= want,
        "replica two shows the bytes replica one served: {seen:?}"
    );
    assert!(
        seen.2 >= 1,
        "replica two shows the shared history: {seen:?}"
    );
}

/// `POST /v1/sources` (issue 12): a peer receiving an object learns,
/// mid-download, of the peers referred for it after it (a crowd's first
/// clients would otherwise know only the holders of their own referral); a
/// peer not receiving the object, or an unsigned ask, learns nothing.
#[tokio::test]
async fn receivers_learn_of_later_receivers_and_strangers_learn_nothing() {
    let dir = TempDir::new("sources");
    let data = test_bytes(3_000_000, 21);
    let hash = ObjectHash::of(&data);
    let root = make_site(&dir, &[("s.bin", &data)]);
    let server = referring_server(&root).await;
    let seed = seed_peer(
        &server.url,
        "/static/s.bin",
        &dir.join("seed.out"),
        &dir.join("seed"),
        &[],
    )
    .await
    .unwrap();
    let keys: Vec<TestKey> = (0..3).map(|i| TestKey::new(900 + i)).collect();
    for (i, k) in keys.iter().enumerate() {
        let port = 40_000 + u16::try_from(i).unwrap();
        let status = register_and_fetch(&server.url, k, Some(port), "/static/s.bin")
            .await
            .unwrap();
        assert_eq!(status, 300, "referred to the seed");
    }
    let sources = |key: &TestKey| {
        let body = serde_json::json!({"peer_id": key.id, "hash": hash});
        let url = server.url.clone();
        let key = key.clone();
        async move { signed_post(&url, "/v1/sources", &key, &body).await.unwrap() }
    };

    // The first one referred learns of the seed and the two referred after it.
    let r = sources(&keys[0]).await;
    assert_eq!(r.status(), 200);
    let list: Vec<serde_json::Value> = r.json().await.unwrap();
    let ids: Vec<&str> = list.iter().filter_map(|p| p["id"].as_str()).collect();
    assert!(ids.contains(&seed.id.as_str()), "{ids:?}");
    for k in &keys[1..] {
        assert!(ids.contains(&k.id.as_str()), "a later receiver: {ids:?}");
    }
    assert!(!ids.contains(&keys[0].id.as_str()), "not itself: {ids:?}");

    // A registered peer that was never referred for it: refused.
    let stranger = TestKey::new(999);
    let dial = serde_json::json!({"relay": null, "direct": ["127.0.0.1:40999"]});
    let r = signed_post(
        &server.url,
        "/v1/peers",
        &stranger,
        &serde_json::json!({"peer_id": stranger.id, "dial": dial, "port": 40999}),
    )
    .await
    .unwrap();
    assert!(r.status().is_success());
    assert_eq!(sources(&stranger).await.status(), 403);
    // Unsigned: refused before anything is looked up.
    let r = reqwest::Client::new()
        .post(format!("{}/v1/sources", server.url))
        .json(&serde_json::json!({"peer_id": keys[0].id, "hash": hash}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let m = metrics(&server.admin_url).await.unwrap();
    assert_eq!(m["peercache_source_refreshes_total"], 1.0);
}
