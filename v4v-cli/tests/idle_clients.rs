// SPDX-License-Identifier: MIT OR Apache-2.0
//! Idle local connections cannot take the daemon away from others (issue 10, defect 6, the
//! daemon's side): four users hold hundreds of connections that never send a request line,
//! more than the daemon's descriptors; root can still ask STATUS at once, and the idle
//! connections are closed after the handshake timeout.

mod common;

use std::ffi::CString;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Stack, bin, raise_fd_limit};

/// The daemon's descriptor limit in this test: fewer than the idle connections attempted.
const DAEMON_FDS: u64 = 1024;
const PER_USER: usize = 400;
const USERS: [u32; 4] = [65534, 1001, 1002, 1003];
const TIMEOUT_SECS: u64 = 3;

/// A `sleep` process of `uid` holding `n` connections to `sock` that never send anything
/// (opened between fork and exec, so they are the uid's own).
fn idle_holder(sock: &Path, uid: u32, n: usize) -> Child {
    let path = CString::new(sock.as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: all-zero is a valid sockaddr_un (integers and a byte array).
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(path.as_bytes()) {
        *d = *s as libc::c_char;
    }
    let mut c = Command::new("sleep");
    c.arg("60")
        .uid(uid)
        .gid(uid)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: the closure makes only async-signal-safe system calls (socket, connect) on
    // memory prepared before the fork.
    unsafe {
        c.pre_exec(move || {
            for _ in 0..n {
                let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0);
                if fd < 0 {
                    break;
                }
                libc::connect(
                    fd,
                    (&addr as *const libc::sockaddr_un).cast(),
                    std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
                );
            }
            Ok(())
        });
    }
    c.spawn().expect("spawn idle holder")
}

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
        .map(|&u| idle_holder(&sock, u, PER_USER))
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
