// SPDX-License-Identifier: MIT OR Apache-2.0
//! The V4V ABI, mirrored from `hypervisor-patch/xen/include/public/v4v.h`.
//!
//! Every type here is `#[repr(C)]` with the header's field order, and every constant has the
//! header's value; `tests/abi_header.rs` compiles the header and checks sizes, offsets and
//! constants against this module so the two cannot drift. Nothing here touches memory or the
//! hypervisor: this module only names the shapes.

/// A Xen domain id.
pub type DomId = u16;

/// `__HYPERVISOR_v4v_op`: the hypercall number (39 is Argo's in Xen 4.17).
pub const HYPERVISOR_V4V_OP: u64 = 43;

pub const RING_MAGIC: u64 = 0xa822_f72b_b0b9_d8cc;
pub const RING_DATA_MAGIC: u64 = 0x45fe_8522_20b8_01d4;

pub const PROTO_DGRAM: u32 = 0x3c2c_1db8;
pub const PROTO_STREAM: u32 = 0x70f6_a8e5;

/// `DOMID_SELF`: "the caller" in a source or destination address.
pub const DOMID_SELF: DomId = 0x7ff0;
/// `DOMID_FIRST_RESERVED`: ids from here up are not ordinary domains.
pub const DOMID_FIRST_RESERVED: DomId = 0x7ff0;
/// `V4V_DOMID_ANY` (`DOMID_INVALID`): any domain, in ring partners and ACL rules.
pub const DOMID_ANY: DomId = 0x7ff4;
/// `V4V_PORT_ANY`: any port, in ACL rules. Never a destination.
pub const PORT_ANY: u32 = 0;

pub const RING_ALIGN: u32 = 16;
pub const RING_HEADER_SIZE: u32 = 64;
pub const MESSAGE_HEADER_SIZE: u32 = 16;
pub const MIN_RING_LEN: u32 = 48;
pub const MAX_RING_LEN: u32 = 16 << 20;
pub const MAX_MESSAGE_SIZE: u32 = MAX_RING_LEN - 32;

pub const MAX_IOV: u32 = 128;
pub const MAX_NOTIFY: u32 = 256;
pub const MAX_WAITERS: u32 = 32;
pub const DEFAULT_MAX_RINGS: u32 = 128;
pub const MAX_RINGS_LIMIT: u32 = 4096;
/// Pages a domain's rings may hold mapped, by default (64 MiB worth).
pub const DEFAULT_MAX_RING_PAGES: u32 = 16384;
/// The most ring pages dom0 may allow a domain with `V4VOP_config` (4 GiB worth).
pub const MAX_RING_PAGES_LIMIT: u32 = 1 << 20;
pub const MAX_RULES: u32 = 1024;

pub const RING_DATA_F_EMPTY: u16 = 1 << 0;
pub const RING_DATA_F_EXISTS: u16 = 1 << 1;
pub const RING_DATA_F_PENDING: u16 = 1 << 2;
pub const RING_DATA_F_SUFFICIENT: u16 = 1 << 3;

pub const SHF_SYN: u32 = 1 << 0;
pub const SHF_ACK: u32 = 1 << 1;
pub const SHF_RST: u32 = 1 << 2;
pub const SHF_PING: u32 = 1 << 8;
pub const SHF_PONG: u32 = 1 << 9;

pub const TABLES_DEL_ALL: u32 = 0xffff_ffff;

pub const OP_REGISTER_RING: u32 = 1;
pub const OP_UNREGISTER_RING: u32 = 2;
pub const OP_NOTIFY: u32 = 4;
pub const OP_SENDV: u32 = 5;
pub const OP_INFO: u32 = 6;
pub const OP_CONFIG: u32 = 7;
pub const OP_TABLES_ADD: u32 = 8;
pub const OP_TABLES_DEL: u32 = 9;
pub const OP_TABLES_LIST: u32 = 10;

/// `V4V_ROUNDUP`: round up to the ring's 16-byte message alignment.
pub const fn roundup16(x: u64) -> u64 {
    (x + 15) & !15
}

/// `struct v4v_iov`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Iov {
    pub iov_base: u64,
    pub iov_len: u32,
    pub pad: u32,
}

/// `struct v4v_addr`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Addr {
    pub port: u32,
    pub domain: DomId,
    pub pad: u16,
}

impl Addr {
    pub const fn new(domain: DomId, port: u32) -> Self {
        Addr {
            port,
            domain,
            pad: 0,
        }
    }
}

/// `struct v4v_ring_id`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct RingId {
    pub addr: Addr,
    pub partner: DomId,
    pub pad: u16,
}

/// `struct v4v_send_addr`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SendAddr {
    pub src: Addr,
    pub dst: Addr,
}

/// `struct v4v_ring`: the header at the start of a ring; the data area follows it.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RingHeader {
    pub magic: u64,
    pub id: RingId,
    pub len: u32,
    pub rx_ptr: u32,
    pub tx_ptr: u32,
    pub reserved: [u8; 32],
}

/// `struct v4v_ring_message_header`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MessageHeader {
    pub len: u32,
    pub message_type: u32,
    pub source: Addr,
}

/// `struct v4v_ring_data_ent`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RingDataEnt {
    pub ring: Addr,
    pub flags: u16,
    pub pad: u16,
    pub space_required: u32,
    pub max_message_size: u32,
}

/// `struct v4v_ring_data` without its flexible array of entries.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RingDataHeader {
    pub magic: u64,
    pub nent: u32,
    pub pad: u32,
    pub reserved: [u64; 4],
}

/// `struct v4v_info`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Info {
    pub ring_magic: u64,
    pub data_magic: u64,
    pub evtchn: u32,
    pub domid: DomId,
    pub pad: u16,
    pub max_rings: u32,
    pub nr_rings: u32,
    pub max_ring_len: u32,
    pub max_iov: u32,
    pub max_notify: u32,
    pub max_waiters: u32,
    pub max_message_size: u32,
    pub max_rules: u32,
    pub max_ring_pages: u32,
    pub nr_ring_pages: u32,
}

/// `struct v4v_config`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Config {
    pub domain: DomId,
    pub pad: u16,
    pub max_rings: u32,
    /// 0 leaves the domain's ring page limit as it is.
    pub max_ring_pages: u32,
}

/// `struct v4vtables_rule`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct TablesRule {
    pub src: Addr,
    pub dst: Addr,
    pub accept: u32,
}

/// `struct v4vtables_list` without its flexible array of rules.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TablesListHeader {
    pub start_rule: u32,
    pub nb_rules: u32,
}

/// `struct v4v_stream_header`: the first 8 payload bytes of every stream message.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamHeader {
    pub flags: u32,
    pub conid: u32,
}

/// Offsets of the ring header fields the two sides access concurrently.
pub mod ring_offsets {
    pub const MAGIC: usize = core::mem::offset_of!(super::RingHeader, magic);
    pub const ID: usize = core::mem::offset_of!(super::RingHeader, id);
    pub const LEN: usize = core::mem::offset_of!(super::RingHeader, len);
    pub const RX_PTR: usize = core::mem::offset_of!(super::RingHeader, rx_ptr);
    pub const TX_PTR: usize = core::mem::offset_of!(super::RingHeader, tx_ptr);
    pub const DATA: usize = super::RING_HEADER_SIZE as usize;
}

/// Errno values of the x86 hypervisor ABI (the same numbers as Linux's).
pub mod errno {
    pub const EPERM: i32 = 1;
    pub const ENOENT: i32 = 2;
    pub const ESRCH: i32 = 3;
    pub const E2BIG: i32 = 7;
    pub const EAGAIN: i32 = 11;
    pub const ENOMEM: i32 = 12;
    pub const EACCES: i32 = 13;
    pub const EFAULT: i32 = 14;
    pub const EBUSY: i32 = 16;
    pub const EEXIST: i32 = 17;
    pub const EINVAL: i32 = 22;
    pub const ENOSPC: i32 = 28;
    pub const ENOSYS: i32 = 38;
    pub const EMSGSIZE: i32 = 90;
    pub const ECONNREFUSED: i32 = 111;
}
