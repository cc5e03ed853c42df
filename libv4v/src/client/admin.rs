// SPDX-License-Identifier: MIT OR Apache-2.0
//! Reading and editing the hypervisor's ACL table through the daemon (`ACL` requests).

use std::path::Path;

use super::proto::{AclRequest, Reply, Request};
use super::{Error, handshake, handshake_with, read_line};
use crate::acl::{self, Rule};

/// The table, in order (`ACL LIST`).
pub fn acl_list(daemon: &Path) -> Result<Vec<Rule>, Error> {
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
            line.parse().map_err(|e: acl::RuleError| {
                Error::Protocol(format!("ACL LIST rule {}: {e}", i + 1))
            })
        })
        .collect()
}

/// One change (`ADD`, `INSERT`, `DELETE`, `FLUSH`).
pub fn acl_change(daemon: &Path, req: AclRequest) -> Result<(), Error> {
    handshake(daemon, &Request::Acl(req)).map(|_| ())
}

/// Replaces the whole table with `rules` (`ACL LOAD`), all or nothing.
pub fn acl_load(daemon: &Path, rules: &[Rule]) -> Result<(), Error> {
    let n = u32::try_from(rules.len())
        .map_err(|_| Error::Invalid(format!("{} rules are too many", rules.len())))?;
    let mut text = String::new();
    for r in rules {
        text.push_str(&r.to_string());
        text.push('\n');
    }
    handshake_with(daemon, &Request::Acl(AclRequest::Load(n)), &text).map(|_| ())
}
