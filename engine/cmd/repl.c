/* repl.c — `sluice repl` (R1): Lua typed here, evaluated inside the coordinator.
 *
 *   sluice repl [--data DIR] [--server A] [--token T | --token-file F]
 *
 * The server is found as SPEC §4 says (client.h): DIR/repl.sock (mode 0600) with
 * DIR/token when a data directory is known, else TCP with the token. On a terminal:
 * libedit line editing, prompt `sluice> ` and `   ...> ` while a chunk continues,
 * history in ~/.sluice_history, tab completion through POST /api/v2/repl/complete,
 * Ctrl-C drops the line and any continuation and prompts again (as psql does),
 * Ctrl-D on an empty line exits. With stdin not a terminal: lines are read, evaluated and
 * printed without prompts (scripts, tests); the exit status is 1 when an evaluation failed.
 *
 * Sessions (repl.h): the first request asks for a new session and every later one names
 * it, so this client's globals are its own. When the coordinator has closed it (idle too
 * long, room made for another, a restart) the client opens another, says "session
 * expired, new session started" and evaluates the chunk there. The session is closed on
 * exit. A coordinator that does not know sessions is still served (one shared state). */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <editline/readline.h>

#include "cmd/cmd.h"

#define PROMPT "sluice> "
#define PROMPT_MORE "   ...> "

/* One connection and its session; static because libedit's completion hook takes no
 * argument. */
static struct {
    sl_client_t *client;
    char session[80]; /* the id the server gave, "" before the first answer */
} conn;
static json_t *cached_matches;
static size_t completion_next;
static volatile sig_atomic_t interrupted; /* Ctrl-C since the prompt was shown */

static void usage(FILE *to)
{
    fputs("usage: sluice repl [--data DIR] [--server A] [--token T | --token-file F]\n"
          "  Lua evaluated in the coordinator, with the policies' sandbox and budget.\n"
          "  help() lists the functions: nodes(), node(id), changefeeds(), operators(),\n"
          "  drain.status([id]), drain.plan(id), policy.info(); drain.start(id),\n"
          "  drain.cancel(id), policy.reload(); reset() starts the session afresh.\n"
          "  Each run has a session of its own: its globals are not seen by others.\n"
          "  Tab completes; Ctrl-C drops the input typed so far; Ctrl-D exits.\n",
          to);
}

static char *complete_generator(const char *text, int state)
{
    if (state == 0) {
        if (cached_matches)
            json_decref(cached_matches);
        cached_matches = NULL;
        completion_next = 0;
        json_t *body = json_pack("{s:s}", "prefix", text);
        if (body && conn.session[0])
            json_object_set_new(body, "session", json_string(conn.session));
        sl_client_response_t res;
        char err[1024];
        /* a session closed meanwhile completes nothing; the next evaluation says why */
        if (body && sl_client_request(conn.client, "POST", "/api/v2/repl/complete", body,
                                      &res, err, sizeof err) == 0) {
            json_t *m = json_object_get(res.json, "matches");
            if (res.status == 200 && json_is_array(m))
                cached_matches = json_incref(m);
            sl_client_response_free(&res);
        }
        json_decref(body);
    }
    if (cached_matches && completion_next < json_array_size(cached_matches)) {
        const char *s = json_string_value(json_array_get(cached_matches, completion_next++));
        return s ? strdup(s) : NULL;
    }
    return NULL;
}

static char **attempt_completion(const char *text, int start, int end)
{
    (void)start;
    (void)end;
    rl_attempted_completion_over = 1; /* names, never file names */
    return rl_completion_matches(text, complete_generator);
}

/* The session the server named in an answer, kept for the next request. */
static void keep_session(json_t *answer)
{
    const char *id = json_string_value(json_object_get(answer, "session"));
    if (id && id[0] && strlen(id) < sizeof conn.session)
        snprintf(conn.session, sizeof conn.session, "%s", id);
}

static int is_session_gone(const sl_client_response_t *res)
{
    const char *code = json_string_value(json_object_get(res->json, "error_code"));
    return res->status == 404 && code && strcmp(code, "SESSION_NOT_FOUND") == 0;
}

/* Sends a chunk in this client's session (a new one is asked for when there is none).
 * Returns 0 (printed), 1 (incomplete), 2 (it raised an error, printed), -1 (the request
 * failed; said on stderr). */
static int evaluate(const char *chunk)
{
    sl_client_response_t res;
    for (int attempt = 0;; attempt++) {
        json_t *body = json_pack("{s:s,s:s}", "code", chunk, "session",
                                 conn.session[0] ? conn.session : "new");
        if (body == NULL) {
            fprintf(stderr, "sluice repl: the input is not valid UTF-8\n");
            return -1;
        }
        char err[1400];
        int rc = sl_client_request(conn.client, "POST", "/api/v2/repl", body, &res, err,
                                   sizeof err);
        json_decref(body);
        if (rc != 0) {
            fprintf(stderr, "sluice repl: %s\n", err);
            return -1;
        }
        if (attempt == 0 && conn.session[0] && is_session_gone(&res)) {
            /* nothing ran: the chunk goes to a new session, once */
            const char *why = json_string_value(json_object_get(res.json, "reason"));
            fprintf(stderr, "sluice repl: session expired, new session started%s%s%s\n",
                    why ? " (" : "", why ? why : "", why ? ")" : "");
            conn.session[0] = '\0';
            sl_client_response_free(&res);
            continue;
        }
        break;
    }
    if (res.status != 200 || res.json == NULL) {
        char text[1024];
        sl_client_error_text(&res, text, sizeof text);
        if (res.status == 404 && !is_session_gone(&res))
            snprintf(text + strlen(text), sizeof text - strlen(text),
                     " (this coordinator has no REPL route)");
        fprintf(stderr, "sluice repl: %s\n", text);
        sl_client_response_free(&res);
        return -1;
    }
    keep_session(res.json);
    int result = 0;
    if (json_is_true(json_object_get(res.json, "incomplete"))) {
        result = 1;
    } else {
        const char *out = json_string_value(json_object_get(res.json, "output"));
        if (out && out[0]) {
            fputs(out, stdout);
            if (out[strlen(out) - 1] != '\n')
                fputc('\n', stdout);
        }
        fflush(stdout);
        if (json_is_true(json_object_get(res.json, "error")))
            result = 2;
    }
    sl_client_response_free(&res);
    return result;
}

/* Frees the session now rather than when it idles out; a failure changes nothing. */
static void close_session(void)
{
    if (conn.session[0] == '\0')
        return;
    json_t *body = json_pack("{s:s,s:b}", "session", conn.session, "close", 1);
    sl_client_response_t res;
    char err[1024];
    if (body && sl_client_request(conn.client, "POST", "/api/v2/repl", body, &res, err,
                                  sizeof err) == 0)
        sl_client_response_free(&res);
    json_decref(body);
    conn.session[0] = '\0';
}

static int append(char **buf, size_t *len, const char *line)
{
    size_t n = strlen(line);
    char *nb = realloc(*buf, *len + n + 2);
    if (nb == NULL)
        return -1;
    if (*len > 0)
        nb[(*len)++] = '\n';
    memcpy(nb + *len, line, n + 1);
    *len += n;
    *buf = nb;
    return 0;
}

/* Not a terminal: read, evaluate, print. */
static int run_script(void)
{
    char *line = NULL, *chunk = NULL;
    size_t cap = 0, len = 0;
    ssize_t n;
    int failed = 0;
    while ((n = getline(&line, &cap, stdin)) >= 0) {
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
            line[--n] = '\0';
        if (len == 0 && line[strspn(line, " \t")] == '\0')
            continue;
        if (append(&chunk, &len, line) != 0) {
            failed = 1;
            break;
        }
        int r = evaluate(chunk);
        if (r == 1)
            continue;
        if (r != 0)
            failed = 1;
        free(chunk);
        chunk = NULL;
        len = 0;
    }
    if (len > 0) {
        fprintf(stderr, "sluice repl: the input ended inside a chunk:\n%s\n", chunk);
        failed = 1;
    }
    free(chunk);
    free(line);
    return failed;
}

static void on_sigint(int signo)
{
    (void)signo;
    interrupted = 1;
}

static int run_terminal(const char *how)
{
    char history[1024] = "";
    const char *home = getenv("HOME");
    if (home && home[0]) {
        snprintf(history, sizeof history, "%s/.sluice_history", home);
        read_history(history);
    }
    stifle_history(1000);
    rl_readline_name = "sluice";
    static char breaks[] = " \t\n\"\\'`@$><=;|&{(,+-*/%^#~[]";
    rl_completer_word_break_characters = breaks;
    rl_attempted_completion_function = attempt_completion;
    rl_completion_append_character = '\0';
    /* Ctrl-C must not end the process. libedit keeps its own signal handling (it puts the
     * terminal back for Ctrl-Z, SIGTERM, ...) and, for SIGINT, hands on to the handler it
     * found installed: this one, which only notes it. Without SA_RESTART the signal
     * interrupts libedit's read, readline returns NULL, and `interrupted` tells that apart
     * from Ctrl-D. */
    struct sigaction sa, old_sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigint;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old_sa);
    sigset_t sigint;
    sigemptyset(&sigint);
    sigaddset(&sigint, SIGINT);
    printf("sluice REPL on %s (%s). help() lists the functions; Ctrl-C drops the line, "
           "Ctrl-D exits.\n",
           conn.client->server, how);
    char *chunk = NULL;
    size_t len = 0;
    for (;;) {
        interrupted = 0;
        char *line = readline(len ? PROMPT_MORE : PROMPT);
        if (line == NULL && interrupted) {
            /* Ctrl-C: drop the line and the chunk it continued; a fresh prompt */
            fputc('\n', stdout);
            fflush(stdout);
            free(chunk);
            chunk = NULL;
            len = 0;
            continue;
        }
        if (line == NULL) { /* Ctrl-D */
            fputc('\n', stdout);
            break;
        }
        if (len == 0 && line[strspn(line, " \t")] == '\0') {
            free(line);
            continue;
        }
        int ok = append(&chunk, &len, line) == 0;
        free(line);
        if (!ok)
            break;
        /* the chunk is already on its way: a Ctrl-C now waits for its answer (bounded by
         * the coordinator's budget and the client's timeout) instead of hiding it */
        sigprocmask(SIG_BLOCK, &sigint, NULL);
        int r = evaluate(chunk);
        sigprocmask(SIG_UNBLOCK, &sigint, NULL);
        if (r == 1)
            continue;
        add_history(chunk);
        if (history[0])
            write_history(history);
        free(chunk);
        chunk = NULL;
        len = 0;
    }
    free(chunk);
    sigaction(SIGINT, &old_sa, NULL);
    if (cached_matches)
        json_decref(cached_matches);
    cached_matches = NULL;
    return 0;
}

int sl_cmd_repl(int argc, char **argv)
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
            fprintf(stderr, "sluice repl: unknown argument '%s'\n", argv[i]);
            usage(stderr);
            return 2;
        }
    }
    sl_client_t c;
    if (sl_cmd_client_open(&o, &c) != 0)
        return 1;
    conn.client = &c;
    conn.session[0] = '\0';
    /* an empty chunk: reachable, authorised, the REPL route is there, and a session */
    if (evaluate("") < 0) {
        sl_client_close(&c);
        return 1;
    }
    char how[64];
    snprintf(how, sizeof how, "%s", c.unix_path[0] ? "Unix socket" : "TCP");
    int rc = isatty(STDIN_FILENO) ? run_terminal(how) : run_script();
    close_session();
    sl_client_close(&c);
    conn.client = NULL;
    return rc;
}
