// SPDX-License-Identifier: MIT OR Apache-2.0
//! Listening Unix sockets that appear at their path only once they accept connections, for the
//! two servers of this project (v4vd's clients' socket, v4v-sim's guests' socket).
//!
//! `bind(2)` creates the socket's name before `listen(2)` makes it accept: a client that starts
//! as soon as the name exists (a test, a unit ordered `After=`, a script polling for the file)
//! is refused in between, and under load it was (one start in about sixty, with a client polling
//! on another CPU). [`bind_ready`] binds and listens under a name in a private directory beside
//! the path, sets the socket's mode there, and then renames it into place: the path names either
//! nothing (or the stale socket it replaces) or a listening socket with its final mode.

use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

/// Binds a listening socket at `path` with permissions `mode`, replacing a stale socket there.
///
/// Fails with `AddrInUse` if a server answers at `path`, `AlreadyExists` if something other than
/// a socket is there. If the private name would not fit a socket address (`path` within a few
/// bytes of its 107-byte limit), binds at `path` itself.
pub fn bind_ready(path: &Path, mode: u32) -> io::Result<UnixListener> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        if UnixStream::connect(path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("{} is in use by a running server", path.display()),
            ));
        }
    }
    let dir = private_dir(path)?;
    let staged = dir.join("s");
    let r = stage(&staged, path, mode);
    let _ = std::fs::remove_file(&staged);
    let _ = std::fs::remove_dir(&dir);
    match r {
        Err(e) if too_long(&e) => {
            let _ = std::fs::remove_file(path);
            let l = UnixListener::bind(path)?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
            Ok(l)
        }
        r => r,
    }
}

fn stage(staged: &Path, path: &Path, mode: u32) -> io::Result<UnixListener> {
    let l = UnixListener::bind(staged)?;
    std::fs::set_permissions(staged, std::fs::Permissions::from_mode(mode))?;
    std::fs::rename(staged, path)?;
    Ok(l)
}

fn too_long(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::InvalidInput || e.raw_os_error() == Some(libc::ENAMETOOLONG)
}

/// A fresh directory only this user can enter, beside `path` (so that the rename stays on one
/// file system), with a short name (so that the staged socket's address stays short).
fn private_dir(path: &Path) -> io::Result<PathBuf> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = parent.join(format!(".v4v{:x}.{n}", std::process::id()));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("v4v-listen-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn entries(d: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn binds_with_the_mode_and_leaves_nothing_else() {
        let d = scratch("mode");
        let p = d.join("a.sock");
        let l = bind_ready(&p, 0o640).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o777, 0o640);
        assert_eq!(entries(&d), ["a.sock"]);
        let _c = UnixStream::connect(&p).unwrap();
        assert!(l.accept().is_ok());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn replaces_a_stale_socket_and_refuses_a_live_one_or_a_file() {
        let d = scratch("stale");
        let p = d.join("b.sock");
        drop(UnixListener::bind(&p).unwrap());
        let l = bind_ready(&p, 0o600).unwrap();
        let e = bind_ready(&p, 0o600).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
        let _c = UnixStream::connect(&p).unwrap();
        assert!(l.accept().is_ok());
        let f = d.join("file");
        std::fs::write(&f, b"x").unwrap();
        assert_eq!(
            bind_ready(&f, 0o600).unwrap_err().kind(),
            io::ErrorKind::AlreadyExists
        );
        assert_eq!(std::fs::read(&f).unwrap(), b"x");
        assert_eq!(entries(&d), ["b.sock", "file"]);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_path_near_the_address_limit_is_bound_in_place() {
        // A 105-byte path whose staged name would be longer than a socket address takes.
        let d = scratch("long");
        let sub = d.join("y".repeat(105 - d.as_os_str().len() - "//x.sock".len()));
        std::fs::create_dir(&sub).unwrap();
        let p = sub.join("x.sock");
        assert_eq!(p.as_os_str().len(), 105);
        let _l = bind_ready(&p, 0o600).unwrap();
        let _c = UnixStream::connect(&p).unwrap();
        assert_eq!(entries(&sub), ["x.sock"]);
        let _ = std::fs::remove_dir_all(&d);
    }
}
