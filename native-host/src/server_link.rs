//! The host's side of the coordination server's API (`/v1/`): registration,
//! announces, reports and the pinned record key, every request signed with
//! this host's key (B6).
//!
//! The download pipeline ([`crate::fetch`]) uses it at its two ends (registering
//! before asking, announcing and reporting after keeping); the heartbeat and the
//! cache's evictions use it too. It holds no download state.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use peercache_core::hash::ObjectHash;
use peercache_core::headers;
use peercache_core::peer::DialInfo;
use peercache_core::protocol::{
    Announce, AnnounceResponse, Outcome, ReachRequest, ReachResponse, RegisterRequest,
    RegisterResponse, Report,
};
use tokio::sync::Mutex;

use crate::identity::Identity;
use crate::knowledge::Knowledge;
use crate::workload::Workload;

/// Largest `/v1/key` answer read (a key and its rotation statements).
const MAX_KEY_ANSWER: usize = 64 * 1024;
/// Largest `/v1/sources` answer read.
pub const MAX_SOURCES_ANSWER: usize = 64 * 1024;
/// Most sources taken from one `/v1/sources` answer.
pub const MAX_SOURCES: usize = 32;

/// How long the server may stay silent before the client turns to other peers.
pub const DEFAULT_SERVER_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a registration waits for the endpoint to reach the server's relay.
pub const RELAY_WAIT: Duration = Duration::from_secs(3);
/// Objects per announce request: a full batch of `have` or `dropped` stays
/// well under the server's body cap ([`peercache_core::protocol::MAX_API_BODY`],
/// 64 KiB; a hash is 67 bytes of JSON), so a host with any number of objects
/// can announce them.
pub const ANNOUNCE_BATCH: usize = 400;

/// Why a request to the server failed.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The server could not be reached or broke off.
    #[error("server unreachable: {}", cause_chain(.0))]
    Unreachable(#[from] reqwest::Error),
    /// The server refused the request.
    #[error("server answered {0}")]
    Refused(u16),
    /// The request could not be encoded, or the answer decoded.
    #[error("encoding the request or decoding the answer: {0}")]
    Encode(#[from] serde_json::Error),
    /// The answer was over its size limit.
    #[error("the server's answer is too large")]
    TooLarge,
}

impl LinkError {
    /// Worth trying again later: unreachable, or a 5xx/429 (its look-up table
    /// may be down for a moment). A refusal is not.
    pub fn is_transient(&self) -> bool {
        match self {
            LinkError::Unreachable(_) => true,
            LinkError::Refused(s) => *s >= 500 || *s == 429,
            LinkError::Encode(_) | LinkError::TooLarge => false,
        }
    }

    /// Why, in words, with the underlying cause ("connection refused", TLS…).
    pub fn cause(&self) -> String {
        match self {
            LinkError::Unreachable(e) => cause_chain(e),
            other => other.to_string(),
        }
    }

    /// The server did not answer in time or refused the connection.
    pub fn is_silence(&self) -> bool {
        matches!(self, LinkError::Unreachable(e) if e.is_timeout() || e.is_connect())
    }
}

/// An error with its causes, innermost last, each said once: reqwest's "error
/// sending request for url (…)" alone hides "connection refused" or the TLS
/// failure behind it.
pub fn cause_chain(e: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
        if parts.len() >= 8 {
            break;
        }
    }
    parts.join(": ")
}

/// What a client tells the server about one source of a referred download.
#[derive(Debug, Clone)]
pub struct SourceReport {
    /// The object.
    pub hash: ObjectHash,
    /// The source's peer id.
    pub source: String,
    /// How it went.
    pub outcome: Outcome,
    /// Verified bytes it sent.
    pub bytes: u64,
    /// Time taken.
    pub took: Duration,
    /// Whether the connection to it went direct, if known.
    pub direct: Option<bool>,
}

impl SourceReport {
    /// A report of `outcome` with no bytes.
    pub fn nothing(hash: ObjectHash, source: &str, outcome: Outcome, took: Duration) -> Self {
        Self {
            hash,
            source: source.to_string(),
            outcome,
            bytes: 0,
            took,
            direct: None,
        }
    }
}

/// See the module docs.
#[derive(Debug)]
pub struct ServerLink {
    http: reqwest::Client,
    identity: Identity,
    endpoint: iroh::Endpoint,
    serving: bool,
    slots: Option<Arc<Workload>>,
    knowledge: Arc<Knowledge>,
    timeout: Duration,
    /// Servers registered with, and the dial info they were given.
    registered: Mutex<HashMap<String, Option<DialInfo>>>,
}

impl ServerLink {
    /// A link signing with `identity`; `serving` hosts send their dial info.
    pub fn new(
        http: reqwest::Client,
        identity: Identity,
        endpoint: iroh::Endpoint,
        serving: bool,
        slots: Option<Arc<Workload>>,
        knowledge: Arc<Knowledge>,
        timeout: Duration,
    ) -> Self {
        Self {
            http,
            identity,
            endpoint,
            serving,
            slots,
            knowledge,
            timeout,
            registered: Mutex::new(HashMap::new()),
        }
    }

    /// This host's peer id (its public key).
    pub fn peer_id(&self) -> &str {
        self.identity.peer_id()
    }

    /// The HTTP client (system roots plus `--ca-cert`, no redirects).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// How long the server may take to answer.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Whether this host registered with `origin` in this run.
    pub async fn is_registered(&self, origin: &str) -> bool {
        self.registered.lock().await.contains_key(origin)
    }

    /// POSTs `body` as JSON to `origin` + `path`, signed with this host's key.
    /// The `Peercache-Auth` header for a `POST` of `body` to `path`.
    pub fn sign_post(&self, path: &str, body: &[u8]) -> String {
        self.identity.sign("POST", path, body)
    }

    async fn signed_post<T: serde::Serialize>(
        &self,
        origin: &str,
        path: &str,
        body: &T,
    ) -> Result<reqwest::Response, LinkError> {
        let bytes = serde_json::to_vec(body)?;
        let auth = self.identity.sign("POST", path, &bytes);
        Ok(self
            .http
            .post(format!("{origin}{path}"))
            .header(headers::AUTH, auth)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(bytes)
            .timeout(self.timeout)
            .send()
            .await?)
    }

    fn registration(&self) -> RegisterRequest {
        RegisterRequest {
            peer_id: self.peer_id().to_string(),
            dial: self
                .serving
                .then(|| peercache_net::endpoint::dial_info(&self.endpoint)),
            port: self
                .serving
                .then(|| peercache_net::endpoint::bound_port(&self.endpoint))
                .flatten(),
            load: self.slots.as_ref().map(|s| s.load()),
        }
    }

    /// Registers with the server at `origin`, proven by this host's key. When the
    /// server names relays, the endpoint connects to them (so peers behind other
    /// routers can reach it, and it learns its public address) and, if that
    /// changed how it can be dialed, registers again with the new dial info.
    pub async fn register(&self, origin: &str) -> Result<(), LinkError> {
        let req = self.registration();
        let resp = self.signed_post(origin, "/v1/peers", &req).await?;
        if !resp.status().is_success() {
            return Err(LinkError::Refused(resp.status().as_u16()));
        }
        let answer: RegisterResponse = resp.json().await?;
        self.knowledge.learn_relays(origin, &answer.relays);
        let mut sent = req.dial;
        if !answer.relays.is_empty() {
            peercache_net::endpoint::add_relays(&self.endpoint, &answer.relays, RELAY_WAIT).await;
            let again = self.registration();
            if self.serving && again.dial != sent {
                tracing::info!(dial = ?again.dial, "dial info changed; registering again");
                let resp = self.signed_post(origin, "/v1/peers", &again).await?;
                if !resp.status().is_success() {
                    return Err(LinkError::Refused(resp.status().as_u16()));
                }
                sent = again.dial;
            }
        }
        self.registered
            .lock()
            .await
            .insert(origin.to_string(), sent);
        self.pin_server_key(origin).await;
        Ok(())
    }

    /// The servers this host registered with in this run.
    pub async fn registered_origins(&self) -> Vec<String> {
        self.registered.lock().await.keys().cloned().collect()
    }

    /// Asks the server at `origin`, mid-download of `hash`, for the sources
    /// that appeared since the referral (`POST /v1/sources`, issue 12): its
    /// holders and the other peers receiving it now. The answer is read up to
    /// [`MAX_SOURCES_ANSWER`] bytes and at most [`MAX_SOURCES`] entries.
    pub async fn sources(
        &self,
        origin: &str,
        hash: &peercache_core::hash::ObjectHash,
    ) -> Result<Vec<peercache_core::protocol::Proxy>, LinkError> {
        let req = peercache_core::protocol::SourcesRequest {
            peer_id: self.peer_id().to_string(),
            hash: *hash,
        };
        let mut resp = self.signed_post(origin, "/v1/sources", &req).await?;
        if !resp.status().is_success() {
            return Err(LinkError::Refused(resp.status().as_u16()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await? {
            if body.len() + chunk.len() > MAX_SOURCES_ANSWER {
                return Err(LinkError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        let mut list: Vec<peercache_core::protocol::Proxy> = serde_json::from_slice(&body)?;
        list.truncate(MAX_SOURCES);
        Ok(list)
    }

    /// Asks the server at `origin` how it sees this host (`POST /v1/reach`): the
    /// address it lists and whether its ping got through, directly. The answer
    /// (or why there is none) is kept in the data directory for `doctor`.
    pub async fn reach(&self, origin: &str) -> Result<ReachResponse, LinkError> {
        let req = ReachRequest {
            peer_id: self.peer_id().to_string(),
        };
        let answer = async {
            let resp = self.signed_post(origin, "/v1/reach", &req).await?;
            if !resp.status().is_success() {
                return Err(LinkError::Refused(resp.status().as_u16()));
            }
            Ok(resp.json::<ReachResponse>().await?)
        }
        .await;
        self.knowledge.note_reach(
            origin,
            answer.as_ref().map(Clone::clone).map_err(LinkError::cause),
        );
        answer
    }

    /// Pins the server's record-signing key on first contact (B8), or the
    /// key it rotated to when its statements lead there from the pinned one
    /// (issue 14). Asked at every registration, so a rotation is noticed.
    pub async fn pin_server_key(&self, origin: &str) {
        let key = async {
            let r = self
                .http
                .get(format!("{origin}/v1/key"))
                .timeout(self.timeout)
                .send()
                .await
                .ok()?;
            if !r.status().is_success() {
                return None;
            }
            // A key and at most MAX_ROTATIONS statements: small; bounded.
            let mut r = r;
            let mut body = Vec::new();
            while let Some(chunk) = r.chunk().await.ok()? {
                if body.len() + chunk.len() > MAX_KEY_ANSWER {
                    return None;
                }
                body.extend_from_slice(&chunk);
            }
            serde_json::from_slice::<peercache_core::protocol::ServerKey>(&body).ok()
        }
        .await;
        if let Some(k) = key {
            self.knowledge
                .accept_key(origin, &k.public_key, &k.rotations);
        }
    }

    /// Tells the server at `origin` what this host holds; registers first if needed
    /// (also after a server restart forgot it). Returns the accepted hashes.
    pub async fn announce(
        &self,
        origin: &str,
        have: &[ObjectHash],
        dropped: &[ObjectHash],
    ) -> Result<Vec<ObjectHash>, LinkError> {
        if !self.is_registered(origin).await {
            self.register(origin).await?;
        }
        let body = Announce {
            peer_id: self.peer_id().to_string(),
            have: have.to_vec(),
            dropped: dropped.to_vec(),
            load: self.slots.as_ref().map(|s| s.load()),
        };
        for attempt in 0..2 {
            let resp = self.signed_post(origin, "/v1/announce", &body).await?;
            match resp.status().as_u16() {
                200 => {
                    let ans: AnnounceResponse = resp.json().await?;
                    return Ok(ans.accepted);
                }
                404 if attempt == 0 => self.register(origin).await?,
                s => return Err(LinkError::Refused(s)),
            }
        }
        Err(LinkError::Refused(404))
    }

    /// Announces everything in `have` to `origin` in batches of
    /// [`ANNOUNCE_BATCH`]; returns how many the server accepted.
    pub async fn announce_all(
        &self,
        origin: &str,
        have: &[ObjectHash],
    ) -> Result<usize, LinkError> {
        let mut accepted = 0;
        let batches = have
            .chunks(ANNOUNCE_BATCH)
            .chain(have.is_empty().then_some(&[][..]));
        for batch in batches {
            accepted += self.announce(origin, batch, &[]).await?.len();
        }
        Ok(accepted)
    }

    /// Tells every server this host knows that it no longer holds `dropped`.
    pub async fn announce_dropped(&self, dropped: &[ObjectHash]) {
        if dropped.is_empty() {
            return;
        }
        let origins: Vec<String> = self.registered.lock().await.keys().cloned().collect();
        for origin in origins {
            for batch in dropped.chunks(ANNOUNCE_BATCH) {
                if let Err(e) = self.announce(&origin, &[], batch).await {
                    tracing::warn!(%origin, error = %e, "announcing evictions failed");
                    break;
                }
            }
        }
    }

    /// Re-announces to every server this host knows what of `have` (everything
    /// cached) it fetched from that server, in batches, re-registering first
    /// where its dial info changed.
    pub async fn heartbeat(&self, have: &[ObjectHash]) {
        let registered: Vec<(String, Option<DialInfo>)> = self
            .registered
            .lock()
            .await
            .iter()
            .map(|(o, d)| (o.clone(), d.clone()))
            .collect();
        let now = self.registration().dial;
        for (origin, dial) in registered {
            // A new public address (the router's mapping changed, a new network):
            // tell the server how to dial this host now.
            if self.serving
                && dial != now
                && let Err(e) = self.register(&origin).await
            {
                tracing::warn!(%origin, error = %e, "re-registering failed");
            }
            // Only what was fetched from this site: a server never learns what
            // this visitor fetched elsewhere.
            let mine = self.knowledge.fetched_from(&origin, have);
            if let Err(e) = self.announce_all(&origin, &mine).await {
                tracing::warn!(%origin, error = %e, "heartbeat failed");
            }
        }
    }

    /// Reports how one source of a referred download went (failures are logged:
    /// a lost report costs the server a figure, never the download).
    pub async fn report(&self, origin: &str, report: SourceReport) {
        if origin.is_empty() {
            return;
        }
        let report = Report {
            peer_id: self.peer_id().to_string(),
            hash: report.hash,
            source: report.source,
            outcome: report.outcome,
            bytes: report.bytes,
            duration_ms: u64::try_from(report.took.as_millis()).unwrap_or(u64::MAX),
            direct: report.direct,
        };
        match self.signed_post(origin, "/v1/report", &report).await {
            Ok(r) if r.status().is_success() => {}
            Ok(r) => tracing::warn!(status = %r.status(), "report refused"),
            Err(e) => tracing::warn!(error = %e, "report failed"),
        }
    }
}

/// An HTTP client that trusts the system roots plus `ca_cert`, and never follows
/// redirects (a redirect could lead anywhere; the protocol has no use for them).
pub fn http_client(ca_cert: Option<&std::path::Path>) -> Result<reqwest::Client, HttpSetupError> {
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(5))
        .no_proxy()
        .user_agent(concat!("peercache-host/", env!("CARGO_PKG_VERSION")));
    if let Some(path) = ca_cert {
        let pem = std::fs::read(path)
            .map_err(|e| HttpSetupError::CaCert(path.display().to_string(), e.to_string()))?;
        let cert = reqwest::Certificate::from_pem(&pem)
            .map_err(|e| HttpSetupError::CaCert(path.display().to_string(), e.to_string()))?;
        builder = builder.tls_certs_merge([cert]);
    }
    Ok(builder.build()?)
}

/// Why the HTTP client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum HttpSetupError {
    /// The `--ca-cert` file could not be read or parsed.
    #[error("--ca-cert {0}: {1}")]
    CaCert(String, String),
    /// The TLS backend refused.
    #[error("HTTP client: {0}")]
    Build(#[from] reqwest::Error),
}

#[cfg(test)]
mod tests {
    use super::*;
    use peercache_core::protocol::{Announce, Load, MAX_API_BODY};

    #[test]
    fn a_full_announce_batch_fits_the_servers_body_cap() {
        let hashes: Vec<ObjectHash> = (0..ANNOUNCE_BATCH as u64)
            .map(|i| ObjectHash::of(&i.to_le_bytes()))
            .collect();
        let worst = Announce {
            peer_id: "f".repeat(64),
            have: hashes.clone(),
            dropped: Vec::new(),
            load: Some(Load::default()),
        };
        let len = serde_json::to_vec(&worst).unwrap().len();
        assert!(len < MAX_API_BODY * 3 / 4, "{len} bytes for a batch");
        let dropped = Announce {
            have: Vec::new(),
            dropped: hashes,
            ..worst
        };
        assert!(serde_json::to_vec(&dropped).unwrap().len() < MAX_API_BODY * 3 / 4);
    }
}
