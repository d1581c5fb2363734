/* operator.c — the operator controller (O1–O7).
 *
 * One operator per task (O1). Add: start on the destination. Move: stop on the origin,
 * then start on the destination; finished only when the destination reports the task
 * working (O2). Remove: stop on the node. Every operator is counted by its origin and its
 * destination as they were when it was created — never by the task's current binding —
 * so the global and drain limits cannot leak (O3); the destination's count is its
 * in-flight number, read in O(1) (O4). Node failures follow O5/O6; each step has a
 * timeout that doubles on every retry, and an operator retried `stuck_after` times shows
 * as stuck with its reason (O7). */
#include <stdio.h>
#include <string.h>
#include <stdlib.h>

#include "core_int.h"

uint32_t sl_op__drain_in_progress(const sl_core_t *core)
{
    if (core->drain_target == SL_NONE) return 0;
    const sl_node_t *n = &core->nodes[core->drain_target];
    return n->ops_from + n->ops_to; /* an operator never has the same origin and destination */
}

uint32_t sl_op__capacity(const sl_core_t *core)
{
    return core->ops_in_progress >= core->cfg.max_operators
               ? 0
               : core->cfg.max_operators - core->ops_in_progress;
}

static uint64_t step_timeout(const sl_core_t *core, uint32_t retries)
{
    uint64_t t = core->cfg.step_timeout_ms;
    for (uint32_t i = 0; i < retries && t < core->cfg.backoff_max_ms; i++) t *= 2;
    return t < core->cfg.backoff_max_ms ? t : core->cfg.backoff_max_ms;
}

/* Sends the message of the operator's current step and arms its timeout. */
static void send_step(sl_core_t *core, sl_op_t *op)
{
    int32_t node = op->step == SL_STEP_START ? op->to : op->from;
    op->deadline_ms = core->now_ms + step_timeout(core, op->retries);
    if (node != SL_NONE)
        sl_core__emit(core, op->step == SL_STEP_START ? SL_MSG_START : SL_MSG_STOP, node, op->task,
                      op->id);
}

/* L2: whether `to` may still be told to start a task. The schedulers only pick Alive
 * nodes, but liveness is CAS'ed from other threads and by drains that start between the
 * two steps of a move, so the operator checks again when it commits. */
static bool schedulable(const sl_core_t *core, int32_t to)
{
    return to != SL_NONE && atomic_load(&core->nodes[to].liveness) == SL_ALIVE;
}

int sl_op__create(sl_core_t *core, sl_op_type_t type, sl_reason_t reason, int32_t t, int32_t from,
                  int32_t to)
{
    sl_task_t *task = &core->tasks[t];
    if (task->op != SL_NONE) return SL_EBUSY;                    /* O1 */
    if (core->ops_in_progress >= core->cfg.max_operators) return SL_ELIMIT; /* O3 */
    if (type != SL_OP_REMOVE && !schedulable(core, to)) return SL_EINVAL; /* L2 */
    int32_t o = sl_slots_take((void **)&core->ops, &core->ops_cap, sizeof *core->ops, 16,
                              &core->op_free);
    if (o < 0) return o;
    if (sl_ivec_push(&core->op_order, o) != 0) {
        sl_ivec_push(&core->op_free, o); /* cannot fail: the slot came from this list */
        return SL_ENOMEM;
    }
    sl_op_t *op = &core->ops[o];
    *op = (sl_op_t){.id = core->next_op_id++,
                    .live = true,
                    .type = (uint8_t)type,
                    .reason = (uint8_t)reason,
                    .step = type == SL_OP_ADD ? SL_STEP_START : SL_STEP_STOP,
                    .task = t,
                    .from = from,
                    .to = to};
    task->op = o;
    if (from != SL_NONE) core->nodes[from].ops_from++;
    if (to != SL_NONE) core->nodes[to].ops_to++;
    core->ops_in_progress++;
    core->stats.ops_started++;
    if (type == SL_OP_ADD) {
        sl_core__absent_remove(core, t);
        task->state = SL_TASK_STARTING;
    } else {
        task->state = SL_TASK_STOPPING;
    }
    send_step(core, op);
    return 0;
}

static void set_from(sl_core_t *core, sl_op_t *op, int32_t from)
{
    if (op->from != SL_NONE) core->nodes[op->from].ops_from--;
    op->from = from;
}

static void set_to(sl_core_t *core, sl_op_t *op, int32_t to)
{
    if (op->to != SL_NONE) core->nodes[op->to].ops_to--;
    op->to = to;
}

/* Ends an operator, finished or abandoned; the caller has put the task where it belongs.
 * A removal that waited for this operator is queued now. */
static void op_end(sl_core_t *core, int32_t o, bool finished)
{
    sl_op_t *op = &core->ops[o];
    int32_t t = op->task;
    set_from(core, op, SL_NONE);
    set_to(core, op, SL_NONE);
    op->live = false;
    core->ops_in_progress--;
    for (size_t i = 0; i < core->op_order.len; i++) {
        if (core->op_order.v[i] == o) {
            memmove(&core->op_order.v[i], &core->op_order.v[i + 1],
                    (core->op_order.len - i - 1) * sizeof(int32_t));
            core->op_order.len--;
            break;
        }
    }
    if (finished) core->stats.ops_finished++;
    else core->stats.ops_abandoned++;
    sl_ivec_push(&core->op_free, o); /* cannot fail: the list held this slot before */
    if (t != SL_NONE && core->tasks[t].live) {
        core->tasks[t].op = SL_NONE;
        if (core->tasks[t].remove_pending) sl_ivec_push(&core->remove_queue, t);
    }
}

/* The task runs on `node` now and nowhere else. */
static void land(sl_core_t *core, int32_t t, int32_t node)
{
    sl_core__unbind(core, t);
    sl_core__bind(core, t, node);
    core->tasks[t].state = SL_TASK_WORKING;
}

static void op_finish_remove(sl_core_t *core, int32_t o)
{
    int32_t t = core->ops[o].task;
    core->tasks[t].remove_pending = false;
    op_end(core, o, true);
    sl_core__task_delete(core, t);
}

/* The origin has stopped the task (or is gone): the move goes on to its destination —
 * unless that destination left Alive while the origin was stopping (a drain of it started,
 * or it is shutting down). Then nothing runs the task and its destination must not be told
 * to start it (L2): the move is abandoned and the task is absent, to be placed on a
 * schedulable node by the basic scheduler, as when the destination fails at this point
 * (O5). */
static void move_to_start_step(sl_core_t *core, int32_t o)
{
    sl_op_t *op = &core->ops[o];
    int32_t t = op->task;
    if (!schedulable(core, op->to)) {
        op_end(core, o, false);
        sl_core__absent_push(core, t);
        return;
    }
    sl_core__unbind(core, t);
    core->tasks[t].state = SL_TASK_STARTING;
    op->step = SL_STEP_START;
    op->retries = 0;
    op->stuck = false;
    send_step(core, op);
}

bool sl_op__on_report(sl_core_t *core, int32_t node, int32_t t, sl_report_t state)
{
    uint64_t ended = core->stats.ops_finished + core->stats.ops_abandoned;
    uint32_t absent = core->absent;
    sl_task_t *task = &core->tasks[t];
    bool working = state == SL_REPORT_WORKING;
    if (task->op == SL_NONE) {
        if (task->node == SL_NONE) {
            /* A task nobody placed is running: adopt it (a coordinator rebuilding placement
             * from bootstrap reports, A5). */
            if (working) land(core, t, node);
        } else if (task->node == node) {
            if (!working) sl_core__absent_push(core, t); /* it died there: place it again */
        } else if (working) {
            sl_core__emit(core, SL_MSG_STOP, node, t, 0); /* a second copy: never two owners */
        }
        return core->absent > absent;
    }
    int32_t o = task->op;
    sl_op_t *op = &core->ops[o];
    if (!working && node == op->to && op->step == SL_STEP_START &&
        atomic_load(&core->nodes[node].liveness) != SL_ALIVE) {
        /* L5: a destination that started stopping refuses the task and says so; it does not
         * run it, so the task is placed again instead of retrying there forever */
        op_end(core, o, false);
        sl_core__absent_push(core, t);
        return true;
    }
    switch ((sl_op_type_t)op->type) {
    case SL_OP_ADD:
        if (working && node == op->to) {
            land(core, t, node);
            op_end(core, o, true);
        } else if (working) {
            sl_core__emit(core, SL_MSG_STOP, node, t, 0);
        }
        break;
    case SL_OP_MOVE:
        if (op->step == SL_STEP_STOP) {
            if (node == op->from && !working) move_to_start_step(core, o);
            else if (node != op->from && working) sl_core__emit(core, SL_MSG_STOP, node, t, 0);
        } else if (working && node == op->to) {
            land(core, t, node);
            op_end(core, o, true);
        } else if (working) {
            sl_core__emit(core, SL_MSG_STOP, node, t, 0);
        }
        break;
    case SL_OP_REMOVE:
        if (!working && node == op->from) op_finish_remove(core, o);
        else if (working && node != op->from) sl_core__emit(core, SL_MSG_STOP, node, t, 0);
        break;
    }
    /* capacity was freed or a task needs a place: the caller runs a round */
    return core->stats.ops_finished + core->stats.ops_abandoned != ended || core->absent > absent;
}

void sl_op__on_node_leave(sl_core_t *core, int32_t node)
{
    for (size_t i = 0; i < core->op_order.len;) {
        int32_t o = core->op_order.v[i];
        sl_op_t *op = &core->ops[o];
        if (op->from != node && op->to != node) {
            i++;
            continue;
        }
        int32_t t = op->task;
        switch ((sl_op_type_t)op->type) {
        case SL_OP_ADD: /* the destination is gone; the task never ran: place it again */
            op_end(core, o, false);
            sl_core__absent_push(core, t);
            break;
        case SL_OP_MOVE:
            if (op->to == node) {
                op_end(core, o, false);
                if (core->tasks[t].node == SL_NONE) {
                    sl_core__absent_push(core, t); /* O5: origin had stopped it */
                } else {
                    core->tasks[t].state = SL_TASK_WORKING; /* O5: it stays on its origin */
                    sl_core__drain_requeue(core, t);
                }
            } else if (op->step == SL_STEP_STOP) {
                set_from(core, op, SL_NONE); /* O6: the origin is gone, start it at the destination */
                move_to_start_step(core, o); /* (or abandon it there: L2) */
            } else {
                set_from(core, op, SL_NONE);
            }
            break;
        case SL_OP_REMOVE:
            if (sl_core__removal_needs_node(&core->tasks[t])) {
                /* its sweep ended with the node: placed again, stopped again (A2) */
                op_end(core, o, false);
                sl_core__absent_push(core, t);
            } else {
                op_finish_remove(core, o); /* the node that ran it is gone: so is the task */
            }
            break;
        }
        /* an operator that ended left the order list; the next slid into i */
        if (i < core->op_order.len && core->op_order.v[i] == o) i++;
    }
}

void sl_op__timeouts(sl_core_t *core)
{
    for (size_t i = 0; i < core->op_order.len; i++) {
        sl_op_t *op = &core->ops[core->op_order.v[i]];
        if (op->deadline_ms > core->now_ms) continue;
        op->retries++;
        core->stats.retries++;
        if (op->retries >= core->cfg.stuck_after) op->stuck = true;
        send_step(core, op);
    }
}

size_t sl_core_op_count(sl_core_t *core)
{
    return core->ops_in_progress;
}

int sl_core_op_at(sl_core_t *core, size_t i, sl_op_info_t *out)
{
    if (i >= core->op_order.len) return SL_ENOENT;
    sl_op_t *pick = &core->ops[core->op_order.v[i]];
    char *reason = core->op_reason;
    reason[0] = 0;
    int32_t node = pick->step == SL_STEP_START ? pick->to : pick->from;
    if (pick->stuck)
        snprintf(reason, sizeof core->op_reason, "%s on %s timed out %u times, waiting for %s",
                 pick->step == SL_STEP_START ? "start" : "stop",
                 node == SL_NONE ? "?" : core->nodes[node].id, pick->retries,
                 pick->step == SL_STEP_START ? "a working report" : "a stopped report");
    *out = (sl_op_info_t){.id = pick->id,
                          .type = (sl_op_type_t)pick->type,
                          .reason = (sl_reason_t)pick->reason,
                          .task = core->tasks[pick->task].id,
                          .from = pick->from == SL_NONE ? NULL : core->nodes[pick->from].id,
                          .to = pick->to == SL_NONE ? NULL : core->nodes[pick->to].id,
                          .step = pick->step == SL_STEP_START ? "start" : "stop",
                          .retries = pick->retries,
                          .deadline_ms = pick->deadline_ms,
                          .stuck = pick->stuck,
                          .reason_text = reason};
    return 0;
}
