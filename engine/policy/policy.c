/* policy.c — what every policy shares: default sandbox limits, sl_policy_free (P2) and
 * the one frame a policy's messages are shown in (sl_policy_message).
 * A policy is freed through its own ops->destroy, so the caller never needs to know
 * whether it holds the built-in C policy or a Lua one. */
#include <stdio.h>
#include <string.h>

#include "policy.h"

void sl_policy_limits_default(sl_policy_limits_t *lim)
{
    lim->memory_bytes = (size_t)64 << 20;
    lim->call_budget_ms = 50;
    lim->load_budget_ms = 1000;
}

void sl_policy_free(sl_policy_t *p)
{
    if (p != NULL && p->ops != NULL && p->ops->destroy != NULL)
        p->ops->destroy(p);
}

void sl_policy_message(const sl_policy_t *p, const char *task, const char *msg, char *dst,
                       size_t dstlen)
{
    if (dstlen == 0)
        return;
    if (msg == NULL)
        msg = "unknown error";
    /* "FILE:LINE: what" (policy.h): the position goes into the frame */
    const char *what = msg, *line = NULL;
    size_t flen = strlen(p->file), llen = 0;
    if (flen > 0 && strncmp(msg, p->file, flen) == 0 && msg[flen] == ':') {
        const char *q = msg + flen + 1;
        while (*q >= '0' && *q <= '9')
            q++;
        if (q > msg + flen + 1 && q[0] == ':') {
            line = msg + flen + 1;
            llen = (size_t)(q - line);
            what = q[1] == ' ' ? q + 2 : q + 1;
        }
    }
    snprintf(dst, dstlen, "policy %s (%s%s%.*s): %s%s%s%s", p->name, p->file, line ? ":" : "",
             (int)llen, line ? line : "", task ? "task \"" : "", task ? task : "",
             task ? "\": " : "", what);
}
