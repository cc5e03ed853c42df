// SPDX-License-Identifier: MIT OR Apache-2.0
//! A minimal xenstore client, the control channel between the conformance runner in dom0 and its
//! agent in a guest (see [`crate::xen_backend`]). It speaks the wire protocol of Xen's
//! `xs_wire.h` (a 16-byte header `{type, req_id, tx_id, len}` and a payload) over
//! `/run/xenstored/socket` where xenstored runs (dom0) or `/dev/xen/xenbus` (any domain), and
//! waits for changes with watches. Xenstore is independent of V4V, so no V4V state (an ACL rule, a
//! full ring) can break the channel.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

const XS_READ: u32 = 2;
const XS_WATCH: u32 = 4;
const XS_WRITE: u32 = 11;
const XS_RM: u32 = 13;
const XS_WATCH_EVENT: u32 = 15;
const XS_ERROR: u32 = 16;

/// The largest payload xenstored accepts.
pub const PAYLOAD_MAX: usize = 4096;

const SOCKET: &str = "/run/xenstored/socket";
const XENBUS: &str = "/dev/xen/xenbus";
/// How long a single request may take before the connection is declared dead.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A connection to xenstore.
pub struct Xenstore {
    conn: File,
    /// Bytes read but not yet parsed into messages.
    inbuf: Vec<u8>,
    next_req: u32,
    /// Watch events received and not yet consumed.
    events: usize,
    watched: Vec<String>,
}

fn err(what: impl std::fmt::Display) -> String {
    format!("xenstore: {what}")
}

impl Xenstore {
    /// Connects through xenstored's socket if there is one, else through `/dev/xen/xenbus`.
    pub fn open() -> Result<Self, String> {
        let conn: File = match UnixStream::connect(SOCKET) {
            Ok(s) => File::from(OwnedFd::from(s)),
            Err(_) => std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(XENBUS)
                .map_err(|e| err(format!("neither {SOCKET} nor {XENBUS}: {e}")))?,
        };
        Ok(Xenstore {
            conn,
            inbuf: Vec::new(),
            next_req: 1,
            events: 0,
            watched: Vec::new(),
        })
    }

    /// Waits up to `timeout` for the connection to be readable.
    fn poll(&self, timeout: Duration) -> Result<bool, String> {
        let mut pfd = libc::pollfd {
            fd: self.conn.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: polls one live pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                return Ok(false);
            }
            return Err(err(e));
        }
        Ok(r > 0)
    }

    /// The next complete message, waiting up to `timeout`; `None` on timeout.
    fn read_message(&mut self, timeout: Duration) -> Result<Option<(u32, u32, Vec<u8>)>, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.inbuf.len() >= 16 {
                let word =
                    |i: usize| u32::from_ne_bytes(self.inbuf[i * 4..i * 4 + 4].try_into().unwrap());
                let (ty, req, len) = (word(0), word(1), word(3) as usize);
                if self.inbuf.len() >= 16 + len {
                    let payload = self.inbuf[16..16 + len].to_vec();
                    self.inbuf.drain(..16 + len);
                    return Ok(Some((ty, req, payload)));
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            if !self.poll(deadline - now)? {
                continue;
            }
            let mut buf = [0u8; 8192];
            match self.conn.read(&mut buf) {
                Ok(0) => return Err(err("connection closed")),
                Ok(n) => self.inbuf.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(err(e)),
            }
        }
    }

    /// One request and its reply: `Ok(Err(errno name))` when xenstored refused it.
    fn request(&mut self, ty: u32, payload: &[u8]) -> Result<Result<Vec<u8>, String>, String> {
        if payload.len() > PAYLOAD_MAX {
            return Err(err(format!("payload of {} bytes", payload.len())));
        }
        let req = self.next_req;
        self.next_req = self.next_req.wrapping_add(1).max(1);
        let mut msg = Vec::with_capacity(16 + payload.len());
        for w in [ty, req, 0, payload.len() as u32] {
            msg.extend_from_slice(&w.to_ne_bytes());
        }
        msg.extend_from_slice(payload);
        self.conn.write_all(&msg).map_err(err)?;
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some((rty, rreq, body)) = self.read_message(left)? else {
                return Err(err("no answer from xenstored"));
            };
            if rty == XS_WATCH_EVENT {
                self.events += 1;
                continue;
            }
            if rreq != req {
                continue; // a stale reply
            }
            if rty == XS_ERROR {
                let name = String::from_utf8_lossy(&body);
                return Ok(Err(name.trim_end_matches('\0').to_string()));
            }
            return Ok(Ok(body));
        }
    }

    fn path_arg(path: &str) -> Vec<u8> {
        let mut v = path.as_bytes().to_vec();
        v.push(0);
        v
    }

    /// The value at `path`, `None` when it does not exist.
    pub fn read(&mut self, path: &str) -> Result<Option<String>, String> {
        match self.request(XS_READ, &Self::path_arg(path))? {
            Ok(v) => Ok(Some(String::from_utf8_lossy(&v).into_owned())),
            Err(e) if e == "ENOENT" => Ok(None),
            Err(e) => Err(err(format!("read {path}: {e}"))),
        }
    }

    /// Writes `value` at `path` (creating the node and its parents).
    pub fn write(&mut self, path: &str, value: &str) -> Result<(), String> {
        let mut p = Self::path_arg(path);
        p.extend_from_slice(value.as_bytes());
        self.request(XS_WRITE, &p)?
            .map(drop)
            .map_err(|e| err(format!("write {path}: {e}")))
    }

    /// Removes `path` and everything below it (a missing node is fine).
    pub fn rm(&mut self, path: &str) -> Result<(), String> {
        match self.request(XS_RM, &Self::path_arg(path))? {
            Ok(_) => Ok(()),
            Err(e) if e == "ENOENT" => Ok(()),
            Err(e) => Err(err(format!("rm {path}: {e}"))),
        }
    }

    fn watch(&mut self, path: &str) -> Result<(), String> {
        if self.watched.iter().any(|p| p == path) {
            return Ok(());
        }
        let mut p = Self::path_arg(path);
        p.extend_from_slice(b"v4v-conformance\0");
        match self.request(XS_WATCH, &p)? {
            Ok(_) => {}
            Err(e) if e == "EEXIST" => {}
            Err(e) => return Err(err(format!("watch {path}: {e}"))),
        }
        self.watched.push(path.to_string());
        Ok(())
    }

    /// Waits until the value at `path` satisfies `accept`, for at most `timeout`, and returns it.
    /// Woken by a watch on `path`, and re-reads every 250 ms in case an event was lost.
    pub fn wait_for(
        &mut self,
        path: &str,
        timeout: Duration,
        accept: &dyn Fn(&str) -> bool,
    ) -> Result<String, String> {
        self.watch(path)?;
        let deadline = Instant::now() + timeout;
        loop {
            self.events = 0;
            if let Some(v) = self.read(path)?
                && accept(&v)
            {
                return Ok(v);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(err(format!(
                    "timed out after {} s waiting on {path}",
                    timeout.as_secs()
                )));
            }
            if self.events > 0 {
                continue;
            }
            let slice = (deadline - now).min(Duration::from_millis(250));
            while let Some((ty, _, _)) = self.read_message(slice)? {
                if ty == XS_WATCH_EVENT {
                    break;
                }
            }
        }
    }
}

/// A strictly alternating message channel over two xenstore keys under `dir`: each side writes
/// `SEQ BODY` to its own key and waits for the other's next sequence number on the other key.
pub struct XsChannel {
    xs: Xenstore,
    send_key: String,
    recv_key: String,
    sent: u64,
    received: u64,
}

impl XsChannel {
    /// The coordinator's end: writes `DIR/to-agent`, reads `DIR/to-coordinator`.
    pub fn coordinator(dir: &str) -> Result<Self, String> {
        let mut xs = Xenstore::open()?;
        xs.rm(&format!("{dir}/to-agent"))?;
        Ok(XsChannel {
            xs,
            send_key: format!("{dir}/to-agent"),
            recv_key: format!("{dir}/to-coordinator"),
            sent: 0,
            received: 0,
        })
    }

    /// The agent's end: clears `DIR`, writes `DIR/to-coordinator`, reads `DIR/to-agent`.
    pub fn agent(dir: &str) -> Result<Self, String> {
        let mut xs = Xenstore::open()?;
        xs.rm(dir)?;
        Ok(XsChannel {
            xs,
            send_key: format!("{dir}/to-coordinator"),
            recv_key: format!("{dir}/to-agent"),
            sent: 0,
            received: 0,
        })
    }
}

fn seq_of(v: &str) -> Option<u64> {
    v.split(' ').next()?.parse().ok()
}

impl crate::xen_backend::Channel for XsChannel {
    fn send(&mut self, msg: &str) -> Result<(), String> {
        self.sent += 1;
        let mut v = format!("{} {msg}", self.sent);
        if v.len() > PAYLOAD_MAX - 512 {
            let mut cut = PAYLOAD_MAX - 512;
            while !v.is_char_boundary(cut) {
                cut -= 1;
            }
            v.truncate(cut);
        }
        self.xs.write(&self.send_key, &v)
    }

    fn recv(&mut self, timeout: Duration) -> Result<String, String> {
        let want = self.received + 1;
        let v = self
            .xs
            .wait_for(&self.recv_key, timeout, &|v| seq_of(v) == Some(want))?;
        self.received = want;
        Ok(v.split_once(' ')
            .map(|(_, b)| b.to_string())
            .unwrap_or_default())
    }
}
