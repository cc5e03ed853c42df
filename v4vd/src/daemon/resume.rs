// SPDX-License-Identifier: MIT OR Apache-2.0
//! Coming back after `xl save`/`xl restore` or a migration: the domain is then a new one (see
//! `docs/abi.md`, "Save, restore, live migration"), with another domid on the same host, no
//! rings and a new event channel, while this process and its memory, ring memory included,
//! carry on as if nothing happened.
//!
//! Once a second (with the keepalive) [`Daemon::check_resumed`] asks `V4VOP_info`. When the
//! domain changed it binds the new event channel, registers every datagram and listening ring
//! again in the same memory (so what the rings held before the suspend is still read, and no
//! client reconnects), and resets every stream (reason [`CloseReason::Restored`]): the peer
//! cannot know the new domid, and its daemon has reset its side already, having found the old
//! domain gone. The reply rings of those streams are dropped.
//!
//! Owns nothing: it drives the port table, the stream table and the hypervisor's binding, and
//! never touches a client's socket but through `abort_client`.

use std::os::fd::AsRawFd;

use mio::Interest;
use mio::unix::SourceFd;
use tracing::{info, warn};
use v4v::abi::{Addr, DomId, Info, RingId};

use super::ports::PortKind;
use super::session::ClientState;
use super::streams::CloseReason;
use super::{Daemon, TOKEN_HV};

/// Whether `info` describes another domain than the one this daemon registered `lasting`
/// rings in as `domid`, counting only rings that nothing but this domain's own end removes
/// (partner any domain): a ring bound to one partner goes when that partner dies, which is no
/// sign of our own restore. A new domid is the certain sign (a restore or a migration on the
/// same host); no ring left at all while we hold lasting ones covers a migration that kept
/// the number.
pub(super) fn is_new_domain(domid: DomId, lasting: usize, info: &Info) -> bool {
    info.domid != domid || (lasting > 0 && info.nr_rings == 0)
}

impl Daemon {
    /// Asks the hypervisor whether this is still the domain we started in, and comes back as
    /// the new one if not.
    pub(super) fn check_resumed(&mut self) {
        let info = match self.hv.info() {
            Ok(i) => i,
            Err(e) => {
                warn!("V4VOP_info: {e}");
                return;
            }
        };
        if is_new_domain(self.domid, self.lasting_rings(), &info) {
            self.resume(info.domid);
            // Our xenstore entries are the new domain's now.
            self.reopen_names();
        }
    }

    /// Our rings that only our own domain's end can remove: datagram and listening rings open
    /// to any partner.
    fn lasting_rings(&self) -> usize {
        self.ports
            .ports()
            .into_iter()
            .filter_map(|port| self.ports.get(port))
            .filter(|p| {
                !matches!(p.kind, PortKind::Peer(_))
                    && p.reader
                        .id()
                        .is_ok_and(|i| i.partner == v4v::abi::DOMID_ANY)
            })
            .count()
    }

    fn resume(&mut self, new: DomId) {
        let old = self.domid;
        info!(
            old,
            new, "this domain was restored or migrated: registering its rings again"
        );
        self.domid = new;
        self.tx.set_domid(new);

        // The event channel: the old binding is dead, the new descriptor is another one.
        let old_fd = self.hv.event_fd().as_raw_fd();
        let _ = self.poll.registry().deregister(&mut SourceFd(&old_fd));
        if let Err(e) = self.hv.rebind_event() {
            warn!("binding the new domain's event channel: {e}: no V4V event will come");
        }
        let fd = self.hv.event_fd().as_raw_fd();
        if let Err(e) =
            self.poll
                .registry()
                .register(&mut SourceFd(&fd), TOKEN_HV, Interest::READABLE)
        {
            warn!("polling the new event channel: {e}");
        }

        // Streams end: their peers knew us by the old domid.
        let mut reset = 0;
        for t in self.clients.tokens() {
            if matches!(
                self.clients.get(t).map(|c| &c.state),
                Some(ClientState::Stream(_))
            ) {
                self.abort_client(t, false, CloseReason::Restored);
                reset += 1;
            }
        }
        // Connections in listening backlogs, not accepted yet, go the same way.
        for port in self.ports.ports() {
            if let Some(l) = self.ports.listen_mut(port) {
                let keys: Vec<_> = l.backlog.drain(..).map(|s| s.conn.key).collect();
                for key in keys {
                    self.streams.remove(&key);
                }
            }
        }
        let _ = self.tx.take_rsts();

        // Rings: reply rings go, the others are registered again where they are.
        let mut again = 0;
        for port in self.ports.ports() {
            let Some(p) = self.ports.get(port) else {
                continue;
            };
            if let PortKind::Peer(_) = p.kind {
                // Nothing to unregister: the old domain's rings went with it.
                self.ports.take(port, true);
                continue;
            }
            let partner = p
                .reader
                .id()
                .map(|i| i.partner)
                .unwrap_or(v4v::abi::DOMID_ANY);
            let id = RingId {
                addr: Addr::new(new, port),
                partner,
                pad: 0,
            };
            let r = p
                .reader
                .rewrite_id(id)
                .map_err(|e| e.to_string())
                .and_then(|()| {
                    self.hv
                        .register_ring(p.reader.memory(), 0)
                        .map_err(|e| e.to_string())
                });
            match r {
                Ok(()) => again += 1,
                Err(e) => warn!(port, "registering the ring again failed: {e}"),
            }
        }
        // Remove the reset clients now: the keepalive that follows would otherwise probe their
        // peers from the old addresses, be refused, and record "peer gone" over our reason.
        self.reap();
        info!(
            old,
            new,
            rings = again,
            streams = reset,
            "serving as the new domain"
        );
        // What arrived before the suspend, and since.
        self.on_hv_event();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(domid: DomId, nr_rings: u32) -> Info {
        Info {
            domid,
            nr_rings,
            ..Info::default()
        }
    }

    #[test]
    fn a_new_domid_or_no_ring_left_is_a_new_domain() {
        // The same domain, with or without rings of its own or of other programs.
        assert!(!is_new_domain(1, 0, &info(1, 0)));
        assert!(!is_new_domain(1, 3, &info(1, 3)));
        assert!(!is_new_domain(1, 3, &info(1, 5)));
        // Fewer rings than ours but some (another program unregistered, or a ring we failed to
        // register again): not a restore.
        assert!(!is_new_domain(1, 3, &info(1, 1)));
        // Restored or migrated on this host: another domid, with or without rings.
        assert!(is_new_domain(1, 0, &info(7, 0)));
        assert!(is_new_domain(1, 3, &info(7, 0)));
        assert!(is_new_domain(1, 3, &info(7, 4)));
        // Migrated to a host that gave it the same domid: all our rings are gone.
        assert!(is_new_domain(1, 3, &info(1, 0)));
        // Only rings bound to one peer, gone with that peer (its daemon killed): no restore.
        assert!(!is_new_domain(1, 0, &info(1, 0)));
    }
}
