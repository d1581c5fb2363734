/* core.h — the sans-I/O scheduling core of sluice (SPEC §6).
 *
 * The core is a state machine. It is fed events — a node joined or left, a node reported
 * a task's state, time advanced — and answers with messages in an outbox (start task T on
 * node N, stop task T on node N). It reads no clock, opens no socket, and reaches a
 * policy only through `struct sl_policy_ops`. The libuv daemon, the simulator and the Lua
 * module drive the same core.
 *
 * Guarantees: L1–L4 (liveness in C11 atomics, CAS-only transitions), O1–O7 (operators,
 * limits counted by origin and destination, O(1) in-flight), S1–S5 (basic → drain →
 * balance in fixed order, event-driven refill, incremental counters).
 *
 * Strings returned through info structs stay valid until the next event fed to the core. */
#ifndef SL_CORE_H
#define SL_CORE_H

#include "../common.h"
#include "../policy/policy.h"
#include "../store/store.h"

typedef struct sl_core sl_core_t;

/* ---- liveness (L1) ---------------------------------------------------------------- */

typedef enum { SL_ALIVE = 0, SL_DRAINING = 1, SL_STOPPING = 2 } sl_liveness_t;

const char *sl_liveness_name(sl_liveness_t l);
/* Parses "alive" | "draining" | "stopping"; returns 0 or SL_EINVAL. */
int sl_liveness_parse(const char *name, sl_liveness_t *out);
/* Whether `from` → `to` is one of L1's CAS transitions (Alive→Draining, Draining→Stopping,
 * Alive→Stopping). The two exceptions, D3 cancel and L4 last node, have their own calls. */
int sl_liveness_transition_allowed(sl_liveness_t from, sl_liveness_t to);

/* ---- configuration ---------------------------------------------------------------- */

typedef struct {
    uint32_t max_operators;       /* O3: operators in progress, all reasons; default 64 */
    uint32_t drain_batch_size;    /* O3: operators involving the drain target; default 8 */
    uint64_t step_timeout_ms;     /* O7: first timeout of an operator step; default 10000 */
    uint64_t backoff_max_ms;      /* O7: cap of the doubling timeout; default 120000 */
    uint32_t stuck_after;         /* O7: retries after which an operator shows as stuck; 3 */
    uint64_t balance_interval_ms; /* S3: time between balance rounds; default 1000 */
    uint64_t balance_cooldown_ms; /* S3: balance pause after a drain ends; default 15000 */
    uint32_t balance_tolerance;   /* S3: a node is overloaded above ceil(avg)+this; 1 */
    char coordinator_node[SL_ID_MAX]; /* D1: the node the coordinator runs on, or "" */
    uint64_t heartbeat_interval_ms;   /* D5: drain notification resent this often; 1000 */
    uint64_t node_timeout_ms;     /* A5: a node silent this long is dead; 10000; 0: never */
    uint64_t bootstrap_ms;        /* D4/A5: after recovery, wait this long for reports; 0:
                                   * node_timeout_ms */
    int epoch_gate;               /* D5: nodes that have not acknowledged the current epoch
                                   * receive no new task; default 1 */
} sl_core_config_t;

void sl_core_config_default(sl_core_config_t *cfg);

/* ---- lifetime --------------------------------------------------------------------- */

int sl_core_new(const sl_core_config_t *cfg, sl_core_t **out);
void sl_core_free(sl_core_t *core);
/* The placement policy; NULL means the built-in C least-loaded. Borrowed: the caller
 * keeps it alive until it is replaced. Takes effect at the next round (P4). */
void sl_core_set_policy(sl_core_t *core, sl_policy_t *policy);

/* ---- nodes ------------------------------------------------------------------------ */

int sl_core_node_join(sl_core_t *core, const char *id, const char *addr);
/* L3: frees the node's entry. Tasks bound to it become absent; operators that involve it
 * continue or are abandoned as O5/O6 say. */
int sl_core_node_leave(sl_core_t *core, const char *id);
int sl_core_node_set_label(sl_core_t *core, const char *id, const char *key,
                           const char *value);
/* A cordoned node receives no new task (no placement, move or balance toward it) while it
 * stays Alive — a node shutting down whose own drain must wait for another (L1). Its
 * liveness does not change, so it can still be drained. SL_ENOENT for an unknown node. */
int sl_core_node_cordon(sl_core_t *core, const char *id, int cordoned);
int sl_core_liveness(sl_core_t *core, const char *id, sl_liveness_t *out);
/* L1: one CAS. SL_EINVAL when the transition is not allowed, SL_EAGAIN when the node's
 * liveness is not `expected`. */
int sl_core_liveness_cas(sl_core_t *core, const char *id, sl_liveness_t expected,
                         sl_liveness_t desired);

/* ---- drain controller (D1–D12) ------------------------------------------------------ */

typedef enum {
    SL_DRAIN_NONE = 0,      /* this node was never drained (or its record is gone) */
    SL_DRAIN_DRAINING = 1,
    SL_DRAIN_COMPLETED = 2, /* D8 held; the node went Draining→Stopping */
    SL_DRAIN_CANCELLED = 3, /* D3 */
    SL_DRAIN_LOST = 4,      /* D9: the target left the cluster during the drain */
} sl_drain_state_t;

const char *sl_drain_state_name(sl_drain_state_t s);

typedef struct {
    uint32_t maintainers; /* on the target now */
    uint32_t dispatchers; /* on the target now, as the maintainers last reported */
    int completed;        /* the target held nothing and went straight to Stopping */
} sl_drain_counts_t;

/* D1: starts draining `id`, persisting the record and liveness first (D4). Returns 0 with
 * the counts (again with the current counts for the same target: idempotent), or
 * SL_ENOENT, SL_ENOTENOUGH (fewer than 2 Alive nodes), SL_ECOORDINATOR, SL_EBUSY (another
 * target, D2), SL_ESTOPPING, SL_ENOTREADY (bootstrapping), SL_EIO (the store failed;
 * nothing changed). */
int sl_core_drain_start(sl_core_t *core, const char *id, uint64_t now_ms, sl_drain_counts_t *out);
/* D3: cancels the running drain of `id`. SL_ENOENT (no such node), SL_EINVAL (`id` is not
 * being drained), SL_ESTOPPING (its drain has completed), SL_EIO. */
int sl_core_drain_cancel(sl_core_t *core, const char *id, uint64_t now_ms);

typedef struct {
    int is_draining;            /* a drain of any node runs */
    const char *target;         /* the node being drained, or NULL */
    uint64_t epoch;
    sl_drain_state_t state;     /* of the node asked about */
    uint64_t started_at_ms;
    uint32_t initial_maintainers, initial_dispatchers;
    uint32_t remaining_maintainers, remaining_dispatchers; /* never both 0 before D8 holds */
    double progress;            /* 0..1 */
    double speed;               /* tasks per second since the start */
    double left_seconds;        /* -1 when unknown */
    const char *blocked;        /* why it cannot move on, or "" (D10) */
} sl_drain_status_t;

/* D11 for node `id` (which may have left, for a lost drain). SL_ENOENT when the node is
 * unknown and has no drain record. */
int sl_core_drain_status(sl_core_t *core, const char *id, uint64_t now_ms, sl_drain_status_t *out);
/* A number that changes whenever an event may have changed anything the core reports
 * (every entry point but the read-only ones). With now_ms it keys a cached answer: the
 * same version and millisecond give the same D11 status. */
uint64_t sl_core_version(const sl_core_t *core);
/* D11 remaining_dispatchers_by_changefeed of the current drain; i < the count. */
size_t sl_core_drain_remaining_count(sl_core_t *core);
int sl_core_drain_remaining_at(sl_core_t *core, size_t i, const char **changefeed, uint32_t *n);

typedef struct {
    const char *task;
    const char *to; /* NULL: the policy would leave it waiting */
} sl_plan_move_t;

/* D12: the moves the live policy would make for every task on `id`, in the node's own
 * order, without acting (nothing is counted, no operator starts). `out` holds up to `max`; *n gets how many were planned. Strings stay
 * valid until the next event. */
int sl_core_drain_plan(sl_core_t *core, const char *id, sl_plan_move_t *out, size_t max,
                       size_t *n);

/* ---- heartbeats and maintainer reports (D5, D6, A5) ----------------------------------- */

/* A node is alive and has acknowledged `acked_epoch`. Stale epochs are ignored. */
int sl_core_heartbeat(sl_core_t *core, const char *node, uint64_t acked_epoch, uint64_t now_ms);

typedef struct {
    const char *node;
    uint32_t count;
} sl_node_count_t;

/* D6: a maintainer reports, for `epoch`, how many of its dispatchers remain on the drain
 * target and how many it has on each node. Reports for other epochs are ignored. */
int sl_core_changefeed_report(sl_core_t *core, const char *changefeed, uint64_t epoch,
                              uint32_t remaining_on_target, const sl_node_count_t *by_node,
                              size_t n, uint64_t now_ms);
/* A2: the dispatchers of `changefeed` by node, as its maintainer last reported. */
size_t sl_core_changefeed_nodes(sl_core_t *core, const char *changefeed);
int sl_core_changefeed_node_at(sl_core_t *core, const char *changefeed, size_t i,
                               sl_node_count_t *out);

/* ---- persistence (D4) ----------------------------------------------------------------- */

/* The store the core writes its drain record and liveness to; NULL: none. Borrowed. */
void sl_core_set_store(sl_core_t *core, sl_store_t *store);
/* After a coordinator restart: reads the drain record and liveness back and bootstraps for
 * bootstrap_ms, placing nothing (tasks may be running, A5) and refusing drains
 * (SL_ENOTREADY) while nodes report. Then the drain resumes if its target came back, or
 * its record is cleared (D4). */
int sl_core_recover(sl_core_t *core, uint64_t now_ms);
int sl_core_bootstrapping(sl_core_t *core);
/* While bootstrapping: how long it still lasts, and the drain read back from the store
 * (target "" when none), which resumes when it ends if its target came back. Returns 1
 * while bootstrapping, else 0 and nothing is filled. */
int sl_core_bootstrap_info(sl_core_t *core, uint64_t now_ms, uint64_t *left_ms,
                           const char **drain_target, uint64_t *drain_epoch);
/* D11: the latest drain that ended (completed, cancelled, lost), also when its node has
 * left or a new process joined under its id since: its node id, with *out filled; or
 * NULL. */
const char *sl_core_drain_last(sl_core_t *core, uint64_t now_ms, sl_drain_status_t *out);
/* D4/L1: node `id` is about to join as a process that was never Stopping (a new one: it
 * says so in its HELLO). A Stopping mark stored for that id belongs to an earlier process,
 * so it is forgotten and removed from the store, and the node joins Alive. */
void sl_core_node_fresh(sl_core_t *core, const char *id);

/* ---- drain primitives (the drain scheduler's side) ---------------------------------- */

/* Alive→Draining by CAS and make the node the drain target. SL_EBUSY when another node
 * is the target (D2). L4: if it is the only node, it stays Alive and SL_ELIMIT. */
int sl_core_drain_mark(sl_core_t *core, const char *id);
/* D3: Draining→Alive; no new moves start, running moves finish. */
int sl_core_drain_unmark(sl_core_t *core, const char *id);
/* The current drain target, or NULL. */
const char *sl_core_drain_target(sl_core_t *core);

/* ---- tasks ------------------------------------------------------------------------ */

typedef enum {
    SL_TASK_ABSENT = 0,   /* bound nowhere; waits for the basic scheduler */
    SL_TASK_STARTING = 1, /* an add or move is starting it on its destination */
    SL_TASK_WORKING = 2,  /* running on its node */
    SL_TASK_STOPPING = 3, /* a move or remove is stopping it on its node */
} sl_task_state_t;

const char *sl_task_state_name(sl_task_state_t s);

int sl_core_task_add(sl_core_t *core, const char *id, sl_task_kind_t kind,
                     const char *changefeed, uint32_t weight);
/* Starts a remove operator (after the task's current operator, if any, finishes). */
int sl_core_task_remove(sl_core_t *core, const char *id);

typedef enum {
    SL_REPORT_WORKING = 0, /* the node runs the task */
    SL_REPORT_STOPPED = 1, /* the node does not run the task (any more) */
} sl_report_t;

/* A node reports one task's state. Drives operators (O2), binds tasks that a node reports
 * at bootstrap (A5), stops a second copy (never two owners), and refills batches at once
 * (S4). Returns SL_ENOENT for an unknown node or task. */
int sl_core_report(sl_core_t *core, const char *node, const char *task, sl_report_t state,
                   uint64_t now_ms);

/* Time advances: step timeouts (O7), then one scheduling round basic → drain → balance. */
int sl_core_tick(sl_core_t *core, uint64_t now_ms);

/* ---- outbox ----------------------------------------------------------------------- */

typedef enum {
    SL_MSG_START = 0, /* run `task` on `node` */
    SL_MSG_STOP = 1,  /* stop `task` on `node` */
    SL_MSG_DRAIN = 2, /* D5: tell `node` the drain target (or "") and epoch */
} sl_msg_type_t;

typedef struct {
    sl_msg_type_t type;
    char node[SL_ID_MAX];   /* where the message goes */
    char task[SL_ID_MAX];   /* START/STOP; "" for DRAIN */
    uint64_t op_id;         /* the operator that sent it; retries resend the same id */
    sl_task_kind_t kind;    /* START/STOP: the task's kind */
    uint32_t weight;        /* START: the task's weight (a maintainer: its table count) */
    char changefeed[SL_ID_MAX]; /* START/STOP: the task's changefeed */
    char target[SL_ID_MAX]; /* DRAIN: the drain target, "" when none */
    uint64_t epoch;         /* DRAIN: the current epoch */
    uint8_t removed;        /* STOP of a maintainer whose changefeed was deleted: it goes for
                             * good, with its dispatchers (set by the coordinator's driver) */
} sl_msg_t;

/* Messages emitted since the last sl_core_outbox_clear(). */
const sl_msg_t *sl_core_outbox(sl_core_t *core, size_t *n);
void sl_core_outbox_clear(sl_core_t *core);

/* ---- inspection ------------------------------------------------------------------- */

typedef struct {
    const char *id;
    const char *addr;
    sl_liveness_t liveness;
    uint32_t maintainers; /* bound here, including those a move is stopping */
    uint32_t dispatchers;
    uint32_t inflight;    /* O4: operators on their way to this node */
    uint32_t ops_from;    /* operators whose origin is this node */
    uint32_t ops_to;      /* operators whose destination is this node */
    int cordoned;         /* receives no new task though Alive (sl_core_node_cordon) */
} sl_node_info_t;

size_t sl_core_node_count(sl_core_t *core);
/* Nodes in join order (S1: never hash order). i < sl_core_node_count(). */
int sl_core_node_at(sl_core_t *core, size_t i, sl_node_info_t *out);
int sl_core_node_info(sl_core_t *core, const char *id, sl_node_info_t *out);
/* Label value or NULL. */
const char *sl_core_node_label(sl_core_t *core, const char *id, const char *key);

typedef struct {
    const char *id;
    sl_task_kind_t kind;
    const char *changefeed;
    uint32_t weight;
    const char *node; /* bound node, NULL when absent or between the two steps of a move */
    sl_task_state_t state;
    int has_operator;
    int remove_pending;
} sl_task_info_t;

size_t sl_core_task_count(sl_core_t *core);
int sl_core_task_info(sl_core_t *core, const char *id, sl_task_info_t *out);

typedef enum { SL_OP_ADD = 0, SL_OP_MOVE = 1, SL_OP_REMOVE = 2 } sl_op_type_t;

const char *sl_op_type_name(sl_op_type_t t);

typedef struct {
    uint64_t id;
    sl_op_type_t type;
    sl_reason_t reason;
    const char *task;
    const char *from; /* NULL for add, or after the origin left */
    const char *to;   /* NULL for remove, or after the destination left */
    const char *step; /* "start" | "stop" */
    uint32_t retries;
    uint64_t deadline_ms;
    int stuck;          /* O7: retried stuck_after times or more */
    const char *reason_text; /* why it is stuck, or "" */
} sl_op_info_t;

size_t sl_core_op_count(sl_core_t *core);
/* Operators in creation order. */
int sl_core_op_at(sl_core_t *core, size_t i, sl_op_info_t *out);

typedef struct {
    uint32_t ops_in_progress;    /* O3 global count */
    uint32_t drain_in_progress;  /* O3: operators whose origin or destination is the target */
    uint32_t absent;             /* tasks waiting for the basic scheduler */
    uint64_t rounds;             /* scheduling rounds run */
    uint64_t policy_calls;       /* place/drain_order calls into the policy */
    uint64_t refusals;           /* P3: policy decisions refused */
    uint64_t fallbacks;          /* decisions the built-in policy made instead */
    uint64_t ops_started, ops_finished, ops_abandoned, retries;
    const char *waiting;         /* S2/D10: why scheduling waits, or "" */
    uint64_t epoch;              /* grows with every drain mark and unmark */
} sl_core_stats_t;

void sl_core_stats(sl_core_t *core, sl_core_stats_t *out);

/* P3: the most recent refusals, newest last, each "policy <name> (<file>): <message>". */
size_t sl_core_refusal_count(sl_core_t *core);
const char *sl_core_refusal_at(sl_core_t *core, size_t i);

/* Checks the core's own bookkeeping against a full recount (single owner, counters,
 * in-flight, limits, nothing on a non-schedulable node). Returns 0 or SL_EINVAL with the
 * first broken invariant in `why`. O(tasks): for tests and the simulator, not hot paths. */
int sl_core_check(sl_core_t *core, char *why, size_t whylen);

#endif
