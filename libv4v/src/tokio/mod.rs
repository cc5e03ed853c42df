// SPDX-License-Identifier: MIT OR Apache-2.0
//! The client API on the tokio runtime (cargo feature `tokio`), shaped like `tokio::net`.
//!
//! - [`Datagram`]: `bind`, async `send_to` / `recv_from`; message boundaries and the sender's
//!   address (written by the hypervisor, not spoofable) are kept, as in the blocking
//!   [`client::Datagram`](crate::client::Datagram).
//! - [`Stream`]: `connect`, [`AsyncRead`](::tokio::io::AsyncRead) /
//!   [`AsyncWrite`](::tokio::io::AsyncWrite); `poll_shutdown` (`AsyncWriteExt::shutdown`) is the
//!   orderly close, [`Stream::abort`] the reset; [`Stream::split`] and [`Stream::into_split`].
//! - [`Listener`]: `bind`, `accept`, and [`Incoming`], a `futures_core::Stream` of connections.
//!
//! Each type owns the same Unix connection to v4vd as its blocking twin in [`crate::client`]
//! (speaking the protocol of `docs/protocol.md`), registered with tokio's reactor; `TryFrom` the
//! blocking type and `into_std` convert both ways, and the descriptor is available as
//! [`AsFd`](std::os::fd::AsFd). A stream also converts to and from an
//! [`OwnedFd`](std::os::fd::OwnedFd) through the blocking type (`OwnedFd::from(s.into_std()?)`,
//! and [`client::Stream::from_fd`](crate::client::Stream::from_fd) with the stream's id, which
//! telling a reset from an orderly close needs); the datagram and listener connections carry
//! framing and announcements that the types buffer, so they are not handed over bare.
//!
//! **End of a stream.** As in the blocking API, an orderly close reads as end of file and a reset
//! as an error of kind `ConnectionReset` (or `PermissionDenied`, `HostUnreachable`, `TimedOut`,
//! `ConnectionAborted`, `NotConnected`) with the same message: when the connection ends, the
//! stream asks the daemon how (`CLOSED ID`).
//!
//! **Nothing blocks the runtime.** The requests that wait for the daemon (`CONNECT`, which waits
//! for the peer to accept, `ACCEPT`, `DGRAM`, `LISTEN`, `CLOSED`, `RESET`) are the blocking
//! client's own, run on tokio's blocking thread pool (`spawn_blocking`), so the two APIs cannot
//! drift; the data path (stream bytes, datagram frames, `INCOMING` lines) is non-blocking I/O on
//! the reactor. Every type must be created and used inside a tokio runtime.
//!
//! This module owns only the async wrappers: the protocol and its errors belong to
//! [`crate::client`].

mod datagram;
mod listener;
mod stream;

pub use datagram::Datagram;
pub use listener::{Incoming, Listener};
pub use stream::{OwnedReadHalf, OwnedWriteHalf, ReadHalf, Stream, WriteHalf};

use crate::client::Error;

/// Runs a blocking client call on tokio's blocking pool.
async fn blocking<T, F>(f: F) -> Result<T, Error>
where
    F: FnOnce() -> Result<T, Error> + Send + 'static,
    T: Send + 'static,
{
    ::tokio::task::spawn_blocking(f).await.map_err(|e| {
        Error::Io(std::io::Error::other(format!(
            "v4v request task failed: {e}"
        )))
    })?
}
