// SPDX-License-Identifier: MIT OR Apache-2.0
//! Runs the `v4v-conformance` binary as CI does.

use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_v4v-conformance"))
}

fn dir(rel: &str) -> String {
    format!("{}/{rel}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn every_scenario_passes_on_the_model() {
    let out = bin()
        .args(["--backend", "model", &dir("scenarios")])
        .output()
        .expect("run binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = stdout.lines().last().unwrap_or_default();
    let n = stdout.lines().filter(|l| l.starts_with("PASS ")).count();
    assert!(n >= 40, "only {n} scenarios");
    assert_eq!(last, format!("{n} passed, 0 failed"));
}

#[test]
fn a_wrong_scenario_fails_with_its_step_and_line() {
    let f = dir("tests/fixtures/wrong_expectation.v4vs");
    let out = bin()
        .args(["--backend", "model", &f])
        .output()
        .expect("run binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "stdout:\n{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        [
            format!("FAIL deliberately wrong: step 3 ({f}:7): expected 33, got EMSGSIZE"),
            "0 passed, 1 failed".into()
        ]
    );
}

#[test]
fn an_unparsable_scenario_is_a_usage_error() {
    let f = dir("tests/fixtures/unparsable.v4vs");
    let out = bin()
        .args(["--backend", "model", &f])
        .output()
        .expect("run binary");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with(&format!("{f}:3: ")), "stderr: {stderr}");
    assert!(stderr.contains("EWHATEVER"), "stderr: {stderr}");
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(bin().output().expect("run").status.code(), Some(2));
    let out = bin()
        .args(["--backend", "nonesuch", &dir("scenarios")])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
}
