// SPDX-License-Identifier: MIT OR Apache-2.0
//! Local client connections ("sessions"): each one's socket, credentials, protocol state and
//! bounded output buffer, and the table of them with its per-user counts.
//!
//! Owns the Unix sockets of clients. It reads and writes them only through [`Client::flush`]
//! and the handlers' reads; it never sends to the hypervisor and never touches a ring.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{self, IoSlice, Write};
use std::time::Instant;

use mio::net::UnixStream;
use mio::{Interest, Registry, Token};
use tracing::{debug, warn};

use v4v::client::proto::Reply;

use super::Daemon;
use super::acl;
use super::conn::Conn;
use super::creds::{Cred, peer_cred, peer_groups};
use super::dgram::DgramClient;
use super::recv_chan::{FlushError, RecvChan};
use super::shm_stream::ShmPath;
use super::warnings::UNKNOWN_UID;

/// Where a client is in the local protocol.
pub(super) enum ClientState {
    /// Reading the request line.
    Handshake(Vec<u8>),
    /// Flushing a last reply, then closing.
    Closing,
    Dgram(DgramClient),
    Listen(u32),
    Accept(u32, Option<u64>),
    Stream(Box<Conn>),
    /// Sending the rule lines of `ACL LOAD`.
    AclLoad(Box<acl::AclLoad>),
}

/// One local client connection.
pub(super) struct Client {
    pub stream: UnixStream,
    pub cred: Cred,
    /// Root, or in the configured ACL group: may change the ACL table.
    pub acl_admin: bool,
    /// Root, or in the configured privileged group: may use ports 1-1023.
    pub privileged: bool,
    pub state: ClientState,
    /// Bytes for the client; bounded by the state's rules.
    pub out: VecDeque<u8>,
    /// Leading bytes of `out` that are not stream data (reply lines).
    pub out_prefix: usize,
    pub dead: bool,
    /// When the client connected (its request line must come within the handshake timeout).
    pub since: Instant,
    /// Bytes reserved in its user's budget for this client's buffers.
    pub reserved: usize,
    /// Not read while its user's budget is used up (retried on the tick).
    pub paced: bool,
    /// In [`Clients`]' list of clients touched since the last look (see [`Clients::get_mut`]).
    touched: bool,
    /// Registered for writable events too: only while `out` holds bytes the socket did not
    /// take (see [`Clients::take_dead`]).
    write_armed: bool,
    /// Descriptors that came with the request line (at most two), for `SHM`.
    pub passed: Vec<std::os::fd::OwnedFd>,
    /// A stream through shared memory: its channels (then `out` carries only reply lines and
    /// doorbell bytes).
    pub shm: Option<Box<ShmPath>>,
    /// A datagram client's receive channel: once active, `out` goes there, not to the socket.
    pub rx: Option<Box<RecvChan>>,
}

impl Client {
    /// A client that has not sent its request line yet.
    pub fn new(stream: UnixStream, cred: Cred, acl_admin: bool, privileged: bool) -> Self {
        Client {
            stream,
            cred,
            acl_admin,
            privileged,
            state: ClientState::Handshake(Vec::new()),
            out: VecDeque::new(),
            out_prefix: 0,
            dead: false,
            since: Instant::now(),
            reserved: 0,
            paced: false,
            touched: false,
            write_armed: false,
            passed: Vec::new(),
            shm: None,
            rx: None,
        }
    }

    /// Queues a reply line (counted as non-data when it goes before stream data).
    pub fn queue_line(&mut self, line: &str) {
        self.out.extend(line.as_bytes());
        self.out.push_back(b'\n');
        if matches!(self.state, ClientState::Stream(_)) || self.out_prefix > 0 {
            self.out_prefix += line.len() + 1;
        }
    }

    /// Queues a reply of the local protocol (its one encoding is `proto::Reply`'s).
    pub fn queue_reply(&mut self, r: &Reply) {
        self.queue_line(&r.to_string());
    }

    /// Writes as much of `out` as the socket (or the receive channel) takes; returns stream
    /// data bytes written. A receive channel the client broke is `InvalidData`.
    pub fn flush(&mut self) -> io::Result<usize> {
        if let Some(rx) = self.rx.as_mut() {
            return match rx.flush(&mut self.stream, &mut self.out) {
                Ok(()) => Ok(0),
                Err(FlushError::Socket(e)) => Err(e),
                Err(FlushError::Chan(e)) => Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("its receive channel: {e}"),
                )),
            };
        }
        let mut data = 0;
        while !self.out.is_empty() {
            let (a, b) = self.out.as_slices();
            let r = self
                .stream
                .write_vectored(&[IoSlice::new(a), IoSlice::new(b)]);
            match r {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.out.drain(..n);
                    let p = n.min(self.out_prefix);
                    self.out_prefix -= p;
                    data += n - p;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(data)
    }

    /// Whether a datagram client's output reached `limit` bytes (a receive channel's pages
    /// count: they come out of the same allotment).
    pub fn out_full(&self, limit: usize) -> bool {
        self.out.len() + self.rx.as_ref().map_or(0, |rx| rx.mapped_bytes()) >= limit
    }

    /// Whether output waits for the socket to take it (with a receive channel: only the bytes
    /// from before it and a doorbell; a full channel waits for the client's RING instead).
    pub fn wants_writable(&self) -> bool {
        match &self.rx {
            Some(rx) => rx.wants_socket(),
            None => !self.out.is_empty(),
        }
    }

    /// Whether this is a stream with FIN in both directions (our client's end was sent or
    /// queued, the peer's received): the peer owes nothing and may already be gone.
    pub fn finished_both_ways(&self) -> bool {
        matches!(&self.state, ClientState::Stream(conn) if conn.finished_both_ways())
    }
}

/// Whether the user `asker` may see or act on what user `owner` holds: its own, or root.
pub(super) fn may_see(asker: u32, owner: u32) -> bool {
    asker == 0 || asker == owner
}

/// Connections the daemon keeps for root: other users together hold at most
/// `max_clients - ROOT_RESERVE`, so root can always connect (to ask STATUS, to fix things).
pub(super) const ROOT_RESERVE: usize = 32;

/// Every client, by mio token, and how many each user holds.
///
/// Bookkeeping costs what changed, not how many clients there are: a client can only be marked
/// dead or paced through [`Clients::get_mut`], which lists it as touched, so the loop looks at
/// the touched clients only ([`Clients::take_dead`]); request-line deadlines are a queue in
/// arrival order (every client starts in the handshake, and the timeout is one for all).
pub(super) struct Clients {
    map: HashMap<usize, Client>,
    next_token: usize,
    /// Clients connected per uid.
    per_uid: HashMap<u32, usize>,
    /// Clients that may have changed since the last [`Clients::take_dead`] (each listed once).
    touched: Vec<usize>,
    /// Clients found paced, for the tick's retry.
    paced: HashSet<usize>,
    /// Every client by when it connected, oldest first (tokens are never reused).
    arrivals: VecDeque<(Instant, usize)>,
}

impl Clients {
    pub fn new(first_token: usize) -> Self {
        Clients {
            map: HashMap::new(),
            next_token: first_token,
            per_uid: HashMap::new(),
            touched: Vec::new(),
            paced: HashSet::new(),
            arrivals: VecDeque::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn get(&self, t: usize) -> Option<&Client> {
        self.map.get(&t)
    }

    /// The client, listed as touched: whatever the caller changes (`dead`, `paced`) is seen
    /// by the next [`Clients::take_dead`].
    pub fn get_mut(&mut self, t: usize) -> Option<&mut Client> {
        let c = self.map.get_mut(&t)?;
        if !c.touched {
            c.touched = true;
            self.touched.push(t);
        }
        Some(c)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&usize, &Client)> {
        self.map.iter()
    }

    /// Every token (a copy, for loops that change the table).
    pub fn tokens(&self) -> Vec<usize> {
        self.map.keys().copied().collect()
    }

    /// Tokens of the clients marked dead since the last call (only touched clients are
    /// looked at); paced ones are noted for [`Clients::take_paced`].
    ///
    /// The others are registered for writable events exactly while output waits for room.
    /// A client is registered readable only otherwise: with writable interest always on, the
    /// (edge-triggered) poll woke the loop every time a client read what the daemon wrote,
    /// for nothing (two wake-ups per datagram round trip). Every change to `out` goes through
    /// [`Clients::get_mut`], so every client whose output is left unwritten is looked at here,
    /// before the loop polls again; arming reports a socket that has room already at once.
    pub fn take_dead(&mut self, registry: &Registry) -> Vec<usize> {
        let mut dead = Vec::new();
        for t in std::mem::take(&mut self.touched) {
            let Some(c) = self.map.get_mut(&t) else {
                continue;
            };
            c.touched = false;
            if c.paced {
                self.paced.insert(t);
            }
            if c.dead {
                dead.push(t);
                continue;
            }
            let want = c.wants_writable();
            if want != c.write_armed {
                let interest = if want {
                    Interest::READABLE | Interest::WRITABLE
                } else {
                    Interest::READABLE
                };
                match registry.reregister(&mut c.stream, Token(t), interest) {
                    Ok(()) => c.write_armed = want,
                    Err(e) => {
                        warn!(token = t, "client interest: {e}; closing it");
                        c.dead = true;
                        dead.push(t);
                    }
                }
            }
        }
        dead
    }

    /// The clients noted paced since the last call.
    pub fn take_paced(&mut self) -> Vec<usize> {
        self.paced.drain().collect()
    }

    /// Clients connected at or before `before` that are still here, oldest first, taken out of
    /// the arrival queue (the caller checks whether each is still in its handshake).
    pub fn arrived_before(&mut self, before: Instant) -> Vec<usize> {
        let mut old = Vec::new();
        while let Some(&(since, t)) = self.arrivals.front() {
            if since > before {
                break;
            }
            self.arrivals.pop_front();
            if self.map.contains_key(&t) {
                old.push(t);
            }
        }
        old
    }

    /// How many clients `uid` holds.
    pub fn held_by(&self, uid: u32) -> usize {
        self.per_uid.get(&uid).copied().unwrap_or(0)
    }

    /// The token for the next client.
    pub fn next_token(&mut self) -> usize {
        let t = self.next_token;
        self.next_token += 1;
        t
    }

    pub fn insert(&mut self, t: usize, mut c: Client) {
        *self.per_uid.entry(c.cred.uid).or_insert(0) += 1;
        self.arrivals.push_back((c.since, t));
        c.touched = true;
        self.touched.push(t);
        self.map.insert(t, c);
    }

    pub fn remove(&mut self, t: usize) -> Option<Client> {
        let c = self.map.remove(&t)?;
        self.paced.remove(&t);
        if let Some(n) = self.per_uid.get_mut(&c.cred.uid) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_uid.remove(&c.cred.uid);
            }
        }
        Some(c)
    }
}

impl Daemon {
    /// Takes every waiting client, refusing those past the global or per-user limit.
    pub(super) fn accept_clients(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((mut s, _)) => {
                    if self.clients.len() >= self.cfg.max_clients {
                        user_warn!(self, UNKNOWN_UID, "too many clients; refusing one");
                        let r = Reply::err(
                            "EMFILE",
                            format!(
                                "too many clients: the daemon serves at most {} (max_clients)",
                                self.cfg.max_clients
                            ),
                        );
                        let _ = s.write(format!("{r}\n").as_bytes());
                        continue;
                    }
                    let cred = match peer_cred(&s) {
                        Ok(c) => c,
                        Err(e) => {
                            warn!("SO_PEERCRED: {e}");
                            continue;
                        }
                    };
                    // Users other than root cannot take the connections kept for root.
                    let others = self.clients.len() - self.clients.held_by(0);
                    let for_others = self.cfg.max_clients.saturating_sub(ROOT_RESERVE);
                    if cred.uid != 0 && others >= for_others {
                        user_warn!(
                            self,
                            cred.uid,
                            uid = cred.uid,
                            "connections for users other than root used up; refusing one"
                        );
                        let r = Reply::err(
                            "EMFILE",
                            format!(
                                "users other than root hold {others} connections, the most they \
                                 may (the last {ROOT_RESERVE} are kept for root)"
                            ),
                        );
                        let _ = s.write(format!("{r}\n").as_bytes());
                        continue;
                    }
                    // One user cannot take every connection (and descriptor) the daemon has.
                    let held = self.clients.held_by(cred.uid);
                    if cred.uid != 0 && held >= self.cfg.max_clients_per_user {
                        user_warn!(
                            self,
                            cred.uid,
                            uid = cred.uid,
                            held,
                            "per-user client limit reached; refusing one"
                        );
                        let r = Reply::err(
                            "EMFILE",
                            format!(
                                "uid {} holds {held} connections, the most one user may \
                                 (max_clients_per_user {})",
                                cred.uid, self.cfg.max_clients_per_user
                            ),
                        );
                        let _ = s.write(format!("{r}\n").as_bytes());
                        continue;
                    }
                    let groups = std::cell::OnceCell::new();
                    let member = |g: u32| {
                        cred.gid == g
                            || groups
                                .get_or_init(|| peer_groups(&s).unwrap_or_default())
                                .contains(&g)
                    };
                    let acl_admin = cred.uid == 0 || self.cfg.acl_group.is_some_and(member);
                    let privileged = cred.uid == 0 || self.cfg.privileged_group.is_some_and(member);
                    let t = self.clients.next_token();
                    if let Err(e) =
                        self.poll
                            .registry()
                            .register(&mut s, Token(t), Interest::READABLE)
                    {
                        warn!("register client: {e}");
                        continue;
                    }
                    debug!(
                        token = t,
                        pid = cred.pid,
                        uid = cred.uid,
                        "client connected"
                    );
                    self.clients
                        .insert(t, Client::new(s, cred, acl_admin, privileged));
                    self.pump_client(t);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    warn!("accept: {e}");
                    return;
                }
            }
        }
    }
}

impl Daemon {
    /// Closes the clients that did not send a complete request line in time: an idle
    /// connection holds a descriptor and a slot of its user's quota.
    pub(super) fn expire_handshakes(&mut self, now: Instant) {
        let limit = self.cfg.handshake_timeout;
        let Some(before) = now.checked_sub(limit) else {
            return;
        };
        // Clients past their handshake are dropped from the queue as they come up.
        for t in self.clients.arrived_before(before) {
            if let Some(c) = self.clients.get_mut(t)
                && matches!(c.state, ClientState::Handshake(_))
            {
                debug!(
                    token = t,
                    uid = c.cred.uid,
                    "no request line in time; closing"
                );
                c.queue_reply(&Reply::err(
                    "ETIMEDOUT",
                    format!("no complete request line within {} s", limit.as_secs()),
                ));
                c.state = ClientState::Closing;
                let _ = c.flush();
                c.dead = true;
            }
        }
    }
}
