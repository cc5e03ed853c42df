// SPDX-License-Identifier: MIT OR Apache-2.0
//! How a guest waits for the simulator's reply on the shared-memory channel.

mod common;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::Sim;
use v4v::Hypervisor;
use v4v::backend::sim::{SimHypervisor, Transport};

/// The system calls a thread may be sleeping in when it waits in `poll`: glibc's `poll` is
/// `ppoll` where the kernel has no `poll`.
#[cfg(target_arch = "x86_64")]
const POLL_CALLS: [i64; 2] = [libc::SYS_poll, libc::SYS_ppoll];
#[cfg(not(target_arch = "x86_64"))]
const POLL_CALLS: [i64; 1] = [libc::SYS_ppoll];

/// The system call thread `tid` of this process is in, or `None` while it runs.
fn syscall_of(tid: i32) -> Option<i64> {
    let s = std::fs::read_to_string(format!("/proc/self/task/{tid}/syscall")).ok()?;
    s.split_whitespace().next()?.parse().ok()
}

/// A guest waiting for its reply sleeps in `poll`, not in a blocking `recv` on its doorbell:
/// a task blocked in `recv` on a Unix socket is woken by every wake-up of the socket's queue,
/// the simulator's read of the request's doorbell byte ("room to write") among them. On a CPU
/// shared with the simulator the guest slept in 0.91-0.93 of 1,000 requests that way, against
/// 0.58-0.65 in `poll` (which wakes only for what it asked), and round trips through the whole
/// stack were 7 % faster. Counting sleeps depends on the machine's load, so the test stops the
/// simulator and looks at the system call the waiting guest sleeps in.
#[test]
fn a_guest_waiting_for_its_reply_sleeps_in_poll() {
    let sim = Sim::start(&[]);
    let g = SimHypervisor::connect_with(sim.path(), Some(1), Transport::Channel).unwrap();
    assert!(g.uses_channel());
    g.info().unwrap();
    let pid = sim.child.id() as i32;
    // SAFETY: signals our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    let (tx, rx) = mpsc::channel();
    let waiter = std::thread::spawn(move || {
        // SAFETY: gettid takes no arguments.
        tx.send(unsafe { libc::gettid() }).unwrap();
        g.info().map(|i| i.domid)
    });
    let tid = rx.recv().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    // The thread stays in its blocking call until the stopped simulator replies: poll until
    // it is in the same call twice, half a second apart.
    let call = loop {
        if let Some(n) = syscall_of(tid) {
            if !seen.contains(&n) {
                seen.push(n);
            }
            std::thread::sleep(Duration::from_millis(500));
            if syscall_of(tid) == Some(n) {
                break n;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the guest never slept; calls seen: {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    // SAFETY: signals our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    assert_eq!(
        waiter.join().unwrap().unwrap(),
        1,
        "the reply still arrives"
    );
    assert!(
        POLL_CALLS.contains(&call),
        "the waiting guest sleeps in system call {call}, not poll ({POLL_CALLS:?})"
    );
}
