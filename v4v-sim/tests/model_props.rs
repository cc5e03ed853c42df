// SPDX-License-Identifier: MIT OR Apache-2.0
//! Property test: random sends from several domains and random consumes by a receiver, through
//! the hypervisor model and the ring reader, against a plain queue per sender. Nothing may be
//! lost, duplicated or reordered per sender, a full ring must push back (EAGAIN, then a wake-up
//! once the receiver consumes and notifies), and no byte outside the ring may change.

use std::collections::VecDeque;
use std::io::IoSlice;

use proptest::prelude::*;
use v4v::abi::{self, Addr, RingId, SendAddr};
use v4v::ring::{RingReader, ring_bytes};
use v4v::shmem::{PAGE_SIZE, RingMemory};
use v4v::{HvError, Hypervisor};
use v4v_sim::Model;

const CANARY: u8 = 0xA5;
const RECEIVER: u16 = 1;
const SENDERS: [u16; 2] = [0, 2];

#[derive(Debug, Clone)]
enum Op {
    Send {
        sender: usize,
        len: usize,
        split: usize,
    },
    Consume {
        count: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..SENDERS.len(), 0usize..300, 1usize..4)
            .prop_map(|(sender, len, split)| Op::Send { sender, len, split }),
        2 => (1usize..5).prop_map(|count| Op::Consume { count }),
    ]
}

fn payload(sender: usize, seq: u32, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| {
            (i as u32)
                .wrapping_mul(31)
                .wrapping_add(seq * 7 + sender as u32) as u8
        })
        .collect()
}

fn check_canaries(mem: &RingMemory, ring_at: usize, len: u32) {
    let mut all = vec![0u8; mem.size()];
    mem.read_bytes(0, &mut all).unwrap();
    let data = ring_at + abi::RING_HEADER_SIZE as usize;
    for (i, b) in all.iter().enumerate() {
        let in_header = (ring_at..data).contains(&i);
        let in_data = (data..data + len as usize).contains(&i);
        if !in_header && !in_data {
            assert_eq!(*b, CANARY, "byte {i} outside the ring changed");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]
    #[test]
    fn model_and_reader_deliver_in_order(
        slots in 3u32..64,
        ops in proptest::collection::vec(op(), 1..160),
    ) {
        let len = slots * 16;
        let model = Model::new();
        let receiver = model.create_domain(RECEIVER).unwrap();
        let senders: Vec<_> = SENDERS.iter().map(|d| model.create_domain(*d).unwrap()).collect();

        let ring_at = PAGE_SIZE;
        let mem = receiver.alloc_ring_memory(ring_at + ring_bytes(len) + PAGE_SIZE).unwrap();
        mem.fill(0, mem.size(), CANARY).unwrap();
        let reader = RingReader::new(mem.clone(), ring_at, len).unwrap();
        reader.init_header(RingId { addr: Addr::new(RECEIVER, 80), partner: abi::DOMID_ANY, pad: 0 }).unwrap();
        receiver.register_ring(&mem, ring_at).unwrap();

        // What each sender has sent and not yet seen delivered, in order.
        let mut in_flight: Vec<VecDeque<Vec<u8>>> = vec![VecDeque::new(); SENDERS.len()];
        // A message refused with EAGAIN, to retry once woken.
        let mut blocked: Vec<Option<Vec<u8>>> = vec![None; SENDERS.len()];
        let mut seq = 0u32;
        let max = len - 32;

        for op in ops {
            match op {
                Op::Send { sender, len: plen, split } => {
                    let s = &senders[sender];
                    let msg = match blocked[sender].take() {
                        Some(m) => {
                            // Only retry when woken: a retry without a wake-up must still fail.
                            if !s.take_event().unwrap() { blocked[sender] = Some(m); continue; }
                            m
                        }
                        None => { seq += 1; payload(sender, seq, plen) }
                    };
                    let cut = msg.len() / split.max(1);
                    let parts: Vec<IoSlice<'_>> = if cut == 0 { vec![IoSlice::new(&msg)] }
                        else { msg.chunks(cut).map(IoSlice::new).collect() };
                    let addr = SendAddr { src: Addr::new(abi::DOMID_SELF, 9), dst: Addr::new(RECEIVER, 80) };
                    match s.sendv(&addr, &parts, abi::PROTO_DGRAM) {
                        Ok(n) => {
                            prop_assert_eq!(n as usize, msg.len());
                            in_flight[sender].push_back(msg);
                        }
                        Err(HvError::MessageTooBig) => prop_assert!(msg.len() > max as usize),
                        Err(HvError::WouldBlock) => {
                            prop_assert!(msg.len() <= max as usize);
                            blocked[sender] = Some(msg);
                        }
                        Err(e) => prop_assert!(false, "unexpected {e}"),
                    }
                }
                Op::Consume { count } => {
                    let mut buf = Vec::new();
                    for _ in 0..count {
                        match reader.recv(&mut buf).unwrap() {
                            None => break,
                            Some(m) => {
                                let who = SENDERS.iter().position(|d| *d == m.source.domain).unwrap();
                                prop_assert_eq!(m.source.port, 9);
                                let expected = in_flight[who].pop_front();
                                prop_assert_eq!(expected.as_deref(), Some(buf.as_slice()));
                            }
                        }
                    }
                    receiver.notify(None).unwrap();
                }
            }
            check_canaries(&mem, ring_at, len);
        }
        // Drain: everything sent arrives, in order per sender.
        let mut buf = Vec::new();
        while let Some(m) = reader.recv(&mut buf).unwrap() {
            let who = SENDERS.iter().position(|d| *d == m.source.domain).unwrap();
            let expected = in_flight[who].pop_front();
            prop_assert_eq!(expected.as_deref(), Some(buf.as_slice()));
        }
        prop_assert!(in_flight.iter().all(|q| q.is_empty()));
        // An empty ring with the receiver's notify wakes every blocked sender.
        receiver.notify(None).unwrap();
        for (i, b) in blocked.iter().enumerate() {
            if b.is_some() {
                prop_assert!(senders[i].take_event().unwrap(), "blocked sender {} not woken", i);
            }
        }
        prop_assert_eq!(model.waiter_count(), 0);
    }
}
