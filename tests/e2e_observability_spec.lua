-- e2e_observability_spec.lua — what an operator sees of a real coordinator (`sluice serve`)
-- and real nodes (`sluice agent`) on loopback: the Prometheus text of GET /metrics (A7)
-- read with a parser of its own and checked value by value against the API (a drain
-- followed from before its start to its completion, the policy counters across reloads,
-- a broken policy and refused decisions, each node's heartbeat lag while one is stopped
-- with SIGSTOP), and the logfmt lines on stderr (A8): every line parses, starts with ts,
-- level and msg, SLUICE_LOG picks the level, and a drain is told at info, naming the node.
local D = require "support.daemon"
local cjson = require "cjson"

local function skip_without_curl() return D.skip_without_curl(pending) end

-- ---- Prometheus text exposition (version 0.0.4) ------------------------------------------

local TYPES = { counter = true, gauge = true, histogram = true, summary = true, untyped = true }

-- Parses the exposition strictly: every sample line `name{label="value",…} value`, a TYPE
-- for every family before its first sample and at most once, no series twice, counters
-- named *_total. Errors name the line. Returns {series = {name → {{labels, value}}}, types}.
local function parse_metrics(text)
  local m = { series = {}, types = {}, help = {} }
  local seen = {}
  local n = 0
  for line in text:gmatch("([^\n]*)\n") do
    n = n + 1
    local where = ("/metrics line %d %q"):format(n, line)
    if line:sub(1, 1) == "#" then
      local kind, name, rest = line:match("^# (%u+) ([%a_:][%w_:]*) ?(.*)$")
      if kind == "TYPE" then
        assert(TYPES[rest], where .. ": unknown type")
        assert(not m.types[name], where .. ": TYPE given twice")
        assert(not m.series[name], where .. ": TYPE after the family's samples")
        m.types[name] = rest
      elseif kind == "HELP" then
        assert(not m.help[name], where .. ": HELP given twice")
        m.help[name] = rest
      end
    elseif line ~= "" then
      local name, pos = line:match("^([%a_:][%w_:]*)()")
      assert(name, where .. ": not a sample")
      local labels, keys = {}, {}
      if line:sub(pos, pos) == "{" then
        pos = pos + 1
        while line:sub(pos, pos) ~= "}" do
          local k, i = line:match('^([%a_][%w_]*)="()', pos)
          assert(k, where .. ": bad label at column " .. pos)
          local buf = {}
          while true do
            local c = line:sub(i, i)
            assert(c ~= "", where .. ": unterminated label value")
            if c == '"' then break end
            if c == "\\" then
              local e = line:sub(i + 1, i + 1)
              assert(e == "\\" or e == '"' or e == "n", where .. ": bad escape")
              buf[#buf + 1] = e == "n" and "\n" or e
              i = i + 2
            else
              buf[#buf + 1] = c
              i = i + 1
            end
          end
          assert(labels[k] == nil, where .. ": label " .. k .. " twice")
          labels[k] = table.concat(buf)
          keys[#keys + 1] = k
          pos = i + 1
          if line:sub(pos, pos) == "," then pos = pos + 1 end
        end
        pos = pos + 1
      end
      local raw = line:match("^ (%S+) ?%-?%d*$", pos)
      assert(raw, where .. ": no value")
      local value = tonumber(raw) or ({ ["+Inf"] = math.huge, ["-Inf"] = -math.huge })[raw]
      if raw == "NaN" then value = 0 / 0 end
      assert(value, where .. ": value is not a number")
      assert(m.types[name], where .. ": sample without a TYPE")
      if m.types[name] == "counter" then
        assert(name:match("_total$"), where .. ": a counter not named *_total")
        assert(value >= 0, where .. ": a negative counter")
      end
      table.sort(keys)
      local id = { name }
      for _, k in ipairs(keys) do id[#id + 1] = k .. "=" .. labels[k] end
      id = table.concat(id, "\0")
      assert(not seen[id], where .. ": the same series twice")
      seen[id] = true
      m.series[name] = m.series[name] or {}
      table.insert(m.series[name], { labels = labels, value = value })
    end
  end
  return m
end

-- The value of the one series of `name` whose labels are exactly `labels` (nil: none).
local function metric(m, name, labels)
  labels = labels or {}
  for _, s in ipairs(m.series[name] or {}) do
    local same = true
    for k, v in pairs(labels) do same = same and s.labels[k] == v end
    for k in pairs(s.labels) do same = same and labels[k] ~= nil end
    if same then return s.value end
  end
  return nil
end

-- Like metric(), but the series must be there.
local function must(m, name, labels)
  local v = metric(m, name, labels)
  assert(v ~= nil, ("no series %s %s in /metrics"):format(name, cjson.encode(labels or {})))
  return v
end

local function scrape(h)
  local code, _, raw = h:http("GET", "/metrics", { token = false })
  assert.are.equal(200, code)
  assert.are.equal("\n", raw:sub(-1), "/metrics does not end with a newline")
  return parse_metrics(raw)
end

local STATES = { "none", "draining", "completed", "cancelled", "lost" }

-- A7: exactly one drain state is 1 for node `id`, and it is `want`.
local function assert_drain_state(m, id, want)
  local ones = {}
  for _, st in ipairs(STATES) do
    local v = must(m, "sluice_drain_state", { capture = id, state = st })
    assert.is_true(v == 0 or v == 1, ("sluice_drain_state %s %s = %s"):format(id, st, v))
    if v == 1 then ones[#ones + 1] = st end
  end
  assert.are.same({ want }, ones, "drain state of " .. id)
end

-- ---- logfmt (A8) ---------------------------------------------------------------------

local LEVELS = { debug = 0, info = 1, warn = 2, error = 3 }

-- One logfmt line: key=value pairs separated by one space; a value is bare (no space,
-- control character, quote, '=' or backslash, never empty) or quoted with \" \\ \n \xNN
-- escapes. Returns the fields (by key, and keys in order) or nil and why.
local function parse_logfmt(line)
  local f, pos = {}, 1
  while true do
    local k, p = line:match("^([%a_][%w_%.%-]*)=()", pos)
    if not k then return nil, "no key=value at column " .. pos end
    local v
    if line:sub(p, p) == '"' then
      local buf, i = {}, p + 1
      while true do
        local c = line:sub(i, i)
        if c == "" then return nil, "unterminated quoted value of " .. k end
        if c == '"' then break end
        if c == "\\" then
          local e = line:sub(i + 1, i + 1)
          local hex = line:match("^x(%x%x)", i + 1)
          if e == '"' or e == "\\" then
            buf[#buf + 1] = e
            i = i + 2
          elseif e == "n" then
            buf[#buf + 1] = "\n"
            i = i + 2
          elseif hex then
            buf[#buf + 1] = string.char(tonumber(hex, 16))
            i = i + 4
          else
            return nil, "bad escape in " .. k
          end
        elseif c:match("%c") then
          return nil, "raw control character in " .. k
        else
          buf[#buf + 1] = c
          i = i + 1
        end
      end
      v, pos = table.concat(buf), i + 1
    else
      local bare, p2 = line:match('^([^%s%c"=\\]+)()', p)
      if not bare then return nil, "empty or bad bare value of " .. k end
      v, pos = bare, p2
    end
    if f[k] ~= nil then return nil, "key " .. k .. " twice" end
    f[k] = v
    f[#f + 1] = k
    if pos > #line then return f end
    if line:sub(pos, pos) ~= " " or pos == #line then return nil, "no single space after " .. k end
    pos = pos + 1
  end
end

-- Every line of a process's stderr: logfmt that starts ts= (UTC, milliseconds) level=
-- (debug|info|warn|error) msg= (not empty). `running`: the process may be writing, so an
-- unfinished last line is left for later. Returns the parsed lines.
local function log_lines(text, what, running)
  assert.is_true(#text > 0, what .. " wrote nothing")
  local out, n = {}, 0
  local body = text
  if text:sub(-1) ~= "\n" then
    assert.is_true(running, what .. ": the last line has no newline")
    body = text:match("^(.*\n)") or ""
  end
  for line in body:gmatch("([^\n]*)\n") do
    n = n + 1
    local where = ("%s line %d: %s"):format(what, n, line)
    local f, why = parse_logfmt(line)
    assert(f, where .. " -- not logfmt: " .. tostring(why))
    assert.are.same({ "ts", "level", "msg" }, { f[1], f[2], f[3] }, where)
    assert.truthy(f.ts:match("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%dZ$"), where .. " -- ts")
    assert.truthy(LEVELS[f.level], where .. " -- level")
    assert.is_true(#f.msg > 0, where .. " -- empty msg")
    f.line = line
    out[#out + 1] = f
  end
  return out
end

local function serve_lines(h, running)
  return log_lines(D.read(h.serve_log) or "", "sluice serve stderr", running)
end

local function agent_lines(h, id)
  return log_lines(h:log_of(id), "agent " .. id, true)
end

-- The lines whose fields include every pair of `want`.
local function grep(lines, want)
  local out = {}
  for _, f in ipairs(lines) do
    local ok = true
    for k, v in pairs(want) do ok = ok and f[k] == v end
    if ok then out[#out + 1] = f end
  end
  return out
end

local function count_levels(lines)
  local c = { debug = 0, info = 0, warn = 0, error = 0 }
  for _, f in ipairs(lines) do c[f.level] = c[f.level] + 1 end
  return c
end

-- ---- the API ------------------------------------------------------------------------

local function drain_status(h, id)
  local code, body = h:http("GET", "/api/v2/captures/" .. id .. "/drain")
  assert.are.equal(200, code)
  return body
end

local function policy_info(h)
  local code, body = h:http("GET", "/api/v2/policies")
  assert.are.equal(200, code)
  return body.items[1]
end

-- Waits until the coordinator's own view holds `cf` maintainers and every dispatcher
-- (tables + trigger), as the maintainers reported them: a drain's initial counts are
-- then the whole of the node's work.
local function settle_view(h, cf, tables)
  D.wait("the coordinator to hear of every dispatcher", 15, function()
    local _, body = h:http("GET", "/api/v2/captures")
    local m, d = 0, 0
    for _, c in ipairs(body.items or {}) do
      m = m + c.maintainer_count
      d = d + c.dispatcher_count
    end
    return m == cf and d == cf * (tables + 1), ("%d maintainers, %d dispatchers"):format(m, d)
  end)
end

-- An editor's save: a temporary file renamed over the live one.
local function save(dir, src)
  local tmp = dir .. "/.least_loaded.lua.swp"
  local f = assert(io.open(tmp, "w"))
  f:write(src)
  f:close()
  assert(os.rename(tmp, dir .. "/least_loaded.lua"))
end

-- A harness whose coordinator reads its policy from a directory of its own.
local function with_policy_dir(opts)
  local h = D.new(opts)
  h.policy_dir = h.dir .. "/policies"
  assert(os.execute(("mkdir -p '%s' && cp policies/*.lua '%s'"):format(h.policy_dir, h.policy_dir)))
  return h
end

local BROKEN = "return {\n  name = 'broken',\n  place = function(tasks nodes) end,\n}\n"

-- Names a node that is not there for every task: each decision is refused (P3) and the
-- built-in policy places the task.
local TO_NOWHERE = [[
return {
  name = "to-nowhere",
  place = function(tasks, nodes, ctx)
    local out = {}
    for _, t in ipairs(tasks) do out[t.id] = "n9" end
    return out
  end,
  selftest = function() return true end,
}
]]

-- ---- the specs -------------------------------------------------------------------------

describe("e2e observability: a drain seen through /metrics and the logs", function()
  local CF, TABLES, BATCH = 6, 3, 1
  local h, before, n1_epoch
  local ready, not_ready = false, "the cluster did not start"

  setup(function()
    if not D.have_curl() then return end
    -- slow tasks and one move at a time: the drain lasts a couple of seconds
    h = D.new({ latency = 300, serve_flags = "--drain-batch-size " .. BATCH })
    local ok, err = pcall(function()
      h:cluster(3, CF, TABLES)
      settle_view(h, CF, TABLES)
    end)
    ready, not_ready = ok, "the cluster did not start: " .. tostring(err)
  end)

  teardown(function()
    if h then h:cleanup() end
  end)

  it("A7: before a drain nothing drains; every node's state is none; the gauges match the API", function()
    if skip_without_curl() then return end
    assert(ready, not_ready)
    -- Prometheus text, version 0.0.4, without the token
    local p = io.popen(("env -u LD_PRELOAD curl -s -m 10 -o /dev/null -D - %s/metrics"):format(h.base))
    local headers = p:read("a")
    p:close()
    assert.truthy(headers:match("^HTTP/1%.%d 200"), headers)
    assert.truthy(headers:lower():match("\ncontent%-type: text/plain; version=0%.0%.4"), headers)
    local m = scrape(h)
    assert.is_true(must(m, "sluice_http_connections") >= 1)
    assert.are.equal(0, must(m, "sluice_drain_active"))
    for _, id in ipairs({ "n1", "n2", "n3" }) do assert_drain_state(m, id, "none") end
    assert.are.equal(0, must(m, "sluice_drain_remaining_maintainers"))
    assert.are.equal(0, must(m, "sluice_drain_remaining_dispatchers"))
    assert.are.equal(0, must(m, "sluice_drain_duration_seconds"))
    assert.are.equal(0, must(m, "sluice_operators_in_flight"))
    assert.are.equal(0, must(m, "sluice_drain_operators_in_flight"))
    assert.are.equal(drain_status(h, "n1").epoch, must(m, "sluice_drain_epoch"))
    assert.are.equal(3, must(m, "sluice_nodes", { liveness = "alive" }))
    assert.are.equal(0, must(m, "sluice_nodes", { liveness = "draining" }))
    assert.are.equal(0, must(m, "sluice_nodes", { liveness = "stopping" }))
    assert.are.equal(CF, must(m, "sluice_changefeeds"))
    assert.are.equal(0, must(m, "sluice_bootstrapping"))
    -- every changefeed was added by an operator that finished
    local started = must(m, "sluice_operators_started_total")
    assert.is_true(started >= CF, "operators started " .. started)
    assert.are.equal(started, must(m, "sluice_operators_finished_total") + must(m, "sluice_operators_abandoned_total"))
    before = m
  end)

  it("A7: during a drain the drain gauges are set, agree with GET …/drain, and the duration grows; after it, completed", function()
    if skip_without_curl() then return end
    assert(ready, not_ready)
    assert(before, "the test before this one did not run")
    local code, started = h:http("PUT", "/api/v2/captures/n1/drain")
    assert.are.equal(202, code)
    assert.is_true(started.current_maintainer_count > 0, "n1 holds no maintainer")
    local draining, agreed, saw_ops, saw_lower = 0, 0, 0, false
    local first_duration, last_duration
    local last_s
    D.wait("the drain to complete", 40, function()
      local t0 = D.now()
      local s1 = drain_status(h, "n1")
      local m = scrape(h)
      local s2 = drain_status(h, "n1")
      local t1 = D.now()
      last_s = s2
      if s1.state ~= "draining" or s2.state ~= "draining" then
        assert.is_true(s2.state == "completed", "drain state " .. tostring(s2.state))
        return s2.state == "completed" and s1.state == "completed", s2.state
      end
      draining = draining + 1
      local where = " (sample " .. draining .. ")"
      assert.are.equal(1, must(m, "sluice_drain_active"), "drain_active" .. where)
      assert_drain_state(m, "n1", "draining")
      assert_drain_state(m, "n2", "none")
      assert_drain_state(m, "n3", "none")
      assert.are.equal(s2.epoch, must(m, "sluice_drain_epoch"), "epoch" .. where)
      assert.are.equal(1, must(m, "sluice_nodes", { liveness = "draining" }), where)
      -- D8 through the metrics: never a false zero while it runs
      local rm = must(m, "sluice_drain_remaining_maintainers")
      local rd = must(m, "sluice_drain_remaining_dispatchers")
      assert.is_true(rm + rd > 0, "remaining 0 while draining" .. where)
      assert.is_true(rm <= started.current_maintainer_count, "remaining maintainers " .. rm .. where)
      if s1.remaining_maintainer_count == s2.remaining_maintainer_count
        and s1.remaining_dispatcher_count == s2.remaining_dispatcher_count then
        -- nothing moved between the two reads: the scrape in between saw the same
        assert.are.equal(s2.remaining_maintainer_count, rm, "remaining maintainers" .. where)
        assert.are.equal(s2.remaining_dispatcher_count, rd, "remaining dispatchers" .. where)
        assert.is_true(math.abs(s2.progress - must(m, "sluice_drain_progress")) < 0.001, "progress" .. where)
        agreed = agreed + 1
      end
      if rm < started.current_maintainer_count then saw_lower = true end
      -- O3: drain operators never above the batch size
      local ops = must(m, "sluice_operators_in_flight")
      local dops = must(m, "sluice_drain_operators_in_flight")
      assert.is_true(dops <= BATCH, ("drain operators in flight %d > batch %d"):format(dops, BATCH) .. where)
      assert.is_true(ops >= dops, ("operators in flight %d < drain operators %d"):format(ops, dops) .. where)
      if dops > 0 then saw_ops = saw_ops + 1 end
      -- the duration is in seconds since the drain started (the coordinator's wall clock)
      local d = must(m, "sluice_drain_duration_seconds")
      assert.is_true(d > 0, "drain duration " .. d .. where)
      local since = s2.started_at_ms / 1000
      assert.is_true(d >= t0 - since - 1 and d <= t1 - since + 1,
        ("duration %.3f s, but the drain started %.3f..%.3f s before"):format(d, t0 - since, t1 - since) .. where)
      if last_duration then assert.is_true(d >= last_duration, ("duration went back: %.3f after %.3f"):format(d, last_duration)) end
      first_duration = first_duration or d
      last_duration = d
      return false, s2.state
    end)
    assert.is_true(draining >= 2, "only " .. draining .. " scrapes during the drain")
    assert.is_true(last_duration > first_duration, ("duration did not grow: %.3f then %.3f"):format(first_duration, last_duration))
    assert.is_true(agreed >= 1, "no scrape between two equal GET …/drain answers")
    assert.is_true(saw_ops > 0, "never saw a drain operator in flight")
    assert.is_true(saw_lower, "never saw a maintainer leave n1")
    -- completed
    local m = D.wait("no operator in flight", 10, function()
      local m = scrape(h)
      return must(m, "sluice_operators_in_flight") == 0 and m
    end)
    assert.are.equal(0, must(m, "sluice_drain_active"))
    assert_drain_state(m, "n1", "completed")
    assert_drain_state(m, "n2", "none")
    assert_drain_state(m, "n3", "none")
    assert.are.equal(0, must(m, "sluice_drain_remaining_maintainers"))
    assert.are.equal(0, must(m, "sluice_drain_remaining_dispatchers"))
    assert.are.equal(0, must(m, "sluice_drain_duration_seconds"))
    assert.are.equal(0, must(m, "sluice_drain_operators_in_flight"))
    assert.are.equal(last_s.epoch, must(m, "sluice_drain_epoch"))
    n1_epoch = last_s.epoch
    assert.is_true(must(m, "sluice_drain_epoch") > must(before, "sluice_drain_epoch"))
    local live = h:liveness_map()
    assert.are.equal("stopping", live.n1)
    assert.are.equal(2, must(m, "sluice_nodes", { liveness = "alive" }))
    assert.are.equal(1, must(m, "sluice_nodes", { liveness = "stopping" }))
    assert.are.equal(0, must(m, "sluice_nodes", { liveness = "draining" }))
    -- each of n1's maintainers moved by one operator; all of them ended
    local started_ops = must(m, "sluice_operators_started_total")
    assert.is_true(started_ops - must(before, "sluice_operators_started_total") >= started.current_maintainer_count,
      "operators started during the drain: " .. (started_ops - must(before, "sluice_operators_started_total")))
    assert.are.equal(started_ops, must(m, "sluice_operators_finished_total") + must(m, "sluice_operators_abandoned_total"))
    assert.is_true(must(m, "sluice_scheduling_rounds_total") > must(before, "sluice_scheduling_rounds_total"))
    h:settle(CF, TABLES, 10)
  end)

  it("A7: a cancelled drain reads cancelled and the completed one stays completed", function()
    if skip_without_curl() then return end
    assert(ready, not_ready)
    assert(n1_epoch, "the drain of n1 did not complete in the test before this one")
    assert.are.equal(202, (h:http("PUT", "/api/v2/captures/n2/drain")))
    local m = scrape(h)
    assert.are.equal(1, must(m, "sluice_drain_active"))
    assert_drain_state(m, "n2", "draining")
    assert_drain_state(m, "n1", "completed")
    assert.are.equal(200, (h:http("DELETE", "/api/v2/captures/n2/drain")))
    m = scrape(h)
    assert.are.equal(0, must(m, "sluice_drain_active"))
    assert_drain_state(m, "n1", "completed")
    assert_drain_state(m, "n2", "cancelled")
    assert_drain_state(m, "n3", "none")
    assert.are.equal(drain_status(h, "n2").epoch, must(m, "sluice_drain_epoch"))
    assert.are.equal(0, must(m, "sluice_drain_remaining_maintainers"))
    assert.are.equal(0, must(m, "sluice_drain_remaining_dispatchers"))
    assert.are.equal(0, must(m, "sluice_drain_duration_seconds"))
    assert.are.equal(2, must(m, "sluice_nodes", { liveness = "alive" }))
    -- moves already running finish (D3); then nothing is in flight
    D.wait("no operator in flight", 10, function()
      return must(scrape(h), "sluice_operators_in_flight") == 0
    end)
    h:settle(CF, TABLES, 10)
  end)

  it("A8: the drain's start and end are info lines of the coordinator naming the node; the nodes log the notice", function()
    if skip_without_curl() then return end
    assert(ready, not_ready)
    local lines = serve_lines(h, true)
    local st = grep(lines, { msg = "drain started", target = "n1" })
    local en = grep(lines, { msg = "drain ended", target = "n1" })
    assert.are.equal(1, #st, "lines saying the drain of n1 started")
    assert.are.equal(1, #en, "lines saying the drain of n1 ended")
    assert.are.equal("info", st[1].level)
    assert.are.equal("info", en[1].level)
    assert.are.equal("completed", en[1].state)
    assert.is_true(st[1].ts <= en[1].ts, st[1].ts .. " then " .. en[1].ts)
    assert.are.equal("1", st[1].epoch)
    assert(n1_epoch, "the drain test before this one did not finish")
    assert.are.equal(("%d"):format(n1_epoch), en[1].epoch)
    -- the node drained was told, at info, and says so with its own id
    local n1 = agent_lines(h, "n1")
    local notice = grep(n1, { msg = "drain notice", target = "n1" })
    assert.is_true(#notice >= 1, "n1 logged no drain notice")
    assert.are.equal("info", notice[1].level)
    assert.are.equal("n1", notice[1].node)
    assert.are.equal(1, #grep(n1, { msg = "liveness changed", liveness = "draining", level = "info" }))
    assert.are.equal(1, #grep(n1, { msg = "liveness changed", liveness = "stopping", level = "info" }))
    assert.is_true(#grep(agent_lines(h, "n2"), { msg = "drain notice", target = "n1", level = "info" }) >= 1)
    -- the cancelled drain of n2 is told the same way, with its state
    local n2st = grep(lines, { msg = "drain started", target = "n2", level = "info" })
    local n2en = grep(lines, { msg = "drain ended", target = "n2", level = "info" })
    assert.are.same({ 1, 1 }, { #n2st, #n2en }, "lines about the drain of n2")
    assert.are.equal("cancelled", n2en[1].state)
  end)

  it("A8: every line the coordinator and the agents wrote is logfmt with ts, level, msg; the default level has no debug", function()
    if skip_without_curl() then return end
    assert(ready, not_ready)
    -- the coordinator stops first, so its whole stderr, shutdown included, is read
    h:kill(h.serve_pid, "TERM")
    assert.is_true(h:reap(h.serve_pid, 10), "sluice serve did not exit on SIGTERM")
    local lines = serve_lines(h, false)
    assert.is_true(#lines >= 5, #lines .. " lines")
    for _, f in ipairs(lines) do assert.are.equal("coordinator", f.proc, f.line) end
    assert.are.equal(0, count_levels(lines).debug)
    assert.are.equal(1, #grep(lines, { msg = "coordinator listening", level = "info" }))
    assert.are.equal(1, #grep(lines, { msg = "coordinator stopping", level = "info" }))
    for _, id in ipairs({ "n1", "n2", "n3" }) do
      local al = agent_lines(h, id)
      assert.is_true(#al >= 2, id .. ": " .. #al .. " lines")
      for _, f in ipairs(al) do
        assert.are.equal("agent", f.proc, f.line)
        assert.are.equal(id, f.node, f.line)
      end
      assert.are.equal(0, count_levels(al).debug, id)
      assert.are.equal(1, #grep(al, { msg = "node starting", level = "info" }), id)
    end
  end)
end)

describe("e2e observability: policy counters", function()
  local h
  after_each(function()
    if h then h:cleanup() end
    h = nil
  end)

  it("A7/A8: reloads, reload errors, version and refusals in /metrics match the API; a failed reload is an error line", function()
    if skip_without_curl() then return end
    h = with_policy_dir()
    h:serve("--policy-dir " .. h.policy_dir)
    h:agent("n1")
    h:agent("n2")
    D.wait("agents to join", 10, function()
      local _, body = h:http("GET", "/api/v2/captures")
      return type(body) == "table" and body.total == 2
    end)
    D.wait("the policy directory watched", 5, function() return policy_info(h).watching == true end)
    local function counters()
      local m = scrape(h)
      return {
        reloads = must(m, "sluice_policy_reloads_total"),
        errors = must(m, "sluice_policy_reload_errors_total"),
        version = must(m, "sluice_policy_version"),
        refusals = must(m, "sluice_policy_refusals_total"),
        fallbacks = must(m, "sluice_policy_fallbacks_total"),
      }
    end
    local function agrees(c)
      local i = policy_info(h)
      assert.are.same({ c.reloads, c.errors, c.version },
        { i.reloads, i.reload_errors, i.version }, "metrics against GET /api/v2/policies")
    end
    -- the first load counts as one
    local c0 = counters()
    assert.are.same({ 1, 0, 1 }, { c0.reloads, c0.errors, c0.version })
    agrees(c0)
    -- an operator's reload of the same file: one more reload, a new version
    local code = h:http("POST", "/api/v2/policies/reload")
    assert.are.equal(200, code)
    local c1 = counters()
    assert.are.same({ c0.reloads + 1, c0.errors, c0.version + 1 }, { c1.reloads, c1.errors, c1.version })
    agrees(c1)
    -- a broken save: the watch tries it once and fails; the old policy stays
    save(h.policy_dir, BROKEN)
    local c2 = D.wait("the broken save to be counted", 10, function()
      local c = counters()
      return c.errors > c1.errors and c, c.errors
    end)
    assert.are.same({ c1.reloads, c1.errors + 1, c1.version }, { c2.reloads, c2.errors, c2.version })
    agrees(c2)
    -- and the operator's reload of it fails too: one more error, nothing else
    local rc, err = h:http("POST", "/api/v2/policies/reload")
    assert.are.equal(422, rc)
    assert.are.equal("POLICY_ERROR", err.error_code)
    local c3 = counters()
    assert.are.same({ c2.reloads, c2.errors + 1, c2.version }, { c3.reloads, c3.errors, c3.version })
    agrees(c3)
    -- A8: each failure is one error line with the file, the trigger and file:line
    local lines = serve_lines(h, true)
    local failed = grep(lines, { msg = "policy reload failed" })
    assert.are.equal(2, #failed, "policy reload failed lines")
    for _, f in ipairs(failed) do
      assert.are.equal("error", f.level, f.line)
      assert.are.equal(h.policy_dir .. "/least_loaded.lua", f.file, f.line)
      assert.truthy(f.error:match("least_loaded%.lua:3:"), f.line)
      assert.truthy(f.error:match("using previous policy"), f.line)
    end
    assert.are.same({ "watch", "api" }, { failed[1].trigger, failed[2].trigger })
    local loaded = grep(lines, { msg = "policy loaded", level = "info" })
    assert.are.same({ "start", "api" }, { loaded[1] and loaded[1].trigger, loaded[2] and loaded[2].trigger })
    -- a policy that names a node that is not there: a new changefeed's maintainer is
    -- refused (P3) and placed by the built-in policy; the counters say so
    save(h.policy_dir, TO_NOWHERE)
    local c4 = D.wait("the new policy to go live", 10, function()
      local c = counters()
      return c.version > c3.version and c, c.version
    end)
    assert.are.same({ c3.reloads + 1, c3.errors, c3.refusals }, { c4.reloads, c4.errors, c4.refusals })
    agrees(c4)
    assert.are.equal("to-nowhere", policy_info(h).name)
    assert.are.equal(201, (h:http("POST", "/api/v2/changefeeds", { body = '{"changefeed_id":"cf01","table_count":1}' })))
    D.wait("cf01 to run", 15, function()
      local _, cf = h:http("GET", "/api/v2/changefeeds/cf01")
      return type(cf) == "table" and cf.state == "working", type(cf) == "table" and cf.state
    end)
    local c5 = D.wait("the refusal to be counted", 10, function()
      local c = counters()
      return c.refusals > c4.refusals and c
    end)
    assert.is_true(c5.fallbacks > c4.fallbacks, "fallbacks " .. c4.fallbacks .. " -> " .. c5.fallbacks)
    local i = policy_info(h)
    local m = scrape(h)
    local i2 = policy_info(h)
    assert.is_number(i.refusals)
    if i.refusals == i2.refusals then assert.are.equal(i.refusals, must(m, "sluice_policy_refusals_total")) end
    assert.is_true(#i2.recent_refusals >= 1)
    assert.truthy(i2.recent_refusals[#i2.recent_refusals]:match('"n9"'), i2.recent_refusals[#i2.recent_refusals])
    -- A8/P3: the log says so too, as a warning naming the latest reason
    local said = D.wait("the refusals to be logged", 10, function()
      local l = grep(serve_lines(h, true), { msg = "policy decisions refused; the built-in policy decided them (P3)" })
      return #l > 0 and l
    end)
    assert.are.equal("warn", said[1].level)
    assert.truthy(said[1].latest:match('"n9"'), said[1].latest)
    assert.is_true(tonumber(said[1].count) >= 1)
  end)
end)

describe("e2e observability: heartbeat lag", function()
  local h
  after_each(function()
    if h then
      for _, a in pairs(h.agents) do h:kill(a.pid, "CONT") end
      h:cleanup()
    end
    h = nil
  end)

  it("A7: each node's heartbeat lag is a small gauge; a stopped node's lag grows, and falls once it runs again", function()
    if skip_without_curl() then return end
    h = D.new()
    -- heartbeats every 200 ms; a node is not given up for 15 s
    h:serve("--node-timeout-ms 15000")
    for _, id in ipairs({ "n1", "n2", "n3" }) do h:agent(id, nil, "--heartbeat-ms 200") end
    local function lags()
      local m = scrape(h)
      local out, n = {}, 0
      for _, s in ipairs(m.series.sluice_node_heartbeat_lag_seconds or {}) do
        out[s.labels.capture] = s.value
        n = n + 1
      end
      return out, n, m
    end
    D.wait("three nodes heard from lately", 10, function()
      local l, n = lags()
      return n == 3 and l.n1 < 1 and l.n2 < 1 and l.n3 < 1, cjson.encode(l)
    end)
    local l, n = lags()
    assert.are.equal(3, n)
    for id, v in pairs(l) do assert.is_true(v >= 0, id .. " lag " .. v) end
    h:kill(h.agents.n3.pid, "STOP")
    local a = D.wait("n3's lag to pass 1 s while n1 and n2 keep beating", 10, function()
      local x = lags()
      return x.n3 and x.n3 >= 1 and x.n1 < x.n3 and x.n2 < x.n3 and x.n3, cjson.encode(x)
    end)
    D.sleep(0.3)
    local b = lags()
    assert.is_true(b.n3 > a, ("n3's lag did not grow: %.3f then %.3f"):format(a, b.n3))
    assert.are.equal("alive", h:liveness_map().n3)
    h:kill(h.agents.n3.pid, "CONT")
    D.wait("n3's lag to fall back", 10, function()
      local x = lags()
      return x.n3 and x.n3 < 1, cjson.encode(x)
    end)
    assert.are.equal("alive", h:liveness_map().n3)
  end)
end)

describe("e2e observability: SLUICE_LOG picks the level", function()
  local h
  after_each(function()
    if h then h:cleanup() end
    h = nil
  end)

  -- serve, two agents and one changefeed; the nodes' liveness as the coordinator sees it
  local function small_cluster()
    h:serve("--policy-dir " .. h.policy_dir)
    h:agent("n1")
    h:agent("n2")
    D.wait("agents to join", 10, function()
      local _, body = h:http("GET", "/api/v2/captures")
      return type(body) == "table" and body.total == 2
    end)
    assert.are.equal(201, (h:http("POST", "/api/v2/changefeeds", { body = '{"changefeed_id":"cf01","table_count":2}' })))
    h:settle(1, 2)
  end

  it("A8: SLUICE_LOG=warn drops info lines and keeps warn and error lines", function()
    if skip_without_curl() then return end
    h = with_policy_dir({ env = { SLUICE_LOG = "warn" } })
    -- a token file others can read is worth a warning, from every process
    assert(os.execute("chmod 644 '" .. h.token_file .. "'"))
    small_cluster()
    -- things that are logged at info happen: a drain of n1, to completion
    assert.are.equal(202, (h:http("PUT", "/api/v2/captures/n1/drain")))
    D.wait("the drain of n1 to complete", 20, function()
      return drain_status(h, "n1").state == "completed"
    end)
    -- and one that is an error: a broken policy reloaded
    save(h.policy_dir, BROKEN)
    assert.are.equal(422, (h:http("POST", "/api/v2/policies/reload")))
    local lines = D.wait("the error line", 5, function()
      local l = serve_lines(h, true)
      return #grep(l, { msg = "policy reload failed" }) > 0 and l
    end)
    local c = count_levels(lines)
    assert.are.same({ 0, 0 }, { c.debug, c.info }, "debug and info lines of the coordinator at warn")
    assert.is_true(c.warn >= 1, "no warn line from the coordinator")
    assert.is_true(c.error >= 1, "no error line from the coordinator")
    assert.are.equal(1, #grep(lines, { msg = "token file is readable by others", level = "warn" }))
    for _, id in ipairs({ "n1", "n2" }) do
      local al = agent_lines(h, id)
      local ac = count_levels(al)
      assert.are.same({ 0, 0 }, { ac.debug, ac.info }, "debug and info lines of " .. id .. " at warn")
      assert.are.equal(1, #grep(al, { msg = "token file is readable by others", level = "warn" }), id)
    end
  end)

  it("A8: SLUICE_LOG=debug adds debug lines, logfmt too, naming node, task and operator", function()
    if skip_without_curl() then return end
    h = with_policy_dir({ env = { SLUICE_LOG = "debug" } })
    small_cluster()
    local lines = serve_lines(h, true)
    local c = count_levels(lines)
    assert.is_true(c.debug >= 1 and c.info >= 1, cjson.encode(c))
    -- one start per task: the maintainer, then (from the maintainer) its dispatchers
    local sent = grep(lines, { msg = "start sent", level = "debug", task = "cf01" })
    assert.are.equal(1, #sent, "start sent lines for cf01")
    assert.truthy(sent[1].node == "n1" or sent[1].node == "n2", sent[1].line)
    assert.truthy(sent[1].op:match("^%d+$"), sent[1].line)
    -- each node says at debug which task it started, for every task it runs
    local ran = 0
    for _, id in ipairs({ "n1", "n2" }) do
      local st = h:state(id)
      for _, kind in ipairs({ "maintainers", "dispatchers" }) do
        for _, task in ipairs(st[kind]) do
          ran = ran + 1
          D.wait(id .. " to log 'task started' for " .. task, 5, function()
            return #grep(agent_lines(h, id), { msg = "task started", level = "debug", task = task }) >= 1
          end)
        end
      end
      for _, f in ipairs(agent_lines(h, id)) do assert.are.equal(id, f.node, f.line) end
    end
    assert.are.equal(4, ran, "cf01, its trigger and two tables")
  end)
end)
