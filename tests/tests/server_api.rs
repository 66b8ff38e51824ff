//! The server's API against a real `peercache-server` process: serve-or-refer and
//! the answers to bad input.

use peercache_core::hash::ObjectHash;
use peercache_tests::{
    TempDir, TestKey, announce, ask, make_site, register_and_fetch, signed_post, spawn_server,
    test_bytes,
};
use serde_json::json;

async fn register_and_announce(
    client: &reqwest::Client,
    server: &str,
    key: &TestKey,
    port: u16,
    hash: &ObjectHash,
    path: &str,
) {
    let id = &key.id;
    // It claims an address elsewhere and one on the connection's source address:
    // only the latter is listed.
    let r = signed_post(
        server,
        "/v1/peers",
        key,
        &json!({"peer_id": id, "dial": {"relay": "https://relay.example/", "direct": ["192.0.2.9:9", format!("127.0.0.1:{port}")]}, "port": port}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        body["addr"],
        format!("peer:?direct=127.0.0.1:{port}"),
        "only the connection's source address, and no relay the server does not run"
    );
    // Not fetched through this server (and nothing listening to prove it): refused.
    let r = signed_post(
        server,
        "/v1/announce",
        key,
        &json!({"peer_id": id, "have": [hash.to_hex()]}),
    )
    .await
    .unwrap();
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        body["rejected"][0],
        hash.to_hex(),
        "listed only after fetching through the server"
    );
    let r = client
        .get(format!("{server}{path}"))
        .header("Peercache-Client", format!("id={id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap();
    let r = signed_post(
        server,
        "/v1/announce",
        key,
        &json!({"peer_id": id, "have": [hash.to_hex()]}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["accepted"][0], hash.to_hex());
}

#[tokio::test]
async fn refers_clients_that_accept_referrals_and_serves_everyone_else() {
    let dir = TempDir::new("srv-refer");
    let data = test_bytes(300_000, 1);
    let root = make_site(&dir, &[("a.bin", &data)]);
    let server = spawn_server(&root, &["--egress-limit", "1MiB", "--target-period", "0s"])
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let url = format!("{}/static/a.bin", server.url);

    // Every 200 carries hash, size and the advertisement.
    let r = http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let hash = ObjectHash::of(&data);
    assert_eq!(
        r.headers()["peercache-object"].to_str().unwrap(),
        format!("blake3={hash}; size={}", data.len())
    );
    assert_eq!(
        r.headers()["peercache"].to_str().unwrap(),
        "scope=\"/static/\""
    );
    assert_eq!(r.bytes().await.unwrap(), data);

    // No holder yet: even a referral-capable client gets the bytes. It is a
    // registered serving peer (with dial info), so others can be sent to it.
    let me = TestKey::new(100);
    let r = signed_post(
        &server.url,
        "/v1/peers",
        &me,
        &serde_json::json!({"peer_id": me.id, "port": 40_990,
            "dial": {"relay": null, "direct": ["127.0.0.1:40990"]}}),
    )
    .await
    .unwrap();
    assert!(r.status().is_success());
    let first = http
        .get(&url)
        .header("Peercache-Client", format!("id={}", me.id))
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 200);
    // While that transfer is under way on the slow pipe, another referral-capable
    // client is referred straight away to the peer receiving it (it serves what
    // it verified as it arrives, issue 12 point 1)…
    let r = http
        .get(&url)
        .header("Peercache-Client", "id=other")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 300);
    let referral: serde_json::Value = r.json().await.unwrap();
    assert_eq!(referral["proxies"][0]["id"], me.id.as_str(), "{referral}");
    assert_eq!(
        referral["proxies"][1]["id"], "server",
        "the server last: {referral}"
    );
    // …while a browser without the extension always gets the bytes.
    let plain = http.get(&url).send().await.unwrap();
    assert_eq!(plain.status(), 200);
    assert_eq!(plain.bytes().await.unwrap(), data);
    assert_eq!(first.bytes().await.unwrap(), data);

    let holder1 = TestKey::new(1);
    register_and_announce(&http, &server.url, &holder1, 40001, &hash, "/static/a.bin").await;

    // Without Peercache-Client: always 200.
    assert_eq!(http.get(&url).send().await.unwrap().status(), 200);
    // A client declaring a link slower than the server's pipe would gain nothing
    // from a peer (its target period grows with its own floor, M4): served.
    let r = http
        .get(&url)
        .header("Peercache-Client", "id=me; bw=100000")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap();
    // A fast client: 300 and the referral, server last.
    let r = http
        .get(&url)
        .header("Peercache-Client", "id=me; bw=100000000")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 300);
    assert_eq!(
        r.headers()["content-type"],
        "application/vnd.peercache.referral+json"
    );
    let referral: serde_json::Value = r.json().await.unwrap();
    assert_eq!(referral["object"]["hash"], hash.to_hex());
    assert_eq!(referral["object"]["size"], data.len());
    assert_eq!(referral["proxies"][0]["id"], holder1.id.as_str());
    assert_eq!(
        referral["proxies"][0]["addr"],
        "peer:?direct=127.0.0.1:40001"
    );
    let last = referral["proxies"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["id"], "server");
    assert_eq!(referral["server"], server.url);
    // The holder itself is never referred to itself.
    let r = http
        .get(&url)
        .header("Peercache-Client", format!("id={}", holder1.id))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // A request with credentials is never referred.
    let r = http
        .get(&url)
        .header("Peercache-Client", "id=me")
        .header("Cookie", "session=1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Outside the advertised scope: never referred.
    let r = http
        .get(format!("{}/", server.url))
        .header("Peercache-Client", "id=me")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn without_an_egress_limit_the_server_serves_within_the_default_period() {
    let dir = TempDir::new("srv-fast");
    let data = test_bytes(10_000, 2);
    let root = make_site(&dir, &[("a.bin", &data)]);
    let server = spawn_server(&root, &[]).await.unwrap();
    let http = reqwest::Client::new();
    register_and_announce(
        &http,
        &server.url,
        &TestKey::new(2),
        40002,
        &ObjectHash::of(&data),
        "/static/a.bin",
    )
    .await;
    let r = http
        .get(format!("{}/static/a.bin", server.url))
        .header("Peercache-Client", "id=me")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "an idle, unlimited server sends in time");
}

#[tokio::test]
async fn headers_only_answers_and_range_on_site_files() {
    let dir = TempDir::new("srv-headers-only");
    let data = test_bytes(30_000, 5);
    let root = make_site(&dir, &[("pic.svg", &data)]);
    let server = spawn_server(&root, &[]).await.unwrap();
    let http = reqwest::Client::new();
    let url = format!("{}/static/pic.svg", server.url);
    let r = http
        .get(&url)
        .header("Peercache-Headers-Only", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let h = r.headers().clone();
    assert_eq!(
        h["content-type"], "image/svg+xml",
        "the page sees the real type"
    );
    assert_eq!(h["peercache-headers-only"], "1");
    assert_eq!(
        h["cache-control"], "no-store",
        "a browser cache never keeps the empty body"
    );
    assert!(h.contains_key("peercache-object"));
    assert!(r.bytes().await.unwrap().is_empty());
    // A request with a cookie is not shareable: the whole body, unmarked.
    let r = http
        .get(&url)
        .header("Peercache-Headers-Only", "1")
        .header("Cookie", "session=1")
        .send()
        .await
        .unwrap();
    assert!(!r.headers().contains_key("peercache-headers-only"));
    assert_eq!(r.bytes().await.unwrap(), data);
    // The site's files answer Range, as the objects API does.
    let r = http
        .get(&url)
        .header("Range", "bytes=1000-")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.headers()["content-range"], "bytes 1000-29999/30000");
    let etag = r.headers()["etag"].clone();
    assert_eq!(
        etag.to_str().unwrap(),
        format!("\"{}\"", ObjectHash::of(&data).to_hex())
    );
    assert_eq!(r.bytes().await.unwrap(), data[1000..]);
    let r = http
        .get(&url)
        .header("Range", "bytes=40000-")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 416, "beyond the end");
    assert_eq!(r.headers()["content-range"], "bytes */30000");
    for (range, if_range) in [
        ("bytes=0-0,-1", None), // several ranges: not supported, the whole file
        ("bytes=5-3", None),    // reversed: ignored
        ("items=0-5", None),    // another unit: ignored
        ("bytes=1000-", Some("\"0000\"")), // another version: the whole (current) file
    ] {
        let mut req = http.get(&url).header("Range", range);
        if let Some(tag) = if_range {
            req = req.header("If-Range", tag);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 200, "{range}");
        assert_eq!(r.bytes().await.unwrap(), data, "{range}");
    }
    let r = http
        .get(&url)
        .header("Range", "bytes=1000-")
        .header("If-Range", etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206, "the same version: the rest");
    let r = http
        .head(&url)
        .header("Range", "bytes=1000-")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "Range is for GET only");
    // Outside the scope: the whole body too.
    let r = http
        .get(format!("{}/index.html", server.url))
        .header("Peercache-Headers-Only", "1")
        .send()
        .await
        .unwrap();
    assert!(!r.headers().contains_key("peercache-headers-only"));
    assert!(!r.bytes().await.unwrap().is_empty());
}

#[tokio::test]
async fn bad_input_gets_a_4xx_with_a_reason() {
    let dir = TempDir::new("srv-bad");
    let root = make_site(&dir, &[("a.bin", b"abc")]);
    let server = spawn_server(&root, &[]).await.unwrap();
    let http = reqwest::Client::new();
    let u = |p: &str| format!("{}{p}", server.url);

    let key = TestKey::new(7);
    // Unsigned: refused with the reason.
    let r = http
        .post(u("/v1/announce"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.text().await.unwrap().contains("Peercache-Auth"));
    // Signed garbage, a bad hash, an unknown peer, a body naming someone else.
    let bytes = b"{not json";
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let r = http
        .post(u("/v1/announce"))
        .header(
            "peercache-auth",
            peercache_core::auth::sign_request(&key.secret, "POST", "/v1/announce", now, bytes),
        )
        .header("content-type", "application/json")
        .body(&bytes[..])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let reason = r.text().await.unwrap();
    assert!(reason.contains("error"), "{reason}");

    let r = signed_post(
        &server.url,
        "/v1/announce",
        &key,
        &json!({"peer_id": key.id, "have": ["zz"]}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("hash"));

    let r = signed_post(
        &server.url,
        "/v1/announce",
        &key,
        &json!({"peer_id": key.id, "have": []}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.text().await.unwrap().contains("register"));

    let r = signed_post(
        &server.url,
        "/v1/peers",
        &key,
        &json!({"peer_id": "../etc", "port": 1}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 401);

    let big = "x".repeat(100_000);
    let r = http
        .post(u("/v1/peers"))
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);

    let r = http
        .get(u("/static/a.bin"))
        .header("Peercache-Client", "bw=lots")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("bw"));

    let r = http
        .get(u("/static/..%2f..%2fetc%2fpasswd"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = http.get(u("/nope.txt")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let r = http.delete(u("/static/a.bin")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    let r = http.get(u("/v1/objects/not-a-hash")).send().await.unwrap();
    assert_eq!(r.status(), 400);

    // Still serving after all that.
    assert_eq!(
        http.get(u("/static/a.bin"))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
        &b"abc"[..]
    );
}

#[tokio::test]
async fn a_referral_says_why_and_the_admin_page_lists_the_decision() {
    let dir = TempDir::new("srv-why");
    let data = test_bytes(200_000, 7);
    let hash = ObjectHash::of(&data);
    let root = make_site(&dir, &[("w.bin", &data)]);
    let server = spawn_server(
        &root,
        &[
            "--ping-interval",
            "0s",
            "--egress-limit",
            "1MiB",
            "--target-period",
            "0s",
        ],
    )
    .await
    .unwrap();
    let holder = TestKey::new(90);
    register_and_fetch(&server.url, &holder, Some(40390), "/static/w.bin")
        .await
        .unwrap();
    let accepted = announce(&server.url, &holder, &[hash.to_hex()], None)
        .await
        .unwrap();
    assert_eq!(accepted, vec![hash.to_hex()]);

    let client = TestKey::new(91);
    let (status, referral) = ask(&server.url, &client.id, "/static/w.bin").await.unwrap();
    assert_eq!(status, 300);
    let referral = referral.unwrap();
    assert_eq!(referral["proxies"][0]["id"], holder.id.as_str());
    let why = &referral["why"];
    assert_eq!(why["verdict"], "refer", "{referral}");
    assert_eq!(why["reason"], "over_target_with_holders");
    assert_eq!(why["inputs"]["size"], data.len());
    assert_eq!(why["inputs"]["usable_holders"], 1);
    assert_eq!(why["inputs"]["egress"]["limit_bytes_per_s"], 1 << 20);
    assert_eq!(why["target_ms"], 0);
    assert!(why["estimate_ms"].as_u64().unwrap() > 0);

    let stats: serde_json::Value = reqwest::get(format!("{}/admin/stats.json", server.admin_url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let decisions = stats["decisions"].as_array().unwrap();
    let listed = decisions
        .iter()
        .find(|d| d["client"] == client.id.as_str())
        .unwrap_or_else(|| panic!("the referral is listed: {stats}"));
    assert_eq!(listed["path"], "/static/w.bin");
    assert_eq!(listed["verdict"], "refer");
    assert_eq!(listed["reason"], "over_target_with_holders");
    assert_eq!(listed["inputs"], why["inputs"]);
    assert_eq!(listed["estimate_ms"], why["estimate_ms"]);
    assert_eq!(listed["target_ms"], 0);
    assert!(listed["why"].as_str().unwrap().contains("peers hold it"));
    // The holder's own fetch was a decision too (nobody held it then).
    let holders_fetch = decisions
        .iter()
        .find(|d| d["client"] == holder.id.as_str())
        .unwrap_or_else(|| panic!("the holder's fetch is listed: {stats}"));
    assert_eq!(holders_fetch["verdict"], "serve");
    assert_eq!(holders_fetch["reason"], "over_target_no_holders");
}

#[cfg(unix)]
#[tokio::test]
async fn a_server_failure_answers_a_fixed_sentence() {
    let dir = TempDir::new("srv-500");
    let root = make_site(&dir, &[("ok.bin", b"fine")]);
    // A file the server cannot read (a symlink to itself: "too many levels of
    // symbolic links", whoever the server runs as): its OS error and path stay
    // in the server's log.
    let looped = root.join("static/loop.bin");
    std::os::unix::fs::symlink(&looped, &looped).unwrap();
    let server = spawn_server(&root, &[]).await.unwrap();
    let r = reqwest::get(format!("{}/static/loop.bin", server.url))
        .await
        .unwrap();
    assert_eq!(r.status(), 500);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body, json!({"error": "internal error"}));
    // The same server still serves what it can read.
    let r = reqwest::get(format!("{}/static/ok.bin", server.url))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}
