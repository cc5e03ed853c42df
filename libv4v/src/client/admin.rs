// SPDX-License-Identifier: MIT OR Apache-2.0
//! Reading and editing the hypervisor's ACL table through the daemon (`ACL` requests).

use std::path::Path;

use super::proto::{AclRequest, Reply, Request};
use super::{Error, handshake, handshake_with, read_line};
use crate::abi::DomId;
use crate::acl::{self, Rule, RuleSpec};

/// One rule of `ACL LIST`: as the admin wrote it, and as the hypervisor's table holds it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedRule {
    pub spec: RuleSpec,
    /// Names as the ids they stand for now ([`acl::DOMID_UNBOUND`] for a name no domain has).
    pub rule: Rule,
    /// Each name of the rule and its domain now (`None`: no domain has it).
    pub bindings: Vec<(String, Option<DomId>)>,
}

/// The annotation `ACL LIST` puts after a rule that names domains: `# web=7 db=none`.
pub fn format_bindings(bindings: &[(String, Option<DomId>)]) -> String {
    let mut out = String::from("#");
    for (n, d) in bindings {
        match d {
            Some(d) => out.push_str(&format!(" {n}={d}")),
            None => out.push_str(&format!(" {n}=none")),
        }
    }
    out
}

/// Reads one `ACL LIST` line: the rule, then for a rule with names `# NAME=ID|none ...`.
pub fn parse_listed(line: &str) -> Result<ListedRule, String> {
    let spec: RuleSpec = line.parse().map_err(|e: acl::RuleError| e.to_string())?;
    let mut bindings = Vec::new();
    if let Some((_, note)) = line.split_once('#') {
        for word in note.split_whitespace() {
            let (n, d) = word
                .split_once('=')
                .ok_or_else(|| format!("bad binding {word:?}"))?;
            let d = match d {
                "none" => None,
                d => Some(
                    super::proto::parse_domain(d).map_err(|_| format!("bad binding {word:?}"))?,
                ),
            };
            bindings.push((n.to_string(), d));
        }
    }
    let rule = spec.resolve(&|name| {
        bindings
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, d)| *d)
    });
    Ok(ListedRule {
        spec,
        rule,
        bindings,
    })
}

/// The table, in order (`ACL LIST`).
pub fn acl_list(daemon: &Path) -> Result<Vec<ListedRule>, Error> {
    let (mut s, reply) = handshake(daemon, &Request::Acl(AclRequest::List))?;
    let Reply::Rules(n) = reply else {
        return Err(Error::Protocol(format!(
            "unexpected ACL LIST reply {reply}"
        )));
    };
    if n > crate::abi::MAX_RULES {
        return Err(Error::Protocol(format!("ACL LIST announced {n} rules")));
    }
    (0..n as usize)
        .map(|i| {
            let line = read_line(&mut s)?;
            parse_listed(&line)
                .map_err(|e| Error::Protocol(format!("ACL LIST rule {}: {e}", i + 1)))
        })
        .collect()
}

/// One change (`ADD`, `INSERT`, `DELETE`, `FLUSH`).
pub fn acl_change(daemon: &Path, req: AclRequest) -> Result<(), Error> {
    handshake(daemon, &Request::Acl(req)).map(|_| ())
}

/// Replaces the whole table with `rules` (`ACL LOAD`), all or nothing.
pub fn acl_load(daemon: &Path, rules: &[RuleSpec]) -> Result<(), Error> {
    let n = u32::try_from(rules.len())
        .map_err(|_| Error::Invalid(format!("{} rules are too many", rules.len())))?;
    let mut text = String::new();
    for r in rules {
        text.push_str(&r.to_string());
        text.push('\n');
    }
    handshake_with(daemon, &Request::Acl(AclRequest::Load(n)), &text).map(|_| ())
}

/// The id of the domain called `name`, as the daemon's domain may see it (`RESOLVE`).
pub fn resolve(daemon: &Path, name: &str) -> Result<DomId, Error> {
    crate::names::validate(name).map_err(|e| Error::Invalid(e.to_string()))?;
    match handshake(daemon, &Request::Resolve(name.to_string())) {
        Ok((_, Reply::Domain(d))) => Ok(d),
        Ok((_, reply)) => Err(Error::Protocol(format!("unexpected RESOLVE reply {reply}"))),
        Err(Error::Daemon { code, reason }) if code == "ENOENT" => Err(Error::UnknownName(reason)),
        Err(e) => Err(e),
    }
}

/// The name of domain `domid`, if the daemon's domain may see one (`NAMEOF`).
pub fn name_of(daemon: &Path, domid: DomId) -> Result<Option<String>, Error> {
    match handshake(daemon, &Request::NameOf(domid)) {
        Ok((_, Reply::Name(n))) => Ok(Some(n)),
        Ok((_, reply)) => Err(Error::Protocol(format!("unexpected NAMEOF reply {reply}"))),
        Err(Error::Daemon { code, .. }) if code == "ENOENT" => Ok(None),
        Err(e) => Err(e),
    }
}
