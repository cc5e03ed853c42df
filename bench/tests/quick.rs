// SPDX-License-Identifier: MIT OR Apache-2.0
//! `v4v-bench --quick --json` runs end to end on a stack it starts itself, and every figure it
//! reports comes from what it measured: rates from the bytes and seconds of its runs, ratios
//! from the two sides, RTT percentiles in order. It asserts nothing about speed.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[test]
fn quick_run_reports_measured_figures() {
    let exe = Path::new(env!("CARGO_BIN_EXE_v4v-bench"));
    let dir = exe.parent().expect("bin dir");
    for b in ["v4v-sim", "v4vd"] {
        assert!(
            dir.join(b).exists(),
            "{b} is not built next to v4v-bench: run `cargo build --workspace` first"
        );
    }
    let t0 = Instant::now();
    let out = Command::new(exe)
        .args(["--quick", "--json", "--streams", "20"])
        .output()
        .expect("run v4v-bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "v4v-bench failed: {stderr}");
    assert!(
        t0.elapsed() < Duration::from_secs(120),
        "a quick run took {:?}",
        t0.elapsed()
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    let rows = v["rows"].as_array().expect("rows");
    let row = |k: &str| {
        rows.iter()
            .find(|r| r["key"] == k)
            .unwrap_or_else(|| panic!("no row {k}"))
    };
    let f = |r: &Value, k: &str| r[k].as_f64().unwrap_or_else(|| panic!("{k} of {r}"));

    // Rates: each sample's rate is its count over its seconds, the figure their median, the
    // ratio V4V over baseline; the counts are the plan's.
    for (key, msgs) in [
        ("stream_64k", false),
        ("stream_4k", false),
        ("stream_64k_shm", false),
        ("stream_4k_shm", false),
        ("dgram_64", true),
        ("dgram_4k", true),
    ] {
        let r = row(key);
        for side in ["v4v", "unix"] {
            let s = r["samples"][side].as_array().expect("samples");
            assert_eq!(s.len(), 1, "--quick runs one pair");
            let rates: Vec<f64> = s
                .iter()
                .map(|x| {
                    let secs = f(x, "secs");
                    assert!(secs > 0.0);
                    let rate = if msgs {
                        f(x, "msgs") / secs / 1e3
                    } else {
                        f(x, "bytes") / secs / 1e6
                    };
                    assert!(close(rate, f(x, "rate")), "{key} {side}: {x}");
                    // Every process of the side is accounted for, and V4V's did some work
                    // (a baseline run can be shorter than the kernel's accounting tick).
                    let cpu = x["cpu"].as_object().expect("cpu");
                    let mut names: Vec<&str> = cpu.keys().map(String::as_str).collect();
                    names.sort_unstable();
                    if side == "v4v" {
                        assert_eq!(names, ["bench", "peer", "v4v-sim", "v4vd[1]", "v4vd[2]"]);
                        let total: f64 = cpu.values().map(|v| v.as_f64().unwrap()).sum();
                        assert!(total > 0.0, "{key}: no CPU time at all? {x}");
                    } else {
                        assert_eq!(names, ["bench", "peer"], "{key}");
                    }
                    rate
                })
                .collect();
            let want = if side == "v4v" { "v4v" } else { "baseline" };
            assert!(close(f(r, want), median(rates)), "{key} {side}");
        }
        assert!(close(f(r, "ratio"), f(r, "v4v") / f(r, "baseline")), "{r}");
        let met = f(r, "ratio") >= f(r, "target");
        assert_eq!(r["met"].as_bool(), Some(met));
    }
    assert_eq!(row("stream_64k")["samples"]["v4v"][0]["bytes"], 4 << 20);
    assert_eq!(row("dgram_64")["samples"]["unix"][0]["msgs"], 5000);

    // The shared-memory rows' baselines are the socket rows' Unix runs.
    for (shm, sock) in [
        ("stream_64k_shm", "stream_64k"),
        ("stream_4k_shm", "stream_4k"),
    ] {
        assert_eq!(row(shm)["baseline"], row(sock)["baseline"]);
    }

    // RTT: percentiles in order, both sides, for every variant.
    for what in ["datagram", "stream", "stream_shm"] {
        for pin in ["pinned", "unpinned"] {
            let q = |p: &str| row(&format!("rtt_{what}_{pin}_{p}")).clone();
            let (p50, p99, p999) = (q("p50"), q("p99"), q("p999"));
            for side in ["v4v", "baseline"] {
                let (a, b, c) = (f(&p50, side), f(&p99, side), f(&p999, side));
                assert!(
                    0.0 < a && a <= b && b <= c,
                    "{what} {pin} {side}: {a} {b} {c}"
                );
            }
            assert!(close(
                f(&p50, "ratio"),
                f(&p50, "v4v") / f(&p50, "baseline")
            ));
        }
    }

    // CPU per GB: the sum of the processes' CPU over the bytes.
    let r = row("cpu_per_gb");
    let s = &row("stream_64k")["samples"]["v4v"][0];
    let total: f64 = s["cpu"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_f64().unwrap())
        .sum();
    assert!(close(f(r, "v4v"), total / (f(s, "bytes") / 1e9)), "{r}");

    // Idle streams: the streams were really open (a daemon with 20 more clients holds them).
    let r = row("idle_rss_per_v4vd");
    assert_eq!(r["samples"]["streams"], 20);
    assert!(r["baseline"].is_null() && r["ratio"].is_null());
    let procs = r["samples"]["procs"].as_array().unwrap();
    let daemons: Vec<&Value> = procs.iter().filter(|p| p["daemon"] == true).collect();
    assert_eq!(daemons.len(), 2);
    let biggest = daemons
        .iter()
        .map(|p| f(p, "rss_kib_with_streams") / 1024.0)
        .fold(0.0, f64::max);
    assert!(biggest > 0.0 && close(f(r, "v4v"), biggest));
    assert!(f(row("idle_cpu_per_v4vd"), "v4v") >= 0.0);

    // The table for people went to stderr, with every row.
    for r in rows {
        assert!(stderr.contains(r["label"].as_str().unwrap()), "{stderr}");
    }
    let load = v["env"]["load_before"].as_str().unwrap();
    assert_eq!(load.split(' ').count(), 3, "{load}");
}
