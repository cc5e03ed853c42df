// SPDX-License-Identifier: MIT OR Apache-2.0
//! The local protocol between clients and v4vd (`libv4v::client::proto`), as a hostile local
//! user writes it to the daemon (request lines, datagram frame headers) and as a daemon's
//! replies reach a client.
//!
//! Any line parses or is refused; a request that parses prints as a line that parses to the
//! same request; addresses likewise; frame headers survive encode/decode.
#![no_main]

use libfuzzer_sys::fuzz_target;
use v4v::client::SockAddr;
use v4v::client::proto::{FRAME_HEADER_SIZE, FrameHeader, Reply, Request};

fuzz_target!(|data: &[u8]| {
    if let Some(h) = data.first_chunk::<FRAME_HEADER_SIZE>() {
        let fh = FrameHeader::decode(h);
        assert_eq!(&fh.encode(), h);
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The daemon cuts its input into lines at '\n': a request never contains one.
    let line = text.split('\n').next().unwrap_or("");
    if let Ok(req) = Request::parse(line) {
        let printed = req.to_string();
        assert!(!printed.contains('\n'), "{printed:?}");
        assert_eq!(Request::parse(&printed), Ok(req), "{printed}");
    }
    if let Ok(a) = line.parse::<SockAddr>() {
        assert_eq!(a.to_string().parse::<SockAddr>(), Ok(a));
    }
    let _ = Reply::parse(line);
});
