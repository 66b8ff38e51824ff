//! Ask the server (DESIGN section 2, step 1): `GET url` with `Peercache-Client`
//! (this host's id and measured link speed), registering first so the server
//! records that this peer fetched the object through it (B6).
//!
//! The answer is the bytes (`200`), a referral (`300`), or silence (no answer
//! within the timeout, a 502..504, a connection refused): then holders are
//! looked for without the server. A `503` with `Retry-After` defers the client
//! (the object is on its way to another client); after `max_deferral` in total
//! it asks for the bytes themselves, which the server always sends.

use std::time::Duration;

use bytes::BytesMut;
use futures_util::StreamExt;
use metrics::counter;
use peercache_core::explain::DownloadEvent;
use peercache_core::headers::{self, ClientHeader};
use peercache_core::protocol::Referral;
use peercache_core::record::SignedRecord;

use super::error::FetchError;
use super::events::Events;
use crate::server_link::ServerLink;

/// Largest referral body accepted.
const MAX_REFERRAL_BYTES: u64 = 256 * 1024;
/// Longest single wait a deferral may ask for.
const MAX_ONE_WAIT: Duration = Duration::from_secs(30);

/// What the server said.
#[derive(Debug)]
pub enum Asked {
    /// It sends the bytes.
    Bytes(reqwest::Response),
    /// It refers to holders.
    Referred(Box<Referral>),
    /// It is silent or down (why, in words: "connection refused", a TLS error…).
    Silent(String),
    /// The version named by `If-None-Match` is current (`304`), with the
    /// site's headers.
    NotModified(reqwest::header::HeaderMap),
}

/// The answer and the signed record the server attached, if any.
#[derive(Debug)]
pub struct Answer {
    /// What the server said.
    pub asked: Asked,
    /// Its record of the object (not verified yet).
    pub record: Option<SignedRecord>,
}

/// How to ask.
#[derive(Debug, Clone, Copy)]
pub struct AskOptions<'a> {
    /// Longest total wait while deferred.
    pub max_deferral: Duration,
    /// This host's measured link speed, sent to the server.
    pub link_speed: Option<u64>,
    /// The `ETag` of a version held: asked conditionally (issue 14).
    pub if_none_match: Option<&'a str>,
}

/// Asks the server for `url` (see the module docs).
pub async fn ask(
    link: &ServerLink,
    url: &reqwest::Url,
    origin: &str,
    options: AskOptions<'_>,
    events: &Events,
) -> Result<Answer, FetchError> {
    let silent = |why: String| Answer {
        asked: Asked::Silent(why),
        record: None,
    };
    // Failure to register only costs sharing, never the download.
    if !link.is_registered(origin).await {
        match link.register(origin).await {
            Ok(()) => {}
            Err(e) if e.is_silence() => return Ok(silent(e.cause())),
            Err(e) => tracing::debug!(error = %e, "registration failed; fetching anyway"),
        }
    }
    let client_header = ClientHeader {
        peer_id: Some(link.peer_id().to_string()),
        bandwidth: options.link_speed,
    };
    let mut waited = Duration::ZERO;
    let mut as_client = true;
    let resp = loop {
        let mut req = link.http().get(url.clone());
        if as_client {
            req = req.header(headers::CLIENT, client_header.to_header_value());
        }
        if let Some(tag) = options.if_none_match {
            req = req.header(reqwest::header::IF_NONE_MATCH, tag);
        }
        let sent = tokio::time::timeout(link.timeout(), req.send()).await;
        let r = match sent {
            Ok(Ok(r)) => r,
            Ok(Err(e)) if !(e.is_connect() || e.is_timeout()) => return Err(e.into()),
            Ok(Err(e)) => return Ok(silent(crate::server_link::cause_chain(&e))),
            Err(_) => {
                return Ok(silent(format!(
                    "no answer within {} s",
                    link.timeout().as_secs_f32()
                )));
            }
        };
        let status = r.status().as_u16();
        if status == 503 && as_client {
            let retry_after = r
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            match retry_after {
                // A 503 without Retry-After: the server is in trouble.
                None => return Ok(silent("it answered 503".into())),
                Some(secs) if waited < options.max_deferral => {
                    // On its way to another client: wait as told, then ask again
                    // to be referred to that client.
                    let wait = Duration::from_secs(secs)
                        .clamp(Duration::from_secs(1), MAX_ONE_WAIT)
                        .min(options.max_deferral - waited);
                    events.emit(DownloadEvent::Deferred {
                        retry_after_s: wait.as_secs(),
                    });
                    tokio::time::sleep(wait).await;
                    waited += wait;
                }
                Some(_) => {
                    // Deferred as long as deferral can pay: ask for the bytes
                    // themselves, which the server always sends (never fail here).
                    counter!("peercache_deferrals_given_up_total").increment(1);
                    events.emit(DownloadEvent::DeferralEnded);
                    as_client = false;
                }
            }
            continue;
        }
        if matches!(status, 502..=504) {
            return Ok(silent(format!("it answered {status}")));
        }
        break r;
    };
    let record = resp
        .headers()
        .get(headers::RECORD)
        .and_then(|v| v.to_str().ok())
        .and_then(headers::decode_record);
    let asked = match resp.status().as_u16() {
        200 => Asked::Bytes(resp),
        304 if options.if_none_match.is_some() => Asked::NotModified(resp.headers().clone()),
        300 => {
            let body = read_limited(resp, MAX_REFERRAL_BYTES).await?;
            let referral: Referral = serde_json::from_slice(&body)
                .map_err(|e| FetchError::BadReferral(e.to_string()))?;
            Asked::Referred(Box::new(referral))
        }
        s => return Err(FetchError::SiteStatus(s)),
    };
    Ok(Answer { asked, record })
}

async fn read_limited(resp: reqwest::Response, max: u64) -> Result<bytes::Bytes, FetchError> {
    if let Some(len) = resp.content_length()
        && len > max
    {
        return Err(FetchError::BadReferral(format!("{len} bytes is too long")));
    }
    let mut buf = BytesMut::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        if buf.len() as u64 + chunk.len() as u64 > max {
            return Err(FetchError::BadReferral("too long".into()));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}
