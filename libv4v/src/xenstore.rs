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

    /// A connection over an already connected stream (tests: a xenstored stand-in).
    #[cfg(test)]
    fn over(conn: UnixStream) -> Self {
        Xenstore {
            conn: File::from(OwnedFd::from(conn)),
            inbuf: Vec::new(),
            next_req: 1,
            events: 0,
            watched: Vec::new(),
        }
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
        Ok(Self::assemble(domid, xs, watch))
    }

    /// The directory over a connection for requests and one whose watches are set.
    fn assemble(domid: DomId, xs: Xenstore, watch: Xenstore) -> Self {
        let watch_fd = watch.fd().as_raw_fd();
        XenNames {
            domid,
            xs: Mutex::new(xs),
            watch: Mutex::new(watch),
            watch_fd,
        }
    }

    #[cfg(test)]
    fn over(domid: DomId, xs: Xenstore, mut watch: Xenstore) -> Result<Self, XsError> {
        if domid == 0 {
            watch.watch("/local/domain")?;
        } else {
            watch.watch(PUBLISHED_DIR)?;
        }
        Ok(Self::assemble(domid, xs, watch))
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

#[cfg(test)]
mod tests {
    //! The client against a small xenstored stand-in speaking the same wire protocol over a socket
    //! pair: one tree shared by every connection, per-node permissions (`r0`: read for all, owner
    //! dom0), watches that fire on writes below the watched path.
    use super::*;
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};

    #[derive(Default)]
    struct Store {
        nodes: BTreeMap<String, (String, Vec<String>)>,
        /// (connection, path) for every watch.
        watches: Vec<(usize, String)>,
        conns: Vec<Arc<Mutex<UnixStream>>>,
    }

    fn send(c: &Mutex<UnixStream>, ty: u32, req: u32, body: &[u8]) {
        let mut m = Vec::new();
        for w in [ty, req, 0, body.len() as u32] {
            m.extend_from_slice(&w.to_ne_bytes());
        }
        m.extend_from_slice(body);
        let _ = c.lock().unwrap().write_all(&m);
    }

    /// Serves one connection of domain `dom` until it closes.
    fn serve(store: Arc<Mutex<Store>>, me: usize, dom: u16, mut rd: UnixStream) {
        loop {
            let mut h = [0u8; 16];
            if rd.read_exact(&mut h).is_err() {
                return;
            }
            let w = |i: usize| u32::from_ne_bytes(h[i * 4..i * 4 + 4].try_into().unwrap());
            let (ty, req, len) = (w(0), w(1), w(3) as usize);
            let mut body = vec![0u8; len];
            rd.read_exact(&mut body).unwrap();
            let mut parts = body
                .split(|b| *b == 0)
                .map(|p| String::from_utf8_lossy(p).into_owned());
            let path = parts.next().unwrap_or_default();
            let mut st = store.lock().unwrap();
            let me_conn = st.conns[me].clone();
            let readable = |st: &Store, p: &str| {
                dom == 0
                    || st
                        .nodes
                        .get(p)
                        .is_some_and(|(_, perms)| perms.first().is_some_and(|x| x.starts_with('r')))
            };
            let reply: Result<Vec<u8>, &str> = match ty {
                XS_READ if !st.nodes.contains_key(&path) => Err("ENOENT"),
                XS_READ if !readable(&st, &path) => Err("EACCES"),
                XS_READ => Ok(st.nodes[&path].0.clone().into_bytes()),
                XS_DIRECTORY if !readable(&st, &path) && st.nodes.contains_key(&path) => {
                    Err("EACCES")
                }
                XS_DIRECTORY => {
                    let prefix = format!("{path}/");
                    let mut kids: Vec<String> = st
                        .nodes
                        .keys()
                        .filter_map(|k| k.strip_prefix(&prefix))
                        .map(|k| k.split('/').next().unwrap().to_string())
                        .collect();
                    kids.dedup();
                    Ok(kids
                        .iter()
                        .flat_map(|k| format!("{k}\0").into_bytes())
                        .collect())
                }
                XS_WRITE | XS_SET_PERMS | XS_RM if dom != 0 => Err("EACCES"),
                XS_WRITE => {
                    let value = body[path.len() + 1..].to_vec();
                    let e = st
                        .nodes
                        .entry(path.clone())
                        .or_insert((String::new(), vec!["n0".into()]));
                    e.0 = String::from_utf8_lossy(&value).into_owned();
                    Ok(Vec::new())
                }
                XS_SET_PERMS => {
                    let perms: Vec<String> = parts.filter(|p| !p.is_empty()).collect();
                    match st.nodes.get_mut(&path) {
                        Some(n) => {
                            n.1 = perms;
                            Ok(Vec::new())
                        }
                        None => Err("ENOENT"),
                    }
                }
                XS_RM => {
                    st.nodes
                        .retain(|k, _| k != &path && !k.starts_with(&format!("{path}/")));
                    Ok(Vec::new())
                }
                XS_WATCH => {
                    st.watches.push((me, path.clone()));
                    Ok(Vec::new())
                }
                _ => Err("EINVAL"),
            };
            match reply {
                Ok(b) => send(&me_conn, ty, req, &b),
                Err(e) => send(&me_conn, XS_ERROR, req, format!("{e}\0").as_bytes()),
            }
            if ty == XS_WATCH {
                // xenstored fires every new watch once.
                send(
                    &me_conn,
                    XS_WATCH_EVENT,
                    0,
                    format!("{path}\0v4v\0").as_bytes(),
                );
            }
            if matches!(ty, XS_WRITE | XS_RM) {
                for (c, wpath) in st.watches.clone() {
                    if path == wpath || path.starts_with(&format!("{wpath}/")) {
                        let conn = st.conns[c].clone();
                        send(
                            &conn,
                            XS_WATCH_EVENT,
                            0,
                            format!("{path}\0v4v\0").as_bytes(),
                        );
                    }
                }
            }
        }
    }

    /// A new connection of domain `dom` to the stand-in.
    fn connect(store: &Arc<Mutex<Store>>, dom: u16) -> Xenstore {
        let (client, server) = UnixStream::pair().unwrap();
        let me = {
            let mut st = store.lock().unwrap();
            st.conns
                .push(Arc::new(Mutex::new(server.try_clone().unwrap())));
            st.conns.len() - 1
        };
        let store = store.clone();
        std::thread::spawn(move || serve(store, me, dom, server));
        Xenstore::over(client)
    }

    #[test]
    fn requests_watches_and_errors() {
        let store = Arc::new(Mutex::new(Store::default()));
        let mut a = connect(&store, 0);
        let mut w = connect(&store, 0);
        w.watch("/local/domain").unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut first = 0;
        while first == 0 && Instant::now() < deadline {
            first = w.take_events().unwrap();
        }
        assert_eq!(first, 1, "a new watch fires once");
        assert_eq!(w.take_events().unwrap(), 0);
        a.write("/local/domain/3/name", "web").unwrap();
        a.write("/local/domain/3/data/x", "1").unwrap();
        a.write("/elsewhere", "1").unwrap();
        assert_eq!(
            a.read("/local/domain/3/name").unwrap().as_deref(),
            Some("web")
        );
        assert_eq!(a.read("/nope").unwrap(), None);
        assert_eq!(a.directory("/local/domain").unwrap(), ["3"]);
        // Events arrive without a request on the watching connection.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut n = 0;
        while n < 2 && Instant::now() < deadline {
            n += w.take_events().unwrap();
        }
        assert_eq!(n, 2, "two writes below /local/domain, none elsewhere");
        let mut guest = connect(&store, 3);
        let e = guest.write("/local/domain/3/name", "evil").unwrap_err();
        assert_eq!(e.refused(), Some("EACCES"));
        assert_eq!(
            a.read("/local/domain/3/name").unwrap().as_deref(),
            Some("web")
        );
    }

    #[test]
    fn names_from_xenstore_and_the_published_directory() {
        let store = Arc::new(Mutex::new(Store::default()));
        let mut admin = connect(&store, 0);
        admin.write("/local/domain/0/name", "Domain-0").unwrap();
        admin.write("/local/domain/3/name", "web").unwrap();
        admin.write("/local/domain/5/name", "no way").unwrap(); // not a V4V name: left out
        admin.write("/local/domain/7/name", "db").unwrap();
        let dom0 = XenNames::over(0, connect(&store, 0), connect(&store, 0)).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !dom0.changed().unwrap() {
            assert!(Instant::now() < deadline, "a new watch fires once");
        }
        let all = dom0.domain_names().unwrap();
        let shown: Vec<(u16, &str)> = all.iter().map(|e| (e.domid, e.name.as_str())).collect();
        assert_eq!(shown, [(0, "Domain-0"), (3, "web"), (7, "db")]);
        // Publishing: readable by guests, written by dom0 only.
        let publish = [NameEntry {
            domid: 3,
            name: "web".into(),
        }];
        dom0.publish(&publish).unwrap();
        let guest = XenNames::over(7, connect(&store, 7), connect(&store, 7)).unwrap();
        assert_eq!(guest.published().unwrap(), publish);
        // A guest reads its own name only (its entry is not readable here: the stand-in's
        // /local/domain nodes are dom0's, as xenstored's are without the toolstack's perms).
        assert!(guest.domain_names().unwrap().is_empty());
        assert!(guest.publish(&[]).is_err());
        // Unpublishing removes the entry; the guest's watch sees it.
        while guest.changed().unwrap() {}
        dom0.publish(&[]).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !guest.changed().unwrap() {
            assert!(Instant::now() < deadline, "the guest's watch never fired");
        }
        assert!(guest.published().unwrap().is_empty());
        assert!(
            dom0.claim_name("x").is_err(),
            "on Xen the toolstack names domains"
        );
    }
}
