-- Datasets of clean/corrupted token rows with their labels, and the padded int32 batches the core
-- reads. Every source (JSONL, EAP-IG's CSV files, task generators) goes through data.from_rows,
-- so validation and error messages are the same whatever the file format.
--
-- A row is a Lua table: clean and corrupted (lists of token ids), correct and incorrect (lists of
-- ids; a single id is accepted and becomes a list), and any other fields, kept as they are (e.g.
-- label and year_ids for the greater-than metric). A field given as text and tokenized keeps its
-- text beside the ids as <field>_text (clean_text, ...), so a dataset can be written back as the
-- text EAP-IG's Python tools read.
--
-- Glossary: B = rows in a batch, P = longest row in the batch (positions).
local ffi = require("ffi")
local cjson = require("cjson")
local cjson_safe = require("cjson.safe")

local type, error, pairs, ipairs, tostring, tonumber = type, error, pairs, ipairs, tostring, tonumber
local setmetatable, getmetatable, pcall = setmetatable, getmetatable, pcall
local format, concat, sort = string.format, table.concat, table.sort
local floor, max, min, huge = math.floor, math.max, math.min, math.huge
local files = require("eapig.formats.files")
local rng = require("eapig.rng")

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
  -- CSV rows say "column 'correct_idx'": the column the value came from, not the row field
  local name = opts.column_names and opts.column_names[field] or field
  local kind = opts.column_names and "column" or "field"
  local function fail(msg) error(format("%s: %s '%s': %s", where, kind, name, msg), 0) end
  if type(value) == "string" then
    -- Text: needs the model's tokenizer (data.load_csv and the task generators pass opts.tokenizer).
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
    if v ~= nil and v ~= cjson.null then
      row[k] = id_list(v, k, where, opts)
      if type(v) == "string" and row[k .. "_text"] == nil then row[k .. "_text"] = v end
    end
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
  if opts.fields ~= nil and type(opts.fields) ~= "table" then
    error(who .. ": opts.fields must be a table of fields", 3)
  end
end

-- raw with opts.fields filled in where it has none of its own (a new table only when needed).
local function with_fields(raw, fields)
  if not fields or type(raw) ~= "table" then return raw end
  local out = {}
  for k, v in pairs(raw) do out[k] = v end
  for k, v in pairs(fields) do
    if out[k] == nil then out[k] = v end
  end
  return out
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
--   tokenizer, bos   tokenize text fields (tokenizer:encode(text, {bos = ...}); bos nil: the
--                    tokenizer's own convention)
--   fields           a table of fields every row gets unless it has its own (a task's constants,
--                    e.g. greater-than's year_ids)
--   source, lines    file name and per-row line numbers, for error messages
--   where            per-row location strings for error messages (instead of source + lines)
function data.from_rows(raw_rows, opts)
  opts = opts or {}
  check_opts(opts, "data.from_rows")
  if type(raw_rows) ~= "table" then error("data.from_rows: needs a list of row tables", 2) end
  local source = opts.source or "data"
  local labels = opts.labels or DEFAULT_LABELS
  local rows, lines, dropped = {}, {}, 0
  for i = 1, #raw_rows do
    local line = opts.lines and opts.lines[i] or i
    local where = opts.where and opts.where[i] or format("%s: row %d", source, line)
    local row = check_row(with_fields(raw_rows[i], opts.fields), where, opts, labels)
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
  local f = files.open_input(path, "data.load_jsonl")
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
-- EAP-IG's CSV files

-- Columns with a fixed meaning. The rest are kept in the row, converted as pandas would read them
-- (integers and decimals become numbers, a JSON list of numbers becomes a list, an empty field is
-- absent); a column with an empty name (pandas' index) is left out.
local ID_COLUMNS = { clean = "clean_ids", corrupted = "corrupted_ids" }  -- ids that win over text
local LABEL_COLUMNS = { correct = "correct_idx", incorrect = "incorrect_idx" } -- ids that win over text

-- A list of ids as a JSON list: "[1, 2, 3]".
local function id_text(ids)
  local parts = {}
  for i = 1, #ids do parts[i] = format("%d", ids[i]) end
  return "[" .. concat(parts, ", ") .. "]"
end

-- "[1, 2, 3]" -> {1, 2, 3} when the field is a JSON list of numbers, else nil.
local function number_list(s)
  if not s:find("^%s*%[") then return nil end
  local v = cjson_safe.decode(s)
  if type(v) ~= "table" then return nil end
  for i = 1, #v do
    if type(v[i]) ~= "number" then return nil end
  end
  for k in pairs(v) do
    if type(k) ~= "number" then return nil end
  end
  return v
end

local function csv_value(s)
  if s == "" then return nil end
  local n = s:find("^%s*[-+]?%d") and tonumber(s) -- not "inf", "nan" or "0x10": pandas reads those as text
  if n and not s:find("[xX]") then return n end
  return number_list(s) or s
end

-- Token ids from an id column: "12", "[12, 13]"; a clear error naming the column otherwise.
local function csv_ids(s, where, column)
  local n = tonumber(s)
  if n and n == floor(n) and not s:find("[xX]") then return { n } end
  local list = number_list(s)
  if list and #list > 0 then return list end
  error(format("%s: column '%s': '%s' is not a token id or a JSON list of ids", where, column, s), 0)
end

-- load_csv(path, opts): EAP-IG's CSV layout: a header row, the columns clean and corrupted (text,
-- tokenized with opts.tokenizer and the BOS convention opts.bos), label columns correct_idx and
-- incorrect_idx (token ids: one, or a JSON list) or correct and incorrect (text of one token
-- each), and any other columns (e.g. greater-than's label), kept in the row. Columns clean_ids
-- and corrupted_ids (JSON lists), when present, give the token ids exactly and take precedence
-- over the text (data.write_csv writes them for rows that have no text of their own).
-- Rows whose clean and corrupted token counts differ are an error naming the row, or dropped
-- with opts.drop_mismatched = true (the count is in ds.dropped). Other opts as data.from_rows;
-- opts.labels defaults to {"correct", "incorrect"} when the file has those columns, else {}.
function data.load_csv(path, opts)
  opts = opts or {}
  check_opts(opts, "data.load_csv")
  if type(path) ~= "string" then error("data.load_csv: path must be a string", 2) end
  local t = require("eapig.formats.csv").read(path)
  local header, has = t.header, {}
  for _, name in ipairs(header) do has[name] = true end
  local function need(a, b)
    if not has[a] and not has[b] then
      error(format("%s: header: no column '%s'%s (columns: %s)", path, a, b and (" or '" .. b .. "'") or "",
        concat(header, ", ")), 0)
    end
  end
  need("clean", "clean_ids")
  need("corrupted", "corrupted_ids")
  for field, idx in pairs(LABEL_COLUMNS) do
    local other = field == "correct" and "incorrect" or "correct"
    if (has[field] or has[idx]) and not (has[other] or has[LABEL_COLUMNS[other]]) then
      error(format("%s: header: a '%s' column needs an '%s' (or '%s') column beside it", path,
        has[idx] and idx or field, LABEL_COLUMNS[other], other), 0)
    end
  end

  local raw, where, column_names = {}, {}, {}
  for r, fields in ipairs(t.rows) do
    local at = format("%s: row %d (line %d)", path, r, t.lines[r])
    local row = {}
    for i, name in ipairs(header) do
      local s = fields[i]
      if name == "" then -- luacheck: ignore 542 (pandas' index column: left out)
      elseif ID_COLUMNS[name] then -- text of clean / corrupted
        if has[ID_COLUMNS[name]] then
          -- the ids column is exact; this text only shows the row (decoded ids need not encode back)
          if s ~= "" then row[name .. "_display"] = s end
        else
          row[name .. "_text"] = s
        end
      elseif name == "clean_ids" or name == "corrupted_ids" then
        if s ~= "" then row[name:sub(1, -5)] = csv_ids(s, at, name) end
      elseif LABEL_COLUMNS[name] then -- correct / incorrect as text: one token each
        if s ~= "" then row[name .. "_text"] = s end
      elseif name == "correct_idx" or name == "incorrect_idx" then
        if s ~= "" then row[name:sub(1, -5)] = csv_ids(s, at, name) end
      else
        row[name] = csv_value(s)
      end
    end
    -- text is tokenized only where no ids column gave the ids
    for _, f in ipairs({ "clean", "corrupted", "correct", "incorrect" }) do
      if row[f] == nil and row[f .. "_text"] ~= nil then
        if (f == "clean" or f == "corrupted") and row[f .. "_text"] == "" then
          error(format("%s: column '%s' is empty", at, f), 0)
        end
        row[f] = row[f .. "_text"]
        row[f .. "_text"] = nil -- from_rows puts it back with the ids
      end
    end
    for _, f in ipairs({ "clean", "corrupted" }) do
      -- text that only spells the ids out (write_csv's fallback) shows nothing more
      local shown = row[f .. "_display"]
      if shown and type(row[f]) == "table" and shown:gsub("%s", "") == id_text(row[f]):gsub("%s", "") then
        row[f .. "_display"] = nil
      end
    end
    if row.clean == nil or row.corrupted == nil then
      error(format("%s: column '%s' is empty", at, row.clean == nil and (has.clean_ids and "clean_ids" or "clean")
        or (has.corrupted_ids and "corrupted_ids" or "corrupted")), 0)
    end
    raw[r], where[r] = row, at
  end
  if #raw == 0 then error(path .. ": no rows", 0) end
  for f, idx in pairs(LABEL_COLUMNS) do column_names[f] = has[idx] and idx or f end
  for f, idx in pairs(ID_COLUMNS) do column_names[f] = has[idx] and idx or f end
  column_names.year_ids = "year_ids"

  local o = {}
  for k, v in pairs(opts) do o[k] = v end
  o.source, o.lines, o.where, o.column_names = path, t.lines, where, column_names
  if o.labels == nil then
    o.labels = (has.correct or has.correct_idx) and DEFAULT_LABELS or {}
  end
  local ok, ds = pcall(data.from_rows, raw, o)
  if not ok then error(ds, 0) end
  return ds
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

-- Rows in a random order fixed by seed (default 0; an integer).
function Dataset:shuffle(seed)
  seed = seed or 0
  if not is_int(seed) or seed < 0 then error("Dataset:shuffle: seed must be a non-negative integer", 2) end
  local rows, lines = {}, {}
  for i = 1, #self.rows do rows[i], lines[i] = self.rows[i], self.lines[i] end
  local r = rng.new(seed) -- splitmix64: nearby seeds give unrelated orders
  for i = #rows, 2, -1 do -- Fisher-Yates (rng:shuffle's draws, on two lists at once)
    local j = 1 + r:below(i)
    rows[i], rows[j] = rows[j], rows[i]
    lines[i], lines[j] = lines[j], lines[i]
  end
  return new_dataset(rows, lines, self)
end

-- Rows first..last as one right-padded batch (pad id 0; lengths say what is real).
local function make_batch(rows, first, last)
  local B, P = last - first + 1, 0
  for i = first, last do P = max(P, #rows[i].clean, #rows[i].corrupted) end
  if B * P * 4 > 2 ^ 31 - 1 then -- LuaJIT's limit on one buffer
    error(("Dataset:batches: rows %d..%d padded to the longest (%d tokens) need %d token ids, more than one " ..
      "buffer may hold (2 GiB): use a smaller batch size"):format(first, last, P, B * P), 0)
  end
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

-- Writes a Dataset (or a list of rows) as JSONL, through eapig.files (a temporary file renamed
-- into place), so a failure never leaves a partial file at path.
function data.write_jsonl(ds, path)
  local rows = getmetatable(ds) == Dataset and ds.rows or ds
  if type(rows) ~= "table" then error("data.write_jsonl: needs a Dataset or a list of rows", 2) end
  local lines = {}
  for i, row in ipairs(rows) do
    local okr, line = pcall(encode_row, row)
    if not okr then error(format("data.write_jsonl %s: row %d: %s", tostring(path), i, tostring(line)), 2) end
    lines[i] = line .. "\n"
  end
  files.write_atomic(path, "data.write_jsonl", table.concat(lines))
end

-- An id field as written to its *_idx column: one id as an integer (EAP-IG's form), more as a list.
local function idx_field(v)
  if type(v) == "number" then return v end
  if type(v) == "table" and #v == 1 then return v[1] end
  return type(v) == "table" and id_text(v) or v
end

-- Fields write_csv writes through their own columns, never as "other" columns.
local CSV_SPECIAL = { clean = true, corrupted = true, correct = true, incorrect = true, clean_text = true,
  corrupted_text = true, correct_text = true, incorrect_text = true, clean_display = true, corrupted_display = true }

-- write_csv(ds_or_rows, path, opts): EAP-IG's CSV layout, which data.load_csv reads back:
--   clean, corrupted        the rows' text (clean_text ...; else clean_display, text that shows ids
--                           which were not tokenized from it; else opts.tokenizer:decode(ids);
--                           else the ids as a JSON list)
--   clean_ids, corrupted_ids  the exact ids as JSON lists, written when some row has no text of its
--                           own (decoded text need not tokenize back to the same ids); opts.ids =
--                           true / false forces them on / off
--   correct_idx, incorrect_idx  label ids (an integer for one id, a JSON list for more)
--   correct, incorrect      the labels' text, where rows have it
--   the other fields        label first, then by name; lists as JSON; opts.omit lists fields to
--                           leave out (e.g. {"year_ids"}, which every greater-than row repeats)
-- Through a temporary file renamed into place. opts.crlf: CRLF line ends.
function data.write_csv(ds, path, opts)
  opts = opts or {}
  local rows = getmetatable(ds) == Dataset and ds.rows or ds
  if type(rows) ~= "table" then error("data.write_csv: needs a Dataset or a list of rows", 2) end
  if type(path) ~= "string" then error("data.write_csv: path must be a string", 2) end
  local omit = {}
  for _, k in ipairs(opts.omit or {}) do omit[k] = true end
  local tok = opts.tokenizer

  local function text_of(row, f, r)
    local v = row[f .. "_text"] or row[f .. "_display"]
    if v ~= nil then return v end
    v = row[f]
    if type(v) == "string" then return v end
    if type(v) ~= "table" then error(format("data.write_csv %s: row %d: no '%s' field", path, r, f), 3) end
    if tok then return tok:decode(v) end
    return id_text(v)
  end

  local missing_text, has, others = false, {}, {}
  local label_ids, label_text = {}, {}
  for r, row in ipairs(rows) do
    if type(row) ~= "table" then error(format("data.write_csv %s: row %d is not a table", path, r), 2) end
    for _, f in ipairs({ "clean", "corrupted" }) do
      if row[f .. "_text"] == nil and type(row[f]) ~= "string" then missing_text = true end
    end
    for _, f in ipairs({ "correct", "incorrect" }) do
      if type(row[f]) == "table" or type(row[f]) == "number" then label_ids[f] = true end
      if type(row[f]) == "string" or row[f .. "_text"] ~= nil then label_text[f] = true end
    end
    for k, v in pairs(row) do
      if not has[k] then
        has[k] = true
        if not CSV_SPECIAL[k] and not omit[k] and type(k) == "string" and type(v) ~= "function" then
          others[#others + 1] = k
        end
      end
    end
  end
  sort(others, function(a, b)
    if (a == "label") ~= (b == "label") then return a == "label" end
    return a < b
  end)
  local with_ids = opts.ids
  if with_ids == nil then with_ids = missing_text end

  local header = { "clean", "corrupted" }
  if with_ids then header[#header + 1] = "clean_ids"; header[#header + 1] = "corrupted_ids" end
  for _, f in ipairs({ "correct", "incorrect" }) do
    if label_ids[f] and not omit[f] then header[#header + 1] = f .. "_idx" end
  end
  for _, f in ipairs({ "correct", "incorrect" }) do
    if label_text[f] and not omit[f] then header[#header + 1] = f end
  end
  for _, k in ipairs(others) do header[#header + 1] = k end

  local out = {}
  for r, row in ipairs(rows) do
    local rec = { clean = text_of(row, "clean", r), corrupted = text_of(row, "corrupted", r) }
    if with_ids then
      for _, f in ipairs({ "clean", "corrupted" }) do
        if type(row[f]) ~= "table" then
          error(format("data.write_csv %s: row %d: '%s' has no token ids to write", path, r, f), 2)
        end
        rec[f .. "_ids"] = id_text(row[f])
      end
    end
    for _, f in ipairs({ "correct", "incorrect" }) do
      local v = row[f]
      if type(v) == "string" then rec[f] = v
      elseif v ~= nil then rec[f .. "_idx"] = idx_field(v) end
      if row[f .. "_text"] ~= nil then rec[f] = row[f .. "_text"] end
    end
    for _, k in ipairs(others) do
      local v = row[k]
      if type(v) == "table" then
        local ok, j = pcall(cjson.encode, v)
        if not ok then error(format("data.write_csv %s: row %d: field '%s': %s", path, r, k, tostring(j)), 2) end
        v = j
      elseif v ~= nil and type(v) ~= "string" and type(v) ~= "number" and type(v) ~= "boolean" then
        error(format("data.write_csv %s: row %d: field '%s' is a %s", path, r, k, type(v)), 2)
      end
      rec[k] = v
    end
    out[r] = rec
  end
  local ok, err = pcall(require("eapig.formats.csv").write, path, header, out, { crlf = opts.crlf })
  if not ok then error("data.write_csv: " .. tostring(err):gsub("^csv%.write:? ?", ""), 2) end
end

data.Dataset = Dataset
return data
