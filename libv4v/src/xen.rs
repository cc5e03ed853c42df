// SPDX-License-Identifier: MIT OR Apache-2.0
//! The Xen backend: V4V hypercalls through Linux's Xen devices, with no C library in between.
//!
//! - `/dev/xen/privcmd`: `IOCTL_PRIVCMD_HYPERCALL` issues `HYPERVISOR_v4v_op` (number 43).
//! - `/dev/xen/hypercall`: memory the kernel allocated page by page and never moves or swaps, for
//!   hypercall arguments and for rings (the hypervisor pins ring pages at registration). Where the
//!   device is missing, locked anonymous memory stands in for arguments, as libxencall does.
//! - `/dev/xen/evtchn`: the domain's V4V event channel, bound to the port `V4VOP_info` reports,
//!   non-blocking so that it fits an event loop; pending ports are drained and unmasked.
//!
//! Why not the `xenctrl-sys`/`xenevtchn-sys` crates: they are GPL-3.0-only (this library is MIT
//! OR Apache-2.0), run bindgen at build time, and do not cover libxencall. Three ioctls do the job.
//!
//! This module owns those descriptors and nothing else; marshalling is [`crate::raw`]'s.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::ptr::NonNull;

use thiserror::Error;

use crate::abi::{self, DomId};
use crate::hypervisor::{HvError, Hypervisor};
use crate::raw::{AbiHypervisor, RawHypercall};
use crate::shmem::{RingMemory, page_round};

const PRIVCMD: &str = "/dev/xen/privcmd";
const HYPERCALL_BUF: &str = "/dev/xen/hypercall";
const EVTCHN: &str = "/dev/xen/evtchn";

/// `_IOC(_IOC_NONE, 'P', 0, sizeof(struct privcmd_hypercall))`.
const IOCTL_PRIVCMD_HYPERCALL: libc::c_ulong = 0x0030_5000;
/// `_IOC(_IOC_NONE, 'E', 1, sizeof(struct ioctl_evtchn_bind_interdomain))`.
const IOCTL_EVTCHN_BIND_INTERDOMAIN: libc::c_ulong = 0x0008_4501;

#[repr(C)]
struct PrivcmdHypercall {
    op: u64,
    arg: [u64; 5],
}

#[repr(C)]
struct BindInterdomain {
    remote_domain: u32,
    remote_port: u32,
}

/// Why the Xen backend could not start.
#[derive(Debug, Error)]
pub enum XenError {
    #[error(
        "{PRIVCMD} is missing: not running on Xen, or the xen-privcmd module is not loaded \
         (modprobe xen-privcmd)"
    )]
    NoPrivcmd,
    #[error("cannot open {path}: {source} (V4V on Xen needs root)")]
    Open {
        path: &'static str,
        source: std::io::Error,
    },
    #[error("{EVTCHN} is missing: the xen-evtchn module is not loaded (modprobe xen-evtchn)")]
    NoEvtchn,
    #[error(
        "the hypervisor has no V4V, or it is disabled: boot Xen with the V4V patch and v4v=1 \
         on its command line (V4VOP_info returned ENOSYS)"
    )]
    NotEnabled,
    #[error("V4VOP_info failed: {0}")]
    Info(HvError),
    #[error("binding the V4V event channel (port {port}) failed: {source}")]
    Bind { port: u32, source: std::io::Error },
}

/// Raw V4V hypercalls from this Linux domain.
pub struct XenRaw {
    privcmd: File,
    hypercall_buf: Option<File>,
    evtchn: Option<File>,
    /// The local port of our binding to the V4V event channel.
    local_port: u32,
}

impl XenRaw {
    fn mmap(&self, bytes: usize) -> Result<RingMemory, HvError> {
        let size = page_round(bytes);
        let (fd, flags) = match &self.hypercall_buf {
            Some(f) => (f.as_raw_fd(), libc::MAP_SHARED),
            None => (
                -1,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS | libc::MAP_LOCKED,
            ),
        };
        // SAFETY: a fresh mapping with no address hint; the result is checked.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                fd,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(HvError::OutOfMemory);
        }
        if self.hypercall_buf.is_none() {
            // SAFETY: p..p+size is the mapping just made. Keep it out of children (a fork would
            // make it copy-on-write and move it under the hypervisor), and fault every page in.
            unsafe {
                libc::madvise(p, size, libc::MADV_DONTFORK);
                for off in (0..size).step_by(4096) {
                    p.cast::<u8>().add(off).write_volatile(0);
                }
            }
        }
        let ptr = NonNull::new(p.cast()).ok_or(HvError::OutOfMemory)?;
        // SAFETY: ptr is the start of a read/write mapping of `size` bytes that we own.
        Ok(unsafe { RingMemory::from_mmap(ptr, size) })
    }
}

impl RawHypercall for XenRaw {
    unsafe fn v4v_op(&self, cmd: u32, arg1: u64, arg2: u64, arg3: u32, arg4: u32) -> i64 {
        let mut call = PrivcmdHypercall {
            op: abi::HYPERVISOR_V4V_OP,
            arg: [u64::from(cmd), arg1, arg2, u64::from(arg3), u64::from(arg4)],
        };
        // SAFETY: the ioctl reads a privcmd_hypercall from a live struct; the hypercall reads the
        // addresses the caller vouched for.
        let r = unsafe {
            libc::ioctl(
                self.privcmd.as_raw_fd(),
                IOCTL_PRIVCMD_HYPERCALL,
                &mut call as *mut _,
            )
        };
        if r < 0 {
            -i64::from(
                std::io::Error::last_os_error()
                    .raw_os_error()
                    .unwrap_or(libc::EIO),
            )
        } else {
            i64::from(r)
        }
    }

    fn alloc_buffer(&self, bytes: usize) -> Result<RingMemory, HvError> {
        self.mmap(bytes)
    }

    fn alloc_ring_memory(&self, bytes: usize) -> Result<RingMemory, HvError> {
        if self.hypercall_buf.is_none() {
            // Anonymous memory can be migrated by the kernel under the hypervisor's mapping.
            return Err(HvError::OutOfMemory);
        }
        self.mmap(bytes)
    }

    fn event_fd(&self) -> BorrowedFd<'_> {
        match &self.evtchn {
            Some(f) => f.as_fd(),
            None => self.privcmd.as_fd(),
        }
    }

    fn take_event(&self) -> Result<bool, HvError> {
        let Some(f) = &self.evtchn else {
            return Ok(false);
        };
        let mut any = false;
        loop {
            let mut ports = [0u32; 16];
            // SAFETY: reads at most 64 bytes into a live local array.
            let n = unsafe { libc::read(f.as_raw_fd(), ports.as_mut_ptr().cast(), 64) };
            if n <= 0 {
                return Ok(any);
            }
            let got = n as usize / 4;
            any |= ports[..got].contains(&self.local_port);
            // Writing the ports back unmasks them.
            // SAFETY: writes the `got` ports just read from the same live array.
            unsafe { libc::write(f.as_raw_fd(), ports.as_ptr().cast(), got * 4) };
        }
    }
}

/// The V4V hypervisor interface on Xen.
pub type XenHypervisor = AbiHypervisor<XenRaw>;

/// Whether this looks like a Xen domain with the privcmd device.
pub fn available() -> bool {
    Path::new(PRIVCMD).exists()
}

/// Opens the Xen backend: checks that V4V answers, and binds the domain's event channel.
pub fn open() -> Result<XenHypervisor, XenError> {
    if !available() {
        return Err(XenError::NoPrivcmd);
    }
    let rw = |path: &'static str| {
        OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
            .map_err(|source| XenError::Open { path, source })
    };
    let privcmd = rw(PRIVCMD)?;
    let hypercall_buf = rw(HYPERCALL_BUF).ok();
    let raw = XenRaw {
        privcmd,
        hypercall_buf,
        evtchn: None,
        local_port: 0,
    };
    let hv = AbiHypervisor::new(raw);
    let info = match hv.info() {
        Ok(i) => i,
        Err(HvError::NotAvailable) => return Err(XenError::NotEnabled),
        Err(e) => return Err(XenError::Info(e)),
    };
    let mut raw = hv.into_raw();
    if !Path::new(EVTCHN).exists() {
        return Err(XenError::NoEvtchn);
    }
    let evtchn = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(EVTCHN)
        .map_err(|source| XenError::Open {
            path: EVTCHN,
            source,
        })?;
    let mut bind = BindInterdomain {
        remote_domain: u32::from(info.domid),
        remote_port: info.evtchn,
    };
    // SAFETY: the ioctl reads an ioctl_evtchn_bind_interdomain from a live struct.
    let port = unsafe {
        libc::ioctl(
            evtchn.as_raw_fd(),
            IOCTL_EVTCHN_BIND_INTERDOMAIN,
            &mut bind as *mut _,
        )
    };
    if port < 0 {
        return Err(XenError::Bind {
            port: info.evtchn,
            source: std::io::Error::last_os_error(),
        });
    }
    raw.local_port = port as u32;
    raw.evtchn = Some(evtchn);
    Ok(AbiHypervisor::new(raw))
}

/// The domain id V4V reports for this domain.
pub fn domid(hv: &XenHypervisor) -> Result<DomId, HvError> {
    Ok(hv.info()?.domid)
}
