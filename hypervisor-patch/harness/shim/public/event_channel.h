/* SPDX-License-Identifier: GPL-2.0-only */
/* Userspace stand-in for Xen's public/event_channel.h (what v4v.c uses). */
#ifndef V4VH_PUBLIC_EVENT_CHANNEL_H
#define V4VH_PUBLIC_EVENT_CHANNEL_H

#include "xen.h"

typedef uint32_t evtchn_port_t;

struct evtchn_alloc_unbound {
    domid_t dom, remote_dom;
    evtchn_port_t port;
};
typedef struct evtchn_alloc_unbound evtchn_alloc_unbound_t;

#endif /* V4VH_PUBLIC_EVENT_CHANNEL_H */
