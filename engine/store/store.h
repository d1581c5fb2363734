/* store.h — what the coordinator persists, behind an interface (A6, D4).
 *
 * Two implementations: an in-memory store (the simulator, specs) and SQLite (the daemon:
 * WAL, synchronous=FULL). The interface is shaped so that a distributed store (etcd) can
 * implement it later: every call is one small keyed write or read, no transactions span
 * calls, and a write has returned only once it is durable.
 *
 * What is stored: the drain record (D4), node liveness (L1, D4), and changefeed
 * definitions (A2, A6). */
#ifndef SL_STORE_H
#define SL_STORE_H

#include "../common.h"

#ifndef SL_EIO
#define SL_EIO (-5) /* the store could not write or read (also in common.h) */
#endif

typedef struct {
    char target[SL_ID_MAX]; /* "" when no drain runs; the epoch is kept even then */
    uint64_t epoch;         /* grows with every drain start, cancel and clear (D5) */
    uint64_t started_at_ms;
    uint32_t initial_maintainers;
    uint32_t initial_dispatchers;
} sl_drain_record_t;

typedef struct sl_store sl_store_t;

/* Called once per stored item by the list functions; a non-zero return stops the walk and
 * becomes the list function's return value. */
typedef int (*sl_store_liveness_cb)(void *arg, const char *node, int liveness);
typedef int (*sl_store_changefeed_cb)(void *arg, const char *changefeed, uint32_t table_count);

/* Every function returns 0 or a negative SL_E* code: SL_EINVAL for an empty, NULL or
 * over-long id (SL_ID_MAX with its NUL), SL_EIO when the store could not write or read
 * (nothing changed), SL_ENOMEM. Deleting a key that is absent is not an error. */
struct sl_store_ops {
    int (*save_drain)(sl_store_t *s, const sl_drain_record_t *rec);
    /* SL_ENOENT when nothing was ever saved */
    int (*load_drain)(sl_store_t *s, sl_drain_record_t *rec);
    int (*save_liveness)(sl_store_t *s, const char *node, int liveness);
    int (*delete_liveness)(sl_store_t *s, const char *node);
    int (*list_liveness)(sl_store_t *s, sl_store_liveness_cb cb, void *arg);
    int (*save_changefeed)(sl_store_t *s, const char *changefeed, uint32_t table_count);
    int (*delete_changefeed)(sl_store_t *s, const char *changefeed);
    int (*list_changefeeds)(sl_store_t *s, sl_store_changefeed_cb cb, void *arg);
    void (*destroy)(sl_store_t *s);
};

struct sl_store {
    const struct sl_store_ops *ops;
};

/* In memory: survives a coordinator "restart" inside one process (the simulator keeps the
 * store and builds a new core on it). Lists walk in sorted key order (deterministic).
 * `fail_writes` makes every write fail with SL_EIO, for fault tests. */
int sl_store_mem_new(sl_store_t **out);
void sl_store_mem_fail_writes(sl_store_t *s, int fail);

/* SQLite in `path` (created if missing): WAL, synchronous=FULL. On failure returns a
 * negative code with a message naming the file in err. */
int sl_store_sqlite_open(const char *path, sl_store_t **out, char *err, size_t errlen);
/* The message of the last failed call on a SQLite store ("store PATH: save liveness: disk
 * I/O error"), or "" for none or for another kind of store. */
const char *sl_store_sqlite_errmsg(sl_store_t *s);

void sl_store_free(sl_store_t *s);

#endif
