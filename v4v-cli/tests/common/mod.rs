// SPDX-License-Identifier: MIT OR Apache-2.0
//! A whole V4V stack as real processes: one `v4v-sim`, one `v4vd` per domain, all in a
//! temporary directory that is removed (and every process killed) when the [`Stack`] drops.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A binary of the workspace, built next to `v4v-cli` (`cargo build --workspace`).
pub fn bin(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_v4v-cli")).with_file_name(name);
    assert!(
        p.exists(),
        "{} is not built: run `cargo build --workspace` first",
        p.display()
    );
    p
}

pub fn cli_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_v4v-cli"))
}

pub struct Stack {
    pub dir: PathBuf,
    sim: Child,
    daemons: HashMap<u16, Child>,
}

impl Stack {
    /// A simulator and one daemon for each of `domids`.
    pub fn start(domids: &[u16]) -> Stack {
        let dir = std::env::temp_dir().join(format!(
            "v4v-stack-{}-{}",
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
        wait_for_path(&sim_sock);
        // The socket file exists from bind(2) on, but connects are refused until listen(2):
        // on a loaded machine a daemon started in between fails at once.
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::os::unix::net::UnixStream::connect(&sim_sock).is_err() {
            assert!(Instant::now() < deadline, "v4v-sim never listened");
            std::thread::sleep(Duration::from_millis(10));
        }
        let mut s = Stack {
            dir,
            sim,
            daemons: HashMap::new(),
        };
        for &d in domids {
            s.start_daemon(d, &[]);
        }
        s
    }

    pub fn sim_pid(&self) -> u32 {
        self.sim.id()
    }

    pub fn sock(&self, domid: u16) -> PathBuf {
        self.dir.join(format!("d{domid}.sock"))
    }

    /// Starts domain `domid`'s daemon with extra arguments; waits until it answers.
    pub fn start_daemon(&mut self, domid: u16, extra: &[&str]) {
        let sock = self.sock(domid);
        let _ = std::fs::remove_file(&sock);
        let child = Command::new(bin("v4vd"))
            .arg("--hypervisor")
            .arg(format!("sim:{}", self.dir.join("sim.sock").display()))
            .args(["--domid", &domid.to_string(), "--socket"])
            .arg(&sock)
            .args(extra)
            .env(
                "V4VD_LOG",
                std::env::var("V4VD_LOG").unwrap_or("warn".into()),
            )
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn v4vd");
        self.daemons.insert(domid, child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while v4v::client::status(&sock).is_err() {
            assert!(
                Instant::now() < deadline,
                "v4vd for domain {domid} never answered"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn daemon_pid(&self, domid: u16) -> u32 {
        self.daemons[&domid].id()
    }

    /// SIGKILL: the daemon vanishes, and with its simulator connection its domain.
    pub fn kill_daemon(&mut self, domid: u16) {
        if let Some(mut c) = self.daemons.remove(&domid) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends `sig` to the daemon and waits (at most 10 s) for it to exit; its exit status.
    pub fn signal_daemon(&mut self, domid: u16, sig: i32) -> Option<std::process::ExitStatus> {
        let mut c = self.daemons.remove(&domid)?;
        // SAFETY: kill(2) on a child we own and have not reaped.
        unsafe { libc::kill(c.id() as i32, sig) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                return Some(st);
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `v4v-cli --socket <domain's socket> ARGS...`, not started yet.
    pub fn cli(&self, domid: u16, args: &[&str]) -> Command {
        let mut c = Command::new(cli_bin());
        c.arg("--socket").arg(self.sock(domid)).args(args);
        c
    }

    /// `v4v-cli ARGS...` in `domid`, run as the unprivileged user nobody (uid and gid 65534, no
    /// supplementary groups), not started yet.
    pub fn cli_as_nobody(&self, domid: u16, args: &[&str]) -> Command {
        let mut c = as_nobody(&cli_bin());
        c.arg("--socket").arg(self.sock(domid)).args(args);
        c
    }

    /// Starts `v4v-cli` in `domid` with `stdin`, stdout and stderr piped.
    pub fn spawn(&self, domid: u16, args: &[&str], stdin: Stdio) -> Child {
        self.cli(domid, args)
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn v4v-cli")
    }

    /// Runs `v4v-cli` to completion with no stdin, at most 30 s.
    pub fn run(&self, domid: u16, args: &[&str]) -> Output {
        run_limited(
            self.cli(domid, args).stdin(Stdio::null()),
            Duration::from_secs(30),
        )
    }

    /// The daemon's STATUS, typed.
    pub fn status_typed(&self, domid: u16) -> v4v::client::Status {
        v4v::client::status(&self.sock(domid)).expect("status")
    }

    /// The daemon's STATUS as flat fields for quick checks: the counters by name, `streams`
    /// and `clients` as counts, `ports` as `PORT/KIND` (`PORT/peerDOM`) joined by commas and
    /// `acl_refused_by` as `SRC->DST/COUNT` joined by commas.
    pub fn status(&self, domid: u16) -> HashMap<String, String> {
        let st = self.status_typed(domid);
        let ports: Vec<String> = st
            .ports
            .iter()
            .map(|p| match p.peer_domain {
                Some(d) if p.kind == v4v::client::proto::PortKind::Peer => {
                    format!("{}/peer{d}", p.port)
                }
                _ => format!("{}/{}", p.port, p.kind.as_str()),
            })
            .collect();
        let refused: Vec<String> = st
            .acl_refused_by
            .iter()
            .map(|r| format!("{}->{}/{}", r.src, r.dst, r.count))
            .collect();
        [
            ("domid", st.domid.to_string()),
            ("rings", st.rings.to_string()),
            ("clients", st.clients.to_string()),
            ("streams", st.streams.len().to_string()),
            ("ports", ports.join(",")),
            ("msgs_in", st.msgs_in.to_string()),
            ("bytes_in", st.bytes_in.to_string()),
            ("msgs_out", st.msgs_out.to_string()),
            ("bytes_out", st.bytes_out.to_string()),
            ("corrupt", st.corrupt.to_string()),
            ("dropped", st.dropped.to_string()),
            ("acl_refused", st.acl_refused.to_string()),
            ("acl_refused_by", refused.join(",")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Waits until the daemon of `domid` has `port` bound (as kind `kind`).
    pub fn wait_port(&self, domid: u16, port: u32, kind: &str) {
        let want = format!("{port}/{kind}");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let st = self.status(domid);
            if st["ports"].split(',').any(|p| p == want) {
                return;
            }
            assert!(Instant::now() < deadline, "port {want} never bound: {st:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        for (_, mut c) in self.daemons.drain() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = self.sim.kill();
        let _ = self.sim.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Binds datagram port `port` at `sock` that this process just closed, as UDP code rebinds:
/// it may still be bound for a moment, because another test thread's child process holds a copy
/// of the closed descriptor between its fork and exec (as it would hold a UDP socket's).
pub fn bind_again(sock: &Path, port: u32) -> v4v::client::Datagram {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        match v4v::client::Datagram::bind_with(sock, port, None) {
            Err(v4v::client::Error::AddrInUse(_)) if Instant::now() < until => {
                std::thread::sleep(Duration::from_millis(20));
            }
            r => return r.unwrap_or_else(|e| panic!("bind {port}: {e}")),
        }
    }
}

/// `program`, to be run as the unprivileged user nobody through `setpriv`.
pub fn as_nobody(program: &Path) -> Command {
    let mut c = Command::new("setpriv");
    c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(program);
    c
}

pub fn wait_for_path(p: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !p.exists() {
        assert!(Instant::now() < deadline, "{} never appeared", p.display());
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits for a child at most `limit` (then kills it and panics: nothing may hang).
pub fn wait_limited(mut child: Child, limit: Duration) -> Output {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("a process did not finish within {limit:?}");
            }
        }
    }
    let mut out = Vec::new();
    let mut err = Vec::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_end(&mut out);
    }
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_end(&mut err);
    }
    Output {
        status: child.wait().expect("wait"),
        stdout: out,
        stderr: err,
    }
}

/// Spawns with piped stdout/stderr and waits at most `limit`.
pub fn run_limited(cmd: &mut Command, limit: Duration) -> Output {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    wait_limited(child, limit)
}

/// Resident memory of a process, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

/// Resident memory of `pid` that is its own (`VmRSS` less `RssShmem`): a client's shared-memory
/// channel that a daemon maps is the client's memory, even once the daemon touched its pages.
pub fn private_rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let field = |name: &str| -> u64 {
        s.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    field("VmRSS:").saturating_sub(field("RssShmem:"))
}

/// Raises this process's descriptor limit to its hard limit.
pub fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    lim.rlim_cur = lim.rlim_max;
    // SAFETY: raising the soft limit to the hard one is always allowed.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    lim.rlim_cur
}

/// FNV-1a, for checksums of streamed data.
pub fn fnv(h: u64, data: &[u8]) -> u64 {
    data.iter()
        .fold(h, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}
pub const FNV0: u64 = 0xcbf2_9ce4_8422_2325;

/// Deterministic pseudo-random bytes, continuing from `state`.
pub fn fill_pattern(buf: &mut [u8], state: &mut u64) {
    for b in buf {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *b = *state as u8;
    }
}

/// Claims dom0 of the simulator (no daemon may hold it) and sets domain `domid`'s ring limit to
/// `max_rings`. The handle is dom0: keep it for as long as dom0 is needed (its ACL table, ...);
/// starting dom0's daemon right after dropping it would race with the simulator's release.
pub fn dom0_with_max_rings(s: &Stack, domid: u16, max_rings: u32) -> Box<dyn v4v::Hypervisor> {
    let spec = format!("sim:{}?domid=0", s.dir.join("sim.sock").display());
    let dom0 = v4v::backend::open(&spec).expect("claim dom0");
    dom0.config(&v4v::abi::Config {
        domain: domid,
        pad: 0,
        max_rings,
        max_ring_pages: 0,
    })
    .expect("config");
    dom0
}

/// What each connection opened by [`connections_as`] does once connected.
#[derive(Clone, Copy)]
#[allow(dead_code)] // each test binary uses some of them
pub enum OnConnect {
    /// Nothing: a client that never sends a request (the connect does not wait for the accept).
    Idle,
    /// Writes the line and keeps the connection for the life of the process.
    SendAndHold(&'static [u8]),
    /// Writes the line and closes the connection.
    SendAndClose(&'static [u8]),
}

/// A `sleep SECS` process of `uid` (and gid `uid`) that opened `n` connections to `sock` between
/// fork and exec, so that they are that user's own, each doing `on`.
#[allow(dead_code)]
pub fn connections_as(sock: &Path, uid: u32, n: usize, secs: u32, on: OnConnect) -> Child {
    use std::os::unix::process::CommandExt;
    let path = std::ffi::CString::new(sock.as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: all-zero is a valid sockaddr_un (integers and a byte array).
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(path.as_bytes()) {
        *d = *s as libc::c_char;
    }
    let mut c = Command::new("sleep");
    c.arg(secs.to_string())
        .uid(uid)
        .gid(uid)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: the closure makes only async-signal-safe system calls (socket, connect, write,
    // close) on memory prepared before the fork.
    unsafe {
        c.pre_exec(move || {
            let flags = match on {
                OnConnect::Idle => libc::SOCK_STREAM | libc::SOCK_NONBLOCK,
                _ => libc::SOCK_STREAM,
            };
            for _ in 0..n {
                let fd = libc::socket(libc::AF_UNIX, flags, 0);
                if fd < 0 {
                    break;
                }
                let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
                let connected =
                    libc::connect(fd, (&addr as *const libc::sockaddr_un).cast(), len) == 0;
                match on {
                    OnConnect::Idle => {}
                    OnConnect::SendAndHold(line) => {
                        if connected {
                            libc::write(fd, line.as_ptr().cast(), line.len());
                        }
                    }
                    OnConnect::SendAndClose(line) => {
                        if connected {
                            libc::write(fd, line.as_ptr().cast(), line.len());
                        }
                        libc::close(fd);
                    }
                }
            }
            Ok(())
        });
    }
    c.spawn().expect("spawn connections")
}

/// `v4v-cli --socket SOCK ARGS` as `uid`/gid `uid` with no supplementary groups, within 20 s.
#[allow(dead_code)]
pub fn cli_as(sock: &Path, uid: u32, args: &[&str]) -> Output {
    let mut c = Command::new("setpriv");
    c.args([
        &format!("--reuid={uid}"),
        &format!("--regid={uid}"),
        "--clear-groups",
    ])
    .arg(cli_bin())
    .arg("--socket")
    .arg(sock)
    .args(args)
    .stdin(Stdio::null());
    run_limited(&mut c, Duration::from_secs(20))
}
