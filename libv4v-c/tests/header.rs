// SPDX-License-Identifier: MIT OR Apache-2.0
//! The checked-in `<v4v/client.h>` is what cbindgen makes of `src/lib.rs` today. When this fails,
//! regenerate it: `V4V_BLESS=1 cargo test -p libv4v-c --test header`, and commit the header.

use std::path::Path;

#[test]
fn client_header_is_current() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("cbindgen.toml");
    let mut made = Vec::new();
    cbindgen::Builder::new()
        .with_src(dir.join("src/lib.rs"))
        .with_config(config)
        .generate()
        .expect("cbindgen")
        .write(&mut made);
    let path = dir.join("include/v4v/client.h");
    if std::env::var("V4V_BLESS").is_ok_and(|v| v == "1") {
        std::fs::write(&path, &made).expect("write the header");
    }
    let checked_in = std::fs::read(&path).unwrap_or_default();
    assert!(
        made == checked_in,
        "{} is stale: run `V4V_BLESS=1 cargo test -p libv4v-c --test header` and commit it",
        path.display()
    );
}
