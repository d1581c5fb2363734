/* node.h — the node process's side of the node protocol (A5): a TCP client of the
 * coordinator that runs one agent (engine/agent) on libuv.
 *
 * It connects, says HELLO (protocol version, token, node id, node epoch = its start time),
 * and after WELCOME tells the coordinator at once which maintainers it runs (the
 * coordinator's bootstrap, A5). It feeds the agent every frame it receives (maintainer
 * START/STOP, DRAIN, the cluster VIEW, other nodes' AGENT messages), ticks it, and sends
 * what the agent emits as frames; messages the agent addresses to this very node are
 * delivered locally. Heartbeats carry the drain epoch the agent knows (D5). A lost
 * connection is retried with exponential backoff and jitter; the tasks keep running
 * meanwhile (the node epoch does not change, so the coordinator keeps them) — but not
 * for long: a node that has heard nothing from the coordinator (it sends at least a
 * heartbeat every interval) for 60% of the coordinator's node timeout stops every task
 * and comes back as a new incarnation, before the coordinator could declare it dead and
 * start them elsewhere (O5 under a partition or a frozen coordinator).
 *
 * Tasks run through a timer driver: a start or stop completes after `task_latency_ms`,
 * standing in for real work (issue 3's driver seam, agent.h). */
#ifndef SL_NET_NODE_H
#define SL_NET_NODE_H

#include <uv.h>

#include "../common.h"

typedef struct sl_node sl_node_t;

typedef struct {
    const char *coordinator;        /* "127.0.0.1:8301" (host names are resolved) */
    const char *id;                 /* this node's id */
    const char *token;              /* the cluster token (A3, A5) */
    const char *addr;               /* address advertised in HELLO; "" for none */
    const char *state_file;         /* NULL, or a JSON file rewritten on every change of
                                     * what runs here (tests, operators) */
    const char *policy_path;        /* NULL: maintainers place with the built-in policy */
    uint64_t task_latency_ms;       /* timer driver: a start or stop takes this long; 50 */
    uint64_t heartbeat_interval_ms; /* 1000 */
    uint64_t tick_ms;               /* agent tick; 50 */
    uint64_t reconnect_min_ms;      /* first retry; 100 */
    uint64_t reconnect_max_ms;      /* cap of the doubling; 5000 */
} sl_node_config_t;

void sl_node_config_default(sl_node_config_t *cfg);

/* Starts connecting. Returns 0, or a negative code with a message in err (a bad address,
 * an id the agent refuses). */
int sl_node_start(uv_loop_t *loop, const sl_node_config_t *cfg, sl_node_t **out, char *err,
                  size_t errlen);

/* Closes the connection and every timer; frees the node once the loop has run the close
 * callbacks. The agent's tasks simply stop existing (the process is going away). */
void sl_node_close(sl_node_t *n);

/* Graceful shutdown (L1): tells the coordinator this node is leaving (LEAVING, with
 * `reason`), which drains it — or, when nothing can take its tasks, marks it Stopping.
 * The tasks keep running and the node keeps (re)connecting with the usual backoff: after
 * every WELCOME it says LEAVING again, so a coordinator that was out of reach at the
 * signal, or that restarted during the drain, drains it too. The O5 fence still applies.
 * `done(arg, why)` is called once, from the loop, when the node is Stopping with nothing
 * left running ("drained"), Stopping with no drain of it to wait for, out of reach of the
 * coordinator with no task left here ("nothing to drain: …", "nothing left to drain: …"
 * when the fence or an expulsion stopped them), or `timeout_ms` has passed ("timed out");
 * then the caller closes the node. `done` may be called before this returns. */
void sl_node_leave(sl_node_t *n, const char *reason, uint64_t timeout_ms,
                   void (*done)(void *arg, const char *why), void *arg);

#endif
