// SPDX-License-Identifier: MIT OR Apache-2.0
//! The event loop: one thread owns the hypervisor interface, every ring and every client.
//!
//! Ownership (one owner per resource):
//! - [`Daemon`] owns the [`Hypervisor`], the mio [`Poll`], the Unix listener, and the tables
//!   below; nothing is shared with other threads except the [`DaemonHandle`]'s stop flag/waker.
//! - `Port` owns one registered ring (its memory and reader) and says who uses it.
//! - `Client` owns one Unix connection and its bounded output buffer; a stream client also
//!   owns its `Conn` (the per-connection V4V state).
//!
//! Flow control: a client is read only when its data can be sent now (credit and no message
//! stuck on a full ring); a ring is drained only into bounded buffers (stream buffers are bounded
//! by the credit we granted, datagram ports stop being drained while their client's buffer is
//! full).

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{self, IoSlice, Read, Write};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mio::net::{UnixListener, UnixStream};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use tracing::{debug, info, warn};
use v4v::abi::{
    self, Addr, DOMID_ANY, DomId, PROTO_DGRAM, PROTO_STREAM, RING_DATA_F_EXISTS,
    RING_DATA_F_SUFFICIENT, RingDataEnt, RingId, SendAddr,
};
use v4v::client::proto::{
    FRAME_DATA, FRAME_HEADER_SIZE, FRAME_SEND, FRAME_STATUS, FrameHeader, MAX_DGRAM, MAX_LINE,
    PROTOCOL_VERSION, Request, SEND_F_NOWAIT, SockAddr,
};
use v4v::ring::{self, RingReader};
use v4v::{HvError, Hypervisor};

use crate::wire::{self, Segment};

mod acl;
use crate::{Config, DaemonError};

/// The event sources of the loop, decoded from mio tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// The Unix listening socket: new clients.
    Listener,
    /// The hypervisor's V4V event: a ring got data, or space we waited for.
    Hypervisor,
    /// [`DaemonHandle::stop`].
    Waker,
    /// One client connection.
    Client(usize),
}

const TOKEN_LISTENER: Token = Token(0);
const TOKEN_HV: Token = Token(1);
const TOKEN_WAKER: Token = Token(2);
const FIRST_CLIENT: usize = 16;

impl Source {
    fn of(t: Token) -> Self {
        match t {
            TOKEN_LISTENER => Source::Listener,
            TOKEN_HV => Source::Hypervisor,
            TOKEN_WAKER => Source::Waker,
            Token(n) => Source::Client(n),
        }
    }
}

/// First ephemeral port.
const EPHEMERAL_BASE: u32 = 0x8000_0000;
/// How often idle peers are probed, and how long a SYN may wait for its answer.
const KEEPALIVE: Duration = Duration::from_secs(1);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Retry delay after EBUSY (the ring's waiter queue was full).
const BUSY_RETRY: Duration = Duration::from_millis(20);
/// Most RSTs to unknown connections kept for retry when the peer's ring is full.
const MAX_RST_QUEUE: usize = 1024;

/// Stops a running daemon from another thread.
#[derive(Clone)]
pub struct DaemonHandle {
    stop: Arc<AtomicBool>,
    reload: Arc<AtomicBool>,
    waker: Arc<Waker>,
}

impl DaemonHandle {
    /// Asks the loop to stop; it resets its streams and unregisters its rings on the way out.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Err(e) = self.waker.wake() {
            warn!("waking the daemon: {e}");
        }
    }

    /// Asks the loop to reload its ACL file (dom0; SIGHUP), all or nothing.
    pub fn reload_acl(&self) {
        self.reload.store(true, Ordering::SeqCst);
        if let Err(e) = self.waker.wake() {
            warn!("waking the daemon: {e}");
        }
    }
}

/// Credentials of a client (SO_PEERCRED), kept for ACL permission checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cred {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
}

/// Whether the client closed its connection in both directions (`POLLHUP`). A client that
/// only shut down writing is still there.
fn hung_up(s: &UnixStream) -> bool {
    let mut p = libc::pollfd {
        fd: s.as_raw_fd(),
        events: 0,
        revents: 0,
    };
    // SAFETY: `p` is one valid pollfd for the duration of the call; timeout 0 never blocks.
    let r = unsafe { libc::poll(&mut p, 1, 0) };
    r > 0 && p.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0
}

/// The client's supplementary groups (`SO_PEERGROUPS`, Linux 4.13).
fn peer_groups(s: &UnixStream) -> io::Result<Vec<u32>> {
    let mut groups = vec![0u32; 64];
    loop {
        let mut len = (groups.len() * size_of::<u32>()) as libc::socklen_t;
        // SAFETY: `groups` is valid for writes of `len` bytes; the fd is a live socket.
        let r = unsafe {
            libc::getsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let n = len as usize / size_of::<u32>();
        if r == 0 {
            groups.truncate(n);
            return Ok(groups);
        }
        let e = io::Error::last_os_error();
        // ERANGE: `len` now says how much is needed.
        if e.raw_os_error() == Some(libc::ERANGE) && n > groups.len() && n <= 65536 {
            groups.resize(n, 0);
            continue;
        }
        return Err(e);
    }
}

fn peer_cred(s: &UnixStream) -> io::Result<Cred> {
    let mut c = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `c` and `len` are valid for writes and sized for SO_PEERCRED's struct ucred; the fd
    // is a live socket owned by `s`.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut c as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Cred {
        pid: c.pid,
        uid: c.uid,
        gid: c.gid,
    })
}

/// Counters reported by `STATUS`.
#[derive(Debug, Default, Clone, Copy)]
struct Stats {
    msgs_in: u64,
    bytes_in: u64,
    msgs_out: u64,
    bytes_out: u64,
    corrupt: u64,
    dropped: u64,
    /// Sends refused by the hypervisor's ACL (`EACCES`).
    acl_refused: u64,
}

/// Source/destination pairs whose ACL refusals are counted separately.
const MAX_REFUSAL_PAIRS: usize = 256;

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
        }
    }
}

/// Closed streams remembered for `CLOSED` queries.
const CLOSED_MEMORY: usize = 4096;

/// Key of a stream connection: our ring's port, the peer's address, the connection id.
type ConnKey = (u32, Addr, u32);

/// What a registered ring is for.
enum PortKind {
    /// A bound datagram port and the client that owns it.
    Dgram(usize),
    /// A listening stream port.
    Listen(ListenState),
    /// The connecting side's reply ring for streams to one peer domain.
    Peer(DomId),
}

#[derive(Default)]
struct ListenState {
    /// `LISTEN` clients: told of each incoming connection.
    controls: Vec<usize>,
    /// `ACCEPT` clients waiting for a connection.
    acceptors: VecDeque<usize>,
    /// Connection requests not accepted yet.
    backlog: VecDeque<PendingSyn>,
    next_id: u64,
    /// The user who listens: only clients of the same uid may listen or accept on the port too
    /// (nobody takes another user's connections).
    uid: u32,
}

/// A connection the daemon accepted on the V4V side (SYN|ACK sent) that no client has taken
/// yet. Data that arrives meanwhile waits in `buf`, bounded by the window we granted.
struct PendingSyn {
    id: u64,
    conn: Box<Conn>,
    buf: VecDeque<u8>,
}

/// Who holds a stream connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    Client(usize),
    /// In the backlog of this listening port.
    Backlog(u32),
}

/// One registered ring.
struct Port {
    reader: RingReader,
    kind: PortKind,
    /// Stream connections using this ring.
    conns: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    SynSent,
    Established,
}

/// The V4V side of one stream.
struct Conn {
    key: ConnKey,
    /// Daemon-unique id given to the client (`CLOSED ID` asks how the stream ended).
    id: u64,
    phase: Phase,
    started: Instant,
    /// Bytes we may still send to the peer.
    credit: u32,
    /// Encoded messages not sent yet (ring full), in order. At most a data message, a credit
    /// update and a FIN, because the client is read only when this is empty.
    outq: VecDeque<Vec<u8>>,
    /// Bytes the client consumed that we have not granted back to the peer yet.
    grant: u32,
    /// Data bytes from the peer buffered for the client.
    held: usize,
    peer_fin: bool,
    client_eof: bool,
    write_shut: bool,
    /// Data bytes of the payload cap per message.
    chunk: usize,
}

enum ClientState {
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

struct DgramClient {
    port: u32,
    /// Partial frame from the client.
    inbuf: Vec<u8>,
    /// A send waiting for ring space: destination and payload.
    pending: Option<(Addr, Vec<u8>)>,
}

struct Client {
    stream: UnixStream,
    cred: Cred,
    /// Root, or in the configured ACL group: may change the ACL table.
    acl_admin: bool,
    state: ClientState,
    /// Bytes for the client; bounded by the state's rules.
    out: VecDeque<u8>,
    /// Leading bytes of `out` that are not stream data (reply lines).
    out_prefix: usize,
    dead: bool,
}

impl Client {
    fn queue_line(&mut self, line: &str) {
        self.out.extend(line.as_bytes());
        self.out.push_back(b'\n');
        if matches!(self.state, ClientState::Stream(_)) || self.out_prefix > 0 {
            self.out_prefix += line.len() + 1;
        }
    }

    /// Writes as much of `out` as the socket takes; returns data bytes written.
    fn flush(&mut self) -> io::Result<usize> {
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
}

/// What a peer's segment did to a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Continue,
    /// Our SYN was answered.
    Established,
    /// The peer sent more than we granted, or data in the wrong state.
    Violation,
    /// The peer reset it; `refused` if it had not been established.
    Reset {
        refused: bool,
    },
}

/// Applies a peer's segment to a connection whose client-bound bytes are `out`.
fn apply_segment(
    conn: &mut Conn,
    out: &mut VecDeque<u8>,
    seg: Segment<'_>,
    window: usize,
) -> Outcome {
    match seg {
        Segment::Syn { .. } | Segment::Ping | Segment::Pong => Outcome::Continue,
        Segment::SynAck { window } => {
            if conn.phase == Phase::SynSent {
                conn.phase = Phase::Established;
                conn.credit = window;
                Outcome::Established
            } else {
                Outcome::Continue
            }
        }
        Segment::Ack { credit } => {
            conn.credit = conn.credit.saturating_add(credit);
            Outcome::Continue
        }
        Segment::Data(d) => {
            if conn.phase != Phase::Established || conn.peer_fin || conn.held + d.len() > window {
                return Outcome::Violation;
            }
            conn.held += d.len();
            out.extend(d);
            Outcome::Continue
        }
        Segment::Fin => {
            conn.peer_fin = true;
            Outcome::Continue
        }
        Segment::Rst => Outcome::Reset {
            refused: conn.phase == Phase::SynSent,
        },
    }
}

/// Whether the user `asker` may see or act on what user `owner` holds: its own, or root.
fn may_see(asker: u32, owner: u32) -> bool {
    asker == 0 || asker == owner
}

/// Whether a stream client's connection has FIN in both directions (our client's end was sent
/// or queued, the peer's received): the peer owes nothing and may already be gone.
fn finished_both_ways(c: Option<&Client>) -> bool {
    matches!(c.map(|c| &c.state), Some(ClientState::Stream(conn)) if conn.peer_fin && conn.client_eof)
}

fn errno_name(e: &HvError) -> String {
    e.name()
}

/// The daemon core. Create with [`Daemon::new`], run with [`Daemon::run`].
pub struct Daemon {
    poll: Poll,
    hv: Box<dyn Hypervisor>,
    domid: DomId,
    listener: UnixListener,
    cfg: Config,
    clients: HashMap<usize, Client>,
    next_token: usize,
    ports: HashMap<u32, Port>,
    conns: HashMap<ConnKey, Owner>,
    peer_ring: HashMap<DomId, u32>,
    next_ephemeral: u32,
    next_conid: u32,
    /// Clients with a message stuck on a full ring.
    blocked: HashSet<usize>,
    rst_queue: VecDeque<(u32, Addr, u32)>,
    busy_retry: Option<Instant>,
    next_keepalive: Instant,
    stats: Stats,
    refusals: HashMap<(Addr, Addr), u64>,
    /// Clients connected per uid.
    per_uid: HashMap<u32, usize>,
    next_stream_id: u64,
    closed: HashMap<u64, (u32, CloseReason)>,
    closed_order: VecDeque<u64>,
    stop: Arc<AtomicBool>,
    reload: Arc<AtomicBool>,
    waker: Arc<Waker>,
    /// Set when the hypervisor interface itself failed: the loop ends with this error.
    lost: Option<HvError>,
}

impl Daemon {
    /// A daemon for the domain behind `hv`, serving clients that connect to `listener`.
    pub fn new(
        hv: Box<dyn Hypervisor>,
        listener: std::os::unix::net::UnixListener,
        cfg: Config,
    ) -> Result<Self, DaemonError> {
        cfg.validate()?;
        let info = hv.info()?;
        listener.set_nonblocking(true)?;
        let mut listener = UnixListener::from_std(listener);
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut listener, TOKEN_LISTENER, Interest::READABLE)?;
        let hv_fd = hv.event_fd().as_raw_fd();
        poll.registry()
            .register(&mut SourceFd(&hv_fd), TOKEN_HV, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), TOKEN_WAKER)?);
        info!(domid = info.domid, "v4vd ready");
        let mut d = Daemon {
            poll,
            hv,
            domid: info.domid,
            listener,
            cfg,
            clients: HashMap::new(),
            next_token: FIRST_CLIENT,
            ports: HashMap::new(),
            conns: HashMap::new(),
            peer_ring: HashMap::new(),
            next_ephemeral: EPHEMERAL_BASE,
            next_conid: 1,
            blocked: HashSet::new(),
            rst_queue: VecDeque::new(),
            busy_retry: None,
            next_keepalive: Instant::now() + KEEPALIVE,
            stats: Stats::default(),
            refusals: HashMap::new(),
            per_uid: HashMap::new(),
            next_stream_id: 0,
            closed: HashMap::new(),
            closed_order: VecDeque::new(),
            stop: Arc::new(AtomicBool::new(false)),
            reload: Arc::new(AtomicBool::new(false)),
            waker,
            lost: None,
        };
        // dom0's rules apply before any client is served.
        d.load_acl_file(true)?;
        Ok(d)
    }

    /// The domain this daemon serves.
    pub fn domid(&self) -> DomId {
        self.domid
    }

    /// A handle to stop the loop from another thread.
    pub fn handle(&self) -> DaemonHandle {
        DaemonHandle {
            stop: self.stop.clone(),
            reload: self.reload.clone(),
            waker: self.waker.clone(),
        }
    }

    /// Runs until stopped. Resets all streams and unregisters every ring on the way out.
    pub fn run(mut self) -> Result<(), DaemonError> {
        let mut events = Events::with_capacity(256);
        // Anything that arrived before we registered.
        self.on_hv_event();
        while !self.stop.load(Ordering::SeqCst) {
            let now = Instant::now();
            let mut deadline = self.next_keepalive;
            if let Some(b) = self.busy_retry {
                deadline = deadline.min(b);
            }
            let timeout = deadline.saturating_duration_since(now);
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e.into());
            }
            for ev in events.iter() {
                match Source::of(ev.token()) {
                    Source::Listener => self.accept_clients(),
                    Source::Hypervisor => self.on_hv_event(),
                    Source::Waker => {}
                    Source::Client(t) => self.pump_client(t),
                }
            }
            let now = Instant::now();
            if self.busy_retry.is_some_and(|b| b <= now) {
                self.busy_retry = None;
                self.retry_blocked();
            }
            if self.reload.swap(false, Ordering::SeqCst) {
                self.reload_acl_file();
            }
            if self.next_keepalive <= now {
                self.next_keepalive = now + KEEPALIVE;
                self.keepalive(now);
            }
            self.reap();
        }
        self.shutdown();
        match self.lost {
            Some(e) => Err(DaemonError::HypervisorLost(e)),
            None => Ok(()),
        }
    }

    fn shutdown(&mut self) {
        info!("v4vd stopping");
        let tokens: Vec<usize> = self.clients.keys().copied().collect();
        for t in tokens {
            self.abort_client(t, true, CloseReason::Stopping);
        }
        self.reap();
        let ports: Vec<u32> = self.ports.keys().copied().collect();
        for p in ports {
            self.release_port(p, true);
        }
    }

    // ---- ports and rings ------------------------------------------------------------------

    fn alloc_port(&mut self) -> u32 {
        loop {
            let p = self.next_ephemeral;
            self.next_ephemeral = self.next_ephemeral.checked_add(1).unwrap_or(EPHEMERAL_BASE);
            if !self.ports.contains_key(&p) {
                return p;
            }
        }
    }

    fn register_port(&mut self, port: u32, partner: DomId, kind: PortKind) -> Result<u32, HvError> {
        let port = if port == 0 { self.alloc_port() } else { port };
        let len = self.cfg.ring_len;
        let mem = self.hv.alloc_ring_memory(ring::ring_bytes(len))?;
        let reader = RingReader::new(mem, 0, len).map_err(|_| HvError::Invalid)?;
        let id = RingId {
            addr: Addr::new(self.domid, port),
            partner,
            pad: 0,
        };
        reader.init_header(id).map_err(|_| HvError::BadAddress)?;
        self.hv.register_ring(reader.memory(), 0)?;
        debug!(port, partner, "ring registered");
        self.ports.insert(
            port,
            Port {
                reader,
                kind,
                conns: 0,
            },
        );
        Ok(port)
    }

    /// Unregisters a port's ring if nothing uses it any more (or unconditionally with `force`).
    fn release_port(&mut self, port: u32, force: bool) {
        let Some(p) = self.ports.get(&port) else {
            return;
        };
        let unused = p.conns == 0
            && match &p.kind {
                PortKind::Dgram(_) => true,
                PortKind::Listen(l) => l.controls.is_empty() && l.acceptors.is_empty(),
                PortKind::Peer(_) => true,
            };
        if !(force || unused) {
            // Nobody listens any more, but accepted streams keep the ring: refuse the backlog.
            let mut refused = Vec::new();
            if let Some(PortKind::Listen(l)) = self.ports.get_mut(&port).map(|p| &mut p.kind)
                && l.controls.is_empty()
                && l.acceptors.is_empty()
            {
                refused.extend(l.backlog.drain(..).map(|s| s.conn.key));
            }
            for key in refused {
                self.conns.remove(&key);
                self.send_rst(key.0, key.1, key.2);
            }
            return;
        }
        let Some(p) = self.ports.remove(&port) else {
            return;
        };
        match p.kind {
            PortKind::Peer(d) => {
                self.peer_ring.remove(&d);
            }
            PortKind::Listen(l) => {
                for s in l.backlog {
                    self.conns.remove(&s.conn.key);
                    self.send_rst(port, s.conn.key.1, s.conn.key.2);
                }
            }
            PortKind::Dgram(_) => {}
        }
        if let Err(e) = self.hv.unregister_ring(p.reader.memory(), 0)
            && self.lost.is_none()
        {
            warn!(port, "unregister_ring: {e}");
        }
        debug!(port, "ring released");
    }

    // ---- hypervisor events ----------------------------------------------------------------

    fn on_hv_event(&mut self) {
        loop {
            match self.hv.take_event() {
                Ok(true) => continue,
                Ok(false) => break,
                Err(e) if e.is_interface_lost() => {
                    // The simulator exited (or our domain was destroyed): nothing can work.
                    self.lost = Some(e);
                    self.stop.store(true, Ordering::SeqCst);
                    return;
                }
                Err(e) => {
                    warn!("take_event: {e}");
                    break;
                }
            }
        }
        let ports: Vec<u32> = self.ports.keys().copied().collect();
        let mut consumed = false;
        for p in ports {
            consumed |= self.drain_port(p);
        }
        if consumed && let Err(e) = self.hv.notify(None) {
            warn!("notify: {e}");
        }
        self.retry_blocked();
    }

    /// Consumes what the port's ring holds, as far as bounded buffers allow.
    fn drain_port(&mut self, port: u32) -> bool {
        let mut consumed = false;
        let mut buf = Vec::new();
        loop {
            let Some(p) = self.ports.get(&port) else {
                return consumed;
            };
            if let PortKind::Dgram(t) = p.kind
                && self
                    .clients
                    .get(&t)
                    .is_some_and(|c| c.out.len() >= self.cfg.dgram_buffer)
            {
                // The client is not reading: leave the rest in the ring (its senders wait).
                return consumed;
            }
            let r = match p.reader.recv(&mut buf) {
                Ok(Some(r)) => r,
                Ok(None) => return consumed,
                Err(e) => {
                    self.stats.corrupt += 1;
                    warn!(port, "corrupt ring, discarding its contents: {e}");
                    if let Err(e) = p.reader.discard_all() {
                        warn!(port, "cannot recover ring: {e}; re-registering");
                        let _ = self.hv.unregister_ring(p.reader.memory(), 0);
                        let _ = p.reader.init_header(RingId {
                            addr: Addr::new(self.domid, port),
                            partner: p.reader.id().map(|i| i.partner).unwrap_or(DOMID_ANY),
                            pad: 0,
                        });
                        if let Err(e) = self.hv.register_ring(p.reader.memory(), 0) {
                            warn!(port, "re-register failed: {e}");
                        }
                    }
                    return true;
                }
            };
            consumed = true;
            self.stats.msgs_in += 1;
            self.stats.bytes_in += u64::from(r.len);
            match r.message_type {
                PROTO_DGRAM => self.on_dgram(port, r.source, &buf),
                PROTO_STREAM => self.on_stream(port, r.source, &buf),
                other => {
                    self.stats.dropped += 1;
                    debug!(port, "dropping message of unknown type {other:#x}");
                }
            }
        }
    }

    fn retry_blocked(&mut self) {
        let n = self.rst_queue.len();
        for _ in 0..n {
            let Some((src, dst, conid)) = self.rst_queue.pop_front() else {
                break;
            };
            self.send_rst(src, dst, conid);
        }
        let blocked: Vec<usize> = self.blocked.drain().collect();
        for t in blocked {
            self.pump_client(t);
        }
    }

    fn sendv(&mut self, src_port: u32, dst: Addr, ty: u32, msg: &[u8]) -> Result<u32, HvError> {
        let addr = SendAddr {
            src: Addr::new(self.domid, src_port),
            dst,
        };
        let r = self.hv.sendv(&addr, &[IoSlice::new(msg)], ty);
        match r {
            Ok(_) => {
                self.stats.msgs_out += 1;
                self.stats.bytes_out += msg.len() as u64;
            }
            Err(HvError::Denied) => self.count_refusal(addr.src, dst),
            Err(_) => {}
        }
        r
    }

    /// Counts a send the hypervisor's ACL refused, per source and destination (bounded: pairs
    /// beyond [`MAX_REFUSAL_PAIRS`] are only in the total).
    fn count_refusal(&mut self, src: Addr, dst: Addr) {
        self.stats.acl_refused += 1;
        let n = self.refusals.len();
        match self.refusals.get_mut(&(src, dst)) {
            Some(c) => *c += 1,
            None if n < MAX_REFUSAL_PAIRS => {
                self.refusals.insert((src, dst), 1);
            }
            None => {}
        }
    }

    /// After EAGAIN: ask the hypervisor whether the space is there now (we are queued as a
    /// waiter either way). Returns true when a retry may succeed at once.
    fn space_now(&mut self, dst: Addr, len: usize, e: HvError) -> Result<bool, HvError> {
        match e {
            HvError::WouldBlock => {}
            HvError::Busy => {
                let at = Instant::now() + BUSY_RETRY;
                self.busy_retry = Some(self.busy_retry.map_or(at, |b| b.min(at)));
                return Ok(false);
            }
            other => return Err(other),
        }
        let mut ent = [RingDataEnt {
            ring: dst,
            space_required: u32::try_from(len).unwrap_or(u32::MAX),
            ..Default::default()
        }];
        self.hv.notify(Some(&mut ent))?;
        if ent[0].flags & RING_DATA_F_EXISTS == 0 {
            return Err(HvError::Refused);
        }
        Ok(ent[0].flags & RING_DATA_F_SUFFICIENT != 0)
    }

    /// Sends once, and once more if the space turned out to be there; `Ok(false)` = wait.
    fn send_or_wait(
        &mut self,
        src_port: u32,
        dst: Addr,
        ty: u32,
        msg: &[u8],
    ) -> Result<bool, HvError> {
        for _ in 0..2 {
            match self.sendv(src_port, dst, ty, msg) {
                Ok(_) => return Ok(true),
                Err(e) => {
                    if !self.space_now(dst, msg.len(), e)? {
                        return Ok(false);
                    }
                }
            }
        }
        Ok(false)
    }

    fn send_rst(&mut self, src_port: u32, dst: Addr, conid: u32) {
        let m = wire::encode(conid, &Segment::Rst);
        match self.send_or_wait(src_port, dst, PROTO_STREAM, &m) {
            Ok(true) => {}
            Ok(false) => {
                if self.rst_queue.len() < MAX_RST_QUEUE {
                    self.rst_queue.push_back((src_port, dst, conid));
                }
            }
            Err(e) => debug!("RST to {dst:?} not sent: {e}"),
        }
    }

    // ---- datagrams ------------------------------------------------------------------------

    fn on_dgram(&mut self, port: u32, src: Addr, payload: &[u8]) {
        let Some(PortKind::Dgram(t)) = self.ports.get(&port).map(|p| &p.kind) else {
            self.stats.dropped += 1;
            debug!(port, "datagram for a non-datagram port dropped");
            return;
        };
        let t = *t;
        let Some(c) = self.clients.get_mut(&t) else {
            return;
        };
        let h = FrameHeader {
            len: payload.len() as u32,
            kind: FRAME_DATA,
            domain: src.domain,
            port: src.port,
            aux: 0,
        };
        c.out.extend(h.encode());
        c.out.extend(payload);
        if let Err(e) = c.flush() {
            debug!("client write: {e}");
            c.dead = true;
        }
    }

    fn pump_dgram(&mut self, t: usize) {
        // Frames are processed one at a time; reading stops while a send waits for space.
        let mut rbuf = vec![0u8; 64 * 1024];
        loop {
            let Some(c) = self.clients.get_mut(&t) else {
                return;
            };
            let ClientState::Dgram(d) = &mut c.state else {
                return;
            };
            let port = d.port;
            if let Some((dst, payload)) = d.pending.take() {
                if !self.dgram_send(t, port, dst, payload, false) {
                    return;
                }
                continue;
            }
            // A whole frame buffered? Else read (only) what the frame still lacks.
            let want = if d.inbuf.len() >= FRAME_HEADER_SIZE {
                let mut hb = [0u8; FRAME_HEADER_SIZE];
                hb.copy_from_slice(&d.inbuf[..FRAME_HEADER_SIZE]);
                let h = FrameHeader::decode(&hb);
                if h.kind != FRAME_SEND || h.len > MAX_DGRAM {
                    warn!("datagram client sent a bad frame ({h:?}); closing it");
                    c.dead = true;
                    return;
                }
                let total = FRAME_HEADER_SIZE + h.len as usize;
                if d.inbuf.len() >= total {
                    let payload = d.inbuf[FRAME_HEADER_SIZE..total].to_vec();
                    d.inbuf.drain(..total);
                    let dst = Addr::new(h.domain, h.port);
                    if h.port == 0 || h.domain >= abi::DOMID_FIRST_RESERVED {
                        self.dgram_status(t, dst, abi::errno::EINVAL as u32);
                        continue;
                    }
                    if !self.dgram_send(t, port, dst, payload, h.aux & SEND_F_NOWAIT != 0) {
                        return;
                    }
                    continue;
                }
                (total - d.inbuf.len()).min(rbuf.len())
            } else {
                // Status frames are 16 bytes; stop reading requests while the client is not
                // reading its replies.
                if c.out.len() >= self.cfg.dgram_buffer {
                    return;
                }
                FRAME_HEADER_SIZE - d.inbuf.len()
            };
            match c.stream.read(&mut rbuf[..want]) {
                Ok(0) => {
                    c.dead = true;
                    return;
                }
                Ok(n) => d.inbuf.extend_from_slice(&rbuf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    c.dead = true;
                    return;
                }
            }
        }
    }

    /// Sends a client's datagram and queues its STATUS frame. A full destination parks the
    /// datagram (the client is not read until space comes) unless `nowait`, which answers
    /// `EAGAIN`. Returns false when parked.
    fn dgram_send(
        &mut self,
        t: usize,
        port: u32,
        dst: Addr,
        payload: Vec<u8>,
        nowait: bool,
    ) -> bool {
        match self.send_or_wait(port, dst, PROTO_DGRAM, &payload) {
            Ok(true) => self.dgram_status(t, dst, 0),
            Ok(false) if nowait => self.dgram_status(t, dst, abi::errno::EAGAIN as u32),
            Ok(false) => {
                if let Some(ClientState::Dgram(d)) = self.clients.get_mut(&t).map(|c| &mut c.state)
                {
                    d.pending = Some((dst, payload));
                }
                self.blocked.insert(t);
                return false;
            }
            Err(e) => self.dgram_status(t, dst, e.errno() as u32),
        }
        true
    }

    fn dgram_status(&mut self, t: usize, dst: Addr, errno: u32) {
        if let Some(c) = self.clients.get_mut(&t) {
            let h = FrameHeader {
                len: 0,
                kind: FRAME_STATUS,
                domain: dst.domain,
                port: dst.port,
                aux: errno,
            };
            c.out.extend(h.encode());
            if c.flush().is_err() {
                c.dead = true;
            }
        }
    }

    // ---- streams: messages from peers ------------------------------------------------------

    fn on_stream(&mut self, port: u32, src: Addr, msg: &[u8]) {
        let (conid, seg) = match wire::decode(msg) {
            Ok(x) => x,
            Err(e) => {
                self.stats.dropped += 1;
                debug!(port, "bad stream message from {src:?}: {e}");
                return;
            }
        };
        let key = (port, src, conid);
        if let Segment::Syn { window } = seg {
            self.on_syn(port, src, conid, window);
            return;
        }
        let Some(&owner) = self.conns.get(&key) else {
            match seg {
                Segment::Rst | Segment::Ping | Segment::Pong => {}
                // Credit for a connection that just ended orderly here: the peer sent it before
                // our FIN reached it. A RST would reset a stream whose data is all on its way.
                Segment::Ack { .. } => {}
                _ => {
                    self.stats.dropped += 1;
                    self.send_rst(port, src, conid);
                }
            }
            return;
        };
        let window = self.cfg.conn_window as usize;
        let outcome = match owner {
            Owner::Client(t) => match self.clients.get_mut(&t) {
                Some(Client {
                    state: ClientState::Stream(conn),
                    out,
                    ..
                }) => apply_segment(conn, out, seg, window),
                _ => return,
            },
            Owner::Backlog(p) => match self.ports.get_mut(&p).map(|x| &mut x.kind) {
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
                if let Some(c) = self.clients.get_mut(&t)
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
                if refused && let Some(c) = self.clients.get_mut(&t) {
                    c.out.clear();
                    c.out_prefix = 0;
                    c.queue_line("ERR ECONNREFUSED connection refused by the peer");
                }
                self.abort_client(t, false, CloseReason::PeerReset);
                return;
            }
            (Owner::Backlog(p), Outcome::Violation | Outcome::Reset { .. }) => {
                let violation = outcome == Outcome::Violation;
                if let Some(PortKind::Listen(l)) = self.ports.get_mut(&p).map(|x| &mut x.kind) {
                    l.backlog.retain(|s| s.conn.key != key);
                }
                self.conns.remove(&key);
                if violation {
                    self.send_rst(key.0, key.1, key.2);
                }
                return;
            }
            (Owner::Backlog(_), Outcome::Established) => {}
        }
        if let Owner::Client(t) = owner {
            self.pump_client(t);
        }
    }

    fn on_syn(&mut self, port: u32, src: Addr, conid: u32, window: u32) {
        let key = (port, src, conid);
        if self.conns.contains_key(&key) {
            return; // a duplicate
        }
        let backlog_max = self.cfg.backlog;
        let mut conn = Box::new(self.new_conn(key, Phase::Established));
        conn.credit = window;
        let Some(PortKind::Listen(l)) = self.ports.get_mut(&port).map(|p| &mut p.kind) else {
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
        if let Some(PortKind::Listen(l)) = self.ports.get_mut(&port).map(|p| &mut p.kind) {
            l.backlog.push_back(PendingSyn {
                id,
                conn,
                buf: VecDeque::new(),
            });
        }
        self.conns.insert(key, Owner::Backlog(port));
        let line = format!("INCOMING {id} {}", SockAddr::new(src.domain, src.port));
        for t in controls {
            if let Some(c) = self.clients.get_mut(&t) {
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

    fn match_acceptors(&mut self, port: u32) {
        loop {
            let Some(PortKind::Listen(l)) = self.ports.get_mut(&port).map(|p| &mut p.kind) else {
                return;
            };
            // Find an acceptor and a connection for it.
            let mut pick = None;
            for (ai, &t) in l.acceptors.iter().enumerate() {
                let want = match self.clients.get(&t).map(|c| &c.state) {
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
            if let Some(p) = self.ports.get_mut(&port) {
                p.conns += 1;
            }
            self.conns.insert(key, Owner::Client(t));
            if let Some(c) = self.clients.get_mut(&t) {
                let line = format!(
                    "OK {} {}",
                    SockAddr::new(key.1.domain, key.1.port),
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

    fn new_conn(&mut self, key: ConnKey, phase: Phase) -> Conn {
        self.next_stream_id += 1;
        let ring_cap = ring::max_message_size(self.cfg.ring_len) as usize;
        Conn {
            key,
            id: self.next_stream_id,
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

    fn pump_stream(&mut self, t: usize) {
        let window = self.cfg.conn_window;
        let mut rbuf = Vec::new();
        loop {
            let Some(c) = self.clients.get_mut(&t) else {
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
                    .push_back(wire::encode(conn.key.2, &Segment::Ack { credit: g }));
            }
            // 3. Queued messages to the peer.
            let (src, dst) = (conn.key.0, conn.key.1);
            let mut progressed = false;
            while let Some(m) = self.clients.get_mut(&t).and_then(|c| match &mut c.state {
                ClientState::Stream(conn) => conn.outq.pop_front(),
                _ => None,
            }) {
                match self.send_or_wait(src, dst, PROTO_STREAM, &m) {
                    Ok(true) => progressed = true,
                    Ok(false) => {
                        if let Some(ClientState::Stream(conn)) =
                            self.clients.get_mut(&t).map(|c| &mut c.state)
                        {
                            conn.outq.push_front(m);
                        }
                        self.blocked.insert(t);
                        return;
                    }
                    // A credit update is advice: the peer may have finished and closed while its
                    // FIN still waits in our ring. If it is really gone, the keepalive says so.
                    Err(e)
                        if finished_both_ways(self.clients.get(&t))
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
            let Some(c) = self.clients.get_mut(&t) else {
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
                    conn.outq.push_back(wire::encode(conn.key.2, &Segment::Fin));
                }
                Ok(k) => {
                    conn.credit -= k as u32;
                    rbuf.truncate(wire::HEADER + k);
                    let hdr = wire::encode(conn.key.2, &Segment::Data(&[]));
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
    fn close_stream(&mut self, t: usize) {
        if let Some(c) = self.clients.get_mut(&t) {
            c.dead = true;
            if let ClientState::Stream(conn) = &c.state {
                let (id, uid) = (conn.id, c.cred.uid);
                self.remember_close(id, uid, CloseReason::Eof);
            }
        }
    }

    /// Ends a client at once. Streams send RST to the peer when `rst` (our side aborted) and
    /// remember `reason` for `CLOSED`; waiting connects answer `ERR` if nothing was queued yet.
    fn abort_client(&mut self, t: usize, rst: bool, reason: CloseReason) {
        let Some(c) = self.clients.get_mut(&t) else {
            return;
        };
        c.dead = true;
        let uid = c.cred.uid;
        if let ClientState::Stream(conn) = &mut c.state {
            let (key, id) = (conn.key, conn.id);
            conn.outq.clear();
            if rst {
                self.send_rst(key.0, key.1, key.2);
            }
            self.remember_close(id, uid, reason);
        }
    }

    fn remember_close(&mut self, id: u64, uid: u32, reason: CloseReason) {
        if self.closed.insert(id, (uid, reason)).is_none() {
            self.closed_order.push_back(id);
        }
        while self.closed_order.len() > CLOSED_MEMORY {
            if let Some(old) = self.closed_order.pop_front() {
                self.closed.remove(&old);
            }
        }
    }

    /// The client holding open stream `id`, if `uid` may see it (its owner, or root).
    fn open_stream_of(&self, uid: u32, id: u64) -> Option<usize> {
        self.clients.iter().find_map(|(&k, c)| match &c.state {
            ClientState::Stream(conn) if conn.id == id && may_see(uid, c.cred.uid) => Some(k),
            _ => None,
        })
    }

    /// `CLOSED ID`: how a stream of this user's ended (or that it is still open).
    fn closed_query(&self, uid: u32, id: u64) -> Result<String, (&'static str, String)> {
        if let Some(k) = self.open_stream_of(uid, id) {
            let peer_fin = matches!(
                self.clients.get(&k).map(|c| &c.state),
                Some(ClientState::Stream(conn)) if conn.peer_fin
            );
            return Ok(if peer_fin { "OK eof" } else { "OK open" }.to_string());
        }
        match self.closed.get(&id) {
            Some(&(owner, reason)) if may_see(uid, owner) => {
                Ok(format!("OK {}", reason.describe()))
            }
            _ => Err(("ENOENT", format!("no stream {id} of yours is known"))),
        }
    }

    // ---- clients ---------------------------------------------------------------------------

    fn accept_clients(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((mut s, _)) => {
                    if self.clients.len() >= self.cfg.max_clients {
                        warn!("too many clients; refusing one");
                        let _ = s.write(b"ERR EMFILE too many clients\n");
                        continue;
                    }
                    let cred = match peer_cred(&s) {
                        Ok(c) => c,
                        Err(e) => {
                            warn!("SO_PEERCRED: {e}");
                            continue;
                        }
                    };
                    // One user cannot take every connection (and descriptor) the daemon has.
                    let held = self.per_uid.get(&cred.uid).copied().unwrap_or(0);
                    if cred.uid != 0 && held >= self.cfg.max_clients_per_user {
                        warn!(
                            uid = cred.uid,
                            held, "per-user client limit reached; refusing one"
                        );
                        let _ = s.write(
                            format!(
                                "ERR EMFILE uid {} holds {held} connections, the most one user may\n",
                                cred.uid
                            )
                            .as_bytes(),
                        );
                        continue;
                    }
                    let acl_admin = cred.uid == 0
                        || self.cfg.acl_group.is_some_and(|g| {
                            cred.gid == g || peer_groups(&s).is_ok_and(|gs| gs.contains(&g))
                        });
                    let t = self.next_token;
                    self.next_token += 1;
                    if let Err(e) = self.poll.registry().register(
                        &mut s,
                        Token(t),
                        Interest::READABLE | Interest::WRITABLE,
                    ) {
                        warn!("register client: {e}");
                        continue;
                    }
                    debug!(
                        token = t,
                        pid = cred.pid,
                        uid = cred.uid,
                        "client connected"
                    );
                    *self.per_uid.entry(cred.uid).or_insert(0) += 1;
                    self.clients.insert(
                        t,
                        Client {
                            stream: s,
                            cred,
                            acl_admin,
                            state: ClientState::Handshake(Vec::new()),
                            out: VecDeque::new(),
                            out_prefix: 0,
                            dead: false,
                        },
                    );
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

    fn pump_client(&mut self, t: usize) {
        let Some(c) = self.clients.get_mut(&t) else {
            return;
        };
        match &mut c.state {
            ClientState::Handshake(_) => self.pump_handshake(t),
            ClientState::Closing => {
                if c.flush().is_err() || c.out.is_empty() {
                    c.dead = true;
                }
            }
            ClientState::Dgram(d) => {
                let port = d.port;
                let was_full = c.out.len() >= self.cfg.dgram_buffer;
                if c.flush().is_err() {
                    c.dead = true;
                    return;
                }
                let now_room = c.out.len() < self.cfg.dgram_buffer;
                self.pump_dgram(t);
                if was_full && now_room && self.drain_port(port) {
                    let _ = self.hv.notify(None);
                }
            }
            ClientState::Listen(_) | ClientState::Accept(..) => {
                if c.flush().is_err() {
                    c.dead = true;
                    return;
                }
                // Nothing is read here: what an acceptor writes before its connection comes
                // (socat sends data, or shuts down its write side) is stream data. Only a
                // client gone in both directions ends the wait.
                if hung_up(&c.stream) {
                    c.dead = true;
                }
            }
            ClientState::Stream(_) => self.pump_stream(t),
            ClientState::AclLoad(_) => self.pump_acl_load(t),
        }
    }

    fn pump_handshake(&mut self, t: usize) {
        let Some(c) = self.clients.get_mut(&t) else {
            return;
        };
        let ClientState::Handshake(buf) = &mut c.state else {
            return;
        };
        // Read byte-wise up to the newline: nothing after it may be consumed, it is stream data.
        let mut b = [0u8; 1];
        let line = loop {
            if buf.len() >= MAX_LINE {
                c.queue_line("ERR EINVAL request line too long");
                c.state = ClientState::Closing;
                return self.pump_client(t);
            }
            match c.stream.read(&mut b) {
                Ok(0) => {
                    c.dead = true;
                    return;
                }
                Ok(_) if b[0] == b'\n' => break std::mem::take(buf),
                Ok(_) => buf.push(b[0]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    c.dead = true;
                    return;
                }
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

    fn reply_err(&mut self, t: usize, code: &str, reason: &str) {
        if let Some(c) = self.clients.get_mut(&t) {
            c.out.clear();
            c.out_prefix = 0;
            c.state = ClientState::Closing;
            c.queue_line(&format!("ERR {code} {reason}"));
        }
        self.pump_client(t);
    }

    fn set_state(&mut self, t: usize, state: ClientState, line: &str) {
        if let Some(c) = self.clients.get_mut(&t) {
            c.state = state;
            c.queue_line(line);
        }
    }

    fn start(&mut self, t: usize, req: Request) {
        let uid = self.clients.get(&t).map_or(u32::MAX, |c| c.cred.uid);
        match req {
            Request::Version => {
                self.set_state(t, ClientState::Closing, &format!("OK {PROTOCOL_VERSION}"));
            }
            Request::Status => {
                let s = self.status_line();
                self.set_state(t, ClientState::Closing, &s);
            }
            Request::Dgram(port, partner) => {
                self.reclaim_port(port);
                if port != 0 && self.ports.contains_key(&port) {
                    return self.reply_err(t, "EADDRINUSE", "port already bound");
                }
                match self.register_port(port, partner.unwrap_or(DOMID_ANY), PortKind::Dgram(t)) {
                    Ok(p) => {
                        let st = ClientState::Dgram(DgramClient {
                            port: p,
                            inbuf: Vec::new(),
                            pending: None,
                        });
                        self.set_state(t, st, &format!("OK {p}"));
                    }
                    Err(e) => self.reply_err(t, &errno_name(&e), &e.to_string()),
                }
            }
            Request::Listen(port) => match self.listen_port(port, uid) {
                Ok(p) => {
                    if let Some(PortKind::Listen(l)) = self.ports.get_mut(&p).map(|x| &mut x.kind) {
                        l.controls.push(t);
                        let pending: Vec<String> = l
                            .backlog
                            .iter()
                            .map(|s| {
                                format!(
                                    "INCOMING {} {}",
                                    s.id,
                                    SockAddr::new(s.conn.key.1.domain, s.conn.key.1.port)
                                )
                            })
                            .collect();
                        self.set_state(t, ClientState::Listen(p), &format!("OK {p}"));
                        if let Some(c) = self.clients.get_mut(&t) {
                            for l in pending {
                                c.queue_line(&l);
                            }
                        }
                    }
                }
                Err((code, reason)) => self.reply_err(t, &code, &reason),
            },
            Request::Accept(port, id) => {
                if port == 0 {
                    return self.reply_err(t, "EINVAL", "ACCEPT needs a port");
                }
                match self.listen_port(port, uid) {
                    Ok(p) => {
                        if let Some(PortKind::Listen(l)) =
                            self.ports.get_mut(&p).map(|x| &mut x.kind)
                        {
                            if let Some(id) = id
                                && !l.backlog.iter().any(|s| s.id == id)
                            {
                                self.reply_err(t, "ENOENT", "no such incoming connection");
                                self.release_port(p, false);
                                return;
                            }
                            l.acceptors.push_back(t);
                        }
                        if let Some(c) = self.clients.get_mut(&t) {
                            c.state = ClientState::Accept(p, id);
                        }
                        self.match_acceptors(p);
                    }
                    Err((code, reason)) => self.reply_err(t, &code, &reason),
                }
            }
            Request::Connect(addr) => self.connect(t, addr),
            Request::Closed(id) => match self.closed_query(uid, id) {
                Ok(line) => self.set_state(t, ClientState::Closing, &line),
                Err((code, reason)) => self.reply_err(t, code, &reason),
            },
            Request::Reset(id) => match self.open_stream_of(uid, id) {
                Some(k) => {
                    debug!(stream = id, "reset on request");
                    self.abort_client(k, true, CloseReason::LocalAbort);
                    self.set_state(t, ClientState::Closing, "OK");
                }
                None => self.reply_err(t, "ENOENT", &format!("no open stream {id} of yours")),
            },
            Request::Acl(req) => self.acl_request(t, req),
        }
    }

    /// A port whose owner closed its connection is free, even if the close is still queued
    /// among the loop's events: reap that owner now, so that close-then-bind always works.
    fn reclaim_port(&mut self, port: u32) {
        let owner = match self.ports.get(&port).map(|p| &p.kind) {
            Some(PortKind::Dgram(o)) => *o,
            _ => return,
        };
        if let Some(c) = self.clients.get_mut(&owner)
            && hung_up(&c.stream)
        {
            c.dead = true;
            self.reap();
        }
    }

    fn listen_port(&mut self, port: u32, uid: u32) -> Result<u32, (String, String)> {
        self.reclaim_port(port);
        if port != 0
            && let Some(p) = self.ports.get(&port)
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
        let state = ListenState {
            uid,
            ..ListenState::default()
        };
        self.register_port(port, DOMID_ANY, PortKind::Listen(state))
            .map_err(|e| (errno_name(&e), e.to_string()))
    }

    fn connect(&mut self, t: usize, addr: SockAddr) {
        if addr.port == 0 {
            return self.reply_err(t, "EINVAL", "port 0 is not a destination");
        }
        let ring_port = match self.peer_ring.get(&addr.domid) {
            Some(&p) => p,
            None => match self.register_port(0, addr.domid, PortKind::Peer(addr.domid)) {
                Ok(p) => {
                    self.peer_ring.insert(addr.domid, p);
                    p
                }
                Err(e) => return self.reply_err(t, &errno_name(&e), &e.to_string()),
            },
        };
        let conid = self.next_conid;
        self.next_conid = self.next_conid.wrapping_add(1).max(1);
        let dst = Addr::new(addr.domid, addr.port);
        let key = (ring_port, dst, conid);
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
                    self.blocked.insert(t);
                }
                if let Some(p) = self.ports.get_mut(&ring_port) {
                    p.conns += 1;
                }
                self.conns.insert(key, Owner::Client(t));
                if let Some(c) = self.clients.get_mut(&t) {
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

    /// Removes dead clients and everything they held.
    fn reap(&mut self) {
        let dead: Vec<usize> = self
            .clients
            .iter()
            .filter(|(_, c)| c.dead)
            .map(|(t, _)| *t)
            .collect();
        for t in dead {
            let Some(mut c) = self.clients.remove(&t) else {
                continue;
            };
            // Best effort: a final reply line (ERR) if the socket takes it.
            let _ = c.flush();
            if let Some(n) = self.per_uid.get_mut(&c.cred.uid) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.per_uid.remove(&c.cred.uid);
                }
            }
            let _ = self.poll.registry().deregister(&mut c.stream);
            self.blocked.remove(&t);
            match c.state {
                ClientState::Dgram(d) => self.release_port(d.port, true),
                ClientState::Listen(p) => {
                    if let Some(PortKind::Listen(l)) = self.ports.get_mut(&p).map(|x| &mut x.kind) {
                        l.controls.retain(|&x| x != t);
                    }
                    self.release_port(p, false);
                }
                ClientState::Accept(p, _) => {
                    if let Some(PortKind::Listen(l)) = self.ports.get_mut(&p).map(|x| &mut x.kind) {
                        l.acceptors.retain(|&x| x != t);
                    }
                    self.release_port(p, false);
                }
                ClientState::Stream(conn) => {
                    self.conns.remove(&conn.key);
                    if let Some(p) = self.ports.get_mut(&conn.key.0) {
                        p.conns = p.conns.saturating_sub(1);
                    }
                    self.release_port(conn.key.0, false);
                }
                ClientState::Handshake(_) | ClientState::Closing | ClientState::AclLoad(_) => {}
            }
            debug!(token = t, "client removed");
        }
    }

    /// Probes each peer daemon we have streams with, and times out unanswered connects.
    fn keepalive(&mut self, now: Instant) {
        let mut peers: HashSet<(u32, Addr)> = HashSet::new();
        let mut expired = Vec::new();
        for (&t, c) in &self.clients {
            if let ClientState::Stream(conn) = &c.state {
                if conn.phase == Phase::SynSent {
                    if now.duration_since(conn.started) > CONNECT_TIMEOUT {
                        expired.push(t);
                    }
                } else {
                    peers.insert((conn.key.0, conn.key.1));
                }
            }
        }
        for t in expired {
            if let Some(c) = self.clients.get_mut(&t) {
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
                        .conns
                        .iter()
                        .filter(|((s, a, _), _)| *s == src && *a == dst)
                        .filter_map(|(_, o)| match o {
                            Owner::Client(t) => Some(*t),
                            Owner::Backlog(_) => None,
                        })
                        // Finished both ways: only our client's reading is left.
                        .filter(|t| !finished_both_ways(self.clients.get(t)))
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

    fn status_line(&self) -> String {
        let mut ports: Vec<String> = self
            .ports
            .iter()
            .map(|(p, x)| {
                let k = match &x.kind {
                    PortKind::Dgram(_) => "dgram".to_string(),
                    PortKind::Listen(_) => "listen".to_string(),
                    PortKind::Peer(d) => format!("peer{d}"),
                };
                format!("{p}/{k}")
            })
            .collect();
        ports.sort();
        let s = &self.stats;
        let mut refused: Vec<String> = self
            .refusals
            .iter()
            .map(|((src, dst), n)| {
                format!(
                    "{}->{}/{n}",
                    SockAddr::new(src.domain, src.port),
                    SockAddr::new(dst.domain, dst.port)
                )
            })
            .collect();
        refused.sort();
        format!(
            "OK version={PROTOCOL_VERSION} domid={} rings={} ports={} clients={} streams={} \
             msgs_in={} bytes_in={} msgs_out={} bytes_out={} corrupt={} dropped={} \
             acl_refused={} acl_refused_by={}",
            self.domid,
            self.ports.len(),
            if ports.is_empty() {
                "-".to_string()
            } else {
                ports.join(",")
            },
            self.clients.len(),
            self.conns.len(),
            s.msgs_in,
            s.bytes_in,
            s.msgs_out,
            s.bytes_out,
            s.corrupt,
            s.dropped,
            s.acl_refused,
            if refused.is_empty() {
                "-".to_string()
            } else {
                refused.join(",")
            }
        )
    }
}
