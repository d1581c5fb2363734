-- policy_redteam_spec.lua — hostile policies and hostile FILE arguments against
-- `sluice policy check` end to end (SPEC §4; P1–P3). Each must be judged (exit 0 sound,
-- 1 broken or hostile with a message naming the file, 2 usage), and none may hang,
-- crash, touch the file system or run a command. Every run is bounded by `timeout`;
-- specs assert the exit status (124 = the bound was hit), never timings.
local BIN = os.getenv("SLUICE_BIN") or "build/sluice"
local FIX = "tests/fixtures/policies/"
local BOUND = 20 -- seconds; the sandbox's own budgets end every case well before

local function slurp(path)
  local f = io.open(path, "rb")
  if not f then return "" end
  local s = f:read("a")
  f:close()
  return s
end

local function listing(dir)
  local p = io.popen("ls -A " .. dir .. " 2>/dev/null")
  local seen = {}
  for name in p:lines() do seen[name] = true end
  p:close()
  return seen
end

local CWD = io.popen("pwd"):read("l")
local function abs(path) return path:sub(1, 1) == "/" and path or CWD .. "/" .. path end

-- runs `timeout BOUND sluice policy check FILE` from a fresh, empty working directory;
-- returns exit status, stdout, stderr, and what appeared in that directory
local function check(file)
  local out, err, dir = os.tmpname(), os.tmpname(), os.tmpname()
  os.remove(dir)
  assert(os.execute("mkdir " .. dir))
  local cmd = ("cd %s && timeout %d %s policy check '%s' >%s 2>%s </dev/null"):format(
    dir, BOUND, abs(BIN), abs(file), out, err)
  local _, how, code = os.execute(cmd)
  local o, e = slurp(out), slurp(err)
  os.remove(out); os.remove(err)
  local made = {}
  for name in pairs(listing(dir)) do made[#made + 1] = name end
  os.execute("rm -rf " .. dir)
  if how == "signal" then return 128 + code, o, e, made end
  return code, o, e, made
end

-- files in /tmp named like what a hostile policy would make, that appeared during fn()
local function new_files(fn)
  local before = listing("/tmp")
  fn()
  local made = {}
  for name in pairs(listing("/tmp")) do
    if not before[name] and name:match("pwn") then made[#made + 1] = "/tmp/" .. name end
  end
  return made
end

describe("P2 red team: sluice policy check", function()
  -- sound fixtures: everything hostile they try is contained; they must pass
  for _, case in ipairs({
    { "rt_escape_probe.lua", "rt%-escape%-probe" },
    { "rt_string_mt_poison.lua", "placed: n1=5 n2=5 n3=5 n4=5" },
  }) do
    it("P2: " .. case[1] .. " is sound: exit 0", function()
      local code, out, err = check(FIX .. case[1])
      assert.are_not.equal(124, code, "timed out")
      assert.are.equal(0, code, out .. err)
      assert.matches(case[2], out)
    end)
  end

  it("P2: rt_string_mt_poison.lua: the host reads the answers raw (drain_order too)", function()
    local code, out = check(FIX .. "rt_string_mt_poison.lua")
    assert.are.equal(0, code)
    assert.matches("drain_order: 8 of 8 tasks ordered", out, 1, true)
  end)

  -- hostile fixtures: exit 1, the file and the reason on stderr, within the bound
  for _, case in ipairs({
    -- file, what stderr must say (plain text)
    { "rt_find_plain_loop.lua", "rt_find_plain_loop.lua:11): place exceeded its budget of 50 ms" },
    { "rt_format_q_loop.lua", "rt_format_q_loop.lua:9): place exceeded its budget of 50 ms" },
    { "rt_concat_loop.lua", "rt_concat_loop.lua:8): place exceeded its budget of 50 ms" },
    { "rt_string_eq_loop.lua", "place exceeded its budget of 50 ms" },
    { "rt_gsub_cfunction.lua", "rt_gsub_cfunction.lua:8): place exceeded its budget of 50 ms" },
    { "rt_sort_default.lua", "rt_sort_default.lua:8): place exceeded its budget of 50 ms" },
    { "rt_sort_cfunction.lua", "rt_sort_cfunction.lua:7): place exceeded its budget of 50 ms" },
    { "rt_cstack.lua", "rt_cstack.lua:3: C stack overflow | " },
    { "rt_error_objects.lua", "rt_error_objects.lua:8: (error object is a table value)" },
    { "rt_result_values.lua", 'task "cf-2": node id of 10000000 bytes is not a node id' },
  }) do
    it("P2/P3: " .. case[1] .. " fails with exit 1 within its budget, naming the file", function()
      local code, out, err, in_cwd
      local in_tmp = new_files(function() code, out, err, in_cwd = check(FIX .. case[1]) end)
      assert.are_not.equal(124, code, "timed out")
      assert.are.equal(1, code, out .. err)
      assert.matches(abs(FIX .. case[1]), err, 1, true)
      assert.matches(case[2], err, 1, true)
      assert.are.same({}, in_tmp)
      assert.are.same({}, in_cwd)
    end)
  end

  it("P2: rt_cstack.lua: each recursion through C ends in an error, not a crash", function()
    local _, _, err = check(FIX .. "rt_cstack.lua")
    local _, n = err:match("^[^\n]*\n([^\n]*)"):gsub("C stack overflow", "")
    assert.are.equal(4, n, err)
  end)

  it("P3: rt_result_values.lua: every malformed answer is refused by name", function()
    local _, _, err = check(FIX .. "rt_result_values.lua")
    assert.matches('which was not asked for', err, 1, true)
    assert.matches('task "cf-1": expected a node id (string), got table', err, 1, true)
    assert.matches('task "cf-3": node id of 7 bytes is not a node id', err, 1, true)
    assert.matches('task "cf-4": expected a node id (string), got number', err, 1, true)
    assert.matches('task "cf-5": expected a node id (string), got function', err, 1, true)
  end)

  describe("FILE that is not a policy file", function()
    local dir
    before_each(function()
      dir = os.tmpname()
      os.remove(dir)
      assert(os.execute("mkdir " .. dir))
    end)
    after_each(function()
      os.execute("rm -rf " .. dir)
    end)

    it("a FIFO with no writer is refused at once (it used to block forever)", function()
      assert(os.execute("mkfifo " .. dir .. "/p.lua"))
      local code, _, err = check(dir .. "/p.lua")
      assert.are_not.equal(124, code, "timed out")
      assert.are.equal(1, code)
      assert.matches(dir .. "/p.lua: is a FIFO, not a policy file", err, 1, true)
    end)

    it("a directory is refused", function()
      assert(os.execute("mkdir " .. dir .. "/d.lua"))
      local code, _, err = check(dir .. "/d.lua")
      assert.are.equal(1, code)
      assert.matches(dir .. "/d.lua: is a directory", err, 1, true)
    end)

    for _, dev in ipairs({ "/dev/zero", "/dev/urandom", "/dev/null" }) do
      it(dev .. " is refused without being read", function()
        local code, _, err = check(dev)
        assert.are_not.equal(124, code, "timed out")
        assert.are.equal(1, code)
        assert.matches(dev .. ": is a character device, not a policy file", err, 1, true)
      end)
    end

    it("a symlink loop fails with exit 1", function()
      assert(os.execute(("ln -s b.lua %s/a.lua && ln -s a.lua %s/b.lua"):format(dir, dir)))
      local code, _, err = check(dir .. "/a.lua")
      assert.are.equal(1, code)
      assert.matches(dir .. "/a.lua: cannot open", err, 1, true)
    end)

    it("a file over 16 MiB is refused before it is read", function()
      assert(os.execute(("truncate -s 200M %s/big.lua"):format(dir)))
      local code, _, err = check(dir .. "/big.lua")
      assert.are.equal(1, code)
      assert.matches(dir .. "/big.lua: larger than 16777216 bytes", err, 1, true)
    end)

    it("an empty file fails the contract", function()
      local f = assert(io.open(dir .. "/e.lua", "wb")); f:close()
      local code, _, err = check(dir .. "/e.lua")
      assert.are.equal(1, code)
      assert.matches(dir .. "/e.lua: the chunk returned nil", err, 1, true)
    end)

    it("a UTF-8 byte order mark is skipped, as Lua's own loader does", function()
      local f = assert(io.open(dir .. "/bom.lua", "wb"))
      f:write('\239\187\191return { name = "bom", place = function(t, n) local o = {} ' ..
              'for _, x in ipairs(t) do o[x.id] = n[1].id end return o end }\n')
      f:close()
      local code, out, err = check(dir .. "/bom.lua")
      assert.are.equal(0, code, err)
      assert.matches("policy bom", out, 1, true)
    end)

    it("P4: the live loader refuses a FIFO at once instead of blocking the scheduler", function()
      local sluice = require "sluice"
      local fifo = dir .. "/fifo.lua"
      assert.are.equal(0, select(3, os.execute("mkfifo " .. fifo)))
      local p, err = sluice.policy.load(fifo)
      assert.is_nil(p)
      assert.matches("fifo.lua: is a FIFO, not a policy file", err, 1, true)
    end)

    it("a first line starting with #! is skipped, as lua does", function()
      local f = assert(io.open(dir .. "/sh.lua", "wb"))
      f:write('#!/usr/bin/env lua\nreturn { name = "shebang", place = function() return {} end }\n')
      f:close()
      local code, out, err = check(dir .. "/sh.lua")
      assert.are.equal(0, code, err)
      assert.matches("policy shebang", out, 1, true)
    end)
  end)
end)
