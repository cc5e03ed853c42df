// SPDX-License-Identifier: MIT OR Apache-2.0
//! `acl`: the hypervisor's ACL table, through dom0's daemon.
//!
//! Rules are checked here before anything is sent, so a typo is a usage error (status 2) with
//! the reason; rules files report every bad line as `FILE:LINE: problem` and leave the table
//! untouched. The daemon checks permissions; the hypervisor refuses everything outside dom0.

use std::path::Path;

use clap::Subcommand;
use serde_json::json;
use v4v::abi::Addr;
use v4v::acl::{self, Endpoint, RuleSpec};
use v4v::client::proto::AclRequest;
use v4v::client::{ListedRule, acl_change, acl_list, acl_load};

use crate::names::Dest;

use crate::exit::{Exit, Failure};

#[derive(Debug, Subcommand)]
pub enum AclCommand {
    /// Numbered rules, as the hypervisor holds them; a rule by name shows the domain id the
    /// name stands for now
    List {
        /// Machine-readable output
        #[arg(long)]
        json: bool,
    },
    /// Append RULE (quote it: 'reject 3:* -> 0:22', 'accept name:web:* -> 0:80')
    Add {
        #[arg(required = true, num_args = 1.., allow_hyphen_values = true, value_name = "RULE")]
        rule: Vec<String>,
    },
    /// Insert RULE before rule N (1 = first)
    Insert {
        n: u32,
        #[arg(required = true, num_args = 1.., allow_hyphen_values = true, value_name = "RULE")]
        rule: Vec<String>,
    },
    /// Delete rule N, or the first rule equal to RULE
    Delete {
        #[arg(required = true, num_args = 1.., allow_hyphen_values = true, value_name = "N|RULE")]
        what: Vec<String>,
    },
    /// Delete every rule (the table then accepts every send)
    Flush,
    /// Replace the whole table with FILE's rules (- for stdin), all or nothing
    Load {
        #[arg(value_name = "FILE")]
        file: String,
    },
    /// Print the table as a rules file that `acl load` reads back unchanged
    Save,
    /// Which rule decides a send from SRC to DST, ids or names (exit 0 if accepted, 6 if
    /// rejected)
    Check {
        #[arg(value_name = "SRC")]
        src: Dest,
        #[arg(value_name = "DST")]
        dst: Dest,
    },
}

fn rule_arg(words: &[String]) -> Result<RuleSpec, Failure> {
    let text = words.join(" ");
    text.parse()
        .map_err(|e| Failure::new(Exit::Usage, format!("rule \"{text}\": {e}")))
}

fn endpoint_json(e: &Endpoint) -> serde_json::Value {
    json!({ "domain": e.domain, "port": e.port })
}

pub fn run(socket: &Path, cmd: AclCommand) -> Result<(), Failure> {
    let list = || acl_list(socket).map_err(|e| Failure::client("acl", e));
    let change = |req: AclRequest| {
        let what = format!(
            "acl {}",
            req.to_string().trim_start_matches("ACL ").to_lowercase()
        );
        acl_change(socket, req).map_err(|e| Failure::client(&what, e))
    };
    match cmd {
        AclCommand::List { json } => {
            let rules = list()?;
            if json {
                let v: Vec<_> = rules
                    .iter()
                    .enumerate()
                    .map(|(i, l)| {
                        let names: serde_json::Map<String, serde_json::Value> = l
                            .bindings
                            .iter()
                            .map(|(n, d)| (n.clone(), json!(d)))
                            .collect();
                        json!({
                            "position": i + 1,
                            "action": l.rule.action.to_string(),
                            "src": endpoint_json(&l.rule.src),
                            "dst": endpoint_json(&l.rule.dst),
                            "rule": l.spec.to_string(),
                            "names": names,
                        })
                    })
                    .collect();
                outln!("{}", serde_json::Value::Array(v));
            } else if rules.is_empty() {
                outln!("(no rules: every send is accepted)");
            } else {
                for (i, l) in rules.iter().enumerate() {
                    outln!("{:>4}  {}{}", i + 1, l.spec, bindings_text(l));
                }
            }
            Ok(())
        }
        AclCommand::Add { rule } => change(AclRequest::Add(rule_arg(&rule)?.to_string())),
        AclCommand::Insert { n, rule } => {
            if n == 0 {
                return Err(Failure::new(
                    Exit::Usage,
                    "acl insert: rules are numbered from 1",
                ));
            }
            change(AclRequest::Insert(n, rule_arg(&rule)?.to_string()))
        }
        AclCommand::Delete { what } => match what.as_slice() {
            [n] if n.bytes().all(|b| b.is_ascii_digit()) => {
                let n: u32 = n.parse().map_err(|_| {
                    Failure::new(Exit::Usage, format!("acl delete: bad number {n}"))
                })?;
                if n == 0 {
                    return Err(Failure::new(
                        Exit::Usage,
                        "acl delete: rules are numbered from 1",
                    ));
                }
                change(AclRequest::DeleteAt(n))
            }
            words => change(AclRequest::DeleteRule(rule_arg(words)?.to_string())),
        },
        AclCommand::Flush => change(AclRequest::Flush),
        AclCommand::Load { file } => {
            let (name, text) = if file == "-" {
                let mut t = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut t)
                    .map_err(|e| Failure::io("reading stdin", &e))?;
                ("<stdin>".to_string(), t)
            } else {
                let t = std::fs::read_to_string(&file)
                    .map_err(|e| Failure::new(Exit::Usage, format!("{file}: {e}")))?;
                (file.clone(), t)
            };
            let rules = acl::parse_rule_specs(&name, &text).map_err(|e| {
                // One FILE:LINE line per problem; the table was not touched.
                let mut f = Failure::new(
                    Exit::Usage,
                    format!("{e}\nv4v-cli: {name}: not loaded, the table is unchanged"),
                );
                f.verbatim = true;
                f
            })?;
            acl_load(socket, &rules).map_err(|e| Failure::client(&format!("acl load {name}"), e))
        }
        AclCommand::Save => {
            let specs: Vec<RuleSpec> = list()?.into_iter().map(|l| l.spec).collect();
            out!("{}", format_specs(&specs));
            Ok(())
        }
        AclCommand::Check { src, dst } => {
            let (src, dst) = (src.resolve(socket)?, dst.resolve(socket)?);
            let listed = list()?;
            let rules: Vec<acl::Rule> = listed.iter().map(|l| l.rule).collect();
            let (s, d) = (
                Addr::new(src.domid, src.port),
                Addr::new(dst.domid, dst.port),
            );
            let dec = acl::decide(&rules, s, d);
            let verdict = if dec.accepted { "accepted" } else { "rejected" };
            match dec.rule {
                Some(i) => outln!(
                    "{src} -> {dst}: {verdict} by rule {} ({})",
                    i + 1,
                    listed[i].spec
                ),
                None => outln!("{src} -> {dst}: {verdict}: no rule matches (the default)"),
            }
            if dec.accepted {
                Ok(())
            } else {
                // The verdict is on stdout already; the status says it too.
                std::process::exit(Exit::Denied as i32)
            }
        }
    }
}

/// What a rule's names stand for now, for `acl list`.
fn bindings_text(l: &ListedRule) -> String {
    let parts: Vec<String> = l
        .bindings
        .iter()
        .map(|(n, d)| match d {
            Some(d) => format!("{n} = domain {d}"),
            None => format!("no domain is named {n}: the rule matches nothing"),
        })
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("    ({})", parts.join(", "))
    }
}

/// A rules file that `acl load` reads back as `specs` (names kept).
fn format_specs(specs: &[RuleSpec]) -> String {
    let mut out = String::from(
        "# V4V ACL rules: the first rule matching a send decides; no match accepts.\n\
         # accept|reject DOM:PORT -> DOM:PORT, * for any, name:NAME for a domain by name.\n",
    );
    for s in specs {
        out.push_str(&s.to_string());
        out.push('\n');
    }
    out
}
