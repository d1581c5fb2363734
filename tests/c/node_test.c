/* node_test.c — a node process's graceful shutdown (L1) against a scripted coordinator on
 * loopback: a leaving node keeps its tasks and reconnects while the coordinator is away or
 * restarts, says LEAVING again after every WELCOME, and ends its shutdown only when it is
 * drained, when nothing runs there any more (the O5 fence stopped it all) or at the
 * deadline — never just because the coordinator is out of reach. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>
#include <uv.h>

#include "core/core.h"
#include "net/log.h"
#include "net/node.h"
#include "net/proto.h"
#include "tap.h"

/* ---- a scripted coordinator ------------------------------------------------------------- */

typedef struct {
    uv_loop_t *loop;
    uv_tcp_t server;
    int port;
    int up;         /* 0: every connection is closed at once (a coordinator that is away) */
    const char *reject; /* set: every HELLO is answered REJECT with this reason */
    uv_tcp_t *conn; /* the node's connection, once accepted */
    sl_proto_reader_t rd;
    uint64_t node_timeout_ms;
    /* what the node said */
    int hellos, leavings, leavings_on_conn, exits; /* exits: LEAVING state 1 */
    uint64_t hello_epoch;
    char leave_reason[SL_ERRMSG_MAX];
    /* the node's shutdown */
    int done_calls;
    char outcome[256];
} fake_t;

static sl_frame_item_t rx_items[SL_PROTO_LIST_MAX];

static void freed(uv_handle_t *h)
{
    free(h);
}

static void fake_drop(fake_t *c)
{
    if (!c->conn) return;
    uv_close((uv_handle_t *)c->conn, freed);
    c->conn = NULL;
    sl_proto_reader_free(&c->rd);
    memset(&c->rd, 0, sizeof c->rd);
}

static void on_written(uv_write_t *req, int status)
{
    free(req->data);
    free(req);
}

static void fake_send(fake_t *c, const sl_frame_t *f)
{
    if (!c->conn) return;
    uint8_t *buf = malloc(65536);
    size_t len = 0;
    if (!buf || sl_proto_encode(f, buf, 65536, &len) != 0) {
        free(buf);
        return;
    }
    uv_write_t *req = malloc(sizeof *req);
    req->data = buf;
    uv_buf_t b = uv_buf_init((char *)buf, (unsigned)len);
    uv_write(req, (uv_stream_t *)c->conn, &b, 1, on_written);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    fake_t *c = h->data;
    uint8_t *at;
    size_t room;
    sl_proto_reader_room(&c->rd, 64 * 1024, &at, &room);
    *buf = uv_buf_init((char *)at, (unsigned)room);
}

static void on_frame(fake_t *c, const sl_frame_t *f)
{
    if (f->type == SL_FRAME_HELLO && c->reject) {
        c->hellos++;
        sl_frame_t r = {.type = SL_FRAME_REJECT};
        snprintf(r.reason, sizeof r.reason, "%s", c->reject);
        fake_send(c, &r);
    } else if (f->type == SL_FRAME_HELLO) {
        c->hellos++;
        c->hello_epoch = f->node_epoch;
        sl_frame_t w = {.type = SL_FRAME_WELCOME, .version = SL_PROTO_VERSION,
                        .node_timeout_ms = c->node_timeout_ms};
        fake_send(c, &w);
    } else if (f->type == SL_FRAME_LEAVING && f->state == 1) {
        c->exits++;
    } else if (f->type == SL_FRAME_LEAVING) {
        c->leavings++;
        c->leavings_on_conn++;
        snprintf(c->leave_reason, sizeof c->leave_reason, "%s", f->reason);
    }
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    fake_t *c = s->data;
    if ((uv_tcp_t *)s != c->conn) return;
    if (nread < 0) {
        fake_drop(c);
        return;
    }
    c->rd.len += (size_t)nread;
    for (;;) {
        sl_frame_t f;
        memset(&f, 0, sizeof f);
        f.items = rx_items;
        f.items_cap = SL_PROTO_LIST_MAX;
        const uint8_t *raw;
        size_t rawlen;
        char why[256];
        if (sl_proto_reader_next(&c->rd, &f, &raw, &rawlen, why, sizeof why) != 0) break;
        on_frame(c, &f);
        if (!c->conn) break;
    }
}

static void on_connection(uv_stream_t *server, int status)
{
    fake_t *c = server->data;
    uv_tcp_t *k = calloc(1, sizeof *k);
    uv_tcp_init(c->loop, k);
    k->data = c;
    if (status < 0 || uv_accept(server, (uv_stream_t *)k) != 0 || !c->up || c->conn) {
        uv_close((uv_handle_t *)k, freed); /* away: the node's connection attempt fails */
        return;
    }
    c->conn = k;
    c->leavings_on_conn = 0;
    uv_read_start((uv_stream_t *)k, on_alloc, on_read);
}

static void fake_start(fake_t *c, uv_loop_t *loop, uint64_t node_timeout_ms)
{
    memset(c, 0, sizeof *c);
    c->loop = loop;
    c->up = 1;
    c->node_timeout_ms = node_timeout_ms;
    struct sockaddr_in sa;
    uv_ip4_addr("127.0.0.1", 0, &sa);
    uv_tcp_init(loop, &c->server);
    c->server.data = c;
    uv_tcp_bind(&c->server, (struct sockaddr *)&sa, 0);
    uv_listen((uv_stream_t *)&c->server, 16, on_connection);
    struct sockaddr_storage ss;
    int len = sizeof ss;
    uv_tcp_getsockname(&c->server, (struct sockaddr *)&ss, &len);
    c->port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

static void fake_stop(fake_t *c)
{
    fake_drop(c);
    uv_close((uv_handle_t *)&c->server, NULL);
}

/* START of a maintainer, as the coordinator places one */
static void fake_start_task(fake_t *c, const char *cf)
{
    sl_frame_t f = {.type = SL_FRAME_START, .kind = SL_TASK_MAINTAINER, .weight = 1, .op_id = 1};
    snprintf(f.node, sizeof f.node, "n1");
    snprintf(f.task, sizeof f.task, "%s", cf);
    snprintf(f.changefeed, sizeof f.changefeed, "%s", cf);
    fake_send(c, &f);
}

/* ---- the node under test ---------------------------------------------------------------- */

typedef struct {
    uv_loop_t loop;
    uv_timer_t pace; /* keeps the loop turning, so that a wait ends even with no node left */
    fake_t coord;
    sl_node_t *node;
    char state_file[64];
} world_t;

static void on_done(void *arg, const char *why)
{
    world_t *w = arg;
    w->coord.done_calls++;
    snprintf(w->coord.outcome, sizeof w->coord.outcome, "%s", why);
    sl_node_close(w->node); /* as `sluice agent` does */
    w->node = NULL;
}

static void on_pace(uv_timer_t *t)
{
}

static int world_start(world_t *w, uint64_t node_timeout_ms)
{
    memset(w, 0, sizeof *w);
    uv_loop_init(&w->loop);
    uv_timer_init(&w->loop, &w->pace);
    uv_timer_start(&w->pace, on_pace, 10, 10);
    fake_start(&w->coord, &w->loop, node_timeout_ms);
    snprintf(w->state_file, sizeof w->state_file, "/tmp/sluice-node-test-%d.json", (int)getpid());
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", w->coord.port);
    sl_node_config_t cfg;
    sl_node_config_default(&cfg);
    cfg.coordinator = addr;
    cfg.id = "n1";
    cfg.token = "t";
    cfg.state_file = w->state_file;
    cfg.task_latency_ms = 10;
    cfg.tick_ms = 10;
    cfg.heartbeat_interval_ms = 100;
    cfg.reconnect_min_ms = 20;
    cfg.reconnect_max_ms = 100;
    char err[256];
    return sl_node_start(&w->loop, &cfg, &w->node, err, sizeof err);
}

static void world_end(world_t *w)
{
    if (w->node) sl_node_close(w->node);
    w->node = NULL;
    fake_stop(&w->coord);
    uv_close((uv_handle_t *)&w->pace, NULL);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    uv_loop_close(&w->loop);
    unlink(w->state_file);
}

/* What the node's state file says: maintainers running there, connected or not. */
static int node_state(world_t *w, int *connected)
{
    json_t *o = json_load_file(w->state_file, 0, NULL);
    if (!o) return -1;
    int n = (int)json_array_size(json_object_get(o, "maintainers"));
    if (connected) *connected = json_is_true(json_object_get(o, "connected"));
    json_decref(o);
    return n;
}

static int state_is(world_t *w, int maintainers, int connected)
{
    int c = -1;
    return node_state(w, &c) == maintainers && c == connected;
}

/* Runs the loop until cond(w) holds or timeout_ms of real time passed. */
#define RUN_UNTIL(w, cond, timeout_ms)                                                         \
    ({                                                                                         \
        uint64_t until_ = uv_hrtime() / 1000000 + (timeout_ms);                                \
        while (!(cond) && uv_hrtime() / 1000000 < until_) uv_run(&(w)->loop, UV_RUN_ONCE);     \
        (cond);                                                                                \
    })

/* for when nothing should happen: the loop runs on for `ms` */
static void run_for(world_t *w, uint64_t ms)
{
    uint64_t until = uv_hrtime() / 1000000 + ms;
    while (uv_hrtime() / 1000000 < until) uv_run(&w->loop, UV_RUN_ONCE);
}

static int connected_running(world_t *w)
{
    if (!RUN_UNTIL(w, w->coord.hellos == 1 && w->coord.conn, 5000)) return 0;
    fake_start_task(&w->coord, "cf1");
    return RUN_UNTIL(w, state_is(w, 1, 1), 5000);
}

static void test_restart_mid_leave(void)
{
    world_t w;
    TAP_CHECK(world_start(&w, 10000) == 0, "node starts");
    TAP_CHECK(connected_running(&w), "the node connects and runs a maintainer");
    sl_node_leave(w.node, "SIGTERM", 30000, on_done, &w);
    TAP_CHECK(RUN_UNTIL(&w, w.coord.leavings == 1, 5000) &&
                  !strcmp(w.coord.leave_reason, "SIGTERM"),
              "L1: leaving says LEAVING with the reason");
    uint64_t epoch = w.coord.hello_epoch;
    /* the coordinator dies mid-drain and stays away a while */
    w.coord.up = 0;
    fake_drop(&w.coord);
    TAP_CHECK(RUN_UNTIL(&w, state_is(&w, 1, 0), 5000), "the node sees the connection go");
    run_for(&w, 300);
    TAP_CHECK(w.coord.done_calls == 0 && state_is(&w, 1, 0),
              "L1: a leaving node whose coordinator is away keeps its task and waits");
    w.coord.up = 1; /* the restarted coordinator */
    TAP_CHECK(RUN_UNTIL(&w, w.coord.leavings_on_conn == 1 && w.coord.conn, 5000),
              "L1: after reconnecting it says LEAVING again, after WELCOME");
    TAP_CHECK(w.coord.hellos >= 2 && w.coord.hello_epoch == epoch,
              "A5: it came back as the same incarnation, its task still running");
    TAP_CHECK(w.coord.done_calls == 0, "L1: no outcome while the drain is to come");
    /* the new coordinator drains it: the task moves away, then the node is Stopping */
    sl_frame_t stop = {.type = SL_FRAME_STOP, .kind = SL_TASK_MAINTAINER, .op_id = 2};
    snprintf(stop.node, sizeof stop.node, "n1");
    snprintf(stop.task, sizeof stop.task, "cf1");
    snprintf(stop.changefeed, sizeof stop.changefeed, "cf1");
    fake_send(&w.coord, &stop);
    TAP_CHECK(RUN_UNTIL(&w, node_state(&w, NULL) == 0, 5000), "the task stops on STOP");
    sl_frame_item_t me = {.value = SL_STOPPING, .value64 = epoch};
    snprintf(me.id, sizeof me.id, "n1");
    sl_frame_t view = {.type = SL_FRAME_VIEW, .view_version = 1, .items = &me, .nitems = 1};
    fake_send(&w.coord, &view);
    TAP_CHECK(RUN_UNTIL(&w, w.coord.done_calls == 1, 5000) && !strcmp(w.coord.outcome, "drained"),
              "L1: the shutdown ends drained once the new coordinator drained it");
    world_end(&w);
}

static void test_signal_while_away(void)
{
    world_t w;
    TAP_CHECK(world_start(&w, 10000) == 0, "node starts");
    TAP_CHECK(connected_running(&w), "the node connects and runs a maintainer");
    w.coord.up = 0;
    fake_drop(&w.coord);
    TAP_CHECK(RUN_UNTIL(&w, state_is(&w, 1, 0), 5000), "the node sees the coordinator go");
    sl_node_leave(w.node, "SIGINT", 30000, on_done, &w);
    run_for(&w, 200);
    TAP_CHECK(w.coord.done_calls == 0 && state_is(&w, 1, 0),
              "L1: a signal while the coordinator is away does not end the node");
    w.coord.up = 1;
    TAP_CHECK(RUN_UNTIL(&w, w.coord.leavings == 1 && w.coord.conn, 5000) &&
                  !strcmp(w.coord.leave_reason, "SIGINT"),
              "L1: once the coordinator is back it hears LEAVING");
    TAP_CHECK(w.coord.done_calls == 0 && state_is(&w, 1, 1), "the task still runs there");
    world_end(&w);
}

static void test_fence_while_leaving(void)
{
    world_t w;
    TAP_CHECK(world_start(&w, 500) == 0, "node starts"); /* fences after 300 ms of silence */
    TAP_CHECK(connected_running(&w), "the node connects and runs a maintainer");
    w.coord.up = 0;
    fake_drop(&w.coord);
    sl_node_leave(w.node, "SIGTERM", 30000, on_done, &w);
    TAP_CHECK(w.coord.done_calls == 0, "L1: the node waits for its coordinator");
    TAP_CHECK(RUN_UNTIL(&w, w.coord.done_calls == 1, 5000) &&
                  strstr(w.coord.outcome, "nothing left to drain") &&
                  strstr(w.coord.outcome, "O5 fence"),
              "O5/L1: the fence still applies while leaving; then nothing is left to drain");
    TAP_CHECK(node_state(&w, NULL) == 0, "O5: every task stopped before the node ended");
    world_end(&w);
}

static void test_nothing_to_drain(void)
{
    world_t w;
    TAP_CHECK(world_start(&w, 10000) == 0, "node starts");
    w.coord.up = 0;
    sl_node_leave(w.node, "SIGTERM", 30000, on_done, &w);
    TAP_CHECK(w.coord.done_calls == 1 && !strncmp(w.coord.outcome, "nothing to drain", 16),
              "L1: with no task and no coordinator, the node ends at once and says why");
    world_end(&w);
}

static void test_deadline_while_away(void)
{
    world_t w;
    TAP_CHECK(world_start(&w, 10000) == 0, "node starts");
    TAP_CHECK(connected_running(&w), "the node connects and runs a maintainer");
    w.coord.up = 0;
    fake_drop(&w.coord);
    sl_node_leave(w.node, "SIGTERM", 300, on_done, &w);
    TAP_CHECK(RUN_UNTIL(&w, w.coord.done_calls == 1, 5000) &&
                  !strcmp(w.coord.outcome, "timed out; the coordinator is out of reach"),
              "L1: a coordinator that does not come back in time: the deadline ends it");
    world_end(&w);
}

/* O5: a coordinator that only rejects this node (a token rotated, the id taken by another
 * process) says nothing for its tasks: the fence still fires on time */
static void test_rejects_do_not_hold_the_fence(void)
{
    world_t w;
    TAP_CHECK(world_start(&w, 500) == 0, "node starts"); /* fences after 300 ms of silence */
    TAP_CHECK(connected_running(&w), "the node connects and runs a maintainer");
    w.coord.reject = "node n1 is already connected";
    int hellos = w.coord.hellos;
    fake_drop(&w.coord);
    TAP_CHECK(RUN_UNTIL(&w, w.coord.hellos >= hellos + 2 && state_is(&w, 0, 0), 5000),
              "O5: rejected again and again, it still stops its tasks once the fence is due");
    world_end(&w);
}

/* L1/L3: a node that closes says its process ends, before its connection closes — the
 * coordinator takes only this word for an exit, never a connection that merely closed */
static void test_close_says_exiting(void)
{
    world_t w;
    TAP_CHECK(world_start(&w, 10000) == 0, "node starts");
    TAP_CHECK(connected_running(&w), "the node connects and runs a maintainer");
    TAP_CHECK(w.coord.exits == 0, "L1: no exit is said while it runs");
    sl_node_close(w.node);
    w.node = NULL;
    TAP_CHECK(RUN_UNTIL(&w, w.coord.exits == 1 && !w.coord.conn, 5000),
              "L1: closing says LEAVING state 1 (exiting), then the connection closes");
    world_end(&w);
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    sl_log_set_level(sl_log_level_parse("error"));
    test_restart_mid_leave();
    test_signal_while_away();
    test_fence_while_leaving();
    test_nothing_to_drain();
    test_deadline_while_away();
    test_close_says_exiting();
    test_rejects_do_not_hold_the_fence();
    return TAP_DONE();
}
