/* registry_test.c — the hot-reloaded policy registry (P4, B7) on a real libuv loop in a
 * temporary directory, with a real core pointed at each new policy by the swap hook.
 *
 * Saves the way people and editors do: in place, through a temporary file renamed over
 * the policy, in rapid bursts, and broken. Prints the save→live latency (B7) as a TAP
 * comment; it is measured, not asserted (a loaded machine must not fail the suite). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <uv.h>

#include "core/core.h"
#include "policy/registry.h"
#include "tap.h"

static char dir[256], path[512];
static uv_loop_t loop;
static sl_core_t *core;
static int swaps, fails;
static double swapped_at; /* monotonic ms of the last swap */

static double mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static void on_swap(void *arg, sl_policy_t *next)
{
    sl_core_set_policy(arg, next);
    swaps++;
    swapped_at = mono_ms();
}

static int last_trigger = -1;

static void on_reloaded(void *arg, int rc, sl_reload_trigger_t trigger, const sl_policy_info_t *info)
{
    if (rc != 0)
        fails++;
    last_trigger = (int)trigger;
}

static const char *policy_src(const char *name)
{
    static char buf[1024];
    snprintf(buf, sizeof buf,
             "-- test policy\n"
             "return {\n"
             "  name = \"%s\",\n"
             "  place = function(tasks, nodes, ctx)\n"
             "    local out = {}\n"
             "    if #nodes == 0 then return out end\n"
             "    for i = 1, #tasks do out[tasks[i].id] = nodes[(i - 1) %% #nodes + 1].id end\n"
             "    return out\n"
             "  end,\n"
             "  selftest = function() return true end,\n"
             "}\n",
             name);
    return buf;
}

static void write_file(const char *p, const char *text)
{
    FILE *f = fopen(p, "w");
    if (f == NULL) {
        perror(p);
        exit(1);
    }
    fputs(text, f);
    fclose(f);
}

/* An editor's save: a temporary file in the same directory renamed over the policy. */
static void save_by_rename(const char *text)
{
    char tmp[600];
    snprintf(tmp, sizeof tmp, "%s/.policy.lua.swp~", dir);
    write_file(tmp, text);
    if (rename(tmp, path) != 0) {
        perror("rename");
        exit(1);
    }
}

/* Runs the loop until cond() or timeout_ms. */
static int run_until(int (*cond)(void), double timeout_ms)
{
    double end = mono_ms() + timeout_ms;
    while (!cond() && mono_ms() < end) {
        uv_run(&loop, UV_RUN_NOWAIT);
        usleep(1000);
    }
    return cond();
}

static void run_for(double ms)
{
    double end = mono_ms() + ms;
    while (mono_ms() < end) {
        uv_run(&loop, UV_RUN_NOWAIT);
        usleep(1000);
    }
}

static int count_of(const char *s, const char *sub)
{
    int n = 0;
    for (const char *at = strstr(s, sub); at != NULL; at = strstr(at + 1, sub))
        n++;
    return n;
}

/* Passes its load and its selftest; loops forever in place (QA: accepted by reload). */
static const char LOOPER[] = "-- loops\n"
                             "return {\n"
                             "  name = 'looper',\n"
                             "  place = function(tasks, nodes, ctx)\n"
                             "    while true do end\n"
                             "  end,\n"
                             "  selftest = function() return true end,\n"
                             "}\n";

static int want_swaps, want_fails;
static int swaps_reached(void) { return swaps >= want_swaps; }
static int fails_reached(void) { return fails >= want_fails; }

static void rmtree(const char *d)
{
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", d);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", d);
}

int main(void)
{
    snprintf(dir, sizeof dir, "/tmp/sluice-registry-XXXXXX");
    if (mkdtemp(dir) == NULL) {
        perror("mkdtemp");
        return 1;
    }
    snprintf(path, sizeof path, "%s/policy.lua", dir);
    uv_loop_init(&loop);
    sl_core_config_t cfg;
    sl_core_config_default(&cfg);
    if (sl_core_new(&cfg, &core) != 0)
        return 1;

    sl_policy_registry_hooks_t hooks = {on_swap, on_reloaded, NULL};
    hooks.arg = core;
    sl_policy_registry_t *r = NULL;
    sl_policy_info_t info;
    char err[1024];

    /* a first load that fails leaves the built-in policy live */
    write_file(path, "return {\n  name = 'broken',\n  place = function(tasks nodes) end,\n}\n");
    int rc = sl_policy_registry_open(dir, "policy.lua", NULL, &hooks, &r, err, sizeof err);
    TAP_CHECK(rc == 0 && r != NULL, "P4: open succeeds even when the first load fails");
    sl_policy_registry_info(r, &info);
    TAP_CHECK(sl_policy_registry_policy(r) == NULL && info.version == 0 &&
                  !strcmp(info.name, "builtin"),
              "P4: a broken first policy keeps the built-in one (version 0)");
    TAP_CHECK(strstr(info.last_error, "using the built-in policy") != NULL &&
                  strstr(info.last_error, "policy.lua:3:") != NULL,
              "P4: last_error names file and line");
    printf("# last_error: %s\n", info.last_error);
    sl_policy_registry_close(r);

    /* a first load whose place loops: the trial refuses it, the built-in policy stays */
    write_file(path, LOOPER);
    swaps = fails = 0;
    rc = sl_policy_registry_open(dir, "policy.lua", NULL, &hooks, &r, err, sizeof err);
    sl_policy_registry_info(r, &info);
    TAP_CHECK(rc == 0 && sl_policy_registry_policy(r) == NULL && info.version == 0 &&
                  swaps == 0 && fails == 1 && !strcmp(info.name, "builtin"),
              "P4: a first policy whose place loops is refused at start (the trial of "
              "`policy check`); the built-in one stays");
    TAP_CHECK(strstr(info.last_error, "using the built-in policy: policy looper (") != NULL &&
                  strstr(info.last_error, "policy.lua:5): place exceeded its budget") != NULL,
              "P4: ... and last_error names file:line and the budget");
    printf("# last_error: %s\n", info.last_error);
    sl_policy_registry_close(r);

    /* a sound one */
    swaps = fails = 0;
    write_file(path, policy_src("first"));
    rc = sl_policy_registry_open(dir, "policy.lua", NULL, &hooks, &r, err, sizeof err);
    sl_policy_registry_info(r, &info);
    TAP_CHECK(rc == 0 && info.version == 1 && !strcmp(info.name, "first") && swaps == 1 &&
                  info.last_error[0] == '\0' && info.loaded_at_ms > 0,
              "P4: a sound policy loads at open: version 1, swap hook called");
    TAP_CHECK(last_trigger == SL_RELOAD_START, "P4: the load at open is reported as the start, not the API");

    /* explicit reload of the same file: a new state, version grows */
    rc = sl_policy_registry_reload(r, err, sizeof err);
    sl_policy_registry_info(r, &info);
    TAP_CHECK(rc == 1 && info.version == 2 && swaps == 2, "P4: reload() swaps and counts a version");

    rc = sl_policy_registry_watch(r, &loop, 100, err, sizeof err);
    sl_policy_registry_info(r, &info);
    TAP_CHECK(rc == 0 && info.watching, "P4: the directory is watched");

    /* save in place */
    double lat[16];
    int nlat = 0;
    want_swaps = swaps + 1;
    double t0 = mono_ms();
    write_file(path, policy_src("second"));
    int ok = run_until(swaps_reached, 3000);
    sl_policy_registry_info(r, &info);
    TAP_CHECK(ok && info.version == 3 && !strcmp(info.name, "second"),
              "P4: saving a sound policy in place makes it live (version grows)");
    if (ok)
        lat[nlat++] = swapped_at - t0;

    /* save a broken one: the old stays, the error names file:line */
    want_fails = fails + 1;
    int before = swaps;
    write_file(path, "return {\n  name = 'bad',\n\n  place = function(tasks, nodes) return end end,\n}\n");
    ok = run_until(fails_reached, 3000);
    sl_policy_registry_info(r, &info);
    TAP_CHECK(ok && swaps == before && info.version == 3 && !strcmp(info.name, "second"),
              "P4: a broken save keeps the previous policy live");
    TAP_CHECK(strstr(info.last_error, "using previous policy") != NULL &&
                  strstr(info.last_error, "policy.lua:4:") != NULL,
              "P4: last_error says 'using previous policy' with file:line");
    printf("# last_error: %s\n", info.last_error);

    /* a policy whose selftest fails is kept out too */
    want_fails = fails + 1;
    write_file(path, "return { name = 'st', place = function() return {} end,\n"
                     "  selftest = function() return false, 'no' end }\n");
    ok = run_until(fails_reached, 3000);
    sl_policy_registry_info(r, &info);
    TAP_CHECK(ok && info.version == 3 && strstr(info.last_error, "selftest") != NULL,
              "P4: a failing selftest keeps the previous policy");

    /* QA: a policy whose place loops forever loaded (version grew, last_error empty) and
     * then stalled the loop on every call. The trial refuses it like a syntax error. */
    want_fails = fails + 1;
    before = swaps;
    write_file(path, LOOPER);
    ok = run_until(fails_reached, 3000);
    sl_policy_registry_info(r, &info);
    TAP_CHECK(ok && swaps == before && info.version == 3 && !strcmp(info.name, "second") &&
                  sl_policy_registry_policy(r) != NULL,
              "P4/P2: a saved policy whose place loops is refused; the previous one stays live");
    TAP_CHECK(strstr(info.last_error, "using previous policy: policy looper (") != NULL &&
                  strstr(info.last_error, "policy.lua:5): place exceeded its budget of 50 ms") !=
                      NULL,
              "P4: last_error says 'using previous policy' with file:line and the budget");
    TAP_CHECK(count_of(info.last_error, "policy looper") == 1 &&
                  strchr(info.last_error, '\n') == NULL,
              "P4: ... naming the policy once, on one line");
    printf("# last_error: %s\n", info.last_error);
    rc = sl_policy_registry_reload(r, err, sizeof err);
    sl_policy_registry_info(r, &info);
    TAP_CHECK(rc == SL_EPOLICY && info.version == 3 && strstr(err, "exceeded its budget") != NULL,
              "P4: reload() of the looping policy fails the same way (the API's 422)");

    /* what else fails the trial whatever the cluster */
    static const struct {
        const char *src, *want, *what;
    } refused[] = {
        {"return { name = 'raiser',\n  place = function(tasks, nodes, ctx)\n"
         "    return { [tasks[1].id] = nodes[1].rack.id }\n  end }\n",
         "policy.lua:3): attempt to index", "P4: a place that raises in the trial is refused"},
        {"return { name = 'numeric', place = function() return 42 end }\n",
         "place returned number, expected a table",
         "P4: a place that returns a number is refused"},
        {"return { name = 'typo', place = function(tasks)\n  local o = {}\n"
         "  for _, t in ipairs(tasks) do o[t.id] = 7 end\n  return o\nend }\n",
         "task \"cf-1\": expected a node id (string), got number",
         "P4/P3: a malformed value for a task is refused"},
        {"return { name = 'ghostly', place = function() return { ghost = 'n1' } end }\n",
         "answered for task \"ghost\", which was not asked for",
         "P4/P3: an answer for a task not asked for is refused"},
        {"return { name = 'order', place = function() return {} end,\n"
         "  drain_order = function() return { 'nope' } end }\n",
         "drain_order returned \"nope\"", "P4: a drain_order that fails in the trial is refused"},
    };
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++) {
        write_file(path, refused[i].src);
        rc = sl_policy_registry_reload(r, err, sizeof err);
        sl_policy_registry_info(r, &info);
        TAP_CHECK(rc == SL_EPOLICY && info.version == 3 && !strcmp(info.name, "second") &&
                      strstr(info.last_error, "using previous policy: policy ") != NULL &&
                      strstr(info.last_error, refused[i].want) != NULL,
                  refused[i].what);
        if (rc != SL_EPOLICY || strstr(info.last_error, refused[i].want) == NULL)
            printf("# got rc %d, last_error: %s\n", rc, info.last_error);
    }

    /* what the trial does not refuse: node ids (the core judges them live, P3), a policy
     * that leaves every task waiting (P1), one that is slow but within its budget */
    static const struct {
        const char *src, *name, *what;
    } accepted[] = {
        {"return { name = 'to-nowhere', place = function(tasks)\n  local o = {}\n"
         "  for _, t in ipairs(tasks) do o[t.id] = 'n9' end\n  return o\nend }\n",
         "to-nowhere", "P4/P3: a policy naming nodes the trial lacks loads (the core checks live)"},
        {"return { name = 'lazy', place = function() return {} end }\n", "lazy",
         "P4/P1: a policy that leaves every task waiting loads"},
        {"return { name = 'slow', place = function(tasks, nodes)\n"
         "  local t0 = os.clock()\n  while os.clock() - t0 < 0.003 do end\n"
         "  local o = {}\n"
         "  for i, t in ipairs(tasks) do o[t.id] = nodes[(i - 1) % #nodes + 1].id end\n"
         "  return o\nend,\n  drain_order = function(tasks)\n"
         "  local t0 = os.clock()\n  while os.clock() - t0 < 0.003 do end\n  return {}\nend }\n",
         "slow", "P4/P2: a policy that is slow but within its budget loads"},
    };
    for (size_t i = 0; i < sizeof accepted / sizeof accepted[0]; i++) {
        write_file(path, accepted[i].src);
        uint64_t v = info.version;
        rc = sl_policy_registry_reload(r, err, sizeof err);
        sl_policy_registry_info(r, &info);
        TAP_CHECK(rc == 1 && info.version == v + 1 && !strcmp(info.name, accepted[i].name) &&
                      info.last_error[0] == '\0',
                  accepted[i].what);
        if (rc != 1)
            printf("# got rc %d, err: %s\n", rc, err);
    }
    /* back to a sound policy by a watched save, for what follows */
    want_swaps = swaps + 1;
    write_file(path, policy_src("second"));
    ok = run_until(swaps_reached, 3000);
    TAP_CHECK(ok, "P4: a sound save after refused ones goes live");
    run_for(250); /* the debounce of the saves above has passed */

    /* an editor's rename-over save */
    for (int i = 0; i < 5; i++) {
        char name[32];
        snprintf(name, sizeof name, "renamed-%d", i);
        want_swaps = swaps + 1;
        t0 = mono_ms();
        save_by_rename(policy_src(name));
        ok = run_until(swaps_reached, 3000);
        if (ok && nlat < 16)
            lat[nlat++] = swapped_at - t0;
        if (!ok)
            break;
        run_for(20);
    }
    sl_policy_registry_info(r, &info);
    TAP_CHECK(ok && !strcmp(info.name, "renamed-4") && info.last_error[0] == '\0',
              "P4: a save that renames a temporary file over the policy reloads it");

    /* rapid saves fold into few reloads, and the last one wins */
    int swaps0 = swaps;
    for (int i = 0; i < 20; i++) {
        char name[32];
        snprintf(name, sizeof name, "burst-%d", i);
        if (i % 2)
            save_by_rename(policy_src(name));
        else
            write_file(path, policy_src(name));
        run_for(10);
    }
    run_for(600);
    sl_policy_registry_info(r, &info);
    printf("# 20 saves 10 ms apart: %d reloads\n", swaps - swaps0);
    TAP_CHECK(swaps - swaps0 >= 1 && swaps - swaps0 <= 4 && !strcmp(info.name, "burst-19"),
              "P4: rapid saves are debounced into few reloads, the last save live");

    /* other files in the directory, and an unchanged save, reload nothing */
    swaps0 = swaps;
    int fails0 = fails;
    char other[600];
    snprintf(other, sizeof other, "%s/other.lua", dir);
    write_file(other, policy_src("other"));
    write_file(path, policy_src("burst-19")); /* same bytes */
    run_for(400);
    TAP_CHECK(swaps == swaps0 && fails == fails0,
              "P4: other files and an unchanged save do not reload");

    /* the directory replaced under the same name: the poll re-arms the watcher */
    char moved[300];
    snprintf(moved, sizeof moved, "%s.old", dir);
    want_swaps = swaps + 1;
    if (rename(dir, moved) == 0 && mkdir(dir, 0700) == 0) {
        write_file(path, policy_src("new-dir"));
        ok = run_until(swaps_reached, 4000);
        sl_policy_registry_info(r, &info);
        TAP_CHECK(ok && !strcmp(info.name, "new-dir"),
                  "P4: a replaced policy directory is watched again");
        want_swaps = swaps + 1;
        write_file(path, policy_src("new-dir-2"));
        ok = run_until(swaps_reached, 3000);
        sl_policy_registry_info(r, &info);
        TAP_CHECK(ok && !strcmp(info.name, "new-dir-2") && info.watching,
                  "P4: ... and saves in it are seen");
    } else {
        TAP_CHECK(0, "P4: a replaced policy directory is watched again (rename failed)");
    }
    rmtree(moved);

    /* an explicit reload of a broken file reports the error and keeps the policy */
    write_file(path, "return 42\n");
    err[0] = 0;
    sl_core_set_policy(core, sl_policy_registry_policy(r));
    rc = sl_policy_registry_reload(r, err, sizeof err);
    sl_policy_registry_info(r, &info);
    TAP_CHECK(rc < 0 && !strcmp(info.name, "new-dir-2") &&
                  strstr(err, "using previous policy") != NULL,
              "P4: reload() of a broken file returns the error and keeps the policy");
    printf("# reload error: %s\n", err);

    /* the cost of a reload (read, fresh state, contract, selftest, trial, swap), printed
     * for B7, not asserted */
    {
        write_file(path, policy_src("timed"));
        double t_sum = 0, t_max = 0;
        int n = 0;
        for (int i = 0; i < 20; i++) {
            double t1 = mono_ms();
            rc = sl_policy_registry_reload(r, err, sizeof err);
            double d = mono_ms() - t1;
            if (rc != 1)
                break;
            t_sum += d;
            t_max = d > t_max ? d : t_max;
            n++;
        }
        if (n > 0)
            printf("# reload() of a sound policy: mean %.2f ms, max %.2f ms over %d\n",
                   t_sum / n, t_max, n);
        write_file(path, LOOPER);
        double t1 = mono_ms();
        rc = sl_policy_registry_reload(r, err, sizeof err);
        printf("# reload() of a looping policy, refused: %.1f ms (one call budget)\n",
               mono_ms() - t1);
    }

    double sum = 0, max = 0;
    for (int i = 0; i < nlat; i++) {
        sum += lat[i];
        if (lat[i] > max)
            max = lat[i];
    }
    if (nlat > 0)
        printf("# B7 policy saved -> live: mean %.1f ms, max %.1f ms over %d saves "
               "(debounce 100 ms; target <= 300 ms)\n", sum / nlat, max, nlat);

    /* close: detach the core first, then the registry's handles close on the loop */
    sl_core_set_policy(core, NULL);
    sl_policy_registry_close(r);
    uv_run(&loop, UV_RUN_DEFAULT);
    TAP_CHECK(uv_loop_close(&loop) == 0, "registry close releases every libuv handle");
    sl_core_free(core);
    rmtree(dir);
    return TAP_DONE();
}
