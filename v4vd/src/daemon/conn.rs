// SPDX-License-Identifier: MIT OR Apache-2.0
//! The V4V side of one stream connection and how a peer's segment changes it.
//!
//! Owns a connection's state (phase, credit, the messages not sent yet). It does no I/O: the
//! stream handlers (`streams.rs`) apply what it decides.

use std::collections::VecDeque;
use std::time::Instant;

use v4v::abi::Addr;

use crate::wire::Segment;

/// Names one stream connection: our ring's port, the peer's address, the connection id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct ConnKey {
    /// Our ring the peer sends this connection's segments to.
    pub ring_port: u32,
    /// The peer daemon's ring.
    pub peer: Addr,
    /// Chosen by the connecting side, unique per (its ring, our ring).
    pub conid: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    SynSent,
    Established,
}

/// The V4V side of one stream.
pub(super) struct Conn {
    pub key: ConnKey,
    /// Daemon-unique id given to the client (`CLOSED ID` asks how the stream ended).
    pub id: u64,
    pub phase: Phase,
    pub started: Instant,
    /// Bytes we may still send to the peer.
    pub credit: u32,
    /// Encoded messages not sent yet (ring full), in order. At most a data message, a credit
    /// update and a FIN, because the client is read only when this is empty.
    pub outq: VecDeque<Vec<u8>>,
    /// Bytes the client consumed that we have not granted back to the peer yet.
    pub grant: u32,
    /// Data bytes from the peer buffered for the client.
    pub held: usize,
    pub peer_fin: bool,
    pub client_eof: bool,
    pub write_shut: bool,
    /// Data bytes of the payload cap per message.
    pub chunk: usize,
}

/// What a peer's segment did to a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    Continue,
    /// Our SYN was answered.
    Established,
    /// The peer sent more than we granted, or data in the wrong state.
    Violation,
    /// The peer reset it; `refused` if it had not been established.
    Reset {
        refused: bool,
    },
}

/// Applies a peer's segment to a connection whose client-bound bytes are `out`.
pub(super) fn apply_segment(
    conn: &mut Conn,
    out: &mut VecDeque<u8>,
    seg: Segment<'_>,
    window: usize,
) -> Outcome {
    match seg {
        Segment::Syn { .. } | Segment::Ping | Segment::Pong => Outcome::Continue,
        Segment::SynAck { window } => {
            if conn.phase == Phase::SynSent {
                conn.phase = Phase::Established;
                conn.credit = window;
                Outcome::Established
            } else {
                Outcome::Continue
            }
        }
        Segment::Ack { credit } => {
            conn.credit = conn.credit.saturating_add(credit);
            Outcome::Continue
        }
        Segment::Data(d) => {
            if conn.phase != Phase::Established || conn.peer_fin || conn.held + d.len() > window {
                return Outcome::Violation;
            }
            conn.held += d.len();
            out.extend(d);
            Outcome::Continue
        }
        Segment::Fin => {
            conn.peer_fin = true;
            Outcome::Continue
        }
        Segment::Rst => Outcome::Reset {
            refused: conn.phase == Phase::SynSent,
        },
    }
}
