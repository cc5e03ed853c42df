// SPDX-License-Identifier: MIT OR Apache-2.0
//! `v4v-cli`: V4V from the shell, through the local daemon (v4vd).
//!
//! Every command is one short-lived client of the daemon's Unix socket (`--socket`, else
//! `V4V_SOCKET`, else `/run/v4v/v4vd.sock`), using the `libv4v` client API. Errors are one line
//! on stderr, and the exit status says what kind of failure it was ([`exit::Exit`]), so scripts
//! can tell a refused connection from a dead daemon or an ACL refusal.

/// `println!` for command output: a reader that went away (`| head`, `| grep -q`) ends the
/// process quietly instead of panicking; other write errors fail it with one line.
macro_rules! outln {
    ($($t:tt)*) => { $crate::write_stdout(format_args!($($t)*), true) };
}

/// `print!` with the same rules as [`outln!`].
macro_rules! out {
    ($($t:tt)*) => { $crate::write_stdout(format_args!($($t)*), false) };
}

mod acl;
mod dgram;
mod exec;
mod exit;
mod forward;
mod names;
mod status;
mod stream;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use exit::{Exit, Failure};

/// V4V from the shell: datagrams, streams, the ACL table and daemon status, through v4vd.
#[derive(Debug, Parser)]
#[command(
    name = "v4v-cli",
    version,
    after_help = exit::EXIT_CODES_HELP,
    arg_required_else_help = true
)]
struct Cli {
    /// The daemon's socket [default: $V4V_SOCKET, else /run/v4v/v4vd.sock]
    #[arg(long, global = true, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// How long to wait for the daemon's answer to a request before giving up with status 5
    /// (0: no limit) [default: $V4V_HANDSHAKE_TIMEOUT, else 10]
    #[arg(long, global = true, value_name = "SECS", value_parser = handshake_secs)]
    handshake_timeout: Option<Timeout>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Send one datagram (MESSAGE, or stdin when it is absent)
    Send {
        /// Destination: DOM a domain id or name (web:5000, name:web:5000)
        #[arg(value_name = "DOM:PORT")]
        dest: names::Dest,
        /// The payload; stdin is read to its end when absent
        message: Option<String>,
        /// Send from this port (default: an ephemeral one)
        #[arg(long, value_name = "P", default_value_t = 0)]
        from_port: u32,
        /// Fail with "timed out" instead of waiting while the destination ring is full
        #[arg(long)]
        nowait: bool,
    },
    /// Receive datagrams on PORT and print each payload on its own line
    Recv {
        port: u32,
        /// Exit 0 after N datagrams
        #[arg(long, value_name = "N")]
        count: Option<u64>,
        /// Give up after SECS seconds (exit 5 if --count was not reached; without --count, stop
        /// and exit 0)
        #[arg(long, value_name = "SECS")]
        timeout: Option<f64>,
        /// Accept datagrams from this domain only, an id or a name (the hypervisor enforces it)
        #[arg(long, value_name = "DOM", value_parser = names::parse_domain)]
        from: Option<v4v::names::DomainRef>,
        /// Write payloads as they are, with no separator
        #[arg(long, conflicts_with = "verbose")]
        raw: bool,
        /// Prefix each payload with its source DOM:PORT and a tab
        #[arg(long)]
        verbose: bool,
    },
    /// Accept stream connections on PORT: stdin to the peer, the peer to stdout (or, with
    /// --exec, a command per connection with the stream as its stdin and stdout)
    Listen {
        port: u32,
        /// Serve one connection, then exit
        #[arg(long, conflicts_with = "exec")]
        once: bool,
        /// With --exec: at most N commands at once; more connections wait [default: 64]
        #[arg(long, value_name = "N", requires = "exec")]
        max_children: Option<usize>,
        /// Run CMD [ARGS...] for each connection (inetd style); must come last: everything
        /// after it is the command. Its environment: V4V_PEER_DOMAIN, V4V_PEER_PORT,
        /// V4V_PEER_NAME (the peer domain's name, when this domain may see it), V4V_LOCAL_PORT
        #[arg(
            long,
            value_name = "CMD",
            num_args = 1..,
            allow_hyphen_values = true
        )]
        exec: Option<Vec<String>>,
    },
    /// Relay every connection accepted on LISTEN to a new connection to TARGET, both ways
    ///
    /// Half-closes and resets are passed on; a refused target resets the accepted connection.
    /// One log line per connection on stderr.
    Forward {
        /// tcp-listen:PORT, tcp-listen:HOST:PORT (HOST defaults to 127.0.0.1),
        /// unix-listen:PATH or v4v-listen:PORT
        #[arg(value_name = "LISTEN")]
        listen: forward::ListenAddr,
        /// tcp:HOST:PORT, unix:PATH or v4v:DOM:PORT (DOM a domain id or name)
        #[arg(value_name = "TARGET")]
        target: forward::TargetAddr,
        /// At most N connections at once; more wait in the listener's backlog
        #[arg(long, value_name = "N", default_value_t = 1024)]
        max_connections: usize,
        /// No log line per connection
        #[arg(long, short)]
        quiet: bool,
    },
    /// Open a stream to DOM:PORT (DOM a domain id or name): stdin to the peer, the peer to stdout
    Connect {
        #[arg(value_name = "DOM:PORT")]
        dest: names::Dest,
    },
    /// Show the daemon's state: domain, rings, ports, clients, counters
    Status {
        /// Machine-readable output
        #[arg(long)]
        json: bool,
    },
    /// Read or edit the hypervisor's ACL table (dom0; edits need root or the ACL group)
    #[command(subcommand)]
    Acl(acl::AclCommand),
}

/// A handshake timeout; `None` is no limit.
#[derive(Debug, Clone, Copy)]
struct Timeout(Option<std::time::Duration>);

fn handshake_secs(v: &str) -> Result<Timeout, String> {
    v4v::client::parse_secs(v)
        .map(Timeout)
        .ok_or_else(|| format!("{v:?} is not a number of seconds"))
}

fn write_stdout(args: std::fmt::Arguments<'_>, newline: bool) {
    use std::io::Write;
    let mut o = std::io::stdout().lock();
    let r = o
        .write_fmt(args)
        .and_then(|()| if newline { o.write_all(b"\n") } else { Ok(()) })
        .and_then(|()| o.flush());
    match r {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => {
            eprintln!("v4v-cli: writing stdout: {e}");
            std::process::exit(Exit::Failure as i32)
        }
    }
}

fn run(cli: Cli) -> Result<(), Failure> {
    let socket = cli.socket.unwrap_or_else(v4v::client::socket_path);
    if let Some(Timeout(t)) = cli.handshake_timeout {
        v4v::client::set_handshake_timeout(t);
    }
    match cli.command {
        Command::Send {
            dest,
            message,
            from_port,
            nowait,
        } => dgram::send(&socket, dest.resolve(&socket)?, message, from_port, nowait),
        Command::Recv {
            port,
            count,
            timeout,
            from,
            raw,
            verbose,
        } => dgram::recv(
            &socket,
            dgram::RecvOpts {
                port,
                count,
                timeout,
                from: from
                    .map(|d| names::resolve_domain(&socket, &d))
                    .transpose()?,
                raw,
                verbose,
            },
        ),
        Command::Listen {
            port,
            exec: Some(cmd),
            max_children,
            ..
        } => exec::run(
            &socket,
            port,
            cmd,
            max_children.unwrap_or(exec::DEFAULT_MAX_CHILDREN),
        ),
        Command::Listen { port, once, .. } => stream::listen(&socket, port, once),
        Command::Forward {
            listen,
            target,
            max_connections,
            quiet,
        } => forward::run(
            &socket,
            forward::Opts {
                listen,
                target,
                max_connections,
                quiet,
            },
        ),
        Command::Connect { dest } => stream::connect(&socket, dest.resolve(&socket)?),
        Command::Status { json } => status::status(&socket, json),
        Command::Acl(cmd) => acl::run(&socket, cmd),
    }
}

/// Writes v4v-cli(1), a page per command (v4v-cli-send(1), v4v-cli-acl-add(1), ...), and the
/// bash, zsh and fish completions under `dir` (`man/`, `completions/`).
fn generate_assets(dir: &std::path::Path) -> std::io::Result<()> {
    use clap::CommandFactory;
    std::fs::create_dir_all(dir.join("man"))?;
    std::fs::create_dir_all(dir.join("completions"))?;
    let source = concat!("v4v ", env!("CARGO_PKG_VERSION"));
    let mut cmd = Cli::command();
    cmd.build();
    let man = clap_mangen::Man::new(cmd.clone()).source(source);
    let mut page = Vec::new();
    man.render_title(&mut page)?;
    man.render_name_section(&mut page)?;
    man.render_synopsis_section(&mut page)?;
    man.render_description_section(&mut page)?;
    man.render_options_section(&mut page)?;
    man.render_subcommands_section(&mut page)?;
    page.extend_from_slice(include_str!("../../docs/man/v4v-cli.1.sections").as_bytes());
    man.render_version_section(&mut page)?;
    std::fs::write(dir.join("man/v4v-cli.1"), page)?;
    // One page per command, named like git's: the words of the command joined by `-`.
    fn pages(
        cmd: &clap::Command,
        prefix: &str,
        dir: &std::path::Path,
        source: &str,
    ) -> std::io::Result<()> {
        for sub in cmd
            .get_subcommands()
            .filter(|s| !s.is_hide_set() && s.get_name() != "help")
        {
            let name = format!("{prefix}-{}", sub.get_name());
            let sub = sub.clone().name(name.clone());
            let mut page = Vec::new();
            clap_mangen::Man::new(sub.clone())
                .source(source.to_string())
                .render(&mut page)?;
            std::fs::write(dir.join(format!("man/{name}.1")), page)?;
            pages(&sub, &name, dir, source)?;
        }
        Ok(())
    }
    pages(&cmd, "v4v-cli", dir, source)?;
    for (shell, name) in [
        (clap_complete::Shell::Bash, "v4v-cli"),
        (clap_complete::Shell::Zsh, "_v4v-cli"),
        (clap_complete::Shell::Fish, "v4v-cli.fish"),
    ] {
        let mut out = Vec::new();
        clap_complete::generate(shell, &mut cmd.clone(), "v4v-cli", &mut out);
        std::fs::write(dir.join("completions").join(name), out)?;
    }
    Ok(())
}

fn main() -> ExitCode {
    // scripts/package's hook (`v4v-cli --generate-assets DIR`), outside the clap definition so
    // that no page or completion shows it.
    let argv: Vec<_> = std::env::args_os().skip(1).collect();
    if let [flag, dir] = &argv[..]
        && flag == "--generate-assets"
    {
        let dir = std::path::Path::new(dir);
        return match generate_assets(dir) {
            Ok(()) => Exit::Ok.into(),
            Err(e) => {
                eprintln!("v4v-cli: {}: {e}", dir.display());
                Exit::Failure.into()
            }
        };
    }
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() {
                Exit::Usage
            } else {
                Exit::Ok
            };
            let _ = e.print();
            return code.into();
        }
    };
    match run(cli) {
        Ok(()) => Exit::Ok.into(),
        Err(f) => {
            if f.verbatim {
                eprintln!("{}", f.message);
            } else {
                eprintln!("v4v-cli: {}", f.message);
            }
            f.code.into()
        }
    }
}
