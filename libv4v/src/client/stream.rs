// SPDX-License-Identifier: MIT OR Apache-2.0
//! [`Stream`] and [`Listener`]: V4V streams through the daemon.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use super::proto::{Request, SockAddr};
use super::{Error, handshake, socket_path};

/// A V4V stream, like `std::net::TcpStream`. After the handshake the Unix connection is the
/// byte stream itself, so reads and writes go straight to it.
///
/// The Unix connection ends the same way whether the peer closed orderly or the stream was
/// reset, so at end of stream (and on a broken pipe) the stream asks the daemon how it ended
/// (`CLOSED ID`): an orderly close reads as end of file, a reset as an error of kind
/// `ConnectionReset` (or `PermissionDenied` for the ACL, `HostUnreachable` for a vanished
/// peer, `TimedOut`, `ConnectionAborted`; `NotConnected` when the local daemon itself went
/// away) whose message says what happened. That question is one short blocking exchange with the
/// local daemon, made once per stream even in non-blocking mode.
#[derive(Debug)]
pub struct Stream {
    sock: UnixStream,
    local_port: u32,
    peer: SockAddr,
    id: u64,
    daemon: PathBuf,
    /// How the stream ended, once known.
    ended: Option<End>,
}

/// How a stream ended, as `CLOSED ID` answered.
#[derive(Debug, Clone)]
pub(crate) enum End {
    Eof,
    Reset(io::ErrorKind, String),
}

/// Splits an `OK` reply's arguments into the first field and the stream id.
fn reply_with_id<T: std::str::FromStr>(args: &str, what: &str) -> Result<(T, u64), Error> {
    let bad = || Error::Protocol(format!("bad {what} reply {args:?}"));
    let mut w = args.split_ascii_whitespace();
    let first = w.next().and_then(|x| x.parse().ok()).ok_or_else(bad)?;
    let id = w.next().and_then(|x| x.parse().ok()).ok_or_else(bad)?;
    Ok((first, id))
}

impl Stream {
    fn new(sock: UnixStream, local_port: u32, peer: SockAddr, id: u64, daemon: &Path) -> Self {
        Stream {
            sock,
            local_port,
            peer,
            id,
            daemon: daemon.to_path_buf(),
            ended: None,
        }
    }

    /// How the stream ended, asked of the daemon after the connection reached its end.
    /// Once a reset is known it is final; "end of file" may still turn into a reset for the
    /// sending direction (the peer closed its side, then vanished while we were writing).
    fn end(&mut self) -> End {
        if let Some(e @ End::Reset(..)) = &self.ended {
            return e.clone();
        }
        let e = query_end(&self.daemon, self.id);
        self.ended = Some(e.clone());
        e
    }

    /// Connects to `addr`; a port nobody listens on fails at once with [`Error::Refused`].
    pub fn connect(addr: SockAddr) -> Result<Self, Error> {
        Self::connect_with(&socket_path(), addr)
    }

    /// Connects through the daemon at `daemon`.
    pub fn connect_with(daemon: &Path, addr: SockAddr) -> Result<Self, Error> {
        let (sock, args) = handshake(daemon, &Request::Connect(addr))?;
        let (local_port, id) = reply_with_id(&args, "CONNECT")?;
        Ok(Stream::new(sock, local_port, addr, id, daemon))
    }

    /// Aborts the stream: the peer reads a reset (`ConnectionReset`), not end of file. Dropping
    /// a stream, like closing a TCP socket, is an orderly close.
    pub fn abort(self) -> Result<(), Error> {
        handshake(&self.daemon, &Request::Reset(self.id)).map(|_| ())
    }

    /// The daemon's id for this stream (as `CLOSED ID` takes it).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The local ring port the stream's replies arrive on (shared with other streams).
    pub fn local_port(&self) -> u32 {
        self.local_port
    }

    pub fn peer_addr(&self) -> SockAddr {
        self.peer
    }

    /// `Shutdown::Write` sends the peer an orderly end of stream.
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        self.sock.shutdown(how)
    }

    pub fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        self.sock.set_nonblocking(on)
    }

    pub fn set_read_timeout(&self, t: Option<std::time::Duration>) -> io::Result<()> {
        self.sock.set_read_timeout(t)
    }

    pub fn set_write_timeout(&self, t: Option<std::time::Duration>) -> io::Result<()> {
        self.sock.set_write_timeout(t)
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.sock.read(buf) {
            Ok(0) if !buf.is_empty() => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
            r => return r,
        }
        // The connection ended: orderly, or reset?
        match self.end() {
            End::Eof => Ok(0),
            End::Reset(kind, msg) => Err(io::Error::new(kind, msg)),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.sock.write(buf) {
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
                ) =>
            {
                match self.end() {
                    End::Reset(kind, msg) => Err(io::Error::new(kind, msg)),
                    End::Eof => Err(e),
                }
            }
            r => r,
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsRawFd for Stream {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

impl AsFd for Stream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

/// A listening V4V stream port, like `std::net::TcpListener`. Its descriptor polls readable
/// when a connection waits to be accepted.
#[derive(Debug)]
pub struct Listener {
    ctl: UnixStream,
    port: u32,
    daemon: PathBuf,
    nonblocking: bool,
    line: Vec<u8>,
}

impl Listener {
    /// Listens on `port` (0 = ephemeral).
    pub fn bind(port: u32) -> Result<Self, Error> {
        Self::bind_with(&socket_path(), port)
    }

    pub fn bind_with(daemon: &Path, port: u32) -> Result<Self, Error> {
        let (ctl, args) = handshake(daemon, &Request::Listen(port))?;
        let port = args
            .trim()
            .parse()
            .map_err(|_| Error::Protocol(format!("bad LISTEN reply {args:?}")))?;
        Ok(Listener {
            ctl,
            port,
            daemon: daemon.to_path_buf(),
            nonblocking: false,
            line: Vec::new(),
        })
    }

    pub fn local_port(&self) -> u32 {
        self.port
    }

    pub fn set_nonblocking(&mut self, on: bool) -> io::Result<()> {
        self.ctl.set_nonblocking(on)?;
        self.nonblocking = on;
        Ok(())
    }

    /// The next `INCOMING ID DOM:PORT` announcement, or `None` if it would block.
    fn next_incoming(&mut self) -> Result<Option<u64>, Error> {
        let mut b = [0u8; 1];
        loop {
            match self.ctl.read(&mut b) {
                Ok(0) => return Err(Error::Protocol("the daemon closed the listener".into())),
                Ok(_) if b[0] == b'\n' => {
                    let l = String::from_utf8_lossy(&self.line).to_string();
                    self.line.clear();
                    let mut w = l.split_ascii_whitespace();
                    if w.next() == Some("INCOMING")
                        && let Some(Ok(id)) = w.next().map(str::parse)
                    {
                        return Ok(Some(id));
                    }
                    return Err(Error::Protocol(format!("bad listener line {l:?}")));
                }
                Ok(_) => {
                    self.line.push(b[0]);
                    if self.line.len() > super::proto::MAX_LINE {
                        return Err(Error::Protocol("listener line too long".into()));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Accepts one connection: the stream and the peer's address. In non-blocking mode returns
    /// `WouldBlock` when none waits.
    pub fn accept(&mut self) -> Result<(Stream, SockAddr), Error> {
        loop {
            let Some(id) = self.next_incoming()? else {
                return Err(Error::Io(io::ErrorKind::WouldBlock.into()));
            };
            match handshake(&self.daemon, &Request::Accept(self.port, Some(id))) {
                Ok((sock, args)) => {
                    let (peer, sid) = reply_with_id::<SockAddr>(&args, "ACCEPT")?;
                    let s = Stream::new(sock, self.port, peer, sid, &self.daemon);
                    return Ok((s, peer));
                }
                // Taken by another acceptor, or reset before we came: try the next one.
                Err(Error::Daemon { code, .. }) if code == "ENOENT" => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Accepted connections, forever.
    pub fn incoming(&mut self) -> Incoming<'_> {
        Incoming { l: self }
    }
}

/// Iterator of [`Listener::accept`] results.
pub struct Incoming<'a> {
    l: &'a mut Listener,
}

impl Iterator for Incoming<'_> {
    type Item = Result<Stream, Error>;
    fn next(&mut self) -> Option<Self::Item> {
        Some(self.l.accept().map(|(s, _)| s))
    }
}

impl AsRawFd for Listener {
    fn as_raw_fd(&self) -> RawFd {
        self.ctl.as_raw_fd()
    }
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.ctl.as_fd()
    }
}

/// Asks the daemon at `daemon` how stream `id` ended (`CLOSED ID`), once its connection reached
/// its end.
pub(crate) fn query_end(daemon: &Path, id: u64) -> End {
    match handshake(daemon, &Request::Closed(id)) {
        Ok((_, args)) => {
            let mut w = args.splitn(3, ' ');
            match (w.next(), w.next(), w.next()) {
                (Some("eof"), ..) => End::Eof,
                // The peer has not finished; the connection ended on our side.
                (Some("open"), ..) => End::Reset(
                    io::ErrorKind::ConnectionAborted,
                    "the daemon ended the stream".into(),
                ),
                (Some("reset"), Some(code), reason) => {
                    let kind = match code {
                        "EACCES" => io::ErrorKind::PermissionDenied,
                        "EHOSTUNREACH" => io::ErrorKind::HostUnreachable,
                        "ETIMEDOUT" => io::ErrorKind::TimedOut,
                        "ECONNABORTED" => io::ErrorKind::ConnectionAborted,
                        _ => io::ErrorKind::ConnectionReset,
                    };
                    End::Reset(kind, format!("reset: {}", reason.unwrap_or(code)))
                }
                _ => End::Reset(
                    io::ErrorKind::InvalidData,
                    format!("bad CLOSED reply {args:?}"),
                ),
            }
        }
        // No answer to the question: the daemon is gone (refused), or dying (the connection
        // was reset or closed before a reply).
        Err(_) => End::Reset(
            io::ErrorKind::NotConnected,
            format!("the v4v daemon at {} went away", daemon.display()),
        ),
    }
}

impl End {
    /// The outcome as a read reports it: `Ok` for an orderly end, the reset as an error.
    pub(crate) fn into_result(self) -> io::Result<()> {
        match self {
            End::Eof => Ok(()),
            End::Reset(kind, msg) => Err(io::Error::new(kind, msg)),
        }
    }
}

#[cfg(feature = "tokio")]
/// What a [`Stream`] is made of, for the async wrapper of this crate.
pub(crate) struct StreamParts {
    pub(crate) sock: UnixStream,
    pub(crate) local_port: u32,
    pub(crate) peer: SockAddr,
    pub(crate) id: u64,
    pub(crate) daemon: PathBuf,
    pub(crate) ended: Option<End>,
}

#[cfg(feature = "tokio")]
impl Stream {
    pub(crate) fn into_parts(self) -> StreamParts {
        StreamParts {
            sock: self.sock,
            local_port: self.local_port,
            peer: self.peer,
            id: self.id,
            daemon: self.daemon,
            ended: self.ended,
        }
    }

    pub(crate) fn from_parts(p: StreamParts) -> Self {
        Stream {
            sock: p.sock,
            local_port: p.local_port,
            peer: p.peer,
            id: p.id,
            daemon: p.daemon,
            ended: p.ended,
        }
    }
}

impl Stream {
    /// How the stream with daemon id `id` ended, for a program that holds only its descriptor
    /// (one handed to C, or to another process): ask after a read returned end of file or a
    /// write failed with `EPIPE`. `Ok` is an orderly close; a reset is an error of the same kind
    /// and message as [`Stream`]'s reads give.
    pub fn end_of(daemon: &Path, id: u64) -> io::Result<()> {
        query_end(daemon, id).into_result()
    }

    /// The stream whose bytes `fd` carries (from `OwnedFd::from(stream)`, possibly in another
    /// process), given what the stream's owner knew of it: the daemon's socket, the stream's id,
    /// its peer and local port. Reads and writes then tell an orderly close from a reset as
    /// usual.
    pub fn from_fd(
        fd: std::os::fd::OwnedFd,
        daemon: &Path,
        id: u64,
        peer: SockAddr,
        local_port: u32,
    ) -> Self {
        Stream::new(UnixStream::from(fd), local_port, peer, id, daemon)
    }

    /// Aborts the stream with daemon id `id` (as [`Stream::abort`]), for a program that holds
    /// only its descriptor.
    pub fn abort_by_id(daemon: &Path, id: u64) -> Result<(), Error> {
        handshake(daemon, &Request::Reset(id)).map(|_| ())
    }
}

/// The descriptor of the Unix connection that carries the stream's bytes (the stream's id is
/// needed to tell an orderly close from a reset afterwards: [`Stream::end_of`]).
impl From<Stream> for std::os::fd::OwnedFd {
    fn from(s: Stream) -> Self {
        s.sock.into()
    }
}

#[cfg(feature = "tokio")]
/// What a [`Listener`] is made of, for the async wrapper of this crate.
pub(crate) struct ListenerParts {
    pub(crate) ctl: UnixStream,
    pub(crate) port: u32,
    pub(crate) daemon: PathBuf,
    pub(crate) line: Vec<u8>,
}

#[cfg(feature = "tokio")]
impl Listener {
    pub(crate) fn into_parts(self) -> ListenerParts {
        ListenerParts {
            ctl: self.ctl,
            port: self.port,
            daemon: self.daemon,
            line: self.line,
        }
    }

    pub(crate) fn from_parts(p: ListenerParts) -> Self {
        Listener {
            ctl: p.ctl,
            port: p.port,
            daemon: p.daemon,
            nonblocking: false,
            line: p.line,
        }
    }
}

#[cfg(feature = "tokio")]
/// Takes the announced connection `id` waiting on `port` (`ACCEPT PORT ID`); `None` when another
/// acceptor took it or it was reset before we came.
pub(crate) fn accept_announced(
    daemon: &Path,
    port: u32,
    id: u64,
) -> Result<Option<(Stream, SockAddr)>, Error> {
    match handshake(daemon, &Request::Accept(port, Some(id))) {
        Ok((sock, args)) => {
            let (peer, sid) = reply_with_id::<SockAddr>(&args, "ACCEPT")?;
            Ok(Some((Stream::new(sock, port, peer, sid, daemon), peer)))
        }
        Err(Error::Daemon { code, .. }) if code == "ENOENT" => Ok(None),
        Err(e) => Err(e),
    }
}
