// SPDX-License-Identifier: MIT OR Apache-2.0
//! The stream protocol between two daemons, carried in `V4V_PROTO_STREAM` messages.
//!
//! Every message starts with the v9 `v4v_stream_header {u32 flags; u32 conid}` (little-endian)
//! followed by a body whose meaning depends on the flags. See `docs/protocol.md`, "Between
//! daemons", for the state machine. Parsing never trusts the peer: a short or contradictory
//! message is reported, never a panic.

use v4v::abi::{SHF_ACK, SHF_PING, SHF_PONG, SHF_RST, SHF_SYN};

/// Project extension to the v9 flags: the sender will send no more data (orderly close).
pub const SHF_FIN: u32 = 1 << 3;
/// Size of the stream header.
pub const HEADER: usize = 8;

/// A decoded stream message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segment<'a> {
    /// Connect request carrying the connector's receive window.
    Syn { window: u32 },
    /// Accept, carrying the acceptor's receive window.
    SynAck { window: u32 },
    /// Credit: the receiver consumed `credit` more bytes.
    Ack { credit: u32 },
    /// Payload bytes.
    Data(&'a [u8]),
    /// No more data from the sender.
    Fin,
    /// Abort, or "no such connection".
    Rst,
    /// Liveness probe (conid 0 probes the peer daemon itself); answered by nothing.
    Ping,
    /// Reply to a ping (accepted, ignored).
    Pong,
}

/// Encodes a segment for connection `conid`.
pub fn encode(conid: u32, seg: &Segment<'_>) -> Vec<u8> {
    let (flags, body): (u32, &[u8]) = match seg {
        Segment::Syn { .. } => (SHF_SYN, &[]),
        Segment::SynAck { .. } => (SHF_SYN | SHF_ACK, &[]),
        Segment::Ack { .. } => (SHF_ACK, &[]),
        Segment::Data(d) => (0, d),
        Segment::Fin => (SHF_FIN, &[]),
        Segment::Rst => (SHF_RST, &[]),
        Segment::Ping => (SHF_PING, &[]),
        Segment::Pong => (SHF_PONG, &[]),
    };
    let word = match seg {
        Segment::Syn { window } | Segment::SynAck { window } => Some(*window),
        Segment::Ack { credit } => Some(*credit),
        _ => None,
    };
    let mut v = Vec::with_capacity(HEADER + body.len() + 4);
    v.extend_from_slice(&flags.to_le_bytes());
    v.extend_from_slice(&conid.to_le_bytes());
    if let Some(w) = word {
        v.extend_from_slice(&w.to_le_bytes());
    }
    v.extend_from_slice(body);
    v
}

/// Why a stream message could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("stream message of {0} bytes is shorter than its header")]
    Short(usize),
    #[error("stream message with flags {0:#x} has a malformed body")]
    BadBody(u32),
    #[error("unknown stream flags {0:#x}")]
    UnknownFlags(u32),
}

fn word(body: &[u8], flags: u32) -> Result<u32, WireError> {
    let b: [u8; 4] = body.try_into().map_err(|_| WireError::BadBody(flags))?;
    Ok(u32::from_le_bytes(b))
}

/// Decodes a message: `(conid, segment)`.
pub fn decode(msg: &[u8]) -> Result<(u32, Segment<'_>), WireError> {
    if msg.len() < HEADER {
        return Err(WireError::Short(msg.len()));
    }
    let flags = u32::from_le_bytes([msg[0], msg[1], msg[2], msg[3]]);
    let conid = u32::from_le_bytes([msg[4], msg[5], msg[6], msg[7]]);
    let body = &msg[HEADER..];
    let seg = match flags {
        0 => Segment::Data(body),
        f if f == SHF_SYN => Segment::Syn {
            window: word(body, f)?,
        },
        f if f == SHF_SYN | SHF_ACK => Segment::SynAck {
            window: word(body, f)?,
        },
        f if f == SHF_ACK => Segment::Ack {
            credit: word(body, f)?,
        },
        f if f == SHF_FIN => Segment::Fin,
        f if f & SHF_RST != 0 => Segment::Rst,
        f if f == SHF_PING => Segment::Ping,
        f if f == SHF_PONG => Segment::Pong,
        f => return Err(WireError::UnknownFlags(f)),
    };
    Ok((conid, seg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for s in [
            Segment::Syn { window: 5 },
            Segment::SynAck { window: 6 },
            Segment::Ack { credit: 7 },
            Segment::Data(b"hello"),
            Segment::Data(b""),
            Segment::Fin,
            Segment::Rst,
            Segment::Ping,
            Segment::Pong,
        ] {
            let m = encode(42, &s);
            assert_eq!(decode(&m), Ok((42, s)));
        }
        assert_eq!(decode(b"abc"), Err(WireError::Short(3)));
        assert!(decode(&[1, 0, 0, 0, 0, 0, 0, 0]).is_err());
        assert!(decode(&[0, 0, 1, 0, 0, 0, 0, 0]).is_err());
    }
}
