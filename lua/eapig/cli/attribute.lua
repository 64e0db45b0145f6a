-- `eapig attribute --model PATH --data FILE --out GRAPH.json [...]`: scores every edge (node,
-- neuron) of the model's graph on a dataset with one of EAP-IG's methods and writes the scored
-- graph (EAP-IG's JSON layout, or the binary form for a .safetensors suffix).
--
-- Everything cheap is checked before the model loads (options, files, that --out can be
-- written), so a typo fails at once rather than after a long load; the graph writers go through
-- a temporary file, so a failure never leaves a partial --out.
local cli = require("eapig.cli")

-- EAP-IG's names, from the attribution module itself, for --help and for failing before any
-- loading; eapig.attribute checks them again (and knows which combinations it can run).
local METHODS = require("eapig.attribute").METHODS
local INTERVENTIONS = require("eapig.runs").INTERVENTIONS

local EPILOG = [[
Data: JSONL rows {"clean": [ids], "corrupted": [ids], "correct": id|[ids], "incorrect": id|[ids]}.
Node and neuron levels take EAP, EAP-IG-inputs, EAP-IG-activations or exact.
Mean interventions need --intervention-data.
Example:
   eapig attribute --model gpt2 --data ioi.jsonl --ig-steps 5 --out graph.json]]

return function(argv)
  local parser = cli.parser("attribute", "Score the edges of a model's graph on a dataset.", EPILOG)
  cli.model_options(parser)
  cli.data_option(parser)
  parser:option("--method", "Attribution method: " .. table.concat(METHODS, ", ") .. ".", "EAP-IG-inputs")
    :argname("NAME"):convert(cli.one_of("method", METHODS))
  parser:option("--ig-steps", "Integrated-gradient steps (EAP-IG methods).", "5"):argname("N")
    :convert(cli.integer("--ig-steps", 1, 10000))
  parser:option("--metric", "Metric to attribute (logit_diff, prob_diff, kl_div, ...).", "logit_diff"):argname("NAME")
  cli.intervention_options(parser, "What replaces an edge's clean value: " .. table.concat(INTERVENTIONS, ", ") .. ".")
  parser:option("--level", "Score edges, nodes or neurons: edge, node, neuron.", "edge")
    :argname("LEVEL"):convert(cli.one_of("level", { "edge", "node", "neuron" }))
  cli.batch_size_option(parser)
  parser:option("--aggregation", "Reduce scores over d_model: sum, mean.", "sum")
    :argname("HOW"):convert(cli.one_of("aggregation", { "sum", "mean" }))
  parser:flag("--quiet", "No progress bar and no summary line.")
  parser:flag("--verbose", "Print each phase's time and measured peak resident memory.")
  parser:option("--out", "Scored graph to write (.json, or .safetensors for the binary form)."):argname("GRAPH")
    :count(1)
  local args = cli.parse(parser, argv, "attribute")

  local eapig = require("eapig")
  local metric = eapig.metrics.get(args.metric) -- unknown names fail here, listing the known ones
  cli.check_intervention_data(args, "attribute")
  cli.check_readable(args.data, "--data")
  if args.intervention_data then cli.check_readable(args.intervention_data, "--intervention-data") end
  cli.check_out_suffix(args.out, { "json", "safetensors" }, "scored graphs")
  cli.check_writable(args.out)

  local phase = cli.phases(args.verbose)
  local model = phase("load model", function() return cli.load_model(args.model, args) end)
  if args.verbose then io.stderr:write(("weights: %s (%s)\n"):format(model.weights, model.weights_why or "")) end
  local data, intervention_data, graph
  phase("load data", function()
    data = cli.load_data(args.data, model, "--data", metric)
    intervention_data = cli.load_intervention_data(args, model)
    graph = eapig.Graph.from_model(model, { level = args.level })
  end)
  phase("attribute", function()
    eapig.attribute(model, graph, data, metric, {
      method = args.method, ig_steps = args.ig_steps, intervention = args.intervention,
      intervention_data = intervention_data, aggregation = args.aggregation, batch_size = args.batch_size,
      quiet = args.quiet, memory = args.memory,
    })
  end)
  if not require("eapig.parallel").is_root() then return 0 end -- under mpirun, rank 0 writes
  phase("write graph", function() cli.write_graph(graph, args.out) end)
  if not args.quiet then
    print(("%s: %s scores of %d edges from %d rows (%s, %s)"):format(args.out, args.level,
      graph:n_edges(), #data, args.method, metric.name))
  end
  return 0
end
