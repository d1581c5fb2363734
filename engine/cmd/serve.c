/* serve.c — `sluice serve`: the coordinator alone (SPEC §4, A1–A8).
 *
 *   sluice serve --listen A --node-listen A --data DIR --policy-dir DIR [--policy FILE]
 *                --token-file F
 *
 * Runs until SIGINT or SIGTERM, then closes every connection and exits 0. The ports
 * actually bound (port 0 picks free ones) are printed on stdout as one line
 * `sluice serve: http=HOST:PORT nodes=HOST:PORT`, for scripts and tests. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <uv.h>

#include "cmd/cmd.h"
#include "net/coord.h"
#include "net/log.h"

static void usage(FILE *to)
{
    fputs("usage: sluice serve --listen A --node-listen A --data DIR --policy-dir DIR\n"
          "                    [--policy FILE] --token-file F\n"
          "  the coordinator: HTTP API on --listen (default 127.0.0.1:8300), nodes on\n"
          "  --node-listen (default 127.0.0.1:8301), SQLite in DIR/sluice.db.\n"
          "  tuning: --coordinator-node ID  --heartbeat-ms N  --node-timeout-ms N\n"
          "          --bootstrap-ms N  --drain-batch-size N  --max-operators N\n"
          "          --step-timeout-ms N  --tick-ms N  --log-level debug|info|warn|error\n",
          to);
}

int sl_cmd_read_token(const char *path, char *out, size_t outlen, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errlen, "token file %s: %s", path, strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(fileno(f), &st) == 0 && (st.st_mode & 077))
        sl_log(SL_LOG_WARN, "token file is readable by others", "file", path, NULL);
    size_t n = fread(out, 1, outlen - 1, f);
    fclose(f);
    out[n] = 0;
    while (n && (out[n - 1] == '\n' || out[n - 1] == '\r' || out[n - 1] == ' ' || out[n - 1] == '\t'))
        out[--n] = 0;
    if (!n) {
        snprintf(err, errlen, "token file %s is empty", path);
        return -1;
    }
    return 0;
}

int sl_cmd_parse_u64(const char *flag, const char *v, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long x = v ? strtoull(v, &end, 10) : 0;
    if (!v || !*v || *end || errno || v[0] == '-') {
        fprintf(stderr, "sluice: %s wants a number, got '%s'\n", flag, v ? v : "");
        return -1;
    }
    *out = x;
    return 0;
}

typedef struct {
    uv_signal_t sigint, sigterm;
    sl_coord_t *coord;
} serve_t;

static void on_signal(uv_signal_t *h, int signum)
{
    serve_t *s = h->data;
    sl_log(SL_LOG_INFO, "signal received: shutting down", "signal", signum == SIGINT ? "INT" : "TERM", NULL);
    sl_coord_close(s->coord);
    s->coord = NULL;
    uv_close((uv_handle_t *)&s->sigint, NULL);
    uv_close((uv_handle_t *)&s->sigterm, NULL);
}

int sl_cmd_serve(int argc, char **argv)
{
    sl_coord_config_t cfg;
    sl_coord_config_default(&cfg);
    const char *token_file = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        uint64_t n;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        }
        if (!v) {
            fprintf(stderr, "sluice serve: %s needs a value\n", a);
            usage(stderr);
            return 2;
        }
        i++;
        if (!strcmp(a, "--listen")) cfg.listen = v;
        else if (!strcmp(a, "--node-listen")) cfg.node_listen = v;
        else if (!strcmp(a, "--data")) cfg.data_dir = v;
        else if (!strcmp(a, "--policy-dir")) cfg.policy_dir = v;
        else if (!strcmp(a, "--policy")) cfg.policy_file = v;
        else if (!strcmp(a, "--token-file")) token_file = v;
        else if (!strcmp(a, "--coordinator-node")) cfg.coordinator_node = v;
        else if (!strcmp(a, "--log-level")) {
            int l = sl_log_level_parse(v);
            if (l < 0) {
                fprintf(stderr, "sluice serve: --log-level wants debug|info|warn|error\n");
                return 2;
            }
            sl_log_set_level(l);
        } else if (sl_cmd_parse_u64(a, v, &n)) {
            return 2;
        } else if (!strcmp(a, "--heartbeat-ms")) cfg.heartbeat_interval_ms = n;
        else if (!strcmp(a, "--node-timeout-ms")) cfg.node_timeout_ms = n;
        else if (!strcmp(a, "--bootstrap-ms")) cfg.bootstrap_ms = n;
        else if (!strcmp(a, "--drain-batch-size")) cfg.drain_batch_size = (uint32_t)n;
        else if (!strcmp(a, "--max-operators")) cfg.max_operators = (uint32_t)n;
        else if (!strcmp(a, "--step-timeout-ms")) cfg.step_timeout_ms = n;
        else if (!strcmp(a, "--tick-ms")) cfg.tick_ms = n;
        else {
            fprintf(stderr, "sluice serve: unknown option %s\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (!cfg.data_dir || !token_file) {
        fprintf(stderr, "sluice serve: --data and --token-file are required\n");
        usage(stderr);
        return 2;
    }
    sl_log_set_prefix("proc=coordinator"); /* A8: before the first line, the token's warning */
    char token[512], err[1024];
    if (sl_cmd_read_token(token_file, token, sizeof token, err, sizeof err)) {
        fprintf(stderr, "sluice serve: %s\n", err);
        return 1;
    }
    cfg.token = token;
    uv_loop_t *loop = uv_default_loop();
    serve_t s = {0};
    if (sl_coord_start(loop, &cfg, &s.coord, err, sizeof err)) {
        fprintf(stderr, "sluice serve: %s\n", err);
        uv_run(loop, UV_RUN_DEFAULT);
        return 1;
    }
    char host[256];
    const char *colon = strrchr(cfg.listen, ':');
    snprintf(host, sizeof host, "%.*s", (int)(colon ? colon - cfg.listen : 0), cfg.listen);
    char nhost[256];
    colon = strrchr(cfg.node_listen, ':');
    snprintf(nhost, sizeof nhost, "%.*s", (int)(colon ? colon - cfg.node_listen : 0), cfg.node_listen);
    printf("sluice serve: http=%s:%d nodes=%s:%d\n", host, sl_coord_http_port(s.coord), nhost,
           sl_coord_node_port(s.coord));
    fflush(stdout);
    signal(SIGPIPE, SIG_IGN);
    uv_signal_init(loop, &s.sigint);
    uv_signal_init(loop, &s.sigterm);
    s.sigint.data = s.sigterm.data = &s;
    uv_signal_start(&s.sigint, on_signal, SIGINT);
    uv_signal_start(&s.sigterm, on_signal, SIGTERM);
    uv_run(loop, UV_RUN_DEFAULT);
    uv_loop_close(loop);
    return 0;
}
