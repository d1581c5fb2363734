/* sluice.c — the `sluice` Lua module (luaopen_sluice): the core as a Lua class, so busted
 * specs (and later the REPL) drive exactly the C that the daemon runs.
 *
 *   local sluice = require "sluice"
 *   local c = sluice.core{ max_operators = 8, drain_batch_size = 2 }
 *   c:join("n1"); c:add_task("cf-1", "maintainer"); c:tick(0)
 *   for _, m in ipairs(c:outbox()) do ... end   -- {type="start", node="n1", task="cf-1", op=1}
 *
 * Methods that can fail return true, or nil plus a message and the code's name
 * ("EINVAL", "EAGAIN", …). Wrong argument types raise. The userdata holds a pointer set to
 * NULL when the core is closed; every method checks it. */
#include <lauxlib.h>
#include <lua.h>
#include <string.h>

#include "core/core.h"
#include "lua/luamod.h"

#define CORE_MT "sluice.core"

typedef struct {
    sl_core_t *core;
} core_ud_t;

static sl_core_t *check_core(lua_State *L)
{
    core_ud_t *ud = luaL_checkudata(L, 1, CORE_MT);
    if (!ud->core) luaL_error(L, "sluice.core: the core is closed");
    return ud->core;
}

static const char *code_name(int rc)
{
    switch (rc) {
    case SL_EINVAL: return "EINVAL";
    case SL_ENOENT: return "ENOENT";
    case SL_EEXIST: return "EEXIST";
    case SL_EAGAIN: return "EAGAIN";
    case SL_EBUSY: return "EBUSY";
    case SL_ENOMEM: return "ENOMEM";
    case SL_EPOLICY: return "EPOLICY";
    case SL_ELIMIT: return "ELIMIT";
    default: return "EUNKNOWN";
    }
}

static int push_result(lua_State *L, int rc)
{
    if (rc == 0) {
        lua_pushboolean(L, 1);
        return 1;
    }
    lua_pushnil(L);
    lua_pushstring(L, sl_strerror(rc));
    lua_pushstring(L, code_name(rc));
    return 3;
}

static uint64_t check_u64(lua_State *L, int idx)
{
    lua_Integer v = luaL_checkinteger(L, idx);
    luaL_argcheck(L, v >= 0, idx, "must not be negative");
    return (uint64_t)v;
}

static uint64_t opt_field_u64(lua_State *L, int idx, const char *key, uint64_t def)
{
    uint64_t v = def;
    lua_getfield(L, idx, key);
    if (!lua_isnil(L, -1)) {
        int ok;
        lua_Integer i = lua_tointegerx(L, -1, &ok);
        if (!ok || i < 0) luaL_error(L, "sluice.core: %s must be a non-negative integer", key);
        v = (uint64_t)i;
    }
    lua_pop(L, 1);
    return v;
}

/* sluice.core([config]) */
static int l_core_new(lua_State *L)
{
    sl_core_config_t cfg;
    sl_core_config_default(&cfg);
    if (!lua_isnoneornil(L, 1)) {
        luaL_checktype(L, 1, LUA_TTABLE);
        cfg.max_operators = (uint32_t)opt_field_u64(L, 1, "max_operators", cfg.max_operators);
        cfg.drain_batch_size =
            (uint32_t)opt_field_u64(L, 1, "drain_batch_size", cfg.drain_batch_size);
        cfg.step_timeout_ms = opt_field_u64(L, 1, "step_timeout_ms", cfg.step_timeout_ms);
        cfg.backoff_max_ms = opt_field_u64(L, 1, "backoff_max_ms", cfg.backoff_max_ms);
        cfg.stuck_after = (uint32_t)opt_field_u64(L, 1, "stuck_after", cfg.stuck_after);
        cfg.balance_interval_ms =
            opt_field_u64(L, 1, "balance_interval_ms", cfg.balance_interval_ms);
        cfg.balance_cooldown_ms =
            opt_field_u64(L, 1, "balance_cooldown_ms", cfg.balance_cooldown_ms);
        cfg.balance_tolerance =
            (uint32_t)opt_field_u64(L, 1, "balance_tolerance", cfg.balance_tolerance);
    }
    core_ud_t *ud = lua_newuserdatauv(L, sizeof *ud, 1);
    ud->core = NULL;
    luaL_setmetatable(L, CORE_MT);
    int rc = sl_core_new(&cfg, &ud->core);
    if (rc) return luaL_error(L, "sluice.core: %s", sl_strerror(rc));
    return 1;
}

/* Gives back the policy the core placed with (its user value), if any. */
static void release_policy(lua_State *L)
{
    if (lua_getiuservalue(L, 1, 1) == LUA_TUSERDATA) sl_luamod_policy_borrow(L, -1, -1);
    lua_pop(L, 1);
    lua_pushnil(L);
    lua_setiuservalue(L, 1, 1);
}

static int l_close(lua_State *L)
{
    core_ud_t *ud = luaL_checkudata(L, 1, CORE_MT);
    if (ud->core) release_policy(L);
    sl_core_free(ud->core);
    ud->core = NULL;
    return 0;
}

static int l_join(lua_State *L)
{
    sl_core_t *core = check_core(L);
    return push_result(L, sl_core_node_join(core, luaL_checkstring(L, 2), luaL_optstring(L, 3, "")));
}

static int l_leave(lua_State *L)
{
    sl_core_t *core = check_core(L);
    return push_result(L, sl_core_node_leave(core, luaL_checkstring(L, 2)));
}

static int l_label(lua_State *L)
{
    sl_core_t *core = check_core(L);
    return push_result(L, sl_core_node_set_label(core, luaL_checkstring(L, 2),
                                                 luaL_checkstring(L, 3), luaL_checkstring(L, 4)));
}

static sl_liveness_t check_liveness(lua_State *L, int idx)
{
    sl_liveness_t l;
    const char *name = luaL_checkstring(L, idx);
    if (sl_liveness_parse(name, &l) != 0)
        luaL_argerror(L, idx, "expected \"alive\", \"draining\" or \"stopping\"");
    return l;
}

static int l_liveness(lua_State *L)
{
    sl_core_t *core = check_core(L);
    sl_liveness_t l;
    int rc = sl_core_liveness(core, luaL_checkstring(L, 2), &l);
    if (rc) return push_result(L, rc);
    lua_pushstring(L, sl_liveness_name(l));
    return 1;
}

static int l_cas(lua_State *L)
{
    sl_core_t *core = check_core(L);
    return push_result(L, sl_core_liveness_cas(core, luaL_checkstring(L, 2), check_liveness(L, 3),
                                               check_liveness(L, 4)));
}

static int l_drain_mark(lua_State *L)
{
    sl_core_t *core = check_core(L);
    return push_result(L, sl_core_drain_mark(core, luaL_checkstring(L, 2)));
}

static int l_drain_unmark(lua_State *L)
{
    sl_core_t *core = check_core(L);
    return push_result(L, sl_core_drain_unmark(core, luaL_checkstring(L, 2)));
}

static int l_drain_target(lua_State *L)
{
    const char *t = sl_core_drain_target(check_core(L));
    if (t) lua_pushstring(L, t);
    else lua_pushnil(L);
    return 1;
}

static sl_task_kind_t check_kind(lua_State *L, int idx)
{
    static const char *const kinds[] = {"maintainer", "dispatcher", NULL};
    return (sl_task_kind_t)luaL_checkoption(L, idx, "maintainer", kinds);
}

static const char *kind_name(sl_task_kind_t k)
{
    return k == SL_TASK_DISPATCHER ? "dispatcher" : "maintainer";
}

/* c:add_task(id [, kind [, changefeed [, weight]]]) */
static int l_add_task(lua_State *L)
{
    sl_core_t *core = check_core(L);
    const char *id = luaL_checkstring(L, 2);
    sl_task_kind_t kind = check_kind(L, 3);
    const char *cf = luaL_optstring(L, 4, NULL);
    lua_Integer w = luaL_optinteger(L, 5, 1);
    luaL_argcheck(L, w > 0 && w <= UINT32_MAX, 5, "weight must be a positive integer");
    return push_result(L, sl_core_task_add(core, id, kind, cf, (uint32_t)w));
}

static int l_remove_task(lua_State *L)
{
    sl_core_t *core = check_core(L);
    return push_result(L, sl_core_task_remove(core, luaL_checkstring(L, 2)));
}

/* c:report(node, task, "working"|"stopped", now_ms) */
static int l_report(lua_State *L)
{
    sl_core_t *core = check_core(L);
    static const char *const states[] = {"working", "stopped", NULL};
    const char *node = luaL_checkstring(L, 2), *task = luaL_checkstring(L, 3);
    sl_report_t st = (sl_report_t)luaL_checkoption(L, 4, NULL, states);
    return push_result(L, sl_core_report(core, node, task, st, check_u64(L, 5)));
}

static int l_tick(lua_State *L)
{
    sl_core_t *core = check_core(L);
    return push_result(L, sl_core_tick(core, check_u64(L, 2)));
}

/* c:outbox() → the messages since the last call, which are then cleared */
static int l_outbox(lua_State *L)
{
    sl_core_t *core = check_core(L);
    size_t n;
    const sl_msg_t *m = sl_core_outbox(core, &n);
    lua_createtable(L, (int)n, 0);
    for (size_t i = 0; i < n; i++) {
        lua_createtable(L, 0, 4);
        lua_pushstring(L, m[i].type == SL_MSG_START ? "start" : "stop");
        lua_setfield(L, -2, "type");
        lua_pushstring(L, m[i].node);
        lua_setfield(L, -2, "node");
        lua_pushstring(L, m[i].task);
        lua_setfield(L, -2, "task");
        lua_pushinteger(L, (lua_Integer)m[i].op_id);
        lua_setfield(L, -2, "op");
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    sl_core_outbox_clear(core);
    return 1;
}

static void set_int(lua_State *L, const char *k, uint64_t v)
{
    lua_pushinteger(L, (lua_Integer)v);
    lua_setfield(L, -2, k);
}

static void set_str(lua_State *L, const char *k, const char *v)
{
    if (!v) return;
    lua_pushstring(L, v);
    lua_setfield(L, -2, k);
}

static void push_node(lua_State *L, sl_core_t *core, const sl_node_info_t *n)
{
    lua_createtable(L, 0, 10);
    set_str(L, "id", n->id);
    set_str(L, "addr", n->addr);
    set_str(L, "liveness", sl_liveness_name(n->liveness));
    set_int(L, "maintainers", n->maintainers);
    set_int(L, "dispatchers", n->dispatchers);
    set_int(L, "inflight", n->inflight);
    set_int(L, "ops_from", n->ops_from);
    set_int(L, "ops_to", n->ops_to);
}

static int l_node(lua_State *L)
{
    sl_core_t *core = check_core(L);
    sl_node_info_t n;
    int rc = sl_core_node_info(core, luaL_checkstring(L, 2), &n);
    if (rc) return push_result(L, rc);
    push_node(L, core, &n);
    return 1;
}

static int l_nodes(lua_State *L)
{
    sl_core_t *core = check_core(L);
    size_t n = sl_core_node_count(core);
    lua_createtable(L, (int)n, 0);
    for (size_t i = 0; i < n; i++) {
        sl_node_info_t info;
        if (sl_core_node_at(core, i, &info) != 0) break;
        push_node(L, core, &info);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    return 1;
}

static int l_label_of(lua_State *L)
{
    sl_core_t *core = check_core(L);
    const char *v = sl_core_node_label(core, luaL_checkstring(L, 2), luaL_checkstring(L, 3));
    if (v) lua_pushstring(L, v);
    else lua_pushnil(L);
    return 1;
}

static int l_task(lua_State *L)
{
    sl_core_t *core = check_core(L);
    sl_task_info_t t;
    int rc = sl_core_task_info(core, luaL_checkstring(L, 2), &t);
    if (rc) return push_result(L, rc);
    lua_createtable(L, 0, 8);
    set_str(L, "id", t.id);
    set_str(L, "kind", kind_name(t.kind));
    set_str(L, "changefeed", t.changefeed);
    set_int(L, "weight", t.weight);
    set_str(L, "node", t.node);
    set_str(L, "state", sl_task_state_name(t.state));
    lua_pushboolean(L, t.has_operator);
    lua_setfield(L, -2, "has_operator");
    lua_pushboolean(L, t.remove_pending);
    lua_setfield(L, -2, "remove_pending");
    return 1;
}

static int l_task_count(lua_State *L)
{
    lua_pushinteger(L, (lua_Integer)sl_core_task_count(check_core(L)));
    return 1;
}

static const char *reason_name(sl_reason_t r)
{
    return r == SL_REASON_DRAIN ? "drain" : r == SL_REASON_BALANCE ? "balance" : "basic";
}

static int l_operators(lua_State *L)
{
    sl_core_t *core = check_core(L);
    size_t n = sl_core_op_count(core);
    lua_createtable(L, (int)n, 0);
    for (size_t i = 0; i < n; i++) {
        sl_op_info_t op;
        if (sl_core_op_at(core, i, &op) != 0) break;
        lua_createtable(L, 0, 11);
        set_int(L, "id", op.id);
        set_str(L, "type", sl_op_type_name(op.type));
        set_str(L, "reason", reason_name(op.reason));
        set_str(L, "task", op.task);
        set_str(L, "from", op.from);
        set_str(L, "to", op.to);
        set_str(L, "step", op.step);
        set_int(L, "retries", op.retries);
        set_int(L, "deadline_ms", op.deadline_ms);
        lua_pushboolean(L, op.stuck);
        lua_setfield(L, -2, "stuck");
        set_str(L, "stuck_reason", op.reason_text);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    return 1;
}

static int l_stats(lua_State *L)
{
    sl_core_t *core = check_core(L);
    sl_core_stats_t s;
    sl_core_stats(core, &s);
    lua_createtable(L, 0, 14);
    set_int(L, "ops_in_progress", s.ops_in_progress);
    set_int(L, "drain_in_progress", s.drain_in_progress);
    set_int(L, "absent", s.absent);
    set_int(L, "rounds", s.rounds);
    set_int(L, "policy_calls", s.policy_calls);
    set_int(L, "refusals", s.refusals);
    set_int(L, "fallbacks", s.fallbacks);
    set_int(L, "ops_started", s.ops_started);
    set_int(L, "ops_finished", s.ops_finished);
    set_int(L, "ops_abandoned", s.ops_abandoned);
    set_int(L, "retries", s.retries);
    set_int(L, "epoch", s.epoch);
    set_str(L, "waiting", s.waiting);
    return 1;
}

static int l_refusals(lua_State *L)
{
    sl_core_t *core = check_core(L);
    size_t n = sl_core_refusal_count(core);
    lua_createtable(L, (int)n, 0);
    for (size_t i = 0; i < n; i++) {
        lua_pushstring(L, sl_core_refusal_at(core, i));
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    return 1;
}

static int l_check(lua_State *L)
{
    sl_core_t *core = check_core(L);
    char why[SL_ERRMSG_MAX] = "";
    if (sl_core_check(core, why, sizeof why) == 0) {
        lua_pushboolean(L, 1);
        return 1;
    }
    lua_pushnil(L);
    lua_pushstring(L, why);
    return 2;
}

/* c:set_policy(p or nil): the core borrows the policy; the userdata keeps it alive by
 * holding it as its user value. */
static int l_set_policy(lua_State *L)
{
    sl_core_t *core = check_core(L);
    sl_policy_t *p = NULL;
    if (!lua_isnoneornil(L, 2)) p = sl_luamod_check_policy(L, 2);
    lua_settop(L, 2);
    release_policy(L);
    if (p) sl_luamod_policy_borrow(L, 2, 1);
    lua_setiuservalue(L, 1, 1);
    sl_core_set_policy(core, p);
    return 0;
}

static const luaL_Reg core_methods[] = {
    {"close", l_close},
    {"join", l_join},
    {"leave", l_leave},
    {"label", l_label},
    {"label_of", l_label_of},
    {"liveness", l_liveness},
    {"cas", l_cas},
    {"drain_mark", l_drain_mark},
    {"drain_unmark", l_drain_unmark},
    {"drain_target", l_drain_target},
    {"add_task", l_add_task},
    {"remove_task", l_remove_task},
    {"report", l_report},
    {"tick", l_tick},
    {"outbox", l_outbox},
    {"node", l_node},
    {"nodes", l_nodes},
    {"task", l_task},
    {"task_count", l_task_count},
    {"operators", l_operators},
    {"stats", l_stats},
    {"refusals", l_refusals},
    {"check", l_check},
    {"set_policy", l_set_policy},
    {NULL, NULL},
};

static int l_transition_allowed(lua_State *L)
{
    lua_pushboolean(L, sl_liveness_transition_allowed(check_liveness(L, 1), check_liveness(L, 2)));
    return 1;
}

int luaopen_sluice(lua_State *L);

int luaopen_sluice(lua_State *L)
{
    if (luaL_newmetatable(L, CORE_MT)) {
        luaL_newlib(L, core_methods);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, l_close);
        lua_setfield(L, -2, "__gc");
    }
    lua_pop(L, 1);
    lua_newtable(L);
    lua_pushcfunction(L, l_core_new);
    lua_setfield(L, -2, "core");
    lua_pushcfunction(L, l_transition_allowed);
    lua_setfield(L, -2, "transition_allowed");
    sl_luamod_open_policy(L);
    lua_setfield(L, -2, "policy");
    return 1;
}
