-- Datasets: JSONL loading and its error messages, padded batches, deterministic shuffling,
-- writing back. Files are written to a temporary directory; the fixtures' data.jsonl is read when
-- ../shared/fixtures is present.
local data = require("eapig.data")

local FIXTURES = os.getenv("EAPIG_FIXTURES") or "../shared/fixtures"

local tmpdir
local function tmp_path(name) return tmpdir .. "/" .. name end

local function write_file(name, text)
  local path = tmp_path(name)
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
  return path
end

local function load_error(name, text, opts)
  local ok, err = pcall(data.load_jsonl, write_file(name, text), opts)
  assert.False(ok, "expected an error")
  return err
end

local GOOD = table.concat({
  '{"clean": [1, 2, 3], "corrupted": [1, 5, 3], "correct": 7, "incorrect": [8, 9], "note": "a"}',
  '',
  '{"clean": [4, 5, 6, 7, 8], "corrupted": [4, 5, 0, 7, 8], "correct": [1], "incorrect": 2}',
  '{"clean": [9], "corrupted": [10], "correct": 3, "incorrect": 4}',
}, "\n") .. "\n"

describe("data", function()
  setup(function()
    tmpdir = os.tmpname()
    os.remove(tmpdir)
    assert(os.execute("mkdir -p '" .. tmpdir .. "'") == 0)
  end)
  teardown(function() os.execute("rm -rf '" .. tmpdir .. "'") end)

  it("defines no globals", function()
    package.loaded["eapig.data"] = nil
    local before = {}
    for k in pairs(_G) do before[k] = true end
    require("eapig.data")
    for k in pairs(_G) do assert(before[k], "new global: " .. tostring(k)) end
  end)

  describe("load_jsonl", function()
    it("normalises labels to lists and keeps extra fields", function()
      local ds = data.load_jsonl(write_file("good.jsonl", GOOD), { vocab = 16 })
      assert.equal(3, #ds)
      assert.equal(3, #ds.rows)
      assert.equal(ds.rows[2], ds[2])
      assert.same({ 7 }, ds.rows[1].correct)
      assert.same({ 8, 9 }, ds.rows[1].incorrect)
      assert.same({ 2 }, ds.rows[2].incorrect)
      assert.equal("a", ds.rows[1].note)
      assert.same({ 1, 3, 4 }, ds.lines) -- blank line 2 counted
      assert.truthy(tostring(ds):find("3 rows, 1-5 tokens", 1, true))
    end)

    it("a missing field names the row and the field", function()
      local err = load_error("missing.jsonl",
        '{"clean": [1], "corrupted": [1], "correct": 1, "incorrect": 2}\n'
        .. '{"clean": [1], "corrupted": [1], "correct": 1}\n')
      assert.equal(tmp_path("missing.jsonl") .. ": row 2: missing field 'incorrect'", err)
    end)

    it("a token id out of range names the file, row and field", function()
      local err = load_error("range.jsonl", (GOOD:gsub("%[9%]", "[16]")), { vocab = 16 })
      assert.equal(tmp_path("range.jsonl") .. ": row 4: field 'clean': token id 16 (entry 1) outside [0, 16)", err)
      err = load_error("neg.jsonl", (GOOD:gsub('"correct": 7', '"correct": -1')))
      assert.truthy(err:find("row 1: field 'correct': token id -1", 1, true), err)
      err = load_error("frac.jsonl", (GOOD:gsub('%[8, 9%]', '[8, 9.5]')))
      assert.truthy(err:find("row 1: field 'incorrect': entry 2 (9.5) is not an integer token id", 1, true), err)
    end)

    it("an empty or non-list sequence", function()
      local err = load_error("empty.jsonl", '{"clean": [], "corrupted": [], "correct": 1, "incorrect": 2}\n')
      assert.truthy(err:find("row 1: field 'clean': must be a non-empty list of token ids", 1, true), err)
      err = load_error("scalar.jsonl", '{"clean": 3, "corrupted": [3], "correct": 1, "incorrect": 2}\n')
      assert.truthy(err:find("row 1: field 'clean': must be a non-empty list", 1, true), err)
    end)

    it("bad JSON names the row", function()
      local err = load_error("bad.jsonl", GOOD .. '{"clean": [1,\n')
      assert.truthy(err:find("bad.jsonl: row 5: bad JSON", 1, true), err)
    end)

    it("mismatched lengths: an error naming the row, or dropped with a count", function()
      local text = GOOD .. '{"clean": [1, 2], "corrupted": [1, 2, 3], "correct": 3, "incorrect": 4}\n'
      local err = load_error("mismatch.jsonl", text)
      assert.truthy(err:find("mismatch.jsonl: row 5: clean has 2 tokens but corrupted has 3", 1, true), err)
      local ds = data.load_jsonl(tmp_path("mismatch.jsonl"), { drop_mismatched = true })
      assert.equal(3, #ds)
      assert.equal(1, ds.dropped)
      assert.truthy(tostring(ds):find("1 dropped"))
      assert.equal(4, #data.load_jsonl(tmp_path("mismatch.jsonl"), { allow_mismatched = true }))
    end)

    it("n_ctx limits the length", function()
      local err = load_error("long.jsonl", GOOD, { n_ctx = 4 })
      assert.truthy(err:find("row 3: 5 tokens, more than n_ctx = 4", 1, true), err)
    end)

    it("a missing file and an empty file", function()
      local ok, err = pcall(data.load_jsonl, tmp_path("nope.jsonl"))
      assert.False(ok)
      assert.truthy(err:find("nope.jsonl"), err)
      err = load_error("blank.jsonl", "\n\n")
      assert.truthy(err:find("no rows"), err)
    end)

    it("bad options", function()
      assert.has_error(function() data.load_jsonl(tmp_path("good.jsonl"), { vocab = 0 }) end)
      assert.has_error(function() data.load_jsonl(tmp_path("good.jsonl"), { n_ctx = 1.5 }) end)
    end)
  end)

  describe("from_rows", function()
    it("accepts rows without correct/incorrect when labels says so", function()
      local rows = { { clean = { 1, 2 }, corrupted = { 1, 3 }, label = 5, year_ids = { 10, 11, 12 } } }
      local ds = data.from_rows(rows, { labels = {}, vocab = 20 })
      assert.equal(5, ds.rows[1].label)
      assert.same({ 10, 11, 12 }, ds.rows[1].year_ids)
      assert.are_not.equal(rows[1], ds.rows[1]) -- a checked copy
      local ok, err = pcall(data.from_rows, rows, { labels = { "label" }, vocab = 11 })
      assert.False(ok)
      assert.equal("data: row 1: field 'year_ids': token id 11 (entry 2) outside [0, 11)", err)
    end)

    it("text fields need a tokenizer; with one they are encoded", function()
      local rows = { { clean = "a b", corrupted = "c d", correct = " x", incorrect = " y z" } }
      local ok, err = pcall(data.from_rows, rows)
      assert.False(ok)
      assert.truthy(err:find("row 1: field 'clean': is text; pass opts.tokenizer", 1, true), err)
      -- a stand-in tokenizer: one id per byte, plus 1 as BOS when asked
      local tok = {
        encode = function(_, s, o)
          local ids = o.bos and { 1 } or {}
          for i = 1, #s do ids[#ids + 1] = s:byte(i) end
          return ids
        end,
      }
      ok, err = pcall(data.from_rows, rows, { tokenizer = tok, bos = true })
      assert.False(ok)
      assert.truthy(err:find("field 'correct': ' x' is 2 tokens, not a single token", 1, true), err)
      rows[1].correct, rows[1].incorrect = "x", "y"
      local ds = data.from_rows(rows, { tokenizer = tok, bos = true })
      assert.same({ 1, 97, 32, 98 }, ds.rows[1].clean)
      assert.same({ 120 }, ds.rows[1].correct)
    end)
  end)

  describe("batches", function()
    it("right-pads with 0 and records lengths", function()
      local ds = data.load_jsonl(tmp_path("good.jsonl"))
      local batches = {}
      for b in ds:batches(2) do batches[#batches + 1] = b end
      assert.equal(2, #batches)
      local b = batches[1]
      assert.equal(2, b.B)
      assert.equal(5, b.P)
      assert.equal(1, b.first)
      local clean, corrupted = {}, {}
      for i = 0, b.B * b.P - 1 do clean[i + 1], corrupted[i + 1] = b.clean[i], b.corrupted[i] end
      assert.same({ 1, 2, 3, 0, 0, 4, 5, 6, 7, 8 }, clean)
      assert.same({ 1, 5, 3, 0, 0, 4, 5, 0, 7, 8 }, corrupted)
      assert.same({ 3, 5 }, { b.lengths[0], b.lengths[1] })
      assert.same({ 3, 5 }, { b.corrupted_lengths[0], b.corrupted_lengths[1] })
      assert.same({ 2, 4 }, { b.last_pos[0], b.last_pos[1] })
      assert.equal(ds.rows[2], b.rows[2])
      local last = batches[2]
      assert.equal(1, last.B)
      assert.equal(1, last.P)
      assert.equal(3, last.first)
      assert.equal(9, last.clean[0])
    end)

    it("keeps both lengths when mismatched rows are allowed", function()
      local ds = data.from_rows({ { clean = { 1, 2 }, corrupted = { 3, 4, 5 }, correct = 1, incorrect = 2 } },
        { allow_mismatched = true })
      local b = ds:batches(4)()
      assert.equal(3, b.P)
      assert.equal(2, b.lengths[0])
      assert.equal(3, b.corrupted_lengths[0])
      assert.equal(0, b.clean[2])
    end)

    it("rejects a bad batch size", function()
      local ds = data.load_jsonl(tmp_path("good.jsonl"))
      assert.has_error(function() ds:batches(0) end)
    end)
  end)

  describe("shuffle and head", function()
    local function many(n)
      local rows = {}
      for i = 1, n do rows[i] = { clean = { i }, corrupted = { i }, correct = 0, incorrect = 1 } end
      return data.from_rows(rows)
    end
    local function order(ds)
      local o = {}
      for i, r in ipairs(ds.rows) do o[i] = r.clean[1] end
      return o
    end

    it("is deterministic for a seed, differs across seeds, and is a permutation", function()
      local ds = many(50)
      local a, b, c = order(ds:shuffle(1)), order(ds:shuffle(1)), order(ds:shuffle(2))
      assert.same(a, b)
      assert.are_not.same(a, c)
      assert.are_not.same(order(ds), a)
      local sorted = { unpack(a) }
      table.sort(sorted)
      assert.same(order(ds), sorted)
      assert.same({ 1, 2, 3 }, { order(ds)[1], order(ds)[2], order(ds)[3] }) -- original untouched
      assert.same(ds:shuffle(1).lines, a) -- line numbers travel with their rows
    end)

    it("gives a fixed order for a fixed seed on every machine", function()
      -- splitmix64 is fully specified; this order was computed independently (Python, 64-bit ints)
      assert.same({ 2, 3, 1, 5, 4 }, order(many(5):shuffle(42)))
    end)

    it("head takes the first n rows", function()
      local ds = many(10)
      assert.equal(3, #ds:head(3))
      assert.same({ 1, 2, 3 }, order(ds:head(3)))
      assert.equal(10, #ds:head(100))
      assert.has_error(function() ds:head(-1) end)
    end)
  end)

  describe("write_jsonl", function()
    it("round-trips and leaves no temporary file", function()
      local ds = data.load_jsonl(tmp_path("good.jsonl"))
      local out = tmp_path("out.jsonl")
      data.write_jsonl(ds, out)
      assert.is_nil(io.open(out .. ".tmp"))
      local back = data.load_jsonl(out)
      assert.same(ds.rows, back.rows)
      local first = io.open(out):read("*l")
      assert.equal('{"clean": [1,2,3], "corrupted": [1,5,3], "correct": [7], "incorrect": [8,9], "note": "a"}', first)
    end)

    it("fails cleanly on an unwritable path or an unencodable row", function()
      local ds = data.load_jsonl(tmp_path("good.jsonl"))
      assert.has_error(function() data.write_jsonl(ds, tmp_path("no/such/dir.jsonl")) end)
      local bad = { { clean = { 1 }, corrupted = { 1 }, f = function() end } }
      local out = tmp_path("bad-out.jsonl")
      local ok, err = pcall(data.write_jsonl, bad, out)
      assert.False(ok)
      assert.truthy(err:find("row 1"), err)
      assert.is_nil(io.open(out))
      assert.is_nil(io.open(out .. ".tmp"))
    end)
  end)

  describe("fixtures", function()
    it("loads gpt2-tiny/data.jsonl into batches of 4", function()
      local path = FIXTURES .. "/gpt2-tiny/data.jsonl"
      local f = io.open(path)
      if not f then
        pending("fixtures absent at " .. FIXTURES .. ": skipping the fixture data test")
        return
      end
      f:close()
      local ds = data.load_jsonl(path, { vocab = 64 })
      assert.equal(8, #ds)
      local n, seen = 0, 0
      for b in ds:batches(4) do
        n = n + 1
        assert.equal(4, b.B)
        for i = 0, b.B - 1 do
          local row = b.rows[i + 1]
          assert.equal(#row.clean, b.lengths[i])
          assert.equal(row.clean[#row.clean], b.clean[i * b.P + b.last_pos[i]])
          for p = b.lengths[i], b.P - 1 do assert.equal(0, b.clean[i * b.P + p]) end
        end
        seen = seen + b.B
      end
      assert.equal(2, n)
      assert.equal(8, seen)
    end)
  end)
end)
