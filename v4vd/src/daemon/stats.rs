// SPDX-License-Identifier: MIT OR Apache-2.0
//! The daemon's counters and the one place that renders `STATUS` from the daemon's tables.
//!
//! Owns [`Stats`] (message and byte counters, ACL refusals per address pair, bounded). Reads
//! the other tables only to report them; it changes nothing but its own counters.

use std::collections::HashMap;

use v4v::abi::Addr;
use v4v::client::proto::{PROTOCOL_VERSION, SockAddr};

use super::Daemon;
use super::ports::PortKind;

/// Source/destination pairs whose ACL refusals are counted separately.
const MAX_REFUSAL_PAIRS: usize = 256;

/// Counters reported by `STATUS`.
#[derive(Debug, Default)]
pub(super) struct Stats {
    pub msgs_in: u64,
    pub bytes_in: u64,
    pub msgs_out: u64,
    pub bytes_out: u64,
    pub corrupt: u64,
    pub dropped: u64,
    /// Sends refused by the hypervisor's ACL (`EACCES`).
    pub acl_refused: u64,
    /// Refusals per (source, destination); at most [`MAX_REFUSAL_PAIRS`] pairs.
    refusals: HashMap<(Addr, Addr), u64>,
}

impl Stats {
    /// Counts a send the hypervisor's ACL refused, per source and destination (bounded: pairs
    /// beyond [`MAX_REFUSAL_PAIRS`] are only in the total).
    pub fn count_refusal(&mut self, src: Addr, dst: Addr) {
        self.acl_refused += 1;
        let n = self.refusals.len();
        match self.refusals.get_mut(&(src, dst)) {
            Some(c) => *c += 1,
            None if n < MAX_REFUSAL_PAIRS => {
                self.refusals.insert((src, dst), 1);
            }
            None => {}
        }
    }
}

impl Daemon {
    /// The `STATUS` reply line.
    pub(super) fn status_line(&self) -> String {
        let mut ports: Vec<String> = self
            .ports
            .iter()
            .map(|(p, x)| {
                let k = match &x.kind {
                    PortKind::Dgram(_) => "dgram".to_string(),
                    PortKind::Listen(_) => "listen".to_string(),
                    PortKind::Peer(d) => format!("peer{d}"),
                };
                format!("{p}/{k}")
            })
            .collect();
        ports.sort();
        let s = &self.stats;
        let mut refused: Vec<String> = s
            .refusals
            .iter()
            .map(|((src, dst), n)| {
                format!(
                    "{}->{}/{n}",
                    SockAddr::new(src.domain, src.port),
                    SockAddr::new(dst.domain, dst.port)
                )
            })
            .collect();
        refused.sort();
        format!(
            "OK version={PROTOCOL_VERSION} domid={} rings={} ports={} clients={} streams={} \
             msgs_in={} bytes_in={} msgs_out={} bytes_out={} corrupt={} dropped={} \
             acl_refused={} acl_refused_by={}",
            self.domid,
            self.ports.len(),
            if ports.is_empty() {
                "-".to_string()
            } else {
                ports.join(",")
            },
            self.clients.len(),
            self.streams.len(),
            s.msgs_in,
            s.bytes_in,
            s.msgs_out,
            s.bytes_out,
            s.corrupt,
            s.dropped,
            s.acl_refused,
            if refused.is_empty() {
                "-".to_string()
            } else {
                refused.join(",")
            }
        )
    }
}
