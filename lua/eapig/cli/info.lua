-- `eapig info --model PATH [--json]`: a model's shape and the size of its graph, from
-- model:info(). Loading the model is the check: a bad checkpoint fails here with the loader's
-- message naming the file and the field.
local cli = require("eapig.cli")

-- Rows of the readable form: label, info key (or a function of the info table).
local ROWS = {
  { "family", "family" },
  { "layers", "n_layers" },
  { "heads", "n_heads" },
  { "kv heads", "n_kv_heads" },
  { "d_model", "d_model" },
  { "d_head", "d_head" },
  { "d_mlp", "d_mlp" },
  { "vocab", "vocab" },
  { "context", "n_ctx" },
  { "norm", "norm" },
  { "parallel", function(i) return i.parallel_attn_mlp and "yes (attention and MLP read the same stream)" or "no" end },
  { "n_forward", function(i) return ("%d (source nodes: input, heads, MLPs)"):format(i.n_forward) end },
  { "n_backward", function(i) return ("%d (destinations: q/k/v inputs, MLP inputs, logits)"):format(i.n_backward) end },
  { "edges", "n_edges" },
  { "mpi", function(i) return i.mpi and ("yes (mpirun -np K runs batches in parallel; %s)"):format(i.mpi) or "no (built without MPI)" end },
  { "weights", function(i)
    if i.weights == "stored" then
      return ("stored (%s, memory-mapped; one layer converted to f32 at a time)"):format(i.weights_dtype or "?")
    end
    return ("f32 (converted at load from %s)"):format(i.weights_dtype or "?")
  end },
}

local JSON_KEYS = { "path", "family", "n_layers", "n_heads", "n_kv_heads", "d_model", "d_head", "d_mlp",
  "vocab", "n_ctx", "norm", "parallel_attn_mlp", "n_forward", "n_backward", "n_edges", "mpi", "weights",
  "weights_dtype" }

return function(argv)
  local parser = cli.parser("info", "Print a model's shape and the size of its graph.")
  parser:option("--model", "Hugging Face folder or llama2.c .bin checkpoint."):argname("PATH"):count(1)
  cli.weights_options(parser)
  parser:flag("--json", "Print model:info() as one JSON object.")
  local args = cli.parse(parser, argv, "info")

  local model = cli.load_model(args.model, args)
  local info = model:info()
  info.path = args.model
  -- whether this build can spread batches over MPI ranks (mpirun -np K eapig attribute ...)
  local parallel = require("eapig.parallel")
  info.mpi = parallel.available() and parallel.library_version() or false
  if args.json then
    -- the known keys in a readable order, then any others model:info() gains later
    local keys, seen = {}, {}
    for i, k in ipairs(JSON_KEYS) do keys[i], seen[k] = k, true end
    local extra = {}
    for k in pairs(info) do
      if not seen[k] then extra[#extra + 1] = k end
    end
    table.sort(extra)
    for _, k in ipairs(extra) do keys[#keys + 1] = k end
    print(cli.json_object(keys, info))
    return 0
  end
  print(("model      %s"):format(args.model))
  for _, row in ipairs(ROWS) do
    local key = row[2]
    local value = type(key) == "function" and key(info) or info[key]
    if value ~= nil then print(("%-10s %s"):format(row[1], tostring(value))) end
  end
  return 0
end
