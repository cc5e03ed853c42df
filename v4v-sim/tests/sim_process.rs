// SPDX-License-Identifier: MIT OR Apache-2.0
//! The `v4v-sim` binary with real guest processes' connections: shared ring memory, events, ACL
//! privilege, domid claims, destruction on disconnect, and the socket's life cycle.

mod common;

use std::io::IoSlice;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use common::{Sim, readable, ring, send};
use v4v::HvError;
use v4v::abi::{
    self, Addr, Config, DOMID_ANY, DOMID_SELF, PROTO_DGRAM, PROTO_STREAM, RING_DATA_F_EMPTY,
    RING_DATA_F_EXISTS, RING_DATA_F_SUFFICIENT, RingDataEnt, SendAddr, TablesRule,
};
use v4v::backend::sim::protocol::{self as proto, CLAIM_ANY};
use v4v::backend::{self, BackendError};
use v4v::ring::RingReader;
use v4v::shmem::{PAGE_SIZE, RingMemory};

#[test]
fn two_guests_exchange_messages_through_shared_memory() {
    let mut sim = Sim::start(&[]);
    let a = sim.guest(1);
    let b = sim.guest(2);
    assert_eq!(a.info().unwrap().domid, 1);
    assert_eq!(b.info().unwrap().domid, 2);

    let ra = ring(a.as_ref(), 100, DOMID_ANY, 4096);
    let rb = ring(b.as_ref(), 200, 1, 4096);
    // The simulator wrote our domid into the ring header in our own memory.
    assert_eq!(rb.id().unwrap().addr, Addr::new(2, 200));
    assert!(!readable(b.event_fd(), 0));

    assert_eq!(send(a.as_ref(), 7, 2, 200, b"hello b").unwrap(), 7);
    assert!(readable(b.event_fd(), 2000), "dom2 not signalled");
    assert!(b.take_event().unwrap());
    assert!(!b.take_event().unwrap());
    assert!(!readable(b.event_fd(), 0));
    let mut buf = Vec::new();
    let got = rb
        .recv(&mut buf)
        .unwrap()
        .expect("a message in dom2's ring");
    assert_eq!(buf, b"hello b");
    assert_eq!(got.source, Addr::new(1, 7));
    assert_eq!(got.message_type, PROTO_DGRAM);

    // And back, with several iovs and another message type.
    let addr = SendAddr {
        src: Addr::new(DOMID_SELF, 9),
        dst: Addr::new(1, 100),
    };
    let parts = [
        IoSlice::new(b"he"),
        IoSlice::new(b""),
        IoSlice::new(b"llo a"),
    ];
    assert_eq!(b.sendv(&addr, &parts, PROTO_STREAM).unwrap(), 7);
    assert!(readable(a.event_fd(), 2000));
    let got = ra.recv(&mut buf).unwrap().unwrap();
    assert_eq!(
        (buf.as_slice(), got.source, got.message_type),
        (&b"hello a"[..], Addr::new(2, 9), PROTO_STREAM)
    );
    assert!(ra.recv(&mut buf).unwrap().is_none());

    // dom2's ring only takes messages from dom1; a ring for dom3 is refused.
    let c = sim.guest(3);
    assert_eq!(send(c.as_ref(), 1, 2, 200, b"x"), Err(HvError::Refused));

    // notify sees the ring from the sender's side.
    let mut ents = [RingDataEnt {
        ring: Addr::new(2, 200),
        space_required: 100,
        ..Default::default()
    }];
    a.notify(Some(&mut ents)).unwrap();
    assert_eq!(
        ents[0].flags,
        RING_DATA_F_EXISTS | RING_DATA_F_EMPTY | RING_DATA_F_SUFFICIENT
    );
    assert_eq!(ents[0].max_message_size, 4096 - 32);

    // Sending to ourselves works through DOMID_SELF.
    assert_eq!(send(a.as_ref(), 1, DOMID_SELF, 100, b"me").unwrap(), 2);
    assert_eq!(ra.recv(&mut buf).unwrap().unwrap().source, Addr::new(1, 1));
    sim.assert_alive();
}

#[test]
fn large_messages_and_limits() {
    let sim = Sim::start(&[]);
    let a = sim.guest(1);
    let b = sim.guest(2);
    let rb = ring(b.as_ref(), 5, DOMID_ANY, 1 << 20);
    let big: Vec<u8> = (0..700_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let parts = [
        IoSlice::new(&big[..1]),
        IoSlice::new(&big[1..300_000]),
        IoSlice::new(&big[300_000..]),
    ];
    let addr = SendAddr {
        src: Addr::new(DOMID_SELF, 1),
        dst: Addr::new(2, 5),
    };
    assert_eq!(
        a.sendv(&addr, &parts, PROTO_DGRAM).unwrap(),
        big.len() as u32
    );
    let mut buf = Vec::new();
    rb.recv(&mut buf).unwrap().unwrap();
    assert_eq!(buf, big);

    // The hypervisor's limits arrive intact: iov count, total size, ring size.
    let one = [0u8; 1];
    let many: Vec<IoSlice<'_>> = (0..abi::MAX_IOV + 1).map(|_| IoSlice::new(&one)).collect();
    assert_eq!(a.sendv(&addr, &many, PROTO_DGRAM), Err(HvError::TooMany));
    let lots: Vec<IoSlice<'_>> = (0..5000).map(|_| IoSlice::new(&one)).collect();
    assert_eq!(a.sendv(&addr, &lots, PROTO_DGRAM), Err(HvError::TooMany));
    assert_eq!(
        a.sendv(&addr, &many[..abi::MAX_IOV as usize], PROTO_DGRAM)
            .unwrap(),
        abi::MAX_IOV
    );
    let huge = vec![0u8; abi::MAX_MESSAGE_SIZE as usize + 1];
    assert_eq!(
        a.sendv(&addr, &[IoSlice::new(&huge)], PROTO_DGRAM),
        Err(HvError::MessageTooBig)
    );
    // Past the ring's own limit: refused by the insert (the payload was shipped).
    assert_eq!(
        a.sendv(&addr, &[IoSlice::new(&huge[..(1 << 20) - 31])], PROTO_DGRAM),
        Err(HvError::MessageTooBig)
    );
    // Bad addresses keep the hypervisor's order of checks.
    let bad = SendAddr {
        src: Addr::new(7, 1),
        dst: Addr::new(2, 5),
    };
    assert_eq!(
        b.sendv(&bad, &many, PROTO_DGRAM),
        Err(HvError::NotPermitted)
    );
    let mut ents = vec![RingDataEnt::default(); abi::MAX_NOTIFY as usize + 5];
    assert_eq!(a.notify(Some(&mut ents)), Err(HvError::TooMany));
}

#[test]
fn ring_memory_is_vetted() {
    let sim = Sim::start(&[]);
    let a = sim.guest(1);
    let len = 4096u32;
    // Memory the simulator cannot trust not to shrink under it: an unsealed memfd.
    let plain = RingMemory::anonymous(2 * PAGE_SIZE).unwrap();
    let r = RingReader::new(plain.clone(), 0, len).unwrap();
    r.init_header(abi::RingId {
        addr: Addr::new(DOMID_SELF, 1),
        partner: DOMID_ANY,
        pad: 0,
    })
    .unwrap();
    assert_eq!(a.register_ring(&plain, 0), Err(HvError::BadAddress));
    // Misaligned offsets are the hypervisor's first check.
    assert_eq!(a.register_ring(&plain, 16), Err(HvError::Invalid));
    // Sealed but too small for the ring it describes.
    let small = a.alloc_ring_memory(PAGE_SIZE).unwrap();
    let r = RingReader::new(small.clone(), 0, 48).unwrap();
    r.init_header(abi::RingId {
        addr: Addr::new(DOMID_SELF, 1),
        partner: DOMID_ANY,
        pad: 0,
    })
    .unwrap();
    small
        .write_u32(abi::ring_offsets::LEN, 2 * PAGE_SIZE as u32)
        .unwrap();
    assert_eq!(a.register_ring(&small, 0), Err(HvError::BadAddress));
    // Header beyond the end of the memory.
    assert_eq!(a.register_ring(&small, PAGE_SIZE), Err(HvError::BadAddress));
    // A bad header in good memory is the model's to judge.
    small.write_u32(abi::ring_offsets::LEN, 47).unwrap();
    assert_eq!(a.register_ring(&small, 0), Err(HvError::Invalid));
    // Unregistering memory that holds no registered ring.
    small.write_u32(abi::ring_offsets::LEN, 48).unwrap();
    assert_eq!(a.unregister_ring(&small, 0), Err(HvError::NotFound));
    a.register_ring(&small, 0).unwrap();
    a.unregister_ring(&small, 0).unwrap();
    // Memory with no descriptor cannot be shared at all.
    // SAFETY: a fresh anonymous mapping handed to RingMemory, which unmaps it.
    let anon = unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            PAGE_SIZE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(p, libc::MAP_FAILED);
        RingMemory::from_mmap(std::ptr::NonNull::new(p.cast()).unwrap(), PAGE_SIZE)
    };
    assert_eq!(a.register_ring(&anon, 0), Err(HvError::BadAddress));
    // The connection is still good.
    assert_eq!(a.info().unwrap().nr_rings, 0);
}

#[test]
fn acl_is_for_dom0_only() {
    let sim = Sim::start(&[]);
    let dom0 = sim.guest(0);
    let a = sim.guest(1);
    let b = sim.guest(2);
    let rb = ring(b.as_ref(), 20, DOMID_ANY, 1024);
    let rule = TablesRule {
        src: Addr::new(1, 0),
        dst: Addr::new(2, 0),
        accept: 0,
    };
    assert_eq!(a.tables_add(&rule, 0), Err(HvError::NotPermitted));
    assert_eq!(a.tables_list(0, 10), Err(HvError::NotPermitted));
    assert_eq!(
        a.tables_del(None, abi::TABLES_DEL_ALL),
        Err(HvError::NotPermitted)
    );
    assert_eq!(
        a.config(&Config {
            domain: 1,
            pad: 0,
            max_rings: 1,
            max_ring_pages: 0,
        }),
        Err(HvError::NotPermitted)
    );

    dom0.tables_add(&rule, 0).unwrap();
    let table: Vec<TablesRule> = v4v::acl::read_table(dom0.as_ref())
        .unwrap()
        .iter()
        .map(TablesRule::from)
        .collect();
    assert_eq!(table, vec![rule]);
    assert_eq!(send(a.as_ref(), 1, 2, 20, b"no"), Err(HvError::Denied));
    let page = dom0.tables_list(0, 5).unwrap();
    assert_eq!((page.total, page.rules.len()), (1, 1));
    dom0.tables_del(Some(&rule), 0).unwrap();
    assert_eq!(dom0.tables_del(Some(&rule), 0), Err(HvError::NotFound));
    assert_eq!(send(a.as_ref(), 1, 2, 20, b"yes").unwrap(), 3);
    rb.skip().unwrap().unwrap();

    dom0.config(&Config {
        domain: 1,
        pad: 0,
        max_rings: 1,
        max_ring_pages: 0,
    })
    .unwrap();
    assert_eq!(
        dom0.config(&Config {
            domain: 9,
            pad: 0,
            max_rings: 1,
            max_ring_pages: 0,
        }),
        Err(HvError::NoSuchDomain)
    );
    let _r1 = ring(a.as_ref(), 1, DOMID_ANY, 64);
    let mem = a.alloc_ring_memory(PAGE_SIZE).unwrap();
    let r2 = RingReader::new(mem, 0, 64).unwrap();
    r2.init_header(abi::RingId {
        addr: Addr::new(DOMID_SELF, 2),
        partner: DOMID_ANY,
        pad: 0,
    })
    .unwrap();
    assert_eq!(a.register_ring(r2.memory(), 0), Err(HvError::NoSpace));
    assert_eq!(dom0.info().unwrap().domid, 0);
}

#[test]
fn domid_claims() {
    let sim = Sim::start(&[]);
    let a = sim.guest(1);
    match backend::open(&sim.spec(Some(1))) {
        Err(BackendError::ClaimRefused { domid: 1, errno }) => {
            assert_eq!(errno, proto::errno::EADDRINUSE)
        }
        other => panic!("duplicate claim: {:?}", other.map(|_| ())),
    }
    match backend::open(&sim.spec(Some(abi::DOMID_FIRST_RESERVED))) {
        Err(BackendError::ClaimRefused { errno, .. }) => assert_eq!(errno, libc::EINVAL),
        other => panic!("reserved claim: {:?}", other.map(|_| ())),
    }
    // Any free id: the lowest from 1.
    let any = backend::open(&sim.spec(None)).unwrap();
    assert_eq!(any.info().unwrap().domid, 2);
    let sim_any = v4v::backend::sim::SimHypervisor::connect(sim.path(), Some(CLAIM_ANY)).unwrap();
    assert_eq!(sim_any.domid(), 3);
    // The refused claims did not disturb the holder.
    assert_eq!(a.info().unwrap().domid, 1);
    drop(a);
    // Released on disconnect (asynchronously: retry briefly).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match backend::open(&sim.spec(Some(1))) {
            Ok(again) => {
                assert_eq!(again.info().unwrap().domid, 1);
                break;
            }
            Err(e) => assert!(Instant::now() < deadline, "domid 1 not released: {e}"),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_disconnected_guest_is_a_destroyed_domain() {
    let sim = Sim::start(&[]);
    let a = sim.guest(1);
    let b = sim.guest(2);
    let ra = ring(a.as_ref(), 10, DOMID_ANY, 64); // payloads up to 32 bytes
    let partnered = ring(a.as_ref(), 11, 2, 64);
    let _rb = ring(b.as_ref(), 20, DOMID_ANY, 64);

    // dom2 waits on dom1's ring, dom1 on dom2's.
    assert_eq!(send(b.as_ref(), 1, 1, 10, &[1; 32]).unwrap(), 32);
    assert_eq!(
        send(b.as_ref(), 1, 1, 10, &[2; 32]),
        Err(HvError::WouldBlock)
    );
    assert_eq!(send(a.as_ref(), 1, 2, 20, &[3; 32]).unwrap(), 32);
    assert_eq!(
        send(a.as_ref(), 1, 2, 20, &[4; 32]),
        Err(HvError::WouldBlock)
    );
    assert!(a.take_event().unwrap()); // the message from dom2
    drop(b);

    // dom1 is signalled: the ring it waited on went away, and so did its ring for dom2.
    assert!(
        readable(a.event_fd(), 5000),
        "dom1 not signalled on dom2's destruction"
    );
    assert!(a.take_event().unwrap());
    assert_eq!(send(a.as_ref(), 1, 2, 20, b"x"), Err(HvError::Refused));
    assert_eq!(
        a.unregister_ring(partnered.memory(), 0),
        Err(HvError::NotFound)
    );
    let mut ents = [RingDataEnt {
        ring: Addr::new(2, 20),
        ..Default::default()
    }];
    a.notify(Some(&mut ents)).unwrap();
    assert_eq!(ents[0].flags & RING_DATA_F_EXISTS, 0);

    // A new dom2 inherits nothing: not the old one's wait on dom1's ring.
    let b2 = sim.guest(2);
    let mut buf = Vec::new();
    ra.recv(&mut buf).unwrap().unwrap();
    a.notify(None).unwrap();
    assert!(
        !readable(b2.event_fd(), 300),
        "new dom2 woken for the old one's wait"
    );
    assert_eq!(send(b2.as_ref(), 1, 1, 11, b"x"), Err(HvError::Refused));
    assert_eq!(b2.info().unwrap().nr_rings, 0);
}

#[test]
fn sigterm_removes_the_socket_and_ends_the_guests_domains() {
    let mut sim = Sim::start(&["--mode", "660"]);
    let mode = std::fs::metadata(sim.path()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
    let a = sim.guest(1);
    // A second simulator on the same socket refuses to start.
    let second = std::process::Command::new(env!("CARGO_BIN_EXE_v4v-sim"))
        .arg("--socket")
        .arg(sim.path())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(!second.success());
    sim.signal(libc::SIGTERM);
    let status = sim.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status}: {}", sim.log_text());
    assert!(!sim.path().exists(), "socket left behind");
    // The guest sees its event channel close and its calls fail.
    assert!(readable(a.event_fd(), 1000));
    assert!(a.take_event().is_err());
    assert!(matches!(a.info(), Err(HvError::Other(_))));
}

#[test]
fn default_mode_is_0600_and_sigint_stops() {
    let mut sim = Sim::start(&[]);
    let mode = std::fs::metadata(sim.path()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    sim.signal(libc::SIGINT);
    assert!(sim.wait_exit(Duration::from_secs(10)).success());
    assert!(!sim.path().exists());
}

#[test]
fn the_event_descriptor_is_the_guests_own() {
    // The guest's event descriptor is the read end of a pipe whose write end the simulator keeps
    // in an open file description of its own, non-blocking. Whatever the guest does to its end
    // (make it blocking, shrink the pipe to a page, never read it, write into it) cannot make the
    // simulator block or buffer: a full pipe already says "event pending".
    let sim = Sim::start(&[]);
    let a = sim.guest(1);
    let b = sim.guest(2);
    let rb = ring(b.as_ref(), 20, DOMID_ANY, 256);
    let fd = b.event_fd().as_raw_fd();
    // SAFETY: fcntl on a descriptor this process holds.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    let r = unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) };
    assert_eq!(r, 0);
    // SAFETY: as above; the smallest pipe the kernel makes is one page.
    assert_eq!(unsafe { libc::fcntl(fd, libc::F_SETPIPE_SZ, 4096) }, 4096);
    // SAFETY: writing a live buffer to a descriptor this process holds.
    let w = unsafe { libc::write(fd, b"junk".as_ptr().cast(), 4) };
    assert_eq!(w, -1, "the guest's end is the pipe's read end");
    let started = Instant::now();
    for i in 0..6000u32 {
        let mut buf = Vec::new();
        send(a.as_ref(), 1, 2, 20, &i.to_le_bytes()).unwrap();
        rb.recv(&mut buf).unwrap().unwrap();
        assert_eq!(buf, i.to_le_bytes());
    }
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "6000 deliveries took {:?}",
        started.elapsed()
    );
    let mut queued: libc::c_int = 0;
    // SAFETY: FIONREAD into a live int.
    assert_eq!(unsafe { libc::ioctl(fd, libc::FIONREAD, &mut queued) }, 0);
    assert_eq!(
        queued, 4096,
        "the pipe holds exactly a page of pending events"
    );
    // SAFETY: as above, making it non-blocking again, as take_event needs.
    assert_eq!(unsafe { libc::fcntl(fd, libc::F_SETFL, flags) }, 0);
    assert!(readable(b.event_fd(), 1000));
    assert!(b.take_event().unwrap());
    assert!(!b.take_event().unwrap());
    assert_eq!(a.info().unwrap().domid, 1);
}

#[test]
fn the_socket_appears_only_once_it_listens() {
    // A guest started as soon as the socket's name exists must be able to connect: the
    // simulator binds and listens under a private name and only then moves the socket into
    // place. Bound at its name, it refused connections between bind and listen (16 of 1000
    // starts), and v4vd's tests saw a daemon started right after the simulator fail.
    let dir = std::env::temp_dir().join(format!("v4v-sim-appears-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut refused = 0;
    for i in 0..500 {
        let path = dir.join(format!("sim{i}.sock"));
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_v4v-sim"))
            .arg("--socket")
            .arg(&path)
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !path.exists() {
            assert!(Instant::now() < deadline, "no socket");
        }
        match std::os::unix::net::UnixStream::connect(&path) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => refused += 1,
            Err(e) => panic!("connect: {e}"),
        }
        // The private directory the socket was bound in goes once it is moved out.
        let staged = || {
            std::fs::read_dir(&dir)
                .unwrap()
                .filter_map(|e| e.ok())
                .any(|e| e.file_name().to_string_lossy().starts_with('.'))
        };
        while staged() {
            assert!(Instant::now() < deadline, "the private directory stays");
            std::thread::yield_now();
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(
        refused, 0,
        "connections refused right after the socket appeared"
    );
}
