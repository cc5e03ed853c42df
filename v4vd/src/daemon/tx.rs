// SPDX-License-Identifier: MIT OR Apache-2.0
//! Sending to the hypervisor: `sendv`, waiting for ring space, and the queue of RSTs that met a
//! full ring.
//!
//! Owns the set of parked clients (a message of theirs is stuck on a full ring, and for which
//! destination and length), the RST queue (bounded) and the EBUSY retry timer. It calls only
//! `sendv` and `notify`; what a parked client does when retried is its handler's business.
//!
//! A V4V event retries only the parked clients whose destination may now have room: one
//! `notify` asks about every waited-for (destination, length) at once, and only those marked
//! `SUFFICIENT` (or whose ring is gone: the retry reports the error) are retried. The same
//! `notify` queues the daemon as a waiter for the others, so their space is signalled. So
//! senders parked on a ring nobody reads cost one hypercall per event, not a `sendv` and a
//! `notify` each.

use std::collections::{HashMap, VecDeque};
use std::io::IoSlice;
use std::time::{Duration, Instant};

use tracing::debug;
use v4v::abi::{
    Addr, DomId, PROTO_STREAM, RING_DATA_F_EXISTS, RING_DATA_F_SUFFICIENT, RingDataEnt, SendAddr,
};
use v4v::{BatchSend, HvError, Hypervisor};

use super::Daemon;
use super::stats::Stats;
use crate::wire::{self, Segment};

/// Retry delay after EBUSY (the ring's waiter queue was full).
const BUSY_RETRY: Duration = Duration::from_millis(20);
/// Most RSTs to unknown connections kept for retry when the peer's ring is full.
const MAX_RST_QUEUE: usize = 1024;
/// Parked senders' destinations are asked about at most this often: events can come by the
/// thousand a second (every message and every credit update), and parked senders can wait a few
/// milliseconds more.
const CHECK_INTERVAL: Duration = Duration::from_millis(5);
/// Most entries of one `notify` (the ABI's limit).
const MAX_NOTIFY_ENTRIES: usize = 256;

/// What a parked client waits for: room for `len` bytes in `dst`'s ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Wait {
    dst: Addr,
    len: u32,
}

/// The send side of the daemon.
pub(super) struct Tx {
    domid: DomId,
    /// Clients with a message stuck on a full ring, and what they wait for.
    parked: HashMap<usize, Wait>,
    /// RSTs that met a full ring: (our port, peer, conid).
    rst_queue: VecDeque<(u32, Addr, u32)>,
    /// When to retry after EBUSY.
    busy_retry: Option<Instant>,
    /// An event came since parked senders were last checked, and when they may be next.
    check_pending: bool,
    next_check: Instant,
}

impl Tx {
    pub fn new(domid: DomId) -> Self {
        Tx {
            domid,
            parked: HashMap::new(),
            rst_queue: VecDeque::new(),
            busy_retry: None,
            check_pending: false,
            next_check: Instant::now(),
        }
    }

    /// The domain we send as changed (restored or migrated).
    pub fn set_domid(&mut self, domid: DomId) {
        self.domid = domid;
    }

    /// Parks client `t` until `dst`'s ring may have room for its message of `len` bytes.
    pub fn park(&mut self, t: usize, dst: Addr, len: usize) {
        let len = u32::try_from(len).unwrap_or(u32::MAX);
        self.parked.insert(t, Wait { dst, len });
    }

    /// Whether client `t` waits for ring space (it is retried when the space may be there).
    pub fn is_parked(&self, t: usize) -> bool {
        self.parked.contains_key(&t)
    }

    /// Forgets client `t` (it is gone).
    pub fn forget(&mut self, t: usize) {
        self.parked.remove(&t);
    }

    /// Every parked client, unparked (the EBUSY timer: retried whatever their rings say).
    pub fn take_parked(&mut self) -> Vec<usize> {
        self.parked.drain().map(|(t, _)| t).collect()
    }

    /// The parked clients whose destination has room for their message now (or is gone),
    /// unparked; one `notify` for all of them. If the question itself fails, every parked
    /// client is retried.
    pub fn take_ready(&mut self, hv: &dyn Hypervisor) -> Vec<usize> {
        self.check_pending = false;
        if self.parked.is_empty() {
            return Vec::new();
        }
        self.next_check = Instant::now() + CHECK_INTERVAL;
        let mut waits: Vec<Wait> = self.parked.values().copied().collect();
        waits.sort_unstable_by_key(|w| (w.dst.domain, w.dst.port, w.len));
        waits.dedup();
        let mut ready: Vec<Wait> = Vec::new();
        for chunk in waits.chunks(MAX_NOTIFY_ENTRIES) {
            let mut ents: Vec<RingDataEnt> = chunk
                .iter()
                .map(|w| RingDataEnt {
                    ring: w.dst,
                    space_required: w.len,
                    ..Default::default()
                })
                .collect();
            if let Err(e) = hv.notify(Some(&mut ents)) {
                debug!("notify for parked senders: {e}; retrying them all");
                return self.take_parked();
            }
            for (w, ent) in chunk.iter().zip(&ents) {
                if ent.flags & RING_DATA_F_SUFFICIENT != 0 || ent.flags & RING_DATA_F_EXISTS == 0 {
                    ready.push(*w);
                }
            }
        }
        let woken: Vec<usize> = self
            .parked
            .iter()
            .filter(|(_, w)| ready.contains(w))
            .map(|(&t, _)| t)
            .collect();
        for t in &woken {
            self.parked.remove(t);
        }
        woken
    }

    /// The queued RSTs, taken out for a retry.
    pub fn take_rsts(&mut self) -> VecDeque<(u32, Addr, u32)> {
        std::mem::take(&mut self.rst_queue)
    }

    /// When the loop must wake for this module: the EBUSY retry, or a deferred check of the
    /// parked senders.
    pub fn deadline(&self) -> Option<Instant> {
        let check = (self.check_pending && !self.parked.is_empty()).then_some(self.next_check);
        match (self.busy_retry, check) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// A V4V event came: space may have come for parked senders. Whether to check them now
    /// (else the check is deferred to [`Tx::deadline`]).
    pub fn event(&mut self, now: Instant) -> bool {
        self.check_pending = true;
        self.check_due(now)
    }

    /// Whether a (deferred) check of the parked senders is due now.
    pub fn check_due(&self, now: Instant) -> bool {
        self.check_pending && now >= self.next_check
    }

    /// Whether the EBUSY retry is due now (it is then cleared).
    pub fn busy_due(&mut self, now: Instant) -> bool {
        let due = self.busy_retry.is_some_and(|b| b <= now);
        if due {
            self.busy_retry = None;
        }
        due
    }

    /// One `sendv`, counted.
    pub fn sendv(
        &mut self,
        hv: &dyn Hypervisor,
        stats: &mut Stats,
        src_port: u32,
        dst: Addr,
        ty: u32,
        msg: &[u8],
    ) -> Result<u32, HvError> {
        let addr = SendAddr {
            src: Addr::new(self.domid, src_port),
            dst,
        };
        let r = hv.sendv(&addr, &[IoSlice::new(msg)], ty);
        match r {
            Ok(_) => {
                stats.msgs_out += 1;
                stats.bytes_out += msg.len() as u64;
            }
            Err(HvError::Denied) => stats.count_refusal(addr.src, dst),
            Err(_) => {}
        }
        r
    }

    /// Sends `msgs` (destination, payload) of type `ty` from `src_port` in one
    /// `sendv_batch`, counted; `results` gets one result per message, in order.
    pub fn sendv_batch(
        &mut self,
        hv: &dyn Hypervisor,
        stats: &mut Stats,
        src_port: u32,
        msgs: &[(Addr, &[u8])],
        ty: u32,
        results: &mut Vec<Result<u32, HvError>>,
    ) {
        let src = Addr::new(self.domid, src_port);
        let iovs: Vec<[IoSlice<'_>; 1]> = msgs.iter().map(|(_, m)| [IoSlice::new(m)]).collect();
        let sends: Vec<BatchSend<'_>> = msgs
            .iter()
            .zip(&iovs)
            .map(|((dst, _), iov)| BatchSend {
                addr: SendAddr { src, dst: *dst },
                iov,
                message_type: ty,
            })
            .collect();
        hv.sendv_batch(&sends, results);
        for ((dst, m), r) in msgs.iter().zip(results.iter()) {
            match r {
                Ok(_) => {
                    stats.msgs_out += 1;
                    stats.bytes_out += m.len() as u64;
                }
                Err(HvError::Denied) => stats.count_refusal(src, *dst),
                Err(_) => {}
            }
        }
    }

    /// After EAGAIN: ask the hypervisor whether the space is there now (we are queued as a
    /// waiter either way). Returns true when a retry may succeed at once.
    fn space_now(
        &mut self,
        hv: &dyn Hypervisor,
        dst: Addr,
        len: usize,
        e: HvError,
    ) -> Result<bool, HvError> {
        match e {
            HvError::WouldBlock => {}
            HvError::Busy => {
                let at = Instant::now() + BUSY_RETRY;
                self.busy_retry = Some(self.busy_retry.map_or(at, |b| b.min(at)));
                return Ok(false);
            }
            other => return Err(other),
        }
        let mut ent = [RingDataEnt {
            ring: dst,
            space_required: u32::try_from(len).unwrap_or(u32::MAX),
            ..Default::default()
        }];
        hv.notify(Some(&mut ent))?;
        if ent[0].flags & RING_DATA_F_EXISTS == 0 {
            return Err(HvError::Refused);
        }
        Ok(ent[0].flags & RING_DATA_F_SUFFICIENT != 0)
    }

    /// Sends once, and once more if the space turned out to be there; `Ok(false)` = wait.
    pub fn send_or_wait(
        &mut self,
        hv: &dyn Hypervisor,
        stats: &mut Stats,
        src_port: u32,
        dst: Addr,
        ty: u32,
        msg: &[u8],
    ) -> Result<bool, HvError> {
        for _ in 0..2 {
            match self.sendv(hv, stats, src_port, dst, ty, msg) {
                Ok(_) => return Ok(true),
                Err(e) => {
                    if !self.space_now(hv, dst, msg.len(), e)? {
                        return Ok(false);
                    }
                }
            }
        }
        Ok(false)
    }

    /// Sends an RST, queueing it (bounded) when the peer's ring is full.
    pub fn send_rst(
        &mut self,
        hv: &dyn Hypervisor,
        stats: &mut Stats,
        src_port: u32,
        dst: Addr,
        conid: u32,
    ) {
        let m = wire::encode(conid, &Segment::Rst);
        match self.send_or_wait(hv, stats, src_port, dst, PROTO_STREAM, &m) {
            Ok(true) => {}
            Ok(false) => {
                if self.rst_queue.len() < MAX_RST_QUEUE {
                    self.rst_queue.push_back((src_port, dst, conid));
                }
            }
            Err(e) => debug!("RST to {dst:?} not sent: {e}"),
        }
    }
}

impl Daemon {
    /// Retries queued RSTs and the parked clients whose destination has room now (`all`: every
    /// parked client, after EBUSY).
    pub(super) fn retry_blocked(&mut self, all: bool) {
        if all {
            self.retry_rsts();
        }
        let woken = if all {
            self.tx.take_parked()
        } else {
            self.tx.take_ready(&*self.hv)
        };
        for t in woken {
            self.pump_client(t);
        }
    }

    /// Retries the RSTs that met a full ring.
    pub(super) fn retry_rsts(&mut self) {
        for (src, dst, conid) in self.tx.take_rsts() {
            self.send_rst(src, dst, conid);
        }
    }
}

/// Shorthands for the handlers: the daemon's hypervisor and counters with its [`Tx`].
impl Daemon {
    pub(super) fn sendv(
        &mut self,
        src_port: u32,
        dst: Addr,
        ty: u32,
        msg: &[u8],
    ) -> Result<u32, HvError> {
        self.tx
            .sendv(&*self.hv, &mut self.stats, src_port, dst, ty, msg)
    }

    pub(super) fn send_or_wait(
        &mut self,
        src_port: u32,
        dst: Addr,
        ty: u32,
        msg: &[u8],
    ) -> Result<bool, HvError> {
        self.tx
            .send_or_wait(&*self.hv, &mut self.stats, src_port, dst, ty, msg)
    }

    pub(super) fn send_rst(&mut self, src_port: u32, dst: Addr, conid: u32) {
        self.tx
            .send_rst(&*self.hv, &mut self.stats, src_port, dst, conid);
    }
}
