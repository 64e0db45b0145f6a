-- eapig.evaluate: run a circuit. Every destination reads the reference (corrupted, zero or
-- mean) value of each edge that is not in the circuit, through the engine's patched forward
-- with W = 1 - in_graph on real edges; neuron masks scale the patched difference per dimension.
local core = require("eapig.core")
local memory = require("eapig.memory")
local ffi = core.ffi
local metrics = require("eapig.metrics")
local runs = require("eapig.runs")
local Progress = require("eapig.progress")
local parallel = require("eapig.parallel")
local options = require("eapig.options")

local M = {}

local function metric_list(ms)
  if type(ms) == "table" and not metrics.is_metric(ms) and ms[1] ~= nil then
    local out = {}
    for i, m in ipairs(ms) do out[i] = metrics.get(m) end
    return out, true
  end
  return { metrics.get(ms) }, false
end

local function unwrap(results, many)
  if many then return results end
  return results[1]
end

-- Per-row values of every metric, filled batch by batch: under mpirun each rank runs only its
-- batches (parallel.owns), leaves the other rows 0 and finish() sums the rows over ranks.
local function row_values(n_metrics, n_rows)
  local rows = { n = n_rows, batch = -1 }
  for i = 1, n_metrics do
    rows[i] = ffi.new("double[?]", math.max(1, n_rows))
  end
  return rows
end

-- Whether this process runs the next batch (batches are counted in dataset order).
local function take_batch(rows)
  rows.batch = rows.batch + 1
  return parallel.owns(rows.batch)
end

local function put_values(rows, i, b, values)
  for j, v in ipairs(values) do rows[i][b.first + j - 2] = v end
end

local function finish_rows(rows)
  local results = {}
  for i = 1, #rows do
    parallel.sum_doubles(rows[i], rows.n)
    local list = {}
    for r = 1, rows.n do list[r] = rows[i][r - 1] end
    results[i] = list
  end
  return results
end

-- The patching weights and per-dimension scales of a (pruned) circuit.
local function circuit_weights(model, graph)
  local NF, NB, D = model.n_forward, model.n_backward, model.d_model
  local W = core.floats(NF * NB)
  local scale
  local fully_in = {}
  if graph.neurons_in_graph then
    -- EAP-IG: an edge from a node not wholly in the circuit is patched on its missing neurons.
    scale = core.floats(NF * D)
    for u = 0, NF - 1 do
      local all = true
      for d = 0, D - 1 do
        local keep = graph.neurons_in_graph[u * D + d]
        scale[u * D + d] = 1 - keep
        if keep == 0 then all = false end
      end
      fully_in[u] = all
    end
  end
  local any = false
  for u = 0, NF - 1 do
    for v = 0, NB - 1 do
      local i = u * NB + v
      if graph.real[i] == 1 then
        local in_graph = graph.in_graph[i] == 1 and (not scale or fully_in[u])
        if not in_graph then W[i] = 1; any = true end
      end
    end
  end
  return W, scale, any
end

local EVAL_OPTIONS = { "intervention", "intervention_data", "reference", "batch_size", "prune", "quiet",
  "skip_clean", "memory" }
local GRAPHS_OPTIONS = { "baselines" }
for _, name in ipairs(EVAL_OPTIONS) do GRAPHS_OPTIONS[#GRAPHS_OPTIONS + 1] = name end

-- The patched runs of several circuits over one pass through the data. Each circuit is
-- {W =, scale =, any =} (circuit_weights): W = 1 where the edge reads its reference value. Per
-- batch the reference values and the clean logits are computed once and shared by every circuit,
-- which is what makes a sweep over circuit sizes cheaper than separate evaluations. The clean
-- forward runs only for metrics that read the clean logits, for a circuit that patches nothing
-- (its logits are the clean ones), or when skip_clean = false or baselines asks for it. Returns,
-- per circuit, the per-metric lists of per-example values; with opts.baselines, then the same for
-- the model on the clean input and on the corrupted input (under patching, the corrupted input is
-- the reference run itself, whose logits come with its capture).
local function run_circuits(model, data, list, circuits, opts)
  local intervention = opts.intervention or "patching"
  local batch_size = opts.batch_size or options.DEFAULT_BATCH_SIZE
  -- before any run: the largest batch must fit the memory budget (opts.memory GiB)
  memory.check(model, { B = math.max(1, math.min(batch_size, #data)), P = memory.longest_row(data),
    method = "evaluate" }, memory.budget(opts.memory), "evaluate")
  local means
  if intervention:find("^mean") then
    means = runs.compute_means(model, opts.intervention_data, intervention == "mean-positional", batch_size)
  end
  local need_clean, need_ref = opts.skip_clean == false or opts.baselines == true, false
  for _, mt in ipairs(list) do
    if mt.needs_clean then need_clean = true end
  end
  local rows = {}
  for c, circuit in ipairs(circuits) do
    if circuit.any then need_ref = true else need_clean = true end
    rows[c] = row_values(#list, #data)
  end
  local base_rows = opts.baselines and { clean = row_values(#list, #data), corrupted = row_values(#list, #data) }
  local batches = { batch = -1 } -- the batch counter take_batch advances
  local progress = Progress.new("evaluate", #data * #circuits, opts.quiet or not parallel.is_root())
  -- one batch; its reference buffer is freed when it ends (core.with_batch)
  local function run_batch(b)
    local clean, corrupted = runs.engine_batches(b)
    local clean_logits = need_clean and model:forward(clean, { logit_pos = b.last_pos }) or nil
    local R, corrupted_logits
    if base_rows and intervention == "patching" and not opts.reference then
      R, corrupted_logits = runs.reference(model, b, intervention, means, nil, true)
    else
      R = need_ref and runs.reference(model, b, intervention, means, opts.reference) or nil
      if base_rows then corrupted_logits = model:forward(corrupted, { logit_pos = b.last_pos }) end
    end
    if base_rows then
      for i, mt in ipairs(list) do
        put_values(base_rows.clean, i, b, runs.metric_values(model, mt, b, clean_logits, clean_logits, b.rows))
        put_values(base_rows.corrupted, i, b, runs.metric_values(model, mt, b, corrupted_logits, clean_logits, b.rows))
      end
    end
    for c, circuit in ipairs(circuits) do
      local logits = clean_logits
      if circuit.any then
        logits = model:forward(clean, { logit_pos = b.last_pos, patch_ref = R, patch_w = circuit.W,
          patch_scale = circuit.scale })
      end
      for i, mt in ipairs(list) do
        put_values(rows[c], i, b, runs.metric_values(model, mt, b, logits, clean_logits, b.rows))
      end
      progress:step(b.B)
    end
  end
  for b in data:batches(batch_size) do
    if take_batch(batches) then
      core.with_batch(run_batch, b)
    else
      progress:step(b.B * #circuits)
    end
  end
  progress:finish()
  local results = {}
  for c = 1, #circuits do results[c] = finish_rows(rows[c]) end
  if base_rows then return results, finish_rows(base_rows.clean), finish_rows(base_rows.corrupted) end
  return results
end

local function check_eval_opts(opts, where, known)
  opts = options.check(opts, known or EVAL_OPTIONS, where)
  local intervention = opts.intervention or "patching"
  runs.check_intervention(intervention, opts.intervention_data, opts.reference)
  return opts
end

-- The circuit of a graph (pruned first unless opts.prune = false, as EAP-IG does), checked
-- against the model; what names the graph in errors.
local function graph_circuit(model, graph, opts, what)
  graph:check_matches(model:info())
  if opts.prune ~= false then graph:prune() end
  if not graph.selected and graph:count_included_edges() == 0 then
    error(what .. " has no edges selected: choose a circuit first with graph:apply_topn(n), " ..
      "apply_threshold(t) or apply_greedy(n) (apply_topn(0) evaluates the empty circuit on purpose)", 0)
  end
  local W, scale, any = circuit_weights(model, graph)
  return { W = W, scale = scale, any = any }
end

-- evaluate_graph(model, graph, data, metrics, opts): per-example metric values of the circuit
-- (a list per metric when metrics is a list). Prunes the graph first, as EAP-IG does.
-- opts: intervention ("patching", "zero", "mean", "mean-positional"), intervention_data (the
-- dataset the means average over), reference (function(model, batch) -> a custom reference
-- buffer), batch_size (8), prune (true), quiet, skip_clean (EAP-IG's flag; eapig runs the clean
-- model only when a metric reads the clean logits, so false only forces that run).
-- A graph in which nothing was ever selected is an error (the evaluation would silently be the
-- empty circuit's); select with graph:apply_topn(n) etc. (apply_topn(0) for the empty circuit),
-- or use evaluate_empty.
function M.evaluate_graph(model, graph, data, ms, opts)
  opts = check_eval_opts(opts, "evaluate_graph")
  local list, many = metric_list(ms)
  local circuit = graph_circuit(model, graph, opts, "evaluate_graph: the graph")
  return unwrap(run_circuits(model, data, list, { circuit }, opts)[1], many)
end

-- evaluate_graphs(model, graphs, data, metrics, opts): evaluate_graph of each graph in the list,
-- in one pass over the data: each batch's reference values (and clean logits, when needed) are
-- computed once for all the circuits. Returns a list with evaluate_graph's result per graph.
-- opts as evaluate_graph's, and baselines = true: also returns evaluate_baseline's values of the
-- clean and of the corrupted input (two more results), from the same pass.
function M.evaluate_graphs(model, graphs, data, ms, opts)
  opts = check_eval_opts(opts, "evaluate_graphs", GRAPHS_OPTIONS)
  local list, many = metric_list(ms)
  local circuits = {}
  for k, graph in ipairs(graphs) do
    circuits[k] = graph_circuit(model, graph, opts, ("evaluate_graphs: graph %d"):format(k))
  end
  local results, clean, corrupted = run_circuits(model, data, list, circuits, opts)
  for k = 1, #results do results[k] = unwrap(results[k], many) end
  if opts.baselines then return results, unwrap(clean, many), unwrap(corrupted, many) end
  return results
end

-- evaluate_empty(model, data, metrics, opts): the empty circuit under an intervention (every
-- real edge reads its reference value): m(empty), the zero of faithfulness. Under patching it is
-- the corrupted run. opts as evaluate_graph's.
function M.evaluate_empty(model, data, ms, opts)
  opts = check_eval_opts(opts, "evaluate_empty")
  local list, many = metric_list(ms)
  local NF, NB = model.n_forward, model.n_backward
  local W = core.floats(NF * NB)
  local graph_real = require("eapig.graph").from_model(model).real
  for i = 0, NF * NB - 1 do W[i] = graph_real[i] end
  return unwrap(run_circuits(model, data, list, { { W = W, any = true } }, opts)[1], many)
end

-- evaluate_baseline(model, data, metrics, {run_corrupted}): the model unchanged, on the clean
-- (or corrupted) inputs; clean logits are the reference of metrics that need them.
function M.evaluate_baseline(model, data, ms, opts)
  opts = options.check(opts, { "run_corrupted", "batch_size", "quiet" }, "evaluate_baseline")
  local list, many = metric_list(ms)
  local rows = row_values(#list, #data)
  for b in data:batches(opts.batch_size or options.DEFAULT_BATCH_SIZE) do
    if take_batch(rows) then
      local clean, corrupted = runs.engine_batches(b)
      local clean_logits = model:forward(clean, { logit_pos = b.last_pos })
      local logits = clean_logits
      if opts.run_corrupted then logits = model:forward(corrupted, { logit_pos = b.last_pos }) end
      for i, mt in ipairs(list) do
        put_values(rows, i, b, runs.metric_values(model, mt, b, logits, clean_logits, b.rows))
      end
    end
  end
  return unwrap(finish_rows(rows), many)
end

local function mean(x)
  if type(x) == "number" then return x end
  local s = 0
  for i = 1, #x do s = s + x[i] end
  return s / #x
end
M.mean = mean

-- Faithfulness as MIB defines it: (m(C) - m(empty)) / (m(N) - m(empty)), where m(N) is the
-- whole model on the clean input (evaluate_baseline) and m(empty) the empty circuit under the
-- same intervention (evaluate_empty; under patching, the corrupted run). 1 when the circuit
-- recovers the model's behaviour, 0 when it recovers nothing more than the empty circuit.
-- Arguments are per-example value lists or their means.
function M.faithfulness(circuit, clean, empty)
  local c, cl, e = mean(circuit), mean(clean), mean(empty)
  if cl == e then
    error("faithfulness: the model and the empty circuit score the same, so faithfulness is undefined " ..
      "(check the baselines: the model may not do the task, or the intervention changes nothing)", 0)
  end
  return (c - e) / (cl - e)
end

return M
