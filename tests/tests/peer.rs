//! A real headless peer (`peercache-host serve`): what it serves, to whom, how
//! much at once, and its cache limits.

use std::time::{Duration, Instant};

use peercache_core::hash::ObjectHash;
use peercache_tests::{
    NativeSession, TempDir, fetch_cli, make_site, metrics, spawn_peer, spawn_server, test_bytes,
};
use serde_json::json;

async fn seeded_peer(
    dir: &TempDir,
    files: &[(&str, Vec<u8>)],
    args: &[&str],
) -> (peercache_tests::Server, peercache_tests::Peer) {
    let list: Vec<(&str, &[u8])> = files.iter().map(|(n, b)| (*n, b.as_slice())).collect();
    let root = make_site(dir, &list);
    let server = spawn_server(&root, &["--ping-interval", "0s"])
        .await
        .unwrap();
    for (name, _) in files {
        let (ok, err) = fetch_cli(
            &server.url,
            &format!("/static/{name}"),
            &dir.join("x"),
            &dir.join("seed"),
        )
        .await
        .unwrap();
        assert!(ok, "{err}");
    }
    let peer = spawn_peer(&server.url, &dir.join("seed"), args)
        .await
        .unwrap();
    (server, peer)
}

#[tokio::test]
async fn ranges_workload_slots_rate_cap_and_requester_limits() {
    let dir = TempDir::new("peer-limits");
    let data = test_bytes(600_000, 31);
    let hash = ObjectHash::of(&data);
    let (_server, peer) = seeded_peer(
        &dir,
        &[("a.bin", data.clone())],
        &[
            "--max-uploads",
            "1",
            "--upload-limit",
            "400KiB",
            "--requester-rate",
            "20",
        ],
    )
    .await;
    let http = reqwest::Client::new();
    let url = format!("{}/v1/objects/{hash}", peer.url);

    // Ping reports the load.
    let r = http
        .get(format!("{}/v1/ping", peer.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(r.headers()["peercache-load"], "0/1");

    // Range.
    let r = http
        .get(&url)
        .header("Range", "bytes=100-199")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes 100-199/{}", data.len())
    );
    assert_eq!(r.bytes().await.unwrap(), &data[100..200]);
    let r = http
        .get(&url)
        .header("Range", "bytes=900000-")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 416);
    // Only what is cached, only by hash.
    let other = ObjectHash::of(b"not here");
    assert_eq!(
        http.get(format!("{}/v1/objects/{other}", peer.url))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        http.get(format!("{}/v1/objects/..%2f..%2fpeer-id", peer.url))
            .send()
            .await
            .unwrap()
            .status(),
        400
    );

    // One slot and a 400 KiB/s cap: a full upload takes ≥ 1 s and holds the slot.
    let started = Instant::now();
    let first = tokio::spawn({
        let url = url.clone();
        async move { reqwest::get(url).await.unwrap().bytes().await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 503, "over the workload limit");
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(r.headers()["peercache-load"], "1/1");
    assert_eq!(first.await.unwrap(), data);
    assert!(
        started.elapsed() >= Duration::from_millis(1000),
        "the rate cap paced the upload: {:?}",
        started.elapsed()
    );
    let m = metrics(&peer.url).await.unwrap();
    assert_eq!(m["peercache_uploads_refused_total"], 1.0);

    // A requester hammering the peer is slowed down.
    let mut limited = 0;
    for _ in 0..150 {
        let r = http
            .get(format!("{}/v1/objects/{other}", peer.url))
            .send()
            .await
            .unwrap();
        if r.status() == 429 {
            limited += 1;
        }
    }
    assert!(limited > 0, "per-requester rate limit");
}

#[tokio::test]
async fn the_cache_limit_evicts_least_recently_used_and_the_server_is_told() {
    let dir = TempDir::new("peer-evict");
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("a.bin", test_bytes(300_000, 10)),
        ("b.bin", test_bytes(300_000, 20)),
        ("c.bin", test_bytes(300_000, 30)),
    ];
    let list: Vec<(&str, &[u8])> = files.iter().map(|(n, b)| (*n, b.as_slice())).collect();
    let root = make_site(&dir, &list);
    let server = spawn_server(&root, &["--ping-interval", "0s"])
        .await
        .unwrap();
    for (name, _) in &files {
        let (ok, err) = fetch_cli(
            &server.url,
            &format!("/static/{name}"),
            &dir.join("x"),
            &dir.join("seed"),
        )
        .await
        .unwrap();
        assert!(ok, "{err}");
    }
    // 700 kB limit (low watermark 630 kB): the oldest (a) goes at start-up; b and c are announced.
    let peer = spawn_peer(&server.url, &dir.join("seed"), &["--cache-max", "700kB"])
        .await
        .unwrap();
    assert!(
        peer.proc
            .banner
            .iter()
            .any(|l| l == "announced 2 of 2 cached objects"),
        "{:?}",
        peer.proc.banner
    );
    assert!(
        !dir.join("seed/objects")
            .join(ObjectHash::of(&files[0].1).to_hex())
            .exists()
    );
    drop(peer);

    // The extension lowers the limit at run time: the host evicts and tells the server.
    let cache = dir.join("seed");
    let mut nm = NativeSession::start(&[("PEERCACHE_CACHE_DIR", &cache)])
        .await
        .unwrap();
    nm.send(&json!({"type": "hello", "version": "t"}))
        .await
        .unwrap();
    nm.recv_type("status").await.unwrap();
    nm.send(&json!({"type": "config", "enabled": true, "sites": [{"origin": server.url, "scope": "/static/"}]})).await.unwrap();
    let status = nm.recv_type("status").await.unwrap();
    // A page asks the gateway for b: the host registers, is served, and announces b.
    let b = ObjectHash::of(&files[1].1);
    let r = reqwest::Client::new()
        .get(format!(
            "http://127.0.0.1:{}/g/{}/static/b.bin",
            status["gateway_port"], server.url
        ))
        .header("x-peercache-token", status["token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), files[1].1);
    let listed = |v: serde_json::Value| v.as_array().map_or(0, |a| a.len());
    let holders_of_b = || async {
        listed(
            reqwest::get(format!("{}/v1/objects/{b}/peers", server.url))
                .await
                .unwrap()
                .json()
                .await
                .unwrap(),
        )
    };
    assert_eq!(holders_of_b().await, 1, "the host is listed for b");
    nm.send(&json!({"type": "limits", "max_uploads": 3, "upload_rate": 0, "cache_max": 200_000}))
        .await
        .unwrap();
    let status = nm.recv_type("status").await.unwrap();
    assert_eq!(status["limits"]["max_uploads"], 3);
    assert_eq!(status["limits"]["cache_max"], 200_000);
    assert!(
        status["limits"]["cache_bytes"].as_u64().unwrap() <= 180_000,
        "{status}"
    );
    assert!(
        !cache.join("objects").join(b.to_hex()).exists(),
        "evicted below the low watermark"
    );
    assert_eq!(holders_of_b().await, 0, "the eviction was announced");
}

#[tokio::test]
async fn a_full_disk_stops_caching_but_not_the_download() {
    if std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout != b"0\n")
        .unwrap_or(true)
    {
        panic!("this test mounts a tmpfs and must run as root (CI does)");
    }
    let dir = TempDir::new("peer-full");
    let data = test_bytes(2_000_000, 41);
    let root = make_site(&dir, &[("big.bin", &data)]);
    let server = spawn_server(&root, &["--ping-interval", "0s"])
        .await
        .unwrap();
    let small = dir.join("small-disk");
    std::fs::create_dir_all(&small).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=512k", "tmpfs"])
        .arg(&small)
        .status()
        .unwrap();
    assert!(mounted.success());
    let (ok, err) = fetch_cli(&server.url, "/static/big.bin", &dir.join("out"), &small)
        .await
        .unwrap();
    let _ = std::process::Command::new("umount").arg(&small).status();
    assert!(ok, "the download succeeds: {err}");
    assert_eq!(std::fs::read(dir.join("out")).unwrap(), data);
}
