// SPDX-License-Identifier: MIT OR Apache-2.0
//! [`ShmStream`]: a V4V stream whose bytes pass through memory shared with the daemon.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::datagram::poll_until;
use super::proto::{Reply, Request, SockAddr, Via};
use super::stream::{End, query_end};
use super::{Error, handshake_passing, socket_path};
use crate::chan::{ChanError, ChanMemory, Consumer, Producer, Pushed};

/// A V4V stream like [`Stream`](super::Stream), whose bytes travel between this process and the
/// daemon through two shared-memory channels (sealed memfds, one each way) rather than through
/// the Unix connection, which then carries only wake-ups ("doorbell" bytes, sent only when the
/// other side sleeps) and the end of the stream. A write is a copy into shared memory, a read a
/// copy out of it; neither makes a system call while the other side keeps up. The peer cannot
/// tell: it may use a [`Stream`](super::Stream), socat, or another `ShmStream`.
///
/// Use it where a stream carries bulk data or many small exchanges and the program reads and
/// writes it itself. A [`Stream`](super::Stream) is what to hand to other programs (its
/// descriptor *is* the byte stream); this one's descriptor is not.
///
/// Reading and writing behave as on a [`Stream`](super::Stream): blocking by default, with
/// timeouts (`WouldBlock` when one passes) or non-blocking mode; end of file for an orderly
/// close and `ConnectionReset` (or the kind `CLOSED` names) for a reset.
///
/// # Readiness
/// For an event loop, its descriptor ([`AsRawFd`]) polls **readable** when the stream may have
/// become readable *or writable*: after a read or write returned `WouldBlock`, wait for
/// readable (never for writable: the descriptor is always writable), then retry both. It polls
/// readable only after such a `WouldBlock` (edge-triggered use, as mio and tokio do, works;
/// level-triggered use also works, as long as the program reads until `WouldBlock`).
#[derive(Debug)]
pub struct ShmStream {
    sock: UnixStream,
    /// To the daemon.
    tx: Producer,
    /// From the daemon.
    rx: Consumer,
    local_port: u32,
    peer: SockAddr,
    id: u64,
    daemon: PathBuf,
    nonblocking: bool,
    read_timeout: Option<Duration>,
    write_timeout: Option<Duration>,
    /// The peer's end marker was read: every later read is end of file.
    rx_ended: bool,
    /// Our end marker is published (`shutdown(Write)`).
    tx_ended: bool,
    /// The daemon closed the connection: the stream is over (the channels may still hold what
    /// came before).
    closed: bool,
    ended: Option<End>,
}

/// The capacity of each channel: a whole message of the daemon's fits in one record (a quarter
/// of the capacity), and one write of up to 128 KiB is one record.
pub const DEFAULT_CAPACITY: usize = 512 * 1024;

fn corrupt(e: ChanError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("stream channel: {e}"))
}

impl ShmStream {
    /// Connects to `addr` through the daemon at `V4V_SOCKET` (or the default path).
    pub fn connect(addr: SockAddr) -> Result<Self, Error> {
        Self::connect_with(&socket_path(), addr)
    }

    /// Connects through the daemon at `daemon`, with channels of [`DEFAULT_CAPACITY`].
    pub fn connect_with(daemon: &Path, addr: SockAddr) -> Result<Self, Error> {
        Self::connect_with_capacity(daemon, addr, DEFAULT_CAPACITY)
    }

    /// Connects through the daemon at `daemon`, with channels of `capacity` bytes each (a power
    /// of two from 4 KiB; the daemon takes up to 4 MiB).
    pub fn connect_with_capacity(
        daemon: &Path,
        addr: SockAddr,
        capacity: usize,
    ) -> Result<Self, Error> {
        if addr.port == 0 {
            return Err(Error::Invalid("port 0 is not a destination".into()));
        }
        let ch = Channels::create(capacity)?;
        let req = Request::Connect(addr, ch.via());
        match handshake_passing(daemon, &req, "", &ch.fds())? {
            (sock, Reply::Connected { local_port, id }) => {
                ch.into_stream(sock, local_port, addr, id, daemon)
            }
            (_, other) => Err(Error::Protocol(format!("unexpected CONNECT reply {other}"))),
        }
    }

    /// Takes the announced connection `id` on `port` (`None`: gone before we came).
    pub(crate) fn accept_announced(
        daemon: &Path,
        port: u32,
        id: u64,
    ) -> Result<Option<(Self, SockAddr)>, Error> {
        let ch = Channels::create(DEFAULT_CAPACITY)?;
        let req = Request::Accept(port, Some(id), ch.via());
        match handshake_passing(daemon, &req, "", &ch.fds()) {
            Ok((sock, Reply::Accepted { peer, id })) => {
                Ok(Some((ch.into_stream(sock, port, peer, id, daemon)?, peer)))
            }
            Ok((_, other)) => Err(Error::Protocol(format!("unexpected ACCEPT reply {other}"))),
            Err(Error::Daemon { code, .. }) if code == "ENOENT" => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Aborts the stream: the peer reads a reset, not end of file. Dropping the stream is an
    /// orderly close.
    pub fn abort(self) -> Result<(), Error> {
        super::handshake(&self.daemon, &Request::Reset(self.id)).map(|_| ())
    }

    /// The daemon's id for this stream (as `CLOSED ID` takes it).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The local ring port the stream's replies arrive on.
    pub fn local_port(&self) -> u32 {
        self.local_port
    }

    pub fn peer_addr(&self) -> SockAddr {
        self.peer
    }

    /// `Shutdown::Write` (or `Both`) sends the peer an orderly end of stream after everything
    /// written; it never waits (the end needs no room in the channel). Later writes fail with
    /// `BrokenPipe`. `Shutdown::Read` has no effect: what arrives is still read.
    pub fn shutdown(&mut self, how: Shutdown) -> io::Result<()> {
        if how == Shutdown::Read || self.tx_ended {
            return Ok(());
        }
        self.check_open_for_write()?;
        self.tx_ended = true;
        if self.tx.close().map_err(corrupt)? {
            self.ring();
        }
        Ok(())
    }

    pub fn set_nonblocking(&mut self, on: bool) -> io::Result<()> {
        self.nonblocking = on;
        Ok(())
    }

    /// A zero duration is refused, as for sockets.
    pub fn set_read_timeout(&mut self, t: Option<Duration>) -> io::Result<()> {
        if t == Some(Duration::ZERO) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "zero timeout"));
        }
        self.read_timeout = t;
        Ok(())
    }

    pub fn set_write_timeout(&mut self, t: Option<Duration>) -> io::Result<()> {
        if t == Some(Duration::ZERO) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "zero timeout"));
        }
        self.write_timeout = t;
        Ok(())
    }

    /// Wakes the daemon (one byte; a full socket already holds bytes that will).
    fn ring(&mut self) {
        // SAFETY: one byte from a live buffer; never blocks, never raises SIGPIPE. A failure
        // means the daemon closed the connection, which the next wait reports.
        unsafe {
            libc::send(
                self.sock.as_raw_fd(),
                [1u8].as_ptr().cast(),
                1,
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
    }

    /// Reads doorbell bytes off the socket; notes when the daemon closed it.
    fn drain_socket(&mut self) -> io::Result<()> {
        let mut b = [0u8; 256];
        loop {
            // SAFETY: `b` is writable for its length; MSG_DONTWAIT: never sleeps.
            let n = unsafe {
                libc::recv(
                    self.sock.as_raw_fd(),
                    b.as_mut_ptr().cast(),
                    b.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            match n {
                0 => {
                    self.closed = true;
                    return Ok(());
                }
                n if n > 0 => continue,
                _ => {}
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::WouldBlock => return Ok(()),
                io::ErrorKind::Interrupted => {}
                io::ErrorKind::ConnectionReset => {
                    self.closed = true;
                    return Ok(());
                }
                _ => return Err(e),
            }
        }
    }

    /// Sleeps until the daemon rings or closes (or `deadline`: `WouldBlock`, as for a socket
    /// with a timeout). In non-blocking mode `WouldBlock` at once; a reader (`drain`) first
    /// takes the doorbells, so that a closed connection is seen and the descriptor polls
    /// readable only for what comes next. A writer leaves them: one may be the reader's.
    fn wait(&mut self, deadline: Option<Instant>, drain: bool) -> io::Result<()> {
        if self.nonblocking {
            if drain {
                self.drain_socket()?;
                if self.closed {
                    return Ok(());
                }
            }
            return Err(io::ErrorKind::WouldBlock.into());
        }
        if poll_until(self.sock.as_raw_fd(), libc::POLLIN, deadline)? == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.drain_socket()
    }

    /// How the stream ended, asked of the daemon once (a reset is final).
    fn end(&mut self) -> End {
        if let Some(e @ End::Reset(..)) = &self.ended {
            return e.clone();
        }
        let e = query_end(&self.daemon, self.id);
        self.ended = Some(e.clone());
        e
    }

    /// Fails a write once the stream is over: with the reset's error, or `BrokenPipe`.
    fn check_open_for_write(&mut self) -> io::Result<()> {
        if self.tx_ended {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the stream was shut down for writing",
            ));
        }
        if !self.closed {
            return Ok(());
        }
        match self.end() {
            End::Reset(kind, msg) => Err(io::Error::new(kind, msg)),
            End::Eof => Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the stream is closed",
            )),
        }
    }
}

impl Read for ShmStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() || self.rx_ended {
            return Ok(0);
        }
        let deadline = self.read_timeout.map(|t| Instant::now() + t);
        loop {
            let (n, end) = self.rx.read_bytes(buf).map_err(corrupt)?;
            if self.rx.space_doorbell_wanted().map_err(corrupt)? {
                self.ring();
            }
            if end {
                self.rx_ended = true;
            }
            if n > 0 || end {
                return Ok(n);
            }
            if self.closed {
                // Everything that came before the close is read: orderly, or reset? (Asked
                // once: an orderly end stays the end of what is read.)
                return match self.end() {
                    End::Eof => {
                        self.rx_ended = true;
                        Ok(0)
                    }
                    End::Reset(kind, msg) => Err(io::Error::new(kind, msg)),
                };
            }
            if !self.rx.prepare_sleep().map_err(corrupt)? {
                continue;
            }
            self.wait(deadline, true)?;
        }
    }
}

impl Write for ShmStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let max = self.tx.chan().max_record();
        let deadline = self.write_timeout.map(|t| Instant::now() + t);
        loop {
            self.check_open_for_write()?;
            let (mut done, mut bell) = (0, false);
            while done < buf.len() {
                let k = (buf.len() - done).min(max);
                match self.tx.push(&[&buf[done..done + k]]).map_err(corrupt)? {
                    Pushed::Done { doorbell } => {
                        bell |= doorbell;
                        done += k;
                    }
                    Pushed::Full => break,
                }
            }
            if bell {
                self.ring();
            }
            if done > 0 {
                return Ok(done);
            }
            if self
                .tx
                .wait_for_space(buf.len().min(max))
                .map_err(corrupt)?
            {
                continue;
            }
            self.wait(deadline, false)?;
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsRawFd for ShmStream {
    /// See [Readiness](ShmStream#readiness).
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

impl AsFd for ShmStream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

/// The two channels of a stream being set up: this side's ends and the descriptors to pass.
struct Channels {
    tx: ChanMemory,
    rx: ChanMemory,
    tx_fd: std::os::fd::OwnedFd,
    rx_fd: std::os::fd::OwnedFd,
    capacity: usize,
}

impl Channels {
    fn create(capacity: usize) -> Result<Self, Error> {
        let make = || ChanMemory::create(capacity).map_err(|e| Error::Invalid(e.to_string()));
        let (tx, tx_fd) = make()?;
        let (rx, rx_fd) = make()?;
        Ok(Channels {
            tx,
            rx,
            tx_fd,
            rx_fd,
            capacity,
        })
    }

    fn via(&self) -> Via {
        Via::Shm(self.capacity as u32)
    }

    /// Client to daemon first.
    fn fds(&self) -> [RawFd; 2] {
        [self.tx_fd.as_raw_fd(), self.rx_fd.as_raw_fd()]
    }

    fn into_stream(
        self,
        sock: UnixStream,
        local_port: u32,
        peer: SockAddr,
        id: u64,
        daemon: &Path,
    ) -> Result<ShmStream, Error> {
        let proto = |e: ChanError| Error::Protocol(e.to_string());
        Ok(ShmStream {
            sock,
            tx: Producer::new(&self.tx).map_err(proto)?,
            rx: Consumer::new(&self.rx).map_err(proto)?,
            local_port,
            peer,
            id,
            daemon: daemon.to_path_buf(),
            nonblocking: false,
            read_timeout: None,
            write_timeout: None,
            rx_ended: false,
            tx_ended: false,
            closed: false,
            ended: None,
        })
    }
}
