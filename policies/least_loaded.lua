-- least_loaded.lua — the default placement policy (P5), in-flight-aware.
--
-- Every task goes to the node with the smallest score
--     tasks of the task's kind on the node (maintainers or dispatchers)
--   + inflight (operators already on their way to the node)
--   + tasks this call has already planned on the node (either kind),
-- ties going to the earlier node in the array: the same rule as the built-in C policy,
-- so the two agree decision for decision. At most ctx.batch_limit tasks are placed
-- (0 or absent: no limit); the rest wait for a later batch.
--
-- Speed (B1: 100,000 tasks over 1,000 nodes): a batch of one kind is "water-filled":
-- nodes sorted once by (score, index), then served level by level in index order, which
-- is exactly the order a min-heap would produce, in O(tasks + nodes log nodes). A batch
-- mixing both kinds uses one binary heap per kind, O(log nodes) per task.
--
-- The rule reads only each task's kind, so the host calls `place_columns` with the kind
-- column alone (`columns = {"kind"}`) and takes the answer by position: no table per task
-- and no id strings, which is what makes a 100,000-task plan cheap. `place` (P1) runs the
-- very same plan over the task tables.

local function limit_of(n, ctx)
  local limit = n
  local bl = ctx and ctx.batch_limit
  if type(bl) == "number" and bl > 0 and bl < limit then limit = bl end
  return limit
end

local function base_scores(nodes, kind)
  local field = kind == "dispatcher" and "dispatchers" or "maintainers"
  local score = {}
  for i = 1, #nodes do
    local nd = nodes[i]
    score[i] = (nd[field] or 0) + (nd.inflight or 0)
  end
  return score
end

-- One kind only: serve the lowest level of nodes in index order, then merge in the nodes
-- whose own score is the next level, and so on.
local function water_fill(nodes, limit, kind, dest)
  local n = #nodes
  local ids = {}
  for i = 1, n do ids[i] = nodes[i].id end
  local score = base_scores(nodes, kind)
  local order = {}
  for i = 1, n do order[i] = i end
  table.sort(order, function(a, b)
    local sa, sb = score[a], score[b]
    if sa ~= sb then return sa < sb end
    return a < b
  end)
  local level = score[order[1]]
  local cur, ncur, pos = {}, 0, 1
  while pos <= n and score[order[pos]] == level do
    ncur = ncur + 1; cur[ncur] = order[pos]; pos = pos + 1
  end
  local k = 1
  for t = 1, limit do
    if k > ncur then
      level = level + 1
      if pos <= n and score[order[pos]] == level then
        -- merge the served nodes (now at `level`) with those whose own score is `level`
        local merged, m, a = {}, 0, 1
        while pos <= n and score[order[pos]] == level do
          local b = order[pos]
          while a <= ncur and cur[a] < b do m = m + 1; merged[m] = cur[a]; a = a + 1 end
          m = m + 1; merged[m] = b; pos = pos + 1
        end
        while a <= ncur do m = m + 1; merged[m] = cur[a]; a = a + 1 end
        cur, ncur = merged, m
      end
      k = 1
    end
    dest[t] = ids[cur[k]]
    k = k + 1
  end
end

-- Both kinds: a heap per kind keyed by (score, index); a planned task raises the node in
-- both heaps.
local function new_heap(score)
  local n = #score
  local heap, pos = {}, {}
  local function less(a, b)
    local sa, sb = score[a], score[b]
    if sa ~= sb then return sa < sb end
    return a < b
  end
  local function down(i)
    while true do
      local l = 2 * i
      local r, m = l + 1, i
      if l <= n and less(heap[l], heap[m]) then m = l end
      if r <= n and less(heap[r], heap[m]) then m = r end
      if m == i then return end
      local a, b = heap[i], heap[m]
      heap[i], heap[m] = b, a
      pos[b], pos[a] = i, m
      i = m
    end
  end
  for i = 1, n do heap[i] = i; pos[i] = i end
  for i = n // 2, 1, -1 do down(i) end
  return {
    top = function() return heap[1] end,
    raise = function(node) score[node] = score[node] + 1; down(pos[node]) end,
  }
end

local function heap_place(kinds, nodes, limit, dest)
  local planned = {}
  for i = 1, #nodes do planned[i] = 0 end
  local heaps = {}
  for t = 1, limit do
    local kind = kinds[t] == "dispatcher" and "dispatcher" or "maintainer"
    local h = heaps[kind]
    if not h then
      local score = base_scores(nodes, kind)
      for i = 1, #nodes do score[i] = score[i] + planned[i] end
      h = new_heap(score)
      heaps[kind] = h
    end
    local best = h.top()
    dest[t] = nodes[best].id
    planned[best] = planned[best] + 1
    for _, hk in pairs(heaps) do hk.raise(best) end
  end
end

-- dest[t] = node id for tasks 1..limit, by position; kinds[t] is task t's kind.
local function plan(n, kinds, nodes, ctx)
  local dest = {}
  if #nodes == 0 or n == 0 then return dest end
  local limit = limit_of(n, ctx)
  local kind = kinds[1]
  for t = 2, limit do
    if kinds[t] ~= kind then kind = nil; break end
  end
  if kind then
    water_fill(nodes, limit, kind, dest)
  else
    heap_place(kinds, nodes, limit, dest)
  end
  return dest
end

local function place(tasks, nodes, ctx)
  local kinds = {}
  for t = 1, #tasks do kinds[t] = tasks[t].kind end
  local out = {}
  local dest = plan(#tasks, kinds, nodes, ctx)
  for t = 1, #dest do out[tasks[t].id] = dest[t] end
  return out
end

local function place_columns(batch, nodes, ctx)
  return plan(batch.n, batch.kind, nodes, ctx)
end

local function selftest()
  local function count(out)
    local c = {}
    for _, node in pairs(out) do c[node] = (c[node] or 0) + 1 end
    return c
  end
  local function mk(n, kind)
    local t = {}
    for i = 1, n do t[i] = {id = "t" .. i, kind = kind or "maintainer", changefeed = "cf", weight = 1} end
    return t
  end
  local empty = {}
  for i = 1, 4 do empty[i] = {id = "n" .. i, maintainers = 0, dispatchers = 0, inflight = 0, labels = {}} end
  -- even spread
  local c = count(place(mk(100), empty, {batch_limit = 100}))
  for i = 1, 4 do
    if c["n" .. i] ~= 25 then return false, "100 tasks over 4 empty nodes: n" .. i .. " got " .. tostring(c["n" .. i]) end
  end
  -- in-flight counts, ties go to the earlier node
  local busy = {
    {id = "a", maintainers = 0, dispatchers = 0, inflight = 3, labels = {}},
    {id = "b", maintainers = 0, dispatchers = 0, inflight = 0, labels = {}},
  }
  local out = place(mk(4), busy, {batch_limit = 4})
  if out.t1 ~= "b" or out.t2 ~= "b" or out.t3 ~= "b" or out.t4 ~= "a" then
    return false, "in-flight not respected"
  end
  -- the task's kind decides which count matters
  local mixed = {
    {id = "m", maintainers = 0, dispatchers = 9, inflight = 0, labels = {}},
    {id = "d", maintainers = 9, dispatchers = 0, inflight = 0, labels = {}},
  }
  local tasks = {{id = "x", kind = "dispatcher", changefeed = "cf", weight = 1},
                 {id = "y", kind = "maintainer", changefeed = "y", weight = 1}}
  out = place(tasks, mixed, {batch_limit = 2})
  if out.x ~= "d" or out.y ~= "m" then return false, "kinds mixed up" end
  -- batch_limit
  c = 0
  for _ in pairs(place(mk(10), empty, {batch_limit = 3})) do c = c + 1 end
  if c ~= 3 then return false, "batch_limit 3 placed " .. c end
  -- no node: nothing placed, no error
  if next(place(mk(3), {}, {batch_limit = 3})) ~= nil then return false, "placed without nodes" end
  -- the column form plans exactly what place does, by position
  local batch, kinds = mk(7, "dispatcher"), {}
  batch[3].kind, batch[6].kind = "maintainer", "maintainer"
  for t = 1, #batch do kinds[t] = batch[t].kind end
  local by_id = place(batch, mixed, {batch_limit = 5})
  local by_pos = place_columns({n = #batch, kind = kinds}, mixed, {batch_limit = 5})
  for t = 1, #batch do
    if by_id[batch[t].id] ~= by_pos[t] then return false, "place_columns differs from place at task " .. t end
  end
  return true
end

return {
  name = "least-loaded",
  place = place,
  place_columns = place_columns,
  columns = {"kind"},
  selftest = selftest,
}
