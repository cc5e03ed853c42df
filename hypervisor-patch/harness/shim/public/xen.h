/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * Userspace stand-in for Xen's public/xen.h: only what public/v4v.h and
 * xen/common/v4v.c use, with the same values and layouts as Xen 4.17 on
 * x86_64.
 */
#ifndef V4VH_PUBLIC_XEN_H
#define V4VH_PUBLIC_XEN_H

#include <stdint.h>

typedef uint16_t domid_t;

#define DOMID_FIRST_RESERVED    0x7FF0U
#define DOMID_SELF              0x7FF0U
#define DOMID_IO                0x7FF1U
#define DOMID_XEN               0x7FF2U
#define DOMID_COW               0x7FF3U
#define DOMID_INVALID           0x7FF4U
#define DOMID_IDLE              0x7FFFU

#define XEN_FLEX_ARRAY_DIM      /* empty: C99 flexible array member */

#define ___DEFINE_XEN_GUEST_HANDLE(name, type) \
    typedef struct { type *p; } __guest_handle_ ## name
#define __DEFINE_XEN_GUEST_HANDLE(name, type)  \
    ___DEFINE_XEN_GUEST_HANDLE(name, type);    \
    ___DEFINE_XEN_GUEST_HANDLE(const_ ## name, const type)
#define DEFINE_XEN_GUEST_HANDLE(name)   __DEFINE_XEN_GUEST_HANDLE(name, name)
#define XEN_GUEST_HANDLE(name)          __guest_handle_ ## name
#define XEN_GUEST_HANDLE_PARAM(name)    XEN_GUEST_HANDLE(name)
#define set_xen_guest_handle(hnd, val)  do { (hnd).p = (val); } while ( 0 )

__DEFINE_XEN_GUEST_HANDLE(void, void);
__DEFINE_XEN_GUEST_HANDLE(uint8, uint8_t);

#define __HYPERVISOR_v4v_op     43

#endif /* V4VH_PUBLIC_XEN_H */
