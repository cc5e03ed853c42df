// SPDX-License-Identifier: MIT OR Apache-2.0
//! Ports 1-1023 are privileged (issue 10, defect 5): user nobody may not bind, listen on,
//! accept on or send from them, so it cannot take dom0:22 before root's service starts, nor pass
//! an ACL rule `accept 0:22 -> 1:*` by sending from port 22. Root may, and so may members of the
//! configured `privileged_group`.

mod common;

use common::{Stack, cli_as};

fn code(o: &std::process::Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn text(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

#[test]
fn only_root_or_the_privileged_group_use_ports_below_1024() {
    let mut s = Stack::start(&[1]);
    s.start_daemon(0, &["--privileged-group", "1001"]);
    let sock = s.sock(0);
    let _dest = v4v::client::Datagram::bind_with(&s.sock(1), 5000, None).expect("bind 1:5000");
    // nobody: refused at once, with the reason, exit 9 (not permitted).
    for args in [
        &["recv", "22", "--timeout", "1"][..],
        &["listen", "22", "--once"][..],
        &["send", "--from-port", "22", "1:5000", "hello"][..],
        &["recv", "1023", "--timeout", "1"][..],
    ] {
        let o = cli_as(&sock, 65534, args);
        assert_eq!(code(&o), 9, "{args:?}: {}", text(&o));
        assert!(
            text(&o).contains("is privileged") && text(&o).contains("group 1001"),
            "{args:?}: {}",
            text(&o)
        );
    }
    // Port 1024 and up are anyone's.
    let o = cli_as(&sock, 65534, &["recv", "1024", "--timeout", "1"]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    let o = cli_as(
        &sock,
        65534,
        &["send", "--from-port", "1024", "1:5000", "x"],
    );
    assert_eq!(code(&o), 0, "{}", text(&o));
    // Root, and a member of the privileged group (by its primary group here).
    let o = s.run(0, &["send", "--from-port", "22", "1:5000", "x"]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    let o = cli_as(&sock, 1001, &["send", "--from-port", "23", "1:5000", "x"]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    let o = cli_as(&sock, 1001, &["recv", "22", "--timeout", "1"]);
    assert_eq!(code(&o), 0, "{}", text(&o));
}
