-- eapig.mib: submissions to MIB's circuit localization track (the Mechanistic Interpretability
-- Benchmark, Mueller et al. 2025): the folder layout, task and model names, and the circuits it
-- asks for. The format is described in docs/mib.md.
--
--   mib.export(graph, "ioi", "gpt2", "out")                     -- out/ioi_gpt2/importances.json
--   mib.export(graph, "ioi", "gpt2", "out", {circuits = true})  -- out/ioi_gpt2/edges_0.1pct.json, ...
--   mib.score(model, graph, data, "logit_diff")                  -- {cpr =, cmd =, points, cpr_points, ...}
local files = require("eapig.formats.files")
local sweep = require("eapig.sweep")

local fmt = string.format

local M = {}

local function fail(template, ...)
  error(fmt(template, ...), 0)
end

-- MIB's task names as its folders spell them (task_model), and the models it scores, with the
-- graph shape each one has (TransformerLens config: layers, heads, d_model).
M.TASKS = { "ioi", "mcqa", "arithmetic-addition", "arithmetic-subtraction", "arc-easy", "arc-challenge" }
M.MODELS = {
  gpt2 = { name = "gpt2-small", n_layers = 12, n_heads = 12, d_model = 768 },
  ["qwen2.5"] = { name = "Qwen/Qwen2.5-0.5B", n_layers = 24, n_heads = 14, d_model = 896 },
  gemma2 = { name = "google/gemma-2-2b", n_layers = 26, n_heads = 8, d_model = 2304 },
  llama3 = { name = "meta-llama/Llama-3.1-8B", n_layers = 32, n_heads = 32, d_model = 4096 },
}
local MODEL_ORDER = { "gpt2", "qwen2.5", "gemma2", "llama3" }
-- The task/model pairs of MIB's leaderboard.
M.PAIRS = {
  "ioi_gpt2", "ioi_qwen2.5", "ioi_gemma2", "ioi_llama3", "mcqa_qwen2.5", "mcqa_gemma2", "mcqa_llama3",
  "arithmetic-addition_llama3", "arithmetic-subtraction_llama3", "arc-easy_gemma2", "arc-easy_llama3",
  "arc-challenge_llama3",
}
-- Percentages of the edges for the binary circuits of a submission (each circuit has at most that
-- many). The fractions at which MIB measures faithfulness are sweep.DEFAULT_FRACTIONS.
M.CIRCUIT_PERCENTS = { 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50 }

local function one_of(list)
  return table.concat(list, ", ")
end

local function contains(list, x)
  for _, v in ipairs(list) do
    if v == x then return true end
  end
  return false
end

-- Checks the task and model names (MIB's spelling; "arithmetic_addition" is accepted for
-- "arithmetic-addition", as MIB's scripts write it both ways) and returns the folder name.
function M.folder_name(task, model)
  if type(task) ~= "string" then fail("mib: --task is required (one of %s)", one_of(M.TASKS)) end
  if type(model) ~= "string" then fail("mib: --model is required (one of %s)", one_of(MODEL_ORDER)) end
  local t = task:gsub("_", "-")
  if not contains(M.TASKS, t) then fail("mib: --task '%s' is not an MIB task (one of %s)", task, one_of(M.TASKS)) end
  if not M.MODELS[model] then
    fail("mib: --model '%s' is not an MIB model (one of %s)", model, one_of(MODEL_ORDER))
  end
  local folder = t .. "_" .. model
  if not contains(M.PAIRS, folder) then
    fail("mib: MIB does not score task '%s' on model '%s' (its pairs: %s)", t, model, one_of(M.PAIRS))
  end
  return folder
end

-- The graph must be the model's: same layers, heads and width (a graph of another model would
-- load into MIB's evaluation as a wrong circuit or not at all).
function M.check_graph(graph, model)
  local want = M.MODELS[model]
  for _, key in ipairs({ "n_layers", "n_heads", "d_model" }) do
    if graph.cfg[key] ~= want[key] then
      fail("mib: the graph's cfg '%s' is %s, but MIB's %s (%s) has %d", key, tostring(graph.cfg[key]), model,
           want.name, want[key])
    end
  end
  if graph.level ~= "edge" then fail("mib: export writes edge-level graphs; this graph is %s-level", graph.level) end
end

-- File name of the circuit at `percent`% of the edges.
function M.circuit_file(percent)
  return fmt("edges_%spct.json", (fmt("%g", percent)))
end

-- Writes the folder <out>/<task>_<model>/: importances.json (the scored graph), or with
-- opts.circuits the binary circuits at M.CIRCUIT_PERCENTS (top-n by opts.signed score, else by
-- absolute score, then pruned). The folder is written beside its final name and renamed into
-- place, so a failure leaves nothing; an existing folder is an error.
-- Returns the folder's path and the list of {file, percent, n, kept} written.
function M.export(graph, task, model, out, opts)
  opts = opts or {}
  local folder_name = M.folder_name(task, model)
  M.check_graph(graph, model)
  if type(out) ~= "string" or out == "" then fail("mib: --out is required") end
  files.mkdir_p(out, "mib")
  local final = out .. "/" .. folder_name
  if files.exists(final) then fail("mib: '%s' exists already: remove it first, or choose another --out", final) end
  local tmp = files.temp_name(final)
  files.mkdir_p(tmp, "mib")
  local written = {}
  local ok, err = pcall(function()
    if not opts.circuits then
      graph:to_json(tmp .. "/importances.json")
      written[1] = { file = "importances.json" }
      return
    end
    local total = graph:n_edges()
    for _, pct in ipairs(M.CIRCUIT_PERCENTS) do
      local n = sweep.edges_at(pct / 100, total)
      local g = graph:clone()
      g:apply_topn(n, { absolute = not opts.signed, prune = true })
      local file = M.circuit_file(pct)
      g:to_json(tmp .. "/" .. file)
      written[#written + 1] = { file = file, percent = pct, n = n, kept = g:count_included_edges() }
    end
  end)
  if ok and not os.rename(tmp, final) then ok, err = false, fmt("mib: cannot rename '%s' to '%s'", tmp, final) end
  if not ok then
    for _, w in ipairs(written) do os.remove(tmp .. "/" .. w.file) end
    os.remove(tmp)
    error(err, 0)
  end
  return final, written
end

-- CPR and CMD of a scored graph as MIB's evaluation computes them, at its ten fractions, with
-- m(empty) the empty circuit under the same intervention: both curves of sweep.run (the one
-- implementation; lua/eapig/sweep.lua). opts: intervention, intervention_data, batch_size, quiet.
-- Returns sweep.run's result: cpr, cmd, points (absolute ranking), cpr_points (signed), clean,
-- corrupted, empty.
function M.score(model, graph, data, metric, opts)
  opts = opts or {}
  return sweep.run(model, graph, data, metric, {
    measure = "both", fractions = sweep.DEFAULT_FRACTIONS, intervention = opts.intervention,
    intervention_data = opts.intervention_data, batch_size = opts.batch_size, quiet = opts.quiet,
  })
end

return M
