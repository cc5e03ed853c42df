/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * v4v_shim.h: the Xen primitives xen/common/v4v.c uses, implemented in
 * userspace for the test harness (v4v_harness.c), which compiles v4v.c
 * unmodified with this directory first on the include path.
 *
 * Every lock, page reference, mapping and allocation is counted, and misuse
 * (taking a lock twice, releasing one not held, dropping a reference not
 * taken) aborts the process loudly. Guest handles are plain pointers of this
 * process: copies through them fail (-EFAULT) for addresses below 4096.
 */
#ifndef V4V_SHIM_H
#define V4V_SHIM_H

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "public/xen.h"
#include "public/event_channel.h"

/* --- harness bookkeeping (v4v_harness.c) --- */

void v4vh_fatal(const char *file, int line, const char *what)
    __attribute__((noreturn));
void *v4vh_alloc(size_t size, bool zero);
void *v4vh_alloc_array(size_t size, unsigned long n, bool zero);
void v4vh_free(void *p);
void v4vh_lock_acquired(void);
void v4vh_lock_released(void);
unsigned long v4vh_copy_from_guest(void *dst, const void *src,
                                   unsigned long n);
unsigned long v4vh_copy_to_guest(void *dst, const void *src,
                                 unsigned long n);
bool v4vh_guest_okay(const void *p, unsigned long n);

/* --- compiler and library --- */

#define cf_check
#define __init
#define __read_mostly
#define __must_check
#define likely(x)           __builtin_expect(!!(x), 1)
#define unlikely(x)         __builtin_expect(!!(x), 0)
#define __initcall(fn) \
    int (*const v4vh_initcall_ ## fn)(void) = (fn)
#define boolean_param(name, var) \
    bool *const v4vh_param_ ## var = &(var)

#define XENLOG_INFO         ""
#define XENLOG_WARNING      ""
#define XENLOG_ERR          ""
#define printk(fmt, ...)    fprintf(stderr, fmt, ## __VA_ARGS__)

#define ASSERT(p) \
    do { if ( !(p) ) v4vh_fatal(__FILE__, __LINE__, #p); } while ( 0 )
#define ASSERT_UNREACHABLE() v4vh_fatal(__FILE__, __LINE__, "unreachable")
#define BUG_ON(p)           ASSERT(!(p))

#define PAGE_SHIFT          12
#define PAGE_SIZE           (1UL << PAGE_SHIFT)
#define PAGE_MASK           (~(PAGE_SIZE - 1))
#define PFN_UP(x)           (((x) + PAGE_SIZE - 1) >> PAGE_SHIFT)

#define ACCESS_ONCE(x)      (*(volatile __typeof__(x) *)&(x))
#define read_atomic(p)      (*(volatile __typeof__(*(p)) *)(p))
#define write_atomic(p, x)  (*(volatile __typeof__(*(p)) *)(p) = (x))
#define smp_mb()            __atomic_thread_fence(__ATOMIC_SEQ_CST)
#define smp_wmb()           __atomic_thread_fence(__ATOMIC_RELEASE)
#define smp_rmb()           __atomic_thread_fence(__ATOMIC_ACQUIRE)

/* Like Xen's: both operands must have the same type. */
#define min(x, y) ({                        \
    const __typeof__(x) _x = (x);           \
    const __typeof__(y) _y = (y);           \
    (void)(&_x == &_y);                     \
    _x < _y ? _x : _y; })
#define max(x, y) ({                        \
    const __typeof__(x) _x = (x);           \
    const __typeof__(y) _y = (y);           \
    (void)(&_x == &_y);                     \
    _x > _y ? _x : _y; })

typedef struct { int counter; } atomic_t;
#define atomic_read(v)      __atomic_load_n(&(v)->counter, __ATOMIC_SEQ_CST)
#define atomic_inc(v)       __atomic_add_fetch(&(v)->counter, 1, __ATOMIC_SEQ_CST)
#define atomic_sub(i, v)    __atomic_sub_fetch(&(v)->counter, (i), __ATOMIC_SEQ_CST)

/* --- lists (Xen's <xen/list.h> API subset) --- */

struct list_head {
    struct list_head *next, *prev;
};

#define LIST_HEAD_INIT(name) { &(name), &(name) }
#define LIST_HEAD(name) struct list_head name = LIST_HEAD_INIT(name)

static inline void INIT_LIST_HEAD(struct list_head *l)
{
    l->next = l->prev = l;
}

static inline void list_link(struct list_head *n, struct list_head *prev,
                             struct list_head *next)
{
    next->prev = n;
    n->next = next;
    n->prev = prev;
    prev->next = n;
}

static inline void list_add_tail(struct list_head *n, struct list_head *head)
{
    list_link(n, head->prev, head);
}

static inline void list_del(struct list_head *e)
{
    ASSERT(e->next && e->prev && e->next->prev == e && e->prev->next == e);
    e->next->prev = e->prev;
    e->prev->next = e->next;
    e->next = e->prev = NULL;
}

static inline void list_move_tail(struct list_head *e, struct list_head *head)
{
    list_del(e);
    list_add_tail(e, head);
}

static inline bool list_empty(const struct list_head *l)
{
    return l->next == l;
}

#define container_of(ptr, type, member) \
    ((type *)((char *)(ptr) - offsetof(type, member)))
#define list_entry(ptr, type, member) container_of(ptr, type, member)

/* Entries visited by list walks: the work a path does, for the tests. */
extern unsigned long v4vh_list_visits;

#define list_for_each_entry(pos, head, member)                          \
    for ( (pos) = list_entry((head)->next, __typeof__(*(pos)), member); \
          &(pos)->member != (head) && (v4vh_list_visits++, 1);          \
          (pos) = list_entry((pos)->member.next, __typeof__(*(pos)), member) )

#define list_for_each_entry_safe(pos, n, head, member)                  \
    for ( (pos) = list_entry((head)->next, __typeof__(*(pos)), member), \
          (n) = list_entry((pos)->member.next, __typeof__(*(pos)), member); \
          &(pos)->member != (head) && (v4vh_list_visits++, 1);          \
          (pos) = (n),                                                  \
          (n) = list_entry((n)->member.next, __typeof__(*(n)), member) )

/*
 * --- locks: single-threaded, but tracked per simulated CPU (v4vh_cpu), so
 * that an op by "another vCPU" may run at a point where the interrupted one
 * holds no lock that would make it spin. Misuse is fatal. ---
 */

extern unsigned int v4vh_cpu;           /* the CPU running v4v.c now */

typedef struct { int held; unsigned int cpu; } spinlock_t;
typedef struct { int readers; int writer; unsigned int reader_cpus;
                 unsigned int writer_cpu; } rwlock_t;

#define DEFINE_SPINLOCK(l)  spinlock_t l = { 0, 0 }
#define DEFINE_RWLOCK(l)    rwlock_t l = { 0, 0, 0, 0 }

static inline void spin_lock_init(spinlock_t *l)
{
    l->held = 0;
}

static inline void spin_lock(spinlock_t *l)
{
    if ( l->held && l->cpu == v4vh_cpu )
        v4vh_fatal(__FILE__, __LINE__, "spin_lock: already held (deadlock)");
    if ( l->held )
        v4vh_fatal(__FILE__, __LINE__,
                   "spin_lock: held by an interrupted CPU (no lock-free point)");
    l->held = 1;
    l->cpu = v4vh_cpu;
    v4vh_lock_acquired();
}

static inline void spin_unlock(spinlock_t *l)
{
    if ( !l->held || l->cpu != v4vh_cpu )
        v4vh_fatal(__FILE__, __LINE__, "spin_unlock: not held");
    l->held = 0;
    v4vh_lock_released();
}

/* Held by this CPU: what the lock assertions of v4v.c check. */
static inline bool spin_is_locked(const spinlock_t *l)
{
    return l->held && l->cpu == v4vh_cpu;
}

/* Recursive read locking can deadlock Xen's fair rwlocks: refused too. */
static inline void read_lock(rwlock_t *l)
{
    if ( l->writer || (l->reader_cpus & (1U << v4vh_cpu)) )
        v4vh_fatal(__FILE__, __LINE__, "read_lock: already held");
    l->readers++;
    l->reader_cpus |= 1U << v4vh_cpu;
    v4vh_lock_acquired();
}

static inline void read_unlock(rwlock_t *l)
{
    if ( l->readers <= 0 || !(l->reader_cpus & (1U << v4vh_cpu)) )
        v4vh_fatal(__FILE__, __LINE__, "read_unlock: not held");
    l->readers--;
    l->reader_cpus &= ~(1U << v4vh_cpu);
    v4vh_lock_released();
}

static inline void write_lock(rwlock_t *l)
{
    if ( l->writer || l->readers )
        v4vh_fatal(__FILE__, __LINE__, "write_lock: already held");
    l->writer = 1;
    l->writer_cpu = v4vh_cpu;
    v4vh_lock_acquired();
}

static inline void write_unlock(rwlock_t *l)
{
    if ( !l->writer || l->writer_cpu != v4vh_cpu )
        v4vh_fatal(__FILE__, __LINE__, "write_unlock: not held");
    l->writer = 0;
    v4vh_lock_released();
}

static inline bool rw_is_write_locked(const rwlock_t *l)
{
    return l->writer && l->writer_cpu == v4vh_cpu;
}

static inline bool rw_is_locked(const rwlock_t *l)
{
    return rw_is_write_locked(l) || (l->reader_cpus & (1U << v4vh_cpu));
}

/* --- allocation --- */

#define xmalloc(t)              ((t *)v4vh_alloc(sizeof(t), false))
#define xzalloc(t)              ((t *)v4vh_alloc(sizeof(t), true))
#define xmalloc_array(t, n) \
    ((t *)v4vh_alloc_array(sizeof(t), (unsigned long)(n), false))
#define xzalloc_array(t, n) \
    ((t *)v4vh_alloc_array(sizeof(t), (unsigned long)(n), true))
#define xfree(p)                v4vh_free(p)

/* --- domains --- */

struct v4v_domain;

struct domain {
    domid_t domain_id;
    struct v4v_domain *v4v;
    bool is_shutting_down;
    /* harness only */
    bool log_dirty;
    /* the domain's event channel ports, 1 .. 63 */
#define V4VH_NR_PORTS 64
    uint8_t evtchn_state[V4VH_NR_PORTS];        /* 0 free, 1 in use */
    bool evtchn_xen[V4VH_NR_PORTS];             /* Xen-attached */
    unsigned long evtchn_hits[V4VH_NR_PORTS];   /* signals that reached it */
    bool evtchn_signalled;
};

struct vcpu {
    struct domain *domain;
};

extern struct vcpu *v4vh_current;
#define current v4vh_current

static inline bool is_hardware_domain(const struct domain *d)
{
    return d->domain_id == 0;
}

/*
 * --- XSM: the V4V hooks, implemented by the harness like Xen's dummy
 * module (xsm/dummy.h) unless a test makes them deny ---
 */

typedef enum {
    XSM_HOOK,
    XSM_DM_PRIV,
    XSM_TARGET,
    XSM_PRIV,
    XSM_XS_PRIV,
    XSM_OTHER,
} xsm_default_t;

int xsm_v4v_enable(xsm_default_t def, const struct domain *d);
int xsm_v4v_register_single(xsm_default_t def, const struct domain *d,
                            const struct domain *t);
int xsm_v4v_register_any(xsm_default_t def, const struct domain *d);
int xsm_v4v_send(xsm_default_t def, const struct domain *d,
                 const struct domain *t);
int xsm_v4v_admin(xsm_default_t def, const struct domain *d);

/* --- event channels --- */

int evtchn_alloc_unbound(evtchn_alloc_unbound_t *alloc, evtchn_port_t port);
int evtchn_send(struct domain *d, unsigned int port);

typedef void (*xen_event_channel_notification_t)(struct vcpu *v,
                                                 unsigned int port);
int alloc_unbound_xen_event_channel(struct domain *ld, unsigned int lvcpu,
                                    domid_t remote_domid,
                                    xen_event_channel_notification_t fn);
void free_xen_event_channel(struct domain *d, int port);
void notify_via_xen_event_channel(struct domain *ld, int lport);

/* --- memory --- */

typedef struct { unsigned long m; } mfn_t;
#define _mfn(x)     ((mfn_t){ (x) })
#define mfn_x(x)    ((x).m)

struct page_info {
    unsigned long mfn;          /* the page's address >> PAGE_SHIFT */
    unsigned int count;         /* general references */
    unsigned int type_count;    /* writable type references */
    unsigned int dirty;         /* times marked dirty in log-dirty mode */
};

#define page_to_mfn(pg) _mfn((pg)->mfn)

void put_page_and_type(struct page_info *page);
void *vmap(const mfn_t *mfn, unsigned int nr);
void vunmap(const void *va);

/* --- guest access (same element-size semantics as Xen's macros) --- */

#define raw_copy_from_guest(dst, src, n)    v4vh_copy_from_guest(dst, src, n)
#define raw_copy_to_guest(dst, src, n)      v4vh_copy_to_guest(dst, src, n)

#define guest_handle_is_null(hnd)   ((hnd).p == NULL)
#define guest_handle_cast(hnd, type) ({                 \
    type *_x = (hnd).p;                                 \
    (XEN_GUEST_HANDLE_PARAM(type)) { _x };              \
})
#define guest_handle_from_ptr(ptr, type) \
    ((XEN_GUEST_HANDLE_PARAM(type)) { (type *)(ptr) })
#define guest_handle_okay(hnd, nr) \
    v4vh_guest_okay((hnd).p, (unsigned long)(nr) * sizeof(*(hnd).p))

/* Guest addresses as integers: a NULL handle plus an offset is no UB here. */
#define copy_to_guest_offset(hnd, off, ptr, nr) ({              \
    const __typeof__(*(ptr)) *_s = (ptr);                       \
    uintptr_t _d = (uintptr_t)(hnd).p + sizeof(*_s) * (off);    \
    raw_copy_to_guest((void *)_d, _s, sizeof(*_s) * (nr));      \
})
#define copy_from_guest_offset(ptr, hnd, off, nr) ({            \
    __typeof__(*(ptr)) *_d = (ptr);                             \
    uintptr_t _s = (uintptr_t)(hnd).p + sizeof(*_d) * (off);    \
    raw_copy_from_guest(_d, (const void *)_s, sizeof(*_d) * (nr)); \
})
#define copy_to_guest(hnd, ptr, nr)     copy_to_guest_offset(hnd, 0, ptr, nr)
#define copy_from_guest(ptr, hnd, nr)   copy_from_guest_offset(ptr, hnd, 0, nr)

/* --- hypercall and key handler --- */

long do_v4v_op(unsigned long cmd, XEN_GUEST_HANDLE_PARAM(void) arg1,
               XEN_GUEST_HANDLE_PARAM(void) arg2,
               unsigned long raw_arg3, unsigned long raw_arg4);

typedef void (keyhandler_fn_t)(unsigned char key);
void register_keyhandler(unsigned char key, keyhandler_fn_t *fn,
                         const char *desc, bool diagnostic);

#endif /* V4V_SHIM_H */
