// SPDX-License-Identifier: MIT OR Apache-2.0
//! The whole stack as real processes: `v4v-sim`, a `v4vd` per domain, `v4v-cli`, socat, and the
//! libv4v client API.

mod common;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{
    FNV0, Stack, fill_pattern, fnv, private_rss_kib, raise_fd_limit, run_limited, wait_limited,
};
use v4v::client::{Datagram, Listener, SockAddr, Stream};

fn code(o: &std::process::Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

#[test]
fn datagrams_both_ways_between_three_domains() {
    let s = Stack::start(&[0, 1, 2]);
    let doms = [0u16, 1, 2];
    // A receiver on each domain expecting one datagram from each of the two others.
    let recvs: Vec<_> = doms
        .iter()
        .map(|&d| {
            let c = s
                .cli(
                    d,
                    &[
                        "recv",
                        "4000",
                        "--count",
                        "2",
                        "--verbose",
                        "--timeout",
                        "20",
                    ],
                )
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("recv");
            s.wait_port(d, 4000, "dgram");
            c
        })
        .collect();
    for &from in &doms {
        for &to in &doms {
            if from != to {
                let msg = format!("from {from} to {to}");
                let o = s.run(
                    from,
                    &[
                        "send",
                        "--from-port",
                        &format!("{}", 100 + from),
                        &format!("{to}:4000"),
                        &msg,
                    ],
                );
                assert_eq!(code(&o), 0, "{}", stderr(&o));
            }
        }
    }
    for (c, &to) in recvs.into_iter().zip(&doms) {
        let o = wait_limited(c, Duration::from_secs(20));
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        let mut lines: Vec<String> = String::from_utf8(o.stdout)
            .expect("utf8")
            .lines()
            .map(str::to_string)
            .collect();
        lines.sort();
        // The source is the hypervisor's: the real domain and the port the sender bound.
        let mut want: Vec<String> = doms
            .iter()
            .filter(|&&f| f != to)
            .map(|f| format!("{f}:{}\tfrom {f} to {to}", 100 + f))
            .collect();
        want.sort();
        assert_eq!(lines, want);
    }
    // stdin as the payload, boundaries kept, bytes as they are with --raw.
    let mut r = s
        .cli(
            2,
            &["recv", "4001", "--count", "2", "--raw", "--timeout", "20"],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("recv");
    s.wait_port(2, 4001, "dgram");
    for payload in [&b"line one\nline two\n"[..], &[0u8, 255, 10, 13][..]] {
        let mut snd = s.spawn(1, &["send", "2:4001"], Stdio::piped());
        snd.stdin
            .take()
            .expect("stdin")
            .write_all(payload)
            .expect("write");
        let o = wait_limited(snd, Duration::from_secs(20));
        assert_eq!(code(&o), 0, "{}", stderr(&o));
    }
    let mut out = Vec::new();
    r.stdout
        .take()
        .expect("stdout")
        .read_to_end(&mut out)
        .expect("read");
    assert_eq!(out, b"line one\nline two\n\x00\xff\n\r");
    assert!(r.wait().expect("wait").success());
}

#[test]
fn stream_of_64_mib_keeps_every_byte() {
    const TOTAL: usize = 64 << 20;
    let s = Stack::start(&[1, 2]);
    let mut server = s.spawn(2, &["listen", "7000", "--once"], Stdio::null());
    s.wait_port(2, 7000, "listen");
    let mut client = s.spawn(1, &["connect", "2:7000"], Stdio::piped());
    let mut input = client.stdin.take().expect("stdin");
    let writer = std::thread::spawn(move || {
        let mut state = 0x1234_5678_9abc_def1u64;
        let mut h = FNV0;
        let mut buf = vec![0u8; 1 << 20];
        for _ in 0..TOTAL / buf.len() {
            fill_pattern(&mut buf, &mut state);
            h = fnv(h, &buf);
            input.write_all(&buf).expect("feed connect");
        }
        h
    });
    let mut output = server.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut h = FNV0;
        let mut n = 0usize;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let k = output.read(&mut buf).expect("read listen");
            if k == 0 {
                return (n, h);
            }
            n += k;
            h = fnv(h, &buf[..k]);
        }
    });
    let sent = writer.join().expect("writer");
    let (n, got) = reader.join().expect("reader");
    assert_eq!(n, TOTAL);
    assert_eq!(got, sent, "checksum differs");
    let o = wait_limited(client, Duration::from_secs(60));
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let o = wait_limited(server, Duration::from_secs(60));
    assert_eq!(code(&o), 0, "{}", stderr(&o));
}

/// Issue 11's bulk path (full 256 KiB messages, bulk copies into and out of the channel and the
/// rings): eight streams at once, both ways, each carrying its own pattern in writes and reads
/// of odd sizes (1 byte to 700 KB, so messages, ring wraps and channel wraps fall at every
/// alignment), each direction checked byte for byte by its checksum and length.
#[test]
fn concurrent_streams_of_odd_sized_writes_keep_every_byte_both_ways() {
    const STREAMS: u64 = 8;
    const EACH: usize = 12 << 20;
    let s = Stack::start(&[1, 2]);
    let (s1, s2) = (s.sock(1), s.sock(2));
    let mut l = Listener::bind_with(&s2, 7100).expect("listen");
    // Sends `EACH` bytes of pattern `seed` in odd-sized writes, then shuts down writing.
    fn feed(mut w: Stream, seed: u64) -> u64 {
        let mut state = seed;
        let mut h = FNV0;
        let mut buf = vec![0u8; 700_000];
        let mut left = EACH;
        let mut size = seed as usize;
        while left > 0 {
            size = (size * 7919 + 12_345) % buf.len() + 1;
            let n = size.min(left);
            fill_pattern(&mut buf[..n], &mut state);
            h = fnv(h, &buf[..n]);
            w.write_all(&buf[..n]).expect("write");
            left -= n;
        }
        w.shutdown(std::net::Shutdown::Write).expect("shutdown");
        h
    }
    // Reads to the end in odd-sized reads: (bytes, checksum).
    fn drain(mut r: std::os::unix::net::UnixStream, seed: u64) -> (usize, u64) {
        r.set_read_timeout(Some(Duration::from_secs(60)))
            .expect("timeout");
        let mut buf = vec![0u8; 700_000];
        let (mut n, mut h, mut size) = (0usize, FNV0, seed as usize);
        loop {
            size = (size * 104_729 + 977) % buf.len() + 1;
            let k = r.read(&mut buf[..size]).expect("read");
            if k == 0 {
                return (n, h);
            }
            n += k;
            h = fnv(h, &buf[..k]);
        }
    }
    // Each side writes on the stream and reads, at the same time, on a duplicate of its
    // descriptor: a stream is a plain Unix socket.
    let both_ways = |st: Stream, out_seed: u64, in_seed: u64| {
        use std::os::fd::AsFd;
        let rd =
            std::os::unix::net::UnixStream::from(st.as_fd().try_clone_to_owned().expect("dup"));
        let w = std::thread::spawn(move || feed(st, out_seed));
        let r = std::thread::spawn(move || drain(rd, in_seed));
        (w, r)
    };
    let acceptor = std::thread::spawn(move || {
        (0..STREAMS)
            .map(|_| l.accept().expect("accept").0)
            .collect::<Vec<Stream>>()
    });
    let clients: Vec<Stream> = (0..STREAMS)
        .map(|_| Stream::connect_with(&s1, SockAddr::new(2, 7100)).expect("connect"))
        .collect();
    let servers = acceptor.join().expect("acceptor");
    // Connects complete in order, and accepts take them in order: stream i is client i.
    let mut runs = Vec::new();
    for (i, (c, srv)) in clients.into_iter().zip(servers).enumerate() {
        let i = i as u64;
        runs.push((
            i,
            both_ways(c, 1 + i, 100 + i),
            both_ways(srv, 100 + i, 1 + i),
        ));
    }
    for (i, (cw, cr), (sw, sr)) in runs {
        let (up, down) = (
            cw.join().expect("client writer"),
            sw.join().expect("server writer"),
        );
        assert_eq!(
            sr.join().expect("server reader"),
            (EACH, up),
            "stream {i}: 1 -> 2"
        );
        assert_eq!(
            cr.join().expect("client reader"),
            (EACH, down),
            "stream {i}: 2 -> 1"
        );
    }
}

#[test]
fn a_thousand_concurrent_streams_through_one_daemon_pair() {
    const N: usize = 1000;
    let limit = raise_fd_limit();
    assert!(
        limit > 3 * N as u64,
        "descriptor hard limit {limit} too low for the test"
    );
    let s = Stack::start(&[1, 2]);
    let (s1, s2) = (s.sock(1), s.sock(2));
    let mut l = Listener::bind_with(&s2, 8000).expect("listen");
    let acceptor = std::thread::spawn(move || {
        (0..N)
            .map(|_| l.accept().expect("accept").0)
            .collect::<Vec<Stream>>()
    });
    let mut clients: Vec<Stream> = (0..N)
        .map(|_| Stream::connect_with(&s1, SockAddr::new(2, 8000)).expect("connect"))
        .collect();
    let mut servers = acceptor.join().expect("acceptor");
    // All open at once, on a handful of rings: one listening ring, one partner ring.
    let (st1, st2) = (s.status(1), s.status(2));
    assert_eq!(st1["streams"], N.to_string());
    assert_eq!(st2["streams"], N.to_string());
    assert_eq!(st1["rings"], "1", "{st1:?}");
    assert_eq!(st2["rings"], "1", "{st2:?}");
    for (i, c) in clients.iter_mut().enumerate() {
        c.write_all(format!("stream {i:04} says hello\n").as_bytes())
            .expect("write");
        c.shutdown(std::net::Shutdown::Write).expect("shutdown");
    }
    let mut seen = HashSet::new();
    for srv in &mut servers {
        let mut text = String::new();
        srv.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        srv.read_to_string(&mut text)
            .expect("read to the orderly end");
        let i: usize = text
            .strip_prefix("stream ")
            .and_then(|t| t.get(..4))
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("bad text {text:?}"));
        assert_eq!(text, format!("stream {i:04} says hello\n"));
        assert!(seen.insert(i), "stream {i} delivered twice");
        srv.write_all(format!("ack {i}").as_bytes()).expect("reply");
    }
    assert_eq!(seen.len(), N);
    drop(servers);
    for c in &mut clients {
        let mut reply = String::new();
        c.read_to_string(&mut reply)
            .expect("reply then end of file");
        assert!(reply.starts_with("ack "), "{reply:?}");
    }
    drop(clients);
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.status(1)["streams"] != "0" || s.status(2)["streams"] != "0" {
        assert!(Instant::now() < deadline, "streams not released");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn socat_is_a_stream_client_and_acceptor() {
    let socat = std::process::Command::new("socat").arg("-V").output();
    assert!(
        socat.is_ok_and(|o| o.status.success()),
        "socat is required (apt-get install socat; scripts/test installs it)"
    );
    let s = Stack::start(&[1, 2]);
    // socat connects; v4v-cli listens.
    let mut server = s.spawn(2, &["listen", "7100", "--once"], Stdio::piped());
    server
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"reply from the server\n")
        .expect("server stdin");
    s.wait_port(2, 7100, "listen");
    let mut client = std::process::Command::new("socat")
        .args([
            "-t",
            "10",
            "-",
            &format!("UNIX-CONNECT:{}", s.sock(1).display()),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("socat");
    client
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"CONNECT 2:7100\nhello through socat\n")
        .expect("socat stdin");
    let o = wait_limited(client, Duration::from_secs(20));
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8(o.stdout).expect("utf8");
    let (reply, data) = out.split_once('\n').expect("a reply line");
    let f: Vec<&str> = reply.split(' ').collect();
    assert!(f.len() == 3 && f[0] == "OK", "{reply:?}");
    assert!(
        f[1].parse::<u32>().is_ok() && f[2].parse::<u64>().is_ok(),
        "{reply:?}"
    );
    assert_eq!(data, "reply from the server\n");
    let o = wait_limited(server, Duration::from_secs(20));
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(o.stdout, b"hello through socat\n");

    // socat accepts; v4v-cli connects.
    let mut acceptor = std::process::Command::new("socat")
        .args([
            "-t",
            "10",
            "-",
            &format!("UNIX-CONNECT:{}", s.sock(2).display()),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("socat");
    let mut a_in = acceptor.stdin.take().expect("stdin");
    a_in.write_all(b"ACCEPT 7200\n").expect("socat stdin");
    s.wait_port(2, 7200, "listen");
    let mut client = s.spawn(1, &["connect", "2:7200"], Stdio::piped());
    client
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"to the socat acceptor\n")
        .expect("client stdin");
    a_in.write_all(b"from the socat acceptor\n")
        .expect("socat stdin");
    drop(a_in);
    let o = wait_limited(client, Duration::from_secs(20));
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(o.stdout, b"from the socat acceptor\n");
    let o = wait_limited(acceptor, Duration::from_secs(20));
    let out = String::from_utf8(o.stdout).expect("utf8");
    assert!(out.starts_with("OK 1:"), "{out:?}");
    assert!(out.ends_with("\nto the socat acceptor\n"), "{out:?}");
}

#[test]
fn refused_and_unreachable_fail_at_once_with_their_exit_codes() {
    let s = Stack::start(&[1, 2]);
    let t = Instant::now();
    // A port nobody listens on, in an existing domain.
    let o = s.run(1, &["connect", "2:9999"]);
    assert_eq!(code(&o), 4, "{}", stderr(&o));
    assert!(stderr(&o).contains("refused"), "{}", stderr(&o));
    // A domain that does not exist.
    let o = s.run(1, &["connect", "7:1"]);
    assert_eq!(code(&o), 4, "{}", stderr(&o));
    let o = s.run(1, &["send", "7:1", "x"]);
    assert_eq!(code(&o), 4, "{}", stderr(&o));
    // The listening port exists on the ring but nobody accepts streams there: a datagram
    // port answers a SYN with RST.
    let _d = Datagram::bind_with(&s.sock(2), 9000, None).expect("bind");
    let o = s.run(1, &["connect", "2:9000"]);
    assert_eq!(code(&o), 4, "{}", stderr(&o));
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "refusals were not immediate"
    );
    // No daemon.
    let mut c = std::process::Command::new(common::cli_bin());
    c.args(["--socket", "/nonexistent/v4vd.sock", "status"]);
    let o = run_limited(c.stdin(Stdio::null()), Duration::from_secs(10));
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    assert!(stderr(&o).contains("unreachable"), "{}", stderr(&o));
    // Bad usage.
    for args in [
        &["connect", "2"][..],
        &["send"],
        &["recv", "x"],
        &["frobnicate"],
    ] {
        let o = s.run(1, args);
        assert_eq!(code(&o), 2, "{args:?}: {}", stderr(&o));
    }
    // Too big for the destination ring (256 KiB by default).
    let _big = Datagram::bind_with(&s.sock(2), 9001, None).expect("bind");
    let mut snd = s.spawn(1, &["send", "2:9001"], Stdio::piped());
    snd.stdin
        .take()
        .expect("stdin")
        .write_all(&vec![7u8; 512 * 1024])
        .expect("write");
    let o = wait_limited(snd, Duration::from_secs(20));
    assert_eq!(code(&o), 8, "{}", stderr(&o));
    // Nothing arrives in time.
    let o = s.run(1, &["recv", "9100", "--count", "1", "--timeout", "0.3"]);
    assert_eq!(code(&o), 5, "{}", stderr(&o));
}

#[test]
fn a_peer_daemon_killed_mid_stream_gives_clear_errors_and_nothing_hangs() {
    let mut s = Stack::start(&[1, 2]);
    let server = s
        .cli(2, &["listen", "7300", "--once"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("listen");
    s.wait_port(2, 7300, "listen");
    let mut client = s
        .cli(1, &["connect", "2:7300"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("connect");
    let mut input = client.stdin.take().expect("stdin");
    let feeder = std::thread::spawn(move || {
        let buf = vec![1u8; 1 << 16];
        // Until the client exits (broken pipe).
        while input.write_all(&buf).is_ok() {}
    });
    // Let data flow, then kill domain 2's daemon.
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.status(1)["bytes_out"].parse::<u64>().unwrap_or(0) < 4 << 20 {
        assert!(Instant::now() < deadline, "no data flowed");
        std::thread::sleep(Duration::from_millis(10));
    }
    s.kill_daemon(2);
    let o = wait_limited(client, Duration::from_secs(10));
    assert_eq!(code(&o), 7, "{}", stderr(&o));
    assert!(stderr(&o).contains("gone"), "{}", stderr(&o));
    let o = wait_limited(server, Duration::from_secs(10));
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    assert!(stderr(&o).contains("went away"), "{}", stderr(&o));
    feeder.join().expect("feeder");
    // Domain 1's daemon is fine and forgot the stream and its partner ring.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let st = s.status(1);
        if st["streams"] == "0" && st["rings"] == "0" {
            break;
        }
        assert!(Instant::now() < deadline, "{st:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn an_aborted_stream_is_a_reset_and_an_orderly_close_is_end_of_file() {
    let s = Stack::start(&[1, 2]);
    let mut l = Listener::bind_with(&s.sock(2), 7400).expect("listen");
    // Orderly: the connector's stdin ends.
    let client = s.spawn(1, &["connect", "2:7400"], Stdio::null());
    let (mut srv, _) = l.accept().expect("accept");
    let mut rest = Vec::new();
    srv.read_to_end(&mut rest).expect("orderly end of file");
    drop(srv);
    let o = wait_limited(client, Duration::from_secs(10));
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    // Abort: the listener side resets; v4v-cli connect reports it.
    let mut client = s.spawn(1, &["connect", "2:7400"], Stdio::piped());
    // stdin stays open: only the reset can end the session.
    let _stdin = client.stdin.take();
    let (srv, _) = l.accept().expect("accept");
    srv.abort().expect("abort");
    let o = wait_limited(client, Duration::from_secs(10));
    assert_eq!(code(&o), 7, "{}", stderr(&o));
    assert!(stderr(&o).contains("reset"), "{}", stderr(&o));
}

#[test]
fn a_receiver_that_stops_reading_stalls_its_sender_and_memory_stays_flat() {
    let s = Stack::start(&[1, 2]);
    let pids = [s.daemon_pid(1), s.daemon_pid(2), s.sim_pid()];
    // Streams: the acceptor never reads.
    let mut l = Listener::bind_with(&s.sock(2), 7500).expect("listen");
    let mut c = Stream::connect_with(&s.sock(1), SockAddr::new(2, 7500)).expect("connect");
    let (_stalled, _) = l.accept().expect("accept");
    c.set_nonblocking(true).expect("nonblocking");
    let chunk = vec![9u8; 64 * 1024];
    let push = |c: &mut Stream, for_: Duration| -> usize {
        let end = Instant::now() + for_;
        let mut n = 0;
        while Instant::now() < end {
            match c.write(&chunk) {
                Ok(k) => n += k,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Err(e) => panic!("write: {e}"),
            }
        }
        n
    };
    let first = push(&mut c, Duration::from_millis(1500));
    // Bounded by the window, the ring and the socket buffers: a few MiB at most.
    assert!(
        first < 8 << 20,
        "{first} bytes accepted from a stalled stream"
    );
    let before: Vec<u64> = pids.iter().map(|&p| private_rss_kib(p)).collect();
    let more = push(&mut c, Duration::from_millis(1500));
    assert_eq!(more, 0, "the stalled stream kept taking data");
    // Datagrams: the bound port's client never reads.
    let _deaf = Datagram::bind_with(&s.sock(2), 7600, None).expect("bind");
    let mut d = Datagram::bind_with(&s.sock(1), 0, None).expect("bind");
    d.set_nonblocking(true).expect("nonblocking");
    // Send until told to wait, let the daemons settle, again: until a whole round is refused.
    let mut sent = 0usize;
    let mut settled = false;
    for _round in 0..20 {
        let mut this_round = 0usize;
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            match d.send_to(&chunk[..4096], SockAddr::new(2, 7600)) {
                Ok(k) => this_round += k,
                Err(v4v::client::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    break;
                }
                Err(e) => panic!("send: {e}"),
            }
            assert!(Instant::now() < end, "never told to wait");
        }
        sent += this_round;
        if this_round == 0 {
            settled = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        settled,
        "the deaf port kept taking datagrams ({sent} bytes)"
    );
    assert!(
        sent < 8 << 20,
        "{sent} bytes of datagrams buffered for a deaf client"
    );
    for _ in 0..200 {
        assert!(d.send_to(&chunk[..4096], SockAddr::new(2, 7600)).is_err());
    }
    let after: Vec<u64> = pids.iter().map(|&p| private_rss_kib(p)).collect();
    for ((b, a), who) in before
        .iter()
        .zip(&after)
        .zip(["v4vd 1", "v4vd 2", "v4v-sim"])
    {
        // The datagram test above adds up to one ring and a client buffer (~1.3 MiB), and the
        // sender's 1 MiB read ahead of its parked datagram (the sender's shared-memory channel,
        // mapped by its daemon, is the sender's memory: not counted).
        assert!(
            *a < b + 3 * 1024,
            "{who}: resident memory grew from {b} KiB to {a} KiB while stalled"
        );
    }
}

#[test]
fn sigterm_stops_a_daemon_cleanly_and_its_peers_see_resets() {
    let mut s = Stack::start(&[1, 2]);
    let mut l = Listener::bind_with(&s.sock(2), 7700).expect("listen");
    let mut c = Stream::connect_with(&s.sock(1), SockAddr::new(2, 7700)).expect("connect");
    let (_srv, _) = l.accept().expect("accept");
    let st = s
        .signal_daemon(2, libc::SIGTERM)
        .expect("v4vd exits on SIGTERM");
    assert!(st.success(), "{st:?}");
    assert!(!s.sock(2).exists(), "socket left behind");
    c.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut b = Vec::new();
    let e = c.read_to_end(&mut b).expect_err("a reset, not end of file");
    assert!(
        matches!(
            e.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::HostUnreachable
        ),
        "{e:?}"
    );
    drop(l);
}

/// An example program, built by `cargo test --workspace` (or `cargo build --examples`).
fn example(name: &str) -> std::path::PathBuf {
    let p = std::path::Path::new(env!("CARGO_BIN_EXE_v4v-cli"))
        .with_file_name("examples")
        .join(name);
    assert!(
        p.exists(),
        "{} is not built: run `cargo build -p v4v-examples --examples`",
        p.display()
    );
    p
}

struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_examples_serve_what_they_promise() {
    let s = Stack::start(&[1, 2]);
    let _echo = Killed(
        std::process::Command::new(example("stream_echo"))
            .arg("7800")
            .env("V4V_SOCKET", s.sock(2))
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("stream_echo"),
    );
    let _upper = Killed(
        std::process::Command::new(example("dgram_mio"))
            .arg("7801")
            .env("V4V_SOCKET", s.sock(2))
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dgram_mio"),
    );
    s.wait_port(2, 7800, "listen");
    s.wait_port(2, 7801, "dgram");
    let mut c = s.spawn(1, &["connect", "2:7800"], Stdio::piped());
    c.stdin
        .take()
        .expect("stdin")
        .write_all(b"echo me\n")
        .expect("write");
    let o = wait_limited(c, Duration::from_secs(20));
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(o.stdout, b"echo me\n");
    let mut d = Datagram::bind_with(&s.sock(1), 0, None).expect("bind");
    d.send_to(b"shout", SockAddr::new(2, 7801)).expect("send");
    let (reply, from) = d
        .recv_timeout(Some(Duration::from_secs(20)))
        .expect("the reply");
    assert_eq!(reply, b"SHOUT");
    assert_eq!(from, SockAddr::new(2, 7801));
}

#[test]
fn a_user_cannot_take_or_inspect_another_users_ports_and_streams() {
    let s = Stack::start(&[1, 2]);
    let as_nobody = |args: &[&str]| {
        run_limited(
            s.cli_as_nobody(2, args).stdin(Stdio::null()),
            Duration::from_secs(20),
        )
    };
    // root's listening port and datagram port.
    let mut l = Listener::bind_with(&s.sock(2), 7950).expect("listen");
    let _d = Datagram::bind_with(&s.sock(2), 7951, None).expect("bind");
    for (args, what) in [
        (&["listen", "7950", "--once"][..], "another user"),
        (&["recv", "7951", "--count", "1"], "in use"),
        (&["recv", "7950", "--count", "1"], "in use"),
    ] {
        let o = as_nobody(args);
        assert_eq!(code(&o), 1, "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(what), "{args:?}: {}", stderr(&o));
    }
    // The connection still reaches root's listener, not anyone else.
    let mut c = Stream::connect_with(&s.sock(1), SockAddr::new(2, 7950)).expect("connect");
    let (srv, _) = l.accept().expect("accept");
    c.write_all(b"for root").expect("write");
    // Another user can neither ask how root's stream is doing nor reset it.
    let id = srv.id();
    let raw = |line: &str| {
        let mut c = common::as_nobody(std::path::Path::new("socat"));
        c.arg("-")
            .arg(format!("UNIX-CONNECT:{}", s.sock(2).display()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().expect("socat");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(line.as_bytes())
            .expect("write");
        String::from_utf8_lossy(&wait_limited(child, Duration::from_secs(20)).stdout).to_string()
    };
    assert!(raw(&format!("CLOSED {id}\n")).starts_with("ERR ENOENT"));
    assert!(raw(&format!("RESET {id}\n")).starts_with("ERR ENOENT"));
    let mut srv = srv;
    let mut b = [0u8; 8];
    srv.read_exact(&mut b).expect("the stream is intact");
    assert_eq!(&b, b"for root");
}

#[test]
fn the_shipped_config_file_is_accepted() {
    let mut s = Stack::start(&[]);
    let conf = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd/v4vd.conf");
    // Command-line options win over the file (its hypervisor and socket are for a real system).
    s.start_daemon(3, &["--config", conf.to_str().expect("utf8 path")]);
    let st = s.status(3);
    assert_eq!(st["domid"], "3");
}

#[test]
fn one_user_cannot_take_every_connection() {
    let mut s = Stack::start(&[]);
    s.start_daemon(4, &["--max-clients-per-user", "3"]);
    let nobody = |args: &[&str]| s.cli_as_nobody(4, args);
    // Three receivers hold three connections.
    let held: Vec<Killed> = (0..3)
        .map(|i| {
            Killed(
                nobody(&["recv", &format!("{}", 9300 + i)])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("recv"),
            )
        })
        .collect();
    for i in 0..3 {
        s.wait_port(4, 9300 + i, "dgram");
    }
    let o = run_limited(
        nobody(&["status"]).stdin(Stdio::null()),
        Duration::from_secs(20),
    );
    assert_ne!(code(&o), 0);
    assert!(
        stderr(&o).contains("the most one user may"),
        "{}",
        stderr(&o)
    );
    // Other users (root here) are not affected, and the user gets room back as it closes.
    assert!(s.status(4)["clients"].parse::<u32>().expect("clients") >= 3);
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let o = run_limited(
            nobody(&["status"]).stdin(Stdio::null()),
            Duration::from_secs(20),
        );
        if code(&o) == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{}", stderr(&o));
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A stream's read waits as its own methods set it, each change taking effect at once: blocking
/// until data comes, `WouldBlock` at once in non-blocking mode, `WouldBlock` after the read
/// timeout; and a descriptor handed over already non-blocking (`Stream::from_fd`) reads as
/// non-blocking.
#[test]
fn a_stream_s_reads_wait_as_its_mode_and_timeout_say() {
    use std::io::ErrorKind::WouldBlock;
    use std::os::fd::OwnedFd;
    let s = Stack::start(&[1, 2]);
    let mut l = Listener::bind_with(&s.sock(2), 7990).expect("listen");
    let mut c = Stream::connect_with(&s.sock(1), SockAddr::new(2, 7990)).expect("connect");
    let (mut srv, _) = l.accept().expect("accept");
    let mut b = [0u8; 16];
    let timed = |c: &mut Stream, b: &mut [u8]| {
        let t = Instant::now();
        (c.read(b).map_err(|e| e.kind()), t.elapsed())
    };
    c.set_nonblocking(true).expect("nonblocking");
    let (r, took) = timed(&mut c, &mut b);
    assert_eq!(r, Err(WouldBlock));
    assert!(took < Duration::from_millis(100), "{took:?}");
    c.set_nonblocking(false).expect("blocking");
    c.set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    let (r, took) = timed(&mut c, &mut b);
    assert_eq!(r, Err(WouldBlock));
    assert!(took >= Duration::from_millis(290), "{took:?}");
    c.set_read_timeout(None).expect("no timeout");
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(400));
        srv.write_all(b"late").expect("write");
        srv
    });
    let (r, took) = timed(&mut c, &mut b);
    assert_eq!(r, Ok(4), "a blocking read waits for the data");
    assert!(took >= Duration::from_millis(350), "{took:?}");
    let srv = writer.join().expect("writer");
    // Handed over non-blocking: the new owner's reads do not wait.
    let (id, peer, port) = (c.id(), c.peer_addr(), c.local_port());
    c.set_nonblocking(true).expect("nonblocking");
    let fd = OwnedFd::from(c);
    let mut c = Stream::from_fd(fd, &s.sock(1), id, peer, port);
    let (r, took) = timed(&mut c, &mut b);
    assert_eq!(r, Err(WouldBlock));
    assert!(took < Duration::from_millis(100), "{took:?}");
    drop(srv);
}
