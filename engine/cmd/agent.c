/* agent.c — `sluice agent`: one node process (SPEC §4, A5).
 *
 *   sluice agent --coordinator A --id ID --token-file F
 *
 * Connects to the coordinator's node listener, runs the node's maintainers and
 * dispatchers through a timer driver, and reconnects with backoff when the coordinator
 * goes away. SIGINT/SIGTERM shut it down gracefully (L1): the coordinator drains the node
 * first, and the process ends once nothing runs here (or after --shutdown-timeout-ms); a
 * coordinator out of reach at the signal, or restarting meanwhile, is waited for (the tasks
 * keep running, the node reconnects and asks again), unless the O5 fence stopped every
 * task. A second signal ends it at once. The exit status is 0 for every signalled stop. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>

#include <uv.h>

#include "cmd/cmd.h"
#include "net/log.h"
#include "net/node.h"

static void usage(FILE *to)
{
    fputs("usage: sluice agent --coordinator A --id ID --token-file F\n"
          "  one node: A is the coordinator's node listener (HOST:PORT).\n"
          "  options: --addr A (advertised)  --state-file F (JSON of what runs here)\n"
          "           --task-latency-ms N (timer driver; 50)  --heartbeat-ms N (1000)\n"
          "           --policy FILE (maintainers' placement)  --die-with-parent\n"
          "           --shutdown-timeout-ms N (on SIGTERM/SIGINT, wait up to N ms for the\n"
          "             coordinator to drain this node before exiting, reconnecting to it\n"
          "             meanwhile; 60000; 0: exit at once)\n"
          "           --log-level debug|info|warn|error\n",
          to);
}

typedef struct {
    uv_signal_t sigint, sigterm;
    sl_node_t *node;
    uint64_t shutdown_timeout_ms;
    int leaving;
} agent_proc_t;

static void stop(agent_proc_t *p)
{
    if (!p->node) return;
    sl_node_close(p->node);
    p->node = NULL;
    uv_close((uv_handle_t *)&p->sigint, NULL);
    uv_close((uv_handle_t *)&p->sigterm, NULL);
}

static void on_left(void *arg, const char *why)
{
    agent_proc_t *p = arg;
    /* tasks cut off rather than handed over (a timeout) are worth a warning */
    int cut = !strncmp(why, "timed out", 9);
    sl_log(cut ? SL_LOG_WARN : SL_LOG_INFO, "graceful shutdown ended: stopping", "outcome", why,
           NULL);
    stop(p);
}

/* The first signal asks the coordinator to drain this node, the second stops at once. */
static void on_signal(uv_signal_t *h, int signum)
{
    agent_proc_t *p = h->data;
    const char *sig = signum == SIGINT ? "SIGINT" : "SIGTERM";
    if (p->leaving || !p->shutdown_timeout_ms) {
        sl_log(SL_LOG_INFO, "signal received: stopping now", "signal", sig, NULL);
        stop(p);
        return;
    }
    p->leaving = 1;
    char ms[32];
    snprintf(ms, sizeof ms, "%llu", (unsigned long long)p->shutdown_timeout_ms);
    sl_log(SL_LOG_INFO, "signal received: draining this node before stopping (again to stop now)",
           "signal", sig, "timeout_ms", ms, NULL);
    sl_node_leave(p->node, sig, p->shutdown_timeout_ms, on_left, p);
}

int sl_cmd_agent(int argc, char **argv)
{
    sl_node_config_t cfg;
    sl_node_config_default(&cfg);
    const char *token_file = NULL;
    uint64_t shutdown_timeout_ms = 60000;
    int die_with_parent = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        uint64_t n;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        }
        if (!strcmp(a, "--die-with-parent")) {
            die_with_parent = 1;
            continue;
        }
        if (!v) {
            fprintf(stderr, "sluice agent: %s needs a value\n", a);
            usage(stderr);
            return 2;
        }
        i++;
        if (!strcmp(a, "--coordinator")) cfg.coordinator = v;
        else if (!strcmp(a, "--id")) cfg.id = v;
        else if (!strcmp(a, "--token-file")) token_file = v;
        else if (!strcmp(a, "--addr")) cfg.addr = v;
        else if (!strcmp(a, "--state-file")) cfg.state_file = v;
        else if (!strcmp(a, "--policy")) cfg.policy_path = v;
        else if (!strcmp(a, "--log-level")) {
            int l = sl_log_level_parse(v);
            if (l < 0) {
                fprintf(stderr, "sluice agent: --log-level wants debug|info|warn|error\n");
                return 2;
            }
            sl_log_set_level(l);
        } else if (sl_cmd_parse_u64(a, v, &n)) {
            return 2;
        } else if (!strcmp(a, "--task-latency-ms")) cfg.task_latency_ms = n;
        else if (!strcmp(a, "--heartbeat-ms")) cfg.heartbeat_interval_ms = n;
        else if (!strcmp(a, "--shutdown-timeout-ms")) shutdown_timeout_ms = n;
        else {
            fprintf(stderr, "sluice agent: unknown option %s\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (!cfg.id || !token_file) {
        fprintf(stderr, "sluice agent: --id and --token-file are required\n");
        usage(stderr);
        return 2;
    }
    if (die_with_parent) prctl(PR_SET_PDEATHSIG, SIGTERM);
    char token[512], err[1024];
    if (sl_cmd_read_token(token_file, token, sizeof token, err, sizeof err)) {
        fprintf(stderr, "sluice agent: %s\n", err);
        return 1;
    }
    cfg.token = token;
    char prefix[128];
    snprintf(prefix, sizeof prefix, "proc=agent node=%.60s", cfg.id);
    sl_log_set_prefix(prefix);
    signal(SIGPIPE, SIG_IGN);
    uv_loop_t *loop = uv_default_loop();
    agent_proc_t p = {.shutdown_timeout_ms = shutdown_timeout_ms};
    if (sl_node_start(loop, &cfg, &p.node, err, sizeof err)) {
        fprintf(stderr, "sluice agent: %s\n", err);
        return 1;
    }
    uv_signal_init(loop, &p.sigint);
    uv_signal_init(loop, &p.sigterm);
    p.sigint.data = p.sigterm.data = &p;
    uv_signal_start(&p.sigint, on_signal, SIGINT);
    uv_signal_start(&p.sigterm, on_signal, SIGTERM);
    uv_run(loop, UV_RUN_DEFAULT);
    uv_loop_close(loop);
    return 0;
}
