// SPDX-License-Identifier: MIT OR Apache-2.0
//! A user cannot flood the daemon's log (issue 10, defect 8): user nobody makes a thousand
//! refused ACL edits; the daemon logs the first few, then one "suppressed N" line for the
//! window, while every ACL change root makes meanwhile is logged (audit lines are never
//! suppressed).

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{OnConnect, Stack, bin, connections_as, raise_fd_limit};

const FLOOD: usize = 1000;

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
    let mut flood = connections_as(
        &sock,
        65534,
        FLOOD,
        0,
        OnConnect::SendAndClose(b"ACL ADD accept 1:5 -> 0:6\n"),
    );
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
