//! Root mode as an HTTP origin should be: conditional requests answered `304`,
//! `Last-Modified` and `Accept-Ranges` sent, `Cache-Control` set per path by
//! the operator, and a file replaced by one of the same size and modification
//! time noticed (a new hash, never the old one).

use peercache_tests::{TempDir, make_site, spawn_server, test_bytes};

#[tokio::test]
async fn conditional_requests_validators_and_per_path_cache_control() {
    let dir = TempDir::new("site-http");
    let a = test_bytes(50_000, 1);
    let root = make_site(&dir, &[("a.bin", &a)]);
    std::fs::create_dir_all(root.join("static/v1")).unwrap();
    std::fs::write(root.join("static/v1/app.3f2a.js"), b"hashed();").unwrap();
    let server = spawn_server(
        &root,
        &[
            "--no-relay",
            "--cache-control",
            "/static/v1/=public, max-age=31536000, immutable",
        ],
    )
    .await
    .unwrap();
    let http = reqwest::Client::new();
    let url = format!("{}/static/a.bin", server.url);

    let r = http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let h = r.headers().clone();
    assert_eq!(h["accept-ranges"], "bytes");
    assert_eq!(h["cache-control"], "no-cache", "the default");
    let etag = h["etag"].to_str().unwrap().to_string();
    let last_modified = h["last-modified"].to_str().unwrap().to_string();
    assert!(peercache_core::conditional::parse_date(&last_modified).is_some());
    assert_eq!(r.bytes().await.unwrap(), a);

    let r = http
        .get(&url)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
    assert_eq!(r.headers()["etag"], etag.as_str());
    assert!(r.bytes().await.unwrap().is_empty());
    let r = http
        .get(&url)
        .header("if-modified-since", &last_modified)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
    let r = http
        .head(&url)
        .header("if-none-match", "\"other\", W/".to_string() + &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304, "weak comparison, any of the list");
    let r = http
        .get(&url)
        .header("if-none-match", "\"other\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), a);
    let r = http
        .get(&url)
        .header("if-modified-since", "Thu, 01 Jan 1970 00:00:00 GMT")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "changed since then");
    r.bytes().await.unwrap();

    let r = http
        .get(format!("{}/static/v1/app.3f2a.js", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["cache-control"],
        "public, max-age=31536000, immutable"
    );
    assert_eq!(r.text().await.unwrap(), "hashed();");
}

#[tokio::test]
async fn a_same_size_same_mtime_replacement_gets_its_own_hash() {
    let dir = TempDir::new("site-replace");
    let old = test_bytes(20_000, 7);
    let new = test_bytes(20_000, 8);
    let root = make_site(&dir, &[("a.bin", &old)]);
    let path = root.join("static/a.bin");
    let server = spawn_server(&root, &["--no-relay"]).await.unwrap();
    let url = format!("{}/static/a.bin", server.url);
    let r = reqwest::get(&url).await.unwrap();
    let old_tag = r.headers()["etag"].to_str().unwrap().to_string();
    assert_eq!(r.bytes().await.unwrap(), old);

    // Same length, same modification time, other bytes (as `cp -p` or a
    // deploy tool that restores timestamps leaves it).
    let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
    std::fs::write(&path, &new).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().modified().unwrap(), mtime);

    let r = reqwest::get(&url).await.unwrap();
    let tag = r.headers()["etag"].to_str().unwrap().to_string();
    let object = r.headers()["peercache-object"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(r.bytes().await.unwrap(), new);
    assert_ne!(tag, old_tag, "a new version, a new validator");
    assert!(
        object.contains(&peercache_core::ObjectHash::of(&new).to_hex()),
        "the advertised hash is the new bytes' hash: {object}"
    );
}
