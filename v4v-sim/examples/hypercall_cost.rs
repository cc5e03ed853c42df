// SPDX-License-Identifier: MIT OR Apache-2.0
//! What one hypercall costs a guest of a running `v4v-sim`: two guests in this process, one
//! sending datagrams to the other's ring (and the other reading them), timed per operation. Run
//! it under `strace -c -f` (and the simulator under another) to count system calls per operation.
//!
//! `cargo run --release -p v4v-sim --example hypercall_cost -- SOCKET [socket|channel] [N] [BATCH]`
//! (BATCH > 1: the sends go as `sendv_batch` calls of BATCH each).

use std::io::IoSlice;
use std::path::PathBuf;
use std::time::Instant;

use v4v::abi::{Addr, DOMID_ANY, DOMID_SELF, PROTO_DGRAM, RingId, SendAddr};
use v4v::backend::sim::{SimHypervisor, Transport};
use v4v::hypervisor::BatchSend;
use v4v::ring::{RingReader, ring_bytes};
use v4v::{HvError, Hypervisor};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let socket = PathBuf::from(
        args.next()
            .ok_or("usage: hypercall_cost SOCKET [socket|channel] [N] [BATCH]")?,
    );
    let transport = match args.next().as_deref() {
        Some("socket") => Transport::Socket,
        _ => Transport::Channel,
    };
    let n: usize = args.next().map_or(Ok(20_000), |v| v.parse())?;
    let batch: usize = args.next().map_or(Ok(1), |v| v.parse())?;
    let a = SimHypervisor::connect_with(&socket, None, transport)?;
    let b = SimHypervisor::connect_with(&socket, None, transport)?;
    let len = 64 * 1024;
    let mem = b.alloc_ring_memory(ring_bytes(len))?;
    let ring = RingReader::new(mem, 0, len)?;
    ring.init_header(RingId {
        addr: Addr::new(DOMID_SELF, 7),
        partner: DOMID_ANY,
        pad: 0,
    })?;
    b.register_ring(ring.memory(), 0)?;
    let addr = SendAddr {
        src: Addr::new(DOMID_SELF, 1),
        dst: Addr::new(b.domid(), 7),
    };
    let payload = [0x42u8; 64];
    let iov = [IoSlice::new(&payload)];
    let sends: Vec<BatchSend<'_>> = (0..batch)
        .map(|_| BatchSend {
            addr,
            iov: &iov,
            message_type: PROTO_DGRAM,
        })
        .collect();
    let mut results = Vec::new();
    let mut buf = Vec::new();
    let start = Instant::now();
    let mut sent = 0;
    while sent < n {
        if batch > 1 {
            a.sendv_batch(&sends, &mut results);
            for r in &results {
                if r.is_ok() {
                    sent += 1;
                }
            }
        } else {
            match a.sendv(&addr, &iov, PROTO_DGRAM) {
                Ok(_) => sent += 1,
                Err(HvError::WouldBlock) => {}
                Err(e) => return Err(e.into()),
            }
        }
        // The reader drains now and then, as a daemon would after an event.
        if sent % 256 == 0 || ring.available()? > len / 2 {
            while ring.recv(&mut buf)?.is_some() {}
            let _ = b.take_event();
        }
    }
    let took = start.elapsed();
    println!(
        "{transport:?}: {n} sends (batch {batch}) in {took:?}: {:.2} µs per send, {:.0} k/s",
        took.as_secs_f64() * 1e6 / n as f64,
        n as f64 / took.as_secs_f64() / 1e3
    );
    Ok(())
}
