// SPDX-License-Identifier: MIT OR Apache-2.0
//! `status`: the daemon's typed `STATUS` ([`v4v::client::Status`]), as text for people or as
//! the JSON the daemon wrote.

use std::path::Path;

use v4v::client::proto::{Owner, PortKind, Status};

use crate::exit::Failure;

fn owner(o: Option<Owner>) -> String {
    o.map_or_else(
        || "-".to_string(),
        |o| format!("uid {} pid {}", o.uid, o.pid),
    )
}

fn opt(n: Option<u64>) -> String {
    n.map_or_else(|| "-".to_string(), |n| n.to_string())
}

/// The text view, one fact per line, then a table of ports and one of streams.
pub fn render(st: &Status) -> String {
    let mut o = String::new();
    let mut line = |l: String| {
        o.push_str(&l);
        o.push('\n');
    };
    line(format!("domain        {}", st.domid));
    line(format!("rings         {}", st.rings));
    line(format!("clients       {}", st.clients));
    line(format!(
        "received      {} messages, {} bytes",
        st.msgs_in, st.bytes_in
    ));
    line(format!(
        "sent          {} messages, {} bytes",
        st.msgs_out, st.bytes_out
    ));
    line(format!(
        "dropped       {} malformed or unroutable, {} ring corruptions",
        st.dropped, st.corrupt
    ));
    line(format!(
        "buffered      {} KiB (max_buffer_per_user {} KiB)",
        st.buffered.div_ceil(1024),
        st.max_buffer_per_user / 1024
    ));
    for b in &st.buffers {
        line(format!(
            "  uid {:<8}  {} KiB",
            b.uid,
            b.bytes.div_ceil(1024)
        ));
    }
    line(format!("acl refused   {}", st.acl_refused));
    for r in &st.acl_refused_by {
        line(format!("  {:>8}  {} -> {}", r.count, r.src, r.dst));
    }
    line(format!("ports         {}", st.ports.len()));
    if !st.ports.is_empty() {
        line(format!(
            "  {:<10}  {:<6}  {:<6}  owner",
            "port", "kind", "peer"
        ));
    }
    for p in &st.ports {
        let peer = match (p.kind, p.peer_domain) {
            (PortKind::Peer, Some(d)) => d.to_string(),
            _ => "-".to_string(),
        };
        line(format!(
            "  {:<10}  {:<6}  {:<6}  {}",
            p.port,
            p.kind.as_str(),
            peer,
            owner(p.owner)
        ));
    }
    line(format!("streams       {}", st.streams.len()));
    if !st.streams.is_empty() {
        line(format!(
            "  {:<8}  {:<10}  {:<18}  {:<23}  {:>12}  {:>12}  owner",
            "id", "port", "peer", "state", "bytes in", "bytes out"
        ));
    }
    for s in &st.streams {
        line(format!(
            "  {:<8}  {:<10}  {:<18}  {:<23}  {:>12}  {:>12}  {}",
            s.id,
            s.local_port,
            s.peer.to_string(),
            s.state,
            opt(s.bytes_in),
            opt(s.bytes_out),
            owner(s.owner)
        ));
    }
    o
}

pub fn status(socket: &Path, as_json: bool) -> Result<(), Failure> {
    let (st, json) = v4v::client::status_json(socket).map_err(|e| Failure::client("status", e))?;
    if as_json {
        // As the daemon wrote it (fields this build does not know included).
        outln!("{json}");
    } else {
        out!("{}", render(&st));
    }
    Ok(())
}
