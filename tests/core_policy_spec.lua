-- core_policy_spec.lua — the core and a Lua policy together: one call per batch (P1),
-- every decision checked and refused ones decided by the built-in policy (P3), in-flight
-- visible to policies (O4, S4), drain_order, and a policy swapped between rounds.
local sluice = require "sluice"
local Cluster = require "support.cluster"

local function policy(src, limits)
  local p, err = sluice.policy.load_string(src, "test_policy.lua", limits)
  assert(p, err)
  return p
end

local function cluster(nodes, cfg)
  local c = sluice.core(cfg)
  for _, n in ipairs(nodes) do assert(c:join(n)) end
  return c, Cluster.new(c)
end

local function add(c, n, prefix)
  for i = 1, n do assert(c:add_task(("%s%02d"):format(prefix or "cf-", i))) end
end

-- places everything on one fixed node
local function fixed(node)
  return policy(([[
    return { name = "fixed", place = function(tasks, nodes, ctx)
      local out = {}
      for _, t in ipairs(tasks) do out[t.id] = %q end
      return out
    end }]]):format(node))
end

describe("P1 one call per batch", function()
  it("P1: a batch of 20 absent tasks costs one call to place", function()
    local c, cl = cluster({ "n1", "n2" }, { max_operators = 64 })
    c:set_policy(fixed("n2"))
    add(c, 20)
    local before = c:stats().policy_calls
    cl:tick(0)
    assert.are.equal(before + 1, c:stats().policy_calls)
    assert.are.equal(20, #cl:take())
    assert.are.equal(20, c:node("n2").inflight)
    assert.are.equal(0, c:stats().refusals)
  end)
end)

describe("P3 every decision is checked", function()
  it("P3: a Draining node is refused, counted, and the built-in policy decides", function()
    local c, cl = cluster({ "n1", "n2", "n3" })
    assert(c:drain_mark("n3"))
    c:set_policy(fixed("n3"))
    add(c, 4)
    cl:tick(0)
    local st = c:stats()
    assert.are.equal(4, st.refusals)
    assert.are.equal(4, st.fallbacks)
    local msgs = cl:take()
    assert.are.equal(4, #msgs)
    for _, m in ipairs(msgs) do assert.are_not.equal("n3", m.node) end
    local r = c:refusals()
    assert.matches('policy fixed %(test_policy.lua%): task cf%-01: returned node "n3", which is Draining', r[1])
  end)

  it("P3: an unknown node is refused with its name", function()
    local c, cl = cluster({ "n1" })
    c:set_policy(fixed("n9"))
    add(c, 1)
    cl:tick(0)
    assert.are.equal(1, c:stats().refusals)
    assert.matches('returned node "n9", which is unknown', c:refusals()[1])
    assert.are.equal("n1", cl:take()[1].node)
  end)

  it("P3: a Stopping node is refused", function()
    local c, cl = cluster({ "n1", "n2" })
    assert(c:cas("n2", "alive", "stopping"))
    c:set_policy(fixed("n2"))
    add(c, 2)
    cl:tick(0)
    assert.are.equal(2, c:stats().refusals)
    assert.matches("which is Stopping", c:refusals()[1])
    for _, m in ipairs(cl:take()) do assert.are.equal("n1", m.node) end
  end)

  it("P3: wrong value types are refused per task; good answers in the same batch stand", function()
    local c, cl = cluster({ "n1", "n2" })
    c:set_policy(policy [[
      return { name = "mixed", place = function(tasks)
        local out = {}
        for i, t in ipairs(tasks) do
          if i == 1 then out[t.id] = 42 elseif i == 2 then out[t.id] = { "n1" } else out[t.id] = "n2" end
        end
        return out
      end }]])
    add(c, 4)
    cl:tick(0)
    assert.are.equal(2, c:stats().refusals)
    assert.are.equal(2, c:stats().fallbacks)
    local on = {}
    for _, m in ipairs(cl:take()) do on[m.task] = m.node end
    assert.are.equal("n2", on["cf-03"])
    assert.are.equal("n2", on["cf-04"])
    assert.is_not_nil(on["cf-01"])
    assert.is_not_nil(on["cf-02"])
  end)

  it("P3: decisions for tasks that were not asked for are refused and counted", function()
    local c, cl = cluster({ "n1" })
    c:set_policy(policy [[
      return { name = "greedy", place = function(tasks)
        local out = { ["not-asked"] = "n1", ["cf-99"] = "n1" }
        for _, t in ipairs(tasks) do out[t.id] = "n1" end
        return out
      end }]])
    add(c, 2)
    cl:tick(0)
    assert.are.equal(2, c:stats().refusals)
    assert.is_nil(c:task("not-asked"))
    assert.are.equal(2, #cl:take())
  end)

  it("P3: a policy that raises is refused as a whole; the built-in places the batch", function()
    local c, cl = cluster({ "n1", "n2" })
    c:set_policy(policy [[
      return { name = "broken", place = function(tasks)
        local x = nil
        return x.field
      end }]])
    add(c, 3)
    cl:tick(0)
    assert.are.equal(3, c:stats().refusals)
    assert.are.equal(3, #cl:take())
    assert.matches("broken", c:refusals()[1])
    assert.matches("test_policy.lua:3", c:refusals()[1])
  end)

  it("P3/P2: a policy that loops forever per call is cut off and the built-in decides", function()
    local c, cl = cluster({ "n1", "n2" })
    c:set_policy(policy([[
      return { name = "spin", place = function(tasks) while true do end end }]],
      { call_budget_ms = 20 }))
    add(c, 2)
    cl:tick(0)
    assert.are.equal(2, c:stats().refusals)
    assert.are.equal(2, #cl:take())
    assert.matches("budget", c:refusals()[1])
  end)

  it("P3: a policy that returns a non-table is refused as a whole", function()
    local c, cl = cluster({ "n1" })
    c:set_policy(policy [[return { name = "str", place = function() return "n1" end }]])
    add(c, 2)
    cl:tick(0)
    assert.are.equal(2, c:stats().refusals)
    assert.are.equal(2, #cl:take())
  end)

  it("P1: a task the policy leaves out waits for a later batch", function()
    local c, cl = cluster({ "n1" })
    c:set_policy(policy [[return { name = "lazy", place = function() return {} end }]])
    add(c, 2)
    cl:tick(0)
    assert.are.equal(0, #cl:take())
    assert.are.equal(0, c:stats().refusals)
    assert.are.equal(2, c:stats().absent)
    c:set_policy(nil) -- back to the built-in: the waiting tasks are placed
    cl:tick(1)
    assert.are.equal(2, #cl:take())
  end)
end)

describe("O4/S4 policies see in-flight", function()
  it("O4: a policy sees the in-flight moves of earlier batches", function()
    local c, cl = cluster({ "n1", "n2" })
    -- least (maintainers + inflight), first node on ties, no planning of its own
    c:set_policy(policy [[
      return { name = "inflight-aware", place = function(tasks, nodes)
        local out = {}
        for _, t in ipairs(tasks) do
          local best
          for _, n in ipairs(nodes) do
            if not best or n.maintainers + n.inflight < best.maintainers + best.inflight then best = n end
          end
          out[t.id] = best.id
        end
        return out
      end }]])
    assert(c:add_task("a")); cl:tick(0)
    assert(c:add_task("b")); cl:tick(1)
    local msgs = cl:take()
    assert.are.same({ "n1", "n2" }, { msgs[1].node, msgs[2].node })
  end)

  it("S4: a drain asks the policy with reason, target and batch limit", function()
    local c, cl = cluster({ "n1", "n2", "n3" }, { drain_batch_size = 3 })
    add(c, 6)
    cl:tick(0); cl:settle()
    c:set_policy(policy [[
      return { name = "ctx-check", place = function(tasks, nodes, ctx)
        local out = {}
        if ctx.reason ~= "drain" then return out end
        assert(ctx.drain_target == "n1" and ctx.batch_limit == #tasks and #tasks <= 3)
        for _, t in ipairs(tasks) do
          assert(t.from == "n1" and t.kind == "maintainer")
          for _, n in ipairs(nodes) do assert(n.id ~= "n1") end
          out[t.id] = "n3"
        end
        return out
      end }]])
    assert(c:drain_mark("n1"))
    cl:settle()
    assert.are.equal(0, c:stats().refusals)
    assert.are.equal(0, c:node("n1").maintainers)
    assert.are.equal(4, c:node("n3").maintainers)
  end)
end)

describe("drain_order", function()
  it("S4: drain_order decides which tasks leave first", function()
    local c, cl = cluster({ "n1", "n2" }, { drain_batch_size = 2 })
    add(c, 6)
    c:set_policy(fixed("n1"))
    cl:tick(0); cl:settle()
    c:set_policy(policy [[
      return { name = "reverse",
        place = function(tasks, nodes)
          local out = {}
          for _, t in ipairs(tasks) do out[t.id] = nodes[1].id end
          return out
        end,
        drain_order = function(tasks)
          local ids = {}
          for _, t in ipairs(tasks) do ids[#ids + 1] = t.id end
          table.sort(ids, function(a, b) return a > b end)
          return ids
        end }]])
    assert(c:drain_mark("n1"))
    local order = {}
    cl:settle(function(m) if m.type == "stop" then order[#order + 1] = m.task end end)
    assert.are.same({ "cf-06", "cf-05", "cf-04", "cf-03", "cf-02", "cf-01" }, order)
    assert.are.equal(6, c:node("n2").maintainers)
  end)

  it("P4: a policy swapped mid-drain decides the next batch", function()
    local c, cl = cluster({ "n1", "n2", "n3" }, { drain_batch_size = 1 })
    add(c, 4)
    c:set_policy(fixed("n1"))
    cl:tick(0); cl:settle()
    c:set_policy(fixed("n2"))
    assert(c:drain_mark("n1"))
    local first = c:operators()[1]
    assert.are.equal("n2", first.to)
    c:set_policy(fixed("n3")) -- swapped between two rounds
    cl:settle()
    assert.are.equal(1, c:node("n2").maintainers)
    assert.are.equal(3, c:node("n3").maintainers)
  end)
end)

describe("policy lifetime", function()
  it("P4: a policy in use by a core cannot be closed under it", function()
    local c, cl = cluster({ "n1" })
    local p = fixed("n1")
    c:set_policy(p)
    assert.has_error(function() p:close() end)
    add(c, 1)
    cl:tick(0)
    assert.are.equal("n1", cl:take()[1].node) -- the core still places with it
    c:set_policy(nil)
    p:close()
    assert.has_error(function() c:set_policy(p) end) -- a closed policy is refused
    local q = fixed("n1")
    c:set_policy(q)
    c:close()
    q:close() -- the closed core gave it back
  end)
end)

describe("P3 a policy cannot stall the cluster", function()
  it("P3: an answer naming only tasks not asked for is garbage: the built-in decides at once", function()
    local c, cl = cluster({ "n1", "n2" })
    c:set_policy(policy [[
      return { name = "array", place = function(tasks, nodes)
        local out = {}
        for i, n in ipairs(nodes) do out[i] = n.id end
        return out
      end }]])
    add(c, 3)
    cl:tick(0)
    assert.are.equal(3, #cl:take())
    assert.matches("not asked for", c:refusals()[#c:refusals()])
  end)

  it("P3: a policy that places nothing batch after batch is overruled after 3 batches", function()
    local c, cl = cluster({ "n1", "n2" })
    c:set_policy(policy [[return { name = "lazy", place = function() return {} end }]])
    add(c, 2)
    cl:tick(0); cl:tick(1)
    assert.are.equal(0, #cl:take())
    cl:tick(2)
    assert.are.equal(2, #cl:take())
    assert.are.equal(2, c:stats().refusals)
    assert.matches("left every task waiting for 3 batches", c:refusals()[1])
  end)

  it("D8/P3: a drain completes under a policy that never places anything", function()
    local c, cl = cluster({ "n1", "n2", "n3" }, { drain_batch_size = 2 })
    add(c, 6)
    cl:tick(0); cl:settle()
    c:set_policy(policy [[return { name = "lazy", place = function() return {} end }]])
    assert(c:drain_start("n1", cl.now))
    for _ = 1, 20 do cl:tick(100); cl:settle() end
    assert.are.equal(0, c:node("n1").maintainers)
    local epoch = c:stats().epoch
    for i = 1, 6 do assert(c:changefeed_report(("cf-%02d"):format(i), epoch, 0, {}, cl.now)) end
    assert.are.equal("stopping", c:liveness("n1"))
  end)
end)
