// SPDX-License-Identifier: MIT OR Apache-2.0
//! Datagrams in a mio event loop: `dgram_mio PORT` answers every datagram with its payload in
//! upper case, serving it from a non-blocking [`Datagram`] registered with mio.
//!
//! Try it: `v4v-cli recv 9 --count 1 & v4v-cli send --from-port 9 DOM:PORT hello`.

use std::io;
use std::os::fd::AsRawFd;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use v4v::client::{Datagram, Error};

const DGRAM: Token = Token(0);

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port: u32 = std::env::args()
        .nth(1)
        .ok_or("usage: dgram_mio PORT")?
        .parse()?;
    let mut sock = Datagram::bind(port)?;
    sock.set_nonblocking(true)?;
    let mut poll = Poll::new()?;
    poll.registry()
        .register(&mut SourceFd(&sock.as_raw_fd()), DGRAM, Interest::READABLE)?;
    eprintln!("answering datagrams on port {}", sock.local_port());
    let mut events = Events::with_capacity(16);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        poll.poll(&mut events, None)?;
        // Edge-triggered: drain everything that is there.
        loop {
            match sock.recv_from(&mut buf) {
                Ok((n, from)) => {
                    let reply = buf[..n].to_ascii_uppercase();
                    // A full destination gives WouldBlock in non-blocking mode: this example
                    // drops the reply then; a real service would queue it and retry.
                    match sock.send_to(&reply, from) {
                        Ok(_) => {}
                        Err(Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                            eprintln!("{from}: ring full, reply dropped")
                        }
                        Err(e) => eprintln!("{from}: {e}"),
                    }
                }
                Err(Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e.into()),
            }
        }
    }
}
