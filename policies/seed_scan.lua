-- seed_scan.lua — the TiCDC drain-capture PR's placement, kept as a benchmark baseline
-- (P5, B1). Do not use it in production.
--
-- For every single decision it rescans everything: it recounts each node's load from the
-- node counts plus a walk over every task of the batch, looking up where the ones already
-- decided go (O(tasks)), then scans all nodes for the smallest (O(nodes)). A batch
-- therefore costs O(tasks × (tasks + nodes)).
-- Like the original it ignores in-flight operators (one of the flaws the review found);
-- ties go to the earlier node. It does respect ctx.batch_limit.

local function place(tasks, nodes, ctx)
  local out = {}
  local where = {} -- task index -> node index, rescanned in full per decision
  local limit = #tasks
  local bl = ctx and ctx.batch_limit
  if type(bl) == "number" and bl > 0 and bl < limit then limit = bl end
  if #nodes == 0 then return out end
  for t = 1, limit do
    local task = tasks[t]
    local field = task.kind == "dispatcher" and "dispatchers" or "maintainers"
    local load = {}
    for i = 1, #nodes do load[i] = nodes[i][field] end
    for u = 1, #tasks do
      local i = where[u]
      if i then load[i] = load[i] + 1 end
    end
    local best = 1
    for i = 2, #nodes do
      if load[i] < load[best] then best = i end
    end
    where[t] = best
    out[task.id] = nodes[best].id
  end
  return out
end

local function selftest()
  local nodes = {}
  for i = 1, 3 do nodes[i] = {id = "n" .. i, maintainers = 0, dispatchers = 0, inflight = 0, labels = {}} end
  local tasks = {}
  for i = 1, 9 do tasks[i] = {id = "t" .. i, kind = "maintainer", changefeed = "t" .. i, weight = 1} end
  local count = {}
  for _, node in pairs(place(tasks, nodes, {batch_limit = 9})) do count[node] = (count[node] or 0) + 1 end
  for i = 1, 3 do
    if count["n" .. i] ~= 3 then return false, "9 tasks over 3 empty nodes are not 3 each" end
  end
  return true
end

return {
  name = "seed-scan",
  place = place,
  selftest = selftest,
}
