// SPDX-License-Identifier: MIT OR Apache-2.0
//! Addresses and domains as the command line takes them: an id (`7:5000`) or a name
//! (`web:5000`, `name:web:5000`), resolved through the daemon when the command runs. Numeric ids
//! are never looked up.

use std::path::Path;
use std::str::FromStr;

use v4v::abi::DomId;
use v4v::client::SockAddr;
use v4v::names::DomainRef;

use crate::exit::Failure;

/// `DOM:PORT` with DOM an id or a name, not yet resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dest {
    pub domain: DomainRef,
    pub port: u32,
}

impl FromStr for Dest {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (domain, port) = v4v::client::proto::parse_named(s).map_err(|e| match e {
            v4v::client::proto::ParseError::BadAddr(_) => {
                format!("{s:?} is not DOM:PORT (DOM a domain id or name, PORT a number below 2^32)")
            }
            e => e.to_string(),
        })?;
        Ok(Dest { domain, port })
    }
}

impl std::fmt::Display for Dest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.domain, self.port)
    }
}

impl Dest {
    /// The address, the name asked of the daemon at `socket`.
    pub fn resolve(&self, socket: &Path) -> Result<SockAddr, Failure> {
        Ok(SockAddr::new(
            resolve_domain(socket, &self.domain)?,
            self.port,
        ))
    }
}

/// A domain as the command line takes it (`--from web`).
pub fn parse_domain(s: &str) -> Result<DomainRef, String> {
    DomainRef::parse(s).map_err(|e| e.to_string())
}

/// The id of `d`, a name asked of the daemon at `socket` (exit status 11 when it has no domain).
pub fn resolve_domain(socket: &Path, d: &DomainRef) -> Result<DomId, Failure> {
    match d {
        DomainRef::Id(id) => Ok(*id),
        DomainRef::Name(n) => v4v::client::resolve(socket, n)
            .map_err(|e| Failure::client(&format!("resolving {n}"), e)),
    }
}
