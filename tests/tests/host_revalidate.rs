//! Issue 14, point 2, host side: a host serves a fresh object (by the site's
//! `Cache-Control` recorded when fetched) from its own verified cache without
//! asking the server, and revalidates a stale one with `If-None-Match`: the
//! server answers `304` and no byte of the object moves again.

use peercache_tests::{TempDir, fetch_cli, make_site, metrics, spawn_server, test_bytes};

#[tokio::test]
async fn fresh_objects_cost_no_request_and_stale_ones_a_304() {
    let dir = TempDir::new("host-revalidate");
    let (fresh, stale) = (test_bytes(200_000, 31), test_bytes(150_000, 32));
    let root = make_site(&dir, &[("stale.bin", &stale)]);
    std::fs::create_dir_all(root.join("static/v1")).unwrap();
    std::fs::write(root.join("static/v1/fresh.bin"), &fresh).unwrap();
    let server = spawn_server(
        &root,
        &[
            "--ping-interval",
            "0s",
            "--no-relay",
            "--cache-control",
            "/static/v1/=public, max-age=600",
        ],
    )
    .await
    .unwrap();
    let figures = || async {
        let m = metrics(&server.admin_url).await.unwrap();
        let get = |k: &str| m.get(k).copied().unwrap_or(0.0);
        (
            get("peercache_site_requests_total"),
            get("peercache_requests_not_modified_total"),
            get("peercache_served_bytes_total"),
        )
    };
    let cache = dir.join("c");
    let fetch = |path: &'static str, out: &'static str| {
        let (url, out, cache) = (server.url.clone(), dir.join(out), cache.clone());
        async move {
            let (ok, err) = fetch_cli(&url, path, &out, &cache).await.unwrap();
            assert!(ok, "{err}");
            std::fs::read(out).unwrap()
        }
    };

    // Fresh: the first fetch asks; the second is served from the own cache.
    assert_eq!(fetch("/static/v1/fresh.bin", "f1").await, fresh);
    let (requests, _, served) = figures().await;
    assert!(requests >= 1.0 && served >= fresh.len() as f64);
    assert_eq!(fetch("/static/v1/fresh.bin", "f2").await, fresh);
    assert_eq!(
        figures().await.0,
        requests,
        "a fresh object costs no request to the server"
    );

    // Stale (`no-cache`, the default): asked again with its ETag, a 304.
    assert_eq!(fetch("/static/stale.bin", "s1").await, stale);
    let (requests, not_modified, served) = figures().await;
    assert_eq!(fetch("/static/stale.bin", "s2").await, stale);
    let after = figures().await;
    assert_eq!(after.0, requests + 1.0, "one request to revalidate");
    assert_eq!(after.1, not_modified + 1.0, "answered 304");
    assert_eq!(after.2, served, "no byte of the object sent again");

    // Changed on the site: the revalidation fetches the new bytes.
    let changed = test_bytes(150_000, 33);
    std::fs::write(root.join("static/stale.bin"), &changed).unwrap();
    assert_eq!(fetch("/static/stale.bin", "s3").await, changed);
}

/// The same for an object that came from a peer: the referral carries the
/// site's headers for it (as a `200` would), so the host knows it is fresh
/// and the second fetch asks nobody.
#[tokio::test]
async fn a_fresh_object_from_a_peer_costs_no_request_either() {
    let dir = TempDir::new("host-revalidate-peer");
    let data = test_bytes(2_500_000, 34);
    let root = make_site(&dir, &[]);
    std::fs::create_dir_all(root.join("static/v1")).unwrap();
    std::fs::write(root.join("static/v1/big.bin"), &data).unwrap();
    // 2.5 MB at 1 MiB/s cannot go out within 1 s: once a peer holds it, a
    // client is referred.
    let server = spawn_server(
        &root,
        &[
            "--ping-interval",
            "0s",
            "--no-relay",
            "--egress-limit",
            "1MiB",
            "--target-period",
            "1s",
            "--cache-control",
            "/static/v1/=public, max-age=600",
        ],
    )
    .await
    .unwrap();
    let (ok, err) = fetch_cli(
        &server.url,
        "/static/v1/big.bin",
        &dir.join("a.out"),
        &dir.join("a"),
    )
    .await
    .unwrap();
    assert!(ok, "{err}");
    let holder = peercache_tests::spawn_peer(&server.url, &dir.join("a"), &[])
        .await
        .unwrap();
    let requests =
        || async { metrics(&server.admin_url).await.unwrap()["peercache_site_requests_total"] };
    let cache = dir.join("c");
    let (ok, err) = fetch_cli(&server.url, "/static/v1/big.bin", &dir.join("c1"), &cache)
        .await
        .unwrap();
    assert!(ok, "{err}");
    assert!(err.contains(&format!("from peer {}", holder.id)), "{err}");
    assert_eq!(std::fs::read(dir.join("c1")).unwrap(), data);
    let before = requests().await;
    let (ok, err) = fetch_cli(&server.url, "/static/v1/big.bin", &dir.join("c2"), &cache)
        .await
        .unwrap();
    assert!(ok, "{err}");
    assert_eq!(std::fs::read(dir.join("c2")).unwrap(), data);
    assert_eq!(
        requests().await,
        before,
        "fresh by the headers the referral carried: no request: {err}"
    );
}
