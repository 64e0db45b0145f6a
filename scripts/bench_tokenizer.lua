-- Benchmark (not a test): encoding and decoding 1 MB of text with two real tokenizers (GPT-2's
-- byte-level BPE with its regex pre-tokenizer, from a folder holding encoder.json + vocab.bpe;
-- stories260K's llama2.c tokenizer tok512.bin, where the whole text is one word for the merge
-- loop) and the loading time of each.
-- Run from the repository root:
--   EAPIG_GPT2_TOKENIZER=DIR EAPIG_TOK512=FILE luajit scripts/bench_tokenizer.lua [build dir] [MB]
local build = arg[1] or "./build"
package.path = "./lua/?.lua;./lua/?/init.lua;" .. build .. "/?.lua;" .. package.path
package.cpath = build .. "/?.so;" .. package.cpath
local tokenizer = require("eapig.formats.tokenizer")

local GPT2 = os.getenv("EAPIG_GPT2_TOKENIZER")
local TOK512 = os.getenv("EAPIG_TOK512")
if not (GPT2 and TOK512) then
  io.stderr:write("bench_tokenizer: set EAPIG_GPT2_TOKENIZER (a GPT-2 tokenizer folder) and EAPIG_TOK512 " ..
    "(stories260K's tok512.bin)\n")
  os.exit(2)
end
local MB = tonumber(arg[2] or "") or 1

-- CPU seconds of the best of `reps` runs (the work is single-threaded, so this is wall time).
local function time(fn, reps)
  local best, result = math.huge, nil
  for _ = 1, reps do
    local t0 = os.clock()
    result = fn()
    best = math.min(best, os.clock() - t0)
  end
  return best, result
end

-- Prose-like text: words, punctuation, numbers, newlines and some non-ASCII, from a fixed seed.
local function make_text(bytes)
  local words = { "the", "a", "little", "girl", "named", "Lily", "was", "very", "happy", "to", "play", "in",
    "park", "with", "her", "friend", "Tom", "they", "saw", "big", "red", "ball", "and", "ran", "after", "it",
    "she", "said", "don't", "we're", "1732", "2024", "3.14", "café", "naïve", "über", "東京", "😀", "—" }
  local seps = { " ", " ", " ", " ", " ", ", ", ". ", "! ", "? ", "\n", "\n\n", "  ", "\t" }
  local state, parts, n = 12345, {}, 0
  local function r(k)
    state = (state * 1103515245 + 12345) % 2147483648
    return state % k
  end
  while n < bytes do
    local w = words[r(#words) + 1] .. seps[r(#seps) + 1]
    parts[#parts + 1] = w
    n = n + #w
  end
  return table.concat(parts):sub(1, bytes)
end

local text = make_text(math.floor(MB * 1024 * 1024))
io.write(("text: %d bytes\n"):format(#text))

local function bench(label, path, opts)
  local f = io.open(path, "rb")
  if not f then
    io.write(("%-28s skipped: %s is absent\n"):format(label, path))
    return
  end
  f:close()
  local t_load, tok = time(function() return tokenizer.load(path, opts) end, 3)
  local t_enc, ids = time(function() return tok:encode(text, { bos = false }) end, 3)
  local t_dec, back = time(function() return tok:decode(ids) end, 3)
  assert(back == text, label .. ": decode(encode(text)) differs from the text")
  io.write(("%-28s load %6.1f ms   encode %6.1f ms (%5.1f MB/s, %d ids)   decode %5.1f ms\n"):format(
    label, t_load * 1e3, t_enc * 1e3, #text / t_enc / 1e6, #ids, t_dec * 1e3))
end

bench("gpt2 (encoder.json+vocab.bpe)", GPT2)
bench("stories260K tok512.bin", TOK512)
