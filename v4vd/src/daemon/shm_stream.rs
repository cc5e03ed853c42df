// SPDX-License-Identifier: MIT OR Apache-2.0
//! Streams whose bytes travel through memory shared with the client (`CONNECT ... SHM CAP`,
//! `ACCEPT ... SHM CAP`) instead of through its Unix connection.
//!
//! Owns a stream client's two channels ([`ShmPath`]): `tx`, which the client fills and this
//! daemon reads as bytes into the stream's data messages, and `rx`, which this daemon fills
//! with what the peer sent. The client's Unix connection then carries only doorbell bytes (any
//! byte: "look at the channels") both ways. Ends are in-band, so that both sides can still
//! ring each other after one direction ended: a channel's `closed` word is the end of that
//! direction (the client's `shutdown(Write)`; the peer's orderly close, set after the last data
//! was published), and it needs no room, so a shutdown never waits for the reader.
//! The client closing its connection is its end too, after everything it published; data for
//! it after that resets the stream, as `EPIPE` does on the socket path. The stream's state
//! machine, credit and window are the same for both paths: bytes put into `rx` count as taken
//! by the client, as bytes written to its socket do.
//!
//! Trust: the client is untrusted. Its channels are checked by `v4v::chan` on every access; a
//! channel found corrupt ends only that client's stream (a reset to the peer, a warning).
//! What it garbles is its own traffic. The mapping is bounded by [`MAX_CAPACITY`] per channel
//! and counted in the user's buffer budget ([`ShmPath::mapped_bytes`]).
//! This module never sends to the hypervisor; the stream code does, with what it reads here.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::os::fd::OwnedFd;

use mio::net::UnixStream;
use v4v::chan::{self, ChanError, ChanMemory, Consumer, Producer, Pushed};

/// The largest channel a client may offer (each way): the daemon maps it.
pub(super) const MAX_CAPACITY: usize = 4 << 20;

/// A stream client's shared-memory channels.
pub(super) struct ShmPath {
    /// Client to daemon.
    tx: Consumer,
    /// Daemon to client.
    rx: Producer,
    /// Peer data for the client that `rx` had no room for yet (bounded by the stream's window).
    pending: VecDeque<u8>,
    /// The peer's end, to publish after `pending` (closing `rx`).
    end_pending: bool,
    /// The client closed `tx` (its `shutdown(Write)`) or its connection, and `tx` was read to
    /// its end: nothing more is read.
    tx_ended: bool,
    /// The client closed its connection: nothing it is given will be read.
    sock_closed: bool,
}

/// What filling a stream message from the client's channel found.
pub(super) enum Filled {
    /// Bytes read (more may follow).
    Bytes(usize),
    /// Nothing now; the channel will ring.
    Empty,
    /// Nothing, but doorbells were taken off the socket while peer data waits for room in
    /// `rx`: one may have said that `rx` has room, so look at it again before sleeping (the
    /// client rings once, and its byte is gone).
    Rang,
    /// Nothing yet, but the socket still holds doorbell bytes: a client writing more of them
    /// than it needs (a polite one writes one per arming). Its next write is the next look.
    Busy,
    /// The client ended its side (closed `tx`, or its connection), and everything it
    /// published before that was read.
    Eof,
    /// The client closed its connection with peer data unread (in `rx`, or waiting for room
    /// there): as closing a socket with unread input does, that resets the stream.
    Abandoned,
    /// The client's socket failed.
    Failed(io::Error),
    /// The client corrupted its channel.
    Corrupt(ChanError),
}

/// What one read of a client's socket found.
enum Bells {
    /// Doorbell bytes.
    Rang,
    /// Its end of file (or `ECONNRESET`).
    Closed,
    /// Nothing (`WouldBlock`).
    None,
    Interrupted,
    Failed(io::Error),
}

/// Why peer data cannot be given to the client.
#[derive(Debug)]
pub(super) enum Undeliverable {
    /// It corrupted its channel.
    Corrupt(ChanError),
    /// It closed its connection: it reads no more (a socket client would meet `EPIPE`).
    Gone,
}

impl std::fmt::Display for Undeliverable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Undeliverable::Corrupt(e) => write!(f, "its channel is corrupt: {e}"),
            Undeliverable::Gone => write!(f, "it closed its connection"),
        }
    }
}

impl From<ChanError> for Undeliverable {
    fn from(e: ChanError) -> Self {
        Undeliverable::Corrupt(e)
    }
}

impl ShmPath {
    /// Maps the channels a client passed: `fds[0]` client to daemon, `fds[1]` daemon to
    /// client, each of `capacity` data bytes. The reason is for the client's `ERR EINVAL`.
    pub fn take(fds: Vec<OwnedFd>, capacity: u32) -> Result<Box<ShmPath>, String> {
        let cap = capacity as usize;
        if cap > MAX_CAPACITY {
            return Err(format!(
                "a stream channel of {cap} bytes (at most {MAX_CAPACITY})"
            ));
        }
        let mut fds = fds.into_iter();
        let (Some(tx), Some(rx)) = (fds.next(), fds.next()) else {
            return Err("SHM needs two memfds passed with the request line (SCM_RIGHTS)".into());
        };
        let map = |fd| ChanMemory::map(fd, cap).map_err(|e| e.to_string());
        // The same memfd twice only garbles this client's own stream.
        let (tx, rx) = (map(tx)?, map(rx)?);
        Ok(Box::new(ShmPath {
            tx: Consumer::new(&tx).map_err(|e| e.to_string())?,
            rx: Producer::new(&rx).map_err(|e| e.to_string())?,
            pending: VecDeque::new(),
            end_pending: false,
            tx_ended: false,
            sock_closed: false,
        }))
    }

    /// Its connection failed under a doorbell we wrote (`EPIPE`): it is gone, as if it had
    /// closed.
    pub fn client_gone(&mut self) {
        self.sock_closed = true;
    }

    /// The client memory this daemon maps for the stream (both channels, headers included).
    pub fn mapped_bytes(&self) -> usize {
        2 * (chan::DATA_OFFSET + self.rx.chan().capacity())
    }

    /// Whether peer data (or the peer's end) still waits for room in `rx`.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty() || self.end_pending
    }

    /// Gives the client `data` (peer bytes): into `rx` as far as it has room, the rest kept in
    /// order behind what already waits. Returns the bytes published and whether the client
    /// sleeps on `rx` (ring it).
    pub fn deliver(&mut self, data: &[u8]) -> Result<(usize, bool), Undeliverable> {
        if self.sock_closed {
            return Err(Undeliverable::Gone);
        }
        if !self.pending.is_empty() {
            self.pending.extend(data);
            return self.flush();
        }
        let (n, bell) = publish(&mut self.rx, data)?;
        self.pending.extend(&data[n..]);
        Ok((n, bell))
    }

    /// The peer ended its side: the client reads end of file after what came before.
    pub fn finish(&mut self) -> Result<(usize, bool), Undeliverable> {
        self.end_pending = true;
        self.flush()
    }

    /// Moves waiting peer data (then the peer's end) into `rx`. Same result as
    /// [`ShmPath::deliver`].
    pub fn flush(&mut self) -> Result<(usize, bool), Undeliverable> {
        let (mut total, mut bell) = (0, false);
        while !self.pending.is_empty() {
            let (a, _) = self.pending.as_slices();
            let len = a.len();
            let (n, b) = publish(&mut self.rx, a)?;
            bell |= b;
            total += n;
            self.pending.drain(..n);
            if n < len {
                return Ok((total, bell));
            }
        }
        if self.end_pending {
            self.end_pending = false;
            bell |= self.rx.close()?;
        }
        Ok((total, bell))
    }

    /// While nothing may be sent for the client (no credit): reads the doorbells on its socket
    /// anyway, so that its close is seen (a client killed while it waits for credit would hold
    /// its stream forever). `Some(Filled::Abandoned)` when it closed with peer data unread;
    /// `Some(Filled::Rang)` when doorbells came while peer data waits for room in `rx`; `None`:
    /// nothing to do.
    pub fn watch(&mut self, sock: &mut UnixStream) -> Option<Filled> {
        let mut bells = [0u8; 4096];
        let mut rang = false;
        for _ in 0..8 {
            if self.sock_closed {
                break;
            }
            match self.read_bells(sock, &mut bells) {
                Bells::Rang => rang = true,
                Bells::Interrupted => {}
                Bells::Closed | Bells::None | Bells::Failed(_) => break,
            }
        }
        if self.sock_closed && self.left_unread() {
            return Some(Filled::Abandoned);
        }
        // A plain close is its end: `fill` reports it once `tx` is read to its end. Doorbells
        // matter here only if peer data waits for room in `rx`.
        (rang && self.has_pending()).then_some(Filled::Rang)
    }

    /// Fills `out` from `tx`. When `tx` is empty, reads the client's socket: doorbell bytes are
    /// dropped (and `tx` looked at again), its end of file (the client closed) is the client's
    /// end once `tx` is read to its end; an empty socket arms `tx`'s doorbell. Also returns
    /// whether the client waits for room in `tx` (ring it).
    pub fn fill(&mut self, sock: &mut UnixStream, out: &mut [u8]) -> (Filled, bool) {
        if self.tx_ended {
            return (Filled::Eof, false);
        }
        let mut bells = [0u8; 4096];
        let mut rang = false;
        for _ in 0..8 {
            match self.tx.read_bytes(out) {
                Ok((n, end)) => {
                    self.tx_ended = end;
                    let bell = self.tx.space_doorbell_wanted().unwrap_or(false);
                    if n > 0 {
                        return (Filled::Bytes(n), bell);
                    }
                    if end {
                        return (Filled::Eof, bell);
                    }
                }
                Err(e) => return (Filled::Corrupt(e), false),
            }
            if self.sock_closed {
                self.tx_ended = true;
                if self.left_unread() {
                    return (Filled::Abandoned, false);
                }
                return (Filled::Eof, false);
            }
            match self.read_bells(sock, &mut bells) {
                Bells::Rang => rang = true,
                Bells::Closed | Bells::Interrupted => {}
                Bells::None => match self.tx.prepare_sleep() {
                    Ok(true) if rang && self.has_pending() => return (Filled::Rang, false),
                    Ok(true) => return (Filled::Empty, false),
                    Ok(false) => {}
                    Err(e) => return (Filled::Corrupt(e), false),
                },
                Bells::Failed(e) => return (Filled::Failed(e), false),
            }
        }
        if rang && self.has_pending() {
            return (Filled::Rang, false);
        }
        (Filled::Busy, false)
    }

    /// One read of doorbells off the client's socket; notes its close (`ECONNRESET` too: it
    /// closed with doorbells unread, which are not data).
    fn read_bells(&mut self, sock: &mut UnixStream, bells: &mut [u8]) -> Bells {
        match sock.read(bells) {
            Ok(0) => {
                self.sock_closed = true;
                Bells::Closed
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                self.sock_closed = true;
                Bells::Closed
            }
            Ok(_) => Bells::Rang,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Bells::Interrupted,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Bells::None,
            Err(e) => Bells::Failed(e),
        }
    }

    /// Whether peer data for the client is unread (in `rx`, or waiting for room there): its
    /// close then resets the stream.
    fn left_unread(&self) -> bool {
        self.has_pending() || !self.rx.is_drained().unwrap_or(true)
    }
}

/// Publishes `data` as records while `rx` has room; when it has none, asks the client to
/// ring once it has (and looks again).
fn publish(rx: &mut Producer, mut data: &[u8]) -> Result<(usize, bool), ChanError> {
    let max = rx.chan().max_record();
    let (mut total, mut bell) = (0, false);
    // "Full", then "room now" (the client read meanwhile): the push after that succeeds, unless
    // the client moves its head back and forth, which only a hostile one does.
    let mut full_then_room = false;
    while !data.is_empty() {
        let k = data.len().min(max);
        match rx.push(&[&data[..k]])? {
            Pushed::Done { doorbell } => {
                bell |= doorbell;
                total += k;
                data = &data[k..];
                full_then_room = false;
            }
            // Asks to be rung: every exit from here leaves the request standing, or a client
            // that then reads everything sleeps with data waiting here.
            Pushed::Full if !rx.wait_for_space(k)? => break,
            Pushed::Full if full_then_room => {
                return Err(ChanError::Corrupt(
                    "its head moves back and forth (full, room, full again)",
                ));
            }
            Pushed::Full => full_then_room = true,
        }
    }
    Ok((total, bell))
}
