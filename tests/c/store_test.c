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

#include <sqlite3.h>

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


/* ---- SQLite store ---------------------------------------------------------------------- */

static char tmpdir[] = "/tmp/sluice-store-test-XXXXXX";

static void db_path(char *buf, size_t len, const char *name)
{
    snprintf(buf, len, "%s/%s", tmpdir, name);
}

#define SEEN_MAX 100000
typedef struct {
    unsigned char bits[SEEN_MAX];
    int n;
} seen_t;

/* Marks "cf-NNNNNN" whose table count is NNNNNN (the crash child writes them so). */
static int mark_changefeed(void *arg, const char *cf, uint32_t table_count)
{
    seen_t *seen = arg;
    unsigned idx;
    if (sscanf(cf, "cf-%u", &idx) == 1 && idx == table_count && idx < SEEN_MAX)
        seen->bits[idx] = 1;
    seen->n++;
    return 0;
}

static void test_sqlite_contract(void)
{
    const char *kind = "sqlite";
    char path[256], err[SL_ERRMSG_MAX];
    sl_store_t *s = NULL;
    db_path(path, sizeof path, "contract.db");
    int rc = sl_store_sqlite_open(path, &s, err, sizeof err);
    TAP_CHECK(rc == 0 && s != NULL, "sqlite: created");
    if (rc != 0) {
        printf("# %s\n", err);
        return;
    }
    test_contract(kind, s);
    sl_store_free(s);
}

static void test_sqlite_reopen(void)
{
    const char *kind = "sqlite reopen";
    char path[256], err[SL_ERRMSG_MAX];
    sl_store_t *s = NULL;
    db_path(path, sizeof path, "reopen.db");
    if (sl_store_sqlite_open(path, &s, err, sizeof err) != 0) {
        TAP_CHECK(0, "sqlite reopen: open");
        printf("# %s\n", err);
        return;
    }
    sl_drain_record_t rec = {.target = "n3", .epoch = 42, .started_at_ms = 123456789012ULL,
                             .initial_maintainers = 11, .initial_dispatchers = 222};
    int ok = s->ops->save_drain(s, &rec) == 0 && s->ops->save_liveness(s, "n3", 1) == 0 &&
             s->ops->save_liveness(s, "n1", 0) == 0 && s->ops->save_liveness(s, "n2", 2) == 0 &&
             s->ops->save_changefeed(s, "cf1", 16) == 0 &&
             s->ops->save_changefeed(s, "cf2", 32) == 0 &&
             s->ops->delete_liveness(s, "n2") == 0;
    CHECK(ok, "writes before close");
    sl_store_free(s);
    s = NULL;

    /* WAL is a property of the file: another connection sees it. */
    sqlite3 *raw = NULL;
    sqlite3_stmt *st = NULL;
    int wal = sqlite3_open(path, &raw) == SQLITE_OK &&
              sqlite3_prepare_v2(raw, "PRAGMA journal_mode", -1, &st, NULL) == SQLITE_OK &&
              sqlite3_step(st) == SQLITE_ROW &&
              strcmp((const char *)sqlite3_column_text(st, 0), "wal") == 0;
    sqlite3_finalize(st);
    sqlite3_close(raw);
    CHECK(wal, "A6: the database is in WAL mode");

    if (sl_store_sqlite_open(path, &s, err, sizeof err) != 0) {
        TAP_CHECK(0, "sqlite reopen: reopen");
        printf("# %s\n", err);
        return;
    }
    sl_drain_record_t got;
    CHECK(s->ops->load_drain(s, &got) == 0 && strcmp(got.target, "n3") == 0 && got.epoch == 42 &&
              got.started_at_ms == 123456789012ULL && got.initial_maintainers == 11 &&
              got.initial_dispatchers == 222,
          "D4: the drain record survives close and reopen");
    collect_t c;
    memset(&c, 0, sizeof c);
    CHECK(s->ops->list_liveness(s, collect_liveness, &c) == 0 && c.n == 2 &&
              strcmp(c.keys[0], "n1") == 0 && c.values[0] == 0 && strcmp(c.keys[1], "n3") == 0 &&
              c.values[1] == 1,
          "D4: liveness survives (and the deleted node stays deleted)");
    memset(&c, 0, sizeof c);
    CHECK(s->ops->list_changefeeds(s, collect_changefeed, &c) == 0 && c.n == 2 &&
              c.values[0] == 16 && c.values[1] == 32,
          "A6: changefeeds survive");
    CHECK(sl_store_sqlite_errmsg(s)[0] == '\0', "no error message after successful calls");
    sl_store_free(s);
}

static int file_is(const char *path, const unsigned char *want, size_t len)
{
    unsigned char buf[8192];
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return 0;
    size_t n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    return n == len && memcmp(buf, want, len) == 0;
}

static void test_sqlite_bad_paths(void)
{
    const char *kind = "sqlite errors";
    char path[256], err[SL_ERRMSG_MAX];
    sl_store_t *s = (sl_store_t *)1;

    db_path(path, sizeof path, "no/such/dir/x.db");
    int rc = sl_store_sqlite_open(path, &s, err, sizeof err);
    printf("# %s\n", err);
    CHECK(rc < 0 && s == NULL && strstr(err, path) != NULL,
          "a path in a missing directory: an error naming the file");

    s = NULL;
    rc = sl_store_sqlite_open(tmpdir, &s, err, sizeof err);
    printf("# %s\n", err);
    CHECK(rc < 0 && s == NULL && strstr(err, tmpdir) != NULL,
          "a directory as the path: an error naming it");

    unsigned char junk[4096];
    for (size_t i = 0; i < sizeof junk; i++)
        junk[i] = (unsigned char)(i * 131u + 7u);
    db_path(path, sizeof path, "corrupt.db");
    FILE *f = fopen(path, "wb");
    fwrite(junk, 1, sizeof junk, f);
    fclose(f);
    rc = sl_store_sqlite_open(path, &s, err, sizeof err);
    printf("# %s\n", err);
    CHECK(rc < 0 && s == NULL && strstr(err, path) != NULL,
          "a corrupt file: an error naming the file");
    CHECK(file_is(path, junk, sizeof junk), "a corrupt file is left as it was");

    /* A database from a newer sluice is refused, not rewritten. */
    db_path(path, sizeof path, "newer.db");
    if (sl_store_sqlite_open(path, &s, err, sizeof err) == 0)
        sl_store_free(s);
    s = NULL;
    sqlite3 *raw = NULL;
    sqlite3_open(path, &raw);
    sqlite3_exec(raw, "UPDATE schema_version SET version = 99", NULL, NULL, NULL);
    sqlite3_close(raw);
    rc = sl_store_sqlite_open(path, &s, err, sizeof err);
    printf("# %s\n", err);
    CHECK(rc < 0 && s == NULL && strstr(err, path) != NULL && strstr(err, "99") != NULL,
          "a newer schema version is refused with both versions named");

    rc = sl_store_sqlite_open("", &s, err, sizeof err);
    CHECK(rc == SL_EINVAL && err[0] != '\0', "an empty path is refused");
}

/* Crash: a child saves records, reports each save that returned over a pipe, and dies
 * (SIGKILL mid-stream, or _exit without closing). Every acknowledged record must be found
 * by the parent afterwards. */
static void crash_child(const char *path, int ackfd, int kill_mode)
{
    char err[SL_ERRMSG_MAX];
    sl_store_t *s = NULL;
    if (sl_store_sqlite_open(path, &s, err, sizeof err) != 0)
        _exit(3);
    sl_drain_record_t rec = {.target = "n2", .epoch = 5, .initial_maintainers = 3};
    if (s->ops->save_drain(s, &rec) != 0 || s->ops->save_liveness(s, "n2", 1) != 0)
        _exit(4);
    for (uint32_t i = 0;; i++) {
        char id[SL_ID_MAX];
        snprintf(id, sizeof id, "cf-%06u", i);
        if (s->ops->save_changefeed(s, id, i) != 0)
            _exit(5);
        if (write(ackfd, &i, sizeof i) != (ssize_t)sizeof i)
            _exit(6);
        if (kill_mode == 1 && i == 149)
            _exit(0); /* no close, no checkpoint */
    }
}

static void test_sqlite_crash(int kill_mode)
{
    const char *kind = kill_mode ? "sqlite _exit" : "sqlite SIGKILL";
    char path[256];
    int fds[2];
    db_path(path, sizeof path, kill_mode ? "exit.db" : "kill.db");
    if (pipe(fds) != 0) {
        CHECK(0, "pipe");
        return;
    }
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        close(fds[0]);
        crash_child(path, fds[1], kill_mode);
        _exit(0);
    }
    close(fds[1]);
    uint32_t acked = 0, v;
    int have = 0;
    while (read(fds[0], &v, sizeof v) == (ssize_t)sizeof v) {
        acked = v;
        have = 1;
        if (kill_mode == 0 && v >= 100) {
            kill(pid, SIGKILL);
            break;
        }
    }
    int status = 0;
    waitpid(pid, &status, 0);
    /* acks written after the last read were also saves that returned: drain them */
    while (read(fds[0], &v, sizeof v) == (ssize_t)sizeof v)
        acked = v;
    close(fds[0]);
    CHECK(have, "the child saved and acknowledged records");
    CHECK(kill_mode ? (WIFEXITED(status) && WEXITSTATUS(status) == 0)
                    : (WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL),
          kill_mode ? "the child _exit()ed without closing" : "the child was SIGKILLed");

    char err[SL_ERRMSG_MAX];
    sl_store_t *s = NULL;
    if (sl_store_sqlite_open(path, &s, err, sizeof err) != 0) {
        CHECK(0, "reopen after the crash");
        printf("# %s\n", err);
        return;
    }
    sl_drain_record_t got;
    CHECK(s->ops->load_drain(s, &got) == 0 && strcmp(got.target, "n2") == 0 && got.epoch == 5,
          "D4: the drain record saved before the crash is there");
    static seen_t seen;
    memset(&seen, 0, sizeof seen);
    s->ops->list_changefeeds(s, mark_changefeed, &seen);
    int missing = 0;
    for (uint32_t i = 0; i <= acked && i < SEEN_MAX; i++)
        missing += !seen.bits[i];
    printf("# acknowledged %u, found %d, missing %d\n", acked + 1, seen.n, missing);
    CHECK(missing == 0, "D4: every changefeed whose save returned survives the crash");
    collect_t c;
    memset(&c, 0, sizeof c);
    CHECK(s->ops->list_liveness(s, collect_liveness, &c) == 0 && c.n == 1 && c.values[0] == 1,
          "D4: liveness saved before the crash is there");
    sl_store_free(s);
}

static void rm_tmpdir(void)
{
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0)
        printf("# could not remove %s\n", tmpdir);
}

int main(void)
{
    test_mem();
    if (mkdtemp(tmpdir) == NULL) {
        TAP_CHECK(0, "mkdtemp");
        return TAP_DONE();
    }
    test_sqlite_contract();
    test_sqlite_reopen();
    test_sqlite_bad_paths();
    test_sqlite_crash(0);
    test_sqlite_crash(1);
    rm_tmpdir();
    return TAP_DONE();
}
