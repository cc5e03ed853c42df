// SPDX-License-Identifier: MIT OR Apache-2.0
//! Domains by name: the daemon's view of the name directory, `RESOLVE`/`NAMEOF` requests, and in
//! dom0 the upkeep that keeps the hypervisor's ACL table and the published directory in step with
//! the names.
//!
//! This module owns the [`NameView`] (which names this domain sees now) and, in dom0, the ACL
//! mirror's binding to ids: [`Daemon::sync_names`] recomputes the table from the admin's rules
//! (`acl::RuleSpec`s kept by `acl.rs`) whenever names change, and replaces it through the same
//! fail-closed path as `acl load`. It does not parse rules or serve ACL requests (`acl.rs`).
//!
//! Failing closed: a rule for a name no domain has holds [`v4v::acl::DOMID_UNBOUND`] in the
//! table, which matches no send, so it allows nothing and rejects nothing; when the domain
//! behind a name is destroyed, its rules stop naming its id at the next sync (the xenstore watch
//! on Xen, at most one keepalive tick on the simulator), and a domain re-created under the name
//! gets the rules at its new id. A failed sync is logged and retried on the next tick.

use std::collections::BTreeMap;

use tracing::{debug, error, info, warn};
use v4v::abi::DomId;
use v4v::acl;
use v4v::client::proto::Reply;
use v4v::names::{DirectoryError, NameDirectory, NameEntry};
use v4v::xenstore::XenNames;

use super::Daemon;

/// Where the daemon reads names.
pub(crate) enum NameSource {
    /// The hypervisor backend has a directory (the simulator).
    Backend,
    /// Xen: xenstore.
    Xen(Box<XenNames>),
    /// None could be opened: every name is unknown.
    Unavailable(String),
}

/// The names this domain sees, as of the last refresh.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct NameView {
    /// name -> domain.
    by_name: BTreeMap<String, DomId>,
    /// The published entries dom0 wrote last (dom0 only).
    published: Vec<NameEntry>,
}

impl NameView {
    pub(crate) fn lookup(&self, name: &str) -> Option<DomId> {
        self.by_name.get(name).copied()
    }

    pub(crate) fn name_of(&self, domid: DomId) -> Option<&str> {
        self.by_name
            .iter()
            .find(|(_, d)| **d == domid)
            .map(|(n, _)| n.as_str())
    }
}

impl Daemon {
    /// The directory names come from, if any.
    fn directory(&self) -> Result<&dyn NameDirectory, String> {
        match &self.name_source {
            NameSource::Backend => self
                .hv
                .names()
                .ok_or_else(|| "this hypervisor backend has no name directory".to_string()),
            NameSource::Xen(x) => Ok(&**x),
            NameSource::Unavailable(why) => Err(why.clone()),
        }
    }

    /// Opens the directory for this daemon's backend and claims `cfg.name` where domains name
    /// themselves (the simulator); on Xen checks that it is the name the toolstack gave.
    pub(super) fn open_names(&mut self) -> Result<(), crate::DaemonError> {
        self.name_source = if self.hv.names().is_some() {
            NameSource::Backend
        } else {
            match XenNames::open(self.domid) {
                Ok(x) => NameSource::Xen(Box::new(x)),
                Err(e) => {
                    info!("domain names are not available: {e}");
                    NameSource::Unavailable(format!("domain names are not available here ({e})"))
                }
            }
        };
        if let Some(name) = self.cfg.name.clone() {
            let dir = self.directory().map_err(crate::DaemonError::Config)?;
            match dir.claim_name(&name) {
                Ok(()) => info!(name = %name, "this domain is named {name}"),
                Err(DirectoryError::Refused { errno_name, .. }) if errno_name == "EPERM" => {
                    // Xen: the toolstack named the domain; --name must agree with it.
                    let own = dir
                        .domain_names()
                        .map_err(|e| crate::DaemonError::Config(e.to_string()))?;
                    let ours = own.iter().find(|e| e.domid == self.domid);
                    if ours.map(|e| e.name.as_str()) != Some(name.as_str()) {
                        return Err(crate::DaemonError::Config(format!(
                            "--name {name}: on Xen the toolstack names domains, and this one is {}",
                            ours.map_or("unnamed".to_string(), |e| format!("{:?}", e.name))
                        )));
                    }
                }
                Err(e) => {
                    return Err(crate::DaemonError::Config(format!("--name {name}: {e}")));
                }
            }
        }
        self.refresh_names();
        Ok(())
    }

    /// After a restore or migration (a new domain id): xenstore connections for the new domain,
    /// its own entries and its watches.
    pub(super) fn reopen_names(&mut self) {
        use mio::unix::SourceFd;
        if !matches!(self.name_source, NameSource::Xen(_)) {
            return;
        }
        if let Some(fd) = self.names_watch_fd() {
            let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
        }
        self.name_source = match XenNames::open(self.domid) {
            Ok(x) => NameSource::Xen(Box::new(x)),
            Err(e) => NameSource::Unavailable(format!("domain names are not available here ({e})")),
        };
        if let Some(fd) = self.names_watch_fd()
            && let Err(e) = self.poll.registry().register(
                &mut SourceFd(&fd),
                super::TOKEN_NAMES,
                mio::Interest::READABLE,
            )
        {
            warn!("watching names: {e}");
        }
        self.refresh_names();
    }

    /// The watch descriptor to register with the loop, if the directory has one.
    pub(super) fn names_watch_fd(&self) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        match &self.name_source {
            NameSource::Xen(x) => x.watch_fd().map(|fd| fd.as_raw_fd()),
            _ => None,
        }
    }

    /// Re-reads the names this domain may see. Errors keep the old view (logged).
    fn refresh_names(&mut self) -> bool {
        let dir = match self.directory() {
            Ok(d) => d,
            Err(_) => return false,
        };
        let read = || -> Result<BTreeMap<String, DomId>, DirectoryError> {
            let mut by_name = BTreeMap::new();
            // A guest sees its own name and what dom0 published; dom0 sees every domain's.
            if self.domid != 0 {
                for e in dir.published()? {
                    by_name.insert(e.name, e.domid);
                }
            }
            for e in dir.domain_names()? {
                by_name.insert(e.name, e.domid);
            }
            Ok(by_name)
        };
        match read() {
            Ok(by_name) => {
                let changed = by_name != self.names.by_name;
                self.names.by_name = by_name;
                changed
            }
            Err(e) => {
                warn!("reading domain names: {e}");
                false
            }
        }
    }

    /// Called on the tick and on the watch: if names changed, refresh them and, in dom0, bring
    /// the ACL table and the published directory in step.
    pub(super) fn check_names(&mut self, force: bool) {
        let changed = match self.directory().map(|d| d.changed()) {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                debug!("name directory: {e}");
                false
            }
            Err(_) => return,
        };
        if !(changed || force || self.names_dirty) {
            return;
        }
        let old = self.names.by_name.clone();
        // A watch fires for every write under /local/domain: only a change of names matters.
        let differs = self.refresh_names();
        if self.domid == 0 && (differs || force || self.names_dirty) {
            self.sync_names(&old);
        }
    }

    /// dom0: publishes the chosen names and re-resolves the ACL rules after a change of names
    /// (`old` is the view before it).
    fn sync_names(&mut self, old: &BTreeMap<String, DomId>) {
        let used: Vec<String> = {
            let mut v: Vec<String> = self
                .acl_specs
                .iter()
                .flatten()
                .flat_map(|s| s.names().map(str::to_string).collect::<Vec<_>>())
                .collect();
            v.sort();
            v.dedup();
            v
        };
        for name in &used {
            let (was, now) = (old.get(name), self.names.by_name.get(name));
            if was != now {
                match now {
                    Some(d) => {
                        info!(name = %name, domid = d, "name {name} is now domain {d}: table updated")
                    }
                    None => {
                        info!(name = %name, "name {name} has no domain now: its rules match nothing")
                    }
                }
            }
        }
        let mut ok = self.apply_acl_specs("names changed");
        // What guests may resolve: the chosen names that have a domain now.
        let mut published: Vec<NameEntry> = self
            .cfg
            .publish_names
            .iter()
            .filter_map(|n| {
                self.names.lookup(n).map(|domid| NameEntry {
                    domid,
                    name: n.clone(),
                })
            })
            .collect();
        published.sort();
        if published != self.names.published {
            let r = self.directory().map(|d| d.publish(&published));
            match r {
                Ok(Ok(())) => {
                    let shown: Vec<String> = published
                        .iter()
                        .map(|e| format!("{}={}", e.name, e.domid))
                        .collect();
                    info!("published names for guests: {}", shown.join(" "));
                    self.names.published = published;
                }
                Ok(Err(e)) => {
                    warn!("publishing names: {e}");
                    ok = false;
                }
                Err(_) => {}
            }
        }
        // Retried on the next tick until it took.
        self.names_dirty = !ok;
    }

    /// dom0: makes the hypervisor's table the resolution of the admin's rules, if it is not
    /// already; fail-closed like `acl load`. Returns whether the table is as it should be.
    pub(super) fn apply_acl_specs(&mut self, why: &str) -> bool {
        if !self.reconcile_acl() {
            return false;
        }
        let Some(specs) = &self.acl_specs else {
            return true;
        };
        let want: Vec<acl::Rule> = specs
            .iter()
            .map(|s| s.resolve(&|n| self.names.lookup(n)))
            .collect();
        if want == self.acl_written {
            return true;
        }
        match acl::replace_table(&*self.hv, &want) {
            Ok(()) => {
                info!(rules = want.len(), "ACL table updated: {why}");
                self.acl_written = want;
                true
            }
            Err(e) => {
                error!("ACL table update failed ({why}): {e}");
                self.note_acl_table();
                false
            }
        }
    }

    /// The name bindings of a rule, for `ACL LIST`.
    pub(super) fn bindings(&self, spec: &acl::RuleSpec) -> Vec<(String, Option<DomId>)> {
        let mut v: Vec<(String, Option<DomId>)> = Vec::new();
        for n in spec.names() {
            if !v.iter().any(|(m, _)| m == n) {
                v.push((n.to_string(), self.names.lookup(n)));
            }
        }
        v
    }

    /// Resolves a name for `RESOLVE` or a rule: looks again once when the view does not have it.
    pub(super) fn lookup_name(&mut self, name: &str) -> Option<DomId> {
        if let Some(d) = self.names.lookup(name) {
            return Some(d);
        }
        let old = self.names.by_name.clone();
        if self.refresh_names() && self.domid == 0 {
            self.sync_names(&old);
        }
        self.names.lookup(name)
    }

    /// `RESOLVE NAME`.
    pub(super) fn resolve_request(&mut self, t: usize, name: &str) {
        if let Err(why) = self.directory() {
            return self.reply_err(t, "ENOENT", &format!("no domain named {name}: {why}"));
        }
        match self.lookup_name(name) {
            Some(d) => self.set_state(t, super::ClientState::Closing, &Reply::Domain(d)),
            None => {
                let why = if self.domid == 0 {
                    format!("no domain is named {name}")
                } else {
                    format!(
                        "no domain named {name} is visible from domain {} (a guest sees the names dom0's v4vd publishes: publish_names)",
                        self.domid
                    )
                };
                self.reply_err(t, "ENOENT", &why)
            }
        }
    }

    /// `NAMEOF DOMID`.
    pub(super) fn name_of_request(&mut self, t: usize, domid: DomId) {
        if self.names.name_of(domid).is_none() {
            self.refresh_names();
        }
        match self.names.name_of(domid).map(str::to_string) {
            Some(n) => self.set_state(t, super::ClientState::Closing, &Reply::Name(n)),
            None => self.reply_err(
                t,
                "ENOENT",
                &format!("domain {domid} has no name visible here"),
            ),
        }
    }
}
