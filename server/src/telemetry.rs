//! The server's Prometheus metrics in one place: every name with its `# HELP`
//! text and unit, the histogram buckets, `peercache_build_info`, and the
//! recorder the binary installs. Names follow the Prometheus conventions: the
//! unit last before `_total` (`peercache_served_bytes_total`), durations in
//! seconds as histograms (`…_duration_seconds`).

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram, gauge};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

/// Buckets of the `…_duration_seconds` histograms: 0.5 ms to 10 s.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Counters: name, help.
pub const COUNTERS: [(&str, &str); 32] = [
    (
        "peercache_requests_served_total",
        "Site requests this server answered with the object.",
    ),
    (
        "peercache_requests_referred_total",
        "Site requests answered with a referral (300) to peers.",
    ),
    (
        "peercache_requests_deferred_total",
        "Site requests told to retry later (503 with Retry-After).",
    ),
    (
        "peercache_requests_headers_only_total",
        "HEAD requests and other answers without a body.",
    ),
    (
        "peercache_requests_passed_through_total",
        "Requests outside the peer scope, answered as a plain web server.",
    ),
    (
        "peercache_range_requests_total",
        "Site requests for a byte range.",
    ),
    (
        "peercache_served_bytes_total",
        "Object bytes this server sent to clients.",
    ),
    (
        "peercache_reported_from_peers_bytes_total",
        "Object bytes clients reported receiving from peers.",
    ),
    (
        "peercache_reported_relayed_bytes_total",
        "Object bytes clients reported receiving from peers through a relay.",
    ),
    (
        "peercache_mismatch_reports_total",
        "Verified reports of a peer serving wrong bytes.",
    ),
    (
        "peercache_store_errors_total",
        "Look-up table failures (each answered by serving directly).",
    ),
    (
        "peercache_announces_total",
        "Announces accepted from peers.",
    ),
    ("peercache_reports_total", "Client reports received."),
    (
        "peercache_reports_unreferred_total",
        "Client reports about peers the client was not referred to (ignored).",
    ),
    (
        "peercache_pings_total",
        "Pings of serving peers by this replica.",
    ),
    (
        "peercache_ping_failures_total",
        "Pings of serving peers that failed or timed out.",
    ),
    (
        "peercache_auth_failures_total",
        "Signed API requests whose signature or freshness failed.",
    ),
    (
        "peercache_registrations_refused_total",
        "Peer registrations refused (too many from one address, table full, delisted).",
    ),
    (
        "peercache_source_rate_limited_total",
        "API requests refused with 429 for their client address's rate.",
    ),
    (
        "peercache_connections_refused_total",
        "Connections closed at once (listener full, or too many from one address).",
    ),
    (
        "peercache_write_timeouts_total",
        "Responses cut because the reader stopped reading.",
    ),
    (
        "peercache_upstream_evictions_total",
        "Objects evicted from the upstream cache to stay under its size.",
    ),
    (
        "peercache_relay_bytes_total",
        "Bytes through the site's own relay, by direction.",
    ),
    (
        "peercache_site_requests_total",
        "Requests for the site's files (root or upstream), whatever the answer.",
    ),
    (
        "peercache_seeded_pieces_total",
        "Pieces the server sent as a seed to clients fetching from peers (POST /v1/objects/{hash}/piece).",
    ),
    (
        "peercache_source_refreshes_total",
        "Lists of new sources sent to peers mid-download (POST /v1/sources).",
    ),
    (
        "peercache_requests_not_modified_total",
        "Conditional requests answered 304 Not Modified.",
    ),
    (
        "peercache_upstream_hits_total",
        "Upstream-mode requests answered from a fresh stored response.",
    ),
    (
        "peercache_upstream_misses_total",
        "Upstream-mode requests that went to the origin for a new response.",
    ),
    (
        "peercache_upstream_revalidations_total",
        "Stored responses revalidated with the origin (a 304 merged or a new body).",
    ),
    (
        "peercache_upstream_stale_served_total",
        "Stale responses served while they are refreshed (stale-while-revalidate).",
    ),
    (
        "peercache_upstream_invalidations_total",
        "Stored responses dropped after an unsafe method on their URL.",
    ),
];

/// Describes every metric (the `# HELP` lines) and sets `peercache_build_info`.
/// Call once after the recorder is installed.
pub fn describe() {
    for (name, help) in COUNTERS {
        if name.ends_with("_bytes_total") {
            describe_counter!(name, Unit::Bytes, help);
        } else {
            describe_counter!(name, help);
        }
    }
    describe_gauge!(
        "peercache_peers",
        "Peers in the look-up table, by state (live, serving, delisted)."
    );
    describe_gauge!(
        "peercache_objects_listed",
        "Objects with at least one listed holder."
    );
    describe_gauge!(
        "peercache_egress_estimate_bytes_per_second",
        "The uplink this server measured from its own busy transfers (used without --egress-limit)."
    );
    describe_gauge!(
        "peercache_build_info",
        "Always 1; the labels name the running build."
    );
    describe_histogram!(
        "peercache_request_duration_seconds",
        Unit::Seconds,
        "Time to answer an HTTP request (to the response head), by route."
    );
    describe_histogram!(
        "peercache_ping_duration_seconds",
        Unit::Seconds,
        "Round-trip time of answered pings of serving peers."
    );
    describe_histogram!(
        "peercache_store_duration_seconds",
        Unit::Seconds,
        "Time of look-up table calls, by operation."
    );
    gauge!(
        "peercache_build_info",
        "version" => env!("CARGO_PKG_VERSION"),
    )
    .set(1.0);
}

/// Installs the process-wide Prometheus recorder with the histogram buckets,
/// and describes every metric.
pub fn install_recorder() -> Result<PrometheusHandle, BuildError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".to_string()), &BUCKETS)?
        .install_recorder()?;
    describe();
    Ok(handle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_conventions() {
        for (name, help) in COUNTERS {
            assert!(
                name.starts_with("peercache_") && name.ends_with("_total"),
                "{name}"
            );
            assert!(
                !name.contains("_bytes_") || name.ends_with("_bytes_total"),
                "{name}"
            );
            assert!(!help.is_empty());
        }
    }

    /// The Grafana dashboard reads only metrics the server exports.
    #[test]
    fn the_dashboard_uses_known_metrics() {
        let dashboard = include_str!("../../deploy/grafana/peercache-server.json");
        let _: serde_json::Value = serde_json::from_str(dashboard).expect("valid JSON");
        let known: Vec<&str> = COUNTERS
            .iter()
            .map(|(n, _)| *n)
            .chain([
                "peercache_peers",
                "peercache_objects_listed",
                "peercache_build_info",
                "peercache_request_duration_seconds",
                "peercache_ping_duration_seconds",
                "peercache_store_duration_seconds",
            ])
            .collect();
        let mut used = 0;
        for (i, _) in dashboard.match_indices("peercache_") {
            let name: String = dashboard[i..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            if name == "peercache_" || name.starts_with("peercache_server") {
                continue;
            }
            let base = name.strip_suffix("_bucket").unwrap_or(&name);
            assert!(known.contains(&base), "the dashboard reads unknown {name}");
            used += 1;
        }
        assert!(used > 15);
    }
}
