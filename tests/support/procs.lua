-- procs.lua — a real coordinator (`sluice serve`) and three nodes (`sluice agent`) on
-- loopback for the CLI and REPL specs, run as an operator would: processes, a data
-- directory with a token file, the `sluice` client commands. Drains are slowed down
-- (batch 1, 150 ms tasks) so that they can be watched and cancelled.
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
C.BIN = BIN

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
  local cmd = ("%s serve --listen 127.0.0.1:0 --node-listen 127.0.0.1:0 --data %s --policy-dir %s " ..
    "--token-file %s --drain-batch-size 1 >%s 2>%s.err </dev/null"):format(q(BIN), q(C.data), q(C.policy_dir or "policies"),
      q(C.dir .. "/token"), q(out), q(out))
  C.pids[#C.pids + 1] = tonumber((sh("sh -c " .. q("exec " .. cmd) .. " & echo $!")))
  local line = wait("serve to listen", 10, function()
    local s = read(out)
    return s and s:match("http=[^\n]*nodes=[^\n]*\n")
  end)
  C.http_addr = line:match("http=([%d%.]+:%d+)")
  C.nodes = line:match("nodes=([%d%.]+:%d+)")
  for i = 1, 3 do
    local a = ("%s agent --coordinator %s --id n%d --token-file %s --task-latency-ms 150 >%s/n%d.log 2>&1 </dev/null")
      :format(q(BIN), C.nodes, i, q(C.dir .. "/token"), q(C.dir), i)
    C.pids[#C.pids + 1] = tonumber((sh("sh -c " .. q("exec " .. a) .. " & echo $!")))
  end
  wait("three nodes", 10, function()
    local s = sh(("curl -s -H 'Authorization: Bearer %s' http://%s/api/v2/captures"):format(C.token, C.http_addr))
    return s:match('"total":%s*3')
  end)
  for i = 1, 6 do
    sh(("curl -s -o /dev/null -H 'Authorization: Bearer %s' -d '{\"changefeed_id\":\"cf%d\",\"table_count\":3}' http://%s/api/v2/changefeeds")
      :format(C.token, i, C.http_addr))
  end
  wait("changefeeds placed", 20, function()
    local s = sh(("curl -s -H 'Authorization: Bearer %s' http://%s/api/v2/changefeeds"):format(C.token, C.http_addr))
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
function C.sluice(args, opts)
  opts = opts or {}
  local auth = opts.auth or ("--server " .. C.http_addr .. " --token " .. C.token)
  return sh(("%s %s %s 2>&1 </dev/null"):format(q(BIN), args, auth))
end


-- A request through curl with the token; returns the status and the raw body.
function C.http(method, path, body)
  local f = C.dir .. "/req.json"
  if body then
    local h = assert(io.open(f, "w"))
    h:write(body)
    h:close()
  end
  local out = sh(("curl -s -m 10 -o %s -w '%%{http_code}' -X %s -H 'Authorization: Bearer %s' %s http://%s%s")
    :format(q(C.dir .. "/resp"), method, C.token, body and ("-H 'Content-Type: application/json' --data-binary @" .. q(f)) or "",
      C.http_addr, path))
  return tonumber(out), read(C.dir .. "/resp") or ""
end

C.q, C.sh, C.run, C.read, C.wait, C.available = q, sh, run, read, wait, available
C.now = now
return C
