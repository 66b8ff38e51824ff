//! Outboards (the group CVs of `peercache_core::verified`) the server hands
//! out for verified streaming, kept per object up to a byte budget: the
//! site's index fills them for large files, and one asked for before it is
//! kept is computed once however many ask.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use peercache_core::hash::ObjectHash;

/// Outboards computed once per object and kept, up to a byte budget. A crowd
/// asks for a new object's outboard all at once: the first ask computes it
/// (a read of the whole object) and the others wait for that one result
/// instead of each reading the object again (sixteen reads of a 32 MiB object
/// at once held the first seeded pieces back by 0.2–0.4 s).
#[derive(Debug, Default)]
pub struct OutboardCache {
    inner: Mutex<Outboards>,
}

#[derive(Debug, Default)]
struct Outboards {
    /// One cell per object asked for: empty while (or until) it is computed.
    cells: HashMap<ObjectHash, Arc<tokio::sync::OnceCell<bytes::Bytes>>>,
    /// Bytes of the computed outboards in `cells`.
    bytes: usize,
}

/// Bytes of outboards kept.
const OUTBOARD_BUDGET: usize = 64 << 20;
/// Objects whose outboards are kept (or being computed) at once.
const OUTBOARD_OBJECTS: usize = 4096;

impl OutboardCache {
    /// The kept outboard of `hash`.
    pub fn get(&self, hash: &ObjectHash) -> Option<bytes::Bytes> {
        self.lock().cells.get(hash).and_then(|c| c.get().cloned())
    }

    /// The outboard of `hash`: kept, or computed by `compute`, once however
    /// many ask at the same time. A failed computation is not kept: the next
    /// ask (or one waiting) tries again. Past the budget everything kept is
    /// forgotten (asks in progress still get their result).
    pub async fn get_or_compute<E, F, Fut>(
        &self,
        hash: ObjectHash,
        compute: F,
    ) -> Result<bytes::Bytes, E>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<bytes::Bytes, E>>,
    {
        let cell = {
            let mut g = self.lock();
            g.make_room(&hash, 0);
            g.cells.entry(hash).or_default().clone()
        };
        let mut computed_here = false;
        let outboard = cell
            .get_or_try_init(|| {
                computed_here = true;
                compute()
            })
            .await?
            .clone();
        if computed_here {
            let mut g = self.lock();
            g.make_room(&hash, outboard.len());
            g.cells.insert(hash, cell);
            g.bytes += outboard.len();
        }
        Ok(outboard)
    }

    /// Keeps `outboard`, computed elsewhere (the site's index), unless one
    /// is kept or being computed already.
    pub fn put(&self, hash: ObjectHash, outboard: bytes::Bytes) {
        let mut g = self.lock();
        if g.cells.get(&hash).is_some_and(|c| c.initialized()) {
            return;
        }
        g.make_room(&hash, outboard.len());
        let cell = g.cells.entry(hash).or_default().clone();
        if cell.set(outboard.clone()).is_ok() {
            g.bytes += outboard.len();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Outboards> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Outboards {
    /// The one eviction rule: when keeping `bytes` more for `hash` would
    /// pass the byte budget, or a new object would pass the object limit,
    /// everything kept is forgotten (asks in progress keep their cells).
    fn make_room(&mut self, hash: &ObjectHash, bytes: usize) {
        let new_object = !self.cells.contains_key(hash);
        if self.bytes + bytes > OUTBOARD_BUDGET
            || (new_object && self.cells.len() >= OUTBOARD_OBJECTS)
        {
            self.cells.clear();
            self.bytes = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_crowd_asking_for_an_outboard_at_once_computes_it_once() {
        let cache = Arc::new(OutboardCache::default());
        let hash = ObjectHash::of(b"crowd object");
        let computed = Arc::new(AtomicU64::new(0));
        let asks = (0..16).map(|_| {
            let (cache, computed) = (cache.clone(), computed.clone());
            tokio::spawn(async move {
                cache
                    .get_or_compute(hash, || async move {
                        computed.fetch_add(1, Ordering::SeqCst);
                        // Long enough that every ask arrives while it runs.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Ok::<_, ()>(bytes::Bytes::from_static(b"cvs"))
                    })
                    .await
            })
        });
        for ask in futures_util::future::join_all(asks).await {
            assert_eq!(ask.unwrap(), Ok(bytes::Bytes::from_static(b"cvs")));
        }
        assert_eq!(computed.load(Ordering::SeqCst), 1);
        assert_eq!(cache.get(&hash), Some(bytes::Bytes::from_static(b"cvs")));
    }

    #[tokio::test]
    async fn a_failed_outboard_is_not_kept_and_the_next_ask_computes_it() {
        let cache = OutboardCache::default();
        let hash = ObjectHash::of(b"unreadable for a moment");
        let failed = cache
            .get_or_compute(hash, || async { Err::<bytes::Bytes, _>("read failed") })
            .await;
        assert_eq!(failed, Err("read failed"));
        assert_eq!(cache.get(&hash), None);
        let again = cache
            .get_or_compute(hash, || async {
                Ok::<_, &str>(bytes::Bytes::from_static(b"ok"))
            })
            .await;
        assert_eq!(again, Ok(bytes::Bytes::from_static(b"ok")));
        assert_eq!(cache.get(&hash), Some(bytes::Bytes::from_static(b"ok")));
    }

    #[tokio::test]
    async fn outboards_past_the_object_limit_are_forgotten_not_grown() {
        let cache = OutboardCache::default();
        for i in 0..(OUTBOARD_OBJECTS as u64 + 10) {
            let hash = ObjectHash::of(&i.to_le_bytes());
            let _ = cache
                .get_or_compute(hash, || async { Ok::<_, ()>(bytes::Bytes::new()) })
                .await;
        }
        assert!(cache.lock().cells.len() <= OUTBOARD_OBJECTS);
    }

    #[tokio::test]
    async fn past_the_byte_budget_what_was_kept_is_forgotten_and_the_new_one_kept() {
        let cache = OutboardCache::default();
        let (a, b) = (ObjectHash::of(b"a"), ObjectHash::of(b"b"));
        let big = bytes::Bytes::from(vec![0u8; OUTBOARD_BUDGET / 2 + 1]);
        cache.put(a, big.clone());
        assert!(cache.get(&a).is_some());
        let kept = cache
            .get_or_compute(b, || async { Ok::<_, ()>(big.clone()) })
            .await;
        assert_eq!(kept, Ok(big.clone()));
        assert_eq!(cache.get(&a), None);
        assert_eq!(cache.get(&b), Some(big));
        assert!(cache.lock().bytes <= OUTBOARD_BUDGET);
    }
}
