/* source.h — internal to engine/policy: reading a policy file (source.c). */
#ifndef SL_POLICY_SOURCE_H
#define SL_POLICY_SOURCE_H

#include "policy.h"

#define SL_POLICY_FILE_MAX (16u << 20) /* a larger policy file is refused */

/* Reads a policy file into *buf (malloc'd, the caller frees; *len bytes). Returns 0 or a
 * negative code with a message naming the file. */
int sl_policy_read_file(const char *path, char **buf, size_t *len, char *msg, size_t msglen);

#endif
