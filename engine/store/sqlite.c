/* sqlite.c — the daemon's store on SQLite (A6, D4): the drain record, node liveness and
 * changefeed definitions in one database file in the data directory.
 *
 * Guarantees: WAL with synchronous=FULL, and every save is its own autocommit statement,
 * so a save that returned 0 is on disk and survives kill -9 or a power cut (D4: the
 * record is persisted before 202 is returned). A schema version table refuses databases
 * written by a newer sluice. Every SQLite return code is checked; a failed write returns
 * SL_EIO and changes nothing (one statement = one transaction). Lists walk a snapshot in
 * key byte order (the same order as the in-memory store). Errors name the file. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sqlite3.h>

#include "store.h"

#define SCHEMA_VERSION 1
#define BUSY_TIMEOUT_MS 5000

enum {
    ST_SAVE_DRAIN,
    ST_LOAD_DRAIN,
    ST_SAVE_LIVENESS,
    ST_DELETE_LIVENESS,
    ST_LIST_LIVENESS,
    ST_SAVE_CHANGEFEED,
    ST_DELETE_CHANGEFEED,
    ST_LIST_CHANGEFEEDS,
    ST_COUNT
};

static const char *const statement_sql[ST_COUNT] = {
    [ST_SAVE_DRAIN] = "INSERT INTO drain(id, target, epoch, started_at_ms, initial_maintainers,"
                      " initial_dispatchers) VALUES (1, ?1, ?2, ?3, ?4, ?5)"
                      " ON CONFLICT(id) DO UPDATE SET target = excluded.target,"
                      " epoch = excluded.epoch, started_at_ms = excluded.started_at_ms,"
                      " initial_maintainers = excluded.initial_maintainers,"
                      " initial_dispatchers = excluded.initial_dispatchers",
    [ST_LOAD_DRAIN] = "SELECT target, epoch, started_at_ms, initial_maintainers,"
                      " initial_dispatchers FROM drain WHERE id = 1",
    [ST_SAVE_LIVENESS] = "INSERT INTO liveness(node, liveness) VALUES (?1, ?2)"
                         " ON CONFLICT(node) DO UPDATE SET liveness = excluded.liveness",
    [ST_DELETE_LIVENESS] = "DELETE FROM liveness WHERE node = ?1",
    [ST_LIST_LIVENESS] = "SELECT node, liveness FROM liveness ORDER BY node",
    [ST_SAVE_CHANGEFEED] = "INSERT INTO changefeeds(id, table_count) VALUES (?1, ?2)"
                           " ON CONFLICT(id) DO UPDATE SET table_count = excluded.table_count",
    [ST_DELETE_CHANGEFEED] = "DELETE FROM changefeeds WHERE id = ?1",
    [ST_LIST_CHANGEFEEDS] = "SELECT id, table_count FROM changefeeds ORDER BY id",
};

static const char schema_sql[] =
    "CREATE TABLE schema_version (version INTEGER NOT NULL);"
    "CREATE TABLE drain ("
    " id INTEGER PRIMARY KEY CHECK (id = 1),"
    " target TEXT NOT NULL,"
    " epoch INTEGER NOT NULL,"
    " started_at_ms INTEGER NOT NULL,"
    " initial_maintainers INTEGER NOT NULL,"
    " initial_dispatchers INTEGER NOT NULL);"
    "CREATE TABLE liveness (node TEXT PRIMARY KEY, liveness INTEGER NOT NULL) WITHOUT ROWID;"
    "CREATE TABLE changefeeds (id TEXT PRIMARY KEY, table_count INTEGER NOT NULL)"
    " WITHOUT ROWID;";

typedef struct {
    sl_store_t base;
    sqlite3 *db;
    sqlite3_stmt *stmt[ST_COUNT];
    char *path;
    char errmsg[SL_ERRMSG_MAX];
} sqlite_store_t;

typedef struct {
    char key[SL_ID_MAX];
    int64_t value;
} row_t;

static const struct sl_store_ops sqlite_ops;

static sqlite_store_t *sq_of(sl_store_t *s)
{
    return (sqlite_store_t *)s;
}

static int key_valid(const char *key)
{
    return key != NULL && key[0] != '\0' && memchr(key, '\0', SL_ID_MAX) != NULL;
}

/* Records "store PATH: WHAT: sqlite's message" and returns SL_EIO. */
static int sq_fail(sqlite_store_t *q, const char *what)
{
    const char *msg = q->db ? sqlite3_errmsg(q->db) : "out of memory";
    int code = q->db ? sqlite3_errcode(q->db) & 0xff : SQLITE_NOMEM;
    const char *hint = "";
    if (code == SQLITE_NOTADB || code == SQLITE_CORRUPT)
        hint = " (not a sluice database, or damaged: move it aside to start afresh)";
    else if (code == SQLITE_READONLY || code == SQLITE_CANTOPEN || code == SQLITE_PERM)
        hint = " (check the permissions of the file and of its directory)";
    else if (code == SQLITE_FULL)
        hint = " (the disk is full)";
    else if (code == SQLITE_BUSY || code == SQLITE_LOCKED)
        hint = " (another process holds the database)";
    snprintf(q->errmsg, sizeof q->errmsg, "store %s: %s: %s%s", q->path, what, msg, hint);
    return SL_EIO;
}

/* Runs a prepared write statement to completion and leaves it reset and unbound. */
static int sq_step_write(sqlite_store_t *q, sqlite3_stmt *st, const char *what)
{
    int rc = sqlite3_step(st);
    int ret = rc == SQLITE_DONE ? 0 : sq_fail(q, what);
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return ret;
}

static int sq_bind_text(sqlite_store_t *q, sqlite3_stmt *st, int i, const char *text)
{
    if (sqlite3_bind_text(st, i, text, -1, SQLITE_TRANSIENT) != SQLITE_OK) {
        sq_fail(q, "bind");
        sqlite3_clear_bindings(st);
        return SL_EIO;
    }
    return 0;
}

static int sq_bind_int(sqlite_store_t *q, sqlite3_stmt *st, int i, int64_t v)
{
    if (sqlite3_bind_int64(st, i, v) != SQLITE_OK) {
        sq_fail(q, "bind");
        sqlite3_clear_bindings(st);
        return SL_EIO;
    }
    return 0;
}

/* ---- drain record ---------------------------------------------------------------------- */

static int sq_save_drain(sl_store_t *s, const sl_drain_record_t *rec)
{
    sqlite_store_t *q = sq_of(s);
    sqlite3_stmt *st = q->stmt[ST_SAVE_DRAIN];
    if (rec == NULL || memchr(rec->target, '\0', SL_ID_MAX) == NULL)
        return SL_EINVAL;
    if (sq_bind_text(q, st, 1, rec->target) || sq_bind_int(q, st, 2, (int64_t)rec->epoch) ||
        sq_bind_int(q, st, 3, (int64_t)rec->started_at_ms) ||
        sq_bind_int(q, st, 4, rec->initial_maintainers) ||
        sq_bind_int(q, st, 5, rec->initial_dispatchers))
        return SL_EIO;
    return sq_step_write(q, st, "save drain record");
}

static int sq_load_drain(sl_store_t *s, sl_drain_record_t *rec)
{
    sqlite_store_t *q = sq_of(s);
    sqlite3_stmt *st = q->stmt[ST_LOAD_DRAIN];
    int ret;
    if (rec == NULL)
        return SL_EINVAL;
    int rc = sqlite3_step(st);
    if (rc == SQLITE_DONE) {
        ret = SL_ENOENT;
    } else if (rc == SQLITE_ROW) {
        const unsigned char *target = sqlite3_column_text(st, 0);
        int len = sqlite3_column_bytes(st, 0);
        if (target == NULL && sqlite3_errcode(q->db) == SQLITE_NOMEM) {
            ret = SL_ENOMEM;
        } else if (len < 0 || len >= SL_ID_MAX) {
            snprintf(q->errmsg, sizeof q->errmsg, "store %s: drain record: target too long",
                     q->path);
            ret = SL_EIO;
        } else {
            memset(rec, 0, sizeof *rec);
            if (target != NULL)
                memcpy(rec->target, target, (size_t)len);
            rec->epoch = (uint64_t)sqlite3_column_int64(st, 1);
            rec->started_at_ms = (uint64_t)sqlite3_column_int64(st, 2);
            rec->initial_maintainers = (uint32_t)sqlite3_column_int64(st, 3);
            rec->initial_dispatchers = (uint32_t)sqlite3_column_int64(st, 4);
            ret = 0;
        }
    } else {
        ret = sq_fail(q, "load drain record");
    }
    sqlite3_reset(st);
    return ret;
}

/* ---- keyed tables ---------------------------------------------------------------------- */

static int sq_save_keyed(sqlite_store_t *q, int which, const char *key, int64_t value,
                         const char *what)
{
    sqlite3_stmt *st = q->stmt[which];
    if (!key_valid(key))
        return SL_EINVAL;
    if (sq_bind_text(q, st, 1, key) || sq_bind_int(q, st, 2, value))
        return SL_EIO;
    return sq_step_write(q, st, what);
}

static int sq_delete_keyed(sqlite_store_t *q, int which, const char *key, const char *what)
{
    sqlite3_stmt *st = q->stmt[which];
    if (!key_valid(key))
        return SL_EINVAL;
    if (sq_bind_text(q, st, 1, key))
        return SL_EIO;
    return sq_step_write(q, st, what);
}

/* Reads a whole (key, value) table into memory first: the statement is reset before any
 * callback runs, so a callback may write to the store or list again. */
static int sq_snapshot(sqlite_store_t *q, int which, const char *what, row_t **out, size_t *n)
{
    sqlite3_stmt *st = q->stmt[which];
    row_t *rows = NULL;
    size_t len = 0, cap = 0;
    int rc, ret = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const unsigned char *key = sqlite3_column_text(st, 0);
        int klen = sqlite3_column_bytes(st, 0);
        if (key == NULL || klen <= 0 || klen >= SL_ID_MAX)
            continue; /* not written by us: skip rather than hand out a truncated id */
        if (len == cap) {
            size_t ncap = cap ? cap * 2 : 32;
            row_t *nrows = realloc(rows, ncap * sizeof *nrows);
            if (nrows == NULL) {
                ret = SL_ENOMEM;
                goto done;
            }
            rows = nrows;
            cap = ncap;
        }
        memcpy(rows[len].key, key, (size_t)klen);
        rows[len].key[klen] = '\0';
        rows[len].value = sqlite3_column_int64(st, 1);
        len++;
    }
    if (rc != SQLITE_DONE)
        ret = sq_fail(q, what);
done:
    sqlite3_reset(st);
    if (ret != 0) {
        free(rows);
        rows = NULL;
        len = 0;
    }
    *out = rows;
    *n = len;
    return ret;
}

static int sq_save_liveness(sl_store_t *s, const char *node, int liveness)
{
    return sq_save_keyed(sq_of(s), ST_SAVE_LIVENESS, node, liveness, "save liveness");
}

static int sq_delete_liveness(sl_store_t *s, const char *node)
{
    return sq_delete_keyed(sq_of(s), ST_DELETE_LIVENESS, node, "delete liveness");
}

static int sq_list_liveness(sl_store_t *s, sl_store_liveness_cb cb, void *arg)
{
    row_t *rows;
    size_t n;
    int rc;
    if (cb == NULL)
        return SL_EINVAL;
    if ((rc = sq_snapshot(sq_of(s), ST_LIST_LIVENESS, "list liveness", &rows, &n)) != 0)
        return rc;
    for (size_t i = 0; i < n && rc == 0; i++)
        rc = cb(arg, rows[i].key, (int)rows[i].value);
    free(rows);
    return rc;
}

static int sq_save_changefeed(sl_store_t *s, const char *changefeed, uint32_t table_count)
{
    return sq_save_keyed(sq_of(s), ST_SAVE_CHANGEFEED, changefeed, table_count,
                         "save changefeed");
}

static int sq_delete_changefeed(sl_store_t *s, const char *changefeed)
{
    return sq_delete_keyed(sq_of(s), ST_DELETE_CHANGEFEED, changefeed, "delete changefeed");
}

static int sq_list_changefeeds(sl_store_t *s, sl_store_changefeed_cb cb, void *arg)
{
    row_t *rows;
    size_t n;
    int rc;
    if (cb == NULL)
        return SL_EINVAL;
    if ((rc = sq_snapshot(sq_of(s), ST_LIST_CHANGEFEEDS, "list changefeeds", &rows, &n)) != 0)
        return rc;
    for (size_t i = 0; i < n && rc == 0; i++)
        rc = cb(arg, rows[i].key, (uint32_t)rows[i].value);
    free(rows);
    return rc;
}

/* ---- open, schema, close --------------------------------------------------------------- */

static void sq_destroy(sl_store_t *s)
{
    sqlite_store_t *q = sq_of(s);
    for (int i = 0; i < ST_COUNT; i++)
        sqlite3_finalize(q->stmt[i]);
    /* With every statement finalized close cannot be refused; WAL is checkpointed here. */
    sqlite3_close(q->db);
    free(q->path);
    free(q);
}

static const struct sl_store_ops sqlite_ops = {
    .save_drain = sq_save_drain,
    .load_drain = sq_load_drain,
    .save_liveness = sq_save_liveness,
    .delete_liveness = sq_delete_liveness,
    .list_liveness = sq_list_liveness,
    .save_changefeed = sq_save_changefeed,
    .delete_changefeed = sq_delete_changefeed,
    .list_changefeeds = sq_list_changefeeds,
    .destroy = sq_destroy,
};

static int sq_exec(sqlite_store_t *q, const char *sql, const char *what)
{
    char *msg = NULL;
    if (sqlite3_exec(q->db, sql, NULL, NULL, &msg) != SQLITE_OK) {
        snprintf(q->errmsg, sizeof q->errmsg, "store %s: %s: %s", q->path, what,
                 msg ? msg : sqlite3_errmsg(q->db));
        sqlite3_free(msg);
        return SL_EIO;
    }
    return 0;
}

/* Runs a one-row, one-text-column pragma and checks its answer. */
static int sq_pragma_expect(sqlite_store_t *q, const char *sql, const char *want, const char *what)
{
    sqlite3_stmt *st = NULL;
    int ret = 0;
    if (sqlite3_prepare_v2(q->db, sql, -1, &st, NULL) != SQLITE_OK)
        return sq_fail(q, what);
    int rc = sqlite3_step(st);
    if (rc != SQLITE_ROW) {
        ret = sq_fail(q, what);
    } else {
        const unsigned char *got = sqlite3_column_text(st, 0);
        if (got == NULL || strcmp((const char *)got, want) != 0) {
            snprintf(q->errmsg, sizeof q->errmsg, "store %s: %s: got \"%s\", want \"%s\"",
                     q->path, what, got ? (const char *)got : "", want);
            ret = SL_EIO;
        }
    }
    sqlite3_finalize(st);
    return ret;
}

/* Creates the schema on an empty database, or checks the version of an existing one. */
static int sq_schema(sqlite_store_t *q)
{
    sqlite3_stmt *st = NULL;
    int ret = 0, rc;

    if ((ret = sq_exec(q, "BEGIN IMMEDIATE", "begin schema transaction")) != 0)
        return ret;
    rc = sqlite3_prepare_v2(q->db,
                            "SELECT count(*) FROM sqlite_master WHERE type = 'table'"
                            " AND name = 'schema_version'",
                            -1, &st, NULL);
    if (rc != SQLITE_OK || sqlite3_step(st) != SQLITE_ROW) {
        ret = sq_fail(q, "read schema");
        goto fail;
    }
    int has_version = sqlite3_column_int(st, 0) > 0;
    sqlite3_finalize(st);
    st = NULL;

    if (!has_version) {
        if ((ret = sq_exec(q, schema_sql, "create schema")) != 0)
            goto fail;
        char sql[80];
        snprintf(sql, sizeof sql, "INSERT INTO schema_version(version) VALUES (%d)",
                 SCHEMA_VERSION);
        if ((ret = sq_exec(q, sql, "write schema version")) != 0)
            goto fail;
    } else {
        rc = sqlite3_prepare_v2(q->db, "SELECT max(version) FROM schema_version", -1, &st, NULL);
        if (rc != SQLITE_OK || sqlite3_step(st) != SQLITE_ROW) {
            ret = sq_fail(q, "read schema version");
            goto fail;
        }
        int version = sqlite3_column_int(st, 0);
        if (version != SCHEMA_VERSION) {
            snprintf(q->errmsg, sizeof q->errmsg,
                     "store %s: schema version %d, this sluice reads version %d", q->path,
                     version, SCHEMA_VERSION);
            ret = SL_EIO;
            goto fail;
        }
        sqlite3_finalize(st);
        st = NULL;
    }
    return sq_exec(q, "COMMIT", "commit schema");

fail:
    sqlite3_finalize(st);
    sqlite3_exec(q->db, "ROLLBACK", NULL, NULL, NULL);
    return ret;
}

int sl_store_sqlite_open(const char *path, sl_store_t **out, char *err, size_t errlen)
{
    sqlite_store_t *q = NULL;
    int ret;

    if (err != NULL && errlen > 0)
        err[0] = '\0';
    if (out == NULL || path == NULL || path[0] == '\0') {
        if (err != NULL && errlen > 0)
            snprintf(err, errlen, "store: no database path given");
        return SL_EINVAL;
    }
    *out = NULL;
    q = calloc(1, sizeof *q);
    if (q == NULL || (q->path = strdup(path)) == NULL) {
        ret = SL_ENOMEM;
        if (err != NULL && errlen > 0)
            snprintf(err, errlen, "store %s: out of memory", path);
        goto fail;
    }
    q->base.ops = &sqlite_ops;

    int rc = sqlite3_open_v2(path, &q->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL);
    if (rc != SQLITE_OK) {
        int sys = q->db ? sqlite3_system_errno(q->db) : 0;
        snprintf(q->errmsg, sizeof q->errmsg, "store %s: cannot open: %s%s%s", path,
                 q->db ? sqlite3_errmsg(q->db) : "out of memory", sys ? ": " : "",
                 sys ? strerror(sys) : "");
        ret = rc == SQLITE_NOMEM ? SL_ENOMEM : SL_EIO;
        goto fail;
    }
    sqlite3_extended_result_codes(q->db, 1);
    if (sqlite3_busy_timeout(q->db, BUSY_TIMEOUT_MS) != SQLITE_OK) {
        ret = sq_fail(q, "set busy timeout");
        goto fail;
    }
    /* The first statement that reads the file finds out whether it is a database. */
    if ((ret = sq_pragma_expect(q, "PRAGMA journal_mode=WAL", "wal", "set WAL journal")) != 0)
        goto fail;
    if ((ret = sq_exec(q, "PRAGMA synchronous=FULL", "set synchronous=FULL")) != 0)
        goto fail;
    if ((ret = sq_pragma_expect(q, "PRAGMA synchronous", "2", "check synchronous=FULL")) != 0)
        goto fail;
    if ((ret = sq_schema(q)) != 0)
        goto fail;
    for (int i = 0; i < ST_COUNT; i++) {
        if (sqlite3_prepare_v3(q->db, statement_sql[i], -1, SQLITE_PREPARE_PERSISTENT,
                               &q->stmt[i], NULL) != SQLITE_OK) {
            ret = sq_fail(q, "prepare statements (schema damaged?)");
            goto fail;
        }
    }
    *out = &q->base;
    return 0;

fail:
    if (q != NULL) {
        if (err != NULL && errlen > 0 && q->errmsg[0] != '\0')
            snprintf(err, errlen, "%s", q->errmsg);
        for (int i = 0; i < ST_COUNT; i++)
            sqlite3_finalize(q->stmt[i]);
        sqlite3_close(q->db);
        free(q->path);
        free(q);
    }
    return ret;
}

const char *sl_store_sqlite_errmsg(sl_store_t *s)
{
    if (s == NULL || s->ops != &sqlite_ops)
        return "";
    return sq_of(s)->errmsg;
}
