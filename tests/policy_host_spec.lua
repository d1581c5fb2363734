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
