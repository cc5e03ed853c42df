// SPDX-License-Identifier: MIT OR Apache-2.0
//! A datagram client's wake-ups that are not frames on its socket (docs/protocol.md, "Doorbell"
//! and "Wake pipe"): its eventfd doorbell to the daemon, and the daemon's end of its wake pipe.
//!
//! A client that offers a shared-memory channel may pass an eventfd with it (`CHAN_F_BELL`). It
//! then rings the daemon by adding 1 to the eventfd instead of writing a RING frame to its
//! socket: a cheaper wake-up than a socket's, and one that does not queue behind what the socket
//! holds. With a receive channel it may also pass a pipe (`CHAN_F_WAKE_PIPE`), which the daemon
//! writes instead of a RING frame while the client sleeps inside a call. This module owns those
//! descriptors and nothing else; what a ring means (pump the client, or wake it) is its callers'
//! business. Every one is counted while held: they come out of the clients' descriptor budget.
//!
//! Trust: the daemon never reads or writes the eventfd. It polls it edge-triggered, which reports
//! every write to an eventfd whether or not its counter was read, so nothing the client does to
//! the counter (fill it, change its flags: the open file description is shared) can block the
//! daemon or hide anything but the client's own rings. Only an eventfd is taken (a socket or pipe
//! would let the client make the daemon hold buffered data or keep a peer alive), checked by the
//! kernel's own name for the descriptor.
//!
//! The client keeps its own copy of the descriptor, so the epoll entry would outlive our close:
//! a [`ClientBell`] deregisters before it closes, when its client goes.
//!
//! The wake pipe's descriptor as passed shares its open file description (and so `O_NONBLOCK`)
//! with the client. The daemon opens the pipe anew through `/proc/self/fd` ([`take_wake_pipe`]):
//! a pipe opened by name gets a description of its own, non-blocking here whatever the client
//! does to its own; the passed descriptor is closed at once. A full pipe means a wake-up is
//! pending already. Only a pipe is taken (a FIFO in the file system or anything else is refused).

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};

/// Set in the token of a client's doorbell; the rest is the client's token. Client tokens are
/// slab indexes, far below it.
pub(super) const BELL_BIT: usize = 1 << (usize::BITS - 2);

/// A descriptor a client made the daemon hold, counted in `live` while held.
pub(super) struct CountedFd {
    fd: OwnedFd,
    live: Arc<AtomicUsize>,
}

impl CountedFd {
    fn new(fd: OwnedFd, live: &Arc<AtomicUsize>) -> Self {
        live.fetch_add(1, Ordering::Relaxed);
        CountedFd {
            fd,
            live: live.clone(),
        }
    }

    pub fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl Drop for CountedFd {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for CountedFd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("CountedFd").field(&self.as_raw_fd()).finish()
    }
}

/// A client's doorbell, registered with the loop while it lives.
pub(super) struct ClientBell {
    fd: CountedFd,
    registry: Arc<Registry>,
}

/// Why a doorbell or wake pipe was not taken.
#[derive(Debug, thiserror::Error)]
pub(super) enum BellError {
    #[error("the doorbell is not an eventfd ({0})")]
    NotAnEventfd(String),
    #[error("registering the doorbell: {0}")]
    Register(io::Error),
    #[error("the wake pipe is not a pipe ({0})")]
    NotAPipe(String),
    #[error("opening the wake pipe for writing: {0}")]
    Reopen(io::Error),
}

/// What the kernel calls the descriptor (`anon_inode:[eventfd]`, `pipe:[1234]`, a path).
fn kernel_name(fd: &OwnedFd) -> String {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|e| format!("unreadable: {e}"))
}

/// Takes a client's wake pipe (either end of it): the daemon's own non-blocking description
/// of its write end.
pub(super) fn take_wake_pipe(fd: OwnedFd, live: &Arc<AtomicUsize>) -> Result<CountedFd, BellError> {
    let what = kernel_name(&fd);
    if !what.starts_with("pipe:[") {
        return Err(BellError::NotAPipe(what));
    }
    let ours = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map_err(BellError::Reopen)?;
    drop(fd);
    Ok(CountedFd::new(ours.into(), live))
}

/// Writes one byte into a wake pipe. `false`: the pipe is broken (the client closed its read
/// end); a full one has a wake-up pending and counts as written.
pub(super) fn wake(pipe: &CountedFd) -> bool {
    v4v::backend::sim::ring_byte(pipe.fd.as_fd()).is_ok()
}

impl ClientBell {
    /// Registers client `client`'s eventfd; `live` counts the doorbells held.
    pub fn take(
        fd: OwnedFd,
        client: usize,
        registry: &Arc<Registry>,
        live: &Arc<AtomicUsize>,
    ) -> Result<Self, BellError> {
        let what = kernel_name(&fd);
        if what != "anon_inode:[eventfd]" {
            return Err(BellError::NotAnEventfd(what));
        }
        registry
            .register(
                &mut SourceFd(&fd.as_raw_fd()),
                Token(client | BELL_BIT),
                Interest::READABLE,
            )
            .map_err(BellError::Register)?;
        Ok(ClientBell {
            fd: CountedFd::new(fd, live),
            registry: registry.clone(),
        })
    }
}

impl Drop for ClientBell {
    fn drop(&mut self) {
        // Before the close: the client's copy keeps the file, and with it the epoll entry.
        if let Err(e) = self
            .registry
            .deregister(&mut SourceFd(&self.fd.as_raw_fd()))
        {
            tracing::warn!("deregistering a client's doorbell: {e}");
        }
    }
}

impl std::fmt::Debug for ClientBell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientBell")
            .field("fd", &self.fd.as_raw_fd())
            .finish()
    }
}
