/* node.c — one node process: the coordinator connection, the agent, the timer driver
 * (see node.h). Single-threaded on libuv; every event ends in pump(), which sends what
 * the agent emitted and rewrites the state file when what runs here changed. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

#include <jansson.h>

#include "../agent/agent.h"
#include "../policy/policy.h"
#include "log.h"
#include "node.h"
#include "proto.h"

#define WELCOME_TIMEOUT_MS 10000
#define WRITE_QUEUE_MAX (64u << 20)

typedef struct nconn {
    uv_tcp_t tcp;
    uv_connect_t req;
    sl_node_t *node;
    sl_proto_reader_t rd;
    uint64_t opened_ms;
    int connected; /* TCP is up, HELLO sent */
    int closing;
} nconn_t;

typedef struct pend {
    uv_timer_t timer;
    sl_node_t *node;
    struct pend *prev, *next;
    char task[SL_ID_MAX];
    int stop;
} pend_t;

typedef struct {
    uv_write_t req;
    uv_buf_t buf;
} wreq_t;

struct sl_node {
    uv_loop_t *loop;
    sl_node_config_t cfg;
    char *coordinator, *id, *token, *addr, *state_file;
    struct sockaddr_storage sa;
    sl_agent_t *agent;
    sl_policy_t *policy;
    uint64_t node_epoch;
    uint64_t base_real_ms, base_uv_ms;

    nconn_t *conn;
    int ready; /* WELCOME received */
    uint64_t backoff_ms;
    uv_timer_t tick, reconnect;
    pend_t *pending;

    uint8_t *obuf;
    size_t olen, ocap;
    sl_frame_item_t *items;

    uint64_t state_sig;
    int open_handles;
    int closing;
    int exiting; /* sl_node_close: the tasks end with the process */
    uint64_t starts, stops;

    /* O5 fencing: when the coordinator was last heard from, and after how long of silence
     * this node stops its tasks (a share of the coordinator's node timeout, from WELCOME) */
    uint64_t last_rx_ms;
    uint64_t fence_ms;
    /* ...but a coordinator that closed the connection (EOF) and then refuses connections
     * has exited: it places nothing, and the next one — started after that close, on this
     * address or another — waits bootstrap_ms for the nodes' reports before it places
     * what they did not report. So the tasks keep running up to 60% of bootstrap_ms past
     * the close (not the node timeout past the last frame), and reconnects come often
     * enough to report within a new coordinator's bootstrap. This assumes the next
     * coordinator's --bootstrap-ms is not shorter than the one this node was told. */
    int coord_closed; /* the last welcomed connection ended with the coordinator's EOF */
    int coord_gone;   /* and a connect since was refused */
    uint64_t closed_ms;    /* when that EOF came */
    uint64_t bootstrap_ms; /* from WELCOME */

    /* graceful shutdown (sl_node_leave) */
    int leaving;
    uint64_t leave_deadline_ms;
    char leave_reason[64];  /* sent again in LEAVING after every WELCOME */
    const char *leave_lost; /* why every task here stopped while leaving (fence, expel) */
    char leave_why[160];    /* the outcome, when it is built */
    void (*leave_done)(void *arg, const char *why);
    void *leave_arg;
};

static void pump(sl_node_t *n);
static void connect_now(sl_node_t *n);
static void send_leaving(sl_node_t *n);
static size_t running_tasks(sl_node_t *n);

static uint64_t real_ms(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (uint64_t)tv.tv_sec * 1000 + (uint64_t)tv.tv_usec / 1000;
}

static uint64_t now_ms(sl_node_t *n)
{
    return n->base_real_ms + (uv_now(n->loop) - n->base_uv_ms);
}

static void node_release(sl_node_t *n)
{
    if (--n->open_handles > 0 || !n->closing) return;
    sl_agent_free(n->agent);
    sl_policy_free(n->policy);
    free(n->obuf);
    free(n->items);
    free(n->coordinator);
    free(n->id);
    free(n->token);
    free(n->addr);
    free(n->state_file);
    free(n);
}

static void handle_closed(uv_handle_t *h)
{
    node_release(h->data);
}

/* ---- the timer driver (agent.h driver seam) ---------------------------------------------- */

static void pend_closed(uv_handle_t *h)
{
    pend_t *p = h->data;
    sl_node_t *n = p->node;
    free(p);
    node_release(n);
}

static void pend_unlink(pend_t *p)
{
    sl_node_t *n = p->node;
    if (p->prev) p->prev->next = p->next;
    else n->pending = p->next;
    if (p->next) p->next->prev = p->prev;
    p->timer.data = p;
    uv_close((uv_handle_t *)&p->timer, pend_closed);
}

static void on_pend(uv_timer_t *t)
{
    pend_t *p = t->data;
    sl_node_t *n = p->node;
    char task[SL_ID_MAX];
    int stop = p->stop;
    memcpy(task, p->task, sizeof task);
    pend_unlink(p);
    uint64_t now = now_ms(n);
    if (stop) {
        n->stops++;
        sl_agent_task_stopped(n->agent, task, now);
    } else {
        n->starts++;
        sl_agent_task_started(n->agent, task, now);
    }
    sl_log(SL_LOG_DEBUG, stop ? "task stopped" : "task started", "task", task, NULL);
    pump(n);
}

static void driver_schedule(sl_node_t *n, const sl_agent_task_t *task, int stop)
{
    pend_t *p = calloc(1, sizeof *p);
    if (!p) return; /* the agent's step timeout retries it */
    p->node = n;
    p->stop = stop;
    snprintf(p->task, sizeof p->task, "%s", task->id);
    uv_timer_init(n->loop, &p->timer);
    p->timer.data = p;
    n->open_handles++;
    p->next = n->pending;
    if (n->pending) n->pending->prev = p;
    n->pending = p;
    uv_timer_start(&p->timer, on_pend, n->cfg.task_latency_ms, 0);
    if (task->kind == SL_TASK_MAINTAINER)
        sl_log(SL_LOG_INFO, stop ? "maintainer stopping" : "maintainer starting", "changefeed",
               task->changefeed, NULL);
}

static void drv_start(void *ctx, sl_agent_t *agent, const sl_agent_task_t *task)
{
    driver_schedule(ctx, task, 0);
}

static void drv_stop(void *ctx, sl_agent_t *agent, const sl_agent_task_t *task)
{
    driver_schedule(ctx, task, 1);
}

static const struct sl_agent_driver_ops timer_driver = {drv_start, drv_stop};

/* ---- writing frames ------------------------------------------------------------------------ */

static int queue_frame(sl_node_t *n, const sl_frame_t *f)
{
    for (int attempt = 0; attempt < 3; attempt++) {
        size_t len = n->olen;
        int rc = n->obuf ? sl_proto_encode(f, n->obuf, n->ocap, &len) : SL_ELIMIT;
        if (rc == 0) {
            n->olen = len;
            return 0;
        }
        if (rc != SL_ELIMIT) return rc;
        size_t cap = n->ocap ? n->ocap * 2 : 16384;
        if (attempt == 2 || cap < n->olen + 65536) cap = n->olen + SL_PROTO_FRAME_MAX + 16;
        uint8_t *b = realloc(n->obuf, cap);
        if (!b) return SL_ENOMEM;
        n->obuf = b;
        n->ocap = cap;
    }
    return SL_ELIMIT;
}

static void on_written(uv_write_t *req, int status)
{
    wreq_t *w = (wreq_t *)req;
    free(w->buf.base);
    free(w);
}

static void conn_drop(sl_node_t *n, const char *why);
static void flush_out(sl_node_t *n)
{
    if (!n->olen) return;
    nconn_t *k = n->conn;
    if (!k || !k->connected || k->closing) {
        n->olen = 0;
        return;
    }
    if (uv_stream_get_write_queue_size((uv_stream_t *)&k->tcp) > WRITE_QUEUE_MAX) {
        conn_drop(n, "coordinator does not read");
        return;
    }
    wreq_t *w = malloc(sizeof *w);
    if (!w) {
        n->olen = 0;
        return;
    }
    w->buf = uv_buf_init((char *)n->obuf, (unsigned)n->olen);
    n->obuf = NULL;
    n->olen = n->ocap = 0;
    int rc = uv_write(&w->req, (uv_stream_t *)&k->tcp, &w->buf, 1, on_written);
    if (rc) {
        free(w->buf.base);
        free(w);
        conn_drop(n, uv_strerror(rc));
    }
}

/* Maintainers this node runs now (A5: what a restarted coordinator adopts). Only RUNNING
 * ones: a maintainer still starting says so itself when it is up. */
static size_t running_maintainers(sl_node_t *n, sl_frame_item_t *items, size_t max)
{
    size_t cnt = 0, total = sl_agent_task_count(n->agent);
    for (size_t i = 0; i < total && cnt < max; i++) {
        sl_agent_task_t t;
        sl_agent_task_state_t st;
        if (sl_agent_task_at(n->agent, i, &t, &st) || t.kind != SL_TASK_MAINTAINER ||
            st != SL_AGENT_RUNNING)
            continue;
        memset(&items[cnt], 0, sizeof items[cnt]);
        snprintf(items[cnt].id, sizeof items[cnt].id, "%s", t.id);
        items[cnt++].value = t.weight;
    }
    return cnt;
}

static void send_agent_msg(sl_node_t *n, const sl_agent_msg_t *m)
{
    if (!n->ready) return; /* lost: heartbeats, reports and bootstraps are all resent */
    sl_frame_t f;
    memset(&f, 0, sizeof f);
    f.type = SL_FRAME_AGENT;
    f.amsg = (uint8_t)m->type;
    snprintf(f.from, sizeof f.from, "%s", m->from);
    snprintf(f.to, sizeof f.to, "%s", m->to);
    snprintf(f.task, sizeof f.task, "%s", m->task);
    snprintf(f.changefeed, sizeof f.changefeed, "%s", m->changefeed);
    f.state = (uint8_t)m->state;
    f.node_epoch = m->node_epoch;
    f.epoch = m->epoch;
    f.issuer = m->issuer;
    f.remaining = m->remaining;
    f.items = n->items;
    if (m->type == SL_AMSG_HEARTBEAT) {
        f.nitems = running_maintainers(n, n->items, SL_PROTO_LIST_MAX);
    } else {
        for (size_t i = 0; i < m->nitems && i < SL_PROTO_LIST_MAX; i++) {
            memset(&n->items[i], 0, sizeof n->items[i]);
            snprintf(n->items[i].id, sizeof n->items[i].id, "%s", m->items[i].id);
            n->items[i].value = m->items[i].count;
            f.nitems++;
        }
    }
    int rc = queue_frame(n, &f);
    if (rc) sl_log(SL_LOG_WARN, "agent message not encoded", "error", sl_strerror(rc), NULL);
}

/* ---- state file ------------------------------------------------------------------------------ */

static void write_state(sl_node_t *n)
{
    if (!n->state_file) return;
    uint64_t h = 1469598103934665603ull;
#define MIX(v) (h = (h ^ (uint64_t)(v)) * 1099511628211ull)
    MIX(n->ready);
    MIX(n->exiting);
    MIX(sl_agent_liveness(n->agent));
    MIX(sl_agent_drain_epoch(n->agent));
    size_t total = sl_agent_task_count(n->agent);
    for (size_t i = 0; i < total; i++) {
        sl_agent_task_t t;
        sl_agent_task_state_t st;
        if (sl_agent_task_at(n->agent, i, &t, &st)) continue;
        MIX(i);
        MIX(st);
    }
#undef MIX
    if (h == n->state_sig) return;
    n->state_sig = h;
    json_t *maint = json_array(), *disp = json_array();
    for (size_t i = 0; i < total; i++) {
        sl_agent_task_t t;
        sl_agent_task_state_t st;
        if (n->exiting || sl_agent_task_at(n->agent, i, &t, &st) || st == SL_AGENT_STOPPED)
            continue;
        /* starting, running or stopping: the task exists here (never two owners) */
        json_array_append_new(t.kind == SL_TASK_MAINTAINER ? maint : disp, json_string(t.id));
    }
    json_t *o = json_pack("{s:s,s:I,s:b,s:s,s:s,s:I,s:o,s:o,s:I,s:I,s:I}", "node", n->id,
                          "node_epoch", (json_int_t)n->node_epoch, "connected", n->ready,
                          "liveness", sl_liveness_name(sl_agent_liveness(n->agent)),
                          "drain_target", sl_agent_drain_target(n->agent), "drain_epoch",
                          (json_int_t)sl_agent_drain_epoch(n->agent), "maintainers", maint,
                          "dispatchers", disp, "starts", (json_int_t)n->starts, "stops",
                          (json_int_t)n->stops, "written_at_ms", (json_int_t)now_ms(n));
    if (!o) return;
    char tmp[1100];
    snprintf(tmp, sizeof tmp, "%s.tmp", n->state_file);
    if (json_dump_file(o, tmp, JSON_COMPACT) == 0) {
        if (rename(tmp, n->state_file))
            sl_log(SL_LOG_WARN, "state file not written", "file", n->state_file, "error",
                   strerror(errno), NULL);
    }
    json_decref(o);
}

/* ---- the agent's outbox ----------------------------------------------------------------------- */

static void pump(sl_node_t *n)
{
    if (n->closing) return;
    uint64_t now = now_ms(n);
    for (int round = 0; round < 1000; round++) {
        size_t cnt;
        const sl_agent_msg_t *out = sl_agent_outbox(n->agent, &cnt);
        if (!cnt) break;
        sl_agent_msg_t *copy = calloc(cnt, sizeof *copy);
        if (!copy) break;
        for (size_t i = 0; i < cnt; i++) sl_agent_msg_copy(&copy[i], &out[i]);
        sl_agent_outbox_clear(n->agent);
        for (size_t i = 0; i < cnt; i++) {
            if (!strcmp(copy[i].to, n->id)) sl_agent_recv(n->agent, &copy[i], now); /* to itself */
            else send_agent_msg(n, &copy[i]);
            sl_agent_msg_free(&copy[i]);
        }
        free(copy);
    }
    /* the state file first: once a "stopped" report is out, another node may start the
     * task at once, and a reader of the state files must never see it in both places */
    write_state(n);
    flush_out(n);
}

/* ---- frames from the coordinator ----------------------------------------------------------- */

static int new_agent(sl_node_t *n, char *err, size_t errlen)
{
    sl_agent_config_t ac;
    sl_agent_config_default(&ac);
    if (n->cfg.heartbeat_interval_ms) ac.heartbeat_interval_ms = n->cfg.heartbeat_interval_ms;
    int rc = sl_agent_new(n->id, n->node_epoch, &ac, &timer_driver, n, &n->agent);
    if (rc) {
        snprintf(err, errlen, "node id '%s': %s", n->id, sl_strerror(rc));
        return rc;
    }
    if (n->policy) sl_agent_set_policy(n->agent, n->policy);
    return 0;
}

/* A new incarnation: a new node epoch and an agent that runs nothing. Completions of the
 * old incarnation's tasks still in flight find no task and are ignored. */
static int restart_agent(sl_node_t *n)
{
    uint64_t epoch = real_ms();
    sl_agent_t *old = n->agent;
    n->node_epoch = epoch > n->node_epoch ? epoch : n->node_epoch + 1;
    char err[256];
    if (new_agent(n, err, sizeof err)) {
        n->agent = old;
        sl_log(SL_LOG_ERROR, "cannot restart the agent", "error", err, NULL);
        return SL_ENOMEM;
    }
    sl_agent_free(old);
    n->state_sig = 0;
    char e[32];
    snprintf(e, sizeof e, "%" PRIu64, n->node_epoch);
    sl_log(SL_LOG_INFO, "new incarnation", "node_epoch", e, NULL);
    return 0;
}

static void send_bootstrap_heartbeat(sl_node_t *n)
{
    sl_agent_msg_t m;
    memset(&m, 0, sizeof m);
    m.type = SL_AMSG_HEARTBEAT;
    snprintf(m.from, sizeof m.from, "%s", n->id);
    m.node_epoch = n->node_epoch;
    m.epoch = sl_agent_drain_epoch(n->agent);
    send_agent_msg(n, &m);
}

static void on_frame(sl_node_t *n, const sl_frame_t *f)
{
    uint64_t now = now_ms(n);
    /* O5: only a coordinator that took this node in speaks for it; a REJECT (or anything
     * before WELCOME) says nothing about whether its tasks are still its own */
    if (n->ready || f->type == SL_FRAME_WELCOME) n->last_rx_ms = now;
    if (!n->ready) {
        if (f->type == SL_FRAME_REJECT) {
            if (!strncmp(f->reason, "expelled", 8)) {
                /* A5: declared dead while alive. Its tasks live elsewhere now: this node
                 * comes back as a new incarnation that runs nothing. */
                sl_log(SL_LOG_WARN, "expelled by the coordinator: restarting as a new incarnation",
                       "reason", f->reason, NULL);
                if (restart_agent(n) == 0) {
                    n->backoff_ms = 0;
                    if (n->leaving)
                        n->leave_lost = "the coordinator declared this node dead; every task "
                                        "here stopped";
                }
            } else {
                sl_log(SL_LOG_ERROR, "coordinator rejected this node", "reason", f->reason, NULL);
                n->backoff_ms = n->cfg.reconnect_max_ms;
            }
            conn_drop(n, "rejected");
            return;
        }
        if (f->type != SL_FRAME_WELCOME) {
            conn_drop(n, "expected WELCOME");
            return;
        }
        n->ready = 1;
        n->backoff_ms = 0;
        /* stop the tasks well before the coordinator would place them elsewhere: it counts
         * from the last heartbeat it read, this node from the last frame it read */
        n->fence_ms = (f->node_timeout_ms ? f->node_timeout_ms : 10000) * 6 / 10;
        n->bootstrap_ms = f->bootstrap_ms ? f->bootstrap_ms : n->fence_ms * 10 / 6;
        n->coord_closed = n->coord_gone = 0;
        char e[32];
        snprintf(e, sizeof e, "%" PRIu64, f->epoch);
        sl_log(SL_LOG_INFO, "connected to the coordinator", "coordinator", n->coordinator,
               "drain_target", f->target, "epoch", e, NULL);
        send_bootstrap_heartbeat(n);
        if (n->leaving) {
            /* L1: a coordinator that restarted, or that took this connection's loss for a
             * departure, knows nothing of the leave: it is asked again */
            sl_log(SL_LOG_INFO, "leaving: asking the coordinator to drain this node", NULL);
            send_leaving(n);
        }
        return;
    }
    switch (f->type) {
    case SL_FRAME_START:
    case SL_FRAME_STOP: {
        sl_msg_t m;
        memset(&m, 0, sizeof m);
        m.type = f->type == SL_FRAME_START ? SL_MSG_START : SL_MSG_STOP;
        snprintf(m.node, sizeof m.node, "%s", n->id);
        snprintf(m.task, sizeof m.task, "%s", f->task);
        snprintf(m.changefeed, sizeof m.changefeed, "%s", f->changefeed);
        m.op_id = f->op_id;
        m.kind = (sl_task_kind_t)f->kind;
        m.weight = f->weight;
        m.removed = f->state == 1; /* START or STOP of a deleted changefeed's maintainer */
        sl_agent_coord_msg(n->agent, &m, now);
        break;
    }
    case SL_FRAME_DRAIN: {
        sl_msg_t m;
        memset(&m, 0, sizeof m);
        m.type = SL_MSG_DRAIN;
        snprintf(m.node, sizeof m.node, "%s", n->id);
        snprintf(m.target, sizeof m.target, "%s", f->target);
        m.epoch = f->epoch;
        uint64_t before = sl_agent_drain_epoch(n->agent);
        sl_agent_coord_msg(n->agent, &m, now);
        if (sl_agent_drain_epoch(n->agent) != before) {
            char e[32];
            snprintf(e, sizeof e, "%" PRIu64, f->epoch);
            sl_log(SL_LOG_INFO, "drain notice", "target", f->target, "epoch", e, NULL);
        }
        break;
    }
    case SL_FRAME_VIEW: {
        sl_agent_node_t *v = calloc(f->nitems ? f->nitems : 1, sizeof *v);
        if (!v) break;
        for (size_t i = 0; i < f->nitems; i++) {
            v[i].id = f->items[i].id;
            v[i].node_epoch = f->items[i].value64;
            uint32_t l = f->items[i].value & 0xff; /* bit 8: cordoned (coord.c view_frame) */
            v[i].liveness = l <= SL_STOPPING ? (sl_liveness_t)l : SL_STOPPING;
            v[i].cordoned = (f->items[i].value >> 8) & 1;
        }
        sl_liveness_t before = sl_agent_liveness(n->agent);
        sl_agent_view(n->agent, f->view_version, v, f->nitems, f->target, f->epoch, now);
        free(v);
        if (sl_agent_liveness(n->agent) != before)
            sl_log(SL_LOG_INFO, "liveness changed", "liveness",
                   sl_liveness_name(sl_agent_liveness(n->agent)), NULL);
        break;
    }
    case SL_FRAME_HEARTBEAT: /* the coordinator is alive; last_rx_ms says so */
        break;
    case SL_FRAME_AGENT: {
        sl_agent_msg_t m;
        memset(&m, 0, sizeof m);
        m.type = (sl_agent_msg_type_t)f->amsg;
        snprintf(m.from, sizeof m.from, "%s", f->from);
        snprintf(m.to, sizeof m.to, "%s", f->to);
        snprintf(m.task, sizeof m.task, "%s", f->task);
        snprintf(m.changefeed, sizeof m.changefeed, "%s", f->changefeed);
        m.state = f->state ? SL_REPORT_STOPPED : SL_REPORT_WORKING;
        m.node_epoch = f->node_epoch;
        m.epoch = f->epoch;
        m.issuer = f->issuer;
        m.remaining = f->remaining;
        sl_agent_item_t *items = NULL;
        if (f->nitems) {
            items = calloc(f->nitems, sizeof *items);
            if (!items) break;
            for (size_t i = 0; i < f->nitems; i++) {
                memcpy(items[i].id, f->items[i].id, sizeof items[i].id);
                items[i].count = f->items[i].value;
            }
        }
        m.items = items;
        m.nitems = f->nitems;
        sl_agent_recv(n->agent, &m, now);
        free(items);
        break;
    }
    default:
        sl_log(SL_LOG_DEBUG, "frame ignored", "type", sl_proto_type_name(f->type), NULL);
        break;
    }
}

/* ---- the connection ------------------------------------------------------------------------ */

static void conn_closed(uv_handle_t *h)
{
    nconn_t *k = h->data;
    sl_node_t *n = k->node;
    sl_proto_reader_free(&k->rd);
    free(k);
    node_release(n);
}

static void on_reconnect(uv_timer_t *t)
{
    connect_now(t->data);
}

static void schedule_reconnect(sl_node_t *n)
{
    if (n->closing) return;
    uint64_t b = n->backoff_ms ? n->backoff_ms : n->cfg.reconnect_min_ms;
    if (n->coord_gone && n->bootstrap_ms && b > n->bootstrap_ms / 20)
        b = n->bootstrap_ms / 20 > n->cfg.reconnect_min_ms ? n->bootstrap_ms / 20 : n->cfg.reconnect_min_ms;
    /* jitter: between half and all of the backoff, so restarted nodes do not stampede */
    uint64_t wait = b / 2 + (uint64_t)(rand() % (int)(b / 2 + 1));
    n->backoff_ms = b * 2 > n->cfg.reconnect_max_ms ? n->cfg.reconnect_max_ms : b * 2;
    uv_timer_start(&n->reconnect, on_reconnect, wait, 0);
}

static void conn_drop(sl_node_t *n, const char *why)
{
    nconn_t *k = n->conn;
    if (!k || k->closing) return;
    k->closing = 1;
    if (n->ready && !n->closing && n->leaving)
        sl_log(SL_LOG_WARN, "disconnected from the coordinator while leaving: the tasks keep "
               "running here and this node reconnects to be drained", "reason", why, NULL);
    else if (n->ready && !n->closing)
        sl_log(SL_LOG_WARN, "disconnected from the coordinator", "reason", why, NULL);
    else if (!n->closing)
        sl_log(SL_LOG_DEBUG, "connection attempt failed", "reason", why, NULL);
    n->ready = 0;
    n->conn = NULL;
    n->olen = 0;
    k->tcp.data = k;
    n->open_handles++;
    uv_close((uv_handle_t *)&k->tcp, conn_closed);
    schedule_reconnect(n);
    write_state(n);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    nconn_t *k = h->data;
    uint8_t *at;
    size_t room;
    sl_proto_reader_room(&k->rd, 64 * 1024, &at, &room);
    *buf = uv_buf_init((char *)at, (unsigned)room);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    nconn_t *k = s->data;
    sl_node_t *n = k->node;
    if (nread < 0) {
        n->coord_closed = nread == UV_EOF && n->ready;
        if (n->coord_closed) n->closed_ms = now_ms(n);
        conn_drop(n, nread == UV_EOF ? "closed by the coordinator" : uv_strerror((int)nread));
        return;
    }
    k->rd.len += (size_t)nread;
    while (!k->closing) {
        sl_frame_t f;
        memset(&f, 0, sizeof f);
        f.items = n->items;
        f.items_cap = SL_PROTO_LIST_MAX;
        const uint8_t *raw;
        size_t rawlen;
        char why[256] = "";
        int rc = sl_proto_reader_next(&k->rd, &f, &raw, &rawlen, why, sizeof why);
        if (rc == SL_EAGAIN) break;
        if (rc) {
            sl_log(SL_LOG_WARN, "bad frame from the coordinator", "error", why, NULL);
            conn_drop(n, "bad frame");
            break;
        }
        on_frame(n, &f);
    }
    pump(n);
}

static void on_connect(uv_connect_t *req, int status)
{
    nconn_t *k = req->data;
    sl_node_t *n = k->node;
    if (k->closing) return;
    if (status == UV_ECONNREFUSED && n->coord_closed) {
        if (!n->coord_gone && running_tasks(n) > 0) {
            char grace[32];
            snprintf(grace, sizeof grace, "%" PRIu64, n->bootstrap_ms * 6 / 10);
            sl_log(SL_LOG_WARN, "the coordinator is not running: the tasks keep running here "
                   "while a restarted one would still wait for this node's report", "grace_ms",
                   grace, NULL);
        }
        n->coord_gone = 1;
    }
    if (status < 0) {
        conn_drop(n, uv_strerror(status));
        return;
    }
    k->connected = 1;
    uv_tcp_nodelay(&k->tcp, 1);
    uv_tcp_keepalive(&k->tcp, 1, 10);
    sl_frame_t f;
    memset(&f, 0, sizeof f);
    f.type = SL_FRAME_HELLO;
    f.version = SL_PROTO_VERSION;
    snprintf(f.token, sizeof f.token, "%s", n->token);
    snprintf(f.node, sizeof f.node, "%s", n->id);
    snprintf(f.addr, sizeof f.addr, "%s", n->addr);
    f.node_epoch = n->node_epoch;
    f.state = sl_agent_liveness(n->agent) == SL_STOPPING; /* a Stopping node stays so (D4) */
    n->olen = 0;
    queue_frame(n, &f);
    flush_out(n);
    if (n->conn == k) uv_read_start((uv_stream_t *)&k->tcp, on_alloc, on_read);
}

static void connect_now(sl_node_t *n)
{
    if (n->closing || n->conn) return; /* a leaving node reconnects too: it is drained then */
    nconn_t *k = calloc(1, sizeof *k);
    if (!k) {
        schedule_reconnect(n);
        return;
    }
    k->node = n;
    uv_tcp_init(n->loop, &k->tcp);
    k->tcp.data = k;
    k->req.data = k;
    k->opened_ms = now_ms(n);
    n->conn = k;
    int rc = uv_tcp_connect(&k->req, &k->tcp, (struct sockaddr *)&n->sa, on_connect);
    if (rc) conn_drop(n, uv_strerror(rc));
}

/* Tasks that exist here: starting, running or stopping. */
static size_t running_tasks(sl_node_t *n)
{
    size_t running = 0, total = sl_agent_task_count(n->agent);
    for (size_t i = 0; i < total; i++) {
        sl_agent_task_t t;
        sl_agent_task_state_t st;
        if (sl_agent_task_at(n->agent, i, &t, &st) == 0 && st != SL_AGENT_STOPPED) running++;
    }
    return running;
}

/* Whether a graceful shutdown may end now, and why. Out of reach of the coordinator, the
 * node waits for it (and reconnects) as long as a task runs here: a coordinator back within
 * the deadline drains it. */
static const char *leave_outcome(sl_node_t *n, uint64_t now)
{
    size_t running = running_tasks(n);
    int stopping = sl_agent_liveness(n->agent) == SL_STOPPING;
    if (stopping && running == 0) return "drained";
    if (stopping && strcmp(sl_agent_drain_target(n->agent), n->id) != 0)
        return "stopping; no drain of this node to wait for";
    if (!n->ready && running == 0) {
        if (!n->leave_lost)
            return "nothing to drain: no task runs here (the coordinator is out of reach)";
        snprintf(n->leave_why, sizeof n->leave_why, "nothing left to drain: %s", n->leave_lost);
        return n->leave_why;
    }
    if (now >= n->leave_deadline_ms)
        return n->ready ? "timed out" : "timed out; the coordinator is out of reach";
    return NULL;
}

static void check_leave(sl_node_t *n, uint64_t now)
{
    if (!n->leaving || n->closing) return;
    const char *why = leave_outcome(n, now);
    if (!why) return;
    n->leaving = 0;
    n->leave_done(n->leave_arg, why); /* may close the node: nothing after this */
}

/* O5: a node that has not heard from the coordinator for most of the node timeout may be
 * declared dead there and its tasks started elsewhere (a partition, a frozen coordinator
 * or proxy, a connection that is up but carries nothing). It stops them all first: it
 * becomes a new incarnation that runs nothing and reconnects as such. */
static void fence(sl_node_t *n, uint64_t now)
{
    if (!n->last_rx_ms || !n->fence_ms || now - n->last_rx_ms < n->fence_ms) return;
    if (n->coord_gone && now - n->closed_ms < n->bootstrap_ms * 6 / 10) return;
    size_t running = running_tasks(n);
    if (running == 0) return;
    char silent[32], count[32];
    snprintf(silent, sizeof silent, "%" PRIu64, now - n->last_rx_ms);
    snprintf(count, sizeof count, "%zu", running);
    sl_log(SL_LOG_WARN, "no word from the coordinator: stopping every task here so that none "
           "runs twice (O5)", "silent_ms", silent, "tasks", count, NULL);
    n->last_rx_ms = 0;
    if (restart_agent(n) != 0) return;
    if (n->leaving)
        n->leave_lost = "the O5 fence stopped every task here (no word from the coordinator)";
    if (n->conn) conn_drop(n, "the coordinator is silent");
    write_state(n);
}

static void on_tick(uv_timer_t *t)
{
    sl_node_t *n = t->data;
    uint64_t now = now_ms(n);
    if (n->conn && !n->ready && now - n->conn->opened_ms > WELCOME_TIMEOUT_MS)
        conn_drop(n, "no WELCOME in time");
    fence(n, now);
    sl_agent_tick(n->agent, now);
    pump(n);
    check_leave(n, now);
}

static void send_leaving(sl_node_t *n)
{
    sl_frame_t f;
    memset(&f, 0, sizeof f);
    f.type = SL_FRAME_LEAVING;
    snprintf(f.node, sizeof f.node, "%s", n->id);
    snprintf(f.reason, sizeof f.reason, "%s", n->leave_reason);
    int rc = queue_frame(n, &f);
    if (rc) sl_log(SL_LOG_WARN, "LEAVING not encoded", "error", sl_strerror(rc), NULL);
}

void sl_node_leave(sl_node_t *n, const char *reason, uint64_t timeout_ms,
                   void (*done)(void *arg, const char *why), void *arg)
{
    if (!n || n->closing || n->leaving) return;
    n->leave_done = done;
    n->leave_arg = arg;
    uint64_t now = now_ms(n);
    n->leave_deadline_ms = timeout_ms > UINT64_MAX - now ? UINT64_MAX : now + timeout_ms;
    n->leaving = 1;
    n->leave_lost = NULL;
    snprintf(n->leave_reason, sizeof n->leave_reason, "%s", reason ? reason : "");
    /* the connection, and the reconnect timer when there is none, go on: the coordinator
     * drains this node once it hears LEAVING, now or after the next WELCOME */
    if (n->ready) {
        send_leaving(n);
        flush_out(n);
    } else if (running_tasks(n) > 0) {
        sl_log(SL_LOG_INFO, "leaving: the coordinator is out of reach; the tasks keep running "
               "here until it is back to drain this node", NULL);
    }
    check_leave(n, now);
}

/* ---- lifetime -------------------------------------------------------------------------------- */

void sl_node_config_default(sl_node_config_t *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->coordinator = "127.0.0.1:8301";
    cfg->addr = "";
    cfg->task_latency_ms = 50;
    cfg->heartbeat_interval_ms = 1000;
    cfg->tick_ms = 50;
    cfg->reconnect_min_ms = 100;
    cfg->reconnect_max_ms = 5000;
}

static int resolve(const char *addr, struct sockaddr_storage *ss, char *err, size_t errlen)
{
    char host[256];
    const char *colon = strrchr(addr, ':');
    if (!colon || !colon[1]) goto bad;
    size_t hl = (size_t)(colon - addr);
    const char *h = addr;
    if (hl >= 2 && addr[0] == '[' && colon[-1] == ']') {
        h++;
        hl -= 2;
    }
    if (!hl || hl >= sizeof host) goto bad;
    memcpy(host, h, hl);
    host[hl] = 0;
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (*end || port <= 0 || port > 65535) goto bad;
    memset(ss, 0, sizeof *ss);
    if (uv_ip4_addr(host, (int)port, (struct sockaddr_in *)ss) == 0) return 0;
    if (uv_ip6_addr(host, (int)port, (struct sockaddr_in6 *)ss) == 0) return 0;
    {
        /* a host name: resolved once, synchronously, at start */
        uv_getaddrinfo_t req;
        struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
        if (uv_getaddrinfo(uv_default_loop(), &req, NULL, host, colon + 1, &hints) == 0 && req.addrinfo) {
            memcpy(ss, req.addrinfo->ai_addr, req.addrinfo->ai_addrlen);
            uv_freeaddrinfo(req.addrinfo);
            return 0;
        }
    }
bad:
    snprintf(err, errlen, "coordinator address %s: not HOST:PORT", addr);
    return SL_EINVAL;
}

int sl_node_start(uv_loop_t *loop, const sl_node_config_t *cfg, sl_node_t **out, char *err,
                  size_t errlen)
{
    *out = NULL;
    err[0] = 0;
    if (!cfg->id || !cfg->token || !cfg->coordinator) {
        snprintf(err, errlen, "node: id, token and coordinator are required");
        return SL_EINVAL;
    }
    sl_node_t *n = calloc(1, sizeof *n);
    if (!n) return SL_ENOMEM;
    n->loop = loop;
    n->cfg = *cfg;
    if (!n->cfg.tick_ms) n->cfg.tick_ms = 50;
    if (!n->cfg.reconnect_min_ms) n->cfg.reconnect_min_ms = 100;
    if (n->cfg.reconnect_max_ms < n->cfg.reconnect_min_ms) n->cfg.reconnect_max_ms = n->cfg.reconnect_min_ms;
    n->coordinator = strdup(cfg->coordinator);
    n->id = strdup(cfg->id);
    n->token = strdup(cfg->token);
    n->addr = strdup(cfg->addr ? cfg->addr : "");
    n->state_file = cfg->state_file ? strdup(cfg->state_file) : NULL;
    n->items = calloc(SL_PROTO_LIST_MAX, sizeof *n->items);
    uv_update_time(loop);
    n->base_uv_ms = uv_now(loop);
    n->base_real_ms = real_ms();
    n->node_epoch = n->base_real_ms;
    srand((unsigned)(n->node_epoch ^ (uint64_t)getpid()));
    int rc = SL_ENOMEM;
    if (!n->coordinator || !n->id || !n->token || !n->addr || !n->items ||
        (cfg->state_file && !n->state_file))
        goto fail;
    if ((rc = resolve(n->coordinator, &n->sa, err, errlen)) != 0) goto fail;
    if (cfg->policy_path) {
        sl_policy_limits_t lim;
        sl_policy_limits_default(&lim);
        char e[SL_ERRMSG_MAX];
        if (sl_policy_lua_load(cfg->policy_path, &lim, &n->policy, e, sizeof e) != 0) {
            sl_log(SL_LOG_WARN, "policy not loaded: maintainers use the built-in policy", "error", e,
                   NULL);
        } else if (sl_policy_trial(n->policy, e, sizeof e) != 0) {
            /* P4: the same trial the coordinator runs before a policy goes live */
            sl_log(SL_LOG_WARN, "policy not loaded: maintainers use the built-in policy", "error", e,
                   NULL);
            sl_policy_free(n->policy);
            n->policy = NULL;
        }
    }
    if ((rc = new_agent(n, err, errlen)) != 0) goto fail;
    uv_timer_init(loop, &n->tick);
    uv_timer_init(loop, &n->reconnect);
    n->tick.data = n->reconnect.data = n;
    uv_timer_start(&n->tick, on_tick, n->cfg.tick_ms, n->cfg.tick_ms);
    char e[32];
    snprintf(e, sizeof e, "%" PRIu64, n->node_epoch);
    sl_log(SL_LOG_INFO, "node starting", "coordinator", n->coordinator, "node_epoch", e, NULL);
    connect_now(n);
    write_state(n);
    *out = n;
    return 0;
fail:
    sl_agent_free(n->agent);
    sl_policy_free(n->policy);
    free(n->items);
    free(n->coordinator);
    free(n->id);
    free(n->token);
    free(n->addr);
    free(n->state_file);
    free(n);
    return rc;
}

void sl_node_close(sl_node_t *n)
{
    if (!n || n->closing) return;
    /* the state file first says nothing runs here (the tasks end with the process), then
     * the coordinator hears it and may start them elsewhere at once */
    n->exiting = 1;
    write_state(n);
    if (n->ready) {
        /* L1/L3: the process ends and its tasks with it — said, so the coordinator places
         * them at once instead of after the node timeout. Only this word counts as an exit
         * there: a connection that merely closes (a reset) may leave tasks running here. */
        sl_frame_t f;
        memset(&f, 0, sizeof f);
        f.type = SL_FRAME_LEAVING;
        f.state = 1;
        snprintf(f.node, sizeof f.node, "%s", n->id);
        snprintf(f.reason, sizeof f.reason, "exiting");
        if (queue_frame(n, &f) == 0) flush_out(n);
    }
    n->ready = 0;
    write_state(n);
    n->closing = 1;
    n->open_handles++; /* held until the end of this function */
    if (n->conn) {
        nconn_t *k = n->conn;
        k->closing = 1;
        n->conn = NULL;
        k->tcp.data = k;
        n->open_handles++;
        uv_close((uv_handle_t *)&k->tcp, conn_closed);
    }
    while (n->pending) pend_unlink(n->pending);
    n->open_handles += 2;
    n->tick.data = n->reconnect.data = n;
    uv_close((uv_handle_t *)&n->tick, handle_closed);
    uv_close((uv_handle_t *)&n->reconnect, handle_closed);
    node_release(n);
}
