// SPDX-License-Identifier: MIT OR Apache-2.0
//! The simulator's wire protocol, both ways: requests as a hostile guest sends them to
//! v4v-sim, replies as a guest's backend reads them.
//!
//! The input is one frame (header and body), read both as the socket reads it and as a record of
//! the shared-memory channel (protocol version 2). Any bytes decode or are refused; a request that
//! decodes re-encodes to a frame that decodes to the same request, and a reply likewise.
#![no_main]

use libfuzzer_sys::fuzz_target;
use v4v::backend::sim::protocol::{FRAME_HEADER_SIZE, FrameHeader, Reply, Request, split_record};

/// The request kinds a reply can answer (the selector byte picks one).
const REQUEST_KINDS: [u16; 11] = [1, 2, 4, 5, 6, 7, 8, 9, 10, 11, 0x40];

/// A frame's header and exactly the body it announces, as the reader on each side takes them
/// (`reply`: as a guest reads a reply, which may carry more descriptors).
fn split(frame: &[u8], reply: bool) -> Option<(FrameHeader, &[u8])> {
    let (h, rest) = frame.split_first_chunk::<FRAME_HEADER_SIZE>()?;
    let h = if reply {
        FrameHeader::parse_reply(h)
    } else {
        FrameHeader::parse(h)
    }
    .ok()?;
    let body = rest.get(..h.body_len as usize)?;
    Some((h, body))
}

fuzz_target!(|data: &[u8]| {
    let Some((&req_sel, frame)) = data.split_first() else {
        return;
    };
    let req_kind = REQUEST_KINDS[usize::from(req_sel) % REQUEST_KINDS.len()];
    // As a channel record: the whole input is the frame, or it is refused.
    if let Ok((h, body)) = split_record(frame, false)
        && let Ok(req) = Request::decode(h.kind, 0, body)
    {
        let again = req.encode();
        let (h2, body2) = split_record(&again, false).expect("an encoded request is a record");
        assert_eq!(Request::decode(h2.kind, 0, body2), Ok(req));
    }
    if let Ok((h, body)) = split_record(frame, true)
        && let Ok(rep) = Reply::decode(req_kind, h.kind, 0, body)
    {
        let again = rep.encode(req_kind);
        let (h2, body2) = split_record(&again, true).expect("an encoded reply is a record");
        assert_eq!(Reply::decode(req_kind, h2.kind, 0, body2), Ok(rep));
    }
    if let Some((h, body)) = split(frame, false)
        && let Ok(req) = Request::decode(h.kind, h.nfds, body)
    {
        let again = req.encode();
        let (h2, body2) = split(&again, false).expect("an encoded request has a valid header");
        assert_eq!(Request::decode(h2.kind, h2.nfds, body2), Ok(req));
    }
    // Replies are decoded against the request they answer: try the one the input names.
    if let Some((h, body)) = split(frame, true)
        && let Ok(rep) = Reply::decode(req_kind, h.kind, h.nfds, body)
    {
        let again = rep.encode(req_kind);
        let (h2, body2) = split(&again, true).expect("an encoded reply has a valid header");
        assert_eq!(Reply::decode(req_kind, h2.kind, h2.nfds, body2), Ok(rep));
    }
});
