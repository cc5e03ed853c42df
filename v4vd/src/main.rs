// SPDX-License-Identifier: MIT OR Apache-2.0
//! `v4vd [--hypervisor xen|sim:PATH] [--domid N] [--socket PATH] [--config FILE]
//!       [--ring-size BYTES] [--acl-file PATH] [--acl-group GROUP]`
//!
//! The config file holds `key = value` lines (`#` comments): `hypervisor`, `domid`, `socket`,
//! `socket_mode` (octal, default 666), `ring_size` (datagram rings, default 256 KiB),
//! `stream_ring_size` (rings carrying streams, default 4 × `ring_size`), `window` (per stream,
//! default 1 MiB), `acl_file`, `acl_group`,
//! `privileged_group` (besides root, may use ports 1-1023),
//! `max_clients_per_user` (default 4096; root is not limited), `max_rings_per_user` (default a
//! quarter of the domain's ring limit; root is not limited), `max_buffer_per_user` (bytes, default
//! 64 MiB; root is not limited), `handshake_timeout` (seconds a
//! client may take to send its request line, default 10).
//! Command-line options win over the file.
//!
//! Signals: SIGTERM and SIGINT stop the daemon (streams are reset, rings unregistered, the
//! socket removed); SIGHUP reloads the ACL file in dom0.

use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tracing::{error, info};
use tracing_subscriber::EnvFilter;
use v4vd::{Config, Daemon};

#[derive(Debug, Default)]
struct Opts {
    hypervisor: Option<String>,
    domid: Option<u16>,
    socket: Option<PathBuf>,
    ring_size: Option<u32>,
    stream_ring_size: Option<u32>,
    window: Option<u32>,
    acl_file: Option<PathBuf>,
    acl_group: Option<String>,
    privileged_group: Option<String>,
    socket_mode: Option<u32>,
    max_clients_per_user: Option<usize>,
    max_rings_per_user: Option<u32>,
    max_buffer_per_user: Option<u32>,
    handshake_timeout: Option<u32>,
}

const USAGE: &str = "usage: v4vd [--hypervisor xen|sim:PATH] [--domid N] [--socket PATH] \
                     [--socket-mode OCTAL] [--config FILE] [--ring-size BYTES] [--stream-ring-size BYTES] \
                     [--acl-file PATH] \
                     [--acl-group GROUP] [--privileged-group GROUP] [--max-clients-per-user N] \
                     [--max-rings-per-user N] [--max-buffer-per-user BYTES] \
                     [--handshake-timeout SECS]";

/// Where dom0's daemon reads its ACL rules unless told otherwise.
const DEFAULT_ACL_FILE: &str = "/etc/v4v/acl.rules";

fn set(o: &mut Opts, key: &str, val: &str) -> Result<(), String> {
    let num = |v: &str| -> Result<u32, String> {
        v.parse::<u32>()
            .map_err(|_| format!("{key}: {v:?} is not a number"))
    };
    match key {
        "hypervisor" => o.hypervisor = Some(val.to_string()),
        "domid" => {
            o.domid = Some(
                val.parse()
                    .map_err(|_| format!("domid: {val:?} is not a domain id"))?,
            )
        }
        "socket" => o.socket = Some(PathBuf::from(val)),
        "ring_size" | "ring-size" => o.ring_size = Some(num(val)?),
        "stream_ring_size" | "stream-ring-size" => o.stream_ring_size = Some(num(val)?),
        "window" => o.window = Some(num(val)?),
        "max_clients_per_user" | "max-clients-per-user" => {
            o.max_clients_per_user = Some(num(val)? as usize)
        }
        "max_rings_per_user" | "max-rings-per-user" => o.max_rings_per_user = Some(num(val)?),
        "max_buffer_per_user" | "max-buffer-per-user" => o.max_buffer_per_user = Some(num(val)?),
        "handshake_timeout" | "handshake-timeout" => match num(val)? {
            0 => return Err("handshake_timeout: must be at least 1 second".into()),
            n => o.handshake_timeout = Some(n),
        },
        "acl_file" | "acl-file" => o.acl_file = Some(PathBuf::from(val)),
        "acl_group" | "acl-group" => o.acl_group = Some(val.to_string()),
        "privileged_group" | "privileged-group" => o.privileged_group = Some(val.to_string()),
        "socket_mode" | "socket-mode" => {
            o.socket_mode = Some(
                u32::from_str_radix(val, 8)
                    .ok()
                    .filter(|m| *m <= 0o777)
                    .ok_or_else(|| format!("socket_mode: {val:?} is not an octal mode"))?,
            )
        }
        _ => return Err(format!("unknown option {key:?}\n{USAGE}")),
    }
    Ok(())
}

fn read_config(path: &Path, o: &mut Opts) -> Result<(), String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("config {}: {e}", path.display()))?;
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .ok_or_else(|| format!("config {}:{}: expected key = value", path.display(), n + 1))?;
        set(o, k.trim(), v.trim())?;
    }
    Ok(())
}

fn parse_args() -> Result<Opts, String> {
    let mut cli = Opts::default();
    let mut config = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "-h" || a == "--help" {
            return Err(USAGE.to_string());
        }
        let Some(key) = a.strip_prefix("--") else {
            return Err(format!("unexpected argument {a:?}\n{USAGE}"));
        };
        let (key, val) = match key.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (
                key.to_string(),
                args.next()
                    .ok_or_else(|| format!("--{key} needs a value"))?,
            ),
        };
        if key == "config" {
            config = Some(PathBuf::from(val));
        } else {
            set(&mut cli, &key, &val)?;
        }
    }
    let mut o = Opts::default();
    if let Some(c) = config {
        read_config(&c, &mut o)?;
    }
    o.hypervisor = cli.hypervisor.or(o.hypervisor);
    o.domid = cli.domid.or(o.domid);
    o.socket = cli.socket.or(o.socket);
    o.ring_size = cli.ring_size.or(o.ring_size);
    o.stream_ring_size = cli.stream_ring_size.or(o.stream_ring_size);
    o.window = cli.window.or(o.window);
    o.acl_file = cli.acl_file.or(o.acl_file);
    o.acl_group = cli.acl_group.or(o.acl_group);
    o.privileged_group = cli.privileged_group.or(o.privileged_group);
    o.socket_mode = cli.socket_mode.or(o.socket_mode);
    o.max_clients_per_user = cli.max_clients_per_user.or(o.max_clients_per_user);
    o.handshake_timeout = cli.handshake_timeout.or(o.handshake_timeout);
    o.max_rings_per_user = cli.max_rings_per_user.or(o.max_rings_per_user);
    o.max_buffer_per_user = cli.max_buffer_per_user.or(o.max_buffer_per_user);
    Ok(o)
}

/// The group id of `name` (or a number), through the system's group database.
fn group_id(name: &str) -> Result<u32, String> {
    if let Ok(g) = name.parse::<u32>() {
        return Ok(g);
    }
    let cname = std::ffi::CString::new(name).map_err(|_| format!("bad group name {name:?}"))?;
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: all-zero is a valid `struct group` (integers and null pointers).
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call: `cname` is NUL-terminated, `grp` and
    // `result` are writable, `buf` is writable for its length; the strings getgrnam_r stores in
    // `buf` are not used after it.
    let r = unsafe {
        libc::getgrnam_r(
            cname.as_ptr(),
            &mut grp,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        )
    };
    if r != 0 || result.is_null() {
        return Err(format!("acl_group: no group named {name:?}"));
    }
    Ok(grp.gr_gid)
}

/// Lets the daemon hold as many clients as the hard limit allows (the default soft limit,
/// 1024 descriptors, is a few hundred streams).
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 && lim.rlim_cur < lim.rlim_max
    {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: `lim` is a valid rlimit; raising the soft limit up to the hard one is allowed.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            tracing::warn!(
                "cannot raise the descriptor limit: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

fn run() -> Result<(), String> {
    let o = parse_args()?;
    raise_fd_limit();
    let mut spec = o.hypervisor.unwrap_or_else(|| "xen".to_string());
    if let Some(d) = o.domid
        && spec.starts_with("sim:")
        && !spec.contains("?domid=")
    {
        spec = format!("{spec}?domid={d}");
    }
    let hv = v4v::backend::open(&spec).map_err(|e| format!("hypervisor {spec}: {e}"))?;
    if let Some(d) = o.domid {
        let info = hv.info().map_err(|e| format!("V4VOP_info: {e}"))?;
        if info.domid != d {
            return Err(format!("--domid {d}, but this is domain {}", info.domid));
        }
    }
    let socket = o
        .socket
        .or_else(|| std::env::var_os(v4v::client::proto::SOCKET_ENV).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(v4v::client::proto::DEFAULT_SOCKET));
    if let Some(dir) = socket.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    // A stale socket from a dead daemon: remove it only if nobody answers on it.
    if socket.exists() && std::os::unix::net::UnixStream::connect(&socket).is_err() {
        let _ = std::fs::remove_file(&socket);
    }
    let listener =
        UnixListener::bind(&socket).map_err(|e| format!("bind {}: {e}", socket.display()))?;
    // Every local user may use V4V by default: the daemon checks each request itself (ports are
    // owned by the connection that bound them; ACL changes need privilege).
    let mode = o.socket_mode.unwrap_or(0o666);
    std::fs::set_permissions(&socket, std::os::unix::fs::PermissionsExt::from_mode(mode))
        .map_err(|e| format!("chmod {}: {e}", socket.display()))?;
    let mut cfg = Config::default();
    if let Some(r) = o.ring_size {
        cfg.ring_len = r;
    }
    cfg.stream_ring_len = o.stream_ring_size;
    if let Some(w) = o.window {
        cfg.conn_window = w;
    }
    if let Some(m) = o.max_clients_per_user {
        cfg.max_clients_per_user = m;
    }
    cfg.max_rings_per_user = o.max_rings_per_user;
    if let Some(b) = o.max_buffer_per_user {
        cfg.max_buffer_per_user = b as usize;
    }
    if let Some(t) = o.handshake_timeout {
        cfg.handshake_timeout = std::time::Duration::from_secs(u64::from(t));
    }
    cfg.acl_file_required = o.acl_file.is_some();
    cfg.acl_file = Some(
        o.acl_file
            .unwrap_or_else(|| PathBuf::from(DEFAULT_ACL_FILE)),
    );
    if let Some(g) = &o.acl_group {
        cfg.acl_group = Some(group_id(g)?);
    }
    if let Some(g) = &o.privileged_group {
        cfg.privileged_group =
            Some(group_id(g).map_err(|e| e.replace("acl_group", "privileged_group"))?);
    }
    let daemon = Daemon::new(hv, listener, cfg).map_err(|e| e.to_string())?;
    let handle = daemon.handle();
    let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP])
        .map_err(|e| format!("installing signal handlers: {e}"))?;
    std::thread::spawn(move || {
        for sig in signals.forever() {
            if sig == SIGHUP {
                info!("SIGHUP: reloading the ACL file");
                handle.reload_acl();
            } else {
                info!(signal = sig, "stopping");
                handle.stop();
            }
        }
    });
    info!(domid = daemon.domid(), socket = %socket.display(), "listening");
    let r = daemon.run().map_err(|e| e.to_string());
    let _ = std::fs::remove_file(&socket);
    r
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            EnvFilter::try_from_env("V4VD_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            ExitCode::FAILURE
        }
    }
}
