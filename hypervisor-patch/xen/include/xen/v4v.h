/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * xen/v4v.h: the hypervisor-internal interface of V4V (xen/common/v4v.c).
 *
 * The guest ABI is in public/v4v.h.
 */

#ifndef __XEN_V4V_H__
#define __XEN_V4V_H__

struct domain;

#ifdef CONFIG_V4V

/* Called from domain_create(): sets up the domain's V4V state. */
int v4v_init(struct domain *d);

/*
 * Called from domain_kill() and from the domain_create() error path:
 * drops the domain's rings (and their page references), its waits on other
 * domains' rings, and the rings other domains registered for it alone.
 * Safe to call more than once.
 */
void v4v_destroy(struct domain *d);

/* Called from domain_soft_reset(): as v4v_destroy, keeping the state. */
void v4v_soft_reset(struct domain *d);

#else /* !CONFIG_V4V */

static inline int v4v_init(struct domain *d)
{
    return 0;
}

static inline void v4v_destroy(struct domain *d)
{
}

static inline void v4v_soft_reset(struct domain *d)
{
}

#endif /* CONFIG_V4V */

#endif /* __XEN_V4V_H__ */

/*
 * Local variables:
 * mode: C
 * c-file-style: "BSD"
 * c-basic-offset: 4
 * tab-width: 4
 * indent-tabs-mode: nil
 * End:
 */
