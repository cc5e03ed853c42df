// SPDX-License-Identifier: MIT OR Apache-2.0
//! `v4vd`: the V4V daemon's command line (clap), config file (TOML, `v4vd::settings`), systemd
//! integration (`v4vd::systemd`) and signals; the daemon itself is `v4vd::Daemon`.
//!
//! Every setting is a config file key and a command-line option of the same name
//! (`v4vd::settings::Settings`); command-line options win over the file. The manual is
//! v4vd(8) and v4vd.conf(5) (`docs/man/`; `v4vd --generate-assets DIR`, which scripts/package runs, writes the
//! generated pages and the shell completions).
//!
//! Signals: SIGTERM and SIGINT stop the daemon (streams are reset, rings unregistered, the
//! socket removed unless systemd owns it); SIGHUP reloads the ACL file in dom0.

use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tracing::{error, info, warn};
use tracing_subscriber::EnvFilter;
use v4vd::settings::{Format, Settings};
use v4vd::{Config, Daemon};

/// The V4V daemon: one per domain, the only user of the domain's V4V hypercalls; serves local
/// programs (v4v-cli, libv4v) on a Unix socket.
#[derive(Debug, Parser)]
#[command(name = "v4vd", version, after_help = AFTER_HELP)]
struct Args {
    /// Read settings from FILE (TOML; see v4vd.conf(5)); options given here win over it
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print FILE, an old-format (`key = value`) config file, as TOML and exit
    #[arg(long, value_name = "FILE", exclusive = true)]
    migrate_config: Option<PathBuf>,
    /// Check the settings (the config file and options), print them as TOML and exit
    #[arg(long)]
    check_config: bool,
    #[command(flatten)]
    settings: Settings,
}

const AFTER_HELP: &str = "Signals: SIGTERM/SIGINT stop, SIGHUP reloads the ACL file (dom0). \
                          Logging: V4VD_LOG (e.g. debug). See v4vd(8), v4vd.conf(5).";

/// Where dom0's daemon reads its ACL rules unless told otherwise.
const DEFAULT_ACL_FILE: &str = "/etc/v4v/acl.rules";

/// The settings in force: the config file's, with the command line's over them.
fn settings(args: &Args) -> Result<Settings, String> {
    let file = match &args.config {
        Some(path) => {
            let (s, format) = Settings::from_file(path).map_err(|e| e.to_string())?;
            if format == Format::Legacy {
                warn!(
                    "config {}: the old `key = value` format, read by the rule in v4vd.conf(5); \
                     `v4vd --migrate-config {}` prints it as TOML",
                    path.display(),
                    path.display()
                );
            }
            s
        }
        None => Settings::default(),
    };
    let s = file.overridden_by(&args.settings);
    s.check()?;
    Ok(s)
}

fn migrate(path: &Path) -> Result<(), String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("config {}: {e}", path.display()))?;
    let (_, format) = Settings::from_file_text(path, &text).map_err(|e| e.to_string())?;
    match format {
        Format::Toml => Err(format!("config {}: already TOML", path.display())),
        Format::Legacy => {
            let toml = v4vd::settings::migrate_legacy(&text).expect("read as the old format");
            print!("{toml}");
            Ok(())
        }
    }
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

fn run(args: Args, activated: Option<UnixListener>) -> Result<(), String> {
    if let Some(path) = &args.migrate_config {
        return migrate(path);
    }
    let o = settings(&args)?;
    if args.check_config {
        print!("{}", o.to_toml());
        return Ok(());
    }
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
    // Under socket activation systemd made and owns the socket (its path and mode are the
    // unit's); otherwise v4vd binds it, and removes it when it stops.
    let (listener, socket, owned) = match activated {
        Some(l) => {
            let path = l
                .local_addr()
                .ok()
                .and_then(|a| a.as_pathname().map(Path::to_path_buf))
                .unwrap_or_default();
            if o.socket.as_ref().is_some_and(|s| *s != path) || o.socket_mode.is_some() {
                info!("socket activation: the socket and its mode are v4vd.socket's");
            }
            (l, path, false)
        }
        None => {
            let socket = o
                .socket
                .clone()
                .or_else(|| std::env::var_os(v4v::client::proto::SOCKET_ENV).map(PathBuf::from))
                .unwrap_or_else(|| PathBuf::from(v4v::client::proto::DEFAULT_SOCKET));
            (
                bind(&socket, o.socket_mode.map_or(0o666, |m| m.0))?,
                socket,
                true,
            )
        }
    };
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
    cfg.name = o.name.clone();
    cfg.publish_names = o.publish_names.clone().unwrap_or_default().0;
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
    let mut daemon = Daemon::new(hv, listener, cfg).map_err(|e| e.to_string())?;
    match v4vd::systemd::Notifier::from_env() {
        Ok(Some(n)) => daemon.set_notifier(n, v4vd::systemd::watchdog_interval()),
        Ok(None) => {}
        Err(e) => warn!("NOTIFY_SOCKET: {e}"),
    }
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
    if owned {
        let _ = std::fs::remove_file(&socket);
    }
    r
}

/// Binds the clients' socket at `socket` with permissions `mode`.
fn bind(socket: &Path, mode: u32) -> Result<UnixListener, String> {
    if let Some(dir) = socket.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    // Every local user may use V4V by default: the daemon checks each request itself (ports are
    // owned by the connection that bound them; ACL changes need privilege). The socket appears
    // listening and with its mode, replacing a stale one from a dead daemon, never a live one's.
    v4v::listen::bind_ready(socket, mode).map_err(|e| format!("bind {}: {e}", socket.display()))
}

/// Logging: to the journal (native fields, priorities) when stderr is the journal, else plain
/// lines on stderr. `V4VD_LOG` filters (default `info`).
fn init_logging() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = EnvFilter::try_from_env("V4VD_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    if v4vd::systemd::stderr_is_journal() {
        tracing_subscriber::registry()
            .with(filter)
            .with(v4vd::systemd::JournalLayer::new())
            .init();
    } else {
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_env_filter(filter)
            .init();
    }
}

/// `v4vd --generate-assets DIR`: for packaging only.
const GENERATE_ASSETS: &str = "--generate-assets";

/// Writes v4vd(8) and the bash, zsh and fish completions under `dir` (`man/`, `completions/`).
fn generate_assets(dir: &Path) -> std::io::Result<()> {
    let cmd = Args::command();
    std::fs::create_dir_all(dir.join("man"))?;
    std::fs::create_dir_all(dir.join("completions"))?;
    let man = clap_mangen::Man::new(cmd.clone())
        .section("8")
        .manual("System Administration")
        .source(concat!("v4v ", env!("CARGO_PKG_VERSION")));
    let mut page = Vec::new();
    man.render_title(&mut page)?;
    man.render_name_section(&mut page)?;
    man.render_synopsis_section(&mut page)?;
    man.render_description_section(&mut page)?;
    man.render_options_section(&mut page)?;
    page.extend_from_slice(include_str!("../../docs/man/v4vd.8.sections").as_bytes());
    man.render_version_section(&mut page)?;
    std::fs::write(dir.join("man/v4vd.8"), page)?;
    for (shell, name) in [
        (clap_complete::Shell::Bash, "v4vd"),
        (clap_complete::Shell::Zsh, "_v4vd"),
        (clap_complete::Shell::Fish, "v4vd.fish"),
    ] {
        let mut out = Vec::new();
        clap_complete::generate(shell, &mut cmd.clone(), "v4vd", &mut out);
        std::fs::write(dir.join("completions").join(name), out)?;
    }
    Ok(())
}

fn main() -> ExitCode {
    // Before any thread exists: the passed socket, and the variables that named it, which are
    // for this process only.
    let activated = v4vd::systemd::listen_fd();
    // SAFETY: no other thread exists yet (logging and signal threads start later), so nothing
    // reads the environment while it changes.
    unsafe {
        std::env::remove_var("LISTEN_PID");
        std::env::remove_var("LISTEN_FDS");
        std::env::remove_var("LISTEN_FDNAMES");
    }
    // scripts/package's hook, outside the clap definition so that no page or completion
    // shows it.
    let argv: Vec<_> = std::env::args_os().skip(1).collect();
    if let [flag, dir] = &argv[..]
        && flag == GENERATE_ASSETS
    {
        return match generate_assets(Path::new(dir)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("v4vd: {}: {e}", Path::new(dir).display());
                ExitCode::FAILURE
            }
        };
    }
    let args = Args::parse();
    init_logging();
    let r = activated
        .map_err(|e| e.to_string())
        .and_then(|l| run(args, l));
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            ExitCode::FAILURE
        }
    }
}
