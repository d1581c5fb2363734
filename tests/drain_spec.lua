-- drain_spec.lua — the drain controller in the core (D1–D12, L4, A5), through
-- `require "sluice"`. The specs play the nodes (tests/support/cluster.lua) and the
-- maintainers' reports themselves.
local sluice = require "sluice"
local Cluster = require "support.cluster"

local function setup(nodes, changefeeds, cfg)
  local c = sluice.core(cfg or { drain_batch_size = 2 })
  for _, n in ipairs(nodes) do assert(c:join(n)) end
  for i = 1, changefeeds or 0 do assert(c:add_task(("cf-%02d"):format(i))) end
  local cl = Cluster.new(c)
  cl:tick(0); cl:settle()
  return c, cl
end

local function code(f, ...)
  local ok, _, name = f(...)
  assert.is_nil(ok)
  return name
end

-- Every maintainer (but `except`) reports, for the current epoch, `remaining` dispatchers
-- on the target.
local function report_all(c, cl, remaining, except)
  local epoch = c:stats().epoch
  for i = 1, 99 do
    local cf = ("cf-%02d"):format(i)
    if not c:task(cf) then break end
    if cf ~= except then assert(c:changefeed_report(cf, epoch, remaining or 0, {}, cl.now)) end
  end
end

describe("D1 starting a drain", function()
  it("D1: the answer carries the target's current counts", function()
    local c, cl = setup({ "n1", "n2" }, 6)
    assert(c:changefeed_report("cf-01", 0, 0, { n1 = 5, n2 = 2 }, 0))
    local r = assert(c:drain_start("n1", 10))
    assert.are.same({ 3, 5, false }, { r.maintainers, r.dispatchers, r.completed })
    assert.are.equal("draining", c:liveness("n1"))
    -- idempotent: the same target again answers with the current counts
    local again = assert(c:drain_start("n1", 11))
    assert.are.equal(3, again.maintainers)
    assert.are.equal(1, c:stats().epoch)
  end)

  it("D1: a target that holds nothing goes straight to Stopping", function()
    local c = setup({ "n1", "n2" })
    local r = assert(c:drain_start("n2", 5))
    assert.are.same({ 0, 0, true }, { r.maintainers, r.dispatchers, r.completed })
    assert.are.equal("stopping", c:liveness("n2"))
    assert.is_nil(c:drain_target())
    assert.are.equal("completed", c:drain_status("n2", 6).state)
  end)

  it("D1: each refusal has its own code", function()
    local c = setup({ "n1", "n2", "n3" }, 3, { coordinator_node = "n3" })
    assert.are.equal("ENOENT", code(c.drain_start, c, "nX", 0))
    assert.are.equal("ECOORDINATOR", code(c.drain_start, c, "n3", 0))
    assert(c:drain_start("n1", 0))
    assert.are.equal("EBUSY", code(c.drain_start, c, "n2", 0))
    local s = setup({ "n1", "n2" }, 2)
    assert(s:cas("n2", "alive", "stopping"))
    assert.are.equal("ESTOPPING", code(s.drain_start, s, "n2", 0))
    assert.are.equal("ENOTENOUGH", code(s.drain_start, s, "n1", 0)) -- n2 is not Alive
    local one = setup({ "n1" }, 1)
    assert.are.equal("ENOTENOUGH", code(one.drain_start, one, "n1", 0))
  end)

  it("D4: the record and the liveness are stored before the answer; a failed write changes nothing", function()
    local c = setup({ "n1", "n2" }, 4)
    local store = sluice.store.memory()
    c:set_store(store)
    store:fail_writes(true)
    assert.are.equal("EIO", code(c.drain_start, c, "n1", 0))
    assert.are.equal("alive", c:liveness("n1"))
    assert.is_nil(c:drain_target())
    assert.are.equal(0, c:stats().epoch)
    store:fail_writes(false)
    assert(c:drain_start("n1", 7))
    local rec = store:drain()
    assert.are.same({ "n1", 1, 7, 2 }, { rec.target, rec.epoch, rec.started_at, rec.initial_maintainers })
    assert.are.equal("draining", store:liveness().n1)
  end)
end)

describe("D5 epochs", function()
  it("D5: every node is told the target and epoch at once, and again every heartbeat", function()
    local c, cl = setup({ "n1", "n2", "n3" }, 3)
    cl.mute = true -- nobody acknowledges yet
    assert(c:drain_start("n1", cl.now))
    cl:take()
    local told = {}
    for _, m in ipairs(cl.notices) do told[m.node] = m.target .. "@" .. m.epoch end
    assert.are.same({ n1 = "n1@1", n2 = "n1@1", n3 = "n1@1" }, told)
    cl.notices = {}
    cl:tick(1000); cl:take()
    assert.are.equal(3, #cl.notices)
  end)

  it("D5: a node that has not acknowledged the epoch receives no new task", function()
    local c, cl = setup({ "n1", "n2", "n3" }, 4, { drain_batch_size = 4 })
    cl.mute = true
    assert(c:drain_start("n1", cl.now))
    assert.are.equal(0, #cl:take())
    assert.matches("no schedulable destination: none of the 2 Alive nodes has acknowledged epoch 1", c:drain_status("n1", cl.now).blocked)
    assert(c:heartbeat("n2", 1, cl.now)) -- only n2 acknowledges
    -- the drain waits for the others a little, so that n2 does not take the whole batch
    assert.are.equal(0, #cl:take())
    assert.matches("waiting for nodes to acknowledge epoch 1 %(1 of 2 have%)", c:drain_status("n1", cl.now).blocked)
    cl.now = cl.now + 2000
    assert(c:heartbeat("n2", 1, cl.now))
    c:tick(cl.now) -- n3 never answered: it stays gated, n2 gets the work
    local msgs = cl:take()
    assert.is_true(#msgs > 0)
    for _, op in ipairs(c:operators()) do assert.are.equal("n2", op.to) end
  end)

  it("D5: once every node has acknowledged, the batch is shared", function()
    local c, cl = setup({ "n1", "n2", "n3" }, 6, { drain_batch_size = 4 })
    cl.mute = true
    assert(c:drain_start("n1", cl.now))
    cl:take()
    assert(c:heartbeat("n2", 1, cl.now))
    assert.are.equal(0, #cl:take())
    assert(c:heartbeat("n3", 1, cl.now))
    local to = {}
    for _, op in ipairs(c:operators()) do to[op.to] = (to[op.to] or 0) + 1 end
    assert.are.same({ n2 = 1, n3 = 1 }, to)
  end)

  it("D5: stale and unknown epochs are ignored", function()
    local c, cl = setup({ "n1", "n2" }, 2)
    cl.mute = true
    assert(c:drain_start("n1", 0))
    assert(c:drain_cancel("n1", 1)) -- epoch 2
    assert(c:heartbeat("n2", 1, 2)) -- stale
    assert(c:heartbeat("n2", 9, 2)) -- never announced
    assert(c:add_task("late"))
    cl:tick(0)
    assert.are.equal(0, #cl:take())
    assert(c:heartbeat("n2", 2, 3))
    assert.are.equal(1, #cl:take())
  end)
end)

describe("D8 completion", function()
  it("D8: moving the maintainers is not enough: every changefeed must report for the epoch", function()
    local c, cl = setup({ "n1", "n2", "n3" }, 6)
    assert(c:drain_start("n1", cl.now))
    cl:settle()
    assert.are.equal(0, c:node("n1").maintainers)
    assert.are.equal("draining", c:liveness("n1"))
    local st = c:drain_status("n1", cl.now)
    assert.are.equal("draining", st.state)
    assert.is_true(st.remaining_maintainer_count + st.remaining_dispatcher_count >= 1) -- never a false zero
    assert.matches("waiting for changefeeds to report for epoch 1: 0 of 6 have", st.blocked)
    -- a report for an older epoch does not count
    assert(c:changefeed_report("cf-01", 0, 0, {}, cl.now))
    assert.are.equal("draining", c:liveness("n1"))
    -- one still has dispatchers there; the five others report nothing left
    assert(c:changefeed_report("cf-03", 1, 4, { n1 = 4, n2 = 1 }, cl.now))
    report_all(c, cl, 0, "cf-03")
    st = c:drain_status("n1", cl.now)
    assert.are.same({ 0, 4 }, { st.remaining_maintainer_count, st.remaining_dispatcher_count })
    assert.are.same({ ["cf-03"] = 4 }, st.remaining_dispatchers_by_changefeed)
    -- every changefeed has reported: its maintainers moving dispatchers is progress, not a block
    assert.are.equal("", st.blocked)
    assert.are.equal("draining", c:liveness("n1"))
    assert(c:changefeed_report("cf-03", 1, 0, { n2 = 5 }, cl.now))
    assert.are.equal("stopping", c:liveness("n1"))
    st = c:drain_status("n1", cl.now)
    assert.are.same({ "completed", 1, 0, 0 }, { st.state, st.progress, st.remaining_maintainer_count, st.remaining_dispatcher_count })
    assert.is_false(c:drain_status("n2", cl.now).is_draining)
    assert.are.equal(2, c:stats().epoch) -- start and clear
  end)

  it("D8: no completion while an operator still involves the target", function()
    local c, cl = setup({ "n1", "n2" }, 2, { drain_batch_size = 2 })
    assert(c:drain_start("n1", cl.now))
    report_all(c, cl, 0)
    local _, held = cl:settle(function(m) if m.type == "start" then return "hold" end end)
    assert.is_true(#held > 0)
    assert.are.equal(0, c:node("n1").maintainers) -- stopped there, not yet started elsewhere
    assert.are.equal("draining", c:liveness("n1"))
    for _, m in ipairs(held) do cl:deliver(m) end
    cl:settle()
    report_all(c, cl, 0)
    assert.are.equal("stopping", c:liveness("n1"))
  end)

  it("D8: the drain target cannot be stopped around the controller", function()
    local c = setup({ "n1", "n2" }, 2)
    assert(c:drain_start("n1", 0))
    assert.are.equal("EBUSY", code(c.cas, c, "n1", "draining", "stopping"))
    assert.are.equal("EBUSY", code(c.drain_unmark, c, "n1"))
  end)
end)

describe("D3 cancel", function()
  it("D3: running moves finish, no new one starts, the node is Alive and the epoch grows", function()
    local c, cl = setup({ "n1", "n2" }, 6, { drain_batch_size = 2 })
    assert(c:drain_start("n1", cl.now))
    local msgs = cl:take()
    assert.are.equal(2, #msgs)
    assert(c:drain_cancel("n1", cl.now))
    assert.are.equal("alive", c:liveness("n1"))
    assert.are.equal(2, c:stats().epoch)
    assert.are.equal("cancelled", c:drain_status("n1", cl.now).state)
    for _, m in ipairs(msgs) do cl:deliver(m) end
    cl:settle()
    assert.are.equal(1, c:node("n1").maintainers) -- the two moves finished, no more
    assert.are.equal(5, c:node("n2").maintainers)
    assert.are.equal("EINVAL", code(c.drain_cancel, c, "n1", cl.now))
  end)

  it("D3: a completed drain cannot be cancelled", function()
    local c = setup({ "n1", "n2" })
    assert(c:drain_start("n2", 0)) -- empty: completes at once
    assert.are.equal("ESTOPPING", code(c.drain_cancel, c, "n2", 1))
    assert.are.equal("ENOENT", code(c.drain_cancel, c, "nX", 1))
  end)
end)

describe("D9/D10/L4", function()
  it("D9: the target crashes: its tasks are placed elsewhere and the drain is lost", function()
    local c, cl = setup({ "n1", "n2", "n3" }, 6, { drain_batch_size = 1 })
    assert(c:drain_start("n1", cl.now))
    cl:leave("n1")
    cl:settle()
    local st = c:drain_status("n1", cl.now)
    assert.are.equal("lost", st.state)
    assert.matches("left the cluster", st.blocked)
    assert.is_nil(c:drain_target())
    assert.are.equal(6, c:node("n2").maintainers + c:node("n3").maintainers)
    assert.are.equal(2, c:stats().epoch)
  end)

  it("D10: with no destination the drain pauses, says blocked, and resumes by itself", function()
    local c, cl = setup({ "n1", "n2" }, 4)
    assert(c:cas("n2", "alive", "stopping"))
    assert(c:join("n3")) -- keeps two Alive nodes so the drain can start
    assert(c:cas("n3", "alive", "stopping"))
    assert(c:join("n4"))
    assert(c:drain_start("n1", cl.now))
    assert(c:leave("n4"))
    cl:tick(100); cl:settle()
    local st = c:drain_status("n1", cl.now)
    assert.matches("no schedulable destination: no other node is Alive", st.blocked)
    assert.are.equal(2, st.remaining_maintainer_count)
    assert(c:join("n5"))
    cl:tick(100); cl:settle()
    assert.are.equal(0, c:node("n1").maintainers)
    report_all(c, cl, 0)
    assert.are.equal("stopping", c:liveness("n1"))
  end)

  it("L4: a target left alone returns to Alive and its record is cleared", function()
    local c, cl = setup({ "n1", "n2" }, 2)
    local store = sluice.store.memory()
    c:set_store(store)
    assert(c:drain_start("n1", 0))
    cl:leave("n2")
    assert.are.equal("alive", c:liveness("n1"))
    assert.are.equal("", store:drain().target)
    assert.are.equal("cancelled", c:drain_status("n1", 1).state)
    -- D11: and it says why, which an operator's cancel would not
    assert.matches("it is the last node %(L4%)", c:drain_status("n1", 1).blocked)
  end)
end)

describe("D4 recovery", function()
  it("D4: a restarted coordinator restores the drain from the store and finishes it", function()
    local store = sluice.store.memory()
    local c, cl = setup({ "n1", "n2", "n3" }, 6, { drain_batch_size = 1 })
    c:set_store(store)
    assert(c:drain_start("n1", cl.now))
    cl:settle(nil, 3) -- partway
    -- the coordinator dies; a new one starts on the same store
    local running = cl.running
    c:set_store(nil)
    local c2 = sluice.core { drain_batch_size = 1, bootstrap_ms = 500 }
    c2:set_store(store)
    assert(c2:recover(cl.now))
    assert.is_true(c2:bootstrapping())
    assert.are.equal("ENOTREADY", code(c2.drain_start, c2, "n2", cl.now))
    local cl2 = Cluster.new(c2)
    cl2.now, cl2.running = cl.now, running
    for _, n in ipairs { "n1", "n2", "n3" } do assert(c2:join(n)) end
    for i = 1, 6 do assert(c2:add_task(("cf-%02d"):format(i))) end
    -- bootstrap reports: the nodes say what they run
    for node, tasks in pairs(running) do
      for task in pairs(tasks) do assert(c2:report(node, task, "working", cl2.now)) end
    end
    cl2:tick(100)
    assert.are.equal(0, #cl2:take()) -- nothing is placed while bootstrapping
    cl2:tick(500); cl2:settle()
    assert.is_false(c2:bootstrapping())
    assert.are.equal("draining", c2:liveness("n1"))
    assert.are.equal(1, c2:stats().epoch) -- the same drain, not a new one
    for _ = 1, 10 do cl2:tick(100); cl2:settle() end
    assert.are.equal(0, c2:node("n1").maintainers)
    report_all(c2, cl2, 0)
    assert.are.equal("stopping", c2:liveness("n1"))
    for i = 1, 6 do assert.are.equal(1, #cl2:owners(("cf-%02d"):format(i))) end
  end)

  it("D4: if the target vanished meanwhile, the record is cleared", function()
    local store = sluice.store.memory()
    local c = setup({ "n1", "n2", "n3" }, 3)
    c:set_store(store)
    assert(c:drain_start("n1", 0))
    c:set_store(nil)
    local c2 = sluice.core { bootstrap_ms = 100 }
    c2:set_store(store)
    assert(c2:recover(0))
    assert(c2:join("n2")); assert(c2:join("n3"))
    c2:tick(100)
    assert.is_nil(c2:drain_target())
    assert.are.equal("", store:drain().target)
    assert.are.equal("lost", c2:drain_status("n1", 100).state)
  end)
end)

describe("D11/D12", function()
  it("D11: progress, speed and time left follow the drain", function()
    local c, cl = setup({ "n1", "n2" }, 4, { drain_batch_size = 1 })
    assert(c:drain_start("n1", 1000))
    cl.now = 1000
    local st = c:drain_status("n1", 1000)
    assert.are.same({ 2, 0 }, { st.initial_maintainer_count, st.progress })
    local stops = cl:take()
    cl.now = 3000
    for _, m in ipairs(stops) do cl:deliver(m) end
    cl:settle(nil, 1) -- one maintainer moved
    st = c:drain_status("n1", 3000)
    assert.is_true(st.progress > 0 and st.progress < 1)
    assert.is_true(st.current_speed > 0)
    assert.is_true(st.left_seconds > 0)
  end)

  it("D12: a plan shows the moves without making them", function()
    local c, cl = setup({ "n1", "n2", "n3" }, 6)
    local before = c:stats()
    local plan = c:drain_plan("n1")
    assert.are.equal(2, #plan)
    for _, m in ipairs(plan) do
      assert.is_true(m.to == "n2" or m.to == "n3")
      assert.are.equal("n1", c:task(m.task).node)
    end
    assert.are_not.equal(plan[1].to, plan[2].to) -- the plan spreads like the real thing
    assert.are.equal(0, #c:operators())
    assert.are.equal(0, #cl:take())
    assert.are.equal(before.refusals, c:stats().refusals)
    assert.are.equal("alive", c:liveness("n1"))
  end)
end)

describe("A5 dead nodes", function()
  it("A5: a node silent for node_timeout_ms is declared dead and its tasks move", function()
    local c, cl = setup({ "n1", "n2" }, 4, { node_timeout_ms = 3000 })
    cl.silent = { n2 = true }
    cl:tick(2000); cl:settle()
    assert.is_not_nil(c:node("n2"))
    cl:tick(1000); cl:settle()
    assert.is_nil(c:node("n2"))
    assert.are.equal(4, c:node("n1").maintainers)
  end)
end)

describe("D4 recovery announces the stored record", function()
  it("D4/D5: nodes that reconnect during bootstrap are told the stored target and epoch", function()
    local store = sluice.store.memory()
    local c = setup({ "n1", "n2" }, 2)
    c:set_store(store)
    assert(c:drain_start("n1", 0))
    c:set_store(nil)
    local c2 = sluice.core { bootstrap_ms = 100 }
    c2:set_store(store)
    assert(c2:recover(0))
    assert(c2:join("n2"))
    local told = c2:outbox()
    assert.are.same({ "drain", "n2", "n1", 1 }, { told[1].type, told[1].node, told[1].target, told[1].epoch })
  end)
end)

describe("D11 an ended drain's figures stay put", function()
  it("D11: the speed of a completed drain is over its own duration and does not decay", function()
    local c, cl = setup({ "n1", "n2", "n3" }, 4)
    assert(c:drain_start("n1", cl.now))
    for _ = 1, 5 do
      cl:tick(100); cl:settle()
      report_all(c, cl, 0)
    end
    cl:tick(100); cl:settle()
    local done = c:drain_status("n1", cl.now)
    assert.are.equal("completed", done.state)
    assert.is_true(done.current_speed > 0)
    local later = c:drain_status("n1", cl.now + 60000)
    assert.are.equal(done.current_speed, later.current_speed)
  end)
end)

describe("D11 each node's latest drain is remembered", function()
  -- An operator who drained n1 and then n2 asks about n1: it is Stopping because its drain
  -- completed, and the answer must say so, not "none" because a later drain took its place.
  it("D11: a completed drain still reads completed after another node's drain, with its own figures", function()
    local c, cl = setup({ "n1", "n2", "n3", "n4" }, 8)
    local function drain(id)
      assert(c:drain_start(id, cl.now))
      for _ = 1, 10 do
        cl:tick(100); cl:settle()
        report_all(c, cl, 0)
        if c:drain_status(id, cl.now).state == "completed" then break end
      end
      cl:tick(100); cl:settle()
      return c:drain_status(id, cl.now)
    end
    local first = drain("n1")
    assert.are.equal("completed", first.state)
    assert.is_true(first.initial_maintainer_count > 0)
    local second = drain("n2")
    assert.are.equal("completed", second.state)
    local again = c:drain_status("n1", cl.now + 60000)
    assert.are.equal("completed", again.state)
    assert.are.equal(first.initial_maintainer_count, again.initial_maintainer_count)
    assert.are.equal(first.started_at, again.started_at)
    assert.are.equal(first.current_speed, again.current_speed)
    assert.are.equal(first.epoch, again.epoch) -- its own epoch, not the later drain's
    assert.is_true(second.epoch > again.epoch)
    assert.are.equal(1, again.progress)
    -- and its completed drain still refuses a cancel as D3 says
    assert.are.equal("ESTOPPING", code(c.drain_cancel, c, "n1", cl.now))
    assert.are.equal("none", c:drain_status("n3", cl.now).state)
  end)

  it("D11: a cancelled drain reads cancelled after the next drain of another node", function()
    local c, cl = setup({ "n1", "n2", "n3" }, 6)
    assert(c:drain_start("n1", cl.now))
    assert(c:drain_cancel("n1", cl.now))
    assert(c:drain_start("n2", cl.now))
    assert.are.equal("cancelled", c:drain_status("n1", cl.now).state)
    assert.are.equal("draining", c:drain_status("n2", cl.now).state)
  end)
end)

describe("D11 an ended drain keeps what it left", function()
  it("D11: a cancelled drain's remaining counts are those at the cancel, not the node's later ones", function()
    local c, cl = setup({ "n1", "n2", "n3" }, 6)
    local r = assert(c:drain_start("n1", cl.now))
    assert.is_true(r.maintainers > 0)
    assert(c:drain_cancel("n1", cl.now)) -- before anything moved
    local at_cancel = c:drain_status("n1", cl.now)
    assert.are.equal("cancelled", at_cancel.state)
    assert.are.equal(r.maintainers, at_cancel.remaining_maintainer_count)
    -- n1 takes new work afterwards: the cancelled drain's figures do not follow it
    for i = 7, 12 do assert(c:add_task(("cf-%02d"):format(i))) end
    cl:tick(100); cl:settle()
    assert.is_true(c:node("n1").maintainers > r.maintainers)
    local later = c:drain_status("n1", cl.now)
    assert.are.equal(at_cancel.remaining_maintainer_count, later.remaining_maintainer_count)
    assert.are.equal(at_cancel.progress, later.progress)
  end)
end)

describe("D11 a new process under a drained id", function()
  it("D11/D3: a node drained, gone, and back as a new process reads 'none', not its predecessor's 'completed'", function()
    local c, cl = setup({ "n1", "n2", "n3" }, 4)
    assert(c:drain_start("n1", cl.now))
    for _ = 1, 10 do
      cl:tick(100); cl:settle()
      report_all(c, cl, 0)
      if c:drain_status("n1", cl.now).state == "completed" then break end
    end
    assert.are.equal("completed", c:drain_status("n1", cl.now).state)
    assert(cl:leave("n1"))
    assert(c:join("n1")) -- a new process: Alive, it takes work
    cl:tick(100); cl:settle()
    assert.are.equal("alive", c:liveness("n1"))
    assert.are.equal("none", c:drain_status("n1", cl.now).state)
    assert.are.equal("EINVAL", code(c.drain_cancel, c, "n1", cl.now)) -- not CAPTURE_STOPPING
  end)
end)

describe("D11 progress against the truest start count", function()
  it("D11: dispatchers reported after the start raise the initial count; progress is measured against it", function()
    local c, cl = setup({ "n1", "n2", "n3" }, 3)
    -- a drain started before any maintainer reported: the start knows of no dispatcher
    local r = assert(c:drain_start("n1", cl.now))
    assert.are.equal(0, r.dispatchers)
    local epoch = c:stats().epoch
    -- then every maintainer reports 4 of its dispatchers on n1
    for i = 1, 3 do assert(c:changefeed_report(("cf-%02d"):format(i), epoch, 4, {}, cl.now)) end
    local st = c:drain_status("n1", cl.now)
    assert.are.equal(12, st.remaining_dispatcher_count)
    assert.is_true(st.initial_dispatcher_count >= 12, tostring(st.initial_dispatcher_count))
    -- half of them gone: progress says so (it stayed at 0 while the start count was lower)
    for i = 1, 3 do assert(c:changefeed_report(("cf-%02d"):format(i), epoch, 2, {}, cl.now)) end
    st = c:drain_status("n1", cl.now)
    assert.are.equal(6, st.remaining_dispatcher_count)
    assert.is_true(st.progress > 0.4, tostring(st.progress))
  end)
end)

describe("D11 the status is keyed by the core's version", function()
  -- The coordinator serves GET …/drain again while version and millisecond stay the same
  -- (B5); that is only right if every event moves the version and no read does.
  it("D11: every event moves the version; reads leave it", function()
    local c, cl = setup({ "n1", "n2" }, 4)
    local v = c:version()
    c:drain_status("n1", cl.now); c:nodes(); c:task("cf-01"); c:stats(); c:drain_plan("n1")
    c:operators(); c:liveness("n1"); c:refusals(); c:check()
    assert.are.equal(v, c:version())
    local events = {
      function() assert(c:drain_start("n1", cl.now)) end,
      function() c:heartbeat("n2", c:stats().epoch, cl.now) end,
      function() c:changefeed_report("cf-01", c:stats().epoch, 0, {}, cl.now) end,
      function() c:report("n2", "cf-01", "working", cl.now) end,
      function() c:tick(cl.now + 1) end,
      function() c:label("n2", "zone", "a") end,
      function() c:add_task("cf-99") end,
      function() c:remove_task("cf-99") end,
      function() c:drain_cancel("n1", cl.now + 2) end,
      function() c:join("n3") end,
      function() c:cas("n3", "alive", "stopping") end,
      function() c:leave("n3") end,
      function() c:set_policy(nil) end,
    }
    for i, event in ipairs(events) do
      local before = c:version()
      event()
      assert.is_true(c:version() > before, "event " .. i .. " left the version")
    end
  end)
end)

describe("L2 a drain that starts while moves are on their way to its target", function()
  it("L2/D8: moves toward the target that have not started there are placed elsewhere; the drain moves nothing twice", function()
    local c = sluice.core({ drain_batch_size = 8, balance_interval_ms = 100, max_operators = 64 })
    assert(c:join("n1")); assert(c:join("n2"))
    for i = 1, 12 do assert(c:add_task(("cf-%02d"):format(i))) end
    local cl = Cluster.new(c)
    cl:tick(0); cl:settle()
    assert(c:join("n3"))
    cl:tick(100) -- balance moves toward n3; the origins' stopped reports are held
    local _, held = cl:settle(function(m) if m.type == "stop" then return "hold" end end)
    assert.is_true(#held > 0)
    local r = assert(c:drain_start("n3", cl.now))
    assert.are.same({ 0, 0, false }, { r.maintainers, r.dispatchers, r.completed })
    assert.are.equal("draining", c:liveness("n3"))
    local sent = {}
    for _, m in ipairs(held) do cl:deliver(m) end
    cl:settle(function(m) sent[#sent + 1] = m end)
    for _, m in ipairs(sent) do
      assert.is_false(m.type == "start" and m.node == "n3", "L2: " .. m.task .. " started on n3")
      assert.is_false(m.type == "stop" and m.node == "n3", "the drain had to move " .. m.task)
    end
    for i = 1, 12 do
      local t = c:task(("cf-%02d"):format(i))
      assert.are.equal("working", t.state)
      assert.are_not.equal("n3", t.node)
    end
    local ok, why = c:check()
    assert(ok, why)
    report_all(c, cl, 0)
    cl:settle()
    assert.are.equal("stopping", c:liveness("n3"))
    assert.are.equal("completed", c:drain_status("n3", cl.now).state)
  end)
end)
