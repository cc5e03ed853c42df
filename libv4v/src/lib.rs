// SPDX-License-Identifier: MIT OR Apache-2.0
//! libv4v: V4V inter-domain messaging for Xen.
//!
//! - [`abi`]: the hypercall ABI, mirrored from the C public header `v4v.h`.
//! - [`acl`]: the ACL rule language, decisions, and fail-closed reading and replacing of the table.
//! - [`shmem`]: the audited volatile/atomic layer over shared ring memory.
//! - [`ring`]: ring arithmetic, the receiver's reader and the hypervisor's insert.
//! - [`client`]: the client API applications link (through the v4vd daemon).
//! - [`event`]: an eventfd standing in for an event channel in the userspace hypervisors.
//! - [`hypervisor`]: the [`Hypervisor`] trait every backend (model, simulator, Xen) implements.
//! - [`backend`]: backends chosen at run time (`sim:PATH`, `xen`).
//! - [`sim_protocol`]: the wire protocol between a guest and the `v4v-sim` simulator.
//! - [`raw`]: typed operations marshalled into `v4v.h` structures for raw hypercalls.
//! - [`xen`]: the Xen backend (privcmd, hypercall buffers, event channel).

pub mod abi;
pub mod acl;
pub mod backend;
pub mod client;
pub mod event;
pub mod hypervisor;
pub mod raw;
pub mod ring;
pub mod shmem;
pub mod sim_protocol;
pub mod xen;

pub use hypervisor::{HvError, Hypervisor};
