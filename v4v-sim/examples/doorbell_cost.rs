// SPDX-License-Identifier: MIT OR Apache-2.0
//! What one doorbell costs: two processes pinned to one CPU ping-pong one byte, each side
//! `poll(POLLIN)`, `read`, `write`, as the simulator and a guest do (docs/sim.md, "Doorbells").
//! Compared, in the same run and alternated: a Unix stream socket pair (protocol version 2's
//! doorbell), two pipes (version 3's) and two eventfds (v4vd's client doorbell).
//!
//! `cargo run --release -p v4v-sim --example doorbell_cost -- [ROUND_TRIPS] [ROUNDS]`

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Instant;

#[derive(Clone, Copy, Debug)]
enum Kind {
    Socket,
    Pipe,
    Eventfd,
}

/// A doorbell each way: (ring the other side, hear the other side), for parent and child.
struct Bells {
    parent: (OwnedFd, OwnedFd),
    child: (OwnedFd, OwnedFd),
}

fn check(r: libc::c_int) -> std::io::Result<libc::c_int> {
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Takes ownership of a fresh descriptor.
fn own(fd: RawFd) -> OwnedFd {
    // SAFETY: `fd` was just returned by the kernel and nobody else owns it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn bells(kind: Kind) -> std::io::Result<Bells> {
    let mut a = [0 as RawFd; 2];
    let mut b = [0 as RawFd; 2];
    match kind {
        Kind::Socket => {
            // SAFETY: socketpair fills a live two-int array.
            check(unsafe {
                libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, a.as_mut_ptr())
            })?;
            // One socket pair carries both directions: each side rings and hears on its end.
            let (p, c) = (own(a[0]), own(a[1]));
            Ok(Bells {
                parent: (p.try_clone()?, p),
                child: (c.try_clone()?, c),
            })
        }
        Kind::Pipe => {
            // SAFETY: pipe fills a live two-int array.
            check(unsafe { libc::pipe(a.as_mut_ptr()) })?;
            // SAFETY: as above.
            check(unsafe { libc::pipe(b.as_mut_ptr()) })?;
            Ok(Bells {
                parent: (own(a[1]), own(b[0])),
                child: (own(b[1]), own(a[0])),
            })
        }
        Kind::Eventfd => {
            // SAFETY: eventfd takes integer arguments.
            let to_child = own(check(unsafe { libc::eventfd(0, 0) })?);
            // SAFETY: as above.
            let to_parent = own(check(unsafe { libc::eventfd(0, 0) })?);
            Ok(Bells {
                parent: (to_child.try_clone()?, to_parent.try_clone()?),
                child: (to_parent, to_child),
            })
        }
    }
}

/// One ring: an eventfd takes 8 bytes, the others one.
fn ring(kind: Kind, fd: &OwnedFd) {
    let one = 1u64.to_ne_bytes();
    let len = if matches!(kind, Kind::Eventfd) { 8 } else { 1 };
    // SAFETY: writes from a live local buffer of at least `len` bytes.
    let n = unsafe { libc::write(fd.as_raw_fd(), one.as_ptr().cast(), len) };
    assert_eq!(n, len as isize, "ring: {}", std::io::Error::last_os_error());
}

fn hear(fd: &OwnedFd) {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: polls one live pollfd.
    assert_eq!(unsafe { libc::poll(&mut p, 1, -1) }, 1);
    let mut buf = [0u8; 64];
    // SAFETY: reads into a live local buffer of the stated length.
    let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    assert!(n > 0, "hear: {}", std::io::Error::last_os_error());
}

fn pin_to_cpu0() {
    // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET and sched_setaffinity touch only it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Microseconds per round trip.
fn measure(kind: Kind, round_trips: usize) -> std::io::Result<f64> {
    let b = bells(kind)?;
    // SAFETY: this program has one thread; the child only rings and reads, then exits.
    let pid = check(unsafe { libc::fork() })?;
    if pid == 0 {
        drop(b.parent);
        for _ in 0..round_trips {
            hear(&b.child.1);
            ring(kind, &b.child.0);
        }
        // SAFETY: ends the child at once, without running the parent's atexit handlers.
        unsafe { libc::_exit(0) };
    }
    drop(b.child);
    let started = Instant::now();
    for _ in 0..round_trips {
        ring(kind, &b.parent.0);
        hear(&b.parent.1);
    }
    let elapsed = started.elapsed();
    let mut status = 0;
    // SAFETY: waits for our own child into a live int.
    check(unsafe { libc::waitpid(pid, &mut status, 0) })?;
    Ok(elapsed.as_secs_f64() * 1e6 / round_trips as f64)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let round_trips: usize = args.next().map_or(Ok(50_000), |v| v.parse())?;
    let rounds: usize = args.next().map_or(Ok(5), |v| v.parse())?;
    pin_to_cpu0();
    let kinds = [Kind::Socket, Kind::Pipe, Kind::Eventfd];
    let mut results: Vec<Vec<f64>> = vec![Vec::new(); kinds.len()];
    for _ in 0..rounds {
        for (i, k) in kinds.iter().enumerate() {
            results[i].push(measure(*k, round_trips)?);
        }
    }
    let socket = median(&mut results[0].clone());
    println!(
        "one-byte doorbell round trip, two processes on CPU 0, median of {rounds} rounds of {round_trips}"
    );
    for (i, k) in kinds.iter().enumerate() {
        let m = median(&mut results[i]);
        println!(
            "{:<8} {:>6.2} us  ({:.2}x the socket pair)",
            format!("{k:?}").to_lowercase(),
            m,
            m / socket
        );
    }
    Ok(())
}
