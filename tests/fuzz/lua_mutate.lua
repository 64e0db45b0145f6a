-- Mutation fuzzing of the Lua-side parsers: config.json, the safetensors header and tensor table,
-- llama2.c checkpoint headers, JSONL and CSV datasets, graph JSON and graph safetensors,
-- tokenizer.json. Each target starts from a valid file written here and, for as long as asked,
-- loads mutants of it: byte flips, truncation, inserted and repeated bytes, edited offsets and
-- lengths, huge / negative / fractional / non-finite numbers, NaN-payload floats, deep nesting,
-- NUL bytes. A mutant must load (and then be usable: graph scores compared, weights run) or fail
-- with an error message; a Lua runtime error ("attempt to ..."), a non-string error, or a crash
-- (run it against the AddressSanitizer build to catch those in the core) is a finding.
--
--   luajit tests/fuzz/lua_mutate.lua [--seconds S] [--seed N] [--target NAME] [--verbose]
--
-- Run from the project root; EAPIG_BUILD_DIR picks the build (default build). Prints one line per
-- target ("<target>: N mutants, K loaded, E refused") and exits 1 after the first finding,
-- printing the mutant's path (kept in the work folder) and the error.
local build = os.getenv("EAPIG_BUILD_DIR") or "build"
package.path = "./lua/?.lua;./lua/?/init.lua;./" .. build .. "/?.lua;./tests/?.lua;" .. package.path
package.cpath = "./" .. build .. "/?.so;" .. package.cpath

local ffi = require("ffi")
local bit = require("bit")
local cjson = require("cjson")
local testing = require("eapig.testing")
local Graph = require("eapig.graph")
local data = require("eapig.data")
local load = require("eapig.formats.load")
local tokenizer = require("eapig.formats.tokenizer")

local opts = { seconds = 10, seed = os.time(), verbose = false }
do
  local i = 1
  while arg[i] do
    local a = arg[i]
    if a == "--seconds" then opts.seconds, i = tonumber(arg[i + 1]), i + 1
    elseif a == "--seed" then opts.seed, i = tonumber(arg[i + 1]), i + 1
    elseif a == "--target" then opts.target, i = arg[i + 1], i + 1
    elseif a == "--verbose" then opts.verbose = true
    else
      io.stderr:write("lua_mutate: unknown argument ", a, "\n")
      os.exit(2)
    end
    i = i + 1
  end
end
math.randomseed(opts.seed)
io.stdout:setvbuf("line")
local random = math.random

local files = require("support.files")
local read, write = files.read, files.write

-- ---- mutations --------------------------------------------------------------------------------

local INTERESTING_U32 = { 0, 1, 7, 8, 0x7f, 0x80, 0xff, 0xffff, 0x7fffffff, 0x80000000, 0xffffffff,
  0x7f800000, 0xff800000, 0x7fc00000, 0xffffffff, 0x7f800001 }
local NUMBERS = { "0", "-1", "1e300", "-1e300", "1e-50", "1.5", "0.5", "4294967296", "9007199254740993",
  "2147483648", "NaN", "-Infinity", "Infinity", "5000", "65536", "-0", "1e400", "3" }

local function u32_bytes(v)
  return ffi.string(ffi.new("uint32_t[1]", v), 4)
end

local function splice(s, at, len, with)
  return s:sub(1, at - 1) .. with .. s:sub(at + len)
end

local MUTATORS = {
  function(s) -- flip a bit
    if #s == 0 then return s end
    local at = random(#s)
    return splice(s, at, 1, string.char(bit.bxor(s:byte(at), 2 ^ random(0, 7))))
  end,
  function(s) -- random byte
    if #s == 0 then return s end
    return splice(s, random(#s), 1, string.char(random(0, 255)))
  end,
  function(s) -- truncate
    return s:sub(1, random(0, #s))
  end,
  function(s) -- insert random bytes
    local n, t = random(1, 8), {}
    for i = 1, n do t[i] = string.char(random(0, 255)) end
    return splice(s, random(#s + 1), 0, table.concat(t))
  end,
  function(s) -- repeat a chunk
    if #s == 0 then return s end
    local a = random(#s)
    local b = math.min(#s, a + random(0, 64))
    return splice(s, a, 0, s:sub(a, b):rep(random(1, 4)))
  end,
  function(s) -- overwrite 4 aligned bytes with an interesting word (lengths, offsets, NaN payloads)
    if #s < 4 then return s end
    local at = 4 * random(0, math.floor(#s / 4) - 1) + 1
    return splice(s, at, 4, u32_bytes(INTERESTING_U32[random(#INTERESTING_U32)]))
  end,
  function(s) -- replace a number in the text by an interesting one
    local spans = {}
    for a, b in s:gmatch("()%-?%d[%d%.eE+%-]*()") do
      spans[#spans + 1] = { a, b }
      if #spans > 200 then break end
    end
    if #spans == 0 then return s end
    local sp = spans[random(#spans)]
    return splice(s, sp[1], sp[2] - sp[1], NUMBERS[random(#NUMBERS)])
  end,
  function(s) -- a NUL byte
    return splice(s, random(#s + 1), 0, "\0")
  end,
  function(s) -- deep nesting where a JSON value starts
    local at = s:find("[%[{]", random(math.max(1, #s)))
    if not at then return s end
    local depth = random(100, 5000)
    return splice(s, at, 0, ("["):rep(depth)) .. ("]"):rep(depth)
  end,
  function(s) -- swap two bytes
    if #s < 2 then return s end
    local a, b = random(#s), random(#s)
    local x, y = s:sub(a, a), s:sub(b, b)
    s = splice(s, a, 1, y)
    return splice(s, b, 1, x)
  end,
}

local function mutate(s)
  for _ = 1, random(1, 3) do s = MUTATORS[random(#MUTATORS)](s) end
  return s
end

-- ---- targets ----------------------------------------------------------------------------------
-- Each: the file to mutate (inside a folder of valid files) and how to use a mutant.

local work = testing.tmpdir()

local function touch_scores(g) -- reading every score back: a bogus NaN would crash or mis-compare
  local n = 0
  for _, score in g:edges() do
    if score > 0 or score <= 0 or score ~= score then n = n + 1 end
  end
  g:apply_topn(3)
  return n
end

local function tiny_model_dir(name)
  local dir = work .. "/" .. name
  os.execute("mkdir -p '" .. dir .. "'")
  return testing.random_model({ family = "gpt2", layers = 1, heads = 2, d_model = 8, vocab = 16, n_ctx = 8,
                                dir = dir })
end

local function graph_for_files()
  local g = Graph.new({ n_layers = 1, n_heads = 2, d_model = 4 }, { level = "neuron" })
  for i = 0, g.n_forward * g.n_backward - 1 do
    if g.real[i] ~= 0 then g.scores[i] = (i % 7) - 3 end
  end
  g:apply_topn(4)
  return g
end

local TARGETS = {
  {
    name = "config.json",
    setup = function() return tiny_model_dir("cfg") .. "/config.json" end,
    use = function(path) load.load(path:match("^(.*)/")) end,
  },
  {
    name = "model.safetensors",
    setup = function() return tiny_model_dir("st") .. "/model.safetensors" end,
    use = function(path) load.load(path:match("^(.*)/")) end,
  },
  {
    name = "llama2c.bin",
    setup = function() return write(work .. "/model.bin", require("support.tiny").llama2c_bytes()) end,
    use = function(path) load.load(path) end,
  },
  {
    name = "data.jsonl",
    setup = function()
      return write(work .. "/data.jsonl", '{"clean": [1, 2, 3], "corrupted": [1, 5, 3], "correct": [7], "incorrect": [8, 9]}\n' ..
        '{"clean": [4, 2], "corrupted": [4, 6], "correct": 3, "incorrect": 2, "note": "x"}\n')
    end,
    use = function(path) data.load_jsonl(path, { vocab = 16, n_ctx = 8 }) end,
  },
  {
    name = "data.csv",
    setup = function()
      return write(work .. "/data.csv", 'clean,corrupted,correct_idx,incorrect_idx,clean_ids,corrupted_ids\n' ..
        '"a, b",c d,3,[4],"[1,2,3]","[1,5,3]"\n"x ""y""",z,1,2,"[4,2]","[4,6]"\n')
    end,
    use = function(path) data.load_csv(path, { vocab = 16, n_ctx = 8 }) end,
  },
  {
    name = "graph.json",
    setup = function()
      local path = work .. "/graph.json"
      graph_for_files():to_json(path)
      return path
    end,
    use = function(path) touch_scores(Graph.from_json(path)) end,
  },
  {
    name = "graph.safetensors",
    setup = function()
      local path = work .. "/graph.safetensors"
      graph_for_files():to_safetensors(path)
      return path
    end,
    use = function(path) touch_scores(Graph.from_safetensors(path)) end,
  },
  {
    name = "tokenizer.json",
    setup = function()
      local dir = work .. "/tok"
      os.execute("mkdir -p '" .. dir .. "'")
      local vocab = { ["<s>"] = 0, a = 1, b = 2, ab = 3, ["\u{0120}"] = 4, ["\u{0120}a"] = 5, ["!"] = 6 }
      local doc = {
        version = "1.0", truncation = cjson.null, padding = cjson.null, normalizer = cjson.null,
        added_tokens = { { id = 0, content = "<s>", special = true, normalized = false } },
        pre_tokenizer = { type = "ByteLevel", add_prefix_space = false, trim_offsets = true, use_regex = true },
        post_processor = cjson.null, decoder = { type = "ByteLevel" },
        model = { type = "BPE", vocab = vocab, merges = { "a b", "\u{0120} a" }, ignore_merges = false },
      }
      write(dir .. "/tokenizer.json", cjson.encode(doc))
      return dir .. "/tokenizer.json"
    end,
    use = function(path)
      local tok = tokenizer.load(path)
      local ids = tok:encode("ab a!<s> ba", { bos = false })
      tok:decode(ids)
    end,
  },
}

-- An error is a refusal when it is a message; anything that shows the code fell over is not.
local function is_finding(err)
  if type(err) ~= "string" then return "a non-string error: " .. tostring(err) end
  if err == "" then return "an empty error message" end
  for _, bad in ipairs({ "attempt to ", "bad argument #", "stack overflow", "table: 0x", "cdata<",
                         "C stack overflow" }) do
    if err:find(bad, 1, true) then return "a runtime error instead of a message" end
  end
  return nil
end

local deadline_per_target = opts.seconds
local status = 0
for _, t in ipairs(TARGETS) do
  if not opts.target or opts.target == t.name then
    local path = t.setup()
    local seed_text = read(path)
    local ok0, err0 = pcall(t.use, path)
    if not ok0 then
      io.stderr:write(("%s: the valid seed does not load: %s\n"):format(t.name, tostring(err0)))
      os.exit(1)
    end
    local stop = os.time() + deadline_per_target -- wall clock: the loop is mostly file writes
    local n, loaded, refused = 0, 0, 0
    while os.time() < stop do
      local mutant = mutate(seed_text)
      write(path, mutant)
      n = n + 1
      local ok, err = pcall(t.use, path)
      if ok then
        loaded = loaded + 1
      else
        refused = refused + 1
        local why = is_finding(err)
        if why then
          local keep = ("%s/finding-%s"):format(work, t.name)
          write(keep, mutant)
          io.stderr:write(("%s: %s\n  mutant kept at %s (seed %d)\n  error: %s\n"):format(t.name, why, keep,
            opts.seed, tostring(err)))
          status = 1
          break
        elseif opts.verbose then
          io.stderr:write(t.name, ": ", err, "\n")
        end
      end
      if n % 50 == 0 then collectgarbage() end
    end
    print(("%s: %d mutants, %d loaded, %d refused"):format(t.name, n, loaded, refused))
    if status ~= 0 then break end
    write(path, seed_text)
  end
end
if status == 0 then testing.rmtree(work) end
os.exit(status)
