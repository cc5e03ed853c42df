// SPDX-License-Identifier: MIT OR Apache-2.0
//! `v4v::acl` against the hypervisor model: `replace_table` never opens a window, ends with exactly
//! the new table, restores the old one (or says where it left the table) when a call fails, and
//! refuses up front what it cannot do safely; reading the table copes with paging and change.
//!
//! The window check is exhaustive: rules use domains 0..=2 or any and ports 1..=2 or any, so the
//! 12 addresses of domains 0..=3 and ports 1..=3 (3 standing for every other domain and port)
//! cover every way a send can be decided. After every table edit that succeeds, a wrapper around
//! the model's dom0 reads the table back and checks each of the 144 (src, dst) pairs it accepts
//! is accepted by the old or the new table; and, when old and new fit side by side (no guard), that
//! each pair's decision is the old or the new table's.

use std::io::IoSlice;
use std::os::fd::BorrowedFd;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use proptest::prelude::*;
use v4v::abi::{
    Addr, Config, DOMID_ANY, DOMID_SELF, Info, MAX_RULES, RingDataEnt, SendAddr, TABLES_DEL_ALL,
    TablesRule,
};
use v4v::acl::{
    self, AclError, Action, Endpoint, NoRoom, Rule, TableRuleError, TableState, replace_table,
};
use v4v::hypervisor::TablesPage;
use v4v::shmem::RingMemory;
use v4v::{HvError, Hypervisor};
use v4v_sim::{Model, ModelDomain};

const MAX: usize = MAX_RULES as usize;
const GUARD: TablesRule = TablesRule {
    src: Addr::new(DOMID_ANY, 0),
    dst: Addr::new(DOMID_ANY, 0),
    accept: 0,
};

// ---------------------------------------------------------------------------------------------
// Reference semantics, independent of v4v::acl.

fn field(rule: Addr, a: Addr) -> bool {
    (rule.domain == DOMID_ANY || rule.domain == a.domain) && (rule.port == 0 || rule.port == a.port)
}

fn accepts(table: &[TablesRule], src: Addr, dst: Addr) -> bool {
    table
        .iter()
        .find(|r| field(r.src, src) && field(r.dst, dst))
        .is_none_or(|r| r.accept == 1)
}

/// Every (src, dst) pair that tells the small-universe tables apart.
fn probes() -> Vec<(Addr, Addr)> {
    let addrs: Vec<Addr> = (0..=3u16)
        .flat_map(|d| (1..=3u32).map(move |p| Addr::new(d, p)))
        .collect();
    addrs
        .iter()
        .flat_map(|s| addrs.iter().map(move |d| (*s, *d)))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The checking wrapper.

/// How the wrapper fails table edits: the `at`-th (0-based) edit, and every later one too when
/// `persistent`.
#[derive(Debug, Clone, Copy)]
struct Failure {
    at: usize,
    persistent: bool,
}

const INJECTED: HvError = HvError::OutOfMemory;

/// dom0 of a model, checking the table after every edit.
struct Checked {
    inner: ModelDomain,
    probes: Vec<(Addr, Addr)>,
    /// Per probe: accepted by the old, by the new table.
    old_acc: Vec<bool>,
    new_acc: Vec<bool>,
    /// Whether every decision must be the old or the new one (not just no window).
    exact: bool,
    edits: AtomicUsize,
    failure: Option<Failure>,
    violations: Mutex<Vec<String>>,
}

impl Checked {
    fn new(inner: ModelDomain, old: &[TablesRule], new: &[TablesRule]) -> Self {
        let probes = probes();
        let acc = |t: &[TablesRule]| probes.iter().map(|&(s, d)| accepts(t, s, d)).collect();
        Checked {
            inner,
            old_acc: acc(old),
            new_acc: acc(new),
            exact: old.len() + new.len() <= MAX || new.is_empty(),
            probes,
            edits: AtomicUsize::new(0),
            failure: None,
            violations: Mutex::new(Vec::new()),
        }
    }

    fn failing(mut self, failure: Failure) -> Self {
        self.failure = Some(failure);
        self
    }

    fn edits(&self) -> usize {
        self.edits.load(Ordering::Relaxed)
    }

    fn violations(&self) -> Vec<String> {
        self.violations
            .lock()
            .map(|v| v.clone())
            .unwrap_or_default()
    }

    /// Counts an edit; whether it is to fail.
    fn edit_fails(&self) -> bool {
        let n = self.edits.fetch_add(1, Ordering::Relaxed);
        self.failure
            .is_some_and(|f| n == f.at || (f.persistent && n > f.at))
    }

    fn check(&self, what: String) {
        let table = raw_table(&self.inner);
        for (i, &(s, d)) in self.probes.iter().enumerate() {
            let (old, new, now) = (self.old_acc[i], self.new_acc[i], accepts(&table, s, d));
            let wrong = if now {
                !old && !new
            } else {
                self.exact && old && new
            };
            if wrong {
                if let Ok(mut v) = self.violations.lock() {
                    v.push(format!(
                        "after {what}: {s:?} -> {d:?} accepted: {now}, by old: {old}, by new: \
                         {new}; table {table:?}"
                    ));
                }
                return;
            }
        }
    }
}

impl Hypervisor for Checked {
    fn alloc_ring_memory(&self, bytes: usize) -> Result<RingMemory, HvError> {
        self.inner.alloc_ring_memory(bytes)
    }
    fn register_ring(&self, mem: &RingMemory, offset: usize) -> Result<(), HvError> {
        self.inner.register_ring(mem, offset)
    }
    fn unregister_ring(&self, mem: &RingMemory, offset: usize) -> Result<(), HvError> {
        self.inner.unregister_ring(mem, offset)
    }
    fn sendv(&self, addr: &SendAddr, iov: &[IoSlice<'_>], ty: u32) -> Result<u32, HvError> {
        self.inner.sendv(addr, iov, ty)
    }
    fn notify(&self, entries: Option<&mut [RingDataEnt]>) -> Result<(), HvError> {
        self.inner.notify(entries)
    }
    fn info(&self) -> Result<Info, HvError> {
        self.inner.info()
    }
    fn config(&self, config: &Config) -> Result<(), HvError> {
        self.inner.config(config)
    }
    fn tables_add(&self, rule: &TablesRule, position: u32) -> Result<(), HvError> {
        if self.edit_fails() {
            return Err(INJECTED);
        }
        self.inner.tables_add(rule, position)?;
        self.check(format!("tables_add({rule:?}, {position})"));
        Ok(())
    }
    fn tables_del(&self, rule: Option<&TablesRule>, position: u32) -> Result<(), HvError> {
        if self.edit_fails() {
            return Err(INJECTED);
        }
        self.inner.tables_del(rule, position)?;
        self.check(format!("tables_del({rule:?}, {position})"));
        Ok(())
    }
    fn tables_list(&self, start: u32, max: u32) -> Result<TablesPage, HvError> {
        self.inner.tables_list(start, max)
    }
    fn event_fd(&self) -> BorrowedFd<'_> {
        self.inner.event_fd()
    }
    fn take_event(&self) -> Result<bool, HvError> {
        self.inner.take_event()
    }
}

fn raw_table(hv: &dyn Hypervisor) -> Vec<TablesRule> {
    let page = hv.tables_list(0, MAX_RULES).expect("tables_list");
    assert_eq!(page.rules.len(), page.total as usize);
    page.rules
}

/// A model whose table holds `old`, and its dom0.
fn model_with(old: &[TablesRule]) -> (Model, ModelDomain) {
    let model = Model::new();
    let dom0 = model.create_domain(0).expect("dom0");
    for r in old {
        dom0.tables_add(r, 0).expect("fill the old table");
    }
    (model, dom0)
}

fn raw(rules: &[Rule]) -> Vec<TablesRule> {
    rules.iter().map(TablesRule::from).collect()
}

/// Edits a replacement makes: see the module documentation of `v4v::acl`.
fn expected_edits(n: usize, m: usize, same: bool) -> usize {
    if same {
        0
    } else if m == 0 {
        1
    } else if n + m <= MAX {
        n + m
    } else {
        n + m + 2
    }
}

// ---------------------------------------------------------------------------------------------
// Strategies.

/// The small-universe rule numbered `code` (of 288): action, then source and destination, each
/// domain any, 0, 1 or 2 and port any, 1 or 2.
fn small_rule(code: u16) -> Rule {
    let ep = |c: u16| Endpoint {
        domain: [None, Some(0), Some(1), Some(2)][usize::from(c / 3)],
        port: [None, Some(1), Some(2)][usize::from(c % 3)],
    };
    let action = if code / 144 == 0 {
        Action::Accept
    } else {
        Action::Reject
    };
    Rule::new(action, ep(code / 12 % 12), ep(code % 12))
}

fn table(len: impl Into<proptest::collection::SizeRange>) -> impl Strategy<Value = Vec<Rule>> {
    // Numbers, not composed strategies: tables of 1024 rules are generated fast.
    proptest::collection::vec((0u16..288).prop_map(small_rule), len)
}

/// Old and new tables too long to sit side by side: the guarded path.
fn crowded() -> impl Strategy<Value = (Vec<Rule>, Vec<Rule>)> {
    (1usize..=200).prop_flat_map(|m| (table((MAX + 1 - m)..=MAX), table(m)))
}

/// Runs one replacement and checks everything a successful one promises.
fn replace_and_check(old: &[Rule], new: &[Rule]) -> Result<(), TestCaseError> {
    let (old_raw, new_raw) = (raw(old), raw(new));
    let (_model, dom0) = model_with(&old_raw);
    let hv = Checked::new(dom0, &old_raw, &new_raw);
    let result = replace_table(&hv, new);
    prop_assert_eq!(hv.violations(), Vec::<String>::new());
    prop_assert_eq!(result, Ok(()));
    prop_assert_eq!(acl::read_table(&hv), Ok(new.to_vec()));
    prop_assert_eq!(
        hv.edits(),
        expected_edits(old.len(), new.len(), old_raw == new_raw)
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn replace_never_accepts_what_neither_table_accepts(old in table(0..24), new in table(0..24)) {
        replace_and_check(&old, &new)?;
    }

    /// The first edit fails, once or for good: restored or untouched, and said so.
    #[test]
    fn a_failed_edit_is_undone(
        old in table(0..16),
        new in table(1..16),
        at_frac in 0.0f64..1.0,
        persistent in any::<bool>(),
    ) {
        let (old_raw, new_raw) = (raw(&old), raw(&new));
        prop_assume!(old_raw != new_raw);
        let edits = expected_edits(old.len(), new.len(), false);
        let at = ((edits as f64) * at_frac) as usize;
        let (_model, dom0) = model_with(&old_raw);
        let hv = Checked::new(dom0, &old_raw, &new_raw).failing(Failure { at, persistent });
        let err = replace_table(&hv, &new).unwrap_err();
        prop_assert_eq!(hv.violations(), Vec::<String>::new());
        check_failure(&err, &hv, &old_raw, persistent)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn replace_under_the_guard_when_both_do_not_fit((old, new) in crowded()) {
        replace_and_check(&old, &new)?;
    }

    #[test]
    fn replace_with_a_full_new_table(old in prop_oneof![table(0..4), table(MAX - 2..=MAX)], new in table(MAX)) {
        replace_and_check(&old, &new)?;
    }

    #[test]
    fn a_failed_edit_under_the_guard_is_undone(
        (old, new) in prop_oneof![crowded(), (table(MAX), table(MAX))],
        at_frac in 0.0f64..1.0,
        persistent in any::<bool>(),
    ) {
        let (old_raw, new_raw) = (raw(&old), raw(&new));
        prop_assume!(old_raw != new_raw);
        let edits = expected_edits(old.len(), new.len(), false);
        let at = ((edits as f64) * at_frac) as usize;
        let (_model, dom0) = model_with(&old_raw);
        let hv = Checked::new(dom0, &old_raw, &new_raw).failing(Failure { at, persistent });
        let err = replace_table(&hv, &new).unwrap_err();
        prop_assert_eq!(hv.violations(), Vec::<String>::new());
        check_failure(&err, &hv, &old_raw, persistent)?;
    }
}

/// The error of a failed replacement names the injected error and the table's real state.
fn check_failure(
    err: &AclError,
    hv: &Checked,
    old: &[TablesRule],
    persistent: bool,
) -> Result<(), TestCaseError> {
    let AclError::ReplaceFailed {
        source,
        state,
        restore_error,
    } = err
    else {
        return Err(TestCaseError::fail(format!("not ReplaceFailed: {err:?}")));
    };
    prop_assert_eq!(*source, INJECTED);
    let table = raw_table(&hv.inner);
    match state {
        TableState::Old => prop_assert_eq!(&table, old),
        TableState::FailClosed => {
            prop_assert_ne!(&table, old);
            prop_assert_eq!(table.first(), Some(&GUARD));
        }
        TableState::Partial => {
            prop_assert_ne!(&table, old);
            prop_assert_ne!(table.first(), Some(&GUARD));
        }
    }
    if persistent {
        // Restoring needed at least one edit, unless nothing had changed yet.
        prop_assert_eq!(restore_error.is_some(), *state != TableState::Old);
    } else {
        // A single failure: the restore succeeds.
        prop_assert_eq!(*state, TableState::Old);
        prop_assert_eq!(*restore_error, None);
        let text = err.to_string();
        prop_assert!(text.ends_with("the old table is back in place"), "{}", text);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Examples.

fn r(text: &str) -> Rule {
    text.parse().expect(text)
}

/// `count` distinct reject rules no earlier one covers (all fields concrete).
fn unremovable(count: usize, salt: u32) -> Vec<Rule> {
    (0..count)
        .map(|i| {
            let i = u32::try_from(i).expect("small");
            Rule::new(
                Action::Reject,
                Endpoint::new(Some(1), Some(1 + i)),
                Endpoint::new(Some(2), Some(1 + salt)),
            )
        })
        .collect()
}

#[test]
fn failure_messages_say_where_the_table_is() {
    let old = vec![r("reject 1:* -> 0:22")];
    let new = vec![r("accept 1:* -> 0:22"), r("reject *:* -> *:*")];
    // Fails at the third edit (deleting the old rule) and then for good: restoring re-adds
    // nothing (old is complete) and fails deleting the second new rule.
    let (old_raw, new_raw) = (raw(&old), raw(&new));
    let (_model, dom0) = model_with(&old_raw);
    let hv = Checked::new(dom0, &old_raw, &new_raw).failing(Failure {
        at: 2,
        persistent: true,
    });
    let err = replace_table(&hv, &new).unwrap_err();
    assert_eq!(err.table_state(), Some(TableState::Partial));
    assert_eq!(err.hv_error(), Some(INJECTED));
    assert_eq!(
        err.to_string(),
        "replacing the ACL table failed: hypervisor out of memory (ENOMEM); the table holds part \
         of the old and part of the new rules (it accepts no send that both refuse); replace it \
         again (restoring the old table failed too: hypervisor out of memory (ENOMEM))"
    );
    assert!(hv.violations().is_empty());

    // Guarded (1024 old rules with an accept rule to drop) failing at the second edit for good.
    let mut old = unremovable(MAX - 1, 1);
    old.push(r("accept *:* -> 0:22"));
    let new = vec![r("reject *:* -> *:*")];
    let (_model, dom0) = model_with(&raw(&old));
    let hv = Checked::new(dom0, &raw(&old), &raw(&new)).failing(Failure {
        at: 2,
        persistent: true,
    });
    let err = replace_table(&hv, &new).unwrap_err();
    assert_eq!(err.table_state(), Some(TableState::FailClosed));
    assert!(
        err.to_string().contains(
            "the table is fail-closed (rule 1 is reject *:* -> *:*, refusing every send)"
        ),
        "{err}"
    );
    assert!(hv.violations().is_empty());
}

#[test]
fn non_dom0_gets_the_permission_error_unchanged() {
    let model = Model::new();
    let dom0 = model.create_domain(0).expect("dom0");
    let dom1 = model.create_domain(1).expect("dom1");
    let rule = r("reject 1:* -> 0:22");
    acl::add(&dom0, &rule).expect("dom0 adds");
    let eperm = Err(AclError::Hypervisor(HvError::NotPermitted));
    assert_eq!(acl::read_table(&dom1), eperm.clone().map(|()| vec![]));
    assert_eq!(replace_table(&dom1, &[]), eperm);
    assert_eq!(replace_table(&dom1, &[Rule::REJECT_ALL]), eperm);
    assert_eq!(acl::add(&dom1, &rule), eperm);
    assert_eq!(acl::insert(&dom1, 1, &rule), eperm);
    assert_eq!(acl::delete_at(&dom1, 1), eperm);
    assert_eq!(acl::delete_rule(&dom1, &rule), eperm);
    assert_eq!(acl::flush(&dom1), eperm);
    let err = replace_table(&dom1, &[]).unwrap_err();
    assert_eq!(err.to_string(), HvError::NotPermitted.to_string());
    assert_eq!(err.hv_error(), Some(HvError::NotPermitted));
    assert_eq!(acl::read_table(&dom0), Ok(vec![rule]));
}

#[test]
fn refused_up_front_when_no_rule_can_make_room() {
    // The old table is full of reject rules none of which can go.
    let old = unremovable(MAX, 1);
    let new = vec![r("accept 1:* -> 0:22")];
    let (_model, dom0) = model_with(&raw(&old));
    let hv = Checked::new(dom0, &raw(&old), &raw(&new));
    let err = replace_table(&hv, &new).unwrap_err();
    assert_eq!(err, AclError::NoSafeRoom(NoRoom::OldTable));
    assert!(
        err.to_string().ends_with("; the table is unchanged"),
        "{err}"
    );
    assert_eq!(hv.edits(), 0);
    assert_eq!(raw_table(&hv.inner), raw(&old));

    // The new table is: 1024 reject rules none of which can wait, over a non-empty table.
    let old = vec![r("reject 3:* -> *:*")];
    let new = unremovable(MAX, 2);
    let (_model, dom0) = model_with(&raw(&old));
    let hv = Checked::new(dom0, &raw(&old), &raw(&new));
    assert_eq!(
        replace_table(&hv, &new),
        Err(AclError::NoSafeRoom(NoRoom::NewTable))
    );
    assert_eq!(hv.edits(), 0);
    assert_eq!(raw_table(&hv.inner), raw(&old));
    // Into an empty table it goes directly.
    acl::flush(&hv.inner).expect("flush");
    assert_eq!(replace_table(&hv.inner, &new), Ok(()));
    assert_eq!(acl::read_table(&hv.inner), Ok(new));
}

#[test]
fn a_full_table_swaps_through_its_removable_rules() {
    // Both full, and what makes room is a rule an earlier one covers, not an accept rule.
    let mut old = unremovable(MAX - 1, 1);
    old.insert(5, r("reject 1:* -> 2:2"));
    let mut new = unremovable(MAX - 1, 2);
    new.insert(0, r("reject 1:* -> *:*"));
    replace_and_check(&old, &new).expect("swap");
}

#[test]
fn invalid_requests_are_refused_up_front() {
    let (_model, dom0) = model_with(&raw(&[r("reject 1:* -> 0:22")]));
    let too_many = vec![Rule::REJECT_ALL; MAX + 1];
    assert_eq!(
        replace_table(&dom0, &too_many),
        Err(AclError::TooManyRules { count: MAX + 1 })
    );
    let bad = Rule::new(
        Action::Accept,
        Endpoint::new(Some(1), Some(0)),
        Endpoint::ANY,
    );
    let err = replace_table(&dom0, &[Rule::REJECT_ALL, bad]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "rule 2: port 0 is not a port: write * for any port"
    );
    assert!(matches!(err, AclError::InvalidRule { index: 2, .. }));
    assert!(acl::add(&dom0, &bad).is_err());
    assert_eq!(acl::delete_at(&dom0, 0), Err(AclError::BadPosition(0)));
    assert_eq!(
        acl::delete_at(&dom0, TABLES_DEL_ALL),
        Err(AclError::BadPosition(TABLES_DEL_ALL))
    );
    assert_eq!(
        acl::insert(&dom0, 0, &Rule::REJECT_ALL),
        Err(AclError::BadPosition(0))
    );
    assert_eq!(acl::read_table(&dom0), Ok(vec![r("reject 1:* -> 0:22")]));
}

#[test]
fn thin_wrappers() {
    let (_model, dom0) = model_with(&[]);
    let a = r("accept 1:* -> 0:22");
    let b = r("reject 1:* -> *:*");
    let c = r("reject *:* -> *:*");
    acl::add(&dom0, &b).expect("add");
    acl::insert(&dom0, 1, &a).expect("insert");
    acl::add(&dom0, &c).expect("add");
    assert_eq!(acl::read_table(&dom0), Ok(vec![a, b, c]));
    acl::delete_at(&dom0, 2).expect("delete_at");
    assert_eq!(acl::read_table(&dom0), Ok(vec![a, c]));
    assert_eq!(
        acl::delete_at(&dom0, 3),
        Err(AclError::Hypervisor(HvError::NotFound))
    );
    acl::delete_rule(&dom0, &c).expect("delete_rule");
    assert_eq!(
        acl::delete_rule(&dom0, &c),
        Err(AclError::Hypervisor(HvError::NotFound))
    );
    acl::flush(&dom0).expect("flush");
    assert_eq!(acl::read_table(&dom0), Ok(vec![]));
    // Replacing with the same table makes no edit; with nothing, one flush.
    acl::add(&dom0, &a).expect("add");
    let hv = Checked::new(dom0, &raw(&[a]), &raw(&[a]));
    assert_eq!(replace_table(&hv, &[a]), Ok(()));
    assert_eq!(hv.edits(), 0);
    assert_eq!(replace_table(&hv, &[]), Ok(()));
    assert_eq!(hv.edits(), 1);
    assert_eq!(acl::read_table(&hv), Ok(vec![]));
}

#[test]
fn rules_without_a_text_form_are_reported_and_replaceable() {
    let odd = TablesRule {
        src: Addr::new(DOMID_SELF, 0),
        dst: Addr::new(0, 22),
        accept: 0,
    };
    let (_model, dom0) = model_with(&[raw(&[Rule::REJECT_ALL])[0], odd]);
    let err = acl::read_table(&dom0).unwrap_err();
    assert_eq!(
        err,
        AclError::TableRule {
            position: 2,
            source: TableRuleError::ReservedDomain(acl::Side::Source, DOMID_SELF),
        }
    );
    assert_eq!(
        err.to_string(),
        "ACL table rule 2: source domain 0x7ff0 is reserved (not a domain id, nor 0x7ff4 for any)"
    );
    let new = vec![r("accept 1:* -> 0:22")];
    assert_eq!(replace_table(&dom0, &new), Ok(()));
    assert_eq!(acl::read_table(&dom0), Ok(new));
}

/// dom0 whose `tables_list` returns short pages, and runs `between` (once per call, with the call
/// number) before each one after the first.
struct Paged<F: Fn(&ModelDomain, usize) + Send + Sync> {
    inner: ModelDomain,
    page: u32,
    calls: AtomicUsize,
    between: F,
}

impl<F: Fn(&ModelDomain, usize) + Send + Sync> Hypervisor for Paged<F> {
    fn alloc_ring_memory(&self, bytes: usize) -> Result<RingMemory, HvError> {
        self.inner.alloc_ring_memory(bytes)
    }
    fn register_ring(&self, mem: &RingMemory, offset: usize) -> Result<(), HvError> {
        self.inner.register_ring(mem, offset)
    }
    fn unregister_ring(&self, mem: &RingMemory, offset: usize) -> Result<(), HvError> {
        self.inner.unregister_ring(mem, offset)
    }
    fn sendv(&self, addr: &SendAddr, iov: &[IoSlice<'_>], ty: u32) -> Result<u32, HvError> {
        self.inner.sendv(addr, iov, ty)
    }
    fn notify(&self, entries: Option<&mut [RingDataEnt]>) -> Result<(), HvError> {
        self.inner.notify(entries)
    }
    fn info(&self) -> Result<Info, HvError> {
        self.inner.info()
    }
    fn config(&self, config: &Config) -> Result<(), HvError> {
        self.inner.config(config)
    }
    fn tables_add(&self, rule: &TablesRule, position: u32) -> Result<(), HvError> {
        self.inner.tables_add(rule, position)
    }
    fn tables_del(&self, rule: Option<&TablesRule>, position: u32) -> Result<(), HvError> {
        self.inner.tables_del(rule, position)
    }
    fn tables_list(&self, start: u32, max: u32) -> Result<TablesPage, HvError> {
        let n = self.calls.fetch_add(1, Ordering::Relaxed);
        if n > 0 {
            (self.between)(&self.inner, n);
        }
        self.inner.tables_list(start, max.min(self.page))
    }
    fn event_fd(&self) -> BorrowedFd<'_> {
        self.inner.event_fd()
    }
    fn take_event(&self) -> Result<bool, HvError> {
        self.inner.take_event()
    }
}

#[test]
fn reading_pages_and_rereads_a_table_that_changes() {
    let rules: Vec<Rule> = (1..=23u32)
        .map(|p| {
            Rule::new(
                Action::Accept,
                Endpoint::new(Some(1), Some(p)),
                Endpoint::ANY,
            )
        })
        .collect();
    let extra = r("reject *:* -> *:*");

    // Short pages, no change.
    let (_model, dom0) = model_with(&raw(&rules));
    let hv = Paged {
        inner: dom0,
        page: 5,
        calls: AtomicUsize::new(0),
        between: |_: &ModelDomain, _| {},
    };
    assert_eq!(acl::read_table(&hv), Ok(rules.clone()));
    assert_eq!(hv.calls.load(Ordering::Relaxed), 5);

    // The table grows after the first page, then shrinks during the second read: read again
    // each time, and the result is the table as it finally is.
    let (_model, dom0) = model_with(&raw(&rules));
    let hv = Paged {
        inner: dom0,
        page: 5,
        calls: AtomicUsize::new(0),
        between: |d: &ModelDomain, n| match n {
            1 => d.tables_add(&TablesRule::from(extra), 0).expect("grow"),
            4 => d.tables_del(None, 1).expect("shrink"),
            _ => {}
        },
    };
    let mut want = rules.clone();
    want.push(extra);
    want.remove(0);
    assert_eq!(acl::read_table(&hv), Ok(want));

    // A table that never stops changing is an error, not an endless loop.
    let (_model, dom0) = model_with(&raw(&rules));
    let hv = Paged {
        inner: dom0,
        page: 5,
        calls: AtomicUsize::new(0),
        between: |d: &ModelDomain, n| {
            if n % 2 == 1 {
                d.tables_add(&TablesRule::from(extra), 0).expect("grow");
            } else {
                d.tables_del(None, 1).expect("shrink");
            }
        },
    };
    assert_eq!(
        acl::read_table(&hv),
        Err(AclError::Unstable { attempts: 4 })
    );

    // Replacing through short pages works too.
    let (_model, dom0) = model_with(&raw(&rules));
    let hv = Paged {
        inner: dom0,
        page: 5,
        calls: AtomicUsize::new(0),
        between: |_: &ModelDomain, _| {},
    };
    let new = vec![extra];
    assert_eq!(replace_table(&hv, &new), Ok(()));
    assert_eq!(acl::read_table(&hv), Ok(new));
}
