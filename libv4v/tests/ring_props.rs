// SPDX-License-Identifier: MIT OR Apache-2.0
//! Property tests of the ring writer (`RingWriter::insert` and `insert_from`, the hypervisor's
//! side) and reader
//! (`RingReader::recv`, the owner's side) against the plain arithmetic of `docs/abi.md`.
//!
//! Every test keeps a byte-exact shadow of the whole shared memory: the ring sits at a non-zero
//! page offset of a larger `RingMemory`, everything outside it, and every header byte other than
//! the pointers, holds a position-dependent canary, and after every operation the memory must
//! equal the shadow, into which the test itself applied what the operation is allowed to write
//! (the message bytes, `tx_ptr`, `rx_ptr`). So a stray write anywhere, including in the padding
//! after a message or in a slot that still holds an unread message, is caught at once.

use std::collections::VecDeque;
use std::io::IoSlice;

use proptest::prelude::*;
use v4v::abi::{Addr, MessageHeader, ring_offsets};
use v4v::ring::{InsertError, Received, RingError, RingReader, RingWriter, ring_bytes};
use v4v::shmem::{PAGE_SIZE, RingMemory};

// ---------------------------------------------------------------------------------------------
// Plain arithmetic of docs/abi.md, written out independently of v4v::ring.

fn roundup16(x: u64) -> u64 {
    x.div_ceil(16) * 16
}

/// Bytes a message with a `p`-byte payload occupies: its header and its padded payload.
fn slot(p: u64) -> u64 {
    16 + roundup16(p)
}

/// The hypervisor's reading of a guest `rx_ptr`.
fn sanitised(raw: u32, len: u32) -> u32 {
    let r = roundup16(u64::from(raw));
    if r >= u64::from(len) { 0 } else { r as u32 }
}

/// Free bytes from the writer's point of view.
fn free(rx: u32, tx: u32, len: u32) -> u64 {
    if rx == tx {
        u64::from(len)
    } else {
        (u64::from(rx) + u64::from(len) - u64::from(tx)) % u64::from(len)
    }
}

/// What an insert of a `p`-byte payload must do: `Err` with the expected error, or `Ok` with the
/// new tx.
fn predicted_insert(p: u64, free: u64, tx: u32, len: u32) -> Result<u32, InsertError> {
    let max = len - 32;
    if p > u64::from(max) {
        Err(InsertError::NeverFits { len: p, max })
    } else if slot(p) >= free {
        Err(InsertError::NoSpace)
    } else {
        Ok(((u64::from(tx) + slot(p)) % u64::from(len)) as u32)
    }
}

// ---------------------------------------------------------------------------------------------
// Shared memory with a shadow.

/// The canary byte at `i`: varies with the position, so a misplaced copy of canary bytes is seen.
fn canary(i: usize) -> u8 {
    ((i as u32).wrapping_mul(0x9e37_79b1) >> 24) as u8 ^ 0x5a
}

/// Deterministic filler bytes (xorshift), so big payloads cost proptest one `u64`.
fn bytes_from_seed(seed: u64, n: usize) -> Vec<u8> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 24) as u8
        })
        .collect()
}

struct Arena {
    mem: RingMemory,
    base: usize,
    len: u32,
    shadow: Vec<u8>,
}

impl Arena {
    /// A memory with a `len`-byte ring `pages_before` pages in, at least one page after it, and
    /// canaries everywhere (the ring header included).
    fn new(len: u32, pages_before: usize) -> Self {
        let base = pages_before * PAGE_SIZE;
        let mem = RingMemory::anonymous(base + ring_bytes(len) + PAGE_SIZE).unwrap();
        let shadow: Vec<u8> = (0..mem.size()).map(canary).collect();
        mem.write_bytes(0, &shadow).unwrap();
        Arena {
            mem,
            base,
            len,
            shadow,
        }
    }

    fn data(&self, off: u32) -> usize {
        self.base + ring_offsets::DATA + off as usize
    }

    /// Writes a `u32` header field in memory and in the shadow.
    fn set_field(&mut self, field: usize, value: u32) {
        let at = self.base + field;
        self.mem.write_u32(at, value).unwrap();
        self.shadow[at..at + 4].copy_from_slice(&value.to_ne_bytes());
    }

    /// Records in the shadow a header field the code under test is expected to have written.
    fn expect_field(&mut self, field: usize, value: u32) {
        let at = self.base + field;
        self.shadow[at..at + 4].copy_from_slice(&value.to_ne_bytes());
    }

    /// Records in the shadow the bytes of a message inserted at `tx`: its header and payload,
    /// wrapping at the end of the data area; the padding after it stays as it was.
    fn expect_message(&mut self, tx: u32, message_type: u32, source: Addr, payload: &[u8]) {
        let mut bytes = Vec::with_capacity(16 + payload.len());
        bytes.extend_from_slice(&(payload.len() as u32 + 16).to_ne_bytes());
        bytes.extend_from_slice(&message_type.to_ne_bytes());
        bytes.extend_from_slice(&source.port.to_ne_bytes());
        bytes.extend_from_slice(&source.domain.to_ne_bytes());
        bytes.extend_from_slice(&source.pad.to_ne_bytes());
        bytes.extend_from_slice(payload);
        for (i, b) in bytes.into_iter().enumerate() {
            let off = ((tx as usize + i) % self.len as usize) as u32;
            let at = self.data(off);
            self.shadow[at] = b;
        }
    }

    /// The shadow's copy of `n` data-area bytes from `off`, wrapping.
    fn shadow_data(&self, off: u32, n: usize) -> Vec<u8> {
        (0..n)
            .map(|i| self.shadow[self.data(((off as usize + i) % self.len as usize) as u32)])
            .collect()
    }

    fn where_is(&self, i: usize) -> String {
        let data = self.base + ring_offsets::DATA;
        if i < self.base {
            format!("{} bytes before the ring", self.base - i)
        } else if i < data {
            format!("ring header byte {}", i - self.base)
        } else if i < data + self.len as usize {
            format!("data area byte {}", i - data)
        } else {
            format!("{} bytes after the data area", i - data - self.len as usize)
        }
    }

    /// The whole memory must equal the shadow.
    fn check(&self, after: &str) -> Result<(), TestCaseError> {
        let mut now = vec![0u8; self.mem.size()];
        self.mem.read_bytes(0, &mut now).unwrap();
        if let Some(i) = (0..now.len()).find(|&i| now[i] != self.shadow[i]) {
            return Err(TestCaseError::fail(format!(
                "after {after}: byte {i} ({}) is {:#04x}, expected {:#04x}",
                self.where_is(i),
                now[i],
                self.shadow[i]
            )));
        }
        Ok(())
    }
}

/// Splits `payload` into up to four slices at the given cut points.
fn split<'a>(payload: &'a [u8], cuts: &[u32]) -> Vec<IoSlice<'a>> {
    let mut at: Vec<usize> = cuts
        .iter()
        .map(|&c| c as usize % (payload.len() + 1))
        .collect();
    at.sort_unstable();
    let mut slices = Vec::new();
    let mut prev = 0;
    for c in at.into_iter().chain([payload.len()]) {
        slices.push(IoSlice::new(&payload[prev..c]));
        prev = c;
    }
    slices
}

// ---------------------------------------------------------------------------------------------
// Strategies.

/// Data-area lengths: 48 ..= 8192, multiples of 16, with small rings (which wrap and fill often)
/// as likely as the rest.
fn ring_len() -> impl Strategy<Value = u32> {
    prop_oneof![
        (3u32..=16).prop_map(|k| k * 16),
        (3u32..=512).prop_map(|k| k * 16)
    ]
}

/// A payload size, resolved against the ring length: anywhere in `0..len`, near the largest
/// message (`len - 32`, the boundary of NeverFits), or small.
#[derive(Debug, Clone, Copy)]
enum Size {
    Any(u32),
    NearMax(u8),
    Small(u8),
}

impl Size {
    fn resolve(self, len: u32) -> usize {
        (match self {
            Size::Any(x) => x % len,
            Size::NearMax(d) => len - 1 - u32::from(d) % 40,
            Size::Small(s) => u32::from(s) % 48,
        }) as usize
    }
}

fn size() -> impl Strategy<Value = Size> {
    prop_oneof![
        2 => any::<u32>().prop_map(Size::Any),
        1 => any::<u8>().prop_map(Size::NearMax),
        2 => any::<u8>().prop_map(Size::Small),
    ]
}

#[derive(Debug, Clone)]
struct Send {
    size: Size,
    cuts: Vec<u32>,
    seed: u64,
    message_type: u32,
    domain: u16,
    port: u32,
    /// Through `insert_from`: the iovs lie in another shared memory, this far apart.
    from_shared: Option<u8>,
}

fn send() -> impl Strategy<Value = Send> {
    (
        size(),
        prop::collection::vec(any::<u32>(), 0..=3),
        any::<u64>(),
        any::<u32>(),
        any::<u16>(),
        any::<u32>(),
        prop::option::of(any::<u8>()),
    )
        .prop_map(
            |(size, cuts, seed, message_type, domain, port, from_shared)| Send {
                size,
                cuts,
                seed,
                message_type,
                domain,
                port,
                from_shared,
            },
        )
}

/// `insert_from` of the iovs `iov`, each copied first into a fresh shared memory `gap` bytes
/// after the one before (at a non-zero offset), so that the ranges point at the same bytes.
fn insert_from_shared(
    writer: &RingWriter,
    tx: u32,
    message_type: u32,
    source: Addr,
    iov: &[IoSlice<'_>],
    gap: u8,
) -> Result<u32, InsertError> {
    let total: usize = iov.iter().map(|s| s.len() + usize::from(gap)).sum();
    let src = RingMemory::anonymous(v4v::shmem::page_round(total + 1)).unwrap();
    let mut ranges = Vec::new();
    let mut at = 1 + usize::from(gap) % 7;
    for s in iov {
        src.copy_in(at, s).unwrap();
        ranges.push((at, s.len()));
        at += s.len() + usize::from(gap);
    }
    // Past the end of the source: refused before anything is written (the shadow checks that).
    let beyond = [(src.size() - 1, 2)];
    if !matches!(
        writer.insert_from(tx, message_type, source, &src, &beyond),
        Err(InsertError::Ring(_))
    ) {
        panic!("a range past the end of the source was taken");
    }
    writer.insert_from(tx, message_type, source, &src, &ranges)
}

#[derive(Debug, Clone)]
enum Op {
    Send(Send),
    Consume(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![3 => send().prop_map(Op::Send), 2 => (1u8..=3).prop_map(Op::Consume)]
}

/// A pointer value a hostile party might write: anything, a valid offset, an in-range but
/// unaligned one, or one at or just past the end.
fn hostile_ptr(len: u32) -> impl Strategy<Value = u32> {
    prop_oneof![
        any::<u32>(),
        any::<u32>().prop_map(move |x| x % (len / 16) * 16),
        any::<u32>().prop_map(move |x| x % len),
        (0u32..=32).prop_map(move |d| (len - 16).wrapping_add(d)),
        Just(u32::MAX),
        Just(u32::MAX - 14),
    ]
}

/// The start offset of a fresh ring (rx = tx), aligned.
fn start(len: u32, raw: u32) -> u32 {
    raw % (len / 16) * 16
}

// ---------------------------------------------------------------------------------------------
// a. Writer and reader against a queue.

#[derive(Debug)]
struct Sent {
    message_type: u32,
    source: Addr,
    payload: Vec<u8>,
}

fn run_model(
    len: u32,
    pages_before: usize,
    start_raw: u32,
    ops: &[Op],
) -> Result<(), TestCaseError> {
    let mut a = Arena::new(len, pages_before);
    let start = start(len, start_raw);
    a.set_field(ring_offsets::RX_PTR, start);
    a.set_field(ring_offsets::TX_PTR, start);
    let writer = RingWriter::new(a.mem.clone(), a.base, len).unwrap();
    let reader = RingReader::new(a.mem.clone(), a.base, len).unwrap();
    prop_assert_eq!(writer.initial_tx().unwrap(), start);
    a.check("setup")?;

    let mut queue: VecDeque<Sent> = VecDeque::new();
    let mut tx = start;
    let mut rx = start;
    let mut buf = Vec::new();
    for (step, op) in ops.iter().enumerate() {
        let used: u64 = queue.iter().map(|m| slot(m.payload.len() as u64)).sum();
        let free = u64::from(len) - used;
        match op {
            Op::Send(s) => {
                let payload = bytes_from_seed(s.seed, s.size.resolve(len));
                let source = Addr::new(s.domain, s.port);
                prop_assert_eq!(
                    writer.payload_space(tx).unwrap(),
                    free.saturating_sub(32) as u32,
                    "payload space at step {}",
                    step
                );
                let iov = split(&payload, &s.cuts);
                let got = match s.from_shared {
                    None => writer.insert(tx, s.message_type, source, &iov),
                    Some(gap) => insert_from_shared(&writer, tx, s.message_type, source, &iov, gap),
                };
                let want = predicted_insert(payload.len() as u64, free, tx, len);
                prop_assert_eq!(
                    got,
                    want,
                    "step {}: insert of {} bytes in {} iovs at tx {} with {} free",
                    step,
                    payload.len(),
                    iov.len(),
                    tx,
                    free
                );
                if let Ok(next) = got {
                    a.expect_message(tx, s.message_type, source, &payload);
                    a.expect_field(ring_offsets::TX_PTR, next);
                    tx = next;
                    queue.push_back(Sent {
                        message_type: s.message_type,
                        source,
                        payload,
                    });
                }
                a.check(&format!("step {step}: insert"))?;
            }
            Op::Consume(n) => {
                for _ in 0..*n {
                    prop_assert_eq!(reader.available().unwrap() as u64, used_after(&queue));
                    let got = reader.recv(&mut buf).unwrap();
                    match queue.pop_front() {
                        None => prop_assert_eq!(got, None, "step {}: empty ring", step),
                        Some(m) => {
                            let want = Received {
                                source: m.source,
                                message_type: m.message_type,
                                len: m.payload.len() as u32,
                            };
                            prop_assert_eq!(got, Some(want), "step {}", step);
                            prop_assert!(buf == m.payload, "step {}: payload differs", step);
                            rx = ((u64::from(rx) + slot(m.payload.len() as u64)) % u64::from(len))
                                as u32;
                            a.expect_field(ring_offsets::RX_PTR, rx);
                        }
                    }
                    a.check(&format!("step {step}: recv"))?;
                }
            }
        }
    }
    // Everything still queued comes out, in order.
    while let Some(m) = queue.pop_front() {
        let got = reader.recv(&mut buf).unwrap().map(|r| r.len);
        prop_assert_eq!(got, Some(m.payload.len() as u32));
        prop_assert!(buf == m.payload, "final drain: payload differs");
        rx = ((u64::from(rx) + slot(m.payload.len() as u64)) % u64::from(len)) as u32;
        a.expect_field(ring_offsets::RX_PTR, rx);
    }
    prop_assert_eq!(reader.recv(&mut buf).unwrap(), None);
    prop_assert_eq!(rx, tx);
    a.check("final drain")
}

fn used_after(queue: &VecDeque<Sent>) -> u64 {
    queue.iter().map(|m| slot(m.payload.len() as u64)).sum()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn writer_and_reader_match_a_queue(
        len in ring_len(),
        pages_before in 1usize..=2,
        start_raw in any::<u32>(),
        ops in prop::collection::vec(op(), 1..80),
    ) {
        run_model(len, pages_before, start_raw, &ops)?;
    }
}

/// The properties above can fail: an insert that writes one byte too many, or a reader that
/// writes anything but rx_ptr, is caught by the shadow.
#[test]
fn shadow_check_catches_a_stray_write() {
    let mut a = Arena::new(64, 1);
    a.set_field(ring_offsets::RX_PTR, 0);
    a.set_field(ring_offsets::TX_PTR, 0);
    a.check("setup").unwrap();
    let writer = RingWriter::new(a.mem.clone(), a.base, 64).unwrap();
    let tx = writer
        .insert(0, 7, Addr::new(1, 2), &[IoSlice::new(b"abc")])
        .unwrap();
    // The message is not yet recorded in the shadow: the check must see its header.
    a.expect_field(ring_offsets::TX_PTR, tx);
    let err = a.check("insert").unwrap_err().to_string();
    assert!(err.contains("data area byte 0"), "{err}");
    a.expect_message(0, 7, Addr::new(1, 2), b"abc");
    a.check("insert").unwrap();
    // The padding after "abc" must stay as it was.
    a.mem.write_bytes(a.data(19), &[0]).unwrap();
    let err = a.check("scribble").unwrap_err().to_string();
    assert!(err.contains("data area byte 19"), "{err}");
    a.mem
        .write_bytes(a.data(19), &[a.shadow[a.data(19)]])
        .unwrap();
    // One byte past the data area.
    a.mem
        .write_bytes(a.data(64), &[!a.shadow[a.data(64)]])
        .unwrap();
    let err = a.check("scribble").unwrap_err().to_string();
    assert!(err.contains("0 bytes after the data area"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// b. A reader facing hostile ring contents.

/// A message header planted at a 16-aligned slot, with a length that is often plausible.
#[derive(Debug, Clone)]
struct Plant {
    slot: u32,
    len: u32,
    message_type: u32,
}

fn plant() -> impl Strategy<Value = Plant> {
    (
        any::<u32>(),
        prop_oneof![0u32..=64, 0u32..=8300, any::<u32>()],
        any::<u32>(),
    )
        .prop_map(|(slot, len, message_type)| Plant {
            slot,
            len,
            message_type,
        })
}

/// A hostile ring for the reader: arbitrary bytes, headers planted at random slots, a chain of
/// headers from rx (so that some messages parse), and arbitrary pointers.
#[derive(Debug, Clone)]
struct HostileRing {
    len: u32,
    seed: u64,
    plants: Vec<Plant>,
    chain: Vec<(u32, u32)>,
    rx_raw: u32,
    /// `None`: tx_ptr is where the chain ends.
    tx_raw: Option<u32>,
}

/// Pointers for the reader: mostly valid, so that the message checks are reached too.
fn reader_ptr(len: u32) -> impl Strategy<Value = u32> {
    prop_oneof![3 => any::<u32>().prop_map(move |x| x % (len / 16) * 16), 1 => hostile_ptr(len)]
}

fn hostile_ring() -> impl Strategy<Value = HostileRing> {
    prop_oneof![3 => (3u32..=64).prop_map(|k| k * 16), 1 => (3u32..=512).prop_map(|k| k * 16)]
        .prop_flat_map(|len| {
            let chain_len = prop_oneof![6 => 16u32..=96, 2 => 0u32..=len + 32, 1 => any::<u32>()];
            (
                Just(len),
                any::<u64>(),
                prop::collection::vec(plant(), 0..8),
                prop::collection::vec((chain_len, any::<u32>()), 0..8),
                reader_ptr(len),
                prop_oneof![1 => Just(None), 2 => reader_ptr(len).prop_map(Some)],
            )
        })
        .prop_map(|(len, seed, plants, chain, rx_raw, tx_raw)| HostileRing {
            len,
            seed,
            plants,
            chain,
            rx_raw,
            tx_raw,
        })
}

/// Writes a message header at data offset `off`, in memory and in the shadow.
fn plant_header(a: &mut Arena, off: u32, len: u32, message_type: u32) {
    let h = MessageHeader {
        len,
        message_type,
        source: Addr::new(3, 4),
    };
    a.mem.write_obj(a.data(off), &h).unwrap();
    let at = a.data(off);
    let mut raw = [0u8; 16];
    a.mem.read_bytes(at, &mut raw).unwrap();
    a.shadow[at..at + 16].copy_from_slice(&raw);
}

fn run_hostile_reader(h: &HostileRing) -> Result<(), TestCaseError> {
    let len = h.len;
    let mut a = Arena::new(len, 1);
    let data = bytes_from_seed(h.seed, len as usize);
    let at = a.data(0);
    a.mem.write_bytes(at, &data).unwrap();
    a.shadow[at..at + len as usize].copy_from_slice(&data);
    for p in &h.plants {
        plant_header(&mut a, p.slot % (len / 16) * 16, p.len, p.message_type);
    }
    let mut end = sanitised(h.rx_raw, len);
    for &(mlen, message_type) in &h.chain {
        plant_header(&mut a, end, mlen, message_type);
        end = ((u64::from(end) + roundup16(u64::from(mlen.max(16)))) % u64::from(len)) as u32;
    }
    let (rx_raw, tx_raw) = (h.rx_raw, h.tx_raw.unwrap_or(end));
    a.set_field(ring_offsets::RX_PTR, rx_raw);
    a.set_field(ring_offsets::TX_PTR, tx_raw);
    let reader = RingReader::new(a.mem.clone(), a.base, len).unwrap();
    let ok_ptr = |p: u32| p.is_multiple_of(16) && p < len;

    let mut buf = vec![0xee; 5];
    // Each successful recv consumes at least 16 of the at most len - 16 available bytes.
    let bound = len / 16 + 1;
    let mut rx = rx_raw;
    for step in 0..=bound {
        prop_assert!(
            step < bound,
            "the reader did not stop after {} messages",
            bound
        );
        let peeked = reader.peek();
        let got = reader.recv(&mut buf);
        prop_assert_eq!(peeked, got, "peek and recv disagree");
        match got {
            Err(e) => {
                // The error is the right one for what the ring holds.
                if !ok_ptr(tx_raw) || !ok_ptr(rx) {
                    let bad_tx = RingError::BadTx { tx: tx_raw, len };
                    let bad_rx = RingError::BadRx { rx, len };
                    prop_assert!(
                        (!ok_ptr(tx_raw) && e == bad_tx) || (!ok_ptr(rx) && e == bad_rx),
                        "bad pointers rx {} tx {} gave {:?}",
                        rx,
                        tx_raw,
                        e
                    );
                } else {
                    let avail = (tx_raw + len - rx) % len;
                    let hlen = u32::from_ne_bytes(a.shadow_data(rx, 4).try_into().unwrap());
                    prop_assert!(
                        e == RingError::ShortMessage { len: hlen } && hlen < 16
                            || e == RingError::Overrun { len: hlen, avail } && hlen > avail,
                        "header len {} with {} available gave {:?}",
                        hlen,
                        avail,
                        e
                    );
                }
                a.check("a failed recv")?;
                break;
            }
            Ok(None) => {
                prop_assert!(
                    ok_ptr(rx) && ok_ptr(tx_raw) && rx == tx_raw,
                    "None with rx {} tx {}",
                    rx,
                    tx_raw
                );
                a.check("recv of an empty ring")?;
                break;
            }
            Ok(Some(m)) => {
                prop_assert!(ok_ptr(rx) && ok_ptr(tx_raw));
                let avail = (tx_raw + len - rx) % len;
                prop_assert!(
                    m.len + 16 <= avail,
                    "message of {} bytes with {} available",
                    m.len,
                    avail
                );
                let hdr = a.shadow_data(rx, 16);
                prop_assert_eq!(
                    m.len + 16,
                    u32::from_ne_bytes(hdr[0..4].try_into().unwrap())
                );
                prop_assert_eq!(
                    m.message_type,
                    u32::from_ne_bytes(hdr[4..8].try_into().unwrap())
                );
                prop_assert_eq!(
                    m.source.port,
                    u32::from_ne_bytes(hdr[8..12].try_into().unwrap())
                );
                prop_assert_eq!(
                    m.source.domain,
                    u16::from_ne_bytes(hdr[12..14].try_into().unwrap())
                );
                prop_assert_eq!(buf.len(), m.len as usize);
                prop_assert!(
                    buf == a.shadow_data((rx + 16) % len, m.len as usize),
                    "wrong payload bytes"
                );
                rx = ((u64::from(rx) + slot(u64::from(m.len))) % u64::from(len)) as u32;
                a.expect_field(ring_offsets::RX_PTR, rx);
                a.check("recv")?;
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn reader_survives_hostile_rings(h in hostile_ring()) {
        run_hostile_reader(&h)?;
    }
}

// ---------------------------------------------------------------------------------------------
// c. A writer facing a hostile rx_ptr.

fn hostile_writer_case() -> impl Strategy<Value = (u32, usize, u32, Vec<(u32, Send)>)> {
    ring_len().prop_flat_map(|len| {
        (
            Just(len),
            1usize..=2,
            any::<u32>(),
            prop::collection::vec((hostile_ptr(len), send()), 1..40),
        )
    })
}

fn run_hostile_writer(
    len: u32,
    pages_before: usize,
    start_raw: u32,
    steps: &[(u32, Send)],
) -> Result<(), TestCaseError> {
    let mut a = Arena::new(len, pages_before);
    let mut tx = start(len, start_raw);
    a.set_field(ring_offsets::TX_PTR, tx);
    let writer = RingWriter::new(a.mem.clone(), a.base, len).unwrap();
    for (step, (rx_raw, s)) in steps.iter().enumerate() {
        a.set_field(ring_offsets::RX_PTR, *rx_raw);
        let rx = sanitised(*rx_raw, len);
        prop_assert_eq!(writer.rx().unwrap(), rx);
        let payload = bytes_from_seed(s.seed, s.size.resolve(len));
        let source = Addr::new(s.domain, s.port);
        let free = free(rx, tx, len);
        let got = writer.insert(tx, s.message_type, source, &split(&payload, &s.cuts));
        let want = predicted_insert(payload.len() as u64, free, tx, len);
        prop_assert_eq!(
            got,
            want,
            "step {}: rx_ptr {:#x} (sanitised {}), tx {}",
            step,
            rx_raw,
            rx,
            tx
        );
        if let Ok(next) = got {
            a.expect_message(tx, s.message_type, source, &payload);
            a.expect_field(ring_offsets::TX_PTR, next);
            tx = next;
        }
        a.check(&format!("step {step}: insert with rx_ptr {rx_raw:#x}"))?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn writer_survives_hostile_rx((len, pages_before, start_raw, steps) in hostile_writer_case()) {
        run_hostile_writer(len, pages_before, start_raw, &steps)?;
    }

    /// Registration: the guest's tx_ptr is kept when valid, else the sanitised rx_ptr is used.
    #[test]
    fn initial_tx_is_sanitised(
        (len, rx_raw, tx_raw) in ring_len()
            .prop_flat_map(|len| (Just(len), hostile_ptr(len), hostile_ptr(len)))
    ) {
        let mut a = Arena::new(len, 1);
        a.set_field(ring_offsets::RX_PTR, rx_raw);
        a.set_field(ring_offsets::TX_PTR, tx_raw);
        let writer = RingWriter::new(a.mem.clone(), a.base, len).unwrap();
        let tx_valid = tx_raw.is_multiple_of(16) && tx_raw < len;
        let want = if tx_valid { tx_raw } else { sanitised(rx_raw, len) };
        prop_assert_eq!(writer.initial_tx().unwrap(), want);
        a.check("initial_tx")?;
    }
}
