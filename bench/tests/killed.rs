// SPDX-License-Identifier: MIT OR Apache-2.0
//! A benchmark killed mid-run takes its stack with it: no simulator, daemon or peer outlives it.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The pids of the processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        if String::from_utf8_lossy(&cmdline).contains(needle) {
            found.push(pid);
        }
    }
    found
}

#[test]
fn a_killed_benchmark_leaves_no_process_behind() {
    let exe = Path::new(env!("CARGO_BIN_EXE_v4v-bench"));
    let mut bench = Command::new(exe)
        .args(["--quick", "--streams", "0", "--rounds", "1000000,1000000"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run v4v-bench");
    // Its stack lives in a directory named after its pid, which every stack process's command
    // line names (the simulator's socket, the daemons' sockets).
    let dir = std::env::temp_dir().join(format!("v4v-bench-{}", bench.id()));
    let needle = dir.to_string_lossy().into_owned();
    let deadline = Instant::now() + Duration::from_secs(60);
    while processes_mentioning(&needle).len() < 3 {
        assert!(Instant::now() < deadline, "the stack did not start");
        assert!(bench.try_wait().unwrap().is_none(), "v4v-bench ended early");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Until the round trips: the peers are running too.
    std::thread::sleep(Duration::from_millis(500));
    bench.kill().unwrap();
    bench.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = processes_mentioning(&needle);
        if left.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            for pid in &left {
                // SAFETY: kill(2) with a pid we found; the test's own leftovers.
                unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
            }
            panic!("processes left behind by a killed v4v-bench: {left:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = std::fs::remove_dir_all(&dir);
}
