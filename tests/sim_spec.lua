-- sim_spec.lua — `sluice sim` end to end (SPEC §4, M1, M2, B3): determinism, every fault on
-- its own, a sweep of seeds with every fault at once, hostile policies, and the makespan
-- against its lower bound. Runs the binary named by SLUICE_BIN (build/ or build/asan/).
--
-- Under ASan (SLUICE_ASAN set by scripts/run-tests.sh) the sweeps use fewer seeds: the
-- sanitized binary is about ten times slower, and the full 500-seed sweep runs in the
-- plain build of the same `make test`. SIM_SWEEP_SEEDS overrides the sweep size.
local cjson = require "cjson"

local BIN = os.getenv("SLUICE_BIN") or "build/sluice"
local ASAN = os.getenv("SLUICE_ASAN") ~= nil
local SWEEP = tonumber(os.getenv("SIM_SWEEP_SEEDS") or "") or (ASAN and 60 or 500)
local PER_FAULT = ASAN and 15 or 60
local FIXTURES = "tests/fixtures/policies/"

-- Runs `sluice sim ARGS`; returns stdout, stderr and the exit status.
local function sim(args)
  local err = os.tmpname()
  local p = io.popen(BIN .. " sim " .. args .. " 2>" .. err .. "; echo \"EXIT:$?\"")
  local out = p:read("a")
  p:close()
  local f = io.open(err)
  local stderr = f:read("a")
  f:close()
  os.remove(err)
  local status = tonumber(out:match("EXIT:(%d+)%s*$"))
  out = out:gsub("EXIT:%d+%s*$", "")
  return out, stderr, status
end

local function results(out)
  local rows = {}
  for line in out:gmatch("[^\n]+") do rows[#rows + 1] = cjson.decode(line) end
  return rows
end

-- M2: zero violations, and every drain whose target survived completed.
local function assert_sound(args, nseeds)
  local out, stderr, status = sim(args .. " --json")
  local rows = results(out)
  assert.are.equal(nseeds, #rows, stderr)
  for _, r in ipairs(rows) do
    assert(r.violations == 0, ("seed %d: %s\n%s"):format(r.seed, r.first_violation or "", stderr))
    assert(r.completed or not r.target_survived,
      ("seed %d: the drain ended %s though its target survived"):format(r.seed, r.state))
  end
  assert.are.equal(0, status, stderr)
  return rows
end

describe("sluice sim flags (SPEC §4)", function()
  it("§4: --json prints one object per seed with the required fields", function()
    local out, _, status = sim("--seeds 3..5 --json")
    assert.are.equal(0, status)
    local rows = results(out)
    assert.are.equal(3, #rows)
    for i, r in ipairs(rows) do
      assert.are.equal(2 + i, r.seed)
      for _, k in ipairs({ "completed", "state", "violations", "makespan_ms", "lower_bound_ms", "moves" }) do
        assert.is_not_nil(r[k], k)
      end
      assert.are.equal("completed", r.state)
    end
  end)

  it("§4: nodes are n1..nN and --drain names one of them", function()
    local out, _, status = sim("--seed 1 --nodes 3 --drain n3 --json")
    assert.are.equal(0, status)
    assert.are.equal("n3", results(out)[1].drain)
    local _, err, bad = sim("--seed 1 --nodes 3 --drain n4")
    assert.are.equal(2, bad)
    assert.matches("n4", err)
  end)

  it("§4: an unknown fault is a usage error that names it", function()
    local _, err, status = sim("--seed 1 --faults loss,meteor")
    assert.are.equal(2, status)
    assert.matches("meteor", err)
  end)

  it("§4: a policy file that does not load is a usage error naming the file", function()
    local _, err, status = sim("--seed 1 --policy " .. FIXTURES .. "syntax_error.lua")
    assert.are.equal(2, status)
    assert.matches("syntax_error.lua", err)
  end)
end)

describe("M1 determinism", function()
  it("M1: same seed, same output, byte for byte (every fault on)", function()
    local a = sim("--seeds 1..20 --faults all --json")
    local b = sim("--seeds 1..20 --faults all --json")
    assert.are.equal(a, b)
    local c = sim("--seeds 1..5 --faults all")
    local d = sim("--seeds 1..5 --faults all")
    assert.are.equal(c, d)
  end)

  it("M1: different seeds give different runs under faults", function()
    local rows = results((sim("--seeds 1..10 --faults delay --json")))
    local seen = {}
    for _, r in ipairs(rows) do seen[r.makespan_ms] = true end
    local n = 0
    for _ in pairs(seen) do n = n + 1 end
    assert.is_true(n > 1)
  end)
end)

describe("M2 every fault on its own", function()
  for _, fault in ipairs({ "delay", "loss", "dup", "reorder", "crash", "dest-crash",
                           "coord-restart", "policy-swap", "no-dest" }) do
    it(("M2: --faults %s: no violation, every drain completes"):format(fault), function()
      local rows = assert_sound(("--seeds 1..%d --faults %s"):format(PER_FAULT, fault), PER_FAULT)
      for _, r in ipairs(rows) do assert.is_true(r.completed, "seed " .. r.seed) end
    end)
  end

  it("D9: --faults target-crash: a target that dies loses its drain (state lost), nothing else breaks", function()
    local rows = assert_sound(("--seeds 1..%d --faults target-crash"):format(PER_FAULT), PER_FAULT)
    local lost = 0
    for _, r in ipairs(rows) do
      if not r.target_survived then
        assert(r.state == "lost" or r.state == "completed", r.state)
        if r.state == "lost" then lost = lost + 1 end
      end
    end
    assert.is_true(lost > 0)
  end)

  it("D10: --faults no-dest: the drain says it is blocked, then resumes and completes", function()
    local rows = assert_sound(("--seeds 1..%d --faults no-dest"):format(PER_FAULT), PER_FAULT)
    for _, r in ipairs(rows) do
      assert.is_true(r.blocked_seen, "seed " .. r.seed)
      assert.is_true(r.makespan_ms >= 2000, "seed " .. r.seed) -- no destination for >= 2 s
    end
  end)
end)

describe("M2 sweep", function()
  it(("M2: %d seeds with --faults all: zero violations, every surviving target drained"):format(SWEEP), function()
    local rows = assert_sound(("--seeds 1..%d --faults all --nodes 4 --changefeeds 8 --tables 4"):format(SWEEP), SWEEP)
    local completed = 0
    for _, r in ipairs(rows) do if r.completed then completed = completed + 1 end end
    assert.is_true(completed > 0)
  end)

  it("M2: a bigger cluster under every fault", function()
    assert_sound(("--seeds 1..%d --faults all --nodes 6 --changefeeds 12 --tables 30"):format(ASAN and 3 or 20),
      ASAN and 3 or 20)
  end)
end)

describe("P3 hostile policies cannot stop a drain", function()
  -- tests/fixtures/policies/: names the drain target (draining_node sends everything to n5,
  -- the target here), unknown nodes, garbage answers, errors, endless loops
  local hostile = { "draining_node", "unknown_node", "wrong_type", "not_table", "unasked",
                    "runtime_error", "bad_drain_order", "loop_place", "pcall_loop", "pattern",
                    "memory" }
  for _, name in ipairs(hostile) do
    it(("P3: --policy %s.lua: every drain completes, decisions refused"):format(name), function()
      local rows = assert_sound(("--seed 1 --nodes 5 --drain n5 --policy %s%s.lua"):format(FIXTURES, name), 1)
      for _, r in ipairs(rows) do assert.is_true(r.completed) end
    end)
  end

  it("P3: a policy that names the drain target has those decisions refused (counted)", function()
    local rows = assert_sound("--seed 1 --nodes 5 --drain n5 --policy " .. FIXTURES .. "draining_node.lua", 1)
    assert.is_true(rows[1].refusals > 0)
  end)

  it("P3/P4: an endless policy under every fault, swapped mid-drain with the built-in", function()
    assert_sound("--seed 2 --faults all --policy " .. FIXTURES .. "loop_place.lua", 1)
  end)

  it("P5: the shipped policies drain under faults", function()
    for _, p in ipairs({ "policies/least_loaded.lua", "policies/zone_spread.lua", "policies/weighted.lua" }) do
      assert_sound("--seeds 1..3 --faults delay,loss,crash,policy-swap --policy " .. p, 3)
    end
  end)
end)

describe("B3 makespan", function()
  it("B3: a fault-free drain of 250 dispatchers in batches of 10 is within 5% of its bound", function()
    local rows = assert_sound("--seed 1 --nodes 4 --changefeeds 1 --tables 1000 --drain n2", 1)
    local r = rows[1]
    assert.are.equal(250, r.initial_dispatchers)
    assert.is_true(r.lower_bound_ms > 0)
    assert.is_true(r.makespan_ms <= r.lower_bound_ms * 1.05,
      ("makespan %d ms, bound %d ms"):format(r.makespan_ms, r.lower_bound_ms))
  end)

  it("B3: draining the node that hosts the maintainer too", function()
    local r = assert_sound("--seed 1 --nodes 4 --changefeeds 1 --tables 1000 --drain n1", 1)[1]
    assert.is_true(r.makespan_ms <= r.lower_bound_ms * 1.05,
      ("makespan %d ms, bound %d ms"):format(r.makespan_ms, r.lower_bound_ms))
  end)
end)

describe("M2 the checker itself", function()
  it("M2: a planted double start is caught: seed and step printed, exit status non-zero", function()
    local p = io.popen("SLUICE_SIM_CHECKER_SELFTEST=1 " .. BIN .. " sim --seed 3 2>&1; echo \"exit=$?\"")
    local out = p:read("a")
    p:close()
    assert.matches("violation: seed 3 step %d+ t=%d+ms: single owner: %S+ runs on n%d n%d", out)
    assert.matches("violations=%d", out)
    assert.matches("exit=1\n", out, 1, true)
    local clean = io.popen(BIN .. " sim --seed 3 >/dev/null 2>&1; echo \"exit=$?\""):read("a")
    assert.are.equal("exit=0\n", clean)
  end)
end)
