// SPDX-License-Identifier: MIT OR Apache-2.0
//! Domains by name: the syntax of names and of addresses that carry them, and the
//! [`NameDirectory`] a daemon reads them from.
//!
//! This module owns what a name is and where a domain's name comes from; it does not resolve
//! for applications (they ask their v4vd, [`crate::client::resolve`]) and does not edit the ACL
//! table (dom0's v4vd does, from [`crate::acl::RuleSpec`]s).
//!
//! # Names
//!
//! A name is 1 to [`MAX_NAME`] bytes of ASCII letters, digits, `_`, `-` and `.`, with at least one
//! character that is not a digit, and not starting with `-` or `.`. So a decimal number is always
//! a domain id and never looked up, and a name never needs quoting in a rule or an address. Xen
//! allows other characters in domain names: domains so named cannot be addressed by name (dom0
//! ignores them, and says so once).
//!
//! # Who sees which names
//!
//! - **dom0** sees every domain's name: on Xen from xenstore (`/local/domain/N/name`, written by
//!   the toolstack); on the simulator from the names the domains' daemons claimed
//!   (`v4vd --name`).
//! - **Guests** cannot read other domains' xenstore entries. dom0's v4vd publishes the names the
//!   admin chose (`publish_names`, none by default) in a directory guests may read
//!   ([`PUBLISHED_DIR`] in xenstore, read-only for guests; the simulator models the same), and a
//!   guest's daemon resolves from that directory (and knows its own name). A name it may not see
//!   resolves as unknown.

use std::fmt;
use std::os::fd::BorrowedFd;

use thiserror::Error;

use crate::abi::{DOMID_FIRST_RESERVED, DomId};

/// The longest name, in bytes (Xen's toolstack allows longer ones; such domains have no V4V name).
pub const MAX_NAME: usize = 64;

/// The xenstore directory where dom0's v4vd publishes names for guests: `PUBLISHED_DIR/NAME` holds
/// the domain id in decimal. dom0 owns it; every other domain may read it and nothing else.
pub const PUBLISHED_DIR: &str = "/v4v/names";

/// Why a name or an address with a name is not valid.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum NameError {
    #[error("empty domain name")]
    Empty,
    #[error("domain name {0:?} is longer than {MAX_NAME} bytes")]
    TooLong(String),
    #[error(
        "domain name {0:?} may hold only letters, digits, '_', '-' and '.' (not first: '-', '.')"
    )]
    BadChar(String),
    #[error("{0:?} is a number: numbers are domain ids, not names")]
    Numeric(String),
    #[error("domain {0} is not a guest's: domain ids are below 32752 (0x7ff0)")]
    ReservedDomain(u64),
}

/// Checks that `name` is a valid domain name (see the module documentation).
pub fn validate(name: &str) -> Result<(), NameError> {
    let shown = || name.chars().take(MAX_NAME + 8).collect::<String>();
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME {
        return Err(NameError::TooLong(shown()));
    }
    let ok = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.');
    if !name.bytes().all(ok) || name.starts_with(['-', '.']) {
        return Err(NameError::BadChar(shown()));
    }
    if name.bytes().all(|b| b.is_ascii_digit()) {
        return Err(NameError::Numeric(shown()));
    }
    Ok(())
}

/// A domain as a user writes it: an id, or a name to be resolved.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DomainRef {
    Id(DomId),
    Name(String),
}

impl DomainRef {
    /// Parses `7`, `web` or `name:web`. A decimal number is always an id (below 32752).
    pub fn parse(text: &str) -> Result<Self, NameError> {
        let name = text.strip_prefix("name:").unwrap_or(text);
        if text.len() == name.len() && !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())
        {
            let d: u64 = text.parse().unwrap_or(u64::MAX);
            return match DomId::try_from(d) {
                Ok(d) if d < DOMID_FIRST_RESERVED => Ok(DomainRef::Id(d)),
                _ => Err(NameError::ReservedDomain(d)),
            };
        }
        validate(name)?;
        Ok(DomainRef::Name(name.to_string()))
    }
}

impl fmt::Display for DomainRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DomainRef::Id(d) => write!(f, "{d}"),
            DomainRef::Name(n) => f.write_str(n),
        }
    }
}

/// Splits `DOM:PORT`, `NAME:PORT` or `name:NAME:PORT` into the domain and the port text (the
/// port is left to the caller, whose rules for it differ: `*` in ACL rules, 0 for ephemeral).
pub fn split_addr(text: &str) -> Option<(&str, &str)> {
    text.rsplit_once(':')
}

/// One entry of a name directory: a domain and its name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NameEntry {
    pub domid: DomId,
    pub name: String,
}

/// Why a directory could not be read or written.
#[derive(Debug, Error)]
pub enum DirectoryError {
    /// The directory refused: `EPERM`/`EACCES` for what this domain may not do, `EADDRINUSE` for
    /// a name another domain holds, ...
    #[error("{what}: {errno_name}")]
    Refused { what: String, errno_name: String },
    /// The directory's transport failed (xenstore or the simulator went away).
    #[error("{0}")]
    Transport(String),
    #[error(transparent)]
    Name(#[from] NameError),
}

/// Where a daemon reads domains' names: xenstore on Xen ([`crate::xenstore::XenNames`]), the
/// simulator's directory on `sim:` (the simulator connection implements it).
pub trait NameDirectory: Send + Sync {
    /// Names this domain itself (the simulator only: on Xen the toolstack names domains, and
    /// this answers `EPERM`). One name a domain, held until the domain ends.
    fn claim_name(&self, name: &str) -> Result<(), DirectoryError>;
    /// Every domain's name this domain may see: dom0 sees all, a guest its own.
    fn domain_names(&self) -> Result<Vec<NameEntry>, DirectoryError>;
    /// The directory dom0 published for guests.
    fn published(&self) -> Result<Vec<NameEntry>, DirectoryError>;
    /// dom0: replaces the published directory with `entries`.
    fn publish(&self, entries: &[NameEntry]) -> Result<(), DirectoryError>;
    /// A descriptor readable when names may have changed, if the directory has one (xenstore's
    /// watches); without one the caller polls [`NameDirectory::changed`].
    fn watch_fd(&self) -> Option<BorrowedFd<'_>> {
        None
    }
    /// Whether names may have changed since the last call (drains the watch).
    fn changed(&self) -> Result<bool, DirectoryError>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names_and_ids() {
        assert_eq!(DomainRef::parse("7"), Ok(DomainRef::Id(7)));
        assert_eq!(DomainRef::parse("007"), Ok(DomainRef::Id(7)));
        assert_eq!(DomainRef::parse("web"), Ok(DomainRef::Name("web".into())));
        assert_eq!(
            DomainRef::parse("name:web"),
            Ok(DomainRef::Name("web".into()))
        );
        assert_eq!(
            DomainRef::parse("guest-1.a_b"),
            Ok(DomainRef::Name("guest-1.a_b".into()))
        );
        assert_eq!(
            DomainRef::parse("32752"),
            Err(NameError::ReservedDomain(32752))
        );
        assert_eq!(
            DomainRef::parse("name:7"),
            Err(NameError::Numeric("7".into()))
        );
        assert_eq!(DomainRef::parse(""), Err(NameError::Empty));
        assert_eq!(DomainRef::parse("name:"), Err(NameError::Empty));
        assert!(matches!(
            DomainRef::parse("a b"),
            Err(NameError::BadChar(_))
        ));
        assert!(matches!(DomainRef::parse("-x"), Err(NameError::BadChar(_))));
        assert!(matches!(DomainRef::parse("*"), Err(NameError::BadChar(_))));
        assert!(matches!(
            DomainRef::parse(&"a".repeat(65)),
            Err(NameError::TooLong(_))
        ));
        assert!(DomainRef::parse(&"a".repeat(64)).is_ok());
    }

    proptest! {
        /// Every valid name reads back as itself, with or without the prefix, and is never an id.
        #[test]
        fn valid_names_round_trip(name in "[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}") {
            prop_assume!(!name.bytes().all(|b| b.is_ascii_digit()));
            prop_assert_eq!(DomainRef::parse(&name), Ok(DomainRef::Name(name.clone())));
            let prefixed = format!("name:{name}");
            prop_assert_eq!(DomainRef::parse(&prefixed), Ok(DomainRef::Name(name.clone())));
            let shown = DomainRef::Name(name.clone()).to_string();
            prop_assert_eq!(DomainRef::parse(&shown), Ok(DomainRef::Name(name)));
        }

        /// Numbers are ids or refused, never names.
        #[test]
        fn numbers_are_ids(n in 0u64..100_000) {
            match DomainRef::parse(&n.to_string()) {
                Ok(DomainRef::Id(d)) => prop_assert!(u64::from(d) == n && n < 32752),
                Err(NameError::ReservedDomain(m)) => prop_assert!(m == n && n >= 32752),
                other => prop_assert!(false, "{n}: {other:?}"),
            }
        }

        /// Arbitrary text never panics, and whatever is accepted as a name is valid.
        #[test]
        fn garbage_is_refused_or_valid(text in "\\PC{0,80}") {
            if let Ok(DomainRef::Name(n)) = DomainRef::parse(&text) {
                prop_assert!(validate(&n).is_ok());
                prop_assert!(n.len() <= MAX_NAME && !n.contains(':'));
            }
        }
    }
}
