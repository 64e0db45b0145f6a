-- tasks.single_token on SentencePiece-style tokenizers, where " key" encodes as the tokenizer's
-- own space marker plus "▁key" (two ids) although "▁key" is one token inside a sentence; and the
-- agreement task of docs/writing-a-task.md, run as the page writes it, on such a tokenizer.
local cjson = require("cjson")
local tasks = require("eapig.tasks")
local tokenizer = require("eapig.formats.tokenizer")
local testing = require("eapig.testing")
local files = require("support.files")

local META = "\226\150\129" -- U+2581, SentencePiece's space marker

-- A SentencePiece-style BPE tokenizer.json as Llama-2's (the normalizer puts a marker before the
-- text and turns spaces into markers, so " key" becomes "▁▁key"): single characters, and the
-- given words as "▁word" pieces built by left-to-right merges.
local function sp_tokenizer_json(words)
  local vocab, merges, n = {}, {}, 0
  local function add(piece)
    if vocab[piece] == nil then
      vocab[piece] = n
      n = n + 1
    end
  end
  add("<unk>")
  add("<s>")
  add("</s>")
  add(META)
  for c = 32, 126 do add(string.char(c)) end
  for _, w in ipairs(words) do
    local prefix = META
    for i = 1, #w do
      local c = w:sub(i, i)
      if vocab[prefix .. c] == nil then merges[#merges + 1] = prefix .. " " .. c end
      add(prefix .. c)
      prefix = prefix .. c
    end
  end
  return cjson.encode({
    version = "1.0",
    added_tokens = { { id = 0, content = "<unk>", special = true }, { id = 1, content = "<s>", special = true },
      { id = 2, content = "</s>", special = true } },
    normalizer = { type = "Sequence", normalizers = { { type = "Prepend", prepend = META },
      { type = "Replace", pattern = { String = " " }, content = META } } },
    pre_tokenizer = cjson.null,
    decoder = { type = "Sequence", decoders = { { type = "Replace", pattern = { String = META }, content = " " },
      { type = "Fuse" }, { type = "Strip", content = " ", start = 1, stop = 0 } } },
    model = { type = "BPE", dropout = cjson.null, unk_token = "<unk>", continuing_subword_prefix = cjson.null,
      end_of_word_suffix = cjson.null, fuse_unk = true, byte_fallback = false, ignore_merges = false,
      vocab = vocab, merges = merges },
  })
end

-- The agreement module of docs/writing-a-task.md: its three Lua blocks that define M, joined.
local function agreement_module()
  local parts = {}
  for block in files.read("docs/writing-a-task.md"):gmatch("```lua\n(.-)```") do
    if block:find("mytasks/agreement.lua", 1, true) or block:find("^%-%- log p%(right verb%)")
      or block:find("^function M%.write_csv") then
      parts[#parts + 1] = block
    end
  end
  assert.equal(3, #parts, "docs/writing-a-task.md: the agreement module's three blocks")
  return assert(loadstring(table.concat(parts, "\n"), "=docs/writing-a-task.md agreement"))()
end

describe("tasks.single_token on a SentencePiece tokenizer", function()
  local tmp, tok
  local WORDS = { "key", "keys", "dog", "dogs", "cabinet", "cabinets", "house", "houses", "is", "are", "near" }
  setup(function()
    tmp = testing.tmpdir()
    files.write(tmp .. "/tokenizer.json", sp_tokenizer_json(WORDS))
    tok = tokenizer.load(tmp .. "/tokenizer.json")
  end)
  teardown(function() testing.rmtree(tmp) end)

  it("finds the in-sentence piece of a word given with its leading space", function()
    assert.is_true(#tok:encode(" key", { bos = false }) > 1, "the stand-in should show the problem")
    local id = tasks.single_token(tok, " key")
    assert.equal(tok:id(" key"), id)
    -- the id a sentence uses for the word
    local sentence = tok:encode("The key", { bos = false })
    assert.equal(sentence[#sentence], id)
    assert.equal(tok:id(" is"), tasks.single_token(tok, " is"))
  end)

  it("returns nil for text that is more than one token", function()
    assert.is_nil(tasks.single_token(tok, " teacher"))
    assert.is_nil(tasks.single_token(tok, " key near"))
  end)

  it("lets the agreement task of docs/writing-a-task.md build aligned rows", function()
    local agreement = agreement_module()
    local ds = agreement.generate(tok, { n = 20, seed = 2 })
    assert.equal(20, #ds)
    local is_id, are_id = tok:id(" is"), tok:id(" are")
    for _, row in ipairs(ds.rows) do
      assert.equal(#row.clean, #row.corrupted)
      local verbs = { [is_id] = true, [are_id] = true }
      assert.is_true(verbs[row.correct[1]] and verbs[row.incorrect[1]] and row.correct[1] ~= row.incorrect[1])
    end
  end)

  it("the agreement task says what is missing on a vocabulary without those words", function()
    local agreement = agreement_module()
    files.write(tmp .. "/small.json", sp_tokenizer_json({ "is", "are" }))
    local small = tokenizer.load(tmp .. "/small.json")
    local ok, err = pcall(agreement.generate, small, { n = 5 })
    assert.is_false(ok)
    assert.matches("agreement: the tokenizer has no one%-token subjects", err)
  end)
end)

describe("tasks.single_token on stories260K's tok512.bin", function()
  local shared = require("support.shared").dir()
  if not shared then
    pending("../shared is absent: stories260K's tokenizer check skipped")
    return
  end
  it("finds word pieces with a leading space, as sentences use them", function()
    local tok = tokenizer.load(shared .. "/models/stories260K/tok512.bin")
    for _, w in ipairs({ " the", " big", " Lily" }) do
      local id = tasks.single_token(tok, w)
      assert.is_not_nil(id, w)
      local sentence = tok:encode("One day" .. w, { bos = false })
      assert.equal(sentence[#sentence], id, w)
    end
  end)
end)
