// SPDX-License-Identifier: MIT OR Apache-2.0
//! The Xen backend (`--backend xen`): the scenarios on a real, booted Xen.
//!
//! A process in a real domain can act only as that domain, and a real Xen cannot create, destroy
//! or inspect domains for the runner. So:
//!
//! - **Placements.** A scenario whose steps are performed by one domain runs twice: in dom0
//!   ([`Placement::Dom0`]) and in the guest ([`Placement::Guest`]). A scenario with two acting
//!   domains runs across both, each way round: the lower scenario domain in dom0 and the higher in
//!   the guest ([`Placement::Dom0Guest`]), and the other way ([`Placement::GuestDom0`]). A
//!   scenario that edits or lists the ACL table or ring limits is privilege-sensitive: it runs only
//!   where its domain 0 is the real dom0 and its other domains are not; one with `data` or `poke`
//!   steps (raw ring bytes, which hold domain ids) only where its acting domains keep their
//!   numbers. Scenarios with three or more acting domains, or that need `create`, `destroy` or
//!   `inspect`, are skipped with the reason.
//! - **Domain mapping.** The scenario is rewritten before it runs: each acting domain becomes its
//!   real domain, and every other domain id it mentions (domains that never act, or do not
//!   exist) keeps its number unless that is a real domain or already taken, in which case it
//!   becomes an unused id from 0x7f00 up (a domain that does not exist). Every place a domain id
//!   appears is rewritten: actors, addresses, ring header fields, partners, ACL rules, notify
//!   entries, `config` targets and expected `info` domids. Reserved ids (`self`, `any`) stay.
//! - **Two processes in lockstep.** The runner in dom0 (the coordinator) and an agent in the
//!   guest both run the same mapped scenario, each performing only its own domain's steps
//!   ([`crate::Backend::before_step`]). At each change of acting domain the turn passes over a
//!   control [`Channel`]: on Xen, two xenstore keys ([`crate::xenstore::XsChannel`]), which no V4V
//!   state can block. Each side keeps its own rings and names (a name belongs to one domain).
//! - **Between scenarios** the real hypervisor keeps its state, so each side unregisters every
//!   ring it registered and drains its event channel, and dom0 flushes the ACL table and resets
//!   both domains' ring limits. The domains' event channels persist (allocated at their first
//!   `info`). An `event` step that finds nothing pending waits [`EVENT_SETTLE`] before answering
//!   `no`, since a real event crosses vCPUs asynchronously.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{IoSlice, Write};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use v4v::abi::{self, Addr, Config, DOMID_FIRST_RESERVED, DomId, Info, RingDataEnt, SendAddr};
use v4v::hypervisor::TablesPage;
use v4v::shmem::RingMemory;
use v4v::{HvError, Hypervisor};

use crate::ast::*;
use crate::backend::{Backend, BackendError, Capability, RemoteFailure, StepPlace};
use crate::run::{LoadedScenario, Outcome, run_scenario};

/// How long an `event` step waits for a late event before answering `no`.
pub const EVENT_SETTLE: Duration = Duration::from_millis(100);
/// How long the event channel must stay quiet for a scenario's leftovers to count as taken.
const DRAIN_QUIET: Duration = Duration::from_millis(30);
/// How long the coordinator waits for each answer of the agent.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the agent waits for its next command.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(300);
/// First id given to scenario domains that must not exist on the real machine.
const PHANTOM_BASE: DomId = 0x7f00;

/// A strictly alternating message channel between the coordinator and its agent.
pub trait Channel {
    fn send(&mut self, msg: &str) -> Result<(), String>;
    fn recv(&mut self, timeout: Duration) -> Result<String, String>;
}

// ---------------------------------------------------------------------------------------------
// Placements and the domain mapping.

/// Where the acting domains of a scenario run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Placement {
    /// One acting domain, in dom0.
    Dom0,
    /// One acting domain, in the guest.
    Guest,
    /// Two acting domains: the lower scenario domain in dom0, the higher in the guest.
    Dom0Guest,
    /// Two acting domains: the lower in the guest, the higher in dom0.
    GuestDom0,
}

impl Placement {
    pub const ALL: [Placement; 4] = [
        Placement::Dom0,
        Placement::Guest,
        Placement::Dom0Guest,
        Placement::GuestDom0,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Placement::Dom0 => "dom0",
            Placement::Guest => "guest",
            Placement::Dom0Guest => "dom0+guest",
            Placement::GuestDom0 => "guest+dom0",
        }
    }

    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == s)
    }

    /// How many acting domains a scenario run this way has.
    pub fn actors(self) -> usize {
        match self {
            Placement::Dom0 | Placement::Guest => 1,
            Placement::Dom0Guest | Placement::GuestDom0 => 2,
        }
    }
}

/// What a scenario needs of real domains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape {
    /// The domains that perform steps, ascending.
    pub actors: Vec<DomId>,
    /// Whether it edits or lists the ACL table or ring limits (results depend on privilege).
    pub privileged: bool,
    /// Whether it compares or writes raw ring bytes (`data`, `poke`), which embed domain ids.
    pub raw_bytes: bool,
}

pub fn shape(sc: &Scenario) -> Shape {
    let actors: BTreeSet<DomId> = sc.steps.iter().filter_map(|s| s.actor).collect();
    let privileged = sc.steps.iter().any(|s| {
        matches!(
            s.op,
            Op::Config { .. } | Op::AclAdd { .. } | Op::AclDel { .. } | Op::AclList { .. }
        )
    });
    let raw_bytes = sc
        .steps
        .iter()
        .any(|s| matches!(s.op, Op::Data { .. } | Op::Poke { .. }));
    Shape {
        actors: actors.into_iter().collect(),
        privileged,
        raw_bytes,
    }
}

/// The real domain of each acting scenario domain under `placement`, or why it cannot run so.
pub fn assign(
    shape: &Shape,
    placement: Placement,
    guest: DomId,
) -> Result<Vec<(DomId, DomId)>, String> {
    if shape.actors.len() != placement.actors() {
        return Err(format!(
            "has {} acting domains, this placement {}",
            shape.actors.len(),
            placement.actors()
        ));
    }
    let a = &shape.actors;
    let pairs = match placement {
        Placement::Dom0 => vec![(a[0], 0)],
        Placement::Guest => vec![(a[0], guest)],
        Placement::Dom0Guest => vec![(a[0], 0), (a[1], guest)],
        Placement::GuestDom0 => vec![(a[0], guest), (a[1], 0)],
    };
    if shape.privileged {
        for (s, r) in &pairs {
            if (*s == 0) != (*r == 0) {
                return Err(format!(
                    "it uses the ACL table or ring limits, so its domain 0 must be the real dom0 \
                     and its other domains unprivileged; here scenario domain {s} would be {}",
                    if *r == 0 { "dom0" } else { "the guest" }
                ));
            }
        }
    }
    if shape.raw_bytes
        && let Some((s, r)) = pairs.iter().find(|(s, r)| s != r)
    {
        return Err(format!(
            "its `data`/`poke` steps compare or write raw ring bytes, which hold domain ids, so \
             its acting domains must keep their numbers; here scenario domain {s} would be {r}"
        ));
    }
    Ok(pairs)
}

/// Applies `f` to every domain id below `DOMID_FIRST_RESERVED` in the scenario.
fn map_domains(sc: &Scenario, f: &mut dyn FnMut(DomId) -> DomId) -> Scenario {
    fn d(f: &mut dyn FnMut(DomId) -> DomId, x: DomId) -> DomId {
        if x < DOMID_FIRST_RESERVED { f(x) } else { x }
    }
    fn a(f: &mut dyn FnMut(DomId) -> DomId, x: Addr) -> Addr {
        Addr {
            domain: d(f, x.domain),
            ..x
        }
    }
    fn rule(f: &mut dyn FnMut(DomId) -> DomId, r: &Rule) -> Rule {
        Rule {
            src: a(f, r.src),
            dst: a(f, r.dst),
            ..*r
        }
    }
    fn field(f: &mut dyn FnMut(DomId) -> DomId, k: HeaderField, v: u64) -> u64 {
        match DomId::try_from(v) {
            Ok(x) if k.is_domain() => u64::from(d(f, x)),
            _ => v,
        }
    }
    fn fields(
        f: &mut dyn FnMut(DomId) -> DomId,
        fs: &[(HeaderField, u64)],
    ) -> Vec<(HeaderField, u64)> {
        fs.iter().map(|(k, v)| (*k, field(f, *k, *v))).collect()
    }
    let domains = sc.domains.iter().map(|x| d(f, *x)).collect();
    let mut steps = Vec::with_capacity(sc.steps.len());
    for s in &sc.steps {
        let actor = s.actor.map(|x| d(f, x));
        let op = match &s.op {
            Op::Ring { name, spec, expect } => Op::Ring {
                name: name.clone(),
                spec: RingSpec {
                    fields: fields(f, &spec.fields),
                    ..spec.clone()
                },
                expect: expect.clone(),
            },
            Op::Rings {
                count,
                port,
                len,
                partner,
                expect,
            } => Op::Rings {
                count: *count,
                port: *port,
                len: *len,
                partner: d(f, *partner),
                expect: expect.clone(),
            },
            Op::Send {
                src,
                dst,
                payload,
                message_type,
                expect,
            } => Op::Send {
                src: a(f, *src),
                dst: a(f, *dst),
                payload: payload.clone(),
                message_type: *message_type,
                expect: expect.clone(),
            },
            Op::Batch { sends, expect } => Op::Batch {
                sends: sends
                    .iter()
                    .map(|s| SendSpec {
                        src: a(f, s.src),
                        dst: a(f, s.dst),
                        ..s.clone()
                    })
                    .collect(),
                expect: expect.clone(),
            },
            Op::Recv {
                ring,
                expect:
                    RecvExpect::Message {
                        from,
                        message_type,
                        payload,
                    },
            } => Op::Recv {
                ring: ring.clone(),
                expect: RecvExpect::Message {
                    from: a(f, *from),
                    message_type: *message_type,
                    payload: payload.clone(),
                },
            },
            Op::Field {
                ring,
                field: k,
                value,
            } => Op::Field {
                ring: ring.clone(),
                field: *k,
                value: field(f, *k, *value),
            },
            Op::Set { ring, fields: fs } => Op::Set {
                ring: ring.clone(),
                fields: fields(f, fs),
            },
            Op::Notify {
                entries: Some(es),
                expect,
            } => Op::Notify {
                entries: Some(
                    es.iter()
                        .map(|e| NotifyEntry {
                            ring: a(f, e.ring),
                            ..e.clone()
                        })
                        .collect(),
                ),
                expect: expect.clone(),
            },
            Op::Info {
                expect: Expect::Ok(fs),
            } => Op::Info {
                expect: Expect::Ok(
                    fs.iter()
                        .map(|(k, v)| match (k, DomId::try_from(*v)) {
                            (InfoField::Domid, Ok(x)) => (*k, u64::from(d(f, x))),
                            _ => (*k, *v),
                        })
                        .collect(),
                ),
            },
            Op::Config {
                domain,
                max_rings,
                max_pages,
                pad,
                expect,
            } => Op::Config {
                domain: d(f, *domain),
                max_rings: *max_rings,
                max_pages: *max_pages,
                pad: *pad,
                expect: expect.clone(),
            },
            Op::AclAdd {
                rule: r,
                position,
                expect,
            } => Op::AclAdd {
                rule: rule(f, r),
                position: *position,
                expect: expect.clone(),
            },
            Op::AclDel { spec, expect } => Op::AclDel {
                spec: DelSpec {
                    rule: spec.rule.as_ref().map(|r| rule(f, r)),
                    position: spec.position,
                },
                expect: expect.clone(),
            },
            Op::AclList {
                start,
                max,
                expect: Expect::Ok(l),
            } => Op::AclList {
                start: *start,
                max: *max,
                expect: Expect::Ok(ListExpect {
                    total: l.total,
                    rules: l.rules.iter().map(|r| rule(f, r)).collect(),
                }),
            },
            Op::Create { domain } => Op::Create {
                domain: d(f, *domain),
            },
            Op::Destroy { domain } => Op::Destroy {
                domain: d(f, *domain),
            },
            other => other.clone(),
        };
        steps.push(Step {
            actor,
            op,
            ..s.clone()
        });
    }
    Scenario {
        name: sc.name.clone(),
        domains,
        requires: sc.requires.clone(),
        steps,
    }
}

/// Every domain id below `DOMID_FIRST_RESERVED` the scenario mentions.
pub fn domain_ids(sc: &Scenario) -> BTreeSet<DomId> {
    let mut ids = BTreeSet::new();
    map_domains(sc, &mut |x| {
        ids.insert(x);
        x
    });
    ids
}

/// The full mapping of a scenario's domain ids: `acting` pairs as given, every other id to
/// itself unless that is a real domain or taken, else to an unused id from 0x7f00 up.
pub fn domain_map(
    sc: &Scenario,
    acting: &[(DomId, DomId)],
    real: &[DomId],
) -> BTreeMap<DomId, DomId> {
    let ids = domain_ids(sc);
    let mut map: BTreeMap<DomId, DomId> = acting.iter().copied().collect();
    let mut used: BTreeSet<DomId> = map.values().copied().chain(real.iter().copied()).collect();
    let mut next = PHANTOM_BASE;
    for &id in &ids {
        if map.contains_key(&id) {
            continue;
        }
        let to = if used.contains(&id) {
            while used.contains(&next) || ids.contains(&next) {
                next += 1;
            }
            next
        } else {
            id
        };
        used.insert(to);
        map.insert(id, to);
    }
    map
}

/// The scenario with its domain ids replaced as `map` says (ids not in it are kept).
pub fn apply_map(sc: &Scenario, map: &BTreeMap<DomId, DomId>) -> Scenario {
    map_domains(sc, &mut |x| map.get(&x).copied().unwrap_or(x))
}

fn map_text(map: &BTreeMap<DomId, DomId>) -> String {
    let v: Vec<String> = map.iter().map(|(a, b)| format!("{a}={b}")).collect();
    if v.is_empty() {
        "-".into()
    } else {
        v.join(",")
    }
}

fn parse_map(s: &str) -> Option<BTreeMap<DomId, DomId>> {
    if s == "-" {
        return Some(BTreeMap::new());
    }
    s.split(',')
        .map(|kv| {
            let (a, b) = kv.split_once('=')?;
            Some((a.parse().ok()?, b.parse().ok()?))
        })
        .collect()
}

/// FNV-1a of a scenario file's text: both sides must run the same file.
pub fn text_hash(text: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

// ---------------------------------------------------------------------------------------------
// This process's domain: its one hypervisor handle, and what it registered.

struct Registered {
    /// Kept mapped until the ring is unregistered: the hypervisor holds its pages.
    _mem: RingMemory,
    port: u32,
    partner: DomId,
}

/// The domain this process acts as, shared by the handles the runner gets.
pub struct Local {
    hv: Arc<dyn Hypervisor>,
    me: DomId,
    settle: Duration,
    rings: Arc<Mutex<Vec<Registered>>>,
}

impl Local {
    /// `settle`: how long `event` waits for a late event (zero for synchronous models).
    pub fn new(hv: Arc<dyn Hypervisor>, me: DomId, settle: Duration) -> Self {
        Local {
            hv,
            me,
            settle,
            rings: Arc::new(Mutex::new(Vec::new())),
        }
    }

    pub fn domid(&self) -> DomId {
        self.me
    }

    fn handle(&self, domid: DomId) -> Box<dyn Hypervisor> {
        if domid == self.me {
            Box::new(Tracked {
                hv: self.hv.clone(),
                rings: self.rings.clone(),
                settle: self.settle,
            })
        } else {
            Box::new(Absent {
                hv: self.hv.clone(),
            })
        }
    }

    /// Takes whatever the scenario left pending. Taking an event unmasks the port, and Xen raises
    /// it again on unmask when another message landed while it was masked, so this keeps taking
    /// until the channel stays quiet for [`DRAIN_QUIET`] (without it, the next scenario's first
    /// `event => no` step sometimes saw the last one's signal).
    fn drain_events(&self) {
        for _ in 0..50 {
            let _ = self.hv.take_event();
            if !poll_readable(self.hv.event_fd(), DRAIN_QUIET) {
                break;
            }
        }
    }

    /// Unregisters every ring registered since the last call, by id (the runner may have
    /// scribbled on the headers), and drops their memories.
    fn unregister_all(&self) -> Result<(), String> {
        let regs: Vec<Registered> =
            std::mem::take(&mut *self.rings.lock().unwrap_or_else(|e| e.into_inner()));
        if regs.is_empty() {
            return Ok(());
        }
        let scratch = self
            .hv
            .alloc_ring_memory(abi::RING_HEADER_SIZE as usize)
            .map_err(|e| format!("cleanup: alloc_ring_memory: {e}"))?;
        let ids: BTreeSet<(u32, DomId)> = regs.iter().map(|r| (r.port, r.partner)).collect();
        for (port, partner) in ids {
            let h = abi::RingHeader {
                magic: abi::RING_MAGIC,
                id: abi::RingId {
                    addr: Addr {
                        port,
                        domain: self.me,
                        pad: 0,
                    },
                    partner,
                    pad: 0,
                },
                len: 0,
                ..Default::default()
            };
            scratch
                .write_obj(0, &h)
                .map_err(|e| format!("cleanup: {e}"))?;
            match self.hv.unregister_ring(&scratch, 0) {
                Ok(()) | Err(HvError::NotFound) => {}
                Err(e) => return Err(format!("cleanup: unregister port {port}: {e}")),
            }
        }
        drop(regs);
        Ok(())
    }

    /// dom0 only: flushes the ACL table and gives `domains` the default ring limit.
    fn reset_privileged(&self, domains: &[DomId]) -> Result<(), String> {
        if self.me != 0 {
            return Ok(());
        }
        self.hv
            .tables_del(None, abi::TABLES_DEL_ALL)
            .map_err(|e| format!("flushing the ACL table: {e}"))?;
        for &d in domains {
            let c = Config {
                domain: d,
                pad: 0,
                max_rings: abi::DEFAULT_MAX_RINGS,
                max_ring_pages: abi::DEFAULT_MAX_RING_PAGES,
            };
            self.hv
                .config(&c)
                .map_err(|e| format!("resetting domain {d}'s ring limits: {e}"))?;
        }
        Ok(())
    }

    /// What a scenario leaves behind is removed: rings, events, and (dom0) rules and limits.
    fn reset(&self, domains: &[DomId]) -> Result<(), String> {
        let r = self.unregister_all();
        let p = self.reset_privileged(domains);
        self.drain_events();
        r.and(p)
    }
}

/// The handle of this process's domain: records registrations, and lets a late event arrive.
struct Tracked {
    hv: Arc<dyn Hypervisor>,
    rings: Arc<Mutex<Vec<Registered>>>,
    settle: Duration,
}

fn poll_readable(fd: BorrowedFd<'_>, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: polls one live pollfd.
    unsafe { libc::poll(&mut pfd, 1, ms) > 0 }
}

impl Hypervisor for Tracked {
    fn alloc_ring_memory(&self, bytes: usize) -> Result<RingMemory, HvError> {
        self.hv.alloc_ring_memory(bytes)
    }

    fn register_ring(&self, mem: &RingMemory, offset: usize) -> Result<(), HvError> {
        self.hv.register_ring(mem, offset)?;
        let id: abi::RingId = mem
            .read_obj(offset + abi::ring_offsets::ID)
            .map_err(|_| HvError::BadAddress)?;
        self.rings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Registered {
                _mem: mem.clone(),
                port: id.addr.port,
                partner: id.partner,
            });
        Ok(())
    }

    fn unregister_ring(&self, mem: &RingMemory, offset: usize) -> Result<(), HvError> {
        self.hv.unregister_ring(mem, offset)
    }

    fn sendv(
        &self,
        addr: &SendAddr,
        iov: &[IoSlice<'_>],
        message_type: u32,
    ) -> Result<u32, HvError> {
        self.hv.sendv(addr, iov, message_type)
    }

    fn notify(&self, entries: Option<&mut [RingDataEnt]>) -> Result<(), HvError> {
        self.hv.notify(entries)
    }

    fn info(&self) -> Result<Info, HvError> {
        self.hv.info()
    }

    fn config(&self, config: &Config) -> Result<(), HvError> {
        self.hv.config(config)
    }

    fn tables_add(&self, rule: &abi::TablesRule, position: u32) -> Result<(), HvError> {
        self.hv.tables_add(rule, position)
    }

    fn tables_del(&self, rule: Option<&abi::TablesRule>, position: u32) -> Result<(), HvError> {
        self.hv.tables_del(rule, position)
    }

    fn tables_list(&self, start: u32, max: u32) -> Result<TablesPage, HvError> {
        self.hv.tables_list(start, max)
    }

    fn event_fd(&self) -> BorrowedFd<'_> {
        self.hv.event_fd()
    }

    fn take_event(&self) -> Result<bool, HvError> {
        if self.hv.take_event()? {
            return Ok(true);
        }
        if self.settle.is_zero() || !poll_readable(self.hv.event_fd(), self.settle) {
            return Ok(false);
        }
        self.hv.take_event()
    }
}

/// A domain this process does not act as (the other process's, or one that does not exist).
/// The runner creates handles for every domain of a scenario; steps of these are never
/// performed here.
struct Absent {
    hv: Arc<dyn Hypervisor>,
}

const NOT_HERE: HvError = HvError::Other(libc::EREMOTE);

impl Hypervisor for Absent {
    fn alloc_ring_memory(&self, _: usize) -> Result<RingMemory, HvError> {
        Err(NOT_HERE)
    }
    fn register_ring(&self, _: &RingMemory, _: usize) -> Result<(), HvError> {
        Err(NOT_HERE)
    }
    fn unregister_ring(&self, _: &RingMemory, _: usize) -> Result<(), HvError> {
        Err(NOT_HERE)
    }
    fn sendv(&self, _: &SendAddr, _: &[IoSlice<'_>], _: u32) -> Result<u32, HvError> {
        Err(NOT_HERE)
    }
    fn notify(&self, _: Option<&mut [RingDataEnt]>) -> Result<(), HvError> {
        Err(NOT_HERE)
    }
    fn info(&self) -> Result<Info, HvError> {
        Err(NOT_HERE)
    }
    fn config(&self, _: &Config) -> Result<(), HvError> {
        Err(NOT_HERE)
    }
    fn tables_add(&self, _: &abi::TablesRule, _: u32) -> Result<(), HvError> {
        Err(NOT_HERE)
    }
    fn tables_del(&self, _: Option<&abi::TablesRule>, _: u32) -> Result<(), HvError> {
        Err(NOT_HERE)
    }
    fn tables_list(&self, _: u32, _: u32) -> Result<TablesPage, HvError> {
        Err(NOT_HERE)
    }
    fn event_fd(&self) -> BorrowedFd<'_> {
        self.hv.event_fd()
    }
    fn take_event(&self) -> Result<bool, HvError> {
        Err(NOT_HERE)
    }
}

// ---------------------------------------------------------------------------------------------
// The coordinator (dom0).

struct CoordScenario {
    /// Domains the runner may create handles for (the mapped `domains` line).
    known: BTreeSet<DomId>,
    /// `begin ...` for the agent, when the guest acts in this scenario.
    begin: Option<String>,
    /// The agent has begun the scenario and not yet finished it.
    agent_in: bool,
    /// Steps before this index the agent has performed already.
    remote_until: usize,
}

/// The runner's backend in dom0: performs dom0's steps and hands the guest's to the agent.
pub struct Coordinator {
    local: Local,
    peer: Option<DomId>,
    chan: Option<Box<dyn Channel>>,
    /// Why the agent cannot be used any more (it stopped answering).
    agent_lost: Option<String>,
    current: Option<CoordScenario>,
}

impl Coordinator {
    pub fn new(local: Local, peer: Option<(DomId, Box<dyn Channel>)>) -> Self {
        let (peer, chan) = match peer {
            Some((d, c)) => (Some(d), Some(c)),
            None => (None, None),
        };
        Coordinator {
            local,
            peer,
            chan,
            agent_lost: None,
            current: None,
        }
    }

    /// Waits for the agent's `hello`.
    pub fn connect(&mut self, timeout: Duration) -> Result<(), String> {
        let r = self.ask_with(None, timeout);
        match r {
            Ok(m) if m.starts_with("hello") => Ok(()),
            Ok(m) => Err(format!("the agent said {m:?} instead of hello")),
            Err(e) => Err(e),
        }
    }

    fn ask_with(&mut self, msg: Option<&str>, timeout: Duration) -> Result<String, String> {
        if let Some(why) = &self.agent_lost {
            return Err(why.clone());
        }
        let Some(chan) = self.chan.as_mut() else {
            return Err("no guest agent".into());
        };
        let r = match msg {
            Some(m) => chan.send(m).and_then(|()| chan.recv(timeout)),
            None => chan.recv(timeout),
        };
        if let Err(e) = &r {
            self.agent_lost = Some(format!("the guest agent is lost: {e}"));
        }
        r
    }

    fn ask(&mut self, msg: &str) -> Result<String, String> {
        self.ask_with(Some(msg), ANSWER_TIMEOUT)
    }

    /// Tells the agent to exit.
    pub fn quit(&mut self) {
        if self.chan.is_some() && self.agent_lost.is_none() {
            let _ = self.ask_with(Some("quit"), Duration::from_secs(10));
        }
    }

    fn reals(&self) -> Vec<DomId> {
        let mut v = vec![self.local.me];
        v.extend(self.peer);
        v
    }

    fn guest_desc(&self) -> String {
        match self.peer {
            Some(g) => format!("the guest (domain {g})"),
            None => "the guest".into(),
        }
    }
}

impl Backend for Coordinator {
    fn name(&self) -> &str {
        "xen"
    }

    fn supports(&self, _cap: Capability) -> bool {
        false
    }

    fn can_act_as(&self, domid: DomId) -> bool {
        self.current
            .as_ref()
            .is_some_and(|c| c.known.contains(&domid))
    }

    fn begin(&mut self) -> Result<(), BackendError> {
        let reals = self.reals();
        self.local.reset(&reals).map_err(BackendError::Failed)?;
        let Some(msg) = self.current.as_ref().and_then(|c| c.begin.clone()) else {
            return Ok(());
        };
        let answer = self.ask(&msg).map_err(BackendError::Failed)?;
        if answer != "ready" {
            return Err(BackendError::Failed(format!("the guest agent: {answer}")));
        }
        if let Some(c) = self.current.as_mut() {
            c.agent_in = true;
            c.remote_until = 0;
        }
        Ok(())
    }

    fn create_domain(&mut self, domid: DomId) -> Result<Box<dyn Hypervisor>, BackendError> {
        Ok(self.local.handle(domid))
    }

    fn before_step(&mut self, index: usize, step: &Step) -> Result<StepPlace, RemoteFailure> {
        let Some(actor) = step.actor else {
            return Ok(StepPlace::Here);
        };
        if actor == self.local.me || Some(actor) != self.peer {
            return Ok(StepPlace::Here);
        }
        if self
            .current
            .as_ref()
            .is_some_and(|c| index < c.remote_until)
        {
            return Ok(StepPlace::Elsewhere);
        }
        let guest = self.guest_desc();
        let fail = |step, message| Err(RemoteFailure { step, message });
        let answer = match self.ask(&format!("run {index}")) {
            Ok(a) => a,
            Err(e) => return fail(index, e),
        };
        let mut words = answer.splitn(3, ' ');
        match (
            words.next(),
            words.next().and_then(|n| n.parse::<usize>().ok()),
        ) {
            (Some("at"), Some(j)) if j > index => {
                if let Some(c) = self.current.as_mut() {
                    c.remote_until = j;
                }
                Ok(StepPlace::Elsewhere)
            }
            (Some("fail"), Some(k)) => {
                // The agent keeps its rings until `end`, which `end()` sends.
                let msg = words.next().unwrap_or("").to_string();
                fail(k, format!("{msg} (in {guest})"))
            }
            _ => {
                self.agent_lost = Some(format!("the guest agent answered {answer:?}"));
                fail(
                    index,
                    format!("the guest agent answered {answer:?} to `run {index}`"),
                )
            }
        }
    }

    fn end(&mut self) {
        let agent_in = self.current.as_ref().is_some_and(|c| c.agent_in);
        if agent_in {
            match self.ask("end") {
                Ok(a) if a == "ended" => {}
                Ok(a) => eprintln!("v4v-conformance: the guest agent ended with {a:?}"),
                Err(e) => eprintln!("v4v-conformance: {e}"),
            }
        }
        let reals = self.reals();
        if let Err(e) = self.local.reset(&reals) {
            eprintln!("v4v-conformance: cleaning up dom0: {e}");
        }
    }
}

/// Totals of a run, overall and per placement.
#[derive(Debug, Default, Clone)]
pub struct XenSummary {
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
    /// (passed, failed, skipped) per placement; skips that apply to every placement are under
    /// `None`.
    pub per: BTreeMap<Option<Placement>, (usize, usize, usize)>,
}

impl XenSummary {
    fn count(&mut self, p: Option<Placement>, outcome: &Outcome) {
        let e = self.per.entry(p).or_default();
        match outcome {
            Outcome::Pass => {
                self.passed += 1;
                e.0 += 1;
            }
            Outcome::Fail { .. } => {
                self.failed += 1;
                e.1 += 1;
            }
            Outcome::Skip { .. } => {
                self.skipped += 1;
                e.2 += 1;
            }
        }
    }

    /// `N passed, M failed[, K skipped]`.
    pub fn line(&self) -> String {
        let mut s = format!("{} passed, {} failed", self.passed, self.failed);
        if self.skipped > 0 {
            s.push_str(&format!(", {} skipped", self.skipped));
        }
        s
    }

    /// One line per placement.
    pub fn placement_lines(&self) -> Vec<String> {
        self.per
            .iter()
            .map(|(p, (a, b, c))| {
                format!(
                    "{}: {a} passed, {b} failed, {c} skipped",
                    p.map_or("every placement", |p| p.name())
                )
            })
            .collect()
    }
}

fn file_name(ls: &LoadedScenario) -> String {
    ls.path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Runs every scenario in each of `placements` that fits it, printing `PASS/FAIL/SKIP name
/// [placement]` lines, and returns the totals.
pub fn coordinate(
    scenarios: &[LoadedScenario],
    co: &mut Coordinator,
    placements: &BTreeSet<Placement>,
    out: &mut dyn Write,
) -> std::io::Result<XenSummary> {
    let mut sum = XenSummary::default();
    for ls in scenarios {
        let name = ls.name();
        let sc = &ls.scenario;
        let text = std::fs::read_to_string(&ls.path).unwrap_or_default();
        let skip_all = if !sc.requires.is_empty() {
            let caps: Vec<&str> = sc.requires.iter().map(|c| c.keyword()).collect();
            Some(format!(
                "needs `{}`, which a real Xen does not offer the runner",
                caps.join(" ")
            ))
        } else {
            let n = shape(sc).actors.len();
            (n > 2).then(|| {
                format!("needs {n} acting domains; this machine has 2 (dom0 and the guest)")
            })
        };
        if let Some(reason) = skip_all {
            writeln!(out, "SKIP {name}: {reason}")?;
            sum.count(None, &Outcome::Skip { reason });
            continue;
        }
        let sh = shape(sc);
        for &p in placements {
            if p.actors() != sh.actors.len().max(1) {
                continue;
            }
            let t0 = Instant::now();
            let outcome = run_placed(ls, &text, &sh, p, co);
            let label = format!("{name} [{}]", p.name());
            match &outcome {
                Outcome::Pass => writeln!(out, "PASS {label} ({} ms)", t0.elapsed().as_millis())?,
                Outcome::Skip { reason } => writeln!(out, "SKIP {label}: {reason}")?,
                Outcome::Fail {
                    step,
                    line,
                    message,
                } => {
                    if *step == 0 {
                        writeln!(
                            out,
                            "FAIL {label}: setup ({}): {message}",
                            ls.path.display()
                        )?;
                    } else {
                        writeln!(
                            out,
                            "FAIL {label}: step {step} ({}:{line}): {message}",
                            ls.path.display()
                        )?;
                    }
                }
            }
            out.flush()?;
            sum.count(Some(p), &outcome);
        }
    }
    Ok(sum)
}

fn run_placed(
    ls: &LoadedScenario,
    text: &str,
    sh: &Shape,
    p: Placement,
    co: &mut Coordinator,
) -> Outcome {
    let skip = |reason: String| Outcome::Skip { reason };
    let needs_guest = p != Placement::Dom0;
    let guest = match co.peer {
        Some(g) => g,
        None if needs_guest => return skip("no guest agent (give --xen-peer DOMID)".into()),
        None => 0x7fef, // unused: the placement is dom0 only
    };
    if needs_guest && let Some(why) = &co.agent_lost {
        return skip(why.clone());
    }
    let acting = if sh.actors.is_empty() {
        Vec::new()
    } else {
        match assign(sh, p, guest) {
            Ok(a) => a,
            Err(why) => return skip(why),
        }
    };
    let reals = co.reals();
    let map = domain_map(&ls.scenario, &acting, &reals);
    let mapped = apply_map(&ls.scenario, &map);
    let uses_guest = acting.iter().any(|(_, r)| Some(*r) == co.peer);
    co.current = Some(CoordScenario {
        known: mapped.domains.iter().copied().collect(),
        begin: uses_guest.then(|| {
            format!(
                "begin {} {} {}",
                file_name(ls),
                text_hash(text),
                map_text(&map)
            )
        }),
        agent_in: false,
        remote_until: 0,
    });
    let outcome = run_scenario(&mapped, co);
    co.current = None;
    outcome
}

// ---------------------------------------------------------------------------------------------
// The agent (in the guest).

#[derive(Default)]
struct AgentScenario {
    known: BTreeSet<DomId>,
    /// This side performs steps now.
    holding: bool,
    /// The coordinator ended the scenario.
    ended: bool,
    steps: usize,
}

/// The runner's backend in the guest: performs the guest's steps when the coordinator says so.
pub struct Agent {
    local: Local,
    chan: Box<dyn Channel>,
    current: Option<AgentScenario>,
    /// Set when the channel failed: the agent stops.
    broken: Option<String>,
}

impl Agent {
    pub fn new(local: Local, chan: Box<dyn Channel>) -> Self {
        Agent {
            local,
            chan,
            current: None,
            broken: None,
        }
    }

    fn recv(&mut self) -> Result<String, String> {
        let r = self.chan.recv(COMMAND_TIMEOUT);
        if let Err(e) = &r {
            self.broken = Some(e.clone());
        }
        r
    }

    fn send(&mut self, msg: &str) {
        if let Err(e) = self.chan.send(msg) {
            self.broken = Some(e);
        }
    }

    /// Serves the coordinator until it says `quit` (or the channel fails). `files` maps scenario
    /// file names to their text. Logs each scenario's outcome to `log`.
    pub fn serve(
        &mut self,
        files: &BTreeMap<String, String>,
        log: &mut dyn Write,
    ) -> Result<(), String> {
        let me = self.local.me;
        self.send(&format!("hello {me}"));
        loop {
            if let Some(e) = &self.broken {
                return Err(e.clone());
            }
            let cmd = self.recv()?;
            let mut w = cmd.split(' ');
            match w.next() {
                Some("quit") => {
                    self.send("bye");
                    return Ok(());
                }
                Some("end") => self.send("ended"),
                Some("begin") => {
                    let (file, hash, map) = (w.next(), w.next(), w.next());
                    let prepared = (|| {
                        let (file, hash, map) = (file?, hash?, map?);
                        Some((file, hash, parse_map(map)?))
                    })()
                    .ok_or_else(|| format!("malformed command {cmd:?}"))
                    .and_then(|(file, hash, map)| {
                        let text = files
                            .get(file)
                            .ok_or_else(|| format!("no scenario file {file} here"))?;
                        if text_hash(text) != hash {
                            return Err(format!("{file} differs from the coordinator's"));
                        }
                        let sc = crate::parse::parse(text)
                            .map_err(|e| format!("{file}:{}: {}", e.line, e.message))?;
                        Ok((file.to_string(), apply_map(&sc, &map)))
                    });
                    match prepared {
                        Err(e) => self.send(&format!("error {e}")),
                        Ok((file, sc)) => {
                            self.send("ready");
                            let outcome = self.run(&sc);
                            let _ = writeln!(log, "agent: {file}: {outcome:?}");
                        }
                    }
                }
                _ => self.send(&format!("error unknown command {cmd:?}")),
            }
        }
    }

    /// Runs one scenario with the coordinator, then cleans up.
    fn run(&mut self, sc: &Scenario) -> Outcome {
        self.current = Some(AgentScenario {
            known: sc.domains.iter().copied().collect(),
            steps: sc.steps.len(),
            ..Default::default()
        });
        let outcome = run_scenario(sc, self);
        let cur = self.current.take().unwrap_or_default();
        if cur.holding {
            // Our steps ran to the end of the scenario, or one of them failed.
            match &outcome {
                Outcome::Fail { step, message, .. } => {
                    self.send(&format!("fail {} {message}", step.saturating_sub(1)))
                }
                Outcome::Skip { reason } => self.send(&format!("fail 0 skipped: {reason}")),
                Outcome::Pass => self.send(&format!("at {}", cur.steps)),
            }
        }
        if !cur.ended && self.broken.is_none() {
            // Keep our rings until the coordinator is done with them.
            loop {
                match self.recv() {
                    Ok(c) if c == "end" => break,
                    Ok(c) => self.send(&format!("error unexpected {c:?} after the scenario")),
                    Err(_) => break,
                }
            }
        }
        let cleaned = self.local.reset(&[]);
        match cleaned {
            Ok(()) => self.send("ended"),
            Err(e) => self.send(&format!("error {e}")),
        }
        outcome
    }
}

impl Backend for Agent {
    fn name(&self) -> &str {
        "xen"
    }

    fn supports(&self, _cap: Capability) -> bool {
        false
    }

    fn can_act_as(&self, domid: DomId) -> bool {
        self.current
            .as_ref()
            .is_some_and(|c| c.known.contains(&domid))
    }

    fn begin(&mut self) -> Result<(), BackendError> {
        self.local.reset(&[]).map_err(BackendError::Failed)
    }

    fn create_domain(&mut self, domid: DomId) -> Result<Box<dyn Hypervisor>, BackendError> {
        Ok(self.local.handle(domid))
    }

    fn before_step(&mut self, index: usize, step: &Step) -> Result<StepPlace, RemoteFailure> {
        let mine = step.actor == Some(self.local.me);
        let holding = self.current.as_ref().is_some_and(|c| c.holding);
        let set_holding = |a: &mut Agent, h: bool| {
            if let Some(c) = a.current.as_mut() {
                c.holding = h;
            }
        };
        if !mine {
            if holding {
                self.send(&format!("at {index}"));
                set_holding(self, false);
            }
            return Ok(StepPlace::Elsewhere);
        }
        if holding {
            return Ok(StepPlace::Here);
        }
        let fail = |message: String| {
            Err(RemoteFailure {
                step: index,
                message,
            })
        };
        let cmd = match self.recv() {
            Ok(c) => c,
            Err(e) => return fail(e),
        };
        if cmd == "end" {
            if let Some(c) = self.current.as_mut() {
                c.ended = true;
            }
            return fail("ended by the coordinator".into());
        }
        match cmd
            .strip_prefix("run ")
            .and_then(|n| n.parse::<usize>().ok())
        {
            Some(i) if i == index => {
                set_holding(self, true);
                Ok(StepPlace::Here)
            }
            _ => {
                // Out of step with the coordinator: report it as this step's failure.
                set_holding(self, true);
                fail(format!("agent at step {} was told {cmd:?}", index + 1))
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Command line.

/// Options of `v4v-conformance --backend xen`.
#[derive(Debug, Default)]
pub struct XenCli {
    /// The guest's domain id: the coordinator drives the agent there.
    pub peer: Option<DomId>,
    /// Run as the agent (in the guest).
    pub agent: bool,
    /// Placements to run (all when empty).
    pub placements: BTreeSet<Placement>,
}

fn open_xen() -> Result<(Arc<dyn Hypervisor>, DomId), String> {
    let hv = v4v::xen::open_with(v4v::xen::XenOptions { guard_pages: true })
        .map_err(|e| format!("xen: {e}"))?;
    let me = hv.info().map_err(|e| format!("V4VOP_info: {e}"))?.domid;
    Ok((Arc::new(hv), me))
}

/// The control directory in xenstore for the agent in domain `guest`.
pub fn control_dir(guest: DomId) -> String {
    format!("/local/domain/{guest}/data/v4v-conformance")
}

/// Runs `--backend xen`: the coordinator in dom0, or the agent with `--xen-agent`. Returns the
/// exit status (0 all passed or skipped, 1 a failure, 2 setup problems).
pub fn cli(opts: &XenCli, scenarios: &[LoadedScenario]) -> u8 {
    let (hv, me) = match open_xen() {
        Ok(x) => x,
        Err(e) => {
            eprintln!("v4v-conformance: {e}");
            return 2;
        }
    };
    if !opts.agent && me != 0 {
        eprintln!(
            "v4v-conformance: the coordinator runs in dom0 (this is domain {me}); in a guest, \
             run the agent (--xen-agent)"
        );
        return 2;
    }
    let local = Local::new(hv, me, EVENT_SETTLE);
    if opts.agent {
        let files: BTreeMap<String, String> = scenarios
            .iter()
            .filter_map(|ls| {
                let text = std::fs::read_to_string(&ls.path).ok()?;
                Some((file_name(ls), text))
            })
            .collect();
        let chan = match crate::xenstore::XsChannel::agent(&control_dir(me)) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("v4v-conformance: {e}");
                return 2;
            }
        };
        let mut agent = Agent::new(local, Box::new(chan));
        let mut log = std::io::stderr();
        return match agent.serve(&files, &mut log) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("v4v-conformance agent: {e}");
                1
            }
        };
    }
    let peer = match opts.peer {
        None => None,
        Some(g) => match crate::xenstore::XsChannel::coordinator(&control_dir(g)) {
            Ok(c) => Some((g, Box::new(c) as Box<dyn Channel>)),
            Err(e) => {
                eprintln!("v4v-conformance: {e}");
                return 2;
            }
        },
    };
    let mut co = Coordinator::new(local, peer);
    if opts.peer.is_some()
        && let Err(e) = co.connect(Duration::from_secs(300))
    {
        eprintln!("v4v-conformance: waiting for the guest agent: {e}");
    }
    let placements = if opts.placements.is_empty() {
        Placement::ALL.into_iter().collect()
    } else {
        opts.placements.clone()
    };
    let mut out = std::io::stdout().lock();
    let sum = match coordinate(scenarios, &mut co, &placements, &mut out) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("writing output: {e}");
            return 2;
        }
    };
    co.quit();
    for l in sum.placement_lines() {
        let _ = writeln!(out, "{l}");
    }
    let _ = writeln!(out, "{}", sum.line());
    // Asked for a guest that stopped answering: its placements were skipped, which is a failure.
    if let Some(why) = &co.agent_lost {
        let _ = writeln!(out, "FAIL guest agent: {why}");
        return 1;
    }
    if sum.failed > 0 { 1 } else { 0 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::{Receiver, Sender, channel};

    struct Pipe {
        tx: Sender<String>,
        rx: Receiver<String>,
    }

    impl Channel for Pipe {
        fn send(&mut self, msg: &str) -> Result<(), String> {
            self.tx.send(msg.to_string()).map_err(|e| e.to_string())
        }
        fn recv(&mut self, timeout: Duration) -> Result<String, String> {
            self.rx.recv_timeout(timeout).map_err(|e| e.to_string())
        }
    }

    fn pipes() -> (Pipe, Pipe) {
        let (a_tx, b_rx) = channel();
        let (b_tx, a_rx) = channel();
        (Pipe { tx: a_tx, rx: a_rx }, Pipe { tx: b_tx, rx: b_rx })
    }

    fn scenarios() -> Vec<LoadedScenario> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        crate::run::load(&dir).unwrap_or_else(|e| panic!("{e:?}"))
    }

    fn sc(text: &str) -> Scenario {
        crate::parse::parse(text).unwrap_or_else(|e| panic!("{e:?}"))
    }

    #[test]
    fn placements_respect_privilege() {
        let acl = sc(
            "domains 0 1\n0: acl add 1:any -> any:any reject => ok\n1: send 1:1 -> 0:5 \"x\" => EACCES\n",
        );
        let s = shape(&acl);
        assert_eq!(s.actors, vec![0, 1]);
        assert!(s.privileged);
        assert_eq!(
            assign(&s, Placement::Dom0Guest, 3),
            Ok(vec![(0, 0), (1, 3)])
        );
        assert!(assign(&s, Placement::GuestDom0, 3).is_err());
        let plain =
            sc("domains 1 2\n1: ring r port=1 len=64 => ok\n2: send 2:1 -> 1:1 \"x\" => 1\n");
        let s = shape(&plain);
        assert!(!s.privileged);
        assert_eq!(
            assign(&s, Placement::GuestDom0, 5),
            Ok(vec![(1, 5), (2, 0)])
        );
        assert!(assign(&s, Placement::Dom0, 5).is_err());
    }

    #[test]
    fn mapping_rewrites_every_domain_id() {
        let text = "domains 0 1 2\n\
            1: ring r port=100 partner=0 len=64 domain=1 => ok\n\
            1: field r domain => 1\n\
            2: send 0:7 -> 1:100 \"x\" => EPERM\n\
            2: send 2:7 -> 1:100 \"x\" => ECONNREFUSED\n\
            1: ring s port=101 partner=0x7fef len=64 => ok\n\
            1: info => domid=1\n\
            1: notify 2:5/0 9:5/0 => - max=0 ; - max=0\n";
        let s = sc(text);
        // scenario 1 -> dom0, 2 -> guest 1: 0 is real and 1 is taken, so 0 becomes a phantom.
        let map = domain_map(&s, &[(1, 0), (2, 1)], &[0, 1]);
        assert_eq!(map.get(&0), Some(&PHANTOM_BASE));
        assert_eq!(map.get(&9), Some(&9));
        assert_eq!(map.get(&0x7fef), Some(&0x7fef));
        let m = apply_map(&s, &map).to_string();
        assert!(m.contains("domains 32512 0 1"), "{m}");
        assert!(m.contains("0: ring r port=100"), "{m}");
        assert!(m.contains("partner=32512"), "{m}");
        assert!(m.contains("domain=0"), "{m}");
        assert!(m.contains("0: field r domain => 0"), "{m}");
        assert!(m.contains("1: send 32512:7 -> 0:100"), "{m}");
        assert!(m.contains("1: send 1:7 -> 0:100"), "{m}");
        assert!(m.contains("0: info => domid=0"), "{m}");
        assert!(m.contains("1:5/0"), "{m}");
        assert_eq!(domain_ids(&apply_map(&s, &map)).len(), domain_ids(&s).len());
        assert_eq!(parse_map(&map_text(&map)), Some(map));
    }

    /// The whole protocol on the model: domains 0 and 1 of one model, each driven from its own
    /// thread as dom0 and the guest would be, in every placement, and nothing may fail.
    #[test]
    fn lockstep_on_the_model_passes_everything() {
        let model = v4v_sim::Model::new();
        let d0 = model.create_domain(0).expect("domain 0");
        let d1 = model.create_domain(1).expect("domain 1");
        let all = scenarios();
        let files: BTreeMap<String, String> = all
            .iter()
            .map(|ls| (file_name(ls), std::fs::read_to_string(&ls.path).unwrap()))
            .collect();
        let (a, b) = pipes();
        let agent = std::thread::spawn(move || {
            let mut agent = Agent::new(Local::new(Arc::new(d1), 1, Duration::ZERO), Box::new(b));
            let mut log = Vec::new();
            agent.serve(&files, &mut log)
        });
        let mut co = Coordinator::new(
            Local::new(Arc::new(d0), 0, Duration::ZERO),
            Some((1, Box::new(a))),
        );
        co.connect(Duration::from_secs(10)).expect("hello");
        let mut out = Vec::new();
        let placements = Placement::ALL.into_iter().collect();
        let sum = coordinate(&all, &mut co, &placements, &mut out).expect("output");
        co.quit();
        agent.join().expect("agent thread").expect("agent");
        let text = String::from_utf8_lossy(&out);
        assert_eq!(sum.failed, 0, "{text}");
        // Every scenario either ran somewhere or was skipped for a stated reason.
        assert!(sum.passed >= 60, "{text}");
        for p in Placement::ALL {
            assert!(text.contains(&format!("[{}]", p.name())), "{text}");
        }
        assert!(model.ring_count() == 0, "rings left behind");
    }

    #[test]
    fn a_failure_in_the_guest_is_reported_at_its_step() {
        let text = "domains 0 1\n1: ring r port=5 len=64 => ok\n0: send 0:1 -> 1:5 \"hi\" => 2\n\
                    1: recv r => from 0:1 \"ho\"\n0: info => ok\n";
        let dir = std::env::temp_dir().join(format!("v4v-xen-fail-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("guest_fails.v4vs");
        std::fs::write(&path, text).unwrap();
        let all = crate::run::load(&path).unwrap_or_else(|e| panic!("{e:?}"));
        let files: BTreeMap<String, String> =
            [("guest_fails.v4vs".to_string(), text.to_string())].into();
        let model = v4v_sim::Model::new();
        let d0 = model.create_domain(0).unwrap();
        let d1 = model.create_domain(1).unwrap();
        let (a, b) = pipes();
        let agent = std::thread::spawn(move || {
            let mut agent = Agent::new(Local::new(Arc::new(d1), 1, Duration::ZERO), Box::new(b));
            agent.serve(&files, &mut Vec::new())
        });
        let mut co = Coordinator::new(
            Local::new(Arc::new(d0), 0, Duration::ZERO),
            Some((1, Box::new(a))),
        );
        co.connect(Duration::from_secs(10)).unwrap();
        let mut out = Vec::new();
        let placements = [Placement::Dom0Guest].into_iter().collect();
        let sum = coordinate(&all, &mut co, &placements, &mut out).unwrap();
        co.quit();
        agent.join().unwrap().unwrap();
        let text = String::from_utf8_lossy(&out);
        assert_eq!((sum.passed, sum.failed), (0, 1), "{text}");
        assert!(
            text.contains("FAIL guest_fails [dom0+guest]: step 3"),
            "{text}"
        );
        assert!(text.contains("in the guest (domain 1)"), "{text}");
        assert_eq!(model.ring_count(), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
