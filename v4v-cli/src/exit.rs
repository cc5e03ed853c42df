// SPDX-License-Identifier: MIT OR Apache-2.0
//! Exit statuses and the mapping from client errors to them.

use std::io;
use std::process::ExitCode;

use v4v::client::Error;

/// What the exit status says. The numbers are part of the interface (documented in `--help`
/// and docs/cli.md): never renumber them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Ok = 0,
    /// Any failure without a more specific status.
    Failure = 1,
    /// Bad command line or bad input (a malformed rule, a rules file with errors).
    Usage = 2,
    /// No daemon answers on the socket, or it went away.
    Unreachable = 3,
    /// No such domain or port, or nobody listens.
    Refused = 4,
    TimedOut = 5,
    /// The hypervisor's ACL refused the send or connection.
    Denied = 6,
    /// The stream was reset: the peer aborted, its daemon or domain vanished.
    Reset = 7,
    /// The message does not fit the destination ring (or the V4V maximum).
    TooBig = 8,
    /// ACL edits from a domain other than dom0, or by an unprivileged user.
    NotPermitted = 9,
    /// A limit was reached: a per-user quota, the domain's rings, the daemon's clients (the
    /// message names the limit and its value).
    Limit = 10,
    /// A domain name that no domain has, or none this domain may see.
    UnknownName = 11,
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> Self {
        ExitCode::from(e as u8)
    }
}

pub const EXIT_CODES_HELP: &str = "\
Exit status:
  0 success               5 timed out
  1 other failure         6 denied by the V4V ACL
  2 bad usage or input    7 stream reset (peer aborted or gone)
  3 daemon unreachable    8 message too big
  4 connection refused    9 not permitted (ACLs are edited from dom0, by root)
                         10 a limit was reached (the message names it)
                         11 unknown domain name (none, or not published to this domain)";

/// A failed command: its exit status and the one line for stderr.
#[derive(Debug)]
pub struct Failure {
    pub code: Exit,
    pub message: String,
    /// Print `message` as it is (lines that name their own source, like `FILE:LINE: ...`).
    pub verbatim: bool,
}

impl Failure {
    pub fn new(code: Exit, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
            verbatim: false,
        }
    }

    /// `what: error`, with the status the error implies.
    pub fn client(what: &str, e: Error) -> Self {
        match client_code(&e) {
            Ok(code) => Failure::new(code, format!("{what}: {e}")),
            Err(io) => Failure::io(what, io),
        }
    }

    /// `what: error` for I/O errors, streams' resets included.
    pub fn io(what: &str, e: &io::Error) -> Self {
        let code = match e.kind() {
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::HostUnreachable => Exit::Reset,
            io::ErrorKind::PermissionDenied => Exit::Denied,
            io::ErrorKind::TimedOut => Exit::TimedOut,
            io::ErrorKind::ConnectionRefused => Exit::Refused,
            io::ErrorKind::UnexpectedEof | io::ErrorKind::NotConnected => Exit::Unreachable,
            _ => Exit::Failure,
        };
        Failure::new(code, format!("{what}: {e}"))
    }
}

/// Errno names of "a limit was reached": quotas (`EDQUOT`), the domain's rings (`ENOSPC`), the
/// daemon's or a user's clients (`EMFILE`, `ENFILE`, `EUSERS`), buffer budgets (`ENOBUFS`).
fn is_limit(code: &str) -> bool {
    matches!(
        code,
        "EDQUOT" | "ENOSPC" | "EMFILE" | "ENFILE" | "EUSERS" | "ENOBUFS"
    )
}

/// The status a client error implies, or the I/O error to judge by its kind.
fn client_code(e: &Error) -> Result<Exit, &io::Error> {
    Ok(match e {
        Error::Refused(_) => Exit::Refused,
        Error::TimedOut(_) => Exit::TimedOut,
        Error::DaemonUnreachable { .. }
        | Error::DaemonGone(_)
        | Error::NotV4vd { .. }
        | Error::Unconfirmed { .. } => Exit::Unreachable,
        Error::MessageTooBig(_) => Exit::TooBig,
        Error::Denied => Exit::Denied,
        Error::UnknownName(_) => Exit::UnknownName,
        Error::Invalid(_) => Exit::Usage,
        Error::AddrInUse(_) | Error::Protocol(_) => Exit::Failure,
        Error::Daemon { code, .. } if code == "EPERM" => Exit::NotPermitted,
        Error::Daemon { code, .. } if code == "EINVAL" => Exit::Usage,
        Error::Daemon { code, .. } if is_limit(code) => Exit::Limit,
        Error::Daemon { .. } => Exit::Failure,
        // An earlier datagram's failure: its cause's status.
        Error::Undelivered { cause, .. } => return client_code(cause),
        Error::Io(e) => return Err(e),
    })
}
