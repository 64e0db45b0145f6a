-- Memory: the budget a run may use (--memory), what a run needs per phase (weights,
-- activations, scores), the choices the budget drives (f32 or stored weights, how many
-- integrated-gradient steps share one run), and the process's measured resident set.
--
-- Estimates come from the core's own sizes (eapig_weights_*_bytes, eapig_workspace_bytes), so
-- they follow the engine; the Lua-side buffers of each method are counted here.
-- Symbols: B = rows, P = positions, D = d_model, V = vocab, NF / NB = source / destination nodes.
local core = require("eapig.core")
local C = core.C

local memory = {}

local GiB = 2 ^ 30
memory.GiB = GiB

local function meminfo_bytes(key)
  local f = io.open("/proc/meminfo", "rb")
  if not f then return nil end
  local text = f:read("*a")
  f:close()
  local kb = text:match(key .. ":%s*(%d+) kB")
  return kb and tonumber(kb) * 1024 or nil
end

-- The machine's memory (MemTotal), or nil where /proc/meminfo is missing.
function memory.machine_bytes()
  return meminfo_bytes("MemTotal")
end

-- The default budget: the machine's memory minus a margin for the system (10%, at least 1 GiB).
function memory.default_budget()
  local total = memory.machine_bytes() or 16 * GiB
  return total - math.max(GiB, 0.1 * total)
end

-- A budget in bytes from --memory GiB (a positive number), or the default.
function memory.budget(gib)
  if gib == nil then return memory.default_budget() end
  if type(gib) ~= "number" or not (gib > 0) or gib == math.huge then -- luacheck: ignore 581 (NaN must fail)
    error(("memory budget must be a positive number of GiB, got %s"):format(tostring(gib)), 0)
  end
  return gib * GiB
end

-- Share of the budget an f32 copy of the weights may take for "auto" to choose it: the rest is
-- left to activations and scores.
local F32_SHARE = 0.6

-- "f32" or "stored" for a model of config cfg (eapig_config) under a budget in bytes, and why.
-- f32 is faster (no conversion per layer), so it is chosen whenever its copy fits.
function memory.choose_weights(cfg, budget)
  local f32 = tonumber(C.eapig_weights_f32_bytes(cfg))
  if f32 <= F32_SHARE * budget then
    return "f32", ("the f32 copy (%s) fits the memory budget (%s)"):format(memory.format(f32), memory.format(budget))
  end
  return "stored", ("the f32 copy (%s) would take more than %d%% of the memory budget (%s)"):format(
    memory.format(f32), F32_SHARE * 100, memory.format(budget))
end

-- "12.3 GiB" / "45.6 MiB".
function memory.format(bytes)
  if bytes >= GiB then return ("%.2f GiB"):format(bytes / GiB) end
  return ("%.1f MiB"):format(bytes / 2 ^ 20)
end

---------------------------------------------------------------------------------------------
-- Measured: the resident set of this process (Linux /proc/self/status)

local function status_bytes(key)
  local f = io.open("/proc/self/status", "rb")
  if not f then return nil end
  local text = f:read("*a")
  f:close()
  local kb = text:match(key .. ":%s*(%d+) kB")
  return kb and tonumber(kb) * 1024 or nil
end

function memory.rss() return status_bytes("VmRSS") end
function memory.peak_rss() return status_bytes("VmHWM") end

-- Resets the peak resident set to the current one (Linux >= 4.0), so the next peak_rss() is the
-- peak of what follows. Returns false where that is not possible.
function memory.reset_peak()
  local f = io.open("/proc/self/clear_refs", "wb")
  if not f then return false end
  local ok = f:write("5")
  local closed = f:close()
  return ok and closed and true or false
end

return memory
