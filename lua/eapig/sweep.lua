-- eapig.sweep: faithfulness of circuits of several sizes selected from one scored graph, and
-- MIB's two areas under that curve. This is the one implementation of both: the CLI's `sweep`,
-- the demo and MIB scoring call it.
--
--   CPR (circuit performance ratio): area under faithfulness, edges ranked by SIGNED score
--        (higher is better);
--   CMD (circuit-model difference): area under |1 - faithfulness|, edges ranked by ABSOLUTE
--        score (lower is better).
--
-- As in MIB's evaluation: at fraction p the circuit is the top floor(p * edges) edges, pruned;
-- faithfulness is (m(C) - m(empty)) / (m(N) - m(empty)) with m(empty) the empty circuit under the
-- same intervention; the areas are trapezoids over the fractions themselves (a linear x axis).
local evaluate = require("eapig.evaluate")
local options = require("eapig.options")

local M = {}

-- MIB's edge fractions.
M.DEFAULT_FRACTIONS = { 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0 }

-- Trapezoid area under f(y) over the points' x range, points sorted by x.
function M.area(points, f)
  local a = 0
  for i = 2, #points do
    local x0, x1 = points[i - 1].x, points[i].x
    local y0, y1 = f(points[i - 1].y), f(points[i].y)
    a = a + (x1 - x0) * (y0 + y1) / 2
  end
  return a
end

-- CPR of a curve: the area under faithfulness.
function M.cpr(points) return M.area(points, function(y) return y end) end

-- CMD of a curve: the area under |1 - faithfulness|.
function M.cmd(points) return M.area(points, function(y) return math.abs(1 - y) end) end

-- The number of edges at a fraction of `total`, as MIB counts them.
function M.edges_at(fraction, total)
  return math.floor(fraction * total)
end

local RUN_OPTIONS = { "fractions", "signed", "measure", "intervention", "intervention_data", "reference",
  "batch_size", "quiet" }

-- The circuits of one curve: the top n edges at each fraction, ranked by absolute or signed
-- scores (not pruned yet: the evaluation prunes).
local function curve_graphs(graph, fractions, absolute)
  local total = graph:n_edges()
  local graphs = {}
  for k, frac in ipairs(fractions) do
    local g = graph:clone()
    g:apply_topn(M.edges_at(frac, total), { absolute = absolute })
    graphs[k] = g
  end
  return graphs
end

-- A curve's points from its circuits' mean metric values (values[k] for graphs[k]).
local function curve_points(graphs, values, fractions, absolute, base, quiet)
  local total = graphs[1] and graphs[1]:n_edges() or 0
  local points = {}
  for k, frac in ipairs(fractions) do
    local g, n = graphs[k], M.edges_at(frac, total)
    -- A circuit that pruning empties is the empty circuit: m(empty), faithfulness 0.
    local value = g:count_included_edges() > 0 and values[k] or base.empty
    points[k] = { x = frac, y = evaluate.faithfulness(value, base.clean, base.empty), n_edges = n,
      kept_edges = g:count_included_edges(), value = value }
    if not quiet then
      io.stderr:write(("  %6.2f%% of edges (%d, %s scores): faithfulness %.3f\n"):format(100 * frac, n,
        absolute and "absolute" or "signed", points[k].y))
    end
  end
  table.sort(points, function(a, b) return a.x < b.x end)
  return points
end

-- run(model, graph, data, metric, opts) -> { points, clean, empty, corrupted, cmd and/or cpr,
-- cpr_points (when both are measured) }. points: { x = fraction, y = faithfulness, n_edges (the
-- top-n size), kept_edges (after pruning), value (the circuit's mean metric) }.
-- opts: fractions (MIB's), measure ("cmd": absolute ranking, the default; "cpr": signed ranking;
-- "both": two curves; points is then the CMD curve and cpr_points the CPR one), signed (true is
-- measure = "cpr"), intervention, intervention_data, reference, batch_size, quiet.
function M.run(model, graph, data, metric, opts)
  opts = options.check(opts, RUN_OPTIONS, "sweep")
  local measure = opts.measure or (opts.signed and "cpr" or "cmd")
  if measure ~= "cmd" and measure ~= "cpr" and measure ~= "both" then
    error(("sweep: unknown measure '%s' (expected cmd, cpr or both)"):format(tostring(measure)), 0)
  end
  local fractions = opts.fractions or M.DEFAULT_FRACTIONS
  for _, frac in ipairs(fractions) do
    if type(frac) ~= "number" or not (frac > 0 and frac <= 1) then
      error(("sweep: size %s is not a fraction of the edges in (0, 1]"):format(tostring(frac)), 0)
    end
  end
  local eopts = { intervention = opts.intervention, intervention_data = opts.intervention_data,
    reference = opts.reference, batch_size = opts.batch_size, quiet = true }
  -- Every circuit of every curve, and the empty circuit first, in one pass over the data: the
  -- reference values of each batch are computed once for all of them, and the model's values on
  -- the clean and corrupted inputs come from the same pass (baselines).
  local empty = graph:clone()
  empty:apply_topn(0)
  local curves = {}
  if measure ~= "cpr" then curves[#curves + 1] = { absolute = true } end
  if measure ~= "cmd" then curves[#curves + 1] = { absolute = false } end
  local all = { empty }
  for _, c in ipairs(curves) do
    c.graphs = curve_graphs(graph, fractions, c.absolute)
    for _, g in ipairs(c.graphs) do
      -- circuits that pruning empties are not run: their value is m(empty)
      g:prune()
      if g:count_included_edges() > 0 then all[#all + 1] = g; c[#c + 1] = #all else c[#c + 1] = false end
    end
  end
  local eopts_pruned = { baselines = true }
  for k, v in pairs(eopts) do eopts_pruned[k] = v end
  eopts_pruned.prune = false -- pruned above
  local values, clean, corrupted = evaluate.evaluate_graphs(model, all, data, metric, eopts_pruned)
  local base = { clean = evaluate.mean(clean), corrupted = evaluate.mean(corrupted), empty = evaluate.mean(values[1]) }
  local result = { clean = base.clean, corrupted = base.corrupted, empty = base.empty, measure = measure }
  for _, c in ipairs(curves) do
    local means = {}
    for k = 1, #fractions do means[k] = c[k] and evaluate.mean(values[c[k]]) or base.empty end
    local pts = curve_points(c.graphs, means, fractions, c.absolute, base, opts.quiet)
    if c.absolute then
      result.points, result.cmd = pts, M.cmd(pts)
    else
      result.cpr = M.cpr(pts)
      if measure == "cpr" then result.points = pts else result.cpr_points = pts end
    end
  end
  return result
end

return M
