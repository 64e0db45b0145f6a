-- `eapig tokenize`: check tokenization from the shell (`eapig tokenize --help` says how).
-- The module is a function(argv, streams): argv holds the arguments after `tokenize`; streams
-- (optional, for tests) has stdin, stdout. It returns 0, or raises an error message that names
-- the line at fault.
local cjson = require("cjson.safe")
local cli = require("eapig.cli")
local tokenizer = require("eapig.formats.tokenizer")

local function parse_args(argv)
  local parser = cli.parser("tokenize", "Encode text into token ids, or decode ids into text, with a model's tokenizer.",
    "Encoding reads UTF-8 text from stdin, one text per line, and prints one JSON array of ids per line;\n" ..
    "with --jsonl it reads JSON rows with a \"text\" field instead. --decode reads one JSON array of ids\n" ..
    "per line (with --jsonl, rows with an \"ids\" field) and prints the text of each (with --jsonl, as\n" ..
    "{\"text\": ...} rows). An error names the stdin line at fault.\n\n" ..
    "Examples:\n" ..
    "   echo 'Hello world' | eapig tokenize --tokenizer path/to/gpt2          # -> [15496,995]\n" ..
    "   echo '[15496, 995]' | eapig tokenize --tokenizer path/to/gpt2 --decode # -> Hello world")
  parser:option("--tokenizer", "Tokenizer: a model folder, tokenizer.json, vocab.json + merges.txt, or\n" ..
    "llama2.c's tokenizer.bin."):argname("PATH"):count(1)
  parser:flag("--jsonl", "Read JSON rows (\"text\", or \"ids\" with --decode) and, decoding, write JSON rows.")
  parser:flag("--decode", "Decode JSON arrays of ids into text instead of encoding.")
  parser:mutex(
    parser:flag("--bos", "Put the BOS token first (default: the tokenizer's own convention)."),
    parser:flag("--no-bos", "Never put the BOS token first."))
  parser:flag("--no-special", "Encode special tokens written in the text (\"<|endoftext|>\") as plain text.")
  local args = cli.parse(parser, argv, "tokenize")
  local bos
  if args.bos then bos = true elseif args.no_bos then bos = false end
  return { path = args.tokenizer, jsonl = args.jsonl, decode = args.decode, bos = bos, special = not args.no_special }
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
  if argv[1] == "tokenize" then argv = { unpack(argv, 2) } end
  local o = parse_args(argv)
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
