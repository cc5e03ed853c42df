// SPDX-License-Identifier: MIT OR Apache-2.0
//! [`Datagram`]: a bound V4V datagram port on tokio.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::path::Path;

use ::tokio::io::{AsyncReadExt, AsyncWriteExt};
use ::tokio::net::UnixStream;

use super::blocking;
use crate::abi::DomId;
use crate::client::datagram::{DatagramParts, send_header, send_status};
use crate::client::proto::{
    FRAME_DATA, FRAME_HEADER_SIZE, FRAME_STATUS, FrameHeader, MAX_DGRAM, SockAddr,
};
use crate::client::{self, Error};

/// A bound V4V datagram port on tokio, like `tokio::net::UdpSocket`.
///
/// `send_to` resolves when the hypervisor took the datagram: it waits (without blocking the
/// runtime) while the destination ring is full, as the blocking `send_to` does. Both methods
/// are cancel-safe in that a dropped future loses nothing already received and leaves the
/// connection usable; a dropped `send_to` may still deliver its datagram.
#[derive(Debug)]
pub struct Datagram {
    io: UnixStream,
    local_port: u32,
    /// Bytes of a frame not complete yet.
    inbuf: Vec<u8>,
    /// Datagrams that arrived while `send_to` waited for its status.
    queued: VecDeque<(SockAddr, Vec<u8>)>,
    /// Bytes of SEND frames not yet written (left by a dropped `send_to`).
    out: Vec<u8>,
    /// SEND frames written or queued whose STATUS has not been read yet.
    unanswered: usize,
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

    /// Sends one datagram; resolves to its length once the hypervisor took it.
    pub async fn send_to(&mut self, buf: &[u8], dst: SockAddr) -> Result<usize, Error> {
        let h = send_header(buf, dst, false)?;
        self.flush_out().await?;
        self.out.extend_from_slice(&h.encode());
        self.out.extend_from_slice(buf);
        self.unanswered += 1;
        self.flush_out().await?;
        // Statuses come in order: ours is the last one owed.
        loop {
            let (h, payload) = self.next_frame().await?;
            match h.kind {
                FRAME_STATUS => {
                    self.unanswered = self.unanswered.saturating_sub(1);
                    if self.unanswered > 0 {
                        continue; // a dropped send's
                    }
                    return send_status(&h, &payload, dst).map(|()| buf.len());
                }
                FRAME_DATA => self.queued.push_back((h.addr(), payload)),
                k => return Err(Error::Protocol(format!("unexpected frame kind {k}"))),
            }
        }
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
        if let Some((from, p)) = self.queued.pop_front() {
            return Ok((p, from));
        }
        loop {
            let (h, p) = self.next_frame().await?;
            match h.kind {
                FRAME_DATA => return Ok((p, h.addr())),
                // The answer to a send whose future was dropped.
                FRAME_STATUS => self.unanswered = self.unanswered.saturating_sub(1),
                k => return Err(Error::Protocol(format!("unexpected frame kind {k}"))),
            }
        }
    }

    /// Writes what is left of SEND frames.
    async fn flush_out(&mut self) -> Result<(), Error> {
        while !self.out.is_empty() {
            let n = self.io.write(&self.out).await?;
            if n == 0 {
                return Err(Error::Io(io::ErrorKind::WriteZero.into()));
            }
            self.out.drain(..n);
        }
        Ok(())
    }

    /// The next whole frame from the daemon.
    async fn next_frame(&mut self) -> Result<(FrameHeader, Vec<u8>), Error> {
        let mut tmp = vec![0u8; 64 * 1024];
        loop {
            if self.inbuf.len() >= FRAME_HEADER_SIZE {
                let mut hb = [0u8; FRAME_HEADER_SIZE];
                hb.copy_from_slice(&self.inbuf[..FRAME_HEADER_SIZE]);
                let h = FrameHeader::decode(&hb);
                if h.len > MAX_DGRAM {
                    return Err(Error::Protocol(format!("frame of {} bytes", h.len)));
                }
                let total = FRAME_HEADER_SIZE + h.len as usize;
                if self.inbuf.len() >= total {
                    let payload = self.inbuf[FRAME_HEADER_SIZE..total].to_vec();
                    self.inbuf.drain(..total);
                    return Ok((h, payload));
                }
            }
            let n = self.io.read(&mut tmp).await?;
            if n == 0 {
                return Err(Error::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the v4v daemon closed the connection",
                )));
            }
            self.inbuf.extend_from_slice(&tmp[..n]);
        }
    }

    /// The blocking datagram port, in blocking mode. Fails while a dropped `send_to` still
    /// waits for its answer (the blocking type would take it for its own).
    pub fn into_std(self) -> io::Result<client::Datagram> {
        if !self.out.is_empty() || self.unanswered > 0 {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                "a send is not answered yet",
            ));
        }
        let sock = self.io.into_std()?;
        sock.set_nonblocking(false)?;
        Ok(client::Datagram::from_parts(DatagramParts {
            sock,
            local_port: self.local_port,
            inbuf: self.inbuf,
            queued: self.queued,
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
            out: Vec::new(),
            unanswered: 0,
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
