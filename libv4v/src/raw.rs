// SPDX-License-Identifier: MIT OR Apache-2.0
//! The hypercall ABI made callable: typed [`Hypervisor`] operations marshalled into the exact
//! structures of `v4v.h` and passed by guest address to a raw `v4v_op`.
//!
//! Two backends make raw V4V hypercalls with pointers into their own address space: real Xen
//! (through `/dev/xen/privcmd`) and the C hypervisor code run in userspace by the conformance
//! harness. Both implement [`RawHypercall`]; [`AbiHypervisor`] turns either into a
//! [`Hypervisor`]. Every argument is copied into a bounce buffer the backend provides (on Xen,
//! memory from `/dev/xen/hypercall` that never faults while the hypervisor reads it), so this
//! module never hands the hypervisor a pointer into Rust-owned memory — except for the payload of
//! a send so large that the hypervisor must refuse it before reading any of it.
//!
//! [`Hypervisor::sendv_batch`] is one Xen multicall (`HYPERVISOR_multicall`, a list of
//! [`MulticallEntry`]s in the same bounce buffer, each a `V4VOP_sendv`) when the backend has one
//! ([`RawHypercall::multicall`]): a batch of datagrams costs one hypercall instead of one each.

use std::io::IoSlice;
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use crate::abi::{
    self, Config, Info, Iov, RingDataEnt, RingDataHeader, SendAddr, TablesListHeader, TablesRule,
};
use crate::hypervisor::{BatchSend, HvError, Hypervisor, TablesPage};
use crate::shmem::{Pod, RingMemory};

/// A way to issue `HYPERVISOR_v4v_op` with guest addresses.
pub trait RawHypercall: Send + Sync {
    /// Issues `v4v_op(cmd, arg1, arg2, arg3, arg4)` and returns its raw result (negative errno).
    ///
    /// # Safety
    /// Non-zero `arg1`/`arg2` must be addresses the op may read and write for the sizes the ABI
    /// gives them, valid for the whole call.
    unsafe fn v4v_op(&self, cmd: u32, arg1: u64, arg2: u64, arg3: u32, arg4: u32) -> i64;

    /// Issues `HYPERVISOR_multicall(list, count)`: the `count` [`MulticallEntry`]s at guest
    /// address `list`, in order. Returns `None` when this backend has no multicall (the default:
    /// batches then go one call per send). Otherwise the multicall's own raw result: 0 when every
    /// entry ran, each entry's result in its `result` field; a negative errno when it was
    /// rejected as a whole, in which case the entries whose `result` is still
    /// [`MULTICALL_NOT_RUN`] did not run (Xen runs them in order and writes each result before
    /// the next).
    ///
    /// # Safety
    /// `list` must hold `count` entries, each valid for [`RawHypercall::v4v_op`]'s contract, all
    /// of it memory the hypervisor may read and write for the whole call.
    unsafe fn multicall(&self, list: u64, count: u32) -> Option<i64> {
        let _ = (list, count);
        None
    }

    /// Memory for hypercall arguments: it must not fault or move while the hypervisor reads it.
    fn alloc_buffer(&self, bytes: usize) -> Result<RingMemory, HvError>;

    /// Memory for rings, which the hypervisor translates and pins at registration.
    fn alloc_ring_memory(&self, bytes: usize) -> Result<RingMemory, HvError>;

    /// A descriptor that polls readable while the domain's V4V event is pending.
    fn event_fd(&self) -> BorrowedFd<'_>;

    /// Consumes the pending event: whether one was pending.
    fn take_event(&self) -> Result<bool, HvError>;

    /// Binds V4V's event channel `port` of domain `domid` (as `V4VOP_info` now reports them) in
    /// place of the current binding; see [`Hypervisor::rebind_event`].
    fn rebind_event(&mut self, domid: u16, port: u32) -> Result<(), HvError> {
        let _ = (domid, port);
        Ok(())
    }
}

/// `struct multicall_entry` of Xen's `public/xen.h` on x86-64: a hypercall number, the result
/// the hypervisor writes back, six arguments (`xen_ulong_t` each).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MulticallEntry {
    pub op: u64,
    pub result: u64,
    pub args: [u64; 6],
}

// SAFETY: #[repr(C)] with eight u64 fields (64 bytes, no padding): every bit pattern is valid.
unsafe impl Pod for MulticallEntry {}

/// What an entry's `result` holds until the hypervisor has run it. No `v4v_op` returns it: its
/// results are a negative errno (-4095..=-1) or a length of at most 16 MiB.
pub const MULTICALL_NOT_RUN: u64 = 0x7634_765f_6e6f_7452;

impl MulticallEntry {
    /// The entry for `v4v_op(cmd, arg1, arg2, arg3, arg4)`, marked not run.
    pub fn v4v_op(cmd: u32, arg1: u64, arg2: u64, arg3: u32, arg4: u32) -> Self {
        MulticallEntry {
            op: abi::HYPERVISOR_V4V_OP,
            result: MULTICALL_NOT_RUN,
            args: [
                u64::from(cmd),
                arg1,
                arg2,
                u64::from(arg3),
                u64::from(arg4),
                0,
            ],
        }
    }

    /// The entry's raw result (negative errno) once it ran; `None` while it is marked not run.
    pub fn outcome(&self) -> Option<i64> {
        (self.result != MULTICALL_NOT_RUN).then_some(self.result as i64)
    }
}

/// A [`Hypervisor`] over a [`RawHypercall`].
pub struct AbiHypervisor<R: RawHypercall> {
    raw: R,
    bounce: Mutex<Option<RingMemory>>,
    /// Set once batches go one call per send: the backend has no multicall, or the hypervisor
    /// rejected one as a whole.
    no_multicall: AtomicBool,
}

/// Bytes of bounce buffer needed for fixed arguments, beside payloads.
const ARGS_ROOM: usize = 64 * 1024;

/// Most sends in one multicall (v4vd's datagram batches are at most 64).
pub const MAX_MULTICALL: usize = 64;
/// Most bounce-buffer bytes one multicall's sends take (arguments and payloads together); a
/// batch larger than that is split, and a send larger than that alone goes as a plain call.
const MULTICALL_BYTES: usize = 512 * 1024;

/// Bounce-buffer bytes a send takes beside its entry (each part 16-aligned, as
/// [`Bounce::reserve`] places it), or `None` when it must go as a plain call: one the hypervisor
/// must refuse on its shape (too many iovs, too long), whose error `sendv` gives as it always has.
fn multicall_footprint(s: &BatchSend<'_>) -> Option<usize> {
    let total: u64 = s.iov.iter().map(|v| v.len() as u64).sum();
    if s.iov.len() > abi::MAX_IOV as usize || total > u64::from(abi::MAX_MESSAGE_SIZE) {
        return None;
    }
    let r16 = |n: usize| abi::roundup16(n as u64) as usize;
    let parts: usize = s.iov.iter().map(|v| r16(v.len())).sum();
    Some(r16(size_of::<SendAddr>()) + r16(s.iov.len() * size_of::<Iov>()) + parts)
}

/// How many of `sends`, from the first, one multicall takes (0: the first goes alone).
fn multicall_group(sends: &[BatchSend<'_>]) -> usize {
    let mut bytes = 0;
    let mut n = 0;
    for s in sends.iter().take(MAX_MULTICALL) {
        match multicall_footprint(s) {
            Some(f) if bytes + f <= MULTICALL_BYTES => bytes += f,
            _ => break,
        }
        n += 1;
    }
    n
}

/// A send's raw result as [`Hypervisor::sendv`] returns it: the payload length, or the error.
pub fn sendv_result(ret: i64) -> Result<u32, HvError> {
    let n = HvError::check(ret)?;
    u32::try_from(n).map_err(|_| HvError::Other(libc::EPROTO))
}

/// The bounce buffer for one call, held locked for its duration.
struct Bounce<'a> {
    _lock: MutexGuard<'a, Option<RingMemory>>,
    mem: RingMemory,
    used: usize,
}

impl Bounce<'_> {
    fn mem(&self) -> &RingMemory {
        &self.mem
    }

    /// Reserves `len` bytes, 16-aligned, and returns their offset.
    fn reserve(&mut self, len: usize) -> Result<usize, HvError> {
        let at = abi::roundup16(self.used as u64) as usize;
        if at + len > self.mem().size() {
            return Err(HvError::OutOfMemory);
        }
        self.used = at + len;
        Ok(at)
    }

    fn put<T: Pod>(&mut self, value: &T) -> Result<usize, HvError> {
        let at = self.reserve(size_of::<T>())?;
        self.mem()
            .write_obj(at, value)
            .map_err(|_| HvError::OutOfMemory)?;
        Ok(at)
    }

    fn get<T: Pod>(&self, at: usize) -> Result<T, HvError> {
        self.mem().read_obj(at).map_err(|_| HvError::OutOfMemory)
    }

    fn addr(&self, at: usize) -> u64 {
        (self.mem().addr() + at) as u64
    }
}

impl<R: RawHypercall> AbiHypervisor<R> {
    pub fn new(raw: R) -> Self {
        AbiHypervisor {
            raw,
            bounce: Mutex::new(None),
            no_multicall: AtomicBool::new(false),
        }
    }

    pub fn raw(&self) -> &R {
        &self.raw
    }

    pub fn into_raw(self) -> R {
        self.raw
    }

    /// The bounce buffer, at least `payload` bytes beside the fixed arguments.
    fn bounce(&self, payload: usize) -> Result<Bounce<'_>, HvError> {
        let mut lock = self.bounce.lock().unwrap_or_else(|e| e.into_inner());
        let need = ARGS_ROOM + payload;
        let mem = match lock.as_ref() {
            Some(m) if m.size() >= need => m.clone(),
            _ => {
                let m = self.raw.alloc_buffer(need)?;
                *lock = Some(m.clone());
                m
            }
        };
        Ok(Bounce {
            _lock: lock,
            mem,
            used: 0,
        })
    }

    /// `group` (from [`multicall_group`]) as one multicall; its results are appended to
    /// `results`, in order. Sends the multicall did not run go as plain calls after it.
    fn sendv_multicall(&self, group: &[BatchSend<'_>], results: &mut Vec<Result<u32, HvError>>) {
        let outcomes = match self.multicall_sendv(group) {
            Ok(o) => o,
            // Marshalling failed (no bounce memory): the plain calls say why, one by one.
            Err(_) => vec![None; group.len()],
        };
        for (s, o) in group.iter().zip(outcomes) {
            results.push(match o {
                Some(ret) => sendv_result(ret),
                None => self.sendv(&s.addr, s.iov, s.message_type),
            });
        }
    }

    /// Marshals `group` into the bounce buffer, issues the multicall and returns each entry's
    /// raw result, `None` for those that did not run (all of them when the backend has no
    /// multicall). A multicall rejected as a whole turns multicalls off for this handle, with a
    /// log line saying so.
    fn multicall_sendv(&self, group: &[BatchSend<'_>]) -> Result<Vec<Option<i64>>, HvError> {
        let bytes: usize = group.iter().filter_map(multicall_footprint).sum();
        let entries = group.len() * size_of::<MulticallEntry>();
        let mut b = self.bounce(bytes + entries)?;
        let list_at = b.reserve(entries)?;
        for (i, s) in group.iter().enumerate() {
            let (addr_at, iov_at, niov) = put_sendv(&mut b, &s.addr, s.iov, true)?;
            let entry = MulticallEntry::v4v_op(
                abi::OP_SENDV,
                b.addr(addr_at),
                b.addr(iov_at),
                niov,
                s.message_type,
            );
            b.mem()
                .write_obj(list_at + i * size_of::<MulticallEntry>(), &entry)
                .map_err(|_| HvError::OutOfMemory)?;
        }
        let count = u32::try_from(group.len()).map_err(|_| HvError::TooMany)?;
        // SAFETY: the list and every address its entries carry are inside the bounce buffer,
        // which holds the structures V4VOP_sendv expects and stays mapped and locked (we hold
        // its lock) for the call.
        let rc = unsafe { self.raw.multicall(b.addr(list_at), count) };
        // (The entries were written at these offsets: reading them back cannot fail. Were it
        // to, the send counts as failed, never as not run: it is not sent twice.)
        let outcomes: Vec<Option<i64>> = (0..group.len())
            .map(|i| {
                b.get::<MulticallEntry>(list_at + i * size_of::<MulticallEntry>())
                    .map_or(Some(-i64::from(libc::EIO)), |e| e.outcome())
            })
            .collect();
        match rc {
            None => {
                self.no_multicall.store(true, Ordering::Relaxed);
                return Ok(vec![None; group.len()]);
            }
            Some(rc) if rc < 0 => {
                self.no_multicall.store(true, Ordering::Relaxed);
                let ran = outcomes.iter().filter(|o| o.is_some()).count();
                let e = HvError::from_errno(i32::try_from(-rc).unwrap_or(i32::MAX));
                tracing::warn!(
                    errno = e.errno(),
                    "the hypervisor rejected a multicall of {} V4V sends as a whole ({e}); \
                     {ran} of them ran, the other {} and every later send go as one \
                     hypercall each",
                    group.len(),
                    group.len() - ran,
                );
            }
            Some(_) => {}
        }
        Ok(outcomes)
    }

    fn call(&self, cmd: u32, arg1: u64, arg2: u64, arg3: u32, arg4: u32) -> Result<u64, HvError> {
        // SAFETY: every caller passes addresses inside the bounce buffer (or ring memory), which
        // holds the structure the op expects and stays mapped and locked during the call.
        HvError::check(unsafe { self.raw.v4v_op(cmd, arg1, arg2, arg3, arg4) })
    }
}

/// Puts a `V4VOP_sendv`'s address and iov array (and, with `bounce_payload`, every payload
/// byte, the iovs pointing at the copies) into `b`. Returns the offsets of the address and of
/// the iov array, and the iov count.
fn put_sendv(
    b: &mut Bounce<'_>,
    addr: &SendAddr,
    iov: &[IoSlice<'_>],
    bounce_payload: bool,
) -> Result<(usize, usize, u32), HvError> {
    let addr_at = b.put(addr)?;
    let iov_at = b.reserve(iov.len() * size_of::<Iov>())?;
    for (i, s) in iov.iter().enumerate() {
        let base = if bounce_payload {
            let at = b.reserve(s.len())?;
            b.mem()
                .write_bytes(at, s)
                .map_err(|_| HvError::OutOfMemory)?;
            b.addr(at)
        } else {
            s.as_ptr() as u64
        };
        let len = u32::try_from(s.len()).map_err(|_| HvError::MessageTooBig)?;
        let entry = Iov {
            iov_base: base,
            iov_len: len,
            pad: 0,
        };
        b.mem()
            .write_obj(iov_at + i * size_of::<Iov>(), &entry)
            .map_err(|_| HvError::OutOfMemory)?;
    }
    let niov = u32::try_from(iov.len()).map_err(|_| HvError::TooMany)?;
    Ok((addr_at, iov_at, niov))
}

impl<R: RawHypercall> Hypervisor for AbiHypervisor<R> {
    fn alloc_ring_memory(&self, bytes: usize) -> Result<RingMemory, HvError> {
        self.raw.alloc_ring_memory(bytes)
    }

    fn register_ring(&self, mem: &RingMemory, offset: usize) -> Result<(), HvError> {
        let va = mem.addr().checked_add(offset).ok_or(HvError::BadAddress)?;
        self.call(abi::OP_REGISTER_RING, va as u64, 0, 0, 0)
            .map(drop)
    }

    fn unregister_ring(&self, mem: &RingMemory, offset: usize) -> Result<(), HvError> {
        let va = mem.addr().checked_add(offset).ok_or(HvError::BadAddress)?;
        self.call(abi::OP_UNREGISTER_RING, va as u64, 0, 0, 0)
            .map(drop)
    }

    fn sendv(
        &self,
        addr: &SendAddr,
        iov: &[IoSlice<'_>],
        message_type: u32,
    ) -> Result<u32, HvError> {
        let total: u64 = iov.iter().map(|s| s.len() as u64).sum();
        // A send the hypervisor must refuse on its length alone is passed without copying the
        // payload: it may be far larger than any buffer (iovs may alias one region).
        let bounce_payload = total <= u64::from(abi::MAX_MESSAGE_SIZE);
        let mut b = self.bounce(if bounce_payload { total as usize } else { 0 })?;
        let (addr_at, iov_at, niov) = put_sendv(&mut b, addr, iov, bounce_payload)?;
        let n = self.call(
            abi::OP_SENDV,
            b.addr(addr_at),
            b.addr(iov_at),
            niov,
            message_type,
        )?;
        u32::try_from(n).map_err(|_| HvError::Other(libc::EPROTO))
    }

    /// One multicall per [`MAX_MULTICALL`] sends (or [`MULTICALL_BYTES`] of them) when the
    /// backend has multicalls; a send too large to share one, and every send once the backend
    /// turned out to have none or the hypervisor rejected one, is a plain `sendv`.
    fn sendv_batch(&self, sends: &[BatchSend<'_>], results: &mut Vec<Result<u32, HvError>>) {
        results.clear();
        let mut start = 0;
        while start < sends.len() {
            let n = if self.no_multicall.load(Ordering::Relaxed) {
                0
            } else {
                multicall_group(&sends[start..])
            };
            if n < 2 {
                // One send costs one hypercall either way.
                let s = &sends[start];
                results.push(self.sendv(&s.addr, s.iov, s.message_type));
                start += 1;
                continue;
            }
            self.sendv_multicall(&sends[start..start + n], results);
            start += n;
        }
    }

    fn notify(&self, entries: Option<&mut [RingDataEnt]>) -> Result<(), HvError> {
        let Some(ents) = entries else {
            return self.call(abi::OP_NOTIFY, 0, 0, 0, 0).map(drop);
        };
        let mut b = self.bounce(size_of_val(ents))?;
        let nent = u32::try_from(ents.len()).map_err(|_| HvError::TooMany)?;
        let head = RingDataHeader {
            magic: abi::RING_DATA_MAGIC,
            nent,
            ..Default::default()
        };
        let at = b.put(&head)?;
        // The entries follow the header contiguously (20 bytes each: not 16-aligned).
        let first = b.reserve(size_of_val(ents))?;
        debug_assert_eq!(first, at + size_of::<RingDataHeader>());
        for (i, e) in ents.iter().enumerate() {
            b.mem()
                .write_obj(first + i * size_of::<RingDataEnt>(), e)
                .map_err(|_| HvError::OutOfMemory)?;
        }
        self.call(abi::OP_NOTIFY, b.addr(at), 0, 0, 0)?;
        for (i, e) in ents.iter_mut().enumerate() {
            *e = b.get(first + i * size_of::<RingDataEnt>())?;
        }
        Ok(())
    }

    fn info(&self) -> Result<Info, HvError> {
        let mut b = self.bounce(0)?;
        let at = b.put(&Info::default())?;
        self.call(abi::OP_INFO, b.addr(at), 0, 0, 0)?;
        b.get(at)
    }

    fn config(&self, config: &Config) -> Result<(), HvError> {
        let mut b = self.bounce(0)?;
        let at = b.put(config)?;
        self.call(abi::OP_CONFIG, b.addr(at), 0, 0, 0).map(drop)
    }

    fn tables_add(&self, rule: &TablesRule, position: u32) -> Result<(), HvError> {
        let mut b = self.bounce(0)?;
        let at = b.put(rule)?;
        self.call(abi::OP_TABLES_ADD, b.addr(at), 0, position, 0)
            .map(drop)
    }

    fn tables_del(&self, rule: Option<&TablesRule>, position: u32) -> Result<(), HvError> {
        let mut b = self.bounce(0)?;
        let arg = match rule {
            Some(r) => {
                let at = b.put(r)?;
                b.addr(at)
            }
            None => 0,
        };
        self.call(abi::OP_TABLES_DEL, arg, 0, position, 0).map(drop)
    }

    fn tables_list(&self, start: u32, max: u32) -> Result<TablesPage, HvError> {
        // Room for what the hypervisor may write; a larger request is its to refuse, so send
        // it as asked but never let the hypervisor write past the buffer.
        let room = max.min(abi::MAX_RULES) as usize;
        let mut b = self.bounce(room * size_of::<TablesRule>())?;
        let at = b.put(&TablesListHeader {
            start_rule: start,
            nb_rules: max,
        })?;
        b.reserve(room * size_of::<TablesRule>())?;
        let total = self.call(abi::OP_TABLES_LIST, b.addr(at), 0, 0, 0)?;
        let head: TablesListHeader = b.get(at)?;
        let n = (head.nb_rules as usize).min(room);
        let first = at + size_of::<TablesListHeader>();
        let rules = (0..n)
            .map(|i| b.get(first + i * size_of::<TablesRule>()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TablesPage {
            rules,
            total: u32::try_from(total).unwrap_or(u32::MAX),
        })
    }

    fn event_fd(&self) -> BorrowedFd<'_> {
        self.raw.event_fd()
    }

    fn take_event(&self) -> Result<bool, HvError> {
        self.raw.take_event()
    }

    fn rebind_event(&mut self) -> Result<(), HvError> {
        let info = self.info()?;
        self.raw.rebind_event(info.domid, info.evtchn)
    }
}

#[cfg(test)]
mod tests {
    //! The multicall path against a fake hypervisor that reads what a real one would: the entry
    //! list, each entry's `SendAddr`, iov array and payloads, all by address. It checks that
    //! every address lies in memory it handed out as argument memory, answers each send by its
    //! destination port, and writes results back as a debug Xen does (the rest of the entry
    //! overwritten, so that nothing but `result` may be relied on).
    use std::os::fd::AsFd;

    use super::*;
    use crate::abi::{Addr, errno};
    use crate::event::EventFd;

    /// Port whose sends the fake's ACL refuses.
    const DENIED_PORT: u32 = 13;
    /// Port whose ring is full.
    const FULL_PORT: u32 = 11;

    #[derive(Clone, Copy, PartialEq, Eq, Debug)]
    enum Mode {
        /// Multicalls run every entry.
        Works,
        /// No multicall (the C harness).
        Absent,
        /// The multicall runs this many entries, then fails as a whole with EFAULT.
        RejectAfter(usize),
    }

    /// One send the fake delivered: destination port, payload, message type, and whether it
    /// came in a multicall.
    type Delivered = (u32, Vec<u8>, u32, bool);

    struct Fake {
        mode: Mode,
        event: EventFd,
        /// (address, size) of every argument buffer handed out (kept mapped).
        buffers: Mutex<Vec<RingMemory>>,
        delivered: Mutex<Vec<Delivered>>,
        /// (multicalls, entries in them, single v4v_ops).
        calls: Mutex<(usize, usize, usize)>,
    }

    impl Fake {
        fn new(mode: Mode) -> Self {
            Fake {
                mode,
                event: EventFd::new().expect("eventfd"),
                buffers: Mutex::new(Vec::new()),
                delivered: Mutex::new(Vec::new()),
                calls: Mutex::new((0, 0, 0)),
            }
        }

        /// Panics unless `addr..addr+len` lies inside one argument buffer.
        fn check_arg(&self, addr: u64, len: usize, what: &str) {
            let bufs = self.buffers.lock().unwrap();
            let a = addr as usize;
            assert!(
                bufs.iter()
                    .any(|m| a >= m.addr() && a + len <= m.addr() + m.size()),
                "{what} at {a:#x}+{len} is not in hypercall argument memory"
            );
        }

        /// Reads a `T` at a checked argument address.
        fn read<T: Pod>(&self, addr: u64, what: &str) -> T {
            self.check_arg(addr, size_of::<T>(), what);
            // SAFETY: the range is inside a live mapping this fake handed out (checked above);
            // unaligned reads of plain data.
            unsafe { std::ptr::read_unaligned(addr as usize as *const T) }
        }

        /// A `V4VOP_sendv` as the fake hypervisor runs it.
        fn sendv(&self, args: [u64; 5], in_multicall: bool) -> i64 {
            assert_eq!(args[0], u64::from(abi::OP_SENDV), "only sends are batched");
            let addr: SendAddr = self.read(args[1], "send address");
            let niov = args[3] as usize;
            let mut payload = Vec::new();
            for i in 0..niov {
                let v: Iov = self.read(args[2] + (i * size_of::<Iov>()) as u64, "iov");
                self.check_arg(v.iov_base, v.iov_len as usize, "payload");
                let mut part = vec![0u8; v.iov_len as usize];
                // SAFETY: checked to be inside a live argument buffer just above.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        v.iov_base as usize as *const u8,
                        part.as_mut_ptr(),
                        part.len(),
                    )
                };
                payload.extend(part);
            }
            match addr.dst.port {
                DENIED_PORT => -i64::from(errno::EACCES),
                FULL_PORT => -i64::from(errno::EAGAIN),
                port => {
                    let n = payload.len() as i64;
                    self.delivered.lock().unwrap().push((
                        port,
                        payload,
                        args[4] as u32,
                        in_multicall,
                    ));
                    n
                }
            }
        }

        fn delivered(&self) -> Vec<Delivered> {
            self.delivered.lock().unwrap().clone()
        }

        fn calls(&self) -> (usize, usize, usize) {
            *self.calls.lock().unwrap()
        }
    }

    impl RawHypercall for Fake {
        unsafe fn v4v_op(&self, cmd: u32, arg1: u64, arg2: u64, arg3: u32, arg4: u32) -> i64 {
            self.calls.lock().unwrap().2 += 1;
            self.sendv(
                [u64::from(cmd), arg1, arg2, u64::from(arg3), u64::from(arg4)],
                false,
            )
        }

        unsafe fn multicall(&self, list: u64, count: u32) -> Option<i64> {
            let limit = match self.mode {
                Mode::Absent => return None,
                Mode::Works => usize::MAX,
                Mode::RejectAfter(k) => k,
            };
            {
                let mut c = self.calls.lock().unwrap();
                c.0 += 1;
                c.1 += count as usize;
            }
            for i in 0..count as usize {
                if i == limit {
                    return Some(-i64::from(errno::EFAULT));
                }
                let at = list + (i * size_of::<MulticallEntry>()) as u64;
                let e: MulticallEntry = self.read(at, "multicall entry");
                assert_eq!(e.op, abi::HYPERVISOR_V4V_OP, "entry {i}");
                assert_eq!(e.args[5], 0, "entry {i}: the sixth argument is unused");
                let r = self.sendv(
                    [e.args[0], e.args[1], e.args[2], e.args[3], e.args[4]],
                    true,
                );
                let written = MulticallEntry {
                    op: 0xaaaa_aaaa_aaaa_aaaa,
                    result: r as u64,
                    args: [0xaaaa_aaaa_aaaa_aaaa; 6],
                };
                // SAFETY: `at` was checked to be inside an argument buffer by the read above.
                unsafe { std::ptr::write_unaligned(at as usize as *mut MulticallEntry, written) };
            }
            Some(0)
        }

        fn alloc_buffer(&self, bytes: usize) -> Result<RingMemory, HvError> {
            let m = RingMemory::anonymous(bytes).map_err(|_| HvError::OutOfMemory)?;
            self.buffers.lock().unwrap().push(m.clone());
            Ok(m)
        }

        fn alloc_ring_memory(&self, bytes: usize) -> Result<RingMemory, HvError> {
            self.alloc_buffer(bytes)
        }

        fn event_fd(&self) -> BorrowedFd<'_> {
            self.event.as_fd()
        }

        fn take_event(&self) -> Result<bool, HvError> {
            Ok(false)
        }
    }

    fn addr(port: u32) -> SendAddr {
        SendAddr {
            src: Addr::new(1, 4000),
            dst: Addr::new(0, port),
        }
    }

    /// Payload `i` of a test batch: distinct bytes, length 1 + i * 7.
    fn payload(i: usize) -> Vec<u8> {
        (0..1 + i * 7).map(|b| (b * 31 + i) as u8).collect()
    }

    #[test]
    fn multicall_entry_is_xens_layout() {
        assert_eq!(size_of::<MulticallEntry>(), 64);
        assert_eq!(std::mem::offset_of!(MulticallEntry, op), 0);
        assert_eq!(std::mem::offset_of!(MulticallEntry, result), 8);
        assert_eq!(std::mem::offset_of!(MulticallEntry, args), 16);
        let e = MulticallEntry::v4v_op(abi::OP_SENDV, 0x1000, 0x2000, 3, 0x3c2c_1db8);
        assert_eq!(e.op, 43);
        assert_eq!(e.args, [5, 0x1000, 0x2000, 3, 0x3c2c_1db8, 0]);
        assert_eq!(e.outcome(), None, "a new entry has not run");
        for ret in [0i64, 1, 65_536, i64::from(abi::MAX_MESSAGE_SIZE), -1, -4095] {
            let ran = MulticallEntry {
                result: ret as u64,
                ..e
            };
            assert_eq!(
                ran.outcome(),
                Some(ret),
                "{ret} is a result, not the marker"
            );
        }
    }

    #[test]
    fn results_map_to_errors_per_send() {
        assert_eq!(sendv_result(0), Ok(0));
        assert_eq!(sendv_result(4096), Ok(4096));
        assert_eq!(sendv_result(-13), Err(HvError::Denied));
        assert_eq!(sendv_result(-11), Err(HvError::WouldBlock));
        assert_eq!(sendv_result(-111), Err(HvError::Refused));
        assert_eq!(sendv_result(-90), Err(HvError::MessageTooBig));
        assert_eq!(sendv_result(1 << 40), Err(HvError::Other(libc::EPROTO)));
    }

    #[test]
    fn a_batch_is_one_multicall_with_a_result_per_send() {
        let hv = AbiHypervisor::new(Fake::new(Mode::Works));
        let p: Vec<Vec<u8>> = (0..6).map(payload).collect();
        // The third send has its payload in two iovs.
        let iovs: Vec<Vec<IoSlice<'_>>> = p
            .iter()
            .enumerate()
            .map(|(i, b)| match i {
                2 => vec![IoSlice::new(&b[..5]), IoSlice::new(&b[5..])],
                _ => vec![IoSlice::new(b)],
            })
            .collect();
        let ports = [5000, DENIED_PORT, 5001, FULL_PORT, 5002, 5000];
        let sends: Vec<BatchSend<'_>> = iovs
            .iter()
            .zip(ports)
            .enumerate()
            .map(|(i, (iov, port))| BatchSend {
                addr: addr(port),
                iov,
                message_type: 0x100 + i as u32,
            })
            .collect();
        let mut results = vec![Ok(99)]; // cleared first
        hv.sendv_batch(&sends, &mut results);
        let len = |i: usize| p[i].len() as u32;
        assert_eq!(
            results,
            vec![
                Ok(len(0)),
                Err(HvError::Denied),
                Ok(len(2)),
                Err(HvError::WouldBlock),
                Ok(len(4)),
                Ok(len(5)),
            ]
        );
        assert_eq!(
            hv.raw().calls(),
            (1, 6, 0),
            "one multicall of six, no single call"
        );
        let want: Vec<Delivered> = [(0, 5000), (2, 5001), (4, 5002), (5, 5000)]
            .into_iter()
            .map(|(i, port)| (port, p[i].clone(), 0x100 + i as u32, true))
            .collect();
        assert_eq!(hv.raw().delivered(), want);

        // The next batch is a multicall again, the bounce buffer reused.
        hv.sendv_batch(&sends[..2], &mut results);
        assert_eq!(results, vec![Ok(len(0)), Err(HvError::Denied)]);
        assert_eq!(hv.raw().calls(), (2, 8, 0));
    }

    #[test]
    fn a_batch_splits_by_count_and_bytes_and_big_sends_go_alone() {
        let hv = AbiHypervisor::new(Fake::new(Mode::Works));
        let small = vec![7u8; 64];
        let small_iov = [IoSlice::new(&small)];
        let one = |iov| BatchSend {
            addr: addr(6000),
            iov,
            message_type: 1,
        };
        // 150 small sends: 64 + 64 + 22.
        let sends = vec![one(&small_iov); 150];
        let mut results = Vec::new();
        hv.sendv_batch(&sends, &mut results);
        assert_eq!(results, vec![Ok(64); 150]);
        assert_eq!(hv.raw().calls(), (3, 150, 0));

        // 200 KiB sends: two per multicall (512 KiB of arguments at most); one of 600 KiB
        // between them goes as a plain call, and so does a send of more iovs than the
        // hypervisor takes (its error is the plain call's).
        let big = vec![1u8; 200 * 1024];
        let huge = vec![2u8; 600 * 1024];
        let big_iov = [IoSlice::new(&big)];
        let huge_iov = [IoSlice::new(&huge)];
        let many: Vec<IoSlice<'_>> = (0..=abi::MAX_IOV)
            .map(|_| IoSlice::new(&small[..1]))
            .collect();
        let sends = vec![
            one(&big_iov),
            one(&big_iov),
            one(&big_iov),
            one(&huge_iov),
            one(&many),
            one(&big_iov),
            one(&big_iov),
        ];
        hv.sendv_batch(&sends, &mut results);
        let b = big.len() as u32;
        assert_eq!(
            results,
            vec![
                Ok(b),
                Ok(b),
                Ok(b),
                Ok(huge.len() as u32),
                Ok(abi::MAX_IOV + 1),
                Ok(b),
                Ok(b)
            ]
        );
        // [big, big] multicall, big alone (the next is huge), huge alone, many alone,
        // [big, big] multicall.
        assert_eq!(hv.raw().calls(), (5, 154, 3));
        let order: Vec<(usize, bool)> = hv.raw().delivered()[150..]
            .iter()
            .map(|d| (d.1.len(), d.3))
            .collect();
        assert_eq!(
            order,
            vec![
                (big.len(), true),
                (big.len(), true),
                (big.len(), false),
                (huge.len(), false),
                (abi::MAX_IOV as usize + 1, false),
                (big.len(), true),
                (big.len(), true),
            ]
        );
    }

    #[test]
    fn a_rejected_multicall_sends_the_rest_alone_and_never_twice() {
        let hv = AbiHypervisor::new(Fake::new(Mode::RejectAfter(2)));
        let p: Vec<Vec<u8>> = (0..5).map(payload).collect();
        let iovs: Vec<[IoSlice<'_>; 1]> = p.iter().map(|b| [IoSlice::new(b)]).collect();
        let ports = [5000, DENIED_PORT, 5001, DENIED_PORT, 5002];
        let sends: Vec<BatchSend<'_>> = iovs
            .iter()
            .zip(ports)
            .map(|(iov, port)| BatchSend {
                addr: addr(port),
                iov,
                message_type: 7,
            })
            .collect();
        let mut results = Vec::new();
        hv.sendv_batch(&sends, &mut results);
        let len = |i: usize| p[i].len() as u32;
        assert_eq!(
            results,
            vec![
                Ok(len(0)),
                Err(HvError::Denied),
                Ok(len(2)),
                Err(HvError::Denied),
                Ok(len(4)),
            ]
        );
        // Two ran in the multicall; the three it did not run went alone, once each.
        assert_eq!(hv.raw().calls(), (1, 5, 3));
        let got: Vec<(u32, bool)> = hv.raw().delivered().iter().map(|d| (d.0, d.3)).collect();
        assert_eq!(got, vec![(5000, true), (5001, false), (5002, false)]);

        // From now on, one call per send: no multicall is tried again.
        hv.sendv_batch(&sends[..3], &mut results);
        assert_eq!(results, vec![Ok(len(0)), Err(HvError::Denied), Ok(len(2))]);
        assert_eq!(hv.raw().calls(), (1, 5, 6));
    }

    #[test]
    fn without_multicall_a_batch_is_one_call_per_send() {
        let hv = AbiHypervisor::new(Fake::new(Mode::Absent));
        let p = payload(3);
        let iov = [IoSlice::new(&p)];
        let send = |port| BatchSend {
            addr: addr(port),
            iov: &iov,
            message_type: 7,
        };
        let sends = [send(5000), send(DENIED_PORT), send(5001)];
        let mut results = Vec::new();
        for round in 1..=2 {
            hv.sendv_batch(&sends, &mut results);
            let n = p.len() as u32;
            assert_eq!(results, vec![Ok(n), Err(HvError::Denied), Ok(n)]);
            assert_eq!(hv.raw().calls(), (0, 0, 3 * round));
        }
        assert!(hv.raw().delivered().iter().all(|d| !d.3));
    }
}
