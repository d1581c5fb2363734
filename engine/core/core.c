/* core.c — the core's model: nodes with atomic liveness (L1–L4), tasks bound to nodes with
 * per-node counters and an absent list kept up to date by events (S5), the outbox, and
 * inspection. Operators live in operator.c, schedulers in sched.c.
 *
 * Tables are slot arrays indexed through string maps; iteration always follows join or
 * creation order, never hash order (S1). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core_int.h"

/* ---- names ----------------------------------------------------------------------------- */

const char *sl_strerror(int code)
{
    switch (code) {
    case SL_OK: return "ok";
    case SL_EINVAL: return "invalid argument or transition";
    case SL_ENOENT: return "no such node or task";
    case SL_EEXIST: return "already exists";
    case SL_EAGAIN: return "compare-and-swap lost";
    case SL_EBUSY: return "busy";
    case SL_ENOMEM: return "out of memory";
    case SL_EPOLICY: return "policy failed";
    case SL_ELIMIT: return "limit reached";
    case SL_EIO: return "the store could not write or read";
    case SL_ENOTENOUGH: return "fewer than 2 Alive nodes: nowhere to move its tasks";
    case SL_ECOORDINATOR: return "it is the coordinator's own node";
    case SL_ESTOPPING: return "the node is Stopping";
    case SL_ENOTREADY: return "the coordinator is bootstrapping";
    default: return "unknown error";
    }
}

static const char *const liveness_names[] = {"alive", "draining", "stopping"};

const char *sl_liveness_name(sl_liveness_t l)
{
    return (unsigned)l < 3 ? liveness_names[l] : "invalid";
}

int sl_liveness_parse(const char *name, sl_liveness_t *out)
{
    for (int i = 0; i < 3; i++) {
        if (!strcmp(name, liveness_names[i])) {
            *out = (sl_liveness_t)i;
            return 0;
        }
    }
    return SL_EINVAL;
}

int sl_liveness_transition_allowed(sl_liveness_t from, sl_liveness_t to)
{
    return (from == SL_ALIVE && to == SL_DRAINING) || (from == SL_DRAINING && to == SL_STOPPING) ||
           (from == SL_ALIVE && to == SL_STOPPING);
}

const char *sl_task_state_name(sl_task_state_t s)
{
    static const char *const names[] = {"absent", "starting", "working", "stopping"};
    return (unsigned)s < 4 ? names[s] : "invalid";
}

const char *sl_op_type_name(sl_op_type_t t)
{
    static const char *const names[] = {"add", "move", "remove"};
    return (unsigned)t < 3 ? names[t] : "invalid";
}

/* ---- lifetime ---------------------------------------------------------------------------- */

void sl_core_config_default(sl_core_config_t *cfg)
{
    *cfg = (sl_core_config_t){
        .max_operators = 64,
        .drain_batch_size = 8,
        .step_timeout_ms = 10000,
        .backoff_max_ms = 120000,
        .stuck_after = 3,
        .balance_interval_ms = 1000,
        .balance_cooldown_ms = 15000,
        .balance_tolerance = 1,
        .heartbeat_interval_ms = 1000,
        .node_timeout_ms = 10000,
        .bootstrap_ms = 0,
        .epoch_gate = 1,
    };
}

int sl_core_new(const sl_core_config_t *cfg, sl_core_t **out)
{
    *out = NULL;
    if (!cfg || cfg->max_operators == 0 || cfg->drain_batch_size == 0 || cfg->step_timeout_ms == 0)
        return SL_EINVAL;
    sl_core_t *core = calloc(1, sizeof *core);
    if (!core) return SL_ENOMEM;
    core->cfg = *cfg;
    if (core->cfg.backoff_max_ms < core->cfg.step_timeout_ms)
        core->cfg.backoff_max_ms = core->cfg.step_timeout_ms;
    core->absent_head = core->absent_tail = SL_NONE;
    core->drain_target = SL_NONE;
    core->view_exclude = SL_NONE;
    core->next_op_id = 1;
    core->stats.waiting = core->waiting;
    int rc = sl_policy_builtin_new(&core->builtin);
    if (rc) {
        free(core);
        return rc;
    }
    *out = core;
    return 0;
}

static void node_release(sl_node_t *n)
{
    free(n->id);
    free(n->addr);
    for (size_t i = 0; i < n->nlabels; i++) {
        free((char *)n->labels[i].key);
        free((char *)n->labels[i].value);
    }
    free(n->labels);
}

void sl_core_free(sl_core_t *core)
{
    if (!core) return;
    for (size_t i = 0; i < core->nodes_cap; i++)
        if (core->nodes[i].live) node_release(&core->nodes[i]);
    for (size_t i = 0; i < core->tasks_cap; i++)
        if (core->tasks[i].live) free(core->tasks[i].id);
    sl_drain__free(core);
    for (size_t i = 0; i < core->nchangefeeds; i++) free(core->changefeeds[i]);
    for (size_t i = 0; i < core->refusal_len; i++)
        free(core->refusals[(core->refusal_first + i) % SL_REFUSAL_KEEP]);
    free(core->nodes);
    free(core->tasks);
    free(core->changefeeds);
    free(core->cf_reports);
    free(core->scratch_dest);
    free(core->ops);
    free(core->outbox);
    free(core->scratch_tasks);
    free(core->scratch_task_slots);
    free(core->scratch_out);
    free(core->view);
    free(core->view_slot);
    free(core->view_index);
    free(core->view_proj);
    sl_map_free(&core->node_map);
    sl_map_free(&core->task_map);
    sl_map_free(&core->changefeed_map);
    sl_ivec_free(&core->node_order);
    sl_ivec_free(&core->node_free);
    sl_ivec_free(&core->task_free);
    sl_ivec_free(&core->op_free);
    sl_ivec_free(&core->op_order);
    sl_ivec_free(&core->remove_queue);
    free(core->history);
    sl_ivec_free(&core->drain_queue);
    sl_policy_free(core->builtin);
    free(core);
}

uint64_t sl_core_version(const sl_core_t *core)
{
    return atomic_load_explicit(&core->version, memory_order_relaxed);
}

void sl_core_set_policy(sl_core_t *core, sl_policy_t *policy)
{
    sl_core__changed(core);
    core->policy = policy;
    core->drain_order_dirty = true; /* a new policy may order the rest of a drain anew */
}

/* ---- helpers shared inside the module ------------------------------------------------- */

static int valid_id(const char *id)
{
    size_t n = id ? strlen(id) : 0;
    return n > 0 && n < SL_ID_MAX;
}

sl_node_t *sl_core__node(sl_core_t *core, const char *id, int32_t *slot)
{
    int32_t s = id ? sl_map_get(&core->node_map, id) : -1;
    if (slot) *slot = s;
    return s < 0 ? NULL : &core->nodes[s];
}

static sl_liveness_t node_liveness(const sl_node_t *n)
{
    return (sl_liveness_t)atomic_load(&n->liveness);
}

static void list_append(sl_task_t *tasks, int32_t *head, int32_t *tail, int32_t t)
{
    tasks[t].prev = *tail;
    tasks[t].next = SL_NONE;
    if (*tail != SL_NONE) tasks[*tail].next = t;
    else *head = t;
    *tail = t;
}

static void list_unlink(sl_task_t *tasks, int32_t *head, int32_t *tail, int32_t t)
{
    sl_task_t *x = &tasks[t];
    if (x->prev != SL_NONE) tasks[x->prev].next = x->next;
    else *head = x->next;
    if (x->next != SL_NONE) tasks[x->next].prev = x->prev;
    else *tail = x->prev;
    x->prev = x->next = SL_NONE;
}

void sl_core__bind(sl_core_t *core, int32_t t, int32_t node)
{
    sl_task_t *task = &core->tasks[t];
    sl_node_t *n = &core->nodes[node];
    if (task->in_absent) sl_core__absent_remove(core, t);
    task->node = node;
    task->ran = true;
    list_append(core->tasks, &n->head, &n->tail, t);
    n->count[task->kind]++;
    sl_core__drain_requeue(core, t);
}

void sl_core__drain_requeue(sl_core_t *core, int32_t t)
{
    sl_task_t *task = &core->tasks[t];
    /* a task that lands on, or comes back to, the drain target (an abandoned move) is
     * drained again; without a drain_order the target's own list is the order */
    if (task->node == core->drain_target && task->node != SL_NONE && !task->drain_queued &&
        sl_ivec_push(&core->drain_queue, t) == 0)
        task->drain_queued = true;
}

void sl_core__unbind(sl_core_t *core, int32_t t)
{
    sl_task_t *task = &core->tasks[t];
    if (task->node == SL_NONE) return;
    sl_node_t *n = &core->nodes[task->node];
    list_unlink(core->tasks, &n->head, &n->tail, t);
    n->count[task->kind]--;
    task->node = SL_NONE;
}

void sl_core__absent_push(sl_core_t *core, int32_t t)
{
    sl_task_t *task = &core->tasks[t];
    sl_core__unbind(core, t);
    task->state = SL_TASK_ABSENT;
    if (task->in_absent) return;
    list_append(core->tasks, &core->absent_head, &core->absent_tail, t);
    task->in_absent = true;
    core->absent++;
}

void sl_core__absent_remove(sl_core_t *core, int32_t t)
{
    sl_task_t *task = &core->tasks[t];
    if (!task->in_absent) return;
    list_unlink(core->tasks, &core->absent_head, &core->absent_tail, t);
    task->in_absent = false;
    core->absent--;
}

void sl_core__task_delete(sl_core_t *core, int32_t t)
{
    sl_task_t *task = &core->tasks[t];
    sl_core__unbind(core, t);
    sl_core__absent_remove(core, t);
    sl_drain__on_task_delete(core, t);
    sl_map_del(&core->task_map, task->id);
    free(task->id);
    task->id = NULL;
    task->live = false;
    core->ntasks--;
    /* the free list only grows to the high-water mark of tasks, which is already allocated */
    if (sl_ivec_push(&core->task_free, t) != 0) return;
}

int sl_core__emit(sl_core_t *core, sl_msg_type_t type, int32_t node, int32_t task, uint64_t op_id)
{
    if (core->outbox_len == core->outbox_cap) {
        size_t cap = core->outbox_cap ? core->outbox_cap * 2 : 64;
        sl_msg_t *o = realloc(core->outbox, cap * sizeof *o);
        if (!o) return SL_ENOMEM;
        core->outbox = o;
        core->outbox_cap = cap;
    }
    sl_msg_t *m = &core->outbox[core->outbox_len++];
    memset(m, 0, sizeof *m);
    m->type = type;
    m->op_id = op_id;
    snprintf(m->node, sizeof m->node, "%s", core->nodes[node].id);
    if (type == SL_MSG_DRAIN) {
        snprintf(m->target, sizeof m->target, "%s", core->record.target);
        m->epoch = core->record.epoch;
    } else {
        const sl_task_t *t = &core->tasks[task];
        snprintf(m->task, sizeof m->task, "%s", t->id);
        snprintf(m->changefeed, sizeof m->changefeed, "%s", core->changefeeds[t->changefeed]);
        m->kind = (sl_task_kind_t)t->kind;
        m->weight = t->weight;
    }
    return 0;
}

void sl_core__refuse(sl_core_t *core, const char *fmt, ...)
{
    char buf[SL_ERRMSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    char *copy = strdup(buf);
    if (!copy) return;
    if (core->refusal_len == SL_REFUSAL_KEEP) {
        free(core->refusals[core->refusal_first]);
        core->refusal_first = (core->refusal_first + 1) % SL_REFUSAL_KEEP;
        core->refusal_len--;
    }
    core->refusals[(core->refusal_first + core->refusal_len) % SL_REFUSAL_KEEP] = copy;
    core->refusal_len++;
}

void sl_core__wait(sl_core_t *core, const char *fmt, ...)
{
    if (core->waiting[0]) return; /* the first reason of a round is the one that matters */
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(core->waiting, sizeof core->waiting, fmt, ap);
    va_end(ap);
}

/* ---- nodes ------------------------------------------------------------------------------ */

int sl_core_node_join(sl_core_t *core, const char *id, const char *addr)
{
    sl_core__changed(core);
    if (!valid_id(id)) return SL_EINVAL;
    if (sl_map_get(&core->node_map, id) >= 0) return SL_EEXIST;
    int32_t slot = sl_slots_take((void **)&core->nodes, &core->nodes_cap, sizeof *core->nodes, 16,
                                 &core->node_free);
    if (slot < 0) return slot;
    sl_node_t *n = &core->nodes[slot];
    memset(n, 0, sizeof *n);
    n->id = strdup(id);
    n->addr = strdup(addr ? addr : "");
    n->head = n->tail = SL_NONE;
    atomic_init(&n->liveness, SL_ALIVE);
    int rc = SL_ENOMEM;
    if (!n->id || !n->addr) goto fail;
    if ((rc = sl_ivec_push(&core->node_order, slot)) != 0) goto fail;
    if ((rc = sl_map_put(&core->node_map, n->id, slot)) != 0) {
        core->node_order.len--;
        goto fail;
    }
    n->live = true;
    n->join_seq = ++core->join_seq;
    n->last_seen_ms = core->now_ms;
    sl_drain__on_join(core, slot);
    return 0;
fail:
    free(n->id);
    free(n->addr);
    memset(n, 0, sizeof *n);
    sl_ivec_push(&core->node_free, slot); /* cannot fail: the slot came from this list */
    return rc;
}

void sl_core__drain_clear(sl_core_t *core)
{
    for (size_t i = 0; i < core->drain_queue.len; i++) {
        int32_t t = core->drain_queue.v[i];
        if (core->tasks[t].live) core->tasks[t].drain_queued = false;
    }
    core->drain_queue.len = 0;
    core->drain_cursor = 0;
    core->drain_target = SL_NONE;
    core->drain_ended = true;
    core->drain_ended_ms = core->now_ms;
    core->drain_controlled = false;
}

int sl_core_node_leave(sl_core_t *core, const char *id)
{
    sl_core__changed(core);
    int32_t slot;
    sl_node_t *n = sl_core__node(core, id, &slot);
    if (!n) return SL_ENOENT;
    sl_op__on_node_leave(core, slot);
    while (n->head != SL_NONE) sl_core__absent_push(core, n->head); /* its tasks are absent now */
    sl_drain__on_leave(core, slot); /* D9: a target that leaves loses its drain */
    if (core->drain_target == slot) sl_core__drain_clear(core);
    for (size_t i = 0; i < core->node_order.len; i++) {
        if (core->node_order.v[i] == slot) {
            memmove(&core->node_order.v[i], &core->node_order.v[i + 1],
                    (core->node_order.len - i - 1) * sizeof(int32_t));
            core->node_order.len--;
            break;
        }
    }
    sl_map_del(&core->node_map, n->id);
    node_release(n);
    memset(n, 0, sizeof *n); /* L3: liveness entry and per-node state are gone */
    sl_ivec_push(&core->node_free, slot);
    /* L4: a draining node that is the only one left goes back to Alive */
    if (core->drain_target != SL_NONE && core->node_order.len == 1) {
        int expected = SL_DRAINING;
        atomic_compare_exchange_strong(&core->nodes[core->drain_target].liveness, &expected,
                                       SL_ALIVE);
        sl_drain__ended(core, SL_DRAIN_CANCELLED, "it is the last node (L4)");
    }
    sl_sched__round(core);
    return 0;
}

int sl_core_node_set_label(sl_core_t *core, const char *id, const char *key, const char *value)
{
    sl_core__changed(core);
    sl_node_t *n = sl_core__node(core, id, NULL);
    if (!n) return SL_ENOENT;
    if (!key || !value) return SL_EINVAL;
    for (size_t i = 0; i < n->nlabels; i++) {
        if (!strcmp(n->labels[i].key, key)) {
            char *v = strdup(value);
            if (!v) return SL_ENOMEM;
            free((char *)n->labels[i].value);
            n->labels[i].value = v;
            return 0;
        }
    }
    sl_label_t *labels = realloc(n->labels, (n->nlabels + 1) * sizeof *labels);
    if (!labels) return SL_ENOMEM;
    n->labels = labels;
    char *k = strdup(key), *v = strdup(value);
    if (!k || !v) {
        free(k);
        free(v);
        return SL_ENOMEM;
    }
    labels[n->nlabels++] = (sl_label_t){.key = k, .value = v};
    return 0;
}

int sl_core_node_cordon(sl_core_t *core, const char *id, int cordoned)
{
    sl_node_t *n = sl_core__node(core, id, NULL);
    if (!n) return SL_ENOENT;
    if (n->cordoned == (cordoned != 0)) return 0; /* as it was: no event */
    sl_core__changed(core);
    n->cordoned = cordoned != 0;
    return 0;
}

int sl_core_liveness(sl_core_t *core, const char *id, sl_liveness_t *out)
{
    sl_node_t *n = sl_core__node(core, id, NULL);
    if (!n) return SL_ENOENT;
    *out = node_liveness(n);
    return 0;
}

int sl_core_liveness_cas(sl_core_t *core, const char *id, sl_liveness_t expected,
                         sl_liveness_t desired)
{
    sl_core__changed(core);
    int32_t slot;
    sl_node_t *n = sl_core__node(core, id, &slot);
    if (!n) return SL_ENOENT;
    if (!sl_liveness_transition_allowed(expected, desired)) return SL_EINVAL;
    /* the controlled drain target stops only when D8 holds (drain.c) */
    if (slot == core->drain_target && core->drain_controlled) return SL_EBUSY;
    if (core->store && core->store->ops->save_liveness(core->store, n->id, (int)desired) != 0)
        return SL_EIO; /* D4: persisted before it takes effect */
    int e = (int)expected;
    if (!atomic_compare_exchange_strong(&n->liveness, &e, (int)desired)) return SL_EAGAIN;
    /* the drain target that stops has been drained (or shut down): the drain is over */
    if (slot == core->drain_target && desired == SL_STOPPING) sl_core__drain_clear(core);
    return 0;
}

/* ---- drain marking ---------------------------------------------------------------------- */

int sl_core_drain_mark(sl_core_t *core, const char *id)
{
    sl_core__changed(core);
    int32_t slot;
    sl_node_t *n = sl_core__node(core, id, &slot);
    if (!n) return SL_ENOENT;
    if (core->drain_target == slot) return 0; /* idempotent */
    if (core->drain_target != SL_NONE) return SL_EBUSY; /* D2 */
    if (core->node_order.len < 2) return SL_ELIMIT;      /* L4: nowhere to go */
    int e = SL_ALIVE;
    if (!atomic_compare_exchange_strong(&n->liveness, &e, SL_DRAINING)) return SL_EAGAIN;
    core->drain_target = slot;
    core->drain_queue.len = 0;
    core->drain_cursor = 0;
    core->drain_order_dirty = true;
    sl_sched__round(core);
    return 0;
}

int sl_core_drain_unmark(sl_core_t *core, const char *id)
{
    sl_core__changed(core);
    int32_t slot;
    sl_node_t *n = sl_core__node(core, id, &slot);
    if (!n) return SL_ENOENT;
    if (core->drain_target != slot) return SL_EINVAL;
    if (core->drain_controlled) return SL_EBUSY; /* sl_core_drain_cancel owns it */
    int e = SL_DRAINING;
    /* D3 is the one sanctioned way back from Draining besides L4 */
    if (!atomic_compare_exchange_strong(&n->liveness, &e, SL_ALIVE)) return SL_EAGAIN;
    sl_core__drain_clear(core);
    return 0;
}

const char *sl_core_drain_target(sl_core_t *core)
{
    return core->drain_target == SL_NONE ? NULL : core->nodes[core->drain_target].id;
}

/* ---- tasks ------------------------------------------------------------------------------ */

static int32_t intern_changefeed(sl_core_t *core, const char *cf)
{
    int32_t i = sl_map_get(&core->changefeed_map, cf);
    if (i >= 0) return i;
    if (core->nchangefeeds == core->changefeeds_cap) {
        size_t cap = core->changefeeds_cap ? core->changefeeds_cap * 2 : 16;
        char **v = realloc(core->changefeeds, cap * sizeof *v);
        if (!v) return SL_ENOMEM;
        core->changefeeds = v;
        sl_cf_t *r = realloc(core->cf_reports, cap * sizeof *r);
        if (!r) return SL_ENOMEM;
        core->cf_reports = r;
        core->changefeeds_cap = cap;
    }
    char *copy = strdup(cf);
    if (!copy) return SL_ENOMEM;
    i = (int32_t)core->nchangefeeds;
    if (sl_map_put(&core->changefeed_map, copy, i) != 0) {
        free(copy);
        return SL_ENOMEM;
    }
    core->cf_reports[core->nchangefeeds] = (sl_cf_t){0};
    core->changefeeds[core->nchangefeeds++] = copy;
    return i;
}

int sl_core_task_add(sl_core_t *core, const char *id, sl_task_kind_t kind, const char *changefeed,
                     uint32_t weight)
{
    sl_core__changed(core);
    if (!valid_id(id) || (kind != SL_TASK_MAINTAINER && kind != SL_TASK_DISPATCHER))
        return SL_EINVAL;
    if (!changefeed) changefeed = id;
    if (!valid_id(changefeed)) return SL_EINVAL;
    if (sl_map_get(&core->task_map, id) >= 0) return SL_EEXIST;
    int32_t cf = intern_changefeed(core, changefeed);
    if (cf < 0) return cf;
    int32_t t = sl_slots_take((void **)&core->tasks, &core->tasks_cap, sizeof *core->tasks, 64,
                              &core->task_free);
    if (t < 0) return t;
    sl_task_t *task = &core->tasks[t];
    char *copy = strdup(id);
    if (!copy || sl_map_put(&core->task_map, copy, t) != 0) {
        free(copy);
        sl_ivec_push(&core->task_free, t); /* cannot fail: the slot came from this list */
        return SL_ENOMEM;
    }
    *task = (sl_task_t){.id = copy,
                        .changefeed = cf,
                        .node = SL_NONE,
                        .prev = SL_NONE,
                        .next = SL_NONE,
                        .op = SL_NONE,
                        .weight = weight ? weight : 1,
                        .kind = (uint8_t)kind,
                        .live = true};
    core->ntasks++;
    if (kind == SL_TASK_MAINTAINER && !core->cf_reports[cf].maintained) {
        core->cf_reports[cf].maintained = true;
        core->maintained_cfs++;
    }
    sl_core__absent_push(core, t);
    return 0;
}

int sl_core_task_remove(sl_core_t *core, const char *id)
{
    sl_core__changed(core);
    int32_t t = sl_map_get(&core->task_map, id ? id : "");
    if (t < 0) return SL_ENOENT;
    sl_task_t *task = &core->tasks[t];
    if (task->remove_pending) return 0;
    if (task->op == SL_NONE && task->node == SL_NONE && !sl_core__removal_needs_node(task)) {
        /* runs nowhere: gone at once */
        sl_core__task_delete(core, t);
        return 0;
    }
    int rc = sl_ivec_push(&core->remove_queue, t);
    if (rc) return rc;
    task->remove_pending = true;
    sl_sched__round(core);
    return 0;
}

int sl_core_report(sl_core_t *core, const char *node, const char *task, sl_report_t state,
                   uint64_t now_ms)
{
    sl_core__changed(core);
    if (state != SL_REPORT_WORKING && state != SL_REPORT_STOPPED) return SL_EINVAL;
    int32_t n;
    if (!sl_core__node(core, node, &n)) return SL_ENOENT;
    if (now_ms > core->now_ms) core->now_ms = now_ms;
    int32_t t = sl_map_get(&core->task_map, task ? task : "");
    if (t < 0) return SL_ENOENT;
    /* S4: a finished operator frees capacity now, not at the next tick; a report that
     * changes nothing (a heartbeat, a bootstrap report) costs no round */
    if (sl_op__on_report(core, n, t, state)) sl_sched__round(core);
    return 0;
}

int sl_core_tick(sl_core_t *core, uint64_t now_ms)
{
    sl_core__changed(core);
    if (now_ms > core->now_ms) core->now_ms = now_ms;
    sl_drain__tick(core);
    sl_op__timeouts(core);
    sl_sched__round(core);
    return 0;
}

/* ---- outbox ----------------------------------------------------------------------------- */

const sl_msg_t *sl_core_outbox(sl_core_t *core, size_t *n)
{
    *n = core->outbox_len;
    return core->outbox;
}

void sl_core_outbox_clear(sl_core_t *core)
{
    core->outbox_len = 0;
}

/* ---- inspection ------------------------------------------------------------------------- */

static void fill_node_info(sl_node_t *n, sl_node_info_t *out)
{
    *out = (sl_node_info_t){.id = n->id,
                            .addr = n->addr,
                            .liveness = node_liveness(n),
                            .maintainers = n->count[SL_TASK_MAINTAINER],
                            .dispatchers = n->count[SL_TASK_DISPATCHER] + n->reported_dispatchers,
                            .inflight = n->ops_to,
                            .ops_from = n->ops_from,
                            .ops_to = n->ops_to,
                            .cordoned = n->cordoned};
}

size_t sl_core_node_count(sl_core_t *core)
{
    return core->node_order.len;
}

int sl_core_node_at(sl_core_t *core, size_t i, sl_node_info_t *out)
{
    if (i >= core->node_order.len) return SL_ENOENT;
    fill_node_info(&core->nodes[core->node_order.v[i]], out);
    return 0;
}

int sl_core_node_info(sl_core_t *core, const char *id, sl_node_info_t *out)
{
    sl_node_t *n = sl_core__node(core, id, NULL);
    if (!n) return SL_ENOENT;
    fill_node_info(n, out);
    return 0;
}

const char *sl_core_node_label(sl_core_t *core, const char *id, const char *key)
{
    sl_node_t *n = sl_core__node(core, id, NULL);
    if (!n || !key) return NULL;
    for (size_t i = 0; i < n->nlabels; i++)
        if (!strcmp(n->labels[i].key, key)) return n->labels[i].value;
    return NULL;
}

size_t sl_core_task_count(sl_core_t *core)
{
    return core->ntasks;
}

int sl_core_task_info(sl_core_t *core, const char *id, sl_task_info_t *out)
{
    int32_t t = sl_map_get(&core->task_map, id ? id : "");
    if (t < 0) return SL_ENOENT;
    sl_task_t *task = &core->tasks[t];
    *out = (sl_task_info_t){.id = task->id,
                            .kind = (sl_task_kind_t)task->kind,
                            .changefeed = core->changefeeds[task->changefeed],
                            .weight = task->weight,
                            .node = task->node == SL_NONE ? NULL : core->nodes[task->node].id,
                            .state = (sl_task_state_t)task->state,
                            .has_operator = task->op != SL_NONE,
                            .remove_pending = task->remove_pending};
    return 0;
}

void sl_core_stats(sl_core_t *core, sl_core_stats_t *out)
{
    core->stats.ops_in_progress = core->ops_in_progress;
    core->stats.drain_in_progress = sl_op__drain_in_progress(core);
    core->stats.absent = core->absent;
    core->stats.waiting = core->waiting;
    core->stats.epoch = core->record.epoch;
    *out = core->stats;
}

size_t sl_core_refusal_count(sl_core_t *core)
{
    return core->refusal_len;
}

const char *sl_core_refusal_at(sl_core_t *core, size_t i)
{
    if (i >= core->refusal_len) return NULL;
    return core->refusals[(core->refusal_first + i) % SL_REFUSAL_KEEP];
}

/* ---- invariants (tests and simulator) --------------------------------------------------- */

#define BROKEN(...)                                                                            \
    do {                                                                                       \
        snprintf(why, whylen, __VA_ARGS__);                                                    \
        rc = SL_EINVAL;                                                                        \
        goto done;                                                                             \
    } while (0)

int sl_core_check(sl_core_t *core, char *why, size_t whylen)
{
    int rc = 0;
    size_t ncap = core->nodes_cap;
    uint32_t *count = calloc(ncap * 4 + 1, sizeof *count);
    if (!count) return SL_ENOMEM;
    uint32_t absent = 0, ops = 0, drain_ops = 0, ntasks = 0;
    for (size_t t = 0; t < core->tasks_cap; t++) {
        sl_task_t *task = &core->tasks[t];
        if (!task->live) continue;
        ntasks++;
        if (task->node != SL_NONE) {
            if (!core->nodes[task->node].live) BROKEN("task %s bound to a freed node", task->id);
            count[task->node * 4 + task->kind]++;
        }
        if (task->in_absent) {
            absent++;
            if (task->node != SL_NONE || task->op != SL_NONE)
                BROKEN("absent task %s is bound or has an operator", task->id);
        }
        if (task->node == SL_NONE && !task->in_absent && task->op == SL_NONE)
            BROKEN("task %s is lost: bound nowhere, not absent, no operator", task->id);
        if (task->op != SL_NONE && core->ops[task->op].task != (int32_t)t)
            BROKEN("task %s and its operator disagree (O1)", task->id);
    }
    for (size_t o = 0; o < core->ops_cap; o++) {
        sl_op_t *op = &core->ops[o];
        if (!op->live) continue;
        ops++;
        if (core->tasks[op->task].op != (int32_t)o)
            BROKEN("operator %llu is not its task's operator (O1)", (unsigned long long)op->id);
        if (op->from != SL_NONE) count[op->from * 4 + 2]++;
        if (op->to != SL_NONE) count[op->to * 4 + 3]++;
        /* operators that involved the node before it became the target count against the
         * batch too (the scheduler waits for them), but only drain moves are its own */
        if (core->drain_target != SL_NONE && op->reason == SL_REASON_DRAIN &&
            (op->from == core->drain_target || op->to == core->drain_target))
            drain_ops++;
    }
    if (ntasks != core->ntasks) BROKEN("task count %zu, recount %u", core->ntasks, ntasks);
    if (absent != core->absent) BROKEN("absent count %u, recount %u", core->absent, absent);
    if (ops != core->ops_in_progress)
        BROKEN("operators in progress %u, recount %u", core->ops_in_progress, ops);
    if (ops > core->cfg.max_operators)
        BROKEN("%u operators exceed max_operators %u (O3)", ops, core->cfg.max_operators);
    if (drain_ops > core->cfg.drain_batch_size)
        BROKEN("%u drain operators exceed drain_batch_size %u (O3)", drain_ops,
               core->cfg.drain_batch_size);
    for (size_t i = 0; i < core->node_order.len; i++) {
        int32_t s = core->node_order.v[i];
        sl_node_t *n = &core->nodes[s];
        if (n->count[0] != count[s * 4] || n->count[1] != count[s * 4 + 1])
            BROKEN("node %s counts %u/%u, recount %u/%u", n->id, n->count[0], n->count[1],
                   count[s * 4], count[s * 4 + 1]);
        if (n->ops_from != count[s * 4 + 2] || n->ops_to != count[s * 4 + 3])
            BROKEN("node %s ops from/to %u/%u, recount %u/%u (O4)", n->id, n->ops_from,
                   n->ops_to, count[s * 4 + 2], count[s * 4 + 3]);
    }
    if (core->drain_target != SL_NONE &&
        node_liveness(&core->nodes[core->drain_target]) != SL_DRAINING)
        BROKEN("drain target %s is not Draining", core->nodes[core->drain_target].id);
done:
    free(count);
    return rc;
}
