//! What a host remembers between runs (DESIGN M10, B8):
//! - the key of each server it has talked to, pinned on first contact: in the
//!   host's *data* directory (`servers.json`), since a cache cleaner must not
//!   undo a pin; a `servers.json` left in the cache by earlier versions is moved;
//!
//! and beside its cache (lost with it at no harm):
//! - the server's signed record of each object it keeps, to pass on to others;
//! - an auxiliary proxy list per server: peers met in earlier referrals, tried
//!   when the server is silent;
//! - the relays each server offered, so peers behind routers stay reachable
//!   (and hole punching keeps working) while the server is silent;
//! - which objects were fetched through which server, so a host announces to
//!   each server only what it fetched from that site (issue 13: a server never
//!   learns what a visitor fetched elsewhere).
//!
//! All of it is small JSON written atomically; all of it is bounded.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Mutex;

use peercache_core::protocol::{Proxy, ReachResponse, RelayInfo};
use peercache_core::record::SignedRecord;

use crate::cache::write_atomically;

/// Peers remembered per server.
pub const MAX_AUX: usize = 64;
/// Servers remembered.
const MAX_SERVERS: usize = 256;

/// How a server saw this host, and when (seconds since the Unix epoch).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReachNote {
    /// When it was asked.
    pub at: u64,
    /// Its answer, or why it could not be asked.
    pub answer: Result<ReachResponse, String>,
}

/// The remembered state of one host.
#[derive(Debug)]
pub struct Knowledge {
    dir: PathBuf,
    data_dir: PathBuf,
    keys: Mutex<BTreeMap<String, String>>,
    aux: Mutex<BTreeMap<String, Vec<Proxy>>>,
    relays: Mutex<BTreeMap<String, Vec<RelayInfo>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn load<T: serde::de::DeserializeOwned + Default>(path: &std::path::Path) -> T {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

impl Knowledge {
    /// Loads what was remembered: pinned keys under `data_dir`, the rest under
    /// `cache_dir`.
    pub fn open(cache_dir: &std::path::Path, data_dir: &std::path::Path) -> Self {
        let pins = data_dir.join("servers.json");
        let old_pins = cache_dir.join("servers.json");
        if pins != old_pins && !pins.exists() && old_pins.exists() {
            let moved = std::fs::create_dir_all(data_dir)
                .and_then(|()| std::fs::read(&old_pins))
                .and_then(|bytes| write_atomically(&pins, &bytes))
                .and_then(|()| std::fs::remove_file(&old_pins));
            if let Err(e) = moved {
                tracing::warn!(from = %old_pins.display(), error = %e, "could not move the pinned server keys");
            }
        }
        let keys_from = if pins.exists() { &pins } else { &old_pins };
        Self {
            dir: cache_dir.to_path_buf(),
            data_dir: data_dir.to_path_buf(),
            keys: Mutex::new(load(keys_from)),
            aux: Mutex::new(load(&cache_dir.join("aux.json"))),
            relays: Mutex::new(load(&cache_dir.join("relays.json"))),
        }
    }

    /// The servers with a pinned key (those this host has talked to).
    pub fn pinned_servers(&self) -> Vec<String> {
        lock(&self.keys).keys().cloned().collect()
    }

    /// Keeps how `origin` last saw this host ([`ServerLink::reach`](crate::server_link::ServerLink::reach)),
    /// with the time, in the data directory's `reach.json` (at most
    /// `MAX_SERVERS` servers), for `doctor` to read while the host runs.
    pub fn note_reach(&self, origin: &str, answer: Result<ReachResponse, String>) {
        let path = self.data_dir.join("reach.json");
        let mut all: BTreeMap<String, ReachNote> = load(&path);
        if all.len() >= MAX_SERVERS && !all.contains_key(origin) {
            return;
        }
        all.insert(
            origin.to_string(),
            ReachNote {
                at: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
                answer,
            },
        );
        let _ = std::fs::create_dir_all(&self.data_dir);
        let _ = write_atomically(&path, &serde_json::to_vec(&all).unwrap_or_default());
    }

    /// What servers last said of this host's reachability.
    pub fn reach_notes(&self) -> BTreeMap<String, ReachNote> {
        load(&self.data_dir.join("reach.json"))
    }

    /// The pinned key of `origin`, if any.
    pub fn pinned_key(&self, origin: &str) -> Option<String> {
        lock(&self.keys).get(origin).cloned()
    }

    /// Pins `key` for `origin` unless one is pinned already (trust on first use).
    /// Returns false when a different key was pinned before.
    pub fn pin(&self, origin: &str, key: &str) -> bool {
        let mut keys = lock(&self.keys);
        match keys.get(origin) {
            Some(k) => k == key,
            None => {
                if keys.len() >= MAX_SERVERS {
                    return true;
                }
                keys.insert(origin.to_string(), key.to_string());
                let _ = std::fs::create_dir_all(&self.data_dir);
                let _ = write_atomically(
                    &self.data_dir.join("servers.json"),
                    &serde_json::to_vec(&*keys).unwrap_or_default(),
                );
                true
            }
        }
    }

    /// Pins `key` for `origin` as [`Knowledge::pin`] does, or in place of the
    /// pinned key when `rotations` (from the server's `/v1/key`) lead from the
    /// pinned key to `key` by statements each signed by the key before
    /// (issue 14). Returns false, keeping the pinned key, otherwise.
    pub fn accept_key(
        &self,
        origin: &str,
        key: &str,
        rotations: &[peercache_core::record::KeyRotation],
    ) -> bool {
        let pinned = self.pinned_key(origin);
        match pinned {
            None => self.pin(origin, key),
            Some(p) if p.eq_ignore_ascii_case(key) => true,
            Some(p) => match peercache_core::record::follow_rotations(&p, key, rotations) {
                Ok(()) => {
                    let mut keys = lock(&self.keys);
                    keys.insert(origin.to_string(), key.to_ascii_lowercase());
                    let _ = std::fs::create_dir_all(&self.data_dir);
                    let _ = write_atomically(
                        &self.data_dir.join("servers.json"),
                        &serde_json::to_vec(&*keys).unwrap_or_default(),
                    );
                    tracing::info!(%origin, old = %p, new = %key, "the server rotated its key; pinned the new one");
                    true
                }
                Err(e) => {
                    tracing::warn!(%origin, error = %e, "the server presents a different key than the one pinned; keeping the pinned one");
                    false
                }
            },
        }
    }

    /// Remembers the peers of a referral (most recent first, bounded).
    pub fn learn_peers(&self, origin: &str, peers: &[Proxy]) {
        let peers: Vec<&Proxy> = peers
            .iter()
            .filter(|p| p.id != peercache_core::protocol::SERVER_PROXY_ID)
            .collect();
        if peers.is_empty() {
            return;
        }
        let mut aux = lock(&self.aux);
        if aux.len() >= MAX_SERVERS && !aux.contains_key(origin) {
            return;
        }
        let list = aux.entry(origin.to_string()).or_default();
        for p in peers.into_iter().rev() {
            list.retain(|q| q.id != p.id);
            list.insert(0, p.clone());
        }
        list.truncate(MAX_AUX);
        let _ = write_atomically(
            &self.dir.join("aux.json"),
            &serde_json::to_vec(&*aux).unwrap_or_default(),
        );
    }

    /// Remembers the relays `origin` offered (at most 4).
    pub fn learn_relays(&self, origin: &str, offered: &[RelayInfo]) {
        let mut relays = lock(&self.relays);
        let offered: Vec<RelayInfo> = offered.iter().take(4).cloned().collect();
        if relays.get(origin) == Some(&offered)
            || (relays.len() >= MAX_SERVERS && !relays.contains_key(origin))
        {
            return;
        }
        relays.insert(origin.to_string(), offered);
        let _ = write_atomically(
            &self.dir.join("relays.json"),
            &serde_json::to_vec(&*relays).unwrap_or_default(),
        );
    }

    /// The relays `origin` offered last time.
    pub fn relays(&self, origin: &str) -> Vec<RelayInfo> {
        lock(&self.relays).get(origin).cloned().unwrap_or_default()
    }

    /// The auxiliary proxy list for `origin`.
    pub fn aux_peers(&self, origin: &str) -> Vec<Proxy> {
        lock(&self.aux).get(origin).cloned().unwrap_or_default()
    }

    /// The auxiliary proxy list of the site whose origin has the digest
    /// `site` (`peercache_core::peer::lan_digest`), for a cascade query that
    /// names its site only so.
    pub fn aux_peers_of_site(&self, site: &str) -> Vec<Proxy> {
        lock(&self.aux)
            .iter()
            .find(|(origin, _)| peercache_core::peer::lan_digest(origin).eq_ignore_ascii_case(site))
            .map(|(_, peers)| peers.clone())
            .unwrap_or_default()
    }

    /// Records are filed under the URL's LAN digest
    /// (`peercache_core::peer::lan_digest`), so a LAN query finds one by it.
    fn record_path(&self, url: &str) -> PathBuf {
        self.digest_path(&peercache_core::peer::lan_digest(url))
    }

    fn digest_path(&self, digest: &str) -> PathBuf {
        self.dir.join("records").join(digest)
    }

    /// Where records were filed before (by the URL's plain hash).
    fn old_record_path(&self, url: &str) -> PathBuf {
        self.dir
            .join("records")
            .join(peercache_core::ObjectHash::of(url.as_bytes()).to_hex())
    }

    /// The signed record kept for the URL whose LAN digest is `digest` (64 hex
    /// digits), checked to be that URL's.
    pub fn record_for_digest(&self, digest: &str) -> Option<SignedRecord> {
        if !peercache_core::peer::is_digest(digest) {
            return None;
        }
        let bytes = std::fs::read(self.digest_path(&digest.to_ascii_lowercase())).ok()?;
        let rec: SignedRecord = serde_json::from_slice(&bytes).ok()?;
        (peercache_core::peer::lan_digest(&rec.record.url).eq_ignore_ascii_case(digest))
            .then_some(rec)
    }

    fn fetched_path(&self, origin: &str) -> PathBuf {
        self.dir
            .join("fetched")
            .join(peercache_core::ObjectHash::of(origin.as_bytes()).to_hex())
    }

    /// Notes that `hash` was fetched through the server at `origin` (one line
    /// appended to that server's list; compacted when read).
    pub fn note_fetched(&self, origin: &str, hash: &peercache_core::ObjectHash) {
        use std::io::Write;
        if origin.is_empty() {
            return;
        }
        let path = self.fetched_path(origin);
        let written = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
            })
            .and_then(|mut f| writeln!(f, "{}", hash.to_hex()));
        if let Err(e) = written {
            tracing::warn!(%origin, error = %e, "could not note which server an object came from");
        }
    }

    /// Of `held`, the objects fetched through the server at `origin`. The list
    /// on disk is rewritten with only those when it has grown past them.
    pub fn fetched_from(
        &self,
        origin: &str,
        held: &[peercache_core::ObjectHash],
    ) -> Vec<peercache_core::ObjectHash> {
        let path = self.fetched_path(origin);
        let Ok(text) = std::fs::read_to_string(&path) else {
            return Vec::new();
        };
        let noted: std::collections::HashSet<&str> = text.lines().map(str::trim).collect();
        let mine: Vec<peercache_core::ObjectHash> = held
            .iter()
            .filter(|h| noted.contains(h.to_hex().as_str()))
            .copied()
            .collect();
        if text.lines().count() > 2 * mine.len() + 1024 {
            let compact: String = mine.iter().map(|h| format!("{}\n", h.to_hex())).collect();
            let _ = write_atomically(&path, compact.as_bytes());
        }
        mine
    }

    /// Keeps the server's signed record for a URL.
    pub fn keep_record(&self, record: &SignedRecord) {
        let path = self.record_path(&record.record.url);
        if let Some(parent) = path.parent()
            && std::fs::create_dir_all(parent).is_ok()
        {
            let _ = write_atomically(&path, &serde_json::to_vec(record).unwrap_or_default());
        }
    }

    /// The signed record kept for a URL.
    pub fn record_for(&self, url: &str) -> Option<SignedRecord> {
        let bytes = std::fs::read(self.record_path(url))
            .or_else(|_| {
                // Filed the old way: move it under the new name.
                let old = self.old_record_path(url);
                let bytes = std::fs::read(&old)?;
                if write_atomically(&self.record_path(url), &bytes).is_ok() {
                    let _ = std::fs::remove_file(&old);
                }
                Ok::<_, std::io::Error>(bytes)
            })
            .ok()?;
        serde_json::from_slice(&bytes).ok()
    }
}

/// The version of a URL this host holds (issue 14): which object, its
/// validator and until when the site's caching headers let it be used without
/// asking.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeptVersion {
    /// The object's hash.
    pub hash: peercache_core::ObjectHash,
    /// Its size.
    pub size: u64,
    /// Its media type.
    pub content_type: String,
    /// The site's `ETag`, to revalidate with.
    pub etag: Option<String>,
    /// Unix seconds until which it is fresh (0: always ask).
    pub fresh_until: u64,
    /// The site's end-to-end headers it came with (bounded), so a copy used
    /// without asking goes to the browser as the site sent it.
    #[serde(default)]
    pub headers: Vec<(String, String)>,
}

/// Most headers kept with a version, and their total size.
const MAX_KEPT_HEADERS: usize = 64;
const MAX_KEPT_HEADER_BYTES: usize = 16 * 1024;

impl KeptVersion {
    /// The end-to-end headers of `headers` worth keeping with a version: not
    /// framing, hop-by-hop or of the moment (`Date`, `Age`); bounded.
    pub fn keepable_headers(headers: &reqwest::header::HeaderMap) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut bytes = 0;
        for (k, v) in headers {
            let name = k.as_str();
            if matches!(
                name,
                "connection"
                    | "keep-alive"
                    | "transfer-encoding"
                    | "te"
                    | "trailer"
                    | "upgrade"
                    | "proxy-authenticate"
                    | "content-length"
                    | "content-range"
                    | "date"
                    | "age"
                    | "set-cookie"
            ) || name.starts_with("x-peercache")
                || name.starts_with("peercache")
            {
                continue;
            }
            let Ok(v) = v.to_str() else { continue };
            bytes += name.len() + v.len();
            if out.len() >= MAX_KEPT_HEADERS || bytes > MAX_KEPT_HEADER_BYTES {
                break;
            }
            out.push((name.to_string(), v.to_string()));
        }
        out
    }

    /// The kept headers as a header map.
    pub fn header_map(&self) -> reqwest::header::HeaderMap {
        let mut h = reqwest::header::HeaderMap::new();
        for (k, v) in &self.headers {
            if let (Ok(k), Ok(v)) = (
                reqwest::header::HeaderName::from_bytes(k.as_bytes()),
                reqwest::header::HeaderValue::from_str(v),
            ) {
                h.append(k, v);
            }
        }
        h
    }
}

impl Knowledge {
    fn version_path(&self, url: &str) -> PathBuf {
        self.dir
            .join("versions")
            .join(peercache_core::peer::lan_digest(url))
    }

    /// Remembers the version of `url` held.
    pub fn keep_version(&self, url: &str, version: &KeptVersion) {
        let path = self.version_path(url);
        if let Some(parent) = path.parent()
            && std::fs::create_dir_all(parent).is_ok()
        {
            let _ = write_atomically(&path, &serde_json::to_vec(version).unwrap_or_default());
        }
    }

    /// The version of `url` held, if remembered.
    pub fn version_for(&self, url: &str) -> Option<KeptVersion> {
        let bytes = std::fs::read(self.version_path(url)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }
}

/// Recently seen cascade queries, for loop protection.
#[derive(Debug, Default)]
pub struct SeenQueries {
    seen: Mutex<HashMap<String, std::time::Instant>>,
}

impl SeenQueries {
    /// True the first time `qid` is seen (within a minute).
    pub fn first_time(&self, qid: &str) -> bool {
        let mut seen = lock(&self.seen);
        let now = std::time::Instant::now();
        seen.retain(|_, t| now.duration_since(*t).as_secs() < 60);
        if seen.len() > 10_000 {
            seen.clear();
        }
        seen.insert(qid.to_string(), now).is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_server_hears_only_of_what_came_through_it() {
        let dir = std::env::temp_dir().join(format!("peercache-fetched-{}", std::process::id()));
        let k = Knowledge::open(&dir, &dir);
        let (a, b, c) = (
            peercache_core::ObjectHash::of(b"a"),
            peercache_core::ObjectHash::of(b"b"),
            peercache_core::ObjectHash::of(b"c"),
        );
        k.note_fetched("https://one.example", &a);
        k.note_fetched("https://two.example", &b);
        k.note_fetched("https://one.example", &c);
        let held = [a, b];
        assert_eq!(
            k.fetched_from("https://one.example", &held),
            vec![a],
            "c is no longer held"
        );
        assert_eq!(k.fetched_from("https://two.example", &held), vec![b]);
        assert!(k.fetched_from("https://three.example", &held).is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn pins_once_and_remembers_peers_across_opens() {
        let dir = std::env::temp_dir().join(format!("pc-know-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let data = dir.join("data");
        // Pins left in the cache by an earlier version move to the data directory.
        std::fs::write(dir.join("servers.json"), r#"{"https://old":"cc"}"#).unwrap();
        let k = Knowledge::open(&dir, &data);
        assert!(!dir.join("servers.json").exists());
        assert_eq!(k.pinned_key("https://old").as_deref(), Some("cc"));
        assert!(k.pin("https://s", "aa"));
        assert!(k.pin("https://s", "aa"));
        assert!(!k.pin("https://s", "bb"), "a different key is refused");
        let (old, new) = (
            peercache_core::record::RecordSigner::from_secret([1; 32]),
            peercache_core::record::RecordSigner::from_secret([2; 32]),
        );
        assert!(k.pin("https://r", &old.public_hex()));
        assert!(
            !k.accept_key("https://r", &new.public_hex(), &[]),
            "no statement"
        );
        let forged = new.rotate_to(&new);
        assert!(!k.accept_key("https://r", &new.public_hex(), &[forged]));
        assert!(k.accept_key("https://r", &new.public_hex(), &[old.rotate_to(&new)]));
        assert_eq!(k.pinned_key("https://r"), Some(new.public_hex()));
        let p = |id: &str| Proxy {
            direct: None,
            id: id.into(),
            addr: format!("http://{id}"),
            rtt_ms: None,
            load: None,
        };
        k.learn_peers("https://s", &[p("a"), p("b")]);
        k.learn_peers("https://s", &[p("c"), p("a")]);
        // A cache cleaner wipes the cache; the pins stay.
        std::fs::remove_file(dir.join("aux.json")).unwrap();
        let again = Knowledge::open(&dir, &data);
        assert_eq!(again.pinned_key("https://s").as_deref(), Some("aa"));
        let ids: Vec<String> = again
            .aux_peers("https://s")
            .into_iter()
            .map(|p| p.id)
            .collect();
        assert!(ids.is_empty(), "the peers were in the wiped cache");
        k.learn_peers("https://s", &[p("c"), p("a")]);
        let again = Knowledge::open(&dir, &data);
        let ids: Vec<String> = again
            .aux_peers("https://s")
            .into_iter()
            .map(|p| p.id)
            .collect();
        assert_eq!(ids, ["c", "a", "b"]);
        let seen = SeenQueries::default();
        assert!(seen.first_time("q1"));
        assert!(!seen.first_time("q1"));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
