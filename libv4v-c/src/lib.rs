// SPDX-License-Identifier: MIT OR Apache-2.0
//! The V4V client library for C (`libv4v.so`, `libv4v.a`, `<v4v/client.h>`): libv4v's blocking
//! client API behind a C ABI. See `docs/c-api.md`.
//!
//! This crate owns only the boundary: C strings and structs in, file descriptors, plain structs
//! and negative errno values out, a thread-local message for the last failure, and no unwinding
//! across it (every entry point catches panics). The protocol and its behaviour belong to
//! `libv4v`'s `client` module. The header is generated from this file by cbindgen
//! (`cbindgen.toml`); `tests/header.rs` fails when the checked-in header is stale.

#![allow(non_camel_case_types)]

use std::cell::RefCell;
use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::io;
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::time::Duration;

use v4v_rs::client::{self, Error, SockAddr};

/// A V4V address: domain and port.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct v4v_addr {
    pub domid: u16,
    pub port: u32,
}

/// What `v4v_stream_connect` and `v4v_accept` tell about a stream besides its descriptor.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct v4v_stream_info {
    /// The daemon's id for the stream, for `v4v_stream_end` and `v4v_stream_abort`.
    pub id: u64,
    /// The local ring port the stream's data arrives on.
    pub local_port: u32,
    /// The peer's address, as the hypervisor attested it.
    pub peer: v4v_addr,
}

/// A listening stream port (opaque).
#[derive(Debug)]
pub struct v4v_listener {
    l: client::Listener,
}

/// A bound datagram port (opaque).
#[derive(Debug)]
pub struct v4v_dgram {
    d: client::Datagram,
    /// The number of the datagram whose failure the last call returned (0: none).
    failed_seq: u64,
}

/// Any domain, as the partner of `v4v_dgram_bind` (`V4V_DOMID_ANY` of the hypervisor's ABI).
pub const V4V_DOMID_ANY: u16 = 0x7ff4;
const _: () = assert!(V4V_DOMID_ANY == v4v_rs::abi::DOMID_ANY);
/// Flag of `v4v_dgram_send` and `v4v_accept`: fail with `-EAGAIN` instead of waiting.
pub const V4V_NONBLOCK: c_int = 1;

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_error(msg: &str) {
    let c = CString::new(msg.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

/// The errno for an I/O error (its own code, else by kind).
fn io_errno(e: &io::Error) -> c_int {
    if let Some(n) = e.raw_os_error() {
        return n;
    }
    use io::ErrorKind as K;
    match e.kind() {
        K::WouldBlock => libc::EAGAIN,
        K::ConnectionReset => libc::ECONNRESET,
        K::ConnectionAborted => libc::ECONNABORTED,
        K::ConnectionRefused => libc::ECONNREFUSED,
        K::NotConnected => libc::ENOTCONN,
        K::TimedOut => libc::ETIMEDOUT,
        K::PermissionDenied => libc::EACCES,
        K::HostUnreachable => libc::EHOSTUNREACH,
        K::BrokenPipe => libc::EPIPE,
        K::AddrInUse => libc::EADDRINUSE,
        K::InvalidInput => libc::EINVAL,
        K::InvalidData | K::UnexpectedEof => libc::EPROTO,
        _ => libc::EIO,
    }
}

/// The errno for a client error.
fn errno_of(e: &Error) -> c_int {
    match e {
        Error::Refused(_) => libc::ECONNREFUSED,
        Error::TimedOut(_) => libc::ETIMEDOUT,
        Error::DaemonUnreachable { source, .. } => source.raw_os_error().unwrap_or(libc::ENOENT),
        Error::MessageTooBig(_) => libc::EMSGSIZE,
        Error::DaemonGone(_) => libc::ENOTCONN,
        Error::NotV4vd { .. } => libc::EPROTO,
        Error::Invalid(_) => libc::EINVAL,
        Error::AddrInUse(_) => libc::EADDRINUSE,
        Error::Denied => libc::EACCES,
        Error::UnknownName(_) => libc::ENOENT,
        Error::Daemon { code, .. } => match code.as_str() {
            "EINVAL" => libc::EINVAL,
            "ENOENT" => libc::ENOENT,
            "EMFILE" => libc::EMFILE,
            "EPERM" => libc::EPERM,
            "ENOMEM" => libc::ENOMEM,
            "EAGAIN" => libc::EAGAIN,
            "EBUSY" => libc::EBUSY,
            "ENOSPC" => libc::ENOSPC,
            "EPROTO" => libc::EPROTO,
            "EDQUOT" => libc::EDQUOT,
            "ENOBUFS" => libc::ENOBUFS,
            _ => libc::EIO,
        },
        Error::Protocol(_) => libc::EPROTO,
        Error::Io(e) => io_errno(e),
        Error::Undelivered { cause, .. } => errno_of(cause),
        Error::Unconfirmed { .. } => libc::ENOTCONN,
    }
}

/// A failure as C sees it: the message is kept for `v4v_last_error`, the errno returned.
struct Fail(c_int);

impl From<Error> for Fail {
    fn from(e: Error) -> Self {
        set_error(&e.to_string());
        Fail(errno_of(&e))
    }
}

impl From<io::Error> for Fail {
    fn from(e: io::Error) -> Self {
        set_error(&e.to_string());
        Fail(io_errno(&e))
    }
}

fn invalid(what: &str) -> Fail {
    set_error(what);
    Fail(libc::EINVAL)
}

/// Runs `f`, turning a failure into `-errno` and a panic into `-EIO`; never unwinds.
fn guard(f: impl FnOnce() -> Result<c_int, Fail>) -> c_int {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(n)) => n,
        Ok(Err(Fail(e))) => -e,
        Err(_) => {
            set_error("internal error in libv4v (a panic was caught)");
            -libc::EIO
        }
    }
}

/// The daemon's socket: `socket` if not NULL, else `V4V_SOCKET`, else the default.
///
/// # Safety
/// `socket` is NULL or a NUL-terminated string.
unsafe fn daemon_path(socket: *const c_char) -> PathBuf {
    if socket.is_null() {
        return client::socket_path();
    }
    // SAFETY: the caller passes a NUL-terminated string.
    let s = unsafe { CStr::from_ptr(socket) };
    PathBuf::from(std::ffi::OsStr::from_bytes(s.to_bytes()))
}

fn info_of(s: &client::Stream) -> v4v_stream_info {
    let p = s.peer_addr();
    v4v_stream_info {
        id: s.id(),
        local_port: s.local_port(),
        peer: v4v_addr {
            domid: p.domid,
            port: p.port,
        },
    }
}

/// Stores `info` through `out` when not NULL.
///
/// # Safety
/// `out` is NULL or valid for writing one `v4v_stream_info`.
unsafe fn put_info(out: *mut v4v_stream_info, info: v4v_stream_info) {
    if !out.is_null() {
        // SAFETY: the caller's pointer is valid for one write.
        unsafe { out.write(info) };
    }
}

/// The message of this thread's last failure (empty when none failed yet). The string stays
/// valid until the next failing call on the same thread.
#[unsafe(no_mangle)]
pub extern "C" fn v4v_last_error() -> *const c_char {
    catch_unwind(|| LAST_ERROR.with(|e| e.borrow().as_ptr())).unwrap_or(c"".as_ptr())
}

/// Connects a stream to `peer` through the daemon at `socket` (NULL: `$V4V_SOCKET`, else
/// `/run/v4v/v4vd.sock`). Returns the stream's descriptor (blocking, close-on-exec), for
/// read/write/poll/epoll and `close`, and fills `info` when not NULL; or `-errno`
/// (`-ECONNREFUSED` when nobody listens, `-ETIMEDOUT`, `-EACCES`, ...).
///
/// # Safety
/// `socket` is NULL or a NUL-terminated string; `info` is NULL or valid for writing.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn v4v_stream_connect(
    socket: *const c_char,
    peer: v4v_addr,
    info: *mut v4v_stream_info,
) -> c_int {
    guard(|| {
        // SAFETY: forwarded from this function's contract.
        let daemon = unsafe { daemon_path(socket) };
        let s = client::Stream::connect_with(&daemon, SockAddr::new(peer.domid, peer.port))?;
        // SAFETY: forwarded from this function's contract.
        unsafe { put_info(info, info_of(&s)) };
        Ok(OwnedFd::from(s).into_raw_fd())
    })
}

/// How stream `id` ended, asked after `read` returned 0 or `write` failed with `EPIPE`: 0 when
/// the peer closed orderly (and everything was delivered), else the reset as `-errno`:
/// `-ECONNRESET` (the peer aborted), `-EHOSTUNREACH` (its domain or daemon is gone),
/// `-EACCES` (the ACL refused the stream's data), `-ETIMEDOUT`, `-ECONNABORTED`, `-ENOTCONN`
/// (the local daemon went away). `v4v_last_error` says what happened.
///
/// # Safety
/// `socket` is NULL or a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn v4v_stream_end(socket: *const c_char, id: u64) -> c_int {
    guard(|| {
        // SAFETY: forwarded from this function's contract.
        let daemon = unsafe { daemon_path(socket) };
        client::Stream::end_of(&daemon, id)?;
        Ok(0)
    })
}

/// Aborts stream `id`: its peer reads a reset, not end of file. Close the descriptor after.
///
/// # Safety
/// `socket` is NULL or a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn v4v_stream_abort(socket: *const c_char, id: u64) -> c_int {
    guard(|| {
        // SAFETY: forwarded from this function's contract.
        let daemon = unsafe { daemon_path(socket) };
        client::Stream::abort_by_id(&daemon, id)?;
        Ok(0)
    })
}

/// Listens for streams on `port` (0 = ephemeral). Stores the listener in `*out`; returns 0 or
/// `-errno` (`-EADDRINUSE` when the port is bound).
///
/// # Safety
/// `socket` is NULL or a NUL-terminated string; `out` is valid for writing one pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn v4v_listen(
    socket: *const c_char,
    port: u32,
    out: *mut *mut v4v_listener,
) -> c_int {
    guard(|| {
        if out.is_null() {
            return Err(invalid("v4v_listen: out is NULL"));
        }
        // SAFETY: forwarded from this function's contract.
        let daemon = unsafe { daemon_path(socket) };
        let l = client::Listener::bind_with(&daemon, port)?;
        // SAFETY: `out` is not NULL and, by contract, valid for one write.
        unsafe { out.write(Box::into_raw(Box::new(v4v_listener { l }))) };
        Ok(0)
    })
}

/// The listener's descriptor: it polls readable when a connection waits to be accepted. Only
/// for poll/epoll: reading it would lose connections.
///
/// # Safety
/// `l` is a listener from `v4v_listen`, not closed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn v4v_listener_fd(l: *const v4v_listener) -> c_int {
    // SAFETY: by contract, `l` is NULL or a live listener.
    match unsafe { l.as_ref() } {
        Some(l) => l.l.as_raw_fd(),
        None => -libc::EINVAL,
    }
}

/// The listening port (the one chosen, for port 0).
///
/// # Safety
/// `l` is a listener from `v4v_listen`, not closed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn v4v_listener_port(l: *const v4v_listener) -> u32 {
    // SAFETY: by contract, `l` is NULL or a live listener.
    unsafe { l.as_ref() }.map_or(0, |l| l.l.local_port())
}

/// Accepts one stream: returns its descriptor (as `v4v_stream_connect`'s) and fills `info`;
/// waits for one unless `flags` has `V4V_NONBLOCK` (then `-EAGAIN` when none waits).
///
/// # Safety
/// `l` is a listener from `v4v_listen`, not closed and not used by another thread at the same
/// time; `info` is NULL or valid for writing.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn v4v_accept(
    l: *mut v4v_listener,
    info: *mut v4v_stream_info,
    flags: c_int,
) -> c_int {
    guard(|| {
        // SAFETY: by contract, `l` is NULL or a live listener used by this thread alone.
        let Some(l) = (unsafe { l.as_mut() }) else {
            return Err(invalid("v4v_accept: listener is NULL"));
        };
        let nonblocking = flags & V4V_NONBLOCK != 0;
        l.l.set_nonblocking(nonblocking)?;
        let r = l.l.accept();
        if nonblocking {
            l.l.set_nonblocking(false)?;
        }
        let (s, _) = r?;
        // SAFETY: forwarded from this function's contract.
        unsafe { put_info(info, info_of(&s)) };
        Ok(OwnedFd::from(s).into_raw_fd())
    })
}

/// Stops listening (connections not accepted yet are reset) and frees the listener. NULL is
/// allowed.
///
/// # Safety
/// `l` is NULL or a listener from `v4v_listen`, not closed yet; it is not used afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn v4v_listener_close(l: *mut v4v_listener) {
    if !l.is_null() {
        // SAFETY: `l` came from Box::into_raw in v4v_listen and is freed once.
        let b = unsafe { Box::from_raw(l) };
        let _ = catch_unwind(AssertUnwindSafe(move || drop(b)));
    }
}

/// Binds datagram port `port` (0 = ephemeral), accepting from `partner` only, or from anyone
/// with `V4V_DOMID_ANY`. Stores the port in `*out`; returns 0 or `-errno`.
///
/// # Safety
/// `socket` is NULL or a NUL-terminated string; `out` is valid for writing one pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn v4v_dgram_bind(
    socket: *const c_char,
    port: u32,
    partner: u16,
    out: *mut *mut v4v_dgram,
) -> c_int {
    guard(|| {
        if out.is_null() {
            return Err(invalid("v4v_dgram_bind: out is NULL"));
        }
        // SAFETY: forwarded from this function's contract.
        let daemon = unsafe { daemon_path(socket) };
        let partner = (partner != V4V_DOMID_ANY).then_some(partner);
        let mut d = client::Datagram::bind_with(&daemon, port, partner)?;
        // Each send answers for itself unless the program asks for a window.
        d.set_window(1)?;
        // SAFETY: `out` is not NULL and, by contract, valid for one write.
        unsafe { out.write(Box::into_raw(Box::new(v4v_dgram { d, failed_seq: 0 }))) };
        Ok(0)
    })
}

/// The bound port (the one chosen, for port 0).
///
/// # Safety
/// `d` is a port from `v4v_dgram_bind`, not closed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn v4v_dgram_port(d: *const v4v_dgram) -> u32 {
    // SAFETY: by contract, `d` is NULL or a live port.
    unsafe { d.as_ref() }.map_or(0, |d| d.d.local_port())
}

/// The port's descriptor, for poll/epoll only (it carries framed messages): readable means
/// `v4v_dgram_recv` will find data, but a datagram can also be waiting with the descriptor not
/// readable (received along with another, or while sending), so after a wake-up call
/// `v4v_dgram_recv` with timeout 0 until it returns `-EAGAIN`.
///
/// # Safety
/// `d` is a port from `v4v_dgram_bind`, not closed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn v4v_dgram_fd(d: *const v4v_dgram) -> c_int {
    // SAFETY: by contract, `d` is NULL or a live port.
    match unsafe { d.as_ref() } {
        Some(d) => d.d.as_raw_fd(),
        None => -libc::EINVAL,
    }
}

/// Sends one datagram of `len` bytes to `dst`. Returns `len` once the hypervisor took it, or
/// `-errno`: `-ECONNREFUSED` (no such domain or port), `-EMSGSIZE`, `-EACCES` (the ACL
/// refused it), `-EAGAIN` (the destination ring is full and `flags` has `V4V_NONBLOCK`;
/// without it the call waits for space).
///
/// With a window over 1 (`v4v_dgram_set_window`) it returns `len` once the daemon has the
/// datagram; `-EAGAIN` with `V4V_NONBLOCK` means the window is full. A `-errno` may then be an
/// earlier datagram's failure, returned instead of sending this one (send it again):
/// `v4v_dgram_failed_seq` gives that datagram's number, `v4v_last_error` the whole story.
///
/// # Safety
/// `d` is a live port used by this thread alone; `buf` is valid for reading `len` bytes (or
/// `len` is 0).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn v4v_dgram_send(
    d: *mut v4v_dgram,
    buf: *const c_void,
    len: usize,
    dst: v4v_addr,
    flags: c_int,
) -> c_int {
    guard(|| {
        // SAFETY: by contract, `d` is NULL or a live port used by this thread alone.
        let Some(d) = (unsafe { d.as_mut() }) else {
            return Err(invalid("v4v_dgram_send: port is NULL"));
        };
        if buf.is_null() && len > 0 {
            return Err(invalid("v4v_dgram_send: buf is NULL"));
        }
        if len > c_int::MAX as usize {
            return Err(Error::MessageTooBig(format!("{len} bytes")).into());
        }
        let data: &[u8] = if len == 0 {
            &[]
        } else {
            // SAFETY: by contract, `buf` is valid for reading `len` bytes.
            unsafe { std::slice::from_raw_parts(buf.cast(), len) }
        };
        let nonblocking = flags & V4V_NONBLOCK != 0;
        if nonblocking {
            d.d.set_nonblocking(true)?;
        }
        let r = d.d.send_to(data, SockAddr::new(dst.domid, dst.port));
        if nonblocking {
            d.d.set_nonblocking(false)?;
        }
        Ok(d.note(r)? as c_int)
    })
}

impl v4v_dgram {
    /// Remembers which datagram a failure is about.
    fn note<T>(&mut self, r: Result<T, Error>) -> Result<T, Error> {
        self.failed_seq = match &r {
            Err(Error::Undelivered { seq, .. }) => *seq,
            _ => 0,
        };
        r
    }
}

/// Sets how many datagrams `v4v_dgram_send` may leave outstanding (sent, not answered by the
/// daemon yet): 1, the default, makes each send wait for its own answer; up to 65536 lets sends
/// return as soon as the daemon has them (see `v4v_dgram_send` and `v4v_dgram_flush`). Returns
/// 0 or `-EINVAL`.
///
/// # Safety
/// `d` is a live port used by this thread alone.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn v4v_dgram_set_window(d: *mut v4v_dgram, n: u32) -> c_int {
    guard(|| {
        // SAFETY: by contract, `d` is NULL or a live port used by this thread alone.
        let Some(d) = (unsafe { d.as_mut() }) else {
            return Err(invalid("v4v_dgram_set_window: port is NULL"));
        };
        d.d.set_window(n as usize)?;
        Ok(0)
    })
}

/// The number of the latest datagram `v4v_dgram_send` accepted: the n-th is number n (0 before
/// the first).
///
/// # Safety
/// `d` is a port from `v4v_dgram_bind`, not closed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn v4v_dgram_sent(d: *const v4v_dgram) -> u64 {
    // SAFETY: by contract, `d` is NULL or a live port.
    unsafe { d.as_ref() }.map_or(0, |d| d.d.sent())
}

/// Waits at most `timeout_ms` milliseconds (-1: no limit) until every datagram sent was
/// answered. Returns 0 when none failed; else `-errno` of the oldest failure not reported yet
/// (`v4v_dgram_failed_seq` gives its number; call again for the next), `-ENOTCONN` when the
/// daemon went away before answering some (`v4v_last_error` names which: each may or may not
/// have been delivered), `-ETIMEDOUT` when some are still outstanding.
///
/// # Safety
/// `d` is a live port used by this thread alone.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn v4v_dgram_flush(d: *mut v4v_dgram, timeout_ms: c_int) -> c_int {
    guard(|| {
        // SAFETY: by contract, `d` is NULL or a live port used by this thread alone.
        let Some(d) = (unsafe { d.as_mut() }) else {
            return Err(invalid("v4v_dgram_flush: port is NULL"));
        };
        let timeout =
            (timeout_ms >= 0).then(|| std::time::Duration::from_millis(timeout_ms as u64));
        let r = d.d.flush_timeout(timeout);
        d.note(r)?;
        Ok(0)
    })
}

/// The number of the datagram whose failure the last `v4v_dgram_send` or `v4v_dgram_flush` on
/// `d` returned; 0 when that call did not return an earlier datagram's failure.
///
/// # Safety
/// `d` is a port from `v4v_dgram_bind`, not closed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn v4v_dgram_failed_seq(d: *const v4v_dgram) -> u64 {
    // SAFETY: by contract, `d` is NULL or a live port.
    unsafe { d.as_ref() }.map_or(0, |d| d.failed_seq)
}

/// Receives one datagram into `buf` (at most `len` bytes are stored; the rest of a longer one
/// is dropped) and its sender into `src` (when not NULL; the hypervisor attests it). Waits at
/// most `timeout_ms` milliseconds (-1: no limit, 0: only what is there). Returns the
/// datagram's whole length (more than `len` when it was truncated), or `-errno` (`-EAGAIN`
/// when nothing came in time).
///
/// # Safety
/// `d` is a live port used by this thread alone; `buf` is valid for writing `len` bytes (or
/// `len` is 0); `src` is NULL or valid for writing.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn v4v_dgram_recv(
    d: *mut v4v_dgram,
    buf: *mut c_void,
    len: usize,
    src: *mut v4v_addr,
    timeout_ms: c_int,
) -> c_int {
    guard(|| {
        // SAFETY: by contract, `d` is NULL or a live port used by this thread alone.
        let Some(d) = (unsafe { d.as_mut() }) else {
            return Err(invalid("v4v_dgram_recv: port is NULL"));
        };
        if buf.is_null() && len > 0 {
            return Err(invalid("v4v_dgram_recv: buf is NULL"));
        }
        let timeout = u64::try_from(timeout_ms).ok().map(Duration::from_millis);
        let (msg, from) = match d.d.recv_timeout(timeout) {
            Err(Error::TimedOut(_)) => {
                set_error("no datagram arrived in time");
                return Err(Fail(libc::EAGAIN));
            }
            r => r?,
        };
        let n = msg.len().min(len);
        if n > 0 {
            // SAFETY: by contract, `buf` is valid for writing `len` >= `n` bytes; `msg` is
            // ours and does not overlap it.
            unsafe { std::ptr::copy_nonoverlapping(msg.as_ptr(), buf.cast::<u8>(), n) };
        }
        if !src.is_null() {
            // SAFETY: by contract, `src` is valid for one write.
            unsafe {
                src.write(v4v_addr {
                    domid: from.domid,
                    port: from.port,
                })
            };
        }
        Ok(c_int::try_from(msg.len()).unwrap_or(c_int::MAX))
    })
}

/// Unbinds the port and frees it. NULL is allowed.
///
/// # Safety
/// `d` is NULL or a port from `v4v_dgram_bind`, not closed yet; it is not used afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn v4v_dgram_close(d: *mut v4v_dgram) {
    if !d.is_null() {
        // SAFETY: `d` came from Box::into_raw in v4v_dgram_bind and is freed once.
        let b = unsafe { Box::from_raw(d) };
        let _ = catch_unwind(AssertUnwindSafe(move || drop(b)));
    }
}
