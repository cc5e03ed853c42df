// SPDX-License-Identifier: MIT OR Apache-2.0
//! What a V4V send costs on this Xen domain, one hypercall per send against multicalls: the
//! domain sends 64-byte datagrams to a ring of its own, as plain `sendv`s and then as
//! `sendv_batch`es of BATCH (one `HYPERVISOR_multicall` each), draining the ring as it fills,
//! and prints the time per send of each. Needs root and Xen with V4V (no v4vd may run: it binds
//! the domain's event channel).
//!
//! `cargo run --release -p libv4v --example xen_sendv_cost -- [N] [BATCH]` (defaults 2000, 64)

use std::io::IoSlice;
use std::time::{Duration, Instant};

use v4v::abi::{Addr, DOMID_ANY, DOMID_SELF, PROTO_DGRAM, RingId, SendAddr};
use v4v::hypervisor::BatchSend;
use v4v::ring::{RingReader, ring_bytes};
use v4v::{HvError, Hypervisor};

const PORT: u32 = 4711;
const RING_LEN: u32 = 256 * 1024;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map_or(Ok(2000), |v| v.parse())?;
    let batch: usize = args.next().map_or(Ok(64), |v| v.parse())?;
    let hv = v4v::xen::open()?;
    let me = hv.info()?.domid;
    let mem = hv.alloc_ring_memory(ring_bytes(RING_LEN))?;
    let ring = RingReader::new(mem, 0, RING_LEN)?;
    ring.init_header(RingId {
        addr: Addr::new(DOMID_SELF, PORT),
        partner: DOMID_ANY,
        pad: 0,
    })?;
    hv.register_ring(ring.memory(), 0)?;
    let addr = SendAddr {
        src: Addr::new(DOMID_SELF, 1),
        dst: Addr::new(me, PORT),
    };
    let payload = [0x42u8; 64];
    let iov = [IoSlice::new(&payload)];
    let mut buf = Vec::new();
    let mut drain = || -> Result<(), Box<dyn std::error::Error>> {
        while ring.recv(&mut buf)?.is_some() {}
        let _ = hv.take_event();
        Ok(())
    };
    let mut run = |batch: usize| -> Result<Duration, Box<dyn std::error::Error>> {
        let sends: Vec<BatchSend<'_>> = (0..batch)
            .map(|_| BatchSend {
                addr,
                iov: &iov,
                message_type: PROTO_DGRAM,
            })
            .collect();
        let mut results = Vec::new();
        let mut sent = 0;
        let mut took = Duration::ZERO;
        while sent < n {
            let t = Instant::now();
            if batch > 1 {
                hv.sendv_batch(&sends[..batch.min(n - sent)], &mut results);
            } else {
                results.clear();
                results.push(hv.sendv(&addr, &iov, PROTO_DGRAM));
            }
            took += t.elapsed();
            for r in &results {
                match r {
                    Ok(_) => sent += 1,
                    Err(HvError::WouldBlock) => {}
                    Err(e) => return Err(format!("send {sent}: {e}").into()),
                }
            }
            // Drained (untimed) before it can fill: every send is timed as one that fits.
            if ring.available()? > RING_LEN / 2 {
                drain()?;
            }
        }
        drain()?;
        Ok(took)
    };
    // A first pass of each, untimed: under an emulator the first run of a path translates it.
    run(1)?;
    run(batch)?;
    let single = run(1)?;
    let multi = run(batch)?;
    let us = |d: Duration| d.as_secs_f64() * 1e6 / n as f64;
    println!(
        "XEN-SENDV-COST {n} sends of 64 B: {:.1} us per send one hypercall each, {:.1} us per send in \
         multicalls of {batch} ({:.1}x)",
        us(single),
        us(multi),
        us(single) / us(multi)
    );
    hv.unregister_ring(ring.memory(), 0)?;
    Ok(())
}
