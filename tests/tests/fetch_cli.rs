//! `peercache-host fetch` and `serve` as users run them: a referral to a real peer,
//! a lying peer, and failures that must leave no partial file.

use peercache_tests::{
    TempDir, fetch_cli, fetch_cli_with, make_site, metrics, seed_peer, spawn_peer, spawn_server,
    test_bytes,
};

#[tokio::test]
async fn a_second_client_gets_the_file_from_the_first() {
    let dir = TempDir::new("cli-refer");
    let data = test_bytes(2_000_000, 3);
    let root = make_site(&dir, &[("big.bin", &data)]);
    let server = spawn_server(&root, &["--egress-limit", "8MiB", "--target-period", "0s"])
        .await
        .unwrap();

    let (ok, err) = fetch_cli(
        &server.url,
        "/static/big.bin",
        &dir.join("first"),
        &dir.join("c1"),
    )
    .await
    .unwrap();
    assert!(ok, "{err}");
    assert!(err.contains("from the server"), "{err}");
    assert_eq!(std::fs::read(dir.join("first")).unwrap(), data);

    // The same cache, now serving: it is one peer (identity lives with the cache).
    let peer = spawn_peer(&server.url, &dir.join("c1"), &[]).await.unwrap();
    assert!(
        peer.proc
            .banner
            .iter()
            .any(|l| l == "announced 1 of 1 cached objects"),
        "{:?}",
        peer.proc.banner
    );

    let (ok, err) = fetch_cli(
        &server.url,
        "/static/big.bin",
        &dir.join("second"),
        &dir.join("c2"),
    )
    .await
    .unwrap();
    assert!(ok, "{err}");
    assert!(err.contains(&format!("from peer {}", peer.id)), "{err}");
    assert_eq!(std::fs::read(dir.join("second")).unwrap(), data);
    // Each byte written once (issue 12 point 4): the output is the cache's
    // verified copy under a second name, read-only.
    {
        use std::os::unix::fs::MetadataExt;
        let hash = peercache_core::ObjectHash::of(&data).to_hex();
        for (out, cache) in [("first", "c1"), ("second", "c2")] {
            let o = std::fs::metadata(dir.join(out)).unwrap();
            let c = std::fs::metadata(dir.join(cache).join("objects").join(&hash)).unwrap();
            assert_eq!((o.dev(), o.ino()), (c.dev(), c.ino()), "{out} is linked");
            assert!(o.permissions().readonly(), "{out}");
        }
    }

    let s = metrics(&server.admin_url).await.unwrap();
    assert_eq!(s["peercache_requests_referred_total"], 1.0);
    assert_eq!(
        s["peercache_reported_from_peers_bytes_total"],
        data.len() as f64
    );
    let p = metrics(&peer.url).await.unwrap();
    assert_eq!(p["peercache_uploads_total"], 1.0);
    assert_eq!(p["peercache_bytes_uploaded_total"], data.len() as f64);

    // The second client announced too: a third is referred to one of the two.
    let r = reqwest::get(format!(
        "{}/v1/objects/{}/peers",
        server.admin_url,
        peercache_core::ObjectHash::of(&data)
    ))
    .await
    .unwrap();
    let holders: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        holders.as_array().unwrap().len(),
        1,
        "a fetch-only client has no address to serve from"
    );
}

#[tokio::test]
async fn a_lying_peer_never_gets_its_bytes_through() {
    let dir = TempDir::new("cli-liar");
    let data = test_bytes(500_000, 4);
    let root = make_site(&dir, &[("f.bin", &data)]);
    let server = spawn_server(&root, &["--egress-limit", "8MiB", "--target-period", "0s"])
        .await
        .unwrap();
    let liar = seed_peer(
        &server.url,
        "/static/f.bin",
        &dir.join("x"),
        &dir.join("liar"),
        &[],
    )
    .await
    .unwrap();
    // Its copy goes bad after it was listed, and after it computed the (true) group
    // CVs: it now sends a valid outboard with wrong bytes, the hardest case.
    let h = peercache_core::ObjectHash::of(&data);
    let dialer = peercache_tests::peer_dialer().await.unwrap();
    let ob = dialer
        .outboard(&liar.id, &liar.dial(), h, 1 << 20)
        .await
        .unwrap();
    assert_eq!(
        ob.len() as u64,
        peercache_core::verified::group_count(data.len() as u64) * 32
    );
    let obj = dir
        .join("liar/objects")
        .join(peercache_core::ObjectHash::of(&data).to_hex());
    let mut bad = std::fs::read(&obj).unwrap();
    bad[12345] ^= 1;
    std::fs::write(&obj, bad).unwrap();

    let (ok, err) = fetch_cli(
        &server.url,
        "/static/f.bin",
        &dir.join("out"),
        &dir.join("victim"),
    )
    .await
    .unwrap();
    assert!(ok, "{err}");
    assert!(err.contains("from the server"), "{err}");
    assert_eq!(
        std::fs::read(dir.join("out")).unwrap(),
        data,
        "the true bytes arrived"
    );
    // Nothing unverified reached the victim's cache.
    let cached = std::fs::read(
        dir.join("victim/objects")
            .join(peercache_core::ObjectHash::of(&data).to_hex()),
    )
    .unwrap();
    assert_eq!(cached, data);
    let s = metrics(&server.admin_url).await.unwrap();
    assert_eq!(s["peercache_mismatch_reports_total"], 1.0);
    let l = metrics(&liar.url).await.unwrap();
    assert_eq!(l["peercache_uploads_total"], 1.0, "{l:?}");
}

#[tokio::test]
async fn a_peer_whose_group_list_does_not_add_up_is_never_downloaded_from() {
    let dir = TempDir::new("cli-bad-outboard");
    let data = test_bytes(300_000, 5);
    let root = make_site(&dir, &[("f.bin", &data)]);
    let server = spawn_server(&root, &["--egress-limit", "8MiB", "--target-period", "0s"])
        .await
        .unwrap();
    let liar = seed_peer(
        &server.url,
        "/static/f.bin",
        &dir.join("x"),
        &dir.join("liar"),
        &[],
    )
    .await
    .unwrap();
    // Its group list (computed when it kept the object) goes bad.
    let ob = dir
        .join("liar/outboard")
        .join(peercache_core::ObjectHash::of(&data).to_hex());
    let mut bad = std::fs::read(&ob).unwrap();
    bad[0] ^= 1;
    std::fs::write(&ob, bad).unwrap();
    let (ok, err) = fetch_cli(
        &server.url,
        "/static/f.bin",
        &dir.join("out"),
        &dir.join("v"),
    )
    .await
    .unwrap();
    assert!(ok && err.contains("from the server"), "{err}");
    assert_eq!(std::fs::read(dir.join("out")).unwrap(), data);
    let l = metrics(&liar.url).await.unwrap();
    assert_eq!(
        l["peercache_uploads_total"], 0.0,
        "no content was fetched from it"
    );
    let s = metrics(&server.admin_url).await.unwrap();
    assert_eq!(s["peercache_mismatch_reports_total"], 1.0);
}

#[tokio::test]
async fn failures_exit_non_zero_with_a_reason_and_leave_no_file() {
    let dir = TempDir::new("cli-fail");
    let root = make_site(&dir, &[("a.bin", b"abc")]);
    let server = spawn_server(&root, &[]).await.unwrap();

    let out = dir.join("missing");
    let (ok, err) = fetch_cli(&server.url, "/static/nope.bin", &out, &dir.join("c"))
        .await
        .unwrap();
    assert!(!ok);
    assert!(err.contains("404"), "{err}");
    assert!(!out.exists());

    let (ok, err) = fetch_cli("http://127.0.0.1:9", "/static/a.bin", &out, &dir.join("c"))
        .await
        .unwrap();
    assert!(!ok);
    assert!(err.contains("unreachable"), "{err}");
    assert!(!out.exists());

    let (ok, err) = fetch_cli(&server.url, "static/a.bin", &out, &dir.join("c"))
        .await
        .unwrap();
    assert!(!ok);
    assert!(err.contains("must start with '/'"), "{err}");

    // An existing output file is replaced only by a complete, verified one.
    std::fs::write(&out, b"previous").unwrap();
    let (ok, _) = fetch_cli(&server.url, "/static/nope.bin", &out, &dir.join("c"))
        .await
        .unwrap();
    assert!(!ok);
    assert_eq!(std::fs::read(&out).unwrap(), b"previous");
}

#[tokio::test]
async fn a_fetch_beside_a_running_serve_is_served_at_once_by_the_same_peer() {
    let dir = TempDir::new("cli-one-peer");
    let a = test_bytes(200_000, 41);
    let b = test_bytes(300_000, 42);
    let root = make_site(&dir, &[("a.bin", &a), ("b.bin", &b)]);
    let server = spawn_server(&root, &["--egress-limit", "8MiB", "--target-period", "0s"])
        .await
        .unwrap();
    let peer = seed_peer(
        &server.url,
        "/static/a.bin",
        &dir.join("a.out"),
        &dir.join("seed"),
        &[],
    )
    .await
    .unwrap();
    let listed = |hash: peercache_core::ObjectHash| {
        let url = format!("{}/v1/objects/{hash}/peers", server.admin_url);
        async move {
            reqwest::get(url)
                .await
                .unwrap()
                .json::<serde_json::Value>()
                .await
                .unwrap()
        }
    };
    let serving = listed(peercache_core::ObjectHash::of(&a)).await;
    assert_eq!(serving[0]["id"], peer.id.as_str());
    // A fetch into the serving peer's cache, as the same peer (same key).
    let (ok, err) = fetch_cli(
        &server.url,
        "/static/b.bin",
        &dir.join("b.out"),
        &dir.join("seed"),
    )
    .await
    .unwrap();
    assert!(ok, "{err}");
    let holders = listed(peercache_core::ObjectHash::of(&b)).await;
    assert_eq!(
        holders[0]["id"],
        peer.id.as_str(),
        "announced at once: {holders}"
    );
    assert_eq!(
        holders[0]["addr"], serving[0]["addr"],
        "the fetch did not erase the serving listing"
    );
    // And the running serve serves it.
    let (ok, err) = fetch_cli(
        &server.url,
        "/static/b.bin",
        &dir.join("c.out"),
        &dir.join("c"),
    )
    .await
    .unwrap();
    assert!(ok, "{err}");
    assert!(err.contains(&format!("from peer {}", peer.id)), "{err}");
    assert_eq!(std::fs::read(dir.join("c.out")).unwrap(), b);
}

#[tokio::test]
async fn a_client_deferred_too_long_gets_the_bytes_from_the_server() {
    let dir = TempDir::new("cli-deferred");
    let data = test_bytes(1 << 20, 43);
    let root = make_site(&dir, &[("d.bin", &data)]);
    // 1 MiB at 256 KiB/s takes 4 s > the 1 s period: while it is on its way to
    // the first client, a second referral-capable client is deferred (with
    // referrals to peers still receiving turned off: deferral's own bound).
    let server = spawn_server(
        &root,
        &[
            "--egress-limit",
            "256KiB",
            "--target-period",
            "1s",
            "--no-refer-to-receivers",
        ],
    )
    .await
    .unwrap();
    // The first client also serves (registered with dial info): the server
    // defers others only while the object goes to a peer that can pass it on.
    let _serving = peercache_tests::spawn_peer(&server.url, &dir.join("first"), &[])
        .await
        .unwrap();
    let first = tokio::spawn({
        let (url, out, cache) = (server.url.clone(), dir.join("first.out"), dir.join("first"));
        async move { fetch_cli(&url, "/static/d.bin", &out, &cache).await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let cache = dir.join("second");
    let second = tokio::process::Command::new(peercache_tests::bin("peercache-host"))
        .args(["fetch", "--server", &server.url, "/static/d.bin", "-o"])
        .arg(dir.join("second.out"))
        .arg("--cache")
        .arg(&cache)
        .arg("--state")
        .arg(peercache_tests::state_for(&cache))
        .env("PEERCACHE_MAX_DEFERRAL", "2s")
        .env("RUST_LOG", "info")
        .output()
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(second.status.success(), "never failed: {err}");
    assert!(err.contains("deferred long enough"), "{err}");
    assert!(err.contains("from the server"), "{err}");
    assert_eq!(std::fs::read(dir.join("second.out")).unwrap(), data);
    let (ok, err) = first.await.unwrap().unwrap();
    assert!(ok, "{err}");
    let m = metrics(&server.admin_url).await.unwrap();
    assert!(m["peercache_requests_deferred_total"] >= 1.0, "{m:?}");
}

#[tokio::test]
async fn a_peer_that_trickles_loses_its_work_within_a_bounded_time() {
    let dir = TempDir::new("cli-trickle");
    let data = test_bytes(300_000, 44);
    let hash = peercache_core::ObjectHash::of(&data);
    let root = make_site(&dir, &[("t.bin", &data)]);
    let server = spawn_server(&root, &["--egress-limit", "8MiB", "--target-period", "0s"])
        .await
        .unwrap();
    // The only holder sends the right bytes, one every 100 ms: 8 hours for this file.
    let key = peercache_tests::TestKey::new(44);
    let trickler = peercache_tests::spawn_trickling_holder(
        key.clone(),
        &data,
        std::time::Duration::from_millis(100),
    )
    .await
    .unwrap();
    peercache_tests::register_and_fetch(&server.url, &key, Some(trickler.port), "/static/t.bin")
        .await
        .unwrap();
    let accepted = peercache_tests::announce(&server.url, &key, &[hash.to_hex()], Some((0, 4)))
        .await
        .unwrap();
    assert_eq!(accepted.len(), 1);
    let started = std::time::Instant::now();
    let (ok, err) = fetch_cli(
        &server.url,
        "/static/t.bin",
        &dir.join("out"),
        &dir.join("c"),
    )
    .await
    .unwrap();
    let took = started.elapsed();
    assert!(ok, "{err}");
    assert!(
        err.contains("from the server"),
        "the server finished the download: {err}"
    );
    assert_eq!(std::fs::read(dir.join("out")).unwrap(), data);
    // Bounded by the 3 s floor window plus set-up, not by the trickle.
    assert!(took < std::time::Duration::from_secs(30), "took {took:?}");
}

#[tokio::test]
async fn explain_says_why_referred_why_this_peer_and_who_sent_what() {
    let dir = TempDir::new("cli-explain");
    let a = test_bytes(1 << 20, 61);
    let b = test_bytes(1 << 20, 62);
    let root = make_site(&dir, &[("a.bin", &a), ("b.bin", &b)]);
    // 1 MiB at 256 KiB/s is 4 s: over any short period, so holders are referred.
    let server = spawn_server(
        &root,
        &["--egress-limit", "256KiB", "--target-period", "1s"],
    )
    .await
    .unwrap();
    // A holder of both files (fetched one at a time, so nothing is deferred).
    for f in ["/static/a.bin", "/static/b.bin"] {
        let (ok, err) = fetch_cli(&server.url, f, &dir.join("p.out"), &dir.join("p"))
            .await
            .unwrap();
        assert!(ok, "{err}");
    }
    let peer = spawn_peer(&server.url, &dir.join("p"), &[]).await.unwrap();
    let short = &peer.id[..12];
    // The client's first download (from the peer) measures its own link…
    let (ok, err) = fetch_cli_with(
        &server.url,
        "/static/b.bin",
        &dir.join("c.b"),
        &dir.join("c"),
        &["--explain"],
    )
    .await
    .unwrap();
    assert!(ok, "{err}");
    assert!(
        err.contains("client link unknown"),
        "nothing measured yet: {err}"
    );
    // …which the second one sends, and the server's decision counts.
    let (ok, err) = fetch_cli_with(
        &server.url,
        "/static/a.bin",
        &dir.join("c.a"),
        &dir.join("c"),
        &["--explain"],
    )
    .await
    .unwrap();
    assert!(ok, "{err}");
    assert_eq!(std::fs::read(dir.join("c.a")).unwrap(), a);
    for expected in [
        "path: the server referred this client to peers".to_string(),
        "server's decision: Refer because the server cannot send it within the target period and peers hold it".to_string(),
        "egress 262144 B/s".to_string(),
        "1 holders".to_string(),
        format!("  {short} #0 rtt "),
        "path direct: chosen #1: by round trip".to_string(),
        format!("order: {short}, server"),
        format!("from {short}: 1048576 bytes, ranges 0-1048575"),
        "verified: yes; kept: yes; outcome: done".to_string(),
    ] {
        assert!(err.contains(&expected), "missing {expected:?} in:\n{err}");
    }
    let link = err
        .split("client link ")
        .nth(1)
        .and_then(|rest| rest.split(" B/s").next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(link > 0, "the host sent its measured link speed: {err}");
}

#[tokio::test]
async fn a_server_hears_only_of_what_was_fetched_through_it() {
    let dir = TempDir::new("cli-per-origin");
    let a = test_bytes(100_000, 71);
    let b = test_bytes(100_000, 72);
    let one = TempDir::new("cli-per-origin-one");
    let two = TempDir::new("cli-per-origin-two");
    // Both sites serve b; the visitor fetched b from the second one only.
    let root1 = make_site(&one, &[("a.bin", &a), ("b.bin", &b)]);
    let root2 = make_site(&two, &[("b.bin", &b)]);
    let s1 = spawn_server(&root1, &[]).await.unwrap();
    let s2 = spawn_server(&root2, &[]).await.unwrap();
    let cache = dir.join("c");
    for (server, path) in [(&s1, "/static/a.bin"), (&s2, "/static/b.bin")] {
        let (ok, err) = fetch_cli(&server.url, path, &dir.join("out"), &cache)
            .await
            .unwrap();
        assert!(ok, "{err}");
    }
    let peer = spawn_peer(&s1.url, &cache, &[]).await.unwrap();
    assert!(
        peer.proc
            .banner
            .iter()
            .any(|l| l == "announced 1 of 1 cached objects"),
        "the first site is told of a.bin only, not of b.bin fetched elsewhere: {:?}",
        peer.proc.banner
    );
}
