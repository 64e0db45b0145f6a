-- A one-line progress bar on stderr for long runs (silenced with quiet = true).
local Progress = {}
Progress.__index = Progress

function Progress.new(label, total, quiet)
  return setmetatable({ label = label, total = math.max(total, 1), done = 0, quiet = quiet,
    start = os.clock(), shown = -1 }, Progress)
end

function Progress:step(n)
  self.done = self.done + (n or 1)
  if self.quiet then return end
  local pct = math.floor(100 * self.done / self.total)
  if pct == self.shown then return end
  self.shown = pct
  local width = 30
  local filled = math.floor(width * self.done / self.total)
  io.stderr:write(("\r%s [%s%s] %3d%% %d/%d %.1fs"):format(self.label, ("#"):rep(filled),
    ("."):rep(width - filled), pct, self.done, self.total, os.clock() - self.start))
  io.stderr:flush()
end

function Progress:finish()
  if not self.quiet and self.shown >= 0 then io.stderr:write("\n") end
end

return Progress
