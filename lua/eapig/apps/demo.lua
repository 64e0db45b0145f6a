-- eapig.demo: the main job on the embedded model. It trained on the induction task, so we know
-- the circuit it must contain: a previous-token head in layer 0 whose output feeds the K input
-- of an induction head in layer 1, whose output feeds the logits. The heads are found from
-- attention patterns alone (eapig.heads); EAP-IG-inputs then has to find the edges between them.
local eapig = require("eapig")
local heads = require("eapig.apps.heads")
local sweep = require("eapig.sweep")
local induction = require("eapig.tasks.induction")

local M = {}

M.DEFAULT_MODEL = "induction-2l"
-- The sizes the demo evaluates: MIB's fractions (eapig.sweep's default) from 1% up.
M.FRACTIONS = { 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0 }
M.TARGET_FAITHFULNESS = 0.8
-- The demo's promise: a circuit of at most this fraction of the edges keeps TARGET_FAITHFULNESS.
M.MAX_FRACTION = 0.1

-- The embedded model's folder: installed beside the Lua modules, or in a checkout's models/.
function M.model_path()
  local init = package.searchpath("eapig", package.path)
  local base = init and init:match("^(.*)/[^/]+$") or "."
  for _, p in ipairs({ base .. "/models/" .. M.DEFAULT_MODEL, base .. "/../../models/" .. M.DEFAULT_MODEL,
    "models/" .. M.DEFAULT_MODEL }) do
    local f = io.open(p .. "/config.json", "rb")
    if f then f:close() return p end
  end
  error("demo: the embedded model " .. M.DEFAULT_MODEL .. " was not found beside the eapig modules", 0)
end

-- run(opts) -> report. opts: model (path), rows, ig_steps, seed, quiet.
function M.run(opts)
  opts = opts or {}
  local path = opts.model or M.model_path()
  local model = eapig.load(path)
  if model.n_layers < 2 then error("demo: the induction mechanism needs at least two layers", 0) end
  local r = { model = model, path = path }
  r.head_scores = heads.scores(model, { rows = 16, half = math.min(12, math.floor(model.n_ctx / 2)),
    seed = opts.seed or 1 })
  -- among the heads that write something (a trained-sparse model has heads with no output)
  local out = r.head_scores.output
  r.prev_head, r.prev_score = heads.best(r.head_scores.prev, 0, heads.writing(out, 0))
  r.ind_head, r.ind_score = heads.best(r.head_scores.induction, 1, heads.writing(out, 1))

  local task = induction.new({ vocab = model.vocab, seq_len = math.min(32, model.n_ctx) })
  local data = eapig.data.from_rows(task:dataset({ rows = opts.rows or 64, seed = opts.seed or 1 }),
    { vocab = model.vocab })
  r.data = data
  local graph = eapig.Graph.from_model(model)
  eapig.attribute(model, graph, data, "logit_diff", { method = "EAP-IG-inputs", ig_steps = opts.ig_steps or 5,
    batch_size = 16, quiet = opts.quiet })
  r.graph = graph
  r.curve = sweep.run(model, graph, data, "logit_diff", { fractions = M.FRACTIONS, batch_size = 16, quiet = true })
  r.clean, r.corrupted = r.curve.clean, r.curve.corrupted

  -- The circuit: the smallest size on the curve that keeps TARGET_FAITHFULNESS of the behaviour
  -- (the whole graph if none does).
  local chosen = r.curve.points[#r.curve.points]
  for _, p in ipairs(r.curve.points) do
    if p.y >= M.TARGET_FAITHFULNESS then chosen = p break end
  end
  r.circuit_fraction, r.faithfulness, r.n_circuit = chosen.x, chosen.y, chosen.n_edges
  local circuit = graph:clone()
  circuit:apply_topn(r.n_circuit, { absolute = true })
  r.circuit = circuit

  -- The mechanism's two edges, by name, in the selected circuit.
  local function in_circuit(name)
    local u, v = circuit:find_edge(name)
    return u ~= nil and circuit.in_graph[u * circuit.n_backward + v] == 1
  end
  r.k_edge = ("a0.h%d->a1.h%d<k>"):format(r.prev_head, r.ind_head)
  r.out_edge = ("a1.h%d->logits"):format(r.ind_head)
  r.k_edge_found, r.out_edge_found = in_circuit(r.k_edge), in_circuit(r.out_edge)
  r.found = r.k_edge_found and r.out_edge_found

  -- Top edges by |score|, and the ranks of the mechanism's two edges (ties by EAP-IG's order).
  local edges = {}
  for name, score in graph:edges() do edges[#edges + 1] = { name = name, score = score, order = #edges } end
  table.sort(edges, function(a, b)
    local x, y = math.abs(a.score), math.abs(b.score)
    if x ~= y then return x > y end
    return a.order < b.order
  end)
  r.top_edges = {}
  for i = 1, math.min(10, #edges) do r.top_edges[i] = edges[i] end
  for i, e in ipairs(edges) do
    if e.name == r.k_edge then r.k_edge_rank = i end
    if e.name == r.out_edge then r.out_edge_rank = i end
  end
  return r
end

-- Writes the demo's files into the folder `out`: circuit.json, curve.svg (faithfulness against
-- size, with a title and a legend) and circuit.svg (the circuit, titled, with a key to the edge
-- colours; needs Graphviz). Returns true, or false and why circuit.svg was not drawn.
function M.write_files(r, out)
  r.circuit:to_json(out .. "/circuit.json")
  local plot = require("eapig.apps.plot")
  plot.write(out .. "/curve.svg", plot.svg(r.curve.points, { logx = true, hline = 1,
    title = "Faithfulness of the induction circuit against its size", xlabel = "fraction of edges in the circuit",
    ylabel = "faithfulness", label = "top-n edges by |EAP-IG score|", hline_label = "the whole model (1)" }))
  local ok, err = pcall(r.circuit.draw, r.circuit, out .. "/circuit.svg", {
    title = ("Induction circuit of %s: %d edges of %d, faithfulness %.2f"):format(r.path:match("[^/]+$") or r.path,
      r.circuit:count_included_edges(), r.graph:n_edges(), r.faithfulness),
    legend = true })
  return ok, err
end

return M
