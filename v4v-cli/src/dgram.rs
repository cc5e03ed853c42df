// SPDX-License-Identifier: MIT OR Apache-2.0
//! `send` and `recv`: one datagram out, datagrams in.

use std::io::{self, Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use v4v::client::proto::MAX_DGRAM;
use v4v::client::{Datagram, Error, SockAddr};

use crate::exit::{Exit, Failure};

pub fn send(
    socket: &Path,
    dest: SockAddr,
    message: Option<String>,
    from_port: u32,
    nowait: bool,
) -> Result<(), Failure> {
    let payload = match message {
        Some(m) => m.into_bytes(),
        None => {
            // Read at most one byte past the V4V maximum so an oversized stdin is refused
            // without reading it all into memory.
            let mut b = Vec::new();
            io::stdin()
                .lock()
                .take(u64::from(MAX_DGRAM) + 1)
                .read_to_end(&mut b)
                .map_err(|e| Failure::io("reading stdin", &e))?;
            b
        }
    };
    if payload.len() > MAX_DGRAM as usize {
        return Err(Failure::new(
            Exit::TooBig,
            format!("send to {dest}: message bigger than the V4V maximum of {MAX_DGRAM} bytes"),
        ));
    }
    let mut d = Datagram::bind_with(socket, from_port, None)
        .map_err(|e| Failure::client("binding a datagram port", e))?;
    // One datagram, its own answer: the exit status says whether it was delivered.
    d.set_window(1)
        .map_err(|e| Failure::client("setting the send window", e))?;
    if nowait {
        d.set_nonblocking(true)
            .map_err(|e| Failure::io("non-blocking mode", &e))?;
    }
    match d.send_to(&payload, dest) {
        Ok(_) => Ok(()),
        Err(Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => Err(Failure::new(
            Exit::TimedOut,
            format!("send to {dest}: the destination ring is full (--nowait)"),
        )),
        Err(e) => Err(Failure::client(&format!("send to {dest}"), e)),
    }
}

pub struct RecvOpts {
    pub port: u32,
    pub count: Option<u64>,
    pub timeout: Option<f64>,
    pub from: Option<u16>,
    pub raw: bool,
    pub verbose: bool,
}

pub fn recv(socket: &Path, o: RecvOpts) -> Result<(), Failure> {
    let timeout = match o.timeout {
        Some(t) if t.is_finite() && t >= 0.0 => Some(Duration::from_secs_f64(t)),
        Some(t) => {
            return Err(Failure::new(
                Exit::Usage,
                format!("--timeout {t}: not a number of seconds"),
            ));
        }
        None => None,
    };
    let mut d = Datagram::bind_with(socket, o.port, o.from)
        .map_err(|e| Failure::client(&format!("binding port {}", o.port), e))?;
    if o.port == 0 {
        eprintln!("v4v-cli: receiving on port {}", d.local_port());
    }
    let deadline = timeout.map(|t| Instant::now() + t);
    let mut out = io::stdout().lock();
    let mut got = 0u64;
    while o.count.is_none_or(|n| got < n) {
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let (payload, from) = match d.recv_timeout(left) {
            Ok(x) => x,
            Err(Error::TimedOut(_)) => {
                return match o.count {
                    Some(n) => Err(Failure::new(
                        Exit::TimedOut,
                        format!(
                            "recv on port {}: timed out after {got} of {n} datagrams",
                            o.port
                        ),
                    )),
                    None => Ok(()),
                };
            }
            Err(e) => return Err(Failure::client(&format!("recv on port {}", o.port), e)),
        };
        got += 1;
        let w = (|| -> io::Result<()> {
            if o.verbose {
                write!(out, "{from}\t")?;
            }
            out.write_all(&payload)?;
            if !o.raw {
                out.write_all(b"\n")?;
            }
            out.flush()
        })();
        match w {
            Ok(()) => {}
            // A reader that went away (`| head -1`) ends the command quietly.
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(()),
            Err(e) => return Err(Failure::io("writing stdout", &e)),
        }
    }
    Ok(())
}
