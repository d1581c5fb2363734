-- e2e_shutdown_spec.lua — a node's graceful shutdown (L1 Alive→Stopping) with real
-- processes on loopback: SIGTERM to `sluice agent` makes the coordinator drain that node
-- before the process exits, so its work moves instead of being cut off; a second signal
-- stops it at once; the last node, with nowhere to move its tasks, goes Stopping and exits.
-- Who runs what is judged from the nodes' own state files.
local D = require "support.daemon"

local CF, TABLES = 6, 3

local function skip_without_curl()
  if not D.have_curl() then
    pending("curl is not installed: the end-to-end specs need it (make deps)")
    return true
  end
end

describe("e2e graceful shutdown", function()
  local h
  after_each(function()
    if h then h:cleanup() end
    h = nil
  end)

  it("L1: SIGTERM drains the node first; it exits once nothing runs there, nothing ran twice", function()
    if skip_without_curl() then return end
    h = D.new()
    h:cluster(3, CF, TABLES)
    local before = h:state("n2")
    assert.is_true(#before.maintainers + #before.dispatchers > 0, "n2 runs nothing to begin with")
    local pid = h.agents.n2.pid
    h:kill(pid, "TERM")
    -- while it drains, every task still runs on exactly one node (the nodes' own word)
    D.wait("n2 to exit", 30, function()
      local ok, why = h:check_single_owner(CF, TABLES)
      local st = h:state("n2")
      if not ok and not (why or ""):match("runs on no node") then error(why) end
      return not D.alive(pid), st and st.liveness
    end)
    local log = h:log_of("n2")
    assert.matches("draining this node before stopping", log, 1, true)
    assert.matches("outcome=drained", log, 1, true)
    local last = h:state("n2")
    assert.are.same({}, last.maintainers)
    assert.are.same({}, last.dispatchers)
    assert.are.equal("stopping", last.liveness)
    -- the coordinator drained it (D8) and let it go at once (L3)
    local ids = h:liveness_map()
    assert.is_nil(ids.n2)
    assert.are.equal("alive", ids.n1)
    assert.are.equal("alive", ids.n3)
    assert.matches("node leaving: drain started.*node=n2", D.read(h.serve_log))
    h:settle(CF, TABLES, 10)
  end)

  it("L1: a second signal stops the node at once; its tasks are placed again", function()
    if skip_without_curl() then return end
    h = D.new({ latency = 1500 })
    h:cluster(3, 4, 2)
    local pid = h.agents.n2.pid
    h:kill(pid, "TERM")
    D.wait("the first signal to be taken", 5, function()
      return h:log_of("n2"):match("draining this node") ~= nil
    end)
    h:kill(pid, "TERM")
    assert.is_true(h:reap(pid, 5), "the second signal did not stop n2")
    assert.matches("stopping now", h:log_of("n2"), 1, true)
    D.wait("n2 to be gone from the coordinator", 5, function()
      return h:liveness_map().n2 == nil
    end)
    h.agents.n2 = nil -- the process is gone; its last state file no longer runs anything
    h:settle(4, 2, 30)
  end)

  it("L1: an operator who cancels a leaving node's drain is obeyed; the node exits at its timeout", function()
    if skip_without_curl() then return end
    h = D.new({ latency = 400 })
    h:serve("--drain-batch-size 1")
    h:agent("n1")
    h:agent("n2", nil, "--shutdown-timeout-ms 4000")
    h:agent("n3")
    D.wait("agents to join", 10, function()
      local _, body = h:http("GET", "/api/v2/captures")
      return body.total == 3
    end)
    for i = 1, 6 do
      assert.are.equal(201, (h:http("POST", "/api/v2/changefeeds",
        { body = ('{"changefeed_id":"cf%02d","table_count":2}'):format(i) })))
    end
    h:settle(6, 2)
    local pid = h.agents.n2.pid
    h:kill(pid, "TERM")
    D.wait("the drain of n2 to start", 10, function()
      local _, s = h:http("GET", "/api/v2/captures/n2/drain")
      return type(s) == "table" and s.state == "draining"
    end)
    -- operators see why n2 drains: the API and `sluice status` say it is shutting down
    local _, caps = h:http("GET", "/api/v2/captures")
    for _, cap in ipairs(caps.items) do assert.are.equal(cap.id == "n2", cap.leaving) end
    local out = h:cli("status")
    assert.matches("n2%s+draining[^\n]*shutting down", out)
    local code = h:http("DELETE", "/api/v2/captures/n2/drain")
    assert.are.equal(200, code)
    D.sleep(1.5) -- several ticks: the coordinator must not start it again
    local _, s = h:http("GET", "/api/v2/captures/n2/drain")
    assert.are_not.equal("draining", s.state)
    assert.are.equal("alive", h:liveness_map().n2)
    assert.is_true(h:reap(pid, 10), "n2 did not exit at its timeout")
    assert.matches("outcome=\"timed out\"", h:log_of("n2"), 1, true)
    D.wait("n2 to be gone from the coordinator", 5, function() return h:liveness_map().n2 == nil end)
    h.agents.n2 = nil
    h:settle(6, 2, 30)
  end)

  it("L1: the last node, with nowhere to move its tasks, goes Stopping and exits", function()
    if skip_without_curl() then return end
    h = D.new()
    h:cluster(1, 2, 1)
    local pid = h.agents.n1.pid
    h:kill(pid, "TERM")
    assert.is_true(h:reap(pid, 10), "n1 did not exit")
    assert.matches("outcome=\"?stopping; no drain of this node to wait for", h:log_of("n1"))
    assert.matches("node leaving without a drain: stopping it.*node=n1", D.read(h.serve_log))
    assert.is_nil(h:liveness_map().n1)
  end)
end)

describe("e2e silence", function()
  local h
  after_each(function()
    if h then
      h:kill(h.serve_pid, "CONT")
      h:cleanup()
    end
    h = nil
  end)

  it("O5: nodes that stop hearing from the coordinator stop their tasks before it could place them again", function()
    if skip_without_curl() then return end
    h = D.new() -- serve runs with --node-timeout-ms 4000: nodes fence after 2.4 s of silence
    h:cluster(3, 4, 2)
    h:kill(h.serve_pid, "STOP") -- a frozen coordinator, as a partition looks from the nodes
    D.wait("every node to stop its tasks", 15, function()
      for _, id in ipairs({ "n1", "n2", "n3" }) do
        local st = h:state(id)
        if not st or #st.maintainers + #st.dispatchers > 0 then return false, id end
      end
      return true
    end)
    for _, id in ipairs({ "n1", "n2", "n3" }) do
      assert.matches("no word from the coordinator: stopping every task here", h:log_of(id), 1, true)
    end
    h:kill(h.serve_pid, "CONT")
    -- it knows it stalled, takes the nodes back as new incarnations, and places everything once
    h:settle(4, 2, 30)
    assert.matches("the coordinator stalled", D.read(h.serve_log), 1, true)
  end)
end)
