-- `eapig tokenize`: check tokenization from the shell.
--
--   eapig tokenize --tokenizer PATH [--jsonl] [--decode] [--bos | --no-bos] [--no-special]
--
-- Encoding reads UTF-8 text lines from stdin (with --jsonl, JSON rows with a "text" field) and
-- prints one JSON array of ids per line. --decode reads JSON arrays of ids (with --jsonl, rows
-- with an "ids" field) and prints the text of each (with --jsonl, as {"text": ...} rows).
-- The module is a function(argv, streams): argv holds the arguments after `tokenize`; streams
-- (optional, for tests) has stdin, stdout. It returns 0, or raises an error message that names
-- the line at fault.
local cjson = require("cjson.safe")
local tokenizer = require("eapig.tokenizer")

local USAGE = "usage: eapig tokenize --tokenizer PATH [--jsonl] [--decode] [--bos | --no-bos] [--no-special]"

local function usage_error(msg)
  error("eapig tokenize: " .. msg .. "\n" .. USAGE, 0)
end

local function parse_args(argv)
  local o = { special = true }
  local i = 1
  if argv[1] == "tokenize" then i = 2 end
  while i <= #argv do
    local a = argv[i]
    if a == "--tokenizer" then
      o.path = argv[i + 1]
      if not o.path then usage_error("--tokenizer needs a path") end
      i = i + 1
    elseif a:match("^%-%-tokenizer=") then
      o.path = a:sub(#"--tokenizer=" + 1)
    elseif a == "--jsonl" then
      o.jsonl = true
    elseif a == "--decode" then
      o.decode = true
    elseif a == "--bos" then
      o.bos = true
    elseif a == "--no-bos" then
      o.bos = false
    elseif a == "--no-special" then
      o.special = false
    elseif a == "--help" or a == "-h" then
      o.help = true
    else
      usage_error("unknown argument " .. a)
    end
    i = i + 1
  end
  if not o.help and not o.path then usage_error("--tokenizer PATH is required") end
  return o
end

-- A JSON array of ids, written directly: cjson writes an empty table as {}.
local function ids_json(ids)
  return "[" .. table.concat(ids, ",") .. "]"
end

local function read_ids(value, where)
  if type(value) ~= "table" then error(where .. ": expected a JSON array of ids", 0) end
  for k, id in ipairs(value) do
    if type(id) ~= "number" then error(("%s: ids[%d] is not a number"):format(where, k), 0) end
  end
  return value
end

return function(argv, streams)
  argv = argv or {}
  local input = streams and streams.stdin or io.stdin
  local output = streams and streams.stdout or io.stdout
  local o = parse_args(argv)
  if o.help then
    output:write(USAGE, "\n")
    return 0
  end
  local tok = tokenizer.load(o.path)
  local line_no = 0
  for line in input:lines() do
    line_no = line_no + 1
    local where = "eapig tokenize: stdin line " .. line_no
    if o.decode then
      local ids
      if o.jsonl then
        if line:match("^%s*$") then goto continue end
        local row, err = cjson.decode(line)
        if type(row) ~= "table" then error(where .. ": not a JSON row: " .. tostring(err or line), 0) end
        ids = read_ids(row.ids, where .. ": field 'ids'")
      else
        local value, err = cjson.decode(line)
        if value == nil then error(where .. ": not JSON: " .. tostring(err), 0) end
        ids = read_ids(value, where)
      end
      local ok, text = pcall(tok.decode, tok, ids)
      if not ok then error(where .. ": " .. tostring(text), 0) end
      if o.jsonl then output:write(cjson.encode({ text = text }), "\n") else output:write(text, "\n") end
    else
      local text = line
      if o.jsonl then
        if line:match("^%s*$") then goto continue end
        local row, err = cjson.decode(line)
        if type(row) ~= "table" then error(where .. ": not a JSON row: " .. tostring(err or line), 0) end
        text = row.text
        if type(text) ~= "string" then error(where .. ": field 'text' is missing or not a string", 0) end
      end
      output:write(ids_json(tok:encode(text, { bos = o.bos, special = o.special })), "\n")
    end
    ::continue::
  end
  return 0
end
