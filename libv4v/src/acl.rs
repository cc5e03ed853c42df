// SPDX-License-Identifier: MIT OR Apache-2.0
//! The ACL table: its text rule language, its decisions, and reading and replacing the
//! hypervisor's table without ever accepting a send that neither table accepts.
//!
//! # The table
//!
//! The hypervisor holds an ordered table of at most [`abi::MAX_RULES`] rules
//! `{src, dst, accept}`. Every send is decided by the first rule that matches it; a send no rule
//! matches is accepted. A rule's domain matches when it is equal or [`abi::DOMID_ANY`], its port
//! when it is equal or [`abi::PORT_ANY`] (0). Only dom0 may read or edit the table.
//!
//! # The text form
//!
//! One rule a line: `accept|reject SRC -> DST`, where `SRC` and `DST` are `DOM:PORT` and either
//! part may be `*` (any). Whitespace around the tokens is free (`3:*->0:22` is fine), and `#`
//! starts a comment that runs to the end of the line. Domains are decimal ids below
//! [`abi::DOMID_FIRST_RESERVED`]; ports are decimal numbers from 1 to 2^32 - 1. **Port `0` is
//! refused**: the hypervisor reads a rule's port 0 as "any port", so `3:0` would silently mean
//! `3:*` to someone who meant "source port 0" (a send may use source port 0); the error says to
//! write `*`. [`Rule`] implements [`FromStr`] and [`Display`] (canonical form
//! `accept 3:* -> 0:22`), and `rule.to_string().parse() == Ok(rule)` for every valid rule.
//! [`parse_rules`] reads a whole rules file and reports every bad line as `FILE:LINE: problem`;
//! [`format_rules`] writes one back.
//!
//! # Replacing the table, fail-closed
//!
//! The hypervisor edits the table one rule at a time, so a replacement goes through intermediate
//! tables, and sends are decided by them while it runs. [`replace_table`] chooses the steps so that
//! **every intermediate table accepts a send only if the old or the new table accepts it**. With
//! `O` the old table (`n` rules) and `N` the new one (`m` rules):
//!
//! - **`N` empty**: one `tables_del(ALL)`. (`N` accepts everything, and the flush is one call.)
//! - **Direct path, `n + m <= 1024`**: insert `N[0..m]` at positions `1..=m`, in order, then
//!   delete the old rules from the bottom (position `m + n`, then `m + n - 1`, ...). Every
//!   intermediate table is `P ++ O` with `P` a prefix of `N`, or `N ++ Q` with `Q` a prefix of `O`.
//!   For `P ++ O`: if a rule of `P` matches, the first one is also `N`'s first match (P is its
//!   prefix), so the decision is `N`'s; otherwise `O` decides, as it always did. For `N ++ Q`: if `N`
//!   matches, `N` decides; otherwise `N`'s decision is "accept" (no match), and `Q` either finds
//!   `O`'s first match (Q is `O`'s prefix), so decides as `O` does, or finds none and accepts, as `N`
//!   does. So every decision of every intermediate table is exactly the old one's or the new one's.
//!   (Deleting them from the top would be safe too, but `N ++ suffix of O` can refuse a send both
//!   tables accept: a later reject rule of `O` takes over from a deleted accept rule.)
//! - **Guarded path, `n + m > 1024`**: insert the guard `reject *:* -> *:*` at position 1 (every
//!   send refused: the table is fail-closed), delete the old rules, append the new ones after the
//!   guard, delete the guard. While the guard is in place sends get `EACCES`, briefly, even ones
//!   both tables accept; that is the price of a swap that does not fit.
//!
//!   The guard needs a free slot next to `O` and the new rules next to the guard: when `n == 1024`
//!   one old rule is deleted first, and when `m == 1024` one new rule is inserted last, after the
//!   guard is gone. That rule must be *removable*: an accept rule (deleting an accept rule only
//!   sends what it decided on to later rules, so it never accepts more) or a rule an earlier rule
//!   covers (it never decides anything). When the table (or the new table) has 1024 rules and none
//!   is removable, [`replace_table`] refuses up front ([`AclError::NoSafeRoom`]), table untouched.
//!
//! **Failures.** A hypervisor call that fails is taken to have changed nothing (true of Xen and of
//! the model: every check comes before the change). When one fails midway, [`replace_table`] puts
//! the old table back by the same kind of steps (re-appending old rules under a complete `N`, then
//! deleting new rules from the bottom; or, under the guard, deleting everything but the guard,
//! re-appending the old rules and deleting the guard) and returns
//! [`AclError::ReplaceFailed`] saying which [`TableState`] the table is left in: the old table, a
//! fail-closed table (guard first), or, if restoring failed too, a mix that still accepts nothing
//! both tables refuse.
//!
//! The algorithm assumes it is the table's only editor while it runs (v4vd is dom0's only one);
//! the hypervisor has no compare-and-swap for the table, and a concurrent edit would shift the
//! positions it deletes.

use std::fmt::{self, Display};
use std::str::FromStr;

use thiserror::Error;

use crate::abi::{
    self, Addr, DOMID_ANY, DOMID_FIRST_RESERVED, DomId, MAX_RULES, PORT_ANY, TablesRule,
};
use crate::hypervisor::{HvError, Hypervisor};

/// The most rules a table holds, as a length.
const MAX: usize = MAX_RULES as usize;

/// What a rule does to the sends it decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Accept,
    Reject,
}

impl Action {
    /// Whether the rule accepts.
    pub fn is_accept(self) -> bool {
        self == Action::Accept
    }
}

impl Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Accept => "accept",
            Action::Reject => "reject",
        })
    }
}

impl FromStr for Action {
    type Err = RuleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "accept" => Ok(Action::Accept),
            "reject" => Ok(Action::Reject),
            "" => Err(RuleError::MissingAction),
            other => Err(RuleError::UnknownAction(other.to_string())),
        }
    }
}

/// Which address of a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    Source,
    Destination,
}

impl Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Source => "source",
            Side::Destination => "destination",
        })
    }
}

/// One address of a rule: `None` is the wildcard (`*`).
///
/// A valid endpoint's domain is below [`abi::DOMID_FIRST_RESERVED`] and its port is not 0 (see
/// [`Endpoint::validate`]); the parser only makes valid ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Endpoint {
    pub domain: Option<DomId>,
    pub port: Option<u32>,
}

impl Endpoint {
    /// `*:*`.
    pub const ANY: Endpoint = Endpoint {
        domain: None,
        port: None,
    };

    /// An endpoint; `None` for any.
    pub const fn new(domain: Option<DomId>, port: Option<u32>) -> Self {
        Endpoint { domain, port }
    }

    /// Whether `addr` matches, as the hypervisor decides it (a domain of `DOMID_ANY` and a port of
    /// 0 are wildcards too, should an invalid endpoint hold them).
    pub fn matches(&self, addr: Addr) -> bool {
        field_matches(self.to_addr(), addr)
    }

    /// Checks the domain and port are ones the text form can express.
    pub fn validate(&self) -> Result<(), RuleError> {
        if let Some(d) = self.domain
            && d >= DOMID_FIRST_RESERVED
            && d != DOMID_UNBOUND
        {
            return Err(RuleError::DomainRange(d.to_string()));
        }
        if self.port == Some(PORT_ANY) {
            return Err(RuleError::PortZero);
        }
        Ok(())
    }

    fn to_addr(self) -> Addr {
        Addr::new(
            self.domain.unwrap_or(DOMID_ANY),
            self.port.unwrap_or(PORT_ANY),
        )
    }

    fn try_from_addr(side: Side, addr: Addr) -> Result<Self, TableRuleError> {
        if addr.pad != 0 {
            return Err(TableRuleError::Pad(side, addr.pad));
        }
        let domain = match addr.domain {
            DOMID_ANY => None,
            d if d < DOMID_FIRST_RESERVED || d == DOMID_UNBOUND => Some(d),
            d => return Err(TableRuleError::ReservedDomain(side, d)),
        };
        let port = (addr.port != PORT_ANY).then_some(addr.port);
        Ok(Endpoint { domain, port })
    }

    fn parse_side(side: Side, text: &str) -> Result<Self, RuleError> {
        let spec = EndpointSpec::parse_side(side, text)?;
        match spec.domain {
            DomainSpec::Any => Ok(Endpoint::new(None, spec.port)),
            DomainSpec::Id(d) => Ok(Endpoint::new(Some(d), spec.port)),
            DomainSpec::Name(n) => Err(RuleError::Named(n)),
        }
    }
}

impl EndpointSpec {
    fn parse_side(side: Side, text: &str) -> Result<Self, RuleError> {
        let not_endpoint = || RuleError::NotEndpoint {
            side,
            text: text.to_string(),
        };
        // `name:NAME:PORT`: the prefix is part of the domain.
        let (named, text) = match text.strip_prefix("name:") {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let (dom, port) = text.split_once(':').ok_or_else(not_endpoint)?;
        if port.contains(':') {
            return Err(not_endpoint());
        }
        let (dom, port) = (dom.trim(), port.trim());
        if let Some((before, _)) = dom.rsplit_once(char::is_whitespace) {
            return Err(RuleError::Unexpected {
                text: before.trim().to_string(),
                place: "before",
                side,
            });
        }
        if let Some((_, after)) = port.split_once(char::is_whitespace) {
            return Err(RuleError::Unexpected {
                text: after.trim().to_string(),
                place: "after",
                side,
            });
        }
        if dom.is_empty() && !named {
            return Err(RuleError::MissingDomain(side));
        }
        if port.is_empty() {
            return Err(RuleError::MissingPort(side));
        }
        let domain = if named {
            crate::names::validate(dom).map_err(RuleError::BadName)?;
            DomainSpec::Name(dom.to_string())
        } else {
            match parse_domain(dom)? {
                None => DomainSpec::Any,
                Some(d) => DomainSpec::Id(d),
            }
        };
        Ok(EndpointSpec {
            domain,
            port: parse_port(port)?,
        })
    }
}

/// Parses a domain: `*` or a decimal id below `DOMID_FIRST_RESERVED`.
fn parse_domain(text: &str) -> Result<Option<DomId>, RuleError> {
    if text == "*" {
        return Ok(None);
    }
    if text == "unbound" {
        // What `ACL LIST` shows for a name no domain had when the table was written.
        return Ok(Some(DOMID_UNBOUND));
    }
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(RuleError::BadDomain(text.to_string()));
    }
    match significant(text).parse::<DomId>() {
        Ok(d) if d < DOMID_FIRST_RESERVED => Ok(Some(d)),
        _ => Err(RuleError::DomainRange(text.to_string())),
    }
}

/// A non-empty string of decimal digits without its leading zeros (but one `0` for zero), so that
/// the number's own size decides whether it is in range.
fn significant(digits: &str) -> &str {
    let rest = digits.trim_start_matches('0');
    if rest.is_empty() && !digits.is_empty() {
        "0"
    } else {
        rest
    }
}

/// Parses a port: `*` or a decimal number from 1 to 2^32 - 1.
fn parse_port(text: &str) -> Result<Option<u32>, RuleError> {
    if text == "*" {
        return Ok(None);
    }
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(RuleError::BadPort(text.to_string()));
    }
    match significant(text).parse::<u32>() {
        Ok(PORT_ANY) => Err(RuleError::PortZero),
        Ok(p) => Ok(Some(p)),
        Err(_) => Err(RuleError::PortRange(text.to_string())),
    }
}

impl Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.domain {
            Some(DOMID_UNBOUND) => f.write_str("unbound:")?,
            Some(d) => write!(f, "{d}:")?,
            None => f.write_str("*:")?,
        }
        match self.port {
            Some(p) => write!(f, "{p}"),
            None => f.write_str("*"),
        }
    }
}

impl FromStr for Endpoint {
    type Err = RuleError;

    /// Parses `DOM:PORT` (as a source, for error messages).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() {
            return Err(RuleError::MissingEndpoint(Side::Source));
        }
        Endpoint::parse_side(Side::Source, s)
    }
}

/// The domain id a rule holds in the hypervisor's table for a name that has no domain now
/// (`DOMID_IDLE`): no send comes from it or goes to it, so the rule matches nothing and keeps
/// its place. Shown as `unbound`.
pub const DOMID_UNBOUND: DomId = 0x7fff;

/// A rule's domain as the admin wrote it: `*`, an id, or a name (`name:web`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DomainSpec {
    Any,
    Id(DomId),
    Name(String),
}

/// A rule's address as the admin wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EndpointSpec {
    pub domain: DomainSpec,
    pub port: Option<u32>,
}

impl EndpointSpec {
    fn resolve(&self, lookup: &dyn Fn(&str) -> Option<DomId>) -> Endpoint {
        let domain = match &self.domain {
            DomainSpec::Any => None,
            DomainSpec::Id(d) => Some(*d),
            DomainSpec::Name(n) => Some(lookup(n).unwrap_or(DOMID_UNBOUND)),
        };
        Endpoint::new(domain, self.port)
    }
}

impl From<Endpoint> for EndpointSpec {
    fn from(e: Endpoint) -> Self {
        EndpointSpec {
            domain: match e.domain {
                None => DomainSpec::Any,
                Some(d) => DomainSpec::Id(d),
            },
            port: e.port,
        }
    }
}

impl Display for EndpointSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.domain {
            DomainSpec::Name(n) => write!(f, "name:{n}:")?,
            DomainSpec::Id(d) => write!(f, "{d}:")?,
            DomainSpec::Any => f.write_str("*:")?,
        }
        match self.port {
            Some(p) => write!(f, "{p}"),
            None => f.write_str("*"),
        }
    }
}

/// A rule as the admin wrote it, domains possibly by name (`accept name:web:* -> 0:80`). The
/// hypervisor's table holds its [`RuleSpec::resolve`]d form: names as the domain ids they stand
/// for now, and [`DOMID_UNBOUND`] for a name no domain has, so the rule matches nothing.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RuleSpec {
    pub action: Action,
    pub src: EndpointSpec,
    pub dst: EndpointSpec,
}

impl RuleSpec {
    /// The names the rule uses, source first.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        [&self.src.domain, &self.dst.domain]
            .into_iter()
            .filter_map(|d| match d {
                DomainSpec::Name(n) => Some(n.as_str()),
                _ => None,
            })
    }

    /// The rule for the hypervisor's table, names looked up with `lookup`.
    pub fn resolve(&self, lookup: &dyn Fn(&str) -> Option<DomId>) -> Rule {
        Rule {
            action: self.action,
            src: self.src.resolve(lookup),
            dst: self.dst.resolve(lookup),
        }
    }

    /// The rule itself when it names no domain.
    pub fn to_rule(&self) -> Result<Rule, RuleError> {
        match self.names().next() {
            Some(n) => Err(RuleError::Named(n.to_string())),
            None => Ok(self.resolve(&|_| None)),
        }
    }
}

impl From<Rule> for RuleSpec {
    fn from(r: Rule) -> Self {
        RuleSpec {
            action: r.action,
            src: r.src.into(),
            dst: r.dst.into(),
        }
    }
}

impl Display for RuleSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} -> {}", self.action, self.src, self.dst)
    }
}

impl FromStr for RuleSpec {
    type Err = RuleError;

    /// Parses one rule that may name domains; a trailing `# comment` is allowed.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_line_spec(s)?.ok_or(RuleError::Empty)
    }
}

/// One ACL rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rule {
    pub action: Action,
    pub src: Endpoint,
    pub dst: Endpoint,
}

impl Rule {
    /// `reject *:* -> *:*`: refuses every send. Last in a table, it makes the table default-deny;
    /// first, it is [`replace_table`]'s guard.
    pub const REJECT_ALL: Rule = Rule {
        action: Action::Reject,
        src: Endpoint::ANY,
        dst: Endpoint::ANY,
    };

    /// A rule.
    pub const fn new(action: Action, src: Endpoint, dst: Endpoint) -> Self {
        Rule { action, src, dst }
    }

    /// Whether the rule matches a send from `src` to `dst`.
    pub fn matches(&self, src: Addr, dst: Addr) -> bool {
        self.src.matches(src) && self.dst.matches(dst)
    }

    /// Checks both endpoints (see [`Endpoint::validate`]).
    pub fn validate(&self) -> Result<(), RuleError> {
        self.src.validate()?;
        self.dst.validate()
    }
}

impl Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} -> {}", self.action, self.src, self.dst)
    }
}

impl FromStr for Rule {
    type Err = RuleError;

    /// Parses one rule; a trailing `# comment` is allowed, nothing else may follow.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_line(s)?.ok_or(RuleError::Empty)
    }
}

impl From<Rule> for TablesRule {
    fn from(rule: Rule) -> Self {
        TablesRule {
            src: rule.src.to_addr(),
            dst: rule.dst.to_addr(),
            accept: u32::from(rule.action.is_accept()),
        }
    }
}

impl From<&Rule> for TablesRule {
    fn from(rule: &Rule) -> Self {
        TablesRule::from(*rule)
    }
}

impl TryFrom<TablesRule> for Rule {
    type Error = TableRuleError;

    fn try_from(raw: TablesRule) -> Result<Self, Self::Error> {
        let action = match raw.accept {
            0 => Action::Reject,
            1 => Action::Accept,
            other => return Err(TableRuleError::Accept(other)),
        };
        Ok(Rule {
            action,
            src: Endpoint::try_from_addr(Side::Source, raw.src)?,
            dst: Endpoint::try_from_addr(Side::Destination, raw.dst)?,
        })
    }
}

/// Whether a rule's address `rule` matches `addr`, the hypervisor's way: each field equal, or the
/// wildcard. With `addr` itself a rule's address: whether every address it matches, `rule`
/// matches too.
fn field_matches(rule: Addr, addr: Addr) -> bool {
    (rule.domain == DOMID_ANY || rule.domain == addr.domain)
        && (rule.port == PORT_ANY || rule.port == addr.port)
}

/// What is wrong with a rule's text (or with a [`Rule`] built in code, for the last few).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RuleError {
    #[error("empty rule")]
    Empty,
    #[error("missing action: a rule starts with accept or reject")]
    MissingAction,
    #[error("unknown action \"{0}\" (expected accept or reject)")]
    UnknownAction(String),
    #[error("missing \"->\" between source and destination")]
    MissingArrow,
    #[error("more than one \"->\"")]
    ExtraArrow,
    #[error("missing {0} (DOM:PORT)")]
    MissingEndpoint(Side),
    #[error("{side} \"{text}\" is not DOM:PORT")]
    NotEndpoint { side: Side, text: String },
    #[error("unexpected \"{text}\" {place} the {side}")]
    Unexpected {
        text: String,
        place: &'static str,
        side: Side,
    },
    #[error("missing domain in the {0} (write * for any domain)")]
    MissingDomain(Side),
    #[error("missing port in the {0} (write * for any port)")]
    MissingPort(Side),
    #[error("domain \"{0}\" is not a number (write * for any domain)")]
    BadDomain(String),
    #[error("domain \"{0}\" is out of range: domain ids are below {DOMID_FIRST_RESERVED}")]
    DomainRange(String),
    #[error("port \"{0}\" is not a number (write * for any port)")]
    BadPort(String),
    #[error("port \"{0}\" is not a number below 2^32")]
    PortRange(String),
    #[error("port 0 is not a port: write * for any port")]
    PortZero,
    #[error("{0}")]
    BadName(crate::names::NameError),
    #[error(
        "domain name:{0} here: names in rules are resolved by dom0's v4vd (v4v-cli acl, its rules file)"
    )]
    Named(String),
}

/// Why a raw table rule has no [`Rule`] form. The hypervisor refuses the first two; the third it
/// stores, but such a rule can never match a send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum TableRuleError {
    #[error("{0} pad is {1:#x}, not 0")]
    Pad(Side, u16),
    #[error("accept is {0}, not 0 or 1")]
    Accept(u32),
    #[error("{0} domain {1:#x} is reserved (not a domain id, nor {DOMID_ANY:#x} for any)")]
    ReservedDomain(Side, DomId),
}

/// Parses one line of a rules file: `None` for a blank or comment-only line.
fn parse_line(line: &str) -> Result<Option<Rule>, RuleError> {
    parse_line_spec(line)?.map(|s| s.to_rule()).transpose()
}

/// Parses one line of a rules file that may name domains.
fn parse_line_spec(line: &str) -> Result<Option<RuleSpec>, RuleError> {
    let text = line.split_once('#').map_or(line, |(rule, _)| rule).trim();
    if text.is_empty() {
        return Ok(None);
    }
    // The action runs to the first space or character that can start an address.
    let word_end = text
        .find(|c: char| c.is_whitespace() || c.is_ascii_digit() || "*:-".contains(c))
        .unwrap_or(text.len());
    let (word, rest) = text.split_at(word_end);
    let action: Action = word.parse()?;
    let (src, dst) = rest.split_once("->").ok_or(RuleError::MissingArrow)?;
    if dst.contains("->") {
        return Err(RuleError::ExtraArrow);
    }
    let endpoint = |side, text: &str| {
        let text = text.trim();
        if text.is_empty() {
            Err(RuleError::MissingEndpoint(side))
        } else {
            EndpointSpec::parse_side(side, text)
        }
    };
    Ok(Some(RuleSpec {
        action,
        src: endpoint(Side::Source, src)?,
        dst: endpoint(Side::Destination, dst)?,
    }))
}

/// One problem of a rules file.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LineProblem {
    #[error(transparent)]
    Rule(#[from] RuleError),
    #[error("one rule too many: the ACL table holds at most {MAX_RULES} rules")]
    TooManyRules,
}

/// A problem at one (1-based) line of a rules file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    pub line: usize,
    pub problem: LineProblem,
}

/// Every problem of a rules file. Displays as one `FILE:LINE: problem` line each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RulesFileError {
    pub file: String,
    pub problems: Vec<LineError>,
}

impl Display for RulesFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{}:{}: {}", self.file, p.line, p.problem)?;
        }
        Ok(())
    }
}

impl std::error::Error for RulesFileError {}

/// Parses a rules file (`file_name` only names it in errors): one rule a line, blank lines and
/// `#` comments ignored. Reports every bad line, and the line of the 1025th rule if there are more
/// than the table holds.
pub fn parse_rules(file_name: &str, text: &str) -> Result<Vec<Rule>, RulesFileError> {
    parse_rules_with(file_name, text, parse_line)
}

/// [`parse_rules`] for rules that may name domains (`name:web:*`): dom0's v4vd reads its rules
/// file and `ACL` requests with it.
pub fn parse_rule_specs(file_name: &str, text: &str) -> Result<Vec<RuleSpec>, RulesFileError> {
    parse_rules_with(file_name, text, parse_line_spec)
}

fn parse_rules_with<T>(
    file_name: &str,
    text: &str,
    parse_line: fn(&str) -> Result<Option<T>, RuleError>,
) -> Result<Vec<T>, RulesFileError> {
    let mut rules = Vec::new();
    let mut problems = Vec::new();
    let mut rule_lines = 0usize;
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        let parsed = parse_line(line);
        if matches!(parsed, Ok(None)) {
            continue;
        }
        rule_lines += 1;
        if rule_lines == MAX + 1 {
            problems.push(LineError {
                line: line_no,
                problem: LineProblem::TooManyRules,
            });
        }
        match parsed {
            Ok(Some(rule)) => rules.push(rule),
            Ok(None) => {}
            Err(e) => problems.push(LineError {
                line: line_no,
                problem: e.into(),
            }),
        }
    }
    if problems.is_empty() {
        Ok(rules)
    } else {
        Err(RulesFileError {
            file: file_name.to_string(),
            problems,
        })
    }
}

/// Writes a rules file that [`parse_rules`] reads back as `rules`.
pub fn format_rules(rules: &[Rule]) -> String {
    let mut out = String::from(
        "# V4V ACL rules: the first rule matching a send decides; no match accepts.\n\
         # accept|reject DOM:PORT -> DOM:PORT, * for any.\n",
    );
    for rule in rules {
        out.push_str(&rule.to_string());
        out.push('\n');
    }
    out
}

/// How a table decides a send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Decision {
    /// The 0-based index of the deciding rule; `None` when no rule matches.
    pub rule: Option<usize>,
    pub accepted: bool,
}

/// Decides a send from `src` to `dst` as the hypervisor would with `rules` as its table: the first
/// matching rule decides; no match accepts.
pub fn decide(rules: &[Rule], src: Addr, dst: Addr) -> Decision {
    match rules.iter().enumerate().find(|(_, r)| r.matches(src, dst)) {
        Some((i, r)) => Decision {
            rule: Some(i),
            accepted: r.action.is_accept(),
        },
        None => Decision {
            rule: None,
            accepted: true,
        },
    }
}

/// What state a failed [`replace_table`] left the table in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TableState {
    /// Exactly the old table.
    Old,
    /// Rule 1 is `reject *:* -> *:*`: every send is refused.
    FailClosed,
    /// Part of the old and part of the new rules; it accepts no send that both tables refuse.
    Partial,
}

impl Display for TableState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TableState::Old => "the old table is back in place",
            TableState::FailClosed => {
                "the table is fail-closed (rule 1 is reject *:* -> *:*, refusing every send); \
                 replace it again"
            }
            TableState::Partial => {
                "the table holds part of the old and part of the new rules (it accepts no send \
                 that both refuse); replace it again"
            }
        })
    }
}

/// An error reading or editing the ACL table.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AclError {
    /// A hypervisor call failed and the table is as it was (`EPERM` for a domain other than dom0).
    #[error(transparent)]
    Hypervisor(#[from] HvError),
    /// The table holds a rule with no text form (at a 1-based position).
    #[error("ACL table rule {position}: {source}")]
    TableRule {
        position: usize,
        source: TableRuleError,
    },
    /// The table kept changing length while it was read page by page.
    #[error("the ACL table kept changing while it was read ({attempts} attempts)")]
    Unstable { attempts: usize },
    /// The hypervisor reports a longer table than any can be.
    #[error("the hypervisor reports {total} ACL rules, more than the {MAX_RULES} a table holds")]
    TooLong { total: u32 },
    /// A rule given to write is invalid (1-based index in the list given).
    #[error("rule {index}: {source}")]
    InvalidRule { index: usize, source: RuleError },
    /// More rules than a table holds.
    #[error("{count} rules: the ACL table holds at most {MAX_RULES}")]
    TooManyRules { count: usize },
    /// A position that is not 1..=1024.
    #[error("position {0} is not a rule position (1 to {MAX_RULES})")]
    BadPosition(u32),
    /// A full table can't be swapped without a window; nothing was changed.
    #[error("{0}; the table is unchanged")]
    NoSafeRoom(NoRoom),
    /// A call failed midway through a replacement.
    #[error("replacing the ACL table failed: {source}; {state}{}", restore_note(.restore_error))]
    ReplaceFailed {
        /// The call that failed.
        source: HvError,
        /// Where the table was left.
        state: TableState,
        /// The call that failed while restoring the old table, if one did.
        restore_error: Option<HvError>,
    },
}

fn restore_note(e: &Option<HvError>) -> String {
    e.map(|e| format!(" (restoring the old table failed too: {e})"))
        .unwrap_or_default()
}

/// Which table has no removable rule when a guarded replacement needs one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Error)]
pub enum NoRoom {
    #[error(
        "the ACL table is full ({MAX_RULES} rules), all reject rules that no earlier rule covers: \
         no room for the reject-all guard a safe replacement needs, and deleting any of them would \
         briefly accept sends it refuses; delete one rule first"
    )]
    OldTable,
    #[error(
        "the new table has {MAX_RULES} rules, all reject rules that no earlier rule covers: it can \
         be loaded safely only into an empty table; flush the table first (which accepts every send \
         until the load), or shorten the new table"
    )]
    NewTable,
}

impl AclError {
    /// The hypervisor error behind this error, if there is one.
    pub fn hv_error(&self) -> Option<HvError> {
        match self {
            AclError::Hypervisor(e) | AclError::ReplaceFailed { source: e, .. } => Some(*e),
            _ => None,
        }
    }

    /// For a failed replacement, the state the table was left in.
    pub fn table_state(&self) -> Option<TableState> {
        match self {
            AclError::ReplaceFailed { state, .. } => Some(*state),
            _ => None,
        }
    }
}

/// A 1-based position as the hypercall takes it. Positions here are at most `MAX + 1`, so the
/// fallback (which is not `TABLES_DEL_ALL`) is never used.
fn pos(p: usize) -> u32 {
    u32::try_from(p).unwrap_or(MAX_RULES + 1)
}

/// How many read attempts [`read_table`] makes before it gives up on a changing table.
const READ_ATTEMPTS: usize = 4;

/// Reads the raw table, a page at a time. A table whose length changes between pages is read
/// again from the start.
fn read_raw<H: Hypervisor + ?Sized>(hv: &H) -> Result<Vec<TablesRule>, AclError> {
    'attempt: for _ in 0..READ_ATTEMPTS {
        let first = hv.tables_list(0, MAX_RULES)?;
        let total = first.total;
        if total > MAX_RULES {
            return Err(AclError::TooLong { total });
        }
        let total = total as usize;
        let mut rules = first.rules;
        while rules.len() < total {
            let page = hv.tables_list(pos(rules.len()), MAX_RULES)?;
            if page.total as usize != total || page.rules.is_empty() {
                continue 'attempt;
            }
            rules.extend(page.rules);
        }
        if rules.len() != total {
            continue 'attempt;
        }
        return Ok(rules);
    }
    Err(AclError::Unstable {
        attempts: READ_ATTEMPTS,
    })
}

/// Reads the whole ACL table (dom0 only).
pub fn read_table<H: Hypervisor + ?Sized>(hv: &H) -> Result<Vec<Rule>, AclError> {
    read_raw(hv)?
        .into_iter()
        .enumerate()
        .map(|(i, raw)| {
            Rule::try_from(raw).map_err(|source| AclError::TableRule {
                position: i + 1,
                source,
            })
        })
        .collect()
}

/// Validates rules to write and converts them.
fn to_raw(rules: &[Rule]) -> Result<Vec<TablesRule>, AclError> {
    rules
        .iter()
        .enumerate()
        .map(|(i, r)| {
            r.validate()
                .map(|()| TablesRule::from(r))
                .map_err(|source| AclError::InvalidRule {
                    index: i + 1,
                    source,
                })
        })
        .collect()
}

/// Validates one rule to write and converts it.
fn to_raw_one(rule: &Rule) -> Result<TablesRule, AclError> {
    rule.validate()
        .map(|()| TablesRule::from(rule))
        .map_err(|source| AclError::InvalidRule { index: 1, source })
}

fn checked_position(position: u32) -> Result<u32, AclError> {
    if (1..=MAX_RULES).contains(&position) {
        Ok(position)
    } else {
        Err(AclError::BadPosition(position))
    }
}

/// Appends a rule to the table.
pub fn add<H: Hypervisor + ?Sized>(hv: &H, rule: &Rule) -> Result<(), AclError> {
    Ok(hv.tables_add(&to_raw_one(rule)?, 0)?)
}

/// Inserts a rule before 1-based `position` (past the end appends).
pub fn insert<H: Hypervisor + ?Sized>(hv: &H, position: u32, rule: &Rule) -> Result<(), AclError> {
    let position = checked_position(position)?;
    Ok(hv.tables_add(&to_raw_one(rule)?, position)?)
}

/// Deletes the rule at 1-based `position` (`ENOENT` past the end). Refuses 0 and
/// `TABLES_DEL_ALL`, which the hypercall reads as "all".
pub fn delete_at<H: Hypervisor + ?Sized>(hv: &H, position: u32) -> Result<(), AclError> {
    let position = checked_position(position)?;
    Ok(hv.tables_del(None, position)?)
}

/// Deletes the first rule equal to `rule` (`ENOENT` if none is).
pub fn delete_rule<H: Hypervisor + ?Sized>(hv: &H, rule: &Rule) -> Result<(), AclError> {
    Ok(hv.tables_del(Some(&to_raw_one(rule)?), 0)?)
}

/// Deletes every rule: the table then accepts every send.
pub fn flush<H: Hypervisor + ?Sized>(hv: &H) -> Result<(), AclError> {
    Ok(hv.tables_del(None, abi::TABLES_DEL_ALL)?)
}

/// The guard of the guarded path, `reject *:* -> *:*`.
const GUARD: TablesRule = TablesRule {
    src: Addr::new(DOMID_ANY, PORT_ANY),
    dst: Addr::new(DOMID_ANY, PORT_ANY),
    accept: 0,
};

/// The index of a rule that can be deleted without the table accepting more: the last accept
/// rule or rule an earlier rule covers.
fn removable(rules: &[TablesRule]) -> Option<usize> {
    (0..rules.len()).rev().find(|&i| {
        let r = &rules[i];
        r.accept != 0
            || rules[..i]
                .iter()
                .any(|e| field_matches(e.src, r.src) && field_matches(e.dst, r.dst))
    })
}

/// How [`replace_table`] goes from the old table to the new one.
enum Plan {
    /// The new table is empty: flush.
    Flush,
    /// Both fit together: new rules on top, then old ones deleted from the bottom.
    Direct,
    /// Under a reject-all guard; with the index of an old rule deleted first and of a new rule
    /// inserted last, when a table is full.
    Guarded {
        old_drop: Option<usize>,
        new_hold: Option<usize>,
    },
}

fn plan(old: &[TablesRule], new: &[TablesRule]) -> Result<Plan, AclError> {
    if new.is_empty() {
        return Ok(Plan::Flush);
    }
    if old.len() + new.len() <= MAX {
        return Ok(Plan::Direct);
    }
    let old_drop = if old.len() >= MAX {
        Some(removable(old).ok_or(AclError::NoSafeRoom(NoRoom::OldTable))?)
    } else {
        None
    };
    let new_hold = if new.len() >= MAX {
        Some(removable(new).ok_or(AclError::NoSafeRoom(NoRoom::NewTable))?)
    } else {
        None
    };
    Ok(Plan::Guarded { old_drop, new_hold })
}

/// Where a replacement stands: what the table looks like, for undoing it.
#[derive(Clone, Copy)]
enum Stage {
    /// The old table.
    Old,
    /// Direct path: `new[..new_in] ++ old[..]` (a prefix of old, complete while `new_in < m`).
    Direct { new_in: usize },
    /// The old table without `old[old_drop]`.
    OldDropped,
    /// The guard first, then anything.
    Guarded,
    /// The new table without `new[new_hold]`.
    NewHeld,
}

/// The hypervisor and a copy of the table kept in step with each call that succeeds.
struct Editor<'h, H: ?Sized> {
    hv: &'h H,
    table: Vec<TablesRule>,
}

impl<H: Hypervisor + ?Sized> Editor<'_, H> {
    /// Inserts before 1-based `at`.
    fn add(&mut self, rule: TablesRule, at: usize) -> Result<(), HvError> {
        self.hv.tables_add(&rule, pos(at))?;
        self.table.insert(at - 1, rule);
        Ok(())
    }

    /// Deletes at 1-based `at`.
    fn del(&mut self, at: usize) -> Result<(), HvError> {
        self.hv.tables_del(None, pos(at))?;
        self.table.remove(at - 1);
        Ok(())
    }

    fn append(&mut self, rule: TablesRule) -> Result<(), HvError> {
        self.add(rule, self.table.len() + 1)
    }

    fn del_last(&mut self) -> Result<(), HvError> {
        self.del(self.table.len())
    }
}

/// Replaces the whole ACL table with `new` (dom0 only), never accepting, at any moment, a send
/// that neither the old nor the new table accepts. See the [module documentation](self) for the
/// steps and why they are safe. On failure midway the old table is restored if it can be, and
/// [`AclError::ReplaceFailed`] says what state the table is in; other errors leave it untouched.
pub fn replace_table<H: Hypervisor + ?Sized>(hv: &H, new: &[Rule]) -> Result<(), AclError> {
    if new.len() > MAX {
        return Err(AclError::TooManyRules { count: new.len() });
    }
    let new = to_raw(new)?;
    let old = read_raw(hv)?;
    if old == new {
        return Ok(());
    }
    let plan = plan(&old, &new)?;
    let mut ed = Editor {
        hv,
        table: old.clone(),
    };
    let mut stage = Stage::Old;
    let Err(source) = run(&mut ed, &plan, &new, &mut stage) else {
        return Ok(());
    };
    let restore_error = restore(&mut ed, &plan, &old, stage).err();
    let state = if ed.table == old {
        TableState::Old
    } else if ed.table.first() == Some(&GUARD) {
        TableState::FailClosed
    } else {
        TableState::Partial
    };
    Err(AclError::ReplaceFailed {
        source,
        state,
        restore_error,
    })
}

/// The forward steps. `stage` always describes the table as the last successful call left it.
fn run<H: Hypervisor + ?Sized>(
    ed: &mut Editor<'_, H>,
    plan: &Plan,
    new: &[TablesRule],
    stage: &mut Stage,
) -> Result<(), HvError> {
    match *plan {
        Plan::Flush => {
            ed.hv.tables_del(None, abi::TABLES_DEL_ALL)?;
            ed.table.clear();
        }
        Plan::Direct => {
            for (i, rule) in new.iter().enumerate() {
                ed.add(*rule, i + 1)?;
                *stage = Stage::Direct { new_in: i + 1 };
            }
            while ed.table.len() > new.len() {
                ed.del_last()?;
            }
        }
        Plan::Guarded { old_drop, new_hold } => {
            if let Some(i) = old_drop {
                ed.del(i + 1)?;
                *stage = Stage::OldDropped;
            }
            ed.add(GUARD, 1)?;
            *stage = Stage::Guarded;
            while ed.table.len() > 1 {
                ed.del_last()?;
            }
            for (i, rule) in new.iter().enumerate() {
                if Some(i) != new_hold {
                    ed.append(*rule)?;
                }
            }
            ed.del(1)?;
            if let Some(j) = new_hold {
                *stage = Stage::NewHeld;
                ed.add(new[j], j + 1)?;
            }
        }
    }
    Ok(())
}

/// Puts the old table back from `stage`, by steps that keep the same guarantee.
fn restore<H: Hypervisor + ?Sized>(
    ed: &mut Editor<'_, H>,
    plan: &Plan,
    old: &[TablesRule],
    stage: Stage,
) -> Result<(), HvError> {
    let old_drop = match *plan {
        Plan::Guarded { old_drop, .. } => old_drop,
        _ => None,
    };
    let mut stage = stage;
    loop {
        match stage {
            Stage::Old => return Ok(()),
            Stage::Direct { new_in } => {
                // new[..new_in] ++ old[..kept]: complete old under the new rules (which are all
                // there whenever old is incomplete), then delete the new rules from the bottom.
                let kept = ed.table.len() - new_in;
                for rule in &old[kept..] {
                    ed.append(*rule)?;
                }
                for at in (1..=new_in).rev() {
                    ed.del(at)?;
                }
                return Ok(());
            }
            Stage::OldDropped => {
                if let Some(i) = old_drop {
                    ed.add(old[i], i + 1)?;
                }
                return Ok(());
            }
            Stage::Guarded => {
                while ed.table.len() > 1 {
                    ed.del_last()?;
                }
                for (i, rule) in old.iter().enumerate() {
                    if Some(i) != old_drop {
                        ed.append(*rule)?;
                    }
                }
                ed.del(1)?;
                stage = Stage::OldDropped;
            }
            Stage::NewHeld => {
                ed.add(GUARD, 1)?;
                stage = Stage::Guarded;
            }
        }
    }
}
