// SPDX-License-Identifier: MIT OR Apache-2.0
//! Descriptors passed by clients (`SCM_RIGHTS`): a datagram client's channel, a stream
//! client's two channels. Reads them with the bytes they came with and bounds how many a client
//! can make the daemon hold.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// `read` of up to `len` bytes into `buf` that also takes the descriptors passed with them
/// (`SCM_RIGHTS`), at most `max`: any more are closed at once. Returns what read returns (or
/// -1, errno set) and the descriptors.
///
/// # Safety
/// `buf` is valid for writing `len` bytes.
pub(super) unsafe fn recv_with_fds<T>(
    sock: RawFd,
    buf: *mut T,
    len: usize,
    max: usize,
) -> (isize, Vec<OwnedFd>) {
    // Room for a few descriptors: a client passing more loses them (the kernel closes what does
    // not fit, MSG_CTRUNC), not us.
    let mut cbuf = [0u64; 8];
    let mut iov = libc::iovec {
        iov_base: buf.cast(),
        iov_len: len,
    };
    // SAFETY: an all-zero msghdr is valid; the fields set point at live buffers.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&cbuf);
    // SAFETY: `msg` points at `iov` (valid for `len` bytes, by contract) and `cbuf`.
    let r = unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC) };
    let mut fds = Vec::new();
    if r >= 0 {
        // SAFETY: the kernel filled `msg_controllen` bytes of `cbuf` with well-formed cmsgs;
        // CMSG_NXTHDR stays within them. Each descriptor is new in this process and owned
        // here: kept, or closed when its OwnedFd drops.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                    let data = libc::CMSG_DATA(c).cast::<RawFd>();
                    let n = ((*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize)
                        / std::mem::size_of::<RawFd>();
                    for i in 0..n {
                        let fd = OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i)));
                        if fds.len() < max {
                            fds.push(fd);
                        }
                    }
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
    }
    (r, fds)
}
