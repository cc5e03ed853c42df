// SPDX-License-Identifier: MIT OR Apache-2.0
//! v4vd: the V4V daemon, one per domain.
//!
//! # Roles
//!
//! - **The daemon** ([`Daemon`]) is the only user of its domain's hypervisor interface (a
//!   [`v4v::Hypervisor`]): it registers every ring, calls `sendv` and `notify`, and waits on the
//!   V4V event. It runs one mio event loop in one thread; nothing in it is shared.
//! - **Clients** are local processes connected over a Unix socket. Each connection starts with
//!   one request line (`CONNECT`, `LISTEN`, `ACCEPT`, `DGRAM`, `STATUS`, `VERSION`), gets one reply
//!   line, and then is a raw byte stream (streams) or a framed datagram channel (datagrams). The
//!   protocol is in `docs/protocol.md` and in [`v4v::client::proto`].
//! - **Peer daemons** in other domains are reached only through V4V: datagrams are
//!   `V4V_PROTO_DGRAM` messages as they are, streams are `V4V_PROTO_STREAM` messages carrying the
//!   v9 stream header ([`wire`]).
//!
//! # Event sources
//!
//! The loop has four kinds of mio tokens (`daemon::Source`): the Unix listener, the hypervisor's
//! event descriptor, a waker for [`DaemonHandle::stop`], and one token per client. A periodic
//! tick probes peers of open streams and retries sends that met `EBUSY`.
//!
//! # Rings
//!
//! - one ring per bound datagram port (partner ANY, or the domain the client named);
//! - one ring per listening stream port (partner ANY), shared by all streams accepted on it;
//! - one ring per peer domain on the connecting side (partner = that domain), shared by all
//!   streams this domain opens to it. A partner ring takes messages from that domain only, so
//!   no other domain can fill it, and a stalled peer cannot delay replies from another.
//!
//! So thousands of streams need only a handful of rings.
//!
//! # Flow control
//!
//! Nothing is buffered without bound. A full destination ring (`EAGAIN`) parks the message
//! in the client's state and the client is not read again until the hypervisor signals space
//! (the daemon is queued as a waiter, and checks with `notify(space_required)`; `EBUSY` retries on
//! a timer). Streams sharing a ring are isolated by per-connection credit: a daemon never sends
//! more stream bytes than the receiving daemon granted, and the receiver grants only what its
//! client has consumed, so the per-connection buffer never exceeds the window (1 MiB by
//! default) and the shared ring is always drained.

pub mod daemon;
pub mod settings;
pub mod systemd;
pub mod wire;

use thiserror::Error;

pub use daemon::{Cred, Daemon, DaemonHandle, HvCounts};

/// Ring data area default: 256 KiB.
pub const DEFAULT_RING_LEN: u32 = 256 * 1024;

/// Tunables of one daemon.
#[derive(Debug, Clone)]
pub struct Config {
    /// Data area of every datagram port's ring (multiple of 16, 4 KiB ..= 16 MiB); its
    /// largest datagram is 32 bytes less.
    pub ring_len: u32,
    /// Data area of the rings that carry streams (listening ports, and the reply ring towards
    /// each peer domain); `None`: four times `ring_len`, at most 16 MiB. Used only while the
    /// domain's ring pages leave room for every other ring at `ring_len`. A ring holding several
    /// chunks keeps a stream moving while its reader drains (measured: 128 KiB chunks, a 1 MiB
    /// window and 1 MiB rings against 32 KiB chunks and 256 KiB: +6 % at 64 KiB writes, +55 % at
    /// 4 KiB writes in issue 11's profile).
    pub stream_ring_len: Option<u32>,
    /// Receive window per stream: the most bytes buffered for one stream's client.
    pub conn_window: u32,
    /// Largest stream payload per V4V message. The default, 256 KiB − 64, is the most that
    /// fits one record of the simulator's request channel with its headers (so a message is one
    /// channel round trip) and a 256 KiB ring: against 128 KiB, half the data sendvs and 45 %
    /// fewer context switches per GiB (issue 11: 0.52 → 0.41 s of CPU per GiB in v4vd and
    /// v4v-sim together).
    pub chunk: usize,
    /// Bytes buffered for a datagram client before its ring stops being drained.
    pub dgram_buffer: usize,
    /// Unaccepted connections per listening port.
    pub backlog: usize,
    /// Most simultaneous clients.
    pub max_clients: usize,
    /// Most simultaneous clients of one user (root is not limited).
    pub max_clients_per_user: usize,
    /// Most rings one user other than root holds (its datagram and listening ports); `None`: a
    /// quarter of the domain's ring limit.
    pub max_rings_per_user: Option<u32>,
    /// Bytes the daemon buffers for one user other than root (stream buffers, listening
    /// backlogs, datagram buffers and partial frames).
    pub max_buffer_per_user: usize,
    /// A client that has not sent a complete request line within this long is closed.
    pub handshake_timeout: std::time::Duration,
    /// dom0: the rules file loaded at start and on SIGHUP (`None`: the table is left alone).
    pub acl_file: Option<std::path::PathBuf>,
    /// Whether a missing `acl_file` is an error (it was named explicitly) or means "no rules
    /// file" (the default path).
    pub acl_file_required: bool,
    /// Besides root, members of this group may edit the ACL table.
    pub acl_group: Option<u32>,
    /// Besides root, members of this group may bind, listen on and send from the privileged
    /// ports (1 to [`MAX_PRIVILEGED_PORT`]).
    pub privileged_group: Option<u32>,
    /// The name this domain goes by (`--name`): claimed from the simulator's directory; on Xen
    /// the toolstack names domains, and it must agree.
    pub name: Option<String>,
    /// dom0: the names guests may resolve (published where guests' daemons read them).
    pub publish_names: Vec<String>,
    /// The longest a datagram client's `SEND_F_LAZY` successes wait for their ACK
    /// (`docs/protocol.md`): the protocol's [`LAZY_ACK_DELAY`](v4v::client::proto::LAZY_ACK_DELAY);
    /// not a setting of the configuration file (tests raise it to see what sends the ACK
    /// sooner).
    pub lazy_ack_delay: std::time::Duration,
}

/// Ports 1 to 1023 are privileged, as in TCP/IP: only root (or the configured
/// `privileged_group`) may bind, listen on or send from them, so a source-port ACL rule
/// identifies a local service only for these.
pub const MAX_PRIVILEGED_PORT: u32 = 1023;

impl Default for Config {
    fn default() -> Self {
        Config {
            ring_len: DEFAULT_RING_LEN,
            stream_ring_len: None,
            conn_window: 1024 * 1024,
            chunk: 256 * 1024 - 64,
            dgram_buffer: 1024 * 1024,
            backlog: 1024,
            max_clients: 65536,
            max_clients_per_user: 4096,
            max_rings_per_user: None,
            max_buffer_per_user: 64 << 20,
            handshake_timeout: std::time::Duration::from_secs(10),
            acl_file: None,
            acl_file_required: false,
            acl_group: None,
            privileged_group: None,
            name: None,
            publish_names: Vec::new(),
            lazy_ack_delay: v4v::client::proto::LAZY_ACK_DELAY,
        }
    }
}

impl Config {
    /// The data area of a ring that carries streams (see [`Config::stream_ring_len`]).
    pub fn stream_ring(&self) -> u32 {
        self.stream_ring_len
            .unwrap_or_else(|| self.ring_len.saturating_mul(4).min(16 << 20))
    }

    /// Checks the values against the ABI's limits.
    pub fn validate(&self) -> Result<(), DaemonError> {
        for len in [self.ring_len, self.stream_ring()] {
            if !v4v::ring::valid_len(len) || len < 4096 {
                return Err(DaemonError::Config(format!(
                    "ring size {len} must be a multiple of 16 in 4096..=16 MiB"
                )));
            }
        }
        for n in self.name.iter().chain(&self.publish_names) {
            v4v::names::validate(n).map_err(|e| DaemonError::Config(e.to_string()))?;
        }
        if self.conn_window < 4096 || self.chunk == 0 || self.dgram_buffer == 0 {
            return Err(DaemonError::Config(
                "window must be at least 4096 and chunk/buffer non-zero".into(),
            ));
        }
        Ok(())
    }
}

/// Why the daemon could not start or stopped.
#[derive(Debug, Error)]
pub enum DaemonError {
    #[error("hypervisor: {0}")]
    Hypervisor(#[from] v4v::HvError),
    #[error("lost the hypervisor ({0}): the simulator exited or this domain was destroyed")]
    HypervisorLost(v4v::HvError),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("configuration: {0}")]
    Config(String),
    #[error("ACL file: {0}")]
    Acl(String),
}
