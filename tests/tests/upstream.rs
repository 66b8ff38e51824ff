//! `--upstream` mode: a real origin (an axum app on loopback) behind a real
//! `peercache-server`. Shareable responses are kept and referred; private ones
//! pass through untouched and are never referred.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::http::{HeaderMap, header};
use axum::response::IntoResponse;
use axum::routing::get;
use peercache_tests::{Server, TempDir, fetch_cli, seed_peer, test_bytes};

async fn origin(hits: Arc<AtomicUsize>, public: Vec<u8>) -> String {
    let h = hits.clone();
    let app = Router::new()
        .route(
            "/static/public.bin",
            get(move || {
                h.fetch_add(1, Ordering::SeqCst);
                let body = public.clone();
                async move {
                    (
                        [
                            (header::CACHE_CONTROL, "public, max-age=300"),
                            (header::CONTENT_TYPE, "application/octet-stream"),
                        ],
                        body,
                    )
                }
            }),
        )
        .route(
            "/static/private.js",
            get(|| async {
                (
                    [(header::CACHE_CONTROL, "private, max-age=60")],
                    "private();",
                )
            }),
        )
        .route(
            "/static/cookie.js",
            get(|| async { ([(header::SET_COOKIE, "session=abc")], "cookie();") }),
        )
        .route(
            "/static/whoami",
            get(|headers: HeaderMap| async move {
                let who = headers
                    .get(header::COOKIE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("anonymous")
                    .to_string();
                ([(header::CACHE_CONTROL, "public, max-age=300")], who).into_response()
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

async fn upstream_server(origin: &str, dir: &TempDir) -> Server {
    let cache = dir.join("upstream-cache");
    let mut cmd_args = vec![
        "--upstream",
        origin,
        "--egress-limit",
        "1MiB",
        "--target-period",
        "0s",
        "--ping-interval",
        "0s",
    ];
    let cache_s = cache.to_string_lossy().into_owned();
    cmd_args.extend(["--upstream-cache", cache_s.as_str()]);
    // spawn_server always passes --root; upstream mode needs its own spawn.
    let mut cmd = tokio::process::Command::new(peercache_tests::bin("peercache-server"));
    cmd.args(["--listen", "127.0.0.1:0"]).args(&cmd_args);
    peercache_tests::spawn_server_cmd(cmd).await.unwrap()
}

#[tokio::test]
async fn shareable_responses_are_kept_and_referred_private_ones_pass_through() {
    let dir = TempDir::new("upstream");
    let hits = Arc::new(AtomicUsize::new(0));
    let public = test_bytes(300_000, 21);
    let origin = origin(hits.clone(), public.clone()).await;
    let server = upstream_server(&origin, &dir).await;
    let http = reqwest::Client::new();

    let r = http
        .get(format!("{}/static/public.bin", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers().contains_key("peercache-object"),
        "a shareable response is hashed"
    );
    assert_eq!(r.bytes().await.unwrap(), public);
    let r = http
        .get(format!("{}/static/public.bin", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap(), public);
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "kept: the origin was asked once"
    );

    for path in ["/static/private.js", "/static/cookie.js"] {
        let r = http
            .get(format!("{}{path}", server.url))
            .header("Peercache-Client", "id=someone")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}: never referred");
        assert!(
            !r.headers().contains_key("peercache-object"),
            "{path}: never hashed or shared"
        );
        if path.ends_with("cookie.js") {
            assert_eq!(
                r.headers()["set-cookie"],
                "session=abc",
                "passed through untouched"
            );
        }
        assert!(
            r.headers().contains_key("peercache"),
            "the site still advertises its scope"
        );
    }

    // A request with credentials goes to the origin with them, and is not kept.
    let r = http
        .get(format!("{}/static/whoami", server.url))
        .header("Cookie", "user=ann")
        .send()
        .await
        .unwrap();
    assert!(!r.headers().contains_key("peercache-object"));
    assert_eq!(r.text().await.unwrap(), "user=ann");
    let r = http
        .get(format!("{}/static/whoami", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.text().await.unwrap(),
        "anonymous",
        "the cookie-bound answer was never kept for others"
    );

    // Referral through a real peer, as for a site directory.
    let peer = seed_peer(
        &server.url,
        "/static/public.bin",
        &dir.join("a"),
        &dir.join("pa"),
        &[],
    )
    .await
    .unwrap();
    let (ok, err) = fetch_cli(
        &server.url,
        "/static/public.bin",
        &dir.join("b"),
        &dir.join("pb"),
    )
    .await
    .unwrap();
    assert!(
        ok && err.contains(&format!("from peer {}", peer.id)),
        "{err}"
    );
    assert_eq!(std::fs::read(dir.join("b")).unwrap(), public);
}

#[tokio::test]
async fn an_unreachable_origin_is_a_502_with_a_reason() {
    let dir = TempDir::new("upstream-down");
    let server = upstream_server("http://127.0.0.1:9", &dir).await;
    let r = reqwest::get(format!("{}/static/x", server.url))
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    assert!(r.text().await.unwrap().contains("origin unreachable"));
}

#[tokio::test]
async fn through_the_gateway_a_set_cookie_response_goes_to_the_site_and_is_never_kept_or_announced()
{
    use peercache_tests::NativeSession;
    use serde_json::json;

    let dir = TempDir::new("upstream-gateway");
    let hits = Arc::new(AtomicUsize::new(0));
    let origin = origin(hits, test_bytes(1000, 3)).await;
    let server = upstream_server(&origin, &dir).await;
    let cache = dir.join("host");
    let mut nm = NativeSession::start(&[("PEERCACHE_CACHE_DIR", &cache)])
        .await
        .unwrap();
    nm.send(&json!({"type": "hello", "version": "t"}))
        .await
        .unwrap();
    let status = nm.recv_type("status").await.unwrap();
    nm.send(&json!({"type": "config", "enabled": true, "sites": [{"origin": server.url, "scope": "/static/"}]}))
        .await
        .unwrap();
    nm.recv_type("status").await.unwrap();
    let gw = |path: &str| {
        format!(
            "http://127.0.0.1:{}/g/{}{path}",
            status["gateway_port"], server.url
        )
    };
    let token = status["token"].as_str().unwrap().to_string();
    let http = reqwest::Client::new();

    // Without the extension's answer (within 2 s) the page still gets the bytes,
    // from the gateway.
    let r = http
        .get(gw("/static/private.js"))
        .header("x-peercache-token", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "private();");
    let notice = nm.recv_type("not_shareable").await.unwrap();
    assert_eq!(notice["url"], format!("{}/static/private.js", server.url));
    assert_eq!(notice["reason"], "Cache-Control forbids a shared cache");
    // With the extension's answer, the browser is sent to the site itself, so the
    // cookie lands on the site's origin.
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let pending = tokio::spawn(
        no_redirects
            .get(gw("/static/cookie.js"))
            .header("x-peercache-token", &token)
            .send(),
    );
    let notice = nm.recv_type("not_shareable").await.unwrap();
    assert_eq!(notice["url"], format!("{}/static/cookie.js", server.url));
    assert_eq!(notice["reason"], "response has Set-Cookie");
    nm.send(&json!({"type": "direct_ready", "url": notice["url"]}))
        .await
        .unwrap();
    let r = pending.await.unwrap().unwrap();
    assert_eq!(r.status(), 307);
    assert_eq!(
        r.headers()["location"],
        format!("{}/static/cookie.js", server.url).as_str()
    );
    assert_eq!(r.headers()["cache-control"], "no-store");
    // Back at the gateway at once (the rule did not take): no second redirect, the
    // bytes instead, so there is never a loop.
    let r = no_redirects
        .get(gw("/static/cookie.js"))
        .header("x-peercache-token", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "cookie();");
    let r = http
        .get(gw("/static/public.bin"))
        .header("x-peercache-token", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap();
    // Only the shareable one is kept (and so announced); the Set-Cookie one never.
    // (Keeping happens just after the last byte went out: give it a moment.)
    let public = peercache_core::ObjectHash::of(&test_bytes(1000, 3)).to_hex();
    let mut kept = Vec::new();
    for _ in 0..50 {
        kept = std::fs::read_dir(cache.join("objects"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect();
        if kept.contains(&public) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(kept, vec![public]);
    let cookie_hash = peercache_core::ObjectHash::of(b"cookie();");
    let holders: serde_json::Value = reqwest::get(format!(
        "{}/v1/objects/{cookie_hash}/peers",
        server.admin_url
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(holders, json!([]));
}

/// A query-string flood of distinct shareable responses does not grow the
/// upstream cache past `--upstream-cache-max`.
#[tokio::test]
async fn a_query_flood_keeps_the_upstream_cache_bounded() {
    use axum::extract::RawQuery;
    let app = Router::new().route(
        "/static/echo",
        get(|RawQuery(q): RawQuery| async move {
            let q = q.unwrap_or_default();
            let seed = q
                .bytes()
                .fold(17u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
            (
                [(header::CACHE_CONTROL, "public, max-age=300")],
                test_bytes(64 * 1024, seed),
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let dir = TempDir::new("up-flood");
    let cache = dir.join("cache");
    let mut cmd = tokio::process::Command::new(peercache_tests::bin("peercache-server"));
    cmd.args([
        "--upstream",
        &format!("http://{addr}"),
        "--listen",
        "127.0.0.1:0",
    ])
    .arg("--upstream-cache")
    .arg(&cache)
    .args(["--upstream-cache-max", "1MiB"]);
    let server: Server = peercache_tests::spawn_server_cmd(cmd).await.unwrap();
    let start = std::time::Instant::now();
    let mut ok = 0;
    for i in 0..200 {
        let r = reqwest::get(format!("{}/static/echo?q={i}", server.url))
            .await
            .unwrap();
        if r.status() == 200 && r.bytes().await.unwrap().len() == 64 * 1024 {
            ok += 1;
        }
    }
    let rate = 200.0 / start.elapsed().as_secs_f64();
    let on_disk: u64 = std::fs::read_dir(&cache)
        .unwrap()
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum();
    println!(
        "query flood: {rate:.0}/s, {ok}/200 served, cache {on_disk} bytes on disk; peak RSS {} KiB, fds {}",
        server.peak_rss_kib(),
        server.open_fds()
    );
    assert_eq!(ok, 200, "every request answered");
    assert!(
        on_disk <= 1 << 20,
        "the cache stays within its limit: {on_disk}"
    );
}
