/* repl_test.c — the REPL's evaluation engine (R1) against a real core: expressions,
 * tables, several results, errors, incomplete chunks, the budget and the memory cap,
 * the inspection and steering functions, completion, the HTTP handlers, and sessions:
 * isolation, the cap, idle expiry (on an injected clock, never a sleep), unknown ids,
 * reset(), and the `sluice repl` client recovering from an expired session. */
#include <stdatomic.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <pty.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "core/core.h"
#include "net/client.h"
#include "net/http.h"
#include "net/repl.h"
#include "policy/registry.h"
#include "tap.h"

static sl_core_t *core;
static sl_repl_t *repl;
static char sid[SL_REPL_ID_SIZE]; /* the session ev() evaluates in */
static _Atomic uint64_t fake_now = 1000000; /* the sessions' clock; the server thread reads it */

static uint64_t fake_clock(void *arg)
{
    return atomic_load(&fake_now);
}
static int starts, cancels;
static const char *cfs[] = {"cf1", "cf2", NULL};

static int cb_drain_start(void *arg, const char *id, sl_drain_counts_t *counts)
{
    starts++;
    return sl_core_drain_start(core, id, 1000, counts);
}

static int cb_drain_cancel(void *arg, const char *id)
{
    cancels++;
    return sl_core_drain_cancel(core, id, 2000);
}

static uint64_t cb_now(void *arg)
{
    return 1500;
}

static const char *cb_cf_at(void *arg, size_t i)
{
    return i < 2 ? cfs[i] : NULL;
}

static char last[1 << 16];
static int last_incomplete;

/* Evaluates and keeps the output in `last`; returns the code. */
static int ev(const char *code)
{
    char *out = NULL;
    int rc = sl_repl_eval(repl, sid, code, &out, &last_incomplete);
    snprintf(last, sizeof last, "%s", out ? out : "(null)");
    free(out);
    return rc;
}

static int ev_is(const char *code, const char *want)
{
    int rc = ev(code);
    if (rc != 0 || strcmp(last, want) != 0) {
        printf("# eval %s\n#   got (rc %d): [%s]\n#   want: [%s]\n", code, rc, last, want);
        return 0;
    }
    return 1;
}

static int ev_has(const char *code, const char *want)
{
    ev(code);
    if (strstr(last, want) == NULL) {
        printf("# eval %s\n#   got: [%s]\n#   want to contain: [%s]\n", code, last, want);
        return 0;
    }
    return 1;
}

static double mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* Every start is delivered and reported working; every stop reported stopped. */
static void settle(uint64_t now)
{
    for (int round = 0; round < 100; round++) {
        size_t n = 0;
        const sl_msg_t *m = sl_core_outbox(core, &n);
        if (n == 0)
            return;
        sl_msg_t *copy = malloc(n * sizeof *copy);
        memcpy(copy, m, n * sizeof *copy);
        sl_core_outbox_clear(core);
        for (size_t i = 0; i < n; i++) {
            if (copy[i].type == SL_MSG_DRAIN)
                sl_core_heartbeat(core, copy[i].node, copy[i].epoch, now);
            else
                sl_core_report(core, copy[i].node, copy[i].task,
                               copy[i].type == SL_MSG_START ? SL_REPORT_WORKING : SL_REPORT_STOPPED,
                               now);
        }
        free(copy);
        sl_core_tick(core, now);
    }
}

static int complete_is(const char *prefix, const char *a, const char *b)
{
    char **m = NULL;
    size_t n = 0;
    int rc = sl_repl_complete(repl, sid, prefix, &m, &n);
    int ok = rc == 0 && n == (b ? 2u : a ? 1u : 0u) && (!a || !strcmp(m[0], a)) &&
             (!b || !strcmp(m[1], b));
    if (!ok) {
        printf("# complete %s: rc %d, %zu matches:", prefix, rc, n);
        for (size_t i = 0; i < n; i++)
            printf(" %s", m[i]);
        printf("\n");
    }
    sl_repl_matches_free(m, n);
    return ok;
}

static json_t *http_call(void (*h)(void *, const sl_http_request_t *, sl_http_response_t *),
                         const char *body, int *status)
{
    sl_http_request_t req;
    sl_http_response_t res;
    memset(&req, 0, sizeof req);
    memset(&res, 0, sizeof res);
    req.method = "POST";
    req.path = req.url = "/api/v2/repl";
    req.query = "";
    req.body = body;
    req.body_len = strlen(body);
    h(repl, &req, &res);
    *status = res.status;
    json_t *j = res.body ? json_loadb(res.body, res.body_len, 0, NULL) : NULL;
    free(res.body);
    return j;
}

/* ---- sessions --------------------------------------------------------------------------- */

/* Evaluates in session `id` (NULL: one-shot); 1 when it answers `want` exactly. */
static int ev_in_is(const char *id, const char *code, const char *want)
{
    char *out = NULL;
    int incomplete;
    int rc = sl_repl_eval(repl, id, code, &out, &incomplete);
    int ok = rc == 0 && out && strcmp(out, want) == 0;
    if (!ok)
        printf("# eval in %s: %s\n#   got (rc %d): [%s]\n#   want: [%s]\n", id ? id : "(one-shot)",
               code, rc, out ? out : "(null)", want);
    free(out);
    return ok;
}

static int eval_rc(const char *id, const char *code)
{
    char *out = NULL;
    int incomplete;
    int rc = sl_repl_eval(repl, id, code, &out, &incomplete);
    free(out);
    return rc;
}

static int gone_says(const char *id, const char *want)
{
    char why[512];
    sl_repl_session_gone(repl, id, why, sizeof why);
    if (strstr(why, want) == NULL) {
        printf("# gone(%s): [%s], want [%s]\n", id, why, want);
        return 0;
    }
    return 1;
}

static json_t *http_json(void (*h)(void *, const sl_http_request_t *, sl_http_response_t *),
                         json_t *body, int *status)
{
    char *text = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    json_t *j = http_call(h, text ? text : "", status);
    free(text);
    return j;
}

static const char *error_code_of(json_t *j)
{
    const char *c = json_string_value(json_object_get(j, "error_code"));
    return c ? c : "";
}

static void test_sessions(void)
{
    char err[512], a[SL_REPL_ID_SIZE], b[SL_REPL_ID_SIZE];
    sl_repl_sessions_config_t sc = {4, 60000, fake_clock, NULL};
    TAP_CHECK(sl_repl_configure_sessions(repl, &sc) == 0, "R1: sessions are configured");
    atomic_fetch_add(&fake_now, 1); /* sid, used by the tests above, is the longest idle */
    int rc = sl_repl_session_open(repl, a, err, sizeof err);
    rc = rc || sl_repl_session_open(repl, b, err, sizeof err);
    TAP_CHECK(rc == 0 && strcmp(a, b) != 0, "R1: two sessions, two ids");

    /* isolation */
    TAP_CHECK(ev_in_is(a, "secret = 42 local hidden = 1", "") && ev_in_is(b, "secret", "nil\n") &&
                  ev_in_is(a, "secret", "42\n"),
              "R1: a global set in one session is not seen by another");
    TAP_CHECK(ev_in_is(b, "nodes = nil drain = 'mine'", "") && ev_in_is(a, "#nodes(), type(drain)", "3\ttable\n"),
              "R1: replacing the REPL's functions in one session leaves another's alone");
    TAP_CHECK(ev_in_is(NULL, "secret, drain.status().state", "nil\tnone\n"),
              "R1: an evaluation without a session sees no session's globals");
    size_t before = sl_repl_session_count(repl);
    TAP_CHECK(ev_in_is(NULL, "oneshot = 1", "") && ev_in_is(NULL, "oneshot", "nil\n") &&
                  sl_repl_session_count(repl) == before,
              "R1: an evaluation without a session is one-shot and opens no session");
    /* one session's runaway state does not reach another: memory and budget are its own */
    /* 4 MiB each: a holds 1.5 MiB, so building another 1.5 MiB (3 MiB at its peak) fails
     * there and succeeds in b */
    TAP_CHECK(ev_in_is(a, "hog = ('x'):rep(3 << 19)", "") &&
                  eval_rc(a, "hog2 = ('y'):rep(3 << 19)") == SL_EPOLICY &&
                  ev_in_is(b, "#(('y'):rep(3 << 19))", "1572864\n"),
              "R1: a session at its memory cap does not take another's memory");
    TAP_CHECK(eval_rc(a, "while true do end") == SL_EPOLICY && ev_in_is(b, "'b fine'", "b fine\n") &&
                  ev_in_is(a, "#hog", "1572864\n"),
              "R1: a runaway loop in one session leaves another (and itself) usable");

    /* reset() */
    TAP_CHECK(ev_in_is(a, "reset()", "session reset: a fresh Lua state, every global and local gone\n") &&
                  ev_in_is(a, "secret, hog", "nil\tnil\n") && ev_in_is(a, "#nodes()", "3\n"),
              "R1: reset() starts the session afresh, with the REPL's functions");
    TAP_CHECK(eval_rc(b, "reset(1)") == SL_EPOLICY && ev_in_is(b, "drain", "mine\n"),
              "R1: reset() with an argument is an error and resets nothing");
    TAP_CHECK(ev_in_is(NULL, "reset()",
                       "reset(): nothing to reset: an evaluation without a session always starts "
                       "from a fresh state\n"),
              "R1: reset() without a session says there is nothing to reset");

    /* unknown ids */
    const char *unknown = "0123456789abcdef0123456789abcdef";
    char *out = (char *)"x";
    int incomplete;
    rc = sl_repl_eval(repl, unknown, "1", &out, &incomplete);
    TAP_CHECK(rc == SL_ENOENT && out == NULL, "R1: an unknown session id is SL_ENOENT");
    TAP_CHECK(gone_says(unknown, "no REPL session 0123456789abcdef0123456789abcdef"),
              "R1: ... and is said to be unknown");
    char **m = NULL;
    size_t n = 0;
    TAP_CHECK(sl_repl_complete(repl, unknown, "no", &m, &n) == SL_ENOENT && m == NULL,
              "R1: completion in an unknown session is SL_ENOENT");

    /* the cap: opening one more closes the longest-idle */
    char c[SL_REPL_ID_SIZE], d[SL_REPL_ID_SIZE], e[SL_REPL_ID_SIZE];
    atomic_fetch_add(&fake_now, 10);
    ev_in_is(a, "1", "1\n");
    atomic_fetch_add(&fake_now, 10);
    sl_repl_session_open(repl, c, err, sizeof err);
    atomic_fetch_add(&fake_now, 10);
    sl_repl_session_open(repl, d, err, sizeof err); /* 4 open: sid, a, b, c ... then d */
    TAP_CHECK(sl_repl_session_count(repl) == 4, "R1: at most max_sessions are open");
    TAP_CHECK(eval_rc(sid, "1") == SL_ENOENT && gone_says(sid, "closed to make room for a newer one (at most 4"),
              "R1: the longest-idle session was closed to make room");
    atomic_fetch_add(&fake_now, 10);
    ev_in_is(b, "1", "1\n"); /* b used: a is now the longest idle */
    atomic_fetch_add(&fake_now, 10);
    sl_repl_session_open(repl, e, err, sizeof err);
    TAP_CHECK(sl_repl_session_count(repl) == 4 && eval_rc(a, "1") == SL_ENOENT &&
                  ev_in_is(b, "drain", "mine\n") && ev_in_is(c, "1", "1\n") && ev_in_is(d, "1", "1\n") &&
                  ev_in_is(e, "1", "1\n"),
              "R1: ... by when it was last used, not when it was opened");

    /* idle expiry, on the injected clock */
    sl_repl_sessions_config_t idle = {4, 1000, fake_clock, NULL};
    sl_repl_configure_sessions(repl, &idle);
    atomic_fetch_add(&fake_now, 1);
    ev_in_is(b, "1", "1\n");
    atomic_fetch_add(&fake_now, 1000); /* c, d, e: idle 1001 ms; b: 1000 ms */
    TAP_CHECK(sl_repl_sweep(repl) == 3 && sl_repl_session_count(repl) == 1,
              "R1: sessions idle past the limit are closed by a sweep; one used within it stays");
    atomic_fetch_add(&fake_now, 1);
    TAP_CHECK(eval_rc(b, "1") == SL_ENOENT && sl_repl_session_count(repl) == 0,
              "R1: a session idle longer than the limit is closed when a request comes");
    TAP_CHECK(gone_says(b, "was closed after 1 s idle") && gone_says(c, "closed after 1 s idle"),
              "R1: ... and its id is said to have idled out");
    TAP_CHECK(eval_rc(NULL, "1") == 0, "R1: ... and evaluations go on");
    char fresh[SL_REPL_ID_SIZE];
    sl_repl_session_open(repl, fresh, err, sizeof err);
    rc = sl_repl_eval(repl, fresh, "help()", &out, &incomplete);
    TAP_CHECK(rc == 0 && out && strstr(out, "reset()") && strstr(out, "closed after 1 s idle, or for a new one when 4"),
              "R1: help() names reset() and the session's limits");
    free(out);
    sl_repl_session_close(repl, fresh);

    /* close */
    sl_repl_session_open(repl, a, err, sizeof err);
    TAP_CHECK(sl_repl_session_close(repl, a) == 0 && sl_repl_session_close(repl, a) == SL_ENOENT &&
                  gone_says(a, "closed by its client") && sl_repl_session_count(repl) == 0,
              "R1: a session closed by its client is gone");

    /* configuration */
    sl_repl_sessions_config_t too_many = {SL_REPL_SESSIONS_LIMIT + 1, 0, fake_clock, NULL};
    TAP_CHECK(sl_repl_configure_sessions(repl, &too_many) == SL_EINVAL,
              "R1: more sessions than the limit is refused");
    sl_repl_sessions_config_t two = {2, 60000, fake_clock, NULL};
    sl_repl_configure_sessions(repl, &sc);
    for (int i = 0; i < 4; i++) {
        atomic_fetch_add(&fake_now, 1);
        sl_repl_session_open(repl, i == 3 ? a : b, err, sizeof err);
    }
    TAP_CHECK(sl_repl_configure_sessions(repl, &two) == 0 && sl_repl_session_count(repl) == 2 &&
                  eval_rc(a, "1") == 0,
              "R1: lowering max_sessions closes the longest-idle ones");

    /* over HTTP */
    int status;
    json_t *j = http_json(sl_repl_http_eval, json_pack("{s:s,s:s}", "code", "v = 7", "session", "new"), &status);
    const char *id = json_string_value(json_object_get(j, "session"));
    char h1[SL_REPL_ID_SIZE] = "";
    if (id && strlen(id) == SL_REPL_ID_LEN)
        memcpy(h1, id, sizeof h1);
    TAP_CHECK(status == 200 && h1[0], "R1: POST /api/v2/repl with \"session\": \"new\" answers the new id");
    json_decref(j);
    j = http_json(sl_repl_http_eval, json_pack("{s:s,s:s}", "code", "v", "session", h1), &status);
    TAP_CHECK(status == 200 && !strcmp(json_string_value(json_object_get(j, "output")), "7\n") &&
                  !strcmp(json_string_value(json_object_get(j, "session")), h1),
              "R1: ... and evaluates there when the id is sent back");
    json_decref(j);
    j = http_json(sl_repl_http_eval, json_pack("{s:s,s:s}", "code", "v", "session", "new"), &status);
    TAP_CHECK(status == 200 && !strcmp(json_string_value(json_object_get(j, "output")), "nil\n"),
              "R1: ... while another new session does not see its globals");
    json_decref(j);
    j = http_json(sl_repl_http_eval, json_pack("{s:s}", "code", "v"), &status);
    TAP_CHECK(status == 200 && !strcmp(json_string_value(json_object_get(j, "output")), "nil\n") &&
                  json_object_get(j, "session") == NULL,
              "R1: without a session: one-shot, and no session in the answer");
    json_decref(j);
    j = http_json(sl_repl_http_complete, json_pack("{s:s,s:s}", "prefix", "v", "session", h1), &status);
    int has_v = 0;
    for (size_t i = 0; i < json_array_size(json_object_get(j, "matches")); i++)
        has_v |= !strcmp(json_string_value(json_array_get(json_object_get(j, "matches"), i)), "v");
    TAP_CHECK(status == 200 && has_v, "R1: completion in a session offers its globals");
    json_decref(j);
    j = http_json(sl_repl_http_eval, json_pack("{s:s,s:b}", "session", h1, "close", 1), &status);
    TAP_CHECK(status == 200 && json_is_true(json_object_get(j, "closed")),
              "R1: {\"session\": id, \"close\": true} closes it");
    json_decref(j);
    j = http_json(sl_repl_http_eval, json_pack("{s:s,s:s}", "code", "v", "session", h1), &status);
    const char *msg = json_string_value(json_object_get(j, "error_msg"));
    const char *reason = json_string_value(json_object_get(j, "reason"));
    TAP_CHECK(status == 404 && !strcmp(error_code_of(j), "SESSION_NOT_FOUND") && msg &&
                  strstr(msg, "closed by its client") && strstr(msg, "\"session\": \"new\"") &&
                  reason && strstr(reason, "closed by its client") && !strstr(reason, "\"new\""),
              "R1: a closed session id: 404 SESSION_NOT_FOUND, why, and what to do");
    json_decref(j);
    j = http_json(sl_repl_http_eval, json_pack("{s:s,s:s}", "code", "1", "session", unknown), &status);
    TAP_CHECK(status == 404 && !strcmp(error_code_of(j), "SESSION_NOT_FOUND"),
              "R1: an unknown session id: 404 SESSION_NOT_FOUND");
    json_decref(j);
    j = http_json(sl_repl_http_complete, json_pack("{s:s,s:s}", "prefix", "x", "session", unknown), &status);
    TAP_CHECK(status == 404 && !strcmp(error_code_of(j), "SESSION_NOT_FOUND"),
              "R1: completion in an unknown session: 404 SESSION_NOT_FOUND");
    json_decref(j);
    struct {
        const char *body, *why;
    } bad[] = {
        {"{\"code\": \"1\", \"session\": 5}", "a number as session"},
        {"{\"code\": \"1\", \"session\": \"zz\"}", "a malformed session id"},
        {"{\"code\": \"1\", \"session\": \"0123456789ABCDEF0123456789ABCDEF\"}", "upper-case hex"},
        {"{\"close\": true}", "close without a session"},
        {"{\"close\": \"yes\", \"session\": \"new\"}", "close not a boolean"},
        {"{\"close\": true, \"session\": \"new\"}", "close of \"new\""},
        {"{\"close\": true, \"code\": \"1\", \"session\": \"0123456789abcdef0123456789abcdef\"}",
         "close with code"},
        {"{\"session\": \"new\"}", "a new session without code"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        j = http_call(sl_repl_http_eval, bad[i].body, &status);
        char name[160];
        snprintf(name, sizeof name, "R1: 400 INVALID_ARGUMENT for %s", bad[i].why);
        TAP_CHECK(status == 400 && !strcmp(error_code_of(j), "INVALID_ARGUMENT"), name);
        json_decref(j);
    }
    j = http_call(sl_repl_http_complete, "{\"prefix\": \"x\", \"session\": \"new\"}", &status);
    TAP_CHECK(status == 400 && !strcmp(error_code_of(j), "INVALID_ARGUMENT"),
              "R1: completion does not open sessions");
    json_decref(j);
    size_t open_now = sl_repl_session_count(repl);
    for (int i = 0; i < 5; i++) {
        j = http_json(sl_repl_http_eval, json_pack("{s:s,s:s}", "code", "1", "session", "new"), &status);
        json_decref(j);
    }
    TAP_CHECK(open_now <= 2 && sl_repl_session_count(repl) == 2,
              "R1: opening sessions over HTTP never goes past max_sessions");

    /* none open for the client checks: they count the sessions the binary leaves */
    sl_repl_sessions_config_t rest = {16, 60000, fake_clock, NULL};
    sl_repl_configure_sessions(repl, &rest);
    atomic_fetch_add(&fake_now, 60001);
    sl_repl_sweep(repl);
    TAP_CHECK(sl_repl_session_count(repl) == 0, "R1: a sweep after the idle limit closes every session");
}

/* ---- the REPL served over HTTP, on its own loop thread, for the client and the binary --- */

#define TOKEN "repl-test-token"

static struct {
    uv_loop_t loop;
    uv_async_t stop;
    sl_http_server_t *tcp, *unix_srv;
    sl_http_router_t router;
    pthread_t thread;
    int port;
    char sock[128];
} srv;

static const sl_http_route_t repl_routes[] = {
    {"POST", "/api/v2/repl", sl_repl_http_eval, 0},
    {"POST", "/api/v2/repl/complete", sl_repl_http_complete, 0},
};

static void on_stop(uv_async_t *a)
{
    sl_http_close(srv.tcp);
    sl_http_close(srv.unix_srv);
    uv_close((uv_handle_t *)a, NULL);
}

static void *serve_thread(void *arg)
{
    uv_run(&srv.loop, UV_RUN_DEFAULT);
    return NULL;
}

static int serve_start(const char *dir)
{
    char err[256];
    uv_loop_init(&srv.loop);
    uv_async_init(&srv.loop, &srv.stop, on_stop);
    srv.router = (sl_http_router_t){repl_routes, 2, TOKEN, repl};
    snprintf(srv.sock, sizeof srv.sock, "%s/repl.sock", dir);
    if (sl_http_listen(&srv.loop, "127.0.0.1:0", NULL, sl_http_router_dispatch, &srv.router,
                       &srv.tcp, err, sizeof err) != 0 ||
        sl_http_listen_unix(&srv.loop, srv.sock, NULL, sl_http_router_dispatch, &srv.router,
                            &srv.unix_srv, err, sizeof err) != 0) {
        printf("# %s\n", err);
        return -1;
    }
    srv.port = sl_http_port(srv.tcp);
    return pthread_create(&srv.thread, NULL, serve_thread, NULL);
}

static void serve_stop(void)
{
    uv_async_send(&srv.stop);
    pthread_join(srv.thread, NULL);
    uv_run(&srv.loop, UV_RUN_DEFAULT);
    uv_loop_close(&srv.loop);
}

/* Runs `argv` with `input` on stdin; its stdout+stderr into out. Returns the exit status. */
static int run_piped(char *const argv[], const char *input, char *out, size_t outlen)
{
    int in[2], o[2];
    if (pipe(in) || pipe(o))
        return -1;
    pid_t pid = fork();
    if (pid == 0) {
        dup2(in[0], 0);
        dup2(o[1], 1);
        dup2(o[1], 2);
        close(in[1]);
        close(o[0]);
        unsetenv("SLUICE_SERVER");
        unsetenv("SLUICE_TOKEN");
        execv(argv[0], argv);
        _exit(127);
    }
    close(in[0]);
    close(o[1]);
    if (write(in[1], input, strlen(input)) < 0)
        perror("write");
    close(in[1]);
    size_t len = 0;
    ssize_t n;
    while (len + 1 < outlen && (n = read(o[0], out + len, outlen - 1 - len)) > 0)
        len += (size_t)n;
    out[len] = '\0';
    close(o[0]);
    int st;
    waitpid(pid, &st, 0);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* Reads the pty into buf (appending) until `want` shows up or 5 s pass. */
static int pty_expect(int fd, char *buf, size_t buflen, const char *want)
{
    size_t len = strlen(buf);
    double end = mono_ms() + 5000;
    while (strstr(buf, want) == NULL && mono_ms() < end) {
        struct pollfd p = {fd, POLLIN, 0};
        if (poll(&p, 1, 100) <= 0)
            continue;
        ssize_t n = read(fd, buf + len, buflen - 1 - len);
        if (n <= 0)
            break;
        len += (size_t)n;
        buf[len] = '\0';
    }
    int ok = strstr(buf, want) != NULL;
    if (!ok)
        printf("# pty: wanted [%s], got [%s]\n", want, buf);
    return ok;
}

static void pty_send(int fd, const char *s)
{
    if (write(fd, s, strlen(s)) < 0)
        perror("write");
    usleep(50000);
}

static void test_over_http(const char *dir)
{
    if (serve_start(dir) != 0) {
        TAP_CHECK(0, "R1: the REPL routes are served");
        return;
    }
    char err[512], where[160];
    sl_client_t c;
    sl_client_response_t res;

    /* the client over the Unix socket */
    snprintf(where, sizeof where, "unix:%s", srv.sock);
    sl_client_init(&c, where, TOKEN, err, sizeof err);
    json_t *body = json_pack("{s:s}", "code", "#nodes()");
    int rc = sl_client_request(&c, "POST", "/api/v2/repl", body, &res, err, sizeof err);
    TAP_CHECK(rc == 0 && res.status == 200 && res.json &&
                  !strcmp(json_string_value(json_object_get(res.json, "output")), "3\n"),
              "R1: POST /api/v2/repl through the client over the Unix socket");
    if (rc == 0)
        sl_client_response_free(&res);
    rc = sl_client_request(&c, "POST", "/api/v2/repl", body, &res, err, sizeof err);
    TAP_CHECK(rc == 0 && res.status == 200, "client: a kept-alive connection serves a second request");
    if (rc == 0)
        sl_client_response_free(&res);
    json_decref(body);
    sl_client_close(&c);
    struct stat st;
    TAP_CHECK(stat(srv.sock, &st) == 0 && (st.st_mode & 0777) == 0600, "R1: the socket is mode 0600");

    /* the client over TCP, wrong token and unreachable */
    snprintf(where, sizeof where, "127.0.0.1:%d", srv.port);
    sl_client_init(&c, where, "wrong", err, sizeof err);
    body = json_pack("{s:s}", "code", "1");
    rc = sl_client_request(&c, "POST", "/api/v2/repl", body, &res, err, sizeof err);
    char text[512] = "";
    if (rc == 0) {
        sl_client_error_text(&res, text, sizeof text);
        sl_client_response_free(&res);
    }
    TAP_CHECK(rc == 0 && strstr(text, "the token was refused") != NULL,
              "client: a refused token is said plainly");
    sl_client_close(&c);
    sl_client_init(&c, "127.0.0.1:1", TOKEN, err, sizeof err);
    rc = sl_client_request(&c, "POST", "/api/v2/repl", body, &res, err, sizeof err);
    TAP_CHECK(rc != 0 && strstr(err, "cannot reach the coordinator at 127.0.0.1:1: connection refused"),
              "client: an unreachable server is said plainly");
    json_decref(body);
    sl_client_close(&c);

    /* the binary, stdin a pipe */
    const char *bin = getenv("SLUICE_BIN") ? getenv("SLUICE_BIN") : "build/sluice";
    if (access(bin, X_OK) != 0) {
        printf("# %s not built: the sluice repl checks are skipped\n", bin);
        serve_stop();
        return;
    }
    char out[8192];
    snprintf(where, sizeof where, "unix:%s", srv.sock);
    char *argv1[] = {(char *)bin, "repl", "--server", where, "--token", TOKEN, NULL};
    rc = run_piped(argv1, "1 + 1\nfunction g()\n  return 'multi'\nend\ng()\nerror('oops')\n"
                          "node('n1').liveness\n", out, sizeof out);
    TAP_CHECK(strstr(out, "2\nmulti\n") != NULL && strstr(out, "error: repl:1: oops") != NULL &&
                  strstr(out, "alive") != NULL && rc == 1,
              "R1: sluice repl with a piped stdin: expressions, multi-line, errors (exit 1)");
    if (!strstr(out, "alive"))
        printf("# output: %s\n", out);
    TAP_CHECK(sl_repl_session_count(repl) == 0, "R1: sluice repl closes its session when its input ends");
    char *argv_iso[] = {(char *)bin, "repl", "--server", where, "--token", TOKEN, NULL};
    run_piped(argv_iso, "mine = 'first client'\nmine\n", out, sizeof out);
    int first_sees = strstr(out, "first client") != NULL;
    run_piped(argv_iso, "mine\n", out, sizeof out);
    TAP_CHECK(first_sees && !strcmp(out, "nil\n"), "R1: a second sluice repl does not see the first one's globals");
    if (strcmp(out, "nil\n"))
        printf("# output: %s\n", out);
    char tcp[64];
    snprintf(tcp, sizeof tcp, "127.0.0.1:%d", srv.port);
    char *argv2[] = {(char *)bin, "repl", "--server", tcp, "--token", "nope", NULL};
    rc = run_piped(argv2, "1\n", out, sizeof out);
    TAP_CHECK(rc == 1 && strstr(out, "the token was refused") != NULL,
              "R1: sluice repl over TCP with a wrong token says so");
    /* the data directory: DIR/repl.sock and DIR/token */
    char tokpath[200];
    snprintf(tokpath, sizeof tokpath, "%s/token", dir);
    FILE *tf = fopen(tokpath, "w");
    fputs(TOKEN "\n", tf);
    fclose(tf);
    char *argv3[] = {(char *)bin, "repl", "--data", (char *)dir, NULL};
    rc = run_piped(argv3, "'found'\n", out, sizeof out);
    TAP_CHECK(rc == 0 && !strcmp(out, "found\n"), "R1: sluice repl --data DIR finds socket and token");
    unlink(tokpath);

    /* a terminal session through a pseudo-terminal */
    int master;
    pid_t pid = forkpty(&master, NULL, NULL, NULL);
    if (pid == 0) {
        setenv("HOME", dir, 1);
        setenv("TERM", "dumb", 1);
        execv(bin, argv1);
        _exit(127);
    }
    char buf[16384] = "";
    int ok = pty_expect(master, buf, sizeof buf, "sluice> ");
    pty_send(master, "#nodes() + 1\r");
    ok = ok && pty_expect(master, buf, sizeof buf, "4\r\n");
    buf[0] = '\0';
    pty_send(master, "function h()\r");
    ok = ok && pty_expect(master, buf, sizeof buf, "   ...> ");
    pty_send(master, "return 'pty' end\r");
    pty_send(master, "h()\r");
    ok = ok && pty_expect(master, buf, sizeof buf, "pty\r\n");
    TAP_CHECK(ok, "R1: a terminal session: prompt, expression, continuation prompt");
    buf[0] = '\0';
    pty_send(master, "policy.rel\t");
    ok = pty_expect(master, buf, sizeof buf, "policy.reload");
    pty_send(master, "\x15"); /* Ctrl-U: drop the line */
    TAP_CHECK(ok, "R1: tab completes through the server");
    buf[0] = '\0';
    pty_send(master, "nosuch()\r");
    ok = pty_expect(master, buf, sizeof buf, "error: repl:1: attempt to call a nil value");
    pty_send(master, "'still here'\r");
    ok = ok && pty_expect(master, buf, sizeof buf, "still here");
    TAP_CHECK(ok, "R1: an error prints and the session goes on");
    /* Ctrl-C drops a half-typed line and a pending continuation */
    buf[0] = '\0';
    pty_send(master, "function k()\r");
    ok = pty_expect(master, buf, sizeof buf, "   ...> ");
    buf[0] = '\0';
    pty_send(master, "return 1");
    pty_send(master, "\x03");
    ok = ok && pty_expect(master, buf, sizeof buf, "sluice> ");
    pty_send(master, "'after' .. ' ctrl-c'\r");
    ok = ok && pty_expect(master, buf, sizeof buf, "after ctrl-c\r\n");
    TAP_CHECK(ok && waitpid(pid, NULL, WNOHANG) == 0,
              "R1: Ctrl-C drops the input and the continuation, a fresh prompt, the session goes on");
    /* the session expires under the client: it opens another and says so */
    buf[0] = '\0';
    pty_send(master, "kept = 'yes'\r");
    pty_send(master, "kept\r");
    ok = pty_expect(master, buf, sizeof buf, "yes\r\n");
    atomic_fetch_add(&fake_now, 60001);
    buf[0] = '\0';
    pty_send(master, "kept\r");
    ok = ok && pty_expect(master, buf, sizeof buf, "session expired, new session started") &&
         pty_expect(master, buf, sizeof buf, "nil\r\n");
    TAP_CHECK(ok && strstr(buf, "closed after 1 min idle") != NULL,
              "R1: an expired session: the client says so, opens another and evaluates there");
    TAP_CHECK(sl_repl_session_count(repl) == 1, "R1: ... and the expired one is gone");
    pty_send(master, "\x04"); /* Ctrl-D */
    int status = -1;
    for (int i = 0; i < 50; i++) {
        if (waitpid(pid, &status, WNOHANG) == pid)
            break;
        char sink[256];
        if (read(master, sink, sizeof sink) < 0 && errno != EAGAIN)
            usleep(20000);
        usleep(20000);
        status = -1;
    }
    if (status == -1) {
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
    }
    TAP_CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "R1: Ctrl-D exits 0");
    TAP_CHECK(sl_repl_session_count(repl) == 0, "R1: ... and closes the session");
    close(master);
    char hist[200];
    snprintf(hist, sizeof hist, "%s/.sluice_history", dir);
    TAP_CHECK(access(hist, R_OK) == 0, "R1: history is kept in ~/.sluice_history");
    unlink(hist);
    serve_stop();
}

int main(void)
{
    sl_core_config_t cfg;
    sl_core_config_default(&cfg);
    cfg.epoch_gate = 0;
    if (sl_core_new(&cfg, &core) != 0)
        return 1;
    sl_core_tick(core, 0);
    sl_core_node_join(core, "n1", "127.0.0.1:1");
    sl_core_node_join(core, "n2", "127.0.0.1:2");
    sl_core_node_join(core, "n3", "127.0.0.1:3");
    sl_core_task_add(core, "cf1", SL_TASK_MAINTAINER, "cf1", 4);
    sl_core_task_add(core, "cf2", SL_TASK_MAINTAINER, "cf2", 2);
    for (int i = 0; i < 6; i++) {
        char id[16];
        snprintf(id, sizeof id, "m%d", i);
        sl_core_task_add(core, id, SL_TASK_MAINTAINER, id, 1);
    }
    sl_core_tick(core, 10);
    settle(10);

    /* a registry on a temporary policy file, for policy.info() and policy.reload() */
    char dir[] = "/tmp/sluice-repl-XXXXXX";
    if (mkdtemp(dir) == NULL)
        return 1;
    char path[128];
    snprintf(path, sizeof path, "%s/p.lua", dir);
    FILE *f = fopen(path, "w");
    fputs("return { name = 'repl-test', place = function() return {} end }\n", f);
    fclose(f);
    sl_policy_registry_t *reg = NULL;
    char err[512];
    sl_policy_registry_open(dir, "p.lua", NULL, NULL, &reg, err, sizeof err);
    sl_core_set_policy(core, sl_policy_registry_policy(reg));

    sl_repl_ops_t ops = {cb_drain_start, cb_drain_cancel, cb_now, cb_cf_at, NULL, "n3"};
    sl_policy_limits_t lim;
    sl_policy_limits_default(&lim);
    lim.memory_bytes = 4u << 20; /* small, so the cap is reached fast even under ASan */
    int rc = sl_repl_new(core, reg, &ops, &lim, &repl, err, sizeof err);
    TAP_CHECK(rc == 0, "R1: a REPL is created on a core");
    if (rc != 0) {
        printf("# %s\n", err);
        return TAP_DONE();
    }
    sl_repl_sessions_config_t sc = {0, 0, fake_clock, NULL};
    rc = sl_repl_configure_sessions(repl, &sc) || sl_repl_session_open(repl, sid, err, sizeof err);
    TAP_CHECK(rc == 0 && strlen(sid) == SL_REPL_ID_LEN && sl_repl_session_count(repl) == 1,
              "R1: a session is opened, with a 32-hex-digit id");

    /* expressions, statements, globals */
    TAP_CHECK(ev_is("1 + 1", "2\n"), "R1: an expression prints without return");
    TAP_CHECK(ev_is("return 6 * 7", "42\n"), "R1: return works too");
    TAP_CHECK(ev_is("'hello'", "hello\n"), "R1: a string result prints raw");
    TAP_CHECK(ev_is("x = 5", ""), "R1: a statement prints nothing");
    TAP_CHECK(ev_is("x * 2", "10\n"), "R1: globals persist between evaluations");
    TAP_CHECK(ev_is("1, 'two', nil, true", "1\ttwo\tnil\ttrue\n"), "R1: several results, tab-separated");
    TAP_CHECK(ev_is("print('a', 1) print('b')", "a\t1\nb\n"), "R1: print writes to the output");
    TAP_CHECK(ev_is("nil", "nil\n"), "R1: nil prints");

    /* tables */
    TAP_CHECK(ev_is("{b = 1, a = {1, 2, 3}, ['k k'] = true, [10] = 'x'}",
                    "{ [10] = \"x\", a = { 1, 2, 3 }, b = 1, [\"k k\"] = true }\n"),
              "R1: a small table prints on one line, keys sorted");
    TAP_CHECK(ev_is("{}", "{}\n"), "R1: an empty table");
    TAP_CHECK(ev_has("(function() local t = {} for i = 1, 30 do t['key' .. i] = i end return t end)()",
                     "{\n  key1 = 1,\n  key10 = 10,\n  key11 = 11,"),
              "R1: a large table prints one entry per line, sorted");
    TAP_CHECK(ev_has("{list = {'a', 'b'}, nested = {deep = {deeper = {name = 'n', "
                     "long = 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'}}}}",
                     "  nested = {\n    deep = {\n      deeper = {\n"),
              "R1: nested tables indent");
    ev("t = {name = 't'} t.self = t");
    TAP_CHECK(ev_has("t", "self = <cycle>"), "R1: cycles are marked");
    TAP_CHECK(ev_has("(function() local t = {} local c = t for i = 1, 20 do c.next = {} c = c.next end "
                     "return t end)()", "{...}"),
              "R1: depth is limited");
    TAP_CHECK(ev_has("(function() local t = {} for i = 1, 5000 do t[i] = i end return t end)()",
                     "(3000 more)"),
              "R1: size is limited");
    TAP_CHECK(ev_is("'a\\xffb'", "a\\xFFb\n"), "R1: bytes that are not UTF-8 are shown escaped");
    TAP_CHECK(ev_is("{s = 'q\"\\n'}", "{ s = \"q\\\"\\n\" }\n"), "R1: strings in tables are quoted");
    TAP_CHECK(ev_is("setmetatable({}, {__tostring = function() return 'custom' end})", "custom\n"),
              "R1: __tostring is honoured");

    /* errors */
    rc = ev("error('boom')");
    TAP_CHECK(rc == SL_EPOLICY && strstr(last, "error: repl:1: boom") != NULL,
              "R1: an error prints with its line");
    TAP_CHECK(ev_is("1", "1\n"), "R1: ... and the session goes on");
    rc = ev("foo.bar");
    TAP_CHECK(rc == SL_EPOLICY && strstr(last, "global 'foo'") != NULL, "R1: runtime errors name the culprit");
    rc = ev("1 +* 2");
    TAP_CHECK(rc == SL_EPOLICY && !last_incomplete && strstr(last, "unexpected symbol") != NULL,
              "R1: a syntax error is an error, not incomplete");
    TAP_CHECK(ev_has("print('before') error({})", "before\nerror: (error object is a table value)"),
              "R1: output before an error is kept; odd error objects are named");

    /* incomplete chunks */
    rc = ev("function f()");
    TAP_CHECK(rc == 0 && last_incomplete && last[0] == '\0', "R1: 'function f()' is incomplete");
    ev("for i = 1, 3 do");
    TAP_CHECK(last_incomplete, "R1: an open for loop is incomplete");
    ev("x = ");
    TAP_CHECK(last_incomplete, "R1: 'x = ' is incomplete");
    ev("t2 = {");
    TAP_CHECK(last_incomplete, "R1: an open table constructor is incomplete");
    TAP_CHECK(ev_is("function f()\n  return 'multi'\nend", "") && ev_is("f()", "multi\n"),
              "R1: the whole chunk, sent again, runs");

    /* budget and memory */
    double t0 = mono_ms();
    rc = ev("while true do end");
    double took = mono_ms() - t0;
    TAP_CHECK(rc == SL_EPOLICY && strstr(last, "budget") != NULL,
              "R1: an endless loop is stopped by the budget");
    printf("# endless loop stopped after %.1f ms: %s", took, last);
    TAP_CHECK(took < 1000, "R1: ... promptly");
    rc = ev("pcall(function() while true do end end) return 'swallowed'");
    TAP_CHECK(rc == SL_EPOLICY && strstr(last, "budget") != NULL, "R1: pcall cannot swallow the budget");
    rc = ev("big = ('x'):rep(3 << 20) big = big .. big");
    printf("# %s", last);
    TAP_CHECK(rc == SL_EPOLICY && strstr(last, "memory") != NULL, "R1: the memory cap holds");
    TAP_CHECK(ev_is("big = nil return 'ok'", "ok\n"), "R1: ... and the session goes on");
    TAP_CHECK(ev_is("io, os.exit, require, load, debug", "nil\tnil\tnil\tnil\tnil\n"),
              "R1: the sandbox hides io, os.exit, require, load, debug");

    /* inspection */
    TAP_CHECK(ev_is("#nodes()", "3\n"), "R1: nodes() lists every node");
    TAP_CHECK(ev_is("nodes()[1].id, nodes()[1].liveness", "n1\talive\n"), "R1: nodes() in join order");
    TAP_CHECK(ev_is("nodes()[3].is_coordinator, nodes()[1].is_coordinator", "true\tfalse\n"),
              "R1: the coordinator's node is marked");
    TAP_CHECK(ev_is("node('n2').id, node('n2').drain_state", "n2\tnone\n"), "R1: node(id)");
    TAP_CHECK(ev_is("node('zz')", "nil\tno node 'zz'\n"), "R1: node() of an unknown id");
    TAP_CHECK(ev_is("local t = 0 for _, n in ipairs(nodes()) do t = t + n.maintainers end return t",
                    "8\n"),
              "R1: node counts add up");
    TAP_CHECK(ev_is("#changefeeds(), changefeeds()[1].changefeed_id, changefeeds()[1].table_count",
                    "2\tcf1\t4\n"),
              "R1: changefeeds()");
    TAP_CHECK(ev_is("type(operators()), #operators('stuck')", "table\t0\n"), "R1: operators()");
    TAP_CHECK(ev_is("drain.status().state, drain.status().is_draining", "none\tfalse\n"),
              "R1: drain.status() with no drain");
    TAP_CHECK(ev_is("#drain.plan('n1') == node('n1').maintainers", "true\n"),
              "R1: drain.plan(id) lists a move per task");
    TAP_CHECK(ev_is("policy.info().name, policy.info().version, policy.info().refusals",
                    "repl-test\t1\t0\n"),
              "R1: policy.info()");
    TAP_CHECK(ev_has("help()", "drain.start(id)"), "R1: help()");

    /* steering */
    TAP_CHECK(ev_has("drain.start('n1')", "current_maintainer_count = ") && starts == 1,
              "R1: drain.start goes through the coordinator's callback");
    TAP_CHECK(ev_is("drain.status().state, drain.status('n1').draining_capture_id", "draining\tn1\n"),
              "R1: drain.status() shows the running drain");
    rc = ev("drain.start('n2')");
    TAP_CHECK(rc == SL_EPOLICY && strstr(last, "DRAIN_IN_PROGRESS") != NULL,
              "R1: drain.start of a second node is refused with the API's code");
    rc = ev("drain.start('nope')");
    TAP_CHECK(rc == SL_EPOLICY && strstr(last, "CAPTURE_NOT_FOUND") != NULL,
              "R1: drain.start of an unknown node: CAPTURE_NOT_FOUND");
    TAP_CHECK(ev_has("drain.cancel('n1')", "state = \"cancelled\"") && cancels == 1,
              "R1: drain.cancel goes through the coordinator's callback");
    rc = ev("drain.cancel('n1')");
    TAP_CHECK(rc == SL_EPOLICY && strstr(last, "NOT_DRAINING") != NULL,
              "R1: cancelling again says NOT_DRAINING");
    TAP_CHECK(ev_is("policy.reload().version", "2\n"), "R1: policy.reload() swaps a new version");
    f = fopen(path, "w");
    fputs("return {\n  name = 'x',\n  place = 3,\n}\n", f);
    fclose(f);
    rc = ev("policy.reload()");
    TAP_CHECK(rc == SL_EPOLICY && strstr(last, "using previous policy") != NULL,
              "R1: a failed policy.reload() says so and keeps the policy");
    TAP_CHECK(ev_is("policy.info().name, policy.info().version", "repl-test\t2\n"),
              "R1: ... the previous policy is still live");
    sl_core_set_policy(core, sl_policy_registry_policy(reg));

    /* completion */
    TAP_CHECK(complete_is("drain.st", "drain.start", "drain.status"), "R1: completes drain.st");
    TAP_CHECK(complete_is("no", "node", "nodes"), "R1: completes global names");
    TAP_CHECK(complete_is("policy.", "policy.info", "policy.reload"), "R1: completes every field");
    TAP_CHECK(complete_is("x = drain.pl", "x = drain.plan", NULL), "R1: completes inside a line");
    TAP_CHECK(complete_is("string.forma", "string.format", NULL), "R1: completes library fields");
    TAP_CHECK(complete_is("nothing.here", NULL, NULL), "R1: nothing for unknown tables");

    /* HTTP */
    int status = 0;
    json_t *j = http_call(sl_repl_http_eval, "{\"code\": \"1 + 2\"}", &status);
    TAP_CHECK(status == 200 && j && !strcmp(json_string_value(json_object_get(j, "output")), "3\n") &&
                  json_is_false(json_object_get(j, "incomplete")),
              "R1: POST /api/v2/repl evaluates");
    json_decref(j);
    j = http_call(sl_repl_http_eval, "{\"code\": \"if x then\"}", &status);
    TAP_CHECK(status == 200 && j && json_is_true(json_object_get(j, "incomplete")),
              "R1: ... and says when a chunk is incomplete");
    json_decref(j);
    j = http_call(sl_repl_http_eval, "{\"code\": \"'\\\\255'\"}", &status);
    TAP_CHECK(status == 200 && j && json_is_string(json_object_get(j, "output")),
              "R1: ... with binary output still valid JSON");
    json_decref(j);
    j = http_call(sl_repl_http_eval, "{\"nope\": 1}", &status);
    TAP_CHECK(status == 400, "R1: a body without code is a 400");
    json_decref(j);
    j = http_call(sl_repl_http_complete, "{\"prefix\": \"drain.c\"}", &status);
    TAP_CHECK(status == 200 && j && json_array_size(json_object_get(j, "matches")) == 1 &&
                  !strcmp(json_string_value(json_array_get(json_object_get(j, "matches"), 0)),
                          "drain.cancel"),
              "R1: POST /api/v2/repl/complete");
    json_decref(j);

    test_sessions();
    test_over_http(dir);

    sl_repl_free(repl);
    sl_core_set_policy(core, NULL);
    sl_policy_registry_close(reg);
    sl_core_free(core);
    unlink(path);
    rmdir(dir);
    return TAP_DONE();
}
