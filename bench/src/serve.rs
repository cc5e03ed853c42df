// SPDX-License-Identifier: MIT OR Apache-2.0
//! `v4v-bench serve`: runs the benchmark's V4V peer roles on request for a parent in another
//! domain (`v4v-bench --peer-at DOM:PORT` in dom0, this in a guest), and sends back what each
//! peer's run cost in this domain, which the parent cannot read from its own `/proc`.
//!
//! ```text
//! v4v-bench serve --port N [--socket PATH] [--pids PID,...]
//! ```
//!
//! It listens on V4V port N of its daemon (`--socket`, default the client's default socket).
//! Each accepted stream carries one request line, `ROLE ARG...`: a V4V role of [`crate::peer`]
//! with its arguments except the daemon socket, which is always this server's (a parent cannot
//! point the peer anywhere else). Only the roles in [`ROLES`] are run, each with its exact
//! number of numeric arguments. The server runs `v4v-bench __peer ROLE SOCKET ARG...`, waits
//! for it and answers with one JSON line before closing the stream:
//! `{"ok": bool, "exit": "...", "stderr": "...", "cpu": {"peer": SECS, "remote pid N": SECS}}`
//! — the peer's CPU time (`getrusage` of the reaped child) and that of every `--pids` process
//! (this domain's v4vd) over the peer's run. A bad request gets `ok: false` and the reason; the
//! server goes on with the next one. One request at a time: runs are never concurrent.
//!
//! Owns its listener, the control stream of the request it is serving and the peer process of
//! that request; only observes the `--pids` processes.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{Value, json};
use v4v::client::Listener;

use crate::sys;

/// The roles a remote parent may ask for, with how many numeric arguments each takes after
/// the role (the socket not counted).
pub const ROLES: &[(&str, usize)] = &[
    ("v4v-stream-send", 4),
    ("v4v-stream-echo", 2),
    ("v4v-shm-stream-send", 4),
    ("v4v-shm-stream-echo", 2),
    ("v4v-dgram-send", 4),
    ("v4v-dgram-echo", 2),
];
/// The longest request line accepted.
pub const MAX_REQUEST: usize = 512;
/// How much of a failed peer's stderr goes back.
const MAX_STDERR: u64 = 4096;

#[derive(Debug, PartialEq, Eq)]
pub struct ServeOpts {
    pub sock: PathBuf,
    pub port: u32,
    pub pids: Vec<u32>,
}

pub const USAGE: &str = "usage: v4v-bench serve --port N [--socket PATH] [--pids PID,...]";

pub fn parse_args(args: &[String]) -> Result<ServeOpts, String> {
    let (mut sock, mut port, mut pids) = (None, None, Vec::new());
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().ok_or(format!("{a} needs a value\n{USAGE}"));
        match a.as_str() {
            "--socket" => sock = Some(PathBuf::from(val()?)),
            "--port" => {
                let v = val()?;
                port = Some(
                    v.parse::<u32>()
                        .ok()
                        .filter(|&p| p > 0)
                        .ok_or(format!("--port: {v:?} is not a port number"))?,
                );
            }
            "--pids" => {
                for p in val()?.split(',') {
                    pids.push(
                        p.parse::<u32>()
                            .map_err(|_| format!("--pids: {p:?} is not a pid"))?,
                    );
                }
            }
            "-h" | "--help" => return Err(USAGE.into()),
            _ => return Err(format!("unknown argument {a}\n{USAGE}")),
        }
    }
    Ok(ServeOpts {
        sock: sock.unwrap_or_else(v4v::client::socket_path),
        port: port.ok_or(format!("--port is required\n{USAGE}"))?,
        pids,
    })
}

/// The peer's command line for request `line`: `[ROLE, SOCK, ARG...]`, or why it is refused.
pub fn parse_request(line: &str, sock: &Path) -> Result<Vec<String>, String> {
    let mut words = line.split_ascii_whitespace();
    let role = words.next().ok_or("empty request")?;
    let &(_, n) = ROLES
        .iter()
        .find(|(r, _)| *r == role)
        .ok_or_else(|| format!("role {role:?} is not served (only V4V peer roles are)"))?;
    let args: Vec<&str> = words.collect();
    if args.len() != n {
        return Err(format!(
            "{role} takes {n} arguments, the request has {}",
            args.len()
        ));
    }
    if let Some(bad) = args.iter().find(|a| a.parse::<u64>().is_err()) {
        return Err(format!("{role}: argument {bad:?} is not a number"));
    }
    let mut v = vec![role.to_string(), sock.display().to_string()];
    v.extend(args.iter().map(|a| a.to_string()));
    Ok(v)
}

/// Reads one request line (up to [`MAX_REQUEST`] bytes).
fn read_line(r: &mut impl Read) -> Result<String, String> {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        match r.read(&mut b) {
            Ok(0) => return Err("the request ended before its newline".into()),
            Ok(_) if b[0] == b'\n' => break,
            Ok(_) if line.len() >= MAX_REQUEST => {
                return Err(format!("request longer than {MAX_REQUEST} bytes"));
            }
            Ok(_) => line.push(b[0]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("reading the request: {e}")),
        }
    }
    String::from_utf8(line).map_err(|_| "the request is not UTF-8".into())
}

/// Runs the peer of one request and says how it went.
fn run_peer(exe: &Path, o: &ServeOpts, args: &[String]) -> Value {
    let cpu0: Vec<_> = o.pids.iter().map(|&p| sys::cpu_time(p)).collect();
    let children0 = sys::rusage(libc::RUSAGE_CHILDREN);
    let child = sys::die_with_parent(&mut Command::new(exe))
        .arg("__peer")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            return json!({"ok": false, "exit": "not started", "stderr": format!("spawn the peer: {e}")});
        }
    };
    let mut err = String::new();
    if let Some(s) = child.stderr.take() {
        let _ = s.take(MAX_STDERR).read_to_string(&mut err);
    }
    let st = child.wait();
    let mut cpu = serde_json::Map::new();
    cpu.insert(
        "peer".into(),
        json!((sys::rusage(libc::RUSAGE_CHILDREN) - children0).as_secs_f64()),
    );
    for (&pid, t0) in o.pids.iter().zip(cpu0) {
        if let (Ok(t0), Ok(t1)) = (t0, sys::cpu_time(pid)) {
            cpu.insert(
                format!("remote pid {pid}"),
                json!(t1.saturating_sub(t0).as_secs_f64()),
            );
        }
    }
    match st {
        Ok(st) => json!({"ok": st.success(), "exit": st.to_string(), "stderr": err, "cpu": cpu}),
        Err(e) => json!({"ok": false, "exit": format!("wait: {e}"), "stderr": err}),
    }
}

pub fn main(args: &[String]) -> Result<(), String> {
    let o = parse_args(args)?;
    let exe = std::env::current_exe().map_err(|e| format!("own executable: {e}"))?;
    for &pid in &o.pids {
        sys::cpu_time(pid).map_err(|e| format!("--pids: process {pid}: {e}"))?;
    }
    let mut l = Listener::bind_with(&o.sock, o.port)
        .map_err(|e| format!("listen on port {} of {}: {e}", o.port, o.sock.display()))?;
    println!("v4v-bench serve: listening on port {}", o.port);
    loop {
        // Only the daemon's failure ends the server: a bad request is answered and forgotten.
        let (mut s, from) = l.accept().map_err(|e| format!("accept: {e}"))?;
        let reply = match read_line(&mut s).and_then(|line| parse_request(&line, &o.sock)) {
            Ok(args) => run_peer(&exe, &o, &args),
            Err(e) => json!({"ok": false, "exit": "refused", "stderr": e}),
        };
        if reply["ok"] != json!(true) {
            eprintln!("v4v-bench serve: request from {from}: {}", reply["stderr"]);
        }
        let _ = writeln!(s, "{reply}").and_then(|()| s.flush());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn options() {
        let o = parse_args(&args(&[
            "--port", "7700", "--socket", "/s", "--pids", "3,4",
        ]))
        .unwrap();
        assert_eq!(
            o,
            ServeOpts {
                sock: "/s".into(),
                port: 7700,
                pids: vec![3, 4]
            }
        );
        assert!(
            parse_args(&args(&[]))
                .unwrap_err()
                .contains("--port is required")
        );
        assert!(parse_args(&args(&["--port", "0"])).is_err());
        assert!(parse_args(&args(&["--port", "x"])).is_err());
        assert!(parse_args(&args(&["--port", "1", "--pids", "1,x"])).is_err());
        assert!(parse_args(&args(&["--port"])).is_err());
        assert!(parse_args(&args(&["--bogus"])).is_err());
    }

    #[test]
    fn requests() {
        let s = Path::new("/run/v4v.sock");
        assert_eq!(
            parse_request("v4v-stream-send 0 5000 1048576 65536", s).unwrap(),
            args(&[
                "v4v-stream-send",
                "/run/v4v.sock",
                "0",
                "5000",
                "1048576",
                "65536"
            ])
        );
        assert_eq!(
            parse_request("v4v-dgram-echo 0 9", s).unwrap(),
            args(&["v4v-dgram-echo", "/run/v4v.sock", "0", "9"])
        );
        // Not a served role: the Unix ones, the holder (it needs a pipe), anything else.
        for bad in ["unix-echo", "v4v-hold 5", "rm -rf /", ""] {
            assert!(parse_request(bad, s).is_err(), "{bad:?}");
        }
        // The socket is the server's: a request cannot name one, nor carry a flag.
        assert!(parse_request("v4v-stream-echo /tmp/other.sock 0 9", s).is_err());
        assert!(parse_request("v4v-stream-echo 0 --help", s).is_err());
        assert!(parse_request("v4v-dgram-send 0 9 10", s).is_err());
        assert!(parse_request("v4v-dgram-echo 0 9 10", s).is_err());
    }

    #[test]
    fn request_lines_are_bounded() {
        assert_eq!(read_line(&mut &b"a b\nrest"[..]).unwrap(), "a b");
        assert!(read_line(&mut &b"no newline"[..]).is_err());
        let long = vec![b'x'; MAX_REQUEST + 10];
        assert!(read_line(&mut &long[..]).unwrap_err().contains("longer"));
        assert!(read_line(&mut &b"\xff\n"[..]).is_err());
    }
}
