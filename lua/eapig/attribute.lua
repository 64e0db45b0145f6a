-- eapig.attribute: EAP-IG's attribution methods, with its conventions (docs/conventions.md):
-- the loss is the batch mean of the metric, negated when higher is better; scores are summed
-- over batches, positions and d_model, then divided by the number of items (and by the number
-- of gradient runs for the integrated-gradient methods).
--
-- Every method is a loop in Lua over batches around two engine calls: a patched or overridden
-- forward, and the backward that streams destination gradients into the score matrix.
local core = require("eapig.core")
local indices = require("eapig.indices")
local metrics = require("eapig.metrics")
local runs = require("eapig.runs")
local Progress = require("eapig.progress")
local parallel = require("eapig.parallel")
local memory = require("eapig.memory")
local options = require("eapig.options")
local ffi, C = core.ffi, core.C

local M = {}

M.METHODS = { "EAP", "EAP-IG-inputs", "EAP-IG-activations", "clean-corrupted", "exact",
  "information-flow-routes" }
local METHODS = M.METHODS
local NODE_METHODS = { EAP = true, ["EAP-IG-inputs"] = true, ["EAP-IG-activations"] = true, exact = true }

local function known(list, x)
  for _, v in ipairs(list) do if v == x then return true end end
  return false
end

-- The accumulators a method fills: edge scores always, node and neuron scores on those levels.
local function new_sums(model, level)
  local NF, NB = model.n_forward, model.n_backward
  local s = { edges = core.floats(NF * NB) }
  if level ~= "edge" then
    s.nodes = core.floats(NF)
    if level == "neuron" then s.neurons = core.floats(NF * model.d_model) end
  end
  return s
end

-- One gradient run: forward (already done with keep) -> metric gradient -> scores.
local function backward_into(model, sums, b, metric, logits, clean_logits, rows, sign, diff, diff_B)
  local dlogits = core.floats(#rows * model.vocab)
  runs.metric_values(model, metric, b, logits, clean_logits, rows, dlogits, sign / b.B)
  model:backward(dlogits, { diff = diff, diff_B = diff_B, scores = sums.edges, node_scores = sums.nodes,
    neuron_scores = sums.neurons })
end

local function clean_run(model, clean, pos, capture)
  return model:forward(clean, { logit_pos = pos, capture = capture })
end

-- EAP: one gradient at the clean input.
local function eap(ctx, b)
  local model = ctx.model
  local diff, logits = runs.clean_difference(model, b, ctx.intervention, ctx.means, ctx.reference)
  backward_into(model, ctx.sums, b, ctx.metric, logits, logits, b.rows, ctx.sign, diff)
  return 1
end

-- Alphas 1 - k/m of the given steps k: the weights of the difference R - clean in
-- alpha clean + (1 - alpha) R = clean + (1 - alpha)(R - clean).
local function step_alphas(steps, first, n, m)
  local a = core.floats(n)
  for s = 0, n - 1 do a[s] = 1 - steps[first + s] / m end
  return a
end

-- Runs `steps` overridden copies of the batch in chunks of ctx.steps_per_run steps (as many as
-- the memory budget allows): make_value(first_step, n_steps) returns the override buffer for
-- those steps.
local function batched_steps(ctx, b, clean, clean_logits, diff, group, steps, make_value)
  local model = ctx.model
  local per = ctx.steps_per_run
  local first = 1
  while first <= #steps do
    local n = math.min(per, #steps - first + 1)
    local rep, rpos = runs.repeat_batch(clean, b.last_pos, n)
    local value = make_value(first, n)
    local logits = model:forward(rep, { logit_pos = rpos, override_group = group, override_value = value,
      keep = true })
    local rows = runs.repeat_rows(b.rows, n)
    local cl = clean_logits and runs.repeat_floats(clean_logits, b.B * model.vocab, n)
    backward_into(model, ctx.sums, b, ctx.metric, logits, cl, rows, ctx.sign, diff, b.B)
    first = first + n
  end
end

-- The workspace of the batch's largest run (n_steps integrated-gradient steps in one run), made
-- before its first run: the smaller runs before it then reuse that memory instead of each
-- faulting in an arena of its own size.
local function reserve_steps(ctx, b, n_steps)
  ctx.model:reserve(b.B * math.max(1, math.min(ctx.steps_per_run, n_steps)), b.P, b.B, C.EAPIG_RUN_KEEP)
end

-- EAP-IG-inputs: embeddings e_corr + (k/m)(e_clean - e_corr), k = 0..m-1. The k = 0 step is
-- the corrupted run itself, so its forward also provides the reference capture.
local function eap_ig_inputs(ctx, b)
  local model, m = ctx.model, ctx.steps
  reserve_steps(ctx, b, m - 1)
  local clean, corrupted = runs.engine_batches(b)
  local blk = model:block_size(b.B, b.P)
  -- one buffer: the clean capture, turned into corrupted - clean by the corrupted run
  local diff = runs.nodes(model, b.B, b.P)
  local clean_logits = clean_run(model, clean, b.last_pos, diff)
  local embed_c = core.batch_floats(blk)
  ffi.copy(embed_c, diff, 4 * blk)
  local logits_r = model:forward(corrupted, { logit_pos = b.last_pos, capture = diff, capture_diff = -1, keep = true })
  backward_into(model, ctx.sums, b, ctx.metric, logits_r, clean_logits, b.rows, ctx.sign, diff)
  local steps = {}
  for k = 1, m - 1 do steps[#steps + 1] = k end
  batched_steps(ctx, b, clean, clean_logits, diff, 0, steps, function(first, n)
    local value = core.batch_floats(n * blk)
    core.check(C.eapig_interpolate(value, embed_c, diff, step_alphas(steps, first, n, m), n, 1, blk), "EAP-IG-inputs")
    return value
  end)
  return m
end

-- EAP-IG-activations: each group in turn (input; all heads of a layer; an MLP) is replaced by
-- the constant (k/m) clean + (1 - k/m) R for k = 1..m.
local function eap_ig_activations(ctx, b)
  local model, m = ctx.model, ctx.steps
  reserve_steps(ctx, b, m)
  local clean = runs.engine_batches(b)
  local blk = model:block_size(b.B, b.P)
  local n = model.n_forward * blk
  local diff = runs.reference(model, b, ctx.intervention, ctx.means, ctx.reference)
  local cap_c = runs.nodes(model, b.B, b.P)
  local clean_logits = clean_run(model, clean, b.last_pos, cap_c)
  local minus_one = core.floats(1)
  minus_one[0] = -1
  if ctx.reference then -- leave the user's buffer as it was
    local own = core.batch_floats(n)
    core.check(C.eapig_interpolate(own, diff, cap_c, minus_one, 1, 1, n), "EAP-IG-activations")
    diff = own
  else
    core.check(C.eapig_interpolate(diff, diff, cap_c, minus_one, 1, 1, n), "EAP-IG-activations")
  end
  local H, L = model.n_heads, model.n_layers
  local steps = {}
  for k = 1, m do steps[k] = k end
  for group = 0, indices.n_groups(L) - 1 do
    local u0, count = indices.group_nodes(H, group)
    batched_steps(ctx, b, clean, clean_logits, diff, group, steps, function(first, n_steps)
      -- override layout: (node in group, step-major rows, P, D)
      local value = core.batch_floats(count * n_steps * blk)
      core.check(C.eapig_interpolate(value, cap_c + u0 * blk, diff + u0 * blk, step_alphas(steps, first, n_steps, m),
        n_steps, count, blk), "EAP-IG-activations")
      return value
    end)
  end
  return indices.n_groups(L) * m
end

-- clean-corrupted: the gradient at the clean input plus the gradient at the corrupted input.
local function clean_corrupted(ctx, b)
  local model = ctx.model
  local clean, corrupted = runs.engine_batches(b)
  local diff = runs.nodes(model, b.B, b.P)
  model:forward(corrupted, { capture = diff, no_logits = true })
  local clean_logits = model:forward(clean, { logit_pos = b.last_pos, capture = diff, capture_diff = 1, keep = true })
  backward_into(model, ctx.sums, b, ctx.metric, clean_logits, clean_logits, b.rows, ctx.sign, diff)
  local logits_r = model:forward(corrupted, { logit_pos = b.last_pos, keep = true })
  backward_into(model, ctx.sums, b, ctx.metric, logits_r, clean_logits, b.rows, ctx.sign, diff)
  return 2
end

-- The batch-mean loss of a (possibly patched) forward.
local function batch_loss(ctx, b, opts, clean_logits)
  local model = ctx.model
  local clean = runs.engine_batches(b)
  opts.logit_pos = b.last_pos
  local logits = model:forward(clean, opts)
  local values = runs.metric_values(model, ctx.metric, b, logits, clean_logits or logits, b.rows)
  local s = 0
  for i = 1, #values do s = s + values[i] end
  return ctx.sign * s / #values
end

-- Real in-edges of each destination's node and real out-edges of each source: removing an edge
-- that is a node's only link makes EAP-IG's evaluate_graph prune the whole node, so those few
-- edges are evaluated through a pruned copy of the graph instead of a single patched edge.
local function degrees(graph)
  local NF, NB, H = graph.n_forward, graph.n_backward, graph.cfg.n_heads
  local out_deg, in_deg = {}, {}
  local function dest_node(v) -- heads' q, k and v slots share one node
    local l = indices.dest_layer(H, v)
    local j = v - indices.first_dest(H, l)
    if v == NB - 1 then return "logits" end
    if v == indices.mlp_dest(H, l) then return "m" .. l end
    return ("a%d.h%d"):format(l, j % H)
  end
  for u = 0, NF - 1 do
    out_deg[u] = 0
    for v = 0, NB - 1 do
      if graph.real[u * NB + v] == 1 then
        out_deg[u] = out_deg[u] + 1
        local node = dest_node(v)
        in_deg[node] = (in_deg[node] or 0) + 1
      end
    end
  end
  return out_deg, in_deg, dest_node
end

-- Patching weights of the full graph without edge idx, pruned as EAP-IG's evaluate_graph does.
local function pruned_weights(graph, idx, W)
  local g = graph:clone()
  local n = g.n_forward * g.n_backward
  for i = 0, n - 1 do g.in_graph[i] = g.real[i] end
  for u = 0, g.n_forward do g.nodes_in_graph[u] = 1 end
  g.in_graph[idx] = 0
  g:prune()
  for i = 0, n - 1 do W[i] = (g.real[i] == 1 and g.in_graph[i] == 0) and 1 or 0 end
end

-- The first layer whose destinations W patches (L when only the logits): the run can resume there.
local function first_patched_layer(model, W)
  local NF, NB = model.n_forward, model.n_backward
  local first = NB - 1
  for u = 0, NF - 1 do
    for v = 0, first - 1 do
      if W[u * NB + v] ~= 0 then first = v break end
    end
  end
  return indices.dest_layer(model.n_heads, first)
end

-- exact: for each real edge (or node), the loss with only it patched minus the full-graph loss,
-- each a mean over batches of batch means. Each patched run resumes from the clean run at the
-- first layer it changes, so an edge into layer l costs only the layers from l on.
local function exact(ctx, b)
  local model, graph = ctx.model, ctx.graph
  local NF, NB, L = model.n_forward, model.n_backward, model.n_layers
  local R = runs.reference(model, b, ctx.intervention, ctx.means, ctx.reference)
  local clean = runs.engine_batches(b)
  local blk = model:block_size(b.B, b.P)
  local cap, resid = runs.nodes(model, b.B, b.P), core.batch_floats(indices.n_readers(L) * blk)
  local clean_logits = model:forward(clean, { logit_pos = b.last_pos, capture = cap, resid = resid })
  local baseline = batch_loss(ctx, b, {}, clean_logits)
  local W = core.floats(NF * NB)
  local real = graph.real
  ctx.degrees = ctx.degrees or { degrees(graph) }
  local out_deg, in_deg, dest_node = ctx.degrees[1], ctx.degrees[2], ctx.degrees[3]
  local function loss(layer)
    local opts = { patch_ref = R, patch_w = W }
    if layer > 0 then
      opts.start_layer, opts.start_resid, opts.start_capture = layer, resid + indices.attn_reader(layer) * blk, cap
    end
    return batch_loss(ctx, b, opts, clean_logits) - baseline
  end
  for u = 0, NF - 1 do
    if ctx.level ~= "edge" then
      for v = 0, NB - 1 do W[u * NB + v] = real[u * NB + v] end
      ctx.sums.nodes[u] = ctx.sums.nodes[u] + loss(first_patched_layer(model, W))
      for v = 0, NB - 1 do W[u * NB + v] = 0 end
      ctx.progress:step()
    else
      for v = 0, NB - 1 do
        local idx = u * NB + v
        if real[idx] == 1 then
          if out_deg[u] == 1 or in_deg[dest_node(v)] == 1 then
            pruned_weights(graph, idx, W)
            ctx.sums.edges[idx] = ctx.sums.edges[idx] + loss(first_patched_layer(model, W))
            ffi.fill(W, 4 * NF * NB)
          else
            W[idx] = 1
            ctx.sums.edges[idx] = ctx.sums.edges[idx] + loss(indices.dest_layer(model.n_heads, v))
            W[idx] = 0
          end
          ctx.progress:step()
        end
      end
    end
  end
  return 1
end

-- Ferrando et al.'s information-flow routes: proximity max(0, |x_v|_1 - |o_u - x_v|_1) of each
-- source's output to a destination's input, normalised over sources, averaged over real positions.
local function information_flow_routes(ctx, b)
  local model = ctx.model
  local clean = runs.engine_batches(b)
  local B, P, D = b.B, b.P, model.d_model
  local H, L, NB = model.n_heads, model.n_layers, model.n_backward
  local blk = B * P * D
  local cap = runs.nodes(model, B, P)
  local resid = core.batch_floats(indices.n_readers(L) * blk)
  model:forward(clean, { capture = cap, resid = resid, no_logits = true })
  local imp = ffi.new("double[?]", model.n_forward)
  local S = ctx.sums.edges
  -- a reader: its residual block ri, its upstream count and its destination columns
  local function add(ri, n_up, cols)
    ffi.fill(imp, 8 * n_up)
    core.check(C.eapig_flow_importance(imp, resid + ri * blk, cap, n_up, b.lengths, B, P, D),
      "information-flow-routes")
    for _, v in ipairs(cols) do
      for u = 0, n_up - 1 do S[u * NB + v] = S[u * NB + v] + imp[u] end
    end
  end
  for l = 0, L - 1 do
    local cols = {}
    for j = 0, 3 * H - 1 do cols[#cols + 1] = indices.first_dest(H, l) + j end
    add(indices.attn_reader(l), indices.first_node(H, l), cols)
    add(indices.mlp_reader(l), indices.mlp_upstream(H, l, model.parallel_attn_mlp), { indices.mlp_dest(H, l) })
  end
  add(indices.logits_reader(L), model.n_forward, { NB - 1 })
  return 1
end

local RUNNERS = {
  EAP = eap, ["EAP-IG-inputs"] = eap_ig_inputs, ["EAP-IG-activations"] = eap_ig_activations,
  ["clean-corrupted"] = clean_corrupted, exact = exact, ["information-flow-routes"] = information_flow_routes,
}

-- The options attribute reads; any other key is an error naming the nearest of these.
M.OPTIONS = { "method", "intervention", "intervention_data", "reference", "aggregation", "ig_steps", "batch_size",
  "quiet", "memory" }
-- EAP-IG's positional order after the metric: attribute(model, graph, dataloader, metric, method,
-- intervention, aggregation, ig_steps, intervention_dataloader, quiet).
local POSITIONAL = { "method", "intervention", "aggregation", "ig_steps", "intervention_data", "quiet" }

-- The options of a call, from a table or from EAP-IG's positional shape: a method string, then
-- either an options table or the remaining positional arguments.
local function call_options(opts, ...)
  if type(opts) ~= "string" then return require("eapig.options").check(opts, M.OPTIONS, "attribute") end
  local rest = { ... }
  local o = { method = opts }
  if type(rest[1]) == "table" then
    for k, v in pairs(require("eapig.options").check(rest[1], M.OPTIONS, "attribute")) do
      if k == "method" then error("attribute: the method is given twice (as an argument and as opts.method)", 0) end
      o[k] = v
    end
    return o
  end
  for i = 1, select("#", ...) do
    local name = POSITIONAL[i + 1]
    if not name then error("attribute: too many arguments (EAP-IG's order: " .. table.concat(POSITIONAL, ", ") .. ")", 0) end
    o[name] = rest[i]
  end
  return o
end

-- attribute(model, graph, data, metric, opts): fills graph.scores (edge level) or the node and
-- neuron scores (node and neuron levels) and returns the graph. opts: method ("EAP-IG-inputs"),
-- intervention ("patching"), intervention_data, reference, aggregation ("sum"), ig_steps (5),
-- batch_size (8), quiet. EAP-IG's call shape works too: attribute(model, graph, data, metric,
-- "EAP-IG-inputs", {ig_steps = 5}) or with EAP-IG's positional arguments after the method.
function M.attribute(model, graph, data, metric, opts, ...)
  opts = call_options(opts, ...)
  local method = opts.method or "EAP-IG-inputs"
  if not known(METHODS, method) then
    error(("unknown method '%s' (expected one of: %s)"):format(tostring(method), table.concat(METHODS, ", ")), 0)
  end
  local intervention = opts.intervention or "patching"
  runs.check_intervention(intervention, opts.intervention_data, opts.reference)
  if opts.reference then intervention = "custom" end
  if (method == "EAP-IG-inputs" or method == "clean-corrupted") and intervention ~= "patching" then
    error(("method '%s' needs intervention 'patching', got '%s'"):format(method, intervention), 0)
  end
  local aggregation = opts.aggregation or "sum"
  if aggregation ~= "sum" and aggregation ~= "mean" then
    error(("unknown aggregation '%s' (expected sum or mean)"):format(tostring(aggregation)), 0)
  end
  local level = graph.level or "edge"
  if level ~= "edge" and not NODE_METHODS[method] then
    error(("method '%s' has no %s-level form (use EAP, EAP-IG-inputs, EAP-IG-activations or exact)"):format(method, level), 0)
  end
  if level == "neuron" and method == "exact" then
    error("method 'exact' has no neuron-level form", 0)
  end
  graph:check_matches(model:info())
  local steps = opts.ig_steps or 5
  if (method == "EAP-IG-inputs" or method == "EAP-IG-activations") and (steps < 1 or steps % 1 ~= 0) then
    error(("ig_steps must be a positive integer, got %s"):format(tostring(steps)), 0)
  end
  local mt = metrics.get(metric)
  if mt.eval_only and method ~= "exact" and method ~= "information-flow-routes" then
    error(("metric '%s' has no gradient; it can only evaluate"):format(mt.name), 0)
  end
  local batch_size = opts.batch_size or options.DEFAULT_BATCH_SIZE
  -- Before any run: the largest batch must fit the memory budget (opts.memory GiB), and the
  -- budget sets how many integrated-gradient steps share one run.
  local estimate = memory.check(model, { B = math.max(1, math.min(batch_size, #data)), P = memory.longest_row(data),
    method = method, steps = steps, level = level }, memory.budget(opts.memory), "attribute")
  local ctx = {
    model = model, graph = graph, metric = mt, level = level, steps = steps,
    sign = mt.higher_is_better and -1 or 1, intervention = intervention, sums = new_sums(model, level),
    reference = opts.reference, steps_per_run = estimate.steps_per_run or 1,
  }
  if intervention:find("^mean") then
    ctx.means = runs.compute_means(model, opts.intervention_data, intervention == "mean-positional", batch_size)
  end
  local n_items, n_runs, n_batches = 0, 1, 0
  local total, units = #data, nil -- units: progress steps per batch of exact
  if method == "exact" then
    total = 0
    units = level == "edge" and graph:n_edges() or model.n_forward
    for _ in data:batches(batch_size) do total = total + units end
  end
  -- Under mpirun each rank runs its share of the batches (parallel.owns); rank 0's progress bar
  -- counts every batch as it passes it, which tracks the other ranks.
  ctx.progress = Progress.new(method, total, opts.quiet or not parallel.is_root())
  for b in data:batches(batch_size) do
    if parallel.owns(n_batches) then
      n_runs = core.with_batch(RUNNERS[method], ctx, b) -- frees the batch's buffers
    elseif units then
      ctx.progress:step(units) -- this batch runs on another rank
    end
    n_items = n_items + b.B
    n_batches = n_batches + 1
    if method ~= "exact" then ctx.progress:step(b.B) end
  end
  ctx.progress:finish()
  if n_items == 0 then error("attribute: the dataset is empty", 0) end
  -- the other ranks' partial sums (n_runs is the method's: a rank with no batch has the default)
  n_runs = parallel.max(n_runs)
  for _, buf in ipairs({ { ctx.sums.edges, model.n_forward * model.n_backward }, { ctx.sums.nodes, model.n_forward },
    { ctx.sums.neurons, model.n_forward * model.d_model } }) do
    if buf[1] then parallel.sum_floats(buf[1], buf[2]) end
  end

  -- exact averages batch means over batches; the gradient methods divide by items and runs.
  local divisor = method == "exact" and n_batches or n_items * n_runs
  if aggregation == "mean" then divisor = divisor * model.d_model end
  local NF, NB = model.n_forward, model.n_backward
  local real = graph.real
  for i = 0, NF * NB - 1 do
    graph.scores[i] = real[i] == 1 and ctx.sums.edges[i] / divisor or 0
  end
  if ctx.sums.nodes then
    for u = 0, NF - 1 do graph.node_scores[u] = ctx.sums.nodes[u] / divisor end
  end
  if ctx.sums.neurons then
    for i = 0, NF * model.d_model - 1 do graph.neuron_scores[i] = ctx.sums.neurons[i] / divisor end
  end
  return graph
end

return M
