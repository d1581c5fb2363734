/* agent_test.c — the node side alone, under ASan/LSan: L5 refusal, D5 epochs, D7 trigger
 * dispatcher with its maintainer, fencing of an older maintainer incarnation; and, with
 * three agents wired together, A2: a maintainer stopped because its changefeed was deleted
 * stops every dispatcher of it on every node (mid-move, mid-bootstrap, retried) first. */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "agent/agent.h"
#include "tap.h"

typedef struct {
    int starts, stops;
    char last[SL_ID_MAX];
} drv_t;

static void d_start(void *ctx, sl_agent_t *a, const sl_agent_task_t *t)
{
    drv_t *d = ctx;
    d->starts++;
    snprintf(d->last, sizeof d->last, "%s", t->id);
}

static void d_stop(void *ctx, sl_agent_t *a, const sl_agent_task_t *t)
{
    drv_t *d = ctx;
    d->stops++;
    snprintf(d->last, sizeof d->last, "%s", t->id);
}

static const struct sl_agent_driver_ops ops = {d_start, d_stop};

static const sl_agent_msg_t *find(sl_agent_t *a, sl_agent_msg_type_t type, const char *task)
{
    size_t n;
    const sl_agent_msg_t *out = sl_agent_outbox(a, &n);
    for (size_t i = 0; i < n; i++)
        if (out[i].type == type && (!task || !strcmp(out[i].task, task))) return &out[i];
    return NULL;
}

static sl_msg_t coord(sl_msg_type_t type, const char *task, uint32_t weight)
{
    sl_msg_t m;
    memset(&m, 0, sizeof m);
    m.type = type;
    snprintf(m.node, sizeof m.node, "n1");
    snprintf(m.task, sizeof m.task, "%s", task);
    snprintf(m.changefeed, sizeof m.changefeed, "%s", task);
    m.kind = SL_TASK_MAINTAINER;
    m.weight = weight;
    return m;
}

static void test_basics(void)
{
    drv_t d = {0};
    sl_agent_t *a;
    TAP_CHECK(sl_agent_new("n1", 1, NULL, &ops, &d, &a) == 0, "agent_new");
    sl_agent_node_t view[] = {{"n1", 1, SL_ALIVE, 0}, {"n2", 1, SL_ALIVE, 0}};
    sl_agent_view(a, 1, view, 2, "", 0, 0);

    /* a maintainer starts, with its trigger dispatcher (D7), and reports working */
    sl_msg_t m = coord(SL_MSG_START, "cf1", 2);
    sl_agent_coord_msg(a, &m, 10);
    TAP_CHECK(d.starts == 1, "START of a maintainer starts it through the driver");
    sl_agent_task_started(a, "cf1", 20);
    TAP_CHECK(d.starts == 2 && !strcmp(d.last, "cf1/trigger"), "D7: the trigger dispatcher starts with it");
    const sl_agent_msg_t *r = find(a, SL_AMSG_REPORT, "cf1");
    TAP_CHECK(r && r->state == SL_REPORT_WORKING, "the maintainer reports working");
    TAP_CHECK(find(a, SL_AMSG_BOOTSTRAP, NULL) != NULL, "a new maintainer asks the nodes what runs");
    sl_agent_task_started(a, "cf1/trigger", 25);
    sl_agent_outbox_clear(a);

    /* D5: newest epoch wins, acked in the heartbeat; a stale one is ignored */
    sl_msg_t dr = coord(SL_MSG_DRAIN, "", 0);
    snprintf(dr.target, sizeof dr.target, "n2");
    dr.epoch = 3;
    sl_agent_coord_msg(a, &dr, 30);
    TAP_CHECK(sl_agent_drain_epoch(a) == 3 && !strcmp(sl_agent_drain_target(a), "n2"), "D5: epoch 3 learnt");
    r = find(a, SL_AMSG_HEARTBEAT, NULL);
    TAP_CHECK(r && r->epoch == 3, "D5: the heartbeat acknowledges it at once");
    dr.epoch = 2;
    dr.target[0] = 0;
    sl_agent_coord_msg(a, &dr, 31);
    TAP_CHECK(sl_agent_drain_epoch(a) == 3 && !strcmp(sl_agent_drain_target(a), "n2"), "D5: a stale epoch is ignored");
    sl_agent_outbox_clear(a);

    /* fencing: a dispatcher command from an older maintainer incarnation is ignored */
    sl_agent_msg_t cmd = {.type = SL_AMSG_TASK, .state = SL_REPORT_WORKING, .issuer = 100};
    snprintf(cmd.from, sizeof cmd.from, "n2");
    snprintf(cmd.to, sizeof cmd.to, "n1");
    snprintf(cmd.task, sizeof cmd.task, "cf9/t1");
    snprintf(cmd.changefeed, sizeof cmd.changefeed, "cf9");
    sl_agent_recv(a, &cmd, 40);
    int before = d.starts;
    cmd.issuer = 50;
    snprintf(cmd.task, sizeof cmd.task, "cf9/t2");
    sl_agent_recv(a, &cmd, 41);
    TAP_CHECK(d.starts == before, "a command of an older maintainer incarnation is fenced off");
    cmd.issuer = 100;
    cmd.node_epoch = 99; /* meant for another incarnation of n1 */
    sl_agent_recv(a, &cmd, 42);
    TAP_CHECK(d.starts == before, "a command for an earlier incarnation of this node is dropped");
    sl_agent_outbox_clear(a);

    /* L5: once the view says this node is Stopping, a new START is refused */
    sl_agent_node_t stopping[] = {{"n1", 1, SL_STOPPING, 0}, {"n2", 1, SL_ALIVE, 0}};
    sl_agent_view(a, 2, stopping, 2, "", 4, 50);
    TAP_CHECK(sl_agent_liveness(a) == SL_STOPPING, "L5: the node knows it is Stopping");
    sl_agent_outbox_clear(a);
    before = d.starts;
    m = coord(SL_MSG_START, "cf2", 1);
    sl_agent_coord_msg(a, &m, 60);
    r = find(a, SL_AMSG_REPORT, "cf2");
    TAP_CHECK(d.starts == before && r && r->state == SL_REPORT_STOPPED, "L5: a START is answered 'stopped'");
    sl_agent_outbox_clear(a);

    /* the maintainer stops: its trigger stops too, and only then is it reported stopped */
    m = coord(SL_MSG_STOP, "cf1", 0);
    sl_agent_coord_msg(a, &m, 70);
    TAP_CHECK(d.stops == 2, "STOP stops the maintainer and its trigger dispatcher");
    sl_agent_task_stopped(a, "cf1", 80);
    TAP_CHECK(find(a, SL_AMSG_REPORT, "cf1") == NULL, "D7: not reported stopped before its trigger");
    sl_agent_task_stopped(a, "cf1/trigger", 90);
    r = find(a, SL_AMSG_REPORT, "cf1");
    TAP_CHECK(r && r->state == SL_REPORT_STOPPED, "then reported stopped");
    sl_agent_free(a);
}

/* ---- A2: three agents wired together, a coordinator that only listens ------------------- */

#define NAG 3
#define PEND_MAX 512

typedef struct cluster cluster_t;

typedef struct {
    char task[SL_ID_MAX];
    bool stop;
} pend_t;

/* A driver whose starts and stops complete when the test says so. */
typedef struct {
    cluster_t *c;
    pend_t pend[PEND_MAX];
    int npend;
    int starts;
} ndrv_t;

struct cluster {
    sl_agent_t *ag[NAG];
    ndrv_t drv[NAG];
    uint64_t now;
    uint64_t view_version;
    /* what the coordinator heard: maintainer reports */
    char last_report_task[SL_ID_MAX];
    sl_report_t last_report;
    int stopped_reports;
    int running_at_stopped_report; /* tasks of its changefeed still running at that moment */
    int task_stops;                /* SL_AMSG_TASK stop messages delivered, all nodes */
};

static const char *const NODE[NAG] = {"n1", "n2", "n3"};

static void n_start(void *ctx, sl_agent_t *a, const sl_agent_task_t *t)
{
    ndrv_t *d = ctx;
    if (d->npend >= PEND_MAX) return;
    snprintf(d->pend[d->npend].task, SL_ID_MAX, "%s", t->id);
    d->pend[d->npend++].stop = false;
    d->starts++;
}

static void n_stop(void *ctx, sl_agent_t *a, const sl_agent_task_t *t)
{
    ndrv_t *d = ctx;
    if (d->npend >= PEND_MAX) return;
    snprintf(d->pend[d->npend].task, SL_ID_MAX, "%s", t->id);
    d->pend[d->npend++].stop = true;
}

static const struct sl_agent_driver_ops node_ops = {n_start, n_stop};

static int node_index(const char *id)
{
    for (int i = 0; i < NAG; i++)
        if (!strcmp(NODE[i], id)) return i;
    return -1;
}

/* Tasks of `cf` (maintainer, trigger, dispatchers) that exist anywhere: starting, running
 * or stopping. */
static int running_of(cluster_t *c, const char *cf)
{
    int n = 0;
    for (int i = 0; i < NAG; i++) {
        size_t total = sl_agent_task_count(c->ag[i]);
        for (size_t k = 0; k < total; k++) {
            sl_agent_task_t t;
            sl_agent_task_state_t st;
            if (sl_agent_task_at(c->ag[i], k, &t, &st) == 0 && st != SL_AGENT_STOPPED &&
                !strcmp(t.changefeed, cf))
                n++;
        }
    }
    return n;
}

/* How many nodes run task `id` (in any state but stopped), and in which state on the last. */
static int owners_of(cluster_t *c, const char *id, sl_agent_task_state_t *state)
{
    int n = 0;
    for (int i = 0; i < NAG; i++) {
        size_t total = sl_agent_task_count(c->ag[i]);
        for (size_t k = 0; k < total; k++) {
            sl_agent_task_t t;
            sl_agent_task_state_t st;
            if (sl_agent_task_at(c->ag[i], k, &t, &st) == 0 && st != SL_AGENT_STOPPED &&
                !strcmp(t.id, id)) {
                n++;
                if (state) *state = st;
            }
        }
    }
    return n;
}

/* Every task of `cf` runs on exactly one node, working. */
static bool runs_once(cluster_t *c, const char *cf, uint32_t tables)
{
    char id[SL_ID_MAX];
    sl_agent_task_state_t st;
    if (owners_of(c, cf, &st) != 1 || st != SL_AGENT_RUNNING) return false;
    snprintf(id, sizeof id, "%s/trigger", cf);
    if (owners_of(c, id, &st) != 1 || st != SL_AGENT_RUNNING) return false;
    for (uint32_t t = 1; t <= tables; t++) {
        snprintf(id, sizeof id, "%s/t%u", cf, t);
        if (owners_of(c, id, &st) != 1 || st != SL_AGENT_RUNNING) return false;
    }
    return true;
}

/* Nodes that run at least one table dispatcher of `cf`. */
static int nodes_with_dispatchers(cluster_t *c, const char *cf)
{
    int nodes = 0;
    char prefix[SL_ID_MAX];
    snprintf(prefix, sizeof prefix, "%s/t", cf);
    for (int i = 0; i < NAG; i++) {
        size_t total = sl_agent_task_count(c->ag[i]);
        for (size_t k = 0; k < total; k++) {
            sl_agent_task_t t;
            sl_agent_task_state_t st;
            if (sl_agent_task_at(c->ag[i], k, &t, &st) == 0 && st != SL_AGENT_STOPPED &&
                !strncmp(t.id, prefix, strlen(prefix))) {
                nodes++;
                break;
            }
        }
    }
    return nodes;
}

static void coordinator_hears(cluster_t *c, const sl_agent_msg_t *m)
{
    if (m->type != SL_AMSG_REPORT) return;
    snprintf(c->last_report_task, sizeof c->last_report_task, "%s", m->task);
    c->last_report = m->state;
    if (m->state == SL_REPORT_STOPPED) {
        c->stopped_reports++;
        c->running_at_stopped_report = running_of(c, m->changefeed);
    }
}

/* Delivers every message (each to its node, or to the coordinator) and completes the
 * drivers' pending work of the kinds asked (bit 1: starts, bit 2: stops), until nothing
 * moves. */
#define DONE_STARTS 1
#define DONE_STOPS 2
#define DONE_ALL 3
static void pump(cluster_t *c, int complete)
{
    for (int round = 0; round < 10000; round++) {
        bool moved = false;
        c->now++;
        for (int i = 0; i < NAG; i++) {
            size_t n;
            const sl_agent_msg_t *out = sl_agent_outbox(c->ag[i], &n);
            if (!n) continue;
            sl_agent_msg_t *copy = calloc(n, sizeof *copy);
            for (size_t k = 0; k < n; k++) sl_agent_msg_copy(&copy[k], &out[k]);
            sl_agent_outbox_clear(c->ag[i]);
            for (size_t k = 0; k < n; k++) {
                if (!copy[k].to[0]) {
                    coordinator_hears(c, &copy[k]);
                } else {
                    int j = node_index(copy[k].to);
                    if (copy[k].type == SL_AMSG_TASK && copy[k].state == SL_REPORT_STOPPED)
                        c->task_stops++;
                    if (j >= 0) sl_agent_recv(c->ag[j], &copy[k], c->now);
                }
                sl_agent_msg_free(&copy[k]);
            }
            free(copy);
            moved = true;
        }
        for (int i = 0; i < NAG; i++) {
            ndrv_t *d = &c->drv[i];
            for (int k = 0; k < d->npend;) {
                pend_t p = d->pend[k];
                if (!(complete & (p.stop ? DONE_STOPS : DONE_STARTS))) {
                    k++;
                    continue;
                }
                memmove(&d->pend[k], &d->pend[k + 1], (size_t)(d->npend - k - 1) * sizeof *d->pend);
                d->npend--;
                if (p.stop) sl_agent_task_stopped(c->ag[i], p.task, c->now);
                else sl_agent_task_started(c->ag[i], p.task, c->now);
                moved = true;
            }
        }
        if (!moved) return;
    }
}

/* Completes one pending driver call on node `i`, if there is one for `task`. */
static bool complete_one(cluster_t *c, int i, const char *task)
{
    ndrv_t *d = &c->drv[i];
    for (int k = 0; k < d->npend; k++) {
        if (strcmp(d->pend[k].task, task) != 0) continue;
        pend_t p = d->pend[k];
        memmove(&d->pend[k], &d->pend[k + 1], (size_t)(d->npend - k - 1) * sizeof *d->pend);
        d->npend--;
        if (p.stop) sl_agent_task_stopped(c->ag[i], p.task, ++c->now);
        else sl_agent_task_started(c->ag[i], p.task, ++c->now);
        return true;
    }
    return false;
}

static void view(cluster_t *c, const char *draining, uint64_t drain_epoch)
{
    sl_agent_node_t v[NAG];
    for (int i = 0; i < NAG; i++)
        v[i] = (sl_agent_node_t){NODE[i], 1,
                                 draining && !strcmp(draining, NODE[i]) ? SL_DRAINING : SL_ALIVE, 0};
    c->view_version++;
    for (int i = 0; i < NAG; i++)
        sl_agent_view(c->ag[i], c->view_version, v, NAG, draining ? draining : "", drain_epoch,
                      ++c->now);
}

static cluster_t *cluster_new(void)
{
    cluster_t *c = calloc(1, sizeof *c);
    sl_agent_config_t cfg;
    sl_agent_config_default(&cfg);
    cfg.max_operators = 4; /* removals wait for capacity like everything else (O3) */
    for (int i = 0; i < NAG; i++) {
        c->drv[i].c = c;
        sl_agent_new(NODE[i], 1, &cfg, &node_ops, &c->drv[i], &c->ag[i]);
    }
    view(c, NULL, 0);
    return c;
}

static void cluster_free(cluster_t *c)
{
    for (int i = 0; i < NAG; i++) sl_agent_free(c->ag[i]);
    free(c);
}

/* The coordinator's START or STOP of maintainer `cf` on node `i`; `removed`: the STOP of a
 * deleted changefeed (A2). */
static void maintainer_cmd(cluster_t *c, int i, sl_msg_type_t type, const char *cf,
                           uint32_t tables, bool removed, uint64_t op_id)
{
    sl_msg_t m = coord(type, cf, tables);
    snprintf(m.node, sizeof m.node, "%s", NODE[i]);
    m.op_id = op_id;
    m.removed = removed;
    sl_agent_coord_msg(c->ag[i], &m, ++c->now);
}

static void test_delete_stops_everywhere(void)
{
    cluster_t *c = cluster_new();
    maintainer_cmd(c, 1, SL_MSG_START, "cf0", 3, false, 1); /* a bystander */
    maintainer_cmd(c, 0, SL_MSG_START, "cf1", 6, false, 2);
    pump(c, DONE_ALL);
    TAP_CHECK(runs_once(c, "cf1", 6) && runs_once(c, "cf0", 3), "A2 setup: both changefeeds run, each task once");
    TAP_CHECK(nodes_with_dispatchers(c, "cf1") >= 2, "A2 setup: cf1's dispatchers are on several nodes");

    c->stopped_reports = 0;
    c->task_stops = 0;
    maintainer_cmd(c, 0, SL_MSG_STOP, "cf1", 0, true, 3);
    pump(c, DONE_ALL);
    TAP_CHECK(c->task_stops >= 6, "A2: the deleted changefeed's maintainer sends a stop for each dispatcher");
    TAP_CHECK(running_of(c, "cf1") == 0, "A2: after a removed STOP nothing of cf1 runs on any node");
    TAP_CHECK(c->stopped_reports == 1 && !strcmp(c->last_report_task, "cf1") &&
                  c->last_report == SL_REPORT_STOPPED,
              "A2: the maintainer reports itself stopped");
    TAP_CHECK(c->running_at_stopped_report == 0,
              "A2/O1: it reports stopped only once its dispatchers and trigger are (never lost, never twice)");
    TAP_CHECK(runs_once(c, "cf0", 3), "A2: the other changefeed is untouched");

    /* the coordinator retries its STOP with the same op_id */
    int starts = c->drv[0].starts + c->drv[1].starts + c->drv[2].starts;
    maintainer_cmd(c, 0, SL_MSG_STOP, "cf1", 0, true, 3);
    pump(c, DONE_ALL);
    TAP_CHECK(c->stopped_reports == 2 && c->last_report == SL_REPORT_STOPPED &&
                  starts == c->drv[0].starts + c->drv[1].starts + c->drv[2].starts &&
                  running_of(c, "cf1") == 0,
              "A2: a retried removed STOP is answered 'stopped' again and starts nothing");
    cluster_free(c);
}

static void test_delete_mid_move(void)
{
    cluster_t *c = cluster_new();
    maintainer_cmd(c, 0, SL_MSG_START, "cf2", 6, false, 1);
    pump(c, DONE_ALL);
    TAP_CHECK(runs_once(c, "cf2", 6) && nodes_with_dispatchers(c, "cf2") >= 2, "A2 setup: cf2 runs");
    /* D6: n3 drains; its dispatchers stop there, and their starts elsewhere hang */
    sl_msg_t dr = coord(SL_MSG_DRAIN, "", 0);
    snprintf(dr.target, sizeof dr.target, "n3");
    dr.epoch = 1;
    for (int i = 0; i < NAG; i++) sl_agent_coord_msg(c->ag[i], &dr, ++c->now);
    view(c, "n3", 1);
    pump(c, DONE_STOPS);
    int starting = 0;
    char id[SL_ID_MAX];
    for (uint32_t t = 1; t <= 6; t++) {
        sl_agent_task_state_t st;
        snprintf(id, sizeof id, "cf2/t%u", t);
        if (owners_of(c, id, &st) == 1 && st == SL_AGENT_STARTING) starting++;
    }
    TAP_CHECK(starting > 0, "A2 setup: some of cf2's dispatchers are mid-move (starting on their destination)");

    c->stopped_reports = 0;
    maintainer_cmd(c, 0, SL_MSG_STOP, "cf2", 0, true, 2);
    pump(c, DONE_STOPS);
    TAP_CHECK(c->stopped_reports == 0, "A2: not reported stopped while a dispatcher is still starting somewhere");
    pump(c, DONE_ALL);
    TAP_CHECK(running_of(c, "cf2") == 0, "A2: dispatchers that were mid-move end stopped too");
    TAP_CHECK(c->stopped_reports == 1 && c->running_at_stopped_report == 0,
              "A2: then, and only then, the maintainer is reported stopped");
    cluster_free(c);
}

static void test_delete_mid_bootstrap(void)
{
    cluster_t *c = cluster_new();
    maintainer_cmd(c, 1, SL_MSG_START, "cf3", 4, false, 1);
    pump(c, DONE_ALL);
    TAP_CHECK(runs_once(c, "cf3", 4), "A2 setup: cf3 runs");
    /* a move of the maintainer: stopped on n2 (its dispatchers stay, for the next one) */
    maintainer_cmd(c, 1, SL_MSG_STOP, "cf3", 0, false, 2);
    pump(c, DONE_ALL);
    TAP_CHECK(running_of(c, "cf3") == 4, "A2 setup: a moved maintainer leaves its dispatchers running");
    /* started on n3, it is bootstrapping (no answer delivered) when the delete comes */
    maintainer_cmd(c, 2, SL_MSG_START, "cf3", 4, false, 2);
    TAP_CHECK(complete_one(c, 2, "cf3"), "A2 setup: the maintainer starts on n3");
    TAP_CHECK(sl_agent_maintainer_count(c->ag[2]) == 1 && !sl_agent_maintainer_core(c->ag[2], "cf3"),
              "A2 setup: it is bootstrapping");
    c->stopped_reports = 0;
    maintainer_cmd(c, 2, SL_MSG_STOP, "cf3", 0, true, 3);
    maintainer_cmd(c, 2, SL_MSG_STOP, "cf3", 0, true, 3); /* retried */
    pump(c, DONE_ALL);
    TAP_CHECK(running_of(c, "cf3") == 0, "A2: a maintainer deleted mid-bootstrap stops what the nodes reported");
    TAP_CHECK(c->stopped_reports >= 1 && c->last_report == SL_REPORT_STOPPED &&
                  c->running_at_stopped_report == 0,
              "A2: and is reported stopped after that");

    /* deleted while its own start was still under way: it still finds and stops them */
    maintainer_cmd(c, 0, SL_MSG_START, "cf4", 3, false, 4);
    pump(c, DONE_ALL);
    maintainer_cmd(c, 0, SL_MSG_STOP, "cf4", 0, false, 5);
    pump(c, DONE_ALL);
    maintainer_cmd(c, 1, SL_MSG_START, "cf4", 3, false, 5);
    maintainer_cmd(c, 1, SL_MSG_STOP, "cf4", 0, true, 6);
    c->stopped_reports = 0;
    pump(c, DONE_ALL);
    TAP_CHECK(running_of(c, "cf4") == 0 && c->stopped_reports == 1 &&
                  c->running_at_stopped_report == 0,
              "A2: a maintainer deleted while starting stops its changefeed's dispatchers, then itself");
    cluster_free(c);
}

static void test_created_again_while_sweeping(void)
{
    cluster_t *c = cluster_new();
    maintainer_cmd(c, 0, SL_MSG_START, "cf5", 3, false, 1);
    pump(c, DONE_ALL);
    maintainer_cmd(c, 0, SL_MSG_STOP, "cf5", 0, true, 2);
    pump(c, DONE_STARTS); /* the stops hang */
    maintainer_cmd(c, 0, SL_MSG_START, "cf5", 3, false, 3);
    pump(c, DONE_ALL);
    TAP_CHECK(runs_once(c, "cf5", 3) && c->last_report == SL_REPORT_WORKING,
              "A2: a changefeed created again while its old dispatchers were being stopped runs, each task once");
    /* and a later plain STOP (a move) leaves its dispatchers alone */
    maintainer_cmd(c, 0, SL_MSG_STOP, "cf5", 0, false, 4);
    pump(c, DONE_ALL);
    TAP_CHECK(running_of(c, "cf5") == 3, "A2: once created again, a plain STOP does not sweep");
    cluster_free(c);
}

int main(void)
{
    test_basics();
    test_delete_stops_everywhere();
    test_delete_mid_move();
    test_delete_mid_bootstrap();
    test_created_again_while_sweeping();
    return TAP_DONE();
}
