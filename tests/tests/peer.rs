//! A real headless peer (`peercache-host serve`): what it serves, to whom, how
//! much at once, and its cache limits.

use std::time::{Duration, Instant};

use peercache_core::hash::ObjectHash;
use peercache_core::peer::PeerStatus;
use peercache_net::PeerError;
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
    let dialer = std::sync::Arc::new(peercache_tests::peer_dialer().await.unwrap());
    let dial = peer.dial();

    // Ping reports the load, over the peer's QUIC endpoint dialed by its key.
    let pinged = dialer.ping(&peer.id, &dial).await.unwrap();
    assert_eq!(
        pinged.load,
        Some(peercache_core::protocol::Load {
            active: 0,
            limit: 1
        })
    );
    assert!(pinged.direct);
    // Dialing the right address with the wrong key fails: the key is the peer.
    let impostor = peercache_tests::TestKey::new(5).id;
    assert!(dialer.ping(&impostor, &dial).await.is_err());

    // Range.
    let read_all = |mut body: peercache_net::ObjectBody| async move {
        let mut out = Vec::new();
        while let Some(c) = body.next_chunk().await.unwrap() {
            out.extend_from_slice(&c);
        }
        out
    };
    let (header, body) = dialer
        .object(&peer.id, &dial, hash, Some((100, 199)))
        .await
        .unwrap();
    assert_eq!(header.size, Some(data.len() as u64));
    assert_eq!(header.body_len, 100);
    assert_eq!(read_all(body).await, &data[100..200]);
    let err = dialer
        .object(&peer.id, &dial, hash, Some((900_000, 900_010)))
        .await
        .unwrap_err();
    assert!(
        matches!(err, PeerError::Refused(PeerStatus::RangeNotSatisfiable)),
        "{err}"
    );
    // Only what is cached.
    let other = ObjectHash::of(b"not here");
    let err = dialer
        .object(&peer.id, &dial, other, None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, PeerError::Refused(PeerStatus::NotHeld)),
        "{err}"
    );
    let err = dialer
        .outboard(&peer.id, &dial, other, 1 << 20)
        .await
        .unwrap_err();
    assert!(
        matches!(err, PeerError::Refused(PeerStatus::NotHeld)),
        "{err}"
    );

    // One slot and a 400 KiB/s cap: a full upload takes ≥ 1 s and holds the slot.
    let started = Instant::now();
    let first = tokio::spawn({
        let (dialer, dial, id) = (dialer.clone(), dial.clone(), peer.id.clone());
        async move {
            let (_, body) = dialer.object(&id, &dial, hash, None).await.unwrap();
            read_all(body).await
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let err = dialer
        .object(&peer.id, &dial, hash, None)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            PeerError::Refused(PeerStatus::Busy {
                retry_after_ms: 1000
            })
        ),
        "over the workload limit: {err}"
    );
    assert_eq!(
        dialer.ping(&peer.id, &dial).await.unwrap().load,
        Some(peercache_core::protocol::Load {
            active: 1,
            limit: 1
        })
    );
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
        if let Err(PeerError::Refused(PeerStatus::RateLimited { .. })) =
            dialer.object(&peer.id, &dial, other, None).await
        {
            limited += 1;
        }
    }
    assert!(limited > 0, "per-requester rate limit");

    // No plain-TCP peer port: the only TCP listener is the operator's /metrics
    // on loopback.
    let pid = peer.proc.child.id().unwrap();
    let ss = std::process::Command::new("ss")
        .args(["-H", "-ltnp"])
        .output()
        .unwrap();
    let listening: Vec<String> = String::from_utf8_lossy(&ss.stdout)
        .lines()
        .filter(|l| l.contains(&format!("pid={pid},")))
        .map(String::from)
        .collect();
    assert_eq!(listening.len(), 1, "{listening:?}");
    assert!(listening[0].contains("127.0.0.1:"), "{listening:?}");
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
            reqwest::get(format!("{}/v1/objects/{b}/peers", server.admin_url))
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
    // Nothing the full disk spoiled was kept: a kept copy is whole (the
    // output may be that copy, `fetch -o` links or copies it).
    let kept: Vec<(String, Vec<u8>)> = std::fs::read_dir(small.join("objects"))
        .map(|d| {
            d.flatten()
                .map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    (name, std::fs::read(e.path()).unwrap())
                })
                .collect()
        })
        .unwrap_or_default();
    let _ = std::process::Command::new("umount").arg(&small).status();
    for (name, bytes) in &kept {
        assert_eq!(
            &peercache_core::ObjectHash::of(bytes).to_hex(),
            name,
            "a spoiled copy was kept"
        );
    }
    assert!(ok, "the download succeeds: {err}");
    assert!(
        std::fs::read(dir.join("out")).unwrap() == data,
        "the output is the object"
    );
}

/// A crowd asking one peer at once (issue 12): two hinted uploads send at a
/// time, and of those waiting, the requester with the least left to download
/// goes first, though it asked last.
#[tokio::test]
async fn a_crowds_requester_nearest_the_end_is_served_first() {
    let dir = TempDir::new("peer-turns");
    let data = test_bytes(600_000, 32);
    let hash = ObjectHash::of(&data);
    let (_server, peer) = seeded_peer(
        &dir,
        &[("a.bin", data.clone())],
        &["--max-uploads", "8", "--upload-limit", "400KiB"],
    )
    .await;
    let dialer = std::sync::Arc::new(peercache_tests::peer_dialer().await.unwrap());
    let dial = peer.dial();
    dialer.ping(&peer.id, &dial).await.unwrap();
    let start = Instant::now();
    // Each request: when its header came (its turn began) and its bytes.
    let ask = |range: (u64, u64), remaining: u64| {
        let (dialer, dial, id) = (dialer.clone(), dial.clone(), peer.id.clone());
        tokio::spawn(async move {
            let (_, mut body) = dialer
                .object_in_swarm(&id, &dial, hash, Some(range), Some(remaining))
                .await
                .unwrap();
            let began = start.elapsed();
            let mut out = Vec::new();
            while let Some(c) = body.next_chunk().await.unwrap() {
                out.extend_from_slice(&c);
            }
            (began, out)
        })
    };
    // Two take the turns (at the 400 KiB/s cap: the first ends after ~1 s).
    let a = ask((0, 199_999), 5_000_000);
    let b = ask((0, 599_999), 5_000_000);
    tokio::time::sleep(Duration::from_millis(150)).await;
    // Far from the end asks first, near the end second.
    let far = ask((0, 49_999), 9_000_000);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let near = ask((50_000, 99_999), 1_000);
    let (far, near) = (far.await.unwrap(), near.await.unwrap());
    assert_eq!(far.1, &data[..50_000]);
    assert_eq!(near.1, &data[50_000..100_000]);
    assert!(
        near.0 < far.0,
        "near the end began at {:?}, far from it at {:?}",
        near.0,
        far.0
    );
    // Neither waited for a turn before the first two took theirs.
    assert!(near.0 > Duration::from_millis(400), "{:?}", near.0);
    assert_eq!(a.await.unwrap().1, &data[..200_000]);
    assert_eq!(b.await.unwrap().1, &data[..]);
}
