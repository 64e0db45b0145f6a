-- Built-in tasks: the registry, the seeded generator, and each task's dataset structure,
-- determinism and CSV round trip, first on a small stand-in tokenizer (always), then on GPT-2's
-- and stories260K's tokenizers from ../shared (skipped when absent), and end to end on stories260K:
-- an induction dataset from tok512.bin, EAP-IG-inputs, a top-n circuit and its faithfulness.
local tasks = require("eapig.tasks")
local testing = require("eapig.testing")

local SHARED = require("support.shared").dir()

-- A stand-in tokenizer: greedy longest match over a fixed list of pieces (id = position - 1),
-- with single characters as the fallback. Enough pieces for the greater-than and IOI templates
-- to tokenize as a real BPE would: " 1732" -> " 17" + "32", " Mary" one token.
local function fake_tokenizer(extra, opts)
  opts = opts or {}
  local pieces = { "<s>" } -- id 0: BOS
  local function add(p) pieces[#pieces + 1] = p end
  for c = 32, 126 do add(string.char(c)) end
  if not opts.no_years then
    for y = 0, 99 do add(string.format("%02d", y)) end
  end
  for c = 10, 19 do add(" " .. c) end
  for _, w in ipairs({ "The", " lasted", " from", " the", " year", " to", " war", "war", "deal", " deal", "marriage",
    " went", " gave", " a", " and", "When", "Then", " store", " drink", " Mary", " John", " Kate", " Paul",
    " Sarah", " Adam", " Mark", " Lisa", " cat", " dog", " sun", " sky", " red", " big", " hat", " box" }) do
    add(w)
  end
  for _, w in ipairs(extra or {}) do add(w) end
  local ids = {}
  for i, p in ipairs(pieces) do ids[p] = i - 1 end
  local tok = { vocab_size = #pieces, bos_id = 0, add_bos = false, pieces = pieces }
  function tok.encode(_, text, o)
    local out = (o and o.bos) and { 0 } or {}
    local i = 1
    while i <= #text do
      local best
      for len = math.min(12, #text - i + 1), 1, -1 do
        local id = ids[text:sub(i, i + len - 1)]
        if id and id ~= 0 then best = { id, len } break end
      end
      assert(best, "fake tokenizer: cannot encode " .. text:sub(i, i))
      out[#out + 1] = best[1]
      i = i + best[2]
    end
    return out
  end
  function tok.decode(_, list)
    local parts = {}
    for i, id in ipairs(list) do parts[i] = pieces[id + 1] end
    return table.concat(parts)
  end
  function tok.token(_, id) return pieces[id + 1] end
  function tok.id(_, piece) return ids[piece] end
  return tok
end

local tmpdir
local function tmp_path(name) return tmpdir .. "/" .. name end

-- Positions (1-based) where two id lists differ; both must have the same length.
local function differences(a, b)
  assert.equal(#a, #b)
  local out = {}
  for i = 1, #a do
    if a[i] ~= b[i] then out[#out + 1] = i end
  end
  return out
end

local function rows_of(ds)
  local out = {}
  for i, r in ipairs(ds.rows) do out[i] = { r.clean, r.corrupted, r.correct, r.incorrect, r.label } end
  return out
end

describe("tasks", function()
  setup(function() tmpdir = testing.tmpdir() end)
  teardown(function() testing.rmtree(tmpdir) end)

  it("define no globals", function()
    local before = {}
    for k in pairs(_G) do before[k] = true end
    for _, m in ipairs({ "eapig.tasks", "eapig.tasks.greater_than", "eapig.tasks.ioi", "eapig.tasks.induction",
      "eapig.formats.csv" }) do
      package.loaded[m] = nil
      require(m)
    end
    for k in pairs(_G) do assert(before[k], "new global: " .. tostring(k)) end
    tasks = require("eapig.tasks")
  end)

  describe("registry", function()
    it("lists and finds the built-in tasks", function()
      assert.same({ "greater_than", "induction", "ioi" }, tasks.names())
      for _, name in ipairs(tasks.names()) do
        local t = tasks.get(name)
        assert.equal(name, t.name)
        assert.is_function(t.generate)
        assert.is_function(t.write_csv)
        assert.is_function(t.load_csv)
        assert.truthy(require("eapig.metrics").get(t.metric))
      end
      assert.equal(tasks.get("greater_than"), tasks.get("greater-than"))
    end)

    it("names the known tasks for an unknown one; takes user tasks", function()
      local ok, err = pcall(tasks.get, "sva")
      assert.False(ok)
      assert.truthy(err:find("unknown task 'sva' (known: greater_than, induction, ioi)", 1, true), err)
      local mine = { name = "mine", metric = "logit_diff", generate = function() end }
      tasks.register("mine", mine)
      assert.equal(mine, tasks.get("mine"))
      assert.same({ "greater_than", "induction", "ioi", "mine" }, tasks.names())
      assert.has_error(function() tasks.register("bad", { metric = "kl_div" }) end)
      assert.has_error(function() tasks.register("bad", { generate = function() end }) end)
    end)
  end)

  describe("rng", function()
    it("is splitmix64: the same numbers on every machine", function()
      local r = tasks.rng(42)
      local got = {}
      for i = 1, 6 do got[i] = r:below(1000) end
      assert.same({ 413, 291, 858, 764, 250, 62 }, got) -- Python: splitmix64(42) % 1000
    end)

    it("draws in range, samples distinct elements, shuffles into a permutation", function()
      local r = tasks.rng(1)
      for _ = 1, 200 do
        local v = r:int(3, 5)
        assert.truthy(v >= 3 and v <= 5)
        local u = r:uniform()
        assert.truthy(u >= 0 and u < 1)
      end
      local list = {}
      for i = 1, 20 do list[i] = i end
      local s = r:sample(list, 20)
      table.sort(s)
      assert.same(list, s)
      local p = r:shuffle({ 1, 2, 3, 4, 5 })
      table.sort(p)
      assert.same({ 1, 2, 3, 4, 5 }, p)
      assert.has_error(function() r:sample(list, 21) end)
      assert.has_error(function() tasks.rng(-1) end)
      assert.has_error(function() tasks.rng(1.5) end)
    end)
  end)

  describe("greater_than", function()
    local gt = require("eapig.tasks.greater_than")
    local tok = fake_tokenizer()

    it("builds EAP-IG's sentences: clean and corrupted differ only at the YY token", function()
      local ds = gt.generate(tok, { n = 120, seed = 1 })
      assert.equal(120, #ds)
      local years = gt.year_ids(tok)
      assert.equal(100, #years)
      for i, row in ipairs(ds.rows) do
        -- balanced: YY cycles through 02..98 (each century's first and last valid years, x00 and
        -- x99, are left out as in EAP-IG, and x01 is the corruption)
        assert.equal(2 + (i - 1) % 97, row.label)
        local d = differences(row.clean, row.corrupted)
        assert.equal(1, #d)
        assert.equal(years[row.label + 1], row.clean[d[1]])
        assert.equal(tok:id("01"), row.corrupted[d[1]])
        local century = row.clean_text:match("to the year (%d+)$")
        assert.equal(tok:id(" " .. century), row.clean[#row.clean])
        assert.truthy(row.clean_text:find("^The %a+ lasted from the year " .. century .. string.format("%02d", row.label)
          .. " to the year " .. century .. "$"), row.clean_text)
        assert.same(years, row.year_ids)
      end
      assert.equal("prob_diff", gt.metric)
    end)

    it("is deterministic for a seed and differs across seeds; bos and nouns options", function()
      assert.same(rows_of(gt.generate(tok, { n = 30, seed = 5 })), rows_of(gt.generate(tok, { n = 30, seed = 5 })))
      assert.are_not.same(rows_of(gt.generate(tok, { n = 30, seed = 5 })), rows_of(gt.generate(tok, { n = 30, seed = 6 })))
      local ds = gt.generate(tok, { n = 3, bos = true, nouns = { "deal" } })
      assert.equal(0, ds[1].clean[1])
      assert.truthy(ds[1].clean_text:find("^The deal "))
      -- EAP-IG's filter: the noun alone must be one token
      assert.same({ "deal", "marriage" }, (function() -- "war" is not in EAP-IG's list
        local n = gt.nouns(tok); table.sort(n); return n end)())
      assert.equal("The war lasted from the year 1732 to the year 17", (gt.sentences("war", 1732)))
      assert.equal("The war lasted from the year 1701 to the year 17", select(2, gt.sentences("war", 1732)))
    end)

    it("says so when the tokenizer has no two-digit year tokens", function()
      local ok, err = pcall(gt.generate, fake_tokenizer(nil, { no_years = true }), { n = 2 })
      assert.False(ok)
      assert.truthy(err:find("needs two-digit year tokens", 1, true), err)
      ok, err = pcall(gt.generate, "gpt2", { n = 2 })
      assert.False(ok)
      assert.truthy(err:find("needs a tokenizer", 1, true), err)
    end)

    it("writes EAP-IG's CSV columns and reads them back", function()
      local ds = gt.generate(tok, { n = 10, seed = 2 })
      local path = tmp_path("gt.csv")
      gt.write_csv(ds, path)
      local f = assert(io.open(path))
      assert.equal("clean,corrupted,label", f:read("*l"))
      f:close()
      local back = gt.load_csv(path, tok)
      assert.same(rows_of(ds), rows_of(back))
      assert.same(ds[1].year_ids, back[1].year_ids)
    end)
  end)

  describe("ioi", function()
    local ioi = require("eapig.tasks.ioi")
    local tok = fake_tokenizer()

    local function name_ids(row)
      return tok:id(row.correct_text), tok:id(row.incorrect_text)
    end

    it("puts IO and S in ABB and BAB order; abc changes S2 to a third name", function()
      local names = ioi.names(tok)
      assert.same({ "Adam", "John", "Kate", "Lisa", "Mark", "Mary", "Paul", "Sarah" }, (function()
        table.sort(names); return names end)())
      local ds = ioi.generate(tok, { n = 40, seed = 3, templates = { "When {A} and {B} went to the store, {S} gave a drink to" } })
      local orders = {}
      for _, row in ipairs(ds.rows) do
        local io_id, s_id = name_ids(row)
        assert.same({ io_id }, row.correct)
        assert.same({ s_id }, row.incorrect)
        assert.are_not.equal(io_id, s_id)
        local first = row.clean[2] -- "When" then the first name
        assert.equal(row.order == "ABB" and io_id or s_id, first)
        orders[row.order] = true
        local d = differences(row.clean, row.corrupted)
        assert.equal(1, #d)
        assert.equal(s_id, row.clean[d[1]]) -- the second mention of S
        local c = row.corrupted[d[1]]
        assert.truthy(c ~= io_id and c ~= s_id and tok:token(c):find("^ %u"))
        assert.truthy(row.corrupted_hard:find(row.correct_text .. " gave", 1, true), row.corrupted_hard)
      end
      assert.same({ ABB = true, BAB = true }, orders)
      assert.equal("logit_diff", ioi.metric)
    end)

    it("flip makes the answer the subject; all replaces every name", function()
      local ds = ioi.generate(tok, { n = 20, seed = 4, corruption = "flip" })
      for _, row in ipairs(ds.rows) do
        local d = differences(row.clean, row.corrupted)
        assert.equal(1, #d)
        assert.equal(row.correct[1], row.corrupted[d[1]])
      end
      ds = ioi.generate(tok, { n = 20, seed = 4, corruption = "all" })
      for _, row in ipairs(ds.rows) do
        assert.equal(#row.clean, #row.corrupted)
        for _, id in ipairs(row.corrupted) do
          assert.are_not.equal(row.correct[1], id)
          assert.are_not.equal(row.incorrect[1], id)
        end
      end
    end)

    it("is deterministic; errors on bad options and too few names", function()
      assert.same(rows_of(ioi.generate(tok, { n = 25, seed = 9 })), rows_of(ioi.generate(tok, { n = 25, seed = 9 })))
      assert.are_not.same(rows_of(ioi.generate(tok, { n = 25, seed = 9 })), rows_of(ioi.generate(tok, { n = 25, seed = 10 })))
      assert.has_error(function() ioi.generate(tok, { corruption = "xyz" }) end)
      local ok, err = pcall(ioi.generate, tok, { names = { "Mary", "John", "Zork" } })
      assert.False(ok)
      assert.truthy(err:find("2 of the names are single tokens", 1, true), err)
    end)

    it("writes EAP-IG's ioi columns and reads them back", function()
      local ds = ioi.generate(tok, { n = 12, seed = 1, bos = true })
      local path = tmp_path("ioi.csv")
      ioi.write_csv(ds, path)
      local f = assert(io.open(path))
      assert.truthy(f:read("*l"):find("^clean,corrupted,correct_idx,incorrect_idx,correct,incorrect"))
      f:close()
      local back = ioi.load_csv(path, tok, { bos = true })
      assert.same(rows_of(ds), rows_of(back))
      assert.equal(ds[3].order, back[3].order)
    end)
  end)

  describe("induction", function()
    local induction = require("eapig.tasks.induction")

    local function check_row(row, H, bos, V)
      local off = bos and 1 or 0
      assert.equal(off + 2 * H - 1, #row.clean)
      assert.equal(#row.clean, #row.corrupted)
      if bos then
        assert.equal(bos, row.clean[1])
        assert.equal(bos, row.corrupted[1])
      end
      local A, B, seen = {}, {}, {}
      for i = 1, H do
        A[i], B[i] = row.clean[off + i], row.corrupted[off + i]
        assert.is_nil(seen[A[i]], "A and B are 2H distinct tokens")
        seen[A[i]] = true
        assert.is_nil(seen[B[i]])
        seen[B[i]] = true
      end
      for i = 1, H - 1 do -- the second half repeats A in both runs
        assert.equal(A[i], row.clean[off + H + i])
        assert.equal(A[i], row.corrupted[off + H + i])
      end
      assert.same({ A[H] }, row.correct)
      assert.same({ B[H] }, row.incorrect)
      for _, id in ipairs(row.clean) do assert.truthy(id >= 0 and id < V) end
    end

    it("on a bare vocabulary: A then A again, the first half re-drawn in the corrupted row", function()
      local ds = induction.generate({ vocab = 50, half = 4, n = 20, seed = 3, bos = 0 })
      assert.equal(20, #ds)
      for _, row in ipairs(ds.rows) do
        check_row(row, 4, 0, 50)
        for i = 2, #row.clean do assert.are_not.equal(0, row.clean[i]) end -- BOS is never drawn
      end
      ds = induction.generate({ vocab = 8, half = 4, n = 5 })
      for _, row in ipairs(ds.rows) do check_row(row, 4, nil, 8) end
      assert.equal("logit_diff", induction.metric)
    end)

    it("is deterministic and checks its options", function()
      local a = induction.generate({ vocab = 100, n = 10, seed = 1 })
      assert.same(rows_of(a), rows_of(induction.generate({ vocab = 100, n = 10, seed = 1 })))
      assert.are_not.same(rows_of(a), rows_of(induction.generate({ vocab = 100, n = 10, seed = 2 })))
      local ok, err = pcall(induction.generate, { vocab = 7, half = 4 })
      assert.False(ok)
      assert.truthy(err:find("7 tokens to draw from; two disjoint halves of 4 need at least 8", 1, true), err)
      assert.has_error(function() induction.generate({ half = 4 }) end)
      assert.has_error(function() induction.generate({ vocab = 10, bos = 10 }) end)
    end)

    it("on a tokenizer: word pieces, its BOS convention, ids exact in the CSV", function()
      local tok = fake_tokenizer()
      local pool = induction.token_pool(tok, { pattern = "^ %l%l+$" })
      local allowed = {}
      for _, id in ipairs(pool) do
        allowed[id] = true
        assert.truthy(tok:token(id):find("^ %l%l+$"))
      end
      local ds = induction.generate(tok, { n = 10, half = 3, seed = 1, pattern = "^ %l%l+$" })
      for _, row in ipairs(ds.rows) do
        check_row(row, 3, nil, tok.vocab_size)
        for _, id in ipairs(row.clean) do assert.truthy(allowed[id]) end
        assert.equal(tok:decode(row.clean), row.clean_display)
      end
      ds = induction.generate(tok, { n = 4, half = 3, bos = true, pattern = "^ %l%l+$" })
      check_row(ds[1], 3, 0, tok.vocab_size)
      local path = tmp_path("induction.csv")
      induction.write_csv(ds, path)
      local f = assert(io.open(path))
      assert.equal("clean,corrupted,clean_ids,corrupted_ids,correct_idx,incorrect_idx", f:read("*l"))
      f:close()
      assert.same(rows_of(ds), rows_of(induction.load_csv(path)))
    end)
  end)

  describe("with the tokenizers in ../shared", function()
    local function shared_or_pending(rel)
      if not SHARED then
        pending("../shared absent: skipping the tests on real tokenizers and models")
        return nil
      end
      return SHARED .. "/" .. rel
    end

    it("greater_than on GPT-2's tokenizer matches EAP-IG's data", function()
      local dir = shared_or_pending("models/gpt2-tokenizer")
      if not dir then return end
      local gt = require("eapig.tasks.greater_than")
      local tok = require("eapig.formats.tokenizer").load(dir)
      local years = gt.year_ids(tok)
      for y = 0, 99 do assert.equal(string.format("%02d", y), tok:token(years[y + 1])) end
      -- nouns of EAP-IG's greater_than_data.csv
      local nouns = {}
      for _, n in ipairs(gt.nouns(tok)) do nouns[n] = true end
      for _, n in ipairs({ "contract", "plan", "marriage", "campaign", "progress", "study", "case", "fall" }) do
        assert.truthy(nouns[n], n)
      end
      local valid = {}
      for _, y in ipairs(gt.valid_years(tok)) do valid[y] = true end
      assert.truthy(valid[1352] and valid[1732] and valid[1604])
      local ds = gt.generate(tok, { n = 50, seed = 1, bos = true })
      for _, row in ipairs(ds.rows) do
        assert.equal(13, #row.clean) -- BOS + 12 tokens, as in EAP-IG
        assert.equal(tok.bos_id, row.clean[1])
        assert.equal(1, #differences(row.clean, row.corrupted))
        assert.same(tok:encode(row.clean_text, { bos = true }), row.clean)
      end
    end)

    it("ioi on GPT-2's tokenizer: single-token names, labels are their ids", function()
      local dir = shared_or_pending("models/gpt2-tokenizer")
      if not dir then return end
      local ioi = require("eapig.tasks.ioi")
      local tok = require("eapig.formats.tokenizer").load(dir)
      local names = ioi.names(tok)
      assert.truthy(#names >= 100, #names)
      local ds = ioi.generate(tok, { n = 40, seed = 2 })
      for _, row in ipairs(ds.rows) do
        assert.same(tok:encode(row.correct_text), row.correct)
        assert.same(tok:encode(row.incorrect_text), row.incorrect)
        assert.equal(1, #differences(row.clean, row.corrupted))
      end
      local path = tmp_path("ioi-gpt2.csv")
      ioi.write_csv(ds, path)
      assert.same(rows_of(ds), rows_of(ioi.load_csv(path, tok)))
    end)

    it("induction on tok512.bin", function()
      local path = shared_or_pending("models/stories260K/tok512.bin")
      if not path then return end
      local induction = require("eapig.tasks.induction")
      local tok = require("eapig.formats.tokenizer").load(path)
      local ds = induction.generate(tok, { n = 10, half = 3, seed = 1, pattern = "^ %a%a+$" })
      for _, row in ipairs(ds.rows) do
        assert.equal(1, row.clean[1]) -- llama2.c adds BOS
        assert.equal(6, #row.clean)
        for i = 2, 6 do assert.truthy(tok:token(row.clean[i]):find("^ %a%a+$")) end
      end
    end)

    it("stories260K end to end: EAP-IG-inputs, a top-n circuit, finite faithfulness", function()
      local dir = shared_or_pending("models/stories260K")
      if not dir then return end
      local eapig = require("eapig")
      local induction = require("eapig.tasks.induction")
      local model = eapig.load(dir .. "/stories260K.bin")
      local tok = eapig.tokenizer.load(dir .. "/tok512.bin", { vocab_size = model.vocab })
      local ds = induction.generate(tok, { n = 8, half = 3, seed = 1, pattern = "^ %a%a+$" })
      local mean = require("eapig.evaluate").mean
      local clean = mean(eapig.evaluate_baseline(model, ds, induction.metric))
      local corrupted = mean(eapig.evaluate_baseline(model, ds, induction.metric, { run_corrupted = true }))
      local graph = eapig.Graph.from_model(model)
      eapig.attribute(model, graph, ds, induction.metric, { method = "EAP-IG-inputs", ig_steps = 3, quiet = true })
      local nonzero = 0
      for _, score in graph:edges() do
        assert.truthy(score == score)
        if score ~= 0 then nonzero = nonzero + 1 end
      end
      assert.truthy(nonzero > 0)
      graph:apply_topn(200)
      assert.truthy(graph:count_included_edges() > 0)
      local circuit = mean(eapig.evaluate_graph(model, graph, ds, induction.metric, { quiet = true }))
      local f = eapig.faithfulness(circuit, clean, corrupted)
      assert.truthy(f == f and f > -math.huge and f < math.huge, tostring(f))
    end)
  end)

  describe("example scripts", function()
    -- Runs `eapig run SCRIPT args` as a user does; returns its output and exit status.
    local function run(script, args)
      local p = io.popen("luajit scripts/eapig run scripts/examples/" .. script .. " " .. args .. ' 2>&1; echo "rc=$?"')
      local out = p:read("*a")
      p:close()
      local rc = tonumber(out:match("rc=(%d+)%s*$"))
      return out, rc
    end

    local function exists(path)
      local f = io.open(path, "rb")
      if f then f:close() end
      return f ~= nil
    end

    it("induction_stories.lua prints the faithfulness of the top-n circuit", function()
      if not SHARED then
        pending("../shared absent: skipping the stories260K script")
        return
      end
      local out, rc = run("induction_stories.lua", SHARED .. "/models/stories260K/stories260K.bin --tokenizer "
        .. SHARED .. "/models/stories260K/tok512.bin --n 8 --steps 3 --out " .. tmpdir .. "/stories")
      assert.equal(0, rc, out)
      assert.truthy(out:find("faithfulness of the top%-200 circuit: %-?%d+%.%d+"), out)
      assert.truthy(exists(tmpdir .. "/stories/induction.csv"))
      assert.truthy(exists(tmpdir .. "/stories/graph.json"))
    end)

    it("greater_than.lua and ioi.lua run on a GPT-2-shaped model", function()
      if not SHARED then
        pending("../shared absent: the scripts need GPT-2's tokenizer")
        return
      end
      -- a random 2-layer model with GPT-2's vocabulary, the tokenizer files beside it
      assert.truthy(os.execute("mkdir -p '" .. tmpdir .. "/gpt2'"))
      local dir = testing.random_model({ family = "gpt2", vocab = 50257, layers = 2, d_model = 32, dir = tmpdir .. "/gpt2" })
      for _, name in ipairs({ "encoder.json", "vocab.bpe" }) do
        local src = assert(io.open(SHARED .. "/models/gpt2-tokenizer/" .. name, "rb"))
        local dst = assert(io.open(dir .. "/" .. name, "wb"))
        dst:write(src:read("*a"))
        src:close()
        dst:close()
      end
      for _, script in ipairs({ "greater_than.lua", "ioi.lua" }) do
        local out, rc = run(script, dir .. " --n 16 --topn 50 --steps 2 --out " .. tmpdir .. "/" .. script)
        assert.equal(0, rc, out)
        assert.truthy(out:find("circuit: %d+ edges"), out)
        assert.truthy(out:find("faithfulness: "), out)
        assert.truthy(exists(tmpdir .. "/" .. script .. "/graph.json"), out)
      end
    end)
  end)
end)
