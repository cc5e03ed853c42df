// SPDX-License-Identifier: MIT OR Apache-2.0
//! Idle local connections cannot take the daemon away from others (issue 10, defect 6, the
//! daemon's side): four users hold hundreds of connections that never send a request line,
//! more than the daemon's descriptors; root can still ask STATUS at once, and the idle
//! connections are closed after the handshake timeout.

mod common;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{OnConnect, Stack, bin, connections_as, raise_fd_limit};

/// The daemon's descriptor limit in this test: fewer than the idle connections attempted.
const DAEMON_FDS: u64 = 1024;
const PER_USER: usize = 400;
const USERS: [u32; 4] = [65534, 1001, 1002, 1003];
const TIMEOUT_SECS: u64 = 3;

/// STATUS from root within `limit`, or `None` if it did not come.
fn status_within(sock: &Path, limit: Duration) -> Option<v4v::client::Status> {
    let sock = sock.to_path_buf();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(v4v::client::status(&sock).ok());
    });
    rx.recv_timeout(limit).ok().flatten()
}

fn clients(status: &v4v::client::Status) -> usize {
    status.clients as usize
}

#[test]
fn idle_connections_of_four_users_neither_block_root_nor_stay() {
    raise_fd_limit();
    let s = Stack::start(&[]);
    let sock = s.sock(0);
    let mut daemon = Command::new(bin("v4vd"));
    daemon
        .arg("--hypervisor")
        .arg(format!("sim:{}", s.dir.join("sim.sock").display()))
        .args(["--domid", "0", "--socket"])
        .arg(&sock)
        .args(["--handshake-timeout", &TIMEOUT_SECS.to_string()])
        .env("V4VD_LOG", "error")
        .stdin(Stdio::null());
    // SAFETY: setrlimit is async-signal-safe; the struct is on the child's stack.
    unsafe {
        daemon.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: DAEMON_FDS,
                rlim_max: DAEMON_FDS,
            };
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            Ok(())
        });
    }
    let mut daemon = daemon.spawn().expect("spawn v4vd");
    // Generous: the whole suite runs in parallel on a small machine.
    let deadline = Instant::now() + Duration::from_secs(30);
    while v4v::client::status(&sock).is_err() {
        if let Ok(Some(st)) = daemon.try_wait() {
            panic!("v4vd exited at start: {st}");
        }
        assert!(Instant::now() < deadline, "v4vd never answered");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut holders: Vec<Child> = USERS
        .iter()
        .map(|&u| connections_as(&sock, u, PER_USER, 60, OnConnect::Idle))
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    let st = status_within(&sock, Duration::from_secs(5));
    let held = st.as_ref().map(clients);
    // Closed after the timeout (checked on the daemon's one-second tick).
    std::thread::sleep(Duration::from_secs(TIMEOUT_SECS + 2));
    let after = status_within(&sock, Duration::from_secs(5)).map(|l| clients(&l));
    for h in &mut holders {
        let _ = h.kill();
        let _ = h.wait();
    }
    let _ = daemon.kill();
    let _ = daemon.wait();
    let held = held.expect("root's STATUS did not come while idle connections were held");
    assert!(
        held > 100,
        "the idle connections were not accepted at all: {held}"
    );
    assert!(
        after.is_some_and(|n| n <= 1),
        "idle connections still held after the timeout: {after:?} (were {held})"
    );
}
