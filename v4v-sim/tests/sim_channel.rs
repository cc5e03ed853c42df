// SPDX-License-Identifier: MIT OR Apache-2.0
//! The shared-memory channel of protocol versions 2 and 3 (docs/sim.md, "Channel"): negotiation,
//! sendv_batch in one request, and guests that abuse the memory they share with the simulator
//! (corrupt indexes and records, rewrite requests while they are read, flood, never read their
//! replies). Each abuse must cost only the abuser its domain.

mod common;

use std::io::{ErrorKind, IoSlice, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Sim, read_frame, ring, send};
use v4v::abi::{self, Addr, DOMID_ANY, DOMID_SELF, DomId, PROTO_DGRAM, SendAddr};
use v4v::backend::sim::protocol::{
    self as proto, FRAME_HEADER_SIZE, FrameHeader, Reply, ReplyData, Request, fdpass, kind,
};
use v4v::backend::sim::{SimHypervisor, Transport, set_nonblocking};
use v4v::chan::{ChanMemory, Consumer, DATA_OFFSET, Producer, Pushed};
use v4v::hypervisor::BatchSend;
use v4v::shmem::RingMemory;
use v4v::{HvError, Hypervisor};

/// Channel header words (libv4v::chan's layout).
const OFF_TAIL: usize = 64;
const OFF_HEAD: usize = 192;

/// A version-3 (or version-2) guest written by hand: the channels as the simulator passed them,
/// plus raw mappings of the same memory to scribble on.
struct RawGuest {
    sock: UnixStream,
    _event: OwnedFd,
    /// Where we ring the simulator, and where it rings us: two pipe ends with version 3, one
    /// socket (twice) with version 2. Both non-blocking.
    bell_out: OwnedFd,
    bell_in: OwnedFd,
    tx: Producer,
    rx: Consumer,
    req_raw: RingMemory,
    rep_raw: RingMemory,
    req_cap: usize,
    buf: Vec<u8>,
}

impl RawGuest {
    fn connect(path: &Path, domid: DomId) -> RawGuest {
        Self::connect_version(path, domid, proto::VERSION_PIPES)
    }

    fn connect_version(path: &Path, domid: DomId, version: u16) -> RawGuest {
        let sock = UnixStream::connect(path).unwrap();
        let hello = Request::Hello { version, domid }.encode();
        (&sock).write_all(&hello).unwrap();
        let (h, body, fds) = read_frame(&sock).unwrap();
        let reply = Reply::decode(kind::HELLO, h.kind, h.nfds, &body).unwrap();
        let ReplyData::Hello {
            version: answered,
            channels: Some(sizes),
            ..
        } = reply.data
        else {
            panic!("not a hello reply with channels: {reply:?}");
        };
        assert_eq!(answered, version);
        let mut fds = fds.into_iter();
        let event = fds.next().unwrap();
        let bell_out = fds.next().unwrap();
        let bell_in = if version == proto::VERSION_PIPES {
            fds.next().unwrap()
        } else {
            bell_out.try_clone().unwrap()
        };
        let (req, rep) = (fds.next().unwrap(), fds.next().unwrap());
        assert!(fds.next().is_none());
        set_nonblocking(bell_out.as_fd()).unwrap();
        set_nonblocking(bell_in.as_fd()).unwrap();
        let (req_cap, rep_cap) = (sizes.requests as usize, sizes.replies as usize);
        let req_raw = RingMemory::map_fd(req.try_clone().unwrap(), DATA_OFFSET + req_cap).unwrap();
        let rep_raw = RingMemory::map_fd(rep.try_clone().unwrap(), DATA_OFFSET + rep_cap).unwrap();
        let req = ChanMemory::map(req, req_cap).unwrap();
        let rep = ChanMemory::map(rep, rep_cap).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        RawGuest {
            sock,
            _event: event,
            bell_out,
            bell_in,
            tx: Producer::new(&req).unwrap(),
            rx: Consumer::new(&rep).unwrap(),
            req_raw,
            rep_raw,
            req_cap,
            buf: Vec::new(),
        }
    }

    fn ring(&self) {
        ring_fd(self.bell_out.as_fd());
    }

    /// Publishes a request record (ringing as the channel asks). False when the channel is full.
    fn push(&mut self, frame: &[u8]) -> bool {
        match self.tx.push(&[frame]).unwrap() {
            Pushed::Done { doorbell } => {
                if doorbell {
                    self.ring();
                }
                true
            }
            Pushed::Full => false,
        }
    }

    /// The next reply, waiting up to 5 s.
    fn reply(&mut self, req_kind: u16) -> Option<Reply> {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            self.buf.clear();
            if self.rx.pop_into(&mut self.buf).unwrap().is_some() {
                let (h, body) = proto::split_record(&self.buf, true).unwrap();
                return Some(Reply::decode(req_kind, h.kind, 0, body).unwrap());
            }
            if self.rx.prepare_sleep().unwrap() {
                poll_in(self.bell_in.as_fd(), 50);
                drain_fd(self.bell_in.as_fd());
            }
        }
        None
    }

    fn call(&mut self, req: &Request<'_>) -> Option<Reply> {
        self.call_frame(&req.encode(), req.kind())
    }

    fn call_frame(&mut self, frame: &[u8], req_kind: u16) -> Option<Reply> {
        assert!(self.push(frame));
        self.reply(req_kind)
    }

    /// Publishes `words` as if they were a record, straight into the data area at the tail, and
    /// moves the tail by `advance`: what a guest that ignores the record format can do.
    fn publish_raw(&mut self, words: &[u32], advance: u32) {
        let tail = self.req_raw.load_seqcst_u32(OFF_TAIL).unwrap();
        let pos = tail as usize & (self.req_cap - 1);
        for (i, w) in words.iter().enumerate() {
            self.req_raw
                .write_u32(DATA_OFFSET + pos + 4 * i, *w)
                .unwrap();
        }
        self.req_raw
            .store_seqcst_u32(OFF_TAIL, tail.wrapping_add(advance))
            .unwrap();
        self.ring();
    }

    /// Whether the simulator closed our connection within `within`.
    fn closed_within(&self, within: Duration) -> bool {
        self.sock.set_read_timeout(Some(within)).unwrap();
        let mut b = [0u8; 4096];
        loop {
            match (&self.sock).read(&mut b) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }
}

/// A one-byte write to our non-blocking doorbell end (a full one has a ring pending already).
fn ring_fd(fd: BorrowedFd<'_>) {
    let _ = v4v::backend::sim::ring_byte(fd);
}

/// Takes what is pending on our non-blocking doorbell end.
fn drain_fd(fd: BorrowedFd<'_>) {
    let mut b = [0u8; 64];
    // SAFETY: a read into a live local buffer of the stated length.
    unsafe { libc::read(fd.as_raw_fd(), b.as_mut_ptr().cast(), b.len()) };
}

fn poll_in(fd: BorrowedFd<'_>, ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: polls one live pollfd.
    unsafe { libc::poll(&mut p, 1, ms) == 1 }
}

/// dom1 sends `n` datagrams to dom2's ring and dom2 reads them, each promptly: the simulator
/// serves well-behaved guests.
fn good_pair_works(a: &dyn Hypervisor, rb: &v4v::ring::RingReader, n: u8) {
    let mut buf = Vec::new();
    for i in 0..n {
        let t = Instant::now();
        assert_eq!(send(a, 1, 2, 20, &[i; 3]), Ok(3));
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "send took {:?}",
            t.elapsed()
        );
        let got = rb.recv(&mut buf).unwrap().expect("delivered");
        assert_eq!(got.source.domain, 1);
        assert_eq!(buf, [i; 3]);
    }
}

fn sim_rss_kib(sim: &Sim) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", sim.child.id())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn a_version_2_guest_is_still_served_through_its_socket_doorbell() {
    // Version 3 changed only the kind of the event channel and doorbells: a guest built before it
    // keeps its socket pair, and a version-3 guest talks to it.
    let sim = Sim::start(&[]);
    let mut old = RawGuest::connect_version(sim.path(), 3, proto::VERSION_CHANNEL);
    let new = SimHypervisor::connect_with(sim.path(), Some(4), Transport::Channel).unwrap();
    let rb = ring(&new, 20, DOMID_ANY, 4096);
    let addr = SendAddr {
        src: Addr::new(DOMID_SELF, 5),
        dst: Addr::new(4, 20),
    };
    let mut buf = Vec::new();
    for i in 0..200u32 {
        let payload = i.to_le_bytes();
        let frame = proto::encode_sendv(&addr, PROTO_DGRAM, &[IoSlice::new(&payload)]);
        let reply = old.call_frame(&frame, kind::SENDV).expect("a reply");
        assert_eq!(reply.ret, 4, "send {i}");
        assert!(rb.recv(&mut buf).unwrap().is_some());
        assert_eq!(buf, payload);
    }
    let r = old.call(&Request::Info).expect("info reply");
    assert!(matches!(r.data, ReplyData::Info(i) if i.domid == 3));
}

#[test]
fn version_3_is_negotiated_and_both_versions_talk() {
    let sim = Sim::start(&[]);
    let new = SimHypervisor::connect_with(sim.path(), Some(1), Transport::Channel).unwrap();
    let old = SimHypervisor::connect_with(sim.path(), Some(2), Transport::Socket).unwrap();
    assert!(new.uses_channel());
    assert!(!old.uses_channel());
    let r_new = ring(&new, 20, DOMID_ANY, 4096);
    let r_old = ring(&old, 20, DOMID_ANY, 4096);
    let mut buf = Vec::new();
    assert_eq!(send(&new, 5, 2, 20, b"to old"), Ok(6));
    assert_eq!(send(&old, 5, 1, 20, b"to new!"), Ok(7));
    assert!(r_old.recv(&mut buf).unwrap().is_some());
    assert_eq!(buf, b"to old");
    assert!(r_new.recv(&mut buf).unwrap().is_some());
    assert_eq!(buf, b"to new!");
    // Errors travel the channel as they travel the socket.
    assert_eq!(send(&new, 5, 9, 20, b"x"), Err(HvError::Refused));
    assert_eq!(send(&old, 5, 9, 20, b"x"), Err(HvError::Refused));
    assert_eq!(new.info().unwrap().domid, 1);
    // A message larger than a channel record takes the socket, transparently.
    let big = ring(&old, 21, DOMID_ANY, 1 << 20);
    let payload = vec![7u8; 600 * 1024];
    assert_eq!(send(&new, 5, 2, 21, &payload), Ok(payload.len() as u32));
    assert!(big.recv(&mut buf).unwrap().is_some());
    assert_eq!(buf, payload);
}

#[test]
fn sendv_batch_is_one_request_with_a_result_per_send() {
    let sim = Sim::start(&["--log-level", "trace"]);
    let a = SimHypervisor::connect_with(sim.path(), Some(1), Transport::Channel).unwrap();
    let b = sim.guest(2);
    let rb = ring(b.as_ref(), 20, DOMID_ANY, 4096);
    let to = |dom, port| SendAddr {
        src: Addr::new(DOMID_SELF, 3),
        dst: Addr::new(dom, port),
    };
    let one = [IoSlice::new(b"first")];
    let two = [IoSlice::new(b"sec"), IoSlice::new(b"ond")];
    let many: Vec<IoSlice<'_>> = (0..abi::MAX_IOV + 1).map(|_| IoSlice::new(b"")).collect();
    let big = vec![0u8; 8192];
    let too_big = [IoSlice::new(&big)];
    let sends = [
        BatchSend {
            addr: to(2, 20),
            iov: &one,
            message_type: PROTO_DGRAM,
        },
        BatchSend {
            addr: to(9, 20),
            iov: &one,
            message_type: PROTO_DGRAM,
        },
        BatchSend {
            addr: to(2, 20),
            iov: &many,
            message_type: PROTO_DGRAM,
        },
        BatchSend {
            addr: to(2, 20),
            iov: &too_big,
            message_type: PROTO_DGRAM,
        },
        BatchSend {
            addr: to(2, 20),
            iov: &two,
            message_type: PROTO_DGRAM,
        },
    ];
    let mut results = vec![Ok(99)];
    a.sendv_batch(&sends, &mut results);
    // Each send got the answer a sendv of its own has, in order.
    let singly: Vec<_> = sends
        .iter()
        .map(|s| a.sendv(&s.addr, s.iov, s.message_type))
        .collect();
    assert_eq!(results, singly);
    assert_eq!(
        results,
        [
            Ok(5),
            Err(HvError::Refused),
            Err(HvError::TooMany),
            Err(HvError::MessageTooBig),
            Ok(6)
        ]
    );
    let mut buf = Vec::new();
    for want in [&b"first"[..], b"second", b"first", b"second"] {
        assert!(rb.recv(&mut buf).unwrap().is_some());
        assert_eq!(buf, want);
    }
    assert!(rb.recv(&mut buf).unwrap().is_none());
    // One request carried them all.
    let log = sim.log_text();
    assert_eq!(
        log.matches("request SendvBatch { 5 sends").count(),
        1,
        "{log}"
    );
    assert_eq!(log.matches("request Sendv {").count(), 5, "{log}");

    // Many sends are cut into as few requests as the records hold.
    let payload = vec![1u8; 16 * 1024];
    let iov = [IoSlice::new(&payload)];
    let rb2 = ring(b.as_ref(), 21, DOMID_ANY, 1 << 20);
    let sends: Vec<BatchSend<'_>> = (0..40)
        .map(|_| BatchSend {
            addr: to(2, 21),
            iov: &iov,
            message_type: PROTO_DGRAM,
        })
        .collect();
    a.sendv_batch(&sends, &mut results);
    assert_eq!(results, vec![Ok(16 * 1024); 40]);
    for _ in 0..40 {
        assert!(rb2.recv(&mut buf).unwrap().is_some());
        assert_eq!(buf, payload);
    }
    let batches = sim.log_text().matches("request SendvBatch").count();
    assert!((3..=5).contains(&batches), "{batches} batch requests");
}

/// Corruptions a guest can make of its own channels, each by writing the shared memory.
#[derive(Debug, Clone, Copy)]
enum Corruption {
    /// The request channel's tail more than a capacity ahead of its head.
    TailPastCapacity,
    /// A record longer than the largest allowed.
    LongRecord,
    /// A record header whose reserved word is not zero.
    ReservedWord,
    /// A record that is not a request frame (its frame's length disagrees with the record's).
    NotAFrame,
    /// A frame header declaring a descriptor, which a record cannot pass.
    DeclaresFd,
    /// A skip marker where no skip is possible.
    BadSkip,
    /// The reply channel's head moved past the simulator's tail.
    ReplyHeadAhead,
}

#[test]
fn a_guest_corrupting_its_channel_loses_only_its_domain() {
    let mut sim = Sim::start(&[]);
    let a = sim.guest(1);
    let b = sim.guest(2);
    let rb = ring(b.as_ref(), 20, DOMID_ANY, 4096);
    use Corruption::*;
    for (i, c) in [
        TailPastCapacity,
        LongRecord,
        ReservedWord,
        NotAFrame,
        DeclaresFd,
        BadSkip,
        ReplyHeadAhead,
    ]
    .into_iter()
    .enumerate()
    {
        let domid = 10 + i as DomId;
        let mut g = RawGuest::connect(sim.path(), domid);
        // It works before it breaks the rules.
        let r = g.call(&Request::Info).expect("info reply");
        assert!(matches!(r.data, ReplyData::Info(i) if i.domid == domid));
        let cap = g.req_cap as u32;
        match c {
            TailPastCapacity => {
                let tail = g.req_raw.load_seqcst_u32(OFF_TAIL).unwrap();
                g.req_raw
                    .store_seqcst_u32(OFF_TAIL, tail.wrapping_add(cap + 64))
                    .unwrap();
                g.ring();
            }
            LongRecord => g.publish_raw(&[cap, 0], 16),
            ReservedWord => g.publish_raw(&[8, 1, 0, 0], 16),
            NotAFrame => {
                // A 16-byte record whose frame header announces a 100-byte body.
                g.publish_raw(&[16, 0, 100, u32::from(kind::INFO), 0, 0], 24)
            }
            DeclaresFd => {
                let h = u32::from(kind::INFO) | (1 << 16);
                g.publish_raw(&[8, 0, 0, h], 16)
            }
            BadSkip => g.publish_raw(&[u32::MAX, 0], 8),
            ReplyHeadAhead => {
                let head = g.rep_raw.load_seqcst_u32(OFF_HEAD).unwrap();
                g.rep_raw
                    .store_seqcst_u32(OFF_HEAD, head.wrapping_add(4096))
                    .unwrap();
                assert!(g.push(&Request::Info.encode()));
            }
        }
        assert!(
            g.closed_within(Duration::from_secs(5)),
            "{c:?}: not disconnected\n{}",
            sim.log_text()
        );
        sim.assert_alive();
        // Only its own domain went: the id is free again, and the others carry on.
        let again = sim.guest(domid);
        assert_eq!(again.info().unwrap().domid, domid);
        drop(again);
        good_pair_works(a.as_ref(), &rb, 3);
    }
    let log = sim.log_text();
    assert!(log.contains("corrupted its request channel"), "{log}");
    assert!(log.contains("corrupted its reply channel"), "{log}");
    assert!(log.contains("not a request frame"), "{log}");
}

/// A guest that rewrites its requests while the simulator reads them (a second thread scribbles
/// over the data area, records in flight included) gets well-formed answers or loses its
/// connection; nothing it does reaches another domain or the simulator.
#[test]
fn rewriting_requests_mid_flight_gets_nothing_past_the_checks() {
    rewrite_requests_mid_flight(40, 31);
}

/// The same with sendvs big enough to be served in place (their payload copied from the channel
/// straight into the ring, only their head copied out to decode): what the guest rewrites after
/// the head was read garbles only its own message.
#[test]
fn rewriting_big_sendvs_mid_flight_gets_nothing_past_the_checks() {
    rewrite_requests_mid_flight(12_000, 32);
}

/// Sends `payload_len`-byte sendvs from domain `domid` while a thread rewrites them.
fn rewrite_requests_mid_flight(payload_len: usize, domid: DomId) {
    let mut sim = Sim::start(&[]);
    let a = sim.guest(1);
    let b = sim.guest(2);
    let rb = ring(b.as_ref(), 20, DOMID_ANY, 64 * 1024);
    let mut g = RawGuest::connect(sim.path(), domid);
    // The record: its header, the frame header, the sendv fields and one length, the payload.
    let record = 8 + FRAME_HEADER_SIZE + 32 + payload_len;
    let stop = Arc::new(AtomicBool::new(false));
    let scribbler = {
        let mem = g.req_raw.clone();
        let cap = g.req_cap;
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut x = 0x9e37_79b9_7f4a_7c15u64;
            while !stop.load(Ordering::Relaxed) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                // Within the record last published. A small one: mostly its frame (header,
                // sendv fields, lengths, payload), now and then its record header. A big one:
                // its sendv fields and length now and then, its payload the rest of the time
                // (its headers rarely, or every request would end the connection).
                let tail = mem.load_seqcst_u32(OFF_TAIL).unwrap_or(0) as usize;
                let frame = record - 8;
                let r = x as usize >> 20;
                let back = if frame < 100 {
                    if x & 0xf00 == 0 {
                        record
                    } else {
                        frame - r % frame
                    }
                } else if x & 0xf_ffff == 0 {
                    record - r % 16
                } else if x & 0x7000 == 0 {
                    frame - 8 - r % 32
                } else {
                    frame - 40 - r % (frame - 40)
                };
                let at = DATA_OFFSET + (tail.wrapping_sub(back) & (cap - 1)) / 4 * 4;
                let v = match x >> 60 {
                    0 => u32::MAX,
                    1 => 0,
                    2 => (x >> 8) as u32 & 0xffff,
                    _ => (x >> 16) as u32,
                };
                let _ = mem.write_u32(at, v);
            }
        })
    };
    let addr = SendAddr {
        src: Addr::new(DOMID_SELF, 4),
        dst: Addr::new(2, 20),
    };
    let payload = vec![0x5au8; payload_len];
    let frame = proto::encode_sendv(&addr, PROTO_DGRAM, &[IoSlice::new(&payload)]);
    let mut answered = 0;
    let mut closed = false;
    for _ in 0..2000 {
        if !g.push(&frame) {
            break;
        }
        // A reply (any well-formed one) or the end of the connection.
        g.buf.clear();
        let deadline = Instant::now() + Duration::from_secs(2);
        let got = loop {
            match g.rx.pop_into(&mut g.buf) {
                Ok(Some(_)) => break true,
                Ok(None) if Instant::now() < deadline => {
                    poll_in(g.bell_in.as_fd(), 5);
                    drain_fd(g.bell_in.as_fd());
                }
                _ => break false,
            }
        };
        if !got {
            closed = g.closed_within(Duration::from_secs(3));
            assert!(closed, "neither a reply nor a disconnection");
            break;
        }
        let (h, body) = proto::split_record(&g.buf, true).expect("a reply record");
        let reply = Reply::decode(h.kind & !proto::REPLY_BIT, h.kind, 0, body)
            .expect("a well-formed reply to whatever the simulator read");
        assert!(reply.ret >= -4095 && reply.ret <= i64::from(u32::MAX));
        answered += 1;
    }
    stop.store(true, Ordering::Relaxed);
    scribbler.join().unwrap();
    sim.assert_alive();
    // What reached dom2's ring came from dom30 (the source is the simulator's to say), intact
    // as ring records, each no longer than what a request could carry.
    let mut buf = Vec::new();
    while let Some(m) = rb.recv(&mut buf).expect("the ring is intact") {
        assert_eq!(m.source.domain, domid);
        assert!(buf.len() <= g.req_cap / 4);
    }
    good_pair_works(a.as_ref(), &rb, 5);
    eprintln!("{answered} replies, closed: {closed}");
}

#[test]
fn a_guest_that_never_reads_its_replies_is_dropped_and_buffers_nothing() {
    let mut sim = Sim::start(&["--reply-timeout-ms", "300"]);
    let a = sim.guest(1);
    let b = sim.guest(2);
    let rb = ring(b.as_ref(), 20, DOMID_ANY, 4096);
    let rss_before = sim_rss_kib(&sim);
    let mut g = RawGuest::connect(sim.path(), 40);
    let frame = Request::Info.encode();
    // Push until the simulator stops taking requests: its reply channel is full and it holds
    // the one reply that did not fit.
    let mut pushed = 0usize;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        if g.push(&frame) {
            pushed += 1;
        } else {
            g.ring();
            std::thread::sleep(Duration::from_millis(1));
            if g.tx.is_drained().unwrap() {
                continue;
            }
            // Full and not draining: the simulator stopped reading us.
            std::thread::sleep(Duration::from_millis(20));
            if !g.push(&frame) {
                break;
            }
            pushed += 1;
        }
        if pushed > 1_000_000 {
            panic!("the simulator took a million requests with no reply read");
        }
    }
    // Meanwhile everyone else is served.
    good_pair_works(a.as_ref(), &rb, 5);
    assert!(
        g.closed_within(Duration::from_secs(5)),
        "not disconnected\n{}",
        sim.log_text()
    );
    assert!(sim.log_text().contains("stopped reading its replies"));
    let reply_len = Reply::ok(0, ReplyData::Info(Default::default()))
        .encode(kind::INFO)
        .len();
    // The replies it could have had fill the reply channel, and no more were made.
    let served_bound = (1 << 17) / (reply_len + 8) + 1;
    assert!(pushed > served_bound, "{pushed} requests");
    let rss_after = sim_rss_kib(&sim);
    assert!(
        rss_after < rss_before + 8 * 1024,
        "simulator grew from {rss_before} to {rss_after} KiB"
    );
    sim.assert_alive();
    assert_eq!(sim.guest(40).info().unwrap().domid, 40);
}

#[test]
fn a_flooding_guest_cannot_starve_the_others() {
    let mut sim = Sim::start(&[]);
    let a = sim.guest(1);
    let b = sim.guest(2);
    let rb = ring(b.as_ref(), 20, DOMID_ANY, 4096);
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let path = sim.path().to_path_buf();
    // The flooder pushes from one thread and takes its replies from another, so that its request
    // channel is never empty: without a budget per turn, the simulator would serve it forever.
    let g = RawGuest::connect(&path, 50);
    let RawGuest {
        sock: _sock,
        mut tx,
        mut rx,
        bell_out: bell,
        ..
    } = g;
    let bell2 = bell.try_clone().unwrap();
    let pusher = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            // Batches of sends to nowhere (each refused by the model after its checks) and a
            // doorbell after every push: as much work per byte as a guest can ask for.
            let addr = SendAddr {
                src: Addr::new(DOMID_SELF, 1),
                dst: Addr::new(60, 1),
            };
            let iov = [IoSlice::new(&[0u8; 16])];
            let sends: Vec<BatchSend<'_>> = (0..proto::MAX_WIRE_BATCH)
                .map(|_| BatchSend {
                    addr,
                    iov: &iov,
                    message_type: PROTO_DGRAM,
                })
                .collect();
            let frame = proto::SendvFrame::batch(&sends).to_vec();
            while !stop.load(Ordering::Relaxed) {
                match tx.push(&[&frame]) {
                    Ok(Pushed::Done { doorbell: true }) => ring_fd(bell.as_fd()),
                    Ok(Pushed::Done { .. }) => {}
                    _ => {
                        // Full: make sure the simulator is awake, and let it work.
                        ring_fd(bell.as_fd());
                        std::thread::yield_now();
                    }
                }
            }
        })
    };
    let popper = {
        let stop = stop.clone();
        let served = served.clone();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                buf.clear();
                match rx.pop_into(&mut buf) {
                    Ok(Some(_)) => {
                        served.fetch_add(1, Ordering::Relaxed);
                        if rx.space_doorbell_wanted().unwrap_or(false) {
                            ring_fd(bell2.as_fd());
                        }
                    }
                    _ => std::thread::yield_now(),
                }
            }
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    good_pair_works(a.as_ref(), &rb, 100);
    let took = t.elapsed();
    eprintln!(
        "100 round trips in {took:?} beside a flooder served {} times",
        served.load(Ordering::Relaxed)
    );
    stop.store(true, Ordering::Relaxed);
    pusher.join().unwrap();
    popper.join().unwrap();
    sim.assert_alive();
    assert!(
        served.load(Ordering::Relaxed) > 0,
        "the flooder was never served"
    );
    assert!(
        took < Duration::from_secs(10),
        "100 round trips took {took:?} beside the flooder"
    );
}

/// A version-2 client meeting a simulator that speaks only version 1 (played here by a thread:
/// it refuses version 2 with EPROTO, as an older v4v-sim does) falls back to the socket.
#[test]
fn a_new_client_falls_back_to_version_1_with_an_old_simulator() {
    let dir = std::env::temp_dir().join(format!("v4v-sim-old-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("old.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let old = std::thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        let read_request = |s: &UnixStream| {
            let mut head = [0u8; FRAME_HEADER_SIZE];
            (&*s).read_exact(&mut head).unwrap();
            let h = FrameHeader::parse(&head).unwrap();
            let mut body = vec![0u8; h.body_len as usize];
            (&*s).read_exact(&mut body).unwrap();
            (h, body)
        };
        let mut versions = Vec::new();
        loop {
            let (h, body) = read_request(&s);
            let req = Request::decode(h.kind, h.nfds, &body).unwrap();
            let Request::Hello { version, .. } = req else {
                panic!("{req:?} before hello");
            };
            versions.push(version);
            if version != proto::VERSION_SOCKET {
                let refusal = Reply::error(proto::errno::EPROTO).encode(kind::HELLO);
                (&s).write_all(&refusal).unwrap();
                continue;
            }
            let (ours, theirs) = UnixStream::pair().unwrap();
            let ok = Reply::ok(
                0,
                ReplyData::Hello {
                    version,
                    domid: 5,
                    channels: None,
                },
            )
            .encode(kind::HELLO);
            assert_eq!(
                fdpass::send(s.as_fd(), &ok, &[theirs.as_fd()], false).unwrap(),
                ok.len()
            );
            let (h, _) = read_request(&s);
            assert_eq!(h.kind, kind::INFO);
            let info = Reply::ok(
                0,
                ReplyData::Info(abi::Info {
                    domid: 5,
                    ..Default::default()
                }),
            )
            .encode(kind::INFO);
            (&s).write_all(&info).unwrap();
            drop(ours);
            return versions;
        }
    });
    let hv = SimHypervisor::connect_with(&path, None, Transport::Channel).unwrap();
    assert!(!hv.uses_channel());
    assert_eq!(hv.domid(), 5);
    assert_eq!(hv.info().unwrap().domid, 5);
    assert_eq!(
        old.join().unwrap(),
        [
            proto::VERSION_PIPES,
            proto::VERSION_CHANNEL,
            proto::VERSION_SOCKET
        ]
    );
    let _ = std::fs::remove_dir_all(&dir);
}
