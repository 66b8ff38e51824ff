//! Building an endpoint and reading back how others can dial it.
//!
//! No public discovery service is used (`presets::Minimal`): peers are dialed by
//! key with the relay URL and direct addresses the coordination server handed out,
//! and the only relays are those the server names (its own by default).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use iroh::endpoint::{QuicTransportConfig, presets};
use iroh::tls::CaTlsConfig;
use iroh::{Endpoint, RelayMap, RelayMode, RelayUrl, SecretKey};
use peercache_core::peer::{ALPN, DialInfo};
use peercache_core::protocol::RelayInfo;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// Most streams a connection may have open at once (each is one request).
pub const MAX_STREAMS_PER_CONNECTION: u32 = 32;
/// A connection with no traffic for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Why an endpoint could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The extra root certificate could not be read.
    #[error("reading the CA certificate {path}: {why}")]
    CaCert {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        why: String,
    },
    /// The socket could not be bound.
    #[error("binding the peer endpoint on {addr}: {why}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// What went wrong.
        why: String,
    },
    /// A relay URL does not parse.
    #[error("bad relay URL {0:?}")]
    RelayUrl(String),
}

/// How to set an endpoint up.
#[derive(Debug, Clone)]
pub struct EndpointOptions {
    /// The secret key; its public half is the peer id.
    pub secret: [u8; 32],
    /// The UDP address to bind (IPv4).
    pub bind: SocketAddr,
    /// An extra trusted root for relays (besides the built-in web roots).
    pub ca_cert: Option<PathBuf>,
    /// Accept peer connections (the ALPN is announced); a server that only
    /// dials leaves it off.
    pub accept: bool,
}

fn read_roots(path: &PathBuf) -> Result<Vec<CertificateDer<'static>>, NetError> {
    let bad = |why: String| NetError::CaCert {
        path: path.clone(),
        why,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no certificate in the file".into()));
    }
    Ok(certs)
}

/// Binds an endpoint. It has no relay until [`add_relays`] gives it the server's.
pub async fn bind(options: &EndpointOptions) -> Result<Endpoint, NetError> {
    let tls = match &options.ca_cert {
        Some(path) => CaTlsConfig::embedded().with_extra_roots(read_roots(path)?),
        None => CaTlsConfig::embedded(),
    };
    let transport = QuicTransportConfig::builder()
        .max_concurrent_bidi_streams(MAX_STREAMS_PER_CONNECTION.into())
        .max_concurrent_uni_streams(0u32.into())
        .max_idle_timeout(IDLE_TIMEOUT.try_into().ok())
        .build();
    let bad_bind = |why: String| NetError::Bind {
        addr: options.bind,
        why,
    };
    let alpns = if options.accept {
        vec![ALPN.to_vec()]
    } else {
        Vec::new()
    };
    Endpoint::builder(presets::Minimal)
        .secret_key(SecretKey::from_bytes(&options.secret))
        .alpns(alpns)
        // The relay transport is on with no relay yet: the server names them.
        .relay_mode(RelayMode::Custom(RelayMap::empty()))
        .ca_tls_config(tls)
        .transport_config(transport)
        .clear_ip_transports()
        .bind_addr(options.bind)
        .map_err(|e| bad_bind(e.to_string()))?
        .bind()
        .await
        .map_err(|e| bad_bind(e.to_string()))
}

/// Adds the relays a server named (ignoring ones already known) and waits up to
/// `wait` for the endpoint to reach one, so its dial info includes the relay and
/// the public address the relay's address discovery saw. Returns true when online.
pub async fn add_relays(endpoint: &Endpoint, relays: &[RelayInfo], wait: Duration) -> bool {
    let mut added = false;
    for r in relays.iter().take(4) {
        let Ok(url) = r.url.parse::<RelayUrl>() else {
            tracing::warn!(url = %r.url, "ignoring a relay URL that does not parse");
            continue;
        };
        let qad = r.qad_port.map(iroh_relay::RelayQuicConfig::new);
        let config = Arc::new(iroh::RelayConfig::new(url.clone(), qad));
        if endpoint.insert_relay(url, config).await.is_none() {
            added = true;
        }
    }
    if relays.is_empty() {
        return false;
    }
    let online = tokio::time::timeout(wait, endpoint.online()).await.is_ok();
    if added {
        tracing::info!(online, "relays added");
    }
    online
}

/// How others can dial `endpoint`: its home relay and its direct addresses.
pub fn dial_info(endpoint: &Endpoint) -> DialInfo {
    let addr = endpoint.addr();
    DialInfo {
        relay: addr.relay_urls().next().map(ToString::to_string),
        direct: addr
            .ip_addrs()
            .filter(|a| a.is_ipv4())
            .take(peercache_core::peer::MAX_DIRECT_ADDRS)
            .copied()
            .collect(),
    }
}

/// The UDP port the endpoint is bound to.
pub fn bound_port(endpoint: &Endpoint) -> Option<u16> {
    endpoint
        .bound_sockets()
        .into_iter()
        .find(SocketAddr::is_ipv4)
        .map(|a| a.port())
}

/// The peer id (public key, 64 hex digits) of an endpoint.
pub fn peer_id(endpoint: &Endpoint) -> String {
    endpoint.id().to_string()
}
