// SPDX-License-Identifier: MIT OR Apache-2.0
//! The simulator against hostile and broken peers: garbage frames, lying descriptors, guests that
//! never read their replies or never say hello. None of it may crash the simulator or disturb a
//! well-behaved guest.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use common::{Sim, read_frame, readable, ring, send};
use v4v::abi::{
    self, Addr, Config, DOMID_ANY, DOMID_SELF, RingDataEnt, RingHeader, RingId, SendAddr,
    TablesRule,
};
use v4v::backend::sim::protocol::{
    self as proto, FRAME_HEADER_SIZE, FrameHeader, KIND_FATAL, Reply, Request, fdpass, kind,
};
use v4v::backend::sim::sealed_ring_memory;
use v4v::shmem::{PAGE_SIZE, RingMemory};

/// xorshift64*: a seeded generator, so that a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
    fn addr(&mut self) -> Addr {
        let domain = match self.below(4) {
            0 => DOMID_SELF,
            1 => DOMID_ANY,
            2 => self.below(8) as u16,
            _ => self.next() as u16,
        };
        let pad = if self.below(8) == 0 {
            self.next() as u16
        } else {
            0
        };
        Addr {
            port: self.below(40) as u32,
            domain,
            pad,
        }
    }
}

/// A version-1 hello: these guests speak the socket protocol, as an old client does.
fn hello_frame(domid: u16) -> Vec<u8> {
    Request::Hello {
        version: proto::VERSION_SOCKET,
        domid,
    }
    .encode()
}

/// A memfd of one of several kinds a hostile guest might pass as ring memory.
fn hostile_fd(rng: &mut Rng) -> (OwnedFd, Option<RingMemory>) {
    match rng.below(5) {
        0 => {
            let m = RingMemory::anonymous(PAGE_SIZE).unwrap();
            (m.fd().unwrap().try_clone_to_owned().unwrap(), Some(m))
        }
        1 => {
            let mut p = [0i32; 2];
            // SAFETY: pipe fills a live two-int array; both ends are then owned here.
            assert_eq!(unsafe { libc::pipe(p.as_mut_ptr()) }, 0);
            // SAFETY: fresh descriptors owned by nobody else.
            let (r, _w) = unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) };
            (r, None)
        }
        2 => (std::fs::File::open("/dev/null").unwrap().into(), None),
        _ => {
            let pages = 1 + rng.below(3) as usize;
            let m = sealed_ring_memory(pages * PAGE_SIZE).unwrap();
            let len = match rng.below(3) {
                0 => 48 + 16 * rng.below(200) as u32,
                1 => rng.next() as u32,
                _ => (pages * PAGE_SIZE) as u32,
            };
            let h = RingHeader {
                magic: if rng.below(5) == 0 {
                    rng.next()
                } else {
                    abi::RING_MAGIC
                },
                id: RingId {
                    addr: rng.addr(),
                    partner: rng.addr().domain,
                    pad: 0,
                },
                len,
                rx_ptr: rng.next() as u32,
                tx_ptr: rng.next() as u32,
                reserved: [0; 32],
            };
            m.write_obj(0, &h).unwrap();
            (m.fd().unwrap().try_clone_to_owned().unwrap(), Some(m))
        }
    }
}

/// One frame a hostile guest might send, and the descriptors to attach to it.
fn hostile_frame(rng: &mut Rng) -> (Vec<u8>, Vec<OwnedFd>) {
    match rng.below(8) {
        0 => {
            let n = rng.below(64) as usize;
            (rng.bytes(n), Vec::new())
        }
        1 => {
            // A well-formed header of any kind around a random body.
            let n = rng.below(80) as usize;
            let body = rng.bytes(n);
            let kinds = [
                0,
                1,
                2,
                3,
                4,
                5,
                6,
                7,
                8,
                9,
                10,
                11,
                kind::HELLO,
                rng.next() as u16,
            ];
            let h = FrameHeader {
                body_len: body.len() as u32,
                kind: kinds[rng.below(kinds.len() as u64) as usize],
                nfds: 0,
            };
            let mut f = h.encode().to_vec();
            f.extend(body);
            (f, Vec::new())
        }
        2 => {
            let n = rng.below(200) as usize;
            let lens: Vec<u32> = (0..n.min(proto::MAX_WIRE_IOV))
                .map(|_| {
                    if rng.below(4) == 0 {
                        rng.next() as u32
                    } else {
                        rng.below(40) as u32
                    }
                })
                .collect();
            let total: u64 = lens.iter().map(|&l| u64::from(l)).sum();
            let payload = if total <= 4096 {
                rng.bytes(total as usize)
            } else {
                Vec::new()
            };
            let elide = total > 4096 || rng.below(6) == 0;
            let req = Request::Sendv {
                addr: SendAddr {
                    src: rng.addr(),
                    dst: rng.addr(),
                },
                message_type: rng.next() as u32,
                lens,
                payload: (!elide).then_some(payload.as_slice()),
            };
            (req.encode(), Vec::new())
        }
        3 => {
            let (fd, _mem) = hostile_fd(rng);
            let offset = match rng.below(3) {
                0 => 0,
                1 => PAGE_SIZE as u64 * rng.below(4),
                _ => rng.next(),
            };
            let req = if rng.below(2) == 0 {
                Request::RegisterRing { offset }
            } else {
                Request::UnregisterRing { offset }
            };
            let mut f = req.encode();
            let mut fds = vec![fd];
            match rng.below(4) {
                0 => fds.clear(), // declared, not sent
                1 => f[6] = 0,    // sent, not declared
                _ => {}
            }
            (f, fds)
        }
        4 => {
            let r = TablesRule {
                src: rng.addr(),
                dst: rng.addr(),
                accept: rng.below(3) as u32,
            };
            let req = match rng.below(6) {
                0 => Request::TablesAdd {
                    rule: r,
                    position: rng.below(3) as u32,
                },
                1 => Request::TablesDel {
                    rule: Some(r),
                    position: rng.below(2) as u32,
                },
                2 => Request::TablesList {
                    start: rng.next() as u32,
                    max: rng.next() as u32,
                },
                3 => Request::Config(Config {
                    domain: rng.below(8) as u16,
                    pad: 0,
                    max_rings: rng.next() as u32,
                    max_ring_pages: 0,
                }),
                4 => Request::Info,
                _ => {
                    let n = rng.below(300) as usize;
                    Request::Notify {
                        entries: Some(
                            (0..n.min(proto::MAX_WIRE_NOTIFY))
                                .map(|_| RingDataEnt {
                                    ring: rng.addr(),
                                    space_required: rng.next() as u32,
                                    ..Default::default()
                                })
                                .collect(),
                        ),
                    }
                }
            };
            (req.encode(), Vec::new())
        }
        5 => {
            // A length prefix that promises more than the limit, or more than will come.
            let len = if rng.below(2) == 0 {
                u32::MAX - rng.below(1000) as u32
            } else {
                1 << 20
            };
            let h = FrameHeader {
                body_len: 0,
                kind: kind::INFO,
                nfds: 0,
            };
            let mut f = h.encode().to_vec();
            f[0..4].copy_from_slice(&len.to_le_bytes());
            (f, Vec::new())
        }
        6 => {
            // A valid frame cut short, or with a corrupted byte.
            let mut f = Request::TablesList { start: 0, max: 4 }.encode();
            if rng.below(2) == 0 {
                f.truncate(rng.below(f.len() as u64) as usize);
            } else {
                let i = rng.below(f.len() as u64) as usize;
                f[i] ^= 1 << rng.below(8);
            }
            (f, Vec::new())
        }
        _ => (hello_frame(rng.next() as u16), Vec::new()),
    }
}

#[test]
fn garbage_never_crashes_the_simulator_or_reaches_another_guest() {
    let mut sim = Sim::start(&[]);
    let a = sim.guest(1);
    let b = sim.guest(2);
    // dom2's ring takes messages only from dom1: nothing a fuzzing domain sends can land in it.
    let rb = ring(b.as_ref(), 20, 1, 4096);
    let ra = ring(a.as_ref(), 10, 2, 4096);
    let seed = std::env::var("V4V_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_1234_abcd_0001u64);
    let rounds: usize = std::env::var("V4V_FUZZ_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let mut rng = Rng(seed);
    let mut buf = Vec::new();
    for round in 0..rounds {
        let s = UnixStream::connect(sim.path()).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
        if rng.below(4) != 0 {
            let claims = [proto::CLAIM_ANY, 1, 2, 0x7ff0, 100 + rng.below(10) as u16];
            let d = claims[rng.below(claims.len() as u64) as usize];
            (&s).write_all(&hello_frame(d)).unwrap();
        }
        for _ in 0..1 + rng.below(20) {
            let (frame, fds) = hostile_frame(&mut rng);
            let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
            let Ok(n) = fdpass::send(s.as_fd(), &frame, &borrowed, false) else {
                break;
            };
            if (&s).write_all(&frame[n..]).is_err() {
                break;
            }
        }
        // Done: the simulator answers what it can parse, then closes when we do.
        let _ = s.shutdown(std::net::Shutdown::Write);
        let start = Instant::now();
        let mut sink = [0u8; 4096];
        loop {
            match (&s).read(&mut sink) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
                Err(e) => panic!("round {round} (seed {seed:#x}): {e}\n{}", sim.log_text()),
            }
        }
        assert!(start.elapsed() < Duration::from_secs(10));
        // The well-behaved pair is unaffected.
        let msg = format!("round {round}");
        assert_eq!(
            send(a.as_ref(), 1, 2, 20, msg.as_bytes()).unwrap() as usize,
            msg.len()
        );
        let got = rb.recv(&mut buf).unwrap().expect("dom2 got the message");
        assert_eq!(
            (got.source, buf.as_slice()),
            (Addr::new(1, 1), msg.as_bytes())
        );
        assert!(
            rb.recv(&mut buf).unwrap().is_none(),
            "round {round}: a stray message"
        );
        assert_eq!(send(b.as_ref(), 2, 1, 10, b"back").unwrap(), 4);
        assert_eq!(ra.recv(&mut buf).unwrap().unwrap().source, Addr::new(2, 2));
        let _ = a.take_event();
        let _ = b.take_event();
        if round % 50 == 0 {
            sim.assert_alive();
        }
    }
    sim.assert_alive();
    assert_eq!(a.info().unwrap().domid, 1);
    assert_eq!(b.info().unwrap().nr_rings, 1);
    // Every fuzzing domain was destroyed with its connection.
    let again = sim.guest(100);
    assert_eq!(again.info().unwrap().domid, 100);
}

#[test]
fn malformed_requests_get_error_replies_and_the_connection_survives() {
    let sim = Sim::start(&[]);
    let s = UnixStream::connect(sim.path()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let call = |frame: &[u8]| {
        (&s).write_all(frame).unwrap();
        read_frame(&s).unwrap()
    };
    // Before hello, only hello.
    let (h, body, _) = call(&Request::Info.encode());
    assert_eq!(h.kind, kind::INFO | proto::REPLY_BIT);
    let r = Reply::decode(kind::INFO, h.kind, h.nfds, &body).unwrap();
    assert_eq!(r.ret, -i64::from(proto::errno::ENOTCONN));
    // A wrong version is refused; the right one claims.
    let (h, body, _) = call(
        &Request::Hello {
            version: proto::VERSION + 1,
            domid: 5,
        }
        .encode(),
    );
    let r = Reply::decode(kind::HELLO, h.kind, h.nfds, &body).unwrap();
    assert_eq!(r.ret, -i64::from(proto::errno::EPROTO));
    let (h, _, fds) = call(&hello_frame(5));
    assert_eq!((h.nfds, fds.len()), (1, 1));
    // Unknown kinds, short bodies, trailing bytes, non-zero reserved fields: EINVAL, and go on.
    let mut unknown = FrameHeader {
        body_len: 0,
        kind: 0x1234,
        nfds: 0,
    }
    .encode()
    .to_vec();
    let mut trailing = Request::Info.encode();
    trailing.push(0);
    trailing[0] = 1;
    let mut short = Request::TablesList { start: 0, max: 1 }.encode();
    short.truncate(short.len() - 1);
    short[0] -= 1;
    let mut del = Request::TablesDel {
        rule: None,
        position: 1,
    }
    .encode();
    del[FRAME_HEADER_SIZE] = 2;
    let fd_missing = Request::RegisterRing { offset: 0 }.encode();
    for frame in [&mut unknown, &mut trailing, &mut short, &mut del] {
        let (h, body, _) = call(frame);
        let r = Reply::decode(h.kind & !proto::REPLY_BIT, h.kind, h.nfds, &body).unwrap();
        assert_eq!(r.ret, -i64::from(libc::EINVAL), "{frame:?}");
    }
    let (h, body, _) = call(&fd_missing);
    let r = Reply::decode(kind::REGISTER_RING, h.kind, h.nfds, &body).unwrap();
    assert_eq!(r.ret, -i64::from(libc::EINVAL));
    // A pipe as ring memory: EFAULT.
    let mut p = [0i32; 2];
    // SAFETY: pipe fills a live two-int array; both ends are then owned here.
    assert_eq!(unsafe { libc::pipe(p.as_mut_ptr()) }, 0);
    // SAFETY: fresh descriptors owned by nobody else.
    let (pr, _pw) = unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) };
    let frame = Request::RegisterRing { offset: 0 }.encode();
    fdpass::send(s.as_fd(), &frame, &[pr.as_fd()], false).unwrap();
    let (h, body, _) = read_frame(&s).unwrap();
    let r = Reply::decode(kind::REGISTER_RING, h.kind, h.nfds, &body).unwrap();
    assert_eq!(r.ret, -i64::from(libc::EFAULT));
    // Still served.
    let (h, body, _) = call(&Request::Info.encode());
    let r = Reply::decode(kind::INFO, h.kind, h.nfds, &body).unwrap();
    assert_eq!(r.ret, 0);
    // A second hello is refused.
    let (h, body, _) = call(&hello_frame(6));
    let r = Reply::decode(kind::HELLO, h.kind, h.nfds, &body).unwrap();
    assert_eq!(r.ret, -i64::from(proto::errno::EISCONN));
    // A length past the limit is fatal: one last frame, then the connection closes.
    let mut huge = FrameHeader {
        body_len: 0,
        kind: kind::INFO,
        nfds: 0,
    }
    .encode();
    huge[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
    let (h, body, _) = call(&huge);
    assert_eq!(h.kind, KIND_FATAL);
    let r = Reply::decode(kind::INFO, h.kind, h.nfds, &body).unwrap();
    assert_eq!(r.ret, -i64::from(libc::EMSGSIZE));
    assert_eq!(read_frame(&s).unwrap_err().kind(), ErrorKind::UnexpectedEof);
    // And domain 5 went with it.
    let g = sim.guest(5);
    assert_eq!(g.info().unwrap().nr_rings, 0);
}

#[test]
fn a_guest_that_stops_reading_is_dropped_and_others_carry_on() {
    let mut sim = Sim::start(&["--reply-timeout-ms", "300", "--hello-timeout-ms", "300"]);
    let a = sim.guest(1);
    let b = sim.guest(2);
    let rb = ring(b.as_ref(), 20, DOMID_ANY, 4096);

    // A connection that never says hello is dropped.
    let idle = UnixStream::connect(sim.path()).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let start = Instant::now();
    assert_eq!((&idle).read(&mut [0u8; 8]).unwrap(), 0);
    assert!(start.elapsed() < Duration::from_secs(4));

    // A guest that floods requests and reads no replies.
    let s = UnixStream::connect(sim.path()).unwrap();
    (&s).write_all(&hello_frame(7)).unwrap();
    let (_, _, _fds) = read_frame(&s).unwrap();
    s.set_nonblocking(true).unwrap();
    let frame = Request::Info.encode();
    let mut sent = 0usize;
    let mut stalled = 0;
    while sent < 1_000_000 && stalled < 50 {
        match (&s).write(&frame) {
            Ok(n) => {
                sent += n;
                stalled = 0;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                stalled += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(_) => break,
        }
    }
    // Meanwhile, and after, everyone else is served promptly.
    let mut buf = Vec::new();
    for i in 0..10u8 {
        let t = Instant::now();
        send(a.as_ref(), 1, 2, 20, &[i]).unwrap();
        assert!(t.elapsed() < Duration::from_secs(1));
        rb.recv(&mut buf).unwrap().unwrap();
    }
    // The flooder is disconnected within the timeout (it gets the replies sent so far, then EOF).
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    std::thread::sleep(Duration::from_millis(600));
    let mut total = 0usize;
    let mut chunk = vec![0u8; 1 << 16];
    loop {
        match (&s).read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => total += n,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) => panic!("flooder not disconnected: {e}\n{}", sim.log_text()),
        }
    }
    let reply_len = proto::Reply::ok(0, proto::ReplyData::Info(Default::default()))
        .encode(kind::INFO)
        .len();
    assert!(
        total < sent / frame.len() * reply_len,
        "every reply was buffered"
    );
    assert!(sim.log_text().contains("stopped reading its replies"));
    // Its domain is gone, and its domid free again.
    let again = sim.guest(7);
    assert_eq!(again.info().unwrap().domid, 7);
    assert!(!readable(a.event_fd(), 0) || a.take_event().is_ok());
    sim.assert_alive();
}
