-- `eapig info --model PATH [--json] [--memory [GIB]]`: a model's shape and the size of its graph,
-- from model:info(), and with --memory what a run needs per phase (weights, activations, scores)
-- for a batch size and sequence length, against the memory budget. Loading the model is the
-- check: a bad checkpoint fails here with the loader's message naming the file and the field.
local cli = require("eapig.cli")
local options = require("eapig.options")
local memory_methods = require("eapig.attribute").METHODS

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

-- The --memory table: one row per phase of an attribution (and of an evaluation) of one batch.
local function print_memory(model, args, budget_gib)
  local memory = require("eapig.memory")
  local budget = memory.budget(budget_gib)
  local opts = { B = args.batch_size, P = args.seq_len, method = args.method, steps = args.ig_steps }
  local n = memory.steps_per_run(model, opts, budget)
  opts.steps_per_run = n or 1
  local e = memory.estimate(model, opts)
  local ev = memory.estimate(model, { B = args.batch_size, P = args.seq_len, method = "evaluate" })
  local weights = model.weights == "stored"
    and ("stored %s: f32 norms and biases, one layer converted to f32"):format(model.weights_dtype or "")
    or "f32 copy of every weight"
  print(("memory estimate: %d rows x %d positions, %s%s; budget %s"):format(args.batch_size, args.seq_len,
    args.method, e.steps_per_run and (" (%d steps, %d per run)"):format(e.steps, e.steps_per_run) or "",
    memory.format(budget)))
  print(("  %-12s %12s   %s"):format("weights", memory.format(e.weights), weights))
  print(("  %-12s %12s   %s"):format("activations", memory.format(e.activations),
    "node buffers, override values, logits and the engine's workspace of one batch"))
  print(("  %-12s %12s   %s"):format("scores", memory.format(e.scores), ("%d x %d edge matrix and masks"):format(
    model.n_forward, model.n_backward)))
  print(("  %-12s %12s   %s"):format("total", memory.format(e.total),
    n and "fits the budget" or "does NOT fit the budget: smaller --batch-size, --weights stored or more --memory"))
  print(("  %-12s %12s   %s"):format("evaluate", memory.format(ev.total), "weights + one patched batch + scores"))
  return 0
end

return function(argv)
  local parser = cli.parser("info", "Print a model's shape and the size of its graph.")
  cli.model_options(parser, true)
  parser:flag("--json", "Print model:info() as one JSON object.")
  parser:option("--memory", "Print the memory a run needs per phase; GIB is the budget (default: the "
    .. "machine's memory minus a margin)."):argname("GIB"):args("?")
  parser:option("--batch-size", "Rows per batch, for --memory.", tostring(options.DEFAULT_BATCH_SIZE)):argname("N")
    :convert(cli.integer("--batch-size", 1))
  parser:option("--seq-len", "Positions per row, for --memory.", "16"):argname("P"):convert(cli.integer("--seq-len", 1))
  parser:option("--method", "Attribution method, for --memory.", "EAP-IG-inputs"):argname("NAME")
    :convert(cli.one_of("method", memory_methods))
  parser:option("--ig-steps", "Integrated-gradient steps, for --memory.", "5"):argname("N")
    :convert(cli.integer("--ig-steps", 1, 10000))
  local args = cli.parse(parser, argv, "info")
  local budget_gib
  if args.memory and args.memory[1] then
    local v, err = cli.gib(args.memory[1])
    if not v then cli.fail("info: %s", err) end
    budget_gib = v
  end

  -- info inspects a checkpoint without converting it: with --weights auto (the default), a
  -- safetensors or llama2.c checkpoint is opened with its weights as stored (every tensor is still
  -- checked: table, offsets, finite values), and the rows report the mode a run would choose
  -- under the same budget. (GGUF tensors are always converted at load.)
  -- (files.kind never opens the path: a FIFO given as --model is refused by the loader, not read)
  local is_gguf = require("eapig.formats.files").kind(args.model) == "file"
    and require("eapig.formats.gguf").is_gguf(args.model)
  local inspect = args.weights == "auto" and not is_gguf
  local model = cli.load_model(args.model, { weights = inspect and "stored" or args.weights, memory = budget_gib })
  if inspect then
    local memory = require("eapig.memory")
    model.weights, model.weights_why = memory.choose_weights(model.cfg, memory.budget(budget_gib))
  end
  if args.memory then return print_memory(model, args, budget_gib) end
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
