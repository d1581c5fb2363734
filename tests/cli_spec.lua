-- cli_spec.lua — `sluice status` and `sluice drain` (R2, R3) as an operator runs them,
-- against a real coordinator (`sluice serve`) and real nodes (`sluice agent`) on
-- loopback: the table of nodes, a dry run that changes nothing, plain errors (unknown
-- node, wrong token, unreachable server), --cancel while --watch follows, --watch into a
-- pipe (plain lines, exit 0) and on a terminal (a progress line redrawn in place through
-- `script`'s pseudo-terminal, cleared at the end). Skipped (pending) until the binary
-- has `serve` and `agent`, or without curl.
local BIN = os.getenv("SLUICE_BIN") or "build/sluice"

local function q(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

-- Under the ASan run LD_PRELOAD carries libasan into every child; curl and friends do not
-- take it well, and the sanitized sluice binary does not need it.
local function sh(cmd)
  local p = io.popen("env -u LD_PRELOAD sh -c " .. ("'" .. cmd:gsub("'", "'\\''") .. "'"))
  local out = p:read("a")
  local _, _, code = p:close()
  return out, code
end

local function run(cmd)
  return os.execute("env -u LD_PRELOAD sh -c " .. q(cmd))
end

local function read(path)
  local f = io.open(path, "r")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

local function now()
  return tonumber((sh("date +%s.%N")))
end

local function wait(what, timeout, fn)
  local deadline = now() + timeout
  repeat
    local v = fn()
    if v then return v end
    run("sleep 0.05")
  until now() > deadline
  error("timed out waiting for " .. what, 2)
end

local function available()
  if not run("command -v curl >/dev/null 2>&1") then return false, "curl is missing" end
  for _, cmd in ipairs({ "serve", "agent" }) do
    if not run(q(BIN) .. " " .. cmd .. " --help >/dev/null 2>&1") then
      return false, "`sluice " .. cmd .. "` is not built yet"
    end
  end
  return true
end

-- A coordinator and three nodes; drains take a second or two (batch 1, slow tasks).
local C = {}

function C.start()
  C.dir = (sh("mktemp -d /tmp/sluice-cli-XXXXXX")):gsub("%s+$", "")
  C.data = C.dir .. "/data"
  C.token = "cli-" .. tostring(os.time())
  local f = assert(io.open(C.dir .. "/token", "w"))
  f:write(C.token .. "\n")
  f:close()
  run("chmod 600 " .. q(C.dir .. "/token"))
  C.pids = {}
  local out = C.dir .. "/serve.out"
  local cmd = ("%s serve --listen 127.0.0.1:0 --node-listen 127.0.0.1:0 --data %s --policy-dir policies " ..
    "--token-file %s --drain-batch-size 1 >%s 2>%s.err </dev/null"):format(q(BIN), q(C.data),
      q(C.dir .. "/token"), q(out), q(out))
  C.pids[#C.pids + 1] = tonumber((sh("sh -c " .. q("exec " .. cmd) .. " & echo $!")))
  local line = wait("serve to listen", 10, function()
    local s = read(out)
    return s and s:match("http=[^\n]*nodes=[^\n]*\n")
  end)
  C.http = line:match("http=([%d%.]+:%d+)")
  C.nodes = line:match("nodes=([%d%.]+:%d+)")
  for i = 1, 3 do
    local a = ("%s agent --coordinator %s --id n%d --token-file %s --task-latency-ms 150 >%s/n%d.log 2>&1 </dev/null")
      :format(q(BIN), C.nodes, i, q(C.dir .. "/token"), q(C.dir), i)
    C.pids[#C.pids + 1] = tonumber((sh("sh -c " .. q("exec " .. a) .. " & echo $!")))
  end
  wait("three nodes", 10, function()
    local s = sh(("curl -s -H 'Authorization: Bearer %s' http://%s/api/v2/captures"):format(C.token, C.http))
    return s:match('"total":%s*3')
  end)
  for i = 1, 6 do
    sh(("curl -s -o /dev/null -H 'Authorization: Bearer %s' -d '{\"changefeed_id\":\"cf%d\",\"table_count\":3}' http://%s/api/v2/changefeeds")
      :format(C.token, i, C.http))
  end
  wait("changefeeds placed", 20, function()
    local s = sh(("curl -s -H 'Authorization: Bearer %s' http://%s/api/v2/changefeeds"):format(C.token, C.http))
    local working = 0
    for _ in s:gmatch('"state":%s*"working"') do working = working + 1 end
    return working == 6
  end)
end

function C.stop()
  for _, pid in ipairs(C.pids or {}) do run("kill " .. pid .. " 2>/dev/null") end
  run("sleep 0.2")
  for _, pid in ipairs(C.pids or {}) do run("kill -9 " .. pid .. " 2>/dev/null") end
  if C.dir then run("rm -rf " .. q(C.dir)) end
end

-- Runs `sluice ARGS` against the cluster; returns output (stdout+stderr) and exit code.
local function sluice(args, opts)
  opts = opts or {}
  local auth = opts.auth or ("--server " .. C.http .. " --token " .. C.token)
  return sh(("%s %s %s 2>&1 </dev/null"):format(q(BIN), args, auth))
end

describe("CLI (R2, R3)", function()
  local ok, why = available()

  setup(function()
    if ok then C.start() end
  end)

  teardown(function()
    if ok then C.stop() end
  end)

  it("R3: sluice status shows the nodes, their counts and the drain", function()
    if not ok then return pending(why) end
    local out, code = sluice("status")
    assert.are.equal(0, code, out)
    assert.truthy(out:match("NODE%s+LIVENESS%s+MAINTAINERS%s+DISPATCHERS%s+IN%-FLIGHT"), out)
    for i = 1, 3 do assert.truthy(out:match("n" .. i .. "%s+alive"), out) end
    assert.truthy(out:match("3 nodes, 6 maintainers"), out)
    assert.truthy(out:match("drain: none running"), out)
  end)

  it("R2: clear errors: unknown node, wrong token, unreachable server", function()
    if not ok then return pending(why) end
    local out, code = sluice("drain n9")
    assert.are_not.equal(0, code)
    assert.truthy(out:match("CAPTURE_NOT_FOUND"), out)
    out, code = sluice("status", { auth = "--server " .. C.http .. " --token wrong" })
    assert.are_not.equal(0, code)
    assert.truthy(out:match("the token was refused"), out)
    out, code = sluice("status", { auth = "--server 127.0.0.1:1 --token x" })
    assert.are_not.equal(0, code)
    assert.truthy(out:match("cannot reach the coordinator at 127%.0%.0%.1:1: connection refused"), out)
  end)

  it("R2/D12: --dry-run prints the plan and changes nothing", function()
    if not ok then return pending(why) end
    local out, code = sluice("drain n1 --dry-run")
    assert.are.equal(0, code, out)
    assert.truthy(out:match("dry run: draining n1 with policy"), out)
    assert.truthy(out:match("nothing was changed"), out)
    out = sluice("status")
    assert.truthy(out:match("n1%s+alive"), out)
    assert.truthy(out:match("drain: none running"), out)
  end)

  it("R2/D3: --cancel stops a drain that --watch follows; the watch exits non-zero", function()
    if not ok then return pending(why) end
    local log = C.dir .. "/watch-cancel.out"
    run(("sh -c %s &"):format(q(("%s drain n1 --watch --server %s --token %s >%s 2>&1; echo $? >%s.rc")
      :format(q(BIN), C.http, C.token, q(log), q(log)))))
    wait("the watch to start", 10, function()
      local s = read(log)
      return s and s:match("draining n1")
    end)
    local out, code = sluice("drain n1 --cancel")
    assert.are.equal(0, code, out)
    assert.truthy(out:match("cancelled"), out)
    local rc = wait("the watch to end", 10, function() return read(log .. ".rc") end)
    assert.are_not.equal("0", rc:gsub("%s", ""))
    assert.truthy(read(log):match("was cancelled"), read(log))
    wait("n1 alive again", 10, function() return (sluice("status")):match("n1%s+alive") end)
  end)

  it("R2: --watch into a pipe prints plain lines and exits 0 when the drain completed", function()
    if not ok then return pending(why) end
    local out, code = sluice("drain n1 --watch")
    assert.are.equal(0, code, out)
    assert.truthy(out:match("draining n1: %d+ maintainers"), out)
    assert.truthy(out:match("drain of n1 completed"), out)
    assert.falsy(out:find("\r", 1, true), "no carriage returns into a pipe")
    assert.truthy((sluice("status")):match("n1%s+stopping"))
  end)

  it("R2: --watch on a terminal redraws one progress line and clears it at the end", function()
    if not ok then return pending(why) end
    if not run("command -v script >/dev/null 2>&1") then return pending("no script(1)") end
    local cmd = ("%s drain n2 --watch --server %s --token %s"):format(BIN, C.http, C.token)
    local out, code = sh(("script -qec %s /dev/null </dev/null"):format(q(cmd)))
    assert.are.equal(0, code, out)
    assert.truthy(out:find("\r\27[K", 1, true), "the line is redrawn in place")
    assert.truthy(out:match("n2 %[[#%-]+%]"), out)
    assert.truthy(out:match("ETA"), out)
    assert.truthy(out:match("\r\27%[Kdrain of n2 completed"), "cleared before the final line")
    local st = sluice("status")
    assert.truthy(st:match("n2%s+stopping"), st)
    assert.truthy(st:match("stopping: n1, n2"), st)
  end)
end)
