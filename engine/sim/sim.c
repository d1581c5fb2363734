/* sim.c — `sluice sim`: the coordinator core, N agents and a simulated network in one
 * process, in virtual time, under seeded faults (M1), with the invariants of M2 checked
 * after every step.
 *
 * The network is a binary heap of events ordered by (virtual time, sequence number), never
 * by address or hash. Every link (coordinator↔node, node↔node) numbers its messages, and a
 * receiver drops one older than the newest it took from that link — the transport's
 * ordering, as TCP gives it — so reordering turns into loss, which the protocol survives
 * by retries, heartbeats and re-reports. Duplicates of the newest message do get through.
 * A crashed endpoint loses its in-flight messages both ways, as a closed connection does.
 *
 * The simulator plays the daemon's network layer for the coordinator: a heartbeat from a
 * node it has no connection to (or from a restarted node) joins it and hands its bootstrap
 * report to the core (A5); it broadcasts the cluster view (nodes, liveness, drain) to the
 * agents every heartbeat interval and on every change. */
#include <inttypes.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sim.h"

#include "../agent/agent.h"
#include "../core/core.h"
#include "../policy/policy.h"
#include "../store/store.h"

/* ---- faults ----------------------------------------------------------------------------- */

static const char *const fault_names[] = {"delay", "loss", "dup", "reorder", "crash",
                                          "target-crash", "dest-crash", "coord-restart",
                                          "policy-swap", "no-dest"};
#define NFAULTS (sizeof fault_names / sizeof *fault_names)

int sl_sim_parse_faults(const char *list, unsigned *out, char *err, size_t errlen)
{
    *out = 0;
    const char *p = list ? list : "";
    while (*p) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        bool found = false;
        if (len == 3 && !strncmp(p, "all", 3)) {
            *out |= SL_SIM_F_ALL;
            found = true;
        } else if (len == 4 && !strncmp(p, "none", 4)) {
            found = true;
        }
        for (size_t i = 0; i < NFAULTS && !found; i++) {
            if (strlen(fault_names[i]) == len && !strncmp(p, fault_names[i], len)) {
                *out |= 1u << i;
                found = true;
            }
        }
        if (!found) {
            snprintf(err, errlen, "unknown fault '%.*s' (one of: all, delay, loss, dup, reorder, "
                     "crash, target-crash, dest-crash, coord-restart, policy-swap, no-dest)",
                     (int)(len > 64 ? 64 : len), p);
            return SL_EINVAL;
        }
        p += len;
        if (*p == ',') p++;
    }
    return 0;
}

void sl_sim_faults_name(unsigned mask, char *out, size_t outlen)
{
    size_t n = 0;
    out[0] = 0;
    for (size_t i = 0; i < NFAULTS; i++) {
        if (!(mask & (1u << i))) continue;
        n += (size_t)snprintf(out + n, n < outlen ? outlen - n : 0, "%s%s", n ? "," : "",
                              fault_names[i]);
    }
    if (!n) snprintf(out, outlen, "none");
}

void sl_sim_config_default(sl_sim_config_t *cfg)
{
    *cfg = (sl_sim_config_t){.seed = 1,
                             .nodes = 4,
                             .changefeeds = 8,
                             .tables = 4,
                             .max_steps = 2000000,
                             .max_time_ms = 900000};
    snprintf(cfg->drain, sizeof cfg->drain, "n1");
}

/* ---- randomness: splitmix64 seeds xoshiro256** ---------------------------------------------- */

typedef struct {
    uint64_t s[4];
} rng_t;

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static void rng_seed(rng_t *r, uint64_t seed)
{
    for (int i = 0; i < 4; i++) r->s[i] = splitmix64(&seed);
}

static uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

static uint64_t rng_next(rng_t *r)
{
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

/* Uniform in [lo, hi]. */
static uint64_t rng_range(rng_t *r, uint64_t lo, uint64_t hi)
{
    return hi <= lo ? lo : lo + rng_next(r) % (hi - lo + 1);
}

/* True with probability per_mille / 1000. */
static bool rng_chance(rng_t *r, unsigned per_mille)
{
    return rng_next(r) % 1000 < per_mille;
}

/* ---- timing (virtual ms) ------------------------------------------------------------------ */

#define NET_DELAY_MS 1       /* one network hop without the delay fault */
#define TASK_LATENCY_MS 100  /* start or stop of a task without the delay fault */
#define TICK_MS 100          /* coordinator and agent ticks */
#define HEARTBEAT_MS 1000
#define NODE_TIMEOUT_MS 10000
#define LOST_GRACE_MS 30000  /* a task may be nowhere this long while a failure is detected */
#define SETTLE_MS 30000      /* after the drain ends, quiet time before the final check */
#define MOVE_LATENCY_MS (2 * TASK_LATENCY_MS + 4 * NET_DELAY_MS)

/* ---- events -------------------------------------------------------------------------------- */

enum { EP_COORD = 0 }; /* endpoint 0 is the coordinator, 1..N the nodes */

typedef enum {
    EV_DELIVER = 0,
    EV_TIMER,
    EV_COORD_TICK,
    EV_AGENT_TICK,
    EV_FAULT,
} ev_kind_t;

typedef enum {
    PAY_COORD = 0, /* a coordinator message (sl_msg_t) to a node */
    PAY_AGENT,     /* an agent message to a node or the coordinator */
    PAY_VIEW,      /* the cluster view to a node */
} pay_kind_t;

typedef enum {
    F_CRASH = 0,
    F_RESTART,
    F_TARGET_CRASH,
    F_DEST_CRASH,
    F_COORD_CRASH,
    F_COORD_RESTART,
    F_POLICY_SWAP,
    F_NO_DEST_END,
} fault_t;

typedef struct {
    uint64_t version;
    char target[SL_ID_MAX];
    uint64_t epoch;
    size_t n;
    sl_agent_node_t *nodes; /* ids point into `ids` */
    char (*ids)[SL_ID_MAX];
} view_t;

typedef struct {
    uint64_t t, seq;
    ev_kind_t kind;
    /* EV_DELIVER */
    pay_kind_t pay;
    int src, dst;
    uint64_t src_inc, dst_inc, link_seq;
    sl_msg_t cmsg;
    sl_agent_msg_t amsg;
    view_t *view;
    /* EV_TIMER / EV_AGENT_TICK / EV_FAULT */
    int node;
    uint64_t inc;
    bool start;
    char task[SL_ID_MAX];
    fault_t fault;
} event_t;

/* ---- the world ------------------------------------------------------------------------------ */

typedef struct {
    uint32_t count;      /* nodes running it (starting, running or stopping) */
    uint64_t nodes;      /* bit i-1: node i runs it */
    int last_node;       /* node it last started on, 0 for none */
    uint64_t missing_since; /* 0: not missing */
} owner_t;

typedef struct {
    char id[SL_ID_MAX];
    sl_agent_t *agent; /* NULL while crashed */
    uint64_t inc;      /* incarnation = node epoch */
    bool conn;         /* the coordinator has a connection to this incarnation */
    uint64_t conn_epoch;
    bool held;         /* no-dest: coordinator notifications to it are held back */
    sl_liveness_t seen_liveness; /* for the L1 check */
    bool seen;
} node_t;

typedef struct sim {
    sl_sim_config_t cfg;
    sl_sim_result_t *res;
    FILE *log;
    rng_t rng;
    uint64_t now, step, seq;

    event_t **heap;
    size_t nheap, heap_cap;

    sl_store_t *store;
    sl_core_t *core; /* NULL while the coordinator is down */
    uint64_t coord_inc;
    sl_core_config_t core_cfg;

    node_t *nodes; /* index 1..N */
    int n;
    uint64_t *send_seq; /* [src * (n+1) + dst] */
    uint64_t *recv_last; /* [dst * (n+1) + src] */
    uint64_t *link_t;    /* [src * (n+1) + dst]: latest arrival time scheduled (FIFO) */

    sl_policy_t *policy;       /* --policy, or NULL */
    sl_policy_t *swap_policy;  /* the other one for policy-swap */
    sl_policy_t *live_policy;  /* what cores use now */

    owner_t *owners; /* per task: maintainers, then dispatchers, then triggers */
    size_t ntasks_total;

    uint64_t view_version;
    uint64_t view_sig;
    uint64_t last_view_ms;

    /* the scenario */
    int target; /* node index of --drain */
    bool placed;
    bool drain_started, drain_ended, final_checked;
    bool selftest_planted; /* cfg.checker_selftest did its harm */
    uint64_t drain_start_ms, drain_end_ms;
    sl_drain_state_t last_target_state;
    bool target_crashed;
    bool no_dest_active;
    uint64_t moves;
    bool counting_moves;
    bool dest_crash_pending;
    int crashes_left;
} sim_t;

/* ---- violations ------------------------------------------------------------------------------- */

static void violation(sim_t *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#include <stdarg.h>

static void violation(sim_t *s, const char *fmt, ...)
{
    char buf[SL_ERRMSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (!s->res->violations) {
        snprintf(s->res->first_violation, sizeof s->res->first_violation, "%s", buf);
        s->res->violation_step = s->step;
    }
    s->res->violations++;
    if (s->log && s->res->violations <= 20)
        fprintf(s->log, "violation: seed %" PRIu64 " step %" PRIu64 " t=%" PRIu64 "ms: %s\n",
                s->cfg.seed, s->step, s->now, buf);
}

static void trace(sim_t *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void trace(sim_t *s, const char *fmt, ...)
{
    if (!s->cfg.verbose || !s->log) return;
    va_list ap;
    va_start(ap, fmt);
    fprintf(s->log, "seed %" PRIu64 " step %" PRIu64 " t=%" PRIu64 "ms: ", s->cfg.seed, s->step,
            s->now);
    vfprintf(s->log, fmt, ap);
    fputc('\n', s->log);
    va_end(ap);
}

/* ---- heap ------------------------------------------------------------------------------------- */

static bool ev_before(const event_t *a, const event_t *b)
{
    return a->t != b->t ? a->t < b->t : a->seq < b->seq;
}

static event_t *ev_new(sim_t *s, uint64_t t, ev_kind_t kind)
{
    event_t *e = calloc(1, sizeof *e);
    if (!e) return NULL;
    e->t = t;
    e->seq = ++s->seq;
    e->kind = kind;
    return e;
}

static void ev_free(event_t *e)
{
    if (!e) return;
    sl_agent_msg_free(&e->amsg);
    if (e->view) {
        free(e->view->nodes);
        free(e->view->ids);
        free(e->view);
    }
    free(e);
}

static int heap_push(sim_t *s, event_t *e)
{
    if (!e) return SL_ENOMEM;
    if (s->nheap == s->heap_cap) {
        size_t cap = s->heap_cap ? s->heap_cap * 2 : 256;
        event_t **h = realloc(s->heap, cap * sizeof *h);
        if (!h) {
            ev_free(e);
            return SL_ENOMEM;
        }
        s->heap = h;
        s->heap_cap = cap;
    }
    size_t i = s->nheap++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!ev_before(e, s->heap[p])) break;
        s->heap[i] = s->heap[p];
        i = p;
    }
    s->heap[i] = e;
    return 0;
}

static event_t *heap_pop(sim_t *s)
{
    if (!s->nheap) return NULL;
    event_t *top = s->heap[0], *last = s->heap[--s->nheap];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        const event_t *best = last;
        if (l < s->nheap && ev_before(s->heap[l], best)) {
            m = l;
            best = s->heap[l];
        }
        if (r < s->nheap && ev_before(s->heap[r], best)) m = r;
        if (m == i) break;
        s->heap[i] = s->heap[m];
        i = m;
    }
    if (s->nheap) s->heap[i] = last;
    return top;
}

/* ---- task ids: cf<i>, cf<i>/t<j>, cf<i>/trigger ---------------------------------------------- */

static int task_index(const sim_t *s, const char *id)
{
    unsigned cf = 0, t = 0;
    int used = 0;
    if (sscanf(id, "cf%u%n", &cf, &used) != 1 || cf < 1 || cf > s->cfg.changefeeds) return -1;
    const char *rest = id + used;
    if (!*rest) return (int)(cf - 1);
    if (!strcmp(rest, "/trigger"))
        return (int)(s->cfg.changefeeds * (1 + s->cfg.tables) + cf - 1);
    if (sscanf(rest, "/t%u%n", &t, &used) == 1 && !rest[used] && t >= 1 && t <= s->cfg.tables)
        return (int)(s->cfg.changefeeds + (cf - 1) * s->cfg.tables + t - 1);
    return -1;
}

static int node_index(const sim_t *s, const char *id)
{
    int i = 0, used = 0;
    if (!id || sscanf(id, "n%d%n", &i, &used) != 1 || id[used] || i < 1 || i > s->n) return 0;
    return i;
}

/* ---- the timer driver ------------------------------------------------------------------------ */

static uint64_t task_latency(sim_t *s)
{
    if (s->cfg.faults & SL_SIM_F_DELAY) return rng_range(&s->rng, TASK_LATENCY_MS / 2, TASK_LATENCY_MS * 3);
    return TASK_LATENCY_MS;
}

static int agent_node(sim_t *s, sl_agent_t *agent)
{
    return node_index(s, sl_agent_id(agent));
}

static void timer(sim_t *s, sl_agent_t *agent, const sl_agent_task_t *task, bool start)
{
    int node = agent_node(s, agent);
    event_t *e = ev_new(s, s->now + task_latency(s), EV_TIMER);
    if (!e) return;
    e->node = node;
    e->inc = s->nodes[node].inc;
    e->start = start;
    snprintf(e->task, sizeof e->task, "%s", task->id);
    heap_push(s, e);
}

static void drv_start(void *ctx, sl_agent_t *agent, const sl_agent_task_t *task)
{
    sim_t *s = ctx;
    int node = agent_node(s, agent), t = task_index(s, task->id);
    if (s->cfg.checker_selftest && s->drain_started && !s->selftest_planted && t >= 0) {
        /* the planted bug: a driver that also starts the task on the next live node */
        s->selftest_planted = true;
        for (int k = 1; k < s->n; k++) {
            int other = (node + k - 1) % s->n + 1;
            if (s->nodes[other].agent) {
                drv_start(ctx, s->nodes[other].agent, task);
                break;
            }
        }
    }
    if (t >= 0) {
        owner_t *o = &s->owners[t];
        if (o->nodes & (1ull << (node - 1)))
            violation(s, "%s started twice on %s", task->id, s->nodes[node].id);
        o->nodes |= 1ull << (node - 1);
        o->count++;
        if (o->count > 1) {
            char who[256] = "";
            size_t k = 0;
            for (int i = 1; i <= s->n; i++)
                if (o->nodes & (1ull << (i - 1)))
                    k += (size_t)snprintf(who + k, k < sizeof who ? sizeof who - k : 0, " %s",
                                          s->nodes[i].id);
            violation(s, "single owner: %s runs on%s", task->id, who);
        }
        if (o->last_node && o->last_node != node && s->counting_moves) s->moves++;
        o->last_node = node;
        if (sl_agent_liveness(agent) == SL_STOPPING)
            violation(s, "L5: %s, which knows it is Stopping, started %s", s->nodes[node].id,
                      task->id);
    }
    timer(s, agent, task, true);
}

static void owner_drop(sim_t *s, int node, const char *task)
{
    int t = task_index(s, task);
    if (t < 0) return;
    owner_t *o = &s->owners[t];
    if (!(o->nodes & (1ull << (node - 1)))) return;
    o->nodes &= ~(1ull << (node - 1));
    o->count--;
}

static void drv_stop(void *ctx, sl_agent_t *agent, const sl_agent_task_t *task)
{
    timer(ctx, agent, task, false);
}

static const struct sl_agent_driver_ops timer_driver = {.start = drv_start, .stop = drv_stop};

/* ---- network ------------------------------------------------------------------------------------- */

static uint64_t ep_inc(const sim_t *s, int ep)
{
    return ep == EP_COORD ? (s->core ? s->coord_inc : 0) : (s->nodes[ep].agent ? s->nodes[ep].inc : 0);
}

static void link_reset(sim_t *s, int ep)
{
    int w = s->n + 1;
    for (int i = 0; i < w; i++) {
        s->send_seq[ep * w + i] = 0;
        s->send_seq[i * w + ep] = 0;
        s->recv_last[ep * w + i] = 0;
        s->recv_last[i * w + ep] = 0;
        s->link_t[ep * w + i] = 0;
        s->link_t[i * w + ep] = 0;
    }
}

/* When the message arrives. A link delivers in order (a slow message holds back the ones
 * behind it), except that with `reorder` some messages take another path and arrive later
 * than messages sent after them — which then makes them stale at the receiver. */
static void net_delay(sim_t *s, event_t *e)
{
    uint64_t d = NET_DELAY_MS;
    if (s->cfg.faults & SL_SIM_F_DELAY) {
        d = rng_range(&s->rng, 1, 200);
        if (rng_chance(&s->rng, 20)) d += rng_range(&s->rng, 200, 2000); /* a slow patch */
    }
    uint64_t *fifo = &s->link_t[e->src * (s->n + 1) + e->dst];
    e->t = s->now + d;
    if ((s->cfg.faults & SL_SIM_F_REORDER) && rng_chance(&s->rng, 100)) {
        e->t += rng_range(&s->rng, 1, 500); /* overtaken by what follows */
        return;
    }
    if (e->t < *fifo) e->t = *fifo;
    *fifo = e->t;
}

/* Sends `e` (a filled EV_DELIVER) from src to dst through the faults. */
static void net_send(sim_t *s, event_t *e)
{
    int w = s->n + 1;
    e->src_inc = ep_inc(s, e->src);
    e->dst_inc = ep_inc(s, e->dst);
    if (e->src == EP_COORD) /* the coordinator's connection is to the incarnation it knows */
        e->dst_inc = s->nodes[e->dst].conn ? s->nodes[e->dst].conn_epoch : 0;
    e->link_seq = ++s->send_seq[e->src * w + e->dst];
    s->res->messages++;
    if (!e->dst_inc || ((s->cfg.faults & SL_SIM_F_LOSS) && rng_chance(&s->rng, 50))) {
        s->res->dropped++;
        ev_free(e);
        return;
    }
    net_delay(s, e);
    if ((s->cfg.faults & SL_SIM_F_DUP) && rng_chance(&s->rng, 50)) {
        event_t *d = ev_new(s, 0, EV_DELIVER);
        if (d) {
            uint64_t seq = d->seq;
            *d = *e;
            d->seq = seq;
            d->view = NULL;
            sl_agent_msg_copy(&d->amsg, &e->amsg);
            if (e->view) {
                d->view = calloc(1, sizeof *d->view);
                if (d->view) {
                    *d->view = *e->view;
                    d->view->nodes = calloc(e->view->n ? e->view->n : 1, sizeof *d->view->nodes);
                    d->view->ids = calloc(e->view->n ? e->view->n : 1, sizeof *d->view->ids);
                    if (d->view->ids && d->view->nodes) {
                        memcpy(d->view->ids, e->view->ids, e->view->n * sizeof *d->view->ids);
                        for (size_t i = 0; i < e->view->n; i++) {
                            d->view->nodes[i] = e->view->nodes[i];
                            d->view->nodes[i].id = d->view->ids[i];
                        }
                    }
                }
            }
            d->t = e->t + rng_range(&s->rng, 0, 50);
            heap_push(s, d);
        }
    }
    e->seq = ++s->seq; /* the queue position is taken when it is sent */
    heap_push(s, e);
}

static void send_agent_msgs(sim_t *s, int node)
{
    sl_agent_t *a = s->nodes[node].agent;
    if (!a) return;
    size_t n;
    const sl_agent_msg_t *out = sl_agent_outbox(a, &n);
    for (size_t i = 0; i < n; i++) {
        int dst = out[i].to[0] ? node_index(s, out[i].to) : EP_COORD;
        if (out[i].to[0] && !dst) continue; /* a node this cluster does not have */
        event_t *e = ev_new(s, 0, EV_DELIVER);
        if (!e) break;
        e->pay = PAY_AGENT;
        e->src = node;
        e->dst = dst;
        sl_agent_msg_copy(&e->amsg, &out[i]);
        net_send(s, e);
    }
    sl_agent_outbox_clear(a);
}

/* ---- the coordinator ------------------------------------------------------------------------------ */

static void send_core_msgs(sim_t *s)
{
    if (!s->core) return;
    size_t n;
    const sl_msg_t *out = sl_core_outbox(s->core, &n);
    for (size_t i = 0; i < n; i++) {
        int dst = node_index(s, out[i].node);
        if (!dst) continue;
        if (out[i].type == SL_MSG_START) {
            sl_liveness_t l;
            /* L2: judged when the message leaves */
            if (sl_core_liveness(s->core, out[i].node, &l) == 0 && l != SL_ALIVE)
                violation(s, "L2: START %s sent to %s, which is %s", out[i].task, out[i].node,
                          sl_liveness_name(l));
        }
        if (out[i].type == SL_MSG_DRAIN && s->nodes[dst].held) continue; /* no-dest */
        event_t *e = ev_new(s, 0, EV_DELIVER);
        if (!e) break;
        e->pay = PAY_COORD;
        e->src = EP_COORD;
        e->dst = dst;
        e->cmsg = out[i];
        net_send(s, e);
        /* the coordinator speaks on its connection to one incarnation of the node */
    }
    sl_core_outbox_clear(s->core);
}

/* Drain target and epoch as the coordinator has them (for views). */
static void core_drain(sim_t *s, char *target, uint64_t *epoch)
{
    target[0] = 0;
    *epoch = 0;
    if (!s->core || !sl_core_node_count(s->core)) return;
    sl_node_info_t info;
    if (sl_core_node_at(s->core, 0, &info)) return;
    sl_drain_status_t st;
    if (sl_core_drain_status(s->core, info.id, s->now, &st)) return;
    *epoch = st.epoch;
    if (st.target) snprintf(target, SL_ID_MAX, "%s", st.target);
}

static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 1099511628211ull;
    return h;
}

/* The view goes to every node every heartbeat interval, and at once when it changed. */
static void broadcast_view(sim_t *s, bool force)
{
    /* a coordinator that is rebuilding its node list says nothing about membership: a
     * partial view would make maintainers give up dispatchers on nodes it has not heard */
    if (!s->core || sl_core_bootstrapping(s->core)) return;
    char target[SL_ID_MAX];
    uint64_t epoch;
    core_drain(s, target, &epoch);
    size_t n = sl_core_node_count(s->core);
    uint64_t sig = fnv(1469598103934665603ull, target, strlen(target));
    sig = fnv(sig, &epoch, sizeof epoch);
    for (size_t i = 0; i < n; i++) {
        sl_node_info_t info;
        if (sl_core_node_at(s->core, i, &info)) continue;
        int k = node_index(s, info.id);
        sig = fnv(sig, info.id, strlen(info.id) + 1);
        sig = fnv(sig, &info.liveness, sizeof info.liveness);
        if (k) sig = fnv(sig, &s->nodes[k].conn_epoch, sizeof(uint64_t));
    }
    if (!force && sig == s->view_sig) return;
    s->view_sig = sig;
    s->last_view_ms = s->now;
    s->view_version++;
    for (int dst = 1; dst <= s->n; dst++) {
        if (!s->nodes[dst].agent) continue;
        if (s->nodes[dst].held) continue; /* no-dest: this node hears nothing new */
        event_t *e = ev_new(s, 0, EV_DELIVER);
        if (!e) return;
        view_t *v = calloc(1, sizeof *v);
        e->view = v;
        if (!v || !(v->nodes = calloc(n ? n : 1, sizeof *v->nodes)) ||
            !(v->ids = calloc(n ? n : 1, sizeof *v->ids))) {
            ev_free(e);
            return;
        }
        v->version = s->view_version;
        snprintf(v->target, sizeof v->target, "%s", target);
        v->epoch = epoch;
        for (size_t i = 0; i < n; i++) {
            sl_node_info_t info;
            if (sl_core_node_at(s->core, i, &info)) continue;
            int k = node_index(s, info.id);
            snprintf(v->ids[v->n], SL_ID_MAX, "%s", info.id);
            v->nodes[v->n] = (sl_agent_node_t){.id = v->ids[v->n],
                                               .node_epoch = k ? s->nodes[k].conn_epoch : 0,
                                               .liveness = info.liveness,
                                               .cordoned = info.cordoned};
            v->n++;
        }
        e->pay = PAY_VIEW;
        e->src = EP_COORD;
        e->dst = dst;
        net_send(s, e);
    }
}

static void add_changefeeds(sim_t *s, bool from_store);

static int coord_start(sim_t *s, bool recover)
{
    int rc = sl_core_new(&s->core_cfg, &s->core);
    if (rc) return rc;
    s->coord_inc = s->now + 1;
    link_reset(s, EP_COORD);
    sl_core_set_store(s->core, s->store);
    sl_core_set_policy(s->core, s->live_policy);
    for (int i = 1; i <= s->n; i++) s->nodes[i].conn = false;
    add_changefeeds(s, recover);
    if (recover) {
        rc = sl_core_recover(s->core, s->now);
        if (rc) violation(s, "D4: recovery from the store failed: %s", sl_strerror(rc));
    }
    s->view_sig = 0;
    return 0;
}

static int store_cf(void *arg, const char *cf, uint32_t tables)
{
    sim_t *s = arg;
    return sl_core_task_add(s->core, cf, SL_TASK_MAINTAINER, cf, tables) == 0 ? 0 : 0;
}

static void add_changefeeds(sim_t *s, bool from_store)
{
    if (from_store) {
        s->store->ops->list_changefeeds(s->store, store_cf, s);
        return;
    }
    char id[SL_ID_MAX];
    for (uint32_t i = 1; i <= s->cfg.changefeeds; i++) {
        snprintf(id, sizeof id, "cf%u", i);
        s->store->ops->save_changefeed(s->store, id, s->cfg.tables); /* A6: persisted first */
        sl_core_task_add(s->core, id, SL_TASK_MAINTAINER, id, s->cfg.tables);
    }
}

/* A message from a node reaches the coordinator: the daemon's connection handling. */
static void coord_recv(sim_t *s, int node, const sl_agent_msg_t *m)
{
    node_t *nd = &s->nodes[node];
    if (m->type == SL_AMSG_HEARTBEAT) {
        if (!nd->conn || nd->conn_epoch != m->node_epoch) {
            sl_node_info_t info;
            if (nd->conn || sl_core_node_info(s->core, nd->id, &info) == 0)
                sl_core_node_leave(s->core, nd->id); /* the old incarnation is gone (A5) */
            if (sl_core_node_join(s->core, nd->id, nd->id) != 0) return;
            nd->seen = false; /* a new entry: its liveness starts afresh (L3) */
            nd->conn = true;
            nd->conn_epoch = m->node_epoch;
            trace(s, "%s joins the coordinator (node epoch %" PRIu64 ")", nd->id, m->node_epoch);
            for (size_t i = 0; i < m->nitems; i++) /* its bootstrap report (A5) */
                sl_core_report(s->core, nd->id, m->items[i].id, SL_REPORT_WORKING, s->now);
        }
        sl_core_heartbeat(s->core, nd->id, m->epoch, s->now);
        return;
    }
    if (!nd->conn) return;
    if (m->type == SL_AMSG_REPORT) {
        sl_core_report(s->core, nd->id, m->task, m->state, s->now);
    } else if (m->type == SL_AMSG_CF_REPORT) {
        sl_node_count_t by[64];
        size_t k = 0;
        for (size_t i = 0; i < m->nitems && k < 64; i++)
            by[k++] = (sl_node_count_t){.node = m->items[i].id, .count = m->items[i].count};
        sl_core_changefeed_report(s->core, m->changefeed, m->epoch, m->remaining, by, k, s->now);
    }
}

/* ---- nodes ------------------------------------------------------------------------------------------ */

static int node_start(sim_t *s, int i)
{
    node_t *nd = &s->nodes[i];
    sl_agent_config_t acfg;
    sl_agent_config_default(&acfg);
    acfg.heartbeat_interval_ms = HEARTBEAT_MS;
    nd->inc = s->now + 1;
    link_reset(s, i);
    int rc = sl_agent_new(nd->id, nd->inc, &acfg, &timer_driver, s, &nd->agent);
    if (rc) return rc;
    sl_agent_set_policy(nd->agent, s->live_policy);
    event_t *e = ev_new(s, s->now + (uint64_t)i, EV_AGENT_TICK);
    if (!e) return SL_ENOMEM;
    e->node = i;
    e->inc = nd->inc;
    return heap_push(s, e);
}

/* A crash: the node's tasks vanish with it, and so does what it had in flight. */
static void node_crash(sim_t *s, int i, const char *why)
{
    node_t *nd = &s->nodes[i];
    if (!nd->agent) return;
    trace(s, "%s crashes (%s)", nd->id, why);
    size_t n = sl_agent_task_count(nd->agent);
    for (size_t k = 0; k < n; k++) {
        sl_agent_task_t t;
        sl_agent_task_state_t st;
        if (sl_agent_task_at(nd->agent, k, &t, &st) == 0 && st != SL_AGENT_STOPPED)
            owner_drop(s, i, t.id);
    }
    sl_agent_free(nd->agent);
    nd->agent = NULL;
    if (i == s->target && s->drain_started && !s->drain_ended) s->target_crashed = true;
}

static void schedule_fault(sim_t *s, uint64_t t, fault_t f, int node)
{
    event_t *e = ev_new(s, t, EV_FAULT);
    if (!e) return;
    e->fault = f;
    e->node = node;
    heap_push(s, e);
}

/* ---- invariants (M2) ------------------------------------------------------------------------------ */

static sl_agent_t *maintainer_agent(sim_t *s, const char *cf, sl_core_t **core)
{
    for (int i = 1; i <= s->n; i++) {
        sl_agent_t *a = s->nodes[i].agent;
        if (!a) continue;
        sl_core_t *c = sl_agent_maintainer_core(a, cf);
        if (c) {
            *core = c;
            return a;
        }
    }
    *core = NULL;
    return NULL;
}

/* Is task `id` waiting in its scheduler (absent, or an operator carries it)? */
static bool waiting_in(sl_core_t *core, const char *id)
{
    sl_task_info_t ti;
    if (sl_core_task_info(core, id, &ti)) return false;
    return ti.state == SL_TASK_ABSENT || ti.has_operator || !ti.node;
}

static void check_lost(sim_t *s)
{
    char id[SL_ID_MAX];
    for (uint32_t c = 1; c <= s->cfg.changefeeds; c++) {
        char cf[SL_ID_MAX];
        snprintf(cf, sizeof cf, "cf%u", c);
        /* the maintainer */
        owner_t *o = &s->owners[c - 1];
        bool ok = o->count > 0 || !s->core; /* a coordinator that is down still has the store */
        if (!ok) {
            sl_task_info_t ti;
            if (sl_core_task_info(s->core, cf, &ti)) {
                violation(s, "no task lost: maintainer %s is unknown to the coordinator", cf);
                ok = true;
            } else {
                ok = waiting_in(s->core, cf) || sl_core_bootstrapping(s->core);
                if (ok == false && ti.node) {
                    int k = node_index(s, ti.node);
                    /* bound to a node that died and is not yet detected: waiting too */
                    if (k && (!s->nodes[k].agent || s->nodes[k].inc != s->nodes[k].conn_epoch)) ok = true;
                }
            }
        }
        if (ok) o->missing_since = 0;
        else if (!o->missing_since) o->missing_since = s->now ? s->now : 1;
        else if (s->now - o->missing_since > LOST_GRACE_MS) {
            violation(s, "no task lost: maintainer %s runs nowhere and waits for nothing", cf);
            o->missing_since = s->now;
        }
        /* its dispatchers */
        sl_core_t *mc;
        maintainer_agent(s, cf, &mc);
        for (uint32_t t = 1; t <= s->cfg.tables; t++) {
            snprintf(id, sizeof id, "%.40s/t%u", cf, t);
            owner_t *d = &s->owners[s->cfg.changefeeds + (c - 1) * s->cfg.tables + t - 1];
            bool dok = d->count > 0 || !mc; /* no maintainer: the changefeed waits for one */
            if (!dok) {
                sl_task_info_t ti;
                if (sl_core_task_info(mc, id, &ti)) {
                    violation(s, "no task lost: dispatcher %s is unknown to its maintainer", id);
                    dok = true;
                } else {
                    dok = waiting_in(mc, id);
                }
            }
            if (dok) d->missing_since = 0;
            else if (!d->missing_since) d->missing_since = s->now ? s->now : 1;
            else if (s->now - d->missing_since > LOST_GRACE_MS) {
                violation(s, "no task lost: dispatcher %s runs nowhere and waits for nothing", id);
                d->missing_since = s->now;
            }
        }
    }
}

static void check_liveness(sim_t *s)
{
    if (!s->core) {
        for (int i = 1; i <= s->n; i++) s->nodes[i].seen = false;
        return;
    }
    int draining = 0;
    for (int i = 1; i <= s->n; i++) {
        node_t *nd = &s->nodes[i];
        sl_liveness_t l;
        if (sl_core_liveness(s->core, nd->id, &l)) {
            nd->seen = false; /* left (L3): a node that joins again starts afresh */
            continue;
        }
        if (l == SL_DRAINING) draining++;
        if (nd->seen && nd->seen_liveness != l && !sl_liveness_transition_allowed(nd->seen_liveness, l)) {
            bool sanctioned = false;
            if (nd->seen_liveness == SL_DRAINING && l == SL_ALIVE) {
                sl_drain_status_t st; /* D3 cancel or L4 last node */
                sanctioned = sl_core_drain_status(s->core, nd->id, s->now, &st) == 0 &&
                             st.state == SL_DRAIN_CANCELLED;
            }
            if (!sanctioned)
                violation(s, "L1: %s went %s -> %s", nd->id, sl_liveness_name(nd->seen_liveness),
                          sl_liveness_name(l));
        }
        nd->seen = true;
        nd->seen_liveness = l;
    }
    if (draining > 1) violation(s, "D2: %d drain targets", draining);
    const char *target = sl_core_drain_target(s->core);
    if (draining && !target) violation(s, "D2: a node is Draining but no drain target is set");
}

static void check_step(sim_t *s)
{
    char why[SL_ERRMSG_MAX];
    if (s->core && sl_core_check(s->core, why, sizeof why))
        violation(s, "coordinator check: %s", why);
    for (int i = 1; i <= s->n; i++) {
        sl_agent_t *a = s->nodes[i].agent;
        if (!a) continue;
        size_t nm = sl_agent_maintainer_count(a);
        for (size_t k = 0; k < nm; k++) {
            const char *cf = sl_agent_maintainer_at(a, k);
            sl_core_t *mc = sl_agent_maintainer_core(a, cf);
            if (mc && sl_core_check(mc, why, sizeof why))
                violation(s, "maintainer %s on %s: %s", cf, s->nodes[i].id, why);
        }
    }
    check_liveness(s);
    check_lost(s);
}

/* D8: when the coordinator says done, the target really runs nothing. */
static void check_completion(sim_t *s)
{
    int t = s->target;
    for (size_t k = 0; k < s->ntasks_total; k++) {
        if (!(s->owners[k].nodes & (1ull << (t - 1)))) continue;
        sl_agent_task_t task;
        const char *id = "?";
        size_t n = s->nodes[t].agent ? sl_agent_task_count(s->nodes[t].agent) : 0;
        for (size_t j = 0; j < n; j++) {
            sl_agent_task_state_t st;
            if (sl_agent_task_at(s->nodes[t].agent, j, &task, &st) == 0 && st != SL_AGENT_STOPPED &&
                task_index(s, task.id) == (int)k)
                id = task.id;
        }
        violation(s, "D8: the drain of %s completed while it still runs %s", s->nodes[t].id, id);
    }
}

/* After the drain and a quiet spell: every task runs exactly where its scheduler says. */
static void check_final(sim_t *s)
{
    if (!s->core || sl_core_bootstrapping(s->core)) return;
    char id[SL_ID_MAX];
    for (uint32_t c = 1; c <= s->cfg.changefeeds; c++) {
        char cf[SL_ID_MAX];
        snprintf(cf, sizeof cf, "cf%u", c);
        sl_task_info_t ti;
        owner_t *o = &s->owners[c - 1];
        if (sl_core_task_info(s->core, cf, &ti) || !ti.node || o->count != 1 ||
            !(o->nodes & (1ull << (node_index(s, ti.node) - 1)))) {
            violation(s, "settled: maintainer %s is bound to %s but runs on %u nodes", cf,
                      ti.node ? ti.node : "nothing", o->count);
            continue;
        }
        sl_core_t *mc;
        maintainer_agent(s, cf, &mc);
        if (!mc) {
            violation(s, "settled: maintainer %s has not rebuilt its placement", cf);
            continue;
        }
        for (uint32_t t = 1; t <= s->cfg.tables; t++) {
            snprintf(id, sizeof id, "%.40s/t%u", cf, t);
            owner_t *d = &s->owners[s->cfg.changefeeds + (c - 1) * s->cfg.tables + t - 1];
            if (sl_core_task_info(mc, id, &ti) || !ti.node || d->count != 1 ||
                !(d->nodes & (1ull << (node_index(s, ti.node) - 1))))
                violation(s, "settled: dispatcher %s is bound to %s but runs on %u nodes", id,
                          ti.node ? ti.node : "nothing", d->count);
        }
    }
}

/* ---- the scenario --------------------------------------------------------------------------------- */

static bool settled(sim_t *s)
{
    if (!s->core || sl_core_bootstrapping(s->core)) return false;
    for (int i = 1; i <= s->n; i++)
        if (!s->nodes[i].conn) return false;
    sl_core_stats_t st;
    sl_core_stats(s->core, &st);
    if (st.absent || st.ops_in_progress) return false;
    for (uint32_t c = 1; c <= s->cfg.changefeeds; c++) {
        char cf[SL_ID_MAX];
        snprintf(cf, sizeof cf, "cf%u", c);
        sl_core_t *mc;
        maintainer_agent(s, cf, &mc);
        if (!mc) return false;
        sl_core_stats(mc, &st);
        if (st.absent || st.ops_in_progress) return false;
    }
    return true;
}

/* B3: the slowest level of the drain, in whole batches of moves. */
static void lower_bound(sim_t *s)
{
    sl_drain_status_t st;
    const char *target = s->nodes[s->target].id;
    uint64_t rounds = 0;
    if (sl_core_drain_status(s->core, target, s->now, &st) == 0) {
        s->res->initial_maintainers = st.initial_maintainers;
        s->res->initial_dispatchers = st.initial_dispatchers;
        uint64_t r = (st.initial_maintainers + s->core_cfg.drain_batch_size - 1) / s->core_cfg.drain_batch_size;
        if (r > rounds) rounds = r;
    }
    uint32_t batch = (s->cfg.tables + 99) / 100;
    if (batch < 10) batch = 10;
    for (uint32_t c = 1; c <= s->cfg.changefeeds; c++) {
        char cf[SL_ID_MAX];
        snprintf(cf, sizeof cf, "cf%u", c);
        sl_core_t *mc;
        maintainer_agent(s, cf, &mc);
        sl_node_info_t info;
        if (!mc || sl_core_node_info(mc, target, &info)) continue;
        uint64_t r = (info.dispatchers + batch - 1) / batch;
        if (r > rounds) rounds = r;
    }
    s->res->lower_bound_ms = rounds * MOVE_LATENCY_MS;
}

static void try_drain_start(sim_t *s)
{
    if (!s->core) return;
    sl_drain_counts_t counts;
    int rc = sl_core_drain_start(s->core, s->nodes[s->target].id, s->now, &counts);
    if (rc == SL_ENOTREADY || rc == SL_ENOTENOUGH) return; /* try again at the next tick */
    if (rc) {
        violation(s, "drain start of %s refused: %s (%d)", s->nodes[s->target].id, sl_strerror(rc), rc);
        s->drain_started = s->drain_ended = true;
        s->drain_end_ms = s->now;
        return;
    }
    s->drain_started = true;
    s->counting_moves = true;
    s->drain_start_ms = s->now;
    s->last_target_state = SL_DRAIN_DRAINING;
    trace(s, "drain of %s starts: %u maintainers, %u dispatchers", s->nodes[s->target].id,
          counts.maintainers, counts.dispatchers);
    lower_bound(s);
    send_core_msgs(s);
    unsigned f = s->cfg.faults;
    uint64_t t0 = s->now;
    /* faults land while the drain runs: within about two rounds of moves */
    uint64_t span = 2 * (s->res->lower_bound_ms > MOVE_LATENCY_MS ? s->res->lower_bound_ms : MOVE_LATENCY_MS);
    if (f & SL_SIM_F_NO_DEST) {
        /* D10: no other node hears of the new epoch for a while, so none may take work */
        for (int i = 1; i <= s->n; i++)
            if (i != s->target) s->nodes[i].held = true;
        s->no_dest_active = true;
        schedule_fault(s, t0 + rng_range(&s->rng, 2000, 6000), F_NO_DEST_END, 0);
    }
    if (f & SL_SIM_F_CRASH) {
        int k = (int)rng_range(&s->rng, 1, (uint64_t)s->n);
        if (k == s->target) k = k % s->n + 1;
        schedule_fault(s, t0 + rng_range(&s->rng, 0, span), F_CRASH, k);
    }
    if (f & SL_SIM_F_TARGET_CRASH)
        schedule_fault(s, t0 + rng_range(&s->rng, 0, span), F_TARGET_CRASH, s->target);
    if (f & SL_SIM_F_DEST_CRASH) schedule_fault(s, t0 + 1, F_DEST_CRASH, 0);
    if (f & SL_SIM_F_COORD_RESTART)
        schedule_fault(s, t0 + rng_range(&s->rng, 0, span), F_COORD_CRASH, 0);
    if (f & SL_SIM_F_POLICY_SWAP) {
        schedule_fault(s, t0 + rng_range(&s->rng, 0, span / 2), F_POLICY_SWAP, 0);
        schedule_fault(s, t0 + rng_range(&s->rng, span / 2, span), F_POLICY_SWAP, 0);
    }
}

static void observe_drain(sim_t *s)
{
    if (!s->drain_started || s->drain_ended || !s->core || sl_core_bootstrapping(s->core)) return;
    sl_drain_status_t st;
    const char *target = s->nodes[s->target].id;
    if (sl_core_drain_status(s->core, target, s->now, &st)) return;
    if (st.blocked && strstr(st.blocked, "no schedulable destination")) s->res->blocked_seen = 1; /* D10 */
    if (st.state == SL_DRAIN_DRAINING && st.is_draining && st.target && !strcmp(st.target, target))
        return;
    if (st.state == SL_DRAIN_NONE) return; /* a restarted coordinator before it re-reads */
    s->drain_ended = true;
    s->drain_end_ms = s->now;
    s->counting_moves = false;
    s->last_target_state = st.state;
    trace(s, "drain of %s ends: %s", target, sl_drain_state_name(st.state));
    if (st.state == SL_DRAIN_COMPLETED) {
        sl_liveness_t l;
        if (sl_core_liveness(s->core, target, &l) || l != SL_STOPPING)
            violation(s, "D8: the drain of %s completed but the node is not Stopping", target);
        check_completion(s);
        s->res->makespan_ms = s->now - s->drain_start_ms;
    }
}

/* ---- faults ---------------------------------------------------------------------------------------- */

static int pick_dest(sim_t *s)
{
    /* the destination of a running move: the coordinator's first, else a maintainer's */
    if (s->core) {
        size_t n = sl_core_op_count(s->core);
        for (size_t i = 0; i < n; i++) {
            sl_op_info_t op;
            if (sl_core_op_at(s->core, i, &op) == 0 && op.type == SL_OP_MOVE && op.to)
                return node_index(s, op.to);
        }
    }
    for (int i = 1; i <= s->n; i++) {
        sl_agent_t *a = s->nodes[i].agent;
        if (!a) continue;
        for (size_t k = 0; k < sl_agent_maintainer_count(a); k++) {
            sl_core_t *mc = sl_agent_maintainer_core(a, sl_agent_maintainer_at(a, k));
            if (!mc) continue;
            size_t n = sl_core_op_count(mc);
            for (size_t j = 0; j < n; j++) {
                sl_op_info_t op;
                if (sl_core_op_at(mc, j, &op) == 0 && op.type == SL_OP_MOVE && op.to)
                    return node_index(s, op.to);
            }
        }
    }
    return 0;
}

static void fault(sim_t *s, const event_t *e)
{
    switch (e->fault) {
    case F_CRASH:
    case F_TARGET_CRASH:
        if (!s->nodes[e->node].agent) break;
        node_crash(s, e->node, e->fault == F_CRASH ? "crash" : "target-crash");
        schedule_fault(s, s->now + rng_range(&s->rng, 2000, 15000), F_RESTART, e->node);
        break;
    case F_DEST_CRASH: {
        int k = pick_dest(s);
        if (!k || k == s->target) {
            if (!s->drain_ended && s->now < s->drain_start_ms + 20000)
                schedule_fault(s, s->now + 50, F_DEST_CRASH, 0); /* no move yet: look again */
            break;
        }
        node_crash(s, k, "dest-crash");
        schedule_fault(s, s->now + rng_range(&s->rng, 2000, 15000), F_RESTART, k);
        break;
    }
    case F_RESTART:
        if (s->nodes[e->node].agent) break;
        trace(s, "%s restarts", s->nodes[e->node].id);
        node_start(s, e->node);
        break;
    case F_COORD_CRASH:
        if (!s->core) break;
        trace(s, "the coordinator crashes");
        sl_core_free(s->core);
        s->core = NULL;
        s->coord_inc = 0;
        schedule_fault(s, s->now + rng_range(&s->rng, 500, 3000), F_COORD_RESTART, 0);
        break;
    case F_COORD_RESTART:
        if (s->core) break;
        trace(s, "the coordinator restarts from the store");
        coord_start(s, true);
        break;
    case F_POLICY_SWAP: {
        sl_policy_t *next = s->live_policy == s->swap_policy ? s->policy : s->swap_policy;
        trace(s, "policy swap to %s", next ? next->name : "builtin");
        s->live_policy = next;
        if (s->core) sl_core_set_policy(s->core, next);
        for (int i = 1; i <= s->n; i++)
            if (s->nodes[i].agent) sl_agent_set_policy(s->nodes[i].agent, next);
        break;
    }
    case F_NO_DEST_END:
        trace(s, "the other nodes hear the coordinator again");
        for (int i = 1; i <= s->n; i++) s->nodes[i].held = false;
        s->no_dest_active = false;
        broadcast_view(s, true);
        break;
    }
}

/* ---- steps ----------------------------------------------------------------------------------------- */

static void deliver(sim_t *s, event_t *e)
{
    int w = s->n + 1;
    /* an endpoint that crashed since the message left: the connection is gone */
    if (e->src_inc != ep_inc(s, e->src) || e->dst_inc != ep_inc(s, e->dst)) {
        s->res->dropped++;
        return;
    }
    uint64_t *last = &s->recv_last[e->dst * w + e->src];
    if (e->link_seq < *last) { /* overtaken: the transport drops it */
        s->res->dropped++;
        return;
    }
    *last = e->link_seq;
    if (e->dst == EP_COORD) {
        coord_recv(s, e->src, &e->amsg);
        send_core_msgs(s);
        return;
    }
    sl_agent_t *a = s->nodes[e->dst].agent;
    switch (e->pay) {
    case PAY_COORD:
        sl_agent_coord_msg(a, &e->cmsg, s->now);
        break;
    case PAY_AGENT:
        sl_agent_recv(a, &e->amsg, s->now);
        break;
    case PAY_VIEW:
        sl_agent_view(a, e->view->version, e->view->nodes, e->view->n, e->view->target,
                      e->view->epoch, s->now);
        break;
    }
    send_agent_msgs(s, e->dst);
}

static void coord_tick(sim_t *s)
{
    event_t *next = ev_new(s, s->now + TICK_MS, EV_COORD_TICK);
    heap_push(s, next);
    if (!s->core) return;
    sl_core_tick(s->core, s->now);
    /* nodes the core declared dead lose their connection (A5) */
    for (int i = 1; i <= s->n; i++) {
        sl_node_info_t info;
        if (s->nodes[i].conn && sl_core_node_info(s->core, s->nodes[i].id, &info) != 0) {
            trace(s, "the coordinator declares %s dead", s->nodes[i].id);
            s->nodes[i].conn = false;
            if (s->nodes[i].agent && s->nodes[i].inc == s->nodes[i].conn_epoch) {
                /* alive but expelled: it fences itself off by restarting */
                node_crash(s, i, "expelled");
                node_start(s, i);
            }
        }
    }
    send_core_msgs(s);
    if (!s->drain_started && !s->placed && settled(s)) {
        s->placed = true;
        trace(s, "placement settled");
    }
    if (!s->drain_started && (s->placed || s->now >= 60000)) try_drain_start(s);
    broadcast_view(s, s->now >= s->last_view_ms + HEARTBEAT_MS);
}

static void agent_tick(sim_t *s, const event_t *e)
{
    node_t *nd = &s->nodes[e->node];
    if (!nd->agent || nd->inc != e->inc) return; /* an old incarnation's clock */
    event_t *next = ev_new(s, s->now + TICK_MS, EV_AGENT_TICK);
    if (next) {
        next->node = e->node;
        next->inc = e->inc;
        heap_push(s, next);
    }
    sl_agent_tick(nd->agent, s->now);
    send_agent_msgs(s, e->node);
}

static void timer_fired(sim_t *s, const event_t *e)
{
    node_t *nd = &s->nodes[e->node];
    if (!nd->agent || nd->inc != e->inc) return;
    if (e->start) {
        sl_agent_task_started(nd->agent, e->task, s->now);
    } else {
        owner_drop(s, e->node, e->task);
        sl_agent_task_stopped(nd->agent, e->task, s->now);
    }
    send_agent_msgs(s, e->node);
}

/* ---- run -------------------------------------------------------------------------------------------- */

static const char swap_policy_src[] =
    "-- the simulator's policy-swap partner: least loaded, in Lua\n"
    "return {\n"
    "  name = 'sim-least-loaded',\n"
    "  place = function(tasks, nodes, ctx)\n"
    "    local out, load = {}, {}\n"
    "    for i, n in ipairs(nodes) do load[i] = n.maintainers + n.dispatchers + n.inflight end\n"
    "    for _, t in ipairs(tasks) do\n"
    "      local best\n"
    "      for i, n in ipairs(nodes) do\n"
    "        if n.id ~= t.from and (not best or load[i] < load[best]) then best = i end\n"
    "      end\n"
    "      if best then out[t.id] = nodes[best].id; load[best] = load[best] + 1 end\n"
    "    end\n"
    "    return out\n"
    "  end,\n"
    "}\n";

int sl_sim_run(const sl_sim_config_t *cfg, sl_sim_result_t *out, FILE *log, char *err,
               size_t errlen)
{
    memset(out, 0, sizeof *out);
    out->seed = cfg->seed;
    snprintf(out->state, sizeof out->state, "none");
    if (cfg->nodes < 1 || cfg->nodes > 64 || cfg->changefeeds < 1 || cfg->tables < 1 ||
        cfg->changefeeds > 100000 || cfg->tables > 100000) {
        snprintf(err, errlen, "nodes must be 1..64, changefeeds and tables 1..100000");
        return SL_EINVAL;
    }
    sim_t *s = calloc(1, sizeof *s);
    if (!s) return SL_ENOMEM;
    int rc = 0;
    s->cfg = *cfg;
    s->res = out;
    s->log = log;
    s->n = (int)cfg->nodes;
    rng_seed(&s->rng, cfg->seed);
    s->target = node_index(s, cfg->drain);
    if (!s->target) {
        snprintf(err, errlen, "--drain %s: no such node (nodes are n1..n%d)", cfg->drain, s->n);
        rc = SL_ENOENT;
        goto done;
    }
    sl_policy_limits_t lim;
    sl_policy_limits_default(&lim);
    if (cfg->policy_file) {
        rc = sl_policy_lua_load(cfg->policy_file, &lim, &s->policy, err, errlen);
        if (rc) goto done;
    }
    if (cfg->faults & SL_SIM_F_POLICY_SWAP) {
        if (s->policy) {
            s->swap_policy = NULL; /* swap between the given policy and the built-in */
        } else {
            rc = sl_policy_lua_load_string(swap_policy_src, sizeof swap_policy_src - 1,
                                           "sim-least-loaded", &lim, &s->swap_policy, err, errlen);
            if (rc) goto done;
        }
    }
    s->live_policy = s->policy;
    s->ntasks_total = (size_t)cfg->changefeeds * (cfg->tables + 2);
    s->owners = calloc(s->ntasks_total, sizeof *s->owners);
    s->nodes = calloc((size_t)s->n + 1, sizeof *s->nodes);
    s->send_seq = calloc((size_t)(s->n + 1) * (s->n + 1), sizeof *s->send_seq);
    s->recv_last = calloc((size_t)(s->n + 1) * (s->n + 1), sizeof *s->recv_last);
    s->link_t = calloc((size_t)(s->n + 1) * (s->n + 1), sizeof *s->link_t);
    if (!s->owners || !s->nodes || !s->send_seq || !s->recv_last || !s->link_t) {
        rc = SL_ENOMEM;
        goto done;
    }
    if ((rc = sl_store_mem_new(&s->store))) goto done;
    sl_core_config_default(&s->core_cfg);
    s->core_cfg.heartbeat_interval_ms = HEARTBEAT_MS;
    s->core_cfg.node_timeout_ms = NODE_TIMEOUT_MS;
    s->core_cfg.bootstrap_ms = 0; /* = node_timeout_ms: a node silent that long is dead anyway */
    s->core_cfg.step_timeout_ms = 2000;
    s->core_cfg.backoff_max_ms = 8000;
    if ((rc = coord_start(s, false))) goto done;
    for (int i = 1; i <= s->n; i++) {
        snprintf(s->nodes[i].id, SL_ID_MAX, "n%d", i);
        if ((rc = node_start(s, i))) goto done;
    }
    heap_push(s, ev_new(s, TICK_MS, EV_COORD_TICK));

    uint64_t stop_at = 0;
    event_t *e;
    while ((e = heap_pop(s))) {
        if (e->t > s->now) s->now = e->t;
        s->step++;
        switch (e->kind) {
        case EV_DELIVER: deliver(s, e); break;
        case EV_TIMER: timer_fired(s, e); break;
        case EV_COORD_TICK: coord_tick(s); break;
        case EV_AGENT_TICK: agent_tick(s, e); break;
        case EV_FAULT: fault(s, e); break;
        }
        ev_free(e);
        send_core_msgs(s);
        observe_drain(s);
        check_step(s);
        if (s->drain_ended && !stop_at) {
            stop_at = s->now + SETTLE_MS;
            /* the network heals: the final check sees a quiet cluster */
            s->cfg.faults &= ~(unsigned)(SL_SIM_F_LOSS | SL_SIM_F_DUP | SL_SIM_F_REORDER | SL_SIM_F_DELAY);
        }
        if (stop_at && s->now >= stop_at) break;
        if (s->step >= cfg->max_steps || s->now >= cfg->max_time_ms) break;
    }
    if (s->drain_ended && stop_at && s->now >= stop_at) check_final(s);
    out->steps = s->step;
    out->end_ms = s->now;
    out->moves = s->moves;
    out->target_survived = !s->target_crashed;
    out->completed = s->last_target_state == SL_DRAIN_COMPLETED;
    snprintf(out->state, sizeof out->state, "%s",
             s->drain_started ? sl_drain_state_name(s->last_target_state) : "none");
    if (s->core) {
        sl_core_stats_t st;
        sl_core_stats(s->core, &st);
        out->refusals = st.refusals;
    }
    if (!out->completed && out->target_survived)
        violation(s, "the drain of %s did not complete (state %s) though its target survived",
                  cfg->drain, out->state);
done:
    if (s->heap) {
        for (size_t i = 0; i < s->nheap; i++) ev_free(s->heap[i]);
        free(s->heap);
    }
    if (s->nodes)
        for (int i = 1; i <= s->n; i++) sl_agent_free(s->nodes[i].agent);
    sl_core_free(s->core);
    sl_store_free(s->store);
    sl_policy_free(s->policy);
    sl_policy_free(s->swap_policy);
    free(s->nodes);
    free(s->owners);
    free(s->send_seq);
    free(s->recv_last);
    free(s->link_t);
    free(s);
    return rc;
}
