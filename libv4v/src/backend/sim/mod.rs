// SPDX-License-Identifier: MIT OR Apache-2.0
//! The simulator backend: a guest domain served by a `v4v-sim` process over a Unix socket.
//!
//! Each [`SimHypervisor`] is one connection, and so one domain: connecting claims the domid,
//! closing the connection destroys the domain. Ring memory is a sealed memfd that the simulator
//! maps too, so it writes messages straight into the memory this process reads with
//! [`crate::ring::RingReader`], as Xen does into a guest's pages. The event channel is a pipe
//! (a stream socket with protocol version 1) whose write end the simulator holds; it passed our
//! read end at claim time, and writes a byte into it when the model signals the domain. At end of
//! stream the simulator is gone.
//! `docs/sim.md` is the protocol.
//!
//! Calls are serialised by a mutex around the connection: one request, one reply. With protocol
//! version 3 (the default; [`Transport`]) requests that pass no descriptor and fit travel through
//! a shared-memory channel pair the simulator created at hello, with a doorbell byte through a
//! pipe only when the other side sleeps; ring registration and oversized requests still use the
//! socket. A failure of the connection itself (the simulator died, or answered garbage, or
//! corrupted the channel) is reported as [`HvError::Other`] with `EPIPE` (or `EPROTO` for
//! garbage), and every later call fails the same way: the domain is gone.

use std::io::{IoSlice, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::abi::{Config, DomId, Info, RingDataEnt, SendAddr, TablesRule};
use crate::backend::BackendError;
use crate::chan::{ChanError, ChanMemory, Consumer, Producer, Pushed};
use crate::hypervisor::{BatchSend, HvError, Hypervisor, TablesPage};
use crate::names::{DirectoryError, NameDirectory, NameEntry};
use crate::shmem::{RingMemory, page_round};
use protocol::{
    self as proto, ChannelSizes, FRAME_HEADER_SIZE, FrameHeader, ProtocolError, Reply, ReplyData,
    Request, SendvFrame, fdpass, kind,
};

pub mod protocol;

const EPIPE: i32 = libc::EPIPE;

/// One guest domain of a `v4v-sim` simulator.
#[derive(Debug)]
pub struct SimHypervisor {
    conn: Mutex<Conn>,
    event: OwnedFd,
    domid: DomId,
    path: PathBuf,
    /// The name directory's generation when [`NameDirectory::changed`] last looked (`u64::MAX`:
    /// never).
    names_seen: std::sync::atomic::AtomicU64,
}

/// How a guest talks to the simulator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Protocol version 3 (or 2, from an older simulator): the shared-memory channel where it
    /// can, the socket where it must. Falls back to [`Transport::Socket`] with a simulator that
    /// only speaks version 1.
    Channel,
    /// Protocol version 1: every request a socket round trip.
    Socket,
}

impl Transport {
    /// The transport named by `V4V_SIM_TRANSPORT` (`socket` or `channel`), else
    /// [`Transport::Channel`]: the old path stays reachable for comparisons and tests.
    pub fn from_env() -> Transport {
        match std::env::var("V4V_SIM_TRANSPORT").as_deref() {
            Ok("socket") => Transport::Socket,
            _ => Transport::Channel,
        }
    }
}

/// How long a guest waiting for a reply polls the channel before it sleeps on the doorbell,
/// unless `V4V_SIM_SPIN_US` says otherwise. Spinning saves the simulator a doorbell and the guest
/// a sleep when the reply is quick, but on a machine with fewer cores than busy processes it
/// takes the core the simulator needs: measured in docs/sim.md.
const DEFAULT_SPIN: Duration = Duration::from_micros(0);

#[derive(Debug)]
struct Conn {
    sock: UnixStream,
    /// Set once the stream is out of step or closed: the domain is gone for good.
    broken: Option<i32>,
    chan: Option<Chan>,
}

/// The guest's ends of the shared-memory channels (protocol versions 2 and 3).
#[derive(Debug)]
struct Chan {
    requests: Producer,
    replies: Consumer,
    /// Where we ring the simulator: the write end of a pipe (version 3) or our end of the
    /// doorbell socket pair (version 2). Non-blocking.
    bell_out: OwnedFd,
    /// Where the simulator rings us: the read end of a pipe, or the same socket. Non-blocking.
    bell_in: OwnedFd,
    /// The last reply, copied out of the channel.
    buf: Vec<u8>,
    spin: Duration,
}

#[derive(Debug)]
enum CallError {
    Io(std::io::Error),
    Protocol(ProtocolError),
    Chan(ChanError),
}

impl CallError {
    fn errno(&self) -> i32 {
        match self {
            CallError::Io(e) => e.raw_os_error().unwrap_or(EPIPE),
            CallError::Protocol(_) => proto::errno::EPROTO,
            CallError::Chan(ChanError::Corrupt(_)) => proto::errno::EPROTO,
            CallError::Chan(_) => EPIPE,
        }
    }
}

impl From<ChanError> for CallError {
    fn from(e: ChanError) -> Self {
        CallError::Chan(e)
    }
}

/// Rings a doorbell: one byte, never blocking (our end is non-blocking, and only we hold our
/// open file description).
fn ring(bell: BorrowedFd<'_>) -> Result<(), CallError> {
    ring_byte(bell).map_err(CallError::Io)
}

/// Writes one wake-up byte into `fd`, a non-blocking pipe or socket end whose open file
/// description is the caller's alone: the one ring of the simulator, its guests and v4vd. A full
/// one has a wake-up pending already, which is all a ring says: `Ok` too. An error (`EPIPE`: the
/// reader is gone) is the caller's to judge.
pub fn ring_byte(fd: BorrowedFd<'_>) -> std::io::Result<()> {
    let one = [1u8];
    loop {
        // SAFETY: writes one byte from a live buffer to a descriptor the caller holds.
        let n = unsafe { libc::write(fd.as_raw_fd(), one.as_ptr().cast(), 1) };
        if n >= 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        match e.kind() {
            std::io::ErrorKind::WouldBlock => return Ok(()),
            std::io::ErrorKind::Interrupted => continue,
            _ => return Err(e),
        }
    }
}

/// Sleeps until the doorbell rings (or rang while we were busy), taking every pending ring.
///
/// It sleeps in `poll(POLLIN)`, not in a blocking read: with a socket pair (version 2) a task
/// blocked in `recv` is woken by every wake-up of the socket's queue, and the simulator reading
/// the ring byte we just sent is one, so the guest woke, found nothing and slept again once per
/// request. `poll` wakes only for what it asked for.
fn wait_bell(bell: BorrowedFd<'_>) -> Result<(), CallError> {
    let mut buf = [0u8; 64];
    loop {
        let mut pfd = libc::pollfd {
            fd: bell.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: polls one live pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, -1) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(CallError::Io(e));
        }
        // SAFETY: reads into a local buffer of the stated length from a non-blocking descriptor
        // we own.
        let n = unsafe { libc::read(bell.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n > 0 {
            return Ok(());
        }
        if n == 0 {
            return Err(CallError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        let e = std::io::Error::last_os_error();
        match e.kind() {
            std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock => continue,
            _ => return Err(CallError::Io(e)),
        }
    }
}

impl Chan {
    /// Maps the channels a hello reply of `version` 2 or 3 passed: `fds` holds the doorbell (two
    /// pipe ends with version 3), the request channel's memory and the reply channel's, in that
    /// order.
    fn open(
        version: u16,
        sizes: ChannelSizes,
        fds: &mut impl Iterator<Item = OwnedFd>,
    ) -> Result<Chan, BackendError> {
        let mut next = || {
            fds.next().ok_or(ProtocolError::FdCount {
                got: 1,
                want: proto::HELLO_PIPES_FDS,
            })
        };
        let bell_out = next()?;
        let bell_in = if version == proto::VERSION_PIPES {
            next()?
        } else {
            bell_out.try_clone()?
        };
        set_nonblocking(bell_out.as_fd())?;
        set_nonblocking(bell_in.as_fd())?;
        let requests = ChanMemory::map(next()?, sizes.requests as usize)?;
        let replies = ChanMemory::map(next()?, sizes.replies as usize)?;
        let spin = std::env::var("V4V_SIM_SPIN_US")
            .ok()
            .and_then(|v| v.parse().ok())
            .map_or(DEFAULT_SPIN, Duration::from_micros);
        Ok(Chan {
            requests: Producer::new(&requests)?,
            replies: Consumer::new(&replies)?,
            bell_out,
            bell_in,
            buf: Vec::new(),
            spin,
        })
    }

    /// Publishes one request record and waits for its reply record.
    fn call(&mut self, parts: &[&[u8]], len: usize, req_kind: u16) -> Result<Reply, CallError> {
        loop {
            match self.requests.push(parts)? {
                Pushed::Done { doorbell } => {
                    if doorbell {
                        ring(self.bell_out.as_fd())?;
                    }
                    break;
                }
                Pushed::Full => {
                    if !self.requests.wait_for_space(len)? {
                        wait_bell(self.bell_in.as_fd())?;
                    }
                }
            }
        }
        let started = Instant::now();
        loop {
            self.buf.clear();
            if self.replies.pop_into(&mut self.buf)?.is_some() {
                if self.replies.space_doorbell_wanted()? {
                    ring(self.bell_out.as_fd())?;
                }
                let (h, body) =
                    proto::split_record(&self.buf, true).map_err(CallError::Protocol)?;
                return Reply::decode(req_kind, h.kind, 0, body).map_err(CallError::Protocol);
            }
            if started.elapsed() < self.spin {
                std::hint::spin_loop();
                continue;
            }
            if self.replies.prepare_sleep()? {
                wait_bell(self.bell_in.as_fd())?;
            }
        }
    }
}

impl Conn {
    /// Sends one request frame (with `fds`) on the socket and reads its reply, with any
    /// descriptors.
    fn call(
        &mut self,
        frame: &[u8],
        fds: &[BorrowedFd<'_>],
        req_kind: u16,
    ) -> Result<(Reply, Vec<OwnedFd>), CallError> {
        let sent = fdpass::send(self.sock.as_fd(), frame, fds, false).map_err(CallError::Io)?;
        if sent == 0 && !frame.is_empty() {
            return Err(CallError::Io(std::io::ErrorKind::WriteZero.into()));
        }
        self.sock.write_all(&frame[sent..]).map_err(CallError::Io)?;

        let mut head = [0u8; FRAME_HEADER_SIZE];
        let mut got = 0;
        let mut fds = Vec::new();
        while got < head.len() {
            let r =
                fdpass::recv(self.sock.as_fd(), &mut head[got..], false).map_err(CallError::Io)?;
            if r.len == 0 {
                return Err(CallError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
            got += r.len;
            fds.extend(r.fds);
        }
        let h = FrameHeader::parse_reply(&head).map_err(CallError::Protocol)?;
        let mut body = vec![0u8; h.body_len as usize];
        self.sock.read_exact(&mut body).map_err(CallError::Io)?;
        if fds.len() != usize::from(h.nfds) {
            return Err(CallError::Protocol(ProtocolError::FdCount {
                got: fds.len() as u8,
                want: h.nfds,
            }));
        }
        let reply = Reply::decode(req_kind, h.kind, h.nfds, &body).map_err(CallError::Protocol)?;
        Ok((reply, fds))
    }
}

impl SimHypervisor {
    /// Connects to the simulator at `path` and claims `domid` (any free guest domid if `None`),
    /// with the transport [`Transport::from_env`] names.
    pub fn connect(path: &Path, domid: Option<DomId>) -> Result<Self, BackendError> {
        Self::connect_with(path, domid, Transport::from_env())
    }

    /// [`SimHypervisor::connect`] with a given transport.
    pub fn connect_with(
        path: &Path,
        domid: Option<DomId>,
        transport: Transport,
    ) -> Result<Self, BackendError> {
        let sock = UnixStream::connect(path).map_err(|source| BackendError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
        let mut conn = Conn {
            sock,
            broken: None,
            chan: None,
        };
        let want = domid.unwrap_or(proto::CLAIM_ANY);
        let mut version = match transport {
            Transport::Channel => proto::VERSION_PIPES,
            Transport::Socket => proto::VERSION_SOCKET,
        };
        if version == proto::VERSION_PIPES {
            // Ringing a doorbell pipe whose reader died raises SIGPIPE.
            ignore_sigpipe_if_default();
        }
        let (reply, fds) = loop {
            let frame = Request::Hello {
                version,
                domid: want,
            }
            .encode();
            let (reply, fds) = conn.call(&frame, &[], kind::HELLO).map_err(|e| match e {
                CallError::Io(e) => BackendError::Io(e),
                CallError::Protocol(p) => BackendError::Protocol(p),
                CallError::Chan(c) => BackendError::Channel(c),
            })?;
            // An older simulator refuses a version it does not speak with EPROTO and stays
            // connected: try the next older one.
            if reply.ret == -i64::from(proto::errno::EPROTO) && version > proto::VERSION_SOCKET {
                version -= 1;
                continue;
            }
            break (reply, fds);
        };
        if reply.ret < 0 {
            let errno = i32::try_from(-reply.ret).unwrap_or(i32::MAX);
            return Err(BackendError::ClaimRefused { domid: want, errno });
        }
        let ReplyData::Hello {
            version: theirs,
            domid,
            channels,
        } = reply.data
        else {
            return Err(ProtocolError::UnexpectedReply {
                got: 0,
                want: kind::HELLO,
            }
            .into());
        };
        if theirs != version {
            return Err(BackendError::Version {
                ours: version,
                theirs,
            });
        }
        // Reply::decode checked the count: 1, or 4 or 5 with channels.
        let mut fds = fds.into_iter();
        let event = fds
            .next()
            .ok_or(ProtocolError::FdCount { got: 0, want: 1 })?;
        set_nonblocking(event.as_fd())?;
        if let Some(sizes) = channels {
            conn.chan = Some(Chan::open(theirs, sizes, &mut fds)?);
        }
        Ok(SimHypervisor {
            conn: Mutex::new(conn),
            event,
            domid,
            path: path.to_path_buf(),
            names_seen: std::sync::atomic::AtomicU64::new(u64::MAX),
        })
    }

    /// Whether requests travel through the shared-memory channel (protocol version 2 or 3).
    pub fn uses_channel(&self) -> bool {
        self.lock().chan.is_some()
    }

    /// The domid this connection claimed.
    pub fn domid(&self) -> DomId {
        self.domid
    }

    /// The simulator's socket.
    pub fn socket_path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> MutexGuard<'_, Conn> {
        // A panic while holding the lock leaves the stream possibly out of step; `broken` is set
        // before any fallible step completes, so recovering the guard is safe.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One request, one reply: the hypervisor's return value or its errno.
    fn request(&self, req: &Request<'_>, fds: &[BorrowedFd<'_>]) -> Result<Reply, HvError> {
        let frame = req.encode();
        self.request_parts(&[&frame], frame.len(), fds, req.kind())
    }

    /// One request whose frame is `parts` concatenated (`len` bytes): through the channel when
    /// it passes no descriptor and fits in a record, else on the socket.
    fn request_parts(
        &self,
        parts: &[&[u8]],
        len: usize,
        fds: &[BorrowedFd<'_>],
        req_kind: u16,
    ) -> Result<Reply, HvError> {
        let mut guard = self.lock();
        let conn = &mut *guard;
        if let Some(errno) = conn.broken {
            return Err(HvError::Other(errno));
        }
        // Mark the connection broken for the duration: if we fail part way, it stays so.
        conn.broken = Some(EPIPE);
        let result = match &mut conn.chan {
            Some(chan) if fds.is_empty() && len <= chan.requests.chan().max_record() => {
                chan.call(parts, len, req_kind)
            }
            _ => {
                let joined;
                let frame = match parts {
                    [one] => *one,
                    _ => {
                        joined = parts.concat();
                        &joined[..]
                    }
                };
                conn.call(frame, fds, req_kind).map(|(reply, _)| reply)
            }
        };
        match result {
            Ok(reply) => {
                conn.broken = None;
                if reply.ret < 0 {
                    Err(HvError::from_errno(
                        i32::try_from(-reply.ret).unwrap_or(i32::MAX),
                    ))
                } else {
                    Ok(reply)
                }
            }
            Err(e) => {
                let errno = e.errno();
                conn.broken = Some(errno);
                let _ = conn.sock.shutdown(std::net::Shutdown::Both);
                Err(HvError::Other(errno))
            }
        }
    }

    fn ring_op(&self, op: Request<'_>, mem: &RingMemory) -> Result<(), HvError> {
        // Memory without a descriptor cannot be shared with the simulator: to it, the address is
        // not mapped.
        let fd = mem.fd().ok_or(HvError::BadAddress)?;
        self.request(&op, &[fd]).map(|_| ())
    }
}

/// Sets `O_NONBLOCK` on the open file description behind `fd`. Both ends of the protocol call
/// it on their own ends of pipes and socket pairs, whose descriptions the other side does not
/// share: nothing the other side does can make them block.
pub fn set_nonblocking(fd: BorrowedFd<'_>) -> std::io::Result<()> {
    // SAFETY: fcntl on a descriptor we own, with integer arguments.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Ignores `SIGPIPE` unless the process has chosen a disposition for it: a write to a doorbell or
/// event pipe whose reader is gone must fail with `EPIPE`, not kill the process. Rust programs
/// ignore `SIGPIPE` from the start, so this changes only a host that left it at the default.
pub fn ignore_sigpipe_if_default() {
    // SAFETY: sigaction with a null new action only reads the current one into a zeroed local.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::sigaction(libc::SIGPIPE, std::ptr::null(), &mut old) } != 0 {
        return;
    }
    if old.sa_sigaction == libc::SIG_DFL {
        // SAFETY: installing SIG_IGN, which runs no code of ours.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    }
}

/// Zeroed ring memory the simulator accepts: a memfd sealed against shrinking, so that no one can
/// truncate it under the simulator's mapping (which would fault the simulator, not the guest).
pub fn sealed_ring_memory(bytes: usize) -> Result<RingMemory, HvError> {
    let os = |e: std::io::Error| HvError::from_errno(e.raw_os_error().unwrap_or(libc::ENOMEM));
    let size = page_round(bytes);
    let len = libc::off_t::try_from(size).map_err(|_| HvError::OutOfMemory)?;
    // SAFETY: memfd_create takes a NUL-terminated name and flags; the result is checked.
    let raw = unsafe {
        libc::memfd_create(
            c"v4v-ring".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    if raw < 0 {
        return Err(os(std::io::Error::last_os_error()));
    }
    // SAFETY: raw is a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ftruncate on a descriptor we own, with integer arguments.
    let truncated = unsafe { libc::ftruncate(raw, len) } == 0;
    if !truncated {
        return Err(os(std::io::Error::last_os_error()));
    }
    // No one may shrink it from now on (F_SEAL_SHRINK), nor change the seals (F_SEAL_SEAL).
    // SAFETY: fcntl on a descriptor we own, with integer arguments.
    let sealed = unsafe {
        libc::fcntl(
            raw,
            libc::F_ADD_SEALS,
            libc::F_SEAL_SHRINK | libc::F_SEAL_SEAL,
        )
    };
    if sealed != 0 {
        return Err(os(std::io::Error::last_os_error()));
    }
    RingMemory::map_fd(fd, size).map_err(|e| match e {
        crate::shmem::ShmemError::Os(o) => HvError::from_errno(o.0),
        _ => HvError::OutOfMemory,
    })
}

impl Hypervisor for SimHypervisor {
    fn alloc_ring_memory(&self, bytes: usize) -> Result<RingMemory, HvError> {
        sealed_ring_memory(bytes)
    }

    fn register_ring(&self, mem: &RingMemory, offset: usize) -> Result<(), HvError> {
        self.ring_op(
            Request::RegisterRing {
                offset: offset as u64,
            },
            mem,
        )
    }

    fn unregister_ring(&self, mem: &RingMemory, offset: usize) -> Result<(), HvError> {
        self.ring_op(
            Request::UnregisterRing {
                offset: offset as u64,
            },
            mem,
        )
    }

    fn sendv(
        &self,
        addr: &SendAddr,
        iov: &[IoSlice<'_>],
        message_type: u32,
    ) -> Result<u32, HvError> {
        let frame = SendvFrame::single(addr, message_type, iov);
        let reply = self.request_parts(&frame.parts(), frame.len(), &[], kind::SENDV)?;
        u32::try_from(reply.ret).map_err(|_| HvError::Other(proto::errno::EPROTO))
    }

    /// With the channel: as few sendv_batch requests as fit in its records (a send too large
    /// for a record on its own goes as a sendv on the socket). Without: one sendv each.
    fn sendv_batch(&self, sends: &[BatchSend<'_>], results: &mut Vec<Result<u32, HvError>>) {
        results.clear();
        let max = {
            let conn = self.lock();
            match &conn.chan {
                Some(c) => c.requests.chan().max_record(),
                None => 0,
            }
        };
        let mut start = 0;
        while start < sends.len() {
            // The longest run from `start` that fits one record.
            let mut end = start;
            let mut len = proto::BATCH_HEAD;
            while end < sends.len() && end - start < proto::MAX_WIRE_BATCH {
                let item = proto::batch_item_len(sends[end].iov);
                if len + item > max {
                    break;
                }
                len += item;
                end += 1;
            }
            if end == start {
                let s = &sends[start];
                results.push(self.sendv(&s.addr, s.iov, s.message_type));
                start += 1;
                continue;
            }
            let group = &sends[start..end];
            let frame = SendvFrame::batch(group);
            match self.request_parts(&frame.parts(), frame.len(), &[], kind::SENDV_BATCH) {
                Ok(Reply {
                    data: ReplyData::Batch(r),
                    ..
                }) if r.len() == group.len() => {
                    results.extend(r.into_iter().map(|v| match u32::try_from(v) {
                        Ok(n) => Ok(n),
                        Err(_) => Err(HvError::from_errno(
                            i32::try_from(-v).unwrap_or(proto::errno::EPROTO),
                        )),
                    }));
                }
                Ok(_) => results.extend(
                    group
                        .iter()
                        .map(|_| Err(HvError::Other(proto::errno::EPROTO))),
                ),
                Err(e) => results.extend(group.iter().map(|_| Err(e))),
            }
            start = end;
        }
    }

    fn notify(&self, entries: Option<&mut [RingDataEnt]>) -> Result<(), HvError> {
        match entries {
            None => self
                .request(&Request::Notify { entries: None }, &[])
                .map(|_| ()),
            Some(entries) => {
                // Past the hypervisor's limit, one more entry than it allows gets the same E2BIG.
                let sent = entries.len().min(proto::MAX_WIRE_NOTIFY);
                let req = Request::Notify {
                    entries: Some(entries[..sent].to_vec()),
                };
                let reply = self.request(&req, &[])?;
                match reply.data {
                    ReplyData::Notify(filled) if filled.len() == sent => {
                        entries[..sent].copy_from_slice(&filled);
                        Ok(())
                    }
                    _ => Err(HvError::Other(proto::errno::EPROTO)),
                }
            }
        }
    }

    fn info(&self) -> Result<Info, HvError> {
        match self.request(&Request::Info, &[])?.data {
            ReplyData::Info(info) => Ok(info),
            _ => Err(HvError::Other(proto::errno::EPROTO)),
        }
    }

    fn config(&self, config: &Config) -> Result<(), HvError> {
        self.request(&Request::Config(*config), &[]).map(|_| ())
    }

    fn tables_add(&self, rule: &TablesRule, position: u32) -> Result<(), HvError> {
        self.request(
            &Request::TablesAdd {
                rule: *rule,
                position,
            },
            &[],
        )
        .map(|_| ())
    }

    fn tables_del(&self, rule: Option<&TablesRule>, position: u32) -> Result<(), HvError> {
        self.request(
            &Request::TablesDel {
                rule: rule.copied(),
                position,
            },
            &[],
        )
        .map(|_| ())
    }

    fn tables_list(&self, start: u32, max: u32) -> Result<TablesPage, HvError> {
        match self.request(&Request::TablesList { start, max }, &[])?.data {
            ReplyData::TablesList { total, rules } => Ok(TablesPage { rules, total }),
            _ => Err(HvError::Other(proto::errno::EPROTO)),
        }
    }

    fn event_fd(&self) -> BorrowedFd<'_> {
        self.event.as_fd()
    }

    fn names(&self) -> Option<&dyn NameDirectory> {
        Some(self)
    }

    fn take_event(&self) -> Result<bool, HvError> {
        let mut buf = [0u8; 64];
        let mut pending = false;
        loop {
            // SAFETY: reads into a local buffer of the stated length from a descriptor we own,
            // made non-blocking at connect (a pipe's or socket's end of our own).
            let n =
                unsafe { libc::read(self.event.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n > 0 {
                pending = true;
                if (n as usize) < buf.len() {
                    // A read of a pipe or stream socket takes every byte queued: a short one left
                    // none, so no second call to hear EAGAIN. A byte written after it makes the
                    // descriptor readable again.
                    return Ok(true);
                }
                continue;
            }
            if n == 0 {
                // The simulator closed its end: the domain is gone.
                return if pending {
                    Ok(true)
                } else {
                    Err(HvError::Other(EPIPE))
                };
            }
            let e = std::io::Error::last_os_error();
            match e.kind() {
                std::io::ErrorKind::WouldBlock => return Ok(pending),
                std::io::ErrorKind::Interrupted => continue,
                _ => return Err(HvError::Other(e.raw_os_error().unwrap_or(EPIPE))),
            }
        }
    }
}

fn directory_error(what: &str, e: HvError) -> DirectoryError {
    if e.is_interface_lost() {
        return DirectoryError::Transport(format!(
            "{what}: the simulator connection is lost ({e})"
        ));
    }
    DirectoryError::Refused {
        what: what.to_string(),
        errno_name: e.name(),
    }
}

impl SimHypervisor {
    fn names_request(&self, which: u32) -> Result<(u64, Vec<NameEntry>), DirectoryError> {
        match self.request(&Request::Names { which }, &[]) {
            Ok(Reply {
                data:
                    ReplyData::Names {
                        generation,
                        entries,
                    },
                ..
            }) => Ok((generation, entries)),
            Ok(_) => Err(DirectoryError::Transport(
                "the simulator answered names with something else".into(),
            )),
            Err(e) => Err(directory_error("reading the simulator's names", e)),
        }
    }
}

/// The simulator's model of the toolstack's names and dom0's published directory
/// (`docs/sim.md`).
impl NameDirectory for SimHypervisor {
    fn claim_name(&self, name: &str) -> Result<(), DirectoryError> {
        crate::names::validate(name)?;
        self.request(
            &Request::NameClaim {
                name: name.as_bytes(),
            },
            &[],
        )
        .map(drop)
        .map_err(|e| {
            let what = format!("naming domain {} {name:?}", self.domid);
            match e.errno() {
                proto::errno::EADDRINUSE => DirectoryError::Refused {
                    what: format!("{what}: another domain has that name"),
                    errno_name: "EADDRINUSE".into(),
                },
                proto::errno::EISCONN => DirectoryError::Refused {
                    what: format!("{what}: the domain has a name already"),
                    errno_name: "EISCONN".into(),
                },
                _ => directory_error(&what, e),
            }
        })
    }

    fn domain_names(&self) -> Result<Vec<NameEntry>, DirectoryError> {
        self.names_request(proto::NAMES_DOMAINS).map(|(_, e)| e)
    }

    fn published(&self) -> Result<Vec<NameEntry>, DirectoryError> {
        self.names_request(proto::NAMES_PUBLISHED).map(|(_, e)| e)
    }

    fn publish(&self, entries: &[NameEntry]) -> Result<(), DirectoryError> {
        let entries = entries
            .iter()
            .map(|e| (e.domid, e.name.as_bytes()))
            .collect();
        self.request(&Request::NamePublish { entries }, &[])
            .map(drop)
            .map_err(|e| directory_error("publishing names", e))
    }

    fn changed(&self) -> Result<bool, DirectoryError> {
        use std::sync::atomic::Ordering;
        let (generation, _) = self.names_request(proto::NAMES_PUBLISHED)?;
        Ok(self.names_seen.swap(generation, Ordering::Relaxed) != generation)
    }
}
