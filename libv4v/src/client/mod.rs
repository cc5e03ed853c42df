// SPDX-License-Identifier: MIT OR Apache-2.0
//! The client API: talk V4V through the local daemon (v4vd), shaped like `std::net`.
//!
//! - [`Datagram`]: `bind` / `send_to` / `recv_from`, message boundaries kept.
//! - [`Stream`]: `connect`, [`std::io::Read`] / [`std::io::Write`], `shutdown`.
//! - [`Listener`]: `bind`, `accept`, `incoming`.
//!
//! Every type wraps a Unix connection to the daemon (path from `V4V_SOCKET`, else
//! [`proto::DEFAULT_SOCKET`]) and implements `AsRawFd`, so it plugs into mio or tokio; each
//! supports non-blocking mode. The wire protocol is in [`proto`] and `docs/protocol.md`.

pub mod proto;

mod admin;
pub(crate) mod datagram;
pub(crate) mod stream;

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use thiserror::Error;

pub use admin::{acl_change, acl_list, acl_load};
pub use datagram::Datagram;
pub use proto::SockAddr;
pub use stream::{Incoming, Listener, Stream};

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
    #[error("message too big")]
    MessageTooBig,
    /// The port is bound already (the text says by whom, when the daemon said).
    #[error("address in use: {0}")]
    AddrInUse(String),
    #[error("denied by the V4V ACL")]
    Denied,
    #[error("{reason} ({code})")]
    Daemon { code: String, reason: String },
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl Error {
    fn from_reply(code: &str, reason: &str) -> Self {
        match code {
            "ECONNREFUSED" if reason.is_empty() => Error::Refused("connection refused".into()),
            "ECONNREFUSED" => Error::Refused(reason.to_string()),
            "ETIMEDOUT" => Error::TimedOut(reason.to_string()),
            "EMSGSIZE" => Error::MessageTooBig,
            "EADDRINUSE" => Error::AddrInUse(reason.to_string()),
            "EACCES" => Error::Denied,
            _ => Error::Daemon {
                code: code.to_string(),
                reason: reason.to_string(),
            },
        }
    }

    pub(crate) fn from_errno(e: i32, what: &str) -> Self {
        match e {
            crate::abi::errno::ECONNREFUSED => {
                Error::Refused(format!("connection refused: no ring bound at {what}"))
            }
            crate::abi::errno::EMSGSIZE => Error::MessageTooBig,
            crate::abi::errno::EACCES => Error::Denied,
            crate::abi::errno::EAGAIN => Error::Io(io::ErrorKind::WouldBlock.into()),
            e => Error::Io(io::Error::from_raw_os_error(e)),
        }
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Io(e) => e,
            Error::Refused(_) => io::Error::new(io::ErrorKind::ConnectionRefused, e),
            Error::TimedOut(_) => io::Error::new(io::ErrorKind::TimedOut, e),
            Error::DaemonUnreachable { .. } => io::Error::new(io::ErrorKind::NotConnected, e),
            Error::AddrInUse(_) => io::Error::new(io::ErrorKind::AddrInUse, e),
            Error::Denied => io::Error::new(io::ErrorKind::PermissionDenied, e),
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

/// Connects to the daemon, sends `req`, reads the reply line. On `OK` returns its arguments
/// and the connection (positioned right after the reply).
pub(crate) fn handshake(path: &Path, req: &proto::Request) -> Result<(UnixStream, String), Error> {
    let mut s = UnixStream::connect(path).map_err(|source| Error::DaemonUnreachable {
        path: path.to_path_buf(),
        source,
    })?;
    // A daemon that refuses the connection (too many clients) answers before reading anything
    // and closes: the write may fail, and the reply line still says why.
    let written = s.write_all(format!("{req}\n").as_bytes());
    let line = match (written, read_line(&mut s)) {
        (_, Ok(line)) => line,
        (Err(e), Err(_)) => return Err(e.into()),
        (Ok(()), Err(e)) => return Err(e),
    };
    match proto::Reply::parse(&line).map_err(|e| Error::Protocol(e.to_string()))? {
        proto::Reply::Ok(args) => Ok((s, args)),
        proto::Reply::Err { code, reason } => Err(Error::from_reply(&code, &reason)),
    }
}

/// Reads one line byte by byte (nothing after the newline is consumed).
pub(crate) fn read_line(s: &mut UnixStream) -> Result<String, Error> {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        match s.read(&mut b) {
            Ok(0) => {
                return Err(Error::Protocol(
                    "the daemon closed the connection during the handshake".into(),
                ));
            }
            Ok(_) if b[0] == b'\n' => break,
            Ok(_) => line.push(b[0]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
        if line.len() > proto::MAX_LINE {
            return Err(Error::Protocol("reply line too long".into()));
        }
    }
    String::from_utf8(line).map_err(|_| Error::Protocol("reply is not UTF-8".into()))
}

/// One line of daemon state (`STATUS`), for tools and tests.
pub fn status(path: &Path) -> Result<String, Error> {
    handshake(path, &proto::Request::Status).map(|(_, s)| s)
}
