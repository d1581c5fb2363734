-- core_spec.lua — the sans-I/O core through `require "sluice"`: liveness (L1–L4),
-- operators (O1–O7) and schedulers (S1–S5). Every `it` names the requirement it checks.
local sluice = require "sluice"
local Cluster = require "support.cluster"

local function core_with(nodes, tasks, cfg)
  local c = sluice.core(cfg)
  for _, n in ipairs(nodes) do assert(c:join(n)) end
  for i = 1, tasks or 0 do assert(c:add_task(("cf-%02d"):format(i), "maintainer")) end
  return c, Cluster.new(c)
end

local function ok_check(c)
  local ok, why = c:check()
  assert(ok, why)
end

local STATES = { "alive", "draining", "stopping" }
local ALLOWED = { ["alive>draining"] = true, ["draining>stopping"] = true, ["alive>stopping"] = true }

-- A node in `state`, reached through allowed transitions only.
local function node_in(state)
  local c = sluice.core()
  assert(c:join("n1")); assert(c:join("n2"))
  if state == "draining" then assert(c:drain_mark("n1")) end
  if state == "stopping" then assert(c:cas("n1", "alive", "stopping")) end
  assert.are.equal(state, c:liveness("n1"))
  return c
end

describe("L1 liveness", function()
  it("L1: a node joins Alive", function()
    local c = sluice.core()
    assert(c:join("n1"))
    assert.are.equal("alive", c:liveness("n1"))
  end)

  for _, from in ipairs(STATES) do
    for _, to in ipairs(STATES) do
      local allowed = ALLOWED[from .. ">" .. to] == true
      it(("L1: CAS %s -> %s is %s"):format(from, to, allowed and "allowed" or "refused"), function()
        local c = node_in(from)
        assert.are.equal(allowed, sluice.transition_allowed(from, to))
        local ok, _, code = c:cas("n1", from, to)
        if allowed then
          assert.is_true(ok)
          assert.are.equal(to, c:liveness("n1"))
        else
          assert.is_nil(ok)
          assert.are.equal("EINVAL", code)
          assert.are.equal(from, c:liveness("n1"))
        end
      end)
    end
  end

  it("L1: a CAS whose expected value is stale loses and changes nothing", function()
    local c = node_in("stopping")
    local ok, _, code = c:cas("n1", "alive", "draining")
    assert.is_nil(ok)
    assert.are.equal("EAGAIN", code)
    assert.are.equal("stopping", c:liveness("n1"))
  end)

  it("L1: a Stopping node cannot be marked for drain", function()
    local c = node_in("stopping")
    local ok, _, code = c:drain_mark("n1")
    assert.is_nil(ok)
    assert.are.equal("EAGAIN", code)
    assert.are.equal("stopping", c:liveness("n1"))
  end)

  it("L1/D3: cancel is the sanctioned way from Draining back to Alive", function()
    local c = node_in("draining")
    assert(c:drain_unmark("n1"))
    assert.are.equal("alive", c:liveness("n1"))
    assert.is_nil(c:drain_target())
    -- and only for the drain target
    local ok, _, code = c:drain_unmark("n2")
    assert.is_nil(ok)
    assert.are.equal("EINVAL", code)
  end)

  it("D2: at most one drain target", function()
    local c = sluice.core()
    for _, n in ipairs { "n1", "n2", "n3" } do assert(c:join(n)) end
    assert(c:drain_mark("n1"))
    assert(c:drain_mark("n1")) -- idempotent
    local ok, _, code = c:drain_mark("n2")
    assert.is_nil(ok)
    assert.are.equal("EBUSY", code)
    assert.are.equal("alive", c:liveness("n2"))
    assert.are.equal("n1", c:drain_target())
  end)

  it("L1: Draining -> Stopping of the target ends the drain", function()
    local c = node_in("draining")
    assert(c:cas("n1", "draining", "stopping"))
    assert.is_nil(c:drain_target())
  end)
end)

describe("L2 only Alive nodes are schedulable", function()
  it("L2: no task is ever started on a Draining or Stopping node, under random placements", function()
    for seed = 1, 25 do
      math.randomseed(seed)
      local nodes = {}
      for i = 1, math.random(2, 6) do nodes[i] = "n" .. i end
      local c, cl = core_with(nodes, 0, { max_operators = math.random(1, 16), drain_batch_size = math.random(1, 4) })
      local ntasks, started = 0, {}
      for step = 1, 60 do
        local r = math.random()
        if r < 0.4 then
          ntasks = ntasks + 1
          assert(c:add_task(("t%d"):format(ntasks), math.random() < 0.5 and "maintainer" or "dispatcher"))
        elseif r < 0.5 then
          c:drain_mark(nodes[math.random(#nodes)])
        elseif r < 0.55 then
          local n = nodes[math.random(#nodes)]
          c:cas(n, "alive", "stopping")
        elseif r < 0.6 and c:drain_target() then
          c:drain_unmark(c:drain_target())
        end
        cl:tick(1000)
        -- deliver one wave; every operator's first start must go to a node that is Alive
        -- when it is sent (a retry of that same operator may follow a later drain mark)
        for _ = 1, 50 do
          local msgs = cl:take()
          if #msgs == 0 then break end
          for _, m in ipairs(msgs) do
            if m.type == "start" and not started[m.op] then
              started[m.op] = true
              assert.are.equal("alive", c:liveness(m.node),
                ("seed %d step %d: %s started on %s"):format(seed, step, m.task, m.node))
            end
          end
          for _, m in ipairs(msgs) do cl:deliver(m) end
        end
        ok_check(c)
        for i = 1, ntasks do
          assert.is_true(#cl:owners("t" .. i) <= 1, "two owners of t" .. i)
        end
      end
    end
  end)

  it("L2: the drain target gets nothing while other tasks are placed", function()
    local c, cl = core_with({ "n1", "n2", "n3" }, 0)
    assert(c:drain_mark("n2"))
    for i = 1, 30 do assert(c:add_task("cf-" .. i)) end
    cl:tick(0); cl:settle()
    assert.are.equal(0, c:node("n2").maintainers)
    assert.are.equal(15, c:node("n1").maintainers)
    assert.are.equal(15, c:node("n3").maintainers)
  end)
end)

describe("L3/L4 nodes leaving", function()
  it("L3: a node that leaves is freed; its tasks become absent and are placed again", function()
    local c, cl = core_with({ "n1", "n2" }, 4)
    cl:tick(0); cl:settle()
    assert.are.equal(2, c:node("n1").maintainers)
    assert(cl:leave("n1"))
    local none, _, code = c:node("n1")
    assert.is_nil(none)
    assert.are.equal("ENOENT", code)
    assert.is_nil(c:liveness("n1"))
    cl:settle()
    assert.are.equal(4, c:node("n2").maintainers)
    -- the same id joining again starts from nothing
    assert(c:join("n1"))
    local n1 = c:node("n1")
    assert.are.same({ "alive", 0, 0, 0 }, { n1.liveness, n1.maintainers, n1.inflight, n1.ops_from })
    ok_check(c)
  end)

  it("L4: a draining node left alone returns to Alive and the drain record is cleared", function()
    local c, cl = core_with({ "n1", "n2" }, 2)
    cl:tick(0); cl:settle()
    assert(c:drain_mark("n1"))
    cl:leave("n2")
    assert.are.equal("alive", c:liveness("n1"))
    assert.is_nil(c:drain_target())
    cl:settle()
    assert.are.equal(2, c:node("n1").maintainers)
    ok_check(c)
  end)

  it("L4: a drain cannot start when there is no other node", function()
    local c = core_with({ "n1" })
    local ok, _, code = c:drain_mark("n1")
    assert.is_nil(ok)
    assert.are.equal("ELIMIT", code)
    assert.are.equal("alive", c:liveness("n1"))
  end)
end)

describe("O operators", function()
  it("O1: one operator per task, even when a removal arrives during an add", function()
    local c, cl = core_with({ "n1" }, 1)
    cl:tick(0)
    local msgs = cl:take()
    assert.are.equal(1, #msgs)
    assert(c:remove_task("cf-01"))
    assert.are.equal(1, #c:operators())
    assert.is_true(c:task("cf-01").remove_pending)
    cl:deliver(msgs[1]) -- the add finishes, then the removal starts
    local ops = c:operators()
    assert.are.equal(1, #ops)
    assert.are.equal("remove", ops[1].type)
    cl:settle()
    assert.is_nil(c:task("cf-01"))
    assert.are.equal(0, #c:operators())
    ok_check(c)
  end)

  it("A2: a maintainer that never ran is gone at once when removed", function()
    local c = core_with({ "n1" }, 1)
    assert(c:remove_task("cf-01"))
    assert.is_nil(c:task("cf-01"))
    assert.are.equal(0, #c:operators())
  end)

  it("A2: a removed maintainer whose node is gone is started on a live node only to be stopped there", function()
    -- its dispatchers may still run on other nodes, and only a running maintainer sweeps them
    local c, cl = core_with({ "n1" }, 0)
    assert(c:add_task("cf-a", "maintainer"))
    cl:tick(0); cl:settle()
    assert(cl:leave("n1")) -- nowhere to go: it runs nowhere now
    assert.are.equal("absent", c:task("cf-a").state)
    assert(c:remove_task("cf-a"))
    assert.is_not_nil(c:task("cf-a")) -- not forgotten: nothing has swept its dispatchers
    assert.is_true(c:task("cf-a").remove_pending)
    assert(c:join("n2"))
    cl:tick(0); cl:settle()
    assert.is_nil(c:task("cf-a"))
    assert.are.same({}, cl:owners("cf-a"))
    local on_n2 = {}
    for _, m in ipairs(cl.sent) do
      if m.task == "cf-a" and m.node == "n2" then on_n2[#on_n2 + 1] = m.type end
    end
    assert.are.same({ "start", "stop" }, on_n2)
    ok_check(c)
  end)

  it("A2: a maintainer whose node dies while it is being removed is placed again and stopped there", function()
    local c, cl = core_with({ "n1", "n2" }, 0)
    assert(c:add_task("cf-a", "maintainer"))
    cl:tick(0); cl:settle()
    local host = c:task("cf-a").node
    local other = host == "n1" and "n2" or "n1"
    assert(c:remove_task("cf-a"))
    local msgs = cl:take()
    assert.are.same({ "stop", host }, { msgs[1].type, msgs[1].node })
    assert(cl:leave(host)) -- the stop never arrives: its sweep ended with the node
    assert.is_not_nil(c:task("cf-a"))
    cl:tick(0); cl:settle()
    assert.is_nil(c:task("cf-a"))
    local on_other = {}
    for _, m in ipairs(cl.sent) do
      if m.task == "cf-a" and m.node == other then on_other[#on_other + 1] = m.type end
    end
    assert.are.same({ "start", "stop" }, on_other)
    ok_check(c)
  end)

  it("O2: a move stops on the origin, then starts on the destination, and ends only when it works there", function()
    local c, cl = core_with({ "n1", "n2" }, 0, { drain_batch_size = 1 })
    assert(c:add_task("cf-a"))
    cl:tick(0); cl:settle()
    local origin = c:task("cf-a").node
    local dest = origin == "n1" and "n2" or "n1"
    assert(c:drain_mark(origin))
    local msgs = cl:take()
    assert.are.same({ { "stop", origin } }, { { msgs[1].type, msgs[1].node } })
    assert.are.equal("stopping", c:task("cf-a").state)
    assert.are.equal(1, c:node(dest).inflight)
    cl:deliver(msgs[1])
    msgs = cl:take()
    assert.are.same({ "start", dest }, { msgs[1].type, msgs[1].node })
    local t = c:task("cf-a")
    assert.is_nil(t.node)
    assert.is_true(t.has_operator)
    assert.are.equal("start", c:operators()[1].step)
    cl:deliver(msgs[1])
    t = c:task("cf-a")
    assert.are.equal(dest, t.node)
    assert.are.equal("working", t.state)
    assert.is_false(t.has_operator)
    assert.are.equal(0, c:node(dest).inflight)
  end)

  it("O3: in-progress operators never exceed max_operators", function()
    local c, cl = core_with({ "n1", "n2", "n3" }, 50, { max_operators = 7 })
    cl:tick(0)
    local msgs = cl:take()
    assert.are.equal(7, #msgs)
    assert.are.equal(7, c:stats().ops_in_progress)
    assert.are.equal(43, c:stats().absent)
    cl:deliver(msgs[1]) -- one finishes: exactly one more starts
    local more = cl:take()
    assert.are.equal(1, #more)
    assert.are.equal(7, c:stats().ops_in_progress)
    for i = 2, #msgs do cl:deliver(msgs[i]) end
    cl:deliver(more[1])
    cl:settle(function() assert.is_true(c:stats().ops_in_progress <= 7) end)
    assert.are.equal(0, c:stats().absent)
    ok_check(c)
  end)

  it("O3: drain operators are counted by origin and destination, not by the task's binding", function()
    -- The TiCDC PR counted drain moves by the task's current node: once the origin had
    -- stopped a task it was no longer "on" the target and the batch leaked.
    local c, cl = core_with({ "n1", "n2", "n3" }, 0, { drain_batch_size = 2, max_operators = 64 })
    for i = 1, 12 do assert(c:add_task("cf-" .. i)) end
    cl:tick(0); cl:settle()
    assert(c:drain_mark("n1"))
    -- deliver the stops only; hold every start: the origin has let go of the tasks
    local _, held = cl:settle(function(m) if m.type == "start" then return "hold" end end)
    assert.are.equal(2, #held)
    assert.are.equal(2, c:stats().drain_in_progress)
    assert.are.equal(2, c:stats().ops_in_progress)
    for _, op in ipairs(c:operators()) do assert.are.equal("n1", op.from) end
    -- one start completes: exactly one more move starts
    cl:deliver(held[1])
    local msgs = cl:take()
    assert.are.equal(1, #msgs)
    assert.are.same({ "stop", "n1" }, { msgs[1].type, msgs[1].node })
    assert.are.equal(2, c:stats().drain_in_progress)
    ok_check(c)
  end)

  it("O3: the global limit also bounds a drain", function()
    local c, cl = core_with({ "n1", "n2" }, 10, { drain_batch_size = 8, max_operators = 3 })
    cl:tick(0); cl:settle()
    assert(c:drain_mark("n1"))
    assert.are.equal(3, #cl:take())
    assert.are.equal(3, c:stats().drain_in_progress)
  end)

  it("O4: in-flight per node is the number of operators on their way to it", function()
    local c, cl = core_with({ "n1", "n2" }, 6, { max_operators = 64 })
    cl:tick(0)
    local msgs = cl:take()
    local expect = { n1 = 0, n2 = 0 }
    for _, m in ipairs(msgs) do expect[m.node] = expect[m.node] + 1 end
    assert.are.equal(expect.n1, c:node("n1").inflight)
    assert.are.equal(expect.n2, c:node("n2").inflight)
    cl:deliver(msgs[1])
    expect[msgs[1].node] = expect[msgs[1].node] - 1
    assert.are.equal(expect[msgs[1].node], c:node(msgs[1].node).inflight)
  end)

  it("O5: destination fails before the origin stopped: the move is abandoned, the task stays", function()
    local c, cl = core_with({ "n1", "n2", "n3" }, 0, { drain_batch_size = 1 })
    assert(c:add_task("cf-a"))
    cl:tick(0); cl:settle()
    local origin = c:task("cf-a").node
    assert(c:drain_mark(origin))
    local stop = cl:take()[1]
    local dest = c:operators()[1].to
    cl:leave(dest) -- before the stop reached the origin
    assert.are.equal(origin, c:task("cf-a").node)
    assert.is_false(c:task("cf-a").has_operator == true and c:operators()[1].to == dest)
    -- the stop arrives late; the origin stops it; it is placed again, never lost
    cl:deliver(stop)
    cl:settle()
    local t = c:task("cf-a")
    assert.are.equal("working", t.state)
    assert.is_not_nil(t.node)
    assert.are_not.equal(origin, t.node)
    assert.are.equal(1, #cl:owners("cf-a"))
    ok_check(c)
  end)

  it("O5: destination fails after the origin stopped: the task is absent and placed again", function()
    local c, cl = core_with({ "n1", "n2", "n3" }, 0, { drain_batch_size = 1 })
    assert(c:add_task("cf-a"))
    cl:tick(0); cl:settle()
    local origin = c:task("cf-a").node
    assert(c:drain_mark(origin))
    cl:deliver(cl:take()[1]) -- origin stops it
    local start = cl:take()[1]
    assert.are.equal("start", start.type)
    cl:leave(start.node)
    cl:settle()
    local t = c:task("cf-a")
    assert.are.equal("working", t.state)
    assert.are_not.equal(origin, t.node)
    assert.are_not.equal(start.node, t.node)
    assert.are.same({ t.node }, cl:owners("cf-a"))
    ok_check(c)
  end)

  it("O6: origin fails during a move: the move goes on to the destination", function()
    local c, cl = core_with({ "n1", "n2" }, 0, { drain_batch_size = 1 })
    assert(c:add_task("cf-a"))
    cl:tick(0); cl:settle()
    local origin = c:task("cf-a").node
    local dest = origin == "n1" and "n2" or "n1"
    assert(c:drain_mark(origin))
    assert.are.equal("stop", cl:take()[1].type)
    c:join("n3") -- so that the origin leaving does not make the destination the last node
    cl:leave(origin)
    local msgs = cl:take()
    assert.are.same({ "start", dest, "cf-a" }, { msgs[1].type, msgs[1].node, msgs[1].task })
    cl:deliver(msgs[1])
    assert.are.equal(dest, c:task("cf-a").node)
    ok_check(c)
  end)

  it("O7: a timed-out step is retried with exponential backoff and shows as stuck", function()
    local c, cl = core_with({ "n1" }, 1, { step_timeout_ms = 100, backoff_max_ms = 350, stuck_after = 3 })
    c:tick(0)
    local first = c:outbox()[1]
    assert.are.equal(100, c:operators()[1].deadline_ms)
    c:tick(99)
    assert.are.equal(0, #c:outbox())
    c:tick(100) -- first retry, the next wait doubles
    local again = c:outbox()
    assert.are.equal(1, #again)
    assert.are.same({ "start", "n1", first.op }, { again[1].type, again[1].node, again[1].op })
    local op = c:operators()[1]
    assert.are.same({ 1, 300, false }, { op.retries, op.deadline_ms, op.stuck })
    c:tick(300)
    op = c:operators()[1]
    assert.are.same({ 2, 650 }, { op.retries, op.deadline_ms }) -- 400 capped at 350
    c:tick(650)
    op = c:operators()[1]
    assert.is_true(op.stuck)
    assert.matches("start on n1 timed out 3 times", op.stuck_reason)
    -- the late report still finishes it
    c:outbox()
    assert(c:report("n1", "cf-01", "working", 700))
    assert.are.equal(0, #c:operators())
    assert.are.equal("n1", c:task("cf-01").node)
  end)

  it("O2/A5: a task reported running where nobody placed it is adopted; a second copy is stopped", function()
    local c = core_with({ "n1", "n2" })
    assert(c:add_task("cf-a"))
    assert(c:report("n2", "cf-a", "working", 0)) -- a bootstrap report
    assert.are.equal("n2", c:task("cf-a").node)
    assert.are.equal(0, c:stats().absent)
    c:outbox()
    assert(c:report("n1", "cf-a", "working", 1))
    local msgs = c:outbox()
    assert.are.same({ "stop", "n1", "cf-a" }, { msgs[1].type, msgs[1].node, msgs[1].task })
    assert.are.equal("n2", c:task("cf-a").node)
  end)

  it("O2: a task that dies on its node becomes absent and is placed again", function()
    local c, cl = core_with({ "n1" }, 1)
    cl:tick(0); cl:settle()
    assert(c:report("n1", "cf-01", "stopped", 5))
    cl:settle()
    assert.are.equal("working", c:task("cf-01").state)
    assert.are.equal("n1", c:task("cf-01").node)
  end)

  it("A4: reports for unknown nodes or tasks, and bad arguments, are refused without harm", function()
    local c = core_with({ "n1" }, 1)
    assert.are.equal("ENOENT", select(3, c:report("nX", "cf-01", "working", 0)))
    assert.are.equal("ENOENT", select(3, c:report("n1", "nope", "working", 0)))
    assert.has_error(function() c:report("n1", "cf-01", "exploded", 0) end)
    assert.are.equal("EEXIST", select(3, c:join("n1")))
    assert.are.equal("EINVAL", select(3, c:join("")))
    assert.are.equal("EINVAL", select(3, c:join(string.rep("x", 64))))
    assert.are.equal("EEXIST", select(3, c:add_task("cf-01")))
    ok_check(c)
  end)
end)

describe("S schedulers", function()
  it("S1: one round runs basic before drain", function()
    local c, cl = core_with({ "n1", "n2", "n3" }, 6, { drain_batch_size = 2 })
    cl:tick(0); cl:settle()
    assert(c:add_task("later")) -- absent, waiting for the next round
    assert(c:drain_mark("n1")) -- marking runs a round at once
    local msgs = cl:take()
    assert.are.equal(3, #msgs)
    assert.are.same({ "start", "later" }, { msgs[1].type, msgs[1].task })
    assert.are.same({ "stop", "stop" }, { msgs[2].type, msgs[3].type })
  end)

  it("S2: with no schedulable node, basic waits and says why", function()
    local c, cl = core_with({}, 3)
    assert(cl:tick(0))
    assert.are.equal(0, #cl:take())
    assert.matches("no schedulable node", c:stats().waiting)
    assert(c:join("n1"))
    assert(c:cas("n1", "alive", "stopping"))
    assert(cl:tick(10))
    assert.are.equal(0, #cl:take())
    assert.matches("3 tasks wait: no schedulable node", c:stats().waiting)
    assert(c:join("n2"))
    cl:tick(20); cl:settle()
    assert.are.equal(3, c:node("n2").maintainers)
    assert.are.equal("", c:stats().waiting)
  end)

  it("S3/D10: a drain with no schedulable destination pauses and says blocked", function()
    local c, cl = core_with({ "n1", "n2" }, 4)
    cl:tick(0); cl:settle()
    assert(c:cas("n2", "alive", "stopping"))
    assert(c:drain_mark("n1")) -- n1 drains with n2 Stopping: nowhere to go
    cl:tick(1000)
    assert.are.equal(0, #cl:take())
    assert.matches("blocked", c:stats().waiting)
    assert(c:join("n3"))
    cl:tick(2000); cl:settle()
    assert.are.equal(0, c:node("n1").maintainers)
  end)

  it("S3: balance evens load, pauses during a drain and for the cooldown after it", function()
    local c, cl = core_with({ "n1" }, 12, { balance_interval_ms = 100, balance_cooldown_ms = 5000, max_operators = 64 })
    cl:tick(0); cl:settle()
    assert(c:join("n2")); assert(c:join("n3"))
    assert(c:drain_mark("n3"))
    cl:tick(1000); cl:settle()
    assert.are.equal(0, c:node("n2").maintainers) -- nothing is balanced during the drain
    assert(c:drain_unmark("n3")) -- at t=1000: cooldown until 6000
    cl:tick(1000); cl:settle()
    assert.are.equal(12, c:node("n1").maintainers)
    cl:tick(3999); cl:settle()
    assert.are.equal(12, c:node("n1").maintainers)
    cl:tick(1); cl:settle()
    local p = cl:placement()
    assert.are.same({ 4, 4, 4 }, { p.n1, p.n2, p.n3 })
    ok_check(c)
  end)

  it("S3: balance evens each kind on its own and never swings back (D7 moves a trigger along)", function()
    -- maintainers 0/2/2 with the dispatchers their maintainers report 4/6/2: on the total
    -- count n2 (8) is over the fair 6+1, and moving its two maintainers — each carrying its
    -- trigger dispatcher — made n1 the 8 the next round, for ever. By kind, 0/2/2 is even.
    local c, cl = core_with({ "n1", "n2", "n3" }, 0, { balance_interval_ms = 100 })
    for i = 1, 4 do assert(c:add_task(("cf-%02d"):format(i), "maintainer")) end
    cl:tick(0); cl:settle()
    local where = {}
    for i = 1, 4 do where[i] = c:task(("cf-%02d"):format(i)).node end
    local on = { n1 = 0, n2 = 0, n3 = 0 }
    for _, n in ipairs(where) do on[n] = on[n] + 1 end
    assert.are.same({ n1 = 2, n2 = 1, n3 = 1 }, on)
    local epoch = c:stats().epoch
    assert(c:changefeed_report("cf-01", epoch, 0, { n1 = 1, n3 = 1 }, cl.now))
    assert(c:changefeed_report("cf-02", epoch, 0, { n2 = 1, n3 = 1 }, cl.now))
    assert(c:changefeed_report("cf-03", epoch, 0, { n3 = 3 }, cl.now))
    assert(c:changefeed_report("cf-04", epoch, 0, { n1 = 1, n3 = 2 }, cl.now))
    local moves = 0
    for _ = 1, 30 do
      cl:tick(100)
      cl:settle(function(m) if m.type == "start" then moves = moves + 1 end end)
    end
    assert.are.equal(0, moves)
    for i = 1, 4 do assert.are.equal(where[i], c:task(("cf-%02d"):format(i)).node) end
    ok_check(c)
  end)

  it("S3: a node that joins an evenly loaded cluster is fed up to the fair share", function()
    -- 5/5/5/5 and a new n5: every node is within average + tolerance of 4, yet n5 has none
    local c, cl = core_with({ "n1", "n2", "n3", "n4" }, 20, { balance_interval_ms = 100, max_operators = 64 })
    cl:tick(0); cl:settle()
    assert(c:join("n5"))
    for _ = 1, 30 do cl:tick(100); cl:settle() end
    local p = cl:placement()
    assert.are.same({ 4, 4, 4, 4, 4 }, { p.n1, p.n2, p.n3, p.n4, p.n5 })
    ok_check(c)
  end)

  it("S3: balance converges: the moves it keeps leave no destination above its origin", function()
    local c, cl = core_with({ "n1" }, 7, { balance_interval_ms = 100, max_operators = 64 })
    cl:tick(0); cl:settle()
    assert(c:join("n2"))
    local moves = 0
    for _ = 1, 40 do
      cl:tick(100)
      cl:settle(function(m) if m.type == "start" then moves = moves + 1 end end)
    end
    local p = cl:placement()
    assert.are.same({ 4, 3 }, { math.max(p.n1, p.n2), math.min(p.n1, p.n2) })
    assert.are.equal(3, moves) -- 7/0 → 4/3 in three moves, then nothing
    ok_check(c)
  end)

  it("L1/S3: a cordoned node gets no new task from basic, drain or balance, and gets them again once uncordoned", function()
    local c, cl = core_with({ "n1", "n2", "n3" }, 0, { balance_interval_ms = 100, balance_cooldown_ms = 100, drain_batch_size = 4 })
    assert(c:cordon("n2", true))
    for i = 1, 6 do assert(c:add_task(("cf-%02d"):format(i), "maintainer")) end
    cl:tick(0); cl:settle()
    assert.are.equal(0, c:node("n2").maintainers)
    assert(c:drain_start("n1", cl.now))
    for _ = 1, 10 do cl:tick(100); cl:settle() end
    assert.are.equal(0, c:node("n2").maintainers)
    assert.are.equal(6, c:node("n3").maintainers)
    local epoch = c:stats().epoch -- D8: the maintainers report, the drain completes
    for i = 1, 6 do assert(c:changefeed_report(("cf-%02d"):format(i), epoch, 0, {}, cl.now)) end
    cl:tick(100); cl:settle()
    assert.are.equal("completed", c:drain_status("n1", cl.now).state)
    assert(c:cordon("n2", false))
    for _ = 1, 40 do cl:tick(100); cl:settle() end
    assert.are.equal(3, c:node("n2").maintainers) -- balance evens n2 and n3 (n1 is Stopping)
    ok_check(c)
    assert.has_error(function() c:cordon("n9", true) end)
  end)

  it("S3: balance never moves a task onto a non-schedulable node", function()
    local c, cl = core_with({ "n1" }, 9, { balance_interval_ms = 1 })
    cl:tick(0); cl:settle()
    assert(c:join("n2")); assert(c:join("n3"))
    assert(c:cas("n2", "alive", "stopping"))
    for _ = 1, 5 do cl:tick(10); cl:settle() end
    assert.are.equal(0, c:node("n2").maintainers)
    assert.are.equal(0, c:node("n2").inflight)
    assert.is_true(c:node("n3").maintainers >= 4)
  end)

  it("S3: balance is safe with zero or one schedulable node", function()
    local c, cl = core_with({ "n1" }, 3, { balance_interval_ms = 1 })
    cl:tick(0); cl:settle()
    assert(cl:tick(10))
    assert(c:cas("n1", "alive", "stopping"))
    assert(cl:tick(20))
    assert.are.equal(0, #cl:take())
  end)

  it("S4: a finished drain move refills the batch at once, without a tick", function()
    local c, cl = core_with({ "n1", "n2" }, 6, { drain_batch_size = 1 })
    cl:tick(0); cl:settle()
    assert(c:drain_mark("n1"))
    local moves = 0
    -- no tick from here: reports alone must drive the whole drain
    cl:settle(function(m) if m.type == "stop" then moves = moves + 1 end end)
    assert.are.equal(3, moves)
    assert.are.equal(0, c:node("n1").maintainers)
    assert.are.equal(6, c:node("n2").maintainers)
  end)

  it("S4: only stably working tasks are drained", function()
    local c, cl = core_with({ "n1", "n2", "n3" }, 0, { drain_batch_size = 8 })
    assert(c:add_task("cf-a"))
    cl:tick(0)
    local start = cl:take()[1] -- cf-a is starting, not yet working
    assert(c:drain_mark(start.node))
    assert.are.equal(0, #cl:take())
    cl:deliver(start) -- now it works there, and the drain takes it
    local msgs = cl:take()
    assert.are.same({ "stop", start.node }, { msgs[1].type, msgs[1].node })
  end)

  it("S4: destinations in one batch account for moves planned earlier in it", function()
    local c, cl = core_with({ "n1" }, 8, { drain_batch_size = 8 })
    cl:tick(0); cl:settle()
    assert(c:join("n2")); assert(c:join("n3"))
    assert(c:drain_mark("n1"))
    local to = { n2 = 0, n3 = 0 }
    for _, op in ipairs(c:operators()) do to[op.to] = to[op.to] + 1 end
    assert.are.same({ n2 = 4, n3 = 4 }, to)
  end)

  it("S5: idle rounds call no policy and cost nothing per task", function()
    local c, cl = core_with({ "n1", "n2" }, 40, { balance_interval_ms = 1000000 })
    cl:tick(0); cl:settle()
    local calls = c:stats().policy_calls
    for i = 1, 100 do cl:tick(1) end
    assert.are.equal(calls, c:stats().policy_calls)
    assert.are.equal(0, #cl:take())
  end)

  it("S5: counters stay equal to a full recount under random events", function()
    for seed = 1, 15 do
      math.randomseed(seed)
      local c, cl = core_with({ "n1", "n2", "n3", "n4" }, 0, { max_operators = 5, drain_batch_size = 2, balance_interval_ms = 50 })
      local live = { n1 = true, n2 = true, n3 = true, n4 = true }
      for step = 1, 120 do
        local r = math.random()
        if r < 0.35 then
          c:add_task("t" .. step, math.random() < 0.3 and "dispatcher" or "maintainer")
        elseif r < 0.45 then
          c:remove_task("t" .. math.random(step))
        elseif r < 0.5 then
          local n = "n" .. math.random(4)
          if live[n] then cl:leave(n); live[n] = nil else c:join(n); live[n] = true end
        elseif r < 0.55 then
          c:drain_mark("n" .. math.random(4))
        elseif r < 0.6 and c:drain_target() then
          c:drain_unmark(c:drain_target())
        end
        cl:tick(math.random(0, 30))
        cl:settle(function(m)
          if not live[m.node] then return "drop" end
          if math.random() < 0.1 then return "drop" end -- lost; timeouts retry
        end, 5)
        local ok, why = c:check()
        assert(ok, ("seed %d step %d: %s"):format(seed, step, tostring(why)))
      end
    end
  end)
end)

describe("L5 a Stopping destination refuses", function()
  it("L5: a start refused by a destination that began stopping is placed elsewhere", function()
    local c, cl = core_with({ "n1", "n2" }, 0)
    assert(c:add_task("cf-a"))
    cl:tick(0)
    local start = cl:take()[1]
    local other = start.node == "n1" and "n2" or "n1"
    assert(c:cas(start.node, "alive", "stopping"))
    -- the agent refuses (L5) and reports it does not run the task
    assert(c:report(start.node, "cf-a", "stopped", 1))
    local msgs = cl:take()
    assert.are.same({ "start", other }, { msgs[1].type, msgs[1].node })
    cl:deliver(msgs[1])
    assert.are.equal(other, c:task("cf-a").node)
    assert.are.equal(1, c:stats().ops_abandoned)
    local ok, why = c:check()
    assert(ok, why)
  end)

  it("O2: a stopped report from an Alive destination does not abandon the add", function()
    local c, cl = core_with({ "n1" }, 1)
    cl:tick(0)
    local start = cl:take()[1]
    assert(c:report("n1", "cf-01", "stopped", 1)) -- a status report older than the start
    assert.is_true(c:task("cf-01").has_operator)
    cl:deliver(start)
    assert.are.equal("n1", c:task("cf-01").node)
  end)
end)

describe("L2/O5 a destination that stops being schedulable before its start is sent", function()
  -- Balance starts moves toward a node that just joined; the origins are told to stop, but
  -- their "stopped" reports are held. `turn(c)` makes that destination leave Alive. Returns
  -- the core, the cluster, the destination, the held stops and every message sent after
  -- the turn.
  local function moves_toward_new_node(turn)
    local c, cl = core_with({ "n1", "n2" }, 12, { balance_interval_ms = 100, max_operators = 64 })
    cl:tick(0); cl:settle()
    assert(c:join("n3"))
    cl:tick(100)
    local _, held = cl:settle(function(m) if m.type == "stop" then return "hold" end end)
    assert.is_true(#held > 0)
    for _, op in ipairs(c:operators()) do
      assert.are.same({ "move", "balance", "n3", "stop" }, { op.type, op.reason, op.to, op.step })
    end
    assert.are.equal(#held, c:node("n3").inflight)
    local abandoned = c:stats().ops_abandoned
    turn(c)
    local after = {}
    for _, m in ipairs(held) do
      after[#after + 1] = m -- the stop arrives late; the origin stops the task and says so
      cl:deliver(m)
    end
    cl:settle(function(m) after[#after + 1] = m end)
    return c, cl, held, after, abandoned
  end

  local function assert_placed_on_alive(c, cl, held, after, abandoned)
    for _, m in ipairs(after) do
      assert.is_false(m.type == "start" and m.node == "n3",
        ("L2: %s was started on n3 after n3 left Alive"):format(m.task))
    end
    for _, m in ipairs(held) do
      local t = c:task(m.task)
      assert.are.equal("working", t.state)
      assert.is_false(t.has_operator)
      assert.are_not.equal("n3", t.node)
      assert.are.equal("alive", c:liveness(t.node))
      assert.are.same({ t.node }, cl:owners(m.task))
    end
    assert.are.equal(0, c:node("n3").maintainers)
    assert.are.equal(0, c:node("n3").inflight)
    assert.are.equal(0, c:node("n3").ops_to)
    assert.are.equal(0, c:stats().absent)
    assert.are.equal(0, c:stats().ops_in_progress)
    assert.are.equal(abandoned + #held, c:stats().ops_abandoned)
    assert.are.equal(12, c:node("n1").maintainers + c:node("n2").maintainers)
    ok_check(c)
  end

  it("L2/O5: a balance move whose destination starts draining before the origin stopped never starts there", function()
    local c, cl, held, after, abandoned = moves_toward_new_node(function(c)
      assert(c:drain_mark("n3"))
      assert.are.equal("draining", c:liveness("n3"))
    end)
    assert_placed_on_alive(c, cl, held, after, abandoned)
    assert.are.equal("draining", c:liveness("n3"))
  end)

  it("L2/O5: a balance move whose destination goes Stopping before the origin stopped never starts there", function()
    local c, cl, held, after, abandoned = moves_toward_new_node(function(c)
      assert(c:cas("n3", "alive", "stopping"))
    end)
    assert_placed_on_alive(c, cl, held, after, abandoned)
    assert.are.equal("stopping", c:liveness("n3"))
  end)

  it("L2/O5: abandoned at the start step, the moves leave the drain batch and the counters exact", function()
    local c, cl = core_with({ "n1", "n2" }, 12, { balance_interval_ms = 100, max_operators = 64 })
    cl:tick(0); cl:settle()
    assert(c:join("n3"))
    cl:tick(100)
    local _, held = cl:settle(function(m) if m.type == "stop" then return "hold" end end)
    assert(c:drain_mark("n3"))
    assert.are.equal(#held, c:stats().drain_in_progress) -- moves toward the target count (O3)
    -- one stopped report at a time: each ends its move and frees the batch at once
    for i, m in ipairs(held) do
      cl:deliver(m)
      assert.are.equal(#held - i, c:stats().drain_in_progress)
      assert.are.equal(#held - i, c:node("n3").inflight)
      ok_check(c)
      cl:settle()
      ok_check(c)
    end
    assert.are.equal(0, c:node("n3").maintainers)
  end)

  it("L2/O6: the origin fails while the destination is Draining: the task is placed on an Alive node", function()
    local c, cl = core_with({ "n1" }, 6, { balance_interval_ms = 100, max_operators = 64 })
    cl:tick(0); cl:settle()
    assert(c:join("n2")); assert(c:join("n3"))
    cl:tick(100)
    local _, held = cl:settle(function(m) if m.type == "stop" then return "hold" end end)
    local toward = {}
    for _, op in ipairs(c:operators()) do toward[op.to] = (toward[op.to] or 0) + 1 end
    assert.is_true((toward.n3 or 0) > 0 and (toward.n2 or 0) > 0)
    assert(c:drain_mark("n3"))
    local after = {}
    cl:leave("n1") -- O6: moves go on to their destination — unless it is no longer schedulable
    cl:settle(function(m) after[#after + 1] = m end)
    for _, m in ipairs(after) do
      assert.is_false(m.type == "start" and m.node == "n3",
        ("L2: %s was started on n3 after n3 left Alive"):format(m.task))
    end
    for _, m in ipairs(held) do
      local t = c:task(m.task)
      assert.are.same({ "working", "n2" }, { t.state, t.node })
    end
    assert.are.equal(0, c:node("n3").maintainers)
    assert.are.equal(0, c:node("n3").inflight)
    assert.are.equal(0, c:stats().absent)
    ok_check(c)
  end)

  it("O2: a move whose START was sent before its destination started draining still finishes there", function()
    local c, cl = core_with({ "n1", "n2" }, 12, { balance_interval_ms = 100, max_operators = 64 })
    cl:tick(0); cl:settle()
    assert(c:join("n3"))
    cl:tick(100)
    local _, held = cl:settle(function(m) if m.type == "start" then return "hold" end end)
    assert.is_true(#held > 0)
    assert(c:drain_mark("n3"))
    for _, m in ipairs(held) do cl:deliver(m) end
    assert.are.equal(#held, c:node("n3").maintainers) -- they finished; the drain moves them later
    ok_check(c)
  end)
end)
