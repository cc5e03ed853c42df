// SPDX-License-Identifier: MIT OR Apache-2.0
//! Rate limiting of the warnings local users can cause (refused requests, connections past a
//! limit, bad frames): per uid, the first [`BURST`] of each [`WINDOW`] are logged, the rest
//! counted, and one "suppressed N" line per uid closes the window. A user cannot flood the log,
//! and the count says what happened. ACL audit lines (changes, and failed changes by
//! administrators) do not come through here: they are never suppressed.
//!
//! Owns only the counters; `user_warn!` (in `daemon/mod.rs`) asks it before logging.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Warnings logged per uid and window.
pub(super) const BURST: u32 = 10;
/// The counting window.
pub(super) const WINDOW: Duration = Duration::from_secs(10);
/// Stands for the user of a connection whose credentials are not known yet.
pub(super) const UNKNOWN_UID: u32 = u32::MAX;

#[derive(Debug, Default, Clone, Copy)]
struct Count {
    logged: u32,
    suppressed: u64,
}

/// Per-uid warning counters of the current window.
pub(super) struct WarnLimiter {
    since: Instant,
    counts: HashMap<u32, Count>,
}

impl WarnLimiter {
    pub fn new(now: Instant) -> Self {
        WarnLimiter {
            since: now,
            counts: HashMap::new(),
        }
    }

    /// Whether a warning about `uid` may be logged now (else it is counted).
    pub fn allow(&mut self, uid: u32) -> bool {
        let c = self.counts.entry(uid).or_default();
        if c.logged < BURST {
            c.logged += 1;
            true
        } else {
            c.suppressed += 1;
            false
        }
    }

    /// At the end of a window: the uids whose warnings were suppressed, and how many; the
    /// counters start again.
    pub fn roll(&mut self, now: Instant) -> Vec<(u32, u64)> {
        if now.duration_since(self.since) < WINDOW {
            return Vec::new();
        }
        self.since = now;
        let mut out: Vec<(u32, u64)> = self
            .counts
            .drain()
            .filter(|(_, c)| c.suppressed > 0)
            .map(|(u, c)| (u, c.suppressed))
            .collect();
        out.sort_unstable();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_per_uid_then_counts_until_the_window_ends() {
        let t0 = Instant::now();
        let mut w = WarnLimiter::new(t0);
        for _ in 0..BURST {
            assert!(w.allow(7));
        }
        assert!(!w.allow(7));
        assert!(!w.allow(7));
        assert!(w.allow(8), "another user has its own budget");
        assert!(w.roll(t0 + WINDOW / 2).is_empty(), "the window is not over");
        assert_eq!(w.roll(t0 + WINDOW), vec![(7, 2)]);
        assert!(w.allow(7), "a new window");
        assert!(w.roll(t0 + 2 * WINDOW).is_empty(), "nothing suppressed");
    }
}
