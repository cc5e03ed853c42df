// SPDX-License-Identifier: MIT OR Apache-2.0
//! Per-user memory budgets: every buffer the daemon keeps for a user's clients is reserved
//! here first, at its largest, and released when it goes: a stream's buffers (its window and a
//! few messages), a listening port's unaccepted connections, a datagram client's output buffer
//! and its partial frame. A user other than root past `max_buffer_per_user` is refused new
//! buffers (its clients are paced, or its requests refused), never another user. So the
//! daemon's memory stays under its own plus the budgets in use.
//!
//! Owns only the counts; the holders record what they reserved and give it back.

use std::collections::HashMap;

use super::Daemon;

/// Bytes reserved per uid.
pub(super) struct Budgets {
    limit: usize,
    used: HashMap<u32, usize>,
}

impl Budgets {
    pub fn new(limit: usize) -> Self {
        Budgets {
            limit,
            used: HashMap::new(),
        }
    }

    /// Reserves `n` bytes for `uid` (root always gets them), or says why not.
    pub fn reserve(&mut self, uid: u32, n: usize) -> Result<(), String> {
        let used = self.used.get(&uid).copied().unwrap_or(0);
        if uid != 0 && used.saturating_add(n) > self.limit {
            return Err(format!(
                "uid {uid} has {} KiB buffered and needs {} KiB more: max_buffer_per_user is {} KiB",
                used / 1024,
                n.div_ceil(1024),
                self.limit / 1024
            ));
        }
        self.used.insert(uid, used + n);
        Ok(())
    }

    /// Gives back `n` bytes of `uid`'s.
    pub fn release(&mut self, uid: u32, n: usize) {
        if let Some(u) = self.used.get_mut(&uid) {
            *u = u.saturating_sub(n);
            if *u == 0 {
                self.used.remove(&uid);
            }
        }
    }

    /// Bytes reserved for `uid`.
    #[allow(dead_code)] // for STATUS, once it is typed (issue 10, defect 2); tested below
    pub fn used(&self, uid: u32) -> usize {
        self.used.get(&uid).copied().unwrap_or(0)
    }

    /// Bytes reserved for everyone.
    pub fn total(&self) -> usize {
        self.used.values().sum()
    }
}

impl Daemon {
    /// Retries the clients paced for their user's memory budget (some may have come back).
    pub(super) fn unpace(&mut self) {
        for t in self.clients.take_paced() {
            if let Some(c) = self.clients.get_mut(t) {
                c.paced = false;
            }
            self.wake(t);
        }
    }

    /// What one stream may buffer: the window for its client, and its queued messages.
    pub(super) fn stream_cost(&self) -> usize {
        self.cfg.conn_window as usize + 2 * self.cfg.chunk + 4096
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_are_refused_past_their_budget_and_root_never() {
        let mut b = Budgets::new(100);
        b.reserve(7, 60).expect("within");
        let e = b.reserve(7, 41).expect_err("past the budget");
        assert!(
            e.contains("max_buffer_per_user is 0 KiB") && e.contains("uid 7"),
            "{e}"
        );
        b.reserve(8, 100).expect("another user has its own budget");
        b.reserve(0, 1000).expect("root is not limited");
        b.release(7, 60);
        assert_eq!(b.used(7), 0);
        b.reserve(7, 100).expect("released");
        assert_eq!(b.total(), 1200);
    }
}
