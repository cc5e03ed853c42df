// SPDX-License-Identifier: MIT OR Apache-2.0
//! `listen PORT --exec CMD [ARGS...]`: one command per accepted stream, the stream as its stdin
//! and stdout (inetd / qrexec style).
//!
//! This module owns the listener, the children and the streams they were given; the children
//! own nothing of ours but copies of one descriptor. The child gets the stream's own
//! descriptor (the Unix connection to v4vd, which *is* the byte stream after the handshake) as
//! fds 0 and 1, so its bytes never pass through this process; its stderr is ours (the log,
//! never the peer). We keep our own copy of the descriptor and watch the child through a
//! pidfd, because how the stream ends is decided when the child ends:
//!
//! - the child exited (any status): we shut down writing (the peer reads an orderly end after
//!   everything the child wrote) and read and discard what the peer still sends until it closes
//!   too, at most [`DRAIN_LIMIT`], so that unread data does not turn the close into a reset;
//! - the child was killed by a signal: we send the daemon `RESET` for the stream, and the peer
//!   reads a reset. (Were the descriptor the child's alone, a killed child's close would look
//!   orderly; holding a copy is what lets us tell the daemon otherwise.)
//!
//! Our copy stays in blocking mode while the child runs: the file status flags are shared, and
//! a child expects ordinary blocking stdin and stdout. Past `--max-children` nothing more is
//! accepted; new connections wait in the daemon's backlog. At most as many streams as
//! `--max-children` drain at once; past that a finished stream is closed at once (a reset if
//! the peer's data is still unread).

use std::collections::HashMap;
use std::io::{self, Read};
use std::net::Shutdown;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use v4v::client::{Listener, SockAddr, Stream};

use crate::exit::{Exit, Failure};

pub const DEFAULT_MAX_CHILDREN: usize = 64;
/// How long a stream whose child exited waits for the peer to close before it is reset.
pub const DRAIN_LIMIT: Duration = Duration::from_secs(10);
const LISTENER: Token = Token(usize::MAX);

/// A running child and the stream it serves.
struct Running {
    child: Child,
    pidfd: OwnedFd,
    stream: Stream,
    peer: SockAddr,
}

/// A stream whose child exited: the peer's last bytes are read and dropped until it closes.
struct Draining {
    stream: Stream,
    peer: SockAddr,
    deadline: Instant,
}

struct Server {
    poll: Poll,
    listener: Listener,
    cmd: Vec<String>,
    socket: std::path::PathBuf,
    running: HashMap<usize, Running>,
    draining: HashMap<usize, Draining>,
    next_id: usize,
    max: usize,
    scratch: Vec<u8>,
}

/// `pidfd_open(2)`: a descriptor that polls readable when the process has exited.
fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1; no memory
    // is passed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just gave us this descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

fn describe(st: ExitStatus) -> String {
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("exited with status {c}"),
        (None, Some(s)) => format!(
            "killed by signal {s}{}",
            if st.core_dumped() {
                " (core dumped)"
            } else {
                ""
            }
        ),
        _ => format!("ended ({st})"),
    }
}

impl Server {
    fn log(&self, peer: SockAddr, msg: std::fmt::Arguments<'_>) {
        eprintln!(
            "v4v-cli listen: {peer} on port {}: {msg}",
            self.listener.local_port()
        );
    }

    fn spawn(&self, stream: &Stream, peer: SockAddr) -> io::Result<Child> {
        let stdin = stream.as_fd().try_clone_to_owned()?;
        let stdout = stream.as_fd().try_clone_to_owned()?;
        // The peer's name when this domain may see one (dom0 sees all, a guest what dom0
        // publishes); never inherited from our own environment.
        let name = v4v::client::name_of(&self.socket, peer.domid).unwrap_or_else(|e| {
            self.log(peer, format_args!("cannot look up the peer's name: {e}"));
            None
        });
        let mut cmd = Command::new(&self.cmd[0]);
        match name {
            Some(n) => cmd.env("V4V_PEER_NAME", n),
            None => cmd.env_remove("V4V_PEER_NAME"),
        };
        cmd.args(&self.cmd[1..])
            .stdin(Stdio::from(stdin))
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::inherit())
            .env("V4V_PEER_DOMAIN", peer.domid.to_string())
            .env("V4V_PEER_PORT", peer.port.to_string())
            .env("V4V_LOCAL_PORT", self.listener.local_port().to_string())
            .env(v4v::client::proto::SOCKET_ENV, &self.socket)
            .spawn()
    }

    /// Accepts and starts children while below the limit and connections wait.
    fn accept_ready(&mut self) -> Result<(), Failure> {
        while self.running.len() < self.max {
            let (stream, peer) = match self.listener.accept() {
                Ok(s) => s,
                Err(v4v::client::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Ok(());
                }
                Err(
                    e @ (v4v::client::Error::Protocol(_)
                    | v4v::client::Error::DaemonUnreachable { .. }),
                ) => {
                    let port = self.listener.local_port();
                    return Err(Failure::client(&format!("accept on port {port}"), e));
                }
                Err(e) => {
                    // One connection could not be taken (the daemon's per-user limit, say):
                    // the listener goes on.
                    eprintln!(
                        "v4v-cli listen: accept on port {}: {e}",
                        self.listener.local_port()
                    );
                    return Ok(());
                }
            };
            let child = match self.spawn(&stream, peer) {
                Ok(c) => c,
                Err(e) => {
                    self.log(
                        peer,
                        format_args!("cannot run {:?}: {e}; stream reset", self.cmd[0]),
                    );
                    let _ = stream.abort();
                    continue;
                }
            };
            let pidfd = match pidfd_open(child.id()) {
                Ok(p) => p,
                Err(e) => return Err(Failure::io("pidfd_open", &e)),
            };
            let id = self.next_id;
            self.next_id += 1;
            self.poll
                .registry()
                .register(
                    &mut SourceFd(&pidfd.as_raw_fd()),
                    Token(id * 2),
                    Interest::READABLE,
                )
                .map_err(|e| Failure::io("registering a child", &e))?;
            self.running.insert(
                id,
                Running {
                    child,
                    pidfd,
                    stream,
                    peer,
                },
            );
        }
        Ok(())
    }

    /// The child of `id` has exited: log it, end its stream the way its end calls for.
    fn reap(&mut self, id: usize) {
        let Some(mut r) = self.running.remove(&id) else {
            return;
        };
        let _ = self
            .poll
            .registry()
            .deregister(&mut SourceFd(&r.pidfd.as_raw_fd()));
        let pid = r.child.id();
        let st = match r.child.wait() {
            Ok(st) => st,
            Err(e) => {
                self.log(
                    r.peer,
                    format_args!("waiting for pid {pid}: {e}; stream reset"),
                );
                let _ = r.stream.abort();
                return;
            }
        };
        if st.signal().is_some() {
            self.log(
                r.peer,
                format_args!("{} (pid {pid}) {}; stream reset", self.cmd[0], describe(st)),
            );
            if let Err(e) = r.stream.abort() {
                self.log(r.peer, format_args!("resetting the stream: {e}"));
            }
            return;
        }
        self.log(
            r.peer,
            format_args!(
                "{} (pid {pid}) {}; stream closed",
                self.cmd[0],
                describe(st)
            ),
        );
        // Orderly: the peer reads end of file after everything the child wrote.
        let _ = r.stream.shutdown(Shutdown::Write);
        if self.draining.len() >= self.max || r.stream.set_nonblocking(true).is_err() {
            return;
        }
        let fd = r.stream.as_raw_fd();
        if self
            .poll
            .registry()
            .register(&mut SourceFd(&fd), Token(id * 2 + 1), Interest::READABLE)
            .is_err()
        {
            return;
        }
        self.draining.insert(
            id,
            Draining {
                stream: r.stream,
                peer: r.peer,
                deadline: Instant::now() + DRAIN_LIMIT,
            },
        );
        self.drain(id);
    }

    /// Reads and drops what the peer still sends after its child exited, until it closes.
    fn drain(&mut self, id: usize) {
        let Some(d) = self.draining.get_mut(&id) else {
            return;
        };
        loop {
            match d.stream.read(&mut self.scratch) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        if let Some(d) = self.draining.remove(&id) {
            let _ = self
                .poll
                .registry()
                .deregister(&mut SourceFd(&d.stream.as_raw_fd()));
        }
    }

    /// Streams whose peer did not close within [`DRAIN_LIMIT`] are reset.
    fn expire(&mut self) {
        let now = Instant::now();
        let late: Vec<usize> = self
            .draining
            .iter()
            .filter(|(_, d)| d.deadline <= now)
            .map(|(&id, _)| id)
            .collect();
        for id in late {
            if let Some(d) = self.draining.remove(&id) {
                let _ = self
                    .poll
                    .registry()
                    .deregister(&mut SourceFd(&d.stream.as_raw_fd()));
                self.log(
                    d.peer,
                    format_args!(
                        "the peer still sends {} s after the command ended; stream reset",
                        DRAIN_LIMIT.as_secs()
                    ),
                );
                let _ = d.stream.abort();
            }
        }
    }

    fn run(&mut self) -> Result<(), Failure> {
        let mut events = Events::with_capacity(256);
        self.accept_ready()?;
        loop {
            let timeout = self
                .draining
                .values()
                .map(|d| d.deadline.saturating_duration_since(Instant::now()))
                .min();
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(Failure::io("poll", &e));
            }
            for ev in &events {
                match ev.token() {
                    LISTENER => {}
                    Token(t) if t % 2 == 0 => self.reap(t / 2),
                    Token(t) => self.drain(t / 2),
                }
            }
            self.expire();
            self.accept_ready()?;
        }
    }
}

pub fn run(socket: &Path, port: u32, cmd: Vec<String>, max: usize) -> Result<(), Failure> {
    if max == 0 {
        return Err(Failure::new(
            Exit::Usage,
            "--max-children must be at least 1",
        ));
    }
    if cmd.first().is_none_or(|c| c.is_empty()) {
        return Err(Failure::new(Exit::Usage, "--exec needs a command"));
    }
    let mut listener = Listener::bind_with(socket, port)
        .map_err(|e| Failure::client(&format!("listen on port {port}"), e))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| Failure::io("listen", &e))?;
    if port == 0 {
        eprintln!("v4v-cli: listening on port {}", listener.local_port());
    }
    let poll = Poll::new().map_err(|e| Failure::io("creating the event loop", &e))?;
    poll.registry()
        .register(
            &mut SourceFd(&listener.as_raw_fd()),
            LISTENER,
            Interest::READABLE,
        )
        .map_err(|e| Failure::io("registering the listener", &e))?;
    Server {
        poll,
        listener,
        cmd,
        socket: socket.to_path_buf(),
        running: HashMap::new(),
        draining: HashMap::new(),
        next_id: 0,
        max,
        scratch: vec![0; 64 * 1024],
    }
    .run()
}
