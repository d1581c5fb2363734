/* mem.c — the in-memory store (A6, D4): the simulator and the specs keep one across a
 * coordinator "restart" inside a process and build a new core on it.
 *
 * Guarantees: keyed tables (liveness by node, changefeeds by id) kept as arrays sorted by
 * key, so every list walks in byte order of the key — the simulator's runs are
 * reproducible byte for byte (M1). `sl_store_mem_fail_writes` makes every write return
 * SL_EIO and change nothing (fault tests of D4). A list walks a snapshot, so a callback may
 * save or delete in the same store without disturbing the walk. */
#include <stdlib.h>
#include <string.h>

#include "store.h"

typedef struct {
    char key[SL_ID_MAX];
    int64_t value; /* liveness, or a changefeed's table count */
} mem_entry_t;

typedef struct {
    mem_entry_t *items;
    size_t len, cap;
} mem_table_t;

typedef struct {
    sl_store_t base;
    int fail_writes;
    int has_drain;
    sl_drain_record_t drain;
    mem_table_t liveness;
    mem_table_t changefeeds;
} mem_store_t;

static const struct sl_store_ops mem_ops;

static mem_store_t *mem_of(sl_store_t *s)
{
    return (mem_store_t *)s;
}

/* A key is a non-empty id that fits SL_ID_MAX with its NUL. */
static int key_valid(const char *key)
{
    return key != NULL && key[0] != '\0' && memchr(key, '\0', SL_ID_MAX) != NULL;
}

/* Binary search: the index of `key`, or where it would be inserted (with *found = 0). */
static size_t table_find(const mem_table_t *t, const char *key, int *found)
{
    size_t lo = 0, hi = t->len;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(t->items[mid].key, key);
        if (c == 0) {
            *found = 1;
            return mid;
        }
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    *found = 0;
    return lo;
}

static int table_put(mem_table_t *t, const char *key, int64_t value)
{
    int found;
    size_t at = table_find(t, key, &found);
    if (found) {
        t->items[at].value = value;
        return 0;
    }
    if (t->len == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 16;
        mem_entry_t *items = realloc(t->items, cap * sizeof *items);
        if (items == NULL)
            return SL_ENOMEM;
        t->items = items;
        t->cap = cap;
    }
    memmove(&t->items[at + 1], &t->items[at], (t->len - at) * sizeof *t->items);
    memset(&t->items[at], 0, sizeof t->items[at]);
    strcpy(t->items[at].key, key); /* key_valid() bounded it */
    t->items[at].value = value;
    t->len++;
    return 0;
}

/* Deleting a key that is not there is not an error: a retried delete must succeed. */
static void table_del(mem_table_t *t, const char *key)
{
    int found;
    size_t at = table_find(t, key, &found);
    if (!found)
        return;
    memmove(&t->items[at], &t->items[at + 1], (t->len - at - 1) * sizeof *t->items);
    t->len--;
}

/* Copies the table so the callback may write to the store during the walk. */
static int table_snapshot(const mem_table_t *t, mem_entry_t **out)
{
    *out = NULL;
    if (t->len == 0)
        return 0;
    *out = malloc(t->len * sizeof **out);
    if (*out == NULL)
        return SL_ENOMEM;
    memcpy(*out, t->items, t->len * sizeof **out);
    return 0;
}

/* ---- drain record ---------------------------------------------------------------------- */

static int mem_save_drain(sl_store_t *s, const sl_drain_record_t *rec)
{
    mem_store_t *m = mem_of(s);
    if (rec == NULL || memchr(rec->target, '\0', SL_ID_MAX) == NULL)
        return SL_EINVAL;
    if (m->fail_writes)
        return SL_EIO;
    m->drain = *rec;
    m->has_drain = 1;
    return 0;
}

static int mem_load_drain(sl_store_t *s, sl_drain_record_t *rec)
{
    mem_store_t *m = mem_of(s);
    if (rec == NULL)
        return SL_EINVAL;
    if (!m->has_drain)
        return SL_ENOENT;
    *rec = m->drain;
    return 0;
}

/* ---- liveness -------------------------------------------------------------------------- */

static int mem_save_liveness(sl_store_t *s, const char *node, int liveness)
{
    mem_store_t *m = mem_of(s);
    if (!key_valid(node))
        return SL_EINVAL;
    if (m->fail_writes)
        return SL_EIO;
    return table_put(&m->liveness, node, liveness);
}

static int mem_delete_liveness(sl_store_t *s, const char *node)
{
    mem_store_t *m = mem_of(s);
    if (!key_valid(node))
        return SL_EINVAL;
    if (m->fail_writes)
        return SL_EIO;
    table_del(&m->liveness, node);
    return 0;
}

static int mem_list_liveness(sl_store_t *s, sl_store_liveness_cb cb, void *arg)
{
    mem_store_t *m = mem_of(s);
    mem_entry_t *snap;
    size_t n = m->liveness.len;
    int rc;
    if (cb == NULL)
        return SL_EINVAL;
    if ((rc = table_snapshot(&m->liveness, &snap)) != 0)
        return rc;
    for (size_t i = 0; i < n && rc == 0; i++)
        rc = cb(arg, snap[i].key, (int)snap[i].value);
    free(snap);
    return rc;
}

/* ---- changefeeds ----------------------------------------------------------------------- */

static int mem_save_changefeed(sl_store_t *s, const char *changefeed, uint32_t table_count)
{
    mem_store_t *m = mem_of(s);
    if (!key_valid(changefeed))
        return SL_EINVAL;
    if (m->fail_writes)
        return SL_EIO;
    return table_put(&m->changefeeds, changefeed, table_count);
}

static int mem_delete_changefeed(sl_store_t *s, const char *changefeed)
{
    mem_store_t *m = mem_of(s);
    if (!key_valid(changefeed))
        return SL_EINVAL;
    if (m->fail_writes)
        return SL_EIO;
    table_del(&m->changefeeds, changefeed);
    return 0;
}

static int mem_list_changefeeds(sl_store_t *s, sl_store_changefeed_cb cb, void *arg)
{
    mem_store_t *m = mem_of(s);
    mem_entry_t *snap;
    size_t n = m->changefeeds.len;
    int rc;
    if (cb == NULL)
        return SL_EINVAL;
    if ((rc = table_snapshot(&m->changefeeds, &snap)) != 0)
        return rc;
    for (size_t i = 0; i < n && rc == 0; i++)
        rc = cb(arg, snap[i].key, (uint32_t)snap[i].value);
    free(snap);
    return rc;
}

static void mem_destroy(sl_store_t *s)
{
    mem_store_t *m = mem_of(s);
    free(m->liveness.items);
    free(m->changefeeds.items);
    free(m);
}

static const struct sl_store_ops mem_ops = {
    .save_drain = mem_save_drain,
    .load_drain = mem_load_drain,
    .save_liveness = mem_save_liveness,
    .delete_liveness = mem_delete_liveness,
    .list_liveness = mem_list_liveness,
    .save_changefeed = mem_save_changefeed,
    .delete_changefeed = mem_delete_changefeed,
    .list_changefeeds = mem_list_changefeeds,
    .destroy = mem_destroy,
};

int sl_store_mem_new(sl_store_t **out)
{
    mem_store_t *m;
    if (out == NULL)
        return SL_EINVAL;
    *out = NULL;
    m = calloc(1, sizeof *m);
    if (m == NULL)
        return SL_ENOMEM;
    m->base.ops = &mem_ops;
    *out = &m->base;
    return 0;
}

void sl_store_mem_fail_writes(sl_store_t *s, int fail)
{
    if (s != NULL && s->ops == &mem_ops)
        mem_of(s)->fail_writes = fail != 0;
}
