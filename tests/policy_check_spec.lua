-- policy_check_spec.lua — `sluice policy check FILE` end to end (SPEC §4; P1–P3, P5):
-- exit 0 and a summary for sound policies, exit 1 with the file (and line) on stderr for
-- broken and hostile ones, exit 2 for usage errors. Hostile files must not hang it, crash
-- it, touch the file system or run a command. Exit statuses are asserted, never timings.
local BIN = os.getenv("SLUICE_BIN") or "build/sluice"
local FIX = "tests/fixtures/policies/"

local function slurp(path)
  local f = io.open(path, "rb")
  if not f then return "" end
  local s = f:read("a")
  f:close()
  return s
end

-- runs `sluice <args>`; returns exit status, stdout, stderr
local function sluice(args)
  local out, err = os.tmpname(), os.tmpname()
  local ok, how, code = os.execute(("%s %s >%s 2>%s"):format(BIN, args, out, err))
  local o, e = slurp(out), slurp(err)
  os.remove(out); os.remove(err)
  if how == "signal" then return 128 + code, o, e end
  return code, o, e
end

describe("sluice policy check", function()
  for _, file in ipairs({ "least_loaded.lua", "zone_spread.lua", "weighted.lua", "seed_scan.lua" }) do
    it("P5: policies/" .. file .. " passes (exit 0, summary on stdout)", function()
      local code, out, err = sluice("policy check policies/" .. file)
      assert.are.equal(0, code, err)
      assert.matches("contract and selftest ok", out)
      assert.matches("placed: n1=%d+ n2=%d+ n3=%d+ n4=%d+", out)
    end)
  end

  it("P1: least_loaded's place_columns is compared with its place", function()
    local code, out, err = sluice("policy check policies/least_loaded.lua")
    assert.are.equal(0, code, err)
    assert.matches("place_columns: defined, the host calls it for every batch; place answers the same", out, 1, true)
  end)

  it("P1: a sound fixture passes and its drain_order is checked", function()
    local code, out = sluice("policy check " .. FIX .. "sound.lua")
    assert.are.equal(0, code)
    assert.matches("sound%-round%-robin", out)
    assert.matches("drain_order: 8 of 8 tasks ordered", out)
  end)

  local failing = {
    -- file, what stderr must say (plain text)
    { "runtime_error.lua", FIX .. "runtime_error.lua:5): attempt to index a nil value" },
    { "syntax_error.lua", FIX .. "syntax_error.lua:4:" },
    { "not_table.lua", "place returned string, expected a table" },
    { "wrong_type.lua", 'expected a node id (string), got number' },
    { "unasked.lua", 'place answered for task "ghost-task", which was not asked for' },
    { "draining_node.lua", "on n5 which is Draining" },
    { "unknown_node.lua", 'on unknown node "n42"' },
    { "bad_drain_order.lua", 'drain_order returned "no-such-task"' },
    { "loop_load.lua", FIX .. "loop_load.lua:2: load exceeded its budget of 1000 ms" },
    { "loop_selftest.lua", FIX .. "loop_selftest.lua:5: selftest exceeded its budget" },
    { "loop_place.lua", FIX .. "loop_place.lua:4): place exceeded its budget of 50 ms" },
    { "pcall_loop.lua", "place exceeded its budget" },
    { "memory.lua", "memory.lua" },
    { "gc_loop.lua", FIX .. "gc_loop.lua:2: setmetatable: __gc metamethods are not allowed" },
    { "pattern.lua", "place exceeded its budget" },
    { "pwn_plain.lua", FIX .. "pwn_plain.lua:2: attempt to index a nil value (global 'io')" },
    { "columns_bad_place.lua", 'expected a node id (string), got number' },
    { "columns_disagree.lua",
      'place and place_columns disagree on task "cf-1" (drain round): place says n1, place_columns says n4' },
  }
  for _, case in ipairs(failing) do
    it("P2/P3: " .. case[1] .. " fails with exit 1, naming the file on stderr", function()
      local code, out, err = sluice("policy check " .. FIX .. case[1])
      assert.are.equal(1, code, out .. err)
      assert.matches(FIX .. case[1], err, 1, true)
      assert.matches(case[2], err, 1, true)
    end)
  end

  it("P2/P3: each problem names the policy once, with file:line", function()
    local _, _, err = sluice("policy check " .. FIX .. "loop_place.lua")
    for line in err:gmatch("[^\n]+") do
      if line:find("exceeded its budget", 1, true) then
        assert.matches("^policy loop%-place %(" .. FIX:gsub("%p", "%%%0") .. "loop_place%.lua:4%): place exceeded", line)
        assert.is_nil(line:find("policy", 2, true), line)
      end
    end
    _, _, err = sluice("policy check " .. FIX .. "wrong_type.lua")
    assert.matches('policy wrong-type (' .. FIX .. 'wrong_type.lua): task "cf-1": expected a node id (string), got number\n', err, 1, true)
  end)

  it("P1/P3: a policy that never places says what the core does with it (3 batches, then the built-in)", function()
    local path = os.tmpname()
    local f = assert(io.open(path, "w"))
    f:write("return { name = 'lazy', place = function() return {} end }\n")
    f:close()
    local code, out, err = sluice("policy check " .. path)
    os.remove(path)
    assert.are.equal(0, code, err) -- P1: leaving tasks waiting is allowed
    assert.matches("warning: place left every task waiting in both rounds", out, 1, true)
    -- engine/core/sched.c: SL_STARVED_BATCHES, "left every task waiting for 3 batches …"
    assert.matches("leaves every task waiting for 3 batches in a row, the core refuses those " ..
      "tasks (counted as refusals) and the built-in policy decides them", out, 1, true)
    assert.is_nil(out:find("not waiting ones", 1, true), out)
  end)

  it("P2: a hostile policy cannot touch the file system or run commands", function()
    os.remove("/tmp/sluice-pwned"); os.remove("/tmp/sluice-pwned2")
    local code = sluice("policy check " .. FIX .. "pwn.lua")
    assert.are.equal(0, code) -- every attempt failed quietly inside its pcall
    code = sluice("policy check " .. FIX .. "pwn_plain.lua")
    assert.are.equal(1, code)
    assert.is_nil(io.open("/tmp/sluice-pwned"))
    assert.is_nil(io.open("/tmp/sluice-pwned2"))
  end)

  it("P2: a bytecode file is refused", function()
    local path = os.tmpname()
    local f = assert(io.open(path, "wb"))
    f:write(string.dump(function() return { name = "bc", place = function() return {} end } end))
    f:close()
    local code, _, err = sluice("policy check " .. path)
    os.remove(path)
    assert.are.equal(1, code)
    assert.matches("bytecode", err)
    assert.matches(path, err, 1, true)
  end)

  it("a missing file fails with exit 1", function()
    local code, _, err = sluice("policy check " .. FIX .. "no_such_policy.lua")
    assert.are.equal(1, code)
    assert.matches("no_such_policy.lua: cannot open", err, 1, true)
  end)

  it("usage errors exit 2", function()
    assert.are.equal(2, (sluice("policy")))
    assert.are.equal(2, (sluice("policy check")))
    assert.are.equal(2, (sluice("policy frobnicate x.lua")))
    assert.are.equal(2, (sluice("policy check a.lua b.lua")))
  end)
end)
