// SPDX-License-Identifier: MIT OR Apache-2.0
//! [`EventFd`]: a pollable "something happened" flag, the stand-in for a domain's event channel
//! in the userspace hypervisors (the simulator's model, the C harness backend).
//!
//! It owns one non-blocking eventfd and nothing else. Signalling makes it readable; taking the
//! event makes it unreadable again. Signals are not counted: many signals before a take are one
//! event, which is all an event channel promises.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// A non-blocking, close-on-exec eventfd used as a level-triggered event.
#[derive(Debug)]
pub struct EventFd(OwnedFd);

impl EventFd {
    /// A new event, not signalled.
    pub fn new() -> io::Result<Self> {
        // SAFETY: eventfd takes an initial count and flags; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor that nothing else owns.
        Ok(EventFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Makes the event readable. Never blocks: a saturated counter (which would take 2^64 - 1
    /// signals) still leaves the event readable, which is all a signal means.
    pub fn signal(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to our own non-blocking eventfd.
        unsafe { libc::write(self.0.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    /// Consumes the event: whether it was signalled. Never blocks.
    pub fn take(&self) -> bool {
        let mut v: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64 from our own non-blocking eventfd.
        let n = unsafe { libc::read(self.0.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
        n == 8
    }
}

impl AsFd for EventFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl AsRawFd for EventFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_merge_and_take_clears() {
        let e = EventFd::new().expect("eventfd");
        assert!(!e.take());
        e.signal();
        e.signal();
        assert!(e.take());
        assert!(!e.take());
    }
}
