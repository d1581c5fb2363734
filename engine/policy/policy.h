/* policy.h — the placement policy seam (P1–P3).
 *
 * The core reaches a policy only through `struct sl_policy_ops`. Two implementations
 * live behind it: the built-in C least-loaded policy (always available; it is also the
 * fallback for every refused decision, P3) and the Lua 5.4 host, which runs a policy file
 * in its own sandboxed lua_State (P2). The core never knows which one it holds.
 *
 * Ownership: the caller owns a policy and frees it with sl_policy_free(); a core holds a
 * borrowed pointer that the driver swaps between two scheduling rounds (P4). */
#ifndef SL_POLICY_H
#define SL_POLICY_H

#include "../common.h"

typedef enum { SL_TASK_MAINTAINER = 0, SL_TASK_DISPATCHER = 1 } sl_task_kind_t;

typedef enum { SL_REASON_BASIC = 0, SL_REASON_DRAIN = 1, SL_REASON_BALANCE = 2 } sl_reason_t;

typedef struct {
    const char *id;
    sl_task_kind_t kind;
    const char *changefeed; /* never NULL; a maintainer's changefeed is its own id */
    const char *from;       /* node the task leaves, NULL when the task is absent */
    uint32_t weight;
} sl_place_task_t;

typedef struct {
    const char *key;
    const char *value;
} sl_label_t;

/* A schedulable node as a policy sees it. Counts include what is already bound there;
 * `inflight` is the number of operators on their way to it (O4). */
typedef struct {
    const char *id;
    uint32_t maintainers;
    uint32_t dispatchers;
    uint32_t inflight;
    const sl_label_t *labels;
    size_t nlabels;
} sl_place_node_t;

typedef struct {
    sl_reason_t reason;
    const char *drain_target; /* NULL when no drain runs */
    uint32_t batch_limit;     /* how many decisions the core can act on in this call */
    uint64_t now_ms;
} sl_place_ctx_t;

/* One answer per task of the batch. `node` NULL and `error` NULL: the policy left the
 * task out; it waits for a later batch. `error` non-NULL: the policy's answer for this
 * task was malformed (wrong type, …); the core refuses it and the built-in policy decides.
 * `error` names neither the policy nor the task ("expected a node id (string), got
 * number"): whoever shows it adds both, once. Strings stay valid until the next call on
 * the same policy. The core itself checks that `node` names a known, schedulable node. */
typedef struct {
    const char *node;
    const char *error;
} sl_decision_t;

/* What went wrong beyond single decisions. `message` does not name the policy: it is
 * "FILE:LINE: what" when Lua gave a position (FILE is the policy's whole `file`), else
 * "what". Whoever shows it names the policy once: the core frames each refusal as
 * "policy NAME (FILE): …"; sl_policy_message() gives "policy NAME (FILE:LINE): what". */
typedef struct {
    unsigned unasked;             /* answers for tasks that were not in the batch (refused) */
    char message[SL_ERRMSG_MAX];  /* why the whole call failed, or the first unasked task */
} sl_place_report_t;

typedef struct sl_policy sl_policy_t;

struct sl_policy_ops {
    /* Place a whole batch in one call (P1). Returns 0, or SL_EPOLICY with report->message
     * set when the call failed as a whole (error, budget, not a table, …); then `out` is
     * ignored and every task of the batch is refused. */
    int (*place)(sl_policy_t *p, const sl_place_task_t *tasks, size_t ntasks,
                 const sl_place_node_t *nodes, size_t nnodes, const sl_place_ctx_t *ctx,
                 sl_decision_t *out, sl_place_report_t *report);
    /* Optional (NULL when the policy defines none): the order in which to drain `tasks`.
     * Writes up to ntasks distinct indices into `order` and their number into *norder.
     * Tasks left out keep their default order after the listed ones. Returns 0 or
     * SL_EPOLICY with report->message set (then the default order is used). */
    int (*drain_order)(sl_policy_t *p, const sl_place_task_t *tasks, size_t ntasks,
                       const sl_place_ctx_t *ctx, uint32_t *order, size_t *norder,
                       sl_place_report_t *report);
    void (*destroy)(sl_policy_t *p);
};

struct sl_policy {
    const struct sl_policy_ops *ops;
    char name[SL_ID_MAX];  /* the policy's own `name` */
    char file[256];        /* where it was loaded from; "builtin" for the C policy */
};

/* Sandbox limits (P2). Zero fields take the defaults. */
typedef struct {
    size_t memory_bytes;     /* per lua_State; default 64 MiB */
    uint32_t call_budget_ms; /* per place/drain_order call; default 50 */
    uint32_t load_budget_ms; /* for loading the chunk and for selftest; default 1000 */
} sl_policy_limits_t;

void sl_policy_limits_default(sl_policy_limits_t *lim);

/* The built-in C least-loaded policy: the task goes to the node with the fewest tasks of
 * its kind plus in-flight, counting what it planned earlier in the same batch; ties go to
 * the earlier node in the array. Never fails. */
int sl_policy_builtin_new(sl_policy_t **out);

/* Load a Lua policy file through the sandbox: text chunk only, contract checked (`name`
 * string, `place` function, optional `drain_order` and `selftest` functions), selftest
 * run. On failure returns a negative code and writes a message naming file and line into
 * err; nothing is allocated. */
int sl_policy_lua_load(const char *path, const sl_policy_limits_t *lim, sl_policy_t **out,
                       char *err, size_t errlen);

/* The same from a string already in memory; `chunkname` is used in messages. */
int sl_policy_lua_load_string(const char *source, size_t len, const char *chunkname,
                              const sl_policy_limits_t *lim, sl_policy_t **out, char *err,
                              size_t errlen);

void sl_policy_free(sl_policy_t *p);

/* A report message (or a decision's error, with `task` set) framed for people, naming the
 * policy once: "policy NAME (FILE:LINE): what", "policy NAME (FILE): task \"ID\": what".
 * `task` NULL: none. */
void sl_policy_message(const sl_policy_t *p, const char *task, const char *msg, char *dst,
                       size_t dstlen);

/* A Lua policy may define `place_columns(batch, nodes, ctx)` next to `place`: the same
 * batch as one array per field (only the fields named in its `columns`), answered by
 * position. The host then calls it for every batch instead of `place` (B1: no table per
 * task). has_columns says whether it does; place_tables calls `place` all the same, so
 * `policy check` can compare the two forms. Any other policy: 0 / its own place. */
int sl_policy_lua_has_columns(const sl_policy_t *p);
int sl_policy_lua_place_tables(sl_policy_t *p, const sl_place_task_t *tasks, size_t ntasks,
                               const sl_place_node_t *nodes, size_t nnodes,
                               const sl_place_ctx_t *ctx, sl_decision_t *out,
                               sl_place_report_t *report);

/* `sluice policy check FILE` (SPEC §4), shared by the binary and the Lua module: loads
 * FILE through the sandbox (contract, selftest), runs `place` on a small synthetic
 * cluster (and `drain_order` when defined) and checks every answer: nodes that are
 * unknown or Draining, malformed values, tasks not asked for, failed calls. Returns 0
 * with a short summary, or a negative code with every problem found in err (each line
 * names the file, and the line when Lua gives one). */
int sl_policy_check_file(const char *path, const sl_policy_limits_t *lim, char *summary,
                         size_t summarylen, char *err, size_t errlen);

/* The trial of `policy check` on a policy already loaded, before it goes live (P4; the
 * registry runs it on every load and reload): the same synthetic cluster and calls
 * (place for a drain round and a basic round, drain_order when defined), each under the
 * policy's call budget, stopping at the first problem. A problem is what would fail live
 * whatever the cluster: a call that errors, runs out of its budget or memory, or answers
 * with something that is not a table; a malformed value for a task; an answer for a task
 * that was not asked for; a drain_order that fails. Node ids are not judged (the core
 * judges them against the live cluster, P3), nor `place` against `place_columns` (live,
 * only place_columns runs). The calls run on `p`'s own state: a policy that keeps state
 * between calls sees them. Returns 0, or SL_EPOLICY with one line in err: "policy NAME
 * (FILE:LINE): what (in the load trial, …)". */
int sl_policy_trial(sl_policy_t *p, char *err, size_t errlen);

#endif
