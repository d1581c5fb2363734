/* sandbox.h — internal to engine/policy: the sandboxed lua_State a Lua policy runs in
 * (P2). Not part of the module's surface; lua_host.c is its only user. */
#ifndef SL_POLICY_SANDBOX_H
#define SL_POLICY_SANDBOX_H

#include <signal.h>
#include <sys/types.h>
#include <time.h>

#include <lua.h>

#include "policy.h"

typedef struct sl_sandbox {
    lua_State *L;
    /* memory cap, enforced by the allocator */
    size_t mem_used;
    size_t mem_cap;
    int mem_refused;       /* an allocation was refused since the last arm */
    /* time and instruction budget, enforced by a count hook and by the C wrappers */
    volatile sig_atomic_t armed;
    int expired;           /* the budget ran out; pcall/xpcall re-raise from now on */
    uint64_t deadline_ns;  /* CLOCK_MONOTONIC */
    uint64_t instr;        /* VM instructions counted since arming */
    uint64_t instr_cap;
    unsigned loop_count;   /* calls of C helpers between two deadline checks */
    uint32_t budget_ms;
    const char *phase;     /* "load", "selftest", "place", "drain_order" */
    /* watchdog: a per-state POSIX timer that, at the deadline, makes the hook fire on the
     * very next instruction or call (see sandbox.c) */
    int has_timer;
    timer_t timer;
    pid_t timer_tid;                /* the thread the timer signals */
    volatile sig_atomic_t watch_fired;
    /* log(): who speaks, and a token bucket so a policy cannot flood stderr */
    char label[SL_ID_MAX + 8];
    double log_tokens;
    uint64_t log_refill_ns;
    unsigned long log_dropped;
} sl_sandbox_t;

/* Creates the state with the capped allocator and the whitelisted environment. On
 * failure returns a negative code, writes a message and leaves nothing allocated. */
int sl_policy_sandbox_open(sl_sandbox_t *sb, size_t mem_cap, const char *label, char *err,
                           size_t errlen);
/* Starts a budget of `ms` for the named phase; every Lua instruction after this counts. */
void sl_policy_sandbox_arm(sl_sandbox_t *sb, const char *phase, uint32_t ms);
void sl_policy_sandbox_disarm(sl_sandbox_t *sb);
/* lua.c's message handler: appends a traceback; never runs Lua code. */
int sl_policy_sandbox_msghandler(lua_State *L);
void sl_policy_sandbox_close(sl_sandbox_t *sb);

#endif
