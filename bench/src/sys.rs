// SPDX-License-Identifier: MIT OR Apache-2.0
//! What the benchmark reads from and asks of the kernel: CPU time and resident memory of a
//! process, CPU affinity of every thread of a process, socket pairs, the load average, children
//! that die with it.
//!
//! Owns no process: it only observes (and pins) pids it is given.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

/// Makes the process `cmd` starts get SIGKILL when this one exits, however it exits: `Drop`
/// stops the stack and the peers only on a normal exit, and a benchmark killed by a signal (a
/// `timeout`, a SIGTERM) left its simulator and daemons running. The benchmark spawns from its
/// one thread only (the signal comes when the spawning thread exits).
pub fn die_with_parent(cmd: &mut Command) -> &mut Command {
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    // SAFETY: the closure only calls prctl and getppid, which are async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            // Exited before the prctl: nobody would send the signal any more.
            if libc::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        })
    }
}

/// The threads of process `pid` (its `/proc/PID/task` entries).
pub fn tasks(pid: u32) -> io::Result<Vec<u32>> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        if let Some(t) = e?.file_name().to_str().and_then(|s| s.parse().ok()) {
            v.push(t);
        }
    }
    Ok(v)
}

/// CPU time (user + system) process `pid` has used so far, summed over its threads: from
/// `schedstat` (nanoseconds) where the kernel has it, else from `stat` (clock ticks).
pub fn cpu_time(pid: u32) -> io::Result<Duration> {
    let mut ns: u64 = 0;
    for t in tasks(pid)? {
        match std::fs::read_to_string(format!("/proc/{pid}/task/{t}/schedstat")) {
            Ok(s) => {
                ns += s
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .ok_or_else(|| io::Error::other("unreadable schedstat"))?
            }
            Err(_) => ns += stat_ticks(pid, t)? * tick_ns(),
        }
    }
    Ok(Duration::from_nanos(ns))
}

fn tick_ns() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    1_000_000_000 / u64::try_from(hz).unwrap_or(100).max(1)
}

/// utime + stime of thread `tid` of `pid`, in clock ticks.
fn stat_ticks(pid: u32, tid: u32) -> io::Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat"))?;
    // The command name (field 2) may hold spaces and parentheses: fields count from the last ')'.
    let rest = s
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| io::Error::other("unreadable stat"))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, utime 14, stime 15.
    let get = |i: usize| f.get(i - 3).and_then(|v| v.parse::<u64>().ok());
    match (get(14), get(15)) {
        (Some(u), Some(s)) => Ok(u + s),
        _ => Err(io::Error::other("unreadable stat")),
    }
}

/// Resident memory of process `pid`, in KiB.
pub fn rss_kib(pid: u32) -> io::Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| io::Error::other("no VmRSS"))
}

/// CPU time of this process (`RUSAGE_SELF`) or of its reaped children (`RUSAGE_CHILDREN`).
pub fn rusage(who: libc::c_int) -> Duration {
    // SAFETY: an all-zero rusage is a valid value of the plain C struct.
    let mut r: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `r` is a valid, writable rusage; `who` is one of the two constants.
    unsafe { libc::getrusage(who, &mut r) };
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    tv(r.ru_utime) + tv(r.ru_stime)
}

/// A set of CPUs.
#[derive(Clone)]
pub struct CpuSet(libc::cpu_set_t);

impl CpuSet {
    /// The CPUs this thread may run on now.
    pub fn current() -> io::Result<CpuSet> {
        // SAFETY: an all-zero cpu_set_t is the empty set.
        let mut s: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: `s` is a valid cpu_set_t of the size passed.
        let r = unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&s), &mut s) };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(CpuSet(s))
    }

    /// The set of the single CPU `cpu`.
    pub fn single(cpu: usize) -> CpuSet {
        // SAFETY: an all-zero cpu_set_t is the empty set.
        let mut s: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: CPU_SET indexes within the set; `cpu` is taken modulo its size.
        unsafe { libc::CPU_SET(cpu % libc::CPU_SETSIZE as usize, &mut s) };
        CpuSet(s)
    }

    /// The CPUs in the set, lowest first.
    pub fn cpus(&self) -> Vec<usize> {
        (0..libc::CPU_SETSIZE as usize)
            // SAFETY: `c` is below CPU_SETSIZE, within the set.
            .filter(|&c| unsafe { libc::CPU_ISSET(c, &self.0) })
            .collect()
    }

    /// Applies the set to thread `tid` (0: the calling thread).
    pub fn apply_thread(&self, tid: u32) -> io::Result<()> {
        // SAFETY: a valid cpu_set_t of the size passed; `tid` is a thread id or 0.
        let r = unsafe {
            libc::sched_setaffinity(tid as libc::pid_t, std::mem::size_of_val(&self.0), &self.0)
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Applies the set to every thread of process `pid`.
    pub fn apply_process(&self, pid: u32) -> io::Result<()> {
        for t in tasks(pid)? {
            self.apply_thread(t)?;
        }
        Ok(())
    }
}

/// A connected pair of Unix sockets of type `ty` (`SOCK_STREAM`, `SOCK_SEQPACKET`), both
/// close-on-exec.
pub fn socketpair(ty: libc::c_int) -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` has room for the two descriptors socketpair writes.
    let r =
        unsafe { libc::socketpair(libc::AF_UNIX, ty | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr()) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: socketpair succeeded: both descriptors are open and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Raises this process's descriptor limit to its hard limit (children inherit it); the new
/// soft limit.
pub fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    lim.rlim_cur = lim.rlim_max;
    // SAFETY: raising the soft limit up to the hard one is always allowed.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    lim.rlim_cur
}

/// The 1, 5 and 15 minute load averages.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// Online CPUs.
pub fn ncpus() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(n).unwrap_or(1)
}
