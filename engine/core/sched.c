/* sched.c — the three schedulers, always in the order basic → drain → balance (S1).
 *
 * Basic places absent tasks (S2), drain moves stably working tasks off the drain target
 * (S4), balance evens load between schedulable nodes and pauses while a drain runs and
 * for a cooldown after it (S3). Each reads the per-node counters and lists the events keep
 * up to date, so a round costs what it does, not the size of the cluster (S5).
 *
 * Every policy decision is checked here (P3): a node that is unknown or not schedulable,
 * or a malformed answer, is refused, counted with the policy's name and message, and the
 * built-in least-loaded policy decides that task instead. Nothing is ever placed on a
 * node that is not Alive (L2). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core_int.h"

int sl_sched__ensure_scratch(sl_core_t *core, size_t n)
{
    if (n <= core->scratch_cap) return 0;
    size_t cap = core->scratch_cap ? core->scratch_cap : 64;
    while (cap < n) cap *= 2;
    sl_place_task_t *tasks = realloc(core->scratch_tasks, cap * sizeof *tasks);
    if (!tasks) return SL_ENOMEM;
    core->scratch_tasks = tasks;
    int32_t *slots = realloc(core->scratch_task_slots, cap * sizeof *slots);
    if (!slots) return SL_ENOMEM;
    core->scratch_task_slots = slots;
    sl_decision_t *out = realloc(core->scratch_out, cap * sizeof *out);
    if (!out) return SL_ENOMEM;
    core->scratch_out = out;
    int32_t *dest = realloc(core->scratch_dest, cap * sizeof *dest);
    if (!dest) return SL_ENOMEM;
    core->scratch_dest = dest;
    core->scratch_cap = cap;
    return 0;
}

/* The schedulable nodes as policies see them, in join order. Returns their number. */
size_t sl_sched__build_view(sl_core_t *core)
{
    size_t n = core->node_order.len;
    if (core->view_cap < core->nodes_cap) {
        sl_place_node_t *view = realloc(core->view, core->nodes_cap * sizeof *view);
        if (!view) return 0;
        core->view = view;
        int32_t *vs = realloc(core->view_slot, core->nodes_cap * sizeof *vs);
        if (!vs) return 0;
        core->view_slot = vs;
        int32_t *vi = realloc(core->view_index, core->nodes_cap * sizeof *vi);
        if (!vi) return 0;
        core->view_index = vi;
        int64_t *vp = realloc(core->view_proj, core->nodes_cap * sizeof *vp);
        if (!vp) return 0;
        core->view_proj = vp;
        core->view_cap = core->nodes_cap;
    }
    core->view_len = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t s = core->node_order.v[i];
        sl_node_t *node = &core->nodes[s];
        core->view_index[s] = SL_NONE;
        if (s == core->view_exclude) continue;
        if (atomic_load(&node->liveness) != SL_ALIVE) continue; /* L2 */
        if (node->cordoned) continue;
        if (!sl_drain__gate_open(core, node)) continue;          /* D5 */
        size_t k = core->view_len++;
        core->view[k] = (sl_place_node_t){.id = node->id,
                                          .maintainers = node->count[SL_TASK_MAINTAINER],
                                          .dispatchers = node->count[SL_TASK_DISPATCHER] +
                                                         node->reported_dispatchers,
                                          .inflight = node->ops_to,
                                          .labels = node->labels,
                                          .nlabels = node->nlabels};
        core->view_slot[k] = s;
        core->view_index[s] = (int32_t)k;
    }
    return core->view_len;
}

void sl_sched__add_candidate(sl_core_t *core, size_t i, int32_t t)
{
    sl_task_t *task = &core->tasks[t];
    core->scratch_task_slots[i] = t;
    core->scratch_tasks[i] = (sl_place_task_t){
        .id = task->id,
        .kind = (sl_task_kind_t)task->kind,
        .changefeed = core->changefeeds[task->changefeed],
        .from = task->node == SL_NONE ? NULL : core->nodes[task->node].id,
        .weight = task->weight,
    };
}

static void refuse(sl_core_t *core, sl_policy_t *p, uint64_t n, const char *task,
                   const char *what)
{
    core->stats.refusals += n;
    if (task)
        sl_core__refuse(core, "policy %s (%s): task %s: %s", p->name, p->file, task, what);
    else
        sl_core__refuse(core, "policy %s (%s): %s", p->name, p->file, what);
}

/* A refusal in the policy's own words ("FILE:LINE: what"), framed so that the policy and
 * its file are named once: "policy NAME (FILE:LINE): what". One line: the Lua traceback
 * that may follow says nothing more in a list of refusals. */
static void refuse_said(sl_core_t *core, sl_policy_t *p, uint64_t n, const char *task,
                        const char *said)
{
    char msg[SL_ERRMSG_MAX];
    sl_policy_message(p, task, said, msg, sizeof msg);
    msg[strcspn(msg, "\n")] = '\0';
    core->stats.refusals += n;
    sl_core__refuse(core, "%s", msg);
}

/* Acts on one decision. Returns 1 if an operator started. */
static int act(sl_core_t *core, sl_reason_t reason, int32_t t, int32_t dest)
{
    sl_task_t *task = &core->tasks[t];
    if (reason == SL_REASON_BASIC)
        return sl_op__create(core, SL_OP_ADD, reason, t, SL_NONE, dest) == 0;
    if (dest == task->node) return 0; /* staying put is leaving it out */
    if (reason == SL_REASON_DRAIN && sl_op__drain_in_progress(core) >= core->cfg.drain_batch_size)
        return 0;
    /* balance moves were checked to even out load before they got here (balance_kind) */
    return sl_op__create(core, SL_OP_MOVE, reason, t, task->node, dest) == 0;
}

/* Resolves a node id a policy returned. Returns the node slot, or SL_NONE after refusing
 * (counted unless `dry`). */
static int32_t check_node(sl_core_t *core, sl_policy_t *p, const char *task, const char *node,
                          bool dry)
{
    char what[SL_ERRMSG_MAX];
    int32_t slot;
    sl_node_t *n = sl_core__node(core, node, &slot);
    if (!n) {
        snprintf(what, sizeof what, "returned node \"%.*s\", which is unknown", SL_ID_MAX, node);
    } else if (core->view_index[slot] == SL_NONE) {
        sl_liveness_t l = (sl_liveness_t)atomic_load(&n->liveness);
        snprintf(what, sizeof what, "returned node \"%s\", which is %s", n->id,
                 l == SL_DRAINING   ? "Draining"
                 : l == SL_STOPPING ? "Stopping"
                                    : "not schedulable (it has not acknowledged the epoch)");
    } else {
        return slot;
    }
    if (!dry) refuse(core, p, 1, task, what);
    return SL_NONE;
}

/* A decision for task i: the view counts it at once, so that later decisions of the same
 * batch (the fallback's included) see it (S4). */
static void plan(sl_core_t *core, size_t i, int32_t dest)
{
    core->scratch_dest[i] = dest;
    core->view[core->view_index[dest]].inflight++;
}

/* A policy may leave tasks waiting (P1), but it must not stall the cluster: an answer
 * that placed nothing and named only tasks that were not asked for is garbage, and a
 * policy that places nothing for SL_STARVED_BATCHES batches in a row while nodes are free
 * has its waiting tasks decided by the built-in policy. Either way it is counted as a
 * refusal, so a drain completes under any policy (D8, P3). */
#define SL_STARVED_BATCHES 3

static void starvation_guard(sl_core_t *core, sl_policy_t *p, size_t n, uint8_t *refused,
                             unsigned unasked, bool dry)
{
    size_t placed = 0, waiting = 0;
    for (size_t i = 0; i < n; i++) {
        if (core->scratch_dest[i] != SL_NONE) placed++;
        else if (!refused[i]) waiting++;
    }
    if (dry || p == core->builtin) return;
    if (placed || !waiting) {
        core->starved_batches = 0;
        return;
    }
    const char *why = NULL;
    if (unasked) {
        why = "answered only for tasks it was not asked for; the tasks asked for are decided "
              "by the built-in policy";
    } else if (++core->starved_batches >= SL_STARVED_BATCHES) {
        why = "left every task waiting for 3 batches in a row while nodes were free; the "
              "built-in policy decides them";
    }
    if (!why) return;
    core->starved_batches = 0;
    refuse(core, p, waiting, NULL, why);
    for (size_t i = 0; i < n; i++)
        if (core->scratch_dest[i] == SL_NONE) refused[i] = 1;
}

/* One batch of `n` candidates (in the scratch arrays) through the policy: one call (P1),
 * every decision checked, refused ones decided by the built-in policy (P3). Fills
 * scratch_dest[i] with a node slot or SL_NONE (left out). `dry`: a plan (D12) — nothing
 * is counted. */
void sl_sched__decide(sl_core_t *core, sl_reason_t reason, size_t n, bool dry)
{
    sl_policy_t *p = core->policy ? core->policy : core->builtin;
    sl_place_ctx_t ctx = {.reason = reason,
                          .drain_target = sl_core_drain_target(core),
                          .batch_limit = (uint32_t)n,
                          .now_ms = core->now_ms};
    sl_place_report_t rep = {0};
    for (size_t i = 0; i < n; i++) core->scratch_dest[i] = SL_NONE;
    memset(core->scratch_out, 0, n * sizeof *core->scratch_out);
    if (!dry) core->stats.policy_calls++;
    int rc = p->ops->place(p, core->scratch_tasks, n, core->view, core->view_len, &ctx,
                           core->scratch_out, &rep);
    uint8_t *refused = calloc(n ? n : 1, 1);
    sl_place_task_t *fb = malloc((n ? n : 1) * sizeof *fb);
    size_t *fb_index = malloc((n ? n : 1) * sizeof *fb_index);
    if (!refused || !fb || !fb_index) goto done;
    if (rc) {
        if (!dry) refuse_said(core, p, n, NULL, rep.message[0] ? rep.message : "place failed");
        memset(refused, 1, n);
    } else {
        if (rep.unasked && !dry) refuse_said(core, p, rep.unasked, NULL, rep.message);
        for (size_t i = 0; i < n; i++) {
            const sl_decision_t *d = &core->scratch_out[i];
            if (d->error) {
                if (!dry) refuse_said(core, p, 1, core->scratch_tasks[i].id, d->error);
                refused[i] = 1;
            } else if (d->node) {
                int32_t dest = check_node(core, p, core->scratch_tasks[i].id, d->node, dry);
                if (dest == SL_NONE) refused[i] = 1;
                else plan(core, i, dest);
            }
        }
        starvation_guard(core, p, n, refused, rep.unasked, dry);
    }
    if (p == core->builtin) goto done;
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        if (!refused[i]) continue;
        fb[m] = core->scratch_tasks[i];
        fb_index[m++] = i;
    }
    if (!m) goto done;
    if (!dry) core->stats.fallbacks += m;
    ctx.batch_limit = (uint32_t)m;
    memset(core->scratch_out, 0, m * sizeof *core->scratch_out);
    if (core->builtin->ops->place(core->builtin, fb, m, core->view, core->view_len, &ctx,
                                  core->scratch_out, &rep) == 0) {
        for (size_t k = 0; k < m; k++) {
            const char *node = core->scratch_out[k].node;
            int32_t dest = node ? check_node(core, core->builtin, fb[k].id, node, dry) : SL_NONE;
            if (dest != SL_NONE) plan(core, fb_index[k], dest);
        }
    }
done:
    free(refused);
    free(fb);
    free(fb_index);
}

static void place_batch(sl_core_t *core, sl_reason_t reason, size_t n)
{
    sl_sched__decide(core, reason, n, false);
    for (size_t i = 0; i < n; i++)
        if (core->scratch_dest[i] != SL_NONE)
            act(core, reason, core->scratch_task_slots[i], core->scratch_dest[i]);
}

/* Removals wait for operator capacity like everything else (O3). */
static void run_removals(sl_core_t *core)
{
    size_t keep = 0;
    for (size_t i = 0; i < core->remove_queue.len; i++) {
        int32_t t = core->remove_queue.v[i];
        sl_task_t *task = &core->tasks[t];
        if (!task->live || !task->remove_pending) continue;
        if (task->op != SL_NONE) continue; /* its operator queues it again when it ends */
        if (task->node == SL_NONE && sl_core__removal_needs_node(task)) {
            /* placed first (basic), stopped where it lands */
            if (!task->in_absent) sl_core__absent_push(core, t);
            core->remove_queue.v[keep++] = t;
            continue;
        }
        if (task->node == SL_NONE) {
            sl_core__task_delete(core, t);
            continue;
        }
        if (sl_op__create(core, SL_OP_REMOVE, SL_REASON_BASIC, t, task->node, SL_NONE) != 0)
            core->remove_queue.v[keep++] = t;
    }
    core->remove_queue.len = keep;
}

static void basic(sl_core_t *core)
{
    if (!core->absent) return;
    uint32_t room = sl_op__capacity(core);
    if (!room) {
        sl_core__wait(core, "%u tasks wait: %u operators in progress (max_operators)",
                      core->absent, core->ops_in_progress);
        return;
    }
    if (!sl_sched__build_view(core)) {
        sl_core__wait(core, "%u tasks wait: no schedulable node", core->absent); /* S2 */
        return;
    }
    size_t n = room < core->absent ? room : core->absent;
    if (sl_sched__ensure_scratch(core, n)) return;
    size_t i = 0;
    for (int32_t t = core->absent_head; t != SL_NONE && i < n; t = core->tasks[t].next)
        sl_sched__add_candidate(core, i++, t);
    place_batch(core, SL_REASON_BASIC, i);
}

static bool drain_candidate(const sl_core_t *core, int32_t t)
{
    const sl_task_t *task = &core->tasks[t];
    return task->live && task->node == core->drain_target && task->op == SL_NONE &&
           task->state == SL_TASK_WORKING && !task->remove_pending;
}

/* With a policy that defines drain_order, the order of the whole drain is asked once (and
 * again after a policy swap) and consumed from a queue; tasks that come back to the target
 * join its end. Without one, the target's own list is the order. */
static void drain_order_refresh(sl_core_t *core)
{
    sl_policy_t *p = core->policy ? core->policy : core->builtin;
    core->drain_order_dirty = false;
    for (size_t i = core->drain_cursor; i < core->drain_queue.len; i++)
        core->tasks[core->drain_queue.v[i]].drain_queued = false;
    core->drain_queue.len = core->drain_cursor = 0;
    if (!p->ops->drain_order) return;
    sl_node_t *target = &core->nodes[core->drain_target];
    size_t n = target->count[0] + target->count[1], k = 0;
    if (!n || sl_sched__ensure_scratch(core, n)) return;
    for (int32_t t = target->head; t != SL_NONE; t = core->tasks[t].next)
        if (drain_candidate(core, t)) sl_sched__add_candidate(core, k++, t);
    uint32_t *order = malloc((k ? k : 1) * sizeof *order);
    uint8_t *taken = calloc(k ? k : 1, 1);
    if (!order || !taken) goto done;
    size_t norder = 0;
    sl_place_report_t rep = {0};
    sl_place_ctx_t ctx = {.reason = SL_REASON_DRAIN,
                          .drain_target = target->id,
                          .batch_limit = core->cfg.drain_batch_size,
                          .now_ms = core->now_ms};
    core->stats.policy_calls++;
    if (p->ops->drain_order(p, core->scratch_tasks, k, &ctx, order, &norder, &rep) != 0) {
        refuse_said(core, p, 1, NULL, rep.message[0] ? rep.message : "drain_order failed");
        norder = 0;
    }
    for (size_t i = 0; i < norder && i < k; i++) {
        if (order[i] >= k || taken[order[i]]) continue; /* the host checks; the core trusts no one */
        taken[order[i]] = 1;
        if (sl_ivec_push(&core->drain_queue, core->scratch_task_slots[order[i]]) == 0)
            core->tasks[core->scratch_task_slots[order[i]]].drain_queued = true;
    }
    for (size_t i = 0; i < k; i++)
        if (!taken[i] && sl_ivec_push(&core->drain_queue, core->scratch_task_slots[i]) == 0)
            core->tasks[core->scratch_task_slots[i]].drain_queued = true;
done:
    free(order);
    free(taken);
}

/* D5: right after a drain starts, the first node to acknowledge the new epoch would be
 * the only destination and would take a whole batch. The drain waits until every Alive
 * node has acknowledged, or two heartbeat intervals have passed (a node that does not
 * answer by then stays gated, and the others share the work). */
static bool drain_waits_for_acks(sl_core_t *core, const sl_node_t *target)
{
    if (!core->cfg.epoch_gate || !core->drain_controlled || !core->cfg.heartbeat_interval_ms)
        return false;
    if (core->now_ms >= core->record.started_at_ms + 2 * core->cfg.heartbeat_interval_ms)
        return false;
    uint32_t alive = 0, acked = 0;
    for (size_t i = 0; i < core->node_order.len; i++) {
        const sl_node_t *n = &core->nodes[core->node_order.v[i]];
        if (n == target || atomic_load(&n->liveness) != SL_ALIVE) continue;
        alive++;
        acked += sl_drain__gate_open(core, n);
    }
    if (acked == alive) return false;
    if (!acked) /* D10 as much as D5: nothing could take a task now */
        snprintf(core->drain_blocked, sizeof core->drain_blocked,
                 "no schedulable destination: none of the %u Alive nodes has acknowledged "
                 "epoch %llu yet",
                 alive, (unsigned long long)core->record.epoch);
    else
        snprintf(core->drain_blocked, sizeof core->drain_blocked,
                 "waiting for nodes to acknowledge epoch %llu (%u of %u have)",
                 (unsigned long long)core->record.epoch, acked, alive);
    sl_core__wait(core, "drain of %s: %s", target->id, core->drain_blocked);
    return true;
}

static void drain(sl_core_t *core)
{
    if (core->drain_target == SL_NONE) return;
    sl_node_t *target = &core->nodes[core->drain_target];
    if (atomic_load(&target->liveness) != SL_DRAINING) return;
    if (core->drain_order_dirty) drain_order_refresh(core);
    uint32_t busy = sl_op__drain_in_progress(core), cap = sl_op__capacity(core);
    uint32_t room = core->cfg.drain_batch_size > busy ? core->cfg.drain_batch_size - busy : 0;
    if (cap < room) room = cap;
    if (!room || target->head == SL_NONE) return;
    if (drain_waits_for_acks(core, target)) return;
    if (!sl_sched__build_view(core)) { /* D10: say which of the reasons it is */
        uint32_t alive = 0, open = 0;
        for (size_t i = 0; i < core->node_order.len; i++) {
            const sl_node_t *n = &core->nodes[core->node_order.v[i]];
            if (n == target || atomic_load(&n->liveness) != SL_ALIVE) continue;
            alive++;
            open += !n->cordoned;
        }
        snprintf(core->drain_blocked, sizeof core->drain_blocked, "no schedulable destination%s",
                 !alive  ? ": no other node is Alive"
                 : !open ? ": every other Alive node is shutting down (cordoned)"
                         : " (no Alive node has acknowledged the current epoch yet)");
        sl_core__wait(core, "drain of %s blocked: %s", target->id, core->drain_blocked);
        return;
    }
    if (sl_sched__ensure_scratch(core, room)) return;
    size_t n = 0;
    sl_policy_t *p = core->policy ? core->policy : core->builtin;
    if (p->ops->drain_order) {
        /* consume the queue head: entries that left the target or already move are done */
        while (core->drain_cursor < core->drain_queue.len) {
            int32_t t = core->drain_queue.v[core->drain_cursor];
            if (drain_candidate(core, t)) break;
            core->tasks[t].drain_queued = false;
            core->drain_cursor++;
        }
        for (size_t i = core->drain_cursor; i < core->drain_queue.len && n < room; i++)
            if (drain_candidate(core, core->drain_queue.v[i]))
                sl_sched__add_candidate(core, n++, core->drain_queue.v[i]);
        if (core->drain_cursor == core->drain_queue.len) core->drain_queue.len = core->drain_cursor = 0;
    } else {
        /* tasks that already move sit at most drain_batch_size deep: the walk is O(batch) */
        for (int32_t t = target->head; t != SL_NONE && n < room; t = core->tasks[t].next)
            if (drain_candidate(core, t)) sl_sched__add_candidate(core, n++, t);
    }
    if (n) place_batch(core, SL_REASON_DRAIN, n);
}

/* S3 load of a node for one kind: tasks of that kind bound there, plus operators on their
 * way in, minus those on their way out (operators are not kept by kind; a core moves one
 * kind in practice: maintainers at the coordinator, dispatchers in a maintainer). */
static int64_t kind_load(const sl_node_t *n, int kind)
{
    return (int64_t)n->count[kind] + n->ops_to - n->ops_from;
}

/* S3, one kind: candidates from nodes above ceil(average) + tolerance (above the average
 * alone while some node is more than the tolerance below it), placed by the policy; a decided move is kept only if the destination stays below the origin (loads
 * projected as moves are kept), so balance converges instead of swinging back. Each kind
 * is evened on its own — what least-loaded policies place by — because a maintainer's
 * move also carries its trigger dispatcher (D7): on a mixed count, moving two maintainers
 * from an 8 to a 4 gives 4 and 8, and the next round moves them back. */
static void balance_kind(sl_core_t *core, int kind, size_t nv, uint32_t room)
{
    int64_t *proj = core->view_proj;
    int64_t total = 0;
    for (size_t k = 0; k < nv; k++) total += kind_load(&core->nodes[core->view_slot[k]], kind);
    if (total <= 0) return;
    int64_t fair = (total + (int64_t)nv - 1) / (int64_t)nv, tol = core->cfg.balance_tolerance;
    /* a node far below the fair share (one that just joined) is fed from every node above
     * it, not only from those above fair + tolerance: 5/5/5/5/0 becomes 4/4/4/4/4 */
    int64_t low = INT64_MAX;
    for (size_t k = 0; k < nv; k++) {
        int64_t l = kind_load(&core->nodes[core->view_slot[k]], kind);
        if (l < low) low = l;
    }
    int64_t over = low < fair - tol ? fair : fair + tol;
    size_t n = 0;
    for (size_t k = 0; k < nv && n < room; k++) {
        sl_node_t *node = &core->nodes[core->view_slot[k]];
        int64_t load = kind_load(node, kind);
        if (load <= over) continue;
        int64_t surplus = load - fair;
        for (int32_t t = node->head; t != SL_NONE && surplus > 0 && n < room; t = core->tasks[t].next) {
            sl_task_t *task = &core->tasks[t];
            if (task->kind != kind || task->op != SL_NONE || task->state != SL_TASK_WORKING ||
                task->remove_pending)
                continue;
            sl_sched__add_candidate(core, n++, t);
            surplus--;
        }
    }
    if (!n) return;
    sl_sched__decide(core, SL_REASON_BALANCE, n, false);
    for (size_t k = 0; k < nv; k++)
        proj[k] = kind_load(&core->nodes[core->view_slot[k]], kind);
    for (size_t i = 0; i < n; i++) {
        int32_t t = core->scratch_task_slots[i], dest = core->scratch_dest[i];
        if (dest == SL_NONE || dest == core->tasks[t].node) continue;
        int32_t o = core->view_index[core->tasks[t].node], d = core->view_index[dest];
        if (o == SL_NONE || d == SL_NONE || proj[d] + 2 > proj[o]) continue;
        proj[o]--;
        proj[d]++;
        act(core, SL_REASON_BALANCE, t, dest);
    }
}

static void balance(sl_core_t *core)
{
    if (core->drain_target != SL_NONE) return; /* S3: paused during a drain */
    if (core->drain_ended && core->now_ms < core->drain_ended_ms + core->cfg.balance_cooldown_ms)
        return; /* S3: and for a cooldown after it */
    if (core->balanced_once && core->now_ms < core->last_balance_ms + core->cfg.balance_interval_ms)
        return;
    core->balanced_once = true;
    core->last_balance_ms = core->now_ms;
    uint32_t room = sl_op__capacity(core);
    size_t nv = sl_sched__build_view(core);
    if (!room || nv < 2) return; /* S3: nothing to even out with fewer than two nodes */
    if (sl_sched__ensure_scratch(core, room)) return;
    balance_kind(core, SL_TASK_MAINTAINER, nv, room);
    room = sl_op__capacity(core);
    if (room && sl_sched__build_view(core) == nv) balance_kind(core, SL_TASK_DISPATCHER, nv, room);
}

void sl_sched__round(sl_core_t *core)
{
    core->stats.rounds++;
    core->waiting[0] = 0;
    core->drain_blocked[0] = 0;
    if (core->bootstrapping) {
        /* A5/D4: tasks may be running where no report has arrived yet; placing them now
         * could start a second copy */
        sl_core__wait(core, "bootstrapping: waiting for the nodes' reports");
        return;
    }
    run_removals(core);
    basic(core);
    drain(core);
    balance(core);
    sl_drain__after_round(core);
}
