// SPDX-License-Identifier: MIT OR Apache-2.0
//! The hypervisor interface: the V4V operations one domain can ask of its hypervisor.
//!
//! [`Hypervisor`] is implemented by every backend: the in-process model (`v4v-sim`), the
//! simulator process, and real Xen. Each value of it acts as one domain. The operations and their
//! errors are those of `v4v.h` (see `docs/abi.md`); this module only names them, it implements
//! none. Errors keep the hypervisor's errno so that callers and tests can compare exactly.

use std::io::IoSlice;
use std::os::fd::BorrowedFd;

use thiserror::Error;

use crate::abi::{Config, Info, RingDataEnt, SendAddr, TablesRule, errno};
use crate::shmem::RingMemory;

/// An error returned by the hypervisor (or by the channel to it), keeping its errno.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HvError {
    #[error("operation not permitted (EPERM)")]
    NotPermitted,
    #[error("no such ring or rule (ENOENT)")]
    NotFound,
    #[error("no such domain (ESRCH)")]
    NoSuchDomain,
    #[error("too many entries in one call (E2BIG)")]
    TooMany,
    #[error("ring full: try again when notified (EAGAIN)")]
    WouldBlock,
    #[error("hypervisor out of memory (ENOMEM)")]
    OutOfMemory,
    #[error("refused by the ACL table (EACCES)")]
    Denied,
    #[error("bad guest address (EFAULT)")]
    BadAddress,
    #[error("ring full and its waiter queue too (EBUSY)")]
    Busy,
    #[error("ring registered already with another length (EEXIST)")]
    Exists,
    #[error("invalid argument (EINVAL)")]
    Invalid,
    #[error("limit reached (ENOSPC)")]
    NoSpace,
    #[error("V4V not available: hypervisor without V4V or not enabled with v4v=1 (ENOSYS)")]
    NotAvailable,
    #[error("message too big (EMSGSIZE)")]
    MessageTooBig,
    #[error("connection refused: no such domain or ring (ECONNREFUSED)")]
    Refused,
    #[error("hypervisor interface: {}", std::io::Error::from_raw_os_error(*.0))]
    Other(i32),
}

impl HvError {
    /// The error for a (positive) errno.
    pub fn from_errno(e: i32) -> Self {
        match e {
            errno::EPERM => HvError::NotPermitted,
            errno::ENOENT => HvError::NotFound,
            errno::ESRCH => HvError::NoSuchDomain,
            errno::E2BIG => HvError::TooMany,
            errno::EAGAIN => HvError::WouldBlock,
            errno::ENOMEM => HvError::OutOfMemory,
            errno::EACCES => HvError::Denied,
            errno::EFAULT => HvError::BadAddress,
            errno::EBUSY => HvError::Busy,
            errno::EEXIST => HvError::Exists,
            errno::EINVAL => HvError::Invalid,
            errno::ENOSPC => HvError::NoSpace,
            errno::ENOSYS => HvError::NotAvailable,
            errno::EMSGSIZE => HvError::MessageTooBig,
            errno::ECONNREFUSED => HvError::Refused,
            other => HvError::Other(other),
        }
    }

    /// The (positive) errno.
    pub fn errno(&self) -> i32 {
        match *self {
            HvError::NotPermitted => errno::EPERM,
            HvError::NotFound => errno::ENOENT,
            HvError::NoSuchDomain => errno::ESRCH,
            HvError::TooMany => errno::E2BIG,
            HvError::WouldBlock => errno::EAGAIN,
            HvError::OutOfMemory => errno::ENOMEM,
            HvError::Denied => errno::EACCES,
            HvError::BadAddress => errno::EFAULT,
            HvError::Busy => errno::EBUSY,
            HvError::Exists => errno::EEXIST,
            HvError::Invalid => errno::EINVAL,
            HvError::NoSpace => errno::ENOSPC,
            HvError::NotAvailable => errno::ENOSYS,
            HvError::MessageTooBig => errno::EMSGSIZE,
            HvError::Refused => errno::ECONNREFUSED,
            HvError::Other(e) => e,
        }
    }

    /// Whether the channel to the hypervisor itself failed (the simulator went away, its
    /// connection broke): nothing will work through this handle again.
    pub fn is_interface_lost(&self) -> bool {
        matches!(self, HvError::Other(e) if [libc::EPIPE, libc::EPROTO, libc::ECONNRESET].contains(e))
    }

    /// The errno's symbolic name (`"EAGAIN"`), as the C header and the scenarios spell it.
    pub fn name(&self) -> String {
        ERRNO_NAMES
            .iter()
            .find(|(_, v)| *v == self.errno())
            .map(|(n, _)| (*n).to_string())
            .unwrap_or_else(|| format!("E{}", self.errno()))
    }

    /// Parses a symbolic errno name.
    pub fn from_name(name: &str) -> Option<Self> {
        ERRNO_NAMES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| HvError::from_errno(*v))
    }

    /// Decodes a raw hypercall return value: negative errno, or a non-negative result.
    pub fn check(ret: i64) -> Result<u64, HvError> {
        if ret < 0 {
            Err(HvError::from_errno(i32::try_from(-ret).unwrap_or(i32::MAX)))
        } else {
            Ok(ret as u64)
        }
    }
}

const ERRNO_NAMES: &[(&str, i32)] = &[
    ("EPERM", errno::EPERM),
    ("ENOENT", errno::ENOENT),
    ("ESRCH", errno::ESRCH),
    ("E2BIG", errno::E2BIG),
    ("EAGAIN", errno::EAGAIN),
    ("ENOMEM", errno::ENOMEM),
    ("EACCES", errno::EACCES),
    ("EFAULT", errno::EFAULT),
    ("EBUSY", errno::EBUSY),
    ("EEXIST", errno::EEXIST),
    ("EINVAL", errno::EINVAL),
    ("ENOSPC", errno::ENOSPC),
    ("ENOSYS", errno::ENOSYS),
    ("EMSGSIZE", errno::EMSGSIZE),
    ("ECONNREFUSED", errno::ECONNREFUSED),
];

/// A page of the ACL table as `V4VOP_tables_list` returns it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TablesPage {
    /// The rules copied, from the requested start.
    pub rules: Vec<TablesRule>,
    /// How many rules the whole table holds.
    pub total: u32,
}

/// One send of a [`Hypervisor::sendv_batch`].
#[derive(Debug, Clone, Copy)]
pub struct BatchSend<'a> {
    pub addr: SendAddr,
    pub iov: &'a [IoSlice<'a>],
    pub message_type: u32,
}

/// The V4V operations of one domain. See `docs/abi.md` for each operation's exact semantics and
/// the order of its checks; implementations must agree byte for byte.
pub trait Hypervisor: Send + Sync {
    /// Zeroed, page-aligned memory suitable for rings, of at least `bytes` bytes. On Xen it comes
    /// from `/dev/xen/hypercall` so the kernel never moves it.
    fn alloc_ring_memory(&self, bytes: usize) -> Result<RingMemory, HvError>;

    /// `V4VOP_register_ring` for the ring whose header is at `offset` in `mem`.
    fn register_ring(&self, mem: &RingMemory, offset: usize) -> Result<(), HvError>;

    /// `V4VOP_unregister_ring` for the ring whose header is at `offset` in `mem`.
    fn unregister_ring(&self, mem: &RingMemory, offset: usize) -> Result<(), HvError>;

    /// `V4VOP_sendv`: returns the payload length.
    fn sendv(
        &self,
        addr: &SendAddr,
        iov: &[IoSlice<'_>],
        message_type: u32,
    ) -> Result<u32, HvError>;

    /// Several `V4VOP_sendv`s in one call, like a Xen multicall: each is attempted in order,
    /// whatever became of the ones before it, and `results` (cleared first) gets one result per
    /// send. A backend whose calls are expensive (the simulator, a round trip to another process)
    /// makes it one call; the default issues one `sendv` each.
    fn sendv_batch(&self, sends: &[BatchSend<'_>], results: &mut Vec<Result<u32, HvError>>) {
        results.clear();
        results.extend(
            sends
                .iter()
                .map(|s| self.sendv(&s.addr, s.iov, s.message_type)),
        );
    }

    /// `V4VOP_notify`; `None` passes NULL (only wake waiters on our rings). The hypervisor fills
    /// in each entry's flags and max_message_size.
    fn notify(&self, entries: Option<&mut [RingDataEnt]>) -> Result<(), HvError>;

    /// `V4VOP_info`.
    fn info(&self) -> Result<Info, HvError>;

    /// `V4VOP_config` (dom0 only).
    fn config(&self, config: &Config) -> Result<(), HvError>;

    /// `V4VOP_tables_add` (dom0 only): insert before 1-based `position` (0 appends).
    fn tables_add(&self, rule: &TablesRule, position: u32) -> Result<(), HvError>;

    /// `V4VOP_tables_del` (dom0 only): by rule, by 1-based position, or all with
    /// [`crate::abi::TABLES_DEL_ALL`].
    fn tables_del(&self, rule: Option<&TablesRule>, position: u32) -> Result<(), HvError>;

    /// `V4VOP_tables_list` (dom0 only): up to `max` rules from 0-based `start`.
    fn tables_list(&self, start: u32, max: u32) -> Result<TablesPage, HvError>;

    /// A descriptor that polls readable while the domain's V4V event is pending. Poll it; do not
    /// change its flags (it is non-blocking, and [`Hypervisor::take_event`] relies on that).
    fn event_fd(&self) -> BorrowedFd<'_>;

    /// Consumes the pending event, if any: returns whether one was pending. Does not block.
    fn take_event(&self) -> Result<bool, HvError>;

    /// After the domain was saved and restored or migrated, it is a new domain (see
    /// `docs/abi.md`, "Save, restore, live migration") and the binding to the old domain's event
    /// channel is dead: bind the new domain's channel instead. [`Hypervisor::event_fd`] may
    /// return another descriptor afterwards. Backends whose domains are never restored (the
    /// simulator) have nothing to do.
    fn rebind_event(&mut self) -> Result<(), HvError> {
        Ok(())
    }

    /// The domain-name directory that comes with this backend: the simulator models one on the
    /// same connection. `None` when names live elsewhere (on Xen, in xenstore:
    /// [`crate::xenstore::XenNames`]).
    fn names(&self) -> Option<&dyn crate::names::NameDirectory> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_names_round_trip() {
        for (name, value) in ERRNO_NAMES {
            let e = HvError::from_errno(*value);
            assert_eq!(e.errno(), *value);
            assert_eq!(&e.name(), name);
            assert_eq!(HvError::from_name(name), Some(e));
            assert!(!matches!(e, HvError::Other(_)), "{name} has no variant");
        }
        assert_eq!(HvError::check(-11), Err(HvError::WouldBlock));
        assert_eq!(HvError::check(5), Ok(5));
        assert_eq!(HvError::from_errno(99).name(), "E99");
    }
}
