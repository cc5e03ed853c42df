// SPDX-License-Identifier: MIT OR Apache-2.0
//! The runner: performs a scenario's steps against a [`Backend`] and compares every result.

use std::collections::HashMap;
use std::io::{IoSlice, Write};
use std::path::{Path, PathBuf};

use thiserror::Error;
use v4v::abi::{self, Config, DomId, RingDataEnt, SendAddr};
use v4v::hypervisor::BatchSend;
use v4v::ring::RingReader;
use v4v::shmem::RingMemory;
use v4v::{HvError, Hypervisor};

use crate::ast::*;
use crate::backend::{Backend, StepPlace};

/// Largest expected payload `recv` will materialise to compare (64 MiB).
const MAX_COMPARE: u64 = 64 << 20;

/// How one scenario went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    /// `step` is 1-based; `message` is `expected X, got Y` or what went wrong.
    Fail {
        step: usize,
        line: usize,
        message: String,
    },
    Skip {
        reason: String,
    },
}

/// A step that did not go as expected.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
enum StepError {
    #[error("expected {expected}, got {got}")]
    Mismatch { expected: String, got: String },
    #[error("{0}")]
    Harness(String),
}

fn mismatch(expected: impl Into<String>, got: impl Into<String>) -> StepError {
    StepError::Mismatch {
        expected: expected.into(),
        got: got.into(),
    }
}

fn harness(msg: impl Into<String>) -> StepError {
    StepError::Harness(msg.into())
}

struct Handle {
    mem: RingMemory,
    /// Header offset and data length of a ring (None for plain memory).
    ring: Option<(usize, u32)>,
}

struct World<'b> {
    backend: &'b mut dyn Backend,
    doms: HashMap<DomId, Box<dyn Hypervisor>>,
    names: HashMap<String, Handle>,
    snapshots: HashMap<String, Vec<u8>>,
}

/// What a scenario needs that `backend` lacks, if anything.
pub fn skip_reason(sc: &Scenario, backend: &dyn Backend) -> Option<String> {
    for c in &sc.requires {
        if !backend.supports(*c) {
            return Some(format!(
                "the {} backend cannot {}",
                backend.name(),
                c.keyword()
            ));
        }
    }
    let created = sc.steps.iter().filter_map(|s| match s.op {
        Op::Create { domain } => Some(domain),
        _ => None,
    });
    for d in sc.domains.iter().copied().chain(created) {
        if !backend.can_act_as(d) {
            return Some(format!(
                "the {} backend cannot act as domain {d}",
                backend.name()
            ));
        }
    }
    None
}

/// Runs one scenario.
pub fn run_scenario(sc: &Scenario, backend: &mut dyn Backend) -> Outcome {
    if let Some(reason) = skip_reason(sc, backend) {
        return Outcome::Skip { reason };
    }
    if let Err(e) = backend.begin() {
        return Outcome::Fail {
            step: 0,
            line: 0,
            message: format!("backend: {e}"),
        };
    }
    let outcome = {
        let mut w = World {
            backend,
            doms: HashMap::new(),
            names: HashMap::new(),
            snapshots: HashMap::new(),
        };
        let mut outcome = Outcome::Pass;
        for d in &sc.domains {
            match w.backend.create_domain(*d) {
                Ok(h) => {
                    w.doms.insert(*d, h);
                }
                Err(e) => {
                    outcome = Outcome::Fail {
                        step: 0,
                        line: 0,
                        message: format!("creating domain {d}: {e}"),
                    };
                    break;
                }
            }
        }
        if outcome == Outcome::Pass {
            for (i, step) in sc.steps.iter().enumerate() {
                match w.backend.before_step(i, step) {
                    Ok(StepPlace::Here) => {}
                    Ok(StepPlace::Elsewhere) => continue,
                    Err(f) => {
                        outcome = Outcome::Fail {
                            step: f.step + 1,
                            line: sc.steps.get(f.step).map_or(step.line, |s| s.line),
                            message: f.message,
                        };
                        break;
                    }
                }
                let mut failed = None;
                for k in 0..step.repeat {
                    if let Err(e) = w.step(step) {
                        let which = if step.repeat == 1 {
                            String::new()
                        } else {
                            format!("repetition {} of {}: ", k + 1, step.repeat)
                        };
                        failed = Some(format!("{which}{e}"));
                        break;
                    }
                }
                if let Some(message) = failed {
                    outcome = Outcome::Fail {
                        step: i + 1,
                        line: step.line,
                        message,
                    };
                    break;
                }
            }
        }
        // Drop every domain handle and ring memory before the backend ends the scenario.
        w.doms.clear();
        w.names.clear();
        outcome
    };
    backend.end();
    outcome
}

fn err_name(e: HvError) -> String {
    e.name()
}

fn check_unit(expect: &Expect<()>, got: Result<(), HvError>) -> Result<(), StepError> {
    let got = match got {
        Ok(()) => Expect::Ok(()),
        Err(e) => Expect::Err(e),
    };
    if &got == expect {
        Ok(())
    } else {
        Err(mismatch(Unit(expect).to_string(), Unit(&got).to_string()))
    }
}

/// Materialises a payload's bytes (for comparison).
fn payload_bytes(p: &Payload) -> Result<Vec<u8>, StepError> {
    if p.total_len() > MAX_COMPARE {
        return Err(harness(format!(
            "expected payload of {} bytes is too large to compare",
            p.total_len()
        )));
    }
    let mut out = Vec::new();
    for c in &p.0 {
        match c {
            Chunk::Text(b) | Chunk::Hex(b) => out.extend_from_slice(b),
            Chunk::Pattern { len, seed } => out.extend(pattern(*len as usize, *seed)),
            Chunk::Repeat { count, len, seed } => {
                let one = pattern(*len as usize, *seed);
                for _ in 0..*count {
                    out.extend_from_slice(&one);
                }
            }
        }
    }
    Ok(out)
}

/// Describes bytes in the scenario language where it can.
fn describe(b: &[u8]) -> String {
    if b.is_empty() {
        return "bytes=0".into();
    }
    if b == pattern(b.len(), b[0]).as_slice() {
        return Chunk::Pattern {
            len: b.len() as u64,
            seed: b[0],
        }
        .to_string();
    }
    if b.len() <= 64 {
        if b.iter().all(|c| (0x20..0x7f).contains(c)) {
            return quote(b);
        }
        return format!("hex={}", hex(b));
    }
    format!("{} bytes beginning hex={}", b.len(), hex(&b[..32]))
}

fn header_bytes(actor: DomId, spec: &RingSpec) -> [u8; 64] {
    let mut h = [0u8; 64];
    let mut put = |f: HeaderField, v: u64| {
        let (o, w) = f.offset_width();
        h[o..o + w].copy_from_slice(&v.to_ne_bytes()[..w]);
    };
    put(HeaderField::Magic, abi::RING_MAGIC);
    put(HeaderField::Domain, u64::from(actor));
    put(HeaderField::Partner, u64::from(abi::DOMID_ANY));
    for (f, v) in &spec.fields {
        put(*f, *v);
    }
    h
}

impl World<'_> {
    fn hv(&self, d: DomId) -> Result<&dyn Hypervisor, StepError> {
        self.doms
            .get(&d)
            .map(|b| b.as_ref())
            .ok_or_else(|| harness(format!("domain {d} does not exist (destroyed?)")))
    }

    fn ring(&self, name: &str) -> Result<(&RingMemory, usize, u32), StepError> {
        match self.names.get(name) {
            Some(Handle {
                mem,
                ring: Some((off, len)),
            }) => Ok((mem, *off, *len)),
            _ => Err(harness(format!("no ring `{name}`"))),
        }
    }

    fn read(&self, name: &str, at: usize, len: usize) -> Result<Vec<u8>, StepError> {
        let (mem, _, _) = self.ring(name)?;
        let mut b = vec![0u8; len];
        mem.read_bytes(at, &mut b)
            .map_err(|e| harness(format!("reading ring `{name}`: {e}")))?;
        Ok(b)
    }

    fn read_field(&self, name: &str, f: HeaderField) -> Result<u64, StepError> {
        let (_, off, _) = self.ring(name)?;
        let (o, w) = f.offset_width();
        let b = self.read(name, off + o, w)?;
        let mut v = [0u8; 8];
        v[..w].copy_from_slice(&b);
        Ok(u64::from_ne_bytes(v))
    }

    fn write_fields(&self, name: &str, fields: &[(HeaderField, u64)]) -> Result<(), StepError> {
        let (mem, off, _) = self.ring(name)?;
        for (f, v) in fields {
            let (o, w) = f.offset_width();
            mem.write_bytes(off + o, &v.to_ne_bytes()[..w])
                .map_err(|e| harness(format!("writing ring `{name}`: {e}")))?;
        }
        Ok(())
    }

    /// The bytes of a ring's header and data area that lie inside its memory.
    fn ring_image(&self, name: &str) -> Result<Vec<u8>, StepError> {
        let (mem, off, len) = self.ring(name)?;
        let end = (off + 64 + len as usize).min(mem.size());
        self.read(name, off.min(end), end.saturating_sub(off))
    }

    fn step(&mut self, step: &Step) -> Result<(), StepError> {
        let actor = step.actor;
        let me = || actor.ok_or_else(|| harness("no domain performs this step"));
        match &step.op {
            Op::Create { domain } => {
                let h = self
                    .backend
                    .create_domain(*domain)
                    .map_err(|e| mismatch("ok", format!("failure: {e}")))?;
                self.doms.insert(*domain, h);
            }
            Op::Destroy { domain } => {
                self.backend
                    .destroy_domain(*domain)
                    .map_err(|e| mismatch("ok", format!("failure: {e}")))?;
                self.doms.remove(domain);
            }
            Op::Inspect { what, value } => {
                let got = self
                    .backend
                    .inspect(*what)
                    .map_err(|e| harness(e.to_string()))?;
                if got != *value {
                    return Err(mismatch(value.to_string(), got.to_string()));
                }
            }
            Op::Mem { name, size } => {
                let mem = self
                    .hv(me()?)?
                    .alloc_ring_memory(*size as usize)
                    .map_err(|e| harness(format!("alloc_ring_memory({size}): {}", e.name())))?;
                self.names.insert(name.clone(), Handle { mem, ring: None });
            }
            Op::Ring { name, spec, expect } => {
                let d = me()?;
                let len = spec.field(HeaderField::Len).unwrap_or(0);
                let mem = match &spec.mem {
                    Some(m) => self
                        .names
                        .get(m)
                        .map(|h| h.mem.clone())
                        .ok_or_else(|| harness(format!("no memory `{m}`")))?,
                    None => {
                        let size = spec.size.unwrap_or_else(|| {
                            spec.off + 64 + len.min(u64::from(abi::MAX_RING_LEN))
                        });
                        self.hv(d)?.alloc_ring_memory(size as usize).map_err(|e| {
                            harness(format!("alloc_ring_memory({size}): {}", e.name()))
                        })?
                    }
                };
                let off = spec.off as usize;
                let h = header_bytes(d, spec);
                let fits = mem.size().saturating_sub(off).min(64);
                if fits > 0 {
                    mem.write_bytes(off, &h[..fits])
                        .map_err(|e| harness(format!("writing the header: {e}")))?;
                }
                let got = self.hv(d)?.register_ring(&mem, off);
                self.names.insert(
                    name.clone(),
                    Handle {
                        mem,
                        ring: Some((off, len as u32)),
                    },
                );
                check_unit(expect, got)?;
            }
            Op::Rings {
                count,
                port,
                len,
                partner,
                expect,
            } => {
                let d = me()?;
                for k in 0..*count {
                    let p = port.wrapping_add(k);
                    let spec = RingSpec {
                        fields: vec![
                            (HeaderField::Port, u64::from(p)),
                            (HeaderField::Partner, u64::from(*partner)),
                            (HeaderField::Len, u64::from(*len)),
                        ],
                        ..RingSpec::default()
                    };
                    let size = 64 + (*len).min(abi::MAX_RING_LEN) as usize;
                    let hv = self.hv(d)?;
                    let mem = hv
                        .alloc_ring_memory(size)
                        .map_err(|e| harness(format!("alloc_ring_memory({size}): {}", e.name())))?;
                    mem.write_bytes(0, &header_bytes(d, &spec))
                        .map_err(|e| harness(format!("writing the header: {e}")))?;
                    check_unit(expect, hv.register_ring(&mem, 0))
                        .map_err(|e| harness(format!("ring {} (port {p}): {e}", k + 1)))?;
                    self.names.insert(
                        format!(" rings {d} {p}"),
                        Handle {
                            mem,
                            ring: Some((0, *len)),
                        },
                    );
                }
            }
            Op::Register { ring, expect } | Op::Unregister { ring, expect } => {
                let (mem, off, _) = self.ring(ring)?;
                let hv = self.hv(me()?)?;
                let got = if matches!(step.op, Op::Register { .. }) {
                    hv.register_ring(mem, off)
                } else {
                    hv.unregister_ring(mem, off)
                };
                check_unit(expect, got)?;
            }
            Op::Send {
                src,
                dst,
                payload,
                message_type,
                expect,
            } => {
                let bufs = payload_buffers(payload);
                let iov = iovs(&bufs);
                let addr = SendAddr {
                    src: *src,
                    dst: *dst,
                };
                let got = match self.hv(me()?)?.sendv(&addr, &iov, *message_type) {
                    Ok(n) => Expect::Ok(u64::from(n)),
                    Err(e) => Expect::Err(e),
                };
                if &got != expect {
                    return Err(mismatch(send_str(expect), send_str(&got)));
                }
            }
            Op::Batch { sends, expect } => {
                let bufs: Vec<_> = sends.iter().map(|s| payload_buffers(&s.payload)).collect();
                let iov: Vec<Vec<IoSlice<'_>>> = bufs.iter().map(|b| iovs(b)).collect();
                let batch: Vec<BatchSend<'_>> = sends
                    .iter()
                    .zip(&iov)
                    .map(|(s, iov)| BatchSend {
                        addr: SendAddr {
                            src: s.src,
                            dst: s.dst,
                        },
                        iov,
                        message_type: s.message_type,
                    })
                    .collect();
                let mut results = Vec::new();
                self.hv(me()?)?.sendv_batch(&batch, &mut results);
                let got: Vec<Expect<u64>> = results
                    .into_iter()
                    .map(|r| match r {
                        Ok(n) => Expect::Ok(u64::from(n)),
                        Err(e) => Expect::Err(e),
                    })
                    .collect();
                if &got != expect {
                    let s =
                        |v: &[Expect<u64>]| v.iter().map(send_str).collect::<Vec<_>>().join(" ; ");
                    return Err(mismatch(s(expect), s(&got)));
                }
            }
            Op::Recv { ring, expect } => {
                let (mem, off, len) = self.ring(ring)?;
                let reader = RingReader::new(mem.clone(), off, len)
                    .map_err(|e| harness(format!("cannot read ring `{ring}`: {e}")))?;
                let mut buf = Vec::new();
                let got = reader.recv(&mut buf);
                let got_s = match &got {
                    Ok(None) => "empty".to_string(),
                    Err(e) => format!("corrupt ({e})"),
                    Ok(Some(m)) => format!(
                        "from {} type={} {}",
                        A(m.source),
                        message_type_str(m.message_type),
                        describe(&buf)
                    ),
                };
                let ok = match (expect, &got) {
                    (RecvExpect::Empty, Ok(None)) => true,
                    (RecvExpect::Corrupt, Err(_)) => true,
                    (
                        RecvExpect::Message {
                            from,
                            message_type,
                            payload,
                        },
                        Ok(Some(m)),
                    ) => {
                        let want = payload_bytes(payload)?;
                        if *from == m.source && *message_type == m.message_type && want == buf {
                            true
                        } else {
                            let mut g = got_s.clone();
                            if want != buf {
                                let at = want.iter().zip(&buf).position(|(a, b)| a != b);
                                g.push_str(&match at {
                                    Some(i) => format!(
                                        " (payload differs at byte {i}: expected {:#04x}, got {:#04x})",
                                        want[i], buf[i]
                                    ),
                                    None => format!(
                                        " (payload is {} bytes, expected {})",
                                        buf.len(),
                                        want.len()
                                    ),
                                });
                            }
                            return Err(mismatch(expect.to_string(), g));
                        }
                    }
                    _ => false,
                };
                if !ok {
                    return Err(mismatch(expect.to_string(), got_s));
                }
            }
            Op::Ptrs { ring, rx, tx } => {
                let grx = self.read_field(ring, HeaderField::Rx)?;
                let gtx = self.read_field(ring, HeaderField::Tx)?;
                if (grx, gtx) != (u64::from(*rx), u64::from(*tx)) {
                    return Err(mismatch(
                        format!("rx={rx} tx={tx}"),
                        format!("rx={grx} tx={gtx}"),
                    ));
                }
            }
            Op::Field { ring, field, value } => {
                let got = self.read_field(ring, *field)?;
                if got != *value {
                    let want = step.op.rhs().unwrap_or_default();
                    let got_s = Op::Field {
                        ring: ring.clone(),
                        field: *field,
                        value: got,
                    }
                    .rhs()
                    .unwrap_or_default();
                    return Err(mismatch(want, got_s));
                }
            }
            Op::Data { ring, off, bytes } => {
                let (_, base, _) = self.ring(ring)?;
                let got = self.read(ring, base + 64 + *off as usize, bytes.len())?;
                if &got != bytes {
                    return Err(mismatch(hex_groups(bytes), hex_groups(&got)));
                }
            }
            Op::Set { ring, fields } => self.write_fields(ring, fields)?,
            Op::Poke { ring, off, bytes } => {
                let (mem, base, _) = self.ring(ring)?;
                mem.write_bytes(base + 64 + *off as usize, bytes)
                    .map_err(|e| harness(format!("writing ring `{ring}`: {e}")))?;
            }
            Op::Snapshot { ring } => {
                let img = self.ring_image(ring)?;
                self.snapshots.insert(ring.clone(), img);
            }
            Op::Unchanged { ring, expect } => {
                let before = self
                    .snapshots
                    .get(ring)
                    .ok_or_else(|| harness(format!("no snapshot of `{ring}` taken")))?;
                let now = self.ring_image(ring)?;
                let same = *before == now;
                if same != *expect {
                    let at = before.iter().zip(&now).position(|(a, b)| a != b);
                    let detail = match at {
                        Some(i) if i < 64 => format!(" (header byte {i} changed)"),
                        Some(i) => format!(" (data byte {} changed)", i - 64),
                        None => String::new(),
                    };
                    return Err(mismatch(
                        if *expect { "yes" } else { "no" },
                        format!("{}{detail}", if same { "yes" } else { "no" }),
                    ));
                }
            }
            Op::Notify { entries, expect } => {
                let hv = self.hv(me()?)?;
                let got = match entries {
                    None => hv.notify(None).map(|()| None),
                    Some(es) => {
                        let mut v: Vec<RingDataEnt> = es
                            .iter()
                            .flat_map(|e| {
                                std::iter::repeat_n(
                                    RingDataEnt {
                                        ring: e.ring,
                                        flags: 0,
                                        pad: e.pad,
                                        space_required: e.space,
                                        max_message_size: 0,
                                    },
                                    e.repeat as usize,
                                )
                            })
                            .collect();
                        hv.notify(Some(&mut v)).map(|()| {
                            Some(
                                v.iter()
                                    .map(|e| EntryResult {
                                        flags: e.flags,
                                        max: e.max_message_size,
                                    })
                                    .collect::<Vec<_>>(),
                            )
                        })
                    }
                };
                let got = match got {
                    Ok(v) => Expect::Ok(v),
                    Err(e) => Expect::Err(e),
                };
                let same = match (expect, &got) {
                    (Expect::Ok(None), Expect::Ok(_)) => true,
                    (a, b) => a == b,
                };
                if !same {
                    return Err(mismatch(
                        NotifyResult(expect).to_string(),
                        NotifyResult(&got).to_string(),
                    ));
                }
            }
            Op::Event { expect } => {
                let got = self.hv(me()?)?.take_event();
                match got {
                    Ok(b) if b == *expect => {}
                    Ok(b) => {
                        return Err(mismatch(
                            if *expect { "yes" } else { "no" },
                            if b { "yes" } else { "no" },
                        ));
                    }
                    Err(e) => return Err(mismatch(if *expect { "yes" } else { "no" }, e.name())),
                }
            }
            Op::Info { expect } => {
                let got = self.hv(me()?)?.info();
                let got = match (expect, got) {
                    (_, Err(e)) => Expect::Err(e),
                    (Expect::Ok(fields), Ok(i)) => {
                        Expect::Ok(fields.iter().map(|(f, _)| (*f, f.get(&i))).collect())
                    }
                    (Expect::Err(_), Ok(_)) => Expect::Ok(Vec::new()),
                };
                if &got != expect {
                    return Err(mismatch(
                        InfoResult(expect).to_string(),
                        InfoResult(&got).to_string(),
                    ));
                }
            }
            Op::Config {
                domain,
                max_rings,
                max_pages,
                pad,
                expect,
            } => {
                let c = Config {
                    domain: *domain,
                    pad: *pad,
                    max_rings: *max_rings,
                    max_ring_pages: *max_pages,
                };
                check_unit(expect, self.hv(me()?)?.config(&c))?;
            }
            Op::AclAdd {
                rule,
                position,
                expect,
            } => {
                check_unit(expect, self.hv(me()?)?.tables_add(rule, *position))?;
            }
            Op::AclDel { spec, expect } => {
                check_unit(
                    expect,
                    self.hv(me()?)?
                        .tables_del(spec.rule.as_ref(), spec.position),
                )?;
            }
            Op::AclList { start, max, expect } => {
                let got = match self.hv(me()?)?.tables_list(*start, *max) {
                    Ok(p) => Expect::Ok(ListExpect {
                        total: p.total,
                        rules: p.rules,
                    }),
                    Err(e) => Expect::Err(e),
                };
                if &got != expect {
                    let s = |e: &Expect<ListExpect>| match e {
                        Expect::Ok(l) => l.to_string(),
                        Expect::Err(e) => e.name(),
                    };
                    return Err(mismatch(s(expect), s(&got)));
                }
            }
        }
        Ok(())
    }
}

/// Totals of a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
}

impl Summary {
    /// The final line: `N passed, M failed[, K skipped]`.
    pub fn line(&self) -> String {
        let mut s = format!("{} passed, {} failed", self.passed, self.failed);
        if self.skipped > 0 {
            s.push_str(&format!(", {} skipped", self.skipped));
        }
        s
    }
}

/// A parsed scenario and where it came from.
#[derive(Debug, Clone)]
pub struct LoadedScenario {
    pub path: PathBuf,
    pub scenario: Scenario,
}

impl LoadedScenario {
    /// The `name:` line, or else the file's stem.
    pub fn name(&self) -> String {
        self.scenario.name.clone().unwrap_or_else(|| {
            self.path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
    }
}

/// Runs every scenario, printing a line for each, and returns the totals (the caller prints the
/// final line).
pub fn run_all(
    scenarios: &[LoadedScenario],
    backend: &mut dyn Backend,
    out: &mut dyn Write,
) -> std::io::Result<Summary> {
    let mut sum = Summary::default();
    for ls in scenarios {
        let name = ls.name();
        match run_scenario(&ls.scenario, backend) {
            Outcome::Pass => {
                sum.passed += 1;
                writeln!(out, "PASS {name}")?;
            }
            Outcome::Fail {
                step,
                line,
                message,
            } => {
                sum.failed += 1;
                if step == 0 {
                    writeln!(out, "FAIL {name}: setup ({}): {message}", ls.path.display())?;
                } else {
                    writeln!(
                        out,
                        "FAIL {name}: step {step} ({}:{line}): {message}",
                        ls.path.display()
                    )?;
                }
            }
            Outcome::Skip { reason } => {
                sum.skipped += 1;
                writeln!(out, "SKIP {name}: {reason}")?;
            }
        }
    }
    Ok(sum)
}

/// A problem loading scenario files.
#[derive(Debug, Error)]
pub enum LoadError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {message}")]
    Parse {
        path: String,
        line: usize,
        message: String,
    },
}

/// The file extension of scenario files.
pub const EXTENSION: &str = "v4vs";

/// Loads a scenario file, or every `*.v4vs` file of a directory (sorted by name).
pub fn load(path: &Path) -> Result<Vec<LoadedScenario>, Vec<LoadError>> {
    let io = |p: &Path, source| {
        vec![LoadError::Io {
            path: p.display().to_string(),
            source,
        }]
    };
    let files = if path.is_dir() {
        let mut v: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| io(path, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == EXTENSION))
            .collect();
        v.sort();
        v
    } else {
        vec![path.to_path_buf()]
    };
    let mut out = Vec::new();
    let mut errs = Vec::new();
    for f in files {
        match std::fs::read_to_string(&f) {
            Err(e) => errs.extend(io(&f, e)),
            Ok(text) => match crate::parse::parse(&text) {
                Ok(scenario) => out.push(LoadedScenario { path: f, scenario }),
                Err(e) => errs.push(LoadError::Parse {
                    path: f.display().to_string(),
                    line: e.line,
                    message: e.message,
                }),
            },
        }
    }
    if errs.is_empty() { Ok(out) } else { Err(errs) }
}

/// A payload's buffers, each with how many iovs point at it.
fn payload_buffers(payload: &Payload) -> Vec<(Vec<u8>, u32)> {
    payload
        .0
        .iter()
        .map(|c| match c {
            Chunk::Text(b) | Chunk::Hex(b) => (b.clone(), 1),
            Chunk::Pattern { len, seed } => (pattern(*len as usize, *seed), 1),
            Chunk::Repeat { count, len, seed } => (pattern(*len as usize, *seed), *count),
        })
        .collect()
}

/// The iovs of [`payload_buffers`]' buffers, in order.
fn iovs(bufs: &[(Vec<u8>, u32)]) -> Vec<IoSlice<'_>> {
    bufs.iter()
        .flat_map(|(b, n)| std::iter::repeat_n(b, *n as usize))
        .map(|b| IoSlice::new(b))
        .collect()
}

/// A send's result as a scenario spells it.
fn send_str(e: &Expect<u64>) -> String {
    match e {
        Expect::Ok(n) => n.to_string(),
        Expect::Err(e) => err_name(*e),
    }
}
