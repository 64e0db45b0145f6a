-- `eapig mib export --graph SCORES --task TASK --model MODEL --out DIR [--circuits] [--signed]`:
-- writes the folder MIB's circuit localization track takes (docs/mib.md): DIR/<task>_<model>/
-- with the scored graph as importances.json, or with --circuits the nine binary circuits.
-- `eapig mib score --model PATH --data FILE --graph SCORES [--json]`: MIB's CPR and CMD of the
-- scored graph on a dataset (eapig.sweep with MIB's fractions and both rankings).
local cli = require("eapig.cli")
local mib = require("eapig.apps.mib")

local USAGE = "usage: eapig mib export --graph SCORES --task TASK --model MODEL --out DIR [--circuits] [--signed]\n"
  .. "       eapig mib score --model PATH --data FILE --graph SCORES [--metric NAME] [--intervention KIND] [--json]"

local EXPORT_EPILOG = ([[
Tasks: %s. Models: gpt2, qwen2.5, gemma2, llama3 (the graph must have that model's layers, heads
and width). --circuits writes the circuits with at most 0.1, 0.2, 0.5, 1, 2, 5, 10, 20 and 50%% of
the edges (top-n, pruned) instead of the scores.]]):format(table.concat(mib.TASKS, ", "))

local function export(argv)
  local parser = cli.parser("mib export", "Write a scored graph as an MIB circuit-track submission folder.",
    EXPORT_EPILOG)
  parser:option("--graph", "Scored graph (.json, or .safetensors)."):argname("SCORES"):count(1)
  parser:option("--task", "MIB task name."):argname("TASK"):count(1)
  parser:option("--model", "MIB model name."):argname("MODEL"):count(1)
  parser:option("--out", "Folder in which <task>_<model>/ is written."):argname("DIR"):count(1)
  parser:flag("--circuits", "Write the nine binary circuits instead of the scores.")
  parser:flag("--signed", "With --circuits: rank edges by signed score (default: absolute value).")
  local args = cli.parse(parser, argv, "mib export")
  mib.folder_name(args.task, args.model) -- names first: a typo costs no graph loading
  local graph = cli.load_graph(args.graph)
  local folder, written = mib.export(graph, args.task, args.model, args.out,
    { circuits = args.circuits, signed = args.signed })
  for _, w in ipairs(written) do
    if w.percent then
      print(("%s/%s: %d of %d edges (at most %g%%: %d)"):format(folder, w.file, w.kept, graph:n_edges(), w.percent, w.n))
    else
      print(("%s/%s: %d scored edges"):format(folder, w.file, graph:n_edges()))
    end
  end
  return 0
end

local SCORE_EPILOG = [[
Faithfulness f = (m(C) - m(empty)) / (m(model) - m(empty)) of the top-n circuit (pruned) at MIB's
fractions 0.1%, 0.2%, 0.5%, 1%, 2%, 5%, 10%, 20%, 50%, 100% of the edges; m(empty) is the empty
circuit under the same intervention. CPR: trapezoid area under f, edges ranked by signed score
(higher is better). CMD: area under |1 - f|, edges ranked by absolute score (lower is better).]]

local function score(argv)
  local parser = cli.parser("mib score", "MIB's CPR and CMD of a scored graph on a dataset.", SCORE_EPILOG)
  cli.model_options(parser)
  cli.data_option(parser)
  parser:option("--graph", "Scored graph (.json or .safetensors) from eapig attribute."):argname("SCORES"):count(1)
  parser:option("--metric", "Metric.", "logit_diff"):argname("NAME")
  cli.intervention_options(parser, "What edges outside the circuit read.")
  cli.batch_size_option(parser)
  parser:flag("--json", "Print the result as one JSON object.")
  parser:flag("--quiet", "No progress lines.")
  local args = cli.parse(parser, argv, "mib score")
  cli.check_intervention_data(args, "mib score")
  local graph, model = cli.load_graph_and_model(args)
  local data = cli.load_data(args.data, model, "--data", args.metric)
  local idata = cli.load_intervention_data(args, model)
  local root = require("eapig.parallel").is_root() -- under mpirun, rank 0 prints
  local r = mib.score(model, graph, data, args.metric, { intervention = args.intervention,
    intervention_data = idata, batch_size = args.batch_size, quiet = args.quiet or args.json or not root })
  if not root then return 0 end
  if args.json then
    local function curve(points)
      local out = {}
      for i, p in ipairs(points) do out[i] = { fraction = p.x, edges = p.n_edges, kept_edges = p.kept_edges,
        faithfulness = p.y, value = p.value } end
      return out
    end
    print(require("cjson").encode({ cpr = r.cpr, cmd = r.cmd, clean = r.clean, empty = r.empty,
      corrupted = r.corrupted, intervention = args.intervention, absolute = curve(r.points),
      signed = curve(r.cpr_points) }))
    return 0
  end
  print(("clean %.6g, empty circuit %.6g (%s)"):format(r.clean, r.empty, args.intervention))
  print("  fraction     edges  faithfulness (signed)  faithfulness (absolute)")
  for i, p in ipairs(r.points) do
    print(("%9.3f%%  %8d  %21.4f  %23.4f"):format(100 * p.x, p.n_edges, r.cpr_points[i].y, p.y))
  end
  print(("CPR %.4f (area under faithfulness, signed ranking; higher is better)"):format(r.cpr))
  print(("CMD %.4f (area under |1 - faithfulness|, absolute ranking; lower is better)"):format(r.cmd))
  return 0
end

return function(argv)
  local sub = argv[1]
  local rest = {}
  for i = 2, #argv do rest[#rest + 1] = argv[i] end
  if sub == "export" then return export(rest) end
  if sub == "score" then return score(rest) end
  if sub == nil or sub == "-h" or sub == "--help" then
    print(USAGE)
    return sub == nil and 1 or 0
  end
  cli.fail("mib: unknown subcommand '%s' (%s)", tostring(sub), USAGE)
end
