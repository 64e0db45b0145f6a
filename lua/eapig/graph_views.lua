-- eapig.graph_views: EAP-IG's object API over a Graph's buffers, so notebook code ports line by
-- line:
--
--   graph.nodes["m0"].score, graph.nodes["a0.h1"].in_graph = true
--   graph.edges["a0.h1->a1.h2<k>"].score, graph.edges["input->m0"].in_graph = false
--   for _, node in ipairs(graph.nodes["a1.h0"].parents) do print(node.name) end
--   for name, edge in graph.edges:items() do ... end      -- EAP-IG: graph.edges.items()
--
-- A node or edge is a small view (a table holding the graph and its indices); reading or writing
-- .score / .in_graph reads or writes the graph's FFI buffers directly, nothing is copied, so a
-- write is seen by selection, evaluation and the writers at once. Views are made on access, so
-- two views of one edge are two tables that agree (compare .name, not the tables).
--
-- Indices are eapig's: 0-based like the buffers (EAP-IG's tensors are 0-based too).
local ffi = require("ffi")
local indices = require("eapig.indices")

local fmt = string.format
local NAN = 0 / 0

local M = {}

local NodeView, EdgeView = {}, {}

-- A view's __index: the field's getter from the table applied to the view, nil for other keys.
local function fields_index(fields)
  return function(view, k)
    local f = fields[k]
    if f then return f(view) end
    return nil
  end
end

-- ---- nodes ----------------------------------------------------------------------------------------

local function node_view(g, name)
  local u = g._findex[name]
  if u == nil then return nil end
  return setmetatable({ graph = g, name = name, index = u }, NodeView)
end

-- The layer of a node as EAP-IG numbers it: input 0, a{l}.h{h} and m{l} l, logits n_layers.
local function node_layer(g, u)
  if u == g.n_forward then return g.cfg.n_layers end
  local l = g._src_layer[u]
  return l < 0 and 0 or l
end

-- The input slots (backward indices) of node u: a head's q, k, v; an MLP's one; logits'.
local function input_slots(g, u)
  local first, count, H = g._slot_first[u], g._slot_count[u], g.cfg.n_heads
  local out = {}
  for c = 0, count - 1 do out[#out + 1] = first + c * H end
  return out
end

local function edge_view(g, u, v)
  return setmetatable({ graph = g, name = g.forward_names[u] .. "->" .. g.backward_names[v], u = u, v = v,
    index = u * g.n_backward + v }, EdgeView)
end

-- Node fields, computed on read.
local NODE_FIELDS = {
  score = function(n)
    if n.index == n.graph.n_forward then return nil end -- logits has no score
    local s = n.graph.node_scores[n.index]
    if s ~= s then return nil end -- NaN: unscored
    return s
  end,
  in_graph = function(n) return n.graph.nodes_in_graph[n.index] ~= 0 end,
  layer = function(n) return node_layer(n.graph, n.index) end,
  -- "attention", "mlp", "input" or "logits" (EAP-IG's node classes)
  kind = function(n)
    local g, u = n.graph, n.index
    if u == 0 then return "input" end
    if u == g.n_forward then return "logits" end
    return g._src_head[u] == 1 and "attention" or "mlp"
  end,
  head = function(n)
    if n.graph._src_head[n.index] ~= 1 then return nil end
    return tonumber(n.name:match("%.h(%d+)$"))
  end,
  -- the backward slot names of this node's inputs (EAP-IG's qkv_inputs on attention nodes)
  qkv_inputs = function(n)
    if n.index == 0 then return {} end
    local out = {}
    for _, v in ipairs(input_slots(n.graph, n.index)) do out[#out + 1] = n.graph.backward_names[v] end
    return out
  end,
  parent_edges = function(n)
    local g, out = n.graph, {}
    if n.index == 0 then return out end
    local NB = g.n_backward
    for _, v in ipairs(input_slots(g, n.index)) do
      for u = 0, g.n_forward - 1 do
        if g.real[u * NB + v] ~= 0 then out[#out + 1] = edge_view(g, u, v) end
      end
    end
    return out
  end,
  child_edges = function(n)
    local g, out = n.graph, {}
    if n.index == g.n_forward then return out end
    local NB, row = g.n_backward, n.index * g.n_backward
    for v = 0, NB - 1 do
      if g.real[row + v] ~= 0 then out[#out + 1] = edge_view(g, n.index, v) end
    end
    return out
  end,
  -- the distinct nodes feeding / fed by this one, in forward order
  parents = function(n)
    local g, seen, out = n.graph, {}, {}
    for _, e in ipairs(NodeView.get(n, "parent_edges")) do
      if not seen[e.u] then
        seen[e.u] = true
        out[#out + 1] = node_view(g, g.forward_names[e.u])
      end
    end
    table.sort(out, function(a, b) return a.index < b.index end)
    return out
  end,
  children = function(n)
    local g, seen, out = n.graph, {}, {}
    for _, e in ipairs(NodeView.get(n, "child_edges")) do
      local w = g._dst_owner[e.v]
      if not seen[w] then
        seen[w] = true
        out[#out + 1] = node_view(g, w == g.n_forward and "logits" or g.forward_names[w])
      end
    end
    table.sort(out, function(a, b) return a.index < b.index end)
    return out
  end,
  -- views of this node's neuron scores and mask (neuron-level graphs; pointers into the buffers)
  neurons_scores = function(n)
    local g = n.graph
    if not g.neuron_scores or n.index == g.n_forward then return nil end
    return g.neuron_scores + n.index * g.cfg.d_model
  end,
  neurons_in_graph = function(n)
    local g = n.graph
    if not g.neurons_in_graph or n.index == g.n_forward then return nil end
    return g.neurons_in_graph + n.index * g.cfg.d_model
  end,
}

function NodeView.get(n, k) return NODE_FIELDS[k](n) end

NodeView.__index = fields_index(NODE_FIELDS)

NodeView.__newindex = function(n, k, value)
  local g, u = n.graph, n.index
  if k == "score" then
    if u == g.n_forward then error("node logits has no score", 2) end
    if value ~= nil and type(value) ~= "number" then error(fmt("node %s: score must be a number or nil", n.name), 2) end
    g.node_scores[u] = value == nil and NAN or value
  elseif k == "in_graph" then
    if type(value) ~= "boolean" then error(fmt("node %s: in_graph must be true or false", n.name), 2) end
    if u == g.n_forward then
      if not value then error("node logits is always in the graph", 2) end
      return
    end
    g.nodes_in_graph[u] = value and 1 or 0
    g.selected = true
  else
    error(fmt("node %s: '%s' cannot be set (score and in_graph can)", n.name, tostring(k)), 2)
  end
end

NodeView.__tostring = function(n)
  return fmt("Node(%s, in_graph: %s)", n.name, tostring(NodeView.__index(n, "in_graph")))
end

-- ---- edges ----------------------------------------------------------------------------------------

local EDGE_FIELDS = {
  score = function(e) return e.graph.scores[e.index] end,
  in_graph = function(e) return e.graph.in_graph[e.index] ~= 0 end,
  parent = function(e) return node_view(e.graph, e.graph.forward_names[e.u]) end,
  child = function(e)
    local g, w = e.graph, e.graph._dst_owner[e.v]
    return node_view(g, w == g.n_forward and "logits" or g.forward_names[w])
  end,
  -- "q", "k", "v" for edges into a head, else nil
  qkv = function(e) return e.graph.backward_names[e.v]:match("<(%a)>$") end,
  -- (forward index, backward index) of the edge in the score and in_graph matrices
  matrix_index = function(e) return { e.u, e.v } end,
}

EdgeView.__index = fields_index(EDGE_FIELDS)

EdgeView.__newindex = function(e, k, value)
  local g = e.graph
  if k == "score" then
    if type(value) ~= "number" then error(fmt("edge %s: score must be a number", e.name), 2) end
    g.scores[e.index] = value
  elseif k == "in_graph" then
    if type(value) ~= "boolean" then error(fmt("edge %s: in_graph must be true or false", e.name), 2) end
    g.in_graph[e.index] = value and 1 or 0
    g.selected = true
  else
    error(fmt("edge %s: '%s' cannot be set (score and in_graph can)", e.name, tostring(k)), 2)
  end
end

EdgeView.__tostring = function(e)
  return fmt("Edge(%s, score: %.6g, in_graph: %s)", e.name, e.graph.scores[e.index], tostring(e.graph.in_graph[e.index] ~= 0))
end

-- ---- the graph.nodes and graph.edges tables ------------------------------------------------------

-- graph.nodes / graph.edges: indexable by name (nil for a name that is not a node / real edge),
-- callable as the iterators they always were (graph:nodes(), graph:edges()), and with EAP-IG's
-- dict methods: keys(), values(), items() (iterators, in EAP-IG's order), and count().
local Nodes, Edges = {}, {}

-- EAP-IG's dict methods over one of the graph's name iterators: keys(), values(), items() in
-- EAP-IG's order, and count(). view(g, ...) turns what the iterator yields into a view.
local function dict_methods(iterate, view, count)
  return {
    keys = function(self)
      local it = iterate(self._graph)
      return function()
        local name = it()
        return name
      end
    end,
    values = function(self)
      local g, it = self._graph, iterate(self._graph)
      return function()
        local name, a, b, c, d = it()
        if name then return view(g, name, a, b, c, d) end
      end
    end,
    items = function(self)
      local g, it = self._graph, iterate(self._graph)
      return function()
        local name, a, b, c, d = it()
        if name then return name, view(g, name, a, b, c, d) end
      end
    end,
    count = count,
  }
end

local NODES_METHODS = dict_methods(function(g) return g:iter_nodes() end,
  function(g, name) return node_view(g, name) end,
  function(self) return self._graph.n_forward + 1 end)

Nodes.__index = function(self, name)
  local m = NODES_METHODS[name]
  if m then return m end
  return node_view(rawget(self, "_graph"), name)
end
Nodes.__call = function(self, g) return (g or self._graph):iter_nodes() end
Nodes.__newindex = function() error("graph.nodes is a view: set a node's score or in_graph instead", 2) end
Nodes.__tostring = function(self) return fmt("[eapig graph nodes: %d]", self._graph.n_forward + 1) end

local EDGES_METHODS = dict_methods(function(g) return g:iter_edges() end,
  function(g, _, _, _, u, v) return edge_view(g, u, v) end,
  function(self) return self._graph:n_edges() end)

Edges.__index = function(self, name)
  local m = EDGES_METHODS[name]
  if m then return m end
  local g = rawget(self, "_graph")
  local u, v = g:find_edge(name)
  if u == nil then return nil end
  return edge_view(g, u, v)
end
Edges.__call = function(self, g) return (g or self._graph):iter_edges() end
Edges.__newindex = function() error("graph.edges is a view: set an edge's score or in_graph instead", 2) end
Edges.__tostring = function(self) return fmt("[eapig graph edges: %d]", self._graph:n_edges()) end

function M.nodes(g) return setmetatable({ _graph = g }, Nodes) end
function M.edges(g) return setmetatable({ _graph = g }, Edges) end
function M.node(g, name) return node_view(g, name) end
function M.is_node(x) return getmetatable(x) == NodeView end

-- forward_to_backward (NF, NB) uint8: 1 at [forward index of a node, each of its input slots],
-- as EAP-IG's graph.forward_to_backward (logits has no forward index, so no row).
function M.forward_to_backward(g)
  local NF, NB = g.n_forward, g.n_backward
  local m = ffi.new("uint8_t[?]", NF * NB)
  for u = 1, NF - 1 do
    for _, v in ipairs(input_slots(g, u)) do m[u * NB + v] = 1 end
  end
  return m
end

-- prev_index(node): the forward index before which every node feeds this node's input (EAP-IG's
-- Graph.prev_index): 0 for input, NF for logits, the layer's first head for heads, and for an MLP
-- the first index after its layer's heads (the layer's first head with parallel attention+MLP).
function M.prev_index(g, node)
  local name = type(node) == "table" and node.name or node
  local u = g._findex[name]
  if u == nil then error(fmt("Graph:prev_index: unknown node '%s'", tostring(name)), 0) end
  if u == 0 then return 0 end
  if u == g.n_forward then return g.n_forward end
  local H, l = g.cfg.n_heads, g._src_layer[u]
  if g._src_head[u] == 1 then return indices.first_node(H, l) end
  return indices.mlp_upstream(H, l, g.cfg.parallel_attn_mlp)
end

return M
