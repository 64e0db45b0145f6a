-- CSV files as RFC 4180 describes them, which is what pandas (and so EAP-IG) reads and writes:
-- a header row, comma-separated fields, records ending in LF or CRLF, fields in double quotes
-- when they hold commas, quotes (doubled inside) or line breaks.
--
--   local csv = require("eapig.formats.csv")
--   local t = csv.read("ioi.csv")        -- { header = {...}, rows = { {...}, ... }, lines = {...} }
--   t.rows[1][2], csv.records(t)[1].clean
--   csv.write("out.csv", { "clean", "label" }, { { "a, b", 3 }, { clean = "c", label = 4 } })
--
-- Leniencies, all as pandas has them, so files written by Python tools load: a UTF-8 byte-order
-- mark before the header is skipped, blank lines are skipped, a quote inside an unquoted field is
-- an ordinary character, and a header name may be empty (pandas' unnamed index column).
-- Errors name the file, the row (data rows counted from 1, the header is row 0) and the line.
local type, error, tostring, ipairs, pairs, pcall = type, error, tostring, ipairs, pairs, pcall
local format, concat, find, sub, byte = string.format, table.concat, string.find, string.sub, string.byte
local files = require("eapig.formats.files")

local csv = {}

local QUOTE, COMMA, CR, LF = byte('"'), byte(","), byte("\r"), byte("\n")

-- Position -> line number, counted lazily and incrementally (calls come in increasing order;
-- an earlier position starts the count again).
local function line_counter(text)
  local pos, line = 1, 1
  return function(at)
    if at < pos then pos, line = 1, 1 end
    while true do
      local nl = find(text, "\n", pos, true)
      if not nl or nl >= at then return line end
      line, pos = line + 1, nl + 1
    end
  end
end

-- parse(text, {source = name for messages}) -> { header = {names}, rows = { {fields} }, lines =
-- {line where each row starts} }. Every row has as many fields as the header.
function csv.parse(text, opts)
  if type(text) ~= "string" then error("csv.parse: text must be a string", 2) end
  opts = opts or {}
  local source = opts.source or "csv"
  local line_of = line_counter(text)
  local n = #text
  local pos = 1
  if sub(text, 1, 3) == "\239\187\191" then pos = 4 end -- UTF-8 byte-order mark (Excel writes one)

  local records, starts = {}, {}
  local function where(record_index, at)
    local row = record_index - 1 -- the header is row 0
    return format("%s: %s (line %d)", source, row == 0 and "header" or ("row " .. row), line_of(at))
  end

  while pos <= n do
    local c = byte(text, pos)
    if c == LF or c == CR then
      -- a blank line: skipped, as pandas does
      pos = pos + ((c == CR and byte(text, pos + 1) == LF) and 2 or 1)
    else
      local start = pos
      local fields = {}
      while true do -- one field per pass; pos is at the field's first character
        if byte(text, pos) == QUOTE then
          local parts, q = {}, pos + 1
          while true do
            local close = find(text, '"', q, true)
            if not close then
              error(format("%s: unterminated quoted field (column %d)", where(#records + 1, start), #fields + 1), 0)
            end
            parts[#parts + 1] = sub(text, q, close - 1)
            if byte(text, close + 1) == QUOTE then -- a doubled quote stands for one
              parts[#parts + 1] = '"'
              q = close + 2
            else
              pos = close + 1
              break
            end
          end
          fields[#fields + 1] = concat(parts)
          local after = byte(text, pos)
          if after ~= nil and after ~= COMMA and after ~= LF and after ~= CR then
            error(format("%s: column %d: '%s' after a closing quote (a quote inside a quoted field is "
              .. "written twice: \"\")", where(#records + 1, start), #fields, sub(text, pos, pos)), 0)
          end
        else
          local stop = find(text, "[,\r\n]", pos) or n + 1
          fields[#fields + 1] = sub(text, pos, stop - 1)
          pos = stop
        end
        local sep = byte(text, pos)
        if sep == COMMA then
          pos = pos + 1 -- a comma at the very end of the text leaves one empty field, as it should
        else
          if sep == CR then pos = pos + 1 end
          if byte(text, pos) == LF then pos = pos + 1 end
          break
        end
      end
      records[#records + 1] = fields
      starts[#starts + 1] = start
    end
  end

  if #records == 0 then error(source .. ": no header row (empty file)", 0) end
  local header = records[1]
  local seen = {}
  for i, name in ipairs(header) do
    if name ~= "" then
      if seen[name] then
        error(format("%s: header: column '%s' appears twice (columns %d and %d)", source, name, seen[name], i), 0)
      end
      seen[name] = i
    end
  end
  local rows, lines = {}, {}
  for r = 2, #records do
    local fields = records[r]
    if #fields ~= #header then
      error(format("%s: %d field%s, the header has %d", where(r, starts[r]), #fields, #fields == 1 and "" or "s",
        #header), 0)
    end
    rows[r - 1] = fields
    lines[r - 1] = line_of(starts[r])
  end
  return { header = header, rows = rows, lines = lines, source = source }
end

-- read(path) -> parse's table for the file (source = path).
function csv.read(path, opts)
  if type(path) ~= "string" then error("csv.read: path must be a string", 2) end
  local text = files.read(path, "csv.read")
  local o = { source = path }
  for k, v in pairs(opts or {}) do o[k] = v end
  return csv.parse(text, o)
end

-- The rows of a parsed table as maps from column name to field (unnamed columns left out).
function csv.records(t)
  local out = {}
  for r, fields in ipairs(t.rows) do
    local rec = {}
    for i, name in ipairs(t.header) do
      if name ~= "" then rec[name] = fields[i] end
    end
    out[r] = rec
  end
  return out
end

---------------------------------------------------------------------------------------------------
-- Writing

-- A field as CSV text: quoted when it holds a comma, a quote or a line break, or starts or ends
-- with a space (which some readers strip); numbers as Lua prints them (integers without ".0").
function csv.field(v)
  if v == nil then return "" end
  local s
  if type(v) == "number" then
    s = (v == math.floor(v) and v > -2 ^ 53 and v < 2 ^ 53) and format("%d", v) or format("%.17g", v)
  elseif type(v) == "boolean" then
    s = v and "True" or "False" -- pandas' spelling
  elseif type(v) == "string" then
    s = v
  else
    error(format("a %s cannot be a CSV field", type(v)), 0)
  end
  if find(s, '[,"\r\n]') or find(s, "^%s") or find(s, "%s$") then
    return '"' .. s:gsub('"', '""') .. '"'
  end
  return s
end

-- The CSV text of a header and rows (each a list of fields in header order, or a map by column
-- name). opts.crlf ends records with CRLF (RFC 4180) instead of LF (pandas' default).
function csv.encode(header, rows, opts)
  if type(header) ~= "table" or #header == 0 then error("csv.encode: header must be a non-empty list", 2) end
  if type(rows) ~= "table" then error("csv.encode: rows must be a list", 2) end
  local eol = (opts and opts.crlf) and "\r\n" or "\n"
  local out, line = {}, {}
  for i, name in ipairs(header) do line[i] = csv.field(name) end
  out[1] = concat(line, ",")
  for r, row in ipairs(rows) do
    if type(row) ~= "table" then error(format("csv.encode: row %d is not a table", r), 2) end
    local keyed = false -- a map by column name, or a list in header order
    for _, name in ipairs(header) do
      if row[name] ~= nil then keyed = true break end
    end
    line = {}
    for i, name in ipairs(header) do
      local ok, s = pcall(csv.field, keyed and row[name] or row[i])
      if not ok then error(format("csv.encode: row %d, column '%s': %s", r, tostring(name), s), 2) end
      line[i] = s
    end
    out[r + 1] = concat(line, ",")
  end
  return concat(out, eol) .. eol
end

-- Writes the file through eapig.files (a temporary file renamed into place), so a failure never
-- leaves a partial file at path.
function csv.write(path, header, rows, opts)
  if type(path) ~= "string" then error("csv.write: path must be a string", 2) end
  local ok, text = pcall(csv.encode, header, rows, opts)
  if not ok then error(format("csv.write %s: %s", path, tostring(text)), 2) end
  files.write_atomic(path, "csv.write", text)
end

return csv
