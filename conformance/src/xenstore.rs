// SPDX-License-Identifier: MIT OR Apache-2.0
//! The control channel between the conformance runner in dom0 and its agent in a guest (see
//! [`crate::xen_backend`]), over xenstore keys through libv4v's xenstore client
//! ([`v4v::xenstore::Xenstore`]). Xenstore is independent of V4V, so no V4V state (an ACL rule, a
//! full ring) can break the channel.

use std::time::Duration;

use v4v::xenstore::{PAYLOAD_MAX, Xenstore};

fn err(e: v4v::xenstore::XsError) -> String {
    e.to_string()
}

/// A strictly alternating message channel over two xenstore keys under `dir`: each side writes
/// `SEQ BODY` to its own key and waits for the other's next sequence number on the other key.
pub struct XsChannel {
    xs: Xenstore,
    send_key: String,
    recv_key: String,
    sent: u64,
    received: u64,
}

impl XsChannel {
    /// The coordinator's end: writes `DIR/to-agent`, reads `DIR/to-coordinator`.
    pub fn coordinator(dir: &str) -> Result<Self, String> {
        let mut xs = Xenstore::open().map_err(err)?;
        xs.rm(&format!("{dir}/to-agent")).map_err(err)?;
        Ok(XsChannel {
            xs,
            send_key: format!("{dir}/to-agent"),
            recv_key: format!("{dir}/to-coordinator"),
            sent: 0,
            received: 0,
        })
    }

    /// The agent's end: clears `DIR`, writes `DIR/to-coordinator`, reads `DIR/to-agent`.
    pub fn agent(dir: &str) -> Result<Self, String> {
        let mut xs = Xenstore::open().map_err(err)?;
        xs.rm(dir).map_err(err)?;
        Ok(XsChannel {
            xs,
            send_key: format!("{dir}/to-coordinator"),
            recv_key: format!("{dir}/to-agent"),
            sent: 0,
            received: 0,
        })
    }
}

fn seq_of(v: &str) -> Option<u64> {
    v.split(' ').next()?.parse().ok()
}

impl crate::xen_backend::Channel for XsChannel {
    fn send(&mut self, msg: &str) -> Result<(), String> {
        self.sent += 1;
        let mut v = format!("{} {msg}", self.sent);
        if v.len() > PAYLOAD_MAX - 512 {
            let mut cut = PAYLOAD_MAX - 512;
            while !v.is_char_boundary(cut) {
                cut -= 1;
            }
            v.truncate(cut);
        }
        self.xs.write(&self.send_key, &v).map_err(err)
    }

    fn recv(&mut self, timeout: Duration) -> Result<String, String> {
        let want = self.received + 1;
        let v = self
            .xs
            .wait_for(&self.recv_key, timeout, &|v| seq_of(v) == Some(want))
            .map_err(err)?;
        self.received = want;
        Ok(v.split_once(' ')
            .map(|(_, b)| b.to_string())
            .unwrap_or_default())
    }
}
