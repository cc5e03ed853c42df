// SPDX-License-Identifier: MIT OR Apache-2.0
//! A V4V stream echo service: `stream_echo PORT [--shm]`. Every connection gets its bytes back;
//! one thread per connection, like a `std::net::TcpListener` server. With `--shm` each
//! connection is a `ShmStream` (its bytes pass through memory shared with the daemon, not the
//! Unix socket): the same code, since both are `Read + Write`; the peer cannot tell.
//!
//! Try it: `v4v-cli connect DOM:PORT` from another domain, type, read the echo.

use std::io::{self, Read, Write};

use v4v::client::{Listener, SockAddr};

/// Echoes until the peer's orderly close: the bytes echoed, or the reset.
fn echo(stream: &mut (impl Read + Write)) -> io::Result<u64> {
    let mut buf = [0u8; 16 * 1024];
    let mut total = 0u64;
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok(total); // the peer closed orderly
        }
        stream.write_all(&buf[..n])?;
        total += n as u64;
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let port: u32 = args
        .next()
        .ok_or("usage: stream_echo PORT [--shm]")?
        .parse()?;
    let shm = match args.next().as_deref() {
        None => false,
        Some("--shm") => true,
        Some(other) => return Err(format!("unknown argument {other:?}").into()),
    };
    let mut listener = Listener::bind(port)?;
    eprintln!("echoing streams on port {}", listener.local_port());
    loop {
        if shm {
            let (stream, peer) = listener.accept_shm()?;
            serve(stream, peer);
        } else {
            let (stream, peer) = listener.accept()?;
            serve(stream, peer);
        }
    }
}

/// Echoes `stream` on a thread of its own and says how it ended.
fn serve(mut stream: impl Read + Write + Send + 'static, peer: SockAddr) {
    std::thread::spawn(move || match echo(&mut stream) {
        Ok(n) => eprintln!("{peer}: {n} bytes echoed"),
        // A reset says why: the peer aborted, vanished, or the ACL stepped in.
        Err(e) => eprintln!("{peer}: {e}"),
    });
}
