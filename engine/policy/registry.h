/* registry.h — the live placement policy of a coordinator, hot-reloaded (P4, B7).
 *
 * A registry owns the policy a core uses. It loads `<dir>/<file>` through the Lua host
 * (sl_policy_lua_load: a fresh sandboxed state, contract checked, selftest run), puts it
 * through the trial of `sluice policy check` (sl_policy_trial: a few calls on a synthetic
 * cluster; an error, a blown budget or a malformed answer fails it) and swaps the new
 * policy in only when all of that succeeded; on any failure the old policy stays live and
 * `last_error` says why, with file and line ("using previous policy: …"). The trial runs
 * on the loop's thread: a policy that loops costs one call budget (50 ms by default) once
 * per attempt, not once per scheduling round.
 * Every swap increments `version`.
 *
 * Reloads come from three places: sl_policy_registry_reload() (POST /api/v2/policies/
 * reload, policy.reload() in the REPL), and a libuv fs watcher on the policy *directory*
 * (sl_policy_registry_watch), debounced, which survives editors that write a temporary
 * file and rename it over the old one, a directory that is replaced, and event storms:
 * a watched reload happens only when the file's content hash changed since the last
 * attempt. A slow stat poll re-arms the watcher when the directory goes away and comes
 * back, and catches changes the kernel did not report.
 *
 * Swapping: the core holds a borrowed pointer (sl_core_set_policy). The registry never
 * calls the core; it calls hooks.swap(arg, next) right after the new policy passed its
 * checks, and frees the old policy only after swap returned. Everything runs on the
 * thread of the loop (or the caller of reload), which is between two scheduling rounds
 * of a libuv-driven core. Without a swap hook, the caller points the core at
 * sl_policy_registry_policy() itself after a reload returned 1 — before the next one.
 *
 * Not thread-safe: one thread (the coordinator's loop) uses a registry. */
#ifndef SL_POLICY_REGISTRY_H
#define SL_POLICY_REGISTRY_H

#include <uv.h>

#include "policy.h"

typedef struct sl_policy_registry sl_policy_registry_t;

typedef struct {
    const char *name;       /* the live policy's `name`, "builtin" when none loaded */
    const char *file;       /* the live policy's path, "builtin" when none loaded */
    const char *path;       /* the file the registry loads: <dir>/<file> */
    uint64_t version;       /* swaps so far (0: the built-in policy is live) */
    uint64_t loaded_at_ms;  /* wall clock (ms since the epoch) of the last swap, 0 if none */
    const char *last_error; /* "" after a successful load; else why the last attempt failed */
    uint64_t reloads;       /* successful loads */
    uint64_t reload_errors; /* failed attempts */
    uint64_t watch_events;  /* fs events seen for the policy file (after filtering) */
    int watching;           /* the directory watcher is armed */
} sl_policy_info_t;

typedef enum {
    SL_RELOAD_API = 0,   /* sl_policy_registry_reload(): API, REPL */
    SL_RELOAD_WATCH = 1, /* the directory watcher */
    SL_RELOAD_START = 2, /* the first load, when the registry opens */
} sl_reload_trigger_t;

typedef struct {
    /* A new policy passed its checks: point the core at it (sl_core_set_policy). The old
     * policy is freed after this returns. May be NULL (see above). */
    void (*swap)(void *arg, sl_policy_t *next);
    /* After every attempt, successful (rc 0) or not (rc < 0, info->last_error set): for
     * logs and metrics. Not called for watched events whose content did not change. */
    void (*reloaded)(void *arg, int rc, sl_reload_trigger_t trigger, const sl_policy_info_t *info);
    void *arg;
} sl_policy_registry_hooks_t;

/* Creates a registry for `<dir>/<file>` and loads it once. A failed first load is not an
 * error of open: the built-in policy stays live (policy NULL) and last_error says why.
 * `lim` NULL: the defaults. `hooks` NULL: none (copied). Returns 0, or SL_EINVAL (empty
 * dir or file, a file name with '/', a path too long) / SL_ENOMEM with err set. */
int sl_policy_registry_open(const char *dir, const char *file, const sl_policy_limits_t *lim,
                            const sl_policy_registry_hooks_t *hooks,
                            sl_policy_registry_t **out, char *err, size_t errlen);

/* Builds the policy again from the file. Returns 1 when a new policy was swapped in, or
 * a negative code with last_error (and err, when given) set: the old policy stays. */
int sl_policy_registry_reload(sl_policy_registry_t *r, char *err, size_t errlen);

/* The live policy, NULL for the built-in one. Owned by the registry. */
sl_policy_t *sl_policy_registry_policy(const sl_policy_registry_t *r);

/* Strings valid until the next reload or close. */
void sl_policy_registry_info(const sl_policy_registry_t *r, sl_policy_info_t *out);

/* Starts watching the directory on `loop`: a reload runs debounce_ms (0: 100) after the
 * last event for the file, and at most 2.5 × debounce_ms after the first one even when
 * events keep coming. A stat poll every second re-arms the watcher when the directory
 * was replaced or did not exist yet (info.watching says whether it is armed now).
 * Returns 0, or a negative libuv code with err set when the handles cannot start. */
int sl_policy_registry_watch(sl_policy_registry_t *r, uv_loop_t *loop, uint64_t debounce_ms,
                             char *err, size_t errlen);

/* Frees the registry and its policy. The caller has detached the core first
 * (sl_core_set_policy(core, NULL), or freed it). When watching, the libuv handles are
 * closed and the memory is released in their close callbacks: run the loop afterwards. */
void sl_policy_registry_close(sl_policy_registry_t *r);

#endif
