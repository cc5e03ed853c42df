/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * Userspace stand-in for Xen's <xen/nospec.h>. The harness has no
 * speculation to stop, but checks what the real macro may assume: every
 * index it is given is in bounds (a use on an unchecked index is a bug).
 */
#ifndef V4VH_XEN_NOSPEC_H
#define V4VH_XEN_NOSPEC_H

#include <v4v_shim.h>

#define array_index_nospec(index, size) ({                              \
    __typeof__(index) _i = (index);                                     \
    if ( (unsigned long)_i >= (unsigned long)(size) )                   \
        v4vh_fatal(__FILE__, __LINE__,                                  \
                   "array_index_nospec: index out of bounds");          \
    _i;                                                                 \
})

#endif /* V4VH_XEN_NOSPEC_H */
