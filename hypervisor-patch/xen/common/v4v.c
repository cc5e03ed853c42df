/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * v4v.c: V4V inter-domain messaging.
 *
 * A domain registers rings of its own memory; other domains (or itself)
 * send datagrams into them through the hypervisor, which is the only writer
 * of a ring's contents and tx_ptr. The guest ABI is public/v4v.h; the exact
 * semantics, the order of the checks and the error codes are specified in
 * the project's docs/abi.md, which this file implements.
 *
 * Trust model
 * -----------
 * Every guest is untrusted, the hardware domain included as far as memory
 * safety goes. Everything a guest supplies (hypercall arguments, structures
 * read with copy_from_guest, and the rx_ptr of a registered ring, which the
 * owner may change at any moment) is checked before use. The ring memory is
 * mapped by the hypervisor and may be written concurrently by its owner: the
 * hypervisor reads rx_ptr once per decision, sanitises it, and never reads
 * back tx_ptr, its own copy being authoritative. The source of a message is
 * always the calling domain. Only the hardware domain may read or change
 * the ACL table or set a domain's ring limit (unless an XSM policy says
 * otherwise). Each domain's resources are capped (rings, waiters per ring,
 * iovs and notify entries per call, ring size), so a guest cannot make the
 * hypervisor allocate without bound.
 *
 * XSM hooks (xsm/xsm.h; without XSM, or with the dummy module, all but the
 * last allow everything, so the ACL table is the whole policy):
 *   xsm_v4v_enable(d)             at domain creation (refused: the domain
 *                                 gets no V4V state, and -ENOSYS from any op
 *                                 the hook lets through) and at every op,
 *                                 after the reserved argument checks;
 *   xsm_v4v_register_single(d, t) a ring only t may send into, t a live
 *                                 V4V domain;
 *   xsm_v4v_register_any(d)       a ring for any sender, or for a partner id
 *                                 that is no live V4V domain (whoever gets
 *                                 that id may send); after the argument
 *                                 checks, before -EEXIST and -ENOSPC;
 *   xsm_v4v_send(d, t)            sendv after the ACL check and t's
 *                                 existence, before the ring lookup; notify
 *                                 entries about t's rings (refused: as if t
 *                                 had no such ring, and no waiter queued);
 *   xsm_v4v_admin(d)              config and tables_*, before anything is
 *                                 read (dummy: the hardware domain, -EPERM).
 * A refusal returns the hook's error and changes nothing.
 *
 * Locking
 * -------
 * L1  v4v_lock (rwlock, global): the set of domains with V4V state (the
 *     domain hash and every d->v4v pointer). Every hypercall runs with it
 *     held for reading; domain creation, destruction and soft reset take it
 *     for writing, which excludes all other V4V activity, so those paths
 *     need no other V4V lock. Never taken recursively.
 * L2  v4v_domain.lock (spinlock, one per domain): that domain's ring hash,
 *     nr_rings, max_rings, nr_ring_pages, max_ring_pages and event channel
 *     port. Taken with L1 held.
 * L3  v4v_ring_info.lock (spinlock, one per ring): the ring's tx, mapping
 *     (frames and header pointer) and waiter queue. Taken with the owner's
 *     L2 held; L2 may then be dropped while L3 is kept (hand-over-hand).
 *     Every path that frees a ring unlinks it under L2 and then acquires
 *     and releases its L3, so no other CPU can still be using it.
 *     At most one L2 and one L3 are held at a time.
 * L4  v4v_domain.waits_lock (spinlock, one per domain): that domain's list
 *     of its waits on any ring (v4v_waiter.dom_node). Taken with the ring's
 *     L3 held; a leaf.
 * LP  v4v_partner_lock (spinlock, global): the rings registered for each
 *     partner domid (v4v_partner_rings, v4v_ring_info.partner_node). Taken
 *     with the owner's L2 held; a leaf.
 *     Both indexes exist so that tearing a domain down touches only what
 *     refers to it, never every domain's rings.
 * LA  v4v_acl_lock (rwlock, global): the ACL table. Taken with L1 held for
 *     reading (or with no V4V lock at all); no other V4V lock nests in it.
 *
 * Order: L1 -> L2 -> L3 -> L4; L2 -> LP; L1 -> LA. With L1 held for
 * writing (destruction, soft reset) none of L2, L3, L4, LP is needed.
 * Event channels are signalled with only L1 held (L1 for writing in the
 * destruction paths); the event channel is allocated with L2 held, and freed
 * with L1 held for writing (both take d->event_lock, which never nests
 * V4V).
 * XSM hooks are called with no V4V lock or with L1 only (FLASK's AVC takes
 * its own locks, which never nest V4V's); the struct domain they are given
 * for a partner or destination is kept alive by L1, as its V4V state is.
 *
 * Event channel: allocated the first time a domain calls V4VOP_info, as a
 * Xen-attached unbound port of the domain with the domain itself as remote
 * end (alloc_unbound_xen_event_channel); the guest binds an interdomain
 * channel to it. Being Xen's, the guest cannot close it (EVTCHNOP_close and
 * EVTCHNOP_reset refuse), so the number V4V signals (with
 * notify_via_xen_event_channel) is never another channel's. If the guest
 * closes its own end, Xen's end is unbound again and signals are dropped
 * until it binds anew. Destruction and soft reset free it; a new one comes
 * with the next V4VOP_info.
 */

#include <xen/errno.h>
#include <xen/event.h>
#include <xen/guest_access.h>
#include <xen/hypercall.h>
#include <xen/init.h>
#include <xen/keyhandler.h>
#include <xen/lib.h>
#include <xen/list.h>
#include <xen/mm.h>
#include <xen/nospec.h>
#include <xen/param.h>
#include <xen/sched.h>
#include <xen/spinlock.h>
#include <xen/v4v.h>
#include <xen/vmap.h>
#include <xen/xmalloc.h>

#include <xsm/xsm.h>

#include <public/v4v.h>

#ifdef CONFIG_X86
#include <asm/p2m.h>
#include <asm/paging.h>
#include <asm/pv/mm.h>
#endif

static bool __read_mostly opt_v4v;
boolean_param("v4v", opt_v4v);

#define V4V_DOMAIN_HASH_SIZE    64
#define V4V_RING_HASH_SIZE      64

/* A sender waiting for space on a ring. */
struct v4v_waiter {
    struct list_head node;          /* ring's waiters: ring's L3 */
    struct list_head dom_node;      /* dom->waits: dom's L4 */
    struct v4v_domain *dom;         /* the sender */
    struct v4v_ring_info *ring;     /* the ring it waits on */
    uint32_t len;                   /* payload bytes it waits for */
};

/* The hypervisor's mapping of a ring's header and data area. */
struct v4v_ring_map {
    v4v_ring_t *hdr;
    struct page_info **pages;
    unsigned int npages;
};

struct v4v_ring_info {
    struct list_head node;          /* owner's ring hash: owner's L2 */
    struct list_head partner_node;  /* v4v_partner_rings (not for ANY): LP */
    struct v4v_domain *owner;
    uint32_t port;
    domid_t partner;
    uint32_t len;                   /* data area bytes, fixed for life */

    spinlock_t lock;                /* L3: everything below */
    uint32_t tx;
    struct v4v_ring_map map;
    struct list_head waiters;
    unsigned int nr_waiters;
};

struct v4v_domain {
    struct list_head node;          /* v4v_domain_hash: L1 */
    struct domain *d;
    domid_t domid;

    spinlock_t lock;                /* L2: everything below */
    struct list_head rings[V4V_RING_HASH_SIZE];
    unsigned int nr_rings;
    unsigned int max_rings;
    /*
     * Pages its rings hold mapped (and pages reserved by registrations in
     * progress), and the cap on them: what bounds the page references, the
     * hypervisor address space and the heap (page arrays) a domain costs.
     */
    unsigned int nr_ring_pages;
    unsigned int max_ring_pages;
    evtchn_port_t evtchn;           /* 0 until the first V4VOP_info */

    spinlock_t waits_lock;          /* L4: the list below */
    struct list_head waits;         /* its waiters, on any ring */
};

static DEFINE_RWLOCK(v4v_lock);
static struct list_head v4v_domain_hash[V4V_DOMAIN_HASH_SIZE];
static bool v4v_hash_ready;

/*
 * Rings by partner domid (those with a partner other than ANY), whether or
 * not a domain with that id exists: chunks of V4V_PARTNER_CHUNK lists,
 * allocated when the first ring for a partner in the chunk is registered and
 * freed with the last (at most 128 chunks of 4 KiB). LP.
 */
#define V4V_PARTNER_CHUNK       255
#define V4V_PARTNER_CHUNKS \
    ((DOMID_FIRST_RESERVED + V4V_PARTNER_CHUNK - 1) / V4V_PARTNER_CHUNK)
struct v4v_partner_chunk {
    unsigned long nr;               /* rings on the lists below */
    struct list_head rings[V4V_PARTNER_CHUNK];
};
static DEFINE_SPINLOCK(v4v_partner_lock);
static struct v4v_partner_chunk *v4v_partner_rings[V4V_PARTNER_CHUNKS];

static DEFINE_RWLOCK(v4v_acl_lock);
static v4vtables_rule_t v4v_rules[V4V_MAX_RULES];
static unsigned int v4v_nr_rules;

/*
 * Lock assertions, one per rule of "Locking" above, at the top of every
 * function that relies on a lock its caller holds. Checked in debug builds,
 * and by the userspace test harness on every call (its lock shims answer
 * for the calling CPU, so a rule broken on any path fails the tests).
 */
#define LOCKING_Read_L1         (rw_is_locked(&v4v_lock))
#define LOCKING_Write_L1        (rw_is_write_locked(&v4v_lock))
#define LOCKING_L2(vd)          (LOCKING_Read_L1 && spin_is_locked(&(vd)->lock))
#define LOCKING_L3(ri)          (LOCKING_Read_L1 && spin_is_locked(&(ri)->lock))

/* Page references held for rings, over all domains (for the debug key). */
static atomic_t v4v_pages_pinned;

/* --- rounding and ring arithmetic, in 64 bits as docs/abi.md says --- */

static uint64_t roundup16(uint64_t x)
{
    return (x + 15) & ~(uint64_t)15;
}

/* The sanitised rx of a ring. L3 held. */
static uint32_t ring_rx(struct v4v_ring_info *ri)
{
    uint64_t rx;

    ASSERT(LOCKING_L3(ri));

    rx = roundup16(ACCESS_ONCE(ri->map.hdr->rx_ptr));

    /* Order the read of rx_ptr before any write into the space it frees. */
    smp_mb();

    /* Guest-controlled: bounded, also under speculation. */
    return rx >= ri->len ? 0 : array_index_nospec(rx, ri->len);
}

static uint32_t ring_free(uint32_t rx, uint32_t tx, uint32_t len)
{
    if ( rx == tx )
        return len;

    return ((uint64_t)rx + len - tx) % len;
}

/*
 * A message of 'len' payload bytes fits now: its header, its payload rounded
 * up, and the slot that must stay free. With one slot free nothing fits.
 */
static bool fits_now(uint64_t len, uint32_t free)
{
    return roundup16(len) + V4V_MESSAGE_HEADER_SIZE < free;
}

static uint32_t ring_max_message(uint32_t len)
{
    return len - 32;
}

/* The rings registered for 'partner', or NULL. LP or L1 for writing. */
static struct list_head *partner_rings(domid_t partner)
{
    struct v4v_partner_chunk *chunk;

    ASSERT(spin_is_locked(&v4v_partner_lock) || LOCKING_Write_L1);
    ASSERT(partner < DOMID_FIRST_RESERVED);

    chunk = v4v_partner_rings[partner / V4V_PARTNER_CHUNK];

    return chunk ? &chunk->rings[partner % V4V_PARTNER_CHUNK] : NULL;
}

/* Index a new ring with a partner. Owner's L2 held. */
static int partner_link(struct v4v_ring_info *ri)
{
    struct v4v_partner_chunk **chunk =
        &v4v_partner_rings[ri->partner / V4V_PARTNER_CHUNK];
    unsigned int i;
    int rc = 0;

    ASSERT(LOCKING_L2(ri->owner));
    ASSERT(ri->partner < DOMID_FIRST_RESERVED);

    spin_lock(&v4v_partner_lock);
    if ( !*chunk )
    {
        *chunk = xmalloc(struct v4v_partner_chunk);
        if ( *chunk )
        {
            (*chunk)->nr = 0;
            for ( i = 0; i < V4V_PARTNER_CHUNK; i++ )
                INIT_LIST_HEAD(&(*chunk)->rings[i]);
        }
    }
    if ( *chunk )
    {
        list_add_tail(&ri->partner_node, partner_rings(ri->partner));
        (*chunk)->nr++;
    }
    else
        rc = -ENOMEM;
    spin_unlock(&v4v_partner_lock);

    return rc;
}

/* Unindex a ring with a partner. Owner's L2 held, or L1 for writing. */
static void partner_unlink(struct v4v_ring_info *ri)
{
    struct v4v_partner_chunk **chunk =
        &v4v_partner_rings[ri->partner / V4V_PARTNER_CHUNK];
    bool locked = !LOCKING_Write_L1;

    ASSERT(LOCKING_L2(ri->owner) || LOCKING_Write_L1);

    if ( locked )
        spin_lock(&v4v_partner_lock);
    list_del(&ri->partner_node);
    if ( !--(*chunk)->nr )
    {
        xfree(*chunk);
        *chunk = NULL;
    }
    if ( locked )
        spin_unlock(&v4v_partner_lock);
}

/* Pages mapped for a ring of 'len' data bytes: its header and data area. */
static unsigned int ring_npages(uint32_t len)
{
    return PFN_UP(V4V_RING_HEADER_SIZE + (size_t)len);
}

/* --- lookups --- */

static unsigned int domain_hash(domid_t domid)
{
    return domid % V4V_DOMAIN_HASH_SIZE;
}

static unsigned int ring_hash(uint32_t port, domid_t partner)
{
    return (port ^ (port >> 16) ^ partner) % V4V_RING_HASH_SIZE;
}

/* L1 held. */
static struct v4v_domain *find_domain(domid_t domid)
{
    struct v4v_domain *vd;

    ASSERT(LOCKING_Read_L1);

    list_for_each_entry ( vd, &v4v_domain_hash[domain_hash(domid)], node )
        if ( vd->domid == domid )
            return vd;

    return NULL;
}

/* L2 of vd held. */
static struct v4v_ring_info *find_ring(struct v4v_domain *vd,
                                       uint32_t port, domid_t partner)
{
    struct v4v_ring_info *ri;

    ASSERT(LOCKING_L2(vd));

    list_for_each_entry ( ri, &vd->rings[ring_hash(port, partner)], node )
        if ( ri->port == port && ri->partner == partner )
            return ri;

    return NULL;
}

/* The ring of vd a message from 'sender' to 'port' goes to. L2 held. */
static struct v4v_ring_info *find_ring_for_sender(struct v4v_domain *vd,
                                                  uint32_t port,
                                                  domid_t sender)
{
    struct v4v_ring_info *ri;

    ASSERT(LOCKING_L2(vd));

    ri = find_ring(vd, port, sender);

    return ri ?: find_ring(vd, port, V4V_DOMID_ANY);
}

/* --- event channel --- */

/* Signal vd's V4V event channel, if it has one. L1 held. */
static void signal_domain(struct v4v_domain *vd)
{
    evtchn_port_t port = ACCESS_ONCE(vd->evtchn);

    ASSERT(LOCKING_Read_L1);

    if ( port )
        notify_via_xen_event_channel(vd->d, port);
}

/* --- ring memory --- */

#ifdef CONFIG_X86
/*
 * The page mapped writable at 'va' in the current vCPU's address space,
 * with a general and a writable type reference, or NULL.
 */
static struct page_info *v4v_get_ring_page(struct domain *d, unsigned long va)
{
    struct page_info *page = NULL;

    ASSERT(d == current->domain);

#ifdef CONFIG_HVM
    if ( is_hvm_domain(d) )
    {
        uint32_t pfec = PFEC_page_present | PFEC_write_access;
        unsigned long gfn = paging_gva_to_gfn(current, va, &pfec);
        p2m_type_t t;

        if ( gfn == gfn_x(INVALID_GFN) )
            return NULL;

        page = get_page_from_gfn(d, gfn, &t, P2M_ALLOC);
        if ( !page )
            return NULL;

        if ( t != p2m_ram_rw )
        {
            put_page(page);
            return NULL;
        }
    }
#endif

#ifdef CONFIG_PV
    if ( is_pv_domain(d) )
    {
        l1_pgentry_t l1e;

        if ( is_pv_32bit_domain(d) )
            return NULL;

        l1e = pv_guest_get_eff_kern_l1e(va);
        if ( (l1e_get_flags(l1e) & (_PAGE_PRESENT | _PAGE_RW)) !=
             (_PAGE_PRESENT | _PAGE_RW) )
            return NULL;

        page = get_page_from_gfn(d, l1e_get_pfn(l1e), NULL, P2M_ALLOC);
        if ( !page )
            return NULL;
    }
#endif

    if ( !page )
        return NULL;

    if ( !get_page_type(page, PGT_writable_page) )
    {
        put_page(page);
        return NULL;
    }

    return page;
}

/*
 * Log-dirty mode (live migration; xl save of a live guest): a page the
 * hypervisor writes through its own mapping is not seen by the p2m or
 * shadow code, so it must be marked dirty, or the copy on the other side
 * would keep the page as it was when it was last sent.
 */
static bool v4v_log_dirty(const struct domain *d)
{
    return paging_mode_log_dirty(d);
}

static void v4v_mark_page_dirty(struct domain *d, struct page_info *page)
{
    paging_mark_dirty(d, page_to_mfn(page));
}
#else
/* Provided elsewhere (by the userspace test harness). */
struct page_info *v4v_get_ring_page(struct domain *d, unsigned long va);
bool v4v_log_dirty(const struct domain *d);
void v4v_mark_page_dirty(struct domain *d, struct page_info *page);
#endif

static void ring_unmap(struct v4v_ring_map *map)
{
    unsigned int i;

    if ( map->hdr )
        vunmap(map->hdr);

    for ( i = 0; i < map->npages; i++ )
        put_page_and_type(map->pages[i]);

    if ( map->npages )
        atomic_sub(map->npages, &v4v_pages_pinned);

    xfree(map->pages);
    map->hdr = NULL;
    map->pages = NULL;
    map->npages = 0;
}

/* Translate, pin and map the ring at 'va' with 'len' data bytes. */
static int ring_map(struct domain *d, unsigned long va, uint32_t len,
                    struct v4v_ring_map *map)
{
    unsigned int i, npages = ring_npages(len);
    mfn_t *mfns;
    int rc = 0;

    map->hdr = NULL;
    map->npages = 0;
    map->pages = xzalloc_array(struct page_info *, npages);
    mfns = xmalloc_array(mfn_t, npages);
    if ( !map->pages || !mfns )
    {
        rc = -ENOMEM;
        goto out;
    }

    for ( i = 0; i < npages; i++ )
    {
        struct page_info *page = v4v_get_ring_page(d, va + i * PAGE_SIZE);

        if ( !page )
        {
            rc = -EFAULT;
            goto out;
        }
        map->pages[i] = page;
        map->npages = i + 1;
        mfns[i] = page_to_mfn(page);
        atomic_inc(&v4v_pages_pinned);
    }

    map->hdr = vmap(mfns, npages);
    if ( !map->hdr )
        rc = -ENOMEM;

 out:
    xfree(mfns);
    if ( rc )
        ring_unmap(map);

    return rc;
}

/*
 * Mark dirty, in log-dirty mode, the pages of the ring's header (tx_ptr)
 * and of the 'bytes' data bytes from offset 'from' (wrapping). L3 held.
 */
static void ring_mark_dirty(struct v4v_ring_info *ri, uint32_t from,
                            uint32_t bytes)
{
    struct domain *d = ri->owner->d;
    unsigned int first, last;
    uint32_t chunk;

    if ( !v4v_log_dirty(d) )
        return;

    v4v_mark_page_dirty(d, ri->map.pages[0]);
    while ( bytes )
    {
        chunk = min(bytes, ri->len - from);
        first = (V4V_RING_HEADER_SIZE + from) >> PAGE_SHIFT;
        last = (V4V_RING_HEADER_SIZE + from + chunk - 1) >> PAGE_SHIFT;
        for ( ; first <= last; first++ )
            if ( first )
                v4v_mark_page_dirty(d, ri->map.pages[first]);
        bytes -= chunk;
        from = 0;
    }
}

static void ring_info_free(struct v4v_ring_info *ri)
{
    ASSERT(list_empty(&ri->waiters));
    ring_unmap(&ri->map);
    xfree(ri);
}

/* --- waiters --- */

/*
 * Queue 'dom' on the ring for 'len' payload bytes, or raise its request.
 * L3 held.
 */
static int ring_add_waiter(struct v4v_ring_info *ri, struct v4v_domain *dom,
                           uint32_t len)
{
    struct v4v_waiter *w;

    ASSERT(LOCKING_L3(ri));

    list_for_each_entry ( w, &ri->waiters, node )
        if ( w->dom == dom )
        {
            w->len = max(w->len, len);
            return 0;
        }

    if ( ri->nr_waiters >= V4V_MAX_WAITERS )
        return -EBUSY;

    w = xzalloc(struct v4v_waiter);
    if ( !w )
        return -ENOMEM;

    w->dom = dom;
    w->ring = ri;
    w->len = len;
    list_add_tail(&w->node, &ri->waiters);
    ri->nr_waiters++;
    spin_lock(&dom->waits_lock);
    list_add_tail(&w->dom_node, &dom->waits);
    spin_unlock(&dom->waits_lock);

    return 0;
}

/* Take w off its ring to 'woken', and off its domain's list. L3 held. */
static void waiter_take(struct v4v_waiter *w, struct list_head *woken)
{
    ASSERT(LOCKING_L3(w->ring) || LOCKING_Write_L1);

    list_move_tail(&w->node, woken);
    w->ring->nr_waiters--;
    if ( !LOCKING_Write_L1 )
        spin_lock(&w->dom->waits_lock);
    list_del(&w->dom_node);
    if ( !LOCKING_Write_L1 )
        spin_unlock(&w->dom->waits_lock);
}

/* Move the waiters whose request fits now to 'woken'. L3 held. */
static void ring_take_fitting_waiters(struct v4v_ring_info *ri,
                                      struct list_head *woken)
{
    struct v4v_waiter *w, *tmp;
    uint32_t free;

    ASSERT(LOCKING_L3(ri));

    free = ring_free(ring_rx(ri), ri->tx, ri->len);
    list_for_each_entry_safe ( w, tmp, &ri->waiters, node )
        if ( fits_now(w->len, free) )
            waiter_take(w, woken);
}

/* Move every waiter to 'woken'. L3 held (or L1 for writing). */
static void ring_take_all_waiters(struct v4v_ring_info *ri,
                                  struct list_head *woken)
{
    struct v4v_waiter *w, *tmp;

    ASSERT(LOCKING_L3(ri) || LOCKING_Write_L1);

    list_for_each_entry_safe ( w, tmp, &ri->waiters, node )
        waiter_take(w, woken);
    ASSERT(!ri->nr_waiters);
}

/* Signal and free the waiters on 'woken'. L1 held, no L2 or L3. */
static void wake_waiters(struct list_head *woken)
{
    struct v4v_waiter *w, *tmp;

    ASSERT(LOCKING_Read_L1);

    list_for_each_entry_safe ( w, tmp, woken, node )
    {
        signal_domain(w->dom);
        list_del(&w->node);
        xfree(w);
    }
}

/* --- ACL table --- */

static bool rule_addr_matches(const v4v_addr_t *rule, domid_t domain,
                              uint32_t port)
{
    return (rule->domain == V4V_DOMID_ANY || rule->domain == domain) &&
           (rule->port == V4V_PORT_ANY || rule->port == port);
}

static bool acl_accepts(domid_t src, uint32_t src_port, domid_t dst,
                        uint32_t dst_port)
{
    bool accept = true;
    unsigned int i;

    ASSERT(LOCKING_Read_L1);

    read_lock(&v4v_acl_lock);
    for ( i = 0; i < v4v_nr_rules; i++ )
    {
        const v4vtables_rule_t *r = &v4v_rules[i];

        if ( rule_addr_matches(&r->src, src, src_port) &&
             rule_addr_matches(&r->dst, dst, dst_port) )
        {
            accept = r->accept;
            break;
        }
    }
    read_unlock(&v4v_acl_lock);

    return accept;
}

static bool rule_valid(const v4vtables_rule_t *r)
{
    return !r->src.pad && !r->dst.pad && r->accept <= 1;
}

static bool rule_equal(const v4vtables_rule_t *a, const v4vtables_rule_t *b)
{
    return a->src.domain == b->src.domain && a->src.port == b->src.port &&
           a->dst.domain == b->dst.domain && a->dst.port == b->dst.port &&
           a->accept == b->accept;
}

/* --- V4VOP_register_ring --- */

/* Give back pages reserved by a registration that failed. L1 held. */
static void release_ring_pages(struct v4v_domain *vd, unsigned int npages)
{
    ASSERT(LOCKING_Read_L1);

    spin_lock(&vd->lock);
    ASSERT(vd->nr_ring_pages >= npages);
    vd->nr_ring_pages -= npages;
    spin_unlock(&vd->lock);
}

static long v4v_register_ring(struct v4v_domain *vd,
                              XEN_GUEST_HANDLE_PARAM(void) arg)
{
    XEN_GUEST_HANDLE_PARAM(v4v_ring_t) hnd = guest_handle_cast(arg, v4v_ring_t);
    unsigned long va = (unsigned long)arg.p;
    const struct v4v_domain *pvd;
    struct v4v_ring_info *ri, *new_ri = NULL;
    struct v4v_ring_map map, old = { NULL, NULL, 0 };
    v4v_ring_t hdr;
    unsigned int npages;
    uint64_t rx;
    uint32_t tx;
    long rc;

    ASSERT(LOCKING_Read_L1);

    if ( va & ~PAGE_MASK )
        return -EINVAL;
    if ( copy_from_guest(&hdr, hnd, 1) )
        return -EFAULT;
    if ( hdr.magic != V4V_RING_MAGIC )
        return -EINVAL;
    if ( hdr.id.addr.pad || hdr.id.pad )
        return -EINVAL;
    if ( hdr.id.addr.domain != vd->domid && hdr.id.addr.domain != DOMID_SELF )
        return -EPERM;
    if ( hdr.id.addr.port == V4V_PORT_ANY )
        return -EINVAL;
    if ( hdr.id.partner >= DOMID_FIRST_RESERVED &&
         hdr.id.partner != V4V_DOMID_ANY )
        return -EINVAL;
    if ( hdr.len % V4V_RING_ALIGN || hdr.len < V4V_MIN_RING_LEN ||
         hdr.len > V4V_MAX_RING_LEN )
        return -EINVAL;

    /*
     * XSM: a ring for one partner that is a live V4V domain, or one any
     * domain may send into. A partner id that is no such domain is checked
     * as 'any': whichever domain gets that id will be able to send.
     */
    pvd = hdr.id.partner == V4V_DOMID_ANY ? NULL
                                          : find_domain(hdr.id.partner);
    rc = pvd ? xsm_v4v_register_single(XSM_HOOK, vd->d, pvd->d)
             : xsm_v4v_register_any(XSM_HOOK, vd->d);
    if ( rc )
        return rc;

    /*
     * Checks before the (possibly long) mapping; repeated after it. The
     * pages are reserved now, so that concurrent registrations cannot
     * together map more than the cap (a moving ring holds both mappings
     * for a while: both count).
     */
    npages = ring_npages(hdr.len);
    spin_lock(&vd->lock);
    ri = find_ring(vd, hdr.id.addr.port, hdr.id.partner);
    if ( ri )
        rc = ri->len != hdr.len ? -EEXIST : 0;
    else
        rc = vd->nr_rings >= vd->max_rings ? -ENOSPC : 0;
    if ( !rc && npages > vd->max_ring_pages - min(vd->nr_ring_pages,
                                                  vd->max_ring_pages) )
        rc = -ENOSPC;
    if ( !rc )
        vd->nr_ring_pages += npages;
    spin_unlock(&vd->lock);
    if ( rc )
        return rc;

    rc = ring_map(vd->d, va, hdr.len, &map);
    if ( rc )
    {
        release_ring_pages(vd, npages);
        return rc;
    }

    /*
     * Allocated even when the id exists now: another vCPU may unregister it
     * before the second check, which then registers it as new. There is no
     * second attempt (each would cost a stack frame or a loop a guest could
     * keep losing).
     */
    new_ri = xzalloc(struct v4v_ring_info);
    if ( !new_ri )
    {
        ring_unmap(&map);
        release_ring_pages(vd, npages);
        return -ENOMEM;
    }
    new_ri->owner = vd;
    new_ri->partner = hdr.id.partner;

    spin_lock(&vd->lock);
    ri = find_ring(vd, hdr.id.addr.port, hdr.id.partner);
    if ( ri && ri->len != hdr.len )
        rc = -EEXIST;
    else if ( ri )
    {
        /* Move the ring to the new memory; keep tx and the waiters. */
        spin_lock(&ri->lock);
        old = ri->map;
        ri->map = map;
        write_atomic(&map.hdr->id.addr.domain, vd->domid);
        write_atomic(&map.hdr->tx_ptr, ri->tx);
        spin_unlock(&ri->lock);
    }
    else if ( vd->nr_rings >= vd->max_rings )
        rc = -ENOSPC;
    /* A ring with a partner is indexed first (-ENOMEM if that fails). */
    else if ( hdr.id.partner == V4V_DOMID_ANY ||
              !(rc = partner_link(new_ri)) )
    {
        ri = new_ri;
        new_ri = NULL;
        ri->port = hdr.id.addr.port;
        ri->len = hdr.len;
        spin_lock_init(&ri->lock);
        INIT_LIST_HEAD(&ri->waiters);
        ri->map = map;

        rx = roundup16(hdr.rx_ptr);
        if ( rx >= hdr.len )
            rx = 0;
        tx = hdr.tx_ptr;
        if ( tx % V4V_RING_ALIGN || tx >= hdr.len )
            tx = rx;
        ri->tx = array_index_nospec(tx, hdr.len);

        write_atomic(&map.hdr->id.addr.domain, vd->domid);
        write_atomic(&map.hdr->tx_ptr, tx);

        list_add_tail(&ri->node,
                      &vd->rings[ring_hash(ri->port, ri->partner)]);
        vd->nr_rings++;
    }
    /* Failed: the reservation goes; moved: the old mapping's pages go. */
    vd->nr_ring_pages -= rc ? npages : old.npages;
    spin_unlock(&vd->lock);

    if ( rc )
        ring_unmap(&map);
    else
        ring_unmap(&old);
    xfree(new_ri);

    return rc;
}

/* --- V4VOP_unregister_ring --- */

static long v4v_unregister_ring(struct v4v_domain *vd,
                                XEN_GUEST_HANDLE_PARAM(void) arg)
{
    XEN_GUEST_HANDLE_PARAM(v4v_ring_t) hnd = guest_handle_cast(arg, v4v_ring_t);
    struct v4v_ring_info *ri;
    v4v_ring_t hdr;
    LIST_HEAD(woken);

    ASSERT(LOCKING_Read_L1);

    if ( (unsigned long)arg.p & ~PAGE_MASK )
        return -EINVAL;
    if ( copy_from_guest(&hdr, hnd, 1) )
        return -EFAULT;

    spin_lock(&vd->lock);
    ri = find_ring(vd, hdr.id.addr.port, hdr.id.partner);
    if ( !ri )
    {
        spin_unlock(&vd->lock);
        return -ENOENT;
    }
    list_del(&ri->node);
    vd->nr_rings--;
    vd->nr_ring_pages -= ring_npages(ri->len);
    if ( ri->partner != V4V_DOMID_ANY )
        partner_unlink(ri);
    spin_lock(&ri->lock);
    ring_take_all_waiters(ri, &woken);
    spin_unlock(&ri->lock);
    spin_unlock(&vd->lock);

    wake_waiters(&woken);
    ring_info_free(ri);

    return 0;
}

/* --- V4VOP_sendv --- */

/*
 * Zero the data area from 'from' up to 'to' (exclusive, wrapping; nothing
 * when equal): what a payload copy that faulted may have written, so that no
 * byte of a message that was not sent stays in the ring. L3 held.
 */
static void ring_clear(struct v4v_ring_info *ri, uint32_t from, uint32_t to)
{
    uint8_t *data = ri->map.hdr->ring;

    ASSERT(LOCKING_L3(ri));

    if ( from <= to )
        memset(data + from, 0, to - from);
    else
    {
        memset(data + from, 0, ri->len - from);
        memset(data, 0, to);
    }
}

/*
 * Insert a message into the ring, all or nothing. L3 held.
 * Returns the payload length or a negative error.
 */
static long ring_insert(struct v4v_ring_info *ri, struct v4v_domain *src,
                        uint32_t src_port, uint32_t type,
                        const v4v_iov_t *iovs, unsigned int niov, uint32_t len)
{
    uint8_t *data = ri->map.hdr->ring;
    v4v_ring_message_header_t mh;
    uint32_t free, pos, mh_pos, tx = ri->tx;
    unsigned int i;
    int rc;

    ASSERT(LOCKING_L3(ri));

    if ( len > ring_max_message(ri->len) )
        return -EMSGSIZE;

    free = ring_free(ring_rx(ri), tx, ri->len);
    if ( !fits_now(len, free) )
    {
        rc = ring_add_waiter(ri, src, len);
        return rc ?: -EAGAIN;
    }

    /* Refuse unreadable payload before anything is written. */
    for ( i = 0; i < niov; i++ )
    {
        XEN_GUEST_HANDLE_PARAM(void) h =
            guest_handle_from_ptr((void *)(unsigned long)iovs[i].iov_base,
                                  void);

        if ( iovs[i].iov_len && !guest_handle_okay(h, iovs[i].iov_len) )
            return -EFAULT;
    }

    /* Payload first, after the header's slot; the header last. */
    pos = (tx + V4V_MESSAGE_HEADER_SIZE) % ri->len;
    for ( i = 0; i < niov; i++ )
    {
        XEN_GUEST_HANDLE_PARAM(void) h =
            guest_handle_from_ptr((void *)(unsigned long)iovs[i].iov_base,
                                  void);
        uint32_t done = 0;

        while ( done < iovs[i].iov_len )
        {
            uint32_t chunk = min(iovs[i].iov_len - done, ri->len - pos);

            if ( copy_from_guest_offset(data + pos, h, done, chunk) )
            {
                ring_clear(ri, (tx + V4V_MESSAGE_HEADER_SIZE) % ri->len,
                           (pos + chunk) % ri->len);
                return -EFAULT;
            }
            done += chunk;
            pos = (pos + chunk) % ri->len;
        }
    }

    mh.len = len + V4V_MESSAGE_HEADER_SIZE;
    mh.message_type = type;
    mh.source.port = src_port;
    mh.source.domain = src->domid;
    mh.source.pad = 0;
    memcpy(data + tx, &mh, sizeof(mh));
    mh_pos = tx;

    tx = roundup16((uint64_t)tx + V4V_MESSAGE_HEADER_SIZE + len) % ri->len;

    smp_wmb();
    ri->tx = tx;
    write_atomic(&ri->map.hdr->tx_ptr, tx);
    ring_mark_dirty(ri, mh_pos, V4V_MESSAGE_HEADER_SIZE + len);

    return len;
}

static long v4v_sendv(struct v4v_domain *vd,
                      XEN_GUEST_HANDLE_PARAM(void) arg1,
                      XEN_GUEST_HANDLE_PARAM(void) arg2,
                      unsigned int niov, unsigned int type)
{
    XEN_GUEST_HANDLE_PARAM(v4v_send_addr_t) ahnd =
        guest_handle_cast(arg1, v4v_send_addr_t);
    XEN_GUEST_HANDLE_PARAM(v4v_iov_t) ihnd = guest_handle_cast(arg2, v4v_iov_t);
    struct v4v_domain *dvd;
    struct v4v_ring_info *ri;
    v4v_send_addr_t sa;
    v4v_iov_t *iovs = NULL;
    uint64_t total = 0;
    domid_t dst;
    unsigned int i;
    long rc;

    ASSERT(LOCKING_Read_L1);

    if ( copy_from_guest(&sa, ahnd, 1) )
        return -EFAULT;
    if ( sa.src.pad || sa.dst.pad || sa.dst.domain == V4V_DOMID_ANY ||
         sa.dst.port == V4V_PORT_ANY )
        return -EINVAL;
    if ( sa.src.domain != vd->domid && sa.src.domain != DOMID_SELF )
        return -EPERM;
    if ( niov > V4V_MAX_IOV )
        return -E2BIG;

    if ( niov )
    {
        iovs = xmalloc_array(v4v_iov_t, niov);
        if ( !iovs )
            return -ENOMEM;
        if ( copy_from_guest(iovs, ihnd, niov) )
        {
            rc = -EFAULT;
            goto out;
        }
    }

    for ( i = 0; i < niov; i++ )
    {
        if ( iovs[i].pad )
        {
            rc = -EINVAL;
            goto out;
        }
        total += iovs[i].iov_len;
    }
    if ( total > V4V_MAX_MESSAGE_SIZE )
    {
        rc = -EMSGSIZE;
        goto out;
    }

    dst = sa.dst.domain == DOMID_SELF ? vd->domid : sa.dst.domain;

    if ( !acl_accepts(vd->domid, sa.src.port, dst, sa.dst.port) )
    {
        rc = -EACCES;
        goto out;
    }

    /*
     * A domain shutting down (suspended for xl save or migration included)
     * takes no message: its memory is being copied, and it comes back, if
     * at all, as a new domain without rings. A suspend that is cancelled
     * (domain_resume) accepts messages again.
     */
    dvd = find_domain(dst);
    if ( !dvd || ACCESS_ONCE(dvd->d->is_shutting_down) )
    {
        rc = -ECONNREFUSED;
        goto out;
    }

    rc = xsm_v4v_send(XSM_HOOK, vd->d, dvd->d);
    if ( rc )
        goto out;

    spin_lock(&dvd->lock);
    ri = find_ring_for_sender(dvd, sa.dst.port, vd->domid);
    if ( !ri )
    {
        spin_unlock(&dvd->lock);
        rc = -ECONNREFUSED;
        goto out;
    }
    spin_lock(&ri->lock);
    spin_unlock(&dvd->lock);

    rc = ring_insert(ri, vd, sa.src.port, type, iovs, niov, total);

    spin_unlock(&ri->lock);

    if ( rc >= 0 )
        signal_domain(dvd);

 out:
    xfree(iovs);

    return rc;
}

/* --- V4VOP_notify --- */

/* Fill one entry for the caller 'vd', queueing it when needed. L1 held. */
static void notify_entry(struct v4v_domain *vd, v4v_ring_data_ent_t *ent)
{
    domid_t dst = ent->ring.domain == DOMID_SELF ? vd->domid : ent->ring.domain;
    struct v4v_domain *dvd = find_domain(dst);
    struct v4v_ring_info *ri;
    uint32_t rx, free, max_msg;

    ASSERT(LOCKING_Read_L1);

    ent->flags = 0;
    ent->max_message_size = 0;

    /*
     * Nothing about a ring the caller may not send to, and no waiter: the
     * ACL (asked as for a send from port 0, since a notify names no source
     * port), then XSM, as sendv asks them.
     */
    if ( !acl_accepts(vd->domid, V4V_PORT_ANY, dst, ent->ring.port) )
        return;
    if ( !dvd || xsm_v4v_send(XSM_HOOK, vd->d, dvd->d) )
        return;

    spin_lock(&dvd->lock);
    ri = find_ring_for_sender(dvd, ent->ring.port, vd->domid);
    if ( !ri )
    {
        spin_unlock(&dvd->lock);
        return;
    }
    spin_lock(&ri->lock);
    spin_unlock(&dvd->lock);

    max_msg = ring_max_message(ri->len);
    rx = ring_rx(ri);
    free = ring_free(rx, ri->tx, ri->len);

    ent->flags = V4V_RING_DATA_F_EXISTS;
    ent->max_message_size = max_msg;
    if ( rx == ri->tx )
        ent->flags |= V4V_RING_DATA_F_EMPTY;
    if ( fits_now(ent->space_required, free) )
        ent->flags |= V4V_RING_DATA_F_SUFFICIENT;
    else if ( ent->space_required <= max_msg &&
              !ring_add_waiter(ri, vd, ent->space_required) )
        ent->flags |= V4V_RING_DATA_F_PENDING;

    spin_unlock(&ri->lock);
}

static long v4v_notify(struct v4v_domain *vd, XEN_GUEST_HANDLE_PARAM(void) arg)
{
    XEN_GUEST_HANDLE_PARAM(v4v_ring_data_t) hnd =
        guest_handle_cast(arg, v4v_ring_data_t);
    const size_t ents_off = offsetof(v4v_ring_data_t, data);
    v4v_ring_data_ent_t *ents = NULL;
    struct v4v_ring_info *ri;
    v4v_ring_data_t rd = { .nent = 0 };
    unsigned int i;
    LIST_HEAD(woken);
    long rc = 0;

    ASSERT(LOCKING_Read_L1);

    if ( !guest_handle_is_null(arg) )
    {
        if ( copy_from_guest(&rd, hnd, 1) )
            return -EFAULT;
        if ( rd.magic != V4V_RING_DATA_MAGIC || rd.pad )
            return -EINVAL;
        if ( rd.nent > V4V_MAX_NOTIFY )
            return -E2BIG;
        if ( rd.nent )
        {
            ents = xmalloc_array(v4v_ring_data_ent_t, rd.nent);
            if ( !ents )
                return -ENOMEM;
            if ( copy_from_guest_offset((uint8_t *)ents, arg, ents_off,
                                        rd.nent * sizeof(*ents)) )
            {
                rc = -EFAULT;
                goto out;
            }
            for ( i = 0; i < rd.nent; i++ )
                if ( ents[i].ring.pad || ents[i].pad )
                {
                    rc = -EINVAL;
                    goto out;
                }
        }
    }

    /* Wake the waiters on the caller's rings whose request fits now. */
    spin_lock(&vd->lock);
    for ( i = 0; i < V4V_RING_HASH_SIZE; i++ )
        list_for_each_entry ( ri, &vd->rings[i], node )
        {
            spin_lock(&ri->lock);
            ring_take_fitting_waiters(ri, &woken);
            spin_unlock(&ri->lock);
        }
    spin_unlock(&vd->lock);
    wake_waiters(&woken);

    for ( i = 0; i < rd.nent; i++ )
        notify_entry(vd, &ents[i]);

    if ( rd.nent &&
         copy_to_guest_offset(arg, ents_off, (uint8_t *)ents,
                              rd.nent * sizeof(*ents)) )
        rc = -EFAULT;

 out:
    xfree(ents);

    return rc;
}

/* --- V4VOP_info --- */

static long v4v_info(struct v4v_domain *vd, XEN_GUEST_HANDLE_PARAM(void) arg)
{
    XEN_GUEST_HANDLE_PARAM(v4v_info_t) hnd = guest_handle_cast(arg, v4v_info_t);
    v4v_info_t info = {
        .ring_magic = V4V_RING_MAGIC,
        .data_magic = V4V_RING_DATA_MAGIC,
        .domid = vd->domid,
        .max_ring_len = V4V_MAX_RING_LEN,
        .max_iov = V4V_MAX_IOV,
        .max_notify = V4V_MAX_NOTIFY,
        .max_waiters = V4V_MAX_WAITERS,
        .max_message_size = V4V_MAX_MESSAGE_SIZE,
        .max_rules = V4V_MAX_RULES,
    };
    long rc = 0;

    ASSERT(LOCKING_Read_L1);

    spin_lock(&vd->lock);
    if ( !vd->evtchn )
    {
        /*
         * Xen-attached, so the guest can neither close it nor lose it to
         * EVTCHNOP_reset, and its number is never reused while V4V holds it.
         */
        int port = alloc_unbound_xen_event_channel(vd->d, 0, vd->domid, NULL);

        if ( port < 0 )
            rc = -ENOMEM;
        else
            write_atomic(&vd->evtchn, port);
    }
    info.evtchn = vd->evtchn;
    info.max_rings = vd->max_rings;
    info.nr_rings = vd->nr_rings;
    info.max_ring_pages = vd->max_ring_pages;
    info.nr_ring_pages = vd->nr_ring_pages;
    spin_unlock(&vd->lock);

    if ( rc )
        return rc;

    return copy_to_guest(hnd, &info, 1) ? -EFAULT : 0;
}

/* --- V4VOP_config --- */

static long v4v_config(struct v4v_domain *vd, XEN_GUEST_HANDLE_PARAM(void) arg)
{
    XEN_GUEST_HANDLE_PARAM(v4v_config_t) hnd =
        guest_handle_cast(arg, v4v_config_t);
    struct v4v_domain *tvd;
    v4v_config_t cfg;
    long rc;

    ASSERT(LOCKING_Read_L1);

    rc = xsm_v4v_admin(XSM_OTHER, vd->d);
    if ( rc )
        return rc;
    if ( copy_from_guest(&cfg, hnd, 1) )
        return -EFAULT;
    if ( cfg.pad || cfg.max_rings > V4V_MAX_RINGS_LIMIT ||
         cfg.max_ring_pages > V4V_MAX_RING_PAGES_LIMIT )
        return -EINVAL;

    tvd = find_domain(cfg.domain == DOMID_SELF ? vd->domid : cfg.domain);
    if ( !tvd )
        return -ESRCH;

    spin_lock(&tvd->lock);
    tvd->max_rings = cfg.max_rings;
    if ( cfg.max_ring_pages )
        tvd->max_ring_pages = cfg.max_ring_pages;
    spin_unlock(&tvd->lock);

    return 0;
}

/* --- V4VOP_tables_* --- */

static long v4v_tables_add(struct v4v_domain *vd,
                           XEN_GUEST_HANDLE_PARAM(void) arg,
                           unsigned int position)
{
    XEN_GUEST_HANDLE_PARAM(v4vtables_rule_t) hnd =
        guest_handle_cast(arg, v4vtables_rule_t);
    v4vtables_rule_t rule;
    long rc = 0;

    ASSERT(LOCKING_Read_L1);

    rc = xsm_v4v_admin(XSM_OTHER, vd->d);
    if ( rc )
        return rc;
    if ( copy_from_guest(&rule, hnd, 1) )
        return -EFAULT;
    if ( !rule_valid(&rule) )
        return -EINVAL;

    write_lock(&v4v_acl_lock);
    if ( v4v_nr_rules >= V4V_MAX_RULES )
        rc = -ENOSPC;
    else
    {
        unsigned int at = (position == 0 || position > v4v_nr_rules)
                          ? v4v_nr_rules
                          : array_index_nospec(position - 1, v4v_nr_rules);

        memmove(&v4v_rules[at + 1], &v4v_rules[at],
                (v4v_nr_rules - at) * sizeof(v4v_rules[0]));
        v4v_rules[at] = rule;
        v4v_nr_rules++;
    }
    write_unlock(&v4v_acl_lock);

    return rc;
}

static long v4v_tables_del(struct v4v_domain *vd,
                           XEN_GUEST_HANDLE_PARAM(void) arg,
                           unsigned int position)
{
    XEN_GUEST_HANDLE_PARAM(v4vtables_rule_t) hnd =
        guest_handle_cast(arg, v4vtables_rule_t);
    v4vtables_rule_t rule;
    unsigned int at;
    long rc = 0;

    ASSERT(LOCKING_Read_L1);

    rc = xsm_v4v_admin(XSM_OTHER, vd->d);
    if ( rc )
        return rc;

    if ( !guest_handle_is_null(arg) )
    {
        if ( copy_from_guest(&rule, hnd, 1) )
            return -EFAULT;
        if ( !rule_valid(&rule) || position )
            return -EINVAL;
    }
    else if ( !position )
        return -EINVAL;

    write_lock(&v4v_acl_lock);
    if ( !guest_handle_is_null(arg) )
    {
        for ( at = 0; at < v4v_nr_rules; at++ )
            if ( rule_equal(&v4v_rules[at], &rule) )
                break;
    }
    else if ( position == V4VTABLES_DEL_ALL )
    {
        v4v_nr_rules = 0;
        at = 0;
        goto unlock;
    }
    else
        at = position - 1;

    if ( at >= v4v_nr_rules )
        rc = -ENOENT;
    else
    {
        at = array_index_nospec(at, v4v_nr_rules);
        memmove(&v4v_rules[at], &v4v_rules[at + 1],
                (v4v_nr_rules - at - 1) * sizeof(v4v_rules[0]));
        v4v_nr_rules--;
    }

 unlock:
    write_unlock(&v4v_acl_lock);

    return rc;
}

static long v4v_tables_list(struct v4v_domain *vd,
                            XEN_GUEST_HANDLE_PARAM(void) arg)
{
    XEN_GUEST_HANDLE_PARAM(v4vtables_list_t) hnd =
        guest_handle_cast(arg, v4vtables_list_t);
    const size_t rules_off = offsetof(v4vtables_list_t, rules);
    v4vtables_rule_t *copy = NULL;
    v4vtables_list_t list;
    unsigned int n = 0, total;
    long rc;

    ASSERT(LOCKING_Read_L1);

    rc = xsm_v4v_admin(XSM_OTHER, vd->d);
    if ( rc )
        return rc;
    if ( copy_from_guest(&list, hnd, 1) )
        return -EFAULT;
    if ( list.nb_rules > V4V_MAX_RULES )
        return -EINVAL;

    /* Snapshot under the lock, copy to the guest without it. */
    if ( list.nb_rules )
    {
        copy = xmalloc_array(v4vtables_rule_t, list.nb_rules);
        if ( !copy )
            return -ENOMEM;
    }

    read_lock(&v4v_acl_lock);
    total = v4v_nr_rules;
    if ( list.start_rule < total )
        n = min(list.nb_rules, total - list.start_rule);
    if ( n )
        memcpy(copy, &v4v_rules[array_index_nospec(list.start_rule, total)],
               n * sizeof(*copy));
    read_unlock(&v4v_acl_lock);

    list.nb_rules = n;
    if ( (n && copy_to_guest_offset(arg, rules_off, (uint8_t *)copy,
                                    n * sizeof(*copy))) ||
         copy_to_guest(hnd, &list, 1) )
        rc = -EFAULT;
    else
        rc = total;

    xfree(copy);

    return rc;
}

/* --- the hypercall --- */

/*
 * The registers as a 64-bit guest passes them: nothing is truncated. cmd,
 * arg3 and arg4 are 32-bit values in the ABI; one with upper bits set is
 * refused (-EINVAL), as an unknown command is, so that no check passes on a
 * truncated value.
 */
long do_v4v_op(unsigned long cmd, XEN_GUEST_HANDLE_PARAM(void) arg1,
               XEN_GUEST_HANDLE_PARAM(void) arg2,
               unsigned long raw_arg3, unsigned long raw_arg4)
{
    unsigned int arg3 = raw_arg3, arg4 = raw_arg4;
    struct v4v_domain *vd;
    long rc;

    if ( !opt_v4v )
        return -ENOSYS;

    if ( arg3 != raw_arg3 || arg4 != raw_arg4 )
        return -EINVAL;

    /* Unknown commands, and the arguments each command reserves. */
    switch ( cmd )
    {
    case V4VOP_register_ring:
    case V4VOP_unregister_ring:
    case V4VOP_notify:
    case V4VOP_info:
    case V4VOP_config:
    case V4VOP_tables_list:
        if ( !guest_handle_is_null(arg2) || arg3 || arg4 )
            return -EINVAL;
        break;

    case V4VOP_tables_add:
    case V4VOP_tables_del:
        if ( !guest_handle_is_null(arg2) || arg4 )
            return -EINVAL;
        break;

    case V4VOP_sendv:
        break;

    default:
        return -EINVAL;
    }

    /* May this domain use V4V? (Before any V4V lock is taken.) */
    rc = xsm_v4v_enable(XSM_HOOK, current->domain);
    if ( rc )
        return rc;

    read_lock(&v4v_lock);

    vd = current->domain->v4v;
    if ( !vd )
    {
        read_unlock(&v4v_lock);
        return -ENOSYS;
    }

    switch ( cmd )
    {
    case V4VOP_register_ring:
        rc = v4v_register_ring(vd, arg1);
        break;

    case V4VOP_unregister_ring:
        rc = v4v_unregister_ring(vd, arg1);
        break;

    case V4VOP_notify:
        rc = v4v_notify(vd, arg1);
        break;

    case V4VOP_sendv:
        rc = v4v_sendv(vd, arg1, arg2, arg3, arg4);
        break;

    case V4VOP_info:
        rc = v4v_info(vd, arg1);
        break;

    case V4VOP_config:
        rc = v4v_config(vd, arg1);
        break;

    case V4VOP_tables_add:
        rc = v4v_tables_add(vd, arg1, arg3);
        break;

    case V4VOP_tables_del:
        rc = v4v_tables_del(vd, arg1, arg3);
        break;

    case V4VOP_tables_list:
        rc = v4v_tables_list(vd, arg1);
        break;

    default:
        ASSERT_UNREACHABLE();
        rc = -EINVAL;
        break;
    }

    read_unlock(&v4v_lock);

    return rc;
}

/* --- domain lifecycle --- */

static void v4v_hash_init(void)
{
    unsigned int i;

    if ( v4v_hash_ready )
        return;
    for ( i = 0; i < V4V_DOMAIN_HASH_SIZE; i++ )
        INIT_LIST_HEAD(&v4v_domain_hash[i]);
    v4v_hash_ready = true;
}

int v4v_init(struct domain *d)
{
    struct v4v_domain *vd;
    unsigned int i;

    /* Refused by XSM: no V4V state, so the domain's ops get -ENOSYS. */
    if ( !opt_v4v || d->domain_id >= DOMID_FIRST_RESERVED ||
         xsm_v4v_enable(XSM_HOOK, d) )
        return 0;

    vd = xzalloc(struct v4v_domain);
    if ( !vd )
        return -ENOMEM;

    vd->d = d;
    vd->domid = d->domain_id;
    spin_lock_init(&vd->lock);
    spin_lock_init(&vd->waits_lock);
    INIT_LIST_HEAD(&vd->waits);
    for ( i = 0; i < V4V_RING_HASH_SIZE; i++ )
        INIT_LIST_HEAD(&vd->rings[i]);
    vd->max_rings = V4V_DEFAULT_MAX_RINGS;
    vd->max_ring_pages = V4V_DEFAULT_MAX_RING_PAGES;

    write_lock(&v4v_lock);
    v4v_hash_init();
    if ( find_domain(vd->domid) )
    {
        /* Cannot happen: domain ids are unique among live domains. */
        write_unlock(&v4v_lock);
        xfree(vd);
        return -EEXIST;
    }
    list_add_tail(&vd->node, &v4v_domain_hash[domain_hash(vd->domid)]);
    d->v4v = vd;
    write_unlock(&v4v_lock);

    return 0;
}

/*
 * Drop everything V4V holds for or on behalf of vd. L1 held for writing,
 * which excludes every other V4V path: no L2, L3, L4 or LP needed. Touches
 * only vd's rings, vd's waits and the rings registered for vd (the
 * indexes), so its cost does not grow with other domains' state.
 */
static void v4v_teardown(struct v4v_domain *vd)
{
    struct v4v_ring_info *ri, *rtmp;
    struct v4v_waiter *w, *wtmp;
    struct list_head *partner;
    unsigned int i;
    LIST_HEAD(woken);

    ASSERT(LOCKING_Write_L1);

    /* 1. Its waits, on any ring (its own included): never signalled. */
    list_for_each_entry_safe ( w, wtmp, &vd->waits, dom_node )
    {
        list_del(&w->node);
        w->ring->nr_waiters--;
        list_del(&w->dom_node);
        xfree(w);
    }

    /* 2. Its own rings; those waiting on them are signalled. */
    for ( i = 0; i < V4V_RING_HASH_SIZE; i++ )
        list_for_each_entry_safe ( ri, rtmp, &vd->rings[i], node )
        {
            list_del(&ri->node);
            if ( ri->partner != V4V_DOMID_ANY )
                partner_unlink(ri);
            ring_take_all_waiters(ri, &woken);
            ring_info_free(ri);
        }
    vd->nr_rings = 0;
    vd->nr_ring_pages = 0;

    /*
     * 3. Other domains' rings registered for it alone; owners signalled.
     * (Not list_for_each_entry_safe: the last unlink frees the list head.)
     */
    while ( (partner = partner_rings(vd->domid)) != NULL &&
            !list_empty(partner) )
    {
        struct v4v_domain *owner;

        ri = list_entry(partner->next, struct v4v_ring_info,
                        partner_node);
        owner = ri->owner;

        partner_unlink(ri);
        list_del(&ri->node);
        owner->nr_rings--;
        owner->nr_ring_pages -= ring_npages(ri->len);
        ring_take_all_waiters(ri, &woken);
        ring_info_free(ri);
        signal_domain(owner);
    }
    wake_waiters(&woken);

    /*
     * 4. The event channel: freed here (on destruction, before
     * evtchn_destroy(); on soft reset, which evtchn_reset() does not close
     * a Xen-attached port for); a fresh one comes with the next info.
     */
    if ( vd->evtchn )
        free_xen_event_channel(vd->d, vd->evtchn);
    vd->evtchn = 0;
}

void v4v_destroy(struct domain *d)
{
    struct v4v_domain *vd;

    /* Already done by domain_kill(), or never set up. */
    if ( !ACCESS_ONCE(d->v4v) )
        return;

    write_lock(&v4v_lock);
    vd = d->v4v;
    if ( vd )
    {
        v4v_teardown(vd);
        list_del(&vd->node);
        d->v4v = NULL;
    }
    write_unlock(&v4v_lock);

    xfree(vd);
}

void v4v_soft_reset(struct domain *d)
{
    write_lock(&v4v_lock);
    if ( d->v4v )
        v4v_teardown(d->v4v);
    write_unlock(&v4v_lock);
}

/* --- debug key --- */

static void cf_check v4v_dump_state(unsigned char key)
{
    struct v4v_domain *vd;
    struct v4v_ring_info *ri;
    struct v4v_waiter *w;
    unsigned int h, i;

    printk("'%c' pressed -> dumping V4V state (%s)\n", key,
           opt_v4v ? "enabled" : "disabled: boot with v4v=1");
    if ( !opt_v4v )
        return;

    read_lock(&v4v_lock);
    for ( h = 0; v4v_hash_ready && h < V4V_DOMAIN_HASH_SIZE; h++ )
        list_for_each_entry ( vd, &v4v_domain_hash[h], node )
        {
            spin_lock(&vd->lock);
            printk("V4V d%u: evtchn %u, rings %u/%u, pages %u/%u\n",
                   vd->domid, vd->evtchn, vd->nr_rings, vd->max_rings,
                   vd->nr_ring_pages, vd->max_ring_pages);
            for ( i = 0; i < V4V_RING_HASH_SIZE; i++ )
                list_for_each_entry ( ri, &vd->rings[i], node )
                {
                    spin_lock(&ri->lock);
                    printk("V4V  ring port %#x partner %u len %u rx %u tx %u "
                           "pages %u waiters %u\n", ri->port, ri->partner,
                           ri->len, ACCESS_ONCE(ri->map.hdr->rx_ptr), ri->tx,
                           ri->map.npages, ri->nr_waiters);
                    list_for_each_entry ( w, &ri->waiters, node )
                        printk("V4V   waiter d%u len %u\n", w->dom->domid,
                               w->len);
                    spin_unlock(&ri->lock);
                }
            spin_unlock(&vd->lock);
        }
    read_unlock(&v4v_lock);

    read_lock(&v4v_acl_lock);
    printk("V4V ACL table: %u rules (no match accepts)\n", v4v_nr_rules);
    for ( i = 0; i < v4v_nr_rules; i++ )
        printk("V4V  %u: d%u:%#x -> d%u:%#x %s\n", i + 1,
               v4v_rules[i].src.domain, v4v_rules[i].src.port,
               v4v_rules[i].dst.domain, v4v_rules[i].dst.port,
               v4v_rules[i].accept ? "ACCEPT" : "REJECT");
    read_unlock(&v4v_acl_lock);

    printk("V4V page references held: %d\n", atomic_read(&v4v_pages_pinned));
}

static int __init cf_check v4v_boot_init(void)
{
    register_keyhandler('4', v4v_dump_state, "dump V4V state", 1);
    if ( opt_v4v )
        printk(XENLOG_INFO "V4V enabled (hypercall %d)\n",
               __HYPERVISOR_v4v_op);

    return 0;
}
__initcall(v4v_boot_init);

/*
 * Local variables:
 * mode: C
 * c-file-style: "BSD"
 * c-basic-offset: 4
 * tab-width: 4
 * indent-tabs-mode: nil
 * End:
 */
