// SPDX-License-Identifier: MIT OR Apache-2.0
//! Property tests of the parser: printing a scenario and parsing it again gives the same syntax
//! tree, and no input makes the parser panic.

use std::collections::BTreeSet;

use conformance::ast::*;
use conformance::parse;
use proptest::prelude::*;
use v4v::HvError;
use v4v::abi::{self, DomId};

fn strip_lines(s: &Scenario) -> Scenario {
    let mut s = s.clone();
    for st in &mut s.steps {
        st.line = 0;
    }
    s
}

fn dom() -> impl Strategy<Value = DomId> {
    prop_oneof![
        0u16..5,
        Just(abi::DOMID_SELF),
        Just(abi::DOMID_ANY),
        any::<u16>()
    ]
}

fn addr() -> impl Strategy<Value = Addr> {
    (dom(), prop_oneof![Just(0u32), 1u32..1000, any::<u32>()]).prop_map(|(d, p)| Addr::new(d, p))
}

fn padded_addr() -> impl Strategy<Value = Addr> {
    (addr(), prop_oneof![Just(0u16), any::<u16>()]).prop_map(|(mut a, p)| {
        a.pad = p;
        a
    })
}

fn errno() -> impl Strategy<Value = HvError> {
    prop::sample::select(vec![
        "EPERM",
        "ENOENT",
        "ESRCH",
        "E2BIG",
        "EAGAIN",
        "ENOMEM",
        "EACCES",
        "EFAULT",
        "EBUSY",
        "EEXIST",
        "EINVAL",
        "ENOSPC",
        "ENOSYS",
        "EMSGSIZE",
        "ECONNREFUSED",
    ])
    .prop_map(|n| HvError::from_name(n).unwrap_or(HvError::Invalid))
}

fn expect<T: std::fmt::Debug + Clone>(
    ok: impl Strategy<Value = T>,
) -> impl Strategy<Value = Expect<T>> {
    prop_oneof![errno().prop_map(Expect::Err), ok.prop_map(Expect::Ok)]
}

fn unit() -> impl Strategy<Value = Expect<()>> {
    expect(Just(()))
}

fn chunk() -> impl Strategy<Value = Chunk> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..20).prop_map(Chunk::Text),
        prop::collection::vec(any::<u8>(), 0..20).prop_map(Chunk::Hex),
        (0u64..100_000, any::<u8>()).prop_map(|(len, seed)| Chunk::Pattern { len, seed }),
        (0u32..300, 0u64..1000, any::<u8>()).prop_map(|(count, len, seed)| Chunk::Repeat {
            count,
            len,
            seed
        }),
    ]
}

fn payload() -> impl Strategy<Value = Payload> {
    prop::collection::vec(chunk(), 0..4).prop_map(Payload)
}

fn mtype() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(abi::PROTO_DGRAM),
        Just(abi::PROTO_STREAM),
        any::<u32>()
    ]
}

fn rule() -> impl Strategy<Value = Rule> {
    (
        padded_addr(),
        padded_addr(),
        prop_oneof![Just(0u32), Just(1), any::<u32>()],
    )
        .prop_map(|(src, dst, accept)| Rule { src, dst, accept })
}

fn field() -> impl Strategy<Value = (HeaderField, u64)> {
    (
        prop::sample::select(HeaderField::ALL.to_vec()),
        any::<u64>(),
    )
        .prop_map(|(f, v)| (f, v & f.max()))
}

fn ring_op() -> impl Strategy<Value = Op> {
    let r = || Just("r".to_string());
    prop_oneof![
        (r(), unit()).prop_map(|(ring, expect)| Op::Register { ring, expect }),
        (r(), unit()).prop_map(|(ring, expect)| Op::Unregister { ring, expect }),
        (
            r(),
            prop_oneof![
                Just(RecvExpect::Empty),
                Just(RecvExpect::Corrupt),
                (addr(), mtype(), payload()).prop_map(|(from, message_type, payload)| {
                    RecvExpect::Message {
                        from,
                        message_type,
                        payload,
                    }
                }),
            ]
        )
            .prop_map(|(ring, expect)| Op::Recv { ring, expect }),
        (r(), any::<u32>(), any::<u32>()).prop_map(|(ring, rx, tx)| Op::Ptrs { ring, rx, tx }),
        (r(), field()).prop_map(|(ring, (field, value))| Op::Field { ring, field, value }),
        (r(), 0u64..5000, prop::collection::vec(any::<u8>(), 0..40))
            .prop_map(|(ring, off, bytes)| Op::Data { ring, off, bytes }),
        (r(), prop::collection::vec(field(), 1..4))
            .prop_map(|(ring, fields)| Op::Set { ring, fields }),
        (r(), 0u64..5000, prop::collection::vec(any::<u8>(), 1..40))
            .prop_map(|(ring, off, bytes)| Op::Poke { ring, off, bytes }),
        r().prop_map(|ring| Op::Snapshot { ring }),
        (r(), any::<bool>()).prop_map(|(ring, expect)| Op::Unchanged { ring, expect }),
    ]
}

fn domain_op() -> impl Strategy<Value = Op> {
    let entry = (
        1u32..5,
        padded_addr(),
        any::<u32>(),
        prop_oneof![Just(0u16), any::<u16>()],
    )
        .prop_map(|(repeat, ring, space, pad)| NotifyEntry {
            repeat,
            ring,
            space,
            pad,
        });
    let notify = prop::option::of(prop::collection::vec(entry, 0..3)).prop_flat_map(|entries| {
        let n: usize = entries
            .as_ref()
            .map(|e| e.iter().map(|e| e.repeat as usize).sum())
            .unwrap_or(0);
        let results = prop::collection::vec(
            (any::<u16>(), any::<u32>()).prop_map(|(flags, max)| EntryResult { flags, max }),
            n..=n,
        );
        let ex = if n == 0 {
            prop_oneof![errno().prop_map(Expect::Err), Just(Expect::Ok(None))].boxed()
        } else {
            prop_oneof![
                errno().prop_map(Expect::Err),
                Just(Expect::Ok(None)),
                results.prop_map(|r| Expect::Ok(Some(r))),
            ]
            .boxed()
        };
        (Just(entries), ex)
    });
    prop_oneof![
        (
            addr(),
            padded_addr(),
            payload(),
            mtype(),
            expect(0u64..=u64::from(u32::MAX)),
            prop_oneof![Just(0u16), any::<u16>()]
        )
            .prop_map(|(mut src, dst, payload, message_type, expect, sp)| {
                src.pad = sp;
                Op::Send {
                    src,
                    dst,
                    payload,
                    message_type,
                    expect,
                }
            }),
        prop::collection::vec(
            (
                addr(),
                padded_addr(),
                payload(),
                mtype(),
                expect(0u64..=u64::from(u32::MAX)),
            ),
            1..4
        )
        .prop_map(|v| {
            let (sends, expect) = v
                .into_iter()
                .map(|(src, dst, payload, message_type, e)| {
                    let s = SendSpec {
                        src,
                        dst,
                        payload,
                        message_type,
                    };
                    (s, e)
                })
                .unzip();
            Op::Batch { sends, expect }
        }),
        notify.prop_map(|(entries, expect)| Op::Notify { entries, expect }),
        any::<bool>().prop_map(|expect| Op::Event { expect }),
        expect(prop::collection::vec(
            (prop::sample::select(InfoField::ALL.to_vec()), any::<u64>()),
            0..4
        ))
        .prop_map(|expect| Op::Info { expect }),
        (dom(), any::<u32>(), any::<u32>(), any::<u16>(), unit()).prop_map(
            |(domain, max_rings, max_pages, pad, expect)| Op::Config {
                domain,
                max_rings,
                max_pages,
                pad,
                expect,
            }
        ),
        (rule(), any::<u32>(), unit()).prop_map(|(rule, position, expect)| Op::AclAdd {
            rule,
            position,
            expect
        }),
        (prop::option::of(rule()), any::<u32>(), unit()).prop_map(|(rule, position, expect)| {
            Op::AclDel {
                spec: DelSpec { rule, position },
                expect,
            }
        }),
        (
            any::<u32>(),
            any::<u32>(),
            expect(
                (any::<u32>(), prop::collection::vec(rule(), 0..3))
                    .prop_map(|(total, rules)| ListExpect { total, rules })
            )
        )
            .prop_map(|(start, max, expect)| Op::AclList { start, max, expect }),
        (1u32..4097, any::<u32>(), 48u32..5000, dom(), unit()).prop_map(
            |(count, port, len, partner, expect)| {
                let count = count.min(u32::MAX - port + 1);
                Op::Rings {
                    count,
                    port,
                    len,
                    partner,
                    expect,
                }
            }
        ),
    ]
}

fn harness_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u16..abi::DOMID_FIRST_RESERVED).prop_map(|domain| Op::Create { domain }),
        any::<u16>().prop_map(|domain| Op::Destroy { domain }),
        (
            prop_oneof![Just(InspectKind::Rings), Just(InspectKind::Waiters)],
            any::<u64>()
        )
            .prop_map(|(what, value)| Op::Inspect { what, value }),
    ]
}

fn ring_spec() -> impl Strategy<Value = RingSpec> {
    (
        prop::collection::vec(field(), 0..4),
        any::<u32>(),
        any::<u32>(),
        0u64..10_000,
        prop::option::of(0u64..100_000),
        any::<bool>(),
    )
        .prop_map(|(mut fields, port, len, off, size, use_mem)| {
            fields.insert(0, (HeaderField::Port, u64::from(port)));
            fields.push((HeaderField::Len, u64::from(len)));
            let (mem, size) = if use_mem {
                (Some("m".to_string()), None)
            } else {
                (None, size)
            };
            RingSpec {
                fields,
                mem,
                off,
                size,
            }
        })
}

fn scenario() -> impl Strategy<Value = Scenario> {
    let step = prop_oneof![
        (1u32..5, domain_op()).prop_map(|(repeat, op)| Step {
            line: 0,
            actor: Some(1),
            repeat,
            op
        }),
        (1u32..5, ring_op()).prop_map(|(repeat, op)| Step {
            line: 0,
            actor: Some(1),
            repeat,
            op
        }),
        harness_op().prop_map(|op| Step {
            line: 0,
            actor: None,
            repeat: 1,
            op
        }),
    ];
    (
        prop::option::of("[a-z][a-z0-9 _-]{0,20}[a-z]"),
        ring_spec(),
        0u64..100_000,
        unit(),
        prop::collection::vec(step, 0..12),
    )
        .prop_map(|(name, spec, size, expect, mut steps)| {
            let mut head = vec![
                Step {
                    line: 0,
                    actor: Some(1),
                    repeat: 1,
                    op: Op::Mem {
                        name: "m".into(),
                        size,
                    },
                },
                Step {
                    line: 0,
                    actor: Some(1),
                    repeat: 1,
                    op: Op::Ring {
                        name: "r".into(),
                        spec,
                        expect,
                    },
                },
            ];
            head.append(&mut steps);
            Scenario {
                name,
                domains: vec![0, 1],
                requires: BTreeSet::from(Capability::ALL),
                steps: head,
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn print_then_parse_is_identity(sc in scenario()) {
        let text = sc.to_string();
        let parsed = parse(&text).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        prop_assert_eq!(strip_lines(&parsed), strip_lines(&sc), "text:\n{}", text);
    }

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,400}") {
        let _ = parse(&text);
    }

    #[test]
    fn mangled_scenarios_never_panic(sc in scenario(), cut in any::<prop::sample::Index>(),
                                     junk in "[ -~]{0,12}") {
        let text = sc.to_string();
        let at = cut.index(text.len() + 1);
        if text.is_char_boundary(at) {
            let _ = parse(&format!("{}{}{}", &text[..at], junk, &text[at..]));
        }
    }
}

#[test]
fn every_scenario_file_round_trips() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios");
    let loaded = conformance::load(std::path::Path::new(dir)).expect("scenarios parse");
    assert!(loaded.len() >= 40);
    for ls in loaded {
        let text = ls.scenario.to_string();
        let again = parse(&text).unwrap_or_else(|e| panic!("{}: {e}\n{text}", ls.path.display()));
        assert_eq!(
            strip_lines(&again),
            strip_lines(&ls.scenario),
            "{}",
            ls.path.display()
        );
    }
}

#[test]
fn parse_errors_name_the_line() {
    let cases = [
        ("1: info => ok\n", 1, "domains"),
        ("domains 0\n0: send 0:1 -> 1:1 bytes=3 => ok\n", 2, "`ok`"),
        ("domains 0\n\n0: recv r => empty\n", 3, "no ring `r`"),
        (
            "domains 0 1\n1: ring r port=1 len=64 => ok\n0: recv r => empty\n",
            3,
            "belongs to domain 1",
        ),
        ("domains 0\ndestroy 0 => ok\n", 2, "requires destroy"),
        (
            "domains 0\n0: send 0:1 -> 1:1 \"abc => 3\n",
            2,
            "unterminated",
        ),
        (
            "domains 0\n0: notify 1:1/0 2:2/0 => - max=0\n",
            2,
            "2 entries but 1 results",
        ),
        ("domains 0\n0: bogus\n", 2, "unknown operation"),
        ("domains 0\n5: info => ok\n", 2, "domain 5"),
    ];
    for (text, line, needle) in cases {
        let e = parse(text).expect_err(text);
        assert_eq!(e.line, line, "{text}: {e}");
        assert!(
            e.message.contains(needle),
            "{text}: `{}` lacks `{needle}`",
            e.message
        );
    }
}
