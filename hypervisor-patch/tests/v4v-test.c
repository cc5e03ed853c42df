/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * v4v-test: exercise HYPERVISOR_v4v_op from a Linux dom0's userspace through
 * /dev/xen/privcmd, with hypercall buffers and the ring in memory mapped from
 * /dev/xen/hypercall. Prints "V4V-..." markers that boot-test.sh looks for.
 *
 * usage: v4v-test info | ring
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>

/*
 * The ABI from the hypervisor patch; its "xen.h" and "event_channel.h" are
 * the harness's small stand-ins (-I ../harness/shim/public).
 */
#include "../xen/include/public/v4v.h"

/* Debian's <xen/privcmd.h> does not compile in userspace. */
struct privcmd_hypercall {
    uint64_t op;
    uint64_t arg[5];
};
#define IOCTL_PRIVCMD_HYPERCALL 0x305000UL

static int privcmd = -1;

/* The full 64-bit registers: the hypervisor must not truncate them. */
static long v4v_op64(uint64_t cmd, void *a1, void *a2, uint64_t a3,
                     uint64_t a4)
{
    struct privcmd_hypercall h = {
        .op = __HYPERVISOR_v4v_op,
        .arg = { cmd, (uintptr_t)a1, (uintptr_t)a2, a3, a4 },
    };
    long rc = ioctl(privcmd, IOCTL_PRIVCMD_HYPERCALL, &h);

    return rc < 0 ? -errno : rc;
}

static long v4v_op(int cmd, void *a1, void *a2, uint32_t a3, uint32_t a4)
{
    return v4v_op64((unsigned int)cmd, a1, a2, a3, a4);
}

int main(int argc, char **argv)
{
    const char *what = argc > 1 ? argv[1] : "info";
    const size_t bufsz = 4 * 4096;
    uint8_t *buf;
    v4v_info_t *info;
    v4v_ring_t *ring;
    int hfd;
    long rc;

    setvbuf(stdout, NULL, _IONBF, 0);
    privcmd = open("/dev/xen/privcmd", O_RDWR);
    hfd = open("/dev/xen/hypercall", O_RDWR);
    if ( privcmd < 0 || hfd < 0 )
    {
        printf("V4V-ERR cannot open /dev/xen/privcmd or hypercall: %s\n",
               strerror(errno));
        return 1;
    }
    buf = mmap(NULL, bufsz, PROT_READ | PROT_WRITE, MAP_SHARED, hfd, 0);
    if ( buf == MAP_FAILED )
    {
        printf("V4V-ERR mmap /dev/xen/hypercall: %s\n", strerror(errno));
        return 1;
    }
    memset(buf, 0, bufsz);

    /* page 0: small arguments; pages 1-2: the ring (64 + 4096 bytes) */
    info = (v4v_info_t *)buf;
    rc = v4v_op(V4VOP_info, info, NULL, 0, 0);
    if ( rc )
    {
        printf("V4V-INFO-ERR rc=%ld (%s)\n", rc, strerror(-rc));
        return strcmp(what, "info") ? 1 : 0;
    }
    printf("V4V-INFO evtchn=%u domid=%u max_rings=%u nr_rings=%u "
           "max_ring_len=%u max_iov=%u max_message_size=%u\n",
           info->evtchn, info->domid, info->max_rings, info->nr_rings,
           info->max_ring_len, info->max_iov, info->max_message_size);
    if ( !strcmp(what, "info") )
        return 0;

    if ( !strcmp(what, "ring") )
    {
        v4v_send_addr_t *sa = (v4v_send_addr_t *)(buf + 256);
        v4v_iov_t *iov = (v4v_iov_t *)(buf + 512);
        char *msg = (char *)buf + 1024;
        v4vtables_rule_t *rule = (v4vtables_rule_t *)(buf + 2048);
        v4v_ring_message_header_t mh;
        char out[64] = { 0 };

        ring = (v4v_ring_t *)(buf + 4096);
        ring->magic = V4V_RING_MAGIC;
        ring->id.addr.port = 1234;
        ring->id.addr.domain = DOMID_SELF;
        ring->id.partner = V4V_DOMID_ANY;
        ring->len = 4096;
        rc = v4v_op(V4VOP_register_ring, ring, NULL, 0, 0);
        printf("V4V-REGISTER rc=%ld domain=%u tx=%u\n", rc,
               ring->id.addr.domain, ring->tx_ptr);
        if ( rc )
            return 1;

        strcpy(msg, "hello-v4v");
        sa->src.port = 99;
        sa->src.domain = DOMID_SELF;
        sa->dst.port = 1234;
        sa->dst.domain = DOMID_SELF;
        iov->iov_base = (uintptr_t)msg;
        iov->iov_len = strlen(msg);
        rc = v4v_op(V4VOP_sendv, sa, iov, 1, V4V_PROTO_DGRAM);
        printf("V4V-SEND rc=%ld tx=%u\n", rc, ring->tx_ptr);

        memcpy(&mh, &ring->ring[ring->rx_ptr], sizeof(mh));
        if ( ring->tx_ptr != ring->rx_ptr && mh.len >= 16 &&
             mh.len - 16 < sizeof(out) )
        {
            memcpy(out, &ring->ring[ring->rx_ptr + 16], mh.len - 16);
            ring->rx_ptr = (ring->rx_ptr + V4V_ROUNDUP(mh.len)) % ring->len;
            printf("V4V-RECV '%s' from d%u:%u type %#x\n", out,
                   mh.source.domain, mh.source.port, mh.message_type);
        }
        else
            printf("V4V-RECV-ERR nothing in the ring\n");
        rc = v4v_op(V4VOP_notify, NULL, NULL, 0, 0);
        printf("V4V-NOTIFY rc=%ld\n", rc);

        /* Upper register bits are refused, not dropped (all -EINVAL). */
        printf("V4V-WIDE-ARGS cmd=%ld arg3=%ld niov=%ld type=%ld tx=%u\n",
               v4v_op64((1ULL << 32) | V4VOP_info, info, NULL, 0, 0),
               v4v_op64(V4VOP_info, info, NULL, 1ULL << 32, 0),
               v4v_op64(V4VOP_sendv, sa, iov, (1ULL << 32) | 1,
                        V4V_PROTO_DGRAM),
               v4v_op64(V4VOP_sendv, sa, iov, 1,
                        (1ULL << 32) | V4V_PROTO_DGRAM),
               ring->tx_ptr);

        /* ACL: reject ourselves, then flush */
        rule->src.domain = V4V_DOMID_ANY;
        rule->dst.domain = V4V_DOMID_ANY;
        rule->dst.port = 1234;
        rule->accept = 0;
        rc = v4v_op(V4VOP_tables_add, rule, NULL, 0, 0);
        printf("V4V-ACL-ADD rc=%ld\n", rc);
        rc = v4v_op(V4VOP_sendv, sa, iov, 1, V4V_PROTO_DGRAM);
        printf("V4V-ACL-SEND rc=%ld (%s)\n", rc,
               rc < 0 ? strerror(-rc) : "sent");

        /* dump state with the ring registered and the rule in place */
        fflush(stdout);
        if ( system("xl debug-keys 4") )
            printf("V4V-ERR xl debug-keys failed\n");

        rc = v4v_op(V4VOP_tables_del, NULL, NULL, V4VTABLES_DEL_ALL, 0);
        printf("V4V-ACL-FLUSH rc=%ld\n", rc);
        rc = v4v_op(V4VOP_unregister_ring, ring, NULL, 0, 0);
        printf("V4V-UNREGISTER rc=%ld\n", rc);
        return 0;
    }

    printf("usage: v4v-test info | ring\n");
    return 1;
}
