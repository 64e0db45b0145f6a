-- `eapig evaluate --model PATH --data FILE --graph CIRCUIT.json [...]`: how much of the model's
-- behaviour a circuit keeps. Prints the metric on the clean run, on the corrupted run, with only
-- the empty circuit under the intervention (every edge reads its intervention value), with only
-- the circuit's edges clean, the faithfulness (circuit - empty) / (clean - empty) as MIB defines
-- it, and the circuit's size (after pruning, as evaluation prunes first).
local cli = require("eapig.cli")

local JSON_KEYS = { "clean", "corrupted", "empty", "circuit", "faithfulness", "n_edges", "n_nodes" }

return function(argv)
  local parser = cli.parser("evaluate", "Baselines, circuit value and faithfulness of a circuit.",
    "Values are means over the rows of the metric (the same metric the circuit was found with).")
  cli.model_options(parser)
  cli.data_option(parser)
  parser:option("--graph", "Circuit (.json, or .safetensors) from eapig circuit."):argname("CIRCUIT"):count(1)
  parser:option("--metric", "Metric (logit_diff, prob_diff, kl_div, accuracy, ...).", "logit_diff"):argname("NAME")
  cli.intervention_options(parser, "What edges outside the circuit read: "
    .. table.concat(require("eapig.runs").INTERVENTIONS, ", ") .. ".")
  cli.batch_size_option(parser)
  parser:flag("--json", "Print one JSON object: " .. table.concat(JSON_KEYS, ", ") .. ".")
  parser:flag("--quiet", "No progress bar.")
  local args = cli.parse(parser, argv, "evaluate")

  local eapig = require("eapig")
  local metric = eapig.metrics.get(args.metric)
  cli.check_intervention_data(args, "evaluate")
  cli.check_readable(args.data, "--data")

  local graph, model = cli.load_graph_and_model(args)
  if graph:count_included_edges() == 0 then
    cli.fail("evaluate: the graph '%s' has no edges in its circuit: select one first " ..
      "(eapig circuit --graph %s --topn N --out CIRCUIT.json)", args.graph, args.graph)
  end
  graph.selected = true -- a circuit file is a selection: one that pruning empties is the empty circuit
  local data = cli.load_data(args.data, model, "--data", metric)
  local intervention_data = cli.load_intervention_data(args, model)

  local evaluate = require("eapig.evaluate")
  local mean = evaluate.mean
  local opts = { batch_size = args.batch_size }
  local eopts = { intervention = args.intervention, intervention_data = intervention_data, batch_size = args.batch_size,
    quiet = args.quiet or args.json, memory = args.memory }
  local r = {}
  r.clean = mean(eapig.evaluate_baseline(model, data, metric, opts))
  r.corrupted = mean(eapig.evaluate_baseline(model, data, metric, { batch_size = args.batch_size, run_corrupted = true }))
  -- the empty circuit and the circuit in one pass: each batch's reference values are shared
  local empty = graph:clone()
  empty:apply_topn(0)
  local both = evaluate.evaluate_graphs(model, { empty, graph }, data, metric, eopts)
  r.empty, r.circuit = mean(both[1]), mean(both[2])
  -- Equal baselines leave faithfulness undefined: report that rather than fail, the other
  -- numbers still say something.
  if r.clean ~= r.empty then r.faithfulness = eapig.faithfulness(r.circuit, r.clean, r.empty) end
  r.n_edges, r.n_nodes = graph:count_included_edges(), graph:count_included_nodes()
  if not require("eapig.parallel").is_root() then return 0 end -- under mpirun, rank 0 prints

  if args.json then
    print(cli.json_object(JSON_KEYS, r))
    return 0
  end
  print(("metric        %s (%d rows, intervention %s)"):format(metric.name, #data, args.intervention))
  print(("clean         %.6g"):format(r.clean))
  print(("corrupted     %.6g"):format(r.corrupted))
  print(("empty circuit %.6g"):format(r.empty))
  print(("circuit       %.6g"):format(r.circuit))
  print(("faithfulness  %s"):format(r.faithfulness and ("%.6g"):format(r.faithfulness)
    or "undefined (the model and the empty circuit score the same)"))
  print(("circuit size  %d edges, %d nodes"):format(r.n_edges, r.n_nodes))
  return 0
end
