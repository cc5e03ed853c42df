// SPDX-License-Identifier: MIT OR Apache-2.0
//! The C header `v4v.h` is the single source of truth for the ABI; `v4v::abi` mirrors it. These
//! tests compile the header with the system C compiler (and as C++), print the size, alignment and
//! every field offset and size of every struct, and every constant, and compare them with the Rust
//! side. They also parse the header's text so that a struct, field or `#define` added to the header
//! but not to the table below is an error, not a silent gap.
//!
//! The header includes `"xen.h"` and `"event_channel.h"`; they come from Debian's Xen public
//! headers (`libxen-dev`, `/usr/include/xen/...`) through a generated shim directory.
//! `/usr/include/xen` itself is not put on the include path: its `features.h` would shadow glibc's.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use core::mem::{align_of, offset_of, size_of};

use v4v::abi::{self, *};

/// Where the C header lives in the repository.
fn header_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../hypervisor-patch/xen/include/public/v4v.h")
}

// ---------------------------------------------------------------------------------------------
// The Rust side of the ABI, described as data.

struct Field {
    name: &'static str,
    offset: usize,
    size: usize,
}

/// A C flexible array member: its name, and its element size on the Rust side. It must start right
/// after the Rust header struct (entries are laid out at `size_of::<Header>()`).
struct Flex {
    name: &'static str,
    elem_size: usize,
    elem_align: usize,
}

struct StructSpec {
    /// The C typedef name (`v4v_ring_t`); the C struct tag is this without `_t`.
    c_name: &'static str,
    rust_name: &'static str,
    size: usize,
    align: usize,
    fields: Vec<Field>,
    flex: Option<Flex>,
}

/// Size of the type of a field, from a projection closure.
fn field_size<T, F>(_project: fn(&T) -> &F) -> usize {
    size_of::<F>()
}

macro_rules! spec {
    ($c:literal => $t:ty { $($f:ident),* $(,)? } $(flex $flex:ident: $elem:ty)?) => {
        StructSpec {
            c_name: $c,
            rust_name: stringify!($t),
            size: size_of::<$t>(),
            align: align_of::<$t>(),
            fields: vec![$(Field {
                name: stringify!($f),
                offset: offset_of!($t, $f),
                size: field_size(|s: &$t| &s.$f),
            }),*],
            flex: None $(.or(Some(Flex {
                name: stringify!($flex),
                elem_size: size_of::<$elem>(),
                elem_align: align_of::<$elem>(),
            })))?,
        }
    };
}

fn structs() -> Vec<StructSpec> {
    vec![
        spec!("v4v_iov_t" => Iov { iov_base, iov_len, pad }),
        spec!("v4v_addr_t" => Addr { port, domain, pad }),
        spec!("v4v_ring_id_t" => RingId { addr, partner, pad }),
        spec!("v4v_send_addr_t" => SendAddr { src, dst }),
        spec!("v4v_ring_t" => RingHeader { magic, id, len, rx_ptr, tx_ptr, reserved }
            flex ring: u8),
        spec!("v4v_ring_message_header_t" => MessageHeader { len, message_type, source }
            flex data: u8),
        spec!("v4v_ring_data_ent_t" => RingDataEnt {
            ring, flags, pad, space_required, max_message_size
        }),
        spec!("v4v_ring_data_t" => RingDataHeader { magic, nent, pad, reserved }
            flex data: RingDataEnt),
        spec!("v4v_info_t" => Info {
            ring_magic, data_magic, evtchn, domid, pad, max_rings, nr_rings, max_ring_len,
            max_iov, max_notify, max_waiters, max_message_size, max_rules, max_ring_pages,
            nr_ring_pages,
        }),
        spec!("v4v_config_t" => Config { domain, pad, max_rings, max_ring_pages }),
        spec!("v4vtables_rule_t" => TablesRule { src, dst, accept }),
        spec!("v4vtables_list_t" => TablesListHeader { start_rule, nb_rules }
            flex rules: TablesRule),
        spec!("v4v_stream_header_t" => StreamHeader { flags, conid }),
    ]
}

/// Every object-like `#define` of v4v.h, with the Rust value it must equal.
fn header_constants() -> Vec<(&'static str, u64)> {
    vec![
        ("__HYPERVISOR_v4v_op", HYPERVISOR_V4V_OP),
        ("V4V_RING_MAGIC", RING_MAGIC),
        ("V4V_RING_DATA_MAGIC", RING_DATA_MAGIC),
        ("V4V_PROTO_DGRAM", PROTO_DGRAM.into()),
        ("V4V_PROTO_STREAM", PROTO_STREAM.into()),
        ("V4V_DOMID_ANY", DOMID_ANY.into()),
        ("V4V_PORT_ANY", PORT_ANY.into()),
        ("V4V_RING_ALIGN", RING_ALIGN.into()),
        ("V4V_RING_HEADER_SIZE", RING_HEADER_SIZE.into()),
        ("V4V_MESSAGE_HEADER_SIZE", MESSAGE_HEADER_SIZE.into()),
        ("V4V_MIN_RING_LEN", MIN_RING_LEN.into()),
        ("V4V_MAX_RING_LEN", MAX_RING_LEN.into()),
        ("V4V_MAX_MESSAGE_SIZE", MAX_MESSAGE_SIZE.into()),
        ("V4V_MAX_IOV", MAX_IOV.into()),
        ("V4V_MAX_NOTIFY", MAX_NOTIFY.into()),
        ("V4V_MAX_WAITERS", MAX_WAITERS.into()),
        ("V4V_DEFAULT_MAX_RINGS", DEFAULT_MAX_RINGS.into()),
        ("V4V_MAX_RINGS_LIMIT", MAX_RINGS_LIMIT.into()),
        ("V4V_DEFAULT_MAX_RING_PAGES", DEFAULT_MAX_RING_PAGES.into()),
        ("V4V_MAX_RING_PAGES_LIMIT", MAX_RING_PAGES_LIMIT.into()),
        ("V4V_MAX_RULES", MAX_RULES.into()),
        ("V4V_RING_DATA_F_EMPTY", RING_DATA_F_EMPTY.into()),
        ("V4V_RING_DATA_F_EXISTS", RING_DATA_F_EXISTS.into()),
        ("V4V_RING_DATA_F_PENDING", RING_DATA_F_PENDING.into()),
        ("V4V_RING_DATA_F_SUFFICIENT", RING_DATA_F_SUFFICIENT.into()),
        ("V4V_SHF_SYN", SHF_SYN.into()),
        ("V4V_SHF_ACK", SHF_ACK.into()),
        ("V4V_SHF_RST", SHF_RST.into()),
        ("V4V_SHF_PING", SHF_PING.into()),
        ("V4V_SHF_PONG", SHF_PONG.into()),
        ("V4VTABLES_DEL_ALL", TABLES_DEL_ALL.into()),
        ("V4VOP_register_ring", OP_REGISTER_RING.into()),
        ("V4VOP_unregister_ring", OP_UNREGISTER_RING.into()),
        ("V4VOP_notify", OP_NOTIFY.into()),
        ("V4VOP_sendv", OP_SENDV.into()),
        ("V4VOP_info", OP_INFO.into()),
        ("V4VOP_config", OP_CONFIG.into()),
        ("V4VOP_tables_add", OP_TABLES_ADD.into()),
        ("V4VOP_tables_del", OP_TABLES_DEL.into()),
        ("V4VOP_tables_list", OP_TABLES_LIST.into()),
    ]
}

/// Macros of v4v.h that are not object-like constants, each checked some other way.
const HEADER_OTHER_MACROS: &[&str] = &[
    "__XEN_PUBLIC_V4V_H__", // include guard
    "V4V_ROUNDUP",          // function-like: checked against abi::roundup16
];

/// Other checks: a C expression and the Rust value it must equal.
fn other_checks() -> Vec<(String, String, u64)> {
    let mut v: Vec<(String, String, u64)> = Vec::new();
    let mut add = |key: &str, expr: &str, value: u64| {
        v.push((key.to_string(), expr.to_string(), value));
    };
    // V4V_ROUNDUP keeps its argument's width (64-bit values must not lose their upper half).
    add(
        "roundup.u64",
        "V4V_ROUNDUP((uint64_t)0x100000001ULL)",
        roundup16(0x1_0000_0001),
    );
    // Constants abi.rs takes from xen.h.
    add("xen.DOMID_SELF", "DOMID_SELF", DOMID_SELF.into());
    add(
        "xen.DOMID_FIRST_RESERVED",
        "DOMID_FIRST_RESERVED",
        DOMID_FIRST_RESERVED.into(),
    );
    add("xen.DOMID_INVALID", "DOMID_INVALID", DOMID_ANY.into());
    add(
        "xen.sizeof_domid_t",
        "sizeof(domid_t)",
        size_of::<DomId>() as u64,
    );
    add("xen.sizeof_evtchn_port_t", "sizeof(evtchn_port_t)", 4);
    // The ring header offsets libv4v uses for concurrent accesses.
    for (name, field, value) in [
        ("MAGIC", "magic", abi::ring_offsets::MAGIC),
        ("ID", "id", abi::ring_offsets::ID),
        ("LEN", "len", abi::ring_offsets::LEN),
        ("RX_PTR", "rx_ptr", abi::ring_offsets::RX_PTR),
        ("TX_PTR", "tx_ptr", abi::ring_offsets::TX_PTR),
        ("DATA", "ring", abi::ring_offsets::DATA),
    ] {
        add(
            &format!("ring_offsets.{name}"),
            &format!("offsetof(v4v_ring_t, {field})"),
            value as u64,
        );
    }
    // V4V_ROUNDUP on 32-bit values (its documented domain: ring offsets and lengths).
    for x in [
        0u32,
        1,
        15,
        16,
        17,
        31,
        32,
        33,
        47,
        48,
        4095,
        4097,
        MAX_RING_LEN - 1,
        0xffff_ffe1,
    ] {
        add(
            &format!("roundup.{x}"),
            &format!("V4V_ROUNDUP((uint32_t){x}U)"),
            roundup16(u64::from(x)),
        );
    }
    // Errno values, against Xen's public errno.h.
    for (name, value) in [
        ("EPERM", abi::errno::EPERM),
        ("ENOENT", abi::errno::ENOENT),
        ("ESRCH", abi::errno::ESRCH),
        ("E2BIG", abi::errno::E2BIG),
        ("EAGAIN", abi::errno::EAGAIN),
        ("ENOMEM", abi::errno::ENOMEM),
        ("EACCES", abi::errno::EACCES),
        ("EFAULT", abi::errno::EFAULT),
        ("EBUSY", abi::errno::EBUSY),
        ("EEXIST", abi::errno::EEXIST),
        ("EINVAL", abi::errno::EINVAL),
        ("ENOSPC", abi::errno::ENOSPC),
        ("ENOSYS", abi::errno::ENOSYS),
        ("EMSGSIZE", abi::errno::EMSGSIZE),
        ("ECONNREFUSED", abi::errno::ECONNREFUSED),
    ] {
        add(
            &format!("errno.{name}"),
            &format!("XEN_{name}"),
            value as u64,
        );
    }
    v
}

/// The values the C program must print, keyed as it prints them.
fn rust_values() -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for s in structs() {
        let c = s.c_name;
        m.insert(format!("struct.{c}.size"), s.size as u64);
        m.insert(format!("struct.{c}.align"), s.align as u64);
        for f in &s.fields {
            m.insert(format!("field.{c}.{}.offset", f.name), f.offset as u64);
            m.insert(format!("field.{c}.{}.size", f.name), f.size as u64);
        }
        if let Some(fx) = &s.flex {
            // The entries follow the Rust header struct directly.
            m.insert(format!("flex.{c}.{}.offset", fx.name), s.size as u64);
            m.insert(
                format!("flex.{c}.{}.elem_size", fx.name),
                fx.elem_size as u64,
            );
            m.insert(
                format!("flex.{c}.{}.elem_align", fx.name),
                fx.elem_align as u64,
            );
        }
    }
    for (name, value) in header_constants() {
        m.insert(format!("const.{name}"), value);
    }
    for (key, _, value) in other_checks() {
        m.insert(key, value);
    }
    m
}

// ---------------------------------------------------------------------------------------------
// The C side.

fn c_program() -> String {
    let mut p = String::new();
    p.push_str(
        "/* Generated by libv4v/tests/abi_header.rs. */\n\
         #include <stdint.h>\n\
         #include <stddef.h>\n\
         #include <stdio.h>\n\
         #include \"v4v.h\"\n\
         #include <xen/errno.h>\n\
         #ifdef __cplusplus\n\
         #define ALIGNOF(T) alignof(T)\n\
         #else\n\
         #define ALIGNOF(T) (__extension__ _Alignof(T))\n\
         #endif\n\
         #define P(key, expr) printf(\"%s %llu\\n\", key, (unsigned long long)(expr))\n\
         int main(void)\n{\n",
    );
    for s in structs() {
        let c = s.c_name;
        writeln!(p, "    P(\"struct.{c}.size\", sizeof({c}));").unwrap();
        writeln!(p, "    P(\"struct.{c}.align\", ALIGNOF({c}));").unwrap();
        for f in &s.fields {
            let n = f.name;
            writeln!(p, "    P(\"field.{c}.{n}.offset\", offsetof({c}, {n}));").unwrap();
            writeln!(p, "    P(\"field.{c}.{n}.size\", sizeof((({c} *)0)->{n}));").unwrap();
        }
        if let Some(fx) = &s.flex {
            let n = fx.name;
            writeln!(p, "    P(\"flex.{c}.{n}.offset\", offsetof({c}, {n}));").unwrap();
            writeln!(
                p,
                "    P(\"flex.{c}.{n}.elem_size\", sizeof((({c} *)0)->{n}[0]));"
            )
            .unwrap();
            writeln!(
                p,
                "    P(\"flex.{c}.{n}.elem_align\", ALIGNOF(__typeof__((({c} *)0)->{n}[0])));"
            )
            .unwrap();
        }
    }
    for (name, _) in header_constants() {
        writeln!(p, "    P(\"const.{name}\", {name});").unwrap();
    }
    for (key, expr, _) in other_checks() {
        writeln!(p, "    P(\"{key}\", {expr});").unwrap();
    }
    p.push_str("    return 0;\n}\n");
    p
}

/// A compiler command from an environment variable (which may carry arguments) or a default.
fn compiler(var: &str, default: &str) -> Vec<String> {
    let v = std::env::var(var).ok().filter(|s| !s.trim().is_empty());
    v.as_deref()
        .unwrap_or(default)
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// A fresh scratch directory with the shim includes and a copy of v4v.h. The copy sits next to
/// the shim so that `#include "xen.h"` can only find the shim.
fn scratch(tag: &str) -> PathBuf {
    for h in ["xen.h", "event_channel.h", "errno.h"] {
        let p = Path::new("/usr/include/xen").join(h);
        assert!(
            p.is_file(),
            "{} is missing: the Xen public headers are needed to check v4v.h. \
             Install them with `apt-get install libxen-dev`.",
            p.display()
        );
    }
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("abi_header-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("xen.h"), "#include <xen/xen.h>\n").unwrap();
    std::fs::write(
        dir.join("event_channel.h"),
        "#include <xen/event_channel.h>\n",
    )
    .unwrap();
    std::fs::copy(header_path(), dir.join("v4v.h")).unwrap();
    dir
}

/// Compiles `source` (as `file`) with `cc` and `flags`, runs it, and parses its `key value` lines.
fn build_and_run(tag: &str, cc: &[String], file: &str, flags: &[&str]) -> BTreeMap<String, u64> {
    let dir = scratch(tag);
    let src = dir.join(file);
    std::fs::write(&src, c_program()).unwrap();
    let exe = dir.join("abi_dump");
    let mut cmd = Command::new(&cc[0]);
    cmd.args(&cc[1..])
        .args(flags)
        .arg("-I")
        .arg(&dir)
        .arg(&src)
        .arg("-o")
        .arg(&exe);
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let run = Command::new(&exe).output().unwrap();
    assert!(
        run.status.success(),
        "{} failed: {}",
        exe.display(),
        run.status
    );
    let text = String::from_utf8(run.stdout).unwrap();
    let mut values = BTreeMap::new();
    for line in text.lines() {
        let (k, v) = line
            .split_once(' ')
            .unwrap_or_else(|| panic!("bad line {line:?}"));
        let v: u64 = v
            .parse()
            .unwrap_or_else(|e| panic!("bad value in {line:?}: {e}"));
        assert!(
            values.insert(k.to_string(), v).is_none(),
            "{k} printed twice"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    values
}

/// Lists every difference between what the compiler says and what Rust says.
fn compare(what: &str, c: &BTreeMap<String, u64>) {
    let rust = rust_values();
    let mut errors = Vec::new();
    for (k, rv) in &rust {
        match c.get(k) {
            None => errors.push(format!("{k}: not printed by the C program")),
            Some(cv) if cv != rv => {
                errors.push(format!("{k}: C {cv:#x} ({cv}), Rust {rv:#x} ({rv})"))
            }
            Some(_) => {}
        }
    }
    for k in c.keys().filter(|k| !rust.contains_key(*k)) {
        errors.push(format!("{k}: printed by C but has no Rust value"));
    }
    assert!(
        errors.is_empty(),
        "{what}: v4v.h and v4v::abi disagree:\n  {}",
        errors.join("\n  ")
    );
    // Sanity: the comparison covered what it should.
    assert!(c.len() > 150, "{what}: only {} values compared", c.len());
}

#[test]
fn c_layout_and_constants_match_rust() {
    let cc = compiler("CC", "cc");
    let flags = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic"];
    let values = build_and_run("c", &cc, "abi_dump.c", &flags);
    compare("C (c99)", &values);
}

#[test]
fn cxx_layout_and_constants_match_rust() {
    let cxx = compiler("CXX", "g++");
    let flags = [
        "-std=c++11",
        "-Wall",
        "-Wextra",
        "-Werror",
        "-pedantic",
        "-x",
        "c++",
    ];
    let values = build_and_run("cxx", &cxx, "abi_dump.cc", &flags);
    compare("C++ (c++11)", &values);
}

// ---------------------------------------------------------------------------------------------
// Rust-only invariants that make the comparison complete.

#[test]
fn rust_structs_have_no_implicit_padding() {
    for s in structs() {
        // Fields must be listed in declaration order, contiguous, and cover the whole struct: then
        // there is no padding, and no Rust field is missing from the list (repr(C) fields do not
        // overlap, so an unlisted field would leave a gap).
        let mut at = 0;
        for f in &s.fields {
            assert_eq!(
                f.offset, at,
                "{}.{}: expected at offset {at}",
                s.rust_name, f.name
            );
            at += f.size;
        }
        assert_eq!(
            at, s.size,
            "{}: fields cover {at} of {} bytes",
            s.rust_name, s.size
        );
        if let Some(fx) = &s.flex {
            assert_eq!(
                s.size % fx.elem_align,
                0,
                "{}: entries would be misaligned",
                s.rust_name
            );
        }
    }
}

/// Strips `/* ... */` comments (the header has no `//` comments or comment markers in strings).
fn strip_comments(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("/*") {
        out.push_str(&rest[..start]);
        let end = rest[start + 2..].find("*/").expect("unterminated comment") + start + 4;
        // Keep line structure.
        out.extend(rest[start..end].chars().filter(|&c| c == '\n'));
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// Every `typedef struct tag { ... } name;` of the header, with its member names in order.
fn header_structs(text: &str) -> Vec<(String, Vec<String>)> {
    let mut result = Vec::new();
    let mut current: Option<Vec<String>> = None;
    for line in strip_comments(text)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
    {
        if let Some(rest) = line.strip_prefix("typedef struct ") {
            assert!(rest.ends_with('{'), "unexpected struct line {line:?}");
            assert!(current.is_none(), "nested struct at {line:?}");
            current = Some(Vec::new());
        } else if let Some(rest) = line.strip_prefix('}') {
            let fields = current.take().unwrap_or_else(|| panic!("stray {line:?}"));
            let name = rest.trim().trim_end_matches(';').trim();
            result.push((name.to_string(), fields));
        } else if let Some(fields) = current.as_mut() {
            let decl = line
                .strip_suffix(';')
                .unwrap_or_else(|| panic!("odd member {line:?}"));
            let decl = decl.split('[').next().unwrap();
            assert!(
                !decl.contains(','),
                "one member per line expected: {line:?}"
            );
            let name = decl.split_whitespace().last().unwrap();
            fields.push(name.to_string());
        }
    }
    assert!(current.is_none(), "unterminated struct");
    result
}

/// The names of every `#define` of the header.
fn header_defines(text: &str) -> Vec<String> {
    strip_comments(text)
        .lines()
        .filter_map(|l| l.trim().strip_prefix("#define"))
        .map(|rest| {
            let name = rest.split_whitespace().next().unwrap();
            name.split('(').next().unwrap().to_string()
        })
        .collect()
}

#[test]
fn every_header_struct_and_field_is_mirrored() {
    let text = std::fs::read_to_string(header_path()).unwrap();
    let header = header_structs(&text);
    assert!(
        header.len() >= 13,
        "parsed only {} structs from v4v.h",
        header.len()
    );
    let specs = structs();
    let spec_names: BTreeSet<_> = specs.iter().map(|s| s.c_name).collect();
    for (name, fields) in &header {
        let s = specs
            .iter()
            .find(|s| s.c_name == name)
            .unwrap_or_else(|| panic!("v4v.h struct {name} has no Rust mirror in this test"));
        let mut expected: Vec<&str> = s.fields.iter().map(|f| f.name).collect();
        expected.extend(s.flex.as_ref().map(|f| f.name));
        assert_eq!(
            fields, &expected,
            "{name}: members differ from {}",
            s.rust_name
        );
    }
    let header_names: BTreeSet<_> = header.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(header_names, spec_names, "the struct lists differ");
}

#[test]
fn every_header_define_is_checked() {
    let text = std::fs::read_to_string(header_path()).unwrap();
    let defines = header_defines(&text);
    assert!(
        defines.len() >= 40,
        "parsed only {} defines from v4v.h",
        defines.len()
    );
    let checked: BTreeSet<&str> = header_constants()
        .iter()
        .map(|(n, _)| *n)
        .chain(HEADER_OTHER_MACROS.iter().copied())
        .collect();
    let unchecked: Vec<_> = defines
        .iter()
        .filter(|d| !checked.contains(d.as_str()))
        .collect();
    assert!(
        unchecked.is_empty(),
        "v4v.h defines not compared with v4v::abi: {unchecked:?}"
    );
    let defined: BTreeSet<&str> = defines.iter().map(String::as_str).collect();
    let stale: Vec<_> = checked.iter().filter(|c| !defined.contains(*c)).collect();
    assert!(
        stale.is_empty(),
        "checked names that v4v.h does not define: {stale:?}"
    );
}
