/* agent.c — one node: its tasks driven toward what their owners want, its maintainers
 * (each with its own sl_core_t placing dispatchers), heartbeats and D6 reports.
 *
 * Every task has a `want` (run or not, the newest command's answer) and a `have` (what the
 * driver did); the agent moves `have` toward `want` one driver call at a time and reports
 * when the two agree, so duplicated and retried commands are answered with the truth.
 *
 * Fencing (never two owners): each changefeed remembers the newest maintainer incarnation
 * that spoke to this node (a command or a bootstrap question); commands of older
 * incarnations are ignored. A new maintainer asks every node what it runs before it places
 * anything, and a node answers only once none of that changefeed's dispatchers is halfway
 * through a start or stop, so the answer is the truth and stays the truth.
 *
 * A2: a maintainer stopped because its changefeed was deleted (sl_msg_t.removed) has no
 * successor to adopt its dispatchers, so it sweeps them first: a remove operator of its own
 * core for each one, wherever it runs or is on its way to (after an add or move under way,
 * O1; retried, O7; over when the node says it stopped or is gone). Only when none is left
 * does it stop, with its trigger dispatcher (D7), and report itself stopped: the
 * coordinator's REMOVE ends when nothing of the changefeed runs, and a lost stop is
 * retried instead of leaving a dispatcher behind. A maintainer still bootstrapping sweeps
 * what the nodes report once they have answered.
 *
 * Iteration follows insertion order everywhere (tasks, maintainers, nodes): the same
 * events give the same messages in the same order (M1). */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent.h"

/* ---- model -------------------------------------------------------------------------------- */

typedef struct {
    char id[SL_ID_MAX];
    char cf[SL_ID_MAX];
    uint8_t kind;
    uint8_t have; /* sl_agent_task_state_t */
    bool want;
    bool trigger;
    bool removed; /* a maintainer told to stop for good: its changefeed was deleted (A2) */
    uint32_t weight;
} task_t;

/* Per changefeed: the newest maintainer incarnation this node has heard from. */
typedef struct {
    char cf[SL_ID_MAX];
    char owner[SL_ID_MAX];
    uint64_t issuer;
    bool bootstrap_pending; /* answer once no dispatcher of cf is halfway (see header) */
} cfview_t;

typedef struct {
    char id[SL_ID_MAX];
    uint64_t node_epoch;
} joined_t;

typedef struct {
    char cf[SL_ID_MAX];
    int32_t task; /* the maintainer's own entry in the task table (never moves) */
    uint32_t tables;
    uint64_t incarnation;
    sl_core_t *core; /* NULL while bootstrapping */
    bool sweep; /* A2: removing every dispatcher before it stops itself */
    /* bootstrap: nodes still to answer, and what the others run */
    joined_t *waiting;
    size_t nwaiting, waiting_cap;
    sl_agent_item_t *found; /* id = dispatcher; count = index into found_node */
    char (*found_node)[SL_ID_MAX];
    size_t nfound, found_cap;
    uint64_t last_ask_ms;
    uint64_t need_view; /* the newest view version an answering node had */
    /* the nodes its core knows, with the node epoch they joined with */
    joined_t *joined;
    size_t njoined, joined_cap;
    /* D6: what was last reported, to report on every change */
    bool reported;
    uint64_t rep_epoch;
    uint32_t rep_remaining;
    uint64_t rep_sig;
} maint_t;

typedef struct {
    char id[SL_ID_MAX];
    uint64_t node_epoch;
    sl_liveness_t liveness;
    bool cordoned;
} vnode_t;

struct sl_agent {
    char id[SL_ID_MAX];
    uint64_t node_epoch;
    sl_agent_config_t cfg;
    const struct sl_agent_driver_ops *driver;
    void *driver_ctx;
    sl_policy_t *policy;
    uint64_t now_ms;

    task_t *tasks;
    size_t ntasks, tasks_cap;
    int32_t *index; /* open addressing over tasks by id; -1 empty */
    size_t index_cap;

    cfview_t *cfs;
    size_t ncfs, cfs_cap;
    maint_t **maints;
    size_t nmaints, maints_cap;
    size_t nsweeps; /* maintainers sweeping (A2): most events have none to look at */

    /* the cluster view (newest version) and the drain this node knows (D5) */
    vnode_t *view;
    size_t nview, view_cap;
    uint64_t view_version;
    uint64_t view_drain_epoch;
    sl_liveness_t liveness;
    char drain_target[SL_ID_MAX];
    uint64_t drain_epoch;
    uint64_t last_heartbeat_ms;
    bool heartbeat_once;

    sl_agent_msg_t *outbox;
    size_t outbox_len, outbox_cap;
};

void sl_agent_config_default(sl_agent_config_t *cfg)
{
    *cfg = (sl_agent_config_t){
        .heartbeat_interval_ms = 1000,
        .step_timeout_ms = 2000,
        .max_operators = 64,
        .drain_batch_size = 0,
    };
}

static void copy_id(char *dst, const char *src)
{
    snprintf(dst, SL_ID_MAX, "%s", src ? src : "");
}

/* ---- task index ------------------------------------------------------------------------------ */

static uint32_t hash_id(const char *s)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (; *s; s++) h = (h ^ (uint8_t)*s) * 16777619u;
    return h;
}

static int32_t task_find(const sl_agent_t *a, const char *id)
{
    if (!a->index_cap) return -1;
    size_t mask = a->index_cap - 1;
    for (size_t i = hash_id(id) & mask;; i = (i + 1) & mask) {
        int32_t t = a->index[i];
        if (t < 0) return -1;
        if (!strcmp(a->tasks[t].id, id)) return t;
    }
}

static int index_put(sl_agent_t *a, int32_t t)
{
    if ((a->ntasks + 1) * 2 > a->index_cap) {
        size_t cap = a->index_cap ? a->index_cap * 2 : 64;
        int32_t *idx = malloc(cap * sizeof *idx);
        if (!idx) return SL_ENOMEM;
        memset(idx, 0xff, cap * sizeof *idx);
        free(a->index);
        a->index = idx;
        a->index_cap = cap;
        for (size_t k = 0; k < a->ntasks; k++) {
            if ((int32_t)k == t) continue;
            size_t i = hash_id(a->tasks[k].id) & (cap - 1);
            while (idx[i] >= 0) i = (i + 1) & (cap - 1);
            idx[i] = (int32_t)k;
        }
    }
    size_t mask = a->index_cap - 1, i = hash_id(a->tasks[t].id) & mask;
    while (a->index[i] >= 0) i = (i + 1) & mask;
    a->index[i] = t;
    return 0;
}

static int grow(void **v, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap) return 0;
    size_t c = *cap ? *cap * 2 : 8;
    while (c < need) c *= 2;
    void *p = realloc(*v, c * elem);
    if (!p) return SL_ENOMEM;
    *v = p;
    *cap = c;
    return 0;
}

/* The task record for `id`, created (stopped, unwanted) when new. */
static task_t *task_get(sl_agent_t *a, const char *id, sl_task_kind_t kind, const char *cf,
                        uint32_t weight, bool trigger)
{
    int32_t t = task_find(a, id);
    if (t >= 0) {
        if (weight) a->tasks[t].weight = weight;
        return &a->tasks[t];
    }
    if (grow((void **)&a->tasks, &a->tasks_cap, a->ntasks + 1, sizeof *a->tasks)) return NULL;
    t = (int32_t)a->ntasks;
    task_t *x = &a->tasks[t];
    *x = (task_t){.kind = (uint8_t)kind, .weight = weight ? weight : 1, .trigger = trigger};
    copy_id(x->id, id);
    copy_id(x->cf, cf && *cf ? cf : id);
    if (index_put(a, t)) return NULL;
    a->ntasks++;
    return x;
}

static void trigger_id(char *out, const char *cf)
{
    snprintf(out, SL_ID_MAX, "%.*s/trigger", SL_ID_MAX - 9, cf);
}

static void dispatcher_id(char *out, const char *cf, uint32_t table)
{
    snprintf(out, SL_ID_MAX, "%.*s/t%u", SL_ID_MAX - 16, cf, table);
}

/* ---- outbox ---------------------------------------------------------------------------------- */

int sl_agent_msg_copy(sl_agent_msg_t *dst, const sl_agent_msg_t *src)
{
    *dst = *src;
    dst->items = NULL;
    if (src->nitems) {
        dst->items = malloc(src->nitems * sizeof *dst->items);
        if (!dst->items) {
            dst->nitems = 0;
            return SL_ENOMEM;
        }
        memcpy(dst->items, src->items, src->nitems * sizeof *dst->items);
    }
    return 0;
}

void sl_agent_msg_free(sl_agent_msg_t *m)
{
    free(m->items);
    m->items = NULL;
    m->nitems = 0;
}

static sl_agent_msg_t *emit(sl_agent_t *a, sl_agent_msg_type_t type, const char *to)
{
    if (grow((void **)&a->outbox, &a->outbox_cap, a->outbox_len + 1, sizeof *a->outbox))
        return NULL;
    sl_agent_msg_t *m = &a->outbox[a->outbox_len++];
    *m = (sl_agent_msg_t){.type = type};
    copy_id(m->from, a->id);
    copy_id(m->to, to);
    return m;
}

static int msg_add_item(sl_agent_msg_t *m, const char *id, uint32_t count, size_t *cap)
{
    if (grow((void **)&m->items, cap, m->nitems + 1, sizeof *m->items)) return SL_ENOMEM;
    copy_id(m->items[m->nitems].id, id);
    m->items[m->nitems++].count = count;
    return 0;
}

const sl_agent_msg_t *sl_agent_outbox(sl_agent_t *agent, size_t *n)
{
    *n = agent->outbox_len;
    return agent->outbox;
}

void sl_agent_outbox_clear(sl_agent_t *agent)
{
    for (size_t i = 0; i < agent->outbox_len; i++) sl_agent_msg_free(&agent->outbox[i]);
    agent->outbox_len = 0;
}

/* ---- changefeed fencing ---------------------------------------------------------------------- */

static cfview_t *cf_get(sl_agent_t *a, const char *cf)
{
    for (size_t i = 0; i < a->ncfs; i++)
        if (!strcmp(a->cfs[i].cf, cf)) return &a->cfs[i];
    if (grow((void **)&a->cfs, &a->cfs_cap, a->ncfs + 1, sizeof *a->cfs)) return NULL;
    cfview_t *c = &a->cfs[a->ncfs++];
    *c = (cfview_t){0};
    copy_id(c->cf, cf);
    return c;
}

/* Accepts a maintainer incarnation speaking about `cf`; false when it is older than one
 * already heard (its command is stale and ignored). */
static bool cf_accept(sl_agent_t *a, const char *cf, const char *from, uint64_t issuer)
{
    cfview_t *c = cf_get(a, cf);
    if (!c || issuer < c->issuer) return false;
    if (issuer > c->issuer || strcmp(c->owner, from) != 0) {
        c->issuer = issuer;
        copy_id(c->owner, from);
    }
    return true;
}

/* ---- maintainers ----------------------------------------------------------------------------- */

static maint_t *maint_find(sl_agent_t *a, const char *cf)
{
    for (size_t i = 0; i < a->nmaints; i++)
        if (!strcmp(a->maints[i]->cf, cf)) return a->maints[i];
    return NULL;
}

static const vnode_t *view_node(const sl_agent_t *a, const char *id)
{
    for (size_t i = 0; i < a->nview; i++)
        if (!strcmp(a->view[i].id, id)) return &a->view[i];
    return NULL;
}

static void maint_free(maint_t *m)
{
    if (!m) return;
    sl_core_free(m->core);
    free(m->waiting);
    free(m->found);
    free(m->found_node);
    free(m->joined);
    free(m);
}

static int joined_index(const maint_t *m, const char *id)
{
    for (size_t i = 0; i < m->njoined; i++)
        if (!strcmp(m->joined[i].id, id)) return (int)i;
    return -1;
}

/* Turns the maintainer core's outbox into messages to nodes. */
static void maint_flush(sl_agent_t *a, maint_t *m)
{
    if (!m->core) return;
    size_t n;
    const sl_msg_t *out = sl_core_outbox(m->core, &n);
    for (size_t i = 0; i < n; i++) {
        if (out[i].type != SL_MSG_START && out[i].type != SL_MSG_STOP) continue;
        /* a command for a node that left since (or an incarnation of it that died) is
         * for nobody: its tasks are gone and the core knows it */
        int j = joined_index(m, out[i].node);
        if (j < 0) continue;
        sl_agent_msg_t *x = emit(a, SL_AMSG_TASK, out[i].node);
        if (!x) break;
        x->node_epoch = m->joined[j].node_epoch; /* fenced by incarnation */
        copy_id(x->task, out[i].task);
        copy_id(x->changefeed, m->cf);
        x->issuer = m->incarnation;
        x->state = out[i].type == SL_MSG_START ? SL_REPORT_WORKING : SL_REPORT_STOPPED;
    }
    sl_core_outbox_clear(m->core);
}

/* Brings a maintainer core's nodes, liveness and drain target in line with the view and
 * the drain this node knows (D6: the target is marked in the maintainer's own core, so its
 * dispatchers move off in batches and none is placed there). */
static void maint_sync_nodes(sl_agent_t *a, maint_t *m)
{
    sl_core_t *core = m->core;
    /* nodes that left, or restarted (their dispatchers died with them) */
    for (size_t i = 0; i < m->njoined;) {
        const vnode_t *v = view_node(a, m->joined[i].id);
        if (v && v->node_epoch == m->joined[i].node_epoch) {
            i++;
            continue;
        }
        sl_core_node_leave(core, m->joined[i].id);
        m->joined[i] = m->joined[--m->njoined];
    }
    /* what the leaves sent (O5/O6 steps) goes out now, to the incarnations it was meant
     * for, before a restarted node joins again under the same id */
    maint_flush(a, m);
    for (size_t i = 0; i < a->nview; i++) {
        const vnode_t *v = &a->view[i];
        if (joined_index(m, v->id) >= 0) continue;
        /* Stopping nodes join too (and turn Stopping in maint_sync before any round): what
         * they still run must be known, not placed a second time */
        if (grow((void **)&m->joined, &m->joined_cap, m->njoined + 1, sizeof *m->joined)) break;
        if (sl_core_node_join(core, v->id, "") != 0) continue;
        copy_id(m->joined[m->njoined].id, v->id);
        m->joined[m->njoined++].node_epoch = v->node_epoch;
    }
}

static void maint_sync(sl_agent_t *a, maint_t *m)
{
    sl_core_t *core = m->core;
    if (!core) return;
    maint_sync_nodes(a, m);
    bool view_fresh = a->view_drain_epoch >= a->drain_epoch;
    const char *cur = sl_core_drain_target(core);
    const char *want = a->drain_target[0] && joined_index(m, a->drain_target) >= 0 ? a->drain_target
                                                                                   : NULL;
    if (!a->drain_target[0]) {
        /* the view says a node is Draining that this node has no notification for: it
         * takes nothing until a newer word says how its drain ended */
        for (size_t i = 0; i < a->nview && !want; i++)
            if (a->view[i].liveness == SL_DRAINING && joined_index(m, a->view[i].id) >= 0)
                want = a->view[i].id;
    }
    if (cur && (!want || strcmp(cur, want) != 0)) {
        char old[SL_ID_MAX];
        copy_id(old, cur);
        const vnode_t *v = view_node(a, old);
        if (view_fresh && v && v->liveness == SL_STOPPING)
            sl_core_liveness_cas(core, old, SL_DRAINING, SL_STOPPING);
        else if (want || (view_fresh && (!v || v->liveness == SL_ALIVE)))
            sl_core_drain_unmark(core, old); /* D3: a cancelled drain gives the node back */
        /* else: the drain ended but this node does not know how yet; the old target stays
         * unschedulable here until a view tells */
    }
    /* Stopping nodes (a completed drain, a graceful shutdown) take nothing (L2); nor does a
     * node shutting down while its drain waits for its turn (cordoned, L1) */
    for (size_t i = 0; i < m->njoined; i++) {
        const vnode_t *v = view_node(a, m->joined[i].id);
        if (v) sl_core_node_cordon(core, v->id, v->cordoned);
        sl_liveness_t l;
        if (!v || v->liveness != SL_STOPPING || sl_core_liveness(core, v->id, &l) || l == SL_STOPPING)
            continue;
        if (!view_fresh && l == SL_DRAINING) continue;
        sl_core_liveness_cas(core, v->id, l, SL_STOPPING);
    }
    cur = sl_core_drain_target(core);
    if (want && !cur) sl_core_drain_mark(core, want);
    maint_flush(a, m);
}

/* D6: dispatchers on the drain target, by this maintainer's own account: bound there, or
 * carried by an operator that involves the target (a move off it is finished only when the
 * destination runs the task, O2; D8 waits for it), plus the table trigger dispatcher when
 * the maintainer itself is there. */
static uint32_t maint_remaining(sl_agent_t *a, maint_t *m)
{
    if (!a->drain_target[0]) return 0;
    uint32_t n = !strcmp(a->drain_target, a->id) ? 1 : 0;
    sl_node_info_t info;
    if (sl_core_node_info(m->core, a->drain_target, &info) != 0) return n;
    n += info.dispatchers;
    size_t nops = sl_core_op_count(m->core);
    for (size_t i = 0; i < nops; i++) {
        sl_op_info_t op;
        sl_task_info_t ti;
        if (sl_core_op_at(m->core, i, &op)) continue;
        bool involves = (op.from && !strcmp(op.from, a->drain_target)) ||
                        (op.to && !strcmp(op.to, a->drain_target));
        if (!involves) continue;
        if (sl_core_task_info(m->core, op.task, &ti) == 0 && ti.node &&
            !strcmp(ti.node, a->drain_target))
            continue; /* already counted as bound there */
        n++;
    }
    return n;
}

static void maint_report(sl_agent_t *a, maint_t *m, bool force)
{
    if (!m->core) return;
    uint32_t remaining = maint_remaining(a, m);
    size_t nn = sl_core_node_count(m->core);
    uint64_t sig = 1469598103934665603ull;
    sl_node_info_t info;
    for (size_t i = 0; i < nn; i++) {
        if (sl_core_node_at(m->core, i, &info)) continue;
        uint32_t c = info.dispatchers + (!strcmp(info.id, a->id) ? 1 : 0);
        sig = (sig ^ hash_id(info.id)) * 1099511628211ull;
        sig = (sig ^ c) * 1099511628211ull;
    }
    if (!force && m->reported && m->rep_epoch == a->drain_epoch && m->rep_remaining == remaining &&
        m->rep_sig == sig)
        return;
    sl_agent_msg_t *x = emit(a, SL_AMSG_CF_REPORT, "");
    if (!x) return;
    copy_id(x->changefeed, m->cf);
    x->epoch = a->drain_epoch;
    x->remaining = remaining;
    size_t cap = 0;
    bool self_listed = false;
    for (size_t i = 0; i < nn; i++) {
        if (sl_core_node_at(m->core, i, &info)) continue;
        bool self = !strcmp(info.id, a->id);
        self_listed |= self;
        msg_add_item(x, info.id, info.dispatchers + (self ? 1 : 0), &cap);
    }
    if (!self_listed) msg_add_item(x, a->id, 1, &cap); /* the trigger dispatcher (D7) */
    m->reported = true;
    m->rep_epoch = a->drain_epoch;
    m->rep_remaining = remaining;
    m->rep_sig = sig;
}

static void maint_ask(sl_agent_t *a, maint_t *m, const char *node)
{
    sl_agent_msg_t *x = emit(a, SL_AMSG_BOOTSTRAP, node);
    if (!x) return;
    const vnode_t *v = view_node(a, node);
    x->node_epoch = v ? v->node_epoch : 0;
    copy_id(x->changefeed, m->cf);
    x->issuer = m->incarnation;
}

/* A2: a remove operator for every dispatcher of the changefeed. Those that run nowhere go
 * first and at once (no scheduling round runs in between that could place one); the rest
 * wait behind an add or move under way (O1), so a dispatcher that is starting somewhere
 * ends stopped there too. Removing twice is harmless: a retried STOP changes nothing. */
static void sweep_tasks(sl_agent_t *a, maint_t *m)
{
    char id[SL_ID_MAX];
    sl_task_info_t ti;
    for (uint32_t i = 1; i <= m->tables; i++) {
        dispatcher_id(id, m->cf, i);
        if (sl_core_task_info(m->core, id, &ti) == 0 && !ti.node && !ti.has_operator)
            sl_core_task_remove(m->core, id);
    }
    for (uint32_t i = 1; i <= m->tables; i++) {
        dispatcher_id(id, m->cf, i);
        sl_core_task_remove(m->core, id); /* SL_ENOENT: already gone */
    }
    maint_flush(a, m);
}

/* Bootstrap is over: build the core, adopt what the nodes run, place only the rest. */
static void maint_finish_bootstrap(sl_agent_t *a, maint_t *m)
{
    sl_core_config_t cfg;
    sl_core_config_default(&cfg);
    cfg.max_operators = a->cfg.max_operators;
    cfg.step_timeout_ms = a->cfg.step_timeout_ms;
    cfg.drain_batch_size = a->cfg.drain_batch_size;
    if (!cfg.drain_batch_size) {
        uint32_t b = (m->tables + 99) / 100;
        cfg.drain_batch_size = b > 10 ? b : 10; /* D6: max(10, ceil(n/100)) */
    }
    cfg.epoch_gate = 0;      /* nodes acknowledge epochs to the coordinator, not to us */
    cfg.node_timeout_ms = 0; /* liveness comes from the coordinator's view */
    cfg.coordinator_node[0] = 0;
    if (sl_core_new(&cfg, &m->core)) return;
    sl_core_set_policy(m->core, a->policy);
    char id[SL_ID_MAX];
    for (uint32_t i = 1; i <= m->tables; i++) {
        dispatcher_id(id, m->cf, i);
        sl_core_task_add(m->core, id, SL_TASK_DISPATCHER, m->cf, 1);
    }
    m->njoined = 0; /* from here on `joined` is what the core knows */
    if (m->sweep) {
        /* A2: deleted: what runs nowhere goes before the reports are adopted, so that no
         * round they set off places it */
        for (uint32_t i = 1; i <= m->tables; i++) {
            dispatcher_id(id, m->cf, i);
            bool runs = false;
            for (size_t j = 0; j < m->nfound && !runs; j++) runs = !strcmp(m->found[j].id, id);
            if (!runs) sl_core_task_remove(m->core, id);
        }
    }
    maint_sync_nodes(a, m);
    /* adopt what runs before anything can schedule (marking a target runs a round) */
    for (size_t i = 0; i < m->nfound; i++)
        sl_core_report(m->core, m->found_node[m->found[i].count], m->found[i].id,
                       SL_REPORT_WORKING, a->now_ms);
    if (m->sweep) sweep_tasks(a, m); /* A2: deleted while it bootstrapped: all of it goes */
    maint_sync(a, m); /* liveness and the drain target */
    free(m->found);
    free(m->found_node);
    m->found = NULL;
    m->found_node = NULL;
    m->nfound = m->found_cap = 0;
    sl_core_tick(m->core, a->now_ms);
    maint_flush(a, m);
    maint_report(a, m, true);
}

/* Bootstrap ends when every node of the view answered, and this node's view is at least as
 * new as theirs (a node they know of and it does not may run dispatchers too) and holds
 * this node itself (a node without a view knows nobody to ask). */
static void maint_try_finish(sl_agent_t *a, maint_t *m)
{
    if (m->core || m->nwaiting || a->view_version < m->need_view) return;
    const vnode_t *self = view_node(a, a->id);
    if (!self || self->node_epoch != a->node_epoch) return;
    maint_finish_bootstrap(a, m);
}

static void maint_start(sl_agent_t *a, task_t *t)
{
    if (maint_find(a, t->cf)) return;
    maint_t *m = calloc(1, sizeof *m);
    if (!m || grow((void **)&a->maints, &a->maints_cap, a->nmaints + 1, sizeof *a->maints)) {
        free(m);
        return;
    }
    copy_id(m->cf, t->cf);
    m->task = (int32_t)(t - a->tasks);
    m->tables = t->weight;
    /* newer than any incarnation of this changefeed before it: the previous one stopped
     * (or its node died) before this one was started, and time only grows */
    m->incarnation = a->now_ms + 1;
    cfview_t *c = cf_get(a, m->cf);
    if (c && c->issuer >= m->incarnation) m->incarnation = c->issuer + 1;
    a->maints[a->nmaints++] = m;
    if (t->removed) { /* A2: its changefeed is deleted: it sweeps from the start */
        m->sweep = true;
        a->nsweeps++;
    }
    /* D7: the table trigger dispatcher starts here, with the maintainer */
    char tid[SL_ID_MAX];
    trigger_id(tid, m->cf);
    task_t *trig = t->want && !t->removed ? task_get(a, tid, SL_TASK_DISPATCHER, m->cf, 1, true) : NULL;
    if (trig) { /* (a maintainer started only to sweep a deleted changefeed starts none) */
        trig->want = true;
        if (trig->have == SL_AGENT_STOPPED) {
            trig->have = SL_AGENT_STARTING;
            sl_agent_task_t dt = {trig->id, SL_TASK_DISPATCHER, trig->cf, 1, 1};
            a->driver->start(a->driver_ctx, a, &dt);
        }
    }
    /* bootstrap: every node in the view (this one included) says what it runs */
    m->last_ask_ms = a->now_ms;
    for (size_t i = 0; i < a->nview; i++) {
        if (grow((void **)&m->waiting, &m->waiting_cap, m->nwaiting + 1, sizeof *m->waiting))
            break;
        copy_id(m->waiting[m->nwaiting].id, a->view[i].id);
        m->waiting[m->nwaiting++].node_epoch = a->view[i].node_epoch;
        maint_ask(a, m, a->view[i].id);
    }
    maint_try_finish(a, m);
}

static void maint_remove(sl_agent_t *a, const char *cf)
{
    for (size_t i = 0; i < a->nmaints; i++) {
        if (strcmp(a->maints[i]->cf, cf) != 0) continue;
        if (a->maints[i]->sweep) a->nsweeps--;
        maint_free(a->maints[i]);
        memmove(&a->maints[i], &a->maints[i + 1], (a->nmaints - i - 1) * sizeof *a->maints);
        a->nmaints--;
        return;
    }
}

static int found_push(maint_t *m, const char *task, const char *node)
{
    size_t cap = m->found_cap;
    if (grow((void **)&m->found, &cap, m->nfound + 1, sizeof *m->found)) return SL_ENOMEM;
    if (cap != m->found_cap) {
        char(*fn)[SL_ID_MAX] = realloc(m->found_node, cap * sizeof *fn);
        if (!fn) return SL_ENOMEM;
        m->found_node = fn;
        m->found_cap = cap;
    }
    copy_id(m->found[m->nfound].id, task);
    copy_id(m->found_node[m->nfound], node);
    m->found[m->nfound].count = (uint32_t)m->nfound;
    m->nfound++;
    return 0;
}

/* Forgets what `node` answered (it left, or restarted and its tasks died with it). */
static void found_forget(maint_t *m, const char *node)
{
    size_t keep = 0;
    for (size_t k = 0; k < m->nfound; k++) {
        if (!strcmp(m->found_node[k], node)) continue;
        if (keep != k) {
            m->found[keep] = m->found[k];
            memcpy(m->found_node[keep], m->found_node[k], SL_ID_MAX);
        }
        m->found[keep].count = (uint32_t)keep;
        keep++;
    }
    m->nfound = keep;
}

/* The view changed during a bootstrap: nodes gone need not answer; new or restarted ones
 * must (a restarted node's earlier answer described tasks that died with it). */
static void maint_bootstrap_view(sl_agent_t *a, maint_t *m)
{
    for (size_t i = 0; i < m->nwaiting;) {
        const vnode_t *v = view_node(a, m->waiting[i].id);
        if (!v || v->node_epoch != m->waiting[i].node_epoch) m->waiting[i] = m->waiting[--m->nwaiting];
        else i++;
    }
    for (size_t j = 0; j < m->njoined;) {
        const vnode_t *v = view_node(a, m->joined[j].id);
        if (v && v->node_epoch == m->joined[j].node_epoch) {
            j++;
            continue;
        }
        found_forget(m, m->joined[j].id);
        m->joined[j] = m->joined[--m->njoined];
    }
    for (size_t i = 0; i < a->nview; i++) {
        const vnode_t *v = &a->view[i];
        bool known = joined_index(m, v->id) >= 0;
        for (size_t k = 0; k < m->nwaiting && !known; k++)
            if (!strcmp(m->waiting[k].id, v->id)) known = true;
        if (known) continue;
        if (grow((void **)&m->waiting, &m->waiting_cap, m->nwaiting + 1, sizeof *m->waiting))
            return;
        copy_id(m->waiting[m->nwaiting].id, v->id);
        m->waiting[m->nwaiting++].node_epoch = v->node_epoch;
        maint_ask(a, m, v->id);
    }
    maint_try_finish(a, m);
}

/* ---- tasks ------------------------------------------------------------------------------- */

static void report(sl_agent_t *a, task_t *t, sl_report_t state)
{
    if (t->trigger) return;
    if (t->kind == SL_TASK_MAINTAINER) {
        sl_agent_msg_t *x = emit(a, SL_AMSG_REPORT, "");
        if (!x) return;
        copy_id(x->task, t->id);
        copy_id(x->changefeed, t->cf);
        x->state = state;
        return;
    }
    cfview_t *c = cf_get(a, t->cf);
    if (!c || !c->owner[0]) return;
    sl_agent_msg_t *x = emit(a, SL_AMSG_TASK_REPORT, c->owner);
    if (!x) return;
    copy_id(x->task, t->id);
    copy_id(x->changefeed, t->cf);
    x->issuer = c->issuer;
    x->state = state;
}

static task_t *trigger_of(sl_agent_t *a, const char *cf)
{
    char tid[SL_ID_MAX];
    trigger_id(tid, cf);
    int32_t i = task_find(a, tid);
    return i < 0 ? NULL : &a->tasks[i];
}

/* Reports the task's state when `have` agrees with `want`. A maintainer is stopped only
 * once its trigger dispatcher is too (D7: it moves with it, never two at once). */
static void report_if_stable(sl_agent_t *a, task_t *t)
{
    if (t->want && t->have == SL_AGENT_RUNNING) {
        report(a, t, SL_REPORT_WORKING);
    } else if (!t->want && t->have == SL_AGENT_STOPPED) {
        if (t->kind == SL_TASK_MAINTAINER) {
            task_t *trig = trigger_of(a, t->cf);
            if (trig && trig->have != SL_AGENT_STOPPED) return;
        }
        report(a, t, SL_REPORT_STOPPED);
    }
}

/* A2: whether the maintainer of a deleted changefeed must keep running, because some of its
 * dispatchers still run (it sweeps them) or it does not know yet where they run (it is
 * bootstrapping). The sweep begins here, once. */
static bool maint_sweeping(sl_agent_t *a, task_t *t)
{
    maint_t *m = maint_find(a, t->cf);
    if (!m || (!t->removed && !m->sweep)) return false;
    if (!m->sweep) {
        m->sweep = true;
        a->nsweeps++;
        if (m->core) sweep_tasks(a, m);
    }
    return !m->core || sl_core_task_count(m->core) > 0;
}

static void drive(sl_agent_t *a, task_t *t)
{
    sl_agent_task_t dt = {t->id, (sl_task_kind_t)t->kind, t->cf, t->weight, t->trigger};
    if (t->want && t->have == SL_AGENT_STOPPED) {
        t->have = SL_AGENT_STARTING;
        a->driver->start(a->driver_ctx, a, &dt);
    } else if (!t->want && t->have == SL_AGENT_RUNNING) {
        if (t->kind == SL_TASK_MAINTAINER && maint_sweeping(a, t)) return; /* sweeps_finish */
        t->have = SL_AGENT_STOPPING;
        if (t->kind == SL_TASK_MAINTAINER) {
            /* the maintainer stops scheduling at once; its trigger dispatcher goes with it */
            maint_remove(a, t->cf);
            task_t *trig = trigger_of(a, t->cf);
            if (trig) {
                trig->want = false;
                if (trig->have == SL_AGENT_RUNNING) {
                    trig->have = SL_AGENT_STOPPING;
                    sl_agent_task_t tt = {trig->id, SL_TASK_DISPATCHER, trig->cf, 1, 1};
                    a->driver->stop(a->driver_ctx, a, &tt);
                }
            }
        }
        a->driver->stop(a->driver_ctx, a, &dt);
    }
}

/* A2: maintainers whose sweep is over stop now, with their trigger dispatcher (D7), and
 * report stopped when both are. One that was started again meanwhile (the changefeed was
 * created anew under the same id) begins again as a new incarnation that places every
 * table. Called after every event that may have ended a dispatcher's removal. */
static void sweeps_finish(sl_agent_t *a)
{
    for (size_t i = 0; a->nsweeps && i < a->nmaints;) {
        maint_t *m = a->maints[i];
        task_t *t = &a->tasks[m->task];
        if (!m->sweep || !m->core || sl_core_task_count(m->core) > 0 ||
            t->have != SL_AGENT_RUNNING) {
            i++;
            continue;
        }
        if (t->want && t->removed) { /* started only to sweep: it waits for its STOP (A2) */
            i++;
            continue;
        }
        /* either way `m` leaves the list and the next one slides into i */
        if (t->want) {
            t->removed = false;
            maint_remove(a, t->cf);
            maint_start(a, t);
        } else {
            drive(a, t);
            report_if_stable(a, t);
        }
    }
}

/* A bootstrap answer is the truth only when no dispatcher of the changefeed is halfway. */
static void try_answer(sl_agent_t *a, const char *cf)
{
    cfview_t *c = cf_get(a, cf);
    if (!c || !c->bootstrap_pending) return;
    for (size_t i = 0; i < a->ntasks; i++) {
        task_t *t = &a->tasks[i];
        if (t->trigger || t->kind != SL_TASK_DISPATCHER || strcmp(t->cf, cf) != 0) continue;
        if (t->have == SL_AGENT_STARTING || t->have == SL_AGENT_STOPPING) return;
    }
    sl_agent_msg_t *x = emit(a, SL_AMSG_BOOTSTRAP_REPLY, c->owner);
    if (!x) return;
    copy_id(x->changefeed, cf);
    x->issuer = c->issuer;
    x->epoch = a->view_version;
    size_t cap = 0;
    for (size_t i = 0; i < a->ntasks; i++) {
        task_t *t = &a->tasks[i];
        if (t->trigger || t->kind != SL_TASK_DISPATCHER || strcmp(t->cf, cf) != 0) continue;
        if (t->have == SL_AGENT_RUNNING) msg_add_item(x, t->id, 1, &cap);
    }
    c->bootstrap_pending = false;
}

/* A command: run the task (START) or not (STOP). L5: a Stopping node refuses new work. */
static void command(sl_agent_t *a, task_t *t, bool start)
{
    if (start && a->liveness == SL_STOPPING && !(t->want && t->have != SL_AGENT_STOPPED)) {
        report(a, t, SL_REPORT_STOPPED);
        return;
    }
    if (t->want != start) {
        t->want = start;
        drive(a, t);
    }
    report_if_stable(a, t);
}

/* ---- lifetime ------------------------------------------------------------------------------- */

int sl_agent_new(const char *id, uint64_t node_epoch, const sl_agent_config_t *cfg,
                 const struct sl_agent_driver_ops *driver, void *driver_ctx, sl_agent_t **out)
{
    *out = NULL;
    if (!id || !*id || strlen(id) >= SL_ID_MAX || !driver || !driver->start || !driver->stop)
        return SL_EINVAL;
    sl_agent_t *a = calloc(1, sizeof *a);
    if (!a) return SL_ENOMEM;
    copy_id(a->id, id);
    a->node_epoch = node_epoch;
    if (cfg) a->cfg = *cfg;
    else sl_agent_config_default(&a->cfg);
    if (!a->cfg.heartbeat_interval_ms) a->cfg.heartbeat_interval_ms = 1000;
    if (!a->cfg.step_timeout_ms) a->cfg.step_timeout_ms = 2000;
    if (!a->cfg.max_operators) a->cfg.max_operators = 64;
    a->driver = driver;
    a->driver_ctx = driver_ctx;
    a->liveness = SL_ALIVE;
    a->now_ms = node_epoch;
    *out = a;
    return 0;
}

void sl_agent_free(sl_agent_t *agent)
{
    if (!agent) return;
    sl_agent_outbox_clear(agent);
    for (size_t i = 0; i < agent->nmaints; i++) maint_free(agent->maints[i]);
    free(agent->maints);
    free(agent->outbox);
    free(agent->tasks);
    free(agent->index);
    free(agent->cfs);
    free(agent->view);
    free(agent);
}

void sl_agent_set_policy(sl_agent_t *agent, sl_policy_t *policy)
{
    agent->policy = policy;
    for (size_t i = 0; i < agent->nmaints; i++)
        if (agent->maints[i]->core) sl_core_set_policy(agent->maints[i]->core, policy);
}

/* ---- events ------------------------------------------------------------------------------- */

static void clock_to(sl_agent_t *a, uint64_t now_ms)
{
    if (now_ms > a->now_ms) a->now_ms = now_ms;
}

static void heartbeat(sl_agent_t *a)
{
    sl_agent_msg_t *x = emit(a, SL_AMSG_HEARTBEAT, "");
    if (!x) return;
    x->node_epoch = a->node_epoch;
    x->epoch = a->drain_epoch;
    size_t cap = 0;
    for (size_t i = 0; i < a->ntasks; i++) {
        task_t *t = &a->tasks[i];
        if (t->kind == SL_TASK_MAINTAINER && t->have != SL_AGENT_STOPPED)
            msg_add_item(x, t->id, t->weight, &cap);
    }
    a->last_heartbeat_ms = a->now_ms;
    a->heartbeat_once = true;
}

/* D5: the newest drain epoch wins; every maintainer learns the target at once. */
static void learn_drain(sl_agent_t *a, const char *target, uint64_t epoch)
{
    if (epoch <= a->drain_epoch) return; /* stale or known */
    copy_id(a->drain_target, target);
    a->drain_epoch = epoch;
    for (size_t i = 0; i < a->nmaints; i++) {
        maint_sync(a, a->maints[i]);
        maint_report(a, a->maints[i], false);
    }
    heartbeat(a); /* acknowledge now: a node that has not acked gets no new task (D5) */
}

int sl_agent_coord_msg(sl_agent_t *agent, const sl_msg_t *m, uint64_t now_ms)
{
    clock_to(agent, now_ms);
    if (m->type == SL_MSG_DRAIN) {
        learn_drain(agent, m->target, m->epoch);
        return 0;
    }
    if (m->type != SL_MSG_START && m->type != SL_MSG_STOP) return SL_EINVAL;
    task_t *t = task_get(agent, m->task, SL_TASK_MAINTAINER,
                         m->changefeed[0] ? m->changefeed : m->task,
                         m->type == SL_MSG_START ? m->weight : 0, false);
    if (!t) return SL_ENOMEM;
    /* A2: kept until a START (a changefeed created anew under the same id); a retried STOP
     * with the same op_id finds the sweep under way and changes nothing */
    if (m->type == SL_MSG_STOP && m->removed && t->kind == SL_TASK_MAINTAINER) t->removed = true;
    /* a START of a deleted changefeed's maintainer (its node died before it swept) starts
     * it only to sweep: no trigger, no table placed (A2) */
    if (m->type == SL_MSG_START) t->removed = m->removed && t->kind == SL_TASK_MAINTAINER;
    command(agent, t, m->type == SL_MSG_START);
    sweeps_finish(agent);
    return 0;
}

static int recv_msg(sl_agent_t *a, const sl_agent_msg_t *m)
{
    if (m->type != SL_AMSG_HEARTBEAT && m->node_epoch && m->node_epoch != a->node_epoch)
        return 0; /* meant for an incarnation of this node that died: its tasks died too */
    switch (m->type) {
    case SL_AMSG_TASK: {
        if (!cf_accept(a, m->changefeed, m->from, m->issuer)) return 0; /* stale maintainer */
        task_t *t = task_get(a, m->task, SL_TASK_DISPATCHER, m->changefeed, 1, false);
        if (!t) return SL_ENOMEM;
        command(a, t, m->state == SL_REPORT_WORKING);
        return 0;
    }
    case SL_AMSG_BOOTSTRAP: {
        if (!cf_accept(a, m->changefeed, m->from, m->issuer)) return 0;
        cfview_t *c = cf_get(a, m->changefeed);
        if (!c) return SL_ENOMEM;
        c->bootstrap_pending = true;
        try_answer(a, m->changefeed);
        return 0;
    }
    case SL_AMSG_TASK_REPORT: {
        maint_t *mt = maint_find(a, m->changefeed);
        if (!mt || mt->incarnation != m->issuer || !mt->core) return 0;
        sl_core_report(mt->core, m->from, m->task, m->state, a->now_ms);
        maint_flush(a, mt);
        maint_report(a, mt, false);
        return 0;
    }
    case SL_AMSG_BOOTSTRAP_REPLY: {
        maint_t *mt = maint_find(a, m->changefeed);
        if (!mt || mt->incarnation != m->issuer || mt->core) return 0;
        size_t w = 0;
        while (w < mt->nwaiting && strcmp(mt->waiting[w].id, m->from) != 0) w++;
        if (w == mt->nwaiting) return 0; /* a duplicate, or a node that left */
        /* during bootstrap `joined` lists the nodes that answered, with their epoch */
        if (grow((void **)&mt->joined, &mt->joined_cap, mt->njoined + 1, sizeof *mt->joined))
            return SL_ENOMEM;
        mt->joined[mt->njoined++] = mt->waiting[w];
        mt->waiting[w] = mt->waiting[--mt->nwaiting];
        for (size_t i = 0; i < m->nitems; i++)
            if (found_push(mt, m->items[i].id, m->from)) return SL_ENOMEM;
        if (m->epoch > mt->need_view) mt->need_view = m->epoch;
        maint_try_finish(a, mt);
        return 0;
    }
    default:
        return SL_EINVAL;
    }
}

int sl_agent_recv(sl_agent_t *agent, const sl_agent_msg_t *m, uint64_t now_ms)
{
    clock_to(agent, now_ms);
    int rc = recv_msg(agent, m);
    sweeps_finish(agent); /* a dispatcher's stop, or a bootstrap that ended, may end a sweep */
    return rc;
}

int sl_agent_view(sl_agent_t *agent, uint64_t version, const sl_agent_node_t *nodes, size_t n,
                  const char *drain_target, uint64_t drain_epoch, uint64_t now_ms)
{
    sl_agent_t *a = agent;
    clock_to(a, now_ms);
    if (version <= a->view_version) return 0; /* older than what this node knows */
    if (grow((void **)&a->view, &a->view_cap, n ? n : 1, sizeof *a->view)) return SL_ENOMEM;
    a->view_version = version;
    a->nview = n;
    for (size_t i = 0; i < n; i++) {
        copy_id(a->view[i].id, nodes[i].id);
        a->view[i].node_epoch = nodes[i].node_epoch;
        a->view[i].liveness = nodes[i].liveness;
        a->view[i].cordoned = nodes[i].cordoned != 0;
        if (!strcmp(nodes[i].id, a->id) && nodes[i].node_epoch == a->node_epoch)
            a->liveness = nodes[i].liveness; /* L5 learns it is Stopping here */
    }
    a->view_drain_epoch = drain_epoch;
    if (drain_epoch > a->drain_epoch) {
        learn_drain(a, drain_target ? drain_target : "", drain_epoch);
    }
    for (size_t i = 0; i < a->nmaints; i++) {
        maint_t *m = a->maints[i];
        if (m->core) {
            maint_sync(a, m);
            maint_report(a, m, false);
        } else {
            maint_bootstrap_view(a, m);
        }
    }
    sweeps_finish(a); /* a node that left took its dispatchers with it */
    return 0;
}

static void after_completion(sl_agent_t *a, task_t *t)
{
    if (t->trigger) {
        /* a maintainer waiting for its trigger dispatcher to stop can say so now */
        for (size_t i = 0; i < a->ntasks; i++) {
            task_t *mt = &a->tasks[i];
            if (mt->kind == SL_TASK_MAINTAINER && !strcmp(mt->cf, t->cf)) {
                if (!mt->want && mt->have == SL_AGENT_STOPPED) report_if_stable(a, mt);
                break;
            }
        }
        return;
    }
    if (t->kind == SL_TASK_DISPATCHER) try_answer(a, t->cf);
}

int sl_agent_task_started(sl_agent_t *agent, const char *task, uint64_t now_ms)
{
    sl_agent_t *a = agent;
    clock_to(a, now_ms);
    int32_t i = task_find(a, task);
    if (i < 0 || a->tasks[i].have != SL_AGENT_STARTING) return SL_ENOENT;
    task_t *t = &a->tasks[i];
    t->have = SL_AGENT_RUNNING;
    if (t->kind == SL_TASK_MAINTAINER && (t->want || t->removed)) {
        /* (removed: stopped for good while it started; it still bootstraps, to learn where
         * an earlier incarnation left dispatchers, and sweeps them, A2) */
        maint_start(a, t);
        t = &a->tasks[task_find(a, task)]; /* the table may have grown */
    }
    if (!t->want) drive(a, t);
    report_if_stable(a, t);
    after_completion(a, t);
    sweeps_finish(a);
    return 0;
}

int sl_agent_task_stopped(sl_agent_t *agent, const char *task, uint64_t now_ms)
{
    sl_agent_t *a = agent;
    clock_to(a, now_ms);
    int32_t i = task_find(a, task);
    if (i < 0 || a->tasks[i].have != SL_AGENT_STOPPING) return SL_ENOENT;
    task_t *t = &a->tasks[i];
    t->have = SL_AGENT_STOPPED;
    if (t->want) drive(a, t);
    report_if_stable(a, t);
    after_completion(a, t);
    return 0;
}

int sl_agent_tick(sl_agent_t *agent, uint64_t now_ms)
{
    sl_agent_t *a = agent;
    clock_to(a, now_ms);
    bool beat = !a->heartbeat_once || a->now_ms >= a->last_heartbeat_ms + a->cfg.heartbeat_interval_ms;
    if (beat) heartbeat(a);
    for (size_t i = 0; i < a->nmaints; i++) {
        maint_t *m = a->maints[i];
        if (!m->core) {
            if (a->now_ms >= m->last_ask_ms + a->cfg.heartbeat_interval_ms) {
                m->last_ask_ms = a->now_ms; /* questions and answers may be lost: ask again */
                for (size_t k = 0; k < m->nwaiting; k++) maint_ask(a, m, m->waiting[k].id);
            }
            continue;
        }
        sl_core_tick(m->core, a->now_ms);
        maint_flush(a, m);
        maint_report(a, m, beat); /* D6: on every change and every heartbeat */
    }
    sweeps_finish(a);
    return 0;
}

/* ---- inspection --------------------------------------------------------------------------- */

const char *sl_agent_id(const sl_agent_t *agent)
{
    return agent->id;
}

uint64_t sl_agent_node_epoch(const sl_agent_t *agent)
{
    return agent->node_epoch;
}

sl_liveness_t sl_agent_liveness(const sl_agent_t *agent)
{
    return agent->liveness;
}

const char *sl_agent_drain_target(const sl_agent_t *agent)
{
    return agent->drain_target;
}

uint64_t sl_agent_drain_epoch(const sl_agent_t *agent)
{
    return agent->drain_epoch;
}

size_t sl_agent_task_count(const sl_agent_t *agent)
{
    return agent->ntasks;
}

int sl_agent_task_at(const sl_agent_t *agent, size_t i, sl_agent_task_t *task,
                     sl_agent_task_state_t *state)
{
    if (i >= agent->ntasks) return SL_ENOENT;
    const task_t *t = &agent->tasks[i];
    if (task)
        *task = (sl_agent_task_t){t->id, (sl_task_kind_t)t->kind, t->cf, t->weight, t->trigger};
    if (state) *state = (sl_agent_task_state_t)t->have;
    return 0;
}

sl_core_t *sl_agent_maintainer_core(sl_agent_t *agent, const char *changefeed)
{
    maint_t *m = maint_find(agent, changefeed);
    return m ? m->core : NULL;
}

size_t sl_agent_maintainer_count(const sl_agent_t *agent)
{
    return agent->nmaints;
}

const char *sl_agent_maintainer_at(const sl_agent_t *agent, size_t i)
{
    return i < agent->nmaints ? agent->maints[i]->cf : NULL;
}
