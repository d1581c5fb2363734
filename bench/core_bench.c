/* core_bench.c — B2 (idle scheduling round) and B6 (memory per task at the coordinator).
 *
 * Builds a cluster of 1,000 nodes holding 100,000 maintainers and 1,000,000 dispatchers,
 * bound the way a coordinator learns them at bootstrap (A5: nodes report what they run),
 * then times idle rounds (sl_core_tick with nothing to do but the balance check, the most
 * an idle round ever does). The baseline, measured in the same run, is one pass over every
 * task — what a scheduler that rescans the cluster each tick would pay at least.
 * Memory is glibc's count of bytes in use (mallinfo2) before and after adding tasks.
 *
 * Prints lines in the `make bench` format; usage: core_bench [nodes maintainers dispatchers] */
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/core.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static size_t heap_in_use(void)
{
    struct mallinfo2 mi = mallinfo2();
    return mi.uordblks + mi.hblkhd; /* small chunks plus mmapped large ones */
}

int main(int argc, char **argv)
{
    int nodes = argc > 1 ? atoi(argv[1]) : 1000;
    int maintainers = argc > 2 ? atoi(argv[2]) : 100000;
    int dispatchers = argc > 3 ? atoi(argv[3]) : 1000000;
    sl_core_config_t cfg;
    sl_core_config_default(&cfg);
    cfg.balance_interval_ms = 1; /* every idle round runs the balance check */
    cfg.node_timeout_ms = 0;     /* no heartbeats are played here */
    sl_core_t *core;
    if (sl_core_new(&cfg, &core)) return 1;
    char id[2 * SL_ID_MAX], node[SL_ID_MAX], cf[SL_ID_MAX];
    for (int i = 0; i < nodes; i++) {
        snprintf(node, sizeof node, "capture-%04d", i);
        if (sl_core_node_join(core, node, "127.0.0.1:0")) return 1;
    }
    size_t before = heap_in_use();
    for (int i = 0; i < maintainers; i++) {
        snprintf(id, sizeof id, "changefeed-%06d", i);
        snprintf(node, sizeof node, "capture-%04d", i % nodes);
        if (sl_core_task_add(core, id, SL_TASK_MAINTAINER, NULL, 1) ||
            sl_core_report(core, node, id, SL_REPORT_WORKING, 0))
            return 1;
    }
    size_t mid = heap_in_use();
    for (int i = 0; i < dispatchers; i++) {
        snprintf(cf, sizeof cf, "changefeed-%06d", i % maintainers);
        snprintf(id, sizeof id, "%s/table-%07d", cf, i);
        snprintf(node, sizeof node, "capture-%04d", (i * 7) % nodes);
        if (sl_core_task_add(core, id, SL_TASK_DISPATCHER, cf, 1) ||
            sl_core_report(core, node, id, SL_REPORT_WORKING, 0))
            return 1;
    }
    size_t after = heap_in_use();
    double per_m = (double)(mid - before) / maintainers;
    double per_d = (double)(after - mid) / dispatchers;

    /* B2: idle rounds. Loads are even, so balance finds nothing to do. */
    int rounds = 2000;
    double t0 = now_s();
    for (int r = 1; r <= rounds; r++) sl_core_tick(core, (uint64_t)r * 10);
    double idle = (now_s() - t0) / rounds;
    sl_core_stats_t st;
    sl_core_stats(core, &st);
    /* baseline: one pass reading every task's binding */
    t0 = now_s();
    size_t bound = 0;
    int scans = 5;
    for (int s = 0; s < scans; s++) {
        for (int i = 0; i < dispatchers; i += 1) {
            sl_task_info_t ti;
            snprintf(cf, sizeof cf, "changefeed-%06d", i % maintainers);
            snprintf(id, sizeof id, "%s/table-%07d", cf, i);
            if (sl_core_task_info(core, id, &ti) == 0 && ti.node) bound++;
        }
    }
    double scan = (now_s() - t0) / scans;
    printf("B2 idle_round=%.1fus (%d nodes, %d maintainers, %d dispatchers, %llu ops started) "
           "baseline_full_scan=%.1fus ratio=%.4f target=<=1.0 (round/1ms) %s\n",
           idle * 1e6, nodes, maintainers, dispatchers, (unsigned long long)st.ops_started,
           scan * 1e6, idle / 1e-3, idle <= 1e-3 ? "PASS" : "MISS");
    printf("B6 bytes_per_dispatcher=%.0f bytes_per_maintainer=%.0f baseline=256B/2048B "
           "ratio=%.3f/%.3f target=<=1.0 %s\n",
           per_d, per_m, per_d / 256.0, per_m / 2048.0,
           per_d <= 256 && per_m <= 2048 ? "PASS" : "MISS");
    sl_core_free(core);
    return bound ? 0 : 1;
}
