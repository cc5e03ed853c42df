/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * fuzz_v4v.c: libFuzzer target over the hypervisor's xen/common/v4v.c, as
 * it is, through the userspace harness (v4v_harness.c and its shims).
 *
 * Each input is a program: a sequence of steps decoded from its bytes, run
 * against a fresh machine of four domains (0 is the hardware domain), each
 * with 20 pages of guest memory holding its rings, arguments and payloads.
 * Steps: every hypercall with fuzzed arguments (and raw 64-bit registers),
 * ring scribbles by the owner, message consumption, domain destruction,
 * re-creation and soft reset, allocation / vmap / copy / event channel
 * failure injection,
 * and a preemption plan: at the k-th guest access of the next hypercall,
 * another vCPU scribbles on ring memory or (where the interrupted CPU holds
 * no lock but v4v_lock) issues a hypercall of its own.
 *
 * After every step: the harness's invariants (v4vh_check_invariants: locks,
 * lists, page references page by page, mappings, allocations), and a diff of
 * all guest memory against a shadow copy: the hypervisor may only have
 * written ring headers' id.addr.domain and tx_ptr, rings' data areas and the
 * argument pages. Strict copies are on: guest accesses must lie inside the
 * calling domain's memory, as on Xen.
 *
 * Built by "make fuzz" (clang, -fsanitize=fuzzer,address,undefined); with
 * -DV4VH_FUZZ_REPLAY it gets its own main() and replays files (the corpus
 * and the regression inputs) under any compiler, for "make check".
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <unistd.h>

#include <public/v4v.h>

#include "v4v_harness.h"

#define PG              4096UL
#define NR_DOMS         4
#define DOM_PAGES       20
#define RING_PAGES      18          /* pages 0..17: rings and payloads */
#define ARG_PAGE        18          /* this domain's hypercall arguments */
#define NESTED_PAGE     19          /* arguments of its nested hypercalls */
#define DOM_BYTES       (DOM_PAGES * PG)
#define MAX_STEPS       256

static uint8_t mem[NR_DOMS][DOM_BYTES] __attribute__((aligned(4096)));
static uint8_t shadow[NR_DOMS][DOM_BYTES];
static bool alive[NR_DOMS];

struct input {
    const uint8_t *p;
    size_t n;
};

static uint8_t get8(struct input *in)
{
    uint8_t v;

    if ( !in->n )
        return 0;
    v = *in->p++;
    in->n--;

    return v;
}

static uint16_t get16(struct input *in)
{
    return get8(in) | (get8(in) << 8);
}

static uint32_t get32(struct input *in)
{
    return get16(in) | ((uint32_t)get16(in) << 16);
}

static const uint32_t ring_lens[] = {
    48, 64, 128, 256, 4032, 8128, 16320, 65472,
};

/* A domain id argument: mostly a real one, sometimes SELF/ANY/missing. */
static domid_t pick_domid(uint8_t b)
{
    switch ( b % 8 )
    {
    case 4: return DOMID_SELF;
    case 5: return V4V_DOMID_ANY;
    case 6: return 9;
    case 7: return b >> 3;
    default: return b % NR_DOMS;
    }
}

static uint32_t pick_port(uint8_t b)
{
    return b % 8 == 7 ? V4V_PORT_ANY : 1U + b % 4;
}

/* --- guest memory shadow --- */

static void shadow_sync(void)
{
    memcpy(shadow, mem, sizeof(mem));
}

/* The guest itself wrote there: not the hypervisor's doing. */
static void guest_wrote(const void *p, size_t len)
{
    size_t off;
    unsigned int d;

    for ( d = 0; d < NR_DOMS; d++ )
        if ( (const uint8_t *)p >= mem[d] &&
             (const uint8_t *)p < mem[d] + DOM_BYTES )
        {
            off = (const uint8_t *)p - mem[d];
            memcpy(&shadow[d][off], p, len);
        }
}

struct allowed {
    uint8_t map[NR_DOMS][DOM_BYTES / 8];    /* bit per byte */
};
static struct allowed allowed;

static void allow(unsigned int d, size_t off, size_t len)
{
    size_t i;

    for ( i = off; i < off + len && i < DOM_BYTES; i++ )
        allowed.map[d][i / 8] |= 1U << (i % 8);
}

/* Where a ring at 'hdr' may be written by the hypervisor. */
static void allow_ring(void *hdr, uint32_t len)
{
    unsigned int d;

    for ( d = 0; d < NR_DOMS; d++ )
    {
        uint8_t *b = mem[d];

        if ( (uint8_t *)hdr >= b && (uint8_t *)hdr < b + DOM_BYTES )
        {
            size_t off = (uint8_t *)hdr - b;

            allow(d, off + offsetof(v4v_ring_t, id.addr.domain),
                  sizeof(domid_t));
            allow(d, off + offsetof(v4v_ring_t, tx_ptr), sizeof(uint32_t));
            allow(d, off + V4V_RING_HEADER_SIZE, len);
        }
    }
}

static void allow_ring_cb(uint16_t owner, void *hdr, uint32_t len, void *arg)
{
    allow_ring(hdr, len);
}

/* Before a step: what the hypervisor may write during it. */
static void allow_begin(void)
{
    unsigned int d;

    memset(&allowed, 0, sizeof(allowed));
    for ( d = 0; d < NR_DOMS; d++ )
    {
        allow(d, ARG_PAGE * PG, PG);
        allow(d, NESTED_PAGE * PG, PG);
    }
    v4vh_for_each_ring(allow_ring_cb, NULL);
}

static void check_step(void)
{
    unsigned int d;
    size_t i;

    v4vh_check_invariants();
    /* Rings registered during the step (and still there) count too. */
    v4vh_for_each_ring(allow_ring_cb, NULL);
    for ( d = 0; d < NR_DOMS; d++ )
        for ( i = 0; i < DOM_BYTES; i += PG )
        {
            size_t j;

            /* Argument pages may change at will: nothing to check. */
            if ( i / PG >= ARG_PAGE || !memcmp(&mem[d][i], &shadow[d][i], PG) )
                continue;
            for ( j = i; j < i + PG; j++ )
                if ( mem[d][j] != shadow[d][j] &&
                     !(allowed.map[d][j / 8] & (1U << (j % 8))) )
                {
                    fprintf(stderr, "fuzz: d%u byte %#zx written outside "
                            "any ring or argument page\n", d, j);
                    abort();
                }
        }
    shadow_sync();
}

/* --- domains --- */

static void dom_up(unsigned int d)
{
    if ( v4vh_domain_create(d) )
        abort();
    if ( v4vh_guest_map(d, mem[d], DOM_BYTES) )
        abort();
    alive[d] = true;
}

/* --- hypercalls, with arguments built in the domain's argument page --- */

static long do_op(struct input *in, unsigned int d, bool nested);

static struct {
    unsigned int countdown;         /* guest accesses until it fires */
    uint8_t action;
    struct input *in;
    bool fired;
} plan;

static void plan_hook(unsigned int point, const void *addr, int lock_free,
                      void *arg)
{
    struct input *in = plan.in;

    if ( plan.fired || plan.countdown-- )
        return;
    plan.fired = true;

    if ( lock_free && (plan.action & 1) )
    {
        unsigned int d = (plan.action >> 1) % NR_DOMS;

        if ( alive[d] )
            do_op(in, d, true);
    }
    else
    {
        /* The owner scribbles on ring memory (rx_ptr, or data). */
        unsigned int d = (plan.action >> 1) % NR_DOMS;
        size_t off = (get16(in) % (RING_PAGES * PG)) & ~(size_t)3;
        uint32_t v = get32(in);

        memcpy(&mem[d][off], &v, sizeof(v));
        memcpy(&shadow[d][off], &v, sizeof(v));
    }
}

static void *ring_at(unsigned int d, uint8_t slot)
{
    return &mem[d][(slot % RING_PAGES) * PG];
}

static long do_op(struct input *in, unsigned int d, bool nested)
{
    uint8_t *args = &mem[d][(nested ? NESTED_PAGE : ARG_PAGE) * PG];
    uint8_t op = get8(in);
    unsigned int i, n;
    long rc = 0;

    switch ( op % 10 )
    {
    case 0: /* register_ring, with a header the guest fills */
    {
        v4v_ring_t *r = ring_at(d, get8(in));
        uint8_t f = get8(in);

        if ( f & 1 )
        {
            r->magic = (f & 0x80) ? get32(in) : V4V_RING_MAGIC;
            r->id.addr.port = pick_port(get8(in));
            r->id.addr.domain = (f & 2) ? pick_domid(get8(in)) : DOMID_SELF;
            r->id.addr.pad = (f & 0x40) ? 1 : 0;
            r->id.partner = pick_domid(get8(in));
            r->id.pad = 0;
            r->len = (f & 0x20) ? get32(in) : ring_lens[get8(in) % 8];
            r->rx_ptr = (f & 4) ? get32(in) : 0;
            r->tx_ptr = (f & 8) ? get32(in) : 0;
            guest_wrote(r, V4V_RING_HEADER_SIZE);
        }
        /*
         * Whatever len the hypervisor reads (a scribble may change it under
         * the call), it may write this ring's header and what follows.
         */
        allow_ring(r, (uint8_t *)mem[d] + RING_PAGES * PG -
                      ((uint8_t *)r + V4V_RING_HEADER_SIZE));
        rc = v4vh_hypercall(d, V4VOP_register_ring,
                            (f & 0x10) ? (void *)((uint8_t *)r + 16) : r,
                            NULL, 0, 0);
        break;
    }

    case 1: /* unregister_ring */
        rc = v4vh_hypercall(d, V4VOP_unregister_ring, ring_at(d, get8(in)),
                            NULL, 0, 0);
        break;

    case 2: /* sendv */
    {
        v4v_send_addr_t *sa = (void *)args;
        v4v_iov_t *iov = (void *)(args + 64);
        uint8_t f = get8(in);

        memset(sa, 0, sizeof(*sa));
        sa->src.port = get8(in);
        sa->src.domain = (f & 1) ? pick_domid(get8(in)) : DOMID_SELF;
        sa->dst.domain = pick_domid(get8(in));
        sa->dst.port = pick_port(get8(in));
        n = get8(in) % 5;
        for ( i = 0; i < n; i++ )
        {
            uint16_t off = get16(in);

            iov[i].iov_base = (uintptr_t)&mem[d][off % (RING_PAGES * PG)];
            iov[i].iov_len = (f & 2) ? get32(in) : get8(in) * 4;
            iov[i].pad = (f & 4) ? 1 : 0;
            if ( f & 8 )
                iov[i].iov_base = (uintptr_t)&mem[get8(in) % NR_DOMS][off];
        }
        rc = v4vh_hypercall(d, V4VOP_sendv, sa, iov, (f & 0x10) ? 200 : n,
                            (f & 0x20) ? V4V_PROTO_STREAM : V4V_PROTO_DGRAM);
        break;
    }

    case 3: /* notify, with up to 8 entries */
    {
        v4v_ring_data_t *rd = (void *)args;
        uint8_t f = get8(in);

        n = get8(in) % 9;
        memset(rd, 0, sizeof(*rd) + n * sizeof(rd->data[0]));
        rd->magic = (f & 1) ? 0 : V4V_RING_DATA_MAGIC;
        rd->nent = (f & 2) ? 300 : n;
        for ( i = 0; i < n; i++ )
        {
            rd->data[i].ring.domain = pick_domid(get8(in));
            rd->data[i].ring.port = pick_port(get8(in));
            rd->data[i].space_required = (f & 4) ? get32(in) : get8(in) * 8;
        }
        rc = v4vh_hypercall(d, V4VOP_notify, (f & 8) ? NULL : rd, NULL,
                            0, 0);
        break;
    }

    case 4: /* info */
        rc = v4vh_hypercall(d, V4VOP_info, args, NULL, 0, 0);
        break;

    case 5: /* config */
    {
        v4v_config_t *c = (void *)args;

        memset(c, 0, sizeof(*c));
        c->domain = pick_domid(get8(in));
        c->max_rings = get8(in) % 6;
        rc = v4vh_hypercall(d, V4VOP_config, c, NULL, 0, 0);
        break;
    }

    case 6: /* tables_add */
    {
        v4vtables_rule_t *r = (void *)args;

        r->src.domain = pick_domid(get8(in));
        r->src.port = pick_port(get8(in));
        r->src.pad = 0;
        r->dst.domain = pick_domid(get8(in));
        r->dst.port = pick_port(get8(in));
        r->dst.pad = 0;
        r->accept = get8(in) % 3;
        rc = v4vh_hypercall(d, V4VOP_tables_add, r, NULL, get8(in) % 8, 0);
        break;
    }

    case 7: /* tables_del: by rule (the last one built) or position */
    {
        uint8_t f = get8(in);

        rc = v4vh_hypercall(d, V4VOP_tables_del, (f & 1) ? args : NULL, NULL,
                            (f & 2) ? V4VTABLES_DEL_ALL : f >> 2, 0);
        break;
    }

    case 8: /* tables_list */
    {
        v4vtables_list_t *l = (void *)args;

        l->start_rule = get8(in) % 8;
        l->nb_rules = get8(in) % 40;
        rc = v4vh_hypercall(d, V4VOP_tables_list, l, NULL, 0, 0);
        break;
    }

    case 9: /* raw registers: any command, any arguments */
    {
        unsigned long cmd = get8(in) % 12, a3 = get32(in), a4 = get8(in);
        uint8_t f = get8(in);

        if ( f & 1 )
            cmd |= 1UL << (32 + f % 8);
        if ( f & 2 )
            a3 |= 1UL << 32;
        rc = v4vh_hypercall_raw(d, cmd, (f & 4) ? args : NULL,
                                (f & 8) ? args + 256 : NULL, a3, a4);
        break;
    }
    }

    return rc;
}

/* Consume messages of one ring as its owner would (checked reader). */
static void consume(unsigned int d, uint8_t slot, uint8_t count)
{
    v4v_ring_t *r = ring_at(d, slot);
    uint32_t len = r->len;

    if ( len < V4V_MIN_RING_LEN || len % 16 ||
         (uint8_t *)r + V4V_RING_HEADER_SIZE + len > mem[d] + RING_PAGES * PG )
        return;

    while ( count-- )
    {
        uint32_t rx = r->rx_ptr % len, tx = r->tx_ptr % len;
        uint32_t avail = (tx + len - rx) % len;
        v4v_ring_message_header_t mh;

        if ( !avail || rx % 16 )
            break;
        memcpy(&mh, &r->ring[rx], sizeof(mh));
        if ( mh.len < 16 || mh.len > avail )
            break;
        r->rx_ptr = (rx + V4V_ROUNDUP(mh.len)) % len;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct input in = { data, size };
    unsigned int d, steps = 0;

    v4vh_reset();
    v4vh_set_strict_copies(1);
    memset(mem, 0, sizeof(mem));
    for ( d = 0; d < NR_DOMS; d++ )
        dom_up(d);
    shadow_sync();

    while ( in.n && steps++ < MAX_STEPS )
    {
        uint8_t s = get8(&in);

        d = (s >> 4) % NR_DOMS;
        allow_begin();

        switch ( s % 16 )
        {
        case 0 ... 6: /* a hypercall */
            if ( alive[d] )
                do_op(&in, d, false);
            break;

        case 7: /* the same, with a preemption plan */
            plan.countdown = get8(&in) % 16;
            plan.action = get8(&in);
            plan.in = &in;
            plan.fired = false;
            v4vh_set_preempt(plan_hook, NULL);
            if ( alive[d] )
                do_op(&in, d, false);
            v4vh_set_preempt(NULL, NULL);
            break;

        case 8: /* the same, with a failure injected */
        {
            uint8_t f = get8(&in), k = 1 + get8(&in) % 6;

            switch ( f % 4 )
            {
            case 0: v4vh_fail_alloc(k); break;
            case 1: v4vh_fail_vmap(k); break;
            case 2: v4vh_fail_copy(k); break;
            case 3: v4vh_fail_evtchn(1); break;
            }
            if ( alive[d] )
                do_op(&in, d, false);
            v4vh_fail_alloc(0);
            v4vh_fail_vmap(0);
            v4vh_fail_copy(0);
            v4vh_fail_evtchn(0);
            break;
        }

        case 9: /* the owner scribbles on a ring header */
        {
            v4v_ring_t *r = ring_at(d, get8(&in));
            uint8_t f = get8(&in);
            uint32_t v = get32(&in);

            if ( f & 1 )
                r->rx_ptr = v;
            if ( f & 2 )
                r->tx_ptr = v;
            if ( f & 4 )
                r->len = v;
            if ( f & 8 )
                r->id.addr.port = v;
            break;
        }

        case 10: /* ... or on any of its memory */
        {
            uint16_t off = get16(&in);
            uint32_t v = get32(&in);

            memcpy(&mem[d][off % (RING_PAGES * PG - 4)], &v, sizeof(v));
            break;
        }

        case 11: /* consume messages */
            consume(d, get8(&in), get8(&in) % 8);
            break;

        case 12: /* destroy a domain (not the hardware domain) ... */
            if ( d && alive[d] )
            {
                v4vh_domain_destroy(d);
                alive[d] = false;
            }
            break;

        case 13: /* ... and create it again */
            if ( !alive[d] )
                dom_up(d);
            break;

        case 14: /* events are consumed */
            if ( alive[d] )
                v4vh_event_test_and_clear(d);
            break;

        case 15: /* soft reset, or the debug key (its output discarded) */
        {
            uint8_t b = get8(&in);

            if ( b % 16 == 1 && alive[d] )
                v4vh_domain_soft_reset(d);
            else if ( !(b % 16) )
            {
                int saved = dup(2), null = open("/dev/null", O_WRONLY);

                fflush(stderr);
                if ( saved >= 0 && null >= 0 )
                    dup2(null, 2);
                v4vh_debug_dump();
                fflush(stderr);
                if ( saved >= 0 )
                    dup2(saved, 2);
                if ( saved >= 0 )
                    close(saved);
                if ( null >= 0 )
                    close(null);
            }
            break;
        }
        }

        /* Guest-side scribbles are the guest's own: not checked. */
        if ( s % 16 == 9 || s % 16 == 10 || s % 16 == 11 )
            shadow_sync();
        check_step();
    }

    v4vh_set_strict_copies(0);
    v4vh_reset();

    return 0;
}

#ifdef V4VH_FUZZ_REPLAY
/* Replay inputs (files) without libFuzzer: "fuzz_replay FILE..." */
int main(int argc, char **argv)
{
    static uint8_t buf[1 << 20];
    int i;

    for ( i = 1; i < argc; i++ )
    {
        FILE *f = fopen(argv[i], "rb");
        size_t n;

        if ( !f )
        {
            perror(argv[i]);
            return 2;
        }
        n = fread(buf, 1, sizeof(buf), f);
        fclose(f);
        LLVMFuzzerTestOneInput(buf, n);
    }
    printf("%d passed, 0 failed\n", argc - 1);

    return 0;
}
#endif
