-- `eapig circuit --graph GRAPH.json (--topn N | --threshold T | --greedy N) --out CIRCUIT.json`:
-- selects a circuit from a scored graph and writes it (the same file layout, with in_graph set).
-- Scores rank by absolute value unless --signed; the circuit is pruned unless --no-prune.
local cli = require("eapig.cli")

local EPILOG = [[
--topn keeps the N best edges (nodes, neurons with --level); --threshold keeps every score >= T;
--greedy grows the circuit from the logits upward, N edges, as EAP-IG's greedy search does.]]

return function(argv)
  local parser = cli.parser("circuit", "Select a circuit from a scored graph.", EPILOG)
  parser:option("--graph", "Scored graph (.json, or .safetensors)."):argname("GRAPH"):count(1)
  local topn = parser:option("--topn", "Keep the N highest-scoring edges."):argname("N")
    :convert(cli.integer("--topn", 0))
  local threshold = parser:option("--threshold", "Keep every edge scoring >= T."):argname("T")
    :convert(cli.number("--threshold"))
  local greedy = parser:option("--greedy", "Greedy search from the logits: N edges."):argname("N")
    :convert(cli.integer("--greedy", 0))
  parser:mutex(topn, threshold, greedy)
  parser:option("--level", "Select edges, nodes or neurons (--topn, --threshold): edge, node, neuron.", "edge")
    :argname("LEVEL"):convert(cli.one_of("level", { "edge", "node", "neuron" }))
  parser:flag("--signed", "Rank by signed score (default: absolute value).")
  parser:flag("--no-prune", "Keep edges and nodes that do not connect input to logits.")
  parser:option("--out", "Circuit to write (.json, or .safetensors)."):argname("CIRCUIT"):count(1)
  local args = cli.parse(parser, argv, "circuit")

  if not (args.topn or args.threshold or args.greedy) then
    cli.fail("circuit: give one of --topn N, --threshold T or --greedy N")
  end
  if args.greedy and args.level ~= "edge" then
    cli.fail("circuit: --greedy selects edges only; --level %s needs --topn or --threshold", args.level)
  end
  cli.check_out_suffix(args.out, { "json", "safetensors" }, "circuits")
  cli.check_writable(args.out)

  local graph = cli.load_graph(args.graph)
  local absolute, prune = not args.signed, not args.no_prune
  if args.topn then
    graph:apply_topn(args.topn, { absolute = absolute, level = args.level, prune = prune })
  elseif args.threshold then
    graph:apply_threshold(args.threshold, { absolute = absolute, level = args.level, prune = prune })
  else
    graph:apply_greedy(args.greedy, { absolute = absolute, prune = prune })
  end
  cli.write_graph(graph, args.out)
  print(("%s: %d edges, %d nodes in the circuit"):format(args.out, graph:count_included_edges(),
    graph:count_included_nodes()))
  return 0
end
