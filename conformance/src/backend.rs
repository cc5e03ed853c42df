// SPDX-License-Identifier: MIT OR Apache-2.0
//! What the runner needs from a V4V implementation.
//!
//! A [`Backend`] gives the runner one fresh world per scenario ([`Backend::begin`]), creates the
//! domains the scenario names and hands back a [`Hypervisor`] acting as each, and says which
//! optional abilities it has so that scenarios needing others are skipped, not failed.

use thiserror::Error;
use v4v::Hypervisor;
use v4v::abi::DomId;

pub use crate::ast::{Capability, InspectKind, Step};

/// A backend that could not do what the harness asked (not a V4V result: those are `HvError`s).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum BackendError {
    #[error("the {backend} backend cannot {what}")]
    Unsupported { backend: String, what: String },
    #[error("{0}")]
    Failed(String),
}

/// Where a step is performed: by this process, or by another one that acts as the step's domain
/// (real Xen: each domain's steps run in that domain).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepPlace {
    Here,
    Elsewhere,
}

/// A step performed by another process failed: `step` is its 0-based index in the scenario.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteFailure {
    pub step: usize,
    pub message: String,
}

/// A V4V implementation the scenarios can run against.
pub trait Backend {
    /// Short name, as given to `--backend`.
    fn name(&self) -> &str;

    /// Whether the backend has an optional ability (scenarios declare them with `requires`).
    fn supports(&self, cap: Capability) -> bool;

    /// Whether the backend can act as domain `domid` (for example: a process in a real domain
    /// can only act as that domain).
    fn can_act_as(&self, domid: DomId) -> bool;

    /// Starts a scenario: a fresh world with no domains, rings or ACL rules. Called before each
    /// scenario; a backend that cannot reset everything should do what it can (delete its rules).
    fn begin(&mut self) -> Result<(), BackendError>;

    /// Creates (or attaches to) domain `domid` and returns a hypervisor acting as it. Called for
    /// the `domains` line at the start and for `create` steps.
    fn create_domain(&mut self, domid: DomId) -> Result<Box<dyn Hypervisor>, BackendError>;

    /// Destroys domain `domid` (only called when `supports(Capability::Destroy)`).
    fn destroy_domain(&mut self, domid: DomId) -> Result<(), BackendError> {
        Err(BackendError::Unsupported {
            backend: self.name().into(),
            what: format!("destroy {domid}"),
        })
    }

    /// A count inside the hypervisor (only called when `supports(Capability::Inspect)`).
    fn inspect(&self, what: InspectKind) -> Result<u64, BackendError> {
        Err(BackendError::Unsupported {
            backend: self.name().into(),
            what: format!("inspect {}", what.keyword()),
        })
    }

    /// Called before each step (`index` is 0-based): whether this process performs it. A backend
    /// whose domains live in several processes hands the turn to the process acting as the step's
    /// domain here, and returns `Elsewhere` for the steps done there, or the failure of one of
    /// them. Every step is performed here by default.
    fn before_step(&mut self, index: usize, step: &Step) -> Result<StepPlace, RemoteFailure> {
        let _ = (index, step);
        Ok(StepPlace::Here)
    }

    /// Ends a scenario (the runner has dropped every hypervisor handle of it already).
    fn end(&mut self) {}
}
