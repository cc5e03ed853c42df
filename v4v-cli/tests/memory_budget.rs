// SPDX-License-Identifier: MIT OR Apache-2.0
//! One user cannot make the daemon buffer without bound (issue 10, defect 4): user nobody's
//! datagram clients announce maximum-size frames and withhold the last byte; the daemon
//! buffers at most nobody's `max_buffer_per_user` (64 MiB) for them and paces the rest, so its
//! resident memory stays bounded, while root's datagrams and stream still work.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{Stack, rss_kib};
use v4v::client::proto::{FRAME_SEND, FrameHeader, MAX_DGRAM};
use v4v::client::{Datagram, Listener, SockAddr, Stream};

const CONNS: usize = 30;
static ZEROS: [u8; 65536] = [0; 65536];

/// A thread of the test process running as `uid` (raw `setresuid`/`setresgid` change only the
/// calling thread's credentials, which the daemon reads with `SO_PEERCRED`): `n` datagram
/// connections to `sock`, each sending a SEND frame of [`MAX_DGRAM`] bytes to `dst` but its last
/// byte, for up to `secs`. Reports on `ready` when done writing, then holds the connections until
/// `stop` says so.
fn frame_withholder(
    sock: PathBuf,
    uid: u32,
    n: usize,
    dst: SockAddr,
    secs: u64,
    ready: mpsc::Sender<usize>,
    stop: mpsc::Receiver<()>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        // SAFETY: plain system calls on this thread's own credentials; no pointers but null.
        unsafe {
            libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>());
            libc::syscall(libc::SYS_setresgid, uid, uid, uid);
            assert_eq!(
                libc::syscall(libc::SYS_setresuid, uid, uid, uid),
                0,
                "setresuid"
            );
        }
        let mut hello = b"DGRAM 0\n".to_vec();
        hello.extend(
            FrameHeader {
                len: MAX_DGRAM,
                kind: FRAME_SEND,
                domain: dst.domid,
                port: dst.port,
                aux: 0,
            }
            .encode(),
        );
        let mut conns: Vec<(UnixStream, usize)> = (0..n)
            .filter_map(|_| {
                let mut c = UnixStream::connect(&sock).ok()?;
                c.write_all(&hello).ok()?;
                c.set_nonblocking(true).ok()?;
                Some((c, 0))
            })
            .collect();
        let want = MAX_DGRAM as usize - 1;
        let end = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < end {
            let mut busy = false;
            for (c, sent) in &mut conns {
                if *sent >= want {
                    continue;
                }
                let k = (want - *sent).min(ZEROS.len());
                if let Ok(r) = c.write(&ZEROS[..k]) {
                    *sent += r;
                    busy |= r > 0;
                }
            }
            if !busy {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = ready.send(conns.iter().map(|(_, s)| s).sum());
        let _ = stop.recv();
    })
}

#[test]
fn partial_frames_of_one_user_are_bounded_by_its_budget() {
    let s = Stack::start(&[0, 1]);
    let sock = s.sock(0);
    let pid = s.daemon_pid(0);
    let _dest = Datagram::bind_with(&s.sock(1), 5000, None).expect("bind 1:5000");
    let before = rss_kib(pid);
    let (ready_tx, ready) = mpsc::channel();
    let (stop, stop_rx) = mpsc::channel();
    let hog = frame_withholder(
        sock.clone(),
        65534,
        CONNS,
        SockAddr::new(1, 5000),
        6,
        ready_tx,
        stop_rx,
    );
    let pushed = ready.recv().expect("withholder");
    let during = rss_kib(pid);
    // Root's traffic meanwhile.
    let o = s.run(0, &["send", "1:5000", "from root"]);
    let root_send = o.status.code();
    let mut l = Listener::bind_with(&s.sock(1), 6000).expect("listen");
    let reader = std::thread::spawn(move || {
        let (mut srv, _) = l.accept().expect("accept");
        let mut n = 0;
        let mut buf = vec![0u8; 65536];
        loop {
            match srv.read(&mut buf) {
                Ok(0) => break n,
                Ok(k) => n += k,
                Err(e) => panic!("{e}"),
            }
        }
    });
    let mut c = Stream::connect_with(&sock, SockAddr::new(1, 6000)).expect("connect");
    for _ in 0..(16 << 20) / ZEROS.len() {
        c.write_all(&ZEROS).expect("stream");
    }
    c.shutdown(std::net::Shutdown::Write).expect("shutdown");
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).expect("end");
    let streamed = reader.join().expect("reader");
    let _ = stop.send(());
    hog.join().expect("withholder");
    eprintln!(
        "v4vd RSS: {before} KiB before, {during} KiB with nobody's {} MiB of partial frames",
        pushed >> 20
    );
    assert_eq!(root_send, Some(0), "root's datagram: {o:?}");
    assert_eq!(streamed, 16 << 20);
    assert!(
        during < before + 96 * 1024,
        "v4vd grew from {before} KiB to {during} KiB buffering nobody's partial frames"
    );
}
