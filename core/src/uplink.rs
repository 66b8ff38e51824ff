//! The server's uplink as its own transfers show it (issue 12 point 5):
//! without `--egress-limit` the serve-or-refer rule still needs a figure for
//! what the server can send, so the server measures what it delivers while it
//! has more to send than it sends (busy), in windows of [`WINDOW_MS`], and
//! takes the best of the last [`SAMPLES`] windows. A window where a slow
//! reader, not the uplink, set the pace only understates; the best recent one
//! is the closest to the uplink. Pure: the caller passes the clock in.

use std::collections::VecDeque;

/// Length of one measuring window.
pub const WINDOW_MS: u64 = 1000;
/// Busy windows remembered (the estimate follows a changing uplink within
/// this many busy seconds).
pub const SAMPLES: usize = 30;

/// See the module docs.
#[derive(Debug, Clone, Default)]
pub struct UplinkEstimate {
    /// Start of the current busy window and bytes sent in it since.
    window: Option<(u64, u64)>,
    /// Bytes per second of the last busy windows.
    samples: VecDeque<u64>,
}

impl UplinkEstimate {
    /// `bytes` went out at `now_ms`; `busy` when more was owed than this (the
    /// pipe had work waiting). An idle moment ends the window unmeasured.
    pub fn sent(&mut self, now_ms: u64, bytes: u64, busy: bool) {
        if !busy {
            self.window = None;
            return;
        }
        let Some((start, sum)) = self.window else {
            // The window starts now; what this chunk carried went out before.
            self.window = Some((now_ms, 0));
            return;
        };
        let sum = sum.saturating_add(bytes);
        let elapsed = now_ms.saturating_sub(start);
        if elapsed >= WINDOW_MS {
            if self.samples.len() >= SAMPLES {
                self.samples.pop_front();
            }
            self.samples
                .push_back(sum.saturating_mul(1000) / elapsed.max(1));
            self.window = Some((now_ms, 0));
        } else {
            self.window = Some((start, sum));
        }
    }

    /// Bytes per second the uplink delivered at best lately, once measured.
    pub fn estimate(&self) -> Option<u64> {
        self.samples.iter().copied().max().filter(|b| *b > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_windows_measure_and_idle_ones_do_not() {
        let mut u = UplinkEstimate::default();
        assert_eq!(u.estimate(), None);
        // 64 KiB every 100 ms while busy: 640 KiB/s.
        for i in 0..=10 {
            u.sent(i * 100, 64 * 1024, true);
        }
        assert_eq!(u.estimate(), Some(640 * 1024));
        // Idle pauses are not counted as slow sending.
        u.sent(5_000, 1, false);
        u.sent(9_000, 64 * 1024, true);
        assert_eq!(u.estimate(), Some(640 * 1024));
        // A slower busy window does not lower the best recent one…
        for i in 1..=10 {
            u.sent(9_000 + i * 100, 16 * 1024, true);
        }
        assert_eq!(u.estimate(), Some(640 * 1024));
        // …until it has rolled out of the samples.
        for w in 0..SAMPLES as u64 {
            for i in 1..=10 {
                u.sent(20_000 + w * 1000 + i * 100, 16 * 1024, true);
            }
        }
        assert_eq!(u.estimate(), Some(160 * 1024));
    }
}
