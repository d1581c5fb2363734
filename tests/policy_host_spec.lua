-- policy_host_spec.lua — how the Lua host reads a policy's answer (P1, P3): keys are
-- found whether the policy used the id string it was given or built an equal one itself,
-- for short and long (not interned) ids alike.
local sluice = require "sluice"
local policy = sluice.policy

local FAST = { load_budget_ms = 200, call_budget_ms = 50 }
local LONG = string.rep("L", 50)

local function place(body, tasks)
  local p = assert(policy.load_string(
    "return { name = 'host', place = function(tasks, nodes, ctx) " .. body .. " end }",
    "host.lua", FAST))
  local nodes = { { id = "n1", maintainers = 0, dispatchers = 0, inflight = 0, labels = {} } }
  local r = p:place(tasks, nodes, { reason = "basic", batch_limit = #tasks, now_ms = 0 })
  p:close()
  return r
end

local function task(id)
  return { id = id, kind = "maintainer", changefeed = id, weight = 1 }
end

describe("P1 the host reads answers", function()
  it("P1: long ids keyed with the strings given are answered", function()
    local r = place("local o = {} for _, t in ipairs(tasks) do o[t.id] = 'n1' end return o",
                    { task(LONG .. "1"), task("short"), task(LONG .. "2") })
    assert.are.same({ [LONG .. "1"] = "n1", short = "n1", [LONG .. "2"] = "n1" }, r.decisions)
    assert.are.equal(0, r.unasked)
  end)

  it("P1: ids the policy builds itself are answered, short or long", function()
    local r = place("return { [('L'):rep(50) .. '1'] = 'n1', ['sh' .. 'ort'] = 'n1' }",
                    { task(LONG .. "1"), task("short") })
    assert.are.same({ [LONG .. "1"] = "n1", short = "n1" }, r.decisions)
    assert.are.equal(0, r.unasked)
  end)

  it("P3: an unasked key is counted even when the batch repeats an id", function()
    local r = place("return { t1 = 'n1', ghost = 'n1' }", { task("t1"), task("t1") })
    assert.are.equal(1, r.unasked)
    assert.matches('"ghost"', r.message)
    assert.are.same({ t1 = "n1" }, r.decisions)
  end)

  it("P1: a policy that drops the ids from its tasks is still answered", function()
    local r = place("local o = {} for _, t in ipairs(tasks) do o[t.id] = 'n1'; t.id = nil end "
                    .. "return o", { task("a"), task(LONG) })
    assert.are.same({ a = "n1", [LONG] = "n1" }, r.decisions)
  end)
end)

-- place_columns: the same batch as one array per field, answered by position (B1).
local function columns_policy(body, extra)
  return assert(policy.load_string(
    "return { name = 'cols', place = function() return {} end, " .. (extra or "") ..
    " place_columns = function(batch, nodes, ctx) " .. body .. " end }", "cols.lua", FAST))
end

local NODES = { { id = "n1", maintainers = 0, dispatchers = 0, inflight = 0, labels = {} },
                { id = "n2", maintainers = 0, dispatchers = 0, inflight = 0, labels = {} } }
local BATCH = {
  { id = "cf1", kind = "maintainer", changefeed = "cf1", from = "n9", weight = 1 },
  { id = "cf1/t7", kind = "dispatcher", changefeed = "cf1", weight = 3 },
  { id = "cf2", kind = "maintainer", changefeed = "cf2", from = "n9", weight = 2 },
}
local function ctx3() return { reason = "drain", drain_target = "n9", batch_limit = 3, now_ms = 0 } end

describe("P1 place_columns, the column form of place", function()
  it("P1: every column is given when the policy names none, in task order", function()
    local p = columns_policy([[
      assert(batch.n == 3, "n")
      assert(batch.id[1] == "cf1" and batch.id[2] == "cf1/t7" and batch.id[3] == "cf2", "id")
      assert(batch.kind[1] == "maintainer" and batch.kind[2] == "dispatcher", "kind")
      assert(batch.changefeed[2] == "cf1" and batch.changefeed[3] == "cf2", "changefeed")
      assert(batch.from[1] == "n9" and batch.from[2] == nil and batch.from[3] == "n9", "from")
      assert(batch.weight[1] == 1 and batch.weight[2] == 3 and batch.weight[3] == 2, "weight")
      return { "n1", "n2", "n1" }]])
    local r = p:place(BATCH, NODES, ctx3())
    assert.is_nil(r.error)
    assert.are.same({ cf1 = "n1", ["cf1/t7"] = "n2", cf2 = "n1" }, r.decisions)
    p:close()
  end)

  it("P1: only the columns named in `columns` are built", function()
    local p = columns_policy([[
      assert(batch.id == nil and batch.changefeed == nil and batch.from == nil, "unasked column")
      assert(batch.weight == nil and batch.kind[2] == "dispatcher", "kind")
      return { [2] = "n2" }]], "columns = { 'kind' },")
    local r = p:place(BATCH, NODES, ctx3())
    assert.is_nil(r.error)
    assert.are.same({ ["cf1/t7"] = "n2" }, r.decisions)
    p:close()
  end)

  it("P1: an answer may name tasks by id as place does", function()
    local p = columns_policy("return { cf2 = 'n2', [1] = 'n1' }", "columns = { 'id' },")
    assert.are.same({ cf1 = "n1", cf2 = "n2" }, p:place(BATCH, NODES, ctx3()).decisions)
    p:close()
  end)

  it("P3: positions outside the batch and other keys are refused and counted", function()
    local p = columns_policy("return { [0] = 'n1', [4] = 'n1', [1.5] = 'n1', ghost = 'n1', [3] = 'n2' }",
                             "columns = { 'kind' },")
    local r = p:place(BATCH, NODES, ctx3())
    assert.are.equal(4, r.unasked)
    assert.matches("place_columns answered", r.message)
    assert.are.same({ cf2 = "n2" }, r.decisions)
    p:close()
  end)

  it("P3: a value that is not a node id is a per-task error", function()
    local p = columns_policy("return { 'n1', 42 }", "columns = { 'kind' },")
    local r = p:place(BATCH, NODES, ctx3())
    assert.are.same({ cf1 = "n1" }, r.decisions)
    assert.matches('expected a node id %(string%), got number', r.errors["cf1/t7"])
    p:close()
  end)

  it("P3: an answer that is not a table fails the call, named", function()
    local p = columns_policy("return 'n1'")
    local r = p:place(BATCH, NODES, ctx3())
    assert.matches("place_columns returned string, expected a table", r.error)
    p:close()
    p = columns_policy("error('no plan')")
    assert.matches("^cols.lua:1: no plan", p:place(BATCH, NODES, ctx3()).error)
    p:close()
  end)

  it("P1: `columns` must name known columns", function()
    for _, bad in ipairs({ "columns = 'kind',", "columns = { 'kind', 'zone' },", "columns = { 1 },",
                           "columns = { kind = true },", "columns = { 'kind', extra = 'id' }," }) do
      local p, err = policy.load_string("return { name = 'x', place = function() return {} end, " ..
        bad .. " place_columns = function() return {} end }", "bad.lua", FAST)
      assert.is_nil(p)
      assert.matches("bad.lua.*`columns`", err)
    end
    local p, err = policy.load_string("return { name = 'x', place = function() return {} end, " ..
      "place_columns = 7 }", "bad.lua", FAST)
    assert.is_nil(p)
    assert.matches("`place_columns` must be a function, got number", err)
  end)
end)
