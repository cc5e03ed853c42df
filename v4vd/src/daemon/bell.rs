// SPDX-License-Identifier: MIT OR Apache-2.0
//! A datagram client's eventfd doorbell (docs/protocol.md, "Doorbell").
//!
//! A client that offers a shared-memory channel may pass an eventfd with it (`CHAN_F_BELL`). It
//! then rings the daemon by adding 1 to the eventfd instead of writing a RING frame to its
//! socket: a cheaper wake-up than a socket's, and one that does not queue behind what the socket
//! holds. This module owns those descriptors and nothing else; what a ring means (pump the client)
//! is the loop's business.
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

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};

/// Set in the token of a client's doorbell; the rest is the client's token. Client tokens are
/// slab indexes, far below it.
pub(super) const BELL_BIT: usize = 1 << (usize::BITS - 2);

/// A client's doorbell, registered with the loop while it lives.
pub(super) struct ClientBell {
    fd: OwnedFd,
    registry: Arc<Registry>,
    live: Arc<AtomicUsize>,
}

/// Why a doorbell was not taken.
#[derive(Debug, thiserror::Error)]
pub(super) enum BellError {
    #[error("the doorbell is not an eventfd ({0})")]
    NotAnEventfd(String),
    #[error("registering the doorbell: {0}")]
    Register(io::Error),
}

impl ClientBell {
    /// Registers client `client`'s eventfd; `live` counts the doorbells held.
    pub fn take(
        fd: OwnedFd,
        client: usize,
        registry: &Arc<Registry>,
        live: &Arc<AtomicUsize>,
    ) -> Result<Self, BellError> {
        let what = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_else(|e| format!("unreadable: {e}"));
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
        live.fetch_add(1, Ordering::Relaxed);
        Ok(ClientBell {
            fd,
            registry: registry.clone(),
            live: live.clone(),
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
        self.live.fetch_sub(1, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for ClientBell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientBell")
            .field("fd", &self.fd.as_raw_fd())
            .finish()
    }
}
