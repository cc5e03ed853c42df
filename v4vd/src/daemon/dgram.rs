// SPDX-License-Identifier: MIT OR Apache-2.0
//! Datagram clients: SEND frames from a client become `V4V_PROTO_DGRAM` sends, messages on its
//! port's ring become DATA frames to it, and every send is answered in order: by its own STATUS
//! frame, or, sent with `SEND_F_PIPELINE` and successful, by being counted into an ACK frame.
//!
//! Owns a datagram client's input (frames read and not sent yet), the answers it is owed after
//! a datagram met a full ring, and the budget it reserved for both ([`DgramClient`]). Each
//! wake-up reads what the client has ready (a few reads, then it waits its turn behind the
//! others) and hands the whole frames to `Hypervisor::sendv_batch`, many sends in one call.
//!
//! Bounds: while a datagram waits for ring space, nothing more of its client's is sent and
//! reading stops [`DGRAM_READ_AHEAD`] bytes ahead (its client is paced by the receiver: its
//! window fills); reading also stops while the client does not read its answers; what is read is
//! reserved in its user's budget first; a port's ring stops being drained while its client's
//! output is full.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::time::Instant;

use tracing::debug;
use v4v::abi::{self, Addr, PROTO_DGRAM, RING_DATA_F_EXISTS, RingDataEnt};
use v4v::chan::{ChanMemory, Consumer};
use v4v::client::proto::{
    CHAN_F_BELL, CHAN_F_RECEIVE, CHAN_F_WAKE_PIPE, DGRAM_CHAN_CAPACITY, DGRAM_F_BELL,
    DGRAM_F_LAZY_ACK, DGRAM_F_RECV_CHAN, DGRAM_F_WAKE_PIPE, DGRAM_READ_AHEAD, FRAME_ACK,
    FRAME_CHAN, FRAME_DATA, FRAME_FLUSH, FRAME_HEADER_SIZE, FRAME_RING, FRAME_SEND, FRAME_STATUS,
    FrameHeader, SEND_F_LAZY, SEND_F_NOWAIT, SEND_F_PIPELINE, ring_frame, split_frame,
};
use v4v::{HvError, Hypervisor};

use super::Daemon;
use super::bell::{self, ClientBell};
use super::fdpass;
use super::ports::PortKind;
use super::recv_chan::RecvChan;
use super::session::ClientState;

/// Bytes asked of one read from a client.
const READ_CHUNK: usize = 64 * 1024;
/// Reads of one client per wake-up before the others get their turn.
const READS_PER_PUMP: usize = 4;
/// Most sends handed to one `sendv_batch`.
const MAX_BATCH: usize = 64;

/// A datagram client's state.
pub(super) struct DgramClient {
    pub port: u32,
    /// Bytes read from the client: whole SEND frames not sent yet, then a partial one.
    inbuf: Vec<u8>,
    /// Answers owed, in SEND order, from a batch in which a datagram met a full ring (it comes
    /// first). While there are any the client is parked: not read.
    owed: VecDeque<Owed>,
    /// Pipelined sends that succeeded and were not acknowledged yet.
    acks: u32,
    /// One of them was sent without `SEND_F_LAZY`: the ACK goes at the end of this batch.
    ack_now: bool,
    /// When the lazy ones' ACK is due at the latest (queued in `Daemon::lazy_acks`).
    ack_due: Option<Instant>,
    /// Bytes reserved in the user's budget for `inbuf` and the owed payloads.
    reserved: usize,
    /// Descriptors the client passed (for its channel offer: at most four).
    fds: Vec<OwnedFd>,
    /// Its eventfd doorbell, when it offered one with its channel and the daemon took it.
    bell: Option<super::bell::ClientBell>,
    /// The client's shared-memory channel of SEND records, once it offered one.
    chan: Option<Consumer>,
    /// The socket may hold bytes: set by every poll event of the client, cleared by a read
    /// that found it empty. A pump that only delivers (a DATA frame to write) then makes no
    /// read that would find nothing.
    readable: bool,
}

/// The answer a SEND is owed.
enum Owed {
    Done {
        dst: Addr,
        pipelined: bool,
        /// Its ACK may wait (`SEND_F_LAZY`).
        lazy: bool,
    },
    Failed {
        dst: Addr,
        errno: u32,
        reason: String,
    },
    /// Met a full ring: to be sent again (with `nowait`, answered `EAGAIN` if still full).
    Retry {
        dst: Addr,
        payload: Vec<u8>,
        pipelined: bool,
        lazy: bool,
        nowait: bool,
    },
}

impl DgramClient {
    pub fn new(port: u32) -> Self {
        DgramClient {
            port,
            inbuf: Vec::new(),
            owed: VecDeque::new(),
            acks: 0,
            ack_now: false,
            ack_due: None,
            reserved: 0,
            fds: Vec::new(),
            bell: None,
            chan: None,
            readable: true,
        }
    }

    /// Whether a datagram of this client waits for ring space.
    pub fn parked(&self) -> bool {
        !self.owed.is_empty()
    }

    /// While a datagram waits for space: whether to read more of what the client sent. Up to
    /// [`DGRAM_READ_AHEAD`] bytes (what a pipelining client may have outstanding), and always the
    /// rest of a partial frame (its reservation is made).
    fn may_read_ahead(&self) -> bool {
        let mut pos = 0;
        while let Ok(Some((_, total))) = split_frame(&self.inbuf[pos..]) {
            pos += total;
        }
        pos < self.inbuf.len() || self.needed() < DGRAM_READ_AHEAD
    }

    /// Bytes the client's buffers need reserved: its whole frames, a partial frame at its
    /// announced length, and the payloads waiting for ring space.
    fn needed(&self) -> usize {
        let mut pos = 0;
        while let Ok(Some((_, total))) = split_frame(&self.inbuf[pos..]) {
            pos += total;
        }
        let tail = match self.inbuf[pos..].first_chunk::<FRAME_HEADER_SIZE>() {
            Some(hb) => FRAME_HEADER_SIZE + FrameHeader::decode(hb).len as usize,
            None => self.inbuf.len() - pos,
        };
        let owed: usize = self
            .owed
            .iter()
            .map(|o| match o {
                Owed::Retry { payload, .. } => payload.len(),
                _ => 0,
            })
            .sum();
        pos + tail + owed
    }
}

/// What one batch did.
enum Batch {
    /// No whole frame was buffered.
    Nothing,
    /// Frames were sent (or answered).
    Sent,
    /// The client sent a bad frame and is closed.
    Dead,
}

impl Daemon {
    pub(super) fn on_dgram(&mut self, port: u32, src: Addr, payload: &[u8]) {
        let Some(PortKind::Dgram(t)) = self.ports.get(port).map(|p| &p.kind) else {
            self.stats.dropped += 1;
            debug!(port, "datagram for a non-datagram port dropped");
            return;
        };
        let t = *t;
        let Some(idle) = self.clients.get(t).map(|c| c.out.is_empty()) else {
            return;
        };
        // The successes held back go with it (before it: the client reads both at once).
        self.dgram_ack(t, true);
        let Some(c) = self.clients.get_mut(t) else {
            return;
        };
        let h = FrameHeader {
            len: payload.len() as u32,
            kind: FRAME_DATA,
            domain: src.domain,
            port: src.port,
            aux: 0,
        };
        let head = h.encode();
        // Into the receive channel at once when it has room and nothing else waits: the client
        // is pumped only to ring its doorbell, if it sleeps.
        if let Some(rx) = c.rx.as_mut() {
            match rx.push_frame(&mut c.out, &head, payload) {
                Ok(true) => {
                    if rx.wants_socket() {
                        self.wake(t);
                    }
                    return;
                }
                Ok(false) => {}
                Err(e) => {
                    let why = format!("its receive channel: {e}");
                    self.close_broken_channel(t, &why);
                    return;
                }
            }
        }
        // One write per drained batch, not per datagram: the client is pumped (and its output
        // flushed) once this event is handled. Output left over means the socket (or receive
        // channel) was full: its writable event (or doorbell) pumps it.
        c.out.extend(head);
        c.out.extend(payload);
        if idle {
            self.wake(t);
        }
    }

    /// Moves a datagram client along: its answers owed after a full ring first, then every
    /// whole frame it sent, in batches, then reads more while it is not paced.
    pub(super) fn pump_dgram(&mut self, t: usize) {
        let mut reads = 0;
        // The socket was read empty (or is not to be read now): what was read is sent, then
        // the pump ends.
        let mut drained = false;
        loop {
            let Some(ClientState::Dgram(d)) = self.clients.get(t).map(|c| &c.state) else {
                return;
            };
            let held = self
                .clients
                .get(t)
                .is_some_and(|c| c.rx.is_some() && c.out_full(self.cfg.dgram_buffer));
            if d.parked() {
                // Sent again only once the hypervisor may have room (the transmitter unparked
                // it); meanwhile what the client sends is read ahead, up to a bound.
                if !self.tx.is_parked(t) && self.dgram_retry(t) {
                    continue;
                }
                let Some(ClientState::Dgram(d)) = self.clients.get(t).map(|c| &c.state) else {
                    return;
                };
                if !d.may_read_ahead() {
                    break;
                }
            } else if held {
                // Its receive channel and output are full: nothing is sent (no answers to
                // queue) until it reads, but what it sends is read ahead, up to a bound.
                if !d.may_read_ahead() {
                    break;
                }
            } else {
                match self.dgram_batch(t) {
                    Batch::Dead => return,
                    Batch::Sent => continue,
                    Batch::Nothing => {}
                }
            }
            if drained {
                break;
            }
            if reads == READS_PER_PUMP {
                // More may be there: after the others.
                self.wake(t);
                break;
            }
            match self.dgram_pop(t) {
                Some(true) => {
                    reads += 1;
                    continue;
                }
                Some(false) => {}
                None => return,
            }
            match self.dgram_read(t) {
                Some(true) => reads += 1,
                Some(false) => drained = true,
                None => return,
            }
        }
        self.dgram_sleep(t);
        self.dgram_ack(t, false);
        let Some(c) = self.clients.get_mut(t) else {
            return;
        };
        let ClientState::Dgram(d) = &mut c.state else {
            return;
        };
        // What is held now: the reservation shrinks to it (it never grows here).
        let n = d.reserved.saturating_sub(d.needed());
        d.reserved -= n;
        c.reserved -= n;
        self.budgets.release(c.cred.uid, n);
        self.dgram_flush(t);
    }

    /// Writes what datagram client `t` is owed; a client whose socket failed is dead, one that
    /// broke its receive channel is closed with a warning.
    pub(super) fn dgram_flush(&mut self, t: usize) -> bool {
        let Some(c) = self.clients.get_mut(t) else {
            return false;
        };
        match c.flush() {
            Ok(_) => true,
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                self.close_broken_channel(t, &e);
                false
            }
            Err(_) => {
                c.dead = true;
                false
            }
        }
    }

    /// One read of what the client sent, reserved in its user's budget first. `Some(true)`: it
    /// read a whole chunk (more may be there); `Some(false)`: it read all there was (perhaps
    /// nothing), or the client is not to be read now; `None`: the client is gone.
    fn dgram_read(&mut self, t: usize) -> Option<bool> {
        if !matches!(
            self.clients.get(t).map(|c| &c.state),
            Some(ClientState::Dgram(DgramClient { readable: true, .. }))
        ) || !self.dgram_reserve_read(t)
        {
            return Some(false);
        }
        let c = self.clients.get_mut(t)?;
        let ClientState::Dgram(d) = &mut c.state else {
            return None;
        };
        d.inbuf.reserve(READ_CHUNK);
        let spare = d.inbuf.spare_capacity_mut();
        let ask = spare.len().min(READ_CHUNK);
        loop {
            // SAFETY: `spare` is writable memory of at least `ask` bytes owned by `inbuf`;
            // recvmsg writes at most `ask` there and only what it reports is counted.
            let (r, fds) =
                unsafe { fdpass::recv_with_fds(c.stream.as_raw_fd(), spare.as_mut_ptr(), ask, 4) };
            let had_fd = !fds.is_empty();
            // Kept for the one offer a client may make; any others are closed here.
            if d.fds.is_empty() && d.chan.is_none() {
                d.fds = fds;
            }
            if r == 0 {
                c.dead = true;
                return None;
            }
            if r < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::Interrupted => continue,
                    io::ErrorKind::WouldBlock => {
                        d.readable = false;
                        return Some(false);
                    }
                    _ => {
                        c.dead = true;
                        return None;
                    }
                }
            }
            let n = r as usize;
            // SAFETY: read initialised the first `n` spare bytes.
            unsafe { d.inbuf.set_len(d.inbuf.len() + n) };
            // A short read emptied the socket: the next data is a new readable event. (A read
            // stops short at a passed descriptor too: then more may be there.)
            if n < ask && !had_fd {
                d.readable = false;
            }
            return Some(n == ask);
        }
    }

    /// Whether the client may be read now: not while it does not read its answers, nor past
    /// its user's budget (what a read may bring is reserved first; it is then paced).
    fn dgram_reserve_read(&mut self, t: usize) -> bool {
        let Some(c) = self.clients.get_mut(t) else {
            return false;
        };
        let full = c.out_full(self.cfg.dgram_buffer);
        let receive_chan = c.rx.is_some();
        let ClientState::Dgram(d) = &mut c.state else {
            return false;
        };
        // Answers come before more requests: not read while the client does not read them.
        // With a receive channel, read ahead as for a parked datagram (nothing is sent): the
        // doorbell that says the client made room comes on the socket, behind what it sent.
        if full && !(receive_chan && d.may_read_ahead()) {
            return false;
        }
        let want = d.needed() + READ_CHUNK;
        if want > d.reserved {
            let more = want - d.reserved;
            match self.budgets.reserve(c.cred.uid, more) {
                Ok(()) => {
                    d.reserved += more;
                    c.reserved += more;
                }
                Err(why) => {
                    // Paced until its user's other buffers go (retried on the tick).
                    c.paced = true;
                    let uid = c.cred.uid;
                    user_warn!(self, uid, uid, "datagram client paced: {why}");
                    return false;
                }
            }
        }
        true
    }

    /// Takes SEND records from the client's channel into its input (up to a read's worth), each
    /// checked to be one whole SEND frame. `Some(true)`: some were taken; `None`: the client
    /// broke its channel and is closed.
    fn dgram_pop(&mut self, t: usize) -> Option<bool> {
        let has_chan = matches!(
            self.clients.get(t).map(|c| &c.state),
            Some(ClientState::Dgram(DgramClient { chan: Some(_), .. }))
        );
        if !has_chan || !self.dgram_reserve_read(t) {
            return Some(false);
        }
        let c = self.clients.get_mut(t)?;
        let ClientState::Dgram(d) = &mut c.state else {
            return None;
        };
        let cons = d.chan.as_mut()?;
        let start = d.inbuf.len();
        let mut broken = None;
        while d.inbuf.len() - start < READ_CHUNK {
            let before = d.inbuf.len();
            match cons.pop_into(&mut d.inbuf) {
                Ok(Some(n)) => match split_frame(&d.inbuf[before..]) {
                    Ok(Some((h, total)))
                        if total == n
                            && (h.kind == FRAME_SEND || (h.kind == FRAME_FLUSH && h.len == 0)) => {}
                    _ => {
                        d.inbuf.truncate(before);
                        broken = Some("a record that is not one SEND or FLUSH frame".to_string());
                        break;
                    }
                },
                Ok(None) => break,
                Err(e) => {
                    broken = Some(e.to_string());
                    break;
                }
            }
        }
        if broken.is_none() && cons.space_doorbell_wanted().unwrap_or(false) {
            // What is held back goes before it.
            if let Some(a) = take_ack(d) {
                c.out.extend(a);
            }
            match c.rx.as_mut() {
                Some(rx) => rx.ring(),
                None => c.out.extend(ring_frame()),
            }
        }
        if let Some(why) = broken {
            self.close_broken_channel(t, &why);
            return None;
        }
        Some(d.inbuf.len() > start)
    }

    /// Closes a client that broke its shared channel: its own traffic only, nobody else
    /// notices.
    fn close_broken_channel(&mut self, t: usize, why: &dyn std::fmt::Display) {
        let Some(c) = self.clients.get_mut(t) else {
            return;
        };
        // Once: the datagrams still drained for it find it closed already.
        if c.dead {
            return;
        }
        c.dead = true;
        let uid = c.cred.uid;
        user_warn!(
            self,
            uid,
            uid,
            "datagram client broke its channel ({why}); closing it"
        );
    }

    /// At the end of a pump: a client with a channel is told the daemon sleeps on it (it rings
    /// after its next record); a record that came meanwhile pumps it again.
    fn dgram_sleep(&mut self, t: usize) {
        let Some(c) = self.clients.get_mut(t) else {
            return;
        };
        let full = c.out_full(self.cfg.dgram_buffer);
        let ClientState::Dgram(d) = &mut c.state else {
            return;
        };
        // Not while it is held back: it is pumped again when that ends.
        if d.parked() || c.paced || full {
            return;
        }
        let Some(cons) = d.chan.as_mut() else {
            return;
        };
        match cons.prepare_sleep() {
            Ok(true) => {}
            Ok(false) => self.wake(t),
            Err(e) => self.close_broken_channel(t, &e),
        }
    }

    /// A poll event for client `t`: its socket may hold bytes again.
    pub(super) fn dgram_readable(&mut self, t: usize) {
        if let Some(ClientState::Dgram(d)) = self.clients.get_mut(t).map(|c| &mut c.state) {
            d.readable = true;
        }
    }

    /// Takes the channel a client offers (the descriptor it passed with the CHAN frame) and
    /// answers whether it did.
    fn dgram_take_chan(&mut self, t: usize, h: &FrameHeader, rx_cap: Option<u32>) {
        let Some(c) = self.clients.get_mut(t) else {
            return;
        };
        let ClientState::Dgram(d) = &mut c.state else {
            return;
        };
        let cap = h.aux as usize;
        let mut fds = std::mem::take(&mut d.fds).into_iter();
        let wants_rx = h.port & CHAN_F_RECEIVE != 0;
        let r = match fds.next() {
            _ if d.chan.is_some() => Err("a channel is set up already".to_string()),
            None => Err("no descriptor came with the offer".to_string()),
            // The daemon maps it: at most a few times the size clients offer.
            Some(_) if cap > 4 * DGRAM_CHAN_CAPACITY => Err(format!(
                "a channel of {cap} bytes (at most {})",
                4 * DGRAM_CHAN_CAPACITY
            )),
            Some(fd) => ChanMemory::map(fd, cap)
                .and_then(|m| Consumer::new(&m))
                .map_err(|e| e.to_string()),
        };
        let (errno, why) = match r {
            Ok(cons) => {
                d.chan = Some(cons);
                (0, String::new())
            }
            Err(why) => (abi::errno::EINVAL as u32, why),
        };
        // The receive channel, with the send channel only: its refusal leaves the socket path
        // for what the daemon writes (said in the answer's feature bits, and warned). Its pages
        // come out of the client's output allotment, which must keep room for frames too big
        // for it.
        let uid = c.cred.uid;
        let allotment = self.cfg.dgram_buffer;
        let mut rx_refused = None;
        let rx_fd = if wants_rx { fds.next() } else { None };
        let bell_fd = if h.port & CHAN_F_BELL != 0 {
            fds.next()
        } else {
            None
        };
        let wake_fd = if h.port & CHAN_F_WAKE_PIPE != 0 {
            fds.next()
        } else {
            None
        };
        let rx = match (rx_fd, rx_cap.map(|c| c as usize)) {
            _ if !wants_rx || errno != 0 => None,
            (None, _) => {
                rx_refused = Some("no second descriptor came with the offer".to_string());
                None
            }
            (_, None) => {
                rx_refused = Some("the offer does not say its size".to_string());
                None
            }
            (Some(_), Some(rx_cap))
                if rx_cap.saturating_add(v4v::shmem::PAGE_SIZE) > allotment / 2 =>
            {
                // The daemon's configuration, not the client's doing: no warning.
                debug!(
                    rx_cap,
                    allotment, "receive channel refused: bigger than half of dgram_buffer"
                );
                None
            }
            (Some(fd), Some(rx_cap)) => {
                match ChanMemory::map(fd, rx_cap).and_then(|m| RecvChan::new(&m)) {
                    Ok(rx) => Some(rx),
                    Err(e) => {
                        rx_refused = Some(e.to_string());
                        None
                    }
                }
            }
        };
        // The doorbell, with the channel only, and the wake pipe, with the receive channel
        // only; each only while clients and the descriptors they made the daemon hold stay
        // within max_clients.
        let mut bell_refused = None;
        let room = |d: &Daemon| {
            let ok = d.clients.len() + d.live_bells.load(Ordering::Relaxed) < d.cfg.max_clients;
            if !ok {
                debug!("doorbell refused: clients' descriptors at max_clients");
            }
            ok
        };
        let bell = match bell_fd {
            Some(fd) if errno == 0 && room(self) => {
                match ClientBell::take(fd, t, &self.bell_registry, &self.live_bells) {
                    Ok(b) => Some(b),
                    Err(e) => {
                        bell_refused = Some(e.to_string());
                        None
                    }
                }
            }
            _ => None,
        };
        let wake = match wake_fd {
            Some(fd) if rx.is_some() && room(self) => {
                match bell::take_wake_pipe(fd, &self.live_bells) {
                    Ok(w) => Some(w),
                    Err(e) => {
                        bell_refused = Some(e.to_string());
                        None
                    }
                }
            }
            _ => None,
        };
        let Some(c) = self.clients.get_mut(t) else {
            return;
        };
        let ClientState::Dgram(d) = &mut c.state else {
            return;
        };
        let mut features = DGRAM_F_LAZY_ACK;
        if rx.is_some() {
            features |= DGRAM_F_RECV_CHAN;
        }
        if bell.is_some() {
            features |= DGRAM_F_BELL;
            d.bell = bell;
        }
        let mut rx = rx;
        if let (Some(rx), Some(w)) = (rx.as_mut(), wake) {
            rx.set_wake_pipe(w);
            features |= DGRAM_F_WAKE_PIPE;
        }
        let f = FrameHeader {
            len: why.len() as u32,
            kind: FRAME_CHAN,
            domain: 0,
            port: features,
            aux: errno,
        };
        c.out.extend(f.encode());
        c.out.extend(why.as_bytes());
        if let Some(mut rx) = rx {
            rx.owe_socket(c.out.len());
            c.rx = Some(Box::new(rx));
        }
        if errno != 0 {
            user_warn!(self, uid, uid, "datagram channel refused: {why}");
        }
        if let Some(why) = rx_refused {
            user_warn!(self, uid, uid, "datagram receive channel refused: {why}");
        }
        if let Some(why) = bell_refused {
            user_warn!(self, uid, uid, "datagram doorbell refused: {why}");
        }
    }

    /// Sends the whole frames buffered (at most [`MAX_BATCH`]) in one `sendv_batch` and answers
    /// them in order; from the first that met a full ring on, the answers are owed.
    fn dgram_batch(&mut self, t: usize) -> Batch {
        let Some(c) = self.clients.get_mut(t) else {
            return Batch::Dead;
        };
        let ClientState::Dgram(d) = &mut c.state else {
            return Batch::Dead;
        };
        let port = d.port;
        // (header, payload offset) of each whole frame.
        let mut frames: Vec<(FrameHeader, usize)> = Vec::new();
        let mut pos = 0;
        let mut offer = None;
        let mut flush = false;
        while frames.len() < MAX_BATCH {
            match split_frame(&d.inbuf[pos..]) {
                Ok(Some((h, total))) if h.kind == FRAME_SEND => {
                    frames.push((h, pos + FRAME_HEADER_SIZE));
                    pos += total;
                }
                // A doorbell: the pump is what it asks for.
                Ok(Some((h, total))) if h.kind == FRAME_RING && frames.is_empty() => pos += total,
                // Every SEND before it is answered now: it ends the batch.
                Ok(Some((h, total))) if h.kind == FRAME_FLUSH && h.len == 0 => {
                    if frames.is_empty() {
                        flush = true;
                        pos += total;
                    }
                    break;
                }
                Ok(Some((h, total))) if h.kind == FRAME_CHAN && frames.is_empty() => {
                    let payload = &d.inbuf[pos + FRAME_HEADER_SIZE..pos + total];
                    offer = Some((h, payload.get(..4).and_then(|b| b.try_into().ok())));
                    pos += total;
                    break;
                }
                Ok(Some((h, _))) if h.kind == FRAME_RING || h.kind == FRAME_CHAN => break,
                Ok(None) => break,
                Ok(Some((h, _))) => {
                    return self.dgram_bad_frame(t, &format!("{h:?}"));
                }
                Err(e) => return self.dgram_bad_frame(t, &e.to_string()),
            }
        }
        if frames.is_empty() {
            d.inbuf.drain(..pos);
            if flush {
                self.dgram_ack(t, true);
            }
            if let Some((h, rx_cap)) = offer {
                self.dgram_ack(t, true);
                self.dgram_take_chan(t, &h, rx_cap.map(u32::from_le_bytes));
            }
            return if pos > 0 { Batch::Sent } else { Batch::Nothing };
        }
        let valid = |h: &FrameHeader| h.port != 0 && h.domain < abi::DOMID_FIRST_RESERVED;
        // Datagrams to one destination keep their order: where all of a destination's would not
        // fit its ring now, the batch ends before its second (which waits for the next batch).
        let keep = order_cut(&*self.hv, &frames, valid);
        frames.truncate(keep);
        pos = frames.last().map_or(0, |(h, off)| off + h.len as usize);
        let msgs: Vec<(Addr, &[u8])> = frames
            .iter()
            .filter(|(h, _)| valid(h))
            .map(|(h, off)| {
                (
                    Addr::new(h.domain, h.port),
                    &d.inbuf[*off..*off + h.len as usize],
                )
            })
            .collect();
        let mut results = Vec::with_capacity(msgs.len());
        if !msgs.is_empty() {
            self.tx.sendv_batch(
                &*self.hv,
                &mut self.stats,
                port,
                &msgs,
                PROTO_DGRAM,
                &mut results,
            );
        }
        let mut results = results.into_iter();
        let mut answers = Vec::with_capacity(frames.len());
        for (h, off) in &frames {
            let dst = Addr::new(h.domain, h.port);
            let pipelined = h.aux & SEND_F_PIPELINE != 0;
            let lazy = pipelined && h.aux & SEND_F_LAZY != 0;
            if !valid(h) {
                let reason = if h.port == 0 {
                    "port 0 is not a destination".to_string()
                } else {
                    reserved_domain(h.domain)
                };
                answers.push(Owed::Failed {
                    dst,
                    errno: abi::errno::EINVAL as u32,
                    reason,
                });
                continue;
            }
            let payload = &d.inbuf[*off..*off + h.len as usize];
            answers.push(match results.next() {
                Some(Ok(_)) => Owed::Done {
                    dst,
                    pipelined,
                    lazy,
                },
                Some(Err(HvError::WouldBlock | HvError::Busy)) => Owed::Retry {
                    dst,
                    payload: payload.to_vec(),
                    pipelined,
                    lazy,
                    nowait: h.aux & SEND_F_NOWAIT != 0,
                },
                Some(Err(e)) => Owed::Failed {
                    dst,
                    errno: e.errno() as u32,
                    reason: send_reason(&*self.hv, &e, dst, payload.len()),
                },
                None => Owed::Failed {
                    dst,
                    errno: libc::EIO as u32,
                    reason: "the hypervisor did not answer this send".into(),
                },
            });
        }
        d.inbuf.drain(..pos);
        let mut answers = answers.into_iter();
        for a in answers.by_ref() {
            if matches!(a, Owed::Retry { .. }) {
                if let Some(ClientState::Dgram(d)) = self.clients.get_mut(t).map(|c| &mut c.state) {
                    d.owed.push_back(a);
                }
                break;
            }
            self.dgram_answer(t, a);
        }
        if let Some(ClientState::Dgram(d)) = self.clients.get_mut(t).map(|c| &mut c.state) {
            d.owed.extend(answers);
        }
        self.dgram_ack(t, false);
        self.dgram_flush(t);
        Batch::Sent
    }

    /// A frame no client may send: the client is closed.
    fn dgram_bad_frame(&mut self, t: usize, what: &str) -> Batch {
        if let Some(c) = self.clients.get_mut(t) {
            c.dead = true;
            let uid = c.cred.uid;
            user_warn!(
                self,
                uid,
                uid,
                "datagram client sent a bad frame ({what}); closing it"
            );
        }
        Batch::Dead
    }

    /// Works through the answers owed after a full ring: sends again what met it, in order.
    /// Returns false while one still waits for space (the client stays parked).
    fn dgram_retry(&mut self, t: usize) -> bool {
        loop {
            let Some(ClientState::Dgram(d)) = self.clients.get_mut(t).map(|c| &mut c.state) else {
                return true;
            };
            let port = d.port;
            let Some(o) = d.owed.pop_front() else {
                return true;
            };
            let Owed::Retry {
                dst,
                payload,
                pipelined,
                lazy,
                nowait,
            } = o
            else {
                self.dgram_answer(t, o);
                continue;
            };
            let a = match self.send_or_wait(port, dst, PROTO_DGRAM, &payload) {
                Ok(true) => Owed::Done {
                    dst,
                    pipelined,
                    lazy,
                },
                Ok(false) if nowait => Owed::Failed {
                    dst,
                    errno: abi::errno::EAGAIN as u32,
                    reason: String::new(),
                },
                Ok(false) => {
                    self.tx.park(t, dst, payload.len());
                    if let Some(ClientState::Dgram(d)) =
                        self.clients.get_mut(t).map(|c| &mut c.state)
                    {
                        d.owed.push_front(Owed::Retry {
                            dst,
                            payload,
                            pipelined,
                            lazy,
                            nowait,
                        });
                    }
                    // What came before it is answered now: its window opens that far.
                    self.dgram_ack(t, true);
                    return false;
                }
                Err(e) => Owed::Failed {
                    dst,
                    errno: e.errno() as u32,
                    reason: send_reason(&*self.hv, &e, dst, payload.len()),
                },
            };
            self.dgram_answer(t, a);
        }
    }

    /// Queues the answer of one SEND: a pipelined success is counted for the next ACK; a
    /// STATUS goes after the ACK of the sends before it.
    fn dgram_answer(&mut self, t: usize, a: Owed) {
        let (dst, errno, reason) = match a {
            Owed::Done {
                pipelined: true,
                lazy,
                ..
            } => {
                if let Some(ClientState::Dgram(d)) = self.clients.get_mut(t).map(|c| &mut c.state) {
                    d.acks += 1;
                    d.ack_now |= !lazy;
                }
                return;
            }
            Owed::Done { dst, .. } => (dst, 0, String::new()),
            Owed::Failed { dst, errno, reason } => (dst, errno, reason),
            Owed::Retry { dst, .. } => {
                debug_assert!(false, "a retry is not an answer");
                (dst, libc::EIO as u32, String::new())
            }
        };
        self.dgram_ack(t, true);
        let Some(c) = self.clients.get_mut(t) else {
            return;
        };
        let reason = if errno == 0 { "" } else { reason.as_str() };
        let h = FrameHeader {
            len: u32::try_from(reason.len()).unwrap_or(0),
            kind: FRAME_STATUS,
            domain: dst.domain,
            port: dst.port,
            aux: errno,
        };
        c.out.extend(h.encode());
        c.out.extend(reason.as_bytes());
    }

    /// Queues the ACK of the pipelined successes not acknowledged yet: now with `force` or
    /// when one of them was sent without `SEND_F_LAZY`; else it waits for the client's next
    /// frame, a FLUSH, or `lazy_ack_delay` (queued in `lazy_acks`).
    fn dgram_ack(&mut self, t: usize, force: bool) {
        let Some(c) = self.clients.get_mut(t) else {
            return;
        };
        let ClientState::Dgram(d) = &mut c.state else {
            return;
        };
        if d.acks == 0 {
            return;
        }
        if force || d.ack_now {
            if let Some(a) = take_ack(d) {
                c.out.extend(a);
            }
        } else if d.ack_due.is_none() {
            let due = Instant::now() + self.cfg.lazy_ack_delay;
            d.ack_due = Some(due);
            self.lazy_acks.push_back((due, t));
        }
    }

    /// The deadline of the oldest ACK held back, for the loop's poll. Entries whose ACK went
    /// meanwhile (with a DATA frame, a STATUS, a FLUSH) are dropped here: the loop would
    /// otherwise wake for each of them, about once per round trip when every ACK goes early.
    pub(super) fn lazy_ack_deadline(&mut self) -> Option<Instant> {
        while let Some(&(due, t)) = self.lazy_acks.front() {
            if self.lazy_ack_live(due, t) {
                return Some(due);
            }
            self.lazy_acks.pop_front();
        }
        None
    }

    /// Whether client `t` still holds back an ACK due at `due`.
    fn lazy_ack_live(&self, due: Instant, t: usize) -> bool {
        matches!(
            self.clients.get(t).map(|c| &c.state),
            Some(ClientState::Dgram(d)) if d.ack_due == Some(due)
        )
    }

    /// Sends the ACKs held back whose delay ran out (the queue is in deadline order: every
    /// entry waits the same delay).
    pub(super) fn send_due_acks(&mut self, now: Instant) {
        while let Some(&(due, t)) = self.lazy_acks.front() {
            if due > now {
                return;
            }
            self.lazy_acks.pop_front();
            if !self.lazy_ack_live(due, t) {
                continue;
            }
            let Some(c) = self.clients.get_mut(t) else {
                continue;
            };
            let ClientState::Dgram(d) = &mut c.state else {
                continue;
            };
            if let Some(a) = take_ack(d) {
                c.out.extend(a);
            }
            self.dgram_flush(t);
        }
    }
}

/// The ACK frame of a client's successes not acknowledged yet, if any; nothing is held back
/// after it.
fn take_ack(d: &mut DgramClient) -> Option<[u8; FRAME_HEADER_SIZE]> {
    d.ack_now = false;
    d.ack_due = None;
    if d.acks == 0 {
        return None;
    }
    Some(
        FrameHeader {
            len: 0,
            kind: FRAME_ACK,
            domain: 0,
            port: 0,
            aux: std::mem::take(&mut d.acks),
        }
        .encode(),
    )
}

/// How many of `frames` one batch may send without reordering a destination's datagrams. The
/// batch runs every send whatever became of the ones before, so a datagram meeting a full ring
/// could be overtaken by a later (smaller, or after the reader made room) one to the same ring.
/// One `notify` asks whether each destination with several datagrams has room for all of them
/// (their whole footprint in its ring); where not, or if the question fails, the batch ends
/// before that destination's second datagram. Other domains' senders can still take the room
/// between the question and the batch: then the order is only as good as UDP's.
fn order_cut(
    hv: &dyn Hypervisor,
    frames: &[(FrameHeader, usize)],
    valid: impl Fn(&FrameHeader) -> bool,
) -> usize {
    if frames.len() < 2 {
        return frames.len();
    }
    // (destination, datagrams, footprint) of each destination.
    let mut dsts: Vec<(Addr, usize, u64)> = Vec::new();
    for (h, _) in frames.iter().filter(|(h, _)| valid(h)) {
        let dst = Addr::new(h.domain, h.port);
        let size = abi::roundup16(u64::from(h.len) + u64::from(abi::MESSAGE_HEADER_SIZE));
        match dsts.iter_mut().find(|(a, ..)| *a == dst) {
            Some(e) => {
                e.1 += 1;
                e.2 += size;
            }
            None => dsts.push((dst, 1, size)),
        }
    }
    dsts.retain(|&(_, n, _)| n > 1);
    if dsts.is_empty() {
        return frames.len();
    }
    let mut ents: Vec<RingDataEnt> = dsts
        .iter()
        .map(|&(dst, _, size)| RingDataEnt {
            ring: dst,
            // As one message of the same footprint.
            space_required: u32::try_from(size - u64::from(abi::MESSAGE_HEADER_SIZE))
                .unwrap_or(u32::MAX),
            ..Default::default()
        })
        .collect();
    let ok = hv.notify(Some(&mut ents)).is_ok();
    let tight: Vec<Addr> = dsts
        .iter()
        .zip(&ents)
        .filter(|(_, e)| !ok || e.flags & abi::RING_DATA_F_SUFFICIENT == 0)
        .map(|((dst, ..), _)| *dst)
        .collect();
    if tight.is_empty() {
        return frames.len();
    }
    let mut seen: Vec<Addr> = Vec::new();
    for (i, (h, _)) in frames.iter().enumerate() {
        let dst = Addr::new(h.domain, h.port);
        if valid(h) && tight.contains(&dst) {
            if seen.contains(&dst) {
                return i;
            }
            seen.push(dst);
        }
    }
    frames.len()
}

/// Why a datagram of `len` bytes to `dst` failed, for the STATUS frame: a message too big for
/// its ring says its size and the ring's maximum.
fn send_reason(hv: &dyn Hypervisor, e: &HvError, dst: Addr, len: usize) -> String {
    if *e != HvError::MessageTooBig {
        return String::new();
    }
    let mut ent = [RingDataEnt {
        ring: dst,
        ..Default::default()
    }];
    match hv.notify(Some(&mut ent)) {
        Ok(()) if ent[0].flags & RING_DATA_F_EXISTS != 0 => format!(
            "{len} bytes do not fit the ring at {}:{}, which takes at most {} bytes per message",
            dst.domain, dst.port, ent[0].max_message_size
        ),
        _ => format!(
            "{len} bytes do not fit the ring at {}:{}",
            dst.domain, dst.port
        ),
    }
}

/// Why a domain id at or above `DOMID_FIRST_RESERVED` is refused.
pub(super) fn reserved_domain(d: abi::DomId) -> String {
    format!(
        "domain {d} is reserved: domain ids are below {}",
        abi::DOMID_FIRST_RESERVED
    )
}
