/* common.h — error codes and limits shared by every sluice module.
 * Functions that can fail return 0 or a negative SL_E* code (the libuv habit). */
#ifndef SL_COMMON_H
#define SL_COMMON_H

#include <stddef.h>
#include <stdint.h>

#define SL_OK 0
#define SL_EINVAL (-22)    /* bad argument or transition not allowed */
#define SL_ENOENT (-2)     /* no such node / task */
#define SL_EEXIST (-17)    /* already there */
#define SL_EAGAIN (-11)    /* compare-and-swap lost: the current value differs */
#define SL_EBUSY (-16)     /* another drain or operator holds it */
#define SL_ENOMEM (-12)    /* out of memory */
#define SL_EPOLICY (-1000) /* the policy failed (error, budget, wrong result) */
#define SL_ELIMIT (-1001)  /* a configured limit is reached */
#define SL_EIO (-5)               /* the store could not write or read */
#define SL_ENOTENOUGH (-1002)     /* D1: fewer than 2 Alive nodes */
#define SL_ECOORDINATOR (-1003)   /* D1: the target is the coordinator's own node */
#define SL_ESTOPPING (-1004)      /* D1/D3: the node is Stopping (or its drain completed) */
#define SL_ENOTREADY (-1005)      /* D1: the coordinator is still bootstrapping */

#define SL_ID_MAX 64      /* longest node, task or changefeed id, including the NUL */
#define SL_ERRMSG_MAX 512 /* longest error message carried across a module boundary */

const char *sl_strerror(int code);

#endif
