-- eapig.sweep: faithfulness of circuits of several sizes selected from one scored graph, and
-- the area under that curve (MIB's CPR with signed scores, CMD with absolute ones).
local evaluate = require("eapig.evaluate")

local M = {}

-- MIB's edge fractions.
M.DEFAULT_FRACTIONS = { 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0 }

-- Trapezoid area under y(x) over the points' x range, points sorted by x.
function M.area(points, f)
  local a = 0
  for i = 2, #points do
    local x0, x1 = points[i - 1].x, points[i].x
    local y0, y1 = f(points[i - 1].y), f(points[i].y)
    a = a + (x1 - x0) * (y0 + y1) / 2
  end
  return a
end

-- run(model, graph, data, metric, opts) -> {points = {{x = fraction, y = faithfulness, n_edges}},
-- clean, corrupted, cpr | cmd}. opts: fractions (of the real edges), signed, intervention,
-- intervention_data, batch_size, quiet.
function M.run(model, graph, data, metric, opts)
  opts = opts or {}
  local fractions = opts.fractions or M.DEFAULT_FRACTIONS
  local total = graph:n_edges()
  local eopts = { intervention = opts.intervention, intervention_data = opts.intervention_data,
    batch_size = opts.batch_size, quiet = true }
  local clean = evaluate.mean(evaluate.evaluate_baseline(model, data, metric, eopts))
  local corrupted = evaluate.mean(evaluate.evaluate_baseline(model, data, metric,
    { batch_size = opts.batch_size, run_corrupted = true }))
  local points = {}
  for _, frac in ipairs(fractions) do
    if not (frac > 0 and frac <= 1) then
      error(("sweep: size %s is not a fraction of the edges in (0, 1]"):format(tostring(frac)), 0)
    end
    local g = graph:clone()
    local n = math.max(1, math.floor(frac * total + 0.5))
    g:apply_topn(n, { absolute = not opts.signed })
    local values = evaluate.evaluate_graph(model, g, data, metric, eopts)
    local circuit = evaluate.mean(values)
    points[#points + 1] = { x = frac, y = evaluate.faithfulness(circuit, clean, corrupted), n_edges = n,
      kept_edges = g:count_included_edges(), value = circuit }
    if not opts.quiet then
      io.stderr:write(("  %6.2f%% of edges (%d): faithfulness %.3f\n"):format(100 * frac, n, points[#points].y))
    end
  end
  table.sort(points, function(a, b) return a.x < b.x end)
  local result = { points = points, clean = clean, corrupted = corrupted }
  if opts.signed then
    result.cpr = M.area(points, function(y) return y end)
  else
    result.cmd = M.area(points, function(y) return math.abs(1 - y) end)
  end
  return result
end

return M
