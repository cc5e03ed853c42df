// SPDX-License-Identifier: MIT OR Apache-2.0
//! `v4v-cli forward` as real processes on the simulator stack: TCP clients and servers on
//! loopback, two forwards between them (a TCP listener in domain 1 forwarding to V4V, a V4V
//! listener in domain 0 forwarding to TCP), curl, ssh.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, channel};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use common::{FNV0, Stack, fill_pattern, fnv, raise_fd_limit, rss_kib, run_limited, wait_limited};

/// A running `v4v-cli forward`, its log lines collected; killed on drop.
struct Fwd {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    /// What it said it listens on (`tcp-listen:127.0.0.1:PORT`, `v4v-listen:PORT`, ...).
    listening: String,
}

impl Fwd {
    fn start(s: &Stack, dom: u16, args: &[&str]) -> Fwd {
        let mut a = vec!["forward"];
        a.extend_from_slice(args);
        let mut child = s
            .cli(dom, &a)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn forward");
        let err = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = channel();
        let l2 = log.clone();
        // Always read the log: a full stderr pipe would stall the forward.
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("v4v-cli forward: listening on ") {
                    let _ = tx.send(rest.split(',').next().unwrap_or("").to_string());
                }
                l2.lock().expect("log").push(line);
            }
        });
        let listening = match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                let out = wait_limited(child, Duration::from_secs(5));
                panic!(
                    "forward {args:?} never listened ({}): {:?}",
                    out.status,
                    log.lock().expect("log")
                );
            }
        };
        Fwd {
            child,
            log,
            listening,
        }
    }

    fn tcp_port(&self) -> u16 {
        self.listening
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("not a TCP listener: {}", self.listening))
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits (at most 10 s) for a log line containing all of `parts`.
    fn wait_log(&self, parts: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(l) = self
                .log
                .lock()
                .expect("log")
                .iter()
                .find(|l| parts.iter().all(|p| l.contains(p)))
            {
                return l.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no log line with {parts:?}: {:?}",
                self.log.lock().expect("log")
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn lines(&self) -> Vec<String> {
        self.log.lock().expect("log").clone()
    }
}

impl Drop for Fwd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP server on loopback: every accepted connection comes out of the receiver.
fn tcp_server() -> (u16, Receiver<TcpStream>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for c in l.incoming() {
            if c.map(|c| tx.send(c)).is_err() {
                return;
            }
        }
    });
    (port, rx)
}

/// The usual path: a TCP client in domain 1 reaches the TCP server `srv` next to domain 0
/// through `tcp-listen (dom 1) -> v4v:0:vport -> v4v-listen (dom 0) -> tcp:srv`.
/// Returns (client-side forward, server-side forward).
fn pair(s: &Stack, srv: u16, vport: u32, client_extra: &[&str]) -> (Fwd, Fwd) {
    let b = Fwd::start(
        s,
        0,
        &[
            &format!("v4v-listen:{vport}"),
            &format!("tcp:127.0.0.1:{srv}"),
        ],
    );
    s.wait_port(0, vport, "listen");
    let mut args = vec![
        "tcp-listen:127.0.0.1:0".to_string(),
        format!("v4v:0:{vport}"),
    ];
    args.extend(client_extra.iter().map(|a| a.to_string()));
    let a = Fwd::start(s, 1, &args.iter().map(String::as_str).collect::<Vec<_>>());
    (a, b)
}

fn connect(port: u16) -> TcpStream {
    let c = TcpStream::connect(("127.0.0.1", port)).expect("connect to the forward");
    c.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    c
}

fn recv_conn(rx: &Receiver<TcpStream>) -> TcpStream {
    let c = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the server got no connection");
    c.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    c
}

/// Closes a TCP socket abortively: the peer reads a reset.
fn rst(c: TcpStream) {
    let lin = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt reads a valid linger of the size given, on a socket we own.
    let r = unsafe {
        libc::setsockopt(
            c.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&lin as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0, "SO_LINGER");
}

fn is_reset(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::ConnectionReset
}

/// A minimal HTTP/1.1 server: `/` is a short text, `/big` 3 MiB of pattern.
fn http_server(big: Arc<Vec<u8>>) -> u16 {
    let (port, rx) = tcp_server();
    std::thread::spawn(move || {
        for mut c in rx {
            let big = big.clone();
            std::thread::spawn(move || {
                let mut req = Vec::new();
                let mut b = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match c.read(&mut b) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&b[..n]),
                    }
                }
                let line = String::from_utf8_lossy(&req).to_string();
                let body: &[u8] = if line.starts_with("GET /big ") {
                    &big
                } else {
                    b"hello from dom0\n"
                };
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = c
                    .write_all(head.as_bytes())
                    .and_then(|()| c.write_all(body));
            });
        }
    });
    port
}

#[test]
fn curl_reaches_a_web_server_through_two_forwards() {
    let curl = std::process::Command::new("curl").arg("--version").output();
    assert!(
        curl.is_ok_and(|o| o.status.success()),
        "curl is not installed (scripts/test installs it)"
    );
    let mut big = vec![0u8; 3 << 20];
    fill_pattern(&mut big, &mut 42);
    let big = Arc::new(big);
    let web = http_server(big.clone());
    let s = Stack::start(&[0, 1]);
    let (a, b) = pair(&s, web, 80, &[]);
    let url = format!("http://127.0.0.1:{}/", a.tcp_port());
    let o = run_limited(
        std::process::Command::new("curl").args(["-sS", "--max-time", "20", &url]),
        Duration::from_secs(30),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(o.stdout, b"hello from dom0\n");
    // To a file: a 3 MiB stdout would fill the pipe nobody reads before curl exits.
    let file = s.dir.join("big");
    let o = run_limited(
        std::process::Command::new("curl")
            .args(["-sS", "--max-time", "20", "-o"])
            .arg(&file)
            .arg(format!("{url}big")),
        Duration::from_secs(30),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let got = std::fs::read(&file).expect("curl's output");
    assert_eq!(got.len(), big.len());
    assert!(got == *big, "the 3 MiB body was corrupted");
    // One line per connection, naming both ends.
    let la = a.wait_log(&["tcp:127.0.0.1:", "-> v4v:0:80: closed", "target sent 3145"]);
    let lb = b.wait_log(&[
        "v4v:1:",
        &format!("-> tcp:127.0.0.1:{web}: closed"),
        "target sent 3145",
    ]);
    assert!(la.contains("client sent"), "{la}");
    assert!(lb.contains("client sent"), "{lb}");
    assert_eq!(
        a.lines().iter().filter(|l| l.contains(": closed")).count(),
        2,
        "{:?}",
        a.lines()
    );
}

#[test]
fn a_hundred_concurrent_forwarded_connections_keep_every_byte() {
    const N: usize = 100;
    const LEN: usize = 256 * 1024;
    raise_fd_limit();
    let (srv, rx) = tcp_server();
    let open = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    {
        let (open, most) = (open.clone(), most.clone());
        // An echo server, one thread per connection, counting how many are open at once.
        std::thread::spawn(move || {
            for mut c in rx {
                let (open, most) = (open.clone(), most.clone());
                std::thread::spawn(move || {
                    let now = open.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    let mut w = c.try_clone().expect("clone");
                    let _ = std::io::copy(&mut c, &mut w);
                    let _ = w.shutdown(Shutdown::Write);
                    open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
    }
    let s = Stack::start(&[0, 1]);
    let (a, _b) = pair(&s, srv, 81, &[]);
    let port = a.tcp_port();
    let all_open = Arc::new(Barrier::new(N));
    let clients: Vec<_> = (0..N)
        .map(|i| {
            let all_open = all_open.clone();
            std::thread::spawn(move || {
                let mut c = connect(port);
                // One byte there and back: the whole path is up.
                c.write_all(b"x").expect("write");
                let mut one = [0u8; 1];
                c.read_exact(&mut one).expect("echo of the first byte");
                all_open.wait();
                let mut data = vec![0u8; LEN];
                fill_pattern(&mut data, &mut (i as u64 + 1));
                let sent = fnv(fnv(FNV0, b"x"), &data);
                let mut w = c.try_clone().expect("clone");
                let writer = std::thread::spawn(move || {
                    w.write_all(&data).expect("write");
                    w.shutdown(Shutdown::Write).expect("shutdown");
                });
                let mut back = Vec::new();
                let r = c.read_to_end(&mut back);
                writer.join().expect("writer");
                r.map_err(|e| format!("connection {i}: {e}"))?;
                if back.len() != LEN || fnv(fnv(FNV0, &one), &back) != sent {
                    return Err(format!("connection {i}: {} bytes, corrupted", back.len()));
                }
                Ok(())
            })
        })
        .collect();
    let errors: Vec<String> = clients
        .into_iter()
        .filter_map(|c| c.join().expect("client").err())
        .collect();
    let bad = |l: &&String| !l.contains(": closed");
    assert!(
        errors.is_empty(),
        "{errors:?}\nclient side: {:?}\nserver side: {:?}",
        a.lines().iter().filter(bad).collect::<Vec<_>>(),
        _b.lines().iter().filter(bad).collect::<Vec<_>>()
    );
    assert_eq!(
        most.load(Ordering::SeqCst),
        N,
        "not all connections were open at once"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.lines().iter().filter(|l| l.contains(": closed")).count() < N {
        assert!(Instant::now() < deadline, "{:?}", a.lines());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn half_close_passes_both_ways() {
    let (srv, rx) = tcp_server();
    let s = Stack::start(&[0, 1]);
    let (a, _b) = pair(&s, srv, 82, &[]);
    // The client finishes first; the server answers after reading its end.
    let mut c = connect(a.tcp_port());
    c.write_all(b"request").expect("write");
    c.shutdown(Shutdown::Write).expect("shutdown");
    let mut sc = recv_conn(&rx);
    let mut got = Vec::new();
    sc.read_to_end(&mut got)
        .expect("the server reads the client's FIN");
    assert_eq!(got, b"request");
    sc.write_all(b"answer after your end")
        .expect("write after FIN");
    drop(sc);
    let mut back = Vec::new();
    c.read_to_end(&mut back).expect("read");
    assert_eq!(back, b"answer after your end");
    // The server finishes first; the client still sends, then ends.
    let mut c = connect(a.tcp_port());
    let mut sc = recv_conn(&rx);
    sc.write_all(b"banner").expect("write");
    sc.shutdown(Shutdown::Write).expect("shutdown");
    let mut got = Vec::new();
    c.read_to_end(&mut got)
        .expect("the client reads the server's FIN");
    assert_eq!(got, b"banner");
    c.write_all(b"late words").expect("write after FIN");
    c.shutdown(Shutdown::Write).expect("shutdown");
    let mut back = Vec::new();
    sc.read_to_end(&mut back).expect("read");
    assert_eq!(back, b"late words");
    a.wait_log(&["closed", "client sent 10", "target sent 6"]);
}

#[test]
fn an_abort_becomes_a_reset_both_ways() {
    let (srv, rx) = tcp_server();
    let s = Stack::start(&[0, 1]);
    let (a, b) = pair(&s, srv, 83, &[]);
    // The client aborts: the server reads a reset, not end of file.
    let mut c = connect(a.tcp_port());
    c.write_all(b"partial").expect("write");
    let mut sc = recv_conn(&rx);
    let mut buf = [0u8; 7];
    sc.read_exact(&mut buf).expect("read");
    rst(c);
    let t0 = Instant::now();
    let mut rest = Vec::new();
    let e = sc
        .read_to_end(&mut rest)
        .expect_err("the server read an orderly end after the client's RST");
    assert!(is_reset(&e), "{e}");
    assert!(t0.elapsed() < Duration::from_secs(5));
    a.wait_log(&["client failed", "reset"]);
    b.wait_log(&["client failed", "reset"]);
    // The server aborts: the client reads a reset.
    let mut c = connect(a.tcp_port());
    let sc = recv_conn(&rx);
    rst(sc);
    let mut rest = Vec::new();
    let e = c
        .read_to_end(&mut rest)
        .expect_err("the client read an orderly end after the server's RST");
    assert!(is_reset(&e), "{e}");
}

#[test]
fn a_refused_target_closes_the_accepted_connection_at_once() {
    let s = Stack::start(&[0, 1]);
    // Nobody listens on V4V port 84, nor on this TCP port.
    let dead = TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead_port = dead.local_addr().expect("addr").port();
    drop(dead);
    let to_v4v = Fwd::start(&s, 1, &["tcp-listen:127.0.0.1:0", "v4v:0:84"]);
    let to_tcp = Fwd::start(
        &s,
        1,
        &[
            "tcp-listen:127.0.0.1:0",
            &format!("tcp:127.0.0.1:{dead_port}"),
        ],
    );
    for f in [&to_v4v, &to_tcp] {
        let mut c = connect(f.tcp_port());
        let t0 = Instant::now();
        let mut buf = Vec::new();
        let r = c.read_to_end(&mut buf);
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "took {:?}",
            t0.elapsed()
        );
        assert!(
            r.as_ref().is_err_and(is_reset),
            "{r:?}: a refused target must read as a failure"
        );
        f.wait_log(&["tcp:127.0.0.1:", "refused", "connection reset"]);
    }
    // A V4V client of a forward whose TCP target refuses reads a reset (exit status 7).
    let _v = Fwd::start(
        &s,
        0,
        &["v4v-listen:85", &format!("tcp:127.0.0.1:{dead_port}")],
    );
    s.wait_port(0, 85, "listen");
    let o = s.run(1, &["connect", "0:85"]);
    assert_eq!(
        o.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn max_connections_leaves_extra_connections_waiting_in_the_backlog() {
    let (srv, rx) = tcp_server();
    let s = Stack::start(&[0, 1]);
    let (a, _b) = pair(&s, srv, 86, &["--max-connections", "2"]);
    let mut clients: Vec<TcpStream> = (0..3).map(|_| connect(a.tcp_port())).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        c.write_all(format!("client {i}").as_bytes())
            .expect("write");
    }
    let mut first = recv_conn(&rx);
    let _second = recv_conn(&rx);
    assert!(
        rx.recv_timeout(Duration::from_millis(1500)).is_err(),
        "a third connection was forwarded past --max-connections 2"
    );
    // One ends: the waiting one is served, its early bytes intact.
    let mut buf = [0u8; 8];
    first.read_exact(&mut buf).expect("read");
    let which = String::from_utf8_lossy(&buf).to_string();
    let i: usize = which[7..].parse().expect("client number");
    clients[i].shutdown(Shutdown::Write).expect("shutdown");
    drop(first);
    let mut third = recv_conn(&rx);
    let mut buf = [0u8; 8];
    third
        .read_exact(&mut buf)
        .expect("the waiting client's bytes");
    assert!(buf.starts_with(b"client "), "{buf:?}");
}

#[test]
fn a_slow_reader_stalls_only_its_own_connection() {
    let (srv, rx) = tcp_server();
    let s = Stack::start(&[0, 1]);
    let (a, b) = pair(&s, srv, 87, &[]);
    // The stalled one: its server never reads.
    let mut stalled = connect(a.tcp_port());
    let _deaf = recv_conn(&rx);
    stalled.set_nonblocking(true).expect("nonblocking");
    let chunk = vec![7u8; 64 * 1024];
    let mut pushed = 0usize;
    let end = Instant::now() + Duration::from_secs(2);
    while Instant::now() < end {
        match stalled.write(&chunk) {
            Ok(n) => pushed += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("{e}"),
        }
    }
    let rss = (rss_kib(a.pid()), rss_kib(b.pid()));
    // Meanwhile another connection moves 8 MiB freely.
    let mut c = connect(a.tcp_port());
    let mut sc = recv_conn(&rx);
    let t0 = Instant::now();
    let writer = std::thread::spawn(move || {
        let data = vec![1u8; 8 << 20];
        c.write_all(&data).expect("write");
        c.shutdown(Shutdown::Write).expect("shutdown");
    });
    let mut n = 0;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match sc.read(&mut buf).expect("read") {
            0 => break,
            k => n += k,
        }
    }
    writer.join().expect("writer");
    assert_eq!(n, 8 << 20);
    assert!(t0.elapsed() < Duration::from_secs(20));
    // The stalled connection took a bounded amount and the forwards did not grow with it.
    assert!(
        pushed < 32 << 20,
        "{pushed} bytes taken by a stalled connection"
    );
    let after = (rss_kib(a.pid()), rss_kib(b.pid()));
    assert!(
        after.0 < rss.0 + 2048 && after.1 < rss.1 + 2048,
        "{rss:?} -> {after:?}"
    );
}

/// Sets a socket buffer size (so the kernel's share of a stalled connection stays small).
fn set_buf(fd: i32, opt: i32, bytes: i32) {
    // SAFETY: setsockopt reads one int of the size given, on a socket we own.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&bytes as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
}

#[test]
fn a_thousand_forwarded_connections_in_bounded_memory() {
    const N: usize = 1000;
    let limit = raise_fd_limit();
    assert!(limit > 4 * N as u64, "descriptor limit {limit} too low");
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    set_buf(l.as_raw_fd(), libc::SO_RCVBUF, 16 * 1024);
    let srv = l.local_addr().expect("addr").port();
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for c in l.incoming() {
            if c.map(|c| tx.send(c)).is_err() {
                return;
            }
        }
    });
    let s = Stack::start(&[0, 1]);
    let (a, b) = pair(&s, srv, 88, &["--max-connections", "2000"]);
    let base = (rss_kib(a.pid()), rss_kib(b.pid()));
    // One after another: a burst of 1,000 connects would fill the V4V backlog (1,024).
    let mut clients = Vec::new();
    let mut servers = Vec::new();
    for i in 0..N {
        let c = connect(a.tcp_port());
        set_buf(c.as_raw_fd(), libc::SO_SNDBUF, 16 * 1024);
        clients.push(c);
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(sc) => servers.push(sc),
            Err(_) => panic!(
                "connection {i} never reached the server: {:?} {:?}",
                a.lines().iter().rev().take(3).collect::<Vec<_>>(),
                b.lines().iter().rev().take(3).collect::<Vec<_>>()
            ),
        }
    }
    let st0 = s.status(0);
    assert_eq!(st0["streams"], N.to_string(), "{st0:?}");
    let idle = (rss_kib(a.pid()), rss_kib(b.pid()));
    // One event loop: no thread (or process) per connection.
    assert_eq!((threads(a.pid()), threads(b.pid())), (1, 1));
    // Every connection pushes 256 KiB nobody reads yet: all of them stall with data in flight.
    for c in &mut clients {
        c.set_nonblocking(true).expect("nonblocking");
    }
    let chunk = vec![5u8; 256 * 1024];
    let mut left: Vec<usize> = vec![chunk.len(); N];
    let end = Instant::now() + Duration::from_secs(5);
    while Instant::now() < end && left.iter().any(|&l| l > 0) {
        for (c, l) in clients.iter_mut().zip(&mut left) {
            if *l > 0 {
                match c.write(&chunk[..*l]) {
                    Ok(n) => *l -= n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => panic!("{e}"),
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(500));
    let stalled = (rss_kib(a.pid()), rss_kib(b.pid()));
    let pushed: usize = left.iter().map(|l| chunk.len() - l).sum();
    eprintln!(
        "forward RSS (KiB, client side / server side): start {base:?}, {N} idle {idle:?}, \
         {N} stalled with {} KiB in flight {stalled:?}",
        pushed / 1024
    );
    // Each direction holds at most one 64 KiB read a slow writer has not taken.
    let bound = base.0.max(base.1) + (N as u64) * 64 + 16 * 1024;
    assert!(
        stalled.0 < bound && stalled.1 < bound,
        "{stalled:?} over {bound} KiB"
    );
    assert!(
        idle.0 < base.0 + 8 * 1024 && idle.1 < base.1 + 8 * 1024,
        "idle {idle:?}"
    );
    // Now every server reads everything: no byte was lost while stalled.
    for c in &mut clients {
        c.set_nonblocking(false).expect("blocking");
    }
    let want: Vec<usize> = left.iter().map(|l| chunk.len() - l).collect();
    for c in &mut clients {
        c.shutdown(Shutdown::Write).expect("shutdown");
    }
    let total: usize = want.iter().sum();
    let mut got_total = 0;
    for sc in &mut servers {
        let mut n = 0;
        let mut buf = [0u8; 64 * 1024];
        loop {
            match sc.read(&mut buf).expect("read") {
                0 => break,
                k => n += k,
            }
        }
        got_total += n;
    }
    assert_eq!(got_total, total, "bytes lost or invented");
}

#[test]
fn ssh_runs_through_connect_as_its_proxy_command() {
    let sshd = std::path::Path::new("/usr/sbin/sshd");
    assert!(
        sshd.exists() && which("ssh") && which("ssh-keygen"),
        "openssh-server and openssh-client are not installed (scripts/test installs them)"
    );
    let s = Stack::start(&[0, 1]);
    let dir = s.dir.join("ssh");
    std::fs::create_dir_all(&dir).expect("dir");
    let keygen = |name: &str| {
        let o = run_limited(
            std::process::Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(dir.join(name)),
            Duration::from_secs(20),
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    keygen("host");
    keygen("user");
    std::fs::copy(dir.join("user.pub"), dir.join("authorized_keys")).expect("authorized_keys");
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let config = format!(
        "ListenAddress 127.0.0.1:{port}\nHostKey {d}/host\nAuthorizedKeysFile {d}/authorized_keys\n\
         StrictModes no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n\
         PidFile {d}/sshd.pid\n",
        d = dir.display()
    );
    std::fs::write(dir.join("sshd_config"), config).expect("config");
    std::fs::create_dir_all("/run/sshd").expect("privilege separation directory");
    let mut sshd = std::process::Command::new(sshd)
        .args(["-D", "-e", "-f"])
        .arg(dir.join("sshd_config"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sshd");
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "sshd never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
    // dom0 forwards V4V port 22 to its sshd; the guest's ssh reaches it with connect.
    let _fwd = Fwd::start(&s, 0, &["v4v-listen:22", &format!("tcp:127.0.0.1:{port}")]);
    s.wait_port(0, 22, "listen");
    let proxy = format!(
        "ProxyCommand={} --socket {} connect 0:22",
        common::cli_bin().display(),
        s.sock(1).display()
    );
    let user = std::env::var("USER").unwrap_or_else(|_| "root".into());
    let o = run_limited(
        std::process::Command::new("ssh")
            .args(["-F", "/dev/null", "-o", &proxy, "-o", "BatchMode=yes"])
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
            ])
            .arg("-i")
            .arg(dir.join("user"))
            .arg(format!("{user}@dom0"))
            .arg("echo through-v4v; head -c 1000000 /dev/zero | wc -c")
            .stdin(Stdio::null()),
        Duration::from_secs(60),
    );
    let _ = sshd.kill();
    let sshd_out = wait_limited(sshd, Duration::from_secs(10));
    assert!(
        o.status.success(),
        "ssh failed: {}\nsshd: {}",
        String::from_utf8_lossy(&o.stderr),
        String::from_utf8_lossy(&sshd_out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&o.stdout), "through-v4v\n1000000\n");
}

fn which(p: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {p}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn unix_sockets_on_both_ends_and_a_stale_socket_file_is_replaced() {
    use std::os::unix::net::{UnixListener, UnixStream};
    let s = Stack::start(&[0, 1]);
    // The target: a Unix echo server next to domain 0.
    let target = s.dir.join("echo.sock");
    let l = UnixListener::bind(&target).expect("bind");
    std::thread::spawn(move || {
        for mut c in l.incoming().map_while(Result::ok) {
            std::thread::spawn(move || {
                let mut w = c.try_clone().expect("clone");
                let _ = std::io::copy(&mut c, &mut w);
                let _ = w.shutdown(Shutdown::Write);
            });
        }
    });
    let _b = Fwd::start(
        &s,
        0,
        &["v4v-listen:89", &format!("unix:{}", target.display())],
    );
    s.wait_port(0, 89, "listen");
    // The listener's path holds a socket file nobody listens on (a forward that was killed).
    let front = s.dir.join("front.sock");
    drop(UnixListener::bind(&front).expect("bind"));
    assert!(front.exists());
    let a = Fwd::start(
        &s,
        1,
        &[&format!("unix-listen:{}", front.display()), "v4v:0:89"],
    );
    let mut c = UnixStream::connect(&front).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut data = vec![0u8; 1 << 20];
    fill_pattern(&mut data, &mut 7);
    let mut w = c.try_clone().expect("clone");
    let sent = data.clone();
    let writer = std::thread::spawn(move || {
        w.write_all(&sent).expect("write");
        w.shutdown(Shutdown::Write).expect("shutdown");
    });
    let mut back = Vec::new();
    c.read_to_end(&mut back).expect("echo to the end");
    writer.join().expect("writer");
    assert!(back == data, "{} bytes back, or corrupted", back.len());
    let line = a.wait_log(&["closed"]);
    assert!(
        line.contains(&format!("unix:{} (pid ", front.display())),
        "{line}"
    );
    // A path in use by a live listener is not taken over.
    let o = s.run(
        1,
        &[
            "forward",
            &format!("unix-listen:{}", front.display()),
            "v4v:0:89",
        ],
    );
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("in use"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The number of threads of a process.
fn threads(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    s.lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("Threads")
}
