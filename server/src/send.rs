//! Sending an object's bytes: the `200` / `206` response, streamed through the
//! egress pipe (its throttle and its bytes-in-flight model), with the object's
//! headers (`Peercache-Object`, `ETag`, the advertisement). Used by the site
//! ([`crate::routes::site`]) and by the server as a source
//! ([`crate::routes::objects`]).

use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use futures_util::StreamExt;
use peercache_core::hash::ObjectHash;
use peercache_core::headers::{self, Advertisement, ObjectHeader};

use crate::error::ApiError;
use crate::site::SiteObject;
use crate::state::{AppState, Tally};

/// A site file's strong validator: its hash.
pub fn etag(obj: &SiteObject) -> String {
    format!("\"{}\"", obj.hash.to_hex())
}

/// Adds `Peercache-Object`, `ETag` and the `Peercache` advertisement.
pub fn add_object_headers(state: &AppState, h: &mut HeaderMap, obj: &SiteObject) {
    let object = ObjectHeader {
        hash: obj.hash,
        size: obj.size,
    };
    if let Ok(v) = HeaderValue::from_str(&object.to_header_value()) {
        h.insert(headers::OBJECT, v);
    }
    if let Ok(v) = HeaderValue::from_str(&etag(obj)) {
        h.insert(header::ETAG, v);
    }
    add_advertisement(state, h);
}

/// Adds the `Peercache` advertisement (the scope peers may share).
pub fn add_advertisement(state: &AppState, h: &mut HeaderMap) {
    let ad = Advertisement {
        scope: state.config.scope.clone(),
    };
    if let Ok(v) = HeaderValue::from_str(&ad.to_header_value()) {
        h.insert(headers::ADVERTISEMENT, v);
    }
}

/// The client a transfer goes to, when it named itself (`Peercache-Client`).
#[derive(Debug, Clone)]
pub struct Recipient {
    /// Its peer id.
    pub peer_id: String,
    /// Registered with dial info: others can be referred to it.
    pub serving: bool,
    /// Its dial info, when serving.
    pub addr: Option<String>,
}

/// Pays off whatever of a transfer was not sent when its body is dropped (a
/// finished body, or a connection cut by the write timeout).
struct Owed {
    state: Arc<AppState>,
    remaining: u64,
    hash: ObjectHash,
    transfer: u64,
    /// Who gets it, when this is the whole object: it may be listed as a
    /// holder once every byte went out.
    whole_to: Option<String>,
    /// The serving peer listed as receiving it while this transfer lasts.
    receiver: Option<String>,
}

impl Drop for Owed {
    fn drop(&mut self) {
        self.state.egress.sent(self.remaining);
        self.state.sending.end(self.transfer);
        if let Some(id) = &self.receiver {
            self.state.receivers.remove(&self.hash, id);
        }
    }
}

/// Sends an object, or the inclusive byte range `range` of it (`206`); with
/// `head_only`, its headers. A whole object sent to the last byte to `to`
/// records that `to` fetched it (so its announce of it is believed).
pub async fn send_object(
    state: &Arc<AppState>,
    obj: &SiteObject,
    head_only: bool,
    range: Option<(u64, u64)>,
    to: Option<&Recipient>,
) -> Result<Response, ApiError> {
    let (first, len) = peercache_core::range::span(range, obj.size)
        .ok_or(ApiError::RangeNotSatisfiable(obj.size))?;
    let status = if range.is_some() {
        StatusCode::PARTIAL_CONTENT
    } else {
        StatusCode::OK
    };
    let mut builder = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, &obj.content_type)
        .header(header::CONTENT_LENGTH, len)
        .header(header::CACHE_CONTROL, "no-cache");
    if range.is_some() {
        builder = builder.header(
            header::CONTENT_RANGE,
            format!("bytes {first}-{}/{}", first + len - 1, obj.size),
        );
    }
    if let Some(h) = builder.headers_mut() {
        add_object_headers(state, h, obj);
    }
    if head_only {
        return builder.body(Body::empty()).map_err(ApiError::internal);
    }
    let mut file = tokio::fs::File::open(&obj.path)
        .await
        .map_err(ApiError::internal)?;
    if first > 0 {
        use tokio::io::AsyncSeekExt;
        file.seek(std::io::SeekFrom::Start(first))
            .await
            .map_err(ApiError::internal)?;
    }
    state.figures.add(Tally::Served, 1);
    state.egress.owe(len);
    let transfer = state.sending.start(
        obj.hash,
        to.is_some_and(|r| r.serving),
        first == 0 && len == obj.size,
    );
    // A serving peer getting the whole object serves what it verified as it
    // arrives: the next clients may be referred to it at once.
    let mut receiver = None;
    if let Some(r) = to
        && let Some(addr) = &r.addr
        && first == 0
        && len == obj.size
        && state.config.refer_to_receivers
    {
        state.receivers.add(obj.hash, &r.peer_id, addr);
        receiver = Some(r.peer_id.clone());
    }
    let owed = Owed {
        state: state.clone(),
        remaining: len,
        hash: obj.hash,
        transfer,
        whole_to: to
            .filter(|_| first == 0 && len == obj.size)
            .map(|r| r.peer_id.clone()),
        receiver,
    };
    use tokio::io::AsyncReadExt;
    let reader = tokio_util::io::ReaderStream::with_capacity(file.take(len), 64 * 1024);
    let stream =
        futures_util::stream::unfold((reader, owed), |(mut reader, mut owed)| async move {
            match reader.next().await {
                Some(Ok(chunk)) => {
                    let n = chunk.len() as u64;
                    owed.state.egress.throttle(n).await;
                    owed.state.egress.delivered(n);
                    owed.state.egress.sent(n);
                    owed.state.sending.progress(owed.transfer, n);
                    owed.remaining = owed.remaining.saturating_sub(n);
                    owed.state.figures.add(Tally::BytesServed, n);
                    // Every byte was taken by the connection: the recipient
                    // holds a copy (a reader that stopped early never gets here).
                    if owed.remaining == 0
                        && let Some(peer) = owed.whole_to.take()
                        && let Err(e) = owed.state.store.record_fetch(&peer, &owed.hash).await
                    {
                        owed.state.store_failed(&e);
                    }
                    Some((Ok::<_, std::io::Error>(chunk), (reader, owed)))
                }
                Some(Err(e)) => Some((Err(e), (reader, owed))),
                None => None,
            }
        });
    builder
        .body(Body::from_stream(stream))
        .map_err(ApiError::internal)
}
