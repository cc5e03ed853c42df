// SPDX-License-Identifier: MIT OR Apache-2.0
//! `v4v-cli listen PORT --exec CMD` as real processes on the simulator stack: a command per
//! stream, its environment, --max-children, how the stream ends when the command exits or is
//! killed, and where its stderr goes.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::Shutdown;
use std::process::{Child, Stdio};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use common::{Stack, run_limited};
use v4v::client::{SockAddr, Stream};

/// A running `v4v-cli listen --exec`, its stderr collected; killed on drop.
struct Server {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    fn start(s: &Stack, port: u32, extra: &[&str], cmd: &[&str]) -> Server {
        let p = port.to_string();
        let mut args = vec!["listen", &p];
        args.extend_from_slice(extra);
        args.push("--exec");
        args.extend_from_slice(cmd);
        let mut child = s
            .cli(0, &args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn listen --exec");
        let err = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let l2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                l2.lock().expect("log").push(line);
            }
        });
        s.wait_port(0, port, "listen");
        Server { child, log }
    }

    fn wait_log(&self, parts: &[&str], count: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let found: Vec<String> = self
                .log
                .lock()
                .expect("log")
                .iter()
                .filter(|l| parts.iter().all(|p| l.contains(p)))
                .cloned()
                .collect();
            if found.len() >= count {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "fewer than {count} log lines with {parts:?}: {:?}",
                self.log.lock().expect("log")
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn connect(s: &Stack, dom: u16, port: u32) -> Stream {
    let c = Stream::connect_with(&s.sock(dom), SockAddr::new(0, port)).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    c
}

/// Reads one line, byte by byte (the rest of the stream stays unread).
fn read_line(c: &mut Stream) -> String {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while c.read(&mut b).expect("read a line") == 1 && b[0] != b'\n' {
        line.push(b[0]);
    }
    String::from_utf8(line).expect("utf-8")
}

#[test]
fn twenty_children_at_once_each_with_its_peer_in_the_environment() {
    const N: usize = 20;
    let s = Stack::start(&[0, 1, 2]);
    let srv = Server::start(
        &s,
        95,
        &["--max-children", "20"],
        &[
            "sh",
            "-c",
            r#"echo "$V4V_PEER_DOMAIN $V4V_PEER_PORT $V4V_LOCAL_PORT $$"; exec tr a-z A-Z"#,
        ],
    );
    let all_started = Arc::new(Barrier::new(N));
    let socks = [s.sock(1), s.sock(2)];
    let clients: Vec<_> = (0..N)
        .map(|i| {
            let all_started = all_started.clone();
            let sock = socks[i % 2].clone();
            std::thread::spawn(move || {
                let dom = 1 + (i % 2) as u16;
                let mut c = Stream::connect_with(&sock, SockAddr::new(0, 95)).expect("connect");
                c.set_read_timeout(Some(Duration::from_secs(20)))
                    .expect("timeout");
                let env = read_line(&mut c);
                let f: Vec<&str> = env.split(' ').collect();
                assert_eq!(f.len(), 4, "{env:?}");
                assert_eq!(f[0], dom.to_string(), "V4V_PEER_DOMAIN");
                assert_eq!(f[1], c.local_port().to_string(), "V4V_PEER_PORT");
                assert_eq!(f[2], "95", "V4V_LOCAL_PORT");
                let pid: u32 = f[3].parse().expect("pid");
                // Every child is running now, at the same time.
                all_started.wait();
                let text = format!("connection {i} from domain {dom}\n");
                c.write_all(text.as_bytes()).expect("write");
                c.shutdown(Shutdown::Write).expect("shutdown");
                let mut back = String::new();
                c.read_to_string(&mut back).expect("an orderly end");
                assert_eq!(back, text.to_uppercase());
                pid
            })
        })
        .collect();
    let mut pids: Vec<u32> = clients
        .into_iter()
        .map(|c| c.join().expect("client"))
        .collect();
    pids.sort_unstable();
    pids.dedup();
    assert_eq!(pids.len(), N, "one process per connection");
    let lines = srv.wait_log(&["exited with status 0; stream closed"], N);
    assert!(lines.iter().any(|l| l.contains("1:")) && lines.iter().any(|l| l.contains("2:")));
}

#[test]
fn max_children_makes_extra_connections_wait() {
    let s = Stack::start(&[0, 1]);
    let srv = Server::start(
        &s,
        96,
        &["--max-children", "2"],
        &["sh", "-c", "echo started; cat"],
    );
    let mut a = connect(&s, 1, 96);
    let mut b = connect(&s, 1, 96);
    assert_eq!(read_line(&mut a), "started");
    assert_eq!(read_line(&mut b), "started");
    let mut c = connect(&s, 1, 96);
    c.set_read_timeout(Some(Duration::from_millis(1500)))
        .expect("timeout");
    let mut one = [0u8; 1];
    let e = c
        .read(&mut one)
        .expect_err("a third child ran past --max-children 2");
    assert!(
        matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
        "{e}"
    );
    // One child ends: the waiting connection gets its own.
    a.shutdown(Shutdown::Write).expect("shutdown");
    let mut rest = Vec::new();
    a.read_to_end(&mut rest).expect("orderly end");
    c.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut line = [0u8; 8];
    c.read_exact(&mut line).expect("the third child's greeting");
    assert_eq!(&line, b"started\n");
    drop(b);
    srv.wait_log(&["exited with status 0"], 1);
}

#[test]
fn a_child_that_exits_while_the_peer_still_sends_ends_the_stream_orderly() {
    let s = Stack::start(&[0, 1]);
    let srv = Server::start(&s, 97, &[], &["head", "-c", "5"]);
    // The client sends 4 MiB; the command takes 5 bytes, echoes them, exits.
    let script = format!(
        "head -c 4000000 /dev/zero | tr '\\0' x | {} --socket {} connect 0:97",
        common::cli_bin().display(),
        s.sock(1).display()
    );
    let o = run_limited(
        std::process::Command::new("sh").args(["-c", &script]),
        Duration::from_secs(30),
    );
    assert_eq!(
        o.status.code(),
        Some(0),
        "not an orderly end: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(o.stdout, b"xxxxx");
    srv.wait_log(&["head (pid ", "exited with status 0; stream closed"], 1);
    // A failing command's status is logged; its stream still ends orderly.
    let srv = Server::start(&s, 98, &[], &["sh", "-c", "echo bye; exit 3"]);
    let mut c = connect(&s, 1, 98);
    let mut out = String::new();
    c.read_to_string(&mut out).expect("orderly end");
    assert_eq!(out, "bye\n");
    srv.wait_log(&["sh (pid ", "exited with status 3; stream closed"], 1);
}

#[test]
fn a_killed_child_resets_the_stream() {
    let s = Stack::start(&[0, 1]);
    let srv = Server::start(&s, 99, &[], &["sh", "-c", "echo $$; exec sleep 60"]);
    let mut c = connect(&s, 1, 99);
    let pid: i32 = read_line(&mut c).parse().expect("pid");
    // SAFETY: kill(2) on the child the server started for this stream.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let t0 = Instant::now();
    let mut rest = Vec::new();
    let e = c
        .read_to_end(&mut rest)
        .expect_err("a killed child's stream read as an orderly end");
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
    assert!(t0.elapsed() < Duration::from_secs(5));
    srv.wait_log(
        &[&format!("(pid {pid}) killed by signal 9; stream reset")],
        1,
    );
    // `connect` reports it as a reset (status 7).
    let srv2 = Server::start(&s, 100, &[], &["sh", "-c", "kill -TERM $$"]);
    let o = s.run(1, &["connect", "0:100"]);
    assert_eq!(
        o.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    srv2.wait_log(&["killed by signal 15; stream reset"], 1);
}

#[test]
fn the_childs_stderr_goes_to_the_log_not_the_peer() {
    let s = Stack::start(&[0, 1]);
    let srv = Server::start(
        &s,
        101,
        &[],
        &[
            "sh",
            "-c",
            "echo diagnostic-for-the-admin >&2; echo for-the-peer",
        ],
    );
    let mut c = connect(&s, 1, 101);
    let mut out = String::new();
    c.read_to_string(&mut out).expect("orderly end");
    assert_eq!(out, "for-the-peer\n");
    srv.wait_log(&["diagnostic-for-the-admin"], 1);
    // A command that cannot run: the stream is reset, the log says why, the server goes on.
    let bad = Server::start(&s, 102, &[], &["/nonexistent/command"]);
    for _ in 0..2 {
        let mut c = connect(&s, 1, 102);
        let mut rest = Vec::new();
        let e = c.read_to_end(&mut rest).expect_err("not an orderly end");
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
    }
    bad.wait_log(&["cannot run \"/nonexistent/command\"", "stream reset"], 2);
}

#[test]
fn bad_exec_usage_is_refused_with_status_2() {
    let s = Stack::start(&[0]);
    let o = s.run(
        0,
        &["listen", "103", "--max-children", "0", "--exec", "cat"],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--max-children must be at least 1"));
    let o = s.run(0, &["listen", "103", "--once", "--exec", "cat"]);
    assert_eq!(o.status.code(), Some(2));
}
