//! Native messaging with a real host process, framed as a browser frames it.

use peercache_tests::{NativeSession, TempDir};
use serde_json::json;

async fn session(dir: &TempDir) -> NativeSession {
    let cache = dir.join("cache");
    let log = dir.join("host.log");
    NativeSession::start(&[("PEERCACHE_CACHE_DIR", &cache), ("PEERCACHE_LOG", &log)])
        .await
        .unwrap()
}

#[tokio::test]
async fn hello_gets_versions_and_the_gateway() {
    let dir = TempDir::new("nm-hello");
    let mut s = session(&dir).await;
    s.send(&json!({"type": "hello", "version": "0.1.0"}))
        .await
        .unwrap();
    let hello = s.recv().await.unwrap();
    assert_eq!(hello["type"], "hello");
    assert_eq!(hello["protocol"], 1);
    let status = s.recv().await.unwrap();
    assert_eq!(status["type"], "status");
    assert!(status["gateway_port"].as_u64().unwrap() > 0);
    assert!(status["token"].as_str().unwrap().len() >= 32);
    // Where other peers reach it: its peer endpoint's direct address(es).
    let addr = status["peer_addr"].as_str().unwrap();
    assert!(addr.parse::<std::net::SocketAddr>().is_ok(), "{addr}");
    assert!(peercache_core::auth::is_peer_key(
        status["peer_id"].as_str().unwrap()
    ));
}

#[tokio::test]
async fn malformed_and_oversized_messages_get_an_error_and_the_host_keeps_running() {
    let dir = TempDir::new("nm-bad");
    let mut s = session(&dir).await;

    s.send(&json!({"type": "no_such_type"})).await.unwrap();
    let e = s.recv().await.unwrap();
    assert_eq!(e["type"], "error");
    assert!(e["message"].as_str().unwrap().contains("malformed"));

    // Not JSON at all.
    let mut frame = 5u32.to_ne_bytes().to_vec();
    frame.extend_from_slice(b"{{{{{");
    s.send_raw(&frame).await.unwrap();
    assert_eq!(s.recv().await.unwrap()["type"], "error");

    // A 1 MiB frame: refused before allocating, its bytes skipped.
    let big = vec![b' '; 1 << 20];
    let mut frame = (big.len() as u32).to_ne_bytes().to_vec();
    frame.extend_from_slice(&big);
    s.send_raw(&frame).await.unwrap();
    let e = s.recv().await.unwrap();
    assert_eq!(e["type"], "error");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("over the 65536-byte limit"),
        "{e}"
    );

    // Invalid UTF-8.
    let mut frame = 2u32.to_ne_bytes().to_vec();
    frame.extend_from_slice(&[0xff, 0xfe]);
    s.send_raw(&frame).await.unwrap();
    assert_eq!(s.recv().await.unwrap()["type"], "error");

    // Still in step: the next message is answered normally.
    s.send(&json!({"type": "get_status"})).await.unwrap();
    assert_eq!(s.recv().await.unwrap()["type"], "status");
}

#[tokio::test]
async fn the_host_exits_cleanly_when_the_browser_closes_the_pipe_and_stdout_holds_frames_only() {
    let dir = TempDir::new("nm-close");
    let mut s = session(&dir).await;
    s.send(&json!({"type": "hello", "version": "t"}))
        .await
        .unwrap();
    s.send(&json!({"type": "get_status"})).await.unwrap();
    s.close_stdin();
    let rest = s.rest_of_stdout().await.unwrap();
    // Every byte on stdout is part of a well-formed frame.
    let mut i = 0;
    let mut frames = 0;
    while i < rest.len() {
        let len = u32::from_ne_bytes(rest[i..i + 4].try_into().unwrap()) as usize;
        let body: serde_json::Value = serde_json::from_slice(&rest[i + 4..i + 4 + len]).unwrap();
        assert!(body["type"].is_string());
        i += 4 + len;
        frames += 1;
    }
    assert_eq!(frames, 3, "hello, status, status");
    let status = tokio::time::timeout(std::time::Duration::from_secs(10), s.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
}
