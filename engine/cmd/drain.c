/* drain.c — `sluice drain ID [--watch] [--dry-run] [--cancel]` (R2; D1, D3, D11, D12).
 *
 * Starts (PUT), cancels (DELETE) or previews (GET …/drain/plan) the drain of one node.
 * With --watch it polls GET …/drain until the drain ends: on a terminal, one progress line
 * redrawn in place (remaining maintainers + dispatchers, speed, ETA; cleared at the end);
 * into a pipe, a plain line whenever something changed. Exit status: 0 when the drain
 * completed (or, without --watch, when the request was accepted), 1 when it was cancelled
 * or its node lost, or on any error, 2 on bad usage. A coordinator that restarts during
 * --watch (D4) is waited for, up to 60 s. */
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#include "cmd/cmd.h"

#define WATCH_RETRY_S 60

static volatile sig_atomic_t interrupted;

static void on_sigint(int sig)
{
    (void)sig;
    interrupted = 1;
}

static void usage(FILE *to)
{
    fputs("usage: sluice drain ID [--watch] [--dry-run] [--cancel]\n"
          "                  [--server A] [--token T | --token-file F] [--data DIR]\n"
          "  starts draining node ID: its maintainers and dispatchers move elsewhere, in\n"
          "  batches, then it is Stopping and can be shut down.\n"
          "  --watch     follow it until it ends (exit 0 when it completed)\n"
          "  --dry-run   print the moves the live policy would make; change nothing\n"
          "  --cancel    cancel the running drain of ID\n",
          to);
}

static double mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR && !interrupted) {
    }
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

static const char *jstr(json_t *o, const char *k, const char *dflt)
{
    const char *s = json_string_value(json_object_get(o, k));
    return s ? s : dflt;
}

static int term_width(void)
{
    struct winsize ws;
    if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 20)
        return ws.ws_col;
    return 80;
}

static void fmt_duration(double s, char *out, size_t outlen)
{
    if (s < 0)
        snprintf(out, outlen, "?");
    else if (s < 60)
        snprintf(out, outlen, "%.0fs", ceil(s));
    else if (s < 3600)
        snprintf(out, outlen, "%dm%02ds", (int)s / 60, (int)s % 60);
    else
        snprintf(out, outlen, "%dh%02dm", (int)s / 3600, ((int)s % 3600) / 60);
}

/* The terminal's progress line: bar, percent, remaining, speed, ETA, cut to the width. */
static void draw_bar(json_t *s, const char *id)
{
    int width = term_width() - 1;
    double p = jnum(s, "progress", 0);
    if (p < 0)
        p = 0;
    if (p > 1)
        p = 1;
    char bar[32];
    int cells = 12, full = (int)(p * cells);
    for (int i = 0; i < cells; i++)
        bar[i] = i < full ? '#' : '-';
    bar[cells] = '\0';
    char eta[32];
    fmt_duration(jnum(s, "left_seconds", -1), eta, sizeof eta);
    json_t *blocked = json_object_get(s, "blocked");
    char line[512];
    int n = snprintf(line, sizeof line,
                     "%s [%s] %3.0f%%  left %lld maintainers, %lld dispatchers  %.1f/s  ETA %s%s%s",
                     id, bar, p * 100.0, jint(s, "remaining_maintainer_count"),
                     jint(s, "remaining_dispatcher_count"), jnum(s, "current_speed", 0), eta,
                     json_array_size(blocked) ? "  blocked: " : "",
                     json_array_size(blocked) ? jstr(json_array_get(blocked, 0), "reason", "?") : "");
    if (n > width && width > 0)
        line[width] = '\0';
    printf("\r\033[K%s", line);
    fflush(stdout);
}

static void clear_bar(void)
{
    printf("\r\033[K");
    fflush(stdout);
}

static int dry_run(sl_client_t *c, const char *id, const char *esc)
{
    char path[512];
    snprintf(path, sizeof path, "/api/v2/captures/%s/drain/plan", esc);
    sl_client_response_t res;
    if (sl_cmd_get_json(c, "GET", path, NULL, &res) != 0)
        return 1;
    json_t *moves = json_object_get(res.json, "moves");
    size_t n = json_array_size(moves), waiting = 0, i;
    json_t *m;
    json_array_foreach(moves, i, m) if (!json_is_string(json_object_get(m, "to"))) waiting++;
    printf("dry run: draining %s with policy %s (version %lld) would move %zu tasks%s\n", id,
           jstr(res.json, "policy", "?"), jint(res.json, "policy_version"), n - waiting,
           waiting ? "" : ":");
    if (waiting)
        printf("  (%zu would wait: no destination now)\n", waiting);
    json_t *disp = json_object_get(res.json, "dispatchers_by_changefeed");
    if (json_array_size(disp))
        printf("  and %lld dispatchers of %zu changefeeds, which their maintainers move off %s "
               "in batches (D6)\n", jint(res.json, "dispatcher_count"), json_array_size(disp), id);
    json_array_foreach(moves, i, m) {
        const char *to = json_string_value(json_object_get(m, "to"));
        if (to)
            printf("  %-32s -> %s\n", jstr(m, "task", "?"), to);
        else
            printf("  %-32s    waits (no destination)\n", jstr(m, "task", "?"));
    }
    printf("nothing was changed\n");
    sl_client_response_free(&res);
    return 0;
}

static int cancel(sl_client_t *c, const char *id, const char *esc)
{
    char path[512];
    snprintf(path, sizeof path, "/api/v2/captures/%s/drain", esc);
    sl_client_response_t res;
    if (sl_cmd_get_json(c, "DELETE", path, NULL, &res) != 0)
        return 1;
    printf("drain of %s cancelled (epoch %lld): no new moves start, the running ones finish, "
           "%s is alive again\n", id, jint(res.json, "epoch"), id);
    sl_client_response_free(&res);
    return 0;
}

/* Polls the drain of `id` until it ends. */
static int watch(sl_client_t *c, const char *id, const char *esc, int interval_ms)
{
    int tty = isatty(STDOUT_FILENO);
    char path[512];
    snprintf(path, sizeof path, "/api/v2/captures/%s/drain", esc);
    double t0 = mono_s(), unreachable_since = -1;
    char last[1024] = "";
    int drawn = 0;
    struct sigaction sa, old;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigint;
    sigaction(SIGINT, &sa, &old);
    int rc = 1;
    while (!interrupted) {
        sl_client_response_t res;
        char err[1400];
        if (sl_client_request(c, "GET", path, NULL, &res, err, sizeof err) != 0) {
            if (unreachable_since < 0) {
                unreachable_since = mono_s();
                if (drawn)
                    clear_bar();
                drawn = 0;
                fprintf(stderr, "sluice: %s; retrying for up to %d s\n", err, WATCH_RETRY_S);
            } else if (mono_s() - unreachable_since > WATCH_RETRY_S) {
                fprintf(stderr, "sluice: %s; giving up\n", err);
                break;
            }
            sleep_ms(interval_ms);
            continue;
        }
        if (res.status == 503 && !strcmp(jstr(res.json, "error_code", ""), "NOT_READY")) {
            /* D4: a restarted coordinator hears back from the nodes first; the drain resumes */
            if (unreachable_since < 0) {
                unreachable_since = mono_s();
                if (drawn)
                    clear_bar();
                drawn = 0;
                fprintf(stderr, "sluice: the coordinator is bootstrapping after a restart; waiting "
                                "for up to %d s\n", WATCH_RETRY_S);
            } else if (mono_s() - unreachable_since > WATCH_RETRY_S) {
                fprintf(stderr, "sluice: the coordinator is still bootstrapping; giving up\n");
                sl_client_response_free(&res);
                break;
            }
            sl_client_response_free(&res);
            sleep_ms(interval_ms);
            continue;
        }
        unreachable_since = -1;
        if (res.status != 200 || res.json == NULL) {
            char text[1024];
            sl_client_error_text(&res, text, sizeof text);
            sl_client_response_free(&res);
            if (drawn)
                clear_bar();
            fprintf(stderr, "sluice: %s\n", text);
            break;
        }
        const char *state = jstr(res.json, "state", "?");
        if (!strcmp(state, "draining")) {
            if (tty) {
                draw_bar(res.json, id);
                drawn = 1;
            } else {
                char line[1024];
                sl_cmd_drain_line(res.json, line, sizeof line);
                /* a line when something changed (speed and ETA alone do not count) */
                char key[1024];
                json_t *blocked = json_object_get(res.json, "blocked");
                snprintf(key, sizeof key, "%lld/%lld/%s", jint(res.json, "remaining_maintainer_count"),
                         jint(res.json, "remaining_dispatcher_count"),
                         json_array_size(blocked) ? jstr(json_array_get(blocked, 0), "reason", "") : "");
                if (strcmp(key, last) != 0) {
                    printf("[%6.1fs] %s\n", mono_s() - t0, line);
                    fflush(stdout);
                    snprintf(last, sizeof last, "%s", key);
                }
            }
            sl_client_response_free(&res);
            sleep_ms(interval_ms);
            continue;
        }
        if (drawn)
            clear_bar();
        drawn = 0;
        char took[32];
        fmt_duration(mono_s() - t0, took, sizeof took);
        if (!strcmp(state, "completed")) {
            printf("drain of %s completed: %lld maintainers and %lld dispatchers moved (watched "
                   "for %s); %s is stopping and can be shut down\n",
                   id, jint(res.json, "initial_maintainer_count"),
                   jint(res.json, "initial_dispatcher_count"), took, id);
            rc = 0;
        } else if (!strcmp(state, "cancelled")) {
            printf("drain of %s was cancelled; %s is alive again\n", id, id);
        } else if (!strcmp(state, "lost")) {
            printf("%s was lost during its drain: its tasks are being placed elsewhere\n", id);
        } else {
            printf("%s has no drain (state %s)\n", id, state);
        }
        fflush(stdout);
        sl_client_response_free(&res);
        break;
    }
    if (interrupted) {
        if (drawn)
            clear_bar();
        printf("stopped watching; the drain of %s goes on (sluice drain %s --cancel cancels it)\n",
               id, id);
        rc = 130;
    }
    sigaction(SIGINT, &old, NULL);
    return rc;
}

int sl_cmd_drain(int argc, char **argv)
{
    sl_cmd_client_opts_t o = {0};
    const char *id = NULL;
    int watch_flag = 0, dry = 0, cancel_flag = 0, interval_ms = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--watch") || !strcmp(a, "-w")) {
            watch_flag = 1;
        } else if (!strcmp(a, "--dry-run")) {
            dry = 1;
        } else if (!strcmp(a, "--cancel")) {
            cancel_flag = 1;
        } else if (!strcmp(a, "--interval-ms") && i + 1 < argc) {
            interval_ms = atoi(argv[++i]);
        } else {
            int r = sl_cmd_client_flag(argc, argv, &i, &o);
            if (r < 0)
                return 2;
            if (r == 0) {
                if (a[0] == '-' || id != NULL) {
                    fprintf(stderr, "sluice drain: unknown argument '%s'\n", a);
                    usage(stderr);
                    return 2;
                }
                id = a;
            }
        }
    }
    if (id == NULL || id[0] == '\0') {
        fprintf(stderr, "sluice drain: which node? give its id\n");
        usage(stderr);
        return 2;
    }
    if (dry + cancel_flag > 1) {
        fprintf(stderr, "sluice drain: --dry-run and --cancel do not go together\n");
        return 2;
    }
    int tty = isatty(STDOUT_FILENO);
    if (interval_ms <= 0)
        interval_ms = tty ? 250 : 500;
    sl_client_t c;
    if (sl_cmd_client_open(&o, &c) != 0)
        return 1;
    char esc[256];
    sl_client_escape(id, esc, sizeof esc);
    int rc;
    if (dry) {
        rc = dry_run(&c, id, esc);
    } else if (cancel_flag) {
        rc = cancel(&c, id, esc);
    } else {
        char path[512];
        snprintf(path, sizeof path, "/api/v2/captures/%s/drain", esc);
        sl_client_response_t res;
        rc = sl_cmd_get_json(&c, "PUT", path, NULL, &res);
        if (rc == 0) {
            long long m = jint(res.json, "current_maintainer_count");
            long long d = jint(res.json, "current_dispatcher_count");
            if (res.status == 200)
                printf("%s holds nothing: it is stopping now\n", id);
            else
                printf("draining %s: %lld maintainers and %lld dispatchers to move\n", id, m, d);
            fflush(stdout);
            sl_client_response_free(&res);
            if (watch_flag)
                rc = watch(&c, id, esc, interval_ms);
        } else {
            rc = 1;
        }
    }
    sl_client_close(&c);
    return rc;
}
