/* policy.c — what every policy shares: default sandbox limits and sl_policy_free (P2).
 * A policy is freed through its own ops->destroy, so the caller never needs to know
 * whether it holds the built-in C policy or a Lua one. */
#include <stddef.h>

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
