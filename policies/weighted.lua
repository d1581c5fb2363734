-- weighted.lua — dispatcher-weighted placement (P5).
--
-- Dispatchers are not equal: a table span with heavy traffic carries a larger
-- task.weight. A node's load is estimated as
--     its dispatcher count (each counted as weight 1: the core reports counts)
--   + inflight
--   + the sum of the weights of the dispatchers this call planned on it,
-- and the heaviest tasks of the batch are placed first (longest-processing-time-first
-- greedy), each on the node with the smallest load, ties to the earlier node.
-- Maintainers are placed by count: maintainers + inflight + planned. At most
-- ctx.batch_limit tasks, taken in the order given, are placed.
-- Cost: O(tasks log tasks + tasks × nodes).

local function place(tasks, nodes, ctx)
  local out = {}
  local n = #nodes
  if n == 0 then return out end
  local limit = #tasks
  local bl = ctx and ctx.batch_limit
  if type(bl) == "number" and bl > 0 and bl < limit then limit = bl end

  local batch = {}
  for t = 1, limit do batch[t] = tasks[t] end
  local function weight(task)
    local w = task.weight
    if type(w) ~= "number" or w < 1 then return 1 end
    return w
  end
  table.sort(batch, function(x, y)
    local wx, wy = weight(x), weight(y)
    if wx ~= wy then return wx > wy end
    return x.id < y.id
  end)

  local dload, mload = {}, {}
  for i = 1, n do
    local nd = nodes[i]
    dload[i] = (nd.dispatchers or 0) + (nd.inflight or 0)
    mload[i] = (nd.maintainers or 0) + (nd.inflight or 0)
  end
  for _, task in ipairs(batch) do
    local load = task.kind == "dispatcher" and dload or mload
    local best = 1
    for i = 2, n do
      if load[i] < load[best] then best = i end
    end
    out[task.id] = nodes[best].id
    local w = task.kind == "dispatcher" and weight(task) or 1
    dload[best] = dload[best] + w
    mload[best] = mload[best] + 1
  end
  return out
end

local function selftest()
  local nodes = {
    {id = "n1", maintainers = 0, dispatchers = 0, inflight = 0, labels = {}},
    {id = "n2", maintainers = 0, dispatchers = 0, inflight = 0, labels = {}},
  }
  local tasks = {
    {id = "a", kind = "dispatcher", changefeed = "cf", weight = 1},
    {id = "b", kind = "dispatcher", changefeed = "cf", weight = 1},
    {id = "c", kind = "dispatcher", changefeed = "cf", weight = 1},
    {id = "heavy", kind = "dispatcher", changefeed = "cf", weight = 3},
  }
  local out = place(tasks, nodes, {batch_limit = 4})
  -- the heavy one alone on one node, the three light ones on the other
  local other = out.heavy == "n1" and "n2" or "n1"
  if out.a ~= other or out.b ~= other or out.c ~= other then
    return false, "weights not balanced: heavy on " .. tostring(out.heavy)
  end
  local two = place(tasks, nodes, {batch_limit = 2})
  if two.c or two.heavy or not two.a or not two.b then
    return false, "batch_limit 2 not respected"
  end
  return true
end

return {
  name = "weighted",
  place = place,
  selftest = selftest,
}
