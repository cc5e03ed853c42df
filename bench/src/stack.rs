// SPDX-License-Identifier: MIT OR Apache-2.0
//! The V4V stack under test: either started here (one `v4v-sim`, one `v4vd` for each of the
//! domains 1 and 2, in a temporary directory, all killed and removed on drop) or given (two
//! daemon sockets and the pids whose CPU time counts).
//!
//! Owns the processes it started and nothing else.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use v4v::abi::DomId;

use crate::sys;

/// A process of the stack whose CPU time and memory the benchmark reports.
#[derive(Debug, Clone)]
pub struct Proc {
    /// `v4v-sim`, `v4vd[1]`, ...
    pub name: String,
    pub pid: u32,
    /// A daemon (its RSS is reported for the idle-streams row).
    pub daemon: bool,
}

pub struct Stack {
    /// The sending side's daemon socket and domain, then the receiving side's.
    pub sock: [PathBuf; 2],
    pub domid: [DomId; 2],
    pub procs: Vec<Proc>,
    owned: Vec<Child>,
    dir: Option<PathBuf>,
}

fn wait_until(what: &str, mut ok: impl FnMut() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ok() {
        if Instant::now() > deadline {
            return Err(format!("{what} did not come up within 20 s"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

impl Stack {
    /// Starts `v4v-sim` and two `v4vd` from `bin_dir`, logging errors only.
    pub fn start(bin_dir: &Path) -> Result<Stack, String> {
        let exe = |n: &str| {
            let p = bin_dir.join(n);
            if p.exists() {
                Ok(p)
            } else {
                Err(format!(
                    "{} not found (build the workspace, or pass --bin-dir)",
                    p.display()
                ))
            }
        };
        let (sim, v4vd) = (exe("v4v-sim")?, exe("v4vd")?);
        let dir = std::env::temp_dir().join(format!("v4v-bench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut s = Stack {
            sock: [dir.join("d1.sock"), dir.join("d2.sock")],
            domid: [1, 2],
            procs: Vec::new(),
            owned: Vec::new(),
            dir: Some(dir.clone()),
        };
        let sim_sock = dir.join("sim.sock");
        let c = sys::die_with_parent(&mut Command::new(&sim))
            .arg("--socket")
            .arg(&sim_sock)
            .args(["--log-level", "error"])
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| format!("{}: {e}", sim.display()))?;
        s.adopt("v4v-sim", c, false);
        wait_until("v4v-sim", || sim_sock.exists())?;
        for i in 0..2 {
            let c = sys::die_with_parent(&mut Command::new(&v4vd))
                .arg("--hypervisor")
                .arg(format!("sim:{}", sim_sock.display()))
                .args(["--domid", &s.domid[i].to_string(), "--socket"])
                .arg(&s.sock[i])
                .env(
                    "V4VD_LOG",
                    std::env::var("V4V_BENCH_LOG").unwrap_or("error".into()),
                )
                .stdin(Stdio::null())
                .spawn()
                .map_err(|e| format!("{}: {e}", v4vd.display()))?;
            s.adopt(&format!("v4vd[{}]", s.domid[i]), c, true);
        }
        for i in 0..2 {
            let sock = s.sock[i].clone();
            wait_until(&format!("v4vd for domain {}", s.domid[i]), || {
                v4v::client::status(&sock).is_ok()
            })?;
        }
        Ok(s)
    }

    /// A stack started elsewhere: the two daemons' sockets and domains (sender, receiver) and
    /// the pids (daemons, hypervisor helpers) whose CPU time counts.
    pub fn given(sock: [PathBuf; 2], domid: [DomId; 2], pids: &[u32]) -> Stack {
        Stack {
            sock,
            domid,
            procs: pids
                .iter()
                .map(|&pid| Proc {
                    name: format!("pid {pid}"),
                    pid,
                    daemon: true,
                })
                .collect(),
            owned: Vec::new(),
            dir: None,
        }
    }

    /// The processes started here that have exited, with how (a failure's likely cause).
    pub fn casualties(&mut self) -> Vec<String> {
        let mut v = Vec::new();
        for (c, p) in self.owned.iter_mut().zip(&self.procs) {
            if let Ok(Some(st)) = c.try_wait() {
                v.push(format!("{} (pid {}) exited: {st}", p.name, p.pid));
            }
        }
        v
    }

    fn adopt(&mut self, name: &str, c: Child, daemon: bool) {
        self.procs.push(Proc {
            name: name.into(),
            pid: c.id(),
            daemon,
        });
        self.owned.push(c);
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // Daemons first (they leave the simulator cleanly), the simulator last.
        for c in self.owned.iter_mut().rev() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(d) = &self.dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}
