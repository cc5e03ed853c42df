// SPDX-License-Identifier: MIT OR Apache-2.0
//! The daemon's hypervisor, counted: every `sendv` (one per message of a batch) and `notify`
//! the daemon makes goes through [`Counted`], so that what a message costs in hypercalls can be
//! measured (`STATUS` does not carry it; the daemon logs the totals when it stops, and tests read
//! them through [`HvCounts`]). The loop counts its wake-ups there too: what a message costs in
//! passes of the loop, and the rings it drains: what an event costs in rings looked into.
//!
//! Owns nothing but the counters; every call is passed on unchanged.

use std::io::IoSlice;
use std::os::fd::BorrowedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use v4v::abi::{Config, Info, RingDataEnt, SendAddr, TablesRule};
use v4v::hypervisor::{BatchSend, TablesPage};
use v4v::shmem::RingMemory;
use v4v::{HvError, Hypervisor};

/// Hypercalls made so far.
#[derive(Debug, Default)]
pub struct HvCounts {
    sendv: AtomicU64,
    notify: AtomicU64,
    wakeups: AtomicU64,
    drains: AtomicU64,
}

impl HvCounts {
    /// `sendv`s attempted (successful or not).
    pub fn sendv(&self) -> u64 {
        self.sendv.load(Ordering::Relaxed)
    }

    /// `notify`s made (with or without entries).
    pub fn notify(&self) -> u64 {
        self.notify.load(Ordering::Relaxed)
    }

    /// Times the event loop's poll returned (events or a timer): the loop's wake-ups.
    pub fn wakeups(&self) -> u64 {
        self.wakeups.load(Ordering::Relaxed)
    }

    pub(super) fn woke(&self) {
        self.wakeups.fetch_add(1, Ordering::Relaxed);
    }

    /// Rings drained (looked into for messages). An event drains only the rings holding
    /// something, not every registered one.
    pub fn drains(&self) -> u64 {
        self.drains.load(Ordering::Relaxed)
    }

    pub(super) fn drained(&self) {
        self.drains.fetch_add(1, Ordering::Relaxed);
    }
}

/// A hypervisor whose sends and notifies are counted.
pub(super) struct Counted {
    pub inner: Box<dyn Hypervisor>,
    pub counts: Arc<HvCounts>,
}

impl Hypervisor for Counted {
    fn alloc_ring_memory(&self, bytes: usize) -> Result<RingMemory, HvError> {
        self.inner.alloc_ring_memory(bytes)
    }

    fn register_ring(&self, mem: &RingMemory, offset: usize) -> Result<(), HvError> {
        self.inner.register_ring(mem, offset)
    }

    fn unregister_ring(&self, mem: &RingMemory, offset: usize) -> Result<(), HvError> {
        self.inner.unregister_ring(mem, offset)
    }

    fn sendv(
        &self,
        addr: &SendAddr,
        iov: &[IoSlice<'_>],
        message_type: u32,
    ) -> Result<u32, HvError> {
        self.counts.sendv.fetch_add(1, Ordering::Relaxed);
        self.inner.sendv(addr, iov, message_type)
    }

    fn sendv_batch(&self, sends: &[BatchSend<'_>], results: &mut Vec<Result<u32, HvError>>) {
        self.counts
            .sendv
            .fetch_add(sends.len() as u64, Ordering::Relaxed);
        self.inner.sendv_batch(sends, results);
    }

    fn notify(&self, entries: Option<&mut [RingDataEnt]>) -> Result<(), HvError> {
        self.counts.notify.fetch_add(1, Ordering::Relaxed);
        self.inner.notify(entries)
    }

    fn info(&self) -> Result<Info, HvError> {
        self.inner.info()
    }

    fn config(&self, config: &Config) -> Result<(), HvError> {
        self.inner.config(config)
    }

    fn tables_add(&self, rule: &TablesRule, position: u32) -> Result<(), HvError> {
        self.inner.tables_add(rule, position)
    }

    fn tables_del(&self, rule: Option<&TablesRule>, position: u32) -> Result<(), HvError> {
        self.inner.tables_del(rule, position)
    }

    fn tables_list(&self, start: u32, max: u32) -> Result<TablesPage, HvError> {
        self.inner.tables_list(start, max)
    }

    fn event_fd(&self) -> BorrowedFd<'_> {
        self.inner.event_fd()
    }

    fn take_event(&self) -> Result<bool, HvError> {
        self.inner.take_event()
    }

    fn rebind_event(&mut self) -> Result<(), HvError> {
        self.inner.rebind_event()
    }

    fn names(&self) -> Option<&dyn v4v::names::NameDirectory> {
        self.inner.names()
    }
}
