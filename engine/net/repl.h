/* repl.h — the REPL's evaluation engine, server side (R1).
 *
 * The REPL evaluates an operator's Lua in sandboxed lua_States (the policies' sandbox:
 * same whitelist, memory cap and per-call time budget, so `while true do end` is an
 * error, not a frozen coordinator) bound to a live core. The coordinator evaluates on its
 * loop thread, between two scheduling rounds, and answers with text:
 *  - expressions print without `return` (`return <chunk>` is tried first, as lua.c does);
 *  - tables print readably: nested, keys sorted, cycles marked, depth and size limited;
 *  - several results print tab-separated; errors print and the session goes on;
 *  - a chunk that ends too early ("… near <eof>") is reported incomplete, so the client
 *    reads another line and sends the whole chunk again.
 *
 * Sessions: every client gets a state of its own, so one operator's globals are never
 * seen by another and one session's runaway state (memory cap reached, a broken global)
 * cannot touch another. Memory stays bounded: at most `max_sessions` are open (opening one
 * more closes the longest-idle), a session idle longer than `idle_ms` is closed (checked
 * on every REPL request and by sl_repl_sweep), a client closes its session when it exits,
 * and `reset()` starts a session afresh. An evaluation without a session runs in a fresh
 * state closed right after it (one-shot: `curl` and older clients).
 *
 * Inspection: nodes(), node(id), changefeeds(), operators(["stuck"]),
 * drain.status([id]), drain.plan(id), policy.info(), help(), reset(). Steering, on
 * purpose: drain.start(id), drain.cancel(id), policy.reload(). Steering goes through the
 * callbacks of sl_repl_ops_t so the coordinator persists and notifies exactly as its API
 * does; the budget is paused while a callback runs (a store's fsync is not the operator's
 * loop).
 *
 * HTTP: sl_repl_http_eval / sl_repl_http_complete answer
 *   POST /api/v2/repl  {"code": "...", "session": "new" | ID}  (session optional)
 *        → 200 {"output": "...", "incomplete": b, "error": b, "session": ID}
 *          ("session" is there when the request named or opened one)
 *   POST /api/v2/repl  {"session": ID, "close": true}  → 200 {"session": ID, "closed": true}
 *   POST /api/v2/repl/complete  {"prefix": "...", "session": ID}  (session optional)
 *        → 200 {"matches": ["drain.start", ...]}
 * An ID that is not open (expired, closed to make room, closed by its client, or from a
 * coordinator that has restarted) → 404 {"error_code": "SESSION_NOT_FOUND", "error_msg":
 * "REPL session ID was closed after 30 min idle; open another with ...", "reason": the
 * first part alone}: the client opens a new session ("session": "new") and says so.
 * 400 INVALID_ARGUMENT for a field of the wrong type or a malformed ID, 400 MALFORMED_JSON
 * for bad JSON. Output is valid UTF-8 (other bytes are shown as \xNN).
 *
 * Not thread-safe: one thread (the coordinator's loop) calls every function. */
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

/* A session id: SL_REPL_ID_LEN lowercase hex digits (128 random bits). */
#define SL_REPL_ID_LEN 32
#define SL_REPL_ID_SIZE (SL_REPL_ID_LEN + 1)
#define SL_REPL_SESSIONS_DEFAULT 16
#define SL_REPL_SESSIONS_LIMIT 1024
#define SL_REPL_IDLE_MS_DEFAULT (30u * 60u * 1000u)

typedef struct {
    size_t max_sessions;             /* open at once, 1..SL_REPL_SESSIONS_LIMIT; 0: default 16 */
    uint64_t idle_ms;                /* closed after this long unused; 0: default 30 min */
    uint64_t (*clock_ms)(void *arg); /* a monotonic clock in ms; NULL: CLOCK_MONOTONIC */
    void *clock_arg;
} sl_repl_sessions_config_t;

/* `reg` may be NULL (policy.info() then shows the core's policy as built-in, and
 * policy.reload() says there is nothing to reload). `lim` NULL: the policy defaults
 * (64 MiB per session, 50 ms per evaluation). Sessions get the defaults above until
 * sl_repl_configure_sessions. Returns 0, or a negative code with err set. */
int sl_repl_new(sl_core_t *core, sl_policy_registry_t *reg, const sl_repl_ops_t *ops,
                const sl_policy_limits_t *lim, sl_repl_t **out, char *err, size_t errlen);
/* Closes every session. */
void sl_repl_free(sl_repl_t *r);

/* Sets the session limits (zeros or cfg NULL: the defaults). Sessions above a lowered maximum are
 * closed, longest-idle first. Returns 0, or SL_EINVAL (max_sessions above the limit) or
 * SL_ENOMEM, and then nothing changes. */
int sl_repl_configure_sessions(sl_repl_t *r, const sl_repl_sessions_config_t *cfg);

/* Opens a session: a fresh sandboxed state with the REPL's functions; `id` gets its id.
 * When max_sessions are open the longest-idle is closed first. Returns 0, SL_ENOMEM or
 * SL_EIO (no random bytes for the id), with err set. */
int sl_repl_session_open(sl_repl_t *r, char id[SL_REPL_ID_SIZE], char *err, size_t errlen);
/* Closes session `id`. Returns 0 or SL_ENOENT. */
int sl_repl_session_close(sl_repl_t *r, const char *id);
size_t sl_repl_session_count(const sl_repl_t *r);
/* Closes the sessions idle longer than the limit; returns how many. Every evaluation and
 * completion does it first; a coordinator may also call it from a timer. */
size_t sl_repl_sweep(sl_repl_t *r);
/* Why `id` is not open, for a person: "REPL session ID was closed after 30 min idle; ..."
 * (the REPL remembers the last few closed ids), or that no such session exists. */
void sl_repl_session_gone(const sl_repl_t *r, const char *id, char *out, size_t outlen);

/* Evaluates `chunk` in session `session`, or, when `session` is NULL, in a fresh state
 * closed afterwards. *output (malloc'd, the caller frees) gets what it printed and its
 * results, or the error. *incomplete is 1 when the chunk needs more lines (then output is
 * ""). Returns 0, SL_EPOLICY when the chunk raised an error (the message is in *output),
 * SL_ENOENT when `session` is not open, or SL_ENOMEM (*output NULL for both). */
int sl_repl_eval(sl_repl_t *r, const char *session, const char *chunk, char **output,
                 int *incomplete);

/* Global names and table fields completing `prefix` ("drain.st" → "drain.start",
 * "drain.status"), sorted, whole expressions, in session `session` (its own globals
 * too) or, when NULL, in a fresh state. *matches is malloc'd (free with
 * sl_repl_matches_free). Returns 0, SL_ENOENT or SL_ENOMEM. */
int sl_repl_complete(sl_repl_t *r, const char *session, const char *prefix, char ***matches,
                     size_t *n);
void sl_repl_matches_free(char **matches, size_t n);

/* Route handlers; `repl` is the sl_repl_t. */
void sl_repl_http_eval(void *repl, const sl_http_request_t *req, sl_http_response_t *res);
void sl_repl_http_complete(void *repl, const sl_http_request_t *req, sl_http_response_t *res);

#endif
