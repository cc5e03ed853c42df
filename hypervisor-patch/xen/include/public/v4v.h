/* SPDX-License-Identifier: MIT */
/******************************************************************************
 * v4v.h
 *
 * V4V: inter-domain messaging through rings of guest memory, with the
 * hypervisor as the only writer.
 *
 * A domain that wants to receive registers a ring: a page-aligned region of
 * its own memory holding a 64-byte header (struct v4v_ring) followed by a
 * data area of 'len' bytes. Any domain may then send datagrams to it with
 * V4VOP_sendv; the hypervisor copies each message into the ring, advances
 * tx_ptr and signals the receiver's V4V event channel. The receiver consumes
 * messages, advances rx_ptr and calls V4VOP_notify so that senders waiting
 * for space are woken. An ordered table of accept/reject rules, edited by
 * the hardware domain only, decides every send.
 *
 * Differences from the V4V v9 series (see docs/abi.md for the reasons):
 *  - hypercall number 43 (39 belongs to Argo);
 *  - register_ring takes the ring's guest virtual address and no pfn list;
 *  - the source domain of a send is always the caller;
 *  - every resource is capped, and the caps are reported by V4VOP_info.
 *
 * Permission is hereby granted, free of charge, to any person obtaining a copy
 * of this software and associated documentation files (the "Software"), to
 * deal in the Software without restriction, including without limitation the
 * rights to use, copy, modify, merge, publish, distribute, sublicense, and/or
 * sell copies of the Software, and to permit persons to whom the Software is
 * furnished to do so, subject to the following conditions:
 *
 * The above copyright notice and this permission notice shall be included in
 * all copies or substantial portions of the Software.
 *
 * THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
 * IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
 * FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
 * AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
 * LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING
 * FROM, OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER
 * DEALINGS IN THE SOFTWARE.
 */

#ifndef __XEN_PUBLIC_V4V_H__
#define __XEN_PUBLIC_V4V_H__

#include "xen.h"
#include "event_channel.h"

/* Provided by xen.h once the hypervisor patch is applied. */
#ifndef __HYPERVISOR_v4v_op
#define __HYPERVISOR_v4v_op                 43
#endif

/*
 * Magic numbers. The ring magic is written by the guest before registration;
 * the ring-data magic by the guest before V4VOP_notify.
 */
#define V4V_RING_MAGIC                      0xa822f72bb0b9d8ccULL
#define V4V_RING_DATA_MAGIC                 0x45fe852220b801d4ULL

/* Message types (struct v4v_ring_message_header.message_type). */
#define V4V_PROTO_DGRAM                     0x3c2c1db8U
#define V4V_PROTO_STREAM                    0x70f6a8e5U

/* Wildcards: any domain (== DOMID_INVALID), any port. */
#define V4V_DOMID_ANY                       DOMID_INVALID
#define V4V_PORT_ANY                        0U

/*
 * Rings: the data area length is a multiple of V4V_RING_ALIGN, and messages
 * start on V4V_RING_ALIGN boundaries. A writer always leaves at least one
 * V4V_RING_ALIGN slot free, so rx_ptr == tx_ptr means empty, never full.
 */
#define V4V_RING_ALIGN                      16U
#define V4V_ROUNDUP(a)                      ((((a) + 15U) | 15U) ^ 15U)
#define V4V_RING_HEADER_SIZE                64U
#define V4V_MESSAGE_HEADER_SIZE             16U
#define V4V_MIN_RING_LEN                    48U
#define V4V_MAX_RING_LEN                    (16U << 20)
/* Largest payload any ring can hold: header and free slot taken out. */
#define V4V_MAX_MESSAGE_SIZE                (V4V_MAX_RING_LEN - 32U)

/* Limits enforced by the hypervisor, also reported by V4VOP_info. */
#define V4V_MAX_IOV                         128U
#define V4V_MAX_NOTIFY                      256U
#define V4V_MAX_WAITERS                     32U
#define V4V_DEFAULT_MAX_RINGS               128U
#define V4V_MAX_RINGS_LIMIT                 4096U
/*
 * Pages a domain's rings may hold mapped (header and data area of each, the
 * same page counted once per ring that covers it): 64 MiB worth by default,
 * changed by the hardware domain with V4VOP_config up to 4 GiB worth.
 */
#define V4V_DEFAULT_MAX_RING_PAGES          16384U
#define V4V_MAX_RING_PAGES_LIMIT            (1U << 20)
#define V4V_MAX_RULES                       1024U

/* Ring-data entry flags, filled in by V4VOP_notify. */
#define V4V_RING_DATA_F_EMPTY               (1U << 0)
#define V4V_RING_DATA_F_EXISTS              (1U << 1)
#define V4V_RING_DATA_F_PENDING             (1U << 2)
#define V4V_RING_DATA_F_SUFFICIENT          (1U << 3)

/* Stream header flags (struct v4v_stream_header.flags). */
#define V4V_SHF_SYN                         (1U << 0)
#define V4V_SHF_ACK                         (1U << 1)
#define V4V_SHF_RST                         (1U << 2)
#define V4V_SHF_PING                        (1U << 8)
#define V4V_SHF_PONG                        (1U << 9)

/* V4VOP_tables_del position meaning "every rule". */
#define V4VTABLES_DEL_ALL                   0xffffffffU

/* All padding fields must be zero; the hypervisor refuses others (-EINVAL). */

typedef struct v4v_iov {
    uint64_t iov_base;          /* guest virtual address */
    uint32_t iov_len;
    uint32_t pad;
} v4v_iov_t;
DEFINE_XEN_GUEST_HANDLE(v4v_iov_t);

typedef struct v4v_addr {
    uint32_t port;              /* V4V_PORT_ANY matches any in rules */
    domid_t domain;             /* V4V_DOMID_ANY matches any in rules */
    uint16_t pad;
} v4v_addr_t;
DEFINE_XEN_GUEST_HANDLE(v4v_addr_t);

typedef struct v4v_ring_id {
    v4v_addr_t addr;            /* the receiving domain and port */
    domid_t partner;            /* the only domain that may send, or ANY */
    uint16_t pad;
} v4v_ring_id_t;

typedef struct v4v_send_addr {
    v4v_addr_t src;
    v4v_addr_t dst;
} v4v_send_addr_t;
DEFINE_XEN_GUEST_HANDLE(v4v_send_addr_t);

/*
 * The ring header, at the start of a page-aligned region of the owner's
 * memory; the data area follows it. The owner writes magic, id and len
 * before registering and afterwards only rx_ptr. The hypervisor writes
 * id.addr.domain (at registration) and tx_ptr; it reads rx_ptr and treats
 * whatever it finds there as untrusted.
 */
typedef struct v4v_ring {
    uint64_t magic;             /* V4V_RING_MAGIC */
    v4v_ring_id_t id;
    uint32_t len;               /* data area bytes, multiple of 16 */
    uint32_t rx_ptr;            /* next byte to read; written by the owner */
    uint32_t tx_ptr;            /* next byte to write; written by Xen */
    uint8_t reserved[32];
    uint8_t ring[XEN_FLEX_ARRAY_DIM];
} v4v_ring_t;
DEFINE_XEN_GUEST_HANDLE(v4v_ring_t);

/*
 * Every message in a ring starts with this header, on a 16-byte boundary.
 * len counts the header too; the payload follows it, wrapping at the end of
 * the data area; the next message starts at the next 16-byte boundary.
 */
typedef struct v4v_ring_message_header {
    uint32_t len;
    uint32_t message_type;
    v4v_addr_t source;          /* the sending domain and its port */
    uint8_t data[XEN_FLEX_ARRAY_DIM];
} v4v_ring_message_header_t;

/*
 * One ring queried by V4VOP_notify. The caller fills ring and
 * space_required; the hypervisor fills flags and max_message_size (the
 * largest payload the ring could ever take, 0 when it does not exist).
 */
typedef struct v4v_ring_data_ent {
    v4v_addr_t ring;
    uint16_t flags;
    uint16_t pad;
    uint32_t space_required;
    uint32_t max_message_size;
} v4v_ring_data_ent_t;

typedef struct v4v_ring_data {
    uint64_t magic;             /* V4V_RING_DATA_MAGIC */
    uint32_t nent;
    uint32_t pad;
    uint64_t reserved[4];
    v4v_ring_data_ent_t data[XEN_FLEX_ARRAY_DIM];
} v4v_ring_data_t;
DEFINE_XEN_GUEST_HANDLE(v4v_ring_data_t);

/* Filled in by V4VOP_info. */
typedef struct v4v_info {
    uint64_t ring_magic;        /* V4V_RING_MAGIC */
    uint64_t data_magic;        /* V4V_RING_DATA_MAGIC */
    evtchn_port_t evtchn;       /* the caller's V4V event channel */
    domid_t domid;              /* the caller's own domain id */
    uint16_t pad;
    uint32_t max_rings;         /* rings the caller may register */
    uint32_t nr_rings;          /* rings the caller has registered */
    uint32_t max_ring_len;      /* V4V_MAX_RING_LEN */
    uint32_t max_iov;           /* V4V_MAX_IOV */
    uint32_t max_notify;        /* V4V_MAX_NOTIFY */
    uint32_t max_waiters;       /* V4V_MAX_WAITERS */
    uint32_t max_message_size;  /* V4V_MAX_MESSAGE_SIZE */
    uint32_t max_rules;         /* V4V_MAX_RULES */
    uint32_t max_ring_pages;    /* ring pages the caller may hold mapped */
    uint32_t nr_ring_pages;     /* ring pages the caller holds mapped */
} v4v_info_t;
DEFINE_XEN_GUEST_HANDLE(v4v_info_t);

/* Argument of V4VOP_config. */
typedef struct v4v_config {
    domid_t domain;
    uint16_t pad;
    uint32_t max_rings;         /* 0 .. V4V_MAX_RINGS_LIMIT */
    uint32_t max_ring_pages;    /* 0 (unchanged) .. V4V_MAX_RING_PAGES_LIMIT */
} v4v_config_t;
DEFINE_XEN_GUEST_HANDLE(v4v_config_t);

/*
 * One rule of the ACL table. A send from src to dst is decided by the first
 * rule whose four fields each equal the send's or are wildcards; when no
 * rule matches, the send is accepted.
 */
typedef struct v4vtables_rule {
    v4v_addr_t src;
    v4v_addr_t dst;
    uint32_t accept;            /* 1 accept, 0 reject */
} v4vtables_rule_t;
DEFINE_XEN_GUEST_HANDLE(v4vtables_rule_t);

typedef struct v4vtables_list {
    uint32_t start_rule;        /* in: 0-based index of the first rule */
    uint32_t nb_rules;          /* in: room in rules[]; out: rules written */
    v4vtables_rule_t rules[XEN_FLEX_ARRAY_DIM];
} v4vtables_list_t;
DEFINE_XEN_GUEST_HANDLE(v4vtables_list_t);

/* Header of every V4V_PROTO_STREAM message, before its payload. */
typedef struct v4v_stream_header {
    uint32_t flags;             /* V4V_SHF_* */
    uint32_t conid;
} v4v_stream_header_t;

/*
 * HYPERVISOR_v4v_op(cmd, arg1, arg2, arg3, arg4)
 *
 * Every op returns -ENOSYS when V4V is not enabled ("v4v=1" on Xen's command
 * line), and -EINVAL for arg3 or arg4 above 0xffffffff (the registers are
 * taken whole, never truncated), an unknown cmd (upper bits set included) or
 * a non-zero argument the op reserves (listed as 0 or NULL below). -EFAULT means a guest address could
 * not be read or written. Checks are made in the order listed.
 */

/*
 * V4VOP_register_ring(v4v_ring_t *ring, NULL, 0, 0)
 *
 * Registers the ring whose header is at the guest virtual address 'ring' in
 * the caller's current address space. The hypervisor translates and pins the
 * pages itself. Its id is id.addr.port (not 0) and id.partner; the hypervisor
 * writes the caller's domid into id.addr.domain. A new ring starts from the
 * guest's tx_ptr when that is in range and aligned, otherwise from rx_ptr
 * rounded up. Registering an id that is registered already moves the ring to
 * the new memory and keeps the hypervisor's tx_ptr.
 *  -EINVAL     ring not page aligned; bad magic; pad not zero; port 0; partner
 *              neither a domain id nor V4V_DOMID_ANY; len not a multiple of
 *              16, below V4V_MIN_RING_LEN or above V4V_MAX_RING_LEN
 *  -EPERM      id.addr.domain neither the caller nor DOMID_SELF
 *  -EFAULT     the header or data area is not mapped writable
 *  -EEXIST     the id is registered with a different len
 *  -ENOSPC     the caller has max_rings rings already, or its rings would
 *              hold more than max_ring_pages pages mapped (a ring moving to
 *              new memory holds both while it moves)
 *  -ENOMEM     the hypervisor is out of memory
 */
#define V4VOP_register_ring                 1

/*
 * V4VOP_unregister_ring(v4v_ring_t *ring, NULL, 0, 0)
 *
 * Unregisters the caller's ring with the id found in the header at 'ring'.
 * Domains waiting for space on it are signalled.
 *  -EINVAL     ring not page aligned
 *  -ENOENT     the caller has no ring with that id
 */
#define V4VOP_unregister_ring               2

/*
 * V4VOP_notify(v4v_ring_data_t *data or NULL, NULL, 0, 0)
 *
 * First wakes (signals) every domain waiting on one of the caller's rings
 * whose request now fits. Then, for each entry of 'data', finds the ring the
 * caller would send to (as V4VOP_sendv does; an entry the ACL table would
 * reject, asked as for a send from port 0, reads as no ring and queues
 * nothing) and sets EXISTS, EMPTY, and
 * SUFFICIENT when space_required bytes of payload fit now; otherwise queues
 * the caller to be signalled when they do and sets PENDING (not when the
 * ring's waiter queue is full, or space_required could never fit).
 *  -EINVAL     bad magic; pad not zero
 *  -E2BIG      nent above V4V_MAX_NOTIFY
 */
#define V4VOP_notify                        4

/*
 * V4VOP_sendv(v4v_send_addr_t *addr, v4v_iov_t *iov, uint32_t niov,
 *             uint32_t message_type)
 *
 * Sends one message, the concatenation of the iovs, from (caller,
 * addr->src.port) to addr->dst. Looks for the destination's ring registered
 * for the caller first, then for V4V_DOMID_ANY. All or nothing: either the
 * whole message is in the ring or tx_ptr and the messages are unchanged (on
 * a fault part-way through the payload, the free space it reached is zeroed).
 * Returns the payload length.
 *  -EINVAL     pad not zero; dst.domain is V4V_DOMID_ANY; dst.port is 0
 *  -EPERM      src.domain neither the caller nor DOMID_SELF
 *  -E2BIG      niov above V4V_MAX_IOV
 *  -EMSGSIZE   total length above V4V_MAX_MESSAGE_SIZE
 *  -EACCES     the ACL table rejects the send
 *  -ECONNREFUSED no such domain, or no ring for the caller at that port
 *  -EMSGSIZE   the message could never fit the ring
 *  -EAGAIN     not enough space now; the caller will be signalled when there
 *              is (check again with V4VOP_notify)
 *  -EBUSY      not enough space now, and the ring's waiter queue is full:
 *              the caller is not queued
 */
#define V4VOP_sendv                         5

/*
 * V4VOP_info(v4v_info_t *info, NULL, 0, 0)
 *
 * Fills in 'info'. Allocates the caller's V4V event channel on first use: a
 * Xen-attached port of the caller's, to which it binds an interdomain
 * channel (remote domain itself, remote port info->evtchn). The guest cannot
 * close it; it lasts until the domain is destroyed or soft reset.
 *  -ENOMEM     no event channel could be allocated
 */
#define V4VOP_info                          6

/*
 * V4VOP_config(v4v_config_t *config, NULL, 0, 0)
 *
 * Sets how many rings config->domain may register, and (unless
 * max_ring_pages is 0) how many pages they may hold mapped. Rings it holds
 * above the new limits stay registered.
 *  -EPERM      the caller is not the hardware domain
 *  -EINVAL     pad not zero; max_rings above V4V_MAX_RINGS_LIMIT;
 *              max_ring_pages above V4V_MAX_RING_PAGES_LIMIT
 *  -ESRCH      no such domain
 */
#define V4VOP_config                        7

/*
 * V4VOP_tables_add(v4vtables_rule_t *rule, NULL, uint32_t position, 0)
 *
 * Inserts 'rule' before the rule at 'position' (1-based); 0 or a position
 * past the end appends.
 *  -EPERM      the caller is not the hardware domain
 *  -EINVAL     pad not zero; accept neither 0 nor 1
 *  -ENOSPC     the table has V4V_MAX_RULES rules
 */
#define V4VOP_tables_add                    8

/*
 * V4VOP_tables_del(v4vtables_rule_t *rule or NULL, NULL, uint32_t position, 0)
 *
 * With a rule, deletes the first rule equal to it (position must be 0). With
 * NULL, deletes the rule at 'position' (1-based), or every rule when
 * position is V4VTABLES_DEL_ALL.
 *  -EPERM      the caller is not the hardware domain
 *  -EINVAL     pad not zero; accept neither 0 nor 1; NULL with position 0
 *  -ENOENT     no equal rule, or position past the end
 */
#define V4VOP_tables_del                    9

/*
 * V4VOP_tables_list(v4vtables_list_t *list, NULL, 0, 0)
 *
 * Copies up to list->nb_rules rules, from index list->start_rule, into
 * list->rules, and sets list->nb_rules to the number copied. Returns the
 * number of rules in the table.
 *  -EPERM      the caller is not the hardware domain
 *  -EINVAL     nb_rules above V4V_MAX_RULES
 */
#define V4VOP_tables_list                   10

#endif /* __XEN_PUBLIC_V4V_H__ */

/*
 * Local variables:
 * mode: C
 * c-file-style: "BSD"
 * c-basic-offset: 4
 * tab-width: 4
 * indent-tabs-mode: nil
 * End:
 */
