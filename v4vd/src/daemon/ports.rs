// SPDX-License-Identifier: MIT OR Apache-2.0
//! The port table: every ring this daemon registered, what each is for, and who uses it.
//!
//! Owns each ring's memory and reader ([`Port`]), the listening ports' backlogs, and the map of
//! peer domains to the reply ring shared by the streams this domain opens to them. It registers
//! and unregisters rings; it never sends, and it never touches a client's socket.

use std::collections::{HashMap, VecDeque};

use tracing::{debug, warn};
use v4v::abi::{Addr, DomId, RingId};
use v4v::ring::{self, RingReader};
use v4v::{HvError, Hypervisor};

use super::Daemon;
use super::conn::Conn;

/// First ephemeral port.
const EPHEMERAL_BASE: u32 = 0x8000_0000;

/// What a registered ring is for.
pub(super) enum PortKind {
    /// A bound datagram port and the client that owns it.
    Dgram(usize),
    /// A listening stream port.
    Listen(ListenState),
    /// The connecting side's reply ring for streams to one peer domain.
    Peer(DomId),
}

#[derive(Default)]
pub(super) struct ListenState {
    /// `LISTEN` clients: told of each incoming connection.
    pub controls: Vec<usize>,
    /// `ACCEPT` clients waiting for a connection.
    pub acceptors: VecDeque<usize>,
    /// Connection requests not accepted yet.
    pub backlog: VecDeque<PendingSyn>,
    pub next_id: u64,
    /// The user who listens: only clients of the same uid may listen or accept on the port too
    /// (nobody takes another user's connections).
    pub uid: u32,
}

impl ListenState {
    /// Whether no client listens or accepts here any more.
    pub fn abandoned(&self) -> bool {
        self.controls.is_empty() && self.acceptors.is_empty()
    }
}

/// A connection the daemon accepted on the V4V side (SYN|ACK sent) that no client has taken
/// yet. Data that arrives meanwhile waits in `buf`, bounded by the window we granted.
pub(super) struct PendingSyn {
    pub id: u64,
    pub conn: Box<Conn>,
    pub buf: VecDeque<u8>,
    /// Bytes reserved in the listener's budget (passed to the client that accepts it).
    pub reserved: usize,
}

/// One registered ring.
pub(super) struct Port {
    pub reader: RingReader,
    pub kind: PortKind,
    /// Stream connections using this ring.
    pub conns: usize,
    /// The user charged for the ring (a datagram or listening port's); `None`: the daemon's
    /// own (a peer reply ring, shared by every user's streams).
    pub uid: Option<u32>,
    /// The largest payload the ring took so far (how full it must get before a sender of such
    /// a message could be waiting).
    pub largest: u64,
}

impl Port {
    /// Whether nothing uses the ring any more.
    fn unused(&self) -> bool {
        self.conns == 0
            && match &self.kind {
                PortKind::Dgram(_) | PortKind::Peer(_) => true,
                PortKind::Listen(l) => l.abandoned(),
            }
    }
}

/// Every registered ring, by port.
pub(super) struct PortTable {
    ports: HashMap<u32, Port>,
    /// The reply ring of the streams we open to each peer domain.
    peer_ring: HashMap<DomId, u32>,
    next_ephemeral: u32,
}

impl PortTable {
    pub fn new() -> Self {
        PortTable {
            ports: HashMap::new(),
            peer_ring: HashMap::new(),
            next_ephemeral: EPHEMERAL_BASE,
        }
    }

    pub fn len(&self) -> usize {
        self.ports.len()
    }

    pub fn contains(&self, port: u32) -> bool {
        self.ports.contains_key(&port)
    }

    pub fn get(&self, port: u32) -> Option<&Port> {
        self.ports.get(&port)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&u32, &Port)> {
        self.ports.iter()
    }

    /// The registered ports (a copy, for loops that change the table).
    pub fn ports(&self) -> Vec<u32> {
        self.ports.keys().copied().collect()
    }

    /// The ports whose ring holds something to read (or whose pointers cannot be read: the
    /// drain reports that). One pass over the table with no lookups: an event drains every
    /// ring, and most are empty (datagram senders parked on a full ring each hold one).
    pub fn with_messages(&self) -> Vec<u32> {
        self.ports
            .iter()
            .filter(|(_, p)| !matches!(p.reader.available(), Ok(0)))
            .map(|(&port, _)| port)
            .collect()
    }

    /// `port`'s ring took a message of `len` payload bytes.
    pub fn saw_message(&mut self, port: u32, len: u32) {
        if let Some(p) = self.ports.get_mut(&port) {
            p.largest = p.largest.max(u64::from(len));
        }
    }

    /// The listening state of `port`, if it is a listening port.
    pub fn listen_mut(&mut self, port: u32) -> Option<&mut ListenState> {
        match self.ports.get_mut(&port).map(|p| &mut p.kind) {
            Some(PortKind::Listen(l)) => Some(l),
            _ => None,
        }
    }

    /// The reply ring for streams to `domid`, if registered.
    pub fn peer_ring(&self, domid: DomId) -> Option<u32> {
        self.peer_ring.get(&domid).copied()
    }

    /// One more (`+1`) or one fewer (`-1`) stream uses `port`'s ring.
    pub fn add_conn(&mut self, port: u32, delta: isize) {
        if let Some(p) = self.ports.get_mut(&port) {
            p.conns = p.conns.saturating_add_signed(delta);
        }
    }

    fn alloc_port(&mut self) -> u32 {
        loop {
            let p = self.next_ephemeral;
            self.next_ephemeral = self.next_ephemeral.checked_add(1).unwrap_or(EPHEMERAL_BASE);
            if !self.ports.contains_key(&p) {
                return p;
            }
        }
    }

    /// Rings charged to `uid`.
    pub fn held_by(&self, uid: u32) -> usize {
        self.ports.values().filter(|p| p.uid == Some(uid)).count()
    }

    /// Registers a ring of `ring_len` bytes for `port` (0: an ephemeral port) of domain
    /// `domid`, taking messages from `partner`, charged to `uid`.
    #[allow(clippy::too_many_arguments)]
    pub fn register(
        &mut self,
        hv: &dyn Hypervisor,
        domid: DomId,
        ring_len: u32,
        port: u32,
        partner: DomId,
        kind: PortKind,
        uid: Option<u32>,
    ) -> Result<u32, HvError> {
        let port = if port == 0 { self.alloc_port() } else { port };
        let mem = hv.alloc_ring_memory(ring::ring_bytes(ring_len))?;
        let reader = RingReader::new(mem, 0, ring_len).map_err(|_| HvError::Invalid)?;
        let id = RingId {
            addr: Addr::new(domid, port),
            partner,
            pad: 0,
        };
        reader.init_header(id).map_err(|_| HvError::BadAddress)?;
        hv.register_ring(reader.memory(), 0)?;
        debug!(port, partner, "ring registered");
        if let PortKind::Peer(d) = kind {
            self.peer_ring.insert(d, port);
        }
        self.ports.insert(
            port,
            Port {
                reader,
                kind,
                conns: 0,
                uid,
                largest: 0,
            },
        );
        Ok(port)
    }

    /// Takes `port` out of the table if nothing uses it (or unconditionally with `force`); the
    /// caller answers what its backlog held and then calls [`PortTable::unregister`].
    pub fn take(&mut self, port: u32, force: bool) -> Option<Port> {
        if !force && !self.ports.get(&port)?.unused() {
            return None;
        }
        let p = self.ports.remove(&port)?;
        if let PortKind::Peer(d) = p.kind {
            self.peer_ring.remove(&d);
        }
        Some(p)
    }

    /// Unregisters a ring taken out of the table. `quiet` when the hypervisor is gone anyway.
    pub fn unregister(hv: &dyn Hypervisor, port: u32, p: &Port, quiet: bool) {
        if let Err(e) = hv.unregister_ring(p.reader.memory(), 0)
            && !quiet
        {
            warn!(port, "unregister_ring: {e}");
        }
        debug!(port, "ring released");
    }
}

impl Daemon {
    /// Whether `uid` may have one more ring: users other than root hold at most
    /// `max_rings_per_user` each, and never the domain's last rings (kept for root and the
    /// daemon's peer rings). The `EDQUOT` reply names the limit and its value.
    pub(super) fn ring_quota(&self, uid: u32) -> Result<(), (String, String)> {
        if uid == 0 {
            return Ok(());
        }
        let per_user = self
            .cfg
            .max_rings_per_user
            .unwrap_or(self.max_rings / 4)
            .max(1) as usize;
        let held = self.ports.held_by(uid);
        if held >= per_user {
            return Err((
                "EDQUOT".into(),
                format!("uid {uid} holds {held} rings: max_rings_per_user is {per_user}"),
            ));
        }
        let reserve = (self.max_rings / 8).max(4) as usize;
        let open_to_users = (self.max_rings as usize).saturating_sub(reserve);
        if self.ports.len() >= open_to_users {
            return Err((
                "EDQUOT".into(),
                format!(
                    "the domain's ring limit is {}; its last {reserve} rings are kept for root",
                    self.max_rings
                ),
            ));
        }
        Ok(())
    }
}
