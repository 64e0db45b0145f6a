-- The `eapig` command line: finds the command, runs it, and turns any error into one line
-- `eapig: <message>` on stderr with exit status 1 (EAPIG_DEBUG=1 adds the Lua traceback).
--
-- A command is a module eapig.cli.<name> returning function(argv) -> exit status (nil means 0);
-- argv holds the arguments after the command's name. Modules load only when their command runs,
-- so `eapig --help` works even before libeapig is built. The helpers below (argument parsing,
-- loading models, data and graphs, checking an output path) are shared by the commands.
local argparse = require("argparse")
local options = require("eapig.options")

local fmt, concat = string.format, table.concat

local M = {}

-- Order is the order of `eapig --help`: the usual path through an experiment.
M.COMMANDS = {
  { "info", "print a model's shape and the size of its graph" },
  { "generate", "greedy decoding from token ids (checks that a model loads right)" },
  { "tokenize", "encode text lines into token ids, or decode ids (--decode)" },
  { "data", "write a built-in task's dataset (greater_than, ioi, induction) as JSONL or CSV" },
  { "attribute", "score the edges of a model's graph on a dataset (EAP, EAP-IG, exact, ...)" },
  { "circuit", "select a circuit from a scored graph (--topn, --threshold or --greedy)" },
  { "evaluate", "baselines, circuit value and faithfulness of a circuit on a dataset" },
  { "draw", "render a circuit with Graphviz (.svg, .png, .pdf) or write its .dot source" },
  { "sweep", "faithfulness against circuit size, as an SVG curve and its area (CPR / CMD)" },
  { "mib", "MIB circuit track: export a submission folder (scores or nine circuits); score CPR and CMD" },
  { "train", "train a small model on a task with a known circuit (writes a Hugging Face folder)" },
  { "demo", "find the induction circuit of the embedded model and check it against ground truth" },
  { "run", "run a Lua experiment script (require(\"eapig\") works in it)" },
  { "repl", "an interactive LuaJIT prompt with eapig loaded" },
}

local KNOWN = {}
for _, c in ipairs(M.COMMANDS) do KNOWN[c[1]] = true end

---------------------------------------------------------------------------------------------------
-- Errors

-- An error whose text is printed as it is: `eapig run` uses it for a script's own errors, where
-- the script's file and line are what the user needs.
local Verbatim = {}
Verbatim.__tostring = function(e) return e.message end

function M.verbatim(message)
  error(setmetatable({ message = message }, Verbatim), 0)
end

function M.fail(template, ...)
  error(fmt(template, ...), 0)
end

-- s without leading and trailing whitespace, in linear time: the pattern "^%s*(.-)%s*$" (and
-- gsub("%s+$", "")) backtrack over every run of inner spaces, quadratic on a long line.
function M.trim(s)
  local first = s:find("%S")
  if not first then return "" end
  local last = #s
  while s:find("^%s", last) do last = last - 1 end
  return s:sub(first, last)
end

-- One line from any error value. eapig's modules raise messages that carry their own context;
-- a "lua/eapig/x.lua:12: " position prefix (from error(msg, 2) or a bug) means nothing to a
-- user, so it goes. argparse puts hints ("Did you mean ...?") and its own traceback on further
-- lines: hints are kept, joined with "; ", tracebacks dropped.
-- True for a path of eapig's own modules: .../eapig/x.lua and .../eapig/<kind>/x.lua for each
-- folder of modules (cli, tasks, formats, apps).
local MODULE_FOLDERS = { cli = true, tasks = true, formats = true, apps = true }
function M.internal_path(path)
  if path:match("eapig/[%w_]+%.lua$") then return true end
  local folder = path:match("eapig/([%w_]+)/[%w_]+%.lua$")
  return folder ~= nil and MODULE_FOLDERS[folder] == true
end

-- Removes every "path/eapig/x.lua:12: " position of eapig's own modules from a message.
function M.strip_positions(msg)
  return (msg:gsub("([^%s:]*%.lua):%d+: ", function(path)
    if M.internal_path(path) then return "" end
  end))
end

local function one_line(err)
  if getmetatable(err) == Verbatim then return (err.message:gsub("%s*\n%s*", "; ")) end
  local msg = tostring(err)
  msg = M.strip_positions(msg)
  -- require's failure lists every path it tried, one per line: the first line says it all.
  local missing = msg:match("^module '([^']*)' not found")
  if missing == "eapig.cdef" then
    return "the FFI declarations (eapig/cdef.lua) were not found: build libeapig first " ..
      "(cmake -S . -B build && cmake --build build) or set EAPIG_BUILD_DIR"
  elseif missing then
    return ("module '%s' not found on package.path"):format(missing)
  end
  local lines = {}
  for line in msg:gmatch("[^\n]+") do
    if line:match("^%s*original stack traceback") or line:match("^%s*stack traceback") then break end
    line = M.trim(line)
    if line ~= "" then lines[#lines + 1] = line end
  end
  msg = concat(lines, "; ")
  -- Messages from the tokenize command and the FFI loader already start with "eapig".
  msg = msg:gsub("^eapig:? ", "")
  if msg == "" then msg = "unknown error" end
  return msg
end
M.one_line = one_line

---------------------------------------------------------------------------------------------------
-- Argument parsing

-- An argparse parser for `eapig <name>`; its --help prints and exits 0.
function M.parser(name, description, epilog)
  local p = argparse("eapig " .. name, description, epilog)
  p:help_max_width(100)
  return p
end

-- A negative number given as an option's value ("--topn -5") reads to argparse as an unknown
-- option; joined as "--topn=-5" it reaches the option's converter, which says what is wrong.
local function join_negative_values(argv)
  local out, i = {}, 1
  while i <= #argv do
    local a, nxt = argv[i], argv[i + 1]
    if a:match("^%-%-[%w-]+$") and nxt and tonumber(nxt) and nxt:match("^%-") then
      out[#out + 1] = a .. "=" .. nxt
      i = i + 2
    else
      out[#out + 1] = a
      i = i + 1
    end
  end
  return out
end

-- Parses argv or raises one line naming the command ("attribute: unknown option '--x'").
function M.parse(parser, argv, name)
  local ok, result = parser:pparse(join_negative_values(argv))
  if not ok then M.fail("%s: %s", name, one_line(result)) end
  return result
end

-- Converters for :convert(): return nil, message on bad input, which argparse reports.
-- integer(option, min, max): a whole number in [min, max] (either bound optional); max keeps
-- absurd sizes (a batch of a billion rows) from failing late, after a long load.
function M.integer(option, min, max)
  return function(s)
    local n = tonumber(s)
    if not n or n ~= math.floor(n) or n ~= n then return nil, fmt("%s must be an integer, got '%s'", option, s) end
    if min and n < min then return nil, fmt("%s must be >= %d, got %s", option, min, s) end
    if max and n > max then return nil, fmt("%s must be <= %d, got %s", option, max, s) end
    return n
  end
end

-- Upper bounds of the size options shared by several commands.
M.MAX_BATCH = 65536
M.MAX_ROWS = 10000000
M.MAX_STEPS = 100000
-- The core's limits on a model's dimensions (eapig_model_new in core/model.c), for the options
-- that size a new model: a bigger value is an option error, not "implausibly large" after parsing.
M.MAX_MODEL = { n_layers = 4096, n_heads = 4096, d_model = 2 ^ 20, d_mlp = 2 ^ 22, vocab = 2 ^ 24, n_ctx = 2 ^ 24 }

-- For options with a fixed set of values: names the bad value and lists the good ones (argparse's
-- :choices() does not say what was given). The caller lists them in the help text.
function M.one_of(what, list)
  return function(s)
    for _, v in ipairs(list) do
      if v == s then return s end
    end
    return nil, fmt("unknown %s '%s' (expected one of: %s)", what, s, concat(list, ", "))
  end
end

-- number(option, min): a finite number, >= min when given.
function M.number(option, min)
  return function(s)
    local n = tonumber(s)
    if not n or n ~= n or n == math.huge or n == -math.huge then
      return nil, fmt("%s must be a number, got '%s'", option, s)
    end
    if min and n < min then return nil, fmt("%s must be >= %g, got %s", option, min, s) end
    return n
  end
end

---------------------------------------------------------------------------------------------------
-- Output

-- One JSON object with its keys in the given order (eapig.formats.json: numbers keep every
-- digit of a double; NaN and infinities, which JSON cannot hold, become null).
function M.json_object(keys, t)
  local json = require("eapig.formats.json")
  local o = {}
  for _, k in ipairs(keys) do o[k] = t[k] end
  return json.encode(json.ordered(o, keys))
end

---------------------------------------------------------------------------------------------------
-- Files

local readable = require("eapig.formats.files").exists

function M.check_readable(path, what)
  if not readable(path) then M.fail("cannot read %s '%s'", what, path) end
end

-- Checks early that --out can be written, so a long attribution does not fail at its very end
-- (eapig.files says what an output path may be: a symlink, a FIFO or a device is never replaced).
function M.check_writable(path)
  require("eapig.formats.files").check_writable(path, "--out")
end

-- check_out_suffix(path, suffixes, what): --out must end in one of the suffixes eapig writes
-- (lower case, without the dot), else an error listing them.
function M.check_out_suffix(path, suffixes, what)
  local ext = (path:match("%.([%w]+)$") or ""):lower()
  for _, s in ipairs(suffixes) do
    if ext == s then return ext end
  end
  M.fail("--out '%s': eapig writes %s as %s; give a file name with one of these suffixes", path, what,
    "." .. concat(suffixes, ", ."))
end

function M.is_safetensors(path)
  return path:lower():match("%.safetensors$") ~= nil
end

-- --model, then --weights and --memory, for every command that loads a model (no_memory: the
-- command defines its own --memory).
function M.model_options(parser, no_memory)
  parser:option("--model", "Hugging Face folder, GGUF file or llama2.c .bin checkpoint."):argname("PATH"):count(1)
  M.weights_options(parser, no_memory)
end

-- --data, for the commands that run a model on a dataset.
function M.data_option(parser)
  parser:option("--data", "Dataset: JSONL rows of token ids, or EAP-IG's CSV (text)."):argname("FILE"):count(1)
end

function M.batch_size_option(parser)
  parser:option("--batch-size", "Rows per batch.", tostring(options.DEFAULT_BATCH_SIZE)):argname("N")
    :convert(M.integer("--batch-size", 1, M.MAX_BATCH))
end

-- --intervention (help: what the command does with it) and --intervention-data. The values are
-- eapig.runs's own list, the one attribute and evaluate accept.
function M.intervention_options(parser, help)
  local interventions = require("eapig.runs").INTERVENTIONS
  parser:option("--intervention", help, "patching"):argname("KIND"):convert(M.one_of("intervention", interventions))
  parser:option("--intervention-data", "JSONL dataset the mean interventions average over."):argname("FILE")
end

-- A mean intervention needs rows to average over: fails (naming the command) before any loading.
function M.check_intervention_data(args, command)
  if args.intervention:find("^mean") and not args.intervention_data then
    M.fail("%s: --intervention %s needs --intervention-data FILE (the rows to average over)", command,
      args.intervention)
  end
end

-- --weights and --memory, for every command that loads a model (no_memory: the command defines
-- its own --memory).
function M.weights_options(parser, no_memory)
  parser:option("--weights", "Weights: auto (f32 when the copy fits --memory), f32 (converted at load), "
    .. "stored (kept in the checkpoint's dtype, memory-mapped, converted one layer at a time).", "auto")
    :argname("HOW"):convert(M.one_of("weights", { "auto", "f32", "stored" }))
  if no_memory then return end
  parser:option("--memory", "Memory budget in GiB (default: the machine's memory minus a margin).")
    :argname("GIB"):convert(M.gib)
end

-- A --memory value: a positive number of GiB.
function M.gib(s)
  local v = tonumber(s)
  if v and v > 0 and v < math.huge then return v end
  return nil, ("--memory must be a positive number of GiB, got '%s'"):format(s)
end

-- phase(name, fn) runs fn and returns its results; with verbose it also prints to stderr the
-- phase's wall time and the peak resident memory measured during it (Linux: the peak is reset
-- before each phase through /proc/self/clear_refs).
function M.phases(verbose)
  if not verbose then return function(_, fn) return fn() end end
  local memory = require("eapig.memory")
  local now = require("eapig.progress").now -- the one wall clock
  return function(name, fn)
    local reset = memory.reset_peak()
    local t0 = now()
    local results = { fn() }
    local peak = memory.peak_rss()
    io.stderr:write(("phase %-12s %8.2f s   peak RSS %s%s\n"):format(name, now() - t0,
      peak and memory.format(peak) or "?", reset and "" or " (since start: peak cannot be reset here)"))
    return unpack(results)
  end
end

-- args: the parsed options (weights, memory) when the command has weights_options.
function M.load_model(path, args)
  local eapig = require("eapig")
  return eapig.load(path, { weights = args and args.weights, memory = args and args.memory })
end

-- "csv" or "jsonl": by suffix (.csv / .jsonl, .json, .ndjson), else by content (a JSONL row
-- starts with "{", anything else is read as CSV with a header).
function M.data_format(path)
  local ext = (path:match("%.([%w]+)$") or ""):lower()
  if ext == "csv" then return "csv" end
  if ext == "jsonl" or ext == "json" or ext == "ndjson" then return "jsonl" end
  local fh = io.open(path, "rb")
  local head = fh and fh:read(4096) or ""
  if fh then fh:close() end
  head = head:gsub("^\239\187\191", "") -- a UTF-8 byte order mark
  return head:match("^%s*{") and "jsonl" or "csv"
end

-- The model's tokenizer, for CSV text and greater-than's year tokens.
local function model_tokenizer(model, path, why)
  if not model.folder then
    M.fail("%s: %s needs the model's tokenizer, and the model was not loaded from a folder with one; " ..
      "write the rows as token ids (eapig data --out FILE.jsonl)", path, why)
  end
  return require("eapig").tokenizer.load(model.folder)
end

-- load_data(path, model, what, metric): a dataset from JSONL (token ids) or EAP-IG's CSV (text,
-- tokenized with the model's tokenizer, BOS first when it has one, as EAP-IG does through
-- TransformerLens), checked against the model (ids in [0, vocab), rows no longer than its
-- context) and, given the metric that will read it, against the metric's fields: logit_diff
-- needs correct and incorrect; prob_diff either those or greater-than's label, whose year
-- tokens ("00".."99") come from the model's tokenizer when the rows lack them.
function M.load_data(path, model, what, metric)
  M.check_readable(path, what or "data")
  local eapig = require("eapig")
  local opts = { vocab = model.vocab, n_ctx = model.n_ctx, labels = {} }
  local ds
  if M.data_format(path) == "csv" then
    local tok = model_tokenizer(model, path, "a CSV of text")
    opts.tokenizer, opts.bos = tok, tok.bos_id ~= nil
    ds = eapig.data.load_csv(path, opts)
  else
    ds = eapig.data.load_jsonl(path, opts)
  end
  if metric then
    local metrics = eapig.metrics
    local m = metrics.get(metric)
    if m.name == "prob_diff" or m.name == "prob_diff_greater_than" then
      local years
      for i = 1, #ds do
        local row = ds[i]
        if row.year_ids == nil and metrics.is_greater_than_row(row) then
          years = years or require("eapig.tasks.greater_than").year_ids(model_tokenizer(model, path,
            "a greater-than row without year_ids"))
          row.year_ids = years
        end
      end
    end
    metrics.check_dataset(m, ds, model.vocab)
  end
  return ds
end

-- A graph file by its suffix: .safetensors is the binary form, anything else EAP-IG's JSON.
function M.load_graph(path)
  M.check_readable(path, "graph")
  local Graph = require("eapig").Graph
  if M.is_safetensors(path) then return Graph.from_safetensors(path) end
  return Graph.from_json(path)
end

-- --graph and --model, checked against each other before any data loads (a wrong graph is the
-- likelier mistake).
function M.load_graph_and_model(args)
  local graph = M.load_graph(args.graph)
  local model = M.load_model(args.model, args)
  graph:check_matches(model:info())
  return graph, model
end

-- The --intervention-data rows, or nil without the option.
function M.load_intervention_data(args, model)
  if not args.intervention_data then return nil end
  return M.load_data(args.intervention_data, model, "--intervention-data")
end

function M.write_graph(graph, path)
  if M.is_safetensors(path) then return graph:to_safetensors(path) end
  return graph:to_json(path)
end

---------------------------------------------------------------------------------------------------
-- Dispatch

function M.help()
  local out = { "Usage: eapig <command> [options]   (eapig <command> --help for its options)", "",
    "Circuit discovery in transformer language models (EAP, EAP-IG, exact patching).", "", "Commands:" }
  for _, c in ipairs(M.COMMANDS) do out[#out + 1] = fmt("   %-11s %s", c[1], c[2]) end
  out[#out + 1] = ""
  out[#out + 1] = "A typical run:"
  out[#out + 1] = "   eapig attribute --model M --data D.jsonl --out graph.json"
  out[#out + 1] = "   eapig circuit --graph graph.json --topn 200 --out circuit.json"
  out[#out + 1] = "   eapig evaluate --model M --data D.jsonl --graph circuit.json"
  out[#out + 1] = "   eapig draw --graph circuit.json --out circuit.svg"
  out[#out + 1] = ""
  out[#out + 1] = "Errors are one line on stderr and exit status 1; --debug (or EAPIG_DEBUG=1) adds a Lua traceback."
  return concat(out, "\n")
end

local function dispatch(argv)
  local name = argv[1]
  if name == nil then
    io.stderr:write(M.help(), "\n")
    return 2
  end
  if name == "-h" or name == "--help" then
    print(M.help())
    return 0
  elseif name == "--version" then
    print("eapig " .. require("eapig").version)
    return 0
  elseif name == "help" then
    -- `eapig help attribute` is `eapig attribute --help`
    if argv[2] == nil then
      print(M.help())
      return 0
    end
    return dispatch({ argv[2], "--help" })
  end
  if not KNOWN[name] then
    if name:sub(1, 1) == "-" then M.fail("unknown option '%s' (options come after a command; see eapig --help)", name) end
    M.fail("unknown command '%s' (see eapig --help)", name)
  end
  local rest = {}
  for i = 2, #argv do rest[i - 1] = argv[i] end
  return require("eapig.cli." .. name)(rest)
end

-- --debug anywhere on the command line, or EAPIG_DEBUG=1 (any value but "" and "0"): print the
-- Lua traceback of an error too, and keep eapig's own file:line positions in messages.
M.debug = false
function M.debugging()
  if M.debug then return true end
  local v = os.getenv("EAPIG_DEBUG")
  return v ~= nil and v ~= "" and v ~= "0"
end

-- Takes --debug out of argv (it is never a value of anything else) and remembers it.
local function take_debug(argv)
  local out = {}
  for _, a in ipairs(argv) do
    if a == "--debug" then M.debug = true else out[#out + 1] = a end
  end
  return out
end

-- main(argv) -> exit status. Never raises.
function M.main(argv)
  local function handler(err)
    -- a verbatim error (a script's) had its traceback printed where it was caught
    if M.debugging() and getmetatable(err) ~= Verbatim then
      io.stderr:write(debug.traceback(tostring(err), 2), "\n")
    end
    if M.debugging() and getmetatable(err) ~= Verbatim then return (tostring(err):gsub("\n.*", "")) end
    return one_line(err)
  end
  local ok, status = xpcall(dispatch, handler, take_debug(argv or {}))
  local parallel = require("eapig.parallel") -- under mpirun: ends MPI, or aborts every rank on an error
  if ok then
    io.stdout:flush()
    parallel.finish(true)
    return tonumber(status) or 0
  end
  io.stdout:flush()
  io.stderr:write("eapig: ", status, "\n")
  parallel.finish(false)
  return 1
end

return M
