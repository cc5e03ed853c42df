// SPDX-License-Identifier: MIT OR Apache-2.0
//! ACL administration end to end: `v4v-cli acl` through dom0's `v4vd` to the simulated
//! hypervisor, which enforces the table on every send between real guest daemons.

mod common;

use std::io::Write;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use common::{Stack, run_limited, wait_limited};

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_string()
}

/// Runs `v4v-cli` in `domid` and asserts its exit status; returns stdout.
fn cli(s: &Stack, domid: u16, args: &[&str], want: i32) -> String {
    let o = s.run(domid, args);
    assert_eq!(
        code(&o),
        want,
        "v4v-cli {args:?} in dom{domid}: stdout {:?} stderr {:?}",
        text(&o.stdout),
        text(&o.stderr)
    );
    text(&o.stdout)
}

/// The table as `acl list` numbers it, without the numbers.
fn table(s: &Stack) -> Vec<String> {
    cli(s, 0, &["acl", "list"], 0)
        .lines()
        .filter(|l| !l.starts_with('('))
        .map(|l| {
            l.trim_start()
                .split_once("  ")
                .expect("numbered")
                .1
                .to_string()
        })
        .collect()
}

/// Sends one datagram from `from` to `to:port` and says whether the hypervisor took it: exit 0,
/// or exit 6 (denied by the ACL). A receiver is bound at the destination first.
fn can_send(s: &Stack, from: u16, to: u16, port: u32) -> bool {
    let _rx = common::bind_again(&s.sock(to), port);
    let o = s.run(from, &["send", &format!("{to}:{port}"), "probe"]);
    match code(&o) {
        0 => true,
        6 => {
            assert!(text(&o.stderr).contains("ACL"), "{}", text(&o.stderr));
            false
        }
        c => panic!("send {from} -> {to}:{port}: exit {c}: {}", text(&o.stderr)),
    }
}

fn write_file(s: &Stack, name: &str, body: &str) -> String {
    let p = s.dir.join(name);
    std::fs::write(&p, body).expect("write file");
    p.display().to_string()
}

#[test]
fn a_reject_rule_stops_traffic_and_deleting_it_restores_it() {
    let s = Stack::start(&[0, 1, 2]);
    assert!(can_send(&s, 1, 2, 5000));
    cli(&s, 0, &["acl", "add", "reject 1:* -> 2:5000"], 0);
    assert!(!can_send(&s, 1, 2, 5000));
    assert!(can_send(&s, 1, 2, 5001), "only port 5000 is refused");
    assert!(can_send(&s, 0, 2, 5000), "only domain 1 is refused");
    // Streams too: the connect is refused by the ACL, with its own exit status.
    {
        let _l = v4v::client::Listener::bind_with(&s.sock(2), 5000).expect("listen");
        let o = s.run(1, &["connect", "2:5000"]);
        assert_eq!(code(&o), 6, "{}", text(&o.stderr));
    }
    // The sender's daemon counts refusals per source and destination.
    let st = s.status(1);
    assert_eq!(st["acl_refused"], "2", "{st:?}");
    assert!(st["acl_refused_by"].contains("->2:5000/"), "{st:?}");
    let json = cli(&s, 1, &["status", "--json"], 0);
    let v: serde_json::Value = serde_json::from_str(&json).expect("status JSON");
    assert_eq!(v["acl_refused"], 2);
    assert_eq!(v["acl_refused_by"][0]["dst"], "2:5000");
    cli(&s, 0, &["acl", "delete", "1"], 0);
    assert!(can_send(&s, 1, 2, 5000));
    // Delete by rule text.
    cli(&s, 0, &["acl", "add", "reject 1:* -> 2:5000"], 0);
    cli(
        &s,
        0,
        &["acl", "delete", "reject", "1:*", "->", "2:5000"],
        0,
    );
    assert!(table(&s).is_empty());
    assert!(can_send(&s, 1, 2, 5000));
    let o = s.run(0, &["acl", "delete", "reject 1:* -> 2:5000"]);
    assert_eq!(code(&o), 1, "deleting a rule that is not there");
    assert!(text(&o.stderr).contains("no rule"), "{}", text(&o.stderr));
}

#[test]
fn insert_order_decides_and_wildcards_match() {
    let s = Stack::start(&[0, 1, 2]);
    cli(&s, 0, &["acl", "add", "reject 1:* -> 2:*"], 0);
    assert!(!can_send(&s, 1, 2, 6000));
    cli(&s, 0, &["acl", "insert", "1", "accept 1:* -> 2:6000"], 0);
    assert_eq!(table(&s), ["accept 1:* -> 2:6000", "reject 1:* -> 2:*"]);
    assert!(can_send(&s, 1, 2, 6000), "the earlier accept decides");
    assert!(!can_send(&s, 1, 2, 6001));
    cli(&s, 0, &["acl", "flush"], 0);
    // Any source domain.
    cli(&s, 0, &["acl", "add", "reject *:* -> 2:*"], 0);
    assert!(!can_send(&s, 0, 2, 6002));
    assert!(!can_send(&s, 1, 2, 6002));
    assert!(can_send(&s, 2, 1, 6002));
    cli(&s, 0, &["acl", "flush"], 0);
    // Any destination, one source port.
    cli(&s, 0, &["acl", "add", "reject 1:77 -> *:*"], 0);
    let _rx = v4v::client::Datagram::bind_with(&s.sock(2), 6003, None).expect("bind");
    let o = s.run(1, &["send", "--from-port", "77", "2:6003", "x"]);
    assert_eq!(code(&o), 6, "{}", text(&o.stderr));
    let o = s.run(1, &["send", "--from-port", "78", "2:6003", "x"]);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    // `acl check` says which rule decides, and exits 6 for a rejection.
    let out = cli(&s, 0, &["acl", "check", "1:77", "0:1"], 6);
    assert!(out.contains("rejected by rule 1"), "{out}");
    let out = cli(&s, 0, &["acl", "check", "1:78", "0:1"], 0);
    assert!(out.contains("no rule matches"), "{out}");
}

#[test]
fn a_default_deny_table_with_one_accept() {
    let s = Stack::start(&[0, 1, 2]);
    let f = write_file(
        &s,
        "deny.rules",
        "# only 1 -> 2:7000, and its replies\naccept 1:* -> 2:7000\naccept 2:7000 -> 1:*\n\
         reject *:* -> *:*   # default deny\n",
    );
    cli(&s, 0, &["acl", "load", &f], 0);
    assert!(can_send(&s, 1, 2, 7000));
    assert!(!can_send(&s, 1, 2, 7001));
    assert!(!can_send(&s, 0, 2, 7000));
    assert!(!can_send(&s, 2, 1, 7000));
    // A stream through the one open door works both ways.
    let mut l = v4v::client::Listener::bind_with(&s.sock(2), 7000).expect("listen");
    let srv = std::thread::spawn(move || {
        let (mut st, _) = l.accept().expect("accept");
        std::io::Write::write_all(&mut st, b"through the door").expect("write");
    });
    let mut c = s.spawn(1, &["connect", "2:7000"], Stdio::null());
    let _ = c.stdin.take();
    let o = wait_limited(c, Duration::from_secs(20));
    srv.join().expect("server");
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    assert_eq!(o.stdout, b"through the door");
}

#[test]
fn save_then_load_round_trips_and_a_bad_file_changes_nothing() {
    let s = Stack::start(&[0, 1]);
    let mut rules = String::new();
    for i in 1..=40u32 {
        let action = if i % 3 == 0 { "accept" } else { "reject" };
        rules.push_str(&format!("{action} {}:* -> 0:{}\n", i % 7, 1000 + i));
    }
    rules.push_str("accept *:5 -> *:*\nreject *:* -> *:*\n");
    let f = write_file(&s, "many.rules", &rules);
    cli(&s, 0, &["acl", "load", &f], 0);
    let before = table(&s);
    assert_eq!(before.len(), 42);
    let saved = cli(&s, 0, &["acl", "save"], 0);
    let f2 = write_file(&s, "saved.rules", &saved);
    cli(&s, 0, &["acl", "flush"], 0);
    assert!(table(&s).is_empty());
    cli(&s, 0, &["acl", "load", &f2], 0);
    assert_eq!(table(&s), before, "save -> load changed the table");
    assert_eq!(cli(&s, 0, &["acl", "save"], 0), saved);
    // stdin works as the file.
    let mut c = s.spawn(0, &["acl", "load", "-"], Stdio::piped());
    c.stdin
        .take()
        .expect("stdin")
        .write_all(saved.as_bytes())
        .expect("write");
    assert_eq!(code(&wait_limited(c, Duration::from_secs(20))), 0);
    assert_eq!(table(&s), before);
    // A file with bad lines: every one reported as FILE:LINE, and the table untouched.
    let bad = write_file(
        &s,
        "bad.rules",
        "accept 1:* -> 0:80\nallow 1:* -> 0:81\nreject 1:0 -> *:*\naccept 1:* 0:82\n",
    );
    let o = s.run(0, &["acl", "load", &bad]);
    assert_eq!(code(&o), 2);
    let err = text(&o.stderr);
    for l in [2, 3, 4] {
        assert!(
            err.contains(&format!("{bad}:{l}: ")),
            "line {l} not reported: {err}"
        );
    }
    assert!(!err.contains(&format!("{bad}:1:")), "{err}");
    assert_eq!(table(&s), before, "a bad file changed the table");
    // A missing file too.
    let o = s.run(0, &["acl", "load", "/nonexistent/acl.rules"]);
    assert_eq!(code(&o), 2);
    assert_eq!(table(&s), before);
}

#[test]
fn unprivileged_clients_and_guest_domains_are_refused() {
    let s = Stack::start(&[0, 1]);
    cli(&s, 0, &["acl", "add", "reject 1:* -> 0:22"], 0);
    let as_nobody = |args: &[&str]| {
        run_limited(
            s.cli_as_nobody(0, args).stdin(Stdio::null()),
            Duration::from_secs(20),
        )
    };
    for args in [
        &["acl", "add", "accept *:* -> *:*"][..],
        &["acl", "flush"],
        &["acl", "delete", "1"],
    ] {
        let o = as_nobody(args);
        assert_eq!(code(&o), 9, "{args:?}: {}", text(&o.stderr));
        assert!(
            text(&o.stderr).contains("needs root"),
            "{}",
            text(&o.stderr)
        );
    }
    // Reading is open to everyone in dom0.
    let o = as_nobody(&["acl", "list"]);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("reject 1:* -> 0:22"));
    assert_eq!(table(&s), ["reject 1:* -> 0:22"]);
    // A guest's daemon, even for root: the hypervisor refuses, and the message says where.
    for args in [
        &["acl", "flush"][..],
        &["acl", "list"],
        &["acl", "add", "accept *:* -> *:*"],
    ] {
        let o = s.run(1, args);
        assert_eq!(code(&o), 9, "{args:?}");
        assert!(
            text(&o.stderr).contains("edited from dom0"),
            "{}",
            text(&o.stderr)
        );
    }
    assert_eq!(table(&s), ["reject 1:* -> 0:22"]);
}

#[test]
fn members_of_the_acl_group_may_edit() {
    let mut s = Stack::start(&[1]);
    s.start_daemon(0, &["--acl-group", "65534"]);
    let o = run_limited(
        s.cli_as_nobody(0, &["acl", "add", "reject 1:* -> 0:23"])
            .stdin(Stdio::null()),
        Duration::from_secs(20),
    );
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    assert_eq!(table(&s), ["reject 1:* -> 0:23"]);
}

#[test]
fn the_acl_file_is_applied_at_start_reloaded_on_sighup_and_reapplied_on_restart() {
    let mut s = Stack::start(&[1, 2]);
    let f = write_file(&s, "acl.rules", "reject 1:* -> 2:*\n");
    s.start_daemon(0, &["--acl-file", &f]);
    assert_eq!(table(&s), ["reject 1:* -> 2:*"]);
    assert!(!can_send(&s, 1, 2, 8000));
    // SIGHUP reloads.
    std::fs::write(&f, "reject 1:* -> 2:9000\naccept *:* -> *:*\n").expect("write");
    let pid = s.daemon_pid(0) as i32;
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid, libc::SIGHUP) };
    wait_until(|| table(&s) == ["reject 1:* -> 2:9000", "accept *:* -> *:*"]);
    assert!(can_send(&s, 1, 2, 8000));
    // A bad file on SIGHUP: refused whole, the table stays.
    std::fs::write(&f, "reject 1:* -> 2:9001\nnonsense\n").expect("write");
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGHUP) };
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(table(&s), ["reject 1:* -> 2:9000", "accept *:* -> *:*"]);
    // Restarting dom0's daemon re-applies the (now fixed) file over whatever the table holds.
    std::fs::write(&f, "reject 1:* -> 2:8000\n").expect("write");
    cli(&s, 0, &["acl", "flush"], 0);
    s.kill_daemon(0);
    s.start_daemon(0, &["--acl-file", &f]);
    assert_eq!(table(&s), ["reject 1:* -> 2:8000"]);
    assert!(!can_send(&s, 1, 2, 8000));
    // A daemon given a bad file does not start (the admin sees why).
    std::fs::write(&f, "reject 1:* -> 2:8000\nbad line\n").expect("write");
    s.kill_daemon(0);
    let o = run_limited(
        std::process::Command::new(common::bin("v4vd"))
            .arg("--hypervisor")
            .arg(format!("sim:{}", s.dir.join("sim.sock").display()))
            .args(["--domid", "0", "--socket"])
            .arg(s.dir.join("d0-bad.sock"))
            .args(["--acl-file", &f])
            .stdin(Stdio::null()),
        Duration::from_secs(20),
    );
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains(":2: "), "{}", text(&o.stderr));
}

fn wait_until(mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "condition never held");
        std::thread::sleep(Duration::from_millis(20));
    }
}
