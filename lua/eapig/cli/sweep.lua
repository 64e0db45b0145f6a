-- `eapig sweep --model PATH --data FILE --graph SCORED.json [--sizes ...] --out curve.svg`:
-- evaluates top-n circuits at several fractions of the edges (MIB's by default), draws
-- faithfulness against size and prints MIB's areas under the curve: CMD (area under
-- |1 - faithfulness|, edges ranked by absolute score) and CPR (area under faithfulness, edges
-- ranked by signed score); --measure picks one or both (eapig.sweep).
local cli = require("eapig.cli")

local function fractions(text)
  local out = {}
  for item in text:gmatch("[^,%s]+") do
    local pct = item:match("^(.-)%%$")
    local v = tonumber(pct or item)
    if not v then return nil, ("--sizes: '%s' is not a number"):format(item) end
    if pct then v = v / 100 end
    out[#out + 1] = v
  end
  if #out == 0 then return nil, "--sizes: no sizes given" end
  return out
end

return function(argv)
  local parser = cli.parser("sweep", "Faithfulness against circuit size, drawn as an SVG curve.",
    "Sizes are fractions of the real edges (0.01) or percentages (1%), comma-separated.")
  cli.model_options(parser)
  cli.data_option(parser)
  parser:option("--graph", "Scored graph (.json or .safetensors) from eapig attribute."):argname("SCORED"):count(1)
  parser:option("--sizes", "Edge fractions (default MIB's 0.1%..100%)."):argname("LIST"):convert(fractions)
  parser:option("--metric", "Metric.", "logit_diff"):argname("NAME")
  cli.intervention_options(parser, "What edges outside the circuit read.")
  cli.batch_size_option(parser)
  parser:option("--measure", "cmd (edges ranked by |score|), cpr (by signed score) or both (two curves).", "cmd")
    :argname("WHICH"):convert(cli.one_of("measure", { "cmd", "cpr", "both" }))
  parser:flag("--signed", "Same as --measure cpr.")
  parser:flag("--quiet", "Print only the summary.")
  parser:option("--out", "SVG file for the curve."):argname("FILE.svg"):count(1)
  local args = cli.parse(parser, argv, "sweep")
  cli.check_out_suffix(args.out, { "svg" }, "the curve")
  cli.check_writable(args.out)
  cli.check_intervention_data(args, "sweep")

  local eapig = require("eapig")
  local graph, model = cli.load_graph_and_model(args)
  local data = cli.load_data(args.data, model, "--data", args.metric)
  local idata = cli.load_intervention_data(args, model)
  local root = require("eapig.parallel").is_root() -- under mpirun, rank 0 prints and writes
  local result = require("eapig.sweep").run(model, graph, data, args.metric, {
    fractions = args.sizes, measure = args.signed and "cpr" or args.measure, intervention = args.intervention,
    intervention_data = idata, batch_size = args.batch_size, quiet = args.quiet or not root,
  })
  if not root then return 0 end
  local plot = require("eapig.apps.plot")
  local series = { { points = result.points, label = result.measure == "cpr" and "signed scores (CPR)"
    or "absolute scores (CMD)" } }
  if result.cpr_points then series[2] = { points = result.cpr_points, label = "signed scores (CPR)" } end
  plot.write(args.out, plot.svg(result.points, { logx = true, hline = 1, series = series,
    title = ("Faithfulness against circuit size (%s)"):format(eapig.metrics.get(args.metric).name),
    xlabel = "fraction of edges in the circuit", ylabel = "faithfulness" }))
  print(("clean %.6g, corrupted %.6g, empty circuit %.6g (%s)"):format(result.clean, result.corrupted, result.empty,
    args.intervention))
  local function list(points, label)
    for _, p in ipairs(points) do
      print(("%8.3f%%  %7d edges  faithfulness %.4f%s"):format(100 * p.x, p.n_edges, p.y, label))
    end
  end
  list(result.points, result.cpr_points and "  (absolute)" or "")
  if result.cpr_points then list(result.cpr_points, "  (signed)") end
  if result.cpr then print(("CPR (area under faithfulness) %.4f"):format(result.cpr)) end
  if result.cmd then print(("CMD (area under |1 - faithfulness|) %.4f"):format(result.cmd)) end
  print("wrote " .. args.out)
  return 0
end
