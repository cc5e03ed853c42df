// SPDX-License-Identifier: MIT OR Apache-2.0
//! An in-process model of the V4V hypervisor, for any number of domains.
//!
//! [`Model`] owns the whole hypervisor state: every domain's rings (with the ring memory, kept
//! alive while registered as Xen's page references keep guest pages), each ring's waiters, each
//! domain's event, and the ACL table. A [`ModelDomain`] is one domain's view and implements
//! [`Hypervisor`]; it holds no state of its own beyond its id and event.
//!
//! The model follows `docs/abi.md` to the letter, including the order of checks, because the
//! conformance scenarios hold it and the C hypervisor to the same results. It trusts nothing a
//! guest wrote into ring memory: `rx_ptr` is sanitised on every read and `tx` is the model's own.
//!
//! One mutex guards all of it; events are eventfds written while holding it (a non-blocking
//! syscall), so a signal is never lost between a state change and its notification.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::io::IoSlice;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::{Arc, Mutex, MutexGuard};

use thiserror::Error;
use v4v::abi::{
    self, Addr, Config, DOMID_ANY, DOMID_FIRST_RESERVED, DOMID_SELF, DomId, Info, RingDataEnt,
    RingHeader, SendAddr, TablesRule,
};
use v4v::event::EventFd;
use v4v::hypervisor::TablesPage;
use v4v::ring::{self, InsertError, RingWriter};
use v4v::shmem::{PAGE_SIZE, RingMemory};
use v4v::{HvError, Hypervisor};

/// Errors of the model's own (non-hypercall) operations: creating and destroying domains.
#[derive(Debug, Error, PartialEq, Eq, Clone, Copy)]
pub enum ModelError {
    #[error("domain {0} exists already")]
    DomainExists(DomId),
    #[error("domain id {0:#x} is reserved")]
    ReservedDomid(DomId),
    #[error("no domain {0}")]
    NoSuchDomain(DomId),
    #[error("could not create an event for domain {0}")]
    Event(DomId),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Waiter {
    domain: DomId,
    len: u32,
}

#[derive(Debug)]
struct Ring {
    writer: RingWriter,
    /// The model's own tx: never read back from guest memory after registration.
    tx: u32,
    waiters: Vec<Waiter>,
}

impl Ring {
    /// Whether a `len`-byte message would be accepted now; a ring whose memory cannot be read
    /// takes nothing.
    fn fits_now(&self, len: u32) -> bool {
        self.writer
            .fits_now(self.tx, u64::from(len))
            .unwrap_or(false)
    }

    fn is_empty(&self) -> bool {
        self.writer.rx().map(|rx| rx == self.tx).unwrap_or(false)
    }
}

/// Pages the hypervisor maps for a ring of `len` data bytes: its header and data area.
fn ring_pages(len: u32) -> u32 {
    (abi::RING_HEADER_SIZE + len).div_ceil(PAGE_SIZE as u32)
}

/// Rings of one domain, keyed by (port, partner).
type RingKey = (u32, DomId);

#[derive(Debug)]
struct Domain {
    max_rings: u32,
    /// The cap on the pages its rings hold (each ring's header and data area, counted once per
    /// ring however the rings alias).
    max_ring_pages: u32,
    rings: BTreeMap<RingKey, Ring>,
    event: Arc<EventFd>,
    evtchn: Option<u32>,
}

impl Domain {
    /// Pages its rings hold.
    fn ring_pages(&self) -> u32 {
        self.rings
            .values()
            .map(|r| ring_pages(r.writer.len()))
            .sum()
    }
}

#[derive(Debug, Default)]
struct State {
    domains: BTreeMap<DomId, Domain>,
    rules: Vec<TablesRule>,
    next_evtchn: u32,
    /// Domains signalled since [`Model::take_signalled`] last looked: what a server forwarding
    /// events must look at, without reading every domain's event. Bounded by the domid space.
    signalled: RefCell<BTreeSet<DomId>>,
    /// Signals leave the eventfds alone (see [`Model::forward_signals_only`]).
    no_eventfds: bool,
}

impl State {
    fn signal(&self, domid: DomId) {
        if let Some(d) = self.domains.get(&domid) {
            if !self.no_eventfds {
                d.event.signal();
            }
            self.signalled.borrow_mut().insert(domid);
        }
    }

    fn domain(&self, domid: DomId) -> Result<&Domain, HvError> {
        self.domains.get(&domid).ok_or(HvError::NoSuchDomain)
    }

    fn domain_mut(&mut self, domid: DomId) -> Result<&mut Domain, HvError> {
        self.domains.get_mut(&domid).ok_or(HvError::NoSuchDomain)
    }

    /// The ring a send from `sender` to `(domain, port)` lands in: partner-specific, then ANY.
    fn lookup_key(&self, domain: DomId, port: u32, sender: DomId) -> Option<RingKey> {
        let d = self.domains.get(&domain)?;
        [(port, sender), (port, DOMID_ANY)]
            .into_iter()
            .find(|k| d.rings.contains_key(k))
    }

    /// The ACL verdict for a send: the first matching rule decides; none means accept.
    fn acl_accepts(&self, src: Addr, dst: Addr) -> bool {
        let matches = |rule: Addr, a: Addr| {
            (rule.domain == DOMID_ANY || rule.domain == a.domain)
                && (rule.port == abi::PORT_ANY || rule.port == a.port)
        };
        self.rules
            .iter()
            .find(|r| matches(r.src, src) && matches(r.dst, dst))
            .is_none_or(|r| r.accept == 1)
    }

    /// Wakes waiters on all of `owner`'s rings whose request now fits.
    fn wake_waiters(&mut self, owner: DomId) {
        let mut woken = Vec::new();
        if let Some(d) = self.domains.get_mut(&owner) {
            for ring in d.rings.values_mut() {
                let Ring {
                    writer,
                    tx,
                    waiters,
                } = ring;
                let fits_now = |len: u32| writer.fits_now(*tx, u64::from(len)).unwrap_or(false);
                waiters.retain(|w| {
                    let fits = fits_now(w.len);
                    if fits {
                        woken.push(w.domain);
                    }
                    !fits
                });
            }
        }
        for w in woken {
            self.signal(w);
        }
    }

    /// Queues `domain` for `len` bytes on a ring: true when it is (now) queued.
    fn enqueue(ring: &mut Ring, domain: DomId, len: u32) -> bool {
        if let Some(w) = ring.waiters.iter_mut().find(|w| w.domain == domain) {
            w.len = w.len.max(len);
            true
        } else if ring.waiters.len() < abi::MAX_WAITERS as usize {
            ring.waiters.push(Waiter { domain, len });
            true
        } else {
            false
        }
    }

    /// Removes a ring, signalling its waiters.
    fn remove_ring(&mut self, owner: DomId, key: RingKey) -> Option<Ring> {
        let ring = self.domains.get_mut(&owner)?.rings.remove(&key)?;
        for w in &ring.waiters {
            self.signal(w.domain);
        }
        Some(ring)
    }
}

fn rule_valid(rule: &TablesRule) -> bool {
    rule.src.pad == 0 && rule.dst.pad == 0 && rule.accept <= 1
}

/// The hypervisor model. Clones share the same state.
#[derive(Debug, Clone, Default)]
pub struct Model {
    state: Arc<Mutex<State>>,
}

impl Model {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-updated in a way that
        // matters more than losing the whole model, so recover the guard.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Creates a domain; domain 0 is the hardware (privileged) domain.
    pub fn create_domain(&self, domid: DomId) -> Result<ModelDomain, ModelError> {
        if domid >= DOMID_FIRST_RESERVED {
            return Err(ModelError::ReservedDomid(domid));
        }
        let mut st = self.lock();
        if st.domains.contains_key(&domid) {
            return Err(ModelError::DomainExists(domid));
        }
        let event = Arc::new(EventFd::new().map_err(|_| ModelError::Event(domid))?);
        st.domains.insert(
            domid,
            Domain {
                max_rings: abi::DEFAULT_MAX_RINGS,
                max_ring_pages: abi::DEFAULT_MAX_RING_PAGES,
                rings: BTreeMap::new(),
                event: event.clone(),
                evtchn: None,
            },
        );
        Ok(ModelDomain {
            model: self.clone(),
            domid,
            event,
        })
    }

    /// Destroys a domain: its rings, its waits on others' rings, and others' rings whose partner
    /// it was all go; the domains affected are signalled.
    pub fn destroy_domain(&self, domid: DomId) -> Result<(), ModelError> {
        let mut st = self.lock();
        let dead = st
            .domains
            .remove(&domid)
            .ok_or(ModelError::NoSuchDomain(domid))?;
        st.signalled.borrow_mut().remove(&domid);
        for ring in dead.rings.values() {
            for w in &ring.waiters {
                st.signal(w.domain);
            }
        }
        let owners: Vec<DomId> = st.domains.keys().copied().collect();
        for owner in owners {
            let Some(d) = st.domains.get_mut(&owner) else {
                continue;
            };
            for ring in d.rings.values_mut() {
                ring.waiters.retain(|w| w.domain != domid);
            }
            let partnered: Vec<RingKey> = d
                .rings
                .keys()
                .filter(|(_, partner)| *partner == domid)
                .copied()
                .collect();
            for key in partnered {
                st.remove_ring(owner, key);
                st.signal(owner);
            }
        }
        Ok(())
    }

    /// From now on signals only record the domain for [`Model::take_signalled`] and no longer
    /// write its eventfd (which then never becomes readable): for a server that forwards events
    /// from that set, two system calls fewer per signal. In-process users keep the eventfds.
    pub fn forward_signals_only(&self) {
        self.lock().no_eventfds = true;
    }

    /// Moves the domains signalled since the last call into `out` (cleared first), in domid
    /// order; their events stay pending until each is taken.
    pub fn take_signalled(&self, out: &mut Vec<DomId>) {
        out.clear();
        let st = self.lock();
        let mut set = st.signalled.borrow_mut();
        out.extend(set.iter().copied());
        set.clear();
    }

    /// Domains that exist now.
    pub fn domains(&self) -> Vec<DomId> {
        self.lock().domains.keys().copied().collect()
    }

    /// Rings registered, over all domains.
    pub fn ring_count(&self) -> usize {
        self.lock().domains.values().map(|d| d.rings.len()).sum()
    }

    /// Waiters queued, over all rings.
    pub fn waiter_count(&self) -> usize {
        self.lock()
            .domains
            .values()
            .flat_map(|d| d.rings.values())
            .map(|r| r.waiters.len())
            .sum()
    }
}

/// One domain of a [`Model`].
#[derive(Debug)]
pub struct ModelDomain {
    model: Model,
    domid: DomId,
    event: Arc<EventFd>,
}

impl ModelDomain {
    pub fn domid(&self) -> DomId {
        self.domid
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Locks the model, failing when this domain has been destroyed.
    fn live(&self) -> Result<MutexGuard<'_, State>, HvError> {
        let st = self.model.lock();
        st.domain(self.domid)?;
        Ok(st)
    }

    fn privileged(&self) -> Result<MutexGuard<'_, State>, HvError> {
        let st = self.live()?;
        if self.domid != 0 {
            return Err(HvError::NotPermitted);
        }
        Ok(st)
    }

    fn resolve(&self, domain: DomId) -> DomId {
        if domain == DOMID_SELF {
            self.domid
        } else {
            domain
        }
    }

    fn read_header(mem: &RingMemory, offset: usize) -> Result<RingHeader, HvError> {
        if !offset.is_multiple_of(PAGE_SIZE) {
            return Err(HvError::Invalid);
        }
        mem.read_obj::<RingHeader>(offset)
            .map_err(|_| HvError::BadAddress)
    }

    /// A sendv whose payload lies in shared memory: the bytes of `ranges` (offset, length) of
    /// `src`, one range an iov, copied straight from there into the destination ring (the
    /// simulator's path for a guest's request read in place from its request channel). Checked
    /// and answered as [`Hypervisor::sendv`].
    pub fn sendv_from(
        &self,
        addr: &SendAddr,
        src: &RingMemory,
        ranges: &[(usize, usize)],
        message_type: u32,
    ) -> Result<u32, HvError> {
        let total: u64 = ranges.iter().map(|&(_, l)| l as u64).sum();
        self.send_with(addr, ranges.len(), total, |w, tx, source| {
            w.insert_from(tx, message_type, source, src, ranges)
        })
    }

    /// Every check of a sendv of `niov` iovs, `total` payload bytes, then `insert` into the
    /// destination ring (at its `tx`, from the sender's address), then the signal or the wait.
    fn send_with(
        &self,
        addr: &SendAddr,
        niov: usize,
        total: u64,
        insert: impl FnOnce(&RingWriter, u32, Addr) -> Result<u32, InsertError>,
    ) -> Result<u32, HvError> {
        let mut st = self.live()?;
        if addr.src.pad != 0
            || addr.dst.pad != 0
            || addr.dst.domain == DOMID_ANY
            || addr.dst.port == abi::PORT_ANY
        {
            return Err(HvError::Invalid);
        }
        if addr.src.domain != self.domid && addr.src.domain != DOMID_SELF {
            return Err(HvError::NotPermitted);
        }
        if niov > abi::MAX_IOV as usize {
            return Err(HvError::TooMany);
        }
        if total > u64::from(abi::MAX_MESSAGE_SIZE) {
            return Err(HvError::MessageTooBig);
        }
        let src = Addr::new(self.domid, addr.src.port);
        let dst = Addr::new(self.resolve(addr.dst.domain), addr.dst.port);
        if !st.acl_accepts(src, dst) {
            return Err(HvError::Denied);
        }
        let key = st
            .lookup_key(dst.domain, dst.port, self.domid)
            .ok_or(HvError::Refused)?;
        let ring = st
            .domains
            .get_mut(&dst.domain)
            .and_then(|d| d.rings.get_mut(&key))
            .ok_or(HvError::Refused)?;
        match insert(&ring.writer, ring.tx, src) {
            Ok(tx) => {
                ring.tx = tx;
                st.signal(dst.domain);
                Ok(total as u32)
            }
            Err(InsertError::NeverFits { .. }) => Err(HvError::MessageTooBig),
            Err(InsertError::NoSpace) => {
                if State::enqueue(ring, self.domid, total as u32) {
                    Err(HvError::WouldBlock)
                } else {
                    Err(HvError::Busy)
                }
            }
            Err(InsertError::Ring(_)) => Err(HvError::BadAddress),
        }
    }
}

impl Hypervisor for ModelDomain {
    fn alloc_ring_memory(&self, bytes: usize) -> Result<RingMemory, HvError> {
        RingMemory::anonymous(bytes).map_err(|_| HvError::OutOfMemory)
    }

    fn register_ring(&self, mem: &RingMemory, offset: usize) -> Result<(), HvError> {
        let mut st = self.live()?;
        let h = Self::read_header(mem, offset)?;
        if h.magic != abi::RING_MAGIC || h.id.addr.pad != 0 || h.id.pad != 0 {
            return Err(HvError::Invalid);
        }
        if h.id.addr.domain != self.domid && h.id.addr.domain != DOMID_SELF {
            return Err(HvError::NotPermitted);
        }
        let partner_ok = h.id.partner < DOMID_FIRST_RESERVED || h.id.partner == DOMID_ANY;
        if h.id.addr.port == abi::PORT_ANY || !partner_ok || !ring::valid_len(h.len) {
            return Err(HvError::Invalid);
        }
        let key = (h.id.addr.port, h.id.partner);
        let dom = st.domain_mut(self.domid)?;
        let existing = dom.rings.get(&key).map(|r| (r.writer.len(), r.tx));
        match existing {
            Some((len, _)) if len != h.len => return Err(HvError::Exists),
            None if dom.rings.len() >= dom.max_rings as usize => return Err(HvError::NoSpace),
            _ => {}
        }
        // A ring moving to new memory holds both mappings while it moves: both count.
        if u64::from(dom.ring_pages()) + u64::from(ring_pages(h.len))
            > u64::from(dom.max_ring_pages)
        {
            return Err(HvError::NoSpace);
        }
        let writer =
            RingWriter::new(mem.clone(), offset, h.len).map_err(|_| HvError::BadAddress)?;
        let tx = match existing {
            Some((_, tx)) => tx,
            None => writer.initial_tx().map_err(|_| HvError::BadAddress)?,
        };
        mem.write_obj(
            offset + abi::ring_offsets::ID,
            &abi::RingId {
                addr: Addr::new(self.domid, h.id.addr.port),
                ..h.id
            },
        )
        .and_then(|()| mem.store_release_u32(offset + abi::ring_offsets::TX_PTR, tx))
        .map_err(|_| HvError::BadAddress)?;
        match dom.rings.get_mut(&key) {
            Some(ring) => ring.writer = writer,
            None => {
                dom.rings.insert(
                    key,
                    Ring {
                        writer,
                        tx,
                        waiters: Vec::new(),
                    },
                );
            }
        }
        Ok(())
    }

    fn unregister_ring(&self, mem: &RingMemory, offset: usize) -> Result<(), HvError> {
        let mut st = self.live()?;
        let h = Self::read_header(mem, offset)?;
        st.remove_ring(self.domid, (h.id.addr.port, h.id.partner))
            .ok_or(HvError::NotFound)?;
        Ok(())
    }

    fn sendv(
        &self,
        addr: &SendAddr,
        iov: &[IoSlice<'_>],
        message_type: u32,
    ) -> Result<u32, HvError> {
        let total: u64 = iov.iter().map(|s| s.len() as u64).sum();
        self.send_with(addr, iov.len(), total, |w, tx, src| {
            w.insert(tx, message_type, src, iov)
        })
    }

    fn notify(&self, entries: Option<&mut [RingDataEnt]>) -> Result<(), HvError> {
        let mut st = self.live()?;
        if let Some(ents) = entries.as_deref() {
            if ents.len() > abi::MAX_NOTIFY as usize {
                return Err(HvError::TooMany);
            }
            if ents.iter().any(|e| e.pad != 0 || e.ring.pad != 0) {
                return Err(HvError::Invalid);
            }
        }
        st.wake_waiters(self.domid);
        for ent in entries.into_iter().flatten() {
            let target = self.resolve(ent.ring.domain);
            ent.flags = 0;
            ent.max_message_size = 0;
            // As for no ring, and no waiter, when the ACL would refuse the caller's send (asked
            // from port 0: a notify names no source port).
            let src = Addr::new(self.domid, abi::PORT_ANY);
            if !st.acl_accepts(src, Addr::new(target, ent.ring.port)) {
                continue;
            }
            let Some(key) = st.lookup_key(target, ent.ring.port, self.domid) else {
                continue;
            };
            let Some(ring) = st
                .domains
                .get_mut(&target)
                .and_then(|d| d.rings.get_mut(&key))
            else {
                continue;
            };
            let max = ring::max_message_size(ring.writer.len());
            ent.max_message_size = max;
            ent.flags = abi::RING_DATA_F_EXISTS;
            if ring.is_empty() {
                ent.flags |= abi::RING_DATA_F_EMPTY;
            }
            if ring.fits_now(ent.space_required) {
                ent.flags |= abi::RING_DATA_F_SUFFICIENT;
            } else if ent.space_required <= max
                && State::enqueue(ring, self.domid, ent.space_required)
            {
                ent.flags |= abi::RING_DATA_F_PENDING;
            }
        }
        Ok(())
    }

    fn info(&self) -> Result<Info, HvError> {
        let mut st = self.live()?;
        st.next_evtchn = st.next_evtchn.max(1);
        let next = st.next_evtchn;
        let dom = st.domain_mut(self.domid)?;
        let (evtchn, allocated) = match dom.evtchn {
            Some(p) => (p, false),
            None => (next, true),
        };
        dom.evtchn = Some(evtchn);
        let info = Info {
            ring_magic: abi::RING_MAGIC,
            data_magic: abi::RING_DATA_MAGIC,
            evtchn,
            domid: self.domid,
            pad: 0,
            max_rings: dom.max_rings,
            nr_rings: dom.rings.len() as u32,
            max_ring_len: abi::MAX_RING_LEN,
            max_iov: abi::MAX_IOV,
            max_notify: abi::MAX_NOTIFY,
            max_waiters: abi::MAX_WAITERS,
            max_message_size: abi::MAX_MESSAGE_SIZE,
            max_rules: abi::MAX_RULES,
            max_ring_pages: dom.max_ring_pages,
            nr_ring_pages: dom.ring_pages(),
        };
        if allocated {
            st.next_evtchn += 1;
        }
        Ok(info)
    }

    fn config(&self, config: &Config) -> Result<(), HvError> {
        let mut st = self.privileged()?;
        if config.pad != 0
            || config.max_rings > abi::MAX_RINGS_LIMIT
            || config.max_ring_pages > abi::MAX_RING_PAGES_LIMIT
        {
            return Err(HvError::Invalid);
        }
        let dom = st.domain_mut(config.domain)?;
        dom.max_rings = config.max_rings;
        if config.max_ring_pages != 0 {
            dom.max_ring_pages = config.max_ring_pages;
        }
        Ok(())
    }

    fn tables_add(&self, rule: &TablesRule, position: u32) -> Result<(), HvError> {
        let mut st = self.privileged()?;
        if !rule_valid(rule) {
            return Err(HvError::Invalid);
        }
        if st.rules.len() >= abi::MAX_RULES as usize {
            return Err(HvError::NoSpace);
        }
        let at = position as usize;
        if at == 0 || at > st.rules.len() {
            st.rules.push(*rule);
        } else {
            st.rules.insert(at - 1, *rule);
        }
        Ok(())
    }

    fn tables_del(&self, rule: Option<&TablesRule>, position: u32) -> Result<(), HvError> {
        let mut st = self.privileged()?;
        match rule {
            Some(rule) => {
                if !rule_valid(rule) || position != 0 {
                    return Err(HvError::Invalid);
                }
                let at = st
                    .rules
                    .iter()
                    .position(|r| r == rule)
                    .ok_or(HvError::NotFound)?;
                st.rules.remove(at);
            }
            None if position == abi::TABLES_DEL_ALL => st.rules.clear(),
            None if position == 0 => return Err(HvError::Invalid),
            None => {
                let at = position as usize;
                if at > st.rules.len() {
                    return Err(HvError::NotFound);
                }
                st.rules.remove(at - 1);
            }
        }
        Ok(())
    }

    fn tables_list(&self, start: u32, max: u32) -> Result<TablesPage, HvError> {
        let st = self.privileged()?;
        if max > abi::MAX_RULES {
            return Err(HvError::Invalid);
        }
        let rules = st
            .rules
            .iter()
            .skip(start as usize)
            .take(max as usize)
            .copied()
            .collect::<Vec<_>>();
        Ok(TablesPage {
            rules,
            total: st.rules.len() as u32,
        })
    }

    fn event_fd(&self) -> BorrowedFd<'_> {
        self.event.as_fd()
    }

    fn take_event(&self) -> Result<bool, HvError> {
        Ok(self.event.take())
    }
}
