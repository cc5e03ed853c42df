// SPDX-License-Identifier: MIT OR Apache-2.0
//! The ACL rule language of `v4v::acl`: rules and rules files round-trip through their text, every
//! kind of bad line is reported as `FILE:LINE: problem`, and `decide` agrees with a plain
//! first-match reference.

use proptest::prelude::*;
use v4v::abi::{Addr, DOMID_ANY, DOMID_FIRST_RESERVED, DomId, TablesRule};
use v4v::acl::{
    Action, Decision, Endpoint, LineProblem, Rule, RuleError, Side, TableRuleError, decide,
    format_rules, parse_rules,
};

// ---------------------------------------------------------------------------------------------
// Strategies.

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![Just(Action::Accept), Just(Action::Reject)]
}

/// Any valid endpoint, with wildcards and the edges of each range likely.
fn endpoint() -> impl Strategy<Value = Endpoint> {
    let domain = prop_oneof![
        1 => Just(None),
        2 => (0..DOMID_FIRST_RESERVED).prop_map(Some),
        1 => Just(Some(DOMID_FIRST_RESERVED - 1)),
    ];
    let port = prop_oneof![
        1 => Just(None),
        2 => (1..=u32::MAX).prop_map(Some),
        1 => Just(Some(u32::MAX)),
        1 => Just(Some(1)),
    ];
    (domain, port).prop_map(|(domain, port)| Endpoint { domain, port })
}

fn rule() -> impl Strategy<Value = Rule> {
    (action(), endpoint(), endpoint()).prop_map(|(action, src, dst)| Rule { action, src, dst })
}

/// Rules over a small universe, so random sends often match them.
fn small_rule() -> impl Strategy<Value = Rule> {
    let ep = (
        prop_oneof![Just(None), (0u16..4).prop_map(Some)],
        prop_oneof![Just(None), (1u32..4).prop_map(Some)],
    )
        .prop_map(|(domain, port)| Endpoint { domain, port });
    (action(), ep.clone(), ep).prop_map(|(action, src, dst)| Rule { action, src, dst })
}

fn small_addr() -> impl Strategy<Value = Addr> {
    (0u16..5, 0u32..5).prop_map(|(d, p)| Addr::new(d, p))
}

/// Whitespace that may separate tokens.
fn ws() -> impl Strategy<Value = String> {
    "[ \t]{0,3}"
}

/// A rule written with arbitrary spacing, leading zeros and an optional trailing comment.
fn spaced_text(rule: Rule) -> impl Strategy<Value = String> {
    (
        proptest::collection::vec(ws(), 9),
        0usize..3,
        prop_oneof![Just(String::new()), "#[ -~]{0,20}"],
    )
        .prop_map(move |(w, zeros, comment)| {
            let num = |x: Option<u32>| match x {
                Some(x) => format!("{}{x}", "0".repeat(zeros)),
                None => "*".to_string(),
            };
            // An address may follow the action directly: it starts with a digit or `*`.
            let gap = &w[8];
            format!(
                "{}{}{gap}{}{}:{}{}{}->{}{}{}:{}{}{}{comment}",
                w[0],
                rule.action,
                num(rule.src.domain.map(u32::from)),
                w[1],
                w[2],
                num(rule.src.port),
                w[3],
                w[4],
                num(rule.dst.domain.map(u32::from)),
                w[5],
                w[6],
                num(rule.dst.port),
                w[7],
            )
        })
}

// ---------------------------------------------------------------------------------------------
// Reference decision: the first rule whose four fields are each any or equal decides.

fn reference(rules: &[Rule], src: Addr, dst: Addr) -> (Option<usize>, bool) {
    fn dom(d: Option<DomId>, a: DomId) -> bool {
        d.is_none() || d == Some(a)
    }
    fn port(p: Option<u32>, a: u32) -> bool {
        p.is_none() || p == Some(a)
    }
    for (i, r) in rules.iter().enumerate() {
        if dom(r.src.domain, src.domain)
            && port(r.src.port, src.port)
            && dom(r.dst.domain, dst.domain)
            && port(r.dst.port, dst.port)
        {
            return (Some(i), r.action == Action::Accept);
        }
    }
    (None, true)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn rule_text_round_trip(r in rule()) {
        let text = r.to_string();
        prop_assert_eq!(text.parse::<Rule>(), Ok(r));
        prop_assert_eq!(parse_rules("t", &text), Ok(vec![r]));
    }

    #[test]
    fn spacing_and_comments_do_not_matter(
        (r, text) in rule().prop_flat_map(|r| (Just(r), spaced_text(r)))
    ) {
        prop_assert_eq!(text.parse::<Rule>(), Ok(r), "{:?}", text);
        prop_assert_eq!(parse_rules("t", &format!("\n{text}\n")), Ok(vec![r]));
    }

    #[test]
    fn table_rule_round_trip(r in rule()) {
        let raw = TablesRule::from(r);
        prop_assert_eq!(raw.src.pad, 0);
        prop_assert_eq!(raw.dst.pad, 0);
        prop_assert_eq!(Rule::try_from(raw), Ok(r));
    }

    #[test]
    fn rules_file_round_trip(rules in proptest::collection::vec(rule(), 0..40)) {
        let text = format_rules(&rules);
        prop_assert_eq!(parse_rules("acl.rules", &text), Ok(rules));
    }

    #[test]
    fn decide_matches_the_reference(
        rules in proptest::collection::vec(small_rule(), 0..24),
        probes in proptest::collection::vec((small_addr(), small_addr()), 32),
    ) {
        for (src, dst) in probes {
            let (rule, accepted) = reference(&rules, src, dst);
            prop_assert_eq!(decide(&rules, src, dst), Decision { rule, accepted });
            // The hypervisor's form decides the same.
            let raw_match = rules.iter().position(|r| {
                let t = TablesRule::from(r);
                (t.src.domain == DOMID_ANY || t.src.domain == src.domain)
                    && (t.src.port == 0 || t.src.port == src.port)
                    && (t.dst.domain == DOMID_ANY || t.dst.domain == dst.domain)
                    && (t.dst.port == 0 || t.dst.port == dst.port)
            });
            prop_assert_eq!(raw_match, rule);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Bad lines.

/// The one message `parse_rules` gives for a one-line file.
fn problem(line: &str) -> String {
    match parse_rules("acl.rules", line) {
        Ok(r) => panic!("{line:?} parsed as {r:?}"),
        Err(e) => {
            assert_eq!(e.problems.len(), 1, "{e}");
            e.to_string()
        }
    }
}

#[test]
fn every_kind_of_bad_line_has_its_message() {
    let cases = [
        (
            "allow 3:* -> 0:22",
            r#"acl.rules:1: unknown action "allow" (expected accept or reject)"#,
        ),
        (
            "Accept 3:* -> 0:22",
            r#"acl.rules:1: unknown action "Accept" (expected accept or reject)"#,
        ),
        (
            "3:* -> 0:22",
            "acl.rules:1: missing action: a rule starts with accept or reject",
        ),
        (
            "accept 3:* 0:22",
            r#"acl.rules:1: missing "->" between source and destination"#,
        ),
        (
            "accept 3:* -> 0:22 -> 1:1",
            r#"acl.rules:1: more than one "->""#,
        ),
        ("accept -> 0:22", "acl.rules:1: missing source (DOM:PORT)"),
        (
            "reject 3:* ->",
            "acl.rules:1: missing destination (DOM:PORT)",
        ),
        (
            "accept 3 -> 0:22",
            r#"acl.rules:1: source "3" is not DOM:PORT"#,
        ),
        (
            "accept 3:* -> 0:22:1",
            r#"acl.rules:1: destination "0:22:1" is not DOM:PORT"#,
        ),
        (
            "accept all 3:* -> 0:22",
            r#"acl.rules:1: unexpected "all" before the source"#,
        ),
        (
            "accept 3:* -> 0:22 now",
            r#"acl.rules:1: unexpected "now" after the destination"#,
        ),
        (
            "accept :22 -> 0:22",
            "acl.rules:1: missing domain in the source (write * for any domain)",
        ),
        (
            "accept 3:* -> 0:",
            "acl.rules:1: missing port in the destination (write * for any port)",
        ),
        (
            "accept dom3:* -> 0:22",
            r#"acl.rules:1: domain "dom3" is not a number (write * for any domain)"#,
        ),
        (
            "accept -3:* -> 0:22",
            r#"acl.rules:1: domain "-3" is not a number (write * for any domain)"#,
        ),
        (
            "accept 32752:* -> 0:22",
            r#"acl.rules:1: domain "32752" is out of range: domain ids are below 32752"#,
        ),
        (
            "accept 99999999:* -> 0:22",
            r#"acl.rules:1: domain "99999999" is out of range: domain ids are below 32752"#,
        ),
        (
            "reject 3:* -> 0:ssh",
            r#"acl.rules:1: port "ssh" is not a number (write * for any port)"#,
        ),
        (
            "reject 3:* -> 0:+22",
            r#"acl.rules:1: port "+22" is not a number (write * for any port)"#,
        ),
        (
            "reject 3:* -> 0:99999999999",
            r#"acl.rules:1: port "99999999999" is not a number below 2^32"#,
        ),
        (
            "reject 3:* -> 0:4294967296",
            r#"acl.rules:1: port "4294967296" is not a number below 2^32"#,
        ),
        (
            "reject 3:0 -> 0:22",
            "acl.rules:1: port 0 is not a port: write * for any port",
        ),
        (
            "reject 3:* -> 0:000",
            "acl.rules:1: port 0 is not a port: write * for any port",
        ),
    ];
    for (line, want) in cases {
        assert_eq!(problem(line), want, "for {line:?}");
    }
}

#[test]
fn every_bad_line_is_reported_with_its_line_number() {
    let text = "\
# the lab's rules
accept 1:* -> 0:22   # ssh from dom1

allow 3:* -> 0:22
reject 3:* -> 0:99999999999
  # indented comment
accept 3:* 0:22
reject *:* -> *:*
";
    let err = parse_rules("acl.rules", text).unwrap_err();
    assert_eq!(
        err.to_string(),
        "\
acl.rules:4: unknown action \"allow\" (expected accept or reject)
acl.rules:5: port \"99999999999\" is not a number below 2^32
acl.rules:7: missing \"->\" between source and destination"
    );
    assert_eq!(err.file, "acl.rules");
    assert_eq!(
        err.problems.iter().map(|p| p.line).collect::<Vec<_>>(),
        [4, 5, 7]
    );
    assert_eq!(
        err.problems[0].problem,
        LineProblem::Rule(RuleError::UnknownAction("allow".into()))
    );
}

#[test]
fn comments_blank_lines_and_spacing() {
    let text = "\r\n   \n# only a comment\n\taccept 3:*->0:22#ssh\r\n  reject   *  :  *   ->   *:*   \n#\n";
    let rules = parse_rules("f", text).unwrap();
    assert_eq!(
        rules,
        [
            Rule::new(
                Action::Accept,
                Endpoint::new(Some(3), None),
                Endpoint::new(Some(0), Some(22)),
            ),
            Rule::REJECT_ALL,
        ]
    );
    assert_eq!(rules[0].to_string(), "accept 3:* -> 0:22");
    assert_eq!(rules[1].to_string(), "reject *:* -> *:*");
    assert_eq!(parse_rules("f", ""), Ok(vec![]));
    assert_eq!(parse_rules("f", "# nothing\n\n"), Ok(vec![]));
    assert_eq!("".parse::<Rule>(), Err(RuleError::Empty));
    assert_eq!("  # no rule".parse::<Rule>(), Err(RuleError::Empty));
    assert_eq!(
        "reject 3:* -> 0:22 # why"
            .parse::<Rule>()
            .map(|r| r.to_string()),
        Ok("reject 3:* -> 0:22".to_string())
    );
    // Leading zeros are read as decimal and written without.
    assert_eq!(
        "accept 007:0022 -> 0:1"
            .parse::<Rule>()
            .map(|r| r.to_string()),
        Ok("accept 7:22 -> 0:1".to_string())
    );
}

#[test]
fn more_rules_than_the_table_holds() {
    let mut text = String::from("# header\n");
    for i in 0..1026u32 {
        text.push_str(&format!("accept 1:{} -> 0:22\n", i + 1));
    }
    let err = parse_rules("big.rules", &text).unwrap_err();
    assert_eq!(
        err.to_string(),
        "big.rules:1026: one rule too many: the ACL table holds at most 1024 rules"
    );
    // 1024 are fine, and format_rules writes them back.
    let ok: String = text.lines().take(1025).map(|l| format!("{l}\n")).collect();
    let rules = parse_rules("ok.rules", &ok).unwrap();
    assert_eq!(rules.len(), 1024);
    assert_eq!(parse_rules("ok.rules", &format_rules(&rules)), Ok(rules));
}

#[test]
fn table_rules_without_a_text_form_are_refused() {
    let good = TablesRule::from(Rule::REJECT_ALL);
    let mut r = good;
    r.accept = 2;
    assert_eq!(Rule::try_from(r), Err(TableRuleError::Accept(2)));
    let mut r = good;
    r.src.pad = 1;
    assert_eq!(Rule::try_from(r), Err(TableRuleError::Pad(Side::Source, 1)));
    let mut r = good;
    r.dst.pad = 0x10;
    let err = Rule::try_from(r).unwrap_err();
    assert_eq!(err.to_string(), "destination pad is 0x10, not 0");
    let mut r = good;
    r.dst.domain = 0x7ff0;
    let err = Rule::try_from(r).unwrap_err();
    assert_eq!(
        err,
        TableRuleError::ReservedDomain(Side::Destination, 0x7ff0)
    );
    assert_eq!(
        err.to_string(),
        "destination domain 0x7ff0 is reserved (not a domain id, nor 0x7ff4 for any)"
    );
    // The wildcards map to None.
    let raw = TablesRule {
        src: Addr::new(DOMID_ANY, 0),
        dst: Addr::new(0, 22),
        accept: 1,
    };
    assert_eq!(
        Rule::try_from(raw),
        Ok(Rule::new(
            Action::Accept,
            Endpoint::ANY,
            Endpoint::new(Some(0), Some(22))
        ))
    );
}

#[test]
fn rules_built_in_code_are_validated() {
    let zero_port = Rule::new(
        Action::Accept,
        Endpoint::new(Some(1), Some(0)),
        Endpoint::ANY,
    );
    assert_eq!(zero_port.validate(), Err(RuleError::PortZero));
    let reserved = Rule::new(
        Action::Accept,
        Endpoint::ANY,
        Endpoint::new(Some(DOMID_ANY), None),
    );
    assert_eq!(
        reserved.validate(),
        Err(RuleError::DomainRange("32756".into()))
    );
    assert_eq!(Rule::REJECT_ALL.validate(), Ok(()));
}

#[test]
fn decisions_by_example() {
    let rules = parse_rules(
        "t",
        "reject 3:* -> 0:22\naccept *:* -> 0:22\nreject *:* -> *:*\n",
    )
    .unwrap();
    let d = |s: (u16, u32), t: (u16, u32)| decide(&rules, Addr::new(s.0, s.1), Addr::new(t.0, t.1));
    assert_eq!(
        d((3, 9), (0, 22)),
        Decision {
            rule: Some(0),
            accepted: false
        }
    );
    assert_eq!(
        d((4, 9), (0, 22)),
        Decision {
            rule: Some(1),
            accepted: true
        }
    );
    assert_eq!(
        d((4, 9), (0, 23)),
        Decision {
            rule: Some(2),
            accepted: false
        }
    );
    assert_eq!(
        decide(&[], Addr::new(1, 1), Addr::new(2, 2)),
        Decision {
            rule: None,
            accepted: true
        }
    );
}
