/* agent.h — the node side of sluice (SPEC §6 engine/agent): one node that hosts
 * maintainers and dispatchers.
 *
 * Sans-I/O like the core: the agent is fed events — a coordinator message (START/STOP of a
 * maintainer, DRAIN), a message from another node's agent (a maintainer's START/STOP of a
 * dispatcher, a dispatcher's report, a bootstrap question or answer), the cluster view, a
 * driver's completion, time — and answers with messages in an outbox. It reads no clock
 * and opens no socket; the environment (the simulator, later the daemon) routes what it
 * emits. Tasks run through `struct sl_agent_driver_ops`, whose completions come back as
 * sl_agent_task_started/stopped, so the simulator uses a timer driver and an embedding
 * application plugs real work in.
 *
 * Each maintainer places its changefeed's dispatchers with its own sl_core_t (kind
 * dispatcher): operators, limits, timeouts and policies are the coordinator's own code.
 *
 * Guarantees: L5 (a Stopping node refuses new tasks), D5 (newest drain epoch kept, stale
 * ones ignored, the epoch acknowledged in every heartbeat), D6 (a maintainer that knows the
 * target drains its dispatchers off it in batches of max(10, ceil(n/100)), never places one
 * there, and reports per epoch how many remain), D7 (the table trigger dispatcher lives on
 * the maintainer's node, is started and stopped with it, and is never scheduled), A5 (a
 * heartbeat with node id, node epoch and, for a coordinator's bootstrap, the maintainers it
 * runs). A moved maintainer rebuilds its placement from the nodes' own answers before it
 * places anything, and commands of an older maintainer incarnation are fenced off, so a
 * dispatcher never runs on two nodes and is never lost. A2: a maintainer stopped because
 * its changefeed was deleted (sl_msg_t.removed) first stops every dispatcher of it on every
 * node — those starting or moving too, those an earlier incarnation left, learnt by its
 * bootstrap — and reports itself stopped only once none runs; its trigger goes last, with
 * it. */
#ifndef SL_AGENT_H
#define SL_AGENT_H

#include "../common.h"
#include "../core/core.h"

typedef struct sl_agent sl_agent_t;

/* ---- the driver seam ------------------------------------------------------------------ */

/* What the agent asks the driver to run. Strings stay valid during the call only. */
typedef struct {
    const char *id;
    sl_task_kind_t kind;
    const char *changefeed;
    uint32_t weight;
    int trigger; /* the table trigger dispatcher of its changefeed (D7) */
} sl_agent_task_t;

/* start/stop begin the work; each completes later by the driver calling
 * sl_agent_task_started / sl_agent_task_stopped for the same task id (from the same
 * thread that feeds the agent). A stop may be asked only after the start completed. */
struct sl_agent_driver_ops {
    void (*start)(void *ctx, sl_agent_t *agent, const sl_agent_task_t *task);
    void (*stop)(void *ctx, sl_agent_t *agent, const sl_agent_task_t *task);
};

/* ---- messages --------------------------------------------------------------------------- */

typedef enum {
    /* to the coordinator (`to` is "") */
    SL_AMSG_HEARTBEAT = 0, /* A5/D5: node, node_epoch, epoch = acked drain epoch, items =
                            * maintainers this node runs (a coordinator's bootstrap) */
    SL_AMSG_REPORT = 1,    /* a maintainer's state: task, state */
    SL_AMSG_CF_REPORT = 2, /* D6: changefeed, epoch, remaining, items = dispatchers by node */
    /* between nodes */
    SL_AMSG_TASK = 3,       /* a maintainer to a node: start (state WORKING) or stop (STOPPED)
                             * dispatcher `task`; issuer = the maintainer's incarnation */
    SL_AMSG_TASK_REPORT = 4, /* a node to a maintainer: dispatcher `task` is in `state` */
    SL_AMSG_BOOTSTRAP = 5,   /* a maintainer to a node: which of my dispatchers do you run? */
    SL_AMSG_BOOTSTRAP_REPLY = 6, /* items = the dispatchers of `changefeed` this node runs */
} sl_agent_msg_type_t;

typedef struct {
    char id[SL_ID_MAX];
    uint32_t count;
} sl_agent_item_t;

typedef struct {
    sl_agent_msg_type_t type;
    char from[SL_ID_MAX];       /* the sending node */
    char to[SL_ID_MAX];         /* the receiving node; "" for the coordinator */
    char task[SL_ID_MAX];
    char changefeed[SL_ID_MAX];
    sl_report_t state;
    uint64_t node_epoch;        /* HEARTBEAT: the sender's start time; between nodes: the
                                 * receiver's node epoch as the sender knows it (0: any). A
                                 * node drops what was meant for an earlier incarnation of it */
    uint64_t epoch;             /* HEARTBEAT: acked drain epoch; CF_REPORT: the epoch reported */
    uint64_t issuer;            /* TASK, TASK_REPORT, BOOTSTRAP(_REPLY): maintainer incarnation */
    uint32_t remaining;         /* CF_REPORT */
    sl_agent_item_t *items;     /* owned by the message; see sl_agent_msg_copy/free */
    size_t nitems;
} sl_agent_msg_t;

/* Deep copy (items included) for an environment that queues messages. */
int sl_agent_msg_copy(sl_agent_msg_t *dst, const sl_agent_msg_t *src);
void sl_agent_msg_free(sl_agent_msg_t *m);

/* ---- the cluster as this node knows it --------------------------------------------------- */

typedef struct {
    const char *id;
    uint64_t node_epoch; /* changes when the node restarts: its old tasks are gone */
    sl_liveness_t liveness;
    int cordoned; /* shutting down (L1): Alive, but it takes no new dispatcher */
} sl_agent_node_t;

/* ---- lifetime ------------------------------------------------------------------------------ */

typedef struct {
    uint64_t heartbeat_interval_ms; /* heartbeats, D6 reports, bootstrap retries; 1000 */
    uint64_t step_timeout_ms;       /* maintainers' operator step timeout (O7); 2000 */
    uint32_t max_operators;         /* per maintainer (O3); 64 */
    uint32_t drain_batch_size;      /* per maintainer; 0: max(10, ceil(n/100)) (D6) */
} sl_agent_config_t;

void sl_agent_config_default(sl_agent_config_t *cfg);

/* `node_epoch`: the node's start time (A5). `driver` and `driver_ctx` are borrowed. */
int sl_agent_new(const char *id, uint64_t node_epoch, const sl_agent_config_t *cfg,
                 const struct sl_agent_driver_ops *driver, void *driver_ctx, sl_agent_t **out);
/* Frees the agent without stopping anything (a crash, as far as the tasks are concerned). */
void sl_agent_free(sl_agent_t *agent);
/* The placement policy of this node's maintainers; NULL: built-in. Borrowed (P4). */
void sl_agent_set_policy(sl_agent_t *agent, sl_policy_t *policy);

/* ---- events ---------------------------------------------------------------------------------- */

/* A message from the coordinator's outbox addressed to this node: START/STOP of a
 * maintainer, DRAIN (D5). A STOP with `removed` (the changefeed was deleted, A2) is
 * answered "stopped" only after the maintainer stopped all its dispatchers; retried, it
 * changes nothing. */
int sl_agent_coord_msg(sl_agent_t *agent, const sl_msg_t *m, uint64_t now_ms);
/* A message from another node's agent (or this one's, routed back). */
int sl_agent_recv(sl_agent_t *agent, const sl_agent_msg_t *m, uint64_t now_ms);
/* The cluster view: every node the coordinator knows, with its liveness, plus the drain
 * target and epoch the view was taken at. `version` grows; older views are ignored. */
int sl_agent_view(sl_agent_t *agent, uint64_t version, const sl_agent_node_t *nodes, size_t n,
                  const char *drain_target, uint64_t drain_epoch, uint64_t now_ms);
/* Driver completions. */
int sl_agent_task_started(sl_agent_t *agent, const char *task, uint64_t now_ms);
int sl_agent_task_stopped(sl_agent_t *agent, const char *task, uint64_t now_ms);
/* Time advances: maintainers' timeouts and rounds; heartbeat and D6 reports when due. */
int sl_agent_tick(sl_agent_t *agent, uint64_t now_ms);

/* ---- outbox ---------------------------------------------------------------------------------- */

const sl_agent_msg_t *sl_agent_outbox(sl_agent_t *agent, size_t *n);
void sl_agent_outbox_clear(sl_agent_t *agent);

/* ---- inspection ------------------------------------------------------------------------------ */

typedef enum {
    SL_AGENT_STOPPED = 0,
    SL_AGENT_STARTING = 1,
    SL_AGENT_RUNNING = 2,
    SL_AGENT_STOPPING = 3,
} sl_agent_task_state_t;

const char *sl_agent_id(const sl_agent_t *agent);
uint64_t sl_agent_node_epoch(const sl_agent_t *agent);
/* This node's own liveness as the cluster view last said (L5). */
sl_liveness_t sl_agent_liveness(const sl_agent_t *agent);
/* The drain target ("" when none) and the epoch this node knows and acknowledges (D5). */
const char *sl_agent_drain_target(const sl_agent_t *agent);
uint64_t sl_agent_drain_epoch(const sl_agent_t *agent);

/* Every task this node has held, in the order it first saw them; those STOPPED no longer
 * run. i < sl_agent_task_count(). */
size_t sl_agent_task_count(const sl_agent_t *agent);
int sl_agent_task_at(const sl_agent_t *agent, size_t i, sl_agent_task_t *task,
                     sl_agent_task_state_t *state);

/* The scheduling core of this node's maintainer of `changefeed`, or NULL when it runs no
 * such maintainer or the maintainer is still bootstrapping. For inspection and checks. */
sl_core_t *sl_agent_maintainer_core(sl_agent_t *agent, const char *changefeed);
/* Changefeeds whose maintainer runs here (started, not stopping), in start order. */
size_t sl_agent_maintainer_count(const sl_agent_t *agent);
const char *sl_agent_maintainer_at(const sl_agent_t *agent, size_t i);

#endif
