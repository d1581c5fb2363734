-- policy_spec.lua — Lua policies through `sluice.policy`, which calls the real seam
-- (ops->place / ops->drain_order with C structs): the contract (P1), the sandbox (P2),
-- the checks of a policy's answers (P3) and the shipped policies (P5).
-- Hostile policies must come back: these specs assert that calls return, never timings.
local sluice = require "sluice"
local policy = sluice.policy

local FIX = "tests/fixtures/policies/"
-- small budgets keep the hostile cases quick; the defaults are tested end to end
local FAST = { load_budget_ms = 200, call_budget_ms = 50 }

local function src_load(src, limits)
  return policy.load_string(src, "inline.lua", limits or FAST)
end

local function nodes_of(n, extra)
  local nodes = {}
  for i = 1, n do
    nodes[i] = { id = "n" .. i, maintainers = 0, dispatchers = 0, inflight = 0,
                 labels = { zone = i <= n / 2 and "a" or "b" } }
    for k, v in pairs(extra and extra[i] or {}) do nodes[i][k] = v end
  end
  return nodes
end

local function tasks_of(n, kind, prefix)
  local tasks = {}
  for i = 1, n do
    local id = (prefix or "t") .. i
    tasks[i] = { id = id, kind = kind or "maintainer", changefeed = kind == "dispatcher" and "cf" or id,
                 weight = 1 }
  end
  return tasks
end

local function ctx_of(limit, reason)
  return { reason = reason or "basic", batch_limit = limit, now_ms = 1000 }
end

local function counts(decisions)
  local c = {}
  for _, node in pairs(decisions) do c[node] = (c[node] or 0) + 1 end
  return c
end

-- a policy whose selftest returns `expr`: loading succeeds iff expr is true in the sandbox
local function holds_in_sandbox(expr)
  local p, err = src_load(([[
    return { name = "probe", place = function() return {} end,
             selftest = function() return (%s) end }
  ]]):format(expr))
  if p then p:close() end
  return p ~= nil, err
end

describe("P1 contract", function()
  it("P1: a sound policy loads with its name and file", function()
    local p = assert(policy.load(FIX .. "sound.lua"))
    assert.are.equal("sound-round-robin", p:name())
    assert.are.equal(FIX .. "sound.lua", p:file())
    assert.is_true(p:has_drain_order())
    p:close()
  end)

  local broken = {
    { "the chunk returns no table", [[return 42]], "returned number" },
    { "name is missing", [[return { place = function() end }]], "`name` must be a string" },
    { "name is empty", [[return { name = "", place = function() end }]], "non%-empty" },
    { "name is too long", ([[return { name = "%s", place = function() end }]]):format(("x"):rep(80)), "at most" },
    { "place is missing", [[return { name = "x" }]], "`place` must be a function" },
    { "place is not a function", [[return { name = "x", place = {} }]], "`place` must be a function" },
    { "drain_order is not a function", [[return { name = "x", place = function() end, drain_order = 1 }]], "`drain_order` must be a function" },
    { "selftest is not a function", [[return { name = "x", place = function() end, selftest = true }]], "`selftest` must be a function" },
    { "selftest returns false", [[return { name = "x", place = function() end, selftest = function() return false, "nope" end }]], "selftest failed: returned false: nope" },
    { "selftest returns nil", [[return { name = "x", place = function() end, selftest = function() end }]], "selftest failed: returned nil" },
    { "selftest raises", "return { name = 'x', place = function() end,\n selftest = function() error('broken') end }", "inline.lua:2: broken" },
  }
  for _, case in ipairs(broken) do
    it("P1: load fails when " .. case[1], function()
      local p, err = src_load(case[2])
      assert.is_nil(p)
      assert.matches(case[3], err)
      assert.matches("^policy inline.lua", err)
    end)
  end

  it("P1: syntax errors name file and line", function()
    local p, err = policy.load(FIX .. "syntax_error.lua")
    assert.is_nil(p)
    assert.matches("syntax_error.lua:4:", err, 1, true)
  end)

  it("P1: a missing file is an error, not a crash", function()
    local p, err = policy.load(FIX .. "does_not_exist.lua")
    assert.is_nil(p)
    assert.matches("cannot open", err)
  end)

  it("P1: place is called once per batch, with the whole batch", function()
    local p = assert(src_load([[
      local calls = 0
      return { name = "counter", place = function(tasks, nodes, ctx)
        calls = calls + 1
        local out = {}
        for _, t in ipairs(tasks) do out[t.id] = "n" .. calls end -- the call number
        return out
      end }
    ]]))
    local r = p:place(tasks_of(10), nodes_of(3), ctx_of(10))
    assert.are.same({ n1 = 10 }, counts(r.decisions))
    r = p:place(tasks_of(7), nodes_of(3), ctx_of(7))
    assert.are.same({ n2 = 7 }, counts(r.decisions))
    p:close()
  end)

  it("P1: tasks, nodes and ctx have the documented shape", function()
    local p = assert(src_load([[
      local function check(c, why) if not c then error(why, 2) end end
      return { name = "shape", place = function(tasks, nodes, ctx)
        check(#tasks == 2 and #nodes == 2, "sizes")
        local m, d = tasks[1], tasks[2]
        check(m.id == "cf-1" and m.kind == "maintainer" and m.changefeed == "cf-1", "maintainer")
        check(m.from == "n9" and m.weight == 1, "maintainer from/weight")
        check(d.id == "cf-1/t1" and d.kind == "dispatcher" and d.changefeed == "cf-1", "dispatcher")
        check(d.from == nil and d.weight == 3, "dispatcher from/weight")
        local n = nodes[2]
        check(n.id == "n2" and n.maintainers == 4 and n.dispatchers == 5 and n.inflight == 6, "node")
        check(n.labels.zone == "b" and n.labels.rack == "r2", "labels")
        check(ctx.reason == "drain" and ctx.drain_target == "n9", "ctx reason")
        check(ctx.batch_limit == 2 and ctx.now_ms == 123456, "ctx numbers")
        return { ["cf-1"] = "n1", ["cf-1/t1"] = "n2" }
      end }
    ]]))
    local tasks = {
      { id = "cf-1", kind = "maintainer", changefeed = "cf-1", from = "n9", weight = 1 },
      { id = "cf-1/t1", kind = "dispatcher", changefeed = "cf-1", weight = 3 },
    }
    local nodes = {
      { id = "n1", maintainers = 1, dispatchers = 2, inflight = 3, labels = { zone = "a" } },
      { id = "n2", maintainers = 4, dispatchers = 5, inflight = 6, labels = { zone = "b", rack = "r2" } },
    }
    local r = p:place(tasks, nodes, { reason = "drain", drain_target = "n9", batch_limit = 2, now_ms = 123456 })
    assert.is_nil(r.error)
    assert.are.same({ ["cf-1"] = "n1", ["cf-1/t1"] = "n2" }, r.decisions)
    p:close()
  end)

  it("P1: a task left out gets no decision and no error", function()
    local p = assert(src_load([[return { name = "x", place = function(t) return { [t[1].id] = "n1" } end }]]))
    local r = p:place(tasks_of(3), nodes_of(2), ctx_of(3))
    assert.are.same({ t1 = "n1" }, r.decisions)
    assert.are.same({}, r.errors)
    assert.are.equal(0, r.unasked)
    p:close()
  end)

  it("P1: drain_order returns the policy's order; without it the hook is absent", function()
    local p = assert(policy.load(FIX .. "sound.lua"))
    assert.are.same({ "t3", "t2", "t1" }, p:drain_order(tasks_of(3), ctx_of(3, "drain")))
    p:close()
    local q = assert(src_load([[return { name = "x", place = function() return {} end }]]))
    assert.is_false(q:has_drain_order())
    assert.is_nil(q:drain_order(tasks_of(3), ctx_of(3)))
    q:close()
  end)

  it("P1: drain_order answers that are not distinct task ids fail the call", function()
    for _, ret in ipairs({ [[{ "t1", "t1" }]], [[{ "ghost" }]], [[{ 1, 2 }]], [["t1"]] }) do
      local p = assert(src_load(([[return { name = "x", place = function() return {} end,
        drain_order = function() return %s end }]]):format(ret)))
      local order, err = p:drain_order(tasks_of(3), ctx_of(3))
      assert.is_nil(order)
      -- P3: the report does not name the policy: whoever shows it does, once
      assert.matches("^drain_order returned", err)
      p:close()
    end
  end)

  it("P1: a closed policy refuses every method", function()
    local p = assert(policy.load(FIX .. "sound.lua"))
    p:close()
    assert.has_error(function() p:name() end, "policy is closed")
    assert.has_error(function() p:place({}, {}, {}) end, "policy is closed")
    p:close() -- closing twice is harmless
  end)
end)

describe("P2 sandbox", function()
  it("P2: bytecode is refused (only text chunks load)", function()
    local bytecode = string.dump(function() return { name = "x", place = function() end } end)
    local path = os.tmpname()
    local f = assert(io.open(path, "wb"))
    f:write(bytecode)
    f:close()
    local p, err = policy.load(path)
    os.remove(path)
    assert.is_nil(p)
    assert.matches("bytecode", err)
    local q, err2 = policy.load_string(bytecode, "bc.lua")
    assert.is_nil(q)
    assert.matches("bytecode", err2)
  end)

  local absent = {
    "io", "os.execute", "os.getenv", "os.remove", "os.rename", "os.exit", "os.tmpname",
    "require", "load", "loadstring", "dofile", "loadfile", "debug", "package",
    "collectgarbage", "string.dump", "coroutine", "getmetatable('').__index.dump",
    "module", "setfenv", "getfenv", "newproxy",
  }
  for _, name in ipairs(absent) do
    it("P2: " .. name .. " is not reachable", function()
      assert.is_true(holds_in_sandbox(name .. " == nil"))
    end)
  end

  local present = {
    "type(pairs) == 'function' and type(ipairs) == 'function' and type(next) == 'function'",
    "type(pcall) == 'function' and type(xpcall) == 'function' and type(error) == 'function'",
    "select('#', 1, 2) == 2 and tonumber('7') == 7 and tostring(1) == '1'",
    "rawequal(1, 1) and rawlen({1}) == 1 and rawget({a = 1}, 'a') == 1",
    "getmetatable(setmetatable({}, {__index = {}})) ~= nil",
    "string.format('%d-%s', 1, 'x') == '1-x' and ('n12'):match('^n(%d+)$') == '12'",
    "table.concat({'a', 'b'}, ',') == 'a,b' and math.floor(1.5) == 1 and utf8.char(65) == 'A'",
    "type(os.time()) == 'number' and type(os.clock()) == 'number'",
    "cjson.decode(cjson.encode({a = {1, 2}})).a[2] == 2 and cjson.null ~= nil",
    "type(log) == 'function' and type(print) == 'function' and _G == _ENV",
    "(function() local t = {1, 2, 3}; table.insert(t, 1, 0); table.remove(t); return table.concat(table.move(t, 1, 3, 1, {}), '') end)() == '012'",
  }
  for _, expr in ipairs(present) do
    it("P2: available: " .. expr:sub(1, 60), function()
      local ok, err = holds_in_sandbox(expr)
      assert(ok, err)
    end)
  end

  it("P2: each policy has its own state and environment", function()
    local a = assert(src_load([[shared = "a"; return { name = "a", place = function(t) return { [t[1].id] = shared } end }]]))
    local b = assert(src_load([[return { name = "b", place = function(t) return { [t[1].id] = tostring(shared) } end }]]))
    assert.are.equal("a", a:place(tasks_of(1), nodes_of(1), ctx_of(1)).decisions.t1)
    assert.are.equal("nil", b:place(tasks_of(1), nodes_of(1), ctx_of(1)).decisions.t1)
    a:close(); b:close()
  end)

  it("P2: a runtime error in place fails the call with file and line", function()
    local p = assert(policy.load(FIX .. "runtime_error.lua"))
    local r = p:place(tasks_of(2), nodes_of(2), ctx_of(2))
    -- the report carries file and line; the policy's name is added once, by whoever shows it
    assert.matches(FIX .. "runtime_error.lua:5: attempt to index", r.error, 1, true)
    assert.is_nil(r.error:find("policy runtime-error", 1, true))
    assert.are.same({}, r.decisions)
    p:close()
  end)

  it("P2: an endless loop while loading is stopped by the load budget", function()
    local p, err = policy.load(FIX .. "loop_load.lua", FAST)
    assert.is_nil(p)
    assert.matches("loop_load.lua:2: load exceeded its budget of 200 ms", err, 1, true)
  end)

  it("P2: an endless loop in selftest is stopped by the load budget", function()
    local p, err = policy.load(FIX .. "loop_selftest.lua", FAST)
    assert.is_nil(p)
    assert.matches("loop_selftest.lua:5: selftest exceeded its budget", err, 1, true)
  end)

  it("P2: an endless loop in place is stopped by the call budget, and the policy lives on", function()
    local p = assert(src_load([[
      local calls = 0
      return { name = "sometimes", place = function(t, n)
        calls = calls + 1
        if calls == 1 then while true do end end
        return { [t[1].id] = n[1].id }
      end }]]))
    local r = p:place(tasks_of(1), nodes_of(1), ctx_of(1))
    assert.matches("place exceeded its budget of 50 ms", r.error)
    assert.matches("inline.lua:4", r.error, 1, true)
    r = p:place(tasks_of(1), nodes_of(1), ctx_of(1))
    assert.is_nil(r.error)
    assert.are.equal("n1", r.decisions.t1)
    p:close()
  end)

  it("P2: pcall and xpcall cannot swallow the budget", function()
    local p = assert(policy.load(FIX .. "pcall_loop.lua", FAST))
    local r = p:place(tasks_of(1), nodes_of(1), ctx_of(1))
    assert.matches("exceeded its budget", r.error)
    p:close()
  end)

  it("P2: an error handler that loops cannot swallow the budget", function()
    local p = assert(src_load([[return { name = "h", place = function()
      while true do xpcall(error, function() while true do end end) end
    end }]]))
    assert.matches("exceeded its budget", p:place(tasks_of(1), nodes_of(1), ctx_of(1)).error)
    p:close()
  end)

  it("P2: an endless drain_order is stopped too", function()
    local p = assert(src_load([[return { name = "d", place = function() return {} end,
      drain_order = function() while true do end end }]]))
    local order, err = p:drain_order(tasks_of(2), ctx_of(2))
    assert.is_nil(order)
    assert.matches("drain_order exceeded its budget", err)
    p:close()
  end)

  it("P2: memory exhaustion by string.rep is an error, not a crash", function()
    local p = assert(src_load([[return { name = "m", place = function()
      return { x = string.rep("x", 1 << 40) } end }]], { memory_bytes = 8 << 20, call_budget_ms = 50 }))
    local r = p:place(tasks_of(1), nodes_of(1), ctx_of(1))
    assert.matches("memory cap", r.error)
    p:close()
  end)

  it("P2: memory exhaustion by table growth is an error, and the state stays usable", function()
    local p = assert(src_load([[
      local calls = 0
      return { name = "m", place = function(t, n)
        calls = calls + 1
        if calls == 1 then local big = {} for i = 1, 1e9 do big[i] = {i} end end
        return { [t[1].id] = n[1].id }
      end }]], { memory_bytes = 16 << 20, call_budget_ms = 2000 }))
    local r = p:place(tasks_of(1), nodes_of(1), ctx_of(1))
    assert.matches("not enough memory", r.error)
    r = p:place(tasks_of(1), nodes_of(1), ctx_of(1))
    assert.is_nil(r.error)
    assert.are.equal("n1", r.decisions.t1)
    p:close()
  end)

  it("P2: a policy swallowing memory errors in a loop is ended by the budget", function()
    local p = assert(policy.load(FIX .. "memory.lua", { memory_bytes = 16 << 20, call_budget_ms = 50 }))
    local r = p:place(tasks_of(1), nodes_of(1), ctx_of(1))
    assert.is_string(r.error)
    p:close()
  end)

  it("P2: too little memory for the sandbox itself fails the load cleanly", function()
    local p, err = src_load([[return { name = "x", place = function() end }]], { memory_bytes = 4096 })
    assert.is_nil(p)
    assert.is_string(err)
  end)

  it("P2: __gc finalizers are refused (they would run where no budget applies)", function()
    local p, err = policy.load(FIX .. "gc_loop.lua", FAST)
    assert.is_nil(p)
    assert.matches("gc_loop.lua:2: setmetatable: __gc metamethods are not allowed", err, 1, true)
  end)

  it("P2: catastrophic patterns are refused before they run", function()
    for _, call in ipairs({
      [[string.rep("a", 1e5):find(".-.-.-.-.-.-b")]],
      [[("a"):rep(1e5):match("(.-)(.-)(.-)(.-)b")]],
      [[string.gsub(string.rep("a", 1e5), "a*a*a*a*b", "")]],
      [[(function() for x in string.rep("a", 1e5):gmatch("a-a-a-a-b") do end end)()]],
      [[string.rep("a", 1e6):find(string.rep("a", 5e5) .. "b", 1, true)]],
    }) do
      local p = assert(src_load(("return { name = 'p', place = function() return { x = %s } end }"):format(call)))
      local r = p:place(tasks_of(1), nodes_of(1), ctx_of(1))
      assert.matches("refused by the sandbox", r.error)
      p:close()
    end
  end)

  it("P2: a pattern loop under pcall is ended by the budget", function()
    local p = assert(policy.load(FIX .. "pattern.lua", FAST))
    assert.matches("exceeded its budget", p:place(tasks_of(1), nodes_of(1), ctx_of(1)).error)
    p:close()
  end)

  it("P2: ordinary patterns still work", function()
    assert.is_true(holds_in_sandbox([[
      ("capture-0042"):match("^capture%-(%d+)$") == "0042"
      and select(2, ("a,b,,c"):gsub(",", ";")) == 3
      and ("key = value"):match("^(%w+)%s*=%s*(.-)$") == "key"
      and ("x"):rep(3, "-") == "x-x-x" and (""):rep(1e18) == ""
    ]]))
  end)

  it("P2: table functions that shift cannot loop forever in C", function()
    for _, call in ipairs({
      [[table.insert(setmetatable({}, {__len = function() return math.maxinteger - 1 end}), 1, 1)]],
      [[table.remove(setmetatable({}, {__len = function() return math.maxinteger end}), 1)]],
      [[table.move({}, 1, math.maxinteger - 1, 2)]],
    }) do
      local p = assert(src_load(("return { name = 't', place = function() %s return {} end }"):format(call)))
      local r = p:place(tasks_of(1), nodes_of(1), ctx_of(1))
      assert.matches("exceeded its budget", r.error)
      p:close()
    end
  end)

  it("P2: cjson.encode cannot produce output beyond the memory cap", function()
    local p = assert(src_load([[return { name = 'j', place = function()
      local t = {1}
      for i = 1, 200 do t = {t, t} end -- 2^200 leaves when written out
      return { x = cjson.encode(t) }
    end }]], { memory_bytes = 8 << 20, call_budget_ms = 200 }))
    local r = p:place(tasks_of(1), nodes_of(1), ctx_of(1))
    assert.is_string(r.error)
    p:close()
  end)

  it("P2: deep recursion is an error, not a crash", function()
    local p = assert(src_load([[local function f(n) return f(n + 1) + 1 end
      return { name = 'r', place = function() return { x = f(1) } end }]], { call_budget_ms = 10000 }))
    -- Lua's stack limit ends it (the budget or the memory cap would, on a slow build)
    assert.matches("^inline.lua:1: stack overflow", p:place(tasks_of(1), nodes_of(1), ctx_of(1)).error)
    p:close()
  end)

  it("P2: a policy cannot reach the file system or run commands", function()
    os.remove("/tmp/sluice-pwned"); os.remove("/tmp/sluice-pwned2")
    local p = assert(policy.load(FIX .. "pwn.lua", FAST))
    p:place(tasks_of(1), nodes_of(1), ctx_of(1))
    p:close()
    assert.is_nil(io.open("/tmp/sluice-pwned"))
    assert.is_nil(io.open("/tmp/sluice-pwned2"))
  end)
end)

describe("P3 answers are checked", function()
  local function answer(ret)
    local p = assert(src_load(("return { name = 'w', place = function(tasks, nodes) return %s end }"):format(ret)))
    local r = p:place(tasks_of(3), nodes_of(2), ctx_of(3))
    p:close()
    return r
  end

  for _, case in ipairs({ { "42", "number" }, { "nil", "nil" }, { "'n1'", "string" }, { "true", "boolean" } }) do
    it("P3: place returning " .. case[2] .. " fails the whole call", function()
      local r = answer(case[1])
      assert.are.equal("place returned " .. case[2] .. ", expected a table", r.error)
      assert.are.same({}, r.decisions)
    end)
  end

  it("P3: a value that is not a string is an error for that task only", function()
    local r = answer("{ t1 = 1, t2 = 'n2', t3 = {} }")
    assert.is_nil(r.error)
    assert.are.same({ t2 = "n2" }, r.decisions)
    -- keyed by task, the error names neither task nor policy (the core frames it once)
    assert.are.equal("expected a node id (string), got number", r.errors.t1)
    assert.are.equal("expected a node id (string), got table", r.errors.t3)
  end)

  it("P3: a node id that cannot be an id is an error for that task", function()
    local r = answer("{ t1 = string.rep('n', 200), t2 = 'a\\0b' }")
    assert.is_string(r.errors.t1)
    assert.is_string(r.errors.t2)
  end)

  it("P3: answers for tasks not asked for are counted and named", function()
    local r = answer("{ t1 = 'n1', ghost = 'n2', [7] = 'n1' }")
    assert.are.equal(2, r.unasked)
    assert.are.same({ t1 = "n1" }, r.decisions)
    assert.is_string(r.message)
  end)

  it("P3: node ids pass through unchanged for the core to check", function()
    local r = answer("{ t1 = 'n42' }")
    assert.are.same({ t1 = "n42" }, r.decisions)
  end)
end)

-- QA saw "policy looper (…): policy looper (…:5): place exceeded …": the host named the
-- policy in its report and the core framed the report again.
describe("P3 refusals name the policy once", function()
  local Cluster = require "support.cluster"

  local function refusals_of(src, ntasks)
    local c = sluice.core({ max_operators = 64 })
    for _, n in ipairs({ "n1", "n2" }) do assert(c:join(n)) end
    local cl = Cluster.new(c)
    local p = assert(src_load(src, { call_budget_ms = 20 }))
    c:set_policy(p)
    for i = 1, ntasks or 2 do assert(c:add_task(("cf-%02d"):format(i))) end
    cl:tick(0)
    local r = c:refusals()
    c:set_policy(nil)
    p:close()
    assert.is_true(#r > 0)
    return r
  end

  local function count(s, plain)
    local n, at = 0, 1
    while true do
      local i, j = s:find(plain, at, true)
      if not i then return n end
      n, at = n + 1, j + 1
    end
  end

  it("P3/P2: a place that runs out of its budget: one 'policy NAME (', with file:line", function()
    local r = refusals_of([[return { name = "looper",
      place = function()
        while true do end
      end }]])
    assert.are.equal(1, count(r[1], "policy looper ("), r[1])
    assert.matches("policy looper (inline.lua:3): place exceeded its budget of 20 ms", r[1], 1, true)
  end)

  it("P3: a place that raises: one 'policy NAME (', with file:line", function()
    local r = refusals_of([[return { name = "raiser",
      place = function() error("no plan") end }]])
    assert.are.equal(1, count(r[1], "policy raiser ("), r[1])
    assert.matches("policy raiser (inline.lua:2): no plan", r[1], 1, true)
  end)

  it("P3: a malformed value for a task names the task once", function()
    local r = refusals_of([[return { name = "typo",
      place = function(tasks) local out = {}; for _, t in ipairs(tasks) do out[t.id] = 7 end; return out end }]], 1)
    assert.are.equal(1, count(r[1], "policy typo ("), r[1])
    assert.are.equal(1, count(r[1], "cf-01"), r[1])
    assert.matches("expected a node id (string), got number", r[1], 1, true)
  end)

  it("P3: answers for tasks not asked for: one 'policy NAME ('", function()
    local r = refusals_of([[return { name = "ghostly",
      place = function() return { ghost = "n1" } end }]])
    assert.are.equal(1, count(r[1], "policy ghostly ("), r[1])
    assert.matches('answered for task "ghost", which was not asked for', r[1], 1, true)
  end)
end)

describe("built-in C least-loaded policy", function()
  it("P3: the fallback spreads evenly, counts in-flight, respects batch_limit, never fails", function()
    local b = policy.builtin()
    assert.are.equal("builtin", b:file())
    assert.is_false(b:has_drain_order())
    assert.are.same({ n1 = 25, n2 = 25, n3 = 25, n4 = 25 }, counts(b:place(tasks_of(100), nodes_of(4), ctx_of(100)).decisions))
    local busy = nodes_of(2, { { inflight = 3 } })
    local d = b:place(tasks_of(4), busy, ctx_of(4)).decisions
    assert.are.same({ t1 = "n2", t2 = "n2", t3 = "n2", t4 = "n1" }, d)
    local n = 0
    for _ in pairs(b:place(tasks_of(10), nodes_of(4), ctx_of(3)).decisions) do n = n + 1 end
    assert.are.equal(3, n)
    local r = b:place(tasks_of(3), {}, ctx_of(3))
    assert.is_nil(r.error)
    assert.are.same({}, r.decisions)
    b:close()
  end)
end)

describe("P5 shipped policies", function()
  for _, file in ipairs({ "least_loaded.lua", "zone_spread.lua", "weighted.lua", "seed_scan.lua" }) do
    it("P5: policies/" .. file .. " loads, passes its selftest and policy check", function()
      local p = assert(policy.load("policies/" .. file))
      p:close()
      local summary, err = policy.check("policies/" .. file)
      assert(summary, err)
      assert.matches("contract and selftest ok", summary)
    end)
  end

  it("P5: least_loaded spreads 100 tasks over 4 nodes evenly", function()
    local p = assert(policy.load("policies/least_loaded.lua"))
    assert.are.same({ n1 = 25, n2 = 25, n3 = 25, n4 = 25 }, counts(p:place(tasks_of(100), nodes_of(4), ctx_of(100)).decisions))
    p:close()
  end)

  it("P5: least_loaded counts in-flight and planned tasks and respects batch_limit", function()
    local p = assert(policy.load("policies/least_loaded.lua"))
    local busy = nodes_of(3, { { inflight = 5 }, { maintainers = 2 }, {} })
    local r = p:place(tasks_of(6), busy, ctx_of(6))
    assert.are.same({ n2 = 2, n3 = 4 }, counts(r.decisions))
    local n = 0
    for _ in pairs(p:place(tasks_of(10), nodes_of(4), ctx_of(4)).decisions) do n = n + 1 end
    assert.are.equal(4, n)
    p:close()
  end)

  it("P5: least_loaded decides exactly as the built-in C policy", function()
    local lua, c = assert(policy.load("policies/least_loaded.lua")), policy.builtin()
    local nodes = {}
    for i = 1, 37 do
      nodes[i] = { id = "n" .. i, maintainers = (i * 7) % 5, dispatchers = (i * 13) % 11,
                   inflight = i % 3, labels = {} }
    end
    local one_kind, mixed = tasks_of(500), {}
    for i = 1, 500 do
      mixed[i] = { id = "m" .. i, kind = i % 3 == 0 and "maintainer" or "dispatcher", changefeed = "cf", weight = 1 }
    end
    -- the same file with place_columns taken away: the host calls place (P1 task tables)
    local f = assert(io.open("policies/least_loaded.lua"))
    local src = f:read("a")
    f:close()
    local tables = assert(policy.load_string("local p = (function() " .. src ..
      " end)() p.place_columns = nil return p", "least_loaded_tables.lua"))
    for _, tasks in ipairs({ one_kind, mixed }) do
      for _, limit in ipairs({ 500, 77 }) do
        local want = c:place(tasks, nodes, ctx_of(limit)).decisions
        assert.are.same(want, lua:place(tasks, nodes, ctx_of(limit)).decisions)
        assert.are.same(want, tables:place(tasks, nodes, ctx_of(limit)).decisions)
      end
    end
    lua:close(); c:close(); tables:close()
  end)

  it("P5: zone_spread spreads a changefeed across zones", function()
    local p = assert(policy.load("policies/zone_spread.lua"))
    local tasks = tasks_of(6, "dispatcher")
    local d = p:place(tasks, nodes_of(4), ctx_of(6)).decisions
    local zone = { n1 = "a", n2 = "a", n3 = "b", n4 = "b" }
    local per = {}
    for _, node in pairs(d) do per[zone[node]] = (per[zone[node]] or 0) + 1 end
    assert.are.same({ a = 3, b = 3 }, per)
    assert.is_true(p:has_drain_order())
    p:close()
  end)

  it("P5: weighted balances the weight of dispatchers, heaviest first", function()
    local p = assert(policy.load("policies/weighted.lua"))
    local tasks = tasks_of(5, "dispatcher")
    tasks[5].weight = 4
    local d = p:place(tasks, nodes_of(2), ctx_of(5)).decisions
    local other = d.t5 == "n1" and "n2" or "n1"
    for i = 1, 4 do assert.are.equal(other, d["t" .. i]) end
    p:close()
  end)

  it("P5: seed_scan places every task on a given node", function()
    local p = assert(policy.load("policies/seed_scan.lua"))
    local r = p:place(tasks_of(40), nodes_of(4), ctx_of(40))
    assert.are.same({ n1 = 10, n2 = 10, n3 = 10, n4 = 10 }, counts(r.decisions))
    p:close()
  end)
end)
