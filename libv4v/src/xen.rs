// SPDX-License-Identifier: MIT OR Apache-2.0
//! The Xen backend: V4V hypercalls through Linux's Xen devices, with no C library in between.
//!
//! - `/dev/xen/privcmd`: `IOCTL_PRIVCMD_HYPERCALL` issues `HYPERVISOR_v4v_op` (number 43), and
//!   `HYPERVISOR_multicall` (13) for a batch of sends: Xen dispatches a multicall's entries
//!   through the same table as single hypercalls, where the V4V patch gives `v4v_op` to 64-bit
//!   PV and HVM/PVH callers alike.
//! - `/dev/xen/hypercall`: memory the kernel allocated page by page and never moves or swaps, for
//!   hypercall arguments and for rings (the hypervisor pins ring pages at registration). Where the
//!   device is missing, locked anonymous memory stands in for arguments, as libxencall does; rings
//!   then cannot be allocated (`ENOMEM`), since the kernel may migrate anonymous pages.
//! - `/dev/xen/evtchn`: the domain's V4V event channel, bound to the port `V4VOP_info` reports
//!   (an interdomain binding to the domain's own port), non-blocking so that it fits an event
//!   loop; pending ports are drained and unmasked.
//!
//! [`open`] checks that V4V answers and, when it does not, says what is missing: the driver, the
//! kernel's permission (Linux restricts `/dev/xen/privcmd` in unprivileged domains since
//! XSA-482), `v4v=1` on Xen's command line, or V4V in the hypervisor at all ([`XenError`]).
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
use std::sync::Mutex;

use thiserror::Error;

use crate::abi::{self, DomId};
use crate::hypervisor::{HvError, Hypervisor};
use crate::raw::{AbiHypervisor, RawHypercall};
use crate::shmem::{PAGE_SIZE, RingMemory, page_round};

const PRIVCMD: &str = "/dev/xen/privcmd";
const HYPERCALL_BUF: &str = "/dev/xen/hypercall";
const EVTCHN: &str = "/dev/xen/evtchn";
/// What Linux says about the hypervisor it runs on (`xen` on Xen).
const SYS_HYPERVISOR_TYPE: &str = "/sys/hypervisor/type";

/// `_IOC(_IOC_NONE, 'P', 0, sizeof(struct privcmd_hypercall))`.
const IOCTL_PRIVCMD_HYPERCALL: libc::c_ulong = 0x0030_5000;
/// `_IOC(_IOC_NONE, 'E', 1, sizeof(struct ioctl_evtchn_bind_interdomain))`.
const IOCTL_EVTCHN_BIND_INTERDOMAIN: libc::c_ulong = 0x0008_4501;
/// `_IOC(_IOC_NONE, 'E', 5, 0)`: clears the driver's ring of pending ports after an overflow.
const IOCTL_EVTCHN_RESET: libc::c_ulong = 0x0000_4505;

/// `__HYPERVISOR_multicall`: a list of hypercalls run in order, each result written back.
const HYPERVISOR_MULTICALL: u64 = 13;
/// `__HYPERVISOR_xen_version`, used to tell the kernel's refusals from the hypervisor's.
const HYPERVISOR_XEN_VERSION: u64 = 17;
/// `XENVER_version`: any domain may ask.
const XENVER_VERSION: u64 = 0;
/// `XENVER_commandline`: Xen's command line (`xen_commandline_t`, 1024 bytes).
const XENVER_COMMANDLINE: u64 = 9;
const XEN_COMMANDLINE_LEN: usize = 1024;

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

/// Why the Xen backend could not start. Each message says what is missing and how to fix it.
#[derive(Debug, Error)]
pub enum XenError {
    #[error(
        "not running on Xen ({PRIVCMD} is missing and {SYS_HYPERVISOR_TYPE} does not say xen); \
         without Xen, run the stack on the simulator (--hypervisor sim:PATH)"
    )]
    NotXen,
    #[error(
        "{PRIVCMD} is missing although this is a Xen domain: the xen-privcmd module is not \
         loaded (modprobe xen-privcmd)"
    )]
    NoPrivcmd,
    #[error("cannot open {path}: {source}{}", open_hint(source))]
    Open {
        path: &'static str,
        source: std::io::Error,
    },
    #[error(
        "the kernel refuses hypercalls through {PRIVCMD} in this unprivileged domain (since \
         XSA-482 Linux restricts it to a device model's target domain): load the driver with \
         `modprobe xen-privcmd unrestricted=1`, or boot the kernel with \
         xen_privcmd.unrestricted=1"
    )]
    Restricted,
    #[error(
        "V4V is disabled: Xen was booted without v4v=1 (V4VOP_info returned ENOSYS); add v4v=1 \
         to Xen's command line, which is now: {cmdline:?}"
    )]
    V4vDisabled { cmdline: String },
    #[error(
        "the hypervisor does not implement V4V although v4v=1 is on Xen's command line \
         (V4VOP_info returned ENOSYS): it was built without the V4V patch or CONFIG_V4V, or its \
         XSM policy denies V4V to this domain"
    )]
    V4vNotBuilt,
    #[error(
        "V4V is not available (V4VOP_info returned ENOSYS): the hypervisor lacks the V4V patch, \
         was booted without v4v=1 on its command line, or its XSM policy denies V4V to this \
         domain"
    )]
    V4vUnavailable,
    #[error("V4VOP_info failed: {0}")]
    Info(HvError),
    #[error("{EVTCHN} is missing: the xen-evtchn module is not loaded (modprobe xen-evtchn)")]
    NoEvtchn,
    #[error(
        "binding the V4V event channel (port {port}) failed: {source}; only one process per \
         domain can bind it: is a v4vd (or another V4V program) running in this domain already?"
    )]
    Bind { port: u32, source: std::io::Error },
}

fn open_hint(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::PermissionDenied => " (V4V on Xen needs root)",
        std::io::ErrorKind::NotFound => " (is the xen-privcmd module loaded?)",
        _ => "",
    }
}

/// Whether Xen's command line enables V4V, as Xen's `boolean_param("v4v")` parses it: `v4v`,
/// `v4v=1|yes|true|on|enable` enable it, `no-v4v`, `v4v=0|no|false|off|disable` disable it, the
/// last one wins, and it is off when absent.
pub fn cmdline_enables_v4v(cmdline: &str) -> bool {
    let mut on = false;
    for t in cmdline.split_ascii_whitespace() {
        match t {
            "v4v" => on = true,
            "no-v4v" => on = false,
            _ => match t.strip_prefix("v4v=") {
                Some("1" | "yes" | "true" | "on" | "enable") => on = true,
                Some("0" | "no" | "false" | "off" | "disable") => on = false,
                _ => {}
            },
        }
    }
    on
}

/// How to open the backend.
#[derive(Debug, Clone, Copy, Default)]
pub struct XenOptions {
    /// Follow every ring memory with an inaccessible page that the process never maps, so that a
    /// ring running past the end of its memory faults (`EFAULT`) instead of reaching whatever
    /// mapping happens to come next. For test harnesses that register deliberately short rings
    /// (the guard's address space is released only when the backend is dropped).
    pub guard_pages: bool,
}

/// Raw V4V hypercalls from this Linux domain.
pub struct XenRaw {
    privcmd: File,
    hypercall_buf: Option<File>,
    evtchn: Option<File>,
    /// Bindings of domains this one was before a restore, never closed (see `rebind_event`).
    stale_evtchn: Vec<File>,
    /// The local port of our binding to the V4V event channel.
    local_port: u32,
    options: XenOptions,
    /// Guard pages (addresses) placed after ring memories, unmapped on drop.
    guards: Mutex<Vec<usize>>,
}

impl Drop for XenRaw {
    fn drop(&mut self) {
        let guards = self.guards.get_mut().unwrap_or_else(|e| e.into_inner());
        for g in guards.drain(..) {
            // SAFETY: each guard is a one-page PROT_NONE mapping this value made and nothing else
            // uses; unmapping it cannot affect any other memory.
            unsafe { libc::munmap(g as *mut libc::c_void, PAGE_SIZE) };
        }
    }
}

impl XenRaw {
    /// Whether `/dev/xen/hypercall` is open (without it, rings cannot be allocated).
    pub fn has_hypercall_device(&self) -> bool {
        self.hypercall_buf.is_some()
    }

    /// Issues hypercall `op` with up to five arguments, returning its raw result (negative
    /// errno, from the hypervisor or from the kernel).
    ///
    /// # Safety
    /// Non-zero pointer arguments must be valid for what the hypercall reads and writes.
    unsafe fn hypercall(&self, op: u64, arg: [u64; 5]) -> i64 {
        let mut call = PrivcmdHypercall { op, arg };
        // SAFETY: the ioctl reads a privcmd_hypercall from a live struct; the hypercall touches
        // only the addresses the caller vouched for.
        let r = unsafe {
            libc::ioctl(
                self.privcmd.as_raw_fd(),
                IOCTL_PRIVCMD_HYPERCALL,
                &mut call as *mut PrivcmdHypercall,
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

    /// Whether the kernel (not the hypervisor) refuses our hypercalls: `xen_version`, which Xen
    /// answers for every domain, fails with EPERM only when privcmd is restricted.
    fn kernel_restricted(&self) -> bool {
        // SAFETY: XENVER_version takes no buffer (NULL).
        let r = unsafe { self.hypercall(HYPERVISOR_XEN_VERSION, [XENVER_VERSION, 0, 0, 0, 0]) };
        r == -i64::from(libc::EPERM)
    }

    /// Xen's command line, if this domain may read it (dom0 may).
    fn xen_cmdline(&self) -> Option<String> {
        let buf = self.mmap(XEN_COMMANDLINE_LEN, false).ok()?;
        // SAFETY: `buf` is at least XEN_COMMANDLINE_LEN bytes of hypercall memory, alive for the
        // call, which writes at most that many.
        let r = unsafe {
            self.hypercall(
                HYPERVISOR_XEN_VERSION,
                [XENVER_COMMANDLINE, buf.addr() as u64, 0, 0, 0],
            )
        };
        if r < 0 {
            return None;
        }
        let mut bytes = vec![0u8; XEN_COMMANDLINE_LEN];
        buf.read_bytes(0, &mut bytes).ok()?;
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        Some(String::from_utf8_lossy(&bytes[..end]).into_owned())
    }

    /// Why V4V answered ENOSYS, as precisely as this domain can tell.
    fn diagnose_enosys(&self) -> XenError {
        match self.xen_cmdline() {
            Some(c) if cmdline_enables_v4v(&c) => XenError::V4vNotBuilt,
            Some(cmdline) => XenError::V4vDisabled { cmdline },
            None => XenError::V4vUnavailable,
        }
    }

    /// Maps `bytes` (rounded up to pages) of hypercall memory, followed by a guard page when
    /// `guard` is set.
    fn mmap(&self, bytes: usize, guard: bool) -> Result<RingMemory, HvError> {
        let size = page_round(bytes);
        let p = match &self.hypercall_buf {
            Some(f) => self.map_device(f, size, guard)?,
            None => Self::map_locked(size)?,
        };
        let ptr = NonNull::new(p.cast()).ok_or(HvError::OutOfMemory)?;
        // SAFETY: ptr is the start of a read/write mapping of `size` bytes that we own and that
        // nothing else unmaps (a guard page after it is a separate mapping).
        Ok(unsafe { RingMemory::from_mmap(ptr, size) })
    }

    /// `size` bytes of `/dev/xen/hypercall` (pages the kernel never moves).
    fn map_device(&self, f: &File, size: usize, guard: bool) -> Result<*mut libc::c_void, HvError> {
        if !guard {
            // SAFETY: a fresh shared mapping of the device with no address hint; checked below.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    size,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                    f.as_raw_fd(),
                    0,
                )
            };
            return if p == libc::MAP_FAILED {
                Err(HvError::OutOfMemory)
            } else {
                Ok(p)
            };
        }
        let total = size + PAGE_SIZE;
        // Reserve the region and its guard page as inaccessible address space, then put the
        // device's pages over all but the last page.
        // SAFETY: a fresh anonymous PROT_NONE mapping with no address hint; checked below.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                total,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(HvError::OutOfMemory);
        }
        // SAFETY: MAP_FIXED over the first `size` bytes of the reservation just made, which
        // nothing else uses; checked below.
        let p = unsafe {
            libc::mmap(
                base,
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_FIXED,
                f.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            // SAFETY: unmaps the reservation made above, which nothing else uses.
            unsafe { libc::munmap(base, total) };
            return Err(HvError::OutOfMemory);
        }
        self.guards
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(base as usize + size);
        Ok(p)
    }

    /// libxencall's fallback: locked anonymous memory, kept out of children, every page faulted
    /// in. Good for hypercall arguments, not for rings.
    fn map_locked(size: usize) -> Result<*mut libc::c_void, HvError> {
        // SAFETY: a fresh anonymous mapping with no address hint; checked below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_LOCKED,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(HvError::OutOfMemory);
        }
        // SAFETY: p..p+size is the mapping just made. Keep it out of children (a fork would make
        // it copy-on-write and move it under the hypervisor), and fault every page in.
        unsafe {
            libc::madvise(p, size, libc::MADV_DONTFORK);
            for off in (0..size).step_by(PAGE_SIZE) {
                p.cast::<u8>().add(off).write_volatile(0);
            }
        }
        Ok(p)
    }
}

impl RawHypercall for XenRaw {
    unsafe fn v4v_op(&self, cmd: u32, arg1: u64, arg2: u64, arg3: u32, arg4: u32) -> i64 {
        // SAFETY: the caller vouches for the addresses (RawHypercall::v4v_op's contract).
        unsafe {
            self.hypercall(
                abi::HYPERVISOR_V4V_OP,
                [u64::from(cmd), arg1, arg2, u64::from(arg3), u64::from(arg4)],
            )
        }
    }

    unsafe fn multicall(&self, list: u64, count: u32) -> Option<i64> {
        // SAFETY: the caller vouches for the list and its entries (RawHypercall::multicall's
        // contract); the kernel passes the list's address to Xen, which copies each entry in
        // and each result out.
        Some(unsafe { self.hypercall(HYPERVISOR_MULTICALL, [list, u64::from(count), 0, 0, 0]) })
    }

    fn alloc_buffer(&self, bytes: usize) -> Result<RingMemory, HvError> {
        self.mmap(bytes, false)
    }

    fn alloc_ring_memory(&self, bytes: usize) -> Result<RingMemory, HvError> {
        if self.hypercall_buf.is_none() {
            // Anonymous memory can be migrated by the kernel under the hypervisor's mapping.
            return Err(HvError::OutOfMemory);
        }
        self.mmap(bytes, self.options.guard_pages)
    }

    fn event_fd(&self) -> BorrowedFd<'_> {
        match &self.evtchn {
            Some(f) => f.as_fd(),
            None => self.privcmd.as_fd(),
        }
    }

    fn rebind_event(&mut self, domid: DomId, port: u32) -> Result<(), HvError> {
        let (evtchn, local) = bind_evtchn(domid, port).map_err(|e| match e {
            XenError::Bind { source, .. } | XenError::Open { source, .. } => {
                HvError::Other(source.raw_os_error().unwrap_or(libc::EIO))
            }
            _ => HvError::Other(libc::ENODEV),
        })?;
        // The old descriptor must stay open. Linux zaps every event channel binding on resume,
        // but its evtchn driver still lists the old local port, and closing the descriptor
        // unbinds "that port" by number: in the new domain the same number may be the binding
        // just made (measured: its interrupt was disabled and no event came any more), or
        // none (a BUG_ON). One descriptor per restore is kept for the life of the process.
        if let Some(old) = self.evtchn.replace(evtchn) {
            self.stale_evtchn.push(old);
        }
        self.local_port = local;
        Ok(())
    }

    fn take_event(&self) -> Result<bool, HvError> {
        let Some(f) = &self.evtchn else {
            return Ok(false);
        };
        let mut any = false;
        loop {
            let mut ports = [0u32; 16];
            // SAFETY: reads at most 64 bytes into a live local array of 64 bytes.
            let n = unsafe { libc::read(f.as_raw_fd(), ports.as_mut_ptr().cast(), 64) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EAGAIN) => return Ok(any),
                    Some(libc::EINTR) => continue,
                    Some(libc::EFBIG) => {
                        // The driver's ring of pending ports overflowed: reset it, and report an
                        // event (one was certainly pending).
                        // SAFETY: an argument-less ioctl on our evtchn descriptor.
                        unsafe { libc::ioctl(f.as_raw_fd(), IOCTL_EVTCHN_RESET) };
                        return Ok(true);
                    }
                    Some(errno) => return Err(HvError::Other(errno)),
                    None => return Err(HvError::Other(libc::EIO)),
                }
            }
            if n == 0 {
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

/// Whether Linux says it runs on Xen, whatever drivers are loaded.
pub fn on_xen() -> bool {
    std::fs::read_to_string(SYS_HYPERVISOR_TYPE).is_ok_and(|t| t.trim() == "xen")
        || Path::new("/proc/xen").exists()
}

/// Opens the Xen backend with default options (see [`open_with`]).
pub fn open() -> Result<XenHypervisor, XenError> {
    open_with(XenOptions::default())
}

/// Opens the Xen backend: checks that V4V answers (saying what is missing when it does not),
/// and binds the domain's event channel.
pub fn open_with(options: XenOptions) -> Result<XenHypervisor, XenError> {
    if !available() {
        return Err(if on_xen() {
            XenError::NoPrivcmd
        } else {
            XenError::NotXen
        });
    }
    let rw = |path: &'static str, flags: i32| {
        OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC | flags)
            .open(path)
            .map_err(|source| XenError::Open { path, source })
    };
    let privcmd = rw(PRIVCMD, 0)?;
    let hypercall_buf = rw(HYPERCALL_BUF, 0).ok();
    let raw = XenRaw {
        privcmd,
        hypercall_buf,
        evtchn: None,
        stale_evtchn: Vec::new(),
        local_port: 0,
        options,
        guards: Mutex::new(Vec::new()),
    };
    let hv = AbiHypervisor::new(raw);
    let info = match hv.info() {
        Ok(i) => i,
        Err(HvError::NotAvailable) => return Err(hv.raw().diagnose_enosys()),
        Err(HvError::NotPermitted) if hv.raw().kernel_restricted() => {
            return Err(XenError::Restricted);
        }
        Err(e) => return Err(XenError::Info(e)),
    };
    let mut raw = hv.into_raw();
    let (evtchn, port) = bind_evtchn(info.domid, info.evtchn)?;
    raw.local_port = port;
    raw.evtchn = Some(evtchn);
    Ok(AbiHypervisor::new(raw))
}

/// A new `/dev/xen/evtchn` descriptor bound to V4V's event channel `port` of `domid` (our own
/// domain), and the local port of that binding.
fn bind_evtchn(domid: DomId, port: u32) -> Result<(File, u32), XenError> {
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
        remote_domain: u32::from(domid),
        remote_port: port,
    };
    // SAFETY: the ioctl reads an ioctl_evtchn_bind_interdomain from a live struct.
    let local = unsafe {
        libc::ioctl(
            evtchn.as_raw_fd(),
            IOCTL_EVTCHN_BIND_INTERDOMAIN,
            &mut bind as *mut BindInterdomain,
        )
    };
    if local < 0 {
        return Err(XenError::Bind {
            port,
            source: std::io::Error::last_os_error(),
        });
    }
    Ok((evtchn, local as u32))
}

/// The domain id V4V reports for this domain.
pub fn domid(hv: &XenHypervisor) -> Result<DomId, HvError> {
    Ok(hv.info()?.domid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_parsing_follows_xen() {
        for (c, on) in [
            ("", false),
            ("console=com1 v4v=1", true),
            ("v4v", true),
            ("v4v=yes loglvl=all", true),
            ("v4v=on", true),
            ("v4v=enable", true),
            ("v4v=1 no-v4v", false),
            ("no-v4v v4v", true),
            ("v4v=0", false),
            ("v4v=off", false),
            ("v4v=1 v4v=bogus", true),
            ("xv4v=1 v4vx=1 argo=1", false),
        ] {
            assert_eq!(cmdline_enables_v4v(c), on, "{c:?}");
        }
    }

    #[test]
    fn errors_say_what_to_do() {
        let msg = |e: XenError| e.to_string();
        assert!(msg(XenError::NotXen).contains("sim:PATH"));
        assert!(msg(XenError::NoPrivcmd).contains("modprobe xen-privcmd"));
        assert!(msg(XenError::NoEvtchn).contains("modprobe xen-evtchn"));
        assert!(msg(XenError::Restricted).contains("unrestricted=1"));
        let d = msg(XenError::V4vDisabled {
            cmdline: "console=com1".into(),
        });
        assert!(d.contains("v4v=1") && d.contains("console=com1"), "{d}");
        assert!(msg(XenError::V4vNotBuilt).contains("V4V patch"));
        assert!(msg(XenError::V4vUnavailable).contains("v4v=1"));
        let denied = XenError::Open {
            path: PRIVCMD,
            source: std::io::Error::from_raw_os_error(libc::EACCES),
        };
        assert!(msg(denied).contains("needs root"));
        let busy = XenError::Bind {
            port: 5,
            source: std::io::Error::from_raw_os_error(libc::EINVAL),
        };
        assert!(msg(busy).contains("v4vd"));
    }

    #[test]
    fn open_off_xen_says_so() {
        if available() {
            return; // running in a Xen domain: nothing to check here
        }
        let e = open().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains(PRIVCMD), "{e}");
    }
}
