// SPDX-License-Identifier: MIT OR Apache-2.0
//! One run of each measurement, V4V or its Unix baseline: the parent (this process) is one
//! end, a [`crate::peer`] process the other. Each run returns what it measured, with the CPU
//! time every process involved used over the run.
//!
//! Owns the peer process (or, for a remote peer, the control stream to its server) and the
//! sockets of one run; borrows the [`Stack`].

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use v4v::client::{Datagram, Listener, SockAddr, Stream};

use crate::peer::{PATIENCE, PEER_FD, QUIT};
use crate::stack::Stack;
use crate::sys::{self, CpuSet};

/// Which side of a comparison a run measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    V4v,
    Unix,
}

/// CPU time per process over one run.
#[derive(Debug, Clone, Default)]
pub struct Cpu {
    pub parts: Vec<(String, Duration)>,
}

impl Cpu {
    pub fn total(&self) -> Duration {
        self.parts.iter().map(|(_, d)| *d).sum()
    }
}

/// A bulk transfer: bytes or messages moved in `secs`, and what it cost.
#[derive(Debug, Clone)]
pub struct Xfer {
    pub secs: f64,
    pub bytes: u64,
    pub msgs: u64,
    pub cpu: Cpu,
}

/// Round-trip times of one run, in microseconds.
#[derive(Debug, Clone, Copy)]
pub struct Rtt {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
}

/// Many open idle streams: memory and CPU of each process of the stack while they idle.
#[derive(Debug, Clone)]
pub struct Idle {
    pub streams: usize,
    pub connect_secs: f64,
    /// Connections refused (backlog full) and retried while opening them.
    pub refused: u64,
    /// (name, RSS KiB before the streams were opened, RSS KiB with them open, CPU ms/s idle)
    pub procs: Vec<(String, bool, u64, u64, f64)>,
}

pub struct Bench<'a> {
    pub stack: &'a Stack,
    /// Where `v4v-bench serve` runs the V4V peers (another domain), or `None`: spawned here.
    pub remote: Option<SockAddr>,
    /// This program, re-run as the peer.
    pub exe: PathBuf,
    /// The CPUs the benchmark may use (unpinned runs); the first is the one pinned runs use.
    pub cpus: CpuSet,
}

/// CPU counters at the start of a run.
struct Window {
    me: Duration,
    children: Duration,
    stack: Vec<Duration>,
}

fn io_err(what: &str) -> impl Fn(std::io::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

fn v4v_err(what: &str) -> impl Fn(v4v::client::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// The other end of a run: a child process here, or a peer that `v4v-bench serve` runs in
/// another domain, whose answer comes back on the control stream.
enum PeerProc {
    Local(Child),
    Remote(Stream),
}

/// CPU time per process that a remote server reported for its side of a run.
type Parts = Vec<(String, Duration)>;

/// Waits for the peer; its failure is the run's failure. A remote peer's CPU time (and that
/// of the server's daemon) comes back with its answer.
fn reap(p: PeerProc) -> Result<Option<Parts>, String> {
    match p {
        PeerProc::Local(mut c) => {
            let st = c.wait().map_err(io_err("wait for the peer"))?;
            if st.success() {
                Ok(None)
            } else {
                Err(format!("the peer process failed ({st})"))
            }
        }
        PeerProc::Remote(mut s) => {
            let mut b = Vec::new();
            (&mut s)
                .take(1 << 16)
                .read_to_end(&mut b)
                .map_err(io_err("the remote peer's answer"))?;
            remote_answer(&b).map(Some)
        }
    }
}

/// Parses `v4v-bench serve`'s answer line (see [`crate::serve`]).
fn remote_answer(b: &[u8]) -> Result<Parts, String> {
    let v: serde_json::Value = serde_json::from_slice(b).map_err(|e| {
        format!(
            "the remote peer's answer {:?}: {e}",
            String::from_utf8_lossy(&b[..b.len().min(200)])
        )
    })?;
    if v["ok"] != serde_json::json!(true) {
        return Err(format!(
            "the remote peer failed ({}): {}",
            v["exit"].as_str().unwrap_or("?"),
            v["stderr"].as_str().unwrap_or("").trim()
        ));
    }
    let cpu = v["cpu"].as_object().ok_or("the remote answer has no cpu")?;
    cpu.iter()
        .map(|(k, t)| {
            t.as_f64()
                .filter(|t| t.is_finite() && *t >= 0.0)
                .map(|t| (k.clone(), Duration::from_secs_f64(t)))
                .ok_or_else(|| format!("the remote answer's cpu {k:?} is {t}"))
        })
        .collect()
}

/// `rounds` round trips of `msg` to an echoing stream peer; `timed(i, start)` after each.
fn stream_rounds(
    s: &mut (impl Read + Write),
    msg: &[u8],
    rounds: usize,
    timed: &mut impl FnMut(usize, Instant),
) -> Result<(), String> {
    let mut back = vec![0u8; msg.len()];
    for i in 0..rounds {
        let t0 = Instant::now();
        s.write_all(msg).map_err(io_err("send"))?;
        s.read_exact(&mut back).map_err(io_err("recv"))?;
        timed(i, t0);
    }
    Ok(())
}

/// Reads exactly `total` bytes in reads of up to 64 KiB.
fn recv_bytes(r: &mut impl Read, total: u64) -> Result<(), String> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0u64;
    while got < total {
        let want = (total - got).min(buf.len() as u64) as usize;
        match r.read(&mut buf[..want]) {
            Ok(0) => return Err(format!("the peer ended after {got} of {total} bytes")),
            Ok(n) => got += n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("read after {got} bytes: {e}")),
        }
    }
    Ok(())
}

/// The nearest-rank percentile `q` (0..1) of sorted `v`, in microseconds.
fn percentile(v: &[Duration], q: f64) -> f64 {
    // The rank is ceil(q·n); the tolerance keeps a product like 0.999 × 1000 from rounding up
    // past its exact value.
    let i = ((q * v.len() as f64 - 1e-9).ceil() as usize).clamp(1, v.len()) - 1;
    v[i].as_nanos() as f64 / 1e3
}

impl Bench<'_> {
    fn window(&self, side: Side) -> Result<Window, String> {
        Ok(Window {
            me: sys::rusage(libc::RUSAGE_SELF),
            children: sys::rusage(libc::RUSAGE_CHILDREN),
            stack: match side {
                Side::Unix => Vec::new(),
                Side::V4v => self
                    .stack
                    .procs
                    .iter()
                    .map(|p| sys::cpu_time(p.pid).map_err(io_err(&p.name)))
                    .collect::<Result<_, _>>()?,
            },
        })
    }

    /// The CPU used since `w`, by this process, the peer (reaped since, or as its remote
    /// server reported with its own daemon's) and the stack.
    fn cpu_since(&self, w: Window, remote: Option<Parts>) -> Result<Cpu, String> {
        let mut parts = vec![("bench".to_string(), sys::rusage(libc::RUSAGE_SELF) - w.me)];
        match remote {
            Some(r) => parts.extend(r),
            None => parts.push((
                "peer".to_string(),
                sys::rusage(libc::RUSAGE_CHILDREN) - w.children,
            )),
        }
        for (p, t0) in self.stack.procs.iter().zip(w.stack) {
            let t = sys::cpu_time(p.pid).map_err(io_err(&p.name))?;
            parts.push((p.name.clone(), t.saturating_sub(t0)));
        }
        Ok(Cpu { parts })
    }

    fn peer(&self, role: &[String]) -> Command {
        let mut c = Command::new(&self.exe);
        sys::die_with_parent(&mut c)
            .arg("__peer")
            .args(role)
            .stdin(Stdio::null());
        c
    }

    /// A socket pair of type `ty`; the peer runs `role` with the other end at descriptor 3.
    fn spawn_unix(&self, ty: libc::c_int, role: &[String]) -> Result<(UnixStream, Child), String> {
        let (mine, theirs): (OwnedFd, OwnedFd) =
            sys::socketpair(ty).map_err(io_err("socketpair"))?;
        let fd = theirs.as_raw_fd();
        let mut cmd = self.peer(role);
        // SAFETY: the closure only calls dup2/fcntl, which are async-signal-safe, on a
        // descriptor that stays open until after the spawn.
        unsafe {
            cmd.pre_exec(move || {
                if fd == PEER_FD {
                    // dup2 onto itself would keep close-on-exec set.
                    if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                } else if libc::dup2(fd, PEER_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            })
        };
        let child = cmd.spawn().map_err(io_err("spawn the peer"))?;
        drop(theirs);
        Ok((UnixStream::from(mine), child))
    }

    /// Starts V4V peer `role` here, or asks the remote server to: the request is the role and
    /// its arguments without the socket (`role[1]`), which the server fills in with its own.
    fn spawn_v4v(&self, role: &[String]) -> Result<PeerProc, String> {
        let Some(at) = self.remote else {
            let c = self.peer(role).spawn().map_err(io_err("spawn the peer"))?;
            return Ok(PeerProc::Local(c));
        };
        let mut s = Stream::connect_with(&self.stack.sock[1], at)
            .map_err(v4v_err("connect to the remote peer server"))?;
        let mut req = role[0].clone();
        for a in &role[2..] {
            req.push(' ');
            req.push_str(a);
        }
        req.push('\n');
        s.write_all(req.as_bytes())
            .map_err(io_err("request to the remote peer server"))?;
        Ok(PeerProc::Remote(s))
    }

    fn dst_args(&self, role: &str, port: u32) -> Vec<String> {
        vec![
            role.into(),
            self.stack.sock[0].display().to_string(),
            self.stack.domid[1].to_string(),
            port.to_string(),
        ]
    }

    /// `total` bytes, written by the peer in writes of `wsize`, read here.
    pub fn stream(&self, side: Side, total: u64, wsize: usize) -> Result<Xfer, String> {
        self.stream_via(side, total, wsize, false)
    }

    /// [`Bench::stream`]; with `shm`, V4V's two ends are `ShmStream`s.
    pub fn stream_via(
        &self,
        side: Side,
        total: u64,
        wsize: usize,
        shm: bool,
    ) -> Result<Xfer, String> {
        let w = self.window(side)?;
        let (secs, child) = match side {
            Side::Unix => {
                let (mut s, child) = self.spawn_unix(
                    libc::SOCK_STREAM,
                    &[
                        "unix-stream-send".into(),
                        total.to_string(),
                        wsize.to_string(),
                    ],
                )?;
                s.write_all(b"G").map_err(io_err("go"))?;
                let t0 = Instant::now();
                recv_bytes(&mut s, total)?;
                (t0.elapsed().as_secs_f64(), PeerProc::Local(child))
            }
            Side::V4v => {
                let mut l =
                    Listener::bind_with(&self.stack.sock[1], 0).map_err(v4v_err("listen"))?;
                let role = if shm {
                    "v4v-shm-stream-send"
                } else {
                    "v4v-stream-send"
                };
                let mut role = self.dst_args(role, l.local_port());
                role.extend([total.to_string(), wsize.to_string()]);
                let child = self.spawn_v4v(&role)?;
                let t0 = if shm {
                    let (mut s, _) = l.accept_shm().map_err(v4v_err("accept"))?;
                    s.write_all(b"G").map_err(io_err("go"))?;
                    let t0 = Instant::now();
                    recv_bytes(&mut s, total)?;
                    t0
                } else {
                    let (mut s, _) = l.accept().map_err(v4v_err("accept"))?;
                    s.write_all(b"G").map_err(io_err("go"))?;
                    let t0 = Instant::now();
                    recv_bytes(&mut s, total)?;
                    t0
                };
                (t0.elapsed().as_secs_f64(), child)
            }
        };
        let remote = reap(child)?;
        Ok(Xfer {
            secs,
            bytes: total,
            msgs: 0,
            cpu: self.cpu_since(w, remote)?,
        })
    }

    /// `count` datagrams of `size` bytes from the peer, received here.
    pub fn dgrams(&self, side: Side, count: u64, size: usize) -> Result<Xfer, String> {
        let w = self.window(side)?;
        let bad = |n: usize| format!("a {size}-byte datagram arrived as {n} bytes");
        let (secs, child) = match side {
            Side::Unix => {
                let (mut s, child) = self.spawn_unix(
                    libc::SOCK_SEQPACKET,
                    &[
                        "unix-dgram-send".into(),
                        count.to_string(),
                        size.to_string(),
                    ],
                )?;
                let mut buf = vec![0u8; size.max(1) + 1];
                s.write_all(b"G").map_err(io_err("go"))?;
                let t0 = Instant::now();
                for _ in 0..count {
                    let n = s.read(&mut buf).map_err(io_err("recv"))?;
                    if n != size {
                        return Err(bad(n));
                    }
                }
                (t0.elapsed().as_secs_f64(), PeerProc::Local(child))
            }
            Side::V4v => {
                let mut d =
                    Datagram::bind_with(&self.stack.sock[1], 0, None).map_err(v4v_err("bind"))?;
                let mut role = self.dst_args("v4v-dgram-send", d.local_port());
                role.extend([count.to_string(), size.to_string()]);
                let child = self.spawn_v4v(&role)?;
                let (_, from) = d.recv_timeout(Some(PATIENCE)).map_err(v4v_err("hello"))?;
                d.send_to(b"G", from).map_err(v4v_err("go"))?;
                let t0 = Instant::now();
                for i in 0..count {
                    let (m, _) = d
                        .recv_timeout(Some(PATIENCE))
                        .map_err(|e| format!("datagram {i} of {count}: {e}"))?;
                    if m.len() != size {
                        return Err(bad(m.len()));
                    }
                }
                (t0.elapsed().as_secs_f64(), child)
            }
        };
        let remote = reap(child)?;
        Ok(Xfer {
            secs,
            bytes: count * size as u64,
            msgs: count,
            cpu: self.cpu_since(w, remote)?,
        })
    }

    /// Pins this process (and so the peer it spawns) and the stack to the first CPU, or
    /// unpins them all.
    fn pin(&self, pinned: bool) -> Result<(), String> {
        let set = if pinned {
            CpuSet::single(self.cpus.cpus()[0])
        } else {
            self.cpus.clone()
        };
        set.apply_thread(0).map_err(io_err("sched_setaffinity"))?;
        for p in &self.stack.procs {
            set.apply_process(p.pid).map_err(io_err(&p.name))?;
        }
        Ok(())
    }

    /// `rounds` round trips of a 64-byte message to an echoing peer (after `rounds / 10`
    /// warm-up rounds), over a stream or datagrams, optionally all on one CPU.
    pub fn rtt(
        &self,
        side: Side,
        stream: bool,
        rounds: usize,
        pinned: bool,
    ) -> Result<Rtt, String> {
        self.rtt_via(side, stream, rounds, pinned, false)
    }

    /// [`Bench::rtt`] over a stream; with `shm`, V4V's two ends are `ShmStream`s.
    pub fn rtt_via(
        &self,
        side: Side,
        stream: bool,
        rounds: usize,
        pinned: bool,
        shm: bool,
    ) -> Result<Rtt, String> {
        self.pin(pinned)?;
        let r = self.rtt_run(side, stream, rounds, shm);
        let unpinned = self.pin(false);
        let r = r?;
        unpinned?;
        Ok(r)
    }

    fn rtt_run(&self, side: Side, stream: bool, rounds: usize, shm: bool) -> Result<Rtt, String> {
        let msg = [0x5au8; 64];
        let mut back = [0u8; 64 * 2];
        let warm = rounds / 10;
        let mut lat = Vec::with_capacity(rounds);
        let time = |lat: &mut Vec<Duration>, i: usize, t0: Instant| {
            if i >= warm {
                lat.push(t0.elapsed());
            }
        };
        let short = |n: usize| format!("a 64-byte echo came back as {n} bytes");
        let child = match side {
            Side::Unix => {
                let ty = if stream {
                    libc::SOCK_STREAM
                } else {
                    libc::SOCK_SEQPACKET
                };
                let (mut s, child) = self.spawn_unix(ty, &["unix-echo".into()])?;
                for i in 0..warm + rounds {
                    let t0 = Instant::now();
                    s.write_all(&msg).map_err(io_err("send"))?;
                    if stream {
                        s.read_exact(&mut back[..64]).map_err(io_err("recv"))?;
                    } else {
                        let n = s.read(&mut back).map_err(io_err("recv"))?;
                        if n != 64 {
                            return Err(short(n));
                        }
                    }
                    time(&mut lat, i, t0);
                }
                PeerProc::Local(child)
            }
            Side::V4v if stream => {
                let mut l =
                    Listener::bind_with(&self.stack.sock[1], 0).map_err(v4v_err("listen"))?;
                let role = if shm {
                    "v4v-shm-stream-echo"
                } else {
                    "v4v-stream-echo"
                };
                let child = self.spawn_v4v(&self.dst_args(role, l.local_port()))?;
                let mut timed = |i, t0| time(&mut lat, i, t0);
                if shm {
                    let (mut s, _) = l.accept_shm().map_err(v4v_err("accept"))?;
                    stream_rounds(&mut s, &msg, warm + rounds, &mut timed)?;
                } else {
                    let (mut s, _) = l.accept().map_err(v4v_err("accept"))?;
                    stream_rounds(&mut s, &msg, warm + rounds, &mut timed)?;
                }
                child
            }
            Side::V4v => {
                let mut d =
                    Datagram::bind_with(&self.stack.sock[1], 0, None).map_err(v4v_err("bind"))?;
                let child = self.spawn_v4v(&self.dst_args("v4v-dgram-echo", d.local_port()))?;
                let (_, from): (Vec<u8>, SockAddr) =
                    d.recv_timeout(Some(PATIENCE)).map_err(v4v_err("hello"))?;
                for i in 0..warm + rounds {
                    let t0 = Instant::now();
                    d.send_to(&msg, from).map_err(v4v_err("send"))?;
                    let (m, _) = d.recv_timeout(Some(PATIENCE)).map_err(v4v_err("recv"))?;
                    if m.len() != 64 {
                        return Err(short(m.len()));
                    }
                    time(&mut lat, i, t0);
                }
                d.send_to(QUIT, from).map_err(v4v_err("quit"))?;
                child
            }
        };
        reap(child)?;
        lat.sort_unstable();
        Ok(Rtt {
            p50: percentile(&lat, 0.50),
            p99: percentile(&lat, 0.99),
            p999: percentile(&lat, 0.999),
        })
    }

    /// Opens `n` streams from the first domain to a peer holding them in the second, lets
    /// them idle for `idle`, and reads each stack process's memory and CPU meanwhile.
    pub fn idle_streams(&self, n: usize, idle: Duration) -> Result<Idle, String> {
        let rss = |p: &crate::stack::Proc| sys::rss_kib(p.pid).map_err(io_err(&p.name));
        let before: Vec<u64> = self.stack.procs.iter().map(rss).collect::<Result<_, _>>()?;
        let mut child = self
            .peer(&[
                "v4v-hold".into(),
                self.stack.sock[1].display().to_string(),
                n.to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(io_err("spawn the peer"))?;
        let mut out = BufReader::new(child.stdout.take().ok_or("no peer stdout")?);
        let mut line = String::new();
        out.read_line(&mut line).map_err(io_err("peer port"))?;
        let port: u32 = line
            .trim()
            .parse()
            .map_err(|_| format!("the peer said {line:?}, not a port"))?;
        let dst = SockAddr::new(self.stack.domid[1], port);
        let t0 = Instant::now();
        let mut streams = Vec::with_capacity(n);
        let mut refused = 0u64;
        for i in 0..n {
            // The listener's backlog is bounded and the peer accepts one at a time: a refused
            // connection is retried (as a TCP client retries a SYN), for at most 10 s.
            let give_up = Instant::now() + Duration::from_secs(10);
            loop {
                match Stream::connect_with(&self.stack.sock[0], dst) {
                    Ok(s) => {
                        streams.push(s);
                        break;
                    }
                    Err(v4v::client::Error::Refused(_)) if Instant::now() < give_up => {
                        refused += 1;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(e) => return Err(format!("stream {i} of {n}: {e}")),
                }
            }
        }
        line.clear();
        out.read_line(&mut line).map_err(io_err("peer ok"))?;
        if line.trim() != "ok" {
            return Err(format!("the peer said {line:?} after accepting"));
        }
        let connect_secs = t0.elapsed().as_secs_f64();
        // Let the handshakes' after-effects settle before measuring idleness.
        std::thread::sleep(Duration::from_millis(500));
        let w = self.window(Side::V4v)?;
        let t0 = Instant::now();
        std::thread::sleep(idle);
        let cpu = self.cpu_since(w, None)?;
        let secs = t0.elapsed().as_secs_f64();
        let mut procs = Vec::new();
        for (i, p) in self.stack.procs.iter().enumerate() {
            let used = cpu
                .parts
                .iter()
                .find(|(name, _)| *name == p.name)
                .map_or(0.0, |(_, d)| d.as_secs_f64());
            procs.push((
                p.name.clone(),
                p.daemon,
                before[i],
                rss(p)?,
                used * 1e3 / secs,
            ));
        }
        drop(streams);
        drop(child.stdin.take());
        reap(PeerProc::Local(child))?;
        Ok(Idle {
            streams: n,
            connect_secs,
            refused,
            procs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_answers() {
        let ok = remote_answer(br#"{"ok":true,"exit":"exit status: 0","stderr":"","cpu":{"peer":0.5,"remote pid 7":0.25}}"#).unwrap();
        assert_eq!(
            ok,
            vec![
                ("peer".to_string(), Duration::from_millis(500)),
                ("remote pid 7".to_string(), Duration::from_millis(250))
            ]
        );
        let e = remote_answer(
            br#"{"ok":false,"exit":"exit status: 1","stderr":"v4v-bench: refused\n"}"#,
        )
        .unwrap_err();
        assert!(
            e.contains("exit status: 1") && e.contains("v4v-bench: refused"),
            "{e}"
        );
        for bad in [
            &br#"{"ok":true}"#[..],
            br#"{"ok":true,"cpu":{"peer":-1}}"#,
            br#"{"ok":true,"cpu":{"peer":"x"}}"#,
            b"",
            b"not json",
        ] {
            assert!(
                remote_answer(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<Duration> = (1..=1000).map(Duration::from_micros).collect();
        assert_eq!(percentile(&v, 0.50), 500.0);
        assert_eq!(percentile(&v, 0.99), 990.0);
        assert_eq!(percentile(&v, 0.999), 999.0);
        assert_eq!(percentile(&v, 1.0), 1000.0);
        // One sample is every percentile.
        assert_eq!(percentile(&v[..1], 0.999), 1.0);
        assert_eq!(percentile(&v[..1], 0.0), 1.0);
    }
}
