/* luamod.h — pieces of the `sluice` Lua module (luaopen_sluice) shared between files.
 * sluice.c opens the module and the `core` class; policy_lua.c the `policy` class. */
#ifndef SL_LUAMOD_H
#define SL_LUAMOD_H

#include <lua.h>

#include "policy/policy.h"

#define SL_POLICY_MT "sluice.policy"

/* Pushes the table that becomes `sluice.policy` (load, builtin, check, …). */
int sl_luamod_open_policy(lua_State *L);
/* The policy held by the userdata at idx; raises a Lua error if it is not one or is closed. */
sl_policy_t *sl_luamod_check_policy(lua_State *L, int idx);
/* A core starts (+1) or stops (-1) placing with the policy userdata at idx; p:close() is
 * refused while any core does. */
void sl_luamod_policy_borrow(lua_State *L, int idx, int delta);

#endif
