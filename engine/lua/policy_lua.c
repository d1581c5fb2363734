/* policy_lua.c — `sluice.policy`: policies as Lua userdata, so specs drive the real seam
 * (P1–P3). Every call goes through ops->place / ops->drain_order with C structs built
 * from the Lua arguments, exactly as the core calls them.
 *
 *   sluice.policy.load(path [, limits])             -> policy | nil, err
 *   sluice.policy.load_string(src, chunkname [, limits]) -> policy | nil, err
 *   sluice.policy.builtin()                         -> policy
 *   sluice.policy.check(path [, limits])            -> summary | nil, err  (`policy check`)
 *   limits = {memory_bytes=, call_budget_ms=, load_budget_ms=}
 *   p:name() p:file() p:has_drain_order() p:close()
 *   p:place(tasks, nodes, ctx) -> {decisions={[task]=node}, errors={[task]=msg},
 *                                  unasked=n, error=msg|nil}
 *   p:drain_order(tasks, ctx)  -> {task ids...} | nil, err
 *
 * The userdata holds a pointer that is NULL once closed; every method checks it. */
#include <lauxlib.h>
#include <lua.h>
#include <string.h>

#include "luamod.h"

typedef struct {
    sl_policy_t *p;
    int borrowers; /* cores that place with it; an explicit close waits for them */
} policy_ud_t;

static policy_ud_t *check_ud(lua_State *L, int idx)
{
    return luaL_checkudata(L, idx, SL_POLICY_MT);
}

sl_policy_t *sl_luamod_check_policy(lua_State *L, int idx)
{
    policy_ud_t *ud = check_ud(L, idx);
    if (ud->p == NULL)
        luaL_error(L, "policy is closed");
    return ud->p;
}

/* The userdata is made before the policy, so nothing can raise between a successful
 * load and the policy being owned by Lua (it would leak). */
static policy_ud_t *new_ud(lua_State *L)
{
    luaL_checkstack(L, 4, NULL);
    policy_ud_t *ud = lua_newuserdatauv(L, sizeof *ud, 0);
    ud->p = NULL;
    ud->borrowers = 0;
    luaL_setmetatable(L, SL_POLICY_MT);
    return ud;
}

static void opt_limits(lua_State *L, int idx, sl_policy_limits_t *lim)
{
    memset(lim, 0, sizeof *lim); /* zero fields take the defaults */
    if (lua_isnoneornil(L, idx))
        return;
    luaL_checktype(L, idx, LUA_TTABLE);
    if (lua_getfield(L, idx, "memory_bytes") != LUA_TNIL)
        lim->memory_bytes = (size_t)luaL_checkinteger(L, -1);
    lua_pop(L, 1);
    if (lua_getfield(L, idx, "call_budget_ms") != LUA_TNIL)
        lim->call_budget_ms = (uint32_t)luaL_checkinteger(L, -1);
    lua_pop(L, 1);
    if (lua_getfield(L, idx, "load_budget_ms") != LUA_TNIL)
        lim->load_budget_ms = (uint32_t)luaL_checkinteger(L, -1);
    lua_pop(L, 1);
}

static int load_result(lua_State *L, policy_ud_t *ud, int rc, sl_policy_t *p, const char *err)
{
    if (rc != 0) {
        lua_pop(L, 1);
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
    ud->p = p;
    return 1;
}

static int l_load(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    sl_policy_limits_t lim;
    opt_limits(L, 2, &lim);
    policy_ud_t *ud = new_ud(L);
    char err[SL_ERRMSG_MAX];
    sl_policy_t *p = NULL;
    int rc = sl_policy_lua_load(path, &lim, &p, err, sizeof err);
    return load_result(L, ud, rc, p, err);
}

static int l_load_string(lua_State *L)
{
    size_t len;
    const char *src = luaL_checklstring(L, 1, &len);
    const char *chunkname = luaL_optstring(L, 2, "=policy");
    sl_policy_limits_t lim;
    opt_limits(L, 3, &lim);
    policy_ud_t *ud = new_ud(L);
    char err[SL_ERRMSG_MAX];
    sl_policy_t *p = NULL;
    int rc = sl_policy_lua_load_string(src, len, chunkname, &lim, &p, err, sizeof err);
    return load_result(L, ud, rc, p, err);
}

static int l_builtin(lua_State *L)
{
    policy_ud_t *ud = new_ud(L);
    if (sl_policy_builtin_new(&ud->p) != 0)
        return luaL_error(L, "out of memory");
    return 1;
}

static int l_check(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    sl_policy_limits_t lim;
    opt_limits(L, 2, &lim);
    char summary[2048], err[SL_ERRMSG_MAX * 2];
    if (sl_policy_check_file(path, &lim, summary, sizeof summary, err, sizeof err) != 0) {
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
    lua_pushstring(L, summary);
    return 1;
}

static int l_name(lua_State *L)
{
    lua_pushstring(L, sl_luamod_check_policy(L, 1)->name);
    return 1;
}

static int l_file(lua_State *L)
{
    lua_pushstring(L, sl_luamod_check_policy(L, 1)->file);
    return 1;
}

static int l_has_drain_order(lua_State *L)
{
    lua_pushboolean(L, sl_luamod_check_policy(L, 1)->ops->drain_order != NULL);
    return 1;
}

void sl_luamod_policy_borrow(lua_State *L, int idx, int delta)
{
    policy_ud_t *ud = check_ud(L, idx);
    ud->borrowers += delta;
}

/* A collected policy is unreachable from any core too (a core holds its policy as its
 * user value), so collection frees it whatever the borrow count says. */
static int l_gc(lua_State *L)
{
    policy_ud_t *ud = check_ud(L, 1);
    sl_policy_t *p = ud->p;
    ud->p = NULL;
    sl_policy_free(p);
    return 0;
}

/* p:close() — refused while a core places with the policy: the core would be left with a
 * freed pointer. */
static int l_close(lua_State *L)
{
    policy_ud_t *ud = check_ud(L, 1);
    if (ud->borrowers > 0)
        return luaL_error(L, "policy is in use by %d core(s): give them another policy first",
                          ud->borrowers);
    return l_gc(L);
}


static int l_tostring(lua_State *L)
{
    policy_ud_t *ud = check_ud(L, 1);
    if (ud->p == NULL)
        lua_pushliteral(L, "sluice.policy (closed)");
    else
        lua_pushfstring(L, "sluice.policy %s (%s)", ud->p->name, ud->p->file);
    return 1;
}

/* ---- Lua tables -> the C structs of policy.h ----------------------------------------
 * Arrays live in userdata on the stack, so a Lua error while converting leaks nothing;
 * strings point into the argument tables, which stay on the stack during the call. */

static const char *field_string(lua_State *L, int tbl, const char *name, int required,
                                const char *what, lua_Integer i)
{
    lua_pushstring(L, name);
    int t = lua_rawget(L, tbl); /* raw: a string made by __index would not stay anchored */
    if (t == LUA_TNIL && !required) {
        lua_pop(L, 1);
        return NULL;
    }
    if (t != LUA_TSTRING)
        luaL_error(L, "%s[%d].%s must be a string", what, (int)i, name);
    const char *s = lua_tostring(L, -1);
    lua_pop(L, 1); /* still referenced by the table */
    return s;
}

static uint32_t field_u32(lua_State *L, int tbl, const char *name, uint32_t dflt)
{
    lua_Integer v = dflt;
    lua_pushstring(L, name);
    if (lua_rawget(L, tbl) != LUA_TNIL) {
        int ok;
        v = lua_tointegerx(L, -1, &ok);
        if (!ok || v < 0 || v > (lua_Integer)UINT32_MAX)
            luaL_error(L, "field '%s' must be a non-negative integer", name);
    }
    lua_pop(L, 1);
    return (uint32_t)v;
}

static sl_place_task_t *to_tasks(lua_State *L, int idx, size_t *n)
{
    luaL_checktype(L, idx, LUA_TTABLE);
    *n = (size_t)lua_rawlen(L, idx);
    sl_place_task_t *tasks = lua_newuserdatauv(L, (*n ? *n : 1) * sizeof *tasks, 0);
    for (size_t i = 0; i < *n; i++) {
        lua_rawgeti(L, idx, (lua_Integer)i + 1);
        int t = lua_gettop(L);
        luaL_checktype(L, t, LUA_TTABLE);
        sl_place_task_t *k = &tasks[i];
        k->id = field_string(L, t, "id", 1, "tasks", (lua_Integer)i + 1);
        const char *kind = field_string(L, t, "kind", 0, "tasks", (lua_Integer)i + 1);
        k->kind = kind != NULL && strcmp(kind, "dispatcher") == 0 ? SL_TASK_DISPATCHER
                                                                   : SL_TASK_MAINTAINER;
        k->changefeed = field_string(L, t, "changefeed", 0, "tasks", (lua_Integer)i + 1);
        if (k->changefeed == NULL)
            k->changefeed = k->id;
        k->from = field_string(L, t, "from", 0, "tasks", (lua_Integer)i + 1);
        k->weight = field_u32(L, t, "weight", 1);
        lua_pop(L, 1);
    }
    return tasks;
}

static size_t count_labels(lua_State *L, int node)
{
    size_t count = 0;
    lua_pushliteral(L, "labels");
    if (lua_rawget(L, node) == LUA_TTABLE) {
        lua_pushnil(L);
        while (lua_next(L, -2) != 0) {
            count++;
            lua_pop(L, 1);
        }
    }
    lua_pop(L, 1);
    return count;
}

static sl_place_node_t *to_nodes(lua_State *L, int idx, size_t *n)
{
    luaL_checktype(L, idx, LUA_TTABLE);
    *n = (size_t)lua_rawlen(L, idx);
    size_t nlabels = 0;
    for (size_t i = 0; i < *n; i++) {
        if (lua_rawgeti(L, idx, (lua_Integer)i + 1) != LUA_TTABLE)
            luaL_error(L, "nodes[%d] must be a table", (int)i + 1);
        nlabels += count_labels(L, lua_gettop(L));
        lua_pop(L, 1);
    }
    sl_place_node_t *nodes = lua_newuserdatauv(L, (*n ? *n : 1) * sizeof *nodes, 0);
    sl_label_t *labels = lua_newuserdatauv(L, (nlabels ? nlabels : 1) * sizeof *labels, 0);
    size_t used = 0;
    for (size_t i = 0; i < *n; i++) {
        lua_rawgeti(L, idx, (lua_Integer)i + 1);
        int t = lua_gettop(L);
        sl_place_node_t *nd = &nodes[i];
        nd->id = field_string(L, t, "id", 1, "nodes", (lua_Integer)i + 1);
        nd->maintainers = field_u32(L, t, "maintainers", 0);
        nd->dispatchers = field_u32(L, t, "dispatchers", 0);
        nd->inflight = field_u32(L, t, "inflight", 0);
        nd->labels = labels + used;
        nd->nlabels = 0;
        lua_pushliteral(L, "labels");
        if (lua_rawget(L, t) == LUA_TTABLE) {
            lua_pushnil(L);
            while (lua_next(L, -2) != 0) {
                if (used < nlabels && lua_type(L, -2) == LUA_TSTRING &&
                    lua_type(L, -1) == LUA_TSTRING) {
                    labels[used].key = lua_tostring(L, -2);
                    labels[used].value = lua_tostring(L, -1);
                    used++;
                    nd->nlabels++;
                }
                lua_pop(L, 1);
            }
        }
        lua_pop(L, 2); /* labels, node */
    }
    return nodes; /* both arrays stay on the stack for the call */
}

static void to_ctx(lua_State *L, int idx, sl_place_ctx_t *ctx)
{
    memset(ctx, 0, sizeof *ctx);
    ctx->reason = SL_REASON_BASIC;
    if (lua_isnoneornil(L, idx))
        return;
    luaL_checktype(L, idx, LUA_TTABLE);
    const char *reason = field_string(L, idx, "reason", 0, "ctx", 0);
    if (reason != NULL && strcmp(reason, "drain") == 0)
        ctx->reason = SL_REASON_DRAIN;
    else if (reason != NULL && strcmp(reason, "balance") == 0)
        ctx->reason = SL_REASON_BALANCE;
    ctx->drain_target = field_string(L, idx, "drain_target", 0, "ctx", 0);
    ctx->batch_limit = field_u32(L, idx, "batch_limit", 0);
    if (lua_getfield(L, idx, "now_ms") != LUA_TNIL)
        ctx->now_ms = (uint64_t)luaL_checkinteger(L, -1);
    lua_pop(L, 1);
}

static int l_place(lua_State *L)
{
    sl_policy_t *p = sl_luamod_check_policy(L, 1);
    size_t ntasks, nnodes;
    sl_place_ctx_t ctx;
    to_ctx(L, 4, &ctx);
    sl_place_task_t *tasks = to_tasks(L, 2, &ntasks);
    sl_place_node_t *nodes = to_nodes(L, 3, &nnodes);
    if (lua_isnoneornil(L, 4))
        ctx.batch_limit = (uint32_t)ntasks;
    sl_decision_t *out = lua_newuserdatauv(L, (ntasks ? ntasks : 1) * sizeof *out, 0);
    sl_place_report_t *rep = lua_newuserdatauv(L, sizeof *rep, 0);
    memset(rep, 0, sizeof *rep);
    int rc = p->ops->place(p, tasks, ntasks, nodes, nnodes, &ctx, out, rep);

    lua_createtable(L, 0, 4);
    int res = lua_gettop(L);
    lua_newtable(L);
    lua_newtable(L);
    if (rc == 0) {
        for (size_t i = 0; i < ntasks; i++) {
            if (out[i].node != NULL) {
                lua_pushstring(L, out[i].node);
                lua_setfield(L, res + 1, tasks[i].id);
            }
            if (out[i].error != NULL) {
                lua_pushstring(L, out[i].error);
                lua_setfield(L, res + 2, tasks[i].id);
            }
        }
    }
    lua_setfield(L, res, "errors");
    lua_setfield(L, res, "decisions");
    lua_pushinteger(L, rep->unasked);
    lua_setfield(L, res, "unasked");
    if (rc != 0 || rep->message[0] != '\0') {
        lua_pushstring(L, rep->message[0] ? rep->message : "place failed");
        lua_setfield(L, res, rc != 0 ? "error" : "message");
    }
    return 1;
}

static int l_drain_order(lua_State *L)
{
    sl_policy_t *p = sl_luamod_check_policy(L, 1);
    if (p->ops->drain_order == NULL) {
        lua_pushnil(L);
        lua_pushliteral(L, "policy defines no drain_order");
        return 2;
    }
    size_t ntasks;
    sl_place_ctx_t ctx;
    to_ctx(L, 3, &ctx);
    sl_place_task_t *tasks = to_tasks(L, 2, &ntasks);
    uint32_t *order = lua_newuserdatauv(L, (ntasks ? ntasks : 1) * sizeof *order, 0);
    sl_place_report_t *rep = lua_newuserdatauv(L, sizeof *rep, 0);
    memset(rep, 0, sizeof *rep);
    size_t norder = 0;
    if (p->ops->drain_order(p, tasks, ntasks, &ctx, order, &norder, rep) != 0) {
        lua_pushnil(L);
        lua_pushstring(L, rep->message[0] ? rep->message : "drain_order failed");
        return 2;
    }
    lua_createtable(L, (int)norder, 0);
    for (size_t i = 0; i < norder; i++) {
        lua_pushstring(L, tasks[order[i]].id);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    return 1;
}

static const luaL_Reg policy_methods[] = {
    {"name", l_name},
    {"file", l_file},
    {"has_drain_order", l_has_drain_order},
    {"place", l_place},
    {"drain_order", l_drain_order},
    {"close", l_close},
    {NULL, NULL},
};

static const luaL_Reg policy_funcs[] = {
    {"load", l_load},
    {"load_string", l_load_string},
    {"builtin", l_builtin},
    {"check", l_check},
    {NULL, NULL},
};

int sl_luamod_open_policy(lua_State *L)
{
    if (luaL_newmetatable(L, SL_POLICY_MT)) {
        lua_newtable(L);
        luaL_setfuncs(L, policy_methods, 0);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, l_gc);
        lua_setfield(L, -2, "__gc");
        lua_pushcfunction(L, l_close);
        lua_setfield(L, -2, "__close");
        lua_pushcfunction(L, l_tostring);
        lua_setfield(L, -2, "__tostring");
    }
    lua_pop(L, 1);
    luaL_newlib(L, policy_funcs);
    return 1;
}
