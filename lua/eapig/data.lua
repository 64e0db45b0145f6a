-- Datasets of clean/corrupted token rows with their labels, and the padded int32 batches the core
-- reads. Every source (JSONL here; CSV and text with a tokenizer later) goes through
-- data.from_rows, so validation and error messages are the same whatever the file format.
--
-- A row is a Lua table: clean and corrupted (lists of token ids), correct and incorrect (lists of
-- ids; a single id is accepted and becomes a list), and any other fields, kept as they are (e.g.
-- label and year_ids for the greater-than metric).
--
-- Glossary: B = rows in a batch, P = longest row in the batch (positions).
local ffi = require("ffi")
local cjson = require("cjson")
local cjson_safe = require("cjson.safe")

local bit = require("bit")

local type, error, pairs, ipairs, tostring, tonumber = type, error, pairs, ipairs, tostring, tonumber
local setmetatable, getmetatable, pcall, assert = setmetatable, getmetatable, pcall, assert
local format, concat, sort = string.format, table.concat, table.sort
local floor, max, min, huge = math.floor, math.max, math.min, math.huge
local open, rename, remove = io.open, os.rename, os.remove

local int32_array = ffi.typeof("int32_t[?]")

local data = {}

local Dataset = {}
Dataset.__index = Dataset

-- Fields holding token ids: checked against the vocabulary when present. Written first, in this
-- order, by write_jsonl.
local ID_FIELDS = { "clean", "corrupted", "correct", "incorrect", "year_ids" }
local IS_ID_FIELD = {}
for _, f in ipairs(ID_FIELDS) do IS_ID_FIELD[f] = true end
local SEQUENCE = { clean = true, corrupted = true }
local DEFAULT_LABELS = { "correct", "incorrect" }

---------------------------------------------------------------------------------------------------
-- Row validation

local function is_int(v) return type(v) == "number" and v == floor(v) end

-- Token ids of one field as a new list, or an error naming source, row and field.
local function id_list(value, field, where, opts)
  local function fail(msg) error(format("%s: field '%s': %s", where, field, msg), 0) end
  if type(value) == "string" then
    -- Text: needs the model's tokenizer (the CSV/text issue supplies one through opts.tokenizer).
    local tok = opts.tokenizer
    if not tok then fail("is text; pass opts.tokenizer to tokenize it") end
    if SEQUENCE[field] then
      value = tok:encode(value, { bos = opts.bos })
    else
      local ids = tok:encode(value, { bos = false })
      if #ids ~= 1 then fail(format("'%s' is %d tokens, not a single token", value, #ids)) end
      value = ids
    end
  elseif is_int(value) and not SEQUENCE[field] then
    value = { value }
  end
  if type(value) ~= "table" or #value == 0 then fail("must be a non-empty list of token ids") end
  local vocab, out = opts.vocab, {}
  for i = 1, #value do
    local id = value[i]
    if not is_int(id) then fail(format("entry %d (%s) is not an integer token id", i, tostring(id))) end
    if id < 0 or (vocab and id >= vocab) then
      fail(format("token id %d (entry %d) outside [0, %s)", id, i, vocab and tostring(vocab) or "inf"))
    end
    out[i] = id
  end
  return out
end

-- A checked copy of one row; nil when it is dropped for mismatched lengths.
local function check_row(raw, where, opts, labels)
  if type(raw) ~= "table" then error(format("%s: not an object", where), 0) end
  for _, f in ipairs({ "clean", "corrupted" }) do
    if raw[f] == nil or raw[f] == cjson.null then error(format("%s: missing field '%s'", where, f), 0) end
  end
  for _, f in ipairs(labels) do
    if raw[f] == nil or raw[f] == cjson.null then error(format("%s: missing field '%s'", where, f), 0) end
  end
  local row = {}
  for k, v in pairs(raw) do
    if not IS_ID_FIELD[k] then row[k] = v end
  end
  -- id fields in a fixed order, so the first bad field reported does not depend on hashing
  for _, k in ipairs(ID_FIELDS) do
    local v = raw[k]
    if v ~= nil and v ~= cjson.null then row[k] = id_list(v, k, where, opts) end
  end
  local nc, nk = #row.clean, #row.corrupted
  if opts.n_ctx then
    local n = max(nc, nk)
    if n > opts.n_ctx then
      error(format("%s: %d tokens, more than n_ctx = %d", where, n, opts.n_ctx), 0)
    end
  end
  if nc ~= nk and not opts.allow_mismatched then
    if opts.drop_mismatched then return nil end
    error(format("%s: clean has %d tokens but corrupted has %d (position-aligned methods need equal "
      .. "lengths; drop_mismatched = true drops such rows)", where, nc, nk), 0)
  end
  return row
end

local function check_opts(opts, who)
  if opts.vocab ~= nil and (not is_int(opts.vocab) or opts.vocab < 1) then
    error(who .. ": opts.vocab must be a positive integer", 3)
  end
  if opts.n_ctx ~= nil and (not is_int(opts.n_ctx) or opts.n_ctx < 1) then
    error(who .. ": opts.n_ctx must be a positive integer", 3)
  end
  if opts.labels ~= nil and type(opts.labels) ~= "table" then
    error(who .. ": opts.labels must be a list of field names", 3)
  end
end

---------------------------------------------------------------------------------------------------
-- Construction

local function new_dataset(rows, lines, meta)
  local ds = setmetatable({ rows = rows, lines = lines, source = meta.source, dropped = meta.dropped or 0 }, Dataset)
  -- The rows are also the dataset's array part, so #ds and ds[i] work (LuaJIT ignores __len on tables).
  for i = 1, #rows do ds[i] = rows[i] end
  return ds
end

-- The common constructor: checks and normalises raw row tables (from JSONL, CSV, a task
-- generator or the REPL) and returns a Dataset. opts:
--   vocab            ids must be in [0, vocab)
--   n_ctx            longest allowed row
--   labels           fields every row must have (default {"correct", "incorrect"}; {} for none)
--   drop_mismatched  drop rows whose clean and corrupted lengths differ (count in ds.dropped)
--   allow_mismatched keep such rows (for callers that do not align positions)
--   tokenizer, bos   tokenize text fields (tokenizer:encode(text, {bos = ...}))
--   source, lines    file name and per-row line numbers, for error messages
function data.from_rows(raw_rows, opts)
  opts = opts or {}
  check_opts(opts, "data.from_rows")
  if type(raw_rows) ~= "table" then error("data.from_rows: needs a list of row tables", 2) end
  local source = opts.source or "data"
  local labels = opts.labels or DEFAULT_LABELS
  local rows, lines, dropped = {}, {}, 0
  for i = 1, #raw_rows do
    local line = opts.lines and opts.lines[i] or i
    local row = check_row(raw_rows[i], format("%s: row %d", source, line), opts, labels)
    if row then
      rows[#rows + 1] = row
      lines[#lines + 1] = line
    else
      dropped = dropped + 1
    end
  end
  return new_dataset(rows, lines, { source = source, dropped = dropped })
end

-- One JSON object per line; blank lines are skipped but counted, so "row N" is line N.
function data.load_jsonl(path, opts)
  opts = opts or {}
  check_opts(opts, "data.load_jsonl")
  local f, err = open(path, "r")
  if not f then error("data.load_jsonl: cannot open " .. tostring(err), 2) end
  local raw, lines, n = {}, {}, 0
  for text in f:lines() do
    n = n + 1
    if text:find("%S") then
      local row, jerr = cjson_safe.decode(text)
      if row == nil then
        f:close()
        error(format("%s: row %d: bad JSON: %s", path, n, tostring(jerr)), 2)
      end
      raw[#raw + 1] = row
      lines[#lines + 1] = n
    end
  end
  f:close()
  if #raw == 0 then error(path .. ": no rows", 2) end
  local o = {}
  for k, v in pairs(opts) do o[k] = v end
  o.source, o.lines = path, lines
  return data.from_rows(raw, o)
end

---------------------------------------------------------------------------------------------------
-- Dataset methods (each returns a new Dataset sharing the row tables; the original is unchanged)

function Dataset:__tostring()
  local lo, hi = huge, 0
  for _, r in ipairs(self.rows) do
    lo, hi = min(lo, #r.clean), max(hi, #r.clean)
  end
  local lengths = #self.rows == 0 and "" or format(", %d-%d tokens", lo, hi)
  local dropped = self.dropped > 0 and format(", %d dropped", self.dropped) or ""
  return format("[eapig.Dataset %s: %d rows%s%s]", self.source or "", #self.rows, lengths, dropped)
end

function Dataset:size() return #self.rows end

-- The first n rows.
function Dataset:head(n)
  if not is_int(n) or n < 0 then error("Dataset:head: n must be a non-negative integer", 2) end
  local rows, lines = {}, {}
  for i = 1, min(n, #self.rows) do
    rows[i], lines[i] = self.rows[i], self.lines[i]
  end
  return new_dataset(rows, lines, self)
end

-- splitmix64: a fixed, well-mixed generator, so a seed gives the same order on every machine and
-- nearby seeds give unrelated orders (math.random depends on the Lua build).
local function splitmix64(seed)
  local state = ffi.new("uint64_t", seed)
  return function(n) -- uniform-enough integer in [1, n]
    state = state + 0x9E3779B97F4A7C15ULL
    local z = state
    z = bit.bxor(z, bit.rshift(z, 30)) * 0xBF58476D1CE4E5B9ULL
    z = bit.bxor(z, bit.rshift(z, 27)) * 0x94D049BB133111EBULL
    z = bit.bxor(z, bit.rshift(z, 31))
    return tonumber(z % n) + 1
  end
end

-- Rows in a random order fixed by seed (default 0; an integer).
function Dataset:shuffle(seed)
  seed = seed or 0
  if not is_int(seed) or seed < 0 then error("Dataset:shuffle: seed must be a non-negative integer", 2) end
  local rows, lines = {}, {}
  for i = 1, #self.rows do rows[i], lines[i] = self.rows[i], self.lines[i] end
  local rand = splitmix64(seed)
  for i = #rows, 2, -1 do -- Fisher-Yates
    local j = rand(i)
    rows[i], rows[j] = rows[j], rows[i]
    lines[i], lines[j] = lines[j], lines[i]
  end
  return new_dataset(rows, lines, self)
end

-- Rows first..last as one right-padded batch (pad id 0; lengths say what is real).
local function make_batch(rows, first, last)
  local B, P = last - first + 1, 0
  for i = first, last do P = max(P, #rows[i].clean, #rows[i].corrupted) end
  local clean, corrupted = int32_array(B * P), int32_array(B * P) -- zero-filled: the padding
  local lengths, corrupted_lengths, last_pos = int32_array(B), int32_array(B), int32_array(B)
  local batch_rows = {}
  for b = 0, B - 1 do
    local row = rows[first + b]
    batch_rows[b + 1] = row
    local c, k = row.clean, row.corrupted
    for p = 1, #c do clean[b * P + p - 1] = c[p] end
    for p = 1, #k do corrupted[b * P + p - 1] = k[p] end
    lengths[b], corrupted_lengths[b], last_pos[b] = #c, #k, #c - 1
  end
  return { B = B, P = P, clean = clean, corrupted = corrupted, lengths = lengths,
    corrupted_lengths = corrupted_lengths, last_pos = last_pos, rows = batch_rows, first = first }
end

-- Iterator over consecutive batches of `size` rows (the last may be smaller). Each batch:
-- B, P, clean/corrupted (int32[B*P], row-major), lengths, corrupted_lengths, last_pos
-- (int32[B]), rows (the row tables) and first (dataset index of rows[1]).
function Dataset:batches(size)
  if not is_int(size) or size < 1 then error("Dataset:batches: size must be a positive integer", 2) end
  local rows, i = self.rows, 1
  return function()
    if i > #rows then return nil end
    local first, last = i, min(i + size - 1, #rows)
    i = last + 1
    return make_batch(rows, first, last)
  end
end

---------------------------------------------------------------------------------------------------
-- Writing

local function encode_row(row)
  local parts = {}
  for _, k in ipairs(ID_FIELDS) do
    if row[k] ~= nil then parts[#parts + 1] = cjson.encode(k) .. ": " .. cjson.encode(row[k]) end
  end
  local others = {}
  for k in pairs(row) do
    if not IS_ID_FIELD[k] then others[#others + 1] = k end
  end
  sort(others, function(a, b) return tostring(a) < tostring(b) end)
  for _, k in ipairs(others) do
    parts[#parts + 1] = cjson.encode(tostring(k)) .. ": " .. cjson.encode(row[k])
  end
  return "{" .. concat(parts, ", ") .. "}"
end

-- Writes a Dataset (or a list of rows) as JSONL, through a temporary file renamed into place so
-- a failure never leaves a partial file at path.
function data.write_jsonl(ds, path)
  local rows = getmetatable(ds) == Dataset and ds.rows or ds
  if type(rows) ~= "table" then error("data.write_jsonl: needs a Dataset or a list of rows", 2) end
  local tmp = path .. ".tmp"
  local f, err = open(tmp, "w")
  if not f then error("data.write_jsonl: cannot open " .. tostring(err), 2) end
  local ok, werr = pcall(function()
    for i, row in ipairs(rows) do
      local okr, line = pcall(encode_row, row)
      if not okr then error(format("row %d: %s", i, tostring(line)), 0) end
      assert(f:write(line, "\n"))
    end
    assert(f:close())
  end)
  if not ok then
    pcall(f.close, f)
    remove(tmp)
    error(format("data.write_jsonl %s: %s", path, tostring(werr)), 2)
  end
  local rok, rerr = rename(tmp, path)
  if not rok then
    remove(tmp)
    error("data.write_jsonl: " .. tostring(rerr), 2)
  end
end

data.Dataset = Dataset
return data
