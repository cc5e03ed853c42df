// SPDX-License-Identifier: MIT OR Apache-2.0
//! Compiles the hypervisor's own C code (`hypervisor-patch/xen/common/v4v.c`, through the
//! userspace harness and its shims) into this crate, for `--backend c-harness`.

fn main() {
    let harness = "../hypervisor-patch/harness";
    println!("cargo:rerun-if-changed={harness}");
    println!("cargo:rerun-if-changed=../hypervisor-patch/xen");
    cc::Build::new()
        .file(format!("{harness}/v4v_harness.c"))
        .include(format!("{harness}/shim"))
        .include(format!("{harness}/shim/public"))
        .include("../hypervisor-patch/xen/include")
        .define("CONFIG_V4V", None)
        .flag("-std=gnu11")
        .flag("-Wno-unused-parameter")
        .warnings(true)
        .extra_warnings(true)
        .warnings_into_errors(true)
        .compile("v4v_harness");
}
