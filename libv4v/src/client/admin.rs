// SPDX-License-Identifier: MIT OR Apache-2.0
//! Reading and editing the hypervisor's ACL table through the daemon (`ACL` requests).

use std::io::Write;
use std::path::Path;

use super::proto::{AclRequest, Request};
use super::{Error, handshake, read_line};
use crate::acl::{self, Rule};

/// The table, in order (`ACL LIST`).
pub fn acl_list(daemon: &Path) -> Result<Vec<Rule>, Error> {
    let (mut s, args) = handshake(daemon, &Request::Acl(AclRequest::List))?;
    let n: usize = args
        .trim()
        .parse()
        .map_err(|_| Error::Protocol(format!("bad ACL LIST reply {args:?}")))?;
    if n > crate::abi::MAX_RULES as usize {
        return Err(Error::Protocol(format!("ACL LIST announced {n} rules")));
    }
    (0..n)
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
    let n = u32::try_from(rules.len()).map_err(|_| Error::MessageTooBig)?;
    let mut text = format!("{}\n", Request::Acl(AclRequest::Load(n)));
    for r in rules {
        text.push_str(&r.to_string());
        text.push('\n');
    }
    let mut s = std::os::unix::net::UnixStream::connect(daemon).map_err(|source| {
        Error::DaemonUnreachable {
            path: daemon.to_path_buf(),
            source,
        }
    })?;
    s.write_all(text.as_bytes())?;
    let line = read_line(&mut s)?;
    match super::proto::Reply::parse(&line).map_err(|e| Error::Protocol(e.to_string()))? {
        super::proto::Reply::Ok(_) => Ok(()),
        super::proto::Reply::Err { code, reason } => Err(Error::from_reply(&code, &reason)),
    }
}
