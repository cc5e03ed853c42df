// SPDX-License-Identifier: MIT OR Apache-2.0
//! The benchmark's remote mode (dom0 ↔ guest on Xen) on the simulator: `v4v-bench serve` in
//! domain 1 runs the V4V peers, `v4v-bench --peer-at 1:PORT` receives in domain 2. The figures
//! come from the runs, the peer's CPU time comes back from the server with its daemon's, the
//! rows the remote mode cannot measure are left out, and the server refuses what it must not run
//! and goes on serving.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::Shutdown;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use v4v::client::{SockAddr, Stream};

/// Kills and reaps its processes (in reverse order: daemons before the simulator).
struct Procs(Vec<Child>, PathBuf);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in self.0.iter_mut().rev() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !ok() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "{what} did not come up"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `v4v-sim` and daemons for domains 1 and 2, with the server in domain 1 on `port`.
fn stack(dir: &Path, port: u32) -> (Procs, [PathBuf; 2], [u32; 3]) {
    let bin = Path::new(env!("CARGO_BIN_EXE_v4v-bench")).parent().unwrap();
    for b in ["v4v-sim", "v4vd"] {
        assert!(
            bin.join(b).exists(),
            "{b} is not built next to v4v-bench: run `cargo build --workspace` first"
        );
    }
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let sim_sock = dir.join("sim.sock");
    let mut p = Procs(Vec::new(), dir.to_path_buf());
    p.0.push(
        Command::new(bin.join("v4v-sim"))
            .arg("--socket")
            .arg(&sim_sock)
            .args(["--log-level", "error"])
            .spawn()
            .unwrap(),
    );
    wait_for("v4v-sim", || sim_sock.exists());
    let socks = [dir.join("d1.sock"), dir.join("d2.sock")];
    for (i, s) in socks.iter().enumerate() {
        p.0.push(
            Command::new(bin.join("v4vd"))
                .arg("--hypervisor")
                .arg(format!("sim:{}", sim_sock.display()))
                .args(["--domid", &(i + 1).to_string(), "--socket"])
                .arg(s)
                .env("V4VD_LOG", "error")
                .spawn()
                .unwrap(),
        );
        wait_for("v4vd", || v4v::client::status(s).is_ok());
    }
    let pids = [p.0[0].id(), p.0[1].id(), p.0[2].id()];
    let mut serve = Command::new(env!("CARGO_BIN_EXE_v4v-bench"))
        .args(["serve", "--port", &port.to_string(), "--socket"])
        .arg(&socks[0])
        .args(["--pids", &pids[1].to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(serve.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(
        line.trim(),
        format!("v4v-bench serve: listening on port {port}")
    );
    p.0.push(serve);
    (p, socks, pids)
}

/// One request to the server from domain 2, and its answer.
fn ask(sock: &Path, port: u32, req: &[u8]) -> Value {
    let mut s = Stream::connect_with(sock, SockAddr::new(1, port)).expect("connect to serve");
    s.write_all(req).unwrap();
    // The end of the request (for the one without a newline, the server sees it end).
    s.shutdown(Shutdown::Write).unwrap();
    let mut b = String::new();
    s.read_to_string(&mut b).unwrap();
    serde_json::from_str(b.trim()).unwrap_or_else(|e| panic!("answer {b:?}: {e}"))
}

#[test]
fn quick_run_with_the_peers_in_another_domain() {
    let dir = std::env::temp_dir().join(format!("v4v-bench-remote-{}", std::process::id()));
    let port = 7700;
    let (procs, socks, pids) = stack(&dir, port);

    // What the server refuses, each with its reason; it goes on serving after each.
    for (req, why) in [
        (&b"unix-echo\n"[..], "not served"),
        (b"v4v-hold 5\n", "not served"),
        (b"v4v-stream-echo /etc/passwd 0 9\n", "takes 2 arguments"),
        (b"v4v-dgram-echo 0 --help\n", "not a number"),
        (b"v4v-dgram-echo 0 9", "before its newline"),
    ] {
        let v = ask(&socks[1], port, req);
        assert_eq!(v["ok"], false, "{v}");
        assert!(v["stderr"].as_str().unwrap().contains(why), "{why}: {v}");
    }
    // A role that fails in the peer: its failure and stderr come back.
    let v = ask(&socks[1], port, b"v4v-stream-echo 2 1\n");
    assert_eq!(v["ok"], false, "{v}");
    assert!(!v["stderr"].as_str().unwrap().is_empty(), "{v}");

    let t0 = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_v4v-bench"))
        .args([
            "--quick",
            "--warmup",
            "--json",
            "--peer-at",
            &format!("1:{port}"),
        ])
        .arg("--socket")
        .arg(&socks[1])
        .args(["--pids", &format!("{},{}", pids[0], pids[2])])
        .args(["--bytes", "2097152,8388608", "--dgrams", "300,3000"])
        .args(["--rounds", "200,2000"])
        .output()
        .expect("run v4v-bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "v4v-bench failed: {stderr}");
    assert!(
        t0.elapsed() < Duration::from_secs(120),
        "{:?}",
        t0.elapsed()
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(v["env"]["remote_peer"], "1:7700");
    // The warm-up pair ran (a quarter of the sizes) but is not among the samples.
    assert_eq!(v["env"]["warmup"], true);
    let rows = v["rows"].as_array().expect("rows");
    let keys: Vec<&str> = rows.iter().map(|r| r["key"].as_str().unwrap()).collect();
    // No pinned round trips (the peer's CPU is not ours to pin) and no idle rows.
    assert!(
        !keys
            .iter()
            .any(|k| k.contains("pinned_") && !k.contains("unpinned")),
        "{keys:?}"
    );
    assert!(!keys.iter().any(|k| k.starts_with("idle")), "{keys:?}");
    for k in [
        "stream_64k",
        "stream_4k",
        "dgram_64",
        "dgram_4k",
        "cpu_per_gb",
        "stream_64k_shm",
        "stream_4k_shm",
        "cpu_per_gb_shm",
        "rtt_stream_shm_unpinned_p50",
    ] {
        assert!(keys.contains(&k), "{k}: {keys:?}");
    }
    for k in ["rtt_datagram_unpinned_p50", "rtt_stream_unpinned_p999"] {
        assert!(keys.contains(&k), "{k}: {keys:?}");
    }
    let row = |k: &str| rows.iter().find(|r| r["key"] == k).unwrap();
    let s = &row("stream_64k")["samples"]["v4v"][0];
    assert_eq!(
        row("stream_64k")["samples"]["v4v"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(s["bytes"], 2097152);
    assert_eq!(row("dgram_64")["samples"]["unix"][0]["msgs"], 3000);
    // The V4V side's CPU: this process, the peer and its daemon (reported by the server), and
    // the --pids of this side; the peer really did the sending.
    let cpu = s["cpu"].as_object().unwrap();
    let mut names: Vec<&str> = cpu.keys().map(String::as_str).collect();
    names.sort_unstable();
    let want = [
        "bench".to_string(),
        "peer".to_string(),
        format!("pid {}", pids[0]),
        format!("pid {}", pids[2]),
        format!("remote pid {}", pids[1]),
    ];
    let mut want: Vec<&str> = want.iter().map(String::as_str).collect();
    want.sort_unstable();
    assert_eq!(names, want);
    assert!(cpu["peer"].as_f64().unwrap() > 0.0, "{s}");
    let unix = &row("stream_64k")["samples"]["unix"][0]["cpu"];
    let mut names: Vec<&str> = unix
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["bench", "peer"]);
    for r in rows {
        assert!(stderr.contains(r["label"].as_str().unwrap()), "{stderr}");
        if let (Some(x), Some(b), Some(q)) = (
            r["v4v"].as_f64(),
            r["baseline"].as_f64(),
            r["ratio"].as_f64(),
        ) {
            assert!(
                x > 0.0 && b > 0.0 && (q - x / b).abs() <= 1e-9 * q.abs().max(1.0),
                "{r}"
            );
        }
    }
    assert!(
        stderr.contains("client in domain 1 (v4v-bench serve at 1:7700)"),
        "{stderr}"
    );
    drop(procs);
}
