// SPDX-License-Identifier: MIT OR Apache-2.0
//! [`Datagram`]: a bound V4V datagram port.
//!
//! Owns the port's connection to v4vd, the frames read from it and not taken yet, and the send
//! window ([`SendWindow`]): the datagrams sent and not answered yet, and the failures not
//! reported yet. The window's bookkeeping is pure and shared with the tokio type; this module
//! adds the blocking I/O around it.
//!
//! Sending is pipelined: `send_to` returns once the daemon has the datagram (frames carry
//! `SEND_F_PIPELINE`, the daemon acknowledges batches with one ACK frame), at most
//! [`Datagram::window`] datagrams are outstanding, and a failure comes back later, tied to its
//! datagram by sequence number ([`Error::Undelivered`]). While the window is at most half full a
//! send also carries `SEND_F_LAZY` (when the daemon takes it): its ACK comes with the daemon's
//! next frame to this port (on a round trip, the answer), and a FLUSH frame asks for the held
//! answers whenever the port must wait for them. A window of 1 is the synchronous
//! protocol of `docs/protocol.md` (one STATUS per SEND, the error returned by that `send_to`).

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use super::proto::{
    CHAN_F_BELL, CHAN_F_RECEIVE, CHAN_F_WAKE_PIPE, DGRAM_CHAN_CAPACITY, DGRAM_F_BELL,
    DGRAM_F_LAZY_ACK, DGRAM_F_RECV_CHAN, DGRAM_F_WAKE_PIPE, DGRAM_READ_AHEAD, DGRAM_RX_CAPACITY,
    FRAME_ACK, FRAME_CHAN, FRAME_DATA, FRAME_FLUSH, FRAME_HEADER_SIZE, FRAME_RING, FRAME_SEND,
    FRAME_STATUS, FrameHeader, MAX_DGRAM, Reply, Request, SEND_F_LAZY, SEND_F_NOWAIT,
    SEND_F_PIPELINE, SLEEP_SOCKET, SLEEP_WAKE_PIPE, SockAddr, ring_frame, split_frame,
};
use super::{Doorbell, Error, WakePipe, handshake, socket_path};
use crate::abi::DomId;
use crate::chan::{ChanError, ChanMemory, Consumer, Producer, Pushed};

/// The environment variable that turns the shared-memory channels off (`0`): sends and what the
/// daemon writes back (datagrams, answers) then go over the socket, as socat's do. With them, a
/// send is a copy into memory shared with the daemon, and so is a received datagram; the socket
/// carries a doorbell only when a side sleeps.
pub const CHANNEL_ENV: &str = "V4V_DGRAM_CHANNEL";

/// Datagrams a new [`Datagram`] keeps outstanding at most (see [`Datagram::set_window`]).
pub const DEFAULT_WINDOW: usize = 256;
/// The largest window [`Datagram::set_window`] takes.
pub const MAX_WINDOW: usize = 65536;
/// Bytes asked of one read from the daemon.
const READ_CHUNK: usize = 64 * 1024;

/// A bound V4V datagram port, like `std::net::UdpSocket`.
///
/// # Sending, and what becomes of a datagram
///
/// Every datagram [`send_to`](Datagram::send_to) accepts gets a sequence number: the n-th
/// accepted on this port is number n ([`Datagram::sent`] is the latest). With the default
/// window ([`DEFAULT_WINDOW`]) `send_to` returns as soon as the daemon has the datagram, while
/// up to that many are outstanding (sent, not answered by the daemon yet); with the window
/// full it waits for answers (non-blocking mode: `WouldBlock`). A destination whose ring is full
/// holds its sender back the same way: the daemon waits for room, its answers stop, the window
/// fills. Each accepted datagram then ends in exactly one of these ways:
///
/// - the hypervisor took it into the destination's ring (nothing is reported);
/// - it could not be delivered (no such port, refused by the ACL, too big for the ring, ...):
///   a later `send_to` (one called at least a millisecond after the failure came back, or
///   one that waits for the window) returns [`Error::Undelivered`] with its number,
///   destination, length and cause, *instead of sending its own datagram* (as a UDP socket reports an ICMP error on
///   the next call; send again). [`flush`](Datagram::flush) and
///   [`take_failures`](Datagram::take_failures) report them too;
/// - the daemon went away before answering it: [`Error::Unconfirmed`] names the range of
///   numbers that may or may not have been delivered; every number before it was answered.
///
/// A port dropped with datagrams outstanding does not wait for them (like closing a UDP
/// socket): call `flush` first to know. `set_window(1)` makes every `send_to` wait for its own
/// answer and return its error itself, as the socat-compatible protocol does.
#[derive(Debug)]
pub struct Datagram {
    sock: UnixStream,
    local_port: u32,
    nonblocking: bool,
    /// Bytes read from the daemon, not yet split into frames.
    inbuf: Vec<u8>,
    /// Datagrams that arrived while a send waited for the daemon.
    queued: VecDeque<(SockAddr, Vec<u8>)>,
    window: SendWindow,
    /// The end of the last SEND frame that the socket did not take yet.
    out: Vec<u8>,
    /// When the daemon's answers were last read.
    last_look: Instant,
    /// The shared-memory channel for SEND records, when the daemon took it.
    chan: Option<Producer>,
    /// The sends outstanding went through the channel (else the socket): the two paths are
    /// only switched with nothing outstanding, so the daemon answers in sending order.
    on_chan: bool,
    /// The daemon's answer to the channel offer (0 or an errno, and its feature bits), while it
    /// is awaited.
    chan_answer: Option<(u32, u32)>,
    /// The daemon honours `SEND_F_LAZY` and takes `FRAME_FLUSH` (its channel answer said so).
    lazy_acks: bool,
    /// The channel the daemon writes its frames into, when it took one (then the socket brings
    /// only RING frames).
    rx: Option<RecvChannel>,
    /// The eventfd the daemon took as this client's doorbell: rung instead of RING frames.
    bell: Option<Doorbell>,
    /// The wake pipe the daemon took: polled beside the socket while a call sleeps.
    wake: Option<WakePipe>,
}

/// The client's end of a receive channel: the daemon's frames as a byte stream.
#[derive(Debug)]
pub(crate) struct RecvChannel {
    cons: Consumer,
    /// Bytes taken from the channel and not sorted into frames yet: `buf[..have]`.
    buf: Vec<u8>,
    have: usize,
}

impl RecvChannel {
    fn new(mem: &ChanMemory) -> Result<Self, ChanError> {
        Ok(RecvChannel {
            cons: Consumer::new(mem)?,
            buf: vec![0; READ_CHUNK],
            have: 0,
        })
    }

    /// Takes what the channel holds (at most its capacity, so a daemon that keeps writing
    /// cannot keep us here) and hands the whole frames to `sort`; returns whether the daemon
    /// waits for the room made (ring it). A corrupt channel is a protocol error.
    pub(crate) fn read(
        &mut self,
        mut sort: impl FnMut(&FrameHeader, &[u8]) -> Result<(), Error>,
    ) -> Result<bool, Error> {
        let cap = self.cons.chan().capacity();
        let mut taken = 0;
        loop {
            if self.have == self.buf.len() {
                let grown = (self.buf.len() * 2).max(READ_CHUNK);
                self.buf.resize(grown, 0);
            }
            let (n, _) = self
                .cons
                .read_bytes(&mut self.buf[self.have..])
                .map_err(chan_error)?;
            self.have += n;
            taken += n;
            if n == 0 || taken >= cap {
                break;
            }
        }
        let mut pos = 0;
        let r = loop {
            match split_frame(&self.buf[pos..self.have]) {
                Ok(Some((h, total))) => {
                    let payload = &self.buf[pos + FRAME_HEADER_SIZE..pos + total];
                    pos += total;
                    if let Err(e) = sort(&h, payload) {
                        break Err(e);
                    }
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(Error::Protocol(format!("receive channel: {e}"))),
            }
        };
        self.buf.copy_within(pos..self.have, 0);
        self.have -= pos;
        r?;
        self.cons.space_doorbell_wanted().map_err(chan_error)
    }

    /// Before sleeping on the socket: asks the daemon to ring it when it writes. `false`: bytes
    /// came meanwhile, read them instead.
    pub(crate) fn arm(&mut self) -> Result<bool, Error> {
        self.arm_as(SLEEP_SOCKET)
    }

    /// [`RecvChannel::arm`], saying how to be rung ([`SLEEP_SOCKET`], [`SLEEP_WAKE_PIPE`]).
    pub(crate) fn arm_as(&mut self, how: u32) -> Result<bool, Error> {
        self.cons.prepare_sleep_as(how).map_err(chan_error)
    }
}

fn chan_error(e: ChanError) -> Error {
    Error::Protocol(format!("receive channel: {e}"))
}

/// How often a pipelined `send_to` looks for answers that came (failures to report) when it
/// has no other reason to read.
const LOOK_EVERY: Duration = Duration::from_millis(1);

/// One datagram sent and not answered yet.
#[derive(Debug, Clone, Copy)]
struct Sent {
    seq: u64,
    dst: SockAddr,
    len: usize,
    /// Sent with `SEND_F_PIPELINE`: answered by an ACK, or a STATUS only when it failed.
    pipelined: bool,
}

/// The send-side bookkeeping of a datagram port: sequence numbers, what is outstanding, the
/// failures not reported yet. Pure: frames in, answers out.
#[derive(Debug)]
pub(crate) struct SendWindow {
    limit: usize,
    /// The number of the latest send.
    sent: u64,
    /// Sends not answered yet, oldest first (the daemon answers in order).
    unanswered: VecDeque<Sent>,
    /// Their frames' bytes, headers included.
    unanswered_bytes: usize,
    /// Failures of pipelined sends not reported yet, oldest first (at most the window's worth:
    /// a send reports one before it sends).
    failures: VecDeque<Error>,
    /// The answer of a synchronous send: its number and result.
    answer: Option<(u64, Result<(), Error>)>,
    /// The number of the latest send whose success the daemon may acknowledge late
    /// (`SEND_F_LAZY`), and of the latest send a FLUSH asked answers for.
    last_lazy: u64,
    flushed: u64,
    /// Why the daemon's connection ended, once it did.
    gone: Option<String>,
}

impl SendWindow {
    pub(crate) fn new(limit: usize) -> Self {
        SendWindow {
            limit,
            sent: 0,
            unanswered: VecDeque::new(),
            unanswered_bytes: 0,
            failures: VecDeque::new(),
            answer: None,
            last_lazy: 0,
            flushed: 0,
            gone: None,
        }
    }

    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    pub(crate) fn set_limit(&mut self, n: usize) -> Result<(), Error> {
        if !(1..=MAX_WINDOW).contains(&n) {
            return Err(Error::Invalid(format!(
                "a window of {n} datagrams: it is 1 (synchronous) to {MAX_WINDOW}"
            )));
        }
        self.limit = n;
        Ok(())
    }

    /// Whether sends are pipelined (a window over 1).
    pub(crate) fn pipelined(&self) -> bool {
        self.limit > 1
    }

    /// Whether a datagram of `len` bytes must wait: as many sends are outstanding as the window
    /// allows, or as many bytes as the daemon reads ahead ([`DGRAM_READ_AHEAD`]; a bigger one
    /// goes alone).
    pub(crate) fn full(&self, len: usize) -> bool {
        self.unanswered.len() >= self.limit
            || (self.unanswered_bytes > 0
                && self.unanswered_bytes + FRAME_HEADER_SIZE + len > DGRAM_READ_AHEAD)
    }

    /// Whether the next send, of `len` bytes, may have its success acknowledged late: while the
    /// window stays at most half full (in datagrams and in bytes), so that a window that fills
    /// always meets sends the daemon answers at once.
    pub(crate) fn may_defer(&self, len: usize) -> bool {
        2 * (self.unanswered.len() + 1) <= self.limit
            && 2 * (self.unanswered_bytes + FRAME_HEADER_SIZE + len) <= DGRAM_READ_AHEAD
    }

    /// The latest send went with `SEND_F_LAZY`.
    pub(crate) fn sent_lazy(&mut self) {
        self.last_lazy = self.sent;
    }

    /// Whether a send whose answer may be held back is outstanding and no FLUSH asked for it
    /// yet: a caller about to wait for answers sends one first.
    pub(crate) fn needs_flush(&self) -> bool {
        let oldest_unanswered = self.sent + 1 - self.unanswered.len() as u64;
        self.last_lazy > self.flushed && self.last_lazy >= oldest_unanswered
    }

    /// A FLUSH went after every send so far.
    pub(crate) fn flush_sent(&mut self) {
        self.flushed = self.sent;
    }

    /// Forgets the oldest sends, answered.
    fn answered(&mut self, n: usize) -> impl Iterator<Item = Sent> + '_ {
        let n = n.min(self.unanswered.len());
        let bytes: usize = self
            .unanswered
            .iter()
            .take(n)
            .map(|s| FRAME_HEADER_SIZE + s.len)
            .sum();
        self.unanswered_bytes -= bytes;
        self.unanswered.drain(..n)
    }

    pub(crate) fn outstanding(&self) -> usize {
        self.unanswered.len()
    }

    pub(crate) fn sent(&self) -> u64 {
        self.sent
    }

    /// Records a send; returns its number.
    pub(crate) fn push(&mut self, dst: SockAddr, len: usize, pipelined: bool) -> u64 {
        self.sent += 1;
        self.unanswered_bytes += FRAME_HEADER_SIZE + len;
        self.unanswered.push_back(Sent {
            seq: self.sent,
            dst,
            len,
            pipelined,
        });
        self.sent
    }

    /// Takes a STATUS or ACK frame from the daemon; anything that does not fit the sends made is
    /// a protocol error.
    pub(crate) fn on_frame(&mut self, h: &FrameHeader, payload: &[u8]) -> Result<(), Error> {
        match h.kind {
            FRAME_ACK => {
                let n = h.aux as usize;
                if n > self.unanswered.len() {
                    return Err(Error::Protocol(format!(
                        "an ACK of {n} datagrams, {} outstanding",
                        self.unanswered.len()
                    )));
                }
                if self.unanswered.iter().take(n).any(|s| !s.pipelined) {
                    return Err(Error::Protocol(
                        "an ACK for a send that waits for its STATUS".into(),
                    ));
                }
                self.answered(n).for_each(drop);
                Ok(())
            }
            FRAME_STATUS => {
                let s = self
                    .answered(1)
                    .next()
                    .ok_or_else(|| Error::Protocol("a STATUS with no send outstanding".into()))?;
                let r = send_status(h, payload, s.dst);
                if !s.pipelined {
                    self.answer = Some((s.seq, r));
                } else if let Err(cause) = r {
                    self.failures.push_back(Error::Undelivered {
                        seq: s.seq,
                        dst: s.dst,
                        len: s.len,
                        cause: Box::new(cause),
                    });
                }
                Ok(())
            }
            k => Err(Error::Protocol(format!("unexpected frame kind {k}"))),
        }
    }

    /// The answer of synchronous send `seq`, once it came.
    pub(crate) fn take_answer(&mut self, seq: u64) -> Option<Result<(), Error>> {
        match self.answer.take() {
            Some((s, r)) if s == seq => Some(r),
            other => {
                self.answer = other;
                None
            }
        }
    }

    /// The oldest failure not reported yet.
    pub(crate) fn take_failure(&mut self) -> Option<Error> {
        self.failures.pop_front()
    }

    pub(crate) fn take_failures(&mut self) -> Vec<Error> {
        self.failures.drain(..).collect()
    }

    /// The daemon's connection ended: the pipelined sends not answered become one
    /// [`Error::Unconfirmed`], a synchronous send's answer [`Error::DaemonGone`].
    pub(crate) fn lost(&mut self, reason: &str) {
        if self.gone.is_some() {
            return;
        }
        self.gone = Some(reason.to_string());
        let n = self.unanswered.len();
        let left: Vec<Sent> = self.answered(n).collect();
        let piped: Vec<&Sent> = left.iter().filter(|s| s.pipelined).collect();
        if let (Some(first), Some(last)) = (piped.first(), piped.last()) {
            self.failures.push_back(Error::Unconfirmed {
                first: first.seq,
                last: last.seq,
                reason: reason.to_string(),
            });
        }
        if let Some(s) = left.iter().rfind(|s| !s.pipelined) {
            self.answer = Some((s.seq, Err(Error::DaemonGone(reason.to_string()))));
        }
    }

    /// For a call after the connection ended: what it returns.
    pub(crate) fn gone_error(&self) -> Option<Error> {
        self.gone.as_ref().map(|r| Error::DaemonGone(r.clone()))
    }

    /// What a failed call returns: a failure not reported yet comes first (it is older).
    pub(crate) fn first_failure_or(&mut self, e: Error) -> Error {
        self.take_failure().unwrap_or(e)
    }
}

/// Polls `fd` for `events` until `deadline`: the events that came (hang-up and error read as
/// both), 0 when the deadline passed.
pub(crate) fn poll_until(
    fd: RawFd,
    events: libc::c_short,
    deadline: Option<Instant>,
) -> io::Result<i16> {
    poll_with_wake(fd, events, None, deadline).map(|(ev, _)| ev)
}

/// [`poll_until`], also waking when the pipe `wake` is readable (or hung up): the events of `fd`
/// and whether `wake` woke us.
fn poll_with_wake(
    fd: RawFd,
    events: libc::c_short,
    wake: Option<RawFd>,
    deadline: Option<Instant>,
) -> io::Result<(i16, bool)> {
    let mut p = [
        libc::pollfd {
            fd,
            events,
            revents: 0,
        },
        libc::pollfd {
            fd: wake.unwrap_or(-1),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    let n = if wake.is_some() { 2 } else { 1 };
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
        // SAFETY: `p` holds `n` valid pollfds for the duration of the call.
        let r = unsafe { libc::poll(p.as_mut_ptr(), n, ms) };
        if r > 0 {
            let mut ev = p[0].revents & events;
            if p[0].revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0 {
                ev |= events;
            }
            return Ok((ev, n == 2 && p[1].revents != 0));
        }
        if r == 0 && ms == 0 {
            return Ok((0, false));
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
        Self::bind_channels(daemon, port, partner, true)
    }

    /// [`Datagram::bind_with`]; `receive`: also offer the daemon a channel for what it writes.
    pub(crate) fn bind_channels(
        daemon: &Path,
        port: u32,
        partner: Option<DomId>,
        receive: bool,
    ) -> Result<Self, Error> {
        let (sock, reply) = handshake(daemon, &Request::Dgram(port, partner))?;
        let Reply::Port(local_port) = reply else {
            return Err(Error::Protocol(format!("unexpected DGRAM reply {reply}")));
        };
        let mut d = Datagram {
            sock,
            local_port,
            nonblocking: false,
            inbuf: Vec::new(),
            queued: VecDeque::new(),
            window: SendWindow::new(DEFAULT_WINDOW),
            out: Vec::new(),
            last_look: Instant::now(),
            chan: None,
            on_chan: false,
            chan_answer: None,
            lazy_acks: false,
            rx: None,
            bell: None,
            wake: None,
        };
        if std::env::var(CHANNEL_ENV).map_or(true, |v| v != "0") {
            d.offer_chan(receive)?;
        }
        Ok(d)
    }

    /// Offers the daemon a shared-memory channel for sends, and with `receive` one for what it
    /// writes; without them (no memfd, or the daemon refused) the socket carries that direction.
    fn offer_chan(&mut self, receive: bool) -> Result<(), Error> {
        let Ok((mem, fd)) = ChanMemory::create(DGRAM_CHAN_CAPACITY) else {
            return Ok(());
        };
        let rx = if receive {
            ChanMemory::create(DGRAM_RX_CAPACITY).ok()
        } else {
            None
        };
        let bell = Doorbell::new();
        let wake = if rx.is_some() { WakePipe::new() } else { None };
        let rx_cap = (DGRAM_RX_CAPACITY as u32).to_le_bytes();
        let mut flags = 0;
        if rx.is_some() {
            flags |= CHAN_F_RECEIVE;
        }
        if bell.is_some() {
            flags |= CHAN_F_BELL;
        }
        if wake.is_some() {
            flags |= CHAN_F_WAKE_PIPE;
        }
        let h = FrameHeader {
            len: if rx.is_some() { 4 } else { 0 },
            kind: FRAME_CHAN,
            domain: 0,
            port: flags,
            aux: DGRAM_CHAN_CAPACITY as u32,
        };
        let mut frame = h.encode().to_vec();
        if rx.is_some() {
            frame.extend_from_slice(&rx_cap);
        }
        let mut fds = vec![fd.as_raw_fd()];
        fds.extend(rx.as_ref().map(|(_, fd)| fd.as_raw_fd()));
        fds.extend(bell.as_ref().map(Doorbell::as_raw_fd));
        fds.extend(wake.as_ref().map(|(_, w)| w.as_raw_fd()));
        // Armed before the daemon has it: the first frame it writes rings the socket, so a
        // port polled before its first `recv_from` is woken too.
        let mut rx_end = match rx.as_ref() {
            Some((m, _)) => Some(RecvChannel::new(m).map_err(chan_error)?),
            None => None,
        };
        if let Some(r) = rx_end.as_mut() {
            r.arm()?;
        }
        super::send_with_fds(self.sock.as_raw_fd(), &frame, &fds).map_err(|e| self.broken(e))?;
        drop(fd);
        drop(rx);
        // Only the daemon's own description of the write end stays: if it goes, we hear EOF.
        let wake = wake.map(|(r, _w)| r);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some((errno, features)) = self.chan_answer.take() {
                self.lazy_acks = features & DGRAM_F_LAZY_ACK != 0;
                if errno == 0 {
                    self.chan =
                        Some(Producer::new(&mem).map_err(|e| Error::Protocol(e.to_string()))?);
                }
                if errno == 0 && features & DGRAM_F_BELL != 0 {
                    self.bell = bell;
                }
                // Every frame after the answer comes through it.
                if errno == 0 && features & DGRAM_F_RECV_CHAN != 0 {
                    self.rx = rx_end;
                    if features & DGRAM_F_WAKE_PIPE != 0 {
                        self.wake = wake;
                    }
                    // Frames that came with the answer (their doorbell was read with it).
                    self.read_channel()?;
                }
                return Ok(());
            }
            if !self.wait(false, Some(deadline))? {
                return Err(Error::TimedOut(
                    "the daemon did not answer the channel offer".into(),
                ));
            }
        }
    }

    /// Whether sends go through the shared-memory channel (see [`CHANNEL_ENV`]).
    pub fn uses_channel(&self) -> bool {
        self.chan.is_some()
    }

    /// Whether what the daemon sends (datagrams, answers) comes through a shared-memory channel
    /// instead of the socket (see [`CHANNEL_ENV`]).
    pub fn receives_through_channel(&self) -> bool {
        self.rx.is_some()
    }

    /// Whether this port rings its daemon through an eventfd the daemon took with the channel
    /// (docs/protocol.md, "Doorbell") instead of RING frames on the socket.
    pub fn rings_through_eventfd(&self) -> bool {
        self.bell.is_some()
    }

    /// Whether the daemon wakes a call of this port that sleeps for its receive channel through
    /// a wake pipe (docs/protocol.md, "Wake pipe") instead of a RING frame on the socket.
    pub fn woken_through_pipe(&self) -> bool {
        self.wake.is_some()
    }

    /// Before returning `WouldBlock` (`how` = [`SLEEP_SOCKET`]: the caller polls the socket) or
    /// sleeping in `poll` here (the wake pipe too, if the daemon took one): the daemon is asked
    /// to ring when it writes into the receive channel. `false`: something came meanwhile (read
    /// again instead).
    fn arm_rx(&mut self, how: u32) -> Result<bool, Error> {
        match self.rx.as_mut() {
            Some(rx) => rx.arm_as(how),
            None => Ok(true),
        }
    }

    /// Before a send on the channel (`to_chan`) or the socket: sends outstanding on the other
    /// path are waited for first.
    fn use_path(&mut self, to_chan: bool) -> Result<(), Error> {
        if self.on_chan != to_chan {
            while self.window.outstanding() > 0 {
                self.ask_answers()?;
                self.push_out()?;
                self.wait(!self.out.is_empty(), None)?;
            }
            self.on_chan = to_chan;
        }
        Ok(())
    }

    /// Rings the daemon's doorbell: it sleeps on the channel.
    fn ring(&mut self) -> Result<(), Error> {
        self.ring_soon();
        self.finish_out()
    }

    /// Before waiting for answers: a FLUSH, if some outstanding send's answer may be held back
    /// and none asked for it yet. On the path the sends took, so that it comes after them; in
    /// non-blocking mode only if the channel has room for it now (else the daemon's delay
    /// bounds the wait).
    fn ask_answers(&mut self) -> Result<(), Error> {
        if !self.window.needs_flush() {
            return Ok(());
        }
        let hb = FrameHeader {
            kind: FRAME_FLUSH,
            ..Default::default()
        }
        .encode();
        if self.on_chan {
            let chan_err = |e: crate::chan::ChanError| Error::Protocol(e.to_string());
            loop {
                let Some(p) = self.chan.as_mut() else {
                    return Err(Error::Protocol("the channel went away".into()));
                };
                match p.push(&[&hb]).map_err(chan_err)? {
                    Pushed::Done { doorbell } => {
                        self.window.flush_sent();
                        return if doorbell { self.ring() } else { Ok(()) };
                    }
                    Pushed::Full => {
                        if p.wait_for_space(hb.len()).map_err(chan_err)? {
                            continue;
                        }
                        if self.nonblocking {
                            return Ok(());
                        }
                        self.wait(false, None)?;
                    }
                }
            }
        }
        self.window.flush_sent();
        self.out.extend_from_slice(&hb);
        self.finish_out()
    }

    /// Writes the rest of `out`, waiting as long as it takes (reading meanwhile).
    fn finish_out(&mut self) -> Result<(), Error> {
        while !self.out.is_empty() {
            self.push_out()?;
            if !self.out.is_empty() {
                self.wait(true, None)?;
            }
        }
        Ok(())
    }

    /// The bound port.
    pub fn local_port(&self) -> u32 {
        self.local_port
    }

    /// Non-blocking mode: `recv_from` returns `WouldBlock` when nothing is there, and `send_to`
    /// returns `WouldBlock` instead of waiting: when the window is full (pipelined), or when the
    /// destination ring is full (window 1).
    pub fn set_nonblocking(&mut self, on: bool) -> io::Result<()> {
        self.sock.set_nonblocking(on)?;
        self.nonblocking = on;
        Ok(())
    }

    /// Sets how many datagrams may be outstanding (sent, not answered by the daemon) at once:
    /// 1 to [`MAX_WINDOW`]; 1 makes every `send_to` wait for its own answer. Datagrams already
    /// outstanding stay so. [`Error::Invalid`] outside that range.
    pub fn set_window(&mut self, n: usize) -> Result<(), Error> {
        self.window.set_limit(n)
    }

    /// The window (see [`Datagram::set_window`]).
    pub fn window(&self) -> usize {
        self.window.limit()
    }

    /// The sequence number of the latest datagram `send_to` accepted: the n-th is number n, 0
    /// before the first. [`Error::Undelivered`] names datagrams by it.
    pub fn sent(&self) -> u64 {
        self.window.sent()
    }

    /// Datagrams sent and not answered by the daemon yet. A daemon may hold back the answer of
    /// a success sent while the window was at most half full for up to 2 ms (it comes with the
    /// daemon's next frame to this port, or when this port waits for answers: see
    /// `docs/protocol.md`, "Lazy ACKs"), so this may count datagrams already delivered.
    pub fn outstanding(&self) -> usize {
        self.window.outstanding()
    }

    /// Sends one datagram to `dst`; returns its length once the daemon has it (window 1: once
    /// the hypervisor took it). Its number is [`Datagram::sent`] afterwards.
    ///
    /// An earlier datagram's failure not reported yet is returned instead, as
    /// [`Error::Undelivered`], and this one is not sent. Errors found before sending
    /// ([`Error::Invalid`], [`Error::MessageTooBig`] past the V4V maximum) send nothing either.
    pub fn send_to(&mut self, buf: &[u8], dst: SockAddr) -> Result<usize, Error> {
        // Now and then (not on every send: a read is a system call), take the answers that came,
        // so a failure is reported soon after it happened.
        if self.window.outstanding() > 0 && self.last_look.elapsed() >= LOOK_EVERY {
            self.read_ready()?;
        }
        if let Some(f) = self.window.take_failure() {
            return Err(f);
        }
        if let Some(e) = self.window.gone_error() {
            return Err(e);
        }
        let pipelined = self.window.pipelined();
        let mut h = send_header(buf, dst, !pipelined && self.nonblocking, pipelined)?;
        if !pipelined {
            return self.send_sync(&h, buf, dst);
        }
        // Room in the window, and the socket free of an earlier frame's end.
        loop {
            self.push_out()?;
            if self.out.is_empty() && !self.window.full(buf.len()) {
                break;
            }
            if self.nonblocking {
                // Answers that came already may open the window.
                self.read_ready()?;
                self.push_out()?;
                if self.out.is_empty() && !self.window.full(buf.len()) {
                    break;
                }
                // The caller polls for the answers next: none is to be held back.
                self.ask_answers()?;
                if !self.arm_rx(SLEEP_SOCKET)? {
                    continue;
                }
                return Err(Error::Io(io::ErrorKind::WouldBlock.into()));
            }
            if self.out.is_empty() {
                self.ask_answers()?;
            }
            self.wait(!self.out.is_empty(), None)?;
        }
        // A failure that came while waiting is older than this datagram.
        if let Some(f) = self.window.take_failure() {
            return Err(f);
        }
        // Far from a full window, its success may be acknowledged late (with the next frame the
        // daemon sends this port): a round trip then costs no wake-up for the ACK.
        let lazy = self.lazy_acks && self.window.may_defer(buf.len());
        if lazy {
            h.aux |= SEND_F_LAZY;
        }
        let hb = h.encode();
        let fits_chan = self
            .chan
            .as_ref()
            .is_some_and(|p| FRAME_HEADER_SIZE + buf.len() <= p.chan().max_record());
        if fits_chan {
            self.use_path(true)?;
            return self.send_chan(&hb, buf, dst, lazy);
        }
        self.use_path(false)?;
        // A doorbell queued meanwhile goes first: nothing is ever written inside a frame.
        self.push_out()?;
        if !self.out.is_empty() {
            if self.nonblocking {
                return Err(Error::Io(io::ErrorKind::WouldBlock.into()));
            }
            self.finish_out()?;
        }
        let n = self.write_some(&[&hb, buf])?;
        if n == 0 {
            // Only in non-blocking mode (else the window loop saw the socket writable... or it
            // filled since): nothing of it went, so it is not sent.
            if self.nonblocking {
                return Err(Error::Io(io::ErrorKind::WouldBlock.into()));
            }
        }
        let total = hb.len() + buf.len();
        if n < total {
            let (a, b) = if n < hb.len() {
                (&hb[n..], buf)
            } else {
                (&[][..], &buf[n - hb.len()..])
            };
            self.out.extend_from_slice(a);
            self.out.extend_from_slice(b);
        }
        self.window.push(dst, buf.len(), true);
        if lazy {
            self.window.sent_lazy();
        }
        // The rest of a frame the socket took in part, even in non-blocking mode: within the
        // window the daemon reads all of it (it reads ahead of a datagram waiting for space).
        while !self.out.is_empty() {
            self.push_out()?;
            if !self.out.is_empty() {
                self.wait(true, None)?;
            }
        }
        Ok(buf.len())
    }

    /// Publishes a SEND record on the channel, ringing the daemon if it sleeps; waits for room
    /// (non-blocking mode: `WouldBlock`, nothing sent).
    fn send_chan(
        &mut self,
        hb: &[u8],
        buf: &[u8],
        dst: SockAddr,
        lazy: bool,
    ) -> Result<usize, Error> {
        let len = hb.len() + buf.len();
        loop {
            let Some(p) = self.chan.as_mut() else {
                return Err(Error::Protocol("the channel went away".into()));
            };
            let chan_err = |e: crate::chan::ChanError| Error::Protocol(e.to_string());
            match p.push(&[hb, buf]).map_err(chan_err)? {
                Pushed::Done { doorbell } => {
                    self.window.push(dst, buf.len(), true);
                    if lazy {
                        self.window.sent_lazy();
                    }
                    if doorbell {
                        self.ring()?;
                    }
                    return Ok(buf.len());
                }
                Pushed::Full => {
                    if p.wait_for_space(len).map_err(chan_err)? {
                        continue;
                    }
                    if self.nonblocking {
                        return Err(Error::Io(io::ErrorKind::WouldBlock.into()));
                    }
                    // The daemon rings once there is room.
                    self.wait(false, None)?;
                }
            }
        }
    }

    /// Window 1: writes the frame and waits for its STATUS.
    fn send_sync(&mut self, h: &FrameHeader, buf: &[u8], dst: SockAddr) -> Result<usize, Error> {
        self.use_path(false)?;
        while !self.out.is_empty() {
            self.push_out()?;
            if !self.out.is_empty() {
                self.wait(true, None)?;
            }
        }
        let hb = h.encode();
        let n = self.write_some(&[&hb, buf])?;
        // The rest waits in `out`, so that nothing written while we wait (a doorbell) can land
        // inside the frame.
        if n < hb.len() {
            self.out.extend_from_slice(&hb[n..]);
            self.out.extend_from_slice(buf);
        } else {
            self.out.extend_from_slice(&buf[n - hb.len()..]);
        }
        self.finish_out()?;
        let seq = self.window.push(dst, buf.len(), false);
        loop {
            if let Some(r) = self.window.take_answer(seq) {
                return r.map(|()| buf.len());
            }
            if let Err(e) = self.wait(false, None) {
                return match self.window.take_answer(seq) {
                    Some(r) => r.map(|()| buf.len()),
                    None => Err(e),
                };
            }
        }
    }

    /// Waits until every datagram sent so far was answered; returns the oldest failure not
    /// reported yet ([`Error::Undelivered`], or [`Error::Unconfirmed`] if the daemon went away),
    /// the others staying for later calls. Ignores non-blocking mode.
    pub fn flush(&mut self) -> Result<(), Error> {
        self.flush_timeout(None)
    }

    /// [`Datagram::flush`], waiting at most `timeout` (`None`: no limit): [`Error::TimedOut`]
    /// when datagrams are still outstanding then (they stay so).
    pub fn flush_timeout(&mut self, timeout: Option<Duration>) -> Result<(), Error> {
        let deadline = timeout.map(|t| Instant::now() + t);
        while !self.out.is_empty() || self.window.outstanding() > 0 {
            if let Err(e) = self.ask_answers().and_then(|()| self.push_out()) {
                return Err(self.window.first_failure_or(e));
            }
            match self.wait(!self.out.is_empty(), deadline) {
                Ok(true) => {}
                Ok(false) => {
                    return Err(Error::TimedOut(format!(
                        "{} datagrams not answered yet",
                        self.window.outstanding()
                    )));
                }
                Err(e) => return Err(self.window.first_failure_or(e)),
            }
        }
        match self.window.take_failure() {
            Some(f) => Err(f),
            None => Ok(()),
        }
    }

    /// Every failure reported so far and not returned yet, oldest first, without waiting (what
    /// the daemon answered already is read first). Each is [`Error::Undelivered`] or
    /// [`Error::Unconfirmed`].
    pub fn take_failures(&mut self) -> Vec<Error> {
        // A broken connection shows as its failures.
        let _ = self.push_out();
        let _ = self.read_ready();
        self.window.take_failures()
    }

    /// Receives one datagram into `buf` (the excess of a longer one is dropped); returns the
    /// bytes copied and the sender.
    pub fn recv_from(&mut self, buf: &mut [u8]) -> Result<(usize, SockAddr), Error> {
        let (payload, from) = if self.nonblocking {
            loop {
                if let Some((from, p)) = self.queued.pop_front() {
                    break (p, from);
                }
                let _ = self.push_out();
                self.read_ready()?;
                if let Some((from, p)) = self.queued.pop_front() {
                    break (p, from);
                }
                // The descriptor turns readable when the next one comes.
                if self.arm_rx(SLEEP_SOCKET)? {
                    return Err(Error::Io(io::ErrorKind::WouldBlock.into()));
                }
            }
        } else {
            self.recv_timeout(None)?
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
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if let Some((from, payload)) = self.queued.pop_front() {
                return Ok((payload, from));
            }
            self.push_out()?;
            if !self.wait(!self.out.is_empty(), deadline)? {
                return Err(Error::TimedOut("no datagram arrived".into()));
            }
        }
    }

    /// Waits for the socket to be readable (or writable, with `write`), then reads and sorts
    /// what came. `Ok(false)`: the deadline passed.
    fn wait(&mut self, write: bool, deadline: Option<Instant>) -> Result<bool, Error> {
        let wake = self.wake.as_ref().map(WakePipe::as_raw_fd);
        let how = if wake.is_some() {
            SLEEP_WAKE_PIPE
        } else {
            SLEEP_SOCKET
        };
        if !self.arm_rx(how)? {
            self.read_ready()?;
            return Ok(true);
        }
        let events = if write {
            libc::POLLIN | libc::POLLOUT
        } else {
            libc::POLLIN
        };
        let (ev, woke) = poll_with_wake(self.sock.as_raw_fd(), events, wake, deadline)?;
        if woke {
            // The daemon wrote into the receive channel: the socket is not read for it.
            if let Some(w) = &self.wake {
                w.drain();
            }
        }
        if ev & libc::POLLIN != 0 {
            // Reads the channel too, and leaves it armed for the socket.
            self.read_ready()?;
            return Ok(true);
        }
        let queued = self.queued.len();
        if wake.is_some() {
            // Whatever woke us, the call may return now, and its caller polls the socket: the
            // channel says so again before it does (taking what came meanwhile).
            self.read_channel()?;
        }
        Ok(ev != 0 || woke || self.queued.len() != queued)
    }

    /// Reads what the daemon sent, without waiting, and sorts the whole frames: datagrams are
    /// queued for `recv_from`, answers go to the window.
    fn read_ready(&mut self) -> Result<(), Error> {
        self.last_look = Instant::now();
        loop {
            self.inbuf.reserve(READ_CHUNK);
            let spare = self.inbuf.spare_capacity_mut();
            // SAFETY: `spare` is writable memory of `spare.len()` bytes owned by `inbuf`; recv
            // writes at most that many and we count only what it says it wrote.
            let r = unsafe {
                libc::recv(
                    self.sock.as_raw_fd(),
                    spare.as_mut_ptr().cast(),
                    spare.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if r == 0 {
                return Err(self.lost("it closed the datagram connection"));
            }
            if r < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::Interrupted => continue,
                    io::ErrorKind::WouldBlock => break,
                    _ => return Err(self.broken(e)),
                }
            }
            let n = r as usize;
            // SAFETY: recv initialised the first `n` spare bytes.
            unsafe { self.inbuf.set_len(self.inbuf.len() + n) };
            if n < READ_CHUNK {
                break;
            }
        }
        self.sort_frames()?;
        self.read_channel()
    }

    /// Takes the frames waiting in the receive channel, if there is one; rings the daemon if
    /// it waits for the room made.
    fn read_channel(&mut self) -> Result<(), Error> {
        let Some(mut rx) = self.rx.take() else {
            return Ok(());
        };
        // Until it is armed again (the next frame rings the socket): an API call that returns
        // leaves it so, whatever the caller polls next. A daemon that keeps writing stops
        // this after a few rounds; the frames read are queued (read until `WouldBlock`).
        let mut r = Ok(());
        for _ in 0..4 {
            match rx.read(|h, payload| self.sort_frame(h, payload)) {
                Ok(wants_ring) => {
                    if wants_ring {
                        self.ring_soon();
                    }
                }
                Err(e) => {
                    r = Err(e);
                    break;
                }
            }
            match rx.arm() {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => {
                    r = Err(e);
                    break;
                }
            }
        }
        self.rx = Some(rx);
        r?;
        self.push_out()
    }

    /// Owes the daemon a doorbell for room made in the receive channel: written now if the
    /// socket takes it, else after what waits in `out` (never waited for here: the daemon
    /// reads ahead of its full channel, and every send or wait writes `out` first).
    fn ring_soon(&mut self) {
        if !self.bell.as_ref().is_some_and(Doorbell::ring) {
            self.out.extend_from_slice(&ring_frame());
        }
    }

    /// One frame from the daemon: DATA to the queue, STATUS and ACK to the window.
    fn sort_frame(&mut self, h: &FrameHeader, payload: &[u8]) -> Result<(), Error> {
        if h.kind == FRAME_DATA {
            self.queued.push_back((h.addr(), payload.to_vec()));
        } else if h.kind == FRAME_RING {
            // Room on the channel, or frames in the receive channel: the caller looks again.
        } else if h.kind == FRAME_CHAN {
            self.chan_answer = Some((h.aux, h.port));
        } else {
            self.window.on_frame(h, payload)?;
        }
        Ok(())
    }

    /// Splits `inbuf`'s whole frames: DATA to the queue, STATUS and ACK to the window.
    fn sort_frames(&mut self) -> Result<(), Error> {
        let mut pos = 0;
        // Out of `self` while its frames are sorted into `self`.
        let mut inbuf = std::mem::take(&mut self.inbuf);
        let r = loop {
            match split_frame(&inbuf[pos..]) {
                Ok(Some((h, total))) => {
                    let payload = &inbuf[pos + FRAME_HEADER_SIZE..pos + total];
                    pos += total;
                    if let Err(e) = self.sort_frame(&h, payload) {
                        break Err(e);
                    }
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(Error::Protocol(e.to_string())),
            }
        };
        inbuf.drain(..pos);
        self.inbuf = inbuf;
        r
    }

    /// The connection ended: the window learns it; the error to return.
    fn lost(&mut self, why: &str) -> Error {
        // A frame's unsent end can never go; its datagram is among the unconfirmed.
        self.out.clear();
        self.window.lost(why);
        Error::DaemonGone(why.to_string())
    }

    /// An I/O error on the connection: a broken one is the daemon gone.
    fn broken(&mut self, e: io::Error) -> Error {
        match Error::after_handshake(e) {
            Error::DaemonGone(why) => self.lost(&why),
            e => e,
        }
    }

    /// Writes what the socket takes of `parts`, without waiting: the bytes written (0 when it
    /// takes nothing now).
    fn write_some(&mut self, parts: &[&[u8]]) -> Result<usize, Error> {
        let iov: Vec<IoSlice<'_>> = parts.iter().map(|p| IoSlice::new(p)).collect();
        loop {
            // SAFETY: an all-zero msghdr is valid (no name, no control data).
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            // IoSlice is ABI-compatible with iovec; sendmsg only reads through it.
            msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
            msg.msg_iovlen = iov.len();
            // SAFETY: `msg` points at `iov`, live for the call, each slice valid for reading.
            let r = unsafe {
                libc::sendmsg(
                    self.sock.as_raw_fd(),
                    &msg,
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            };
            if r >= 0 {
                return Ok(r as usize);
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => {}
                io::ErrorKind::WouldBlock => return Ok(0),
                _ => return Err(self.broken(e)),
            }
        }
    }

    /// Writes what the socket takes of an earlier frame's end.
    fn push_out(&mut self) -> Result<(), Error> {
        if self.out.is_empty() {
            return Ok(());
        }
        let out = std::mem::take(&mut self.out);
        let n = self.write_some(&[&out]);
        self.out = out;
        self.out.drain(..n?);
        Ok(())
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
    pub(crate) window: SendWindow,
    pub(crate) out: Vec<u8>,
    pub(crate) rx: Option<RecvChannel>,
    pub(crate) bell: Option<Doorbell>,
    pub(crate) wake: Option<WakePipe>,
}

#[cfg(feature = "tokio")]
impl Datagram {
    pub(crate) fn into_parts(mut self) -> DatagramParts {
        // The async type sends over the socket: what went through the channel is answered
        // first, so the daemon's answers stay in sending order.
        if self.on_chan {
            let _ = self.use_path(false);
        }
        // The async type sends no FLUSH: what may be held back is asked for now.
        let _ = self.ask_answers();
        DatagramParts {
            sock: self.sock,
            local_port: self.local_port,
            inbuf: self.inbuf,
            queued: self.queued,
            window: self.window,
            out: self.out,
            rx: self.rx,
            bell: self.bell,
            wake: self.wake,
        }
    }

    pub(crate) fn from_parts(p: DatagramParts) -> Self {
        Datagram {
            sock: p.sock,
            local_port: p.local_port,
            nonblocking: false,
            inbuf: p.inbuf,
            queued: p.queued,
            window: p.window,
            out: p.out,
            last_look: Instant::now(),
            chan: None,
            on_chan: false,
            chan_answer: None,
            lazy_acks: false,
            rx: p.rx,
            bell: p.bell,
            wake: p.wake,
        }
    }
}

/// The SEND frame header for `buf` to `dst`, or why it cannot be sent at all. Shared by the
/// blocking and the async datagram types, so both refuse the same sends with the same words.
pub(crate) fn send_header(
    buf: &[u8],
    dst: SockAddr,
    nowait: bool,
    pipelined: bool,
) -> Result<FrameHeader, Error> {
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
        aux: if nowait { SEND_F_NOWAIT } else { 0 } | if pipelined { SEND_F_PIPELINE } else { 0 },
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const DST: SockAddr = SockAddr::new(2, 5000);

    fn ack(n: u32) -> FrameHeader {
        FrameHeader {
            kind: FRAME_ACK,
            aux: n,
            ..Default::default()
        }
    }

    fn status(errno: u32) -> FrameHeader {
        FrameHeader {
            kind: FRAME_STATUS,
            domain: DST.domid,
            port: DST.port,
            aux: errno,
            ..Default::default()
        }
    }

    proptest! {
        /// Whatever the mix of pipelined and synchronous sends, successes and failures, and
        /// however the daemon groups its ACKs, each failure is reported once, oldest first, with
        /// its own number and length; each synchronous send gets its own answer.
        #[test]
        fn answers_map_back_to_their_sends(
            sends in proptest::collection::vec((any::<bool>(), any::<bool>(), 0usize..5000), 1..80),
            groups in proptest::collection::vec(1u32..6, 1..80),
        ) {
            let mut w = SendWindow::new(MAX_WINDOW);
            for (pipelined, _, len) in &sends {
                w.push(DST, *len, *pipelined);
            }
            prop_assert_eq!(w.outstanding(), sends.len());
            // The daemon's answers, in order: runs of pipelined successes in ACKs of the sizes
            // `groups` suggests, a STATUS for the rest.
            let mut frames = Vec::new();
            let mut run = 0u32;
            let mut g = groups.iter().cycle();
            for (pipelined, ok, _) in &sends {
                if *pipelined && *ok {
                    run += 1;
                    if run >= *g.next().expect("cycle") {
                        frames.push(ack(run));
                        run = 0;
                    }
                    continue;
                }
                if run > 0 {
                    frames.push(ack(run));
                    run = 0;
                }
                frames.push(status(if *ok { 0 } else { 111 }));
            }
            if run > 0 {
                frames.push(ack(run));
            }
            let mut answers = Vec::new();
            for f in &frames {
                w.on_frame(f, b"").expect("a well-formed answer");
                for seq in 1..=sends.len() as u64 {
                    if let Some(r) = w.take_answer(seq) {
                        answers.push((seq, r.is_ok()));
                    }
                }
            }
            prop_assert_eq!(w.outstanding(), 0);
            let want_failed: Vec<(u64, usize)> = sends
                .iter()
                .enumerate()
                .filter(|(_, (p, ok, _))| *p && !*ok)
                .map(|(i, (_, _, len))| (i as u64 + 1, *len))
                .collect();
            let failed: Vec<(u64, usize)> = w
                .take_failures()
                .into_iter()
                .map(|e| match e {
                    Error::Undelivered { seq, len, dst, cause } => {
                        assert_eq!(dst, DST);
                        assert!(matches!(*cause, Error::Refused(_)));
                        (seq, len)
                    }
                    e => panic!("{e}"),
                })
                .collect();
            prop_assert_eq!(failed, want_failed);
            let want_answers: Vec<(u64, bool)> = sends
                .iter()
                .enumerate()
                .filter(|(_, (p, _, _))| !*p)
                .map(|(i, (_, ok, _))| (i as u64 + 1, *ok))
                .collect();
            prop_assert_eq!(answers, want_answers);
        }

        /// Answers that match no send are protocol errors, never a panic or a wrong mapping.
        #[test]
        fn stray_answers_are_refused(
            pipelined in proptest::collection::vec(any::<bool>(), 0..8),
            kind in 0u16..8,
            aux in any::<u32>(),
        ) {
            let mut w = SendWindow::new(8);
            for p in &pipelined {
                w.push(DST, 1, *p);
            }
            let h = FrameHeader { kind, aux, ..Default::default() };
            let r = w.on_frame(&h, b"");
            match kind {
                FRAME_ACK => {
                    let n = aux as usize;
                    let fits = n <= pipelined.len() && pipelined[..n].iter().all(|p| *p);
                    prop_assert_eq!(r.is_ok(), fits);
                    if fits {
                        prop_assert_eq!(w.outstanding(), pipelined.len() - n);
                    }
                }
                FRAME_STATUS => prop_assert_eq!(r.is_ok(), !pipelined.is_empty()),
                _ => prop_assert!(matches!(r, Err(Error::Protocol(_)))),
            }
        }
    }

    #[test]
    fn a_lost_daemon_leaves_the_unanswered_range() {
        let mut w = SendWindow::new(16);
        for _ in 0..10 {
            w.push(DST, 3, true);
        }
        w.on_frame(&ack(4), b"").expect("ack");
        w.on_frame(&status(13), b"").expect("status");
        w.lost("killed");
        let f = w.take_failures();
        assert!(matches!(f[0], Error::Undelivered { seq: 5, .. }), "{f:?}");
        assert!(
            matches!(
                f[1],
                Error::Unconfirmed {
                    first: 6,
                    last: 10,
                    ..
                }
            ),
            "{f:?}"
        );
        assert_eq!(f.len(), 2);
        assert!(matches!(w.gone_error(), Some(Error::DaemonGone(_))));
        assert!(matches!(w.set_limit(0), Err(Error::Invalid(_))));
        assert!(matches!(
            w.set_limit(MAX_WINDOW + 1),
            Err(Error::Invalid(_))
        ));
    }
}
