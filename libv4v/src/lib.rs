// SPDX-License-Identifier: MIT OR Apache-2.0
//! libv4v: V4V inter-domain messaging for Xen.
//!
//! - [`abi`]: the hypercall ABI, mirrored from the C public header `v4v.h`.
//! - [`acl`]: the ACL rule language, decisions, and fail-closed reading and replacing of the table.
//! - [`shmem`]: the audited volatile/atomic layer over shared ring memory.
//! - [`ring`]: ring arithmetic, the receiver's reader and the hypervisor's insert.
//! - [`client`]: the client API applications link (through the v4vd daemon).
//! - [`hypervisor`]: the [`Hypervisor`] trait every backend (model, simulator, Xen) implements.
//! - [`backend`]: backends chosen at run time (`sim:PATH` with the `sim` feature, `xen`).
//! - [`xen`]: the Xen backend (privcmd, hypercall buffers, event channel).
//! - `tokio` (cargo feature `tokio`, off by default): the client API on the tokio runtime.
//!
//! Cargo feature `sim` (off by default) builds the client of the `v4v-sim` simulator and its wire
//! protocol (`backend::sim`); v4vd, v4v-sim and the conformance runner enable it. Modules that
//! only the sibling crates use (the simulator codec, `event`, `raw`) are hidden from these docs:
//! they are not part of the API an application may rely on.

pub mod abi;
pub mod acl;
pub mod backend;
pub mod chan;
pub mod client;
// Hidden: an eventfd standing in for an event channel, used by the userspace hypervisors
// (v4v-sim's model, the conformance harness); no application needs it.
#[doc(hidden)]
pub mod event;
pub mod hypervisor;
pub mod listen;
pub mod names;
// Hidden: typed operations marshalled into `v4v.h` structures for raw hypercalls, shared by the
// Xen backend and the conformance runner's Xen and C-harness backends.
#[doc(hidden)]
pub mod raw;
pub mod ring;
pub mod shmem;
#[cfg(feature = "tokio")]
pub mod tokio;
pub mod xen;
pub mod xenstore;

pub use hypervisor::{BatchSend, HvError, Hypervisor};
