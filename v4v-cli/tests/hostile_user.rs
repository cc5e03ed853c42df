// SPDX-License-Identifier: MIT OR Apache-2.0
//! User nobody tries issue 10's defects 3 to 7 at once against dom0's daemon: takes rings until
//! refused, binds privileged ports, holds idle connections, parks senders on a full ring and
//! withholds the last byte of maximum-size frames. Meanwhile root's datagram round trips and a
//! 64 MiB stream keep working, and v4vd's resident memory stays bounded.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{Stack, raise_fd_limit, rss_kib};
use v4v::client::proto::{FRAME_SEND, FrameHeader, MAX_DGRAM};
use v4v::client::{Datagram, Listener, SockAddr, Stream};

const NOBODY: u32 = 65534;
static ZEROS: [u8; 65536] = [0; 65536];

/// Runs `f` on a thread whose credentials are `uid`'s (raw setresuid/setresgid change only
/// the calling thread; the daemon reads them with SO_PEERCRED).
fn as_user<T: Send + 'static>(uid: u32, f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        // SAFETY: plain system calls on this thread's own credentials; no pointers but null.
        unsafe {
            libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>());
            libc::syscall(libc::SYS_setresgid, uid, uid, uid);
            assert_eq!(libc::syscall(libc::SYS_setresuid, uid, uid, uid), 0);
        }
        f()
    })
    .join()
    .expect("thread as user")
}

/// A request line on a new connection of nobody's; the connection is returned unread.
fn nobody_conn(sock: &PathBuf, line: &'static [u8]) -> Option<UnixStream> {
    let mut c = UnixStream::connect(sock).ok()?;
    c.write_all(line).ok()?;
    Some(c)
}

/// Root's work: a 64 MiB stream dom0 -> dom1 and 200 datagram round trips.
fn root_work(s: &Stack) {
    let mut l = Listener::bind_with(&s.sock(1), 6000).expect("listen");
    let reader = std::thread::spawn(move || {
        let (mut srv, _) = l.accept().expect("accept");
        let mut n = 0usize;
        let mut buf = vec![0u8; 65536];
        loop {
            match srv.read(&mut buf) {
                Ok(0) => break n,
                Ok(k) => n += k,
                Err(e) => panic!("stream: {e}"),
            }
        }
    });
    let mut echo = Datagram::bind_with(&s.sock(1), 6001, None).expect("echo");
    let echoer = std::thread::spawn(move || {
        let mut buf = vec![0u8; 256];
        for _ in 0..200 {
            let (n, from) = echo.recv_from(&mut buf).expect("echo recv");
            echo.send_to(&buf[..n], from).expect("echo send");
        }
    });
    let mut c = Stream::connect_with(&s.sock(0), SockAddr::new(1, 6000)).expect("connect");
    for _ in 0..(64 << 20) / ZEROS.len() {
        c.write_all(&ZEROS).expect("stream write");
    }
    c.shutdown(std::net::Shutdown::Write).expect("shutdown");
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).expect("stream end");
    assert_eq!(reader.join().expect("reader"), 64 << 20);
    let mut d = Datagram::bind_with(&s.sock(0), 0, None).expect("bind");
    for i in 0..200 {
        let m = format!("ping {i}");
        d.send_to(m.as_bytes(), SockAddr::new(1, 6001))
            .expect("send");
        let (r, _) = d
            .recv_timeout(Some(Duration::from_secs(10)))
            .expect("reply");
        assert_eq!(r, m.as_bytes());
    }
    echoer.join().expect("echo");
}

#[test]
fn nobody_tries_everything_at_once_and_root_keeps_working() {
    raise_fd_limit();
    let s = Stack::start(&[0, 1, 2]);
    let sock = s.sock(0);
    let pid = s.daemon_pid(0);
    let before = rss_kib(pid);
    // A ring nobody reads, full (filled from dom2).
    let _sink = Datagram::bind_with(&s.sock(1), 7000, None).expect("sink");
    let mut filler = Datagram::bind_with(&s.sock(2), 0, None).expect("filler");
    filler.set_nonblocking(true).expect("nonblocking");
    let mut refused = 0;
    while refused < 5 {
        match filler.send_to(&vec![1u8; 200 * 1024], SockAddr::new(1, 7000)) {
            Ok(_) => refused = 0,
            Err(_) => {
                refused += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    // Defect 7: senders parked on it.
    let payload = s.dir.join("payload");
    std::fs::write(&payload, vec![7u8; 200 * 1024]).expect("payload");
    let mut parked: Vec<Child> = (0..16)
        .map(|_| {
            s.cli_as_nobody(0, &["send", "1:7000"])
                .stdin(std::fs::File::open(&payload).expect("payload"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("sender")
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    // Defects 3, 4, 5, 6 from one thread of nobody's; it keeps its connections.
    let (keep_tx, keep_rx) = mpsc::channel::<Vec<UnixStream>>();
    let sock2 = sock.clone();
    let (rings_refused, privileged_refused) = as_user(NOBODY, move || {
        let mut keep = Vec::new();
        // 4: maximum-size frames without their last byte (as many rings as it may have).
        let mut hello = b"DGRAM 0\n".to_vec();
        hello.extend(
            FrameHeader {
                len: MAX_DGRAM,
                kind: FRAME_SEND,
                domain: 1,
                port: 7000,
                aux: 0,
            }
            .encode(),
        );
        let mut framers = Vec::new();
        for _ in 0..40 {
            if let Ok(mut c) = UnixStream::connect(&sock2) {
                let _ = c.write_all(&hello);
                let _ = c.set_nonblocking(true);
                framers.push((c, 0usize));
            }
        }
        let end = Instant::now() + Duration::from_secs(4);
        while Instant::now() < end {
            for (c, sent) in &mut framers {
                let k = (MAX_DGRAM as usize - 1 - *sent).min(ZEROS.len());
                if k > 0
                    && let Ok(r) = c.write(&ZEROS[..k])
                {
                    *sent += r;
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        keep.extend(framers.into_iter().map(|(c, _)| c));
        // 3: one more ring is refused, naming the limit it is past (the ring quota, or the
        // memory budget if the frames used it up first).
        let mut r = String::new();
        if let Some(mut c) = nobody_conn(&sock2, b"DGRAM 0\n") {
            let _ = c.read_to_string(&mut r);
        }
        // 5: a privileged port.
        let mut p = String::new();
        if let Some(mut c) = nobody_conn(&sock2, b"DGRAM 22\n") {
            let _ = c.read_to_string(&mut p);
        }
        // 6: idle connections.
        for _ in 0..300 {
            if let Ok(c) = UnixStream::connect(&sock2) {
                keep.push(c);
            }
        }
        let _ = keep_tx.send(keep);
        (r, p)
    });
    let held = keep_rx.recv().expect("nobody's connections");
    let during = rss_kib(pid);
    let started = Instant::now();
    root_work(&s);
    let took = started.elapsed();
    let after = rss_kib(pid);
    drop(held);
    for c in &mut parked {
        let _ = c.kill();
        let _ = c.wait();
    }
    eprintln!(
        "root's 64 MiB stream and 200 round trips took {took:?}; v4vd RSS {before} KiB before, \
         {during} KiB with nobody's load, {after} KiB after root's work"
    );
    assert!(
        (rings_refused.contains("EDQUOT") && rings_refused.contains("max_rings_per_user"))
            || (rings_refused.contains("ENOBUFS") && rings_refused.contains("max_buffer_per_user")),
        "nobody's extra ring: {rings_refused:?}"
    );
    assert!(
        privileged_refused.contains("EPERM") && privileged_refused.contains("privileged"),
        "nobody's port 22: {privileged_refused:?}"
    );
    // The daemon's own memory plus nobody's budget (64 MiB), with room for allocator slack.
    let bound = before + (64 + 48) * 1024;
    assert!(
        during < bound && after < bound,
        "v4vd RSS {during}/{after} KiB, bound {bound} KiB"
    );
}

/// The `v4v::chan` mappings of this process whose memfds are the library's (`memfd:v4v-chan`),
/// as (start address, length), in address order.
fn chan_mappings() -> Vec<(usize, usize)> {
    let maps = std::fs::read_to_string("/proc/self/maps").expect("maps");
    maps.lines()
        .filter(|l| l.contains("memfd:v4v-chan"))
        .filter_map(|l| {
            let (a, b) = l.split(' ').next()?.split_once('-')?;
            let (a, b) = (
                usize::from_str_radix(a, 16).ok()?,
                usize::from_str_radix(b, 16).ok()?,
            );
            Some((a, b - a))
        })
        .collect()
}

/// Nobody's side of the test below, in a process of its own (this binary again, run as nobody;
/// `SCRIBBLE_SOCK` names dom0's daemon, `SCRIBBLE_PORT` root's service on dom1): opens four
/// shared-memory streams, writes "hello" on each and says `connected`; at a line on stdin,
/// scribbles over the tail and head words (offsets 64 and 192) of every channel mapping of this
/// process, all of them nobody's, rings each stream and says `scribbled`; keeps the streams
/// until stdin closes. A process of its own, because the tests of one binary are threads of one
/// process: the channel mappings of the test's process are every test's, root's too.
#[test]
#[ignore = "a helper: run as nobody by the test below"]
fn nobody_s_scribbling_helper() {
    use v4v::client::ShmStream;
    let (Ok(sock), Ok(port)) = (
        std::env::var("SCRIBBLE_SOCK"),
        std::env::var("SCRIBBLE_PORT"),
    ) else {
        return;
    };
    let dst = SockAddr::new(1, port.parse().expect("port"));
    let streams: Vec<ShmStream> = (0..4)
        .map(|_| {
            let mut c =
                ShmStream::connect_with(std::path::Path::new(&sock), dst).expect("nobody connects");
            c.write_all(b"hello").expect("nobody writes");
            c
        })
        .collect();
    println!("connected");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).expect("go");
    let mut scribbled = 0;
    for (addr, len) in chan_mappings() {
        if len < 4096 {
            continue;
        }
        // SAFETY: this process's own shared mapping of a memfd the library created for one of
        // its streams; page 0 (the header) holds these words, which a hostile client may
        // write at will.
        unsafe {
            std::ptr::write_volatile((addr + 64) as *mut u32, 0xdead_0000);
            std::ptr::write_volatile((addr + 192) as *mut u32, 0x0bad_0000);
        }
        scribbled += 1;
    }
    assert_eq!(scribbled, 8, "two channels for each of four streams");
    for c in &streams {
        use std::os::fd::AsRawFd;
        // A doorbell byte straight on the socket (the library's own write sees the corruption
        // and refuses).
        // SAFETY: one byte from a static buffer to a live descriptor.
        let n = unsafe { libc::write(c.as_raw_fd(), b"!".as_ptr().cast(), 1) };
        assert_eq!(n, 1);
    }
    println!("scribbled");
    while std::io::stdin().read_line(&mut line).is_ok_and(|n| n > 0) {}
}

/// Issue 11, item 3, as a hostile user: nobody, in a process of its own, opens shared-memory
/// streams to root's service and scribbles over its channels' headers (every mapping of its
/// own, both directions) while root moves 32 MiB over a shared-memory stream of its own through
/// the same daemons, and opens another meanwhile. Nobody's streams are reset; root's arrive
/// whole; the daemons serve on.
#[test]
fn nobody_corrupting_its_stream_channels_stops_only_its_streams() {
    use std::io::BufRead;
    use v4v::client::ShmStream;
    let s = Stack::start(&[0, 1]);
    let mut l = Listener::bind_with(&s.sock(1), 6100).expect("listen");
    let dst = SockAddr::new(1, 6100);
    // Root's transfer, running throughout.
    let mut root = ShmStream::connect_with(&s.sock(0), dst).expect("root connects");
    let (mut root_srv, _) = l.accept_shm().expect("root accepted");
    let reader = std::thread::spawn(move || {
        let (mut n, mut buf) = (0usize, vec![0u8; 65536]);
        loop {
            match root_srv.read(&mut buf) {
                Ok(0) => break n,
                Ok(k) => {
                    assert!(buf[..k].iter().all(|&b| b == 0));
                    n += k;
                }
                Err(e) => panic!("root's stream: {e}"),
            }
        }
    });
    // Half before nobody's streams are broken, half after.
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let writer = std::thread::spawn(move || {
        for i in 0..(32 << 20) / ZEROS.len() {
            if i == (16 << 20) / ZEROS.len() {
                go_rx.recv().expect("go");
            }
            root.write_all(&ZEROS).expect("root's write");
        }
        root.shutdown(std::net::Shutdown::Write).expect("shutdown");
    });
    // Nobody's streams: connected and used; accepted by root's service.
    let mut nobody = common::as_nobody(&std::env::current_exe().expect("exe"))
        .args([
            "nobody_s_scribbling_helper",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("SCRIBBLE_SOCK", s.sock(0))
        .env("SCRIBBLE_PORT", "6100")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("nobody's process");
    let mut to_nobody = nobody.stdin.take().expect("stdin");
    let mut said = std::io::BufReader::new(nobody.stdout.take().expect("stdout")).lines();
    let mut wait_for = |what: &str| loop {
        match said.next() {
            Some(Ok(l)) if l.contains(what) => break,
            Some(Ok(_)) => {}
            other => panic!("nobody's process ended before saying {what:?}: {other:?}"),
        }
    };
    wait_for("connected");
    let mut accepted: Vec<_> = (0..4)
        .map(|_| {
            let (mut srv, _) = l.accept().expect("nobody's stream accepted");
            let mut b = [0u8; 5];
            srv.read_exact(&mut b).expect("hello");
            srv.set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            srv
        })
        .collect();
    // A stream of root's, opened while nobody is at it: not nobody's, so never scribbled on.
    let mut root2 = ShmStream::connect_with(&s.sock(0), dst).expect("root's second stream");
    let (mut root2_srv, _) = l.accept().expect("root's second stream accepted");
    // Then nobody scribbles over its channels, and rings.
    writeln!(to_nobody, "scribble").expect("tell nobody");
    wait_for("scribbled");
    let mut resets = 0;
    for srv in &mut accepted {
        let mut got = Vec::new();
        match srv.read_to_end(&mut got) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => resets += 1,
            other => panic!("nobody's stream: {other:?} after {got:?}"),
        }
    }
    assert_eq!(resets, 4);
    root2
        .write_all(b"root's")
        .expect("root's second stream, after nobody's scribbling");
    let mut b = [0u8; 6];
    root2_srv.read_exact(&mut b).expect("root's second stream");
    assert_eq!(&b, b"root's");
    drop(to_nobody);
    let out = common::wait_limited(nobody, Duration::from_secs(30));
    assert!(out.status.success(), "nobody's process: {:?}", out.status);
    go_tx.send(()).expect("go");
    writer.join().expect("root's writer");
    assert_eq!(reader.join().expect("root's reader"), 32 << 20);
    // Both daemons still answer.
    for d in [0, 1] {
        v4v::client::status(&s.sock(d)).expect("status");
    }
}

/// The client memory a daemon maps for shared-memory streams counts in the user's buffer
/// budget (pages the client never touched are allocated when the daemon first touches them):
/// nobody's streams with the largest channels (2 × 4 MiB each) are refused with `ENOBUFS`, the
/// limit named, once its `max_buffer_per_user` (64 MiB) is used; root's still open.
#[test]
fn nobody_s_shared_memory_channels_count_in_its_budget() {
    use v4v::client::ShmStream;
    let s = Stack::start(&[0, 1]);
    let mut l = Listener::bind_with(&s.sock(1), 6200).expect("listen");
    let dst = SockAddr::new(1, 6200);
    let sock = s.sock(0);
    let accepter = std::thread::spawn(move || {
        let mut held = Vec::new();
        while let Ok((c, _)) = l.accept() {
            held.push(c);
            if held.len() == 21 {
                break;
            }
        }
        held
    });
    let (opened, refusal) = as_user(NOBODY, move || {
        let mut held = Vec::new();
        for _ in 0..20 {
            match ShmStream::connect_with_capacity(&sock, dst, 4 << 20) {
                Ok(c) => held.push(c),
                Err(e) => return (held.len(), Some(e.to_string())),
            }
        }
        (held.len(), None)
    });
    let refusal = refusal.expect("nobody's streams were never refused");
    assert!(
        opened < 8,
        "{opened} streams of 8 MiB each for a 64 MiB budget"
    );
    assert!(
        refusal.contains("max_buffer_per_user"),
        "the refusal names the limit: {refusal}"
    );
    // Root is not held to it.
    let mut root =
        ShmStream::connect_with_capacity(&s.sock(0), dst, 4 << 20).expect("root's stream");
    root.write_all(b"root").expect("root writes");
    drop(root);
    drop(s);
    let _ = accepter.join();
}
