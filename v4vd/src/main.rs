// SPDX-License-Identifier: MIT OR Apache-2.0
//! `v4vd [--hypervisor xen|sim:PATH] [--domid N] [--socket PATH] [--config FILE]
//!       [--ring-size BYTES]`
//!
//! The config file holds `key = value` lines (`#` comments): `hypervisor`, `domid`, `socket`,
//! `ring_size`, `window`. Command-line options win over the file.

use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use tracing::{error, info};
use tracing_subscriber::EnvFilter;
use v4vd::{Config, Daemon};

#[derive(Debug, Default)]
struct Opts {
    hypervisor: Option<String>,
    domid: Option<u16>,
    socket: Option<PathBuf>,
    ring_size: Option<u32>,
    window: Option<u32>,
}

const USAGE: &str = "usage: v4vd [--hypervisor xen|sim:PATH] [--domid N] [--socket PATH] \
                     [--config FILE] [--ring-size BYTES]";

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
        "window" => o.window = Some(num(val)?),
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
    o.window = cli.window.or(o.window);
    Ok(o)
}

fn run() -> Result<(), String> {
    let o = parse_args()?;
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
    let mut cfg = Config::default();
    if let Some(r) = o.ring_size {
        cfg.ring_len = r;
    }
    if let Some(w) = o.window {
        cfg.conn_window = w;
    }
    let daemon = Daemon::new(hv, listener, cfg).map_err(|e| e.to_string())?;
    info!(domid = daemon.domid(), socket = %socket.display(), "listening");
    let r = daemon.run().map_err(|e| e.to_string());
    let _ = std::fs::remove_file(&socket);
    r
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
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
