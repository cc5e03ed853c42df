// SPDX-License-Identifier: MIT OR Apache-2.0
//! The local protocol's requests: reading a client's request line and starting what it asks
//! (`VERSION`, `STATUS`, `DGRAM`, `LISTEN`, `ACCEPT`, `CONNECT`, `CLOSED`, `RESET`, `ACL`).
//!
//! Owns nothing: it moves a client from its handshake into the state its request names, using
//! the port and stream tables' own operations.

use std::io;
use std::os::fd::AsRawFd;

use tracing::debug;
use v4v::HvError;
use v4v::abi::DOMID_ANY;
use v4v::client::proto::{Incoming, MAX_LINE, PROTOCOL_VERSION, Reply, Request, SockAddr, Via};

use super::Daemon;
use super::creds::hung_up;
use super::dgram::DgramClient;
use super::fdpass;
use super::ports::{ListenState, PortKind};
use super::session::ClientState;
use super::shm_stream::ShmPath;
use super::streams::CloseReason;
use crate::MAX_PRIVILEGED_PORT;

pub(super) fn errno_name(e: &HvError) -> String {
    e.name()
}

impl Daemon {
    /// What a failed hypervisor call means, for an `ERR` reason: limits name themselves and
    /// their value; the errno is left out (the reply carries it as its code).
    pub(super) fn hv_reason(&self, e: &HvError) -> String {
        match e {
            HvError::NoSpace => match self.hv.info() {
                Ok(i) => format!(
                    "the domain's ring limit is reached: {} of max_rings {} registered",
                    i.nr_rings, i.max_rings
                ),
                Err(_) => "the domain's ring limit (max_rings) is reached".into(),
            },
            e => {
                let text = e.to_string();
                let code = format!(" ({})", e.name());
                text.strip_suffix(&code).unwrap_or(&text).to_string()
            }
        }
    }
}

/// Descriptors a client may pass with its request line: a stream's two channels.
const MAX_PASSED: usize = 2;

impl Daemon {
    pub(super) fn pump_handshake(&mut self, t: usize) {
        let Some(c) = self.clients.get_mut(t) else {
            return;
        };
        let ClientState::Handshake(buf) = &mut c.state else {
            return;
        };
        // Read byte-wise up to the newline: nothing after it may be consumed, it is stream data.
        let mut b = [0u8; 1];
        let line = loop {
            if buf.len() >= MAX_LINE {
                c.queue_reply(&Reply::err(
                    "EINVAL",
                    format!("request line too long (at most {MAX_LINE} bytes)"),
                ));
                c.state = ClientState::Closing;
                return self.pump_client(t);
            }
            // recvmsg: a stream client's channels come with the line (two at most are kept).
            let room = MAX_PASSED - c.passed.len();
            // SAFETY: `b` is writable for its one byte.
            let (r, fds) =
                unsafe { fdpass::recv_with_fds(c.stream.as_raw_fd(), b.as_mut_ptr(), 1, room) };
            c.passed.extend(fds);
            match r {
                0 => {
                    c.dead = true;
                    return;
                }
                1 if b[0] == b'\n' => break std::mem::take(buf),
                1 => buf.push(b[0]),
                _ => match io::Error::last_os_error().kind() {
                    io::ErrorKind::WouldBlock => return,
                    io::ErrorKind::Interrupted => {}
                    _ => {
                        c.dead = true;
                        return;
                    }
                },
            }
        };
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches('\r');
        let req = match Request::parse(text) {
            Ok(r) => r,
            Err(e) => {
                debug!(token = t, "bad request: {e}");
                self.reply_err(t, "EINVAL", &e.to_string());
                return;
            }
        };
        debug!(token = t, %req, "request");
        self.start(t, req);
        self.pump_client(t);
    }

    /// Sets up a stream client's shared-memory channels when its request asks for them (else
    /// drops any descriptors it passed). `false`: refused, and answered.
    fn take_channels(&mut self, t: usize, via: Via) -> bool {
        let Some(c) = self.clients.get_mut(t) else {
            return false;
        };
        let fds = std::mem::take(&mut c.passed);
        let Via::Shm(cap) = via else {
            return true;
        };
        match ShmPath::take(fds, cap) {
            Ok(shm) => {
                // Counted in its user's budget: pages the client never touched are allocated
                // (and charged) when the daemon first reads or writes them.
                let uid = c.cred.uid;
                let cost = shm.mapped_bytes();
                if let Err(why) = self.budgets.reserve(uid, cost) {
                    user_warn!(self, uid, uid, "stream channels refused: {why}");
                    self.reply_err(t, "ENOBUFS", &format!("stream channels refused: {why}"));
                    return false;
                }
                if let Some(c) = self.clients.get_mut(t) {
                    c.reserved += cost;
                    c.shm = Some(shm);
                } else {
                    self.budgets.release(uid, cost);
                }
                true
            }
            Err(why) => {
                let uid = c.cred.uid;
                user_warn!(self, uid, uid, "stream channels refused: {why}");
                self.reply_err(t, "EINVAL", &format!("stream channels refused: {why}"));
                false
            }
        }
    }

    pub(super) fn reply_err(&mut self, t: usize, code: &str, reason: &str) {
        if let Some(c) = self.clients.get_mut(t) {
            c.out.clear();
            c.out_prefix = 0;
            c.state = ClientState::Closing;
            c.queue_reply(&Reply::err(code, reason));
        }
        self.pump_client(t);
    }

    pub(super) fn set_state(&mut self, t: usize, state: ClientState, reply: &Reply) {
        if let Some(c) = self.clients.get_mut(t) {
            c.state = state;
            c.queue_reply(reply);
        }
    }

    pub(super) fn start(&mut self, t: usize, req: Request) {
        if !matches!(req, Request::Connect(..) | Request::Accept(..))
            && let Some(c) = self.clients.get_mut(t)
        {
            c.passed.clear();
        }
        let uid = self.clients.get(t).map_or(u32::MAX, |c| c.cred.uid);
        let privileged = self.clients.get(t).is_some_and(|c| c.privileged);
        if let Request::Dgram(port, _) | Request::Listen(port) | Request::Accept(port, ..) = req
            && (1..=MAX_PRIVILEGED_PORT).contains(&port)
            && !privileged
        {
            user_warn!(self, uid, uid, port, "privileged port refused");
            let who = match self.cfg.privileged_group {
                Some(g) => format!("root or members of group {g}"),
                None => "root".to_string(),
            };
            return self.reply_err(
                t,
                "EPERM",
                &format!(
                    "port {port} is privileged (1-{MAX_PRIVILEGED_PORT}): only {who} may bind, \
                     listen on or send from it (uid {uid} may not)"
                ),
            );
        }
        match req {
            Request::Version => {
                self.set_state(t, ClientState::Closing, &Reply::Version(PROTOCOL_VERSION));
            }
            Request::Status => {
                // `OK BYTES`, then the JSON: no line-length limit applies to it.
                let json = self.status(uid).to_json();
                let len = u32::try_from(json.len()).unwrap_or(u32::MAX);
                self.set_state(t, ClientState::Closing, &Reply::Status { len });
                if let Some(c) = self.clients.get_mut(t) {
                    c.out.extend(json);
                }
            }
            Request::Dgram(port, partner) => {
                self.reclaim_port(port);
                if port != 0 && self.ports.contains(port) {
                    return self.reply_err(t, "EADDRINUSE", "port already bound");
                }
                if let Err((code, reason)) = self.ring_quota(uid) {
                    user_warn!(self, uid, uid, "{reason}");
                    return self.reply_err(t, &code, &reason);
                }
                // The client's output buffer, held until it goes.
                let cost = self.cfg.dgram_buffer;
                if let Err(why) = self.budgets.reserve(uid, cost) {
                    user_warn!(self, uid, uid, "datagram port refused: {why}");
                    return self.reply_err(t, "ENOBUFS", &why);
                }
                if let Some(c) = self.clients.get_mut(t) {
                    c.reserved += cost;
                } else {
                    self.budgets.release(uid, cost);
                }
                let partner = partner.unwrap_or(DOMID_ANY);
                match self.register_port(port, partner, PortKind::Dgram(t), Some(uid)) {
                    Ok(p) => {
                        let st = ClientState::Dgram(DgramClient::new(p));
                        self.set_state(t, st, &Reply::Port(p));
                    }
                    Err(e) => self.reply_err(t, &errno_name(&e), &self.hv_reason(&e)),
                }
            }
            Request::Listen(port) => match self.listen_port(port, uid) {
                Ok(p) => {
                    if let Some(l) = self.ports.listen_mut(p) {
                        l.controls.push(t);
                        let pending: Vec<Incoming> = l
                            .backlog
                            .iter()
                            .map(|s| Incoming {
                                id: s.id,
                                peer: SockAddr::new(s.conn.key.peer.domain, s.conn.key.peer.port),
                            })
                            .collect();
                        self.set_state(t, ClientState::Listen(p), &Reply::Port(p));
                        if let Some(c) = self.clients.get_mut(t) {
                            for i in pending {
                                c.queue_line(&i.to_string());
                            }
                        }
                    }
                }
                Err((code, reason)) => self.reply_err(t, &code, &reason),
            },
            Request::Accept(port, id, via) => {
                if port == 0 {
                    return self.reply_err(t, "EINVAL", "ACCEPT needs a port");
                }
                if !self.take_channels(t, via) {
                    return;
                }
                match self.listen_port(port, uid) {
                    Ok(p) => {
                        if let Some(l) = self.ports.listen_mut(p) {
                            if let Some(id) = id
                                && !l.backlog.iter().any(|s| s.id == id)
                            {
                                self.reply_err(t, "ENOENT", "no such incoming connection");
                                self.release_port(p, false);
                                return;
                            }
                            l.acceptors.push_back(t);
                        }
                        if let Some(c) = self.clients.get_mut(t) {
                            c.state = ClientState::Accept(p, id);
                        }
                        self.match_acceptors(p);
                    }
                    Err((code, reason)) => self.reply_err(t, &code, &reason),
                }
            }
            Request::Connect(addr, via) => {
                if self.take_channels(t, via) {
                    self.connect(t, addr);
                }
            }
            Request::Closed(id) => match self.closed_query(uid, id) {
                Ok(reply) => self.set_state(t, ClientState::Closing, &reply),
                Err((code, reason)) => self.reply_err(t, code, &reason),
            },
            Request::Reset(id) => match self.open_stream_of(uid, id) {
                Some(k) => {
                    debug!(stream = id, "reset on request");
                    self.abort_client(k, true, CloseReason::LocalAbort);
                    self.set_state(t, ClientState::Closing, &Reply::Done);
                }
                None => self.reply_err(t, "ENOENT", &format!("no open stream {id} of yours")),
            },
            Request::Acl(req) => self.acl_request(t, req),
            Request::Resolve(name) => self.resolve_request(t, &name),
            Request::NameOf(domid) => self.name_of_request(t, domid),
        }
    }

    /// A port whose owner closed its connection is free, even if the close is still queued
    /// among the loop's events: reap that owner now, so that close-then-bind always works.
    pub(super) fn reclaim_port(&mut self, port: u32) {
        let owner = match self.ports.get(port).map(|p| &p.kind) {
            Some(PortKind::Dgram(o)) => *o,
            _ => return,
        };
        if let Some(c) = self.clients.get_mut(owner)
            && hung_up(&c.stream)
        {
            c.dead = true;
            self.reap();
        }
    }

    pub(super) fn listen_port(&mut self, port: u32, uid: u32) -> Result<u32, (String, String)> {
        self.reclaim_port(port);
        if port != 0
            && let Some(p) = self.ports.get(port)
        {
            return match &p.kind {
                PortKind::Listen(l) if l.uid == uid => Ok(port),
                PortKind::Listen(_) => Err((
                    "EADDRINUSE".into(),
                    format!("port {port} is listened on by another user"),
                )),
                _ => Err(("EADDRINUSE".into(), "port already bound".into())),
            };
        }
        if let Err((code, reason)) = self.ring_quota(uid) {
            user_warn!(self, uid, uid, "{reason}");
            return Err((code, reason));
        }
        let state = ListenState {
            uid,
            ..ListenState::default()
        };
        self.register_port(port, DOMID_ANY, PortKind::Listen(state), Some(uid))
            .map_err(|e| (errno_name(&e), self.hv_reason(&e)))
    }
}
