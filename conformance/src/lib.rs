// SPDX-License-Identifier: MIT OR Apache-2.0
//! V4V conformance scenarios: the scenario language ([`ast`], [`parse()`]), the [`Backend`]
//! trait every implementation under test provides, and the runner ([`run`]).
//!
//! The language is described in `conformance/README.md`; the semantics it checks are those of
//! `docs/abi.md`.

pub mod ast;
pub mod backend;
pub mod c_harness;
pub mod model;
pub mod parse;
pub mod run;
pub mod xen_backend;
pub mod xenstore;

pub use ast::Scenario;
pub use backend::{Backend, BackendError, Capability, InspectKind, RemoteFailure, StepPlace};
pub use parse::{ParseError, parse};
pub use run::{LoadedScenario, Outcome, Summary, load, run_all, run_scenario};
