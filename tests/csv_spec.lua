-- CSV reading and writing (RFC 4180 as pandas reads it): quoted fields with commas, doubled quotes
-- and line breaks, CRLF, byte-order marks and blank lines; errors that name the file, row and
-- line; writing through a temporary file; round trips of arbitrary fields.
local csv = require("eapig.formats.csv")
local files = require("support.files")
local testing = require("eapig.testing")

local tmpdir
local function tmp_path(name) return tmpdir .. "/" .. name end

local function parse_error(text)
  local ok, err = pcall(csv.parse, text, { source = "f.csv" })
  assert.False(ok, "expected an error")
  return err
end

describe("csv", function()
  setup(function() tmpdir = testing.tmpdir() end)
  teardown(function() testing.rmtree(tmpdir) end)

  it("defines no globals", function() files.assert_no_globals("eapig.formats.csv") end)

  describe("parse", function()
    it("reads a header and rows", function()
      local t = csv.parse("clean,corrupted,label\nThe war,The peace,32\na,b,1\n")
      assert.same({ "clean", "corrupted", "label" }, t.header)
      assert.same({ { "The war", "The peace", "32" }, { "a", "b", "1" } }, t.rows)
      assert.same({ 2, 3 }, t.lines)
    end)

    it("quoted fields hold commas, doubled quotes and line breaks", function()
      local t = csv.parse('a,b\n"x, y","say ""hi"""\n"two\nlines","cr\r\nlf"\n"",plain\n')
      assert.same({ "x, y", 'say "hi"' }, t.rows[1])
      assert.same({ "two\nlines", "cr\r\nlf" }, t.rows[2])
      assert.same({ "", "plain" }, t.rows[3])
      assert.same({ 2, 3, 6 }, t.lines) -- a row's line is where it starts
    end)

    it("CRLF, a byte-order mark, blank lines, no final newline", function()
      local t = csv.parse("\239\187\191a,b\r\n1,2\r\n\r\n\n3,4")
      assert.same({ "a", "b" }, t.header)
      assert.same({ { "1", "2" }, { "3", "4" } }, t.rows)
      assert.same({ 2, 5 }, t.lines)
    end)

    it("empty fields, a trailing comma and a quote inside an unquoted field", function()
      local t = csv.parse('a,b,c\n,,\n1,2,\n5\'3",x,y\n')
      assert.same({ "", "", "" }, t.rows[1])
      assert.same({ "1", "2", "" }, t.rows[2])
      assert.same({ '5\'3"', "x", "y" }, t.rows[3])
      t = csv.parse("a,b\n1,")
      assert.same({ "1", "" }, t.rows[1])
    end)

    it("keeps spaces and an unnamed (pandas index) column", function()
      local t = csv.parse(",clean, x \n0, a ,b\n")
      assert.same({ "", "clean", " x " }, t.header)
      assert.same({ { clean = " a ", [" x "] = "b" } }, csv.records(t))
    end)

    it("an unterminated quote names the file, row, line and column", function()
      assert.equal("f.csv: row 2 (line 3): unterminated quoted field (column 2)",
        parse_error('a,b\n1,2\n3,"open\n4,5\n'))
      assert.equal("f.csv: header (line 1): unterminated quoted field (column 1)", parse_error('"a,b\n'))
    end)

    it("a wrong field count names the row and the line", function()
      assert.equal("f.csv: row 2 (line 4): 3 fields, the header has 2", parse_error('a,b\n"1\n",2\n3,4,5\n'))
      assert.equal("f.csv: row 1 (line 2): 1 field, the header has 2", parse_error("a,b\n1\n"))
    end)

    it("text after a closing quote, duplicate columns, an empty file", function()
      local err = parse_error('a,b\n"1"x,2\n')
      assert.truthy(err:find("f.csv: row 1 (line 2): column 1: 'x' after a closing quote", 1, true), err)
      assert.equal("f.csv: header: column 'a' appears twice (columns 1 and 3)", parse_error("a,b,a\n"))
      assert.equal("f.csv: no header row (empty file)", parse_error(""))
      assert.equal("f.csv: no header row (empty file)", parse_error("\n\n"))
    end)

    it("read names a missing file", function()
      local ok, err = pcall(csv.read, tmp_path("absent.csv"))
      assert.False(ok)
      assert.truthy(err:find("absent.csv", 1, true), err)
    end)
  end)

  describe("write", function()
    it("quotes what needs quoting", function()
      assert.equal("plain", csv.field("plain"))
      assert.equal('"a,b"', csv.field("a,b"))
      assert.equal('"say ""hi"""', csv.field('say "hi"'))
      assert.equal('"x\ny"', csv.field("x\ny"))
      assert.equal('" Mary"', csv.field(" Mary"))
      assert.equal("32", csv.field(32))
      assert.equal("0.5", csv.field(0.5))
      assert.equal("", csv.field(nil))
      assert.equal("True", csv.field(true))
    end)

    it("encodes list rows and keyed rows, LF or CRLF", function()
      local text = csv.encode({ "a", "b" }, { { 1, "x,y" }, { a = "p", b = 'q"' } })
      assert.equal('a,b\n1,"x,y"\np,"q"""\n', text)
      assert.equal("a\r\n1\r\n", csv.encode({ "a" }, { { 1 } }, { crlf = true }))
      local ok, err = pcall(csv.encode, { "a" }, { { {} } })
      assert.False(ok)
      assert.truthy(err:find("row 1, column 'a'", 1, true), err)
    end)

    it("round-trips arbitrary fields", function()
      local rng = require("eapig.tasks").rng(7)
      local alphabet = { "a", "b", ",", '"', "\n", "\r", " ", "\r\n", "é", "''" }
      for _ = 1, 50 do
        local ncol = rng:int(1, 4)
        local header, rows = {}, {}
        for c = 1, ncol do header[c] = "c" .. c end
        for r = 1, rng:int(1, 5) do
          local row = {}
          for c = 1, ncol do
            local parts = {}
            for i = 1, rng:int(0, 6) do parts[i] = rng:pick(alphabet) end
            row[c] = table.concat(parts)
          end
          rows[r] = row
        end
        -- a row of nothing but one empty field reads back as a blank line; give it content
        if ncol == 1 then for _, row in ipairs(rows) do row[1] = "v" .. row[1] end end
        local t = csv.parse(csv.encode(header, rows, { crlf = rng:below(2) == 1 }))
        assert.same(header, t.header)
        assert.same(rows, t.rows)
      end
    end)

    it("writes through a temporary file and fails cleanly", function()
      local path = tmp_path("out.csv")
      csv.write(path, { "clean", "n" }, { { "a, b", 1 } })
      local f = assert(io.open(path, "rb"))
      assert.equal('clean,n\n"a, b",1\n', f:read("*a"))
      f:close()
      assert.are.same({}, files.temps_beside(path))
      local ok, err = pcall(csv.write, tmp_path("no/such/dir.csv"), { "a" }, { { 1 } })
      assert.False(ok)
      assert.truthy(err:find("no/such/dir.csv", 1, true), err)
      ok, err = pcall(csv.write, tmp_path("bad.csv"), { "a" }, { { function() end } })
      assert.False(ok)
      assert.truthy(err:find("bad.csv", 1, true) and err:find("row 1", 1, true), err)
      assert.is_nil(io.open(tmp_path("bad.csv"), "rb"))
      assert.are.same({}, files.temps_beside(tmp_path("bad.csv")))
    end)
  end)
end)
