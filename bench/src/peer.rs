// SPDX-License-Identifier: MIT OR Apache-2.0
//! The other end of every measurement, run as a separate process (`v4v-bench __peer ROLE ...`,
//! spawned by [`crate::measure`]), so that V4V and the Unix baseline both cross a process
//! boundary as they do for a real program.
//!
//! Unix roles use descriptor 3, one end of the socket pair the parent made. V4V roles talk to
//! the daemon socket they are given through `v4v::client`, as a user program would. Every
//! sender waits for the parent's one-byte "go" (`G`) so that the parent's clock starts when
//! the data starts, not when the process does.

use std::io::{Read, Write};
use std::os::fd::FromRawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use v4v::client::{Datagram, Listener, ShmStream, SockAddr, Stream};

/// Descriptor 3: the child's end of the socket pair.
pub const PEER_FD: i32 = 3;
/// A one-byte datagram that ends an echo loop.
pub const QUIT: &[u8] = b"Q";
/// How long a peer waits for a datagram before it gives up (the parent died, a datagram was
/// lost): a benchmark never hangs.
pub const PATIENCE: Duration = Duration::from_secs(30);

fn num(v: Option<&String>, what: &str) -> Result<u64, String> {
    v.and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("peer: {what} missing or not a number"))
}

fn fd3() -> UnixStream {
    // SAFETY: the parent put one end of a socket pair at descriptor 3 for this process
    // (`measure::spawn_unix`), and nothing else in this process owns it.
    unsafe { UnixStream::from_raw_fd(PEER_FD) }
}

/// Writes `total` bytes in writes of `wsize` (each write whole).
pub fn send_bytes(w: &mut impl Write, total: u64, wsize: usize) -> std::io::Result<()> {
    let buf = vec![0x5au8; wsize];
    let mut left = total;
    while left > 0 {
        let n = left.min(wsize as u64) as usize;
        w.write_all(&buf[..n])?;
        left -= n as u64;
    }
    Ok(())
}

/// Echoes what it reads until end of file (a stream or a SOCK_SEQPACKET pair: one read, one
/// message).
fn echo(s: &mut (impl Read + Write)) -> Result<(), String> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = s
            .read(&mut buf)
            .map_err(|e| format!("peer echo read: {e}"))?;
        if n == 0 {
            return Ok(());
        }
        s.write_all(&buf[..n])
            .map_err(|e| format!("peer echo write: {e}"))?;
    }
}

/// Waits for the parent's go on `s`, then writes `total` bytes in writes of `wsize`.
fn stream_send(mut s: impl Read + Write, total: u64, wsize: usize) -> Result<(), String> {
    go(&mut s)?;
    send_bytes(&mut s, total, wsize).map_err(|e| format!("peer send: {e}"))
}

fn go(s: &mut impl Read) -> Result<(), String> {
    let mut b = [0u8; 1];
    s.read_exact(&mut b)
        .map_err(|e| format!("peer: no go from the parent: {e}"))
}

/// Runs role `args[0]` with its arguments.
pub fn main(args: &[String]) -> Result<(), String> {
    let a = |i: usize| args.get(i);
    let sock = || a(1).map(PathBuf::from).ok_or("peer: daemon socket missing");
    let dst = || -> Result<SockAddr, String> {
        Ok(SockAddr::new(
            num(a(2), "domain")? as u16,
            num(a(3), "port")? as u32,
        ))
    };
    match a(0).map(String::as_str) {
        // unix-stream-send BYTES WSIZE
        Some("unix-stream-send") => {
            let mut s = fd3();
            go(&mut s)?;
            send_bytes(
                &mut s,
                num(a(1), "bytes")?,
                num(a(2), "write size")? as usize,
            )
            .map_err(|e| format!("peer send: {e}"))
        }
        // unix-dgram-send COUNT SIZE (SOCK_SEQPACKET: one write, one message)
        Some("unix-dgram-send") => {
            let mut s = fd3();
            go(&mut s)?;
            let buf = vec![0x5au8; num(a(2), "size")? as usize];
            for _ in 0..num(a(1), "count")? {
                let n = s.write(&buf).map_err(|e| format!("peer send: {e}"))?;
                if n != buf.len() {
                    return Err(format!("peer: a {}-byte message went as {n}", buf.len()));
                }
            }
            Ok(())
        }
        Some("unix-echo") => echo(&mut fd3()),
        // v4v-stream-send SOCK DOM PORT BYTES WSIZE
        Some("v4v-stream-send") => {
            let s = Stream::connect_with(&sock()?, dst()?).map_err(|e| e.to_string())?;
            stream_send(s, num(a(4), "bytes")?, num(a(5), "write size")? as usize)
        }
        // v4v-shm-stream-send SOCK DOM PORT BYTES WSIZE: the same through shared memory.
        Some("v4v-shm-stream-send") => {
            let s = ShmStream::connect_with(&sock()?, dst()?).map_err(|e| e.to_string())?;
            stream_send(s, num(a(4), "bytes")?, num(a(5), "write size")? as usize)
        }
        // v4v-stream-echo SOCK DOM PORT
        Some("v4v-stream-echo") => {
            let mut s = Stream::connect_with(&sock()?, dst()?).map_err(|e| e.to_string())?;
            echo(&mut s)
        }
        // v4v-shm-stream-echo SOCK DOM PORT
        Some("v4v-shm-stream-echo") => {
            let mut s = ShmStream::connect_with(&sock()?, dst()?).map_err(|e| e.to_string())?;
            echo(&mut s)
        }
        // v4v-dgram-send SOCK DOM PORT COUNT SIZE: says hello, waits for go, sends.
        Some("v4v-dgram-send") => {
            let (mut d, to) = (
                Datagram::bind_with(&sock()?, 0, None).map_err(|e| e.to_string())?,
                dst()?,
            );
            d.send_to(b"H", to)
                .map_err(|e| format!("peer hello: {e}"))?;
            d.recv_timeout(Some(PATIENCE))
                .map_err(|e| format!("peer: no go: {e}"))?;
            let buf = vec![0x5au8; num(a(5), "size")? as usize];
            for _ in 0..num(a(4), "count")? {
                d.send_to(&buf, to).map_err(|e| format!("peer send: {e}"))?;
            }
            // Sends are pipelined: the last ones are delivered before the port goes.
            d.flush().map_err(|e| format!("peer flush: {e}"))
        }
        // v4v-dgram-echo SOCK DOM PORT: says hello, echoes until QUIT.
        Some("v4v-dgram-echo") => {
            let mut d = Datagram::bind_with(&sock()?, 0, None).map_err(|e| e.to_string())?;
            d.send_to(b"H", dst()?)
                .map_err(|e| format!("peer hello: {e}"))?;
            loop {
                let (m, from) = d
                    .recv_timeout(Some(PATIENCE))
                    .map_err(|e| format!("peer echo: {e}"))?;
                if m == QUIT {
                    return Ok(());
                }
                d.send_to(&m, from).map_err(|e| format!("peer echo: {e}"))?;
            }
        }
        // v4v-hold SOCK COUNT: listens, prints the port, accepts COUNT streams, prints "ok",
        // holds them until its stdin ends.
        Some("v4v-hold") => {
            let mut l = Listener::bind_with(&sock()?, 0).map_err(|e| e.to_string())?;
            let mut out = std::io::stdout();
            let line = |out: &mut std::io::Stdout, s: String| {
                writeln!(out, "{s}")
                    .and_then(|()| out.flush())
                    .map_err(|e| format!("peer stdout: {e}"))
            };
            line(&mut out, l.local_port().to_string())?;
            let mut held = Vec::new();
            for _ in 0..num(a(2), "count")? {
                held.push(l.accept().map_err(|e| format!("peer accept: {e}"))?.0);
            }
            line(&mut out, "ok".into())?;
            let mut sink = Vec::new();
            let _ = std::io::stdin().read_to_end(&mut sink);
            drop(held);
            Ok(())
        }
        other => Err(format!("peer: unknown role {other:?}")),
    }
}
