//! What an operator runs into (issue 15 point 4), against the real server
//! process: `/healthz`, the Prometheus text (help on every metric, units in the
//! names, latency histograms, build info), JSON logs, the trusted-proxy
//! setting, the example config, and defaults in `--help`.

use peercache_tests::{TempDir, bin, make_site, spawn_server, spawn_server_cmd, test_bytes};

#[tokio::test]
async fn healthz_answers_on_the_public_listener() {
    let dir = TempDir::new("healthz");
    let root = make_site(&dir, &[("a.bin", &test_bytes(10, 1))]);
    let server = spawn_server(&root, &["--ping-interval", "0s"])
        .await
        .unwrap();
    let r = reqwest::get(format!("{}/healthz", server.url))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "ok\n");
}

#[tokio::test]
async fn the_store_being_down_fails_the_health_check() {
    let dir = TempDir::new("healthz-redis");
    let root = make_site(&dir, &[("a.bin", &test_bytes(10, 1))]);
    let mut redis = peercache_tests::spawn_redis().await.unwrap();
    let url = redis.url();
    let server = spawn_server(&root, &["--store", &url, "--ping-interval", "0s"])
        .await
        .unwrap();
    let get = || async {
        reqwest::get(format!("{}/healthz", server.url))
            .await
            .unwrap()
    };
    assert_eq!(get().await.status(), 200);
    redis.stop().await;
    let r = get().await;
    assert_eq!(r.status(), 503);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("look-up table unavailable")
    );
}

#[tokio::test]
async fn every_metric_has_help_units_and_the_latencies_are_histograms() {
    let dir = TempDir::new("metrics-help");
    let data = test_bytes(50_000, 3);
    let root = make_site(&dir, &[("a.bin", &data)]);
    let server = spawn_server(&root, &["--ping-interval", "0s"])
        .await
        .unwrap();
    let body = reqwest::get(format!("{}/static/a.bin", server.url))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(body.len(), data.len());
    let text = reqwest::get(format!("{}/metrics", server.admin_url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let typed: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(typed.len() >= 18, "{text}");
    for name in &typed {
        assert!(
            text.contains(&format!("# HELP {name} ")),
            "{name} has no # HELP line"
        );
        assert!(name.starts_with("peercache_"), "{name}");
        // A byte count ends in its unit; a rate gauge in bytes per second.
        assert!(
            !name.contains("_bytes_")
                || name.ends_with("_bytes_total")
                || name.ends_with("_bytes_per_second"),
            "{name}: the unit goes last"
        );
    }
    assert!(text.contains("# TYPE peercache_request_duration_seconds histogram"));
    assert!(text.contains("# TYPE peercache_store_duration_seconds histogram"));
    assert!(
        text.contains("peercache_request_duration_seconds_bucket{route=\"site\",le=\"0.005\"}")
    );
    assert!(text.contains("peercache_build_info{version=\""));
    let served = text
        .lines()
        .find_map(|l| l.strip_prefix("peercache_served_bytes_total "))
        .and_then(|v| v.trim().parse::<f64>().ok());
    assert_eq!(served, Some(data.len() as f64));
}

#[tokio::test]
async fn json_logs_on_request() {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
    let dir = TempDir::new("json-logs");
    let root = make_site(&dir, &[("a.bin", &test_bytes(10, 1))]);
    let mut child = tokio::process::Command::new(bin("peercache-server"))
        .arg("--root")
        .arg(&root)
        .args(["--log-format", "json", "--listen", "127.0.0.1:0"])
        .args(["--ping-interval", "0s"])
        .env("RUST_LOG", "debug")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut addr = None;
    while let Some(line) = stdout.next_line().await.unwrap() {
        if let Some(a) = line.strip_prefix("listening on ") {
            addr = Some(a.to_string());
            break;
        }
    }
    let addr = addr.expect("the server started");
    let r = reqwest::get(format!("http://{addr}/static/a.bin"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    child.kill().await.unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .await
        .unwrap();
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "nothing logged");
    for l in &lines {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(v["level"].is_string() && v["timestamp"].is_string(), "{l}");
    }
}

/// Sends `n` API requests claiming the given forwarded client addresses;
/// returns how many were refused with 429.
async fn refused(url: &str, forwarded: impl Fn(usize) -> String, n: usize) -> usize {
    let client = reqwest::Client::new();
    let mut refused = 0;
    for i in 0..n {
        let r = client
            .get(format!("{url}/v1/key"))
            .header("X-Forwarded-For", forwarded(i))
            .send()
            .await
            .unwrap();
        if r.status() == 429 {
            refused += 1;
        }
    }
    refused
}

#[tokio::test]
async fn the_client_address_comes_from_a_trusted_proxy_only() {
    let dir = TempDir::new("trusted-proxy");
    let root = make_site(&dir, &[("a.bin", &test_bytes(10, 1))]);
    let args = ["--ping-interval", "0s", "--source-rate", "1"];
    // Behind a trusted proxy (the test is the proxy at 127.0.0.1) each
    // forwarded client has its own API rate…
    let mut behind: Vec<&str> = args.to_vec();
    behind.extend(["--trusted-proxy", "127.0.0.0/8"]);
    let server = spawn_server(&root, &behind).await.unwrap();
    assert_eq!(
        refused(&server.url, |i| format!("203.0.113.{i}"), 12).await,
        0,
        "distinct forwarded clients share no rate"
    );
    assert!(
        refused(&server.url, |_| "203.0.113.200".to_string(), 12).await > 0,
        "one forwarded client is held to its rate"
    );
    // …while without the setting the header is ignored: one address, one rate.
    let direct = spawn_server(&root, &args).await.unwrap();
    assert!(
        refused(&direct.url, |i| format!("203.0.113.{i}"), 12).await > 0,
        "a client cannot pose as others with X-Forwarded-For"
    );
}

#[tokio::test]
async fn the_example_config_starts_the_server_and_help_shows_defaults() {
    let dir = TempDir::new("example-config");
    let root = make_site(&dir, &[("a.bin", &test_bytes(10, 1))]);
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/server.toml");
    let mut cmd = tokio::process::Command::new(bin("peercache-server"));
    cmd.arg("--config")
        .arg(&example)
        .arg("--root")
        .arg(&root)
        .args(["--listen", "127.0.0.1:0", "--ping-interval", "0s"]);
    let server = spawn_server_cmd(cmd).await.unwrap();
    let r = reqwest::get(format!("{}/healthz", server.url))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let help = tokio::process::Command::new(bin("peercache-server"))
        .arg("--help")
        .output()
        .await
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for default in [
        "[default: 127.0.0.1:8080]",
        "[default: 2s]",
        "[default: 60s]",
        "[default: 5s]",
        "[default: memory]",
        "[default: text]",
        "[default: /static/]",
    ] {
        assert!(help.contains(default), "--help lacks {default}:\n{help}");
    }
}
