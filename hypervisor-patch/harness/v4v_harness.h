/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * v4v_harness.h: run the hypervisor's xen/common/v4v.c in userspace.
 *
 * The harness (v4v_harness.c) includes ../xen/common/v4v.c unmodified, with
 * shim/ providing the Xen primitives. One process is one machine: domains
 * are created and destroyed by the caller, 'guest memory' is this process's
 * memory, and guest handles are plain pointers. Not thread-safe.
 *
 * Build: compile v4v_harness.c with include directories shim, shim/public and
 * ../xen/include (in that order) and -DCONFIG_V4V; C99 or later with GNU
 * extensions (gnu99/gnu11). All functions return 0 or a negative errno
 * (Xen's values, equal to Linux's) unless stated otherwise.
 */
#ifndef V4V_HARNESS_H
#define V4V_HARNESS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Forget all domains, guest memory and the ACL table; V4V enabled. */
int v4vh_reset(void);

/* Create / destroy a domain (0 is the hardware domain; ids < 0x7FF0). */
int v4vh_domain_create(uint16_t domid);
int v4vh_domain_destroy(uint16_t domid);
/* domain_soft_reset() (kexec in the guest): its ports closed, then v4v_soft_reset. */
int v4vh_domain_soft_reset(uint16_t domid);

/*
 * HYPERVISOR_v4v_op(cmd, arg1, arg2, arg3, arg4) issued by domain 'caller'.
 * Returns what the hypervisor returns; -ESRCH if 'caller' does not exist.
 * Aborts the process if the call returns with any lock held.
 */
long v4vh_hypercall(uint16_t caller, int cmd, void *arg1, void *arg2,
                    uint32_t arg3, uint32_t arg4);

/* 1 if the domain's V4V event channel was signalled since the last call. */
int v4vh_event_test_and_clear(uint16_t domid);

/*
 * Make [base, base + len) guest memory of 'domid': only such pages can be
 * registered as rings (others give -EFAULT). base and len page aligned.
 * Unmapping memory the hypervisor still holds references to gives -EBUSY.
 */
int v4vh_guest_map(uint16_t domid, void *base, size_t len);
int v4vh_guest_unmap(uint16_t domid, void *base, size_t len);

/* Page references currently held: 0 once every ring is gone. */
size_t v4vh_pages_held(void);
/*
 * Log-dirty mode of a domain (as during live migration) and what V4V marked
 * dirty in it: v4vh_dirty_marks(domid, base, page) is how many times the
 * page'th page of the guest memory at 'base' was marked (0 after
 * v4vh_guest_map); -1 for an unknown region.
 */
int v4vh_set_log_dirty(uint16_t domid, int on);
long v4vh_dirty_marks(uint16_t domid, void *base, unsigned long page);
/* Xen's is_shutting_down (a suspend for save or migration included). */
int v4vh_set_shutting_down(uint16_t domid, int on);

/* Run the debug-key handler ('4'), printing to stderr. */
void v4vh_debug_dump(void);

/* --- extras for tests --- */

/*
 * Strict copies (off by default): copy_from/to_guest succeed only inside the
 * calling domain's guest memory, as on real Xen. Off, any pointer above 4096
 * is readable, so tests may pass their own stack and heap as arguments.
 */
void v4vh_set_strict_copies(int strict);
/* Boot option v4v=<bool> (1 after v4vh_reset). */
void v4vh_set_enabled(int enabled);
/* Allocations (xmalloc/xzalloc) not yet freed. */
size_t v4vh_allocations(void);
/* Make the n-th allocation from now fail (1 = the next); 0 disables. */
void v4vh_fail_alloc(unsigned int n);
/* Make event channel allocation fail while set. */
void v4vh_fail_evtchn(int fail);
/* Locks currently held (0 outside a hypercall). */
unsigned int v4vh_locks_held(void);
/* Mappings (vmap) currently held. */
size_t v4vh_mappings(void);

/*
 * Counts read from v4v.c's own structures (and cross-checked there: a
 * ring or waiter list that disagrees with its counter aborts the process).
 */
/* Rings registered, over all domains. */
unsigned long v4vh_ring_count(void);
/* Senders queued waiting for space, over all rings. */
unsigned long v4vh_waiter_count(void);

/*
 * XSM. v4v.c calls the V4V hooks of <xsm/xsm.h>; the harness answers as
 * Xen's dummy module does (everything allowed, except that admin requires
 * the hardware domain, 0) unless told to deny. Each hook aborts the process
 * if called with a default action other than the one Xen's dummy.h asserts
 * or with more than one V4V lock (the global one) held.
 */
#define V4VH_XSM_ENABLE             (1U << 0)   /* (d) */
#define V4VH_XSM_REGISTER_SINGLE    (1U << 1)   /* (d, partner) */
#define V4VH_XSM_REGISTER_ANY       (1U << 2)   /* (d) */
#define V4VH_XSM_SEND               (1U << 3)   /* (d, destination) */
#define V4VH_XSM_ADMIN              (1U << 4)   /* (d) */
#define V4VH_XSM_ALL                0x1fU

/*
 * The hooks in 'hooks' return 'err' (negative) when their subject domain is
 * 'domid', or any domain for domid < 0. hooks 0 allows everything again (so
 * does v4vh_reset).
 */
void v4vh_xsm_deny(unsigned int hooks, int domid, int err);
/* Calls of the hooks in 'hooks' since the last v4vh_reset. */
unsigned long v4vh_xsm_calls(unsigned int hooks);
/*
 * The most recent hook call: its V4VH_XSM_* bit (0 if none since the last
 * reset), subject domid and target domid (-1 for hooks without a target).
 */
unsigned int v4vh_xsm_last(int *subject, int *target);

#ifdef __cplusplus
}
#endif

#endif /* V4V_HARNESS_H */
