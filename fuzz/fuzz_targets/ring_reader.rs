// SPDX-License-Identifier: MIT OR Apache-2.0
//! The ring reader and writer over hostile ring memory.
//!
//! The input fills a whole ring (header and data area) and then lists operations, with scribbles
//! of arbitrary bytes anywhere in the ring between them (another writer of the guest's memory).
//! Whatever the memory holds, neither side may panic, and each may write only what it owns: the
//! reader the `rx_ptr` word, the writer (the hypervisor's insert) the data area and `tx_ptr`.
//! Every message the reader returns fits the ring, and every `rx_ptr` it stores is a valid one.
#![no_main]

use std::io::IoSlice;

use libfuzzer_sys::fuzz_target;
use v4v::abi::ring_offsets;
use v4v::abi::{self, Addr};
use v4v::ring::{RingReader, RingWriter, max_message_size, ring_bytes};
use v4v::shmem::RingMemory;

const LENS: [u32; 4] = [48, 64, 256, 4096];

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn u32(&mut self) -> Option<u32> {
        let (b, rest) = self.0.split_first_chunk::<4>()?;
        self.0 = rest;
        Some(u32::from_le_bytes(*b))
    }
    fn bytes(&mut self, n: usize) -> &[u8] {
        let (a, b) = self.0.split_at(n.min(self.0.len()));
        self.0 = b;
        a
    }
}

fn snapshot(mem: &RingMemory, size: usize) -> Vec<u8> {
    let mut v = vec![0; size];
    mem.read_bytes(0, &mut v).expect("in bounds");
    v
}

/// Asserts that `after` differs from `before` only inside `allowed` byte ranges.
fn only_changed(before: &[u8], after: &[u8], allowed: &[std::ops::Range<usize>], who: &str) {
    for (i, (a, b)) in before.iter().zip(after).enumerate() {
        if a != b && !allowed.iter().any(|r| r.contains(&i)) {
            panic!("{who} wrote byte {i} it does not own ({a:#x} -> {b:#x})");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let Some(sel) = input.byte() else { return };
    let len = LENS[usize::from(sel) % LENS.len()];
    let size = ring_bytes(len);
    let mem = RingMemory::anonymous(size).expect("memory");
    let init = input.bytes(size);
    mem.write_bytes(0, init).expect("in bounds");
    let reader = RingReader::new(mem.clone(), 0, len).expect("valid ring");
    let writer = RingWriter::new(mem.clone(), 0, len).expect("valid ring");
    let rx_word = ring_offsets::RX_PTR..ring_offsets::RX_PTR + 4;
    let tx_word = ring_offsets::TX_PTR..ring_offsets::TX_PTR + 4;
    let data_area = ring_offsets::DATA..ring_offsets::DATA + len as usize;
    let mut tx = match writer.initial_tx() {
        Ok(t) => t,
        Err(_) => return,
    };
    assert!(
        tx.is_multiple_of(abi::RING_ALIGN) && tx < len,
        "initial tx {tx}"
    );
    let mut payload = Vec::new();
    for _ in 0..64 {
        let Some(op) = input.byte() else { break };
        let before = snapshot(&mem, size);
        match op % 6 {
            0 | 1 => {
                if let Ok(Some(r)) = reader.recv(&mut payload) {
                    assert_eq!(payload.len(), r.len as usize);
                    assert!(r.len <= max_message_size(len), "{} > max for {len}", r.len);
                    let rx = mem.read_u32(ring_offsets::RX_PTR).expect("in bounds");
                    assert!(
                        rx.is_multiple_of(abi::RING_ALIGN) && rx < len,
                        "stored rx {rx}"
                    );
                }
                only_changed(
                    &before,
                    &snapshot(&mem, size),
                    std::slice::from_ref(&rx_word),
                    "reader",
                );
            }
            2 => {
                let _ = reader.peek();
                let _ = reader.available();
                only_changed(&before, &snapshot(&mem, size), &[], "peek");
            }
            3 => {
                let _ = reader.skip();
                only_changed(
                    &before,
                    &snapshot(&mem, size),
                    std::slice::from_ref(&rx_word),
                    "skip",
                );
            }
            4 => {
                let n = input.byte().unwrap_or(0) as usize * 8;
                let body = input.bytes(n).to_vec();
                let (a, b) = body.split_at(body.len() / 2);
                let iov = [IoSlice::new(a), IoSlice::new(b)];
                if let Ok(next) = writer.insert(tx, abi::PROTO_DGRAM, Addr::new(1, 7), &iov) {
                    assert!(
                        next.is_multiple_of(abi::RING_ALIGN) && next < len,
                        "new tx {next}"
                    );
                    tx = next;
                }
                only_changed(
                    &before,
                    &snapshot(&mem, size),
                    &[data_area.clone(), tx_word.clone()],
                    "writer",
                );
            }
            _ => {
                // A scribble: any bytes anywhere in the ring.
                let at = input.u32().unwrap_or(0) as usize % size;
                let n = usize::from(input.byte().unwrap_or(0)) % 17;
                let junk = input.bytes(n.min(size - at)).to_vec();
                mem.write_bytes(at, &junk).expect("in bounds");
            }
        }
    }
});
