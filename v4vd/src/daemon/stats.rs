// SPDX-License-Identifier: MIT OR Apache-2.0
//! The daemon's counters and the one place that builds `STATUS` (a typed [`Status`], sent as
//! JSON) from the daemon's tables, with what each asker may see.
//!
//! Owns [`Stats`] (message and byte counters, ACL refusals per address pair, bounded). Reads
//! the other tables only to report them; it changes nothing but its own counters.

use std::collections::HashMap;

use v4v::abi::Addr;
use v4v::client::proto::{
    Owner, PROTOCOL_VERSION, PortKind as StatusKind, PortStatus, Refusal, SockAddr, Status,
    StreamStatus, UserBuffers,
};

use super::Daemon;
use super::conn::{Conn, State};
use super::creds::Cred;
use super::ports::PortKind;
use super::session::{ClientState, may_see};

/// Source/destination pairs whose ACL refusals are counted separately.
const MAX_REFUSAL_PAIRS: usize = 256;

/// Counters reported by `STATUS`.
#[derive(Debug, Default)]
pub(super) struct Stats {
    pub msgs_in: u64,
    pub bytes_in: u64,
    pub msgs_out: u64,
    pub bytes_out: u64,
    pub corrupt: u64,
    pub dropped: u64,
    /// Sends refused by the hypervisor's ACL (`EACCES`).
    pub acl_refused: u64,
    /// Refusals per (source, destination); at most [`MAX_REFUSAL_PAIRS`] pairs.
    refusals: HashMap<(Addr, Addr), u64>,
}

impl Stats {
    /// Counts a send the hypervisor's ACL refused, per source and destination (bounded: pairs
    /// beyond [`MAX_REFUSAL_PAIRS`] are only in the total).
    pub fn count_refusal(&mut self, src: Addr, dst: Addr) {
        self.acl_refused += 1;
        let n = self.refusals.len();
        match self.refusals.get_mut(&(src, dst)) {
            Some(c) => *c += 1,
            None if n < MAX_REFUSAL_PAIRS => {
                self.refusals.insert((src, dst), 1);
            }
            None => {}
        }
    }
}

/// A stream's payload bytes from the peer (`bytes_in`) and to it (`bytes_out`), as `STATUS`
/// shows them to root and the owner. Statistics, not protocol state: any two compare equal and
/// hash alike, so the state machine's exhaustive exploration does not tell states apart by them.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct ByteCounts {
    pub bytes_in: u64,
    pub bytes_out: u64,
}

impl PartialEq for ByteCounts {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for ByteCounts {}

impl std::hash::Hash for ByteCounts {
    fn hash<H: std::hash::Hasher>(&self, _: &mut H) {}
}

impl Daemon {
    /// The daemon's state as user `asker` may see it: like `ss`, every port, stream and count
    /// for everyone; owners (uid, pid) and per-stream byte counters only for root and the
    /// owner's uid.
    pub(super) fn status(&self, asker: u32) -> Status {
        let owner_of = |cred: &Cred| {
            may_see(asker, cred.uid).then(|| Owner {
                uid: cred.uid,
                pid: u32::try_from(cred.pid).unwrap_or(0),
            })
        };
        let cred_of = |t: usize| self.clients.get(t).map(|c| c.cred);
        let mut ports: Vec<PortStatus> = self
            .ports
            .iter()
            .map(|(&port, p)| {
                let (kind, peer_domain, cred) = match &p.kind {
                    PortKind::Dgram(t) => (StatusKind::Dgram, None, cred_of(*t)),
                    PortKind::Listen(l) => {
                        // The listening user, with the pid of one of its clients there.
                        let pid = l
                            .controls
                            .iter()
                            .chain(l.acceptors.iter())
                            .find_map(|&t| cred_of(t))
                            .map_or(0, |c| c.pid);
                        let cred = Cred {
                            pid,
                            uid: l.uid,
                            gid: 0,
                        };
                        (StatusKind::Listen, None, Some(cred))
                    }
                    PortKind::Peer(d) => (StatusKind::Peer, Some(*d), None),
                };
                PortStatus {
                    port,
                    kind,
                    peer_domain,
                    owner: cred.as_ref().and_then(owner_of),
                }
            })
            .collect();
        ports.sort_by_key(|p| p.port);
        let stream = |conn: &Conn, cred: Option<Cred>| {
            let visible = cred.is_some_and(|c| may_see(asker, c.uid));
            StreamStatus {
                id: conn.id,
                local_port: conn.key.ring_port,
                peer: SockAddr::new(conn.key.peer.domain, conn.key.peer.port),
                state: match conn.state() {
                    State::Connecting => "connecting",
                    State::Established => "established",
                    State::FinSent => "half-closed by us",
                    State::FinReceived => "half-closed by the peer",
                    State::Closing => "closing",
                    State::TimeWait => "time-wait",
                }
                .to_string(),
                owner: cred.as_ref().and_then(owner_of),
                bytes_in: visible.then_some(conn.counts.bytes_in),
                bytes_out: visible.then_some(conn.counts.bytes_out),
            }
        };
        let mut streams: Vec<StreamStatus> = self
            .clients
            .iter()
            .filter_map(|(_, c)| match &c.state {
                ClientState::Stream(conn) => Some(stream(conn, Some(c.cred))),
                _ => None,
            })
            .collect();
        for (_, p) in self.ports.iter() {
            if let PortKind::Listen(l) = &p.kind {
                let cred = Cred {
                    pid: 0,
                    uid: l.uid,
                    gid: 0,
                };
                streams.extend(l.backlog.iter().map(|s| {
                    let mut st = stream(&s.conn, Some(cred));
                    st.state = "not accepted yet".into();
                    // The id the listener's `ACCEPT PORT ID` takes.
                    st.id = s.id;
                    st
                }));
            }
        }
        streams.sort_by_key(|s| (s.local_port, s.id));
        let s = &self.stats;
        let mut acl_refused_by: Vec<Refusal> = s
            .refusals
            .iter()
            .map(|((src, dst), &count)| Refusal {
                src: SockAddr::new(src.domain, src.port),
                dst: SockAddr::new(dst.domain, dst.port),
                count,
            })
            .collect();
        acl_refused_by.sort_by_key(|r| (r.src, r.dst));
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        // Per-user buffers: root sees every user with clients, anyone else its own.
        let mut uids: Vec<u32> = if asker == 0 {
            self.clients.iter().map(|(_, c)| c.cred.uid).collect()
        } else {
            vec![asker]
        };
        uids.sort_unstable();
        uids.dedup();
        let buffers = uids
            .into_iter()
            .map(|uid| UserBuffers {
                uid,
                bytes: self.budgets.used(uid) as u64,
            })
            .filter(|b| b.bytes > 0)
            .collect();
        Status {
            version: PROTOCOL_VERSION,
            domid: self.domid,
            rings: count(self.ports.len()),
            clients: count(self.clients.len()),
            ports,
            streams,
            msgs_in: s.msgs_in,
            bytes_in: s.bytes_in,
            msgs_out: s.msgs_out,
            bytes_out: s.bytes_out,
            corrupt: s.corrupt,
            dropped: s.dropped,
            acl_refused: s.acl_refused,
            acl_refused_by,
            buffered: self.budgets.total() as u64,
            max_buffer_per_user: self.cfg.max_buffer_per_user as u64,
            buffers,
        }
    }
}

#[cfg(test)]
mod tests {
    use v4v::client::proto::{Reply, Request, StreamEnd};

    use super::super::streams::CloseReason;

    /// Every way a stream ends reaches the client as the `CLOSED` answer it stands for.
    #[test]
    fn close_reasons_are_typed_closed_replies() {
        use CloseReason::*;
        for r in [
            Eof, PeerReset, PeerGone, Protocol, Denied, TimedOut, Stopping, LocalAbort,
        ] {
            let reply = Reply::Closed(r.end());
            assert_eq!(
                Reply::parse(&Request::Closed(1), &reply.to_string()),
                Ok(reply.clone()),
                "{r:?}"
            );
            match (r, r.end()) {
                (Eof, StreamEnd::Eof) => {}
                (_, StreamEnd::Reset { code, reason }) => {
                    assert!(code.starts_with('E') && !reason.is_empty(), "{r:?}")
                }
                (r, e) => panic!("{r:?} -> {e:?}"),
            }
        }
    }
}
