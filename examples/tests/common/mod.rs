// SPDX-License-Identifier: MIT OR Apache-2.0
//! The V4V stack as real processes for the examples' tests: one `v4v-sim` and one `v4vd` per
//! domain in a temporary directory, all killed and removed when the [`Stack`] drops. The
//! binaries are the workspace's (`cargo build --workspace` first), found next to this test.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// The workspace's target directory for this profile (`target/debug`).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/debug/deps/tokio_client-HASH
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf()
}

/// A binary of the workspace.
pub fn bin(name: &str) -> PathBuf {
    let p = target_dir().join(name);
    assert!(
        p.exists(),
        "{} is not built: run `cargo build --workspace` first",
        p.display()
    );
    p
}

/// An example of this crate (cargo builds them before running the tests).
pub fn example(name: &str) -> PathBuf {
    let p = target_dir().join("examples").join(name);
    assert!(
        p.exists(),
        "{} is not built: `cargo test -p v4v-examples` builds it",
        p.display()
    );
    p
}

pub struct Stack {
    pub dir: PathBuf,
    /// The simulator, then the daemons in the order of `domids`.
    children: Vec<Child>,
    domids: Vec<u16>,
}

impl Stack {
    /// A simulator and one daemon for each of `domids`.
    pub fn start(domids: &[u16]) -> Stack {
        let dir = std::env::temp_dir().join(format!(
            "v4v-ex-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let sim_sock = dir.join("sim.sock");
        let sim = Command::new(bin("v4v-sim"))
            .arg("--socket")
            .arg(&sim_sock)
            .args(["--log-level", "warn"])
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn v4v-sim");
        let mut s = Stack {
            dir,
            children: vec![sim],
            domids: domids.to_vec(),
        };
        wait_for_path(&sim_sock);
        for &d in domids {
            let sock = s.sock(d);
            let child = Command::new(bin("v4vd"))
                .arg("--hypervisor")
                .arg(format!("sim:{}", sim_sock.display()))
                .args(["--domid", &d.to_string(), "--socket"])
                .arg(&sock)
                .env(
                    "V4VD_LOG",
                    std::env::var("V4VD_LOG").unwrap_or("warn".into()),
                )
                .stdin(Stdio::null())
                .spawn()
                .expect("spawn v4vd");
            s.children.push(child);
            let deadline = Instant::now() + Duration::from_secs(10);
            while v4v::client::status(&sock).is_err() {
                assert!(
                    Instant::now() < deadline,
                    "v4vd for domain {d} never answered"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        s
    }

    pub fn sock(&self, domid: u16) -> PathBuf {
        self.dir.join(format!("d{domid}.sock"))
    }

    /// Sends `sig` to the daemon of `domid` (SIGSTOP freezes it, SIGCONT resumes it).
    pub fn signal_daemon(&self, domid: u16, sig: i32) {
        let i = self
            .domids
            .iter()
            .position(|&d| d == domid)
            .expect("a domain of the stack");
        let pid = self.children[i + 1].id() as i32;
        // SAFETY: kill(2) on a child we own and have not reaped.
        unsafe { libc::kill(pid, sig) };
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        for c in self.children.iter_mut().rev() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn wait_for_path(p: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !p.exists() {
        assert!(Instant::now() < deadline, "{} never appeared", p.display());
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Deterministic pseudo-random bytes, continuing from `state`.
pub fn fill_pattern(buf: &mut [u8], state: &mut u64) {
    for b in buf {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *b = *state as u8;
    }
}
