-- e2e_changefeed_delete_spec.lua — a real coordinator (`sluice serve`) and real nodes
-- (`sluice agent`) on loopback: `DELETE /api/v2/changefeeds/{id}` (A2) stops the
-- changefeed's maintainer and, before it, every dispatcher of it on every node, its table
-- trigger dispatcher included (D7); the other changefeeds keep running, each task once; and
-- a drain right after the delete completes only when its node truly runs nothing (D8).
-- Who runs what is judged from the nodes' own state files, never from the coordinator's word.
local D = require "support.daemon"

local NODES, CF, TABLES = 3, 4, 3

local function skip_without_curl() return D.skip_without_curl(pending) end

-- Every task of changefeed `cf` that some node's state file lists, as "node:task"; the
-- nodes in `dead` (a set) are left out.
local function listed(h, cf, dead)
  local found = {}
  for id in pairs(h.agents) do
    if dead and dead[id] then goto next_node end
    local st = h:state(id)
    if not st then return nil, "no state from " .. id end
    for _, t in ipairs(st.maintainers) do
      if t == cf then found[#found + 1] = id .. ":" .. t end
    end
    for _, t in ipairs(st.dispatchers) do
      if t:sub(1, #cf + 1) == cf .. "/" then found[#found + 1] = id .. ":" .. t end
    end
    ::next_node::
  end
  table.sort(found)
  return found
end

local function wait_gone(h, cf, timeout, dead)
  D.wait("no node to run anything of " .. cf, timeout, function()
    local found, why = listed(h, cf, dead)
    if not found then return false, why end
    return #found == 0, table.concat(found, " ")
  end)
end

-- The changefeeds in `cfs` run exactly once each, maintainer, trigger and tables, by the
-- nodes' own account (D.settle counts cf01..cfNN and cannot skip a deleted one).
local function runs_once(h, cfs)
  local owners = {}
  for id in pairs(h.agents) do
    local st = h:state(id)
    if not st then return false, "no state from " .. id end
    for _, list in ipairs({ st.maintainers, st.dispatchers }) do
      for _, t in ipairs(list) do
        owners[t] = owners[t] or {}
        table.insert(owners[t], id)
      end
    end
  end
  for _, cf in ipairs(cfs) do
    local want = { cf, cf .. "/trigger" }
    for t = 1, TABLES do want[#want + 1] = ("%s/t%d"):format(cf, t) end
    for _, task in ipairs(want) do
      local o = owners[task]
      if not o or #o ~= 1 then
        return false, ("%s runs on %s"):format(task, o and table.concat(o, ",") or "no node")
      end
    end
  end
  return true
end

local REMAINING = { "cf01", "cf03", "cf04" }

describe("e2e changefeed delete", function()
  local h
  after_each(function()
    if h then h:cleanup() end
    h = nil
  end)

  it("A2/D7: DELETE stops the changefeed's maintainer and all its dispatchers on every node; the others run once", function()
    if skip_without_curl() then return end
    h = D.new()
    h:cluster(NODES, CF, TABLES)
    local before = assert(listed(h, "cf02"))
    assert.are.equal(TABLES + 2, #before) -- maintainer, trigger, tables: the nodes run it
    local code, body = h:http("DELETE", "/api/v2/changefeeds/cf02")
    assert.are.equal(202, code)
    assert.are.equal("cf02", body.changefeed_id)
    wait_gone(h, "cf02", 20)
    -- the coordinator forgot it too, and says so
    local c2, b2 = h:http("GET", "/api/v2/changefeeds/cf02")
    assert.are.equal(404, c2)
    assert.is_string(b2.error_code)
    local _, list = h:http("GET", "/api/v2/changefeeds")
    assert.are.equal(CF - 1, list.total)
    for _, cf in ipairs(list.items) do assert.are_not.equal("cf02", cf.changefeed_id) end
    -- nothing else was lost or doubled
    D.wait("the other changefeeds to run once", 10, function() return runs_once(h, REMAINING) end)
    -- A2: the captures' counts, as the maintainers reported them, no longer hold cf02
    D.wait("the captures' dispatcher counts to drop cf02's", 10, function()
      local _, caps = h:http("GET", "/api/v2/captures")
      local maintainers, dispatchers = 0, 0
      for _, c in ipairs(caps.items) do
        maintainers = maintainers + c.maintainer_count
        dispatchers = dispatchers + c.dispatcher_count
      end
      return maintainers == CF - 1 and dispatchers == (CF - 1) * (TABLES + 1),
        ("%d maintainers, %d dispatchers"):format(maintainers, dispatchers)
    end)
    -- and nothing of cf02 came back meanwhile
    assert.are.same({}, listed(h, "cf02"))
    assert.is_true(runs_once(h, REMAINING))
  end)

  it("A2/D8: a drain started right after a delete completes only once its node runs nothing", function()
    if skip_without_curl() then return end
    h = D.new()
    h:cluster(NODES, CF, TABLES)
    -- a node that runs some of cf02's table dispatchers
    local target
    for _, entry in ipairs(assert(listed(h, "cf02"))) do
      local node, task = entry:match("^([^:]+):(.*)$")
      if task:match("/t%d+$") then target = node break end
    end
    assert.is_string(target)
    local code = h:http("DELETE", "/api/v2/changefeeds/cf02")
    assert.are.equal(202, code)
    code = h:http("PUT", "/api/v2/captures/" .. target .. "/drain")
    assert.is_true(code == 202 or code == 200, "drain start: " .. tostring(code))
    D.wait("the drain of " .. target .. " to complete", 25, function()
      local c, s = h:http("GET", "/api/v2/captures/" .. target .. "/drain")
      if c ~= 200 then return false, c end
      return s.state == "completed", s.state
    end)
    -- D8: "completed" means the node runs nothing, cf02's dispatchers included
    D.wait(target .. " to report it runs nothing", 5, function()
      local st = h:state(target)
      if not st then return false end
      return #st.maintainers == 0 and #st.dispatchers == 0,
        table.concat(st.maintainers, " ") .. " " .. table.concat(st.dispatchers, " ")
    end)
    wait_gone(h, "cf02", 10)
    D.wait("the other changefeeds to run once", 10, function() return runs_once(h, REMAINING) end)
  end)
  it("A2: a changefeed deleted while its maintainer's node is dead: its dispatchers elsewhere are still stopped", function()
    if skip_without_curl() then return end
    h = D.new({ env = { SLUICE_LOG = "debug" } }) -- the agents log every task they start
    h:cluster(NODES, CF, TABLES)
    -- a changefeed whose maintainer runs on one node and some table dispatcher on another
    local cf, host
    for i = 1, CF do
      local id = ("cf%02d"):format(i)
      local m, elsewhere
      for _, entry in ipairs(assert(listed(h, id))) do
        local node, task = entry:match("^([^:]+):(.*)$")
        if task == id then m = node end
      end
      for _, entry in ipairs(assert(listed(h, id))) do
        local node, task = entry:match("^([^:]+):(.*)$")
        if task:match("/t%d+$") and node ~= m then elsewhere = true end
      end
      if m and elsewhere then cf, host = id, m break end
    end
    assert.is_string(cf, "no changefeed with a dispatcher away from its maintainer")
    h:kill(h.agents[host].pid, "KILL")
    assert.is_true(h:reap(h.agents[host].pid, 5))
    local logged = {}
    for id in pairs(h.agents) do logged[id] = #h:log_of(id) end
    local code = h:http("DELETE", "/api/v2/changefeeds/" .. cf)
    assert.are.equal(202, code)
    -- the dead node is declared dead after the node timeout (4 s here); the maintainer is
    -- then started on a live node only to stop there, taking its dispatchers along
    local dead = { [host] = true }
    wait_gone(h, cf, 30, dead)
    local c2 = h:http("GET", "/api/v2/changefeeds/" .. cf)
    assert.are.equal(404, c2)
    -- and it stays gone: nothing of it comes back on the live nodes
    D.sleep(1)
    assert.are.same({}, listed(h, cf, dead))
    -- the maintainer placed again only to sweep started no dispatcher of the deleted
    -- changefeed, not even for a moment: no trigger, no table placed (A2)
    for id in pairs(h.agents) do
      if not dead[id] then
        local since = h:log_of(id):sub(logged[id] + 1)
        assert.falsy(since:match('msg="task started"[^\n]*task=' .. cf .. "/"), id .. ": " .. since)
      end
    end
  end)
end)
