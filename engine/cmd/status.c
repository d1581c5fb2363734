/* status.c — `sluice status` (R3): the nodes, their liveness and counts, and the drain.
 *
 *   sluice status [--server A] [--token T | --token-file F] [--data DIR]
 *
 * Also home of the client flags the client commands share (repl, drain, status) and of
 * how they find the server (SPEC §4, client.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd/cmd.h"

int sl_cmd_client_flag(int argc, char **argv, int *i, sl_cmd_client_opts_t *o)
{
    static const char *const names[] = {"--server", "--token", "--token-file", "--data"};
    const char *arg = argv[*i];
    for (int k = 0; k < 4; k++) {
        size_t n = strlen(names[k]);
        const char *v = NULL;
        if (!strcmp(arg, names[k])) {
            if (*i + 1 >= argc) {
                fprintf(stderr, "sluice: %s wants a value\n", names[k]);
                return -1;
            }
            v = argv[++*i];
        } else if (!strncmp(arg, names[k], n) && arg[n] == '=') {
            v = arg + n + 1;
        } else {
            continue;
        }
        switch (k) {
        case 0: o->server = v; break;
        case 1: o->token = v; break;
        case 2: o->token_file = v; break;
        default: o->data = v; break;
        }
        return 1;
    }
    return 0;
}

int sl_cmd_client_open(const sl_cmd_client_opts_t *o, sl_client_t *c)
{
    char server[1024], token[512], how[1100], err[1200];
    char file_token[512] = "";
    if (o->token_file) {
        FILE *f = fopen(o->token_file, "r");
        size_t n = f ? fread(file_token, 1, sizeof file_token - 1, f) : 0;
        if (f)
            fclose(f);
        file_token[n] = '\0';
        while (n && (file_token[n - 1] == '\n' || file_token[n - 1] == '\r' ||
                     file_token[n - 1] == ' ' || file_token[n - 1] == '\t'))
            file_token[--n] = '\0';
        if (n == 0) {
            fprintf(stderr, "sluice: cannot read a token from %s\n", o->token_file);
            return -1;
        }
    }
    sl_client_discover(o->server, o->token ? o->token : file_token[0] ? file_token : NULL,
                       o->data, server, sizeof server, token, sizeof token, how, sizeof how, err,
                       sizeof err);
    if (sl_client_init(c, server, token, err, sizeof err) != 0) {
        fprintf(stderr, "sluice: %s\n", err);
        return -1;
    }
    return 0;
}

/* GET path; prints the error and returns -1, or 0 with a 2xx JSON response. */
int sl_cmd_get_json(sl_client_t *c, const char *method, const char *path, json_t *body,
                    sl_client_response_t *res)
{
    char err[1400];
    if (sl_client_request(c, method, path, body, res, err, sizeof err) != 0) {
        fprintf(stderr, "sluice: %s\n", err);
        return -1;
    }
    if (res->status < 200 || res->status > 299 || res->json == NULL) {
        char text[1024];
        if (res->status >= 200 && res->status <= 299)
            snprintf(text, sizeof text, "the answer to %s %s is not JSON", method, path);
        else
            sl_client_error_text(res, text, sizeof text);
        fprintf(stderr, "sluice: %s\n", text);
        sl_client_response_free(res);
        return -1;
    }
    return 0;
}

static void usage(FILE *to)
{
    fputs("usage: sluice status [--server A] [--token T | --token-file F] [--data DIR]\n"
          "  the nodes (liveness, maintainers, dispatchers, in-flight, the coordinator's own)\n"
          "  and the drain. The server is found as SPEC §4 says: --server/--token, else\n"
          "  SLUICE_SERVER/SLUICE_TOKEN, else DIR/repl.sock and DIR/token.\n",
          to);
}

static const char *jstr(json_t *o, const char *k, const char *dflt)
{
    const char *s = json_string_value(json_object_get(o, k));
    return s ? s : dflt;
}

static long long jint(json_t *o, const char *k)
{
    json_t *v = json_object_get(o, k);
    return json_is_integer(v) ? (long long)json_integer_value(v) : json_is_real(v) ? (long long)json_real_value(v) : 0;
}

static double jnum(json_t *o, const char *k, double dflt)
{
    json_t *v = json_object_get(o, k);
    return json_is_number(v) ? json_number_value(v) : dflt;
}

/* One line about a drain status object (D11), shared with `sluice drain`. */
void sl_cmd_drain_line(json_t *s, char *out, size_t outlen)
{
    const char *id = jstr(s, "capture_id", jstr(s, "draining_capture_id", "?"));
    const char *state = jstr(s, "state", "?");
    long long rm = jint(s, "remaining_maintainer_count"), rd = jint(s, "remaining_dispatcher_count");
    double progress = jnum(s, "progress", 0) * 100.0;
    double speed = jnum(s, "current_speed", 0);
    double left = jnum(s, "left_seconds", -1);
    char eta[32] = "?";
    if (left >= 0)
        snprintf(eta, sizeof eta, "%.0fs", left);
    size_t n = (size_t)snprintf(out, outlen,
                                "%s %s (epoch %lld): %lld maintainers + %lld dispatchers remaining, "
                                "%.0f%%, %.1f tasks/s, ETA %s",
                                id, state, jint(s, "epoch"), rm, rd, progress, speed, eta);
    json_t *blocked = json_object_get(s, "blocked");
    if (json_array_size(blocked) > 0 && n < outlen) {
        json_t *b = json_array_get(blocked, 0);
        snprintf(out + n, outlen - n, "; blocked: %s%s%s", jstr(b, "reason", "?"),
                 json_array_size(blocked) > 1 ? " (and " : "",
                 json_array_size(blocked) > 1 ? "more)" : "");
    }
}

int sl_cmd_status(int argc, char **argv)
{
    sl_cmd_client_opts_t o = {0};
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            usage(stdout);
            return 0;
        }
        int r = sl_cmd_client_flag(argc, argv, &i, &o);
        if (r < 0)
            return 2;
        if (r == 0) {
            fprintf(stderr, "sluice status: unknown argument '%s'\n", argv[i]);
            usage(stderr);
            return 2;
        }
    }
    sl_client_t c;
    if (sl_cmd_client_open(&o, &c) != 0)
        return 1;
    sl_client_response_t res;
    if (sl_cmd_get_json(&c, "GET", "/api/v2/captures", NULL, &res) != 0) {
        sl_client_close(&c);
        return 1;
    }
    json_t *items = json_object_get(res.json, "items");
    printf("%-20s %-9s %11s %11s %9s  %-11s %s\n", "NODE", "LIVENESS", "MAINTAINERS", "DISPATCHERS",
           "IN-FLIGHT", "COORDINATOR", "NOTE");
    const char *target = NULL;
    char target_buf[256] = "";
    size_t i;
    json_t *n;
    long long tm = 0, td = 0;
    char stopping[512] = "";
    json_array_foreach(items, i, n) {
        const char *id = jstr(n, "id", "?");
        const char *liveness = jstr(n, "liveness", "?");
        printf("%-20s %-9s %11lld %11lld %9lld  %-11s %s\n", id, liveness, jint(n, "maintainer_count"),
               jint(n, "dispatcher_count"), jint(n, "inflight"),
               json_is_true(json_object_get(n, "is_coordinator")) ? "*" : "",
               json_is_true(json_object_get(n, "leaving")) ? "shutting down" : "");
        tm += jint(n, "maintainer_count");
        td += jint(n, "dispatcher_count");
        if (!strcmp(liveness, "stopping") && strlen(stopping) + strlen(id) + 3 < sizeof stopping) {
            strcat(stopping, stopping[0] ? ", " : "");
            strcat(stopping, id);
        }
        if (!strcmp(liveness, "draining")) {
            snprintf(target_buf, sizeof target_buf, "%s", id);
            target = target_buf;
        }
    }
    printf("%zu nodes, %lld maintainers, %lld dispatchers\n", json_array_size(items), tm, td);
    if (json_is_true(json_object_get(res.json, "bootstrapping")))
        printf("coordinator: bootstrapping after a restart — nodes are reporting back, the counts "
               "above may be partial and drains wait\n");
    if (jint(res.json, "tasks_waiting") > 0) {
        const char *why = jstr(res.json, "waiting_reason", "");
        printf("waiting: %lld maintainers have no node%s%s\n", jint(res.json, "tasks_waiting"),
               why[0] ? ": " : "", why);
    }
    sl_client_response_free(&res);
    int rc = 0;
    if (target == NULL) {
        printf("drain: none running%s%s%s\n", stopping[0] ? " (stopping: " : "", stopping,
               stopping[0] ? ")" : "");
    } else {
        char path[512], esc[200];
        sl_client_escape(target, esc, sizeof esc);
        snprintf(path, sizeof path, "/api/v2/captures/%s/drain", esc);
        if (sl_cmd_get_json(&c, "GET", path, NULL, &res) != 0) {
            rc = 1;
        } else {
            char line[1024];
            sl_cmd_drain_line(res.json, line, sizeof line);
            printf("drain: %s\n", line);
            sl_client_response_free(&res);
        }
    }
    sl_client_close(&c);
    return rc;
}
