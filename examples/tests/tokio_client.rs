// SPDX-License-Identifier: MIT OR Apache-2.0
//! `v4v::tokio` against the real stack (v4v-sim and one v4vd per domain, as processes): many
//! concurrent echo streams accepted through `Incoming`, half-close, resets that read as resets
//! exactly as in the blocking API, datagram boundaries and attested sources, and the hyper
//! example serving and fetching HTTP over V4V.

mod common;

use std::io::{self, Read, Write};
use std::pin::Pin;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Stack, example, fill_pattern};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;
use v4v::client::{self, Error, SockAddr};
use v4v::tokio::{Datagram, Incoming, Listener, Stream};

const LIMIT: Duration = Duration::from_secs(60);

async fn next(inc: &mut Incoming<'_>) -> Option<Result<Stream, Error>> {
    std::future::poll_fn(|cx| futures_core::Stream::poll_next(Pin::new(&mut *inc), cx)).await
}

/// An echo service on `l`, accepting through `Incoming`; each stream echoes until the peer's
/// orderly close, then closes orderly itself.
fn spawn_echo(mut l: Listener) {
    tokio::spawn(async move {
        let mut inc = l.incoming();
        // Ends when the stack is torn down (the daemon closes the listener).
        while let Some(Ok(s)) = next(&mut inc).await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.into_split();
                tokio::io::copy(&mut r, &mut w).await.expect("echo");
                w.shutdown().await.expect("shutdown");
            });
        }
    });
}

/// `streams` concurrent echo streams of `bytes` each from domain 1 to an echo service in domain
/// 2, each client writing all, half-closing, then reading the echo. Returns how many streams
/// ended in a reset after the whole echo arrived.
async fn echo_crowd(streams: u64, bytes: usize) -> usize {
    let stack = Stack::start(&[1, 2]);
    let l = Listener::bind_with(&stack.sock(2), 0)
        .await
        .expect("listen");
    let addr = SockAddr::new(2, l.local_port());
    spawn_echo(l);
    // The daemon keeps at most 128 connections waiting to be accepted (more are reset), so the
    // connects come at most 64 at a time; the streams then all run at once.
    let connecting = std::sync::Arc::new(tokio::sync::Semaphore::new(64));
    let mut tasks = Vec::new();
    for i in 0..streams {
        let sock = stack.sock(1);
        let connecting = connecting.clone();
        tasks.push(tokio::spawn(async move {
            let permit = connecting.acquire().await.expect("semaphore");
            let s = Stream::connect_with(&sock, addr).await.expect("connect");
            drop(permit);
            assert_eq!(s.peer_addr(), addr);
            let mut data = vec![0u8; bytes];
            let mut st = i + 1;
            fill_pattern(&mut data, &mut st);
            let (mut r, mut w) = s.into_split();
            for chunk in data.chunks(5000) {
                w.write_all(chunk).await.expect("write");
            }
            w.shutdown().await.expect("shutdown");
            let mut back = vec![0u8; bytes];
            r.read_exact(&mut back).await.expect("the whole echo");
            assert!(back == data, "stream {i}: the echo differs");
            match r.read(&mut [0u8; 1]).await {
                Ok(0) => 0,
                Ok(_) => panic!("stream {i}: more than was sent"),
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => 1,
                Err(e) => panic!("stream {i}: {e}"),
            }
        }));
    }
    timeout(LIMIT, async {
        let mut resets = 0;
        for t in tasks {
            resets += t.await.expect("stream task");
        }
        resets
    })
    .await
    .expect("all streams within the limit")
}

/// 200 concurrent echo streams through `Incoming`: every byte comes back and every stream ends
/// orderly. Before v4vd kept closed connections in time-wait, up to a tenth of them read as
/// reset after the whole echo arrived (a credit crossing the echo's `FIN` was answered with
/// `RST`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_echo_streams_end_orderly() {
    assert_eq!(echo_crowd(200, 48 * 1024).await, 0, "streams read as reset");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_then_reply() {
    let stack = Stack::start(&[1, 2]);
    let mut l = Listener::bind_with(&stack.sock(2), 0)
        .await
        .expect("listen");
    let addr = SockAddr::new(2, l.local_port());
    let server = tokio::spawn(async move {
        let (mut s, peer) = l.accept().await.expect("accept");
        assert_eq!(peer.domid, 1, "the attested connector");
        let mut req = Vec::new();
        // Ends at the client's shutdown, while the other direction stays open.
        s.read_to_end(&mut req).await.expect("request");
        s.write_all(format!("got {} bytes", req.len()).as_bytes())
            .await
            .expect("reply");
        s.shutdown().await.expect("shutdown");
        req
    });
    let mut s = Stream::connect_with(&stack.sock(1), addr)
        .await
        .expect("connect");
    s.write_all(b"request body").await.expect("write");
    s.shutdown().await.expect("half-close");
    let mut reply = String::new();
    timeout(LIMIT, s.read_to_string(&mut reply))
        .await
        .expect("in time")
        .expect("reply then end of file");
    assert_eq!(reply, "got 12 bytes");
    assert_eq!(server.await.expect("server"), b"request body");
    // After the end, reads keep reading end of file.
    assert_eq!(s.read(&mut [0u8; 8]).await.expect("eof again"), 0);
}

/// How the acceptor's read ends when the connector aborts after writing `hello`.
async fn reset_seen_async(stack: &Stack) -> (io::ErrorKind, String) {
    let mut l = Listener::bind_with(&stack.sock(2), 0)
        .await
        .expect("listen");
    let addr = SockAddr::new(2, l.local_port());
    let mut c = Stream::connect_with(&stack.sock(1), addr)
        .await
        .expect("connect");
    c.write_all(b"hello").await.expect("write");
    let (mut s, _) = l.accept().await.expect("accept");
    let mut got = [0u8; 5];
    s.read_exact(&mut got).await.expect("data before the reset");
    c.abort().await.expect("abort");
    let e = timeout(LIMIT, s.read(&mut [0u8; 16]))
        .await
        .expect("in time")
        .expect_err("a reset, not end of file");
    (e.kind(), e.to_string())
}

fn reset_seen_blocking(stack: &Stack) -> (io::ErrorKind, String) {
    let mut l = client::Listener::bind_with(&stack.sock(2), 0).expect("listen");
    let addr = SockAddr::new(2, l.local_port());
    let mut c = client::Stream::connect_with(&stack.sock(1), addr).expect("connect");
    c.write_all(b"hello").expect("write");
    let (mut s, _) = l.accept().expect("accept");
    let mut got = [0u8; 5];
    s.read_exact(&mut got).expect("data before the reset");
    c.abort().expect("abort");
    let e = s.read(&mut [0u8; 16]).expect_err("a reset");
    (e.kind(), e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_reads_as_in_the_blocking_api() {
    let stack = Stack::start(&[1, 2]);
    let a = reset_seen_async(&stack).await;
    let b = tokio::task::block_in_place(|| reset_seen_blocking(&stack));
    assert_eq!(a.0, io::ErrorKind::ConnectionReset, "{a:?}");
    assert!(a.1.starts_with("reset: "), "{a:?}");
    assert_eq!(a, b, "async and blocking report the reset alike");

    // A reset from the acceptor's side reaches a reading connector, through a split half.
    let mut l = Listener::bind_with(&stack.sock(2), 0)
        .await
        .expect("listen");
    let addr = SockAddr::new(2, l.local_port());
    let mut c = Stream::connect_with(&stack.sock(1), addr)
        .await
        .expect("connect");
    let (s, _) = l.accept().await.expect("accept");
    s.abort().await.expect("abort");
    let (mut r, _w) = c.split();
    let e = timeout(LIMIT, r.read(&mut [0u8; 16]))
        .await
        .expect("in time")
        .expect_err("reset");
    assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "{e}");

    // Nobody listens: refused at once, as in the blocking API.
    let r = Stream::connect_with(&stack.sock(1), SockAddr::new(2, 59999)).await;
    assert!(matches!(r, Err(Error::Refused(_))), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datagrams_keep_boundaries_and_source() {
    let stack = Stack::start(&[1, 2]);
    let mut rx = Datagram::bind_with(&stack.sock(2), 0, None)
        .await
        .expect("bind");
    let mut tx = Datagram::bind_with(&stack.sock(1), 0, None)
        .await
        .expect("bind");
    let dst = SockAddr::new(2, rx.local_port());
    let sizes = [1usize, 0, 1000, 65_536, 200_000, 7];
    let mut st = 9;
    let mut sent = Vec::new();
    for &n in &sizes {
        let mut m = vec![0u8; n];
        fill_pattern(&mut m, &mut st);
        assert_eq!(tx.send_to(&m, dst).await.expect("send"), n);
        sent.push(m);
    }
    for m in &sent {
        let (got, from) = timeout(LIMIT, rx.recv())
            .await
            .expect("in time")
            .expect("recv");
        assert_eq!(got.len(), m.len(), "one datagram per send");
        assert!(got == *m);
        assert_eq!(
            from,
            SockAddr::new(1, tx.local_port()),
            "the attested sender"
        );
    }
    // recv_from truncates to the buffer and still names the sender; the reply goes back.
    tx.send_to(b"0123456789", dst).await.expect("send");
    let mut small = [0u8; 4];
    let (n, from) = rx.recv_from(&mut small).await.expect("recv_from");
    assert_eq!((n, &small), (4, b"0123"));
    rx.send_to(b"pong", from).await.expect("reply");
    let (got, from2) = tx.recv().await.expect("reply arrives");
    assert_eq!((got.as_slice(), from2), (&b"pong"[..], dst));
    // To nowhere, pipelined: accepted, then reported with its number by flush (and by the
    // next send_to, which then sends nothing).
    let nowhere = SockAddr::new(2, 59998);
    assert_eq!(tx.send_to(b"x", nowhere).await.expect("accepted"), 1);
    let seq = tx.sent();
    let r = timeout(LIMIT, tx.flush()).await.expect("in time");
    match r {
        Err(Error::Undelivered {
            seq: s,
            dst,
            len: 1,
            cause,
        }) => {
            assert_eq!((s, dst), (seq, nowhere));
            assert!(matches!(*cause, Error::Refused(_)), "{cause:?}");
        }
        r => panic!("flush: {r:?}"),
    }
    tx.flush().await.expect("reported once");
    tx.send_to(b"y", nowhere).await.expect("accepted");
    // A later send_to returns it and sends nothing: the very next one if the failure came back
    // more than a millisecond before it (as on a loaded machine), else one after.
    let r = timeout(LIMIT, async {
        loop {
            match tx.send_to(b"w", dst).await {
                Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                Err(e) => return e,
            }
        }
    })
    .await
    .expect("the failure comes back");
    assert!(
        matches!(r, Error::Undelivered { seq: s, .. } if s == seq + 1),
        "{r:?}"
    );
    tx.flush().await.expect("the rest delivered");
    for _ in 0..tx.sent() - seq - 1 {
        let (got, _) = timeout(LIMIT, rx.recv())
            .await
            .expect("in time")
            .expect("recv");
        assert_eq!(got, b"w");
    }
    // Window 1: refused with the blocking API's error, by the send itself.
    tx.set_window(1).expect("window");
    let r = tx.send_to(b"x", nowhere).await;
    assert!(matches!(r, Err(Error::Refused(_))), "{r:?}");
    // Back to blocking, and the port still works.
    let mut b = tx.into_std().expect("into_std");
    rx.send_to(b"blocking", SockAddr::new(1, b.local_port()))
        .await
        .expect("send");
    let (got, _) = tokio::task::block_in_place(|| b.recv_timeout(Some(LIMIT))).expect("recv");
    assert_eq!(got, b"blocking");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_and_async_streams_convert_both_ways() {
    let stack = Stack::start(&[1, 2]);
    let bl = client::Listener::bind_with(&stack.sock(2), 0).expect("listen");
    let mut l = Listener::try_from(bl).expect("to async");
    let addr = SockAddr::new(2, l.local_port());
    let bc = tokio::task::block_in_place(|| client::Stream::connect_with(&stack.sock(1), addr))
        .expect("connect");
    let mut c = Stream::try_from(bc).expect("to async");
    let (s, _) = l.accept().await.expect("accept");
    c.write_all(b"ping").await.expect("write");
    let mut bs = s.into_std().expect("to blocking");
    let mut got = [0u8; 4];
    tokio::task::block_in_place(|| bs.read_exact(&mut got)).expect("read");
    assert_eq!(&got, b"ping");
    drop(bs); // orderly close from the blocking side
    // Through a bare descriptor and back, knowing the stream's id: the end still reads as
    // orderly.
    let std_c = c.into_std().expect("to blocking");
    let (id, peer, lp) = (std_c.id(), std_c.peer_addr(), std_c.local_port());
    let fd = std::os::fd::OwnedFd::from(std_c);
    let mut c = Stream::try_from(client::Stream::from_fd(fd, &stack.sock(1), id, peer, lp))
        .expect("from the descriptor");
    assert_eq!((c.id(), c.peer_addr(), c.local_port()), (id, addr, lp));
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).await.expect("end of file");
    assert!(rest.is_empty());
    let _ = l.into_std().expect("listener back to blocking");
}

#[test]
fn hyper_serves_and_fetches_http_over_v4v() {
    let stack = Stack::start(&[1, 2]);
    let mut server = Command::new(example("http_hyper"))
        .args(["serve", "8080"])
        .env("V4V_SOCKET", stack.sock(2))
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn server");
    let run = |args: &[&str], body: &[u8]| {
        let mut c = Command::new(example("http_hyper"))
            .args(args)
            .env("V4V_SOCKET", stack.sock(1))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn client");
        let mut stdin = c.stdin.take().expect("stdin");
        stdin.write_all(body).expect("body");
        drop(stdin);
        c.wait_with_output().expect("client")
    };
    // The server binds asynchronously: retry while refused.
    let deadline = std::time::Instant::now() + LIMIT;
    let out = loop {
        let out = run(&["get", "2:8080", "/"], b"");
        if out.status.success() || std::time::Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        text.starts_with("hello, 1:"),
        "the attested client domain: {text}"
    );
    let mut body = vec![0u8; 300_000];
    fill_pattern(&mut body, &mut 5);
    let out = run(&["post", "2:8080", "/echo"], &body);
    assert!(
        out.status.success(),
        "{:?}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout == body, "the echoed body");
    let out = run(&["get", "2:8080", "/missing"], b"");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("404"));
    let _ = server.kill();
    let _ = server.wait();
}

/// `connect` waits for the peer's daemon without holding the runtime's only thread: with the
/// peer's daemon frozen, a timer task on a current-thread runtime keeps ticking while the connect
/// is pending.
#[test]
fn connect_does_not_block_the_runtime() {
    let stack = Stack::start(&[1, 2]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let l = Listener::bind_with(&stack.sock(2), 0)
            .await
            .expect("listen");
        let addr = SockAddr::new(2, l.local_port());
        stack.signal_daemon(2, libc::SIGSTOP);
        let ticker = tokio::spawn(async {
            let mut ticks = 0;
            for _ in 0..10 {
                tokio::time::sleep(Duration::from_millis(20)).await;
                ticks += 1;
            }
            ticks
        });
        let sock = stack.sock(1);
        let r = timeout(
            Duration::from_millis(600),
            Stream::connect_with(&sock, addr),
        )
        .await;
        stack.signal_daemon(2, libc::SIGCONT);
        assert!(r.is_err(), "the frozen peer cannot have accepted: {r:?}");
        assert_eq!(
            ticker.await.expect("ticker"),
            10,
            "the runtime kept running"
        );
        drop(l);
    });
}

/// Dropped futures leave a `Datagram` usable: a `recv` given up on loses nothing, and a
/// `send_to` given up on while the destination ring is full does not confuse the next send's
/// answer with its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_datagram_futures_lose_nothing() {
    let stack = Stack::start(&[1, 2]);
    let mut slow = Datagram::bind_with(&stack.sock(2), 0, None)
        .await
        .expect("bind");
    let mut other = Datagram::bind_with(&stack.sock(2), 0, None)
        .await
        .expect("bind");
    let mut tx = Datagram::bind_with(&stack.sock(1), 0, None)
        .await
        .expect("bind");
    // Each send waits for its answer here: the given-up one is given up on while it waits.
    tx.set_window(1).expect("window");
    let to_slow = SockAddr::new(2, slow.local_port());
    let to_other = SockAddr::new(2, other.local_port());

    assert!(
        timeout(Duration::from_millis(50), other.recv())
            .await
            .is_err()
    );

    // Fill the slow receiver's ring until a send has to wait, and give up on that one.
    let big = vec![7u8; 60_000];
    let mut sent = 0;
    let mut gave_up = false;
    for _ in 0..1000 {
        match timeout(Duration::from_millis(300), tx.send_to(&big, to_slow)).await {
            Ok(r) => {
                r.expect("send");
                sent += 1;
            }
            Err(_) => {
                gave_up = true;
                break;
            }
        }
    }
    assert!(gave_up, "the ring never filled ({sent} sent)");
    // The daemon holds the port's sends behind the waiting one, so drain the slow receiver: it
    // gets every datagram, the given-up one too (its frame was sent), each whole.
    let drain = tokio::spawn(async move {
        for _ in 0..=sent {
            let (got, _) = timeout(LIMIT, slow.recv())
                .await
                .expect("in time")
                .expect("recv");
            assert_eq!(got.len(), 60_000);
        }
        timeout(Duration::from_millis(200), slow.recv())
            .await
            .is_err()
    });
    // The next send's answer is its own (refused), not the given-up one's (delivered).
    let nowhere = SockAddr::new(2, 59997);
    let r = timeout(LIMIT, tx.send_to(b"next", nowhere))
        .await
        .expect("in time");
    assert!(matches!(r, Err(Error::Refused(_))), "{r:?}");
    assert!(drain.await.expect("drain"), "nothing beyond what was sent");
    let r = timeout(LIMIT, tx.send_to(b"after", to_other))
        .await
        .expect("in time");
    assert_eq!(r.expect("send"), 5);
    let (got, from) = timeout(LIMIT, other.recv())
        .await
        .expect("in time")
        .expect("recv");
    assert_eq!(
        (got.as_slice(), from),
        (&b"after"[..], SockAddr::new(1, tx.local_port()))
    );
}
