// SPDX-License-Identifier: MIT OR Apache-2.0
//! Hypervisor backends chosen at run time.
//!
//! [`open`] turns a backend specification into a [`Hypervisor`]:
//!
//! - `sim:PATH` connects to a `v4v-sim` simulator listening on the Unix socket `PATH` and claims
//!   the lowest free guest domid; `sim:PATH?domid=N` claims domain `N` (`0` is the privileged
//!   domain). See `docs/sim.md`. The simulator's client is built only with libv4v's `sim` cargo
//!   feature (v4vd, v4v-sim and the conformance runner enable it); without it `sim:` specs parse
//!   but [`open`] answers [`BackendError::SimNotBuilt`], so an application linking libv4v does not
//!   compile the simulator.
//! - `xen` is real Xen through `/dev/xen/privcmd`, `/dev/xen/hypercall` and `/dev/xen/evtchn`
//!   (see [`crate::xen`]); when it cannot start, the error says what is missing.
//!
//! Everything above this module (ring reader, client API) is the same over every backend: the
//! ring reader works on whatever [`crate::shmem::RingMemory`] the backend allocated.

// Hidden: applications reach the simulator through `open("sim:PATH")`; only the `v4v-sim` crate
// (the server end of the protocol, and its tests) names the codec and `SimHypervisor` directly.
#[cfg(feature = "sim")]
#[doc(hidden)]
pub mod sim;

use std::path::PathBuf;

use thiserror::Error;

use crate::abi::DomId;
use crate::hypervisor::Hypervisor;
#[cfg(feature = "sim")]
use sim::SimHypervisor;
#[cfg(feature = "sim")]
use sim::protocol::ProtocolError;

/// Why a backend could not be opened.
#[derive(Debug, Error)]
pub enum BackendError {
    #[error("bad backend specification {spec:?}: {why} (expected `sim:PATH[?domid=N]` or `xen`)")]
    BadSpec { spec: String, why: &'static str },
    #[error("{0}")]
    Xen(#[from] crate::xen::XenError),
    #[error("cannot connect to the simulator at {path}: {source}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the simulator refused the claim of {}: {}", claim_name(*.domid), errno_text(*.errno))]
    ClaimRefused { domid: DomId, errno: i32 },
    #[error("simulator speaks protocol version {theirs}, this library {ours}")]
    Version { ours: u16, theirs: u16 },
    #[cfg(feature = "sim")]
    #[error("simulator protocol error: {0}")]
    Protocol(#[from] ProtocolError),
    #[cfg(feature = "sim")]
    #[error("simulator channel: {0}")]
    Channel(#[from] crate::chan::ChanError),
    #[error(
        "{spec:?} names the simulator, but this build of libv4v has no simulator backend (cargo feature `sim`)"
    )]
    SimNotBuilt { spec: String },
    #[error("simulator connection: {0}")]
    Io(#[from] std::io::Error),
}

fn claim_name(domid: DomId) -> String {
    if domid == crate::abi::DOMID_ANY {
        "any free domid".to_string()
    } else {
        format!("domid {domid}")
    }
}

fn errno_text(errno: i32) -> String {
    match errno {
        libc::EADDRINUSE => "already claimed by a connected guest".into(),
        e => format!("{} (errno {e})", std::io::Error::from_raw_os_error(e)),
    }
}

/// A parsed backend specification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendSpec {
    /// `sim:PATH[?domid=N]`; `None` claims any free guest domid.
    Sim {
        path: PathBuf,
        domid: Option<DomId>,
    },
    Xen,
}

impl BackendSpec {
    pub fn parse(spec: &str) -> Result<Self, BackendError> {
        let bad = |why| BackendError::BadSpec {
            spec: spec.to_string(),
            why,
        };
        if spec == "xen" {
            return Ok(BackendSpec::Xen);
        }
        let Some(rest) = spec.strip_prefix("sim:") else {
            return Err(bad("unknown backend"));
        };
        let (path, domid) = match rest.rsplit_once("?domid=") {
            Some((path, n)) => {
                let n = n.trim();
                let parsed = match n.strip_prefix("0x") {
                    Some(hex) => DomId::from_str_radix(hex, 16),
                    None => n.parse::<DomId>(),
                };
                (
                    path,
                    Some(parsed.map_err(|_| bad("domid is not a number below 65536"))?),
                )
            }
            None => (rest, None),
        };
        if path.is_empty() {
            return Err(bad("empty socket path"));
        }
        Ok(BackendSpec::Sim {
            path: PathBuf::from(path),
            domid,
        })
    }
}

/// Opens the backend named by `spec` (see the module documentation).
pub fn open(spec: &str) -> Result<Box<dyn Hypervisor>, BackendError> {
    match BackendSpec::parse(spec)? {
        #[cfg(feature = "sim")]
        BackendSpec::Sim { path, domid } => Ok(Box::new(SimHypervisor::connect(&path, domid)?)),
        #[cfg(not(feature = "sim"))]
        BackendSpec::Sim { .. } => Err(BackendError::SimNotBuilt {
            spec: spec.to_string(),
        }),
        BackendSpec::Xen => Ok(Box::new(crate::xen::open()?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Run by `cargo test -p libv4v --lib` (scripts/test), which builds libv4v alone, as an
    /// application would get it: a `sim:` spec parses but the simulator is not there.
    #[cfg(not(feature = "sim"))]
    #[test]
    fn sim_is_not_built_by_default() {
        let e = open("sim:/nonexistent/sim.sock").err();
        assert!(matches!(e, Some(BackendError::SimNotBuilt { .. })), "{e:?}");
    }

    #[test]
    fn specs_parse() {
        assert_eq!(BackendSpec::parse("xen").unwrap(), BackendSpec::Xen);
        assert_eq!(
            BackendSpec::parse("sim:/tmp/s").unwrap(),
            BackendSpec::Sim {
                path: "/tmp/s".into(),
                domid: None
            }
        );
        assert_eq!(
            BackendSpec::parse("sim:/tmp/a?b?domid=0x10").unwrap(),
            BackendSpec::Sim {
                path: "/tmp/a?b".into(),
                domid: Some(16)
            }
        );
        assert_eq!(
            BackendSpec::parse("sim:s?domid=0").unwrap(),
            BackendSpec::Sim {
                path: "s".into(),
                domid: Some(0)
            }
        );
        for bad in [
            "",
            "sim:",
            "sim:?domid=1",
            "sim:x?domid=70000",
            "sim:x?domid=",
            "kvm",
        ] {
            assert!(
                matches!(BackendSpec::parse(bad), Err(BackendError::BadSpec { .. })),
                "{bad}"
            );
        }
        if !crate::xen::available() {
            // Off Xen, the error names the missing device.
            assert!(matches!(open("xen"), Err(BackendError::Xen(_))));
            let msg = open("xen").err().map(|e| e.to_string()).unwrap_or_default();
            assert!(msg.contains("/dev/xen/privcmd"), "{msg}");
        }
    }
}
