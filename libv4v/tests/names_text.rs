// SPDX-License-Identifier: MIT OR Apache-2.0
//! Names in text: ACL rules that name domains (`RuleSpec`), their resolution into the table's
//! rules, the `ACL LIST` annotation, named addresses and the `RESOLVE`/`NAMEOF` lines.

use proptest::prelude::*;
use v4v::abi::Addr;
use v4v::acl::{self, Action, DOMID_UNBOUND, DomainSpec, EndpointSpec, Rule, RuleError, RuleSpec};
use v4v::client::proto::{self, Reply, Request, SockAddr};
use v4v::names::DomainRef;

#[test]
fn rules_name_domains_and_resolve_to_ids_or_to_nothing() {
    let s: RuleSpec = "reject name:guest1:* -> 0:22".parse().expect("parses");
    assert_eq!(s.src.domain, DomainSpec::Name("guest1".into()));
    assert_eq!(s.dst.domain, DomainSpec::Id(0));
    assert_eq!(s.to_string(), "reject name:guest1:* -> 0:22");
    assert_eq!(s.names().collect::<Vec<_>>(), ["guest1"]);
    // Spaces and comments as for any rule; the canonical form comes back.
    let t: RuleSpec = "accept   name:web:*->name:db:5432 # by name"
        .parse()
        .expect("parses");
    assert_eq!(t.to_string(), "accept name:web:* -> name:db:5432");
    // Resolved: the id now; unknown: the placeholder that matches no send.
    let r = s.resolve(&|n| (n == "guest1").then_some(7));
    assert_eq!(r.to_string(), "reject 7:* -> 0:22");
    assert!(r.matches(Addr::new(7, 1), Addr::new(0, 22)));
    let gone = s.resolve(&|_| None);
    assert_eq!(gone.src.domain, Some(DOMID_UNBOUND));
    for d in [0u16, 1, 7, 32751] {
        assert!(!gone.matches(Addr::new(d, 1), Addr::new(0, 22)));
    }
    gone.validate()
        .expect("the placeholder may be written to the table");
    // A table read back with a placeholder reads as `unbound` and parses again.
    assert_eq!(gone.to_string(), "reject unbound:* -> 0:22");
    assert_eq!(gone.to_string().parse::<Rule>(), Ok(gone));
    // Plain rules refuse names, with the reason.
    assert_eq!(
        "reject name:guest1:* -> 0:22".parse::<Rule>(),
        Err(RuleError::Named("guest1".into()))
    );
    assert_eq!(s.to_rule(), Err(RuleError::Named("guest1".into())));
    // Bad names are refused, naming the problem.
    for bad in [
        "name::* -> 0:1",
        "name:7:* -> 0:1",
        "name:a/b:* -> 0:1",
        "name:-x:* -> 0:1",
    ] {
        let e = format!("accept {bad}").parse::<RuleSpec>().unwrap_err();
        assert!(matches!(e, RuleError::BadName(_)), "{bad}: {e:?}");
    }
    // A rules file reports each bad name by line.
    let e = acl::parse_rule_specs(
        "f",
        "accept name:ok:* -> *:*\naccept name:no way:* -> *:*\n",
    )
    .unwrap_err();
    assert_eq!(e.problems.len(), 1);
    assert_eq!(e.problems[0].line, 2);
}

#[test]
fn acl_list_lines_carry_the_ids_names_stand_for() {
    let l = v4v::client::parse_listed("accept name:web:* -> name:db:80  # web=7 db=none")
        .expect("parses");
    assert_eq!(l.bindings, [("web".into(), Some(7)), ("db".into(), None)]);
    assert_eq!(l.rule.src.domain, Some(7));
    assert_eq!(l.rule.dst.domain, Some(DOMID_UNBOUND));
    let b = v4v::client::format_bindings(&l.bindings);
    assert_eq!(b, "# web=7 db=none");
    assert!(v4v::client::parse_listed("accept name:web:* -> *:* # web=x").is_err());
    let plain = v4v::client::parse_listed("accept 3:* -> *:*").expect("parses");
    assert!(plain.bindings.is_empty());
}

#[test]
fn addresses_and_requests_with_names() {
    assert_eq!(
        proto::parse_named("web:80"),
        Ok((DomainRef::Name("web".into()), 80))
    );
    assert_eq!(
        proto::parse_named("name:web:80"),
        Ok((DomainRef::Name("web".into()), 80))
    );
    assert_eq!(proto::parse_named("7:80"), Ok((DomainRef::Id(7), 80)));
    assert!(proto::parse_named("web").is_err());
    assert!(proto::parse_named("web:x").is_err());
    assert!(matches!(
        proto::parse_named("40000:1"),
        Err(proto::ParseError::ReservedDomain(40000))
    ));
    // An id is never looked up: no daemon is needed for it.
    let nowhere = std::path::Path::new("/nonexistent/v4vd.sock");
    assert_eq!(
        SockAddr::resolve_with(nowhere, "3:9").expect("an id"),
        SockAddr::new(3, 9)
    );
    assert!(matches!(
        SockAddr::resolve_with(nowhere, "web:9"),
        Err(v4v::client::Error::DaemonUnreachable { .. })
    ));
    // The request lines.
    assert_eq!(
        Request::parse("RESOLVE web"),
        Ok(Request::Resolve("web".into()))
    );
    assert_eq!(Request::parse("NAMEOF 7"), Ok(Request::NameOf(7)));
    for bad in [
        "RESOLVE",
        "RESOLVE 7",
        "RESOLVE a b",
        "RESOLVE -x",
        "NAMEOF web",
        "NAMEOF 99999",
    ] {
        assert!(Request::parse(bad).is_err(), "{bad}");
    }
    let req = Request::Resolve("web".into());
    assert_eq!(Reply::parse(&req, "OK 7"), Ok(Reply::Domain(7)));
    assert!(Reply::parse(&req, "OK web").is_err());
    let req = Request::NameOf(7);
    assert_eq!(Reply::parse(&req, "OK web"), Ok(Reply::Name("web".into())));
    assert!(Reply::parse(&req, "OK 7").is_err());
}

fn name() -> impl Strategy<Value = String> {
    "[A-Za-z_][A-Za-z0-9_.-]{0,20}"
}

fn domain() -> impl Strategy<Value = DomainSpec> {
    prop_oneof![
        Just(DomainSpec::Any),
        (0u16..32752).prop_map(DomainSpec::Id),
        name().prop_map(DomainSpec::Name),
    ]
}

fn endpoint() -> impl Strategy<Value = EndpointSpec> {
    (domain(), prop::option::of(1u32..)).prop_map(|(domain, port)| EndpointSpec { domain, port })
}

fn spec() -> impl Strategy<Value = RuleSpec> {
    (any::<bool>(), endpoint(), endpoint()).prop_map(|(a, src, dst)| RuleSpec {
        action: if a { Action::Accept } else { Action::Reject },
        src,
        dst,
    })
}

proptest! {
    /// Every rule, names or not, reads back as itself from its text.
    #[test]
    fn specs_round_trip(s in spec()) {
        prop_assert_eq!(s.to_string().parse::<RuleSpec>(), Ok(s.clone()));
    }

    /// Resolved with names bound, a rule decides as the rule with the ids written in; with a
    /// name unbound it matches no send from or to any real domain.
    #[test]
    fn resolution_is_substitution(s in spec(), bound in prop::collection::btree_map(name(), 0u16..32752, 0..4),
                                  src in (0u16..32752, 0u32..100), dst in (0u16..32752, 0u32..100)) {
        let lookup = |n: &str| bound.get(n).copied();
        let r = s.resolve(&lookup);
        let (sa, da) = (Addr::new(src.0, src.1), Addr::new(dst.0, dst.1));
        let unbound = s.names().any(|n| lookup(n).is_none());
        if unbound {
            prop_assert!(!r.matches(sa, da));
        } else {
            let text = s.to_string().replace("name:", "");
            let mut written = text.clone();
            for (n, d) in &bound {
                // Only whole names: replace "NAME:" at a domain position.
                written = written
                    .split(' ')
                    .map(|w| if w.starts_with(&format!("{n}:")) { w.replacen(n.as_str(), &d.to_string(), 1) } else { w.to_string() })
                    .collect::<Vec<_>>()
                    .join(" ");
            }
            let want: Rule = written.parse().expect("ids written in");
            prop_assert_eq!(r, want);
        }
        r.validate().expect("what resolution gives may be written");
    }

    /// Parsing arbitrary text never panics.
    #[test]
    fn garbage_never_panics(t in "\\PC{0,80}") {
        let _ = t.parse::<RuleSpec>();
        let _ = proto::parse_named(&t);
        let _ = v4v::client::parse_listed(&t);
    }
}

#[test]
fn the_example_rules_file_parses_with_its_names() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/acl.rules");
    let text = std::fs::read_to_string(path).expect("examples/acl.rules");
    let specs = acl::parse_rule_specs("examples/acl.rules", &text).expect("parses");
    assert!(specs.iter().any(|s| s.names().any(|n| n == "backup")));
}
