// SPDX-License-Identifier: MIT OR Apache-2.0
//! The C harness backend (`--backend c-harness`): the hypervisor's own `xen/common/v4v.c`,
//! compiled into this binary with userspace shims for the Xen primitives it uses
//! (`hypervisor-patch/harness/`), called through the raw hypercall ABI exactly as a guest would.
//!
//! The harness is one global machine, not thread-safe: every call into it holds `HARNESS`, and
//! only one backend value may exist at a time. Its event channels are flags the C code sets; after
//! every call this backend moves them into one eventfd per domain, so that the `Hypervisor`
//! contract (a descriptor that polls readable while an event is pending) holds here too.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use v4v::abi::{DOMID_FIRST_RESERVED, DomId};
use v4v::event::EventFd;
use v4v::raw::{AbiHypervisor, RawHypercall};
use v4v::shmem::RingMemory;
use v4v::{HvError, Hypervisor};

use crate::backend::{Backend, BackendError, Capability, InspectKind};

mod ffi {
    unsafe extern "C" {
        pub fn v4vh_reset() -> i32;
        pub fn v4vh_domain_create(domid: u16) -> i32;
        pub fn v4vh_domain_destroy(domid: u16) -> i32;
        pub fn v4vh_hypercall(
            caller: u16,
            cmd: i32,
            arg1: *mut u8,
            arg2: *mut u8,
            arg3: u32,
            arg4: u32,
        ) -> std::ffi::c_long;
        pub fn v4vh_event_test_and_clear(domid: u16) -> i32;
        pub fn v4vh_guest_map(domid: u16, base: *mut u8, len: usize) -> i32;
        pub fn v4vh_pages_held() -> usize;
        pub fn v4vh_allocations() -> usize;
        pub fn v4vh_mappings() -> usize;
        pub fn v4vh_locks_held() -> u32;
        pub fn v4vh_set_strict_copies(strict: i32);
        pub fn v4vh_ring_count() -> std::ffi::c_ulong;
        pub fn v4vh_waiter_count() -> std::ffi::c_ulong;
    }
}

/// Serialises every call into the C harness.
static HARNESS: Mutex<()> = Mutex::new(());
/// Set while a [`CHarnessBackend`] exists.
static IN_USE: AtomicBool = AtomicBool::new(false);

fn lock() -> std::sync::MutexGuard<'static, ()> {
    HARNESS.lock().unwrap_or_else(|e| e.into_inner())
}

/// What the domains of one scenario share: their events, and every memory given to the harness
/// (kept mapped until the harness is reset, since the C code may hold its pages).
#[derive(Default)]
struct World {
    events: Mutex<BTreeMap<DomId, Arc<EventFd>>>,
    memories: Mutex<Vec<RingMemory>>,
}

impl World {
    /// Moves the harness's event flags into the eventfds. Call with [`HARNESS`] held.
    fn sync_events(&self) {
        let events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        for (domid, ev) in events.iter() {
            // SAFETY: a plain call into the harness, serialised by the caller's lock.
            if unsafe { ffi::v4vh_event_test_and_clear(*domid) } == 1 {
                ev.signal();
            }
        }
    }
}

/// One domain's raw hypercalls into the harness.
pub struct CHarnessRaw {
    domid: DomId,
    event: Arc<EventFd>,
    world: Arc<World>,
}

impl CHarnessRaw {
    fn memory(&self, bytes: usize) -> Result<RingMemory, HvError> {
        // One more page than asked, never given to the guest: memories allocated one after the
        // other may be adjacent, and a ring that runs past the end of its memory must find a
        // page that is not the guest's (EFAULT), not the next memory's.
        let guest = v4v::shmem::page_round(bytes);
        let mem = RingMemory::anonymous(guest + v4v::shmem::PAGE_SIZE)
            .map_err(|_| HvError::OutOfMemory)?;
        let _g = lock();
        // SAFETY: the region is the first `guest` bytes of a live, page-aligned mapping; the world
        // keeps it mapped until the harness is reset.
        let r = unsafe { ffi::v4vh_guest_map(self.domid, mem.addr() as *mut u8, guest) };
        if r < 0 {
            return Err(HvError::from_errno(-r));
        }
        self.world
            .memories
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(mem.clone());
        Ok(mem)
    }
}

impl RawHypercall for CHarnessRaw {
    unsafe fn v4v_op(&self, cmd: u32, arg1: u64, arg2: u64, arg3: u32, arg4: u32) -> i64 {
        let _g = lock();
        // SAFETY: the caller vouches for the addresses; the harness treats them as guest handles
        // of this same process.
        let r = unsafe {
            ffi::v4vh_hypercall(
                self.domid,
                cmd as i32,
                arg1 as usize as *mut u8,
                arg2 as usize as *mut u8,
                arg3,
                arg4,
            )
        };
        self.world.sync_events();
        #[allow(clippy::useless_conversion)] // c_long is i64 only on LP64 targets.
        i64::from(r)
    }

    fn alloc_buffer(&self, bytes: usize) -> Result<RingMemory, HvError> {
        // Arguments, like rings, must be this domain's guest memory: copies are strict.
        self.memory(bytes)
    }

    fn alloc_ring_memory(&self, bytes: usize) -> Result<RingMemory, HvError> {
        self.memory(bytes)
    }

    fn event_fd(&self) -> BorrowedFd<'_> {
        self.event.as_fd()
    }

    fn take_event(&self) -> Result<bool, HvError> {
        Ok(self.event.take())
    }
}

/// Runs scenarios against the hypervisor's C code.
pub struct CHarnessBackend {
    world: Arc<World>,
}

impl CHarnessBackend {
    /// The backend; fails if another one exists in this process (the harness is one machine).
    pub fn new() -> Result<Self, BackendError> {
        if IN_USE.swap(true, Ordering::SeqCst) {
            return Err(BackendError::Failed(
                "the C harness is in use already".into(),
            ));
        }
        {
            let _g = lock();
            // SAFETY: a plain call into the harness. Strict copies make guest accesses outside a
            // domain's own memory fail with EFAULT, as on Xen, instead of reading this process.
            unsafe { ffi::v4vh_set_strict_copies(1) };
        }
        Ok(CHarnessBackend {
            world: Arc::new(World::default()),
        })
    }

    fn reset(&mut self) -> Result<(), BackendError> {
        let _g = lock();
        // SAFETY: a plain call; nothing of the previous world is used afterwards.
        let r = unsafe { ffi::v4vh_reset() };
        self.world = Arc::new(World::default());
        if r < 0 {
            return Err(BackendError::Failed(format!("v4vh_reset: {r}")));
        }
        Ok(())
    }
}

impl Drop for CHarnessBackend {
    fn drop(&mut self) {
        // Forget the world before releasing the harness, so no pointer into freed memory stays.
        let _ = self.reset();
        {
            let _g = lock();
            // SAFETY: a plain call into the harness.
            unsafe { ffi::v4vh_set_strict_copies(0) };
        }
        IN_USE.store(false, Ordering::SeqCst);
    }
}

impl Backend for CHarnessBackend {
    fn name(&self) -> &str {
        "c-harness"
    }

    fn supports(&self, cap: Capability) -> bool {
        match cap {
            Capability::Create | Capability::Destroy | Capability::Inspect => true,
        }
    }

    fn can_act_as(&self, domid: DomId) -> bool {
        domid < DOMID_FIRST_RESERVED
    }

    fn begin(&mut self) -> Result<(), BackendError> {
        self.reset()
    }

    fn create_domain(&mut self, domid: DomId) -> Result<Box<dyn Hypervisor>, BackendError> {
        let event =
            Arc::new(EventFd::new().map_err(|e| BackendError::Failed(format!("eventfd: {e}")))?);
        {
            let _g = lock();
            // SAFETY: a plain call into the harness.
            let r = unsafe { ffi::v4vh_domain_create(domid) };
            if r < 0 {
                return Err(BackendError::Failed(format!(
                    "create domain {domid}: errno {}",
                    -r
                )));
            }
        }
        self.world
            .events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(domid, event.clone());
        let raw = CHarnessRaw {
            domid,
            event,
            world: self.world.clone(),
        };
        Ok(Box::new(AbiHypervisor::new(raw)))
    }

    fn destroy_domain(&mut self, domid: DomId) -> Result<(), BackendError> {
        let _g = lock();
        // SAFETY: a plain call into the harness.
        let r = unsafe { ffi::v4vh_domain_destroy(domid) };
        self.world
            .events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&domid);
        self.world.sync_events();
        if r < 0 {
            return Err(BackendError::Failed(format!(
                "destroy domain {domid}: errno {}",
                -r
            )));
        }
        Ok(())
    }

    /// Counted by the harness through `v4v.c`'s own domain, ring and waiter lists (which it also
    /// checks against the counters `v4v.c` keeps): rings of all domains, waiters of all rings.
    fn inspect(&self, what: InspectKind) -> Result<u64, BackendError> {
        let _g = lock();
        // SAFETY: plain calls into the harness, serialised by the lock.
        let n = unsafe {
            match what {
                InspectKind::Rings => ffi::v4vh_ring_count(),
                InspectKind::Waiters => ffi::v4vh_waiter_count(),
            }
        };
        #[allow(clippy::useless_conversion)] // c_ulong is u64 only on LP64 targets.
        Ok(u64::from(n))
    }
}

/// Resources the C code holds right now: page references, allocations, mappings, locks.
pub fn held_resources() -> (usize, usize, usize, u32) {
    let _g = lock();
    // SAFETY: plain calls into the harness.
    unsafe {
        (
            ffi::v4vh_pages_held(),
            ffi::v4vh_allocations(),
            ffi::v4vh_mappings(),
            ffi::v4vh_locks_held(),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::VecDeque;

    use v4v::Hypervisor;
    use v4v::abi::DomId;

    use super::CHarnessBackend;
    use crate::ast::{Op, Step};
    use crate::backend::{Backend, BackendError, Capability, InspectKind};
    use crate::model::ModelBackend;
    use crate::{Outcome, Scenario, load, run_scenario};

    /// A backend that records what the inspect probes added by [`probed`] find, and answers them
    /// with the value the probe step expects (0), so that the scenario runs on.
    struct Probing<B> {
        inner: B,
        /// For each inspect call still to come: whether it is a probe.
        plan: RefCell<VecDeque<bool>>,
        seen: RefCell<Vec<u64>>,
    }

    impl<B: Backend> Probing<B> {
        fn new(inner: B) -> Self {
            Probing {
                inner,
                plan: RefCell::new(VecDeque::new()),
                seen: RefCell::new(Vec::new()),
            }
        }
    }

    impl<B: Backend> Backend for Probing<B> {
        fn name(&self) -> &str {
            self.inner.name()
        }
        fn supports(&self, cap: Capability) -> bool {
            self.inner.supports(cap)
        }
        fn can_act_as(&self, domid: DomId) -> bool {
            self.inner.can_act_as(domid)
        }
        fn begin(&mut self) -> Result<(), BackendError> {
            self.inner.begin()
        }
        fn create_domain(&mut self, domid: DomId) -> Result<Box<dyn Hypervisor>, BackendError> {
            self.inner.create_domain(domid)
        }
        fn destroy_domain(&mut self, domid: DomId) -> Result<(), BackendError> {
            self.inner.destroy_domain(domid)
        }
        fn inspect(&self, what: InspectKind) -> Result<u64, BackendError> {
            let n = self.inner.inspect(what)?;
            if self.plan.borrow_mut().pop_front() == Some(true) {
                self.seen.borrow_mut().push(n);
                return Ok(0);
            }
            Ok(n)
        }
        fn end(&mut self) {
            self.inner.end()
        }
    }

    /// `sc` with `inspect rings => 0` and `inspect waiters => 0` probes before its first step and
    /// after every step, and the plan of inspect calls (true: a probe) it makes when it passes.
    fn probed(sc: &Scenario) -> (Scenario, Vec<bool>) {
        let probe = |what| Step {
            line: 0,
            actor: None,
            repeat: 1,
            op: Op::Inspect { what, value: 0 },
        };
        let mut out = sc.clone();
        out.requires.insert(Capability::Inspect);
        out.steps.clear();
        let mut plan = Vec::new();
        for step in std::iter::once(None).chain(sc.steps.iter().map(Some)) {
            if let Some(step) = step {
                if matches!(step.op, Op::Inspect { .. }) {
                    plan.extend(std::iter::repeat_n(false, step.repeat as usize));
                }
                out.steps.push(step.clone());
            }
            out.steps.push(probe(InspectKind::Rings));
            out.steps.push(probe(InspectKind::Waiters));
            plan.extend([true, true]);
        }
        (out, plan)
    }

    fn counts<B: Backend>(b: &mut Probing<B>, sc: &Scenario, plan: &[bool]) -> (Outcome, Vec<u64>) {
        *b.plan.borrow_mut() = plan.iter().copied().collect();
        b.seen.borrow_mut().clear();
        let outcome = run_scenario(sc, b);
        (outcome, b.seen.take())
    }

    /// Before and after every step of every scenario, the C code and the model count the same
    /// rings and waiters (the scenarios themselves assert them at a few points only).
    #[test]
    fn inspect_counts_match_the_model_after_every_step() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios");
        let scenarios = load(dir.as_ref()).expect("scenarios load");
        let mut model = Probing::new(ModelBackend::new());
        let mut c = Probing::new(CHarnessBackend::new().expect("the C harness is free"));
        let mut compared = 0;
        for ls in &scenarios {
            let (sc, plan) = probed(&ls.scenario);
            let (mo, m) = counts(&mut model, &sc, &plan);
            let (co, h) = counts(&mut c, &sc, &plan);
            let name = ls.path.display();
            assert_eq!(mo, Outcome::Pass, "{name} on the model");
            assert_eq!(co, Outcome::Pass, "{name} on the C harness");
            assert_eq!(m, h, "{name}: rings, waiters before and after each step");
            compared += m.len();
        }
        assert!(compared > 1000, "only {compared} counts compared");
    }
}
