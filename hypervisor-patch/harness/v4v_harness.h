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
/* Soft reset (domain_soft_reset): V4V forgets the domain's rings and waits. */
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

/*
 * The same with the registers as a 64-bit guest passes them: cmd, arg3 and
 * arg4 are full unsigned longs.
 */
long v4vh_hypercall_raw(uint16_t caller, unsigned long cmd, void *arg1,
                        void *arg2, unsigned long arg3, unsigned long arg4);

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
/*
 * The guest's own event channel operations on its ports (1..63, lowest free
 * first): allocate one (returns the port), close one (-EINVAL for a free or
 * Xen-attached port, as EVTCHNOP_close), reset all it may close
 * (EVTCHNOP_reset). v4vh_evtchn_hits: signals that reached 'port' since it
 * was allocated.
 */
int v4vh_evtchn_alloc(uint16_t domid);
int v4vh_evtchn_close(uint16_t domid, unsigned int port);
int v4vh_evtchn_reset(uint16_t domid);
long v4vh_evtchn_hits(uint16_t domid, unsigned int port);
/* Locks currently held (0 outside a hypercall). */
unsigned int v4vh_locks_held(void);
/* Mappings (vmap) currently held. */
size_t v4vh_mappings(void);
/* List entries v4v.c has visited so far (a measure of the work done). */
unsigned long v4vh_list_steps(void);
/*
 * Make the n-th copy from guest memory from now (1 = the next) fault half
 * way, as a page unmapped by another vCPU would; 0 disables.
 */
void v4vh_fail_copy(unsigned int n);
/* Make the n-th vmap from now fail (1 = the next); 0 disables. */
void v4vh_fail_vmap(unsigned int n);

/*
 * Preemption: v4v.c calls 'fn' each time it reads or writes guest memory
 * (V4VH_POINT_COPY_*: a copy_{from,to}_guest at 'addr') or translates a page
 * of a ring (V4VH_POINT_RING_PAGE: the page at 'addr'). The hook may scribble
 * on guest memory; when 'lock_free' is set (the interrupted CPU holds only
 * v4v_lock for reading) it may also issue hypercalls, which run as another
 * CPU, as ops by another vCPU would. Not called from within the hook. NULL
 * disables (so does v4vh_reset).
 */
#define V4VH_POINT_COPY_FROM    1
#define V4VH_POINT_COPY_TO      2
#define V4VH_POINT_RING_PAGE    3
typedef void v4vh_preempt_fn(unsigned int point, const void *addr,
                             int lock_free, void *arg);
void v4vh_set_preempt(v4vh_preempt_fn *fn, void *arg);

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

/* Call fn for every registered ring: owner, header (its address), len. */
typedef void v4vh_ring_fn(uint16_t owner, void *hdr, uint32_t len, void *arg);
void v4vh_for_each_ring(v4vh_ring_fn *fn, void *arg);

/*
 * Check, between hypercalls, what must always hold (abort otherwise): no
 * lock held; every list agrees with its counter; each ring's tx aligned and
 * in range and its pages those at its address; page references, page by
 * page, exactly the registered rings' coverage; one mapping per ring; the
 * allocations exactly the domains, rings and waiters that exist.
 */
void v4vh_check_invariants(void);

/*
 * Self-test of the lock rules: call a function of v4v.c without the lock it
 * requires (or with one it must not hold), on domid's ring at 'port' (partner
 * ANY). The process must abort (a lock assertion or a shim check).
 */
#define V4VH_BREAK_FIND_RING_NO_L2      0
#define V4VH_BREAK_RING_RX_NO_L3        1
#define V4VH_BREAK_TEARDOWN_READ_L1     2
#define V4VH_BREAK_SIGNAL_UNDER_L2      3
void v4vh_break_lock_rule(unsigned int which, uint16_t domid, uint32_t port);

#ifdef __cplusplus
}
#endif

#endif /* V4V_HARNESS_H */
