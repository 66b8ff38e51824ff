//! The server sends the bytes itself (a `200`, or the last resort after peers
//! failed): they stream to the caller as they arrive, are hashed on the way
//! ([`WholeCheck`]) and written to a temp file. At the end a mismatch with the
//! hash the server named fails the download; a match hands the temp file to
//! the keep stage, if the response may be shared at all (B2).
//!
//! When the server also hands out the object's group CVs, each 16 KiB group
//! is checked as it arrives as well, and the body is written to the object's
//! partial file so peers are served the verified groups while it streams
//! (`crate::partial`, issue 12 point 2): a client the server sends to is a
//! source for the others from its first verified piece on.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::BytesMut;
use futures_util::StreamExt;
use metrics::counter;
use peercache_core::explain::DownloadEvent;
use peercache_core::hash::ObjectHash;
use peercache_core::headers::{self, ObjectHeader};
use peercache_core::pieces::PIECE_GROUPS;
use peercache_core::protocol::SERVER_PROXY_ID;
use peercache_core::shareable::{NotShareable, response_shareable};
use peercache_core::verified::{GROUP, group_count, group_len};
use tokio::io::AsyncWriteExt;

use super::error::{BodySender, FetchError};
use super::events::Events;
use super::keep::ToKeep;
use super::source::{SourceRef, Transport};
use super::verify::{Proof, WholeCheck};
use crate::cache::Cache;
use crate::partial::Partial;

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

/// Where the object's group CVs come from, for a body the server sends whole:
/// with them each group is checked as it arrives and the download is served
/// to peers while it goes on (`crate::partial`).
#[derive(Debug, Clone)]
pub struct CvsFrom {
    /// How to ask.
    pub transport: Transport,
    /// The server's base URL (it serves `/v1/objects/{hash}/outboard`).
    pub server: String,
}

/// The file a body is written to.
struct Sink {
    file: tokio::fs::File,
    path: PathBuf,
    /// The partial download and its proof, when it is one.
    partial: Option<(Arc<Partial>, Proof)>,
}

/// A partial file for `hash` if its CVs can be had from the server and no
/// other download owns it.
async fn partial_sink(cache: &Cache, hash: ObjectHash, size: u64, cvs: &CvsFrom) -> Option<Sink> {
    let proof = Proof::from_source(&cvs.transport, &SourceRef::server(&cvs.server), hash, size)
        .await
        .ok()?;
    let cache = cache.clone();
    let ob = proof.outboard();
    let claimed = tokio::task::spawn_blocking(move || {
        let (partial, file, path) = Partial::claim(&cache, hash, size).ok()??;
        if partial.set_outboard(&ob).is_err() {
            partial.abandon();
            return None;
        }
        Some((partial, file, path))
    })
    .await
    .ok()??;
    let (partial, file, path) = claimed;
    Some(Sink {
        file: tokio::fs::File::from_std(file),
        path,
        partial: Some((Arc::new(partial), proof)),
    })
}

/// Streams the body to `tx` while hashing and writing it (see the module docs).
/// With `cvs`, a body of more than one group is also checked group by group
/// and served to peers as it arrives. Errors are also sent down `tx`, so the
/// reader sees where the body broke.
pub async fn pump(
    resp: reqwest::Response,
    heads: &Heads,
    cache: &Cache,
    cvs: Option<&CvsFrom>,
    events: &Events,
    tx: &BodySender,
) -> Result<Pumped, FetchError> {
    let named = heads.hash;
    let already = named.is_some_and(|h| cache.contains(&h));
    if let (true, Some(h)) = (already, named) {
        cache.touch(&h);
    }
    let keep = named.is_some() && heads.not_shareable.is_none() && !already;
    let mut sink = None;
    if keep
        && let (Some(hash), Some(size), Some(cvs)) = (named, heads.size, cvs)
        && size > GROUP
    {
        sink = partial_sink(cache, hash, size, cvs).await;
    }
    if keep && sink.is_none() {
        let tmp = cache.temp_path();
        if let Ok(file) = tokio::fs::File::create(&tmp).await {
            sink = Some(Sink {
                file,
                path: tmp,
                partial: None,
            });
        }
    }
    let size = heads.size.unwrap_or(0);
    let groups = group_count(size);
    // The group being assembled, its index, and the first group not yet
    // named in the have-map.
    let (mut group, mut g, mut marked) = (BytesMut::new(), 0u64, 0u64);
    let mut check = WholeCheck::default();
    let mut write_failed = false;
    let mut stream = resp.bytes_stream();
    let failure = loop {
        let Some(chunk) = stream.next().await else {
            break None;
        };
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                let _ = tx.send(Err(FetchError::Unreachable(e))).await;
                break Some(FetchError::Sources("the server broke off".into()));
            }
        };
        let offset = check.len();
        check.update(&chunk);
        events.emit(DownloadEvent::RangeDone {
            source: SERVER_PROXY_ID.into(),
            first: offset,
            end: check.len(),
        });
        if let Some(s) = sink.as_mut()
            && s.file.write_all(&chunk).await.is_err()
        {
            // A full disk stops caching, not the download.
            counter!("peercache_cache_write_failures_total").increment(1);
            if let Some(s) = sink.take() {
                discard(s).await;
            }
        }
        if let Some(Sink {
            file,
            partial: Some((partial, proof)),
            ..
        }) = sink.as_mut()
        {
            group.extend_from_slice(&chunk);
            let mut bad = false;
            while g < groups && group.len() as u64 >= group_len(size, g) {
                let bytes = group.split_to(group_len(size, g) as usize);
                if !proof.check_group(g, &bytes) {
                    bad = true;
                    break;
                }
                g += 1;
            }
            if bad {
                let _ = tx.send(Err(FetchError::ServerMismatch)).await;
                break Some(FetchError::ServerMismatch);
            }
            if g - marked >= PIECE_GROUPS || (g == groups && marked < g) {
                // Written, then named in the have-map. A write that failed
                // in the background shows here (and only once).
                if file.flush().await.is_ok() {
                    let (p, from) = (partial.clone(), marked);
                    let marked_now = tokio::task::spawn_blocking(move || p.mark(from, g))
                        .await
                        .is_ok_and(|r| r.is_ok());
                    if marked_now {
                        marked = g;
                    }
                } else {
                    write_failed = true;
                }
            }
        }
        if write_failed {
            // A full disk stops caching, not the download.
            write_failed = false;
            counter!("peercache_cache_write_failures_total").increment(1);
            if let Some(s) = sink.take() {
                discard(s).await;
            }
        }
        if tx.send(Ok(chunk)).await.is_err() {
            break Some(FetchError::Cancelled);
        }
    };
    if let Some(e) = failure {
        if let Some(s) = sink {
            discard(s).await;
        }
        return Err(e);
    }
    let actual = check.finish();
    if named.is_some_and(|n| n != actual) {
        let _ = tx.send(Err(FetchError::ServerMismatch)).await;
        if let Some(s) = sink {
            discard(s).await;
        }
        return Err(FetchError::ServerMismatch);
    }
    events.emit(DownloadEvent::Verified { hash: actual });
    // A write that failed in the background (a full disk) shows at the
    // flush: such a file is not kept, whatever its length says.
    let mut sink = sink;
    if let Some(s) = sink.as_mut()
        && s.file.flush().await.is_err()
    {
        counter!("peercache_cache_write_failures_total").increment(1);
        if let Some(s) = sink.take() {
            discard(s).await;
        }
    }
    let to_keep = match sink {
        Some(s) => {
            let (partial, outboard) = match s.partial {
                Some((p, proof)) => (Some(p), Some(proof.outboard())),
                None => (None, None),
            };
            Some(ToKeep {
                hash: actual,
                size: check.len(),
                file: Arc::new(s.file.into_std().await),
                path: s.path,
                outboard,
                partial,
            })
        }
        None => None,
    };
    Ok(Pumped {
        hash: actual,
        to_keep,
        already_held: already,
    })
}

/// Removes a body's file (and partial download) that will not be kept.
async fn discard(sink: Sink) {
    drop(sink.file);
    let _ = tokio::fs::remove_file(&sink.path).await;
    if let Some((p, _)) = sink.partial {
        let _ = tokio::task::spawn_blocking(move || p.abandon()).await;
    }
}
