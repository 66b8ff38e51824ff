//! Whose piece this host sends first when a crowd asks it for pieces of a
//! large object at once (issue 12): at most [`SENDING_AT_ONCE`] such uploads
//! send at the same time, and the others wait for a turn, **the requester
//! with the fewest bytes left to download first** (shortest remaining first).
//! Every uplink stays as busy as before, so the crowd's last client finishes
//! no later, but the clients nearest the end finish sooner instead of all
//! finishing together at the end, and a client that finishes serves the
//! whole object (it never lacks a piece someone needs).
//!
//! A wait is bounded ([`LONGEST_WAIT`]): past it the upload sends anyway, so a
//! requester far behind is served late, never refused. A request without the
//! hint (a single-source download, an older host) takes no turn: it is sent
//! at once, as before. The order is a preference the requester states
//! (`PeerRequest::Object::remaining`); one that lies about it is served
//! earlier, and the others wait at most [`LONGEST_WAIT`] more. Each waiter
//! holds an upload slot, so the waiting line is bounded by the slots.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

/// Swarm uploads sending at once: two keep the uplink busy while one waits
/// for the acknowledgement of its last bytes.
pub const SENDING_AT_ONCE: usize = 2;

/// Longest an upload waits for its turn before it sends anyway.
pub const LONGEST_WAIT: Duration = Duration::from_millis(1500);

/// Who waits, in the order they go: fewest bytes left first, then first come.
type Place = (u64, u64);

#[derive(Debug, Default)]
struct Line {
    sending: usize,
    waiting: BTreeSet<Place>,
    arrivals: u64,
}

/// The turns of one host's swarm uploads (see the module docs).
#[derive(Debug, Default)]
pub struct UploadTurns {
    line: Mutex<Line>,
    changed: Notify,
}

/// A turn to send; the next waiter goes when it is dropped.
#[derive(Debug)]
pub struct Turn {
    turns: Arc<UploadTurns>,
    /// Whether it waited past [`LONGEST_WAIT`] and sends beyond the limit.
    pub late: bool,
}

impl Drop for Turn {
    fn drop(&mut self) {
        let mut line = self.turns.lock();
        line.sending = line.sending.saturating_sub(1);
        drop(line);
        self.turns.changed.notify_waiters();
    }
}

/// Takes `place` out of the line if the waiting future is dropped (the
/// requester went away) before its turn.
struct Waiting<'a> {
    turns: &'a UploadTurns,
    place: Option<Place>,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if let Some(place) = self.place.take() {
            self.turns.lock().waiting.remove(&place);
            self.turns.changed.notify_waiters();
        }
    }
}

impl UploadTurns {
    fn lock(&self) -> std::sync::MutexGuard<'_, Line> {
        self.line.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Uploads sending now (late ones included) and waiting.
    pub fn counts(&self) -> (usize, usize) {
        let line = self.lock();
        (line.sending, line.waiting.len())
    }

    /// Waits for a turn for a requester with `remaining` bytes left to
    /// download, at most `longest`.
    pub async fn take(self: &Arc<Self>, remaining: u64, longest: Duration) -> Turn {
        let deadline = tokio::time::Instant::now() + longest;
        let place = {
            let mut line = self.lock();
            line.arrivals += 1;
            let place = (remaining, line.arrivals);
            line.waiting.insert(place);
            place
        };
        let mut waiting = Waiting {
            turns: self,
            place: Some(place),
        };
        loop {
            // Registered before the check, so a release between the check and
            // the wait is not missed.
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let its_turn = {
                let line = self.lock();
                line.waiting.first() == Some(&place) && line.sending < SENDING_AT_ONCE
            };
            if its_turn {
                return self.grant(&mut waiting, false);
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return self.grant(&mut waiting, true);
            }
        }
    }

    /// Moves the waiter out of the line into a turn (`late`: past the
    /// longest wait, over the limit), and lets the next in line look again
    /// (a turn may still be free).
    fn grant(self: &Arc<Self>, waiting: &mut Waiting<'_>, late: bool) -> Turn {
        let mut line = self.lock();
        if let Some(place) = waiting.place.take() {
            line.waiting.remove(&place);
        }
        line.sending += 1;
        drop(line);
        self.changed.notify_waiters();
        Turn {
            turns: self.clone(),
            late,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Starts a waiter for `remaining` that reports `name` when it gets its
    /// turn and keeps the turn until told to let go.
    fn waiter(
        turns: &Arc<UploadTurns>,
        remaining: u64,
        name: &'static str,
        got: tokio::sync::mpsc::UnboundedSender<(&'static str, bool)>,
    ) -> tokio::sync::oneshot::Sender<()> {
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let turns = turns.clone();
        tokio::spawn(async move {
            let turn = turns.take(remaining, Duration::from_secs(60)).await;
            let _ = got.send((name, turn.late));
            let _ = released.await;
            drop(turn);
        });
        release
    }

    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_requester_with_the_least_left_goes_first_and_the_limit_holds() {
        let turns = Arc::new(UploadTurns::default());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        // Two take the free turns at once.
        let a = waiter(&turns, 900, "a", tx.clone());
        let b = waiter(&turns, 800, "b", tx.clone());
        settle().await;
        let mut first: Vec<_> = [rx.recv().await.unwrap(), rx.recv().await.unwrap()].into();
        first.sort();
        assert_eq!(first, [("a", false), ("b", false)]);
        // Three wait, arriving most-left first.
        let c = waiter(&turns, 700, "c", tx.clone());
        settle().await;
        let d = waiter(&turns, 100, "d", tx.clone());
        settle().await;
        let e = waiter(&turns, 100, "e", tx.clone());
        settle().await;
        assert_eq!(turns.counts(), (2, 3));
        assert!(rx.try_recv().is_err(), "nobody past the limit");
        // A turn frees: the one with the least left goes (d before e: same
        // left, d came first), then e, then c.
        a.send(()).unwrap();
        assert_eq!(rx.recv().await.unwrap(), ("d", false));
        settle().await;
        assert!(rx.try_recv().is_err());
        b.send(()).unwrap();
        assert_eq!(rx.recv().await.unwrap(), ("e", false));
        d.send(()).unwrap();
        assert_eq!(rx.recv().await.unwrap(), ("c", false));
        assert_eq!(turns.counts(), (2, 0));
        e.send(()).unwrap();
        c.send(()).unwrap();
        settle().await;
        assert_eq!(turns.counts(), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_sends_anyway_after_the_longest_wait_and_one_that_leaves_frees_its_place() {
        let turns = Arc::new(UploadTurns::default());
        let held = [
            turns.take(0, LONGEST_WAIT).await,
            turns.take(0, LONGEST_WAIT).await,
        ];
        assert!(held.iter().all(|t| !t.late));
        // One gives up waiting (its requester went away): no place is kept.
        let gone =
            tokio::time::timeout(Duration::from_millis(10), turns.take(5, LONGEST_WAIT)).await;
        assert!(gone.is_err());
        assert_eq!(turns.counts(), (2, 0));
        // One waits out the longest wait: it sends, over the limit, late.
        let before = tokio::time::Instant::now();
        let late = turns.take(5, LONGEST_WAIT).await;
        assert!(late.late);
        assert_eq!(tokio::time::Instant::now() - before, LONGEST_WAIT);
        assert_eq!(turns.counts(), (3, 0));
        drop(held);
        drop(late);
        assert_eq!(turns.counts(), (0, 0));
        // With a turn free, nobody waits.
        let t = tokio::time::timeout(Duration::from_millis(1), turns.take(7, LONGEST_WAIT))
            .await
            .expect("a free turn is taken at once");
        assert!(!t.late);
    }
}
