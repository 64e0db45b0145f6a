-- The progress display of long runs (attribution, evaluation, training), on stderr.
--
-- On a terminal: one bar redrawn in place, `label [####......]  40% 80/200 3.1s`, with the wall
-- time since the start (os.clock would count the CPU time of every BLAS thread). Anywhere else
-- (a log file, a pipe, CI) carriage returns are noise, so nothing is drawn while the phase runs
-- and finish() writes one line: `label: 200/200 in 7.9s`.
--
--   local p = Progress.new("EAP-IG-inputs", #data, { quiet = opts.quiet })
--   for b in data:batches(8) do ...; p:step(b.B) end
--   p:finish()
local ffi = require("ffi")

local floor, max = math.floor, math.max
local fmt = string.format

-- Each declaration on its own: another module may have declared isatty already.
pcall(ffi.cdef, "typedef struct { long tv_sec; long tv_nsec; } eapig_progress_timespec;")
pcall(ffi.cdef, "int clock_gettime(int clk_id, eapig_progress_timespec *tp);")
pcall(ffi.cdef, "int isatty(int fd);")
local ts = ffi.new("eapig_progress_timespec")
local CLOCK_MONOTONIC = 1

local Progress = {}
Progress.__index = Progress

-- Wall-clock seconds from an arbitrary origin (monotonic: never jumps with the system clock).
function Progress.now()
  if ffi.C.clock_gettime(CLOCK_MONOTONIC, ts) ~= 0 then return os.time() end
  return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
end

function Progress.stderr_is_terminal()
  local ok, r = pcall(function() return ffi.C.isatty(2) end)
  return ok and r == 1
end

-- Progress.new(label, total, opts): opts.quiet (nothing at all), opts.terminal (draw the bar;
-- default: whether stderr is a terminal), opts.stream (default io.stderr). A boolean in place
-- of opts is quiet, the form the attribution and evaluation loops use.
function Progress.new(label, total, opts)
  if type(opts) ~= "table" then opts = { quiet = opts and true or false } end
  local terminal = opts.terminal
  if terminal == nil then terminal = Progress.stderr_is_terminal() end
  return setmetatable({ label = label, total = max(total, 1), done = 0, quiet = opts.quiet,
    terminal = terminal, stream = opts.stream or io.stderr, start = Progress.now(), shown = -1,
    drawn = false, extra = nil }, Progress)
end

function Progress:elapsed()
  return Progress.now() - self.start
end

-- Sets the count of finished units to done; extra is text shown after the time ("loss 2.31").
function Progress:update(done, extra)
  self.done, self.extra = done, extra
  if self.quiet or not self.terminal then return end
  local pct = floor(100 * self.done / self.total)
  if pct == self.shown and self.done ~= self.total then return end
  self.shown = pct
  local width = 30
  local filled = floor(width * math.min(self.done, self.total) / self.total)
  self.stream:write(fmt("\r%s [%s%s] %3d%% %d/%d %.1fs%s", self.label, ("#"):rep(filled),
    ("."):rep(width - filled), pct, self.done, self.total, self:elapsed(), extra and ("  " .. extra) or ""))
  self.stream:flush()
  self.drawn = true
end

-- n more units finished (default 1).
function Progress:step(n, extra)
  self:update(self.done + (n or 1), extra)
end

-- Erases the bar so a log line can be written on the terminal; the next update redraws it.
function Progress:clear()
  if self.drawn then
    self.stream:write("\r\27[K")
    self.stream:flush()
    self.drawn = false
    self.shown = -1
  end
end

-- Ends the phase: a newline after the bar on a terminal, or the phase's one line elsewhere.
function Progress:finish()
  if self.quiet then return end
  if self.terminal then
    if self.drawn then self.stream:write("\n") end
  elseif self.done > 0 then
    self.stream:write(fmt("%s: %d/%d in %.1fs%s\n", self.label, self.done, self.total, self:elapsed(),
      self.extra and ("  " .. self.extra) or ""))
  end
  self.stream:flush()
  self.drawn = false
end

return Progress
