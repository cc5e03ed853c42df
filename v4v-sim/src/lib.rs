// SPDX-License-Identifier: MIT OR Apache-2.0
//! v4v-sim: the hypervisor half of V4V in userspace.
//!
//! - [`model`]: a deterministic, in-process model of the hypervisor with several domains. Each
//!   [`ModelDomain`] implements [`v4v::Hypervisor`] for one domain.
//! - [`server`]: the model served to guest processes over a Unix socket (the `v4v-sim` binary).

pub mod model;
pub mod server;

pub use model::{Model, ModelDomain, ModelError};
