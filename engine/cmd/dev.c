/* dev.c — `sluice dev`: the newcomer's cluster on one machine (SPEC §4).
 *
 *   sluice dev [--nodes 4] [--changefeeds 32] [--tables 16] [--listen 127.0.0.1:8300]
 *              [--data DIR] [--policy-dir policies] [--policy FILE]
 *
 * Runs the coordinator in this process and N node processes (`sluice agent`, spawned from
 * /proc/self/exe) on loopback, creates the changefeeds (those already in the data
 * directory are kept), and prints the URL, the token (generated, written to <data>/token
 * with mode 0600) and the REPL socket. SIGINT or SIGTERM stops every child, then the
 * coordinator; children also die with this process (PR_SET_PDEATHSIG). */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <uv.h>

#include "cmd/cmd.h"
#include "net/coord.h"
#include "net/log.h"

#define DEV_MAX_NODES 64

typedef struct {
    uv_process_t proc;
    int running;
    char id[16];
} child_t;

typedef struct {
    uv_loop_t *loop;
    sl_coord_t *coord;
    uv_signal_t sigint, sigterm;
    child_t children[DEV_MAX_NODES];
    int nchildren;
    int stopping;
} dev_cluster_t;

static void usage(FILE *to)
{
    fputs("usage: sluice dev [--nodes 4] [--changefeeds 32] [--tables 16] [--listen 127.0.0.1:8300]\n"
          "                  [--node-listen 127.0.0.1:0] [--data DIR] [--policy-dir policies] [--policy FILE]\n"
          "                  [--task-latency-ms 50] [--log-level debug|info|warn|error]\n"
          "  a coordinator and N node processes on loopback, changefeeds created; runs until\n"
          "  SIGINT/SIGTERM. DIR defaults to a new directory under /tmp.\n",
          to);
}

static int dev_stopping;

static void on_child_closed(uv_handle_t *h)
{
}

static void on_child_exit(uv_process_t *p, int64_t status, int signal)
{
    child_t *c = p->data;
    c->running = 0;
    if (!dev_stopping)
        sl_logf(SL_LOG_WARN, "node process ended", "node=%s status=%lld signal=%d", c->id,
                (long long)status, signal);
    uv_close((uv_handle_t *)p, on_child_closed);
}

static void stop_all(dev_cluster_t *d, const char *why)
{
    if (d->stopping) return;
    d->stopping = 1;
    dev_stopping = 1;
    sl_log(SL_LOG_INFO, "dev: stopping every node and the coordinator", "reason", why, NULL);
    for (int i = 0; i < d->nchildren; i++)
        if (d->children[i].running) uv_process_kill(&d->children[i].proc, SIGTERM);
    sl_coord_close(d->coord);
    d->coord = NULL;
    uv_close((uv_handle_t *)&d->sigint, NULL);
    uv_close((uv_handle_t *)&d->sigterm, NULL);
}

static void on_signal(uv_signal_t *h, int signum)
{
    stop_all(h->data, signum == SIGINT ? "SIGINT" : "SIGTERM");
}

/* <data>/token: reused when present, else 32 random bytes in hex, mode 0600 (A3). */
static int dev_cluster_token(const char *path, char *out, size_t outlen, char *err, size_t errlen)
{
    if (access(path, F_OK) == 0) return sl_cmd_read_token(path, out, outlen, err, errlen);
    unsigned char raw[32];
    int rc = uv_random(NULL, NULL, raw, sizeof raw, 0, NULL);
    if (rc) {
        snprintf(err, errlen, "no random bytes for the token: %s", uv_strerror(rc));
        return -1;
    }
    for (size_t i = 0; i < sizeof raw && 2 * i + 2 < outlen; i++) snprintf(out + 2 * i, 3, "%02x", raw[i]);
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600);
    if (fd < 0) {
        snprintf(err, errlen, "token file %.900s: %s", path, strerror(errno));
        return -1;
    }
    fchmod(fd, 0600);
    size_t n = strlen(out);
    int ok = write(fd, out, n) == (ssize_t)n && write(fd, "\n", 1) == 1;
    close(fd);
    if (!ok) {
        snprintf(err, errlen, "token file %.900s: write failed", path);
        return -1;
    }
    return 0;
}

int sl_cmd_dev(int argc, char **argv)
{
    uint64_t nodes = 4, changefeeds = 32, tables = 16, latency = 50;
    const char *listen = "127.0.0.1:8300", *data = NULL, *policy_dir = "policies", *policy = NULL;
    const char *node_listen = "127.0.0.1:0"; /* random unless given */
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        }
        if (!v) {
            fprintf(stderr, "sluice dev: %s needs a value\n", a);
            usage(stderr);
            return 2;
        }
        i++;
        if (!strcmp(a, "--listen")) listen = v;
        else if (!strcmp(a, "--node-listen")) node_listen = v; /* for agents started by hand */
        else if (!strcmp(a, "--data")) data = v;
        else if (!strcmp(a, "--policy-dir")) policy_dir = v;
        else if (!strcmp(a, "--policy")) policy = v;
        else if (!strcmp(a, "--log-level")) {
            int l = sl_log_level_parse(v);
            if (l < 0) {
                fprintf(stderr, "sluice dev: --log-level wants debug|info|warn|error\n");
                return 2;
            }
            sl_log_set_level(l);
        } else if (!strcmp(a, "--nodes")) {
            if (sl_cmd_parse_u64(a, v, &nodes)) return 2;
        } else if (!strcmp(a, "--changefeeds")) {
            if (sl_cmd_parse_u64(a, v, &changefeeds)) return 2;
        } else if (!strcmp(a, "--tables")) {
            if (sl_cmd_parse_u64(a, v, &tables)) return 2;
        } else if (!strcmp(a, "--task-latency-ms")) {
            if (sl_cmd_parse_u64(a, v, &latency)) return 2;
        } else {
            fprintf(stderr, "sluice dev: unknown option %s\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (nodes < 1 || nodes > DEV_MAX_NODES || tables < 1 || tables > 100000 || changefeeds > 100000) {
        fprintf(stderr, "sluice dev: --nodes 1..%d, --tables 1..100000, --changefeeds 0..100000\n",
                DEV_MAX_NODES);
        return 2;
    }
    char datebuf[64];
    if (!data) {
        snprintf(datebuf, sizeof datebuf, "/tmp/sluice-dev-XXXXXX");
        if (!mkdtemp(datebuf)) {
            fprintf(stderr, "sluice dev: cannot make a data directory: %s\n", strerror(errno));
            return 1;
        }
        data = datebuf;
    } else if (mkdir(data, 0700) && errno != EEXIST) {
        fprintf(stderr, "sluice dev: data directory %s: %s\n", data, strerror(errno));
        return 1;
    }
    char token_path[1024], token[512], err[1024];
    snprintf(token_path, sizeof token_path, "%s/token", data);
    if (dev_cluster_token(token_path, token, sizeof token, err, sizeof err)) {
        fprintf(stderr, "sluice dev: %s\n", err);
        return 1;
    }
    sl_log_set_prefix("proc=coordinator");
    signal(SIGPIPE, SIG_IGN);
    static dev_cluster_t d;
    d.loop = uv_default_loop();
    sl_coord_config_t cfg;
    sl_coord_config_default(&cfg);
    cfg.listen = listen;
    cfg.node_listen = node_listen;
    cfg.data_dir = data;
    cfg.policy_dir = policy_dir;
    if (policy) cfg.policy_file = policy;
    cfg.token = token;
    if (sl_coord_start(d.loop, &cfg, &d.coord, err, sizeof err)) {
        fprintf(stderr, "sluice dev: %s\n", err);
        uv_run(d.loop, UV_RUN_DEFAULT);
        return 1;
    }
    int created = 0;
    for (uint64_t i = 1; i <= changefeeds; i++) {
        char id[32];
        snprintf(id, sizeof id, "cf-%03llu", (unsigned long long)i);
        int rc = sl_coord_changefeed_create(d.coord, id, (uint32_t)tables);
        if (rc == 0) created++;
        else if (rc != SL_EEXIST) fprintf(stderr, "sluice dev: changefeed %s: %s\n", id, sl_strerror(rc));
    }
    char exe[4096];
    ssize_t el = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (el <= 0) {
        fprintf(stderr, "sluice dev: cannot find this binary: %s\n", strerror(errno));
        return 1;
    }
    exe[el] = 0;
    char coord_addr[64], lat[32];
    snprintf(coord_addr, sizeof coord_addr, "127.0.0.1:%d", sl_coord_node_port(d.coord));
    snprintf(lat, sizeof lat, "%llu", (unsigned long long)latency);
    for (uint64_t i = 1; i <= nodes; i++) {
        child_t *c = &d.children[d.nchildren];
        snprintf(c->id, sizeof c->id, "n%llu", (unsigned long long)i);
        char state[1100];
        snprintf(state, sizeof state, "%s/%s.json", data, c->id);
        char *args[] = {exe, "agent", "--coordinator", coord_addr, "--id", c->id, "--token-file",
                        token_path, "--state-file", state, "--task-latency-ms", lat,
                        "--die-with-parent", NULL};
        uv_stdio_container_t stdio[3] = {{.flags = UV_IGNORE},
                                         {.flags = UV_INHERIT_FD, .data.fd = 2},
                                         {.flags = UV_INHERIT_FD, .data.fd = 2}};
        uv_process_options_t po = {.exit_cb = on_child_exit, .file = exe, .args = args,
                                   .stdio_count = 3, .stdio = stdio};
        c->proc.data = c;
        int rc = uv_spawn(d.loop, &c->proc, &po);
        if (rc) {
            fprintf(stderr, "sluice dev: cannot start node %s: %s\n", c->id, uv_strerror(rc));
            continue;
        }
        c->running = 1;
        d.nchildren++;
    }
    uv_signal_init(d.loop, &d.sigint);
    uv_signal_init(d.loop, &d.sigterm);
    d.sigint.data = d.sigterm.data = &d;
    uv_signal_start(&d.sigint, on_signal, SIGINT);
    uv_signal_start(&d.sigterm, on_signal, SIGTERM);

    char host[256];
    const char *colon = strrchr(listen, ':');
    snprintf(host, sizeof host, "%.*s", (int)(colon ? colon - listen : 0), listen);
    printf("sluice dev: %d nodes, %llu changefeeds of %llu tables (%d new)\n"
           "  url:         http://%s:%d\n"
           "  token:       %s\n"
           "  token file:  %s\n"
           "  data:        %s\n"
           "  repl socket: %s/repl.sock  (sluice repl --data %s)\n"
           "  try:         curl -H 'Authorization: Bearer %s' http://%s:%d/api/v2/captures\n"
           "               curl -X PUT -H 'Authorization: Bearer %s' http://%s:%d/api/v2/captures/n1/drain\n"
           "  stop:        Ctrl-C\n",
           d.nchildren, (unsigned long long)changefeeds, (unsigned long long)tables, created, host,
           sl_coord_http_port(d.coord), token, token_path, data, data, data, token, host,
           sl_coord_http_port(d.coord), token, host, sl_coord_http_port(d.coord));
    fflush(stdout);
    uv_run(d.loop, UV_RUN_DEFAULT);
    uv_loop_close(d.loop);
    return 0;
}
