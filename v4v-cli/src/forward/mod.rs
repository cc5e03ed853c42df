// SPDX-License-Identifier: MIT OR Apache-2.0
//! `forward LISTEN TARGET`: relays every connection accepted on LISTEN to a new connection to
//! TARGET, both ways, on one mio event loop (no thread or process per connection).
//!
//! This module owns the listener, every relayed connection and their buffers; it talks to v4vd
//! only through the client API. Per connection and direction at most [`BUF`] bytes wait for
//! a slow writer, and nothing more is read from that side until they are written, so a slow
//! reader stalls its own connection only and memory stays bounded (an idle connection holds no
//! buffer at all). An end of input is passed on as a write shutdown (TCP FIN, V4V orderly
//! close); a reset or error on one side resets the other (TCP RST via `SO_LINGER` 0, V4V
//! `RESET`). A target that refuses closes the accepted connection at once, with a reset.
//! Past `--max-connections` nothing more is accepted: new connections wait in the listener's
//! backlog until one ends.

mod addr;

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, ToSocketAddrs};
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Instant;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use v4v::client::{Connecting, Listener as V4vListener, Stream as V4vStream};

pub use addr::{ListenAddr, TargetAddr};

use crate::exit::{Exit, Failure};

/// Bytes one direction of one connection may hold while its writer is slow.
pub const BUF: usize = 64 * 1024;
/// Reads one connection may do per wakeup before the others get their turn.
const BUDGET: usize = 16;
const LISTENER: Token = Token(usize::MAX);

pub struct Opts {
    pub listen: ListenAddr,
    pub target: TargetAddr,
    pub max_connections: usize,
    pub quiet: bool,
}

/// One end of a relayed connection, ready for bytes.
enum Sock {
    Tcp(mio::net::TcpStream),
    Unix(mio::net::UnixStream),
    V4v(V4vStream),
}

impl Sock {
    fn fd(&self) -> RawFd {
        match self {
            Sock::Tcp(s) => s.as_raw_fd(),
            Sock::Unix(s) => s.as_raw_fd(),
            Sock::V4v(s) => s.as_raw_fd(),
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Sock::Tcp(s) => s.read(buf),
            Sock::Unix(s) => s.read(buf),
            Sock::V4v(s) => s.read(buf),
        }
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sock::Tcp(s) => s.write(buf),
            Sock::Unix(s) => s.write(buf),
            Sock::V4v(s) => s.write(buf),
        }
    }

    /// The orderly end of what we send: TCP FIN, V4V orderly close.
    fn shutdown_write(&self) -> io::Result<()> {
        match self {
            Sock::Tcp(s) => s.shutdown(Shutdown::Write),
            Sock::Unix(s) => s.shutdown(Shutdown::Write),
            Sock::V4v(s) => s.shutdown(Shutdown::Write),
        }
    }

    /// Closes abortively: TCP RST, V4V reset. A Unix socket has no reset; it is closed.
    fn reset(self) {
        match self {
            Sock::Tcp(s) => {
                let lin = libc::linger {
                    l_onoff: 1,
                    l_linger: 0,
                };
                // SAFETY: setsockopt reads `lin`, a valid linger of the size passed, on a
                // socket descriptor we own; the close that follows sends RST.
                unsafe {
                    libc::setsockopt(
                        s.as_raw_fd(),
                        libc::SOL_SOCKET,
                        libc::SO_LINGER,
                        (&lin as *const libc::linger).cast(),
                        std::mem::size_of::<libc::linger>() as libc::socklen_t,
                    )
                };
            }
            Sock::Unix(_) => {}
            Sock::V4v(s) => {
                // The stream may be gone already (the daemon answers ENOENT): nothing to do.
                let _ = s.abort();
            }
        }
    }
}

/// A target connection being set up.
enum Pending {
    /// TCP or Unix: connected (or refused) once the socket polls writable.
    Tcp(mio::net::TcpStream),
    Unix(mio::net::UnixStream),
    /// V4V: the daemon answers when the peer accepted.
    V4v(Connecting),
}

impl Pending {
    fn fd(&self) -> RawFd {
        match self {
            Pending::Tcp(s) => s.as_raw_fd(),
            Pending::Unix(s) => s.as_raw_fd(),
            Pending::V4v(c) => c.as_raw_fd(),
        }
    }

    /// The socket once connected, itself back while not yet, or why it failed.
    fn poll(self) -> Result<Result<Sock, Pending>, String> {
        /// Whether a non-blocking TCP or Unix connect is done (or why it failed).
        fn done(err: io::Result<Option<io::Error>>, peer: io::Result<()>) -> Result<bool, String> {
            match (err, peer) {
                (Ok(Some(e)), _) | (Err(e), _) => Err(e.to_string()),
                (Ok(None), Ok(())) => Ok(true),
                (Ok(None), Err(e)) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
                (Ok(None), Err(e)) => Err(e.to_string()),
            }
        }
        match self {
            Pending::Tcp(s) => match done(s.take_error(), s.peer_addr().map(|_| ()))? {
                true => {
                    let _ = s.set_nodelay(true);
                    Ok(Ok(Sock::Tcp(s)))
                }
                false => Ok(Err(Pending::Tcp(s))),
            },
            Pending::Unix(s) => match done(s.take_error(), s.peer_addr().map(|_| ()))? {
                true => Ok(Ok(Sock::Unix(s))),
                false => Ok(Err(Pending::Unix(s))),
            },
            Pending::V4v(mut c) => match c.poll() {
                Ok(Some(s)) => Ok(Ok(Sock::V4v(s))),
                Ok(None) => Ok(Err(Pending::V4v(c))),
                Err(e) => Err(e.to_string()),
            },
        }
    }
}

/// One direction of a connection: bytes read from one side, not yet written to the other.
#[derive(Default)]
struct Half {
    pending: Vec<u8>,
    pos: usize,
    /// The source side ended its output.
    eof: bool,
    /// We shut down writing to the destination (after everything was written).
    shut: bool,
    bytes: u64,
}

/// Why a connection is being torn down.
enum Fault {
    /// The side's read or write failed: the other side gets the reset.
    Side(Side, io::Error),
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Side {
    Client,
    Target,
}

enum Step {
    /// Everything readable was read, or a writer is full: wait for the next event.
    Idle,
    /// The budget ran out with data still flowing: come back after the other connections.
    Again,
}

enum TargetState {
    Connecting(Pending),
    Up(Sock),
}

struct Conn {
    client: Sock,
    client_name: String,
    target: TargetState,
    /// Client to target.
    up: Half,
    /// Target to client.
    down: Half,
    started: Instant,
}

/// Moves bytes from `src` to `dst` through `h` until `src` would block, `dst` is full, or the
/// budget is spent. Passes `src`'s end on as a write shutdown of `dst` once all was written.
fn pump(
    src: &mut Sock,
    src_side: Side,
    dst: &mut Sock,
    dst_side: Side,
    h: &mut Half,
    scratch: &mut [u8],
) -> Result<Step, Fault> {
    let wfail = |e| Fault::Side(dst_side, e);
    let rfail = |e| Fault::Side(src_side, e);
    for _ in 0..BUDGET {
        while h.pos < h.pending.len() {
            match dst.write(&h.pending[h.pos..]) {
                Ok(n) => h.pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Step::Idle),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(wfail(e)),
            }
        }
        if !h.pending.is_empty() {
            // Drained: give the memory back; a busy connection allocates again.
            h.pending = Vec::new();
            h.pos = 0;
        }
        if h.eof {
            if !h.shut {
                h.shut = true;
                dst.shutdown_write().map_err(wfail)?;
            }
            return Ok(Step::Idle);
        }
        match src.read(scratch) {
            Ok(0) => h.eof = true,
            Ok(n) => {
                h.bytes += n as u64;
                // Straight through when the writer keeps up; only the rest is kept.
                let mut w = 0;
                while w < n {
                    match dst.write(&scratch[w..n]) {
                        Ok(k) => w += k,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(wfail(e)),
                    }
                }
                if w < n {
                    h.pending.extend_from_slice(&scratch[w..n]);
                    return Ok(Step::Idle);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Step::Idle),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(rfail(e)),
        }
    }
    Ok(Step::Again)
}

/// The listening side.
enum Listening {
    Tcp(mio::net::TcpListener),
    Unix(mio::net::UnixListener, PathBuf),
    V4v(V4vListener),
}

impl Listening {
    fn fd(&self) -> RawFd {
        match self {
            Listening::Tcp(l) => l.as_raw_fd(),
            Listening::Unix(l, _) => l.as_raw_fd(),
            Listening::V4v(l) => l.as_raw_fd(),
        }
    }

    /// The next connection and a name for its peer; `WouldBlock` when none waits.
    fn accept(&mut self) -> Result<(Sock, String), AcceptError> {
        match self {
            Listening::Tcp(l) => {
                let (s, peer) = l.accept().map_err(AcceptError::Io)?;
                let _ = s.set_nodelay(true);
                Ok((Sock::Tcp(s), format!("tcp:{peer}")))
            }
            Listening::Unix(l, path) => {
                let (s, _) = l.accept().map_err(AcceptError::Io)?;
                let who = peer_cred(s.as_raw_fd())
                    .map(|(pid, uid)| format!(" (pid {pid}, uid {uid})"))
                    .unwrap_or_default();
                Ok((Sock::Unix(s), format!("unix:{}{who}", path.display())))
            }
            Listening::V4v(l) => match l.accept() {
                Ok((s, peer)) => {
                    s.set_nonblocking(true).map_err(AcceptError::Io)?;
                    Ok((Sock::V4v(s), format!("v4v:{peer}")))
                }
                Err(v4v::client::Error::Io(e)) => Err(AcceptError::Io(e)),
                Err(
                    e @ (v4v::client::Error::Protocol(_)
                    | v4v::client::Error::DaemonUnreachable { .. }),
                ) => Err(AcceptError::V4v(e)),
                // One connection could not be taken (the daemon's per-user limit, say): the
                // listener goes on.
                Err(e) => Err(AcceptError::Io(std::io::Error::other(e))),
            },
        }
    }
}

enum AcceptError {
    Io(io::Error),
    /// The daemon refused or went away: the listener is finished.
    V4v(v4v::client::Error),
}

/// The peer's pid and uid on a Unix socket.
fn peer_cred(fd: RawFd) -> Option<(i32, u32)> {
    let mut c = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `c`, a valid ucred.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut c as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    (r == 0).then_some((c.pid, c.uid))
}

/// Where the targets are, resolved once at start.
enum Resolved {
    Tcp(Vec<SocketAddr>),
    Unix(PathBuf),
    V4v(v4v::client::SockAddr),
    /// A domain by name: looked up again for every connection, so that the target follows the
    /// name when its domain is re-created with a new id.
    V4vNamed(String, u32),
}

struct Forwarder {
    poll: Poll,
    listener: Listening,
    target: Resolved,
    target_name: String,
    daemon: PathBuf,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    active: usize,
    max: usize,
    quiet: bool,
    scratch: Vec<u8>,
    again: VecDeque<usize>,
}

fn token(slot: usize, side: Side) -> Token {
    Token(slot * 2 + usize::from(side == Side::Target))
}

impl Forwarder {
    fn log(&self, msg: fmt::Arguments<'_>) {
        if !self.quiet {
            eprintln!("v4v-cli forward: {msg}");
        }
    }

    fn register(&self, fd: RawFd, t: Token) -> io::Result<()> {
        self.poll.registry().register(
            &mut SourceFd(&fd),
            t,
            Interest::READABLE | Interest::WRITABLE,
        )
    }

    fn connect_target(&self) -> Result<Pending, String> {
        match &self.target {
            Resolved::Tcp(addrs) => {
                let mut last = String::from("no address");
                for a in addrs {
                    match mio::net::TcpStream::connect(*a) {
                        Ok(s) => return Ok(Pending::Tcp(s)),
                        Err(e) => last = e.to_string(),
                    }
                }
                Err(last)
            }
            Resolved::Unix(p) => mio::net::UnixStream::connect(p)
                .map(Pending::Unix)
                .map_err(|e| e.to_string()),
            Resolved::V4v(a) => V4vStream::connect_start(&self.daemon, *a)
                .map(Pending::V4v)
                .map_err(|e| e.to_string()),
            Resolved::V4vNamed(name, port) => {
                let d = v4v::client::resolve(&self.daemon, name).map_err(|e| e.to_string())?;
                V4vStream::connect_start(&self.daemon, v4v::client::SockAddr::new(d, *port))
                    .map(Pending::V4v)
                    .map_err(|e| e.to_string())
            }
        }
    }

    /// Accepts while below the limit and connections wait.
    fn accept_ready(&mut self) -> Result<(), Failure> {
        while self.active < self.max {
            let (client, client_name) = match self.listener.accept() {
                Ok(c) => c,
                Err(AcceptError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(AcceptError::Io(e))
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                    ) =>
                {
                    continue;
                }
                Err(AcceptError::Io(e)) if e.raw_os_error() == Some(libc::EMFILE) => {
                    // Out of descriptors: retried when a connection ends.
                    self.log(format_args!(
                        "accept: {e} (retrying when a connection ends)"
                    ));
                    return Ok(());
                }
                Err(AcceptError::Io(e)) => {
                    self.log(format_args!("accept: {e}"));
                    return Ok(());
                }
                Err(AcceptError::V4v(e)) => {
                    return Err(Failure::client("accepting v4v connections", e));
                }
            };
            let started = Instant::now();
            let pending = match self.connect_target() {
                Ok(p) => p,
                Err(why) => {
                    self.log(format_args!(
                        "{client_name} -> {}: refused: {why}; connection reset",
                        self.target_name
                    ));
                    client.reset();
                    continue;
                }
            };
            let slot = self.free.pop().unwrap_or_else(|| {
                self.conns.push(None);
                self.conns.len() - 1
            });
            if let Err(e) = self
                .register(client.fd(), token(slot, Side::Client))
                .and_then(|()| self.register(pending.fd(), token(slot, Side::Target)))
            {
                self.free.push(slot);
                return Err(Failure::io("registering a connection", &e));
            }
            self.conns[slot] = Some(Conn {
                client,
                client_name,
                target: TargetState::Connecting(pending),
                up: Half::default(),
                down: Half::default(),
                started,
            });
            self.active += 1;
            // A V4V or Unix target may have answered already; edge-triggered events for it
            // are delivered anyway, so nothing is lost by waiting for them.
        }
        Ok(())
    }

    /// Works on connection `slot` after an event (or a pass with budget left over).
    fn service(&mut self, slot: usize) {
        let Some(mut c) = self.conns.get_mut(slot).and_then(Option::take) else {
            return;
        };
        // Moved out of the connection, and back in if it goes on.
        let mut t = match c.target {
            TargetState::Up(t) => t,
            TargetState::Connecting(p) => match p.poll() {
                Ok(Ok(t)) => t,
                Ok(Err(p)) => {
                    c.target = TargetState::Connecting(p);
                    self.conns[slot] = Some(c);
                    return;
                }
                Err(why) => {
                    self.log(format_args!(
                        "{} -> {}: refused: {why}; connection reset",
                        c.client_name, self.target_name
                    ));
                    c.client.reset();
                    self.release(slot);
                    return;
                }
            },
        };
        let r = pump(
            &mut c.client,
            Side::Client,
            &mut t,
            Side::Target,
            &mut c.up,
            &mut self.scratch,
        )
        .and_then(|a| {
            pump(
                &mut t,
                Side::Target,
                &mut c.client,
                Side::Client,
                &mut c.down,
                &mut self.scratch,
            )
            .map(|b| matches!(a, Step::Again) || matches!(b, Step::Again))
        });
        match r {
            Ok(_) if c.up.shut && c.down.shut => {
                self.log(format_args!(
                    "{} -> {}: closed, client sent {} B, target sent {} B, {:.1} s",
                    c.client_name,
                    self.target_name,
                    c.up.bytes,
                    c.down.bytes,
                    c.started.elapsed().as_secs_f64()
                ));
                self.release(slot);
            }
            Ok(again) => {
                if again {
                    self.again.push_back(slot);
                }
                c.target = TargetState::Up(t);
                self.conns[slot] = Some(c);
            }
            Err(Fault::Side(side, e)) => {
                let (which, other) = match side {
                    Side::Client => ("client", t),
                    Side::Target => ("target", c.client),
                };
                self.log(format_args!(
                    "{} -> {}: {which} failed: {e}; reset, client sent {} B, target sent {} B, {:.1} s",
                    c.client_name,
                    self.target_name,
                    c.up.bytes,
                    c.down.bytes,
                    c.started.elapsed().as_secs_f64()
                ));
                other.reset();
                self.release(slot);
            }
        }
    }

    /// A connection ended (its sockets are dropped by now): its slot is free again.
    fn release(&mut self, slot: usize) {
        self.conns[slot] = None;
        self.free.push(slot);
        self.active -= 1;
    }

    fn run(&mut self) -> Result<(), Failure> {
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = (!self.again.is_empty()).then_some(std::time::Duration::ZERO);
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(Failure::io("poll", &e));
            }
            let mut accept = false;
            for ev in &events {
                if ev.token() == LISTENER {
                    accept = true;
                } else {
                    self.service(ev.token().0 / 2);
                }
            }
            for _ in 0..self.again.len() {
                if let Some(slot) = self.again.pop_front() {
                    self.service(slot);
                }
            }
            // Also after connections ended: slots may have freed up under the limit.
            if accept || self.active < self.max {
                self.accept_ready()?;
            }
        }
    }
}

/// Raises the descriptor limit to its hard limit: each connection takes two or three.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into `lim`, a valid rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: setrlimit reads `lim`; raising the soft limit to the hard one is allowed.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    }
}

fn resolve(socket: &Path, t: &TargetAddr) -> Result<Resolved, Failure> {
    Ok(match t {
        TargetAddr::Tcp { host, port } => {
            let addrs: Vec<SocketAddr> = (host.as_str(), *port)
                .to_socket_addrs()
                .map_err(|e| Failure::new(Exit::Usage, format!("target {t}: {e}")))?
                .collect();
            if addrs.is_empty() {
                return Err(Failure::new(
                    Exit::Usage,
                    format!("target {t}: the host has no address"),
                ));
            }
            Resolved::Tcp(addrs)
        }
        TargetAddr::Unix(p) => Resolved::Unix(p.clone()),
        TargetAddr::V4v(a) => Resolved::V4v(*a),
        TargetAddr::V4vNamed { name, port } => {
            // Once now, so that a name nobody has fails at start (status 11), then per connection.
            crate::names::resolve_domain(socket, &v4v::names::DomainRef::Name(name.clone()))?;
            Resolved::V4vNamed(name.clone(), *port)
        }
    })
}

/// Binds a Unix listener, replacing a stale socket file nobody listens on.
fn bind_unix(path: &Path) -> io::Result<mio::net::UnixListener> {
    match mio::net::UnixListener::bind(path) {
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            use std::os::unix::fs::FileTypeExt;
            let stale = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket())
                && std::os::unix::net::UnixStream::connect(path)
                    .is_err_and(|e| e.kind() == io::ErrorKind::ConnectionRefused);
            if !stale {
                return Err(e);
            }
            std::fs::remove_file(path)?;
            mio::net::UnixListener::bind(path)
        }
        r => r,
    }
}

fn bind(socket: &Path, l: &ListenAddr) -> Result<(Listening, String), Failure> {
    Ok(match l {
        ListenAddr::Tcp { host, port } => {
            let what = format!("listen on {l}");
            let addr = (host.as_str(), *port)
                .to_socket_addrs()
                .map_err(|e| Failure::new(Exit::Usage, format!("{what}: {e}")))?
                .next()
                .ok_or_else(|| Failure::new(Exit::Usage, format!("{what}: no address")))?;
            let t = mio::net::TcpListener::bind(addr).map_err(|e| Failure::io(&what, &e))?;
            let name = match t.local_addr() {
                Ok(a) => format!("tcp-listen:{a}"),
                Err(_) => l.to_string(),
            };
            (Listening::Tcp(t), name)
        }
        ListenAddr::Unix(p) => {
            let u = bind_unix(p).map_err(|e| Failure::io(&format!("listen on {l}"), &e))?;
            (Listening::Unix(u, p.clone()), l.to_string())
        }
        ListenAddr::V4v(port) => {
            let mut v = V4vListener::bind_with(socket, *port)
                .map_err(|e| Failure::client(&format!("listen on {l}"), e))?;
            v.set_nonblocking(true)
                .map_err(|e| Failure::io(&format!("listen on {l}"), &e))?;
            let name = format!("v4v-listen:{}", v.local_port());
            (Listening::V4v(v), name)
        }
    })
}

pub fn run(socket: &Path, opts: Opts) -> Result<(), Failure> {
    if opts.max_connections == 0 {
        return Err(Failure::new(
            Exit::Usage,
            "--max-connections must be at least 1",
        ));
    }
    raise_fd_limit();
    let target = resolve(socket, &opts.target)?;
    let (listener, listen_name) = bind(socket, &opts.listen)?;
    let poll = Poll::new().map_err(|e| Failure::io("creating the event loop", &e))?;
    poll.registry()
        .register(&mut SourceFd(&listener.fd()), LISTENER, Interest::READABLE)
        .map_err(|e| Failure::io("registering the listener", &e))?;
    let mut f = Forwarder {
        poll,
        listener,
        target,
        target_name: opts.target.to_string(),
        daemon: socket.to_path_buf(),
        conns: Vec::new(),
        free: Vec::new(),
        active: 0,
        max: opts.max_connections,
        quiet: opts.quiet,
        scratch: vec![0; BUF],
        again: VecDeque::new(),
    };
    // Always said, even with --quiet: with port 0 it is the only way to learn the port.
    eprintln!(
        "v4v-cli forward: listening on {listen_name}, forwarding to {}",
        f.target_name
    );
    f.run()
}
