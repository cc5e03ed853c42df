// SPDX-License-Identifier: MIT OR Apache-2.0
//! libv4v: V4V inter-domain messaging for Xen.
//!
//! - [`abi`]: the hypercall ABI, mirrored from the C public header `v4v.h`.
//! - [`shmem`]: the audited volatile/atomic layer over shared ring memory.
//! - [`ring`]: ring arithmetic, the receiver's reader and the hypervisor's insert.
//! - [`hypervisor`]: the [`Hypervisor`] trait every backend (model, simulator, Xen) implements.
//! - [`raw`]: typed operations marshalled into `v4v.h` structures for raw hypercalls.
//! - [`xen`]: the Xen backend (privcmd, hypercall buffers, event channel).

pub mod abi;
pub mod hypervisor;
pub mod raw;
pub mod ring;
pub mod shmem;
pub mod xen;

pub use hypervisor::{HvError, Hypervisor};
