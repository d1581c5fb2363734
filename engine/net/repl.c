/* repl.c — the REPL's evaluation engine (R1; see repl.h).
 *
 * Guarantees:
 *  - the operator's Lua runs in the policies' sandbox (sandbox.h): whitelisted globals,
 *    a memory cap and a time budget per evaluation; the results are formatted inside the
 *    same protected, budgeted call (a __tostring is Lua code too);
 *  - each session has its own sandbox: globals, memory cap and a budget that ran out are
 *    its own; at most max_sessions are open, and none idle past idle_ms once a request or
 *    a sweep has looked, so the REPL holds at most max_sessions + 1 (a one-shot) states;
 *  - the inspection functions copy what the core says into Lua values at once (the
 *    core's strings live until its next event) and never change the core;
 *  - steering goes through the coordinator's callbacks with the budget paused;
 *  - output is bounded (REPL_OUTPUT_MAX) and valid UTF-8.
 */
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <lauxlib.h>
#include <lua.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/time.h>
#include <time.h>

#include "../policy/sandbox.h"
#include "repl.h"

#define REPL_OUTPUT_MAX (1u << 20)  /* bytes of output per evaluation */
#define REPL_DEPTH_MAX 8            /* nested tables printed before {…} */
#define REPL_INLINE_MAX 72          /* a table fits on one line up to this width */
#define REPL_ENTRIES_MAX 2000       /* entries printed per table */
#define REPL_MATCHES_MAX 256
#define REPL_GONE_REMEMBERED 64     /* closed session ids kept to say why they are gone */

typedef struct {
    char *s;
    size_t len, cap;
    int truncated;
} out_t;

/* One client's Lua; the upvalue of every REPL function in its state. */
typedef struct {
    sl_repl_t *repl;
    sl_sandbox_t *sb; /* on the heap: a sandbox never moves (its allocator and timer point
                       * at it), and reset() builds the new one beside the old */
    out_t out;
    char id[SL_REPL_ID_SIZE]; /* "" for a one-shot evaluation */
    uint64_t last_used_ms;
    int reset_requested;      /* reset() was called: a fresh state after this evaluation */
} session_t;

typedef enum { GONE_IDLE = 1, GONE_EVICTED, GONE_CLOSED } gone_t;

struct sl_repl {
    sl_core_t *core;
    sl_policy_registry_t *reg;
    sl_repl_ops_t ops;
    char coordinator_node[SL_ID_MAX];
    uint32_t budget_ms;
    size_t mem_cap;
    /* the open sessions, in the order they were opened */
    session_t **sessions;
    size_t nsessions;
    sl_repl_sessions_config_t cfg; /* defaults filled in */
    struct {
        char id[SL_REPL_ID_SIZE];
        gone_t why;
    } gone[REPL_GONE_REMEMBERED]; /* a ring of the last closed ids */
    size_t gone_next;
};

/* ---- output --------------------------------------------------------------------------- */

static void out_add(out_t *o, const char *s, size_t n)
{
    if (o->truncated)
        return;
    if (o->len + n > REPL_OUTPUT_MAX) {
        n = REPL_OUTPUT_MAX - o->len;
        o->truncated = 1;
    }
    if (o->len + n + 1 > o->cap) {
        size_t cap = o->cap ? o->cap : 1024;
        while (cap < o->len + n + 1)
            cap *= 2;
        char *ns = realloc(o->s, cap);
        if (ns == NULL) {
            o->truncated = 1;
            return;
        }
        o->s = ns;
        o->cap = cap;
    }
    memcpy(o->s + o->len, s, n);
    o->len += n;
    o->s[o->len] = '\0';
}

static void out_str(out_t *o, const char *s)
{
    out_add(o, s, strlen(s));
}

static void out_printf(out_t *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void out_printf(out_t *o, const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (n > 0)
        out_add(o, buf, (size_t)n < sizeof buf ? (size_t)n : sizeof buf - 1);
}

static session_t *session_of(lua_State *L)
{
    return lua_touserdata(L, lua_upvalueindex(1));
}

static sl_repl_t *repl_of(lua_State *L)
{
    return session_of(L)->repl;
}

static uint64_t wall_ms(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (uint64_t)tv.tv_sec * 1000u + (uint64_t)tv.tv_usec / 1000u;
}

static uint64_t repl_now(sl_repl_t *r)
{
    return r->ops.now_ms ? r->ops.now_ms(r->ops.arg) : wall_ms();
}

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* C loops the count hook cannot see check the deadline themselves. */
static void check_deadline(lua_State *L, session_t *s)
{
    sl_sandbox_t *sb = s->sb;
    if (sb->armed && (sb->expired || mono_ns() >= sb->deadline_ns)) {
        sb->expired = 1;
        luaL_error(L, "evaluation exceeded its budget of %d ms", (int)s->repl->budget_ms);
    }
}

/* The budget is paused while the coordinator's callbacks run (they may write the store). */
static uint32_t budget_pause(session_t *s)
{
    uint64_t now = mono_ns();
    uint64_t left = s->sb->deadline_ns > now ? (s->sb->deadline_ns - now) / 1000000u : 0;
    sl_policy_sandbox_disarm(s->sb);
    return left > 0 ? (uint32_t)left : 1;
}

static void budget_resume(session_t *s, uint32_t left_ms)
{
    sl_policy_sandbox_arm(s->sb, "evaluation", left_ms);
}

/* ---- formatting values -------------------------------------------------------------- */

typedef struct {
    session_t *s;
    lua_State *L;
    int seen; /* stack index of the table of tables on the current path */
    unsigned steps;
} fmt_t;

static int is_identifier(const char *s, size_t n)
{
    static const char *const keywords[] = {
        "and", "break", "do", "else", "elseif", "end", "false", "for", "function", "goto", "if",
        "in", "local", "nil", "not", "or", "repeat", "return", "then", "true", "until", "while",
        NULL,
    };
    if (n == 0 || !(isalpha((unsigned char)s[0]) || s[0] == '_'))
        return 0;
    for (size_t i = 1; i < n; i++)
        if (!(isalnum((unsigned char)s[i]) || s[i] == '_'))
            return 0;
    for (const char *const *k = keywords; *k; k++)
        if (strlen(*k) == n && memcmp(*k, s, n) == 0)
            return 0;
    return 1;
}

static void quote_string(out_t *o, const char *s, size_t n)
{
    out_add(o, "\"", 1);
    size_t start = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        const char *esc = NULL;
        char buf[8];
        switch (c) {
        case '"': esc = "\\\""; break;
        case '\\': esc = "\\\\"; break;
        case '\n': esc = "\\n"; break;
        case '\r': esc = "\\r"; break;
        case '\t': esc = "\\t"; break;
        default:
            if (c < 0x20 || c == 0x7f) {
                snprintf(buf, sizeof buf, "\\%u", c);
                esc = buf;
            }
        }
        if (esc) {
            out_add(o, s + start, i - start);
            out_str(o, esc);
            start = i + 1;
        }
    }
    out_add(o, s + start, n - start);
    out_add(o, "\"", 1);
}

typedef struct {
    int kind; /* 0 number, 1 string, 2 boolean, 3 other */
    double num;
    const char *str;
    size_t len;
    const void *ptr;
    int boolean;
    int tname; /* type, for "other" */
    lua_Integer slot; /* index in the keys table */
} tkey_t;

static int key_cmp(const void *a, const void *b)
{
    const tkey_t *x = a, *y = b;
    if (x->kind != y->kind)
        return x->kind < y->kind ? -1 : 1;
    switch (x->kind) {
    case 0: return x->num < y->num ? -1 : x->num > y->num;
    case 1: {
        size_t m = x->len < y->len ? x->len : y->len;
        int c = memcmp(x->str, y->str, m);
        return c ? c : (x->len < y->len ? -1 : x->len > y->len);
    }
    case 2: return x->boolean - y->boolean;
    default:
        if (x->tname != y->tname)
            return x->tname < y->tname ? -1 : 1;
        return x->ptr < y->ptr ? -1 : x->ptr > y->ptr;
    }
}

static int fmt_value(fmt_t *f, out_t *o, int idx, int depth, int indent, int top, size_t width);

static void fmt_key(fmt_t *f, out_t *o, int kidx)
{
    lua_State *L = f->L;
    size_t n;
    if (lua_type(L, kidx) == LUA_TSTRING) {
        const char *s = lua_tolstring(L, kidx, &n);
        if (is_identifier(s, n)) {
            out_add(o, s, n);
        } else {
            out_add(o, "[", 1);
            quote_string(o, s, n);
            out_add(o, "]", 1);
        }
    } else {
        out_add(o, "[", 1);
        fmt_value(f, o, kidx, REPL_DEPTH_MAX, 0, 0, 0);
        out_add(o, "]", 1);
    }
    out_add(o, " = ", 3);
}

/* A table: the array part 1..n without keys, then the other keys sorted (numbers,
 * strings, booleans, the rest). On one line when it fits in `width` (0: never), else one
 * entry per line. Returns -1 when asked for one line and it does not fit. */
static int fmt_table(fmt_t *f, out_t *o, int t, int depth, int indent, size_t width)
{
    lua_State *L = f->L;
    luaL_checkstack(L, 8, "table too deep to print");
    lua_Integer n = 0;
    while (n < LUA_MAXINTEGER) {
        if (lua_rawgeti(L, t, n + 1) == LUA_TNIL) {
            lua_pop(L, 1);
            break;
        }
        lua_pop(L, 1);
        n++;
        if (width > 0 && (size_t)n > width / 3)
            return -1; /* cannot fit on one line: do not collect the keys twice */
        if ((++f->steps & 255) == 0)
            check_deadline(L, f->s);
    }
    /* the other keys, anchored in a keys table while sorted */
    lua_newtable(L);
    int keys = lua_gettop(L);
    lua_Integer nkeys = 0;
    lua_pushnil(L);
    while (lua_next(L, t) != 0) {
        lua_pop(L, 1);
        if (lua_isinteger(L, -1)) {
            lua_Integer k = lua_tointeger(L, -1);
            if (k >= 1 && k <= n)
                continue;
        }
        lua_pushvalue(L, -1);
        lua_rawseti(L, keys, ++nkeys);
        if (width > 0 && (size_t)(n + nkeys) > width / 3) {
            lua_settop(L, keys - 1);
            return -1;
        }
        if ((++f->steps & 255) == 0)
            check_deadline(L, f->s);
    }
    tkey_t *ks = NULL;
    if (nkeys > 0) {
        /* as a userdata, so an error below cannot leak it */
        ks = lua_newuserdatauv(L, (size_t)nkeys * sizeof *ks, 0);
        for (lua_Integer i = 0; i < nkeys; i++) {
            tkey_t *k = &ks[i];
            memset(k, 0, sizeof *k);
            k->slot = i + 1;
            lua_rawgeti(L, keys, i + 1);
            switch (lua_type(L, -1)) {
            case LUA_TNUMBER: k->kind = 0; k->num = lua_tonumber(L, -1); break;
            case LUA_TSTRING: k->kind = 1; k->str = lua_tolstring(L, -1, &k->len); break;
            case LUA_TBOOLEAN: k->kind = 2; k->boolean = lua_toboolean(L, -1); break;
            default:
                k->kind = 3;
                k->tname = lua_type(L, -1);
                k->ptr = lua_topointer(L, -1);
            }
            lua_pop(L, 1); /* the string stays alive in `keys` */
        }
        check_deadline(L, f->s);
        qsort(ks, (size_t)nkeys, sizeof *ks, key_cmp);
        check_deadline(L, f->s);
    }
    int one_line = width > 0;
    size_t start = o->len;
    lua_Integer total = n + nkeys, shown = 0;
    if (total == 0) {
        out_add(o, "{}", 2);
        lua_settop(L, keys - 1);
        return 0;
    }
    out_add(o, one_line ? "{ " : "{\n", 2);
    for (lua_Integer i = 0; i < total; i++) {
        if (shown == REPL_ENTRIES_MAX) {
            if (one_line)
                goto too_wide;
            for (int s = 0; s < indent + 2; s++)
                out_add(o, " ", 1);
            out_printf(o, "... (%" PRId64 " more)\n", (int64_t)(total - shown));
            break;
        }
        if (!one_line)
            for (int s = 0; s < indent + 2; s++)
                out_add(o, " ", 1);
        if (i < n) {
            lua_rawgeti(L, t, i + 1);
        } else {
            lua_rawgeti(L, keys, ks[i - n].slot);
            fmt_key(f, o, lua_gettop(L));
            lua_rawget(L, t);
        }
        size_t used = o->len - start;
        int rc = fmt_value(f, o, lua_gettop(L), depth + 1, indent + 2, 0,
                           one_line ? (width > used ? width - used : 1) : 0);
        lua_pop(L, 1);
        if (rc < 0 && one_line)
            goto too_wide;
        shown++;
        if (one_line) {
            out_add(o, i + 1 < total ? ", " : " }", 2);
            if (o->len - start > width)
                goto too_wide;
        } else {
            out_add(o, ",\n", 2);
        }
        if ((++f->steps & 255) == 0)
            check_deadline(L, f->s);
    }
    if (!one_line) {
        for (int s = 0; s < indent; s++)
            out_add(o, " ", 1);
        out_add(o, "}", 1);
    }
    lua_settop(L, keys - 1);
    return 0;
too_wide:
    o->len = start;
    if (o->s)
        o->s[o->len] = '\0';
    lua_settop(L, keys - 1);
    return -1;
}

/* Appends the value at idx. `top`: a result of the chunk (strings print raw, as lua.c's
 * print). `width` > 0: the value must fit on one line of that width or -1 is returned
 * with nothing appended; 0: multi-line allowed. */
static int fmt_value(fmt_t *f, out_t *o, int idx, int depth, int indent, int top, size_t width)
{
    lua_State *L = f->L;
    idx = lua_absindex(L, idx);
    size_t n;
    switch (lua_type(L, idx)) {
    case LUA_TSTRING: {
        const char *s = lua_tolstring(L, idx, &n);
        if (top)
            out_add(o, s, n);
        else
            quote_string(o, s, n);
        return 0;
    }
    case LUA_TTABLE: break;
    default: {
        const char *s = luaL_tolstring(L, idx, &n); /* may run a __tostring: budgeted */
        out_add(o, s, n);
        lua_pop(L, 1);
        return 0;
    }
    }
    if (luaL_getmetafield(L, idx, "__tostring") != LUA_TNIL) {
        lua_pop(L, 1);
        const char *s = luaL_tolstring(L, idx, &n);
        out_add(o, s, n);
        lua_pop(L, 1);
        return 0;
    }
    if (depth >= REPL_DEPTH_MAX) {
        out_str(o, "{...}");
        return 0;
    }
    lua_pushvalue(L, idx);
    if (lua_rawget(L, f->seen) != LUA_TNIL) {
        lua_pop(L, 1);
        out_str(o, "<cycle>");
        return 0;
    }
    lua_pop(L, 1);
    lua_pushvalue(L, idx);
    lua_pushboolean(L, 1);
    lua_rawset(L, f->seen);
    int rc;
    if (width > 0) {
        rc = fmt_table(f, o, idx, depth, indent, width);
    } else {
        /* one line when it fits, else one entry per line */
        rc = fmt_table(f, o, idx, depth, indent, REPL_INLINE_MAX > (size_t)indent
                                                    ? REPL_INLINE_MAX - (size_t)indent : 16);
        if (rc < 0)
            rc = fmt_table(f, o, idx, depth, indent, 0);
    }
    lua_pushvalue(L, idx);
    lua_pushnil(L);
    lua_rawset(L, f->seen);
    return rc;
}

/* ---- evaluation --------------------------------------------------------------------- */

typedef struct {
    session_t *s;
    const char *chunk;
    size_t len;
    int incomplete;
} eval_t;

static int ends_with_eof(const char *msg)
{
    size_t n = strlen(msg), k = strlen("<eof>");
    return n >= k && strcmp(msg + n - k, "<eof>") == 0;
}

static int eval_protected(lua_State *L)
{
    eval_t *ev = lua_touserdata(L, 1);
    session_t *s = ev->s;
    lua_settop(L, 0);
    /* like lua.c: an expression first, then statements */
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    luaL_addstring(&b, "return ");
    luaL_addlstring(&b, ev->chunk, ev->len);
    luaL_pushresult(&b);
    size_t rlen;
    const char *rsrc = lua_tolstring(L, 1, &rlen);
    int status = luaL_loadbufferx(L, rsrc, rlen, "=repl", "t");
    if (status != LUA_OK) {
        if (status == LUA_ERRMEM)
            return lua_error(L);
        lua_settop(L, 0);
        status = luaL_loadbufferx(L, ev->chunk, ev->len, "=repl", "t");
        if (status == LUA_ERRSYNTAX && ends_with_eof(lua_tostring(L, -1))) {
            ev->incomplete = 1;
            return 0;
        }
        if (status != LUA_OK)
            return lua_error(L);
    } else {
        lua_remove(L, 1);
    }
    lua_call(L, 0, LUA_MULTRET);
    int nres = lua_gettop(L);
    if (nres == 0)
        return 0;
    lua_newtable(L);
    fmt_t f = {s, L, lua_gettop(L), 0};
    int tables = 0;
    for (int i = 1; i <= nres; i++)
        tables |= lua_type(L, i) == LUA_TTABLE;
    if (s->out.len > 0 && s->out.s[s->out.len - 1] != '\n')
        out_add(&s->out, "\n", 1);
    for (int i = 1; i <= nres; i++) {
        if (i > 1)
            out_add(&s->out, tables ? "\n" : "\t", 1);
        fmt_value(&f, &s->out, i, 0, 0, 1, 0);
    }
    out_add(&s->out, "\n", 1);
    return 0;
}

/* The message only (an operator wants the line, not the C frames); never runs Lua. */
static int eval_msgh(lua_State *L)
{
    if (lua_type(L, 1) == LUA_TSTRING || lua_type(L, 1) == LUA_TNUMBER) {
        lua_pushstring(L, lua_tostring(L, 1));
        return 1;
    }
    lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
    return 1;
}

/* Replaces bytes that are not UTF-8 by \xNN and NUL by \0, so the text travels as JSON. */
static char *utf8_clean(const char *s, size_t n)
{
    out_t o = {0};
    size_t i = 0, start = 0;
    while (i < n) {
        unsigned char c = (unsigned char)s[i];
        size_t len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
        int ok = len > 0 && i + len <= n && c != 0;
        for (size_t k = 1; ok && k < len; k++)
            ok = ((unsigned char)s[i + k] >> 6) == 2;
        if (ok && len == 2 && c < 0xc2)
            ok = 0; /* overlong */
        if (ok && len == 3) {
            unsigned cp = ((c & 0x0fu) << 12) | (((unsigned char)s[i + 1] & 0x3fu) << 6) |
                          ((unsigned char)s[i + 2] & 0x3fu);
            ok = cp >= 0x800 && (cp < 0xd800 || cp > 0xdfff);
        }
        if (ok && len == 4) {
            unsigned cp = ((c & 0x07u) << 18) | (((unsigned char)s[i + 1] & 0x3fu) << 12) |
                          (((unsigned char)s[i + 2] & 0x3fu) << 6) | ((unsigned char)s[i + 3] & 0x3fu);
            ok = cp >= 0x10000 && cp <= 0x10ffff;
        }
        if (ok) {
            i += len;
            continue;
        }
        out_add(&o, s + start, i - start);
        char buf[8];
        snprintf(buf, sizeof buf, c ? "\\x%02X" : "\\0", c);
        out_str(&o, buf);
        i++;
        start = i;
    }
    out_add(&o, s + start, n - start);
    if (o.s == NULL)
        o.s = strdup("");
    return o.s;
}

static int session_rebuild(session_t *s, char *err, size_t errlen);

/* Evaluates in one session (the caller found or made it). */
static int session_eval(session_t *s, const char *chunk, char **output, int *incomplete)
{
    *output = NULL;
    *incomplete = 0;
    s->out.len = 0;
    s->out.truncated = 0;
    if (s->out.s)
        s->out.s[0] = '\0';
    s->reset_requested = 0;
    lua_State *L = s->sb->L;
    lua_settop(L, 0);
    eval_t ev = {s, chunk ? chunk : "", chunk ? strlen(chunk) : 0, 0};
    int rc = 0;
    sl_policy_sandbox_arm(s->sb, "evaluation", s->repl->budget_ms);
    lua_pushcfunction(L, eval_msgh);
    lua_pushcfunction(L, eval_protected);
    lua_pushlightuserdata(L, &ev);
    int status = lua_pcall(L, 1, 0, 1);
    sl_policy_sandbox_disarm(s->sb);
    if (status != LUA_OK) {
        if (s->out.len > 0 && s->out.s[s->out.len - 1] != '\n')
            out_add(&s->out, "\n", 1);
        s->out.truncated = 0; /* the error is always shown */
        if (status == LUA_ERRMEM)
            out_printf(&s->out, "error: not enough memory (the REPL's cap is %zu MiB)\n",
                       s->sb->mem_cap >> 20);
        else
            out_printf(&s->out, "error: %s\n",
                       lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "unknown error");
        rc = SL_EPOLICY;
    } else if (ev.incomplete) {
        *incomplete = 1;
        s->out.len = 0;
    }
    if (s->out.truncated)
        out_printf(&s->out, "\n... (output truncated at %u bytes)\n", REPL_OUTPUT_MAX);
    lua_settop(L, 0);
    if (s->reset_requested && s->id[0]) {
        /* even when the chunk failed after reset(): the operator asked for it */
        s->reset_requested = 0;
        char err[SL_ERRMSG_MAX];
        if (session_rebuild(s, err, sizeof err) == 0) {
            out_str(&s->out, "session reset: a fresh Lua state, every global and local gone\n");
        } else {
            out_printf(&s->out, "error: reset(): %s; the session keeps its state\n", err);
            rc = SL_EPOLICY;
        }
    } else {
        /* what the chunk left behind is garbage now; an operator's globals stay */
        sl_policy_sandbox_arm(s->sb, "collect", 1000);
        lua_gc(L, LUA_GCCOLLECT);
        sl_policy_sandbox_disarm(s->sb);
    }
    *output = utf8_clean(s->out.s ? s->out.s : "", s->out.len);
    if (*output == NULL)
        return SL_ENOMEM;
    return rc;
}

/* ---- inspection functions ------------------------------------------------------------ */

static void set_str(lua_State *L, const char *k, const char *v)
{
    if (v)
        lua_pushstring(L, v);
    else
        lua_pushnil(L);
    lua_setfield(L, -2, k);
}

static void set_int(lua_State *L, const char *k, lua_Integer v)
{
    lua_pushinteger(L, v);
    lua_setfield(L, -2, k);
}

static void set_num(lua_State *L, const char *k, double v)
{
    lua_pushnumber(L, v);
    lua_setfield(L, -2, k);
}

static void set_bool(lua_State *L, const char *k, int v)
{
    lua_pushboolean(L, v);
    lua_setfield(L, -2, k);
}

static void push_node(lua_State *L, sl_repl_t *r, const sl_node_info_t *n)
{
    const char *target = sl_core_drain_target(r->core);
    lua_createtable(L, 0, 10);
    set_str(L, "id", n->id);
    set_str(L, "addr", n->addr);
    set_str(L, "liveness", sl_liveness_name(n->liveness));
    set_int(L, "maintainers", n->maintainers);
    set_int(L, "dispatchers", n->dispatchers);
    set_int(L, "inflight", n->inflight);
    set_int(L, "ops_from", n->ops_from);
    set_int(L, "ops_to", n->ops_to);
    set_bool(L, "is_coordinator", r->coordinator_node[0] && !strcmp(r->coordinator_node, n->id));
    set_bool(L, "is_drain_target", target && !strcmp(target, n->id));
}

static int f_nodes(lua_State *L)
{
    sl_repl_t *r = repl_of(L);
    size_t n = sl_core_node_count(r->core);
    lua_createtable(L, (int)(n < 1000000 ? n : 1000000), 0);
    for (size_t i = 0; i < n; i++) {
        sl_node_info_t info;
        if (sl_core_node_at(r->core, i, &info) != 0)
            continue;
        push_node(L, r, &info);
        lua_rawseti(L, -2, (lua_Integer)lua_rawlen(L, -2) + 1);
    }
    return 1;
}

static int f_node(lua_State *L)
{
    sl_repl_t *r = repl_of(L);
    const char *id = luaL_checkstring(L, 1);
    sl_node_info_t info;
    if (sl_core_node_info(r->core, id, &info) != 0) {
        lua_pushnil(L);
        lua_pushfstring(L, "no node '%s'", id);
        return 2;
    }
    push_node(L, r, &info);
    sl_drain_status_t s;
    if (sl_core_drain_status(r->core, id, repl_now(r), &s) == 0)
        set_str(L, "drain_state", sl_drain_state_name(s.state));
    return 1;
}

static void push_changefeed(lua_State *L, sl_repl_t *r, const char *id, const sl_task_info_t *t)
{
    lua_createtable(L, 0, 6);
    set_str(L, "changefeed_id", id);
    set_int(L, "table_count", t->weight);
    set_str(L, "maintainer_node", t->node);
    set_str(L, "state", t->remove_pending ? "removing" : sl_task_state_name(t->state));
    set_bool(L, "has_operator", t->has_operator);
    lua_newtable(L);
    size_t n = sl_core_changefeed_nodes(r->core, id);
    for (size_t i = 0; i < n; i++) {
        sl_node_count_t nc;
        if (sl_core_changefeed_node_at(r->core, id, i, &nc) == 0) {
            lua_pushinteger(L, nc.count);
            lua_setfield(L, -2, nc.node);
        }
    }
    lua_setfield(L, -2, "dispatchers_by_node");
}

static int f_changefeeds(lua_State *L)
{
    sl_repl_t *r = repl_of(L);
    lua_newtable(L);
    if (r->ops.changefeed_at == NULL)
        return 1;
    lua_Integer k = 0;
    for (size_t i = 0;; i++) {
        const char *id = r->ops.changefeed_at(r->ops.arg, i);
        if (id == NULL)
            break;
        sl_task_info_t t;
        if (sl_core_task_info(r->core, id, &t) != 0)
            continue;
        push_changefeed(L, r, id, &t);
        lua_rawseti(L, -2, ++k);
        if ((i & 255) == 255)
            check_deadline(L, session_of(L));
    }
    return 1;
}

static const char *reason_name(sl_reason_t s)
{
    switch (s) {
    case SL_REASON_BASIC: return "basic";
    case SL_REASON_DRAIN: return "drain";
    case SL_REASON_BALANCE: return "balance";
    }
    return "?";
}

static int f_operators(lua_State *L)
{
    sl_repl_t *r = repl_of(L);
    const char *filter = luaL_optstring(L, 1, NULL);
    int only_stuck = filter && !strcmp(filter, "stuck");
    if (filter && !only_stuck)
        return luaL_argerror(L, 1, "want \"stuck\" or nothing");
    lua_newtable(L);
    size_t n = sl_core_op_count(r->core);
    lua_Integer k = 0;
    for (size_t i = 0; i < n; i++) {
        sl_op_info_t op;
        if (sl_core_op_at(r->core, i, &op) != 0 || (only_stuck && !op.stuck))
            continue;
        lua_createtable(L, 0, 11);
        set_int(L, "id", (lua_Integer)op.id);
        set_str(L, "type", sl_op_type_name(op.type));
        set_str(L, "scheduler", reason_name(op.reason));
        set_str(L, "task", op.task);
        set_str(L, "from", op.from);
        set_str(L, "to", op.to);
        set_str(L, "step", op.step);
        set_int(L, "retries", op.retries);
        set_int(L, "deadline_ms", (lua_Integer)op.deadline_ms);
        set_bool(L, "stuck", op.stuck);
        if (op.reason_text && op.reason_text[0])
            set_str(L, "stuck_reason", op.reason_text);
        lua_rawseti(L, -2, ++k);
        if ((i & 255) == 255)
            check_deadline(L, session_of(L));
    }
    return 1;
}

static int f_drain_status(lua_State *L)
{
    sl_repl_t *r = repl_of(L);
    const char *id = luaL_optstring(L, 1, NULL);
    if (id == NULL)
        id = sl_core_drain_target(r->core);
    if (id == NULL) {
        lua_createtable(L, 0, 2);
        set_bool(L, "is_draining", 0);
        set_str(L, "state", "none");
        return 1;
    }
    sl_drain_status_t s;
    int rc = sl_core_drain_status(r->core, id, repl_now(r), &s);
    if (rc != 0)
        return luaL_error(L, "drain.status: no capture '%s'", id);
    lua_createtable(L, 0, 16);
    set_str(L, "capture_id", id);
    set_bool(L, "is_draining", s.is_draining);
    set_str(L, "draining_capture_id", s.target);
    set_int(L, "epoch", (lua_Integer)s.epoch);
    set_str(L, "state", sl_drain_state_name(s.state));
    set_int(L, "started_at_ms", (lua_Integer)s.started_at_ms);
    set_int(L, "initial_maintainer_count", s.initial_maintainers);
    set_int(L, "initial_dispatcher_count", s.initial_dispatchers);
    set_int(L, "remaining_maintainer_count", s.remaining_maintainers);
    set_int(L, "remaining_dispatcher_count", s.remaining_dispatchers);
    set_num(L, "progress", s.progress);
    set_num(L, "current_speed", s.speed);
    if (s.left_seconds >= 0)
        set_num(L, "left_seconds", s.left_seconds);
    if (s.blocked && s.blocked[0])
        set_str(L, "blocked", s.blocked);
    if (s.target && !strcmp(s.target, id)) {
        lua_newtable(L);
        size_t n = sl_core_drain_remaining_count(r->core);
        for (size_t i = 0; i < n; i++) {
            const char *cf;
            uint32_t c;
            if (sl_core_drain_remaining_at(r->core, i, &cf, &c) == 0) {
                lua_pushinteger(L, c);
                lua_setfield(L, -2, cf);
            }
        }
        lua_setfield(L, -2, "remaining_dispatchers_by_changefeed");
    }
    return 1;
}

static int f_drain_plan(lua_State *L)
{
    sl_repl_t *r = repl_of(L);
    const char *id = luaL_checkstring(L, 1);
    sl_node_info_t info;
    if (sl_core_node_info(r->core, id, &info) != 0)
        return luaL_error(L, "drain.plan: no capture '%s'", id);
    size_t max = (size_t)info.maintainers + info.dispatchers + 16, n = 0;
    /* as a userdata, so an error below cannot leak it */
    sl_plan_move_t *moves = lua_newuserdatauv(L, max * sizeof *moves, 0);
    int rc = sl_core_drain_plan(r->core, id, moves, max, &n);
    if (rc != 0)
        return luaL_error(L, "drain.plan: %s", sl_strerror(rc));
    lua_createtable(L, (int)n, 0);
    for (size_t i = 0; i < n; i++) {
        lua_createtable(L, 0, 2);
        set_str(L, "task", moves[i].task);
        set_str(L, "to", moves[i].to);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    return 1;
}

/* The API's error codes (D1, D3), for messages an operator recognises. */
static const char *drain_error(int rc, const char **code)
{
    switch (rc) {
    case SL_ENOENT: *code = "CAPTURE_NOT_FOUND"; return "no such capture";
    case SL_ENOTENOUGH: *code = "NOT_ENOUGH_CAPTURES"; return "a drain needs at least 2 alive captures";
    case SL_ECOORDINATOR: *code = "CANNOT_DRAIN_COORDINATOR"; return "it is the coordinator's own capture";
    case SL_EBUSY: *code = "DRAIN_IN_PROGRESS"; return "another capture is being drained";
    case SL_ESTOPPING: *code = "CAPTURE_STOPPING"; return "the capture is stopping (its drain completed)";
    case SL_ENOTREADY: *code = "NOT_READY"; return "the coordinator is still bootstrapping";
    case SL_EINVAL: *code = "NOT_DRAINING"; return "the capture is not being drained";
    case SL_EIO: *code = "STORE_ERROR"; return "the store could not write";
    default: *code = "INTERNAL"; return sl_strerror(rc);
    }
}

static int f_drain_start(lua_State *L)
{
    sl_repl_t *r = repl_of(L);
    const char *id = luaL_checkstring(L, 1);
    sl_drain_counts_t counts;
    memset(&counts, 0, sizeof counts);
    uint32_t left = budget_pause(session_of(L));
    int rc = r->ops.drain_start ? r->ops.drain_start(r->ops.arg, id, &counts)
                                : sl_core_drain_start(r->core, id, repl_now(r), &counts);
    budget_resume(session_of(L), left);
    if (rc != 0) {
        const char *code, *msg = drain_error(rc, &code);
        return luaL_error(L, "drain.start('%s'): %s: %s", id, code, msg);
    }
    lua_createtable(L, 0, 3);
    set_int(L, "current_maintainer_count", counts.maintainers);
    set_int(L, "current_dispatcher_count", counts.dispatchers);
    set_bool(L, "completed", counts.completed);
    return 1;
}

static int f_drain_cancel(lua_State *L)
{
    sl_repl_t *r = repl_of(L);
    const char *id = luaL_checkstring(L, 1);
    uint32_t left = budget_pause(session_of(L));
    int rc = r->ops.drain_cancel ? r->ops.drain_cancel(r->ops.arg, id)
                                 : sl_core_drain_cancel(r->core, id, repl_now(r));
    budget_resume(session_of(L), left);
    if (rc != 0) {
        const char *code, *msg = drain_error(rc, &code);
        return luaL_error(L, "drain.cancel('%s'): %s: %s", id, code, msg);
    }
    return f_drain_status(L);
}

static void iso_time(uint64_t ms, char *out, size_t len)
{
    time_t s = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&s, &tm);
    size_t n = strftime(out, len, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out + n, len - n, ".%03uZ", (unsigned)(ms % 1000));
}

static int f_policy_info(lua_State *L)
{
    sl_repl_t *r = repl_of(L);
    sl_core_stats_t st;
    sl_core_stats(r->core, &st);
    lua_createtable(L, 0, 12);
    if (r->reg) {
        sl_policy_info_t info;
        sl_policy_registry_info(r->reg, &info);
        set_str(L, "name", info.name);
        set_str(L, "file", info.file);
        set_str(L, "path", info.path);
        set_int(L, "version", (lua_Integer)info.version);
        if (info.loaded_at_ms) {
            char t[48];
            iso_time(info.loaded_at_ms, t, sizeof t);
            set_str(L, "loaded_at", t);
        }
        if (info.last_error[0])
            set_str(L, "last_error", info.last_error);
        set_int(L, "reloads", (lua_Integer)info.reloads);
        set_int(L, "reload_errors", (lua_Integer)info.reload_errors);
        set_bool(L, "watching", info.watching);
    } else {
        set_str(L, "name", "builtin");
        set_str(L, "file", "builtin");
        set_int(L, "version", 0);
    }
    set_int(L, "refusals", (lua_Integer)st.refusals);
    set_int(L, "fallbacks", (lua_Integer)st.fallbacks);
    set_int(L, "policy_calls", (lua_Integer)st.policy_calls);
    size_t n = sl_core_refusal_count(r->core);
    if (n > 0) {
        lua_createtable(L, (int)n, 0);
        for (size_t i = 0; i < n; i++) {
            lua_pushstring(L, sl_core_refusal_at(r->core, i));
            lua_rawseti(L, -2, (lua_Integer)i + 1);
        }
        lua_setfield(L, -2, "recent_refusals");
    }
    return 1;
}

static int f_policy_reload(lua_State *L)
{
    sl_repl_t *r = repl_of(L);
    if (r->reg == NULL)
        return luaL_error(L, "policy.reload: this coordinator runs the built-in policy; "
                             "there is no policy file to reload");
    char err[SL_ERRMSG_MAX + 64];
    uint32_t left = budget_pause(session_of(L));
    int rc = sl_policy_registry_reload(r->reg, err, sizeof err);
    budget_resume(session_of(L), left);
    if (rc < 0) {
        lua_pushstring(L, err);
        return lua_error(L);
    }
    return f_policy_info(L);
}

static const char help_text[] =
    "sluice REPL: Lua 5.4 evaluated inside the coordinator, with the policies' sandbox\n"
    "(memory cap, time budget per evaluation). Expressions print without `return`.\n"
    "\n"
    "inspect\n"
    "  nodes()              every node: liveness, maintainers, dispatchers, in-flight\n"
    "  node(id)             one node, with its drain state\n"
    "  changefeeds()        every changefeed: maintainer node, dispatchers by node\n"
    "  operators([\"stuck\"]) operators in progress (only the stuck ones, with reasons)\n"
    "  drain.status([id])   the drain of id (default: the running one), as GET .../drain\n"
    "  drain.plan(id)       the moves the live policy would make for id (changes nothing)\n"
    "  policy.info()        live policy: name, file, version, loaded_at, last_error, refusals\n"
    "steer (on purpose)\n"
    "  drain.start(id)      start draining node id (as PUT .../drain)\n"
    "  drain.cancel(id)     cancel it (as DELETE .../drain)\n"
    "  policy.reload()      load the policy file again (contract, selftest, then swap)\n"
    "session\n"
    "  reset()              start this session afresh: every global you set is gone\n"
    "\n"
    "Your globals are your own: every `sluice repl` has a session of its own, closed when\n"
    "it exits. Tab completes names; a line that does not finish a statement continues on\n"
    "the next; Ctrl-C drops the input typed so far.\n";

static void format_duration(uint64_t ms, char *out, size_t len);

static int f_help(lua_State *L)
{
    session_t *s = session_of(L);
    out_str(&s->out, help_text);
    if (s->id[0] == '\0') {
        out_str(&s->out, "This evaluation has no session: nothing it sets is kept.\n");
        return 0;
    }
    char idle[32];
    format_duration(s->repl->cfg.idle_ms, idle, sizeof idle);
    out_printf(&s->out,
               "This session (%.8s...) is also closed after %s idle, or for a new one when %zu "
               "are open and it is the longest idle.\n",
               s->id, idle, s->repl->cfg.max_sessions);
    return 0;
}

static int f_print(lua_State *L)
{
    session_t *s = session_of(L);
    int n = lua_gettop(L);
    for (int i = 1; i <= n; i++) {
        size_t len;
        const char *text = luaL_tolstring(L, i, &len);
        if (i > 1)
            out_add(&s->out, "\t", 1);
        out_add(&s->out, text, len);
        lua_pop(L, 1);
    }
    out_add(&s->out, "\n", 1);
    return 0;
}

/* The state cannot be closed while it runs: the evaluation swaps it once the chunk ends. */
static int f_reset(lua_State *L)
{
    session_t *s = session_of(L);
    if (lua_gettop(L) != 0)
        return luaL_error(L, "reset() takes no arguments");
    if (s->id[0] == '\0') {
        out_str(&s->out, "reset(): nothing to reset: an evaluation without a session "
                         "always starts from a fresh state\n");
        return 0;
    }
    s->reset_requested = 1;
    return 0;
}

static int setup_protected(lua_State *L)
{
    session_t *s = lua_touserdata(L, 1);
    lua_settop(L, 0);
    lua_pushglobaltable(L);
    static const luaL_Reg globals[] = {
        {"nodes", f_nodes}, {"node", f_node}, {"changefeeds", f_changefeeds},
        {"operators", f_operators}, {"help", f_help}, {"print", f_print}, {"log", f_print},
        {"reset", f_reset}, {NULL, NULL},
    };
    static const luaL_Reg drain[] = {
        {"status", f_drain_status}, {"plan", f_drain_plan}, {"start", f_drain_start},
        {"cancel", f_drain_cancel}, {NULL, NULL},
    };
    static const luaL_Reg policy[] = {
        {"info", f_policy_info}, {"reload", f_policy_reload}, {NULL, NULL},
    };
    lua_pushlightuserdata(L, s);
    luaL_setfuncs(L, globals, 1);
    lua_newtable(L);
    lua_pushlightuserdata(L, s);
    luaL_setfuncs(L, drain, 1);
    lua_setfield(L, 1, "drain");
    lua_newtable(L);
    lua_pushlightuserdata(L, s);
    luaL_setfuncs(L, policy, 1);
    lua_setfield(L, 1, "policy");
    return 0;
}

/* ---- sessions ------------------------------------------------------------------------- */

static uint64_t mono_ms(void *arg)
{
    (void)arg;
    return mono_ns() / 1000000u;
}

static uint64_t session_clock(const sl_repl_t *r)
{
    return r->cfg.clock_ms(r->cfg.clock_arg);
}

/* A sandbox with the REPL's functions bound to `s`. Returns 0 or a code with err set. */
static int sandbox_build(session_t *s, sl_sandbox_t **out, char *err, size_t errlen)
{
    *out = NULL;
    sl_sandbox_t *sb = calloc(1, sizeof *sb);
    if (sb == NULL) {
        snprintf(err, errlen, "out of memory");
        return SL_ENOMEM;
    }
    char msg[SL_ERRMSG_MAX];
    int rc = sl_policy_sandbox_open(sb, s->repl->mem_cap, "repl", msg, sizeof msg);
    if (rc != 0) {
        snprintf(err, errlen, "%s", msg);
        free(sb);
        return rc;
    }
    lua_State *L = sb->L;
    sl_policy_sandbox_arm(sb, "setup", 1000);
    lua_pushcfunction(L, setup_protected);
    lua_pushlightuserdata(L, s);
    int status = lua_pcall(L, 1, 0, 0);
    sl_policy_sandbox_disarm(sb);
    if (status != LUA_OK) {
        snprintf(err, errlen, "setup: %s",
                 lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "unknown error");
        sl_policy_sandbox_close(sb);
        free(sb);
        return SL_ENOMEM;
    }
    lua_settop(L, 0);
    *out = sb;
    return 0;
}

static void sandbox_destroy(sl_sandbox_t *sb)
{
    if (sb == NULL)
        return;
    sl_policy_sandbox_close(sb);
    free(sb);
}

static int session_create(sl_repl_t *r, const char *id, session_t **out, char *err, size_t errlen)
{
    *out = NULL;
    session_t *s = calloc(1, sizeof *s);
    if (s == NULL) {
        snprintf(err, errlen, "out of memory");
        return SL_ENOMEM;
    }
    s->repl = r;
    snprintf(s->id, sizeof s->id, "%s", id ? id : "");
    int rc = sandbox_build(s, &s->sb, err, errlen);
    if (rc != 0) {
        free(s);
        return rc;
    }
    *out = s;
    return 0;
}

static void session_destroy(session_t *s)
{
    if (s == NULL)
        return;
    sandbox_destroy(s->sb);
    free(s->out.s);
    free(s);
}

/* reset(): the new state is built beside the old one, so a failure keeps the old. */
static int session_rebuild(session_t *s, char *err, size_t errlen)
{
    sl_sandbox_t *fresh;
    int rc = sandbox_build(s, &fresh, err, errlen);
    if (rc != 0)
        return rc;
    sandbox_destroy(s->sb);
    s->sb = fresh;
    return 0;
}

static session_t *session_find(const sl_repl_t *r, const char *id, size_t *at)
{
    for (size_t i = 0; i < r->nsessions; i++)
        if (strcmp(r->sessions[i]->id, id) == 0) {
            if (at)
                *at = i;
            return r->sessions[i];
        }
    return NULL;
}

static void session_remove(sl_repl_t *r, size_t i, gone_t why)
{
    session_t *s = r->sessions[i];
    snprintf(r->gone[r->gone_next].id, sizeof r->gone[r->gone_next].id, "%s", s->id);
    r->gone[r->gone_next].why = why;
    r->gone_next = (r->gone_next + 1) % REPL_GONE_REMEMBERED;
    memmove(&r->sessions[i], &r->sessions[i + 1], (r->nsessions - i - 1) * sizeof *r->sessions);
    r->nsessions--;
    session_destroy(s);
}

/* The open session unused the longest (the first opened among equals). */
static size_t session_longest_idle(const sl_repl_t *r)
{
    size_t best = 0;
    for (size_t i = 1; i < r->nsessions; i++)
        if (r->sessions[i]->last_used_ms < r->sessions[best]->last_used_ms)
            best = i;
    return best;
}

/* 128 bits from the kernel: an id another client cannot guess or collide with. */
static int random_id(char id[SL_REPL_ID_SIZE])
{
    unsigned char raw[SL_REPL_ID_LEN / 2];
    size_t got = 0;
    while (got < sizeof raw) {
        ssize_t n = getrandom(raw + got, sizeof raw - got, 0);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return SL_EIO;
        }
        got += (size_t)n;
    }
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < sizeof raw; i++) {
        id[2 * i] = hex[raw[i] >> 4];
        id[2 * i + 1] = hex[raw[i] & 15];
    }
    id[SL_REPL_ID_LEN] = '\0';
    return 0;
}

static void format_duration(uint64_t ms, char *out, size_t len)
{
    if (ms % 3600000u == 0)
        snprintf(out, len, "%" PRIu64 " h", ms / 3600000u);
    else if (ms % 60000u == 0)
        snprintf(out, len, "%" PRIu64 " min", ms / 60000u);
    else if (ms % 1000u == 0)
        snprintf(out, len, "%" PRIu64 " s", ms / 1000u);
    else
        snprintf(out, len, "%" PRIu64 " ms", ms);
}

int sl_repl_new(sl_core_t *core, sl_policy_registry_t *reg, const sl_repl_ops_t *ops,
                const sl_policy_limits_t *lim, sl_repl_t **out, char *err, size_t errlen)
{
    *out = NULL;
    sl_policy_limits_t d;
    sl_policy_limits_default(&d);
    sl_repl_t *r = calloc(1, sizeof *r);
    if (r == NULL) {
        snprintf(err, errlen, "repl: out of memory");
        return SL_ENOMEM;
    }
    r->core = core;
    r->reg = reg;
    if (ops) {
        r->ops = *ops;
        snprintf(r->coordinator_node, sizeof r->coordinator_node, "%s",
                 ops->coordinator_node ? ops->coordinator_node : "");
    }
    r->ops.coordinator_node = NULL; /* the copy above is used */
    r->budget_ms = lim && lim->call_budget_ms ? lim->call_budget_ms : d.call_budget_ms;
    r->mem_cap = lim && lim->memory_bytes ? lim->memory_bytes : d.memory_bytes;
    int rc = sl_repl_configure_sessions(r, NULL);
    if (rc != 0) {
        snprintf(err, errlen, "repl: out of memory");
        sl_repl_free(r);
        return rc;
    }
    /* one state built and closed now: a cap too small is said at start, not to the
     * first operator */
    session_t *probe = NULL;
    char msg[SL_ERRMSG_MAX];
    if ((rc = session_create(r, NULL, &probe, msg, sizeof msg)) != 0) {
        snprintf(err, errlen, "repl: %s", msg);
        sl_repl_free(r);
        return rc;
    }
    session_destroy(probe);
    *out = r;
    return 0;
}

void sl_repl_free(sl_repl_t *r)
{
    if (r == NULL)
        return;
    for (size_t i = 0; i < r->nsessions; i++)
        session_destroy(r->sessions[i]);
    free(r->sessions);
    free(r);
}

int sl_repl_configure_sessions(sl_repl_t *r, const sl_repl_sessions_config_t *cfg)
{
    sl_repl_sessions_config_t c = {0, 0, NULL, NULL};
    if (cfg)
        c = *cfg;
    if (c.max_sessions == 0)
        c.max_sessions = SL_REPL_SESSIONS_DEFAULT;
    if (c.max_sessions > SL_REPL_SESSIONS_LIMIT)
        return SL_EINVAL;
    if (c.idle_ms == 0)
        c.idle_ms = SL_REPL_IDLE_MS_DEFAULT;
    if (c.clock_ms == NULL) {
        c.clock_ms = mono_ms;
        c.clock_arg = NULL;
    }
    if (r->sessions == NULL || c.max_sessions != r->cfg.max_sessions) {
        int growing = r->sessions == NULL || c.max_sessions > r->cfg.max_sessions;
        while (r->nsessions > c.max_sessions) /* before the array shrinks under them */
            session_remove(r, session_longest_idle(r), GONE_EVICTED);
        session_t **arr = realloc(r->sessions, c.max_sessions * sizeof *arr);
        if (arr == NULL && growing)
            return SL_ENOMEM;
        if (arr != NULL) /* else a smaller array could not be had: the larger one serves */
            r->sessions = arr;
    }
    r->cfg = c;
    return 0;
}

size_t sl_repl_sweep(sl_repl_t *r)
{
    uint64_t now = session_clock(r);
    size_t closed = 0;
    for (size_t i = 0; i < r->nsessions;) {
        uint64_t used = r->sessions[i]->last_used_ms;
        if (now > used && now - used > r->cfg.idle_ms) {
            session_remove(r, i, GONE_IDLE);
            closed++;
        } else {
            i++;
        }
    }
    return closed;
}

int sl_repl_session_open(sl_repl_t *r, char id[SL_REPL_ID_SIZE], char *err, size_t errlen)
{
    id[0] = '\0';
    sl_repl_sweep(r);
    char fresh[SL_REPL_ID_SIZE];
    do {
        if (random_id(fresh) != 0) {
            snprintf(err, errlen, "no random bytes for a session id: %s", strerror(errno));
            return SL_EIO;
        }
    } while (session_find(r, fresh, NULL) != NULL);
    session_t *s;
    char msg[SL_ERRMSG_MAX];
    int rc = session_create(r, fresh, &s, msg, sizeof msg);
    if (rc != 0) {
        snprintf(err, errlen, "cannot open a REPL session: %s", msg);
        return rc;
    }
    if (r->nsessions == r->cfg.max_sessions)
        session_remove(r, session_longest_idle(r), GONE_EVICTED);
    s->last_used_ms = session_clock(r);
    r->sessions[r->nsessions++] = s;
    memcpy(id, fresh, SL_REPL_ID_SIZE);
    return 0;
}

int sl_repl_session_close(sl_repl_t *r, const char *id)
{
    size_t at;
    if (id == NULL || session_find(r, id, &at) == NULL)
        return SL_ENOENT;
    session_remove(r, at, GONE_CLOSED);
    return 0;
}

size_t sl_repl_session_count(const sl_repl_t *r)
{
    return r->nsessions;
}

void sl_repl_session_gone(const sl_repl_t *r, const char *id, char *out, size_t outlen)
{
    char idle[32];
    format_duration(r->cfg.idle_ms, idle, sizeof idle);
    const char *shown = id && strlen(id) == SL_REPL_ID_LEN ? id : "(malformed id)";
    gone_t why = 0;
    for (size_t i = 0; id && i < REPL_GONE_REMEMBERED; i++)
        if (r->gone[i].why && strcmp(r->gone[i].id, id) == 0)
            why = r->gone[i].why; /* ids never repeat: at most one entry matches */
    switch (why) {
    case GONE_IDLE:
        snprintf(out, outlen, "REPL session %s was closed after %s idle", shown, idle);
        break;
    case GONE_EVICTED:
        snprintf(out, outlen,
                 "REPL session %s was closed to make room for a newer one (at most %zu are "
                 "open; the longest idle goes first)",
                 shown, r->cfg.max_sessions);
        break;
    case GONE_CLOSED:
        snprintf(out, outlen, "REPL session %s was closed by its client", shown);
        break;
    default:
        snprintf(out, outlen,
                 "no REPL session %s (sessions close after %s idle or when the coordinator "
                 "restarts)",
                 shown, idle);
    }
}

/* ---- completion ----------------------------------------------------------------------- */

typedef struct {
    const char *prefix;
    char **m;
    size_t n, cap;
    int oom;
} complete_t;

static int is_ident_char(char c)
{
    return isalnum((unsigned char)c) || c == '_';
}

static int match_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int complete_protected(lua_State *L)
{
    complete_t *c = lua_touserdata(L, 1);
    lua_settop(L, 0);
    const char *p = c->prefix;
    size_t plen = strlen(p);
    /* the expression being completed: the trailing run of names, '.' and ':' */
    size_t start = plen;
    while (start > 0 && (is_ident_char(p[start - 1]) || p[start - 1] == '.' || p[start - 1] == ':'))
        start--;
    const char *expr = p + start;
    const char *last = NULL;
    for (const char *q = expr; *q; q++)
        if (*q == '.' || *q == ':')
            last = q;
    lua_pushglobaltable(L);
    const char *partial = expr;
    if (last != NULL) {
        /* walk the path to the table whose fields complete the partial name */
        const char *seg = expr;
        while (seg < last) {
            const char *end = seg;
            while (end < last && *end != '.' && *end != ':')
                end++;
            if (end == seg || lua_type(L, -1) != LUA_TTABLE)
                return 0;
            lua_pushlstring(L, seg, (size_t)(end - seg));
            lua_rawget(L, -2);
            lua_remove(L, -2);
            seg = end + 1;
        }
        if (lua_type(L, -1) != LUA_TTABLE)
            return 0;
        partial = last + 1;
    }
    size_t partlen = strlen(partial);
    lua_pushnil(L);
    while (lua_next(L, -2) != 0) {
        lua_pop(L, 1);
        if (lua_type(L, -1) != LUA_TSTRING)
            continue;
        size_t klen;
        const char *k = lua_tolstring(L, -1, &klen);
        if (!is_identifier(k, klen) || klen < partlen || memcmp(k, partial, partlen) != 0)
            continue;
        if (c->n == REPL_MATCHES_MAX)
            continue;
        if (c->n == c->cap) {
            size_t cap = c->cap ? c->cap * 2 : 16;
            char **nm = realloc(c->m, cap * sizeof *nm);
            if (nm == NULL) {
                c->oom = 1;
                return 0;
            }
            c->m = nm;
            c->cap = cap;
        }
        size_t head = (size_t)(partial - p);
        char *s = malloc(head + klen + 1);
        if (s == NULL) {
            c->oom = 1;
            return 0;
        }
        memcpy(s, p, head);
        memcpy(s + head, k, klen);
        s[head + klen] = '\0';
        c->m[c->n++] = s;
    }
    return 0;
}

static int session_complete(session_t *s, const char *prefix, char ***matches, size_t *n)
{
    complete_t c = {prefix ? prefix : "", NULL, 0, 0, 0};
    lua_State *L = s->sb->L;
    lua_settop(L, 0);
    sl_policy_sandbox_arm(s->sb, "completion", s->repl->budget_ms);
    lua_pushcfunction(L, complete_protected);
    lua_pushlightuserdata(L, &c);
    int status = lua_pcall(L, 1, 0, 0);
    sl_policy_sandbox_disarm(s->sb);
    lua_settop(L, 0);
    if (status != LUA_OK || c.oom) {
        sl_repl_matches_free(c.m, c.n);
        return SL_ENOMEM;
    }
    if (c.n > 1)
        qsort(c.m, c.n, sizeof *c.m, match_cmp);
    *matches = c.m;
    *n = c.n;
    return 0;
}

/* The session `id` names, touched (it is in use now), or a fresh one-shot when id is
 * NULL. Returns 0, SL_ENOENT, or SL_ENOMEM. */
static int session_for_request(sl_repl_t *r, const char *id, session_t **out)
{
    *out = NULL;
    sl_repl_sweep(r);
    if (id == NULL) {
        char err[SL_ERRMSG_MAX];
        return session_create(r, NULL, out, err, sizeof err) == 0 ? 0 : SL_ENOMEM;
    }
    session_t *s = session_find(r, id, NULL);
    if (s == NULL)
        return SL_ENOENT;
    s->last_used_ms = session_clock(r);
    *out = s;
    return 0;
}

/* Idle time counts from the end of a request, not its start. */
static void session_after_request(sl_repl_t *r, session_t *s)
{
    if (s->id[0])
        s->last_used_ms = session_clock(r);
    else
        session_destroy(s);
}

int sl_repl_eval(sl_repl_t *r, const char *session, const char *chunk, char **output,
                 int *incomplete)
{
    *output = NULL;
    *incomplete = 0;
    session_t *s;
    int rc = session_for_request(r, session, &s);
    if (rc != 0)
        return rc;
    rc = session_eval(s, chunk, output, incomplete);
    session_after_request(r, s);
    return rc;
}

int sl_repl_complete(sl_repl_t *r, const char *session, const char *prefix, char ***matches,
                     size_t *n)
{
    *matches = NULL;
    *n = 0;
    session_t *s;
    int rc = session_for_request(r, session, &s);
    if (rc != 0)
        return rc;
    rc = session_complete(s, prefix, matches, n);
    session_after_request(r, s);
    return rc;
}

void sl_repl_matches_free(char **matches, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(matches[i]);
    free(matches);
}

/* ---- HTTP ------------------------------------------------------------------------------- */

static int is_session_id(const char *s)
{
    if (strlen(s) != SL_REPL_ID_LEN)
        return 0;
    for (const char *p = s; *p; p++)
        if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f')))
            return 0;
    return 1;
}

/* The "session" field: absent (*id NULL), "new" (*open 1) or a well-formed id. Returns 0,
 * or -1 with a 400 answered. */
static int session_field(json_t *body, int allow_new, const char **id, int *open,
                         sl_http_response_t *res)
{
    *id = NULL;
    *open = 0;
    json_t *v = json_object_get(body, "session");
    if (v == NULL || json_is_null(v))
        return 0;
    const char *s = json_string_value(v);
    if (s && allow_new && strcmp(s, "new") == 0) {
        *open = 1;
        return 0;
    }
    if (s && is_session_id(s)) {
        *id = s;
        return 0;
    }
    sl_http_respond_error(res, 400, "INVALID_ARGUMENT",
                          "\"session\" must be %sthe id (%d hex digits) an earlier answer gave",
                          allow_new ? "\"new\" or " : "", SL_REPL_ID_LEN);
    return -1;
}

/* The API's error shape, plus "reason" (why alone) for a client that opens another
 * session by itself and only wants to say why. */
static void respond_gone(sl_repl_t *r, const char *id, sl_http_response_t *res)
{
    char why[SL_ERRMSG_MAX], msg[SL_ERRMSG_MAX + 64];
    sl_repl_session_gone(r, id, why, sizeof why);
    snprintf(msg, sizeof msg, "%s; open another with \"session\": \"new\"", why);
    sl_http_respond_json(res, 404, json_pack("{s:s,s:s,s:s}", "error_code", "SESSION_NOT_FOUND",
                                             "error_msg", msg, "reason", why));
}

void sl_repl_http_eval(void *repl, const sl_http_request_t *req, sl_http_response_t *res)
{
    sl_repl_t *r = repl;
    json_t *body = sl_http_body_json(req, res);
    if (body == NULL)
        return;
    const char *id;
    int open;
    if (session_field(body, 1, &id, &open, res) != 0)
        goto done;
    json_t *code = json_object_get(body, "code");
    json_t *close_field = json_object_get(body, "close");
    if (close_field != NULL && !json_is_boolean(close_field)) {
        sl_http_respond_error(res, 400, "INVALID_ARGUMENT", "\"close\" must be true or false");
        goto done;
    }
    if (json_is_true(close_field)) {
        if (id == NULL || code != NULL) {
            sl_http_respond_error(res, 400, "INVALID_ARGUMENT",
                                  "want {\"session\": \"<id>\", \"close\": true} and no code");
            goto done;
        }
        if (sl_repl_session_close(r, id) != 0)
            respond_gone(r, id, res);
        else
            sl_http_respond_json(res, 200, json_pack("{s:s,s:b}", "session", id, "closed", 1));
        goto done;
    }
    if (!json_is_string(code)) {
        sl_http_respond_error(res, 400, "INVALID_ARGUMENT",
                              "want {\"code\": \"<Lua>\", \"session\": \"new\" | \"<id>\"}");
        goto done;
    }
    char opened[SL_REPL_ID_SIZE];
    if (open) {
        char err[SL_ERRMSG_MAX];
        int rc = sl_repl_session_open(r, opened, err, sizeof err);
        if (rc != 0) {
            sl_http_respond_error(res, 500, "INTERNAL", "%s", err);
            goto done;
        }
        id = opened;
    }
    char *output = NULL;
    int incomplete = 0;
    int rc = sl_repl_eval(r, id, json_string_value(code), &output, &incomplete);
    if (rc == SL_ENOENT) {
        respond_gone(r, id, res);
        goto done;
    }
    if (output == NULL) {
        if (open) /* its id never reaches the client: do not let it wait for the idle limit */
            sl_repl_session_close(r, id);
        sl_http_respond_error(res, 500, "INTERNAL", "the REPL ran out of memory");
        goto done;
    }
    json_t *answer = json_pack("{s:s,s:b,s:b}", "output", output, "incomplete", incomplete,
                               "error", rc == SL_EPOLICY);
    if (answer && id)
        json_object_set_new(answer, "session", json_string(id));
    sl_http_respond_json(res, 200, answer);
    free(output);
done:
    json_decref(body);
}

void sl_repl_http_complete(void *repl, const sl_http_request_t *req, sl_http_response_t *res)
{
    sl_repl_t *r = repl;
    json_t *body = sl_http_body_json(req, res);
    if (body == NULL)
        return;
    const char *id;
    int open;
    if (session_field(body, 0, &id, &open, res) != 0)
        goto done;
    json_t *prefix = json_object_get(body, "prefix");
    if (!json_is_string(prefix)) {
        sl_http_respond_error(res, 400, "INVALID_ARGUMENT",
                              "want {\"prefix\": \"<text>\", \"session\": \"<id>\"}");
        goto done;
    }
    char **m = NULL;
    size_t n = 0;
    int rc = sl_repl_complete(r, id, json_string_value(prefix), &m, &n);
    if (rc == SL_ENOENT) {
        respond_gone(r, id, res);
        goto done;
    }
    if (rc != 0) {
        sl_http_respond_error(res, 500, "INTERNAL", "the REPL ran out of memory");
        goto done;
    }
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++) {
        char *clean = utf8_clean(m[i], strlen(m[i]));
        if (clean)
            json_array_append_new(arr, json_string(clean));
        free(clean);
    }
    sl_repl_matches_free(m, n);
    sl_http_respond_json(res, 200, json_pack("{s:o}", "matches", arr));
done:
    json_decref(body);
}
