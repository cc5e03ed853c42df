/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * test_harness.c: direct C tests of xen/common/v4v.c through the harness,
 * for what the Rust conformance scenarios cannot express: bad pointers,
 * reserved arguments, allocation failures on every path, lock balance (the
 * harness aborts on any lock held at hypercall exit), page references.
 *
 * Prints one line per failed check and a final "N passed, M failed".
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <unistd.h>
#include <sys/wait.h>

/* The ABI; its "xen.h" and "event_channel.h" come from shim/public. */
#include <public/v4v.h>

#include "v4v_harness.h"

static unsigned int passed, failed;

#define CHECK(cond) do {                                                \
    if ( cond )                                                         \
        passed++;                                                       \
    else                                                                \
    {                                                                   \
        failed++;                                                       \
        fprintf(stderr, "FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond); \
    }                                                                   \
} while ( 0 )

#define EQ(a, b) do {                                                   \
    long long a_ = (long long)(a), b_ = (long long)(b);                 \
    if ( a_ == b_ )                                                     \
        passed++;                                                       \
    else                                                                \
    {                                                                   \
        failed++;                                                       \
        fprintf(stderr, "FAIL %s:%d: %s == %lld, expected %s == %lld\n",\
                __FILE__, __LINE__, #a, a_, #b, b_);                    \
    }                                                                   \
} while ( 0 )

#define PG 4096UL
#define BAD_PTR ((void *)0x800)    /* below 4096: every copy faults */

static long hc(uint16_t caller, int cmd, void *a1, void *a2, uint32_t a3,
               uint32_t a4)
{
    return v4vh_hypercall(caller, cmd, a1, a2, a3, a4);
}

/* Page-aligned memory mapped as guest memory of domid. */
static void *guest_mem(uint16_t domid, size_t len)
{
    void *p = aligned_alloc(PG, len);

    if ( !p )
        abort();
    memset(p, 0, len);
    if ( v4vh_guest_map(domid, p, len) )
        abort();

    return p;
}

static void guest_mem_free(uint16_t domid, void *p, size_t len)
{
    EQ(v4vh_guest_unmap(domid, p, len), 0);
    free(p);
}

static size_t ring_bytes(uint32_t len)
{
    return (V4V_RING_HEADER_SIZE + len + PG - 1) & ~(PG - 1);
}

static v4v_ring_t *ring_new(uint16_t owner, uint32_t port, domid_t partner,
                            uint32_t len)
{
    v4v_ring_t *r = guest_mem(owner, ring_bytes(len));

    r->magic = V4V_RING_MAGIC;
    r->id.addr.port = port;
    r->id.addr.domain = DOMID_SELF;
    r->id.partner = partner;
    r->len = len;

    return r;
}

static long send(uint16_t from, uint16_t to, uint32_t port, const void *buf,
                 uint32_t len)
{
    v4v_send_addr_t sa = {
        .src = { .port = 77, .domain = DOMID_SELF },
        .dst = { .port = port, .domain = to },
    };
    v4v_iov_t iov = { .iov_base = (uintptr_t)buf, .iov_len = len };

    return hc(from, V4VOP_sendv, &sa, &iov, 1, V4V_PROTO_DGRAM);
}

/* Consume one message as a guest would; returns payload length or -1. */
static long ring_recv(v4v_ring_t *r, void *buf, size_t max,
                      v4v_ring_message_header_t *out)
{
    uint32_t rx = r->rx_ptr, tx = r->tx_ptr, avail, plen, i;
    v4v_ring_message_header_t mh;

    if ( rx == tx )
        return -1;
    avail = (tx + r->len - rx) % r->len;
    memcpy(&mh, &r->ring[rx], sizeof(mh));
    if ( mh.len < 16 || mh.len > avail )
        return -1;
    plen = mh.len - 16;
    for ( i = 0; i < plen && i < max; i++ )
        ((uint8_t *)buf)[i] = r->ring[(rx + 16 + i) % r->len];
    r->rx_ptr = (rx + V4V_ROUNDUP(mh.len)) % r->len;
    if ( out )
        *out = mh;

    return plen;
}

static v4v_ring_data_t *ring_data_new(unsigned int nent)
{
    v4v_ring_data_t *rd = calloc(1, sizeof(*rd) + nent * sizeof(rd->data[0]));

    rd->magic = V4V_RING_DATA_MAGIC;
    rd->nent = nent;

    return rd;
}

static void setup(void)
{
    EQ(v4vh_reset(), 0);
    EQ(v4vh_domain_create(0), 0);
    EQ(v4vh_domain_create(1), 0);
    EQ(v4vh_domain_create(2), 0);
}

static void teardown(void)
{
    EQ(v4vh_reset(), 0);
    EQ(v4vh_pages_held(), 0);
    EQ(v4vh_allocations(), 0);
    EQ(v4vh_mappings(), 0);
}

static void test_disabled_and_unknown(void)
{
    v4v_info_t info;
    int cmd;

    setup();
    v4vh_set_enabled(0);
    for ( cmd = -1; cmd <= 12; cmd++ )
        EQ(hc(1, cmd, &info, NULL, 0, 0), -ENOSYS);
    v4vh_set_enabled(1);

    EQ(hc(1, 0, &info, NULL, 0, 0), -EINVAL);
    EQ(hc(1, 3, &info, NULL, 0, 0), -EINVAL);
    EQ(hc(1, 11, &info, NULL, 0, 0), -EINVAL);
    EQ(hc(1, -1, &info, NULL, 0, 0), -EINVAL);
    EQ(hc(1, 0x7fffffff, NULL, NULL, 0, 0), -EINVAL);
    EQ(hc(999, V4VOP_info, &info, NULL, 0, 0), -ESRCH);
    teardown();
}

static void test_reserved_args(void)
{
    static const int ops[] = {
        V4VOP_register_ring, V4VOP_unregister_ring, V4VOP_notify,
        V4VOP_info, V4VOP_config, V4VOP_tables_list,
    };
    v4v_info_t info;
    unsigned int i;
    char dummy[16];

    setup();
    for ( i = 0; i < sizeof(ops) / sizeof(ops[0]); i++ )
    {
        /* Reserved args are checked before anything else (even EPERM). */
        EQ(hc(1, ops[i], &info, dummy, 0, 0), -EINVAL);
        EQ(hc(1, ops[i], &info, NULL, 1, 0), -EINVAL);
        EQ(hc(1, ops[i], &info, NULL, 0, 1), -EINVAL);
        EQ(hc(1, ops[i], BAD_PTR, NULL, 0, 0x80000000U), -EINVAL);
    }
    EQ(hc(1, V4VOP_tables_add, &info, dummy, 0, 0), -EINVAL);
    EQ(hc(1, V4VOP_tables_add, &info, NULL, 0, 1), -EINVAL);
    EQ(hc(1, V4VOP_tables_del, NULL, dummy, 1, 0), -EINVAL);
    EQ(hc(1, V4VOP_tables_del, NULL, NULL, 1, 2), -EINVAL);
    /* position is not reserved: non-dom0 gets EPERM */
    EQ(hc(1, V4VOP_tables_add, &info, NULL, 5, 0), -EPERM);
    teardown();
}

static void test_info(void)
{
    v4v_info_t info, info2;

    setup();
    EQ(hc(1, V4VOP_info, NULL, NULL, 0, 0), -EFAULT);
    EQ(hc(1, V4VOP_info, BAD_PTR, NULL, 0, 0), -EFAULT);

    v4vh_fail_evtchn(1);
    EQ(hc(2, V4VOP_info, &info, NULL, 0, 0), -ENOMEM);
    v4vh_fail_evtchn(0);

    memset(&info, 0xa5, sizeof(info));
    EQ(hc(1, V4VOP_info, &info, NULL, 0, 0), 0);
    CHECK(info.ring_magic == V4V_RING_MAGIC);
    CHECK(info.data_magic == V4V_RING_DATA_MAGIC);
    CHECK(info.evtchn != 0);
    EQ(info.domid, 1);
    EQ(info.pad, 0);
    EQ(info.max_rings, V4V_DEFAULT_MAX_RINGS);
    EQ(info.nr_rings, 0);
    EQ(info.max_ring_len, V4V_MAX_RING_LEN);
    EQ(info.max_iov, V4V_MAX_IOV);
    EQ(info.max_notify, V4V_MAX_NOTIFY);
    EQ(info.max_waiters, V4V_MAX_WAITERS);
    EQ(info.max_message_size, V4V_MAX_MESSAGE_SIZE);
    EQ(info.max_rules, V4V_MAX_RULES);
    EQ(hc(1, V4VOP_info, &info2, NULL, 0, 0), 0);
    EQ(info2.evtchn, info.evtchn);
    teardown();
}

static void test_register(void)
{
    v4v_ring_t *r, saved, *r2, *unmapped;
    v4v_config_t cfg = { .domain = 1, .max_rings = 1 };
    v4v_info_t info;
    unsigned int n;
    size_t base;

    setup();
    r = ring_new(1, 10, V4V_DOMID_ANY, 4096);
    saved = *r;

    EQ(hc(1, V4VOP_register_ring, (char *)r + 16, NULL, 0, 0), -EINVAL);
    EQ(hc(1, V4VOP_register_ring, NULL, NULL, 0, 0), -EFAULT);

    r->magic ^= 1;
    EQ(hc(1, V4VOP_register_ring, r, NULL, 0, 0), -EINVAL);
    *r = saved;
    r->id.addr.pad = 1;
    EQ(hc(1, V4VOP_register_ring, r, NULL, 0, 0), -EINVAL);
    *r = saved;
    r->id.pad = 1;
    EQ(hc(1, V4VOP_register_ring, r, NULL, 0, 0), -EINVAL);
    *r = saved;
    r->id.addr.domain = 2;
    EQ(hc(1, V4VOP_register_ring, r, NULL, 0, 0), -EPERM);
    /* EPERM is checked before port 0 */
    r->id.addr.port = 0;
    EQ(hc(1, V4VOP_register_ring, r, NULL, 0, 0), -EPERM);
    r->id.addr.domain = 1;
    EQ(hc(1, V4VOP_register_ring, r, NULL, 0, 0), -EINVAL);
    *r = saved;
    r->id.partner = DOMID_SELF;
    EQ(hc(1, V4VOP_register_ring, r, NULL, 0, 0), -EINVAL);
    r->id.partner = 0x7FF5;
    EQ(hc(1, V4VOP_register_ring, r, NULL, 0, 0), -EINVAL);
    *r = saved;
    r->len = 4096 + 8;
    EQ(hc(1, V4VOP_register_ring, r, NULL, 0, 0), -EINVAL);
    r->len = 32;
    EQ(hc(1, V4VOP_register_ring, r, NULL, 0, 0), -EINVAL);
    r->len = V4V_MAX_RING_LEN + 16;
    EQ(hc(1, V4VOP_register_ring, r, NULL, 0, 0), -EINVAL);
    /* len larger than the mapped memory: the data area is not mapped */
    r->len = 3 * 4096;
    EQ(hc(1, V4VOP_register_ring, r, NULL, 0, 0), -EFAULT);
    EQ(v4vh_pages_held(), 0);
    *r = saved;

    /* not guest memory of the caller */
    unmapped = aligned_alloc(PG, 2 * PG);
    memcpy(unmapped, &saved, sizeof(saved));
    EQ(hc(1, V4VOP_register_ring, unmapped, NULL, 0, 0), -EFAULT);
    EQ(hc(2, V4VOP_register_ring, r, NULL, 0, 0), -EFAULT);
    EQ(v4vh_pages_held(), 0);

    /* allocation failure at each point */
    base = v4vh_allocations();
    for ( n = 1; n <= 3; n++ )
    {
        v4vh_fail_alloc(n);
        EQ(hc(1, V4VOP_register_ring, r, NULL, 0, 0), -ENOMEM);
        v4vh_fail_alloc(0);
        EQ(v4vh_pages_held(), 0);
        EQ(v4vh_mappings(), 0);
        EQ(v4vh_allocations(), base);
    }

    r->tx_ptr = 4096 + 16;       /* out of range: start from rx */
    r->rx_ptr = 33;              /* rounds to 48 */
    EQ(hc(1, V4VOP_register_ring, r, NULL, 0, 0), 0);
    EQ(r->id.addr.domain, 1);
    EQ(r->tx_ptr, 48);
    EQ(v4vh_pages_held(), 2);
    EQ(v4vh_mappings(), 1);
    EQ(hc(1, V4VOP_info, &info, NULL, 0, 0), 0);
    EQ(info.nr_rings, 1);

    /* same id, other len */
    r->len = 2048;
    EQ(hc(1, V4VOP_register_ring, r, NULL, 0, 0), -EEXIST);
    r->len = 4096;

    /* limit */
    EQ(hc(0, V4VOP_config, &cfg, NULL, 0, 0), 0);
    r2 = ring_new(1, 11, V4V_DOMID_ANY, 4096);
    EQ(hc(1, V4VOP_register_ring, r2, NULL, 0, 0), -ENOSPC);
    /* re-registration of an existing id is not a new ring */
    EQ(hc(1, V4VOP_register_ring, r, NULL, 0, 0), 0);

    /* move to new memory: keeps tx */
    EQ(send(2, 1, 10, "hello", 5), 5);
    EQ(r->tx_ptr, 48 + 32);
    r2->id.addr.port = 10;
    r2->tx_ptr = 0;
    EQ(hc(1, V4VOP_register_ring, r2, NULL, 0, 0), 0);
    EQ(r2->tx_ptr, 48 + 32);
    EQ(r2->id.addr.domain, 1);
    EQ(v4vh_pages_held(), 2);
    EQ(v4vh_mappings(), 1);
    EQ(v4vh_guest_unmap(1, r, ring_bytes(4096)), 0);
    EQ(v4vh_guest_unmap(1, r2, ring_bytes(4096)), -EBUSY);

    /* unregister */
    EQ(hc(1, V4VOP_unregister_ring, (char *)r2 + 8, NULL, 0, 0), -EINVAL);
    EQ(hc(1, V4VOP_unregister_ring, NULL, NULL, 0, 0), -EFAULT);
    r2->id.addr.port = 12;
    EQ(hc(1, V4VOP_unregister_ring, r2, NULL, 0, 0), -ENOENT);
    r2->id.addr.port = 10;
    EQ(hc(2, V4VOP_unregister_ring, r2, NULL, 0, 0), -ENOENT);
    EQ(hc(1, V4VOP_unregister_ring, r2, NULL, 0, 0), 0);
    EQ(v4vh_pages_held(), 0);
    EQ(v4vh_mappings(), 0);
    EQ(hc(1, V4VOP_unregister_ring, r2, NULL, 0, 0), -ENOENT);
    guest_mem_free(1, r2, ring_bytes(4096));
    free(r);
    free(unmapped);
    teardown();
}

static void test_big_ring(void)
{
    v4v_ring_t *r;
    static uint8_t buf[1 << 16];

    setup();
    r = ring_new(1, 1, V4V_DOMID_ANY, V4V_MAX_RING_LEN);
    EQ(hc(1, V4VOP_register_ring, r, NULL, 0, 0), 0);
    EQ(v4vh_pages_held(), 4097);
    memset(buf, 0x5a, sizeof(buf));
    EQ(send(2, 1, 1, buf, sizeof(buf)), sizeof(buf));
    EQ(hc(1, V4VOP_unregister_ring, r, NULL, 0, 0), 0);
    EQ(v4vh_pages_held(), 0);
    guest_mem_free(1, r, ring_bytes(V4V_MAX_RING_LEN));
    teardown();
}

static void test_sendv_errors(void)
{
    v4v_ring_t *r;
    v4v_send_addr_t sa = {
        .src = { .port = 5, .domain = DOMID_SELF },
        .dst = { .port = 10, .domain = 1 },
    }, s;
    v4v_iov_t iov[V4V_MAX_IOV + 1];
    v4vtables_rule_t rule = {
        .src = { .port = 0, .domain = 2 },
        .dst = { .port = 10, .domain = 1 },
        .accept = 0,
    };
    char msg[64] = "payload";
    v4v_ring_t before;
    uint8_t snapshot[256];
    unsigned int n;

    setup();
    r = ring_new(1, 10, V4V_DOMID_ANY, 256);
    EQ(hc(1, V4VOP_register_ring, r, NULL, 0, 0), 0);
    memset(iov, 0, sizeof(iov));
    iov[0].iov_base = (uintptr_t)msg;
    iov[0].iov_len = 7;

    EQ(hc(2, V4VOP_sendv, NULL, iov, 1, 0), -EFAULT);
    EQ(hc(2, V4VOP_sendv, BAD_PTR, iov, 1, 0), -EFAULT);
    s = sa; s.src.pad = 1;
    EQ(hc(2, V4VOP_sendv, &s, iov, 1, 0), -EINVAL);
    s = sa; s.dst.pad = 1;
    EQ(hc(2, V4VOP_sendv, &s, iov, 1, 0), -EINVAL);
    s = sa; s.dst.domain = V4V_DOMID_ANY;
    EQ(hc(2, V4VOP_sendv, &s, iov, 1, 0), -EINVAL);
    s = sa; s.dst.port = 0;
    EQ(hc(2, V4VOP_sendv, &s, iov, 1, 0), -EINVAL);
    s = sa; s.src.domain = 1;
    EQ(hc(2, V4VOP_sendv, &s, iov, 1, 0), -EPERM);
    s.src.domain = 2;
    EQ(hc(2, V4VOP_sendv, &s, iov, 1, 0), 7);
    EQ(hc(2, V4VOP_sendv, &sa, iov, V4V_MAX_IOV + 1, 0), -E2BIG);
    EQ(hc(2, V4VOP_sendv, &sa, NULL, 1, 0), -EFAULT);
    EQ(hc(2, V4VOP_sendv, &sa, BAD_PTR, 1, 0), -EFAULT);
    iov[1].pad = 1;
    EQ(hc(2, V4VOP_sendv, &sa, iov, 2, 0), -EINVAL);
    iov[1].pad = 0;
    iov[1].iov_base = (uintptr_t)msg;
    iov[1].iov_len = V4V_MAX_MESSAGE_SIZE - 6;
    EQ(hc(2, V4VOP_sendv, &sa, iov, 2, 0), -EMSGSIZE);
    iov[1].iov_len = 0xffffffffU;
    iov[2].iov_len = 0xffffffffU;
    EQ(hc(2, V4VOP_sendv, &sa, iov, 3, 0), -EMSGSIZE);
    memset(iov + 1, 0, 2 * sizeof(iov[0]));

    /* ACL */
    EQ(hc(0, V4VOP_tables_add, &rule, NULL, 0, 0), 0);
    EQ(hc(2, V4VOP_sendv, &sa, iov, 1, 0), -EACCES);
    EQ(hc(0, V4VOP_tables_del, NULL, NULL, V4VTABLES_DEL_ALL, 0), 0);

    s = sa; s.dst.domain = 9;
    EQ(hc(2, V4VOP_sendv, &s, iov, 1, 0), -ECONNREFUSED);
    s = sa; s.dst.domain = DOMID_IO;
    EQ(hc(2, V4VOP_sendv, &s, iov, 1, 0), -ECONNREFUSED);
    s = sa; s.dst.port = 11;
    EQ(hc(2, V4VOP_sendv, &s, iov, 1, 0), -ECONNREFUSED);
    iov[0].iov_len = 256 - 32 + 1;
    EQ(hc(2, V4VOP_sendv, &sa, iov, 1, 0), -EMSGSIZE);

    /* payload unreadable: ring bytes unchanged */
    iov[0].iov_len = 7;
    iov[1].iov_base = (uintptr_t)BAD_PTR;
    iov[1].iov_len = 3;
    before = *r;
    memcpy(snapshot, r->ring, 256);
    EQ(hc(2, V4VOP_sendv, &sa, iov, 2, 0), -EFAULT);
    CHECK(!memcmp(&before, r, sizeof(before)));
    CHECK(!memcmp(snapshot, r->ring, 256));
    /* a zero-length iov is never read */
    iov[1].iov_len = 0;
    EQ(hc(2, V4VOP_sendv, &sa, iov, 2, 0), 7);

    /* allocation failure */
    v4vh_fail_alloc(1);
    EQ(hc(2, V4VOP_sendv, &sa, iov, 1, 0), -ENOMEM);
    v4vh_fail_alloc(0);

    /* zero iovs: a bare header */
    EQ(hc(2, V4VOP_sendv, &sa, NULL, 0, 0), 0);

    /* fill up: -EAGAIN and queued; allocation failure when queueing */
    iov[0].iov_len = 64;
    for ( n = 0; n < 10 && hc(2, V4VOP_sendv, &sa, iov, 1, 0) == 64; n++ )
        ;
    /* dom2 is queued by the loop's last send; dom0 is new */
    v4vh_fail_alloc(2);
    EQ(hc(0, V4VOP_sendv, &sa, iov, 1, 0), -ENOMEM);
    v4vh_fail_alloc(0);
    EQ(hc(0, V4VOP_sendv, &sa, iov, 1, 0), -EAGAIN);
    EQ(hc(2, V4VOP_sendv, &sa, iov, 1, 0), -EAGAIN);

    EQ(hc(1, V4VOP_unregister_ring, r, NULL, 0, 0), 0);
    guest_mem_free(1, r, ring_bytes(256));
    teardown();
}

static void test_send_receive_wrap(void)
{
    v4v_ring_t *r;
    v4v_ring_message_header_t mh;
    char buf[200], out[200];
    v4v_iov_t iov[3];
    v4v_send_addr_t sa = {
        .src = { .port = 0x1234, .domain = 2 },
        .dst = { .port = 10, .domain = 1 },
    };
    v4v_info_t info;
    unsigned int i;
    long got;

    setup();
    r = ring_new(1, 10, 2, 128);
    EQ(hc(1, V4VOP_register_ring, r, NULL, 0, 0), 0);
    EQ(hc(1, V4VOP_info, &info, NULL, 0, 0), 0);
    v4vh_event_test_and_clear(1);

    for ( i = 0; i < sizeof(buf); i++ )
        buf[i] = (char)i;

    /* three iovs; many rounds so that messages wrap */
    for ( i = 0; i < 40; i++ )
    {
        uint32_t len = (i * 7) % 90;

        iov[0] = (v4v_iov_t){ .iov_base = (uintptr_t)buf, .iov_len = len / 3 };
        iov[1] = (v4v_iov_t){ .iov_base = (uintptr_t)(buf + len / 3),
                              .iov_len = 0 };
        iov[2] = (v4v_iov_t){ .iov_base = (uintptr_t)(buf + len / 3),
                              .iov_len = len - len / 3 };
        EQ(hc(2, V4VOP_sendv, &sa, iov, 3, 0xabcd), len);
        EQ(v4vh_event_test_and_clear(1), 1);
        EQ(r->tx_ptr % 16, 0);
        memset(out, 0, sizeof(out));
        got = ring_recv(r, out, sizeof(out), &mh);
        EQ(got, len);
        CHECK(!memcmp(out, buf, len));
        EQ(mh.message_type, 0xabcd);
        EQ(mh.source.domain, 2);
        EQ(mh.source.port, 0x1234);
        EQ(mh.source.pad, 0);
    }

    /* the ring is for partner 2 only */
    EQ(send(0, 1, 10, buf, 4), -ECONNREFUSED);
    /* DOMID_SELF destination: dom1 to itself, no ring for partner 1 */
    EQ(send(1, DOMID_SELF, 10, buf, 4), -ECONNREFUSED);

    /* garbage rx_ptr is sanitised, never trusted */
    r->rx_ptr = 0xfffffff9U;
    got = send(2, 1, 10, buf, 16);
    CHECK(got == 16 || got == -EAGAIN);

    EQ(hc(1, V4VOP_unregister_ring, r, NULL, 0, 0), 0);
    guest_mem_free(1, r, ring_bytes(128));
    teardown();
}

/*
 * Live migration and save: in log-dirty mode, the pages a send writes (the
 * header's tx_ptr, the message header and payload, wrapping) are marked
 * dirty, and nothing else; a domain shutting down (suspended) takes no
 * message, and takes them again when the suspend is cancelled.
 */
static void test_log_dirty_and_suspend(void)
{
    static char buf[8192], out[8192];
    v4v_ring_t *r;
    long marks[3];
    unsigned int i;

#define MARKS(a, b, c) do {                                             \
        for ( i = 0; i < 3; i++ )                                       \
            marks[i] = v4vh_dirty_marks(1, r, i);                       \
        EQ(marks[0], (a));                                              \
        EQ(marks[1], (b));                                              \
        EQ(marks[2], (c));                                              \
    } while ( 0 )

    setup();
    /* 64 header bytes + 8192 data bytes: three pages */
    r = ring_new(1, 10, V4V_DOMID_ANY, 8192);
    EQ(hc(1, V4VOP_register_ring, r, NULL, 0, 0), 0);

    /* not in log-dirty mode: nothing is marked */
    EQ(send(2, 1, 10, buf, 32), 32);
    MARKS(0, 0, 0);
    EQ(ring_recv(r, out, sizeof(out), NULL), 32);

    EQ(v4vh_set_log_dirty(1, 1), 0);
    /* data bytes [48, 4160): header page, and page 1 from offset 4096 */
    EQ(send(2, 1, 10, buf, 4096), 4096);
    MARKS(1, 1, 0);
    EQ(ring_recv(r, out, sizeof(out), NULL), 4096);
    /* [4160, 8176): pages 1 and 2, and the header page for tx_ptr */
    EQ(send(2, 1, 10, buf, 4000), 4000);
    MARKS(2, 2, 1);
    EQ(ring_recv(r, out, sizeof(out), NULL), 4000);
    /* the message header in the last slot (page 2), the payload wraps to
     * the start of the data area (page 0) */
    EQ(r->tx_ptr, 8176);
    EQ(send(2, 1, 10, buf, 100), 100);
    MARKS(3, 2, 2);
    EQ(ring_recv(r, out, sizeof(out), NULL), 100);
    /* data [112, 8128): pages 0 and 1; then a send that does not fit
     * marks nothing */
    EQ(send(2, 1, 10, buf, 8000), 8000);
    MARKS(4, 3, 2);
    EQ(send(2, 1, 10, buf, 8000), -EAGAIN);
    MARKS(4, 3, 2);
    EQ(ring_recv(r, out, sizeof(out), NULL), 8000);

    /* suspended: refused as if there were no ring, nothing written */
    EQ(v4vh_set_shutting_down(1, 1), 0);
    i = r->tx_ptr;
    EQ(send(2, 1, 10, buf, 16), -ECONNREFUSED);
    EQ(send(1, 1, 10, buf, 16), -ECONNREFUSED);
    EQ(r->tx_ptr, i);
    MARKS(4, 3, 2);
    /* the suspend cancelled: messages are taken again */
    EQ(v4vh_set_shutting_down(1, 0), 0);
    EQ(send(2, 1, 10, buf, 16), 16);
    EQ(ring_recv(r, out, sizeof(out), NULL), 16);
    /* data [8128, 8160): page 2 */
    MARKS(5, 3, 3);

    EQ(v4vh_set_log_dirty(1, 0), 0);
    EQ(send(2, 1, 10, buf, 16), 16);
    MARKS(5, 3, 3);
#undef MARKS

    EQ(hc(1, V4VOP_unregister_ring, r, NULL, 0, 0), 0);
    guest_mem_free(1, r, ring_bytes(8192));
    teardown();
}

static void test_waiters_notify(void)
{
    v4v_ring_t *r;
    v4v_ring_data_t *rd = ring_data_new(2);
    v4v_info_t info;
    char buf[64] = { 0 }, out[64];
    unsigned int d;

    setup();
    for ( d = 3; d < 3 + V4V_MAX_WAITERS + 1; d++ )
        EQ(v4vh_domain_create(d), 0);
    EQ(hc(1, V4VOP_info, &info, NULL, 0, 0), 0);
    EQ(hc(2, V4VOP_info, &info, NULL, 0, 0), 0);

    r = ring_new(1, 10, V4V_DOMID_ANY, 96);   /* payload space 64 */
    EQ(hc(1, V4VOP_register_ring, r, NULL, 0, 0), 0);

    /* notify entry pads and limits */
    rd->data[0].ring.domain = 1;
    rd->data[0].ring.port = 10;
    rd->data[0].space_required = 16;
    rd->data[1].ring.domain = 1;
    rd->data[1].ring.port = 99;
    EQ(hc(2, V4VOP_notify, rd, NULL, 0, 0), 0);
    EQ(rd->data[0].flags, V4V_RING_DATA_F_EXISTS | V4V_RING_DATA_F_EMPTY |
                          V4V_RING_DATA_F_SUFFICIENT);
    EQ(rd->data[0].max_message_size, 64);
    EQ(rd->data[1].flags, 0);
    EQ(rd->data[1].max_message_size, 0);

    rd->magic++;
    EQ(hc(2, V4VOP_notify, rd, NULL, 0, 0), -EINVAL);
    rd->magic--;
    rd->pad = 1;
    EQ(hc(2, V4VOP_notify, rd, NULL, 0, 0), -EINVAL);
    rd->pad = 0;
    rd->data[1].pad = 1;
    EQ(hc(2, V4VOP_notify, rd, NULL, 0, 0), -EINVAL);
    rd->data[1].pad = 0;
    rd->data[1].ring.pad = 1;
    EQ(hc(2, V4VOP_notify, rd, NULL, 0, 0), -EINVAL);
    rd->data[1].ring.pad = 0;
    rd->nent = V4V_MAX_NOTIFY + 1;
    EQ(hc(2, V4VOP_notify, rd, NULL, 0, 0), -E2BIG);
    rd->nent = 2;
    EQ(hc(2, V4VOP_notify, BAD_PTR, NULL, 0, 0), -EFAULT);
    v4vh_fail_alloc(1);
    EQ(hc(2, V4VOP_notify, rd, NULL, 0, 0), -ENOMEM);
    v4vh_fail_alloc(0);
    EQ(hc(2, V4VOP_notify, NULL, NULL, 0, 0), 0);

    /* fill: 48 bytes of payload leave 96-64 = 32 free: payload space 0 */
    EQ(send(2, 1, 10, buf, 48), 48);
    EQ(send(2, 1, 10, buf, 1), -EAGAIN);
    EQ(send(2, 1, 10, buf, 16), -EAGAIN);   /* raises nothing: max(1,16) */
    for ( d = 3; d < 3 + V4V_MAX_WAITERS - 1; d++ )
        EQ(send(d, 1, 10, buf, 1), -EAGAIN);
    EQ(send(d, 1, 10, buf, 1), -EBUSY);
    EQ(send(2, 1, 10, buf, 8), -EAGAIN);    /* already queued */

    /* notify from a full queue: PENDING only for the queued */
    rd->nent = 1;
    rd->data[0].space_required = 8;
    EQ(hc(d, V4VOP_notify, rd, NULL, 0, 0), 0);
    EQ(rd->data[0].flags, V4V_RING_DATA_F_EXISTS);
    EQ(hc(2, V4VOP_notify, rd, NULL, 0, 0), 0);
    EQ(rd->data[0].flags, V4V_RING_DATA_F_EXISTS | V4V_RING_DATA_F_PENDING);
    rd->data[0].space_required = 65;         /* could never fit */
    EQ(hc(2, V4VOP_notify, rd, NULL, 0, 0), 0);
    EQ(rd->data[0].flags, V4V_RING_DATA_F_EXISTS);

    /* owner consumes and notifies: waiters of <= 64 woken */
    v4vh_event_test_and_clear(2);
    EQ(ring_recv(r, out, sizeof(out), NULL), 48);
    EQ(hc(1, V4VOP_notify, NULL, NULL, 0, 0), 0);
    EQ(v4vh_event_test_and_clear(2), 1);
    /* queue is empty again: d can queue */
    EQ(send(2, 1, 10, buf, 64), 64);
    EQ(send(d, 1, 10, buf, 1), -EAGAIN);

    /* unregistering signals waiters */
    v4vh_event_test_and_clear(d);
    EQ(hc(d, V4VOP_info, &info, NULL, 0, 0), 0);
    EQ(send(d, 1, 10, buf, 1), -EAGAIN);
    EQ(hc(1, V4VOP_unregister_ring, r, NULL, 0, 0), 0);
    EQ(v4vh_event_test_and_clear(d), 1);
    rd->data[0].space_required = 1;
    EQ(hc(2, V4VOP_notify, rd, NULL, 0, 0), 0);
    EQ(rd->data[0].flags, 0);

    guest_mem_free(1, r, ring_bytes(96));
    free(rd);
    teardown();
}

static void test_one_slot_free(void)
{
    /* With exactly one 16-byte slot free nothing fits, not even 0 bytes. */
    v4v_ring_t *r;
    v4v_ring_data_t *rd = ring_data_new(1);
    v4v_info_t info;
    char buf[16] = { 0 }, out[16];

    setup();
    EQ(hc(2, V4VOP_info, &info, NULL, 0, 0), 0);
    r = ring_new(1, 10, V4V_DOMID_ANY, 48);
    EQ(hc(1, V4VOP_register_ring, r, NULL, 0, 0), 0);
    EQ(send(2, 1, 10, buf, 17), -EMSGSIZE);
    EQ(send(2, 1, 10, buf, 16), 16);
    EQ(r->tx_ptr, 32);
    EQ(send(2, 1, 10, buf, 0), -EAGAIN);
    rd->data[0].ring.domain = 1;
    rd->data[0].ring.port = 10;
    rd->data[0].space_required = 0;
    EQ(hc(2, V4VOP_notify, rd, NULL, 0, 0), 0);
    EQ(rd->data[0].flags, V4V_RING_DATA_F_EXISTS | V4V_RING_DATA_F_PENDING);
    EQ(rd->data[0].max_message_size, 16);
    /* the owner's notify wakes nobody while nothing fits */
    v4vh_event_test_and_clear(2);
    EQ(hc(1, V4VOP_notify, NULL, NULL, 0, 0), 0);
    EQ(v4vh_event_test_and_clear(2), 0);
    EQ(ring_recv(r, out, sizeof(out), NULL), 16);
    EQ(hc(1, V4VOP_notify, NULL, NULL, 0, 0), 0);
    EQ(v4vh_event_test_and_clear(2), 1);
    rd->data[0].space_required = 16;
    EQ(hc(2, V4VOP_notify, rd, NULL, 0, 0), 0);
    EQ(rd->data[0].flags, V4V_RING_DATA_F_EXISTS | V4V_RING_DATA_F_EMPTY |
                          V4V_RING_DATA_F_SUFFICIENT);
    EQ(hc(1, V4VOP_unregister_ring, r, NULL, 0, 0), 0);
    guest_mem_free(1, r, ring_bytes(48));
    free(rd);
    teardown();
}

static void test_tables(void)
{
    v4vtables_rule_t rule = {
        .src = { .port = 1, .domain = 1 },
        .dst = { .port = 2, .domain = 2 },
        .accept = 1,
    }, bad;
    struct {
        v4vtables_list_t l;
        v4vtables_rule_t rules[8];
    } list;
    unsigned int i;

    setup();
    EQ(hc(1, V4VOP_tables_add, &rule, NULL, 0, 0), -EPERM);
    EQ(hc(1, V4VOP_tables_del, NULL, NULL, V4VTABLES_DEL_ALL, 0), -EPERM);
    EQ(hc(1, V4VOP_tables_list, &list, NULL, 0, 0), -EPERM);
    EQ(hc(1, V4VOP_config, BAD_PTR, NULL, 0, 0), -EPERM);

    EQ(hc(0, V4VOP_tables_add, NULL, NULL, 0, 0), -EFAULT);
    bad = rule; bad.accept = 2;
    EQ(hc(0, V4VOP_tables_add, &bad, NULL, 0, 0), -EINVAL);
    bad = rule; bad.src.pad = 1;
    EQ(hc(0, V4VOP_tables_add, &bad, NULL, 0, 0), -EINVAL);
    bad = rule; bad.dst.pad = 1;
    EQ(hc(0, V4VOP_tables_del, &bad, NULL, 0, 0), -EINVAL);
    EQ(hc(0, V4VOP_tables_del, &rule, NULL, 1, 0), -EINVAL);
    EQ(hc(0, V4VOP_tables_del, BAD_PTR, NULL, 0, 0), -EFAULT);
    EQ(hc(0, V4VOP_tables_del, NULL, NULL, 0, 0), -EINVAL);
    EQ(hc(0, V4VOP_tables_del, NULL, NULL, 1, 0), -ENOENT);
    EQ(hc(0, V4VOP_tables_del, &rule, NULL, 0, 0), -ENOENT);

    /* positions: append 1,2; insert 3 at 1; 4 past the end */
    for ( i = 1; i <= 2; i++ )
    {
        rule.src.port = i;
        EQ(hc(0, V4VOP_tables_add, &rule, NULL, 0, 0), 0);
    }
    rule.src.port = 3;
    EQ(hc(0, V4VOP_tables_add, &rule, NULL, 1, 0), 0);
    rule.src.port = 4;
    EQ(hc(0, V4VOP_tables_add, &rule, NULL, 100, 0), 0);
    memset(&list, 0, sizeof(list));
    list.l.nb_rules = 8;
    EQ(hc(0, V4VOP_tables_list, &list, NULL, 0, 0), 4);
    EQ(list.l.nb_rules, 4);
    EQ(list.rules[0].src.port, 3);
    EQ(list.rules[1].src.port, 1);
    EQ(list.rules[2].src.port, 2);
    EQ(list.rules[3].src.port, 4);
    list.l.start_rule = 3;
    list.l.nb_rules = 8;
    EQ(hc(0, V4VOP_tables_list, &list, NULL, 0, 0), 4);
    EQ(list.l.nb_rules, 1);
    list.l.start_rule = 9;
    list.l.nb_rules = 8;
    EQ(hc(0, V4VOP_tables_list, &list, NULL, 0, 0), 4);
    EQ(list.l.nb_rules, 0);
    list.l.nb_rules = V4V_MAX_RULES + 1;
    EQ(hc(0, V4VOP_tables_list, &list, NULL, 0, 0), -EINVAL);
    EQ(hc(0, V4VOP_tables_list, NULL, NULL, 0, 0), -EFAULT);
    list.l.start_rule = 0;
    list.l.nb_rules = 2;
    v4vh_fail_alloc(1);
    EQ(hc(0, V4VOP_tables_list, &list, NULL, 0, 0), -ENOMEM);
    v4vh_fail_alloc(0);

    rule.src.port = 1;
    EQ(hc(0, V4VOP_tables_del, &rule, NULL, 0, 0), 0);
    EQ(hc(0, V4VOP_tables_del, NULL, NULL, 4, 0), -ENOENT);
    EQ(hc(0, V4VOP_tables_del, NULL, NULL, 1, 0), 0);   /* port 3 */
    list.l.nb_rules = 8;
    EQ(hc(0, V4VOP_tables_list, &list, NULL, 0, 0), 2);
    EQ(list.rules[0].src.port, 2);
    EQ(list.rules[1].src.port, 4);

    /* full table */
    EQ(hc(0, V4VOP_tables_del, NULL, NULL, V4VTABLES_DEL_ALL, 0), 0);
    for ( i = 0; i < V4V_MAX_RULES; i++ )
        if ( hc(0, V4VOP_tables_add, &rule, NULL, 0, 0) )
            break;
    EQ(i, V4V_MAX_RULES);
    EQ(hc(0, V4VOP_tables_add, &rule, NULL, 0, 0), -ENOSPC);
    EQ(hc(0, V4VOP_tables_del, NULL, NULL, V4VTABLES_DEL_ALL, 0), 0);
    EQ(hc(0, V4VOP_tables_del, NULL, NULL, V4VTABLES_DEL_ALL, 0), 0);
    teardown();
}

static void test_config(void)
{
    v4v_config_t cfg = { .domain = 1, .max_rings = 0 };
    v4v_info_t info;

    setup();
    EQ(hc(1, V4VOP_config, &cfg, NULL, 0, 0), -EPERM);
    EQ(hc(0, V4VOP_config, NULL, NULL, 0, 0), -EFAULT);
    cfg.pad = 1;
    EQ(hc(0, V4VOP_config, &cfg, NULL, 0, 0), -EINVAL);
    cfg.pad = 0;
    cfg.max_rings = V4V_MAX_RINGS_LIMIT + 1;
    EQ(hc(0, V4VOP_config, &cfg, NULL, 0, 0), -EINVAL);
    cfg.max_rings = V4V_MAX_RINGS_LIMIT;
    cfg.domain = 50;
    EQ(hc(0, V4VOP_config, &cfg, NULL, 0, 0), -ESRCH);
    cfg.domain = 1;
    EQ(hc(0, V4VOP_config, &cfg, NULL, 0, 0), 0);
    EQ(hc(1, V4VOP_info, &info, NULL, 0, 0), 0);
    EQ(info.max_rings, V4V_MAX_RINGS_LIMIT);
    teardown();
}

static void test_destroy(void)
{
    v4v_ring_t *r1, *r0p, *r0any;
    v4v_info_t info;
    v4v_ring_data_t *rd = ring_data_new(1);
    char buf[64] = { 0 };

    setup();
    EQ(hc(0, V4VOP_info, &info, NULL, 0, 0), 0);
    EQ(hc(2, V4VOP_info, &info, NULL, 0, 0), 0);
    r1 = ring_new(1, 10, V4V_DOMID_ANY, 64);      /* payload space 32 */
    r0p = ring_new(0, 20, 1, 4096);               /* only dom1 may send */
    r0any = ring_new(0, 21, V4V_DOMID_ANY, 64);
    EQ(hc(1, V4VOP_register_ring, r1, NULL, 0, 0), 0);
    EQ(hc(0, V4VOP_register_ring, r0p, NULL, 0, 0), 0);
    EQ(hc(0, V4VOP_register_ring, r0any, NULL, 0, 0), 0);
    EQ(v4vh_pages_held(), 1 + 2 + 1);

    /* dom2 waits on dom1's ring, dom1 waits on dom0's */
    EQ(send(2, 1, 10, buf, 32), 32);
    EQ(send(2, 1, 10, buf, 32), -EAGAIN);
    EQ(send(1, 0, 21, buf, 32), 32);
    EQ(send(1, 0, 21, buf, 1), -EAGAIN);

    v4vh_event_test_and_clear(0);
    v4vh_event_test_and_clear(2);
    EQ(v4vh_domain_destroy(1), 0);
    EQ(v4vh_event_test_and_clear(2), 1);     /* its ring went away */
    EQ(v4vh_event_test_and_clear(0), 1);     /* partner ring dropped */
    EQ(v4vh_pages_held(), 1);                /* r0any only */
    EQ(v4vh_guest_unmap(0, r0p, ring_bytes(4096)), 0);
    free(r0p);
    free(r1);   /* its region went with the domain */

    /* a new dom1 does not inherit: no ring for it at port 20 */
    EQ(v4vh_domain_create(1), 0);
    EQ(send(1, 0, 20, buf, 1), -ECONNREFUSED);
    rd->data[0].ring.domain = 0;
    rd->data[0].ring.port = 21;
    rd->data[0].space_required = 1;
    EQ(hc(1, V4VOP_notify, rd, NULL, 0, 0), 0);
    EQ(rd->data[0].flags, V4V_RING_DATA_F_EXISTS | V4V_RING_DATA_F_PENDING);
    EQ(hc(0, V4VOP_info, &info, NULL, 0, 0), 0);
    EQ(info.nr_rings, 1);

    v4vh_debug_dump();
    EQ(v4vh_domain_destroy(0), 0);
    EQ(v4vh_pages_held(), 0);
    EQ(v4vh_domain_destroy(0), -ESRCH);
    free(r0any);
    free(rd);
    teardown();
}

/*
 * Soft reset (kexec in the guest): the domain keeps its id and its memory,
 * but V4V forgets it as if it had died (rings, waits, partner rings of
 * others, event channel); it can start again at once.
 */
static void test_soft_reset(void)
{
    v4v_ring_t *r1, *r0p, *r0any;
    v4v_info_t info;
    char buf[64] = { 0 };

    setup();
    EQ(hc(0, V4VOP_info, &info, NULL, 0, 0), 0);
    EQ(hc(2, V4VOP_info, &info, NULL, 0, 0), 0);
    EQ(hc(1, V4VOP_info, &info, NULL, 0, 0), 0);
    r1 = ring_new(1, 10, V4V_DOMID_ANY, 64);
    r0p = ring_new(0, 20, 1, 4096);
    r0any = ring_new(0, 21, V4V_DOMID_ANY, 64);
    EQ(hc(1, V4VOP_register_ring, r1, NULL, 0, 0), 0);
    EQ(hc(0, V4VOP_register_ring, r0p, NULL, 0, 0), 0);
    EQ(hc(0, V4VOP_register_ring, r0any, NULL, 0, 0), 0);
    EQ(send(2, 1, 10, buf, 32), 32);
    EQ(send(2, 1, 10, buf, 32), -EAGAIN);        /* dom2 waits on dom1 */
    EQ(send(1, 0, 21, buf, 32), 32);
    EQ(send(1, 0, 21, buf, 1), -EAGAIN);         /* dom1 waits on dom0 */
    EQ(v4vh_waiter_count(), 2);
    v4vh_event_test_and_clear(0);
    v4vh_event_test_and_clear(2);

    EQ(v4vh_domain_soft_reset(1), 0);
    EQ(v4vh_event_test_and_clear(2), 1);         /* its ring went away */
    EQ(v4vh_event_test_and_clear(0), 1);         /* partner ring dropped */
    EQ(v4vh_waiter_count(), 0);
    EQ(v4vh_pages_held(), 1);                    /* r0any only */
    EQ(send(1, 0, 20, buf, 1), -ECONNREFUSED);
    EQ(send(2, 1, 10, buf, 1), -ECONNREFUSED);

    /* the same domain starts again: a new event channel, its ring again */
    EQ(hc(1, V4VOP_info, &info, NULL, 0, 0), 0);
    EQ(info.domid, 1);
    EQ(info.nr_rings, 0);
    CHECK(info.evtchn != 0);
    EQ(hc(1, V4VOP_register_ring, r1, NULL, 0, 0), 0);
    /* registered again in the same memory, the ring still holds what it
     * held (tx from the header): the unread message, then room again */
    EQ(r1->tx_ptr, 48);
    EQ(send(2, 1, 10, buf, 8), -EAGAIN);
    EQ(ring_recv(r1, buf, sizeof(buf), NULL), 32);
    EQ(send(2, 1, 10, buf, 8), 8);
    EQ(v4vh_event_test_and_clear(1), 1);

    EQ(v4vh_domain_destroy(1), 0);
    EQ(v4vh_domain_destroy(0), 0);
    EQ(v4vh_pages_held(), 0);
    free(r1);
    free(r0p);
    free(r0any);
    teardown();
}

static void test_alloc_failures_everywhere(void)
{
    /*
     * Fail the n-th allocation of a mixed sequence for every n: nothing may
     * leak and no lock may stay held (the harness aborts on that).
     */
    unsigned int n;

    for ( n = 1; n <= 12; n++ )
    {
        v4v_ring_t *r;
        v4v_ring_data_t *rd = ring_data_new(1);
        char buf[32] = "x";
        size_t base;

        setup();
        r = ring_new(1, 10, V4V_DOMID_ANY, 64);
        base = v4vh_allocations();
        v4vh_fail_alloc(n);
        hc(1, V4VOP_register_ring, r, NULL, 0, 0);
        send(2, 1, 10, buf, 32);
        send(2, 1, 10, buf, 32);
        rd->data[0].ring.domain = 1;
        rd->data[0].ring.port = 10;
        rd->data[0].space_required = 32;
        hc(0, V4VOP_notify, rd, NULL, 0, 0);
        hc(1, V4VOP_unregister_ring, r, NULL, 0, 0);
        v4vh_fail_alloc(0);
        EQ(v4vh_pages_held(), 0);
        EQ(v4vh_allocations(), base);
        free(rd);
        teardown();
        free(r);
    }
}

/* The hook last called: its V4VH_XSM_* bit, subject and target. */
static void check_last_hook(unsigned int hook, int subject, int target,
                            int line)
{
    int sub, tgt;
    unsigned int h = v4vh_xsm_last(&sub, &tgt);

    if ( h == hook && sub == subject && tgt == target )
        passed++;
    else
    {
        failed++;
        fprintf(stderr, "FAIL %s:%d: last XSM hook %#x d%d -> %d, expected "
                "%#x d%d -> %d\n", __FILE__, line, h, sub, tgt, hook,
                subject, target);
    }
}
#define LAST_HOOK(h, s, t) check_last_hook(h, s, t, __LINE__)

static void test_inspect_counts(void)
{
    v4v_ring_t *r1, *r2;
    char buf[64] = { 0 };

    setup();
    EQ(v4vh_ring_count(), 0);
    EQ(v4vh_waiter_count(), 0);
    r1 = ring_new(1, 10, V4V_DOMID_ANY, 64);      /* payload space 32 */
    r2 = ring_new(2, 10, 1, 64);
    EQ(hc(1, V4VOP_register_ring, r1, NULL, 0, 0), 0);
    EQ(hc(1, V4VOP_register_ring, r1, NULL, 0, 0), 0);   /* moved: still 1 */
    EQ(v4vh_ring_count(), 1);
    EQ(hc(2, V4VOP_register_ring, r2, NULL, 0, 0), 0);
    EQ(v4vh_ring_count(), 2);
    EQ(send(2, 1, 10, buf, 32), 32);
    EQ(send(2, 1, 10, buf, 1), -EAGAIN);
    EQ(send(2, 1, 10, buf, 8), -EAGAIN);           /* same waiter, raised */
    EQ(send(0, 1, 10, buf, 1), -EAGAIN);
    EQ(v4vh_waiter_count(), 2);
    EQ(v4vh_locks_held(), 0);
    /* destroying 2 drops its wait on 1's ring and its own ring */
    EQ(v4vh_domain_destroy(2), 0);
    free(r2);
    EQ(v4vh_ring_count(), 1);
    EQ(v4vh_waiter_count(), 1);
    /* destroying 1 drops its ring and the remaining waiter with it */
    EQ(v4vh_domain_destroy(1), 0);
    free(r1);
    EQ(v4vh_ring_count(), 0);
    EQ(v4vh_waiter_count(), 0);
    teardown();
}

/*
 * Which XSM hook each op calls, with which domains, and where in the order
 * of the checks (docs/abi.md) the dummy module's answers are given.
 */
static void test_xsm_hooks_called(void)
{
    v4v_ring_t *r;
    v4v_ring_data_t *rd = ring_data_new(1);
    v4vtables_rule_t rule = { .accept = 1 };
    v4v_config_t cfg = { .domain = 1, .max_rings = 8 };
    v4v_info_t info;
    char buf[16] = { 0 };
    unsigned long n;

    setup();
    /* Domain creation asks once per domain. */
    EQ(v4vh_xsm_calls(V4VH_XSM_ENABLE), 3);
    LAST_HOOK(V4VH_XSM_ENABLE, 2, -1);

    /* Reserved arguments and disabled V4V come before the hook. */
    n = v4vh_xsm_calls(V4VH_XSM_ALL);
    EQ(hc(1, V4VOP_info, &info, buf, 0, 0), -EINVAL);
    EQ(hc(1, 3, &info, NULL, 0, 0), -EINVAL);
    v4vh_set_enabled(0);
    EQ(hc(1, V4VOP_info, &info, NULL, 0, 0), -ENOSYS);
    v4vh_set_enabled(1);
    EQ(v4vh_xsm_calls(V4VH_XSM_ALL), n);
    EQ(hc(1, V4VOP_info, &info, NULL, 0, 0), 0);
    EQ(v4vh_xsm_calls(V4VH_XSM_ALL), n + 1);
    LAST_HOOK(V4VH_XSM_ENABLE, 1, -1);

    /* register: any, a live partner, a partner id that is no domain */
    r = ring_new(1, 10, V4V_DOMID_ANY, 64);
    r->len = 40;                                   /* -EINVAL first */
    n = v4vh_xsm_calls(V4VH_XSM_REGISTER_ANY | V4VH_XSM_REGISTER_SINGLE);
    EQ(hc(1, V4VOP_register_ring, r, NULL, 0, 0), -EINVAL);
    EQ(v4vh_xsm_calls(V4VH_XSM_REGISTER_ANY | V4VH_XSM_REGISTER_SINGLE), n);
    r->len = 64;
    EQ(hc(1, V4VOP_register_ring, r, NULL, 0, 0), 0);
    LAST_HOOK(V4VH_XSM_REGISTER_ANY, 1, -1);
    r->id.partner = 2;
    EQ(hc(1, V4VOP_register_ring, r, NULL, 0, 0), 0);
    LAST_HOOK(V4VH_XSM_REGISTER_SINGLE, 1, 2);
    EQ(hc(1, V4VOP_unregister_ring, r, NULL, 0, 0), 0);
    LAST_HOOK(V4VH_XSM_ENABLE, 1, -1);
    r->id.partner = 1;                             /* itself */
    EQ(hc(1, V4VOP_register_ring, r, NULL, 0, 0), 0);
    LAST_HOOK(V4VH_XSM_REGISTER_SINGLE, 1, 1);
    EQ(hc(1, V4VOP_unregister_ring, r, NULL, 0, 0), 0);
    r->id.partner = 50;
    EQ(hc(1, V4VOP_register_ring, r, NULL, 0, 0), 0);
    LAST_HOOK(V4VH_XSM_REGISTER_ANY, 1, -1);
    EQ(hc(1, V4VOP_unregister_ring, r, NULL, 0, 0), 0);
    r->id.partner = V4V_DOMID_ANY;

    /* send: after the ACL and the destination's existence */
    EQ(send(2, 1, 10, buf, 4), 4);
    LAST_HOOK(V4VH_XSM_SEND, 2, 1);
    EQ(send(2, DOMID_SELF, 10, buf, 4), -ECONNREFUSED);
    LAST_HOOK(V4VH_XSM_SEND, 2, 2);
    n = v4vh_xsm_calls(V4VH_XSM_SEND);
    EQ(send(2, 60, 10, buf, 4), -ECONNREFUSED);
    rule.src.domain = 2;
    rule.dst.domain = 1;
    rule.accept = 0;
    EQ(hc(0, V4VOP_tables_add, &rule, NULL, 0, 0), 0);
    LAST_HOOK(V4VH_XSM_ADMIN, 0, -1);
    EQ(send(2, 1, 10, buf, 4), -EACCES);
    EQ(v4vh_xsm_calls(V4VH_XSM_SEND), n);
    EQ(hc(0, V4VOP_tables_del, NULL, NULL, V4VTABLES_DEL_ALL, 0), 0);

    /* notify asks send(caller, owner) per entry whose domain exists */
    rd->data[0].ring.domain = 1;
    rd->data[0].ring.port = 10;
    EQ(hc(2, V4VOP_notify, rd, NULL, 0, 0), 0);
    LAST_HOOK(V4VH_XSM_SEND, 2, 1);
    rd->data[0].ring.domain = 60;
    n = v4vh_xsm_calls(V4VH_XSM_SEND);
    EQ(hc(2, V4VOP_notify, rd, NULL, 0, 0), 0);
    EQ(v4vh_xsm_calls(V4VH_XSM_SEND), n);

    /* admin: config and the tables, non-dom0 refused by the dummy */
    EQ(hc(0, V4VOP_config, &cfg, NULL, 0, 0), 0);
    LAST_HOOK(V4VH_XSM_ADMIN, 0, -1);
    EQ(hc(1, V4VOP_config, BAD_PTR, NULL, 0, 0), -EPERM);
    LAST_HOOK(V4VH_XSM_ADMIN, 1, -1);
    EQ(hc(2, V4VOP_tables_list, BAD_PTR, NULL, 0, 0), -EPERM);
    LAST_HOOK(V4VH_XSM_ADMIN, 2, -1);

    EQ(hc(1, V4VOP_unregister_ring, r, NULL, 0, 0), 0);
    guest_mem_free(1, r, ring_bytes(64));
    free(rd);
    teardown();
}

/* Every op honours a denial, with nothing changed and nothing leaked. */
static void test_xsm_denials(void)
{
    static const int errs[] = { -EPERM, -EACCES };
    unsigned int e;

    for ( e = 0; e < sizeof(errs) / sizeof(errs[0]); e++ )
    {
        const int err = errs[e];
        v4v_ring_t *r, *r2, saved;
        v4v_ring_data_t *rd = ring_data_new(1);
        v4vtables_rule_t rule = {
            .src = { .domain = 2 }, .dst = { .domain = 1 }, .accept = 1,
        };
        struct {
            v4vtables_list_t l;
            v4vtables_rule_t rules[4];
        } list = { .l = { .nb_rules = 4 } };
        v4v_config_t cfg = { .domain = 1, .max_rings = 8 };
        v4v_info_t info;
        char buf[64] = { 0 };
        size_t allocs, pages;
        uint32_t tx;
        int cmd;

        setup();
        EQ(hc(1, V4VOP_info, &info, NULL, 0, 0), 0);
        EQ(hc(2, V4VOP_info, &info, NULL, 0, 0), 0);
        r = ring_new(1, 10, V4V_DOMID_ANY, 64);    /* payload space 32 */
        r2 = ring_new(1, 11, 2, 64);
        EQ(hc(1, V4VOP_register_ring, r, NULL, 0, 0), 0);
        EQ(hc(0, V4VOP_tables_add, &rule, NULL, 0, 0), 0);
        saved = *r;
        allocs = v4vh_allocations();
        pages = v4vh_pages_held();

        /* enable, for every op of the subject domain only */
        v4vh_xsm_deny(V4VH_XSM_ENABLE, 1, err);
        for ( cmd = 1; cmd <= 10; cmd++ )
            if ( cmd != 3 )
                EQ(hc(1, cmd, &info, NULL, 0, 0), err);
        EQ(hc(1, V4VOP_register_ring, r2, NULL, 0, 0), err);
        EQ(hc(1, V4VOP_unregister_ring, r, NULL, 0, 0), err);
        EQ(send(1, 1, 10, buf, 1), err);
        EQ(hc(1, V4VOP_notify, NULL, NULL, 0, 0), err);
        /* reserved arguments still first */
        EQ(hc(1, V4VOP_info, &info, buf, 0, 0), -EINVAL);
        /* others are not affected, and 1's ring still takes messages */
        EQ(send(2, 1, 10, buf, 8), 8);
        EQ(v4vh_ring_count(), 1);
        EQ(v4vh_allocations(), allocs);
        v4vh_xsm_deny(0, -1, 0);
        EQ(ring_recv(r, buf, sizeof(buf), NULL), 8);

        /* enable denied at creation: no V4V state, as if V4V were off */
        v4vh_xsm_deny(V4VH_XSM_ENABLE, 3, err);
        EQ(v4vh_domain_create(3), 0);
        EQ(hc(3, V4VOP_info, &info, NULL, 0, 0), err);
        v4vh_xsm_deny(0, -1, 0);
        EQ(v4vh_allocations(), allocs);
        EQ(hc(3, V4VOP_info, &info, NULL, 0, 0), -ENOSYS);
        EQ(send(3, 1, 10, buf, 1), -ENOSYS);
        EQ(send(2, 3, 10, buf, 1), -ECONNREFUSED);
        cfg.domain = 3;
        EQ(hc(0, V4VOP_config, &cfg, NULL, 0, 0), -ESRCH);
        cfg.domain = 1;
        EQ(v4vh_domain_destroy(3), 0);
        EQ(v4vh_allocations(), allocs);

        /* register_any: new ring, moved ring, partner that is no domain */
        v4vh_xsm_deny(V4VH_XSM_REGISTER_ANY, -1, err);
        r2->id.partner = V4V_DOMID_ANY;
        EQ(hc(1, V4VOP_register_ring, r2, NULL, 0, 0), err);
        EQ(hc(1, V4VOP_register_ring, r, NULL, 0, 0), err);
        r2->id.partner = 50;
        EQ(hc(1, V4VOP_register_ring, r2, NULL, 0, 0), err);
        r2->id.partner = 2;
        EQ(hc(1, V4VOP_register_ring, r2, NULL, 0, 0), 0);   /* single: ok */
        EQ(hc(1, V4VOP_unregister_ring, r2, NULL, 0, 0), 0);
        /* -EEXIST (same id, other len) comes after the hook */
        r->len = 128;
        EQ(hc(1, V4VOP_register_ring, r, NULL, 0, 0), err);
        r->len = 64;
        EQ(v4vh_pages_held(), pages);
        EQ(v4vh_mappings(), 1);
        EQ(v4vh_allocations(), allocs);
        EQ(v4vh_ring_count(), 1);
        EQ(r->tx_ptr, saved.tx_ptr + 32);
        v4vh_xsm_deny(0, -1, 0);

        /* register_single: partner 2 refused, any allowed */
        v4vh_xsm_deny(V4VH_XSM_REGISTER_SINGLE, 1, err);
        EQ(hc(1, V4VOP_register_ring, r2, NULL, 0, 0), err);
        r2->id.partner = 1;
        EQ(hc(1, V4VOP_register_ring, r2, NULL, 0, 0), err);
        r2->id.partner = V4V_DOMID_ANY;
        EQ(hc(1, V4VOP_register_ring, r2, NULL, 0, 0), 0);
        EQ(hc(1, V4VOP_unregister_ring, r2, NULL, 0, 0), 0);
        EQ(v4vh_pages_held(), pages);
        EQ(v4vh_allocations(), allocs);
        v4vh_xsm_deny(0, -1, 0);

        /* send: from 2 refused, nothing written, nobody queued */
        EQ(send(2, 1, 10, buf, 32), 32);            /* fills the ring */
        tx = r->tx_ptr;
        v4vh_event_test_and_clear(1);
        v4vh_xsm_deny(V4VH_XSM_SEND, 2, err);
        EQ(send(2, 1, 10, buf, 1), err);            /* would wait */
        EQ(v4vh_waiter_count(), 0);
        EQ(ring_recv(r, buf, sizeof(buf), NULL), 32);
        EQ(send(2, 1, 10, buf, 1), err);            /* would fit */
        EQ(r->tx_ptr, tx);
        EQ(v4vh_event_test_and_clear(1), 0);
        /* notify: 2 learns nothing about 1's rings and is not queued */
        rd->data[0].ring.domain = 1;
        rd->data[0].ring.port = 10;
        rd->data[0].space_required = 8;
        rd->data[0].flags = 0xff;
        EQ(hc(2, V4VOP_notify, rd, NULL, 0, 0), 0);
        EQ(rd->data[0].flags, 0);
        EQ(rd->data[0].max_message_size, 0);
        /* the ACL is still checked first */
        rule.accept = 0;
        EQ(hc(0, V4VOP_tables_add, &rule, NULL, 1, 0), 0);
        EQ(send(2, 1, 10, buf, 1), -EACCES);
        EQ(hc(0, V4VOP_tables_del, NULL, NULL, 1, 0), 0);
        /* 0 may still send to 1 */
        EQ(send(0, 1, 10, buf, 1), 1);
        EQ(v4vh_event_test_and_clear(1), 1);
        EQ(ring_recv(r, buf, sizeof(buf), NULL), 1);
        EQ(hc(0, V4VOP_notify, rd, NULL, 0, 0), 0);
        EQ(rd->data[0].flags, V4V_RING_DATA_F_EXISTS | V4V_RING_DATA_F_EMPTY |
                              V4V_RING_DATA_F_SUFFICIENT);
        EQ(v4vh_waiter_count(), 0);
        EQ(v4vh_allocations(), allocs);
        v4vh_xsm_deny(0, -1, 0);

        /* admin: dom0 refused everything, before reading anything */
        v4vh_xsm_deny(V4VH_XSM_ADMIN, 0, err);
        EQ(hc(0, V4VOP_config, BAD_PTR, NULL, 0, 0), err);
        EQ(hc(0, V4VOP_config, &cfg, NULL, 0, 0), err);
        EQ(hc(0, V4VOP_tables_add, &rule, NULL, 0, 0), err);
        EQ(hc(0, V4VOP_tables_del, &rule, NULL, 0, 0), err);
        EQ(hc(0, V4VOP_tables_del, NULL, NULL, V4VTABLES_DEL_ALL, 0), err);
        EQ(hc(0, V4VOP_tables_list, &list, NULL, 0, 0), err);
        /* with the module denying, non-dom0 gets the module's error */
        v4vh_xsm_deny(V4VH_XSM_ADMIN, -1, err);
        EQ(hc(1, V4VOP_tables_list, &list, NULL, 0, 0), err);
        v4vh_xsm_deny(0, -1, 0);
        EQ(hc(1, V4VOP_tables_list, &list, NULL, 0, 0), -EPERM);
        EQ(hc(0, V4VOP_tables_list, &list, NULL, 0, 0), 1);
        CHECK(list.rules[0].accept == 1);
        EQ(hc(1, V4VOP_info, &info, NULL, 0, 0), 0);
        EQ(info.max_rings, V4V_DEFAULT_MAX_RINGS);
        EQ(v4vh_allocations(), allocs);

        /* everything denied: nothing leaks, destruction still works */
        v4vh_xsm_deny(V4VH_XSM_ALL, -1, err);
        EQ(hc(1, V4VOP_unregister_ring, r, NULL, 0, 0), err);
        EQ(v4vh_domain_destroy(1), 0);
        EQ(v4vh_pages_held(), 0);
        EQ(v4vh_ring_count(), 0);
        v4vh_xsm_deny(0, -1, 0);

        EQ(v4vh_locks_held(), 0);
        free(r);
        free(r2);
        free(rd);
        teardown();
    }
}

/*
 * Finding 1: a register_ring that loses the race with an unregister by
 * another vCPU (between its two checks) must not start again by recursion.
 * The hook unregisters the ring while the caller maps it, and registers it
 * again before the caller (if it started over) would look it up: on the old
 * code each round added a stack frame (1,000 rounds, 1,001 deep).
 */
struct race {
    v4v_ring_t *ring;
    unsigned int rounds, max_rounds, header_reads;
    bool gone;
};

static void race_hook(unsigned int point, const void *addr, int lock_free,
                      void *arg)
{
    struct race *rc = arg;

    if ( !lock_free || addr != rc->ring )
        return;
    if ( point == V4VH_POINT_COPY_FROM )
    {
        rc->header_reads++;
        if ( rc->gone && rc->rounds < rc->max_rounds )
        {
            /* Another vCPU registers it again before the lookup. */
            EQ(hc(1, V4VOP_register_ring, rc->ring, NULL, 0, 0), 0);
            rc->gone = false;
        }
    }
    else if ( point == V4VH_POINT_RING_PAGE && !rc->gone &&
              rc->rounds < rc->max_rounds )
    {
        /* ... and unregisters it while this one maps the pages. */
        EQ(hc(1, V4VOP_unregister_ring, rc->ring, NULL, 0, 0), 0);
        rc->gone = true;
        rc->rounds++;
    }
}

static void test_register_race_no_recursion(void)
{
    struct race race = { .max_rounds = 1000 };
    unsigned int i, total = 0;

    setup();
    race.ring = ring_new(1, 10, V4V_DOMID_ANY, 64);
    EQ(hc(1, V4VOP_register_ring, race.ring, NULL, 0, 0), 0);

    v4vh_set_preempt(race_hook, &race);
    EQ(hc(1, V4VOP_register_ring, race.ring, NULL, 0, 0), 0);
    /* One pass: the header read once, one race lost, no second attempt. */
    EQ(race.header_reads, 1);
    EQ(race.rounds, 1);
    total += race.rounds;

    /* 999 more lost races, each one call deep. */
    for ( i = 1; i < 1000; i++ )
    {
        race.header_reads = 0;
        race.rounds = 0;
        race.gone = false;
        EQ(hc(1, V4VOP_register_ring, race.ring, NULL, 0, 0), 0);
        if ( race.header_reads != 1 || race.rounds != 1 )
            break;
        total += race.rounds;
    }
    EQ(total, 1000);
    v4vh_set_preempt(NULL, NULL);

    EQ(v4vh_ring_count(), 1);
    EQ(v4vh_pages_held(), 1);
    EQ(v4vh_mappings(), 1);
    EQ(hc(1, V4VOP_unregister_ring, race.ring, NULL, 0, 0), 0);
    EQ(v4vh_pages_held(), 0);
    teardown();
    free(race.ring);
}

/*
 * Finding 3: notify follows the ACL as sendv does. Domains the table
 * rejects learn nothing about the ring (flags 0, max 0, as for no ring) and
 * take no waiter slot; on the old code 40 of them filled the queue, read
 * EXISTS and the ring's state, and the allowed sender got no PENDING.
 */
static void test_notify_acl(void)
{
    v4vtables_rule_t allow = {
        .src = { .port = V4V_PORT_ANY, .domain = 2 },
        .dst = { .port = 10, .domain = 1 },
        .accept = 1,
    }, deny = {
        .src = { .port = V4V_PORT_ANY, .domain = V4V_DOMID_ANY },
        .dst = { .port = 10, .domain = 1 },
        .accept = 0,
    }, port_only = {
        .src = { .port = 5, .domain = 10 },
        .dst = { .port = 11, .domain = 1 },
        .accept = 0,
    };
    v4v_ring_data_t *rd = ring_data_new(2);
    v4v_ring_t *r, *r11;
    uint8_t buf[64] = { 0 };
    unsigned int d, exists = 0;

    setup();
    r = ring_new(1, 10, V4V_DOMID_ANY, 64);
    r11 = ring_new(1, 11, V4V_DOMID_ANY, 64);
    EQ(hc(1, V4VOP_register_ring, r, NULL, 0, 0), 0);
    EQ(hc(1, V4VOP_register_ring, r11, NULL, 0, 0), 0);
    EQ(send(2, 1, 10, buf, 16), 16);
    EQ(hc(0, V4VOP_tables_add, &allow, NULL, 0, 0), 0);
    EQ(hc(0, V4VOP_tables_add, &deny, NULL, 0, 0), 0);
    EQ(hc(0, V4VOP_tables_add, &port_only, NULL, 0, 0), 0);

    rd->nent = 1;
    rd->data[0].ring.domain = 1;
    rd->data[0].ring.port = 10;
    for ( d = 10; d < 50; d++ )
    {
        EQ(v4vh_domain_create(d), 0);
        rd->data[0].space_required = 32;
        rd->data[0].flags = 0xffff;
        rd->data[0].max_message_size = 0xffffffffU;
        EQ(hc(d, V4VOP_notify, rd, NULL, 0, 0), 0);
        if ( rd->data[0].flags || rd->data[0].max_message_size )
            exists++;
        /* A rejected sender still gets -EACCES from sendv, not queued. */
        EQ(send(d, 1, 10, buf, 32), -EACCES);
    }
    EQ(exists, 0);
    EQ(v4vh_waiter_count(), 0);

    /* The allowed sender is queued. */
    rd->data[0].space_required = 32;
    EQ(hc(2, V4VOP_notify, rd, NULL, 0, 0), 0);
    EQ(rd->data[0].flags, V4V_RING_DATA_F_EXISTS | V4V_RING_DATA_F_PENDING);
    EQ(rd->data[0].max_message_size, 32);
    EQ(v4vh_waiter_count(), 1);

    /*
     * A rule naming a source port does not decide a notify (asked as from
     * port 0, which only wildcard source ports match).
     */
    rd->nent = 2;
    rd->data[1] = rd->data[0];
    rd->data[1].ring.port = 11;
    rd->data[1].space_required = 0;
    EQ(hc(10, V4VOP_notify, rd, NULL, 0, 0), 0);
    EQ(rd->data[0].flags, 0);
    EQ(rd->data[1].flags, V4V_RING_DATA_F_EXISTS | V4V_RING_DATA_F_EMPTY |
                          V4V_RING_DATA_F_SUFFICIENT);
    teardown();
    free(r);
    free(r11);
    free(rd);
}

/*
 * Finding 7: a payload copy that faults part-way (the sender's page
 * unmapped by another of its vCPUs after the readability check) leaves no
 * byte of the message in the ring: header and pointers byte-identical, the
 * bytes the copy reached zeroed, everything else as it was. On the old code
 * the first iov's bytes stayed in the ring's free space.
 */
static void test_efault_leaves_no_payload(void)
{
    v4v_send_addr_t sa = {
        .src = { .port = 77, .domain = DOMID_SELF },
        .dst = { .port = 10, .domain = 1 },
    };
    uint8_t p0[40], p1[40], before[64 + 256];
    v4v_iov_t iov[2] = {
        { .iov_base = (uintptr_t)p0, .iov_len = sizeof(p0) },
        { .iov_base = (uintptr_t)p1, .iov_len = sizeof(p1) },
    };
    v4v_ring_t *r;
    unsigned int fail_at, i, start, reached;
    bool rest_same = true, reached_zero = true;

    memset(p0, 0x11, sizeof(p0));
    memset(p1, 0x22, sizeof(p1));
    /*
     * Copies 1 and 2 read the address and the iovs; then the payload in
     * chunks: iov 0 as 32 bytes up to the end and 8 from the start, iov 1 as
     * 40. Each of the three faults in turn.
     */
    for ( fail_at = 3; fail_at <= 5; fail_at++ )
    {
        setup();
        r = ring_new(1, 10, V4V_DOMID_ANY, 256);
        /* tx near the end, so the payload wraps. */
        r->rx_ptr = r->tx_ptr = 208;
        EQ(hc(1, V4VOP_register_ring, r, NULL, 0, 0), 0);
        memset(r->ring, 0xaa, 256);
        memcpy(before, r, sizeof(before));

        v4vh_fail_copy(fail_at);
        EQ(hc(2, V4VOP_sendv, &sa, iov, 2, V4V_PROTO_DGRAM), -EFAULT);
        v4vh_fail_copy(0);

        CHECK(!memcmp(r, before, 64));
        EQ(r->tx_ptr, 208);
        /* Payload starts after the header slot: 224, wrapping at 256. */
        start = 224;
        reached = fail_at == 3 ? 32 : fail_at == 4 ? 40 : 80;
        for ( i = 0; i < 256; i++ )
        {
            unsigned int off = (i + 256 - start) % 256;

            if ( off < reached )
                reached_zero &= r->ring[i] == 0;
            else
                rest_same &= r->ring[i] == 0xaa;
        }
        CHECK(reached_zero);
        CHECK(rest_same);

        /* The ring still works, from the same tx. */
        EQ(send(2, 1, 10, p0, 8), 8);
        EQ(r->tx_ptr, 240);
        teardown();
        free(r);
    }
}

/*
 * Finding 6: the hypercall takes 64-bit registers. Upper bits of cmd, arg3
 * and arg4 are not dropped: a value that does not fit the op's 32-bit
 * argument is -EINVAL, before anything is read. On the old code (int cmd,
 * unsigned int arg3/arg4) each of these was truncated and accepted.
 */
static void test_args_not_truncated(void)
{
    const unsigned long hi = 1UL << 32;
    v4v_send_addr_t sa = {
        .src = { .port = 77, .domain = DOMID_SELF },
        .dst = { .port = 10, .domain = 1 },
    };
    v4vtables_rule_t rule = {
        .src = { .port = V4V_PORT_ANY, .domain = V4V_DOMID_ANY },
        .dst = { .port = V4V_PORT_ANY, .domain = V4V_DOMID_ANY },
        .accept = 1,
    };
    v4v_iov_t iov = { .iov_base = (uintptr_t)&sa, .iov_len = 4 };
    v4v_info_t info;
    v4v_ring_t *r;

    setup();
    r = ring_new(1, 10, V4V_DOMID_ANY, 64);
    EQ(hc(1, V4VOP_register_ring, r, NULL, 0, 0), 0);

    EQ(v4vh_hypercall_raw(1, hi | V4VOP_info, &info, NULL, 0, 0), -EINVAL);
    EQ(v4vh_hypercall_raw(1, V4VOP_info, &info, NULL, hi, 0), -EINVAL);
    EQ(v4vh_hypercall_raw(1, V4VOP_info, &info, NULL, 0, hi), -EINVAL);
    EQ(v4vh_hypercall_raw(1, V4VOP_register_ring, r, NULL, hi, 0), -EINVAL);
    EQ(v4vh_hypercall_raw(1, V4VOP_notify, NULL, NULL, 0, hi), -EINVAL);
    /* sendv: niov and message_type are 32-bit */
    EQ(v4vh_hypercall_raw(2, V4VOP_sendv, &sa, &iov, hi | 1, V4V_PROTO_DGRAM),
       -EINVAL);
    EQ(v4vh_hypercall_raw(2, V4VOP_sendv, &sa, &iov, 1,
                          hi | V4V_PROTO_DGRAM), -EINVAL);
    EQ(r->tx_ptr, 0);
    /* tables_add/del: position is 32-bit */
    EQ(v4vh_hypercall_raw(0, V4VOP_tables_add, &rule, NULL, hi, 0), -EINVAL);
    EQ(v4vh_hypercall_raw(0, V4VOP_tables_del, NULL, NULL,
                          hi | V4VTABLES_DEL_ALL, 0), -EINVAL);
    EQ(v4vh_hypercall_raw(0, V4VOP_tables_add, &rule, NULL, hi | 1, 0),
       -EINVAL);
    EQ(v4vh_hypercall_raw(0, V4VOP_tables_list, NULL, NULL, 0, 0), -EFAULT);
    /* the same calls in range work */
    EQ(v4vh_hypercall_raw(2, V4VOP_sendv, &sa, &iov, 1, V4V_PROTO_DGRAM), 4);
    EQ(v4vh_hypercall_raw(0, V4VOP_tables_add, &rule, NULL, 1, 0), 0);
    EQ(v4vh_hypercall_raw(0, V4VOP_tables_del, NULL, NULL, V4VTABLES_DEL_ALL,
                          0), 0);
    EQ(v4vh_hypercall_raw(1, V4VOP_info, &info, NULL, 0, 0), 0);
    teardown();
    free(r);
}

/*
 * Finding 8: the lock rules are checked. Each deliberate violation, in a
 * child process, must abort with a message naming the broken rule; a harness
 * whose lock assertions were comments would let the child exit normally.
 */
static void test_lock_rules_enforced(void)
{
    static const char *const expect[] = {
        "LOCKING_L2(vd)", "LOCKING_L3(ri)", "LOCKING_Write_L1",
        "signalled with a V4V spinlock held",
    };
    unsigned int which;

    for ( which = 0; which < 4; which++ )
    {
        int fds[2], status = 0;
        char out[4096] = { 0 };
        size_t got = 0;
        ssize_t n;
        pid_t pid;

        EQ(pipe(fds), 0);
        fflush(NULL);
        pid = fork();
        if ( pid == 0 )
        {
            v4v_ring_t *r;
            v4v_info_t info;

            dup2(fds[1], 2);
            close(fds[0]);
            v4vh_reset();
            v4vh_domain_create(1);
            r = ring_new(1, 10, V4V_DOMID_ANY, 64);
            if ( hc(1, V4VOP_register_ring, r, NULL, 0, 0) ||
                 hc(1, V4VOP_info, &info, NULL, 0, 0) )
                _exit(3);
            v4vh_break_lock_rule(which, 1, 10);
            _exit(0);
        }
        close(fds[1]);
        while ( got < sizeof(out) - 1 &&
                (n = read(fds[0], out + got, sizeof(out) - 1 - got)) > 0 )
            got += n;
        close(fds[0]);
        EQ(waitpid(pid, &status, 0), pid);
        CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT);
        CHECK(strstr(out, expect[which]) != NULL);
    }
}

/*
 * Finding 2: a domain's rings may pin at most max_ring_pages pages (default
 * V4V_DEFAULT_MAX_RING_PAGES, 64 MiB worth), however the rings alias: 16 MiB
 * rings over one range take 4,097 pages each, so the fourth gets -ENOSPC
 * and nothing is pinned for it. info reports the limit and the count; dom0
 * changes the limit with config. On the old code all 128 aliased rings were
 * accepted (524,416 page references).
 */
static void test_ring_page_cap(void)
{
    const uint32_t len = V4V_MAX_RING_LEN;
    const unsigned int per = (V4V_RING_HEADER_SIZE + len + PG - 1) / PG;
    v4v_config_t cfg = { .domain = 1, .max_rings = V4V_DEFAULT_MAX_RINGS };
    v4v_info_t info;
    v4v_ring_t *r, *small;
    unsigned int port, ok = 0;
    long rc = 0;

    setup();
    r = ring_new(1, 1, V4V_DOMID_ANY, len);
    for ( port = 1; port <= V4V_DEFAULT_MAX_RINGS; port++ )
    {
        r->id.addr.port = port;
        rc = hc(1, V4VOP_register_ring, r, NULL, 0, 0);
        if ( rc )
            break;
        ok++;
    }
    EQ(ok, V4V_DEFAULT_MAX_RING_PAGES / per);
    EQ(rc, -ENOSPC);
    EQ(v4vh_pages_held(), ok * per);
    EQ(v4vh_mappings(), ok);

    EQ(hc(1, V4VOP_info, &info, NULL, 0, 0), 0);
    EQ(info.max_ring_pages, V4V_DEFAULT_MAX_RING_PAGES);
    EQ(info.nr_ring_pages, ok * per);

    /* A small ring still fits in what is left; re-registering one in place
     * needs room for both mappings while it moves. */
    small = ring_new(1, 500, V4V_DOMID_ANY, 64);
    EQ(hc(1, V4VOP_register_ring, small, NULL, 0, 0), 0);
    r->id.addr.port = 1;
    EQ(hc(1, V4VOP_register_ring, r, NULL, 0, 0), -ENOSPC);

    /* dom0 raises the limit; others may not; the limit has a ceiling. */
    cfg.max_ring_pages = V4V_DEFAULT_MAX_RING_PAGES * 2;
    EQ(hc(1, V4VOP_config, &cfg, NULL, 0, 0), -EPERM);
    cfg.max_ring_pages = V4V_MAX_RING_PAGES_LIMIT + 1;
    EQ(hc(0, V4VOP_config, &cfg, NULL, 0, 0), -EINVAL);
    cfg.max_ring_pages = V4V_DEFAULT_MAX_RING_PAGES * 2;
    EQ(hc(0, V4VOP_config, &cfg, NULL, 0, 0), 0);
    r->id.addr.port = ok + 1;
    EQ(hc(1, V4VOP_register_ring, r, NULL, 0, 0), 0);
    r->id.addr.port = 1;
    EQ(hc(1, V4VOP_register_ring, r, NULL, 0, 0), 0);
    EQ(hc(1, V4VOP_info, &info, NULL, 0, 0), 0);
    EQ(info.max_ring_pages, V4V_DEFAULT_MAX_RING_PAGES * 2);
    EQ(info.nr_ring_pages, (ok + 1) * per + 1);
    EQ(info.nr_ring_pages, v4vh_pages_held());

    /* 0 leaves the limit as it is; lowering it keeps what is registered. */
    cfg.max_ring_pages = 0;
    EQ(hc(0, V4VOP_config, &cfg, NULL, 0, 0), 0);
    EQ(hc(1, V4VOP_info, &info, NULL, 0, 0), 0);
    EQ(info.max_ring_pages, V4V_DEFAULT_MAX_RING_PAGES * 2);
    cfg.max_ring_pages = 1;
    EQ(hc(0, V4VOP_config, &cfg, NULL, 0, 0), 0);
    EQ(hc(1, V4VOP_unregister_ring, small, NULL, 0, 0), 0);
    EQ(hc(1, V4VOP_register_ring, small, NULL, 0, 0), -ENOSPC);
    EQ(hc(1, V4VOP_info, &info, NULL, 0, 0), 0);
    EQ(info.nr_ring_pages, (ok + 1) * per);

    /* Unregistering and destruction give the pages back. */
    r->id.addr.port = 2;
    EQ(hc(1, V4VOP_unregister_ring, r, NULL, 0, 0), 0);
    EQ(hc(1, V4VOP_info, &info, NULL, 0, 0), 0);
    EQ(info.nr_ring_pages, ok * per);
    EQ(v4vh_domain_destroy(1), 0);
    EQ(v4vh_pages_held(), 0);
    teardown();
    free(r);
    free(small);
}

/*
 * Finding 4: V4V's event channel port cannot outlive its channel. The port
 * is Xen-attached: the guest can neither close it nor reset it away, so its
 * number is never reused for another channel, info always returns a live
 * port, and signals reach only it. On the old code (a guest port) the guest
 * closed it, got the same number for a new channel, and V4V's signals went
 * down that one (test fails).
 */
static void test_evtchn_port_lives(void)
{
    v4v_info_t info, info2;
    v4v_ring_t *r;
    uint8_t buf[16] = { 0 };
    int other;

    setup();
    r = ring_new(1, 10, V4V_DOMID_ANY, 256);
    EQ(hc(1, V4VOP_register_ring, r, NULL, 0, 0), 0);
    EQ(hc(1, V4VOP_info, &info, NULL, 0, 0), 0);
    CHECK(info.evtchn != 0);

    /* The guest closes it and allocates a new channel of its own. */
    EQ(v4vh_evtchn_close(1, info.evtchn), -EINVAL);
    other = v4vh_evtchn_alloc(1);
    CHECK(other > 0 && (unsigned int)other != info.evtchn);
    EQ(hc(1, V4VOP_info, &info2, NULL, 0, 0), 0);
    EQ(info2.evtchn, info.evtchn);

    /* ... or resets its channels: V4V's stays, the others go. */
    EQ(v4vh_evtchn_reset(1), 0);
    other = v4vh_evtchn_alloc(1);
    CHECK(other > 0 && (unsigned int)other != info.evtchn);

    /* V4V's signals reach its port, never the guest's new one. */
    EQ(send(2, 1, 10, buf, 16), 16);
    EQ(v4vh_evtchn_hits(1, info.evtchn), 1);
    EQ(v4vh_evtchn_hits(1, other), 0);
    EQ(hc(1, V4VOP_info, &info2, NULL, 0, 0), 0);
    EQ(info2.evtchn, info.evtchn);

    /* Soft reset: V4V frees its port and allocates a fresh one later. */
    EQ(v4vh_domain_soft_reset(1), 0);
    EQ(v4vh_evtchn_close(1, info.evtchn), -EINVAL);
    EQ(hc(1, V4VOP_info, &info2, NULL, 0, 0), 0);
    CHECK(info2.evtchn != 0 && info2.evtchn != (unsigned int)other);
    EQ(v4vh_evtchn_close(1, info2.evtchn), -EINVAL);
    teardown();
    free(r);
}

/*
 * Finding 5: a teardown touches only what refers to the dying domain. Its
 * work (list entries visited) with 100 other domains of 128 rings each, with
 * waiters of their own, is the same as with none. On the old code it walked
 * every domain's every ring (and their waiters) under the global write lock:
 * over 12,800 more entries (test fails).
 */
static unsigned long teardown_work(unsigned int others)
{
    v4v_ring_t *mine, **theirs, *victim;
    uint8_t buf[32] = { 0 };
    unsigned long before, work;
    unsigned int d, p;

    setup();
    /* The dying domain 2: rings, a ring for it alone, waits on others. */
    mine = ring_new(2, 1, V4V_DOMID_ANY, 64);
    EQ(hc(2, V4VOP_register_ring, mine, NULL, 0, 0), 0);
    victim = ring_new(1, 7, 2, 64);
    EQ(hc(1, V4VOP_register_ring, victim, NULL, 0, 0), 0);
    EQ(send(2, 1, 7, buf, 32), 32);
    EQ(send(2, 1, 7, buf, 16), -EAGAIN);
    EQ(send(1, 2, 1, buf, 32), 32);
    EQ(send(1, 2, 1, buf, 16), -EAGAIN);

    /* Others: 128 rings each (aliasing one page), full, with a waiter. */
    theirs = calloc(others + 1, sizeof(*theirs));
    for ( d = 0; d < others; d++ )
    {
        domid_t id = 10 + d;

        EQ(v4vh_domain_create(id), 0);
        theirs[d] = ring_new(id, 1, d % 2 ? V4V_DOMID_ANY : 300 + d, 64);
        for ( p = 1; p <= V4V_DEFAULT_MAX_RINGS; p++ )
        {
            theirs[d]->id.addr.port = p;
            EQ(hc(id, V4VOP_register_ring, theirs[d], NULL, 0, 0), 0);
        }
        theirs[d]->id.partner = V4V_DOMID_ANY;
        theirs[d]->id.addr.port = 1000;
        EQ(hc(id, V4VOP_register_ring, theirs[d], NULL, 0, 0), -ENOSPC);
        theirs[d]->id.addr.port = 1;
        EQ(send(1, id, 1, buf, 32), d % 2 ? 32 : -ECONNREFUSED);
        EQ(send(1, id, 1, buf, 16), d % 2 ? -EAGAIN : -ECONNREFUSED);
    }
    EQ(v4vh_ring_count(), 2 + others * V4V_DEFAULT_MAX_RINGS);

    before = v4vh_list_steps();
    EQ(v4vh_domain_destroy(2), 0);
    work = v4vh_list_steps() - before;

    EQ(v4vh_ring_count(), others * V4V_DEFAULT_MAX_RINGS);
    teardown();
    free(mine);
    free(victim);
    for ( d = 0; d < others; d++ )
        free(theirs[d]);
    free(theirs);

    return work;
}

static void test_teardown_work_bounded(void)
{
    unsigned long alone = teardown_work(0), crowd = teardown_work(100);

    EQ(crowd, alone);
}

int main(void)
{
    test_disabled_and_unknown();
    test_reserved_args();
    test_info();
    test_register();
    test_big_ring();
    test_sendv_errors();
    test_send_receive_wrap();
    test_log_dirty_and_suspend();
    test_waiters_notify();
    test_one_slot_free();
    test_tables();
    test_config();
    test_destroy();
    test_soft_reset();
    test_alloc_failures_everywhere();
    test_inspect_counts();
    test_xsm_hooks_called();
    test_xsm_denials();
    test_register_race_no_recursion();
    test_notify_acl();
    test_efault_leaves_no_payload();
    test_args_not_truncated();
    test_lock_rules_enforced();
    test_ring_page_cap();
    test_evtchn_port_lives();
    test_teardown_work_bounded();

    printf("%u passed, %u failed\n", passed, failed);

    return failed ? 1 : 0;
}
