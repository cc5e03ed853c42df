// SPDX-License-Identifier: MIT OR Apache-2.0
//! Shared ring memory: the one place that touches memory another party writes concurrently.
//!
//! A [`RingMemory`] is a page-aligned mapping shared with a writer we do not trust: the
//! hypervisor (on Xen, through pages it pinned), the simulator process (through a memfd), or the
//! guest's own buggy code. Every access here is bounds-checked against the mapping and is either
//! volatile or atomic, so the compiler neither invents nor elides reads of memory that can change
//! underneath us; the one exception is the bulk copy of payload bytes (`copy_in`, `copy_out`,
//! `append_to_vec`), one `memcpy` into or out of private memory (see `bulk_copy` for why). Callers above this layer deal only in offsets and values; none of them holds a
//! reference into the mapping. What the bytes *mean* is the ring module's business, not this one's.

use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use thiserror::Error;

/// The granule of ring memory: rings start on a page boundary.
pub const PAGE_SIZE: usize = 4096;

/// Errors of this layer.
#[derive(Debug, Error, PartialEq, Eq, Clone, Copy)]
pub enum ShmemError {
    #[error("access of {len} bytes at offset {offset} is outside the {size}-byte mapping")]
    OutOfBounds {
        offset: usize,
        len: usize,
        size: usize,
    },
    #[error("atomic access at offset {offset} is not 4-byte aligned")]
    Misaligned { offset: usize },
    #[error("could not create shared memory: {0}")]
    Os(#[source] OsErrno),
}

/// An errno from the host OS, displayed with its message.
#[derive(Debug, PartialEq, Eq, Clone, Copy, Error)]
#[error("{}", std::io::Error::from_raw_os_error(*.0))]
pub struct OsErrno(pub i32);

impl OsErrno {
    pub(crate) fn last() -> Self {
        OsErrno(
            std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO),
        )
    }
}

/// Plain-old-data ABI types that may be read from and written to shared memory as bytes.
///
/// # Safety
/// Implementors must be `#[repr(C)]`, have no implicit padding, and be valid for every bit
/// pattern (integers and arrays of integers only).
pub unsafe trait Pod: Copy + Default {}

// SAFETY: each of these is #[repr(C)] with integer fields only and explicit padding fields, so
// every byte is part of a field and every bit pattern is a valid value (checked for padding by the
// size assertions in tests/abi_header.rs, which compare against the C compiler's layout).
unsafe impl Pod for crate::abi::RingHeader {}
// SAFETY: as above.
unsafe impl Pod for crate::abi::MessageHeader {}
// SAFETY: as above.
unsafe impl Pod for crate::abi::RingId {}
// SAFETY: as above.
unsafe impl Pod for crate::abi::Addr {}
// SAFETY: as above.
unsafe impl Pod for crate::abi::StreamHeader {}
// SAFETY: as above.
unsafe impl Pod for crate::abi::Iov {}
// SAFETY: as above.
unsafe impl Pod for crate::abi::SendAddr {}
// SAFETY: as above.
unsafe impl Pod for crate::abi::RingDataEnt {}
// SAFETY: as above.
unsafe impl Pod for crate::abi::RingDataHeader {}
// SAFETY: as above.
unsafe impl Pod for crate::abi::Info {}
// SAFETY: as above.
unsafe impl Pod for crate::abi::Config {}
// SAFETY: as above.
unsafe impl Pod for crate::abi::TablesRule {}
// SAFETY: as above.
unsafe impl Pod for crate::abi::TablesListHeader {}

struct Mapping {
    ptr: NonNull<u8>,
    size: usize,
    fd: Option<OwnedFd>,
}

// SAFETY: the mapping is plain memory that lives until drop; every access through it is volatile or
// atomic and bounds-checked, so sharing it between threads cannot create references to aliased
// memory.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: ptr/size describe a mapping created by mmap that this value owns; no reference
        // into it outlives the last clone of the RingMemory.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.size);
        }
    }
}

/// A shared, page-aligned memory region holding one or more rings. Cheap to clone: clones share
/// the mapping, which is unmapped when the last one is dropped (so a hypervisor model that holds a
/// registered ring keeps its memory alive, as Xen's page references do).
#[derive(Clone)]
pub struct RingMemory {
    map: Arc<Mapping>,
}

impl std::fmt::Debug for RingMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RingMemory")
            .field("addr", &self.map.ptr)
            .field("size", &self.map.size)
            .finish()
    }
}

/// Rounds `bytes` up to whole pages (at least one).
pub fn page_round(bytes: usize) -> usize {
    bytes.max(1).div_ceil(PAGE_SIZE) * PAGE_SIZE
}

impl RingMemory {
    /// Zeroed memory backed by a memfd, so that it can be shared with another process.
    pub fn anonymous(bytes: usize) -> Result<Self, ShmemError> {
        let size = page_round(bytes);
        // SAFETY: memfd_create takes a NUL-terminated name and flags; the result is checked.
        let raw = unsafe { libc::memfd_create(c"v4v-ring".as_ptr(), libc::MFD_CLOEXEC) };
        if raw < 0 {
            return Err(ShmemError::Os(OsErrno::last()));
        }
        // SAFETY: raw is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let len = libc::off_t::try_from(size).map_err(|_| ShmemError::Os(OsErrno(libc::EFBIG)))?;
        // SAFETY: ftruncate on a descriptor we own.
        if unsafe { libc::ftruncate(raw, len) } != 0 {
            return Err(ShmemError::Os(OsErrno::last()));
        }
        Self::map_fd(fd, size)
    }

    /// [`RingMemory::map_fd`], closing the descriptor once mapped: for memory a peer passed that
    /// is never passed on, so that holding many such mappings costs no descriptors (a
    /// daemon's clients could otherwise take the descriptors its rings need).
    pub fn map_fd_closing(fd: OwnedFd, size: usize) -> Result<Self, ShmemError> {
        let mut m = Self::map_fd(fd, size)?;
        if let Some(map) = Arc::get_mut(&mut m.map) {
            map.fd = None;
        }
        Ok(m)
    }

    /// Maps `size` bytes of a shared-memory descriptor (a memfd received from a peer).
    pub fn map_fd(fd: OwnedFd, size: usize) -> Result<Self, ShmemError> {
        use std::os::fd::AsRawFd;
        if size == 0 || !size.is_multiple_of(PAGE_SIZE) {
            return Err(ShmemError::Os(OsErrno(libc::EINVAL)));
        }
        // SAFETY: a fresh shared mapping of a descriptor we own; the result is checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(ShmemError::Os(OsErrno::last()));
        }
        let ptr = NonNull::new(ptr.cast()).ok_or(ShmemError::Os(OsErrno(libc::ENOMEM)))?;
        Ok(RingMemory {
            map: Arc::new(Mapping {
                ptr,
                size,
                fd: Some(fd),
            }),
        })
    }

    /// Takes ownership of an existing mapping (for example of `/dev/xen/hypercall`).
    ///
    /// # Safety
    /// `ptr` must be the page-aligned start of a readable and writable mapping of `size` bytes made
    /// with `mmap`, owned by nobody else, and valid until this value and its clones are dropped,
    /// when it is unmapped with `munmap`.
    pub unsafe fn from_mmap(ptr: NonNull<u8>, size: usize) -> Self {
        RingMemory {
            map: Arc::new(Mapping {
                ptr,
                size,
                fd: None,
            }),
        }
    }

    /// The size of the mapping in bytes.
    pub fn size(&self) -> usize {
        self.map.size
    }

    /// The mapping's address in this process (what a guest passes to the hypervisor).
    pub fn addr(&self) -> usize {
        self.map.ptr.as_ptr() as usize
    }

    /// The descriptor behind the mapping, when it has one.
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.map.fd.as_ref().map(|f| f.as_fd())
    }

    /// Whether two handles refer to the same mapping.
    pub fn same_mapping(&self, other: &RingMemory) -> bool {
        Arc::ptr_eq(&self.map, &other.map)
    }

    fn check(&self, offset: usize, len: usize) -> Result<*mut u8, ShmemError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.map.size => {
                // SAFETY: offset + len <= size, so the resulting pointer is within (or one past
                // the end of) the mapping.
                Ok(unsafe { self.map.ptr.as_ptr().add(offset) })
            }
            _ => Err(ShmemError::OutOfBounds {
                offset,
                len,
                size: self.map.size,
            }),
        }
    }

    fn atomic(&self, offset: usize) -> Result<&AtomicU32, ShmemError> {
        if !offset.is_multiple_of(4) {
            return Err(ShmemError::Misaligned { offset });
        }
        let p = self.check(offset, 4)?;
        // SAFETY: p is 4-aligned (the mapping is page aligned and offset is a multiple of 4),
        // within the mapping, and the mapping outlives the returned reference (tied to &self).
        // Every access to these words anywhere is atomic or volatile.
        Ok(unsafe { AtomicU32::from_ptr(p.cast()) })
    }

    /// Reads a `u32` with acquire ordering: later reads see what the writer wrote before it.
    pub fn load_acquire_u32(&self, offset: usize) -> Result<u32, ShmemError> {
        Ok(self.atomic(offset)?.load(Ordering::Acquire))
    }

    /// Stores a `u32` with release ordering: earlier reads and writes happen before it.
    pub fn store_release_u32(&self, offset: usize, value: u32) -> Result<(), ShmemError> {
        self.atomic(offset)?.store(value, Ordering::Release);
        Ok(())
    }

    /// Reads a `u32` in the single total order of sequentially consistent operations (for
    /// sleep/wake flags, where acquire/release is not enough: see `crate::chan`).
    pub fn load_seqcst_u32(&self, offset: usize) -> Result<u32, ShmemError> {
        Ok(self.atomic(offset)?.load(Ordering::SeqCst))
    }

    /// Stores a `u32`, sequentially consistent.
    pub fn store_seqcst_u32(&self, offset: usize, value: u32) -> Result<(), ShmemError> {
        self.atomic(offset)?.store(value, Ordering::SeqCst);
        Ok(())
    }

    /// Swaps a `u32`, sequentially consistent: returns the previous value.
    pub fn swap_u32(&self, offset: usize, value: u32) -> Result<u32, ShmemError> {
        Ok(self.atomic(offset)?.swap(value, Ordering::SeqCst))
    }

    /// Appends `len` payload bytes of the mapping at `offset` to `out` with one bulk copy
    /// ([`RingMemory::copy_out`]), without zeroing `out`'s new bytes first.
    pub fn append_to_vec(
        &self,
        offset: usize,
        len: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), ShmemError> {
        let src = self.check(offset, len)?;
        out.reserve(len);
        let spare = out.spare_capacity_mut();
        // SAFETY: src..src+len is inside the mapping (checked); the spare capacity holds at least
        // len bytes (reserved above) and is a distinct local buffer. Once copied, those bytes are
        // initialised, so the length may cover them.
        unsafe {
            bulk_copy(src, spare.as_mut_ptr().cast::<u8>(), len);
            out.set_len(out.len() + len);
        }
        Ok(())
    }

    /// Copies payload bytes out of the mapping in bulk: as [`RingMemory::read_bytes`], but a
    /// copy of [`BULK_MIN`] bytes or more is one `memcpy` instead of 8-byte volatile reads (the
    /// volatile loop capped a ring at 7.5 GB/s, memcpy runs at several times that). For bytes
    /// this side never interprets while they are shared (message payloads); structures and
    /// indexes are read with [`RingMemory::read_obj`] and the atomic accessors.
    pub fn copy_out(&self, offset: usize, out: &mut [u8]) -> Result<(), ShmemError> {
        let src = self.check(offset, out.len())?;
        // SAFETY: src..src+len is inside the mapping (checked); out is a distinct local buffer.
        unsafe { bulk_copy(src, out.as_mut_ptr(), out.len()) };
        Ok(())
    }

    /// Sends the bytes of `ranges` (offset, length) of the mapping, in order, on the stream
    /// socket `sock` with one `sendmsg` (`MSG_DONTWAIT | MSG_NOSIGNAL`: never blocks, never
    /// raises `SIGPIPE`), so that the kernel copies them straight from the shared pages into the
    /// socket: a receiver passes a message's payload on without copying it out first. Returns
    /// the bytes the socket took (a short count when it is nearly full; `WouldBlock` when full).
    /// What the other party writes meanwhile only changes the bytes sent, never where they come
    /// from: every range is checked against the mapping first.
    pub fn send_ranges(
        &self,
        sock: BorrowedFd<'_>,
        ranges: &[(usize, usize)],
    ) -> std::io::Result<usize> {
        use std::os::fd::AsRawFd;
        let mut iov = Vec::with_capacity(ranges.len());
        for &(offset, len) in ranges {
            let p = self
                .check(offset, len)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
            iov.push(libc::iovec {
                iov_base: p.cast(),
                iov_len: len,
            });
        }
        // SAFETY: a zeroed msghdr is valid (no name, no control data).
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = iov.as_mut_ptr();
        msg.msg_iovlen = iov.len() as _;
        loop {
            // SAFETY: every iovec points inside the mapping (checked above), which outlives the
            // call; the kernel only reads through them. msg and iov live across the call.
            let n = unsafe {
                libc::sendmsg(
                    sock.as_raw_fd(),
                    &msg,
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Copies payload bytes into the mapping in bulk (see [`RingMemory::copy_out`]).
    pub fn copy_in(&self, offset: usize, data: &[u8]) -> Result<(), ShmemError> {
        let dst = self.check(offset, data.len())?;
        // SAFETY: dst..dst+len is inside the mapping (checked); data is a distinct local buffer.
        unsafe { bulk_copy(data.as_ptr(), dst, data.len()) };
        Ok(())
    }

    /// Copies `len` payload bytes of this mapping at `offset` into `dst` at `dst_offset`, in bulk
    /// (see [`RingMemory::copy_out`]): for a hypervisor that moves a guest's payload from memory
    /// it shares with that guest straight into a ring, without a private copy in between. What
    /// either party writes meanwhile changes only the bytes copied, never where they go: both
    /// ranges are checked first. `dst` may be this very mapping, the ranges overlapping.
    pub fn copy_to(
        &self,
        offset: usize,
        dst: &RingMemory,
        dst_offset: usize,
        len: usize,
    ) -> Result<(), ShmemError> {
        let src = self.check(offset, len)?;
        let to = dst.check(dst_offset, len)?;
        if self.same_mapping(dst) {
            // SAFETY: both ranges are inside the one mapping (checked); `copy` allows overlap.
            // The shared bytes are reached only through raw pointers, as in `bulk_copy`.
            unsafe { std::ptr::copy(src, to, len) };
        } else {
            // SAFETY: each range is inside its own mapping (checked), and two mappings are
            // distinct address ranges (each is its own mmap), so the ranges do not overlap.
            unsafe { bulk_copy(src, to, len) };
        }
        Ok(())
    }

    /// Copies bytes out of the mapping with volatile reads.
    pub fn read_bytes(&self, offset: usize, out: &mut [u8]) -> Result<(), ShmemError> {
        let src = self.check(offset, out.len())?;
        // SAFETY: src..src+len is inside the mapping (checked); out is a distinct local buffer.
        unsafe { volatile_copy(src, out.as_mut_ptr(), out.len()) };
        Ok(())
    }

    /// Copies bytes into the mapping with volatile writes.
    pub fn write_bytes(&self, offset: usize, data: &[u8]) -> Result<(), ShmemError> {
        let dst = self.check(offset, data.len())?;
        // SAFETY: dst..dst+len is inside the mapping (checked); data is a distinct local buffer.
        unsafe { volatile_copy(data.as_ptr(), dst, data.len()) };
        Ok(())
    }

    /// Fills `len` bytes of the mapping with `byte`.
    pub fn fill(&self, offset: usize, len: usize, byte: u8) -> Result<(), ShmemError> {
        let dst = self.check(offset, len)?;
        for i in 0..len {
            // SAFETY: dst + i is inside the checked range.
            unsafe { dst.add(i).write_volatile(byte) };
        }
        Ok(())
    }

    /// Reads an ABI structure.
    pub fn read_obj<T: Pod>(&self, offset: usize) -> Result<T, ShmemError> {
        let mut value = T::default();
        // SAFETY: T is Pod, so viewing it as bytes and filling them with any pattern is sound.
        let bytes = unsafe {
            std::slice::from_raw_parts_mut((&mut value as *mut T).cast::<u8>(), size_of::<T>())
        };
        self.read_bytes(offset, bytes)?;
        Ok(value)
    }

    /// Writes an ABI structure.
    pub fn write_obj<T: Pod>(&self, offset: usize, value: &T) -> Result<(), ShmemError> {
        // SAFETY: T is Pod: it has no padding, so all of its bytes are initialised.
        let bytes =
            unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) };
        self.write_bytes(offset, bytes)
    }

    /// Reads a `u32` with a volatile read (no ordering).
    pub fn read_u32(&self, offset: usize) -> Result<u32, ShmemError> {
        let mut b = [0u8; 4];
        self.read_bytes(offset, &mut b)?;
        Ok(u32::from_ne_bytes(b))
    }

    /// Writes a `u32` with a volatile write (no ordering).
    pub fn write_u32(&self, offset: usize, value: u32) -> Result<(), ShmemError> {
        self.write_bytes(offset, &value.to_ne_bytes())
    }
}

/// Payload copies of at least this many bytes are one `memcpy` (see [`RingMemory::copy_out`]).
pub const BULK_MIN: usize = 256;

/// Copies `len` payload bytes between shared and private memory: short copies as
/// [`volatile_copy`], longer ones with one `memcpy`.
///
/// Why a plain copy is enough for payload: the other party may write the source (or read the
/// destination) while we copy, and then the bytes copied are some mix of what it wrote, which is
/// all a volatile copy promises too. Volatile accesses matter where a value is read and then
/// trusted (a length, an index): the compiler must not read it again and see another value. A
/// payload is copied exactly once, through raw pointers (no Rust reference to the shared bytes is
/// ever made), into memory the caller owns, and only that private copy is looked at afterwards;
/// nothing about the copy's result depends on the shared bytes staying put. Short copies keep
/// the volatile loop: that is every ABI structure, whose fields are checked after the copy.
///
/// # Safety
/// As [`volatile_copy`]: `src` valid for `len` byte reads, `dst` for `len` byte writes, the two
/// ranges not overlapping.
unsafe fn bulk_copy(src: *const u8, dst: *mut u8, len: usize) {
    if len < BULK_MIN {
        // SAFETY: the caller's guarantees are volatile_copy's.
        unsafe { volatile_copy(src, dst, len) };
    } else {
        // SAFETY: the caller guarantees both ranges are valid for len bytes and do not
        // overlap; the shared side is reached only through this raw pointer (see above).
        unsafe { std::ptr::copy_nonoverlapping(src, dst, len) };
    }
}

/// Copies `len` bytes with volatile accesses, in 8-byte words where both sides allow it.
///
/// # Safety
/// `src` must be valid for `len` byte reads and `dst` for `len` byte writes, and the two ranges
/// must not overlap.
unsafe fn volatile_copy(src: *const u8, dst: *mut u8, len: usize) {
    let mut i = 0;
    if (src as usize) % 8 == (dst as usize) % 8 {
        while i < len && !(src as usize + i).is_multiple_of(8) {
            // SAFETY: i < len, so both pointers are within their ranges.
            unsafe { dst.add(i).write_volatile(src.add(i).read_volatile()) };
            i += 1;
        }
        while i + 8 <= len {
            // SAFETY: src + i and dst + i are 8-aligned here and 8 bytes remain in both ranges.
            unsafe {
                let w = src.add(i).cast::<u64>().read_volatile();
                dst.add(i).cast::<u64>().write_volatile(w);
            }
            i += 8;
        }
    }
    while i < len {
        // SAFETY: i < len, so both pointers are within their ranges.
        unsafe { dst.add(i).write_volatile(src.add(i).read_volatile()) };
        i += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_enforced() {
        let m = RingMemory::anonymous(100).unwrap();
        assert_eq!(m.size(), PAGE_SIZE);
        assert!(m.write_bytes(PAGE_SIZE - 4, &[1, 2, 3, 4]).is_ok());
        assert_eq!(
            m.write_bytes(PAGE_SIZE - 3, &[1, 2, 3, 4]),
            Err(ShmemError::OutOfBounds {
                offset: PAGE_SIZE - 3,
                len: 4,
                size: PAGE_SIZE
            })
        );
        assert!(m.read_u32(usize::MAX - 1).is_err());
        assert_eq!(
            m.load_acquire_u32(2),
            Err(ShmemError::Misaligned { offset: 2 })
        );
    }

    #[test]
    fn copy_to_checks_both_ranges_and_allows_overlap_within_one_mapping() {
        let a = RingMemory::anonymous(PAGE_SIZE).unwrap();
        let b = RingMemory::anonymous(2 * PAGE_SIZE).unwrap();
        let data: Vec<u8> = (0..600u32).map(|i| (i % 251) as u8).collect();
        a.copy_in(100, &data).unwrap();
        a.copy_to(100, &b, PAGE_SIZE + 7, data.len()).unwrap();
        let mut out = vec![0u8; data.len()];
        b.copy_out(PAGE_SIZE + 7, &mut out).unwrap();
        assert_eq!(out, data);
        // Past either end: refused, nothing copied.
        assert!(a.copy_to(PAGE_SIZE - 10, &b, 0, 11).is_err());
        assert!(a.copy_to(0, &b, 2 * PAGE_SIZE - 10, 11).is_err());
        assert!(a.copy_to(usize::MAX, &b, 0, 2).is_err());
        // Within one mapping, overlapping forwards: as memmove.
        a.copy_to(100, &a.clone(), 150, data.len()).unwrap();
        a.copy_out(150, &mut out).unwrap();
        assert_eq!(out, data);
    }

    #[test]
    fn memfd_mapping_is_shared_between_mappings() {
        let a = RingMemory::anonymous(2 * PAGE_SIZE).unwrap();
        let fd = a.fd().unwrap().try_clone_to_owned().unwrap();
        let b = RingMemory::map_fd(fd, a.size()).unwrap();
        assert_ne!(a.addr(), b.addr());
        a.write_bytes(5000, b"shared").unwrap();
        let mut out = [0u8; 6];
        b.read_bytes(5000, &mut out).unwrap();
        assert_eq!(&out, b"shared");
        b.store_release_u32(8, 0xdead_beef).unwrap();
        assert_eq!(a.load_acquire_u32(8).unwrap(), 0xdead_beef);
    }

    #[test]
    fn bulk_copies_round_trip_at_every_alignment_and_size() {
        let m = RingMemory::anonymous(4 * PAGE_SIZE).unwrap();
        let data: Vec<u8> = (0..3 * PAGE_SIZE)
            .map(|i| (i * 7 + i / 251) as u8)
            .collect();
        for len in [
            0,
            1,
            7,
            BULK_MIN - 1,
            BULK_MIN,
            BULK_MIN + 9,
            4000,
            3 * PAGE_SIZE - 17,
        ] {
            for off in [0, 1, 5, 8, 4093] {
                m.fill(0, m.size(), 0xEE).unwrap();
                m.copy_in(off, &data[..len]).unwrap();
                // Exactly the range is written: the bytes on either side are untouched.
                let mut all = vec![0u8; m.size()];
                m.read_bytes(0, &mut all).unwrap();
                assert!(all[..off].iter().all(|&b| b == 0xEE), "before {off}+{len}");
                assert_eq!(&all[off..off + len], &data[..len], "{off}+{len}");
                assert!(
                    all[off + len..].iter().all(|&b| b == 0xEE),
                    "after {off}+{len}"
                );
                let mut out = vec![0u8; len];
                m.copy_out(off, &mut out).unwrap();
                assert_eq!(out, &data[..len]);
                let mut v = vec![9u8; 3];
                m.append_to_vec(off, len, &mut v).unwrap();
                assert_eq!((&v[..3], &v[3..]), (&[9u8; 3][..], &data[..len]));
            }
        }
        assert!(
            m.copy_in(4 * PAGE_SIZE - BULK_MIN + 1, &data[..BULK_MIN])
                .is_err()
        );
        assert!(m.copy_out(usize::MAX, &mut [0u8; BULK_MIN]).is_err());
    }

    #[test]
    fn ranges_go_to_a_socket_straight_from_the_mapping() {
        use std::io::Read;
        use std::os::fd::AsFd;
        let m = RingMemory::anonymous(2 * PAGE_SIZE).unwrap();
        let data: Vec<u8> = (0..2 * PAGE_SIZE).map(|i| (i % 253) as u8).collect();
        m.copy_in(0, &data).unwrap();
        let (a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
        let n = m
            .send_ranges(a.as_fd(), &[(5000, 3000), (3, 100), (8000, 0)])
            .unwrap();
        assert_eq!(n, 3100);
        let mut got = vec![0u8; n];
        b.read_exact(&mut got).unwrap();
        assert_eq!(&got[..3000], &data[5000..8000]);
        assert_eq!(&got[3000..], &data[3..103]);
        // A range past the mapping is refused before anything is sent.
        let e = m
            .send_ranges(a.as_fd(), &[(0, 10), (2 * PAGE_SIZE - 1, 2)])
            .unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
        drop(b);
        // A closed peer is an error, not SIGPIPE.
        assert!(m.send_ranges(a.as_fd(), &[(0, 10)]).is_err());
    }

    #[test]
    fn unaligned_copies_round_trip() {
        let m = RingMemory::anonymous(PAGE_SIZE).unwrap();
        let data: Vec<u8> = (0..100u8).collect();
        for off in 0..9 {
            m.write_bytes(off, &data[off..]).unwrap();
            let mut out = vec![0u8; data.len() - off];
            m.read_bytes(off, &mut out).unwrap();
            assert_eq!(out, &data[off..]);
        }
    }
}
