-- Metrics: Lua functions of one row's logits (at its chosen position) that return a scalar on an
-- autodiff tape, so attribution gets d(metric)/d(logits) without anyone writing a derivative.
--
-- A metric is a table
--   { name = "logit_diff", fn = function(x) ... end, higher_is_better = true,
--     needs_clean = false, eval_only = false, description = "..." }
-- and fn receives x = { logits = tape input of V logits, clean_logits = tape constant or nil,
-- row = the data row (correct/incorrect id lists, plus any other fields), tape = the tape }.
-- Token ids index the logits 0-based, as everywhere in eapig.
--
-- Glossary: B = rows in a batch, V = vocabulary size.
local ad = require("eapig.autodiff")

local type, error, pairs, ipairs, tostring = type, error, pairs, ipairs, tostring
local setmetatable, getmetatable, pcall = setmetatable, getmetatable, pcall
local format, concat, sort = string.format, table.concat, table.sort
local floor, huge = math.floor, math.huge

local M = {}

local Metric = {}
Metric.__index = Metric
function Metric.__tostring(m)
  return format("[eapig.Metric %s: %s is better%s%s]", m.name, m.higher_is_better and "higher" or "lower",
    m.needs_clean and ", needs clean logits" or "", m.eval_only and ", evaluation only" or "")
end

local FIELDS = { name = true, fn = true, higher_is_better = true, needs_clean = true, eval_only = true,
  description = true, check_row = true }

-- Validates a metric definition and returns it as a metric object (a new table).
function M.define(def)
  if type(def) ~= "table" then error("metrics.define: needs a table {name=, fn=, higher_is_better=}", 2) end
  if getmetatable(def) == Metric then return def end
  for k in pairs(def) do
    if not FIELDS[k] then error(format("metrics.define: unknown field '%s'", tostring(k)), 2) end
  end
  if type(def.name) ~= "string" or def.name == "" then error("metrics.define: 'name' must be a non-empty string", 2) end
  local name = def.name
  if type(def.fn) ~= "function" then error(format("metrics.define %s: 'fn' must be a function", name), 2) end
  if type(def.higher_is_better) ~= "boolean" then
    -- no default: the sign of the attribution loss depends on it
    error(format("metrics.define %s: 'higher_is_better' must be true or false", name), 2)
  end
  for _, k in ipairs({ "needs_clean", "eval_only" }) do
    if def[k] ~= nil and type(def[k]) ~= "boolean" then
      error(format("metrics.define %s: '%s' must be a boolean", name, k), 2)
    end
  end
  if def.description ~= nil and type(def.description) ~= "string" then
    error(format("metrics.define %s: 'description' must be a string", name), 2)
  end
  if def.check_row ~= nil and type(def.check_row) ~= "function" then
    error(format("metrics.define %s: 'check_row' must be a function(row, vocab) -> nil or a message", name), 2)
  end
  return setmetatable({ name = name, fn = def.fn, higher_is_better = def.higher_is_better,
    needs_clean = def.needs_clean or false, eval_only = def.eval_only or false,
    description = def.description, check_row = def.check_row }, Metric)
end

function M.is_metric(m) return getmetatable(m) == Metric end

---------------------------------------------------------------------------------------------------
-- Registry of named metrics

local registry, aliases = {}, {}

-- Makes a metric available to metrics.get by its name (tasks register theirs this way).
function M.register(def, alias_list)
  local m = M.define(def)
  registry[m.name] = m
  for _, a in ipairs(alias_list or {}) do aliases[a] = m.name end
  return m
end

-- Sorted names and aliases that metrics.get accepts.
function M.names()
  local out = {}
  for k in pairs(registry) do out[#out + 1] = k end
  for k in pairs(aliases) do out[#out + 1] = k end
  sort(out)
  return out
end

-- A metric object from a name, an alias or a definition table.
function M.get(m)
  if type(m) == "string" then
    local found = registry[m] or registry[aliases[m] or ""]
    if not found then
      error(format("unknown metric '%s' (known: %s)", m, concat(M.names(), ", ")), 2)
    end
    return found
  elseif type(m) == "table" then
    return M.define(m)
  elseif type(m) == "function" then
    error("a plain function is not a metric: wrap it with metrics.define{name=, fn=, higher_is_better=}", 2)
  end
  error("metric must be a name or a metric table, got " .. type(m), 2)
end

---------------------------------------------------------------------------------------------------
-- Label helpers for metric functions

-- A row's id field as a list: data rows hold lists, but hand-written rows may hold one id.
function M.ids(row, field)
  local v = row[field]
  if type(v) == "number" then return { v } end
  if type(v) ~= "table" or #v == 0 then
    error(format("row has no '%s' ids", field), 0)
  end
  return v
end
local ids = M.ids

-- Row checks (a metric's optional check_row(row, vocab) -> nil, or what is wrong): a dataset is
-- checked against the metric that will read it before any model run (metrics.check_dataset).

-- nil, or what is wrong with row[field] as token ids (one id or a non-empty list) in [0, vocab).
local function bad_ids(row, field, vocab)
  local v = row[field]
  if v == nil then return format("no '%s' field", field) end
  if type(v) == "number" then v = { v } end
  if type(v) ~= "table" or #v == 0 then return format("'%s' must be a token id or a non-empty list of ids", field) end
  for i = 1, #v do
    local id = v[i]
    if type(id) ~= "number" or id ~= floor(id) or id < 0 or (vocab and id >= vocab) then
      return format("'%s' entry %d (%s) is not a token id in [0, %s)", field, i, tostring(id),
        vocab and tostring(vocab) or "inf")
    end
  end
  return nil
end

local function needs_ids(...)
  local fields = { ... }
  return function(row, vocab)
    for _, f in ipairs(fields) do
      local bad = bad_ids(row, f, vocab)
      if bad then return bad end
    end
    return nil
  end
end

-- The greater-than form: year_ids (at least two token ids) and label, an index into them.
local function check_greater_than(row, vocab)
  if row.year_ids == nil then
    return "no 'year_ids' field (the year tokens \"00\"..\"99\"; eapig data --task greater_than and the CLI " ..
      "add them from the model's tokenizer)"
  end
  local bad = bad_ids(row, "year_ids", vocab)
  if bad then return bad end
  if type(row.year_ids) ~= "table" or #row.year_ids < 2 then return "'year_ids' must list at least 2 ids" end
  local label = row.label
  if type(label) ~= "number" or label ~= floor(label) or label < 0 or label >= #row.year_ids then
    return format("'label' must be the clean year's index in [0, %d) into year_ids, got %s", #row.year_ids,
      tostring(label))
  end
  return nil
end

-- True when a row is in prob_diff's greater-than form (EAP-IG's CSV: clean, corrupted, label).
function M.is_greater_than_row(row)
  return row.year_ids ~= nil or (row.label ~= nil and row.correct == nil)
end

-- check_dataset(metric, ds, vocab): errors naming the first row the metric cannot read and why.
function M.check_dataset(m, ds, vocab)
  m = M.get(m)
  if not m.check_row then return true end
  for i = 1, #ds do
    local bad = m.check_row(ds[i], vocab)
    if bad then
      local where = ds.lines and ds.lines[i] and format("%s: line %d", tostring(ds.source or "data"), ds.lines[i])
        or format("row %d", i)
      error(format("%s: metric %s: %s", where, m.name, bad), 0)
    end
  end
  return true
end

---------------------------------------------------------------------------------------------------
-- Built-ins (definitions follow EAP-IG's notebooks; docs/conventions.md states them)

M.logit_diff = M.register {
  name = "logit_diff", higher_is_better = true,
  description = "mean logit over correct ids - mean logit over incorrect ids",
  check_row = needs_ids("correct", "incorrect"),
  fn = function(x)
    return x.logits:gather(ids(x.row, "correct")):mean() - x.logits:gather(ids(x.row, "incorrect")):mean()
  end,
}

-- EAP-IG's greater-than form: year_ids lists the two-digit year tokens "00".."99" (any list
-- works), label is the 0-based index of the clean year in it; probability mass on years after the
-- label minus mass on years at or before it (the softmax is over the whole vocabulary).
local function greater_than(x)
  local years, label = x.row.year_ids, x.row.label
  if type(years) ~= "table" or #years < 2 then error("row has no 'year_ids' list (at least 2 ids)", 0) end
  if type(label) ~= "number" or label ~= floor(label) or label < 0 or label >= #years then
    error(format("row 'label' must be an index in [0, %d) into year_ids, got %s", #years, tostring(label)), 0)
  end
  local above, upto = {}, {}
  for i = 1, #years do
    if i - 1 > label then above[#above + 1] = years[i] else upto[#upto + 1] = years[i] end
  end
  local p = x.logits:softmax()
  if #above == 0 then return -p:gather(upto):sum() end
  return p:gather(above):sum() - p:gather(upto):sum()
end

M.prob_diff = M.register {
  name = "prob_diff", higher_is_better = true,
  description = "softmax mass on correct ids - mass on incorrect ids; rows with year_ids and label use "
    .. "the greater-than form (mass above the label year - mass at or below it)",
  check_row = function(row, vocab)
    if M.is_greater_than_row(row) then return check_greater_than(row, vocab) end
    return needs_ids("correct", "incorrect")(row, vocab)
  end,
  fn = function(x)
    if x.row.year_ids ~= nil then return greater_than(x) end
    local p = x.logits:softmax()
    return p:gather(ids(x.row, "correct")):sum() - p:gather(ids(x.row, "incorrect")):sum()
  end,
}

M.prob_diff_greater_than = M.register {
  name = "prob_diff_greater_than", higher_is_better = true,
  description = "EAP-IG greater-than: mass on year_ids after the label index - mass at or before it",
  check_row = check_greater_than,
  fn = greater_than,
}

-- EAP-IG's notebook: kl_div(log p, log p_clean, log_target=True).mean(-1), i.e. the KL sum
-- divided by V.
M.kl_div = M.register({
  name = "kl_div", higher_is_better = false, needs_clean = true,
  description = "KL(clean || current) at the row's position, averaged over the vocabulary",
  fn = function(x)
    local lp = x.logits:log_softmax()
    local lq = x.clean_logits:log_softmax()
    return (lq:exp() * (lq - lp)):sum() / x.logits.n
  end,
}, { "kl" })

M.cross_entropy = M.register {
  name = "cross_entropy", higher_is_better = false,
  description = "-log p(first correct id)",
  check_row = needs_ids("correct"),
  fn = function(x)
    return -x.logits:log_softmax():gather(ids(x.row, "correct")[1])
  end,
}

M.accuracy = M.register {
  name = "accuracy", higher_is_better = true, eval_only = true,
  description = "1 if the top logit is a correct id, else 0 (no gradient)",
  check_row = needs_ids("correct"),
  fn = function(x)
    local top = x.logits:argmax()
    for _, id in ipairs(ids(x.row, "correct")) do
      if id == top then return x.tape:scalar(1) end
    end
    return x.tape:scalar(0)
  end,
}

---------------------------------------------------------------------------------------------------
-- Runtime entry point for attribution and evaluation

local tape = ad.tape() -- reused across calls: its pool keeps the V-long buffers

local function check_count(v, name)
  if type(v) ~= "number" or v < 1 or v ~= floor(v) then
    error(format("metrics.run: '%s' must be a positive integer, got %s", name, tostring(v)), 3)
  end
end

local function row_name(args, b)
  if args.first then return format("row %d (batch row %d)", args.first + b, b + 1) end
  return format("row %d", b + 1)
end

-- Evaluates metric on B rows of logits (B*V floats or doubles, row-major; the metric itself runs
-- in double). Returns a Lua list of B values. With args.grad_out (B*V floats or doubles) it is
-- overwritten with grad_scale * d(value_b)/d(logits[b,:]); the caller picks the scale (e.g. -1/B
-- for the negated batch mean that EAP-IG uses as the loss of a higher-is-better metric).
-- args: logits, clean_logits, rows, B, V, grad_out, grad_scale (default 1), first (dataset index
-- of rows[1], for error messages).
function M.run(metric, args)
  metric = M.get(metric)
  if type(args) ~= "table" then error("metrics.run: needs an argument table", 2) end
  local B, V = args.B, args.V
  check_count(B, "B")
  check_count(V, "V")
  local logits, clean, rows, grad_out = args.logits, args.clean_logits, args.rows, args.grad_out
  if type(logits) ~= "cdata" then error("metrics.run: 'logits' must be a float or double pointer (B*V)", 2) end
  if grad_out ~= nil and type(grad_out) ~= "cdata" then
    error("metrics.run: 'grad_out' must be a float or double pointer (B*V)", 2)
  end
  if clean ~= nil and type(clean) ~= "cdata" then
    error("metrics.run: 'clean_logits' must be a float or double pointer (B*V)", 2)
  end
  if type(rows) ~= "table" or #rows ~= B then
    error(format("metrics.run %s: 'rows' must list B = %d rows", metric.name, B), 2)
  end
  if metric.needs_clean and clean == nil then
    error(format("metric %s needs clean logits (clean_logits is nil)", metric.name), 2)
  end
  if grad_out ~= nil and metric.eval_only then
    error(format("metric %s is evaluation only: it has no gradient", metric.name), 2)
  end
  local scale = args.grad_scale or 1
  local values = {}
  for b = 0, B - 1 do
    tape:reset()
    local x = {
      logits = tape:input(logits + b * V, V),
      clean_logits = clean ~= nil and tape:constant(clean + b * V, V) or nil,
      row = rows[b + 1],
      tape = tape,
    }
    local ok, y = pcall(metric.fn, x)
    if not ok then error(format("metric %s, %s: %s", metric.name, row_name(args, b), tostring(y)), 2) end
    local value
    if type(y) == "number" and grad_out == nil then
      value = y
    elseif ad.is_vector(y) and y.tape == tape and y.n == 1 then
      value = y:value()
    else
      error(format("metric %s, %s: fn must return a scalar of its tape%s, got %s", metric.name, row_name(args, b),
        grad_out ~= nil and " (gradients need tape operations)" or " or a number",
        ad.is_vector(y) and ("a vector of length " .. y.n) or type(y)), 2)
    end
    if value ~= value or value == huge or value == -huge then
      error(format("metric %s, %s: value is %s", metric.name, row_name(args, b), tostring(value)), 2)
    end
    values[b + 1] = value
    if grad_out ~= nil then
      local out, off = grad_out, b * V
      if type(y) == "number" or not y.needs_grad then
        for i = 0, V - 1 do out[off + i] = 0 end
      else
        tape:backward(y, scale)
        local g = x.logits.grad
        for i = 0, V - 1 do out[off + i] = g[i] end
      end
    end
  end
  tape:reset()
  return values
end

return M
