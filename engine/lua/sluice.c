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
#define STORE_MT "sluice.store"

/* user values of a core: 1 = its policy userdata, 2 = its store userdata */
#define UV_POLICY 1
#define UV_STORE 2

typedef struct {
    sl_store_t *store;
    int borrowers;
} store_ud_t;

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
    case SL_EIO: return "EIO";
    case SL_ENOTENOUGH: return "ENOTENOUGH";
    case SL_ECOORDINATOR: return "ECOORDINATOR";
    case SL_ESTOPPING: return "ESTOPPING";
    case SL_ENOTREADY: return "ENOTREADY";
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
        cfg.heartbeat_interval_ms =
            opt_field_u64(L, 1, "heartbeat_interval_ms", cfg.heartbeat_interval_ms);
        cfg.node_timeout_ms = opt_field_u64(L, 1, "node_timeout_ms", cfg.node_timeout_ms);
        cfg.bootstrap_ms = opt_field_u64(L, 1, "bootstrap_ms", cfg.bootstrap_ms);
        lua_getfield(L, 1, "epoch_gate");
        if (!lua_isnil(L, -1)) cfg.epoch_gate = lua_toboolean(L, -1);
        lua_pop(L, 1);
        lua_getfield(L, 1, "coordinator_node");
        if (!lua_isnil(L, -1)) {
            size_t len;
            const char *id = lua_tolstring(L, -1, &len);
            if (!id || len >= SL_ID_MAX) return luaL_error(L, "sluice.core: bad coordinator_node");
            memcpy(cfg.coordinator_node, id, len + 1);
        }
        lua_pop(L, 1);
    }
    core_ud_t *ud = lua_newuserdatauv(L, sizeof *ud, 2);
    ud->core = NULL;
    luaL_setmetatable(L, CORE_MT);
    int rc = sl_core_new(&cfg, &ud->core);
    if (rc) return luaL_error(L, "sluice.core: %s", sl_strerror(rc));
    return 1;
}

/* Gives back the policy the core placed with (its user value), if any. */
static void release_policy(lua_State *L)
{
    if (lua_getiuservalue(L, 1, UV_POLICY) == LUA_TUSERDATA) sl_luamod_policy_borrow(L, -1, -1);
    lua_pop(L, 1);
    lua_pushnil(L);
    lua_setiuservalue(L, 1, UV_POLICY);
}

static void release_store(lua_State *L)
{
    if (lua_getiuservalue(L, 1, UV_STORE) == LUA_TUSERDATA) {
        store_ud_t *st = luaL_checkudata(L, -1, STORE_MT);
        st->borrowers--;
    }
    lua_pop(L, 1);
    lua_pushnil(L);
    lua_setiuservalue(L, 1, UV_STORE);
}

static int l_close(lua_State *L)
{
    core_ud_t *ud = luaL_checkudata(L, 1, CORE_MT);
    if (ud->core) {
        release_policy(L);
        release_store(L);
    }
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

static const char *kind_name(sl_task_kind_t k);

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
        lua_createtable(L, 0, 8);
        static const char *const types[] = {"start", "stop", "drain"};
        lua_pushstring(L, types[m[i].type]);
        lua_setfield(L, -2, "type");
        lua_pushstring(L, m[i].node);
        lua_setfield(L, -2, "node");
        if (m[i].type == SL_MSG_DRAIN) {
            lua_pushstring(L, m[i].target);
            lua_setfield(L, -2, "target");
            lua_pushinteger(L, (lua_Integer)m[i].epoch);
            lua_setfield(L, -2, "epoch");
        } else {
            lua_pushstring(L, m[i].task);
            lua_setfield(L, -2, "task");
            lua_pushinteger(L, (lua_Integer)m[i].op_id);
            lua_setfield(L, -2, "op");
            lua_pushstring(L, kind_name(m[i].kind));
            lua_setfield(L, -2, "kind");
            lua_pushstring(L, m[i].changefeed);
            lua_setfield(L, -2, "changefeed");
            lua_pushinteger(L, m[i].weight);
            lua_setfield(L, -2, "weight");
        }
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

/* c:drain_start(id, now) -> {maintainers, dispatchers, completed} | nil, msg, code (D1) */
static int l_drain_start(lua_State *L)
{
    sl_core_t *core = check_core(L);
    sl_drain_counts_t c;
    int rc = sl_core_drain_start(core, luaL_checkstring(L, 2), check_u64(L, 3), &c);
    if (rc) return push_result(L, rc);
    lua_createtable(L, 0, 3);
    set_int(L, "maintainers", c.maintainers);
    set_int(L, "dispatchers", c.dispatchers);
    lua_pushboolean(L, c.completed);
    lua_setfield(L, -2, "completed");
    return 1;
}

static int l_drain_cancel(lua_State *L)
{
    sl_core_t *core = check_core(L);
    return push_result(L, sl_core_drain_cancel(core, luaL_checkstring(L, 2), check_u64(L, 3)));
}

/* c:drain_status(id, now) -> the fields of D11 */
static int l_drain_status(lua_State *L)
{
    sl_core_t *core = check_core(L);
    sl_drain_status_t st;
    int rc = sl_core_drain_status(core, luaL_checkstring(L, 2), check_u64(L, 3), &st);
    if (rc) return push_result(L, rc);
    lua_createtable(L, 0, 16);
    lua_pushboolean(L, st.is_draining);
    lua_setfield(L, -2, "is_draining");
    set_str(L, "draining_capture_id", st.target);
    set_int(L, "epoch", st.epoch);
    set_str(L, "state", sl_drain_state_name(st.state));
    set_int(L, "started_at", st.started_at_ms);
    set_int(L, "initial_maintainer_count", st.initial_maintainers);
    set_int(L, "initial_dispatcher_count", st.initial_dispatchers);
    set_int(L, "remaining_maintainer_count", st.remaining_maintainers);
    set_int(L, "remaining_dispatcher_count", st.remaining_dispatchers);
    lua_pushnumber(L, st.progress);
    lua_setfield(L, -2, "progress");
    lua_pushnumber(L, st.speed);
    lua_setfield(L, -2, "current_speed");
    lua_pushnumber(L, st.left_seconds);
    lua_setfield(L, -2, "left_seconds");
    set_str(L, "blocked", st.blocked);
    lua_newtable(L);
    size_t n = st.state == SL_DRAIN_DRAINING ? sl_core_drain_remaining_count(core) : 0;
    for (size_t i = 0; i < n; i++) {
        const char *cf;
        uint32_t left;
        if (sl_core_drain_remaining_at(core, i, &cf, &left) == 0) set_int(L, cf, left);
    }
    lua_setfield(L, -2, "remaining_dispatchers_by_changefeed");
    return 1;
}

/* c:drain_plan(id) -> { {task=, to=}, ... } (D12) */
static int l_drain_plan(lua_State *L)
{
    sl_core_t *core = check_core(L);
    const char *id = luaL_checkstring(L, 2);
    sl_node_info_t info;
    int rc = sl_core_node_info(core, id, &info);
    if (rc) return push_result(L, rc);
    size_t max = (size_t)info.maintainers + info.dispatchers, n = 0;
    sl_plan_move_t *moves = lua_newuserdatauv(L, (max ? max : 1) * sizeof *moves, 0);
    rc = sl_core_drain_plan(core, id, moves, max, &n);
    if (rc) return push_result(L, rc);
    lua_createtable(L, (int)n, 0);
    for (size_t i = 0; i < n; i++) {
        lua_createtable(L, 0, 2);
        set_str(L, "task", moves[i].task);
        set_str(L, "to", moves[i].to);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    return 1;
}

static int l_heartbeat(lua_State *L)
{
    sl_core_t *core = check_core(L);
    return push_result(L, sl_core_heartbeat(core, luaL_checkstring(L, 2), check_u64(L, 3),
                                            check_u64(L, 4)));
}

/* c:changefeed_report(cf, epoch, remaining_on_target, {node = count, ...}, now) (D6) */
static int l_changefeed_report(lua_State *L)
{
    sl_core_t *core = check_core(L);
    const char *cf = luaL_checkstring(L, 2);
    uint64_t epoch = check_u64(L, 3);
    lua_Integer remaining = luaL_checkinteger(L, 4);
    luaL_argcheck(L, remaining >= 0 && remaining <= UINT32_MAX, 4, "out of range");
    luaL_checktype(L, 5, LUA_TTABLE);
    uint64_t now = check_u64(L, 6);
    size_t n = 0;
    for (lua_pushnil(L); lua_next(L, 5); lua_pop(L, 1)) n++;
    sl_node_count_t *by = lua_newuserdatauv(L, (n ? n : 1) * sizeof *by, 0);
    size_t k = 0;
    for (lua_pushnil(L); lua_next(L, 5); lua_pop(L, 1)) {
        if (lua_type(L, -2) != LUA_TSTRING) luaL_error(L, "changefeed_report: node ids are strings");
        lua_Integer c = luaL_checkinteger(L, -1);
        if (c < 0 || c > UINT32_MAX) luaL_error(L, "changefeed_report: count out of range");
        by[k++] = (sl_node_count_t){.node = lua_tostring(L, -2), .count = (uint32_t)c};
    }
    return push_result(L, sl_core_changefeed_report(core, cf, epoch, (uint32_t)remaining, by, k, now));
}

static int l_changefeed_nodes(lua_State *L)
{
    sl_core_t *core = check_core(L);
    const char *cf = luaL_checkstring(L, 2);
    size_t n = sl_core_changefeed_nodes(core, cf);
    lua_createtable(L, 0, (int)n);
    for (size_t i = 0; i < n; i++) {
        sl_node_count_t e;
        if (sl_core_changefeed_node_at(core, cf, i, &e) == 0) set_int(L, e.node, e.count);
    }
    return 1;
}

/* c:set_store(store or nil): like policies, the store is borrowed and kept alive */
static int l_set_store(lua_State *L)
{
    sl_core_t *core = check_core(L);
    store_ud_t *st = NULL;
    if (!lua_isnoneornil(L, 2)) {
        st = luaL_checkudata(L, 2, STORE_MT);
        if (!st->store) return luaL_error(L, "store is closed");
    }
    lua_settop(L, 2);
    release_store(L);
    if (st) st->borrowers++;
    lua_setiuservalue(L, 1, UV_STORE);
    sl_core_set_store(core, st ? st->store : NULL);
    return 0;
}

static int l_recover(lua_State *L)
{
    sl_core_t *core = check_core(L);
    return push_result(L, sl_core_recover(core, check_u64(L, 2)));
}

static int l_bootstrapping(lua_State *L)
{
    lua_pushboolean(L, sl_core_bootstrapping(check_core(L)));
    return 1;
}

/* c:cordon(id, on) */
static int l_cordon(lua_State *L)
{
    sl_core_t *c = check_core(L);
    int rc = sl_core_node_cordon(c, luaL_checkstring(L, 2), lua_toboolean(L, 3));
    if (rc) return luaL_error(L, "cordon: %s", sl_strerror(rc));
    lua_pushboolean(L, 1);
    return 1;
}

static int l_version(lua_State *L)
{
    lua_pushinteger(L, (lua_Integer)sl_core_version(check_core(L)));
    return 1;
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
    lua_setiuservalue(L, 1, UV_POLICY);
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
    {"drain_start", l_drain_start},
    {"drain_cancel", l_drain_cancel},
    {"drain_status", l_drain_status},
    {"drain_plan", l_drain_plan},
    {"heartbeat", l_heartbeat},
    {"changefeed_report", l_changefeed_report},
    {"changefeed_nodes", l_changefeed_nodes},
    {"set_store", l_set_store},
    {"recover", l_recover},
    {"bootstrapping", l_bootstrapping},
    {"version", l_version},
    {"cordon", l_cordon},
    {NULL, NULL},
};

/* ---- sluice.store.memory() / sluice.store.sqlite(path) -------------------------------- */

static store_ud_t *check_store(lua_State *L)
{
    store_ud_t *st = luaL_checkudata(L, 1, STORE_MT);
    if (!st->store) luaL_error(L, "store is closed");
    return st;
}

static store_ud_t *new_store_ud(lua_State *L)
{
    store_ud_t *st = lua_newuserdatauv(L, sizeof *st, 0);
    st->store = NULL;
    st->borrowers = 0;
    luaL_setmetatable(L, STORE_MT);
    return st;
}

static int l_store_memory(lua_State *L)
{
    store_ud_t *st = new_store_ud(L);
    int rc = sl_store_mem_new(&st->store);
    if (rc) return luaL_error(L, "sluice.store.memory: %s", sl_strerror(rc));
    return 1;
}

static int l_store_sqlite(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    store_ud_t *st = new_store_ud(L);
    char err[SL_ERRMSG_MAX] = "";
    if (sl_store_sqlite_open(path, &st->store, err, sizeof err) != 0) {
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
    return 1;
}

static int l_store_fail_writes(lua_State *L)
{
    sl_store_mem_fail_writes(check_store(L)->store, lua_toboolean(L, 2));
    return 0;
}

/* s:drain() -> the stored drain record, or nil */
static int l_store_drain(lua_State *L)
{
    store_ud_t *st = check_store(L);
    sl_drain_record_t rec;
    int rc = st->store->ops->load_drain(st->store, &rec);
    if (rc == SL_ENOENT) return 0;
    if (rc) return push_result(L, rc);
    lua_createtable(L, 0, 5);
    set_str(L, "target", rec.target);
    set_int(L, "epoch", rec.epoch);
    set_int(L, "started_at", rec.started_at_ms);
    set_int(L, "initial_maintainers", rec.initial_maintainers);
    set_int(L, "initial_dispatchers", rec.initial_dispatchers);
    return 1;
}

static int push_liveness_entry(void *arg, const char *node, int liveness)
{
    lua_State *L = arg;
    lua_pushstring(L, sl_liveness_name((sl_liveness_t)liveness));
    lua_setfield(L, -2, node);
    return 0;
}

/* s:liveness() -> {node = "draining" | "stopping"} */
static int l_store_liveness(lua_State *L)
{
    store_ud_t *st = check_store(L);
    lua_newtable(L);
    int rc = st->store->ops->list_liveness(st->store, push_liveness_entry, L);
    if (rc) return push_result(L, rc);
    return 1;
}

static int l_store_close(lua_State *L)
{
    store_ud_t *st = luaL_checkudata(L, 1, STORE_MT);
    if (st->borrowers > 0) return luaL_error(L, "store is in use by %d core(s)", st->borrowers);
    sl_store_free(st->store);
    st->store = NULL;
    return 0;
}

static int l_store_gc(lua_State *L)
{
    store_ud_t *st = luaL_checkudata(L, 1, STORE_MT);
    sl_store_free(st->store);
    st->store = NULL;
    return 0;
}

static const luaL_Reg store_methods[] = {
    {"fail_writes", l_store_fail_writes},
    {"drain", l_store_drain},
    {"liveness", l_store_liveness},
    {"close", l_store_close},
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
    if (luaL_newmetatable(L, STORE_MT)) {
        luaL_newlib(L, store_methods);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, l_store_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_pop(L, 1);
    lua_newtable(L);
    lua_createtable(L, 0, 2);
    lua_pushcfunction(L, l_store_memory);
    lua_setfield(L, -2, "memory");
    lua_pushcfunction(L, l_store_sqlite);
    lua_setfield(L, -2, "sqlite");
    lua_setfield(L, -2, "store");
    lua_pushcfunction(L, l_core_new);
    lua_setfield(L, -2, "core");
    lua_pushcfunction(L, l_transition_allowed);
    lua_setfield(L, -2, "transition_allowed");
    sl_luamod_open_policy(L);
    lua_setfield(L, -2, "policy");
    return 1;
}
