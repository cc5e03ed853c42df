// SPDX-License-Identifier: MIT OR Apache-2.0
//! The event loop: one thread owns the hypervisor interface, every ring and every client.
//!
//! This module is the loop and the glue between the tables; each concern has its own module
//! and type:
//!
//! | module | owns |
//! |---|---|
//! | `ports` | `ports::PortTable`: every registered ring, listening backlogs, peer reply rings |
//! | `session` | `session::Clients`: every client connection, its socket and bounded output |
//! | `conn` | `conn::Conn`: the V4V side of one stream, pure (no I/O) |
//! | `streams` | `streams::StreamTable`: who holds each stream, closed streams; stream handlers |
//! | `dgram` | datagram clients' frames and their parked send |
//! | `tx` | `tx::Tx`: `sendv`, waiting for ring space, parked clients, the RST queue |
//! | `requests` | the request line and starting what it asks |
//! | `stats` | `stats::Stats` and the one place `STATUS` is rendered |
//! | `creds` | every libc call (peer credentials, hang-up checks) |
//! | `acl` | ACL requests and dom0's rules file |
//! | `names` | the names this domain sees, `RESOLVE`/`NAMEOF`, dom0's upkeep of rules by name |
//! | `resume` | noticing that the domain was restored or migrated, and serving as the new one |
//! | `counted` | counting the hypercalls the daemon makes |
//!
//! Nothing is shared with other threads except the [`DaemonHandle`]'s stop flag and waker.
//!
//! Flow control: a client is read only when its data can be sent now (credit and no message
//! stuck on a full ring); a ring is drained only into bounded buffers (stream buffers are bounded
//! by the credit we granted, datagram ports stop being drained while their client's buffer is
//! full).
//!
//! Waking senders: a sender waits on one of our rings only after a send found it too full for
//! its message (`docs/abi.md`, "Waiters"), so a drain notifies only when the ring may have been
//! that full for a message of the size it carries (`Daemon::drain_port`). A sender whose message
//! is larger than any the ring took so far is woken by the notify owed after every drain that
//! skipped one, at most `NOTIFY_OWED` later: nobody waits forever.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mio::net::UnixListener;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use tracing::{debug, info, warn};
use v4v::abi::{Addr, DOMID_ANY, DomId, PROTO_DGRAM, PROTO_STREAM, RingId};
use v4v::{HvError, Hypervisor, ring};

/// `warn!` about something user `uid` caused, rate-limited per uid (`warnings.rs`).
macro_rules! user_warn {
    ($daemon:expr, $uid:expr, $($arg:tt)+) => {
        if $daemon.warnings.allow($uid) {
            tracing::warn!($($arg)+);
        }
    };
}

mod acl;
mod bell;
mod budget;
mod conn;
mod counted;
mod creds;
mod dgram;
#[cfg(test)]
mod explore;
mod fdpass;
mod names;
mod ports;
mod recv_chan;
mod requests;
mod resume;
mod session;
mod shm_stream;
mod stats;
mod streams;
mod tx;
mod warnings;

pub use counted::HvCounts;
pub use creds::Cred;
pub use streams::CloseReason;

use crate::{Config, DaemonError, wire};
use conn::ConnKey;
use ports::{PortKind, PortTable};
use session::{ClientState, Clients};
use stats::Stats;
use streams::{KEEPALIVE, StreamTable};
use tx::Tx;

/// The event sources of the loop, decoded from mio tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// The Unix listening socket: new clients.
    Listener,
    /// The hypervisor's V4V event: a ring got data, or space we waited for.
    Hypervisor,
    /// [`DaemonHandle::stop`].
    Waker,
    /// The name directory's watch (xenstore).
    Names,
    /// One client connection.
    Client(usize),
    /// A datagram client's eventfd doorbell (`bell.rs`).
    ClientBell(usize),
}

const TOKEN_LISTENER: Token = Token(0);
const TOKEN_HV: Token = Token(1);
const TOKEN_WAKER: Token = Token(2);
const TOKEN_NAMES: Token = Token(3);
const FIRST_CLIENT: usize = 16;
/// How long after a drain of a datagram ring that did not notify (no sender could have been
/// waiting for a message the size of the largest the ring carried) a notify is made anyway: for a
/// sender of a bigger one. On a ring where streams arrive the estimate counts a full stream
/// message, the largest a peer daemon with our chunk size sends, so the notify owed waits for the
/// next keepalive tick, which wakes the loop anyway; otherwise an idle stream's keepalive cost
/// each daemon a third wake-up a second (the tick, the peer's ping, this notify).
const NOTIFY_OWED: Duration = Duration::from_millis(5);

impl Source {
    fn of(t: Token) -> Self {
        match t {
            TOKEN_LISTENER => Source::Listener,
            TOKEN_HV => Source::Hypervisor,
            TOKEN_WAKER => Source::Waker,
            TOKEN_NAMES => Source::Names,
            Token(n) if n & bell::BELL_BIT != 0 => Source::ClientBell(n & !bell::BELL_BIT),
            Token(n) => Source::Client(n),
        }
    }
}

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

/// The daemon core. Create with [`Daemon::new`], run with [`Daemon::run`].
pub struct Daemon {
    poll: Poll,
    hv: Box<dyn Hypervisor>,
    domid: DomId,
    listener: UnixListener,
    cfg: Config,
    clients: Clients,
    ports: PortTable,
    streams: StreamTable,
    tx: Tx,
    stats: Stats,
    next_keepalive: Instant,
    /// Clients to pump after the current event: handlers wake each other through this list
    /// instead of calling each other.
    ready: Vec<usize>,
    /// Clients to pump again after the next poll, not before: a pump that stopped early so
    /// that one client cannot keep the loop (`wake_later`).
    later: Vec<usize>,
    /// Per-uid memory budgets.
    budgets: budget::Budgets,
    /// Per-uid rate limits of the warnings users cause.
    warnings: warnings::WarnLimiter,
    stop: Arc<AtomicBool>,
    reload: Arc<AtomicBool>,
    waker: Arc<Waker>,
    /// Set when the hypervisor interface itself failed: the loop ends with this error.
    lost: Option<HvError>,
    /// The domain's ring limit when the daemon started.
    max_rings: u32,
    /// Where names come from, and the names this domain sees (`names.rs`).
    name_source: names::NameSource,
    names: names::NameView,
    /// dom0: a change of names is not in the table or the published directory yet.
    names_dirty: bool,
    /// dom0: the ACL rules as written (names kept), in table order; `None` elsewhere.
    acl_specs: Option<Vec<v4v::acl::RuleSpec>>,
    /// dom0: the table as v4vd last wrote it (`acl_specs` resolved then).
    acl_written: Vec<v4v::acl::Rule>,
    /// The hypercalls made.
    counts: Arc<HvCounts>,
    /// When a notify skipped by a drain is made anyway ([`NOTIFY_OWED`]).
    notify_owed: Option<Instant>,
    /// Datagram clients whose ACK is held back (`SEND_F_LAZY`), with when it is due, in that
    /// order (`dgram.rs`).
    lazy_acks: std::collections::VecDeque<(Instant, usize)>,
    /// Reused buffers: a message read from a ring, a stream message built for `sendv`.
    ring_buf: Vec<u8>,
    send_buf: Vec<u8>,
    /// The service manager to tell of readiness and stopping, and how often the watchdog
    /// wants `WATCHDOG=1` with the next time it is due.
    notifier: Option<Notifier>,
    /// Where clients' doorbells register (and deregister when they drop), and how many are held:
    /// each is a descriptor, counted with the clients' own against `max_clients`.
    bell_registry: Arc<mio::Registry>,
    live_bells: Arc<std::sync::atomic::AtomicUsize>,
}

/// The service manager's notify socket and its watchdog, as the loop uses them.
struct Notifier {
    socket: crate::systemd::Notifier,
    watchdog: Option<(std::time::Duration, Instant)>,
}

impl Daemon {
    /// A daemon for the domain behind `hv`, serving clients that connect to `listener`.
    pub fn new(
        hv: Box<dyn Hypervisor>,
        listener: std::os::unix::net::UnixListener,
        cfg: Config,
    ) -> Result<Self, DaemonError> {
        cfg.validate()?;
        let mut cfg = cfg;
        // Clients never take the descriptors rings and the daemon itself need.
        if let Some(n) = creds::descriptor_limit() {
            let budget = n.saturating_sub(n / 8 + 64);
            let budget = usize::try_from(budget)
                .unwrap_or(usize::MAX)
                .max(2 * session::ROOT_RESERVE);
            if budget < cfg.max_clients {
                info!(
                    descriptors = n,
                    clients = budget,
                    "clients limited by the descriptor limit"
                );
                cfg.max_clients = budget;
            }
        }
        let info = hv.info()?;
        let counts = Arc::new(HvCounts::default());
        let hv: Box<dyn Hypervisor> = Box::new(counted::Counted {
            inner: hv,
            counts: counts.clone(),
        });
        listener.set_nonblocking(true)?;
        let mut listener = UnixListener::from_std(listener);
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut listener, TOKEN_LISTENER, Interest::READABLE)?;
        let hv_fd = hv.event_fd().as_raw_fd();
        poll.registry()
            .register(&mut SourceFd(&hv_fd), TOKEN_HV, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), TOKEN_WAKER)?);
        let bell_registry = Arc::new(poll.registry().try_clone()?);
        info!(domid = info.domid, "v4vd ready");
        let budgets = budget::Budgets::new(cfg.max_buffer_per_user);
        let mut d = Daemon {
            poll,
            hv,
            domid: info.domid,
            listener,
            cfg,
            clients: Clients::new(FIRST_CLIENT),
            ports: PortTable::new(),
            streams: StreamTable::new(),
            tx: Tx::new(info.domid),
            stats: Stats::default(),
            next_keepalive: Instant::now() + KEEPALIVE,
            ready: Vec::new(),
            later: Vec::new(),
            warnings: warnings::WarnLimiter::new(Instant::now()),
            budgets,
            stop: Arc::new(AtomicBool::new(false)),
            reload: Arc::new(AtomicBool::new(false)),
            waker,
            lost: None,
            max_rings: info.max_rings,
            name_source: names::NameSource::Unavailable(String::new()),
            names: names::NameView::default(),
            names_dirty: false,
            acl_specs: None,
            acl_written: Vec::new(),
            notifier: None,
            counts,
            notify_owed: None,
            lazy_acks: std::collections::VecDeque::new(),
            ring_buf: Vec::new(),
            send_buf: Vec::new(),
            bell_registry,
            live_bells: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
        };
        d.open_names()?;
        if let Some(fd) = d.names_watch_fd() {
            d.poll
                .registry()
                .register(&mut SourceFd(&fd), TOKEN_NAMES, Interest::READABLE)?;
        }
        if d.domid == 0
            && let Ok(t) = v4v::acl::read_table(&*d.hv)
        {
            d.acl_specs = Some(t.iter().copied().map(v4v::acl::RuleSpec::from).collect());
            d.acl_written = t;
        }
        // dom0's rules apply before any client is served.
        d.load_acl_file(true)?;
        if d.domid == 0 {
            d.check_names(true);
        }
        Ok(d)
    }

    /// The domain this daemon serves.
    pub fn domid(&self) -> DomId {
        self.domid
    }

    /// The hypercalls this daemon made so far (live: read it while the daemon runs).
    pub fn hv_counts(&self) -> Arc<HvCounts> {
        self.counts.clone()
    }

    /// A handle to stop the loop from another thread.
    pub fn handle(&self) -> DaemonHandle {
        DaemonHandle {
            stop: self.stop.clone(),
            reload: self.reload.clone(),
            waker: self.waker.clone(),
        }
    }

    /// Tells the service manager behind `socket` (systemd's `$NOTIFY_SOCKET`) `READY=1` when
    /// [`Daemon::run`] starts serving, `WATCHDOG=1` every `watchdog` from the event loop (so a
    /// loop that stops turning stops the pings), and `STOPPING=1` on the way out.
    pub fn set_notifier(
        &mut self,
        socket: crate::systemd::Notifier,
        watchdog: Option<std::time::Duration>,
    ) {
        self.notifier = Some(Notifier {
            socket,
            watchdog: watchdog.map(|d| (d, Instant::now())),
        });
    }

    fn notify(&self, state: &str) {
        if let Some(n) = &self.notifier
            && let Err(e) = n.socket.notify(state)
        {
            warn!("telling the service manager {state:?}: {e}");
        }
    }

    /// Sends `WATCHDOG=1` when it is due; the next time it is due.
    fn watchdog(&mut self, now: Instant) -> Option<Instant> {
        let n = self.notifier.as_mut()?;
        let (every, due) = n.watchdog.as_mut()?;
        if *due <= now {
            *due = now + *every;
            if let Err(e) = n.socket.notify("WATCHDOG=1") {
                warn!("watchdog keep-alive: {e}");
            }
        }
        Some(*due)
    }

    /// Runs until stopped. Resets all streams and unregisters every ring on the way out.
    pub fn run(mut self) -> Result<(), DaemonError> {
        let mut events = Events::with_capacity(256);
        // Anything that arrived before we registered.
        self.on_hv_event();
        // The ACL file is applied (in `new`) and the socket listens: clients may come.
        self.notify(&format!(
            "READY=1\nSTATUS=serving domain {} ({} clients max)",
            self.domid, self.cfg.max_clients
        ));
        while !self.stop.load(Ordering::SeqCst) {
            let now = Instant::now();
            let mut deadline = self.next_keepalive;
            if let Some(b) = self.tx.deadline() {
                deadline = deadline.min(b);
            }
            if let Some(w) = self.watchdog(now) {
                deadline = deadline.min(w);
            }
            if let Some(n) = self.notify_owed {
                deadline = deadline.min(n);
            }
            if let Some(a) = self.lazy_ack_deadline() {
                deadline = deadline.min(a);
            }
            let mut timeout = deadline.saturating_duration_since(now);
            if !self.later.is_empty() {
                timeout = Duration::ZERO;
            }
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e.into());
            }
            self.counts.woke();
            for ev in events.iter() {
                match Source::of(ev.token()) {
                    Source::Listener => self.accept_clients(),
                    Source::Hypervisor => self.on_hv_event(),
                    Source::Waker => {}
                    // A restore fires every watch: serve as the new domain before anything else.
                    Source::Names => {
                        self.check_resumed();
                        self.check_names(false);
                    }
                    Source::Client(t) => {
                        self.dgram_readable(t);
                        self.pump_client(t);
                    }
                    // Its channel has records, or room: the socket has nothing new.
                    Source::ClientBell(t) => self.pump_client(t),
                }
                self.run_ready();
            }
            let now = Instant::now();
            if self.notify_owed.is_some_and(|n| n <= now) {
                self.notify_now();
            }
            self.send_due_acks(now);
            if self.tx.busy_due(now) {
                self.retry_blocked(true);
            } else if self.tx.check_due(now) {
                self.retry_blocked(false);
            }
            if self.reload.swap(false, Ordering::SeqCst) {
                self.reload_acl_file();
            }
            if self.next_keepalive <= now {
                self.next_keepalive = now + KEEPALIVE;
                self.check_resumed();
                self.check_names(false);
                self.keepalive(now);
                self.expire_handshakes(now);
                self.unpace();
                for (uid, n) in self.warnings.roll(now) {
                    warn!(
                        uid,
                        suppressed = n,
                        "suppressed {n} more warnings about uid {uid} in the last {} s",
                        warnings::WINDOW.as_secs()
                    );
                }
            }
            // After every event of this poll: the clients whose pump stopped early.
            self.ready.append(&mut self.later);
            self.run_ready();
            self.reap();
        }
        self.shutdown();
        match self.lost {
            Some(e) => Err(DaemonError::HypervisorLost(e)),
            None => Ok(()),
        }
    }

    fn shutdown(&mut self) {
        info!(
            sendv = self.counts.sendv(),
            notify = self.counts.notify(),
            msgs_in = self.stats.msgs_in,
            bytes_in = self.stats.bytes_in,
            bytes_out = self.stats.bytes_out,
            "v4vd stopping"
        );
        self.notify("STOPPING=1");
        let tokens = self.clients.tokens();
        for t in tokens {
            self.abort_client(t, true, CloseReason::Stopping);
        }
        self.reap();
        let ports = self.ports.ports();
        for p in ports {
            self.release_port(p, true);
        }
    }

    /// Registers a ring for `port` (0: ephemeral) taking messages from `partner`, charged to
    /// `uid` (`None`: the daemon's own).
    fn register_port(
        &mut self,
        port: u32,
        partner: DomId,
        kind: PortKind,
        uid: Option<u32>,
    ) -> Result<u32, HvError> {
        let small = self.cfg.ring_len;
        let ring_len = match kind {
            PortKind::Dgram(_) => small,
            PortKind::Listen(_) | PortKind::Peer(_) => {
                let big = self.cfg.stream_ring();
                if big > small && self.room_for_big_ring(big, small) {
                    big
                } else {
                    small
                }
            }
        };
        self.ports
            .register(&*self.hv, self.domid, ring_len, port, partner, kind, uid)
    }

    /// Whether a stream ring of `big` bytes leaves the domain's ring pages (`max_ring_pages`)
    /// enough for every other ring it may still register at `small` bytes: a large stream ring
    /// never costs anyone a ring (root's reserve included), it only uses pages nobody could.
    fn room_for_big_ring(&self, big: u32, small: u32) -> bool {
        let Ok(info) = self.hv.info() else {
            return false;
        };
        let pages = |len: u32| (ring::ring_bytes(len) as u64).div_ceil(4096);
        let others = u64::from(info.max_rings.saturating_sub(info.nr_rings + 1));
        let free = u64::from(info.max_ring_pages.saturating_sub(info.nr_ring_pages));
        pages(big) + others * pages(small) <= free
    }

    /// Unregisters a port's ring if nothing uses it any more (or unconditionally with `force`).
    /// A listening port nobody listens on any more refuses its backlog (RST), even while
    /// accepted streams keep its ring.
    fn release_port(&mut self, port: u32, force: bool) {
        let refused: Vec<(ConnKey, u32, usize)> = match self.ports.listen_mut(port) {
            Some(l) if force || l.abandoned() => {
                let uid = l.uid;
                l.backlog
                    .drain(..)
                    .map(|s| (s.conn.key, uid, s.reserved))
                    .collect()
            }
            _ => Vec::new(),
        };
        for (key, uid, reserved) in refused {
            self.budgets.release(uid, reserved);
            self.streams.remove(&key);
            self.send_rst(key.ring_port, key.peer, key.conid);
        }
        if let Some(p) = self.ports.take(port, force) {
            PortTable::unregister(&*self.hv, port, &p, self.lost.is_some());
        }
    }

    // ---- hypervisor events ----------------------------------------------------------------

    fn on_hv_event(&mut self) {
        // One call takes everything pending (every backend drains its descriptor); an event
        // raised after it is a new edge for the poll, so a second call would only read nothing.
        match self.hv.take_event() {
            Ok(_) => {}
            Err(e) if e.is_interface_lost() => {
                // The simulator exited (or our domain was destroyed): nothing can work.
                self.lost = Some(e);
                self.stop.store(true, Ordering::SeqCst);
                return;
            }
            Err(e) => warn!("take_event: {e}"),
        }
        // An empty ring's drain would consume nothing and want no notify: only the others.
        let ports = self.ports.with_messages();
        let mut wanted = false;
        for p in ports {
            wanted |= self.drain_port(p);
        }
        if wanted {
            self.notify_now();
        }
        self.retry_rsts();
        if self.tx.event(Instant::now()) {
            self.retry_blocked(false);
        }
    }

    /// Wakes the senders waiting on our rings (`notify` without entries); no notify is owed.
    fn notify_now(&mut self) {
        self.notify_owed = None;
        if let Err(e) = self.hv.notify(None) {
            warn!("notify: {e}");
        }
    }

    /// Consumes what the port's ring holds, as far as bounded buffers allow. Returns whether a
    /// notify is wanted now: a sender could be waiting, because at some point since the last look
    /// the ring had too little room for a message the size of the largest it carries. (Between
    /// two looks the ring only fills; a look after a consume counts the consumed slot as still
    /// used, so the estimate never misses a fuller moment.) A drain that consumed but wants no
    /// notify leaves one owed ([`NOTIFY_OWED`]).
    fn drain_port(&mut self, port: u32) -> bool {
        self.counts.drained();
        let mut buf = std::mem::take(&mut self.ring_buf);
        let wanted = self.drain_port_into(port, &mut buf);
        self.ring_buf = buf;
        wanted
    }

    fn drain_port_into(&mut self, port: u32, buf: &mut Vec<u8>) -> bool {
        let mut consumed = false;
        let mut fullest = 0u64;
        let mut last_slot = 0u64;
        let stream_msg = (wire::HEADER + self.chunk()) as u64;
        loop {
            let Some(p) = self.ports.get(port) else {
                return consumed;
            };
            // How full the ring may have been since the last look.
            let used = p.reader.available().map_or(u64::MAX, u64::from);
            fullest = fullest.max(used.saturating_add(last_slot));
            // Stream data for a client: straight from the ring (only where streams arrive, and
            // only when a message is there).
            let streams = !matches!(p.kind, PortKind::Dgram(_));
            if used > 0
                && streams
                && let Some(len) = self.stream_data_in_place(port, buf)
            {
                consumed = true;
                last_slot = ring::message_slot(u64::from(len));
                self.took_message(port, len);
                continue;
            }
            let Some(p) = self.ports.get(port) else {
                return consumed;
            };
            // Whether a sender may be waiting for the room just made: one whose message did not
            // fit. The biggest message seen stands for it, and on a ring where streams arrive
            // also a full stream message. (Not on a datagram ring: a stream message is as big as
            // a whole default ring, so every drain would notify.)
            let biggest = match p.kind {
                PortKind::Dgram(_) => p.largest,
                _ => p.largest.max(stream_msg),
            };
            let wanted = || {
                let free = u64::from(p.reader.len()).saturating_sub(fullest);
                ring::message_slot(biggest) >= free
            };
            if let PortKind::Dgram(t) = p.kind
                && self
                    .clients
                    .get(t)
                    .is_some_and(|c| c.out_full(self.cfg.dgram_buffer))
            {
                // The client is not reading: leave the rest in the ring (its senders wait).
                return self.after_drain(consumed, wanted(), false);
            }
            let r = match p.reader.recv(buf) {
                Ok(Some(r)) => r,
                Ok(None) => {
                    let wanted = wanted();
                    return self.after_drain(consumed, wanted, streams);
                }
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
            last_slot = ring::message_slot(u64::from(r.len));
            self.took_message(port, r.len);
            match r.message_type {
                PROTO_DGRAM => self.on_dgram(port, r.source, buf),
                PROTO_STREAM => self.on_stream(port, r.source, buf),
                other => {
                    self.stats.dropped += 1;
                    debug!(port, "dropping message of unknown type {other:#x}");
                }
            }
        }
    }

    /// Books a message of `len` bytes taken from `port`'s ring: its size for the notify
    /// estimate, and the counters.
    fn took_message(&mut self, port: u32, len: u32) {
        self.ports.saw_message(port, len);
        self.stats.msgs_in += 1;
        self.stats.bytes_in += u64::from(len);
    }

    /// The end of a drain: whether to notify now; else, if it consumed, a notify is owed (at the
    /// next keepalive tick after a drain of a ring where `streams` arrive, [`NOTIFY_OWED`]).
    fn after_drain(&mut self, consumed: bool, wanted: bool, streams: bool) -> bool {
        if consumed && !wanted {
            // (A tick due already, the drain being part of its wake-up, makes it now.)
            let due = if streams {
                self.next_keepalive
            } else {
                Instant::now() + NOTIFY_OWED
            };
            self.notify_owed = Some(self.notify_owed.map_or(due, |d| d.min(due)));
        }
        consumed && wanted
    }

    /// Queues client `t` to be pumped after the current event.
    fn wake(&mut self, t: usize) {
        self.ready.push(t);
    }

    /// Queues client `t` to be pumped after the next poll's events: after everyone else.
    fn wake_later(&mut self, t: usize) {
        self.later.push(t);
    }

    /// Pumps the clients woken so far (and those they wake).
    fn run_ready(&mut self) {
        while !self.ready.is_empty() {
            let mut woken = std::mem::take(&mut self.ready);
            woken.sort_unstable();
            woken.dedup();
            for t in woken {
                self.pump_client(t);
            }
        }
    }

    /// Moves client `t` along in whatever state it is.
    fn pump_client(&mut self, t: usize) {
        let Some(c) = self.clients.get_mut(t) else {
            return;
        };
        let was_full = c.out_full(self.cfg.dgram_buffer);
        match &mut c.state {
            ClientState::Handshake(_) => self.pump_handshake(t),
            ClientState::Closing => {
                if c.flush().is_err() || c.out.is_empty() {
                    c.dead = true;
                }
            }
            ClientState::Dgram(d) => {
                let port = d.port;
                // A parked client is not read, so its end of file would go unseen: a sender that
                // vanished while waiting for ring space must not keep its port and ring. Nor is
                // one whose output is full, and with a receive channel no write to its socket
                // fails either: a reader that vanished must not keep its port and ring.
                let parked = d.parked();
                if (parked || was_full) && creds::hung_up(&c.stream) {
                    c.dead = true;
                    return;
                }
                if !self.dgram_flush(t) {
                    return;
                }
                let Some(c) = self.clients.get(t) else {
                    return;
                };
                let now_room = !c.out_full(self.cfg.dgram_buffer);
                self.pump_dgram(t);
                if was_full && now_room && self.drain_port(port) {
                    self.notify_now();
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
                if creds::hung_up(&c.stream) {
                    c.dead = true;
                }
            }
            ClientState::Stream(_) => self.pump_stream(t),
            ClientState::AclLoad(_) => self.pump_acl_load(t),
        }
    }

    /// Removes dead clients and everything they held.
    fn reap(&mut self) {
        // Until no client is left dead: removing one may touch others, which are then looked
        // at (and registered for writable events if they need them) before the loop polls.
        loop {
            let dead = self.clients.take_dead(self.poll.registry());
            if dead.is_empty() {
                return;
            }
            self.remove_clients(dead);
        }
    }

    fn remove_clients(&mut self, dead: Vec<usize>) {
        for t in dead {
            let Some(mut c) = self.clients.remove(t) else {
                continue;
            };
            // Best effort: a final reply line (ERR) if the socket takes it.
            let _ = c.flush();
            let _ = self.poll.registry().deregister(&mut c.stream);
            self.budgets.release(c.cred.uid, c.reserved);
            self.tx.forget(t);
            match c.state {
                ClientState::Dgram(d) => self.release_port(d.port, true),
                ClientState::Listen(p) => {
                    if let Some(l) = self.ports.listen_mut(p) {
                        l.controls.retain(|&x| x != t);
                    }
                    self.release_port(p, false);
                }
                ClientState::Accept(p, _) => {
                    if let Some(l) = self.ports.listen_mut(p) {
                        l.acceptors.retain(|&x| x != t);
                    }
                    self.release_port(p, false);
                }
                ClientState::Stream(conn) => {
                    self.streams.remove(&conn.key);
                    self.ports.add_conn(conn.key.ring_port, -1);
                    self.release_port(conn.key.ring_port, false);
                }
                ClientState::Handshake(_) | ClientState::Closing | ClientState::AclLoad(_) => {}
            }
            debug!(token = t, "client removed");
        }
    }
}
