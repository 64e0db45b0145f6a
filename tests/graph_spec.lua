-- Graph layout, selection (top-n, threshold, greedy, prune) on hand-worked graphs, node- and
-- neuron-level selection, errors, and EAP-IG's selections of the shared fixtures.
local Graph = require("eapig.graph")
local cjson = require("cjson")

local read = require("support.files").read

local FIXTURES = require("support.shared").fixtures() -- nil when absent

-- Sets the score of edges given by name.
local function set_scores(g, scores)
  for name, s in pairs(scores) do
    local u, v = g:edge_index(name)
    g.scores[u * g.n_backward + v] = s
  end
end

-- Names of the edges (nodes) in the circuit, as a set.
local function circuit_edges(g)
  local set = {}
  for name, _, in_graph in g:edges() do
    if in_graph then set[name] = true end
  end
  return set
end

local function circuit_nodes(g)
  local set = {}
  for name, _, in_graph in g:nodes() do
    if in_graph and name ~= "logits" then set[name] = true end
  end
  return set
end

local function set_of(list)
  local s = {}
  for _, x in ipairs(list) do s[x] = true end
  return s
end

-- The smallest interesting graph: 1 layer, 1 head. Sources input, a0.h0, m0; destinations
-- a0.h0<q>, <k>, <v>, m0, logits; 8 real edges.
local TINY_SCORES = {
  ["input->a0.h0<q>"] = 0.5,
  ["input->a0.h0<k>"] = -0.9,
  ["input->a0.h0<v>"] = 0.1,
  ["input->m0"] = 0.05,
  ["input->logits"] = 0.3,
  ["a0.h0->m0"] = -0.2,
  ["a0.h0->logits"] = 0.02,
  ["m0->logits"] = 0.4,
}

local function tiny()
  local g = Graph.new({ n_layers = 1, n_heads = 1, d_model = 4 })
  set_scores(g, TINY_SCORES)
  return g
end

describe("Graph layout", function()
  it("has EAP-IG's sizes, names and edge count for GPT-2 small", function()
    local g = Graph.new({ n_layers = 12, n_heads = 12, d_model = 768, family = "gpt2" })
    assert.are.equal(157, g.n_forward)
    assert.are.equal(445, g.n_backward)
    assert.are.equal(32491, g:n_edges())
    assert.are.equal("[eapig.Graph gpt2: 158 nodes, 32491 edges, 0 in circuit]", tostring(g))
    assert.are.equal("input", g.forward_names[0])
    assert.are.equal("a0.h0", g.forward_names[1])
    assert.are.equal("m0", g.forward_names[13])
    assert.are.equal("m11", g.forward_names[156])
    assert.are.equal("a0.h0<q>", g.backward_names[0])
    assert.are.equal("a0.h0<k>", g.backward_names[12])
    assert.are.equal("a0.h11<v>", g.backward_names[35])
    assert.are.equal("m0", g.backward_names[36])
    assert.are.equal("logits", g.backward_names[444])
    assert.are.equal("input->a0.h0<q>", g:edge_name(0, 0))
    assert.are.equal("m11->logits", g:edge_name(156, 444))
  end)

  it("maps names to indices and back", function()
    local g = Graph.new({ n_layers = 3, n_heads = 5, d_model = 8 })
    for u = 0, g.n_forward - 1 do assert.are.equal(u, g:forward_index(g.forward_names[u])) end
    for v = 0, g.n_backward - 1 do assert.are.equal(v, g:backward_index(g.backward_names[v])) end
    assert.are.equal(g.n_forward, g:forward_index("logits"))
    assert.are.equal(g:backward_index("a1.h2<k>"), g:backward_index("a1.h2", "k"))
    assert.are.equal(1 * 16 + 5 + 2, g:backward_index("a1.h2<k>"))
    local u, v = g:edge_index("a0.h2->a1.h3<k>")
    assert.are.equal(3, u)
    assert.are.equal(16 + 5 + 3, v)
    assert.has_error(function() g:forward_index("a9.h0") end, "Graph:forward_index: unknown node 'a9.h0'")
    assert.has_error(function() g:backward_index("a0.h0") end)
  end)

  it("marks an edge real iff its source is upstream", function()
    local function real(g, name) return (g:find_edge(name)) ~= nil end
    local g = Graph.new({ n_layers = 2, n_heads = 2, d_model = 4 })
    assert.is_true(real(g, "input->a0.h0<q>"))
    assert.is_true(real(g, "a0.h1->m0"))
    assert.is_true(real(g, "a0.h1->a1.h0<v>"))
    assert.is_true(real(g, "m0->a1.h1<k>"))
    assert.is_true(real(g, "m1->logits"))
    assert.is_false(real(g, "a0.h0->a0.h1<q>"))
    assert.is_false(real(g, "m0->m0"))
    assert.is_false(real(g, "a1.h0->m0"))
    assert.is_false(real(g, "m1->a1.h0<q>"))
    local p = Graph.new({ n_layers = 2, n_heads = 2, d_model = 4, parallel_attn_mlp = true })
    assert.is_false(real(p, "a0.h1->m0"))
    assert.is_true(real(p, "a0.h1->m1"))
  end)

  it("counts edges by the closed form (sequential and parallel), Llama-3-8B size included", function()
    local function expected(L, H, parallel)
      local n = 0
      for l = 0, L - 1 do
        local up = 1 + l * (H + 1)
        n = n + 3 * H * up + up + (parallel and 0 or H)
      end
      return n + 1 + L * (H + 1)
    end
    for _, c in ipairs({ { 1, 1 }, { 2, 4 }, { 5, 8 }, { 12, 12 } }) do
      for _, par in ipairs({ false, true }) do
        local g = Graph.new({ n_layers = c[1], n_heads = c[2], d_model = 4, parallel_attn_mlp = par })
        assert.are.equal(expected(c[1], c[2], par), g:n_edges())
        local n = 0
        for _ in g:edges() do n = n + 1 end
        assert.are.equal(g:n_edges(), n)
      end
    end
    assert.are.equal(110, Graph.new({ n_layers = 2, n_heads = 4, d_model = 32 }):n_edges())
    assert.are.equal(102, Graph.new({ n_layers = 2, n_heads = 4, d_model = 32, parallel_attn_mlp = true }):n_edges())
    assert.are.equal(1592881, expected(32, 32, false))
  end)

  it("accepts cfg extras and C-style flags, keeps them, and builds from a model", function()
    local model = { info = function() return { n_layers = 2, n_heads = 4, n_kv_heads = 2, d_model = 32,
      parallel_attn_mlp = 0, family = "llama" } end }
    local g = Graph.from_model(model, { level = "node" })
    assert.are.equal("node", g.level)
    assert.are.equal(2, g.cfg.n_kv_heads)
    assert.is_false(g.cfg.parallel_attn_mlp)
    assert.are.equal("[eapig.Graph llama: 12 nodes, 110 edges, 0 in circuit]", tostring(g))
    assert.is_nil(g.neurons_in_graph)
    local n = Graph.new({ n_layers = 1, n_heads = 2, d_model = 3 }, { level = "neuron" })
    assert.is_not_nil(n.neurons_in_graph)
    assert.is_true(n.neuron_scores[0] ~= n.neuron_scores[0]) -- NaN: unscored
    assert.is_true(n.node_scores[0] ~= n.node_scores[0])
  end)

  it("starts empty with logits in, and reset(false) fills every real edge", function()
    local g = tiny()
    assert.are.equal(0, g:count_included_edges())
    assert.are.equal(0, g:count_included_nodes())
    assert.are.equal(1, g.nodes_in_graph[g.n_forward])
    g:reset(false)
    assert.are.equal(8, g:count_included_edges())
    assert.are.equal(3, g:count_included_nodes())
    g:reset()
    assert.are.equal(0, g:count_included_edges())
    assert.are.equal(1, g.nodes_in_graph[g.n_forward])
  end)

  it("iterates nodes with their scores", function()
    local g = tiny()
    g.node_scores[1] = 0.25
    local seen = {}
    for name, score, in_graph in g:nodes() do seen[#seen + 1] = { name, score, in_graph } end
    assert.are.same({ { "input", nil, false }, { "a0.h0", 0.25, false }, { "m0", nil, false },
      { "logits", nil, true } }, seen)
  end)

  it("clones into an independent graph", function()
    local g = tiny()
    local c = g:clone()
    c:apply_topn(5)
    assert.are.equal(0, g:count_included_edges())
    assert.are.equal(5, c:count_included_edges())
    assert.are.equal(g.scores[0], c.scores[0])
  end)
end)

describe("Graph edge selection on a hand-worked graph", function()
  it("top-n keeps the largest |scores| and prunes dangling parts", function()
    local g = tiny()
    g:apply_topn(5)
    assert.are.same(set_of({ "input->a0.h0<k>", "input->a0.h0<q>", "m0->logits", "input->logits", "a0.h0->m0" }),
      circuit_edges(g))
    assert.are.same(set_of({ "input", "a0.h0", "m0" }), circuit_nodes(g))
  end)

  it("top-n without prune leaves the raw choice; prune then removes what cannot reach both ends", function()
    local g = tiny()
    g:apply_topn(3, { prune = false })
    assert.are.same(set_of({ "input->a0.h0<k>", "input->a0.h0<q>", "m0->logits" }), circuit_edges(g))
    -- a0.h0 has no outgoing edge and m0 no incoming one: only input has both
    assert.are.same(set_of({ "input" }), circuit_nodes(g))
    g:prune()
    assert.are.same({}, circuit_edges(g))
    assert.are.same({}, circuit_nodes(g))
    assert.are.equal(1, g.nodes_in_graph[g.n_forward]) -- logits stays
  end)

  it("top-n on signed scores", function()
    local g = tiny()
    g:apply_topn(4, { absolute = false })
    -- 0.5 (q), 0.4 (m0->logits), 0.3 (input->logits), 0.1 (v): only input->logits survives
    assert.are.same(set_of({ "input->logits" }), circuit_edges(g))
    assert.are.same(set_of({ "input" }), circuit_nodes(g))
  end)

  it("top-n breaks ties by edge (matrix) order", function()
    local g = Graph.new({ n_layers = 1, n_heads = 1, d_model = 4 })
    set_scores(g, { ["input->m0"] = 1, ["a0.h0->logits"] = 1, ["input->logits"] = 1, ["m0->logits"] = 1 })
    g:apply_topn(2, { prune = false })
    -- equal |score|: input's row comes first, and within it m0 before logits
    assert.are.same(set_of({ "input->m0", "input->logits" }), circuit_edges(g))
    g:apply_topn(3, { prune = false })
    assert.are.same(set_of({ "input->m0", "input->logits", "a0.h0->logits" }), circuit_edges(g))
  end)

  it("top-n with n = 0 and n = all edges", function()
    local g = tiny()
    g:apply_topn(0)
    assert.are.equal(0, g:count_included_edges())
    g:apply_topn(8)
    assert.are.equal(8, g:count_included_edges())
    assert.are.equal(3, g:count_included_nodes())
  end)

  it("threshold keeps scores >= t, compared in float32", function()
    local g = tiny()
    g:apply_threshold(0.15)
    assert.are.same(set_of({ "input->a0.h0<k>", "input->a0.h0<q>", "m0->logits", "input->logits", "a0.h0->m0" }),
      circuit_edges(g))
    g:apply_threshold(0.25)
    assert.are.same(set_of({ "input->logits" }), circuit_edges(g))
    g:apply_threshold(0.3, { prune = false }) -- 0.3 is stored as float32 and still passes
    assert.is_true(circuit_edges(g)["input->logits"])
    g:apply_threshold(0.45, { absolute = false, prune = false })
    assert.are.same(set_of({ "input->a0.h0<q>" }), circuit_edges(g))
  end)

  it("greedy grows from the logits upward", function()
    local g = tiny()
    g:apply_greedy(4)
    -- m0->logits (0.4), input->logits (0.3), a0.h0->m0 (0.2, m0 is in), input->a0.h0<k> (0.9, a0.h0 is in)
    assert.are.same(set_of({ "m0->logits", "input->logits", "a0.h0->m0", "input->a0.h0<k>" }), circuit_edges(g))
    assert.are.same(set_of({ "input", "a0.h0", "m0" }), circuit_nodes(g))
    -- top-4 by score alone would keep only input->logits after pruning
    g:apply_topn(4)
    assert.are.same(set_of({ "input->logits" }), circuit_edges(g))
  end)

  it("greedy with too few edges to connect prunes to what is connected", function()
    local g = tiny()
    g:apply_greedy(3, { prune = false })
    assert.are.same(set_of({ "m0->logits", "input->logits", "a0.h0->m0" }), circuit_edges(g))
    assert.are.same(set_of({ "input", "a0.h0", "m0" }), circuit_nodes(g))
    g:prune()
    assert.are.same(set_of({ "input->logits" }), circuit_edges(g))
    assert.are.same(set_of({ "input" }), circuit_nodes(g))
  end)

  it("greedy on signed scores", function()
    local g = tiny()
    g:apply_greedy(3, { absolute = false, prune = false })
    -- into logits: 0.4 (m0), 0.3 (input), 0.02 (a0.h0); m0 adds input->m0 (0.05), a0.h0->m0 (-0.2)
    assert.are.same(set_of({ "m0->logits", "input->logits", "input->m0" }), circuit_edges(g))
  end)

  it("prune runs to a fixed point along a chain", function()
    local g = Graph.new({ n_layers = 3, n_heads = 1, d_model = 4 })
    -- input -> a0.h0 -> m1 -> a2.h0 (a2.h0 has no way out) and input -> logits
    for _, name in ipairs({ "input->a0.h0<q>", "a0.h0->m1", "m1->a2.h0<v>", "input->logits" }) do
      local u, v = g:edge_index(name)
      g.in_graph[u * g.n_backward + v] = 1
    end
    g:prune()
    assert.are.same(set_of({ "input->logits" }), circuit_edges(g))
    assert.are.same(set_of({ "input" }), circuit_nodes(g))
  end)

  it("counts weighted edges as plain edges without neurons", function()
    local g = tiny()
    g:apply_topn(5)
    assert.are.equal(5, g:weighted_edge_count())
  end)
end)

describe("Graph node and neuron selection", function()
  local function scored_graph(level)
    local g = Graph.new({ n_layers = 3, n_heads = 3, d_model = 4 }, { level = level })
    math.randomseed(7)
    for i = 0, g.n_forward * g.n_backward - 1 do g.scores[i] = math.random() - 0.5 end
    for u = 0, g.n_forward - 1 do g.node_scores[u] = (u * 37 % 11) - 5 + u * 0.01 end
    return g
  end

  local function top_nodes(g, n)
    local order = {}
    for u = 0, g.n_forward - 1 do order[#order + 1] = u end
    table.sort(order, function(a, b) return math.abs(g.node_scores[a]) > math.abs(g.node_scores[b]) end)
    local chosen = {}
    for i = 1, n do chosen[order[i]] = true end
    return chosen
  end

  it("node top-n without prune keeps exactly the chosen nodes and their real outgoing edges", function()
    local g = scored_graph("node")
    local chosen = top_nodes(g, 5)
    g:apply_topn(5, { level = "node", prune = false })
    for u = 0, g.n_forward - 1 do
      assert.are.equal(chosen[u] and 1 or 0, g.nodes_in_graph[u])
      for v = 0, g.n_backward - 1 do
        local i = u * g.n_backward + v
        assert.are.equal((chosen[u] and g.real[i] == 1) and 1 or 0, g.in_graph[i])
      end
    end
  end)

  it("node top-n with prune keeps only edges between chosen nodes (and logits)", function()
    local g = scored_graph("node")
    local chosen = top_nodes(g, 6)
    g:apply_topn(6, { level = "node" })
    assert.is_true(g:count_included_edges() > 0)
    for _, _, in_graph, u, v in g:edges() do
      if in_graph then
        local owner = g._dst_owner[v]
        assert.is_true(chosen[u])
        assert.is_true(owner == g.n_forward or chosen[owner])
      end
    end
    for u = 0, g.n_forward - 1 do
      if g.nodes_in_graph[u] ~= 0 then assert.is_true(chosen[u]) end
    end
  end)

  it("keeps unscored nodes in, and thresholds nodes", function()
    local g = scored_graph("node")
    g.node_scores[0] = 0 / 0
    g:apply_topn(2, { level = "node", prune = false })
    assert.are.equal(3, g:count_included_nodes())
    assert.are.equal(1, g.nodes_in_graph[0])
    g:apply_threshold(4.5, { level = "node", prune = false })
    local expect = 1 -- input, unscored
    for u = 1, g.n_forward - 1 do
      if math.abs(g.node_scores[u]) >= 4.5 then expect = expect + 1 end
    end
    assert.are.equal(expect, g:count_included_nodes())
  end)

  it("neuron top-n keeps the top neurons and the unscored ones", function()
    local g = scored_graph("neuron")
    local D = g.cfg.d_model
    for i = 0, g.n_forward * D - 1 do g.neuron_scores[i] = ((i * 7919) % 101) / 100 - 0.5 end
    for d = 0, D - 1 do g.neuron_scores[3 * D + d] = 0 / 0 end -- node 3 unscored
    g:apply_topn(10, { level = "neuron", prune = false })
    assert.are.equal(10 + D, g:count_included_neurons())
    -- every node with a neuron in, and its real outgoing edges
    for u = 0, g.n_forward - 1 do
      local any = false
      for d = 0, D - 1 do any = any or g.neurons_in_graph[u * D + d] ~= 0 end
      assert.are.equal(any and 1 or 0, g.nodes_in_graph[u])
    end
    local w = g:weighted_edge_count()
    assert.is_true(w > 0 and w < g:count_included_edges())
    g:prune()
    for u = 0, g.n_forward - 1 do
      if g.nodes_in_graph[u] == 0 then
        for d = 0, D - 1 do assert.are.equal(0, g.neurons_in_graph[u * D + d]) end
      end
    end
  end)

  it("edge selection on a neuron-level graph keeps the neurons of the kept nodes", function()
    local g = scored_graph("neuron")
    g:apply_topn(30)
    local D = g.cfg.d_model
    assert.are.equal(g:count_included_nodes() * D, g:count_included_neurons())
    assert.are.equal(g:count_included_edges(), g:weighted_edge_count())
  end)
end)

describe("Graph errors", function()
  it("refuses n larger than the number of edges", function()
    assert.has_error(function() tiny():apply_topn(9) end,
      "Graph:apply_topn: n (9) is larger than the number of edges (8)")
    assert.has_error(function() tiny():apply_greedy(9) end,
      "Graph:apply_greedy: n (9) is larger than the number of edges (8)")
    local g = tiny()
    g.node_scores[1] = 1
    assert.has_error(function() g:apply_topn(2, { level = "node" }) end,
      "Graph:apply_topn: n (2) is larger than the number of scored nodes (1)")
  end)

  it("names unknown levels and options", function()
    assert.has_error(function() tiny():apply_topn(2, { level = "head" }) end,
      "Graph:apply_topn: unknown level 'head' (expected edge, node or neuron)")
    assert.has_error(function() tiny():apply_topn(2, { absolut = true }) end,
      "Graph:apply_topn: unknown option 'absolut' (did you mean 'absolute'?)")
    assert.has_error(function() tiny():apply_threshold(0.1, { prune = "yes" }) end,
      "Graph:apply_threshold: option 'prune' must be a boolean, got string")
    assert.has_error(function() tiny():apply_greedy(2, { level = "edge" }) end,
      "Graph:apply_greedy: unknown option 'level' (valid options: absolute, prune, reset)")
    assert.has_error(function() Graph.new({ n_layers = 1, n_heads = 1, d_model = 4 }, { level = "x" }) end,
      "Graph.new: unknown level 'x' (expected edge, node or neuron)")
  end)

  it("names bad counts, thresholds and configs", function()
    assert.has_error(function() tiny():apply_topn(-1) end, "Graph:apply_topn: n must be a non-negative integer, got -1")
    assert.has_error(function() tiny():apply_topn(1.5) end)
    assert.has_error(function() tiny():apply_threshold("a") end, "Graph:apply_threshold: threshold must be a number, got a")
    assert.has_error(function() Graph.new({ n_layers = 0, n_heads = 1, d_model = 4 }) end,
      "Graph.new: cfg.n_layers must be a positive integer, got 0")
    assert.has_error(function() Graph.new({ n_layers = 1, n_heads = 1 }) end,
      "Graph.new: cfg.d_model must be a positive integer, got nil")
  end)

  it("needs a neuron-level graph for neuron selection and counts", function()
    assert.has_error(function() tiny():apply_topn(1, { level = "neuron" }) end,
      "Graph:apply_topn (level 'neuron'): this graph has no neurons (create it with {level = \"neuron\"})")
    assert.has_error(function() tiny():count_included_neurons() end)
  end)

  it("checks a graph against a model's cfg", function()
    local g = Graph.new({ n_layers = 2, n_heads = 4, d_model = 32 })
    assert.is_true(g:check_matches({ n_layers = 2, n_heads = 4, d_model = 32, parallel_attn_mlp = 0, vocab = 50 }))
    assert.has_error(function() g:check_matches({ n_layers = 2, n_heads = 8, d_model = 32, parallel_attn_mlp = true }) end,
      "graph does not match the model: n_heads is 4 in the graph but 8 in the model; " ..
      "parallel_attn_mlp is false in the graph but true in the model")
  end)
end)

describe("Graph module hygiene", function()
  it("defines no globals", function()
    local before = {}
    for k in pairs(_G) do before[k] = true end
    package.loaded["eapig.graph"], package.loaded["eapig.formats.graph_io"] = nil, nil
    local G = require("eapig.graph")
    local g = G.new({ n_layers = 2, n_heads = 2, d_model = 4 }, { level = "neuron" })
    for i = 0, g.n_forward * g.n_backward - 1 do g.scores[i] = i % 7 end
    g:apply_topn(5); g:apply_threshold(0.0); g:apply_greedy(3); g:reset(false); g:prune()
    local _ = tostring(g) .. g:weighted_edge_count()
    require("eapig.formats.graph_io").dot_source(g)
    for k in pairs(_G) do assert.is_true(before[k], "new global: " .. tostring(k)) end
  end)
end)

describe("Graph against EAP-IG's selections (fixtures)", function()
  if not FIXTURES then
    it("needs ../shared/fixtures", function() pending("../shared/fixtures is absent: skipping the fixture cases") end)
    return
  end
  local manifest = cjson.decode(read(FIXTURES .. "/manifest.json"))
  local cases = 0
  for _, case in ipairs(manifest) do
    if case.kind == "select" then
      cases = cases + 1
      it(case.expected, function()
        local g = Graph.from_json(FIXTURES .. "/" .. case.graph)
        if case.how == "topn" then
          g:apply_topn(case.arg, { absolute = case.absolute })
        elseif case.how == "threshold" then
          g:apply_threshold(case.arg, { absolute = case.absolute })
        elseif case.how == "greedy" then
          g:apply_greedy(case.arg, { absolute = case.absolute })
        else
          error("unknown selection " .. tostring(case.how))
        end
        local expected = cjson.decode(read(FIXTURES .. "/" .. case.expected))
        local want_edges, want_nodes = {}, {}
        for name, info in pairs(expected.edges) do
          if info.in_graph then want_edges[name] = true end
        end
        for name, info in pairs(expected.nodes) do
          if info.in_graph and name ~= "logits" then want_nodes[name] = true end
        end
        assert.are.same(want_edges, circuit_edges(g))
        assert.are.same(want_nodes, circuit_nodes(g))
      end)
    end
  end
  it("covers the manifest's selection cases", function()
    assert.is_true(cases >= 12, "found " .. cases .. " select cases")
  end)
end)
