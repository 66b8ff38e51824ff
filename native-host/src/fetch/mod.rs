//! The download pipeline (DESIGN section 2): one URL, read top to bottom in
//! [`Fetcher::open`]. Each stage is a module with one job and its own small
//! error, joined by plain data:
//!
//! 1. [`ask`]: ask the server (register first) → the bytes, a referral, or silence.
//! 2. [`discover`]: holders behind one interface: the referral, or (the server
//!    silent) peers met before and their peers (the cascade) and the LAN; the
//!    object's hash comes from the referral or from a record signed by the
//!    pinned server key.
//! 3. [`own_cache`]: an intact copy already held ends the download here.
//! 4. [`choose`]: measure every holder, order them by the named policy.
//! 5. [`transfer`]: ranges from the chosen sources, in parallel for large
//!    objects, each 16 KiB group checked by [`verify`] before it is written;
//!    the server is the last source. A `200` from the server streams through
//!    [`from_server`] instead, hashed whole.
//! 6. [`keep`]: the verified temp file becomes the cache's copy.
//! 7. [`settle`]: announce it, report each source, remember speeds.
//!
//! Every step is an event ([`events`]): the log, the metrics, the byte
//! counters, the popup's "why" and `fetch --explain` all come from them.

pub mod ask;
pub mod choose;
pub mod discover;
pub mod error;
pub mod events;
pub mod from_server;
pub mod keep;
pub mod own_cache;
pub mod settle;
pub mod source;
pub mod transfer;
pub mod verify;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use metrics::counter;
use peercache_core::explain::{DownloadEvent, Explanation};
use peercache_core::hash::ObjectHash;
use peercache_core::protocol::{Outcome, Proxy, Referral, SERVER_PROXY_ID};
use peercache_core::record::SignedRecord;
use peercache_core::select::{Dropped, Verdict};
use peercache_core::shareable::NotShareable;
use tokio::sync::oneshot;

pub use choose::PeerPolicy;
pub use error::{BodyReceiver, FetchError, MAX_OBJECT_SIZE};

use crate::cache::Cache;
use crate::counters::HostCounters;
use crate::knowledge::Knowledge;
use crate::peer_memory::PeerMemory;
use crate::server_link::{RELAY_WAIT, ServerLink, SourceReport};
use error::{BodySender, body_channel};
use events::{Events, RecentDownloads};
use source::Transport;
use transfer::TransferError;

/// Longest a client waits, in total, when the server defers it (503 +
/// `Retry-After`) because the object is on its way to another client.
pub const MAX_DEFERRAL: Duration = Duration::from_secs(60);
/// Hops a cascade query may travel (M11).
pub const LOCATE_TTL: u8 = 3;
/// Failed sources waiting to be reported.
const FAILURE_QUEUE: usize = 16;
/// How long LAN answers are collected.
const LAN_WAIT: Duration = Duration::from_millis(700);

/// Where the bytes of a download came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The coordination server.
    Server,
    /// This host's own cache (re-verified).
    Cache,
    /// A peer, by id.
    Peer(String),
}

/// A finished, verified download held in memory.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The bytes (verified whenever a hash was given).
    pub bytes: Bytes,
    /// Their media type.
    pub content_type: String,
    /// Their hash, if the server named one.
    pub hash: Option<ObjectHash>,
    /// Who sent them.
    pub source: Source,
}

/// Settings of the pipeline.
#[derive(Debug, Clone, Copy)]
pub struct FetchOptions {
    /// Peer choice policy.
    pub policy: PeerPolicy,
    /// Target speed in bytes/s for `first-meeting-target`; `None` takes the
    /// referral's.
    pub target_speed: Option<u64>,
    /// Longest total wait while deferred; default [`MAX_DEFERRAL`].
    pub max_deferral: Duration,
}

impl Default for FetchOptions {
    fn default() -> Self {
        Self {
            policy: PeerPolicy::Fastest,
            target_speed: None,
            max_deferral: MAX_DEFERRAL,
        }
    }
}

/// The parts the pipeline works with.
#[derive(Debug, Clone)]
pub struct Parts {
    /// The server's API.
    pub link: Arc<ServerLink>,
    /// The cache.
    pub cache: Cache,
    /// QUIC to peers.
    pub dialer: Arc<peercache_net::PeerDialer>,
    /// Pinned keys, records, peers met before.
    pub knowledge: Arc<Knowledge>,
    /// Speeds and recent peers.
    pub memory: Arc<PeerMemory>,
    /// Byte counters.
    pub counters: Arc<HostCounters>,
    /// The last downloads' explanations.
    pub recent: Arc<RecentDownloads>,
}

/// Runs downloads (see the module docs).
#[derive(Debug)]
pub struct Fetcher {
    parts: Parts,
    options: FetchOptions,
}

/// A download in progress: verified bytes in order, then who served them.
#[derive(Debug)]
pub struct Download {
    /// Media type.
    pub content_type: String,
    /// Size, when known in advance.
    pub size: Option<u64>,
    /// The hash the bytes are checked against, if any.
    pub hash: Option<ObjectHash>,
    /// The source, when known before the first byte.
    pub known_source: Option<Source>,
    /// Why the server's response may never be shared (B2), if so: it was neither
    /// kept nor announced, and the extension should stop routing its URL here.
    pub not_shareable: Option<NotShareable>,
    /// Verified chunks; an `Err` item means the download failed there.
    pub body: BodyReceiver,
    /// The site's own response headers when the server sent the bytes
    /// (`Content-Encoding`, `Cache-Control`, `ETag`, …); empty otherwise.
    pub site_headers: reqwest::header::HeaderMap,
    done: Option<oneshot::Receiver<Result<Source, FetchError>>>,
    events: Arc<Events>,
}

impl Download {
    /// Waits for the end (after the body was read) and says who served the bytes.
    pub async fn finish(&mut self) -> Result<Source, FetchError> {
        match self.done.take() {
            None => Ok(self.known_source.clone().unwrap_or(Source::Cache)),
            Some(rx) => rx.await.unwrap_or(Err(FetchError::Cancelled)),
        }
    }

    /// Why the download went as it did, so far.
    pub fn explanation(&self) -> Explanation {
        self.events.explanation()
    }
}

/// The object a download is after.
#[derive(Debug, Clone)]
struct Object {
    hash: ObjectHash,
    size: u64,
    content_type: String,
}

impl crate::knowledge::KeptVersion {
    fn object(&self) -> Object {
        Object {
            hash: self.hash,
            size: self.size,
            content_type: self.content_type.clone(),
        }
    }
}

pub use discover::origin;

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Fetcher {
    /// A pipeline over `parts`.
    pub fn new(parts: Parts, options: FetchOptions) -> Self {
        Self { parts, options }
    }

    /// The parts (the node shares them with the peer server and the popup).
    pub fn parts(&self) -> &Parts {
        &self.parts
    }

    /// One download of `url`, buffered (for objects up to [`MAX_OBJECT_SIZE`]).
    pub async fn fetch(self: &Arc<Self>, url: &str) -> Result<Fetched, FetchError> {
        let mut dl = self.open(url).await?;
        let mut buf = BytesMut::new();
        while let Some(chunk) = dl.body.recv().await {
            let chunk = chunk?;
            if buf.len() as u64 + chunk.len() as u64 > MAX_OBJECT_SIZE {
                return Err(FetchError::TooLarge(buf.len() as u64 + chunk.len() as u64));
            }
            buf.extend_from_slice(&chunk);
        }
        let source = dl.finish().await?;
        Ok(Fetched {
            bytes: buf.freeze(),
            content_type: dl.content_type,
            hash: dl.hash,
            source,
        })
    }

    /// Starts one download of `url`. The returned [`Download`] yields verified
    /// bytes in order as they arrive.
    pub async fn open(self: &Arc<Self>, url: &str) -> Result<Download, FetchError> {
        let parsed = reqwest::Url::parse(url).map_err(|_| FetchError::BadUrl(url.to_string()))?;
        if parsed.scheme() != "https" && parsed.scheme() != "http" {
            return Err(FetchError::BadUrl(url.to_string()));
        }
        let origin = origin(&parsed);
        let p = &self.parts;
        let events = p
            .recent
            .start(Events::new(&origin, p.counters.clone(), p.memory.clone()));
        events.emit(DownloadEvent::Started {
            url: parsed.to_string(),
        });
        let opened = self.open_stages(parsed, origin, events.clone()).await;
        if let Err(e) = &opened {
            events.emit(DownloadEvent::Failed { why: e.to_string() });
        }
        opened
    }

    async fn open_stages(
        self: &Arc<Self>,
        url: reqwest::Url,
        origin: String,
        events: Arc<Events>,
    ) -> Result<Download, FetchError> {
        // 0. A version of this URL held: while fresh (by the site's caching
        // headers) it is used without asking; stale, it is asked for with its
        // ETag and a 304 costs no bytes (issue 14).
        let mut kept = self
            .parts
            .knowledge
            .version_for(url.as_str())
            .filter(|v| self.parts.cache.contains(&v.hash));
        if let Some(v) = &kept
            && v.fresh_until > now_secs()
            && let Some(dl) = self
                .own_copy(&v.object(), v.header_map(), events.clone())
                .await
        {
            counter!("peercache_fresh_from_cache_total").increment(1);
            return Ok(dl);
        }
        // 1. Ask the server.
        let answer = loop {
            let options = ask::AskOptions {
                max_deferral: self.options.max_deferral,
                link_speed: self.parts.memory.link_speed(),
                if_none_match: kept.as_ref().and_then(|v| v.etag.as_deref()),
            };
            let answer = ask::ask(&self.parts.link, &url, &origin, options, &events).await?;
            let ask::Asked::NotModified(headers) = &answer.asked else {
                break answer;
            };
            if let Some(mut v) = kept.take() {
                v.fresh_until = own_cache::fresh_until(&url, 200, headers, SystemTime::now());
                let mut site_headers = v.header_map();
                // A 304's headers update the stored ones (RFC 9111 4.3.4).
                for (k, val) in headers {
                    site_headers.insert(k.clone(), val.clone());
                }
                v.headers = crate::knowledge::KeptVersion::keepable_headers(&site_headers);
                let site_headers = v.header_map();
                if let Some(dl) = self
                    .own_copy(&v.object(), site_headers, events.clone())
                    .await
                {
                    counter!("peercache_revalidated_total").increment(1);
                    self.parts.knowledge.keep_version(url.as_str(), &v);
                    return Ok(dl);
                }
            }
            // The copy is gone (or was corrupt): asked again, unconditionally.
        };
        if let Some(rec) = &answer.record {
            self.keep_record_if_valid(&origin, url.as_str(), rec).await;
        }
        match answer.asked {
            ask::Asked::Bytes(resp) => {
                if let Some(rec) = &answer.record {
                    self.note_version(&url, &rec.record, resp.headers());
                }
                Ok(self.from_server(origin, resp, events))
            }
            ask::Asked::Referred(referral) => self.referred(origin, url, *referral, events).await,
            ask::Asked::Silent(why) => {
                counter!("peercache_server_silent_total").increment(1);
                events.emit(DownloadEvent::ServerSilent);
                self.without_server(origin, url, why, events).await
            }
            // Only asked for with a version held, answered above.
            ask::Asked::NotModified(_) => Err(FetchError::SiteStatus(304)),
        }
    }

    /// 2a. The server sends the bytes itself.
    fn from_server(
        self: &Arc<Self>,
        origin: String,
        resp: reqwest::Response,
        events: Arc<Events>,
    ) -> Download {
        let heads = from_server::heads(&resp, None);
        events.emit(DownloadEvent::ServedByServer {
            hash: heads.hash,
            size: heads.size,
        });
        let (tx, rx) = body_channel();
        let (done_tx, done_rx) = oneshot::channel();
        let me = self.clone();
        let ev = events.clone();
        let shareable = heads.not_shareable.is_none();
        let started = Instant::now();
        let download = Download {
            content_type: heads.content_type.clone(),
            size: heads.size,
            hash: heads.hash,
            known_source: Some(Source::Server),
            not_shareable: heads.not_shareable,
            site_headers: resp.headers().clone(),
            body: rx,
            done: Some(done_rx),
            events,
        };
        tokio::spawn(async move {
            let cvs = me.cvs_from(&origin);
            let result = match from_server::pump(
                resp,
                &heads,
                &me.parts.cache,
                Some(&cvs),
                &ev,
                &tx,
            )
            .await
            {
                Ok(pumped) => {
                    me.parts
                        .memory
                        .note_link(heads.size.unwrap_or_default(), started.elapsed());
                    me.keep_and_announce(&origin, pumped, shareable, &ev).await;
                    ev.emit(DownloadEvent::Finished {
                        main_source: SERVER_PROXY_ID.into(),
                    });
                    Ok(Source::Server)
                }
                Err(e) => {
                    ev.emit(DownloadEvent::Failed { why: e.to_string() });
                    Err(e)
                }
            };
            let _ = done_tx.send(result);
        });
        download
    }

    /// 2b. A referral: its holders, unless this host holds the object already.
    async fn referred(
        self: &Arc<Self>,
        origin: String,
        url: reqwest::Url,
        referral: Referral,
        events: Arc<Events>,
    ) -> Result<Download, FetchError> {
        let object = Object {
            hash: referral.object.hash,
            size: referral.object.size,
            content_type: referral.object.content_type.clone(),
        };
        events.emit(DownloadEvent::Referred {
            hash: object.hash,
            size: object.size,
            target_speed: referral.target_speed,
            holders: referral
                .proxies
                .iter()
                .filter(|p| p.id != SERVER_PROXY_ID)
                .count(),
            why: referral.why,
        });
        self.parts.knowledge.learn_peers(&origin, &referral.proxies);
        if let Some(rec) = &referral.record
            && rec.record.hash == object.hash
        {
            self.keep_record_if_valid(&origin, url.as_str(), rec).await;
        }
        // The site's headers for the object, as a 200 would carry them: they
        // go to the browser with the bytes, and give the kept version its
        // freshness (so a fresh object is not asked for again).
        let site_headers = referral_headers(&referral.headers);
        if let Some(rec) = &referral.record
            && rec.record.hash == object.hash
        {
            self.note_version(&url, &rec.record, &site_headers);
        }
        let (found, _) = discover::discover_all(
            &[&discover::Referred(&referral)],
            url.as_str(),
            self.parts.link.peer_id(),
        )
        .await;
        if let Some(dl) = self
            .own_copy(&object, site_headers.clone(), events.clone())
            .await
        {
            counter!("peercache_cache_hits_total").increment(1);
            // Fetched through this site now too.
            self.parts.knowledge.note_fetched(&origin, &object.hash);
            // Release the referral the server booked against its first peer.
            if let Some(first) = found.holders.iter().find(|p| p.id != SERVER_PROXY_ID) {
                let (link, first) = (self.parts.link.clone(), first.id.clone());
                let hash = object.hash;
                tokio::spawn(async move {
                    let unused =
                        SourceReport::nothing(hash, &first, Outcome::Unused, Duration::ZERO);
                    link.report(&origin, unused).await;
                });
            }
            return Ok(dl);
        }
        let floor = transfer::floor_for(referral.target_speed);
        let server = Some((referral.server.clone(), url));
        let mut dl = self
            .from_holders(
                origin,
                object,
                found.holders,
                referral.target_speed,
                floor,
                server,
                events,
            )
            .await;
        dl.site_headers = site_headers;
        Ok(dl)
    }

    /// 2c. The server is silent: holders from peers met before (and their
    /// peers) and the LAN; the object from a record signed by the pinned key
    /// (M10, M11, B8).
    async fn without_server(
        self: &Arc<Self>,
        origin: String,
        url: reqwest::Url,
        why: String,
        events: Arc<Events>,
    ) -> Result<Download, FetchError> {
        let p = &self.parts;
        let key = p
            .knowledge
            .pinned_key(&origin)
            .ok_or_else(|| FetchError::ServerDown {
                cause: why.clone(),
                then: "no key pinned for this server yet (peers stand in only for a server met before)",
            })?;
        // Peers behind routers are reached through the relays the server
        // offered before (it may be down, its relay need not be).
        peercache_net::endpoint::add_relays(
            p.dialer.endpoint(),
            &p.knowledge.relays(&origin),
            RELAY_WAIT,
        )
        .await;
        let known = discover::KnownPeers {
            dialer: p.dialer.clone(),
            ask: p.knowledge.aux_peers(&origin),
            ttl: LOCATE_TTL,
            qid: format!("{:016x}", rand::random::<u64>()),
        };
        let lan = discover::Lan { wait: LAN_WAIT };
        let (found, counts) =
            discover::discover_all(&[&known, &lan], url.as_str(), p.link.peer_id()).await;
        for (via, holders) in counts {
            events.emit(DownloadEvent::Discovered { via, holders });
        }
        let now = now_secs();
        let record = p
            .knowledge
            .record_for(url.as_str())
            .into_iter()
            .chain(found.records)
            .find(|r| r.verify(&key, url.as_str(), now).is_ok())
            .ok_or_else(|| FetchError::ServerDown {
                cause: why.clone(),
                then: "no peer has a record signed by the pinned key",
            })?;
        let object = Object {
            hash: record.record.hash,
            size: record.record.size,
            content_type: record.record.content_type.clone(),
        };
        if let Some(dl) = self
            .own_copy(&object, reqwest::header::HeaderMap::new(), events.clone())
            .await
        {
            return Ok(dl);
        }
        if found.holders.is_empty() {
            return Err(FetchError::ServerDown {
                cause: why,
                then: "no peer holds the object",
            });
        }
        p.knowledge.keep_record(&record);
        // Check speed before downloading: first to meet the target, else fastest.
        let target = self
            .options
            .target_speed
            .unwrap_or_else(|| object.size.div_ceil(2).max(1));
        // With the server down, a slow peer is still better than none: no floor.
        Ok(self
            .from_holders(
                String::new(),
                object,
                found.holders,
                target,
                0,
                None,
                events,
            )
            .await)
    }

    /// 3. An intact copy in the own cache.
    async fn own_copy(
        &self,
        object: &Object,
        site_headers: reqwest::header::HeaderMap,
        events: Arc<Events>,
    ) -> Option<Download> {
        let body =
            own_cache::open(&self.parts.cache, &object.hash, object.size, events.clone()).await?;
        Some(Download {
            content_type: object.content_type.clone(),
            size: Some(object.size),
            hash: Some(object.hash),
            known_source: Some(Source::Cache),
            not_shareable: None,
            site_headers,
            body,
            done: None,
            events,
        })
    }

    /// 4–7. Measure and choose, transfer (verified), keep, announce and report.
    /// `server` is the server's base URL and the object's URL there (the last
    /// source), `None` when it is down; `origin` is empty then (no reports).
    #[allow(clippy::too_many_arguments)]
    async fn from_holders(
        self: &Arc<Self>,
        origin: String,
        object: Object,
        holders: Vec<Proxy>,
        target_speed: u64,
        floor: u64,
        server: Option<(String, reqwest::Url)>,
        events: Arc<Events>,
    ) -> Download {
        let p = &self.parts;
        // 4. Measure and choose.
        let probed = choose::measure(&p.dialer, &p.memory, &holders).await;
        let rule = self
            .options
            .policy
            .rule(self.options.target_speed, target_speed);
        let choice = choose::choose(probed, self.options.policy, rule, &events);
        let unused: Vec<(String, Option<bool>)> = choice
            .verdicts
            .iter()
            .filter(|(_, v)| *v == Verdict::Dropped(Dropped::RelayOnly))
            .map(|(id, _)| (id.clone(), Some(false)))
            .collect();
        counter!("peercache_relay_only_peers_skipped_total").increment(unused.len() as u64);
        // With the server down and no other holder, a holder whose slots were
        // all taken is still asked: it answers "busy" and is asked again when
        // a slot may be free (`transfer::BUSY_BUDGET`), rather than the
        // download failing.
        let mut peers = choice.order;
        if server.is_none() && peers.is_empty() {
            peers = holders
                .iter()
                .filter(|h| {
                    choice
                        .verdicts
                        .iter()
                        .any(|(id, v)| *id == h.id && *v == Verdict::Dropped(Dropped::Full))
                })
                .cloned()
                .collect();
        }
        // Sources that appear during the transfer (issue 12): asked of the
        // server this download was referred by, while it is up.
        let more_sources = (server.is_some() && !origin.is_empty()).then(|| {
            let (link, origin, hash) = (p.link.clone(), origin.clone(), object.hash);
            transfer::MoreSources::new(move || {
                let (link, origin) = (link.clone(), origin.clone());
                Box::pin(async move { link.sources(&origin, &hash).await.unwrap_or_default() })
            })
        });
        let plan = transfer::Plan {
            hash: object.hash,
            size: object.size,
            peers,
            server: server.as_ref().map(|(base, _)| base.clone()),
            floor,
            more_sources,
        };
        let (tx, rx) = body_channel();
        let (done_tx, done_rx) = oneshot::channel();
        let me = self.clone();
        let ev = events.clone();
        tokio::spawn(async move {
            let result = me
                .transfer_keep_settle(origin, plan, server.map(|(_, url)| url), unused, &ev, &tx)
                .await;
            match &result {
                Ok(source) => {
                    let main_source = match source {
                        Source::Peer(id) => id.clone(),
                        Source::Server => SERVER_PROXY_ID.into(),
                        Source::Cache => events::CACHE_SOURCE.into(),
                    };
                    ev.emit(DownloadEvent::Finished { main_source });
                }
                Err(e) => {
                    ev.emit(DownloadEvent::Failed { why: e.to_string() });
                    if !matches!(e, FetchError::Cancelled) {
                        // The reader sees where the body broke.
                        let _ = tx.try_send(Err(FetchError::Sources(e.to_string())));
                    }
                }
            }
            let _ = done_tx.send(result);
        });
        Download {
            content_type: object.content_type,
            size: Some(object.size),
            hash: Some(object.hash),
            known_source: None,
            not_shareable: None,
            site_headers: reqwest::header::HeaderMap::new(),
            body: rx,
            done: Some(done_rx),
            events,
        }
    }

    /// 5–7 for one transfer; falls back to the server's whole body when no
    /// source could prove the object.
    async fn transfer_keep_settle(
        &self,
        origin: String,
        plan: transfer::Plan,
        fallback: Option<reqwest::Url>,
        unused: Vec<(String, Option<bool>)>,
        events: &Arc<Events>,
        tx: &BodySender,
    ) -> Result<Source, FetchError> {
        let p = &self.parts;
        let started = Instant::now();
        let transport = Transport {
            http: p.link.http().clone(),
            dialer: p.dialer.clone(),
            link: p.link.clone(),
        };
        let (hash, size, server_down) = (plan.hash, plan.size, plan.server.is_none());
        let (failed_tx, failed_rx) = tokio::sync::mpsc::channel(FAILURE_QUEUE);
        let (result, ()) = tokio::join!(
            transfer::run(
                transport,
                plan,
                &p.cache,
                events.clone(),
                tx.clone(),
                failed_tx,
            ),
            settle::report_failures(&p.link, &origin, hash, failed_rx),
        );
        let mut tally = settle::Tally {
            unused,
            ..settle::Tally::default()
        };
        let transferred = match result {
            Ok(t) => t,
            Err(e) => {
                tally.took = started.elapsed();
                settle::report_sources(&p.link, &p.memory, &origin, hash, tally).await;
                return match (e, fallback) {
                    (TransferError::NoProof, Some(url)) => {
                        self.server_whole(&origin, url, hash, events, tx).await
                    }
                    (TransferError::NoProof, None) => Err(FetchError::ServerDown {
                        cause: "silent".into(),
                        then: "no peer could prove the object",
                    }),
                    (TransferError::PeersFailed, _) if server_down => Err(FetchError::ServerDown {
                        cause: "silent".into(),
                        then: "every peer failed",
                    }),
                    (TransferError::Disk(e), _) => Err(FetchError::Disk(e)),
                    (TransferError::Cancelled, _) => Err(FetchError::Cancelled),
                    (other, _) => Err(FetchError::Sources(other.to_string())),
                };
            }
        };
        events.emit(DownloadEvent::Verified { hash });
        // 6. Keep.
        let to_keep = keep::ToKeep {
            hash,
            size,
            file: transferred.file,
            path: transferred.path,
            outboard: Some(transferred.proof.outboard()),
            partial: transferred.partial,
        };
        self.keep_then_announce(&origin, to_keep, events).await;
        // 7. Announce and report.
        let main = transferred
            .by_source
            .iter()
            .max_by_key(|(_, b)| **b)
            .map(|(id, _)| id.clone());
        tally.by_source = transferred.by_source;
        tally.paths = transferred.paths;
        tally.took = started.elapsed();
        settle::report_sources(&p.link, &p.memory, &origin, hash, tally).await;
        Ok(match main {
            Some(id) if id != SERVER_PROXY_ID => Source::Peer(id),
            _ => Source::Server,
        })
    }

    /// The last resort: the server, asked without `Peercache-Client`, must send
    /// the whole object, checked against `hash`.
    async fn server_whole(
        &self,
        origin: &str,
        url: reqwest::Url,
        hash: ObjectHash,
        events: &Arc<Events>,
        tx: &BodySender,
    ) -> Result<Source, FetchError> {
        let resp = self
            .parts
            .link
            .http()
            .get(url)
            .timeout(Duration::from_secs(3600))
            .send()
            .await?;
        if resp.status().as_u16() != 200 {
            return Err(FetchError::SiteStatus(resp.status().as_u16()));
        }
        let heads = from_server::heads(&resp, Some(hash));
        let shareable = heads.not_shareable.is_none();
        let cvs = self.cvs_from(origin);
        let pumped =
            from_server::pump(resp, &heads, &self.parts.cache, Some(&cvs), events, tx).await?;
        self.keep_and_announce(origin, pumped, shareable, events)
            .await;
        Ok(Source::Server)
    }

    /// 6–7 for a body the server sent: keep it (if it may be shared and is
    /// new) and announce it.
    async fn keep_and_announce(
        &self,
        origin: &str,
        pumped: from_server::Pumped,
        shareable: bool,
        events: &Events,
    ) {
        match pumped.to_keep {
            Some(to_keep) => self.keep_then_announce(origin, to_keep, events).await,
            None if pumped.already_held && shareable => {
                self.parts.knowledge.note_fetched(origin, &pumped.hash);
                if let Err(e) = self.parts.link.announce(origin, &[pumped.hash], &[]).await {
                    tracing::warn!(error = %e, "announce failed");
                }
            }
            None => {}
        }
    }

    /// 6. Keep, then 7. announce (one tail for every way bytes arrive).
    async fn keep_then_announce(&self, origin: &str, to_keep: keep::ToKeep, events: &Events) {
        let hash = to_keep.hash;
        match keep::keep(&self.parts.cache, to_keep).await {
            Ok(kept) => {
                self.parts.knowledge.note_fetched(origin, &hash);
                events.emit(DownloadEvent::Kept { hash });
                settle::announce_kept(&self.parts.link, origin, hash, &kept).await;
            }
            Err(e) => {
                counter!("peercache_cache_write_failures_total").increment(1);
                tracing::warn!(%hash, error = %e, "not sharing the object");
                events.emit(DownloadEvent::NotKept { why: e.to_string() });
            }
        }
    }

    /// The server at `origin` as the source of an object's CVs.
    fn cvs_from(&self, origin: &str) -> from_server::CvsFrom {
        from_server::CvsFrom {
            transport: Transport {
                http: self.parts.link.http().clone(),
                dialer: self.parts.dialer.clone(),
                link: self.parts.link.clone(),
            },
            server: origin.to_string(),
        }
    }

    /// Remembers which object `url` is and how long the site lets it be used
    /// without asking (own_cache step 0).
    fn note_version(
        &self,
        url: &reqwest::Url,
        record: &peercache_core::record::ObjectRecord,
        headers: &reqwest::header::HeaderMap,
    ) {
        let version = crate::knowledge::KeptVersion {
            hash: record.hash,
            size: record.size,
            content_type: record.content_type.clone(),
            etag: headers
                .get(reqwest::header::ETAG)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            fresh_until: own_cache::fresh_until(url, 200, headers, SystemTime::now()),
            headers: crate::knowledge::KeptVersion::keepable_headers(headers),
        };
        self.parts.knowledge.keep_version(url.as_str(), &version);
    }

    /// Keeps a signed record if it verifies against the pinned key. A record
    /// signed by another key first has the server's key asked again: the
    /// server may have rotated it (issue 14).
    async fn keep_record_if_valid(&self, origin: &str, url: &str, rec: &SignedRecord) {
        let verified = |knowledge: &Knowledge| {
            knowledge
                .pinned_key(origin)
                .map(|key| rec.verify(&key, url, now_secs()))
        };
        let mut checked = verified(&self.parts.knowledge);
        if checked == Some(Err(peercache_core::record::RecordError::BadSignature)) {
            self.parts.link.pin_server_key(origin).await;
            checked = verified(&self.parts.knowledge);
        }
        if matches!(checked, Some(Ok(_))) {
            self.parts.knowledge.keep_record(rec);
        }
    }
}
/// A referral's representation headers as a header map (names or values
/// that do not parse are left out; at most 64).
fn referral_headers(pairs: &[(String, String)]) -> reqwest::header::HeaderMap {
    use reqwest::header::{HeaderName, HeaderValue};
    let mut h = reqwest::header::HeaderMap::new();
    for (k, v) in pairs.iter().take(64) {
        if let (Ok(k), Ok(v)) = (HeaderName::try_from(k.as_str()), HeaderValue::from_str(v)) {
            h.append(k, v);
        }
    }
    h
}
