-- Built-in tasks: dataset generators with their metric, and the registry that finds them by name.
--
--   local tasks = require("eapig.tasks")
--   tasks.names()                                   --> {"greater_than", "induction", "ioi"}
--   local ioi = tasks.get("ioi")
--   local ds = ioi.generate(tokenizer, { n = 200, seed = 1 })
--   eapig.attribute(model, graph, ds, ioi.metric, { method = "EAP-IG-inputs" })
--   ioi.write_csv(ds, "ioi.csv")                    -- EAP-IG's CSV layout, for Python tools
--
-- A task is a module (a table) with
--   name         its registry name
--   metric       a metric name or a metrics.define result: what attribution and evaluation use
--   generate(tokenizer, opts) -> eapig.data Dataset; opts.n rows, opts.seed (integer, default 0)
--                fixes every random choice, on every machine
--   write_csv(ds, path, opts) and load_csv(path, tokenizer, opts): the dataset as a CSV file
--   description  one line for listings
-- The loader is lazy: a task module loads the first time tasks.get names it.
local rng = require("eapig.rng")

local type, error, pairs, ipairs, tostring = type, error, pairs, ipairs, tostring
local format, concat, sort = string.format, table.concat, table.sort
local floor = math.floor

local tasks = {}

local BUILT_IN = { greater_than = "eapig.tasks.greater_than", induction = "eapig.tasks.induction",
  ioi = "eapig.tasks.ioi" }
local registered = {}

-- Sorted names of the built-in and registered tasks.
function tasks.names()
  local out, seen = {}, {}
  for name in pairs(BUILT_IN) do out[#out + 1], seen[name] = name, true end
  for name in pairs(registered) do
    if not seen[name] then out[#out + 1] = name end
  end
  sort(out)
  return out
end

-- The task module called name ("ioi"; "greater-than" is accepted for EAP-IG's spelling).
function tasks.get(name)
  if type(name) ~= "string" then error("tasks.get: name must be a string, got " .. type(name), 2) end
  local key = name:gsub("-", "_")
  local t = registered[key]
  if t then return t end
  local module = BUILT_IN[key]
  if not module then
    error(format("unknown task '%s' (known: %s)", name, concat(tasks.names(), ", ")), 2)
  end
  return require(module)
end

-- Makes a user's task available to tasks.get (and to scripts that take a task name).
function tasks.register(name, t)
  if type(name) ~= "string" or name == "" then error("tasks.register: name must be a non-empty string", 2) end
  if type(t) ~= "table" or type(t.generate) ~= "function" then
    error(format("tasks.register %s: a task is a table with a generate function", name), 2)
  end
  if t.metric == nil then error(format("tasks.register %s: the task has no metric", name), 2) end
  registered[name] = t
  return t
end

---------------------------------------------------------------------------------------------------
-- The tasks' random numbers: eapig.rng's default generator (splitmix64), so a seed gives the same
-- dataset on every machine and LuaJIT build, and a task's draws do not move anyone else's generator.
tasks.rng = rng.new

---------------------------------------------------------------------------------------------------
-- Helpers the task modules share

-- A positive-integer option with a default, or an error naming the task and the option (raised
-- at the caller's caller, or level levels up).
function tasks.count_opt(opts, key, default, who, lo, level)
  local v = opts[key]
  if v == nil then v = default end
  lo = lo or 1
  if type(v) ~= "number" or v ~= floor(v) or v < lo then
    error(format("%s: opts.%s must be an integer >= %d, got %s", who, key, lo, tostring(v)), level or 3)
  end
  return v
end

-- The seed option (default 0).
function tasks.seed_opt(opts, who)
  return tasks.count_opt(opts, "seed", 0, who, 0)
end

-- A tokenizer check: the object generate needs (encode, and the id / token lookups).
function tasks.check_tokenizer(tok, who, need, level)
  level = level or 3
  if type(tok) ~= "table" or type(tok.encode) ~= "function" then
    error(format("%s: needs a tokenizer (eapig.tokenizer.load(path)) as its first argument, got %s", who,
      type(tok)), level)
  end
  for _, m in ipairs(need or {}) do
    if type(tok[m]) ~= "function" then error(format("%s: the tokenizer has no :%s method", who, m), level) end
  end
end

-- The start of a task's generate(tok, opts): opts (or {}), the tokenizer checked, opts.n (default
-- 100) and a generator seeded from opts.seed (default 0). Errors point at generate's caller.
function tasks.generate_start(tok, opts, who)
  opts = opts or {}
  tasks.check_tokenizer(tok, who, nil, 4)
  local n = tasks.count_opt(opts, "n", 100, who, 1, 4)
  return opts, n, tasks.rng(tasks.count_opt(opts, "seed", 0, who, 0, 4))
end

-- A task's load_csv(path, tok, opts) once the tokenizer is checked: data.load_csv with the
-- tokenizer and vocabulary, defaults (a table) and then opts over them; fill(o) may add what
-- depends on the merged options.
function tasks.load_csv(path, tok, opts, defaults, fill)
  local o = { tokenizer = tok, vocab = tok.vocab_size }
  for k, v in pairs(defaults or {}) do o[k] = v end
  for k, v in pairs(opts or {}) do o[k] = v end
  if fill then fill(o) end
  return require("eapig.data").load_csv(path, o)
end

-- The id of text that must be one token (a name, a noun, " is"), or nil. Text with a leading
-- space means the word inside a sentence. Byte-level tokenizers (GPT-2) encode " key" as that
-- one token, but SentencePiece-style ones (Llama-2, llama2.c) put their own space marker before
-- the text, so " key" encodes as a lone marker plus "▁key": there the token is looked up by
-- its text instead (tok:id(" key") finds "▁key", the piece a sentence uses).
function tasks.single_token(tok, text)
  local ids = tok:encode(text, { bos = false })
  if #ids == 1 then return ids[1] end
  if type(tok.id) == "function" then return tok:id(text) end
  return nil
end

return tasks
