// SPDX-License-Identifier: MIT OR Apache-2.0
//! Sending to the hypervisor: `sendv`, waiting for ring space, and the queue of RSTs that met a
//! full ring.
//!
//! Owns the set of parked clients (a message of theirs is stuck on a full ring), the RST queue
//! (bounded) and the EBUSY retry timer. It calls only `sendv` and `notify`; what a parked client
//! does when retried is its handler's business.

use std::collections::{HashSet, VecDeque};
use std::io::IoSlice;
use std::time::{Duration, Instant};

use tracing::debug;
use v4v::abi::{
    Addr, DomId, PROTO_STREAM, RING_DATA_F_EXISTS, RING_DATA_F_SUFFICIENT, RingDataEnt, SendAddr,
};
use v4v::{HvError, Hypervisor};

use super::Daemon;
use super::stats::Stats;
use crate::wire::{self, Segment};

/// Retry delay after EBUSY (the ring's waiter queue was full).
const BUSY_RETRY: Duration = Duration::from_millis(20);
/// Most RSTs to unknown connections kept for retry when the peer's ring is full.
const MAX_RST_QUEUE: usize = 1024;

/// The send side of the daemon.
pub(super) struct Tx {
    domid: DomId,
    /// Clients with a message stuck on a full ring.
    parked: HashSet<usize>,
    /// RSTs that met a full ring: (our port, peer, conid).
    rst_queue: VecDeque<(u32, Addr, u32)>,
    /// When to retry after EBUSY.
    busy_retry: Option<Instant>,
}

impl Tx {
    pub fn new(domid: DomId) -> Self {
        Tx {
            domid,
            parked: HashSet::new(),
            rst_queue: VecDeque::new(),
            busy_retry: None,
        }
    }

    /// The domain we send as changed (restored or migrated).
    pub fn set_domid(&mut self, domid: DomId) {
        self.domid = domid;
    }

    /// Parks client `t` until space may have come.
    pub fn park(&mut self, t: usize) {
        self.parked.insert(t);
    }

    /// Forgets client `t` (it is gone).
    pub fn forget(&mut self, t: usize) {
        self.parked.remove(&t);
    }

    /// The parked clients, unparked: each is retried by its handler and parks again if the
    /// space is still missing.
    pub fn take_parked(&mut self) -> Vec<usize> {
        self.parked.drain().collect()
    }

    /// The queued RSTs, taken out for a retry.
    pub fn take_rsts(&mut self) -> VecDeque<(u32, Addr, u32)> {
        std::mem::take(&mut self.rst_queue)
    }

    /// When the EBUSY retry is due, if one is pending.
    pub fn busy_deadline(&self) -> Option<Instant> {
        self.busy_retry
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
