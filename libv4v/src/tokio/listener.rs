// SPDX-License-Identifier: MIT OR Apache-2.0
//! [`Listener`] and [`Incoming`]: accepting V4V streams on tokio.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use ::tokio::net::UnixStream;
use ::tokio::task::JoinHandle;

use super::{Stream, blocking};
use crate::client::proto::{MAX_LINE, SockAddr};
use crate::client::stream::{ListenerParts, accept_announced};
use crate::client::{self, Error};

/// How many announced connections are taken at once.
const MAX_TAKING: usize = 32;

type Accepted = Result<Option<(client::Stream, SockAddr)>, Error>;

/// A listening V4V stream port on tokio, like `tokio::net::TcpListener`.
///
/// The daemon announces each waiting connection on the listening connection (`INCOMING ID
/// DOM:PORT`), read here without blocking; taking it (`ACCEPT PORT ID`) is a short request on
/// the blocking pool, for several announced connections at once. `accept` is cancel-safe: a
/// connection being taken when the future is dropped is returned by the next `accept`.
#[derive(Debug)]
pub struct Listener {
    ctl: UnixStream,
    port: u32,
    daemon: PathBuf,
    /// Bytes of an `INCOMING` line not complete yet.
    line: Vec<u8>,
    /// The `ACCEPT`s of announced connections, in announcement order, while the daemon answers.
    taking: VecDeque<JoinHandle<Accepted>>,
}

impl Listener {
    /// Listens on `port` (0 = ephemeral) through the daemon of `V4V_SOCKET` (or the default).
    pub async fn bind(port: u32) -> Result<Self, Error> {
        Self::bind_with(&client::socket_path(), port).await
    }

    pub async fn bind_with(daemon: &Path, port: u32) -> Result<Self, Error> {
        let daemon = daemon.to_path_buf();
        let l = blocking(move || client::Listener::bind_with(&daemon, port)).await?;
        Ok(Listener::try_from(l)?)
    }

    pub fn local_port(&self) -> u32 {
        self.port
    }

    /// Accepts one connection: the stream and the peer's address.
    pub async fn accept(&mut self) -> Result<(Stream, SockAddr), Error> {
        std::future::poll_fn(|cx| self.poll_accept(cx)).await
    }

    /// Accepted connections, as a `futures_core::Stream` (it never ends: errors are items).
    pub fn incoming(&mut self) -> Incoming<'_> {
        Incoming { l: self }
    }

    /// Polls for one accepted connection.
    pub fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<Result<(Stream, SockAddr), Error>> {
        loop {
            // Take every announced connection at once (up to a bound), so that a crowd of
            // connectors does not overflow the daemon's backlog while each is taken in turn.
            while self.taking.len() < MAX_TAKING {
                match self.poll_incoming(cx) {
                    Poll::Ready(Ok(id)) => {
                        let (daemon, port) = (self.daemon.clone(), self.port);
                        self.taking
                            .push_back(::tokio::task::spawn_blocking(move || {
                                accept_announced(&daemon, port, id)
                            }));
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => break,
                }
            }
            let Some(job) = self.taking.front_mut() else {
                return Poll::Pending;
            };
            let r = ready!(Pin::new(job).poll(cx));
            self.taking.pop_front();
            let r =
                r.map_err(|e| Error::Io(io::Error::other(format!("v4v accept task failed: {e}"))))?;
            match r? {
                Some((s, peer)) => return Poll::Ready(Ok((Stream::try_from(s)?, peer))),
                // Taken by another acceptor, or reset before we came: the next one.
                None => continue,
            }
        }
    }

    /// The id of the next `INCOMING ID DOM:PORT` announcement.
    fn poll_incoming(&mut self, cx: &mut Context<'_>) -> Poll<Result<u64, Error>> {
        let mut b = [0u8; 1];
        loop {
            match self.ctl.try_read(&mut b) {
                Ok(0) => {
                    return Poll::Ready(Err(Error::Protocol(
                        "the daemon closed the listener".into(),
                    )));
                }
                Ok(_) if b[0] == b'\n' => {
                    let l = String::from_utf8_lossy(&self.line).to_string();
                    self.line.clear();
                    let mut w = l.split_ascii_whitespace();
                    if w.next() == Some("INCOMING")
                        && let Some(Ok(id)) = w.next().map(str::parse)
                    {
                        return Poll::Ready(Ok(id));
                    }
                    return Poll::Ready(Err(Error::Protocol(format!("bad listener line {l:?}"))));
                }
                Ok(_) => {
                    self.line.push(b[0]);
                    if self.line.len() > MAX_LINE {
                        return Poll::Ready(Err(Error::Protocol("listener line too long".into())));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ready!(self.ctl.poll_read_ready(cx))?;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Poll::Ready(Err(e.into())),
            }
        }
    }

    /// The blocking listener, in blocking mode. Fails while a connection is being taken (an
    /// `accept` future was dropped midway): accept it first.
    pub fn into_std(self) -> io::Result<client::Listener> {
        if !self.taking.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                "a connection is being accepted",
            ));
        }
        let ctl = self.ctl.into_std()?;
        ctl.set_nonblocking(false)?;
        Ok(client::Listener::from_parts(ListenerParts {
            ctl,
            port: self.port,
            daemon: self.daemon,
            line: self.line,
        }))
    }
}

/// Registers the blocking listener's connection with the reactor. Must be called inside a tokio
/// runtime.
impl TryFrom<client::Listener> for Listener {
    type Error = io::Error;
    fn try_from(l: client::Listener) -> io::Result<Self> {
        let p = l.into_parts();
        p.ctl.set_nonblocking(true)?;
        Ok(Listener {
            ctl: UnixStream::from_std(p.ctl)?,
            port: p.port,
            daemon: p.daemon,
            line: p.line,
            taking: VecDeque::new(),
        })
    }
}

impl AsRawFd for Listener {
    fn as_raw_fd(&self) -> RawFd {
        self.ctl.as_raw_fd()
    }
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.ctl.as_fd()
    }
}

/// The connections a [`Listener`] accepts, as a `futures_core::Stream` (`StreamExt::next` of
/// `futures` or `tokio-stream` drives it).
#[derive(Debug)]
pub struct Incoming<'a> {
    l: &'a mut Listener,
}

impl futures_core::Stream for Incoming<'_> {
    type Item = Result<Stream, Error>;
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut()
            .l
            .poll_accept(cx)
            .map(|r| Some(r.map(|(s, _)| s)))
    }
}
