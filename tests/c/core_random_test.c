/* core_random_test.c — the core under random events with ASan, UBSan and LeakSanitizer:
 * nodes join, leave, drain and stop (refusing new tasks, L5), tasks come and go, messages are lost, steps time out.
 * After every event the core's own counters must equal a full recount (S5, O3, O4), no
 * task may run on two nodes (O5), and freeing the core must leave no leak. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/core.h"
#include "tap.h"

#define NODES 5
#define TASKS 200
#ifndef SEEDS
#define SEEDS 40
#endif

/* which node runs each task, as the nodes themselves see it */
static int running_on[TASKS]; /* node index + 1, or 0 */

static unsigned rnd(unsigned *s)
{
    *s = *s * 1103515245u + 12345u;
    return (*s >> 16) & 0x7fff;
}

static int task_index(const char *id)
{
    return atoi(id + 1);
}

static int run_seed(unsigned seed, char *why, size_t whylen)
{
    sl_core_config_t cfg;
    sl_core_config_default(&cfg);
    cfg.max_operators = 6;
    cfg.drain_batch_size = 2;
    cfg.step_timeout_ms = 50;
    cfg.balance_interval_ms = 20;
    cfg.balance_cooldown_ms = 100;
    cfg.node_timeout_ms = 0; /* this test plays no heartbeats; nodes leave when it says */
    sl_core_t *core;
    if (sl_core_new(&cfg, &core)) return -1;
    memset(running_on, 0, sizeof running_on);
    int live[NODES] = {0};
    char id[16];
    uint64_t now = 0;
    int rc = 0;
    for (int step = 0; step < 400 && rc == 0; step++) {
        unsigned r = rnd(&seed) % 100, k = rnd(&seed);
        if (r < 30) {
            snprintf(id, sizeof id, "t%u", k % TASKS);
            sl_core_task_add(core, id, k % 3 ? SL_TASK_MAINTAINER : SL_TASK_DISPATCHER, NULL, 1);
        } else if (r < 38) {
            snprintf(id, sizeof id, "t%u", k % TASKS);
            sl_core_task_remove(core, id);
        } else if (r < 48) {
            int n = (int)(k % NODES);
            snprintf(id, sizeof id, "n%d", n);
            if (live[n]) {
                sl_core_node_leave(core, id);
                for (int t = 0; t < TASKS; t++)
                    if (running_on[t] == n + 1) running_on[t] = 0;
            } else {
                sl_core_node_join(core, id, "127.0.0.1:0");
            }
            live[n] = !live[n];
        } else if (r < 54) {
            snprintf(id, sizeof id, "n%u", k % NODES);
            sl_core_drain_mark(core, id);
        } else if (r < 58 && sl_core_drain_target(core)) {
            snprintf(id, sizeof id, "%s", sl_core_drain_target(core));
            sl_core_drain_unmark(core, id);
        } else if (r < 60) {
            snprintf(id, sizeof id, "n%u", k % NODES);
            sl_core_liveness_cas(core, id, SL_ALIVE, SL_STOPPING); /* graceful shutdown */
        }
        now += rnd(&seed) % 40;
        sl_core_tick(core, now);
        for (int wave = 0; wave < 8; wave++) {
            size_t n;
            const sl_msg_t *m = sl_core_outbox(core, &n);
            if (!n) break;
            sl_msg_t *copy = malloc(n * sizeof *copy);
            if (!copy) break;
            memcpy(copy, m, n * sizeof *copy);
            sl_core_outbox_clear(core);
            for (size_t i = 0; i < n; i++) {
                int node = atoi(copy[i].node + 1), t = task_index(copy[i].task);
                if (!live[node] || rnd(&seed) % 10 == 0) continue; /* gone or lost */
                sl_liveness_t l = SL_ALIVE;
                sl_core_liveness(core, copy[i].node, &l);
                if (copy[i].type == SL_MSG_START && l == SL_STOPPING) {
                    /* L5: a stopping node refuses new tasks and says it does not run them */
                    sl_core_report(core, copy[i].node, copy[i].task, SL_REPORT_STOPPED, now);
                } else if (copy[i].type == SL_MSG_START) {
                    if (running_on[t] && running_on[t] != node + 1) {
                        snprintf(why, whylen, "seed step %d: t%d started on n%d while on n%d",
                                 step, t, node, running_on[t] - 1);
                        rc = 1;
                    }
                    running_on[t] = node + 1;
                    sl_core_report(core, copy[i].node, copy[i].task, SL_REPORT_WORKING, now);
                } else {
                    if (running_on[t] == node + 1) running_on[t] = 0;
                    sl_core_report(core, copy[i].node, copy[i].task, SL_REPORT_STOPPED, now);
                }
            }
            free(copy);
        }
        if (rc == 0 && sl_core_check(core, why, whylen) != 0) rc = 1;
    }
    sl_core_free(core);
    return rc;
}

int main(void)
{
    char why[SL_ERRMSG_MAX] = "";
    int bad = 0;
    for (unsigned seed = 1; seed <= SEEDS && !bad; seed++) {
        if (run_seed(seed, why, sizeof why) != 0) {
            printf("# seed %u: %s\n", seed, why);
            bad = 1;
        }
    }
    TAP_CHECK(!bad, "S5/O3/O4/O5: counters equal a recount and no task runs twice over random seeds");
    return TAP_DONE();
}
