// SPDX-License-Identifier: MIT OR Apache-2.0
//! Daemons over one shared in-process model, each in its own thread.

#![allow(dead_code)]

use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;

use std::sync::Arc;
use v4v_sim::Model;

use v4vd::{Config, Daemon, DaemonHandle, HvCounts};

static NEXT: AtomicUsize = AtomicUsize::new(0);

pub fn tmpdir() -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "v4vd-test-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    ));
    // A directory left by an earlier run whose process had the same id holds a stale socket
    // (the bind below failed with EADDRINUSE once pids came round).
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("tmpdir");
    d
}

pub struct Node {
    pub domid: u16,
    pub sock: PathBuf,
    /// The daemon's hypercalls so far.
    pub counts: Arc<HvCounts>,
    handle: DaemonHandle,
    thread: Option<JoinHandle<()>>,
}

impl Node {
    pub fn start(model: &Model, domid: u16) -> Node {
        Self::start_with(model, domid, Config::default())
    }

    pub fn start_with(model: &Model, domid: u16, cfg: Config) -> Node {
        let hv = model.create_domain(domid).expect("create domain");
        let sock = tmpdir().join("v4vd.sock");
        let listener = UnixListener::bind(&sock).expect("bind");
        let d = Daemon::new(Box::new(hv), listener, cfg).expect("daemon");
        let handle = d.handle();
        let counts = d.hv_counts();
        let thread = std::thread::spawn(move || d.run().expect("daemon run"));
        Node {
            domid,
            sock,
            counts,
            handle,
            thread: Some(thread),
        }
    }

    pub fn stop(&mut self) {
        self.handle.stop();
        if let Some(t) = self.thread.take() {
            t.join().expect("daemon thread");
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}

/// FNV-1a, for checksums of streamed data.
pub fn fnv(h: u64, data: &[u8]) -> u64 {
    data.iter()
        .fold(h, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}
pub const FNV0: u64 = 0xcbf2_9ce4_8422_2325;

/// Deterministic pseudo-random bytes.
pub fn pattern(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A child process killed and reaped when dropped, so a failing test leaves none behind.
pub struct Proc(pub std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits (10 s at most) until `path` exists.
pub fn wait_for(path: &std::path::Path) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !path.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
