//! The local gateway of a real host: who it answers, and a fetch through it.

use peercache_tests::{NativeSession, TempDir, make_site, spawn_server, test_bytes};
use serde_json::json;

struct Gw {
    session: NativeSession,
    port: u64,
    token: String,
}

async fn gateway(dir: &TempDir) -> Gw {
    let cache = dir.join("cache");
    let mut session = NativeSession::start(&[("PEERCACHE_CACHE_DIR", &cache)])
        .await
        .unwrap();
    session
        .send(&json!({"type": "hello", "version": "t"}))
        .await
        .unwrap();
    let status = session.recv_type("status").await.unwrap();
    Gw {
        port: status["gateway_port"].as_u64().unwrap(),
        token: status["token"].as_str().unwrap().to_string(),
        session,
    }
}

#[tokio::test]
async fn refuses_wrong_tokens_hosts_methods_and_sites_not_enabled() {
    let dir = TempDir::new("gw-refuse");
    let data = test_bytes(50_000, 9);
    let root = make_site(&dir, &[("a.bin", &data)]);
    let server = spawn_server(&root, &[]).await.unwrap();
    let mut gw = gateway(&dir).await;
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{}/g/{}/static/a.bin", gw.port, server.url);

    let r = http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 403, "no token");
    let r = http
        .get(&url)
        .header("x-peercache-token", "wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "wrong token");
    assert!(r.text().await.unwrap().contains("token"));
    let r = http
        .get(&url)
        .header("x-peercache-token", &gw.token)
        .header("host", "evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "foreign Host (DNS rebinding)");
    let r = http
        .get(&url)
        .header("x-peercache-token", &gw.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "site not enabled");

    gw.session
        .send(&json!({"type": "config", "enabled": true, "sites": [{"origin": server.url, "scope": "/static/"}]}))
        .await
        .unwrap();
    gw.session.recv_type("status").await.unwrap();

    let r = http
        .post(&url)
        .header("x-peercache-token", &gw.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    let outside = format!("http://127.0.0.1:{}/g/{}/index.html", gw.port, server.url);
    let r = http
        .get(&outside)
        .header("x-peercache-token", &gw.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "outside the advertised scope");

    let r = http
        .get(&url)
        .header("x-peercache-token", &gw.token)
        .header("origin", &server.url)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["access-control-allow-origin"].to_str().unwrap(),
        server.url
    );
    assert_eq!(r.headers()["peercache-source"], "server");
    assert_eq!(r.bytes().await.unwrap(), data);

    let r = http
        .get(&url)
        .header("x-peercache-token", &gw.token)
        .header("origin", "https://other.example")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        403,
        "a foreign Origin is refused, right token or not"
    );
    assert!(
        r.headers().get("access-control-allow-origin").is_none(),
        "CORS only for the site's origin"
    );
    assert!(r.text().await.unwrap().contains("foreign origin"));
    let r = http
        .get(&url)
        .header("x-peercache-token", &gw.token)
        .header("origin", "null")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "an opaque origin is foreign too");

    // The global toggle off: refused at once.
    gw.session
        .send(&json!({"type": "config", "enabled": false, "sites": []}))
        .await
        .unwrap();
    gw.session.recv_type("status").await.unwrap();
    let r = http
        .get(&url)
        .header("x-peercache-token", &gw.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
}
