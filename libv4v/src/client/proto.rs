// SPDX-License-Identifier: MIT OR Apache-2.0
//! The local protocol between v4vd and its clients (see `docs/protocol.md`).
//!
//! One definition of the handshake lines and the datagram framing, shared by the daemon and the
//! client API so the two cannot drift. Everything here is pure parsing and encoding.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::abi::{DOMID_ANY, DOMID_FIRST_RESERVED, DomId};

/// The version of the local protocol this crate speaks (`VERSION` answers it).
pub const PROTOCOL_VERSION: u32 = 2;
/// Where v4vd listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/v4v/v4vd.sock";
/// The environment variable naming the daemon's socket for clients.
pub const SOCKET_ENV: &str = "V4V_SOCKET";
/// The longest request or reply line, newline included.
pub const MAX_LINE: usize = 256;

/// Size of a datagram frame header.
pub const FRAME_HEADER_SIZE: usize = 16;
/// Client to daemon: send `len` payload bytes to `(domain, port)`.
pub const FRAME_SEND: u16 = 1;
/// Daemon to client: a datagram of `len` bytes from `(domain, port)`.
pub const FRAME_DATA: u16 = 2;
/// Daemon to client: the outcome of one `FRAME_SEND`, `aux` = 0 or a positive errno.
pub const FRAME_STATUS: u16 = 3;
/// Daemon to client: `aux` more `SEND_F_PIPELINE` sends, the oldest not answered yet, were taken
/// by the hypervisor (one frame acknowledges a whole batch).
pub const FRAME_ACK: u16 = 4;
/// Client to daemon, with a sealed memfd passed by `SCM_RIGHTS`: use it as a shared-memory
/// channel for SEND records (`aux` = its capacity). The daemon answers with a `FRAME_CHAN` whose
/// `aux` is 0 (taken) or a positive errno (refused: keep using the socket).
pub const FRAME_CHAN: u16 = 5;
/// Either way, no payload: a doorbell for the shared-memory channel (the peer went to sleep on
/// it, or waits for its space).
pub const FRAME_RING: u16 = 6;
/// Client to daemon, no payload, on the path its SENDs take (the socket or a channel record):
/// acknowledge every SEND before this one now (the `SEND_F_LAZY` successes held back are
/// counted into an ACK at once). Only to a daemon whose `FRAME_CHAN` answer had
/// `DGRAM_F_LAZY_ACK` in `port`: an older daemon closes a client that sends an unknown kind.
pub const FRAME_FLUSH: u16 = 7;
/// Data bytes of the shared-memory channel a client offers.
pub const DGRAM_CHAN_CAPACITY: usize = 2 << 20;
/// Feature bit in the `port` field of the daemon's `FRAME_CHAN` answer (taken or refused): it
/// honours `SEND_F_LAZY` and takes `FRAME_FLUSH`. Older daemons answer 0 there.
pub const DGRAM_F_LAZY_ACK: u32 = 1;
/// Flag in the `port` field of a client's `FRAME_CHAN` offer: a second sealed memfd comes with
/// it, a channel for everything the daemon writes to this client (DATA, STATUS and ACK frames as
/// a byte stream), its capacity the offer's 4-byte payload (little-endian). Older daemons ignore
/// the flag and close the second descriptor.
pub const CHAN_F_RECEIVE: u32 = 1;
/// Data bytes of the receive channel a client offers. The daemon counts its pages in the
/// client's output allotment (`dgram_buffer`), and takes it only if that is at least twice as
/// big.
pub const DGRAM_RX_CAPACITY: usize = 256 << 10;
/// Feature bit in the `port` field of the daemon's `FRAME_CHAN` answer: it took the receive
/// channel too. Every frame after the answer comes through that channel; the socket carries only
/// RING frames from then on.
pub const DGRAM_F_RECV_CHAN: u32 = 2;
/// Flag in the `port` field of a client's `FRAME_CHAN` offer: an eventfd comes with it, after
/// the memfds, the client's doorbell: it adds 1 to the eventfd instead of writing a RING frame.
/// Older daemons ignore the flag and close the descriptor.
pub const CHAN_F_BELL: u32 = 2;
/// Feature bit in the `port` field of the daemon's `FRAME_CHAN` answer: it took the eventfd
/// doorbell (polls it; never reads or writes it). Without it the client rings with RING frames.
pub const DGRAM_F_BELL: u32 = 4;
/// Flag in the `port` field of a client's `FRAME_CHAN` offer, with `CHAN_F_RECEIVE`: a pipe comes
/// with it, after the other descriptors, its wake pipe. The daemon opens the pipe anew for writing
/// (its own non-blocking open file description) and, when the client sleeps on its receive
/// channel with `sleeping` = [`SLEEP_WAKE_PIPE`], writes a byte into it instead of a RING frame.
pub const CHAN_F_WAKE_PIPE: u32 = 4;
/// Feature bit in the `port` field of the daemon's `FRAME_CHAN` answer: it took the wake pipe.
pub const DGRAM_F_WAKE_PIPE: u32 = 8;
/// The receive channel's `sleeping` word of a client that sleeps in `poll` on its socket: the
/// daemon rings with a RING frame.
pub const SLEEP_SOCKET: u32 = 1;
/// The receive channel's `sleeping` word of a client that sleeps in `poll` on its socket and its
/// wake pipe: the daemon writes a byte into the wake pipe.
pub const SLEEP_WAKE_PIPE: u32 = 2;
/// How long a daemon holds back the ACK of `SEND_F_LAZY` successes at most, when nothing else
/// sends it sooner.
pub const LAZY_ACK_DELAY: std::time::Duration = std::time::Duration::from_millis(2);
/// `FRAME_SEND` flag in `aux`: answer `EAGAIN` at once instead of waiting for ring space.
pub const SEND_F_NOWAIT: u32 = 1;
/// `FRAME_SEND` flag in `aux`: a success is counted into the next `FRAME_ACK` instead of
/// answered by its own STATUS (a failure still gets its STATUS, in order).
pub const SEND_F_PIPELINE: u32 = 2;
/// `FRAME_SEND` flag in `aux`, with `SEND_F_PIPELINE`: the success may be acknowledged late,
/// in the ACK the daemon writes before its next other frame to this client (a DATA frame, a
/// STATUS), or when a SEND without it, a `FRAME_FLUSH` or a datagram waiting for ring space
/// needs one, and within [`LAZY_ACK_DELAY`] in any case. A client sets it while its window is
/// far from full, so that a round trip costs no wake-up for an ACK. Daemons that do not know
/// it ignore it (and acknowledge at once).
pub const SEND_F_LAZY: u32 = 4;
/// Bytes of SEND frames (headers included) the daemon reads ahead of a datagram that waits for
/// ring space; a pipelining client keeps at most this much outstanding (a bigger single frame
/// only alone), so the daemon always takes what it sent.
pub const DGRAM_READ_AHEAD: usize = 1 << 20;
/// The largest datagram payload a frame may carry.
pub const MAX_DGRAM: u32 = crate::abi::MAX_MESSAGE_SIZE;

/// A V4V address `(domain, port)`, written `DOM:PORT`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SockAddr {
    pub domid: DomId,
    pub port: u32,
}

impl SockAddr {
    pub const fn new(domid: DomId, port: u32) -> Self {
        SockAddr { domid, port }
    }

    /// Parses `DOM:PORT` where DOM is an id or a name (`web:80`, `name:web:80`); a name is asked
    /// of the daemon (`V4V_SOCKET`, else the default; see [`crate::client::resolve`]), an id is
    /// never looked up. A name no domain has, or one this domain may not see, is
    /// [`crate::client::Error::UnknownName`].
    pub fn resolve(text: &str) -> Result<Self, crate::client::Error> {
        Self::resolve_with(&crate::client::socket_path(), text)
    }

    /// [`SockAddr::resolve`] through the daemon at `daemon`.
    pub fn resolve_with(
        daemon: &std::path::Path,
        text: &str,
    ) -> Result<Self, crate::client::Error> {
        let (dom, port) =
            parse_named(text).map_err(|e| crate::client::Error::Invalid(e.to_string()))?;
        let domid = match dom {
            crate::names::DomainRef::Id(d) => d,
            crate::names::DomainRef::Name(n) => crate::client::resolve(daemon, &n)?,
        };
        Ok(SockAddr { domid, port })
    }
}

/// Parses `DOM:PORT`, `NAME:PORT` or `name:NAME:PORT` without resolving: the domain as written
/// and the port.
pub fn parse_named(text: &str) -> Result<(crate::names::DomainRef, u32), ParseError> {
    let bad = || ParseError::BadAddr(text.chars().take(64).collect());
    let (d, p) = crate::names::split_addr(text).ok_or_else(bad)?;
    let port = p.parse().map_err(|_| bad())?;
    let dom = crate::names::DomainRef::parse(d).map_err(|e| match e {
        crate::names::NameError::ReservedDomain(d) => ParseError::ReservedDomain(d),
        e => ParseError::BadName(e.to_string()),
    })?;
    Ok((dom, port))
}

impl fmt::Display for SockAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.domid, self.port)
    }
}

/// Why a `DOM:PORT` string or a protocol line did not parse.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ParseError {
    #[error("address {0:?} is not DOM:PORT")]
    BadAddr(String),
    #[error("domain {0:?} is not a number")]
    BadDomain(String),
    #[error(
        "domain {0} is not a guest's: domain ids are below 32752 (0x7ff0), the ids from there on are the hypervisor's own"
    )]
    ReservedDomain(u64),
    #[error("empty request")]
    Empty,
    #[error("unknown request {0:?}")]
    UnknownVerb(String),
    #[error("bad arguments for {0}")]
    BadArgs(&'static str),
    #[error("bad reply line {0:?}")]
    BadReply(String),
    #[error("bad STATUS JSON: {0}")]
    BadStatus(String),
    #[error("{0}")]
    BadName(String),
}

/// Parses a domain id as requests and addresses carry it: decimal, below
/// [`DOMID_FIRST_RESERVED`] (the ids above are the hypervisor's own, never a guest's).
pub fn parse_domain(s: &str) -> Result<DomId, ParseError> {
    let d: u64 = s
        .parse()
        .map_err(|_| ParseError::BadDomain(s.chars().take(32).collect()))?;
    match DomId::try_from(d) {
        Ok(d) if d < DOMID_FIRST_RESERVED => Ok(d),
        _ => Err(ParseError::ReservedDomain(d)),
    }
}

impl FromStr for SockAddr {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ParseError::BadAddr(s.chars().take(64).collect());
        let (d, p) = s.split_once(':').ok_or_else(bad)?;
        let domid = match parse_domain(d) {
            Ok(d) => d,
            Err(e @ ParseError::ReservedDomain(_)) => return Err(e),
            Err(_) => return Err(bad()),
        };
        let port = p.parse().map_err(|_| bad())?;
        Ok(SockAddr { domid, port })
    }
}

/// How a stream's bytes travel between the client and the daemon, as `CONNECT` and `ACCEPT`
/// choose it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Via {
    /// The Unix connection is the byte stream (what socat and `listen --exec` programs use).
    #[default]
    Socket,
    /// `... SHM CAPACITY`: through two shared-memory channels of `CAPACITY` data bytes each,
    /// whose sealed memfds come with the request line (`SCM_RIGHTS`: client to daemon first,
    /// then daemon to client); the connection carries only doorbell bytes and the end.
    Shm(u32),
}

impl fmt::Display for Via {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Via::Socket => Ok(()),
            Via::Shm(cap) => write!(f, " SHM {cap}"),
        }
    }
}

/// A client's first line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `CONNECT DOM:PORT [SHM CAPACITY]`: open a stream.
    Connect(SockAddr, Via),
    /// `LISTEN PORT`: listen for streams (0 = ephemeral); the connection then gets one
    /// `INCOMING ID DOM:PORT` line per waiting connection.
    Listen(u32),
    /// `ACCEPT PORT [ID] [SHM CAPACITY]`: take one incoming stream (the given one, or the
    /// next).
    Accept(u32, Option<u64>, Via),
    /// `DGRAM PORT [PARTNER]`: bind a datagram port (0 = ephemeral), optionally to one domain.
    Dgram(u32, Option<DomId>),
    /// `STATUS`: one line of daemon state, then close.
    Status,
    /// `VERSION`: the protocol version, then close.
    Version,
    /// `CLOSED ID`: how the stream with this id (from the `CONNECT`/`ACCEPT` reply) ended:
    /// `OK open`, `OK eof`, or `OK reset ERRNO-NAME REASON`.
    Closed(u64),
    /// `RESET ID`: abort the stream with this id (the peer reads a reset, not end of file).
    Reset(u64),
    /// `ACL ...`: read or edit the hypervisor's ACL table (dom0; edits need privilege).
    Acl(AclRequest),
    /// `RESOLVE NAME`: the id of the domain called NAME, as this domain may see it (`OK DOMID`,
    /// or `ERR ENOENT`).
    Resolve(String),
    /// `NAMEOF DOMID`: the name of domain DOMID, when this domain may see it (`OK NAME`, or
    /// `ERR ENOENT`).
    NameOf(DomId),
}

/// The `ACL` requests. Rules are in the text form of [`crate::acl`] (`reject 3:* -> 0:22`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AclRequest {
    /// `ACL LIST`: `OK N`, then N rule lines in table order.
    List,
    /// `ACL ADD RULE`: append.
    Add(String),
    /// `ACL INSERT N RULE`: insert before 1-based position N.
    Insert(u32, String),
    /// `ACL DELETE N`: delete the rule at 1-based position N.
    DeleteAt(u32),
    /// `ACL DELETE RULE`: delete the first rule equal to RULE.
    DeleteRule(String),
    /// `ACL FLUSH`: delete every rule.
    Flush,
    /// `ACL LOAD N`: N rule lines follow; they replace the table, all or nothing.
    Load(u32),
}

impl fmt::Display for AclRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AclRequest::List => write!(f, "ACL LIST"),
            AclRequest::Add(r) => write!(f, "ACL ADD {r}"),
            AclRequest::Insert(n, r) => write!(f, "ACL INSERT {n} {r}"),
            AclRequest::DeleteAt(n) => write!(f, "ACL DELETE {n}"),
            AclRequest::DeleteRule(r) => write!(f, "ACL DELETE {r}"),
            AclRequest::Flush => write!(f, "ACL FLUSH"),
            AclRequest::Load(n) => write!(f, "ACL LOAD {n}"),
        }
    }
}

fn parse_acl(rest: &str) -> Result<AclRequest, ParseError> {
    let rest = rest.trim();
    let (verb, arg) = rest
        .split_once(char::is_whitespace)
        .map(|(v, a)| (v, a.trim()))
        .unwrap_or((rest, ""));
    let num = |s: &str| s.parse::<u32>().map_err(|_| ParseError::BadArgs("ACL"));
    match (verb, arg) {
        ("LIST", "") => Ok(AclRequest::List),
        ("FLUSH", "") => Ok(AclRequest::Flush),
        ("ADD", r) if !r.is_empty() => Ok(AclRequest::Add(r.to_string())),
        ("INSERT", a) => {
            let (n, r) = a
                .split_once(char::is_whitespace)
                .ok_or(ParseError::BadArgs("ACL INSERT"))?;
            Ok(AclRequest::Insert(num(n)?, r.trim().to_string()))
        }
        ("DELETE", a) if !a.is_empty() && a.bytes().all(|b| b.is_ascii_digit()) => {
            Ok(AclRequest::DeleteAt(num(a)?))
        }
        ("DELETE", r) if !r.is_empty() => Ok(AclRequest::DeleteRule(r.to_string())),
        ("LOAD", n) => Ok(AclRequest::Load(num(n)?)),
        _ => Err(ParseError::BadArgs("ACL")),
    }
}

impl Request {
    /// Parses one request line (without its newline).
    pub fn parse(line: &str) -> Result<Self, ParseError> {
        let mut it = line.split_ascii_whitespace();
        let verb = it.next().ok_or(ParseError::Empty)?;
        let mut args: Vec<&str> = it.collect();
        let port = |s: &str, what| s.parse::<u32>().map_err(|_| ParseError::BadArgs(what));
        // `SHM CAPACITY` ends a stream request.
        let mut via = Via::Socket;
        if matches!(verb, "CONNECT" | "ACCEPT")
            && let [.., shm, cap] = args.as_slice()
            && *shm == "SHM"
        {
            via = Via::Shm(port(cap, "SHM")?);
            args.truncate(args.len() - 2);
        }
        match (verb, args.as_slice()) {
            ("CONNECT", [a]) => Ok(Request::Connect(a.parse()?, via)),
            ("CONNECT", _) => Err(ParseError::BadArgs("CONNECT")),
            ("LISTEN", [p]) => Ok(Request::Listen(port(p, "LISTEN")?)),
            ("LISTEN", _) => Err(ParseError::BadArgs("LISTEN")),
            ("ACCEPT", [p]) => Ok(Request::Accept(port(p, "ACCEPT")?, None, via)),
            ("ACCEPT", [p, id]) => Ok(Request::Accept(
                port(p, "ACCEPT")?,
                Some(id.parse().map_err(|_| ParseError::BadArgs("ACCEPT"))?),
                via,
            )),
            ("ACCEPT", _) => Err(ParseError::BadArgs("ACCEPT")),
            ("DGRAM", [p]) => Ok(Request::Dgram(port(p, "DGRAM")?, None)),
            ("DGRAM", [p, d]) => Ok(Request::Dgram(port(p, "DGRAM")?, Some(parse_domain(d)?))),
            ("DGRAM", _) => Err(ParseError::BadArgs("DGRAM")),
            ("CLOSED", [id]) => Ok(Request::Closed(
                id.parse().map_err(|_| ParseError::BadArgs("CLOSED"))?,
            )),
            ("CLOSED", _) => Err(ParseError::BadArgs("CLOSED")),
            ("RESET", [id]) => Ok(Request::Reset(
                id.parse().map_err(|_| ParseError::BadArgs("RESET"))?,
            )),
            ("RESET", _) => Err(ParseError::BadArgs("RESET")),
            ("ACL", _) => Ok(Request::Acl(parse_acl(
                line.trim_start().strip_prefix("ACL").unwrap_or(""),
            )?)),
            ("RESOLVE", [n]) => {
                crate::names::validate(n).map_err(|_| ParseError::BadArgs("RESOLVE"))?;
                Ok(Request::Resolve(n.to_string()))
            }
            ("RESOLVE", _) => Err(ParseError::BadArgs("RESOLVE")),
            ("NAMEOF", [d]) => Ok(Request::NameOf(parse_domain(d)?)),
            ("NAMEOF", _) => Err(ParseError::BadArgs("NAMEOF")),
            ("STATUS", []) => Ok(Request::Status),
            ("VERSION", []) => Ok(Request::Version),
            ("STATUS" | "VERSION", _) => Err(ParseError::BadArgs("STATUS/VERSION")),
            (v, _) => Err(ParseError::UnknownVerb(v.chars().take(32).collect())),
        }
    }
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Request::Connect(a, via) => write!(f, "CONNECT {a}{via}"),
            Request::Listen(p) => write!(f, "LISTEN {p}"),
            Request::Accept(p, None, via) => write!(f, "ACCEPT {p}{via}"),
            Request::Accept(p, Some(id), via) => write!(f, "ACCEPT {p} {id}{via}"),
            Request::Dgram(p, None) => write!(f, "DGRAM {p}"),
            Request::Dgram(p, Some(d)) => write!(f, "DGRAM {p} {d}"),
            Request::Status => write!(f, "STATUS"),
            Request::Version => write!(f, "VERSION"),
            Request::Closed(id) => write!(f, "CLOSED {id}"),
            Request::Reset(id) => write!(f, "RESET {id}"),
            Request::Acl(a) => a.fmt(f),
            Request::Resolve(n) => write!(f, "RESOLVE {n}"),
            Request::NameOf(d) => write!(f, "NAMEOF {d}"),
        }
    }
}

/// The daemon's reply line to a request: `OK ...` (its shape depends on the request) or
/// `ERR CODE REASON`. [`Reply::parse`] reads a line in the context of the request it answers
/// (`OK 5` is a port after `DGRAM`, a rule count after `ACL LIST`); `Display` writes the line
/// without its newline. The daemon writes replies only through this type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `OK N` to `VERSION`.
    Version(u32),
    /// `OK PORT` to `DGRAM` and `LISTEN`: the bound port (ephemeral ports resolved).
    Port(u32),
    /// `OK LOCAL-PORT STREAM-ID` to `CONNECT`.
    Connected { local_port: u32, id: u64 },
    /// `OK DOM:PORT STREAM-ID` to `ACCEPT`: the connector's address.
    Accepted { peer: SockAddr, id: u64 },
    /// `OK open`, `OK eof` or `OK reset CODE REASON` to `CLOSED`.
    Closed(StreamEnd),
    /// `OK N` to `ACL LIST` (N rule lines follow) and `ACL LOAD` (N rules loaded).
    Rules(u32),
    /// `OK BYTES` to `STATUS`: exactly BYTES bytes of JSON (a [`Status`]) follow, then the
    /// daemon closes. No line-length limit applies to them.
    Status { len: u32 },
    /// `OK` to `RESET` and the ACL edits.
    Done,
    /// `OK DOMID` to `RESOLVE`.
    Domain(DomId),
    /// `OK NAME` to `NAMEOF`.
    Name(String),
    /// `ERR CODE REASON`: `code` is an errno name (`EINVAL`, `EDQUOT`, ...; the hypervisor's
    /// errnos pass through, so the set is open), `reason` one line of text for people.
    Err { code: String, reason: String },
}

/// How a stream ended, as `CLOSED` answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEnd {
    /// Still open.
    Open,
    /// The peer closed orderly and everything was delivered.
    Eof,
    /// Reset: `code` an errno name (`ECONNRESET`, `EHOSTUNREACH`, ...), `reason` text.
    Reset { code: String, reason: String },
}

impl Reply {
    /// `ERR CODE REASON`. A reason is one line: line breaks in it become spaces, and it is cut
    /// so that the whole line fits [`MAX_LINE`].
    pub fn err(code: &str, reason: impl Into<String>) -> Self {
        let mut reason: String = reason.into().replace(['\n', '\r'], " ");
        let room = MAX_LINE.saturating_sub(code.len() + 6);
        if reason.len() > room {
            let mut cut = room;
            while !reason.is_char_boundary(cut) {
                cut -= 1;
            }
            reason.truncate(cut);
        }
        Reply::Err {
            code: code.to_string(),
            reason,
        }
    }

    /// Parses the reply line `line` (newline optional) to `req`.
    pub fn parse(req: &Request, line: &str) -> Result<Self, ParseError> {
        let line = line.trim_end_matches(['\n', '\r']);
        let bad = || ParseError::BadReply(line.chars().take(64).collect());
        if let Some(rest) = line.strip_prefix("ERR ") {
            let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
            if code.is_empty() {
                return Err(bad());
            }
            return Ok(Reply::Err {
                code: code.to_string(),
                reason: reason.to_string(),
            });
        }
        let args = match line.strip_prefix("OK") {
            Some("") => "",
            Some(rest) if rest.starts_with(' ') => &rest[1..],
            _ => return Err(bad()),
        };
        let words: Vec<&str> = args.split(' ').collect();
        let num = |s: &str| s.parse::<u32>().map_err(|_| bad());
        let id = |s: &str| s.parse::<u64>().map_err(|_| bad());
        match (req, words.as_slice()) {
            (Request::Version, [n]) => Ok(Reply::Version(num(n)?)),
            (Request::Dgram(..) | Request::Listen(_), [p]) => Ok(Reply::Port(num(p)?)),
            (Request::Connect(..), [p, i]) => Ok(Reply::Connected {
                local_port: num(p)?,
                id: id(i)?,
            }),
            (Request::Accept(..), [a, i]) => Ok(Reply::Accepted {
                peer: a.parse().map_err(|_| bad())?,
                id: id(i)?,
            }),
            (Request::Closed(_), ["open"]) => Ok(Reply::Closed(StreamEnd::Open)),
            (Request::Closed(_), ["eof"]) => Ok(Reply::Closed(StreamEnd::Eof)),
            (Request::Closed(_), ["reset", code, ..]) if !code.is_empty() => {
                let reason = args
                    .strip_prefix("reset ")
                    .and_then(|r| r.strip_prefix(code))
                    .unwrap_or("");
                // One space separates code and reason; the reason's own spaces are its own.
                let reason = reason.strip_prefix(' ').unwrap_or(reason);
                Ok(Reply::Closed(StreamEnd::Reset {
                    code: code.to_string(),
                    reason: reason.to_string(),
                }))
            }
            (Request::Acl(AclRequest::List | AclRequest::Load(_)), [n]) => {
                Ok(Reply::Rules(num(n)?))
            }
            (Request::Status, [n]) => Ok(Reply::Status { len: num(n)? }),
            (Request::Resolve(_), [d]) => Ok(Reply::Domain(parse_domain(d).map_err(|_| bad())?)),
            (Request::NameOf(_), [n]) if crate::names::validate(n).is_ok() => {
                Ok(Reply::Name(n.to_string()))
            }
            (Request::Reset(_) | Request::Acl(_), [""]) => Ok(Reply::Done),
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reply::Version(n) | Reply::Port(n) | Reply::Rules(n) => write!(f, "OK {n}"),
            Reply::Connected { local_port, id } => write!(f, "OK {local_port} {id}"),
            Reply::Accepted { peer, id } => write!(f, "OK {peer} {id}"),
            Reply::Closed(StreamEnd::Open) => write!(f, "OK open"),
            Reply::Closed(StreamEnd::Eof) => write!(f, "OK eof"),
            Reply::Closed(StreamEnd::Reset { code, reason }) => {
                write!(f, "OK reset {code} {reason}")
            }
            Reply::Status { len } => write!(f, "OK {len}"),
            Reply::Done => write!(f, "OK"),
            Reply::Domain(d) => write!(f, "OK {d}"),
            Reply::Name(n) => write!(f, "OK {n}"),
            Reply::Err { code, reason } => write!(f, "ERR {code} {reason}"),
        }
    }
}

/// `INCOMING ID DOM:PORT`: a connection waiting on a `LISTEN` connection's port; a new
/// connection takes it with `ACCEPT PORT ID`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Incoming {
    pub id: u64,
    pub peer: SockAddr,
}

impl Incoming {
    /// Parses one `INCOMING` line (newline optional).
    pub fn parse(line: &str) -> Result<Self, ParseError> {
        let line = line.trim_end_matches(['\n', '\r']);
        let bad = || ParseError::BadReply(line.chars().take(64).collect());
        match line.split(' ').collect::<Vec<_>>().as_slice() {
            ["INCOMING", id, peer] => Ok(Incoming {
                id: id.parse().map_err(|_| bad())?,
                peer: peer.parse().map_err(|_| bad())?,
            }),
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for Incoming {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "INCOMING {} {}", self.id, self.peer)
    }
}

/// The most JSON bytes a client accepts after `OK BYTES` to `STATUS` (a daemon with thousands
/// of ports and streams writes a few hundred KiB).
pub const MAX_STATUS: u32 = 64 << 20;

/// The daemon's state, as `STATUS` carries it (JSON after `OK BYTES`).
///
/// Visibility follows `ss`: every user sees every port, stream and count; [`Owner`]s and
/// per-stream byte counters are filled only for root and for the owner's uid (`None`
/// otherwise). Every field has a default, so a client reads a daemon's reply with fields added
/// or missing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Status {
    /// The daemon's local protocol version.
    pub version: u32,
    pub domid: DomId,
    /// Registered rings.
    pub rings: u32,
    /// Connected clients.
    pub clients: u32,
    /// Every bound port, by port number.
    pub ports: Vec<PortStatus>,
    /// Every stream, by id.
    pub streams: Vec<StreamStatus>,
    pub msgs_in: u64,
    pub bytes_in: u64,
    pub msgs_out: u64,
    pub bytes_out: u64,
    /// Ring corruptions recovered from.
    pub corrupt: u64,
    /// Malformed or unroutable messages.
    pub dropped: u64,
    /// Sends the hypervisor's ACL refused.
    pub acl_refused: u64,
    /// The refusals by source and destination (up to 256 pairs).
    pub acl_refused_by: Vec<Refusal>,
    /// Bytes the daemon holds reserved for its users' buffers, everyone's together.
    pub buffered: u64,
    /// The budget of each user other than root (`max_buffer_per_user`).
    pub max_buffer_per_user: u64,
    /// Bytes reserved per user: every user for root, the asker's own for anyone else.
    pub buffers: Vec<UserBuffers>,
}

/// The buffer memory reserved for one user's clients.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserBuffers {
    pub uid: u32,
    pub bytes: u64,
}

/// What a bound port is for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PortKind {
    #[default]
    Dgram,
    Listen,
    /// A connecting side's reply ring for its streams to one peer domain (`peer_domain`).
    Peer,
}

impl PortKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PortKind::Dgram => "dgram",
            PortKind::Listen => "listen",
            PortKind::Peer => "peer",
        }
    }
}

/// One bound port.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PortStatus {
    pub port: u32,
    pub kind: PortKind,
    /// For `peer` rings: the peer domain; for a datagram port bound to one partner: that domain.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_domain: Option<DomId>,
    /// Who holds it (none for the daemon's own `peer` rings; hidden from other users).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<Owner>,
}

/// The user and process holding a port or stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub uid: u32,
    pub pid: u32,
}

/// One stream.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StreamStatus {
    /// The id `CLOSED` and `RESET` take.
    pub id: u64,
    /// The local ring the stream's messages arrive on.
    pub local_port: u32,
    pub peer: SockAddr,
    /// The daemon's name for the stream's state (`connecting`, `established`, ...; for people).
    pub state: String,
    /// Who holds it (hidden from other users).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<Owner>,
    /// Payload bytes received from the peer (hidden from other users).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_in: Option<u64>,
    /// Payload bytes sent to the peer (hidden from other users).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_out: Option<u64>,
}

/// Sends from `src` to `dst` the ACL refused, `count` times.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    pub src: SockAddr,
    pub dst: SockAddr,
    pub count: u64,
}

impl Status {
    /// The JSON the daemon writes after `OK BYTES`.
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising plain structs of numbers and strings into memory cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses the JSON of a `STATUS` reply.
    pub fn from_json(b: &[u8]) -> Result<Self, ParseError> {
        serde_json::from_slice(b).map_err(|e| ParseError::BadStatus(e.to_string()))
    }
}

impl Serialize for SockAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SockAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A datagram frame header, little-endian on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FrameHeader {
    pub len: u32,
    pub kind: u16,
    pub domain: DomId,
    pub port: u32,
    pub aux: u32,
}

impl FrameHeader {
    pub fn encode(&self) -> [u8; FRAME_HEADER_SIZE] {
        let mut b = [0u8; FRAME_HEADER_SIZE];
        b[0..4].copy_from_slice(&self.len.to_le_bytes());
        b[4..6].copy_from_slice(&self.kind.to_le_bytes());
        b[6..8].copy_from_slice(&self.domain.to_le_bytes());
        b[8..12].copy_from_slice(&self.port.to_le_bytes());
        b[12..16].copy_from_slice(&self.aux.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8; FRAME_HEADER_SIZE]) -> Self {
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        FrameHeader {
            len: u32_at(0),
            kind: u16::from_le_bytes([b[4], b[5]]),
            domain: u16::from_le_bytes([b[6], b[7]]),
            port: u32_at(8),
            aux: u32_at(12),
        }
    }

    pub fn addr(&self) -> SockAddr {
        SockAddr::new(self.domain, self.port)
    }
}

/// A frame that cannot be read: its announced length is over [`MAX_DGRAM`].
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
#[error("a frame of {0} bytes (at most {MAX_DGRAM})")]
pub struct FrameTooBig(pub u32);

/// A RING frame (a doorbell, no payload), as either side writes it.
pub fn ring_frame() -> [u8; FRAME_HEADER_SIZE] {
    FrameHeader {
        kind: FRAME_RING,
        ..Default::default()
    }
    .encode()
}

/// The first whole frame at the start of `buf`: its header and its total size (header and
/// payload), `None` while it is incomplete. Shared by both ends of the datagram protocol.
pub fn split_frame(buf: &[u8]) -> Result<Option<(FrameHeader, usize)>, FrameTooBig> {
    let Some(hb) = buf.first_chunk::<FRAME_HEADER_SIZE>() else {
        return Ok(None);
    };
    let h = FrameHeader::decode(hb);
    if h.len > MAX_DGRAM {
        return Err(FrameTooBig(h.len));
    }
    let total = FRAME_HEADER_SIZE + h.len as usize;
    Ok((buf.len() >= total).then_some((h, total)))
}

/// `DOMID_ANY` as a partner, for readers of this module.
pub const ANY_PARTNER: DomId = DOMID_ANY;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip() {
        for r in [
            Request::Connect(SockAddr::new(2, 5000), Via::Socket),
            Request::Connect(SockAddr::new(2, 5000), Via::Shm(1 << 19)),
            Request::Listen(0),
            Request::Accept(7, None, Via::Socket),
            Request::Accept(7, Some(3), Via::Socket),
            Request::Accept(7, None, Via::Shm(4096)),
            Request::Accept(7, Some(3), Via::Shm(4096)),
            Request::Dgram(9, Some(4)),
            Request::Dgram(0, None),
            Request::Status,
            Request::Version,
            Request::Closed(12),
            Request::Reset(13),
            Request::Acl(AclRequest::List),
            Request::Acl(AclRequest::Flush),
            Request::Acl(AclRequest::Add("reject 3:* -> 0:22".into())),
            Request::Acl(AclRequest::Insert(2, "accept *:* -> 0:5555".into())),
            Request::Acl(AclRequest::DeleteAt(4)),
            Request::Acl(AclRequest::DeleteRule("reject 3:* -> 0:22".into())),
            Request::Acl(AclRequest::Load(10)),
        ] {
            assert_eq!(Request::parse(&r.to_string()), Ok(r));
        }
        assert!(Request::parse("CONNECT 2").is_err());
        assert!(Request::parse("CONNECT 40000:1").is_err());
        assert!(Request::parse("").is_err());
        assert!(Request::parse("FOO").is_err());
        assert!(Request::parse("DGRAM 1 2 3").is_err());
        assert!(Request::parse("ACL").is_err());
        assert!(Request::parse("ACL LIST x").is_err());
        assert!(Request::parse("ACL INSERT x accept *:* -> *:*").is_err());
        assert!(Request::parse("ACL LOAD").is_err());
        assert!(Request::parse("CLOSED x").is_err());
    }

    #[test]
    fn replies_and_frames() {
        let dgram = Request::Dgram(0, None);
        assert_eq!(Reply::parse(&dgram, "OK 5\n"), Ok(Reply::Port(5)));
        assert_eq!(
            Reply::parse(&dgram, "ERR ECONNREFUSED nobody listens\n"),
            Ok(Reply::Err {
                code: "ECONNREFUSED".into(),
                reason: "nobody listens".into()
            })
        );
        // The same line means different things after different requests, and a shape that
        // does not fit the request is refused.
        let list = Request::Acl(AclRequest::List);
        assert_eq!(Reply::parse(&list, "OK 5"), Ok(Reply::Rules(5)));
        assert!(Reply::parse(&Request::Connect(SockAddr::new(1, 2), Via::Socket), "OK 5").is_err());
        assert!(Reply::parse(&dgram, "OKAY").is_err());
        assert!(Reply::parse(&dgram, "OK").is_err());
        assert!(Reply::parse(&dgram, "ERR ").is_err());
        // A simulator answering binary, or an HTTP server, is not v4vd.
        assert!(Reply::parse(&Request::Status, "HTTP/1.1 400 Bad Request").is_err());
        assert_eq!(
            Reply::parse(&Request::Closed(1), "OK reset ECONNRESET the peer reset it"),
            Ok(Reply::Closed(StreamEnd::Reset {
                code: "ECONNRESET".into(),
                reason: "the peer reset it".into()
            }))
        );
        let long = Reply::err("EDQUOT", "x\n".repeat(400));
        assert!(long.to_string().len() < MAX_LINE && !long.to_string().contains('\n'));
        assert_eq!(
            Incoming::parse("INCOMING 7 3:99"),
            Ok(Incoming {
                id: 7,
                peer: SockAddr::new(3, 99)
            })
        );
        assert!(Incoming::parse("INCOMING 7").is_err());
        let h = FrameHeader {
            len: 5,
            kind: FRAME_DATA,
            domain: 3,
            port: 77,
            aux: 9,
        };
        assert_eq!(FrameHeader::decode(&h.encode()), h);
        assert_eq!("1:2".parse(), Ok(SockAddr::new(1, 2)));
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn addr() -> impl Strategy<Value = SockAddr> {
            (0..DOMID_FIRST_RESERVED, any::<u32>()).prop_map(|(d, p)| SockAddr::new(d, p))
        }
        fn code() -> impl Strategy<Value = String> {
            "E[A-Z]{1,14}"
        }
        // One line of text: anything but line breaks.
        fn text() -> impl Strategy<Value = String> {
            "[^\r\n]{0,80}"
        }
        fn rule() -> impl Strategy<Value = String> {
            "[a-z0-9*:>-]{1,10}( [a-z0-9*:>-]{1,10}){0,4}"
        }
        fn owner() -> impl Strategy<Value = Option<Owner>> {
            proptest::option::of(
                (any::<u32>(), any::<u32>()).prop_map(|(uid, pid)| Owner { uid, pid }),
            )
        }

        fn via() -> impl Strategy<Value = Via> {
            prop_oneof![Just(Via::Socket), any::<u32>().prop_map(Via::Shm)]
        }

        fn request() -> impl Strategy<Value = Request> {
            prop_oneof![
                (addr(), via()).prop_map(|(a, v)| Request::Connect(a, v)),
                any::<u32>().prop_map(Request::Listen),
                (any::<u32>(), proptest::option::of(any::<u64>()), via())
                    .prop_map(|(p, i, v)| Request::Accept(p, i, v)),
                (any::<u32>(), proptest::option::of(0..DOMID_FIRST_RESERVED))
                    .prop_map(|(p, d)| Request::Dgram(p, d)),
                Just(Request::Status),
                Just(Request::Version),
                any::<u64>().prop_map(Request::Closed),
                any::<u64>().prop_map(Request::Reset),
                Just(Request::Acl(AclRequest::List)),
                Just(Request::Acl(AclRequest::Flush)),
                rule().prop_map(|r| Request::Acl(AclRequest::Add(r))),
                (any::<u32>(), rule()).prop_map(|(n, r)| Request::Acl(AclRequest::Insert(n, r))),
                any::<u32>().prop_map(|n| Request::Acl(AclRequest::DeleteAt(n))),
                // A rule to delete is not all digits (that is a position).
                rule()
                    .prop_filter("not a position", |r| !r.bytes().all(|b| b.is_ascii_digit()))
                    .prop_map(|r| Request::Acl(AclRequest::DeleteRule(r))),
                any::<u32>().prop_map(|n| Request::Acl(AclRequest::Load(n))),
            ]
        }

        /// A request and a reply the daemon may give to it.
        fn exchange() -> impl Strategy<Value = (Request, Reply)> {
            let err = (request(), code(), text())
                .prop_map(|(q, code, reason)| (q, Reply::Err { code, reason }));
            prop_oneof![
                any::<u32>().prop_map(|n| (Request::Version, Reply::Version(n))),
                (any::<u32>(), any::<u32>())
                    .prop_map(|(q, p)| (Request::Listen(q), Reply::Port(p))),
                (any::<u32>(), any::<u32>())
                    .prop_map(|(q, p)| (Request::Dgram(q, None), Reply::Port(p))),
                (addr(), any::<u32>(), any::<u64>()).prop_map(|(a, local_port, id)| (
                    Request::Connect(a, Via::Socket),
                    Reply::Connected { local_port, id }
                )),
                (addr(), any::<u64>()).prop_map(|(peer, id)| (
                    Request::Accept(1, None, Via::Socket),
                    Reply::Accepted { peer, id }
                )),
                Just((Request::Closed(1), Reply::Closed(StreamEnd::Open))),
                Just((Request::Closed(1), Reply::Closed(StreamEnd::Eof))),
                (code(), text()).prop_map(|(code, reason)| (
                    Request::Closed(1),
                    Reply::Closed(StreamEnd::Reset { code, reason })
                )),
                any::<u32>().prop_map(|n| (Request::Acl(AclRequest::List), Reply::Rules(n))),
                any::<u32>().prop_map(|n| (Request::Acl(AclRequest::Load(3)), Reply::Rules(n))),
                any::<u32>().prop_map(|len| (Request::Status, Reply::Status { len })),
                Just((Request::Reset(4), Reply::Done)),
                Just((Request::Acl(AclRequest::Flush), Reply::Done)),
                err,
            ]
        }

        fn status() -> impl Strategy<Value = Status> {
            let port = (
                any::<u32>(),
                0..3u8,
                proptest::option::of(any::<u16>()),
                owner(),
            )
                .prop_map(|(port, k, peer_domain, owner)| PortStatus {
                    port,
                    kind: [PortKind::Dgram, PortKind::Listen, PortKind::Peer][usize::from(k)],
                    peer_domain,
                    owner,
                });
            let stream = (
                any::<u64>(),
                any::<u32>(),
                addr(),
                "[a-z-]{0,16}",
                owner(),
                proptest::option::of(any::<u64>()),
                proptest::option::of(any::<u64>()),
            )
                .prop_map(
                    |(id, local_port, peer, state, owner, bytes_in, bytes_out)| StreamStatus {
                        id,
                        local_port,
                        peer,
                        state,
                        owner,
                        bytes_in,
                        bytes_out,
                    },
                );
            let refusal = (addr(), addr(), any::<u64>()).prop_map(|(src, dst, count)| Refusal {
                src,
                dst,
                count,
            });
            (
                (any::<u32>(), any::<u16>(), any::<u32>(), any::<u32>()),
                proptest::collection::vec(port, 0..40),
                proptest::collection::vec(stream, 0..40),
                proptest::array::uniform7(any::<u64>()),
                proptest::collection::vec(refusal, 0..40),
                (
                    any::<u64>(),
                    any::<u64>(),
                    proptest::collection::vec(
                        (any::<u32>(), any::<u64>())
                            .prop_map(|(uid, bytes)| UserBuffers { uid, bytes }),
                        0..8,
                    ),
                ),
            )
                .prop_map(|(head, ports, streams, c, acl_refused_by, budgets)| {
                    let (version, domid, rings, clients) = head;
                    let (buffered, max_buffer_per_user, buffers) = budgets;
                    Status {
                        version,
                        domid,
                        rings,
                        clients,
                        ports,
                        streams,
                        msgs_in: c[0],
                        bytes_in: c[1],
                        msgs_out: c[2],
                        bytes_out: c[3],
                        corrupt: c[4],
                        dropped: c[5],
                        acl_refused: c[6],
                        acl_refused_by,
                        buffered,
                        max_buffer_per_user,
                        buffers,
                    }
                })
        }

        proptest! {
            #[test]
            fn requests_round_trip(r in request()) {
                let line = r.to_string();
                prop_assert!(line.len() < MAX_LINE, "{line}");
                prop_assert_eq!(Request::parse(&line), Ok(r));
            }

            #[test]
            fn replies_round_trip((q, r) in exchange()) {
                let line = format!("{r}\n");
                prop_assert!(!line[..line.len() - 1].contains('\n'));
                prop_assert_eq!(Reply::parse(&q, &line), Ok(r));
            }

            #[test]
            fn incoming_round_trips(id in any::<u64>(), peer in addr()) {
                let i = Incoming { id, peer };
                prop_assert_eq!(Incoming::parse(&i.to_string()), Ok(i));
            }

            #[test]
            fn status_round_trips(s in status()) {
                prop_assert_eq!(Status::from_json(&s.to_json()), Ok(s));
            }

            /// Garbage never panics the parsers, whatever request it answers.
            #[test]
            fn reply_parsing_survives_garbage(q in request(), line in "\\PC{0,120}") {
                let _ = Reply::parse(&q, &line);
                let _ = Incoming::parse(&line);
                let _ = Status::from_json(line.as_bytes());
            }

            /// A stream of frames cut anywhere reads back as the same frames, in order; the
            /// splitter never reads past what it was given.
            #[test]
            fn frames_split_back(
                frames in proptest::collection::vec(
                    (any::<u16>(), any::<u16>(), any::<u32>(), any::<u32>(),
                     proptest::collection::vec(any::<u8>(), 0..64)),
                    0..12,
                ),
                cut in any::<prop::sample::Index>(),
            ) {
                let mut wire = Vec::new();
                let mut want = Vec::new();
                for (kind, domain, port, aux, payload) in &frames {
                    let h = FrameHeader { len: payload.len() as u32, kind: *kind, domain: *domain,
                        port: *port, aux: *aux };
                    wire.extend_from_slice(&h.encode());
                    wire.extend_from_slice(payload);
                    want.push((h, payload.clone()));
                }
                // What arrived so far: a prefix; whole frames come out, the rest waits.
                let at = cut.index(wire.len() + 1);
                let (mut got, mut pos) = (Vec::new(), 0);
                while let Some((h, total)) = split_frame(&wire[pos..at]).expect("valid") {
                    got.push((h, wire[pos + FRAME_HEADER_SIZE..pos + total].to_vec()));
                    pos += total;
                }
                prop_assert_eq!(&got[..], &want[..got.len()]);
                prop_assert!(at - pos < FRAME_HEADER_SIZE + want.get(got.len()).map_or(0, |w| w.1.len()));
                while let Some((h, total)) = split_frame(&wire[pos..]).expect("valid") {
                    got.push((h, wire[pos + FRAME_HEADER_SIZE..pos + total].to_vec()));
                    pos += total;
                }
                prop_assert_eq!(got, want);
                prop_assert_eq!(pos, wire.len());
            }

            /// Any bytes: a frame, nothing yet, or a length over the maximum, never a panic.
            #[test]
            fn frame_split_survives_garbage(b in proptest::collection::vec(any::<u8>(), 0..64)) {
                match split_frame(&b) {
                    Ok(Some((h, total))) => {
                        prop_assert!(total <= b.len());
                        prop_assert_eq!(total, FRAME_HEADER_SIZE + h.len as usize);
                    }
                    Ok(None) => prop_assert!(b.len() < FRAME_HEADER_SIZE
                        || FrameHeader::decode(b.first_chunk().expect("header")).len as usize
                            > b.len() - FRAME_HEADER_SIZE),
                    Err(FrameTooBig(n)) => prop_assert!(n > MAX_DGRAM),
                }
            }
        }
    }
}
