// SPDX-License-Identifier: MIT OR Apache-2.0
//! v4vd as systemd runs it, with real processes and what systemd would hand it: a notify socket
//! (`READY=1` once clients are served, `WATCHDOG=1` from the loop, `STOPPING=1`), a passed
//! listening socket (`LISTEN_FDS`), and the config file (TOML, the old format, bad keys).

mod common;

use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Proc, tmpdir, wait_for};

fn bin(name: &str) -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_v4vd")).with_file_name(name)
}

/// A simulator in `dir`; `None` (the test is skipped, with a note) when v4v-sim is not built.
fn sim(dir: &Path) -> Option<(Proc, PathBuf)> {
    if !bin("v4v-sim").exists() {
        eprintln!("skipped: v4v-sim not built (cargo build -p v4v-sim)");
        return None;
    }
    let sock = dir.join("sim.sock");
    let p = Proc(
        Command::new(bin("v4v-sim"))
            .arg("--socket")
            .arg(&sock)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn v4v-sim"),
    );
    wait_for(&sock);
    Some((p, sock))
}

fn v4vd(sim: &Path, domid: u16) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_v4vd"));
    c.arg("--hypervisor")
        .arg(format!("sim:{}", sim.display()))
        .args(["--domid", &domid.to_string()])
        .stdin(Stdio::null())
        .env_remove("NOTIFY_SOCKET")
        .env_remove("JOURNAL_STREAM")
        .env_remove("WATCHDOG_USEC");
    c
}

fn recv(sock: &UnixDatagram, limit: Duration) -> Option<String> {
    sock.set_read_timeout(Some(limit)).expect("timeout");
    let mut buf = [0u8; 512];
    let n = sock.recv(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

fn kill(p: &Proc, sig: libc::c_int) {
    // SAFETY: signalling our own child, which has not been reaped (Proc waits only on drop).
    assert_eq!(unsafe { libc::kill(p.0.id() as libc::pid_t, sig) }, 0);
}

#[test]
fn ready_once_clients_are_served_then_watchdog_pings_from_the_loop_then_stopping() {
    let dir = tmpdir();
    let Some((_sim, sim_sock)) = sim(&dir) else {
        return;
    };
    let notify_path = dir.join("notify");
    let notify = UnixDatagram::bind(&notify_path).expect("bind notify");
    let client_sock = dir.join("v4vd.sock");
    let d = Proc(
        v4vd(&sim_sock, 1)
            .arg("--socket")
            .arg(&client_sock)
            .env("NOTIFY_SOCKET", &notify_path)
            .env("WATCHDOG_USEC", "200000")
            .spawn()
            .expect("spawn v4vd"),
    );
    let first = recv(&notify, Duration::from_secs(10)).expect("a notification");
    assert!(first.starts_with("READY=1\n"), "{first:?}");
    assert!(first.contains("STATUS=serving domain 1"), "{first:?}");
    // Ready means ready: the socket answers now, with no retry.
    let st = v4v::client::status(&client_sock).expect("status right after READY=1");
    assert_eq!(st.domid, 1);
    // The watchdog wants a ping every 100 ms (half of WATCHDOG_USEC).
    let t0 = Instant::now();
    for _ in 0..5 {
        assert_eq!(
            recv(&notify, Duration::from_secs(2)).as_deref(),
            Some("WATCHDOG=1")
        );
    }
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(2), "5 pings took {took:?}");
    // A stopped loop stops the pings (so systemd would restart it).
    kill(&d, libc::SIGSTOP);
    while recv(&notify, Duration::from_millis(50)).is_some() {}
    assert_eq!(recv(&notify, Duration::from_millis(500)), None);
    kill(&d, libc::SIGCONT);
    assert_eq!(
        recv(&notify, Duration::from_secs(2)).as_deref(),
        Some("WATCHDOG=1")
    );
    kill(&d, libc::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = recv(&notify, Duration::from_secs(10)).expect("STOPPING=1");
        if m == "STOPPING=1" {
            break;
        }
        assert_eq!(m, "WATCHDOG=1");
        assert!(Instant::now() < deadline);
    }
}

#[test]
fn no_watchdog_pings_unless_asked_for_this_process() {
    let dir = tmpdir();
    let Some((_sim, sim_sock)) = sim(&dir) else {
        return;
    };
    let notify_path = dir.join("notify");
    let notify = UnixDatagram::bind(&notify_path).expect("bind notify");
    let _d = Proc(
        v4vd(&sim_sock, 1)
            .arg("--socket")
            .arg(dir.join("v4vd.sock"))
            .env("NOTIFY_SOCKET", &notify_path)
            .env("WATCHDOG_USEC", "100000")
            .env("WATCHDOG_PID", "1")
            .spawn()
            .expect("spawn v4vd"),
    );
    let first = recv(&notify, Duration::from_secs(10)).expect("READY=1");
    assert!(first.starts_with("READY=1"), "{first:?}");
    assert_eq!(recv(&notify, Duration::from_millis(400)), None);
}

/// Runs v4vd with `listener` as descriptor 3 and LISTEN_PID set to its own pid, as systemd does.
fn activated(sim: &Path, listener: &UnixListener, fds: &str, extra: &[&str]) -> Command {
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(format!(
            "LISTEN_PID=$$ LISTEN_FDS={fds} LISTEN_FDNAMES=v4vd.socket exec \"$0\" \"$@\""
        ))
        .arg(env!("CARGO_BIN_EXE_v4vd"))
        .arg("--hypervisor")
        .arg(format!("sim:{}", sim.display()))
        .args(["--domid", "2"])
        .args(extra)
        .stdin(Stdio::null())
        .env_remove("NOTIFY_SOCKET");
    let fd = listener.as_raw_fd();
    // SAFETY: dup2 and fcntl are async-signal-safe; they run in the child between fork and
    // exec and touch only the child's descriptor table. dup2 clears FD_CLOEXEC on the new
    // descriptor 3; when the listener already is 3, fcntl clears it.
    unsafe {
        c.pre_exec(move || {
            let r = if fd == 3 {
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, 3)
            };
            if r < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    c
}

#[test]
fn socket_activation_uses_the_passed_socket_and_leaves_it_to_systemd() {
    let dir = tmpdir();
    let Some((_sim, sim_sock)) = sim(&dir) else {
        return;
    };
    let path = dir.join("activated.sock");
    let listener = UnixListener::bind(&path).expect("bind");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o660)).expect("chmod");
    // The options name another socket and mode: the unit's win.
    let other = dir.join("other.sock");
    let other_arg = other.to_str().expect("utf8").to_string();
    let d = Proc(
        activated(
            &sim_sock,
            &listener,
            "1",
            &["--socket", &other_arg, "--socket-mode", "0600"],
        )
        .spawn()
        .expect("spawn"),
    );
    drop(listener);
    let deadline = Instant::now() + Duration::from_secs(10);
    let st = loop {
        match v4v::client::status(&path) {
            Ok(st) => break st,
            Err(e) => assert!(Instant::now() < deadline, "{e}"),
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(st.domid, 2);
    assert!(!other.exists(), "v4vd bound its own socket too");
    let mode = std::fs::metadata(&path)
        .expect("socket")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o660, "v4vd changed the unit's socket mode");
    kill(&d, libc::SIGTERM);
    let mut d = d;
    let status = d.0.wait().expect("wait");
    assert!(status.success(), "{status:?}");
    // systemd owns the file: v4vd does not remove it.
    assert!(path.exists());
}

#[test]
fn socket_activation_with_two_sockets_is_refused() {
    let dir = tmpdir();
    let Some((_sim, sim_sock)) = sim(&dir) else {
        return;
    };
    let listener = UnixListener::bind(dir.join("a.sock")).expect("bind");
    let o = activated(&sim_sock, &listener, "2", &[])
        .stderr(Stdio::piped())
        .output()
        .expect("run");
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("LISTEN_FDS=\"2\""), "{err}");
}

fn run(c: &mut Command) -> Output {
    c.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("run v4vd")
}

#[test]
fn config_files_toml_old_format_and_errors() {
    let dir = tmpdir();
    let Some((_sim, sim_sock)) = sim(&dir) else {
        return;
    };
    let sock = dir.join("v4vd.sock");
    // TOML, with the command line over it.
    let toml = dir.join("new.conf");
    std::fs::write(
        &toml,
        format!(
            "hypervisor = \"sim:{}\"\ndomid = 7\nsocket = \"{}\"\nsocket_mode = \"0640\"\n",
            sim_sock.display(),
            sock.display()
        ),
    )
    .expect("write");
    let mut c = Command::new(env!("CARGO_BIN_EXE_v4vd"));
    c.arg("--config")
        .arg(&toml)
        .args(["--domid", "3", "--check-config"]);
    let o = run(&mut c);
    assert!(o.status.success(), "{o:?}");
    let shown = String::from_utf8_lossy(&o.stdout);
    assert!(shown.contains("domid = 3\n"), "{shown}");
    assert!(shown.contains("socket_mode = \"0640\"\n"), "{shown}");
    // The daemon itself, from that file.
    let d = Proc(
        Command::new(env!("CARGO_BIN_EXE_v4vd"))
            .arg("--config")
            .arg(&toml)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn"),
    );
    assert_serves(&sock, 7, 0o640);
    drop(d);

    // The old format still starts the daemon, with a warning naming the migration command.
    let old = dir.join("old.conf");
    std::fs::write(
        &old,
        format!(
            "# before TOML\nhypervisor = sim:{}\ndomid = 4\nsocket = {}\nsocket-mode = 600\n",
            sim_sock.display(),
            sock.display()
        ),
    )
    .expect("write");
    let _ = std::fs::remove_file(&sock);
    let d = Proc(
        Command::new(env!("CARGO_BIN_EXE_v4vd"))
            .arg("--config")
            .arg(&old)
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn"),
    );
    assert_serves(&sock, 4, 0o600);
    let mut d = d;
    kill(&d, libc::SIGTERM);
    let out = d.0.stderr.take().expect("stderr");
    let err = std::io::read_to_string(out).expect("read");
    assert!(err.contains("old `key = value` format"), "{err}");
    assert!(err.contains("--migrate-config"), "{err}");
    // --migrate-config prints TOML that reads the same.
    let o = run(Command::new(env!("CARGO_BIN_EXE_v4vd"))
        .arg("--migrate-config")
        .arg(&old));
    assert!(o.status.success(), "{o:?}");
    let migrated = dir.join("migrated.conf");
    std::fs::write(&migrated, &o.stdout).expect("write");
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("socket_mode = \"600\""), "{text}");
    assert!(text.starts_with("# before TOML\n"), "{text}");
    let show = |f: &Path| {
        let o = run(Command::new(env!("CARGO_BIN_EXE_v4vd"))
            .arg("--config")
            .arg(f)
            .arg("--check-config"));
        assert!(o.status.success(), "{o:?}");
        (o.stdout, String::from_utf8_lossy(&o.stderr).into_owned())
    };
    let (from_old, warned) = show(&old);
    let (from_new, quiet) = show(&migrated);
    assert_eq!(from_old, from_new);
    assert!(warned.contains("old `key"), "{warned}");
    assert!(!quiet.contains("old `key"), "{quiet}");

    // An unknown key is an error with its line, and nothing starts.
    let bad = dir.join("bad.conf");
    std::fs::write(&bad, "domid = 1\n# ok so far\nring_sise = 4096\n").expect("write");
    let o = run(Command::new(env!("CARGO_BIN_EXE_v4vd"))
        .arg("--config")
        .arg(&bad));
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("line 3") && err.contains("unknown field `ring_sise`"),
        "{err}"
    );
}

#[test]
fn journal_stderr_has_priorities_and_no_timestamps() {
    if Path::new(v4vd::systemd::JOURNAL_SOCKET).exists() {
        // Entries would go to this machine's journal (the package test checks them with a
        // journal socket of its own).
        eprintln!("skipped: this machine has a journal socket");
        return;
    }
    let dir = tmpdir();
    let Some((_sim, sim_sock)) = sim(&dir) else {
        return;
    };
    // stderr is a file; JOURNAL_STREAM names it, as systemd names the journal's stream.
    let log = dir.join("stderr");
    let f = std::fs::File::create(&log).expect("create");
    // SAFETY: all-zero is a valid `struct stat`.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `f` is an open descriptor and `st` a writable stat buffer.
    assert_eq!(unsafe { libc::fstat(f.as_raw_fd(), &mut st) }, 0);
    let sock = dir.join("v4vd.sock");
    let d = Proc(
        v4vd(&sim_sock, 5)
            .arg("--socket")
            .arg(&sock)
            .env("JOURNAL_STREAM", format!("{}:{}", st.st_dev, st.st_ino))
            .env("V4VD_LOG", "info")
            .stderr(f)
            .spawn()
            .expect("spawn"),
    );
    wait_for(&sock);
    kill(&d, libc::SIGTERM);
    let mut d = d;
    d.0.wait().expect("wait");
    let text = std::fs::read_to_string(&log).expect("read");
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines.iter().any(|l| l.starts_with("<6>listening")),
        "{text}"
    );
    assert!(lines.iter().all(|l| l.starts_with('<')), "{text}");
    assert!(!text.contains("Z "), "a timestamp: {text}");
    assert!(text.contains(" domid=5"), "{text}");
}

/// Waits for the daemon on `sock` to answer STATUS, then checks it is `domid` and the socket's
/// permissions are `mode`.
fn assert_serves(sock: &Path, domid: u16, mode: u32) {
    wait_for(sock);
    let deadline = Instant::now() + Duration::from_secs(10);
    while v4v::client::status(sock).is_err() {
        assert!(
            Instant::now() < deadline,
            "v4vd never answered on {}",
            sock.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(v4v::client::status(sock).expect("status").domid, domid);
    let got = std::fs::metadata(sock)
        .expect("socket")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(got, mode, "the socket's mode");
}
