// SPDX-License-Identifier: MIT OR Apache-2.0
//! A datagram client's receive channel: the shared memory that takes the place of its socket for
//! everything the daemon writes to it (DATA, STATUS and ACK frames, as a byte stream of records).
//!
//! Owns the channel's producer end, the bytes of the client's output still owed to its socket
//! from before the channel was taken (the CHAN answer is the last of them), and the doorbell,
//! rung only when the client sleeps on the channel: a byte into the client's wake pipe when it
//! sleeps inside a call and passed one (`sleeping` = `SLEEP_WAKE_PIPE`), else a RING frame on the
//! socket, the descriptor the client's caller polls. It writes
//! the client's socket only through [`RecvChan::flush`], called from `Client::flush`; it never
//! reads the socket, never sends to the hypervisor and never touches a ring.
//!
//! Nothing the client writes into the shared page is trusted: a garbled index is
//! [`ChanError::Corrupt`] from the channel code, and the caller closes that client alone.

use std::collections::VecDeque;
use std::io::{self, Write};

use mio::net::UnixStream;
use v4v::chan::{ChanError, ChanMemory, Producer, Pushed};
use v4v::client::proto::{FRAME_HEADER_SIZE, SLEEP_WAKE_PIPE, ring_frame};

use super::bell::{self, CountedFd};

/// Queued bytes a frame published straight into the channel may take along (an ACK or two).
const SMALL_QUEUE: usize = 2 * FRAME_HEADER_SIZE;

/// Why a flush stopped.
#[derive(Debug)]
pub(super) enum FlushError {
    /// The socket failed: the client is gone.
    Socket(io::Error),
    /// The client broke the channel.
    Chan(ChanError),
}

/// The producer end of a datagram client's receive channel.
pub(super) struct RecvChan {
    prod: Producer,
    /// Leading bytes of the client's output that still go to its socket: what was queued before
    /// the channel was taken, the CHAN answer last. The channel takes what follows them.
    socket_bytes: usize,
    /// Bytes of the current RING frame still to write (0: none owed).
    bell_left: usize,
    /// Our end of the client's wake pipe, if it passed one.
    wake: Option<CountedFd>,
}

impl RecvChan {
    /// Takes the channel in `mem`; until [`RecvChan::owe_socket`] says otherwise, all output
    /// goes into it.
    pub fn new(mem: &ChanMemory) -> Result<Self, ChanError> {
        Ok(RecvChan {
            prod: Producer::new(mem)?,
            socket_bytes: 0,
            bell_left: 0,
            wake: None,
        })
    }

    /// Wakes the client through `pipe` when it sleeps asking for that.
    pub fn set_wake_pipe(&mut self, pipe: CountedFd) {
        self.wake = Some(pipe);
    }

    /// The consumer slept: wakes it the way it asked (its wake pipe, while that works), else
    /// owes it a RING frame.
    fn wake_client(&mut self) {
        if self.prod.last_sleeper() == SLEEP_WAKE_PIPE
            && let Some(w) = &self.wake
            && bell::wake(w)
        {
            return;
        }
        self.ring();
    }

    /// The first `queued` bytes of the client's output go to its socket (the CHAN answer last).
    pub fn owe_socket(&mut self, queued: usize) {
        self.socket_bytes = queued;
    }

    /// The daemon's share of the user's budget: the mapped pages (allocated, and charged, as
    /// the daemon first writes them).
    pub fn mapped_bytes(&self) -> usize {
        self.prod.chan().capacity() + v4v::shmem::PAGE_SIZE
    }

    /// Owes the client a doorbell on its socket (room in its send channel).
    pub fn ring(&mut self) {
        if self.bell_left == 0 {
            self.bell_left = FRAME_HEADER_SIZE;
        }
    }

    /// Whether the channel carries the output now (the socket took what came before it).
    pub fn active(&self) -> bool {
        self.socket_bytes == 0
    }

    /// Whether the socket has bytes to take: the loop waits for it to be writable only then
    /// (a full channel waits for the client's RING instead).
    pub fn wants_socket(&self) -> bool {
        self.socket_bytes > 0 || self.bell_left > 0
    }

    /// Publishes one frame straight into the channel (after the few bytes `out` may hold, an ACK
    /// held back), when it fits now: the datagram is copied once, from the caller's buffer.
    /// `Ok(false)`: the caller queues it in `out`.
    pub fn push_frame(
        &mut self,
        out: &mut VecDeque<u8>,
        header: &[u8],
        payload: &[u8],
    ) -> Result<bool, ChanError> {
        let len = out.len() + header.len() + payload.len();
        if !self.active() || out.len() > SMALL_QUEUE || len > self.prod.chan().max_record() {
            return Ok(false);
        }
        let (a, b) = out.as_slices();
        match self.prod.push(&[a, b, header, payload])? {
            Pushed::Done { doorbell } => {
                out.clear();
                if doorbell {
                    self.wake_client();
                }
                Ok(true)
            }
            Pushed::Full => Ok(false),
        }
    }

    /// Moves `out` along: its socket bytes to the socket, the rest into the channel as records
    /// while there is room (frames may span records), then the doorbell if the client sleeps.
    pub fn flush(
        &mut self,
        sock: &mut UnixStream,
        out: &mut VecDeque<u8>,
    ) -> Result<(), FlushError> {
        while self.socket_bytes > 0 {
            let (a, b) = out.as_slices();
            let a = &a[..a.len().min(self.socket_bytes)];
            let b = &b[..b.len().min(self.socket_bytes - a.len())];
            match write_some(sock, &[a, b]).map_err(FlushError::Socket)? {
                0 => return Ok(()),
                n => {
                    out.drain(..n);
                    self.socket_bytes -= n;
                }
            }
        }
        let max = self.prod.chan().max_record();
        while !out.is_empty() {
            let (a, b) = out.as_slices();
            let a = &a[..a.len().min(max)];
            let b = &b[..b.len().min(max - a.len())];
            let n = a.len() + b.len();
            match self.prod.push(&[a, b]).map_err(FlushError::Chan)? {
                Pushed::Done { doorbell } => {
                    out.drain(..n);
                    if doorbell {
                        self.wake_client();
                    }
                }
                Pushed::Full => {
                    // Asks the client to ring when it made room; room made meanwhile: again.
                    if !self.prod.wait_for_space(n).map_err(FlushError::Chan)? {
                        break;
                    }
                }
            }
        }
        while self.bell_left > 0 {
            let f = ring_frame();
            match write_some(sock, &[&f[FRAME_HEADER_SIZE - self.bell_left..]])
                .map_err(FlushError::Socket)?
            {
                0 => break,
                n => self.bell_left -= n,
            }
        }
        Ok(())
    }
}

/// One vectored write; 0 when the socket is full.
fn write_some(sock: &mut UnixStream, parts: &[&[u8]]) -> io::Result<usize> {
    let iov: Vec<io::IoSlice<'_>> = parts.iter().map(|p| io::IoSlice::new(p)).collect();
    loop {
        match sock.write_vectored(&iov) {
            Ok(0) if parts.iter().any(|p| !p.is_empty()) => {
                return Err(io::ErrorKind::WriteZero.into());
            }
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use v4v::chan::Consumer;

    use super::*;

    fn pair() -> (UnixStream, std::os::unix::net::UnixStream) {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        b.set_nonblocking(true).unwrap();
        (UnixStream::from_std(a), b)
    }

    fn socket_bytes(s: &mut std::os::unix::net::UnixStream) -> Vec<u8> {
        let mut v = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 {
                break;
            }
            v.extend_from_slice(&buf[..n]);
        }
        v
    }

    fn drain(c: &mut Consumer) -> Vec<u8> {
        let mut v = vec![0u8; 1 << 20];
        let (n, _) = c.read_bytes(&mut v).unwrap();
        v.truncate(n);
        v
    }

    #[test]
    fn what_came_before_goes_to_the_socket_the_rest_into_the_channel() {
        let (mem, _fd) = ChanMemory::create(4096).unwrap();
        let mut cons = Consumer::new(&mem).unwrap();
        let (mut sock, mut peer) = pair();
        let mut out: VecDeque<u8> = b"answer".iter().copied().collect();
        let mut rx = RecvChan::new(&mem).unwrap();
        rx.owe_socket(out.len());
        assert!(!rx.active() && rx.wants_socket());
        out.extend(b"frames after it");
        rx.flush(&mut sock, &mut out).unwrap();
        assert!(rx.active() && !rx.wants_socket() && out.is_empty());
        assert_eq!(socket_bytes(&mut peer), b"answer");
        assert_eq!(drain(&mut cons), b"frames after it");
        // Nobody sleeps: no doorbell.
        assert!(rx.push_frame(&mut out, b"head", b"body").unwrap());
        assert!(socket_bytes(&mut peer).is_empty());
        // The consumer sleeps: one RING frame, after what it had not read.
        assert!(!cons.prepare_sleep().unwrap());
        assert_eq!(drain(&mut cons), b"headbody");
        assert!(cons.prepare_sleep().unwrap());
        out.extend(b"x");
        assert!(rx.push_frame(&mut out, b"y", b"z").unwrap());
        assert!(out.is_empty(), "the queued byte went along");
        rx.flush(&mut sock, &mut out).unwrap();
        assert_eq!(socket_bytes(&mut peer), ring_frame());
        assert_eq!(drain(&mut cons), b"xyz");
    }

    #[test]
    fn a_full_channel_keeps_the_rest_and_asks_to_be_rung() {
        let (mem, _fd) = ChanMemory::create(4096).unwrap();
        let mut cons = Consumer::new(&mem).unwrap();
        let (mut sock, _peer) = pair();
        let mut rx = RecvChan::new(&mem).unwrap();
        // More than the channel holds: frames span records, the rest waits in `out`.
        let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let mut out: VecDeque<u8> = data.iter().copied().collect();
        assert!(
            !rx.push_frame(&mut VecDeque::new(), &data[..2000], &[])
                .unwrap()
        );
        rx.flush(&mut sock, &mut out).unwrap();
        assert!(!out.is_empty() && out.len() < data.len());
        let mut got = drain(&mut cons);
        assert!(
            cons.space_doorbell_wanted().unwrap(),
            "the daemon waits for room"
        );
        rx.flush(&mut sock, &mut out).unwrap();
        while !out.is_empty() {
            got.extend(drain(&mut cons));
            rx.flush(&mut sock, &mut out).unwrap();
        }
        got.extend(drain(&mut cons));
        assert_eq!(got, data);
    }
}
