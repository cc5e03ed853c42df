// SPDX-License-Identifier: MIT OR Apache-2.0
//! Real processes: a `v4v-sim` simulator and one `v4vd` per domain. Skipped (with a note) when
//! the simulator binary has not been built next to `v4vd` (`cargo build -p v4v-sim`).

mod common;

use std::io::{Read, Write};
use std::net::Shutdown;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{FNV0, Proc, fnv, pattern, tmpdir, wait_for};
use v4v::client::{Datagram, Error, Listener, SockAddr, Stream};

fn sim_binary() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_BIN_EXE_v4vd")).with_file_name("v4v-sim");
    p.exists().then_some(p)
}

fn daemon(sim: &Path, dir: &Path, domid: u16) -> (Proc, PathBuf) {
    let sock = dir.join(format!("d{domid}.sock"));
    let child = Command::new(env!("CARGO_BIN_EXE_v4vd"))
        .arg("--hypervisor")
        .arg(format!("sim:{}", sim.display()))
        .args(["--domid", &domid.to_string(), "--socket"])
        .arg(&sock)
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn v4vd");
    wait_for(&sock);
    (Proc(child), sock)
}

#[test]
fn daemons_as_processes_over_the_simulator() {
    let Some(sim_bin) = sim_binary() else {
        eprintln!("skipped: v4v-sim not built (cargo build -p v4v-sim)");
        return;
    };
    let dir = tmpdir();
    let sim_sock = dir.join("sim.sock");
    let _sim = Proc(
        Command::new(sim_bin)
            .arg("--socket")
            .arg(&sim_sock)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn v4v-sim"),
    );
    wait_for(&sim_sock);
    let (_d1, s1) = daemon(&sim_sock, &dir, 1);
    let (mut d2, s2) = daemon(&sim_sock, &dir, 2);

    // Datagrams.
    let mut a = Datagram::bind_with(&s1, 10, None).unwrap();
    let mut b = Datagram::bind_with(&s2, 20, None).unwrap();
    a.send_to(b"ping", SockAddr::new(2, 20)).unwrap();
    let mut buf = [0u8; 16];
    let (n, from) = b.recv_from(&mut buf).unwrap();
    assert_eq!((&buf[..n], from), (&b"ping"[..], SockAddr::new(1, 10)));

    // A stream with a checksum.
    let mut l = Listener::bind_with(&s2, 5000).unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut all = Vec::new();
        s.read_to_end(&mut all).unwrap();
        s.write_all(&fnv(FNV0, &all).to_le_bytes()).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        l
    });
    let data = pattern(2 << 20, 11);
    let mut c = Stream::connect_with(&s1, SockAddr::new(2, 5000)).unwrap();
    c.write_all(&data).unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let mut sum = Vec::new();
    c.read_to_end(&mut sum).unwrap();
    assert_eq!(sum, fnv(FNV0, &data).to_le_bytes());
    let mut l = server.join().unwrap();

    // An open stream, then domain 2's daemon is killed.
    let mut c = Stream::connect_with(&s1, SockAddr::new(2, 5000)).unwrap();
    let (_srv, _) = l.accept().unwrap();
    let _ = d2.0.kill();
    let _ = d2.0.wait();
    c.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
    let mut rest = Vec::new();
    let t = Instant::now();
    let r = c.read_to_end(&mut rest);
    // Not an orderly end: the read fails, saying the peer is gone.
    match r {
        Err(e) if e.kind() == std::io::ErrorKind::HostUnreachable => {}
        other => panic!("expected the peer to be reported gone, got {other:?}"),
    }
    assert!(rest.is_empty());
    assert!(t.elapsed() < Duration::from_secs(6));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        // Pipelined: a refused datagram is reported by a later send, with its number.
        match a.send_to(b"x", SockAddr::new(2, 20)) {
            Err(Error::Undelivered { cause, .. }) if matches!(*cause, Error::Refused(_)) => break,
            r => assert!(Instant::now() < deadline, "{r:?}"),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
