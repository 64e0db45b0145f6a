-- Building blocks shared by attribution and evaluation: batches as the engine wants them,
-- captures, references for each intervention (corrupted run, zero, mean, per-position mean),
-- and metric evaluation at the last real positions.
local core = require("eapig.core")
local metrics = require("eapig.metrics")
local options = require("eapig.options")
local ffi, C = core.ffi, core.C

local runs = {}

-- A node-major (NF, B, P, D) buffer owned by the current batch (core.with_batch frees it).
function runs.nodes(model, B, P)
  return core.batch_floats(model.n_forward * B * P * model.d_model)
end

-- What an edge outside the circuit (or an attributed edge) reads instead of its clean value: the
-- one list, which attribute, evaluate and the CLI's --intervention accept.
runs.INTERVENTIONS = { "patching", "zero", "mean", "mean-positional" }
local is_intervention = {}
for _, name in ipairs(runs.INTERVENTIONS) do is_intervention[name] = true end

function runs.check_intervention(intervention, intervention_data, custom)
  if custom then
    if type(custom) ~= "function" then error("reference must be a function(model, batch) -> (NF, B, P, D) buffer", 0) end
    return
  end
  if not is_intervention[intervention] then
    local names = runs.INTERVENTIONS
    error(("unknown intervention '%s' (expected %s or %s)"):format(tostring(intervention),
      table.concat(names, ", ", 1, #names - 1), names[#names]), 0)
  end
  if intervention:find("^mean") and not intervention_data then
    error(("intervention '%s' needs intervention_data (the dataset to average over)"):format(intervention), 0)
  end
end

-- The engine's view of a data batch: clean and corrupted runs share the clean lengths (EAP-IG
-- uses the clean attention mask for both).
function runs.engine_batches(b)
  local clean = { tokens = b.clean, lengths = b.lengths, B = b.B, P = b.P }
  local corrupted = { tokens = b.corrupted, lengths = b.lengths, B = b.B, P = b.P }
  return clean, corrupted
end

-- A batch repeated k times (step-major rows), for batched integrated-gradient steps.
function runs.repeat_batch(batch, pos, k)
  local B, P = batch.B, batch.P
  local tokens, lengths, rpos = core.int32s(k * B * P), core.int32s(k * B), core.int32s(k * B)
  for s = 0, k - 1 do
    ffi.copy(tokens + s * B * P, batch.tokens, 4 * B * P)
    ffi.copy(lengths + s * B, batch.lengths, 4 * B)
    ffi.copy(rpos + s * B, pos, 4 * B)
  end
  return { tokens = tokens, lengths = lengths, B = k * B, P = P }, rpos
end

function runs.repeat_rows(rows, k)
  local out = {}
  for _ = 1, k do
    for i = 1, #rows do out[#out + 1] = rows[i] end
  end
  return out
end

function runs.repeat_floats(buf, n, k)
  local out = core.floats(n * k)
  for s = 0, k - 1 do ffi.copy(out + s * n, buf, 4 * n) end
  return out
end

-- Per-node means of every source's output over the real positions of a dataset: (NF, D), or
-- per position (NF, P, D) with equal lengths. Returns {values, per_position, P}.
function runs.compute_means(model, ds, per_position, batch_size)
  batch_size = batch_size or options.DEFAULT_BATCH_SIZE
  local NF, D = model.n_forward, model.d_model
  local P_all
  for b in ds:batches(batch_size) do
    P_all = P_all or b.P
    for i = 0, b.B - 1 do
      if per_position and b.lengths[i] ~= P_all then
        error(("mean-positional: intervention data row %d has %d tokens, expected %d (positional means need equal lengths)")
          :format(b.first + i, b.lengths[i], P_all), 0)
      end
    end
  end
  if not P_all then error("intervention data is empty", 0) end
  local width = per_position and P_all * D or D
  -- (NF, P, D) doubles outgrow one Lua buffer (2 GiB) on a big model with long rows: say so
  core.check_size(NF * width, 8, ("mean%s: the means of %d nodes x %s x %d dimensions"):format(
    per_position and "-positional" or "", NF, per_position and (P_all .. " positions") or "1", D))
  local sums = ffi.new("double[?]", NF * width)
  local count = 0
  local function add_batch(b) -- the capture is freed when the batch ends
    local clean = runs.engine_batches(b)
    local cap = runs.nodes(model, b.B, b.P)
    model:forward(clean, { capture = cap, no_logits = true })
    core.check(C.eapig_node_sums(sums, cap, b.lengths, NF, b.B, b.P, D, per_position and 1 or 0), "means")
    for i = 0, b.B - 1 do count = count + (per_position and 1 or b.lengths[i]) end
  end
  for b in ds:batches(batch_size) do core.with_batch(add_batch, b) end
  local values = core.floats(NF * width)
  for i = 0, NF * width - 1 do values[i] = sums[i] / count end
  return { values = values, per_position = per_position, P = P_all }
end

-- The reference activations R (NF, B, P, D) of a batch for an intervention. For patching it
-- runs the corrupted input (capturing every node; with logits = true it also returns that run's
-- logits at the last positions); the others need no run. A custom reference
-- function(model, batch) replaces the built-in interventions (a user-defined ablation).
function runs.reference(model, b, intervention, means, custom, logits)
  if custom then return custom(model, b) end
  local R = runs.nodes(model, b.B, b.P)
  if intervention == "patching" then
    local _, corrupted = runs.engine_batches(b)
    if logits then return R, model:forward(corrupted, { capture = R, logit_pos = b.last_pos }) end
    model:forward(corrupted, { capture = R, no_logits = true })
  elseif intervention == "mean" or intervention == "mean-positional" then
    if means.per_position and b.P > means.P then
      error(("mean-positional: batch at row %d has %d positions but the means have %d"):format(b.first, b.P, means.P), 0)
    end
    core.check(C.eapig_broadcast_means(R, means.values, model.n_forward, b.B, b.P, model.d_model,
      means.per_position and 1 or 0, means.P), "means")
  end -- zero: R stays zero
  return R
end

-- The difference buffer R - clean (NF, B, P, D) of a batch: the reference of an intervention,
-- turned in place into R - clean by the clean run itself (capture_diff), which also keeps its
-- activations for a backward and returns the clean logits at the last positions. A custom
-- reference is copied first: the user's buffer is left as it was.
function runs.clean_difference(model, b, intervention, means, custom)
  local R = runs.reference(model, b, intervention, means, custom)
  local n = model.n_forward * model:block_size(b.B, b.P)
  if custom then
    local own = core.batch_floats(n)
    ffi.copy(own, R, 4 * n)
    R = own
  end
  local clean = runs.engine_batches(b)
  local logits = model:forward(clean, { logit_pos = b.last_pos, capture = R, capture_diff = 1, keep = true })
  return R, logits
end

-- Runs a metric on logits (rows, V) at the last positions; with grad, fills dlogits with
-- grad_scale * d value / d logits. Returns the per-row values.
function runs.metric_values(model, metric, b, logits, clean_logits, rows, grad, grad_scale)
  local n = #rows
  return metrics.run(metric, { logits = logits, clean_logits = clean_logits, rows = rows, B = n,
    V = model.vocab, grad_out = grad, grad_scale = grad_scale, first = b.first })
end

return runs
