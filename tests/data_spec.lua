-- Datasets: JSONL and CSV loading and their error messages, padded batches, deterministic
-- shuffling, writing back. Files are written to a temporary directory; the fixtures' data.jsonl is read when
-- ../shared/fixtures is present.
local data = require("eapig.data")
local files = require("support.files")
local testing = require("eapig.testing")

local FIXTURES = os.getenv("EAPIG_FIXTURES") or "../shared/fixtures"

local tmpdir
local function tmp_path(name) return tmpdir .. "/" .. name end

local function write_file(name, text) return files.write(tmp_path(name), text) end

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
  setup(function() tmpdir = testing.tmpdir() end)
  teardown(function() testing.rmtree(tmpdir) end)

  it("defines no globals", function() files.assert_no_globals("eapig.data") end)

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
      assert.are.same({}, files.temps_beside(out))
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
      assert.are.same({}, files.temps_beside(out))
    end)
  end)

  describe("load_csv", function()
    -- a stand-in tokenizer: one id per byte, BOS = 1 when asked; decode reverses it
    local tok = {
      vocab_size = 256, bos_id = 1,
      encode = function(_, s, o)
        local ids = (o and o.bos) and { 1 } or {}
        for i = 1, #s do ids[#ids + 1] = s:byte(i) end
        return ids
      end,
      decode = function(_, ids)
        local out = {}
        for i, id in ipairs(ids) do out[i] = string.char(id) end
        return table.concat(out)
      end,
    }
    local function csv_error(name, text, opts)
      local ok, err = pcall(data.load_csv, write_file(name, text), opts)
      assert.False(ok, "expected an error")
      return err
    end

    it("reads EAP-IG's greater-than layout: text tokenized, the label kept", function()
      local path = write_file("gt.csv", "clean,corrupted,label\n"
        .. "The war 1732 to 17,The war 1701 to 17,32\n"
        .. '"The war, 1756 to 17","The war, 1701 to 17",56\n')
      local ds = data.load_csv(path, { tokenizer = tok })
      assert.equal(2, #ds)
      assert.same(tok:encode("The war 1732 to 17"), ds[1].clean)
      assert.equal("The war 1732 to 17", ds[1].clean_text)
      assert.equal("The war, 1701 to 17", ds[2].corrupted_text)
      assert.equal(32, ds[1].label)
      assert.is_nil(ds[1].correct)
      assert.same({ 2, 3 }, ds.lines)
      -- the model's BOS convention
      ds = data.load_csv(path, { tokenizer = tok, bos = true })
      assert.equal(1, ds[1].clean[1])
      assert.equal(#"The war 1732 to 17" + 1, #ds[1].clean)
      -- constant fields, e.g. the tokenizer's year tokens
      ds = data.load_csv(path, { tokenizer = tok, fields = { year_ids = { 48, 49 } } })
      assert.same({ 48, 49 }, ds[2].year_ids)
    end)

    it("reads EAP-IG's ioi layout: pandas' index, correct_idx / incorrect_idx, other columns", function()
      local path = write_file("ioi.csv", ",clean,corrupted,corrupted_hard,correct_idx,incorrect_idx\n"
        .. '470,"Then, Ann and Bo went. Bo gave to","Then, Ann and Bo went. Cy gave to","Then, Ann and Bo went. Ann gave to",65,66\n'
        .. '184,"When Ann and Bo left, Ann gave to","When Ann and Bo left, Dan gave to","x",[66],"[65, 67]"\n')
      local ds = data.load_csv(path, { tokenizer = tok })
      assert.same({ 65 }, ds[1].correct)
      assert.same({ 66 }, ds[2].correct)
      assert.same({ 65, 67 }, ds[2].incorrect)
      assert.equal("Then, Ann and Bo went. Ann gave to", ds[1].corrupted_hard)
      assert.is_nil(ds[1][""])
      for k in pairs(ds[1]) do assert.are_not.equal("", k) end
    end)

    it("text labels must be one token: the error names file, row and column", function()
      local path = write_file("label.csv", "clean,corrupted,correct,incorrect\nab,cd,x,y\n")
      local ds = data.load_csv(path, { tokenizer = tok })
      assert.same({ 120 }, ds[1].correct)
      assert.equal("x", ds[1].correct_text)
      local err = csv_error("labels.csv", "clean,corrupted,correct,incorrect\nab,cd,x,y\nab,cd,x,yz\n", { tokenizer = tok })
      assert.equal(tmp_path("labels.csv") .. ": row 2 (line 3): column 'incorrect': 'yz' is 2 tokens, not a single token", err)
      err = csv_error("idx.csv", "clean,corrupted,correct_idx,incorrect_idx\nab,cd,5,seven\n", { tokenizer = tok })
      assert.equal(tmp_path("idx.csv") .. ": row 1 (line 2): column 'incorrect_idx': 'seven' is not a token id or a JSON list of ids", err)
      err = csv_error("range.csv", "clean,corrupted,correct_idx,incorrect_idx\nab,cd,5,300\n", { tokenizer = tok, vocab = 256 })
      assert.truthy(err:find("row 1 (line 2): column 'incorrect_idx': token id 300 (entry 1) outside [0, 256)", 1, true), err)
    end)

    it("a missing column, an unterminated quote, an empty field, text without a tokenizer", function()
      local err = csv_error("nocol.csv", "clean,label\na,1\n", { tokenizer = tok })
      assert.equal(tmp_path("nocol.csv") .. ": header: no column 'corrupted' or 'corrupted_ids' (columns: clean, label)", err)
      err = csv_error("half.csv", "clean,corrupted,correct_idx\na,b,1\n", { tokenizer = tok })
      assert.truthy(err:find("a 'correct_idx' column needs an 'incorrect_idx' (or 'incorrect') column", 1, true), err)
      err = csv_error("quote.csv", 'clean,corrupted\na,b\n"c,d\n', { tokenizer = tok })
      assert.equal(tmp_path("quote.csv") .. ": row 2 (line 3): unterminated quoted field (column 1)", err)
      err = csv_error("empty.csv", "clean,corrupted\na,\n", { tokenizer = tok })
      assert.equal(tmp_path("empty.csv") .. ": row 1 (line 2): column 'corrupted' is empty", err)
      err = csv_error("notok.csv", "clean,corrupted\na,b\n")
      assert.equal(tmp_path("notok.csv") .. ": row 1 (line 2): column 'clean': is text; pass opts.tokenizer to tokenize it", err)
      err = csv_error("norows.csv", "clean,corrupted\n", { tokenizer = tok })
      assert.equal(tmp_path("norows.csv") .. ": no rows", err)
    end)

    it("mismatched token counts: an error naming the row, or dropped with a count", function()
      local text = "clean,corrupted,label\nab,cd,1\nabc,de,2\nxy,zw,3\n"
      local err = csv_error("mm.csv", text, { tokenizer = tok })
      assert.truthy(err:find(tmp_path("mm.csv") .. ": row 2 (line 3): clean has 3 tokens but corrupted has 2", 1, true), err)
      local ds = data.load_csv(tmp_path("mm.csv"), { tokenizer = tok, drop_mismatched = true })
      assert.equal(2, #ds)
      assert.equal(1, ds.dropped)
      assert.equal(3, ds[2].label)
      assert.truthy(tostring(ds):find("1 dropped", 1, true))
    end)

    it("ids columns give exact ids and win over the text", function()
      local path = write_file("ids.csv", 'clean,corrupted,clean_ids,corrupted_ids,correct_idx,incorrect_idx\n'
        .. 'shown,text,"[1, 5, 6]","[1, 7, 6]",9,10\n')
      local ds = data.load_csv(path) -- no tokenizer needed
      assert.same({ 1, 5, 6 }, ds[1].clean)
      assert.same({ 1, 7, 6 }, ds[1].corrupted)
      assert.equal("shown", ds[1].clean_display)
      assert.is_nil(ds[1].clean_text)
    end)
  end)

  describe("write_csv", function()
    local tok = {
      encode = function(_, s)
        local ids = {}
        for i = 1, #s do ids[#ids + 1] = s:byte(i) end
        return ids
      end,
      decode = function(_, ids)
        local out = {}
        for i, id in ipairs(ids) do out[i] = string.char(id) end
        return table.concat(out)
      end,
    }

    it("text rows round-trip through EAP-IG's layout", function()
      local rows = { { clean = "a, b", corrupted = 'c "d', correct = "x", incorrect = "y", label = 3, note = "n" },
        { clean = "e\nf", corrupted = "gh\n", correct = "z", incorrect = "w", label = 4, year_ids = { 1, 2 } } }
      local ds = data.from_rows(rows, { tokenizer = tok })
      local path = tmp_path("rt.csv")
      data.write_csv(ds, path)
      assert.are.same({}, files.temps_beside(path))
      local header = io.open(path):read("*l")
      assert.equal("clean,corrupted,correct_idx,incorrect_idx,correct,incorrect,label,note,year_ids", header)
      local back = data.load_csv(path, { tokenizer = tok })
      assert.same(ds.rows, back.rows)
      data.write_csv(ds, path, { omit = { "year_ids", "note" }, crlf = true })
      assert.equal("clean,corrupted,correct_idx,incorrect_idx,correct,incorrect,label\r",
        io.open(path):read("*l"))
    end)

    it("rows with only ids get ids columns and decoded or JSON text", function()
      local ds = data.from_rows({ { clean = { 104, 105 }, corrupted = { 104, 111 }, correct = { 33 }, incorrect = { 63, 46 } } })
      local path = tmp_path("ids-out.csv")
      data.write_csv(ds, path)
      local f = io.open(path)
      assert.equal("clean,corrupted,clean_ids,corrupted_ids,correct_idx,incorrect_idx", f:read("*l"))
      assert.equal('"[104, 105]","[104, 111]","[104, 105]","[104, 111]",33,"[63, 46]"', f:read("*l"))
      f:close()
      assert.same(ds.rows, data.load_csv(path).rows)
      data.write_csv(ds, path, { tokenizer = tok })
      f = io.open(path)
      f:read("*l")
      assert.equal('hi,ho,"[104, 105]","[104, 111]",33,"[63, 46]"', f:read("*l"))
      f:close()
      local back = data.load_csv(path)
      assert.same(ds[1].clean, back[1].clean)
      assert.equal("hi", back[1].clean_display)
      data.write_csv(back, path, { ids = false })
      assert.equal("clean,corrupted,correct_idx,incorrect_idx", io.open(path):read("*l"))
    end)

    it("fails cleanly on an unwritable path or an unwritable field", function()
      local ds = data.from_rows({ { clean = { 1 }, corrupted = { 2 }, correct = 1, incorrect = 2 } })
      local ok, err = pcall(data.write_csv, ds, tmp_path("no/such/dir.csv"))
      assert.False(ok)
      assert.truthy(err:find("no/such/dir.csv", 1, true), err)
      ds[1].f = function() end -- functions are skipped, other odd values are errors
      data.write_csv(ds, tmp_path("f.csv"))
      ds[1].f = coroutine.create(function() end)
      ok, err = pcall(data.write_csv, ds, tmp_path("co.csv"))
      assert.False(ok)
      assert.truthy(err:find("row 1: field 'f' is a thread", 1, true), err)
      assert.is_nil(io.open(tmp_path("co.csv")))
      assert.are.same({}, files.temps_beside(tmp_path("co.csv")))
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
