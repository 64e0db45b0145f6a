-- Node and neuron levels of the gradient methods: a node's score is the sum of its out-edge
-- scores from an edge-level run of the same method, and its neurons' scores sum to it.
local tiny = require("support.tiny")
local eapig = require("eapig")
local Graph = eapig.Graph

local function dataset(model, n, seed) return tiny.dataset(model, n, seed, 5) end

describe("node and neuron levels", function()
  for _, case in ipairs({ { "gpt2", "EAP-IG-activations", "patching" }, { "neox", "EAP-IG-activations", "zero" },
    { "llama", "EAP-IG-inputs", "patching" } }) do
    local kind, method, intervention = case[1], case[2], case[3]
    it(("%s on %s (%s): nodes sum their out-edges, neurons sum to nodes"):format(method, kind, intervention), function()
      local model = tiny.model(kind, 31)
      local ds = dataset(model, 5, 4)
      local opts = { method = method, ig_steps = 3, intervention = intervention, batch_size = 3, quiet = true }
      local edges = Graph.from_model(model)
      eapig.attribute(model, edges, ds, "logit_diff", opts)
      local nodes = Graph.from_model(model, { level = "node" })
      eapig.attribute(model, nodes, ds, "logit_diff", opts)
      local neurons = Graph.from_model(model, { level = "neuron" })
      eapig.attribute(model, neurons, ds, "logit_diff", opts)
      local NF, NB, D = edges.n_forward, edges.n_backward, model.d_model
      local any = false
      for u = 0, NF - 1 do
        local s, n = 0, 0
        for v = 0, NB - 1 do s = s + edges.scores[u * NB + v] end
        for d = 0, D - 1 do n = n + neurons.neuron_scores[u * D + d] end
        local tol = 1e-4 * (1 + math.abs(s))
        assert.is_true(math.abs(nodes.node_scores[u] - s) < tol,
          ("node %d: %g vs %g"):format(u, nodes.node_scores[u], s))
        assert.is_true(math.abs(n - nodes.node_scores[u]) < tol)
        assert.is_true(math.abs(nodes.node_scores[u] - neurons.node_scores[u]) < tol)
        any = any or math.abs(s) > 1e-6
      end
      assert.is_true(any, "every node score is zero: the check would be empty")
    end)
  end
end)
