-- cluster.lua — plays the nodes for core specs: takes the core's outbox, "runs" the
-- tasks it is told to start, stops the ones it is told to stop, and reports back, the
-- way agents will. Keeps its own view of what runs where so specs can check that a task
-- never runs on two nodes and is never lost.
local Cluster = {}
Cluster.__index = Cluster

function Cluster.new(core)
  return setmetatable({ core = core, now = 0, running = {}, sent = {}, epoch = {}, notices = {} }, Cluster)
end

-- Which nodes run task `id` (by this cluster's own account).
function Cluster:owners(id)
  local out = {}
  for node, tasks in pairs(self.running) do
    if tasks[id] then out[#out + 1] = node end
  end
  table.sort(out)
  return out
end

-- Takes the outbox. Returns the start and stop messages; does not deliver them. Drain
-- notifications (D5) are answered at once, the way nodes acknowledge the epoch in their
-- next heartbeat (unless self.mute), and kept in self.notices; what the answers set off
-- is taken too.
function Cluster:take()
  local tasks = {}
  repeat
    local msgs, acks = self.core:outbox(), {}
    for _, m in ipairs(msgs) do
      self.sent[#self.sent + 1] = m
      if m.type == "drain" then
        self.notices[#self.notices + 1] = m
        if m.epoch > (self.epoch[m.node] or 0) then self.epoch[m.node] = m.epoch end
        acks[#acks + 1] = m.node
      else
        tasks[#tasks + 1] = m
      end
    end
    if self.mute then break end
    for _, node in ipairs(acks) do self.core:heartbeat(node, self.epoch[node], self.now) end
  until #acks == 0
  return tasks
end

-- Delivers one message: the node acts and reports. `hook(m)` may return "drop" (lost) or
-- "hold" (kept for later) before delivery.
function Cluster:deliver(m)
  self.running[m.node] = self.running[m.node] or {}
  if m.type == "start" then
    self.running[m.node][m.task] = true
    return self.core:report(m.node, m.task, "working", self.now)
  else
    self.running[m.node][m.task] = nil
    return self.core:report(m.node, m.task, "stopped", self.now)
  end
end

-- Delivers everything until the outbox stays empty (or `max` rounds). Returns the
-- number of messages delivered and the ones held back.
function Cluster:settle(hook, max)
  local delivered, held = 0, {}
  for _ = 1, max or 10000 do
    local msgs = self:take()
    if #msgs == 0 then break end
    for _, m in ipairs(msgs) do
      local verdict = hook and hook(m)
      if verdict == "hold" then
        held[#held + 1] = m
      elseif verdict ~= "drop" then
        self:deliver(m)
        delivered = delivered + 1
      end
    end
  end
  return delivered, held
end

-- Time passes: every node heartbeats (acknowledging the newest epoch it was told), then
-- the core ticks. Nodes listed in self.silent stay quiet (a crash the core must notice).
function Cluster:tick(dt)
  self.now = self.now + (dt or 0)
  for _, n in ipairs(self.core:nodes()) do
    if not (self.silent and self.silent[n.id]) then
      self.core:heartbeat(n.id, self.epoch[n.id] or 0, self.now)
    end
  end
  return self.core:tick(self.now)
end

-- A node goes away: it runs nothing any more.
function Cluster:leave(node)
  self.running[node] = nil
  return self.core:leave(node)
end

-- Count of tasks bound per node according to the core.
function Cluster:placement()
  local out = {}
  for _, n in ipairs(self.core:nodes()) do out[n.id] = n.maintainers + n.dispatchers end
  return out
end

return Cluster
