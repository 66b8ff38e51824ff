//! A visitor's first steps with the real binaries: `install` finds the browsers
//! on this machine and registers the host for them, `doctor` judges the
//! registration, the extension and the reachability as the real server sees it,
//! the identity moves from its old place into the data directory, and errors
//! name their real cause (a stopped server, https against plain http, a
//! missing `--root`).

use std::path::Path;

use peercache_tests::{TempDir, bin, fetch_cli, make_site, spawn_server};
use tokio::process::Command;

/// `peercache-host ARGS…` with a throw-away HOME and a PATH holding only
/// `browsers` (empty scripts) and the system's basics.
async fn host(home: &Path, browsers: &[&str], args: &[&str]) -> (bool, String) {
    let path_dir = home.join("bin");
    std::fs::create_dir_all(&path_dir).unwrap();
    for b in browsers {
        let p = path_dir.join(b);
        std::fs::write(&p, "#!/bin/sh\n").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
    let out = Command::new(bin("peercache-host"))
        .args(args)
        .env("HOME", home)
        .env_remove("XDG_DATA_HOME")
        .env_remove("XDG_CACHE_HOME")
        .env_remove("XDG_STATE_HOME")
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("PEERCACHE_STATE_DIR")
        .env_remove("PEERCACHE_CACHE_DIR")
        .env("PATH", &path_dir)
        .env("RUST_LOG", "warn")
        .output()
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test]
async fn install_then_doctor_with_a_real_server() {
    let dir = TempDir::new("visitor-doctor");
    let root = make_site(&dir, &[("a.bin", b"hello")]);
    let server = spawn_server(&root, &[]).await.unwrap();
    let home = dir.join("home");

    // Before install: Chromium is found but not registered; no browser ever
    // started the host. Both are failures, each with a fix.
    let (ok, out) = host(&home, &["chromium"], &["doctor", "--server", &server.url]).await;
    assert!(!ok, "{out}");
    assert!(
        out.contains("[FAIL] Chromium: the host is not registered"),
        "{out}"
    );
    assert!(out.contains("fix: run `peercache-host install`"), "{out}");
    assert!(
        out.contains("[FAIL] extension: no browser has ever started the host"),
        "{out}"
    );
    // The real server dialed this host and reached it directly (loopback).
    assert!(
        out.contains(&format!(
            "[ok  ] reachable by peers of {}: other peers reach this host directly",
            server.url
        )),
        "{out}"
    );

    // `install` with no --browser registers every browser found: Chromium and Firefox here.
    let (ok, out) = host(&home, &["chromium", "firefox"], &["install"]).await;
    assert!(ok, "{out}");
    assert!(out.contains("registered for Chromium"), "{out}");
    assert!(out.contains("registered for Firefox"), "{out}");
    assert!(
        !out.contains("registered for Google Chrome"),
        "Chrome is not installed: {out}"
    );
    let chromium = home.join(".config/chromium/NativeMessagingHosts/org.peercache.host.json");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&chromium).unwrap()).unwrap();
    assert_eq!(manifest["path"], bin("peercache-host").to_str().unwrap());
    assert!(
        home.join(".mozilla/native-messaging-hosts/org.peercache.host.json")
            .exists()
    );

    let (_, out) = host(
        &home,
        &["chromium", "firefox"],
        &["doctor", "--server", &server.url],
    )
    .await;
    assert!(
        out.contains("[ok  ] Chromium: the host is registered"),
        "{out}"
    );
    assert!(
        out.contains("[ok  ] Firefox: the host is registered"),
        "{out}"
    );

    // The program named in a manifest is gone: doctor says so.
    let mut broken = manifest.clone();
    broken["path"] = "/nonexistent/peercache-host".into();
    std::fs::write(&chromium, broken.to_string()).unwrap();
    let (_, out) = host(&home, &["chromium"], &["doctor", "--server", &server.url]).await;
    assert!(
        out.contains("/nonexistent/peercache-host, does not exist"),
        "{out}"
    );

    let (ok, out) = host(&home, &["chromium", "firefox"], &["uninstall"]).await;
    assert!(ok, "{out}");
    assert!(!chromium.exists());
}

#[tokio::test]
async fn no_browser_found_is_said_plainly() {
    let dir = TempDir::new("visitor-none");
    let (ok, out) = host(&dir.join("home"), &[], &["install"]).await;
    assert!(!ok);
    assert!(
        out.contains("found none of the supported browsers"),
        "{out}"
    );
    assert!(out.contains("--browser"), "{out}");
}

#[tokio::test]
async fn the_identity_moves_from_the_old_state_directory() {
    let dir = TempDir::new("visitor-migrate");
    let root = make_site(&dir, &[("a.bin", b"hello")]);
    let server = spawn_server(&root, &[]).await.unwrap();
    let home = dir.join("home");
    let old = home.join(".local/state/peercache");
    std::fs::create_dir_all(&old).unwrap();
    let secret = "11".repeat(32);
    std::fs::write(old.join("peer-key"), &secret).unwrap();

    let out_file = dir.join("out");
    let out_arg = out_file.to_str().unwrap().to_string();
    let (ok, out) = host(
        &home,
        &[],
        &[
            "fetch",
            "--server",
            &server.url,
            "/static/a.bin",
            "-o",
            &out_arg,
        ],
    )
    .await;
    assert!(ok, "{out}");
    let moved = home.join(".local/share/peercache/peer-key");
    assert_eq!(
        std::fs::read_to_string(&moved).unwrap(),
        secret,
        "the same key, moved"
    );
    assert!(!old.join("peer-key").exists());
    // The server's key was pinned in the data directory, not in the cache.
    assert!(home.join(".local/share/peercache/servers.json").exists());
    assert!(!home.join(".cache/peercache/servers.json").exists());
}

#[tokio::test]
async fn errors_name_their_real_cause() {
    let dir = TempDir::new("visitor-errors");
    // Nothing listens on this port (bound, then closed).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (ok, err) = fetch_cli(
        &format!("http://127.0.0.1:{port}"),
        "/static/a.bin",
        &dir.join("o1"),
        &dir.join("c1"),
    )
    .await
    .unwrap();
    assert!(!ok);
    assert!(err.to_lowercase().contains("connection refused"), "{err}");

    // https:// against a plain-http server: the TLS failure is named.
    let root = make_site(&dir, &[("a.bin", b"hello")]);
    let server = spawn_server(&root, &[]).await.unwrap();
    let https = server.url.replace("http://", "https://");
    let (ok, err) = fetch_cli(&https, "/static/a.bin", &dir.join("o2"), &dir.join("c2"))
        .await
        .unwrap();
    assert!(!ok);
    assert!(
        err.contains("tls")
            || err.contains("TLS")
            || err.contains("InvalidContentType")
            || err.contains("corrupt message"),
        "{err}"
    );
    assert!(!dir.join("o1").exists() && !dir.join("o2").exists());

    // A server with a missing --root fails before it says it listens.
    let out = Command::new(bin("peercache-server"))
        .args([
            "--root",
            dir.join("missing").to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stdout.contains("listening on"), "{stdout}");
    assert!(
        stderr.contains("missing") && stderr.contains("No such file"),
        "{stderr}"
    );

    // `serve --help` shows --server as required.
    let help = Command::new(bin("peercache-host"))
        .args(["serve", "--help"])
        .output()
        .await
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("Usage: peercache-host serve [OPTIONS] --server <SERVER>"),
        "{help}"
    );
}
