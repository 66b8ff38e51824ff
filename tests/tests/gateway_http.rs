//! The gateway of a real host as a faithful proxy, in front of a real
//! `peercache-server --upstream` and the scriptable origin: the site's headers
//! reach the browser, `Range` gets a `206` of verified bytes, `HEAD` fetches no
//! body, a redirect keeps its `Location`.

use axum::http::Method;
use peercache_tests::origin::{Origin, Reply};
use peercache_tests::{NativeSession, TempDir, test_bytes};
use serde_json::json;

/// A real `peercache-server --upstream` in front of `origin`.
async fn upstream_server(origin: &Origin, dir: &TempDir) -> peercache_tests::Server {
    let mut cmd = tokio::process::Command::new(peercache_tests::bin("peercache-server"));
    cmd.args(["--listen", "127.0.0.1:0", "--upstream", &origin.url])
        .arg("--upstream-cache")
        .arg(dir.join("up"))
        .args(["--no-relay", "--ping-interval", "0s"]);
    peercache_tests::spawn_server_cmd(cmd).await.unwrap()
}

#[tokio::test]
async fn the_gateway_passes_headers_ranges_heads_and_redirects_faithfully() {
    let dir = TempDir::new("gw-http");
    let origin = Origin::start().await.unwrap();
    let body = test_bytes(300_000, 12);
    origin.set(
        "/static/app.js.gz",
        Reply::ok(
            &[
                ("cache-control", "public, max-age=600"),
                ("content-type", "text/javascript"),
                ("content-encoding", "gzip"),
                ("etag", "\"app-1\""),
                ("x-frame-options", "DENY"),
                ("content-disposition", "inline"),
            ],
            body.clone(),
        ),
    );
    origin.set(
        "/static/old",
        Reply::ok(&[("location", "/static/new")], "moved").status(301),
    );
    origin.set(
        "/static/head.bin",
        Reply::ok(&[("cache-control", "public, max-age=600")], body.clone()),
    );
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
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let get = |path: &str, headers: &[(&str, &str)]| {
        let mut req = http.get(gw(path)).header("x-peercache-token", &token);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send()
    };

    // The site's end-to-end headers, Content-Encoding included, and its caching
    // headers instead of no-store.
    let r = get("/static/app.js.gz", &[]).await.unwrap();
    assert_eq!(r.status(), 200);
    let h = r.headers().clone();
    assert_eq!(h["content-encoding"], "gzip");
    assert_eq!(h["cache-control"], "public, max-age=600");
    assert_eq!(h["etag"], "\"app-1\"");
    assert_eq!(h["x-frame-options"], "DENY");
    assert_eq!(h["content-disposition"], "inline");
    assert_eq!(h["accept-ranges"], "bytes");
    // reqwest has no gzip feature here: these are the raw bytes.
    assert_eq!(r.bytes().await.unwrap(), body, "the body untouched");

    // Range: a 206 of the verified bytes; If-Range with another version: all.
    let r = get("/static/app.js.gz", &[("range", "bytes=100000-100099")])
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.headers()["content-range"], "bytes 100000-100099/300000");
    assert_eq!(r.bytes().await.unwrap(), body[100_000..100_100]);
    let r = get(
        "/static/app.js.gz",
        &[("range", "bytes=0-9"), ("if-range", "\"app-1\"")],
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap(), body[..10]);
    let r = get(
        "/static/app.js.gz",
        &[("range", "bytes=0-9"), ("if-range", "\"app-0\"")],
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().len(), body.len());
    let r = get("/static/app.js.gz", &[("range", "bytes=400000-")])
        .await
        .unwrap();
    assert_eq!(r.status(), 416);
    assert_eq!(r.headers()["content-range"], "bytes */300000");

    // A redirect with its Location (absolute, on the site).
    let r = get("/static/old", &[]).await.unwrap();
    assert_eq!(r.status(), 301);
    assert_eq!(
        r.headers()["location"],
        format!("{}/static/new", server.url).as_str()
    );

    // HEAD: the headers, and the origin was asked with a HEAD, not a GET.
    let r = http
        .head(gw("/static/head.bin"))
        .header("x-peercache-token", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], "300000");
    assert_eq!(r.headers()["cache-control"], "public, max-age=600");
    let seen = origin.seen("/static/head.bin");
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].method,
        Method::HEAD,
        "no body fetched behind a HEAD"
    );
}

/// The cache directory deleted while the host runs: it is made again and the
/// next download, referred to a peer, is still delivered whole.
#[tokio::test]
async fn a_deleted_cache_directory_is_recreated_and_the_download_delivered() {
    let dir = TempDir::new("gw-rmcache");
    let a = test_bytes(200_000, 31);
    let b = test_bytes(200_000, 32);
    let root = peercache_tests::make_site(&dir, &[("a.bin", &a), ("b.bin", &b)]);
    // Over every client's target: a holder gets the client referred to it.
    let server = peercache_tests::spawn_server(
        &root,
        &[
            "--no-relay",
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
    let _holder = peercache_tests::seed_peer(
        &server.url,
        "/static/b.bin",
        &dir.join("seed-out"),
        &dir.join("seed-cache"),
        &[],
    )
    .await
    .unwrap();
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
    let token = status["token"].as_str().unwrap().to_string();
    let get = |path: &str| {
        reqwest::Client::new()
            .get(format!(
                "http://127.0.0.1:{}/g/{}{path}",
                status["gateway_port"], server.url
            ))
            .header("x-peercache-token", &token)
            .send()
    };
    assert_eq!(
        get("/static/a.bin").await.unwrap().bytes().await.unwrap(),
        a
    );
    // The host may still be keeping what it just delivered (files appear
    // while the directory is removed): remove until it is gone.
    for attempt in 0.. {
        match std::fs::remove_dir_all(&cache) {
            Ok(()) => break,
            Err(e) if attempt < 20 && e.kind() == std::io::ErrorKind::DirectoryNotEmpty => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(e) => panic!("removing the cache: {e}"),
        }
    }
    assert!(!cache.exists());
    let r = get("/static/b.bin").await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["peercache-source"]
            .to_str()
            .unwrap()
            .starts_with("peer"),
        "referred to the holder: {:?}",
        r.headers()["peercache-source"]
    );
    assert_eq!(r.bytes().await.unwrap(), b, "delivered whole");
    let a_again = get("/static/a.bin").await.unwrap().bytes().await.unwrap();
    assert_eq!(
        a_again, a,
        "an object whose file went with the directory too"
    );
}

/// `fetch -o FILE` of a body the site sends gzip-encoded writes it decoded (as
/// a browser saving it would; the hash is checked on the bytes as sent),
/// `--raw` writes it as sent, and a body that is not the gzip it claims fails
/// with the reason and leaves no file behind.
#[tokio::test]
async fn fetch_writes_a_gzip_body_decoded_and_refuses_a_false_one() {
    use std::io::Write;
    let dir = TempDir::new("fetch-gzip");
    let origin = Origin::start().await.unwrap();
    let plain = test_bytes(400_000, 13);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&plain).unwrap();
    let encoded = gz.finish().unwrap();
    let gzip = |body: Vec<u8>| {
        Reply::ok(
            &[
                ("cache-control", "public, max-age=600"),
                ("content-encoding", "gzip"),
            ],
            body,
        )
    };
    origin.set("/static/data.bin", gzip(encoded.clone()));
    origin.set("/static/false.bin", gzip(test_bytes(50_000, 14)));
    origin.set(
        "/static/brotli.bin",
        Reply::ok(&[("content-encoding", "br")], test_bytes(10_000, 15)),
    );
    let server = upstream_server(&origin, &dir).await;
    let fetch = |path: &'static str, out: &'static str, args: &'static [&'static str]| {
        let (url, out, cache) = (server.url.clone(), dir.join(out), dir.join("cache"));
        async move {
            peercache_tests::fetch_cli_with(&url, path, &out, &cache, args)
                .await
                .unwrap()
        }
    };

    let (ok, err) = fetch("/static/data.bin", "data", &[]).await;
    assert!(ok, "{err}");
    assert_eq!(std::fs::read(dir.join("data")).unwrap(), plain, "decoded");
    let (ok, err) = fetch("/static/data.bin", "data.gz", &["--raw"]).await;
    assert!(ok, "{err}");
    assert_eq!(
        std::fs::read(dir.join("data.gz")).unwrap(),
        encoded,
        "as sent"
    );
    // From the host's own cache (fresh for 600 s), the coding is still known.
    let (ok, err) = fetch("/static/data.bin", "data2", &[]).await;
    assert!(ok && err.contains("from the local cache"), "{err}");
    assert_eq!(std::fs::read(dir.join("data2")).unwrap(), plain);

    let (ok, err) = fetch("/static/false.bin", "false", &[]).await;
    assert!(!ok, "a false gzip body is refused");
    assert!(err.contains("marked gzip but does not decode"), "{err}");
    assert!(!dir.join("false").exists(), "no file written");

    let (ok, err) = fetch("/static/brotli.bin", "brotli", &[]).await;
    assert!(ok, "{err}");
    assert!(
        err.contains("\"br\"") && err.contains("written as sent"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(dir.join("brotli")).unwrap(),
        test_bytes(10_000, 15)
    );

    // Nothing half-written is left beside the outputs.
    let leftovers: Vec<_> = std::fs::read_dir(dir.join("."))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".partial-") || n.contains(".decoded-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
