// SPDX-License-Identifier: MIT OR Apache-2.0
//! One user cannot take every ring of the domain (issue 10, defect 3): user nobody asks for as
//! many datagram ports as the domain has rings (128); it gets a quarter of them
//! (`max_rings_per_user`), then `EDQUOT` naming the limit, while root can still receive, send
//! and connect, and another user still gets rings.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{OnConnect, Stack, cli_as, connections_as};
use v4v::client::{Datagram, Listener};

/// The daemon's ring count, from a raw STATUS exchange (read to the end, whatever its length;
/// `rings=N` in the text reply, `"rings":N` in JSON).
fn rings(sock: &Path) -> usize {
    use std::io::{Read, Write};
    let mut c = std::os::unix::net::UnixStream::connect(sock).expect("connect");
    c.write_all(b"STATUS\n").expect("request");
    let mut reply = String::new();
    c.read_to_string(&mut reply).expect("reply");
    let at = reply
        .find("rings=")
        .map(|i| i + 6)
        .or_else(|| reply.find("\"rings\":").map(|i| i + 8))
        .unwrap_or_else(|| panic!("no ring count in {reply:?}"));
    reply[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .expect("a number")
}

#[test]
fn nobody_gets_a_quarter_of_the_rings_and_root_keeps_working() {
    let s = Stack::start(&[0, 1]);
    let sock = s.sock(0);
    let _dest = Datagram::bind_with(&s.sock(1), 5000, None).expect("bind 1:5000");
    let mut hog = connections_as(&sock, 65534, 128, 60, OnConnect::SendAndHold(b"DGRAM 0\n"));
    std::thread::sleep(Duration::from_millis(1500));
    let held = rings(&sock);
    // nobody is refused with the limit named.
    let o = cli_as(&sock, 65534, &["recv", "0", "--timeout", "1"]);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    // Root and another user still get rings.
    let root_recv = s.run(0, &["recv", "0", "--timeout", "1"]);
    let root_send = s.run(0, &["send", "1:5000", "from root"]);
    let mut l = Listener::bind_with(&s.sock(1), 6000).expect("listen 1:6000");
    let acceptor = std::thread::spawn(move || l.accept().map(|_| ()));
    let root_connect = s.run(0, &["connect", "1:6000"]);
    let other = cli_as(&sock, 1001, &["recv", "0", "--timeout", "1"]);
    let _ = hog.kill();
    let _ = hog.wait();
    assert_eq!(held, 32, "nobody holds {held} rings, not a quarter of 128");
    assert_ne!(o.status.code(), Some(0), "nobody's 33rd ring was granted");
    assert!(
        err.contains("EDQUOT") && err.contains("max_rings_per_user is 32"),
        "{err}"
    );
    for (what, o) in [
        ("recv", &root_recv),
        ("send", &root_send),
        ("connect", &root_connect),
        ("uid 1001's recv", &other),
    ] {
        assert_eq!(
            o.status.code(),
            Some(0),
            "{what}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    acceptor.join().expect("acceptor").expect("accept");
}
