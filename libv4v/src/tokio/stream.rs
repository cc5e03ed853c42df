// SPDX-License-Identifier: MIT OR Apache-2.0
//! [`Stream`] and its halves: a V4V stream as `AsyncRead` / `AsyncWrite`.

use std::future::Future;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use ::tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use ::tokio::net::UnixStream;
use ::tokio::net::unix;
use ::tokio::task::JoinHandle;

use super::blocking;
use crate::client::proto::SockAddr;
use crate::client::stream::{End, StreamParts, query_end};
use crate::client::{self, Error};

/// What the halves of one stream share: its identity and how it ended, once known.
#[derive(Debug)]
struct Meta {
    local_port: u32,
    peer: SockAddr,
    id: u64,
    daemon: PathBuf,
    ended: Mutex<Option<End>>,
}

impl Meta {
    fn known_reset(&self) -> Option<End> {
        match &*self.ended.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(e @ End::Reset(..)) => Some(e.clone()),
            _ => None,
        }
    }

    /// Records `e`, except over a reset (a reset is final).
    fn record(&self, e: &End) {
        let mut g = self.ended.lock().unwrap_or_else(|p| p.into_inner());
        if !matches!(&*g, Some(End::Reset(..))) {
            *g = Some(e.clone());
        }
    }
}

/// One direction's question to the daemon, how the stream ended, while it is being answered.
#[derive(Debug, Default)]
struct EndQuery {
    job: Option<JoinHandle<End>>,
}

impl EndQuery {
    /// How the stream ended, asked once per end of connection seen (a reset already known is
    /// final, as in the blocking API).
    fn poll(&mut self, meta: &Arc<Meta>, cx: &mut Context<'_>) -> Poll<End> {
        let job = match &mut self.job {
            Some(j) => j,
            None => {
                if let Some(e) = meta.known_reset() {
                    return Poll::Ready(e);
                }
                let m = Arc::clone(meta);
                self.job.insert(::tokio::task::spawn_blocking(move || {
                    query_end(&m.daemon, m.id)
                }))
            }
        };
        let r = ready!(Pin::new(job).poll(cx));
        self.job = None;
        let e = r.unwrap_or_else(|e| {
            End::Reset(
                io::ErrorKind::Other,
                format!("asking the daemon how the stream ended failed: {e}"),
            )
        });
        meta.record(&e);
        Poll::Ready(e)
    }
}

/// A read on `io`, where the end of the connection becomes end of file or the reset.
fn poll_read_v4v<R: AsyncRead + Unpin>(
    io: &mut R,
    meta: &Arc<Meta>,
    q: &mut EndQuery,
    cx: &mut Context<'_>,
    buf: &mut ReadBuf<'_>,
) -> Poll<io::Result<()>> {
    if buf.remaining() == 0 {
        return Poll::Ready(Ok(()));
    }
    if q.job.is_none() {
        let before = buf.filled().len();
        match ready!(Pin::new(&mut *io).poll_read(cx, buf)) {
            Ok(()) if buf.filled().len() > before => return Poll::Ready(Ok(())),
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
            Err(e) => return Poll::Ready(Err(e)),
        }
    }
    q.poll(meta, cx).map(End::into_result)
}

/// A write on `io`, where a broken connection becomes the reset when the stream was reset.
fn poll_write_v4v<W: AsyncWrite + Unpin>(
    io: &mut W,
    meta: &Arc<Meta>,
    q: &mut WriteEnd,
    cx: &mut Context<'_>,
    buf: &[u8],
) -> Poll<io::Result<usize>> {
    if q.cause.is_none() {
        match ready!(Pin::new(&mut *io).poll_write(cx, buf)) {
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
                ) =>
            {
                q.cause = Some(e)
            }
            r => return Poll::Ready(r),
        }
    }
    let end = ready!(q.query.poll(meta, cx));
    let cause = q.cause.take();
    Poll::Ready(match (end, cause) {
        (End::Reset(kind, msg), _) => Err(io::Error::new(kind, msg)),
        (End::Eof, Some(e)) => Err(e),
        (End::Eof, None) => Err(io::ErrorKind::BrokenPipe.into()),
    })
}

/// The writing direction's question, and the write error that raised it.
#[derive(Debug, Default)]
struct WriteEnd {
    query: EndQuery,
    cause: Option<io::Error>,
}

/// A V4V stream on tokio, like `tokio::net::TcpStream`; see the [module docs](super) for how
/// the end of a stream reads.
#[derive(Debug)]
pub struct Stream {
    io: UnixStream,
    meta: Arc<Meta>,
    rd: EndQuery,
    wr: WriteEnd,
}

impl Stream {
    /// Connects to `addr` through the daemon of `V4V_SOCKET` (or the default socket); resolves
    /// when the peer accepted, [`Error::Refused`] at once when nobody listens.
    pub async fn connect(addr: SockAddr) -> Result<Self, Error> {
        Self::connect_with(&client::socket_path(), addr).await
    }

    /// Connects through the daemon at `daemon`.
    pub async fn connect_with(daemon: &Path, addr: SockAddr) -> Result<Self, Error> {
        let daemon = daemon.to_path_buf();
        let s = blocking(move || client::Stream::connect_with(&daemon, addr)).await?;
        Ok(Stream::try_from(s)?)
    }

    /// Aborts the stream: the peer reads a reset (`ConnectionReset`), not end of file. Dropping
    /// the stream, or [`AsyncWriteExt::shutdown`](::tokio::io::AsyncWriteExt::shutdown), is an
    /// orderly close.
    pub async fn abort(self) -> Result<(), Error> {
        let s = self.into_std()?;
        blocking(move || s.abort()).await
    }

    /// The daemon's id for this stream (what [`client::Stream::end_of`] takes).
    pub fn id(&self) -> u64 {
        self.meta.id
    }

    /// The local ring port the stream's replies arrive on (shared with other streams).
    pub fn local_port(&self) -> u32 {
        self.meta.local_port
    }

    pub fn peer_addr(&self) -> SockAddr {
        self.meta.peer
    }

    /// The blocking stream, in blocking mode, with what is known of how the stream ended.
    pub fn into_std(self) -> io::Result<client::Stream> {
        let sock = self.io.into_std()?;
        sock.set_nonblocking(false)?;
        let ended = self
            .meta
            .ended
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let m = &self.meta;
        Ok(client::Stream::from_parts(StreamParts {
            sock,
            local_port: m.local_port,
            peer: m.peer,
            id: m.id,
            daemon: m.daemon.clone(),
            ended,
        }))
    }

    /// Borrowed halves, for reading and writing at once within one task.
    pub fn split(&mut self) -> (ReadHalf<'_>, WriteHalf<'_>) {
        let (r, w) = self.io.split();
        (
            ReadHalf {
                io: r,
                meta: &self.meta,
                q: &mut self.rd,
            },
            WriteHalf {
                io: w,
                meta: &self.meta,
                q: &mut self.wr,
            },
        )
    }

    /// Owned halves, to move into separate tasks. Dropping the write half is an orderly close
    /// of the sending direction.
    pub fn into_split(self) -> (OwnedReadHalf, OwnedWriteHalf) {
        let (r, w) = self.io.into_split();
        (
            OwnedReadHalf {
                io: r,
                meta: Arc::clone(&self.meta),
                q: self.rd,
            },
            OwnedWriteHalf {
                io: w,
                meta: self.meta,
                q: self.wr,
            },
        )
    }
}

/// Registers the blocking stream's connection with the reactor (in non-blocking mode). Must be
/// called inside a tokio runtime.
impl TryFrom<client::Stream> for Stream {
    type Error = io::Error;
    fn try_from(s: client::Stream) -> io::Result<Self> {
        let p = s.into_parts();
        p.sock.set_nonblocking(true)?;
        let io = UnixStream::from_std(p.sock)?;
        Ok(Stream {
            io,
            meta: Arc::new(Meta {
                local_port: p.local_port,
                peer: p.peer,
                id: p.id,
                daemon: p.daemon,
                ended: Mutex::new(p.ended),
            }),
            rd: EndQuery::default(),
            wr: WriteEnd::default(),
        })
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        poll_read_v4v(&mut this.io, &this.meta, &mut this.rd, cx, buf)
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        poll_write_v4v(&mut this.io, &this.meta, &mut this.wr, cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// The orderly close of the sending direction: the peer reads end of file after the data.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

impl AsRawFd for Stream {
    fn as_raw_fd(&self) -> RawFd {
        self.io.as_raw_fd()
    }
}

impl AsFd for Stream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.io.as_fd()
    }
}

/// The reading half of [`Stream::split`].
#[derive(Debug)]
pub struct ReadHalf<'a> {
    io: unix::ReadHalf<'a>,
    meta: &'a Arc<Meta>,
    q: &'a mut EndQuery,
}

/// The writing half of [`Stream::split`]; `shutdown` is the orderly close.
#[derive(Debug)]
pub struct WriteHalf<'a> {
    io: unix::WriteHalf<'a>,
    meta: &'a Arc<Meta>,
    q: &'a mut WriteEnd,
}

/// The reading half of [`Stream::into_split`].
#[derive(Debug)]
pub struct OwnedReadHalf {
    io: unix::OwnedReadHalf,
    meta: Arc<Meta>,
    q: EndQuery,
}

/// The writing half of [`Stream::into_split`]; `shutdown`, or dropping it, is the orderly close.
#[derive(Debug)]
pub struct OwnedWriteHalf {
    io: unix::OwnedWriteHalf,
    meta: Arc<Meta>,
    q: WriteEnd,
}

impl AsyncRead for ReadHalf<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        poll_read_v4v(&mut this.io, this.meta, this.q, cx, buf)
    }
}

impl AsyncRead for OwnedReadHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        poll_read_v4v(&mut this.io, &this.meta, &mut this.q, cx, buf)
    }
}

impl AsyncWrite for WriteHalf<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        poll_write_v4v(&mut this.io, this.meta, this.q, cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

impl AsyncWrite for OwnedWriteHalf {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        poll_write_v4v(&mut this.io, &this.meta, &mut this.q, cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
