// SPDX-License-Identifier: MIT OR Apache-2.0
//! A user cannot flood the daemon's log (issue 10, defect 8): user nobody makes a thousand
//! refused ACL edits; the daemon logs the first few, then one "suppressed N" line for the
//! window, while every ACL change root makes meanwhile is logged (audit lines are never
//! suppressed).

mod common;

use std::ffi::CString;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Stack, bin, raise_fd_limit};

const FLOOD: usize = 1000;

/// A process of `uid` that sends `line` on `n` connections to `sock`, one after another.
fn requester(sock: &Path, uid: u32, n: usize, line: &'static [u8]) -> Child {
    let path = CString::new(sock.as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: all-zero is a valid sockaddr_un (integers and a byte array).
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(path.as_bytes()) {
        *d = *s as libc::c_char;
    }
    // `sleep 0`: the process ends once its requests are sent.
    let mut c = Command::new("sleep");
    c.arg("0")
        .uid(uid)
        .gid(uid)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: only async-signal-safe system calls (socket, connect, write, close) on memory
    // prepared before the fork.
    unsafe {
        c.pre_exec(move || {
            for _ in 0..n {
                let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
                if fd < 0 {
                    break;
                }
                let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
                if libc::connect(fd, (&addr as *const libc::sockaddr_un).cast(), len) == 0 {
                    libc::write(fd, line.as_ptr().cast(), line.len());
                }
                libc::close(fd);
            }
            Ok(())
        });
    }
    c.spawn().expect("spawn requester")
}

#[test]
fn refused_requests_are_rate_limited_and_acl_changes_never() {
    raise_fd_limit();
    let s = Stack::start(&[]);
    let sock = s.sock(0);
    let log = s.dir.join("v4vd.log");
    let mut daemon = Command::new(bin("v4vd"))
        .arg("--hypervisor")
        .arg(format!("sim:{}", s.dir.join("sim.sock").display()))
        .args(["--domid", "0", "--socket"])
        .arg(&sock)
        .env("V4VD_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("spawn v4vd");
    let deadline = Instant::now() + Duration::from_secs(30);
    while v4v::client::status(&sock).is_err() {
        if let Ok(Some(st)) = daemon.try_wait() {
            panic!("v4vd exited at start: {st}");
        }
        assert!(Instant::now() < deadline, "v4vd never answered");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut flood = requester(&sock, 65534, FLOOD, b"ACL ADD accept 1:5 -> 0:6\n");
    // Root's changes, during the flood.
    for i in 0..10 {
        let rule = format!("accept 1:{} -> 0:7", 100 + i);
        for args in [["acl", "add", &rule], ["acl", "delete", &rule]] {
            let o = s.run(0, &args);
            assert_eq!(o.status.code(), Some(0), "{args:?}: {o:?}");
        }
    }
    let _ = flood.wait();
    // The window closes on the daemon's tick.
    let deadline = Instant::now() + Duration::from_secs(15);
    let text = loop {
        let text = std::fs::read_to_string(&log).expect("log");
        if text.contains("suppressed") || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let _ = daemon.kill();
    let _ = daemon.wait();
    let refused = text.matches("ACL change refused").count();
    let changed = text.matches("ACL changed").count();
    let suppressed: u64 = text
        .lines()
        .filter(|l| l.contains("uid=65534") && l.contains("suppressed="))
        .filter_map(|l| l.split("suppressed=").nth(1))
        .filter_map(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    assert!(
        refused <= 10,
        "{refused} refusals of nobody's ACL edits were logged"
    );
    assert!(
        refused as u64 + suppressed >= FLOOD as u64 * 9 / 10,
        "the suppressed count does not account for the flood: {refused} logged, {suppressed} suppressed"
    );
    assert_eq!(
        changed, 20,
        "root's ACL changes must all be logged:\n{text}"
    );
}
