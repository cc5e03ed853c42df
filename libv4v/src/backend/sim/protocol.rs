// SPDX-License-Identifier: MIT OR Apache-2.0
//! The wire protocol between a guest ([`crate::backend::sim`]) and the `v4v-sim` simulator.
//!
//! `docs/sim.md` is the specification; this module is its only implementation, shared by both
//! ends. In brief: a `SOCK_STREAM` Unix socket carries length-prefixed frames, all integers
//! little-endian. Each frame is an 8-byte [`FrameHeader`] (`u32` body length, `u16` kind, `u8`
//! number of descriptors passed with it by `SCM_RIGHTS`, `u8` reserved zero) and a body. The guest
//! sends one request and reads one reply, whose kind is the request's with [`REPLY_BIT`] set and
//! whose body starts with the hypervisor's return value (`i64`, negative errno on failure).
//! With protocol versions 2 and 3 the same frames (without descriptors) also travel as records of
//! the shared-memory channels set up at hello ([`split_record`] takes one apart); `sendv_batch`
//! carries several sendvs in one request ([`SendvFrame::batch`]). Version 3 differs from 2 only in
//! its wake-ups: the event channel and the doorbells are pipes, not socket pairs.
//!
//! Decoding never trusts its input: every length is checked before it is used, every reserved
//! field must be zero, and a body must be exactly as long as its contents say. ABI structures
//! travel with their padding fields as the guest wrote them, so that the hypervisor (not the
//! codec) reports non-zero padding with `EINVAL`, as it does under Xen.

use std::io::IoSlice;

use thiserror::Error;

use crate::abi::{self, Addr, Config, DomId, Info, RingDataEnt, SendAddr, TablesRule};
use crate::names::NameEntry;

/// `"V4VS"`: the first field of a hello.
pub const HELLO_MAGIC: u32 = u32::from_le_bytes(*b"V4VS");
/// Version 1: every request and reply travels on the socket.
pub const VERSION_SOCKET: u16 = 1;
/// Version 2: as version 1, plus a shared-memory request/reply channel set up at hello (see
/// [`ChannelSizes`]); requests that need no descriptor may travel through it. Its event channel
/// and doorbell are stream socket pairs.
pub const VERSION_CHANNEL: u16 = 2;
/// Version 3: version 2 with pipes for the event channel and one pipe per doorbell direction. A
/// byte through a pipe wakes the other side for about half of what a socket's costs, and a
/// round trip rings several.
pub const VERSION_PIPES: u16 = 3;
/// The newest protocol version this build speaks. A simulator serves all three and refuses any
/// other with `EPROTO`; this build's guests ask for [`VERSION_PIPES`] (or [`VERSION_SOCKET`]).
pub const VERSION: u16 = VERSION_PIPES;

/// Bytes of a frame header.
pub const FRAME_HEADER_SIZE: usize = 8;
/// The largest body either side accepts: a sendv of the largest message with the most iovs the
/// wire carries, with room to spare. A longer length prefix is a protocol error that ends the
/// connection (the stream cannot be resynchronised).
pub const MAX_BODY: usize = abi::MAX_MESSAGE_SIZE as usize + 64 * 1024;
/// The most descriptors a request frame carries.
pub const MAX_FDS: usize = 1;
/// The most descriptors a reply frame carries: a version-3 hello reply's five.
pub const MAX_REPLY_FDS: usize = HELLO_PIPES_FDS as usize;
/// Descriptors a successful version-2 hello reply carries, in this order: the event channel,
/// the doorbell, the request channel's memory, the reply channel's memory.
pub const HELLO_CHANNEL_FDS: u8 = 4;
/// Descriptors a successful version-3 hello reply carries, in this order: the event pipe's read
/// end, the write end of the doorbell pipe to the simulator, the read end of the doorbell pipe
/// to the guest, the request channel's memory, the reply channel's memory.
pub const HELLO_PIPES_FDS: u8 = 5;

/// Whether a protocol version has the shared-memory channels.
pub fn has_channels(version: u16) -> bool {
    version == VERSION_CHANNEL || version == VERSION_PIPES
}
/// The most sendvs one sendv_batch request carries.
pub const MAX_WIRE_BATCH: usize = 256;
/// The most iovs a sendv request carries: one more than the hypervisor accepts, which is enough
/// for it to answer `E2BIG` exactly as it would for the caller's longer list.
pub const MAX_WIRE_IOV: usize = abi::MAX_IOV as usize + 1;
/// The most notify entries a request carries, for the same reason.
pub const MAX_WIRE_NOTIFY: usize = abi::MAX_NOTIFY as usize + 1;
/// The most rules a tables_list reply carries.
pub const MAX_WIRE_RULES: usize = abi::MAX_RULES as usize;

/// Set in the kind of every reply.
pub const REPLY_BIT: u16 = 0x8000;
/// The kind of the last frame the simulator sends before it closes a connection whose stream it
/// cannot parse any more (a length past [`MAX_BODY`], too many descriptors). Its body is the
/// `i64` negative errno.
pub const KIND_FATAL: u16 = 0xffff;
/// The largest errno a fatal frame may carry (Linux's `MAX_ERRNO`).
const MAX_FATAL_ERRNO: i32 = 4095;

/// Request kinds. The hypercall ops keep their `V4VOP_*` numbers.
pub mod kind {
    pub const REGISTER_RING: u16 = 1;
    pub const UNREGISTER_RING: u16 = 2;
    pub const NOTIFY: u16 = 4;
    pub const SENDV: u16 = 5;
    pub const INFO: u16 = 6;
    pub const CONFIG: u16 = 7;
    pub const TABLES_ADD: u16 = 8;
    pub const TABLES_DEL: u16 = 9;
    pub const TABLES_LIST: u16 = 10;
    /// Several sendvs in one request (the simulator's multicall); not a `V4VOP_*`.
    pub const SENDV_BATCH: u16 = 11;
    /// Claims a domain id; must be the first request.
    pub const HELLO: u16 = 0x40;
    /// Names the caller's domain (the toolstack's part, modelled: `v4vd --name`).
    pub const NAME_CLAIM: u16 = 0x41;
    /// Reads the name directory: domains' names or the published ones.
    pub const NAMES: u16 = 0x42;
    /// dom0: replaces the published names.
    pub const NAME_PUBLISH: u16 = 0x43;
}

/// `Names { which }`: the domains' own names (dom0 sees all, a guest its own).
pub const NAMES_DOMAINS: u32 = 0;
/// `Names { which }`: the names dom0 published for guests.
pub const NAMES_PUBLISHED: u32 = 1;
/// The most entries a names request or reply carries.
pub const MAX_WIRE_NAMES: usize = 4096;
/// The longest name on the wire (the simulator checks names with [`crate::names::validate`]).
pub const MAX_WIRE_NAME: usize = 255;

/// Sendv flag: the payload bytes are not on the wire. Allowed only when the hypervisor is bound
/// to refuse the send before reading any payload (more than [`abi::MAX_IOV`] iovs, or more than
/// [`abi::MAX_MESSAGE_SIZE`] bytes in all), so that a client never ships gigabytes to be told
/// `EMSGSIZE`.
pub const SENDV_PAYLOAD_ELIDED: u32 = 1;

/// Domid in a hello meaning "any free guest id" (the simulator picks the lowest free id from 1).
pub const CLAIM_ANY: DomId = abi::DOMID_ANY;

/// Errno values of protocol failures that are not the hypervisor's (Linux numbers).
pub mod errno {
    /// Bad frame, unknown kind, or hello version mismatch.
    pub const EPROTO: i32 = 71;
    /// Request before hello, or a second hello.
    pub const ENOTCONN: i32 = 107;
    /// A domid that is already claimed.
    pub const EADDRINUSE: i32 = 98;
    /// A second hello on a connection that has claimed a domid.
    pub const EISCONN: i32 = 106;
    /// The simulator failed internally while serving the request.
    pub const EIO: i32 = 5;
}

/// Why bytes are not a valid frame.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ProtocolError {
    #[error("frame body of {0} bytes exceeds the limit")]
    Oversized(u64),
    #[error("frame truncated: needed {needed} more bytes")]
    Truncated { needed: usize },
    #[error("{0} unexpected bytes after the frame's contents")]
    Trailing(usize),
    #[error("unknown frame kind {0:#x}")]
    UnknownKind(u16),
    #[error("reserved field is not zero")]
    Reserved,
    #[error("bad hello magic {0:#x}")]
    BadMagic(u32),
    #[error("{got} descriptors for a frame that takes {want}")]
    FdCount { got: u8, want: u8 },
    #[error("count {count} exceeds the wire limit {max}")]
    TooMany { count: u64, max: usize },
    #[error("payload of {got} bytes for iovs totalling {want}")]
    PayloadMismatch { got: u64, want: u64 },
    #[error("payload elided although the hypervisor would read it")]
    BadElision,
    #[error("reply kind {got:#x} does not answer request kind {want:#x}")]
    UnexpectedReply { got: u16, want: u16 },
    #[error("fatal frame carries {0}, not a negative errno")]
    BadFatal(i64),
    #[error("batch result {0} is neither a length nor a negative errno")]
    BadResult(i64),
    #[error("channel record of {record} bytes holds a frame of {frame}")]
    RecordLength { record: usize, frame: u64 },
}

impl ProtocolError {
    /// The errno a simulator replies with for a request that fails to decode.
    pub fn errno(&self) -> i32 {
        match self {
            ProtocolError::BadMagic(_) | ProtocolError::UnexpectedReply { .. } => errno::EPROTO,
            ProtocolError::Oversized(_) => abi::errno::EMSGSIZE,
            _ => abi::errno::EINVAL,
        }
    }
}

/// The fixed part of every frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub body_len: u32,
    pub kind: u16,
    pub nfds: u8,
}

impl FrameHeader {
    /// Parses and checks a header: the length within [`MAX_BODY`], at most [`MAX_FDS`]
    /// descriptors, the reserved byte zero. Any failure here is fatal to the connection.
    pub fn parse(b: &[u8; FRAME_HEADER_SIZE]) -> Result<Self, ProtocolError> {
        Self::parse_with(b, MAX_FDS)
    }

    /// [`FrameHeader::parse`] for a reply frame, which may carry up to [`MAX_REPLY_FDS`].
    pub fn parse_reply(b: &[u8; FRAME_HEADER_SIZE]) -> Result<Self, ProtocolError> {
        Self::parse_with(b, MAX_REPLY_FDS)
    }

    fn parse_with(b: &[u8; FRAME_HEADER_SIZE], max_fds: usize) -> Result<Self, ProtocolError> {
        let body_len = Self::check_len_prefix(&[b[0], b[1], b[2], b[3]])?;
        let kind = u16::from_le_bytes([b[4], b[5]]);
        let nfds = b[6];
        if usize::from(nfds) > max_fds {
            return Err(ProtocolError::TooMany {
                count: u64::from(nfds),
                max: max_fds,
            });
        }
        if b[7] != 0 {
            return Err(ProtocolError::Reserved);
        }
        Ok(FrameHeader {
            body_len,
            kind,
            nfds,
        })
    }

    /// Checks a frame's first four bytes, its body length, on their own: a length no frame can
    /// have is fatal before the rest arrives (a text client that wrote `STATUS\n` to the wrong
    /// socket hears so at once, instead of after the hello timeout).
    pub fn check_len_prefix(b: &[u8; 4]) -> Result<u32, ProtocolError> {
        let body_len = u32::from_le_bytes(*b);
        if body_len as usize > MAX_BODY {
            return Err(ProtocolError::Oversized(u64::from(body_len)));
        }
        Ok(body_len)
    }

    pub fn encode(&self) -> [u8; FRAME_HEADER_SIZE] {
        let mut b = [0u8; FRAME_HEADER_SIZE];
        b[0..4].copy_from_slice(&self.body_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.kind.to_le_bytes());
        b[6] = self.nfds;
        b
    }
}

/// Splits one record of a shared-memory channel into the frame it holds: a request's header
/// (checked as [`FrameHeader::parse`] does; `reply` selects [`FrameHeader::parse_reply`]) and
/// exactly the body it announces. A record is a whole frame and passes no descriptors: a header
/// declaring any, or a length other than the record's, is refused.
pub fn split_record(record: &[u8], reply: bool) -> Result<(FrameHeader, &[u8]), ProtocolError> {
    let Some((head, body)) = record.split_first_chunk::<FRAME_HEADER_SIZE>() else {
        return Err(ProtocolError::Truncated {
            needed: FRAME_HEADER_SIZE - record.len(),
        });
    };
    let h = if reply {
        FrameHeader::parse_reply(head)?
    } else {
        FrameHeader::parse(head)?
    };
    if h.body_len as usize != body.len() {
        return Err(ProtocolError::RecordLength {
            record: record.len(),
            frame: FRAME_HEADER_SIZE as u64 + u64::from(h.body_len),
        });
    }
    if h.nfds != 0 {
        return Err(ProtocolError::FdCount {
            got: h.nfds,
            want: 0,
        });
    }
    Ok((h, body))
}

/// One sendv of a request: the iovs' lengths, in order, and their concatenated bytes (`None`
/// when elided, see [`SENDV_PAYLOAD_ELIDED`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendvReq<'a> {
    pub addr: SendAddr,
    pub message_type: u32,
    pub lens: Vec<u32>,
    pub payload: Option<&'a [u8]>,
}

/// A `SENDV` request's body up to its payload, decoded from the start of the body alone: for a
/// server that moves the payload from where the body lies (shared memory) without copying the
/// body first. See [`sendv_meta`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendvMeta {
    pub addr: SendAddr,
    pub message_type: u32,
    pub lens: Vec<u32>,
    /// Where the payload starts in the body.
    pub payload_at: usize,
}

impl SendvMeta {
    /// The payload's length: the iovs' lengths added up.
    pub fn payload_len(&self) -> u64 {
        self.lens.iter().map(|l| u64::from(*l)).sum()
    }
}

/// Decodes a `SENDV` body of `body_len` bytes from `head`, its first bytes (at least up to the
/// payload): checked as [`Request::decode`] checks it, the payload's length included; only a
/// payload sent in full is taken (an elided one is `Ok(None)`: decode the whole body instead).
/// The payload is then `body[meta.payload_at..body_len]`.
pub fn sendv_meta(head: &[u8], body_len: usize) -> Result<Option<SendvMeta>, ProtocolError> {
    let mut r = Reader::new(head);
    let (mut meta, flags) = r.sendv_meta()?;
    if flags & SENDV_PAYLOAD_ELIDED != 0 {
        return Ok(None);
    }
    meta.payload_at = head.len() - r.buf.len();
    let got = body_len.saturating_sub(meta.payload_at) as u64;
    if got != meta.payload_len() {
        return Err(ProtocolError::PayloadMismatch {
            got,
            want: meta.payload_len(),
        });
    }
    Ok(Some(meta))
}

/// A request, decoded. Borrowed from the frame so that a sendv payload is not copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request<'a> {
    /// Claim `domid` ([`CLAIM_ANY`] for any free guest id), speaking `version`.
    Hello {
        version: u16,
        domid: DomId,
    },
    /// With one descriptor: the ring memory. `offset` is the ring header's offset in it.
    RegisterRing {
        offset: u64,
    },
    /// With one descriptor: the ring memory. `offset` is the ring header's offset in it.
    UnregisterRing {
        offset: u64,
    },
    /// The iovs' lengths, in order, and their concatenated bytes (`None` when elided).
    Sendv {
        addr: SendAddr,
        message_type: u32,
        lens: Vec<u32>,
        payload: Option<&'a [u8]>,
    },
    /// `None` is the NULL ring_data.
    Notify {
        entries: Option<Vec<RingDataEnt>>,
    },
    Info,
    Config(Config),
    TablesAdd {
        rule: TablesRule,
        position: u32,
    },
    TablesDel {
        rule: Option<TablesRule>,
        position: u32,
    },
    TablesList {
        start: u32,
        max: u32,
    },
    /// The name the caller's domain goes by, as bytes (the simulator validates it).
    NameClaim {
        name: &'a [u8],
    },
    /// [`NAMES_DOMAINS`] or [`NAMES_PUBLISHED`].
    Names {
        which: u32,
    },
    NamePublish {
        entries: Vec<(DomId, &'a [u8])>,
    },
    /// Several sendvs, each attempted in order whatever became of the ones before.
    SendvBatch(Vec<SendvReq<'a>>),
}

impl Request<'_> {
    pub fn kind(&self) -> u16 {
        match self {
            Request::Hello { .. } => kind::HELLO,
            Request::RegisterRing { .. } => kind::REGISTER_RING,
            Request::UnregisterRing { .. } => kind::UNREGISTER_RING,
            Request::Sendv { .. } => kind::SENDV,
            Request::Notify { .. } => kind::NOTIFY,
            Request::Info => kind::INFO,
            Request::Config(_) => kind::CONFIG,
            Request::TablesAdd { .. } => kind::TABLES_ADD,
            Request::TablesDel { .. } => kind::TABLES_DEL,
            Request::TablesList { .. } => kind::TABLES_LIST,
            Request::NameClaim { .. } => kind::NAME_CLAIM,
            Request::Names { .. } => kind::NAMES,
            Request::NamePublish { .. } => kind::NAME_PUBLISH,
            Request::SendvBatch(_) => kind::SENDV_BATCH,
        }
    }

    /// Descriptors that travel with this request.
    pub fn nfds(&self) -> u8 {
        match self {
            Request::RegisterRing { .. } | Request::UnregisterRing { .. } => 1,
            _ => 0,
        }
    }

    /// Encodes the whole frame (header and body).
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::frame(self.kind(), self.nfds());
        match self {
            Request::Hello { version, domid } => {
                w.u32(HELLO_MAGIC);
                w.u16(*version);
                w.u16(*domid);
            }
            Request::RegisterRing { offset } | Request::UnregisterRing { offset } => w.u64(*offset),
            Request::Sendv {
                addr,
                message_type,
                lens,
                payload,
            } => w.sendv_body(addr, *message_type, lens, *payload),
            Request::SendvBatch(sends) => {
                w.u32(sends.len() as u32);
                w.u32(0);
                for s in sends {
                    let at = w.buf.len();
                    w.u32(0);
                    w.sendv_body(&s.addr, s.message_type, &s.lens, s.payload);
                    let len = (w.buf.len() - at - 4) as u32;
                    w.buf[at..at + 4].copy_from_slice(&len.to_le_bytes());
                }
            }
            Request::Notify { entries } => match entries {
                None => {
                    w.u32(0);
                    w.u32(0);
                }
                Some(e) => {
                    w.u32(1);
                    w.u32(e.len() as u32);
                    for ent in e {
                        w.ring_data_ent(ent);
                    }
                }
            },
            Request::Info => {}
            Request::Config(c) => w.config(c),
            Request::TablesAdd { rule, position } => {
                w.rule(rule);
                w.u32(*position);
            }
            Request::TablesDel { rule, position } => {
                w.u32(u32::from(rule.is_some()));
                w.rule(&rule.unwrap_or_default());
                w.u32(*position);
            }
            Request::TablesList { start, max } => {
                w.u32(*start);
                w.u32(*max);
            }
            Request::NameClaim { name } => w.name(name),
            Request::Names { which } => w.u32(*which),
            Request::NamePublish { entries } => {
                w.u32(entries.len() as u32);
                for (d, n) in entries {
                    w.u16(*d);
                    w.name(n);
                }
            }
        }
        w.finish()
    }

    /// Decodes a request body of kind `kind` that arrived with `nfds` descriptors.
    pub fn decode(kind: u16, nfds: u8, body: &'_ [u8]) -> Result<Request<'_>, ProtocolError> {
        let mut r = Reader::new(body);
        let req = match kind {
            kind::HELLO => {
                let magic = r.u32()?;
                if magic != HELLO_MAGIC {
                    return Err(ProtocolError::BadMagic(magic));
                }
                Request::Hello {
                    version: r.u16()?,
                    domid: r.u16()?,
                }
            }
            kind::REGISTER_RING => Request::RegisterRing { offset: r.u64()? },
            kind::UNREGISTER_RING => Request::UnregisterRing { offset: r.u64()? },
            kind::SENDV => {
                let s = r.sendv_body()?;
                Request::Sendv {
                    addr: s.addr,
                    message_type: s.message_type,
                    lens: s.lens,
                    payload: s.payload,
                }
            }
            kind::SENDV_BATCH => {
                let n = r.u32()?;
                if r.u32()? != 0 {
                    return Err(ProtocolError::Reserved);
                }
                if n as usize > MAX_WIRE_BATCH {
                    return Err(ProtocolError::TooMany {
                        count: u64::from(n),
                        max: MAX_WIRE_BATCH,
                    });
                }
                let mut sends = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    let len = r.u32()?;
                    let mut sub = Reader::new(r.slice(len as usize)?);
                    sends.push(sub.sendv_body()?);
                }
                Request::SendvBatch(sends)
            }
            kind::NOTIFY => {
                let present = r.u32()?;
                let nent = r.u32()?;
                match present {
                    0 if nent == 0 => Request::Notify { entries: None },
                    0 => return Err(ProtocolError::Reserved),
                    1 => {
                        if nent as usize > MAX_WIRE_NOTIFY {
                            return Err(ProtocolError::TooMany {
                                count: u64::from(nent),
                                max: MAX_WIRE_NOTIFY,
                            });
                        }
                        let mut e = Vec::with_capacity(nent as usize);
                        for _ in 0..nent {
                            e.push(r.ring_data_ent()?);
                        }
                        Request::Notify { entries: Some(e) }
                    }
                    _ => return Err(ProtocolError::Reserved),
                }
            }
            kind::INFO => Request::Info,
            kind::CONFIG => Request::Config(r.config()?),
            kind::TABLES_ADD => Request::TablesAdd {
                rule: r.rule()?,
                position: r.u32()?,
            },
            kind::TABLES_DEL => {
                let has = r.u32()?;
                let rule = r.rule()?;
                let position = r.u32()?;
                let rule = match has {
                    0 if rule == TablesRule::default() => None,
                    1 => Some(rule),
                    _ => return Err(ProtocolError::Reserved),
                };
                Request::TablesDel { rule, position }
            }
            kind::TABLES_LIST => Request::TablesList {
                start: r.u32()?,
                max: r.u32()?,
            },
            kind::NAME_CLAIM => Request::NameClaim { name: r.name()? },
            kind::NAMES => match r.u32()? {
                which @ (NAMES_DOMAINS | NAMES_PUBLISHED) => Request::Names { which },
                _ => return Err(ProtocolError::Reserved),
            },
            kind::NAME_PUBLISH => {
                let n = r.count(MAX_WIRE_NAMES)?;
                let mut entries = Vec::with_capacity(n);
                for _ in 0..n {
                    entries.push((r.u16()?, r.name()?));
                }
                Request::NamePublish { entries }
            }
            other => return Err(ProtocolError::UnknownKind(other)),
        };
        r.end()?;
        if nfds != req.nfds() {
            return Err(ProtocolError::FdCount {
                got: nfds,
                want: req.nfds(),
            });
        }
        Ok(req)
    }
}

/// Whether a sendv with these iovs is refused before any payload is read, so its payload may be
/// (and, past the frame limit, must be) left off the wire.
pub fn must_elide(niov: usize, total: u64) -> bool {
    niov > abi::MAX_IOV as usize || total > u64::from(abi::MAX_MESSAGE_SIZE)
}

/// Encodes a sendv request frame straight from the caller's iovs, eliding the payload when the
/// hypervisor must refuse it anyway (see [`must_elide`]); at most [`MAX_WIRE_IOV`] lengths are
/// sent, which keeps the hypervisor's `E2BIG` answer for longer lists.
pub fn encode_sendv(addr: &SendAddr, message_type: u32, iov: &[IoSlice<'_>]) -> Vec<u8> {
    SendvFrame::single(addr, message_type, iov).to_vec()
}

/// Bytes of a sendv body's fixed part: `send_addr`, `message_type`, `niov`, `flags`.
pub const SENDV_FIXED: usize = 28;

/// What one send adds to a sendv_batch body: its length prefix and its sendv body.
pub fn batch_item_len(iov: &[IoSlice<'_>]) -> usize {
    let total: u64 = iov.iter().map(|s| s.len() as u64).sum();
    let sent = iov.len().min(MAX_WIRE_IOV);
    let payload = if must_elide(iov.len(), total) {
        0
    } else {
        total as usize
    };
    4 + SENDV_FIXED + 4 * sent + payload
}

/// Bytes of a sendv_batch frame before its first send.
pub const BATCH_HEAD: usize = FRAME_HEADER_SIZE + 8;

/// A sendv or sendv_batch request frame as a list of parts: the encoded fixed fields, with the
/// caller's iov slices between them, so that payload bytes are copied once, from the caller's
/// buffers to wherever the frame goes (a shared-memory channel takes the parts as they are).
pub struct SendvFrame<'a> {
    meta: Vec<u8>,
    /// In order: where a piece of `meta` ends, and the payload slices that follow it.
    pieces: Vec<(usize, &'a [IoSlice<'a>])>,
    len: usize,
}

impl<'a> SendvFrame<'a> {
    /// A sendv request.
    pub fn single(addr: &SendAddr, message_type: u32, iov: &'a [IoSlice<'a>]) -> Self {
        let mut w = Writer::frame(kind::SENDV, 0);
        let payload = w.sendv_meta(addr, message_type, iov);
        let mut f = SendvFrame {
            len: 0,
            meta: Vec::new(),
            pieces: Vec::new(),
        };
        f.pieces.push((w.buf.len(), payload));
        f.finish(w)
    }

    /// A sendv_batch request of `sends` (at most [`MAX_WIRE_BATCH`], the caller's job).
    pub fn batch(sends: &'a [crate::hypervisor::BatchSend<'a>]) -> Self {
        let mut w = Writer::frame(kind::SENDV_BATCH, 0);
        w.u32(sends.len() as u32);
        w.u32(0);
        let mut f = SendvFrame {
            len: 0,
            meta: Vec::new(),
            pieces: Vec::with_capacity(sends.len()),
        };
        for s in sends {
            w.u32(u32::try_from(batch_item_len(s.iov) - 4).unwrap_or(u32::MAX));
            let payload = w.sendv_meta(&s.addr, s.message_type, s.iov);
            f.pieces.push((w.buf.len(), payload));
        }
        f.finish(w)
    }

    fn finish(mut self, w: Writer) -> Self {
        let payload: usize = self
            .pieces
            .iter()
            .flat_map(|(_, p)| p.iter())
            .map(|s| s.len())
            .sum();
        self.len = w.buf.len() + payload;
        self.meta = w.buf;
        // Oversized bodies are encoded faithfully (the length saturates) and refused by the peer.
        let body = u32::try_from(self.len - FRAME_HEADER_SIZE).unwrap_or(u32::MAX);
        self.meta[0..4].copy_from_slice(&body.to_le_bytes());
        self
    }

    /// Bytes of the whole frame.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the frame is empty (never: it has a header).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The frame's parts, in order.
    pub fn parts(&self) -> Vec<&[u8]> {
        let mut out = Vec::with_capacity(self.pieces.len() * 2);
        let mut at = 0;
        for (end, payload) in &self.pieces {
            out.push(&self.meta[at..*end]);
            out.extend(payload.iter().map(|s| &s[..]));
            at = *end;
        }
        // Whatever follows the last payload (all of it, for an empty batch).
        if at < self.meta.len() {
            out.push(&self.meta[at..]);
        }
        out
    }

    /// The frame as one buffer.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.len);
        for p in self.parts() {
            v.extend_from_slice(p);
        }
        v
    }
}

/// The sizes of a version-2 guest's shared-memory channels (each a [`crate::chan::ChanMemory`]
/// of that capacity, created by the simulator): requests from the guest, replies to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelSizes {
    pub requests: u32,
    pub replies: u32,
}

/// The data of a successful reply, by request kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyData {
    None,
    /// The protocol version the simulator speaks and the domid claimed. One descriptor (the
    /// domain's event descriptor) travels with a successful hello reply.
    /// A version-2 or version-3 hello reply also carries the channels' sizes and more
    /// descriptors (see [`HELLO_CHANNEL_FDS`], [`HELLO_PIPES_FDS`]); `channels` is `Some` exactly
    /// when [`has_channels`] says so of `version`.
    Hello {
        version: u16,
        domid: DomId,
        channels: Option<ChannelSizes>,
    },
    Info(Info),
    /// The notify entries as the hypervisor filled them in.
    Notify(Vec<RingDataEnt>),
    TablesList {
        total: u32,
        rules: Vec<TablesRule>,
    },
    /// The directory's generation (it changes whenever any name does) and the entries asked for.
    Names {
        generation: u64,
        entries: Vec<NameEntry>,
    },
    /// Each sendv's result, in order: the payload length or a negative errno. `ret` is the count.
    Batch(Vec<i64>),
}

/// A reply: the hypervisor's return value (negative errno on failure) and, on success, its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub ret: i64,
    pub data: ReplyData,
}

impl Reply {
    /// A failure with a positive `errno`.
    pub fn error(errno: i32) -> Self {
        Reply {
            ret: -i64::from(errno),
            data: ReplyData::None,
        }
    }

    pub fn ok(ret: i64, data: ReplyData) -> Self {
        Reply { ret, data }
    }

    /// Descriptors that travel with this reply to a request of kind `req_kind`: only a
    /// successful hello's (1, or [`HELLO_CHANNEL_FDS`] or [`HELLO_PIPES_FDS`] with channels).
    pub fn nfds(&self, req_kind: u16) -> u8 {
        match &self.data {
            _ if req_kind != kind::HELLO || self.ret < 0 => 0,
            ReplyData::Hello {
                version: VERSION_PIPES,
                channels: Some(_),
                ..
            } => HELLO_PIPES_FDS,
            ReplyData::Hello {
                channels: Some(_), ..
            } => HELLO_CHANNEL_FDS,
            _ => 1,
        }
    }

    /// Encodes the reply to a request of kind `req_kind`.
    pub fn encode(&self, req_kind: u16) -> Vec<u8> {
        let mut w = Writer::frame(req_kind | REPLY_BIT, self.nfds(req_kind));
        w.i64(self.ret);
        match &self.data {
            ReplyData::None => {}
            ReplyData::Hello {
                version,
                domid,
                channels,
            } => {
                w.u16(*version);
                w.u16(*domid);
                w.u32(0);
                if let Some(c) = channels {
                    w.u32(c.requests);
                    w.u32(c.replies);
                }
            }
            ReplyData::Batch(results) => {
                for r in results {
                    w.i64(*r);
                }
            }
            ReplyData::Info(i) => w.info(i),
            ReplyData::Notify(e) => {
                w.u32(e.len() as u32);
                for ent in e {
                    w.ring_data_ent(ent);
                }
            }
            ReplyData::TablesList { total, rules } => {
                w.u32(*total);
                w.u32(rules.len() as u32);
                for r in rules {
                    w.rule(r);
                }
            }
            ReplyData::Names {
                generation,
                entries,
            } => {
                w.u64(*generation);
                w.u32(entries.len() as u32);
                for e in entries {
                    w.u16(e.domid);
                    w.name(e.name.as_bytes());
                }
            }
        }
        w.finish()
    }

    /// Decodes the reply frame `(kind, nfds, body)` to a request of kind `req_kind`.
    pub fn decode(req_kind: u16, kind: u16, nfds: u8, body: &[u8]) -> Result<Reply, ProtocolError> {
        let mut r = Reader::new(body);
        if kind == KIND_FATAL {
            let ret = r.i64()?;
            r.end()?;
            // Only a failure may be fatal: a value that is no errno would read as a success.
            return match ret.checked_neg().and_then(|e| i32::try_from(e).ok()) {
                Some(e) if (1..=MAX_FATAL_ERRNO).contains(&e) => Ok(Reply::error(e)),
                _ => Err(ProtocolError::BadFatal(ret)),
            };
        }
        if kind != req_kind | REPLY_BIT {
            return Err(ProtocolError::UnexpectedReply {
                got: kind,
                want: req_kind | REPLY_BIT,
            });
        }
        let ret = r.i64()?;
        if ret < 0 {
            r.end()?;
            let reply = Reply {
                ret,
                data: ReplyData::None,
            };
            reply.check_fds(req_kind, nfds)?;
            return Ok(reply);
        }
        let data = match req_kind {
            kind::HELLO => {
                let version = r.u16()?;
                let domid = r.u16()?;
                if r.u32()? != 0 {
                    return Err(ProtocolError::Reserved);
                }
                let channels = if has_channels(version) {
                    Some(ChannelSizes {
                        requests: r.u32()?,
                        replies: r.u32()?,
                    })
                } else {
                    None
                };
                ReplyData::Hello {
                    version,
                    domid,
                    channels,
                }
            }
            kind::SENDV_BATCH => {
                if ret as u64 > MAX_WIRE_BATCH as u64 {
                    return Err(ProtocolError::TooMany {
                        count: ret as u64,
                        max: MAX_WIRE_BATCH,
                    });
                }
                let mut results = Vec::with_capacity(ret as usize);
                for _ in 0..ret {
                    let v = r.i64()?;
                    let errno_ok = v
                        .checked_neg()
                        .is_some_and(|e| (1..=i64::from(MAX_FATAL_ERRNO)).contains(&e));
                    if !(0..=i64::from(u32::MAX)).contains(&v) && !errno_ok {
                        return Err(ProtocolError::BadResult(v));
                    }
                    results.push(v);
                }
                ReplyData::Batch(results)
            }
            kind::INFO => ReplyData::Info(r.info()?),
            kind::NOTIFY if !r.rest_is_empty() => {
                let n = r.count(MAX_WIRE_NOTIFY)?;
                let mut e = Vec::with_capacity(n);
                for _ in 0..n {
                    e.push(r.ring_data_ent()?);
                }
                ReplyData::Notify(e)
            }
            kind::TABLES_LIST => {
                let total = r.u32()?;
                let n = r.count(MAX_WIRE_RULES)?;
                let mut rules = Vec::with_capacity(n);
                for _ in 0..n {
                    rules.push(r.rule()?);
                }
                ReplyData::TablesList { total, rules }
            }
            kind::NAMES => {
                let generation = r.u64()?;
                let n = r.count(MAX_WIRE_NAMES)?;
                let mut entries = Vec::with_capacity(n);
                for _ in 0..n {
                    let domid = r.u16()?;
                    let name = std::str::from_utf8(r.name()?)
                        .map_err(|_| ProtocolError::Reserved)?
                        .to_string();
                    entries.push(NameEntry { domid, name });
                }
                ReplyData::Names {
                    generation,
                    entries,
                }
            }
            _ => ReplyData::None,
        };
        r.end()?;
        let reply = Reply { ret, data };
        reply.check_fds(req_kind, nfds)?;
        Ok(reply)
    }

    fn check_fds(&self, req_kind: u16, nfds: u8) -> Result<(), ProtocolError> {
        let want = self.nfds(req_kind);
        if nfds != want {
            return Err(ProtocolError::FdCount { got: nfds, want });
        }
        Ok(())
    }
}

struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    fn frame(kind: u16, nfds: u8) -> Self {
        let mut buf = Vec::with_capacity(64);
        buf.extend_from_slice(
            &FrameHeader {
                body_len: 0,
                kind,
                nfds,
            }
            .encode(),
        );
        Writer { buf }
    }

    fn finish(mut self) -> Vec<u8> {
        // Oversized bodies are encoded faithfully (the length saturates) and refused by the peer.
        let len = u32::try_from(self.buf.len() - FRAME_HEADER_SIZE).unwrap_or(u32::MAX);
        self.buf[0..4].copy_from_slice(&len.to_le_bytes());
        self.buf
    }

    fn bytes(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
    }
    /// A sendv body from decoded fields.
    fn sendv_body(
        &mut self,
        addr: &SendAddr,
        message_type: u32,
        lens: &[u32],
        payload: Option<&[u8]>,
    ) {
        self.send_addr(addr);
        self.u32(message_type);
        self.u32(lens.len() as u32);
        self.u32(if payload.is_some() {
            0
        } else {
            SENDV_PAYLOAD_ELIDED
        });
        for l in lens {
            self.u32(*l);
        }
        if let Some(p) = payload {
            self.bytes(p);
        }
    }
    /// A sendv body's fixed part and lengths for the caller's iovs; returns the iovs whose bytes
    /// follow (none when elided).
    fn sendv_meta<'a>(
        &mut self,
        addr: &SendAddr,
        message_type: u32,
        iov: &'a [IoSlice<'a>],
    ) -> &'a [IoSlice<'a>] {
        let total: u64 = iov.iter().map(|s| s.len() as u64).sum();
        let elide = must_elide(iov.len(), total);
        let sent = &iov[..iov.len().min(MAX_WIRE_IOV)];
        self.send_addr(addr);
        self.u32(message_type);
        self.u32(sent.len() as u32);
        self.u32(if elide { SENDV_PAYLOAD_ELIDED } else { 0 });
        for s in sent {
            // Lengths past u32 can only occur when eliding (the total is then past the limit).
            self.u32(u32::try_from(s.len()).unwrap_or(u32::MAX));
        }
        if elide { &[] } else { sent }
    }
    fn u16(&mut self, v: u16) {
        self.bytes(&v.to_le_bytes());
    }
    /// A name: `u16` length and the bytes (cut at [`MAX_WIRE_NAME`]).
    fn name(&mut self, n: &[u8]) {
        let n = &n[..n.len().min(MAX_WIRE_NAME)];
        self.u16(n.len() as u16);
        self.bytes(n);
    }
    fn u32(&mut self, v: u32) {
        self.bytes(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.bytes(&v.to_le_bytes());
    }
    fn i64(&mut self, v: i64) {
        self.bytes(&v.to_le_bytes());
    }
    fn addr(&mut self, a: &Addr) {
        self.u32(a.port);
        self.u16(a.domain);
        self.u16(a.pad);
    }
    fn send_addr(&mut self, a: &SendAddr) {
        self.addr(&a.src);
        self.addr(&a.dst);
    }
    fn ring_data_ent(&mut self, e: &RingDataEnt) {
        self.addr(&e.ring);
        self.u16(e.flags);
        self.u16(e.pad);
        self.u32(e.space_required);
        self.u32(e.max_message_size);
    }
    fn config(&mut self, c: &Config) {
        self.u16(c.domain);
        self.u16(c.pad);
        self.u32(c.max_rings);
        self.u32(c.max_ring_pages);
    }
    fn rule(&mut self, r: &TablesRule) {
        self.addr(&r.src);
        self.addr(&r.dst);
        self.u32(r.accept);
    }
    fn info(&mut self, i: &Info) {
        self.u64(i.ring_magic);
        self.u64(i.data_magic);
        self.u32(i.evtchn);
        self.u16(i.domid);
        self.u16(i.pad);
        for v in [
            i.max_rings,
            i.nr_rings,
            i.max_ring_len,
            i.max_iov,
            i.max_notify,
            i.max_waiters,
            i.max_message_size,
            i.max_rules,
            i.max_ring_pages,
            i.nr_ring_pages,
        ] {
            self.u32(v);
        }
    }
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    fn take<const N: usize>(&mut self) -> Result<[u8; N], ProtocolError> {
        match self.buf.split_first_chunk::<N>() {
            Some((head, rest)) => {
                self.buf = rest;
                Ok(*head)
            }
            None => Err(ProtocolError::Truncated {
                needed: N - self.buf.len(),
            }),
        }
    }
    fn name(&mut self) -> Result<&'a [u8], ProtocolError> {
        let n = usize::from(self.u16()?);
        if n > MAX_WIRE_NAME {
            return Err(ProtocolError::TooMany {
                count: n as u64,
                max: MAX_WIRE_NAME,
            });
        }
        if self.buf.len() < n {
            return Err(ProtocolError::Truncated {
                needed: n - self.buf.len(),
            });
        }
        let (b, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(b)
    }
    fn u16(&mut self) -> Result<u16, ProtocolError> {
        Ok(u16::from_le_bytes(self.take()?))
    }
    /// A `u32` count of what follows, at most `max`.
    fn count(&mut self, max: usize) -> Result<usize, ProtocolError> {
        let n = self.u32()?;
        if n as usize > max {
            return Err(ProtocolError::TooMany {
                count: u64::from(n),
                max,
            });
        }
        Ok(n as usize)
    }
    fn u32(&mut self) -> Result<u32, ProtocolError> {
        Ok(u32::from_le_bytes(self.take()?))
    }
    fn u64(&mut self) -> Result<u64, ProtocolError> {
        Ok(u64::from_le_bytes(self.take()?))
    }
    fn i64(&mut self) -> Result<i64, ProtocolError> {
        Ok(i64::from_le_bytes(self.take()?))
    }
    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }
    fn slice(&mut self, n: usize) -> Result<&'a [u8], ProtocolError> {
        if n > self.buf.len() {
            return Err(ProtocolError::Truncated {
                needed: n - self.buf.len(),
            });
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
    /// A sendv body's fixed part and iov lengths, up to its payload: the meta, its flags.
    fn sendv_meta(&mut self) -> Result<(SendvMeta, u32), ProtocolError> {
        let addr = self.send_addr()?;
        let message_type = self.u32()?;
        let niov = self.u32()?;
        let flags = self.u32()?;
        if flags & !SENDV_PAYLOAD_ELIDED != 0 {
            return Err(ProtocolError::Reserved);
        }
        if niov as usize > MAX_WIRE_IOV {
            return Err(ProtocolError::TooMany {
                count: u64::from(niov),
                max: MAX_WIRE_IOV,
            });
        }
        let mut lens = Vec::with_capacity(niov as usize);
        for _ in 0..niov {
            lens.push(self.u32()?);
        }
        let meta = SendvMeta {
            addr,
            message_type,
            lens,
            payload_at: 0,
        };
        Ok((meta, flags))
    }

    /// A whole sendv body: the rest of the reader.
    fn sendv_body(&mut self) -> Result<SendvReq<'a>, ProtocolError> {
        let (meta, flags) = self.sendv_meta()?;
        let total = meta.payload_len();
        let payload = if flags & SENDV_PAYLOAD_ELIDED != 0 {
            if !must_elide(meta.lens.len(), total) {
                return Err(ProtocolError::BadElision);
            }
            self.end()?;
            None
        } else {
            let rest = self.rest();
            if rest.len() as u64 != total {
                return Err(ProtocolError::PayloadMismatch {
                    got: rest.len() as u64,
                    want: total,
                });
            }
            Some(rest)
        };
        Ok(SendvReq {
            addr: meta.addr,
            message_type: meta.message_type,
            lens: meta.lens,
            payload,
        })
    }
    fn rest_is_empty(&self) -> bool {
        self.buf.is_empty()
    }
    fn end(&self) -> Result<(), ProtocolError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(ProtocolError::Trailing(self.buf.len()))
        }
    }
    fn addr(&mut self) -> Result<Addr, ProtocolError> {
        Ok(Addr {
            port: self.u32()?,
            domain: self.u16()?,
            pad: self.u16()?,
        })
    }
    fn send_addr(&mut self) -> Result<SendAddr, ProtocolError> {
        Ok(SendAddr {
            src: self.addr()?,
            dst: self.addr()?,
        })
    }
    fn ring_data_ent(&mut self) -> Result<RingDataEnt, ProtocolError> {
        Ok(RingDataEnt {
            ring: self.addr()?,
            flags: self.u16()?,
            pad: self.u16()?,
            space_required: self.u32()?,
            max_message_size: self.u32()?,
        })
    }
    fn config(&mut self) -> Result<Config, ProtocolError> {
        Ok(Config {
            domain: self.u16()?,
            pad: self.u16()?,
            max_rings: self.u32()?,
            max_ring_pages: self.u32()?,
        })
    }
    fn rule(&mut self) -> Result<TablesRule, ProtocolError> {
        Ok(TablesRule {
            src: self.addr()?,
            dst: self.addr()?,
            accept: self.u32()?,
        })
    }
    fn info(&mut self) -> Result<Info, ProtocolError> {
        Ok(Info {
            ring_magic: self.u64()?,
            data_magic: self.u64()?,
            evtchn: self.u32()?,
            domid: self.u16()?,
            pad: self.u16()?,
            max_rings: self.u32()?,
            nr_rings: self.u32()?,
            max_ring_len: self.u32()?,
            max_iov: self.u32()?,
            max_notify: self.u32()?,
            max_waiters: self.u32()?,
            max_message_size: self.u32()?,
            max_rules: self.u32()?,
            max_ring_pages: self.u32()?,
            nr_ring_pages: self.u32()?,
        })
    }
}

/// Descriptor passing over a Unix socket (`SCM_RIGHTS`), for both ends of the protocol.
pub mod fdpass {
    use std::io;
    use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

    /// The most descriptors one `recvmsg` accepts; more sets `truncated` (the kernel closes the
    /// excess).
    pub const RECV_MAX_FDS: usize = super::MAX_REPLY_FDS;
    const CMSG_BUF_WORDS: usize = 16;

    /// What one `recvmsg` returned.
    #[derive(Debug)]
    pub struct Received {
        /// Bytes read into the buffer; 0 means end of stream.
        pub len: usize,
        /// Descriptors received with them, close-on-exec.
        pub fds: Vec<OwnedFd>,
        /// The peer sent more descriptors than [`RECV_MAX_FDS`] (`MSG_CTRUNC`).
        pub truncated: bool,
    }

    /// One `sendmsg` of `data` with `fds` attached (none when empty). Returns the bytes sent,
    /// which may be fewer than `data.len()` on a stream socket; the descriptors go with the
    /// first byte. Never raises `SIGPIPE`.
    pub fn send(
        sock: BorrowedFd<'_>,
        data: &[u8],
        fds: &[BorrowedFd<'_>],
        nonblocking: bool,
    ) -> io::Result<usize> {
        if fds.len() > RECV_MAX_FDS {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let mut cbuf = [0u64; CMSG_BUF_WORDS];
        let mut iov = libc::iovec {
            iov_base: data.as_ptr() as *mut libc::c_void,
            iov_len: data.len(),
        };
        // SAFETY: msghdr is plain data; all-zero is a valid empty value.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if !fds.is_empty() {
            let bytes = size_of::<RawFd>() * fds.len();
            // SAFETY: CMSG_SPACE only computes a size.
            let space = unsafe { libc::CMSG_SPACE(bytes as u32) } as usize;
            debug_assert!(space <= size_of_val(&cbuf));
            msg.msg_control = cbuf.as_mut_ptr().cast();
            msg.msg_controllen = space;
            // SAFETY: msg_control points at `space` bytes of 8-aligned, zeroed buffer, enough for
            // one header and `bytes` of data, so CMSG_FIRSTHDR is non-null and CMSG_DATA is in
            // bounds for `fds.len()` ints.
            unsafe {
                let c = libc::CMSG_FIRSTHDR(&msg);
                (*c).cmsg_level = libc::SOL_SOCKET;
                (*c).cmsg_type = libc::SCM_RIGHTS;
                (*c).cmsg_len = libc::CMSG_LEN(bytes as u32) as usize;
                let p = libc::CMSG_DATA(c).cast::<RawFd>();
                for (i, fd) in fds.iter().enumerate() {
                    p.add(i).write_unaligned(fd.as_raw_fd());
                }
            }
        }
        let flags = libc::MSG_NOSIGNAL | if nonblocking { libc::MSG_DONTWAIT } else { 0 };
        loop {
            // SAFETY: msg points at a live iovec and control buffer for the duration of the call.
            let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, flags) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// One `recvmsg` into `buf`, collecting any descriptors (close-on-exec).
    pub fn recv(sock: BorrowedFd<'_>, buf: &mut [u8], nonblocking: bool) -> io::Result<Received> {
        let mut cbuf = [0u64; CMSG_BUF_WORDS];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: msghdr is plain data; all-zero is a valid empty value.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        // SAFETY: CMSG_SPACE only computes a size.
        let space =
            unsafe { libc::CMSG_SPACE((RECV_MAX_FDS * size_of::<RawFd>()) as u32) } as usize;
        msg.msg_controllen = space.min(size_of_val(&cbuf));
        let flags = libc::MSG_CMSG_CLOEXEC | if nonblocking { libc::MSG_DONTWAIT } else { 0 };
        let n = loop {
            // SAFETY: msg points at live buffers of the lengths it states.
            let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, flags) };
            if n >= 0 {
                break n as usize;
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        };
        let mut fds = Vec::new();
        // SAFETY: the kernel filled msg_control with msg_controllen bytes of well-formed control
        // messages; CMSG_FIRSTHDR/CMSG_NXTHDR stay within them and return null at the end.
        let mut c = unsafe { libc::CMSG_FIRSTHDR(&msg) };
        while !c.is_null() {
            // SAFETY: c is a non-null header within the control buffer (see above).
            let (level, ty, len) = unsafe { ((*c).cmsg_level, (*c).cmsg_type, (*c).cmsg_len) };
            if level == libc::SOL_SOCKET && ty == libc::SCM_RIGHTS {
                // SAFETY: CMSG_LEN only computes a size.
                let hdr = unsafe { libc::CMSG_LEN(0) } as usize;
                let count = len.saturating_sub(hdr) / size_of::<RawFd>();
                // SAFETY: CMSG_DATA of a header in the buffer points at its `len - hdr` data bytes.
                let p = unsafe { libc::CMSG_DATA(c) }.cast::<RawFd>();
                for i in 0..count {
                    // SAFETY: i < count, so the int lies within this message's data; the kernel
                    // installed each descriptor for us and nothing else owns it.
                    fds.push(unsafe { OwnedFd::from_raw_fd(p.add(i).read_unaligned()) });
                }
            }
            // SAFETY: as for CMSG_FIRSTHDR.
            c = unsafe { libc::CMSG_NXTHDR(&msg, c) };
        }
        Ok(Received {
            len: n,
            fds,
            truncated: msg.msg_flags & libc::MSG_CTRUNC != 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn split(frame: &[u8]) -> (FrameHeader, &[u8]) {
        let (h, body) = frame.split_first_chunk::<FRAME_HEADER_SIZE>().unwrap();
        let h = FrameHeader::parse(h).unwrap();
        assert_eq!(h.body_len as usize, body.len());
        (h, body)
    }

    fn round_trip(req: Request<'_>) {
        let frame = req.encode();
        let (h, body) = split(&frame);
        assert_eq!(h.kind, req.kind());
        assert_eq!(Request::decode(h.kind, h.nfds, body).unwrap(), req);
    }

    #[test]
    fn an_impossible_length_prefix_is_fatal_on_its_own() {
        // What a v4vd client writes first ("STATUS\n", "DGRAM 0\n") is never a length.
        for text in [b"STAT", b"DGRA", b"ACL ", b"VERS"] {
            assert!(FrameHeader::check_len_prefix(text).is_err());
        }
        let ok = u32::try_from(MAX_BODY).unwrap().to_le_bytes();
        assert_eq!(FrameHeader::check_len_prefix(&ok), Ok(MAX_BODY as u32));
    }

    #[test]
    fn requests_round_trip() {
        let a = Addr {
            port: 7,
            domain: 3,
            pad: 9,
        };
        let rule = TablesRule {
            src: a,
            dst: Addr::new(1, 2),
            accept: 1,
        };
        round_trip(Request::Hello {
            version: VERSION,
            domid: 5,
        });
        round_trip(Request::RegisterRing { offset: 4096 });
        round_trip(Request::UnregisterRing { offset: u64::MAX });
        round_trip(Request::Sendv {
            addr: SendAddr {
                src: a,
                dst: Addr::new(2, 1),
            },
            message_type: abi::PROTO_DGRAM,
            lens: vec![1, 0, 3],
            payload: Some(b"abcd"),
        });
        round_trip(Request::Sendv {
            addr: SendAddr::default(),
            message_type: 0,
            lens: vec![u32::MAX],
            payload: None,
        });
        round_trip(Request::Notify { entries: None });
        round_trip(Request::Notify {
            entries: Some(vec![RingDataEnt {
                ring: a,
                space_required: 5,
                ..Default::default()
            }]),
        });
        round_trip(Request::Info);
        round_trip(Request::Config(Config {
            domain: 4,
            pad: 1,
            max_rings: 9,
            max_ring_pages: 77,
        }));
        round_trip(Request::TablesAdd { rule, position: 3 });
        round_trip(Request::TablesDel {
            rule: Some(rule),
            position: 0,
        });
        round_trip(Request::TablesDel {
            rule: None,
            position: abi::TABLES_DEL_ALL,
        });
        round_trip(Request::TablesList {
            start: 1,
            max: 1024,
        });
    }

    #[test]
    fn replies_round_trip() {
        let cases = [
            (
                kind::HELLO,
                Reply::ok(
                    0,
                    ReplyData::Hello {
                        version: 1,
                        domid: 3,
                        channels: None,
                    },
                ),
            ),
            (kind::HELLO, Reply::error(errno::EADDRINUSE)),
            (kind::SENDV, Reply::ok(77, ReplyData::None)),
            (
                kind::INFO,
                Reply::ok(
                    0,
                    ReplyData::Info(Info {
                        domid: 4,
                        ..Default::default()
                    }),
                ),
            ),
            (
                kind::NOTIFY,
                Reply::ok(0, ReplyData::Notify(vec![RingDataEnt::default(); 3])),
            ),
            (kind::NOTIFY, Reply::ok(0, ReplyData::None)),
            (
                kind::TABLES_LIST,
                Reply::ok(
                    2,
                    ReplyData::TablesList {
                        total: 2,
                        rules: vec![TablesRule::default()],
                    },
                ),
            ),
            (kind::REGISTER_RING, Reply::error(abi::errno::EFAULT)),
        ];
        for (k, reply) in cases {
            let frame = reply.encode(k);
            let (h, body) = split(&frame);
            assert_eq!(Reply::decode(k, h.kind, h.nfds, body).unwrap(), reply);
        }
    }

    #[test]
    fn sendv_elides_only_what_the_hypervisor_refuses() {
        let a = SendAddr::default();
        let data = [0u8; 8];
        let many: Vec<IoSlice<'_>> = (0..300).map(|_| IoSlice::new(&data)).collect();
        let frame = encode_sendv(&a, 1, &many);
        let (h, body) = split(&frame);
        match Request::decode(h.kind, h.nfds, body).unwrap() {
            Request::Sendv { lens, payload, .. } => {
                assert_eq!(lens.len(), MAX_WIRE_IOV);
                assert_eq!(payload, None);
            }
            other => panic!("{other:?}"),
        }
        let frame = encode_sendv(&a, 1, &many[..2]);
        let (h, body) = split(&frame);
        assert!(matches!(
            Request::decode(h.kind, h.nfds, body).unwrap(),
            Request::Sendv { payload: Some(p), .. } if p.len() == 16
        ));
        // An elided payload the hypervisor would read is refused.
        let bad = Request::Sendv {
            addr: a,
            message_type: 0,
            lens: vec![4],
            payload: None,
        };
        let frame = bad.encode();
        let (h, body) = split(&frame);
        assert_eq!(
            Request::decode(h.kind, h.nfds, body),
            Err(ProtocolError::BadElision)
        );
    }

    /// `sendv_meta` reads from the start of a body what `Request::decode` reads from all of it,
    /// and refuses what decode refuses: a payload of another length, a head cut short, reserved
    /// flags; an elided payload is left to decode.
    #[test]
    fn sendv_meta_agrees_with_decode_from_the_head_alone() {
        let addr = SendAddr {
            src: Addr::new(3, 9),
            dst: Addr::new(7, 1234),
        };
        let data: Vec<u8> = (0..5000u32).map(|i| (i * 7) as u8).collect();
        for cuts in [&[][..], &[0][..], &[100, 4000][..], &[1, 2, 3, 4999][..]] {
            let mut iov = Vec::new();
            let mut prev = 0;
            for &c in cuts.iter().chain(&[data.len()]) {
                iov.push(IoSlice::new(&data[prev..c]));
                prev = c;
            }
            let frame = encode_sendv(&addr, 0x11, &iov);
            let (h, body) = split(&frame);
            let Request::Sendv {
                addr: a,
                message_type,
                lens,
                payload: Some(payload),
            } = Request::decode(h.kind, h.nfds, body).unwrap()
            else {
                panic!("not a sendv with its payload");
            };
            let head = &body[..SENDV_FIXED + 4 * lens.len()];
            let meta = sendv_meta(head, body.len()).unwrap().expect("not elided");
            assert_eq!((meta.addr, meta.message_type), (a, message_type));
            assert_eq!(meta.lens, lens);
            assert_eq!(&body[meta.payload_at..], payload);
            // Any longer prefix gives the same.
            assert_eq!(
                sendv_meta(&body[..head.len() + 10], body.len()),
                Ok(Some(meta))
            );
            // A body of another length; a head cut short.
            assert!(matches!(
                sendv_meta(head, body.len() - 1),
                Err(ProtocolError::PayloadMismatch { .. })
            ));
            assert!(matches!(
                sendv_meta(&head[..head.len() - 1], body.len()),
                Err(ProtocolError::Truncated { .. })
            ));
        }
        let mut reserved = encode_sendv(&addr, 0, &[IoSlice::new(&data[..8])]);
        reserved[FRAME_HEADER_SIZE + 24] = 0x80;
        let body = &reserved[FRAME_HEADER_SIZE..];
        assert_eq!(sendv_meta(body, body.len()), Err(ProtocolError::Reserved));
        let many: Vec<IoSlice<'_>> = (0..300).map(|_| IoSlice::new(&data[..8])).collect();
        let elided = encode_sendv(&addr, 0, &many);
        let body = &elided[FRAME_HEADER_SIZE..];
        assert_eq!(sendv_meta(body, body.len()), Ok(None));
    }

    #[test]
    fn bad_frames_are_refused() {
        assert!(FrameHeader::parse(&[0xff, 0xff, 0xff, 0xff, 1, 0, 0, 0]).is_err());
        assert!(FrameHeader::parse(&[0, 0, 0, 0, 1, 0, 2, 0]).is_err());
        assert!(FrameHeader::parse(&[0, 0, 0, 0, 1, 0, 0, 1]).is_err());
        assert_eq!(
            Request::decode(0x1234, 0, &[]),
            Err(ProtocolError::UnknownKind(0x1234))
        );
        assert!(Request::decode(kind::INFO, 0, &[0]).is_err());
        assert!(Request::decode(kind::INFO, 1, &[]).is_err());
        assert!(Request::decode(kind::REGISTER_RING, 0, &[0; 8]).is_err());
        assert!(Request::decode(kind::REGISTER_RING, 1, &[0; 7]).is_err());
    }

    /// Found by the `sim_protocol` fuzz target: a fatal frame carrying a non-negative value was
    /// decoded as a successful reply (ret 10 to INFO, with no info in it), and `i64::MIN`
    /// overflowed its negation (a panic in a debug build).
    #[test]
    fn a_fatal_frame_is_a_failure_or_refused() {
        for v in [10i64, 0, -5000, i64::MIN] {
            let body = v.to_le_bytes();
            assert_eq!(
                Reply::decode(kind::INFO, KIND_FATAL, 0, &body),
                Err(ProtocolError::BadFatal(v)),
                "{v}"
            );
        }
        let body = (-i64::from(abi::errno::EPERM)).to_le_bytes();
        assert_eq!(
            Reply::decode(kind::INFO, KIND_FATAL, 0, &body),
            Ok(Reply::error(abi::errno::EPERM))
        );
    }

    #[test]
    fn batches_round_trip_and_match_the_parts_encoder() {
        let a = SendAddr {
            src: Addr::new(abi::DOMID_SELF, 1),
            dst: Addr::new(2, 3),
        };
        let data = [7u8; 10];
        let one = [IoSlice::new(&data[..4]), IoSlice::new(&data[4..])];
        let many: Vec<IoSlice<'_>> = (0..200).map(|_| IoSlice::new(&data)).collect();
        let sends = [
            crate::hypervisor::BatchSend {
                addr: a,
                iov: &one,
                message_type: 5,
            },
            crate::hypervisor::BatchSend {
                addr: a,
                iov: &many,
                message_type: 6,
            },
        ];
        let frame = SendvFrame::batch(&sends);
        let bytes = frame.to_vec();
        assert_eq!(bytes.len(), frame.len());
        assert_eq!(
            bytes.len(),
            BATCH_HEAD + sends.iter().map(|s| batch_item_len(s.iov)).sum::<usize>()
        );
        let (h, body) = split_record(&bytes, false).unwrap();
        let req = Request::decode(h.kind, h.nfds, body).unwrap();
        let want = Request::SendvBatch(vec![
            SendvReq {
                addr: a,
                message_type: 5,
                lens: vec![4, 6],
                payload: Some(&data[..]),
            },
            SendvReq {
                addr: a,
                message_type: 6,
                lens: vec![10; MAX_WIRE_IOV],
                payload: None,
            },
        ]);
        assert_eq!(req, want);
        assert_eq!(want.encode(), bytes);
        round_trip(Request::SendvBatch(Vec::new()));
        // The single sendv from parts is the frame encode_sendv always made.
        let single = SendvFrame::single(&a, 5, &one);
        assert_eq!(single.parts().len(), 3);
        assert_eq!(
            single.to_vec(),
            Request::Sendv {
                addr: a,
                message_type: 5,
                lens: vec![4, 6],
                payload: Some(&data[..]),
            }
            .encode()
        );
    }

    #[test]
    fn bad_batches_and_records_are_refused() {
        let mut body = Vec::new();
        body.extend_from_slice(&(MAX_WIRE_BATCH as u32 + 1).to_le_bytes());
        body.extend_from_slice(&0u32.to_le_bytes());
        assert!(matches!(
            Request::decode(kind::SENDV_BATCH, 0, &body),
            Err(ProtocolError::TooMany { .. })
        ));
        // A sub-request longer than what is left.
        let mut body = 1u32.to_le_bytes().to_vec();
        body.extend_from_slice(&0u32.to_le_bytes());
        body.extend_from_slice(&1000u32.to_le_bytes());
        body.extend_from_slice(&[0; 28]);
        assert!(matches!(
            Request::decode(kind::SENDV_BATCH, 0, &body),
            Err(ProtocolError::Truncated { .. })
        ));
        // Reserved word.
        let body = [0, 0, 0, 0, 1, 0, 0, 0];
        assert_eq!(
            Request::decode(kind::SENDV_BATCH, 0, &body),
            Err(ProtocolError::Reserved)
        );
        // Records: too short, a length that disagrees, a descriptor.
        assert!(split_record(&[0; 7], false).is_err());
        let mut rec = Request::Info.encode();
        rec.push(0);
        assert!(matches!(
            split_record(&rec, false),
            Err(ProtocolError::RecordLength { .. })
        ));
        let mut rec = Request::Info.encode();
        rec[6] = 1;
        assert!(matches!(
            split_record(&rec, false),
            Err(ProtocolError::FdCount { .. })
        ));
        // Results that are neither lengths nor errnos.
        for bad in [-4096i64, i64::MIN, 1 << 32] {
            let frame = Reply::ok(1, ReplyData::Batch(vec![bad])).encode(kind::SENDV_BATCH);
            let (h, body) = split_record(&frame, true).unwrap();
            assert_eq!(
                Reply::decode(kind::SENDV_BATCH, h.kind, 0, body),
                Err(ProtocolError::BadResult(bad))
            );
        }
    }

    #[test]
    fn a_version_2_hello_reply_carries_the_channels() {
        let reply = Reply::ok(
            0,
            ReplyData::Hello {
                version: VERSION_CHANNEL,
                domid: 4,
                channels: Some(ChannelSizes {
                    requests: 1 << 20,
                    replies: 1 << 17,
                }),
            },
        );
        let frame = reply.encode(kind::HELLO);
        let head = frame.first_chunk::<FRAME_HEADER_SIZE>().unwrap();
        // Four descriptors: more than a request may declare.
        assert!(FrameHeader::parse(head).is_err());
        let h = FrameHeader::parse_reply(head).unwrap();
        assert_eq!(h.nfds, HELLO_CHANNEL_FDS);
        let body = &frame[FRAME_HEADER_SIZE..];
        assert_eq!(Reply::decode(kind::HELLO, h.kind, h.nfds, body), Ok(reply));
        // The wrong number of descriptors for the version is refused.
        assert!(Reply::decode(kind::HELLO, h.kind, 1, body).is_err());
    }

    fn arb_sendv() -> impl Strategy<Value = (SendAddr, u32, Vec<Vec<u8>>)> {
        (
            any::<[u16; 6]>(),
            any::<u32>(),
            proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..6),
        )
            .prop_map(|(w, t, iovs)| {
                let addr = SendAddr {
                    src: Addr {
                        port: u32::from(w[0]),
                        domain: w[1],
                        pad: w[2] & 1,
                    },
                    dst: Addr {
                        port: u32::from(w[3]),
                        domain: w[4],
                        pad: w[5] & 1,
                    },
                };
                (addr, t, iovs)
            })
    }

    proptest! {
        #[test]
        fn any_batch_round_trips(sends in proptest::collection::vec(arb_sendv(), 0..8)) {
            let iovs: Vec<Vec<IoSlice<'_>>> = sends
                .iter()
                .map(|(_, _, v)| v.iter().map(|b| IoSlice::new(b)).collect())
                .collect();
            let batch: Vec<crate::hypervisor::BatchSend<'_>> = sends
                .iter()
                .zip(&iovs)
                .map(|((addr, t, _), iov)| crate::hypervisor::BatchSend {
                    addr: *addr,
                    iov,
                    message_type: *t,
                })
                .collect();
            let bytes = SendvFrame::batch(&batch).to_vec();
            let (h, body) = split_record(&bytes, false).unwrap();
            let Request::SendvBatch(got) = Request::decode(h.kind, h.nfds, body).unwrap() else {
                panic!("not a batch");
            };
            prop_assert_eq!(got.len(), sends.len());
            for (g, (addr, t, v)) in got.iter().zip(&sends) {
                prop_assert_eq!(g.addr, *addr);
                prop_assert_eq!(g.message_type, *t);
                prop_assert_eq!(g.lens.len(), v.len());
                prop_assert_eq!(g.payload.unwrap(), &v.concat()[..]);
            }
        }

        #[test]
        fn garbage_records_never_panic(rec in proptest::collection::vec(any::<u8>(), 0..300),
                                       kind_sel in 0u16..16) {
            if let Ok((h, body)) = split_record(&rec, false) {
                let _ = Request::decode(h.kind, 0, body);
            }
            if let Ok((h, body)) = split_record(&rec, true) {
                let _ = Reply::decode(kind_sel, h.kind, 0, body);
                let _ = Reply::decode(kind::SENDV_BATCH, h.kind, 0, body);
            }
            let _ = Request::decode(kind::SENDV_BATCH, 0, &rec);
        }

        #[test]
        fn decoding_garbage_never_panics(kind in 0u16..16, nfds in 0u8..3,
                                         body in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = Request::decode(kind, nfds, &body);
            let _ = Request::decode(kind::HELLO, nfds, &body);
            let _ = Reply::decode(kind, kind | REPLY_BIT, nfds, &body);
        }
    }
}
