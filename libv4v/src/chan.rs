// SPDX-License-Identifier: MIT OR Apache-2.0
//! A one-way record channel in memory shared with one untrusted process.
//!
//! Used where a Unix socket round trip per message costs more than the message: between a guest
//! and the simulator, and between a client and its daemon. One [`ChanMemory`] is one direction:
//! one side holds its [`Producer`], the other its [`Consumer`]; a duplex link is two channels.
//! The memory is a sealed memfd (`F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL`), created by one side
//! and passed to the other with `SCM_RIGHTS`; [`ChanMemory::map`] refuses anything else, because a
//! peer that could truncate the file under our mapping would kill us with `SIGBUS`.
//!
//! # Layout
//!
//! Page 0 is the header, each word on its own cache line; the data area follows, `capacity`
//! bytes, a power of two:
//!
//! | offset | word | written by |
//! |---|---|---|
//! | 0 | `u32` magic `"V4VC"`, `u32` version 1, `u32` capacity | the creator, once |
//! | 64 | `tail`: bytes ever produced (wrapping `u32`) | the producer |
//! | 128 | `sleeping`: 1 while the consumer sleeps | the consumer sets, the producer clears |
//! | 192 | `head`: bytes ever consumed (wrapping `u32`) | the consumer |
//! | 256 | `waiting`: bytes the producer waits for, 0 if none | the producer sets, the consumer clears |
//! | 320 | `closed`: 1 once the producer published its last record ([`Producer::close`]) | the producer |
//!
//! A record is an 8-byte header (`u32 len`, `u32` zero) and `len` bytes, padded to 8, never split
//! across the end of the data area: when it does not fit before the end, the producer writes the
//! header `len = 0xFFFF_FFFF` (skip to the start) and puts the record at offset 0. A record is at
//! most a quarter of the capacity, so one always fits in an empty channel.
//!
//! # Doorbells
//!
//! The channel never makes a system call. It tells its user when the other side must be woken, and
//! the user rings its own doorbell (a byte on a pipe or socket both already share). A consumer
//! that can be woken more than one way raises `sleeping` to a value saying which
//! ([`Consumer::prepare_sleep_as`]); the producer reads it back ([`Producer::last_sleeper`]). A consumer about to
//! sleep calls [`Consumer::prepare_sleep`], which raises `sleeping` and looks once more; a producer
//! that finds `sleeping` raised after publishing a record takes it down and reports
//! `doorbell: true`. Both the flag and the index are accessed sequentially consistently, so one of
//! the two always sees the other (the store-then-load pattern needs more than acquire/release).
//! Waiting for space is the mirror image: [`Producer::wait_for_space`] and
//! [`Consumer::space_doorbell_wanted`].
//!
//! # Trust
//!
//! Each side keeps its own index privately and only publishes it; the other side's index, every
//! record header and every byte are read with volatile or atomic accesses through
//! [`RingMemory`] and checked before use. Records are copied out before the caller sees them, so a
//! peer rewriting a record after publishing it cannot make the caller's checks and uses disagree.
//! A check that fails is [`ChanError::Corrupt`]: the peer broke the protocol and the channel is
//! dead for that peer. Nothing a peer writes can make this code panic, read or write out of
//! bounds, or loop; a hostile peer can only garble or withhold its own traffic.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

use thiserror::Error;

use crate::shmem::{OsErrno, PAGE_SIZE, RingMemory, ShmemError};

/// `"V4VC"`.
pub const MAGIC: u32 = u32::from_le_bytes(*b"V4VC");
/// The layout version of the header.
pub const VERSION: u32 = 1;
/// The smallest capacity.
pub const MIN_CAPACITY: usize = PAGE_SIZE;
/// The largest capacity (256 MiB).
pub const MAX_CAPACITY: usize = 1 << 28;
/// Where the data area starts.
pub const DATA_OFFSET: usize = PAGE_SIZE;
/// Bytes of a record header.
pub const RECORD_HEADER: usize = 8;

const OFF_MAGIC: usize = 0;
const OFF_VERSION: usize = 4;
const OFF_CAPACITY: usize = 8;
const OFF_TAIL: usize = 64;
const OFF_SLEEPING: usize = 128;
const OFF_HEAD: usize = 192;
const OFF_WAITING: usize = 256;
const OFF_CLOSED: usize = 320;
const WRAP: u32 = u32::MAX;

/// Why a channel cannot be used.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ChanError {
    #[error(
        "channel capacity {0} is not a power of two from {MIN_CAPACITY} to {MAX_CAPACITY} bytes"
    )]
    BadCapacity(usize),
    #[error("a record of {len} bytes is larger than the channel's largest, {max}")]
    TooLarge { len: usize, max: usize },
    #[error("the peer corrupted the channel: {0}")]
    Corrupt(&'static str),
    #[error("shared memory descriptor refused: {0}")]
    BadDescriptor(&'static str),
    #[error("channel memory: {0}")]
    Shmem(#[from] ShmemError),
    #[error("channel memory: {0}")]
    Os(OsErrno),
}

/// The memory of one channel, mapped in this process.
#[derive(Debug, Clone)]
pub struct ChanMemory {
    mem: RingMemory,
    capacity: u32,
}

fn check_capacity(capacity: usize) -> Result<u32, ChanError> {
    if !capacity.is_power_of_two() || !(MIN_CAPACITY..=MAX_CAPACITY).contains(&capacity) {
        return Err(ChanError::BadCapacity(capacity));
    }
    u32::try_from(capacity).map_err(|_| ChanError::BadCapacity(capacity))
}

fn last_os() -> ChanError {
    ChanError::Os(OsErrno::last())
}

impl ChanMemory {
    /// Creates a channel of `capacity` data bytes. Returns the mapping and a descriptor of the
    /// same sealed memfd to pass to the peer.
    pub fn create(capacity: usize) -> Result<(ChanMemory, OwnedFd), ChanError> {
        let cap = check_capacity(capacity)?;
        let size = DATA_OFFSET + capacity;
        // SAFETY: memfd_create takes a NUL-terminated name and flags; the result is checked.
        let raw = unsafe {
            libc::memfd_create(
                c"v4v-chan".as_ptr(),
                libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
            )
        };
        if raw < 0 {
            return Err(last_os());
        }
        // SAFETY: raw is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let len = libc::off_t::try_from(size).map_err(|_| ChanError::BadCapacity(capacity))?;
        // SAFETY: ftruncate on a descriptor we own, with integer arguments.
        if unsafe { libc::ftruncate(raw, len) } != 0 {
            return Err(last_os());
        }
        // SAFETY: fcntl on a descriptor we own, with integer arguments.
        let sealed = unsafe {
            libc::fcntl(
                raw,
                libc::F_ADD_SEALS,
                libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL,
            )
        };
        if sealed != 0 {
            return Err(last_os());
        }
        let peer = fd.try_clone().map_err(|_| last_os())?;
        let mem = RingMemory::map_fd(fd, size)?;
        mem.write_u32(OFF_MAGIC, MAGIC)?;
        mem.write_u32(OFF_VERSION, VERSION)?;
        mem.write_u32(OFF_CAPACITY, cap)?;
        Ok((ChanMemory { mem, capacity: cap }, peer))
    }

    /// Maps a channel a peer created, of the capacity the two agreed on. Refuses a descriptor
    /// that is not a memfd sealed against shrinking, whose size is not exactly that of the
    /// channel, or whose header does not say so.
    pub fn map(fd: OwnedFd, capacity: usize) -> Result<ChanMemory, ChanError> {
        let cap = check_capacity(capacity)?;
        let size = DATA_OFFSET + capacity;
        // SAFETY: F_GET_SEALS on a descriptor we own; a non-memfd answers EINVAL.
        let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
        if seals < 0 {
            return Err(ChanError::BadDescriptor("not a memfd"));
        }
        if seals & libc::F_SEAL_SHRINK == 0 {
            return Err(ChanError::BadDescriptor(
                "not sealed against shrinking (F_SEAL_SHRINK)",
            ));
        }
        if seals & libc::F_SEAL_WRITE != 0 || seals & libc::F_SEAL_FUTURE_WRITE != 0 {
            return Err(ChanError::BadDescriptor("sealed against writing"));
        }
        // SAFETY: fstat fills a zeroed stat of a descriptor we own; the result is checked.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        if unsafe { libc::fstat(fd.as_fd().as_raw_fd(), &mut st) } != 0 {
            return Err(last_os());
        }
        if st.st_mode & libc::S_IFMT != libc::S_IFREG || st.st_size as u64 != size as u64 {
            return Err(ChanError::BadDescriptor(
                "its size is not the channel's (header page + capacity)",
            ));
        }
        // The descriptor is not kept: a daemon maps one or two channels per client.
        let mem = RingMemory::map_fd_closing(fd, size)?;
        if mem.read_u32(OFF_MAGIC)? != MAGIC
            || mem.read_u32(OFF_VERSION)? != VERSION
            || mem.read_u32(OFF_CAPACITY)? != cap
        {
            return Err(ChanError::BadDescriptor(
                "its header is not a version-1 channel of that capacity",
            ));
        }
        Ok(ChanMemory { mem, capacity: cap })
    }

    /// The mapping (header page and data area), for reading a record in place
    /// ([`Consumer::peek`]).
    pub fn memory(&self) -> &RingMemory {
        &self.mem
    }

    /// Data bytes.
    pub fn capacity(&self) -> usize {
        self.capacity as usize
    }

    /// The largest record's payload.
    pub fn max_record(&self) -> usize {
        self.capacity as usize / 4 - RECORD_HEADER
    }

    /// The descriptor of the memfd (to pass again, e.g. after a peer reconnects): the
    /// creator's only; a channel mapped with [`ChanMemory::map`] keeps none.
    pub fn fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.mem.fd()
    }

    fn mask(&self) -> u32 {
        self.capacity - 1
    }
}

/// Space a record of `len` payload bytes takes.
fn footprint(len: usize) -> usize {
    RECORD_HEADER + len.div_ceil(8) * 8
}

/// A record [`Consumer::peek`] found: where its payload starts in the channel's mapping, and
/// its length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peeked {
    pub offset: usize,
    pub len: usize,
}

/// What [`Producer::push`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Published. `doorbell`: the consumer sleeps; wake it.
    Done { doorbell: bool },
    /// No room now; nothing was written. See [`Producer::wait_for_space`].
    Full,
}

/// The writing end of a channel.
#[derive(Debug)]
pub struct Producer {
    chan: ChanMemory,
    tail: u32,
    /// The `sleeping` word the last doorbell took down: how that sleeper asked to be woken.
    sleeper: u32,
}

impl Producer {
    /// The producer of `chan`, starting at the tail it last published.
    pub fn new(chan: &ChanMemory) -> Result<Self, ChanError> {
        Ok(Producer {
            tail: chan.mem.load_acquire_u32(OFF_TAIL)?,
            chan: chan.clone(),
            sleeper: 0,
        })
    }

    /// The channel.
    pub fn chan(&self) -> &ChanMemory {
        &self.chan
    }

    /// Bytes the consumer has not taken yet, as far as the producer can tell.
    fn used(&self) -> Result<u32, ChanError> {
        let head = self.chan.mem.load_seqcst_u32(OFF_HEAD)?;
        let used = self.tail.wrapping_sub(head);
        if used > self.chan.capacity {
            return Err(ChanError::Corrupt("head is ahead of tail"));
        }
        Ok(used)
    }

    /// Bytes a record of `len` needs from the current tail: the skip to the start, if it does
    /// not fit before the end, and its footprint.
    fn needed(&self, len: usize) -> Result<(u32, u32), ChanError> {
        let max = self.chan.max_record();
        if len > max {
            return Err(ChanError::TooLarge { len, max });
        }
        let need = footprint(len) as u32;
        let room = self.chan.capacity - (self.tail & self.chan.mask());
        let skip = if room < need { room } else { 0 };
        Ok((skip, need))
    }

    /// Publishes one record whose payload is `parts` concatenated.
    pub fn push(&mut self, parts: &[&[u8]]) -> Result<Pushed, ChanError> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let (skip, need) = self.needed(len)?;
        let free = self.chan.capacity - self.used()?;
        if free < skip + need {
            return Ok(Pushed::Full);
        }
        let mem = &self.chan.mem;
        let mut pos = (self.tail & self.chan.mask()) as usize;
        if skip > 0 {
            mem.write_u32(DATA_OFFSET + pos, WRAP)?;
            mem.write_u32(DATA_OFFSET + pos + 4, 0)?;
            self.tail = self.tail.wrapping_add(skip);
            pos = 0;
        }
        mem.write_u32(DATA_OFFSET + pos, len as u32)?;
        mem.write_u32(DATA_OFFSET + pos + 4, 0)?;
        let mut at = DATA_OFFSET + pos + RECORD_HEADER;
        for p in parts {
            mem.copy_in(at, p)?;
            at += p.len();
        }
        self.tail = self.tail.wrapping_add(need);
        mem.store_seqcst_u32(OFF_TAIL, self.tail)?;
        let doorbell = self.take_sleeper()?;
        Ok(Pushed::Done { doorbell })
    }

    /// Takes `sleeping` down if it is raised; whether it was (ring the consumer).
    fn take_sleeper(&mut self) -> Result<bool, ChanError> {
        let mem = &self.chan.mem;
        if mem.load_seqcst_u32(OFF_SLEEPING)? == 0 {
            return Ok(false);
        }
        let was = mem.swap_u32(OFF_SLEEPING, 0)?;
        if was != 0 {
            self.sleeper = was;
        }
        Ok(was != 0)
    }

    /// The value the consumer raised `sleeping` with, for the last doorbell [`Producer::push`]
    /// or [`Producer::close`] reported: how it asked to be woken
    /// ([`Consumer::prepare_sleep_as`]). The consumer wrote it: any value may come back.
    pub fn last_sleeper(&self) -> u32 {
        self.sleeper
    }

    /// Before sleeping until a record of `len` bytes fits: asks the consumer to ring once it
    /// does, and looks again. `Ok(true)`: it fits now, push again instead of sleeping.
    pub fn wait_for_space(&mut self, len: usize) -> Result<bool, ChanError> {
        let (skip, need) = self.needed(len)?;
        let mem = &self.chan.mem;
        mem.store_seqcst_u32(OFF_WAITING, skip + need)?;
        if self.chan.capacity - self.used()? >= skip + need {
            mem.store_seqcst_u32(OFF_WAITING, 0)?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Says that nothing follows the records published so far (a stream's end of file): it
    /// needs no room, so it never waits. Returns whether the consumer sleeps (ring it).
    pub fn close(&mut self) -> Result<bool, ChanError> {
        self.chan.mem.store_seqcst_u32(OFF_CLOSED, 1)?;
        self.take_sleeper()
    }

    /// Whether the consumer has taken everything published.
    pub fn is_drained(&self) -> Result<bool, ChanError> {
        Ok(self.used()? == 0)
    }
}

/// The reading end of a channel.
#[derive(Debug)]
pub struct Consumer {
    chan: ChanMemory,
    head: u32,
    /// `sleeping` is raised (by us) and may still be.
    armed: bool,
    /// [`Consumer::read_bytes`]: the record at `head` is partly taken: its length, as checked
    /// when it was first seen (never read again: the producer may rewrite it), and how much of
    /// it was taken.
    partial: Option<(usize, usize)>,
}

impl Consumer {
    /// The consumer of `chan`, starting at the head it last published.
    pub fn new(chan: &ChanMemory) -> Result<Self, ChanError> {
        Ok(Consumer {
            head: chan.mem.load_acquire_u32(OFF_HEAD)?,
            chan: chan.clone(),
            armed: false,
            partial: None,
        })
    }

    /// The channel.
    pub fn chan(&self) -> &ChanMemory {
        &self.chan
    }

    fn used(&self) -> Result<u32, ChanError> {
        let tail = self.chan.mem.load_seqcst_u32(OFF_TAIL)?;
        let used = tail.wrapping_sub(self.head);
        if used > self.chan.capacity {
            return Err(ChanError::Corrupt(
                "tail is more than a capacity ahead of head",
            ));
        }
        Ok(used)
    }

    fn disarm(&mut self) -> Result<(), ChanError> {
        if self.armed {
            self.chan.mem.store_seqcst_u32(OFF_SLEEPING, 0)?;
            self.armed = false;
        }
        Ok(())
    }

    /// The record at `head`, past any skip marker: where its payload starts in the mapping and
    /// its length, checked against what was published; `None` when the channel is empty.
    fn next_record(&mut self) -> Result<Option<(usize, usize)>, ChanError> {
        let mem = &self.chan.mem;
        // At most one skip marker precedes a record.
        for _ in 0..2 {
            let used = self.used()?;
            if used == 0 {
                return Ok(None);
            }
            if used < RECORD_HEADER as u32 {
                return Err(ChanError::Corrupt("a partial record header was published"));
            }
            let pos = (self.head & self.chan.mask()) as usize;
            let len = mem.read_u32(DATA_OFFSET + pos)?;
            if mem.read_u32(DATA_OFFSET + pos + 4)? != 0 {
                return Err(ChanError::Corrupt(
                    "a record header's reserved word is not 0",
                ));
            }
            if len == WRAP {
                let skip = self.chan.capacity - pos as u32;
                if pos == 0 || skip > used {
                    return Err(ChanError::Corrupt("a skip marker in the wrong place"));
                }
                self.head = self.head.wrapping_add(skip);
                mem.store_seqcst_u32(OFF_HEAD, self.head)?;
                continue;
            }
            let len = len as usize;
            if len > self.chan.max_record() {
                return Err(ChanError::Corrupt(
                    "a record longer than the largest allowed",
                ));
            }
            let need = footprint(len);
            if need > used as usize || pos + need > self.chan.capacity() {
                return Err(ChanError::Corrupt(
                    "a record longer than what was published",
                ));
            }
            return Ok(Some((DATA_OFFSET + pos + RECORD_HEADER, len)));
        }
        Err(ChanError::Corrupt("two skip markers in a row"))
    }

    /// Takes the record at `head` (of payload `len`): publishes the new head.
    fn advance(&mut self, len: usize) -> Result<(), ChanError> {
        self.head = self.head.wrapping_add(footprint(len) as u32);
        self.chan.mem.store_seqcst_u32(OFF_HEAD, self.head)?;
        Ok(())
    }

    /// The next record where it lies, not taken yet, or `None` when the channel is empty: for a
    /// reader that copies its payload straight out of the mapping ([`ChanMemory::memory`],
    /// [`RingMemory::copy_to`](crate::shmem::RingMemory::copy_to)) rather than into a buffer
    /// first. Its place and length are checked against what was published; what the producer
    /// writes there before [`Consumer::consume`] takes it changes only the producer's own bytes.
    pub fn peek(&mut self) -> Result<Option<Peeked>, ChanError> {
        self.disarm()?;
        Ok(self
            .next_record()?
            .map(|(offset, len)| Peeked { offset, len }))
    }

    /// Takes the record that [`Consumer::peek`] returned (the next one).
    pub fn consume(&mut self, record: Peeked) -> Result<(), ChanError> {
        self.advance(record.len)
    }

    /// Appends the next record's payload to `out` and returns its length, or `None` when the
    /// channel is empty. A channel is read by records or as bytes ([`Consumer::read_bytes`]),
    /// not both.
    pub fn pop_into(&mut self, out: &mut Vec<u8>) -> Result<Option<usize>, ChanError> {
        self.disarm()?;
        let Some((at, len)) = self.next_record()? else {
            return Ok(None);
        };
        self.chan.mem.append_to_vec(at, len, out)?;
        self.advance(len)?;
        Ok(Some(len))
    }

    /// Reads the channel as a byte stream: fills `out` from as many records as are there,
    /// taking a record that does not fit whole in part (the rest comes first next time).
    /// Returns how many bytes it wrote (0 when the channel is empty, or `out` is) and whether
    /// the channel is now empty and closed ([`Producer::close`]): nothing more will come.
    /// Record boundaries are not kept; an empty record is corruption (a byte stream has none,
    /// and a loop over them would be unbounded).
    pub fn read_bytes(&mut self, out: &mut [u8]) -> Result<(usize, bool), ChanError> {
        self.disarm()?;
        let mut n = 0;
        while n < out.len() {
            let (at, len, taken) = match self.partial {
                Some((len, taken)) => {
                    let pos = (self.head & self.chan.mask()) as usize;
                    (DATA_OFFSET + pos + RECORD_HEADER, len, taken)
                }
                None => match self.next_record()? {
                    // Each record read must fill at least a byte, or a producer publishing empty
                    // records as fast as they are taken would keep this loop going for ever.
                    Some((_, 0)) => {
                        return Err(ChanError::Corrupt("an empty record in a byte stream"));
                    }
                    Some((at, len)) => (at, len, 0),
                    None => break,
                },
            };
            let k = (len - taken).min(out.len() - n);
            self.chan.mem.copy_out(at + taken, &mut out[n..n + k])?;
            n += k;
            if taken + k == len {
                self.partial = None;
                self.advance(len)?;
            } else {
                self.partial = Some((len, taken + k));
            }
        }
        Ok((n, self.is_closed_and_empty()?))
    }

    /// Whether the producer closed the channel and everything it published was taken. The
    /// flag is read before the index: a record published before the close is never missed.
    pub fn is_closed_and_empty(&self) -> Result<bool, ChanError> {
        if self.partial.is_some() || self.chan.mem.load_seqcst_u32(OFF_CLOSED)? == 0 {
            return Ok(false);
        }
        Ok(self.used()? == 0)
    }

    /// Whether nothing is published that has not been taken (a record partly taken by
    /// [`Consumer::read_bytes`] is not).
    pub fn is_empty(&self) -> Result<bool, ChanError> {
        Ok(self.partial.is_none() && self.used()? == 0)
    }

    /// Before sleeping: raises `sleeping` and looks again. `Ok(true)`: sleep, the producer will
    /// ring; `Ok(false)`: a record arrived (or the channel is closed), pop it instead.
    pub fn prepare_sleep(&mut self) -> Result<bool, ChanError> {
        self.prepare_sleep_as(1)
    }

    /// [`Consumer::prepare_sleep`], raising `sleeping` to `how` (not 0; 0 counts as 1): a
    /// producer with more than one way to wake this consumer reads it back with
    /// [`Producer::last_sleeper`].
    pub fn prepare_sleep_as(&mut self, how: u32) -> Result<bool, ChanError> {
        if self.partial.is_some() {
            return Ok(false);
        }
        self.chan.mem.store_seqcst_u32(OFF_SLEEPING, how.max(1))?;
        self.armed = true;
        if self.used()? != 0 || self.chan.mem.load_seqcst_u32(OFF_CLOSED)? != 0 {
            self.disarm()?;
            return Ok(false);
        }
        Ok(true)
    }

    /// After taking records: whether the producer waits for the space now free (then wake it;
    /// the request is taken down, so it rings once).
    pub fn space_doorbell_wanted(&self) -> Result<bool, ChanError> {
        let mem = &self.chan.mem;
        let want = mem.load_seqcst_u32(OFF_WAITING)?;
        if want == 0 {
            return Ok(false);
        }
        let free = self.chan.capacity - self.used()?;
        Ok(free >= want.min(self.chan.capacity) && mem.swap_u32(OFF_WAITING, 0)? != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::VecDeque;

    fn pair(cap: usize) -> (Producer, Consumer, ChanMemory) {
        let (mem, fd) = ChanMemory::create(cap).unwrap();
        let peer = ChanMemory::map(fd, cap).unwrap();
        (
            Producer::new(&mem).unwrap(),
            Consumer::new(&peer).unwrap(),
            mem,
        )
    }

    fn pop(c: &mut Consumer) -> Option<Vec<u8>> {
        let mut v = Vec::new();
        c.pop_into(&mut v).unwrap().map(|n| {
            assert_eq!(n, v.len());
            v
        })
    }

    #[test]
    fn records_cross_the_mapping_in_order_and_wrap() {
        let (mut p, mut c, _) = pair(4096);
        for round in 0..200u32 {
            let a = vec![round as u8; (round as usize * 37) % 1000];
            let b = round.to_le_bytes();
            assert_eq!(p.push(&[&a, &b]).unwrap(), Pushed::Done { doorbell: false });
            let mut want = a.clone();
            want.extend_from_slice(&b);
            assert_eq!(pop(&mut c), Some(want));
        }
        assert_eq!(pop(&mut c), None);
        assert!(p.is_drained().unwrap());
    }

    /// A record read in place (`peek`, copy out of the mapping, `consume`) is the record
    /// `pop_into` would give, across the wrap; peeking again without consuming gives it again.
    #[test]
    fn a_peeked_record_lies_where_pop_would_have_read_it() {
        let (mut p, mut c, _) = pair(4096);
        for round in 0..200u32 {
            let a = vec![round as u8; (round as usize * 53) % 1000 + 1];
            assert!(matches!(p.push(&[&a]).unwrap(), Pushed::Done { .. }));
            let rec = c.peek().unwrap().expect("a record");
            assert_eq!(c.peek().unwrap(), Some(rec), "peek takes nothing");
            assert_eq!(rec.len, a.len());
            let mut out = vec![0u8; rec.len];
            c.chan().memory().copy_out(rec.offset, &mut out).unwrap();
            assert_eq!(out, a);
            c.consume(rec).unwrap();
        }
        assert_eq!(c.peek().unwrap(), None);
        assert!(p.is_drained().unwrap());
    }

    #[test]
    fn full_is_reported_and_space_comes_back() {
        let (mut p, mut c, _) = pair(4096);
        let rec = vec![7u8; 1000]; // footprint 1008: four fit in 4096
        for _ in 0..4 {
            assert!(matches!(p.push(&[&rec]).unwrap(), Pushed::Done { .. }));
        }
        assert_eq!(p.push(&[&rec]).unwrap(), Pushed::Full);
        assert!(!p.wait_for_space(rec.len()).unwrap());
        assert_eq!(pop(&mut c).unwrap(), rec);
        assert!(c.space_doorbell_wanted().unwrap());
        assert!(!c.space_doorbell_wanted().unwrap(), "rings once");
        assert!(matches!(p.push(&[&rec]).unwrap(), Pushed::Done { .. }));
        assert_eq!(
            p.push(&[&vec![0u8; 2000]]),
            Err(ChanError::TooLarge {
                len: 2000,
                max: 1016
            })
        );
    }

    #[test]
    fn a_sleeping_consumer_is_rung_once() {
        let (mut p, mut c, _) = pair(4096);
        assert!(c.prepare_sleep().unwrap());
        assert_eq!(p.push(&[b"a"]).unwrap(), Pushed::Done { doorbell: true });
        assert_eq!(p.push(&[b"b"]).unwrap(), Pushed::Done { doorbell: false });
        assert!(!c.prepare_sleep().unwrap(), "data is there: do not sleep");
        assert_eq!(pop(&mut c).unwrap(), b"a");
        assert_eq!(p.push(&[b"c"]).unwrap(), Pushed::Done { doorbell: false });
        assert_eq!(pop(&mut c).unwrap(), b"b");
        assert_eq!(pop(&mut c).unwrap(), b"c");
    }

    #[test]
    fn the_producer_learns_how_the_sleeper_asked_to_be_woken() {
        let (mut p, mut c, _) = pair(4096);
        assert_eq!(p.last_sleeper(), 0);
        assert!(c.prepare_sleep_as(2).unwrap());
        assert_eq!(p.push(&[b"a"]).unwrap(), Pushed::Done { doorbell: true });
        assert_eq!(p.last_sleeper(), 2);
        assert_eq!(pop(&mut c).unwrap(), b"a");
        assert!(c.prepare_sleep().unwrap());
        assert_eq!(p.push(&[b"b"]).unwrap(), Pushed::Done { doorbell: true });
        assert_eq!(p.last_sleeper(), 1);
        assert_eq!(pop(&mut c).unwrap(), b"b");
        // 0 would read as awake: it counts as 1.
        assert!(c.prepare_sleep_as(0).unwrap());
        assert!(p.close().unwrap());
        assert_eq!(p.last_sleeper(), 1);
    }

    #[test]
    fn an_empty_record_in_a_byte_stream_is_corruption() {
        let (mut p, mut c, _) = pair(4096);
        p.push(&[b"ab"]).unwrap();
        p.push(&[]).unwrap();
        p.push(&[b"cd"]).unwrap();
        let mut out = [0u8; 8];
        assert_eq!(c.read_bytes(&mut out[..1]).unwrap(), (1, false));
        assert!(matches!(
            c.read_bytes(&mut out),
            Err(ChanError::Corrupt("an empty record in a byte stream"))
        ));
    }

    #[test]
    fn map_refuses_what_is_not_a_sealed_channel() {
        let (_, fd) = ChanMemory::create(8192).unwrap();
        let again = fd.try_clone().unwrap();
        assert!(matches!(
            ChanMemory::map(fd, 4096),
            Err(ChanError::BadDescriptor(_))
        ));
        let mapped = ChanMemory::map(again, 8192).unwrap();
        assert!(
            mapped.fd().is_none(),
            "a mapped channel holds no descriptor"
        );
        assert_eq!(
            ChanMemory::map(std::fs::File::open("/dev/null").unwrap().into(), 4096).unwrap_err(),
            ChanError::BadDescriptor("not a memfd")
        );
        let ring = RingMemory::anonymous(DATA_OFFSET + 4096).unwrap();
        let unsealed = ring.fd().unwrap().try_clone_to_owned().unwrap();
        assert!(matches!(
            ChanMemory::map(unsealed, 4096),
            Err(ChanError::BadDescriptor(_))
        ));
        assert_eq!(
            ChanMemory::create(5000).unwrap_err(),
            ChanError::BadCapacity(5000)
        );
    }

    #[test]
    fn hostile_indexes_and_headers_are_corruption_not_panics() {
        // Each scribble is what a hostile producer might publish; the consumer must refuse it.
        let scribbles: &[(usize, u32)] = &[
            (OFF_TAIL, 4097),     // more than a capacity ahead
            (OFF_TAIL, 4),        // a partial header
            (DATA_OFFSET, 5000),  // longer than the largest record
            (DATA_OFFSET, 100),   // longer than what was published
            (DATA_OFFSET + 4, 1), // reserved word
            (DATA_OFFSET, WRAP),  // skip marker at offset 0
        ];
        for &(off, val) in scribbles {
            let (mut p, mut c, mem) = pair(4096);
            p.push(&[&[1u8; 16]]).unwrap();
            mem.mem.write_u32(off, val).unwrap();
            let mut out = Vec::new();
            assert!(
                matches!(c.pop_into(&mut out), Err(ChanError::Corrupt(_))),
                "scribble {val:#x} at {off}"
            );
        }
        // A hostile consumer moving head past tail is the producer's corruption.
        let (mut p, _c, mem) = pair(4096);
        mem.mem.write_u32(OFF_HEAD, 64).unwrap();
        assert!(matches!(p.push(&[b"x"]), Err(ChanError::Corrupt(_))));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Push(usize),
        Pop,
        Scribble(usize, u32),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0usize..1100).prop_map(Op::Push),
            4 => Just(Op::Pop),
            1 => (0usize..(DATA_OFFSET + 4096) / 4, any::<u32>()).prop_map(|(w, v)| Op::Scribble(w * 4, v)),
        ]
    }

    proptest! {
        /// Without scribbles the channel is a FIFO of records; with them it never panics and
        /// never returns bytes outside a record's bounds: every failure is Corrupt.
        #[test]
        fn fifo_model_and_hostile_scribbles(ops in prop::collection::vec(op(), 1..300)) {
            let (mut p, mut c, mem) = pair(4096);
            let mut model: VecDeque<Vec<u8>> = VecDeque::new();
            let mut scribbled = false;
            let mut n = 0u8;
            for o in ops {
                match o {
                    Op::Push(len) => {
                        n = n.wrapping_add(1);
                        let rec = vec![n; len];
                        match p.push(&[&rec]) {
                            Ok(Pushed::Done { .. }) => model.push_back(rec),
                            Ok(Pushed::Full) => {
                                if !scribbled {
                                    let used: usize = model.iter().map(|r| footprint(r.len())).sum();
                                    prop_assert!(used + 2 * footprint(len) > 4096 - 1024);
                                }
                            }
                            Err(ChanError::TooLarge { .. }) => prop_assert!(len > 1016),
                            Err(e) => prop_assert!(scribbled, "{e}"),
                        }
                    }
                    Op::Pop => {
                        let mut out = Vec::new();
                        match c.pop_into(&mut out) {
                            Ok(Some(len)) => {
                                prop_assert_eq!(len, out.len());
                                prop_assert!(len <= 1016);
                                if !scribbled {
                                    prop_assert_eq!(Some(out), model.pop_front());
                                }
                            }
                            Ok(None) => if !scribbled { prop_assert!(model.is_empty()) },
                            Err(ChanError::Corrupt(_)) => prop_assert!(scribbled),
                            Err(e) => prop_assert!(false, "{e}"),
                        }
                    }
                    Op::Scribble(off, v) => {
                        mem.mem.write_u32(off, v).unwrap();
                        scribbled = true;
                    }
                }
            }
        }
    }

    proptest! {
        /// Read as bytes, the channel is the concatenation of its records whatever the read
        /// sizes; a record taken in part keeps its place and is not slept over; a close is
        /// reported once everything before it was read, never earlier. Scribbles give Corrupt,
        /// never a panic.
        #[test]
        fn read_bytes_is_the_concatenation(
            steps in prop::collection::vec((0usize..1100, 0usize..1500, any::<bool>()), 1..200),
            close_at in 0usize..250,
            scribble in proptest::option::of((0usize..(DATA_OFFSET + 4096) / 4, any::<u32>())),
        ) {
            let (mut p, mut c, mem) = pair(4096);
            let mut want: VecDeque<u8> = VecDeque::new();
            let (mut n, mut closed) = (0u8, false);
            for (i, &(push, read, sleep)) in steps.iter().enumerate() {
                if let Some((w, v)) = scribble && i == steps.len() / 2 {
                    mem.mem.write_u32(w * 4, v).unwrap();
                }
                let scribbled = scribble.is_some() && i >= steps.len() / 2;
                if i == close_at {
                    p.close().unwrap();
                    closed = true;
                }
                n = n.wrapping_add(1);
                let rec: Vec<u8> = (0..push.clamp(1, 1016)).map(|k| n.wrapping_add(k as u8)).collect();
                if !closed {
                    match p.push(&[&rec]) {
                        Ok(Pushed::Done { .. }) => want.extend(&rec),
                        Ok(Pushed::Full) => {}
                        Err(e) => { prop_assert!(scribbled, "{e}"); return Ok(()); }
                    }
                }
                let mut out = vec![0u8; read];
                match c.read_bytes(&mut out) {
                    Ok((k, end)) => {
                        prop_assert!(k <= read);
                        if !scribbled {
                            let got: Vec<u8> = want.drain(..k).collect();
                            prop_assert_eq!(&out[..k], &got[..]);
                            prop_assert!(k == read || want.is_empty(), "short read with data left");
                            prop_assert_eq!(end, closed && want.is_empty());
                            prop_assert_eq!(c.is_empty().unwrap(), want.is_empty());
                            if sleep {
                                prop_assert_eq!(c.prepare_sleep().unwrap(), want.is_empty() && !closed);
                            }
                        }
                    }
                    Err(ChanError::Corrupt(_)) => { prop_assert!(scribbled); return Ok(()); }
                    Err(e) => prop_assert!(false, "{e}"),
                }
            }
        }
    }

    /// Two threads, two mappings, the doorbell protocol over a socket pair: every record arrives,
    /// in order, and nobody sleeps through a record or a free slot.
    #[test]
    fn concurrent_producer_and_consumer_with_doorbells() {
        use std::io::{Read, Write};
        use std::os::unix::net::UnixStream;
        const N: u32 = 200_000;
        let (mem, fd) = ChanMemory::create(4096).unwrap();
        let peer = ChanMemory::map(fd, 4096).unwrap();
        let (mut to_consumer, mut at_consumer) = UnixStream::pair().unwrap();
        let (mut to_producer, mut at_producer) = UnixStream::pair().unwrap();
        let producer = std::thread::spawn(move || {
            let mut p = Producer::new(&mem).unwrap();
            let mut i = 0u32;
            let mut bell = [0u8; 64];
            while i < N {
                let rec = vec![i as u8; (i % 300) as usize];
                match p.push(&[&i.to_le_bytes(), &rec]).unwrap() {
                    Pushed::Done { doorbell } => {
                        if doorbell {
                            to_consumer.write_all(b"!").unwrap();
                        }
                        i += 1;
                    }
                    Pushed::Full => {
                        if !p.wait_for_space(4 + rec.len()).unwrap() {
                            let _ = at_producer.read(&mut bell).unwrap();
                        }
                    }
                }
            }
        });
        let mut c = Consumer::new(&peer).unwrap();
        let mut next = 0u32;
        let mut out = Vec::new();
        let mut bell = [0u8; 64];
        while next < N {
            out.clear();
            match c.pop_into(&mut out).unwrap() {
                Some(_) => {
                    let i = u32::from_le_bytes(out[..4].try_into().unwrap());
                    assert_eq!(i, next);
                    assert_eq!(out.len(), 4 + (i % 300) as usize);
                    assert!(out[4..].iter().all(|&b| b == i as u8));
                    next += 1;
                    if c.space_doorbell_wanted().unwrap() {
                        to_producer.write_all(b"!").unwrap();
                    }
                }
                None => {
                    if c.prepare_sleep().unwrap() {
                        let _ = at_consumer.read(&mut bell).unwrap();
                    }
                }
            }
        }
        producer.join().unwrap();
    }
}
