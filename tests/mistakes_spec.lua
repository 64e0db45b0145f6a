-- Mistakes are caught, and the CLI reads what researchers have: every message a user gets for a
-- common mistake (a misspelt option, a selection without scores, an --out suffix eapig does not
-- write, a negative size, an error inside `eapig run`), and `--data` in JSONL and EAP-IG's CSV,
-- validated against the metric that reads it. Runs on the embedded model (models/induction-2l)
-- and, for greater-than, on a random GPT-2-shaped model with GPT-2's tokenizer files.
local eapig = require("eapig")
local files = require("support.files")
local testing = require("eapig.testing")
local exists, read, write = files.exists, files.read, files.write

local MODEL = "models/induction-2l"
local GPT2_TOKENIZER = "../shared/models/gpt2-tokenizer"

local shell = require("support.shell")
local quote = shell.quote

-- `luajit scripts/eapig ARGS`: stdout, stderr and the exit status, separately.
local function eapig_cmd(args, dir)
  local errf = dir .. "/stderr.txt"
  local out, rc = shell.run(shell.eapig_line(args), "2>" .. quote(errf))
  return out, read(errf) or "", rc
end

-- A failed command: status 1, one line "eapig: ..." on stderr, no eapig file:line, no traceback.
local function assert_message(err, rc, text)
  assert.are.equal(1, rc, err)
  assert.truthy(err:match("^eapig: [^\n]+\n$"), "not one error line: " .. err)
  assert.is_nil(err:find("traceback"), err)
  assert.is_nil(err:find("eapig/[%w_/]+%.lua:%d+:"), err)
  assert.truthy(err:find(text, 1, true), ("expected '%s' in: %s"):format(text, err))
end


describe("mistakes in the Lua API", function()
  local model = eapig.load(MODEL)
  local task = require("eapig.tasks.induction").new({ vocab = model.vocab, seq_len = 16 })
  local ds = eapig.data.from_rows(task:dataset({ rows = 8, seed = 2 }), { vocab = model.vocab })

  it("name an unknown option key and the nearest valid one", function()
    local g = eapig.Graph.from_model(model)
    assert.has_error(function() eapig.attribute(model, g, ds, "logit_diff", { methd = "EAP" }) end,
      "attribute: unknown option 'methd' (did you mean 'method'?)")
    assert.has_error(function() eapig.attribute(model, g, ds, "logit_diff", { ig_step = 3 }) end,
      "attribute: unknown option 'ig_step' (did you mean 'ig_steps'?)")
    assert.has_error(function() eapig.evaluate_graph(model, g, ds, "logit_diff", { intervension = "zero" }) end,
      "evaluate_graph: unknown option 'intervension' (did you mean 'intervention'?)")
    assert.has_error(function() eapig.evaluate_baseline(model, ds, "logit_diff", { run_corupted = true }) end,
      "evaluate_baseline: unknown option 'run_corupted' (did you mean 'run_corrupted'?)")
    assert.has_error(function() g:apply_threshold(0.1, { absolut = false }) end,
      "Graph:apply_threshold: unknown option 'absolut' (did you mean 'absolute'?)")
    assert.has_error(function() eapig.Graph.from_model(model, { levle = "node" }) end,
      "Graph.new: unknown option 'levle' (did you mean 'level'?)")
    assert.has_error(function() g:draw("/tmp/x.svg", { colour_scheme = "Set2" }) end,
      "Graph:draw: unknown option 'colour_scheme' (did you mean 'colorscheme'?)")
  end)

  it("take EAP-IG's positional method string and apply_topn(n, absolute)", function()
    local a, b = eapig.Graph.from_model(model), eapig.Graph.from_model(model)
    eapig.attribute(model, a, ds, "logit_diff", "EAP", "patching", "sum", nil, nil, true) -- EAP-IG's order
    eapig.attribute(model, b, ds, "logit_diff", { method = "EAP", quiet = true })
    for i = 0, a.n_forward * a.n_backward - 1 do assert.are.equal(b.scores[i], a.scores[i]) end
    local c = eapig.Graph.from_model(model)
    eapig.attribute(model, c, ds, "logit_diff", "EAP-IG-inputs", { ig_steps = 2, quiet = true })
    local d = eapig.Graph.from_model(model)
    eapig.attribute(model, d, ds, "logit_diff", { method = "EAP-IG-inputs", ig_steps = 2, quiet = true })
    for i = 0, c.n_forward * c.n_backward - 1 do assert.are.equal(d.scores[i], c.scores[i]) end
    local s1, s2 = a:clone(), a:clone()
    s1:apply_topn(7, true)
    s2:apply_topn(7, { absolute = true })
    assert.are.equal(s2:count_included_edges(), s1:count_included_edges())
    for i = 0, a.n_forward * a.n_backward - 1 do assert.are.equal(s2.in_graph[i], s1.in_graph[i]) end
  end)

  it("refuse to select by scores the graph lacks, and to evaluate a graph with nothing selected", function()
    local g = eapig.Graph.from_model(model)
    assert.has_error(function() g:apply_topn(5) end,
      "Graph:apply_topn: the graph has no edge scores (all are 0): score it first with " ..
      "eapig.attribute(model, graph, data, metric), or load a scored graph")
    eapig.attribute(model, g, ds, "logit_diff", { method = "EAP", quiet = true })
    assert.has_error(function() g:apply_topn(2, { level = "node" }) end,
      "Graph:apply_topn: the graph has no node scores: create it with Graph.from_model(model, {level = \"node\"}) " ..
      "and attribute it (EAP, EAP-IG-inputs or exact), or select at level \"edge\"")
    assert.has_error(function() eapig.evaluate_graph(model, g, ds, "logit_diff", { quiet = true }) end,
      "evaluate_graph: the graph has no edges selected: choose a circuit first with graph:apply_topn(n), " ..
      "apply_threshold(t) or apply_greedy(n) (apply_topn(0) evaluates the empty circuit on purpose)")
    g:apply_topn(0) -- on purpose: evaluates
    assert.are.equal(#ds, #eapig.evaluate_graph(model, g, ds, "logit_diff", { quiet = true }))
  end)
end)

describe("mistakes on the command line", function()
  local dir
  setup(function() dir = testing.tmpdir() end)
  teardown(function() testing.rmtree(dir) end)

  it("eapig with no command prints the usage and exits 2", function()
    local out, err, rc = eapig_cmd({}, dir)
    assert.are.equal(2, rc)
    assert.are.equal("", out)
    assert.truthy(err:find("Usage: eapig <command>", 1, true), err)
  end)

  it("numeric options reject negatives and absurd sizes", function()
    local g = dir .. "/g.json"
    local _, err, rc = eapig_cmd({ "attribute", "--model", MODEL, "--data", dir .. "/none.jsonl", "--batch-size",
      "100000000", "--out", g }, dir)
    assert_message(err, rc, "attribute: --batch-size must be <= 65536, got 100000000")
    _, err, rc = eapig_cmd({ "circuit", "--graph", g, "--topn", "-5", "--out", dir .. "/c.json" }, dir)
    assert_message(err, rc, "circuit: --topn must be >= 0, got -5")
    _, err, rc = eapig_cmd({ "attribute", "--model", MODEL, "--data", g, "--ig-steps", "-1", "--out", g }, dir)
    assert_message(err, rc, "attribute: --ig-steps must be >= 1, got -1")
  end)

  it("an --out suffix eapig does not write says which it writes", function()
    local data = dir .. "/ind.jsonl"
    local out, err, rc = eapig_cmd({ "data", "--task", "induction", "--tokenizer", MODEL, "--n", "8", "--out", data },
      dir)
    assert.are.equal(0, rc, err)
    assert.truthy(out:find("8 induction rows", 1, true), out)
    out, err, rc = eapig_cmd({ "attribute", "--model", MODEL, "--data", data, "--out", dir .. "/g.txt" }, dir)
    assert.are.equal("", out)
    assert_message(err, rc, "--out '" .. dir .. "/g.txt': eapig writes scored graphs as .json, .safetensors")
    assert.is_false(exists(dir .. "/g.txt"))
    out, err, rc = eapig_cmd({ "data", "--task", "ioi", "--tokenizer", MODEL, "--out", dir .. "/x.parquet" }, dir)
    assert.are.equal("", out)
    assert_message(err, rc, "eapig writes datasets as .jsonl, .csv")
    out, err, rc = eapig_cmd({ "draw", "--graph", data, "--out", dir .. "/c.jpg" }, dir)
    assert_message(err, rc, "eapig writes pictures as .svg, .png, .pdf, .dot, .gv")
    assert.are.equal("", out)
  end)

  it("errors inside eapig run name the script's file and line; --debug adds the traceback", function()
    local script = dir .. "/oops.lua"
    write(script, 'local eapig = require("eapig")\n' ..
      'local g = eapig.Graph.new({ n_layers = 1, n_heads = 1, d_model = 4 })\n' ..
      'g:apply_topn(0, { absolut = true })\n')
    local _, err, rc = eapig_cmd({ "run", script }, dir)
    assert_message(err, rc, script .. ":3: Graph:apply_topn: unknown option 'absolut' (did you mean 'absolute'?)")
    _, err, rc = eapig_cmd({ "--debug", "run", script }, dir)
    assert.are.equal(1, rc)
    assert.truthy(err:find("stack traceback", 1, true), err)
    write(script, "local t = nil\nreturn t.x\n")
    _, err, rc = eapig_cmd({ "run", script }, dir)
    assert_message(err, rc, script .. ":2: attempt to index local 't' (a nil value)")
  end)
end)

describe("--data reads JSONL and EAP-IG's CSV", function()
  local dir
  setup(function() dir = testing.tmpdir() end)
  teardown(function() testing.rmtree(dir) end)

  local function ok(args)
    local out, err, rc = eapig_cmd(args, dir)
    assert.are.equal(0, rc, err .. out)
    return out
  end

  it("eapig data writes both forms; attribute reads them (by suffix or by content) to the same scores", function()
    for _, ext in ipairs({ "jsonl", "csv" }) do
      ok({ "data", "--task", "induction", "--tokenizer", MODEL, "--n", "12", "--seed", "3", "--out", dir .. "/ind." .. ext })
    end
    write(dir .. "/ind-csv.txt", read(dir .. "/ind.csv")) -- no suffix to go by
    write(dir .. "/ind-jsonl.txt", read(dir .. "/ind.jsonl"))
    local scores = {}
    for _, name in ipairs({ "ind.jsonl", "ind.csv", "ind-csv.txt", "ind-jsonl.txt" }) do
      local g = dir .. "/" .. name .. ".json"
      ok({ "attribute", "--model", MODEL, "--data", dir .. "/" .. name, "--method", "EAP", "--quiet", "--out", g })
      scores[#scores + 1] = eapig.Graph.from_json(g)
    end
    for k = 2, #scores do
      for i = 0, scores[1].n_forward * scores[1].n_backward - 1 do assert.are.equal(scores[1].scores[i], scores[k].scores[i]) end
    end
    local _, err, rc = eapig_cmd({ "evaluate", "--model", MODEL, "--data", dir .. "/ind.csv", "--graph",
      dir .. "/ind.csv.json" }, dir)
    assert_message(err, rc, "evaluate: the graph '" .. dir .. "/ind.csv.json' has no edges in its circuit: select one " ..
      "first (eapig circuit --graph")
    ok({ "circuit", "--graph", dir .. "/ind.csv.json", "--topn", "30", "--out", dir .. "/c.json" })
    local out = ok({ "evaluate", "--model", MODEL, "--data", dir .. "/ind.csv", "--graph", dir .. "/c.json", "--json" })
    local r = require("cjson").decode(out)
    assert.are.equal("number", type(r.empty))
    ok({ "draw", "--graph", dir .. "/c.json", "--out", dir .. "/c.dot" })
  end)

  it("greater-than rows (EAP-IG's CSV, eapig data's JSONL) validate against prob_diff", function()
    if not exists(GPT2_TOKENIZER .. "/encoder.json") then
      pending("../shared/models/gpt2-tokenizer is absent: skipping the greater-than CLI walk-through")
      return
    end
    local folder = dir .. "/gpt2"
    os.execute("mkdir -p " .. quote(folder))
    require("eapig.testing").random_model({ family = "gpt2", vocab = 50257, layers = 2, d_model = 32, dir = folder })
    for _, name in ipairs({ "encoder.json", "vocab.bpe" }) do write(folder .. "/" .. name, read(GPT2_TOKENIZER .. "/" .. name)) end
    -- EAP-IG's own file layout: clean, corrupted, label (the year YY)
    local csv = dir .. "/greater_than_data.csv"
    write(csv, "clean,corrupted,label\n" ..
      "The contract lasted from the year 1352 to the year 13,The contract lasted from the year 1301 to the year 13,52\n" ..
      "The plan lasted from the year 1642 to the year 16,The plan lasted from the year 1601 to the year 16,42\n")
    ok({ "data", "--task", "greater_than", "--tokenizer", folder, "--n", "6", "--out", dir .. "/gt.jsonl" })
    for _, data in ipairs({ csv, dir .. "/gt.jsonl" }) do
      local g, c = data .. ".graph.json", data .. ".circuit.json"
      ok({ "attribute", "--model", folder, "--data", data, "--metric", "prob_diff", "--ig-steps", "2", "--quiet",
        "--out", g })
      ok({ "circuit", "--graph", g, "--topn", "20", "--out", c })
      ok({ "evaluate", "--model", folder, "--data", data, "--metric", "prob_diff", "--graph", c, "--quiet" })
    end
    -- the metric that reads the rows decides what they need
    local _, err, rc = eapig_cmd({ "attribute", "--model", folder, "--data", csv, "--quiet", "--out", dir .. "/x.json" }, dir)
    assert_message(err, rc, csv .. ": line 2: metric logit_diff: no 'correct' field")
    write(dir .. "/bad.csv", "clean,corrupted,label\n" ..
      "The plan lasted from the year 1642 to the year 16,The plan lasted from the year 1601 to the year 16,142\n")
    _, err, rc = eapig_cmd({ "attribute", "--model", folder, "--data", dir .. "/bad.csv", "--metric", "prob_diff",
      "--out", dir .. "/x.json" }, dir)
    assert_message(err, rc, "bad.csv: line 2: metric prob_diff: 'label' must be the clean year's index in [0, 100) " ..
      "into year_ids, got 142")
    assert.is_false(exists(dir .. "/x.json"))
  end)
end)
