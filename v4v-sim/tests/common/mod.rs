// SPDX-License-Identifier: MIT OR Apache-2.0
//! Shared helpers for the simulator-process tests: start `v4v-sim`, connect guests, set up rings.

#![allow(dead_code)]

use std::io::IoSlice;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use v4v::abi::{Addr, DOMID_SELF, DomId, PROTO_DGRAM, RingId, SendAddr};
use v4v::ring::{RingReader, ring_bytes};
use v4v::{HvError, Hypervisor, backend};

/// A running `v4v-sim` on a socket in a fresh directory; killed (if still running) on drop.
pub struct Sim {
    pub child: Child,
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

impl Sim {
    pub fn start(extra: &[&str]) -> Sim {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("v4v-sim-test-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let socket = dir.join("sim.sock");
        let log = dir.join("sim.log");
        let child = Command::new(env!("CARGO_BIN_EXE_v4v-sim"))
            .arg("--socket")
            .arg(&socket)
            .args(["--log-level", "debug"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start v4v-sim");
        let mut sim = Sim {
            child,
            dir,
            socket,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::os::unix::net::UnixStream::connect(&sim.socket).is_err() {
            if let Ok(Some(status)) = sim.child.try_wait() {
                panic!("v4v-sim exited early ({status}): {}", sim.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "v4v-sim did not start: {}",
                sim.log_text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        sim
    }

    pub fn spec(&self, domid: Option<DomId>) -> String {
        match domid {
            Some(d) => format!("sim:{}?domid={d}", self.socket.display()),
            None => format!("sim:{}", self.socket.display()),
        }
    }

    pub fn guest(&self, domid: DomId) -> Box<dyn Hypervisor> {
        backend::open(&self.spec(Some(domid)))
            .unwrap_or_else(|e| panic!("claim dom{domid}: {e}\n{}", self.log_text()))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Asserts the simulator is still running.
    pub fn assert_alive(&mut self) {
        if let Some(status) = self.child.try_wait().expect("try_wait") {
            panic!("v4v-sim died ({status}):\n{}", self.log_text());
        }
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill with the id of the child process this test started.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, sig) }, 0);
    }

    /// Waits for the simulator to exit, up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                return s;
            }
            assert!(Instant::now() < deadline, "v4v-sim did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn path(&self) -> &Path {
        &self.socket
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Registers a fresh ring of `len` data bytes at `port` for `partner` in memory the backend
/// allocated, and returns the owner's reader over that same memory.
pub fn ring(hv: &dyn Hypervisor, port: u32, partner: DomId, len: u32) -> RingReader {
    let mem = hv.alloc_ring_memory(ring_bytes(len)).expect("ring memory");
    let r = RingReader::new(mem, 0, len).expect("reader");
    r.init_header(RingId {
        addr: Addr::new(DOMID_SELF, port),
        partner,
        pad: 0,
    })
    .expect("header");
    hv.register_ring(r.memory(), 0).expect("register");
    r
}

pub fn send(
    hv: &dyn Hypervisor,
    src_port: u32,
    dst: DomId,
    port: u32,
    data: &[u8],
) -> Result<u32, HvError> {
    let addr = SendAddr {
        src: Addr::new(DOMID_SELF, src_port),
        dst: Addr::new(dst, port),
    };
    hv.sendv(&addr, &[IoSlice::new(data)], PROTO_DGRAM)
}

/// Whether `fd` polls readable within `ms` milliseconds.
pub fn readable(fd: BorrowedFd<'_>, ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: polls one live pollfd.
    let n = unsafe { libc::poll(&mut p, 1, ms) };
    // A pipe whose writer closed polls POLLHUP alone: a read would say so at once.
    n == 1 && p.revents & (libc::POLLIN | libc::POLLHUP) != 0
}

/// Reads one frame the simulator sent (header, body, descriptors) from a blocking socket: a
/// reply (a version-2 hello's carries four descriptors) or a fatal frame.
pub fn read_frame(
    s: &std::os::unix::net::UnixStream,
) -> std::io::Result<(
    v4v::backend::sim::protocol::FrameHeader,
    Vec<u8>,
    Vec<std::os::fd::OwnedFd>,
)> {
    use std::io::Read;
    use std::os::fd::AsFd;
    use v4v::backend::sim::protocol::{FRAME_HEADER_SIZE, FrameHeader, fdpass};
    let mut head = [0u8; FRAME_HEADER_SIZE];
    let mut got = 0;
    let mut fds = Vec::new();
    while got < head.len() {
        let r = fdpass::recv(s.as_fd(), &mut head[got..], false)?;
        if r.len == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        got += r.len;
        fds.extend(r.fds);
    }
    let h = FrameHeader::parse_reply(&head).map_err(|e| std::io::Error::other(e.to_string()))?;
    let mut body = vec![0u8; h.body_len as usize];
    (&*s).read_exact(&mut body)?;
    Ok((h, body, fds))
}
