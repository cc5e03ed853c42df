/* SPDX-License-Identifier: GPL-2.0-only */
/* Userspace stand-in for Xen's <xsm/xsm.h>: everything is in v4v_shim.h. */
#include <v4v_shim.h>
