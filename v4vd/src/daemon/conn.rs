// SPDX-License-Identifier: MIT OR Apache-2.0
//! The stream state machine, as pure code: the V4V side of one stream connection.
//!
//! # Protocol primer
//!
//! Two daemons carry a stream in `V4V_PROTO_STREAM` messages (see [`crate::wire`]), each naming
//! the connection by the id the connecting side chose. Our end is named by a [`ConnKey`]: the
//! ring the peer sends to, the peer's ring, the id.
//!
//! ```text
//!  connector                               acceptor
//!  SYN{window}  ------------------------->            (backlog; SYN|ACK at once)
//!               <-------------------------  SYN|ACK{window}
//!  DATA(n ≤ credit) --------------------->            (buffered ≤ the window we granted)
//!               <-------------------------  ACK{credit}  (the acceptor's client consumed bytes)
//!  FIN          ------------------------->            (no more data this way)
//!               <-------------------------  FIN
//!  RST          <------------------------>            (abort, or "not a connection")
//! ```
//!
//! - Credit: a side sends at most as many data bytes as the other granted (the SYN's or
//!   SYN|ACK's window, plus every ACK). A receiver grants only what its client consumed, so a
//!   connection never buffers more than its window. A side that finished receiving (it got
//!   FIN) grants nothing more.
//! - Credit goes back in batches: an ACK only once the client consumed a quarter of the window
//!   (`Conn::credit_batch`), not after every chunk. This never stalls a sender: a sender out
//!   of credit with nothing in flight means the receiver holds or has consumed the whole window,
//!   so once its client reads, at least a window's worth (more than any batch) is due.
//! - Each direction ends with FIN; a stream is over when both FINs were exchanged and
//!   everything was delivered to the client ([`State::Closing`] until then).
//! - A closed connection is remembered for a while ([`State::TimeWait`]): segments still in
//!   flight for it (credit the peer granted before it saw our FIN) are absorbed, never
//!   answered with RST, so a stream that ended orderly is never reported as reset ([`stray`]).
//! - RST answers only what needs an answer: data, or a SYN|ACK, for a connection that does not
//!   exist ([`stray`]); a SYN to a port nobody listens on is refused by the stream handlers.
//!
//! The ring between two daemons is FIFO, so segments of one connection arrive in order; what
//! is "late" is what the peer sent before it learnt of our close.
//!
//! # Ownership
//!
//! [`Conn`] owns one connection's protocol state: its [`State`], credit, the bytes held for its
//! client, and the encoded messages waiting for ring space. Transitions are functions from
//! (state, segment or client event) to (state, [`Step`]); they do no I/O. The stream handlers
//! (`streams.rs`) perform each step: they send, deliver and close.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use v4v::abi::Addr;

use super::stats::ByteCounts;
use super::streams::CloseReason;
use crate::wire::{self, Segment};

/// How long a SYN may wait for its answer.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

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

/// Where a connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum State {
    /// Our SYN is sent (or queued); waiting for SYN|ACK.
    Connecting,
    /// Data may flow both ways.
    Established,
    /// Half-closed by us: our client ended (FIN sent or queued); the peer may still send.
    FinSent,
    /// Half-closed by the peer: it sent FIN; our client may still send.
    FinReceived,
    /// FIN both ways; what is buffered still goes to our client, queued messages to the peer.
    Closing,
    /// Over (orderly, or aborted); only remembered so that late segments are absorbed.
    TimeWait,
}

/// A segment this state machine asks to send (data is read from the client by the handler,
/// within [`Conn::sendable`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Out {
    Ack { credit: u32 },
    Fin,
    Rst,
}

impl Out {
    /// The wire message for connection `conid`.
    pub fn encode(self, conid: u32) -> Vec<u8> {
        let seg = match self {
            Out::Ack { credit } => Segment::Ack { credit },
            Out::Fin => Segment::Fin,
            Out::Rst => Segment::Rst,
        };
        wire::encode(conid, &seg)
    }
}

/// What a transition tells the handler to do besides sending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Event {
    /// Pass the segment's payload to the client.
    Deliver,
    /// Our connect was accepted.
    Connected,
    /// The stream is over (now [`State::TimeWait`]); `Eof` when it ended orderly.
    Closed(CloseReason),
}

/// The result of a transition: at most one segment to send (queued after what is already
/// queued) and at most one event, in that order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct Step {
    pub send: Option<Out>,
    pub event: Option<Event>,
}

impl Step {
    const NONE: Step = Step {
        send: None,
        event: None,
    };

    fn event(e: Event) -> Step {
        Step {
            send: None,
            event: Some(e),
        }
    }

    fn send(o: Out) -> Step {
        Step {
            send: Some(o),
            event: None,
        }
    }

    /// The peer broke the protocol: reset.
    fn violation() -> Step {
        Step {
            send: Some(Out::Rst),
            event: Some(Event::Closed(CloseReason::Protocol)),
        }
    }
}

/// The answer to a segment for a connection this daemon does not hold: `remembered` when it is
/// in time-wait (closed, still remembered), else it is unknown. Only data and SYN|ACK get RST:
/// both mean the peer believes it is open and would wait on us. Late credit, FIN, pings, pongs
/// and RSTs are absorbed. (A SYN is the stream handlers' business: a new connection.)
pub(super) fn stray(seg: &Segment<'_>, remembered: bool) -> Option<Out> {
    let _ = remembered; // both cases answer alike today; time-wait also guards id reuse
    match seg {
        Segment::Data(_) | Segment::SynAck { .. } => Some(Out::Rst),
        Segment::Syn { .. }
        | Segment::Ack { .. }
        | Segment::Fin
        | Segment::Rst
        | Segment::Ping
        | Segment::Pong => None,
    }
}

/// The V4V side of one stream.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct Conn {
    pub key: ConnKey,
    /// Daemon-unique id given to the client (`CLOSED ID` asks how the stream ended).
    pub id: u64,
    /// When the connection was opened (a connect waits at most [`CONNECT_TIMEOUT`]).
    pub started: Instant,
    state: State,
    /// Our receive window: the most data bytes held for our client.
    window: u32,
    /// Bytes we may still send to the peer.
    credit: u32,
    /// Bytes the client consumed that we have not granted back to the peer yet.
    grant: u32,
    /// Credit is granted back once `grant` reaches this (at most the window, so a sender never
    /// waits for it forever).
    batch: u32,
    /// Data bytes from the peer buffered for the client.
    held: usize,
    /// Data bytes of the payload cap per message.
    chunk: usize,
    /// Encoded messages not sent yet (ring full), in order. At most a data message, a credit
    /// update and a FIN, because the client is read only when this is empty.
    pub outq: VecDeque<Vec<u8>>,
    /// The client's write side was shut down after the peer's FIN (handler's I/O flag).
    pub write_shut: bool,
    /// Payload bytes each way, for `STATUS` (statistics, not state: they never compare).
    pub counts: ByteCounts,
}

impl Conn {
    /// A connection we open: [`State::Connecting`] (the handler sends the SYN).
    pub fn connecting(key: ConnKey, id: u64, window: u32, chunk: usize, now: Instant) -> Self {
        Conn::new(key, id, State::Connecting, window, 0, chunk, now)
    }

    /// A connection a peer opened with a SYN granting `peer_window` (we answer SYN|ACK).
    pub fn accepted(
        key: ConnKey,
        id: u64,
        window: u32,
        peer_window: u32,
        chunk: usize,
        now: Instant,
    ) -> Self {
        Conn::new(key, id, State::Established, window, peer_window, chunk, now)
    }

    fn new(
        key: ConnKey,
        id: u64,
        state: State,
        window: u32,
        credit: u32,
        chunk: usize,
        started: Instant,
    ) -> Self {
        Conn {
            key,
            id,
            started,
            state,
            window,
            credit,
            grant: 0,
            batch: (window / 4).max(1),
            held: 0,
            chunk: chunk.max(1),
            outq: VecDeque::new(),
            write_shut: false,
            counts: ByteCounts::default(),
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// The peer sent FIN: nothing more comes from it.
    pub fn peer_finished(&self) -> bool {
        matches!(self.state, State::FinReceived | State::Closing)
    }

    /// FIN both ways: the peer owes nothing and may already be gone.
    pub fn finished_both_ways(&self) -> bool {
        self.state == State::Closing
    }

    /// A peer's data segment of `len` payload bytes (what [`Conn::on_segment`] does with one;
    /// the handler may deliver the payload from wherever it lies, the ring included).
    pub fn on_data(&mut self, len: usize) -> Step {
        use State::*;
        match self.state {
            TimeWait => match stray(&Segment::Data(&[]), true) {
                Some(o) => Step::send(o),
                None => Step::NONE,
            },
            // Nothing but SYN|ACK or RST may answer a SYN.
            Connecting => self.abort_with(CloseReason::Protocol),
            Established | FinSent => {
                if self.held + len > self.window as usize {
                    self.state = TimeWait;
                    return Step::violation();
                }
                self.held += len;
                self.counts.bytes_in += len as u64;
                Step::event(Event::Deliver)
            }
            FinReceived | Closing => {
                self.state = TimeWait;
                Step::violation()
            }
        }
    }

    /// A peer's segment.
    pub fn on_segment(&mut self, seg: &Segment<'_>) -> Step {
        use State::*;
        match (self.state, seg) {
            (TimeWait, s) => match stray(s, true) {
                Some(o) => Step::send(o),
                None => Step::NONE,
            },
            (_, Segment::Syn { .. } | Segment::Ping | Segment::Pong) => Step::NONE,
            (Connecting, Segment::SynAck { window }) => {
                self.state = Established;
                self.credit = *window;
                Step::event(Event::Connected)
            }
            // A duplicate answer.
            (_, Segment::SynAck { .. }) => Step::NONE,
            (_, Segment::Data(d)) => self.on_data(d.len()),
            // Nothing but SYN|ACK or RST may answer a SYN.
            (Connecting, Segment::Fin) => self.abort_with(CloseReason::Protocol),
            (Connecting, Segment::Ack { .. }) => Step::NONE,
            (_, Segment::Rst) => {
                self.state = TimeWait;
                Step::event(Event::Closed(CloseReason::PeerReset))
            }
            (Established | FinReceived, Segment::Ack { credit }) => {
                self.credit = self.credit.saturating_add(*credit);
                Step::NONE
            }
            // We send nothing more: credit is moot.
            (FinSent | Closing, Segment::Ack { .. }) => Step::NONE,
            (Established, Segment::Fin) => {
                self.state = FinReceived;
                Step::NONE
            }
            (FinSent, Segment::Fin) => {
                self.state = Closing;
                Step::NONE
            }
            // A duplicate FIN.
            (FinReceived | Closing, Segment::Fin) => Step::NONE,
        }
    }

    /// The client consumed `n` of the bytes held for it.
    pub fn consumed(&mut self, n: usize) {
        self.held = self.held.saturating_sub(n);
        self.grant = self
            .grant
            .saturating_add(u32::try_from(n).unwrap_or(u32::MAX));
    }

    /// The credit batch: a quarter of the window unless set otherwise.
    #[cfg(test)]
    pub fn credit_batch(&self) -> u32 {
        self.batch
    }

    /// Sets the credit batch (the explorer's small windows, and its check that a batch larger
    /// than the window is caught stalling a sender).
    #[cfg(test)]
    pub fn with_credit_batch(mut self, batch: u32) -> Self {
        self.batch = batch.max(1);
        self
    }

    /// Bytes we may still send to the peer.
    #[cfg(test)]
    pub fn credit(&self) -> u32 {
        self.credit
    }

    /// Credit to grant back now, if any: only while the peer may still send, only when nothing
    /// else is queued (so the queue stays bounded), and only in batches of
    /// `Conn::credit_batch` bytes (one ACK per quarter window, not one per chunk).
    pub fn credit_due(&mut self) -> Option<Out> {
        let open = matches!(self.state, State::Established | State::FinSent);
        if open && self.outq.is_empty() && self.grant > 0 && self.grant >= self.batch {
            let credit = std::mem::take(&mut self.grant);
            return Some(Out::Ack { credit });
        }
        None
    }

    /// How many client bytes may be sent now (0: none may).
    pub fn sendable(&self) -> usize {
        match self.state {
            State::Established | State::FinReceived => (self.credit as usize).min(self.chunk),
            _ => 0,
        }
    }

    /// `n` client bytes were taken for sending (at most [`Conn::sendable`]).
    pub fn sent(&mut self, n: usize) {
        self.counts.bytes_out += n as u64;
        self.credit = self
            .credit
            .saturating_sub(u32::try_from(n).unwrap_or(u32::MAX));
    }

    /// The client ended its side: FIN.
    pub fn client_eof(&mut self) -> Step {
        match self.state {
            State::Established => self.state = State::FinSent,
            State::FinReceived => self.state = State::Closing,
            _ => return Step::NONE,
        }
        Step::send(Out::Fin)
    }

    /// Whether the stream is over orderly, given whether the client's output buffer
    /// (`out_empty`) and our queue to the peer are empty: then it moves to time-wait.
    pub fn try_finish(&mut self, out_empty: bool) -> Step {
        if self.state == State::Closing && out_empty && self.outq.is_empty() {
            self.state = State::TimeWait;
            return Step::event(Event::Closed(CloseReason::Eof));
        }
        Step::NONE
    }

    /// Our side aborts (client gone, timeout, daemon stopping): RST, over.
    pub fn abort_with(&mut self, reason: CloseReason) -> Step {
        if self.state == State::TimeWait {
            return Step::NONE;
        }
        self.state = State::TimeWait;
        self.outq.clear();
        Step {
            send: Some(Out::Rst),
            event: Some(Event::Closed(reason)),
        }
    }

    /// The peer is unreachable (gone, or the ACL refuses): over, nothing to send.
    pub fn lost(&mut self, reason: CloseReason) -> Step {
        if self.state == State::TimeWait {
            return Step::NONE;
        }
        self.state = State::TimeWait;
        self.outq.clear();
        Step::event(Event::Closed(reason))
    }

    /// Whether an unanswered connect has waited too long at `now`.
    pub fn connect_expired(&self, now: Instant) -> bool {
        self.state == State::Connecting && now.duration_since(self.started) > CONNECT_TIMEOUT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: u32 = 8;

    fn key() -> ConnKey {
        ConnKey {
            ring_port: 7,
            peer: Addr::new(1, 9),
            conid: 3,
        }
    }

    fn at(state: State) -> Conn {
        let mut c = Conn::accepted(key(), 1, W, 4, 16, Instant::now());
        c.state = state;
        c
    }

    fn closed(r: CloseReason) -> Option<Event> {
        Some(Event::Closed(r))
    }

    #[test]
    fn connecting() {
        let mut c = Conn::connecting(key(), 1, W, 16, Instant::now());
        assert_eq!(c.sendable(), 0, "nothing is sent before the answer");
        assert_eq!(c.on_segment(&Segment::Ack { credit: 5 }), Step::NONE);
        assert_eq!(
            c.on_segment(&Segment::SynAck { window: 6 }),
            Step::event(Event::Connected)
        );
        assert_eq!((c.state(), c.sendable()), (State::Established, 6));

        let mut c = Conn::connecting(key(), 1, W, 16, Instant::now());
        let s = c.on_segment(&Segment::Rst);
        assert_eq!(s.event, closed(CloseReason::PeerReset));
        assert_eq!((s.send, c.state()), (None, State::TimeWait));

        for seg in [Segment::Data(b"x"), Segment::Fin] {
            let mut c = Conn::connecting(key(), 1, W, 16, Instant::now());
            assert_eq!(c.on_segment(&seg), Step::violation(), "{seg:?}");
            assert_eq!(c.state(), State::TimeWait);
        }
        let long_ago = Instant::now() - CONNECT_TIMEOUT - Duration::from_secs(1);
        let mut c = Conn::connecting(key(), 1, W, 16, long_ago);
        assert!(!Conn::connecting(key(), 1, W, 16, Instant::now()).connect_expired(Instant::now()));
        assert!(c.connect_expired(Instant::now()));
        c.on_segment(&Segment::SynAck { window: 1 });
        assert!(!c.connect_expired(Instant::now()));
    }

    #[test]
    fn established_data_credit_and_window() {
        let mut c = at(State::Established);
        assert_eq!(c.sendable(), 4);
        c.sent(3);
        assert_eq!(c.sendable(), 1);
        assert_eq!(c.on_segment(&Segment::Ack { credit: 10 }), Step::NONE);
        assert_eq!(c.sendable(), 11);
        assert_eq!(
            c.on_segment(&Segment::Data(b"12345")),
            Step::event(Event::Deliver)
        );
        // Nothing consumed yet: no credit.
        assert_eq!(c.credit_due(), None);
        c.consumed(1);
        assert_eq!(
            c.credit_due(),
            None,
            "1 < a quarter of the window, 4 still held"
        );
        c.consumed(1);
        assert_eq!(c.credit_due(), Some(Out::Ack { credit: 2 }));
        c.consumed(3);
        c.outq.push_back(vec![0]);
        assert_eq!(c.credit_due(), None, "only when nothing else is queued");
        c.outq.clear();
        assert_eq!(c.credit_due(), Some(Out::Ack { credit: 3 }));
        // Over the window: a violation.
        assert_eq!(
            c.on_segment(&Segment::Data(b"123456789")),
            Step::violation()
        );
        assert_eq!(c.state(), State::TimeWait);
    }

    /// Issue 11: a client that reads everything at once does not make an ACK per chunk; credit
    /// goes back once a quarter of the window was consumed.
    #[test]
    fn credit_waits_for_a_batch_even_when_everything_was_read() {
        let mut c = Conn::accepted(key(), 1, 4096, 4096, 16, Instant::now());
        assert_eq!(c.credit_batch(), 1024);
        for _ in 0..63 {
            assert_eq!(
                c.on_segment(&Segment::Data(&[0; 16])),
                Step::event(Event::Deliver)
            );
            c.consumed(16);
            assert_eq!(
                c.credit_due(),
                None,
                "below the batch, all read: no ACK yet"
            );
        }
        c.on_segment(&Segment::Data(&[0; 16]));
        c.consumed(16);
        assert_eq!(c.credit_due(), Some(Out::Ack { credit: 1024 }));
        assert_eq!(c.credit_due(), None, "granted once");
    }

    #[test]
    fn chunk_caps_what_is_sendable() {
        let mut c = Conn::accepted(key(), 1, W, 100, 16, Instant::now());
        assert_eq!(c.sendable(), 16);
        c.sent(100);
        assert_eq!(c.sendable(), 0);
    }

    #[test]
    fn established_ignores_probes_and_duplicates() {
        for seg in [
            Segment::Syn { window: 1 },
            Segment::SynAck { window: 1 },
            Segment::Ping,
            Segment::Pong,
        ] {
            let mut c = at(State::Established);
            assert_eq!(c.on_segment(&seg), Step::NONE, "{seg:?}");
            assert_eq!((c.state(), c.sendable()), (State::Established, 4));
        }
    }

    #[test]
    fn half_close_by_us_then_peer() {
        let mut c = at(State::Established);
        assert_eq!(c.client_eof(), Step::send(Out::Fin));
        assert_eq!(c.state(), State::FinSent);
        assert_eq!(c.sendable(), 0);
        assert_eq!(c.client_eof(), Step::NONE, "one FIN");
        // The peer still sends, and still gets credit.
        assert_eq!(
            c.on_segment(&Segment::Data(b"ab")),
            Step::event(Event::Deliver)
        );
        c.consumed(2);
        assert_eq!(c.credit_due(), Some(Out::Ack { credit: 2 }));
        assert_eq!(c.on_segment(&Segment::Ack { credit: 9 }), Step::NONE);
        assert_eq!(c.sendable(), 0);
        assert_eq!(c.on_segment(&Segment::Fin), Step::NONE);
        assert_eq!(c.state(), State::Closing);
        assert!(c.finished_both_ways());
    }

    #[test]
    fn half_close_by_peer_then_us() {
        let mut c = at(State::Established);
        assert_eq!(c.on_segment(&Segment::Fin), Step::NONE);
        assert_eq!(c.state(), State::FinReceived);
        assert!(c.peer_finished());
        // We still send; it grants nothing more after its FIN, we grant it nothing either.
        assert_eq!(c.sendable(), 4);
        assert_eq!(c.on_segment(&Segment::Ack { credit: 1 }), Step::NONE);
        assert_eq!(c.sendable(), 5);
        c.consumed(3);
        assert_eq!(c.credit_due(), None);
        assert_eq!(c.on_segment(&Segment::Fin), Step::NONE, "duplicate FIN");
        assert_eq!(c.on_segment(&Segment::Data(b"x")), Step::violation());
        let mut c = at(State::FinReceived);
        assert_eq!(c.client_eof(), Step::send(Out::Fin));
        assert_eq!(c.state(), State::Closing);
    }

    #[test]
    fn closing_finishes_when_everything_is_delivered_and_sent() {
        let mut c = at(State::Closing);
        assert_eq!(c.try_finish(false), Step::NONE, "client output pending");
        c.outq.push_back(vec![1]);
        assert_eq!(
            c.try_finish(true),
            Step::NONE,
            "a message to the peer pending"
        );
        c.outq.clear();
        assert_eq!(
            c.try_finish(true),
            Step::event(Event::Closed(CloseReason::Eof))
        );
        assert_eq!(c.state(), State::TimeWait);
        assert_eq!(c.try_finish(true), Step::NONE, "once");
        for s in [State::Established, State::FinSent, State::FinReceived] {
            assert_eq!(at(s).try_finish(true), Step::NONE, "{s:?}");
        }
        // Closing: late credit and duplicates are nothing; data is a violation.
        let mut c = at(State::Closing);
        assert_eq!(c.on_segment(&Segment::Ack { credit: 1 }), Step::NONE);
        assert_eq!(c.on_segment(&Segment::Fin), Step::NONE);
        assert_eq!(c.on_segment(&Segment::Data(b"x")), Step::violation());
    }

    #[test]
    fn rst_ends_every_open_state() {
        for s in [
            State::Established,
            State::FinSent,
            State::FinReceived,
            State::Closing,
        ] {
            let mut c = at(s);
            assert_eq!(
                c.on_segment(&Segment::Rst),
                Step::event(Event::Closed(CloseReason::PeerReset)),
                "{s:?}"
            );
            assert_eq!(c.state(), State::TimeWait);
        }
    }

    #[test]
    fn abort_and_loss() {
        let mut c = at(State::FinSent);
        c.outq.push_back(vec![1]);
        let s = c.abort_with(CloseReason::LocalAbort);
        assert_eq!(s.send, Some(Out::Rst));
        assert_eq!(s.event, closed(CloseReason::LocalAbort));
        assert!(c.outq.is_empty(), "nothing queued survives an abort");
        assert_eq!(c.abort_with(CloseReason::LocalAbort), Step::NONE, "once");
        let mut c = at(State::Established);
        assert_eq!(
            c.lost(CloseReason::PeerGone),
            Step::event(Event::Closed(CloseReason::PeerGone))
        );
        assert_eq!(c.lost(CloseReason::PeerGone), Step::NONE);
    }

    /// Defect 1 of issue 10: a late credit ACK (granted before the peer saw our FIN) reaching
    /// a closed connection is absorbed, never answered with RST.
    #[test]
    fn time_wait_absorbs_late_segments_and_resets_data() {
        let mut c = at(State::Closing);
        c.try_finish(true);
        assert_eq!(c.state(), State::TimeWait);
        for seg in [
            Segment::Ack { credit: 4096 },
            Segment::Fin,
            Segment::Ping,
            Segment::Pong,
            Segment::Rst,
            Segment::Syn { window: 1 },
        ] {
            assert_eq!(c.on_segment(&seg), Step::NONE, "{seg:?}");
        }
        assert_eq!(c.on_segment(&Segment::Data(b"x")), Step::send(Out::Rst));
        assert_eq!(
            c.on_segment(&Segment::SynAck { window: 1 }),
            Step::send(Out::Rst)
        );
        assert_eq!(c.state(), State::TimeWait);
    }

    #[test]
    fn unknown_connections_get_rst_only_for_data_and_synack() {
        for remembered in [false, true] {
            assert_eq!(stray(&Segment::Data(b"x"), remembered), Some(Out::Rst));
            assert_eq!(
                stray(&Segment::SynAck { window: 1 }, remembered),
                Some(Out::Rst)
            );
            for seg in [
                Segment::Ack { credit: 1 },
                Segment::Fin,
                Segment::Rst,
                Segment::Ping,
                Segment::Pong,
            ] {
                assert_eq!(stray(&seg, remembered), None, "{seg:?}");
            }
        }
    }

    #[test]
    fn out_encodes_as_the_wire_segment() {
        assert_eq!(
            crate::wire::decode(&Out::Ack { credit: 5 }.encode(3)),
            Ok((3, Segment::Ack { credit: 5 }))
        );
        assert_eq!(
            crate::wire::decode(&Out::Fin.encode(4)),
            Ok((4, Segment::Fin))
        );
        assert_eq!(
            crate::wire::decode(&Out::Rst.encode(5)),
            Ok((5, Segment::Rst))
        );
    }
}
