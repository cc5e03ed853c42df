// SPDX-License-Identifier: MIT OR Apache-2.0
//! Gives libv4v.so its SONAME: `libv4v.so.MAJOR` (0 while the crate's version is 0.x, whose
//! minor releases may break the ABI; scripts/install-c-lib installs the matching links).

fn main() {
    let major = std::env::var("CARGO_PKG_VERSION_MAJOR").unwrap_or_else(|_| "0".into());
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libv4v.so.{major}");
}
