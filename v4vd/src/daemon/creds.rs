// SPDX-License-Identifier: MIT OR Apache-2.0
//! The libc calls of v4vd about clients (but reading passed descriptors, `fdpass.rs`): their credentials (`SO_PEERCRED`, `SO_PEERGROUPS`), whether
//! it hung up (`poll`), a stream client's send buffer (`SO_SNDBUF`), and the descriptor limit
//! (`getrlimit`). Owns nothing; each function borrows a live socket for one call.

use std::io;
use std::os::fd::AsRawFd;

use mio::net::UnixStream;

/// Credentials of a client (SO_PEERCRED), kept for ACL permission checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cred {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
}

/// Whether the client closed its connection in both directions (`POLLHUP`). A client that
/// only shut down writing is still there.
pub(super) fn hung_up(s: &UnixStream) -> bool {
    let mut p = libc::pollfd {
        fd: s.as_raw_fd(),
        events: 0,
        revents: 0,
    };
    // SAFETY: `p` is one valid pollfd for the duration of the call; timeout 0 never blocks.
    let r = unsafe { libc::poll(&mut p, 1, 0) };
    r > 0 && p.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0
}

/// Asks for a send buffer of `bytes` on a client's socket (the kernel caps it at
/// `net.core.wmem_max`); best effort: a failure leaves the default, which only costs more
/// wake-ups.
pub(super) fn set_send_buffer(s: &UnixStream, bytes: usize) {
    let v = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: `v` is a live c_int for the duration of the call and its size is passed; the fd is
    // a live socket.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&v as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
}

/// The client's supplementary groups (`SO_PEERGROUPS`, Linux 4.13).
pub(super) fn peer_groups(s: &UnixStream) -> io::Result<Vec<u32>> {
    let mut groups = vec![0u32; 64];
    loop {
        let mut len = (groups.len() * size_of::<u32>()) as libc::socklen_t;
        // SAFETY: `groups` is valid for writes of `len` bytes; the fd is a live socket.
        let r = unsafe {
            libc::getsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let n = len as usize / size_of::<u32>();
        if r == 0 {
            groups.truncate(n);
            return Ok(groups);
        }
        let e = io::Error::last_os_error();
        // ERANGE: `len` now says how much is needed.
        if e.raw_os_error() == Some(libc::ERANGE) && n > groups.len() && n <= 65536 {
            groups.resize(n, 0);
            continue;
        }
        return Err(e);
    }
}

pub(super) fn peer_cred(s: &UnixStream) -> io::Result<Cred> {
    let mut c = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `c` and `len` are valid for writes and sized for SO_PEERCRED's struct ucred; the fd
    // is a live socket owned by `s`.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut c as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Cred {
        pid: c.pid,
        uid: c.uid,
        gid: c.gid,
    })
}

/// The process's descriptor limit (soft), if it can be read.
pub(super) fn descriptor_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit.
    let r = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    (r == 0).then_some(lim.rlim_cur)
}
