/* drain.c — the drain controller (D1–D12) on top of the drain scheduler.
 *
 * One target at a time (D2). Starting a drain writes the record {target, epoch,
 * started_at, initial counts} and the target's liveness to the store before anything
 * changes (D4); a failed write changes nothing. Every start, cancel and clear grows the
 * epoch and tells every node (D5), again every heartbeat interval; a node that has not
 * acknowledged the current epoch gets no new task. A drain completes only when, for the
 * current epoch, no maintainer and no dispatcher remains on the target, every changefeed
 * has reported, and no operator involves the target (D8) — counted incrementally, so the
 * check costs O(1) per round. Until then the remaining counts are never both zero. A
 * target that leaves loses its drain (D9); a drain with nowhere to go says why (D10); a
 * target left alone goes back to Alive (L4, core.c). After a coordinator restart the
 * record is read back and the drain resumes once the nodes have reported (D4, A5). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core_int.h"

const char *sl_drain_state_name(sl_drain_state_t s)
{
    static const char *const names[] = {"none", "draining", "completed", "cancelled", "lost"};
    return (unsigned)s < 5 ? names[s] : "invalid";
}

bool sl_drain__gate_open(const sl_core_t *core, const sl_node_t *n)
{
    return !core->cfg.epoch_gate || n->acked_epoch >= core->record.epoch;
}

static void notify_all(sl_core_t *core)
{
    for (size_t i = 0; i < core->node_order.len; i++)
        sl_core__emit(core, SL_MSG_DRAIN, core->node_order.v[i], SL_NONE, 0);
    core->last_notify_ms = core->now_ms;
}

static int persist_record(sl_core_t *core, const sl_drain_record_t *rec)
{
    return core->store ? core->store->ops->save_drain(core->store, rec) : 0;
}

static int persist_liveness(sl_core_t *core, const char *node, sl_liveness_t l)
{
    if (!core->store) return 0;
    if (l == SL_ALIVE) return core->store->ops->delete_liveness(core->store, node);
    return core->store->ops->save_liveness(core->store, node, (int)l);
}

/* A new epoch: nothing reported for it yet. */
static void set_record(sl_core_t *core, const sl_drain_record_t *rec)
{
    /* the first record after a drain ended carries the epoch its end gave the cluster: what
     * GET …/drain says for it afterwards, as the "drain ended" log line does */
    if (core->nhistory && core->history[0].state != SL_DRAIN_DRAINING && !core->history[0].end_epoch)
        core->history[0].end_epoch = rec->epoch;
    if (rec->epoch != core->record.epoch) {
        core->epoch_reported = 0;
        core->epoch_remaining = 0;
    }
    core->record = *rec;
}

static sl_drain_record_t cleared_record(const sl_core_t *core)
{
    sl_drain_record_t rec = {.epoch = core->record.epoch + 1};
    return rec;
}

static void counts_of(const sl_node_t *n, sl_drain_counts_t *out);

/* The latest drain of node `id` in the history, or NULL. */
static sl_drain_past_t *past_of(sl_core_t *core, const char *id)
{
    for (size_t i = 0; id && i < core->nhistory; i++)
        if (!strcmp(core->history[i].target, id)) return &core->history[i];
    return NULL;
}

/* Notes how the drain of node `id` stands, at the front of the history: one entry per
 * node (its latest drain); the oldest node falls off a full history. */
static void note_past(sl_core_t *core, const char *id, sl_drain_state_t state,
                      const sl_drain_record_t *rec, const char *why)
{
    if (!core->history && !(core->history = calloc(SL_DRAIN_HISTORY, sizeof *core->history)))
        return; /* out of memory: the drain goes on; only its history is not kept */
    size_t i = 0;
    while (i < core->nhistory && strcmp(core->history[i].target, id)) i++;
    if (i == core->nhistory) {
        if (core->nhistory < SL_DRAIN_HISTORY)
            core->nhistory++;
        else
            i = SL_DRAIN_HISTORY - 1;
    }
    memmove(&core->history[1], &core->history[0], i * sizeof core->history[0]);
    sl_drain_past_t *p = &core->history[0];
    snprintf(p->target, sizeof p->target, "%s", id);
    p->state = state;
    p->record = *rec;
    snprintf(p->why, sizeof p->why, "%s", why ? why : "");
    p->ended_ms = state == SL_DRAIN_DRAINING ? 0 : core->now_ms;
    p->end_epoch = 0;
    /* what it left on the node, kept: the node may come back as a new process with new
     * tasks, which are not what this drain left (D11) */
    sl_drain_counts_t c = {0};
    sl_node_t *n = sl_core__node(core, id, NULL);
    if (n && state != SL_DRAIN_DRAINING && state != SL_DRAIN_COMPLETED) counts_of(n, &c);
    p->join_seq = n ? n->join_seq : 0;
    p->left_maintainers = c.maintainers;
    p->left_dispatchers = c.dispatchers;
}

void sl_drain__ended(sl_core_t *core, sl_drain_state_t how, const char *why)
{
    if (core->drain_target == SL_NONE) return;
    note_past(core, core->nodes[core->drain_target].id, how, &core->record, why);
    bool controlled = core->drain_controlled;
    sl_core__drain_clear(core);
    if (!controlled) return;
    sl_drain_record_t rec = cleared_record(core);
    /* best effort: a record that stays behind names a target that is gone or back to
     * Alive, and recovery clears it (D4) */
    persist_record(core, &rec);
    set_record(core, &rec);
    snprintf(core->drain_blocked, sizeof core->drain_blocked, "%s", why ? why : "");
    notify_all(core);
}

/* ---- D1 / D3 ----------------------------------------------------------------------- */

static void counts_of(const sl_node_t *n, sl_drain_counts_t *out)
{
    out->maintainers = n->count[SL_TASK_MAINTAINER];
    out->dispatchers = n->count[SL_TASK_DISPATCHER] + n->reported_dispatchers;
}

int sl_core_drain_start(sl_core_t *core, const char *id, uint64_t now_ms, sl_drain_counts_t *out)
{
    sl_core__changed(core);
    sl_drain_counts_t scratch;
    if (!out) out = &scratch;
    memset(out, 0, sizeof *out);
    if (now_ms > core->now_ms) core->now_ms = now_ms;
    if (core->bootstrapping) return SL_ENOTREADY;
    int32_t slot;
    sl_node_t *n = sl_core__node(core, id, &slot);
    if (!n) return SL_ENOENT;
    if (slot == core->drain_target && core->drain_controlled) { /* idempotent */
        counts_of(n, out);
        return 0;
    }
    sl_liveness_t l = (sl_liveness_t)atomic_load(&n->liveness);
    if (l == SL_STOPPING) return SL_ESTOPPING;
    if (core->drain_target != SL_NONE || l != SL_ALIVE) return SL_EBUSY; /* D2 */
    if (core->cfg.coordinator_node[0] && !strcmp(core->cfg.coordinator_node, n->id))
        return SL_ECOORDINATOR;
    uint32_t alive = 0;
    for (size_t i = 0; i < core->node_order.len; i++)
        alive += atomic_load(&core->nodes[core->node_order.v[i]].liveness) == SL_ALIVE;
    if (alive < 2) return SL_ENOTENOUGH;

    counts_of(n, out);
    sl_drain_record_t old = core->record;
    sl_drain_record_t rec = {.epoch = old.epoch + 1,
                             .started_at_ms = core->now_ms,
                             .initial_maintainers = out->maintainers,
                             .initial_dispatchers = out->dispatchers};
    snprintf(rec.target, sizeof rec.target, "%s", n->id);
    bool empty = !out->maintainers && !out->dispatchers && !n->ops_from && !n->ops_to;
    if (empty) {
        /* D1: nothing to move — straight to Stopping, through Draining (L1) */
        sl_drain_record_t done = {.epoch = rec.epoch};
        if (persist_liveness(core, n->id, SL_STOPPING) != 0) return SL_EIO;
        if (persist_record(core, &done) != 0) {
            persist_liveness(core, n->id, SL_ALIVE);
            return SL_EIO;
        }
        int e = SL_ALIVE;
        atomic_compare_exchange_strong(&n->liveness, &e, SL_DRAINING);
        e = SL_DRAINING;
        atomic_compare_exchange_strong(&n->liveness, &e, SL_STOPPING);
        note_past(core, n->id, SL_DRAIN_COMPLETED, &rec, NULL);
        set_record(core, &done);
        notify_all(core);
        out->completed = 1;
        return 0;
    }
    if (persist_record(core, &rec) != 0) return SL_EIO; /* D4: before anything changes */
    if (persist_liveness(core, n->id, SL_DRAINING) != 0) {
        persist_record(core, &old);
        return SL_EIO;
    }
    set_record(core, &rec); /* D5: the new epoch gates placement from the first round on */
    core->drain_controlled = true; /* so that first round already speaks as the controller */
    int rc = sl_core_drain_mark(core, n->id); /* Alive→Draining by CAS; a round runs */
    if (rc) {
        core->drain_controlled = false;
        set_record(core, &old);
        persist_record(core, &old);
        persist_liveness(core, n->id, l);
        return rc;
    }
    note_past(core, n->id, SL_DRAIN_DRAINING, &rec, NULL);
    notify_all(core);
    return 0;
}

int sl_core_drain_cancel(sl_core_t *core, const char *id, uint64_t now_ms)
{
    sl_core__changed(core);
    if (now_ms > core->now_ms) core->now_ms = now_ms;
    if (core->bootstrapping) return SL_ENOTREADY;
    int32_t slot;
    sl_node_t *n = sl_core__node(core, id, &slot);
    const sl_drain_past_t *past = past_of(core, id);
    bool completed = past && past->state == SL_DRAIN_COMPLETED && (!n || n->join_seq == past->join_seq);
    if (!n) return completed ? SL_ESTOPPING : SL_ENOENT;
    if (slot != core->drain_target || !core->drain_controlled) {
        if (completed || atomic_load(&n->liveness) == SL_STOPPING) return SL_ESTOPPING;
        return SL_EINVAL;
    }
    sl_drain_record_t old = core->record, rec = cleared_record(core);
    if (persist_record(core, &rec) != 0) return SL_EIO;
    if (persist_liveness(core, n->id, SL_ALIVE) != 0) {
        persist_record(core, &old);
        return SL_EIO;
    }
    int e = SL_DRAINING; /* D3: the sanctioned way back to Alive */
    atomic_compare_exchange_strong(&n->liveness, &e, SL_ALIVE);
    /* an operator's cancel needs no reason given back */
    note_past(core, n->id, SL_DRAIN_CANCELLED, &core->record, NULL);
    sl_core__drain_clear(core); /* moves already running finish; no new one starts */
    set_record(core, &rec);
    notify_all(core);
    sl_sched__round(core);
    return 0;
}

/* ---- D8 --------------------------------------------------------------------------------- */

void sl_drain__after_round(sl_core_t *core)
{
    if (core->drain_target == SL_NONE || !core->drain_controlled) return;
    sl_node_t *n = &core->nodes[core->drain_target];
    if (atomic_load(&n->liveness) != SL_DRAINING) return;
    if (n->count[SL_TASK_MAINTAINER] || n->count[SL_TASK_DISPATCHER] || n->ops_from || n->ops_to)
        return;
    if (core->epoch_reported < core->maintained_cfs) {
        /* rewritten on every report (they call this), so the count is never stale */
        snprintf(core->drain_blocked, sizeof core->drain_blocked,
                 "waiting for changefeeds to report for epoch %llu: %u of %u have",
                 (unsigned long long)core->record.epoch, core->epoch_reported,
                 core->maintained_cfs);
        return;
    }
    if (core->epoch_remaining) {
        /* the maintainers move their dispatchers off (D6): progress, not a block; the
         * remaining count says how far they are */
        if (!strncmp(core->drain_blocked, "waiting for changefeeds", 23)) core->drain_blocked[0] = 0;
        return;
    }
    if (persist_liveness(core, n->id, SL_STOPPING) != 0) {
        snprintf(core->drain_blocked, sizeof core->drain_blocked,
                 "the store refused to record the target as Stopping; retrying");
        return;
    }
    int e = SL_DRAINING;
    atomic_compare_exchange_strong(&n->liveness, &e, SL_STOPPING);
    sl_drain__ended(core, SL_DRAIN_COMPLETED, NULL);
}

/* ---- D5 / D6 / A5 ---------------------------------------------------------------------- */

int sl_core_heartbeat(sl_core_t *core, const char *node, uint64_t acked_epoch, uint64_t now_ms)
{
    sl_core__changed(core);
    if (now_ms > core->now_ms) core->now_ms = now_ms;
    sl_node_t *n = sl_core__node(core, node, NULL);
    if (!n) return SL_ENOENT;
    n->last_seen_ms = core->now_ms;
    if (acked_epoch <= n->acked_epoch || acked_epoch > core->record.epoch)
        return 0; /* stale, or an epoch this coordinator never announced */
    bool was_open = sl_drain__gate_open(core, n);
    n->acked_epoch = acked_epoch;
    if (!was_open && sl_drain__gate_open(core, n)) sl_sched__round(core); /* it may take tasks */
    return 0;
}

static bool entry_valid(const sl_core_t *core, const sl_cf_node_t *e)
{
    const sl_node_t *n = &core->nodes[e->node];
    return n->live && n->join_seq == e->join_seq;
}

static void drop_by_node(sl_core_t *core, sl_cf_t *r)
{
    for (size_t i = 0; i < r->nby_node; i++)
        if (entry_valid(core, &r->by_node[i]))
            core->nodes[r->by_node[i].node].reported_dispatchers -= r->by_node[i].count;
    free(r->by_node);
    r->by_node = NULL;
    r->nby_node = 0;
}

int sl_core_changefeed_report(sl_core_t *core, const char *changefeed, uint64_t epoch,
                              uint32_t remaining_on_target, const sl_node_count_t *by_node,
                              size_t n, uint64_t now_ms)
{
    sl_core__changed(core);
    if (now_ms > core->now_ms) core->now_ms = now_ms;
    int32_t c = sl_map_get(&core->changefeed_map, changefeed ? changefeed : "");
    if (c < 0) return SL_ENOENT;
    if (n && !by_node) return SL_EINVAL;
    sl_cf_t *r = &core->cf_reports[c];
    sl_cf_node_t *entries = n ? calloc(n, sizeof *entries) : NULL;
    if (n && !entries) return SL_ENOMEM;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t slot;
        sl_node_t *node = sl_core__node(core, by_node[i].node, &slot);
        if (!node || !by_node[i].count) continue; /* a node the coordinator no longer knows */
        entries[k++] = (sl_cf_node_t){.node = slot, .join_seq = node->join_seq, .count = by_node[i].count};
    }
    drop_by_node(core, r);
    r->by_node = entries;
    r->nby_node = k;
    for (size_t i = 0; i < k; i++) core->nodes[entries[i].node].reported_dispatchers += entries[i].count;
    if (epoch == core->record.epoch && epoch && r->maintained) {
        if (r->report_epoch != epoch) {
            core->epoch_reported++;
            core->epoch_remaining += remaining_on_target;
        } else {
            core->epoch_remaining = core->epoch_remaining - r->remaining + remaining_on_target;
        }
        r->report_epoch = epoch;
        r->remaining = remaining_on_target;
        /* the count at the start is what the maintainers had reported by then; reports that
         * arrive after it (a drain started right after placement) can show more. The most
         * seen is the truer start, and progress is measured against it. */
        if (core->drain_target != SL_NONE && core->drain_controlled) {
            uint64_t seen = core->nodes[core->drain_target].count[SL_TASK_DISPATCHER] +
                            core->epoch_remaining;
            if (seen > core->record.initial_dispatchers)
                core->record.initial_dispatchers = seen > UINT32_MAX ? UINT32_MAX : (uint32_t)seen;
        }
        sl_drain__after_round(core); /* this report may be the last one D8 waits for */
    }
    return 0;
}

size_t sl_core_changefeed_nodes(sl_core_t *core, const char *changefeed)
{
    int32_t c = sl_map_get(&core->changefeed_map, changefeed ? changefeed : "");
    if (c < 0) return 0;
    return core->cf_reports[c].nby_node;
}

int sl_core_changefeed_node_at(sl_core_t *core, const char *changefeed, size_t i,
                               sl_node_count_t *out)
{
    int32_t c = sl_map_get(&core->changefeed_map, changefeed ? changefeed : "");
    if (c < 0 || i >= core->cf_reports[c].nby_node) return SL_ENOENT;
    const sl_cf_node_t *e = &core->cf_reports[c].by_node[i];
    if (!entry_valid(core, e)) return SL_ENOENT; /* that node left */
    out->node = core->nodes[e->node].id;
    out->count = e->count;
    return 0;
}

void sl_drain__on_task_delete(sl_core_t *core, int32_t t)
{
    sl_task_t *task = &core->tasks[t];
    if (task->kind != SL_TASK_MAINTAINER) return;
    sl_cf_t *r = &core->cf_reports[task->changefeed];
    if (!r->maintained) return;
    r->maintained = false;
    core->maintained_cfs--;
    if (core->record.epoch && r->report_epoch == core->record.epoch) {
        core->epoch_reported--;
        core->epoch_remaining -= r->remaining;
    }
    r->report_epoch = 0;
    r->remaining = 0;
    drop_by_node(core, r); /* its dispatchers go with it */
}

void sl_drain__on_join(sl_core_t *core, int32_t slot)
{
    sl_node_t *n = &core->nodes[slot];
    n->acked_epoch = 0;
    for (size_t i = 0; i < core->nrecovered_stopping; i++) {
        if (!strcmp(core->recovered_stopping[i], n->id)) { /* D4: it was Stopping */
            int e = SL_ALIVE;
            atomic_compare_exchange_strong(&n->liveness, &e, SL_STOPPING);
        }
    }
    if (core->record.epoch) sl_core__emit(core, SL_MSG_DRAIN, slot, SL_NONE, 0);
}

void sl_drain__on_leave(sl_core_t *core, int32_t slot)
{
    sl_node_t *n = &core->nodes[slot];
    if (core->store) core->store->ops->delete_liveness(core->store, n->id); /* L3 */
    if (slot == core->drain_target)
        sl_drain__ended(core, SL_DRAIN_LOST, "the target left the cluster (D9)");
}

/* ---- time: dead nodes, notifications, the end of bootstrap ---------------------------- */

static void finish_bootstrap(sl_core_t *core)
{
    core->bootstrapping = false;
    sl_drain_record_t rec = core->recovered;
    if (rec.target[0]) {
        int32_t slot;
        sl_node_t *n = sl_core__node(core, rec.target, &slot);
        int e = SL_ALIVE;
        if (n && atomic_compare_exchange_strong(&n->liveness, &e, SL_DRAINING)) {
            core->drain_target = slot; /* D4: the drain resumes, same epoch */
            core->drain_controlled = true;
            core->drain_queue.len = core->drain_cursor = 0;
            core->drain_order_dirty = true;
            set_record(core, &rec);
            note_past(core, rec.target, SL_DRAIN_DRAINING, &rec, NULL);
        } else {
            /* the target vanished meanwhile: its record is cleared */
            note_past(core, rec.target, SL_DRAIN_LOST, &rec,
                           "the target did not come back after the coordinator restarted (D9)");
            sl_drain_record_t cleared = {.epoch = rec.epoch + 1};
            persist_record(core, &cleared);
            set_record(core, &cleared);
        }
        notify_all(core);
    }
    for (size_t i = 0; i < core->nrecovered_stopping; i++) free(core->recovered_stopping[i]);
    free(core->recovered_stopping);
    core->recovered_stopping = NULL;
    core->nrecovered_stopping = 0;
}

void sl_drain__tick(sl_core_t *core)
{
    if (core->bootstrapping && core->now_ms >= core->bootstrap_until_ms) finish_bootstrap(core);
    if (core->cfg.node_timeout_ms) {
        /* A5: silent nodes are dead. Ids are copied first: leaving frees them. */
        char dead[16][SL_ID_MAX];
        size_t ndead;
        do {
            ndead = 0;
            for (size_t i = 0; i < core->node_order.len && ndead < 16; i++) {
                sl_node_t *n = &core->nodes[core->node_order.v[i]];
                if (n->last_seen_ms + core->cfg.node_timeout_ms <= core->now_ms)
                    snprintf(dead[ndead++], SL_ID_MAX, "%s", n->id);
            }
            for (size_t i = 0; i < ndead; i++) sl_core_node_leave(core, dead[i]);
        } while (ndead == 16);
    }
    if (core->cfg.heartbeat_interval_ms && core->record.epoch &&
        core->now_ms >= core->last_notify_ms + core->cfg.heartbeat_interval_ms)
        notify_all(core); /* D5: again every heartbeat interval */
}

/* ---- D4 recovery ------------------------------------------------------------------------ */

void sl_core_set_store(sl_core_t *core, sl_store_t *store)
{
    sl_core__changed(core);
    core->store = store;
}

static int collect_stopping(void *arg, const char *node, int liveness)
{
    sl_core_t *core = arg;
    if (liveness != SL_STOPPING) return 0;
    char **v = realloc(core->recovered_stopping, (core->nrecovered_stopping + 1) * sizeof *v);
    if (!v) return SL_ENOMEM;
    core->recovered_stopping = v;
    if (!(v[core->nrecovered_stopping] = strdup(node))) return SL_ENOMEM;
    core->nrecovered_stopping++;
    return 0;
}

int sl_core_recover(sl_core_t *core, uint64_t now_ms)
{
    sl_core__changed(core);
    if (!core->store) return SL_EINVAL;
    if (now_ms > core->now_ms) core->now_ms = now_ms;
    sl_drain_record_t rec = {0};
    int rc = core->store->ops->load_drain(core->store, &rec);
    if (rc && rc != SL_ENOENT) return rc;
    rc = core->store->ops->list_liveness(core->store, collect_stopping, core);
    if (rc) return rc;
    core->recovered = rec;
    /* nodes that reconnect are told the record as it was stored — target and epoch — so
     * what maintainers report meanwhile is about the right target; the target's liveness
     * and the drain itself come back when bootstrap ends */
    set_record(core, &rec);
    uint64_t wait = core->cfg.bootstrap_ms ? core->cfg.bootstrap_ms : core->cfg.node_timeout_ms;
    core->bootstrapping = true;
    core->bootstrap_until_ms = core->now_ms + wait;
    for (size_t i = 0; i < core->node_order.len; i++) sl_drain__on_join(core, core->node_order.v[i]);
    return 0;
}

void sl_core_node_fresh(sl_core_t *core, const char *id)
{
    sl_core__changed(core);
    size_t keep = 0;
    int found = 0;
    for (size_t i = 0; i < core->nrecovered_stopping; i++) {
        if (strcmp(core->recovered_stopping[i], id) == 0) {
            free(core->recovered_stopping[i]);
            found = 1;
        } else {
            core->recovered_stopping[keep++] = core->recovered_stopping[i];
        }
    }
    core->nrecovered_stopping = keep;
    if (found && core->store) core->store->ops->delete_liveness(core->store, id);
}

int sl_core_bootstrapping(sl_core_t *core)
{
    return core->bootstrapping;
}

int sl_core_bootstrap_info(sl_core_t *core, uint64_t now_ms, uint64_t *left_ms,
                           const char **drain_target, uint64_t *drain_epoch)
{
    if (!core->bootstrapping) return 0;
    *left_ms = core->bootstrap_until_ms > now_ms ? core->bootstrap_until_ms - now_ms : 0;
    *drain_target = core->recovered.target;
    *drain_epoch = core->recovered.epoch;
    return 1;
}



/* ---- D11 / D12 -------------------------------------------------------------------------- */

/* What a changefeed still has on the target: its report for this epoch, or, before it
 * reported, what it last said it had there. */
static uint32_t cf_remaining(const sl_core_t *core, const sl_cf_t *r, int32_t target)
{
    if (core->record.epoch && r->report_epoch == core->record.epoch) return r->remaining;
    for (size_t i = 0; i < r->nby_node; i++)
        if (r->by_node[i].node == target && entry_valid(core, &r->by_node[i]))
            return r->by_node[i].count;
    return 0;
}

/* any_process: the latest drain of the id, also when a later process joined under it
 * since (what the cluster's history says); otherwise only the current process's. */
static int drain_status(sl_core_t *core, const char *id, uint64_t now_ms, bool any_process,
                        sl_drain_status_t *out);

int sl_core_drain_status(sl_core_t *core, const char *id, uint64_t now_ms, sl_drain_status_t *out)
{
    return drain_status(core, id, now_ms, false, out);
}

const char *sl_core_drain_last(sl_core_t *core, uint64_t now_ms, sl_drain_status_t *out)
{
    for (size_t i = 0; i < core->nhistory; i++) {
        const char *id = core->history[i].target;
        if (core->history[i].state != SL_DRAIN_DRAINING &&
            drain_status(core, id, now_ms, true, out) == 0)
            return id;
    }
    return NULL;
}

static int drain_status(sl_core_t *core, const char *id, uint64_t now_ms, bool any_process,
                        sl_drain_status_t *out)
{
    if (now_ms > core->now_ms) core->now_ms = now_ms;
    memset(out, 0, sizeof *out);
    out->blocked = "";
    out->left_seconds = -1;
    out->epoch = core->record.epoch;
    bool running = core->drain_target != SL_NONE && core->drain_controlled;
    out->is_draining = running;
    out->target = running ? core->nodes[core->drain_target].id : NULL;
    int32_t slot;
    sl_node_t *n = sl_core__node(core, id, &slot);
    const sl_drain_record_t *rec;
    const sl_drain_past_t *past = NULL;
    if (running && slot == core->drain_target) {
        out->state = SL_DRAIN_DRAINING;
        rec = &core->record;
        out->remaining_maintainers = n->count[SL_TASK_MAINTAINER];
        uint64_t rd = n->count[SL_TASK_DISPATCHER];
        for (size_t c = 0; c < core->nchangefeeds; c++)
            if (core->cf_reports[c].maintained) rd += cf_remaining(core, &core->cf_reports[c], slot);
        out->remaining_dispatchers = rd > UINT32_MAX ? UINT32_MAX : (uint32_t)rd;
        /* D8: before completion the answer is never "nothing left" */
        if (!out->remaining_maintainers && !out->remaining_dispatchers) out->remaining_dispatchers = 1;
        out->blocked = core->drain_blocked;
    } else if ((past = past_of(core, id)) && past->state != SL_DRAIN_NONE &&
               (any_process || past->state != SL_DRAIN_COMPLETED || !n ||
                n->join_seq == past->join_seq)) {
        /* (a new process under a drained id — Alive, taking work — is not "completed": that
         * would read as a node safe to shut down. A lost or cancelled drain is still said:
         * a watch that polls after the target came back must learn it was lost, D9.) */
        out->state = past->state;
        rec = &past->record;
        out->remaining_maintainers = past->left_maintainers;
        out->remaining_dispatchers = past->left_dispatchers;
        out->blocked = past->why; /* "the target left the cluster (D9)", L4, … */
    } else if (n) {
        out->state = SL_DRAIN_NONE;
        return 0;
    } else {
        return SL_ENOENT;
    }
    if (past) out->epoch = past->end_epoch ? past->end_epoch : rec->epoch;
    out->started_at_ms = rec->started_at_ms;
    out->initial_maintainers = rec->initial_maintainers;
    out->initial_dispatchers = rec->initial_dispatchers;
    double total = (double)rec->initial_maintainers + rec->initial_dispatchers;
    double left = (double)out->remaining_maintainers + out->remaining_dispatchers;
    if (out->state == SL_DRAIN_COMPLETED) {
        out->progress = 1;
    } else if (total > 0) {
        out->progress = left >= total ? 0 : 1 - left / total;
        if (out->state == SL_DRAIN_DRAINING && out->progress > 0.999) out->progress = 0.999;
    }
    /* an ended drain's speed is over its own duration: it does not decay afterwards */
    uint64_t end = past && past->ended_ms ? past->ended_ms : core->now_ms;
    double elapsed = end > rec->started_at_ms ? (double)(end - rec->started_at_ms) / 1000.0 : 0;
    double moved = total > left ? total - left : 0;
    out->speed = elapsed > 0 ? moved / elapsed : 0;
    if (out->state == SL_DRAIN_DRAINING && out->speed > 0) out->left_seconds = left / out->speed;
    if (out->state == SL_DRAIN_COMPLETED) out->left_seconds = 0;
    return 0;
}

size_t sl_core_drain_remaining_count(sl_core_t *core)
{
    core->nremaining = 0;
    if (core->drain_target == SL_NONE || !core->drain_controlled) return 0;
    for (size_t c = 0; c < core->nchangefeeds; c++) {
        if (!core->cf_reports[c].maintained) continue;
        uint32_t r = cf_remaining(core, &core->cf_reports[c], core->drain_target);
        if (!r) continue;
        if (core->nremaining == core->remaining_cap) {
            size_t cap = core->remaining_cap ? core->remaining_cap * 2 : 16;
            sl_node_count_t *v = realloc(core->remaining, cap * sizeof *v);
            if (!v) break;
            core->remaining = v;
            core->remaining_cap = cap;
        }
        core->remaining[core->nremaining++] = (sl_node_count_t){.node = core->changefeeds[c], .count = r};
    }
    return core->nremaining;
}

int sl_core_drain_remaining_at(sl_core_t *core, size_t i, const char **changefeed, uint32_t *n)
{
    if (i >= core->nremaining) return SL_ENOENT;
    *changefeed = core->remaining[i].node;
    *n = core->remaining[i].count;
    return 0;
}

int sl_core_drain_plan(sl_core_t *core, const char *id, sl_plan_move_t *out, size_t max, size_t *n)
{
    *n = 0;
    int32_t slot;
    sl_node_t *node = sl_core__node(core, id, &slot);
    if (!node) return SL_ENOENT;
    size_t count = node->count[0] + node->count[1];
    if (!count) return 0;
    int rc = sl_sched__ensure_scratch(core, count);
    if (rc) return rc;
    size_t k = 0;
    for (int32_t t = node->head; t != SL_NONE; t = core->tasks[t].next)
        sl_sched__add_candidate(core, k++, t);
    core->view_exclude = slot; /* the node's own tasks do not stay on it */
    sl_sched__build_view(core);
    core->view_exclude = SL_NONE;
    sl_sched__decide(core, SL_REASON_DRAIN, k, true);
    for (size_t i = 0; i < k && *n < max; i++) {
        int32_t dest = core->scratch_dest[i];
        out[(*n)++] = (sl_plan_move_t){.task = core->tasks[core->scratch_task_slots[i]].id,
                                       .to = dest == SL_NONE ? NULL : core->nodes[dest].id};
    }
    return 0;
}

void sl_drain__free(sl_core_t *core)
{
    for (size_t c = 0; c < core->nchangefeeds; c++) free(core->cf_reports[c].by_node);
    for (size_t i = 0; i < core->nrecovered_stopping; i++) free(core->recovered_stopping[i]);
    free(core->recovered_stopping);
    free(core->remaining);
}
