-- EAP-IG's Graph API over eapig's buffers: graph.nodes[...] / graph.edges[...] read and write the
-- FFI buffers themselves, parents and children follow the real-edge mask, prev_index and
-- forward_to_backward agree with EAP-IG's definitions, and to_image's drawing options reach the
-- DOT source.
local Graph = require("eapig.graph")
local graph_io = require("eapig.formats.graph_io")

local function names(list)
  local out = {}
  for i, n in ipairs(list) do out[i] = n.name end
  return out
end

describe("Graph views", function()
  local cfg = { n_layers = 2, n_heads = 2, d_model = 4 }

  it("read and write the score and in_graph buffers (no copies)", function()
    local g = Graph.new(cfg)
    local e = g.edges["a0.h1->a1.h0<k>"]
    local u, v = g:edge_index("a0.h1->a1.h0<k>")
    local i = u * g.n_backward + v
    e.score = 0.25
    assert.are.equal(0.25, g.scores[i])
    g.scores[i] = -2
    assert.are.equal(-2, g.edges["a0.h1->a1.h0<k>"].score)
    assert.is_false(e.in_graph)
    e.in_graph = true
    assert.are.equal(1, g.in_graph[i])
    assert.are.equal("k", e.qkv)
    assert.are.equal("a0.h1", e.parent.name)
    assert.are.equal("a1.h0", e.child.name)
    assert.are.same({ u, v }, e.matrix_index)

    local m0 = g.nodes["m0"]
    assert.is_nil(m0.score) -- unscored (NaN in the buffer)
    m0.score = 1.5
    assert.are.equal(1.5, g.node_scores[g:forward_index("m0")])
    m0.in_graph = true
    assert.are.equal(1, g.nodes_in_graph[g:forward_index(m0)])
    assert.is_true(g.nodes.logits.in_graph)
    assert.is_nil(g.nodes["m9"])
    assert.is_nil(g.edges["m1->a0.h0<q>"]) -- not upstream: not an edge
    assert.has_error(function() e.scores = 1 end, "edge a0.h1->a1.h0<k>: 'scores' cannot be set (score and in_graph can)")
    assert.has_error(function() m0.in_graph = 1 end, "node m0: in_graph must be true or false")
  end)

  it("a circuit built through the views is a selection evaluate_graph accepts", function()
    local g = Graph.new(cfg)
    g.edges["input->a0.h0<v>"].in_graph = true
    assert.is_true(g.selected)
  end)

  it("gives parents and children from the real edges", function()
    local g = Graph.new(cfg)
    assert.are.same({ "input", "a0.h0", "a0.h1", "m0" }, names(g.nodes["a1.h0"].parents))
    assert.are.same({ "m0", "a1.h0", "a1.h1", "m1", "logits" }, names(g.nodes["a0.h1"].children))
    assert.are.same({ "input", "a0.h0", "a0.h1" }, names(g.nodes["m0"].parents))
    assert.are.same({}, names(g.nodes["input"].parents))
    assert.are.equal(7, #g.nodes["logits"].parents)
    assert.are.equal(3 * 4, #g.nodes["a1.h1"].parent_edges) -- q, k, v from 4 upstream nodes
    assert.are.same({ "a1.h1<q>", "a1.h1<k>", "a1.h1<v>" }, g.nodes["a1.h1"].qkv_inputs)
    assert.are.equal(1, g.nodes["a1.h1"].layer)
    assert.are.equal("attention", g.nodes["a1.h1"].kind)
    assert.are.equal(1, g.nodes["a1.h1"].head)
  end)

  it("iterates as before and as EAP-IG's dicts, in the same order", function()
    local g = Graph.new(cfg)
    local a, b = {}, {}
    for name in g:edges() do a[#a + 1] = name end
    for name, e in g.edges:items() do
      b[#b + 1] = name
      assert.are.equal(name, e.name)
    end
    assert.are.same(a, b)
    assert.are.equal(g:n_edges(), #a)
    assert.are.equal(g:n_edges(), g.edges:count())
    local n = 0
    for node in g.nodes:values() do
      n = n + 1
      assert.are.equal(g:forward_index(node.name), node.index)
    end
    assert.are.equal(g.n_forward + 1, n)
  end)

  it("keeps views to their own graph in a clone", function()
    local g = Graph.new(cfg)
    local _ = g.edges["input->m0"]
    local c = g:clone()
    c.edges["input->m0"].score = 3
    assert.are.equal(3, c.edges["input->m0"].score)
    assert.are.equal(0, g.edges["input->m0"].score)
  end)

  for _, parallel in ipairs({ false, true }) do
    it(("prev_index and forward_to_backward follow EAP-IG (parallel_attn_mlp = %s)"):format(tostring(parallel)),
      function()
        local c = { n_layers = 3, n_heads = 4, d_model = 8, parallel_attn_mlp = parallel }
        local g = Graph.new(c)
        local H = c.n_heads
        assert.are.equal(0, g:prev_index("input"))
        assert.are.equal(g.n_forward, g:prev_index(g.nodes.logits))
        for l = 0, c.n_layers - 1 do
          assert.are.equal(1 + l * (H + 1), g:prev_index(("a%d.h2"):format(l)))
          assert.are.equal(1 + l * (H + 1) + (parallel and 0 or H), g:prev_index(g.nodes["m" .. l]))
        end
        local f2b = g.forward_to_backward
        for name, node in g.nodes:items() do
          if name ~= "logits" then
            local row = 0
            for v = 0, g.n_backward - 1 do row = row + f2b[node.index * g.n_backward + v] end
            assert.are.equal(#node.qkv_inputs, row)
            for _, slot in ipairs(node.qkv_inputs) do
              assert.are.equal(1, f2b[node.index * g.n_backward + g:backward_index(slot)])
            end
          end
        end
        -- prev_index bounds the sources of every real edge into the node
        for _, e in g.edges:items() do
          assert.is_true(e.u < g:prev_index(e.child), e.name)
        end
      end)
  end

  it("passes to_image's options into the DOT source", function()
    local g = Graph.new(cfg)
    g.edges["input->a0.h0<v>"].score = 1
    g.edges["a0.h0->logits"].score = -0.5
    g:apply_topn(2)
    local plain = graph_io.dot_source(g)
    local styled = graph_io.dot_source(g, { colorscheme = "Set2", layout = "neato", seed = 7, title = "A title",
      legend = true, minimum_penwidth = 1, maximum_penwidth = 9 })
    assert.truthy(styled:find('layout="neato"', 1, true))
    assert.truthy(styled:find('label="A title"', 1, true))
    assert.truthy(styled:find("legend [", 1, true))
    assert.truthy(styled:find('penwidth="9"', 1, true), styled)
    assert.is_nil(plain:find("legend [", 1, true))
    assert.are.equal(styled, graph_io.dot_source(g, { colorscheme = "Set2", layout = "neato", seed = 7,
      title = "A title", legend = true, minimum_penwidth = 1, maximum_penwidth = 9 }))
    assert.truthy(styled:find("#66c2a5") or styled:find("#fc8d62") or styled:find("#8da0cb") or styled:find("#e78ac3")
      or styled:find("#a6d854") or styled:find("#ffd92f") or styled:find("#e5c494") or styled:find("#b3b3b3"))
    assert.has_error(function() graph_io.dot_source(g, { colorscheme = "Rainbow" }) end)
    assert.has_error(function() g:to_image("/tmp/x.svg", "Pastel2", 0.6, 5, "spring") end,
      "Graph:draw: unknown layout 'spring' (a Graphviz engine: dot, neato, fdp, sfdp, circo, twopi, osage, patchwork)")
  end)
end)
