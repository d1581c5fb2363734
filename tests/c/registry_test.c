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
