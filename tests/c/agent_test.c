/* agent_test.c — the node side alone, under ASan/LSan: L5 refusal, D5 epochs, D7 trigger
 * dispatcher with its maintainer, fencing of an older maintainer incarnation. */
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

int main(void)
{
    drv_t d = {0};
    sl_agent_t *a;
    TAP_CHECK(sl_agent_new("n1", 1, NULL, &ops, &d, &a) == 0, "agent_new");
    sl_agent_node_t view[] = {{"n1", 1, SL_ALIVE}, {"n2", 1, SL_ALIVE}};
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
    sl_agent_node_t stopping[] = {{"n1", 1, SL_STOPPING}, {"n2", 1, SL_ALIVE}};
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
    return TAP_DONE();
}
