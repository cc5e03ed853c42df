// SPDX-License-Identifier: MIT OR Apache-2.0
//! The ACL rule language (`libv4v::acl`), as an admin's rules file or one request's rule.
//!
//! Any text parses or is refused with line numbers; a rule that parses prints in its canonical
//! form, which parses back to the same rule, and a file of accepted rules survives
//! `format_rules` → `parse_rules` unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use v4v::acl::{Rule, RuleSpec, format_rules, parse_rule_specs, parse_rules};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(rule) = text.parse::<Rule>() {
        let printed = rule.to_string();
        let again: Rule = printed.parse().expect("a printed rule parses");
        assert_eq!(again, rule, "{printed}");
    }
    // Rules that name domains (dom0's v4vd reads these): the same round trip, and a rule without
    // names is the same rule either way.
    if let Ok(spec) = text.parse::<RuleSpec>() {
        let printed = spec.to_string();
        assert_eq!(printed.parse::<RuleSpec>().as_ref(), Ok(&spec), "{printed}");
        if let Ok(rule) = spec.to_rule() {
            assert_eq!(text.parse::<Rule>(), Ok(rule));
        }
    }
    if let Ok(specs) = parse_rule_specs("fuzz.rules", text) {
        assert!(specs.len() <= v4v::abi::MAX_RULES as usize);
    }
    match parse_rules("fuzz.rules", text) {
        Ok(rules) => {
            let printed = format_rules(&rules);
            let again = parse_rules("printed.rules", &printed).expect("printed rules parse");
            assert_eq!(again, rules, "{printed}");
        }
        Err(e) => {
            let lines = text.lines().count().max(1);
            let msg = e.to_string();
            assert!(!msg.is_empty());
            for l in &e.problems {
                assert!(l.line >= 1 && l.line <= lines, "line {} of {lines}", l.line);
            }
        }
    }
});
