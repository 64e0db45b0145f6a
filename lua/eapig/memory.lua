-- Memory: the budget a run may use (--memory), what a run needs per phase (weights,
-- activations, scores), the choices the budget drives (f32 or stored weights, how many
-- integrated-gradient steps share one run), and the process's measured resident set.
--
-- Estimates come from the core's own sizes (eapig_weights_*_bytes, eapig_workspace_bytes), so
-- they follow the engine; the Lua-side buffers of each method are counted here.
-- Symbols: B = rows, P = positions, D = d_model, V = vocab, NF / NB = source / destination nodes.
local core = require("eapig.core")
local indices = require("eapig.indices")
local C = core.C

local memory = {}

local GiB = 2 ^ 30
memory.GiB = GiB

-- A "Key:   N kB" line of a /proc file (meminfo, self/status) in bytes, or nil where the file or
-- the key is missing.
local function proc_kb_bytes(path, key)
  local f = io.open(path, "rb")
  if not f then return nil end
  local text = f:read("*a")
  f:close()
  local kb = text:match(key .. ":%s*(%d+) kB")
  return kb and tonumber(kb) * 1024 or nil
end

-- The machine's memory (MemTotal), or nil where /proc/meminfo is missing.
function memory.machine_bytes()
  return proc_kb_bytes("/proc/meminfo", "MemTotal")
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

-- "12.30 GiB" / "45.6 MiB" / "12.0 KiB".
function memory.format(bytes)
  if bytes >= GiB then return ("%.2f GiB"):format(bytes / GiB) end
  if bytes >= 2 ^ 20 then return ("%.1f MiB"):format(bytes / 2 ^ 20) end
  return ("%.1f KiB"):format(bytes / 1024)
end

---------------------------------------------------------------------------------------------
-- Estimates

local function workspace(model, B, P, diff_B, flags)
  local bytes = tonumber(C.eapig_workspace_bytes(model.handle, B, P, diff_B or 0, flags or 0))
  if bytes < 0 then error(require("ffi").string(C.eapig_last_error()), 0) end
  -- a stored model's converted layer is counted with the weights (model.weights says which
  -- weights a run will use: `eapig info` inspects a stored model for a run that may convert)
  if C.eapig_model_is_stored(model.handle) ~= 0 then
    bytes = bytes - tonumber(C.eapig_weights_view_bytes(model.cfg))
  end
  return bytes
end

-- Weights in memory: the f32 copy, or (stored) the f32 norms and biases, one layer converted to
-- f32 with an unembedding chunk, and one layer of the checkpoint's pages while it is converted.
function memory.weights_bytes(model)
  if model.weights ~= "stored" then return tonumber(C.eapig_weights_f32_bytes(model.cfg)) end
  local view = tonumber(C.eapig_weights_view_bytes(model.cfg))
  local stored_size = ({ F32 = 4, F16 = 2, BF16 = 2 })[model.weights_dtype or "F32"] or 4
  return tonumber(C.eapig_weights_stored_bytes(model.cfg)) + view + view * stored_size / 4
end

local KEEP, PATCH = C.EAPIG_RUN_KEEP, C.EAPIG_RUN_PATCH

-- Activation bytes of one batch of B rows and P positions for a method, with n integrated-gradient
-- steps per batched run. These are the buffers lua/eapig/attribute.lua and evaluate.lua hold at
-- once: node-major (NF, B, P, D) captures, references and differences, the runs' override values
-- and logits, and the engine's workspace.
local function activation_bytes(model, method, B, P, n, level)
  local NF, NB, D, V, L, H = model.n_forward, model.n_backward, model.d_model, model.vocab, model.n_layers,
    model.n_heads
  local blk = B * P * D * 4
  local nodes = NF * blk
  local logits = B * V * 4
  if method == "EAP" or method == "clean-corrupted" then
    return 3 * nodes + workspace(model, B, P, 0, KEEP) + 2 * logits
  elseif method == "EAP-IG-inputs" then
    -- one node buffer (the clean capture, turned into the difference in place), the clean
    -- embeddings, a run's interpolated embeddings, and the logits of the runs
    local run = math.max(workspace(model, B, P, 0, KEEP), workspace(model, n * B, P, B, KEEP))
    return nodes + blk + n * blk + run + (2 + 3 * n) * logits
  elseif method == "EAP-IG-activations" then
    return 3 * nodes + workspace(model, n * B, P, B, KEEP) + H * n * blk + 3 * n * logits
  elseif method == "exact" then
    local extra = level == "edge" and 0 or NF * 4
    return 2 * nodes + indices.n_readers(L) * blk + NF * NB * 4 + workspace(model, B, P, 0, PATCH) + 2 * logits + extra
  elseif method == "information-flow-routes" then
    return nodes + indices.n_readers(L) * blk + workspace(model, B, P, 0, 0)
  elseif method == "evaluate" then
    return nodes + NF * NB * 4 + workspace(model, B, P, 0, PATCH) + 2 * logits
  end
  error(("memory estimate: unknown method '%s'"):format(tostring(method)), 0)
end

-- The scored graph and the method's accumulators: edge scores twice (sums and graph), the real
-- and in-graph masks, node and neuron scores at those levels.
local function scores_bytes(model, level)
  local NF, NB = model.n_forward, model.n_backward
  local bytes = NF * NB * (4 + 4 + 1 + 1)
  if level == "node" or level == "neuron" then bytes = bytes + 2 * NF * 4 end
  if level == "neuron" then bytes = bytes + 2 * NF * model.d_model * 4 end
  return bytes
end

local IG = { ["EAP-IG-inputs"] = true, ["EAP-IG-activations"] = true }

-- What one run needs, per phase, in bytes. opts: B (rows per batch), P (positions), method
-- (an attribution method or "evaluate"), steps (integrated-gradient steps, 5), level ("edge"),
-- steps_per_run (batched steps; default: as many as the budget allows, see steps_per_run).
-- Returns {weights =, activations =, scores =, total =, steps_per_run =}.
function memory.estimate(model, opts)
  local B, P = opts.B, opts.P
  local method, level = opts.method or "EAP-IG-inputs", opts.level or "edge"
  local steps = IG[method] and (opts.steps or 5) or 1
  local n = opts.steps_per_run or 1
  local e = {
    weights = memory.weights_bytes(model),
    activations = activation_bytes(model, method, B, P, n, level),
    scores = scores_bytes(model, level),
    steps_per_run = IG[method] and n or nil,
    steps = steps,
  }
  e.total = e.weights + e.activations + e.scores
  return e
end

-- The integrated-gradient steps batched into one run: the most (up to the steps a run has left:
-- steps - 1 for EAP-IG-inputs, whose first step is the corrupted run) whose estimate fits the
-- budget. nil, estimate when even one step does not fit.
function memory.steps_per_run(model, opts, budget)
  local most = opts.method == "EAP-IG-inputs" and math.max(1, (opts.steps or 5) - 1) or (opts.steps or 5)
  local o = {}
  for k, v in pairs(opts) do o[k] = v end
  o.steps_per_run = 1
  local e = memory.estimate(model, o)
  if e.total > budget then return nil, e end
  local lo, hi = 1, most -- largest n with estimate(n) <= budget: estimates grow with n
  while lo < hi do
    local mid = math.ceil((lo + hi) / 2)
    o.steps_per_run = mid
    if memory.estimate(model, o).total <= budget then lo = mid else hi = mid - 1 end
  end
  o.steps_per_run = lo
  return lo, memory.estimate(model, o)
end

-- The longest row (clean or corrupted) of a dataset: the positions of its largest batch.
function memory.longest_row(data)
  local longest = 1
  for i = 1, #data.rows do longest = math.max(longest, #data.rows[i].clean, #data.rows[i].corrupted) end
  return longest
end

-- Raises, before any run starts, when a run of this shape cannot fit the budget; returns the
-- estimate (with the chosen steps per run) otherwise. what: "attribute" / "evaluate".
function memory.check(model, opts, budget, what)
  local IGm = IG[opts.method]
  local n, e
  if IGm then
    n, e = memory.steps_per_run(model, opts, budget)
  else
    e = memory.estimate(model, opts)
    n = e.total <= budget
  end
  if not n then
    error(("%s: needs about %s (weights %s, activations %s for %d rows x %d positions, scores %s) but the "
      .. "memory budget is %s: use a smaller --batch-size, --weights stored, or a larger --memory"):format(
      what, memory.format(e.total), memory.format(e.weights), memory.format(e.activations), opts.B, opts.P,
      memory.format(e.scores), memory.format(budget)), 0)
  end
  return e
end

---------------------------------------------------------------------------------------------
-- Measured: the resident set of this process (Linux /proc/self/status)

function memory.rss() return proc_kb_bytes("/proc/self/status", "VmRSS") end
function memory.peak_rss() return proc_kb_bytes("/proc/self/status", "VmHWM") end

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
