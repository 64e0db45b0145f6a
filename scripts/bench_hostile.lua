-- Hostile inputs under 1 MB against the command line: how long the worst of them takes (issue 10:
-- nothing but real model work may take more than a few seconds). Each case writes a file built to
-- be expensive for one parser, runs one `eapig` command on it, and prints the wall time and the
-- exit status (1 with a message is a fine outcome; a hang is not).
--
--   luajit scripts/bench_hostile.lua            (from the project root; EAPIG_BUILD_DIR picks the build)
local build = os.getenv("EAPIG_BUILD_DIR") or "build"
package.path = "./lua/?.lua;./lua/?/init.lua;./" .. build .. "/?.lua;" .. package.path
package.cpath = "./" .. build .. "/?.so;" .. package.cpath

local ffi = require("ffi")
local cjson = require("cjson")
local testing = require("eapig.testing")
local Graph = require("eapig.graph")

local dir = testing.tmpdir()
local function write(path, s)
  local f = assert(io.open(path, "wb"))
  f:write(s)
  f:close()
  return path
end
local function quote(s) return "'" .. s:gsub("'", "'\\''") .. "'" end
local now = require("eapig.progress").now

local function int32(v) return ffi.string(ffi.new("int32_t[1]", v), 4) end
local function record(score, piece) return ffi.string(ffi.new("float[1]", score), 4) .. int32(#piece) .. piece end

local cases = {}
local function case(name, file, args, stdin)
  cases[#cases + 1] = { name = name, file = file, args = args, stdin = stdin }
end

-- llama2.c tokenizer.bin with one ~1 MB piece (quadratic ranking before issue 10)
do
  local long = ("a"):rep(1000000)
  local path = write(dir .. "/long.bin", int32(#long) .. record(0, "<unk>") .. record(0, "\n<s>\n") ..
    record(0, "\n</s>\n") .. record(-1, "a") .. record(-2, "aa") .. record(-3, long))
  case("tokenizer.bin with a 1 MB piece", path, { "tokenize", "--tokenizer", path }, write(dir .. "/a.txt", "aaaa\n"))
end

-- tokenizer.json with 40000 added tokens (~1 MB), and a 1 MB line of near-matches
do
  local added, vocab = {}, { a = 0, b = 1 }
  for i = 0, 39999 do added[#added + 1] = { id = 2 + i, content = "<tok" .. i .. ">", special = false } end
  local doc = { version = "1.0", added_tokens = added, normalizer = cjson.null, pre_tokenizer = cjson.null,
    post_processor = cjson.null, decoder = cjson.null,
    model = { type = "BPE", vocab = vocab, merges = {}, byte_fallback = false, unk_token = cjson.null } }
  os.execute("mkdir -p " .. quote(dir .. "/added"))
  local path = write(dir .. "/added/tokenizer.json", cjson.encode(doc))
  local line = ("<tok1"):rep(200000)
  local text = write(dir .. "/added.txt", line .. "\n")
  case("tokenizer.json, 40000 added tokens, 1 MB line", path, { "tokenize", "--tokenizer", path, "--no-bos" },
    text)
end

-- graph JSON whose cfg is the largest a small file may ask for (2^22 entries), then circuit and draw
do
  local path = dir .. "/graph.json"
  local g = Graph.new({ n_layers = 32, n_heads = 31, d_model = 8 })
  local edges, n = {}, 0
  for name in g:edges() do
    n = n + 1
    edges[n] = ('"%s": {"score": %.6g, "in_graph": false}'):format(name, math.sin(n))
    if n == 15000 then break end
  end
  write(path, ('{"cfg": %s, "nodes": {}, "edges": {%s}}'):format(cjson.encode(g.cfg), table.concat(edges, ", ")))
  case("graph JSON (1 MB), 32 x 31 cfg: circuit --topn", path,
    { "circuit", "--graph", path, "--topn", "1000", "--out", dir .. "/c.json" })
  case("the same: draw (Graphviz)", path, { "draw", "--graph", dir .. "/c.json", "--out", dir .. "/c.svg" })
  local forged = write(dir .. "/forged.json", '{"cfg": {"n_layers": 4096, "n_heads": 64, "d_model": 8}, ' ..
    '"nodes": {}, "edges": {}}')
  case("graph JSON, forged 4096 x 64 cfg: circuit", forged,
    { "circuit", "--graph", forged, "--topn", "100", "--out", dir .. "/c2.json" })
end

-- CSV and JSONL datasets of 1 MB built for backtracking parsers
do
  local csv = write(dir .. "/quotes.csv", 'clean,corrupted\n"' .. ('""'):rep(500000) .. '",x\n')
  case("CSV, a field of 500000 escaped quotes", csv, { "run", dir .. "/load_csv.lua" })
  write(dir .. "/load_csv.lua", ("pcall(require('eapig').data.load_csv, %q)"):format(csv))
  local deep = write(dir .. "/deep.jsonl", ("["):rep(500000) .. ("]"):rep(500000) .. "\n")
  case("JSONL, 500000 nested arrays", deep, { "run", dir .. "/load_jsonl.lua" })
  write(dir .. "/load_jsonl.lua", ("pcall(require('eapig').data.load_jsonl, %q)"):format(deep))
end

-- --ids with a 120 KB run of spaces (a quadratic trim before issue 10; 128 KB is the most one
-- command-line argument may hold)
do
  local spaces = ("1," .. (" "):rep(120000) .. "2")
  case("generate --ids with 120 KB of spaces", nil, { "generate", "--model", "models/induction-2l", "--ids", spaces,
    "--steps", "1" })
end

local worst, worst_name = 0, nil
print(("%-48s %8s  %s  %s"):format("case", "seconds", "exit", "message"))
for _, c in ipairs(cases) do
  local parts = { "luajit scripts/eapig" }
  for _, a in ipairs(c.args) do parts[#parts + 1] = quote(a) end
  local cmd = "out=$(" .. table.concat(parts, " ") .. (c.stdin and (" < " .. quote(c.stdin)) or " < /dev/null") ..
    " 2>&1 >/dev/null); echo $?; printf '%s' \"$out\" | head -c 120"
  local t0 = now()
  local p = io.popen("bash -c " .. quote(cmd))
  local rc = p:read("*l")
  local message = p:read("*l")
  p:close()
  local dt = now() - t0
  print(("%-48s %8.2f  %s  %s"):format(c.name, dt, rc, message or ""))
  if dt > worst then worst, worst_name = dt, c.name end
end
print(("worst: %.2f s (%s)"):format(worst, worst_name))
testing.rmtree(dir)
