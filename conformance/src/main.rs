// SPDX-License-Identifier: MIT OR Apache-2.0
//! `v4v-conformance [--backend NAME] PATH...`: runs V4V conformance scenarios.
//!
//! Exit status: 0 when every scenario passed or was skipped, 1 when any failed, 2 for usage
//! errors and unreadable or unparsable scenario files (reported as `FILE:LINE: what is wrong`).

use std::path::PathBuf;
use std::process::ExitCode;

use conformance::{Backend, load, run_all};

const USAGE: &str = "usage: v4v-conformance [--backend model|c-harness|xen] [--filter TEXT] PATH...\n\
    PATH: a scenario file or a directory of *.v4vs files\n\
    --backend xen, in dom0: [--xen-peer GUEST-DOMID] [--placements dom0,guest,dom0+guest,guest+dom0]\n\
    --backend xen --xen-agent, in the guest: the agent dom0's runner drives (conformance/README.md)";

/// The backends this binary knows. Add new ones here.
fn make_backend(name: &str) -> Option<Box<dyn Backend>> {
    match name {
        "model" => Some(Box::new(conformance::model::ModelBackend::new())),
        "c-harness" => match conformance::c_harness::CHarnessBackend::new() {
            Ok(b) => Some(Box::new(b)),
            Err(e) => {
                eprintln!("c-harness: {e}");
                None
            }
        },
        _ => None,
    }
}

fn main() -> ExitCode {
    let mut backend_name = "model".to_string();
    let mut filter: Option<String> = None;
    let mut paths: Vec<PathBuf> = Vec::new();
    let mut xen = conformance::xen_backend::XenCli::default();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--xen-agent" => xen.agent = true,
            "--xen-peer" | "--placements" => {
                let Some(v) = args.next() else {
                    eprintln!("{a} needs a value\n{USAGE}");
                    return ExitCode::from(2);
                };
                if a == "--xen-peer" {
                    match v.parse() {
                        Ok(d) => xen.peer = Some(d),
                        Err(_) => {
                            eprintln!("--xen-peer: {v:?} is not a domain id\n{USAGE}");
                            return ExitCode::from(2);
                        }
                    }
                } else {
                    for p in v.split(',') {
                        match conformance::xen_backend::Placement::from_name(p) {
                            Some(p) => {
                                xen.placements.insert(p);
                            }
                            None => {
                                eprintln!("--placements: unknown placement {p:?}\n{USAGE}");
                                return ExitCode::from(2);
                            }
                        }
                    }
                }
            }
            "--backend" | "--filter" => {
                let Some(v) = args.next() else {
                    eprintln!("{a} needs a value\n{USAGE}");
                    return ExitCode::from(2);
                };
                if a == "--backend" {
                    backend_name = v;
                } else {
                    filter = Some(v);
                }
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            s if s.starts_with('-') => {
                eprintln!("unknown option {s}\n{USAGE}");
                return ExitCode::from(2);
            }
            _ => paths.push(PathBuf::from(a)),
        }
    }
    if paths.is_empty() {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    }
    let xen_backend = backend_name == "xen";
    let mut backend = None;
    if !xen_backend {
        let Some(b) = make_backend(&backend_name) else {
            eprintln!("unknown backend `{backend_name}` (known: model, c-harness, xen)");
            return ExitCode::from(2);
        };
        backend = Some(b);
    }
    let mut scenarios = Vec::new();
    let mut bad = false;
    for p in &paths {
        match load(p) {
            Ok(v) => scenarios.extend(v),
            Err(errs) => {
                bad = true;
                for e in errs {
                    eprintln!("{e}");
                }
            }
        }
    }
    if bad {
        return ExitCode::from(2);
    }
    if let Some(f) = &filter {
        scenarios.retain(|s| s.name().contains(f.as_str()));
    }
    let Some(mut backend) = backend else {
        // --backend xen: the coordinator (dom0) or the agent (guest) of conformance/README.md.
        return ExitCode::from(conformance::xen_backend::cli(&xen, &scenarios));
    };
    let mut out = std::io::stdout().lock();
    let summary = match run_all(&scenarios, backend.as_mut(), &mut out) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("writing output: {e}");
            return ExitCode::from(2);
        }
    };
    println!("{}", summary.line());
    if summary.failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
