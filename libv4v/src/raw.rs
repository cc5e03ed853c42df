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

use std::io::IoSlice;
use std::os::fd::BorrowedFd;
use std::sync::{Mutex, MutexGuard};

use crate::abi::{
    self, Config, Info, Iov, RingDataEnt, RingDataHeader, SendAddr, TablesListHeader, TablesRule,
};
use crate::hypervisor::{HvError, Hypervisor, TablesPage};
use crate::shmem::{Pod, RingMemory};

/// A way to issue `HYPERVISOR_v4v_op` with guest addresses.
pub trait RawHypercall: Send + Sync {
    /// Issues `v4v_op(cmd, arg1, arg2, arg3, arg4)` and returns its raw result (negative errno).
    ///
    /// # Safety
    /// Non-zero `arg1`/`arg2` must be addresses the op may read and write for the sizes the ABI
    /// gives them, valid for the whole call.
    unsafe fn v4v_op(&self, cmd: u32, arg1: u64, arg2: u64, arg3: u32, arg4: u32) -> i64;

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

/// A [`Hypervisor`] over a [`RawHypercall`].
pub struct AbiHypervisor<R: RawHypercall> {
    raw: R,
    bounce: Mutex<Option<RingMemory>>,
}

/// Bytes of bounce buffer needed for fixed arguments, beside payloads.
const ARGS_ROOM: usize = 64 * 1024;

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

    fn call(&self, cmd: u32, arg1: u64, arg2: u64, arg3: u32, arg4: u32) -> Result<u64, HvError> {
        // SAFETY: every caller passes addresses inside the bounce buffer (or ring memory), which
        // holds the structure the op expects and stays mapped and locked during the call.
        HvError::check(unsafe { self.raw.v4v_op(cmd, arg1, arg2, arg3, arg4) })
    }
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
        let n = self.call(
            abi::OP_SENDV,
            b.addr(addr_at),
            b.addr(iov_at),
            niov,
            message_type,
        )?;
        u32::try_from(n).map_err(|_| HvError::Other(0))
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
