// SPDX-License-Identifier: MIT OR Apache-2.0
//! The scenario language's syntax tree, and its canonical printer.
//!
//! Every type here prints (via `Display`) in the exact syntax [`crate::parse()`] reads, so that
//! `parse(print(s)) == s` for every scenario `s` (a property test checks it).

use std::collections::BTreeSet;
use std::fmt::{self, Display, Formatter};

use v4v::HvError;
use v4v::abi::{self, DomId};

/// A whole scenario file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Scenario {
    /// The `name:` line, if any (the runner falls back to the file's stem).
    pub name: Option<String>,
    /// Domains that exist from the start (`domains 0 1 2`).
    pub domains: Vec<DomId>,
    /// Backend capabilities the scenario needs (`requires destroy inspect`).
    pub requires: BTreeSet<Capability>,
    pub steps: Vec<Step>,
}

/// Optional backend abilities a scenario may need.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Capability {
    /// Creating domains in the middle of a scenario (`create N`).
    Create,
    /// Destroying domains (`destroy N`).
    Destroy,
    /// Looking inside the hypervisor (`inspect rings`, `inspect waiters`).
    Inspect,
}

impl Capability {
    pub const ALL: [Capability; 3] = [Capability::Create, Capability::Destroy, Capability::Inspect];

    pub fn keyword(self) -> &'static str {
        match self {
            Capability::Create => "create",
            Capability::Destroy => "destroy",
            Capability::Inspect => "inspect",
        }
    }

    pub fn from_keyword(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.keyword() == s)
    }
}

/// One line: an operation, by a domain (`actor`) or by the test harness itself (`None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// 1-based line in the file (0 for steps built in code).
    pub line: usize,
    pub actor: Option<DomId>,
    /// `Nx` before the op: perform it N times, each with the same expectation.
    pub repeat: u32,
    pub op: Op,
}

/// The expected result of a hypercall: an errno, or success with a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect<T> {
    Err(HvError),
    Ok(T),
}

/// Fields of the 64-byte ring header a scenario can write or read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HeaderField {
    Magic,
    Port,
    Domain,
    /// `id.addr.pad`.
    Apad,
    Partner,
    /// `id.pad`.
    Ipad,
    Len,
    Rx,
    Tx,
}

impl HeaderField {
    pub const ALL: [HeaderField; 9] = [
        HeaderField::Magic,
        HeaderField::Port,
        HeaderField::Domain,
        HeaderField::Apad,
        HeaderField::Partner,
        HeaderField::Ipad,
        HeaderField::Len,
        HeaderField::Rx,
        HeaderField::Tx,
    ];

    pub fn keyword(self) -> &'static str {
        match self {
            HeaderField::Magic => "magic",
            HeaderField::Port => "port",
            HeaderField::Domain => "domain",
            HeaderField::Apad => "apad",
            HeaderField::Partner => "partner",
            HeaderField::Ipad => "ipad",
            HeaderField::Len => "len",
            HeaderField::Rx => "rx",
            HeaderField::Tx => "tx",
        }
    }

    pub fn from_keyword(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.keyword() == s)
    }

    /// Byte offset within the header and width in bytes.
    pub fn offset_width(self) -> (usize, usize) {
        match self {
            HeaderField::Magic => (0, 8),
            HeaderField::Port => (8, 4),
            HeaderField::Domain => (12, 2),
            HeaderField::Apad => (14, 2),
            HeaderField::Partner => (16, 2),
            HeaderField::Ipad => (18, 2),
            HeaderField::Len => (20, 4),
            HeaderField::Rx => (24, 4),
            HeaderField::Tx => (28, 4),
        }
    }

    /// Whether the field holds a domain id (printed as `self`/`any` where it can be).
    pub fn is_domain(self) -> bool {
        matches!(self, HeaderField::Domain | HeaderField::Partner)
    }

    /// The largest value the field can hold.
    pub fn max(self) -> u64 {
        match self.offset_width().1 {
            8 => u64::MAX,
            4 => u64::from(u32::MAX),
            _ => u64::from(u16::MAX),
        }
    }
}

/// The fields of `struct v4v_info` a scenario can check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum InfoField {
    RingMagic,
    DataMagic,
    Domid,
    Pad,
    MaxRings,
    NrRings,
    MaxRingLen,
    MaxIov,
    MaxNotify,
    MaxWaiters,
    MaxMessageSize,
    MaxRules,
    MaxRingPages,
    NrRingPages,
}

impl InfoField {
    pub const ALL: [InfoField; 14] = [
        InfoField::RingMagic,
        InfoField::DataMagic,
        InfoField::Domid,
        InfoField::Pad,
        InfoField::MaxRings,
        InfoField::NrRings,
        InfoField::MaxRingLen,
        InfoField::MaxIov,
        InfoField::MaxNotify,
        InfoField::MaxWaiters,
        InfoField::MaxMessageSize,
        InfoField::MaxRules,
        InfoField::MaxRingPages,
        InfoField::NrRingPages,
    ];

    pub fn keyword(self) -> &'static str {
        match self {
            InfoField::RingMagic => "ring_magic",
            InfoField::DataMagic => "data_magic",
            InfoField::Domid => "domid",
            InfoField::Pad => "pad",
            InfoField::MaxRings => "max_rings",
            InfoField::NrRings => "nr_rings",
            InfoField::MaxRingLen => "max_ring_len",
            InfoField::MaxIov => "max_iov",
            InfoField::MaxNotify => "max_notify",
            InfoField::MaxWaiters => "max_waiters",
            InfoField::MaxMessageSize => "max_message_size",
            InfoField::MaxRules => "max_rules",
            InfoField::MaxRingPages => "max_ring_pages",
            InfoField::NrRingPages => "nr_ring_pages",
        }
    }

    pub fn from_keyword(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.keyword() == s)
    }

    pub fn get(self, i: &abi::Info) -> u64 {
        match self {
            InfoField::RingMagic => i.ring_magic,
            InfoField::DataMagic => i.data_magic,
            InfoField::Domid => u64::from(i.domid),
            InfoField::Pad => u64::from(i.pad),
            InfoField::MaxRings => u64::from(i.max_rings),
            InfoField::NrRings => u64::from(i.nr_rings),
            InfoField::MaxRingLen => u64::from(i.max_ring_len),
            InfoField::MaxIov => u64::from(i.max_iov),
            InfoField::MaxNotify => u64::from(i.max_notify),
            InfoField::MaxWaiters => u64::from(i.max_waiters),
            InfoField::MaxMessageSize => u64::from(i.max_message_size),
            InfoField::MaxRules => u64::from(i.max_rules),
            InfoField::MaxRingPages => u64::from(i.max_ring_pages),
            InfoField::NrRingPages => u64::from(i.nr_ring_pages),
        }
    }
}

/// One piece of a message payload. Each chunk is one iov when sent, except `Repeat`, which is
/// `count` iovs all aliasing one buffer of `len` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chunk {
    /// `"text"` with escapes.
    Text(Vec<u8>),
    /// `hex=0011aa`.
    Hex(Vec<u8>),
    /// `bytes=N@S`: `N` bytes, byte `i` being `(S + i) mod 256`.
    Pattern { len: u64, seed: u8 },
    /// `iovs=CxN@S`: `C` iovs, each the same `N`-byte pattern buffer.
    Repeat { count: u32, len: u64, seed: u8 },
}

impl Chunk {
    /// Total payload bytes of this chunk.
    pub fn total_len(&self) -> u64 {
        match self {
            Chunk::Text(b) | Chunk::Hex(b) => b.len() as u64,
            Chunk::Pattern { len, .. } => *len,
            Chunk::Repeat { count, len, .. } => u64::from(*count).saturating_mul(*len),
        }
    }
}

/// The pattern bytes of `bytes=len@seed`.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| seed.wrapping_add(i as u8)).collect()
}

/// A message payload: the concatenation of its chunks (`none` is no chunk, no iov at all).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Payload(pub Vec<Chunk>);

impl Payload {
    pub fn total_len(&self) -> u64 {
        self.0
            .iter()
            .map(Chunk::total_len)
            .fold(0u64, u64::saturating_add)
    }
}

/// An address `DOM:PORT` in a send, a rule or a notify entry.
pub type Addr = abi::Addr;

/// A notify entry: `[Nx]DOM:PORT/SPACE[,apad=N][,pad=N]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotifyEntry {
    /// How many identical entries this stands for.
    pub repeat: u32,
    pub ring: Addr,
    pub space: u32,
    pub pad: u16,
}

/// What one notify entry is expected to say: `FLAGS max=N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryResult {
    pub flags: u16,
    pub max: u32,
}

/// An ACL rule: `SRC -> DST accept|reject|accept=N`.
pub type Rule = abi::TablesRule;

/// What `recv` should find.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecvExpect {
    /// `empty`: no message.
    Empty,
    /// `corrupt`: the reader refuses the ring's contents.
    Corrupt,
    /// `from DOM:PORT type=T PAYLOAD`.
    Message {
        from: Addr,
        message_type: u32,
        payload: Payload,
    },
}

/// What `acl list` should return: `total=N` then the rules copied, `;`-separated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListExpect {
    pub total: u32,
    pub rules: Vec<Rule>,
}

/// Options of `ring`: the header to write and where.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RingSpec {
    /// Header field values, in the order given; `port` and `len` are always present,
    /// `partner` defaults to `any`, `magic` to the ring magic and `domain` to the actor.
    pub fields: Vec<(HeaderField, u64)>,
    /// Put the ring in this existing memory (a `mem` or another ring's memory).
    pub mem: Option<String>,
    /// Offset of the header within the memory (default 0).
    pub off: u64,
    /// Allocate exactly this many bytes (rounded up to a page by the backend) for new memory.
    pub size: Option<u64>,
}

impl RingSpec {
    pub fn field(&self, f: HeaderField) -> Option<u64> {
        self.fields
            .iter()
            .rev()
            .find(|(k, _)| *k == f)
            .map(|(_, v)| *v)
    }
}

/// What the harness can inspect in a backend that allows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InspectKind {
    Rings,
    Waiters,
}

impl InspectKind {
    pub fn keyword(self) -> &'static str {
        match self {
            InspectKind::Rings => "rings",
            InspectKind::Waiters => "waiters",
        }
    }
}

/// `acl del` forms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DelSpec {
    pub rule: Option<Rule>,
    pub position: u32,
}

/// One send of a `batch`: `SRC -> DST PAYLOAD [type=T] [srcpad=N] [dstpad=N]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendSpec {
    pub src: Addr,
    pub dst: Addr,
    pub payload: Payload,
    pub message_type: u32,
}

/// `send`'s arguments as a scenario spells them.
fn send_args(src: &Addr, dst: &Addr, payload: &Payload, message_type: u32) -> String {
    let mut s = format!("{} -> {} {payload}", A(*src), A(*dst));
    if message_type != abi::PROTO_DGRAM {
        s.push_str(&format!(" type={}", message_type_str(message_type)));
    }
    if src.pad != 0 {
        s.push_str(&format!(" srcpad={}", src.pad));
    }
    if dst.pad != 0 {
        s.push_str(&format!(" dstpad={}", dst.pad));
    }
    s
}

/// A send's result as a scenario spells it: a byte count or an errno name.
fn send_result(e: &Expect<u64>) -> String {
    match e {
        Expect::Err(e) => e.name(),
        Expect::Ok(n) => n.to_string(),
    }
}

/// An operation and what it must return.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `mem NAME size=N`: allocate ring memory.
    Mem { name: String, size: u64 },
    /// `ring NAME OPTIONS => R`: allocate (or reuse) memory, write a header, register it.
    Ring {
        name: String,
        spec: RingSpec,
        expect: Expect<()>,
    },
    /// `rings N port=P len=L [partner=D] => R`: N rings on ports P, P+1, ..., each in its own
    /// memory, every registration returning R.
    Rings {
        count: u32,
        port: u32,
        len: u32,
        partner: DomId,
        expect: Expect<()>,
    },
    /// `register NAME => R`: register the ring at NAME's memory and offset again.
    Register { ring: String, expect: Expect<()> },
    /// `unregister NAME => R`.
    Unregister { ring: String, expect: Expect<()> },
    /// `send SRC -> DST PAYLOAD [type=T] [srcpad=N] [dstpad=N] => N|ERR`.
    Send {
        src: Addr,
        dst: Addr,
        payload: Payload,
        message_type: u32,
        expect: Expect<u64>,
    },
    /// `batch SEND ; SEND ... => R ; R ...`: the sends (each as `send`'s arguments) in one
    /// `Hypervisor::sendv_batch` (on Xen one multicall), each with its own result.
    Batch {
        sends: Vec<SendSpec>,
        expect: Vec<Expect<u64>>,
    },
    /// `recv NAME => from ... | empty | corrupt`: the owner reads the next message.
    Recv { ring: String, expect: RecvExpect },
    /// `ptrs NAME => rx=N tx=N`: the header's pointers as they are in memory.
    Ptrs { ring: String, rx: u32, tx: u32 },
    /// `field NAME FIELD => N`: one header field as it is in memory.
    Field {
        ring: String,
        field: HeaderField,
        value: u64,
    },
    /// `data NAME OFF LEN => HEX...`: raw bytes of the data area.
    Data {
        ring: String,
        off: u64,
        bytes: Vec<u8>,
    },
    /// `set NAME FIELD=V...`: the owner scribbles on its header.
    Set {
        ring: String,
        fields: Vec<(HeaderField, u64)>,
    },
    /// `poke NAME OFF HEX`: the owner scribbles on its data area.
    Poke {
        ring: String,
        off: u64,
        bytes: Vec<u8>,
    },
    /// `snapshot NAME`: remember the ring's header and data bytes.
    Snapshot { ring: String },
    /// `unchanged NAME => yes|no`: compare with the snapshot.
    Unchanged { ring: String, expect: bool },
    /// `notify [null | ENTRY...] => ok | ERR | RESULT ; RESULT...`.
    Notify {
        entries: Option<Vec<NotifyEntry>>,
        expect: Expect<Option<Vec<EntryResult>>>,
    },
    /// `event => yes|no`: take the actor's pending event.
    Event { expect: bool },
    /// `info => ok | ERR | FIELD=N...`.
    Info {
        expect: Expect<Vec<(InfoField, u64)>>,
    },
    /// `config DOM max_rings=N [max_pages=N] [pad=N] => R` (`max_pages` 0, the default, leaves
    /// the domain's ring page limit as it is).
    Config {
        domain: DomId,
        max_rings: u32,
        max_pages: u32,
        pad: u16,
        expect: Expect<()>,
    },
    /// `acl add RULE [at=N] => R`.
    AclAdd {
        rule: Rule,
        position: u32,
        expect: Expect<()>,
    },
    /// `acl del RULE [at=N] | at=N | all => R`.
    AclDel { spec: DelSpec, expect: Expect<()> },
    /// `acl list [start=N] [max=N] => total=N [RULE ; ...] | ERR`.
    AclList {
        start: u32,
        max: u32,
        expect: Expect<ListExpect>,
    },
    /// `create DOM => ok` (harness).
    Create { domain: DomId },
    /// `destroy DOM => ok` (harness).
    Destroy { domain: DomId },
    /// `inspect rings|waiters => N` (harness).
    Inspect { what: InspectKind, value: u64 },
}

impl Op {
    /// Whether the op is performed by the harness rather than a domain.
    pub fn is_harness(&self) -> bool {
        matches!(
            self,
            Op::Create { .. } | Op::Destroy { .. } | Op::Inspect { .. }
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Printing.

pub struct Dom(pub DomId);

impl Display for Dom {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self.0 {
            abi::DOMID_SELF => write!(f, "self"),
            abi::DOMID_ANY => write!(f, "any"),
            d => write!(f, "{d}"),
        }
    }
}

pub struct A(pub Addr);

impl Display for A {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", Dom(self.0.domain), self.0.port)
    }
}

pub fn message_type_str(t: u32) -> String {
    match t {
        abi::PROTO_DGRAM => "dgram".into(),
        abi::PROTO_STREAM => "stream".into(),
        t => format!("{t:#x}"),
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Hex in 4-byte groups, as `data` expectations are written.
pub fn hex_groups(bytes: &[u8]) -> String {
    bytes.chunks(4).map(hex).collect::<Vec<_>>().join(" ")
}

pub fn quote(bytes: &[u8]) -> String {
    let mut s = String::from("\"");
    for &b in bytes {
        match b {
            b'"' => s.push_str("\\\""),
            b'\\' => s.push_str("\\\\"),
            b'\n' => s.push_str("\\n"),
            b'\t' => s.push_str("\\t"),
            0x20..=0x7e => s.push(b as char),
            _ => s.push_str(&format!("\\x{b:02x}")),
        }
    }
    s.push('"');
    s
}

fn seed_suffix(seed: u8) -> String {
    if seed == 0 {
        String::new()
    } else {
        format!("@{seed}")
    }
}

impl Display for Chunk {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            Chunk::Text(b) => write!(f, "{}", quote(b)),
            Chunk::Hex(b) => write!(f, "hex={}", hex(b)),
            Chunk::Pattern { len, seed } => write!(f, "bytes={len}{}", seed_suffix(*seed)),
            Chunk::Repeat { count, len, seed } => {
                write!(f, "iovs={count}x{len}{}", seed_suffix(*seed))
            }
        }
    }
}

impl Display for Payload {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return write!(f, "none");
        }
        let parts: Vec<String> = self.0.iter().map(|c| c.to_string()).collect();
        write!(f, "{}", parts.join(" "))
    }
}

pub fn flags_str(flags: u16) -> String {
    let names = [
        (abi::RING_DATA_F_EXISTS, "exists"),
        (abi::RING_DATA_F_EMPTY, "empty"),
        (abi::RING_DATA_F_SUFFICIENT, "sufficient"),
        (abi::RING_DATA_F_PENDING, "pending"),
    ];
    let mut parts: Vec<String> = names
        .iter()
        .filter(|(b, _)| flags & b != 0)
        .map(|(_, n)| (*n).to_string())
        .collect();
    let known = names.iter().fold(0u16, |a, (b, _)| a | b);
    if flags & !known != 0 {
        parts.push(format!("{:#x}", flags & !known));
    }
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(",")
    }
}

impl Display for EntryResult {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        write!(f, "{} max={}", flags_str(self.flags), self.max)
    }
}

impl Display for NotifyEntry {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        if self.repeat != 1 {
            write!(f, "{}x", self.repeat)?;
        }
        write!(f, "{}/{}", A(self.ring), self.space)?;
        if self.ring.pad != 0 {
            write!(f, ",apad={}", self.ring.pad)?;
        }
        if self.pad != 0 {
            write!(f, ",pad={}", self.pad)?;
        }
        Ok(())
    }
}

pub struct R<'a>(pub &'a Rule);

impl Display for R<'_> {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        let r = self.0;
        write!(f, "{} -> {} ", A(r.src), A(r.dst))?;
        match r.accept {
            1 => write!(f, "accept")?,
            0 => write!(f, "reject")?,
            n => write!(f, "accept={n}")?,
        }
        if r.src.pad != 0 {
            write!(f, " srcpad={}", r.src.pad)?;
        }
        if r.dst.pad != 0 {
            write!(f, " dstpad={}", r.dst.pad)?;
        }
        Ok(())
    }
}

impl Display for ListExpect {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        write!(f, "total={}", self.total)?;
        for (i, r) in self.rules.iter().enumerate() {
            write!(f, "{}{}", if i == 0 { " " } else { " ; " }, R(r))?;
        }
        Ok(())
    }
}

impl Display for RecvExpect {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            RecvExpect::Empty => write!(f, "empty"),
            RecvExpect::Corrupt => write!(f, "corrupt"),
            RecvExpect::Message {
                from,
                message_type,
                payload,
            } => {
                write!(
                    f,
                    "from {} type={} {}",
                    A(*from),
                    message_type_str(*message_type),
                    payload
                )
            }
        }
    }
}

fn field_value(field: HeaderField, v: u64) -> String {
    if let (true, Ok(d)) = (field.is_domain(), DomId::try_from(v)) {
        return Dom(d).to_string();
    }
    if field == HeaderField::Magic {
        format!("{v:#x}")
    } else {
        v.to_string()
    }
}

pub fn fields_str(fields: &[(HeaderField, u64)]) -> String {
    fields
        .iter()
        .map(|(k, v)| format!("{}={}", k.keyword(), field_value(*k, *v)))
        .collect::<Vec<_>>()
        .join(" ")
}

fn err_or<T>(
    e: &Expect<T>,
    f: &mut Formatter<'_>,
    ok: impl Fn(&T, &mut Formatter<'_>) -> fmt::Result,
) -> fmt::Result {
    match e {
        Expect::Err(e) => write!(f, "{}", e.name()),
        Expect::Ok(v) => ok(v, f),
    }
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// Prints an `Expect<()>`.
pub struct Unit<'a>(pub &'a Expect<()>);

impl Display for Unit<'_> {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        err_or(self.0, f, |_, f| write!(f, "ok"))
    }
}

pub struct NotifyResult<'a>(pub &'a Expect<Option<Vec<EntryResult>>>);

impl Display for NotifyResult<'_> {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        err_or(self.0, f, |v, f| match v {
            None => write!(f, "ok"),
            Some(v) => {
                let parts: Vec<String> = v.iter().map(|e| e.to_string()).collect();
                write!(f, "{}", parts.join(" ; "))
            }
        })
    }
}

pub struct InfoResult<'a>(pub &'a Expect<Vec<(InfoField, u64)>>);

impl Display for InfoResult<'_> {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        err_or(self.0, f, |v, f| {
            if v.is_empty() {
                return write!(f, "ok");
            }
            let parts: Vec<String> = v
                .iter()
                .map(|(k, v)| match k {
                    InfoField::RingMagic | InfoField::DataMagic => {
                        format!("{}={v:#x}", k.keyword())
                    }
                    _ => format!("{}={v}", k.keyword()),
                })
                .collect();
            write!(f, "{}", parts.join(" "))
        })
    }
}

impl Op {
    /// The op without its expectation (the left of `=>`).
    pub fn lhs(&self) -> String {
        match self {
            Op::Mem { name, size } => format!("mem {name} size={size}"),
            Op::Ring { name, spec, .. } => {
                let mut s = format!("ring {name} {}", fields_str(&spec.fields));
                if let Some(m) = &spec.mem {
                    s.push_str(&format!(" mem={m}"));
                }
                if spec.off != 0 {
                    s.push_str(&format!(" off={}", spec.off));
                }
                if let Some(z) = spec.size {
                    s.push_str(&format!(" size={z}"));
                }
                s
            }
            Op::Rings {
                count,
                port,
                len,
                partner,
                ..
            } => {
                format!(
                    "rings {count} port={port} len={len} partner={}",
                    Dom(*partner)
                )
            }
            Op::Register { ring, .. } => format!("register {ring}"),
            Op::Unregister { ring, .. } => format!("unregister {ring}"),
            Op::Send {
                src,
                dst,
                payload,
                message_type,
                ..
            } => format!("send {}", send_args(src, dst, payload, *message_type)),
            Op::Batch { sends, .. } => {
                let parts: Vec<String> = sends
                    .iter()
                    .map(|s| send_args(&s.src, &s.dst, &s.payload, s.message_type))
                    .collect();
                format!("batch {}", parts.join(" ; "))
            }
            Op::Recv { ring, .. } => format!("recv {ring}"),
            Op::Ptrs { ring, .. } => format!("ptrs {ring}"),
            Op::Field { ring, field, .. } => format!("field {ring} {}", field.keyword()),
            Op::Data { ring, off, bytes } => format!("data {ring} {off} {}", bytes.len()),
            Op::Set { ring, fields } => format!("set {ring} {}", fields_str(fields)),
            Op::Poke { ring, off, bytes } => format!("poke {ring} {off} {}", hex(bytes)),
            Op::Snapshot { ring } => format!("snapshot {ring}"),
            Op::Unchanged { ring, .. } => format!("unchanged {ring}"),
            Op::Notify { entries, .. } => match entries {
                None => "notify null".into(),
                Some(v) if v.is_empty() => "notify".into(),
                Some(v) => {
                    let parts: Vec<String> = v.iter().map(|e| e.to_string()).collect();
                    format!("notify {}", parts.join(" "))
                }
            },
            Op::Event { .. } => "event".into(),
            Op::Info { .. } => "info".into(),
            Op::Config {
                domain,
                max_rings,
                max_pages,
                pad,
                ..
            } => {
                let mut s = format!("config {} max_rings={max_rings}", Dom(*domain));
                if *max_pages != 0 {
                    s.push_str(&format!(" max_pages={max_pages}"));
                }
                if *pad != 0 {
                    s.push_str(&format!(" pad={pad}"));
                }
                s
            }
            Op::AclAdd { rule, position, .. } => {
                let mut s = format!("acl add {}", R(rule));
                if *position != 0 {
                    s.push_str(&format!(" at={position}"));
                }
                s
            }
            Op::AclDel { spec, .. } => match &spec.rule {
                Some(r) if spec.position == 0 => format!("acl del {}", R(r)),
                Some(r) => format!("acl del {} at={}", R(r), spec.position),
                None if spec.position == abi::TABLES_DEL_ALL => "acl del all".into(),
                None => format!("acl del at={}", spec.position),
            },
            Op::AclList { start, max, .. } => format!("acl list start={start} max={max}"),
            Op::Create { domain } => format!("create {}", Dom(*domain)),
            Op::Destroy { domain } => format!("destroy {}", Dom(*domain)),
            Op::Inspect { what, .. } => format!("inspect {}", what.keyword()),
        }
    }

    /// The expectation (the right of `=>`), or `None` for ops that have none.
    pub fn rhs(&self) -> Option<String> {
        Some(match self {
            Op::Mem { .. } | Op::Set { .. } | Op::Poke { .. } | Op::Snapshot { .. } => return None,
            Op::Ring { expect, .. }
            | Op::Rings { expect, .. }
            | Op::Register { expect, .. }
            | Op::Unregister { expect, .. }
            | Op::Config { expect, .. }
            | Op::AclAdd { expect, .. }
            | Op::AclDel { expect, .. } => Unit(expect).to_string(),
            Op::Send { expect, .. } => send_result(expect),
            Op::Batch { expect, .. } => {
                let parts: Vec<String> = expect.iter().map(send_result).collect();
                parts.join(" ; ")
            }
            Op::Recv { expect, .. } => expect.to_string(),
            Op::Ptrs { rx, tx, .. } => format!("rx={rx} tx={tx}"),
            Op::Field { field, value, .. } => field_value(*field, *value),
            Op::Data { bytes, .. } => {
                if bytes.is_empty() {
                    "-".into()
                } else {
                    hex_groups(bytes)
                }
            }
            Op::Unchanged { expect, .. } | Op::Event { expect } => yes_no(*expect).into(),
            Op::Notify { expect, .. } => NotifyResult(expect).to_string(),
            Op::Info { expect } => InfoResult(expect).to_string(),
            Op::AclList { expect, .. } => match expect {
                Expect::Err(e) => e.name(),
                Expect::Ok(l) => l.to_string(),
            },
            Op::Create { .. } | Op::Destroy { .. } => "ok".into(),
            Op::Inspect { value, .. } => value.to_string(),
        })
    }
}

impl Display for Step {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        if let Some(d) = self.actor {
            write!(f, "{d}: ")?;
        }
        if self.repeat != 1 {
            write!(f, "{}x ", self.repeat)?;
        }
        write!(f, "{}", self.op.lhs())?;
        if let Some(r) = self.op.rhs() {
            write!(f, " => {r}")?;
        }
        Ok(())
    }
}

impl Display for Scenario {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        if let Some(n) = &self.name {
            writeln!(f, "name: {n}")?;
        }
        let doms: Vec<String> = self.domains.iter().map(|d| d.to_string()).collect();
        writeln!(f, "domains {}", doms.join(" "))?;
        if !self.requires.is_empty() {
            let caps: Vec<&str> = self.requires.iter().map(|c| c.keyword()).collect();
            writeln!(f, "requires {}", caps.join(" "))?;
        }
        for s in &self.steps {
            writeln!(f, "{s}")?;
        }
        Ok(())
    }
}
