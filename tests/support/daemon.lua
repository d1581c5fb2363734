-- daemon.lua — runs real `sluice serve` and `sluice agent` processes on loopback for the
-- end-to-end specs (tests/e2e_*_spec.lua): temp data directories, ports picked by the
-- kernel (port 0, read back from serve's first stdout line), an HTTP client on curl,
-- polling with deadlines instead of blind sleeps, and a cleanup that kills every process
-- it started.
local cjson = require "cjson"

local D = {}
D.__index = D

local BIN = os.getenv("SLUICE_BIN") or "build/sluice"
local ROOT = os.getenv("PWD") or "."

local function sh(cmd)
  local p = io.popen(cmd .. " 2>/dev/null")
  local out = p:read("a")
  p:close()
  return out
end

local function q(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

function D.have_curl()
  return os.execute("command -v curl >/dev/null 2>&1") == true
end

-- For the first line of an e2e test: true, with the test marked pending (busted's
-- `pending`, passed in), when curl is missing.
function D.skip_without_curl(pending)
  if D.have_curl() then return false end
  pending("curl is not installed: the end-to-end specs need it (make deps)")
  return true
end

function D.sleep(s)
  os.execute("sleep " .. s)
end

local function now()
  local p = io.popen("env -u LD_PRELOAD date +%s.%N")
  local t = tonumber(p:read("l"))
  p:close()
  return t
end
D.now = now

-- Polls fn() until it returns a truthy value (returned) or `timeout` seconds pass (error
-- naming `what`, with the last value fn gave as a second result).
function D.wait(what, timeout, fn)
  local deadline = now() + timeout
  local last
  repeat
    local v, extra = fn()
    if v then return v end
    last = extra
    D.sleep(0.05)
  until now() > deadline
  error(("timed out after %ss waiting for %s%s"):format(timeout, what,
    last and (" (last: " .. tostring(last) .. ")") or ""), 2)
end

function D.read(path)
  local f = io.open(path, "r")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

local function write(path, s, mode)
  local f = assert(io.open(path, "w"))
  f:write(s)
  f:close()
  if mode then os.execute("chmod " .. mode .. " " .. q(path)) end
end

-- What `opts.env` ({SLUICE_LOG = "warn"}) adds in front of a command run by sh: the
-- variables, exported to the process it execs.
local function env_prefix(env)
  local keys, out = {}, {}
  for k in pairs(env or {}) do keys[#keys + 1] = k end
  table.sort(keys)
  for _, k in ipairs(keys) do out[#out + 1] = ("export %s=%s; "):format(k, q(env[k])) end
  return table.concat(out)
end

-- A new cluster harness: a temp directory, a token, no process yet. opts: latency (the
-- agents' task latency, ms), serve_flags, env (variables for every process it starts).
function D.new(opts)
  local self = setmetatable({ procs = {}, agents = {}, opts = opts or {} }, D)
  self.dir = sh("mktemp -d /tmp/sluice-e2e-XXXXXX"):gsub("%s+$", "")
  assert(self.dir ~= "", "mktemp failed")
  self.token = "e2e-" .. tostring(math.random(1, 1 << 30)) .. "-" .. tostring(os.time())
  self.token_file = self.dir .. "/token"
  write(self.token_file, self.token .. "\n", "600")
  self.data = self.dir .. "/data"
  return self
end

-- Starts a process in the background; returns its pid. Output goes to `log`.
function D:spawn(name, args, log)
  local cmd = ("%sexec %s %s >%s 2>&1 </dev/null"):format(env_prefix(self.opts.env), q(BIN), args, q(log))
  local pid = tonumber(sh(("sh -c %s & echo $!"):format(q(cmd))):match("%d+"))
  assert(pid, "could not start " .. name)
  self.procs[#self.procs + 1] = { name = name, pid = pid }
  return pid
end

function D.alive(pid)
  return os.execute(("kill -0 %d 2>/dev/null"):format(pid)) == true
end

function D:kill(pid, sig)
  os.execute(("kill -%s %d 2>/dev/null"):format(sig or "TERM", pid))
end

-- Waits for a pid to end (after a kill). true when it did.
function D:reap(pid, timeout)
  local ok = pcall(D.wait, "process " .. pid .. " to exit", timeout or 5, function()
    return not D.alive(pid)
  end)
  return ok
end

-- Starts `sluice serve` (port 0 unless self.http_port is known: a restart reuses the
-- ports). Extra flags in opts.flags. Waits for its ports and for /api/v2/health.
function D:serve(flags)
  self.serves = (self.serves or 0) + 1
  local out = ("%s/serve%d.out"):format(self.dir, self.serves)
  local listen = "127.0.0.1:" .. (self.http_port or 0)
  local nlisten = "127.0.0.1:" .. (self.node_port or 0)
  local args = ("serve --listen %s --node-listen %s --data %s --policy-dir %s --token-file %s " ..
    "--node-timeout-ms 4000 --bootstrap-ms 1500 %s"):format(listen, nlisten, q(self.data),
      q(ROOT .. "/policies"), q(self.token_file), flags or self.opts.serve_flags or "")
  local cmd = ("%sexec %s %s >%s 2>%s </dev/null"):format(env_prefix(self.opts.env), q(BIN), args, q(out),
    q(out .. ".err"))
  local pid = tonumber(sh(("sh -c %s & echo $!"):format(q(cmd))):match("%d+"))
  self.procs[#self.procs + 1] = { name = "serve", pid = pid }
  self.serve_pid = pid
  local line = D.wait("serve to listen", 10, function()
    local s = D.read(out)
    if not D.alive(pid) then error("sluice serve exited: " .. (D.read(out .. ".err") or "")) end
    return s and s:match("http=[^\n]*nodes=[^\n]*\n")
  end)
  self.http_port = tonumber(line:match("http=[%d%.]+:(%d+)"))
  self.node_port = tonumber(line:match("nodes=[%d%.]+:(%d+)"))
  self.base = "http://127.0.0.1:" .. self.http_port
  self.serve_log = out .. ".err"
  return pid
end

-- Starts `sluice agent --id id` writing its state file; opts.latency (ms); `extra` flags.
function D:agent(id, latency, extra)
  local state = ("%s/%s.json"):format(self.dir, id)
  local args = ("agent --coordinator 127.0.0.1:%d --id %s --token-file %s --state-file %s " ..
    "--task-latency-ms %d %s"):format(self.node_port, id, q(self.token_file),
      q(state), latency or self.opts.latency or 20, extra or "")
  local pid = self:spawn("agent " .. id, args, ("%s/%s.log"):format(self.dir, id))
  self.agents[id] = { pid = pid, state = state }
  return pid
end

-- `sluice ARGS` as an operator runs it against this coordinator; returns what it printed.
function D:cli(args)
  local p = io.popen(("SLUICE_SERVER=127.0.0.1:%d SLUICE_TOKEN=%s %s %s 2>&1"):format(
    self.http_port, self.token, q(BIN), args))
  local out = p:read("a")
  p:close()
  return out
end

-- Every node the coordinator knows, id → liveness.
function D:liveness_map()
  local code, body = self:http("GET", "/api/v2/captures")
  assert(code == 200, "GET /api/v2/captures: " .. tostring(code))
  local ids = {}
  for _, c in ipairs(body.items) do ids[c.id] = c.liveness end
  return ids
end

-- The node's own account of what it runs (its state file), or nil.
function D:state(id)
  local s = D.read(self.agents[id].state)
  if not s or s == "" then return nil end
  local ok, v = pcall(cjson.decode, s)
  return ok and v or nil
end

-- HTTP through curl. Returns status (number), decoded JSON body (or raw text), raw text.
-- opts: token (false: none; a string: that one), body (string), body_file, headers.
function D:http(method, path, opts)
  opts = opts or {}
  local bodyfile = self.dir .. "/resp"
  -- curl runs without the ASan preload the sanitized suite sets (it deadlocks curl)
  local args = { "env -u LD_PRELOAD curl -s -m 10 -o", q(bodyfile), "-w '%{http_code}'", "-X", method }
  local token = opts.token == nil and self.token or opts.token
  if token then args[#args + 1] = "-H " .. q("Authorization: Bearer " .. token) end
  if opts.body then
    local f = self.dir .. "/req"
    write(f, opts.body)
    args[#args + 1] = "-H 'Content-Type: application/json' --data-binary @" .. q(f)
  elseif opts.body_file then
    args[#args + 1] = "-H 'Content-Type: application/json' --data-binary @" .. q(opts.body_file)
  end
  args[#args + 1] = q(self.base .. path)
  local code = tonumber(sh(table.concat(args, " ")))
  local raw = D.read(bodyfile) or ""
  local ok, json = pcall(cjson.decode, raw)
  return code, ok and json or raw, raw
end

function D:log_of(id)
  return D.read(("%s/%s.log"):format(self.dir, id)) or ""
end

-- Every process started is killed (TERM, then KILL), the directory removed.
function D:cleanup()
  for _, p in ipairs(self.procs) do self:kill(p.pid, "TERM") end
  for _, p in ipairs(self.procs) do
    if not self:reap(p.pid, 3) then self:kill(p.pid, "KILL") end
  end
  if os.getenv("SLUICE_E2E_KEEP") then
    print("kept " .. self.dir)
  else
    os.execute("rm -rf " .. q(self.dir))
  end
end

-- Starts serve, `n` agents n1..nN and `changefeeds` changefeeds of `tables` tables, and
-- waits until every changefeed's maintainer is working and has reported its dispatchers.
function D:cluster(n, changefeeds, tables)
  self:serve()
  for i = 1, n do self:agent("n" .. i) end
  D.wait("agents to join", 10, function()
    local code, body = self:http("GET", "/api/v2/captures")
    return code == 200 and body.total == n, code
  end)
  for i = 1, changefeeds do
    local code = self:http("POST", "/api/v2/changefeeds",
      { body = cjson.encode({ changefeed_id = ("cf%02d"):format(i), table_count = tables }) })
    assert(code == 201, "changefeed create: " .. tostring(code))
  end
  self:settle(changefeeds, tables)
end

-- Waits until every changefeed runs and the nodes' own state files show each maintainer
-- once and every dispatcher (tables + trigger) once.
function D:settle(changefeeds, tables, timeout)
  D.wait("placement to settle", timeout or 20, function()
    local ok, why = self:check_single_owner(changefeeds, tables)
    return ok, why
  end)
end

-- From the nodes' own reports: each maintainer cf01..cfNN runs on exactly one node, and
-- each of its dispatchers (t1..tT and the trigger) on exactly one node. Returns true or
-- false and what is wrong, plus the owners table.
function D:check_single_owner(changefeeds, tables)
  local owners = {}
  for id in pairs(self.agents) do
    local st = self:state(id)
    if not st then return false, "no state from " .. id end
    for _, t in ipairs(st.maintainers) do
      owners[t] = owners[t] or {}
      table.insert(owners[t], id)
    end
    for _, t in ipairs(st.dispatchers) do
      owners[t] = owners[t] or {}
      table.insert(owners[t], id)
    end
  end
  for i = 1, changefeeds do
    local cf = ("cf%02d"):format(i)
    local want = { cf, cf .. "/trigger" }
    for t = 1, tables do want[#want + 1] = ("%s/t%d"):format(cf, t) end
    for _, task in ipairs(want) do
      local o = owners[task]
      if not o or #o ~= 1 then
        return false, ("%s runs on %s"):format(task, o and table.concat(o, ",") or "no node"), owners
      end
    end
  end
  return true, nil, owners
end

return D
