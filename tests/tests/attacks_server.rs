//! The server against attackers (issue #13, server side): each test plays the
//! attacker against the real `peercache-server` process and checks the
//! defence holds (and prints the attacker's rate, the server's peak RSS and
//! open fds, and how honest requests fared).

use std::time::{Duration, Instant};

use peercache_core::ObjectHash;
use peercache_tests::{
    Server, TempDir, TestKey, announce, make_site, metrics, register_and_fetch, signed_post,
    signed_post_with, spawn_endless_holder, spawn_relaying_prover, spawn_server, test_bytes,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MIB: usize = 1 << 20;

fn p99(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get((v.len() * 99 / 100).min(v.len().saturating_sub(1)))
        .copied()
        .unwrap_or_default()
}

fn figures(what: &str, server: &Server, rate: f64, ok: usize, total: usize, lat: Vec<Duration>) {
    println!(
        "{what}: attacker {rate:.0}/s; server peak RSS {} KiB, open fds {}; honest {ok}/{total} served, p99 {:?}",
        server.peak_rss_kib(),
        server.open_fds(),
        p99(lat)
    );
}

/// A client bound to 127.0.0.2: another address than the attacker's.
fn other_address() -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .build()
        .unwrap()
}

#[tokio::test]
async fn operator_pages_are_not_on_the_public_listener() {
    let dir = TempDir::new("atk-admin");
    let root = make_site(&dir, &[("a.bin", &test_bytes(1000, 1))]);
    let server = spawn_server(&root, &[]).await.unwrap();
    let hash = ObjectHash::of(&test_bytes(1000, 1));
    for path in [
        "/admin".to_string(),
        "/admin/stats.json".to_string(),
        "/metrics".to_string(),
        format!("/v1/objects/{hash}/peers"),
    ] {
        let public = reqwest::get(format!("{}{path}", server.url)).await.unwrap();
        assert_eq!(public.status(), 404, "{path} is not public");
        let admin = reqwest::get(format!("{}{path}", server.admin_url))
            .await
            .unwrap();
        assert_eq!(admin.status(), 200, "{path} on the admin listener");
    }
    assert!(server.admin_url.starts_with("http://127.0.0.1:"));
}

#[tokio::test]
async fn one_address_cannot_fill_the_table() {
    let dir = TempDir::new("atk-keys");
    let root = make_site(&dir, &[("a.bin", b"x")]);
    let server = spawn_server(
        &root,
        &[
            "--max-peers-per-ip",
            "16",
            "--source-rate",
            "100000",
            "--peer-ttl",
            "600s",
        ],
    )
    .await
    .unwrap();
    let start = Instant::now();
    let mut accepted = 0;
    let (mut honest_ok, mut honest_lat) = (0, Vec::new());
    let other = other_address();
    // The attacker keeps one connection, as a flooder would: a fresh one per
    // request can meet the per-address connection cap before the server has
    // seen the last one close (the case under test is the table, not that cap).
    let attacker = reqwest::Client::new();
    for i in 0..1000u64 {
        let key = TestKey::new(10_000 + i);
        let r = signed_post_with(
            &attacker,
            &server.url,
            "/v1/peers",
            &key,
            &serde_json::json!({"peer_id": key.id}),
        )
        .await
        .unwrap();
        if r.status().is_success() {
            accepted += 1;
        } else {
            assert_eq!(r.status(), 429);
        }
        if i % 100 == 0 {
            let honest = TestKey::new(90_000 + i);
            let t = Instant::now();
            let r = signed_post_with(
                &other,
                &server.url,
                "/v1/peers",
                &honest,
                &serde_json::json!({"peer_id": honest.id}),
            )
            .await
            .unwrap();
            honest_lat.push(t.elapsed());
            if r.status().is_success() {
                honest_ok += 1;
            }
        }
    }
    let rate = 1000.0 / start.elapsed().as_secs_f64();
    figures(
        "1000 keys from one address",
        &server,
        rate,
        honest_ok,
        10,
        honest_lat,
    );
    assert_eq!(accepted, 16, "one address gets its cap of keys, no more");
    assert_eq!(honest_ok, 10, "another address still registers");
    let stats = server.admin_stats().await.unwrap();
    assert_eq!(stats["peers_live"], 26);
}

#[tokio::test]
async fn api_requests_are_limited_per_address_not_per_key() {
    let dir = TempDir::new("atk-rate");
    let root = make_site(&dir, &[("a.bin", b"x")]);
    let server = spawn_server(&root, &["--source-rate", "1"]).await.unwrap();
    let hash = ObjectHash::of(b"x");
    let client = reqwest::Client::new();
    let start = Instant::now();
    let mut limited = 0;
    for _ in 0..100 {
        let r = client
            .get(format!("{}/v1/objects/{hash}/outboard", server.url))
            .send()
            .await
            .unwrap();
        if r.status() == 429 {
            limited += 1;
        }
    }
    let rate = 100.0 / start.elapsed().as_secs_f64();
    println!("API flood: {rate:.0}/s, {limited}/100 refused");
    assert!(
        limited >= 70,
        "most of a burst of 100 is refused: {limited}"
    );
    let r = other_address()
        .get(format!("{}/v1/objects/{hash}/outboard", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "another address is still answered");
}

/// A holder listed by a whole GET, a client referred to it.
async fn referral_setup(tag: &str) -> (TempDir, Server, Vec<u8>, TestKey, TestKey) {
    let dir = TempDir::new(tag);
    let data = test_bytes(MIB, 7);
    let root = make_site(&dir, &[("a.bin", &data)]);
    let server = spawn_server(
        &root,
        &[
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
    let holder = TestKey::new(1);
    assert_eq!(
        register_and_fetch(&server.url, &holder, Some(40_999), "/static/a.bin")
            .await
            .unwrap(),
        200
    );
    let hash = ObjectHash::of(&data).to_hex();
    assert_eq!(
        announce(&server.url, &holder, std::slice::from_ref(&hash), None)
            .await
            .unwrap(),
        vec![hash]
    );
    let client = TestKey::new(2);
    let r = signed_post(
        &server.url,
        "/v1/peers",
        &client,
        &serde_json::json!({"peer_id": client.id}),
    )
    .await
    .unwrap();
    assert!(r.status().is_success());
    (dir, server, data, holder, client)
}

#[tokio::test]
async fn reports_cannot_forge_the_offload() {
    let (_dir, server, data, holder, client) = referral_setup("atk-report").await;
    let hash = ObjectHash::of(&data);
    let (status, _) = peercache_tests::ask(&server.url, &client.id, "/static/a.bin")
        .await
        .unwrap();
    assert_eq!(status, 300);
    let from_peers =
        |m: &std::collections::HashMap<String, f64>| m["peercache_reported_from_peers_bytes_total"];
    let before = from_peers(&metrics(&server.admin_url).await.unwrap());
    // 10 GiB for a 1 MiB object, for a referral that was made.
    let r = signed_post(
        &server.url,
        "/v1/report",
        &client,
        &serde_json::json!({"peer_id": client.id, "hash": hash, "source": holder.id,
            "outcome": "served", "bytes": 10u64 << 30, "direct": true}),
    )
    .await
    .unwrap();
    assert!(r.status().is_success());
    let after = from_peers(&metrics(&server.admin_url).await.unwrap());
    assert!(
        after - before <= data.len() as f64,
        "at most the object's size counts: {}",
        after - before
    );
    // A key never referred reports 10 GiB: nothing moves.
    let stranger = TestKey::new(3);
    let r = signed_post(
        &server.url,
        "/v1/report",
        &stranger,
        &serde_json::json!({"peer_id": stranger.id, "hash": hash, "source": holder.id,
            "outcome": "served", "bytes": 10u64 << 30, "direct": true}),
    )
    .await
    .unwrap();
    assert!(r.status().is_success());
    assert_eq!(
        from_peers(&metrics(&server.admin_url).await.unwrap()),
        after
    );
    let stats = server.admin_stats().await.unwrap();
    assert!(stats["bytes_from_peers"].as_u64().unwrap() <= data.len() as u64);
}

#[tokio::test]
async fn an_aborted_get_does_not_list_its_client() {
    let dir = TempDir::new("atk-abort");
    let big = test_bytes(64 * MIB, 9);
    let root = make_site(&dir, &[("big.bin", &big)]);
    let server = spawn_server(&root, &["--ping-interval", "0s"])
        .await
        .unwrap();
    let hash = ObjectHash::of(&big).to_hex();
    let attacker = TestKey::new(21);
    // Registered with dial info nobody answers on (no possession proof can pass).
    let r = signed_post(
        &server.url,
        "/v1/peers",
        &attacker,
        &serde_json::json!({"peer_id": attacker.id, "port": 40_998,
            "dial": {"relay": null, "direct": ["127.0.0.1:40998"]}}),
    )
    .await
    .unwrap();
    assert!(r.status().is_success());
    let mut resp = reqwest::Client::new()
        .get(format!("{}/static/big.bin", server.url))
        .header("Peercache-Client", format!("id={}", attacker.id))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let first = resp.chunk().await.unwrap().unwrap();
    assert!(!first.is_empty());
    drop(resp);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let accepted = announce(&server.url, &attacker, std::slice::from_ref(&hash), None)
        .await
        .unwrap();
    assert!(accepted.is_empty(), "a few bytes are no copy: {accepted:?}");

    // The honest path still lists: a client that took every byte.
    let honest = TestKey::new(22);
    assert_eq!(
        register_and_fetch(&server.url, &honest, Some(40_997), "/static/big.bin")
            .await
            .unwrap(),
        200
    );
    let accepted = announce(&server.url, &honest, std::slice::from_ref(&hash), None)
        .await
        .unwrap();
    assert_eq!(accepted, vec![hash]);
}

#[tokio::test]
async fn an_endless_proof_answer_does_not_grow_the_server() {
    let dir = TempDir::new("atk-endless");
    let data = test_bytes(MIB, 31);
    let root = make_site(&dir, &[("a.bin", &data)]);
    let server = spawn_server(&root, &["--ping-interval", "0s"])
        .await
        .unwrap();
    let hash = ObjectHash::of(&data);
    let key = TestKey::new(41);
    let fake = spawn_endless_holder(key.clone(), hash).await.unwrap();
    let r = signed_post(
        &server.url,
        "/v1/peers",
        &key,
        &serde_json::json!({"peer_id": key.id, "port": fake.port,
            "dial": {"relay": null, "direct": [format!("127.0.0.1:{}", fake.port)]}}),
    )
    .await
    .unwrap();
    assert!(r.status().is_success());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = server.peak_rss_kib();
    let t = Instant::now();
    let accepted = announce(&server.url, &key, &[hash.to_hex()], None)
        .await
        .unwrap();
    let took = t.elapsed();
    // Honest requests meanwhile.
    let mut lat = Vec::new();
    let mut ok = 0;
    for _ in 0..10 {
        let t = Instant::now();
        if reqwest::get(format!("{}/static/a.bin", server.url))
            .await
            .unwrap()
            .status()
            == 200
        {
            ok += 1;
        }
        lat.push(t.elapsed());
    }
    let after = server.peak_rss_kib();
    figures("endless proof answer", &server, 0.0, ok, 10, lat);
    println!("proof took {took:?}; peak RSS {before} → {after} KiB");
    assert!(accepted.is_empty(), "an endless answer proves nothing");
    assert!(
        after.saturating_sub(before) < 16 * 1024,
        "the server read no more than it asked for: peak RSS {before} → {after} KiB"
    );
    assert_eq!(ok, 10);
}

#[tokio::test]
async fn idle_connections_are_capped_per_address_and_timed_out() {
    let dir = TempDir::new("atk-idle");
    let root = make_site(&dir, &[("a.bin", b"x")]);
    let server = spawn_server(
        &root,
        &["--max-conns-per-ip", "20", "--header-timeout", "3s"],
    )
    .await
    .unwrap();
    let addr = server.url.trim_start_matches("http://").to_string();
    let start = Instant::now();
    let mut idle = Vec::new();
    for _ in 0..200 {
        if let Ok(s) = tokio::net::TcpStream::connect(&addr).await {
            idle.push(s);
        }
    }
    let rate = 200.0 / start.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Past the cap, this address is not served.
    let mut extra = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let _ = extra
        .write_all(b"GET /index.html HTTP/1.1\r\nhost: x\r\n\r\n")
        .await;
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(2), extra.read(&mut buf))
        .await
        .map_or(0, |r| r.unwrap_or(0));
    assert!(
        !String::from_utf8_lossy(&buf[..n]).contains("200"),
        "past the per-address cap: refused"
    );
    // Another address is still served, quickly.
    let other = other_address();
    let (mut ok, mut lat) = (0, Vec::new());
    for _ in 0..10 {
        let t = Instant::now();
        if other
            .get(format!("{}/index.html", server.url))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            ok += 1;
        }
        lat.push(t.elapsed());
    }
    figures(
        "200 idle connections from one address",
        &server,
        rate,
        ok,
        10,
        lat,
    );
    assert_eq!(ok, 10, "another address is served");
    // The idle ones are dropped after the header timeout.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut closed = 0;
    for s in &mut idle {
        if matches!(
            tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await,
            Ok(Ok(0) | Err(_))
        ) {
            closed += 1;
        }
    }
    assert_eq!(closed, idle.len(), "every idle connection was closed");
    println!("after the header timeout: open fds {}", server.open_fds());
}

#[tokio::test]
async fn a_reader_that_never_reads_is_cut_and_its_egress_released() {
    let dir = TempDir::new("atk-noread");
    let big = test_bytes(64 * MIB, 5);
    let root = make_site(&dir, &[("big.bin", &big)]);
    let server = spawn_server(&root, &["--write-timeout", "2s"])
        .await
        .unwrap();
    let addr = server.url.trim_start_matches("http://").to_string();
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"GET /static/big.bin HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let owed = server.admin_stats().await.unwrap()["bytes_in_flight"]
        .as_u64()
        .unwrap();
    assert!(owed > 0, "the transfer is under way: {owed}");
    let t = Instant::now();
    let mut released = false;
    while t.elapsed() < Duration::from_secs(10) {
        if server.admin_stats().await.unwrap()["bytes_in_flight"] == 0 {
            released = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "never-read GET: {owed} bytes owed, released after {:?}; peak RSS {} KiB, fds {}",
        t.elapsed(),
        server.peak_rss_kib(),
        server.open_fds()
    );
    assert!(
        released,
        "the egress owed to a reader that never reads is released"
    );
    drop(s);
}

#[tokio::test]
async fn a_slow_reader_does_not_make_others_wait() {
    let dir = TempDir::new("atk-slow");
    let big = test_bytes(16 * MIB, 6);
    let root = make_site(&dir, &[("big.bin", &big)]);
    let server = spawn_server(
        &root,
        &[
            "--egress-limit",
            "2MiB",
            "--target-period",
            "0s",
            "--write-timeout",
            "120s",
            "--ping-interval",
            "0s",
            // Deferral's own bound (with referrals to receivers the reader
            // would be listed, and clients fall back to the server).
            "--no-refer-to-receivers",
        ],
    )
    .await
    .unwrap();
    let attacker = TestKey::new(51);
    let r = signed_post(
        &server.url,
        "/v1/peers",
        &attacker,
        &serde_json::json!({"peer_id": attacker.id, "port": 40_996,
            "dial": {"relay": null, "direct": ["127.0.0.1:40996"]}}),
    )
    .await
    .unwrap();
    assert!(r.status().is_success());
    let addr = server.url.trim_start_matches("http://").to_string();
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(
        format!(
            "GET /static/big.bin HTTP/1.1\r\nhost: x\r\npeercache-client: id={}\r\n\r\n",
            attacker.id
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let trickle = tokio::spawn(async move {
        let mut b = [0u8; 1];
        loop {
            if s.read(&mut b).await.unwrap_or(0) == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Others ask every 500 ms: they may be deferred a short while, never for long.
    let t = Instant::now();
    let (mut asked, mut deferred, mut served_after) = (0, 0, None);
    let mut lat = Vec::new();
    while t.elapsed() < Duration::from_secs(20) {
        asked += 1;
        let q = Instant::now();
        let r = reqwest::Client::new()
            .get(format!("{}/static/big.bin", server.url))
            .header("Peercache-Client", format!("id=honest{asked}"))
            .send()
            .await
            .unwrap();
        lat.push(q.elapsed());
        match r.status().as_u16() {
            503 => deferred += 1,
            200 => {
                served_after = Some(t.elapsed());
                break;
            }
            other => panic!("unexpected {other}"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    figures(
        "1 byte/s reader",
        &server,
        1.0,
        usize::from(served_after.is_some()),
        asked,
        lat,
    );
    println!("deferred {deferred} times; served after {served_after:?}");
    let after = served_after.expect("an honest client is served despite the trickling reader");
    assert!(
        after < Duration::from_secs(11),
        "served within the bounded deferral: {after:?}"
    );
    trickle.abort();
}

/// Point 5, a relayed proof: a peer that holds nothing announces an object and
/// answers the server's possession proof by fetching the asked range from the
/// server meanwhile, through a third machine (another address). While the
/// proof runs the server sends the object to nobody, so the relay gets its
/// bytes only after the proof failed, and the peer is not listed; the object
/// then cools down (no new proof for 15 s), and honest requests are served.
#[tokio::test]
async fn a_proof_relayed_through_a_third_machine_does_not_list() {
    let dir = TempDir::new("atk-relay-proof");
    let data = test_bytes(MIB, 51);
    let root = make_site(&dir, &[("a.bin", &data)]);
    let server = spawn_server(&root, &["--ping-interval", "0s"])
        .await
        .unwrap();
    let hash = ObjectHash::of(&data).to_hex();
    let key = TestKey::new(61);
    let url = format!("{}/static/a.bin", server.url);
    let (prover, relay) = spawn_relaying_prover(key.clone(), &url, [127, 0, 0, 5])
        .await
        .unwrap();
    let r = signed_post(
        &server.url,
        "/v1/peers",
        &key,
        &serde_json::json!({"peer_id": key.id, "port": prover.port,
            "dial": {"relay": null, "direct": [format!("127.0.0.1:{}", prover.port)]}}),
    )
    .await
    .unwrap();
    assert!(r.status().is_success());

    let t = Instant::now();
    let accepted = announce(&server.url, &key, std::slice::from_ref(&hash), None)
        .await
        .unwrap();
    let took = t.elapsed();
    let asked = relay.asked.load(std::sync::atomic::Ordering::SeqCst);
    println!(
        "relayed proof: asked {asked}, relayed in time {}, announce took {took:?}, accepted {accepted:?}",
        relay.fetched.load(std::sync::atomic::Ordering::SeqCst)
    );
    assert_eq!(asked, 1, "the server asked the prover for a proof");
    assert!(accepted.is_empty(), "a relayed proof lists nobody");

    // Cooling down: a second announce gets no proof at all.
    let again = announce(&server.url, &key, std::slice::from_ref(&hash), None)
        .await
        .unwrap();
    assert!(again.is_empty());
    assert_eq!(relay.asked.load(std::sync::atomic::Ordering::SeqCst), 1);

    // Honest requests from anywhere are served.
    let r = other_address().get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().len(), MIB);
}
