// SPDX-License-Identifier: MIT OR Apache-2.0
//! `v4v-sim`: the V4V hypervisor model as a process, serving guest processes over a Unix socket.
//!
//! ```text
//! v4v-sim --socket PATH [--mode OCTAL] [--log-level LEVEL] [--max-guests N]
//!         [--reply-timeout-ms MS] [--hello-timeout-ms MS]
//! ```
//!
//! Logs go to stderr. SIGTERM or SIGINT stops it cleanly, removing the socket. See `docs/sim.md`.

use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;

use tracing::{Level, error, warn};
use v4v_sim::Model;
use v4v_sim::server::{Server, ServerConfig};

const USAGE: &str = "\
usage: v4v-sim --socket PATH [options]

Serves the V4V hypervisor model to guest processes over the Unix socket PATH.
Guests connect with the libv4v backend `sim:PATH[?domid=N]`; domain 0 is privileged.
Anyone who can connect to PATH can claim any free domid: the socket's mode is the access control.

options:
  --socket PATH            the socket to create (required)
  --mode OCTAL             the socket's permissions (default 600)
  --log-level LEVEL        error, warn, info, debug or trace (default info); logs go to stderr
  --max-guests N           connections served at once (default 256)
  --reply-timeout-ms MS    drop a guest that leaves a reply unread this long (default 10000)
  --hello-timeout-ms MS    drop a connection that has not claimed a domid this long (default 10000)
  --help                   this text
  --version                the version and protocol version
";

struct Args {
    config: ServerConfig,
    level: Level,
}

fn parse_args() -> Result<Option<Args>, String> {
    let mut socket = None;
    let mut mode = 0o600;
    let mut level = Level::INFO;
    let mut max_guests = 256usize;
    let mut reply_ms = 10_000u64;
    let mut hello_ms = 10_000u64;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (a.clone(), None),
        };
        let mut value = |name: &str| {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match flag.as_str() {
            "--help" | "-h" => {
                print!("{USAGE}");
                return Ok(None);
            }
            "--version" => {
                println!(
                    "v4v-sim {} (protocol version {})",
                    env!("CARGO_PKG_VERSION"),
                    v4v::backend::sim::protocol::VERSION
                );
                return Ok(None);
            }
            "--socket" => socket = Some(value("--socket")?),
            "--mode" => {
                let v = value("--mode")?;
                mode = u32::from_str_radix(v.trim_start_matches("0o"), 8)
                    .ok()
                    .filter(|m| *m <= 0o777)
                    .ok_or_else(|| format!("--mode: {v:?} is not an octal mode"))?;
            }
            "--log-level" => {
                let v = value("--log-level")?;
                level = Level::from_str(&v).map_err(|_| format!("--log-level: unknown {v:?}"))?;
            }
            "--max-guests" => {
                let v = value("--max-guests")?;
                max_guests = v
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| format!("--max-guests: {v:?}"))?;
            }
            "--reply-timeout-ms" => {
                let v = value("--reply-timeout-ms")?;
                reply_ms = v
                    .parse()
                    .map_err(|_| format!("--reply-timeout-ms: {v:?}"))?;
            }
            "--hello-timeout-ms" => {
                let v = value("--hello-timeout-ms")?;
                hello_ms = v
                    .parse()
                    .map_err(|_| format!("--hello-timeout-ms: {v:?}"))?;
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let socket = socket.ok_or("--socket PATH is required")?;
    let mut config = ServerConfig::new(socket);
    config.mode = mode;
    config.max_guests = max_guests;
    config.reply_timeout = Duration::from_millis(reply_ms);
    config.hello_timeout = Duration::from_millis(hello_ms);
    Ok(Some(Args { config, level }))
}

/// Blocks SIGTERM and SIGINT and returns a signalfd that becomes readable when one arrives.
fn shutdown_signals() -> std::io::Result<OwnedFd> {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset before use; the calls only read
    // and write that local set and the thread's mask, and every result is checked.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let fd = libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

/// Raises the soft descriptor limit to the hard one: every registered ring holds a descriptor.
fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit read and write a live rlimit structure.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                warn!("could not raise the descriptor limit");
            }
        }
    }
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(Some(a)) => a,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("v4v-sim: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(args.level)
        .with_ansi(false)
        .init();

    // Before anything else, so that a signal arriving during start-up is not lost.
    let stop = match shutdown_signals() {
        Ok(fd) => fd,
        Err(e) => {
            error!("cannot set up signal handling: {e}");
            return ExitCode::FAILURE;
        }
    };
    raise_fd_limit();
    let mut server = match Server::bind(args.config, Model::new()) {
        Ok(s) => s,
        Err(e) => {
            error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let result = server.run(stop.as_fd());
    drop(server);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            ExitCode::FAILURE
        }
    }
}
