-- The `eapig` command, run as a user runs it: `luajit scripts/eapig ...` in a subprocess, on the
-- gpt2-tiny fixture model and data (skipped when ../shared is absent) and on files written to a
-- temporary folder. Checks exit statuses, that every error is one line "eapig: ...", and that a
-- failed command leaves no --out behind.
local cjson = require("cjson")

local FIXTURE = "../shared/fixtures/gpt2-tiny"
local MODEL, DATA = FIXTURE .. "/model", FIXTURE .. "/data.jsonl"

local files = require("support.files")
local testing = require("eapig.testing")
local exists, read, write = files.exists, files.read, files.write

local shell = require("support.shell")
local quote = shell.quote

-- Runs `luajit scripts/eapig` with the given arguments (a list, quoted here) and optional stdin
-- text; returns stdout and stderr together, and the exit status.
local function eapig(args, stdin)
  local line, path = shell.eapig_line(args), nil
  if stdin then
    path = os.tmpname()
    write(path, stdin)
    line = line .. " < " .. quote(path)
  end
  local out, rc = shell.run(line)
  if path then os.remove(path) end
  return out, rc
end

-- A failed command: status 1 and exactly one line "eapig: <message>" (no traceback).
local function assert_fails(out, rc, pattern)
  assert.are.equal(1, rc, out)
  assert.truthy(out:match("^eapig: [^\n]+\n$"), "not one error line: " .. out)
  assert.is_nil(out:find("traceback"), out)
  if pattern then assert.truthy(out:find(pattern), ("expected '%s' in: %s"):format(pattern, out)) end
end

local function fixtures_present()
  return exists(MODEL .. "/config.json") and exists(DATA)
end


describe("eapig command line", function()
  local dir

  setup(function() dir = testing.tmpdir() end)
  teardown(function() testing.rmtree(dir) end)

  describe("helpers (in process)", function()
    it("define no globals", function()
      local before = {}
      for k in pairs(_G) do before[k] = true end
      for _, name in ipairs({ "init", "info", "generate", "attribute", "circuit", "evaluate", "draw", "run",
        "repl" }) do
        require(name == "init" and "eapig.cli" or "eapig.cli." .. name)
      end
      for k in pairs(_G) do assert.is_true(before[k], "new global: " .. tostring(k)) end
    end)

    it("make one line of any error", function()
      local cli = require("eapig.cli")
      assert.are.equal("boom", cli.one_line("/usr/share/lua/5.1/eapig/graph.lua:12: boom"))
      -- every folder of modules (apps/ and formats/ too), but not a user's own script
      assert.are.equal("boom", cli.one_line("/x/lua/eapig/apps/train.lua:104: boom"))
      assert.are.equal("boom", cli.one_line("./lua/eapig/formats/load.lua:9: boom"))
      assert.are.equal("my/task.lua:3: boom", cli.one_line("my/task.lua:3: boom"))
      assert.are.equal("unknown option '--x'; Did you mean '--y'?",
        cli.one_line("unknown option '--x'\nDid you mean '--y'?\noriginal stack traceback:\n\tfoo.lua:1: in x"))
      assert.are.equal("module 'x.y' not found on package.path",
        cli.one_line("module 'x.y' not found:\n\tno field package.preload['x.y']"))
      assert.are.equal("tokenize: bad", cli.one_line("eapig tokenize: bad"))
    end)

    it("write JSON with ordered keys and null for non-finite numbers", function()
      local cli = require("eapig.cli")
      assert.are.equal('{"b": 1.5, "a": null, "c": 3, "d": "x/y"}',
        cli.json_object({ "b", "a", "c", "d" }, { a = 0 / 0, b = 1.5, c = 3, d = "x/y" }))
    end)
  end)

  describe("without a model", function()
    it("lists the commands with no arguments (exit 2: a usage error) and with --help", function()
      for _, args in ipairs({ {}, { "--help" } }) do
        local out, rc = eapig(args)
        assert.are.equal(#args == 0 and 2 or 0, rc)
        for _, name in ipairs({ "info", "generate", "tokenize", "attribute", "circuit", "evaluate", "draw",
          "run", "repl" }) do
          assert.truthy(out:find("\n   " .. name .. " ", 1, true), name .. " missing from: " .. out)
        end
      end
    end)

    it("gives every command a --help", function()
      for _, name in ipairs({ "info", "generate", "tokenize", "attribute", "circuit", "evaluate", "draw",
        "run", "repl" }) do
        local out, rc = eapig({ name, "--help" })
        assert.are.equal(0, rc, name .. ": " .. out)
        assert.truthy(out:lower():find("usage: eapig " .. name, 1, true), out)
      end
    end)

    it("rejects an unknown command in one line", function()
      local out, rc = eapig({ "frobnicate" })
      assert_fails(out, rc, "unknown command 'frobnicate'")
    end)

    it("runs a script with its arguments and require('eapig')", function()
      local script = dir .. "/hello.lua"
      write(script, table.concat({
        'local eapig = require("eapig")',
        'print("args", arg[0] ~= nil, arg[1], arg[2], select("#", ...))',
        'print("version", eapig.version, rawget(_G, "eapig") == nil)',
      }, "\n"))
      local out, rc = eapig({ "run", script, "one", "--two" })
      assert.are.equal(0, rc, out)
      assert.are.equal("args\ttrue\tone\t--two\t2\nversion\tscm\ttrue\n", out)
    end)

    it("reports a script's error in one line with its position", function()
      local script = dir .. "/broken.lua"
      write(script, 'print("started")\nlocal t = nil\nreturn t.field\n')
      local out, rc = eapig({ "run", script })
      assert.are.equal(1, rc)
      assert.truthy(out:match("^started\neapig: [^\n]*broken%.lua:3: [^\n]+\n$"), out)
      out, rc = eapig({ "run", dir .. "/missing.lua" })
      assert_fails(out, rc, "missing%.lua")
    end)

    it("runs a repl on piped stdin", function()
      local out, rc = eapig({ "repl" }, "print(1+1)\n=eapig.version\n")
      assert.are.equal(0, rc, out)
      assert.are.equal("2\nscm\n", out)
    end)

    it("keeps repl globals between lines, continues unfinished ones and survives errors", function()
      local out, rc = eapig({ "repl" }, "x = 20\nfunction f(a)\n  return a + 1\nend\nf(x)\nerror('boom')\n= x, nil\n")
      assert.are.equal(0, rc, out)
      assert.are.equal("21\nboom\n20\tnil\n", out)
    end)

    it("delegates tokenize", function()
      local out, rc = eapig({ "tokenize", "--no-such-option" })
      assert_fails(out, rc)
    end)
  end)

  describe("on the gpt2-tiny fixture", function()
    if not fixtures_present() then
      pending("../shared/fixtures/gpt2-tiny is absent: command-line runs on a model skipped")
      return
    end

    it("prints a model's info, readable and as JSON", function()
      local out, rc = eapig({ "info", "--model", MODEL })
      assert.are.equal(0, rc, out)
      assert.truthy(out:find("family%s+gpt2\n"), out)
      assert.truthy(out:find("layers%s+2\n"), out)
      assert.truthy(out:find("edges%s+110\n"), out)
      out, rc = eapig({ "info", "--model", MODEL, "--json" })
      assert.are.equal(0, rc, out)
      local info = cjson.decode(out)
      assert.are.equal(2, info.n_layers)
      assert.are.equal(4, info.n_heads)
      assert.are.equal(110, info.n_edges)
      assert.are.equal(false, info.parallel_attn_mlp)
    end)

    it("generates greedily from ids", function()
      local out, rc = eapig({ "generate", "--model", MODEL, "--ids", "1,2", "--ids", "3", "--steps", "4" })
      assert.are.equal(0, rc, out)
      local ids = {}
      for id in out:match("^[^\n]*"):gmatch("%d+") do ids[#ids + 1] = tonumber(id) end
      assert.are.equal(7, #ids)
      assert.are.same({ 1, 2, 3 }, { ids[1], ids[2], ids[3] })
      out, rc = eapig({ "generate", "--model", MODEL, "--ids", "1,64" })
      assert_fails(out, rc, "outside the vocabulary")
    end)

    it("runs attribute -> circuit -> evaluate -> draw", function()
      local graph, circuit, svg = dir .. "/graph.json", dir .. "/circuit.json", dir .. "/circuit.svg"
      local out, rc = eapig({ "attribute", "--model", MODEL, "--data", DATA, "--method", "EAP-IG-inputs",
        "--ig-steps", "3", "--quiet", "--out", graph })
      assert.are.equal(0, rc, out)
      assert.are.equal("", out)
      assert.truthy(cjson.decode(read(graph)).edges["input->a0.h0<q>"], "graph JSON lacks edges")

      out, rc = eapig({ "circuit", "--graph", graph, "--topn", "20", "--out", circuit })
      assert.are.equal(0, rc, out)
      local n_in = 0
      for _, e in pairs(cjson.decode(read(circuit)).edges) do
        if e.in_graph then n_in = n_in + 1 end
      end
      assert.truthy(n_in > 0 and n_in <= 20, "edges in circuit: " .. n_in)

      out, rc = eapig({ "evaluate", "--model", MODEL, "--data", DATA, "--graph", circuit, "--json" })
      assert.are.equal(0, rc, out)
      local r = cjson.decode(out)
      for _, k in ipairs({ "clean", "corrupted", "empty", "circuit", "faithfulness", "n_edges", "n_nodes" }) do
        assert.are.equal("number", type(r[k]), k .. " in " .. out)
      end
      assert.are.equal(n_in, r.n_edges)

      out, rc = eapig({ "draw", "--graph", circuit, "--out", svg })
      local dot = os.execute("command -v dot >/dev/null 2>&1")
      if dot == 0 or dot == true then
        assert.are.equal(0, rc, out)
        assert.truthy(read(svg):find("<svg", 1, true))
      else -- without Graphviz, drawing says so (and .dot output still works, below)
        assert_fails(out, rc, "Graphviz")
        assert.is_false(exists(svg))
      end
    end)

    it("reads and writes the binary graph form, and selects by threshold and greedy", function()
      local graph, circuit = dir .. "/graph.safetensors", dir .. "/greedy.safetensors"
      local out, rc = eapig({ "attribute", "--model", MODEL, "--data", DATA, "--method", "EAP", "--quiet",
        "--out", graph })
      assert.are.equal(0, rc, out)
      out, rc = eapig({ "circuit", "--graph", graph, "--greedy", "10", "--out", circuit })
      assert.are.equal(0, rc, out)
      assert.truthy(out:find("10 edges", 1, true), out)
      out, rc = eapig({ "circuit", "--graph", graph, "--threshold", "0", "--no-prune", "--out", dir .. "/all.json" })
      assert.are.equal(0, rc, out)
      assert.truthy(out:find("110 edges", 1, true), out)
      out, rc = eapig({ "draw", "--graph", circuit, "--out", dir .. "/greedy.dot" })
      assert.are.equal(0, rc, out)
      assert.truthy(read(dir .. "/greedy.dot"):find("digraph", 1, true))
    end)

    it("evaluates the fixture's circuit to the reference values", function()
      local expected = cjson.decode(read(FIXTURE .. "/expected/evaluate-topn20-patching.json"))
      local out, rc = eapig({ "evaluate", "--model", MODEL, "--data", DATA, "--graph",
        FIXTURE .. "/expected/select-topn.json", "--batch-size", "4", "--json" })
      assert.are.equal(0, rc, out)
      local r = cjson.decode(out)
      assert.is_true(math.abs(r.circuit - expected.mean) < 1e-4, out)
      assert.is_true(math.abs(r.clean - expected.baseline_mean) < 1e-4, out)
      assert.is_true(math.abs(r.corrupted - expected.corrupted_baseline_mean) < 1e-4, out)
      assert.are.equal(expected.n_edges, r.n_edges)
      assert.are.equal(expected.n_nodes, r.n_nodes)
    end)

    describe("fails in one line and writes nothing", function()
      local graph

      -- A scored graph to select from, made once for these cases.
      setup(function()
        graph = dir .. "/scored.json"
        local out, rc = eapig({ "attribute", "--model", MODEL, "--data", DATA, "--method", "EAP", "--quiet",
          "--out", graph })
        assert(rc == 0, out)
      end)

      local function attribute(extra, out_path)
        local args = { "attribute", "--model", MODEL, "--data", DATA, "--quiet", "--out", out_path }
        for _, a in ipairs(extra) do args[#args + 1] = a end
        return eapig(args)
      end

      -- attribute with one bad option: fails with the pattern, writing no --out
      for _, case in ipairs({
        { "on an unknown method", "bad-method.json", { "--method", "EAP-XYZ" }, "EAP%-XYZ" },
        { "on an unknown option", "bad-option.json", { "--frobnicate", "3" }, "unknown option '%-%-frobnicate'" },
        { "on an unknown metric", "bad-metric.json", { "--metric", "nope" }, "unknown metric 'nope'" },
      }) do
        local name, file, extra, pattern = case[1], case[2], case[3], case[4]
        it(name, function()
          local path = dir .. "/" .. file
          local out, rc = attribute(extra, path)
          assert_fails(out, rc, pattern)
          assert.is_false(exists(path))
        end)
      end

      it("without --out", function()
        local out, rc = eapig({ "attribute", "--model", MODEL, "--data", DATA, "--quiet" })
        assert_fails(out, rc, "missing option '%-%-out'")
        out, rc = eapig({ "circuit", "--graph", graph, "--topn", "5" })
        assert_fails(out, rc, "missing option '%-%-out'")
      end)

      it("when n is larger than the number of edges", function()
        for _, how in ipairs({ "--topn", "--greedy" }) do
          local path = dir .. "/too-many" .. how .. ".json"
          local out, rc = eapig({ "circuit", "--graph", graph, how, "111", "--out", path })
          assert_fails(out, rc, "larger than the number of edges %(110%)")
          assert.is_false(exists(path))
        end
      end)

      it("without exactly one selection", function()
        local path = dir .. "/no-selection.json"
        local out, rc = eapig({ "circuit", "--graph", graph, "--out", path })
        assert_fails(out, rc, "%-%-topn")
        out, rc = eapig({ "circuit", "--graph", graph, "--topn", "3", "--greedy", "3", "--out", path })
        assert_fails(out, rc)
        assert.is_false(exists(path))
      end)

      it("on a graph made for another model", function()
        local other = dir .. "/other-model.json"
        require("eapig.graph").new({ n_layers = 1, n_heads = 2, d_model = 8 }):to_json(other)
        local out, rc = eapig({ "evaluate", "--model", MODEL, "--data", DATA, "--graph", other })
        assert_fails(out, rc, "does not match the model")
      end)

      it("on a data row with a token id out of range", function()
        local data, path = dir .. "/bad-row.jsonl", dir .. "/bad-row.json"
        write(data, '{"clean": [1, 2, 3], "corrupted": [1, 2, 4], "correct": 5, "incorrect": 6}\n' ..
          '{"clean": [1, 64, 3], "corrupted": [1, 2, 4], "correct": 5, "incorrect": 6}\n')
        local out, rc = eapig({ "attribute", "--model", MODEL, "--data", data, "--quiet", "--out", path })
        assert_fails(out, rc, "row 2: field 'clean': token id 64")
        assert.is_false(exists(path))
      end)

      it("on a missing model and an --out that cannot be written", function()
        local path = dir .. "/no-model.json"
        local out, rc = attribute({}, path)
        assert.are.equal(0, rc, out) -- the good case first, so the next failures are the options'
        os.remove(path)
        out, rc = eapig({ "attribute", "--model", dir .. "/no-such-model", "--data", DATA, "--out", path })
        assert_fails(out, rc, "no%-such%-model")
        assert.is_false(exists(path))
        out, rc = attribute({}, dir .. "/no-such-folder/out.json")
        assert_fails(out, rc, "cannot write")
      end)

      it("when drawing into an unknown format", function()
        local path = dir .. "/picture.bmp"
        local out, rc = eapig({ "draw", "--graph", graph, "--out", path })
        assert_fails(out, rc, "%.svg")
        assert.is_false(exists(path))
      end)
    end)
  end)
end)
