-- Test support: runs every case of a reference manifest (forward logits, attribution scores,
-- circuit selection and evaluation against an independent PyTorch implementation of EAP-IG)
-- within the tolerances the fixtures' README states. A case of a kind this runner does not know
-- fails: a new kind of reference must not pass unchecked.
local cjson = require("cjson")

local M = {}

-- The worst deviation of one case, as a number and a sentence: (kind, case, model, root).
local CHECKS = {}

-- Logits of every real position of the clean rows: max |ours - ref| <= 1e-4.
function CHECKS.forward(case, model, ctx)
  local assert = ctx.assert
  local expected = ctx.read_json(case.expected).logits
  local ds = ctx.dataset(model, case.tokens_from)
  local worst, row = 0, 0
  for b in ds:batches(4) do
    local logits = model:forward({ tokens = b.clean, lengths = b.lengths, B = b.B, P = b.P })
    for i = 0, b.B - 1 do
      row = row + 1
      for p, vec in ipairs(expected[row]) do
        for v, x in ipairs(vec) do
          worst = math.max(worst, math.abs(x - logits[(i * b.P + p - 1) * model.vocab + v - 1]))
        end
      end
    end
  end
  assert.are.equal(#expected, row)
  assert.is_true(worst <= 1e-4, ("max |logit diff| %g"):format(worst))
  return worst
end

-- Scores: max |ours - ref| <= tol * max |ref| (1e-3 for the methods that sum many runs).
function CHECKS.attribute(case, model, ctx)
  local assert = ctx.assert
  local eapig, Graph = ctx.eapig, ctx.eapig.Graph
  local ds = ctx.dataset(model, case.data)
  local graph = Graph.from_model(model)
  eapig.attribute(model, graph, ds, case.metric, { method = case.method, intervention = case.intervention,
    ig_steps = case.ig_steps ~= cjson.null and case.ig_steps or nil, batch_size = case.batch_size,
    intervention_data = case.intervention_data ~= cjson.null and ctx.dataset(model, case.intervention_data) or nil,
    quiet = true })
  local expected = Graph.from_json(ctx.root .. "/" .. case.expected)
  local n = graph.n_forward * graph.n_backward
  local worst, scale = 0, 0
  for i = 0, n - 1 do
    worst = math.max(worst, math.abs(graph.scores[i] - expected.scores[i]))
    scale = math.max(scale, math.abs(expected.scores[i]))
  end
  local tol = (case.method == "exact" or case.method == "EAP-IG-activations") and 1e-3 or 1e-4
  -- KL at the clean input has an exactly zero gradient: the reference holds float32 rounding
  -- noise (~1e-11) there, so an absolute floor far below any real score applies.
  assert.is_true(worst <= tol * scale + 1e-9, ("max diff %g vs max |ref| %g (ratio %g)"):format(worst, scale,
    worst / scale))
  return worst / scale
end

-- Selection: the same edges and nodes.
function CHECKS.select(case, _, ctx)
  local assert = ctx.assert
  local Graph = ctx.eapig.Graph
  local graph = Graph.from_json(ctx.root .. "/" .. case.graph)
  local expected = Graph.from_json(ctx.root .. "/" .. case.expected)
  if case.how == "topn" then graph:apply_topn(case.arg, { absolute = case.absolute })
  elseif case.how == "threshold" then graph:apply_threshold(case.arg, { absolute = case.absolute })
  elseif case.how == "greedy" then graph:apply_greedy(case.arg, { absolute = case.absolute })
  else error(("unknown selection '%s'"):format(tostring(case.how))) end
  graph:prune()
  for i = 0, graph.n_forward * graph.n_backward - 1 do
    assert.are.equal(expected.in_graph[i], graph.in_graph[i])
  end
  for u = 0, graph.n_forward do
    assert.are.equal(expected.nodes_in_graph[u], graph.nodes_in_graph[u])
  end
  return 0
end

-- Evaluation: per-example values, means and baselines within 1e-4 relative.
function CHECKS.evaluate(case, model, ctx)
  local assert = ctx.assert
  local eapig, Graph = ctx.eapig, ctx.eapig.Graph
  local ds = ctx.dataset(model, case.data)
  local graph = Graph.from_json(ctx.root .. "/" .. case.graph)
  local expected = ctx.read_json(case.expected)
  local idata = case.intervention:find("^mean") and ds or nil
  local values = eapig.evaluate_graph(model, graph, ds, case.metric, { intervention = case.intervention,
    intervention_data = idata, batch_size = case.batch_size, quiet = true })
  local baseline = eapig.evaluate_baseline(model, ds, case.metric, { batch_size = case.batch_size })
  local corrupted = eapig.evaluate_baseline(model, ds, case.metric, { batch_size = case.batch_size,
    run_corrupted = true })
  local worst = 0
  local function close(a, b)
    local rel = math.abs(a - b) / math.max(1, math.abs(b))
    worst = math.max(worst, rel)
    return rel <= 1e-4
  end
  assert.are.equal(#expected.per_example, #values)
  for i, v in ipairs(expected.per_example) do
    assert.is_true(close(values[i], v), ("row %d: %g vs %g"):format(i, values[i], v))
    assert.is_true(close(baseline[i], expected.baseline_per_example[i]))
  end
  local ev = require("eapig.evaluate")
  assert.is_true(close(ev.mean(values), expected.mean))
  assert.is_true(close(ev.mean(corrupted), expected.corrupted_baseline_mean))
  assert.are.equal(expected.n_edges, graph:count_included_edges())
  assert.are.equal(expected.n_nodes, graph:count_included_nodes())
  return worst
end

-- Declares one busted `it` per case of root/manifest.json under describe(title), or a pending
-- note when root is absent. busted's functions come from the calling spec (a required module
-- does not see them): b = {describe, it, pending, assert}. report(label, worst), optional,
-- receives each case's deviation.
function M.run(root, title, b, report)
  local describe, it, pending = b.describe, b.it, b.pending
  describe(title, function()
    local manifest_file = io.open(root .. "/manifest.json", "rb")
    if not manifest_file then
      pending(root .. " is absent: reference comparisons skipped")
      return
    end
    local manifest = cjson.decode(manifest_file:read("*a"))
    manifest_file:close()
    local eapig = require("eapig")
    local ctx = { eapig = eapig, root = root, assert = b.assert }
    function ctx.read_json(path)
      local f = assert(io.open(root .. "/" .. path, "rb"))
      local text = f:read("*a")
      f:close()
      return cjson.decode(text)
    end
    function ctx.dataset(model, path)
      return eapig.data.load_jsonl(root .. "/" .. path, { vocab = model.vocab })
    end
    local models = {}
    local function model_of(name)
      models[name] = models[name] or eapig.load(root .. "/" .. name .. "/model")
      return models[name]
    end

    for _, case in ipairs(manifest) do
      local label = ("%s %s %s %s %s"):format(case.model, case.kind, case.method or case.how or "",
        case.intervention or "", case.metric or "")
      it(label, function()
        local check = CHECKS[case.kind]
        assert(check, ("%s: case kind '%s' is unknown to this runner"):format(label, tostring(case.kind)))
        local worst = check(case, model_of(case.model), ctx)
        if report then report(label, worst) end
      end)
    end
  end)
end

M.CHECKS = CHECKS

return M
