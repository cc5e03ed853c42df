/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * v4v_harness.c: the hypervisor's V4V code, run in userspace.
 *
 * xen/common/v4v.c is included as it is; shim/v4v_shim.h provides the Xen
 * primitives it uses. See v4v_harness.h for the API.
 */

#include <v4v_shim.h>

#include "../xen/common/v4v.c"

#include "v4v_harness.h"

#define GUEST_MIN_ADDR 4096UL

struct vcpu *v4vh_current;
unsigned int v4vh_cpu;
unsigned long v4vh_list_visits;

#define NR_CPUS 8

static struct domain *domains[DOMID_FIRST_RESERVED];
static struct vcpu vcpus[DOMID_FIRST_RESERVED];

struct region {
    struct region *next;
    domid_t domid;
    unsigned long base, len;
    struct page_info *pages;
};
static struct region *regions;

static size_t nr_allocs;
static unsigned int fail_alloc_in;
static int fail_evtchn;
static unsigned int locks_held[NR_CPUS];
static unsigned int fail_copy_in, fail_vmap_in;
static v4vh_preempt_fn *preempt_fn;
static void *preempt_arg;
static unsigned int preempt_depth;
static size_t page_refs, type_refs, nr_vmaps;

/* --- shim back end --- */

void v4vh_fatal(const char *file, int line, const char *what)
{
    fprintf(stderr, "V4V HARNESS FATAL: %s:%d: %s\n", file, line, what);
    fflush(stderr);
    abort();
}

void *v4vh_alloc(size_t size, bool zero)
{
    void *p;

    if ( fail_alloc_in && !--fail_alloc_in )
        return NULL;

    p = zero ? calloc(1, size ?: 1) : malloc(size ?: 1);
    if ( !p )
        v4vh_fatal(__FILE__, __LINE__, "out of host memory");
    nr_allocs++;

    return p;
}

void *v4vh_alloc_array(size_t size, unsigned long n, bool zero)
{
    if ( n > SIZE_MAX / size )
        return NULL;

    return v4vh_alloc(size * n, zero);
}

void v4vh_free(void *p)
{
    if ( !p )
        return;
    if ( !nr_allocs )
        v4vh_fatal(__FILE__, __LINE__, "xfree without allocation");
    nr_allocs--;
    free(p);
}

void v4vh_lock_acquired(void)
{
    locks_held[v4vh_cpu]++;
}

void v4vh_lock_released(void)
{
    if ( !locks_held[v4vh_cpu] )
        v4vh_fatal(__FILE__, __LINE__, "lock count underflow");
    locks_held[v4vh_cpu]--;
}

static unsigned int all_locks_held(void)
{
    unsigned int i, n = 0;

    for ( i = 0; i < NR_CPUS; i++ )
        n += locks_held[i];

    return n;
}

/*
 * A point where the CPU running v4v.c touches guest memory: let the test's
 * hook run (guest scribbles, or ops by another vCPU when this CPU holds
 * nothing but v4v_lock for reading, so that such an op cannot need a lock
 * it holds).
 */
static void preempt_point(unsigned int point, const void *addr)
{
    bool lock_free;

    if ( !preempt_fn || preempt_depth || !v4vh_current )
        return;
    lock_free = locks_held[v4vh_cpu] == 1 &&
                (v4v_lock.reader_cpus & (1U << v4vh_cpu));
    preempt_depth++;
    preempt_fn(point, addr, lock_free, preempt_arg);
    preempt_depth--;
}

/*
 * Strict copies: guest accesses must lie inside the calling domain's guest
 * memory (v4vh_guest_map), as on real Xen, instead of anywhere above
 * GUEST_MIN_ADDR. Callers that pass their own stack or heap as arguments
 * (test_harness.c) leave it off.
 */
static int strict_copies;
static int copy_domid = -1;

static struct region *find_region(domid_t domid, unsigned long va);

void v4vh_set_strict_copies(int strict)
{
    strict_copies = strict;
}

static bool in_guest_memory(domid_t domid, unsigned long a, unsigned long n)
{
    while ( n )
    {
        struct region *r = find_region(domid, a);
        unsigned long room;

        if ( !r )
            return false;
        room = r->len - (a - r->base);
        if ( room >= n )
            break;
        a += room;
        n -= room;
    }

    return true;
}

bool v4vh_guest_okay(const void *p, unsigned long n)
{
    unsigned long a = (unsigned long)p;

    if ( !n )
        return true;

    if ( a < GUEST_MIN_ADDR || a + n < a )
        return false;

    return !strict_copies || copy_domid < 0 ||
           in_guest_memory(copy_domid, a, n);
}

unsigned long v4vh_copy_from_guest(void *dst, const void *src,
                                   unsigned long n)
{
    preempt_point(V4VH_POINT_COPY_FROM, src);
    if ( !v4vh_guest_okay(src, n) )
        return n;
    /*
     * memmove: a guest may pass memory that is also a ring (the destination
     * of this very copy), which Xen reaches through two different mappings
     * of the same frames; here both are one address range.
     */
    /* As a fault part-way would on Xen: half copied, the rest not. */
    if ( fail_copy_in && !--fail_copy_in )
    {
        memmove(dst, src, n / 2);
        return n - n / 2;
    }
    if ( n )
        memmove(dst, src, n);

    return 0;
}

unsigned long v4vh_copy_to_guest(void *dst, const void *src, unsigned long n)
{
    preempt_point(V4VH_POINT_COPY_TO, dst);
    if ( !v4vh_guest_okay(dst, n) )
        return n;
    if ( n )
        memmove(dst, src, n);

    return 0;
}

/*
 * Event channels: each domain's ports 1..63, the lowest free one allocated
 * first, as Xen does. A port is a guest's (closable) or Xen-attached (the
 * guest cannot close it). The harness takes the guest to have bound its end
 * of every port at once, so a signal on a port in use reaches it.
 */
static int port_alloc(struct domain *d, bool xen)
{
    unsigned int p;

    if ( fail_evtchn )
        return -ENOSPC;
    for ( p = 1; p < V4VH_NR_PORTS; p++ )
        if ( !d->evtchn_state[p] )
        {
            d->evtchn_state[p] = 1;
            d->evtchn_xen[p] = xen;
            d->evtchn_hits[p] = 0;
            return p;
        }

    return -ENOSPC;
}

static void port_signal(struct domain *d, unsigned int port)
{
    /* v4v.c signals with v4v_lock (L1) held and no other V4V lock. */
    if ( locks_held[v4vh_cpu] != 1 || !rw_is_locked(&v4v_lock) )
        v4vh_fatal(__FILE__, __LINE__,
                   "event channel signalled with a V4V spinlock held");
    if ( port && port < V4VH_NR_PORTS && d->evtchn_state[port] )
    {
        d->evtchn_hits[port]++;
        d->evtchn_signalled = true;
    }
}

int evtchn_alloc_unbound(evtchn_alloc_unbound_t *alloc, evtchn_port_t port)
{
    struct domain *d = alloc->dom < DOMID_FIRST_RESERVED
                       ? domains[alloc->dom] : NULL;
    int rc;

    if ( !d )
        return -ESRCH;
    rc = port_alloc(d, false);
    if ( rc < 0 )
        return rc;
    alloc->port = rc;

    return 0;
}

int evtchn_send(struct domain *d, unsigned int port)
{
    if ( !port || port >= V4VH_NR_PORTS || !d->evtchn_state[port] )
        return -EINVAL;
    port_signal(d, port);

    return 0;
}

int alloc_unbound_xen_event_channel(struct domain *ld, unsigned int lvcpu,
                                    domid_t remote_domid,
                                    xen_event_channel_notification_t fn)
{
    if ( remote_domid != ld->domain_id || lvcpu )
        v4vh_fatal(__FILE__, __LINE__, "unexpected Xen event channel");

    return port_alloc(ld, true);
}

void free_xen_event_channel(struct domain *d, int port)
{
    if ( port <= 0 || port >= V4VH_NR_PORTS || !d->evtchn_state[port] ||
         !d->evtchn_xen[port] )
        v4vh_fatal(__FILE__, __LINE__, "free_xen_event_channel: not ours");
    d->evtchn_state[port] = 0;
    d->evtchn_xen[port] = false;
}

void notify_via_xen_event_channel(struct domain *ld, int lport)
{
    if ( lport <= 0 || lport >= V4VH_NR_PORTS || !ld->evtchn_state[lport] ||
         !ld->evtchn_xen[lport] )
        v4vh_fatal(__FILE__, __LINE__,
                   "notify_via_xen_event_channel: not a Xen port");
    port_signal(ld, lport);
}

static struct region *find_region(domid_t domid, unsigned long va)
{
    struct region *r;

    for ( r = regions; r; r = r->next )
        if ( r->domid == domid && va >= r->base && va - r->base < r->len )
            return r;

    return NULL;
}

struct page_info *v4v_get_ring_page(struct domain *d, unsigned long va);
struct page_info *v4v_get_ring_page(struct domain *d, unsigned long va)
{
    struct region *r;
    struct page_info *pg;

    ASSERT(d == current->domain);
    if ( va & ~PAGE_MASK )
        v4vh_fatal(__FILE__, __LINE__, "ring page not page aligned");

    preempt_point(V4VH_POINT_RING_PAGE, (const void *)va);

    r = find_region(d->domain_id, va);
    if ( !r )
        return NULL;

    pg = &r->pages[(va - r->base) >> PAGE_SHIFT];
    pg->count++;
    pg->type_count++;
    page_refs++;
    type_refs++;

    return pg;
}

bool v4v_log_dirty(const struct domain *d);
bool v4v_log_dirty(const struct domain *d)
{
    return d->log_dirty;
}

void v4v_mark_page_dirty(struct domain *d, struct page_info *pg);
void v4v_mark_page_dirty(struct domain *d, struct page_info *pg)
{
    if ( !d->log_dirty )
        v4vh_fatal(__FILE__, __LINE__, "page marked dirty outside log-dirty mode");
    if ( !pg->count )
        v4vh_fatal(__FILE__, __LINE__, "unreferenced page marked dirty");
    pg->dirty++;
}

int v4vh_set_log_dirty(uint16_t domid, int on)
{
    if ( domid >= DOMID_FIRST_RESERVED || !domains[domid] )
        return -ESRCH;
    domains[domid]->log_dirty = on;
    return 0;
}

int v4vh_set_shutting_down(uint16_t domid, int on)
{
    if ( domid >= DOMID_FIRST_RESERVED || !domains[domid] )
        return -ESRCH;
    domains[domid]->is_shutting_down = on;
    return 0;
}

long v4vh_dirty_marks(uint16_t domid, void *base, unsigned long page)
{
    struct region *r = find_region(domid, (unsigned long)base);

    if ( !r || r->base != (unsigned long)base || page >= r->len >> PAGE_SHIFT )
        return -1;

    return r->pages[page].dirty;
}

void put_page_and_type(struct page_info *pg)
{
    if ( !pg->count || !pg->type_count || !page_refs || !type_refs )
        v4vh_fatal(__FILE__, __LINE__, "page reference underflow");
    pg->count--;
    pg->type_count--;
    page_refs--;
    type_refs--;
}

void *vmap(const mfn_t *mfn, unsigned int nr)
{
    unsigned int i;

    if ( !nr )
        v4vh_fatal(__FILE__, __LINE__, "vmap of nothing");
    if ( fail_vmap_in && !--fail_vmap_in )
        return NULL;
    /* Guest memory is this process's: contiguous frames map as they are. */
    for ( i = 1; i < nr; i++ )
        if ( mfn_x(mfn[i]) != mfn_x(mfn[0]) + i )
            v4vh_fatal(__FILE__, __LINE__, "vmap: frames not contiguous");
    nr_vmaps++;

    return (void *)(mfn_x(mfn[0]) << PAGE_SHIFT);
}

void vunmap(const void *va)
{
    if ( !va || !nr_vmaps )
        v4vh_fatal(__FILE__, __LINE__, "vunmap without vmap");
    nr_vmaps--;
}

void register_keyhandler(unsigned char key, keyhandler_fn_t *fn,
                         const char *desc, bool diagnostic)
{
}

/* --- XSM hooks: Xen's dummy module, unless a test denies --- */

static unsigned int xsm_deny_hooks;
static int xsm_deny_domid = -1;
static int xsm_deny_err;
static unsigned long xsm_calls[5];
static unsigned int xsm_last_hook;
static int xsm_last_subject = -1, xsm_last_target = -1;

/* Bookkeeping common to every hook; returns the injected error or 0. */
static int xsm_hook(unsigned int hook, xsm_default_t def,
                    xsm_default_t expected, const struct domain *d,
                    const struct domain *t)
{
    unsigned int i;

    /* What LINKER_BUG_ON in Xen's dummy.h catches at build time. */
    if ( def != expected )
        v4vh_fatal(__FILE__, __LINE__, "XSM hook with the wrong default");
    /* Hooks may take their own locks: at most v4v_lock (L1) may be held. */
    if ( locks_held[v4vh_cpu] > 1 )
        v4vh_fatal(__FILE__, __LINE__, "XSM hook called under a V4V lock");
    if ( !d || (t && t->domain_id >= DOMID_FIRST_RESERVED) )
        v4vh_fatal(__FILE__, __LINE__, "XSM hook with a bad domain");

    for ( i = 0; !(hook & (1U << i)); i++ )
        continue;
    xsm_calls[i]++;
    xsm_last_hook = hook;
    xsm_last_subject = d->domain_id;
    xsm_last_target = t ? t->domain_id : -1;

    if ( (xsm_deny_hooks & hook) &&
         (xsm_deny_domid < 0 || xsm_deny_domid == d->domain_id) )
        return xsm_deny_err;

    return 0;
}

int xsm_v4v_enable(xsm_default_t def, const struct domain *d)
{
    return xsm_hook(V4VH_XSM_ENABLE, def, XSM_HOOK, d, NULL);
}

int xsm_v4v_register_single(xsm_default_t def, const struct domain *d,
                            const struct domain *t)
{
    if ( !t )
        v4vh_fatal(__FILE__, __LINE__, "register_single without partner");

    return xsm_hook(V4VH_XSM_REGISTER_SINGLE, def, XSM_HOOK, d, t);
}

int xsm_v4v_register_any(xsm_default_t def, const struct domain *d)
{
    return xsm_hook(V4VH_XSM_REGISTER_ANY, def, XSM_HOOK, d, NULL);
}

int xsm_v4v_send(xsm_default_t def, const struct domain *d,
                 const struct domain *t)
{
    if ( !t )
        v4vh_fatal(__FILE__, __LINE__, "send without destination");

    return xsm_hook(V4VH_XSM_SEND, def, XSM_HOOK, d, t);
}

int xsm_v4v_admin(xsm_default_t def, const struct domain *d)
{
    int rc = xsm_hook(V4VH_XSM_ADMIN, def, XSM_OTHER, d, NULL);

    /* The dummy module's rule. */
    return rc ?: is_hardware_domain(d) ? 0 : -EPERM;
}

/* --- API --- */

static void destroy_domain(domid_t domid)
{
    struct domain *d = domains[domid];
    struct region **pr, *r;
    unsigned long i;

    v4v_destroy(d);
    if ( all_locks_held() )
        v4vh_fatal(__FILE__, __LINE__, "lock held after v4v_destroy");

    for ( pr = &regions; (r = *pr); )
    {
        if ( r->domid != domid )
        {
            pr = &r->next;
            continue;
        }
        for ( i = 0; i < r->len >> PAGE_SHIFT; i++ )
            if ( r->pages[i].count || r->pages[i].type_count )
                v4vh_fatal(__FILE__, __LINE__,
                           "page reference held after domain destruction");
        *pr = r->next;
        free(r->pages);
        free(r);
    }

    domains[domid] = NULL;
    free(d);
}

int v4vh_reset(void)
{
    static bool booted;
    unsigned int i;

    if ( !booted )
    {
        booted = true;
        v4vh_initcall_v4v_boot_init();
    }

    for ( i = 0; i < DOMID_FIRST_RESERVED; i++ )
        if ( domains[i] )
            destroy_domain(i);

    /* The partner index is empty: its chunks went with the last ring. */
    for ( i = 0; i < V4V_PARTNER_CHUNKS; i++ )
        if ( v4v_partner_rings[i] )
            v4vh_fatal(__FILE__, __LINE__, "partner index left after reset");

    v4v_nr_rules = 0;
    opt_v4v = true;
    fail_alloc_in = 0;
    fail_evtchn = 0;
    fail_copy_in = fail_vmap_in = 0;
    preempt_fn = NULL;
    v4vh_current = NULL;
    v4vh_cpu = 0;
    v4vh_xsm_deny(0, -1, 0);
    memset(xsm_calls, 0, sizeof(xsm_calls));
    xsm_last_hook = 0;
    xsm_last_subject = xsm_last_target = -1;

    if ( page_refs || type_refs || nr_vmaps || all_locks_held() || nr_allocs ||
         atomic_read(&v4v_pages_pinned) )
        v4vh_fatal(__FILE__, __LINE__, "state left after reset");

    return 0;
}

int v4vh_domain_create(uint16_t domid)
{
    struct domain *d;
    int rc;

    if ( domid >= DOMID_FIRST_RESERVED )
        return -EINVAL;
    if ( domains[domid] )
        return -EEXIST;

    d = calloc(1, sizeof(*d));
    if ( !d )
        return -ENOMEM;
    d->domain_id = domid;
    domains[domid] = d;
    vcpus[domid].domain = d;

    rc = v4v_init(d);
    if ( all_locks_held() )
        v4vh_fatal(__FILE__, __LINE__, "lock held after v4v_init");
    if ( rc )
    {
        domains[domid] = NULL;
        free(d);
    }

    return rc;
}

int v4vh_domain_soft_reset(uint16_t domid)
{
    if ( domid >= DOMID_FIRST_RESERVED || !domains[domid] )
        return -ESRCH;

    v4v_soft_reset(domains[domid]);
    if ( all_locks_held() )
        v4vh_fatal(__FILE__, __LINE__, "lock held after v4v_soft_reset");

    return 0;
}

int v4vh_domain_destroy(uint16_t domid)
{
    if ( domid >= DOMID_FIRST_RESERVED || !domains[domid] )
        return -ESRCH;

    destroy_domain(domid);

    return 0;
}

long v4vh_hypercall_raw(uint16_t caller, unsigned long cmd, void *arg1,
                        void *arg2, unsigned long arg3, unsigned long arg4)
{
    XEN_GUEST_HANDLE_PARAM(void) h1 = { arg1 }, h2 = { arg2 };
    struct vcpu *saved_current = v4vh_current;
    unsigned int saved_cpu = v4vh_cpu;
    int saved_copy_domid = copy_domid;
    long rc;

    if ( caller >= DOMID_FIRST_RESERVED || !domains[caller] )
        return -ESRCH;
    /* Called from a preemption hook: another CPU. */
    if ( saved_current && ++v4vh_cpu >= NR_CPUS )
        v4vh_fatal(__FILE__, __LINE__, "too many nested CPUs");

    v4vh_current = &vcpus[caller];
    copy_domid = caller;
    rc = do_v4v_op(cmd, h1, h2, arg3, arg4);
    copy_domid = saved_copy_domid;
    v4vh_current = saved_current;

    if ( locks_held[v4vh_cpu] )
    {
        fprintf(stderr, "V4V HARNESS FATAL: hypercall cmd %lu by d%u returned "
                "%ld with %u lock(s) held\n", cmd, caller, rc,
                locks_held[v4vh_cpu]);
        abort();
    }
    v4vh_cpu = saved_cpu;
    if ( !saved_current &&
         (page_refs != (size_t)atomic_read(&v4v_pages_pinned) ||
          type_refs != page_refs) )
        v4vh_fatal(__FILE__, __LINE__, "page reference accounting mismatch");

    return rc;
}

long v4vh_hypercall(uint16_t caller, int cmd, void *arg1, void *arg2,
                    uint32_t arg3, uint32_t arg4)
{
    return v4vh_hypercall_raw(caller, (unsigned int)cmd, arg1, arg2, arg3,
                              arg4);
}

int v4vh_event_test_and_clear(uint16_t domid)
{
    struct domain *d = domid < DOMID_FIRST_RESERVED ? domains[domid] : NULL;
    int ret;

    if ( !d )
        return -ESRCH;
    ret = d->evtchn_signalled;
    d->evtchn_signalled = false;

    return ret;
}

int v4vh_guest_map(uint16_t domid, void *base, size_t len)
{
    unsigned long b = (unsigned long)base, i;
    struct region *r;

    if ( domid >= DOMID_FIRST_RESERVED || !domains[domid] )
        return -ESRCH;
    if ( (b & ~PAGE_MASK) || (len & ~PAGE_MASK) || !len ||
         b < GUEST_MIN_ADDR || b + len < b )
        return -EINVAL;
    for ( r = regions; r; r = r->next )
        if ( b < r->base + r->len && r->base < b + len )
            return -EEXIST;

    r = calloc(1, sizeof(*r));
    if ( !r )
        return -ENOMEM;
    r->pages = calloc(len >> PAGE_SHIFT, sizeof(*r->pages));
    if ( !r->pages )
    {
        free(r);
        return -ENOMEM;
    }
    r->domid = domid;
    r->base = b;
    r->len = len;
    for ( i = 0; i < len >> PAGE_SHIFT; i++ )
        r->pages[i].mfn = (b >> PAGE_SHIFT) + i;
    r->next = regions;
    regions = r;

    return 0;
}

int v4vh_guest_unmap(uint16_t domid, void *base, size_t len)
{
    struct region **pr, *r;
    unsigned long i;

    for ( pr = &regions; (r = *pr); pr = &r->next )
        if ( r->domid == domid && r->base == (unsigned long)base &&
             r->len == len )
            break;
    if ( !r )
        return -ENOENT;

    for ( i = 0; i < len >> PAGE_SHIFT; i++ )
        if ( r->pages[i].count )
            return -EBUSY;

    *pr = r->next;
    free(r->pages);
    free(r);

    return 0;
}

size_t v4vh_pages_held(void)
{
    return page_refs;
}

void v4vh_debug_dump(void)
{
    v4v_dump_state('4');
    if ( all_locks_held() )
        v4vh_fatal(__FILE__, __LINE__, "lock held after debug dump");
}

void v4vh_set_enabled(int enabled)
{
    opt_v4v = enabled;
}

size_t v4vh_allocations(void)
{
    return nr_allocs;
}

void v4vh_fail_alloc(unsigned int n)
{
    fail_alloc_in = n;
}

int v4vh_evtchn_alloc(uint16_t domid)
{
    evtchn_alloc_unbound_t alloc = { .dom = domid, .remote_dom = domid };
    int rc = evtchn_alloc_unbound(&alloc, 0);

    return rc ?: (int)alloc.port;
}

int v4vh_evtchn_close(uint16_t domid, unsigned int port)
{
    struct domain *d = domid < DOMID_FIRST_RESERVED ? domains[domid] : NULL;

    if ( !d )
        return -ESRCH;
    /* As EVTCHNOP_close: a free port, or a Xen-attached one, is refused. */
    if ( !port || port >= V4VH_NR_PORTS || !d->evtchn_state[port] ||
         d->evtchn_xen[port] )
        return -EINVAL;
    d->evtchn_state[port] = 0;

    return 0;
}

int v4vh_evtchn_reset(uint16_t domid)
{
    struct domain *d = domid < DOMID_FIRST_RESERVED ? domains[domid] : NULL;
    unsigned int p;

    if ( !d )
        return -ESRCH;
    /* As EVTCHNOP_reset (evtchn_close(d, p, guest=true) for each). */
    for ( p = 1; p < V4VH_NR_PORTS; p++ )
        if ( !d->evtchn_xen[p] )
            d->evtchn_state[p] = 0;

    return 0;
}

long v4vh_evtchn_hits(uint16_t domid, unsigned int port)
{
    struct domain *d = domid < DOMID_FIRST_RESERVED ? domains[domid] : NULL;

    if ( !d || !port || port >= V4VH_NR_PORTS )
        return -EINVAL;

    return d->evtchn_hits[port];
}

void v4vh_fail_evtchn(int fail)
{
    fail_evtchn = fail;
}

unsigned int v4vh_locks_held(void)
{
    return all_locks_held();
}

unsigned long v4vh_list_steps(void)
{
    return v4vh_list_visits;
}

void v4vh_fail_copy(unsigned int n)
{
    fail_copy_in = n;
}

void v4vh_fail_vmap(unsigned int n)
{
    fail_vmap_in = n;
}

void v4vh_set_preempt(v4vh_preempt_fn *fn, void *arg)
{
    preempt_fn = fn;
    preempt_arg = arg;
}

size_t v4vh_mappings(void)
{
    return nr_vmaps;
}

void v4vh_xsm_deny(unsigned int hooks, int domid, int err)
{
    if ( hooks & ~V4VH_XSM_ALL || (hooks && err >= 0) )
        v4vh_fatal(__FILE__, __LINE__, "v4vh_xsm_deny: bad arguments");
    xsm_deny_hooks = hooks;
    xsm_deny_domid = domid;
    xsm_deny_err = err;
}

unsigned long v4vh_xsm_calls(unsigned int hooks)
{
    unsigned long n = 0;
    unsigned int i;

    for ( i = 0; i < sizeof(xsm_calls) / sizeof(xsm_calls[0]); i++ )
        if ( hooks & (1U << i) )
            n += xsm_calls[i];

    return n;
}

unsigned int v4vh_xsm_last(int *subject, int *target)
{
    if ( subject )
        *subject = xsm_last_subject;
    if ( target )
        *target = xsm_last_target;

    return xsm_last_hook;
}

/* --- inspection: counted through v4v.c's own structures --- */

unsigned long v4vh_ring_count(void)
{
    struct v4v_domain *vd;
    struct v4v_ring_info *ri;
    unsigned long total = 0;
    unsigned int h, i, n;

    if ( !v4v_hash_ready )
        return 0;

    read_lock(&v4v_lock);
    for ( h = 0; h < V4V_DOMAIN_HASH_SIZE; h++ )
        list_for_each_entry ( vd, &v4v_domain_hash[h], node )
        {
            n = 0;
            spin_lock(&vd->lock);
            for ( i = 0; i < V4V_RING_HASH_SIZE; i++ )
                list_for_each_entry ( ri, &vd->rings[i], node )
                    n++;
            if ( n != vd->nr_rings )
                v4vh_fatal(__FILE__, __LINE__, "nr_rings != rings listed");
            spin_unlock(&vd->lock);
            total += n;
        }
    read_unlock(&v4v_lock);

    return total;
}

unsigned long v4vh_waiter_count(void)
{
    struct v4v_domain *vd;
    struct v4v_ring_info *ri;
    const struct v4v_waiter *w;
    unsigned long total = 0;
    unsigned int h, i, n;

    if ( !v4v_hash_ready )
        return 0;

    read_lock(&v4v_lock);
    for ( h = 0; h < V4V_DOMAIN_HASH_SIZE; h++ )
        list_for_each_entry ( vd, &v4v_domain_hash[h], node )
        {
            spin_lock(&vd->lock);
            for ( i = 0; i < V4V_RING_HASH_SIZE; i++ )
                list_for_each_entry ( ri, &vd->rings[i], node )
                {
                    n = 0;
                    spin_lock(&ri->lock);
                    list_for_each_entry ( w, &ri->waiters, node )
                        n++;
                    if ( n != ri->nr_waiters )
                        v4vh_fatal(__FILE__, __LINE__,
                                   "nr_waiters != waiters listed");
                    spin_unlock(&ri->lock);
                    total += n;
                }
            spin_unlock(&vd->lock);
        }
    read_unlock(&v4v_lock);

    return total;
}

/* --- lock rules: a deliberate violation must abort (self-test) --- */

void v4vh_break_lock_rule(unsigned int which, uint16_t domid, uint32_t port)
{
    struct v4v_domain *vd;
    struct v4v_ring_info *ri;

    read_lock(&v4v_lock);
    vd = find_domain(domid);
    if ( !vd )
        v4vh_fatal(__FILE__, __LINE__, "break_lock_rule: no such domain");

    switch ( which )
    {
    case V4VH_BREAK_FIND_RING_NO_L2:
        find_ring(vd, port, V4V_DOMID_ANY);
        break;

    case V4VH_BREAK_RING_RX_NO_L3:
        spin_lock(&vd->lock);
        ri = find_ring(vd, port, V4V_DOMID_ANY);
        spin_unlock(&vd->lock);
        if ( ri )
            ring_rx(ri);
        break;

    case V4VH_BREAK_TEARDOWN_READ_L1:
        v4v_teardown(vd);
        break;

    case V4VH_BREAK_SIGNAL_UNDER_L2:
        spin_lock(&vd->lock);
        signal_domain(vd);
        spin_unlock(&vd->lock);
        break;
    }

    read_unlock(&v4v_lock);
}

/* --- invariants (for the fuzzer): checked through v4v.c's structures --- */

void v4vh_for_each_ring(v4vh_ring_fn *fn, void *arg)
{
    struct v4v_domain *vd;
    struct v4v_ring_info *ri;
    unsigned int h, i;

    if ( !v4v_hash_ready )
        return;
    for ( h = 0; h < V4V_DOMAIN_HASH_SIZE; h++ )
        list_for_each_entry ( vd, &v4v_domain_hash[h], node )
            for ( i = 0; i < V4V_RING_HASH_SIZE; i++ )
                list_for_each_entry ( ri, &vd->rings[i], node )
                    fn(vd->domid, ri->map.hdr, ri->len, arg);
}

#define INVARIANT(p) \
    do { if ( !(p) ) v4vh_fatal(__FILE__, __LINE__, "invariant: " #p); } \
    while ( 0 )

void v4vh_check_invariants(void)
{
    struct v4v_domain *vd;
    struct v4v_ring_info *ri;
    const struct v4v_waiter *w;
    struct region *r;
    unsigned long nr_vd = 0, nr_rings = 0, nr_waiters = 0, pages = 0, j;
    unsigned long pages_vd, partnered = 0;
    unsigned int h, i, n;

    INVARIANT(!all_locks_held());
    INVARIANT(!v4vh_current && !v4vh_cpu);
    if ( !v4v_hash_ready )
        return;

    for ( h = 0; h < V4V_DOMAIN_HASH_SIZE; h++ )
        list_for_each_entry ( vd, &v4v_domain_hash[h], node )
        {
            INVARIANT(!vd->lock.held);
            INVARIANT(vd->d && vd->d->v4v == vd &&
                      vd->domid == vd->d->domain_id);
            INVARIANT(domain_hash(vd->domid) == h);
            nr_vd++;
            n = 0;
            pages_vd = 0;
            for ( i = 0; i < V4V_RING_HASH_SIZE; i++ )
                list_for_each_entry ( ri, &vd->rings[i], node )
                {
                    unsigned int nw = 0;

                    n++;
                    pages_vd += ring_npages(ri->len);
                    partnered += ri->partner != V4V_DOMID_ANY;
                    INVARIANT(!ri->lock.held);
                    INVARIANT(ri->owner == vd);
                    INVARIANT(ring_hash(ri->port, ri->partner) == i);
                    INVARIANT(ri->port != V4V_PORT_ANY);
                    INVARIANT(ri->len % V4V_RING_ALIGN == 0 &&
                              ri->len >= V4V_MIN_RING_LEN &&
                              ri->len <= V4V_MAX_RING_LEN);
                    INVARIANT(ri->tx % V4V_RING_ALIGN == 0 && ri->tx < ri->len);
                    INVARIANT(ri->map.hdr && ri->map.pages);
                    INVARIANT(ri->map.npages ==
                              PFN_UP(V4V_RING_HEADER_SIZE + (size_t)ri->len));
                    /* Each page of the ring is the page at its address. */
                    for ( j = 0; j < ri->map.npages; j++ )
                        INVARIANT(ri->map.pages[j]->mfn ==
                                  ((unsigned long)ri->map.hdr >>
                                   PAGE_SHIFT) + j);
                    pages += ri->map.npages;
                    list_for_each_entry ( w, &ri->waiters, node )
                    {
                        nw++;
                        INVARIANT(w->dom && w->dom->d->v4v == w->dom);
                        INVARIANT(w->len <= ring_max_message(ri->len));
                    }
                    INVARIANT(nw == ri->nr_waiters && nw <= V4V_MAX_WAITERS);
                    nr_waiters += nw;
                }
            INVARIANT(n == vd->nr_rings);
            /* No registration in progress between hypercalls. */
            INVARIANT(pages_vd == vd->nr_ring_pages);
            nr_rings += n;
        }

    /* Page references: exactly the rings' coverage, page by page. */
    INVARIANT(pages == page_refs && page_refs == type_refs);
    INVARIANT(pages == (unsigned long)atomic_read(&v4v_pages_pinned));
    for ( r = regions; r; r = r->next )
        for ( j = 0; j < r->len >> PAGE_SHIFT; j++ )
        {
            unsigned long mfn = (r->base >> PAGE_SHIFT) + j, cover = 0;

            for ( h = 0; h < V4V_DOMAIN_HASH_SIZE; h++ )
                list_for_each_entry ( vd, &v4v_domain_hash[h], node )
                    for ( i = 0; i < V4V_RING_HASH_SIZE; i++ )
                        list_for_each_entry ( ri, &vd->rings[i], node )
                        {
                            unsigned long first =
                                (unsigned long)ri->map.hdr >> PAGE_SHIFT;

                            if ( mfn >= first && mfn < first + ri->map.npages )
                                cover++;
                        }
            INVARIANT(r->pages[j].count == cover &&
                      r->pages[j].type_count == cover);
        }

    /*
     * The indexes: each domain's waits are exactly the waiters naming it,
     * each partner list exactly the rings for that partner.
     */
    n = 0;
    for ( h = 0; h < V4V_DOMAIN_HASH_SIZE; h++ )
        list_for_each_entry ( vd, &v4v_domain_hash[h], node )
        {
            INVARIANT(!vd->waits_lock.held);
            list_for_each_entry ( w, &vd->waits, dom_node )
            {
                const struct v4v_waiter *x;
                bool found = false;

                INVARIANT(w->dom == vd && w->ring);
                list_for_each_entry ( x, &w->ring->waiters, node )
                    found |= x == w;
                INVARIANT(found);
                n++;
            }
        }
    INVARIANT(n == nr_waiters);
    INVARIANT(!v4v_partner_lock.held);
    for ( i = 0, n = 0, j = 0; i < V4V_PARTNER_CHUNKS; i++ )
    {
        unsigned long in_chunk = 0, k;

        if ( !v4v_partner_rings[i] )
            continue;
        j++;
        for ( k = 0; k < V4V_PARTNER_CHUNK; k++ )
            list_for_each_entry ( ri, &v4v_partner_rings[i]->rings[k],
                                  partner_node )
            {
                INVARIANT(ri->partner == i * V4V_PARTNER_CHUNK + k);
                in_chunk++;
            }
        INVARIANT(in_chunk && in_chunk == v4v_partner_rings[i]->nr);
        n += in_chunk;
    }
    INVARIANT(n == partnered);

    /*
     * One mapping per ring; allocations: domains, rings (and their page
     * arrays), waiters, partner index chunks.
     */
    INVARIANT(nr_vmaps == nr_rings);
    INVARIANT(nr_allocs == nr_vd + 2 * nr_rings + nr_waiters + j);
}
