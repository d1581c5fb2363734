/* coord.h — the coordinator process on libuv (SPEC A, D): the HTTP API, the node
 * listener, the store and the core, one loop, one thread.
 *
 * Every event — an HTTP request, a node frame, the tick timer — is fed to the sans-I/O
 * core, and right after it the core's outbox is encoded (node protocol, proto.h) and
 * written to the nodes' connections, so nothing waits for the next tick (S4). Node-to-node
 * agent messages (a maintainer and its dispatchers' hosts) pass through here, routed by
 * node id, the sender's id checked against its handshake.
 *
 * Guarantees: D1/D3/D11/D12/D13 and A2 answered with the codes and JSON of SPEC; A3 auth
 * on every route but health and metrics; A6 changefeeds written to the store before the
 * API answers, read back at start, and D4 recovery (NOT_READY while bootstrapping); A5
 * handshake (version, token in constant time, node id, node epoch: a new node epoch is a
 * restarted node, which leaves and joins again), heartbeats, silent nodes dead after
 * node_timeout_ms; A7 metrics; A8 logs. */
#ifndef SL_NET_COORD_H
#define SL_NET_COORD_H

#include <uv.h>

#include "../common.h"

typedef struct sl_coord sl_coord_t;

typedef struct {
    const char *listen;         /* HTTP API, "127.0.0.1:8300" ("host:0": any free port) */
    const char *node_listen;    /* node protocol, "127.0.0.1:8301" */
    const char *data_dir;       /* sluice.db lives here (A6) */
    const char *policy_dir;     /* the live policy's directory, watched (P4) */
    const char *policy_file;    /* file name in policy_dir; default "least_loaded.lua" */
    const char *token;          /* bearer token of the API and of the node handshake */
    const char *coordinator_node; /* D1: the node the coordinator runs on, or NULL */
    uint64_t tick_ms;           /* core tick; default 100 */
    uint64_t heartbeat_interval_ms; /* D5 notifications, views; default 1000 */
    uint64_t node_timeout_ms;   /* A5: silent node is dead; default 10000 */
    uint64_t bootstrap_ms;      /* D4: after a restart, wait for reports; 0: node_timeout_ms */
    uint32_t drain_batch_size;  /* O3; 0: the core's default */
    uint32_t max_operators;     /* O3; 0: the core's default */
    uint64_t step_timeout_ms;   /* O7; 0: the core's default */
} sl_coord_config_t;

void sl_coord_config_default(sl_coord_config_t *cfg);

/* Opens the store, reads the changefeeds back, recovers (D4) when the store holds
 * anything, loads the policy (the built-in one when it fails, with the error kept for
 * GET /api/v2/policies), and starts listening. On failure returns a negative code and a
 * message naming what failed in err; nothing is left open. */
int sl_coord_start(uv_loop_t *loop, const sl_coord_config_t *cfg, sl_coord_t **out, char *err,
                   size_t errlen);

/* The ports actually bound (after listening on port 0). */
int sl_coord_http_port(const sl_coord_t *c);
int sl_coord_node_port(const sl_coord_t *c);

/* Creates a changefeed as POST /api/v2/changefeeds does (persisted first). SL_EEXIST when
 * it exists already. */
int sl_coord_changefeed_create(sl_coord_t *c, const char *id, uint32_t table_count);

/* Stops listening, closes every connection and timer, frees everything once the loop has
 * run the close callbacks. `c` must not be used afterwards. */
void sl_coord_close(sl_coord_t *c);

#endif
