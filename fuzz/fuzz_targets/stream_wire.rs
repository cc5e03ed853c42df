// SPDX-License-Identifier: MIT OR Apache-2.0
//! The stream segments one daemon sends another (`v4vd::wire`), as a hostile peer writes them.
//!
//! Any bytes decode or are refused; whatever decodes re-encodes to a message that decodes to
//! the same segment (the decoder's view is the one the encoder can produce).
#![no_main]

use libfuzzer_sys::fuzz_target;
use v4vd::wire::{decode, encode};

fuzz_target!(|data: &[u8]| {
    if let Ok((conid, seg)) = decode(data) {
        let again = encode(conid, &seg);
        assert_eq!(decode(&again), Ok((conid, seg)));
    }
});
