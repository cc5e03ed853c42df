// SPDX-License-Identifier: MIT OR Apache-2.0
//! [`Datagram`]: a bound V4V datagram port on tokio.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::path::Path;

use ::tokio::io::{AsyncWriteExt, Interest};
use ::tokio::net::UnixStream;

use super::blocking;
use crate::abi::DomId;
use crate::client::datagram::{DatagramParts, RecvChannel, SendWindow, send_header};
use crate::client::proto::{
    FRAME_CHAN, FRAME_DATA, FRAME_HEADER_SIZE, FRAME_RING, FrameHeader, SockAddr, ring_frame,
    split_frame,
};
use crate::client::{self, Error};
use crate::client::{Doorbell, WakePipe};

/// A bound V4V datagram port on tokio, like `tokio::net::UdpSocket`.
///
/// Sending is pipelined as on the blocking type (see [`client::Datagram`] for the whole
/// contract): `send_to` resolves once the daemon has the datagram, while at most
/// [`Datagram::window`] are outstanding (a full window waits, without blocking the runtime);
/// an earlier datagram's failure is returned by the next `send_to` as [`Error::Undelivered`]
/// (and that call sends nothing), or by [`Datagram::flush`]. Window 1: `send_to` resolves when
/// the hypervisor took the datagram and returns its own error.
///
/// Both methods are cancel-safe in that a dropped future loses nothing already received and
/// leaves the connection usable; a dropped `send_to` may still deliver its datagram (it then has
/// its sequence number, and its failure is reported like any other).
#[derive(Debug)]
pub struct Datagram {
    io: UnixStream,
    local_port: u32,
    /// Bytes of a frame not complete yet.
    inbuf: Vec<u8>,
    /// Datagrams that arrived while a send waited for the daemon.
    queued: VecDeque<(SockAddr, Vec<u8>)>,
    window: SendWindow,
    /// Bytes of SEND frames not yet written (left by a dropped `send_to`).
    out: Vec<u8>,
    /// The channel the daemon writes its frames into, if it took one at bind (the socket then
    /// brings only RING frames, the doorbell).
    rx: Option<RecvChannel>,
    /// The eventfd doorbell the daemon took, rung instead of RING frames.
    bell: Option<Doorbell>,
    /// The wake pipe the daemon took: unused here (this type sleeps in the reactor, on the
    /// socket, and arms its receive channel so), kept for `into_std`.
    wake: Option<WakePipe>,
}

impl Datagram {
    /// Binds `port` (0 = ephemeral) through the daemon of `V4V_SOCKET` (or the default),
    /// accepting from anyone.
    pub async fn bind(port: u32) -> Result<Self, Error> {
        Self::bind_with(&client::socket_path(), port, None).await
    }

    /// Binds `port` through the daemon at `daemon`, optionally accepting only from `partner`.
    pub async fn bind_with(
        daemon: &Path,
        port: u32,
        partner: Option<DomId>,
    ) -> Result<Self, Error> {
        let daemon = daemon.to_path_buf();
        let d = blocking(move || client::Datagram::bind_with(&daemon, port, partner)).await?;
        Ok(Datagram::try_from(d)?)
    }

    pub fn local_port(&self) -> u32 {
        self.local_port
    }

    /// Sets how many datagrams may be outstanding: 1 (synchronous) to
    /// [`MAX_WINDOW`](crate::client::MAX_WINDOW).
    pub fn set_window(&mut self, n: usize) -> Result<(), Error> {
        self.window.set_limit(n)
    }

    pub fn window(&self) -> usize {
        self.window.limit()
    }

    /// The sequence number of the latest datagram sent (the n-th is number n).
    pub fn sent(&self) -> u64 {
        self.window.sent()
    }

    /// Sends one datagram; resolves to its length once the daemon has it (window 1: once the
    /// hypervisor took it).
    pub async fn send_to(&mut self, buf: &[u8], dst: SockAddr) -> Result<usize, Error> {
        // Answers that came already: a failure among them is reported now.
        self.read_ready()?;
        if let Some(f) = self.window.take_failure() {
            return Err(f);
        }
        if let Some(e) = self.window.gone_error() {
            return Err(e);
        }
        let pipelined = self.window.pipelined();
        let h = send_header(buf, dst, false, pipelined)?;
        self.flush_out().await?;
        while pipelined && self.window.full(buf.len()) {
            self.next_answer().await?;
        }
        if let Some(f) = self.window.take_failure() {
            return Err(f);
        }
        self.out.extend_from_slice(&h.encode());
        self.out.extend_from_slice(buf);
        let seq = self.window.push(dst, buf.len(), pipelined);
        self.flush_out().await?;
        if pipelined {
            return Ok(buf.len());
        }
        loop {
            if let Some(r) = self.window.take_answer(seq) {
                return r.map(|()| buf.len());
            }
            if let Err(e) = self.next_answer().await {
                return match self.window.take_answer(seq) {
                    Some(r) => r.map(|()| buf.len()),
                    None => Err(e),
                };
            }
        }
    }

    /// Resolves once every datagram sent so far was answered: the oldest failure not reported
    /// yet, the others staying for later calls (see [`client::Datagram::flush`]).
    pub async fn flush(&mut self) -> Result<(), Error> {
        if let Err(e) = self.flush_out().await {
            return Err(self.window.first_failure_or(e));
        }
        while self.window.outstanding() > 0 {
            if let Err(e) = self.next_answer().await {
                return Err(self.window.first_failure_or(e));
            }
        }
        match self.window.take_failure() {
            Some(f) => Err(f),
            None => Ok(()),
        }
    }

    /// The failures received so far and not returned yet, oldest first, without waiting (what
    /// the daemon answered already is read first).
    pub fn take_failures(&mut self) -> Vec<Error> {
        let _ = self.read_ready();
        self.window.take_failures()
    }

    /// Receives one datagram into `buf` (the excess of a longer one is dropped): the bytes
    /// copied and the sender, as the hypervisor attested it.
    pub async fn recv_from(&mut self, buf: &mut [u8]) -> Result<(usize, SockAddr), Error> {
        let (payload, from) = self.recv().await?;
        let n = payload.len().min(buf.len());
        buf[..n].copy_from_slice(&payload[..n]);
        Ok((n, from))
    }

    /// Receives one whole datagram and its sender.
    pub async fn recv(&mut self) -> Result<(Vec<u8>, SockAddr), Error> {
        loop {
            if let Some((from, p)) = self.queued.pop_front() {
                return Ok((p, from));
            }
            self.next_answer().await?;
        }
    }

    /// Writes what is left of SEND frames.
    async fn flush_out(&mut self) -> Result<(), Error> {
        while !self.out.is_empty() {
            let n = match self.io.write(&self.out).await {
                Ok(n) => n,
                Err(e) => return Err(self.broken(e)),
            };
            if n == 0 {
                return Err(Error::Io(io::ErrorKind::WriteZero.into()));
            }
            self.out.drain(..n);
        }
        Ok(())
    }

    /// Sorts the whole frames read (from the socket, then the receive channel): DATA to the
    /// queue, answers to the window. Whether there was any besides doorbells.
    fn sort_frames(&mut self) -> Result<bool, Error> {
        let mut pos = 0;
        let mut sorted = false;
        let inbuf = std::mem::take(&mut self.inbuf);
        let r = loop {
            match split_frame(&inbuf[pos..]) {
                Ok(Some((h, total))) => {
                    let payload = &inbuf[pos + FRAME_HEADER_SIZE..pos + total];
                    pos += total;
                    match self.sort_frame(&h, payload) {
                        Ok(s) => sorted |= s,
                        Err(e) => break Err(e),
                    }
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(Error::Protocol(e.to_string())),
            }
        };
        self.inbuf = inbuf;
        self.inbuf.drain(..pos);
        r?;
        let Some(mut rx) = self.rx.take() else {
            return Ok(sorted);
        };
        let r = rx.read(|h, payload| {
            sorted |= self.sort_frame(h, payload)?;
            Ok(())
        });
        self.rx = Some(rx);
        if r? {
            // The daemon waits for the room made: its eventfd, or a doorbell after what waits in
            // `out`, written as far as the socket takes it now.
            if !self.bell.as_ref().is_some_and(Doorbell::ring) {
                self.out.extend_from_slice(&ring_frame());
                self.try_flush_out()?;
            }
        }
        Ok(sorted)
    }

    /// One frame: DATA to the queue, answers to the window; whether it was one of those.
    fn sort_frame(&mut self, h: &FrameHeader, payload: &[u8]) -> Result<bool, Error> {
        if h.kind == FRAME_DATA {
            self.queued.push_back((h.addr(), payload.to_vec()));
        } else if h.kind == FRAME_RING || h.kind == FRAME_CHAN {
            // Doorbells, and the channel answer at bind: nothing to sort.
            return Ok(false);
        } else {
            self.window.on_frame(h, payload)?;
        }
        Ok(true)
    }

    /// What `read` returned: bytes appended, or the connection's end.
    fn took(&mut self, r: io::Result<usize>, tmp: &[u8]) -> Result<(), Error> {
        match r {
            Ok(0) => {
                let why = "the v4v daemon closed the connection";
                self.window.lost(why);
                Err(Error::DaemonGone(why.into()))
            }
            Ok(n) => {
                self.inbuf.extend_from_slice(&tmp[..n]);
                Ok(())
            }
            Err(e) => Err(self.broken(e)),
        }
    }

    /// Reads what the daemon sent already, without waiting, and sorts it.
    fn read_ready(&mut self) -> Result<(), Error> {
        let mut tmp = vec![0u8; 64 * 1024];
        loop {
            match self.io.try_read(&mut tmp) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                r => self.took(r, &tmp)?,
            }
        }
        self.sort_frames().map(|_| ())
    }

    /// Reads from the daemon until at least one whole frame came, and sorts the frames.
    async fn next_answer(&mut self) -> Result<(), Error> {
        let mut tmp = vec![0u8; 64 * 1024];
        while !self.sort_frames()? {
            // What waits to be written (a doorbell owed to the daemon, the end of a cancelled
            // send) goes as the socket takes it, while we also wait for what comes.
            self.try_flush_out()?;
            // The daemon rings the socket when it next writes into the channel.
            if let Some(rx) = self.rx.as_mut()
                && !rx.arm()?
            {
                continue;
            }
            let interest = if self.out.is_empty() {
                Interest::READABLE
            } else {
                Interest::READABLE | Interest::WRITABLE
            };
            let ready = match self.io.ready(interest).await {
                Ok(r) => r,
                Err(e) => return Err(self.broken(e)),
            };
            if ready.is_readable() {
                match self.io.try_read(&mut tmp) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    r => self.took(r, &tmp)?,
                }
            }
        }
        Ok(())
    }

    /// Writes what the socket takes of `out` now.
    fn try_flush_out(&mut self) -> Result<(), Error> {
        while !self.out.is_empty() {
            match self.io.try_write(&self.out) {
                Ok(0) => return Err(Error::Io(io::ErrorKind::WriteZero.into())),
                Ok(n) => {
                    self.out.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(self.broken(e)),
            }
        }
        Ok(())
    }

    /// An I/O error on the connection: a broken one is the daemon gone.
    fn broken(&mut self, e: io::Error) -> Error {
        match Error::after_handshake(e) {
            Error::DaemonGone(why) => {
                self.window.lost(&why);
                Error::DaemonGone(why)
            }
            e => e,
        }
    }

    /// The blocking datagram port, in blocking mode. Fails while a SEND frame is still half
    /// written (a dropped `send_to`); outstanding datagrams stay outstanding.
    pub fn into_std(self) -> io::Result<client::Datagram> {
        if !self.out.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                "a send is not written yet",
            ));
        }
        let sock = self.io.into_std()?;
        sock.set_nonblocking(false)?;
        Ok(client::Datagram::from_parts(DatagramParts {
            sock,
            local_port: self.local_port,
            inbuf: self.inbuf,
            queued: self.queued,
            window: self.window,
            out: Vec::new(),
            rx: self.rx,
            bell: self.bell,
            wake: self.wake,
        }))
    }
}

/// Registers the blocking port's connection with the reactor. Must be called inside a tokio
/// runtime.
impl TryFrom<client::Datagram> for Datagram {
    type Error = io::Error;
    fn try_from(d: client::Datagram) -> io::Result<Self> {
        let p = d.into_parts();
        p.sock.set_nonblocking(true)?;
        Ok(Datagram {
            io: UnixStream::from_std(p.sock)?,
            local_port: p.local_port,
            inbuf: p.inbuf,
            queued: p.queued,
            window: p.window,
            out: p.out,
            rx: p.rx,
            bell: p.bell,
            wake: p.wake,
        })
    }
}

impl AsRawFd for Datagram {
    fn as_raw_fd(&self) -> RawFd {
        self.io.as_raw_fd()
    }
}

impl AsFd for Datagram {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.io.as_fd()
    }
}
