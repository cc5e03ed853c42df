// SPDX-License-Identifier: MIT OR Apache-2.0
//! `v4vd --generate-assets DIR`, which scripts/package runs: the man page joins clap's options
//! and docs/man's hand-written sections, and the completions know every option. (The package
//! test renders every page with `man -l` in a clean root.)

mod common;

use std::process::Command;

#[test]
fn man_page_and_completions() {
    let dir = common::tmpdir();
    let o = Command::new(env!("CARGO_BIN_EXE_v4vd"))
        .arg("--generate-assets")
        .arg(&dir)
        .output()
        .expect("run v4vd");
    assert!(o.status.success(), "{o:?}");
    let page = std::fs::read_to_string(dir.join("man/v4vd.8")).expect("v4vd.8");
    assert!(page.contains("\n.TH v4vd 8 "), "{page}");
    // clap's part: every setting, from the one Settings struct.
    for opt in [
        "ring\\-size",
        "max\\-buffer\\-per\\-user",
        "check\\-config",
        "migrate\\-config",
    ] {
        assert!(page.contains(opt), "no {opt} in v4vd.8");
    }
    // The hand-written part, before the version.
    let systemd = page.find(".SH \"SYSTEMD\"").expect("SYSTEMD section");
    let files = page.find(".SH \"FILES\"").expect("FILES section");
    let version = page.find(".SH VERSION").expect("VERSION section");
    assert!(systemd < files && files < version);
    for (name, needle) in [
        ("v4vd", "--ring-size"),
        ("_v4vd", "--ring-size"),
        ("v4vd.fish", "ring-size"),
    ] {
        let c = std::fs::read_to_string(dir.join("completions").join(name)).expect(name);
        assert!(c.contains(needle), "{name} lacks {needle}");
        assert!(
            !c.contains("generate-assets"),
            "{name} shows the packaging hook"
        );
    }
    // The hook is not an option: `--help` does not show it.
    let help = Command::new(env!("CARGO_BIN_EXE_v4vd"))
        .arg("--help")
        .output()
        .expect("help");
    assert!(!String::from_utf8_lossy(&help.stdout).contains("generate"));
}
