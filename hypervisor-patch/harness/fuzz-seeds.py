#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-only
"""Write the hand-made seeds of the v4v.c fuzz target into fuzz-corpus/.

Each seed is a program in fuzz_v4v.c's encoding (see its step decoder):
register rings, fill them, queue waiters, wake them, ACL rules, destruction,
soft reset, preemption plans and injected failures around those steps. The
fuzzer's own finds are merged in with -set_cover_merge (see the Makefile).
"""
import os
import struct
import sys

ANY_DOM, SELF = 5, 4          # pick_domid bytes
PORT1, PORT2 = 0, 1           # pick_port bytes


def hc(d, *b):
    return bytes([0x00 | d << 4]) + bytes(b)


def info(d):
    return hc(d, 4)


def register(d, slot, port=PORT1, partner=ANY_DOM, lenidx=0):
    return hc(d, 0, slot, 0x01, port, partner, lenidx)


def unregister(d, slot):
    return hc(d, 1, slot)


def send(d, dst, port=PORT1, words=4, src_port=7, off_page=12):
    off = off_page * 4096
    return hc(d, 2, 0, src_port, dst, port, 1) + struct.pack('<H', off) + \
        bytes([words])


def send_iovs(d, dst, n, words, port=PORT1):
    b = hc(d, 2, 0, 7, dst, port, n)
    for i in range(n):
        b += struct.pack('<H', (12 + i) * 4096 + 4092 - i * 8) + bytes([words])
    return b


def notify(d, ents=(), null=False):
    b = hc(d, 3, 8 if null else 0, len(ents))
    for dom, port, space in ents:
        b += bytes([dom, port, space])
    return b


def consume(d, slot, n=1):
    return bytes([0x0b | d << 4, slot, n])


def acl_add(src, dst, accept, pos=0, sport=7, dport=7):
    return hc(0, 6, src, sport, dst, dport, accept, pos)


def plan(d, countdown, action, op, nested=b''):
    """op (a hypercall by d) with, at its countdown-th guest access, the
    nested hypercall 'nested' (another vCPU; action odd) or a scribble."""
    return bytes([0x07 | d << 4, countdown, action]) + op[1:] + nested[1:]


def fault(d, kind, k, op):
    return bytes([0x08 | d << 4, kind, k]) + op[1:]


def destroy(d):
    return bytes([0x0c | d << 4])


def create(d):
    return bytes([0x0d | d << 4])


def soft_reset(d):
    return bytes([0x0f | d << 4, 0x01])


seeds = {
    'fill-wait-wake': info(1) + info(2) + info(3) + register(1, 0)
    + send(2, 1) + send(2, 1) + send(3, 1) + notify(3, [(1, PORT1, 2)])
    + consume(1, 0) + notify(1, null=True) + send(2, 1) + send(3, 1)
    + unregister(1, 0),
    'wrap-and-consume': info(1) + register(1, 0, lenidx=3)
    + b''.join(send(2, 1, words=w) for w in (10, 20, 13, 7))
    + consume(1, 0, 3) + send_iovs(2, 1, 3, 9) + send(2, 1, words=30)
    + consume(1, 0, 5) + notify(1, [(2, PORT1, 0), (9, PORT2, 1)]),
    'destroy-with-waits': info(1) + info(2) + register(1, 0)
    + register(2, 2, partner=1) + register(1, 4, port=PORT2, partner=2)
    + send(2, 1) + send(2, 1) + send(1, 2) + send(1, 2)
    + notify(2, [(1, PORT1, 8)]) + destroy(2) + create(2) + info(2)
    + send(2, 1, port=PORT2) + destroy(1) + create(1),
    'acl': acl_add(3, ANY_DOM, 0) + acl_add(ANY_DOM, 1, 1, pos=1)
    + hc(0, 8, 0, 5) + register(1, 0) + send(3, 1) + notify(3, [(1, PORT1, 0)])
    + hc(0, 7, 4) + hc(0, 7, 2) + send(3, 1),
    'config-and-limits': hc(0, 5, 1, 1) + register(1, 0) + register(1, 2, port=PORT2)
    + hc(0, 5, 1, 3) + register(1, 2, port=PORT2) + register(1, 2, port=PORT2)
    + hc(1, 0, 0, 0x21, PORT1, ANY_DOM) + struct.pack('<I', 64),
    'preempt-register': register(1, 0)
    + plan(1, 1, 0x03, register(1, 0), unregister(1, 0))
    + plan(1, 0, 0x03, register(1, 0), register(1, 0))
    + plan(2, 2, 0x02, send(2, 1), struct.pack('<HI', 64 + 24, 0xffff))
    + plan(2, 1, 0x03, send(2, 1), unregister(1, 0))
    + register(1, 0) + send(2, 1) + send(2, 1)
    + plan(1, 0, 0x05, notify(1, null=True), send(2, 1))
    + plan(2, 2, 0x03, notify(2, [(1, PORT1, 4)]), consume(1, 0)[:0] + hc(1, 1, 0)),
    'faults': info(1) + fault(1, 0, 1, register(1, 0)) + fault(1, 0, 2, register(1, 0))
    + fault(1, 1, 1, register(1, 0)) + register(1, 2, port=PORT2, lenidx=3)
    + send(2, 1, port=PORT2) + send(2, 1, port=PORT2)
    + fault(2, 0, 1, send(2, 1, port=PORT2))
    + fault(2, 2, 2, send(2, 1, port=PORT2, words=8))
    + consume(1, 2, 2) + fault(2, 2, 3, send_iovs(2, 1, 2, 5, port=PORT2))
    + consume(1, 2, 2) + fault(2, 2, 2, send_iovs(2, 1, 3, 9, port=PORT2))
    + acl_add(ANY_DOM, ANY_DOM, 1, pos=1) + acl_add(2, 1, 1, pos=1)
    + acl_add(3, 2, 0, pos=2) + hc(0, 7, 1 << 2) + hc(0, 8, 1, 2)
    + fault(3, 3, 1, info(3)) + fault(3, 0, 1, notify(3, [(1, PORT1, 90)])),
    'soft-reset': info(1) + register(1, 0) + register(2, 2, partner=1)
    + send(2, 1) + send(2, 1) + soft_reset(1) + info(1) + soft_reset(2)
    + register(1, 0) + send(2, 1),
}

out = sys.argv[1] if len(sys.argv) > 1 else 'fuzz-corpus'
os.makedirs(out, exist_ok=True)
for name, data in seeds.items():
    with open(os.path.join(out, 'seed-' + name), 'wb') as f:
        f.write(data)
