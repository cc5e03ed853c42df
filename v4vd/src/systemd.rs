// SPDX-License-Identifier: MIT OR Apache-2.0
//! What v4vd does for systemd, without libsystemd: the notify protocol (readiness, watchdog,
//! stopping), socket activation (`LISTEN_FDS`), and logging to the journal.
//!
//! Each protocol is a few lines: `sd_notify` is one `KEY=VALUE` datagram to `$NOTIFY_SOCKET`;
//! socket activation passes descriptors from 3 on, named by `$LISTEN_PID`/`$LISTEN_FDS`; the
//! journal's native protocol is one datagram of fields to `/run/systemd/journal/socket`. This
//! module reads the environment and speaks those protocols; it does not decide when the daemon is
//! ready (the caller does) nor keep any daemon state.

use std::io;
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::time::Duration;

/// The first descriptor systemd passes (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: RawFd = 3;

/// The journal's native socket.
pub const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// A connection to the service manager's notify socket (`$NOTIFY_SOCKET`).
#[derive(Debug)]
pub struct Notifier {
    sock: UnixDatagram,
    addr: std::os::unix::net::SocketAddr,
}

impl Notifier {
    /// The notifier `$NOTIFY_SOCKET` names (a path, or `@name` for an abstract socket);
    /// `Ok(None)` when it is not set (not run by systemd, or not `Type=notify`).
    pub fn from_env() -> io::Result<Option<Notifier>> {
        let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
            return Ok(None);
        };
        let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
        let addr = match bytes.strip_prefix(b"@") {
            Some(name) => <std::os::unix::net::SocketAddr as std::os::linux::net::SocketAddrExt>::from_abstract_name(name)?,
            None => std::os::unix::net::SocketAddr::from_pathname(&path)?,
        };
        Ok(Some(Notifier {
            sock: UnixDatagram::unbound()?,
            addr,
        }))
    }

    /// Sends `state` (`READY=1`, `WATCHDOG=1`, `STOPPING=1`, `STATUS=...`, newline-separated).
    pub fn notify(&self, state: &str) -> io::Result<()> {
        self.sock
            .send_to_addr(state.as_bytes(), &self.addr)
            .map(|_| ())
    }
}

/// How often to send `WATCHDOG=1`: half of `$WATCHDOG_USEC`, when the watchdog is on and meant
/// for this process (`$WATCHDOG_PID` unset or ours).
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

/// Why a passed descriptor cannot be v4vd's socket.
#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    /// `LISTEN_FDS` is not a count v4vd can use.
    #[error("socket activation: LISTEN_FDS={0:?}, but v4vd takes exactly one socket")]
    Count(String),
    /// The descriptor is not a listening Unix stream socket.
    #[error("socket activation: descriptor 3 is not a listening Unix stream socket ({0})")]
    NotAListener(String),
}

/// The listening socket systemd passed (`v4vd.socket`), when this process was socket-activated.
/// Removes nothing from the environment: the caller does, before other threads exist.
pub fn listen_fd() -> Result<Option<UnixListener>, ActivationError> {
    let pid_ok = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        == Some(std::process::id());
    if !pid_ok {
        return Ok(None);
    }
    let n = std::env::var("LISTEN_FDS").unwrap_or_default();
    if n != "1" {
        return Err(ActivationError::Count(n));
    }
    let fd = LISTEN_FDS_START;
    let opt = |level: libc::c_int, name: libc::c_int| -> Result<libc::c_int, ActivationError> {
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `v` and `len` are valid and writable, and `len` is `v`'s size; a descriptor
        // that is not a socket makes the call fail, nothing else.
        let r = unsafe { libc::getsockopt(fd, level, name, (&raw mut v).cast(), &mut len) };
        if r != 0 {
            return Err(ActivationError::NotAListener(
                io::Error::last_os_error().to_string(),
            ));
        }
        Ok(v)
    };
    let domain = opt(libc::SOL_SOCKET, libc::SO_DOMAIN)?;
    let ty = opt(libc::SOL_SOCKET, libc::SO_TYPE)?;
    let listening = opt(libc::SOL_SOCKET, libc::SO_ACCEPTCONN)?;
    if domain != libc::AF_UNIX || ty != libc::SOCK_STREAM || listening == 0 {
        return Err(ActivationError::NotAListener(format!(
            "domain {domain}, type {ty}, listening {listening}"
        )));
    }
    // SAFETY: fd 3 is an open descriptor (getsockopt succeeded on it) that systemd handed to
    // this process; nothing else in v4vd owns it, so the listener becomes its one owner.
    // Setting FD_CLOEXEC on it only keeps it from children.
    unsafe {
        libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
        Ok(Some(UnixListener::from_raw_fd(fd)))
    }
}

/// Whether stderr is connected to the journal: `$JOURNAL_STREAM` names its device and inode.
pub fn stderr_is_journal() -> bool {
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = v.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    // SAFETY: all-zero is a valid `struct stat` (integers only).
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid, writable stat buffer; fd 2 may be closed, then fstat fails.
    if unsafe { libc::fstat(2, &mut st) } != 0 {
        return false;
    }
    dev.parse::<u64>().ok() == Some(st.st_dev) && ino.parse::<u64>().ok() == Some(st.st_ino)
}

/// The syslog priority of a tracing level, as the journal and `<N>` prefixes take it.
pub fn priority(level: &tracing::Level) -> u8 {
    match *level {
        tracing::Level::ERROR => 3,
        tracing::Level::WARN => 4,
        tracing::Level::INFO => 6,
        _ => 7,
    }
}

/// Appends one field in the journal's native format: `NAME=value\n`, or for a value with a
/// newline, `NAME\n`, its length as 64-bit little endian, the value, `\n`.
pub fn push_field(buf: &mut Vec<u8>, name: &str, value: &[u8]) {
    buf.extend_from_slice(name.as_bytes());
    if value.contains(&b'\n') {
        buf.push(b'\n');
        buf.extend_from_slice(&(value.len() as u64).to_le_bytes());
    } else {
        buf.push(b'=');
    }
    buf.extend_from_slice(value);
    buf.push(b'\n');
}

/// A journal field name for a tracing field: `V4V_` and the name in capitals (`uid` is
/// `V4V_UID`), other characters as `_`, so no field of ours can pose as a trusted one.
pub fn field_name(name: &str) -> String {
    let mut s = String::from("V4V_");
    s.extend(name.chars().map(|c| {
        if c.is_ascii_alphanumeric() {
            c.to_ascii_uppercase()
        } else {
            '_'
        }
    }));
    s
}

/// Collects an event's message and its other fields.
#[derive(Default)]
struct Fields {
    message: String,
    fields: Vec<(&'static str, String)>,
}

impl tracing::field::Visit for Fields {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_string();
        } else {
            self.fields.push((field.name(), value.to_string()));
        }
    }
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        } else {
            self.fields.push((field.name(), format!("{value:?}")));
        }
    }
}

/// The log layer used when stderr is the journal: each event is one native journal entry with
/// `PRIORITY`, `MESSAGE` (the message and its fields, as on stderr) and one `V4V_*` field per
/// tracing field (`V4V_UID`, `V4V_PID`, `V4V_PORT`, ...). When the journal socket cannot take it
/// (gone, or the entry is too big for a datagram), the line goes to stderr with a `<N>` priority
/// prefix and no timestamp, which journald reads the same way.
pub struct JournalLayer {
    sock: Option<UnixDatagram>,
}

impl JournalLayer {
    /// Connects to the journal's socket (falling back to stderr when that fails).
    pub fn new() -> JournalLayer {
        let sock = UnixDatagram::unbound()
            .and_then(|s| s.connect(JOURNAL_SOCKET).map(|()| s))
            .ok();
        JournalLayer { sock }
    }
}

impl Default for JournalLayer {
    fn default() -> Self {
        JournalLayer::new()
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for JournalLayer {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let mut f = Fields::default();
        event.record(&mut f);
        let meta = event.metadata();
        let prio = priority(meta.level());
        let mut line = f.message.clone();
        for (k, v) in &f.fields {
            line.push_str(&format!(" {k}={v}"));
        }
        if let Some(sock) = &self.sock {
            let mut buf = Vec::with_capacity(line.len() + 128);
            push_field(&mut buf, "PRIORITY", prio.to_string().as_bytes());
            push_field(&mut buf, "SYSLOG_IDENTIFIER", b"v4vd");
            push_field(&mut buf, "MESSAGE", line.as_bytes());
            push_field(&mut buf, "CODE_MODULE", meta.target().as_bytes());
            for (k, v) in &f.fields {
                push_field(&mut buf, &field_name(k), v.as_bytes());
            }
            if sock.send(&buf).is_ok() {
                return;
            }
        }
        // One write per line, so lines of different threads do not interleave.
        use std::io::Write;
        let _ = std::io::stderr().write_all(format!("<{prio}>{line}\n").as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_fields() {
        let mut b = Vec::new();
        push_field(&mut b, "MESSAGE", b"one line");
        push_field(&mut b, "MESSAGE", b"two\nlines");
        let mut want = b"MESSAGE=one line\nMESSAGE\n".to_vec();
        want.extend_from_slice(&9u64.to_le_bytes());
        want.extend_from_slice(b"two\nlines\n");
        assert_eq!(b, want);
        assert_eq!(field_name("uid"), "V4V_UID");
        assert_eq!(field_name("r.len"), "V4V_R_LEN");
    }

    #[test]
    fn priorities() {
        assert_eq!(priority(&tracing::Level::ERROR), 3);
        assert_eq!(priority(&tracing::Level::WARN), 4);
        assert_eq!(priority(&tracing::Level::INFO), 6);
        assert_eq!(priority(&tracing::Level::DEBUG), 7);
    }
}
