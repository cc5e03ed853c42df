// SPDX-License-Identifier: MIT OR Apache-2.0
//! [`Stream`] and [`Listener`]: V4V streams through the daemon.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use super::proto::{Incoming as ProtoIncoming, Reply, Request, SockAddr, StreamEnd, Via};
use super::{Error, ShmStream, handshake, socket_path};

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

fn unexpected(reply: &Reply, what: &str) -> Error {
    Error::Protocol(format!("unexpected {what} reply {reply}"))
}

/// The send buffer a stream asks for on its socket: a whole message of the daemon's (256 KiB)
/// can then wait in the socket, so the daemon reads it in one go and sends it as one message
/// (with the default 208 KiB it read what fitted: 180 KB a message on average, a third more
/// hypercalls per byte). The kernel caps it at `net.core.wmem_max`.
const SEND_BUFFER: libc::c_int = 512 * 1024;

impl Stream {
    fn new(sock: UnixStream, local_port: u32, peer: SockAddr, id: u64, daemon: &Path) -> Self {
        // SAFETY: setsockopt on a live socket with a live c_int and its size. Best effort: a
        // failure leaves the default, which only costs more hypercalls.
        unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                (&SEND_BUFFER as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
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
        if addr.port == 0 {
            return Err(Error::Invalid("port 0 is not a destination".into()));
        }
        match handshake(daemon, &Request::Connect(addr, Via::Socket))? {
            (sock, Reply::Connected { local_port, id }) => {
                Ok(Stream::new(sock, local_port, addr, id, daemon))
            }
            (_, other) => Err(unexpected(&other, "CONNECT")),
        }
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

/// A [`Stream`] being set up without blocking ([`Stream::connect_start`]): the request is
/// sent, the daemon's answer (which comes when the peer accepted, or says why not) is still to
/// be read. Its descriptor polls readable when the answer is there; then [`Connecting::poll`]
/// returns the stream. For event loops that must not wait up to the 10 s connect timeout.
#[derive(Debug)]
pub struct Connecting {
    /// Taken by the [`Stream`] once connected (the same descriptor, so an event loop's
    /// registration carries over).
    sock: Option<UnixStream>,
    peer: SockAddr,
    daemon: PathBuf,
    line: Vec<u8>,
}

impl Stream {
    /// Starts connecting to `addr` through the daemon at `daemon`. Reaching the local daemon
    /// and sending the request do not wait for the peer; the answer is read by
    /// [`Connecting::poll`].
    pub fn connect_start(daemon: &Path, addr: SockAddr) -> Result<Connecting, Error> {
        let mut sock = UnixStream::connect(daemon).map_err(|source| Error::DaemonUnreachable {
            path: daemon.to_path_buf(),
            source,
        })?;
        // One short line into an empty socket buffer: this write does not wait for the peer.
        if let Err(e) =
            sock.write_all(format!("{}\n", Request::Connect(addr, Via::Socket)).as_bytes())
        {
            // A daemon refusing the client (too many connections) has answered already.
            sock.set_read_timeout(Some(std::time::Duration::from_secs(1)))?;
            return match super::read_line(&mut sock) {
                Ok(line) => Err(Connecting::reply_error(addr, &line)),
                Err(_) => Err(e.into()),
            };
        }
        sock.set_nonblocking(true)?;
        Ok(Connecting {
            sock: Some(sock),
            peer: addr,
            daemon: daemon.to_path_buf(),
            line: Vec::new(),
        })
    }
}

impl Connecting {
    /// The error a CONNECT reply line stands for (an `OK` here is out of place).
    fn reply_error(peer: SockAddr, line: &str) -> Error {
        match Reply::parse(&Request::Connect(peer, Via::Socket), line) {
            Ok(Reply::Err { code, reason }) => Error::from_reply(&code, &reason),
            Ok(other) => unexpected(&other, "CONNECT"),
            Err(e) => Error::Protocol(e.to_string()),
        }
    }

    /// Reads what has come of the answer: `Ok(None)` while the daemon has not answered,
    /// `Ok(Some(stream))` once connected (the stream is in non-blocking mode and has the
    /// descriptor this value had), or why the connection failed ([`Error::Refused`],
    /// [`Error::TimedOut`], [`Error::Denied`], ...). After either, it is spent: further calls
    /// fail with [`Error::Protocol`].
    pub fn poll(&mut self) -> Result<Option<Stream>, Error> {
        let Some(sock) = self.sock.as_mut() else {
            return Err(Error::Protocol("the connection attempt is over".into()));
        };
        let mut b = [0u8; 1];
        loop {
            // Byte by byte: whatever follows the newline is the stream and stays unread.
            match sock.read(&mut b) {
                Ok(0) => {
                    return Err(Error::Protocol(
                        "the daemon closed the connection during the handshake".into(),
                    ));
                }
                Ok(_) if b[0] == b'\n' => break,
                Ok(_) => self.line.push(b[0]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
            if self.line.len() > super::proto::MAX_LINE {
                return Err(Error::Protocol("reply line too long".into()));
            }
        }
        let Some(sock) = self.sock.take() else {
            return Err(Error::Protocol("the connection attempt is over".into()));
        };
        let line = String::from_utf8(std::mem::take(&mut self.line))
            .map_err(|_| Error::Protocol("reply is not UTF-8".into()))?;
        match Reply::parse(&Request::Connect(self.peer, Via::Socket), &line)
            .map_err(|e| Error::Protocol(e.to_string()))?
        {
            Reply::Connected { local_port, id } => Ok(Some(Stream::new(
                sock,
                local_port,
                self.peer,
                id,
                &self.daemon,
            ))),
            Reply::Err { code, reason } => Err(Error::from_reply(&code, &reason)),
            other => Err(unexpected(&other, "CONNECT")),
        }
    }

    /// The address being connected to.
    pub fn peer_addr(&self) -> SockAddr {
        self.peer
    }
}

impl AsRawFd for Connecting {
    /// The descriptor to poll (-1 once [`Connecting::poll`] gave its answer).
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_ref().map_or(-1, AsRawFd::as_raw_fd)
    }
}

impl Stream {
    /// `read` of the Unix connection, sleeping in `poll` rather than in `read`: a task
    /// blocked in `read` on a Unix socket is also woken each time the daemon reads what this
    /// one wrote (room to write), which a request-and-answer exchange does every time, for
    /// nothing; `poll` wakes only for input. Non-blocking mode and a read timeout behave as
    /// they do for the socket (`WouldBlock` when nothing came).
    fn read_socket(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let fd = self.sock.as_raw_fd();
        if !buf.is_empty() {
            loop {
                // SAFETY: `buf` is valid for writing its length; MSG_DONTWAIT: never sleeps.
                let n = unsafe {
                    libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT)
                };
                if n >= 0 {
                    return Ok(n as usize);
                }
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::Interrupted => continue,
                    io::ErrorKind::WouldBlock => break,
                    _ => return Err(e),
                }
            }
            // SAFETY: fcntl F_GETFL on our own descriptor.
            let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
            if flags < 0 {
                return Err(io::Error::last_os_error());
            }
            if flags & libc::O_NONBLOCK != 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let ms = match self.sock.read_timeout()? {
                None => -1,
                Some(t) => i32::try_from(t.as_millis().max(1)).unwrap_or(i32::MAX),
            };
            let mut p = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            loop {
                // SAFETY: one valid pollfd for the duration of the call.
                let r = unsafe { libc::poll(&mut p, 1, ms) };
                if r > 0 {
                    break;
                }
                if r == 0 {
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
        self.sock.read(buf)
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.read_socket(buf) {
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
        let (ctl, reply) = handshake(daemon, &Request::Listen(port))?;
        let Reply::Port(port) = reply else {
            return Err(unexpected(&reply, "LISTEN"));
        };
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
                Ok(0) => {
                    return Err(Error::DaemonGone(
                        "it closed the listener connection".into(),
                    ));
                }
                Ok(_) if b[0] == b'\n' => {
                    let l = String::from_utf8_lossy(&self.line).to_string();
                    self.line.clear();
                    return match ProtoIncoming::parse(&l) {
                        Ok(i) => Ok(Some(i.id)),
                        Err(_) => Err(Error::Protocol(format!("bad listener line {l:?}"))),
                    };
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
            // None: taken by another acceptor, or reset before we came: try the next one.
            if let Some(accepted) = accept_announced(&self.daemon, self.port, id)? {
                return Ok(accepted);
            }
        }
    }

    /// [`Listener::accept`], the stream through shared memory ([`ShmStream`]).
    pub fn accept_shm(&mut self) -> Result<(ShmStream, SockAddr), Error> {
        loop {
            let Some(id) = self.next_incoming()? else {
                return Err(Error::Io(io::ErrorKind::WouldBlock.into()));
            };
            if let Some(accepted) = ShmStream::accept_announced(&self.daemon, self.port, id)? {
                return Ok(accepted);
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
        Ok((_, Reply::Closed(StreamEnd::Eof))) => End::Eof,
        // The peer has not finished; the connection ended on our side.
        Ok((_, Reply::Closed(StreamEnd::Open))) => End::Reset(
            io::ErrorKind::ConnectionAborted,
            "the daemon ended the stream".into(),
        ),
        Ok((_, Reply::Closed(StreamEnd::Reset { code, reason }))) => {
            let kind = match code.as_str() {
                "EACCES" => io::ErrorKind::PermissionDenied,
                "EHOSTUNREACH" => io::ErrorKind::HostUnreachable,
                "ETIMEDOUT" => io::ErrorKind::TimedOut,
                "ECONNABORTED" => io::ErrorKind::ConnectionAborted,
                _ => io::ErrorKind::ConnectionReset,
            };
            let why = if reason.is_empty() { code } else { reason };
            End::Reset(kind, format!("reset: {why}"))
        }
        Ok((_, other)) => End::Reset(
            io::ErrorKind::InvalidData,
            format!("unexpected CLOSED reply {other}"),
        ),
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

/// Takes the announced connection `id` waiting on `port` (`ACCEPT PORT ID`); `None` when another
/// acceptor took it or it was reset before we came.
pub(crate) fn accept_announced(
    daemon: &Path,
    port: u32,
    id: u64,
) -> Result<Option<(Stream, SockAddr)>, Error> {
    match handshake(daemon, &Request::Accept(port, Some(id), Via::Socket)) {
        Ok((sock, Reply::Accepted { peer, id: sid })) => {
            Ok(Some((Stream::new(sock, port, peer, sid, daemon), peer)))
        }
        Ok((_, other)) => Err(unexpected(&other, "ACCEPT")),
        Err(Error::Daemon { code, .. }) if code == "ENOENT" => Ok(None),
        Err(e) => Err(e),
    }
}
