// SPDX-License-Identifier: MIT OR Apache-2.0
//! The daemon's ACL administration: `ACL` requests from local clients, and dom0's rules file
//! (loaded before any client is served, reloaded on SIGHUP).
//!
//! The hypervisor owns the table and enforces it; this module only edits it, through
//! [`v4v::acl`], and decides who may: anyone may read it, changes need root or membership of
//! the configured group (checked from the client's `SO_PEERCRED`/`SO_PEERGROUPS` at connect),
//! and outside dom0 the hypervisor refuses everything (`EPERM`). Every change is logged with
//! the client's uid and pid and its result. A rules file is replaced all or nothing, failing
//! closed ([`v4v::acl::replace_table`]).

use std::io::{self, Read};

use tracing::{debug, info, warn};
use v4v::HvError;
use v4v::acl::{self, AclError, Rule, RuleSpec};
use v4v::client::proto::{AclRequest, MAX_LINE, Reply};

use super::{ClientState, Daemon, DaemonError};

/// A client sending the rule lines of `ACL LOAD N`.
pub(super) struct AclLoad {
    want: usize,
    line: Vec<u8>,
    lines: Vec<String>,
}

impl Daemon {
    /// The reply for an ACL error: `(CODE, REASON)`.
    fn acl_err(&self, e: &AclError) -> (String, String) {
        match e.hv_error() {
            Some(HvError::NotPermitted) if self.domid != 0 => (
                "EPERM".into(),
                format!(
                    "ACLs are edited from dom0 (this is domain {}): the hypervisor refuses",
                    self.domid
                ),
            ),
            Some(h) => (h.name(), e.to_string()),
            None => ("EINVAL".into(), e.to_string()),
        }
    }

    pub(super) fn acl_request(&mut self, t: usize, req: AclRequest) {
        let Some((cred, admin)) = self.clients.get(t).map(|c| (c.cred, c.acl_admin)) else {
            return;
        };
        self.reconcile_acl();
        if req == AclRequest::List {
            match acl::read_table(&*self.hv) {
                Ok(rules) => {
                    // dom0's v4vd knows the rules as written (names); elsewhere the table is all.
                    let lines: Vec<String> = match &self.acl_specs {
                        Some(specs) if specs.len() == rules.len() => specs
                            .iter()
                            .map(|s| match self.bindings(s) {
                                b if b.is_empty() => s.to_string(),
                                b => format!("{s}  {}", v4v::client::format_bindings(&b)),
                            })
                            .collect(),
                        _ => rules.iter().map(|r| r.to_string()).collect(),
                    };
                    let n = u32::try_from(lines.len()).unwrap_or(u32::MAX);
                    self.set_state(t, ClientState::Closing, &Reply::Rules(n));
                    if let Some(c) = self.clients.get_mut(t) {
                        for l in &lines {
                            c.queue_line(l);
                        }
                    }
                }
                Err(e) => {
                    let (code, reason) = self.acl_err(&e);
                    self.reply_err(t, &code, &reason);
                }
            }
            return;
        }
        if !admin {
            user_warn!(self, cred.uid, uid = cred.uid, pid = cred.pid, request = %req, "ACL change refused: not privileged");
            let who = match self.cfg.acl_group {
                Some(g) => format!("root or members of group {g}"),
                None => "root".to_string(),
            };
            return self.reply_err(
                t,
                "EPERM",
                &format!(
                    "changing the ACL table needs {who} (uid {} is not)",
                    cred.uid
                ),
            );
        }
        if let AclRequest::Load(n) = req {
            if n > v4v::abi::MAX_RULES {
                return self.reply_err(
                    t,
                    "EINVAL",
                    &format!("{n} rules: the table holds at most {}", v4v::abi::MAX_RULES),
                );
            }
            if let Some(c) = self.clients.get_mut(t) {
                c.state = ClientState::AclLoad(Box::new(AclLoad {
                    want: n as usize,
                    line: Vec::new(),
                    lines: Vec::new(),
                }));
            }
            return self.pump_acl_load(t);
        }
        let parse = |text: &str| -> Result<RuleSpec, (String, String)> {
            text.parse()
                .map_err(|e| ("EINVAL".to_string(), format!("{e}")))
        };
        let r: Result<(), (String, String)> = match &req {
            AclRequest::Add(text) => parse(text).and_then(|s| {
                let r = self.resolve_spec(&s);
                acl::add(&*self.hv, &r).map_err(|e| self.acl_err(&e))?;
                self.mirror(|specs, written| {
                    specs.push(s);
                    written.push(r);
                });
                Ok(())
            }),
            AclRequest::Insert(n, text) => parse(text).and_then(|s| {
                let r = self.resolve_spec(&s);
                acl::insert(&*self.hv, *n, &r).map_err(|e| self.acl_err(&e))?;
                let at = (*n as usize).saturating_sub(1);
                self.mirror(|specs, written| {
                    specs.insert(at.min(specs.len()), s);
                    written.insert(at.min(written.len()), r);
                });
                Ok(())
            }),
            AclRequest::DeleteAt(n) => self.delete_at(*n),
            AclRequest::DeleteRule(text) => parse(text).and_then(|s| {
                // By the rule as written: `delete name:web:* -> 0:22` is that rule, not a rule
                // that happens to name web's id now.
                match self
                    .acl_specs
                    .as_ref()
                    .map(|v| v.iter().position(|x| *x == s))
                {
                    Some(Some(i)) => self.delete_at(i as u32 + 1),
                    Some(None) => Err(("ENOENT".into(), format!("no rule \"{s}\" in the table"))),
                    None => {
                        let r = s
                            .to_rule()
                            .map_err(|e| ("EINVAL".to_string(), e.to_string()))?;
                        acl::delete_rule(&*self.hv, &r).map_err(|e| match e.hv_error() {
                            Some(HvError::NotFound) => {
                                ("ENOENT".into(), format!("no rule \"{r}\" in the table"))
                            }
                            _ => self.acl_err(&e),
                        })
                    }
                }
            }),
            AclRequest::Flush => {
                let r = acl::flush(&*self.hv).map_err(|e| self.acl_err(&e));
                if r.is_ok() {
                    self.mirror(|specs, written| {
                        specs.clear();
                        written.clear();
                    });
                }
                r
            }
            AclRequest::List | AclRequest::Load(_) => Ok(()),
        };
        match r {
            Ok(()) => {
                info!(uid = cred.uid, pid = cred.pid, change = %req, "ACL changed");
                self.set_state(t, ClientState::Closing, &Reply::Done);
            }
            Err((code, reason)) => {
                warn!(uid = cred.uid, pid = cred.pid, change = %req, "ACL change failed: {reason}");
                self.reply_err(t, &code, &reason);
            }
        }
    }

    /// Reads the rule lines of `ACL LOAD`, then replaces the table with them.
    pub(super) fn pump_acl_load(&mut self, t: usize) {
        let Some(c) = self.clients.get_mut(t) else {
            return;
        };
        let ClientState::AclLoad(load) = &mut c.state else {
            return;
        };
        let mut b = [0u8; 4096];
        while load.lines.len() < load.want {
            // At most what the remaining lines can hold, so nothing after them is consumed.
            match c.stream.read(&mut b[..1]) {
                Ok(0) => {
                    c.dead = true;
                    return;
                }
                Ok(_) if b[0] == b'\n' => {
                    let l = String::from_utf8_lossy(&load.line)
                        .trim_end_matches('\r')
                        .to_string();
                    load.line.clear();
                    load.lines.push(l);
                }
                Ok(_) => {
                    load.line.push(b[0]);
                    if load.line.len() > MAX_LINE {
                        let n = load.lines.len() + 1;
                        return self.reply_err(
                            t,
                            "EINVAL",
                            &format!("line {n}: longer than {MAX_LINE} bytes"),
                        );
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    c.dead = true;
                    return;
                }
            }
        }
        let cred = c.cred;
        let text = load.lines.join("\n");
        let specs = match acl::parse_rule_specs("request", &text) {
            Ok(r) => r,
            Err(e) => {
                let first = e
                    .problems
                    .first()
                    .map(|p| format!("line {}: {}", p.line, p.problem));
                return self.reply_err(t, "EINVAL", &first.unwrap_or_else(|| e.to_string()));
            }
        };
        let rules: Vec<Rule> = specs.iter().map(|s| self.resolve_spec(s)).collect();
        match acl::replace_table(&*self.hv, &rules) {
            Ok(()) => {
                info!(
                    uid = cred.uid,
                    pid = cred.pid,
                    rules = rules.len(),
                    "ACL table replaced"
                );
                self.mirror(|s, w| {
                    *s = specs;
                    *w = rules.clone();
                });
                let n = u32::try_from(rules.len()).unwrap_or(u32::MAX);
                self.set_state(t, ClientState::Closing, &Reply::Rules(n));
            }
            Err(e) => {
                warn!(
                    uid = cred.uid,
                    pid = cred.pid,
                    "ACL table replacement failed: {e}"
                );
                self.note_acl_table();
                let (code, reason) = self.acl_err(&e);
                self.reply_err(t, &code, &reason);
            }
        }
    }

    /// Loads the configured rules file (dom0 only). At start a bad or unreadable file is an
    /// error (the daemon does not start); on reload it is logged and the table kept.
    pub(super) fn load_acl_file(&mut self, at_start: bool) -> Result<(), DaemonError> {
        let Some(path) = self.cfg.acl_file.clone() else {
            return Ok(());
        };
        if self.domid != 0 {
            debug!("not dom0: the ACL file is dom0's business");
            return Ok(());
        }
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound && !self.cfg.acl_file_required => {
                info!(file = %path.display(), "no ACL file; the hypervisor's table is left as it is");
                return Ok(());
            }
            Err(e) => return Err(DaemonError::Acl(format!("{}: {e}", path.display()))),
        };
        let specs = acl::parse_rule_specs(&path.display().to_string(), &text)
            .map_err(|e| DaemonError::Acl(e.to_string()))?;
        let rules: Vec<Rule> = specs.iter().map(|s| self.resolve_spec(s)).collect();
        self.reconcile_acl();
        if let Err(e) = acl::replace_table(&*self.hv, &rules) {
            self.note_acl_table();
            return Err(DaemonError::Acl(format!("{}: {e}", path.display())));
        }
        for s in &specs {
            for (n, d) in self.bindings(s) {
                match d {
                    Some(d) => info!(name = %n, domid = d, "rule {s}: name {n} is domain {d}"),
                    None => {
                        info!(name = %n, "rule {s}: no domain is named {n}: the rule matches nothing until one is")
                    }
                }
            }
        }
        self.mirror(|s, w| {
            *s = specs;
            *w = rules.clone();
        });
        info!(
            file = %path.display(),
            rules = rules.len(),
            "ACL file {}",
            if at_start { "loaded" } else { "reloaded" }
        );
        Ok(())
    }

    /// A rule as the hypervisor's table holds it now: names as their domain ids.
    fn resolve_spec(&mut self, s: &RuleSpec) -> Rule {
        let names: Vec<String> = s.names().map(str::to_string).collect();
        let ids: Vec<(String, Option<v4v::abi::DomId>)> = names
            .into_iter()
            .map(|n| {
                let d = self.lookup_name(&n);
                (n, d)
            })
            .collect();
        s.resolve(&|n| ids.iter().find(|(m, _)| m == n).and_then(|(_, d)| *d))
    }

    /// Edits the mirror of the table (dom0: the rules as written, and as written to the table).
    fn mirror(&mut self, edit: impl FnOnce(&mut Vec<RuleSpec>, &mut Vec<Rule>)) {
        if let Some(specs) = &mut self.acl_specs {
            edit(specs, &mut self.acl_written);
        }
    }

    fn delete_at(&mut self, n: u32) -> Result<(), (String, String)> {
        acl::delete_at(&*self.hv, n).map_err(|e| match e.hv_error() {
            Some(HvError::NotFound) => ("ENOENT".into(), format!("there is no rule {n}")),
            _ => self.acl_err(&e),
        })?;
        let i = n as usize - 1;
        self.mirror(|specs, written| {
            if i < specs.len() {
                specs.remove(i);
            }
            if i < written.len() {
                written.remove(i);
            }
        });
        Ok(())
    }

    /// After a failed replacement: what the table holds now is what v4vd wrote (its rules as
    /// written stay, to be applied again).
    pub(super) fn note_acl_table(&mut self) {
        if let Ok(t) = acl::read_table(&*self.hv) {
            self.acl_written = t;
        }
    }

    /// dom0: checks that the table is what v4vd last wrote. If someone else edited it (through
    /// the hypervisor directly), its rules are taken as they are, and the names are forgotten.
    /// Returns false when the table cannot be read.
    pub(super) fn reconcile_acl(&mut self) -> bool {
        if self.acl_specs.is_none() {
            return true;
        }
        match acl::read_table(&*self.hv) {
            Ok(have) if have == self.acl_written => true,
            Ok(have) => {
                if self
                    .acl_specs
                    .as_ref()
                    .is_some_and(|s| s.iter().any(|r| r.names().next().is_some()))
                {
                    warn!(
                        "the ACL table was changed other than through v4vd: its rules are taken as they are, rules by name are forgotten"
                    );
                }
                self.acl_specs = Some(have.iter().copied().map(RuleSpec::from).collect());
                self.acl_written = have;
                true
            }
            Err(e) => {
                debug!("ACL table: {e}");
                false
            }
        }
    }

    pub(super) fn reload_acl_file(&mut self) {
        if let Err(e) = self.load_acl_file(false) {
            // parse errors are one line per problem: log each.
            for line in e.to_string().lines() {
                warn!("ACL reload refused, table unchanged: {line}");
            }
        }
    }
}
