/* core_int.h — the core's internal model, shared by the files of engine/core only.
 * Nothing here is part of the module's surface (that is core.h). */
#ifndef SL_CORE_INT_H
#define SL_CORE_INT_H

#include <stdatomic.h>
#include <stdbool.h>

#include "core.h"

/* ---- string → index map (open addressing, linear probing, tombstones) ----------------
 * Keys are borrowed from the entity that owns them (node id, task id, changefeed). */
typedef struct {
    const char *key; /* NULL: empty; sl_map_tomb: deleted */
    uint32_t hash;
    int32_t val;
} sl_map_slot_t;

typedef struct {
    sl_map_slot_t *slots;
    uint32_t cap; /* power of two, or 0 */
    uint32_t len; /* live keys */
    uint32_t used; /* live keys plus tombstones */
} sl_map_t;

int sl_map_put(sl_map_t *m, const char *key, int32_t val); /* SL_EEXIST if present */
int32_t sl_map_get(const sl_map_t *m, const char *key);     /* -1 when absent */
void sl_map_del(sl_map_t *m, const char *key);
void sl_map_free(sl_map_t *m);

/* ---- model --------------------------------------------------------------------------- */

#define SL_NONE (-1)

typedef struct {
    char *id;
    char *addr;
    atomic_int liveness;     /* sl_liveness_t; changed only by CAS (L1) */
    bool live;               /* slot in use */
    uint32_t count[2];       /* tasks bound here, by sl_task_kind_t */
    uint32_t ops_from;       /* operators whose origin is this node */
    uint32_t ops_to;         /* operators whose destination is this node = in-flight (O4) */
    int32_t head, tail;      /* bound tasks, in binding order */
    sl_label_t *labels;
    size_t nlabels;
    uint64_t join_seq;       /* tells a node from an earlier one with the same id */
    uint64_t acked_epoch;    /* D5: the newest epoch the node acknowledged */
    uint64_t last_seen_ms;   /* A5: last heartbeat (or join) */
    uint32_t reported_dispatchers; /* D6: dispatchers here, as maintainers last reported */
    bool cordoned;           /* receives no new task though Alive (sl_core_node_cordon) */
} sl_node_t;

/* D6: what a changefeed's maintainer last reported. */
typedef struct {
    int32_t node;      /* node slot */
    uint64_t join_seq; /* of that node when reported; a stale entry no longer counts */
    uint32_t count;
} sl_cf_node_t;

typedef struct {
    uint64_t report_epoch; /* 0: never reported */
    uint32_t remaining;    /* on the drain target, for report_epoch */
    sl_cf_node_t *by_node;
    size_t nby_node;
    bool maintained;       /* a maintainer task of this changefeed exists */
} sl_cf_t;

typedef struct {
    char *id;
    int32_t changefeed; /* index into core->changefeeds */
    int32_t node;       /* bound node or SL_NONE */
    int32_t prev, next; /* links in the bound node's list or the absent list */
    int32_t op;         /* operator slot or SL_NONE (O1: at most one) */
    uint32_t weight;
    uint8_t kind;       /* sl_task_kind_t */
    uint8_t state;      /* sl_task_state_t */
    bool live;
    bool remove_pending;
    bool in_absent;     /* on the absent list */
    bool drain_queued;  /* in core->drain_queue */
    bool ran;           /* it has run somewhere since it was added */
} sl_task_t;

/* A2: a maintainer that ran may have left dispatchers on other nodes, and only a running
 * maintainer stops them (the STOP of a deleted changefeed's maintainer sweeps them first).
 * Its removal therefore goes through a node: one that runs nowhere (its node died) is
 * placed again, to be stopped there. Anything else that runs nowhere is simply gone. */
static inline bool sl_core__removal_needs_node(const sl_task_t *task)
{
    return task->kind == SL_TASK_MAINTAINER && task->ran;
}

typedef enum { SL_STEP_START = 0, SL_STEP_STOP = 1 } sl_step_t;

typedef struct {
    uint64_t id;
    bool live;
    uint8_t type;   /* sl_op_type_t */
    uint8_t reason; /* sl_reason_t */
    uint8_t step;   /* sl_step_t */
    bool stuck;
    int32_t task;
    int32_t from, to; /* node slots; SL_NONE when not applicable or gone */
    uint32_t retries;
    uint64_t deadline_ms;
} sl_op_t;

typedef struct {
    int32_t *v;
    size_t len, cap;
} sl_ivec_t;

int sl_ivec_push(sl_ivec_t *vec, int32_t x);
/* Pops a free slot of a slot table (nodes, tasks, operators), doubling the table and
 * zeroing the new slots when none is free. Returns the slot or SL_ENOMEM. */
int32_t sl_slots_take(void **table, size_t *cap, size_t elem, size_t first_cap,
                      sl_ivec_t *free_slots);
void sl_ivec_free(sl_ivec_t *vec);

#define SL_REFUSAL_KEEP 32

#define SL_DRAIN_HISTORY 16

typedef struct {
    char target[SL_ID_MAX];
    sl_drain_state_t state;
    sl_drain_record_t record;
    char why[SL_ERRMSG_MAX]; /* why it ended when not by D8 or an operator, or "" */
    uint64_t ended_ms;       /* 0 while it runs */
    uint64_t end_epoch;      /* the epoch its end gave the cluster; 0 until then */
    uint32_t left_maintainers, left_dispatchers; /* on the node when it ended */
    uint64_t join_seq; /* of the node drained: a later process under the id is not it */
} sl_drain_past_t;

struct sl_core {
    sl_core_config_t cfg;
    sl_policy_t *policy;  /* borrowed; NULL → builtin */
    sl_policy_t *builtin; /* owned; the fallback of P3 */
    uint64_t now_ms;

    sl_node_t *nodes;
    size_t nodes_cap;
    sl_ivec_t node_order; /* live node slots in join order */
    sl_ivec_t node_free;
    sl_map_t node_map;

    sl_task_t *tasks;
    size_t tasks_cap;
    size_t ntasks;
    sl_ivec_t task_free;
    sl_map_t task_map;

    char **changefeeds;
    sl_cf_t *cf_reports; /* parallel to changefeeds */
    size_t nchangefeeds, changefeeds_cap;
    sl_map_t changefeed_map;
    uint32_t maintained_cfs; /* changefeeds with a maintainer task */
    uint32_t epoch_reported; /* of those, how many reported for the current epoch (D8) */
    uint64_t epoch_remaining; /* the sum of their remaining dispatchers on the target */

    int32_t absent_head, absent_tail;
    uint32_t absent;
    sl_ivec_t remove_queue; /* tasks whose removal waits for capacity */

    sl_op_t *ops;
    size_t ops_cap;
    sl_ivec_t op_free;
    sl_ivec_t op_order; /* live operator slots in creation order */
    char op_reason[192];
    uint32_t ops_in_progress;
    uint64_t next_op_id;

    int32_t drain_target; /* node slot or SL_NONE */
    /* the drain controller (drain.c) */
    sl_store_t *store;        /* borrowed; NULL: nothing is persisted */
    sl_drain_record_t record; /* D4: target "" when none; epoch always current */
    bool drain_controlled;    /* the target was set by sl_core_drain_start (D8 applies) */
    /* the latest drain of each of the last SL_DRAIN_HISTORY nodes drained, newest first:
     * GET …/drain of a node drained earlier still says how its drain ended (D11) */
    sl_drain_past_t *history; /* SL_DRAIN_HISTORY entries, allocated by the first drain (a
                               * maintainer's core in an agent never drains: ~11 KB saved) */
    size_t nhistory;
    char drain_blocked[SL_ERRMSG_MAX];
    uint64_t join_seq;
    uint64_t last_notify_ms;
    bool bootstrapping;
    uint64_t bootstrap_until_ms;
    sl_drain_record_t recovered;  /* the record read back by sl_core_recover */
    char **recovered_stopping;    /* nodes the store says were Stopping */
    size_t nrecovered_stopping;
    sl_node_count_t *remaining;   /* D11 by changefeed: .node holds the changefeed id */
    size_t nremaining, remaining_cap;
    int32_t view_exclude;         /* a node slot left out of the view (D12), or SL_NONE */
    sl_ivec_t drain_queue;   /* drain_order's answer, consumed from drain_cursor */
    size_t drain_cursor;
    bool drain_order_dirty;
    bool drain_ended;        /* a drain ended at drain_ended_ms: balance cools down */
    uint64_t drain_ended_ms;
    uint64_t last_balance_ms;
    bool balanced_once;

    sl_msg_t *outbox;
    size_t outbox_len, outbox_cap;

    uint32_t starved_batches; /* batches in a row the policy placed nothing (sched.c) */
    char waiting[SL_ERRMSG_MAX];
    char *refusals[SL_REFUSAL_KEEP]; /* ring */
    size_t refusal_first, refusal_len;
    sl_core_stats_t stats;
    atomic_uint_fast64_t version; /* grows with every event; see sl_core_version() */

    /* scratch of one scheduling call, reused to stay allocation-free when idle */
    sl_place_task_t *scratch_tasks;
    int32_t *scratch_task_slots;
    sl_decision_t *scratch_out;
    int32_t *scratch_dest; /* decided node slot per candidate, or SL_NONE */
    size_t scratch_cap;
    sl_place_node_t *view;
    int32_t *view_slot;  /* view index → node slot */
    int32_t *view_index; /* node slot → view index or SL_NONE */
    int64_t *view_proj;  /* balance: projected load per view index */
    size_t view_len, view_cap;
};

/* Every public entry point that can change what the core reports calls this first. Atomic
 * because liveness may be CAS'ed from another thread (L1). */
static inline void sl_core__changed(sl_core_t *core)
{
    atomic_fetch_add_explicit(&core->version, 1, memory_order_relaxed);
}

/* core.c */
sl_node_t *sl_core__node(sl_core_t *core, const char *id, int32_t *slot);
void sl_core__bind(sl_core_t *core, int32_t t, int32_t node);
void sl_core__unbind(sl_core_t *core, int32_t t);
void sl_core__drain_requeue(sl_core_t *core, int32_t t);
void sl_core__absent_push(sl_core_t *core, int32_t t);
void sl_core__absent_remove(sl_core_t *core, int32_t t);
void sl_core__task_delete(sl_core_t *core, int32_t t);
void sl_core__drain_clear(sl_core_t *core);
int sl_core__emit(sl_core_t *core, sl_msg_type_t type, int32_t node, int32_t task,
                  uint64_t op_id);
void sl_core__refuse(sl_core_t *core, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void sl_core__wait(sl_core_t *core, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* operator.c */
int sl_op__create(sl_core_t *core, sl_op_type_t type, sl_reason_t reason, int32_t task,
                  int32_t from, int32_t to);
bool sl_op__on_report(sl_core_t *core, int32_t node, int32_t task, sl_report_t state);
void sl_op__on_node_leave(sl_core_t *core, int32_t node);
void sl_op__timeouts(sl_core_t *core);
uint32_t sl_op__drain_in_progress(const sl_core_t *core);
uint32_t sl_op__capacity(const sl_core_t *core);

/* sched.c */
void sl_sched__round(sl_core_t *core);
size_t sl_sched__build_view(sl_core_t *core);
int sl_sched__ensure_scratch(sl_core_t *core, size_t n);
void sl_sched__add_candidate(sl_core_t *core, size_t i, int32_t t);
void sl_sched__decide(sl_core_t *core, sl_reason_t reason, size_t n, bool dry);

/* drain.c */
void sl_drain__on_join(sl_core_t *core, int32_t node);
void sl_drain__on_leave(sl_core_t *core, int32_t node);
void sl_drain__on_task_delete(sl_core_t *core, int32_t t);
void sl_drain__tick(sl_core_t *core);
void sl_drain__after_round(sl_core_t *core);
bool sl_drain__gate_open(const sl_core_t *core, const sl_node_t *n);
void sl_drain__free(sl_core_t *core);
void sl_drain__ended(sl_core_t *core, sl_drain_state_t how, const char *why);

#endif
