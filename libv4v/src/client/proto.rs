// SPDX-License-Identifier: MIT OR Apache-2.0
//! The local protocol between v4vd and its clients (see `docs/protocol.md`).
//!
//! One definition of the handshake lines and the datagram framing, shared by the daemon and the
//! client API so the two cannot drift. Everything here is pure parsing and encoding.

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

use crate::abi::{DOMID_ANY, DOMID_FIRST_RESERVED, DomId};

/// The version of the local protocol this crate speaks (`VERSION` answers it).
pub const PROTOCOL_VERSION: u32 = 1;
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
/// `FRAME_SEND` flag in `aux`: answer `EAGAIN` at once instead of waiting for ring space.
pub const SEND_F_NOWAIT: u32 = 1;
/// The largest datagram payload a frame may carry.
pub const MAX_DGRAM: u32 = crate::abi::MAX_MESSAGE_SIZE;

/// A V4V address `(domain, port)`, written `DOM:PORT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SockAddr {
    pub domid: DomId,
    pub port: u32,
}

impl SockAddr {
    pub const fn new(domid: DomId, port: u32) -> Self {
        SockAddr { domid, port }
    }
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
    #[error("empty request")]
    Empty,
    #[error("unknown request {0:?}")]
    UnknownVerb(String),
    #[error("bad arguments for {0}")]
    BadArgs(&'static str),
    #[error("bad reply line {0:?}")]
    BadReply(String),
}

fn parse_domid(s: &str) -> Option<DomId> {
    let d: DomId = s.parse().ok()?;
    (d < DOMID_FIRST_RESERVED).then_some(d)
}

impl FromStr for SockAddr {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ParseError::BadAddr(s.chars().take(64).collect());
        let (d, p) = s.split_once(':').ok_or_else(bad)?;
        let domid = parse_domid(d).ok_or_else(bad)?;
        let port = p.parse().map_err(|_| bad())?;
        Ok(SockAddr { domid, port })
    }
}

/// A client's first line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `CONNECT DOM:PORT`: open a stream.
    Connect(SockAddr),
    /// `LISTEN PORT`: listen for streams (0 = ephemeral); the connection then gets one
    /// `INCOMING ID DOM:PORT` line per waiting connection.
    Listen(u32),
    /// `ACCEPT PORT [ID]`: take one incoming stream (the given one, or the next).
    Accept(u32, Option<u64>),
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
        let args: Vec<&str> = it.collect();
        let port = |s: &str, what| s.parse::<u32>().map_err(|_| ParseError::BadArgs(what));
        match (verb, args.as_slice()) {
            ("CONNECT", [a]) => Ok(Request::Connect(a.parse()?)),
            ("CONNECT", _) => Err(ParseError::BadArgs("CONNECT")),
            ("LISTEN", [p]) => Ok(Request::Listen(port(p, "LISTEN")?)),
            ("LISTEN", _) => Err(ParseError::BadArgs("LISTEN")),
            ("ACCEPT", [p]) => Ok(Request::Accept(port(p, "ACCEPT")?, None)),
            ("ACCEPT", [p, id]) => Ok(Request::Accept(
                port(p, "ACCEPT")?,
                Some(id.parse().map_err(|_| ParseError::BadArgs("ACCEPT"))?),
            )),
            ("ACCEPT", _) => Err(ParseError::BadArgs("ACCEPT")),
            ("DGRAM", [p]) => Ok(Request::Dgram(port(p, "DGRAM")?, None)),
            ("DGRAM", [p, d]) => Ok(Request::Dgram(
                port(p, "DGRAM")?,
                Some(parse_domid(d).ok_or(ParseError::BadArgs("DGRAM"))?),
            )),
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
            Request::Connect(a) => write!(f, "CONNECT {a}"),
            Request::Listen(p) => write!(f, "LISTEN {p}"),
            Request::Accept(p, None) => write!(f, "ACCEPT {p}"),
            Request::Accept(p, Some(id)) => write!(f, "ACCEPT {p} {id}"),
            Request::Dgram(p, None) => write!(f, "DGRAM {p}"),
            Request::Dgram(p, Some(d)) => write!(f, "DGRAM {p} {d}"),
            Request::Status => write!(f, "STATUS"),
            Request::Version => write!(f, "VERSION"),
            Request::Closed(id) => write!(f, "CLOSED {id}"),
            Request::Reset(id) => write!(f, "RESET {id}"),
            Request::Acl(a) => a.fmt(f),
        }
    }
}

/// The daemon's reply line: `OK ARGS...` or `ERR CODE REASON`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Ok(String),
    Err { code: String, reason: String },
}

impl Reply {
    pub fn parse(line: &str) -> Result<Self, ParseError> {
        let line = line.trim_end_matches(['\n', '\r']);
        if let Some(rest) = line.strip_prefix("OK")
            && (rest.is_empty() || rest.starts_with(' '))
        {
            return Ok(Reply::Ok(rest.trim_start().to_string()));
        }
        if let Some(rest) = line.strip_prefix("ERR ") {
            let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
            return Ok(Reply::Err {
                code: code.to_string(),
                reason: reason.to_string(),
            });
        }
        Err(ParseError::BadReply(line.chars().take(64).collect()))
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

/// `DOMID_ANY` as a partner, for readers of this module.
pub const ANY_PARTNER: DomId = DOMID_ANY;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip() {
        for r in [
            Request::Connect(SockAddr::new(2, 5000)),
            Request::Listen(0),
            Request::Accept(7, None),
            Request::Accept(7, Some(3)),
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
        assert_eq!(Reply::parse("OK 5\n"), Ok(Reply::Ok("5".into())));
        assert_eq!(
            Reply::parse("ERR ECONNREFUSED nobody listens\n"),
            Ok(Reply::Err {
                code: "ECONNREFUSED".into(),
                reason: "nobody listens".into()
            })
        );
        assert!(Reply::parse("OKAY").is_err());
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
}
