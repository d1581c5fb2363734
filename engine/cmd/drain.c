/* drain.c — `sluice drain ID [--watch] [--dry-run] [--cancel]` (R2; D1, D3, D11, D12).
 *
 * Starts (PUT), cancels (DELETE) or previews (GET …/drain/plan) the drain of one node.
 * With --watch it polls GET …/drain until the drain ends: on a terminal, one progress line
 * redrawn in place (remaining maintainers + dispatchers, speed, ETA; cleared at the end);
 * into a pipe, a plain line whenever something changed. Exit status: 0 when the drain
 * completed (or, without --watch, when the request was accepted), 1 when it was cancelled
 * or its node lost, or on any error, 2 on bad usage.
 *
 * What it prints must hold at 3 a.m.: a drain that ended says why (L4, D9); a `blocked`
 * reason (D10) shows only once it has lasted about a second, as the coordinator's own
 * warning does, so the normal wait for the nodes' epoch acknowledgements at the start does
 * not look like a fault; a coordinator still bootstrapping after a restart (503 NOT_READY,
 * D4) is waited for, up to --wait-s (60 s), when the drain is started or cancelled and
 * while it is watched, and so is one that cannot be reached (restarting) while a drain is
 * watched; a watch that gives up says that the drain is kept by the coordinator and goes
 * on when it is back, and how to follow it again. */
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

#define WAIT_S_DEFAULT 60 /* how long a restarting or bootstrapping coordinator is waited for */
#define BLOCKED_AFTER_S 1.0 /* a blocked reason shows once it has lasted this long (D10) */

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
          "  --cancel    cancel the running drain of ID\n"
          "  --wait-s N  wait up to N s (60) for a coordinator that is restarting or\n"
          "              bootstrapping, before giving up\n",
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

/* An ETA: rounded up, so that a drain with something left never shows "0s". */
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

/* A time the clock measured (how long a watch lasted), to the nearest tenth of a second
 * under 10 s, else to the nearest second: 1.5 s is "1.5s", not "2s". */
static void fmt_elapsed(double s, char *out, size_t outlen)
{
    if (s < 9.95) {
        snprintf(out, outlen, "%.1fs", s < 0 ? 0 : s);
        return;
    }
    long t = lround(s);
    if (t < 60)
        snprintf(out, outlen, "%lds", t);
    else if (t < 3600)
        snprintf(out, outlen, "%ldm%02lds", t / 60, t % 60);
    else
        snprintf(out, outlen, "%ldh%02ldm", t / 3600, (t % 3600) / 60);
}

static int is_not_ready(const sl_client_response_t *res)
{
    return res->status == 503 && !strcmp(jstr(res->json, "error_code", ""), "NOT_READY");
}

/* Why an ended drain ended (L4: "it is the last node (L4)", D9: "the target left the
 * cluster (D9)"), from its `blocked` list: the entry that names no task (the others are
 * stuck operators, D11). NULL when it gives none, as an operator's cancel does. */
static const char *end_reason(json_t *s)
{
    json_t *b;
    size_t i;
    json_array_foreach(json_object_get(s, "blocked"), i, b) {
        const char *r = json_string_value(json_object_get(b, "reason"));
        if (!json_is_string(json_object_get(b, "task")) && r && r[0])
            return r;
    }
    return NULL;
}

/* D10: a blocked reason shows once the drain has been blocked for BLOCKED_AFTER_S of
 * watching, as the coordinator's own log warning waits a second. Every drain starts with
 * a short wait for the nodes to acknowledge its epoch (D5) that reads "no schedulable
 * destination"; shown at once, it would make every normal start look alarming. A block
 * whose reason changes (one node of two left, say) is still the same block: it stays
 * shown, with its current reason. */
typedef struct {
    double since; /* when the drain was first seen blocked, in a row; < 0 when it is not */
} blocked_seen_t;

/* Empties the status's `blocked` while the drain has been blocked less than
 * BLOCKED_AFTER_S. */
static void hold_back_blocked(json_t *s, blocked_seen_t *seen, double now)
{
    json_t *blocked = json_object_get(s, "blocked");
    if (json_array_size(blocked) == 0) {
        seen->since = -1;
        return;
    }
    if (seen->since < 0)
        seen->since = now;
    if (now - seen->since < BLOCKED_AFTER_S)
        json_object_set_new(s, "blocked", json_array());
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

/* A request that changes the drain (PUT, DELETE). A coordinator that has just restarted
 * answers 503 NOT_READY while the nodes report back (D4); that is waited for, up to
 * wait_s, and said once. Then as sl_cmd_get_json: 0 with a 2xx JSON answer in *res, or
 * -1 said on stderr. An unreachable coordinator is said at once: a mistyped --server must
 * not hang. */
static int request_when_ready(sl_client_t *c, const char *method, const char *path,
                              const char *what, int wait_s, int interval_ms,
                              sl_client_response_t *res)
{
    double since = -1;
    for (;;) {
        char err[1400];
        if (sl_client_request(c, method, path, NULL, res, err, sizeof err) != 0) {
            fprintf(stderr, "sluice: %s\n", err);
            return -1;
        }
        if (!is_not_ready(res))
            break;
        sl_client_response_free(res);
        double now = mono_s();
        if (since < 0) {
            since = now;
            fprintf(stderr, "sluice: the coordinator is starting up (bootstrapping after a restart, "
                            "the nodes are reporting back); waiting up to %d s to %s\n",
                    wait_s, what);
        } else if (now - since >= wait_s) {
            fprintf(stderr, "sluice: the coordinator is still bootstrapping after %d s; nothing "
                            "was done (sluice status says when it is ready)\n",
                    wait_s);
            return -1;
        }
        sleep_ms(interval_ms);
    }
    return sl_cmd_expect_json(method, path, res);
}

/* D12. The plan's moves are the node's maintainers (the coordinator places only those);
 * its dispatchers are moved by their own maintainers (D6), and the plan counts them. */
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
    long long ndisp = jint(res.json, "dispatcher_count");
    size_t ncf = json_array_size(json_object_get(res.json, "dispatchers_by_changefeed"));
    printf("dry run: draining %s with policy %s (version %lld) ", id, jstr(res.json, "policy", "?"),
           jint(res.json, "policy_version"));
    if (n == 0 && ndisp == 0)
        printf("would move nothing: %s holds no maintainer and no dispatcher (it would be "
               "stopping at once)\n", id);
    else
        printf("would move %zu maintainers and %lld dispatchers:\n", n, ndisp);
    if (n) {
        printf("  %zu maintainers, placed by the policy", n);
        if (waiting)
            printf(" (%zu of them would wait: no destination now)", waiting);
        printf(":\n");
    }
    json_array_foreach(moves, i, m) {
        const char *to = json_string_value(json_object_get(m, "to"));
        if (to)
            printf("    %-32s -> %s\n", jstr(m, "task", "?"), to);
        else
            printf("    %-32s    waits (no destination)\n", jstr(m, "task", "?"));
    }
    if (ndisp)
        printf("  %lld dispatchers of %zu changefeeds, which their own maintainers move off %s "
               "in batches (D6)\n", ndisp, ncf, id);
    printf("nothing was changed\n");
    sl_client_response_free(&res);
    return 0;
}

static int cancel(sl_client_t *c, const char *id, const char *esc, int wait_s, int interval_ms)
{
    char path[512];
    snprintf(path, sizeof path, "/api/v2/captures/%s/drain", esc);
    sl_client_response_t res;
    if (request_when_ready(c, "DELETE", path, "cancel the drain", wait_s, interval_ms, &res) != 0)
        return 1;
    printf("drain of %s cancelled (epoch %lld): no new moves start, the running ones finish, "
           "%s is alive again\n", id, jint(res.json, "epoch"), id);
    sl_client_response_free(&res);
    return 0;
}

/* Why the watch polls nothing useful right now. */
enum trouble { FINE, UNREACHABLE, BOOTSTRAPPING };

/* A watch that waited wait_s for the coordinator and stops: the drain itself does not
 * stop (D4), and the operator is told how to follow it again. */
static void stop_waiting(const char *id, const char *why, int wait_s, const char *back)
{
    fprintf(stderr,
            "sluice: %s, still after %d s; stopped watching\n"
            "sluice: the drain of %s is not cancelled: the coordinator keeps it in its store "
            "and it goes on when the coordinator %s (D4)\n"
            "sluice: to follow it again: sluice drain %s --watch (or sluice status)\n",
            why, wait_s, id, back, id);
}

/* Polls the drain of `id` until it ends. */
static int watch(sl_client_t *c, const char *id, const char *esc, int interval_ms, int wait_s)
{
    int tty = isatty(STDOUT_FILENO);
    char path[512];
    snprintf(path, sizeof path, "/api/v2/captures/%s/drain", esc);
    double t0 = mono_s(), trouble_since = 0;
    enum trouble trouble = FINE;
    blocked_seen_t seen = {-1};
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
            if (trouble != UNREACHABLE) {
                trouble = UNREACHABLE;
                trouble_since = mono_s();
                if (drawn)
                    clear_bar();
                drawn = 0;
                fprintf(stderr, "sluice: %s; retrying for up to %d s\n", err, wait_s);
            } else if (mono_s() - trouble_since > wait_s) {
                stop_waiting(id, err, wait_s, "is back");
                break;
            }
            sleep_ms(interval_ms);
            continue;
        }
        if (is_not_ready(&res)) {
            /* D4: a restarted coordinator hears back from the nodes first; the drain resumes */
            sl_client_response_free(&res);
            if (trouble != BOOTSTRAPPING) {
                trouble = BOOTSTRAPPING;
                trouble_since = mono_s();
                if (drawn)
                    clear_bar();
                drawn = 0;
                fprintf(stderr, "sluice: the coordinator is bootstrapping after a restart (the "
                                "drain resumes when it is done); waiting for up to %d s\n",
                        wait_s);
            } else if (mono_s() - trouble_since > wait_s) {
                stop_waiting(id, "the coordinator is bootstrapping", wait_s,
                             "has finished bootstrapping");
                break;
            }
            sleep_ms(interval_ms);
            continue;
        }
        trouble = FINE;
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
            hold_back_blocked(res.json, &seen, mono_s());
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
        const char *why = end_reason(res.json);
        if (!strcmp(state, "completed")) {
            char took[32];
            fmt_elapsed(mono_s() - t0, took, sizeof took);
            printf("drain of %s completed: %lld maintainers and %lld dispatchers moved (watched "
                   "for %s); %s is stopping and can be shut down\n",
                   id, jint(res.json, "initial_maintainer_count"),
                   jint(res.json, "initial_dispatcher_count"), took, id);
            rc = 0;
        } else if (!strcmp(state, "cancelled")) {
            /* L4 gives its reason; an operator's cancel gives none */
            printf("drain of %s was cancelled%s%s; %s is alive again", id, why ? ": " : "",
                   why ? why : "", id);
            long long rm = jint(res.json, "remaining_maintainer_count");
            long long rd = jint(res.json, "remaining_dispatcher_count");
            if (rm || rd)
                printf(", with %lld maintainers and %lld dispatchers still on it", rm, rd);
            printf("\n");
        } else if (!strcmp(state, "lost")) {
            printf("%s was lost during its drain: %s; its tasks are being placed on other nodes\n",
                   id, why ? why : "it left the cluster (D9)");
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
    int watch_flag = 0, dry = 0, cancel_flag = 0, interval_ms = 0, wait_s = WAIT_S_DEFAULT;
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
        } else if (!strcmp(a, "--wait-s")) {
            char *end = NULL;
            long v = i + 1 < argc ? strtol(argv[i + 1], &end, 10) : -1;
            if (i + 1 >= argc || end == argv[i + 1] || *end != '\0' || v < 0 || v > 86400) {
                fprintf(stderr, "sluice drain: --wait-s wants a number of seconds (0..86400)\n");
                return 2;
            }
            wait_s = (int)v;
            i++;
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
        rc = cancel(&c, id, esc, wait_s, interval_ms);
    } else {
        char path[512];
        snprintf(path, sizeof path, "/api/v2/captures/%s/drain", esc);
        sl_client_response_t res;
        rc = request_when_ready(&c, "PUT", path, "start the drain", wait_s, interval_ms, &res);
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
                rc = watch(&c, id, esc, interval_ms, wait_s);
        } else {
            rc = 1;
        }
    }
    sl_client_close(&c);
    return rc;
}
