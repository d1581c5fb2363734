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
} sl_node_t;

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
} sl_task_t;

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
    size_t nchangefeeds, changefeeds_cap;
    sl_map_t changefeed_map;

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
    sl_ivec_t drain_queue;   /* drain_order's answer, consumed from drain_cursor */
    size_t drain_cursor;
    bool drain_order_dirty;
    bool drain_ended;        /* a drain ended at drain_ended_ms: balance cools down */
    uint64_t drain_ended_ms;
    uint64_t last_balance_ms;
    bool balanced_once;

    sl_msg_t *outbox;
    size_t outbox_len, outbox_cap;

    char waiting[SL_ERRMSG_MAX];
    char *refusals[SL_REFUSAL_KEEP]; /* ring */
    size_t refusal_first, refusal_len;
    sl_core_stats_t stats;

    /* scratch of one scheduling call, reused to stay allocation-free when idle */
    sl_place_task_t *scratch_tasks;
    int32_t *scratch_task_slots;
    sl_decision_t *scratch_out;
    size_t scratch_cap;
    sl_place_node_t *view;
    int32_t *view_slot;  /* view index → node slot */
    int32_t *view_index; /* node slot → view index or SL_NONE */
    size_t view_len, view_cap;
};

/* core.c */
sl_node_t *sl_core__node(sl_core_t *core, const char *id, int32_t *slot);
void sl_core__bind(sl_core_t *core, int32_t t, int32_t node);
void sl_core__unbind(sl_core_t *core, int32_t t);
void sl_core__drain_requeue(sl_core_t *core, int32_t t);
void sl_core__absent_push(sl_core_t *core, int32_t t);
void sl_core__absent_remove(sl_core_t *core, int32_t t);
void sl_core__task_delete(sl_core_t *core, int32_t t);
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

#endif
