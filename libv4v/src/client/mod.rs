// SPDX-License-Identifier: MIT OR Apache-2.0
//! The client API: talk V4V through the local daemon (v4vd), shaped like `std::net`.
//!
//! - [`Datagram`]: `bind` / `send_to` / `recv_from`, message boundaries kept.
//! - [`Stream`]: `connect`, [`std::io::Read`] / [`std::io::Write`], `shutdown`;
//!   [`Stream::connect_start`] and [`Connecting`] connect without waiting, for event loops.
//! - [`Listener`]: `bind`, `accept`, `incoming`; [`Listener::accept_shm`].
//! - [`ShmStream`]: a stream whose bytes pass through memory shared with the daemon (two
//!   channels, doorbells on the Unix connection only when a side sleeps): the same reads,
//!   writes, ends and resets, for programs that read and write it themselves.
//!
//! Every type wraps a Unix connection to the daemon (path from `V4V_SOCKET`, else
//! [`proto::DEFAULT_SOCKET`]) and implements `AsRawFd`, so it plugs into mio or tokio; each
//! supports non-blocking mode. The wire protocol is in [`proto`] and `docs/protocol.md`.

pub mod proto;

mod admin;
pub(crate) mod datagram;
pub(crate) mod shm_stream;
pub(crate) mod stream;

use std::io::{self, IoSlice, Read, Write};
use std::os::fd::RawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use thiserror::Error;

pub use admin::{
    ListedRule, acl_change, acl_list, acl_load, format_bindings, name_of, parse_listed, resolve,
};
pub use datagram::{CHANNEL_ENV, DEFAULT_WINDOW, Datagram, MAX_WINDOW};
pub use proto::SockAddr;
pub use proto::Status;
pub use shm_stream::{DEFAULT_CAPACITY as SHM_STREAM_CAPACITY, ShmStream};
pub use stream::{Connecting, Incoming, Listener, Stream};

/// What went wrong talking V4V through the daemon.
#[derive(Debug, Error)]
pub enum Error {
    /// No such domain or port, or nobody listens; the text says which.
    #[error("{0}")]
    Refused(String),
    #[error("timed out: {0}")]
    TimedOut(String),
    #[error("v4v daemon unreachable at {path}: {source}")]
    DaemonUnreachable {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The daemon's connection broke after the handshake (it was stopped or killed).
    #[error("the v4v daemon went away ({0})")]
    DaemonGone(String),
    /// Something answers on the socket, but not the v4vd protocol (the simulator's socket, ...).
    #[error("{} is not a v4vd socket: {why}", path.display())]
    NotV4vd { path: PathBuf, why: String },
    /// The message does not fit: the text gives its size and the limit.
    #[error("message too big: {0}")]
    MessageTooBig(String),
    /// The port is bound already (the text says by whom, when the daemon said).
    #[error("address in use: {0}")]
    AddrInUse(String),
    #[error("denied by the V4V ACL")]
    Denied,
    /// No domain has this name, or none this domain may see (the text says which name).
    #[error("{0}")]
    UnknownName(String),
    /// An argument no request can carry (port 0 as a destination, ...), found before asking.
    #[error("{0}")]
    Invalid(String),
    #[error("{reason} ({code})")]
    Daemon { code: String, reason: String },
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error(transparent)]
    Io(#[from] io::Error),
    /// A datagram that `send_to` had accepted could not be delivered: the `seq`-th datagram
    /// sent on its port (counting from 1, see [`Datagram::sent`]), `len` bytes to `dst`, and why
    /// (`cause`: [`Error::Refused`], [`Error::Denied`], [`Error::MessageTooBig`], ...).
    #[error("datagram #{seq} ({len} bytes to {dst}) was not delivered: {cause}")]
    Undelivered {
        seq: u64,
        dst: SockAddr,
        len: usize,
        #[source]
        cause: Box<Error>,
    },
    /// The daemon went away before it answered datagrams `first..=last` (sequence numbers as in
    /// [`Error::Undelivered`]): each may or may not have been delivered. Every datagram before
    /// `first` was answered (delivered, or reported undelivered).
    #[error(
        "the v4v daemon went away ({reason}) before it answered datagrams #{first} to #{last}: \
         each may or may not have been delivered"
    )]
    Unconfirmed {
        first: u64,
        last: u64,
        reason: String,
    },
}

impl Error {
    fn from_reply(code: &str, reason: &str) -> Self {
        let text = |default: &str| {
            if reason.is_empty() {
                default.to_string()
            } else {
                reason.to_string()
            }
        };
        match code {
            "ECONNREFUSED" => Error::Refused(text("connection refused")),
            "ETIMEDOUT" => Error::TimedOut(reason.to_string()),
            "EMSGSIZE" => Error::MessageTooBig(text("bigger than the destination takes")),
            "EADDRINUSE" => Error::AddrInUse(reason.to_string()),
            "EACCES" => Error::Denied,
            _ => Error::Daemon {
                code: code.to_string(),
                reason: reason.to_string(),
            },
        }
    }

    /// A datagram send's status `e` (a positive errno), with the daemon's reason if it gave one.
    pub(crate) fn from_errno(e: i32, what: &str, reason: &str) -> Self {
        match e {
            crate::abi::errno::ECONNREFUSED if reason.is_empty() => {
                Error::Refused(format!("connection refused: no ring bound at {what}"))
            }
            crate::abi::errno::ECONNREFUSED => Error::Refused(reason.to_string()),
            crate::abi::errno::EMSGSIZE if reason.is_empty() => {
                Error::MessageTooBig(format!("bigger than the ring at {what} takes"))
            }
            crate::abi::errno::EMSGSIZE => Error::MessageTooBig(reason.to_string()),
            crate::abi::errno::EACCES => Error::Denied,
            crate::abi::errno::EAGAIN => Error::Io(io::ErrorKind::WouldBlock.into()),
            crate::abi::errno::EINVAL if !reason.is_empty() => Error::Invalid(reason.to_string()),
            e if !reason.is_empty() => Error::Daemon {
                code: io::Error::from_raw_os_error(e).to_string(),
                reason: reason.to_string(),
            },
            e => Error::Io(io::Error::from_raw_os_error(e)),
        }
    }

    /// An I/O error on a connection whose handshake is done: a broken or reset connection, or
    /// end of file where a frame was due, means the daemon went away.
    pub(crate) fn after_handshake(e: io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::UnexpectedEof
            | io::ErrorKind::NotConnected => Error::DaemonGone(e.to_string()),
            _ => Error::Io(e),
        }
    }
}

impl Error {
    /// The `io::ErrorKind` this error reads as (an undelivered datagram: its cause's).
    fn io_kind(&self) -> io::ErrorKind {
        match self {
            Error::Io(e) => e.kind(),
            Error::Refused(_) => io::ErrorKind::ConnectionRefused,
            Error::TimedOut(_) => io::ErrorKind::TimedOut,
            Error::DaemonUnreachable { .. }
            | Error::DaemonGone(_)
            | Error::NotV4vd { .. }
            | Error::Unconfirmed { .. } => io::ErrorKind::NotConnected,
            Error::AddrInUse(_) => io::ErrorKind::AddrInUse,
            Error::Denied => io::ErrorKind::PermissionDenied,
            Error::Invalid(_) => io::ErrorKind::InvalidInput,
            Error::Undelivered { cause, .. } => cause.io_kind(),
            _ => io::ErrorKind::Other,
        }
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Io(e) => e,
            e @ (Error::Undelivered { .. } | Error::Unconfirmed { .. }) => {
                io::Error::new(e.io_kind(), e)
            }
            Error::Refused(_) => io::Error::new(io::ErrorKind::ConnectionRefused, e),
            Error::TimedOut(_) => io::Error::new(io::ErrorKind::TimedOut, e),
            Error::DaemonUnreachable { .. } | Error::DaemonGone(_) | Error::NotV4vd { .. } => {
                io::Error::new(io::ErrorKind::NotConnected, e)
            }
            Error::AddrInUse(_) => io::Error::new(io::ErrorKind::AddrInUse, e),
            Error::Denied => io::Error::new(io::ErrorKind::PermissionDenied, e),
            Error::Invalid(_) => io::Error::new(io::ErrorKind::InvalidInput, e),
            Error::UnknownName(_) => io::Error::new(io::ErrorKind::NotFound, e),
            other => io::Error::other(other),
        }
    }
}

/// The daemon's socket: `V4V_SOCKET`, else the default.
pub fn socket_path() -> PathBuf {
    std::env::var_os(proto::SOCKET_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(proto::DEFAULT_SOCKET))
}

/// The environment variable that sets the handshake timeout, in seconds (`0`: no limit).
pub const HANDSHAKE_TIMEOUT_ENV: &str = "V4V_HANDSHAKE_TIMEOUT";
/// How long a request waits for the daemon's reply line unless told otherwise.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a daemon may take to answer `CONNECT` on top of the handshake timeout: it waits
/// that long for the peer's daemon before it answers `ERR ETIMEDOUT` itself.
pub const CONNECT_ANSWER_TIME: Duration = Duration::from_secs(10);

/// The process's handshake timeout in milliseconds once set: `u64::MAX` = not set, `0` = none.
static HANDSHAKE_TIMEOUT_MS: AtomicU64 = AtomicU64::new(u64::MAX);

/// Sets how long every later request of this process waits for the daemon's reply line
/// (`None`: without limit), overriding `V4V_HANDSHAKE_TIMEOUT` and the default of 10 s. Waits
/// that are the request's purpose are not limited: `ACCEPT PORT` waits for a connection, and a
/// `CONNECT` may take [`CONNECT_ANSWER_TIME`] more.
pub fn set_handshake_timeout(t: Option<Duration>) {
    let ms = t.map_or(0, |t| {
        u64::try_from(t.as_millis()).unwrap_or(u64::MAX - 1).max(1)
    });
    HANDSHAKE_TIMEOUT_MS.store(ms, Ordering::Relaxed);
}

/// The handshake timeout in force (see [`set_handshake_timeout`]). A malformed
/// `V4V_HANDSHAKE_TIMEOUT` is ignored for the default.
pub fn handshake_timeout() -> Option<Duration> {
    match HANDSHAKE_TIMEOUT_MS.load(Ordering::Relaxed) {
        u64::MAX => match std::env::var(HANDSHAKE_TIMEOUT_ENV)
            .ok()
            .map(|v| parse_secs(&v))
        {
            Some(Some(t)) => t,
            _ => Some(DEFAULT_HANDSHAKE_TIMEOUT),
        },
        0 => None,
        ms => Some(Duration::from_millis(ms)),
    }
}

/// `SECS` (decimal, fractions allowed) as a timeout: `Some(None)` for `0` (no limit), `None` if
/// it is not a number of seconds.
pub fn parse_secs(v: &str) -> Option<Option<Duration>> {
    let secs: f64 = v.trim().parse().ok()?;
    if !(0.0..=1e9).contains(&secs) {
        return None;
    }
    Some((secs > 0.0).then(|| Duration::from_secs_f64(secs)))
}

/// When the reply to `req` is due, or `None` when it may take as long as it takes.
fn reply_deadline(req: &proto::Request) -> Option<Instant> {
    let extra = match req {
        // Waits for a connection to arrive: that is what it asks for.
        proto::Request::Accept(_, None, _) => return None,
        proto::Request::Connect(..) => CONNECT_ANSWER_TIME,
        _ => Duration::ZERO,
    };
    handshake_timeout().map(|t| Instant::now() + t + extra)
}

/// Connects to the daemon at `path`, or says why not.
pub(crate) fn connect_daemon(path: &Path) -> Result<UnixStream, Error> {
    UnixStream::connect(path).map_err(|source| Error::DaemonUnreachable {
        path: path.to_path_buf(),
        source,
    })
}

/// Connects to the daemon, sends `req` (and `extra`, the lines that follow it), reads the reply
/// line within the handshake timeout. A successful reply comes back with the connection,
/// positioned right after it; `ERR` becomes the matching [`Error`].
pub(crate) fn handshake_with(
    path: &Path,
    req: &proto::Request,
    extra: &str,
) -> Result<(UnixStream, proto::Reply), Error> {
    handshake_passing(path, req, extra, &[])
}

/// [`handshake_with`], passing descriptors `fds` with the request line (`SCM_RIGHTS`).
pub(crate) fn handshake_passing(
    path: &Path,
    req: &proto::Request,
    extra: &str,
    fds: &[std::os::fd::RawFd],
) -> Result<(UnixStream, proto::Reply), Error> {
    let mut s = connect_daemon(path)?;
    let deadline = reply_deadline(req);
    let timed_out = || {
        Error::TimedOut(format!(
            "the v4v daemon at {} did not answer within {} s (handshake timeout; {} changes it)",
            path.display(),
            handshake_timeout().map_or(0.0, |t| t.as_secs_f64()),
            HANDSHAKE_TIMEOUT_ENV
        ))
    };
    // A daemon that refuses the connection (too many clients) answers before reading anything
    // and closes: the write may fail, and the reply line still says why.
    let text = format!("{req}\n{extra}");
    let written = if fds.is_empty() {
        write_until(&mut s, text.as_bytes(), deadline)
    } else {
        // A short line into the empty buffer of a new connection: it does not wait.
        use std::os::fd::AsRawFd;
        send_with_fds(s.as_raw_fd(), text.as_bytes(), fds).map_err(Line::Io)
    };
    let line = match (written, read_line_until(&mut s, deadline)) {
        (_, Ok(line)) => line,
        (_, Err(Line::TimedOut)) | (Err(Line::TimedOut), _) => return Err(timed_out()),
        (_, Err(Line::Garbage(why))) => {
            return Err(Error::NotV4vd {
                path: path.to_path_buf(),
                why,
            });
        }
        (Err(Line::Io(e)), Err(_)) => return Err(Error::after_handshake(e)),
        (_, Err(Line::Eof)) => {
            return Err(Error::DaemonGone(
                "it closed the connection without a reply".into(),
            ));
        }
        (_, Err(Line::Io(e))) => return Err(Error::after_handshake(e)),
        (_, Err(Line::TooLong)) => {
            return Err(Error::Protocol("reply line too long".into()));
        }
    };
    let reply = proto::Reply::parse(req, &line).map_err(|_| match line.split(' ').next() {
        Some("OK") => Error::Protocol(format!("unexpected reply {line:?} to {req}")),
        _ => Error::NotV4vd {
            path: path.to_path_buf(),
            why: format!(
                "it answered {:?}",
                line.chars().take(40).collect::<String>()
            ),
        },
    })?;
    s.set_read_timeout(None)?;
    s.set_write_timeout(None)?;
    match reply {
        proto::Reply::Err { code, reason } => Err(Error::from_reply(&code, &reason)),
        ok => Ok((s, ok)),
    }
}

pub(crate) fn handshake(
    path: &Path,
    req: &proto::Request,
) -> Result<(UnixStream, proto::Reply), Error> {
    handshake_with(path, req, "")
}

/// Why a reply line could not be read.
pub(crate) enum Line {
    TimedOut,
    Eof,
    TooLong,
    /// Bytes that no v4vd writes (binary, not a reply line).
    Garbage(String),
    Io(io::Error),
}

impl From<Line> for Error {
    fn from(l: Line) -> Self {
        match l {
            Line::TimedOut => Error::TimedOut("no answer from the v4v daemon".into()),
            Line::Eof => Error::DaemonGone("it closed the connection mid-reply".into()),
            Line::TooLong => Error::Protocol("reply line too long".into()),
            Line::Garbage(why) => Error::Protocol(why),
            Line::Io(e) => Error::after_handshake(e),
        }
    }
}

/// Sets the socket's timeouts to what is left until `deadline`; `Err(TimedOut)` once past it.
fn arm(s: &UnixStream, deadline: Option<Instant>) -> Result<(), Line> {
    let left = match deadline {
        None => None,
        Some(d) => match d.checked_duration_since(Instant::now()) {
            Some(left) if !left.is_zero() => Some(left),
            _ => return Err(Line::TimedOut),
        },
    };
    s.set_read_timeout(left).map_err(Line::Io)?;
    s.set_write_timeout(left).map_err(Line::Io)
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

fn write_until(s: &mut UnixStream, mut b: &[u8], deadline: Option<Instant>) -> Result<(), Line> {
    while !b.is_empty() {
        arm(s, deadline)?;
        match s.write(b) {
            Ok(0) => return Err(Line::Io(io::ErrorKind::WriteZero.into())),
            Ok(n) => b = &b[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if is_timeout(&e) => return Err(Line::TimedOut),
            Err(e) => return Err(Line::Io(e)),
        }
    }
    Ok(())
}

/// Reads one reply line byte by byte (nothing after the newline is consumed), by `deadline`.
pub(crate) fn read_line_until(
    s: &mut UnixStream,
    deadline: Option<Instant>,
) -> Result<String, Line> {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    let garbage = || Line::Garbage("it answered with data that is not a reply line".into());
    // Armed once (two syscalls), then the deadline is checked per byte: a peer dripping bytes
    // overruns it by at most one read's wait.
    arm(s, deadline)?;
    loop {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(Line::TimedOut);
        }
        match s.read(&mut b) {
            Ok(0) if line.is_empty() => return Err(Line::Eof),
            Ok(0) => return Err(garbage()),
            Ok(_) if b[0] == b'\n' => break,
            // v4vd writes text lines: control bytes mean another protocol (binary frames).
            Ok(_) if b[0] < 0x20 && b[0] != b'\r' && b[0] != b'\t' || b[0] == 0x7f => {
                line.push(b[0]);
                return Err(garbage());
            }
            Ok(_) => line.push(b[0]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if is_timeout(&e) => return Err(Line::TimedOut),
            Err(e) => return Err(Line::Io(e)),
        }
        if line.len() > proto::MAX_LINE {
            return Err(Line::TooLong);
        }
    }
    String::from_utf8(line)
        .map_err(|_| Line::Garbage("it answered with data that is not UTF-8 text".into()))
}

/// Reads one line (a rule of `ACL LIST`, ...) within the handshake timeout.
pub(crate) fn read_line(s: &mut UnixStream) -> Result<String, Error> {
    let deadline = handshake_timeout().map(|t| Instant::now() + t);
    let r = read_line_until(s, deadline).map_err(Error::from);
    s.set_read_timeout(None)?;
    r
}

/// The daemon's state (`STATUS`), for tools and tests. As `ss`, it shows everyone every port and
/// count, and owners and byte counters only to root and the owner.
pub fn status(path: &Path) -> Result<proto::Status, Error> {
    status_json(path).map(|(s, _)| s)
}

/// [`status`] and the JSON text the daemon wrote (with any fields this library does not know).
pub fn status_json(path: &Path) -> Result<(proto::Status, String), Error> {
    let (mut s, reply) = handshake(path, &proto::Request::Status)?;
    let proto::Reply::Status { len } = reply else {
        return Err(Error::Protocol(format!("unexpected STATUS reply {reply}")));
    };
    if len > proto::MAX_STATUS {
        return Err(Error::Protocol(format!(
            "STATUS announced {len} bytes, more than the {} a client reads",
            proto::MAX_STATUS
        )));
    }
    let mut json = vec![0u8; len as usize];
    let deadline = handshake_timeout().map(|t| Instant::now() + t);
    let mut got = 0;
    while got < json.len() {
        arm(&s, deadline).map_err(Error::from)?;
        match s.read(&mut json[got..]) {
            Ok(0) => {
                return Err(Error::DaemonGone(
                    "it closed the connection mid-STATUS".into(),
                ));
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if is_timeout(&e) => return Err(Line::TimedOut.into()),
            Err(e) => return Err(Error::after_handshake(e)),
        }
    }
    let status = proto::Status::from_json(&json).map_err(|e| Error::Protocol(e.to_string()))?;
    let text =
        String::from_utf8(json).map_err(|_| Error::Protocol("STATUS is not UTF-8".into()))?;
    Ok((status, text))
}

/// A datagram client's eventfd doorbell (docs/protocol.md, "Doorbell"): passed with its channel
/// offer, rung by adding 1. The daemon polls it and never reads it, so the counter only grows; a
/// ring that finds it full (never, in practice: 2^64 - 2 rings) says so, and the caller writes a
/// RING frame instead.
#[derive(Debug)]
pub(crate) struct Doorbell(std::os::fd::OwnedFd);

impl Doorbell {
    /// A fresh non-blocking eventfd, or `None` where there is none to be had.
    pub(crate) fn new() -> Option<Self> {
        use std::os::fd::FromRawFd;
        // SAFETY: eventfd takes integer arguments and returns a new descriptor or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        // SAFETY: a descriptor eventfd just returned, owned by nobody else.
        (fd >= 0).then(|| Doorbell(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }))
    }

    /// Rings: whether it was written.
    pub(crate) fn ring(&self) -> bool {
        use std::os::fd::AsRawFd;
        let one = 1u64.to_ne_bytes();
        loop {
            // SAFETY: writes the 8 bytes of a live local buffer.
            let n = unsafe { libc::write(self.0.as_raw_fd(), one.as_ptr().cast(), one.len()) };
            if n == one.len() as isize {
                return true;
            }
            if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return false;
        }
    }

    pub(crate) fn as_raw_fd(&self) -> RawFd {
        use std::os::fd::AsRawFd;
        self.0.as_raw_fd()
    }
}

/// A datagram client's wake pipe (docs/protocol.md, "Wake pipe"): its read end, polled beside the
/// socket while the client sleeps inside a call; the daemon writes a byte into its own open file
/// description of the write end, which the client passed with its channel offer.
#[derive(Debug)]
pub(crate) struct WakePipe(std::os::fd::OwnedFd);

impl WakePipe {
    /// A fresh pipe: our non-blocking read end and the write end to pass (then close).
    pub(crate) fn new() -> Option<(Self, std::os::fd::OwnedFd)> {
        use std::os::fd::FromRawFd;
        let mut fds = [0 as RawFd; 2];
        // SAFETY: pipe2 fills a live two-int array; the result is checked.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
            return None;
        }
        // SAFETY: both descriptors are fresh and owned by nobody else.
        let (r, w) = unsafe {
            (
                std::os::fd::OwnedFd::from_raw_fd(fds[0]),
                std::os::fd::OwnedFd::from_raw_fd(fds[1]),
            )
        };
        Some((WakePipe(r), w))
    }

    /// Takes the pending wake-ups.
    pub(crate) fn drain(&self) {
        let mut buf = [0u8; 64];
        loop {
            // SAFETY: reads into a live local buffer of the stated length, never blocking.
            let n = unsafe { libc::read(self.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n < buf.len() as isize {
                if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return;
            }
        }
    }

    pub(crate) fn as_raw_fd(&self) -> RawFd {
        use std::os::fd::AsRawFd;
        self.0.as_raw_fd()
    }
}

/// Writes `bytes` (all of them, waiting) with descriptors `fds` attached (`SCM_RIGHTS`).
pub(crate) fn send_with_fds(sock: RawFd, bytes: &[u8], fds: &[RawFd]) -> io::Result<()> {
    let space = {
        // SAFETY: CMSG_SPACE only computes a size.
        unsafe { libc::CMSG_SPACE(std::mem::size_of_val(fds) as u32) as usize }
    };
    let mut cbuf = vec![0u64; space.div_ceil(8)];
    let iov = [IoSlice::new(bytes)];
    // SAFETY: an all-zero msghdr is valid; the fields set below point at live buffers.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    // IoSlice is ABI-compatible with iovec; sendmsg only reads through it.
    msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = space;
    // SAFETY: `msg` has room for one cmsg of `fds.len()` descriptors (CMSG_SPACE), so
    // CMSG_FIRSTHDR is not NULL and CMSG_DATA has room for all of them inside `cbuf`.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of_val(fds) as u32) as usize;
        let data = libc::CMSG_DATA(c).cast::<RawFd>();
        for (i, &fd) in fds.iter().enumerate() {
            std::ptr::write_unaligned(data.add(i), fd);
        }
    }
    loop {
        // SAFETY: `msg` and what it points at live across the call.
        let r = unsafe { libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) };
        if r >= 0 {
            if (r as usize) < bytes.len() {
                // The descriptor went with the first byte; the rest goes plainly.
                let mut rest = &bytes[r as usize..];
                while !rest.is_empty() {
                    // SAFETY: `rest` is valid for reading its length.
                    let n = unsafe {
                        libc::send(sock, rest.as_ptr().cast(), rest.len(), libc::MSG_NOSIGNAL)
                    };
                    if n < 0 {
                        let e = io::Error::last_os_error();
                        if e.kind() == io::ErrorKind::Interrupted {
                            continue;
                        }
                        return Err(e);
                    }
                    rest = &rest[n as usize..];
                }
            }
            return Ok(());
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::Interrupted => {}
            io::ErrorKind::WouldBlock => {
                datagram::poll_until(sock, libc::POLLOUT, None)?;
            }
            _ => return Err(e),
        }
    }
}
