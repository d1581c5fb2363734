-- e2e_reload_spec.lua — hot reload of the live policy during a drain (P4, P3) against a
-- real coordinator and three nodes (support/procs.lua: batch 1, slow tasks), with a
-- policy directory of its own: a policy saved mid-drain goes live between two rounds and
-- later moves follow it; a broken one is kept out with file:line while the drain goes on;
-- one whose `place` loops is kept out the same way (the trial of `policy check` that every
-- load runs); a live policy that loops only on live data has its decisions refused and
-- the drain completes.
local C = require "support.procs"
local q, sh, run, wait, available = C.q, C.sh, C.run, C.wait, C.available
local cjson = require "cjson"

local EXTRA = 18 -- changefeeds of one table added to the six of procs.lua: more maintainers

local function json(method, path, body)
  local code, raw = C.http(method, path, body)
  local ok, j = pcall(cjson.decode, raw)
  return code, ok and j or raw
end

local function policy_info()
  local code, j = json("GET", "/api/v2/policies")
  return code == 200 and type(j) == "table" and j.items and j.items[1] or nil
end

local function drain_state(id)
  local code, j = json("GET", "/api/v2/captures/" .. id .. "/drain")
  return code == 200 and type(j) == "table" and j or nil
end

local function changefeeds()
  local _, j = json("GET", "/api/v2/changefeeds")
  return type(j) == "table" and j.items or {}
end

-- An editor's save: a temporary file renamed over the live one.
local function save(dir, src)
  local tmp = dir .. "/.least_loaded.lua.swp"
  local h = assert(io.open(tmp, "w"))
  h:write(src)
  h:close()
  assert(os.rename(tmp, dir .. "/least_loaded.lua"))
end

local TO_N3 = [[
return {
  name = "all-to-n3",
  place = function(tasks, nodes, ctx)
    local out = {}
    for _, t in ipairs(tasks) do out[t.id] = "n3" end
    return out
  end,
  selftest = function() return true end,
}
]]

local BROKEN = "return {\n  name = 'broken',\n  place = function(tasks nodes) end,\n}\n"

-- Passes its selftest and the trial of `policy check` (whose drain is of n5), then loops
-- forever on the real drain of n1: a bug only live data shows.
local LOOPING = [[
return {
  name = "loops-in-drain",
  place = function(tasks, nodes, ctx)
    if #tasks > 0 and ctx.reason == "drain" and ctx.drain_target == "n1" then
      while true do end
    end
    local out = {}
    for i, t in ipairs(tasks) do out[t.id] = nodes[(i - 1) % #nodes + 1].id end
    return out
  end,
  selftest = function() return true end,
}
]]

-- Loops on every call: the trial of `policy check` that each load runs catches it.
local LOOPS_ALWAYS = [[
return {
  name = "looper",
  place = function(tasks, nodes, ctx)
    while true do end
  end,
  selftest = function() return true end,
}
]]

local function count(s, plain)
  local n, at = 0, 1
  while true do
    local i, j = s:find(plain, at, true)
    if not i then return n end
    n, at = n + 1, j + 1
  end
end

describe("P4: hot reload during a drain (end to end)", function()
  local ok, why = available()
  local policy_dir

  before_each(function()
    if not ok then return end
    policy_dir = (sh("mktemp -d /tmp/sluice-reload-XXXXXX")):gsub("%s+$", "")
    run("cp policies/*.lua " .. q(policy_dir))
    C.policy_dir = policy_dir
    C.start()
    for i = 7, 6 + EXTRA do
      C.http("POST", "/api/v2/changefeeds", ('{"changefeed_id":"cf%d","table_count":1}'):format(i))
    end
    wait("every changefeed working", 20, function()
      local items, working = changefeeds(), 0
      for _, cf in ipairs(items) do if cf.state == "working" then working = working + 1 end end
      return working == 6 + EXTRA
    end)
    local info = wait("the policy directory watched", 5, function()
      local i = policy_info()
      return i and i.watching == true and i
    end)
    assert.are.equal(0, #(info.last_error == cjson.null and "" or info.last_error))
  end)

  after_each(function()
    if C.dir then C.stop() end
    C.dir = nil
    if policy_dir then run("rm -rf " .. q(policy_dir)) end
  end)

  it("P4: a policy saved mid-drain goes live (version grows) and later moves follow it", function()
    if not ok then return pending(why) end
    local v0 = policy_info().version
    local code = json("PUT", "/api/v2/captures/n1/drain")
    assert.are.equal(202, code)
    wait("a first maintainer moved", 10, function()
      local s = drain_state("n1")
      return s and s.remaining_maintainer_count < s.initial_maintainer_count
    end)
    save(policy_dir, TO_N3)
    local info = wait("the saved policy to go live", 5, function()
      local i = policy_info()
      return i and i.name == "all-to-n3" and i.version > v0 and i
    end)
    assert.are.equal(cjson.null, info.last_error)
    -- what is still on n1 and not moving now must go to n3
    local left = {}
    for _, cf in ipairs(changefeeds()) do
      if cf.maintainer_node == "n1" and cf.state == "working" then left[#left + 1] = cf.changefeed_id end
    end
    local pc, plan = json("GET", "/api/v2/captures/n1/drain/plan")
    assert.are.equal(200, pc)
    assert.are.equal("all-to-n3", plan.policy)
    for _, m in ipairs(plan.moves) do assert.are.equal("n3", m.to) end
    wait("the drain to complete", 25, function()
      local s = drain_state("n1")
      return s and s.state == "completed"
    end)
    assert.is_true(#left > 0, "the drain finished before the reload: nothing to check")
    local where = {}
    for _, cf in ipairs(changefeeds()) do where[cf.changefeed_id] = cf.maintainer_node end
    for _, id in ipairs(left) do assert.are.equal("n3", where[id], id) end
  end)

  it("P4: a broken policy saved mid-drain is kept out with file:line; the drain goes on", function()
    if not ok then return pending(why) end
    local before = policy_info()
    assert.are.equal(202, (json("PUT", "/api/v2/captures/n1/drain")))
    save(policy_dir, BROKEN)
    local info = wait("the error to show", 5, function()
      local i = policy_info()
      return i and i.last_error ~= cjson.null and i
    end)
    assert.are.equal(before.name, info.name)
    assert.are.equal(before.version, info.version)
    assert.truthy(info.last_error:match("least_loaded%.lua:3:"), info.last_error)
    assert.truthy(info.last_error:match("using previous policy"), info.last_error)
    -- the API says the same: 422 POLICY_ERROR with file:line
    local rc, err = json("POST", "/api/v2/policies/reload")
    assert.are.equal(422, rc)
    assert.are.equal("POLICY_ERROR", err.error_code)
    assert.truthy(err.error_msg:match("least_loaded%.lua:3:"), err.error_msg)
    wait("the drain to complete", 25, function()
      local s = drain_state("n1")
      return s and s.state == "completed"
    end)
    assert.are.equal(before.name, policy_info().name)
  end)

  it("P4/P2: a policy whose place loops is refused by the watched reload (the trial of `policy check`); the previous one stays", function()
    if not ok then return pending(why) end
    local before = policy_info()
    save(policy_dir, LOOPS_ALWAYS)
    local info = wait("the error to show", 5, function()
      local i = policy_info()
      return i and i.last_error ~= cjson.null and i
    end)
    assert.are.equal(before.name, info.name)
    assert.are.equal(before.version, info.version)
    assert.truthy(info.last_error:match("^using previous policy: policy looper %("), info.last_error)
    assert.truthy(info.last_error:match("least_loaded%.lua:4%): place exceeded its budget of 50 ms"), info.last_error)
    assert.are.equal(1, count(info.last_error, "policy looper"), info.last_error)
    -- POST …/reload runs the same trial: 422 with file:line, nothing swapped
    local rc, err = json("POST", "/api/v2/policies/reload")
    assert.are.equal(422, rc)
    assert.are.equal("POLICY_ERROR", err.error_code)
    assert.truthy(err.error_msg:match("least_loaded%.lua:4%)"), err.error_msg)
    local after = policy_info()
    assert.are.equal(before.name, after.name)
    assert.are.equal(before.version, after.version)
    -- the previous policy still places: a drain completes
    assert.are.equal(202, (json("PUT", "/api/v2/captures/n1/drain")))
    wait("the drain to complete", 25, function()
      local s = drain_state("n1")
      return s and s.state == "completed"
    end)
    assert.are.equal(before.name, policy_info().name)
  end)

  it("P3: a live policy that loops in place is refused; the drain still completes", function()
    if not ok then return pending(why) end
    local v0 = policy_info().version
    save(policy_dir, LOOPING)
    wait("the looping policy to go live", 5, function()
      local i = policy_info()
      return i and i.name == "loops-in-drain" and i.version > v0
    end)
    assert.are.equal(202, (json("PUT", "/api/v2/captures/n1/drain")))
    wait("the drain to complete", 25, function()
      local s = drain_state("n1")
      return s and s.state == "completed"
    end)
    local info = policy_info()
    assert.are.equal("loops-in-drain", info.name)
    assert.is_true(info.refusals > 0, cjson.encode(info))
    -- P3: each refusal names the policy once (QA saw "policy X (…): policy X (…:5): …")
    assert.is_true(#info.recent_refusals > 0, cjson.encode(info))
    for _, r in ipairs(info.recent_refusals) do
      assert.are.equal(1, count(r, "policy loops-in-drain ("), r)
    end
    local budget = false
    for _, r in ipairs(info.recent_refusals) do
      budget = budget or r:find("least_loaded.lua:5): place exceeded its budget", 1, true) ~= nil
      assert.falsy(r:find("\n", 1, true), "a refusal is one line: " .. r)
    end
    assert.is_true(budget, cjson.encode(info.recent_refusals))
    -- the coordinator still answers
    assert.are.equal(200, (C.http("GET", "/api/v2/health")))
  end)
end)
