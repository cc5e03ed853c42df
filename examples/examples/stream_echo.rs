// SPDX-License-Identifier: MIT OR Apache-2.0
//! A V4V stream echo service: `stream_echo PORT`. Every connection gets its bytes back; one
//! thread per connection, like a `std::net::TcpListener` server.
//!
//! Try it: `v4v-cli connect DOM:PORT` from another domain, type, read the echo.

use std::io::{self, Read, Write};

use v4v::client::Listener;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port: u32 = std::env::args()
        .nth(1)
        .ok_or("usage: stream_echo PORT")?
        .parse()?;
    let mut listener = Listener::bind(port)?;
    eprintln!("echoing streams on port {}", listener.local_port());
    loop {
        let (mut stream, peer) = listener.accept()?;
        std::thread::spawn(move || {
            let mut buf = [0u8; 16 * 1024];
            let r: io::Result<u64> = (|| {
                let mut total = 0u64;
                loop {
                    let n = stream.read(&mut buf)?;
                    if n == 0 {
                        return Ok(total); // the peer closed orderly
                    }
                    stream.write_all(&buf[..n])?;
                    total += n as u64;
                }
            })();
            match r {
                Ok(n) => eprintln!("{peer}: {n} bytes echoed"),
                // A reset says why: the peer aborted, vanished, or the ACL stepped in.
                Err(e) => eprintln!("{peer}: {e}"),
            }
        });
    }
}
