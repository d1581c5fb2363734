-- e2e_drain_spec.lua — a real coordinator (`sluice serve`) and real nodes (`sluice agent`)
-- on loopback: a drain followed through the API until the node is Stopping (D1, D8, D11),
-- the older v1 route polled to 0 (D13), cancel (D3), and a `kill -9` of the coordinator
-- mid-drain with a restart on the same data directory (D4, A5, A6). Who runs what is
-- judged from the nodes' own state files, never from the coordinator's word.
local D = require "support.daemon"
local cjson = require "cjson"

local CF, TABLES = 6, 3

local function skip_without_curl() return D.skip_without_curl(pending) end

local function drain_status(h, id)
  return D.wait("GET drain of " .. id, 10, function()
    local code, body = h:http("GET", "/api/v2/captures/" .. id .. "/drain")
    if code == 503 then return false, "503 " .. body.error_code end -- D4: bootstrapping
    assert.are.equal(200, code)
    return body
  end)
end

local function liveness(h, id)
  return h:liveness_map()[id]
end

describe("e2e drain", function()
  local h
  after_each(function()
    if h then h:cleanup() end
    h = nil
  end)

  it("D1/D8/D11: a drain is followed to Stopping; every changefeed runs elsewhere, once", function()
    if skip_without_curl() then return end
    h = D.new()
    h:cluster(3, CF, TABLES)
    local code, body = h:http("PUT", "/api/v2/captures/n1/drain")
    assert.is_true(code == 202 or code == 200, "drain start: " .. tostring(code))
    assert.is_number(body.current_maintainer_count)
    assert.is_number(body.current_dispatcher_count)
    D.wait("the drain to complete", 20, function()
      local s = drain_status(h, "n1")
      if s.state ~= "completed" then
        -- D8: never a false zero while it runs
        assert.is_true(s.state == "draining", "state " .. tostring(s.state))
        assert.is_true(s.remaining_maintainer_count + s.remaining_dispatcher_count > 0,
          "remaining 0 while still draining")
      end
      return s.state == "completed", s.state
    end)
    assert.are.equal("stopping", liveness(h, "n1"))
    local s = drain_status(h, "n1")
    assert.are.equal(false, s.is_draining)
    assert.are.equal(1, s.progress)
    -- A2: no changefeed's maintainer on n1, as the coordinator sees it
    local _, list = h:http("GET", "/api/v2/changefeeds")
    assert.are.equal(CF, list.total)
    for _, cf in ipairs(list.items) do
      assert.are_not.equal("n1", cf.maintainer_node)
      assert.is_nil(cf.dispatchers_by_node.n1)
    end
    -- the nodes' own word: n1 runs nothing, everything else runs exactly once
    D.wait("n1 to report it runs nothing", 5, function()
      local st = h:state("n1")
      return st and #st.maintainers == 0 and #st.dispatchers == 0 and st.liveness == "stopping"
    end)
    h:settle(CF, TABLES, 5)
  end)

  it("D13: PUT /api/v1/captures/drain is polled down to 0, never a false 0", function()
    if skip_without_curl() then return end
    h = D.new({ latency = 60 })
    h:cluster(3, CF, TABLES)
    local saw_positive = false
    D.wait("current_table_count to reach 0", 20, function()
      local code, body = h:http("PUT", "/api/v1/captures/drain", { body = '{"capture_id":"n2"}' })
      assert.are.equal(202, code)
      local n = body.current_table_count
      if n > 0 then saw_positive = true; return false, n end
      -- 0 only once D8 holds: the node is Stopping and runs nothing
      assert.are.equal("completed", drain_status(h, "n2").state)
      return true
    end)
    assert.is_true(saw_positive)
    assert.are.equal("stopping", liveness(h, "n2"))
    local code, body = h:http("PUT", "/api/v1/captures/drain", { body = '{"capture_id":"n2"}' })
    assert.are.same({ 202, 0 }, { code, body.current_table_count })
    h:settle(CF, TABLES, 5)
  end)

  it("D3: a cancelled drain stops moving, gives the node back, and grows the epoch", function()
    if skip_without_curl() then return end
    h = D.new({ latency = 400, serve_flags = "--drain-batch-size 1" })
    h:cluster(3, CF, TABLES)
    local code = h:http("PUT", "/api/v2/captures/n3/drain")
    assert.are.equal(202, code)
    local epoch = drain_status(h, "n3").epoch
    code = h:http("DELETE", "/api/v2/captures/n3/drain")
    assert.are.equal(200, code)
    local s = drain_status(h, "n3")
    assert.are.equal("cancelled", s.state)
    assert.is_true(s.epoch > epoch)
    assert.are.equal("alive", liveness(h, "n3"))
    -- no drain to cancel any more
    local code2, body2 = h:http("DELETE", "/api/v2/captures/n3/drain")
    assert.are.equal(409, code2)
    assert.is_string(body2.error_code)
    -- moves already running finish; nothing is lost or doubled
    h:settle(CF, TABLES, 15)
  end)

  it("D4/A5: kill -9 of the coordinator mid-drain; a restart on the same data resumes it to completion", function()
    if skip_without_curl() then return end
    h = D.new({ latency = 150, serve_flags = "--drain-batch-size 2" })
    h:cluster(3, CF, TABLES)
    local code = h:http("PUT", "/api/v2/captures/n1/drain")
    assert.are.equal(202, code)
    -- R2: an operator follows it with --watch, which must ride out the restart
    local watch = h.dir .. "/watch.out"
    os.execute(("sh -c 'SLUICE_SERVER=127.0.0.1:%d SLUICE_TOKEN=%s %s drain n1 --watch >%s 2>&1; echo $? >%s.rc' &")
      :format(h.http_port, h.token, os.getenv("SLUICE_BIN") or "build/sluice", watch, watch))
    D.sleep(0.3)
    assert.are.equal("draining", drain_status(h, "n1").state)
    h:kill(h.serve_pid, "KILL")
    assert.is_true(h:reap(h.serve_pid, 5))
    h:serve() -- same ports, same data directory
    -- D4: while the nodes report back, drains are refused with NOT_READY (or it is over)
    local c2, b2 = h:http("PUT", "/api/v2/captures/n2/drain")
    assert.is_true(c2 == 503 or c2 == 409, "during bootstrap: " .. tostring(c2))
    if c2 == 503 then assert.are.equal("NOT_READY", b2.error_code) end
    D.wait("the resumed drain to complete", 25, function()
      local s = drain_status(h, "n1")
      return s.state == "completed", s.state
    end)
    assert.are.equal("stopping", liveness(h, "n1"))
    -- A8: the restored drain's end is logged by the new coordinator like any other
    D.wait("the new coordinator to log the drain's end", 5, function()
      return D.read(h.serve_log):match("drain ended[^\n]*target=n1[^\n]*state=completed") ~= nil
    end)
    local rc = D.wait("the watch to end", 20, function() return D.read(watch .. ".rc") end)
    assert.are.equal("0", rc:match("%d+"), D.read(watch))
    assert.matches("drain of n1 completed", D.read(watch), 1, true)
    -- A6: every changefeed came back from the store
    local _, list = h:http("GET", "/api/v2/changefeeds")
    assert.are.equal(CF, list.total)
    D.wait("n1 to run nothing", 5, function()
      local st = h:state("n1")
      return st and #st.maintainers == 0 and #st.dispatchers == 0
    end)
    -- judged from the nodes' own reports: no changefeed lost, none running twice
    h:settle(CF, TABLES, 10)
    -- the nodes never restarted: the same processes carried their tasks through
    for id in pairs(h.agents) do assert.is_true(D.alive(h.agents[id].pid)) end
  end)

  it("D4/L1: after a coordinator restart a drained node that kept running stays Stopping; a new process under a drained id joins Alive", function()
    if skip_without_curl() then return end
    h = D.new()
    h:cluster(4, 4, 2)
    for _, id in ipairs({ "n2", "n3" }) do
      assert.are.equal(202, (h:http("PUT", "/api/v2/captures/" .. id .. "/drain")))
      D.wait("the drain of " .. id .. " to complete", 20, function()
        return drain_status(h, id).state == "completed"
      end)
    end
    h:kill(h.agents.n3.pid, "STOP") -- n3 comes back only after the restarted coordinator's bootstrap
    h:kill(h.serve_pid, "KILL")
    assert.is_true(h:reap(h.serve_pid, 5))
    h:kill(h.agents.n2.pid, "KILL") -- n2's machine is replaced while the coordinator is down
    assert.is_true(h:reap(h.agents.n2.pid, 5))
    h:serve()
    h:agent("n2") -- a new process with the old id
    D.wait("bootstrap to end", 15, function()
      local _, body = h:http("GET", "/api/v2/health", { token = false })
      return type(body) == "table" and not body.bootstrapping
    end)
    h:kill(h.agents.n3.pid, "CONT")
    D.wait("both to be back", 15, function()
      return liveness(h, "n2") ~= nil and liveness(h, "n3") ~= nil
    end)
    assert.are.equal("alive", liveness(h, "n2"))
    assert.are.equal("stopping", liveness(h, "n3"))
    -- and the new n2 takes work again: a changefeed created now may land there
    h:settle(4, 2, 10)
  end)
  it("A5: a second agent started with an id already connected is refused; the first keeps its tasks", function()
    if skip_without_curl() then return end
    h = D.new()
    h:cluster(3, CF, TABLES)
    local before = h:state("n2")
    local dup_state, dup_log = h.dir .. "/n2-dup.json", h.dir .. "/n2-dup.log"
    local dup = h:spawn("duplicate n2", ("agent --coordinator 127.0.0.1:%d --id n2 --token-file %s " ..
      "--state-file %s --task-latency-ms 20"):format(h.node_port, h.token_file, dup_state), dup_log)
    D.wait("the duplicate to be refused", 10, function()
      return (D.read(dup_log) or ""):match("coordinator rejected this node") ~= nil
    end)
    assert.matches("already connected", D.read(dup_log), 1, true)
    assert.matches("node rejected[^\n]*is another agent running with %-%-id n2", D.read(h.serve_log))
    D.sleep(1.5) -- it keeps trying, and keeps being refused
    assert.falsy(D.read(h.serve_log):match("node restarted[^\n]*node=n2"), "the duplicate took n2's place")
    local dup_st = D.read(dup_state)
    assert.falsy(dup_st and dup_st:match('"dispatchers":%[%s*"'), "the duplicate runs tasks: " .. tostring(dup_st))
    -- the first n2 went on as it was; nothing runs twice
    local after = h:state("n2")
    assert.are.equal(#before.maintainers + #before.dispatchers, #after.maintainers + #after.dispatchers)
    h:settle(CF, TABLES, 10)
    -- once the first process is gone, a new one under the id is a restart and is let in
    h:kill(dup, "KILL")
    h:kill(h.agents.n2.pid, "KILL")
    assert.is_true(h:reap(h.agents.n2.pid, 5))
    h:agent("n2")
    D.wait("the new n2 to join", 10, function()
      return D.read(h.serve_log):match("node restarted[^\n]*node=n2") ~= nil
        or D.read(h.serve_log):match("node joined[^\n]*node=n2[^\n]*\n.*node joined[^\n]*node=n2") ~= nil
    end)
    h:settle(CF, TABLES, 20)
  end)
  it("A5/O5: a coordinator down for longer than the fence (kill -9, restarted 3 s later) interrupts no task", function()
    -- the nodes saw it close their connections and then refuse new ones: no coordinator
    -- runs, none can place their tasks, so they keep them and report to the new one
    if skip_without_curl() then return end
    -- a bootstrap of 10 s (the default is the node timeout, 4 s here): the nodes keep their
    -- tasks for 60% of it past the close, 6 s, where the node timeout alone gives 2.4 s
    h = D.new({ serve_flags = "--bootstrap-ms 10000" })
    h:cluster(3, CF, TABLES)
    -- the counters once every start under way has finished (settled placement lists a
    -- task that is still starting; its start is counted when it is done)
    local starts = D.wait("the nodes' start counters to stay put", 10, function()
      local before = {}
      for id in pairs(h.agents) do before[id] = h:state(id).starts end
      D.sleep(0.3)
      for id in pairs(h.agents) do
        if h:state(id).starts ~= before[id] then return false end
      end
      return before
    end)
    h:kill(h.serve_pid, "KILL")
    assert.is_true(h:reap(h.serve_pid, 5))
    D.sleep(3) -- node timeout 4 s here: the fence alone would fire after 2.4 s
    h:serve()
    D.wait("the nodes to be back", 25, function()
      local _, body = h:http("GET", "/api/v2/captures")
      return type(body) == "table" and body.total == 3 and not body.bootstrapping
    end)
    h:settle(CF, TABLES, 15)
    for id, a in pairs(h.agents) do
      assert.is_true(D.alive(a.pid), id .. " exited")
      local log = h:log_of(id)
      assert.falsy(log:match("stopping every task here"), id .. " fenced: " .. log)
      assert.matches("the coordinator is not running", log, 1, true)
      assert.are.equal(starts[id], h:state(id).starts, id .. " started tasks again: " .. log)
    end
  end)
  it("P4: an agent's --policy that loops is refused by the load trial; its maintainers use the built-in policy", function()
    if skip_without_curl() then return end
    h = D.new()
    local looper = h.dir .. "/looper.lua"
    local f = assert(io.open(looper, "w"))
    f:write('return { name = "looper", place = function() while true do end end }\n')
    f:close()
    h:serve()
    h:agent("n1", nil, "--policy " .. looper)
    h:agent("n2")
    D.wait("agents to join", 10, function()
      local _, body = h:http("GET", "/api/v2/captures")
      return type(body) == "table" and body.total == 2
    end)
    assert.matches('policy not loaded: maintainers use the built%-in policy[^\n]*looper[^\n]*in the load trial', h:log_of("n1"))
    for i = 1, 2 do
      assert.are.equal(201, (h:http("POST", "/api/v2/changefeeds",
        { body = ('{"changefeed_id":"cf%02d","table_count":3}'):format(i) })))
    end
    h:settle(2, 3, 20)
  end)
end)
