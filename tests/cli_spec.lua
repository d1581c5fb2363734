-- cli_spec.lua — `sluice status` and `sluice drain` (R2, R3) as an operator runs them,
-- against a real coordinator (`sluice serve`) and real nodes (`sluice agent`) on
-- loopback: the table of nodes, a dry run that changes nothing, plain errors (unknown
-- node, wrong token, unreachable server), --cancel while --watch follows, --watch into a
-- pipe (plain lines, exit 0) and on a terminal (a progress line redrawn in place through
-- `script`'s pseudo-terminal, cleared at the end). Skipped (pending) until the binary
-- has `serve` and `agent`, or without curl.
local C = require "support.procs"
local BIN, q, sh, run, read, wait, available, sluice = C.BIN, C.q, C.sh, C.run, C.read, C.wait, C.available, C.sluice

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
    out, code = sluice("status", { auth = "--server " .. C.http_addr .. " --token wrong" })
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
    -- the dispatchers on n1 are in the plan too, as many as status counts there (D6, D12)
    local planned = tonumber(out:match("and (%d+) dispatchers of %d+ changefeeds, which their maintainers move off n1") or "0")
    local st = sluice("status")
    local on_n1 = tonumber(st:match("n1%s+alive%s+%d+%s+(%d+)"))
    assert.is_true(on_n1 > 0, st)
    assert.are.equal(on_n1, planned, out .. st)
    out = sluice("status")
    assert.truthy(out:match("n1%s+alive"), out)
    assert.truthy(out:match("drain: none running"), out)
  end)

  it("R2/D3: --cancel stops a drain that --watch follows; the watch exits non-zero", function()
    if not ok then return pending(why) end
    local log = C.dir .. "/watch-cancel.out"
    run(("sh -c %s &"):format(q(("%s drain n1 --watch --server %s --token %s >%s 2>&1; echo $? >%s.rc")
      :format(q(BIN), C.http_addr, C.token, q(log), q(log)))))
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
    local cmd = ("%s drain n2 --watch --server %s --token %s"):format(BIN, C.http_addr, C.token)
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
