// SPDX-License-Identifier: MIT OR Apache-2.0
//! Streams that end orderly are reported as ended orderly: rounds of many concurrent
//! `connect < file` into `listen --once > out` streams, one way and both ways, in both
//! directions between two domains, as real processes. Every process must exit 0 and every copy
//! must be byte-identical (issue 10, defect 1: late credit ACKs answered with RST made
//! listeners exit 7 although their copy was complete).

mod common;

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, ChildStderr, Stdio};
use std::time::{Duration, Instant};

use common::{Stack, fill_pattern, raise_fd_limit, wait_limited};

const ROUNDS: usize = 5;
const STREAMS: usize = 50;
const SIZE: usize = 4 << 20;

fn spawn_to_files(
    s: &Stack,
    dom: u16,
    args: &[&str],
    input: &std::path::Path,
    out: &std::path::Path,
) -> Child {
    s.cli(dom, args)
        .stdin(File::open(input).expect("input file"))
        .stdout(File::create(out).expect("output file"))
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn v4v-cli")
}

/// The port a `listen 0` child bound, from its "listening on port N" line (not from STATUS:
/// the test must not depend on how the daemon reports its ports).
fn bound_port(c: &mut Child) -> (u32, BufReader<ChildStderr>) {
    let mut r = BufReader::new(c.stderr.take().expect("piped stderr"));
    let mut line = String::new();
    r.read_line(&mut line).expect("listener stderr");
    let port = line
        .trim()
        .rsplit(' ')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("listener did not say its port: {line:?}"));
    (port, r)
}

#[test]
fn many_concurrent_streams_end_orderly_in_both_directions() {
    raise_fd_limit();
    let s = Stack::start(&[0, 1]);
    // Distinct content per stream, so a byte crossing streams is caught too.
    let inputs: Vec<_> = (0..STREAMS)
        .map(|i| {
            let p = s.dir.join(format!("in{i}"));
            let mut buf = vec![0u8; SIZE];
            let mut st = 0x9e37_79b9_7f4a_7c15 ^ (i as u64 + 1);
            fill_pattern(&mut buf, &mut st);
            std::fs::write(&p, &buf).expect("write input");
            p
        })
        .collect();
    let empty = s.dir.join("empty");
    std::fs::write(&empty, b"").expect("empty file");
    let started = Instant::now();
    let mut failures = Vec::new();
    for round in 0..ROUNDS {
        let mut listeners = Vec::new();
        for i in 0..STREAMS {
            // Even streams are one way (the listener sends nothing and closes its side at once),
            // odd ones carry a file each way; the direction alternates between the domains.
            let ldom = ((i / 2) % 2) as u16;
            let back = if i % 2 == 1 {
                &inputs[STREAMS - 1 - i]
            } else {
                &empty
            };
            let out = s.dir.join(format!("l{i}.out"));
            let mut c = spawn_to_files(&s, ldom, &["listen", "0", "--once"], back, &out);
            let (port, err) = bound_port(&mut c);
            listeners.push((i, ldom, port, c, err, out));
        }
        let mut connectors = Vec::new();
        for &(i, ldom, port, ..) in &listeners {
            let cdom = 1 - ldom;
            let dest = format!("{ldom}:{port}");
            let out = s.dir.join(format!("c{i}.out"));
            let c = spawn_to_files(&s, cdom, &["connect", &dest], &inputs[i], &out);
            connectors.push((i, c, out));
        }
        for (i, c, out) in connectors {
            let o = wait_limited(c, Duration::from_secs(120));
            if o.status.code() != Some(0) {
                failures.push(format!(
                    "round {round} stream {i}: connect exited {:?}: {}",
                    o.status.code(),
                    String::from_utf8_lossy(&o.stderr).trim()
                ));
            }
            let want: &[u8] = if i % 2 == 1 {
                &std::fs::read(&inputs[STREAMS - 1 - i]).expect("input")
            } else {
                b""
            };
            if std::fs::read(&out).expect("connector output") != want {
                failures.push(format!(
                    "round {round} stream {i}: connector's copy differs"
                ));
            }
        }
        for (i, _, _, c, mut err, out) in listeners {
            let o = wait_limited(c, Duration::from_secs(120));
            let mut msg = String::new();
            let _ = err.read_to_string(&mut msg);
            if o.status.code() != Some(0) {
                failures.push(format!(
                    "round {round} stream {i}: listen exited {:?}: {}",
                    o.status.code(),
                    msg.trim()
                ));
            }
            if std::fs::read(&out).expect("listener output")
                != std::fs::read(&inputs[i]).expect("input")
            {
                failures.push(format!("round {round} stream {i}: listener's copy differs"));
            }
        }
    }
    eprintln!(
        "{ROUNDS} rounds of {STREAMS} streams of {} MiB in {:?}",
        SIZE >> 20,
        started.elapsed()
    );
    assert!(
        failures.is_empty(),
        "{} of {} ends failed:\n{}",
        failures.len(),
        ROUNDS * STREAMS * 2,
        failures.join("\n")
    );
}
