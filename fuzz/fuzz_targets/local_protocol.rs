// SPDX-License-Identifier: MIT OR Apache-2.0
//! The local protocol between clients and v4vd (`libv4v::client::proto`), as a hostile local
//! user writes it to the daemon (request lines, datagram frame headers) and as a daemon's
//! replies reach a client (reply and `INCOMING` lines, STATUS JSON).
//!
//! Any input parses or is refused; whatever parses prints as one line (or JSON) that parses
//! back to the same value; frame headers survive encode/decode.
#![no_main]

use libfuzzer_sys::fuzz_target;
use v4v::client::SockAddr;
use v4v::client::proto::{
    FRAME_HEADER_SIZE, FrameHeader, Incoming, Reply, Request, Status, Via, split_frame,
};

/// Requests a reply can answer, so that reply lines are parsed in every context.
fn contexts() -> [Request; 7] {
    [
        Request::Resolve("web".into()),
        Request::NameOf(7),
        Request::Version,
        Request::Dgram(0, None),
        Request::Connect(SockAddr::new(1, 5000), Via::Socket),
        Request::Accept(5000, Some(1), Via::Shm(1 << 19)),
        Request::Status,
    ]
}

fuzz_target!(|data: &[u8]| {
    if let Some(h) = data.first_chunk::<FRAME_HEADER_SIZE>() {
        let fh = FrameHeader::decode(h);
        assert_eq!(&fh.encode(), h);
    }
    // A stream of frames as v4vd and the client split it: whole frames, never past the input.
    let mut pos = 0;
    while let Ok(Some((h, total))) = split_frame(&data[pos..]) {
        assert_eq!(total, FRAME_HEADER_SIZE + h.len as usize);
        pos += total;
        assert!(pos <= data.len());
    }
    if let Ok(st) = serde_json::from_slice::<Status>(data) {
        let json = serde_json::to_vec(&st).expect("a Status serialises");
        assert_eq!(serde_json::from_slice::<Status>(&json).ok(), Some(st));
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The daemon cuts its input into lines at '\n': a request never contains one.
    let line = text.split('\n').next().unwrap_or("");
    let mut reqs = contexts().to_vec();
    if let Ok(req) = Request::parse(line) {
        let printed = req.to_string();
        assert!(!printed.contains('\n'), "{printed:?}");
        assert_eq!(Request::parse(&printed).as_ref(), Ok(&req), "{printed}");
        reqs.push(req);
    }
    for req in &reqs {
        if let Ok(rep) = Reply::parse(req, line) {
            let printed = rep.to_string();
            assert!(!printed.contains('\n'), "{printed:?}");
            assert_eq!(Reply::parse(req, &printed), Ok(rep), "{printed} to {req}");
        }
    }
    if let Ok(inc) = Incoming::parse(line) {
        assert_eq!(Incoming::parse(&inc.to_string()), Ok(inc));
    }
    if let Ok(a) = line.parse::<SockAddr>() {
        assert_eq!(a.to_string().parse::<SockAddr>(), Ok(a));
    }
});
