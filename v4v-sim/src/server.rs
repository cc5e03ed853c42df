// SPDX-License-Identifier: MIT OR Apache-2.0
//! The simulator process: the [`Model`] served to guest processes over a Unix socket.
//!
//! One thread runs a `poll(2)` loop over the listening socket, a shutdown descriptor and every
//! guest connection. Each connection claims a domid with a hello and then sends one request at a
//! time; the reply carries the model's return value. Ring memory arrives as a sealed memfd and
//! is mapped here, so the model writes messages straight into the guest's pages. Each guest's
//! event channel is a pipe (a socket pair before protocol version 3): when the model signals a
//! domain, the loop writes a byte into it. A connection that closes is a destroyed domain. A
//! version-2 or version-3 guest also has a request and a reply channel in shared memory that we
//! create at hello ([`v4v::chan`]) and a doorbell (two pipes; a socket pair with version 2)
//! whose receiving end is in the same poll set: requests are copied out of the channel, decoded
//! by the same codec and answered in the reply channel, at most 64 per turn.
//! `docs/sim.md` specifies it all.
//!
//! Nothing a guest sends can stop the loop or reach another domain: frames are decoded by the
//! checked codec in [`v4v::backend::sim::protocol`], descriptors are vetted before they are mapped, every
//! read and write is non-blocking, a guest that stops reading its replies is disconnected after
//! [`ServerConfig::reply_timeout`], and a panic while serving one request (a model bug) costs
//! only that guest its connection.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use thiserror::Error;
use tracing::{debug, error, info, trace, warn};
use v4v::abi::{self, DOMID_FIRST_RESERVED, DomId, errno};
use v4v::backend::sim::protocol::{
    self as proto, ChannelSizes, FRAME_HEADER_SIZE, FrameHeader, KIND_FATAL, Reply, ReplyData,
    Request, fdpass,
};
use v4v::backend::sim::{ignore_sigpipe_if_default, ring_byte, set_nonblocking};
use v4v::chan::{ChanMemory, Consumer, Peeked, Producer, Pushed};
use v4v::shmem::{PAGE_SIZE, RingMemory};
use v4v::{HvError, Hypervisor};

use crate::model::{Model, ModelDomain, ModelError};

/// How the simulator listens and what it tolerates.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The Unix socket to create.
    pub socket: PathBuf,
    /// Its permission bits: the socket's mode is the simulator's only access control.
    pub mode: u32,
    /// Connections served at once; more are accepted and closed at once.
    pub max_guests: usize,
    /// How long a guest may leave a reply unread (no progress writing it) before it is dropped.
    pub reply_timeout: Duration,
    /// How long a new connection may take to send its hello.
    pub hello_timeout: Duration,
}

impl ServerConfig {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        ServerConfig {
            socket: socket.into(),
            mode: 0o600,
            max_guests: 256,
            reply_timeout: Duration::from_secs(10),
            hello_timeout: Duration::from_secs(10),
        }
    }
}

/// Why the simulator could not start or had to stop.
#[derive(Debug, Error)]
pub enum ServerError {
    #[error("{path} is in use by a running simulator")]
    InUse { path: PathBuf },
    #[error("{path} exists and is not a socket; refusing to replace it")]
    NotASocket { path: PathBuf },
    #[error("cannot create the socket {path}: {source}")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("event loop: {0}")]
    Poll(#[source] std::io::Error),
}

/// Bytes read from a connection at most per wake-up: a busy guest cannot starve the others.
const READ_CHUNK: usize = 256 * 1024;
/// Frames served per connection per wake-up, for the same reason.
const FRAMES_PER_TURN: usize = 64;
/// Descriptors a connection may have in flight (received, not yet claimed by a frame).
const MAX_QUEUED_FDS: usize = 4;
/// Connections accepted per wake-up.
const ACCEPTS_PER_TURN: usize = 64;
/// A version-2 guest's request channel: records up to 256 KiB − 8, so that a sendv of a full
/// stream message (v4vd's chunk, 256 KiB − 64, and its header) or a batch of several smaller
/// ones travels in one (larger requests use the socket). Pages are allocated as the guest
/// touches them.
pub const REQUEST_CHANNEL: usize = 1 << 20;
/// A version-2 guest's reply channel: records up to 32 KiB, more than the largest reply (a
/// tables_list of every rule, about 20 KiB).
const REPLY_CHANNEL: usize = 1 << 17;
/// Channel records served per guest per wake-up, and bytes: a busy guest cannot starve others.
const RECORDS_PER_TURN: usize = 64;
const RECORD_BYTES_PER_TURN: usize = READ_CHUNK;
/// A `SENDV` record this long or longer is served in place: its payload is copied once, from
/// the request channel into the ring, not into a buffer of ours first. (Below it, the second
/// copy costs less than the bookkeeping saved.)
const IN_PLACE_MIN: usize = 4096;
/// What is copied out of such a record to decode it: its frame header and the longest sendv
/// meta (two addresses, the message type, iov count, flags and the iovs' lengths).
const IN_PLACE_HEAD: usize = FRAME_HEADER_SIZE + proto::SENDV_FIXED + 4 * proto::MAX_WIRE_IOV;
/// Doorbell bytes drained per guest per wake-up (a guest ringing in a loop costs one read).
const DOORBELL_DRAIN: usize = 256;

/// The simulator: the model, the socket and the connected guests.
pub struct Server {
    config: ServerConfig,
    listener: UnixListener,
    /// The socket's identity, so that only our own socket is removed at exit.
    socket_id: (u64, u64),
    model: Model,
    conns: BTreeMap<u64, Conn>,
    domids: HashMap<DomId, u64>,
    /// The name directory (`docs/sim.md`, "Names").
    names: NameDir,
    next_token: u64,
    scratch: Vec<u8>,
    signalled: Vec<DomId>,
}

struct Guest {
    domid: DomId,
    dom: ModelDomain,
    /// Our end of the guest's event channel; the guest holds the other.
    event_tx: OwnedFd,
    /// The shared-memory channels of a version-2 guest. Taken out while it is served.
    chan: Option<GuestChan>,
}

/// Our ends of a version-2 guest's channels (docs/sim.md, "Channel").
struct GuestChan {
    requests: Consumer,
    replies: Producer,
    /// Where the guest rings us: the read end of a pipe (version 3) or our end of the doorbell
    /// socket pair (version 2). Non-blocking, and its open file description is ours alone.
    bell_in: OwnedFd,
    /// Where we ring the guest: the write end of a pipe, or the same socket. Non-blocking.
    bell_out: OwnedFd,
    /// The one reply that did not fit in the reply channel: the guest is not reading. No
    /// request is taken until it is out, so this is all we ever buffer for the guest.
    pending: Option<Vec<u8>>,
    /// When the pending reply must have gone by.
    pending_deadline: Option<Instant>,
    /// Records are left beyond this turn's budget: serve again without sleeping.
    more: bool,
    /// The request being served, copied out of the channel.
    buf: Vec<u8>,
}

impl GuestChan {
    /// Publishes a reply, or keeps it pending when the guest has not made room.
    fn push_reply(
        &mut self,
        frame: Vec<u8>,
        now: Instant,
        timeout: Duration,
    ) -> Result<(), &'static str> {
        let bad = |_| "corrupted its reply channel";
        loop {
            match self.replies.push(&[&frame]).map_err(bad)? {
                Pushed::Done { doorbell } => {
                    if doorbell {
                        ring(self.bell_out.as_fd());
                    }
                    self.pending = None;
                    self.pending_deadline = None;
                    return Ok(());
                }
                Pushed::Full => {
                    if self.replies.wait_for_space(frame.len()).map_err(bad)? {
                        continue;
                    }
                    self.pending_deadline.get_or_insert(now + timeout);
                    self.pending = Some(frame);
                    return Ok(());
                }
            }
        }
    }

    /// Takes the doorbell's pending bytes: one read, at most `DOORBELL_DRAIN`.
    fn drain_doorbell(&self) -> Result<(), &'static str> {
        let mut buf = [0u8; DOORBELL_DRAIN];
        // SAFETY: reads into a live local buffer of the stated length from our non-blocking end.
        let n = unsafe { libc::read(self.bell_in.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n == 0 {
            return Err("closed its doorbell");
        }
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
            ) {
                return Err("doorbell lost");
            }
        }
        Ok(())
    }
}

/// Rings a guest's doorbell or event channel: one byte, never blocking (our end is
/// non-blocking and its open file description is ours alone). A full pipe or socket means a ring
/// is pending already; a closed one means the guest is going away (its connection will say so),
/// and `SIGPIPE` is ignored ([`Server::bind`]).
fn ring(fd: BorrowedFd<'_>) {
    let _ = ring_byte(fd);
}

struct Conn {
    sock: UnixStream,
    peer: String,
    guest: Option<Guest>,
    accepted: Instant,
    inbuf: Vec<u8>,
    fds: VecDeque<OwnedFd>,
    out: Vec<u8>,
    out_pos: usize,
    out_fds: Vec<OwnedFd>,
    /// When the pending output must have made progress by.
    out_deadline: Option<Instant>,
    /// A fatal frame has been queued: send it, then close.
    closing: bool,
}

impl Conn {
    fn label(&self) -> String {
        match &self.guest {
            Some(g) => format!("dom{} ({})", g.domid, self.peer),
            None => format!("unclaimed ({})", self.peer),
        }
    }

    /// The next complete frame's header and total length, if one is buffered.
    fn complete_frame(&self) -> Result<Option<(FrameHeader, usize)>, proto::ProtocolError> {
        let Some(head) = self.inbuf.first_chunk::<FRAME_HEADER_SIZE>() else {
            // An impossible length is fatal as soon as it is there.
            if let Some(len) = self.inbuf.first_chunk::<4>() {
                FrameHeader::check_len_prefix(len)?;
            }
            return Ok(None);
        };
        let h = FrameHeader::parse(head)?;
        let total = FRAME_HEADER_SIZE + h.body_len as usize;
        Ok((self.inbuf.len() >= total).then_some((h, total)))
    }

    fn queue(&mut self, frame: Vec<u8>, fds: Vec<OwnedFd>) {
        if self.out.is_empty() {
            self.out = frame;
            self.out_pos = 0;
        } else {
            self.out.extend_from_slice(&frame);
        }
        self.out_fds.extend(fds);
    }

    /// Writes pending output without blocking. Returns false when the connection is dead.
    fn flush(&mut self, now: Instant, timeout: Duration) -> bool {
        while self.out_pos < self.out.len() {
            let fds: Vec<BorrowedFd<'_>> = self.out_fds.iter().map(|f| f.as_fd()).collect();
            match fdpass::send(self.sock.as_fd(), &self.out[self.out_pos..], &fds, true) {
                Ok(0) => return false,
                Ok(n) => {
                    self.out_pos += n;
                    self.out_fds.clear();
                    self.out_deadline = Some(now + timeout);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    self.out_deadline.get_or_insert(now + timeout);
                    return true;
                }
                Err(e) => {
                    debug!("{}: write failed: {e}", self.label());
                    return false;
                }
            }
        }
        self.out.clear();
        self.out_pos = 0;
        self.out_deadline = None;
        true
    }

    fn output_pending(&self) -> bool {
        self.out_pos < self.out.len()
    }
}

/// What serving one connection for a turn ended with.
enum Turn {
    Keep,
    Close(&'static str),
}

impl Server {
    /// Creates the socket (replacing a stale one, never a live one) with `config.mode`.
    pub fn bind(config: ServerConfig, model: Model) -> Result<Self, ServerError> {
        let path = config.socket.clone();
        if let Ok(meta) = std::fs::symlink_metadata(&path) {
            if !meta.file_type().is_socket() {
                return Err(ServerError::NotASocket { path });
            }
            if UnixStream::connect(&path).is_ok() {
                return Err(ServerError::InUse { path });
            }
            info!("removing stale socket {}", path.display());
            let _ = std::fs::remove_file(&path);
        }
        let bind_err = |source| ServerError::Bind {
            path: path.clone(),
            source,
        };
        // The socket appears at `path` listening and with exactly `mode`: a guest started as soon
        // as the name exists connects.
        let listener = v4v::listen::bind_ready(&path, config.mode).map_err(bind_err)?;
        listener.set_nonblocking(true).map_err(bind_err)?;
        let meta = std::fs::symlink_metadata(&path).map_err(bind_err)?;
        info!("listening on {} (mode {:o})", path.display(), config.mode);
        // Events are forwarded from the model's set of signalled domains (forward_events).
        model.forward_signals_only();
        // A ring of a guest's pipe after the guest died must fail with EPIPE, not kill us.
        ignore_sigpipe_if_default();
        Ok(Server {
            config,
            listener,
            socket_id: (meta.dev(), meta.ino()),
            model,
            conns: BTreeMap::new(),
            domids: HashMap::new(),
            names: NameDir::default(),
            next_token: 0,
            scratch: vec![0u8; READ_CHUNK],
            signalled: Vec::new(),
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.config.socket
    }

    /// Serves guests until `stop` becomes readable (e.g. a signalfd for SIGTERM and SIGINT).
    pub fn run(&mut self, stop: BorrowedFd<'_>) -> Result<(), ServerError> {
        let mut pfds: Vec<libc::pollfd> = Vec::new();
        // Each connection's token and the index of its doorbell's pollfd, if it has one.
        let mut tokens: Vec<(u64, Option<usize>)> = Vec::new();
        loop {
            pfds.clear();
            tokens.clear();
            let pfd = |fd: RawFd, events: i16| libc::pollfd {
                fd,
                events,
                revents: 0,
            };
            pfds.push(pfd(stop.as_raw_fd(), libc::POLLIN));
            pfds.push(pfd(self.listener.as_raw_fd(), libc::POLLIN));
            let mut busy = false;
            let now = Instant::now();
            let mut deadline: Option<Instant> = None;
            for (&t, c) in &self.conns {
                let mut ev = 0;
                if c.output_pending() {
                    ev |= libc::POLLOUT;
                } else if !c.closing {
                    ev |= libc::POLLIN;
                    // Frames already buffered are served without waiting for more input.
                    busy |= matches!(c.complete_frame(), Ok(Some(_)));
                }
                pfds.push(pfd(c.sock.as_raw_fd(), ev));
                let chan = c.guest.as_ref().and_then(|g| g.chan.as_ref());
                let bell = chan.map(|ch| {
                    busy |= ch.more;
                    pfds.push(pfd(ch.bell_in.as_raw_fd(), libc::POLLIN));
                    pfds.len() - 1
                });
                tokens.push((t, bell));
                let d = c.out_deadline.or_else(|| {
                    c.guest
                        .is_none()
                        .then_some(c.accepted + self.config.hello_timeout)
                });
                for d in d.into_iter().chain(chan.and_then(|ch| ch.pending_deadline)) {
                    deadline = Some(deadline.map_or(d, |x| x.min(d)));
                }
            }
            let timeout_ms: i32 = if busy {
                0
            } else {
                deadline.map_or(-1, |d| {
                    d.saturating_duration_since(now).as_millis().min(60_000) as i32 + 1
                })
            };
            // SAFETY: pfds is a live array of pfds.len() pollfd structures.
            let n =
                unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, timeout_ms) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(ServerError::Poll(e));
            }
            if pfds[0].revents != 0 {
                info!("shutting down");
                return Ok(());
            }
            if pfds[1].revents & libc::POLLIN != 0 {
                self.accept();
            }
            let now = Instant::now();
            let mut at = 2;
            for &(t, bell) in &tokens {
                let revents = pfds[at].revents;
                at += 1 + usize::from(bell.is_some());
                let mut turn = self.serve(t, revents, now);
                if let (Turn::Keep, Some(b)) = (&turn, bell) {
                    turn = self.serve_chan(t, pfds[b].revents, now);
                }
                if let Turn::Close(why) = turn {
                    self.close(t, why);
                }
            }
        }
    }

    fn accept(&mut self) {
        for _ in 0..ACCEPTS_PER_TURN {
            let sock = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and the like: leave the connection queued, try again next turn.
                    warn!("accept: {e}");
                    return;
                }
            };
            let peer = peer_name(&sock);
            if self.conns.len() >= self.config.max_guests {
                warn!(
                    "refusing {peer}: {} guests connected already",
                    self.conns.len()
                );
                continue;
            }
            if let Err(e) = sock.set_nonblocking(true) {
                warn!("{peer}: {e}");
                continue;
            }
            debug!("connection from {peer}");
            let token = self.next_token;
            self.next_token += 1;
            self.conns.insert(
                token,
                Conn {
                    sock,
                    peer,
                    guest: None,
                    accepted: Instant::now(),
                    inbuf: Vec::new(),
                    fds: VecDeque::new(),
                    out: Vec::new(),
                    out_pos: 0,
                    out_fds: Vec::new(),
                    out_deadline: None,
                    closing: false,
                },
            );
        }
    }

    /// Serves one connection for one turn of the loop.
    fn serve(&mut self, token: u64, revents: i16, now: Instant) -> Turn {
        let timeout = self.config.reply_timeout;
        let hello_timeout = self.config.hello_timeout;
        let Some(c) = self.conns.get_mut(&token) else {
            return Turn::Keep;
        };
        if c.output_pending() {
            if revents & (libc::POLLOUT | libc::POLLERR | libc::POLLHUP) != 0
                && !c.flush(now, timeout)
            {
                return Turn::Close("connection lost");
            }
            if c.output_pending() {
                return match c.out_deadline {
                    Some(d) if now >= d => Turn::Close("stopped reading its replies"),
                    _ => Turn::Keep,
                };
            }
        }
        if c.closing {
            return Turn::Close("protocol error");
        }
        if c.guest.is_none() && now >= c.accepted + hello_timeout {
            return Turn::Close("no hello in time");
        }
        let mut served = self.serve_frames(token, now);
        if let Turn::Keep = served {
            let Some(c) = self.conns.get_mut(&token) else {
                return Turn::Keep;
            };
            let want_read = revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0;
            if want_read
                && !c.output_pending()
                && !c.closing
                && !matches!(c.complete_frame(), Ok(Some(_)))
            {
                match read_some(c, &mut self.scratch) {
                    Ok(()) => served = self.serve_frames(token, now),
                    Err(why) => return Turn::Close(why),
                }
            }
        }
        // A fatal frame written out in full: close now (one still pending waits for POLLOUT).
        match self.conns.get(&token) {
            Some(c) if c.closing && !c.output_pending() => Turn::Close("protocol error"),
            _ => served,
        }
    }

    /// Serves buffered complete frames, one reply at a time, until output backs up.
    fn serve_frames(&mut self, token: u64, now: Instant) -> Turn {
        let timeout = self.config.reply_timeout;
        for _ in 0..FRAMES_PER_TURN {
            let Some(c) = self.conns.get_mut(&token) else {
                return Turn::Keep;
            };
            if c.output_pending() || c.closing {
                break;
            }
            let (h, total) = match c.complete_frame() {
                Ok(Some(x)) => x,
                Ok(None) => break,
                Err(e) => {
                    warn!("{}: unparseable frame ({e}); disconnecting", c.label());
                    // KIND_FATAL has the reply bit set already, so the frame's kind is itself.
                    c.queue(Reply::error(e.errno()).encode(KIND_FATAL), Vec::new());
                    c.closing = true;
                    c.inbuf.clear();
                    if !c.flush(now, timeout) {
                        return Turn::Close("connection lost");
                    }
                    break;
                }
            };
            let take = usize::from(h.nfds).min(c.fds.len());
            let fds: Vec<OwnedFd> = c.fds.drain(..take).collect();
            let (reply, reply_fds) = self.handle_frame(token, h, total, fds);
            let Some(c) = self.conns.get_mut(&token) else {
                return Turn::Keep;
            };
            c.inbuf.drain(..total);
            if c.inbuf.is_empty() && c.inbuf.capacity() > READ_CHUNK {
                c.inbuf = Vec::new();
            }
            // Events the request caused reach their domains before the reply reaches the caller.
            self.forward_events();
            let Some(c) = self.conns.get_mut(&token) else {
                return Turn::Keep;
            };
            c.queue(reply.encode(h.kind), reply_fds);
            if !c.flush(now, timeout) {
                return Turn::Close("connection lost");
            }
        }
        Turn::Keep
    }

    /// Decodes and serves one frame, catching a panic in the model as a failure of this guest.
    fn handle_frame(
        &mut self,
        token: u64,
        h: FrameHeader,
        total: usize,
        fds: Vec<OwnedFd>,
    ) -> (Reply, Vec<OwnedFd>) {
        let Some(c) = self.conns.get_mut(&token) else {
            return (Reply::error(proto::errno::EIO), Vec::new());
        };
        let label = c.label();
        if fds.len() != usize::from(h.nfds) {
            debug!(
                "{label}: frame declares {} descriptors, {} arrived",
                h.nfds,
                fds.len()
            );
            return (Reply::error(errno::EINVAL), Vec::new());
        }
        let body = &c.inbuf[FRAME_HEADER_SIZE..total];
        let served = serve_request(
            &self.model,
            &mut self.domids,
            &mut self.names,
            token,
            &mut c.guest,
            &label,
            h,
            body,
            fds,
        );
        match served {
            Some(r) => r,
            None => {
                c.closing = true;
                (Reply::error(proto::errno::EIO), Vec::new())
            }
        }
    }

    /// Serves a version-2 guest's channel for one turn: the pending reply first, then up to
    /// [`RECORDS_PER_TURN`] requests (and [`RECORD_BYTES_PER_TURN`] bytes), each copied out of
    /// the shared memory before it is decoded; a big `SENDV` only up to its payload, which goes
    /// from the channel straight into the ring ([`Server::sendv_in_place`]). Anything wrong with
    /// the channel itself costs the guest its connection.
    fn serve_chan(&mut self, token: u64, revents: i16, now: Instant) -> Turn {
        let timeout = self.config.reply_timeout;
        let Some(c) = self.conns.get_mut(&token) else {
            return Turn::Keep;
        };
        let Some(mut ch) = c.guest.as_mut().and_then(|g| g.chan.take()) else {
            return Turn::Keep;
        };
        let turn = self.serve_chan_records(token, &mut ch, revents, now, timeout);
        if let Some(g) = self.conns.get_mut(&token).and_then(|c| c.guest.as_mut()) {
            g.chan = Some(ch);
        }
        match turn {
            Ok(()) => Turn::Keep,
            Err(why) => Turn::Close(why),
        }
    }

    fn serve_chan_records(
        &mut self,
        token: u64,
        ch: &mut GuestChan,
        revents: i16,
        now: Instant,
        timeout: Duration,
    ) -> Result<(), &'static str> {
        const CORRUPT: &str = "corrupted its request channel";
        if revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
            ch.drain_doorbell()?;
        }
        if let Some(frame) = ch.pending.take() {
            ch.push_reply(frame, now, timeout)?;
            if ch.pending.is_some() {
                return match ch.pending_deadline {
                    Some(d) if now >= d => Err("stopped reading its replies"),
                    _ => Ok(()),
                };
            }
        }
        ch.more = false;
        let (mut records, mut bytes) = (0, 0);
        loop {
            if records == RECORDS_PER_TURN || bytes >= RECORD_BYTES_PER_TURN {
                ch.more = true;
                return Ok(());
            }
            let Some(rec) = ch.requests.peek().map_err(|_| CORRUPT)? else {
                // Nothing more: sleep, unless a record arrived meanwhile.
                if ch.requests.prepare_sleep().map_err(|_| CORRUPT)? {
                    return Ok(());
                }
                continue;
            };
            records += 1;
            bytes += rec.len;
            // A big sendv is served before its record is taken: its payload goes from the
            // channel straight into the ring. Any other record is copied out first.
            let in_place = if rec.len >= IN_PLACE_MIN {
                self.sendv_in_place(token, ch, rec)
            } else {
                None
            };
            if in_place.is_none() {
                ch.buf.clear();
                let mem = ch.requests.chan().memory();
                mem.append_to_vec(rec.offset, rec.len, &mut ch.buf)
                    .map_err(|_| CORRUPT)?;
            }
            ch.requests.consume(rec).map_err(|_| CORRUPT)?;
            if ch.requests.space_doorbell_wanted().map_err(|_| CORRUPT)? {
                ring(ch.bell_out.as_fd());
            }
            let (kind, served) = match in_place {
                Some(done) => done,
                None => {
                    // A record is a whole frame; one that is not is a broken channel, not a
                    // request.
                    let (h, body) = proto::split_record(&ch.buf, false).map_err(|e| {
                        debug!("request record: {e}");
                        "sent a record that is not a request frame"
                    })?;
                    let Some(c) = self.conns.get_mut(&token) else {
                        return Ok(());
                    };
                    let label = c.label();
                    let served = serve_request(
                        &self.model,
                        &mut self.domids,
                        &mut self.names,
                        token,
                        &mut c.guest,
                        &label,
                        h,
                        body,
                        Vec::new(),
                    );
                    (h.kind, served.map(|(reply, _)| reply))
                }
            };
            // Events the request caused reach their domains before the reply reaches the caller.
            self.forward_events();
            let Some(reply) = served else {
                let _ = ch.push_reply(Reply::error(proto::errno::EIO).encode(kind), now, timeout);
                return Err("internal error");
            };
            ch.push_reply(reply.encode(kind), now, timeout)?;
            if ch.pending.is_some() {
                return Ok(());
            }
        }
    }

    /// Serves the record `rec` of `ch` in place when it is a well-formed `SENDV` (its head
    /// copied out and decoded, its payload copied from the channel straight into the ring):
    /// the request's kind and the reply, as [`serve_request`] gives it (`None`: an internal
    /// error). `None`: anything else, or anything wrong with it, which the caller serves (or
    /// refuses) the ordinary way, from a copy of the whole record.
    fn sendv_in_place(
        &mut self,
        token: u64,
        ch: &mut GuestChan,
        rec: Peeked,
    ) -> Option<(u16, Option<Reply>)> {
        let mem = ch.requests.chan().memory();
        ch.buf.clear();
        mem.append_to_vec(rec.offset, rec.len.min(IN_PLACE_HEAD), &mut ch.buf)
            .ok()?;
        let (head, meta) = ch.buf.split_first_chunk::<FRAME_HEADER_SIZE>()?;
        let h = FrameHeader::parse(head).ok()?;
        let body_len = rec.len - FRAME_HEADER_SIZE;
        if h.kind != proto::kind::SENDV || h.nfds != 0 || h.body_len as usize != body_len {
            return None;
        }
        let meta = proto::sendv_meta(meta, body_len).ok()??;
        let mut at = rec.offset + FRAME_HEADER_SIZE + meta.payload_at;
        let ranges: Vec<(usize, usize)> = meta
            .lens
            .iter()
            .map(|&l| {
                let r = (at, l as usize);
                at += l as usize;
                r
            })
            .collect();
        let c = self.conns.get_mut(&token)?;
        let g = c.guest.as_ref()?;
        if tracing::enabled!(tracing::Level::TRACE) {
            trace!(
                "{}: request Sendv {{ addr: {:?}, message_type: {:#x}, lens: {:?}, in place }}",
                c.label(),
                meta.addr,
                meta.message_type,
                meta.lens
            );
        }
        let sent = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            g.dom
                .sendv_from(&meta.addr, mem, &ranges, meta.message_type)
        }));
        let reply = match sent {
            Ok(Ok(n)) => Some(Reply::ok(i64::from(n), ReplyData::None)),
            Ok(Err(e)) => Some(Reply::error(e.errno())),
            Err(_) => {
                error!("{}: internal error serving a sendv in place", c.label());
                None
            }
        };
        Some((h.kind, reply))
    }

    /// Moves every pending model event to its guest's event channel. The model signals only while serving
    /// a request or destroying a domain, so calling this after each of those suffices; only the
    /// domains it signalled since the last call are looked at.
    fn forward_events(&mut self) {
        self.model.take_signalled(&mut self.signalled);
        for domid in &self.signalled {
            let Some(c) = self.domids.get(domid).and_then(|t| self.conns.get(t)) else {
                continue;
            };
            let Some(g) = &c.guest else { continue };
            // A full channel means an event is pending already, which is all a signal means.
            ring(g.event_tx.as_fd());
        }
    }

    /// Drops a connection; a claimed domid is a domain destroyed.
    fn close(&mut self, token: u64, why: &str) {
        let Some(c) = self.conns.remove(&token) else {
            return;
        };
        match &c.guest {
            Some(g) => {
                info!(
                    "{}: disconnected ({why}); destroying domain {}",
                    c.label(),
                    g.domid
                );
                self.domids.remove(&g.domid);
                self.names.domain_gone(g.domid);
                if let Err(e) = self.model.destroy_domain(g.domid) {
                    error!("destroying domain {}: {e}", g.domid);
                }
            }
            None => debug!("{}: disconnected ({why})", c.label()),
        }
        drop(c);
        self.forward_events();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let ours = std::fs::symlink_metadata(&self.config.socket)
            .map(|m| (m.dev(), m.ino()) == self.socket_id)
            .unwrap_or(false);
        if ours {
            let _ = std::fs::remove_file(&self.config.socket);
        }
        let tokens: Vec<u64> = self.conns.keys().copied().collect();
        for t in tokens {
            self.close(t, "simulator shutting down");
        }
    }
}

/// Reads once from a connection into its buffer, queueing received descriptors.
fn read_some(c: &mut Conn, scratch: &mut [u8]) -> Result<(), &'static str> {
    // Read no further than the end of the frame in progress, so that the buffer holds at most
    // one frame (plus a header).
    let want = match c
        .inbuf
        .first_chunk::<FRAME_HEADER_SIZE>()
        .map(FrameHeader::parse)
    {
        Some(Ok(h)) => (FRAME_HEADER_SIZE + h.body_len as usize).saturating_sub(c.inbuf.len()),
        Some(Err(_)) => return Ok(()),
        None => FRAME_HEADER_SIZE - c.inbuf.len(),
    };
    let want = want.clamp(1, scratch.len());
    match fdpass::recv(c.sock.as_fd(), &mut scratch[..want], true) {
        Ok(r) => {
            let truncated = r.truncated;
            let n = r.len;
            c.fds.extend(r.fds);
            if truncated || c.fds.len() > MAX_QUEUED_FDS {
                return Err("too many descriptors");
            }
            if n == 0 {
                return Err("closed by the guest");
            }
            c.inbuf.extend_from_slice(&scratch[..n]);
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => Ok(()),
        Err(_) => Err("connection lost"),
    }
}

/// Decodes and serves one request frame for the connection `token`, catching a panic in the
/// model: `None` then (the guest loses its connection, with `EIO`).
#[allow(clippy::too_many_arguments)]
fn serve_request(
    model: &Model,
    domids: &mut HashMap<DomId, u64>,
    names: &mut NameDir,
    token: u64,
    guest: &mut Option<Guest>,
    label: &str,
    h: FrameHeader,
    body: &[u8],
    fds: Vec<OwnedFd>,
) -> Option<(Reply, Vec<OwnedFd>)> {
    let req = match Request::decode(h.kind, h.nfds, body) {
        Ok(r) => r,
        Err(e) => {
            debug!("{label}: malformed request kind {:#x}: {e}", h.kind);
            return Some((Reply::error(e.errno()), Vec::new()));
        }
    };
    trace!("{label}: request {:?}", RequestSummary(&req));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match req {
        Request::NameClaim { .. } | Request::Names { .. } | Request::NamePublish { .. } => {
            match guest {
                Some(g) => (names.serve(g.domid, req), Vec::new()),
                None => (Reply::error(proto::errno::ENOTCONN), Vec::new()),
            }
        }
        req => dispatch(model, domids, token, guest, req, fds),
    }));
    match result {
        Ok(r) => Some(r),
        Err(_) => {
            error!("{label}: internal error serving request kind {:#x}", h.kind);
            None
        }
    }
}

/// Serves one decoded request for the connection `token`.
fn dispatch(
    model: &Model,
    domids: &mut HashMap<DomId, u64>,
    token: u64,
    guest: &mut Option<Guest>,
    req: Request<'_>,
    fds: Vec<OwnedFd>,
) -> (Reply, Vec<OwnedFd>) {
    let none = Vec::new;
    let Some(g) = guest else {
        return match req {
            Request::Hello { version, domid } => hello(model, domids, token, guest, version, domid),
            _ => (Reply::error(proto::errno::ENOTCONN), none()),
        };
    };
    let dom = &g.dom;
    let status = |r: Result<(), HvError>| match r {
        Ok(()) => Reply::ok(0, ReplyData::None),
        Err(e) => Reply::error(e.errno()),
    };
    let reply = match req {
        Request::Hello { .. } => Reply::error(proto::errno::EISCONN),
        Request::RegisterRing { offset } => {
            let mut fds = fds;
            match fds.pop().map(|fd| map_guest_memory(fd, offset)) {
                Some(Ok((mem, offset))) => status(dom.register_ring(&mem, offset)),
                Some(Err(e)) => Reply::error(e.errno()),
                None => Reply::error(errno::EINVAL),
            }
        }
        Request::UnregisterRing { offset } => {
            let mut fds = fds;
            match fds.pop().map(|fd| map_guest_memory(fd, offset)) {
                Some(Ok((mem, offset))) => status(dom.unregister_ring(&mem, offset)),
                Some(Err(e)) => Reply::error(e.errno()),
                None => Reply::error(errno::EINVAL),
            }
        }
        Request::Sendv {
            addr,
            message_type,
            lens,
            payload,
        } => match sendv(dom, &addr, message_type, &lens, payload) {
            Ok(n) => Reply::ok(i64::from(n), ReplyData::None),
            Err(e) => Reply::error(e.errno()),
        },
        Request::SendvBatch(sends) => {
            let results: Vec<i64> = sends
                .iter()
                .map(
                    |s| match sendv(dom, &s.addr, s.message_type, &s.lens, s.payload) {
                        Ok(n) => i64::from(n),
                        Err(e) => -i64::from(e.errno()),
                    },
                )
                .collect();
            Reply::ok(results.len() as i64, ReplyData::Batch(results))
        }
        Request::Notify { entries: None } => status(dom.notify(None)),
        Request::Notify {
            entries: Some(mut e),
        } => match dom.notify(Some(&mut e)) {
            Ok(()) => Reply::ok(0, ReplyData::Notify(e)),
            Err(err) => Reply::error(err.errno()),
        },
        Request::Info => match dom.info() {
            Ok(i) => Reply::ok(0, ReplyData::Info(i)),
            Err(e) => Reply::error(e.errno()),
        },
        Request::Config(c) => status(dom.config(&c)),
        Request::TablesAdd { rule, position } => status(dom.tables_add(&rule, position)),
        Request::TablesDel { rule, position } => status(dom.tables_del(rule.as_ref(), position)),
        Request::NameClaim { .. } | Request::Names { .. } | Request::NamePublish { .. } => {
            Reply::error(errno::EINVAL)
        }
        Request::TablesList { start, max } => match dom.tables_list(start, max) {
            Ok(mut page) => {
                page.rules.truncate(proto::MAX_WIRE_RULES);
                Reply::ok(
                    i64::from(page.total),
                    ReplyData::TablesList {
                        total: page.total,
                        rules: page.rules,
                    },
                )
            }
            Err(e) => Reply::error(e.errno()),
        },
    };
    (reply, none())
}

/// Claims a domid for a connection: creates the model domain and its event channel.
fn hello(
    model: &Model,
    domids: &mut HashMap<DomId, u64>,
    token: u64,
    guest: &mut Option<Guest>,
    version: u16,
    want: DomId,
) -> (Reply, Vec<OwnedFd>) {
    if !(proto::VERSION_SOCKET..=proto::VERSION_PIPES).contains(&version) {
        info!(
            "refusing protocol version {version} (this simulator speaks {} to {})",
            proto::VERSION_SOCKET,
            proto::VERSION_PIPES
        );
        return (Reply::error(proto::errno::EPROTO), Vec::new());
    }
    let domid = if want == proto::CLAIM_ANY {
        match (1..DOMID_FIRST_RESERVED).find(|d| !domids.contains_key(d)) {
            Some(d) => d,
            None => return (Reply::error(errno::ENOSPC), Vec::new()),
        }
    } else {
        want
    };
    if domids.contains_key(&domid) {
        info!("refusing a claim of domain {domid}: connected already");
        return (Reply::error(proto::errno::EADDRINUSE), Vec::new());
    }
    let dom = match model.create_domain(domid) {
        Ok(d) => d,
        Err(e) => {
            info!("refusing a claim of domain {domid}: {e}");
            let errno = match e {
                ModelError::DomainExists(_) => proto::errno::EADDRINUSE,
                ModelError::ReservedDomid(_) => errno::EINVAL,
                _ => errno::ENOMEM,
            };
            return (Reply::error(errno), Vec::new());
        }
    };
    let (rx, tx) = match event_channel(version) {
        Ok(p) => p,
        Err(e) => {
            error!("event channel for domain {domid}: {e}");
            let _ = model.destroy_domain(domid);
            return (Reply::error(errno::ENOMEM), Vec::new());
        }
    };
    let mut fds = vec![rx];
    let (chan, channels) = if proto::has_channels(version) {
        match guest_channels(version) {
            Ok((chan, theirs)) => {
                fds.extend(theirs);
                (
                    Some(chan),
                    Some(ChannelSizes {
                        requests: REQUEST_CHANNEL as u32,
                        replies: REPLY_CHANNEL as u32,
                    }),
                )
            }
            Err(e) => {
                error!("channels for domain {domid}: {e}");
                let _ = model.destroy_domain(domid);
                return (Reply::error(errno::ENOMEM), Vec::new());
            }
        }
    } else {
        (None, None)
    };
    info!(
        "domain {domid} claimed{}",
        if domid == 0 { " (privileged)" } else { "" }
    );
    domids.insert(domid, token);
    *guest = Some(Guest {
        domid,
        dom,
        event_tx: tx,
        chan,
    });
    (
        Reply::ok(
            0,
            ReplyData::Hello {
                version,
                domid,
                channels,
            },
        ),
        fds,
    )
}

/// A version-2 or version-3 guest's channels: ours, and the descriptors the hello reply passes
/// (the guest's doorbell ends, the request channel's memory, the reply channel's). We create the
/// memory, so it is ours to size and seal; the guest can only write into it.
fn guest_channels(version: u16) -> Result<(GuestChan, Vec<OwnedFd>), String> {
    let (req_mem, req_fd) = ChanMemory::create(REQUEST_CHANNEL).map_err(|e| e.to_string())?;
    let (rep_mem, rep_fd) = ChanMemory::create(REPLY_CHANNEL).map_err(|e| e.to_string())?;
    let mut theirs = Vec::with_capacity(usize::from(proto::HELLO_PIPES_FDS));
    let (bell_in, bell_out) = if version == proto::VERSION_PIPES {
        let (to_us_rx, to_us_tx) = pipe().map_err(|e| e.to_string())?;
        let (to_guest_rx, to_guest_tx) = pipe().map_err(|e| e.to_string())?;
        theirs.push(to_us_tx);
        theirs.push(to_guest_rx);
        (to_us_rx, to_guest_tx)
    } else {
        let (guest, ours) = socket_pair().map_err(|e| e.to_string())?;
        theirs.push(guest);
        let dup = ours.try_clone().map_err(|e| e.to_string())?;
        (ours, dup)
    };
    // The socket pair's two descriptors share one description: setting it once covers both.
    set_nonblocking(bell_in.as_fd()).map_err(|e| e.to_string())?;
    set_nonblocking(bell_out.as_fd()).map_err(|e| e.to_string())?;
    theirs.push(req_fd);
    theirs.push(rep_fd);
    let mut requests = Consumer::new(&req_mem).map_err(|e| e.to_string())?;
    // We sleep until the first request rings (the guest cannot have written anything yet).
    requests.prepare_sleep().map_err(|e| e.to_string())?;
    let chan = GuestChan {
        requests,
        replies: Producer::new(&rep_mem).map_err(|e| e.to_string())?,
        bell_in,
        bell_out,
        pending: None,
        pending_deadline: None,
        more: false,
        buf: Vec::new(),
    };
    Ok((chan, theirs))
}

/// A guest's event channel: (the guest's end, ours). A pipe from protocol version 3, before it a
/// connected pair of stream sockets whose end of ours is shut for reading (the guest cannot make
/// us buffer what it writes). Our end is non-blocking and its open file description is ours
/// alone, so nothing the guest does to its descriptor can make our writes block.
fn event_channel(version: u16) -> std::io::Result<(OwnedFd, OwnedFd)> {
    let (guest, ours) = if version >= proto::VERSION_PIPES {
        pipe()?
    } else {
        let (guest, ours) = socket_pair()?;
        // SAFETY: shutdown on a descriptor we own.
        if unsafe { libc::shutdown(ours.as_raw_fd(), libc::SHUT_RD) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        (guest, ours)
    };
    set_nonblocking(ours.as_fd())?;
    Ok((guest, ours))
}

/// A close-on-exec pipe: (read end, write end), each its own open file description.
fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 fills a live two-int array; the result is checked.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors are fresh and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// A connected pair of close-on-exec stream sockets.
fn socket_pair() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: socketpair fills a live two-int array; the result is checked.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors are fresh and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Maps a guest's ring memory descriptor for a ring header at `offset`, or says what the
/// hypervisor would: `EINVAL` for an offset that is not page aligned (its first check), `EFAULT`
/// for memory it cannot use (not a memfd sealed against shrinking, too small, not mappable
/// read-write). The mapping covers the file up to the largest ring that could start at `offset`.
fn map_guest_memory(fd: OwnedFd, offset: u64) -> Result<(RingMemory, usize), HvError> {
    let offset = usize::try_from(offset).map_err(|_| HvError::BadAddress)?;
    if !offset.is_multiple_of(PAGE_SIZE) {
        return Err(HvError::Invalid);
    }
    // SAFETY: fstat fills a live stat structure; the result is checked.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(HvError::BadAddress);
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        debug!("ring memory is not a regular file");
        return Err(HvError::BadAddress);
    }
    // Without F_SEAL_SHRINK the guest could truncate the file under our mapping, and our next
    // write into it would kill the simulator with SIGBUS. Only memfds carry seals.
    // SAFETY: fcntl with an integer command on a descriptor we own.
    let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
    if seals < 0 || seals & libc::F_SEAL_SHRINK == 0 {
        debug!("ring memory is not a memfd sealed against shrinking");
        return Err(HvError::BadAddress);
    }
    let file = usize::try_from(st.st_size).unwrap_or(0) / PAGE_SIZE * PAGE_SIZE;
    let reach = offset
        .checked_add(abi::RING_HEADER_SIZE as usize + abi::MAX_RING_LEN as usize + PAGE_SIZE - 1)
        .map(|end| end / PAGE_SIZE * PAGE_SIZE)
        .unwrap_or(usize::MAX);
    let size = file.min(reach);
    if size == 0 {
        return Err(HvError::BadAddress);
    }
    let mem = RingMemory::map_fd(fd, size).map_err(|_| HvError::BadAddress)?;
    Ok((mem, offset))
}

/// A read-only, never-touched region of zero pages backing elided sendv payloads: the model
/// refuses such a send before it reads a byte, but it needs slices of the stated lengths.
struct ZeroRegion {
    ptr: *mut libc::c_void,
    len: usize,
}

impl ZeroRegion {
    fn new(len: usize) -> Option<Self> {
        // SAFETY: a fresh private anonymous read-only mapping; the result is checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        (ptr != libc::MAP_FAILED).then_some(ZeroRegion { ptr, len })
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: ptr..ptr+len is a readable mapping owned by self and unmapped only on drop;
        // nothing writes it (PROT_READ), so shared references to it are sound.
        unsafe { std::slice::from_raw_parts(self.ptr.cast::<u8>(), self.len) }
    }
}

impl Drop for ZeroRegion {
    fn drop(&mut self) {
        // SAFETY: ptr/len describe the mapping this value owns; bytes() borrows end before drop.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

fn sendv(
    dom: &ModelDomain,
    addr: &abi::SendAddr,
    message_type: u32,
    lens: &[u32],
    payload: Option<&[u8]>,
) -> Result<u32, HvError> {
    match payload {
        Some(p) => {
            let mut slices = Vec::with_capacity(lens.len());
            let mut at = 0usize;
            for &l in lens {
                // The codec checked that the lengths add up to the payload's.
                let s = p.get(at..at + l as usize).ok_or(HvError::Invalid)?;
                slices.push(IoSlice::new(s));
                at += l as usize;
            }
            dom.sendv(addr, &slices, message_type)
        }
        None => {
            let longest = lens.iter().copied().max().unwrap_or(0) as usize;
            let zero = ZeroRegion::new(longest.max(1)).ok_or(HvError::OutOfMemory)?;
            let bytes = zero.bytes();
            let slices: Vec<IoSlice<'_>> = lens
                .iter()
                .map(|&l| IoSlice::new(&bytes[..l as usize]))
                .collect();
            dom.sendv(addr, &slices, message_type)
        }
    }
}

/// "pid P uid U" of a connected peer, for logs.
fn peer_name(sock: &UnixStream) -> String {
    // SAFETY: ucred is plain data; all-zero is valid.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt fills a live ucred of the stated length; the result is checked.
    let r = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if r == 0 {
        format!("pid {} uid {}", cred.pid, cred.uid)
    } else {
        "unknown peer".to_string()
    }
}

/// A request for trace logs, without its payload bytes.
struct RequestSummary<'a, 'b>(&'a Request<'b>);

impl std::fmt::Debug for RequestSummary<'_, '_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Request::Sendv {
                addr,
                message_type,
                lens,
                payload,
            } => write!(
                f,
                "Sendv {{ addr: {addr:?}, message_type: {message_type:#x}, lens: {lens:?}, elided: {} }}",
                payload.is_none()
            ),
            Request::SendvBatch(sends) => write!(
                f,
                "SendvBatch {{ {} sends, lens: {:?} }}",
                sends.len(),
                sends.iter().map(|s| &s.lens).collect::<Vec<_>>()
            ),
            other => write!(f, "{other:?}"),
        }
    }
}

/// The simulator's name directory: what xenstore holds for names on Xen. A domain's name is
/// claimed by the domain itself (`NAME_CLAIM`, standing in for the toolstack writing
/// `/local/domain/N/name`) and released when its connection closes; dom0 sees every name, a
/// guest only its own; dom0 alone publishes names for guests (`NAME_PUBLISH`, Xen's
/// `/v4v/names`). Every change moves the generation.
#[derive(Debug, Default)]
struct NameDir {
    domains: BTreeMap<DomId, String>,
    published: Vec<v4v::names::NameEntry>,
    generation: u64,
}

impl NameDir {
    fn serve(&mut self, caller: DomId, req: Request<'_>) -> Reply {
        match req {
            Request::NameClaim { name } => {
                let Some(name) = std::str::from_utf8(name)
                    .ok()
                    .filter(|n| v4v::names::validate(n).is_ok())
                else {
                    return Reply::error(errno::EINVAL);
                };
                if self.domains.contains_key(&caller) {
                    info!("refusing a second name {name:?} for domain {caller}");
                    return Reply::error(proto::errno::EISCONN);
                }
                if let Some((holder, _)) = self.domains.iter().find(|(_, n)| *n == name) {
                    info!("refusing the name {name:?} for domain {caller}: domain {holder} has it");
                    return Reply::error(proto::errno::EADDRINUSE);
                }
                info!("domain {caller} is named {name:?}");
                self.domains.insert(caller, name.to_string());
                self.generation += 1;
                Reply::ok(0, ReplyData::None)
            }
            Request::Names { which } => {
                let entries = if which == proto::NAMES_PUBLISHED {
                    self.published.clone()
                } else {
                    self.domains
                        .iter()
                        .filter(|(d, _)| caller == 0 || **d == caller)
                        .map(|(d, n)| v4v::names::NameEntry {
                            domid: *d,
                            name: n.clone(),
                        })
                        .collect()
                };
                Reply::ok(
                    0,
                    ReplyData::Names {
                        generation: self.generation,
                        entries,
                    },
                )
            }
            Request::NamePublish { entries } => {
                if caller != 0 {
                    info!("refusing domain {caller}'s publication of names: dom0's only");
                    return Reply::error(errno::EPERM);
                }
                let mut out = Vec::with_capacity(entries.len());
                for (domid, name) in entries {
                    let Some(name) = std::str::from_utf8(name)
                        .ok()
                        .filter(|n| v4v::names::validate(n).is_ok())
                    else {
                        return Reply::error(errno::EINVAL);
                    };
                    out.push(v4v::names::NameEntry {
                        domid,
                        name: name.to_string(),
                    });
                }
                out.sort();
                if out != self.published {
                    self.published = out;
                    self.generation += 1;
                }
                Reply::ok(0, ReplyData::None)
            }
            _ => Reply::error(errno::EINVAL),
        }
    }

    /// A destroyed domain's name is free again; what dom0 published for it goes too (dom0
    /// republishes; meanwhile no guest resolves the dead id).
    fn domain_gone(&mut self, domid: DomId) {
        let before = self.published.len();
        self.published.retain(|e| e.domid != domid);
        if self.domains.remove(&domid).is_some() || self.published.len() != before {
            self.generation += 1;
        }
    }
}
