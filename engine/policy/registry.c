/* registry.c — the live policy, hot-reloaded from its file (P4, B7; see registry.h).
 *
 * Guarantees:
 *  - a policy goes live only after the Lua host built it in a fresh state, its contract
 *    and selftest passed, and it came through the trial `sluice policy check` runs
 *    (sl_policy_trial: place on a synthetic cluster, drain_order, each under the call
 *    budget); otherwise the old one stays and last_error names the file and line,
 *    prefixed "using previous policy:" (or "using the built-in policy:");
 *  - the bytes checked are the bytes loaded: the file is read once, hashed, and handed to
 *    sl_policy_lua_load_string under its path, so messages read as sl_policy_lua_load's;
 *  - watching: the directory (not the file) is watched, so a rename over the file is an
 *    event like any other; events for other names are ignored; a trailing debounce with a
 *    cap folds storms into one reload; a watched reload whose content hash equals the last
 *    attempt's is skipped (an unchanged file is not reloaded, a broken one is not
 *    reported twice); a 1 s stat poll re-arms the watcher when the directory is replaced
 *    and catches changes that came with no event.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>

#include "registry.h"

#define REG_FILE_MAX (16u << 20)   /* as the Lua host: larger files are refused */
#define REG_DEBOUNCE_DEFAULT 100
#define REG_POLL_MS 1000

struct sl_policy_registry {
    char dir[1024];
    char file[256];
    char path[1300];
    sl_policy_limits_t lim;
    sl_policy_registry_hooks_t hooks;

    sl_policy_t *policy; /* NULL: the built-in one is live */
    uint64_t version, loaded_at_ms, reloads, reload_errors, watch_events;
    char last_error[SL_ERRMSG_MAX + 64];
    uint64_t attempt_key; /* content hash of the last attempt, for watched reloads */
    int have_attempt;

    /* watching */
    uv_loop_t *loop;
    uv_fs_event_t event;
    uv_timer_t debounce;
    uv_timer_t poll;
    int handles;      /* the three handles above are initialised */
    int event_active; /* the fs event is started */
    int open_handles; /* closing: handles whose close callback is still due */
    uint64_t debounce_ms;
    int pending;
    uint64_t first_pending_ms;
    dev_t dir_dev;
    ino_t dir_ino;
    struct timespec file_mtime; /* what the poll saw last */
    off_t file_size;
    ino_t file_ino;
    int file_seen;
};

static uint64_t wall_ms(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (uint64_t)tv.tv_sec * 1000u + (uint64_t)tv.tv_usec / 1000u;
}

/* FNV-1a, 64 bits, with the length folded in. */
static uint64_t content_key(const char *buf, size_t len)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)buf[i];
        h *= 1099511628211ull;
    }
    return h ^ ((uint64_t)len * 0x9e3779b97f4a7c15ull);
}

/* Reads the whole file. Returns 0, or a negative code with err set. */
static int read_file(const char *path, char **out, size_t *outlen, char *err, size_t errlen)
{
    char *buf = NULL;
    size_t len = 0, cap = 0;
    int rc = 0;
    *out = NULL;
    *outlen = 0;
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        snprintf(err, errlen, "policy %.400s: cannot open: %s", path, strerror(errno));
        return SL_ENOENT;
    }
    for (;;) {
        if (len == cap) {
            if (cap >= REG_FILE_MAX) {
                snprintf(err, errlen, "policy %.400s: larger than %u bytes", path, REG_FILE_MAX);
                rc = SL_EINVAL;
                goto done;
            }
            cap = cap ? cap * 2 : 16384;
            char *nb = realloc(buf, cap + 1);
            if (nb == NULL) {
                snprintf(err, errlen, "policy %.400s: out of memory", path);
                rc = SL_ENOMEM;
                goto done;
            }
            buf = nb;
        }
        size_t got = fread(buf + len, 1, cap - len, f);
        len += got;
        if (got == 0)
            break;
    }
    if (ferror(f)) {
        snprintf(err, errlen, "policy %.400s: cannot read: %s", path, strerror(errno));
        rc = SL_EINVAL;
        goto done;
    }
    *out = buf;
    *outlen = len;
    buf = NULL;
done:
    free(buf);
    fclose(f);
    return rc;
}

static void fill_info(const sl_policy_registry_t *r, sl_policy_info_t *out)
{
    memset(out, 0, sizeof *out);
    out->name = r->policy ? r->policy->name : "builtin";
    out->file = r->policy ? r->policy->file : "builtin";
    out->path = r->path;
    out->version = r->version;
    out->loaded_at_ms = r->loaded_at_ms;
    out->last_error = r->last_error;
    out->reloads = r->reloads;
    out->reload_errors = r->reload_errors;
    out->watch_events = r->watch_events;
    out->watching = r->event_active;
}

static void notify(sl_policy_registry_t *r, int rc, sl_reload_trigger_t trigger)
{
    if (r->hooks.reloaded == NULL)
        return;
    sl_policy_info_t info;
    fill_info(r, &info);
    r->hooks.reloaded(r->hooks.arg, rc, trigger, &info);
}

/* One attempt. `only_if_changed`: skip when the content is what the last attempt saw.
 * Returns 1 (swapped), 0 (skipped), or a negative code (failed; the old policy stays). */
static int attempt(sl_policy_registry_t *r, sl_reload_trigger_t trigger, int only_if_changed,
                   char *err, size_t errlen)
{
    char msg[SL_ERRMSG_MAX];
    char *buf = NULL;
    size_t len = 0;
    sl_policy_t *next = NULL;
    msg[0] = '\0';
    int rc = read_file(r->path, &buf, &len, msg, sizeof msg);
    /* a missing or unreadable file has a key of its own, so it is reported once too */
    uint64_t key = rc == 0 ? content_key(buf, len) : (uint64_t)(-(int64_t)rc);
    if (only_if_changed && r->have_attempt && key == r->attempt_key) {
        free(buf);
        return 0;
    }
    r->attempt_key = key;
    r->have_attempt = 1;
    if (rc == 0)
        rc = sl_policy_lua_load_string(buf, len, r->path, &r->lim, &next, msg, sizeof msg);
    free(buf);
    /* the trial of `policy check`: a policy that errors, loops past its budget or answers
     * malformed there is refused like a syntax error, before the core ever calls it */
    if (rc == 0 && (rc = sl_policy_trial(next, msg, sizeof msg)) != 0) {
        sl_policy_free(next);
        next = NULL;
    }
    if (rc != 0) {
        snprintf(r->last_error, sizeof r->last_error, "%s: %s",
                 r->policy ? "using previous policy" : "using the built-in policy", msg);
        r->reload_errors++;
        if (err != NULL && errlen > 0)
            snprintf(err, errlen, "%s", r->last_error);
        notify(r, rc, trigger);
        return rc;
    }
    /* swap between two rounds: the core is pointed at the new policy before the old
     * one is freed */
    if (r->hooks.swap != NULL)
        r->hooks.swap(r->hooks.arg, next);
    sl_policy_free(r->policy);
    r->policy = next;
    r->version++;
    r->reloads++;
    r->loaded_at_ms = wall_ms();
    r->last_error[0] = '\0';
    notify(r, 0, trigger);
    return 1;
}

int sl_policy_registry_open(const char *dir, const char *file, const sl_policy_limits_t *lim,
                            const sl_policy_registry_hooks_t *hooks,
                            sl_policy_registry_t **out, char *err, size_t errlen)
{
    *out = NULL;
    if (dir == NULL || dir[0] == '\0' || file == NULL || file[0] == '\0' ||
        strchr(file, '/') != NULL) {
        snprintf(err, errlen, "policy registry: want a directory and a file name in it "
                              "(got \"%s\" and \"%s\")", dir ? dir : "", file ? file : "");
        return SL_EINVAL;
    }
    sl_policy_registry_t *r = calloc(1, sizeof *r);
    if (r == NULL) {
        snprintf(err, errlen, "policy registry: out of memory");
        return SL_ENOMEM;
    }
    if ((size_t)snprintf(r->dir, sizeof r->dir, "%s", dir) >= sizeof r->dir ||
        (size_t)snprintf(r->file, sizeof r->file, "%s", file) >= sizeof r->file) {
        snprintf(err, errlen, "policy registry: path too long");
        free(r);
        return SL_EINVAL;
    }
    snprintf(r->path, sizeof r->path, "%s/%s", r->dir, r->file);
    if (lim != NULL)
        r->lim = *lim;
    else
        sl_policy_limits_default(&r->lim);
    if (hooks != NULL)
        r->hooks = *hooks;
    attempt(r, SL_RELOAD_START, 0, NULL, 0);
    *out = r;
    return 0;
}

int sl_policy_registry_reload(sl_policy_registry_t *r, char *err, size_t errlen)
{
    return attempt(r, SL_RELOAD_API, 0, err, errlen);
}

sl_policy_t *sl_policy_registry_policy(const sl_policy_registry_t *r)
{
    return r->policy;
}

void sl_policy_registry_info(const sl_policy_registry_t *r, sl_policy_info_t *out)
{
    fill_info(r, out);
}

/* ---- watching ----------------------------------------------------------------------- */

static void on_debounce(uv_timer_t *t)
{
    sl_policy_registry_t *r = t->data;
    r->pending = 0;
    attempt(r, SL_RELOAD_WATCH, 1, NULL, 0);
}

/* Trailing debounce, capped so a steady stream of events cannot postpone the reload
 * forever (B7 stays bounded). The poll only starts one: when an event has a reload due
 * already, the poll seeing the same change must not push it back. */
static void schedule(sl_policy_registry_t *r)
{
    uint64_t now = uv_now(r->loop);
    if (!r->pending) {
        r->pending = 1;
        r->first_pending_ms = now;
    }
    uint64_t delay = r->debounce_ms;
    uint64_t cap_at = r->first_pending_ms + r->debounce_ms * 5 / 2;
    if (now + delay > cap_at)
        delay = cap_at > now ? cap_at - now : 0;
    uv_timer_start(&r->debounce, on_debounce, delay, 0);
}

static void on_fs_event(uv_fs_event_t *h, const char *filename, int events, int status)
{
    sl_policy_registry_t *r = h->data;
    (void)events;
    if (status < 0) { /* the watch is broken: the poll arms it again */
        uv_fs_event_stop(&r->event);
        r->event_active = 0;
        return;
    }
    if (filename != NULL && strcmp(filename, r->file) != 0)
        return;
    r->watch_events++;
    schedule(r);
}

static int arm_event(sl_policy_registry_t *r)
{
    struct stat st;
    if (stat(r->dir, &st) != 0 || !S_ISDIR(st.st_mode))
        return SL_ENOENT;
    if (r->event_active) {
        uv_fs_event_stop(&r->event);
        r->event_active = 0;
    }
    int rc = uv_fs_event_start(&r->event, on_fs_event, r->dir, 0);
    if (rc != 0)
        return rc;
    r->event_active = 1;
    r->dir_dev = st.st_dev;
    r->dir_ino = st.st_ino;
    return 0;
}

static void on_poll(uv_timer_t *t)
{
    sl_policy_registry_t *r = t->data;
    struct stat st;
    int dir_ok = stat(r->dir, &st) == 0 && S_ISDIR(st.st_mode);
    if (!dir_ok) {
        if (r->event_active) {
            uv_fs_event_stop(&r->event);
            r->event_active = 0;
        }
    } else if (!r->event_active || st.st_dev != r->dir_dev || st.st_ino != r->dir_ino) {
        /* a new directory under the same name: what it holds may be new too */
        if (arm_event(r) == 0 && !r->pending)
            schedule(r);
    }
    int seen = stat(r->path, &st) == 0;
    if (seen != r->file_seen ||
        (seen && (st.st_size != r->file_size || st.st_ino != r->file_ino ||
                  st.st_mtim.tv_sec != r->file_mtime.tv_sec ||
                  st.st_mtim.tv_nsec != r->file_mtime.tv_nsec))) {
        if ((r->file_seen || seen) && !r->pending)
            schedule(r); /* the content hash decides whether anything reloads */
        r->file_seen = seen;
        if (seen) {
            r->file_size = st.st_size;
            r->file_ino = st.st_ino;
            r->file_mtime = st.st_mtim;
        }
    }
}

int sl_policy_registry_watch(sl_policy_registry_t *r, uv_loop_t *loop, uint64_t debounce_ms,
                             char *err, size_t errlen)
{
    if (r->handles) {
        snprintf(err, errlen, "policy registry: already watching %s", r->dir);
        return SL_EINVAL;
    }
    r->loop = loop;
    r->debounce_ms = debounce_ms ? debounce_ms : REG_DEBOUNCE_DEFAULT;
    int rc;
    if ((rc = uv_fs_event_init(loop, &r->event)) != 0 ||
        (rc = uv_timer_init(loop, &r->debounce)) != 0 ||
        (rc = uv_timer_init(loop, &r->poll)) != 0) {
        /* uv_*_init of these handles cannot fail on Linux; nothing to undo */
        snprintf(err, errlen, "policy registry: %s", uv_strerror(rc));
        return rc;
    }
    r->event.data = r->debounce.data = r->poll.data = r;
    r->handles = 1;
    struct stat st;
    if (stat(r->path, &st) == 0) {
        r->file_seen = 1;
        r->file_size = st.st_size;
        r->file_ino = st.st_ino;
        r->file_mtime = st.st_mtim;
    }
    arm_event(r); /* a missing directory is armed by the poll once it appears */
    uv_timer_start(&r->poll, on_poll, REG_POLL_MS, REG_POLL_MS);
    return 0;
}

static void on_closed(uv_handle_t *h)
{
    sl_policy_registry_t *r = h->data;
    if (--r->open_handles == 0)
        free(r);
}

void sl_policy_registry_close(sl_policy_registry_t *r)
{
    if (r == NULL)
        return;
    sl_policy_free(r->policy);
    r->policy = NULL;
    if (!r->handles) {
        free(r);
        return;
    }
    r->open_handles = 3;
    uv_close((uv_handle_t *)&r->event, on_closed);
    uv_close((uv_handle_t *)&r->debounce, on_closed);
    uv_close((uv_handle_t *)&r->poll, on_closed);
}
