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
        .map(|i| {
            (
                format!("o{i}.txt"),
                format!("object number {i}\n").into_bytes(),
            )
        })
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

/// The size of the big object: 1.5 GiB by default (CI); set
/// `PEERCACHE_BIG_MIB=5120` for the 5 GiB run.
fn big_size() -> u64 {
    std::env::var("PEERCACHE_BIG_MIB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(1536)
        << 20
}

/// The hash of `len` zero bytes, streamed.
fn zeros_hash(len: u64) -> ObjectHash {
    let chunk = vec![0u8; 1 << 20];
    let mut h = peercache_core::hash::StreamHasher::new();
    let mut left = len;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        h.update(&chunk[..n]);
        left -= n as u64;
    }
    h.finish()
}

/// The hash and length of a file, streamed.
fn file_hash(path: &std::path::Path) -> (ObjectHash, u64) {
    use std::io::Read;
    let mut f = std::fs::File::open(path).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut h = peercache_core::hash::StreamHasher::new();
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    (h.finish(), h.len())
}

/// Peak resident memory allowed to a host moving the big object.
const SMALL_RSS_KIB: u64 = 256 * 1024;

#[tokio::test]
async fn an_object_over_a_gibibyte_goes_whole_through_fetch_and_the_gateway() {
    let size = big_size();
    let dir = TempDir::new("big-object");
    let root = make_site(&dir, &[]);
    // Sparse: no disk for the site's copy.
    std::fs::File::create(root.join("static/big.bin"))
        .unwrap()
        .set_len(size)
        .unwrap();
    let want = zeros_hash(size);
    let started = std::time::Instant::now();
    let server = spawn_server(&root, &["--ping-interval", "0s", "--no-relay"])
        .await
        .unwrap();
    // The server hashes the site before it answers: the first answer marks
    // the end of that.
    let answered = reqwest::Client::new()
        .get(format!("{}/v1/key", server.url))
        .timeout(std::time::Duration::from_secs(300))
        .send()
        .await
        .unwrap();
    assert_eq!(answered.status(), 200);
    eprintln!(
        "server up (site hashed) in {:?} for {} MiB",
        started.elapsed(),
        size >> 20
    );

    // Through `peercache-host fetch`.
    let out = dir.join("big.out");
    let started = std::time::Instant::now();
    let (ok, err, peak_kib) = peercache_tests::fetch_cli_watched(
        &server.url,
        "/static/big.bin",
        &out,
        &dir.join("fetcher"),
        &[],
    )
    .await
    .unwrap();
    eprintln!(
        "fetch: {:?}, peak RSS {} MiB",
        started.elapsed(),
        peak_kib >> 10
    );
    assert!(ok, "{err}");
    assert_eq!(
        file_hash(&out),
        (want, size),
        "fetch wrote the object whole"
    );
    assert!(peak_kib < SMALL_RSS_KIB, "fetch peak RSS {peak_kib} KiB");
    std::fs::remove_file(&out).unwrap();
    std::fs::remove_dir_all(dir.join("fetcher")).unwrap();

    // Through the gateway.
    let cache = dir.join("gw");
    let mut nm = peercache_tests::NativeSession::start(&[("PEERCACHE_CACHE_DIR", &cache)])
        .await
        .unwrap();
    nm.send(&serde_json::json!({"type": "hello", "version": "t"}))
        .await
        .unwrap();
    let status = nm.recv_type("status").await.unwrap();
    nm.send(&serde_json::json!({"type": "config", "enabled": true, "sites": [{"origin": server.url, "scope": "/static/"}]}))
        .await
        .unwrap();
    nm.recv_type("status").await.unwrap();
    let pid = nm.child.id().unwrap();
    let url = format!(
        "http://127.0.0.1:{}/g/{}/static/big.bin",
        status["gateway_port"], server.url
    );
    let started = std::time::Instant::now();
    let mut r = reqwest::Client::new()
        .get(url)
        .header("x-peercache-token", status["token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.content_length(), Some(size));
    let mut h = peercache_core::hash::StreamHasher::new();
    let mut peak_kib = 0;
    while let Some(chunk) = r.chunk().await.unwrap() {
        h.update(&chunk);
        if h.len() % (64 << 20) < chunk.len() as u64 {
            peak_kib = peak_kib.max(peercache_tests::proc_status_kib(pid, "VmHWM:"));
        }
    }
    peak_kib = peak_kib.max(peercache_tests::proc_status_kib(pid, "VmHWM:"));
    eprintln!(
        "gateway: {:?}, peak RSS {} MiB",
        started.elapsed(),
        peak_kib >> 10
    );
    assert_eq!(
        (h.finish(), h.len()),
        (want, size),
        "the gateway sent it whole"
    );
    assert!(peak_kib < SMALL_RSS_KIB, "gateway peak RSS {peak_kib} KiB");
}
