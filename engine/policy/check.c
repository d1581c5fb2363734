/* check.c — `sluice policy check FILE` without a server (SPEC §4; P1–P3).
 *
 * Guarantees: the file is loaded through the same sandbox as in production (text only,
 * contract, selftest under the load budget), then `place` runs on a small synthetic
 * cluster (and `place` again when the policy has `place_columns`: the two forms must
 * agree) and `drain_order` when defined, each under the call budget; every answer is
 * checked the way the core checks it (P3). A hostile file cannot make this hang, crash,
 * touch the file system or run a command: the sandbox bounds time and memory and offers
 * no way out. The synthetic cluster: n1..n4 Alive (zone a, a, b, b) and n5 Draining, the
 * drain target, which is never given to the policy.
 *
 * The same trial runs before a policy goes live (sl_policy_trial, called by the registry
 * on every load, P4), judged more narrowly: only what fails whatever the cluster (a call
 * that errors or runs out of budget, a malformed answer, a failed drain_order), and the
 * first problem ends it, so a looping policy costs one call budget, not three. The trial
 * is small (20 tasks, 4 nodes, at most three calls) so a reload stays well within B7.
 *
 * FILE itself is read here, not by the host's loader: opened without blocking (a FIFO
 * with no writer would wait forever), refused unless it is a regular file (a directory,
 * a FIFO, /dev/zero or /dev/urandom), and refused above SL_POLICY_FILE_MAX without reading
 * it all. Then the bytes go to the same loader production uses. */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "policy.h"
#include "source.h"

#define CHECK_NODES 4
#define CHECK_TASKS 20

typedef struct {
    char *buf;
    size_t len, cap;
    int problems;
} text_t;

static void text_add(text_t *t, const char *fmt, ...)
{
    if (t->cap == 0 || t->len + 1 >= t->cap)
        return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(t->buf + t->len, t->cap - t->len, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    t->len += (size_t)n;
    if (t->len >= t->cap)
        t->len = t->cap - 1;
}

/* One run of the trial. strict (`policy check`): every problem, node ids judged against
 * the synthetic cluster, place compared with place_columns. Otherwise (a load, P4): only
 * what fails whatever the cluster, and the first problem ends the trial. */
typedef struct {
    sl_policy_t *p;
    int strict;
    text_t sum, errs;
    const char *step; /* what runs now, for the load trial's message */
} trial_t;

static int trial_over(const trial_t *t)
{
    return !t->strict && t->errs.problems > 0;
}

/* A problem, framed by sl_policy_message: `msg` is a report message or a decision's
 * error (policy.h), `task` the task it is about or NULL. */
static void problem_msg(trial_t *t, const char *task, const char *msg)
{
    char line[SL_ERRMSG_MAX + 128];
    if (t->errs.problems == 8) {
        text_add(&t->errs, "%s(more problems not shown)", t->errs.len ? "\n" : "");
    } else if (t->errs.problems < 8) {
        sl_policy_message(t->p, task, msg, line, sizeof line);
        if (!t->strict) { /* one line, as a syntax error is: no traceback */
            line[strcspn(line, "\n")] = '\0';
            text_add(&t->errs, "%s (in the load trial: %s on the synthetic cluster of "
                     "`sluice policy check`)", line, t->step);
        } else {
            text_add(&t->errs, "%s%s", t->errs.len ? "\n" : "", line);
        }
    }
    t->errs.problems++;
}

static void problem(trial_t *t, const char *fmt, ...)
{
    char msg[SL_ERRMSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    problem_msg(t, NULL, msg);
}

static const sl_label_t zone_a = {"zone", "a"}, zone_b = {"zone", "b"};

static const sl_place_node_t check_nodes[CHECK_NODES] = {
    {"n1", 2, 9, 0, &zone_a, 1},
    {"n2", 1, 6, 1, &zone_a, 1},
    {"n3", 0, 3, 0, &zone_b, 1},
    {"n4", 3, 12, 2, &zone_b, 1},
};

static void make_tasks(sl_place_task_t *tasks, char (*ids)[24])
{
    size_t k = 0;
    for (int cf = 1; cf <= 6; cf++, k++) {
        snprintf(ids[k], sizeof ids[k], "cf-%d", cf);
        tasks[k] = (sl_place_task_t){ids[k], SL_TASK_MAINTAINER, ids[k], cf <= 2 ? "n5" : NULL, 1};
    }
    static const int spans[3] = {5, 5, 4};
    for (int cf = 0; cf < 3; cf++) {
        for (int t = 1; t <= spans[cf]; t++, k++) {
            snprintf(ids[k], sizeof ids[k], "cf-%d/t%d", cf + 1, t);
            tasks[k] = (sl_place_task_t){ids[k], SL_TASK_DISPATCHER, ids[cf],
                                         cf < 2 && t <= 3 ? "n5" : NULL, (uint32_t)(1 + t % 3)};
        }
    }
}

/* A policy with place_columns is placed through it; its `place` must say the same.
 * `nodes` holds the column answer, copied (a second call ends the first one's strings). */
static void compare_forms(trial_t *t, const sl_place_task_t *tasks, size_t ntasks,
                          const sl_place_ctx_t *ctx, const char *const *nodes)
{
    sl_policy_t *p = t->p;
    sl_decision_t tbl[CHECK_TASKS];
    sl_place_report_t rep;
    memset(&rep, 0, sizeof rep);
    if (sl_policy_lua_place_tables(p, tasks, ntasks, check_nodes, CHECK_NODES, ctx, tbl,
                                   &rep) != 0) {
        problem_msg(t, NULL, rep.message[0] ? rep.message : "place failed");
        return;
    }
    if (rep.unasked > 0)
        problem_msg(t, NULL, rep.message);
    for (size_t i = 0; i < ntasks; i++) {
        if (tbl[i].error != NULL) { /* place itself answered badly: that fails on its own */
            problem_msg(t, tasks[i].id, tbl[i].error);
            return;
        }
        const char *a = tbl[i].node != NULL ? tbl[i].node : "wait";
        const char *c = nodes[i] != NULL ? nodes[i] : "wait";
        if (strcmp(a, c) != 0) {
            problem(t, "place and place_columns disagree on task \"%s\" (%s round): "
                    "place says %s, place_columns says %s", tasks[i].id,
                    ctx->reason == SL_REASON_DRAIN ? "drain" : "basic", a, c);
            return;
        }
    }
}

/* Checks one place round; returns how many tasks were placed on the synthetic nodes. */
static size_t check_round(trial_t *t, const sl_place_task_t *tasks, size_t ntasks,
                          const sl_place_ctx_t *ctx, unsigned *per_node)
{
    sl_policy_t *p = t->p;
    sl_decision_t out[CHECK_TASKS];
    sl_place_report_t rep;
    memset(&rep, 0, sizeof rep);
    if (p->ops->place(p, tasks, ntasks, check_nodes, CHECK_NODES, ctx, out, &rep) != 0) {
        problem_msg(t, NULL, rep.message[0] ? rep.message : "place failed");
        return 0;
    }
    if (rep.unasked > 0)
        problem_msg(t, NULL, rep.message);
    char copies[CHECK_TASKS][SL_ID_MAX];
    const char *node_of[CHECK_TASKS];
    for (size_t i = 0; i < ntasks && !trial_over(t); i++) {
        if (out[i].error != NULL)
            problem_msg(t, tasks[i].id, out[i].error);
        node_of[i] = NULL;
        if (out[i].node != NULL) {
            snprintf(copies[i], sizeof copies[i], "%s", out[i].node);
            node_of[i] = copies[i];
        }
    }
    if (trial_over(t))
        return 0;
    if (t->strict && sl_policy_lua_has_columns(p))
        compare_forms(t, tasks, ntasks, ctx, node_of);
    size_t placed = 0;
    for (size_t i = 0; i < ntasks; i++) {
        if (node_of[i] == NULL)
            continue;
        size_t n = 0;
        while (n < CHECK_NODES && strcmp(check_nodes[n].id, node_of[i]) != 0)
            n++;
        if (n == CHECK_NODES) {
            /* live, the core refuses these (P3); only `policy check` calls them problems:
             * node ids belong to the cluster, not to the synthetic one */
            if (!t->strict)
                continue;
            if (strcmp(node_of[i], "n5") == 0)
                problem(t, "place put task \"%s\" on n5 which is Draining (%s round)",
                        tasks[i].id, ctx->reason == SL_REASON_DRAIN ? "drain" : "basic");
            else
                problem(t, "place put task \"%s\" on unknown node \"%s\"", tasks[i].id,
                        node_of[i]);
            continue;
        }
        per_node[n]++;
        placed++;
    }
    return placed;
}

/* The trial itself: place in a drain round and a basic round, then drain_order. */
static void run_trial(trial_t *t)
{
    sl_policy_t *p = t->p;
    sl_place_task_t tasks[CHECK_TASKS];
    char ids[CHECK_TASKS][24];
    make_tasks(tasks, ids);

    text_add(&t->sum, "policy %s (%s): contract and selftest ok\n", p->name, p->file);

    /* round 1: the drain of n5 plus absent tasks, everything fits in the batch */
    unsigned per_node[CHECK_NODES] = {0};
    sl_place_ctx_t drain = {SL_REASON_DRAIN, "n5", CHECK_TASKS, 1700000000000ull};
    t->step = "place, drain round of 20 tasks";
    size_t placed = check_round(t, tasks, CHECK_TASKS, &drain, per_node);
    if (trial_over(t))
        return;
    text_add(&t->sum, "  place (drain of n5, %d tasks, batch_limit %d): %zu placed:", CHECK_TASKS,
             CHECK_TASKS, placed);
    for (int n = 0; n < CHECK_NODES; n++)
        text_add(&t->sum, " %s=%u", check_nodes[n].id, per_node[n]);
    text_add(&t->sum, "\n");

    /* round 2: a basic round whose batch is smaller than the candidates */
    unsigned per_node2[CHECK_NODES] = {0};
    sl_place_ctx_t basic = {SL_REASON_BASIC, NULL, 4, 1700000001000ull};
    t->step = "place, basic round of 20 tasks";
    size_t placed2 = check_round(t, tasks, CHECK_TASKS, &basic, per_node2);
    if (trial_over(t))
        return;
    text_add(&t->sum, "  place (basic, %d tasks, batch_limit 4): %zu placed%s\n", CHECK_TASKS,
             placed2, placed2 > 4 ? " (more than batch_limit: the core acts on 4)" : "");

    /* P1 lets a policy leave tasks waiting, so this passes; but say plainly what the core
     * does with such a policy (engine/core/sched.c, the starvation guard) */
    if (placed == 0 && placed2 == 0)
        text_add(&t->sum, "  warning: place left every task waiting in both rounds although %d "
                          "nodes were schedulable; live, when it leaves every task waiting for "
                          "3 batches in a row, the core refuses those tasks (counted as "
                          "refusals) and the built-in policy decides them\n", CHECK_NODES);

    if (t->strict && sl_policy_lua_has_columns(p) && t->errs.problems == 0)
        text_add(&t->sum, "  place_columns: defined, the host calls it for every batch; place "
                          "answers the same in both rounds\n");

    if (p->ops->drain_order != NULL) {
        sl_place_task_t moving[CHECK_TASKS];
        size_t nmoving = 0;
        for (size_t i = 0; i < CHECK_TASKS; i++)
            if (tasks[i].from != NULL)
                moving[nmoving++] = tasks[i];
        uint32_t order[CHECK_TASKS];
        size_t norder = 0;
        sl_place_report_t rep;
        memset(&rep, 0, sizeof rep);
        t->step = "drain_order";
        if (p->ops->drain_order(p, moving, nmoving, &drain, order, &norder, &rep) != 0)
            problem_msg(t, NULL, rep.message[0] ? rep.message : "drain_order failed");
        else
            text_add(&t->sum, "  drain_order: %zu of %zu tasks ordered\n", norder, nmoving);
    } else {
        text_add(&t->sum, "  drain_order: not defined (the core keeps its own order)\n");
    }
}

int sl_policy_trial(sl_policy_t *p, char *err, size_t errlen)
{
    trial_t t = {.p = p, .strict = 0, .errs = {err, 0, errlen, 0}};
    if (errlen > 0)
        err[0] = '\0';
    run_trial(&t);
    return t.errs.problems > 0 ? SL_EPOLICY : 0;
}

int sl_policy_check_file(const char *path, const sl_policy_limits_t *lim, char *summary,
                         size_t summarylen, char *err, size_t errlen)
{
    if (summarylen > 0)
        summary[0] = '\0';
    if (errlen > 0)
        err[0] = '\0';

    sl_policy_t *p = NULL;
    char msg[SL_ERRMSG_MAX];
    char *src = NULL;
    size_t srclen = 0;
    int rc = sl_policy_read_file(path, &src, &srclen, msg, sizeof msg);
    if (rc == 0) {
        rc = sl_policy_lua_load_string(src != NULL ? src : "", srclen, path, lim, &p, msg,
                                       sizeof msg);
        free(src);
    }
    if (rc != 0) { /* a load error is framed already ("policy FILE:LINE: …") */
        snprintf(err, errlen, "%s", msg);
        return rc;
    }
    trial_t t = {.p = p, .strict = 1, .sum = {summary, 0, summarylen, 0},
                 .errs = {err, 0, errlen, 0}};
    run_trial(&t);
    rc = t.errs.problems > 0 ? SL_EPOLICY : 0;
    sl_policy_free(p);
    return rc;
}
