// SPDX-License-Identifier: MIT OR Apache-2.0
//! Examples of the libv4v client API; see `examples/examples/*.rs`. Run one with
//! `V4V_SOCKET=/run/v4v/v4vd.sock cargo run -p v4v-examples --example stream_echo -- 7000`.
