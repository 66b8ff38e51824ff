//! `--upstream` mode as an RFC 9111 shared cache: a real `peercache-server` in
//! front of the scriptable origin (`peercache_tests::origin`), which sends the
//! awkward headers and logs what reaches it.

use std::time::Duration;

use peercache_tests::origin::{Origin, Reply};
use peercache_tests::{Server, TempDir};

async fn cache_in_front(origin: &Origin, dir: &TempDir) -> Server {
    let mut cmd = tokio::process::Command::new(peercache_tests::bin("peercache-server"));
    cmd.args(["--listen", "127.0.0.1:0", "--upstream", &origin.url])
        .arg("--upstream-cache")
        .arg(dir.join("cache"))
        .args(["--no-relay", "--ping-interval", "0s"]);
    peercache_tests::spawn_server_cmd(cmd).await.unwrap()
}

/// A path, its response headers, and the origin hits after two GETs.
type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, usize);

fn http_date(offset_s: i64) -> String {
    let now = std::time::SystemTime::now();
    let t = if offset_s >= 0 {
        now + Duration::from_secs(offset_s as u64)
    } else {
        now - Duration::from_secs((-offset_s) as u64)
    };
    peercache_core::conditional::format_date(t)
}

/// Freshness from every source the RFC names, invalid values, and the
/// responses a shared cache must not store.
#[tokio::test]
async fn freshness_comes_from_the_origin_and_invalid_values_are_stale() {
    let dir = TempDir::new("up-fresh");
    let origin = Origin::start().await.unwrap();
    let date = http_date(0);
    let in_an_hour = http_date(3600);
    let cases: Vec<Case> = vec![
        // (path, response headers, origin hits after two GETs)
        ("/max-age", vec![("cache-control", "max-age=300")], 1),
        (
            "/s-maxage-over-max-age",
            vec![("cache-control", "max-age=0, s-maxage=300")],
            1,
        ),
        (
            "/expires",
            vec![("date", &date), ("expires", &in_an_hour)],
            1,
        ),
        ("/expires-invalid", vec![("expires", "0")], 2),
        (
            "/max-age-invalid",
            vec![("cache-control", "max-age=soon")],
            2,
        ),
        (
            "/age-over-max-age",
            vec![("cache-control", "max-age=100"), ("age", "200")],
            2,
        ),
        ("/no-freshness", vec![], 2),
        (
            "/no-store",
            vec![("cache-control", "max-age=300, no-store")],
            2,
        ),
        (
            "/private",
            vec![("cache-control", "max-age=300, private")],
            2,
        ),
        (
            "/set-cookie-public",
            vec![
                ("cache-control", "public, max-age=300"),
                ("set-cookie", "a=b"),
            ],
            2,
        ),
        (
            "/vary-cookie",
            vec![("cache-control", "max-age=300"), ("vary", "Cookie")],
            2,
        ),
        (
            "/cdn-cache-control",
            vec![
                ("cache-control", "no-store"),
                ("cdn-cache-control", "max-age=300"),
            ],
            1,
        ),
        ("/upper-case", vec![("cache-control", "MAX-AGE=300")], 1),
        (
            "/moved",
            vec![("cache-control", "max-age=300"), ("location", "/max-age")],
            1,
        ),
    ];
    for (path, headers, _) in &cases {
        let reply = Reply::ok(headers, format!("body of {path}"));
        let reply = if *path == "/moved" {
            reply.status(301)
        } else {
            reply
        };
        origin.set(path, reply);
    }
    let server = cache_in_front(&origin, &dir).await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    for (path, headers, hits) in &cases {
        for round in 0..2 {
            let r = http
                .get(format!("{}{path}", server.url))
                .send()
                .await
                .unwrap();
            let expected = if *path == "/moved" { 301 } else { 200 };
            assert_eq!(r.status(), expected, "{path}");
            if *path == "/moved" {
                assert_eq!(r.headers()["location"], "/max-age");
            }
            if round == 1 && *hits == 1 {
                assert!(r.headers().contains_key("age"), "{path}: a hit has Age");
            }
            for (k, v) in headers {
                if *k != "age" && *k != "date" {
                    assert_eq!(
                        r.headers()[*k],
                        *v,
                        "{path}: {k} kept as the origin sent it"
                    );
                }
            }
            assert_eq!(r.text().await.unwrap(), format!("body of {path}"));
        }
        assert_eq!(origin.hits(path), *hits, "{path}: origin hits");
    }
}

/// `Vary` keys variants; stored responses keep the origin's end-to-end headers;
/// stale ones are revalidated with the origin's validators and a `304` merged
/// in; the client's own conditionals get `304` and its `Range` a `206`, all
/// from the store.
#[tokio::test]
async fn variants_revalidation_and_conditional_requests_come_from_the_store() {
    let dir = TempDir::new("up-reval");
    let origin = Origin::start().await.unwrap();
    origin.set_fn("/lang", |_, h| {
        let lang = h
            .get("accept-language")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none")
            .to_string();
        Reply::ok(
            &[
                ("cache-control", "max-age=300"),
                ("vary", "Accept-Language"),
            ],
            format!("hello in {lang}"),
        )
    });
    let body = peercache_tests::test_bytes(100_000, 5);
    let version = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(1));
    let v = version.clone();
    let b = body.clone();
    origin.set_fn("/app.js", move |_, _| {
        let n = v.load(std::sync::atomic::Ordering::SeqCst).to_string();
        let mut r = Reply::ok(
            &[
                ("cache-control", "no-cache"),
                ("etag", "\"v1\""),
                ("content-type", "text/javascript"),
                ("content-encoding", "gzip"),
                ("content-security-policy", "default-src 'self'"),
                ("x-frame-options", "DENY"),
                ("access-control-allow-origin", "*"),
                ("content-disposition", "inline; name=\"app.js\""),
                ("x-custom", "kept"),
            ],
            b.clone(),
        );
        r.headers.push(("x-version".into(), n));
        r
    });
    let server = cache_in_front(&origin, &dir).await;
    let http = reqwest::Client::new();
    let get = |path: &str, headers: &[(&str, &str)]| {
        let mut req = http.get(format!("{}{path}", server.url));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send()
    };

    for (lang, round) in [("en", 0), ("fr", 0), ("en", 1), ("fr", 1)] {
        let r = get("/lang", &[("accept-language", lang)]).await.unwrap();
        assert_eq!(
            r.text().await.unwrap(),
            format!("hello in {lang}"),
            "round {round}"
        );
    }
    assert_eq!(origin.hits("/lang"), 2, "one origin fetch per variant");

    let r = get("/app.js", &[]).await.unwrap();
    assert_eq!(r.bytes().await.unwrap(), body);
    version.store(2, std::sync::atomic::Ordering::SeqCst);
    let r = get("/app.js", &[]).await.unwrap();
    assert_eq!(r.status(), 200);
    let h = r.headers().clone();
    for (k, v) in [
        ("etag", "\"v1\""),
        ("cache-control", "no-cache"),
        ("content-encoding", "gzip"),
        ("content-security-policy", "default-src 'self'"),
        ("x-frame-options", "DENY"),
        ("access-control-allow-origin", "*"),
        ("content-disposition", "inline; name=\"app.js\""),
        ("x-custom", "kept"),
        ("accept-ranges", "bytes"),
    ] {
        assert_eq!(h[k], v, "{k}");
    }
    assert_eq!(h["x-version"], "2", "the 304's headers are merged in");
    assert!(h.contains_key("age"));
    assert_eq!(
        r.bytes().await.unwrap(),
        body,
        "the stored body, not fetched again"
    );
    let seen = origin.seen("/app.js");
    assert_eq!(seen.len(), 2);
    assert_eq!(
        seen[1].headers["if-none-match"], "\"v1\"",
        "revalidated with the origin's ETag"
    );
    assert_eq!(
        seen[1].status, 304,
        "the origin sent no body the second time"
    );

    // The client's own conditional request: 304 (after one more revalidation,
    // as no-cache asks).
    let r = get("/app.js", &[("if-none-match", "\"v1\"")])
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
    assert_eq!(r.headers()["etag"], "\"v1\"");
    assert!(r.bytes().await.unwrap().is_empty());
    assert_eq!(origin.seen("/app.js")[2].status, 304);

    // A range from a fresh stored response: no origin request at all.
    origin.set(
        "/media.bin",
        Reply::ok(&[("cache-control", "max-age=300")], body.clone()),
    );
    get("/media.bin", &[]).await.unwrap().bytes().await.unwrap();
    let r = get("/media.bin", &[("range", "bytes=1000-1999")])
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.headers()["content-range"], "bytes 1000-1999/100000");
    assert_eq!(r.bytes().await.unwrap(), body[1000..2000]);
    let r = get("/media.bin", &[("if-modified-since", &http_date(0))])
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        200,
        "no Last-Modified: an If-Modified-Since never matches"
    );
    r.bytes().await.unwrap();
    assert_eq!(origin.hits("/media.bin"), 1);
    let r = http
        .head(format!("{}/media.bin", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], "100000");
    assert_eq!(
        origin.hits("/media.bin"),
        1,
        "a HEAD is answered from the stored GET"
    );
}

/// Other methods reach the origin with their bodies; an unsafe one that
/// succeeds invalidates the stored response of its URL.
#[tokio::test]
async fn other_methods_go_to_the_origin_and_unsafe_ones_invalidate() {
    let dir = TempDir::new("up-methods");
    let origin = Origin::start().await.unwrap();
    origin.set_fn("/item", |m, _| {
        if *m == axum::http::Method::GET {
            Reply::ok(&[("cache-control", "max-age=300")], "item")
        } else {
            Reply::ok(&[("x-method", m.as_str())], "done").status(201)
        }
    });
    let server = cache_in_front(&origin, &dir).await;
    let http = reqwest::Client::new();
    let url = format!("{}/item", server.url);
    for _ in 0..2 {
        assert_eq!(
            http.get(&url).send().await.unwrap().text().await.unwrap(),
            "item"
        );
    }
    assert_eq!(origin.hits("/item"), 1);
    for method in [
        reqwest::Method::OPTIONS,
        reqwest::Method::POST,
        reqwest::Method::DELETE,
    ] {
        let r = http
            .request(method.clone(), &url)
            .body("payload")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{method}: the origin's answer");
        assert_eq!(r.headers()["x-method"], method.as_str());
        // OPTIONS is safe: the stored GET stays; POST/DELETE invalidate it.
        let before = origin.hits("/item");
        assert_eq!(
            http.get(&url).send().await.unwrap().text().await.unwrap(),
            "item"
        );
        let refetched = origin.hits("/item") - before;
        let expected = usize::from(method != reqwest::Method::OPTIONS);
        assert_eq!(
            refetched, expected,
            "{method}: GET after it went to the origin"
        );
    }
    let posts: Vec<_> = origin
        .seen("/item")
        .into_iter()
        .filter(|s| s.method == axum::http::Method::POST)
        .collect();
    assert_eq!(posts.len(), 1);
}

/// `stale-while-revalidate`: a stale response inside the window is served at
/// once and refreshed behind the client's back.
#[tokio::test]
async fn stale_while_revalidate_serves_then_refreshes() {
    let dir = TempDir::new("up-swr");
    let origin = Origin::start().await.unwrap();
    origin.set(
        "/swr",
        Reply::ok(
            &[("cache-control", "max-age=1, stale-while-revalidate=60")],
            "swr",
        ),
    );
    origin.set(
        "/must",
        Reply::ok(
            &[(
                "cache-control",
                "max-age=1, stale-while-revalidate=60, must-revalidate",
            )],
            "must",
        ),
    );
    let server = cache_in_front(&origin, &dir).await;
    let http = reqwest::Client::new();
    for path in ["/swr", "/must"] {
        http.get(format!("{}{path}", server.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let r = http
        .get(format!("{}/swr", server.url))
        .send()
        .await
        .unwrap();
    let age: u64 = r.headers()["age"].to_str().unwrap().parse().unwrap();
    assert!(age >= 2, "the stale stored response, at once: Age {age}");
    assert_eq!(r.text().await.unwrap(), "swr");
    let r = http
        .get(format!("{}/must", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "must");
    assert_eq!(
        origin.hits("/must"),
        2,
        "must-revalidate: never served stale"
    );
    for _ in 0..50 {
        if origin.hits("/swr") == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(origin.hits("/swr"), 2, "revalidated in the background");
}
