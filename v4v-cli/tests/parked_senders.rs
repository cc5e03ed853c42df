// SPDX-License-Identifier: MIT OR Apache-2.0
//! Senders parked on a full ring cost nobody else (issue 10, defect 7): 108 senders of four
//! unprivileged users (nobody and uids 1001-1003: each user may hold at most a quarter of the
//! domain's 128 rings, and users other than root 112 together) wait on a ring nobody reads while
//! root's stream and datagram round trips run through the same daemon; root's traffic may be at
//! most 1.5x slower than without them, and the daemon may spend at most 1.5x the CPU on it.
//!
//! Robust to a loaded machine: runs with and without the parked senders alternate, and medians
//! of three of each are compared. The gate is a count that machine noise hardly moves: the
//! daemon's voluntary context switches for root's work (the daemon sleeps once per hypercall,
//! waiting for the simulator's reply, and once per idle wait), which the old retry-everyone
//! loop multiplied (about 18x the time and far more hypercalls). Wall time and the daemon's CPU
//! time (which grew 2.1x while every event drained each parked sender's ring) are checked
//! loosely and measured again when over their bounds, as the machine may be shared.

mod common;

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Stack, cli_bin, raise_fd_limit};
use v4v::client::{Datagram, Listener, SockAddr, Stream};

const PARKED: usize = 108;
const USERS: [u32; 4] = [65534, 1001, 1002, 1003];
const PAYLOAD: usize = 200 * 1024;
/// 64 MiB: with payloads copied in bulk the stream takes about as long in a debug build as 16 MiB
/// did with the volatile copy loop, so root's work keeps its length and the parked senders'
/// fixed cost (some 30 ms here, as before) its share.
const STREAM: usize = 64 << 20;
const ROUND_TRIPS: usize = 200;
/// How much longer root's work may take with the senders parked (best runs). Measured 1.3-1.6x
/// while every event drained each parked sender's ring, 0.95-1.1x since only rings with
/// messages are drained.
const WALL_BOUND: f64 = 1.5;
/// How much more CPU the daemon may spend on root's work with the senders parked (medians).
/// Measured 2.1x while every event drained each parked sender's ring, 1.1-1.2x since.
const CPU_BOUND: f64 = 1.5;

/// The daemon's time on a CPU so far, in nanoseconds (`/proc/PID/schedstat`).
fn cpu_ns(pid: u32) -> u64 {
    let st = std::fs::read_to_string(format!("/proc/{pid}/schedstat")).expect("schedstat");
    st.split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .expect("schedstat run time")
}

/// The daemon's voluntary context switches so far.
fn switches(pid: u32) -> u64 {
    let st = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    st.lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("voluntary_ctxt_switches")
}

/// Root's work: a 64 MiB stream from dom0 to dom1, then datagram round trips dom0 -> dom1 ->
/// dom0. Returns how long it took.
fn root_work(s: &Stack, round: usize) -> Duration {
    let port = 7100 + round as u32;
    let mut l = Listener::bind_with(&s.sock(1), port).expect("listen");
    let reader = std::thread::spawn(move || {
        let (mut srv, _) = l.accept().expect("accept");
        let mut buf = vec![0u8; 64 * 1024];
        let mut n = 0;
        loop {
            match srv.read(&mut buf) {
                Ok(0) => break n,
                Ok(k) => n += k,
                Err(e) => panic!("stream read: {e}"),
            }
        }
    });
    let echo_port = 7300 + round as u32;
    let mut echo = Datagram::bind_with(&s.sock(1), echo_port, None).expect("bind echo");
    let echoer = std::thread::spawn(move || {
        let mut buf = vec![0u8; 256];
        for _ in 0..ROUND_TRIPS {
            let (n, from) = echo.recv_from(&mut buf).expect("echo recv");
            echo.send_to(&buf[..n], from).expect("echo send");
        }
    });
    let started = Instant::now();
    let mut c = Stream::connect_with(&s.sock(0), SockAddr::new(1, port)).expect("connect");
    let chunk = vec![0x5au8; 64 * 1024];
    for _ in 0..STREAM / chunk.len() {
        c.write_all(&chunk).expect("stream write");
    }
    c.shutdown(std::net::Shutdown::Write).expect("shutdown");
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).expect("stream end");
    assert_eq!(reader.join().expect("reader"), STREAM);
    let mut d = Datagram::bind_with(&s.sock(0), 0, None).expect("bind");
    for i in 0..ROUND_TRIPS {
        let msg = format!("ping {i}");
        d.send_to(msg.as_bytes(), SockAddr::new(1, echo_port))
            .expect("send");
        let (reply, _) = d
            .recv_timeout(Some(Duration::from_secs(10)))
            .expect("reply");
        assert_eq!(reply, msg.as_bytes());
    }
    let took = started.elapsed();
    echoer.join().expect("echo");
    took
}

/// Starts the senders (of the four users in turn), all to dom1:7000 (whose ring nobody reads), and waits
/// until at least [`PARKED`] of them are still waiting.
fn park_senders(s: &Stack, payload: &std::path::Path) -> Vec<Child> {
    let mut v: Vec<Child> = (0..PARKED)
        .map(|i| {
            let uid = USERS[i % USERS.len()];
            let mut c = Command::new("setpriv");
            c.args([
                &format!("--reuid={uid}"),
                &format!("--regid={uid}"),
                "--clear-groups",
            ])
            .arg(cli_bin())
            .arg("--socket")
            .arg(s.sock(0))
            .args(["send", "1:7000"]);
            c.stdin(std::fs::File::open(payload).expect("payload"))
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn sender")
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    let waiting = v
        .iter_mut()
        .filter_map(|c| matches!(c.try_wait(), Ok(None)).then_some(()))
        .count();
    if waiting < PARKED {
        let mut why = String::new();
        if let Some(c) = v
            .iter_mut()
            .find_map(|c| (!matches!(c.try_wait(), Ok(None))).then_some(c))
        {
            let _ = c.stderr.take().map(|mut e| e.read_to_string(&mut why));
        }
        panic!("only {waiting} senders are waiting on the full ring; one that ended said {why:?}");
    }
    v
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[test]
fn parked_senders_do_not_slow_others() {
    raise_fd_limit();
    let s = Stack::start(&[0, 1, 2]);
    let payload = s.dir.join("payload");
    std::fs::write(&payload, vec![7u8; PAYLOAD]).expect("payload");
    // The ring nobody reads, filled from dom2 (so that all of dom0's ring quota is left for
    // the parked senders): the daemon passes what it can to the sink's socket, then the ring
    // fills up and stays full.
    let _sink = Datagram::bind_with(&s.sock(1), 7000, None).expect("bind the sink");
    let mut filler = Datagram::bind_with(&s.sock(2), 0, None).expect("bind the filler");
    filler.set_nonblocking(true).expect("nonblocking");
    let big = vec![1u8; PAYLOAD];
    let deadline = Instant::now() + Duration::from_secs(20);
    // Full when a send still finds no room after the daemon had time to drain what it could.
    let mut refused = 0;
    while refused < 5 {
        match filler.send_to(&big, SockAddr::new(1, 7000)) {
            Ok(_) => refused = 0,
            Err(v4v::client::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {
                refused += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("filling the sink: {e}"),
        }
        assert!(Instant::now() < deadline, "the sink's ring never filled");
    }
    let daemon = s.daemon_pid(0);
    // One measure: the better time of two runs (a loaded machine's hiccups only ever add
    // time), and the fewer context switches.
    let measure = |r: usize| {
        let (mut t, mut sw, mut cpu) = (f64::MAX, f64::MAX, f64::MAX);
        for k in 0..2 {
            let (s0, c0) = (switches(daemon), cpu_ns(daemon));
            t = t.min(root_work(&s, 2 * r + k).as_secs_f64());
            sw = sw.min((switches(daemon) - s0) as f64);
            cpu = cpu.min((cpu_ns(daemon) - c0) as f64 / 1e6);
        }
        (t, sw, cpu)
    };
    // The daemon's context switches are the exact measure and must hold every time. Wall time
    // on a shared machine is noisy (other processes' slices only ever add to it), so a wall
    // time over the bound is measured again, up to three times, before it counts: a real
    // slowdown is there each time.
    let mut attempt = 0;
    loop {
        let (mut quiet, mut loaded) = (Vec::new(), Vec::new());
        let (mut quiet_sw, mut loaded_sw) = (Vec::new(), Vec::new());
        let (mut quiet_cpu, mut loaded_cpu) = (Vec::new(), Vec::new());
        for round in 0..3 {
            let r = 6 * attempt + 2 * round;
            let (t, sw, cpu) = measure(r);
            quiet.push(t);
            quiet_sw.push(sw);
            quiet_cpu.push(cpu);
            let mut senders = park_senders(&s, &payload);
            let (t, sw, cpu) = measure(r + 1);
            loaded.push(t);
            loaded_sw.push(sw);
            loaded_cpu.push(cpu);
            for c in &mut senders {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        let (q, l) = (median(quiet.clone()), median(loaded.clone()));
        let (qs, ls) = (median(quiet_sw.clone()), median(loaded_sw.clone()));
        let (qc, lc) = (median(quiet_cpu.clone()), median(loaded_cpu.clone()));
        eprintln!(
            "attempt {attempt}: root's work: {q:.3} s alone, {l:.3} s with {PARKED} parked \
             senders ({:.2}x; runs {quiet:?} / {loaded:?}); daemon context switches {qs} / {ls} \
             ({:.2}x; {quiet_sw:?} / {loaded_sw:?}); daemon CPU {qc:.1} / {lc:.1} ms ({:.2}x; \
             {quiet_cpu:?} / {loaded_cpu:?})",
            l / q,
            ls / qs,
            lc / qc
        );
        assert!(
            ls <= qs * 1.2,
            "parked senders made the daemon work {:.2}x as much for root's traffic",
            ls / qs
        );
        // The best run of each kind (medians of three still carried a busy core's slices).
        let best = |v: &[f64]| v.iter().copied().fold(f64::MAX, f64::min);
        let (qb, lb) = (best(&quiet), best(&loaded));
        attempt += 1;
        // What the daemon does for root's traffic must not grow with the parked senders'
        // number either (it once drained each one's empty ring on every event: 2.1x the CPU,
        // as many context switches). CPU time is noisy too (a busy core's caches), so it is
        // measured again like the wall time.
        if lb <= qb * WALL_BOUND && lc <= qc * CPU_BOUND {
            break;
        }
        assert!(
            attempt < 3,
            "root's work took {lb:.3} s with parked senders, {qb:.3} s without (best runs), the \
             daemon's CPU {lc:.1} ms / {qc:.1} ms ({attempt} attempts)"
        );
    }
}
