//! `peercache-relay`: the site's relay run on its own (for sites that outgrow one
//! machine, or to keep relaying while the coordination server restarts). It is
//! the same relay `peercache-server` runs in-process with TLS; point the server
//! at it with `--relay-url https://HOST:PORT/` (and `--no-relay`).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use peercache_server::relay::{RelayOptions, SiteRelay};

/// Relay for peercache peers behind home routers (HTTPS relay and QUIC address
/// discovery).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// HTTPS listener of the relay.
    #[arg(long, env = "PEERCACHE_RELAY_LISTEN", default_value = "0.0.0.0:8443")]
    listen: SocketAddr,
    /// UDP port of the QUIC address discovery, on the same IP.
    #[arg(long, env = "PEERCACHE_RELAY_QAD_PORT", default_value_t = 7842)]
    qad_port: u16,
    /// Host name or IP in the relay's URL (must be in the certificate)
    /// [default: the listen IP].
    #[arg(long, env = "PEERCACHE_RELAY_HOST")]
    public_host: Option<String>,
    /// TLS certificate chain (PEM).
    #[arg(long, env = "PEERCACHE_TLS_CERT")]
    tls_cert: PathBuf,
    /// TLS private key (PEM).
    #[arg(long, env = "PEERCACHE_TLS_KEY")]
    tls_key: PathBuf,
    /// Bytes per second accepted from each client, e.g. `4MiB`.
    #[arg(long, env = "PEERCACHE_RELAY_RATE", default_value = "4MiB")]
    rate: String,
    /// Operator-only `/metrics` listener (relayed bytes).
    #[arg(long, env = "PEERCACHE_METRICS_LISTEN", default_value = "127.0.0.1:0")]
    metrics_listen: SocketAddr,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let public_host = match args.public_host {
        Some(h) => h,
        None if args.listen.ip().is_unspecified() => {
            anyhow::bail!(
                "--public-host is required when listening on {}",
                args.listen
            )
        }
        None => args.listen.ip().to_string(),
    };
    let rate = peercache_core::units::parse_size(&args.rate)?;
    let options = RelayOptions {
        https: args.listen,
        qad: SocketAddr::new(args.listen.ip(), args.qad_port),
        public_host,
        client_rate: u32::try_from(rate).unwrap_or(u32::MAX),
    };
    let relay = std::sync::Arc::new(
        SiteRelay::spawn(&options, &args.tls_cert, &args.tls_key)
            .await
            .context("starting the relay")?,
    );
    let listener = tokio::net::TcpListener::bind(args.metrics_listen)
        .await
        .with_context(|| format!("binding {}", args.metrics_listen))?;
    println!("relay {}", relay.info().url);
    println!("metrics on {}", listener.local_addr()?);
    let router = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let relay = relay.clone();
            async move { relay.metrics_text() }
        }),
    );
    tokio::select! {
        r = axum::serve(listener, router) => r.context("metrics listener")?,
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}
