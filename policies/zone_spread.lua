-- zone_spread.lua — spread each changefeed across zones, then least-loaded (P5).
--
-- Nodes carry a `zone` label (nodes without one form the zone ""). For every task, the
-- zone chosen is the one holding the fewest tasks of the task's changefeed planned in
-- this batch, so a changefeed's moved maintainer and dispatchers do not pile into one
-- failure domain; ties go to the zone whose best node is least loaded, then to the zone
-- seen first. Inside the zone the node is chosen as least_loaded.lua does: tasks of the
-- task's kind + inflight + planned in this batch, ties to the earlier node.
-- drain_order: maintainers first (a maintainer places its dispatchers, D6), then
-- dispatchers grouped by changefeed, so each changefeed's moves stay together.
-- Cost: O(nodes) per task; meant for clusters of tens to hundreds of nodes.

local function place(tasks, nodes, ctx)
  local out = {}
  local n = #nodes
  if n == 0 then return out end
  local limit = #tasks
  local bl = ctx and ctx.batch_limit
  if type(bl) == "number" and bl > 0 and bl < limit then limit = bl end

  local zone_of, zones, zone_index = {}, {}, {}
  for i = 1, n do
    local z = nodes[i].labels and nodes[i].labels.zone or ""
    if type(z) ~= "string" then z = "" end
    zone_of[i] = z
    if not zone_index[z] then zones[#zones + 1] = z; zone_index[z] = #zones end
  end
  local planned = {}
  for i = 1, n do planned[i] = 0 end
  local per_cf = {} -- changefeed -> zone -> tasks planned there in this batch

  local function score(i, field)
    local nd = nodes[i]
    return (nd[field] or 0) + (nd.inflight or 0) + planned[i]
  end

  for t = 1, limit do
    local task = tasks[t]
    local field = task.kind == "dispatcher" and "dispatchers" or "maintainers"
    -- best node per zone
    local best_in = {}
    for i = 1, n do
      local z = zone_of[i]
      local b = best_in[z]
      if not b or score(i, field) < score(b, field) then best_in[z] = i end
    end
    local cf = per_cf[task.changefeed]
    if not cf then cf = {}; per_cf[task.changefeed] = cf end
    local best_zone
    for _, z in ipairs(zones) do
      if not best_zone then
        best_zone = z
      else
        local a, b = cf[z] or 0, cf[best_zone] or 0
        if a < b or (a == b and score(best_in[z], field) < score(best_in[best_zone], field)) then
          best_zone = z
        end
      end
    end
    local i = best_in[best_zone]
    out[task.id] = nodes[i].id
    planned[i] = planned[i] + 1
    cf[best_zone] = (cf[best_zone] or 0) + 1
  end
  return out
end

local function drain_order(tasks, ctx)
  local order = {}
  for _, t in ipairs(tasks) do
    if t.kind ~= "dispatcher" then order[#order + 1] = t.id end
  end
  local groups, names = {}, {}
  for _, t in ipairs(tasks) do
    if t.kind == "dispatcher" then
      local g = groups[t.changefeed]
      if not g then g = {}; groups[t.changefeed] = g; names[#names + 1] = t.changefeed end
      g[#g + 1] = t.id
    end
  end
  for _, name in ipairs(names) do
    for _, id in ipairs(groups[name]) do order[#order + 1] = id end
  end
  return order
end

local function selftest()
  local nodes = {
    {id = "a1", maintainers = 0, dispatchers = 0, inflight = 0, labels = {zone = "a"}},
    {id = "a2", maintainers = 0, dispatchers = 0, inflight = 0, labels = {zone = "a"}},
    {id = "b1", maintainers = 0, dispatchers = 5, inflight = 0, labels = {zone = "b"}},
  }
  local tasks = {}
  for i = 1, 4 do
    tasks[i] = {id = "cf/t" .. i, kind = "dispatcher", changefeed = "cf", weight = 1}
  end
  local out = place(tasks, nodes, {batch_limit = 4})
  local per_zone = {a = 0, b = 0}
  for _, node in pairs(out) do per_zone[node:sub(1, 1)] = per_zone[node:sub(1, 1)] + 1 end
  if per_zone.a ~= 2 or per_zone.b ~= 2 then
    return false, "4 tasks of one changefeed over zones a and b: not 2 and 2"
  end
  if out["cf/t1"] ~= "a1" or out["cf/t3"] ~= "a2" then
    return false, "inside a zone the least-loaded node is not chosen"
  end
  local order = drain_order({
    {id = "x/1", kind = "dispatcher", changefeed = "x"},
    {id = "m", kind = "maintainer", changefeed = "m"},
    {id = "y/1", kind = "dispatcher", changefeed = "y"},
    {id = "x/2", kind = "dispatcher", changefeed = "x"},
  }, {})
  if table.concat(order, ",") ~= "m,x/1,x/2,y/1" then
    return false, "drain_order: " .. table.concat(order, ",")
  end
  return true
end

return {
  name = "zone-spread",
  place = place,
  drain_order = drain_order,
  selftest = selftest,
}
