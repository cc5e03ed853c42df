// SPDX-License-Identifier: MIT OR Apache-2.0
//! Datagrams coming back through the receive channel: what the daemon writes to a datagram
//! client (DATA, STATUS and ACK frames) goes into shared memory the client offered at bind, and
//! the socket carries only doorbells. Big datagrams span records, answers keep their order, a
//! non-blocking receiver's descriptor still turns readable, and a client that scribbles on its
//! receive channel loses only its own port.

mod common;

use std::io::ErrorKind;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use common::Stack;
use v4v::client::{Datagram, Error, SockAddr};

fn payload(seq: u64, len: usize) -> Vec<u8> {
    let mut p = seq.to_le_bytes().to_vec();
    p.extend((0..len.saturating_sub(8)).map(|i| (seq as usize * 31 + i) as u8));
    p
}

fn seq_of(p: &[u8]) -> u64 {
    u64::from_le_bytes(p[..8].try_into().expect("8 bytes"))
}

/// Polls `d`'s descriptor (it must turn readable within 10 s), then receives one datagram into
/// `buf`, polling again while a doorbell that went before it is all there is.
fn recv_when_readable(d: &mut Datagram, buf: &mut [u8], what: &str) -> usize {
    let mut pfd = libc::pollfd {
        fd: d.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one live pollfd.
    let r = unsafe { libc::poll(&mut pfd, 1, 10_000) };
    assert_eq!(r, 1, "{what}: the descriptor never turned readable");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match d.recv_from(buf) {
            Ok((n, _)) => return n,
            Err(Error::Io(e)) if e.kind() == ErrorKind::WouldBlock => {
                assert!(Instant::now() < deadline, "{what}: it never came");
                // SAFETY: one live pollfd.
                unsafe { libc::poll(&mut pfd, 1, 100) };
            }
            Err(e) => panic!("{what}: recv: {e}"),
        }
    }
}

/// The sizes of the datagrams sent: small ones, one record's worth, and bigger than a record of
/// the receive channel (a quarter of it) so that frames span records.
const SIZES: [usize; 6] = [8, 64, 4096, 40_000, 70_000, 150_000];

#[test]
fn datagrams_and_answers_come_through_the_receive_channel() {
    let s = Stack::start(&[1, 2]);
    let mut rx = Datagram::bind_with(&s.sock(2), 8200, None).expect("bind");
    assert!(rx.receives_through_channel(), "the daemon took the channel");
    let dst = SockAddr::new(2, 8200);
    let mut d = Datagram::bind_with(&s.sock(1), 0, None).expect("bind");
    assert!(d.receives_through_channel());
    const N: u64 = 3000;
    let sender = std::thread::spawn(move || {
        for i in 1..=N {
            let len = SIZES[i as usize % SIZES.len()];
            if let Err(e) = d.send_to(&payload(i, len), dst) {
                panic!("send {i}: {e}");
            }
        }
        d.flush().expect("flush");
        // A failure comes back through the channel too, tied to its datagram.
        let seq = d.sent() + 1;
        d.send_to(b"nobody here", SockAddr::new(2, 8299))
            .expect("send");
        match d.flush() {
            Err(Error::Undelivered { seq: s, dst, .. }) => {
                assert_eq!((s, dst), (seq, SockAddr::new(2, 8299)));
            }
            other => panic!("expected the failure of datagram {seq}, got {other:?}"),
        }
        d
    });
    for i in 1..=N {
        let (p, from) = rx
            .recv_timeout(Some(Duration::from_secs(20)))
            .unwrap_or_else(|e| panic!("datagram {i}: {e}"));
        let len = SIZES[i as usize % SIZES.len()];
        assert_eq!(from.domid, 1);
        assert_eq!(p.len(), len, "datagram {i}: its length");
        assert_eq!(p, payload(i, len), "datagram {i}: in order and intact");
    }
    let mut d = sender.join().expect("sender");
    // Round trips: the answer datagram and its ACK share the channel.
    let back = SockAddr::new(1, d.local_port());
    for i in 0..200u64 {
        d.send_to(&payload(i, 64), dst).expect("ping");
        let (p, from) = rx
            .recv_timeout(Some(Duration::from_secs(10)))
            .expect("ping");
        assert_eq!(from, back);
        rx.send_to(&p, from).expect("pong");
        let (q, _) = d.recv_timeout(Some(Duration::from_secs(10))).expect("pong");
        assert_eq!(seq_of(&q), i);
    }
    d.flush().expect("all answered");
}

#[test]
fn a_non_blocking_receiver_is_told_by_its_descriptor() {
    let s = Stack::start(&[1, 2]);
    let mut rx = Datagram::bind_with(&s.sock(2), 8220, None).expect("bind");
    assert!(rx.receives_through_channel());
    rx.set_nonblocking(true).expect("nonblocking");
    let dst = SockAddr::new(2, 8220);
    let mut d = Datagram::bind_with(&s.sock(1), 0, None).expect("bind");
    let mut buf = vec![0u8; 2048];
    // Polled before any receive (as a mio loop starts): the first datagram wakes it too.
    let mut pfd = libc::pollfd {
        fd: rx.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one live pollfd.
    let r = unsafe { libc::poll(&mut pfd, 1, 100) };
    assert_eq!(r, 0, "readable with nothing sent");
    d.send_to(&payload(0, 50), dst).expect("send");
    // SAFETY: one live pollfd.
    let r = unsafe { libc::poll(&mut pfd, 1, 10_000) };
    assert_eq!(
        r, 1,
        "the first datagram did not make the descriptor readable"
    );
    let (n, _) = rx.recv_from(&mut buf).expect("the first datagram");
    assert_eq!(&buf[..n], &payload(0, 50)[..]);
    for i in 1..=300u64 {
        // Drain to WouldBlock: from then on the descriptor says when the next one is there.
        match rx.recv_from(&mut buf) {
            Ok(_) => panic!("nothing was sent yet"),
            Err(Error::Io(e)) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => panic!("recv: {e}"),
        }
        // Sometimes at once, sometimes after the receiver sleeps.
        if i % 3 == 0 {
            std::thread::sleep(Duration::from_millis(2));
        }
        d.send_to(&payload(i, 100 + i as usize), dst).expect("send");
        let n = recv_when_readable(&mut rx, &mut buf, &format!("datagram {i}"));
        assert_eq!(&buf[..n], &payload(i, 100 + i as usize)[..]);
    }
}

/// The hostile client, run as nobody by the test below (`HOSTILE_SOCK` names the daemon):
/// binds port 8230 with the library (which offers a receive channel), takes one datagram, then
/// writes garbage over the receive channel's indexes in its own mapping while datagrams keep
/// coming, until the daemon closes it. Exits 0 when it was closed.
#[test]
#[ignore = "a helper: run as another user by the test below"]
fn hostile_receive_channel_helper() {
    let Ok(path) = std::env::var("HOSTILE_SOCK") else {
        return;
    };
    let mut d = Datagram::bind_with(std::path::Path::new(&path), 8230, None).expect("bind");
    assert!(d.receives_through_channel());
    println!("bound");
    d.recv_timeout(Some(Duration::from_secs(20)))
        .expect("a first datagram");
    // Our mapping of the receive channel: the memfd mapping of its size.
    let size = 4096 + v4v::client::proto::DGRAM_RX_CAPACITY;
    let maps = std::fs::read_to_string("/proc/self/maps").expect("maps");
    let base = maps
        .lines()
        .filter(|l| l.contains("v4v-chan"))
        .find_map(|l| {
            let (range, _) = l.split_once(' ')?;
            let (a, b) = range.split_once('-')?;
            let (a, b) = (
                usize::from_str_radix(a, 16).ok()?,
                usize::from_str_radix(b, 16).ok()?,
            );
            (b - a == size).then_some(a)
        })
        .expect("the receive channel's mapping");
    let words = base as *mut u32;
    let mut x: u32 = 0x2545_f491;
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        for _ in 0..64 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            // The consumer's index (offset 192) and the words around it.
            let i = [48usize, 32, 64][x as usize % 3];
            // SAFETY: `i` is within the channel's header page, mapped shared and writable.
            unsafe { words.add(i).write_volatile(x) };
        }
        match d.recv_timeout(Some(Duration::from_millis(50))) {
            Err(Error::DaemonGone(_)) => return,
            // Our own garbage, read back: the library refuses it; the daemon is what we test.
            Err(Error::Protocol(_)) | Err(Error::TimedOut(_)) | Ok(_) => {}
            Err(e) => panic!("unexpected: {e}"),
        }
        assert!(
            Instant::now() < end,
            "the daemon kept a client whose receive channel is garbage"
        );
    }
}

#[test]
fn a_client_scribbling_on_its_receive_channel_hurts_only_itself() {
    let s = Stack::start(&[1, 2]);
    let mut good = Datagram::bind_with(&s.sock(2), 8231, None).expect("bind");
    let hostile = common::as_nobody(&std::env::current_exe().expect("exe"))
        .args([
            "hostile_receive_channel_helper",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .env("HOSTILE_SOCK", s.sock(2))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run the hostile helper");
    let mut d = Datagram::bind_with(&s.sock(1), 0, None).expect("bind");
    // Until the hostile port is bound.
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        d.send_to(b"probe", SockAddr::new(2, 8230)).expect("send");
        if d.flush().is_ok() {
            break;
        }
        assert!(Instant::now() < end, "the hostile helper never bound");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Datagrams to both, the hostile client's as fast as they go; the good one gets all of its
    // own, in order.
    const N: u64 = 5000;
    let sender = std::thread::spawn(move || {
        for i in 1..=N {
            let _ = d.send_to(&payload(i, 512), SockAddr::new(2, 8230));
            loop {
                match d.send_to(&payload(i, 512), SockAddr::new(2, 8231)) {
                    Ok(_) => break,
                    // The hostile port's end shows up as failures of its datagrams, reported
                    // by the next sends instead of sending.
                    Err(Error::Undelivered { dst, .. }) if dst.port == 8230 => {}
                    Err(e) => panic!("send {i} to the good port: {e}"),
                }
            }
        }
        // Every datagram answered before the port goes (a dropped port does not wait).
        loop {
            match d.flush() {
                Ok(()) => break,
                Err(Error::Undelivered { dst, .. }) if dst.port == 8230 => {}
                Err(e) => panic!("flush: {e}"),
            }
        }
    });
    for i in 1..=N {
        let (p, _) = good
            .recv_timeout(Some(Duration::from_secs(20)))
            .unwrap_or_else(|e| panic!("datagram {i}: {e}"));
        assert_eq!(seq_of(&p), i);
    }
    sender.join().expect("sender");
    let out = common::wait_limited(hostile, Duration::from_secs(30));
    assert!(
        out.status.success(),
        "the daemon did not close the hostile client: {} {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The port is free again, and the daemon serves.
    let mut again = common::bind_again(&s.sock(2), 8230);
    assert!(again.receives_through_channel());
    let mut d = Datagram::bind_with(&s.sock(1), 0, None).expect("bind");
    d.send_to(b"after", SockAddr::new(2, 8230)).expect("send");
    let (p, _) = again
        .recv_timeout(Some(Duration::from_secs(10)))
        .expect("recv after");
    assert_eq!(p, b"after");
}

/// A port polled right after a synchronous send (window 1, the C API's default) wakes for the
/// reply: the send took its answer from the channel and left the channel armed.
#[test]
fn a_port_polled_after_a_synchronous_send_wakes_for_the_reply() {
    let s = Stack::start(&[1, 2]);
    let mut echo = Datagram::bind_with(&s.sock(2), 8240, None).expect("bind");
    let echoer = std::thread::spawn(move || {
        for _ in 0..50 {
            let (p, from) = echo
                .recv_timeout(Some(Duration::from_secs(20)))
                .expect("request");
            // Later than the send's answer: the reply is not read by the send itself.
            std::thread::sleep(Duration::from_millis(20));
            echo.send_to(&p, from).expect("echo");
        }
    });
    let mut d = Datagram::bind_with(&s.sock(1), 0, None).expect("bind");
    d.set_window(1).expect("window 1");
    d.set_nonblocking(true).expect("nonblocking");
    let mut buf = [0u8; 256];
    for i in 0..50u64 {
        d.send_to(&payload(i, 64), SockAddr::new(2, 8240))
            .expect("send");
        let n = recv_when_readable(&mut d, &mut buf, &format!("round {i}: the reply"));
        assert_eq!(&buf[..n], &payload(i, 64)[..]);
    }
    echoer.join().expect("echoer");
}

/// A client whose receive channel and output are full, sending a datagram too big for its send
/// channel (so over the socket, which fills): the daemon keeps reading what it sends, so the
/// doorbell the client rings after reading gets through and the send is answered.
#[test]
fn a_full_receive_channel_does_not_stall_a_big_send_over_the_socket() {
    let s = Stack::start(&[1, 2]);
    let mut r = Datagram::bind_with(&s.sock(2), 8250, None).expect("bind");
    assert!(r.receives_through_channel());
    let mut flood = Datagram::bind_with(&s.sock(1), 0, None).expect("bind");
    flood.set_nonblocking(true).expect("nonblocking");
    // Until nothing more is taken: r's ring, channel and output are full.
    let mut sent = 0u64;
    let mut blocked = 0;
    let end = Instant::now() + Duration::from_secs(30);
    while blocked < 5 {
        match flood.send_to(&payload(sent + 1, 4096), SockAddr::new(2, 8250)) {
            Ok(_) => {
                sent += 1;
                blocked = 0;
            }
            Err(Error::Io(e)) if e.kind() == ErrorKind::WouldBlock => {
                blocked += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("flood: {e}"),
        }
        assert!(Instant::now() < end, "the flood was never held back");
    }
    // r sends one datagram bigger than a send-channel record, synchronously, and waits for
    // its answer (the destination's ring cannot take it: the answer is a refusal).
    let (tx, done) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        r.set_window(1).expect("window 1");
        let big = vec![7u8; 600 << 10];
        let answer = r.send_to(&big, SockAddr::new(1, flood.local_port()));
        // What r reads meanwhile is the flood, in order.
        let mut got = 0u64;
        while let Ok((p, _)) = r.recv_timeout(Some(Duration::from_secs(2))) {
            got += 1;
            assert_eq!(seq_of(&p), got, "the flood in order");
        }
        let _ = tx.send((answer.map_err(|e| e.to_string()), got, flood));
    });
    let (answer, got, _flood) = done
        .recv_timeout(Duration::from_secs(60))
        .expect("the big send was never answered: the daemon and client wait for each other");
    assert!(got > 0, "r read none of the flood");
    assert!(got <= sent);
    let _ = answer;
}

/// A port polled after a call that slept and came back without reading (a receive that timed
/// out, a send that waited only for its socket to take it) wakes for what comes next: the call
/// asked for the wake pipe while it slept, and says "the socket" again before it returns.
#[test]
fn a_port_polled_after_a_receive_timed_out_wakes_for_the_next_datagram() {
    let s = Stack::start(&[1, 2]);
    let mut tx = Datagram::bind_with(&s.sock(2), 0, None).expect("bind");
    let mut d = Datagram::bind_with(&s.sock(1), 8250, None).expect("bind");
    assert!(d.woken_through_pipe());
    let mut buf = [0u8; 256];
    for i in 0..5u64 {
        match d.recv_timeout(Some(Duration::from_millis(20))) {
            Err(Error::TimedOut(_)) => {}
            r => panic!("round {i}: {r:?}"),
        }
        tx.send_to(&payload(i, 64), SockAddr::new(1, 8250))
            .expect("send");
        d.set_nonblocking(true).expect("nonblocking");
        let n = recv_when_readable(&mut d, &mut buf, &format!("round {i}: after a timeout"));
        assert_eq!(&buf[..n], &payload(i, 64)[..]);
        d.set_nonblocking(false).expect("blocking");
    }
}

/// A receiver asleep inside `recv_timeout`, the daemon asked to wake it through its wake pipe
/// rather than its socket, hears its daemon die at once (the socket it also polls hangs up, and
/// so does the pipe, whose only writer was the daemon): the call says the daemon is gone instead
/// of sleeping out its timeout.
#[test]
fn a_receiver_asleep_on_its_wake_pipe_hears_its_daemon_die() {
    let mut s = Stack::start(&[1, 2]);
    let mut d = Datagram::bind_with(&s.sock(1), 8260, None).expect("bind");
    assert!(d.woken_through_pipe(), "the daemon took the wake pipe");
    let (done, result) = std::sync::mpsc::channel();
    let receiver = std::thread::spawn(move || {
        let t = Instant::now();
        let r = d.recv_timeout(Some(Duration::from_secs(60)));
        let _ = done.send((r.map(|(p, from)| (p.len(), from)), t.elapsed()));
    });
    // Long enough for it to be asleep in the call.
    std::thread::sleep(Duration::from_millis(300));
    s.kill_daemon(1);
    let (r, took) = result
        .recv_timeout(Duration::from_secs(10))
        .expect("the receiver slept on after its daemon died");
    receiver.join().expect("receiver");
    match r {
        Err(Error::DaemonGone(_)) => {}
        other => panic!("a receive whose daemon died: {other:?}"),
    }
    assert!(took < Duration::from_secs(5), "it took {took:?} to notice");
}
