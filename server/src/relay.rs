//! The site's own relay (B10): peers behind routers that cannot reach each other
//! directly meet here, and the relay's QUIC address discovery (QAD) tells each
//! peer the public address its router gives it, which hole punching needs.
//!
//! It is iroh's relay server (`iroh_relay::server`, the same code as the stock
//! `iroh-relay` binary), run in this process when TLS is configured, on the site's
//! own address: HTTPS on `--relay-listen` (default port 8443) and QAD on UDP
//! (default 7842). Relayed bytes cross the site, so they are site egress: each
//! client's rate is capped (`--relay-rate`) and the bytes are counted apart
//! (`peercache_relay_bytes_total`), never as offload.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::Arc;

use iroh_relay::server::{
    CertConfig, ClientRateLimit, QuicConfig, RelayConfig, Server, ServerConfig, TlsConfig,
};
use peercache_core::protocol::RelayInfo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why the relay could not start.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The certificate or key could not be read.
    #[error("relay TLS: {0}")]
    Tls(String),
    /// The listeners could not be bound.
    #[error("starting the relay: {0}")]
    Spawn(String),
}

/// Where and how to run the relay.
#[derive(Debug, Clone)]
pub struct RelayOptions {
    /// The HTTPS listener.
    pub https: SocketAddr,
    /// The QAD (UDP) listener.
    pub qad: SocketAddr,
    /// The host name or IP clients use in the relay URL (must be in the
    /// certificate).
    pub public_host: String,
    /// Bytes per second read from each client.
    pub client_rate: u32,
}

/// A running relay.
#[derive(Debug)]
pub struct SiteRelay {
    server: Server,
    info: RelayInfo,
}

fn server_tls(cert: &Path, key: &Path) -> Result<rustls::ServerConfig, RelayError> {
    let tls_err = |e: String| RelayError::Tls(e);
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| tls_err(format!("{}: {e}", cert.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| tls_err(format!("{}: {e}", cert.display())))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| tls_err(format!("{}: {e}", key.display())))?;
    rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| tls_err(e.to_string()))
}

impl SiteRelay {
    /// Starts the relay with the site's certificate.
    pub async fn spawn(
        options: &RelayOptions,
        cert: &Path,
        key: &Path,
    ) -> Result<Self, RelayError> {
        let tls = server_tls(cert, key)?;
        // The plain-HTTP listener cannot be switched off once TLS is on (it answers
        // captive-portal checks); keep it on loopback.
        let mut relay = RelayConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)));
        relay.tls = Some(TlsConfig::new(
            options.https,
            CertConfig::Manual { server_config: tls },
        ));
        if let Some(rate) = NonZeroU32::new(options.client_rate) {
            let mut limit = ClientRateLimit::new(rate);
            limit.max_burst_bytes = NonZeroU32::new((options.client_rate / 4).max(64 * 1024));
            relay.limits.client_rx = Some(limit);
        }
        let mut config = ServerConfig::default();
        config.relay = Some(relay);
        config.quic = Some(QuicConfig::new(options.qad));
        let server = Server::spawn(config)
            .await
            .map_err(|e| RelayError::Spawn(e.to_string()))?;
        let https = server
            .https_addr()
            .ok_or_else(|| RelayError::Spawn("no HTTPS listener".into()))?;
        let qad = server.quic_addr().map(|a| a.port());
        let host = if options.public_host.contains(':') {
            format!("[{}]", options.public_host)
        } else {
            options.public_host.clone()
        };
        let info = RelayInfo {
            url: format!("https://{host}:{}/", https.port()),
            qad_port: qad,
        };
        tracing::info!(url = %info.url, qad_port = ?info.qad_port, "relay running");
        Ok(Self { server, info })
    }

    /// How hosts reach it.
    pub fn info(&self) -> &RelayInfo {
        &self.info
    }

    /// Payload bytes relayed so far (to clients, and from them).
    pub fn bytes(&self) -> (u64, u64) {
        let m = &self.server.metrics().server;
        (m.bytes_sent.get(), m.bytes_recv.get())
    }

    /// The relayed bytes as Prometheus text (for the stand-alone relay).
    pub fn metrics_text(&self) -> String {
        let (out, inn) = self.bytes();
        format!(
            "# HELP peercache_relay_bytes_total Payload bytes the relay carried (site egress, never offload).\n\
             # TYPE peercache_relay_bytes_total counter\n\
             peercache_relay_bytes_total{{direction=\"to_peers\"}} {out}\n\
             peercache_relay_bytes_total{{direction=\"from_peers\"}} {inn}\n"
        )
    }
}
