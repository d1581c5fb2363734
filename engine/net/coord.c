/* coord.c — the coordinator's event loop: HTTP routes, the node listener, the store, the
 * core and its tick timer (SPEC A1–A8, D1–D13; see coord.h).
 *
 * Shape: one handler per event. Each feeds the core and ends in after_event(), which
 * writes the core's outbox to the nodes (S4: a finished move refills its batch at once),
 * sends a new cluster view when membership, liveness or the drain changed (D5), and logs
 * the drain's transitions (A8). Node connections are read as length-prefixed frames
 * (proto.h); a connection that lies about a length, sends garbage, skips the handshake or
 * stops reading is closed, never waited for. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "../core/core.h"
#include "../policy/policy.h"
#include "../policy/registry.h"
#include "../store/store.h"
#include "coord.h"
#include "http.h"
#include "log.h"
#include "proto.h"
#include "repl.h"

#define HELLO_TIMEOUT_MS 10000
#define NODE_WRITE_QUEUE_MAX (64u << 20) /* a node that stops reading is cut off here */
#define POLICY_DEBOUNCE_MS 100
#define REPL_SOCKET "repl.sock"
#define TABLE_COUNT_MAX 1000000

typedef struct conn conn_t;

struct conn {
    uv_tcp_t tcp;
    sl_coord_t *coord;
    conn_t *next;
    sl_proto_reader_t rd;
    uint8_t *obuf; /* frames queued during one event, written at its end */
    size_t olen, ocap;
    char node[SL_ID_MAX]; /* "" until HELLO */
    char peer[64];        /* remote address, for logs */
    uint64_t node_epoch;
    uint64_t opened_ms;
    int welcomed;
    int closing;
    int node_exiting; /* the node said its process ends (LEAVING state 1): nothing runs there */
    char hello_node[SL_ID_MAX]; /* the id its HELLO named, for the log of a refusal */
    int bootstrap_reported; /* the first heartbeat after HELLO adopts what the node runs */
};

typedef struct {
    char id[SL_ID_MAX];
    uint64_t node_epoch;
    uint64_t last_heartbeat_ms;
    conn_t *conn; /* NULL while disconnected */
    int dead;     /* the core declared this incarnation dead: it may come back only anew */
    int leaving;  /* it said LEAVING (L1 graceful shutdown): drain it, then let it go */
    int leave_waiting; /* its drain cannot start yet (logged once) */
    int leave_started; /* its drain started: not started again (an operator may cancel it) */
} peer_t;

typedef struct {
    uv_write_t req;
    uv_buf_t buf;
} write_req_t;

struct sl_coord {
    uv_loop_t *loop;
    sl_coord_config_t cfg;
    char *listen, *node_listen, *data_dir, *policy_dir, *policy_file, *token;
    char db_path[1024];
    int lock_fd; /* <data>/LOCK, flock'ed while this coordinator owns the directory */

    sl_core_t *core;
    sl_store_t *store;

    /* the live policy (P4): the registry loads, watches and swaps it; the core borrows it */
    sl_policy_registry_t *reg;

    /* the REPL (R1): evaluated on this loop, served over TCP (token) and <data>/repl.sock */
    sl_repl_t *repl;
    sl_http_server_t *repl_http;
    sl_http_router_t repl_router;
    sl_http_route_t *repl_routes; /* the routes, all public: the 0600 socket is the guard */

    sl_http_server_t *http;
    sl_http_router_t router;
    uv_tcp_t node_listener;
    int node_port;
    uv_timer_t tick;

    conn_t *conns;
    peer_t *peers;
    size_t npeers, peers_cap;
    char (*cfs)[SL_ID_MAX]; /* changefeeds in creation order */
    size_t ncfs, cfs_cap;

    uint64_t base_real_ms, base_uv_ms;
    uint64_t view_version, view_sig, last_view_ms;
    uint64_t last_tick_ms, last_keepalive_ms;
    sl_frame_item_t *items; /* decode and encode buffer, SL_PROTO_LIST_MAX */

    /* P3: refusals said in the log, at most every REFUSAL_LOG_MS */
    uint64_t log_refusals, log_refusals_ms;

    /* what the logs last said about the drain */
    char log_target[SL_ID_MAX];
    uint64_t log_epoch;
    char log_blocked[256];
    uint64_t log_blocked_since;
    int log_blocked_said;

    /* B5: the last GET …/drain body, for one node, the core's version and the millisecond
     * it was built at; the same three give the same body (sl_core_version) */
    struct {
        char id[SL_ID_MAX];
        uint64_t version, now;
        char *body;
        size_t len;
    } drain_body;

    int open_handles; /* closed handles still to be called back */
    int closing;
};

static void after_event(sl_coord_t *c);
static void conn_close(conn_t *k, const char *why);

/* ---- small helpers ----------------------------------------------------------------------- */

static uint64_t now_ms(sl_coord_t *c)
{
    /* wall-clock based (drain records survive restarts, D4) but monotonic in-process */
    return c->base_real_ms + (uv_now(c->loop) - c->base_uv_ms);
}

static uint64_t real_ms(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (uint64_t)tv.tv_sec * 1000 + (uint64_t)tv.tv_usec / 1000;
}

static char *dupstr(const char *s)
{
    return s ? strdup(s) : NULL;
}

static int valid_id(const char *s)
{
    size_t n = s ? strlen(s) : 0;
    if (n == 0 || n >= SL_ID_MAX) return 0;
    for (const char *p = s; *p; p++) {
        unsigned char ch = (unsigned char)*p;
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '-' || ch == '_' || ch == '.'))
            return 0;
    }
    return 1;
}

static void iso_time(uint64_t ms, char *out, size_t len)
{
    time_t s = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&s, &tm);
    size_t n = strftime(out, len, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out + n, len - n, ".%03uZ", (unsigned)(ms % 1000));
}

/* Frees the coordinator once it is closing and the last closed handle has called back. */
static void coord_release(sl_coord_t *c)
{
    if (--c->open_handles > 0 || !c->closing) return;
    if (c->lock_fd >= 0) close(c->lock_fd);
    free(c->items);
    free(c->drain_body.body);
    free(c->cfs);
    free(c->peers);
    free(c->listen);
    free(c->node_listen);
    free(c->data_dir);
    free(c->policy_dir);
    free(c->policy_file);
    free(c->token);
    free(c->repl_routes);
    free(c);
}

static void handle_closed(uv_handle_t *h)
{
    coord_release(h->data);
}

static void close_handle(sl_coord_t *c, uv_handle_t *h)
{
    if (uv_is_closing(h)) return;
    h->data = c;
    c->open_handles++;
    uv_close(h, handle_closed);
}

/* ---- peers (the nodes that said HELLO) ------------------------------------------------------- */

static peer_t *peer_find(sl_coord_t *c, const char *id)
{
    for (size_t i = 0; i < c->npeers; i++)
        if (!strcmp(c->peers[i].id, id)) return &c->peers[i];
    return NULL;
}

static peer_t *peer_get(sl_coord_t *c, const char *id)
{
    peer_t *p = peer_find(c, id);
    if (p) return p;
    if (c->npeers == c->peers_cap) {
        size_t cap = c->peers_cap ? c->peers_cap * 2 : 16;
        peer_t *v = realloc(c->peers, cap * sizeof *v);
        if (!v) return NULL;
        c->peers = v;
        c->peers_cap = cap;
    }
    p = &c->peers[c->npeers++];
    memset(p, 0, sizeof *p);
    snprintf(p->id, sizeof p->id, "%s", id);
    return p;
}

static conn_t *peer_conn(sl_coord_t *c, const char *id)
{
    peer_t *p = peer_find(c, id);
    return p && p->conn && p->conn->welcomed && !p->conn->closing ? p->conn : NULL;
}

/* ---- writing frames ---------------------------------------------------------------------- */

static void on_written(uv_write_t *req, int status)
{
    write_req_t *w = (write_req_t *)req;
    free(w->buf.base);
    free(w);
}

static int conn_queue_bytes(conn_t *k, const void *p, size_t n)
{
    if (k->closing) return 0;
    if (k->olen + n > k->ocap) {
        size_t cap = k->ocap ? k->ocap : 4096;
        while (cap < k->olen + n) cap *= 2;
        uint8_t *b = realloc(k->obuf, cap);
        if (!b) return SL_ENOMEM;
        k->obuf = b;
        k->ocap = cap;
    }
    memcpy(k->obuf + k->olen, p, n);
    k->olen += n;
    return 0;
}

static int conn_queue(conn_t *k, const sl_frame_t *f)
{
    if (k->closing) return 0;
    for (int attempt = 0; attempt < 2; attempt++) {
        size_t len = k->olen;
        int rc = sl_proto_encode(f, k->obuf ? k->obuf : (uint8_t *)"", k->obuf ? k->ocap : 0, &len);
        if (rc == 0) {
            k->olen = len;
            return 0;
        }
        if (rc != SL_ELIMIT) return rc;
        size_t cap = k->ocap ? k->ocap * 2 : 4096;
        while (cap < k->olen + 64 * 1024 && cap < k->olen + SL_PROTO_FRAME_MAX + 8) cap *= 2;
        if (attempt) cap = k->olen + SL_PROTO_FRAME_MAX + 8;
        uint8_t *b = realloc(k->obuf, cap);
        if (!b) return SL_ENOMEM;
        k->obuf = b;
        k->ocap = cap;
    }
    return SL_ELIMIT;
}

static void conn_flush(conn_t *k)
{
    if (k->closing || !k->olen) return;
    if (uv_stream_get_write_queue_size((uv_stream_t *)&k->tcp) > NODE_WRITE_QUEUE_MAX) {
        conn_close(k, "node does not read its frames");
        return;
    }
    write_req_t *w = malloc(sizeof *w);
    if (!w) {
        conn_close(k, "out of memory");
        return;
    }
    w->buf = uv_buf_init((char *)k->obuf, (unsigned)k->olen);
    k->obuf = NULL;
    k->olen = k->ocap = 0;
    int rc = uv_write(&w->req, (uv_stream_t *)&k->tcp, &w->buf, 1, on_written);
    if (rc) {
        free(w->buf.base);
        free(w);
        conn_close(k, uv_strerror(rc));
    }
}

static void flush_all(sl_coord_t *c)
{
    for (conn_t *k = c->conns; k; k = k->next) conn_flush(k);
}

/* ---- the cluster view (D5; agent.h sl_agent_view) ------------------------------------------ */

static uint64_t view_signature(sl_coord_t *c)
{
    uint64_t h = 1469598103934665603ull;
#define MIX(v) (h = (h ^ (uint64_t)(v)) * 1099511628211ull)
    size_t n = sl_core_node_count(c->core);
    for (size_t i = 0; i < n; i++) {
        sl_node_info_t info;
        if (sl_core_node_at(c->core, i, &info)) continue;
        for (const char *p = info.id; *p; p++) MIX((unsigned char)*p);
        MIX(0x100 + info.liveness + (info.cordoned ? 0x10 : 0));
        peer_t *p = peer_find(c, info.id);
        MIX(p ? p->node_epoch : 0);
    }
    sl_core_stats_t st;
    sl_core_stats(c->core, &st);
    MIX(st.epoch);
    const char *t = sl_core_drain_target(c->core);
    for (const char *p = t ? t : ""; *p; p++) MIX((unsigned char)*p);
#undef MIX
    return h;
}

static void view_frame(sl_coord_t *c, sl_frame_t *f)
{
    memset(f, 0, sizeof *f);
    f->type = SL_FRAME_VIEW;
    f->view_version = c->view_version;
    const char *t = sl_core_drain_target(c->core);
    snprintf(f->target, sizeof f->target, "%s", t ? t : "");
    sl_core_stats_t st;
    sl_core_stats(c->core, &st);
    f->epoch = st.epoch;
    size_t n = sl_core_node_count(c->core);
    f->items = c->items;
    for (size_t i = 0; i < n && f->nitems < SL_PROTO_LIST_MAX; i++) {
        sl_node_info_t info;
        if (sl_core_node_at(c->core, i, &info)) continue;
        sl_frame_item_t *it = &c->items[f->nitems++];
        memset(it, 0, sizeof *it);
        snprintf(it->id, sizeof it->id, "%s", info.id);
        it->value = (uint32_t)info.liveness | (info.cordoned ? 0x100u : 0); /* L1 */
        peer_t *p = peer_find(c, info.id);
        it->value64 = p ? p->node_epoch : 0;
    }
}

/* At once when the view changed, and again every heartbeat interval. Never while the core
 * is bootstrapping (D4/A5): a partial node list would make maintainers give up the
 * dispatchers they have on nodes that have not reconnected yet. */
static void maybe_send_view(sl_coord_t *c, int force)
{
    if (sl_core_bootstrapping(c->core)) return;
    uint64_t sig = view_signature(c);
    if (!force && sig == c->view_sig && c->view_version) return;
    c->view_sig = sig;
    c->last_view_ms = now_ms(c);
    /* versions grow across coordinator restarts too: agents ignore older views */
    uint64_t v = real_ms();
    c->view_version = v > c->view_version ? v : c->view_version + 1;
    sl_frame_t f;
    view_frame(c, &f);
    for (conn_t *k = c->conns; k; k = k->next)
        if (k->welcomed && !k->closing) conn_queue(k, &f);
}

/* ---- the core's outbox ------------------------------------------------------------------- */

static int cf_index(sl_coord_t *c, const char *id);

static void send_outbox(sl_coord_t *c)
{
    size_t n;
    const sl_msg_t *out = sl_core_outbox(c->core, &n);
    for (size_t i = 0; i < n; i++) {
        const sl_msg_t *m = &out[i];
        conn_t *k = peer_conn(c, m->node);
        if (!k) {
            sl_log(SL_LOG_DEBUG, "message for a disconnected node dropped", "node", m->node,
                   "task", m->task, NULL);
            continue;
        }
        sl_frame_t f;
        memset(&f, 0, sizeof f);
        snprintf(f.node, sizeof f.node, "%s", m->node);
        if (m->type == SL_MSG_DRAIN) {
            f.type = SL_FRAME_DRAIN;
            snprintf(f.target, sizeof f.target, "%s", m->target);
            f.epoch = m->epoch;
        } else {
            f.type = m->type == SL_MSG_START ? SL_FRAME_START : SL_FRAME_STOP;
            snprintf(f.task, sizeof f.task, "%s", m->task);
            snprintf(f.changefeed, sizeof f.changefeed, "%s", m->changefeed);
            f.kind = (uint8_t)m->kind;
            f.weight = m->weight;
            f.op_id = m->op_id;
            /* a maintainer of a deleted changefeed: stopped, it takes its dispatchers
             * along; started (its node died before it swept), it starts only to sweep */
            f.state = m->kind == SL_TASK_MAINTAINER && cf_index(c, m->changefeed) < 0;
            if (sl_log_enabled(SL_LOG_DEBUG))
                sl_logf(SL_LOG_DEBUG, m->type == SL_MSG_START ? "start sent" : "stop sent",
                        "node=%s task=%s op=%" PRIu64, m->node, m->task, m->op_id);
        }
        conn_queue(k, &f);
    }
    sl_core_outbox_clear(c->core);
}

/* A8: the drain's transitions, said once each. */
static void log_drain(sl_coord_t *c)
{
    sl_core_stats_t st;
    sl_core_stats(c->core, &st);
    const char *t = sl_core_drain_target(c->core);
    char epoch[32];
    snprintf(epoch, sizeof epoch, "%" PRIu64, st.epoch);
    if (st.epoch != c->log_epoch) {
        if (t && strcmp(t, c->log_target) != 0) {
            sl_log(SL_LOG_INFO, "drain started", "target", t, "epoch", epoch, NULL);
        } else if (!t && c->log_target[0]) {
            sl_drain_status_t s;
            const char *state = "ended", *why = NULL;
            if (sl_core_drain_status(c->core, c->log_target, now_ms(c), &s) == 0) {
                state = sl_drain_state_name(s.state);
                if (s.blocked && s.blocked[0]) why = s.blocked; /* L4, D9 */
            }
            /* (a reason only when there is one: the key ends the list otherwise) */
            sl_log(s.state == SL_DRAIN_LOST ? SL_LOG_WARN : SL_LOG_INFO, "drain ended", "target",
                   c->log_target, "state", state, "epoch", epoch, why ? "reason" : NULL, why, NULL);
        }
        snprintf(c->log_target, sizeof c->log_target, "%s", t ? t : "");
        c->log_epoch = st.epoch;
    }
    /* D10: a drain that stays blocked for a second is worth a warning; the short waits of
     * every batch (acks, reports) are not */
    const char *blocked = "";
    sl_drain_status_t s;
    if (t && sl_core_drain_status(c->core, t, now_ms(c), &s) == 0 && s.blocked) blocked = s.blocked;
    uint64_t now = now_ms(c);
    if (strcmp(blocked, c->log_blocked) != 0) {
        if (!blocked[0] && c->log_blocked_said && t)
            sl_log(SL_LOG_INFO, "drain unblocked", "target", t, NULL);
        snprintf(c->log_blocked, sizeof c->log_blocked, "%s", blocked);
        c->log_blocked_since = now;
        c->log_blocked_said = 0;
    } else if (blocked[0] && !c->log_blocked_said && now >= c->log_blocked_since + 1000) {
        sl_log(SL_LOG_WARN, "drain blocked", "target", t, "reason", blocked, NULL);
        c->log_blocked_said = 1;
    }
}

static void after_event(sl_coord_t *c)
{
    if (c->closing) return;
    send_outbox(c);
    uint64_t hb = c->cfg.heartbeat_interval_ms ? c->cfg.heartbeat_interval_ms : 1000;
    maybe_send_view(c, now_ms(c) >= c->last_view_ms + hb);
    flush_all(c);
    log_drain(c);
}

/* ---- node connections ---------------------------------------------------------------------- */

static void conn_free_cb(uv_handle_t *h)
{
    conn_t *k = h->data;
    sl_coord_t *c = k->coord;
    sl_proto_reader_free(&k->rd);
    free(k->obuf);
    free(k);
    coord_release(c);
}

static void conn_close(conn_t *k, const char *why)
{
    if (k->closing) return;
    sl_coord_t *c = k->coord;
    k->closing = 1;
    if (k->node[0]) {
        peer_t *p = peer_find(c, k->node);
        if (p && p->conn == k) p->conn = NULL;
        if (p && p->conn == NULL && k->node_exiting && !c->closing) {
            /* its process said it ends, then closed: its tasks ended with it and are placed
             * again now (L3 at once). Any other close — a reset, a bad frame, a full write
             * queue — goes the usual way: the node may still run its tasks, and only the
             * node timeout (which its own O5 fence undercuts) lets them run elsewhere. */
            sl_log(SL_LOG_INFO, p->leaving ? "node left after a graceful shutdown" : "node exited",
                   "node", k->node, NULL);
            p->leaving = 0;
            p->dead = 1;
            sl_core_node_leave(c->core, k->node);
        } else if (!c->closing) {
            sl_log(SL_LOG_INFO, "node disconnected", "node", k->node, "reason", why, NULL);
        }
    } else if (!c->closing) {
        sl_log(SL_LOG_DEBUG, "connection closed", "peer", k->peer, "reason", why, NULL);
    }
    for (conn_t **pp = &c->conns; *pp; pp = &(*pp)->next) {
        if (*pp == k) {
            *pp = k->next;
            break;
        }
    }
    k->tcp.data = k;
    c->open_handles++;
    uv_close((uv_handle_t *)&k->tcp, conn_free_cb);
}

static void reject(conn_t *k, const char *fmt, ...)
{
    sl_frame_t f;
    memset(&f, 0, sizeof f);
    f.type = SL_FRAME_REJECT;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(f.reason, sizeof f.reason, fmt, ap);
    va_end(ap);
    sl_log(SL_LOG_WARN, "node rejected", "peer", k->peer, "node", k->hello_node, "reason",
           f.reason, NULL);
    conn_queue(k, &f);
    conn_flush(k);
    conn_close(k, "rejected");
}

/* A5: the core declared this node dead while its process lives on. Its tasks were placed
 * elsewhere, so it must not come back with them: it is told to restart as a new
 * incarnation (a new node epoch, nothing running), then disconnected. */
static void expel(conn_t *k)
{
    sl_log(SL_LOG_WARN, "node declared dead: expelled", "node", k->node, NULL);
    reject(k, "expelled: declared dead after its silence; restart with a new node epoch");
}

static void on_hello(conn_t *k, const sl_frame_t *f)
{
    sl_coord_t *c = k->coord;
    if (f->version != SL_PROTO_VERSION) {
        reject(k, "protocol version %u, this coordinator speaks %u", f->version, SL_PROTO_VERSION);
        return;
    }
    if (!sl_http_ct_equal(f->token, strlen(f->token), c->token, strlen(c->token))) {
        reject(k, "wrong token");
        return;
    }
    if (!valid_id(f->node)) {
        reject(k, "node id '%s' is not valid (1-63 of A-Z a-z 0-9 - _ .)", f->node);
        return;
    }
    snprintf(k->node, sizeof k->node, "%s", f->node);
    snprintf(k->hello_node, sizeof k->hello_node, "%s", f->node);
    k->node_epoch = f->node_epoch;
    uint64_t now = now_ms(c);
    peer_t *p = peer_find(c, f->node);
    if (p && p->dead && p->node_epoch == f->node_epoch) {
        k->node[0] = 0; /* not this peer's connection */
        reject(k, "expelled: node %s was declared dead; restart with a new node epoch", f->node);
        return;
    }
    /* A5: one process per node id. An older incarnation than the one seen is a stale or
     * second process; a new one while the connected one still heartbeats is a second agent
     * started with the same --id. Letting either in makes the two take turns, each
     * "restart" running tasks the other still runs. A connected process that has gone
     * silent (it died and its connection is half-open) is replaced as a restart. */
    if (p && f->node_epoch < p->node_epoch && !(p->dead && !p->conn)) {
        /* superseded: a newer process took this id and this one's tasks were placed
         * elsewhere, so it must restart empty ("expelled", as a node declared dead). (A
         * dead id is let in: a restart after the wall clock stepped back is no duplicate.) */
        k->node[0] = 0;
        reject(k, "expelled: node %s: node epoch %" PRIu64 " is older than the one this "
                  "coordinator knows (%" PRIu64 "): is another agent running with --id %s?",
               f->node, f->node_epoch, p->node_epoch, f->node);
        return;
    }
    uint64_t hb = c->cfg.heartbeat_interval_ms ? c->cfg.heartbeat_interval_ms : 1000;
    if (p && p->conn && p->conn != k && p->node_epoch != f->node_epoch &&
        now - p->last_heartbeat_ms <= 2 * hb) {
        k->node[0] = 0;
        reject(k, "node %s is already connected (from %s, heard %" PRIu64 " ms ago): is another "
                  "agent running with --id %s?",
               f->node, p->conn->peer, now - p->last_heartbeat_ms, f->node);
        return;
    }
    sl_node_info_t info;
    int known = sl_core_node_info(c->core, f->node, &info) == 0;
    char epoch[32];
    snprintf(epoch, sizeof epoch, "%" PRIu64, f->node_epoch);
    if (p && p->conn && p->conn != k) {
        if (p->node_epoch == f->node_epoch) {
            conn_close(p->conn, "replaced by a new connection of the same node");
        } else {
            conn_close(p->conn, "the node restarted");
        }
    }
    if (known && p && p->node_epoch != f->node_epoch) {
        /* a restarted node: its old tasks died with it (leave), then it joins anew */
        sl_log(SL_LOG_INFO, "node restarted", "node", f->node, "node_epoch", epoch, NULL);
        sl_core_node_leave(c->core, f->node);
        known = 0;
    }
    if (!known) {
        /* a process that was never told it is Stopping is a new one: a Stopping mark kept
         * from before a coordinator restart is not its own (D4) */
        if (!f->state) sl_core_node_fresh(c->core, f->node);
        int rc = sl_core_node_join(c->core, f->node, f->addr[0] ? f->addr : k->peer);
        if (rc && rc != SL_EEXIST) {
            reject(k, "cannot join: %s", sl_strerror(rc));
            return;
        }
        sl_log(SL_LOG_INFO, "node joined", "node", f->node, "addr", f->addr[0] ? f->addr : k->peer,
               "node_epoch", epoch, NULL);
        /* D4/L5: a drained process that rejoins says it is Stopping — also after bootstrap,
         * when no stored mark is left to say so; it would refuse new tasks anyway */
        if (f->state && sl_core_liveness_cas(c->core, f->node, SL_ALIVE, SL_STOPPING) == 0)
            sl_log(SL_LOG_INFO, "node rejoined Stopping", "node", f->node, NULL);
    } else {
        sl_log(SL_LOG_INFO, "node reconnected", "node", f->node, "node_epoch", epoch, NULL);
    }
    if (!p) p = peer_get(c, f->node);
    if (!p) {
        reject(k, "out of memory");
        return;
    }
    /* the same process reconnecting keeps its shutdown as it was: an operator's cancel of
     * its drain stays obeyed when it says LEAVING again (L1) */
    if (p->node_epoch != f->node_epoch) p->leaving = p->leave_waiting = p->leave_started = 0;
    p->node_epoch = f->node_epoch;
    p->dead = 0;
    p->conn = k;
    p->last_heartbeat_ms = now;
    sl_core_heartbeat(c->core, f->node, 0, now);
    k->welcomed = 1;

    sl_frame_t w;
    memset(&w, 0, sizeof w);
    w.type = SL_FRAME_WELCOME;
    w.version = SL_PROTO_VERSION;
    w.node_timeout_ms = c->cfg.node_timeout_ms ? c->cfg.node_timeout_ms : 10000;
    w.bootstrap_ms = c->cfg.bootstrap_ms ? c->cfg.bootstrap_ms : w.node_timeout_ms;
    sl_core_stats_t st;
    sl_core_stats(c->core, &st);
    w.epoch = st.epoch;
    const char *t = sl_core_drain_target(c->core);
    snprintf(w.target, sizeof w.target, "%s", t ? t : "");
    conn_queue(k, &w);
    /* a new view for everyone (the node knows its peers before any task arrives), then
     * the drain (D5) */
    maybe_send_view(c, 1);
    sl_frame_t d;
    memset(&d, 0, sizeof d);
    d.type = SL_FRAME_DRAIN;
    snprintf(d.target, sizeof d.target, "%s", t ? t : "");
    d.epoch = st.epoch;
    conn_queue(k, &d);
}

/* A node says a maintainer runs that nobody here knows (a changefeed deleted while the
 * coordinator was away): it is stopped. */
static void stop_unknown(sl_coord_t *c, conn_t *k, const char *task)
{
    sl_frame_t f;
    memset(&f, 0, sizeof f);
    f.type = SL_FRAME_STOP;
    snprintf(f.node, sizeof f.node, "%s", k->node);
    snprintf(f.task, sizeof f.task, "%s", task);
    snprintf(f.changefeed, sizeof f.changefeed, "%s", task);
    f.kind = SL_TASK_MAINTAINER;
    /* no such changefeed (deleted, perhaps before a restart): its dispatchers go too */
    f.state = cf_index(c, task) < 0;
    sl_log(SL_LOG_WARN, "unknown maintainer stopped", "node", k->node, "task", task, NULL);
    conn_queue(k, &f);
}

static void on_report(conn_t *k, const char *task, int state)
{
    sl_coord_t *c = k->coord;
    int rc = sl_core_report(c->core, k->node, task, state ? SL_REPORT_STOPPED : SL_REPORT_WORKING,
                            now_ms(c));
    if (rc == SL_ENOENT && state == 0 && sl_core_node_info(c->core, k->node, &(sl_node_info_t){0}) == 0)
        stop_unknown(c, k, task);
}

static void on_heartbeat(conn_t *k, uint64_t acked_epoch, const sl_frame_t *f)
{
    sl_coord_t *c = k->coord;
    uint64_t now = now_ms(c);
    peer_t *p = peer_find(c, k->node);
    if (p) p->last_heartbeat_ms = now;
    if (sl_core_heartbeat(c->core, k->node, acked_epoch, now) == SL_ENOENT) {
        expel(k);
        return;
    }
    /* A5: what the node runs, adopted after a (re)connect or during a bootstrap */
    if (f && (!k->bootstrap_reported || sl_core_bootstrapping(c->core))) {
        for (size_t i = 0; i < f->nitems; i++) on_report(k, f->items[i].id, 0);
        k->bootstrap_reported = 1;
    }
}

static void on_cf_status(conn_t *k, const sl_frame_t *f)
{
    sl_coord_t *c = k->coord;
    sl_node_count_t by[SL_PROTO_LIST_MAX > 256 ? 256 : SL_PROTO_LIST_MAX];
    size_t n = f->nitems < sizeof by / sizeof *by ? f->nitems : sizeof by / sizeof *by;
    for (size_t i = 0; i < n; i++) by[i] = (sl_node_count_t){f->items[i].id, f->items[i].value};
    sl_core_changefeed_report(c->core, f->changefeed, f->epoch, f->remaining, by, n, now_ms(c));
}

/* L1 graceful shutdown of a node that said LEAVING: drain it like PUT …/drain would, so
 * its tasks move before it goes. While the drain cannot start (another drain runs, the
 * coordinator bootstraps, the store failed) it is tried again every tick. When nothing
 * could take its tasks (the last Alive node, or the coordinator's own node) it goes
 * Alive→Stopping: nothing new lands on it, and its tasks are placed again once it has
 * left. A drain is started once: if an operator cancels it, the node is left alone. */
static void try_leave(sl_coord_t *c, peer_t *p)
{
    sl_liveness_t l;
    if (p->leave_started || sl_core_liveness(c->core, p->id, &l) != 0 || l != SL_ALIVE)
        return; /* on its way, or an operator cancelled its drain */
    sl_drain_counts_t counts;
    int rc = sl_core_drain_start(c->core, p->id, now_ms(c), &counts);
    char m[16], d[16];
    snprintf(m, sizeof m, "%u", (unsigned)counts.maintainers);
    snprintf(d, sizeof d, "%u", (unsigned)counts.dispatchers);
    if (rc == 0) {
        p->leave_started = 1;
        sl_log(SL_LOG_INFO, "node leaving: drain started", "node", p->id, "maintainers", m,
               "dispatchers", d, NULL);
    } else if (rc == SL_ENOTENOUGH || rc == SL_ECOORDINATOR) {
        int cas = sl_core_liveness_cas(c->core, p->id, SL_ALIVE, SL_STOPPING);
        sl_log(SL_LOG_WARN, "node leaving without a drain: stopping it", "node", p->id, "reason",
               sl_strerror(rc), "cas", cas ? sl_strerror(cas) : "ok", NULL);
    } else {
        if (!p->leave_waiting)
            sl_log(SL_LOG_INFO, "node leaving: its drain cannot start yet; trying every tick",
                   "node", p->id, "reason",
                   rc == SL_EBUSY       ? "another drain runs"
                   : rc == SL_ENOTREADY ? "the coordinator is bootstrapping"
                                        : sl_strerror(rc),
                   NULL);
        p->leave_waiting = 1;
    }
}

static void on_leaving(conn_t *k, const sl_frame_t *f)
{
    sl_coord_t *c = k->coord;
    peer_t *p = peer_find(c, k->node);
    if (strcmp(f->node, k->node) != 0 || !p) {
        sl_log(SL_LOG_WARN, "LEAVING for another node dropped", "node", k->node, "for", f->node,
               NULL);
        return;
    }
    if (f->state == 1) { /* its process ends: acted on when the connection closes */
        k->node_exiting = 1;
        return;
    }
    sl_log(SL_LOG_INFO, "node asks to leave", "node", p->id, "reason", f->reason, NULL);
    p->leaving = 1;
    sl_core_node_cordon(c->core, p->id, 1); /* nothing new goes there while its drain waits */
    try_leave(c, p);
}

static void on_frame(conn_t *k, const sl_frame_t *f, const uint8_t *raw, size_t rawlen)
{
    sl_coord_t *c = k->coord;
    if (!k->welcomed) {
        if (f->type != SL_FRAME_HELLO) {
            reject(k, "expected HELLO, got %s", sl_proto_type_name(f->type));
            return;
        }
        on_hello(k, f);
        return;
    }
    switch (f->type) {
    case SL_FRAME_HEARTBEAT: on_heartbeat(k, f->epoch, NULL); break;
    case SL_FRAME_REPORT:
        if (f->kind == SL_TASK_MAINTAINER) on_report(k, f->task, f->state);
        break;
    case SL_FRAME_CF_STATUS: on_cf_status(k, f); break;
    case SL_FRAME_LEAVING: on_leaving(k, f); break;
    case SL_FRAME_AGENT:
        if (strcmp(f->from, k->node) != 0) {
            sl_log(SL_LOG_WARN, "agent message with a forged sender dropped", "node", k->node,
                   "from", f->from, NULL);
            break;
        }
        if (f->to[0]) { /* node to node: routed by id, unchanged */
            conn_t *dst = peer_conn(c, f->to);
            if (dst) conn_queue_bytes(dst, raw, rawlen);
            else sl_log(SL_LOG_DEBUG, "agent message for a disconnected node dropped", "from",
                        f->from, "to", f->to, NULL);
            break;
        }
        switch (f->amsg) {
        case 0: on_heartbeat(k, f->epoch, f); break;                       /* HEARTBEAT */
        case 1: on_report(k, f->task, f->state); break;                    /* REPORT */
        case 2: on_cf_status(k, f); break;                                 /* CF_REPORT */
        default: break;
        }
        break;
    default:
        sl_log(SL_LOG_DEBUG, "frame ignored", "node", k->node, "type",
               sl_proto_type_name(f->type), NULL);
        break;
    }
}

static void on_conn_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    conn_t *k = h->data;
    uint8_t *at;
    size_t room;
    sl_proto_reader_room(&k->rd, 64 * 1024, &at, &room);
    *buf = uv_buf_init((char *)at, (unsigned)room);
}

static void on_conn_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    conn_t *k = s->data;
    sl_coord_t *c = k->coord;
    if (nread < 0) {
        conn_close(k, nread == UV_EOF ? "closed by the node" : uv_strerror((int)nread));
        after_event(c);
        return;
    }
    if (nread == 0) return;
    k->rd.len += (size_t)nread;
    while (!k->closing) {
        sl_frame_t f;
        memset(&f, 0, sizeof f);
        f.items = c->items;
        f.items_cap = SL_PROTO_LIST_MAX;
        const uint8_t *raw;
        size_t rawlen;
        char why[256] = "";
        int rc = sl_proto_reader_next(&k->rd, &f, &raw, &rawlen, why, sizeof why);
        if (rc == SL_EAGAIN) break;
        if (rc) {
            sl_log(SL_LOG_WARN, "bad frame", "peer", k->peer, "node", k->node, "error", why, NULL);
            conn_close(k, "bad frame");
            break;
        }
        on_frame(k, &f, raw, rawlen);
    }
    after_event(c);
}

static void on_node_connection(uv_stream_t *server, int status)
{
    sl_coord_t *c = server->data;
    if (status < 0) return;
    conn_t *k = calloc(1, sizeof *k);
    if (!k) return;
    k->coord = c;
    if (uv_tcp_init(c->loop, &k->tcp)) {
        free(k);
        return;
    }
    k->tcp.data = k;
    if (uv_accept(server, (uv_stream_t *)&k->tcp)) {
        c->open_handles++;
        uv_close((uv_handle_t *)&k->tcp, conn_free_cb);
        return;
    }
    struct sockaddr_storage ss;
    int len = sizeof ss;
    if (uv_tcp_getpeername(&k->tcp, (struct sockaddr *)&ss, &len) == 0) {
        char ip[48] = "";
        if (ss.ss_family == AF_INET6) {
            uv_ip6_name((struct sockaddr_in6 *)&ss, ip, sizeof ip);
            snprintf(k->peer, sizeof k->peer, "[%s]:%d", ip, ntohs(((struct sockaddr_in6 *)&ss)->sin6_port));
        } else {
            uv_ip4_name((struct sockaddr_in *)&ss, ip, sizeof ip);
            snprintf(k->peer, sizeof k->peer, "%s:%d", ip, ntohs(((struct sockaddr_in *)&ss)->sin_port));
        }
    }
    uv_tcp_nodelay(&k->tcp, 1);
    uv_tcp_keepalive(&k->tcp, 1, 30);
    k->opened_ms = now_ms(c);
    k->next = c->conns;
    c->conns = k;
    uv_read_start((uv_stream_t *)&k->tcp, on_conn_alloc, on_conn_read);
}

/* ---- the tick ---------------------------------------------------------------------------- */

/* The coordinator itself stalled (stopped, swapped out, a frozen VM): the heartbeats the
 * nodes sent meanwhile wait unread in the sockets, so their silence is not theirs. Every
 * node still connected counts as heard from now; a node that is really gone is still
 * declared dead a node timeout later. */
static void forgive_stall(sl_coord_t *c, uint64_t now)
{
    uint64_t hb = c->cfg.heartbeat_interval_ms ? c->cfg.heartbeat_interval_ms : 1000;
    if (!c->last_tick_ms || now - c->last_tick_ms <= 2 * hb) return;
    char gap[32];
    snprintf(gap, sizeof gap, "%" PRIu64, now - c->last_tick_ms);
    sl_log(SL_LOG_WARN, "the coordinator stalled: connected nodes are not held to its silence",
           "stalled_ms", gap, NULL);
    for (size_t i = 0; i < c->npeers; i++) {
        peer_t *p = &c->peers[i];
        if (p->dead || !p->conn || !p->conn->welcomed || p->conn->closing) continue;
        p->last_heartbeat_ms = now;
        sl_core_heartbeat(c->core, p->id, 0, now);
    }
}

/* Every heartbeat interval each node hears from the coordinator, even while nothing
 * changes (and during bootstrap, when no view goes out): a node that hears nothing for
 * most of the node timeout stops its tasks before they are placed elsewhere (O5). */
static void send_keepalives(sl_coord_t *c, uint64_t now)
{
    uint64_t hb = c->cfg.heartbeat_interval_ms ? c->cfg.heartbeat_interval_ms : 1000;
    if (now < c->last_keepalive_ms + hb) return;
    c->last_keepalive_ms = now;
    sl_frame_t f;
    memset(&f, 0, sizeof f);
    f.type = SL_FRAME_HEARTBEAT;
    f.now_ms = now;
    for (conn_t *k = c->conns; k; k = k->next)
        if (k->welcomed && !k->closing) conn_queue(k, &f);
}

/* P3: refused policy decisions are counted and listed in the API and metrics; the log says
 * so too (the operator tailing it at 3 a.m. sees a policy misbehave), at most every few
 * seconds, with how many and the latest reason. */
#define REFUSAL_LOG_MS 5000
static void log_refusals(sl_coord_t *c, uint64_t now)
{
    sl_core_stats_t st;
    sl_core_stats(c->core, &st);
    if (st.refusals <= c->log_refusals) return;
    if (c->log_refusals_ms && now - c->log_refusals_ms < REFUSAL_LOG_MS) return;
    size_t n = sl_core_refusal_count(c->core);
    char count[32], total[32];
    snprintf(count, sizeof count, "%" PRIu64, st.refusals - c->log_refusals);
    snprintf(total, sizeof total, "%" PRIu64, st.refusals);
    sl_log(SL_LOG_WARN, "policy decisions refused; the built-in policy decided them (P3)", "count",
           count, "total", total, "latest", n ? sl_core_refusal_at(c->core, n - 1) : "", NULL);
    c->log_refusals = st.refusals;
    c->log_refusals_ms = now;
}

static void on_tick(uv_timer_t *t)
{
    sl_coord_t *c = t->data;
    uint64_t now = now_ms(c);
    forgive_stall(c, now);
    c->last_tick_ms = now;
    sl_core_tick(c->core, now);
    log_refusals(c, now);
    send_keepalives(c, now);
    if (c->repl) sl_repl_sweep(c->repl); /* R1: idle REPL sessions are closed on time */
    for (conn_t *k = c->conns, *next; k; k = next) {
        next = k->next;
        if (!k->welcomed) {
            if (now - k->opened_ms > HELLO_TIMEOUT_MS) conn_close(k, "no HELLO in time");
            continue;
        }
        sl_node_info_t info;
        if (sl_core_node_info(c->core, k->node, &info) == SL_ENOENT) {
            expel(k); /* A5: the core declared it dead after its silence */
        }
    }
    /* peers the core no longer knows are dead (L3 freed them in the core); their
     * incarnation is remembered so that it cannot come back with its old tasks */
    for (size_t i = 0; i < c->npeers; i++) {
        sl_node_info_t info;
        if (!c->peers[i].dead && sl_core_node_info(c->core, c->peers[i].id, &info) == SL_ENOENT) {
            sl_log(SL_LOG_WARN, "node left the cluster", "node", c->peers[i].id, NULL);
            c->peers[i].dead = 1;
        }
        if (c->peers[i].leaving && c->peers[i].conn && !c->peers[i].dead) try_leave(c, &c->peers[i]);
    }
    after_event(c);
}

/* ---- policy (P4) ------------------------------------------------------------------------- */

/* The registry calls this on the loop thread (a watched save, the API, the REPL), never
 * inside sl_core_tick: the swap falls between two scheduling rounds. */
static void policy_swap(void *arg, sl_policy_t *next)
{
    sl_coord_t *c = arg;
    if (c->core) sl_core_set_policy(c->core, next);
}

static void policy_reloaded(void *arg, int rc, sl_reload_trigger_t trigger,
                            const sl_policy_info_t *info)
{
    const char *via = trigger == SL_RELOAD_WATCH ? "watch" : trigger == SL_RELOAD_START ? "start" : "api";
    if (rc < 0) {
        /* last_error already says which policy stays ("using previous policy: …") */
        sl_log(SL_LOG_ERROR, info->version ? "policy reload failed" : "policy load failed", "file",
               info->path, "trigger", via, "error", info->last_error, NULL);
        return;
    }
    char v[32];
    snprintf(v, sizeof v, "%" PRIu64, info->version);
    sl_log(SL_LOG_INFO, "policy loaded", "name", info->name, "file", info->path, "version", v,
           "trigger", via, NULL);
}

/* ---- HTTP: JSON builders ---------------------------------------------------------------- */

static sl_coord_t *arg_coord(void *arg)
{
    return arg;
}

static int respond_core_error(sl_http_response_t *res, int rc, const char *id)
{
    switch (rc) {
    case SL_ENOENT:
        return sl_http_respond_error(res, 404, "CAPTURE_NOT_FOUND", "no capture '%s'", id);
    case SL_ENOTENOUGH:
        return sl_http_respond_error(res, 400, "NOT_ENOUGH_CAPTURES",
                                     "draining '%s' needs at least 2 alive captures", id);
    case SL_ECOORDINATOR:
        return sl_http_respond_error(res, 400, "CANNOT_DRAIN_COORDINATOR",
                                     "'%s' is the coordinator's own capture", id);
    case SL_EBUSY:
        return sl_http_respond_error(res, 409, "DRAIN_IN_PROGRESS",
                                     "another capture is being drained");
    case SL_ESTOPPING:
        return sl_http_respond_error(res, 409, "CAPTURE_STOPPING", "capture '%s' is stopping", id);
    case SL_ENOTREADY:
        return sl_http_respond_error(res, 503, "NOT_READY",
                                     "the coordinator is still bootstrapping; retry shortly");
    case SL_EIO:
        return sl_http_respond_error(res, 500, "STORE_ERROR", "the store could not write: %s",
                                     sl_strerror(rc));
    default:
        return sl_http_respond_error(res, 500, "INTERNAL", "%s", sl_strerror(rc));
    }
}

static json_t *json_time_or_null(uint64_t ms)
{
    if (!ms) return json_null();
    char buf[48];
    iso_time(ms, buf, sizeof buf);
    return json_string(buf);
}

static json_t *drain_status_json(sl_coord_t *c, const char *id, const sl_drain_status_t *s)
{
    json_t *by = json_object();
    size_t n = sl_core_drain_remaining_count(c->core);
    for (size_t i = 0; i < n; i++) {
        const char *cf;
        uint32_t count;
        if (sl_core_drain_remaining_at(c->core, i, &cf, &count) == 0)
            json_object_set_new(by, cf, json_integer(count));
    }
    json_t *blocked = json_array();
    if (s->blocked && s->blocked[0])
        json_array_append_new(blocked, json_pack("{s:n,s:s}", "task", "reason", s->blocked));
    size_t nops = sl_core_op_count(c->core);
    for (size_t i = 0; i < nops; i++) {
        sl_op_info_t op;
        if (sl_core_op_at(c->core, i, &op) || !op.stuck) continue;
        json_array_append_new(blocked, json_pack("{s:s,s:s}", "task", op.task, "reason",
                                                 op.reason_text && op.reason_text[0] ? op.reason_text
                                                                                     : "stuck"));
    }
    json_t *o = json_object();
    json_object_set_new(o, "capture_id", json_string(id));
    json_object_set_new(o, "is_draining", json_boolean(s->is_draining));
    json_object_set_new(o, "draining_capture_id", s->target ? json_string(s->target) : json_null());
    json_object_set_new(o, "epoch", json_integer((json_int_t)s->epoch));
    json_object_set_new(o, "state", json_string(sl_drain_state_name(s->state)));
    json_object_set_new(o, "started_at", json_time_or_null(s->started_at_ms));
    json_object_set_new(o, "started_at_ms", json_integer((json_int_t)s->started_at_ms));
    json_object_set_new(o, "initial_maintainer_count", json_integer(s->initial_maintainers));
    json_object_set_new(o, "initial_dispatcher_count", json_integer(s->initial_dispatchers));
    json_object_set_new(o, "remaining_maintainer_count", json_integer(s->remaining_maintainers));
    json_object_set_new(o, "remaining_dispatcher_count", json_integer(s->remaining_dispatchers));
    json_object_set_new(o, "remaining_dispatchers_by_changefeed", by);
    json_object_set_new(o, "progress", json_real(s->progress));
    json_object_set_new(o, "current_speed", json_real(s->speed));
    json_object_set_new(o, "left_seconds", s->left_seconds < 0 ? json_null() : json_real(s->left_seconds));
    json_object_set_new(o, "blocked", blocked);
    return o;
}

static json_t *changefeed_json(sl_coord_t *c, const char *id)
{
    sl_task_info_t t;
    if (sl_core_task_info(c->core, id, &t)) return NULL;
    json_t *by = json_object();
    size_t n = sl_core_changefeed_nodes(c->core, id);
    for (size_t i = 0; i < n; i++) {
        sl_node_count_t nc;
        if (sl_core_changefeed_node_at(c->core, id, i, &nc) == 0)
            json_object_set_new(by, nc.node, json_integer(nc.count));
    }
    const char *state = t.remove_pending ? "removing" : sl_task_state_name(t.state);
    return json_pack("{s:s,s:i,s:o,s:s,s:o}", "changefeed_id", id, "table_count", (int)t.weight,
                     "maintainer_node", t.node ? json_string(t.node) : json_null(), "state", state,
                     "dispatchers_by_node", by);
}

/* ---- HTTP: routes -------------------------------------------------------------------------- */

static void h_health(void *arg, const sl_http_request_t *req, sl_http_response_t *res)
{
    sl_coord_t *c = arg_coord(arg);
    int boot = sl_core_bootstrapping(c->core);
    sl_http_respond_json(res, 200,
                         json_pack("{s:s,s:b,s:b,s:i}", "status", "ok", "ready", !boot,
                                   "bootstrapping", boot, "captures",
                                   (int)sl_core_node_count(c->core)));
}

static void h_captures(void *arg, const sl_http_request_t *req, sl_http_response_t *res)
{
    sl_coord_t *c = arg_coord(arg);
    json_t *items = json_array();
    size_t n = sl_core_node_count(c->core);
    for (size_t i = 0; i < n; i++) {
        sl_node_info_t info;
        if (sl_core_node_at(c->core, i, &info)) continue;
        peer_t *p = peer_find(c, info.id);
        json_array_append_new(
            items, json_pack("{s:s,s:s,s:s,s:i,s:i,s:i,s:b,s:b,s:b,s:I}", "id", info.id, "address",
                             info.addr ? info.addr : "", "liveness", sl_liveness_name(info.liveness),
                             "maintainer_count", (int)info.maintainers, "dispatcher_count",
                             (int)info.dispatchers, "inflight", (int)info.inflight, "is_coordinator",
                             c->cfg.coordinator_node && !strcmp(c->cfg.coordinator_node, info.id),
                             "connected", p && p->conn && p->conn->welcomed,
                             "leaving", p && p->leaving, /* L1: it is shutting down */
                             "node_epoch", (json_int_t)(p ? p->node_epoch : 0)));
    }
    /* what the table of nodes alone would hide: tasks placed nowhere, and a coordinator
     * still hearing back from the nodes after a restart (its counts are partial then) */
    sl_core_stats_t st;
    sl_core_stats(c->core, &st);
    json_t *o = json_pack("{s:o,s:i,s:i,s:s,s:b}", "items", items, "total",
                          (int)json_array_size(items), "tasks_waiting", (int)st.absent,
                          "waiting_reason", st.waiting ? st.waiting : "", "bootstrapping",
                          sl_core_bootstrapping(c->core));
    uint64_t now = now_ms(c), left, epoch;
    const char *restored;
    if (o && sl_core_bootstrap_info(c->core, now, &left, &restored, &epoch)) {
        /* D4: what resumes when bootstrap ends, and when that is */
        json_object_set_new(o, "bootstrap_left_ms", json_integer((json_int_t)left));
        json_object_set_new(o, "recovered_drain",
                            restored[0] ? json_pack("{s:s,s:I}", "capture_id", restored, "epoch",
                                                    (json_int_t)epoch)
                                        : json_null());
    }
    /* D11: how the latest drain ended, also when its node has left (lost, D9) */
    sl_drain_status_t ls;
    const char *last = sl_core_drain_last(c->core, now, &ls);
    if (o && last && ls.state != SL_DRAIN_NONE && ls.state != SL_DRAIN_DRAINING)
        json_object_set_new(o, "last_drain",
                            json_pack("{s:s,s:s,s:I,s:s}", "capture_id", last, "state",
                                      sl_drain_state_name(ls.state), "epoch", (json_int_t)ls.epoch,
                                      "reason", ls.blocked ? ls.blocked : ""));
    sl_http_respond_json(res, 200, o);
}

static void h_drain_put(void *arg, const sl_http_request_t *req, sl_http_response_t *res)
{
    sl_coord_t *c = arg_coord(arg);
    const char *id = sl_http_param(req, "capture_id");
    sl_drain_counts_t counts;
    int rc = sl_core_drain_start(c->core, id, now_ms(c), &counts);
    if (rc) {
        respond_core_error(res, rc, id);
        if (rc == SL_EIO) sl_log(SL_LOG_ERROR, "drain not started: store failed", "target", id, NULL);
    } else {
        sl_http_respond_json(res, counts.completed ? 200 : 202,
                             json_pack("{s:i,s:i}", "current_maintainer_count",
                                       (int)counts.maintainers, "current_dispatcher_count",
                                       (int)counts.dispatchers));
    }
    after_event(c);
}

static void h_drain_delete(void *arg, const sl_http_request_t *req, sl_http_response_t *res)
{
    sl_coord_t *c = arg_coord(arg);
    const char *id = sl_http_param(req, "capture_id");
    int rc = sl_core_drain_cancel(c->core, id, now_ms(c));
    if (rc == SL_EINVAL) {
        sl_http_respond_error(res, 409, "NOT_DRAINING", "capture '%s' is not being drained", id);
    } else if (rc) {
        respond_core_error(res, rc, id);
    } else {
        sl_drain_status_t s;
        if (sl_core_drain_status(c->core, id, now_ms(c), &s) == 0)
            sl_http_respond_json(res, 200, drain_status_json(c, id, &s));
        else
            sl_http_respond_json(res, 200, json_pack("{s:s,s:s}", "capture_id", id, "state", "cancelled"));
    }
    after_event(c);
}

/* Clients poll this route (the CLI's --watch, dashboards, B5), so the body is kept and
 * served again while the core's version and the clock's millisecond stay the same. */
static void h_drain_get(void *arg, const sl_http_request_t *req, sl_http_response_t *res)
{
    sl_coord_t *c = arg_coord(arg);
    const char *id = sl_http_param(req, "capture_id");
    uint64_t now = now_ms(c), version = sl_core_version(c->core);
    if (c->drain_body.body && c->drain_body.version == version && c->drain_body.now == now &&
        strcmp(c->drain_body.id, id) == 0) {
        sl_http_respond_raw(res, 200, "application/json", c->drain_body.body, c->drain_body.len);
        return;
    }
    sl_drain_status_t s;
    int rc = sl_core_drain_status(c->core, id, now, &s);
    /* D4: while a restarted coordinator hears back from the nodes, the drain it recovered
     * has not resumed yet and a node may not have reconnected: "none" would be a lie */
    if (sl_core_bootstrapping(c->core)) rc = SL_ENOTREADY;
    if (rc) {
        respond_core_error(res, rc, id);
        return;
    }
    json_t *o = drain_status_json(c, id, &s);
    char *body = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (!body) {
        sl_http_respond_error(res, 500, "INTERNAL", "out of memory");
        return;
    }
    free(c->drain_body.body);
    c->drain_body.body = body;
    c->drain_body.len = strlen(body);
    c->drain_body.version = version;
    c->drain_body.now = now;
    snprintf(c->drain_body.id, sizeof c->drain_body.id, "%s", id);
    sl_http_respond_raw(res, 200, "application/json", body, c->drain_body.len);
}

static void h_drain_plan(void *arg, const sl_http_request_t *req, sl_http_response_t *res)
{
    sl_coord_t *c = arg_coord(arg);
    const char *id = sl_http_param(req, "capture_id");
    sl_node_info_t info;
    if (sl_core_node_info(c->core, id, &info)) {
        respond_core_error(res, SL_ENOENT, id);
        return;
    }
    size_t max = info.maintainers + 16;
    sl_plan_move_t *moves = calloc(max, sizeof *moves);
    size_t n = 0;
    int rc = moves ? sl_core_drain_plan(c->core, id, moves, max, &n) : SL_ENOMEM;
    if (rc) {
        free(moves);
        respond_core_error(res, rc, id);
        return;
    }
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(arr, json_pack("{s:s,s:o}", "task", moves[i].task, "to",
                                             moves[i].to ? json_string(moves[i].to) : json_null()));
    free(moves);
    /* the dispatchers on the node are moved by their maintainers (D6), not by this policy:
     * the plan says how many, per changefeed, as the maintainers last reported */
    json_t *disp = json_array();
    json_int_t ndisp = 0;
    for (size_t i = 0; i < c->ncfs; i++) {
        size_t nn = sl_core_changefeed_nodes(c->core, c->cfs[i]);
        for (size_t j = 0; j < nn; j++) {
            sl_node_count_t nc;
            if (sl_core_changefeed_node_at(c->core, c->cfs[i], j, &nc) || strcmp(nc.node, id) ||
                !nc.count)
                continue;
            json_array_append_new(disp, json_pack("{s:s,s:i}", "changefeed", c->cfs[i], "count",
                                                  (int)nc.count));
            ndisp += nc.count;
        }
    }
    const sl_policy_t *live = sl_policy_registry_policy(c->reg);
    sl_policy_info_t pi;
    sl_policy_registry_info(c->reg, &pi);
    sl_http_respond_json(res, 200,
                         json_pack("{s:s,s:s,s:I,s:o,s:I,s:o}", "capture_id", id, "policy",
                                   live ? live->name : "builtin", "policy_version",
                                   (json_int_t)pi.version, "moves", arr, "dispatcher_count", ndisp,
                                   "dispatchers_by_changefeed", disp));
}

/* D13: the older TiCDC route. Clients poll it; the answer is what remains, never 0 before
 * D8 holds, and 0 once it has (a completed drain is answered, not refused). */
static void h_drain_v1(void *arg, const sl_http_request_t *req, sl_http_response_t *res)
{
    sl_coord_t *c = arg_coord(arg);
    json_t *body = sl_http_body_json(req, res);
    if (!body) return;
    json_t *jid = json_object_get(body, "capture_id");
    if (!json_is_string(jid) || !json_string_length(jid)) {
        json_decref(body);
        sl_http_respond_error(res, 400, "INVALID_ARGUMENT", "capture_id must be a non-empty string");
        return;
    }
    char id[SL_ID_MAX];
    snprintf(id, sizeof id, "%s", json_string_value(jid));
    json_decref(body);
    uint64_t now = now_ms(c);
    sl_drain_counts_t counts;
    int rc = sl_core_drain_start(c->core, id, now, &counts);
    sl_drain_status_t s;
    if (rc == SL_ESTOPPING && sl_core_drain_status(c->core, id, now, &s) == 0 &&
        s.state == SL_DRAIN_COMPLETED) {
        sl_http_respond_json(res, 202, json_pack("{s:i}", "current_table_count", 0));
    } else if (rc) {
        respond_core_error(res, rc, id);
    } else {
        json_int_t left = 0;
        if (!counts.completed && sl_core_drain_status(c->core, id, now, &s) == 0 &&
            s.state == SL_DRAIN_DRAINING) {
            left = (json_int_t)s.remaining_maintainers + s.remaining_dispatchers;
            if (left == 0) left = 1; /* D8 has not held yet: never a false zero */
        }
        sl_http_respond_json(res, 202, json_pack("{s:I}", "current_table_count", left));
    }
    after_event(c);
}

static int cf_index(sl_coord_t *c, const char *id)
{
    for (size_t i = 0; i < c->ncfs; i++)
        if (!strcmp(c->cfs[i], id)) return (int)i;
    return -1;
}

static int cf_track(sl_coord_t *c, const char *id)
{
    if (c->ncfs == c->cfs_cap) {
        size_t cap = c->cfs_cap ? c->cfs_cap * 2 : 64;
        void *v = realloc(c->cfs, cap * sizeof *c->cfs);
        if (!v) return SL_ENOMEM;
        c->cfs = v;
        c->cfs_cap = cap;
    }
    snprintf(c->cfs[c->ncfs++], SL_ID_MAX, "%s", id);
    return 0;
}

int sl_coord_changefeed_create(sl_coord_t *c, const char *id, uint32_t table_count)
{
    if (!valid_id(id) || table_count == 0 || table_count > TABLE_COUNT_MAX) return SL_EINVAL;
    if (cf_index(c, id) >= 0) return SL_EEXIST;
    sl_task_info_t t;
    if (sl_core_task_info(c->core, id, &t) == 0) return SL_EEXIST; /* still being removed */
    int rc = c->store->ops->save_changefeed(c->store, id, table_count); /* A6: first */
    if (rc) return rc;
    if ((rc = cf_track(c, id)) != 0 ||
        (rc = sl_core_task_add(c->core, id, SL_TASK_MAINTAINER, id, table_count)) != 0) {
        if (cf_index(c, id) >= 0) c->ncfs--;
        c->store->ops->delete_changefeed(c->store, id);
        return rc;
    }
    char n[16];
    snprintf(n, sizeof n, "%u", table_count);
    sl_log(SL_LOG_INFO, "changefeed created", "changefeed", id, "tables", n, NULL);
    after_event(c);
    return 0;
}

static void h_cf_list(void *arg, const sl_http_request_t *req, sl_http_response_t *res)
{
    sl_coord_t *c = arg_coord(arg);
    json_t *items = json_array();
    for (size_t i = 0; i < c->ncfs; i++) {
        json_t *o = changefeed_json(c, c->cfs[i]);
        if (o) json_array_append_new(items, o);
    }
    sl_http_respond_json(res, 200, json_pack("{s:o,s:i}", "items", items, "total", (int)json_array_size(items)));
}

static void h_cf_create(void *arg, const sl_http_request_t *req, sl_http_response_t *res)
{
    sl_coord_t *c = arg_coord(arg);
    json_t *body = sl_http_body_json(req, res);
    if (!body) return;
    json_t *jid = json_object_get(body, "changefeed_id");
    json_t *jn = json_object_get(body, "table_count");
    if (!json_is_string(jid) || !valid_id(json_string_value(jid))) {
        sl_http_respond_error(res, 400, "INVALID_ARGUMENT",
                              "changefeed_id must be a string of 1-63 of A-Z a-z 0-9 - _ .");
    } else if (!json_is_integer(jn) || json_integer_value(jn) < 1 ||
               json_integer_value(jn) > TABLE_COUNT_MAX) {
        sl_http_respond_error(res, 400, "INVALID_ARGUMENT",
                              "table_count must be an integer from 1 to %d", TABLE_COUNT_MAX);
    } else {
        const char *id = json_string_value(jid);
        int rc = sl_coord_changefeed_create(c, id, (uint32_t)json_integer_value(jn));
        if (rc == SL_EEXIST)
            sl_http_respond_error(res, 409, "CHANGEFEED_EXISTS", "changefeed '%s' exists", id);
        else if (rc == SL_EIO)
            sl_http_respond_error(res, 500, "STORE_ERROR", "the store could not write: %s",
                                  sl_store_sqlite_errmsg(c->store));
        else if (rc)
            sl_http_respond_error(res, 500, "INTERNAL", "%s", sl_strerror(rc));
        else
            sl_http_respond_json(res, 201, changefeed_json(c, id));
    }
    json_decref(body);
}

static void h_cf_get(void *arg, const sl_http_request_t *req, sl_http_response_t *res)
{
    sl_coord_t *c = arg_coord(arg);
    const char *id = sl_http_param(req, "changefeed_id");
    json_t *o = cf_index(c, id) >= 0 ? changefeed_json(c, id) : NULL;
    if (!o) sl_http_respond_error(res, 404, "CHANGEFEED_NOT_FOUND", "no changefeed '%s'", id);
    else sl_http_respond_json(res, 200, o);
}

static void h_cf_delete(void *arg, const sl_http_request_t *req, sl_http_response_t *res)
{
    sl_coord_t *c = arg_coord(arg);
    const char *id = sl_http_param(req, "changefeed_id");
    int i = cf_index(c, id);
    if (i < 0) {
        sl_http_respond_error(res, 404, "CHANGEFEED_NOT_FOUND", "no changefeed '%s'", id);
        return;
    }
    int rc = c->store->ops->delete_changefeed(c->store, id);
    if (rc) {
        sl_http_respond_error(res, 500, "STORE_ERROR", "the store could not write: %s",
                              sl_store_sqlite_errmsg(c->store));
        return;
    }
    sl_core_task_remove(c->core, id);
    memmove(c->cfs[i], c->cfs[i + 1], (c->ncfs - (size_t)i - 1) * sizeof *c->cfs);
    c->ncfs--;
    sl_log(SL_LOG_INFO, "changefeed deleted", "changefeed", id, NULL);
    sl_http_respond_json(res, 202, json_pack("{s:s,s:s}", "changefeed_id", id, "state", "removing"));
    after_event(c);
}

static json_t *policy_json(sl_coord_t *c)
{
    sl_core_stats_t st;
    sl_core_stats(c->core, &st);
    sl_policy_info_t pi;
    sl_policy_registry_info(c->reg, &pi);
    json_t *refusals = json_array();
    size_t n = sl_core_refusal_count(c->core);
    for (size_t i = 0; i < n; i++) json_array_append_new(refusals, json_string(sl_core_refusal_at(c->core, i)));
    json_t *o = json_object();
    json_object_set_new(o, "name", json_string(pi.name));
    json_object_set_new(o, "file", json_string(pi.file));
    json_object_set_new(o, "path", json_string(pi.path));
    json_object_set_new(o, "version", json_integer((json_int_t)pi.version));
    json_object_set_new(o, "loaded_at", json_time_or_null(pi.loaded_at_ms));
    json_object_set_new(o, "last_error", pi.last_error && pi.last_error[0] ? json_string(pi.last_error) : json_null());
    json_object_set_new(o, "refusals", json_integer((json_int_t)st.refusals));
    json_object_set_new(o, "fallbacks", json_integer((json_int_t)st.fallbacks));
    json_object_set_new(o, "reloads", json_integer((json_int_t)pi.reloads));
    json_object_set_new(o, "reload_errors", json_integer((json_int_t)pi.reload_errors));
    json_object_set_new(o, "watch_events", json_integer((json_int_t)pi.watch_events));
    json_object_set_new(o, "watching", json_boolean(pi.watching));
    json_object_set_new(o, "recent_refusals", refusals);
    return o;
}

static void h_policies(void *arg, const sl_http_request_t *req, sl_http_response_t *res)
{
    sl_coord_t *c = arg_coord(arg);
    json_t *items = json_array();
    json_array_append_new(items, policy_json(c));
    sl_http_respond_json(res, 200, json_pack("{s:o,s:i}", "items", items, "total", 1));
}

/* 200 with the info when a new policy went live (1) or nothing changed (0); 422 with the
 * error (file:line) when the new one was kept out and the old one stays. */
static void h_policies_reload(void *arg, const sl_http_request_t *req, sl_http_response_t *res)
{
    sl_coord_t *c = arg_coord(arg);
    char err[SL_ERRMSG_MAX] = "";
    int rc = sl_policy_registry_reload(c->reg, err, sizeof err);
    if (rc < 0)
        sl_http_respond_error(res, 422, "POLICY_ERROR", "%s", err[0] ? err : sl_strerror(rc));
    else
        sl_http_respond_json(res, 200, policy_json(c));
    after_event(c);
}

/* ---- HTTP: the REPL (R1) ----------------------------------------------------------------- */

static void h_repl(void *arg, const sl_http_request_t *req, sl_http_response_t *res)
{
    sl_coord_t *c = arg_coord(arg);
    if (!c->repl) {
        sl_http_respond_error(res, 503, "NOT_READY", "the REPL is not running");
        return;
    }
    sl_repl_http_eval(c->repl, req, res);
    after_event(c); /* steering (drain.start, policy.reload) may have queued messages */
}

static void h_repl_complete(void *arg, const sl_http_request_t *req, sl_http_response_t *res)
{
    sl_coord_t *c = arg_coord(arg);
    if (!c->repl) {
        sl_http_respond_error(res, 503, "NOT_READY", "the REPL is not running");
        return;
    }
    sl_repl_http_complete(c->repl, req, res);
}

/* drain.start / drain.cancel in the REPL do what PUT / DELETE …/drain do: the core
 * persists and notifies; the handlers log a store failure and flush the outbox */
static int repl_drain_start(void *arg, const char *id, sl_drain_counts_t *counts)
{
    sl_coord_t *c = arg;
    int rc = sl_core_drain_start(c->core, id, now_ms(c), counts);
    if (rc == SL_EIO) sl_log(SL_LOG_ERROR, "drain not started: store failed", "target", id, NULL);
    after_event(c);
    return rc;
}

static int repl_drain_cancel(void *arg, const char *id)
{
    sl_coord_t *c = arg;
    int rc = sl_core_drain_cancel(c->core, id, now_ms(c));
    after_event(c);
    return rc;
}

static uint64_t repl_now(void *arg)
{
    return now_ms(arg);
}

static const char *repl_cf_at(void *arg, size_t i)
{
    sl_coord_t *c = arg;
    return i < c->ncfs ? c->cfs[i] : NULL;
}

/* ---- HTTP: metrics (A7) ---------------------------------------------------------------- */

typedef struct {
    char *s;
    size_t len, cap;
} text_t;

static void tprintf(text_t *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void tprintf(text_t *t, const char *fmt, ...)
{
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(t->s ? t->s + t->len : NULL, t->s ? t->cap - t->len : 0, fmt, ap);
        va_end(ap);
        if (n < 0) return;
        if (t->s && (size_t)n < t->cap - t->len) {
            t->len += (size_t)n;
            return;
        }
        size_t cap = t->cap ? t->cap * 2 : 4096;
        while (cap < t->len + (size_t)n + 1) cap *= 2;
        char *s = realloc(t->s, cap);
        if (!s) return;
        t->s = s;
        t->cap = cap;
    }
}

static void h_metrics(void *arg, const sl_http_request_t *req, sl_http_response_t *res)
{
    sl_coord_t *c = arg_coord(arg);
    uint64_t now = now_ms(c);
    text_t t = {0};
    sl_core_stats_t st;
    sl_core_stats(c->core, &st);
    sl_policy_info_t pi;
    sl_policy_registry_info(c->reg, &pi);
    const char *target = sl_core_drain_target(c->core);
    sl_drain_status_t s = {0};
    int have = target && sl_core_drain_status(c->core, target, now, &s) == 0;
    tprintf(&t, "# HELP sluice_drain_active 1 while a node is being drained.\n"
                "# TYPE sluice_drain_active gauge\nsluice_drain_active %d\n", target ? 1 : 0);
    tprintf(&t, "# HELP sluice_drain_state The drain state of each node that has one (1 = current).\n"
                "# TYPE sluice_drain_state gauge\n");
    static const char *const states[] = {"none", "draining", "completed", "cancelled", "lost"};
    size_t nn = sl_core_node_count(c->core);
    for (size_t i = 0; i < nn; i++) {
        sl_node_info_t info;
        sl_drain_status_t ns;
        if (sl_core_node_at(c->core, i, &info) || sl_core_drain_status(c->core, info.id, now, &ns))
            continue;
        for (int k = 0; k < 5; k++)
            tprintf(&t, "sluice_drain_state{capture=\"%s\",state=\"%s\"} %d\n", info.id, states[k],
                    (int)ns.state == k);
    }
    tprintf(&t, "# TYPE sluice_drain_epoch gauge\nsluice_drain_epoch %" PRIu64 "\n", st.epoch);
    tprintf(&t, "# HELP sluice_drain_remaining_maintainers Maintainers still on the drain target.\n"
                "# TYPE sluice_drain_remaining_maintainers gauge\nsluice_drain_remaining_maintainers %u\n",
            have ? s.remaining_maintainers : 0);
    tprintf(&t, "# HELP sluice_drain_remaining_dispatchers Dispatchers still on the drain target.\n"
                "# TYPE sluice_drain_remaining_dispatchers gauge\nsluice_drain_remaining_dispatchers %u\n",
            have ? s.remaining_dispatchers : 0);
    tprintf(&t, "# HELP sluice_drain_duration_seconds Time since the running drain started.\n"
                "# TYPE sluice_drain_duration_seconds gauge\nsluice_drain_duration_seconds %.3f\n",
            have && s.started_at_ms && now > s.started_at_ms ? (double)(now - s.started_at_ms) / 1000.0 : 0.0);
    tprintf(&t, "# TYPE sluice_drain_progress gauge\nsluice_drain_progress %.4f\n", have ? s.progress : 0.0);
    tprintf(&t, "# TYPE sluice_drain_blocked gauge\nsluice_drain_blocked %d\n",
            have && s.blocked && s.blocked[0] ? 1 : 0);
    tprintf(&t, "# HELP sluice_operators_in_flight Operators in progress (O3).\n"
                "# TYPE sluice_operators_in_flight gauge\nsluice_operators_in_flight %u\n"
                "# TYPE sluice_drain_operators_in_flight gauge\nsluice_drain_operators_in_flight %u\n",
            st.ops_in_progress, st.drain_in_progress);
    tprintf(&t, "# TYPE sluice_tasks_absent gauge\nsluice_tasks_absent %u\n", st.absent);
    tprintf(&t, "# TYPE sluice_operators_started_total counter\nsluice_operators_started_total %" PRIu64 "\n"
                "# TYPE sluice_operators_finished_total counter\nsluice_operators_finished_total %" PRIu64 "\n"
                "# TYPE sluice_operators_abandoned_total counter\nsluice_operators_abandoned_total %" PRIu64 "\n"
                "# TYPE sluice_operator_retries_total counter\nsluice_operator_retries_total %" PRIu64 "\n"
                "# TYPE sluice_scheduling_rounds_total counter\nsluice_scheduling_rounds_total %" PRIu64 "\n",
            st.ops_started, st.ops_finished, st.ops_abandoned, st.retries, st.rounds);
    tprintf(&t, "# HELP sluice_policy_refusals_total Policy decisions refused by the core (P3).\n"
                "# TYPE sluice_policy_refusals_total counter\nsluice_policy_refusals_total %" PRIu64 "\n"
                "# TYPE sluice_policy_fallbacks_total counter\nsluice_policy_fallbacks_total %" PRIu64 "\n"
                "# TYPE sluice_policy_calls_total counter\nsluice_policy_calls_total %" PRIu64 "\n"
                "# TYPE sluice_policy_reloads_total counter\nsluice_policy_reloads_total %" PRIu64 "\n"
                "# TYPE sluice_policy_reload_errors_total counter\nsluice_policy_reload_errors_total %" PRIu64 "\n"
                "# TYPE sluice_policy_version gauge\nsluice_policy_version %" PRIu64 "\n",
            st.refusals, st.fallbacks, st.policy_calls, pi.reloads, pi.reload_errors, pi.version);
    tprintf(&t, "# HELP sluice_node_heartbeat_lag_seconds Time since each node's last heartbeat.\n"
                "# TYPE sluice_node_heartbeat_lag_seconds gauge\n");
    uint32_t by_liveness[3] = {0, 0, 0};
    for (size_t i = 0; i < nn; i++) {
        sl_node_info_t info;
        if (sl_core_node_at(c->core, i, &info)) continue;
        if ((unsigned)info.liveness < 3) by_liveness[info.liveness]++;
        peer_t *p = peer_find(c, info.id);
        double lag = p && now > p->last_heartbeat_ms ? (double)(now - p->last_heartbeat_ms) / 1000.0 : 0.0;
        tprintf(&t, "sluice_node_heartbeat_lag_seconds{capture=\"%s\"} %.3f\n", info.id, lag);
    }
    tprintf(&t, "# TYPE sluice_nodes gauge\n");
    for (int l = 0; l < 3; l++)
        tprintf(&t, "sluice_nodes{liveness=\"%s\"} %u\n", sl_liveness_name((sl_liveness_t)l), by_liveness[l]);
    tprintf(&t, "# TYPE sluice_changefeeds gauge\nsluice_changefeeds %zu\n", c->ncfs);
    tprintf(&t, "# TYPE sluice_bootstrapping gauge\nsluice_bootstrapping %d\n", sl_core_bootstrapping(c->core));
    tprintf(&t, "# TYPE sluice_http_connections gauge\nsluice_http_connections %u\n",
            c->http ? sl_http_connections(c->http) : 0);
    sl_http_respond_raw(res, 200, "text/plain; version=0.0.4", t.s ? t.s : "", t.len);
    free(t.s);
}

static const sl_http_route_t routes[] = {
    {"GET", "/api/v2/health", h_health, 1},
    {"GET", "/metrics", h_metrics, 1},
    {"GET", "/api/v2/captures", h_captures, 0},
    {"PUT", "/api/v2/captures/{capture_id}/drain", h_drain_put, 0},
    {"DELETE", "/api/v2/captures/{capture_id}/drain", h_drain_delete, 0},
    {"GET", "/api/v2/captures/{capture_id}/drain", h_drain_get, 0},
    {"GET", "/api/v2/captures/{capture_id}/drain/plan", h_drain_plan, 0},
    {"PUT", "/api/v1/captures/drain", h_drain_v1, 0},
    {"GET", "/api/v2/changefeeds", h_cf_list, 0},
    {"POST", "/api/v2/changefeeds", h_cf_create, 0},
    {"GET", "/api/v2/changefeeds/{changefeed_id}", h_cf_get, 0},
    {"DELETE", "/api/v2/changefeeds/{changefeed_id}", h_cf_delete, 0},
    {"GET", "/api/v2/policies", h_policies, 0},
    {"POST", "/api/v2/policies/reload", h_policies_reload, 0},
    {"POST", "/api/v2/repl", h_repl, 0},
    {"POST", "/api/v2/repl/complete", h_repl_complete, 0},
};

static void http_log(void *arg, int level, const char *msg)
{
    sl_log(level, msg, "component", "http", NULL);
}

/* ---- lifetime ------------------------------------------------------------------------------ */

void sl_coord_config_default(sl_coord_config_t *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->listen = "127.0.0.1:8300";
    cfg->node_listen = "127.0.0.1:8301";
    cfg->policy_dir = "policies";
    cfg->policy_file = "least_loaded.lua";
    cfg->tick_ms = 100;
    cfg->heartbeat_interval_ms = 1000;
    cfg->node_timeout_ms = 10000;
}

static int load_cf(void *arg, const char *id, uint32_t table_count)
{
    sl_coord_t *c = arg;
    int rc = cf_track(c, id);
    if (!rc) rc = sl_core_task_add(c->core, id, SL_TASK_MAINTAINER, id, table_count);
    return rc;
}

static int parse_listen(const char *addr, struct sockaddr_storage *ss)
{
    char host[256];
    const char *colon = strrchr(addr, ':');
    if (!colon) return SL_EINVAL;
    size_t hl = (size_t)(colon - addr);
    const char *h = addr;
    if (hl >= 2 && addr[0] == '[' && colon[-1] == ']') {
        h++;
        hl -= 2;
    }
    if (!hl || hl >= sizeof host) return SL_EINVAL;
    memcpy(host, h, hl);
    host[hl] = 0;
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (*end || colon[1] == 0 || port < 0 || port > 65535) return SL_EINVAL;
    if (uv_ip4_addr(host, (int)port, (struct sockaddr_in *)ss) == 0) return 0;
    if (uv_ip6_addr(host, (int)port, (struct sockaddr_in6 *)ss) == 0) return 0;
    return SL_EINVAL;
}

/* One coordinator per data directory: two would both write the drain record and the
 * liveness (SQLite would let them). The lock is an flock on <data>/LOCK, released by the
 * kernel when the process ends however it ends; the file holds the owner's pid. */
static int lock_data_dir(sl_coord_t *c, char *err, size_t errlen)
{
    char path[1100];
    snprintf(path, sizeof path, "%s/LOCK", c->data_dir);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) {
        snprintf(err, errlen, "data directory %s: cannot open %s: %s", c->data_dir, path,
                 strerror(errno));
        return SL_EIO;
    }
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        int e = errno;
        char pid[24] = "";
        ssize_t n = read(fd, pid, sizeof pid - 1);
        pid[n > 0 ? n : 0] = '\0';
        pid[strcspn(pid, "\n")] = '\0';
        close(fd);
        if (e == EWOULDBLOCK) {
            char who[48] = "";
            if (pid[0]) snprintf(who, sizeof who, " (pid %s)", pid);
            snprintf(err, errlen, "data directory %s is in use by another coordinator%s; stop "
                     "it first, or give another --data", c->data_dir, who);
            return SL_EBUSY;
        }
        snprintf(err, errlen, "data directory %s: cannot lock %s: %s", c->data_dir, path,
                 strerror(e));
        return SL_EIO;
    }
    char pid[24];
    int n = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
    /* the pid is only for the message above: the lock holds even if it cannot be written */
    if (ftruncate(fd, 0) == 0 && pwrite(fd, pid, (size_t)n, 0) != n)
        sl_log(SL_LOG_WARN, "cannot write the pid into the data directory's LOCK", "path", path, NULL);
    c->lock_fd = fd;
    return 0;
}

/* HOST:0 as it was bound: HOST:PORT (anything else as given). */
static const char *bound_addr(const char *listen, const char *port, char *buf, size_t len)
{
    size_t n = strlen(listen);
    if (n < 2 || strcmp(listen + n - 2, ":0") != 0) return listen;
    snprintf(buf, len, "%.*s:%s", (int)(n - 2), listen, port);
    return buf;
}

int sl_coord_start(uv_loop_t *loop, const sl_coord_config_t *cfg, sl_coord_t **out, char *err,
                   size_t errlen)
{
    *out = NULL;
    err[0] = 0;
    if (!cfg->token || !cfg->token[0]) {
        snprintf(err, errlen, "no token: give --token-file with a non-empty token (A3)");
        return SL_EINVAL;
    }
    if (!cfg->data_dir || !cfg->data_dir[0]) {
        snprintf(err, errlen, "no data directory: give --data DIR");
        return SL_EINVAL;
    }
    sl_coord_t *c = calloc(1, sizeof *c);
    if (!c) return SL_ENOMEM;
    c->lock_fd = -1;
    c->loop = loop;
    c->cfg = *cfg;
    c->listen = dupstr(cfg->listen);
    c->node_listen = dupstr(cfg->node_listen);
    c->data_dir = dupstr(cfg->data_dir);
    c->policy_dir = dupstr(cfg->policy_dir ? cfg->policy_dir : "policies");
    c->policy_file = dupstr(cfg->policy_file ? cfg->policy_file : "least_loaded.lua");
    c->token = dupstr(cfg->token);
    c->items = calloc(SL_PROTO_LIST_MAX, sizeof *c->items);
    uv_update_time(loop);
    c->base_uv_ms = uv_now(loop);
    c->base_real_ms = real_ms();
    int rc = SL_ENOMEM;
    if (!c->listen || !c->node_listen || !c->data_dir || !c->policy_dir || !c->policy_file ||
        !c->token || !c->items)
        goto fail_early;

    if (mkdir(c->data_dir, 0700) && errno != EEXIST) {
        snprintf(err, errlen, "data directory %s: %s", c->data_dir, strerror(errno));
        rc = SL_EIO;
        goto fail_early;
    }
    if ((rc = lock_data_dir(c, err, errlen)) != 0) goto fail_early;
    snprintf(c->db_path, sizeof c->db_path, "%s/sluice.db", c->data_dir);
    if ((rc = sl_store_sqlite_open(c->db_path, &c->store, err, errlen)) != 0) goto fail_early;

    sl_core_config_t cc;
    sl_core_config_default(&cc);
    if (cfg->heartbeat_interval_ms) cc.heartbeat_interval_ms = cfg->heartbeat_interval_ms;
    if (cfg->node_timeout_ms) cc.node_timeout_ms = cfg->node_timeout_ms;
    if (cfg->bootstrap_ms) cc.bootstrap_ms = cfg->bootstrap_ms;
    if (cfg->drain_batch_size) cc.drain_batch_size = cfg->drain_batch_size;
    if (cfg->max_operators) cc.max_operators = cfg->max_operators;
    if (cfg->step_timeout_ms) cc.step_timeout_ms = cfg->step_timeout_ms;
    if (cfg->coordinator_node) snprintf(cc.coordinator_node, sizeof cc.coordinator_node, "%s", cfg->coordinator_node);
    if ((rc = sl_core_new(&cc, &c->core)) != 0) {
        snprintf(err, errlen, "core: %s", sl_strerror(rc));
        goto fail_store;
    }
    uint64_t now = now_ms(c);
    sl_core_tick(c->core, now);
    sl_core_set_store(c->core, c->store);
    /* A6: changefeeds come back from the store; D4: with anything stored, bootstrap first
     * (maintainers may be running on nodes that will report) */
    if ((rc = c->store->ops->list_changefeeds(c->store, load_cf, c)) != 0) {
        snprintf(err, errlen, "store %s: reading changefeeds: %s", c->db_path, sl_strerror(rc));
        goto fail_core;
    }
    sl_drain_record_t rec;
    int had_record = c->store->ops->load_drain(c->store, &rec) == 0;
    if (c->ncfs || had_record) {
        if ((rc = sl_core_recover(c->core, now)) != 0) {
            snprintf(err, errlen, "store %s: recovery: %s", c->db_path, sl_strerror(rc));
            goto fail_core;
        }
        char n[16], e[32];
        snprintf(n, sizeof n, "%zu", c->ncfs);
        snprintf(e, sizeof e, "%" PRIu64, had_record ? rec.epoch : 0);
        sl_log(SL_LOG_INFO, "recovering from the store: bootstrapping", "changefeeds", n,
               "drain_target", had_record ? rec.target : "", "epoch", e, NULL);
    }
    sl_core_stats_t st;
    sl_core_stats(c->core, &st);
    c->log_epoch = st.epoch;
    /* A8: a restored drain's end (completed, or lost when its target does not come back)
     * is logged like any other */
    if (had_record) snprintf(c->log_target, sizeof c->log_target, "%s", rec.target);

    /* P4: a failed first load keeps the built-in policy, with the error shown */
    sl_policy_limits_t lim;
    sl_policy_limits_default(&lim);
    sl_policy_registry_hooks_t hooks = {policy_swap, policy_reloaded, c};
    if ((rc = sl_policy_registry_open(c->policy_dir, c->policy_file, &lim, &hooks, &c->reg, err,
                                      errlen)) != 0)
        goto fail_core;

    /* listeners */
    c->router = (sl_http_router_t){routes, sizeof routes / sizeof *routes, c->token, c};
    sl_http_config_t hc;
    sl_http_config_default(&hc);
    hc.log = http_log;
    if ((rc = sl_http_listen(loop, c->listen, &hc, sl_http_router_dispatch, &c->router, &c->http,
                             err, errlen)) != 0)
        goto fail_policy;

    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    if (parse_listen(c->node_listen, &ss)) {
        snprintf(err, errlen, "node listen %s: not an address (want HOST:PORT)", c->node_listen);
        rc = SL_EINVAL;
        goto fail_http;
    }
    uv_tcp_init(loop, &c->node_listener);
    c->node_listener.data = c;
    if ((rc = uv_tcp_bind(&c->node_listener, (struct sockaddr *)&ss, 0)) != 0 ||
        (rc = uv_listen((uv_stream_t *)&c->node_listener, 128, on_node_connection)) != 0) {
        snprintf(err, errlen, "node listen %s: %s", c->node_listen, uv_strerror(rc));
        close_handle(c, (uv_handle_t *)&c->node_listener);
        rc = SL_EINVAL;
        goto fail_http;
    }
    struct sockaddr_storage bound;
    int blen = sizeof bound;
    uv_tcp_getsockname(&c->node_listener, (struct sockaddr *)&bound, &blen);
    c->node_port = ntohs(bound.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&bound)->sin6_port
                                                     : ((struct sockaddr_in *)&bound)->sin_port);

    /* R1: the REPL, evaluated on this loop between two scheduling rounds */
    sl_repl_ops_t ro = {repl_drain_start, repl_drain_cancel, repl_now, repl_cf_at, c,
                        cfg->coordinator_node};
    if ((rc = sl_repl_new(c->core, c->reg, &ro, NULL, &c->repl, err, errlen)) != 0)
        goto fail_node;
    /* The Unix socket answers the same routes without the token: it is created 0600 inside
     * the data directory (itself 0700), so only the coordinator's own user can connect, and
     * that user can read <data>/token anyway. TCP keeps requiring the token (A3). */
    size_t nroutes = sizeof routes / sizeof *routes;
    c->repl_routes = malloc(sizeof routes);
    if (!c->repl_routes) {
        rc = SL_ENOMEM;
        goto fail_repl;
    }
    memcpy(c->repl_routes, routes, sizeof routes);
    for (size_t i = 0; i < nroutes; i++) c->repl_routes[i].public_route = 1;
    c->repl_router = (sl_http_router_t){c->repl_routes, nroutes, c->token, c};
    char sock[1100];
    snprintf(sock, sizeof sock, "%s/%s", c->data_dir, REPL_SOCKET);
    char serr[256];
    if (sl_http_listen_unix(loop, sock, &hc, sl_http_router_dispatch, &c->repl_router,
                            &c->repl_http, serr, sizeof serr) != 0) {
        /* the REPL stays reachable over TCP with the token */
        sl_log(SL_LOG_WARN, "REPL socket not available", "path", sock, "error", serr, NULL);
        c->repl_http = NULL;
    }

    uv_timer_init(loop, &c->tick);
    c->tick.data = c;
    uv_timer_start(&c->tick, on_tick, c->cfg.tick_ms ? c->cfg.tick_ms : 100,
                   c->cfg.tick_ms ? c->cfg.tick_ms : 100);
    /* P4: reloads run from the loop (a watched save), never inside sl_core_tick */
    char werr[256];
    if (sl_policy_registry_watch(c->reg, loop, POLICY_DEBOUNCE_MS, werr, sizeof werr) != 0)
        sl_log(SL_LOG_WARN, "policy directory not watched", "dir", c->policy_dir, "error", werr,
               NULL);

    char hp[16], np[16], ha[300], na[300];
    snprintf(hp, sizeof hp, "%d", sl_http_port(c->http));
    snprintf(np, sizeof np, "%d", c->node_port);
    sl_log(SL_LOG_INFO, "coordinator listening", "http", bound_addr(c->listen, hp, ha, sizeof ha),
           "http_port", hp, "nodes", bound_addr(c->node_listen, np, na, sizeof na), "node_port",
           np, "data", c->data_dir, "repl", c->repl_http ? sock : "", NULL);
    *out = c;
    return 0;

fail_repl:
    sl_repl_free(c->repl);
    c->repl = NULL;
fail_node:
    close_handle(c, (uv_handle_t *)&c->node_listener);
fail_http:
    sl_http_close(c->http);
fail_policy:
    sl_core_set_policy(c->core, NULL);
    sl_policy_registry_close(c->reg);
fail_core:
    sl_core_free(c->core);
fail_store:
    sl_store_free(c->store);
fail_early:
    if (c->open_handles) {
        /* the node listener is closing; the struct is freed by its callback */
        c->closing = 1;
        return rc ? rc : SL_EINVAL;
    }
    if (c->lock_fd >= 0) close(c->lock_fd);
    free(c->items);
    free(c->drain_body.body);
    free(c->cfs);
    free(c->listen);
    free(c->node_listen);
    free(c->data_dir);
    free(c->policy_dir);
    free(c->policy_file);
    free(c->token);
    free(c->repl_routes);
    free(c);
    return rc ? rc : SL_EINVAL;
}

int sl_coord_http_port(const sl_coord_t *c)
{
    return sl_http_port(c->http);
}

int sl_coord_node_port(const sl_coord_t *c)
{
    return c->node_port;
}

void sl_coord_close(sl_coord_t *c)
{
    if (!c || c->closing) return;
    c->closing = 1;
    sl_log(SL_LOG_INFO, "coordinator stopping", NULL);
    sl_http_close(c->http);
    c->http = NULL;
    sl_http_close(c->repl_http);
    c->repl_http = NULL;
    while (c->conns) conn_close(c->conns, "coordinator stopping");
    sl_repl_free(c->repl); /* it borrows the core and the registry */
    c->repl = NULL;
    /* P4: detach the core, then close the registry (its handles close with the loop) */
    sl_core_set_policy(c->core, NULL);
    sl_policy_registry_close(c->reg);
    c->reg = NULL;
    sl_core_free(c->core);
    c->core = NULL;
    sl_store_free(c->store);
    c->store = NULL;
    c->open_handles++; /* held until every handle below is closed */
    close_handle(c, (uv_handle_t *)&c->node_listener);
    close_handle(c, (uv_handle_t *)&c->tick);
    coord_release(c);
}
