// SPDX-License-Identifier: MIT OR Apache-2.0
//! Stream connections: segments from peer daemons, stream clients' bytes, accepting from a
//! listening port's backlog, connecting, the keepalive, and how each stream ended.
//!
//! Owns the [`StreamTable`]: who holds each connection (a client, or a listening port's
//! backlog), the connection ids, and the bounded memory of closed streams for `CLOSED`. A
//! connection's own state is a [`Conn`] (`conn.rs`), held by its client or backlog entry.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};
use v4v::HvError;
use v4v::abi::{Addr, PROTO_STREAM};
use v4v::client::proto::{Incoming, Reply, SockAddr, StreamEnd};
use v4v::ring;

use super::Daemon;
use super::conn::{CONNECT_TIMEOUT, Conn, ConnKey, Event, Out, State, Step, stray};
use super::creds;
use super::ports::{PendingSyn, PortKind};
use super::requests::errno_name;
use super::session::{Client, ClientState, may_see};
use super::shm_stream::{Filled, Undeliverable};
use crate::wire::{self, Segment};

/// How often one pump goes back to a shared-memory client's channel because it rang.
const MAX_RELOOKS: usize = 2;
/// How often idle peers are probed.
pub(super) const KEEPALIVE: Duration = Duration::from_secs(1);
/// How long a closed connection is remembered so that its late segments are absorbed: well
/// beyond how long a peer's credit update can wait on a full ring before it is sent.
const TIME_WAIT: Duration = Duration::from_secs(30);
/// Most connections remembered in time-wait (the oldest are forgotten first).
const MAX_TIME_WAIT: usize = 16384;

/// How a stream ended, as `CLOSED` reports it: `eof` for an orderly close by the peer, else an
/// errno name for a reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// The peer closed orderly (FIN); everything it sent was delivered.
    Eof,
    /// The peer's side reset the stream (its client vanished or aborted).
    PeerReset,
    /// The peer daemon or its domain is gone.
    PeerGone,
    /// The peer broke the stream protocol.
    Protocol,
    /// The hypervisor's ACL refused a message of the stream.
    Denied,
    /// The peer never answered the connect.
    TimedOut,
    /// This daemon is stopping.
    Stopping,
    /// This side's client went away or failed.
    LocalAbort,
    /// This domain was saved and restored, or migrated: it is a new domain, and streams do not
    /// survive that.
    Restored,
}

impl CloseReason {
    /// How `CLOSED` reports it: [`describe`](Self::describe) split into the typed answer.
    pub fn end(self) -> StreamEnd {
        match self.describe().strip_prefix("reset ") {
            None => StreamEnd::Eof,
            Some(rest) => {
                let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
                StreamEnd::Reset {
                    code: code.to_string(),
                    reason: reason.to_string(),
                }
            }
        }
    }

    /// The word `CLOSED` answers: `eof`, or `reset ERRNO-NAME`.
    pub fn describe(self) -> &'static str {
        match self {
            CloseReason::Eof => "eof",
            CloseReason::PeerReset => "reset ECONNRESET the peer reset the stream",
            CloseReason::PeerGone => "reset EHOSTUNREACH the peer daemon or domain is gone",
            CloseReason::Protocol => "reset EPROTO the peer broke the stream protocol",
            CloseReason::Denied => "reset EACCES refused by the V4V ACL",
            CloseReason::TimedOut => "reset ETIMEDOUT the peer did not answer",
            CloseReason::Stopping => "reset ECONNABORTED the local v4vd stopped",
            CloseReason::LocalAbort => "reset ECONNABORTED the local client aborted",
            CloseReason::Restored => "reset ENETRESET the domain was restored (or migrated)",
        }
    }
}

/// The send buffer asked for on a stream client's socket: two of the largest messages, so that
/// one delivered from the ring goes to the client in one write, not a write and a copy into the
/// client's output queue for the next writable event (where `net.core.wmem_max` allows).
const STREAM_SNDBUF: usize = 512 * 1024;

/// Closed streams remembered for `CLOSED` queries.
const CLOSED_MEMORY: usize = 4096;

/// What became of a stream message handed to [`Daemon::stream_send`].
enum Sent {
    Yes,
    /// Not sent, and not needed any more (credit for a peer that finished).
    Dropped,
    /// The ring is full: the client is parked, the caller keeps the message.
    Parked,
    /// The peer is unreachable: the stream was aborted.
    Aborted,
}

/// Who holds a stream connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Owner {
    Client(usize),
    /// In the backlog of this listening port.
    Backlog(u32),
}

/// Every stream connection of the daemon, by key, and the closed ones remembered.
///
/// The keepalive's bookkeeping is kept as connections come and go, so that a tick costs what
/// is due, not how many streams there are: the (ring, peer) pairs to probe with their counts of
/// probed connections, and the connects by when they were sent (the timeout is one for all, so
/// arrival order is expiry order).
pub(super) struct StreamTable {
    /// Each connection's holder, and whether the keepalive probes its peer for it.
    conns: HashMap<ConnKey, (Owner, bool)>,
    /// Probed connections per (our ring, peer daemon).
    probed: HashMap<(u32, Addr), usize>,
    /// Connects sent: when, by which client, which stream (checked when due).
    connects: VecDeque<(Instant, usize, u64)>,
    next_conid: u32,
    next_stream_id: u64,
    closed: HashMap<u64, (u32, CloseReason)>,
    closed_order: VecDeque<u64>,
    /// Closed connections in time-wait, until when; `time_wait_order` is oldest first.
    time_wait: HashMap<ConnKey, Instant>,
    time_wait_order: VecDeque<(Instant, ConnKey)>,
}

impl StreamTable {
    pub fn new() -> Self {
        StreamTable {
            conns: HashMap::new(),
            probed: HashMap::new(),
            connects: VecDeque::new(),
            next_conid: 1,
            next_stream_id: 0,
            closed: HashMap::new(),
            closed_order: VecDeque::new(),
            time_wait: HashMap::new(),
            time_wait_order: VecDeque::new(),
        }
    }

    pub fn owner(&self, key: &ConnKey) -> Option<Owner> {
        self.conns.get(key).map(|&(o, _)| o)
    }

    /// Records who holds `key` (a new connection, or a backlog entry accepted by a client).
    pub fn insert(&mut self, key: ConnKey, owner: Owner) {
        let probed = self.conns.get(&key).is_some_and(|&(_, p)| p);
        self.conns.insert(key, (owner, probed));
    }

    /// From now on the keepalive probes `key`'s peer (the connection is established).
    pub fn probe(&mut self, key: &ConnKey) {
        if let Some((_, p)) = self.conns.get_mut(key)
            && !*p
        {
            *p = true;
            *self.probed.entry((key.ring_port, key.peer)).or_insert(0) += 1;
        }
    }

    /// The (our ring, peer) pairs the keepalive probes.
    pub fn probed_peers(&self) -> Vec<(u32, Addr)> {
        self.probed.keys().copied().collect()
    }

    /// Remembers that client `t` sent a connect for stream `id` at `at`.
    pub fn connect_sent(&mut self, at: Instant, t: usize, id: u64) {
        self.connects.push_back((at, t, id));
    }

    /// The connects sent before `before`, taken out of the queue (the caller checks whether
    /// each is still unanswered).
    pub fn connects_before(&mut self, before: Instant) -> Vec<(usize, u64)> {
        let mut due = Vec::new();
        while let Some(&(at, t, id)) = self.connects.front() {
            if at >= before {
                break;
            }
            self.connects.pop_front();
            due.push((t, id));
        }
        due
    }

    /// Forgets a live connection; it stays in time-wait for [`TIME_WAIT`] (bounded by
    /// [`MAX_TIME_WAIT`]) so that what the peer sent before it learnt of the close is absorbed.
    pub fn remove(&mut self, key: &ConnKey) {
        let Some((_, probed)) = self.conns.remove(key) else {
            return;
        };
        let pair = (key.ring_port, key.peer);
        if probed && let Some(n) = self.probed.get_mut(&pair) {
            *n -= 1;
            if *n == 0 {
                self.probed.remove(&pair);
            }
        }
        let now = Instant::now();
        while let Some(&(until, k)) = self.time_wait_order.front() {
            if until > now && self.time_wait_order.len() < MAX_TIME_WAIT {
                break;
            }
            self.time_wait_order.pop_front();
            if self.time_wait.get(&k) == Some(&until) {
                self.time_wait.remove(&k);
            }
        }
        let until = now + TIME_WAIT;
        self.time_wait.insert(*key, until);
        self.time_wait_order.push_back((until, *key));
    }

    /// Whether `key` is a closed connection still remembered.
    pub fn in_time_wait(&self, key: &ConnKey) -> bool {
        self.time_wait
            .get(key)
            .is_some_and(|&until| until > Instant::now())
    }

    /// A new connection with `key` (a SYN): the old one is over for good.
    pub fn end_time_wait(&mut self, key: &ConnKey) {
        self.time_wait.remove(key);
    }

    /// The clients holding streams between our `ring_port` and `peer`.
    pub fn clients_of(&self, ring_port: u32, peer: Addr) -> Vec<usize> {
        self.conns
            .iter()
            .filter(|(k, _)| k.ring_port == ring_port && k.peer == peer)
            .filter_map(|(_, (o, _))| match o {
                Owner::Client(t) => Some(*t),
                Owner::Backlog(_) => None,
            })
            .collect()
    }

    /// A connection id for a stream we open (never 0: conid 0 probes the peer daemon).
    pub fn next_conid(&mut self) -> u32 {
        let c = self.next_conid;
        self.next_conid = self.next_conid.wrapping_add(1).max(1);
        c
    }

    /// A daemon-unique stream id for `CLOSED`.
    pub fn next_stream_id(&mut self) -> u64 {
        self.next_stream_id += 1;
        self.next_stream_id
    }

    /// Remembers how stream `id` of user `uid` ended (the oldest are forgotten first).
    pub fn remember_close(&mut self, id: u64, uid: u32, reason: CloseReason) {
        if self.closed.insert(id, (uid, reason)).is_none() {
            self.closed_order.push_back(id);
        }
        while self.closed_order.len() > CLOSED_MEMORY {
            if let Some(old) = self.closed_order.pop_front() {
                self.closed.remove(&old);
            }
        }
    }

    /// How stream `id` ended, and whose it was, if remembered.
    pub fn closed(&self, id: u64) -> Option<(u32, CloseReason)> {
        self.closed.get(&id).copied()
    }
}

impl Daemon {
    // ---- streams: messages from peers ------------------------------------------------------

    /// A `V4V_PROTO_STREAM` message from `src` on our ring `port`.
    pub(super) fn on_stream(&mut self, port: u32, src: Addr, msg: &[u8]) {
        let (conid, seg) = match wire::decode(msg) {
            Ok(x) => x,
            Err(e) => {
                self.stats.dropped += 1;
                debug!(port, "bad stream message from {src:?}: {e}");
                return;
            }
        };
        let key = ConnKey {
            ring_port: port,
            peer: src,
            conid,
        };
        if let Segment::Syn { window } = seg {
            self.on_syn(key, window);
            return;
        }
        let payload = match seg {
            Segment::Data(d) => d,
            _ => &[],
        };
        match self.streams.owner(&key) {
            Some(Owner::Client(t)) => {
                let Some(ClientState::Stream(conn)) = self.clients.get_mut(t).map(|c| &mut c.state)
                else {
                    return;
                };
                let was = conn.state();
                let step = conn.on_segment(&seg);
                self.perform(t, was, step, payload);
            }
            Some(Owner::Backlog(p)) => self.backlog_segment(p, key, &seg, payload),
            None => {
                // Closed (time-wait) or never known: absorbed unless it needs an answer.
                if let Some(o) = stray(&seg, self.streams.in_time_wait(&key)) {
                    self.stats.dropped += 1;
                    debug!(?key, "{seg:?} for no connection: {o:?}");
                    self.send_out(key, o);
                } else if conid != 0 {
                    debug!(?key, "late {seg:?} for a closed connection absorbed");
                }
            }
        }
    }

    /// The data message at the head of `port`'s ring, when it is for a stream client with
    /// nothing waiting to be written to it: sent to the client's socket straight from the ring
    /// (the kernel's one copy, none into a buffer of ours), only what the socket does not take
    /// copied into the client's output, then consumed. Returns its length. `None` leaves the
    /// message to [`Daemon::on_stream`] (anything else; a ring found corrupt is reported there).
    /// The header is copied out and checked before anything is used; the peer can change the
    /// payload under us, which only garbles its own data.
    pub(super) fn stream_data_in_place(&mut self, port: u32, buf: &mut Vec<u8>) -> Option<u32> {
        use std::os::fd::AsFd;
        let reader = &self.ports.get(port)?.reader;
        let h = reader.head().ok()??;
        if h.msg.message_type != PROTO_STREAM || (h.msg.len as usize) < wire::HEADER {
            return None;
        }
        let mut hdr = [0u8; wire::HEADER];
        reader.read_head(&h, 0, &mut hdr).ok()?;
        let Ok((conid, Segment::Data(_))) = wire::decode(&hdr) else {
            return None;
        };
        let key = ConnKey {
            ring_port: port,
            peer: h.msg.source,
            conid,
        };
        let Some(Owner::Client(t)) = self.streams.owner(&key) else {
            return None;
        };
        match self.clients.get(t) {
            Some(c)
                if c.out.is_empty()
                    && !c.dead
                    && c.shm.is_none()
                    && matches!(c.state, ClientState::Stream(_)) => {}
            _ => return None,
        }
        let c = self.clients.get_mut(t)?;
        let ClientState::Stream(conn) = &mut c.state else {
            return None;
        };
        let len = h.msg.len as usize - wire::HEADER;
        let was = conn.state();
        let step = conn.on_data(len);
        let mut lost = false;
        if step.event == Some(Event::Deliver) {
            // A write error is the next flush's to report, as on the general path.
            let from = wire::HEADER as u32;
            let sent = match reader.send_head(&h, from, c.stream.as_fd()) {
                Ok(Ok(n)) => n.min(len),
                _ => 0,
            };
            conn.consumed(sent);
            if sent < len {
                buf.resize(len - sent, 0);
                match reader.read_head(&h, from + sent as u32, buf) {
                    Ok(()) => c.out.extend(&buf[..]),
                    Err(_) => lost = true,
                }
            }
        }
        if let Err(e) = reader.consume(&h) {
            lost = true;
            warn!(port, "ring: {e}");
        }
        if lost {
            // Cannot happen (the head was checked); if it did, the stream lost bytes.
            self.abort_client(t, true, CloseReason::LocalAbort);
        } else if step.event == Some(Event::Deliver) {
            self.wake(t);
        } else {
            self.perform(t, was, step, &[]);
        }
        Some(h.msg.len)
    }

    /// Performs a transition's step for the stream client `t` (whose connection was in state
    /// `was` before it). Nothing here re-enters another handler: the client is woken to be
    /// pumped after the current event.
    fn perform(&mut self, t: usize, was: State, step: Step, payload: &[u8]) {
        let Some(c) = self.clients.get_mut(t) else {
            return;
        };
        let ClientState::Stream(conn) = &mut c.state else {
            return;
        };
        let (key, id, uid) = (conn.key, conn.id, c.cred.uid);
        match step.send {
            Some(Out::Rst) | None => {}
            Some(o) => conn.outq.push_back(o.encode(key.conid)),
        }
        let mut closed = None;
        match step.event {
            None => {}
            Some(Event::Deliver) => match c.shm.as_mut() {
                Some(shm) => match shm.deliver(payload) {
                    Ok((n, bell)) => {
                        conn.consumed(n);
                        if bell {
                            ring(&mut c.out);
                        }
                    }
                    Err(e) => {
                        // Its own channel: the stream is over for it.
                        self.shm_failed(t, &e);
                        return;
                    }
                },
                None => {
                    // Straight to the client when nothing waits before it; the rest is
                    // buffered (a write error is the next flush's to report).
                    let mut rest = payload;
                    if c.out.is_empty()
                        && let Ok(n) = c.stream.write(payload)
                    {
                        conn.consumed(n);
                        rest = &payload[n..];
                    }
                    c.out.extend(rest);
                }
            },
            Some(Event::Connected) => {
                self.streams.probe(&key);
                c.queue_reply(&Reply::Connected {
                    local_port: key.ring_port,
                    id,
                });
                c.out_prefix = c.out.len();
                debug!(?key, "stream established");
            }
            Some(Event::Closed(reason)) => {
                c.dead = true;
                match reason {
                    CloseReason::PeerReset if was == State::Connecting => {
                        c.out.clear();
                        c.out_prefix = 0;
                        c.queue_reply(&Reply::err(
                            "ECONNREFUSED",
                            "connection refused by the peer",
                        ));
                    }
                    CloseReason::Protocol => {
                        warn!(?key, "peer broke the stream protocol; resetting");
                    }
                    CloseReason::Eof => debug!(?key, "stream closed"),
                    _ => debug!(?key, "stream ended: {}", reason.describe()),
                }
                closed = Some(reason);
            }
        }
        if step.send == Some(Out::Rst) {
            self.send_out(key, Out::Rst);
        }
        if let Some(reason) = closed {
            self.streams.remember_close(id, uid, reason);
        }
        self.wake(t);
    }

    /// Sends a control segment at once (an RST waits in the RST queue if the ring is full).
    fn send_out(&mut self, key: ConnKey, o: Out) {
        match o {
            Out::Rst => self.send_rst(key.ring_port, key.peer, key.conid),
            o => {
                let m = o.encode(key.conid);
                if let Err(e) = self.send_or_wait(key.ring_port, key.peer, PROTO_STREAM, &m) {
                    debug!(?key, "{o:?} not sent: {e}");
                }
            }
        }
    }

    /// A segment for a connection in listening port `p`'s backlog.
    fn backlog_segment(&mut self, p: u32, key: ConnKey, seg: &Segment<'_>, payload: &[u8]) {
        let Some(l) = self.ports.listen_mut(p) else {
            return;
        };
        let Some(i) = l.backlog.iter().position(|s| s.conn.key == key) else {
            return;
        };
        let uid = l.uid;
        let ps = &mut l.backlog[i];
        let step = ps.conn.on_segment(seg);
        match step.event {
            Some(Event::Deliver) => ps.buf.extend(payload),
            Some(Event::Closed(_)) => {
                if let Some(ps) = l.backlog.remove(i) {
                    self.budgets.release(uid, ps.reserved);
                }
                self.streams.remove(&key);
            }
            Some(Event::Connected) | None => {}
        }
        if let Some(o) = step.send {
            self.send_out(key, o);
        }
    }

    /// A connect request: into the backlog of the listening port (SYN|ACK at once), or RST.
    fn on_syn(&mut self, key: ConnKey, window: u32) {
        let (port, src, conid) = (key.ring_port, key.peer, key.conid);
        if self.streams.owner(&key).is_some() {
            return; // a duplicate
        }
        self.streams.end_time_wait(&key);
        let backlog_max = self.cfg.backlog;
        let Some(l) = self.ports.listen_mut(port) else {
            debug!(port, "SYN for a port nobody listens on: RST");
            self.send_rst(port, src, conid);
            return;
        };
        if l.abandoned() || l.backlog.len() >= backlog_max {
            debug!(port, "not listening or backlog full: RST");
            self.send_rst(port, src, conid);
            return;
        }
        let uid = l.uid;
        let cost = self.stream_cost();
        if let Err(why) = self.budgets.reserve(uid, cost) {
            user_warn!(self, uid, uid, port, "connection refused: {why}");
            self.send_rst(port, src, conid);
            return;
        }
        let Some(l) = self.ports.listen_mut(port) else {
            self.budgets.release(uid, cost);
            return;
        };
        let id = l.next_id;
        l.next_id += 1;
        let controls = l.controls.clone();
        let stream_id = self.streams.next_stream_id();
        let mut conn = Box::new(Conn::accepted(
            key,
            stream_id,
            self.cfg.conn_window,
            window,
            self.chunk(),
            Instant::now(),
        ));
        let synack = wire::encode(
            conid,
            &Segment::SynAck {
                window: self.cfg.conn_window,
            },
        );
        match self.send_or_wait(port, src, PROTO_STREAM, &synack) {
            Ok(true) => {}
            // Sent when a client accepts it.
            Ok(false) => conn.outq.push_back(synack),
            Err(e) => {
                debug!("SYN from {src:?} cannot be answered: {e}");
                self.budgets.release(uid, cost);
                return;
            }
        }
        if let Some(l) = self.ports.listen_mut(port) {
            l.backlog.push_back(PendingSyn {
                id,
                conn,
                buf: VecDeque::new(),
                reserved: cost,
            });
        }
        self.streams.insert(key, Owner::Backlog(port));
        let line = Incoming {
            id,
            peer: SockAddr::new(src.domain, src.port),
        }
        .to_string();
        for t in controls {
            if let Some(c) = self.clients.get_mut(t) {
                if c.out.len() < 64 * 1024 {
                    c.queue_line(&line);
                }
                if c.flush().is_err() {
                    c.dead = true;
                }
            }
        }
        self.match_acceptors(port);
    }

    /// Hands backlog connections of `port` to waiting `ACCEPT` clients.
    pub(super) fn match_acceptors(&mut self, port: u32) {
        loop {
            let Some(l) = self.ports.listen_mut(port) else {
                return;
            };
            // Find an acceptor and a connection for it.
            let mut pick = None;
            for (ai, &t) in l.acceptors.iter().enumerate() {
                let want = match self.clients.get(t).map(|c| &c.state) {
                    Some(ClientState::Accept(_, id)) => *id,
                    _ => continue,
                };
                let si = match want {
                    None => (!l.backlog.is_empty()).then_some(0),
                    Some(id) => l.backlog.iter().position(|s| s.id == id),
                };
                if let Some(si) = si {
                    pick = Some((ai, si));
                    break;
                }
            }
            let Some((ai, si)) = pick else {
                return;
            };
            let (Some(t), Some(ps)) = (l.acceptors.remove(ai), l.backlog.remove(si)) else {
                return;
            };
            let key = ps.conn.key;
            let luid = l.uid;
            self.ports.add_conn(port, 1);
            self.streams.insert(key, Owner::Client(t));
            self.streams.probe(&key);
            match self.clients.get_mut(t) {
                // The listener's user is the acceptor's: the reservation goes with the stream.
                Some(c) => c.reserved += ps.reserved,
                None => self.budgets.release(luid, ps.reserved),
            }
            if let Some(c) = self.clients.get_mut(t) {
                let reply = Reply::Accepted {
                    peer: SockAddr::new(key.peer.domain, key.peer.port),
                    id: ps.conn.id,
                };
                let (mut conn, mut early) = (ps.conn, ps.buf);
                // What came before the accept: into the channel, or after the reply line.
                let mut broken = None;
                match c.shm.as_mut() {
                    Some(shm) => match shm.deliver(early.make_contiguous()) {
                        // The client is not reading yet: no doorbell is owed.
                        Ok((n, _)) => conn.consumed(n),
                        Err(e) => broken = Some(e),
                    },
                    None => {
                        c.queue_reply(&reply);
                        c.out_prefix = c.out.len();
                        c.out.extend(early);
                    }
                }
                if c.shm.is_some() {
                    c.queue_reply(&reply);
                }
                c.state = ClientState::Stream(conn);
                creds::set_send_buffer(&c.stream, STREAM_SNDBUF);
                if let Some(e) = broken {
                    self.shm_failed(t, &e);
                }
            }
            debug!(?key, "stream accepted");
            self.wake(t);
        }
    }

    /// Data bytes per stream message: the configured chunk, within what one ring message holds
    /// (a stream ring may be as small as a datagram ring when the domain's ring pages are short).
    pub(super) fn chunk(&self) -> usize {
        let smallest = self.cfg.ring_len.min(self.cfg.stream_ring());
        let ring_cap = ring::max_message_size(smallest) as usize;
        self.cfg
            .chunk
            .min(ring_cap.saturating_sub(wire::HEADER))
            .max(1)
    }

    // ---- streams: the client side ----------------------------------------------------------

    /// Moves a stream client along: its output, credit back to the peer, queued messages, the
    /// orderly end, and its input within credit. Data read from the client is sent from one
    /// reused buffer (header and payload in place); it is copied into the queue only when the
    /// peer's ring is full.
    pub(super) fn pump_stream(&mut self, t: usize) {
        let mut buf = std::mem::take(&mut self.send_buf);
        self.pump_stream_with(t, &mut buf);
        self.send_buf = buf;
    }

    fn pump_stream_with(&mut self, t: usize, buf: &mut Vec<u8>) {
        // Passes back to step 1 because a shared-memory client rang (its channel may have room).
        let mut relooks = 0;
        loop {
            let Some(c) = self.clients.get_mut(t) else {
                return;
            };
            if c.dead {
                return;
            }
            // 1. To the client.
            let flushed = c.flush();
            let ClientState::Stream(conn) = &mut c.state else {
                return;
            };
            match flushed {
                // Through shared memory, the socket carries no stream data.
                Ok(n) if c.shm.is_none() => conn.consumed(n),
                Ok(_) => {}
                // Only a doorbell was lost: whether the stream ends orderly or is reset depends
                // on what it left unread (`watch`, `fill`).
                Err(_) if c.shm.is_some() => {
                    c.out.clear();
                    if let Some(shm) = c.shm.as_mut() {
                        shm.client_gone();
                    }
                }
                Err(e) => {
                    debug!(key = ?conn.key, "client gone mid-stream: {e}");
                    self.abort_client(t, true, CloseReason::LocalAbort);
                    return;
                }
            }
            if let Some(shm) = c.shm.as_mut() {
                // Peer data, then its end, into the channel.
                let moved = if conn.peer_finished() && !conn.write_shut {
                    conn.write_shut = true;
                    shm.finish()
                } else if shm.has_pending() {
                    shm.flush()
                } else {
                    Ok((0, false))
                };
                match moved {
                    Ok((n, bell)) => {
                        conn.consumed(n);
                        if bell {
                            ring(&mut c.out);
                            continue;
                        }
                    }
                    Err(e) => {
                        self.shm_failed(t, &e);
                        return;
                    }
                }
            } else if conn.peer_finished() && c.out.is_empty() && !conn.write_shut {
                conn.write_shut = true;
                let _ = c.stream.shutdown(std::net::Shutdown::Write);
            }
            // 2. Credit back to the peer.
            if let Some(o) = conn.credit_due() {
                conn.outq.push_back(o.encode(conn.key.conid));
            }
            // 3. Queued messages to the peer.
            let (src, dst) = (conn.key.ring_port, conn.key.peer);
            let mut progressed = false;
            while let Some(m) = self.clients.get_mut(t).and_then(|c| match &mut c.state {
                ClientState::Stream(conn) => conn.outq.pop_front(),
                _ => None,
            }) {
                match self.stream_send(t, src, dst, &m) {
                    Sent::Yes => progressed = true,
                    Sent::Dropped => {}
                    Sent::Parked => {
                        if let Some(ClientState::Stream(conn)) =
                            self.clients.get_mut(t).map(|c| &mut c.state)
                        {
                            conn.outq.push_front(m);
                        }
                        return;
                    }
                    Sent::Aborted => return,
                }
            }
            let Some(c) = self.clients.get_mut(t) else {
                return;
            };
            let ClientState::Stream(conn) = &mut c.state else {
                return;
            };
            // 4. Done?
            let out_empty = c.out.is_empty() && !c.shm.as_ref().is_some_and(|s| s.has_pending());
            let step = conn.try_finish(out_empty);
            if step.event.is_some() {
                let was = State::Closing;
                self.perform(t, was, step, &[]);
                return;
            }
            // 5. From the client, within credit.
            let n = conn.sendable();
            if n == 0 {
                if progressed {
                    continue;
                }
                match c.shm.as_mut().and_then(|shm| shm.watch(&mut c.stream)) {
                    Some(Filled::Abandoned) => self.shm_failed(t, &Undeliverable::Gone),
                    // A few looks again per pump, then after the next poll: a client writing
                    // doorbells without end must not keep the loop here.
                    Some(_) if relooks < MAX_RELOOKS => {
                        relooks += 1;
                        continue;
                    }
                    Some(_) => self.wake_later(t),
                    None => {}
                }
                return;
            }
            if buf.len() < wire::HEADER + n {
                buf.resize(wire::HEADER + n, 0);
            }
            // Fill the message as far as the socket has bytes now: a short read (the client
            // wrote in pieces) is followed by another before the send, which costs a system
            // call where one more message would cost a hypercall.
            let (mut k, mut eof, mut failed, mut rang) = (0, false, None, false);
            if let Some(shm) = c.shm.as_mut() {
                let (filled, bell) =
                    shm.fill(&mut c.stream, &mut buf[wire::HEADER..wire::HEADER + n]);
                if bell {
                    ring(&mut c.out);
                }
                match filled {
                    Filled::Bytes(m) => k = m,
                    // A client writing doorbells faster than they are read is read again when
                    // it writes more (each write is a new readable event): others come first.
                    Filled::Empty | Filled::Busy => {}
                    Filled::Rang => rang = true,
                    Filled::Eof => eof = true,
                    Filled::Abandoned => {
                        self.shm_failed(t, &Undeliverable::Gone);
                        return;
                    }
                    Filled::Failed(e) => failed = Some(e),
                    Filled::Corrupt(e) => {
                        self.shm_failed(t, &Undeliverable::Corrupt(e));
                        return;
                    }
                }
            }
            while k < n && c.shm.is_none() {
                match c.stream.read(&mut buf[wire::HEADER + k..wire::HEADER + n]) {
                    Ok(0) => {
                        eof = true;
                        break;
                    }
                    Ok(m) => k += m,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            if k > 0 {
                conn.sent(k);
                let hdr = wire::encode(conn.key.conid, &Segment::Data(&[]));
                buf[..wire::HEADER].copy_from_slice(&hdr);
                let m = &buf[..wire::HEADER + k];
                match self.stream_send(t, src, dst, m) {
                    Sent::Yes | Sent::Dropped => {}
                    Sent::Parked => {
                        if let Some(ClientState::Stream(conn)) =
                            self.clients.get_mut(t).map(|c| &mut c.state)
                        {
                            conn.outq.push_back(m.to_vec());
                        }
                        // An end of file is seen again by the read after this message.
                        if let Some(e) = failed {
                            debug!("client read: {e}");
                            self.abort_client(t, true, CloseReason::LocalAbort);
                        }
                        return;
                    }
                    Sent::Aborted => return,
                }
            }
            if let Some(e) = failed {
                debug!("client read: {e}");
                self.abort_client(t, true, CloseReason::LocalAbort);
                return;
            }
            if eof {
                if let Some(ClientState::Stream(conn)) =
                    self.clients.get_mut(t).map(|c| &mut c.state)
                    && let Some(o) = conn.client_eof().send
                {
                    conn.outq.push_back(o.encode(conn.key.conid));
                }
            } else if k == 0 && !progressed {
                // Nothing to read (WouldBlock), nothing moved: unless a doorbell taken off the
                // socket may have said that the client's channel has room (step 1 again).
                if rang {
                    if relooks < MAX_RELOOKS {
                        relooks += 1;
                        continue;
                    }
                    self.wake_later(t);
                }
                return;
            }
        }
    }

    /// Sends stream message `m` of client `t` from our ring `src` to `dst`; parks the client
    /// when the ring is full (the caller keeps the message), aborts the stream when the peer is
    /// unreachable.
    fn stream_send(&mut self, t: usize, src: u32, dst: Addr, m: &[u8]) -> Sent {
        match self.send_or_wait(src, dst, PROTO_STREAM, m) {
            Ok(true) => Sent::Yes,
            Ok(false) => {
                self.tx.park(t, dst, m.len());
                Sent::Parked
            }
            // A credit update is advice: the peer may have finished and closed while its FIN
            // still waits in our ring. If it is really gone, the keepalive says so.
            Err(e)
                if self.clients.get(t).is_some_and(Client::finished_both_ways)
                    || matches!(wire::decode(m), Ok((_, Segment::Ack { .. }))) =>
            {
                debug!("peer {dst:?}: dropping a message it no longer needs: {e}");
                Sent::Dropped
            }
            Err(e) => {
                debug!("peer {dst:?} unreachable: {e}");
                let reason = if e == HvError::Denied {
                    CloseReason::Denied
                } else {
                    CloseReason::PeerGone
                };
                self.abort_client(t, false, reason);
                Sent::Aborted
            }
        }
    }

    /// A shared-memory stream client that broke its channel, or closed its connection while
    /// the peer still sends: reset, as a socket client that stopped reading would be.
    fn shm_failed(&mut self, t: usize, e: &Undeliverable) {
        let uid = self.clients.get(t).map_or(u32::MAX, |c| c.cred.uid);
        match e {
            Undeliverable::Corrupt(_) => {
                user_warn!(
                    self,
                    uid,
                    uid,
                    "stream client {t}: {e}; resetting its stream"
                );
            }
            Undeliverable::Gone => debug!("stream client {t}: {e}; resetting its stream"),
        }
        self.abort_client(t, true, CloseReason::LocalAbort);
    }

    /// Ends a client at once. A stream sends RST to the peer when `rst` (our side aborted) and
    /// remembers `reason` for `CLOSED`.
    pub(super) fn abort_client(&mut self, t: usize, rst: bool, reason: CloseReason) {
        let Some(c) = self.clients.get_mut(t) else {
            return;
        };
        c.dead = true;
        let ClientState::Stream(conn) = &mut c.state else {
            return;
        };
        let was = conn.state();
        let step = if rst {
            conn.abort_with(reason)
        } else {
            conn.lost(reason)
        };
        self.perform(t, was, step, &[]);
    }

    /// The client holding open stream `id`, if `uid` may see it (its owner, or root).
    pub(super) fn open_stream_of(&self, uid: u32, id: u64) -> Option<usize> {
        self.clients.iter().find_map(|(&k, c)| match &c.state {
            // A dead client's stream is over: its end is in the closed log.
            ClientState::Stream(conn) if conn.id == id && !c.dead && may_see(uid, c.cred.uid) => {
                Some(k)
            }
            _ => None,
        })
    }

    /// `CLOSED ID`: how a stream of this user's ended (or that it is still open).
    pub(super) fn closed_query(&self, uid: u32, id: u64) -> Result<Reply, (&'static str, String)> {
        if let Some(k) = self.open_stream_of(uid, id) {
            let peer_fin = matches!(
                self.clients.get(k).map(|c| &c.state),
                Some(ClientState::Stream(conn)) if conn.peer_finished()
            );
            return Ok(Reply::Closed(if peer_fin {
                StreamEnd::Eof
            } else {
                StreamEnd::Open
            }));
        }
        match self.streams.closed(id) {
            Some((owner, reason)) if may_see(uid, owner) => Ok(Reply::Closed(reason.end())),
            _ => Err(("ENOENT", format!("no stream {id} of yours is known"))),
        }
    }

    // ---- clients ---------------------------------------------------------------------------

    pub(super) fn connect(&mut self, t: usize, addr: SockAddr) {
        if addr.port == 0 {
            return self.reply_err(t, "EINVAL", "port 0 is not a destination");
        }
        let uid = self.clients.get(t).map_or(u32::MAX, |c| c.cred.uid);
        let cost = self.stream_cost();
        if let Err(why) = self.budgets.reserve(uid, cost) {
            user_warn!(self, uid, uid, "connect refused: {why}");
            return self.reply_err(t, "ENOBUFS", &why);
        }
        // Held by the client from here: released when it goes, whatever happens next.
        if let Some(c) = self.clients.get_mut(t) {
            c.reserved += cost;
        } else {
            self.budgets.release(uid, cost);
        }
        let ring_port = match self.ports.peer_ring(addr.domid) {
            Some(p) => p,
            None => match self.register_port(0, addr.domid, PortKind::Peer(addr.domid), None) {
                Ok(p) => p,
                Err(e) => return self.reply_err(t, &errno_name(&e), &self.hv_reason(&e)),
            },
        };
        let conid = self.streams.next_conid();
        let dst = Addr::new(addr.domid, addr.port);
        let key = ConnKey {
            ring_port,
            peer: dst,
            conid,
        };
        let syn = wire::encode(
            conid,
            &Segment::Syn {
                window: self.cfg.conn_window,
            },
        );
        match self.send_or_wait(ring_port, dst, PROTO_STREAM, &syn) {
            Ok(sent) => {
                let id = self.streams.next_stream_id();
                let mut conn =
                    Conn::connecting(key, id, self.cfg.conn_window, self.chunk(), Instant::now());
                if !sent {
                    self.tx.park(t, dst, syn.len());
                    conn.outq.push_back(syn);
                }
                self.ports.add_conn(ring_port, 1);
                self.streams.insert(key, Owner::Client(t));
                self.streams.connect_sent(conn.started, t, id);
                if let Some(c) = self.clients.get_mut(t) {
                    c.state = ClientState::Stream(Box::new(conn));
                    creds::set_send_buffer(&c.stream, STREAM_SNDBUF);
                }
            }
            Err(e) => {
                debug!("connect to {addr}: {e}");
                self.reply_err(t, &errno_name(&e), &self.hv_reason(&e));
                self.release_port(ring_port, false);
            }
        }
    }

    /// Probes each peer daemon we have streams with, and times out unanswered connects.
    pub(super) fn keepalive(&mut self, now: Instant) {
        let due = match now.checked_sub(CONNECT_TIMEOUT) {
            Some(before) => self.streams.connects_before(before),
            None => Vec::new(),
        };
        let expired: Vec<usize> = due
            .into_iter()
            .filter(|&(t, id)| {
                matches!(self.clients.get(t).map(|c| &c.state),
                    Some(ClientState::Stream(conn)) if conn.id == id && conn.connect_expired(now))
            })
            .map(|(t, _)| t)
            .collect();
        let peers = self.streams.probed_peers();
        for t in expired {
            if let Some(c) = self.clients.get_mut(t) {
                c.out.clear();
                c.out_prefix = 0;
                c.queue_reply(&Reply::err("ETIMEDOUT", "the peer did not answer"));
            }
            self.abort_client(t, true, CloseReason::TimedOut);
        }
        let ping = wire::encode(0, &Segment::Ping);
        for (src, dst) in peers {
            match self.sendv(src, dst, PROTO_STREAM, &ping) {
                Ok(_) | Err(HvError::WouldBlock) | Err(HvError::Busy) => {}
                Err(e) => {
                    // What the peer sent before it went (its FINs) is in our ring: take it in
                    // first, so that streams it closed orderly are not reset.
                    self.drain_port(src);
                    let gone: Vec<usize> = self
                        .streams
                        .clients_of(src, dst)
                        .into_iter()
                        // Finished both ways: only our client's reading is left.
                        .filter(|&t| !self.clients.get(t).is_some_and(Client::finished_both_ways))
                        .collect();
                    if !gone.is_empty() {
                        info!("peer {dst:?} gone ({e}); resetting its streams");
                    }
                    for t in gone {
                        self.abort_client(t, false, CloseReason::PeerGone);
                    }
                }
            }
        }
    }
}

/// Queues a doorbell byte for a shared-memory stream client, unless a byte is on its way to it
/// already (any byte wakes it).
fn ring(out: &mut VecDeque<u8>) {
    if out.is_empty() {
        out.push_back(1);
    }
}
