// SPDX-License-Identifier: MIT OR Apache-2.0
//! `STATUS` end to end (issue 10, defects 2 and 9): it carries any number of ports, streams and
//! refused pairs, and shows owners and byte counters only to root and the owner, as `ss` does.

mod common;

use std::io::{Read, Write};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use std::sync::atomic::{AtomicUsize, Ordering};

use common::{Stack, dom0_with_max_rings, raise_fd_limit, run_limited, wait_limited};
use v4v::client::proto::PortKind;
use v4v::client::{Datagram, Listener, SockAddr, Stream};

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_string()
}

/// Runs `cmd` (at most 60 s) with stdout in a file, since a big STATUS fills a pipe before the
/// process ends; asserts exit 0 and returns stdout.
fn ok_output(s: &Stack, cmd: &mut std::process::Command) -> String {
    let out = s
        .dir
        .join(format!("out-{}", NEXT.fetch_add(1, Ordering::Relaxed)));
    let f = std::fs::File::create(&out).expect("output file");
    let child = cmd
        .stdin(Stdio::null())
        .stdout(f)
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let o = wait_limited(child, Duration::from_secs(60));
    assert_eq!(code(&o), 0, "{cmd:?}: {}", text(&o.stderr));
    std::fs::read_to_string(&out).expect("read output")
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

fn cli_ok(s: &Stack, domid: u16, args: &[&str]) -> String {
    ok_output(s, &mut s.cli(domid, args))
}

/// Fails on the main before this change: the STATUS reply was one line read with the 256-byte
/// request-line limit, so 10 ports broke `status` for everyone ("reply line too long", exit 1).
#[test]
fn status_carries_a_thousand_ports_and_256_refused_pairs() {
    raise_fd_limit();
    let mut s = Stack::start(&[]);
    s.start_daemon(1, &["--ring-size", "4096"]);
    // This test is dom0 (no daemon there): it raises domain 1's ring limit and edits the ACL.
    let dom0 = dom0_with_max_rings(&s, 1, 1100);
    s.start_daemon(2, &[]);
    const PORTS: u32 = 1000;
    let held: Vec<Datagram> = (0..PORTS)
        .map(|i| Datagram::bind_with(&s.sock(1), 20_000 + i, None).expect("bind"))
        .collect();
    // 256 refused pairs: one source, 256 destinations, every send refused by the ACL.
    let rule: v4v::acl::Rule = "reject 1:* -> 2:*".parse().expect("rule");
    v4v::acl::add(&*dom0, &rule).expect("acl add");
    let mut tx = Datagram::bind_with(&s.sock(1), 19_999, None).expect("bind sender");
    // Each send answers for itself.
    tx.set_window(1).expect("window");
    for i in 0..256 {
        let e = tx.send_to(b"x", SockAddr::new(2, 6000 + i)).err();
        assert!(matches!(e, Some(v4v::client::Error::Denied)), "{e:?}");
    }

    let st = v4v::client::status(&s.sock(1)).expect("typed status");
    let dgram: Vec<u32> = st
        .ports
        .iter()
        .filter(|p| p.kind == PortKind::Dgram)
        .map(|p| p.port)
        .collect();
    assert_eq!(dgram.len(), PORTS as usize + 1);
    assert!((0..PORTS).all(|i| dgram.contains(&(20_000 + i))));
    assert_eq!(st.acl_refused, 256);
    assert_eq!(st.acl_refused_by.len(), 256);
    assert!(
        st.acl_refused_by
            .iter()
            .all(|r| r.count == 1 && r.src == SockAddr::new(1, 19_999) && r.dst.domid == 2)
    );

    // The CLI: JSON as the daemon wrote it, and the text view rendered from the same.
    let json = cli_ok(&s, 1, &["status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&json).expect("status --json is JSON");
    assert_eq!(
        v["ports"].as_array().map(Vec::len),
        Some(PORTS as usize + 1)
    );
    assert_eq!(v["acl_refused_by"].as_array().map(Vec::len), Some(256));
    assert_eq!(v["acl_refused_by"][0]["dst"], "2:6000");
    let txt = cli_ok(&s, 1, &["status"]);
    assert!(
        txt.contains(&format!("ports         {}", PORTS + 1)),
        "{txt}"
    );
    assert!(
        txt.lines().any(|l| l.trim_start().starts_with("20999 ")),
        "{txt}"
    );
    assert!(txt.contains("1:19999 -> 2:6255"), "{txt}");
    // Unprivileged users read it too.
    let json = ok_output(&s, &mut s.cli_as_nobody(1, &["status", "--json"]));
    assert!(serde_json::from_str::<serde_json::Value>(&json).is_ok());
    drop(held);
}

/// Fails on the main before this change: STATUS showed no owners at all, and nothing per
/// stream. Now, like `ss`: every user sees every port and stream; uid/pid and byte counters
/// only root and the owner.
#[test]
fn status_shows_owners_and_byte_counters_only_to_root_and_the_owner() {
    let s = Stack::start(&[1, 2]);
    // Root's datagram port and a stream with 5 bytes each way.
    let _root_port = Datagram::bind_with(&s.sock(1), 7000, None).expect("bind");
    let mut l = Listener::bind_with(&s.sock(2), 7100).expect("listen");
    let mut c = Stream::connect_with(&s.sock(1), SockAddr::new(2, 7100)).expect("connect");
    let (mut a, _) = l.accept().expect("accept");
    c.write_all(b"hello").expect("write");
    let mut b = [0u8; 5];
    a.read_exact(&mut b).expect("read");
    a.write_all(b"world").expect("write back");
    c.read_exact(&mut b).expect("read back");
    // nobody's own port.
    let mut nobody_recv = s
        .cli_as_nobody(1, &["recv", "7001", "--timeout", "30"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("recv as nobody");
    s.wait_port(1, 7001, "dgram");

    let status_as = |nobody: bool| -> serde_json::Value {
        let mut cmd = if nobody {
            s.cli_as_nobody(1, &["status", "--json"])
        } else {
            s.cli(1, &["status", "--json"])
        };
        let o = run_limited(cmd.stdin(Stdio::null()), Duration::from_secs(20));
        assert_eq!(code(&o), 0, "{}", text(&o.stderr));
        serde_json::from_slice(&o.stdout).expect("JSON")
    };
    let port = |v: &serde_json::Value, p: u64| {
        v["ports"]
            .as_array()
            .and_then(|a| a.iter().find(|x| x["port"] == p).cloned())
            .unwrap_or_else(|| panic!("port {p} missing: {v}"))
    };
    let stream_of = |v: &serde_json::Value| {
        let a = v["streams"].as_array().cloned().unwrap_or_default();
        assert_eq!(a.len(), 1, "{v}");
        a[0].clone()
    };
    let me = std::process::id();

    let root = status_as(false);
    assert_eq!(port(&root, 7000)["owner"]["uid"], 0);
    assert_eq!(port(&root, 7000)["owner"]["pid"], me);
    assert_eq!(port(&root, 7001)["owner"]["uid"], 65534);
    let st = stream_of(&root);
    assert_eq!(st["peer"], "2:7100");
    assert_eq!(st["owner"]["uid"], 0);
    assert_eq!(
        (st["bytes_out"].clone(), st["bytes_in"].clone()),
        (5.into(), 5.into())
    );
    // Buffer budgets: root's stream holds some; root sees each user's.
    let buffers_of = |v: &serde_json::Value, uid: u64| {
        v["buffers"]
            .as_array()
            .and_then(|a| a.iter().find(|b| b["uid"] == uid).cloned())
    };
    assert!(root["buffered"].as_u64() > Some(0), "{root}");
    assert!(buffers_of(&root, 0).is_some(), "{root}");

    let other = status_as(true);
    // Ports and counts for everyone...
    assert_eq!(port(&other, 7000)["kind"], "dgram");
    assert!(other["clients"].as_u64() >= Some(4), "{other}");
    let st = stream_of(&other);
    assert_eq!(st["peer"], "2:7100");
    // ...but not who holds root's, nor its byte counts; its own port shows its owner.
    assert!(port(&other, 7000).get("owner").is_none(), "{other}");
    assert!(
        st.get("owner").is_none() && st.get("bytes_in").is_none(),
        "{st}"
    );
    assert!(st.get("bytes_out").is_none(), "{st}");
    assert_eq!(port(&other, 7001)["owner"]["uid"], 65534);
    // The total is a count everyone sees; what root holds is root's business.
    assert_eq!(
        other["buffered"].as_u64().map(|b| b > 0),
        Some(true),
        "{other}"
    );
    assert!(buffers_of(&other, 0).is_none(), "{other}");
    // The text view hides the same.
    let o = run_limited(
        s.cli_as_nobody(1, &["status"]).stdin(Stdio::null()),
        Duration::from_secs(20),
    );
    let txt = text(&o.stdout);
    assert!(!txt.contains("uid 0 "), "{txt}");
    assert!(txt.contains("uid 65534 "), "{txt}");

    let _ = nobody_recv.kill();
    let _ = nobody_recv.wait();
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.status(1)["ports"].contains("7001/") {
        assert!(Instant::now() < deadline, "nobody's port never freed");
        std::thread::sleep(Duration::from_millis(20));
    }
}
