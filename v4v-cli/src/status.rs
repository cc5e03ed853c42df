// SPDX-License-Identifier: MIT OR Apache-2.0
//! `status`: the daemon's `STATUS` line, for people or as JSON.

use std::path::Path;

use serde_json::{Map, Value, json};

use crate::exit::{Exit, Failure};

/// The `key=value` fields of a `STATUS` reply, in order.
fn fields(line: &str) -> Vec<(&str, &str)> {
    line.split_ascii_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .collect()
}

fn list(v: &str) -> Vec<&str> {
    if v == "-" || v.is_empty() {
        Vec::new()
    } else {
        v.split(',').collect()
    }
}

/// `PORT/KIND` entries as objects.
fn ports_json(v: &str) -> Value {
    Value::Array(
        list(v)
            .into_iter()
            .map(|p| {
                let (port, kind) = p.split_once('/').unwrap_or((p, ""));
                let (kind, peer) = match kind.strip_prefix("peer") {
                    Some(d) => ("peer", d.parse::<u64>().ok()),
                    None => (kind, None),
                };
                let mut o = json!({ "port": port.parse::<u64>().ok(), "kind": kind });
                if let Some(d) = peer {
                    o["peer_domain"] = json!(d);
                }
                o
            })
            .collect(),
    )
}

/// `SRC->DST/N` entries as objects.
fn refused_json(v: &str) -> Value {
    Value::Array(
        list(v)
            .into_iter()
            .filter_map(|e| {
                let (pair, n) = e.rsplit_once('/')?;
                let (src, dst) = pair.split_once("->")?;
                Some(json!({ "src": src, "dst": dst, "count": n.parse::<u64>().ok() }))
            })
            .collect(),
    )
}

pub fn status(socket: &Path, as_json: bool) -> Result<(), Failure> {
    let line = v4v::client::status(socket).map_err(|e| Failure::client("status", e))?;
    let f = fields(&line);
    if f.is_empty() {
        return Err(Failure::new(
            Exit::Failure,
            format!("status: unexpected reply {line:?}"),
        ));
    }
    if as_json {
        let mut o = Map::new();
        for (k, v) in &f {
            let val = match *k {
                "ports" => ports_json(v),
                "acl_refused_by" => refused_json(v),
                _ => v
                    .parse::<u64>()
                    .map(Value::from)
                    .unwrap_or_else(|_| Value::from(*v)),
            };
            o.insert((*k).to_string(), val);
        }
        outln!("{}", Value::Object(o));
        return Ok(());
    }
    let get = |k: &str| {
        f.iter()
            .find(|(key, _)| *key == k)
            .map(|(_, v)| *v)
            .unwrap_or("?")
    };
    outln!("domain        {}", get("domid"));
    outln!("rings         {}", get("rings"));
    let ports = list(get("ports"));
    outln!(
        "ports         {}",
        if ports.is_empty() {
            "none".to_string()
        } else {
            ports.join(" ")
        }
    );
    outln!("clients       {}", get("clients"));
    outln!("streams       {}", get("streams"));
    outln!(
        "received      {} messages, {} bytes",
        get("msgs_in"),
        get("bytes_in")
    );
    outln!(
        "sent          {} messages, {} bytes",
        get("msgs_out"),
        get("bytes_out")
    );
    outln!(
        "dropped       {} malformed or unroutable, {} ring corruptions",
        get("dropped"),
        get("corrupt")
    );
    let by = list(get("acl_refused_by"));
    outln!("acl refused   {}", get("acl_refused"));
    for e in by {
        if let Some((pair, n)) = e.rsplit_once('/') {
            outln!("  {n:>8}  {}", pair.replace("->", " -> "));
        }
    }
    // Fields added by newer daemons.
    const KNOWN: &[&str] = &[
        "version",
        "domid",
        "rings",
        "ports",
        "clients",
        "streams",
        "msgs_in",
        "bytes_in",
        "msgs_out",
        "bytes_out",
        "dropped",
        "corrupt",
        "acl_refused",
        "acl_refused_by",
    ];
    for (k, v) in f.iter().filter(|(k, _)| !KNOWN.contains(k)) {
        outln!("{k:<13} {v}");
    }
    Ok(())
}
