//! The server sends the bytes itself (a `200`, or the last resort after peers
//! failed): they stream to the caller as they arrive, are hashed on the way
//! ([`WholeCheck`]) and written to a temp file. At the end a mismatch with the
//! hash the server named fails the download; a match hands the temp file to
//! the keep stage, if the response may be shared at all (B2).

use std::sync::Arc;

use futures_util::StreamExt;
use metrics::counter;
use peercache_core::explain::DownloadEvent;
use peercache_core::hash::ObjectHash;
use peercache_core::headers::{self, ObjectHeader};
use peercache_core::protocol::SERVER_PROXY_ID;
use peercache_core::shareable::{NotShareable, response_shareable};
use tokio::io::AsyncWriteExt;

use super::error::{BodySender, FetchError};
use super::events::Events;
use super::keep::ToKeep;
use super::verify::WholeCheck;
use crate::cache::Cache;

/// What the response's headers say.
#[derive(Debug)]
pub struct Heads {
    /// The media type.
    pub content_type: String,
    /// The announced size.
    pub size: Option<u64>,
    /// The hash to check against (given, or named in `Peercache-Object`).
    pub hash: Option<ObjectHash>,
    /// Why it may never be shared, if so.
    pub not_shareable: Option<NotShareable>,
}

/// Reads the headers of a server `200`; `expected` overrides the named hash.
pub fn heads(resp: &reqwest::Response, expected: Option<ObjectHash>) -> Heads {
    let pairs: Vec<(String, String)> = resp
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let named = resp
        .headers()
        .get(headers::OBJECT)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| ObjectHeader::parse(v).ok())
        .map(|o| o.hash);
    Heads {
        content_type: resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/octet-stream")
            .to_string(),
        size: resp.content_length(),
        hash: expected.or(named),
        not_shareable: response_shareable(&pairs).err(),
    }
}

/// A verified body, and what to keep of it.
#[derive(Debug)]
pub struct Pumped {
    /// Its hash (checked against the named one, if any).
    pub hash: ObjectHash,
    /// Its temp file, when it may be kept and is not held yet.
    pub to_keep: Option<ToKeep>,
    /// The cache held it already (it is only announced again).
    pub already_held: bool,
}

/// Streams the body to `tx` while hashing and writing it (see the module docs).
/// Errors are also sent down `tx`, so the reader sees where the body broke.
pub async fn pump(
    resp: reqwest::Response,
    heads: &Heads,
    cache: &Cache,
    events: &Events,
    tx: &BodySender,
) -> Result<Pumped, FetchError> {
    let named = heads.hash;
    let already = named.is_some_and(|h| cache.contains(&h));
    if let (true, Some(h)) = (already, named) {
        cache.touch(&h);
    }
    let keep = named.is_some() && heads.not_shareable.is_none() && !already;
    let tmp = cache.temp_path();
    let mut file = if keep {
        tokio::fs::File::create(&tmp).await.ok()
    } else {
        None
    };
    let fail = |e: FetchError| async {
        let _ = tokio::fs::remove_file(&tmp).await;
        e
    };
    let mut check = WholeCheck::default();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                let _ = tx.send(Err(FetchError::Unreachable(e))).await;
                return Err(fail(FetchError::Sources("the server broke off".into())).await);
            }
        };
        let offset = check.len();
        check.update(&chunk);
        events.emit(DownloadEvent::RangeDone {
            source: SERVER_PROXY_ID.into(),
            first: offset,
            end: check.len(),
        });
        if let Some(f) = file.as_mut()
            && f.write_all(&chunk).await.is_err()
        {
            // A full disk stops caching, not the download.
            counter!("peercache_cache_write_failures_total").increment(1);
            file = None;
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        if tx.send(Ok(chunk)).await.is_err() {
            return Err(fail(FetchError::Cancelled).await);
        }
    }
    let actual = check.finish();
    if named.is_some_and(|n| n != actual) {
        let _ = tx.send(Err(FetchError::ServerMismatch)).await;
        return Err(fail(FetchError::ServerMismatch).await);
    }
    events.emit(DownloadEvent::Verified { hash: actual });
    let to_keep = match file {
        Some(f) => Some(ToKeep {
            hash: actual,
            size: check.len(),
            file: Arc::new(f.into_std().await),
            path: tmp,
            outboard: None,
        }),
        None => None,
    };
    Ok(Pumped {
        hash: actual,
        to_keep,
        already_held: already,
    })
}
