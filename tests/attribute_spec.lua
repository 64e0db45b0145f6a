-- Attribution and evaluation on random in-memory models: the identities between methods and
-- levels, and the errors for bad options. The fixture comparisons live in fixtures_spec.lua.
local tiny = require("support.tiny")
local random = require("eapig.rng")
local eapig = require("eapig")
local Graph = eapig.Graph

-- A small id dataset for a tiny model: equal lengths, a few corrupted positions.
local function dataset(model, n, seed) return tiny.dataset(model, n, seed, 6) end

-- A reference of clean activations plus eps-scaled deterministic noise on every node.
local function noisy_reference(eps)
  return function(model, b)
    local R = model:nodes_buffer(b.B, b.P)
    model:forward({ tokens = b.clean, lengths = b.lengths, B = b.B, P = b.P }, { capture = R, no_logits = true })
    local rng = random.new(99)
    for i = 0, model.n_forward * model:block_size(b.B, b.P) - 1 do R[i] = R[i] + eps * rng:normal() end
    return R
  end
end

describe("attribution", function()
  local model = tiny.model("gpt2", 21)
  local ds = dataset(model, 6, 3)

  it("node scores are sums of edge scores and neuron scores sum to node scores", function()
    local edges = Graph.from_model(model)
    eapig.attribute(model, edges, ds, "logit_diff", { method = "EAP", batch_size = 4, quiet = true })
    local nodes = Graph.from_model(model, { level = "node" })
    eapig.attribute(model, nodes, ds, "logit_diff", { method = "EAP", batch_size = 4, quiet = true })
    local neurons = Graph.from_model(model, { level = "neuron" })
    eapig.attribute(model, neurons, ds, "logit_diff", { method = "EAP", batch_size = 4, quiet = true })
    local NF, NB, D = edges.n_forward, edges.n_backward, model.d_model
    for u = 0, NF - 1 do
      local s, n = 0, 0
      for v = 0, NB - 1 do s = s + edges.scores[u * NB + v] end
      for d = 0, D - 1 do n = n + neurons.neuron_scores[u * D + d] end
      local tol = 1e-4 * (1 + math.abs(s))
      assert.is_true(math.abs(nodes.node_scores[u] - s) < tol, ("node %d: %g vs %g"):format(u, nodes.node_scores[u], s))
      assert.is_true(math.abs(n - nodes.node_scores[u]) < tol)
    end
  end)

  it("an exact score is the evaluation without that edge minus the full-graph evaluation", function()
    local graph = Graph.from_model(model)
    eapig.attribute(model, graph, ds, "logit_diff", { method = "exact", batch_size = 6, quiet = true })
    local full = eapig.evaluate_baseline(model, ds, "logit_diff", { batch_size = 6 })
    local checked = 0
    for u = 0, graph.n_forward - 1, 3 do
      for v = 0, graph.n_backward - 1, 7 do
        local idx = u * graph.n_backward + v
        if graph.real[idx] == 1 then
          local g = graph:clone()
          for i = 0, g.n_forward * g.n_backward - 1 do g.in_graph[i] = g.real[i] end
          for n = 0, g.n_forward do g.nodes_in_graph[n] = 1 end
          g.in_graph[idx] = 0
          local without = eapig.evaluate_graph(model, g, ds, "logit_diff", { batch_size = 6, quiet = true })
          -- logit_diff: higher is better, so the loss (and the score) is its negation
          local expected = -(eapig.evaluate_graph and require("eapig.evaluate").mean(without) -
            require("eapig.evaluate").mean(full))
          assert.is_true(math.abs(graph.scores[idx] - expected) < 1e-5 * (1 + math.abs(expected)))
          checked = checked + 1
        end
      end
    end
    assert.is_true(checked > 5)
  end)

  it("EAP scores approach exact ones as the corruption shrinks", function()
    local function ratio_error(eps)
      local ref = noisy_reference(eps)
      local eap = Graph.from_model(model)
      eapig.attribute(model, eap, ds, "logit_diff", { method = "EAP", reference = ref, batch_size = 6, quiet = true })
      local exact = Graph.from_model(model)
      eapig.attribute(model, exact, ds, "logit_diff", { method = "exact", reference = ref, batch_size = 6, quiet = true })
      -- EAP-IG's convention divides gradient scores by the number of items after taking batch
      -- means, while exact scores are means of batch means: one batch of 6 puts a factor 6 between.
      local num, den = 0, 0
      for i = 0, eap.n_forward * eap.n_backward - 1 do
        num = num + math.abs(exact.scores[i] - 6 * eap.scores[i])
        den = den + math.abs(6 * eap.scores[i])
      end
      return num / den
    end
    local big, small = ratio_error(3e-2), ratio_error(3e-3)
    assert.is_true(small < 0.3 * big, ("%g then %g"):format(big, small))
    assert.is_true(small < 0.02, tostring(small))
  end)

  it("EAP-IG-inputs with one step is EAP at the corrupted input", function()
    -- k = 0 only: the gradient taken at the corrupted embeddings.
    local ig = Graph.from_model(model)
    eapig.attribute(model, ig, ds, "logit_diff", { method = "EAP-IG-inputs", ig_steps = 1, batch_size = 4, quiet = true })
    local cc = Graph.from_model(model)
    eapig.attribute(model, cc, ds, "logit_diff", { method = "clean-corrupted", batch_size = 4, quiet = true })
    local eap = Graph.from_model(model)
    eapig.attribute(model, eap, ds, "logit_diff", { method = "EAP", batch_size = 4, quiet = true })
    -- clean-corrupted averages the clean and corrupted gradients
    for i = 0, ig.n_forward * ig.n_backward - 1 do
      local mix = (ig.scores[i] + eap.scores[i]) / 2
      assert.is_true(math.abs(cc.scores[i] - mix) < 1e-4 * (1 + math.abs(mix)))
    end
  end)

  it("the full circuit evaluates to the clean model and the empty one to the corrupted", function()
    local graph = Graph.from_model(model)
    eapig.attribute(model, graph, ds, "logit_diff", { method = "EAP", batch_size = 4, quiet = true })
    local clean = eapig.evaluate_baseline(model, ds, "logit_diff")
    local corrupted = eapig.evaluate_baseline(model, ds, "logit_diff", { run_corrupted = true })
    graph:apply_topn(graph:n_edges())
    local full = eapig.evaluate_graph(model, graph, ds, "logit_diff", { quiet = true })
    assert.is_true(math.abs(eapig.faithfulness(full, clean, corrupted) - 1) < 1e-5)
    graph:reset(true)
    local empty = eapig.evaluate_graph(model, graph, ds, "logit_diff", { quiet = true })
    assert.is_true(math.abs(eapig.faithfulness(empty, clean, corrupted)) < 1e-4)
  end)

  it("neuron masks: a node without its neurons is patched like a node without its edges", function()
    local NF, NB, D = model.n_forward, model.n_backward, model.d_model
    local neurons = Graph.from_model(model, { level = "neuron" })
    local edges = Graph.from_model(model)
    for _, g in ipairs({ neurons, edges }) do
      for i = 0, NF * NB - 1 do g.in_graph[i] = g.real[i] end
      for n = 0, NF do g.nodes_in_graph[n] = 1 end
    end
    for i = 0, NF * D - 1 do neurons.neurons_in_graph[i] = 1 end
    local clean = eapig.evaluate_baseline(model, ds, "logit_diff")
    local all_in = eapig.evaluate_graph(model, neurons, ds, "logit_diff", { quiet = true, prune = false })
    for i = 1, #clean do assert.is_true(math.abs(all_in[i] - clean[i]) < 1e-5) end
    local u = 3 -- a0.h2
    for d = 0, D - 1 do neurons.neurons_in_graph[u * D + d] = 0 end
    for v = 0, NB - 1 do edges.in_graph[u * NB + v] = 0 end
    local a = eapig.evaluate_graph(model, neurons, ds, "logit_diff", { quiet = true, prune = false })
    local b = eapig.evaluate_graph(model, edges, ds, "logit_diff", { quiet = true, prune = false })
    local moved = 0
    for i = 1, #a do
      assert.is_true(math.abs(a[i] - b[i]) < 1e-5)
      moved = math.max(moved, math.abs(a[i] - clean[i]))
    end
    assert.is_true(moved > 1e-3) -- the ablation did something
  end)

  describe("bad options", function()
    local graph = Graph.from_model(model)
    local function attr(opts) opts.quiet = true return eapig.attribute(model, graph, ds, "logit_diff", opts) end
    it("names an unknown method", function()
      assert.has_error(function() attr({ method = "EAPX" }) end,
        "unknown method 'EAPX' (expected one of: EAP, EAP-IG-inputs, EAP-IG-activations, clean-corrupted, exact, information-flow-routes)")
    end)
    it("names an unknown intervention", function()
      assert.has_error(function() attr({ method = "EAP", intervention = "blur" }) end,
        "unknown intervention 'blur' (expected patching, zero, mean or mean-positional)")
    end)
    it("refuses mean ablation without intervention data", function()
      assert.has_error(function() attr({ method = "EAP", intervention = "mean" }) end,
        "intervention 'mean' needs intervention_data (the dataset to average over)")
    end)
    it("refuses EAP-IG-inputs with zero ablation", function()
      assert.has_error(function() attr({ method = "EAP-IG-inputs", intervention = "zero" }) end,
        "method 'EAP-IG-inputs' needs intervention 'patching', got 'zero'")
    end)
    it("refuses a graph of another model", function()
      local other = Graph.new({ n_layers = 3, n_heads = 4, d_model = 16 })
      assert.has_error(function() eapig.attribute(model, other, ds, "logit_diff", { quiet = true }) end)
    end)
    it("refuses an unknown aggregation and a bad step count", function()
      assert.has_error(function() attr({ aggregation = "max" }) end, "unknown aggregation 'max' (expected sum or mean)")
      assert.has_error(function() attr({ ig_steps = 0 }) end, "ig_steps must be a positive integer, got 0")
    end)
    it("names the row whose metric is NaN", function()
      local nan_metric = eapig.metrics.define({ name = "nan_metric", higher_is_better = true,
        fn = function(x) return x.logits:gather({ 0 }):log():log():log() end })
      local ok, err = pcall(eapig.attribute, model, graph, ds, nan_metric, { method = "EAP", quiet = true })
      assert.is_false(ok)
      assert.matches("nan_metric, row %d+", err)
    end)
  end)
end)
