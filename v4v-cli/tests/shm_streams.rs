// SPDX-License-Identifier: MIT OR Apache-2.0
//! Shared-memory streams (`v4v::client::ShmStream`) between real processes on the real stack:
//! a process at one end killed with SIGKILL mid-transfer (the other end learns it, end of file
//! after what was sent or a reset, nothing waits forever, both daemons forget the stream; the
//! killed process is `v4v-bench`'s peer, a plain user of the client API), and what each such
//! stream costs its daemon in descriptors.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Stack, bin};
use v4v::client::Listener;
use v4v::client::{ShmStream, SockAddr};

/// `v4v-bench __peer ROLE` connecting from domain 1 to `port` of domain 2.
fn peer(s: &Stack, role: &str, port: u32, extra: &[&str]) -> Child {
    Command::new(bin("v4v-bench"))
        .arg("__peer")
        .arg(role)
        .arg(s.sock(1))
        .args(["2", &port.to_string()])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the peer")
}

fn kill(mut c: Child) {
    c.kill().expect("SIGKILL");
    c.wait().expect("reap");
}

/// Until neither daemon holds a stream.
fn streams_forgotten(s: &Stack) {
    let deadline = Instant::now() + Duration::from_secs(10);
    for d in [1, 2] {
        loop {
            let st = v4v::client::status(&s.sock(d)).expect("status");
            if st.streams.is_empty() {
                break;
            }
            assert!(Instant::now() < deadline, "domain {d} still holds {st:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn a_killed_shared_memory_sender_ends_its_stream() {
    let s = Stack::start(&[1, 2]);
    let mut l = Listener::bind_with(&s.sock(2), 0).expect("listen");
    // Sends without end (1 TiB) in 64 KiB writes once it reads "go".
    let child = peer(
        &s,
        "v4v-shm-stream-send",
        l.local_port(),
        &["1099511627776", "65536"],
    );
    let (mut srv, _) = l.accept_shm().expect("accept");
    srv.write_all(b"G").expect("go");
    let mut buf = vec![0u8; 1 << 20];
    let mut got = 0usize;
    while got < 16 << 20 {
        got += srv.read(&mut buf).expect("read");
    }
    kill(child);
    // What it had written arrives, then the end: the kernel closed its connection, which is
    // its orderly close (as for a killed TCP sender).
    srv.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    loop {
        match srv.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => panic!("after the sender was killed: {e}"),
        }
    }
    drop(srv);
    streams_forgotten(&s);
}

#[test]
fn a_killed_shared_memory_reader_resets_the_writer() {
    let s = Stack::start(&[1, 2]);
    let mut l = Listener::bind_with(&s.sock(2), 0).expect("listen");
    // Echoes what it reads; we never read the echo, so it soon stops reading, with our data
    // unread in its channel.
    let child = peer(&s, "v4v-shm-stream-echo", l.local_port(), &[]);
    let (mut srv, _) = l.accept_shm().expect("accept");
    // Write until the writes block: the echo then waits for room for its answers (we never
    // read them), with our data unread in its channel.
    srv.set_write_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    let chunk = vec![0x5au8; 64 * 1024];
    loop {
        match srv.write(&chunk) {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) => panic!("before the kill: {e}"),
        }
    }
    kill(child);
    // Its close, with our data unread, resets the stream: the blocked writer learns it.
    srv.set_write_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let t = Instant::now();
    let e = loop {
        if let Err(e) = srv.write(&chunk) {
            break e;
        }
    };
    assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    drop(srv);
    streams_forgotten(&s);
}

fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("/proc/PID/fd")
        .count()
}

/// A shared-memory stream costs each daemon one descriptor, its client's connection, as a
/// socket stream does: the daemon maps the two channels and closes their memfds (it kept them,
/// three descriptors a stream, so that a user's streams could take the descriptors every
/// ring needs before its connection limit).
#[test]
fn a_shared_memory_stream_costs_its_daemon_one_descriptor() {
    let s = Stack::start(&[1, 2]);
    let mut l = Listener::bind_with(&s.sock(2), 0).expect("listen");
    let dst = SockAddr::new(2, l.local_port());
    // One stream first: the peer ring and anything else made once.
    let mut held = vec![ShmStream::connect_with(&s.sock(1), dst).expect("connect")];
    let mut accepted = vec![l.accept_shm().expect("accept").0];
    let (d1, d2) = (s.daemon_pid(1), s.daemon_pid(2));
    let before = (open_descriptors(d1), open_descriptors(d2));
    for _ in 0..40 {
        held.push(ShmStream::connect_with(&s.sock(1), dst).expect("connect"));
        accepted.push(l.accept_shm().expect("accept").0);
    }
    let after = (open_descriptors(d1), open_descriptors(d2));
    assert_eq!(
        after.0 - before.0,
        40,
        "connecting daemon: {before:?} -> {after:?}"
    );
    assert_eq!(
        after.1 - before.1,
        40,
        "accepting daemon: {before:?} -> {after:?}"
    );
    // And they work.
    for (c, a) in held.iter_mut().zip(accepted.iter_mut()) {
        c.write_all(b"x").expect("write");
        let mut b = [0u8; 1];
        a.read_exact(&mut b).expect("read");
    }
}

/// Runs `call` on a shared-memory stream from domain 1 to a peer in domain 2 that never reads
/// nor writes, kills domain 1's daemon once the call is asleep, and checks that the call then
/// returns at once, saying the daemon is gone (`NotConnected`), not end of file: nobody closed
/// the stream.
fn call_hears_its_daemon_die(
    what: &str,
    call: impl FnOnce(&mut ShmStream) -> std::io::Result<usize> + Send + 'static,
) {
    let mut s = Stack::start(&[1, 2]);
    let mut l = Listener::bind_with(&s.sock(2), 0).expect("listen");
    let dst = SockAddr::new(2, l.local_port());
    let mut c = ShmStream::connect_with(&s.sock(1), dst).expect("connect");
    let (_srv, _) = l.accept().expect("accept");
    let (done, result) = std::sync::mpsc::channel();
    let caller = std::thread::spawn(move || {
        let t = Instant::now();
        let r = call(&mut c);
        let _ = done.send((r, t.elapsed()));
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        result.try_recv().is_err(),
        "{what}: the call returned before the daemon died"
    );
    s.kill_daemon(1);
    let (r, took) = result
        .recv_timeout(Duration::from_secs(10))
        .unwrap_or_else(|_| panic!("{what}: the call slept on after its daemon died"));
    caller.join().expect("caller");
    match r {
        Err(e) if e.kind() == ErrorKind::NotConnected => {}
        other => panic!("{what} whose daemon died: {other:?}"),
    }
    assert!(took < Duration::from_secs(5), "{what}: {took:?} to notice");
}

/// A reader asleep on its stream's channel hears its own daemon die.
#[test]
fn a_shared_memory_reader_hears_its_daemon_die() {
    call_hears_its_daemon_die("a read", |c| c.read(&mut [0u8; 64]));
}

/// A writer asleep waiting for room in its channel (the peer reads nothing) hears its daemon
/// die.
#[test]
fn a_shared_memory_writer_waiting_for_room_hears_its_daemon_die() {
    call_hears_its_daemon_die("a write", |c| {
        // Far more than the channel, both daemons' windows and the rings hold.
        let chunk = vec![7u8; 64 * 1024];
        let mut total = 0;
        for _ in 0..4096 {
            total += c.write(&chunk)?;
        }
        Ok(total)
    });
}
