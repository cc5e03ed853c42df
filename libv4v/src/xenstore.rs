// SPDX-License-Identifier: MIT OR Apache-2.0
//! The project's one xenstore client, and the name directory built on it ([`XenNames`]).
//!
//! It speaks the wire protocol of Xen's `xs_wire.h` — a 16-byte header `{type, req_id, tx_id,
//! len}` (native endian) and a payload — over `/run/xenstored/socket` where xenstored runs
//! (dom0) or `/dev/xen/xenbus` (any domain), with no libxenstore. Requests are answered in
//! order; watch events may arrive between them and are counted, so [`Xenstore::take_events`] or
//! a poll on [`Xenstore::fd`] tells a watcher something changed. This module owns the connection;
//! it does not know what the keys mean (the conformance runner's control channel, v4vd's names).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::abi::DomId;
use crate::names::{self, DirectoryError, NameDirectory, NameEntry, PUBLISHED_DIR};

const XS_DIRECTORY: u32 = 1;
const XS_READ: u32 = 2;
const XS_WATCH: u32 = 4;
const XS_WRITE: u32 = 11;
const XS_RM: u32 = 13;
const XS_SET_PERMS: u32 = 14;
const XS_WATCH_EVENT: u32 = 15;
const XS_ERROR: u32 = 16;

/// The largest payload xenstored accepts.
pub const PAYLOAD_MAX: usize = 4096;

const SOCKET: &str = "/run/xenstored/socket";
const XENBUS: &str = "/dev/xen/xenbus";
/// How long a single request may take before the connection is declared dead.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// What went wrong talking to xenstore.
#[derive(Debug, Error)]
pub enum XsError {
    #[error("xenstore: cannot connect: neither {SOCKET} nor {XENBUS}: {0}")]
    Open(std::io::Error),
    #[error("xenstore: {0}")]
    Io(#[from] std::io::Error),
    #[error("xenstore: connection closed")]
    Closed,
    #[error("xenstore: no answer within {} s", REQUEST_TIMEOUT.as_secs())]
    NoAnswer,
    #[error("xenstore: timed out after {secs} s waiting on {path}")]
    WaitTimedOut { path: String, secs: u64 },
    #[error("xenstore: payload of {0} bytes is too long")]
    TooLong(usize),
    /// xenstored refused the request with this errno name (`EACCES`, `ENOENT`, ...).
    #[error("xenstore: {op} {path}: {errno}")]
    Refused {
        op: &'static str,
        path: String,
        errno: String,
    },
}

impl XsError {
    /// The errno name xenstored refused with, if it did.
    pub fn refused(&self) -> Option<&str> {
        match self {
            XsError::Refused { errno, .. } => Some(errno),
            _ => None,
        }
    }
}

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

impl Xenstore {
    /// Connects through xenstored's socket if there is one, else through `/dev/xen/xenbus`.
    pub fn open() -> Result<Self, XsError> {
        let conn: File = match UnixStream::connect(SOCKET) {
            Ok(s) => File::from(OwnedFd::from(s)),
            Err(_) => std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(XENBUS)
                .map_err(XsError::Open)?,
        };
        Ok(Xenstore {
            conn,
            inbuf: Vec::new(),
            next_req: 1,
            events: 0,
            watched: Vec::new(),
        })
    }

    /// The connection's descriptor: readable when a watch event (or a reply) arrived.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.conn.as_fd()
    }

    /// Waits up to `timeout` for the connection to be readable.
    fn poll(&self, timeout: Duration) -> Result<bool, XsError> {
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
            return Err(e.into());
        }
        Ok(r > 0)
    }

    /// The next complete message, waiting up to `timeout`; `None` on timeout.
    fn read_message(&mut self, timeout: Duration) -> Result<Option<(u32, u32, Vec<u8>)>, XsError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(head) = self.inbuf.first_chunk::<16>() {
                let word = |i: usize| {
                    u32::from_ne_bytes([
                        head[i * 4],
                        head[i * 4 + 1],
                        head[i * 4 + 2],
                        head[i * 4 + 3],
                    ])
                };
                let (ty, req, len) = (word(0), word(1), word(3) as usize);
                if len > PAYLOAD_MAX {
                    return Err(XsError::TooLong(len));
                }
                if self.inbuf.len() >= 16 + len {
                    let payload = self.inbuf[16..16 + len].to_vec();
                    self.inbuf.drain(..16 + len);
                    return Ok(Some((ty, req, payload)));
                }
            }
            // Polled even when the time is up (a zero timeout still reads what has arrived).
            let left = deadline.saturating_duration_since(Instant::now());
            if !self.poll(left)? {
                if Instant::now() >= deadline {
                    return Ok(None);
                }
                continue;
            }
            let mut buf = [0u8; 8192];
            match self.conn.read(&mut buf) {
                Ok(0) => return Err(XsError::Closed),
                Ok(n) => self.inbuf.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// One request and its reply: `Ok(Err(errno name))` when xenstored refused it.
    fn request(&mut self, ty: u32, payload: &[u8]) -> Result<Result<Vec<u8>, String>, XsError> {
        if payload.len() > PAYLOAD_MAX {
            return Err(XsError::TooLong(payload.len()));
        }
        let req = self.next_req;
        self.next_req = self.next_req.wrapping_add(1).max(1);
        let mut msg = Vec::with_capacity(16 + payload.len());
        for w in [ty, req, 0, payload.len() as u32] {
            msg.extend_from_slice(&w.to_ne_bytes());
        }
        msg.extend_from_slice(payload);
        self.conn.write_all(&msg)?;
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some((rty, rreq, body)) = self.read_message(left)? else {
                return Err(XsError::NoAnswer);
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

    fn refused(op: &'static str, path: &str, errno: String) -> XsError {
        XsError::Refused {
            op,
            path: path.to_string(),
            errno,
        }
    }

    /// The value at `path`, `None` when it does not exist.
    pub fn read(&mut self, path: &str) -> Result<Option<String>, XsError> {
        match self.request(XS_READ, &Self::path_arg(path))? {
            Ok(v) => Ok(Some(String::from_utf8_lossy(&v).into_owned())),
            Err(e) if e == "ENOENT" => Ok(None),
            Err(e) => Err(Self::refused("read", path, e)),
        }
    }

    /// The children of `path` (empty when it does not exist).
    pub fn directory(&mut self, path: &str) -> Result<Vec<String>, XsError> {
        match self.request(XS_DIRECTORY, &Self::path_arg(path))? {
            Ok(v) => Ok(v
                .split(|b| *b == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()),
            Err(e) if e == "ENOENT" => Ok(Vec::new()),
            Err(e) => Err(Self::refused("directory", path, e)),
        }
    }

    /// Writes `value` at `path` (creating the node and its parents).
    pub fn write(&mut self, path: &str, value: &str) -> Result<(), XsError> {
        let mut p = Self::path_arg(path);
        p.extend_from_slice(value.as_bytes());
        self.request(XS_WRITE, &p)?
            .map(drop)
            .map_err(|e| Self::refused("write", path, e))
    }

    /// Sets `path`'s permissions: `perms` in xenstore's form, the first the owner and what every
    /// other domain may do (`r0`: owned by dom0, readable by all), the rest per domain.
    pub fn set_perms(&mut self, path: &str, perms: &[&str]) -> Result<(), XsError> {
        let mut p = Self::path_arg(path);
        for perm in perms {
            p.extend_from_slice(perm.as_bytes());
            p.push(0);
        }
        self.request(XS_SET_PERMS, &p)?
            .map(drop)
            .map_err(|e| Self::refused("set_perms", path, e))
    }

    /// Removes `path` and everything below it (a missing node is fine).
    pub fn rm(&mut self, path: &str) -> Result<(), XsError> {
        match self.request(XS_RM, &Self::path_arg(path))? {
            Ok(_) => Ok(()),
            Err(e) if e == "ENOENT" => Ok(()),
            Err(e) => Err(Self::refused("rm", path, e)),
        }
    }

    /// Watches `path` (and everything below it; `@introduceDomain` and `@releaseDomain` are the
    /// special paths for domains coming and going). xenstored fires each new watch once at once.
    pub fn watch(&mut self, path: &str) -> Result<(), XsError> {
        if self.watched.iter().any(|p| p == path) {
            return Ok(());
        }
        let mut p = Self::path_arg(path);
        p.extend_from_slice(b"v4v\0");
        match self.request(XS_WATCH, &p)? {
            Ok(_) => {}
            Err(e) if e == "EEXIST" => {}
            Err(e) => return Err(Self::refused("watch", path, e)),
        }
        self.watched.push(path.to_string());
        Ok(())
    }

    /// How many watch events arrived since the last call, reading what is there without
    /// waiting.
    pub fn take_events(&mut self) -> Result<usize, XsError> {
        while let Some((ty, _, _)) = self.read_message(Duration::ZERO)? {
            if ty == XS_WATCH_EVENT {
                self.events += 1;
            }
        }
        Ok(std::mem::take(&mut self.events))
    }

    /// Waits until the value at `path` satisfies `accept`, for at most `timeout`, and returns it.
    /// Woken by a watch on `path`, and re-reads every 250 ms in case an event was lost.
    pub fn wait_for(
        &mut self,
        path: &str,
        timeout: Duration,
        accept: &dyn Fn(&str) -> bool,
    ) -> Result<String, XsError> {
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
                return Err(XsError::WaitTimedOut {
                    path: path.to_string(),
                    secs: timeout.as_secs(),
                });
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

/// Domain names from xenstore: dom0 reads `/local/domain/N/name` for every domain and publishes
/// under [`PUBLISHED_DIR`]; a guest reads its own name and the published directory.
///
/// Two connections: one for requests, one that only watches (`@introduceDomain`,
/// `@releaseDomain`, `/local/domain` in dom0 for names and renames; [`PUBLISHED_DIR`] in guests),
/// so the watch's descriptor is readable only for events.
pub struct XenNames {
    domid: DomId,
    xs: Mutex<Xenstore>,
    watch: Mutex<Xenstore>,
    watch_fd: std::os::fd::RawFd,
}

impl XenNames {
    /// Opens both connections for domain `domid` and sets the watches.
    pub fn open(domid: DomId) -> Result<Self, XsError> {
        let xs = Xenstore::open()?;
        let mut watch = Xenstore::open()?;
        if domid == 0 {
            watch.watch("@introduceDomain")?;
            watch.watch("@releaseDomain")?;
            watch.watch("/local/domain")?;
        } else {
            watch.watch(PUBLISHED_DIR)?;
        }
        let watch_fd = watch.fd().as_raw_fd();
        Ok(XenNames {
            domid,
            xs: Mutex::new(xs),
            watch: Mutex::new(watch),
            watch_fd,
        })
    }

    fn xs(&self) -> std::sync::MutexGuard<'_, Xenstore> {
        self.xs.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn transport(e: XsError) -> DirectoryError {
    match e {
        XsError::Refused { op, path, errno } => DirectoryError::Refused {
            what: format!("xenstore {op} {path}"),
            errno_name: errno,
        },
        e => DirectoryError::Transport(e.to_string()),
    }
}

/// Reads `DIR/CHILD` for each child, keeping `(domid, name)` where the child is a domain id and the
/// value a valid name (`by_id`: the children are ids and the values names; else the reverse).
fn read_entries(xs: &mut Xenstore, dir: &str, by_id: bool) -> Result<Vec<NameEntry>, XsError> {
    let mut out = Vec::new();
    for child in xs.directory(dir)? {
        let path = if by_id {
            format!("{dir}/{child}/name")
        } else {
            format!("{dir}/{child}")
        };
        let value = match xs.read(&path) {
            Ok(Some(v)) => v,
            // A domain going away meanwhile, or one this domain may not read.
            Ok(None) => continue,
            Err(e) if e.refused().is_some() => continue,
            Err(e) => return Err(e),
        };
        let (id, name) = if by_id {
            (child, value)
        } else {
            (value, child)
        };
        if let (Ok(domid), Ok(())) = (id.trim().parse::<DomId>(), names::validate(&name)) {
            out.push(NameEntry { domid, name });
        }
    }
    out.sort();
    Ok(out)
}

impl NameDirectory for XenNames {
    fn claim_name(&self, _name: &str) -> Result<(), DirectoryError> {
        Err(DirectoryError::Refused {
            what: "on Xen the toolstack names domains (`name = ...` in the domain's config, or \
                   `xl rename`)"
                .into(),
            errno_name: "EPERM".into(),
        })
    }

    fn domain_names(&self) -> Result<Vec<NameEntry>, DirectoryError> {
        let mut xs = self.xs();
        if self.domid == 0 {
            return read_entries(&mut xs, "/local/domain", true).map_err(transport);
        }
        // A guest may read its own entry only.
        let own = format!("/local/domain/{}/name", self.domid);
        match xs.read(&own) {
            Ok(Some(name)) if names::validate(&name).is_ok() => Ok(vec![NameEntry {
                domid: self.domid,
                name,
            }]),
            Ok(_) => Ok(Vec::new()),
            Err(e) if e.refused().is_some() => Ok(Vec::new()),
            Err(e) => Err(transport(e)),
        }
    }

    fn published(&self) -> Result<Vec<NameEntry>, DirectoryError> {
        let mut xs = self.xs();
        match read_entries(&mut xs, PUBLISHED_DIR, false) {
            Ok(v) => Ok(v),
            Err(e) if e.refused().is_some() => Ok(Vec::new()),
            Err(e) => Err(transport(e)),
        }
    }

    fn publish(&self, entries: &[NameEntry]) -> Result<(), DirectoryError> {
        let mut xs = self.xs();
        // Owned by dom0, readable by every domain: guests read it, only dom0 writes it.
        let perms = ["r0"];
        let mut step = || -> Result<(), XsError> {
            let old = xs.directory(PUBLISHED_DIR)?;
            for name in &old {
                if !entries.iter().any(|e| &e.name == name) {
                    xs.rm(&format!("{PUBLISHED_DIR}/{name}"))?;
                }
            }
            xs.write("/v4v", "")?;
            xs.set_perms("/v4v", &perms)?;
            xs.write(PUBLISHED_DIR, "")?;
            xs.set_perms(PUBLISHED_DIR, &perms)?;
            for e in entries {
                let path = format!("{PUBLISHED_DIR}/{}", e.name);
                xs.write(&path, &e.domid.to_string())?;
                xs.set_perms(&path, &perms)?;
            }
            Ok(())
        };
        step().map_err(transport)
    }

    fn watch_fd(&self) -> Option<BorrowedFd<'_>> {
        // SAFETY: the descriptor belongs to `self.watch`, which lives as long as `self`.
        Some(unsafe { BorrowedFd::borrow_raw(self.watch_fd) })
    }

    fn changed(&self) -> Result<bool, DirectoryError> {
        let mut w = self.watch.lock().unwrap_or_else(|p| p.into_inner());
        w.take_events().map(|n| n > 0).map_err(transport)
    }
}
