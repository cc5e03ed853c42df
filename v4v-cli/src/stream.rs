// SPDX-License-Identifier: MIT OR Apache-2.0
//! `listen` and `connect`: a stream on stdin/stdout, netcat style.
//!
//! One thread polls stdin and the stream. stdin's end is passed on as an orderly close
//! (`shutdown(Write)`), and the command ends when both directions have ended — so
//! `connect < file` delivers the whole file even if the peer closed its side first. When stdin is
//! a terminal, the peer's close ends the session at once. A reset ends it with status 7.
//! stdout is written blocking: a slow stdout stops the reading of the stream, which stops the
//! peer's sender through V4V flow control.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::path::Path;

use v4v::client::{Listener, SockAddr, Stream};

use crate::exit::{Exit, Failure};

const BUF: usize = 64 * 1024;

/// stdin's side, kept across the connections a listener serves one after another.
struct Stdin {
    buf: Vec<u8>,
    pos: usize,
    eof: bool,
    tty: bool,
}

impl Stdin {
    fn new() -> Self {
        // SAFETY: isatty only inspects the descriptor number.
        let tty = unsafe { libc::isatty(libc::STDIN_FILENO) } == 1;
        Stdin {
            buf: Vec::with_capacity(BUF),
            pos: 0,
            eof: false,
            tty,
        }
    }

    fn pending(&self) -> &[u8] {
        &self.buf[self.pos..]
    }
}

/// Copies stdin to the stream and the stream to stdout until both directions ended.
fn pump(s: &mut Stream, input: &mut Stdin) -> Result<(), Failure> {
    let peer = s.peer_addr();
    let what = format!("stream with {peer}");
    s.set_nonblocking(true)
        .map_err(|e| Failure::io(&what, &e))?;
    let mut out = io::stdout().lock();
    let mut rbuf = vec![0u8; BUF];
    let mut shut = false;
    let mut peer_eof = false;
    let mut stdout_gone = false;
    loop {
        if input.eof && input.pending().is_empty() && !shut {
            shut = true;
            // The peer reads end of file after everything we sent.
            let _ = s.shutdown(Shutdown::Write);
        }
        if peer_eof && (shut || input.tty) {
            return Ok(());
        }
        let want_stdin = !input.eof && input.pending().is_empty();
        let mut fds = [
            libc::pollfd {
                fd: if want_stdin { libc::STDIN_FILENO } else { -1 },
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: s.as_raw_fd(),
                events: (if peer_eof { 0 } else { libc::POLLIN })
                    | (if input.pending().is_empty() {
                        0
                    } else {
                        libc::POLLOUT
                    }),
                revents: 0,
            },
        ];
        // SAFETY: `fds` is an array of two valid pollfds for the duration of the call.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(Failure::io("poll", &e));
        }
        if fds[0].revents != 0 {
            if fds[0].revents & libc::POLLNVAL != 0 {
                input.eof = true;
            } else {
                input.buf.resize(BUF, 0);
                input.pos = 0;
                // poll said readable (or hung up): this read does not block.
                match io::stdin().lock().read(&mut input.buf) {
                    Ok(0) => {
                        input.buf.clear();
                        input.eof = true;
                    }
                    Ok(n) => input.buf.truncate(n),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => input.buf.clear(),
                    Err(e) => return Err(Failure::io("reading stdin", &e)),
                }
            }
        }
        if fds[1].revents & (libc::POLLOUT | libc::POLLERR | libc::POLLHUP) != 0
            && !input.pending().is_empty()
        {
            match s.write(input.pending()) {
                Ok(n) => input.pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Failure::io(&what, &e)),
            }
        }
        if fds[1].revents & (libc::POLLIN | libc::POLLERR | libc::POLLHUP) != 0 && !peer_eof {
            match s.read(&mut rbuf) {
                Ok(0) => peer_eof = true,
                Ok(_) if stdout_gone => {}
                Ok(n) => match out.write_all(&rbuf[..n]).and_then(|()| out.flush()) {
                    Ok(()) => {}
                    // Nobody reads our output any more: keep the stream going, drop its data.
                    Err(e) if e.kind() == io::ErrorKind::BrokenPipe => stdout_gone = true,
                    Err(e) => return Err(Failure::io("writing stdout", &e)),
                },
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Failure::io(&what, &e)),
            }
        }
    }
}

pub fn connect(socket: &Path, dest: SockAddr) -> Result<(), Failure> {
    let mut s = Stream::connect_with(socket, dest)
        .map_err(|e| Failure::client(&format!("connect to {dest}"), e))?;
    pump(&mut s, &mut Stdin::new())
}

pub fn listen(socket: &Path, port: u32, once: bool) -> Result<(), Failure> {
    let mut l = Listener::bind_with(socket, port)
        .map_err(|e| Failure::client(&format!("listen on port {port}"), e))?;
    if port == 0 {
        eprintln!("v4v-cli: listening on port {}", l.local_port());
    }
    let mut input = Stdin::new();
    loop {
        let (mut s, peer) = l
            .accept()
            .map_err(|e| Failure::client(&format!("accept on port {}", l.local_port()), e))?;
        let r = pump(&mut s, &mut input);
        if once {
            return r;
        }
        if let Err(f) = r {
            // One failed connection does not end a long-running listener.
            eprintln!("v4v-cli: {} (from {peer})", f.message);
            if f.code == Exit::Unreachable {
                return Err(f);
            }
        }
    }
}
