-- Hostile inputs (issue 10): files that are almost right, or built to crash, hang or mislead.
-- Each class is checked through the command line as a user meets it: exit status 1, one line
-- "eapig: ..." naming the file and the field, never a signal or a traceback.
local ffi = require("ffi")
local cjson = require("cjson")
local testing = require("eapig.testing")
local safetensors = require("eapig.formats.safetensors")
local Graph = require("eapig.graph")
local support = require("support.files")
local read, write = support.read, support.write

local shell = require("support.shell")
local quote = shell.quote

-- Runs the command; returns its output (stdout and stderr) and exit status.
local function eapig(args) return shell.run(shell.eapig_line(args), "2>&1 </dev/null") end

-- Exit 1 (not a signal: that would be 128 + n), one line, and every pattern in it.
local function fails(args, ...)
  local out, rc = eapig(args)
  assert.are.equal(1, rc, out)
  assert.truthy(out:match("^eapig: [^\n]+\n$"), "not one error line: " .. out)
  for _, pattern in ipairs({ ... }) do
    assert.truthy(out:find(pattern, 1, true), ("expected '%s' in: %s"):format(pattern, out))
  end
  return out
end

local function le64(n)
  local t = {}
  for i = 1, 8 do
    t[i] = string.char(n % 256)
    n = math.floor(n / 256)
  end
  return table.concat(t)
end

-- A safetensors file split into its header text and data section, and put back together.
local function split(path)
  local data = read(path)
  local n = 0
  for i = 8, 1, -1 do n = n * 256 + data:byte(i) end
  return data:sub(9, 8 + n), data:sub(9 + n)
end

local function join(header, body, length)
  return le64(length or #header) .. header .. body
end

-- Overwrites 4 bytes at offset (0-based) with the float32 bit pattern bits.
local function poke_u32(path, offset, bits)
  local data = read(path)
  local word = ffi.new("uint32_t[1]", bits)
  write(path, data:sub(1, offset) .. ffi.string(word, 4) .. data:sub(offset + 5))
end

local NAN_PAYLOAD = 0xffffffff -- a NaN LuaJIT would read as a tagged value, not a number

describe("hostile inputs", function()
  local dir
  setup(function() dir = testing.tmpdir() end)
  teardown(function() testing.rmtree(dir) end)

  local function tiny_model(name, opts)
    local o = { family = "gpt2", layers = 1, heads = 2, d_model = 8, vocab = 16, n_ctx = 8, dir = dir .. "/" .. name }
    for k, v in pairs(opts or {}) do o[k] = v end
    os.execute("mkdir -p " .. quote(o.dir))
    return testing.random_model(o)
  end

  describe("class 1: non-finite floats", function()
    it("a NaN-payload weight in a safetensors checkpoint is an error naming the tensor", function()
      local m = tiny_model("nanweight")
      local r = safetensors.open(m .. "/model.safetensors")
      local at = r:info("h.0.attn.c_proj.weight").begin + 4 * 5
      r:close()
      poke_u32(m .. "/model.safetensors", at, NAN_PAYLOAD)
      fails({ "info", "--model", m }, m .. "/model.safetensors", "tensor 'h.0.attn.c_proj.weight'",
        "element 5", "is NaN", "weights must be finite")
    end)

    it("a NaN-payload weight is refused in stored mode too (memory-mapped, converted at use)", function()
      local m = tiny_model("nanstored", { dtype = "BF16" })
      local r = safetensors.open(m .. "/model.safetensors")
      local at = r:info("h.0.mlp.c_fc.weight").begin + 2 * 9
      r:close()
      local data = read(m .. "/model.safetensors")
      write(m .. "/model.safetensors", data:sub(1, at) .. "\255\255" .. data:sub(at + 3)) -- BF16 NaN, payload
      local ok, err = pcall(require("eapig.formats.load").load, m, { weights = "stored" })
      assert.is_false(ok)
      assert.truthy(err:find("tensor 'h.0.mlp.c_fc.weight'", 1, true) and err:find("element 9", 1, true) and
        err:find("is NaN or infinite", 1, true), err)
    end)

    it("an infinite F16 weight is an error too", function()
      local m = tiny_model("infweight", { dtype = "F16" })
      local r = safetensors.open(m .. "/model.safetensors")
      local at = r:info("wte.weight").begin
      r:close()
      local data = read(m .. "/model.safetensors")
      write(m .. "/model.safetensors", data:sub(1, at) .. "\0\124" .. data:sub(at + 3)) -- 0x7c00 = +inf
      fails({ "info", "--model", m }, "tensor 'wte.weight'", "element 0", "is infinite")
    end)

    it("a NaN-payload weight in a llama2.c checkpoint is an error naming the tensor and layer", function()
      -- dim 8, hidden 12, 1 layer, 2 heads, 1 kv head, vocab 5 (untied), seq_len 3
      local path = dir .. "/nan.bin"
      write(path, require("support.tiny").llama2c_bytes())
      poke_u32(path, 28 + 4 * (40 + 8 + 64 + 3), NAN_PAYLOAD) -- wk, element 3
      fails({ "info", "--model", path }, path, "tensor 'wk' of layer 0", "element 3", "is NaN")
    end)

    it("a NaN-payload graph score is refused; a plain NaN score is a legitimate one", function()
      local g = Graph.new({ n_layers = 1, n_heads = 2, d_model = 4 })
      for i = 0, g.n_forward * g.n_backward - 1 do
        if g.real[i] ~= 0 then g.scores[i] = i end
      end
      local path = dir .. "/nan-graph.safetensors"
      g:to_safetensors(path)
      local header = split(path)
      poke_u32(path, 8 + #header + 4 * 3, NAN_PAYLOAD) -- scores element 3 (input -> a0.h1<q>)
      fails({ "circuit", "--graph", path, "--topn", "2", "--out", dir .. "/c.json" }, path,
        "tensor 'scores': element 3 is a NaN with a payload")
      assert.is_false(support.exists(dir .. "/c.json"))
      poke_u32(path, 8 + #header + 4 * 3, 0xffc00000) -- the NaN that 0/0 gives
      local out, rc = eapig({ "circuit", "--graph", path, "--topn", "2", "--out", dir .. "/c.json" })
      assert.are.equal(0, rc, out)
      local c = Graph.from_json(dir .. "/c.json")
      local score = c.scores[3]
      assert.is_true(score ~= score)
      assert.are.equal(0, c.in_graph[3]) -- NaN ranks below every score
    end)
  end)

  describe("class 2: structure that is almost right", function()
    local function st_file(name)
      local path = dir .. "/" .. name .. ".safetensors"
      safetensors.write(path, {
        { name = "a", dtype = "F32", shape = { 2 }, data = { 1, 2 } },
        { name = "b", dtype = "F32", shape = { 3 }, data = { 3, 4, 5 } },
      })
      return path
    end
    local function open_error(path)
      local ok, err = pcall(safetensors.open, path)
      assert.is_false(ok)
      assert.truthy(err:find(path, 1, true), err)
      return err
    end

    it("a header length one byte short, or one long, is an error", function()
      local path = st_file("short")
      local header, body = split(path)
      header = header:gsub("%s+$", "") .. "    " -- padding, so the shorter header is still JSON
      write(path, join(header, body, #header - 1))
      assert.truthy(open_error(path):find("1 bytes after the last tensor's data", 1, true))
      write(path, join(header, body, #header + 1))
      assert.truthy(open_error(path):find("header holds a NUL byte", 1, true)) -- the data's first byte
    end)

    it("holes, overlaps and trailing bytes in the data section are errors naming the tensor", function()
      local path = st_file("tiling")
      local header, body = split(path)
      local hole = header:gsub("%[8, ?20%]", "[12,24]")
      write(path, join(hole, body .. "\0\0\0\0"))
      local err = open_error(path)
      assert.truthy(err:find("tensor 'b'", 1, true) and err:find("leaves bytes [8, 12)", 1, true), err)
      write(path, join(header, body .. "x"))
      assert.truthy(open_error(path):find("1 bytes after the last tensor's data", 1, true))
      local overlap = header:gsub("%[8, ?20%]", "[4,16]")
      write(path, join(overlap, body:sub(1, 16)))
      assert.truthy(open_error(path):find("overlap in field 'data_offsets'", 1, true))
    end)

    it("fractional, negative and huge offsets and dimensions are errors naming the field", function()
      local path = st_file("fraction")
      local header, body = split(path)
      for _, case in ipairs({
        { "%[8, ?20%]", "[8.5,20]", "data_offsets" }, { "%[8, ?20%]", "[8,1e300]", "data_offsets" },
        { "%[0, ?8%]", "[-0,8]", nil }, { "%[3%]", "[1.5,2]", "shape" }, { "%[3%]", "[-3]", "shape" },
      }) do
        local bad = header:gsub(case[1], case[2], 1)
        write(path, join(bad, body))
        if case[3] then
          assert.truthy(open_error(path):find(case[3], 1, true))
        else
          assert.truthy(pcall(safetensors.open, path)) -- -0 is a fine zero
        end
      end
    end)

    it("a NUL byte in a safetensors header or a JSON file is an error naming the file", function()
      local path = st_file("nul")
      local header, body = split(path)
      write(path, join(header:sub(1, 3) .. "\0" .. header:sub(5), body))
      assert.truthy(open_error(path):find("NUL byte at byte 11", 1, true))
      local m = tiny_model("nulcfg")
      local cfg = read(m .. "/config.json")
      write(m .. "/config.json", cfg:sub(1, 10) .. "\0" .. cfg:sub(11))
      fails({ "info", "--model", m }, m .. "/config.json", "NUL byte")
    end)

    it("a float weight relabelled I32 is an error naming the tensor and the field", function()
      local m = tiny_model("i32")
      local header, body = split(m .. "/model.safetensors")
      local bad = header:gsub('("wte.weight":{"dtype":)"F32"', '%1"I32"')
      assert.are_not.equal(header, bad)
      write(m .. "/model.safetensors", join(bad, body))
      fails({ "info", "--model", m }, "tensor 'wte.weight'", "field 'dtype' is I32")
    end)

    it("config values that overflow or underflow float32 are errors naming the field", function()
      for _, case in ipairs({ { 1e300, "overflows float32" }, { 1e-50, "underflows float32" },
                              { -1, "must be a positive number" } }) do
        local m = tiny_model("eps" .. tostring(case[1]))
        local cfg = cjson.decode(read(m .. "/config.json"))
        cfg.layer_norm_epsilon = case[1]
        write(m .. "/config.json", cjson.encode(cfg))
        fails({ "info", "--model", m }, m .. "/config.json", "field 'layer_norm_epsilon'", case[2])
      end
    end)

    it("a graph file whose level or cfg disagrees with its tensors is an error", function()
      local g = Graph.new({ n_layers = 1, n_heads = 2, d_model = 4 }, { level = "neuron" })
      local path = dir .. "/level.safetensors"
      g:to_safetensors(path)
      local header, body = split(path)
      local as_edge = header:gsub('"level": "neuron"', '"level": "edge"')
      write(path, join(as_edge, body))
      fails({ "circuit", "--graph", path, "--topn", "1", "--out", dir .. "/x.json" },
        "does not belong to a edge-level graph")
      local wider = header:gsub('\\"d_model\\": 4', '\\"d_model\\": 5')
      write(path, join(wider, body))
      fails({ "circuit", "--graph", path, "--topn", "1", "--out", dir .. "/x.json" },
        "tensor 'neuron_scores' has shape [4, 4], expected [4, 5]")
      local bogus = header:gsub('"level": "neuron"', '"level": "circuit"')
      write(path, join(bogus, body))
      fails({ "circuit", "--graph", path, "--topn", "1", "--out", dir .. "/x.json" }, "unknown level 'circuit'")
    end)
  end)

  describe("class 4: --out never replaces what is not a regular file", function()
    local files = require("eapig.formats.files")
    local graph_path
    before_each(function()
      graph_path = dir .. "/scored.json"
      if not support.exists(graph_path) then
        local g = Graph.new({ n_layers = 1, n_heads = 2, d_model = 4 })
        for i = 0, g.n_forward * g.n_backward - 1 do
          if g.real[i] ~= 0 then g.scores[i] = i end
        end
        g:to_json(graph_path)
      end
    end)
    local function circuit(out)
      return eapig({ "circuit", "--graph", graph_path, "--topn", "2", "--out", out })
    end
    local function listing(d)
      local p = io.popen("ls -A " .. quote(d))
      local text = p:read("*a")
      p:close()
      return text
    end

    it("a symlink is followed: its target is written, the link stays", function()
      local target, link = dir .. "/real.json", dir .. "/link.json"
      write(target, "old")
      os.execute("ln -s real.json " .. quote(link))
      local out, rc = circuit(link)
      assert.are.equal(0, rc, out)
      assert.are.equal("link", files.kind(link, false))
      assert.truthy(read(target):find('"edges"', 1, true))
      os.execute("ln -s missing.json " .. quote(dir .. "/dangling.json"))
      fails({ "circuit", "--graph", graph_path, "--topn", "2", "--out", dir .. "/dangling.json" },
        "is a symlink to nothing")
      assert.are.equal("link", files.kind(dir .. "/dangling.json", false))
    end)

    it("a FIFO is written through and stays a FIFO", function()
      local fifo, got = dir .. "/out-fifo.json", dir .. "/from-fifo.json"
      assert.truthy(os.execute("mkfifo " .. quote(fifo)))
      -- a reader first (a FIFO without one blocks its writer, as it does for any program)
      local p = io.popen(("timeout 120 cat %s > %s & luajit scripts/eapig circuit --graph %s --topn 2 --out %s 2>&1; " ..
        'echo "rc=$?"; wait'):format(quote(fifo), quote(got), quote(graph_path), quote(fifo)))
      local out = p:read("*a")
      p:close()
      assert.truthy(out:find("rc=0", 1, true), out)
      assert.are.equal("fifo", files.kind(fifo, false))
      assert.truthy(read(got):find('"edges"', 1, true))
    end)

    it("a character device is written through and stays a device", function()
      local dev = dir .. "/null.json"
      local made = os.execute("mknod " .. quote(dev) .. " c 1 3 2>/dev/null")
      if not (made == 0 or made == true) then
        pending("mknod needs root: character-device case not run")
        return
      end
      local out, rc = circuit(dev)
      assert.are.equal(0, rc, out)
      assert.are.equal("char", files.kind(dev, false))
      assert.are.equal("", read(dev))
    end)

    it("a folder or a block device is refused; nothing is left beside it", function()
      os.execute("mkdir -p " .. quote(dir .. "/sub.json"))
      fails({ "circuit", "--graph", graph_path, "--topn", "2", "--out", dir .. "/sub.json" }, "it is a folder")
      assert.are.equal("", listing(dir .. "/sub.json"))
    end)

    it("a killed writer's temporary file is removed by the next write; a live one's stays", function()
      local out_dir = dir .. "/stale"
      os.execute("mkdir -p " .. quote(out_dir))
      local dead = out_dir .. "/.c.json.eapig-tmp-2147483646-1" -- no such process
      local live = out_dir .. "/.c.json.eapig-tmp-1-1"            -- init runs
      write(dead, "partial")
      write(live, "partial")
      local out, rc = circuit(out_dir .. "/c.json")
      assert.are.equal(0, rc, out)
      assert.is_false(support.exists(dead))
      assert.is_true(support.exists(live))
      assert.are.equal(".c.json.eapig-tmp-1-1\nc.json\n", listing(out_dir))
    end)

    it("two writers in one process never share a temporary name", function()
      assert.are_not.equal(files.temp_name(dir .. "/x"), files.temp_name(dir .. "/x"))
      assert.truthy(files.temp_name(dir .. "/x"):find(dir .. "/.x.eapig-tmp-", 1, true))
    end)
  end)

  describe("class 3: small inputs that ask for huge work", function()
    it("a graph whose cfg is far bigger than its file, or than any model, is refused at once", function()
      local path = dir .. "/huge-cfg.json"
      write(path, '{"cfg": {"n_layers": 5000, "n_heads": 1, "d_model": 8}, "nodes": {}, "edges": {}}')
      for _, cmd in ipairs({ { "circuit", "--graph", path, "--topn", "1", "--out", dir .. "/o.json" },
                             { "draw", "--graph", path, "--out", dir .. "/o.svg" } }) do
        fails(cmd, path, "cfg.n_layers 5000 and cfg.n_heads 1 give a 10001 x 20001 edge matrix")
      end
      assert.is_false(support.exists(dir .. "/o.json"))
      local ok, err = pcall(Graph.new, { n_layers = 5000, n_heads = 1, d_model = 8 })
      assert.is_false(ok)
      assert.truthy(err:find("cfg.n_layers is 5000, more than the largest a model may have (4096)", 1, true), err)
      ok, err = pcall(Graph.new, { n_layers = 4096, n_heads = 64, d_model = 8 })
      assert.is_false(ok)
      assert.truthy(err:find("more than 268435456 entries", 1, true), err)
    end)

    it("step and thread counts are bounded", function()
      fails({ "attribute", "--model", "m", "--data", "d", "--ig-steps", "1e9", "--out", dir .. "/g.json" },
        "--ig-steps must be <= 10000, got 1e9")
      fails({ "train", "--task", "induction", "--out", dir .. "/t", "--threads", "1e6" },
        "--threads must be <= 1024, got 1e6")
      -- the dimensions of a new model: the core's own limits (core/model.c), as option errors
      fails({ "train", "--task", "induction", "--out", dir .. "/t", "--layers", "100000" },
        "--layers must be <= 4096, got 100000")
      fails({ "train", "--task", "induction", "--out", dir .. "/t", "--d-mlp", "1e9" },
        "--d-mlp must be <= 4194304, got 1e9")
      -- a step's logits beyond one Lua buffer (2 GiB), refused before any work
      fails({ "train", "--task", "induction", "--out", dir .. "/t", "--steps", "1", "--batch-size", "65536",
        "--ctx", "150", "--vocab", "156", "--quiet" },
        "train: the logits of a step (--batch-size 65536 x 150 positions x vocab 156): 1533542400 elements of 4 " ..
        "bytes (5.7 GiB) are more than one buffer may hold (2 GiB)")
      assert.is_nil(io.open(dir .. "/t/model.safetensors", "rb"))
    end)
  end)

  describe("class 5: sizes beyond one buffer name the field, not LuaJIT", function()
    -- A neuron-level graph keeps NF x d_model scores and flags: a cfg that declares d_model 2^20
    -- with 512 layers asks for 2^30 of each (LuaJIT would raise "size of C type is unknown or too
    -- large" at an internal path). Its edge matrix is small, so only the neuron bound stops it.
    local BIG = { n_layers = 512, n_heads = 1, d_model = 1048576 }
    local function no_partial_output(out)
      assert.is_nil(io.open(out, "rb"), "an output file was left: " .. out)
      local p = io.popen("ls -a " .. quote(dir))
      local listing = p:read("*a")
      p:close()
      assert.is_nil(listing:find("eapig-tmp", 1, true), "a temporary file was left: " .. listing)
    end

    it("a graph JSON whose neuron matrix declares 2^30 entries", function()
      local path = write(dir .. "/neuron-big.json", cjson.encode({ cfg = BIG,
        nodes = { input = { ["in_graph"] = true, neurons = {} } }, edges = {} }))
      local out = dir .. "/neuron-big-circuit.json"
      local msg = fails({ "circuit", "--graph", path, "--topn", "1", "--out", out }, path,
        "cfg.d_model 1048576 give a 1025 x 1048576 neuron matrix, more than 268435456 entries")
      assert.is_nil(msg:find("size of C type", 1, true), msg)
      assert.is_nil(msg:find("%.lua:%d"), msg)
      no_partial_output(out)
    end)

    it("a graph safetensors file whose neuron tensors declare 2^30 elements", function()
      local path = dir .. "/neuron-big.safetensors"
      local NF = 1 + 512 * 2
      safetensors.write(path, {
        { name = "nodes_in_graph", dtype = "U8", shape = { NF }, data = function(buf, n) ffi.fill(buf, n) end },
      }, { format = "eapig-graph", level = "neuron", cfg = cjson.encode(BIG) })
      local out = dir .. "/neuron-big-circuit.safetensors"
      local msg = fails({ "circuit", "--graph", path, "--topn", "1", "--out", out }, path,
        "cfg.d_model 1048576 give a 1025 x 1048576 neuron matrix, more than 268435456 entries")
      assert.is_nil(msg:find("size of C type", 1, true), msg)
      no_partial_output(out)
    end)

    it("a batch padded beyond one buffer is refused, saying to use a smaller batch", function()
      local long = {}
      for i = 1, 40000 do long[i] = 1 + i % 7 end
      local rows = { { clean = long, corrupted = long, correct = 1, incorrect = 2 } }
      for i = 2, 14000 do rows[i] = { clean = { 1 }, corrupted = { 2 }, correct = 1, incorrect = 2 } end
      local ds = require("eapig.data").from_rows(rows)
      local ok, err = pcall(function() return ds:batches(14000)() end)
      assert.is_false(ok)
      assert.truthy(err:find("Dataset:batches: rows 1..14000 padded to the longest (40000 tokens) need 560000000 " ..
        "token ids, more than one buffer may hold (2 GiB): use a smaller batch size", 1, true), err)
      assert.equal(40000, ds:batches(1)().P)
    end)

    it("a buffer request beyond 2 GiB is refused with what it was for", function()
      local core = require("eapig.core")
      local ok, err = pcall(core.floats, 2 ^ 40, "neuron scores of 'F'")
      assert.is_false(ok)
      assert.truthy(err:find("neuron scores of 'F': 1099511627776 elements of 4 bytes (4096.0 GiB)", 1, true), err)
      ok, err = pcall(core.bytes, -1)
      assert.is_false(ok)
      assert.truthy(err:find("more than one buffer may hold (2 GiB)", 1, true), err)
      assert.equal(16, ffi.sizeof(core.floats(4)))
    end)
  end)

  describe("class 3: inputs that would block", function()
    it("a FIFO given as a model, a graph or data is refused at once", function()
      local fifo = dir .. "/in.fifo"
      assert.truthy(os.execute("mkfifo " .. quote(fifo)))
      fails({ "info", "--model", fifo }, fifo, "not a regular file")
      fails({ "circuit", "--graph", fifo, "--topn", "1", "--out", dir .. "/o.json" }, fifo, "is a FIFO")
      local ok, err = pcall(require("eapig.data").load_jsonl, fifo)
      assert.is_false(ok)
      assert.truthy(err:find("is a FIFO, not a regular file", 1, true), err)
    end)
  end)
end)
