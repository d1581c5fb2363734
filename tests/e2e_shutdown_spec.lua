-- e2e_shutdown_spec.lua — a node's graceful shutdown (L1 Alive→Stopping) with real
-- processes on loopback: SIGTERM to `sluice agent` makes the coordinator drain that node
-- before the process exits, so its work moves instead of being cut off; a second signal
-- stops it at once; the last node, with nowhere to move its tasks, goes Stopping and exits;
-- a coordinator that is down at the signal, or restarts mid-leave, still drains the node.
-- Who runs what is judged from the nodes' own state files.
local D = require "support.daemon"

local CF, TABLES = 6, 3

-- Whether pid runs: alive and not a zombie waiting to be reaped (kill -0 says yes to one).
local function running(pid)
  local stat = D.read("/proc/" .. pid .. "/stat")
  return stat ~= nil and stat:match("^%d+ %b() (%a)") ~= "Z"
end

local function skip_without_curl() return D.skip_without_curl(pending) end

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

  it("L1/O5: a leaving node whose connection just closes (kill -9) is not taken for gone until the node timeout", function()
    -- only the node's own word (LEAVING state 1, said as its process ends) lets the
    -- coordinator place its tasks at once; a connection that closes without it — a reset
    -- between two live processes looks the same — may leave tasks running there
    if skip_without_curl() then return end
    h = D.new({ latency = 1500 })
    h:cluster(3, 4, 2)
    local pid = h.agents.n2.pid
    h:kill(pid, "TERM")
    D.wait("the first signal to be taken", 5, function()
      return h:log_of("n2"):match("draining this node") ~= nil
    end)
    h:kill(pid, "KILL")
    assert.is_true(h:reap(pid, 5))
    D.wait("the coordinator to see n2's connection close", 5, function()
      return D.read(h.serve_log):match("node disconnected[^\n]*node=n2") ~= nil
    end)
    -- the node timeout is 4 s here: a second after the close, n2 is still a member
    D.sleep(1)
    assert.is_not_nil(h:liveness_map().n2, "n2 was dropped at once on a bare close")
    assert.falsy(D.read(h.serve_log):match("node left after a graceful shutdown[^\n]*node=n2"))
    D.wait("n2 to be declared dead after the node timeout", 15, function()
      return h:liveness_map().n2 == nil
    end)
    h.agents.n2 = nil
    h:settle(4, 2, 30)
  end)

  it("L1: a node shutting down while another drain runs takes no new dispatcher meanwhile", function()
    -- its own drain waits for its turn (D2); the maintainers learn it is cordoned from the
    -- cluster view and place nothing there, so nothing lands on it only to move again
    if skip_without_curl() then return end
    h = D.new({ latency = 300 })
    h:serve("--drain-batch-size 1")
    for i = 1, 3 do h:agent("n" .. i) end
    D.wait("agents to join", 10, function()
      local _, body = h:http("GET", "/api/v2/captures")
      return body.total == 3
    end)
    for i = 1, 4 do
      assert.are.equal(201, (h:http("POST", "/api/v2/changefeeds",
        { body = ('{"changefeed_id":"cf%02d","table_count":2}'):format(i) })))
    end
    h:settle(4, 2)
    assert.are.equal(202, (h:http("PUT", "/api/v2/captures/n1/drain")))
    local pid = h.agents.n3.pid
    h:kill(pid, "TERM")
    D.wait("n3's drain to wait for n1's", 10, function()
      return D.read(h.serve_log):match("its drain cannot start yet[^\n]*node=n3") ~= nil
    end)
    -- a new changefeed now: with n1 draining and n3 leaving, only n2 may take its tasks
    assert.are.equal(201, (h:http("POST", "/api/v2/changefeeds",
      { body = '{"changefeed_id":"late","table_count":8}' })))
    local seen = {}
    D.wait("the new changefeed to run", 20, function()
      local on = {}
      for id in pairs(h.agents) do
        local st = h:state(id)
        for _, list in ipairs({ st and st.maintainers or {}, st and st.dispatchers or {} }) do
          for _, t in ipairs(list) do
            if t == "late" or t:match("^late/") then
              on[#on + 1] = id
              if id == "n3" then seen[#seen + 1] = t end
            end
          end
        end
      end
      return #on == 10, #on .. " of 10"
    end)
    assert.are.same({}, seen, "tasks of the new changefeed landed on the leaving node n3")
    D.wait("n3 to exit drained", 40, function() return not running(pid) end)
    assert.matches("outcome=drained", h:log_of("n3"), 1, true)
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

  -- how many tasks a node's state file says run there
  local function tasks_on(st)
    return st and (#st.maintainers + #st.dispatchers) or 0
  end

  -- Waits for the leaving agent `id` to exit; meanwhile no task ever runs on two nodes.
  local function wait_exit(id, pid, changefeeds, tables, timeout)
    D.wait(id .. " to exit", timeout, function()
      local ok, why = h:check_single_owner(changefeeds, tables)
      if not ok and not (why or ""):match("runs on no node") then
        -- what the coordinator and the nodes said, to tell a race from a double owner
        local logs = { why, "== coordinator", D.read(h.serve_log) or "" }
        for a in pairs(h.agents) do logs[#logs + 1] = "== " .. a .. "\n" .. (h:log_of(a) or "") end
        error(table.concat(logs, "\n"))
      end
      return not running(pid)
    end)
  end

  it("L1: a SIGTERM'd agent whose coordinator restarts mid-leave is drained by the new coordinator, its tasks moved, not dropped", function()
    if skip_without_curl() then return end
    -- slow moves (one maintainer at a time, 400 ms a start or stop) so that the drain is
    -- still running when the coordinator dies; a long node timeout so that no node fences,
    -- and a bootstrap long enough for every node to be back before it ends
    h = D.new({ latency = 400,
      serve_flags = "--drain-batch-size 1 --node-timeout-ms 10000 --bootstrap-ms 4000" })
    h:cluster(3, CF, TABLES)
    local pid = h.agents.n2.pid
    assert.is_true(tasks_on(h:state("n2")) > 0, "n2 runs nothing to begin with")
    h:kill(pid, "TERM")
    D.wait("the drain of n2 to start", 10, function()
      local _, s = h:http("GET", "/api/v2/captures/n2/drain")
      return type(s) == "table" and s.state == "draining"
    end)
    h:kill(h.serve_pid, "KILL")
    assert.is_true(h:reap(h.serve_pid, 5))
    -- mid-leave: n2 still runs part of its work, and keeps it while the coordinator is away
    assert.is_true(tasks_on(h:state("n2")) > 0, "the drain of n2 ended before the coordinator died")
    D.sleep(0.3)
    assert.is_true(running(pid), "n2 exited when its coordinator went away")
    assert.is_true(tasks_on(h:state("n2")) > 0, "n2 dropped its tasks when its coordinator went away")
    h:serve() -- same ports, same data directory
    wait_exit("n2", pid, CF, TABLES, 30)
    local log = h:log_of("n2")
    assert.matches("leaving: asking the coordinator to drain this node", log, 1, true)
    assert.matches("outcome=drained", log, 1, true)
    assert.is_nil(log:match("no word from the coordinator"), "n2 fenced: its tasks were dropped")
    local last = h:state("n2")
    assert.are.same({}, last.maintainers)
    assert.are.same({}, last.dispatchers)
    assert.are.equal("stopping", last.liveness)
    -- the new coordinator heard the leave and let n2 go once drained (L3)
    assert.matches("node asks to leave[^\n]*node=n2", D.read(h.serve_log))
    D.wait("n2 to be gone from the coordinator", 5, function() return h:liveness_map().n2 == nil end)
    -- every task runs on the other nodes, once (their own word)
    h:settle(CF, TABLES, 15)
  end)

  it("L1: SIGTERM while the coordinator is down; it comes back within the node timeout and drains the node, nothing dropped", function()
    if skip_without_curl() then return end
    -- nodes fence after 6 s of silence; every node is back before the bootstrap ends
    h = D.new({ serve_flags = "--node-timeout-ms 10000 --bootstrap-ms 4000" })
    h:cluster(3, 4, 2)
    local pid = h.agents.n2.pid
    assert.is_true(tasks_on(h:state("n2")) > 0, "n2 runs nothing to begin with")
    h:kill(h.serve_pid, "KILL")
    assert.is_true(h:reap(h.serve_pid, 5))
    D.wait("n2 to see the coordinator go", 5, function()
      local st = h:state("n2")
      return st and st.connected == false
    end)
    h:kill(pid, "TERM")
    D.wait("the signal to be taken", 5, function()
      return h:log_of("n2"):match("draining this node before stopping") ~= nil
    end)
    D.sleep(0.5)
    assert.is_true(running(pid), "n2 exited while its coordinator was away")
    assert.is_true(tasks_on(h:state("n2")) > 0, "n2 dropped its tasks while its coordinator was away")
    assert.matches("the coordinator is out of reach; the tasks keep running", h:log_of("n2"), 1, true)
    h:serve() -- same ports, same data directory
    wait_exit("n2", pid, 4, 2, 30)
    local log = h:log_of("n2")
    assert.matches("outcome=drained", log, 1, true)
    assert.is_nil(log:match("no word from the coordinator"), "n2 fenced: its tasks were dropped")
    assert.are.same({}, h:state("n2").maintainers)
    assert.are.same({}, h:state("n2").dispatchers)
    assert.matches("node leaving: drain started[^\n]*node=n2", D.read(h.serve_log))
    h:settle(4, 2, 15)
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

  it("O5/L1: a node leaving while its coordinator is frozen still fences; then nothing is left to drain and it exits", function()
    if skip_without_curl() then return end
    h = D.new() -- nodes fence after 2.4 s of silence
    h:cluster(3, 4, 2)
    local pid = h.agents.n2.pid
    h:kill(h.serve_pid, "STOP")
    h:kill(pid, "TERM")
    D.wait("the signal to be taken", 5, function()
      return h:log_of("n2"):match("draining this node before stopping") ~= nil
    end)
    assert.is_true(pcall(D.wait, "n2 to exit", 15, function() return not running(pid) end),
      "n2 did not exit after its tasks were fenced")
    local log = h:log_of("n2")
    assert.matches("no word from the coordinator: stopping every task here", log, 1, true)
    assert.matches("outcome=\"nothing left to drain: the O5 fence stopped every task here", log, 1, true)
    assert.are.same({}, h:state("n2").maintainers)
    assert.are.same({}, h:state("n2").dispatchers)
    h:kill(h.serve_pid, "CONT")
    h.agents.n2 = nil
    h:settle(4, 2, 30)
  end)
end)
