-- `eapig mib export --graph SCORES --task TASK --model MODEL --out DIR [--circuits] [--signed]`:
-- writes the folder MIB's circuit localization track takes (docs/mib.md): DIR/<task>_<model>/
-- with the scored graph as importances.json, or with --circuits the nine binary circuits.
local cli = require("eapig.cli")
local mib = require("eapig.mib")

local USAGE = "usage: eapig mib export --graph SCORES --task TASK --model MODEL --out DIR [--circuits] [--signed]"

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

return function(argv)
  local sub = argv[1]
  local rest = {}
  for i = 2, #argv do rest[#rest + 1] = argv[i] end
  if sub == "export" then return export(rest) end
  if sub == nil or sub == "-h" or sub == "--help" then
    print(USAGE)
    return sub == nil and 1 or 0
  end
  cli.fail("mib: unknown subcommand '%s' (%s)", tostring(sub), USAGE)
end
