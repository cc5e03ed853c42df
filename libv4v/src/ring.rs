// SPDX-License-Identifier: MIT OR Apache-2.0
//! The ring: its arithmetic, the owner's reader, and the hypervisor's insert.
//!
//! A ring is a 64-byte [`RingHeader`] followed by a data area of `len` bytes, in a
//! [`RingMemory`]. The hypervisor is the only writer of messages and of `tx_ptr`; the owner is the
//! only writer of `rx_ptr`. Both sides treat what the other wrote as untrusted:
//!
//! - [`RingReader`] (the owner) checks every pointer and header length it reads, so a corrupt ring
//!   is a [`RingError`], never a panic, an out-of-bounds access or an endless loop.
//! - [`RingWriter`] (the hypervisor model) sanitises `rx_ptr` and keeps its own `tx`, so nothing a
//!   guest writes can make it write outside the data area. The C hypervisor implements the same
//!   algorithm; `docs/abi.md` is the specification both follow.
//!
//! This module owns the ring layout and nothing else: it never calls the hypervisor.

use std::io::IoSlice;

use thiserror::Error;

use crate::abi::{
    self, Addr, MessageHeader, RING_MAGIC, RingHeader, RingId, ring_offsets, roundup16,
};
use crate::shmem::{PAGE_SIZE, RingMemory, ShmemError};

const HDR: u32 = abi::MESSAGE_HEADER_SIZE;

/// What is wrong with a ring.
#[derive(Debug, Error, PartialEq, Eq, Clone, Copy)]
pub enum RingError {
    #[error("ring memory: {0}")]
    Memory(#[from] ShmemError),
    #[error("ring length {len} is not a multiple of 16 in 48..=16 MiB")]
    BadLength { len: u32 },
    #[error("ring at offset {base} is not page aligned")]
    Misplaced { base: usize },
    #[error("corrupt ring: tx_ptr {tx} is not a 16-aligned offset below {len}")]
    BadTx { tx: u32, len: u32 },
    #[error("corrupt ring: rx_ptr {rx} is not a 16-aligned offset below {len}")]
    BadRx { rx: u32, len: u32 },
    #[error("corrupt ring: message length {len} is shorter than its 16-byte header")]
    ShortMessage { len: u32 },
    #[error("corrupt ring: message of {len} bytes claims more than the {avail} bytes available")]
    Overrun { len: u32, avail: u32 },
    #[error("bytes {from}..{end} are not in the {len}-byte message at the head of the ring")]
    OutsideMessage { from: u64, end: u64, len: u32 },
    #[error("the ring was read since its head was taken (rx_ptr {rx}, the head was at {head})")]
    StaleHead { rx: u32, head: u32 },
}

/// Whether `len` is a valid data-area length.
pub fn valid_len(len: u32) -> bool {
    len.is_multiple_of(abi::RING_ALIGN) && (abi::MIN_RING_LEN..=abi::MAX_RING_LEN).contains(&len)
}

/// Bytes of memory a ring with a `len`-byte data area occupies (header included).
pub fn ring_bytes(len: u32) -> usize {
    abi::RING_HEADER_SIZE as usize + len as usize
}

/// The hypervisor's reading of a guest-written `rx_ptr`: rounded up, and 0 when out of range.
pub fn sanitize_rx(raw: u32, len: u32) -> u32 {
    let r = roundup16(u64::from(raw));
    if r >= u64::from(len) { 0 } else { r as u32 }
}

/// Free bytes between `tx` and `rx` (both valid offsets): the whole ring when empty.
pub fn free_bytes(rx: u32, tx: u32, len: u32) -> u32 {
    if rx == tx {
        len
    } else {
        ((u64::from(rx) + u64::from(len) - u64::from(tx)) % u64::from(len)) as u32
    }
}

/// Bytes waiting to be read between `rx` and `tx` (both valid offsets).
pub fn used_bytes(rx: u32, tx: u32, len: u32) -> u32 {
    ((u64::from(tx) + u64::from(len) - u64::from(rx)) % u64::from(len)) as u32
}

/// The largest payload that fits now: the free bytes less a message header and the free slot.
pub fn payload_space(rx: u32, tx: u32, len: u32) -> u32 {
    free_bytes(rx, tx, len).saturating_sub(2 * HDR)
}

/// Whether a `payload`-byte message would be accepted now: the insert rule, which keeps one
/// 16-byte slot free. (With exactly one slot free not even an empty message fits, although
/// [`payload_space`] is 0 then, not negative.)
pub fn fits_now(rx: u32, tx: u32, len: u32, payload: u64) -> bool {
    message_slot(payload) < u64::from(free_bytes(rx, tx, len))
}

/// The largest payload a ring of this length can ever hold.
pub fn max_message_size(len: u32) -> u32 {
    len.saturating_sub(2 * HDR)
}

/// Bytes a message with a `payload`-byte payload occupies in a ring.
pub fn message_slot(payload: u64) -> u64 {
    u64::from(HDR) + roundup16(payload)
}

/// Where a ring sits: a memory, the offset of its header, and its data-area length. The length is
/// the owner's (or the hypervisor's) own copy, never re-read from shared memory.
#[derive(Debug, Clone)]
struct Place {
    mem: RingMemory,
    base: usize,
    len: u32,
}

impl Place {
    fn new(mem: RingMemory, base: usize, len: u32) -> Result<Self, RingError> {
        if !valid_len(len) {
            return Err(RingError::BadLength { len });
        }
        if !base.is_multiple_of(PAGE_SIZE) {
            return Err(RingError::Misplaced { base });
        }
        let end = base.checked_add(ring_bytes(len));
        if end.is_none_or(|e| e > mem.size()) {
            return Err(ShmemError::OutOfBounds {
                offset: base,
                len: ring_bytes(len),
                size: mem.size(),
            }
            .into());
        }
        Ok(Place { mem, base, len })
    }

    fn data(&self, off: u32) -> usize {
        self.base + ring_offsets::DATA + off as usize
    }

    /// Copies `out.len()` bytes starting at data offset `off`, wrapping at the end once.
    fn read_wrapping(&self, off: u32, out: &mut [u8]) -> Result<(), RingError> {
        let first = out.len().min((self.len - off) as usize);
        let (a, b) = out.split_at_mut(first);
        self.mem.copy_out(self.data(off), a)?;
        self.mem.copy_out(self.data(0), b)?;
        Ok(())
    }

    /// [`Place::write_wrapping`] of `len` bytes of `src` at `src_offset`.
    fn write_wrapping_from(
        &self,
        off: u32,
        src: &RingMemory,
        src_offset: usize,
        len: usize,
    ) -> Result<u32, RingError> {
        let first = len.min((self.len - off) as usize);
        src.copy_to(src_offset, &self.mem, self.data(off), first)?;
        if first == len {
            Ok(off + first as u32)
        } else {
            src.copy_to(src_offset + first, &self.mem, self.data(0), len - first)?;
            Ok((len - first) as u32)
        }
    }

    fn write_wrapping(&self, off: u32, data: &[u8]) -> Result<u32, RingError> {
        let first = data.len().min((self.len - off) as usize);
        let (a, b) = data.split_at(first);
        self.mem.copy_in(self.data(off), a)?;
        if b.is_empty() {
            Ok(off + first as u32)
        } else {
            self.mem.copy_in(self.data(0), b)?;
            Ok(b.len() as u32)
        }
    }
}

/// A message taken from a ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    pub source: Addr,
    pub message_type: u32,
    /// Payload bytes (the header's `len` less 16).
    pub len: u32,
}

/// The message at the head of a ring, checked, not consumed yet ([`RingReader::head`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub msg: Received,
    /// Where its header is (the reader's `rx_ptr` when it was taken).
    rx: u32,
}

/// The owner's side of a ring.
#[derive(Debug, Clone)]
pub struct RingReader {
    place: Place,
}

impl RingReader {
    /// A reader for the ring whose header is at `base` in `mem`, with a `len`-byte data area.
    pub fn new(mem: RingMemory, base: usize, len: u32) -> Result<Self, RingError> {
        Ok(RingReader {
            place: Place::new(mem, base, len)?,
        })
    }

    pub fn memory(&self) -> &RingMemory {
        &self.place.mem
    }

    pub fn base(&self) -> usize {
        self.place.base
    }

    /// The data area's length (the ABI's `len`), not a count of messages.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> u32 {
        self.place.len
    }

    /// Writes a fresh header (magic, id, length, both pointers 0) before registration.
    pub fn init_header(&self, id: RingId) -> Result<(), RingError> {
        let h = RingHeader {
            magic: RING_MAGIC,
            id,
            len: self.place.len,
            ..Default::default()
        };
        self.place.mem.write_obj(self.place.base, &h)?;
        Ok(())
    }

    /// Writes `id` into the header and nothing else: the pointers, and so what the ring holds,
    /// stay. For registering the same ring again as another domain (after a restore).
    pub fn rewrite_id(&self, id: RingId) -> Result<(), RingError> {
        self.place
            .mem
            .write_obj(self.place.base + ring_offsets::ID, &id)?;
        Ok(())
    }

    /// The ring id as it stands in the header (the hypervisor fills in the domain).
    pub fn id(&self) -> Result<RingId, RingError> {
        Ok(self
            .place
            .mem
            .read_obj(self.place.base + ring_offsets::ID)?)
    }

    fn check_ptr(&self, p: u32) -> bool {
        p.is_multiple_of(abi::RING_ALIGN) && p < self.place.len
    }

    /// `tx_ptr`, read with acquire ordering so the message bytes before it are visible.
    pub fn tx(&self) -> Result<u32, RingError> {
        let tx = self
            .place
            .mem
            .load_acquire_u32(self.place.base + ring_offsets::TX_PTR)?;
        if !self.check_ptr(tx) {
            return Err(RingError::BadTx {
                tx,
                len: self.place.len,
            });
        }
        Ok(tx)
    }

    /// `rx_ptr`, checked: even the owner's own pointer may have been scribbled on.
    pub fn rx(&self) -> Result<u32, RingError> {
        let rx = self
            .place
            .mem
            .read_u32(self.place.base + ring_offsets::RX_PTR)?;
        if !self.check_ptr(rx) {
            return Err(RingError::BadRx {
                rx,
                len: self.place.len,
            });
        }
        Ok(rx)
    }

    /// Bytes of messages waiting to be read.
    pub fn available(&self) -> Result<u32, RingError> {
        let tx = self.tx()?;
        Ok(used_bytes(self.rx()?, tx, self.place.len))
    }

    pub fn is_empty(&self) -> Result<bool, RingError> {
        Ok(self.available()? == 0)
    }

    /// The next message's header, checked against what is available, without consuming it.
    pub fn peek(&self) -> Result<Option<Received>, RingError> {
        Ok(self.peek_at()?.map(|(r, _)| r))
    }

    fn peek_at(&self) -> Result<Option<(Received, u32)>, RingError> {
        let tx = self.tx()?;
        let rx = self.rx()?;
        let avail = used_bytes(rx, tx, self.place.len);
        if avail == 0 {
            return Ok(None);
        }
        if avail < HDR {
            return Err(RingError::Overrun { len: HDR, avail });
        }
        // rx is 16-aligned and len a multiple of 16, so the header never straddles the end.
        let h: MessageHeader = self.place.mem.read_obj(self.place.data(rx))?;
        if h.len < HDR {
            return Err(RingError::ShortMessage { len: h.len });
        }
        if u64::from(h.len) > u64::from(avail) {
            return Err(RingError::Overrun { len: h.len, avail });
        }
        let r = Received {
            source: h.source,
            message_type: h.message_type,
            len: h.len - HDR,
        };
        Ok(Some((r, rx)))
    }

    /// Takes the next message, replacing the contents of `payload` with its bytes.
    pub fn recv(&self, payload: &mut Vec<u8>) -> Result<Option<Received>, RingError> {
        let Some((r, rx)) = self.peek_at()? else {
            return Ok(None);
        };
        // Every byte is overwritten below: only growth is zero-filled, so a reused buffer
        // costs no memset per message.
        let n = r.len as usize;
        if payload.len() > n {
            payload.truncate(n);
        } else {
            payload.resize(n, 0);
        }
        let start = (rx + HDR) % self.place.len;
        self.place.read_wrapping(start, payload)?;
        self.advance(rx, r.len)?;
        Ok(Some(r))
    }

    /// The next message, checked against what is available as [`RingReader::recv`] checks it,
    /// without consuming it: its payload can then be read in parts ([`RingReader::read_head`])
    /// or sent on a socket straight from the ring ([`RingReader::send_head`]) before
    /// [`RingReader::consume`] takes it. The header is copied out once: where the payload lies
    /// and how long it is are ours from then on; the writer can change only its bytes.
    pub fn head(&self) -> Result<Option<Head>, RingError> {
        Ok(self.peek_at()?.map(|(msg, rx)| Head { msg, rx }))
    }

    /// Where payload bytes `from..from + len` of `h` lie: at most two runs (the payload wraps
    /// at the end of the data area once), as (offset in the memory, length).
    fn runs(&self, h: &Head, from: u32, len: u32) -> Result<[(usize, usize); 2], RingError> {
        let end = u64::from(from) + u64::from(len);
        if end > u64::from(h.msg.len) {
            return Err(RingError::OutsideMessage {
                from: from.into(),
                end,
                len: h.msg.len,
            });
        }
        let ring = u64::from(self.place.len);
        let start = ((u64::from(h.rx) + u64::from(HDR) + u64::from(from)) % ring) as u32;
        let first = len.min(self.place.len - start);
        Ok([
            (self.place.data(start), first as usize),
            (self.place.data(0), (len - first) as usize),
        ])
    }

    /// Copies payload bytes of `h` from `from` into `out` (all of `out`).
    pub fn read_head(&self, h: &Head, from: u32, out: &mut [u8]) -> Result<(), RingError> {
        let len = u32::try_from(out.len()).map_err(|_| RingError::OutsideMessage {
            from: from.into(),
            end: u64::from(from) + out.len() as u64,
            len: h.msg.len,
        })?;
        let [(a, na), (b, _)] = self.runs(h, from, len)?;
        let (x, y) = out.split_at_mut(na);
        self.place.mem.copy_out(a, x)?;
        self.place.mem.copy_out(b, y)?;
        Ok(())
    }

    /// Sends payload bytes of `h` from `from` to its end on the stream socket `sock`, straight
    /// from the ring ([`RingMemory::send_ranges`]); the inner result is the socket's: the bytes
    /// it took, possibly fewer, or `WouldBlock`.
    pub fn send_head(
        &self,
        h: &Head,
        from: u32,
        sock: std::os::fd::BorrowedFd<'_>,
    ) -> Result<std::io::Result<usize>, RingError> {
        let runs = self.runs(h, from, h.msg.len.saturating_sub(from))?;
        let n = if runs[1].1 == 0 { 1 } else { 2 };
        Ok(self.place.mem.send_ranges(sock, &runs[..n]))
    }

    /// Takes the head message `h` (read or sent). Refused if the ring was read since `h` was
    /// taken: the head is another message then.
    pub fn consume(&self, h: &Head) -> Result<(), RingError> {
        let rx = self.rx()?;
        if rx != h.rx {
            return Err(RingError::StaleHead { rx, head: h.rx });
        }
        self.advance(h.rx, h.msg.len)
    }

    /// Drops the next message unread (returns its header).
    pub fn skip(&self) -> Result<Option<Received>, RingError> {
        let Some((r, rx)) = self.peek_at()? else {
            return Ok(None);
        };
        self.advance(rx, r.len)?;
        Ok(Some(r))
    }

    fn advance(&self, rx: u32, payload: u32) -> Result<(), RingError> {
        let next = (u64::from(rx) + message_slot(u64::from(payload))) % u64::from(self.place.len);
        // Release: our reads of the message complete before the hypervisor may overwrite it.
        self.place
            .mem
            .store_release_u32(self.place.base + ring_offsets::RX_PTR, next as u32)?;
        Ok(())
    }

    /// Discards everything in the ring (rx = tx): recovery after corruption was reported.
    pub fn discard_all(&self) -> Result<(), RingError> {
        let tx = self.tx()?;
        self.place
            .mem
            .store_release_u32(self.place.base + ring_offsets::RX_PTR, tx)?;
        Ok(())
    }
}

/// Why an insert failed.
#[derive(Debug, Error, PartialEq, Eq, Clone, Copy)]
pub enum InsertError {
    #[error("message of {len} bytes can never fit this ring (max {max})")]
    NeverFits { len: u64, max: u32 },
    #[error("not enough space in the ring now")]
    NoSpace,
    #[error(transparent)]
    Ring(#[from] RingError),
}

impl From<ShmemError> for InsertError {
    fn from(e: ShmemError) -> Self {
        InsertError::Ring(e.into())
    }
}

/// The hypervisor's side of a ring: it writes messages and `tx_ptr`.
#[derive(Debug, Clone)]
pub struct RingWriter {
    place: Place,
}

impl RingWriter {
    pub fn new(mem: RingMemory, base: usize, len: u32) -> Result<Self, RingError> {
        Ok(RingWriter {
            place: Place::new(mem, base, len)?,
        })
    }

    /// The data area's length (the ABI's `len`), not a count of messages.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> u32 {
        self.place.len
    }

    pub fn memory(&self) -> &RingMemory {
        &self.place.mem
    }

    pub fn base(&self) -> usize {
        self.place.base
    }

    /// The guest's `rx_ptr`, read now and sanitised.
    pub fn rx(&self) -> Result<u32, RingError> {
        let raw = self
            .place
            .mem
            .load_acquire_u32(self.place.base + ring_offsets::RX_PTR)?;
        Ok(sanitize_rx(raw, self.place.len))
    }

    /// The guest's `tx_ptr` as found at registration: kept when valid, else the sanitised rx.
    pub fn initial_tx(&self) -> Result<u32, RingError> {
        let raw = self
            .place
            .mem
            .read_u32(self.place.base + ring_offsets::TX_PTR)?;
        if raw.is_multiple_of(abi::RING_ALIGN) && raw < self.place.len {
            Ok(raw)
        } else {
            self.rx()
        }
    }

    /// Stores `tx` to the guest's header with release ordering (the message bytes first).
    pub fn publish_tx(&self, tx: u32) -> Result<(), RingError> {
        self.place
            .mem
            .store_release_u32(self.place.base + ring_offsets::TX_PTR, tx)?;
        Ok(())
    }

    /// Whether a `payload`-byte message would be accepted now, given the hypervisor's `tx`.
    pub fn fits_now(&self, tx: u32, payload: u64) -> Result<bool, RingError> {
        Ok(fits_now(self.rx()?, tx, self.place.len, payload))
    }

    /// Payload bytes that fit now, given the hypervisor's `tx`.
    pub fn payload_space(&self, tx: u32) -> Result<u32, RingError> {
        Ok(payload_space(self.rx()?, tx, self.place.len))
    }

    /// Inserts one message at `tx`, all or nothing, and publishes the new `tx_ptr`, which is
    /// returned. `tx` must be the hypervisor's own valid copy.
    pub fn insert(
        &self,
        tx: u32,
        message_type: u32,
        source: Addr,
        payload: &[IoSlice<'_>],
    ) -> Result<u32, InsertError> {
        let total: u64 = payload.iter().map(|s| s.len() as u64).sum();
        self.insert_with(tx, message_type, source, total, |place, mut at| {
            for s in payload {
                at = place.write_wrapping(at, s)? % place.len;
            }
            Ok(at)
        })
    }

    /// [`RingWriter::insert`] of a payload that lies in another shared memory: the bytes of
    /// `ranges` (offset, length) of `src`, in order, copied straight into the ring. A hypervisor
    /// moving a guest's payload from memory it shares with the guest needs no private copy of
    /// it: what the guest writes there meanwhile is only its own message garbled, as when Xen
    /// copies from guest memory.
    pub fn insert_from(
        &self,
        tx: u32,
        message_type: u32,
        source: Addr,
        src: &RingMemory,
        ranges: &[(usize, usize)],
    ) -> Result<u32, InsertError> {
        // Every range is checked before anything is written: a failed insert writes nothing.
        for &(offset, len) in ranges {
            if offset.checked_add(len).is_none_or(|end| end > src.size()) {
                return Err(RingError::from(ShmemError::OutOfBounds {
                    offset,
                    len,
                    size: src.size(),
                })
                .into());
            }
        }
        let total: u64 = ranges.iter().map(|&(_, l)| l as u64).sum();
        self.insert_with(tx, message_type, source, total, |place, mut at| {
            for &(offset, len) in ranges {
                at = place.write_wrapping_from(at, src, offset, len)? % place.len;
            }
            Ok(at)
        })
    }

    /// Checks that `total` payload bytes fit, writes the header and (with `write`, from the
    /// data offset after it, returning where the payload ended) the payload, and publishes.
    fn insert_with(
        &self,
        tx: u32,
        message_type: u32,
        source: Addr,
        total: u64,
        write: impl FnOnce(&Place, u32) -> Result<u32, RingError>,
    ) -> Result<u32, InsertError> {
        let len = self.place.len;
        debug_assert!(tx.is_multiple_of(abi::RING_ALIGN) && tx < len);
        if total > u64::from(max_message_size(len)) {
            return Err(InsertError::NeverFits {
                len: total,
                max: max_message_size(len),
            });
        }
        if !fits_now(self.rx()?, tx, len, total) {
            return Err(InsertError::NoSpace);
        }
        let h = MessageHeader {
            len: (total + u64::from(HDR)) as u32,
            message_type,
            source,
        };
        self.place.mem.write_obj(self.place.data(tx), &h)?;
        let at = write(&self.place, (tx + HDR) % len)?;
        let next = (roundup16(u64::from(at)) % u64::from(len)) as u32;
        self.publish_tx(next)?;
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(len: u32) -> (RingReader, RingWriter) {
        let mem = RingMemory::anonymous(ring_bytes(len)).unwrap();
        let r = RingReader::new(mem.clone(), 0, len).unwrap();
        r.init_header(RingId::default()).unwrap();
        (r, RingWriter::new(mem, 0, len).unwrap())
    }

    #[test]
    fn sanitize_rounds_and_bounds() {
        assert_eq!(sanitize_rx(0, 64), 0);
        assert_eq!(sanitize_rx(1, 64), 16);
        assert_eq!(sanitize_rx(48, 64), 48);
        assert_eq!(sanitize_rx(49, 64), 0);
        assert_eq!(sanitize_rx(u32::MAX, 64), 0);
    }

    #[test]
    fn exact_fit_leaves_one_slot() {
        let (r, w) = ring(64);
        // 64-byte ring: 16 header + 32 payload + 16 free slot.
        assert_eq!(
            w.insert(0, 1, Addr::new(1, 2), &[IoSlice::new(&[7; 33])]),
            Err(InsertError::NeverFits { len: 33, max: 32 })
        );
        let tx = w
            .insert(0, 1, Addr::new(1, 2), &[IoSlice::new(&[7; 32])])
            .unwrap();
        assert_eq!(tx, 48);
        assert_eq!(
            w.insert(tx, 1, Addr::new(1, 2), &[]),
            Err(InsertError::NoSpace)
        );
        let mut buf = Vec::new();
        let m = r.recv(&mut buf).unwrap().unwrap();
        assert_eq!(
            (m.len, m.source, buf.as_slice()),
            (32, Addr::new(1, 2), &[7u8; 32][..])
        );
        assert_eq!(r.rx().unwrap(), 48);
        assert_eq!(r.recv(&mut buf).unwrap(), None);
    }

    #[test]
    fn rewrite_id_keeps_what_the_ring_holds() {
        let (r, w) = ring(256);
        let tx = w
            .insert(0, 1, Addr::new(1, 2), &[IoSlice::new(b"first")])
            .unwrap();
        let tx = w
            .insert(tx, 1, Addr::new(1, 2), &[IoSlice::new(b"second")])
            .unwrap();
        w.publish_tx(tx).unwrap();
        let mut buf = Vec::new();
        r.recv(&mut buf).unwrap().unwrap();
        let (rx, tx) = (r.rx().unwrap(), r.tx().unwrap());
        let id = RingId {
            addr: Addr::new(7, 5100),
            partner: abi::DOMID_ANY,
            pad: 0,
        };
        r.rewrite_id(id).unwrap();
        assert_eq!(r.id().unwrap(), id);
        assert_eq!((r.rx().unwrap(), r.tx().unwrap()), (rx, tx));
        r.recv(&mut buf).unwrap().unwrap();
        assert_eq!(buf, b"second");
    }

    #[test]
    fn payload_wraps_at_the_end() {
        let (r, w) = ring(64);
        let tx = w
            .insert(0, 1, Addr::new(1, 2), &[IoSlice::new(b"0123456789abcdef")])
            .unwrap();
        assert_eq!(tx, 32);
        r.recv(&mut Vec::new()).unwrap().unwrap();
        let tx = w.insert(
            tx,
            1,
            Addr::new(1, 2),
            &[IoSlice::new(b"wrap"), IoSlice::new(b"ped")],
        );
        assert_eq!(tx, Ok(0));
        let mut buf = Vec::new();
        r.recv(&mut buf).unwrap().unwrap();
        assert_eq!(buf, b"wrapped");
    }

    /// Reading a message through its head, in parts or sent on a socket straight from the
    /// ring, gives the bytes `recv` gives, at every wrap position; a stale or out-of-range use
    /// of a head is an error, never bytes from elsewhere.
    #[test]
    fn heads_read_and_send_what_recv_would() {
        use std::io::Read;
        use std::os::fd::AsFd;
        let (r, w) = ring(1024);
        let (a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut tx = 0;
        let mut seed = 1u32;
        for round in 0..400u32 {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            let len = (seed >> 8) % 600;
            let msg: Vec<u8> = (0..len).map(|i| (i ^ round) as u8).collect();
            tx = w
                .insert(tx, 7, Addr::new(3, round), &[IoSlice::new(&msg)])
                .unwrap();
            let h = r.head().unwrap().unwrap();
            assert_eq!((h.msg.len, h.msg.source), (len, Addr::new(3, round)));
            let split = if len == 0 { 0 } else { seed % len };
            let mut first = vec![0u8; split as usize];
            r.read_head(&h, 0, &mut first).unwrap();
            assert_eq!(first, &msg[..split as usize]);
            let sent = r.send_head(&h, split, a.as_fd()).unwrap().unwrap();
            assert_eq!(sent, (len - split) as usize);
            let mut rest = vec![0u8; sent];
            b.read_exact(&mut rest).unwrap();
            assert_eq!(rest, &msg[split as usize..]);
            assert!(matches!(
                r.read_head(&h, split, &mut vec![0u8; (len - split + 1) as usize]),
                Err(RingError::OutsideMessage { .. })
            ));
            r.consume(&h).unwrap();
            assert!(
                matches!(r.consume(&h), Err(RingError::StaleHead { .. })),
                "a head is consumed once"
            );
        }
        assert_eq!(r.head().unwrap(), None);
    }

    #[test]
    fn corrupt_headers_are_errors() {
        let (r, w) = ring(128);
        w.insert(0, 1, Addr::new(1, 2), &[IoSlice::new(b"hello")])
            .unwrap();
        let mem = r.memory().clone();
        mem.write_u32(ring_offsets::DATA, 4).unwrap();
        assert_eq!(
            r.recv(&mut Vec::new()),
            Err(RingError::ShortMessage { len: 4 })
        );
        mem.write_u32(ring_offsets::DATA, 1000).unwrap();
        assert_eq!(
            r.recv(&mut Vec::new()),
            Err(RingError::Overrun {
                len: 1000,
                avail: 32
            })
        );
        mem.write_u32(ring_offsets::TX_PTR, 7).unwrap();
        assert_eq!(
            r.recv(&mut Vec::new()),
            Err(RingError::BadTx { tx: 7, len: 128 })
        );
        mem.write_u32(ring_offsets::TX_PTR, 32).unwrap();
        mem.write_u32(ring_offsets::RX_PTR, 4096).unwrap();
        assert_eq!(
            r.recv(&mut Vec::new()),
            Err(RingError::BadRx { rx: 4096, len: 128 })
        );
    }
}
