-- Tokenizers: small tokenizer.json and tokenizer.bin files written here with ids worked out by
-- hand (byte-level with the Llama-3 pattern, SentencePiece style with Metaspace and with the
-- legacy Prepend/Replace normalizer, llama2.c scores), round trips on random text and bytes, the
-- heap merge loop against the quadratic reference, bad files, the `eapig tokenize` command; and,
-- when ../shared is present, llama.cpp's 47 GPT-2 vectors and stories260K's tok512.bin.
local cjson = require("cjson")
local ffi = require("ffi")
local tokenizer = require("eapig.formats.tokenizer")

local SHARED = os.getenv("EAPIG_SHARED") or "../shared"
local GPT2_DIR = SHARED .. "/models/gpt2-tokenizer"
local GGUF_DIR = SHARED .. "/models/gpt2-vocab-gguf"
local STORIES_DIR = SHARED .. "/models/stories260K"

local tmpdir

local files = require("support.files")
local testing = require("eapig.testing")
local exists, read, write = files.exists, files.read, files.write

local function mkdir(name)
  local dir = tmpdir .. "/" .. name
  assert(os.execute("mkdir -p '" .. dir .. "'") == 0)
  return dir
end

local function write_json(name, doc)
  local dir = mkdir(name)
  return write(dir .. "/tokenizer.json", cjson.encode(doc)), dir
end

local function load_error(path, opts)
  local ok, err = pcall(tokenizer.load, path, opts)
  assert.False(ok, "expected an error")
  return err
end

local has = require("support.errors").has

-- GPT-2's byte-to-unicode alphabet, written out here so the test files spell pieces as real
-- byte-level files do: printable Latin-1 stands for itself, the other bytes for U+0100 on.
local function utf8_char(cp)
  if cp < 0x80 then return string.char(cp) end
  return string.char(0xc0 + math.floor(cp / 64), 0x80 + cp % 64)
end
local BYTE_CHAR = {}
do
  local k = 0
  for b = 0, 255 do
    if (b >= 0x21 and b <= 0x7e) or (b >= 0xa1 and b <= 0xac) or b >= 0xae then
      BYTE_CHAR[b] = utf8_char(b)
    else
      BYTE_CHAR[b] = utf8_char(256 + k)
      k = k + 1
    end
  end
end
local function spell(s) -- raw bytes -> byte-level spelling
  return (s:gsub(".", function(c) return BYTE_CHAR[c:byte()] end))
end

-- Deterministic random text (a small LCG, so failures reproduce).
local function rng(seed)
  local state = seed
  return function(n)
    state = (state * 1103515245 + 12345) % 2147483648
    return state % n
  end
end

local function utf8_encode(cp)
  if cp < 0x80 then return string.char(cp) end
  if cp < 0x800 then return string.char(0xc0 + math.floor(cp / 64), 0x80 + cp % 64) end
  if cp < 0x10000 then
    return string.char(0xe0 + math.floor(cp / 4096), 0x80 + math.floor(cp / 64) % 64, 0x80 + cp % 64)
  end
  return string.char(0xf0 + math.floor(cp / 262144), 0x80 + math.floor(cp / 4096) % 64,
    0x80 + math.floor(cp / 64) % 64, 0x80 + cp % 64)
end

local POOL = { " ", " ", " ", "  ", "\n", "\n\n", "\t", "'s", "'LL", "the", "The", "a", "12", "3456",
  "é", "ü", "ß", "中文", "ελλη", "🦙", "👍🏽", "!", "...", "\r\n", "\u{a0}", "x", "ab", "ab ab" }
local function random_utf8(r, n)
  local parts = {}
  for i = 1, n do
    local kind = r(4)
    if kind == 0 then
      local cp = r(0x10ffff)
      if cp >= 0xd800 and cp < 0xe000 then cp = 0x41 end
      parts[i] = utf8_encode(cp)
    elseif kind == 1 then
      parts[i] = string.char(0x20 + r(95))
    else
      parts[i] = POOL[r(#POOL) + 1]
    end
  end
  return table.concat(parts)
end
local function random_bytes(r, n)
  local b = {}
  for i = 1, n do b[i] = string.char(r(256)) end
  return table.concat(b)
end

-- ---- the small files ------------------------------------------------------------------------------

-- Byte-level, Llama-3 style: piece id = its byte for the 256 single bytes, then merges.
local LLAMA3_PATTERN =
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
local BL_MERGES = { -- raw bytes; ids 256.. in this order
  { "h", "e" }, { "l", "l" }, { "he", "ll" }, { "hell", "o" },               -- 256..259 hello
  { " ", "w" }, { "o", "r" }, { " w", "or" }, { " wor", "l" }, { " worl", "d" }, -- 260..264 " world"
  { "1", "2" }, { "3", "4" }, { "12", "3" },                                   -- 265..267
  { "\n", "\n" },                                                              -- 268
}
local BL = { hello = 259, world = 264, d12 = 265, d34 = 266, d123 = 267, nn = 268, xyz = 269, bot = 270, eot = 271 }

local function byte_level_doc(opts)
  opts = opts or {}
  local vocab, merges = {}, {}
  for b = 0, 255 do vocab[BYTE_CHAR[b]] = b end
  for i, m in ipairs(BL_MERGES) do
    vocab[spell(m[1] .. m[2])] = 255 + i
    if opts.pair_merges then merges[i] = { spell(m[1]), spell(m[2]) } else merges[i] = spell(m[1]) .. " " .. spell(m[2]) end
  end
  vocab[spell(" xyz")] = BL.xyz -- only reachable through ignore_merges
  local pre
  if opts.gpt2 then
    pre = { type = "ByteLevel", add_prefix_space = false, trim_offsets = true, use_regex = true }
  else
    pre = { type = "Sequence", pretokenizers = {
      { type = "Split", pattern = { Regex = LLAMA3_PATTERN }, behavior = "Isolated", invert = false },
      { type = "ByteLevel", add_prefix_space = false, trim_offsets = true, use_regex = false },
    } }
  end
  return {
    version = "1.0",
    added_tokens = {
      { id = BL.bot, content = "<|begin_of_text|>", special = true, normalized = false },
      { id = BL.eot, content = "<|end_of_text|>", special = true, normalized = false },
    },
    normalizer = cjson.null,
    pre_tokenizer = pre,
    post_processor = { type = "Sequence", processors = {
      { type = "ByteLevel", add_prefix_space = true, trim_offsets = false, use_regex = true },
      { type = "TemplateProcessing",
        single = { { SpecialToken = { id = "<|begin_of_text|>", type_id = 0 } }, { Sequence = { id = "A", type_id = 0 } } },
        pair = {},
        special_tokens = { ["<|begin_of_text|>"] = { id = "<|begin_of_text|>", ids = { BL.bot }, tokens = { "<|begin_of_text|>" } } } },
    } },
    decoder = { type = "ByteLevel", add_prefix_space = true, trim_offsets = true, use_regex = true },
    model = {
      type = "BPE", dropout = cjson.null, unk_token = cjson.null, continuing_subword_prefix = cjson.null,
      end_of_word_suffix = cjson.null, fuse_unk = false, byte_fallback = false,
      ignore_merges = opts.ignore_merges ~= false, vocab = vocab, merges = merges,
    },
  }
end

-- SentencePiece style: <unk> <s> </s>, the 256 byte pieces, then a few pieces and merges.
local META = "\226\150\129"
local SP = { unk = 0, bos = 1, eos = 2, meta = 259, a = 260, b = 261, c = 262, meta_a = 263, meta_b = 264,
  ab = 265, meta_ab = 266, e_acute = 267 }
local function byte_piece_id(b) return 3 + b end

local function sp_doc(style)
  local vocab = { ["<unk>"] = 0, ["<s>"] = 1, ["</s>"] = 2 }
  for b = 0, 255 do vocab[("<0x%02X>"):format(b)] = byte_piece_id(b) end
  vocab[META] = SP.meta
  vocab.a, vocab.b, vocab.c = SP.a, SP.b, SP.c
  vocab[META .. "a"], vocab[META .. "b"], vocab.ab, vocab[META .. "ab"] = SP.meta_a, SP.meta_b, SP.ab, SP.meta_ab
  vocab["é"] = SP.e_acute
  local doc = {
    version = "1.0",
    added_tokens = {
      { id = 0, content = "<unk>", special = true }, { id = 1, content = "<s>", special = true },
      { id = 2, content = "</s>", special = true },
    },
    post_processor = { type = "TemplateProcessing",
      single = { { SpecialToken = { id = "<s>", type_id = 0 } }, { Sequence = { id = "A", type_id = 0 } } },
      pair = {}, special_tokens = { ["<s>"] = { id = "<s>", ids = { 1 }, tokens = { "<s>" } } } },
    model = {
      type = "BPE", dropout = cjson.null, unk_token = "<unk>", continuing_subword_prefix = cjson.null,
      end_of_word_suffix = cjson.null, fuse_unk = true, byte_fallback = true, ignore_merges = false, vocab = vocab,
      merges = { META .. " a", "a b", META .. "a b", META .. " b" },
    },
  }
  if style == "legacy" then -- Llama-2's tokenizer.json
    doc.normalizer = { type = "Sequence", normalizers = {
      { type = "Prepend", prepend = META },
      { type = "Replace", pattern = { String = " " }, content = META } } }
    doc.pre_tokenizer = cjson.null
    doc.decoder = { type = "Sequence", decoders = {
      { type = "Replace", pattern = { String = META }, content = " " }, { type = "ByteFallback" }, { type = "Fuse" },
      { type = "Strip", content = " ", start = 1, stop = 0 } } }
  elseif style == "gemma" then -- spaces replaced, no prefix, no strip
    doc.normalizer = { type = "Replace", pattern = { String = " " }, content = META }
    doc.pre_tokenizer = { type = "Split", pattern = { String = " " }, behavior = "MergedWithPrevious", invert = false }
    doc.decoder = { type = "Sequence", decoders = {
      { type = "Replace", pattern = { String = META }, content = " " }, { type = "ByteFallback" }, { type = "Fuse" } } }
  else -- Metaspace, as newer Llama-2 / Mistral files
    doc.normalizer = cjson.null
    doc.pre_tokenizer = { type = "Metaspace", replacement = META, prepend_scheme = "first", split = style == "split" }
    doc.decoder = { type = "Metaspace", replacement = META, prepend_scheme = "first", split = style == "split" }
  end
  return doc
end

-- llama2.c tokenizer.bin: int32 max_token_length, then float score, int32 length, bytes.
local function bin_record(score, piece)
  local f, n = ffi.new("float[1]", score), ffi.new("int32_t[1]", #piece)
  return ffi.string(f, 4) .. ffi.string(n, 4) .. piece
end
local function int32(v) return ffi.string(ffi.new("int32_t[1]", v), 4) end
local L2C = { space = 259, a = 260, b = 261, sp_a = 262, ab = 263, sp_ab = 264 }
local function llama2c_bin()
  local parts = { int32(8), bin_record(0, "<unk>"), bin_record(0, "\n<s>\n"), bin_record(0, "\n</s>\n") }
  for b = 0, 255 do parts[#parts + 1] = bin_record(0, ("<0x%02X>"):format(b)) end
  parts[#parts + 1] = bin_record(-10, " ")
  parts[#parts + 1] = bin_record(-11, "a")
  parts[#parts + 1] = bin_record(-12, "b")
  parts[#parts + 1] = bin_record(-1, " a")
  parts[#parts + 1] = bin_record(-2, "ab")
  parts[#parts + 1] = bin_record(-0.5, " ab")
  return table.concat(parts)
end

-- ---- specs ------------------------------------------------------------------------------------------

describe("tokenizer", function()
  setup(function() tmpdir = testing.tmpdir() end)
  teardown(function() testing.rmtree(tmpdir) end)

  it("defines no globals", function() files.assert_no_globals("eapig.formats.tokenizer", "eapig.cli.tokenize") end)

  describe("byte-level tokenizer.json (Llama-3 pattern)", function()
    local tok
    setup(function() tok = tokenizer.load(write_json("llama3", byte_level_doc()) ) end)

    it("reads sizes, BOS from the template and prints", function()
      assert.equal(272, tok.vocab_size)
      assert.equal(#BL_MERGES, tok.n_merges)
      assert.equal(BL.bot, tok.bos_id)
      assert.True(tok.add_bos)
      assert.equal(BL.eot, tok.eos_id)
      has(tostring(tok), "272 tokens")
      has(tostring(tok), "byte-level")
    end)

    it("merges by rank", function()
      assert.same({ BL.bot, BL.hello, BL.world }, tok:encode("hello world"))
      assert.same({ BL.hello, BL.world }, tok:encode("hello world", { bos = false }))
      -- "hell" stops at the merge that makes it; the leading space is its own byte
      assert.same({ 258, 32, 104 }, tok:encode("hell h", { bos = false }))
    end)

    it("splits digits in threes and newline runs as the Llama-3 pattern does", function()
      -- "1234" -> "123" "4": the "3 4" merge cannot cross the split
      assert.same({ BL.d123, 52 }, tok:encode("1234", { bos = false }))
      -- "a\n\nb" -> "a" "\n\n" "b"
      assert.same({ 97, BL.nn, 98 }, tok:encode("a\n\nb", { bos = false }))
      -- contractions, case-insensitively: "IT'S" -> "IT" "'S"
      assert.same({ 73, 84, 39, 83 }, tok:encode("IT'S", { bos = false }))
    end)

    it("takes a whole word that is a piece with ignore_merges, and merges it without", function()
      assert.same({ BL.hello, BL.xyz }, tok:encode("hello xyz", { bos = false }))
      local plain = tokenizer.load(write_json("llama3-merging", byte_level_doc({ ignore_merges = false })))
      assert.same({ BL.hello, 32, 120, 121, 122 }, plain:encode("hello xyz", { bos = false }))
    end)

    it("matches thousands of added tokens leftmost-longest (a trie: loading is linear)", function()
      local doc = byte_level_doc()
      local first = 1000
      for i = 0, 19999 do
        doc.added_tokens[#doc.added_tokens + 1] = { id = first + i, content = "<t" .. i .. ">", special = false }
      end
      -- a prefix of another added token, and two tokens with one text: the lower id is found
      doc.added_tokens[#doc.added_tokens + 1] = { id = first + 20000, content = "<t1", special = false }
      doc.added_tokens[#doc.added_tokens + 1] = { id = first + 20001, content = "<t7>", special = false }
      local many = tokenizer.load(write_json("many-added", doc))
      assert.same({ first + 5, BL.hello, first + 19999, first + 12, first + 7 },
        many:encode("<t5>hello<t19999><t12><t7>", { bos = false }))
      local ids = many:encode("<t1x", { bos = false })
      assert.equal(first + 20000, ids[1])
      assert.equal(first + 123, many:id("<t123>"))
    end)

    it("an added token id far beyond the vocabulary is an error naming the field", function()
      local doc = byte_level_doc()
      doc.added_tokens[#doc.added_tokens + 1] = { id = 2 ^ 31 - 2, content = "<x>", special = false }
      local err = load_error(write_json("sparse-id", doc))
      has(err, "added_tokens[3].id")
      has(err, "id 2147483646 is far beyond the")
    end)

    it("reads merges written as pairs", function()
      local paired = tokenizer.load(write_json("llama3-pairs", byte_level_doc({ pair_merges = true })))
      assert.same({ BL.hello, BL.world }, paired:encode("hello world", { bos = false }))
    end)

    it("cuts out special tokens written in the text unless told not to", function()
      assert.same({ BL.bot, BL.hello, BL.eot }, tok:encode("<|begin_of_text|>hello<|end_of_text|>", { bos = false }))
      local plain = tok:encode("<|end_of_text|>", { bos = false, special = false })
      assert.equal(15, #plain) -- one byte each: no merge applies
      assert.equal("<|end_of_text|>", tok:decode(plain))
    end)

    it("decodes, with and without special tokens", function()
      assert.equal("<|begin_of_text|>hello world", tok:decode({ BL.bot, BL.hello, BL.world }))
      assert.equal("hello world", tok:decode({ BL.bot, BL.hello, BL.world }, { skip_special = true }))
    end)

    it("maps tokens to text and back", function()
      assert.equal(" world", tok:token(BL.world))
      assert.equal("\n", tok:token(10))
      assert.equal("<|end_of_text|>", tok:token(BL.eot))
      assert.equal(BL.world, tok:id(" world"))
      assert.equal(BL.eot, tok:id("<|end_of_text|>"))
      assert.is_nil(tok:id("no such piece"))
      assert.is_nil(tok:token(-1))
      assert.is_nil(tok:token(tok.vocab_size))
    end)

    it("round-trips random UTF-8 and random bytes", function()
      local r = rng(7)
      for _ = 1, 200 do
        local s = random_utf8(r, 1 + r(40))
        assert.equal(s, tok:decode(tok:encode(s, { bos = false })))
        local b = random_bytes(r, 1 + r(40))
        assert.equal(b, tok:decode(tok:encode(b, { bos = false })))
      end
    end)

    it("splits with the GPT-2 pattern under ByteLevel use_regex", function()
      local gpt2 = tokenizer.load(write_json("gpt2-style", byte_level_doc({ gpt2 = true })))
      -- "1234" is one word here, so "3 4" merges first: "12" "34"
      assert.same({ BL.d12, BL.d34 }, gpt2:encode("1234", { bos = false }))
      -- "\n\nb": the whitespace before a letter splits off one character at a time
      assert.same({ 97, 10, 10, 98 }, gpt2:encode("a\n\nb", { bos = false }))
    end)
  end)

  describe("SentencePiece-style tokenizer.json", function()
    it("Metaspace (prepend first) with byte_fallback", function()
      local tok = tokenizer.load(write_json("sp-metaspace", sp_doc("metaspace")))
      assert.equal(268, tok.vocab_size)
      assert.equal(SP.bos, tok.bos_id)
      assert.True(tok.add_bos)
      has(tostring(tok), "byte_fallback")
      -- "ab" -> "▁ab": "▁ a" then "▁a b"
      assert.same({ SP.bos, SP.meta_ab }, tok:encode("ab"))
      -- no split: one word "▁ab▁ab", the leftmost of equal ranks first
      assert.same({ SP.meta_ab, SP.meta_ab }, tok:encode("ab ab", { bos = false }))
      -- "\n" has no piece: its byte piece; "▁ b" merges
      assert.same({ SP.meta_b, byte_piece_id(10) }, tok:encode("b\n", { bos = false }))
      -- "é" is a piece; "ü" (C3 BC) falls back to two byte pieces
      assert.same({ SP.meta, SP.e_acute }, tok:encode("é", { bos = false }))
      assert.same({ SP.meta, byte_piece_id(0xc3), byte_piece_id(0xbc) }, tok:encode("ü", { bos = false }))
      -- after a special token the text is not at the start: no prefix ("first")
      assert.same({ SP.bos, SP.ab }, tok:encode("<s>ab", { bos = false }))
      -- decoding puts spaces back and drops the prefix
      assert.equal("ab ab", tok:decode({ SP.meta_ab, SP.meta_ab }))
      assert.equal("<s>ab", tok:decode({ SP.bos, SP.meta_ab }))
      assert.equal("ab", tok:decode({ SP.bos, SP.meta_ab }, { skip_special = true }))
      assert.equal(" ab", tok:decode({ SP.meta_ab }, { keep_prefix = true }))
      assert.equal("ü\n", tok:decode(tok:encode("ü\n", { bos = false })))
      assert.equal(" ab", tok:token(SP.meta_ab))
      assert.equal(SP.meta_ab, tok:id(" ab"))
      assert.equal(SP.ab, tok:id("ab"))
      assert.equal(byte_piece_id(10), tok:id("\n"))
    end)

    it("Metaspace with split starts a word at each meta symbol", function()
      local tok = tokenizer.load(write_json("sp-split", sp_doc("split")))
      -- "ab b": "▁ab" "▁b"
      assert.same({ SP.meta_ab, SP.meta_b }, tok:encode("ab b", { bos = false }))
    end)

    it("legacy Prepend + Replace normalizer (Llama-2)", function()
      local tok = tokenizer.load(write_json("sp-legacy", sp_doc("legacy")))
      assert.same({ SP.bos, SP.meta_ab }, tok:encode("ab"))
      -- Prepend always adds the meta symbol, even before a space: "▁▁ab"
      assert.same({ SP.meta, SP.meta_ab }, tok:encode(" ab", { bos = false }))
      assert.equal(" ab", tok:decode(tok:encode(" ab"), { skip_special = true }))
      -- and after a special token (the "legacy" behaviour)
      assert.same({ SP.bos, SP.meta_ab }, tok:encode("<s>ab", { bos = false }))
      -- unknown characters without byte pieces become one fused <unk>
      local doc = sp_doc("legacy")
      doc.model.byte_fallback = false
      local nofb = tokenizer.load(write_json("sp-nofallback", doc))
      assert.same({ SP.meta_a, SP.unk, SP.b }, nofb:encode("aüüb", { bos = false }))
    end)

    it("Gemma style: spaces replaced, no prefix", function()
      local tok = tokenizer.load(write_json("sp-gemma", sp_doc("gemma")))
      -- "ab▁ab": "▁ a" first, then "a b" at the start, then "▁a b"
      assert.same({ SP.bos, SP.ab, SP.meta_ab }, tok:encode("ab ab"))
      assert.equal("ab ab", tok:decode({ SP.ab, SP.meta_ab }))
      assert.equal(" ab", tok:decode({ SP.meta_ab }))
    end)

    it("round-trips random text", function()
      local tok = tokenizer.load(write_json("sp-roundtrip", sp_doc("legacy")))
      local r = rng(11)
      for _ = 1, 200 do
        -- special = false: random text may spell "<s>"
        local s = random_utf8(r, 1 + r(30))
        assert.equal(s, tok:decode(tok:encode(s, { bos = false, special = false })))
        local b = random_bytes(r, 1 + r(30))
        assert.equal(b, tok:decode(tok:encode(b, { bos = false, special = false })))
      end
    end)

    it("tokenizer_config.json overrides the BOS convention", function()
      local path, dir = write_json("sp-config", sp_doc("metaspace"))
      write(dir .. "/tokenizer_config.json", cjson.encode({ add_bos_token = false, eos_token = { content = "</s>" } }))
      local tok = tokenizer.load(dir)
      assert.False(tok.add_bos)
      assert.equal(SP.eos, tok.eos_id)
      assert.same({ SP.meta_ab }, tok:encode("ab"))
      assert.same({ SP.meta_ab, SP.eos }, tok:encode("ab", { eos = true }))
      assert.True(tokenizer.load(path, { config = false }).add_bos)
    end)
  end)

  describe("llama2.c tokenizer.bin", function()
    local path
    setup(function() path = write(mkdir("l2c") .. "/tokenizer.bin", llama2c_bin()) end)

    it("merges the best-scored pair first and adds the dummy prefix", function()
      local tok = tokenizer.load(path)
      assert.equal(265, tok.vocab_size)
      assert.equal(1, tok.bos_id)
      assert.True(tok.add_bos)
      -- " ab": " a" (-1) before "ab" (-2), then " ab" (-0.5)
      assert.same({ 1, L2C.sp_ab }, tok:encode("ab"))
      -- " abab": " a", " ab", then "ab"
      assert.same({ L2C.sp_ab, L2C.ab }, tok:encode("abab", { bos = false }))
      -- " ba": nothing merges; "\n" is its byte piece (3 + 10)
      assert.same({ L2C.space, L2C.b, L2C.a, 13 }, tok:encode("ba\n", { bos = false }))
      assert.same({}, tok:encode("", { bos = false }))
      assert.equal("ab", tok:decode({ 1, L2C.sp_ab }, { skip_special = true }))
      assert.equal("abab", tok:decode(tok:encode("abab", { bos = false })))
      assert.equal(L2C.sp_ab, tok:id(" ab"))
    end)

    it("loads a file with a 256 KiB piece (linear in the piece's length) and still merges", function()
      local long = string.rep("a", 256 * 1024)
      local bin = int32(#long) .. bin_record(0, "<unk>") .. bin_record(0, "\n<s>\n") .. bin_record(0, "\n</s>\n") ..
        bin_record(-10, " ") .. bin_record(-11, "a") .. bin_record(-1, "aa") .. bin_record(-2, "aaaa") ..
        bin_record(-100, long)
      local tok = tokenizer.load(write(tmpdir .. "/long-piece.bin", bin))
      assert.same({ 3, 6 }, tok:encode("aaaa", { bos = false }))
      assert.same({ 3, 6, 5, 4 }, tok:encode("aaaaaaa", { bos = false }))
      assert.equal(7, tok:id(long))
    end)

    it("reads exactly vocab_size records when given, and finds tok<N>.bin in a folder", function()
      local dir = mkdir("l2c-folder")
      write(dir .. "/tok265.bin", llama2c_bin() .. "trailing bytes are not read")
      local tok = tokenizer.load(dir, { vocab_size = 265 })
      assert.equal(265, tok.vocab_size)
      local err = load_error(dir .. "/tok265.bin")
      has(err, "tok265.bin")
    end)

    it("rejects lengths that do not fit the file", function()
      local bad = write(tmpdir .. "/short.bin", "\7\0")
      has(load_error(bad), "max_token_length")
      bad = write(tmpdir .. "/neg.bin", int32(-3))
      has(load_error(bad), "max_token_length: -3")
      bad = write(tmpdir .. "/long.bin", int32(7) .. bin_record(0, "<unk>") .. ffi.string(ffi.new("float[1]", 0), 4)
        .. int32(100) .. "abc")
      local err = load_error(bad)
      has(err, "long.bin")
      has(err, "token 1: length 100")
      bad = write(tmpdir .. "/past.bin", int32(1000) .. bin_record(0, "<unk>") .. ffi.string(ffi.new("float[1]", 0), 4)
        .. int32(500) .. "abc")
      has(load_error(bad), "token 1: length 500 runs past the end")
      bad = write(tmpdir .. "/cut.bin", int32(7) .. bin_record(0, "<unk>") .. "\0\0")
      has(load_error(bad), "token 1: record header")
      has(load_error(path, { vocab_size = 300 }), "token 265: record header")
    end)
  end)

  describe("the C API", function()
    local core = require("eapig.core")
    local C = core.C

    -- A byte-level tokenizer built piece by piece with a named pattern.
    local function build(split)
      local cfg = ffi.new("eapig_tokenizer_config", { n_vocab = 256 + #BL_MERGES, symbols = C.EAPIG_TOK_BYTE_LEVEL,
        split = split, prefix = C.EAPIG_TOK_PREFIX_NONE, unk_id = -1 })
      local h = ffi.gc(core.check_ptr(C.eapig_tokenizer_new(cfg)), C.eapig_tokenizer_free)
      for b = 0, 255 do core.check(C.eapig_tokenizer_set_token(h, b, BYTE_CHAR[b], #BYTE_CHAR[b], 0)) end
      for i, m in ipairs(BL_MERGES) do
        local piece = spell(m[1] .. m[2])
        core.check(C.eapig_tokenizer_set_token(h, 255 + i, piece, #piece, 0))
        core.check(C.eapig_tokenizer_add_merge(h, spell(m[1]), #spell(m[1]), spell(m[2]), #spell(m[2])))
      end
      return h
    end
    local function encode(h, s)
      local ids, n = ffi.new("int32_t[?]", #s + 8), ffi.new("size_t[1]")
      core.check(C.eapig_tokenizer_encode(h, s, #s, 0, ids, #s + 8, n))
      local out = {}
      for i = 0, tonumber(n[0]) - 1 do out[i + 1] = ids[i] end
      return out
    end

    it("the named Llama-3 pattern splits as the pattern read from tokenizer.json", function()
      local h = build(C.EAPIG_TOK_SPLIT_LLAMA3)
      local from_file = tokenizer.load(write_json("llama3-named", byte_level_doc({ ignore_merges = false })))
      local r = rng(17)
      for _ = 1, 100 do
        local s = random_utf8(r, 1 + r(40))
        assert.same(from_file:encode(s, { bos = false, special = false }), encode(h, s))
      end
      assert.same({ BL.d123, 52 }, encode(h, "1234"))
    end)

    -- A core tokenizer of the 256 byte-level tokens that splits text with the given pattern.
    local function regex_byte_tokenizer(pattern)
      local cfg = ffi.new("eapig_tokenizer_config", { n_vocab = 256, symbols = C.EAPIG_TOK_BYTE_LEVEL,
        split = C.EAPIG_TOK_SPLIT_REGEX, pattern = pattern, prefix = C.EAPIG_TOK_PREFIX_NONE, unk_id = -1 })
      local h = ffi.gc(core.check_ptr(C.eapig_tokenizer_new(cfg)), C.eapig_tokenizer_free)
      for b = 0, 255 do core.check(C.eapig_tokenizer_set_token(h, b, BYTE_CHAR[b], #BYTE_CHAR[b], 0)) end
      return h
    end

    it("a pathological pre-tokenizer pattern is stopped by the match limit, with a message", function()
      local h = regex_byte_tokenizer("(a+)+$")
      local text = string.rep("a", 64) .. "!" -- 2^64 ways to split the run: never ends without a limit
      local ids, n = ffi.new("int32_t[80]"), ffi.new("size_t[1]")
      assert.equal(C.EAPIG_ERR_ARG, C.eapig_tokenizer_encode(h, text, #text, 0, ids, 80, n))
      has(ffi.string(C.eapig_last_error()), "backtracks too much")
      core.check(C.eapig_tokenizer_encode(h, "aa", 2, 0, ids, 80, n)) -- a match still works
      assert.equal(2, tonumber(n[0]))
    end)

    it("a pattern that matches empty at the end of the text stops there (found by fuzzing)", function()
      local h = regex_byte_tokenizer("\\s+|\\b")
      assert.same({ 97, 98, 32, 99, 100 }, encode(h, "ab cd"))
    end)

    it("the Qwen2 pattern takes digits one at a time", function()
      assert.same({ 49, 50, 51, 52 }, encode(build(C.EAPIG_TOK_SPLIT_QWEN2), "1234"))
    end)

    it("reports the needed size when the buffer is short, and checks arguments", function()
      local h = build(C.EAPIG_TOK_SPLIT_GPT2)
      local ids, n = ffi.new("int32_t[1]"), ffi.new("size_t[1]")
      core.check(C.eapig_tokenizer_encode(h, "abc", 3, 0, ids, 1, n))
      assert.equal(3, tonumber(n[0]))
      assert.equal(97, ids[0])
      local bytes = ffi.new("char[2]")
      local three = ffi.new("int32_t[3]", { 97, 98, 99 })
      core.check(C.eapig_tokenizer_decode(h, three, 3, 0, bytes, 2, n))
      assert.equal(3, tonumber(n[0]))
      assert.equal("ab", ffi.string(bytes, 2))
      assert.Not.equal(0, C.eapig_tokenizer_set_token(h, 5, "x", 1, 0))
      has(ffi.string(C.eapig_last_error()), "id 5 is given to two pieces")
      assert.Not.equal(0, C.eapig_tokenizer_set_token(h, 1000, "x", 1, 0))
      has(ffi.string(C.eapig_last_error()), "id 1000 outside 0 .. 268")
      local bad = ffi.new("eapig_tokenizer_config", { n_vocab = 0, symbols = C.EAPIG_TOK_CHARS, unk_id = -1 })
      assert.True(C.eapig_tokenizer_new(bad) == nil)
      has(ffi.string(C.eapig_last_error()), "n_vocab 0 must be positive")
    end)

    it("frees on request", function()
      local tok = tokenizer.load(write_json("free", sp_doc("metaspace")))
      tok:free()
      tok:free()
      assert.has_error(function() tok:encode("ab") end, "eapig.tokenizer: the tokenizer was freed")
    end)
  end)

  describe("the merge loop", function()
    it("the heap gives what the quadratic reference gives", function()
      local bl = tokenizer.load(write_json("ref-bl", byte_level_doc({ ignore_merges = false })))
      local sp = tokenizer.load(write_json("ref-sp", sp_doc("legacy")))
      local r = rng(3)
      local alphabet = { "a", "b", " ", "h", "e", "l", "o", "w", "r", "d", "1", "2", "3", "4", "\n" }
      for _ = 1, 200 do
        local parts = {}
        for i = 1, 1 + r(300) do parts[i] = alphabet[r(#alphabet) + 1] end
        local s = table.concat(parts)
        for _, tok in ipairs({ bl, sp }) do
          assert.same(tok:encode(s, { reference = true }), tok:encode(s))
        end
      end
    end)
  end)

  describe("pre-tokenizer work", function()
    -- The pre-tokenizer matches in windows ahead of each start position (core/tokenizer.c,
    -- match_windowed); encode(s, {whole_matches = true}) matches over the whole text at once,
    -- as before windows: the words must be the same, and a pattern that would need quadratic work
    -- must be refused quickly, naming the file.
    local function with_pattern(name, pattern)
      local doc = byte_level_doc({ ignore_merges = false })
      doc.pre_tokenizer.pretokenizers[1].pattern.Regex = pattern
      local path = write_json(name, doc)
      return tokenizer.load(path), path
    end

    local function mixed_text(r, bytes)
      local parts, n = {}, 0
      while n < bytes do
        local kind = r(10)
        local s
        if kind == 0 then s = string.rep(" ", 1 + r(3000))
        elseif kind == 1 then s = string.rep("ab", 1 + r(2000))
        elseif kind == 2 then s = random_bytes(r, 1 + r(40))
        elseif kind == 3 then s = string.rep("\n", 1 + r(500)) .. string.rep(" ", r(3))
        else s = random_utf8(r, 1 + r(200)) end
        parts[#parts + 1] = s
        n = n + #s
      end
      return table.concat(parts)
    end

    local function seconds(f)
      local t0 = os.clock()
      local ok, err = pcall(f)
      return os.clock() - t0, ok, err
    end

    it("long runs and a megabyte of mixed text give the words of the unwindowed match", function()
      local gpt2 = tokenizer.load(write_json("runs-gpt2", byte_level_doc({ gpt2 = true, ignore_merges = false })))
      local llama3 = tokenizer.load(write_json("runs-llama3", byte_level_doc({ ignore_merges = false })))
      local r = rng(23)
      local texts = {
        string.rep(" ", 100000) .. "hello world",
        string.rep(" ", 100000),
        "x" .. string.rep("\n", 100000) .. "hello",
        string.rep("ab", 100000),
        string.rep("é", 100000) .. "1",
        string.rep("1", 100000),
        "hello" .. string.rep("\255", 100000) .. " world",
        mixed_text(r, 1000000),
      }
      for i, s in ipairs(texts) do
        for _, tok in ipairs({ gpt2, llama3 }) do
          local ids = tok:encode(s, { special = false, bos = false })
          assert.same(tok:encode(s, { special = false, bos = false, whole_matches = true }), ids, "text " .. i)
          assert.equal(s, tok:decode(ids))
        end
      end
      -- the words, worked out by hand: GPT-2's \s+(?!\S) leaves the run's last newline to a word
      -- of its own, Llama-3's \s*[\r\n]+ takes the run whole; newline pairs merge inside a word
      local s = "x" .. string.rep("\n", 100000) .. "hello"
      local expected = { 120 }
      for _ = 1, 49999 do expected[#expected + 1] = BL.nn end
      expected[#expected + 1] = 10
      expected[#expected + 1] = 10
      expected[#expected + 1] = BL.hello
      assert.same(expected, gpt2:encode(s, { special = false, bos = false }))
      expected = { 120 }
      for _ = 1, 50000 do expected[#expected + 1] = BL.nn end
      expected[#expected + 1] = BL.hello
      assert.same(expected, llama3:encode(s, { special = false, bos = false }))
    end)

    it("takes time linear in the text", function()
      local gpt2 = tokenizer.load(write_json("linear-gpt2", byte_level_doc({ gpt2 = true, ignore_merges = false })))
      local small, big = mixed_text(rng(29), 250000), mixed_text(rng(31), 1000000)
      local t_small, t_big = math.huge, math.huge
      for _ = 1, 3 do
        t_small = math.min(t_small, (seconds(function() gpt2:encode(small) end)))
        t_big = math.min(t_big, (seconds(function() gpt2:encode(big) end)))
      end
      -- linear: about 4 times; quadratic would be about 16 times
      assert.is_true(t_big < 8 * t_small + 0.05, ("1 MB took %.3f s, 250 kB %.3f s"):format(t_big, t_small))
    end)

    it("a pattern quadratic by design is refused quickly on a megabyte, naming the file", function()
      for _, pattern in ipairs({ "\\p{L}+\\d|.", "a+b|.", "\\s*x|\\s" }) do
        local tok, path = with_pattern("quadratic", pattern)
        local text = pattern == "\\s*x|\\s" and string.rep(" ", 1000000) or string.rep("a", 1000000)
        local t, ok, err = seconds(function() tok:encode(text) end)
        assert.False(ok, pattern)
        has(err, "eapig.tokenizer: encode: " .. path .. ": the pre-tokenizer pattern needs more than linear work on this input")
        assert.is_true(t < 3, ("%s: refused after %.2f s"):format(pattern, t))
        -- the same pattern on ordinary text still works, as it did
        local s = "ab1 cd2 " .. string.rep("x", 300) .. "3"
        assert.same(tok:encode(s, { whole_matches = true }), tok:encode(s))
      end
    end)

    it("a long added token whose prefixes the text repeats is refused quickly; real ones never are", function()
      local doc = byte_level_doc({ ignore_merges = false })
      doc.added_tokens[#doc.added_tokens + 1] = { id = 272, content = string.rep("a", 5000) .. "b", special = true }
      doc.added_tokens[#doc.added_tokens + 1] = { id = 273, content = string.rep(" ", 100), special = true }
      local path = write_json("long-added", doc)
      local tok = tokenizer.load(path)
      local t, ok, err = seconds(function() tok:encode(string.rep("a", 1000000)) end)
      assert.False(ok)
      has(err, "eapig.tokenizer: encode: " .. path .. ": the added tokens need more than linear work on this input")
      assert.is_true(t < 3, ("refused after %.2f s"):format(t))
      -- the token itself, and 100 kB of spaces cut into 100-space tokens, are fine
      assert.same({ 272 }, tok:encode(string.rep("a", 5000) .. "b", { bos = false }))
      local ids = tok:encode(string.rep(" ", 100000) .. "x", { bos = false })
      assert.equal(1001, #ids)
      assert.equal(273, ids[1000])
      assert.equal(120, ids[1001])
    end)

    it("eapig tokenize refuses a megabyte line with such a pattern: exit 1, one line", function()
      local _, path = with_pattern("quadratic-cli", "\\p{L}+\\d|.")
      local input = write(tmpdir .. "/letters.txt", string.rep("a", 1000000) .. "\n")
      local t0 = os.time()
      local p = io.popen(("luajit scripts/eapig tokenize --tokenizer '%s' < '%s' 2>&1; echo \"rc=$?\""):format(path, input))
      local out = p:read("*a")
      p:close()
      local body, rc = out:match("^(.-)rc=(%d+)%s*$")
      assert.equal("1", rc, out)
      assert.truthy(body:match("^eapig: [^\n]+\n$"), "not one error line: " .. body)
      has(body, path .. ": the pre-tokenizer pattern needs more than linear work on this input")
      assert.is_true(os.time() - t0 <= 5, "took " .. (os.time() - t0) .. " s")
    end)
  end)

  describe("bad files", function()
    it("names the file and the field", function()
      local path = write_json("no-model", { version = "1.0" })
      local err = load_error(path)
      has(err, path)
      has(err, "model: missing")

      local doc = byte_level_doc()
      doc.model.type = "Unigram"
      path = write_json("unigram", doc)
      err = load_error(path)
      has(err, path)
      has(err, 'model.type: unknown type "Unigram"')

      doc = byte_level_doc()
      doc.model.merges[3] = "zz q"
      err = load_error(write_json("bad-merge", doc))
      has(err, "model.merges[3]")
      has(err, "'zz' is not in the vocabulary")

      doc = byte_level_doc()
      doc.model.merges[2] = "lll"
      has(load_error(write_json("bad-merge-form", doc)), "model.merges[2]: expected two pieces")

      doc = byte_level_doc()
      doc.model.vocab["zz"] = -4
      has(load_error(write_json("bad-id", doc)), 'model.vocab["zz"]: id must be a non-negative integer')

      doc = byte_level_doc()
      doc.pre_tokenizer = { type = "Digits", individual_digits = true }
      has(load_error(write_json("digits", doc)), 'pre_tokenizer.type: pre-tokenizer "Digits" is not supported')

      doc = byte_level_doc()
      doc.pre_tokenizer.pretokenizers[1].behavior = "Removed"
      has(load_error(write_json("removed", doc)), "pre_tokenizer.pretokenizers[1].behavior")

      doc = byte_level_doc()
      doc.pre_tokenizer.pretokenizers[1].pattern.Regex = "(unclosed"
      has(load_error(write_json("bad-regex", doc)), "pre-tokenizer pattern: missing closing parenthesis")

      doc = sp_doc("metaspace")
      doc.normalizer = { type = "Lowercase" }
      has(load_error(write_json("lowercase", doc)), 'normalizer.type: normalizer "Lowercase" is not supported')

      doc = sp_doc("metaspace")
      doc.model.unk_token = "<nope>"
      has(load_error(write_json("bad-unk", doc)), "model.unk_token")

      doc = sp_doc("metaspace")
      doc.added_tokens[2].id = 1.5
      has(load_error(write_json("bad-added", doc)), "added_tokens[2].id")

      doc = sp_doc("metaspace")
      doc.model.vocab["dup"] = 5
      has(load_error(write_json("dup-id", doc)), "is given to two pieces")

      path = write(mkdir("not-json") .. "/tokenizer.json", "{ \"model\": ")
      err = load_error(path)
      has(err, path)
      has(err, "JSON")

      has(load_error(tmpdir .. "/nowhere/tokenizer.json"), "no such file or folder")
      has(load_error(mkdir("empty")), "no tokenizer in")
      local ok, e = tokenizer.try_load(mkdir("empty2"))
      assert.is_nil(ok)
      has(e, "no tokenizer in")
    end)

    it("rejects bad ids in decode", function()
      local tok = tokenizer.load(write_json("decode-err", byte_level_doc()))
      local ok, err = pcall(tok.decode, tok, { 1, 9999 })
      assert.False(ok)
      has(err, "id 9999 at position 2")
      ok, err = pcall(tok.decode, tok, { 1, "x" })
      assert.False(ok)
      has(err, "ids[2]")
      -- an id with no token (a hole between the pieces and the added tokens)
      local doc = byte_level_doc()
      doc.added_tokens[2].id = 280
      tok = tokenizer.load(write_json("hole", doc))
      ok, err = pcall(tok.decode, tok, { 275 })
      assert.False(ok)
      has(err, "has no token")
      assert.is_nil(tok:token(275))
    end)
  end)

  describe("eapig tokenize", function()
    local run = require("eapig.cli.tokenize")
    local function run_with(argv, input)
      local inp = io.tmpfile()
      inp:write(input)
      inp:seek("set", 0)
      local out = io.tmpfile()
      assert.equal(0, run(argv, { stdin = inp, stdout = out }))
      out:seek("set", 0)
      local s = out:read("*a")
      inp:close()
      out:close()
      return s
    end

    it("encodes lines and JSONL rows, and decodes", function()
      local path = write_json("cli", sp_doc("metaspace"))
      assert.equal("[1,266]\n[1,266,266]\n[1]\n", run_with({ "--tokenizer", path }, "ab\nab ab\n\n"))
      assert.equal("[266]\n", run_with({ "--tokenizer", path, "--no-bos" }, "ab\n"))
      assert.equal("[1,266]\n[1,264]\n", run_with({ "tokenize", "--tokenizer=" .. path, "--jsonl" },
        '{"text": "ab"}\n\n{"text": "b", "other": 1}\n'))
      assert.equal("ab ab\n<s>ab\n", run_with({ "--tokenizer", path, "--decode" }, "[266,266]\n[1,266]\n"))
      assert.equal('{"text":"ab"}\n', run_with({ "--tokenizer", path, "--decode", "--jsonl" }, '{"ids": [266]}\n'))
    end)

    it("names the line at fault", function()
      local path = write_json("cli-err", sp_doc("metaspace"))
      local function err_of(argv, input)
        local ok, err = pcall(run_with, argv, input)
        assert.False(ok)
        return err
      end
      has(err_of({ "--tokenizer", path, "--jsonl" }, '{"text": "a"}\n{"txt": "b"}\n'), "line 2: field 'text'")
      has(err_of({ "--tokenizer", path, "--decode" }, "[1]\n[1, 99999]\n"), "line 2")
      has(err_of({ "--tokenizer", path, "--decode" }, "nope\n"), "line 1: not JSON")
      has(err_of({}, ""), "missing option '--tokenizer'")
      has(err_of({ "--tokenizer", path, "--frobnicate" }, ""), "unknown option '--frobnicate'")
    end)
  end)

  describe("GPT-2 (../shared/models/gpt2-tokenizer)", function()
    local tok
    local present = exists(GPT2_DIR .. "/encoder.json") and exists(GPT2_DIR .. "/vocab.bpe")
    setup(function()
      if present then tok = tokenizer.load(GPT2_DIR) end
    end)

    it("encodes llama.cpp's 47 test strings exactly", function()
      if not present or not exists(GGUF_DIR .. "/ggml-vocab-gpt-2.gguf.inp") then
        pending("skipped: " .. GGUF_DIR .. " or " .. GPT2_DIR .. " is absent")
        return
      end
      local strings, expected = require("support.shared").vocab_tests(GGUF_DIR .. "/ggml-vocab-gpt-2.gguf")
      assert.equal(47, #strings)
      for i, s in ipairs(strings) do
        assert.same(expected[i], tok:encode(s), ("string %d: %q"):format(i, s))
        assert.equal(s, tok:decode(tok:encode(s)))
      end
    end)

    it("knows its special token, and round-trips random text and bytes", function()
      if not present then pending("skipped: " .. GPT2_DIR .. " is absent"); return end
      assert.equal(50257, tok.vocab_size)
      assert.equal(50000, tok.n_merges)
      assert.equal(50256, tok.bos_id)
      assert.equal(50256, tok.eos_id)
      assert.False(tok.add_bos)
      assert.same({ 15496, 995 }, tok:encode("Hello world"))
      assert.same({ 50256, 15496, 995 }, tok:encode("Hello world", { bos = true }))
      assert.same({ 383, 2068, 7586, 21831 }, tok:encode(" The quick brown fox"))
      assert.same({ 15496, 50256, 995 }, tok:encode("Hello<|endoftext|> world"))
      assert.equal(995, tok:id(" world"))
      assert.equal(" world", tok:token(995))
      assert.equal("<|endoftext|>", tok:token(50256))
      local r = rng(5)
      for _ = 1, 300 do
        local s = random_utf8(r, 1 + r(60))
        local ids = tok:encode(s)
        assert.equal(s, tok:decode(ids))
        assert.same(ids, tok:encode(s, { reference = true }))
        local b = random_bytes(r, 1 + r(60))
        assert.equal(b, tok:decode(tok:encode(b)))
      end
    end)

    it("loads from either file of the pair", function()
      if not present then pending("skipped: " .. GPT2_DIR .. " is absent"); return end
      assert.same({ 15496, 995 }, tokenizer.load(GPT2_DIR .. "/encoder.json"):encode("Hello world"))
      assert.same({ 15496, 995 }, tokenizer.load(GPT2_DIR .. "/vocab.bpe"):encode("Hello world"))
    end)
  end)

  describe("stories260K tok512.bin (../shared/models/stories260K)", function()
    it("reproduces the reference ids of the greedy sample", function()
      local path = STORIES_DIR .. "/tok512.bin"
      if not exists(path) or not exists(STORIES_DIR .. "/SOURCE.md") then
        pending("skipped: " .. STORIES_DIR .. " is absent")
        return
      end
      local tok = tokenizer.load(path)
      assert.equal(512, tok.vocab_size)
      local list = read(STORIES_DIR .. "/SOURCE.md"):match("%[(1, 403[%d, ]*)%]")
      assert.truthy(list, "reference ids not found in SOURCE.md")
      local ref = {}
      for n in list:gmatch("%d+") do ref[#ref + 1] = tonumber(n) end
      assert.equal(257, #ref)
      local text = tok:decode(ref, { skip_special = true })
      assert.equal("Once upon a time, there was a little girl named Lily. She loved to play outside in the park.",
        text:sub(1, 92))
      assert.same(ref, tok:encode(text))
      assert.same(ref, tokenizer.load(STORIES_DIR, { vocab_size = 512 }):encode(text))
    end)
  end)
end)
