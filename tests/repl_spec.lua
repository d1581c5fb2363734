-- repl_spec.lua — `sluice repl` against a running coordinator (R1) and hot reload of the
-- live policy (P4): a scripted session (expressions, multi-line chunks, an error and the
-- session going on, nodes()), the data directory's socket and token, the completion
-- route, a runaway loop stopped by the budget while the coordinator keeps answering, a
-- terminal session through `script`'s pseudo-terminal (Ctrl-C dropping the input, a
-- session closed under the client); per-client sessions (globals not shared, one-shot
-- without a session, SESSION_NOT_FOUND for an unknown id); a policy saved into the policy
-- directory going live (rename-over save too), a broken one kept out with file:line.
-- The coordinator serves POST /api/v2/repl and watches its policy directory (GET
-- /api/v2/policies shows `watching`); the guards below only skip on an older binary.
local C = require "support.procs"
local q, sh, run, read, wait, available, sluice = C.q, C.sh, C.run, C.read, C.wait, C.available, C.sluice
local cjson = require "cjson"

-- Runs `sluice repl` with `input` on stdin; returns output and exit code.
local function repl(input, auth)
  local f = C.dir .. "/repl.in"
  local h = assert(io.open(f, "w"))
  h:write(input)
  h:close()
  return sh(("%s repl %s <%s 2>&1"):format(q(C.BIN), auth or ("--server " .. C.http_addr .. " --token " .. C.token), q(f)))
end

-- Runs `sluice repl` on a pseudo-terminal (script(1)), typing `typed` one step at a time
-- (script gives up on a terminal whose input ended early); a step is a string to type or
-- a function returning a shell command to run between two. Returns output and exit code.
local function terminal(typed)
  local feed = { "sleep 0.5" }
  for _, step in ipairs(typed) do
    feed[#feed + 1] = type(step) == "function" and step() or ("printf " .. q(step) .. "; sleep 0.3")
  end
  -- exec: the REPL is the only process on the terminal. script(1) runs the command through
  -- $SHELL -c; a shell left waiting in between (dash does not exec the last command) dies of
  -- the Ctrl-C the REPL survives, and script reports 130. SHELL is pinned to /bin/sh so this
  -- runs the same under every login shell.
  local cmd = ("exec env HOME=%s %s repl --server %s --token %s"):format(q(C.dir), q(C.BIN), C.http_addr, C.token)
  return sh(("(%s) | SHELL=/bin/sh timeout 30 script -qec %s /dev/null"):format(table.concat(feed, "; "), q(cmd)))
end

local function repl_post(body)
  local code, resp = C.http("POST", "/api/v2/repl", cjson.encode(body))
  local ok, j = pcall(cjson.decode, resp)
  return code, ok and j or {}, resp
end

local function has_repl_route()
  local code = C.http("POST", "/api/v2/repl", '{"code":"1"}')
  return code == 200
end

local function policy_info()
  local code, body = C.http("GET", "/api/v2/policies")
  if code ~= 200 then return nil end
  local ok, j = pcall(cjson.decode, body)
  return ok and j.items and j.items[1] or nil
end

describe("REPL (R1) and hot reload (P4) against a running coordinator", function()
  local ok, why = available()
  local policy_dir

  setup(function()
    if not ok then return end
    -- a policy directory of its own, so the specs can save into it
    policy_dir = (sh("mktemp -d /tmp/sluice-policies-XXXXXX")):gsub("%s+$", "")
    run("cp policies/*.lua " .. q(policy_dir))
    C.policy_dir = policy_dir
    C.start()
    if not has_repl_route() then
      ok, why = false, "the coordinator does not serve POST /api/v2/repl yet"
    end
  end)

  teardown(function()
    if C.dir then C.stop() end
    if policy_dir then run("rm -rf " .. q(policy_dir)) end
  end)

  it("R1: a scripted session: expressions, multi-line, an error, the session goes on", function()
    if not ok then return pending(why) end
    local out, code = repl("1 + 1\nfunction f(x)\n  return x * 2\nend\nf(21)\nnosuch()\n#nodes()\n" ..
      "nodes()[1].liveness\n{b = 1, a = 'x'}\n")
    assert.truthy(out:match("^2\n42\n"), out)
    assert.truthy(out:match("error: repl:1: attempt to call a nil value %(global 'nosuch'%)"), out)
    assert.truthy(out:match("\n3\nalive\n"), out)
    assert.truthy(out:match('{ a = "x", b = 1 }'), out)
    assert.are.equal(1, code) -- an evaluation failed
  end)

  it("R1: inspection functions answer", function()
    if not ok then return pending(why) end
    local out, code = repl("#changefeeds()\ndrain.status().state\npolicy.info().name\ntype(operators())\n" ..
      "#drain.plan('n1') >= 0\n")
    assert.are.equal(0, code, out)
    assert.truthy(out:match("^6\nnone\n[%w%-_]+\ntable\ntrue\n$"), out)
  end)

  it("R1: --data DIR finds the socket (0600) and the token file", function()
    if not ok then return pending(why) end
    local sock = C.data .. "/repl.sock"
    if not run("test -S " .. q(sock)) then return pending("no " .. sock .. " yet") end
    assert.are.equal("600", (sh("stat -c %a " .. q(sock))):gsub("%s", ""))
    run(("cp %s %s/token"):format(q(C.dir .. "/token"), q(C.data)))
    local out, code = repl("'via the socket'\n", "--data " .. q(C.data))
    assert.are.equal(0, code, out)
    assert.are.equal("via the socket\n", out)
  end)

  it("R1: completion through POST /api/v2/repl/complete", function()
    if not ok then return pending(why) end
    local code, body = C.http("POST", "/api/v2/repl/complete", '{"prefix":"drain.st"}')
    assert.are.equal(200, code, body)
    assert.are.same({ "drain.start", "drain.status" }, cjson.decode(body).matches)
  end)

  it("R1: a runaway loop is stopped by the budget; the coordinator keeps answering", function()
    if not ok then return pending(why) end
    local t0 = C.now()
    local out = repl("while true do end\n'after'\n")
    assert.truthy(out:match("budget"), out)
    assert.truthy(out:match("after\n"), out)
    assert.is_true(C.now() - t0 < 5)
    local code = C.http("GET", "/api/v2/health")
    assert.are.equal(200, code)
  end)

  it("R1: a terminal session through a pseudo-terminal", function()
    if not ok then return pending(why) end
    if not run("command -v script >/dev/null 2>&1") then return pending("no script(1)") end
    -- typed one line at a time (script(1) gives up on a terminal whose input ended early);
    -- Ctrl-D at the end
    local out, code = terminal({ "#nodes()\\n", "function g()\\n", "return 'typed' end\\n", "g()\\n", "\\004" })
    assert.are.equal(0, code, out)
    assert.truthy(out:match("sluice> "), out)
    assert.truthy(out:match("   %.%.%.> "), out)
    assert.truthy(out:match("typed"), out)
  end)

  it("R1: Ctrl-C in the terminal drops the line and any continuation, then a fresh prompt", function()
    if not ok then return pending(why) end
    if not run("command -v script >/dev/null 2>&1") then return pending("no script(1)") end
    -- a continuation dropped: had it stayed, the next line would only continue `function g()`;
    -- a half-typed line dropped: had it stayed, `abc1 + 1` would be an error
    local out, code = terminal({ "function g()\\n", "\\003", "'after' .. ' ctrl-c'\\n",
      "abc", "\\003", "1 + 1\\n", "\\004" })
    assert.are.equal(0, code, out) -- still running until Ctrl-D, which exits 0
    assert.truthy(out:match("after ctrl%-c\r?\n"), out)
    assert.truthy(out:match("\n2\r?\n"), out)
    assert.falsy(out:match("error"), out)
    local prompts = select(2, out:gsub("sluice> ", ""))
    assert.is_true(prompts >= 5, out) -- a fresh prompt after each Ctrl-C
  end)

  it("R1: a session closed under the terminal client: it says so and goes on in a new one", function()
    if not ok then return pending(why) end
    if not run("command -v script >/dev/null 2>&1") then return pending("no script(1)") end
    -- 16 sessions opened meanwhile close this client's, the longest idle
    local crowd = function()
      return ("for i in $(seq 16); do curl -s -o /dev/null -H 'Authorization: Bearer %s' " ..
        "-d '{\"code\":\"1\",\"session\":\"new\"}' http://%s/api/v2/repl; done"):format(C.token, C.http_addr)
    end
    local out, code = terminal({ "kept = 'yes'\\n", "kept\\n", crowd, "kept\\n", "kept = 'again'\\n", "kept\\n", "\\004" })
    assert.are.equal(0, code, out)
    assert.truthy(out:match("yes\r?\n"), out)
    assert.truthy(out:match("session expired, new session started %(REPL session %x+ was closed to make room"), out)
    assert.truthy(out:match("session started[^\n]*\n[^\n]*nil\r?\n"), out)
    assert.truthy(out:match("again\r?\n"), out)
  end)

  it("R1: each sluice repl has its own globals", function()
    if not ok then return pending(why) end
    local out, code = repl("mine = 'first client'\nmine\n")
    assert.are.equal(0, code, out)
    assert.are.equal("first client\n", out)
    out, code = repl("mine\n")
    assert.are.equal(0, code, out)
    assert.are.equal("nil\n", out)
  end)

  it("R1: sessions over HTTP: new, kept, one-shot without one, closed, unknown", function()
    if not ok then return pending(why) end
    local code, j, raw = repl_post({ code = "v = 7", session = "new" })
    assert.are.equal(200, code, raw)
    local id = j.session
    assert.truthy(type(id) == "string" and id:match("^%x+$") and #id == 32, raw)
    code, j, raw = repl_post({ code = "v", session = id })
    assert.are.equal(200, code, raw)
    assert.are.equal("7\n", j.output)
    code, j = repl_post({ code = "v" }) -- no session: one-shot, as older clients
    assert.are.equal(200, code)
    assert.are.equal("nil\n", j.output)
    assert.is_nil(j.session)
    code, j, raw = repl_post({ session = id, close = true })
    assert.are.equal(200, code, raw)
    assert.is_true(j.closed)
    code, j, raw = repl_post({ code = "v", session = id })
    assert.are.equal(404, code, raw)
    assert.are.equal("SESSION_NOT_FOUND", j.error_code)
    assert.truthy(j.error_msg:match("closed by its client"), raw)
    code, j, raw = repl_post({ code = "1", session = ("0"):rep(32) })
    assert.are.equal(404, code, raw)
    assert.are.equal("SESSION_NOT_FOUND", j.error_code)
    assert.truthy(j.error_msg:match("no REPL session 0+ ") and j.error_msg:match('"session": "new"'), raw)
    code, j, raw = repl_post({ code = "1", session = "not-an-id" })
    assert.are.equal(400, code, raw)
    assert.are.equal("INVALID_ARGUMENT", j.error_code)
  end)

  it("P4: a policy saved into the policy directory goes live; a broken one is kept out", function()
    if not ok then return pending(why) end
    local info = policy_info()
    if not info or info.watching == nil then return pending("the coordinator does not watch its policy directory yet") end
    local v0 = info.version
    local src = read(policy_dir .. "/least_loaded.lua")
    -- a rename-over save, as editors do
    local tmp = policy_dir .. "/.least_loaded.lua.tmp"
    local h = assert(io.open(tmp, "w"))
    h:write((src:gsub('name%s*=%s*"[^"]*"', 'name = "saved-by-spec"', 1)))
    h:close()
    assert.is_true(os.rename(tmp, policy_dir .. "/least_loaded.lua"))
    wait("the saved policy to go live", 5, function()
      local i = policy_info()
      return i and i.name == "saved-by-spec" and i.version > v0
    end)
    -- broken: the previous stays, the error names file and line
    h = assert(io.open(policy_dir .. "/least_loaded.lua", "w"))
    h:write("return {\n  name = 'broken',\n  place = function(tasks nodes) end,\n}\n")
    h:close()
    local broken = wait("the error to show", 5, function()
      local i = policy_info()
      return i and i.last_error ~= cjson.null and i.last_error and i
    end)
    assert.are.equal("saved-by-spec", broken.name)
    assert.truthy(broken.last_error:match("least_loaded%.lua:3:"), broken.last_error)
    assert.truthy(broken.last_error:match("using previous policy"), broken.last_error)
    -- policy.reload() from the REPL says the same
    local out = repl("policy.reload()\n")
    assert.truthy(out:match("using previous policy"), out)
    h = assert(io.open(policy_dir .. "/least_loaded.lua", "w"))
    h:write(src)
    h:close()
    wait("the original policy back", 5, function()
      local i = policy_info()
      return i and i.name ~= "saved-by-spec" and i.last_error == cjson.null
    end)
  end)
end)
