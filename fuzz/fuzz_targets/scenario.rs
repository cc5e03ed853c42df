// SPDX-License-Identifier: MIT OR Apache-2.0
//! The conformance scenario language: any text parses or is refused with a line number in
//! range, and a parsed scenario prints to text that parses to the same scenario.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match conformance::parse::parse(text) {
        Ok(sc) => {
            let printed = sc.to_string();
            let mut again = conformance::parse::parse(&printed).expect("printed scenario parses");
            let mut orig = sc;
            for st in again.steps.iter_mut().chain(orig.steps.iter_mut()) {
                st.line = 0;
            }
            assert_eq!(again, orig, "{printed}");
        }
        Err(e) => assert!(e.line <= text.lines().count() + 1, "line {}", e.line),
    }
});
