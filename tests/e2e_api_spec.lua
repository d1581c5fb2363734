-- e2e_api_spec.lua — the daemon's HTTP API against real processes: every row of D1's
-- table, A3 auth (401), and A4 hostile input (malformed JSON, wrong types, a 2 MiB body,
-- unknown routes, wrong methods, a slow client) answered while the daemon keeps serving.
local D = require "support.daemon"
local cjson = require "cjson"

local function skip_without_curl() return D.skip_without_curl(pending) end

local function expect_error(h, method, path, status, code, opts)
  local got, body, raw = h:http(method, path, opts)
  assert.are.equal(status, got, method .. " " .. path .. ": " .. tostring(raw))
  if code then
    assert.are.equal(code, body.error_code, raw)
    assert.is_string(body.error_msg)
  end
  return body
end

local function healthy(h)
  local code, body = h:http("GET", "/api/v2/health", { token = false })
  assert.are.equal(200, code)
  assert.are.equal("ok", body.status)
end

describe("e2e API", function()
  local h
  after_each(function()
    if h then h:cleanup() end
    h = nil
  end)

  it("D1: each refusal has its own status and error_code; A3: 401 without the right token", function()
    if skip_without_curl() then return end
    h = D.new({ latency = 300, serve_flags = "--drain-batch-size 1 --coordinator-node n4" })
    h:cluster(4, 4, 2)
    -- A3
    expect_error(h, "GET", "/api/v2/captures", 401, "UNAUTHORIZED", { token = false })
    expect_error(h, "PUT", "/api/v2/captures/n1/drain", 401, "UNAUTHORIZED", { token = "wrong" })
    expect_error(h, "GET", "/api/v2/changefeeds", 401, "UNAUTHORIZED", { token = "" })
    local mcode = h:http("GET", "/metrics", { token = false })
    assert.are.equal(200, mcode)
    healthy(h)
    -- 404, 400 coordinator
    expect_error(h, "PUT", "/api/v2/captures/nX/drain", 404, "CAPTURE_NOT_FOUND")
    expect_error(h, "PUT", "/api/v2/captures/n4/drain", 400, "CANNOT_DRAIN_COORDINATOR")
    -- accepted: 202 with counts, idempotent
    local code, body = h:http("PUT", "/api/v2/captures/n1/drain")
    assert.are.equal(202, code)
    assert.is_true(body.current_maintainer_count + body.current_dispatcher_count > 0)
    code = h:http("PUT", "/api/v2/captures/n1/drain")
    assert.are.equal(202, code)
    -- another target while it runs: 409
    expect_error(h, "PUT", "/api/v2/captures/n2/drain", 409, "DRAIN_IN_PROGRESS")
    -- the plan (D12) and status (D11) answer while it runs
    local pc, plan = h:http("GET", "/api/v2/captures/n2/drain/plan")
    assert.are.equal(200, pc)
    assert.is_table(plan.moves)
    D.wait("the drain of n1 to complete", 20, function()
      local _, s = h:http("GET", "/api/v2/captures/n1/drain")
      return s.state == "completed", s.state
    end)
    -- a Stopping target: 409
    expect_error(h, "PUT", "/api/v2/captures/n1/drain", 409, "CAPTURE_STOPPING")
    expect_error(h, "DELETE", "/api/v2/captures/n1/drain", 409, "CAPTURE_STOPPING")
    -- fewer than 2 Alive nodes: stop two agents, wait for them to be declared dead
    h:kill(h.agents.n2.pid, "KILL")
    h:kill(h.agents.n3.pid, "KILL")
    D.wait("n2 and n3 to be declared dead", 15, function()
      local _, caps = h:http("GET", "/api/v2/captures")
      return caps.total == 2, caps.total
    end)
    expect_error(h, "PUT", "/api/v2/captures/n4/drain", 400, nil)
    local c2, b2 = h:http("PUT", "/api/v2/captures/n4/drain")
    assert.is_true(b2.error_code == "NOT_ENOUGH_CAPTURES" or b2.error_code == "CANNOT_DRAIN_COORDINATOR")
    assert.are.equal(400, c2)
    healthy(h)
  end)

  it("D1: an empty target answers 200 with zero counts; NOT_ENOUGH_CAPTURES with one node", function()
    if skip_without_curl() then return end
    h = D.new()
    h:serve()
    h:agent("n1")
    D.wait("n1 to join", 10, function()
      local _, caps = h:http("GET", "/api/v2/captures")
      return caps.total == 1
    end)
    expect_error(h, "PUT", "/api/v2/captures/n1/drain", 400, "NOT_ENOUGH_CAPTURES")
    h:agent("n2")
    D.wait("n2 to join", 10, function()
      local _, caps = h:http("GET", "/api/v2/captures")
      return caps.total == 2
    end)
    local code, body = h:http("PUT", "/api/v2/captures/n2/drain")
    assert.are.equal(200, code)
    assert.are.same({ 0, 0 }, { body.current_maintainer_count, body.current_dispatcher_count })
    local _, s = h:http("GET", "/api/v2/captures/n2/drain")
    assert.are.equal("completed", s.state)
  end)

  it("D4: a second coordinator on the same data directory is refused, naming the first", function()
    if skip_without_curl() then return end
    h = D.new({})
    local first = h:serve()
    local bin = os.getenv("SLUICE_BIN") or "build/sluice"
    local out = h.dir .. "/second.err"
    local ok, how, code = os.execute(("timeout 10 %s serve --listen 127.0.0.1:0 --node-listen 127.0.0.1:0 " ..
      "--data '%s' --policy-dir policies --token-file '%s' 2>'%s' </dev/null >/dev/null"):format(
      bin, h.data, h.token_file, out))
    assert.is_nil(ok)
    assert.are.equal("exit", how)
    assert.are.equal(1, code)
    assert.matches("data directory " .. h.data:gsub("%p", "%%%0") .. " is in use by another coordinator %(pid " ..
                   first .. "%)", D.read(out))
    healthy(h) -- the first one did not notice
    -- once it is gone, even by SIGKILL, the directory is free again
    h:kill(first, "KILL")
    assert.is_true(h:reap(first))
    h:serve()
    healthy(h)
  end)

  it("R3: the captures list and sluice status say what waits for a node", function()
    if skip_without_curl() then return end
    h = D.new({})
    h:serve()
    assert.are.equal(201, (h:http("POST", "/api/v2/changefeeds", { body = '{"changefeed_id":"cf01","table_count":1}' })))
    local waiting = D.wait("the changefeed to wait", 5, function()
      local _, body = h:http("GET", "/api/v2/captures")
      return body.tasks_waiting == 1 and body.waiting_reason ~= "" and body
    end)
    assert.are.equal(false, waiting.bootstrapping)
    assert.matches("no schedulable node", waiting.waiting_reason)
    local out = h:cli("status")
    assert.matches("waiting: 1 maintainers have no node: [^\n]*no schedulable node", out)
  end)

  it("D4: a restarted coordinator answers NOT_READY while it bootstraps", function()
    if skip_without_curl() then return end
    h = D.new({ serve_flags = "--bootstrap-ms 3000" })
    h:cluster(2, 2, 1)
    h:kill(h.serve_pid, "KILL")
    assert.is_true(h:reap(h.serve_pid, 5))
    h:serve()
    expect_error(h, "PUT", "/api/v2/captures/n1/drain", 503, "NOT_READY")
    local _, hb = h:http("GET", "/api/v2/health", { token = false })
    assert.are.equal(true, hb.bootstrapping)
    local out = h:cli("status")
    assert.matches("coordinator: bootstrapping after a restart", out, 1, true) -- R3: not a normal-looking table
    D.wait("bootstrap to end", 10, function()
      local _, b = h:http("GET", "/api/v2/health", { token = false })
      return b.ready
    end)
    h:settle(2, 1, 10)
  end)

  it("A2/A4: changefeeds are validated; bad input gets a JSON error and the daemon keeps serving", function()
    if skip_without_curl() then return end
    h = D.new()
    h:serve()
    -- A2 create / get / delete
    local code, cf = h:http("POST", "/api/v2/changefeeds", { body = '{"changefeed_id":"orders","table_count":3}' })
    assert.are.equal(201, code)
    assert.are.same({ "orders", 3 }, { cf.changefeed_id, cf.table_count })
    assert.is_table(cf.dispatchers_by_node)
    expect_error(h, "POST", "/api/v2/changefeeds", 409, "CHANGEFEED_EXISTS",
      { body = '{"changefeed_id":"orders","table_count":3}' })
    local gc, got = h:http("GET", "/api/v2/changefeeds/orders")
    assert.are.equal(200, gc)
    assert.are.equal("orders", got.changefeed_id)
    -- A4: malformed JSON, wrong types, missing fields
    expect_error(h, "POST", "/api/v2/changefeeds", 400, "MALFORMED_JSON", { body = '{"changefeed_id":' })
    expect_error(h, "POST", "/api/v2/changefeeds", 400, "INVALID_ARGUMENT", { body = '[1,2]' })
    expect_error(h, "POST", "/api/v2/changefeeds", 400, "INVALID_ARGUMENT",
      { body = '{"changefeed_id":7,"table_count":3}' })
    expect_error(h, "POST", "/api/v2/changefeeds", 400, "INVALID_ARGUMENT",
      { body = '{"changefeed_id":"x","table_count":"3"}' })
    expect_error(h, "POST", "/api/v2/changefeeds", 400, "INVALID_ARGUMENT",
      { body = '{"changefeed_id":"x","table_count":-1}' })
    expect_error(h, "POST", "/api/v2/changefeeds", 400, "INVALID_ARGUMENT",
      { body = '{"changefeed_id":"a b/c","table_count":1}' })
    expect_error(h, "PUT", "/api/v1/captures/drain", 400, "INVALID_ARGUMENT", { body = '{"capture_id":5}' })
    -- a body over 1 MiB: 413
    local big = h.dir .. "/big.json"
    local f = assert(io.open(big, "w"))
    f:write('{"changefeed_id":"big","table_count":1,"pad":"', string.rep("x", 2 * 1024 * 1024), '"}')
    f:close()
    local bc = h:http("POST", "/api/v2/changefeeds", { body_file = big })
    assert.are.equal(413, bc)
    -- unknown routes and wrong methods
    expect_error(h, "GET", "/api/v2/nope", 404, "NOT_FOUND")
    expect_error(h, "POST", "/api/v2/captures", 405, "METHOD_NOT_ALLOWED")
    expect_error(h, "PATCH", "/api/v2/captures/n1/drain", 405, "METHOD_NOT_ALLOWED")
    expect_error(h, "GET", "/api/v2/changefeeds/none", 404, "CHANGEFEED_NOT_FOUND")
    -- a slow client (half a request line, then silence) and a half-open one do not wedge it
    local slow = h.dir .. "/slow.sh"
    f = assert(io.open(slow, "w"))
    f:write(("exec 3<>/dev/tcp/127.0.0.1/%d; printf 'GET /api/v2/health HTTP/1.1\\r\\nHost: x\\r\\n' >&3; sleep 30\n")
      :format(h.http_port))
    f:close()
    for _ = 1, 3 do
      local p = io.popen(("env -u LD_PRELOAD bash %s >/dev/null 2>&1 & echo $!"):format(slow))
      local pid = tonumber(p:read("l"))
      p:close()
      h.procs[#h.procs + 1] = { name = "slow client", pid = pid }
    end
    D.sleep(0.3)
    for _ = 1, 5 do healthy(h) end
    local dc = h:http("DELETE", "/api/v2/changefeeds/orders")
    assert.are.equal(202, dc)
    expect_error(h, "GET", "/api/v2/changefeeds/orders", 404, "CHANGEFEED_NOT_FOUND")
    -- policies and metrics
    local pc, pol = h:http("GET", "/api/v2/policies")
    assert.are.equal(200, pc)
    assert.are.equal(1, pol.total)
    assert.is_string(pol.items[1].name)
    assert.is_number(pol.items[1].version)
    local mc, _, metrics = h:http("GET", "/metrics", { token = false })
    assert.are.equal(200, mc)
    for _, m in ipairs({ "sluice_drain_active", "sluice_drain_remaining_maintainers",
      "sluice_drain_duration_seconds", "sluice_operators_in_flight",
      "sluice_policy_refusals_total", "sluice_node_heartbeat_lag_seconds" }) do
      assert.is_truthy(metrics:find(m, 1, true), m)
    end
    assert.is_true(D.alive(h.serve_pid))
    healthy(h)
  end)
end)
