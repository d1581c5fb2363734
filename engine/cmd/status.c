/* status.c — `sluice status` (R3): the nodes, their liveness and counts, and the drain.
 *
 *   sluice status [--server A] [--token T | --token-file F] [--data DIR]
 *
 * Its numbers must add up for an operator. The node table counts the dispatchers running
 * on each node as their maintainers last reported (A2), and IN-FLIGHT the coordinator's
 * own operators toward it, which move maintainers. A dispatcher that its maintainer is
 * moving (D6) runs on no node until it arrives, so mid-drain the target's row holds fewer
 * dispatchers than the drain has left, and the column total dips. So the drain is read
 * between two reads of the node list that agree (one moment), and the target's row and the
 * total say how many dispatchers are on their way off it (the drain's remaining count
 * minus those still running there). While a restarted coordinator bootstraps (D4), the
 * drain it restored is not known yet: status says so, not "none running".
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
    return sl_cmd_expect_json(method, path, res);
}

int sl_cmd_expect_json(const char *method, const char *path, sl_client_response_t *res)
{
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

/* GET /api/v2/captures, with the drain of the node being drained (D11) when there is
 * one, both of one moment: the drain is read between two answers of the node list that
 * agree (a maintainer's report between them changes both; a few tries at most). Returns
 * 0 with *caps (free it) and, when *have_drain, *drain; *drain_not_ready when the drain
 * answered 503 NOT_READY (D4); -1 said on stderr when the node list cannot be read. */
static int snapshot(sl_client_t *c, sl_client_response_t *caps, sl_client_response_t *drain,
                    int *have_drain, int *drain_not_ready, char *target, size_t targetlen)
{
    *have_drain = *drain_not_ready = 0;
    target[0] = '\0';
    if (sl_cmd_get_json(c, "GET", "/api/v2/captures", NULL, caps) != 0)
        return -1;
    for (int attempt = 0;; attempt++) {
        size_t i;
        json_t *n;
        target[0] = '\0';
        json_array_foreach(json_object_get(caps->json, "items"), i, n) {
            if (!strcmp(jstr(n, "liveness", ""), "draining"))
                snprintf(target, targetlen, "%s", jstr(n, "id", ""));
        }
        if (!target[0])
            return 0;
        char path[512], esc[200], err[1400];
        sl_client_escape(target, esc, sizeof esc);
        snprintf(path, sizeof path, "/api/v2/captures/%s/drain", esc);
        if (sl_client_request(c, "GET", path, NULL, drain, err, sizeof err) != 0) {
            fprintf(stderr, "sluice: %s\n", err);
            return 0;
        }
        if (drain->status == 503 && !strcmp(jstr(drain->json, "error_code", ""), "NOT_READY")) {
            sl_client_response_free(drain);
            *drain_not_ready = 1;
            return 0;
        }
        if (drain->status != 200 || drain->json == NULL) {
            char text[1024];
            sl_client_error_text(drain, text, sizeof text);
            fprintf(stderr, "sluice: %s\n", text);
            sl_client_response_free(drain);
            return 0;
        }
        *have_drain = 1;
        sl_client_response_t again;
        if (attempt >= 3 || sl_cmd_get_json(c, "GET", "/api/v2/captures", NULL, &again) != 0)
            return 0; /* the last answers are as good as any */
        int same = json_equal(json_object_get(caps->json, "items"), json_object_get(again.json, "items"));
        sl_client_response_free(caps);
        *caps = again;
        if (same)
            return 0;
        sl_client_response_free(drain);
        *have_drain = 0;
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
    sl_client_response_t res, drain;
    int have_drain, drain_not_ready;
    char target[256];
    if (snapshot(&c, &res, &drain, &have_drain, &drain_not_ready, target, sizeof target) != 0) {
        sl_client_close(&c);
        return 1;
    }
    /* the target's dispatchers on their way off it: left to move, minus running there */
    long long target_running = 0, moving = 0;
    json_t *items = json_object_get(res.json, "items");
    size_t i;
    json_t *n;
    json_array_foreach(items, i, n) {
        if (target[0] && !strcmp(jstr(n, "id", ""), target))
            target_running = jint(n, "dispatcher_count");
    }
    long long left = have_drain ? jint(drain.json, "remaining_dispatcher_count") : 0;
    if (have_drain && left > target_running)
        moving = left - target_running;
    printf("%-20s %-9s %11s %11s %9s  %-11s %s\n", "NODE", "LIVENESS", "MAINTAINERS", "DISPATCHERS",
           "IN-FLIGHT", "COORDINATOR", "NOTE");
    long long tm = 0, td = 0;
    char stopping[512] = "";
    json_array_foreach(items, i, n) {
        const char *id = jstr(n, "id", "?");
        const char *liveness = jstr(n, "liveness", "?");
        char note[256] = "";
        if (json_is_true(json_object_get(n, "leaving")))
            snprintf(note, sizeof note, "shutting down");
        if (have_drain && !strcmp(id, target)) {
            size_t k = strlen(note);
            snprintf(note + k, sizeof note - k, "%s%lld dispatchers left to move off: %lld running "
                     "here + %lld on their way", k ? "; " : "", left, target_running, moving);
        }
        printf("%-20s %-9s %11lld %11lld %9lld  %-11s %s\n", id, liveness, jint(n, "maintainer_count"),
               jint(n, "dispatcher_count"), jint(n, "inflight"),
               json_is_true(json_object_get(n, "is_coordinator")) ? "*" : "", note);
        tm += jint(n, "maintainer_count");
        td += jint(n, "dispatcher_count");
        if (!strcmp(liveness, "stopping") && strlen(stopping) + strlen(id) + 3 < sizeof stopping) {
            strcat(stopping, stopping[0] ? ", " : "");
            strcat(stopping, id);
        }
    }
    /* a dispatcher on its way runs on no row; the drain knows how many of the target's
     * are on their way off it, and the total counts them once */
    char on_way[300] = "";
    if (moving)
        snprintf(on_way, sizeof on_way, " (%lld of them on their way off %s)", moving, target);
    printf("%zu nodes, %lld maintainers, %lld dispatchers%s\n", json_array_size(items), tm,
           td + moving, on_way);
    if (target[0])
        printf("  DISPATCHERS: running on the node, as their maintainers last reported; a\n"
               "  dispatcher that its maintainer is moving (D6) is on no row until it runs again.\n"
               "  IN-FLIGHT: maintainers on their way to the node (a moving maintainer stays on\n"
               "  its origin's row until it has stopped there).\n");
    int bootstrapping = json_is_true(json_object_get(res.json, "bootstrapping"));
    if (bootstrapping)
        printf("coordinator: bootstrapping after a restart — nodes are reporting back; the liveness "
               "and counts above are provisional (a node whose drain was saved shows alive until "
               "its drain resumes) and drains wait\n");
    if (jint(res.json, "tasks_waiting") > 0) {
        const char *why = jstr(res.json, "waiting_reason", "");
        printf("waiting: %lld maintainers have no node%s%s\n", jint(res.json, "tasks_waiting"),
               why[0] ? ": " : "", why);
    }
    int rc = 0;
    json_t *restored = json_object_get(res.json, "recovered_drain");
    json_t *boot_left = json_object_get(res.json, "bootstrap_left_ms");
    if (bootstrapping && json_is_integer(boot_left)) {
        /* D4: the drain restored from the store resumes when bootstrap ends */
        double s = (double)json_integer_value(boot_left) / 1000.0;
        if (json_is_object(restored))
            printf("drain: the drain of %s (epoch %lld) saved before the restart resumes when "
                   "bootstrap ends, in %.1f s (if %s is back by then)\n",
                   jstr(restored, "capture_id", "?"), jint(restored, "epoch"), s,
                   jstr(restored, "capture_id", "?"));
        else
            printf("drain: none was saved before the restart; bootstrap ends in %.1f s\n", s);
    } else if (bootstrapping || drain_not_ready) {
        /* neither the node list nor GET …/drain (503) can tell whether there is one */
        printf("drain: not known yet — the coordinator is bootstrapping; a drain saved before the "
               "restart resumes when bootstrap ends (by default within the node timeout, 10 s): "
               "run sluice status again then\n");
    } else if (have_drain) {
        char line[1024];
        sl_cmd_drain_line(drain.json, line, sizeof line);
        printf("drain: %s\n", line);
    } else if (target[0]) {
        rc = 1; /* said on stderr */
    } else {
        printf("drain: none running%s%s%s\n", stopping[0] ? " (stopping: " : "", stopping,
               stopping[0] ? ")" : "");
        /* D11: how the latest one ended — a lost target (D9) is in no row any more */
        json_t *last = json_object_get(res.json, "last_drain");
        if (json_is_object(last)) {
            const char *why = jstr(last, "reason", "");
            printf("last drain: %s %s (epoch %lld)%s%s\n", jstr(last, "capture_id", "?"),
                   jstr(last, "state", "?"), jint(last, "epoch"), why[0] ? ": " : "", why);
        }
    }
    if (have_drain)
        sl_client_response_free(&drain);
    sl_client_response_free(&res);
    sl_client_close(&c);
    return rc;
}
