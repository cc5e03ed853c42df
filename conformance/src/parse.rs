// SPDX-License-Identifier: MIT OR Apache-2.0
//! The scenario language's parser. See `conformance/README.md` for the language.
//!
//! Errors carry the 1-based line and say what is wrong; the parser never panics, whatever the
//! input (a property test feeds it arbitrary text).

use std::collections::{BTreeSet, HashMap};

use thiserror::Error;
use v4v::HvError;
use v4v::abi::{self, DomId};

use crate::ast::*;

/// A scenario file that cannot be parsed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("line {line}: {message}")]
pub struct ParseError {
    pub line: usize,
    pub message: String,
}

type Res<T> = Result<T, String>;

/// Largest single pattern buffer a scenario may ask for (64 MiB).
pub const MAX_BUFFER: u64 = 64 << 20;
/// Most iovs one `iovs=` chunk may stand for.
pub const MAX_REPEAT: u32 = 4096;
/// Most sends one `batch` step may hold.
pub const MAX_BATCH: usize = 256;

fn tokenize(line: &str) -> Res<Vec<String>> {
    let mut toks = Vec::new();
    let mut chars = line.chars().peekable();
    let mut cur = String::new();
    while let Some(c) = chars.next() {
        match c {
            '#' => break,
            c if c.is_whitespace() => {
                if !cur.is_empty() {
                    toks.push(std::mem::take(&mut cur));
                }
            }
            ';' => {
                if !cur.is_empty() {
                    toks.push(std::mem::take(&mut cur));
                }
                toks.push(";".into());
            }
            '"' => {
                if !cur.is_empty() {
                    return Err(format!("a quote must start a word: `{cur}\"`"));
                }
                let mut s = String::from("\"");
                let mut closed = false;
                while let Some(c) = chars.next() {
                    s.push(c);
                    if c == '\\' {
                        match chars.next() {
                            Some(n) => s.push(n),
                            None => return Err("unterminated string".into()),
                        }
                    } else if c == '"' {
                        closed = true;
                        break;
                    }
                }
                if !closed {
                    return Err("unterminated string".into());
                }
                match chars.peek() {
                    Some(c) if !c.is_whitespace() && *c != ';' && *c != '#' => {
                        return Err("a string must be followed by a space".into());
                    }
                    _ => {}
                }
                toks.push(s);
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        toks.push(cur);
    }
    Ok(toks)
}

fn unquote(tok: &str) -> Res<Vec<u8>> {
    let inner = tok
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .filter(|_| tok.len() >= 2)
        .ok_or_else(|| format!("`{tok}` is not a string"))?;
    let mut out = Vec::new();
    let mut it = inner.chars();
    while let Some(c) = it.next() {
        if c != '\\' {
            let mut buf = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            continue;
        }
        match it.next() {
            Some('n') => out.push(b'\n'),
            Some('t') => out.push(b'\t'),
            Some('\\') => out.push(b'\\'),
            Some('"') => out.push(b'"'),
            Some('x') => {
                let h: String = it.by_ref().take(2).collect();
                let b = u8::from_str_radix(&h, 16)
                    .ok()
                    .filter(|_| h.len() == 2)
                    .ok_or_else(|| format!("bad escape `\\x{h}`: two hex digits expected"))?;
                out.push(b);
            }
            Some(o) => return Err(format!("unknown escape `\\{o}` (\\n \\t \\\\ \\\" \\xNN)")),
            None => return Err("string ends with a lone backslash".into()),
        }
    }
    Ok(out)
}

/// A number: decimal or `0x` hex, optionally with a `K`/`M`/`G` (binary) suffix.
pub fn number(s: &str) -> Res<u64> {
    let (body, mult) = match s.as_bytes().last() {
        Some(b'K') => (&s[..s.len() - 1], 1u64 << 10),
        Some(b'M') => (&s[..s.len() - 1], 1 << 20),
        Some(b'G') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    let v = if let Some(h) = body.strip_prefix("0x") {
        u64::from_str_radix(h, 16)
    } else if body.starts_with('+') {
        return Err(format!("`{s}` is not a number"));
    } else {
        body.parse::<u64>()
    };
    v.ok()
        .and_then(|v| v.checked_mul(mult))
        .ok_or_else(|| format!("`{s}` is not a number"))
}

fn num_max(s: &str, max: u64, what: &str) -> Res<u64> {
    let v = number(s)?;
    if v > max {
        return Err(format!("{what} `{s}` is too large (at most {max})"));
    }
    Ok(v)
}

fn u32_of(s: &str, what: &str) -> Res<u32> {
    Ok(num_max(s, u64::from(u32::MAX), what)? as u32)
}

fn u16_of(s: &str, what: &str) -> Res<u16> {
    Ok(num_max(s, u64::from(u16::MAX), what)? as u16)
}

fn u8_of(s: &str, what: &str) -> Res<u8> {
    Ok(num_max(s, u64::from(u8::MAX), what)? as u8)
}

/// A domain: a number, `self` or `any`.
pub fn domain(s: &str) -> Res<DomId> {
    match s {
        "self" => Ok(abi::DOMID_SELF),
        "any" => Ok(abi::DOMID_ANY),
        _ => u16_of(s, "domain"),
    }
}

fn port(s: &str) -> Res<u32> {
    if s == "any" {
        Ok(abi::PORT_ANY)
    } else {
        u32_of(s, "port")
    }
}

/// An address `DOM:PORT`.
pub fn addr(s: &str) -> Res<Addr> {
    let (d, p) = s
        .split_once(':')
        .ok_or_else(|| format!("`{s}` is not an address DOM:PORT"))?;
    Ok(Addr::new(domain(d)?, port(p)?))
}

fn hex_bytes(s: &str) -> Res<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("`{s}` is not an even number of hex digits"));
    }
    (0..s.len())
        .step_by(2)
        .map(|i| {
            s.get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("`{s}` is not hex"))
        })
        .collect()
}

fn kv(tok: &str) -> Option<(&str, &str)> {
    tok.split_once('=').filter(|(k, _)| !k.is_empty())
}

fn message_type(s: &str) -> Res<u32> {
    match s {
        "dgram" => Ok(abi::PROTO_DGRAM),
        "stream" => Ok(abi::PROTO_STREAM),
        _ => u32_of(s, "message type"),
    }
}

fn errno(s: &str) -> Option<HvError> {
    HvError::from_name(s)
}

fn len_seed(s: &str) -> Res<(u64, u8)> {
    let (l, seed) = match s.split_once('@') {
        Some((l, sd)) => (l, u8_of(sd, "seed")?),
        None => (s, 0),
    };
    Ok((num_max(l, MAX_BUFFER, "buffer length")?, seed))
}

fn chunk(tok: &str) -> Res<Option<Chunk>> {
    if tok.starts_with('"') {
        return Ok(Some(Chunk::Text(unquote(tok)?)));
    }
    match kv(tok) {
        Some(("hex", h)) => Ok(Some(Chunk::Hex(hex_bytes(h)?))),
        Some(("bytes", v)) => {
            let (len, seed) = len_seed(v)?;
            Ok(Some(Chunk::Pattern { len, seed }))
        }
        Some(("iovs", v)) => {
            let (c, rest) = v
                .split_once('x')
                .ok_or_else(|| format!("`{tok}`: iovs=COUNTxLEN[@SEED]"))?;
            let count = num_max(c, u64::from(MAX_REPEAT), "iov count")? as u32;
            let (len, seed) = len_seed(rest)?;
            Ok(Some(Chunk::Repeat { count, len, seed }))
        }
        _ => Ok(None),
    }
}

/// Parses payload chunks from `toks`, stopping at the first token that is not one.
fn payload(toks: &[String]) -> Res<(Payload, usize)> {
    if toks.first().map(String::as_str) == Some("none") {
        return Ok((Payload(Vec::new()), 1));
    }
    let mut chunks = Vec::new();
    for t in toks {
        match chunk(t)? {
            Some(c) => chunks.push(c),
            None => break,
        }
    }
    if chunks.is_empty() {
        return Err(
            "a payload is expected: \"text\", hex=.., bytes=N[@S], iovs=CxN[@S] or none".into(),
        );
    }
    let n = chunks.len();
    Ok((Payload(chunks), n))
}

fn header_fields(toks: &[String], actor_ok: bool) -> Res<Vec<(HeaderField, u64)>> {
    let _ = actor_ok;
    let mut out = Vec::new();
    for t in toks {
        let (k, v) = kv(t).ok_or_else(|| format!("`{t}`: FIELD=VALUE expected"))?;
        let f = HeaderField::from_keyword(k).ok_or_else(|| {
            format!("`{k}` is not a header field (magic port domain apad partner ipad len rx tx)")
        })?;
        let val = if f.is_domain() {
            u64::from(domain(v)?)
        } else {
            num_max(v, f.max(), k)?
        };
        out.push((f, val));
    }
    Ok(out)
}

fn name_ok(s: &str) -> Res<String> {
    if s.is_empty()
        || !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        || s.chars().next().is_some_and(|c| c.is_ascii_digit())
    {
        return Err(format!(
            "`{s}` is not a name (letters, digits, _ and -, not a digit first)"
        ));
    }
    Ok(s.to_string())
}

fn expect_unit(rhs: &[String]) -> Res<Expect<()>> {
    match rhs {
        [t] if t == "ok" => Ok(Expect::Ok(())),
        [t] => errno(t)
            .map(Expect::Err)
            .ok_or_else(|| format!("`{t}`: ok or an errno expected")),
        _ => Err("one result expected: ok or an errno name".into()),
    }
}

fn yes_no(rhs: &[String]) -> Res<bool> {
    match rhs {
        [t] if t == "yes" => Ok(true),
        [t] if t == "no" => Ok(false),
        _ => Err("yes or no expected".into()),
    }
}

fn flags(s: &str) -> Res<u16> {
    if s == "-" {
        return Ok(0);
    }
    let mut f = 0u16;
    for part in s.split(',') {
        f |= match part {
            "exists" => abi::RING_DATA_F_EXISTS,
            "empty" => abi::RING_DATA_F_EMPTY,
            "sufficient" => abi::RING_DATA_F_SUFFICIENT,
            "pending" => abi::RING_DATA_F_PENDING,
            p if p.starts_with("0x") => u16_of(p, "flags")?,
            p => {
                return Err(format!(
                    "`{p}` is not a flag (exists empty sufficient pending, or - for none)"
                ));
            }
        };
    }
    Ok(f)
}

fn notify_entry(tok: &str) -> Res<NotifyEntry> {
    let mut parts = tok.split(',');
    let main = parts.next().unwrap_or_default();
    let (repeat, rest) = match main.split_once('x') {
        Some((n, rest)) if n != "0" && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
            (u32_of(n, "repeat")?, rest)
        }
        _ => (1, main),
    };
    if repeat == 0 || repeat > MAX_REPEAT {
        return Err(format!("`{tok}`: repeat count must be 1..={MAX_REPEAT}"));
    }
    let (a, space) = rest
        .split_once('/')
        .ok_or_else(|| format!("`{tok}`: DOM:PORT/SPACE expected"))?;
    let mut ring = addr(a)?;
    let space = u32_of(space, "space")?;
    let mut pad = 0;
    for p in parts {
        match kv(p) {
            Some(("apad", v)) => ring.pad = u16_of(v, "apad")?,
            Some(("pad", v)) => pad = u16_of(v, "pad")?,
            _ => return Err(format!("`{p}`: apad=N or pad=N expected after an entry")),
        }
    }
    Ok(NotifyEntry {
        repeat,
        ring,
        space,
        pad,
    })
}

/// Parses `SRC -> DST ACTION [srcpad=N] [dstpad=N]`; returns the rule and tokens used.
fn rule(toks: &[String]) -> Res<(Rule, usize)> {
    let [src, arrow, dst, action, ..] = toks else {
        return Err("a rule SRC -> DST accept|reject expected".into());
    };
    if arrow != "->" {
        return Err(format!("`->` expected, found `{arrow}`"));
    }
    let accept = match action.as_str() {
        "accept" => 1,
        "reject" => 0,
        a => match kv(a) {
            Some(("accept", v)) => u32_of(v, "accept")?,
            _ => return Err(format!("`{a}`: accept, reject or accept=N expected")),
        },
    };
    let mut r = Rule {
        src: addr(src)?,
        dst: addr(dst)?,
        accept,
    };
    let mut used = 4;
    for t in &toks[4..] {
        match kv(t) {
            Some(("srcpad", v)) => r.src.pad = u16_of(v, "srcpad")?,
            Some(("dstpad", v)) => r.dst.pad = u16_of(v, "dstpad")?,
            _ => break,
        }
        used += 1;
    }
    Ok((r, used))
}

/// `SRC -> DST PAYLOAD [type=T] [srcpad=N] [dstpad=N]`, the arguments of `send`.
fn send_spec(args: &[String]) -> Res<SendSpec> {
    let [src, arrow, dst, rest @ ..] = args else {
        return Err("send SRC -> DST PAYLOAD [type=T] [srcpad=N] [dstpad=N]".into());
    };
    if arrow != "->" {
        return Err(format!("`->` expected, found `{arrow}`"));
    }
    let (mut src, mut dst) = (addr(src)?, addr(dst)?);
    let (payload, used) = payload(rest)?;
    let mut message_type = abi::PROTO_DGRAM;
    for t in &rest[used..] {
        match kv(t) {
            Some(("type", v)) => message_type = self::message_type(v)?,
            Some(("srcpad", v)) => src.pad = u16_of(v, "srcpad")?,
            Some(("dstpad", v)) => dst.pad = u16_of(v, "dstpad")?,
            _ => return Err(format!("unexpected `{t}` after the payload")),
        }
    }
    Ok(SendSpec {
        src,
        dst,
        payload,
        message_type,
    })
}

/// A send's expected result: a byte count or an errno.
fn send_expect(t: &str) -> Res<Expect<u64>> {
    Ok(match errno(t) {
        Some(e) => Expect::Err(e),
        None => Expect::Ok(num_max(t, u64::from(u32::MAX), "result")?),
    })
}

fn split_semicolons(toks: &[String]) -> Vec<&[String]> {
    toks.split(|t| t == ";").collect()
}

fn no_more(toks: &[String]) -> Res<()> {
    match toks.first() {
        None => Ok(()),
        Some(t) => Err(format!("unexpected `{t}`")),
    }
}

fn one_arg<'a>(args: &'a [String], what: &str) -> Res<&'a str> {
    match args {
        [a] => Ok(a),
        _ => Err(format!("{what} expected")),
    }
}

fn parse_op(word: &str, args: &[String], rhs: Option<&[String]>) -> Res<Op> {
    let need_rhs = || rhs.ok_or_else(|| format!("`{word}` needs an expected result: `=> ...`"));
    let no_rhs = || {
        if rhs.is_some() {
            Err(format!("`{word}` takes no `=> ...`"))
        } else {
            Ok(())
        }
    };
    let ring_arg = |what: &str| -> Res<String> {
        name_ok(
            args.first()
                .ok_or_else(|| format!("{word}: {what} expected"))?,
        )
    };
    Ok(match word {
        "mem" => {
            no_rhs()?;
            let name = ring_arg("a memory name")?;
            let size = match args.get(1..) {
                Some([t]) => match kv(t) {
                    Some(("size", v)) => num_max(v, MAX_BUFFER, "size")?,
                    _ => return Err("mem NAME size=N".into()),
                },
                _ => return Err("mem NAME size=N".into()),
            };
            Op::Mem { name, size }
        }
        "ring" => {
            let expect = expect_unit(need_rhs()?)?;
            let name = ring_arg("a ring name")?;
            let mut spec = RingSpec::default();
            let mut hdr = Vec::new();
            for t in &args[1..] {
                match kv(t) {
                    Some(("mem", v)) => spec.mem = Some(name_ok(v)?),
                    Some(("off", v)) => spec.off = num_max(v, MAX_BUFFER, "off")?,
                    Some(("size", v)) => spec.size = Some(num_max(v, MAX_BUFFER, "size")?),
                    _ => hdr.push(t.clone()),
                }
            }
            spec.fields = header_fields(&hdr, true)?;
            for f in [HeaderField::Port, HeaderField::Len] {
                if spec.field(f).is_none() {
                    return Err(format!("ring needs {}=", f.keyword()));
                }
            }
            if spec.mem.is_some() && spec.size.is_some() {
                return Err("ring: mem= and size= exclude each other".into());
            }
            Op::Ring { name, spec, expect }
        }
        "rings" => {
            let expect = expect_unit(need_rhs()?)?;
            let [n, rest @ ..] = args else {
                return Err("rings N port=P len=L [partner=D]".into());
            };
            let count = num_max(n, u64::from(abi::MAX_RINGS_LIMIT) + 1, "ring count")? as u32;
            let (mut port, mut len, mut partner) = (None, None, abi::DOMID_ANY);
            for t in rest {
                match kv(t) {
                    Some(("port", v)) => port = Some(self::port(v)?),
                    Some(("len", v)) => len = Some(u32_of(v, "len")?),
                    Some(("partner", v)) => partner = domain(v)?,
                    _ => return Err(format!("`{t}`: port=P, len=L or partner=D expected")),
                }
            }
            let (Some(port), Some(len)) = (port, len) else {
                return Err("rings needs port= and len=".into());
            };
            if u64::from(port) + u64::from(count) > u64::from(u32::MAX) + 1 {
                return Err("rings: ports run past 2^32".into());
            }
            Op::Rings {
                count,
                port,
                len,
                partner,
                expect,
            }
        }
        "register" | "unregister" => {
            let expect = expect_unit(need_rhs()?)?;
            let ring = name_ok(one_arg(args, "a ring name")?)?;
            if word == "register" {
                Op::Register { ring, expect }
            } else {
                Op::Unregister { ring, expect }
            }
        }
        "send" => {
            let rhs = need_rhs()?;
            let spec = send_spec(args)?;
            let expect = match rhs {
                [t] => send_expect(t)?,
                _ => return Err("one result expected: a byte count or an errno".into()),
            };
            Op::Send {
                src: spec.src,
                dst: spec.dst,
                payload: spec.payload,
                message_type: spec.message_type,
                expect,
            }
        }
        "batch" => {
            let rhs = need_rhs()?;
            if args.is_empty() {
                return Err("batch SEND ; SEND ... (each SRC -> DST PAYLOAD [type=T] ...)".into());
            }
            let sends = split_semicolons(args)
                .into_iter()
                .map(send_spec)
                .collect::<Res<Vec<_>>>()?;
            if sends.len() > MAX_BATCH {
                return Err(format!("a batch has at most {MAX_BATCH} sends"));
            }
            let expect = split_semicolons(rhs)
                .into_iter()
                .map(|r| match r {
                    [t] => send_expect(t),
                    _ => Err("each result is one byte count or errno, `;` between them".into()),
                })
                .collect::<Res<Vec<_>>>()?;
            if expect.len() != sends.len() {
                return Err(format!(
                    "{} sends but {} results: one result per send",
                    sends.len(),
                    expect.len()
                ));
            }
            Op::Batch { sends, expect }
        }
        "recv" => {
            let ring = name_ok(one_arg(args, "a ring name")?)?;
            let expect = match need_rhs()? {
                [t] if t == "empty" => RecvExpect::Empty,
                [t] if t == "corrupt" => RecvExpect::Corrupt,
                [from, a, rest @ ..] if from == "from" => {
                    let from = addr(a)?;
                    let mut rest = rest;
                    let mut message_type = abi::PROTO_DGRAM;
                    if let Some(("type", v)) = rest.first().and_then(|t| kv(t)) {
                        message_type = self::message_type(v)?;
                        rest = &rest[1..];
                    }
                    let (payload, used) = payload(rest)?;
                    no_more(&rest[used..])?;
                    RecvExpect::Message {
                        from,
                        message_type,
                        payload,
                    }
                }
                _ => return Err("recv: `from DOM:PORT [type=T] PAYLOAD`, empty or corrupt".into()),
            };
            Op::Recv { ring, expect }
        }
        "ptrs" => {
            let ring = name_ok(one_arg(args, "a ring name")?)?;
            let (mut rx, mut tx) = (None, None);
            for t in need_rhs()? {
                match kv(t) {
                    Some(("rx", v)) => rx = Some(u32_of(v, "rx")?),
                    Some(("tx", v)) => tx = Some(u32_of(v, "tx")?),
                    _ => return Err(format!("`{t}`: rx=N tx=N expected")),
                }
            }
            match (rx, tx) {
                (Some(rx), Some(tx)) => Op::Ptrs { ring, rx, tx },
                _ => return Err("ptrs: both rx=N and tx=N expected".into()),
            }
        }
        "field" => {
            let [r, f] = args else {
                return Err("field RING FIELD => VALUE".into());
            };
            let field = HeaderField::from_keyword(f)
                .ok_or_else(|| format!("`{f}` is not a header field"))?;
            let v = one_arg(need_rhs()?, "one value")?;
            let value = if field.is_domain() {
                u64::from(domain(v)?)
            } else {
                num_max(v, field.max(), f)?
            };
            Op::Field {
                ring: name_ok(r)?,
                field,
                value,
            }
        }
        "data" => {
            let [r, off, len] = args else {
                return Err("data RING OFF LEN => HEX...".into());
            };
            let off = num_max(off, MAX_BUFFER, "offset")?;
            let len = num_max(len, 1 << 16, "length")?;
            let rhs = need_rhs()?;
            let bytes = if rhs.len() == 1 && rhs[0] == "-" {
                Vec::new()
            } else {
                let mut b = Vec::new();
                for t in rhs {
                    b.extend(hex_bytes(t)?);
                }
                b
            };
            if bytes.len() as u64 != len {
                return Err(format!(
                    "data: {len} bytes asked for, {} given",
                    bytes.len()
                ));
            }
            Op::Data {
                ring: name_ok(r)?,
                off,
                bytes,
            }
        }
        "set" => {
            no_rhs()?;
            let ring = ring_arg("a ring name")?;
            let fields = header_fields(&args[1..], false)?;
            if fields.is_empty() {
                return Err("set RING FIELD=VALUE...".into());
            }
            Op::Set { ring, fields }
        }
        "poke" => {
            no_rhs()?;
            let [r, off, h] = args else {
                return Err("poke RING OFF HEX".into());
            };
            let bytes = hex_bytes(h)?;
            if bytes.is_empty() {
                return Err("poke: no bytes".into());
            }
            Op::Poke {
                ring: name_ok(r)?,
                off: num_max(off, MAX_BUFFER, "offset")?,
                bytes,
            }
        }
        "snapshot" => {
            no_rhs()?;
            Op::Snapshot {
                ring: name_ok(one_arg(args, "a ring name")?)?,
            }
        }
        "unchanged" => {
            let ring = name_ok(one_arg(args, "a ring name")?)?;
            Op::Unchanged {
                ring,
                expect: yes_no(need_rhs()?)?,
            }
        }
        "notify" => {
            let entries = match args {
                [n] if n == "null" => None,
                _ => Some(
                    args.iter()
                        .map(|t| notify_entry(t))
                        .collect::<Res<Vec<_>>>()?,
                ),
            };
            let rhs = need_rhs()?;
            let expect = match rhs {
                [t] if t == "ok" => Expect::Ok(None),
                [t] if errno(t).is_some() => Expect::Err(errno(t).unwrap_or(HvError::Invalid)),
                _ => {
                    let mut v = Vec::new();
                    for part in split_semicolons(rhs) {
                        let [f, m] = part else {
                            return Err("notify: `FLAGS max=N` per entry, `;` between".into());
                        };
                        let max = match kv(m) {
                            Some(("max", n)) => u32_of(n, "max")?,
                            _ => return Err(format!("`{m}`: max=N expected")),
                        };
                        v.push(EntryResult {
                            flags: flags(f)?,
                            max,
                        });
                    }
                    let n: u64 = entries
                        .as_ref()
                        .map(|e| e.iter().map(|e| u64::from(e.repeat)).sum())
                        .unwrap_or(0);
                    if n != v.len() as u64 {
                        return Err(format!("notify: {n} entries but {} results", v.len()));
                    }
                    Expect::Ok(Some(v))
                }
            };
            Op::Notify { entries, expect }
        }
        "event" => {
            no_more(args)?;
            Op::Event {
                expect: yes_no(need_rhs()?)?,
            }
        }
        "info" => {
            no_more(args)?;
            let rhs = need_rhs()?;
            let expect = match rhs {
                [t] if t == "ok" => Expect::Ok(Vec::new()),
                [t] if errno(t).is_some() => Expect::Err(errno(t).unwrap_or(HvError::Invalid)),
                _ => {
                    let mut v = Vec::new();
                    for t in rhs {
                        let (k, n) = kv(t).ok_or_else(|| format!("`{t}`: FIELD=N expected"))?;
                        let f = InfoField::from_keyword(k)
                            .ok_or_else(|| format!("`{k}` is not an info field"))?;
                        v.push((f, number(n)?));
                    }
                    Expect::Ok(v)
                }
            };
            Op::Info { expect }
        }
        "config" => {
            let expect = expect_unit(need_rhs()?)?;
            let [d, rest @ ..] = args else {
                return Err("config DOM max_rings=N".into());
            };
            let mut max_rings = None;
            let mut max_pages = 0;
            let mut pad = 0;
            for t in rest {
                match kv(t) {
                    Some(("max_rings", v)) => max_rings = Some(u32_of(v, "max_rings")?),
                    Some(("max_pages", v)) => max_pages = u32_of(v, "max_pages")?,
                    Some(("pad", v)) => pad = u16_of(v, "pad")?,
                    _ => {
                        return Err(format!("`{t}`: max_rings=N, max_pages=N or pad=N expected"));
                    }
                }
            }
            let max_rings = max_rings.ok_or("config needs max_rings=N")?;
            Op::Config {
                domain: domain(d)?,
                max_rings,
                max_pages,
                pad,
                expect,
            }
        }
        "acl" => parse_acl(args, need_rhs()?)?,
        "create" | "destroy" => {
            let d = domain(one_arg(args, "a domain")?)?;
            match need_rhs()? {
                [t] if t == "ok" => {}
                _ => return Err(format!("{word}: only `=> ok` is supported")),
            }
            if word == "create" {
                Op::Create { domain: d }
            } else {
                Op::Destroy { domain: d }
            }
        }
        "inspect" => {
            let what = match one_arg(args, "rings or waiters")? {
                "rings" => InspectKind::Rings,
                "waiters" => InspectKind::Waiters,
                w => return Err(format!("`{w}`: rings or waiters expected")),
            };
            let value = number(one_arg(need_rhs()?, "a number")?)?;
            Op::Inspect { what, value }
        }
        w => return Err(format!("unknown operation `{w}`")),
    })
}

fn parse_acl(args: &[String], rhs: &[String]) -> Res<Op> {
    let Some((sub, args)) = args.split_first() else {
        return Err("acl add|del|list expected".into());
    };
    let at = |toks: &[String]| -> Res<u32> {
        match toks {
            [] => Ok(0),
            [t] => match kv(t) {
                Some(("at", v)) => u32_of(v, "position"),
                _ => Err(format!("`{t}`: at=N expected")),
            },
            [_, t, ..] => Err(format!("unexpected `{t}`")),
        }
    };
    Ok(match sub.as_str() {
        "add" => {
            let (rule, used) = rule(args)?;
            Op::AclAdd {
                rule,
                position: at(&args[used..])?,
                expect: expect_unit(rhs)?,
            }
        }
        "del" => {
            let spec = match args {
                [a] if a == "all" => DelSpec {
                    rule: None,
                    position: abi::TABLES_DEL_ALL,
                },
                [a] if a.starts_with("at=") => DelSpec {
                    rule: None,
                    position: at(args)?,
                },
                _ => {
                    let (r, used) = rule(args)?;
                    DelSpec {
                        rule: Some(r),
                        position: at(&args[used..])?,
                    }
                }
            };
            Op::AclDel {
                spec,
                expect: expect_unit(rhs)?,
            }
        }
        "list" => {
            let (mut start, mut max) = (0, abi::MAX_RULES);
            for t in args {
                match kv(t) {
                    Some(("start", v)) => start = u32_of(v, "start")?,
                    Some(("max", v)) => max = u32_of(v, "max")?,
                    _ => return Err(format!("`{t}`: start=N or max=N expected")),
                }
            }
            let expect = match rhs {
                [t] if errno(t).is_some() => Expect::Err(errno(t).unwrap_or(HvError::Invalid)),
                [t, rest @ ..] => {
                    let total = match kv(t) {
                        Some(("total", v)) => u32_of(v, "total")?,
                        _ => return Err("acl list: `total=N RULE ; RULE...` or an errno".into()),
                    };
                    let mut rules = Vec::new();
                    if !rest.is_empty() {
                        for part in split_semicolons(rest) {
                            let (r, used) = rule(part)?;
                            no_more(&part[used..])?;
                            rules.push(r);
                        }
                    }
                    Expect::Ok(ListExpect { total, rules })
                }
                [] => return Err("acl list: an expected result is needed".into()),
            };
            Op::AclList { start, max, expect }
        }
        s => return Err(format!("`acl {s}`: add, del or list expected")),
    })
}

/// Parses one scenario file's text.
pub fn parse(text: &str) -> Result<Scenario, ParseError> {
    let mut sc = Scenario::default();
    let mut seen_domains = false;
    let mut known: BTreeSet<DomId> = BTreeSet::new();
    // Names of memories and rings: name -> (owner, is_ring).
    let mut names: HashMap<String, (DomId, bool)> = HashMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let err = |message: String| ParseError { line, message };
        let trimmed = raw.trim();
        if let Some(n) = trimmed.strip_prefix("name:") {
            if sc.name.is_some() {
                return Err(err("a second `name:` line".into()));
            }
            let n = n.split('#').next().unwrap_or_default().trim();
            if n.is_empty() {
                return Err(err("empty name".into()));
            }
            sc.name = Some(n.to_string());
            continue;
        }
        let toks = tokenize(raw).map_err(err)?;
        let Some(first) = toks.first() else { continue };
        match first.as_str() {
            "domains" => {
                if seen_domains {
                    return Err(err("a second `domains` line".into()));
                }
                if !sc.steps.is_empty() {
                    return Err(err("`domains` must come before the steps".into()));
                }
                seen_domains = true;
                for t in &toks[1..] {
                    let d = u16_of(t, "domain").map_err(err)?;
                    if d >= abi::DOMID_FIRST_RESERVED {
                        return Err(err(format!("{d} is not an ordinary domain id")));
                    }
                    if !known.insert(d) {
                        return Err(err(format!("domain {d} listed twice")));
                    }
                    sc.domains.push(d);
                }
                continue;
            }
            "requires" => {
                if !sc.steps.is_empty() {
                    return Err(err("`requires` must come before the steps".into()));
                }
                for t in &toks[1..] {
                    let c = Capability::from_keyword(t).ok_or_else(|| {
                        err(format!(
                            "`{t}` is not a capability (create destroy inspect)"
                        ))
                    })?;
                    sc.requires.insert(c);
                }
                if toks.len() == 1 {
                    return Err(err("requires what?".into()));
                }
                continue;
            }
            _ => {}
        }
        if !seen_domains {
            return Err(err("a `domains ...` line must come before the steps".into()));
        }
        let (actor, rest) = match first.strip_suffix(':') {
            Some(d) => {
                let d = u16_of(d, "domain").map_err(err)?;
                if !known.contains(&d) {
                    return Err(err(format!("domain {d} is not in `domains` or created")));
                }
                (Some(d), &toks[1..])
            }
            None => (None, &toks[..]),
        };
        let (repeat, rest) = match rest.first().and_then(|t| t.strip_suffix('x')) {
            Some(n) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
                let n = num_max(n, u64::from(MAX_REPEAT), "repeat count").map_err(err)? as u32;
                if n == 0 {
                    return Err(err("repeat count 0".into()));
                }
                (n, &rest[1..])
            }
            _ => (1, rest),
        };
        let Some((word, rest)) = rest.split_first() else {
            return Err(err("an operation is expected after the domain".into()));
        };
        let arrow = rest.iter().position(|t| t == "=>");
        let (args, rhs) = match arrow {
            Some(p) => (&rest[..p], Some(&rest[p + 1..])),
            None => (rest, None),
        };
        if rhs.is_some_and(|r| r.is_empty()) {
            return Err(err("nothing after `=>`".into()));
        }
        let op = parse_op(word, args, rhs).map_err(err)?;
        match (actor.is_some(), op.is_harness()) {
            (true, true) => {
                return Err(err(format!(
                    "`{word}` is done by the harness: no `D:` prefix"
                )));
            }
            (false, false) => {
                return Err(err(format!("`{word}` needs a domain: `D: {word} ...`")));
            }
            _ => {}
        }
        let needs = match &op {
            Op::Create { .. } => Some(Capability::Create),
            Op::Destroy { .. } => Some(Capability::Destroy),
            Op::Inspect { .. } => Some(Capability::Inspect),
            _ => None,
        };
        if let Some(c) = needs.filter(|c| !sc.requires.contains(c)) {
            return Err(err(format!("`{word}` needs `requires {}`", c.keyword())));
        }
        if let Op::Create { domain } = &op {
            if *domain >= abi::DOMID_FIRST_RESERVED {
                return Err(err(format!("{domain} is not an ordinary domain id")));
            }
            known.insert(*domain);
        }
        if repeat != 1 && matches!(op, Op::Mem { .. } | Op::Ring { .. } | Op::Create { .. }) {
            return Err(err(format!(
                "`{word}` defines something: it cannot be repeated"
            )));
        }
        check_names(&op, actor, &mut names).map_err(err)?;
        sc.steps.push(Step {
            line,
            actor,
            repeat,
            op,
        });
    }
    if !seen_domains {
        return Err(ParseError {
            line: 1,
            message: "no `domains ...` line".into(),
        });
    }
    Ok(sc)
}

/// Memory and ring names: defined before use, used only by their owner.
fn check_names(
    op: &Op,
    actor: Option<DomId>,
    names: &mut HashMap<String, (DomId, bool)>,
) -> Res<()> {
    let Some(actor) = actor else { return Ok(()) };
    let use_ring = |n: &String, names: &HashMap<String, (DomId, bool)>| -> Res<()> {
        match names.get(n) {
            None => Err(format!("no ring `{n}` defined before")),
            Some((_, false)) => Err(format!("`{n}` is memory, not a ring")),
            Some((o, _)) if *o != actor => Err(format!(
                "ring `{n}` belongs to domain {o}: only its owner can use it"
            )),
            Some(_) => Ok(()),
        }
    };
    match op {
        Op::Mem { name, .. } if names.contains_key(name) => {
            return Err(format!("`{name}` is defined already"));
        }
        Op::Mem { name, .. } => {
            names.insert(name.clone(), (actor, false));
        }
        Op::Ring { name, spec, .. } => {
            if let Some(m) = &spec.mem {
                match names.get(m) {
                    None => return Err(format!("no memory `{m}` defined before")),
                    Some((o, _)) if *o != actor => {
                        return Err(format!("memory `{m}` belongs to domain {o}"));
                    }
                    Some(_) => {}
                }
            }
            if names.insert(name.clone(), (actor, true)).is_some() {
                return Err(format!("`{name}` is defined already"));
            }
        }
        Op::Register { ring, .. }
        | Op::Unregister { ring, .. }
        | Op::Recv { ring, .. }
        | Op::Ptrs { ring, .. }
        | Op::Field { ring, .. }
        | Op::Data { ring, .. }
        | Op::Set { ring, .. }
        | Op::Poke { ring, .. }
        | Op::Snapshot { ring }
        | Op::Unchanged { ring, .. } => use_ring(ring, names)?,
        _ => {}
    }
    Ok(())
}
