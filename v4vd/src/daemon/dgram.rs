// SPDX-License-Identifier: MIT OR Apache-2.0
//! Datagram clients: frames from a client become `V4V_PROTO_DGRAM` sends, messages on its port's
//! ring become frames to it, and each send is answered with a STATUS frame.
//!
//! Owns a datagram client's partial frame and its one parked send ([`DgramClient`]). Reading
//! stops while a send waits for ring space, and a port's ring stops being drained while its
//! client's output is full, so nothing here grows without bound.

use std::io::{self, Read};

use tracing::debug;
use v4v::HvError;
use v4v::abi::{self, Addr, PROTO_DGRAM, RING_DATA_F_EXISTS, RingDataEnt};
use v4v::client::proto::{
    FRAME_DATA, FRAME_HEADER_SIZE, FRAME_SEND, FRAME_STATUS, FrameHeader, MAX_DGRAM, SEND_F_NOWAIT,
};

use super::Daemon;
use super::ports::PortKind;
use super::session::ClientState;

/// A datagram client's state.
pub(super) struct DgramClient {
    pub port: u32,
    /// Partial frame from the client.
    pub inbuf: Vec<u8>,
    /// A send waiting for ring space: destination and payload.
    pub pending: Option<(Addr, Vec<u8>)>,
    /// Bytes reserved in the user's budget for the frame being read (and then parked).
    pub frame_reserved: usize,
}

impl DgramClient {
    pub fn new(port: u32) -> Self {
        DgramClient {
            port,
            inbuf: Vec::new(),
            pending: None,
            frame_reserved: 0,
        }
    }
}

impl Daemon {
    pub(super) fn on_dgram(&mut self, port: u32, src: Addr, payload: &[u8]) {
        let Some(PortKind::Dgram(t)) = self.ports.get(port).map(|p| &p.kind) else {
            self.stats.dropped += 1;
            debug!(port, "datagram for a non-datagram port dropped");
            return;
        };
        let t = *t;
        let Some(c) = self.clients.get_mut(t) else {
            return;
        };
        let h = FrameHeader {
            len: payload.len() as u32,
            kind: FRAME_DATA,
            domain: src.domain,
            port: src.port,
            aux: 0,
        };
        c.out.extend(h.encode());
        c.out.extend(payload);
        if let Err(e) = c.flush() {
            debug!("client write: {e}");
            c.dead = true;
        }
    }

    pub(super) fn pump_dgram(&mut self, t: usize) {
        // Frames are processed one at a time; reading stops while a send waits for space.
        let mut rbuf = vec![0u8; 64 * 1024];
        loop {
            let Some(c) = self.clients.get_mut(t) else {
                return;
            };
            let ClientState::Dgram(d) = &mut c.state else {
                return;
            };
            let port = d.port;
            // Nothing held any more: the frame's reservation goes back.
            if d.pending.is_none() && d.inbuf.len() < FRAME_HEADER_SIZE && d.frame_reserved > 0 {
                let n = std::mem::take(&mut d.frame_reserved);
                c.reserved -= n;
                self.budgets.release(c.cred.uid, n);
                continue;
            }
            if let Some((dst, payload)) = d.pending.take() {
                if !self.dgram_send(t, port, dst, payload, false) {
                    return;
                }
                continue;
            }
            // A whole frame buffered? Else read (only) what the frame still lacks.
            let want = if d.inbuf.len() >= FRAME_HEADER_SIZE {
                let mut hb = [0u8; FRAME_HEADER_SIZE];
                hb.copy_from_slice(&d.inbuf[..FRAME_HEADER_SIZE]);
                let h = FrameHeader::decode(&hb);
                if h.kind != FRAME_SEND || h.len > MAX_DGRAM {
                    c.dead = true;
                    let uid = c.cred.uid;
                    user_warn!(
                        self,
                        uid,
                        uid,
                        "datagram client sent a bad frame ({h:?}); closing it"
                    );
                    return;
                }
                let total = FRAME_HEADER_SIZE + h.len as usize;
                if d.inbuf.len() < total && d.frame_reserved == 0 {
                    // Reserve the whole frame before buffering it; past the budget the client
                    // is paced (not read) until its user's other buffers go.
                    match self.budgets.reserve(c.cred.uid, h.len as usize) {
                        Ok(()) => {
                            d.frame_reserved = h.len as usize;
                            c.reserved += h.len as usize;
                        }
                        Err(why) => {
                            c.paced = true;
                            let uid = c.cred.uid;
                            user_warn!(self, uid, uid, "datagram client paced: {why}");
                            return;
                        }
                    }
                }
                if d.inbuf.len() >= total {
                    let payload = d.inbuf[FRAME_HEADER_SIZE..total].to_vec();
                    d.inbuf.drain(..total);
                    let dst = Addr::new(h.domain, h.port);
                    if h.port == 0 || h.domain >= abi::DOMID_FIRST_RESERVED {
                        let why = if h.port == 0 {
                            "port 0 is not a destination".to_string()
                        } else {
                            reserved_domain(h.domain)
                        };
                        self.dgram_status_with(t, dst, abi::errno::EINVAL as u32, &why);
                        continue;
                    }
                    if !self.dgram_send(t, port, dst, payload, h.aux & SEND_F_NOWAIT != 0) {
                        return;
                    }
                    continue;
                }
                (total - d.inbuf.len()).min(rbuf.len())
            } else {
                // Status frames are 16 bytes; stop reading requests while the client is not
                // reading its replies.
                if c.out.len() >= self.cfg.dgram_buffer {
                    return;
                }
                FRAME_HEADER_SIZE - d.inbuf.len()
            };
            match c.stream.read(&mut rbuf[..want]) {
                Ok(0) => {
                    c.dead = true;
                    return;
                }
                Ok(n) => d.inbuf.extend_from_slice(&rbuf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    c.dead = true;
                    return;
                }
            }
        }
    }

    /// Sends a client's datagram and queues its STATUS frame. A full destination parks the
    /// datagram (the client is not read until space comes) unless `nowait`, which answers
    /// `EAGAIN`. Returns false when parked.
    pub(super) fn dgram_send(
        &mut self,
        t: usize,
        port: u32,
        dst: Addr,
        payload: Vec<u8>,
        nowait: bool,
    ) -> bool {
        match self.send_or_wait(port, dst, PROTO_DGRAM, &payload) {
            Ok(true) => self.dgram_status(t, dst, 0),
            Ok(false) if nowait => self.dgram_status(t, dst, abi::errno::EAGAIN as u32),
            Ok(false) => {
                self.tx.park(t, dst, payload.len());
                if let Some(ClientState::Dgram(d)) = self.clients.get_mut(t).map(|c| &mut c.state) {
                    d.pending = Some((dst, payload));
                }
                return false;
            }
            Err(e) => {
                let why = self.send_reason(&e, dst, payload.len());
                self.dgram_status_with(t, dst, e.errno() as u32, &why)
            }
        }
        true
    }

    /// Why a datagram of `len` bytes to `dst` failed, for the STATUS frame: a message too big
    /// for its ring says its size and the ring's maximum.
    fn send_reason(&self, e: &HvError, dst: Addr, len: usize) -> String {
        if *e != HvError::MessageTooBig {
            return String::new();
        }
        let mut ent = [RingDataEnt {
            ring: dst,
            ..Default::default()
        }];
        match self.hv.notify(Some(&mut ent)) {
            Ok(()) if ent[0].flags & RING_DATA_F_EXISTS != 0 => format!(
                "{len} bytes do not fit the ring at {}:{}, which takes at most {} bytes per message",
                dst.domain, dst.port, ent[0].max_message_size
            ),
            _ => format!(
                "{len} bytes do not fit the ring at {}:{}",
                dst.domain, dst.port
            ),
        }
    }

    pub(super) fn dgram_status(&mut self, t: usize, dst: Addr, errno: u32) {
        self.dgram_status_with(t, dst, errno, "");
    }

    /// Queues the STATUS frame of one SEND; a failure may carry `reason` (text) as its payload.
    pub(super) fn dgram_status_with(&mut self, t: usize, dst: Addr, errno: u32, reason: &str) {
        if let Some(c) = self.clients.get_mut(t) {
            let reason = if errno == 0 { "" } else { reason };
            let h = FrameHeader {
                len: u32::try_from(reason.len()).unwrap_or(0),
                kind: FRAME_STATUS,
                domain: dst.domain,
                port: dst.port,
                aux: errno,
            };
            c.out.extend(h.encode());
            c.out.extend(reason.as_bytes());
            if c.flush().is_err() {
                c.dead = true;
            }
        }
    }
}

/// Why a domain id at or above `DOMID_FIRST_RESERVED` is refused.
pub(super) fn reserved_domain(d: abi::DomId) -> String {
    format!(
        "domain {d} is reserved: domain ids are below {}",
        abi::DOMID_FIRST_RESERVED
    )
}
