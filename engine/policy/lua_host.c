/* lua_host.c — the Lua 5.4 policy host behind `struct sl_policy_ops` (P1–P3).
 *
 * Guarantees:
 *  - P1: a policy file is a text chunk returning {name=, place=, [drain_order=],
 *    [selftest=]}; the contract is checked and selftest must return true before a policy
 *    exists. `place` is called once per batch with the whole batch.
 *  - P2: each policy runs in its own sandbox (sandbox.c): memory cap, time and
 *    instruction budget per call (load and selftest get the load budget), whitelisted
 *    environment. Everything that touches the state runs under lua_pcall, so a memory
 *    error while building the arguments is an error too, never a panic.
 *  - P3 (the policy's half): the answer is checked for shape: not a table fails the call;
 *    a value that is not a string becomes a per-task error; an answer for a task that was
 *    not asked for is counted in report->unasked. Node ids are checked by the core.
 *  - the node ids handed back are the policy's own strings, valid until the next call on
 *    the policy: the registry holds the answer table until then.
 *  - B1 (speed): arguments are built with pre-pushed keys and repeated values pushed once,
 *    with the collector paused (no policy code runs meanwhile); the answer is read in one
 *    pass, its keys found by the address of the id strings the policy was given.
 *  - place_columns (optional, B1): when defined it is called instead of `place`, with the
 *    batch as one array per field (only the fields named in `columns`) and no table per
 *    task; its answer is read by position (or by task id), with the same checks. A table
 *    per task and an id-keyed answer cost ~1 µs per task, ten times the C policy.
 *  - drain_order: the answer must be an array of distinct task ids of the batch; any
 *    other entry fails the call (SL_EPOLICY) and the core keeps its default order.
 *  - a load error names the file and the line when Lua gives one ("policy FILE:LINE: …");
 *    a call's report message carries the file and line ("FILE:LINE: …") but not the
 *    policy's name, and a per-task error names neither policy nor task: the caller adds
 *    that frame once (the core's refusals; sl_policy_message for everyone else).
 */
#include <errno.h>
#include <lauxlib.h>
#include <lua.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "policy.h"
#include "sandbox.h"
#include "source.h"

#define HOST_SHORTSTR 40           /* Lua 5.4 interns strings up to this length (LUAI_MAXSHORTLEN) */

/* Error messages handed back to the core live in blocks that never move until the next
 * call. Node ids are not copied: they are the policy's own strings, kept alive by the
 * answer table, which the registry holds until the next call. */
typedef struct arena_block {
    struct arena_block *next;
    size_t used, cap;
    char data[];
} arena_block_t;

/* The Lua string pushed as a task's id, by address. */
typedef struct {
    const char *str;
    uint32_t task; /* the first task with this id */
    uint32_t gen;  /* the slot is in use when gen is the call's idgen */
} idslot_t;

typedef struct {
    sl_policy_t base;
    sl_sandbox_t sb;
    int ref_place;
    int ref_drain;
    int ref_columns; /* place_columns, LUA_NOREF when the policy defines none */
    unsigned col_mask; /* the columns place_columns asked for (1 << COL_*) */
    int force_tables;  /* call place even when place_columns exists (policy check) */
    uint32_t call_budget_ms;
    uint32_t load_budget_ms;
    arena_block_t *arena;
    uint32_t *slots; /* open addressing: task index + 1, 0 = empty */
    size_t nslots;
    /* Reused from call to call. idmap finds a task by the address of the id string it was
     * given (the answer's keys are mostly those very strings); same_id[i] is the next task
     * with the same id as task i, index + 1, 0 = none. */
    idslot_t *idmap;
    size_t nidmap;
    uint32_t idgen;
    uint32_t *same_id;
    size_t nsame;
} lua_policy_t;

typedef struct {
    lua_policy_t *lp;
    const sl_place_task_t *tasks;
    size_t ntasks;
    const sl_place_node_t *nodes;
    size_t nnodes;
    const sl_place_ctx_t *ctx;
    sl_decision_t *out;
    uint32_t *order;
    size_t *norder;
    sl_place_report_t *report;
    char err[SL_ERRMSG_MAX]; /* a shape error found by C, without a Lua error */
    int oom;
    int gc_stopped; /* the collector was stopped while the arguments were built */
    size_t nlong;   /* task ids too long to be interned */
    size_t dups;    /* tasks whose id an earlier task of the batch has too */
    const char *fn; /* the policy function called: "place" or "place_columns" */
} call_t;

/* ---- small helpers ------------------------------------------------------------------- */

static void arena_reset(lua_policy_t *lp)
{
    arena_block_t *b = lp->arena;
    while (b != NULL) {
        arena_block_t *next = b->next;
        free(b);
        b = next;
    }
    lp->arena = NULL;
}

static const char *arena_copy(lua_policy_t *lp, const char *s, size_t len)
{
    arena_block_t *b = lp->arena;
    if (b == NULL || b->cap - b->used < len + 1) {
        size_t cap = len + 1 > 65536 ? len + 1 : 65536;
        b = malloc(sizeof *b + cap);
        if (b == NULL)
            return NULL;
        b->next = lp->arena;
        b->used = 0;
        b->cap = cap;
        lp->arena = b;
    }
    char *dst = b->data + b->used;
    memcpy(dst, s, len);
    dst[len] = '\0';
    b->used += len + 1;
    return dst;
}

/* A printable, bounded rendering of an id that came from the policy. */
static void quote_id(char *dst, size_t dstlen, const char *s, size_t len)
{
    size_t k = 0;
    for (size_t i = 0; i < len && k + 4 < dstlen; i++) {
        unsigned char c = (unsigned char)s[i];
        dst[k++] = c < 0x20 || c == 0x7f || c == '"' ? '?' : (char)c;
    }
    if (len > 0 && k + 4 >= dstlen && k >= 3)
        memcpy(dst + k - 3, "...", 3);
    dst[k] = '\0';
}

static uint64_t hash_bytes(const char *s, size_t len)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ull;
    }
    return h;
}

static int index_tasks(lua_policy_t *lp, const sl_place_task_t *tasks, size_t ntasks)
{
    size_t want = 16;
    while (want < ntasks * 2)
        want *= 2;
    if (want > lp->nslots) {
        uint32_t *slots = realloc(lp->slots, want * sizeof *slots);
        if (slots == NULL)
            return SL_ENOMEM;
        lp->slots = slots;
        lp->nslots = want;
    }
    memset(lp->slots, 0, lp->nslots * sizeof *lp->slots);
    size_t mask = lp->nslots - 1;
    for (size_t i = 0; i < ntasks; i++) {
        const char *id = tasks[i].id;
        size_t len = strlen(id);
        size_t h = (size_t)hash_bytes(id, len) & mask;
        while (lp->slots[h] != 0) {
            if (strcmp(tasks[lp->slots[h] - 1].id, id) == 0)
                break; /* duplicate id: the first one answers for both */
            h = (h + 1) & mask;
        }
        if (lp->slots[h] == 0)
            lp->slots[h] = (uint32_t)(i + 1);
    }
    return 0;
}

/* Index of the task with this id, or -1. */
static long find_task(const lua_policy_t *lp, const sl_place_task_t *tasks, const char *s,
                      size_t len)
{
    size_t mask = lp->nslots - 1;
    size_t h = (size_t)hash_bytes(s, len) & mask;
    while (lp->slots[h] != 0) {
        const char *id = tasks[lp->slots[h] - 1].id;
        if (strncmp(id, s, len) == 0 && id[len] == '\0')
            return (long)lp->slots[h] - 1;
        h = (h + 1) & mask;
    }
    return -1;
}

/* Room for the id map and the same-id chains of a batch of ntasks; before the call, so the
 * call itself never allocates on the C side for them. */
static int reserve_ids(lua_policy_t *lp, size_t ntasks)
{
    size_t want = 16;
    while (want < ntasks * 2)
        want *= 2;
    if (want > lp->nidmap) {
        idslot_t *map = calloc(want, sizeof *map);
        if (map == NULL)
            return SL_ENOMEM;
        free(lp->idmap);
        lp->idmap = map;
        lp->nidmap = want;
        lp->idgen = 0;
    }
    if (ntasks > lp->nsame) {
        uint32_t *same = realloc(lp->same_id, ntasks * sizeof *same);
        if (same == NULL)
            return SL_ENOMEM;
        lp->same_id = same;
        lp->nsame = ntasks;
    }
    /* a new generation empties the map without touching it */
    if (++lp->idgen == 0) {
        memset(lp->idmap, 0, lp->nidmap * sizeof *lp->idmap);
        lp->idgen = 1;
    }
    return 0;
}

static size_t hash_ptr(const char *s)
{
    uint64_t h = (uint64_t)(uintptr_t)s * 0x9e3779b97f4a7c15ull;
    return (size_t)(h >> 32);
}

/* Puts task i after task `head` in head's chain of tasks with the same id. */
static void same_id_link(lua_policy_t *lp, uint32_t head, uint32_t i)
{
    lp->same_id[i] = lp->same_id[head];
    lp->same_id[head] = i + 1;
}

/* Task i was given the Lua string at address s as its id. Returns 1 when an earlier task
 * has the same string. */
static int id_note(lua_policy_t *lp, const char *s, uint32_t i)
{
    size_t mask = lp->nidmap - 1;
    lp->same_id[i] = 0;
    for (size_t h = hash_ptr(s) & mask;; h = (h + 1) & mask) {
        idslot_t *e = &lp->idmap[h];
        if (e->gen != lp->idgen) {
            *e = (idslot_t){.str = s, .task = i, .gen = lp->idgen};
            return 0;
        }
        if (e->str == s) { /* the same interned string: a duplicate id */
            same_id_link(lp, e->task, i);
            return 1;
        }
    }
}

/* The first task given the Lua string at address s, or -1. */
static long id_find(const lua_policy_t *lp, const char *s)
{
    size_t mask = lp->nidmap - 1;
    for (size_t h = hash_ptr(s) & mask;; h = (h + 1) & mask) {
        const idslot_t *e = &lp->idmap[h];
        if (e->gen != lp->idgen)
            return -1;
        if (e->str == s)
            return (long)e->task;
    }
}

/* The address of the id string task i was given (ids[i + 1]). */
static const char *id_string(lua_State *L, int ids, size_t i)
{
    lua_rawgeti(L, ids, (lua_Integer)i + 1);
    const char *s = lua_tostring(L, -1); /* anchored by ids */
    lua_pop(L, 1);
    return s;
}

/* Long ids are not interned: an id pushed twice is two strings. Chains them by content,
 * so either string finds every task with that id; *dups counts the tasks chained. */
static int link_long_ids(lua_State *L, int ids, lua_policy_t *lp,
                         const sl_place_task_t *tasks, size_t ntasks, size_t *dups)
{
    if (index_tasks(lp, tasks, ntasks) != 0)
        return SL_ENOMEM;
    size_t mask = lp->nidmap - 1;
    for (size_t i = 0; i < ntasks; i++) {
        size_t len = strlen(tasks[i].id);
        if (len <= HOST_SHORTSTR)
            continue;
        long first = find_task(lp, tasks, tasks[i].id, len);
        if (first < 0 || (size_t)first == i)
            continue;
        const char *s = id_string(L, ids, i);
        if (s == id_string(L, ids, (size_t)first))
            continue; /* interned after all: id_note chained them already */
        for (size_t h = hash_ptr(s) & mask;; h = (h + 1) & mask) {
            idslot_t *e = &lp->idmap[h];
            if (e->gen == lp->idgen && e->str == s) {
                e->task = (uint32_t)first;
                break;
            }
        }
        same_id_link(lp, (uint32_t)first, (uint32_t)i);
        (*dups)++;
    }
    return 0;
}

/* Two forms. While loading (load != 0; the policy has no name yet), a message for the
 * caller's last_error: a Lua message "src:LINE: text" becomes "policy <file>:LINE: text",
 * one without a position "policy <file>: text". For a call (load == 0), a report message
 * (policy.h): "<file>:LINE: text" or "text", not naming the policy — whoever shows it
 * does, once (the core's refusals, sl_policy_message). Lua's own "src" is short_src,
 * which cuts long paths; the file is always written whole. */
static void format_error(char *dst, size_t dstlen, int load, const char *file, const char *msg)
{
    const char *p = msg;
    const char *nl = strchr(msg, '\n');
    for (; *p != '\0' && (nl == NULL || p < nl) && p - msg < 120; p++) {
        if (p[0] != ':' || p[1] < '0' || p[1] > '9')
            continue;
        const char *q = p + 1;
        long line = 0;
        while (*q >= '0' && *q <= '9' && line < 100000000)
            line = line * 10 + (*q++ - '0');
        if (*q == ':') {
            q++;
            if (*q == ' ')
                q++;
            snprintf(dst, dstlen, "%s%s:%ld: %s", load ? "policy " : "", file, line, q);
            return;
        }
    }
    snprintf(dst, dstlen, "%s%s%s%s", load ? "policy " : "", load ? file : "", load ? ": " : "",
             msg);
}

/* The message of a failed lua_pcall, and pops it. */
static void pcall_message(lua_policy_t *lp, int status, char *dst, size_t dstlen, int load)
{
    lua_State *L = lp->sb.L;
    const char *msg = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
    char buf[SL_ERRMSG_MAX];
    if (status == LUA_ERRMEM || (status == LUA_ERRERR && lp->sb.mem_refused)) {
        snprintf(buf, sizeof buf, "not enough memory: over the cap of %zu bytes", lp->sb.mem_cap);
        msg = buf;
    } else if (msg == NULL) {
        msg = "unknown error";
    }
    format_error(dst, dstlen, load, lp->base.file, msg);
    lua_pop(L, 1);
}

/* Runs fn(call) protected, with the traceback handler. */
static int host_run(lua_policy_t *lp, lua_CFunction fn, call_t *call)
{
    lua_State *L = lp->sb.L;
    lua_settop(L, 0);
    lua_pushcfunction(L, sl_policy_sandbox_msghandler);
    lua_pushcfunction(L, fn);
    lua_pushlightuserdata(L, call);
    int status = lua_pcall(L, 1, 0, 1);
    sl_policy_sandbox_disarm(&lp->sb);
    if (call->gc_stopped) { /* an error while the arguments were built */
        lua_gc(L, LUA_GCRESTART);
        call->gc_stopped = 0;
    }
    return status;
}

/* ---- arguments (P1) ---------------------------------------------------------------- */

enum { K_ID = 1, K_KIND, K_CHANGEFEED, K_FROM, K_WEIGHT, K_MAINTAINER, K_DISPATCHER,
       K_MAINTAINERS, K_DISPATCHERS, K_INFLIGHT, K_LABELS, K_COUNT };

static void push_keys(lua_State *L)
{
    static const char *const keys[K_COUNT] = {
        NULL, "id", "kind", "changefeed", "from", "weight", "maintainer", "dispatcher",
        "maintainers", "dispatchers", "inflight", "labels",
    };
    luaL_checkstack(L, K_COUNT + 16, "policy arguments");
    for (int k = 1; k < K_COUNT; k++)
        lua_pushstring(L, keys[k]);
}

/* Keys are at stack slots base+K_*-1. */
static void set_str(lua_State *L, int base, int key, int tbl, const char *v)
{
    lua_pushvalue(L, base + key - 1);
    lua_pushstring(L, v);
    lua_rawset(L, tbl);
}

static void set_int(lua_State *L, int base, int key, int tbl, lua_Integer v)
{
    lua_pushvalue(L, base + key - 1);
    lua_pushinteger(L, v);
    lua_rawset(L, tbl);
}

/* The tasks array; when ids > 0, ids[i] = the task's id string as well, which keeps it
 * alive until the answer is read, and the id map learns its address, so answers are found
 * by the very strings the policy saw. Repeated strings (a maintainer's changefeed is its
 * id; the drain target is every task's `from`) are pushed once. */
static void push_tasks(lua_State *L, int base, call_t *c, int ids)
{
    const sl_place_task_t *tasks = c->tasks;
    size_t ntasks = c->ntasks;
    lua_pushnil(L); /* slot of the last `from` string */
    int from_slot = lua_gettop(L);
    const char *last_from = NULL;
    lua_createtable(L, ntasks > INT32_MAX ? INT32_MAX : (int)ntasks, 0);
    int arr = lua_gettop(L);
    for (size_t i = 0; i < ntasks; i++) {
        const sl_place_task_t *t = &tasks[i];
        size_t len = strlen(t->id);
        const char *s = lua_pushlstring(L, t->id, len);
        int idv = lua_gettop(L);
        if (ids > 0) {
            lua_pushvalue(L, idv);
            lua_rawseti(L, ids, (lua_Integer)i + 1);
            c->dups += (size_t)id_note(c->lp, s, (uint32_t)i);
            c->nlong += len > HOST_SHORTSTR;
        }
        lua_createtable(L, 0, t->from != NULL ? 5 : 4);
        int tt = lua_gettop(L);
        lua_pushvalue(L, base + K_ID - 1);
        lua_pushvalue(L, idv);
        lua_rawset(L, tt);
        lua_pushvalue(L, base + K_KIND - 1);
        lua_pushvalue(L, base + (t->kind == SL_TASK_DISPATCHER ? K_DISPATCHER : K_MAINTAINER) - 1);
        lua_rawset(L, tt);
        lua_pushvalue(L, base + K_CHANGEFEED - 1);
        if (t->changefeed == NULL || t->changefeed == t->id || strcmp(t->changefeed, t->id) == 0)
            lua_pushvalue(L, idv);
        else
            lua_pushstring(L, t->changefeed);
        lua_rawset(L, tt);
        if (t->from != NULL) {
            if (t->from != last_from) {
                lua_pushstring(L, t->from);
                lua_replace(L, from_slot);
                last_from = t->from;
            }
            lua_pushvalue(L, base + K_FROM - 1);
            lua_pushvalue(L, from_slot);
            lua_rawset(L, tt);
        }
        set_int(L, base, K_WEIGHT, tt, t->weight);
        lua_rawseti(L, arr, (lua_Integer)i + 1);
        lua_pop(L, 1); /* idv */
    }
    lua_remove(L, from_slot);
}

static void push_nodes(lua_State *L, int base, const sl_place_node_t *nodes, size_t nnodes)
{
    lua_createtable(L, nnodes > INT32_MAX ? INT32_MAX : (int)nnodes, 0);
    int arr = lua_gettop(L);
    for (size_t i = 0; i < nnodes; i++) {
        const sl_place_node_t *n = &nodes[i];
        lua_createtable(L, 0, 5);
        int nt = lua_gettop(L);
        set_str(L, base, K_ID, nt, n->id);
        set_int(L, base, K_MAINTAINERS, nt, n->maintainers);
        set_int(L, base, K_DISPATCHERS, nt, n->dispatchers);
        set_int(L, base, K_INFLIGHT, nt, n->inflight);
        lua_pushvalue(L, base + K_LABELS - 1);
        lua_createtable(L, 0, n->nlabels > 64 ? 64 : (int)n->nlabels);
        for (size_t k = 0; k < n->nlabels; k++) {
            if (n->labels[k].key == NULL || n->labels[k].value == NULL)
                continue;
            lua_pushstring(L, n->labels[k].value);
            lua_setfield(L, -2, n->labels[k].key);
        }
        lua_rawset(L, nt);
        lua_rawseti(L, arr, (lua_Integer)i + 1);
    }
}

static void push_ctx(lua_State *L, const sl_place_ctx_t *ctx)
{
    static const char *const reasons[] = {"basic", "drain", "balance"};
    lua_createtable(L, 0, 4);
    if (ctx == NULL)
        return;
    lua_pushstring(L, (unsigned)ctx->reason < 3 ? reasons[ctx->reason] : "basic");
    lua_setfield(L, -2, "reason");
    if (ctx->drain_target != NULL) {
        lua_pushstring(L, ctx->drain_target);
        lua_setfield(L, -2, "drain_target");
    }
    lua_pushinteger(L, ctx->batch_limit);
    lua_setfield(L, -2, "batch_limit");
    lua_pushinteger(L, (lua_Integer)(ctx->now_ms > (uint64_t)LUA_MAXINTEGER ? (uint64_t)LUA_MAXINTEGER
                                                                            : ctx->now_ms));
    lua_setfield(L, -2, "now_ms");
}

/* ---- place ---------------------------------------------------------------------------- */

static void note_unasked(call_t *c, const char *what)
{
    c->report->unasked++;
    if (c->report->unasked == 1) {
        char msg[SL_ERRMSG_MAX];
        snprintf(msg, sizeof msg, "%s answered %s, which was not asked for",
                 c->fn != NULL ? c->fn : "place", what);
        format_error(c->report->message, sizeof c->report->message, 0, c->lp->base.file, msg);
    }
}

static void decide(call_t *c, size_t i, lua_State *L)
{
    lua_policy_t *lp = c->lp;
    int vt = lua_type(L, -1);
    char msg[96];
    /* the message names neither the policy nor the task: the caller does (policy.h) */
    if (vt == LUA_TSTRING) {
        size_t len;
        const char *s = lua_tolstring(L, -1, &len);
        if (len < SL_ID_MAX && memchr(s, '\0', len) == NULL) {
            c->out[i].node = s; /* the answer table, anchored, keeps it */
            return;
        }
        snprintf(msg, sizeof msg, "node id of %zu bytes is not a node id", len);
    } else {
        snprintf(msg, sizeof msg, "expected a node id (string), got %s", lua_typename(L, vt));
    }
    c->out[i].error = arena_copy(lp, msg, strlen(msg));
    if (c->out[i].error == NULL)
        c->oom = 1;
}

/* The task an answer's key names, or -1: by address first (the policy keyed its answer
 * with the id string it was given), then by content (a string it built itself). */
static long answer_task(call_t *c, lua_State *L, int *indexed)
{
    lua_policy_t *lp = c->lp;
    size_t len;
    const char *key = lua_tolstring(L, -2, &len);
    long i = id_find(lp, key);
    if (i >= 0)
        return i;
    if (!*indexed) {
        if (index_tasks(lp, c->tasks, c->ntasks) != 0) {
            c->oom = 1;
            return -1;
        }
        *indexed = 1;
    }
    return find_task(lp, c->tasks, key, len);
}

/* Drops what the previous call handed out (P1: valid until the next call). */
static void forget_answer(lua_State *L, lua_policy_t *lp)
{
    lua_pushnil(L);
    lua_rawsetp(L, LUA_REGISTRYINDEX, lp);
}

/* The batch as columns for place_columns: {n=, id={}, kind={}, changefeed={}, from={},
 * weight={}}, one array per field and no table per task; only the columns the policy
 * named in `columns` (all when it named none). A string that repeats (a maintainer's
 * changefeed is its id, the drain target is every task's `from`) is pushed once. */
enum { COL_ID, COL_KIND, COL_CHANGEFEED, COL_FROM, COL_WEIGHT, COL_COUNT };
static const char *const col_names[COL_COUNT] = {"id", "kind", "changefeed", "from", "weight"};
#define COL_ALL ((1u << COL_COUNT) - 1)

static void push_columns(lua_State *L, int base, const call_t *c, unsigned mask)
{
    int n = c->ntasks > INT32_MAX ? INT32_MAX : (int)c->ntasks;
    lua_createtable(L, 0, COL_COUNT + 1);
    int batch = lua_gettop(L);
    lua_pushinteger(L, n);
    lua_setfield(L, batch, "n");
    int col[COL_COUNT];
    for (int k = 0; k < COL_COUNT; k++) {
        col[k] = 0;
        if (!(mask & (1u << k)))
            continue;
        lua_createtable(L, k == COL_FROM && n > 0 && c->tasks[0].from == NULL ? 0 : n, 0);
        lua_pushvalue(L, -1);
        lua_setfield(L, batch, col_names[k]);
        col[k] = lua_gettop(L);
    }
    int need_id = col[COL_ID] || col[COL_CHANGEFEED];
    lua_pushnil(L); /* slot of the last `from` string */
    int from_slot = lua_gettop(L);
    const char *last_from = NULL;
    for (int i = 0; i < n; i++) {
        const sl_place_task_t *t = &c->tasks[i];
        lua_Integer pos = (lua_Integer)i + 1;
        if (need_id) {
            lua_pushstring(L, t->id);
            if (col[COL_CHANGEFEED]) {
                if (t->changefeed == NULL || t->changefeed == t->id ||
                    strcmp(t->changefeed, t->id) == 0)
                    lua_pushvalue(L, -1);
                else
                    lua_pushstring(L, t->changefeed);
                lua_rawseti(L, col[COL_CHANGEFEED], pos);
            }
            if (col[COL_ID])
                lua_rawseti(L, col[COL_ID], pos);
            else
                lua_pop(L, 1);
        }
        if (col[COL_KIND]) {
            lua_pushvalue(L, base + (t->kind == SL_TASK_DISPATCHER ? K_DISPATCHER : K_MAINTAINER) - 1);
            lua_rawseti(L, col[COL_KIND], pos);
        }
        if (col[COL_FROM] && t->from != NULL) {
            if (t->from != last_from) {
                lua_pushstring(L, t->from);
                lua_replace(L, from_slot);
                last_from = t->from;
            }
            lua_pushvalue(L, from_slot);
            lua_rawseti(L, col[COL_FROM], pos);
        }
        if (col[COL_WEIGHT]) {
            lua_pushinteger(L, t->weight);
            lua_rawseti(L, col[COL_WEIGHT], pos);
        }
    }
    lua_settop(L, batch);
}

/* `columns`: nil (every column) or an array of column names. */
static int read_column_names(lua_State *L, int tbl, unsigned *mask, char *err, size_t errlen)
{
    lua_pushliteral(L, "columns");
    int t = lua_rawget(L, tbl);
    *mask = COL_ALL;
    if (t == LUA_TNIL) {
        lua_pop(L, 1);
        return 0;
    }
    if (t != LUA_TTABLE) {
        snprintf(err, errlen, "`columns` must be an array of column names, got %s",
                 lua_typename(L, t));
        return -1;
    }
    *mask = 0;
    lua_Unsigned len = lua_rawlen(L, -1), keys = 0;
    lua_pushnil(L);
    while (lua_next(L, -2) != 0) {
        lua_pop(L, 1); /* the value; the key stays for lua_next */
        if (++keys > len) {
            lua_pop(L, 1);
            break;
        }
    }
    if (keys != len) {
        snprintf(err, errlen, "`columns` must be an array of column names, like {\"kind\"}");
        return -1;
    }
    for (lua_Unsigned i = 1; i <= len && i <= 64; i++) {
        const char *name = lua_rawgeti(L, -1, (lua_Integer)i) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
        int k = 0;
        while (name != NULL && k < COL_COUNT && strcmp(name, col_names[k]) != 0)
            k++;
        if (name == NULL || k == COL_COUNT) {
            snprintf(err, errlen, "`columns`[%llu] must be one of \"id\", \"kind\", "
                     "\"changefeed\", \"from\", \"weight\"", (unsigned long long)i);
            return -1;
        }
        *mask |= 1u << k;
        lua_pop(L, 1);
    }
    if (len > 64) {
        snprintf(err, errlen, "`columns` names %llu columns; there are %d",
                 (unsigned long long)len, COL_COUNT);
        return -1;
    }
    lua_pop(L, 1);
    return 0;
}

/* place_columns answers by position ({[i] = node id}, i indexing the columns) or, as
 * place does, by task id. */
static void read_columns_answer(call_t *c, lua_State *L, int res)
{
    int indexed = 0;
    lua_pushnil(L);
    while (lua_next(L, res) != 0) {
        int kt = lua_type(L, -2);
        lua_Integer k = kt == LUA_TNUMBER && lua_isinteger(L, -2) ? lua_tointeger(L, -2) : 0;
        if (k >= 1 && (lua_Unsigned)k <= c->ntasks) {
            decide(c, (size_t)k - 1, L);
        } else if (kt == LUA_TSTRING) {
            size_t len;
            const char *key = lua_tolstring(L, -2, &len);
            if (!indexed) {
                if (index_tasks(c->lp, c->tasks, c->ntasks) != 0) {
                    c->oom = 1;
                    return;
                }
                indexed = 1;
            }
            long i = find_task(c->lp, c->tasks, key, len); /* the first task with the id */
            if (i >= 0) {
                decide(c, (size_t)i, L);
            } else {
                char id[SL_ID_MAX + 8], what[SL_ID_MAX + 32];
                quote_id(id, sizeof id, key, len);
                snprintf(what, sizeof what, "for task \"%s\"", id);
                note_unasked(c, what);
            }
        } else if (kt == LUA_TNUMBER) {
            char what[96];
            if (lua_isinteger(L, -2))
                snprintf(what, sizeof what, "at position %lld of a batch of %zu",
                         (long long)lua_tointeger(L, -2), c->ntasks);
            else
                snprintf(what, sizeof what, "under the number key %g", lua_tonumber(L, -2));
            note_unasked(c, what);
        } else {
            char what[64];
            snprintf(what, sizeof what, "under a key of type %s", luaL_typename(L, -2));
            note_unasked(c, what);
        }
        if (c->oom)
            return;
        lua_pop(L, 1);
    }
}

static int place_protected(lua_State *L)
{
    call_t *c = lua_touserdata(L, 1);
    lua_policy_t *lp = c->lp;
    lua_settop(L, 0);
    forget_answer(L, lp);
    /* No policy code runs while the arguments are built, so the collector waits: it would
     * only walk the very tables being built. The memory cap holds all the same: a refused
     * allocation runs an emergency collection, then fails. */
    if (lua_gc(L, LUA_GCISRUNNING)) {
        lua_gc(L, LUA_GCSTOP);
        c->gc_stopped = 1;
    }
    push_keys(L);
    int columns = lp->ref_columns != LUA_NOREF && !lp->force_tables;
    lua_createtable(L, columns ? 0 : (c->ntasks > INT32_MAX ? INT32_MAX : (int)c->ntasks), 0);
    int ids = lua_gettop(L);
    lua_rawgeti(L, LUA_REGISTRYINDEX, columns ? lp->ref_columns : lp->ref_place);
    if (columns)
        push_columns(L, 1, c, lp->col_mask);
    else
        push_tasks(L, 1, c, ids);
    push_nodes(L, 1, c->nodes, c->nnodes);
    push_ctx(L, c->ctx);
    if (c->nlong > 0 && link_long_ids(L, ids, lp, c->tasks, c->ntasks, &c->dups) != 0) {
        c->oom = 1;
        return 0;
    }
    if (c->gc_stopped) {
        lua_gc(L, LUA_GCRESTART);
        c->gc_stopped = 0;
    }
    const char *fn = c->fn = columns ? "place_columns" : "place";
    sl_policy_sandbox_arm(&lp->sb, fn, lp->call_budget_ms);
    lua_call(L, 3, 1);
    sl_policy_sandbox_disarm(&lp->sb);

    int rt = lua_type(L, -1);
    if (rt != LUA_TTABLE) {
        snprintf(c->err, sizeof c->err, "%s returned %s, expected a table", fn,
                 lua_typename(L, rt));
        return 0;
    }
    int res = lua_gettop(L);
    lua_pushvalue(L, res);
    lua_rawsetp(L, LUA_REGISTRYINDEX, lp);
    if (columns) {
        read_columns_answer(c, L, res);
        return 0;
    }
    /* One pass over the answer: a key names tasks of the batch, or was not asked for. */
    int indexed = 0;
    lua_pushnil(L);
    while (lua_next(L, res) != 0) {
        if (lua_type(L, -2) == LUA_TSTRING) {
            long i = answer_task(c, L, &indexed);
            if (c->oom)
                return 0;
            if (i >= 0) {
                decide(c, (size_t)i, L);
                for (uint32_t t = c->dups > 0 ? lp->same_id[i] : 0; t != 0 && !c->oom;
                     t = lp->same_id[t - 1])
                    decide(c, t - 1, L);
                if (c->oom)
                    return 0;
            } else {
                size_t len;
                const char *key = lua_tolstring(L, -2, &len);
                char id[SL_ID_MAX + 8], what[SL_ID_MAX + 32];
                quote_id(id, sizeof id, key, len);
                snprintf(what, sizeof what, "for task \"%s\"", id);
                note_unasked(c, what);
            }
        } else {
            char what[64];
            snprintf(what, sizeof what, "under a key of type %s", luaL_typename(L, -2));
            note_unasked(c, what);
        }
        lua_pop(L, 1);
    }
    return 0;
}

static int lua_place(sl_policy_t *p, const sl_place_task_t *tasks, size_t ntasks,
                     const sl_place_node_t *nodes, size_t nnodes, const sl_place_ctx_t *ctx,
                     sl_decision_t *out, sl_place_report_t *report)
{
    lua_policy_t *lp = (lua_policy_t *)p;
    report->unasked = 0;
    report->message[0] = '\0';
    for (size_t i = 0; i < ntasks; i++) {
        out[i].node = NULL;
        out[i].error = NULL;
    }
    arena_reset(lp);
    if (ntasks > UINT32_MAX - 1) {
        format_error(report->message, sizeof report->message, 0, p->file,
                     "batch too large");
        return SL_EPOLICY;
    }
    if (reserve_ids(lp, ntasks) != 0) {
        format_error(report->message, sizeof report->message, 0, p->file,
                     "out of memory indexing the batch");
        return SL_EPOLICY;
    }
    call_t c = {.lp = lp, .tasks = tasks, .ntasks = ntasks, .nodes = nodes, .nnodes = nnodes,
                .ctx = ctx, .out = out, .report = report};
    int status = host_run(lp, place_protected, &c);
    if (status != LUA_OK) {
        pcall_message(lp, status, report->message, sizeof report->message, 0);
        goto fail;
    }
    lua_settop(lp->sb.L, 0);
    if (c.err[0] != '\0') {
        format_error(report->message, sizeof report->message, 0, p->file, c.err);
        goto fail;
    }
    if (c.oom) {
        format_error(report->message, sizeof report->message, 0, p->file,
                     "out of memory copying the decisions");
        goto fail;
    }
    return 0;
fail:
    report->unasked = 0;
    for (size_t i = 0; i < ntasks; i++) {
        out[i].node = NULL;
        out[i].error = NULL;
    }
    return SL_EPOLICY;
}

static int is_lua_policy(const sl_policy_t *p);

int sl_policy_lua_has_columns(const sl_policy_t *p)
{
    return is_lua_policy(p) && ((const lua_policy_t *)p)->ref_columns != LUA_NOREF;
}

int sl_policy_lua_place_tables(sl_policy_t *p, const sl_place_task_t *tasks, size_t ntasks,
                               const sl_place_node_t *nodes, size_t nnodes,
                               const sl_place_ctx_t *ctx, sl_decision_t *out,
                               sl_place_report_t *report)
{
    if (!is_lua_policy(p))
        return p->ops->place(p, tasks, ntasks, nodes, nnodes, ctx, out, report);
    lua_policy_t *lp = (lua_policy_t *)p;
    lp->force_tables = 1;
    int rc = lua_place(p, tasks, ntasks, nodes, nnodes, ctx, out, report);
    lp->force_tables = 0;
    return rc;
}

/* ---- drain_order ------------------------------------------------------------------- */

static int drain_protected(lua_State *L)
{
    call_t *c = lua_touserdata(L, 1);
    lua_policy_t *lp = c->lp;
    lua_settop(L, 0);
    forget_answer(L, lp);
    push_keys(L);
    lua_rawgeti(L, LUA_REGISTRYINDEX, lp->ref_drain);
    push_tasks(L, 1, c, 0);
    push_ctx(L, c->ctx);
    sl_policy_sandbox_arm(&lp->sb, "drain_order", lp->call_budget_ms);
    lua_call(L, 2, 1);
    sl_policy_sandbox_disarm(&lp->sb);

    int rt = lua_type(L, -1);
    if (rt != LUA_TTABLE) {
        snprintf(c->err, sizeof c->err, "drain_order returned %s, expected an array of task ids",
                 lua_typename(L, rt));
        return 0;
    }
    int res = lua_gettop(L);
    lua_Unsigned n = lua_rawlen(L, res);
    /* seen[] marks listed tasks; a userdata so a Lua error cannot leak it */
    unsigned char *seen = lua_newuserdatauv(L, c->ntasks > 0 ? c->ntasks : 1, 0);
    memset(seen, 0, c->ntasks > 0 ? c->ntasks : 1);
    size_t count = 0;
    for (lua_Unsigned k = 1; k <= n; k++) {
        int vt = lua_rawgeti(L, res, (lua_Integer)k);
        if (vt != LUA_TSTRING) {
            snprintf(c->err, sizeof c->err,
                     "drain_order returned %s at position %llu, expected a task id",
                     lua_typename(L, vt), (unsigned long long)k);
            return 0;
        }
        size_t len;
        const char *s = lua_tolstring(L, -1, &len);
        long i = find_task(lp, c->tasks, s, len);
        char id[SL_ID_MAX + 8];
        quote_id(id, sizeof id, s, len);
        if (i < 0) {
            snprintf(c->err, sizeof c->err,
                     "drain_order returned \"%s\" at position %llu, which is not a task of "
                     "the batch", id, (unsigned long long)k);
            return 0;
        }
        if (seen[i]) {
            snprintf(c->err, sizeof c->err,
                     "drain_order returned \"%s\" twice (again at position %llu)", id,
                     (unsigned long long)k);
            return 0;
        }
        seen[i] = 1;
        c->order[count++] = (uint32_t)i;
        lua_pop(L, 1);
    }
    *c->norder = count;
    return 0;
}

static int lua_drain_order(sl_policy_t *p, const sl_place_task_t *tasks, size_t ntasks,
                           const sl_place_ctx_t *ctx, uint32_t *order, size_t *norder,
                           sl_place_report_t *report)
{
    lua_policy_t *lp = (lua_policy_t *)p;
    report->unasked = 0;
    report->message[0] = '\0';
    *norder = 0;
    if (ntasks > UINT32_MAX - 1 || index_tasks(lp, tasks, ntasks) != 0) {
        format_error(report->message, sizeof report->message, 0, p->file,
                     "out of memory indexing the batch");
        return SL_EPOLICY;
    }
    call_t c = {.lp = lp, .tasks = tasks, .ntasks = ntasks, .ctx = ctx, .order = order,
                .norder = norder, .report = report};
    int status = host_run(lp, drain_protected, &c);
    if (status != LUA_OK) {
        pcall_message(lp, status, report->message, sizeof report->message, 0);
        goto fail;
    }
    lua_settop(lp->sb.L, 0);
    if (c.err[0] != '\0') {
        format_error(report->message, sizeof report->message, 0, p->file, c.err);
        goto fail;
    }
    return 0;
fail:
    *norder = 0;
    return SL_EPOLICY;
}

/* ---- lifetime ------------------------------------------------------------------------ */

static void lua_destroy(sl_policy_t *p)
{
    lua_policy_t *lp = (lua_policy_t *)p;
    sl_policy_sandbox_close(&lp->sb);
    arena_reset(lp);
    free(lp->slots);
    free(lp->idmap);
    free(lp->same_id);
    free(lp);
}

static const struct sl_policy_ops lua_ops = {
    .place = lua_place,
    .drain_order = lua_drain_order,
    .destroy = lua_destroy,
};

/* Without drain_order: the core skips Lua entirely for the drain order. */
static const struct sl_policy_ops lua_ops_no_drain = {
    .place = lua_place,
    .drain_order = NULL,
    .destroy = lua_destroy,
};

static int is_lua_policy(const sl_policy_t *p)
{
    return p != NULL && (p->ops == &lua_ops || p->ops == &lua_ops_no_drain);
}

typedef struct {
    lua_policy_t *lp;
    const char *src;
    size_t len;
    const char *chunkname;
    int has_selftest;
    char err[SL_ERRMSG_MAX];
} load_t;

static int optional_function(lua_State *L, int tbl, const char *field, load_t *ld)
{
    lua_pushstring(L, field);
    int t = lua_rawget(L, tbl);
    if (t == LUA_TNIL) {
        lua_pop(L, 1);
        return 0;
    }
    if (t != LUA_TFUNCTION) {
        snprintf(ld->err, sizeof ld->err, "`%s` must be a function, got %s", field,
                 lua_typename(L, t));
        lua_pop(L, 1);
        return -1;
    }
    return 1; /* left on the stack */
}

static int load_protected(lua_State *L)
{
    load_t *ld = lua_touserdata(L, 1);
    lua_policy_t *lp = ld->lp;
    lua_settop(L, 0);
    int status = luaL_loadbufferx(L, ld->src, ld->len, ld->chunkname, "t");
    if (status != LUA_OK) {
        if (status == LUA_ERRMEM)
            return lua_error(L);
        snprintf(ld->err, sizeof ld->err, "%s",
                 lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "cannot load the chunk");
        return 0;
    }
    sl_policy_sandbox_arm(&lp->sb, "load", lp->load_budget_ms);
    lua_call(L, 0, 1);
    sl_policy_sandbox_disarm(&lp->sb);
    int rt = lua_type(L, 1);
    if (rt != LUA_TTABLE) {
        snprintf(ld->err, sizeof ld->err,
                 "the chunk returned %s, expected a table {name=, place=, ...}",
                 lua_typename(L, rt));
        return 0;
    }
    /* The contract is read raw: no policy code runs while it is checked. */
    lua_pushliteral(L, "name");
    int nt = lua_rawget(L, 1);
    size_t nlen = 0;
    const char *name = nt == LUA_TSTRING ? lua_tolstring(L, -1, &nlen) : NULL;
    if (name == NULL || nlen == 0 || nlen >= SL_ID_MAX || strlen(name) != nlen) {
        if (nt != LUA_TSTRING)
            snprintf(ld->err, sizeof ld->err, "`name` must be a string, got %s",
                     lua_typename(L, nt));
        else
            snprintf(ld->err, sizeof ld->err,
                     "`name` must be a non-empty string of at most %d bytes", SL_ID_MAX - 1);
        return 0;
    }
    for (size_t i = 0; i < nlen; i++) {
        unsigned char ch = (unsigned char)name[i];
        if (ch < 0x20 || ch == 0x7f) {
            snprintf(ld->err, sizeof ld->err, "`name` must not hold control characters");
            return 0;
        }
    }
    memcpy(lp->base.name, name, nlen + 1);
    snprintf(lp->sb.label, sizeof lp->sb.label, "%s", name);
    lua_pop(L, 1);

    lua_pushliteral(L, "place");
    int pt = lua_rawget(L, 1);
    if (pt != LUA_TFUNCTION) {
        snprintf(ld->err, sizeof ld->err, "`place` must be a function, got %s",
                 lua_typename(L, pt));
        return 0;
    }
    lp->ref_place = luaL_ref(L, LUA_REGISTRYINDEX);

    int d = optional_function(L, 1, "drain_order", ld);
    if (d < 0)
        return 0;
    if (d > 0)
        lp->ref_drain = luaL_ref(L, LUA_REGISTRYINDEX);
    int pc = optional_function(L, 1, "place_columns", ld);
    if (pc < 0)
        return 0;
    if (pc > 0) {
        lp->ref_columns = luaL_ref(L, LUA_REGISTRYINDEX);
        if (read_column_names(L, 1, &lp->col_mask, ld->err, sizeof ld->err) != 0)
            return 0;
    }
    int s = optional_function(L, 1, "selftest", ld);
    if (s <= 0)
        return 0;
    ld->has_selftest = 1;
    sl_policy_sandbox_arm(&lp->sb, "selftest", lp->load_budget_ms);
    lua_call(L, 0, 2);
    sl_policy_sandbox_disarm(&lp->sb);
    if (lua_type(L, -2) != LUA_TBOOLEAN || !lua_toboolean(L, -2)) {
        const char *why = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
        if (lua_type(L, -2) == LUA_TBOOLEAN || lua_type(L, -2) == LUA_TNIL)
            snprintf(ld->err, sizeof ld->err, "selftest failed: returned %s%s%s",
                     lua_toboolean(L, -2) ? "true" : lua_type(L, -2) == LUA_TNIL ? "nil" : "false",
                     why ? ": " : "", why ? why : "");
        else
            snprintf(ld->err, sizeof ld->err, "selftest failed: returned %s, expected true",
                     luaL_typename(L, -2));
    }
    return 0;
}

static int host_load(const char *src, size_t len, const char *chunkname, const char *file,
                     const sl_policy_limits_t *lim, sl_policy_t **out, char *err,
                     size_t errlen)
{
    sl_policy_limits_t d;
    sl_policy_limits_default(&d);
    lua_policy_t *lp = NULL;

    *out = NULL;
    if (len >= 4 && memcmp(src, LUA_SIGNATURE, 4) == 0) {
        snprintf(err, errlen, "policy %s: is a precompiled (bytecode) chunk; only Lua source "
                              "is accepted", file);
        return SL_EPOLICY;
    }
    /* like lua.c, a first line starting with '#' is skipped; its newline keeps numbering */
    if (len > 0 && src[0] == '#') {
        const char *nl = memchr(src, '\n', len);
        size_t skip = nl != NULL ? (size_t)(nl - src) : len;
        src += skip;
        len -= skip;
    }

    lp = calloc(1, sizeof *lp);
    if (lp == NULL) {
        snprintf(err, errlen, "policy %s: out of memory", file);
        return SL_ENOMEM;
    }
    lp->ref_place = lp->ref_drain = lp->ref_columns = LUA_NOREF;
    lp->call_budget_ms = lim != NULL && lim->call_budget_ms ? lim->call_budget_ms : d.call_budget_ms;
    lp->load_budget_ms = lim != NULL && lim->load_budget_ms ? lim->load_budget_ms : d.load_budget_ms;
    size_t cap = lim != NULL && lim->memory_bytes ? lim->memory_bytes : d.memory_bytes;
    snprintf(lp->base.file, sizeof lp->base.file, "%s", file);
    snprintf(lp->base.name, sizeof lp->base.name, "%s", file);

    char msg[SL_ERRMSG_MAX];
    int rc = sl_policy_sandbox_open(&lp->sb, cap, file, msg, sizeof msg);
    if (rc != 0) {
        snprintf(err, errlen, "policy %s: %s", file, msg);
        goto fail;
    }
    load_t ld = {.lp = lp, .src = src, .len = len, .chunkname = chunkname};
    lua_State *L = lp->sb.L;
    lua_settop(L, 0);
    lua_pushcfunction(L, sl_policy_sandbox_msghandler);
    lua_pushcfunction(L, load_protected);
    lua_pushlightuserdata(L, &ld);
    int status = lua_pcall(L, 1, 0, 1);
    sl_policy_sandbox_disarm(&lp->sb);
    if (status != LUA_OK) {
        pcall_message(lp, status, err, errlen, 1);
        rc = SL_EPOLICY;
        goto fail;
    }
    lua_settop(L, 0);
    if (ld.err[0] != '\0') {
        format_error(err, errlen, 1, file, ld.err);
        rc = SL_EPOLICY;
        goto fail;
    }
    lp->base.ops = lp->ref_drain != LUA_NOREF ? &lua_ops : &lua_ops_no_drain;
    *out = &lp->base;
    return 0;
fail:
    sl_policy_sandbox_close(&lp->sb);
    free(lp);
    return rc != 0 ? rc : SL_EPOLICY;
}

int sl_policy_lua_load_string(const char *source, size_t len, const char *chunkname,
                              const sl_policy_limits_t *lim, sl_policy_t **out, char *err,
                              size_t errlen)
{
    char cn[300];
    const char *file = chunkname != NULL && chunkname[0] != '\0' ? chunkname : "=policy";
    if (file[0] == '@' || file[0] == '=') {
        snprintf(cn, sizeof cn, "%s", file);
        file++;
    } else {
        snprintf(cn, sizeof cn, "@%s", file);
    }
    return host_load(source, len, cn, file, lim, out, err, errlen);
}

int sl_policy_lua_load(const char *path, const sl_policy_limits_t *lim, sl_policy_t **out,
                       char *err, size_t errlen)
{
    char *buf = NULL;
    size_t len = 0;
    *out = NULL;
    int rc = sl_policy_read_file(path, &buf, &len, err, errlen);
    if (rc == 0) rc = sl_policy_lua_load_string(buf ? buf : "", len, path, lim, out, err, errlen);
    free(buf);
    return rc;
}
