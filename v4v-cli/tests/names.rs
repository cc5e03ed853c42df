// SPDX-License-Identifier: MIT OR Apache-2.0
//! Domains by name on the simulator: guests named by `v4vd --name`, dom0 publishing some of them
//! (`--publish-names`), names in `v4v-cli` addresses, in ACL rules that follow a domain destroyed
//! and re-created under another id, names that fail closed, `V4V_PEER_NAME` for `listen --exec`,
//! and a hostile user who cannot make a name mean another domain.

mod common;

use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use common::{Stack, bin, run_limited};

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_string()
}

/// Runs `v4v-cli` in `domid`, asserts its exit status, returns (stdout, stderr).
fn cli(s: &Stack, domid: u16, args: &[&str], want: i32) -> (String, String) {
    let o = s.run(domid, args);
    assert_eq!(
        code(&o),
        want,
        "v4v-cli {args:?} in dom{domid}: stdout {:?} stderr {:?}",
        text(&o.stdout),
        text(&o.stderr)
    );
    (text(&o.stdout), text(&o.stderr))
}

/// One datagram from `from` to `dest` (an address as the CLI takes it), received at `to:port`:
/// whether it arrived (exit 0 and received) or was denied (exit 6).
fn delivered(s: &Stack, from: u16, dest: &str, to: u16, port: u32) -> bool {
    let mut rx = v4v::client::Datagram::bind_with(&s.sock(to), port, None).expect("bind");
    let o = s.run(from, &["send", dest, "probe"]);
    match code(&o) {
        0 => {
            let (b, src) = rx
                .recv_timeout(Some(Duration::from_secs(10)))
                .expect("a datagram within 10 s");
            assert_eq!(b, b"probe");
            assert_eq!(src.domid, from, "the hypervisor says who sent it");
            true
        }
        6 => false,
        c => panic!("send {dest} from dom{from}: exit {c}: {}", text(&o.stderr)),
    }
}

/// Waits (at most 15 s: dom0 looks at names every second) until `acl list` contains `want`.
fn wait_table(s: &Stack, want: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (out, _) = cli(s, 0, &["acl", "list"], 0);
        if out.contains(want) {
            return out;
        }
        assert!(
            Instant::now() < deadline,
            "acl list never showed {want:?}; it shows:\n{out}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until `name` resolves to `want` (None: does not resolve) in `domid`.
fn wait_resolves(s: &Stack, domid: u16, name: &str, want: Option<u16>) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let got = v4v::client::resolve(&s.sock(domid), name).ok();
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} in dom{domid}: {got:?}, wanted {want:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs `f` on a thread whose credentials are nobody's (raw setresuid changes only the calling
/// thread; the daemon reads them with SO_PEERCRED).
fn as_nobody_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        // SAFETY: plain system calls on this thread's own credentials; no pointers but null.
        unsafe {
            libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>());
            libc::syscall(libc::SYS_setresgid, 65534, 65534, 65534);
            assert_eq!(libc::syscall(libc::SYS_setresuid, 65534, 65534, 65534), 0);
        }
        f()
    })
    .join()
    .expect("thread as nobody")
}

fn stack() -> Stack {
    let mut s = Stack::start(&[]);
    s.start_daemon(0, &["--publish-names", "web,db"]);
    s.start_daemon(2, &["--name", "web"]);
    s.start_daemon(3, &["--name", "backup"]);
    s
}

#[test]
fn names_resolve_in_addresses_and_guests_see_only_what_dom0_publishes() {
    let s = stack();
    // dom0 sees every name; ids are never looked up.
    assert!(delivered(&s, 0, "web:5000", 2, 5000));
    assert!(delivered(&s, 0, "name:backup:5001", 3, 5001));
    assert!(delivered(&s, 0, "2:5002", 2, 5002));
    // A guest sees what dom0 published (web) and its own name, not the others'.
    wait_resolves(&s, 3, "web", Some(2));
    assert!(delivered(&s, 3, "web:5003", 2, 5003));
    assert!(delivered(&s, 3, "backup:5004", 3, 5004));
    let (_, err) = cli(&s, 2, &["send", "backup:5005", "x"], 11);
    assert!(
        err.contains("backup") && err.contains("publish"),
        "a name dom0 did not publish: {err}"
    );
    // A name nobody has: a clear error and its own status, nothing sent.
    let (_, err) = cli(&s, 0, &["send", "nosuch:5000", "x"], 11);
    assert!(err.contains("nosuch"), "{err}");
    let (_, err) = cli(&s, 3, &["connect", "nosuch:22"], 11);
    assert!(err.contains("nosuch"), "{err}");
    let o = run_limited(
        s.cli(3, &["forward", "tcp-listen:127.0.0.1:0", "v4v:nosuch:80"])
            .stdin(Stdio::null()),
        Duration::from_secs(20),
    );
    assert_eq!(
        code(&o),
        11,
        "forward to a name nobody has: {}",
        text(&o.stderr)
    );
    // Bad names are usage errors before anything is asked.
    let (_, err) = cli(&s, 0, &["send", "we b:5000", "x"], 2);
    assert!(err.contains("we b"), "{err}");
    // recv --from by name: the hypervisor filters by the id it stands for.
    let recv = s.spawn(
        0,
        &["recv", "6000", "--from", "web", "--count", "1"],
        Stdio::null(),
    );
    s.wait_port(0, 6000, "dgram");
    cli(&s, 2, &["send", "0:6000", "from web"], 0);
    let o = common::wait_limited(recv, Duration::from_secs(20));
    assert_eq!(text(&o.stdout), "from web\n");
    // The client API: SockAddr::resolve.
    let a = v4v::client::SockAddr::resolve_with(&s.sock(3), "web:80").expect("resolve");
    assert_eq!(a, v4v::client::SockAddr::new(2, 80));
    let a = v4v::client::SockAddr::resolve_with(&s.sock(3), "9:80").expect("an id");
    assert_eq!(a, v4v::client::SockAddr::new(9, 80));
    assert!(matches!(
        v4v::client::SockAddr::resolve_with(&s.sock(3), "db:80"),
        Err(v4v::client::Error::UnknownName(_))
    ));
}

#[test]
fn a_rule_by_name_follows_the_domain_and_fails_closed_while_it_is_gone() {
    let mut s = stack();
    // Default deny: only the domain named web may reach dom0's port 7000.
    cli(&s, 0, &["acl", "add", "accept name:web:* -> 0:7000"], 0);
    cli(&s, 0, &["acl", "add", "reject name:backup:* -> *:*"], 0);
    cli(&s, 0, &["acl", "add", "reject *:* -> 0:*"], 0);
    let out = wait_table(&s, "web = domain 2");
    assert!(out.contains("backup = domain 3"), "{out}");
    assert!(delivered(&s, 2, "0:7000", 0, 7000));
    assert!(!delivered(&s, 3, "0:7000", 0, 7000));
    // backup may send nothing at all, even to web.
    assert!(!delivered(&s, 3, "2:7001", 2, 7001));
    let (out, _) = cli(&s, 0, &["acl", "check", "web:1", "0:7000"], 0);
    assert!(out.contains("accepted by rule 1"), "{out}");

    // web goes away: its rule matches nothing (fail-closed), and says so.
    s.kill_daemon(2);
    wait_table(&s, "no domain is named web");
    // An unnamed domain that takes web's old id gets nothing from web's rule.
    s.start_daemon(2, &[]);
    assert!(!delivered(&s, 2, "0:7000", 0, 7000));
    s.kill_daemon(2);
    // web comes back as domain 5: the rule is 5's now.
    s.start_daemon(5, &["--name", "web"]);
    wait_table(&s, "web = domain 5");
    assert!(delivered(&s, 5, "0:7000", 0, 7000));
    wait_resolves(&s, 3, "web", Some(5));
    // The guest's view follows too (dom0 republished it).
    assert!(
        !delivered(&s, 3, "web:7002", 5, 7002),
        "backup is still refused"
    );

    // Rules by name are saved as names, and a rule for a name nobody has is fine to hold.
    cli(
        &s,
        0,
        &["acl", "insert", "1", "accept name:ghost:* -> 0:7000"],
        0,
    );
    let (saved, _) = cli(&s, 0, &["acl", "save"], 0);
    assert!(saved.contains("accept name:ghost:* -> 0:7000\n"), "{saved}");
    assert!(saved.contains("accept name:web:* -> 0:7000\n"), "{saved}");
    let (json, _) = cli(&s, 0, &["acl", "list", "--json"], 0);
    let v: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert_eq!(v[0]["names"]["ghost"], serde_json::Value::Null);
    assert_eq!(v[1]["names"]["web"], 5);
    // Deleting by the rule as written.
    cli(
        &s,
        0,
        &["acl", "delete", "accept name:ghost:* -> 0:7000"],
        0,
    );
    let (out, _) = cli(&s, 0, &["acl", "list"], 0);
    assert!(!out.contains("ghost"), "{out}");
}

#[test]
fn dom0s_rules_file_names_domains_and_bad_names_are_refused() {
    let mut s = Stack::start(&[]);
    let rules = s.dir.join("acl.rules");
    std::fs::write(
        &rules,
        "reject name:guest1:* -> 0:22   # by name\naccept *:* -> *:*\n",
    )
    .expect("rules");
    s.start_daemon(0, &["--acl-file", rules.to_str().expect("path")]);
    s.start_daemon(4, &["--name", "guest1"]);
    wait_table(&s, "guest1 = domain 4");
    assert!(!delivered(&s, 4, "0:22", 0, 22));
    // A rules file with a bad name is refused line by line, the table untouched.
    std::fs::write(s.dir.join("bad.rules"), "accept name:-x:* -> *:*\n").expect("bad");
    let (_, err) = cli(
        &s,
        0,
        &[
            "acl",
            "load",
            s.dir.join("bad.rules").to_str().expect("path"),
        ],
        2,
    );
    assert!(err.contains("bad.rules:1:") && err.contains("-x"), "{err}");
    let (out, _) = cli(&s, 0, &["acl", "list"], 0);
    assert!(out.contains("reject name:guest1:* -> 0:22"), "{out}");
    // A daemon refuses a name that is no name.
    for bad in ["7", "a b", ""] {
        let o = run_limited(
            std::process::Command::new(bin("v4vd"))
                .args(["--hypervisor"])
                .arg(format!("sim:{}", s.dir.join("sim.sock").display()))
                .args(["--domid", "9", "--socket"])
                .arg(s.dir.join("d9.sock"))
                .args(["--name", bad])
                .stdin(Stdio::null()),
            Duration::from_secs(20),
        );
        assert!(!o.status.success(), "--name {bad:?} was taken");
        assert!(text(&o.stderr).contains("name"), "{}", text(&o.stderr));
    }
}

#[test]
fn nobody_cannot_take_or_poison_a_name() {
    let s = stack();
    // Another domain claiming web is refused: web stays domain 2.
    let o = run_limited(
        std::process::Command::new(bin("v4vd"))
            .args(["--hypervisor"])
            .arg(format!("sim:{}", s.dir.join("sim.sock").display()))
            .args(["--domid", "8", "--socket"])
            .arg(s.dir.join("d8.sock"))
            .args(["--name", "web"])
            .stdin(Stdio::null()),
        Duration::from_secs(20),
    );
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("EADDRINUSE"),
        "{}",
        text(&o.stderr)
    );
    // The same as user nobody, and nobody's edits of rules by name.
    let o = run_limited(
        common::as_nobody(&bin("v4vd"))
            .args(["--hypervisor"])
            .arg(format!("sim:{}", s.dir.join("sim.sock").display()))
            .args(["--domid", "8", "--socket", "/tmp/v4v-names-nobody.sock"])
            .args(["--name", "web"])
            .stdin(Stdio::null()),
        Duration::from_secs(20),
    );
    assert!(!o.status.success(), "nobody's daemon claimed web");
    let o = run_limited(
        s.cli_as_nobody(0, &["acl", "add", "accept name:web:* -> *:*"])
            .stdin(Stdio::null()),
        Duration::from_secs(20),
    );
    assert_eq!(code(&o), 9, "{}", text(&o.stderr));
    // Nobody's requests read names, never write them.
    wait_resolves(&s, 3, "web", Some(2));
    let sock = s.sock(3);
    let replies = as_nobody_thread(move || {
        [
            "RESOLVE web",
            "NAMEOF 2",
            "RESOLVE web 8",
            "NAME web 8",
            "RESOLVE 7",
        ]
        .map(|line| {
            use std::io::{Read, Write};
            let mut c = std::os::unix::net::UnixStream::connect(&sock).expect("connect");
            c.write_all(format!("{line}\n").as_bytes()).expect("write");
            let mut reply = String::new();
            let _ = c.read_to_string(&mut reply);
            (line, reply)
        })
    });
    for (line, reply) in replies {
        match line {
            "RESOLVE web" => assert_eq!(reply, "OK 2\n"),
            "NAMEOF 2" => assert_eq!(reply, "OK web\n"),
            _ => assert!(reply.starts_with("ERR "), "{line}: {reply}"),
        }
    }
    wait_resolves(&s, 0, "web", Some(2));
}

#[test]
fn exec_children_get_the_peers_name() {
    let mut s = stack();
    s.start_daemon(6, &[]);
    // The server's own environment has a stale V4V_PEER_NAME: children must not inherit it.
    let mut server = s
        .cli(
            0,
            &[
                "listen",
                "7100",
                "--exec",
                "sh",
                "-c",
                "echo \"name=${V4V_PEER_NAME-unset} dom=$V4V_PEER_DOMAIN\"",
            ],
        )
        .env("V4V_PEER_NAME", "spoofed")
        .stdin(Stdio::null())
        .spawn()
        .expect("listen --exec");
    s.wait_port(0, 7100, "listen");
    let (out, _) = cli(&s, 2, &["connect", "0:7100"], 0);
    assert_eq!(out, "name=web dom=2\n");
    let (out, _) = cli(&s, 3, &["connect", "0:7100"], 0);
    assert_eq!(out, "name=backup dom=3\n");
    // A domain without a name: the variable is not set.
    let (out, _) = cli(&s, 6, &["connect", "0:7100"], 0);
    assert_eq!(out, "name=unset dom=6\n");
    let _ = server.kill();
    let _ = server.wait();
}

/// Kills and reaps a child when dropped, also when a test fails.
struct Reap(std::process::Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One TCP connection to the forwarder at `port`: what it reads until the end.
fn tcp_read(port: u16) -> String {
    use std::io::Read;
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).expect("tcp connect");
    c.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut out = String::new();
    let _ = c.read_to_string(&mut out);
    out
}

#[test]
fn forward_to_a_name_follows_the_domain_to_its_new_id() {
    let mut s = stack();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("a free port")
        .local_addr()
        .expect("addr")
        .port();
    let web2 = Reap(
        s.cli(2, &["listen", "7400", "--exec", "echo", "hello from 2"])
            .stdin(Stdio::null())
            .spawn()
            .expect("listen in web"),
    );
    s.wait_port(2, 7400, "listen");
    wait_resolves(&s, 3, "web", Some(2));
    let _fwd = Reap(
        s.cli(
            3,
            &[
                "forward",
                "--quiet",
                &format!("tcp-listen:127.0.0.1:{port}"),
                "v4v:web:7400",
            ],
        )
        .stdin(Stdio::null())
        .spawn()
        .expect("forward"),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "forward never listened");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(tcp_read(port), "hello from 2\n");
    // web is re-created as domain 5: the same forwarder reaches it there.
    drop(web2);
    s.kill_daemon(2);
    s.start_daemon(5, &["--name", "web"]);
    let _web5 = Reap(
        s.cli(5, &["listen", "7400", "--exec", "echo", "hello from 5"])
            .stdin(Stdio::null())
            .spawn()
            .expect("listen in the new web"),
    );
    s.wait_port(5, 7400, "listen");
    wait_resolves(&s, 3, "web", Some(5));
    assert_eq!(tcp_read(port), "hello from 5\n");
}
