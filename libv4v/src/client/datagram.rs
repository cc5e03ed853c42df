// SPDX-License-Identifier: MIT OR Apache-2.0
//! [`Datagram`]: a bound V4V datagram port.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use super::proto::{
    FRAME_DATA, FRAME_HEADER_SIZE, FRAME_SEND, FRAME_STATUS, FrameHeader, MAX_DGRAM, Reply,
    Request, SEND_F_NOWAIT, SockAddr,
};
use super::{Error, handshake, socket_path};
use crate::abi::DomId;

/// A bound V4V datagram port, like `std::net::UdpSocket`.
#[derive(Debug)]
pub struct Datagram {
    sock: UnixStream,
    local_port: u32,
    nonblocking: bool,
    /// Bytes of a frame not complete yet.
    inbuf: Vec<u8>,
    /// Datagrams that arrived while `send_to` waited for its status.
    queued: VecDeque<(SockAddr, Vec<u8>)>,
}

/// Waits until `fd` is readable (`POLLIN`) or writable (`POLLOUT`).
pub(crate) fn wait_fd(fd: RawFd, events: libc::c_short) -> io::Result<()> {
    wait_fd_until(fd, events, None).map(|_| ())
}

/// Like [`wait_fd`], giving up at `deadline`: `Ok(false)` when it passed.
pub(crate) fn wait_fd_until(
    fd: RawFd,
    events: libc::c_short,
    deadline: Option<Instant>,
) -> io::Result<bool> {
    let mut p = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    loop {
        let ms = match deadline {
            None => -1,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    // Past the deadline, still look once: a zero timeout takes what is there.
                    0
                } else {
                    // Round up so that a wake-up before the deadline is never a busy loop.
                    i32::try_from(left.as_millis() + 1).unwrap_or(i32::MAX)
                }
            }
        };
        // SAFETY: `p` is one valid pollfd for the duration of the call.
        let r = unsafe { libc::poll(&mut p, 1, ms) };
        if r > 0 {
            return Ok(true);
        }
        if r == 0 && ms == 0 {
            return Ok(false);
        }
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

impl Datagram {
    /// Binds `port` (0 = an ephemeral port) on the local domain, accepting from anyone.
    pub fn bind(port: u32) -> Result<Self, Error> {
        Self::bind_with(&socket_path(), port, None)
    }

    /// Binds `port` through the daemon at `daemon`, optionally accepting only from `partner`.
    pub fn bind_with(daemon: &Path, port: u32, partner: Option<DomId>) -> Result<Self, Error> {
        let (sock, reply) = handshake(daemon, &Request::Dgram(port, partner))?;
        let Reply::Port(local_port) = reply else {
            return Err(Error::Protocol(format!("unexpected DGRAM reply {reply}")));
        };
        Ok(Datagram {
            sock,
            local_port,
            nonblocking: false,
            inbuf: Vec::new(),
            queued: VecDeque::new(),
        })
    }

    /// The bound port.
    pub fn local_port(&self) -> u32 {
        self.local_port
    }

    /// Non-blocking mode: `recv_from` returns `WouldBlock` when nothing is there, and `send_to`
    /// returns `WouldBlock` when the destination ring is full instead of waiting for space.
    pub fn set_nonblocking(&mut self, on: bool) -> io::Result<()> {
        self.sock.set_nonblocking(on)?;
        self.nonblocking = on;
        Ok(())
    }

    /// Sends one datagram; returns its length once the hypervisor took it.
    pub fn send_to(&mut self, buf: &[u8], dst: SockAddr) -> Result<usize, Error> {
        let h = send_header(buf, dst, self.nonblocking)?;
        self.write_all(&h.encode())
            .and_then(|()| self.write_all(buf))
            .map_err(|e| match e {
                Error::Io(e) => Error::after_handshake(e),
                e => e,
            })?;
        loop {
            let (h, payload) = self
                .next_frame(true)?
                .ok_or_else(|| Error::Protocol("no status for a send".into()))?;
            match h.kind {
                FRAME_STATUS => return send_status(&h, &payload, dst).map(|()| buf.len()),
                FRAME_DATA => self.queued.push_back((h.addr(), payload)),
                k => return Err(Error::Protocol(format!("unexpected frame kind {k}"))),
            }
        }
    }

    /// Receives one datagram into `buf` (the excess of a longer one is dropped); returns the
    /// bytes copied and the sender.
    pub fn recv_from(&mut self, buf: &mut [u8]) -> Result<(usize, SockAddr), Error> {
        let (from, payload) = match self.queued.pop_front() {
            Some(x) => x,
            None => loop {
                match self.next_frame(!self.nonblocking)? {
                    Some((h, p)) if h.kind == FRAME_DATA => break (h.addr(), p),
                    Some(_) => continue,
                    None => return Err(Error::Io(io::ErrorKind::WouldBlock.into())),
                }
            },
        };
        let n = payload.len().min(buf.len());
        buf[..n].copy_from_slice(&payload[..n]);
        Ok((n, from))
    }

    /// Receives one whole datagram and its sender, waiting at most `timeout` (`None`: no
    /// limit) — [`Error::TimedOut`] when nothing came. Ignores non-blocking mode.
    pub fn recv_timeout(
        &mut self,
        timeout: Option<Duration>,
    ) -> Result<(Vec<u8>, SockAddr), Error> {
        if let Some((from, payload)) = self.queued.pop_front() {
            return Ok((payload, from));
        }
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            match self.buffered_frame()? {
                Some((h, p)) if h.kind == FRAME_DATA => return Ok((p, h.addr())),
                Some(_) => continue,
                None => {
                    if !wait_fd_until(self.sock.as_raw_fd(), libc::POLLIN, deadline)? {
                        return Err(Error::TimedOut("no datagram arrived".into()));
                    }
                    // Readable: one read does not block, whatever the socket's mode.
                    self.fill()?;
                }
            }
        }
    }

    /// A whole frame from what was read already.
    fn buffered_frame(&mut self) -> Result<Option<(FrameHeader, Vec<u8>)>, Error> {
        if self.inbuf.len() < FRAME_HEADER_SIZE {
            return Ok(None);
        }
        let mut hb = [0u8; FRAME_HEADER_SIZE];
        hb.copy_from_slice(&self.inbuf[..FRAME_HEADER_SIZE]);
        let h = FrameHeader::decode(&hb);
        if h.len > MAX_DGRAM {
            return Err(Error::Protocol(format!("frame of {} bytes", h.len)));
        }
        let total = FRAME_HEADER_SIZE + h.len as usize;
        if self.inbuf.len() < total {
            return Ok(None);
        }
        let payload = self.inbuf[FRAME_HEADER_SIZE..total].to_vec();
        self.inbuf.drain(..total);
        Ok(Some((h, payload)))
    }

    /// One read from the daemon into the frame buffer (`WouldBlock` passes through).
    fn fill(&mut self) -> Result<(), Error> {
        let mut tmp = [0u8; 64 * 1024];
        loop {
            match self.sock.read(&mut tmp) {
                Ok(0) => {
                    return Err(Error::DaemonGone(
                        "it closed the datagram connection".into(),
                    ));
                }
                Ok(n) => {
                    self.inbuf.extend_from_slice(&tmp[..n]);
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::after_handshake(e)),
            }
        }
    }

    fn write_all(&mut self, mut b: &[u8]) -> Result<(), Error> {
        while !b.is_empty() {
            match self.sock.write(b) {
                Ok(0) => return Err(Error::Io(io::ErrorKind::WriteZero.into())),
                Ok(n) => b = &b[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    wait_fd(self.sock.as_raw_fd(), libc::POLLOUT)?
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// The next whole frame; `None` when the socket would block and `wait` is false.
    fn next_frame(&mut self, wait: bool) -> Result<Option<(FrameHeader, Vec<u8>)>, Error> {
        loop {
            if let Some(f) = self.buffered_frame()? {
                return Ok(Some(f));
            }
            match self.fill() {
                Ok(()) => {}
                Err(Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    if !wait {
                        return Ok(None);
                    }
                    wait_fd(self.sock.as_raw_fd(), libc::POLLIN)?;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

impl AsRawFd for Datagram {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

impl AsFd for Datagram {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

#[cfg(feature = "tokio")]
/// What a [`Datagram`] is made of, for the async wrapper of this crate.
pub(crate) struct DatagramParts {
    pub(crate) sock: UnixStream,
    pub(crate) local_port: u32,
    pub(crate) inbuf: Vec<u8>,
    pub(crate) queued: VecDeque<(SockAddr, Vec<u8>)>,
}

#[cfg(feature = "tokio")]
impl Datagram {
    pub(crate) fn into_parts(self) -> DatagramParts {
        DatagramParts {
            sock: self.sock,
            local_port: self.local_port,
            inbuf: self.inbuf,
            queued: self.queued,
        }
    }

    pub(crate) fn from_parts(p: DatagramParts) -> Self {
        Datagram {
            sock: p.sock,
            local_port: p.local_port,
            nonblocking: false,
            inbuf: p.inbuf,
            queued: p.queued,
        }
    }
}

/// The SEND frame header for `buf` to `dst`, or why it cannot be sent at all. Shared by the
/// blocking and the async datagram types, so both refuse the same sends with the same words.
pub(crate) fn send_header(buf: &[u8], dst: SockAddr, nowait: bool) -> Result<FrameHeader, Error> {
    if dst.port == 0 {
        return Err(Error::Invalid("port 0 is not a destination".into()));
    }
    let too_big = || {
        Error::MessageTooBig(format!(
            "{} bytes, more than the V4V maximum of {MAX_DGRAM}",
            buf.len()
        ))
    };
    let len = u32::try_from(buf.len()).map_err(|_| too_big())?;
    if len > MAX_DGRAM {
        return Err(too_big());
    }
    Ok(FrameHeader {
        len,
        kind: FRAME_SEND,
        domain: dst.domid,
        port: dst.port,
        aux: if nowait { SEND_F_NOWAIT } else { 0 },
    })
}

/// What a send's STATUS frame says: success, or the error with the daemon's reason (sizes,
/// limits), which a failed status carries as its payload.
pub(crate) fn send_status(h: &FrameHeader, payload: &[u8], dst: SockAddr) -> Result<(), Error> {
    match h.aux {
        0 => Ok(()),
        e => Err(Error::from_errno(
            e as i32,
            &dst.to_string(),
            &String::from_utf8_lossy(payload),
        )),
    }
}
