-- eapig.graph: a transformer's residual stream as EAP-IG's graph, and circuit selection over it.
--
-- Sources ("forward" nodes) are `input`, then per layer l the heads `a{l}.h{h}` and the MLP `m{l}`:
-- NF = 1 + L*(H+1). Destinations ("backward" slots) are per layer all q inputs, all k inputs, all
-- v inputs, then the MLP input, and finally `logits`: NB = L*(3H+1) + 1. The names, the order and
-- the selection rules are EAP-IG's (src/eap/graph.py), so graphs travel to and from EAP-IG and MIB.
--
-- Every matrix is a flat FFI buffer, row-major [u][v] at u*NB + v, so attribution code adds into
-- `scores` directly and selection is a few linear passes (top-n on Llama-3-8B's 1.6M edges in tens
-- of milliseconds, see scripts/bench_graph.lua). Indices are 0-based like the buffers, and so are
-- `forward_names` / `backward_names` (forward_names[0] == "input").
--
-- Fields: cfg, level, n_forward, n_backward,
--   scores (float[NF*NB]), in_graph (uint8[NF*NB]), real (uint8[NF*NB], the edges that exist),
--   nodes_in_graph (uint8[NF+1], the last entry is logits and always 1),
--   node_scores (float[NF], NaN = unscored),
--   neurons_in_graph (uint8[NF*D]) and neuron_scores (float[NF*D], NaN = unscored) on neuron-level
--   graphs only (nil otherwise: 17 MB on a Llama-3-8B-sized graph).
local ffi = require("ffi")
local bit = require("bit")
local indices = require("eapig.indices")

local floats = ffi.typeof("float[?]")
local doubles = ffi.typeof("double[?]")
local bytes = ffi.typeof("uint8_t[?]")
local int32s = ffi.typeof("int32_t[?]")
local float1 = ffi.typeof("float[1]")

local floor, huge = math.floor, math.huge
local rshift = bit.rshift
local fmt, concat = string.format, table.concat

local NAN = 0 / 0
local QKV = { [0] = "q", "k", "v" }

local Graph = {}

-- EAP-IG's object API (eapig.graph_views): graph.nodes["m0"] and graph.edges["input->m0"] are
-- views over the buffers, made on first use and kept in the graph; graph:nodes() and
-- graph:edges() still iterate (the tables are callable). forward_to_backward is built on first
-- use; real_edge_mask, nodes_scores and neurons_scores are EAP-IG's names of eapig's buffers.
local LAZY = {
  nodes = function(g) return require("eapig.graph_views").nodes(g) end,
  edges = function(g) return require("eapig.graph_views").edges(g) end,
  forward_to_backward = function(g) return require("eapig.graph_views").forward_to_backward(g) end,
}
local ALIASES = { real_edge_mask = "real", nodes_scores = "node_scores", neurons_scores = "neuron_scores" }
Graph.__index = function(g, k)
  local v = Graph[k]
  if v ~= nil then return v end
  local make = LAZY[k]
  if make then
    v = make(g)
    rawset(g, k, v)
    return v
  end
  local alias = ALIASES[k]
  if alias then return rawget(g, alias) end
  return nil
end

-- Errors carry their own context (the method and the option), so no position prefix (level 0):
-- the command line prints them as they are.
local function fail(template, ...)
  error(fmt(template, ...), 0)
end

-- Fills a copy of `defaults` from `opts`, refusing unknown keys (naming the nearest valid one)
-- and wrong types by name (eapig.options).
local function options(opts, defaults, where)
  return require("eapig.options").fill(opts, defaults, where)
end

-- EAP-IG's positional call shapes, e.g. apply_topn(200, True) or apply_threshold(t, True, True,
-- 'node'): the arguments after the first, in the order of EAP-IG's signature, as an options table.
local POSITIONAL = {
  ["Graph:apply_topn"] = { "absolute", "level", "reset", "prune" },
  ["Graph:apply_threshold"] = { "absolute", "reset", "level", "prune" },
  ["Graph:apply_greedy"] = { "absolute", "reset", "prune" },
}
local function positional(where, first, ...)
  if type(first) ~= "boolean" then return first end
  local names, values, o = POSITIONAL[where], { first, ... }, {}
  for i = 1, select("#", first, ...) do
    if names[i] == nil then fail("%s: too many arguments (EAP-IG's order: %s)", where, concat(names, ", ")) end
    o[names[i]] = values[i]
  end
  return o
end

local function check_level(level, where)
  if level ~= "edge" and level ~= "node" and level ~= "neuron" then
    fail("%s: unknown level '%s' (expected edge, node or neuron)", where, tostring(level))
  end
end

local function check_count(n, where)
  if type(n) ~= "number" or n < 0 or n ~= floor(n) then
    fail("%s: n must be a non-negative integer, got %s", where, tostring(n))
  end
end

-- ---- configuration and layout ---------------------------------------------------------------

-- The core's own limits on a model's dimensions (core/model.c), applied to graphs too, so a
-- graph file cannot ask for more than any model this program loads.
local CFG_LIMITS = { n_layers = 4096, n_heads = 4096, d_model = 2 ^ 20 }
-- Score and mask matrices of NF x NB entries, and NF x d_model neuron ones (4 + 1 bytes each):
-- at most 2^28 entries each (~1.6 GB for the edges),
-- several times the graph of a 70B-parameter model.
local MAX_MATRIX = 2 ^ 28

local function positive_int(cfg, key, where)
  local v = cfg[key]
  if type(v) ~= "number" or v < 1 or v ~= floor(v) then
    fail("%s: cfg.%s must be a positive integer, got %s", where, key, tostring(v))
  end
  if CFG_LIMITS[key] and v > CFG_LIMITS[key] then
    fail("%s: cfg.%s is %d, more than the largest a model may have (%d)", where, key, v, CFG_LIMITS[key])
  end
end

-- n_forward and n_backward of a cfg's graph (its n_layers and n_heads, unchecked).
function Graph.size_of(cfg)
  return indices.sizes(cfg.n_layers, cfg.n_heads)
end

-- Keeps the cfg's scalar entries (they go into the graph JSON as EAP-IG keeps its cfg) and turns
-- parallel_attn_mlp into a boolean, whether it came as a C int or a JSON bool.
local function normalize_cfg(cfg, where)
  if type(cfg) ~= "table" then fail("%s: cfg must be a table, got %s", where, type(cfg)) end
  local c = {}
  for k, v in pairs(cfg) do
    local t = type(v)
    if t == "number" or t == "string" or t == "boolean" then
      c[k] = v
    elseif t == "cdata" and tonumber(v) then
      c[k] = tonumber(v)
    end
  end
  positive_int(c, "n_layers", where)
  positive_int(c, "n_heads", where)
  positive_int(c, "d_model", where)
  local p = c.parallel_attn_mlp
  if p == nil or p == false or p == 0 then
    c.parallel_attn_mlp = false
  elseif p == true or p == 1 then
    c.parallel_attn_mlp = true
  else
    fail("%s: cfg.parallel_attn_mlp must be a boolean, got %s", where, tostring(p))
  end
  local NF, NB = Graph.size_of(c)
  if NF * NB > MAX_MATRIX then
    fail("%s: cfg.n_layers %d and cfg.n_heads %d give a %d x %d edge matrix, more than %d entries", where,
         c.n_layers, c.n_heads, NF, NB, MAX_MATRIX)
  end
  return c
end

-- Names, index maps and per-index facts (layer, kind, owner) that the real-edge rule and the
-- selection passes read; small arrays (NF, NB entries), built once per graph.
local function build_layout(g)
  local L, H = g.cfg.n_layers, g.cfg.n_heads
  local NF, NB = Graph.size_of(g.cfg)
  g.n_forward, g.n_backward = NF, NB

  local fnames, bnames, findex, bindex = { [0] = "input" }, {}, { input = 0 }, {}
  local src_layer = int32s(NF)   -- layer of source u; -1 for input, which feeds everything
  local src_head = bytes(NF)     -- 1 where u is an attention head
  local slot_first = int32s(NF + 1) -- first input slot of node u (index NF = logits)
  local slot_count = int32s(NF + 1) -- 3 q/k/v slots (stride H) for heads, 1 for MLPs and logits
  local dst_layer = int32s(NB)   -- layer of slot v; L for logits
  local dst_mlp = bytes(NB)      -- 1 where v is an MLP input
  local dst_owner = int32s(NB)   -- forward index of the node reading slot v; NF for logits
  src_layer[0] = -1

  for l = 0, L - 1 do
    for h = 0, H - 1 do
      local u, name = indices.head_node(H, l, h), "a" .. l .. ".h" .. h
      fnames[u], findex[name] = name, u
      src_layer[u], src_head[u] = l, 1
      slot_first[u], slot_count[u] = indices.qkv_dest(H, l, 0, h), 3
      for c = 0, 2 do
        local v = indices.qkv_dest(H, l, c, h)
        local slot = name .. "<" .. QKV[c] .. ">"
        bnames[v], bindex[slot] = slot, v
        dst_layer[v], dst_owner[v] = l, u
      end
    end
    local m, mname, mv = indices.mlp_node(H, l), "m" .. l, indices.mlp_dest(H, l)
    fnames[m], findex[mname] = mname, m
    src_layer[m] = l
    slot_first[m], slot_count[m] = mv, 1
    bnames[mv], bindex[mname] = mname, mv
    dst_layer[mv], dst_mlp[mv], dst_owner[mv] = l, 1, m
  end
  bnames[NB - 1], bindex.logits = "logits", NB - 1
  dst_layer[NB - 1], dst_owner[NB - 1] = L, NF
  slot_first[NF], slot_count[NF] = NB - 1, 1
  findex.logits = NF

  g.forward_names, g.backward_names = fnames, bnames
  g._findex, g._bindex = findex, bindex
  g._src_layer, g._src_head = src_layer, src_head
  g._dst_layer, g._dst_mlp, g._dst_owner = dst_layer, dst_mlp, dst_owner
  g._slot_first, g._slot_count = slot_first, slot_count
end

-- u -> v exists iff u is upstream of v: an earlier layer (input is layer -1, logits layer L), or a
-- head feeding its own layer's MLP when attention and MLP run in sequence.
local function build_real_mask(g)
  local NF, NB = g.n_forward, g.n_backward
  local sl, sh, dl, dm = g._src_layer, g._src_head, g._dst_layer, g._dst_mlp
  local same_layer_ok = g.cfg.parallel_attn_mlp and 0 or 1
  local real, count = bytes(NF * NB), 0
  for u = 0, NF - 1 do
    local row, lu, head = u * NB, sl[u], sh[u]
    for v = 0, NB - 1 do
      local lv = dl[v]
      if lu < lv or (lu == lv and head == 1 and dm[v] == 1 and same_layer_ok == 1) then
        real[row + v] = 1
        count = count + 1
      end
    end
  end
  g.real, g._n_real = real, count
end

local function fill_nan(buf, n)
  for i = 0, n - 1 do buf[i] = NAN end
end

-- Graph.new(cfg, {level = "edge"|"node"|"neuron"}): an empty circuit (only logits in) with zero
-- edge scores and unscored (NaN) nodes and neurons.
function Graph.new(cfg, opts)
  local o = options(opts, { level = "edge" }, "Graph.new")
  check_level(o.level, "Graph.new")
  local g = setmetatable({ cfg = normalize_cfg(cfg, "Graph.new"), level = o.level }, Graph)
  if o.level == "neuron" then
    local NF, D = Graph.size_of(g.cfg), g.cfg.d_model
    if NF * D > MAX_MATRIX then
      fail("Graph.new: cfg.n_layers %d, cfg.n_heads %d and cfg.d_model %d give a %d x %d neuron matrix, more than %d entries",
           g.cfg.n_layers, g.cfg.n_heads, D, NF, D, MAX_MATRIX)
    end
  end
  build_layout(g)
  build_real_mask(g)
  local NF, NB, D = g.n_forward, g.n_backward, g.cfg.d_model
  g.scores = floats(NF * NB)
  g.in_graph = bytes(NF * NB)
  g.nodes_in_graph = bytes(NF + 1)
  g.nodes_in_graph[NF] = 1
  g.node_scores = floats(NF)
  fill_nan(g.node_scores, NF)
  if o.level == "neuron" then
    g.neurons_in_graph = bytes(NF * D)
    g.neuron_scores = floats(NF * D)
    fill_nan(g.neuron_scores, NF * D)
  end
  return g
end

-- Graph.from_model(model, opts): the graph of a loaded model (model:info() holds the cfg keys).
function Graph.from_model(model, opts)
  return Graph.new(model:info(), opts)
end

-- A deep copy: selection mutates in place, so evaluation and the command line select on a copy.
function Graph:clone()
  local c = setmetatable({}, Graph)
  for k, v in pairs(self) do -- layout tables are shared: they never change
    if not LAZY[k] then c[k] = v end -- views point at their own graph: the copy makes its own
  end
  c.cfg = {}
  for k, v in pairs(self.cfg) do c.cfg[k] = v end
  local NF, NB = self.n_forward, self.n_backward
  local function dup(ct, buf, n, size)
    local b = ct(n)
    ffi.copy(b, buf, n * size)
    return b
  end
  c.scores = dup(floats, self.scores, NF * NB, 4)
  c.in_graph = dup(bytes, self.in_graph, NF * NB, 1)
  c.nodes_in_graph = dup(bytes, self.nodes_in_graph, NF + 1, 1)
  c.node_scores = dup(floats, self.node_scores, NF, 4)
  if self.neurons_in_graph then
    local n = NF * self.cfg.d_model
    c.neurons_in_graph = dup(bytes, self.neurons_in_graph, n, 1)
    c.neuron_scores = dup(floats, self.neuron_scores, n, 4)
  end
  return c
end

-- ---- names and indices ----------------------------------------------------------------------

-- Forward index of a node name ("input", "a0.h3", "m2"; "logits" gives NF, its nodes_in_graph slot)
-- or of a node view (graph.nodes[...]), as EAP-IG's forward_index(node).
function Graph:forward_index(name)
  if type(name) == "table" then name = name.name end
  local u = self._findex[name]
  if u == nil then fail("Graph:forward_index: unknown node '%s'", tostring(name)) end
  return u
end

-- Backward index of a destination: "a0.h1<q>", or ("a0.h1", "q"), "m0", "logits".
function Graph:backward_index(name, qkv)
  if type(name) == "table" then name = name.name end
  local key = qkv and (tostring(name) .. "<" .. tostring(qkv) .. ">") or name
  local v = self._bindex[key]
  if v == nil then fail("Graph:backward_index: unknown destination '%s'", tostring(key)) end
  return v
end

-- prev_index(node): EAP-IG's Graph.prev_index: the forward index before which every node feeds
-- this node's input (a name or a node view).
function Graph:prev_index(node) return require("eapig.graph_views").prev_index(self, node) end

function Graph:edge_name(u, v)
  return self.forward_names[u] .. "->" .. self.backward_names[v]
end

-- Matrix indices (u, v) of an edge name; nil and a message when the name is not a real edge.
function Graph:find_edge(name)
  if type(name) ~= "string" then return nil, "edge name must be a string" end
  local src, dst = name:match("^(.-)%->(.+)$")
  local u = src and self._findex[src]
  local v = dst and self._bindex[dst]
  if u == nil or u == self.n_forward or v == nil then return nil, "unknown edge '" .. name .. "'" end
  if self.real[u * self.n_backward + v] == 0 then
    return nil, "'" .. name .. "' is not an edge of this graph (its source is not upstream)"
  end
  return u, v
end

function Graph:edge_index(name)
  local u, v = self:find_edge(name)
  if u == nil then fail("Graph:edge_index: %s", v) end
  return u, v
end

-- Number of real edges.
function Graph:n_edges()
  return self._n_real
end

-- Flat indices u*NB+v of the real edges in EAP-IG's edge order (its `edges` dict, hence its JSON):
-- per layer, every upstream node's edges into the heads (per head q, k, v), then into the MLP
-- (with parallel attention+MLP, each upstream node's MLP edge follows its head edges), and
-- finally every node's edge into logits. Built on first use, cached.
local function edge_order(g)
  if g._edge_order then return g._edge_order end
  local L, H = g.cfg.n_layers, g.cfg.n_heads
  local NF, NB = g.n_forward, g.n_backward
  local order, k = int32s(g._n_real), 0
  local function add(u, v)
    order[k] = u * NB + v
    k = k + 1
  end
  local upstream = 1 -- the sources 0..upstream-1 already write to the residual stream
  for l = 0, L - 1 do
    local mlp_slot = indices.mlp_dest(H, l)
    for u = 0, upstream - 1 do
      for h = 0, H - 1 do
        for c = 0, 2 do add(u, indices.qkv_dest(H, l, c, h)) end
      end
      if g.cfg.parallel_attn_mlp then add(u, mlp_slot) end
    end
    if not g.cfg.parallel_attn_mlp then
      for u = 0, indices.mlp_node(H, l) - 1 do add(u, mlp_slot) end
    end
    upstream = indices.first_node(H, l + 1)
  end
  for u = 0, NF - 1 do add(u, NB - 1) end
  assert(k == g._n_real, "edge order does not cover the real edges")
  g._edge_order = order
  return order
end

-- The flat indices u*NB+v of the real edges in EAP-IG's order (int32_t[n_edges], 0-based; shared
-- by every copy of the graph: read only).
function Graph:edge_order()
  return edge_order(self)
end

-- Iterator over real edges in EAP-IG order: name, score, in_graph (boolean), u, v.
function Graph:iter_edges()
  local order, n, k = edge_order(self), self._n_real, -1
  local NB, fnames, bnames = self.n_backward, self.forward_names, self.backward_names
  local scores, ig = self.scores, self.in_graph
  return function()
    k = k + 1
    if k >= n then return nil end
    local i = order[k]
    local u = floor(i / NB)
    local v = i - u * NB
    return fnames[u] .. "->" .. bnames[v], scores[i], ig[i] ~= 0, u, v
  end
end

-- Iterator over the nodes, input first and logits last: name, score (nil when unscored), in_graph.
function Graph:iter_nodes()
  local NF, u = self.n_forward, -1
  return function()
    u = u + 1
    if u > NF then return nil end
    if u == NF then return "logits", nil, true end
    local s = self.node_scores[u]
    if s ~= s then s = nil end
    return self.forward_names[u], s, self.nodes_in_graph[u] ~= 0
  end
end

-- ---- counts ------------------------------------------------------------------------------------

local function count_bytes(buf, n)
  local c = 0
  for i = 0, n - 1 do
    if buf[i] ~= 0 then c = c + 1 end
  end
  return c
end

function Graph:count_included_edges()
  return count_bytes(self.in_graph, self.n_forward * self.n_backward)
end

-- Source nodes in the circuit (logits, always in, is not counted, as in EAP-IG).
function Graph:count_included_nodes()
  return count_bytes(self.nodes_in_graph, self.n_forward)
end

local function need_neurons(g, where)
  if not g.neurons_in_graph then
    fail("%s: this graph has no neurons (create it with {level = \"neuron\"})", where)
  end
end

function Graph:count_included_neurons()
  need_neurons(self, "Graph:count_included_neurons")
  return count_bytes(self.neurons_in_graph, self.n_forward * self.cfg.d_model)
end

-- Edges weighted by the fraction of their source's neurons in the circuit (plain count otherwise).
function Graph:weighted_edge_count()
  if not self.neurons_in_graph then return self:count_included_edges() end
  local NF, NB, D = self.n_forward, self.n_backward, self.cfg.d_model
  local ig, nig, total = self.in_graph, self.neurons_in_graph, 0
  for u = 0, NF - 1 do
    local edges = count_bytes(ig + u * NB, NB)
    if edges > 0 then total = total + edges * count_bytes(nig + u * D, D) end
  end
  return total / D
end

function Graph:__tostring()
  return fmt("[eapig.Graph %s: %d nodes, %d edges, %d in circuit]", tostring(self.cfg.family or "model"),
    self.n_forward + 1, self._n_real, self:count_included_edges())
end

-- graph:check_matches(cfg): errors when a graph (e.g. loaded from JSON) was made for another
-- model shape; cfg is a model's info() table (or the model itself).
function Graph:check_matches(cfg)
  if type(cfg) == "table" and type(cfg.info) == "function" then cfg = cfg:info() end
  local other = normalize_cfg(cfg, "Graph:check_matches")
  local bad = {}
  for _, key in ipairs({ "n_layers", "n_heads", "d_model", "parallel_attn_mlp" }) do
    if self.cfg[key] ~= other[key] then
      bad[#bad + 1] = fmt("%s is %s in the graph but %s in the model", key, tostring(self.cfg[key]),
        tostring(other[key]))
    end
  end
  if #bad > 0 then fail("graph does not match the model: %s", concat(bad, "; ")) end
  return true
end

-- ---- circuit state -----------------------------------------------------------------------------

-- reset(empty): empty = true (default) removes everything but logits; false puts every real edge,
-- every node and every neuron in.
function Graph:reset(empty)
  if empty == nil then empty = true end
  local NF, NB = self.n_forward, self.n_backward
  if empty then
    ffi.fill(self.in_graph, NF * NB, 0)
    ffi.fill(self.nodes_in_graph, NF, 0)
    if self.neurons_in_graph then ffi.fill(self.neurons_in_graph, NF * self.cfg.d_model, 0) end
  else
    ffi.copy(self.in_graph, self.real, NF * NB)
    ffi.fill(self.nodes_in_graph, NF, 1)
    if self.neurons_in_graph then ffi.fill(self.neurons_in_graph, NF * self.cfg.d_model, 1) end
  end
  self.nodes_in_graph[NF] = 1
  self.selected = true
end

-- out[u] = 1 where u has an outgoing edge in the circuit, inn[u] = 1 where one of u's input slots
-- has an incoming one (input counts as fed), in one pass over the edge mask.
local function edge_endpoints(g, out, inn)
  local NF, NB, ig, owner = g.n_forward, g.n_backward, g.in_graph, g._dst_owner
  local col = bytes(NB)
  for u = 0, NF - 1 do
    local row, any = u * NB, 0
    for v = 0, NB - 1 do
      if ig[row + v] ~= 0 then
        any = 1
        col[v] = 1
      end
    end
    out[u] = any
  end
  ffi.fill(inn, NF, 0)
  for v = 0, NB - 2 do
    if col[v] ~= 0 then inn[owner[v]] = 1 end
  end
  inn[0] = 1
end

-- Drops the edges whose source or destination node is out of the circuit; true if any was dropped.
local function drop_dangling_edges(g)
  local NF, NB, ig, nodes, owner = g.n_forward, g.n_backward, g.in_graph, g.nodes_in_graph, g._dst_owner
  local dead, nd = {}, 0
  for v = 0, NB - 2 do
    if nodes[owner[v]] == 0 then
      nd = nd + 1
      dead[nd] = v
    end
  end
  local dropped = false
  for u = 0, NF - 1 do
    local row = u * NB
    if nodes[u] == 0 then
      for v = 0, NB - 1 do
        if ig[row + v] ~= 0 then
          ig[row + v] = 0
          dropped = true
        end
      end
    else
      for i = 1, nd do
        local k = row + dead[i]
        if ig[k] ~= 0 then
          ig[k] = 0
          dropped = true
        end
      end
    end
  end
  return dropped
end

local function neuron_any(g)
  local NF, D, nig = g.n_forward, g.cfg.d_model, g.neurons_in_graph
  local any = bytes(NF)
  for u = 0, NF - 1 do
    local row = u * D
    for d = 0, D - 1 do
      if nig[row + d] ~= 0 then
        any[u] = 1
        break
      end
    end
  end
  return any
end

-- prune(): makes the circuit connected. Repeats until nothing changes: a node is in iff it has an
-- outgoing and an incoming edge (input counts as having one; on neuron graphs it also needs a
-- neuron), then edges lose a missing source or destination (logits is always in). Finally the
-- neurons of removed nodes go. Unlike EAP-IG's loop, which stops as soon as the node set is
-- stable even if that pass removed edges, this runs to the fixed point (its stated intent).
function Graph:prune()
  local NF = self.n_forward
  local nodes = self.nodes_in_graph
  local has_neuron = self.neurons_in_graph and neuron_any(self)
  local out, inn = bytes(NF), bytes(NF)
  repeat
    edge_endpoints(self, out, inn)
    local changed = false
    for u = 0, NF - 1 do
      local keep = 0
      if out[u] ~= 0 and inn[u] ~= 0 and (not has_neuron or has_neuron[u] ~= 0) then keep = 1 end
      if nodes[u] ~= keep then
        nodes[u] = keep
        changed = true
      end
    end
    local dropped = drop_dangling_edges(self)
  until not changed and not dropped
  nodes[NF] = 1
  if self.neurons_in_graph then
    local D = self.cfg.d_model
    for u = 0, NF - 1 do
      if nodes[u] == 0 then ffi.fill(self.neurons_in_graph + u * D, D, 0) end
    end
  end
end

-- After an edge-level selection from an empty circuit, nodes with edges both ways join it (the
-- neurons too: edge-level selection does not choose neurons, and prune removes those of dropped nodes).
local function nodes_from_edges(g)
  local NF = g.n_forward
  local out, inn = bytes(NF), bytes(NF)
  edge_endpoints(g, out, inn)
  for u = 0, NF - 1 do
    if out[u] ~= 0 and inn[u] ~= 0 then g.nodes_in_graph[u] = 1 end
  end
  if g.neurons_in_graph then ffi.fill(g.neurons_in_graph, NF * g.cfg.d_model, 1) end
end

-- After a node- or neuron-level selection from an empty circuit: every real outgoing edge of a
-- chosen node joins (EAP-IG adds whole rows; only real edges here), prune then keeps those whose
-- destination was chosen too.
local function edges_from_nodes(g)
  local NF, NB = g.n_forward, g.n_backward
  local ig, real, nodes = g.in_graph, g.real, g.nodes_in_graph
  for u = 0, NF - 1 do
    if nodes[u] ~= 0 then
      local row = u * NB
      for v = 0, NB - 1 do
        if real[row + v] ~= 0 then ig[row + v] = 1 end
      end
    end
  end
end

-- ---- selection -----------------------------------------------------------------------------------

-- The value of rank n (1-based) of a[0..m-1] in descending order, by quickselect (Hoare partition,
-- median-of-three pivot): expected linear time; a is reordered. Ties never slow it down: equal
-- keys are split evenly between the two sides.
local function nth_largest(a, m, n)
  local lo, hi, k = 0, m - 1, n - 1
  while lo < hi do
    local x, y, z = a[lo], a[rshift(lo + hi, 1)], a[hi]
    local pivot -- median of x, y, z by comparisons only (keys may be -inf)
    if x < y then
      if y < z then pivot = y elseif x < z then pivot = z else pivot = x end
    else
      if x < z then pivot = x elseif y < z then pivot = z else pivot = y end
    end
    local i, j = lo, hi
    while i <= j do
      while a[i] > pivot do i = i + 1 end
      while a[j] < pivot do j = j - 1 end
      if i <= j then
        a[i], a[j] = a[j], a[i]
        i, j = i + 1, j - 1
      end
    end
    if k <= j then
      hi = j
    elseif k >= i then
      lo = i
    else
      return a[k]
    end
  end
  return a[k]
end

-- Score used for ranking: |s| when absolute; NaN ranks below everything (so it is never chosen
-- before a real score).
local function rank_key(s, absolute)
  if absolute and s < 0 then s = -s end
  if s ~= s then return -huge end
  return s
end

-- Marks the top n of the candidates (mask[i] ~= 0, or every i when mask is nil) in out[0..m-1]:
-- key > n-th value, then ties at that value in index order until n are marked. Unmarked
-- candidates are cleared; out is left alone where the mask is 0. `candidates` = mask's count.
local function mark_top(values, mask, total, n, absolute, out, candidates)
  if n == 0 then
    for i = 0, total - 1 do
      if mask == nil or mask[i] ~= 0 then out[i] = 0 end
    end
    return
  end
  local keys, m = floats(candidates), 0
  for i = 0, total - 1 do
    if mask == nil or mask[i] ~= 0 then
      keys[m] = rank_key(values[i], absolute)
      m = m + 1
    end
  end
  local kth = nth_largest(keys, m, n)
  local greater = 0
  for j = 0, m - 1 do
    if keys[j] > kth then greater = greater + 1 end
  end
  local ties = n - greater
  for i = 0, total - 1 do
    if mask == nil or mask[i] ~= 0 then
      local key, mark = rank_key(values[i], absolute), 0
      if key > kth then
        mark = 1
      elseif key == kth and ties > 0 then
        mark, ties = 1, ties - 1
      end
      out[i] = mark
    end
  end
end

-- Scored entries (not NaN) of a score buffer, and a mask of them.
local function scored_mask(values, n)
  local mask, count = bytes(n), 0
  for i = 0, n - 1 do
    if values[i] == values[i] then
      mask[i] = 1
      count = count + 1
    end
  end
  return mask, count
end

-- Unscored nodes / neurons always stay in (NaN means "not scored, keep it"), as in EAP-IG.
local function keep_unscored(mask, n, out)
  for i = 0, n - 1 do
    if mask[i] == 0 then out[i] = 1 end
  end
end

-- The scores, their count, the membership array and the plural noun of a node- or neuron-level
-- selection.
local function unit_arrays(g, level)
  if level == "node" then return g.node_scores, g.n_forward, g.nodes_in_graph, "nodes" end
  return g.neuron_scores, g.n_forward * g.cfg.d_model, g.neurons_in_graph, "neurons"
end

-- From an empty circuit, a node or neuron selection brings in the chosen nodes (for neurons: every
-- node with a chosen neuron) and their real outgoing edges.
local function edges_from_units(g, level)
  if level == "neuron" then
    local any, nig = neuron_any(g), g.nodes_in_graph
    for u = 0, g.n_forward - 1 do
      if any[u] ~= 0 then nig[u] = 1 end
    end
  end
  edges_from_nodes(g)
end

-- The end of apply_topn / apply_threshold once the chosen entries are marked. From an empty circuit
-- (reset) an edge selection brings in the nodes with edges both ways; a node or neuron selection
-- (mask, total, out from unit_arrays and scored_mask) first keeps its unscored entries, then
-- brings in the chosen nodes' edges. Then prune when asked.
local function finish_selection(g, o, mask, total, out)
  if mask then
    keep_unscored(mask, total, out)
    if o.reset then edges_from_units(g, o.level) end
  elseif o.reset then
    nodes_from_edges(g)
  end
  if o.prune then g:prune() end
  g.selected = true
  return g
end

local SELECT_DEFAULTS = { absolute = true, level = "edge", reset = true, prune = true }

-- Selecting by scores the graph does not have is a mistake (the circuit would be arbitrary): say
-- how to get them. Edge scores all 0 mean the graph was never attributed.
local function need_scores(g, level, where)
  local NF, NB = g.n_forward, g.n_backward
  if level == "edge" then
    local s, real = g.scores, g.real
    for i = 0, NF * NB - 1 do
      if real[i] ~= 0 and s[i] ~= 0 and s[i] == s[i] then return end
    end
    fail("%s: the graph has no edge scores (all are 0): score it first with " ..
      "eapig.attribute(model, graph, data, metric), or load a scored graph", where)
  end
  local values, n = g.node_scores, NF
  if level == "neuron" then values, n = g.neuron_scores, NF * g.cfg.d_model end
  for i = 0, n - 1 do
    if values[i] == values[i] then return end
  end
  fail("%s: the graph has no %s scores: create it with Graph.from_model(model, {level = \"%s\"}) and " ..
    "attribute it (EAP, EAP-IG-inputs or exact), or select at level \"edge\"", where, level, level)
end

-- apply_topn(n, {absolute = true, level = "edge", reset = true, prune = true}): keeps the n
-- highest-scoring edges (or nodes, or neurons; unscored nodes and neurons always stay), ties broken
-- by index order. From an empty circuit (reset), an edge selection brings in the nodes with edges
-- both ways, a node or neuron selection brings in the chosen nodes' real outgoing edges.
function Graph:apply_topn(n, ...)
  local where = "Graph:apply_topn"
  local o = options(positional(where, ...), SELECT_DEFAULTS, where)
  check_level(o.level, where)
  check_count(n, where)
  if o.level == "neuron" then need_neurons(self, where .. " (level 'neuron')") end
  if n > 0 then need_scores(self, o.level, where) end
  local NF, NB = self.n_forward, self.n_backward

  if o.level == "edge" then
    if n > self._n_real then
      fail("%s: n (%d) is larger than the number of edges (%d)", where, n, self._n_real)
    end
    if o.reset then self:reset(true) end
    mark_top(self.scores, self.real, NF * NB, n, o.absolute, self.in_graph, self._n_real)
    return finish_selection(self, o)
  else
    local values, total, out, noun = unit_arrays(self, o.level)
    local mask, scored = scored_mask(values, total)
    if n > scored then
      fail("%s: n (%d) is larger than the number of scored %s (%d)", where, n, noun, scored)
    end
    if o.reset then self:reset(true) end
    mark_top(values, mask, total, n, o.absolute, out, scored)
    return finish_selection(self, o, mask, total, out)
  end
end

-- Thresholds compare in float32, as EAP-IG's float32 tensors do against a Python float.
local function as_float32(t)
  local f = float1()
  f[0] = t
  return f[0]
end

-- Marks out[i] = key >= t where mask allows (unscored entries: see keep_unscored).
local function mark_threshold(values, mask, total, t, absolute, out)
  for i = 0, total - 1 do
    if mask == nil or mask[i] ~= 0 then
      out[i] = rank_key(values[i], absolute) >= t and 1 or 0
    end
  end
end

-- apply_threshold(t, {absolute, level, reset, prune}): keeps every edge (node, neuron) whose score
-- (absolute value by default) is >= t; otherwise as apply_topn.
function Graph:apply_threshold(t, ...)
  local where = "Graph:apply_threshold"
  local o = options(positional(where, ...), SELECT_DEFAULTS, where)
  check_level(o.level, where)
  if type(t) ~= "number" or t ~= t then fail("%s: threshold must be a number, got %s", where, tostring(t)) end
  t = as_float32(t)
  local NF, NB = self.n_forward, self.n_backward
  if o.level == "neuron" then need_neurons(self, where .. " (level 'neuron')") end
  need_scores(self, o.level, where)
  if o.reset then self:reset(true) end

  if o.level == "edge" then
    ffi.fill(self.in_graph, NF * NB, 0) -- non-real edges are never in
    mark_threshold(self.scores, self.real, NF * NB, t, o.absolute, self.in_graph)
    return finish_selection(self, o)
  else
    local values, total, out = unit_arrays(self, o.level)
    local mask = scored_mask(values, total)
    mark_threshold(values, mask, total, t, o.absolute, out)
    return finish_selection(self, o, mask, total, out)
  end
end

-- A binary max-heap of candidate edges on (key, then lower flat index first), in FFI arrays sized
-- for every real edge (each edge enters at most once: when its destination node joins).
local function heap_new(cap)
  return { key = doubles(cap), idx = int32s(cap), size = 0 }
end

local function heap_push(hp, key, idx)
  local hk, hi = hp.key, hp.idx
  local c = hp.size
  hp.size = c + 1
  while c > 0 do
    local p = rshift(c - 1, 1)
    local pk, pi = hk[p], hi[p]
    if pk > key or (pk == key and pi < idx) then break end
    hk[c], hi[c] = pk, pi
    c = p
  end
  hk[c], hi[c] = key, idx
end

local function heap_pop(hp)
  local hk, hi = hp.key, hp.idx
  local top = hi[0]
  local n = hp.size - 1
  hp.size = n
  local key, idx = hk[n], hi[n]
  local c = 0
  while true do
    local l = 2 * c + 1
    if l >= n then break end
    local r = l + 1
    if r < n and (hk[r] > hk[l] or (hk[r] == hk[l] and hi[r] < hi[l])) then l = r end
    if key > hk[l] or (key == hk[l] and idx < hi[l]) then break end
    hk[c], hi[c] = hk[l], hi[l]
    c = l
  end
  hk[c], hi[c] = key, idx
  return top
end

-- apply_greedy(n, {absolute = true, reset = true, prune = true}): EAP-IG's greedy search from the
-- logits upward: repeatedly take the best edge into a node already in the circuit (logits at
-- first); when its source is new, the source joins and its incoming edges become candidates.
-- Ties go to the lower matrix index.
function Graph:apply_greedy(n, ...)
  local where = "Graph:apply_greedy"
  local o = options(positional(where, ...), { absolute = true, reset = true, prune = true }, where)
  check_count(n, where)
  if n > self._n_real then
    fail("%s: n (%d) is larger than the number of edges (%d)", where, n, self._n_real)
  end
  if n > 0 then need_scores(self, "edge", where) end
  local NF, NB = self.n_forward, self.n_backward
  local scores, real, ig, nodes = self.scores, self.real, self.in_graph, self.nodes_in_graph
  local first, count = self._slot_first, self._slot_count
  local absolute, H = o.absolute, self.cfg.n_heads
  if o.reset then
    ffi.fill(ig, NF * NB, 0)
    ffi.fill(nodes, NF, 0)
    if self.neurons_in_graph then ffi.fill(self.neurons_in_graph, NF * self.cfg.d_model, 1) end
  end

  local hp = heap_new(self._n_real)
  -- Candidates: the real edges into node w's input slots (heads: q, k, v, H apart).
  local function add_inputs(w)
    for c = 0, count[w] - 1 do
      local v = first[w] + c * H
      for u = 0, NF - 1 do
        local i = u * NB + v
        if real[i] ~= 0 and ig[i] == 0 then heap_push(hp, rank_key(scores[i], absolute), i) end
      end
    end
  end
  add_inputs(NF)
  for w = 0, NF - 1 do
    if nodes[w] ~= 0 then add_inputs(w) end
  end

  while n > 0 and hp.size > 0 do
    local i = heap_pop(hp)
    ig[i] = 1
    n = n - 1
    local u = floor(i / NB)
    if nodes[u] == 0 then
      nodes[u] = 1
      add_inputs(u)
    end
  end
  if o.prune then self:prune() end
  self.selected = true
  return self
end

-- ---- files (eapig.graph_io; loaded on first use, it requires this module) ----------------------

local function io_module()
  return require("eapig.formats.graph_io")
end

function Graph:to_json(path) return io_module().to_json(self, path) end
function Graph.from_json(path) return io_module().from_json(path) end
function Graph:to_safetensors(path) return io_module().to_safetensors(self, path) end
function Graph.from_safetensors(path) return io_module().from_safetensors(path) end
function Graph:to_dot(path, opts) return io_module().to_dot(self, path, opts) end
function Graph:draw(path, opts) return io_module().draw(self, path, opts) end

-- EAP-IG's to_image(filename, colorscheme, minimum_penwidth, maximum_penwidth, layout, seed):
-- graph:draw with those options, positional as in EAP-IG or as one options table.
function Graph:to_image(path, colorscheme, minimum_penwidth, maximum_penwidth, layout, seed)
  if type(colorscheme) == "table" then return self:draw(path, colorscheme) end
  return self:draw(path, { colorscheme = colorscheme, minimum_penwidth = minimum_penwidth,
    maximum_penwidth = maximum_penwidth, layout = layout, seed = seed })
end

return Graph
