// SPDX-License-Identifier: MIT OR Apache-2.0
//! Pipelined datagrams through real daemons: `send_to` returns once the daemon has the datagram,
//! a bounded window of them is outstanding, and every failure comes back tied to its datagram's
//! sequence number, whether the destination refused it, the ACL did, or the daemon died.

mod common;

use std::collections::HashMap;
use std::io::ErrorKind;
use std::time::{Duration, Instant};

use common::{Stack, rss_kib};
use v4v::client::{Datagram, Error, SockAddr};

/// The payload of the datagram numbered `seq`, `len` bytes long (at least 8).
fn payload(seq: u64, len: usize) -> Vec<u8> {
    let mut p = seq.to_le_bytes().to_vec();
    p.resize(len.max(8), (seq % 251) as u8);
    p
}

fn seq_of(p: &[u8]) -> u64 {
    u64::from_le_bytes(p[..8].try_into().expect("8 bytes"))
}

/// Sends until the daemon takes it: an earlier datagram's failure returned instead is kept.
fn send(d: &mut Datagram, p: &[u8], dst: SockAddr, failures: &mut Vec<Error>) -> u64 {
    loop {
        match d.send_to(p, dst) {
            Ok(n) => {
                assert_eq!(n, p.len());
                return d.sent();
            }
            Err(e @ Error::Undelivered { .. }) => failures.push(e),
            Err(e) => panic!("send: {e}"),
        }
    }
}

/// Reads datagrams until none came for `quiet`.
fn drain(rx: &mut Datagram, quiet: Duration) -> Vec<(SockAddr, Vec<u8>)> {
    let mut got = Vec::new();
    while let Ok((p, from)) = rx.recv_timeout(Some(quiet)) {
        got.push((from, p));
    }
    got
}

#[test]
fn failures_in_a_burst_come_back_with_their_numbers() {
    let s = Stack::start(&[0, 1, 2]);
    let o = s.run(0, &["acl", "add", "reject 1:* -> 2:5001"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut rx = Datagram::bind_with(&s.sock(2), 5000, None).expect("bind 2:5000");
    let _refused = Datagram::bind_with(&s.sock(2), 5001, None).expect("bind 2:5001");
    let mut d = Datagram::bind_with(&s.sock(1), 0, None).expect("bind");
    assert_eq!(d.window(), v4v::client::DEFAULT_WINDOW);
    assert!(d.uses_channel(), "sends go through shared memory");
    assert!(
        d.rings_through_eventfd(),
        "and ring the daemon through an eventfd"
    );
    assert!(matches!(d.set_window(0), Err(Error::Invalid(_))));
    let (good, acl, dead) = (
        SockAddr::new(2, 5000),
        SockAddr::new(2, 5001),
        SockAddr::new(2, 5999),
    );
    let reader = std::thread::spawn(move || drain(&mut rx, Duration::from_secs(3)));
    // Every 10th datagram to a port the ACL refuses, every 10th + 5 to a port nobody bound.
    let mut failures = Vec::new();
    let mut want: HashMap<u64, (SockAddr, usize)> = HashMap::new();
    let mut good_seqs = Vec::new();
    for i in 0..2000u64 {
        // Now and then one too big for the channel's records (it goes over the socket) and for
        // the destination's ring: the paths switch in the middle of the burst.
        let len = if i % 500 == 250 {
            600_000
        } else {
            8 + (i as usize * 7) % 300
        };
        let dst = match i % 10 {
            3 => acl,
            8 => dead,
            _ => good,
        };
        let p = payload(d.sent() + 1, len);
        let seq = send(&mut d, &p, dst, &mut failures);
        if dst == good && len < 600_000 {
            good_seqs.push(seq);
        } else {
            want.insert(seq, (dst, len));
        }
    }
    // The last one fails: flush returns it (the oldest not reported), then the rest, then Ok.
    let p = payload(d.sent() + 1, 9);
    let last = send(&mut d, &p, dead, &mut failures);
    want.insert(last, (dead, 9));
    loop {
        match d.flush() {
            Ok(()) => break,
            Err(e @ Error::Undelivered { .. }) => failures.push(e),
            Err(e) => panic!("flush: {e}"),
        }
    }
    assert_eq!(d.outstanding(), 0);
    assert!(d.take_failures().is_empty());
    assert_eq!(d.sent(), 2001);
    let mut seen = Vec::new();
    for f in &failures {
        let Error::Undelivered {
            seq,
            dst,
            len,
            cause,
        } = f
        else {
            unreachable!()
        };
        let (wdst, wlen) = want
            .get(seq)
            .unwrap_or_else(|| panic!("{f} was sent to {good}"));
        assert_eq!((dst, len), (wdst, wlen), "{f}");
        match **cause {
            Error::MessageTooBig(_) => assert_eq!((*dst, *len), (good, 600_000), "{f}"),
            Error::Denied => assert_eq!(*dst, acl, "{f}"),
            Error::Refused(_) => assert_eq!(*dst, dead, "{f}"),
            ref other => panic!("{f}: cause {other:?}"),
        }
        assert!(f.to_string().contains(&format!("#{seq}")), "{f}");
        seen.push(*seq);
    }
    let mut sorted = seen.clone();
    sorted.sort_unstable();
    assert_eq!(seen, sorted, "failures are reported oldest first");
    let mut all: Vec<u64> = want.keys().copied().collect();
    all.sort_unstable();
    assert_eq!(seen, all, "each bad datagram is reported once");
    // The good ones all arrived, in order, from the sender's port.
    let got = reader.join().expect("reader");
    let got_seqs: Vec<u64> = got.iter().map(|(_, p)| seq_of(p)).collect();
    assert_eq!(got_seqs, good_seqs);
    assert!(
        got.iter()
            .all(|(f, _)| *f == SockAddr::new(1, d.local_port()))
    );
}

#[test]
fn a_receiver_that_never_reads_fills_the_window_and_no_more() {
    let s = Stack::start(&[1, 2]);
    let _deaf = Datagram::bind_with(&s.sock(2), 7600, None).expect("bind");
    let dst = SockAddr::new(2, 7600);
    let mut d = Datagram::bind_with(&s.sock(1), 0, None).expect("bind");
    d.set_window(8).expect("window");
    d.set_nonblocking(true).expect("nonblocking");
    let pid = s.daemon_pid(1);
    let before = rss_kib(pid);
    let chunk = vec![5u8; 4096];
    // Until the window stays full: the ring and the deaf client's buffers are full, the daemon
    // holds one datagram for space, and seven more wait behind it.
    let mut blocked = 0;
    let end = Instant::now() + Duration::from_secs(30);
    while blocked < 5 {
        match d.send_to(&chunk, dst) {
            Ok(_) => blocked = 0,
            Err(Error::Io(e)) if e.kind() == ErrorKind::WouldBlock => {
                assert_eq!(d.outstanding(), 8, "WouldBlock with the window not full");
                blocked += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("send: {e}"),
        }
        assert!(Instant::now() < end, "the window never filled");
    }
    let sent = d.sent();
    assert!(
        sent * 4096 < 8 << 20,
        "{sent} datagrams taken for a port that never reads"
    );
    for _ in 0..100 {
        assert!(
            matches!(d.send_to(&chunk, dst), Err(Error::Io(e)) if e.kind() == ErrorKind::WouldBlock)
        );
    }
    assert_eq!(d.sent(), sent, "refused sends have no number");
    // Blocking: the send waits for the window, the flush for the ring.
    d.set_nonblocking(false).expect("blocking");
    assert!(matches!(
        d.flush_timeout(Some(Duration::from_millis(500))),
        Err(Error::TimedOut(_))
    ));
    let after = rss_kib(pid);
    assert!(
        after < before + 4096,
        "v4vd grew from {before} to {after} KiB"
    );
    // A blocked sender is unblocked by room: nothing was lost.
    drop(_deaf);
    let mut rx = Datagram::bind_with(&s.sock(2), 7601, None).expect("bind");
    let dst2 = SockAddr::new(2, 7601);
    // The deaf port is gone: the datagrams it had not taken fail, tied to their numbers.
    let mut failures = Vec::new();
    let _ = send(&mut d, &payload(sent + 1, 64), dst2, &mut failures);
    loop {
        match d.flush() {
            Ok(()) => break,
            Err(e @ Error::Undelivered { .. }) => failures.push(e),
            Err(e) => panic!("flush: {e}"),
        }
    }
    for f in &failures {
        let Error::Undelivered { seq, dst, .. } = f else {
            unreachable!()
        };
        assert!(*seq <= sent && *dst == SockAddr::new(2, 7600), "{f}");
    }
    let (p, _) = rx
        .recv_timeout(Some(Duration::from_secs(10)))
        .expect("the next one arrives");
    assert_eq!(seq_of(&p), sent + 1);
}

#[test]
fn a_sender_blocked_on_the_window_resumes_when_the_receiver_reads() {
    let s = Stack::start(&[1, 2]);
    let mut rx = Datagram::bind_with(&s.sock(2), 7700, None).expect("bind");
    let dst = SockAddr::new(2, 7700);
    let sock = s.sock(1);
    let (tx_done, done) = std::sync::mpsc::channel();
    const N: u64 = 3000;
    let sender = std::thread::spawn(move || {
        let mut d = Datagram::bind_with(&sock, 0, None).expect("bind");
        let mut failures = Vec::new();
        for i in 1..=N {
            send(&mut d, &payload(i, 4096), dst, &mut failures);
        }
        d.flush().expect("flush");
        assert!(failures.is_empty(), "{failures:?}");
        tx_done.send(()).expect("done");
    });
    // Nobody reads: the sender stalls well before the end.
    assert!(
        done.recv_timeout(Duration::from_secs(2)).is_err(),
        "{N} datagrams of 4 KiB went to a port nobody read"
    );
    let mut next = 1;
    while next <= N {
        let (p, _) = rx
            .recv_timeout(Some(Duration::from_secs(20)))
            .unwrap_or_else(|e| panic!("datagram {next}: {e}"));
        assert_eq!(seq_of(&p), next, "in order, none lost");
        next += 1;
    }
    done.recv_timeout(Duration::from_secs(20))
        .expect("the sender finished");
    sender.join().expect("sender");
}

#[test]
fn a_daemon_killed_mid_burst_leaves_a_named_range_unconfirmed() {
    let mut s = Stack::start(&[1, 2]);
    let mut rx = Datagram::bind_with(&s.sock(2), 7800, None).expect("bind");
    let dst = SockAddr::new(2, 7800);
    let mut d = Datagram::bind_with(&s.sock(1), 0, None).expect("bind");
    d.set_window(64).expect("window");
    d.set_nonblocking(true).expect("nonblocking");
    // The receiver does not read yet: the burst stops on a full window.
    let mut blocked = 0;
    while blocked < 3 {
        match d.send_to(&payload(d.sent() + 1, 2048), dst) {
            Ok(_) => blocked = 0,
            Err(Error::Io(e)) if e.kind() == ErrorKind::WouldBlock => {
                blocked += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("send: {e}"),
        }
    }
    let sent = d.sent();
    assert_eq!(d.outstanding(), 64);
    s.kill_daemon(1);
    let e = d.flush().expect_err("the daemon is gone");
    let Error::Unconfirmed { first, last, .. } = e else {
        panic!("flush: {e:?}");
    };
    assert_eq!(last, sent);
    assert_eq!(first, sent - 63, "the window's worth was not answered");
    assert!(
        matches!(d.send_to(b"late", dst), Err(Error::DaemonGone(_))),
        "a later send says the daemon is gone"
    );
    assert!(d.flush().is_ok(), "each failure is reported once");
    // Everything answered before the range was delivered; nothing after it was.
    let got: Vec<u64> = drain(&mut rx, Duration::from_secs(2))
        .iter()
        .map(|(_, p)| seq_of(p))
        .collect();
    assert!(
        got.len() as u64 >= first - 1,
        "{} of {} delivered",
        got.len(),
        first - 1
    );
    assert_eq!(got, (1..=got.len() as u64).collect::<Vec<_>>(), "in order");
    assert!(got.len() as u64 <= last);
}

#[test]
fn hundreds_of_concurrent_senders_lose_nothing() {
    common::raise_fd_limit();
    // 100 senders in each of three domains (a domain has 128 rings), to one receiver.
    let s = Stack::start(&[1, 2, 3, 4]);
    let mut rx = Datagram::bind_with(&s.sock(2), 7900, None).expect("bind");
    let dst = SockAddr::new(2, 7900);
    const PER_DOMAIN: usize = 100;
    const EACH: u64 = 100;
    let senders: Vec<_> = [1u16, 3, 4]
        .iter()
        .flat_map(|&dom| (0..PER_DOMAIN).map(move |k| (dom, k)))
        .map(|(dom, k)| {
            let sock = s.sock(dom);
            std::thread::spawn(move || {
                let mut d = Datagram::bind_with(&sock, 0, None).expect("bind");
                d.set_window(1 + k % 64).expect("window");
                let mut failures = Vec::new();
                for i in 1..=EACH {
                    send(&mut d, &payload(i, 16 + k * 13 % 1000), dst, &mut failures);
                }
                d.flush().expect("flush");
                assert!(failures.is_empty(), "{failures:?}");
                SockAddr::new(dom, d.local_port())
            })
        })
        .collect();
    let mut next: HashMap<SockAddr, u64> = HashMap::new();
    let total = senders.len() as u64 * EACH;
    for n in 0..total {
        let (p, from) = rx
            .recv_timeout(Some(Duration::from_secs(30)))
            .unwrap_or_else(|e| panic!("after {n} of {total}: {e}"));
        let want = next.entry(from).or_insert(1);
        assert_eq!(seq_of(&p), *want, "from {from}: in order, none lost");
        *want += 1;
    }
    let count = senders.len();
    let from: Vec<SockAddr> = senders
        .into_iter()
        .map(|h| h.join().expect("sender"))
        .collect();
    assert_eq!(next.len(), count);
    for a in from {
        assert_eq!(next[&a], EACH + 1);
    }
}

/// Sends `bytes` on `sock` with descriptor `fd` attached (`SCM_RIGHTS`).
fn send_fd(sock: &std::os::unix::net::UnixStream, bytes: &[u8], fd: i32) {
    use std::os::fd::AsRawFd;
    let mut cbuf = [0u64; 4];
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    // SAFETY: an all-zero msghdr is valid; the fields set point at live buffers, and the
    // control buffer has room for one descriptor's cmsg.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(4) as usize;
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(4) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<i32>(), fd);
        assert_eq!(
            libc::sendmsg(sock.as_raw_fd(), &msg, 0),
            bytes.len() as isize,
            "sendmsg"
        );
    }
}

/// The hostile client, run by `a_client_scribbling_on_its_channel_hurts_only_itself` as nobody
/// (`HOSTILE_SOCK` names the daemon): binds a port the raw way, gives the daemon a channel,
/// publishes a few good records, then writes garbage all over the channel (indexes, headers,
/// payloads) and rings, until the daemon closes it. Exits 0 when it was closed.
#[test]
#[ignore = "a helper: run as another user by the test below"]
fn hostile_channel_helper() {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::os::fd::AsRawFd;
    use v4v::client::proto::{
        DGRAM_CHAN_CAPACITY, FRAME_CHAN, FRAME_HEADER_SIZE, FRAME_RING, FRAME_SEND, FrameHeader,
        SEND_F_PIPELINE,
    };
    let Ok(path) = std::env::var("HOSTILE_SOCK") else {
        return;
    };
    let mut s = std::os::unix::net::UnixStream::connect(&path).expect("connect");
    s.write_all(b"DGRAM 0\n").expect("request");
    let mut r = BufReader::new(s.try_clone().expect("clone"));
    let mut line = String::new();
    r.read_line(&mut line).expect("reply");
    assert!(line.starts_with("OK "), "{line}");
    let (mem, fd) = v4v::chan::ChanMemory::create(DGRAM_CHAN_CAPACITY).expect("memfd");
    let offer = FrameHeader {
        kind: FRAME_CHAN,
        aux: DGRAM_CHAN_CAPACITY as u32,
        ..Default::default()
    };
    send_fd(&s, &offer.encode(), fd.as_raw_fd());
    let mut answer = [0u8; FRAME_HEADER_SIZE];
    r.read_exact(&mut answer).expect("answer");
    let h = FrameHeader::decode(&answer);
    assert_eq!((h.kind, h.aux), (FRAME_CHAN, 0), "the channel is taken");
    // A few good records first.
    let mut p = v4v::chan::Producer::new(&mem).expect("producer");
    let dst = FrameHeader {
        len: 5,
        kind: FRAME_SEND,
        domain: 2,
        port: 8000,
        aux: SEND_F_PIPELINE,
    };
    for _ in 0..10 {
        p.push(&[&dst.encode(), b"valid"]).expect("push");
    }
    let ring = FrameHeader {
        kind: FRAME_RING,
        ..Default::default()
    }
    .encode();
    s.write_all(&ring).expect("ring");
    // Our own mapping of the channel, to scribble on.
    let size = 4096 + DGRAM_CHAN_CAPACITY;
    // SAFETY: a shared mapping of our own memfd, of its size; unmapped at exit.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            0,
        )
    };
    assert_ne!(base, libc::MAP_FAILED);
    let words = base.cast::<u32>();
    s.set_nonblocking(true).expect("nonblocking");
    let mut x: u32 = 0x9e37_79b9;
    let end = Instant::now() + Duration::from_secs(20);
    let mut buf = [0u8; 4096];
    loop {
        for _ in 0..4096 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            // Indexes and flags (the first words of each header line) most of the time, the
            // data area the rest.
            let i = if x & 1 == 0 {
                [16usize, 32, 48, 64][(x >> 1) as usize % 4]
            } else {
                1024 + (x as usize >> 3) % (DGRAM_CHAN_CAPACITY / 4)
            };
            // SAFETY: `i` is within the mapping (size / 4 words).
            unsafe { words.add(i).write_volatile(x) };
        }
        let _ = s.write(&ring);
        match s.read(&mut buf) {
            Ok(0) => return, // closed: the daemon gave up on us
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
        assert!(
            Instant::now() < end,
            "the daemon kept a client whose channel is garbage"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn a_client_scribbling_on_its_channel_hurts_only_itself() {
    let s = Stack::start(&[1, 2]);
    let mut rx = Datagram::bind_with(&s.sock(2), 8000, None).expect("bind");
    let dst = SockAddr::new(2, 8000);
    let mut d = Datagram::bind_with(&s.sock(1), 0, None).expect("bind");
    assert!(d.uses_channel());
    let port = d.local_port();
    const N: u64 = 20_000;
    let sender = std::thread::spawn(move || {
        let mut failures = Vec::new();
        for i in 1..=N {
            send(&mut d, &payload(i, 64), dst, &mut failures);
        }
        d.flush().expect("flush");
        assert!(failures.is_empty(), "{failures:?}");
    });
    // Meanwhile, nobody's client scribbles on its own channel.
    let hostile = common::as_nobody(&std::env::current_exe().expect("exe"))
        .args([
            "hostile_channel_helper",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .env("HOSTILE_SOCK", s.sock(1))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run the hostile helper");
    // The root sender's datagrams all arrive, in order; the hostile client's ten good records
    // may have arrived too (they were its own to send).
    let mut next = 1;
    let mut valid = 0;
    while next <= N {
        let (p, from) = rx
            .recv_timeout(Some(Duration::from_secs(20)))
            .unwrap_or_else(|e| panic!("datagram {next}: {e}"));
        if from.port != port {
            assert_eq!(p, b"valid", "only records the hostile client wrote whole");
            valid += 1;
            continue;
        }
        assert_eq!(seq_of(&p), next);
        next += 1;
    }
    assert!(valid <= 10);
    sender.join().expect("sender");
    let hostile = common::wait_limited(hostile, Duration::from_secs(30));
    assert!(
        hostile.status.success(),
        "the daemon did not close the hostile client: {}",
        String::from_utf8_lossy(&hostile.stdout)
    );
    // The daemon is fine and serves a new client.
    let mut d = Datagram::bind_with(&s.sock(1), 0, None).expect("bind after");
    d.send_to(&payload(1, 8), dst).expect("send");
    d.flush().expect("flush");
}

/// A batch that meets a full ring: a big datagram that does not fit must not be overtaken by the
/// small one after it that would (the daemon asks whether all of a batch fits first). Three
/// rounds of filling the ring and draining it.
#[test]
fn datagrams_to_one_ring_keep_their_order_when_it_fills() {
    let s = Stack::start(&[1, 2]);
    let mut rx = Datagram::bind_with(&s.sock(2), 8100, None).expect("bind");
    let dst = SockAddr::new(2, 8100);
    let mut d = Datagram::bind_with(&s.sock(1), 0, None).expect("bind");
    for _round in 0..3 {
        let first = d.sent() + 1;
        d.set_nonblocking(true).expect("nonblocking");
        // Until the ring is full and the window too: big and small alternate.
        let mut blocked = 0;
        let end = Instant::now() + Duration::from_secs(30);
        while blocked < 3 {
            let seq = d.sent() + 1;
            let len = if seq.is_multiple_of(2) { 64 } else { 3000 };
            match d.send_to(&payload(seq, len), dst) {
                Ok(_) => blocked = 0,
                Err(Error::Io(e)) if e.kind() == ErrorKind::WouldBlock => {
                    blocked += 1;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("send: {e}"),
            }
            assert!(Instant::now() < end, "never blocked");
        }
        let sent = d.sent();
        d.set_nonblocking(false).expect("blocking");
        let reader = std::thread::spawn(move || {
            let got: Vec<u64> = (first..=sent)
                .map(|_| {
                    let (p, _) = rx
                        .recv_timeout(Some(Duration::from_secs(20)))
                        .expect("datagram");
                    seq_of(&p)
                })
                .collect();
            (rx, got)
        });
        d.flush().expect("flush");
        let (back, got) = reader.join().expect("reader");
        rx = back;
        assert_eq!(got, (first..=sent).collect::<Vec<_>>(), "in sending order");
    }
}
