// SPDX-License-Identifier: MIT OR Apache-2.0
//! Stream connections: segments from peer daemons, stream clients' bytes, accepting from a
//! listening port's backlog, connecting, the keepalive, and how each stream ended.
//!
//! Owns the [`StreamTable`]: who holds each connection (a client, or a listening port's
//! backlog), the connection ids, and the bounded memory of closed streams for `CLOSED`. A
//! connection's own state is a [`Conn`] (`conn.rs`), held by its client or backlog entry.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{self, Read};
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};
use v4v::HvError;
use v4v::abi::{Addr, PROTO_STREAM};
use v4v::client::proto::SockAddr;
use v4v::ring;

use super::Daemon;
use super::conn::{Conn, ConnKey, Outcome, Phase, apply_segment};
use super::ports::{PendingSyn, PortKind};
use super::requests::errno_name;
use super::session::{Client, ClientState, may_see};
use crate::wire::{self, Segment};

/// How often idle peers are probed, and how long a SYN may wait for its answer.
pub(super) const KEEPALIVE: Duration = Duration::from_secs(1);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How a stream ended, as `CLOSED` reports it: `eof` for an orderly close by the peer, else an
/// errno name for a reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

/// Closed streams remembered for `CLOSED` queries.
const CLOSED_MEMORY: usize = 4096;

/// Who holds a stream connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Owner {
    Client(usize),
    /// In the backlog of this listening port.
    Backlog(u32),
}

/// Every stream connection of the daemon, by key, and the closed ones remembered.
pub(super) struct StreamTable {
    conns: HashMap<ConnKey, Owner>,
    next_conid: u32,
    next_stream_id: u64,
    closed: HashMap<u64, (u32, CloseReason)>,
    closed_order: VecDeque<u64>,
}

impl StreamTable {
    pub fn new() -> Self {
        StreamTable {
            conns: HashMap::new(),
            next_conid: 1,
            next_stream_id: 0,
            closed: HashMap::new(),
            closed_order: VecDeque::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn owner(&self, key: &ConnKey) -> Option<Owner> {
        self.conns.get(key).copied()
    }

    pub fn insert(&mut self, key: ConnKey, owner: Owner) {
        self.conns.insert(key, owner);
    }

    pub fn remove(&mut self, key: &ConnKey) {
        self.conns.remove(key);
    }

    /// The clients holding streams between our `ring_port` and `peer`.
    pub fn clients_of(&self, ring_port: u32, peer: Addr) -> Vec<usize> {
        self.conns
            .iter()
            .filter(|(k, _)| k.ring_port == ring_port && k.peer == peer)
            .filter_map(|(_, o)| match o {
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
            self.on_syn(port, src, conid, window);
            return;
        }
        let Some(owner) = self.streams.owner(&key) else {
            match seg {
                Segment::Rst | Segment::Ping | Segment::Pong => {}
                _ => {
                    self.stats.dropped += 1;
                    self.send_rst(port, src, conid);
                }
            }
            return;
        };
        let window = self.cfg.conn_window as usize;
        let outcome = match owner {
            Owner::Client(t) => match self.clients.get_mut(t) {
                Some(Client {
                    state: ClientState::Stream(conn),
                    out,
                    ..
                }) => apply_segment(conn, out, seg, window),
                _ => return,
            },
            Owner::Backlog(p) => match self.ports.get_mut(p).map(|x| &mut x.kind) {
                Some(PortKind::Listen(l)) => {
                    let Some(ps) = l.backlog.iter_mut().find(|s| s.conn.key == key) else {
                        return;
                    };
                    apply_segment(&mut ps.conn, &mut ps.buf, seg, window)
                }
                _ => return,
            },
        };
        match (owner, outcome) {
            (_, Outcome::Continue) => {}
            (Owner::Client(t), Outcome::Established) => {
                if let Some(c) = self.clients.get_mut(t)
                    && let ClientState::Stream(conn) = &c.state
                {
                    let line = format!("OK {port} {}", conn.id);
                    c.queue_line(&line);
                    c.out_prefix = c.out.len();
                }
                debug!(?key, "stream established");
            }
            (Owner::Client(t), Outcome::Violation) => {
                warn!(
                    ?key,
                    "peer broke the stream protocol (data out of window); resetting"
                );
                self.abort_client(t, true, CloseReason::Protocol);
                return;
            }
            (Owner::Client(t), Outcome::Reset { refused }) => {
                debug!(?key, "stream reset by peer");
                if refused && let Some(c) = self.clients.get_mut(t) {
                    c.out.clear();
                    c.out_prefix = 0;
                    c.queue_line("ERR ECONNREFUSED connection refused by the peer");
                }
                self.abort_client(t, false, CloseReason::PeerReset);
                return;
            }
            (Owner::Backlog(p), Outcome::Violation | Outcome::Reset { .. }) => {
                let violation = outcome == Outcome::Violation;
                if let Some(l) = self.ports.listen_mut(p) {
                    l.backlog.retain(|s| s.conn.key != key);
                }
                self.streams.remove(&key);
                if violation {
                    self.send_rst(key.ring_port, key.peer, key.conid);
                }
                return;
            }
            (Owner::Backlog(_), Outcome::Established) => {}
        }
        if let Owner::Client(t) = owner {
            self.pump_client(t);
        }
    }

    pub(super) fn on_syn(&mut self, port: u32, src: Addr, conid: u32, window: u32) {
        let key = ConnKey {
            ring_port: port,
            peer: src,
            conid,
        };
        if self.streams.owner(&key).is_some() {
            return; // a duplicate
        }
        let backlog_max = self.cfg.backlog;
        let mut conn = Box::new(self.new_conn(key, Phase::Established));
        conn.credit = window;
        let Some(l) = self.ports.listen_mut(port) else {
            debug!(port, "SYN for a port nobody listens on: RST");
            self.send_rst(port, src, conid);
            return;
        };
        if (l.controls.is_empty() && l.acceptors.is_empty()) || l.backlog.len() >= backlog_max {
            debug!(port, "not listening or backlog full: RST");
            self.send_rst(port, src, conid);
            return;
        }
        let id = l.next_id;
        l.next_id += 1;
        let synack = wire::encode(
            conid,
            &Segment::SynAck {
                window: self.cfg.conn_window,
            },
        );
        let controls = l.controls.clone();
        match self.send_or_wait(port, src, PROTO_STREAM, &synack) {
            Ok(true) => {}
            // Sent when a client accepts it.
            Ok(false) => conn.outq.push_back(synack),
            Err(e) => {
                debug!("SYN from {src:?} cannot be answered: {e}");
                return;
            }
        }
        if let Some(l) = self.ports.listen_mut(port) {
            l.backlog.push_back(PendingSyn {
                id,
                conn,
                buf: VecDeque::new(),
            });
        }
        self.streams.insert(key, Owner::Backlog(port));
        let line = format!("INCOMING {id} {}", SockAddr::new(src.domain, src.port));
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
            if let Some(p) = self.ports.get_mut(port) {
                p.conns += 1;
            }
            self.streams.insert(key, Owner::Client(t));
            if let Some(c) = self.clients.get_mut(t) {
                let line = format!(
                    "OK {} {}",
                    SockAddr::new(key.peer.domain, key.peer.port),
                    ps.conn.id
                );
                c.state = ClientState::Stream(ps.conn);
                c.queue_line(&line);
                c.out_prefix = c.out.len();
                c.out.extend(ps.buf);
            }
            debug!(?key, "stream accepted");
            self.pump_client(t);
        }
    }

    pub(super) fn new_conn(&mut self, key: ConnKey, phase: Phase) -> Conn {
        let id = self.streams.next_stream_id();
        let ring_cap = ring::max_message_size(self.cfg.ring_len) as usize;
        Conn {
            key,
            id,
            phase,
            started: Instant::now(),
            credit: 0,
            outq: VecDeque::new(),
            grant: 0,
            held: 0,
            peer_fin: false,
            client_eof: false,
            write_shut: false,
            chunk: self
                .cfg
                .chunk
                .min(ring_cap.saturating_sub(wire::HEADER))
                .max(1),
        }
    }

    // ---- streams: the client side ----------------------------------------------------------

    pub(super) fn pump_stream(&mut self, t: usize) {
        let window = self.cfg.conn_window;
        let mut rbuf = Vec::new();
        loop {
            let Some(c) = self.clients.get_mut(t) else {
                return;
            };
            if !matches!(c.state, ClientState::Stream(_)) {
                return;
            }
            // 1. To the client.
            let flushed = c.flush();
            let ClientState::Stream(conn) = &mut c.state else {
                return;
            };
            match flushed {
                Ok(n) => {
                    conn.held = conn.held.saturating_sub(n);
                    conn.grant = conn.grant.saturating_add(n as u32);
                }
                Err(e) => {
                    debug!(key = ?conn.key, "client gone mid-stream: {e}");
                    self.abort_client(t, true, CloseReason::LocalAbort);
                    return;
                }
            }
            if conn.peer_fin && c.out.is_empty() && !conn.write_shut {
                conn.write_shut = true;
                let _ = c.stream.shutdown(std::net::Shutdown::Write);
            }
            // 2. Credit back to the peer (none once it finished sending: it needs none, and it
            // may have closed its ring already).
            if conn.phase == Phase::Established
                && !conn.peer_fin
                && conn.outq.is_empty()
                && conn.grant > 0
                && (conn.grant >= window / 4 || conn.held == 0)
            {
                let g = conn.grant;
                conn.grant = 0;
                conn.outq
                    .push_back(wire::encode(conn.key.conid, &Segment::Ack { credit: g }));
            }
            // 3. Queued messages to the peer.
            let (src, dst) = (conn.key.ring_port, conn.key.peer);
            let mut progressed = false;
            while let Some(m) = self.clients.get_mut(t).and_then(|c| match &mut c.state {
                ClientState::Stream(conn) => conn.outq.pop_front(),
                _ => None,
            }) {
                match self.send_or_wait(src, dst, PROTO_STREAM, &m) {
                    Ok(true) => progressed = true,
                    Ok(false) => {
                        if let Some(ClientState::Stream(conn)) =
                            self.clients.get_mut(t).map(|c| &mut c.state)
                        {
                            conn.outq.push_front(m);
                        }
                        self.tx.park(t);
                        return;
                    }
                    // A credit update is advice: the peer may have finished and closed while its
                    // FIN still waits in our ring. If it is really gone, the keepalive says so.
                    Err(e)
                        if self.clients.get(t).is_some_and(Client::finished_both_ways)
                            || matches!(wire::decode(&m), Ok((_, Segment::Ack { .. }))) =>
                    {
                        debug!("peer {dst:?}: dropping a message it no longer needs: {e}");
                    }
                    Err(e) => {
                        debug!("peer {dst:?} unreachable: {e}");
                        let reason = if e == HvError::Denied {
                            CloseReason::Denied
                        } else {
                            CloseReason::PeerGone
                        };
                        self.abort_client(t, false, reason);
                        return;
                    }
                }
            }
            let Some(c) = self.clients.get_mut(t) else {
                return;
            };
            let ClientState::Stream(conn) = &mut c.state else {
                return;
            };
            // 4. Done?
            if conn.client_eof && conn.peer_fin && c.out.is_empty() && conn.outq.is_empty() {
                if c.dead {
                    return;
                }
                debug!(key = ?conn.key, "stream closed");
                self.close_stream(t);
                return;
            }
            // 5. From the client, within credit.
            if conn.phase != Phase::Established || conn.client_eof || conn.credit == 0 {
                if progressed {
                    continue;
                }
                return;
            }
            let n = (conn.credit as usize).min(conn.chunk);
            rbuf.resize(wire::HEADER + n, 0);
            match c.stream.read(&mut rbuf[wire::HEADER..]) {
                Ok(0) => {
                    conn.client_eof = true;
                    conn.outq
                        .push_back(wire::encode(conn.key.conid, &Segment::Fin));
                }
                Ok(k) => {
                    conn.credit -= k as u32;
                    rbuf.truncate(wire::HEADER + k);
                    let hdr = wire::encode(conn.key.conid, &Segment::Data(&[]));
                    rbuf[..wire::HEADER].copy_from_slice(&hdr);
                    conn.outq.push_back(std::mem::take(&mut rbuf));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if progressed {
                        continue;
                    }
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    debug!("client read: {e}");
                    self.abort_client(t, true, CloseReason::LocalAbort);
                    return;
                }
            }
        }
    }

    /// Removes a stream client after an orderly close.
    pub(super) fn close_stream(&mut self, t: usize) {
        if let Some(c) = self.clients.get_mut(t) {
            c.dead = true;
            if let ClientState::Stream(conn) = &c.state {
                let (id, uid) = (conn.id, c.cred.uid);
                self.streams.remember_close(id, uid, CloseReason::Eof);
            }
        }
    }

    /// Ends a client at once. Streams send RST to the peer when `rst` (our side aborted) and
    /// remember `reason` for `CLOSED`; waiting connects answer `ERR` if nothing was queued yet.
    pub(super) fn abort_client(&mut self, t: usize, rst: bool, reason: CloseReason) {
        let Some(c) = self.clients.get_mut(t) else {
            return;
        };
        c.dead = true;
        let uid = c.cred.uid;
        if let ClientState::Stream(conn) = &mut c.state {
            let (key, id) = (conn.key, conn.id);
            conn.outq.clear();
            if rst {
                self.send_rst(key.ring_port, key.peer, key.conid);
            }
            self.streams.remember_close(id, uid, reason);
        }
    }

    /// The client holding open stream `id`, if `uid` may see it (its owner, or root).
    pub(super) fn open_stream_of(&self, uid: u32, id: u64) -> Option<usize> {
        self.clients.iter().find_map(|(&k, c)| match &c.state {
            ClientState::Stream(conn) if conn.id == id && may_see(uid, c.cred.uid) => Some(k),
            _ => None,
        })
    }

    /// `CLOSED ID`: how a stream of this user's ended (or that it is still open).
    pub(super) fn closed_query(&self, uid: u32, id: u64) -> Result<String, (&'static str, String)> {
        if let Some(k) = self.open_stream_of(uid, id) {
            let peer_fin = matches!(
                self.clients.get(k).map(|c| &c.state),
                Some(ClientState::Stream(conn)) if conn.peer_fin
            );
            return Ok(if peer_fin { "OK eof" } else { "OK open" }.to_string());
        }
        match self.streams.closed(id) {
            Some((owner, reason)) if may_see(uid, owner) => Ok(format!("OK {}", reason.describe())),
            _ => Err(("ENOENT", format!("no stream {id} of yours is known"))),
        }
    }

    // ---- clients ---------------------------------------------------------------------------

    pub(super) fn connect(&mut self, t: usize, addr: SockAddr) {
        if addr.port == 0 {
            return self.reply_err(t, "EINVAL", "port 0 is not a destination");
        }
        let ring_port = match self.ports.peer_ring(addr.domid) {
            Some(p) => p,
            None => match self.register_port(0, addr.domid, PortKind::Peer(addr.domid)) {
                Ok(p) => p,
                Err(e) => return self.reply_err(t, &errno_name(&e), &e.to_string()),
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
                let mut conn = self.new_conn(key, Phase::SynSent);
                if !sent {
                    conn.outq.push_back(syn);
                    self.tx.park(t);
                }
                self.ports.add_conn(ring_port, 1);
                self.streams.insert(key, Owner::Client(t));
                if let Some(c) = self.clients.get_mut(t) {
                    c.state = ClientState::Stream(Box::new(conn));
                }
            }
            Err(e) => {
                debug!("connect to {addr}: {e}");
                self.reply_err(t, &errno_name(&e), &e.to_string());
                self.release_port(ring_port, false);
            }
        }
    }

    /// Probes each peer daemon we have streams with, and times out unanswered connects.
    pub(super) fn keepalive(&mut self, now: Instant) {
        let mut peers: HashSet<(u32, Addr)> = HashSet::new();
        let mut expired = Vec::new();
        for (&t, c) in self.clients.iter() {
            if let ClientState::Stream(conn) = &c.state {
                if conn.phase == Phase::SynSent {
                    if now.duration_since(conn.started) > CONNECT_TIMEOUT {
                        expired.push(t);
                    }
                } else {
                    peers.insert((conn.key.ring_port, conn.key.peer));
                }
            }
        }
        for t in expired {
            if let Some(c) = self.clients.get_mut(t) {
                c.out.clear();
                c.out_prefix = 0;
                c.queue_line("ERR ETIMEDOUT the peer did not answer");
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
