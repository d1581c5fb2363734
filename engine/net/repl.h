/* repl.h — the REPL's evaluation engine, server side (R1).
 *
 * A REPL is one sandboxed lua_State (the policies' sandbox: same whitelist, memory cap
 * and per-call time budget, so `while true do end` is an error, not a frozen
 * coordinator) bound to a live core. Operators type Lua; the coordinator evaluates it
 * on its loop thread, between two scheduling rounds, and answers with text:
 *  - expressions print without `return` (`return <chunk>` is tried first, as lua.c does);
 *  - tables print readably: nested, keys sorted, cycles marked, depth and size limited;
 *  - several results print tab-separated; errors print and the session goes on;
 *  - a chunk that ends too early ("… near <eof>") is reported incomplete, so the client
 *    reads another line and sends the whole chunk again.
 * Globals persist between evaluations; every client of one coordinator shares them.
 *
 * Inspection: nodes(), node(id), changefeeds(), operators(["stuck"]),
 * drain.status([id]), drain.plan(id), policy.info(), help(). Steering, on purpose:
 * drain.start(id), drain.cancel(id), policy.reload(). Steering goes through the
 * callbacks of sl_repl_ops_t so the coordinator persists and notifies exactly as its API
 * does; the budget is paused while a callback runs (a store's fsync is not the
 * operator's loop).
 *
 * HTTP: sl_repl_http_eval / sl_repl_http_complete answer
 *   POST /api/v2/repl           {"code": "..."}   → {"output": "...", "incomplete": b, "error": b}
 *   POST /api/v2/repl/complete  {"prefix": "..."} → {"matches": ["drain.start", ...]}
 * Output is valid UTF-8 (other bytes are shown as \xNN). */
#ifndef SL_NET_REPL_H
#define SL_NET_REPL_H

#include "../core/core.h"
#include "../policy/policy.h"
#include "../policy/registry.h"
#include "http.h"

typedef struct sl_repl sl_repl_t;

typedef struct {
    /* D1 as PUT /api/v2/captures/{id}/drain does it (start, persist, notify). Returns 0
     * with the counts, or the SL_E* code of sl_core_drain_start. NULL: the REPL calls
     * sl_core_drain_start itself. */
    int (*drain_start)(void *arg, const char *id, sl_drain_counts_t *counts);
    /* D3 as DELETE …/drain. Returns 0 or the code of sl_core_drain_cancel. NULL: direct. */
    int (*drain_cancel)(void *arg, const char *id);
    /* The clock the API uses for drain status (ms). NULL: the wall clock. */
    uint64_t (*now_ms)(void *arg);
    /* The i-th changefeed id in creation order, NULL past the end. NULL: changefeeds()
     * lists none. */
    const char *(*changefeed_at)(void *arg, size_t i);
    void *arg;
    const char *coordinator_node; /* marked in nodes(); NULL or "" when none (copied) */
} sl_repl_ops_t;

/* `reg` may be NULL (policy.info() then shows the core's policy as built-in, and
 * policy.reload() says there is nothing to reload). `lim` NULL: the policy defaults
 * (64 MiB, 50 ms per evaluation). Returns 0, or a negative code with err set. */
int sl_repl_new(sl_core_t *core, sl_policy_registry_t *reg, const sl_repl_ops_t *ops,
                const sl_policy_limits_t *lim, sl_repl_t **out, char *err, size_t errlen);
void sl_repl_free(sl_repl_t *r);

/* Evaluates `chunk`. *output (malloc'd, the caller frees) gets what it printed and its
 * results, or the error. *incomplete is 1 when the chunk needs more lines (then output
 * is ""). Returns 0, SL_EPOLICY when the chunk raised an error (the message is in
 * *output), or SL_ENOMEM (*output NULL). */
int sl_repl_eval(sl_repl_t *r, const char *chunk, char **output, int *incomplete);

/* Global names and table fields completing `prefix` ("drain.st" → "drain.start",
 * "drain.status"), sorted, whole expressions. *matches is malloc'd (free with
 * sl_repl_matches_free). Returns 0 or SL_ENOMEM. */
int sl_repl_complete(sl_repl_t *r, const char *prefix, char ***matches, size_t *n);
void sl_repl_matches_free(char **matches, size_t n);

/* Route handlers; `repl` is the sl_repl_t. 400 INVALID_ARGUMENT for a body without the
 * string field, 400 MALFORMED_JSON for bad JSON. */
void sl_repl_http_eval(void *repl, const sl_http_request_t *req, sl_http_response_t *res);
void sl_repl_http_complete(void *repl, const sl_http_request_t *req, sl_http_response_t *res);

#endif
