-- MIB submissions (eapig.mib, `eapig mib export`): the importance-score file follows EAP-IG's
-- Graph.to_json conventions (read here with plain cjson against edge names worked out from the
-- architecture, not from eapig's graph), the nine circuits hold the top-n edges by absolute score
-- pruned to what connects input to logits (checked against a reachability computation written
-- here), and bad names, shapes and folders are errors that leave nothing behind. `mib score`:
-- CPR and CMD of a hand-built graph equal a trapezoid computed here from the circuits' values.
local cjson = require("cjson")
local random = require("eapig.rng")
local ffi = require("ffi")
local Graph = require("eapig.graph")
local mib = require("eapig.apps.mib")
local testing = require("eapig.testing")
local files = require("support.files")

local f32 = ffi.new("float[1]")
local GPT2 = { n_layers = 12, n_heads = 12, d_model = 768, parallel_attn_mlp = false }

local tmpdir
setup(function() tmpdir = testing.tmpdir() end)
teardown(function() testing.rmtree(tmpdir) end)

local errors = require("support.errors")
local err_of, has = errors.error_of, errors.has

-- Flat index u * NB + v of an edge in the score matrix.
local function idx(g, name)
  local u, v = g:edge_index(name)
  return u * g.n_backward + v
end

local function random_graph(seed)
  local g = Graph.new(GPT2)
  local rng = random.new(seed)
  for i = 0, g.n_forward * g.n_backward - 1 do g.scores[i] = rng:normal() end
  return g
end

-- EAP-IG's edges of a sequential (not parallel) model: a source feeds every head input and MLP
-- of later layers, MLP inputs of its own layer when it is a head or the input, and the logits.
local function expected_edges(L, H)
  local sources = { { name = "input", layer = -1, kind = "input" } }
  for l = 0, L - 1 do
    for h = 0, H - 1 do sources[#sources + 1] = { name = ("a%d.h%d"):format(l, h), layer = l, kind = "head" } end
    sources[#sources + 1] = { name = "m" .. l, layer = l, kind = "mlp" }
  end
  local names = {}
  for _, u in ipairs(sources) do
    for l = 0, L - 1 do
      if u.layer < l then
        for _, qkv in ipairs({ "q", "k", "v" }) do
          for h = 0, H - 1 do names[#names + 1] = ("%s->a%d.h%d<%s>"):format(u.name, l, h, qkv) end
        end
      end
      if u.layer < l or (u.layer == l and u.kind == "head") then names[#names + 1] = ("%s->m%d"):format(u.name, l) end
    end
    names[#names + 1] = u.name .. "->logits"
  end
  return names
end

local function split_edge(name)
  local u, v = name:match("^(.-)%->(.+)$")
  return u, (v:gsub("<[qkv]>$", ""))
end

describe("mib export", function()
  it("writes importances.json in EAP-IG's to_json layout", function()
    local g = random_graph(1)
    local folder = mib.export(g, "ioi", "gpt2", tmpdir .. "/scores")
    assert.equal(tmpdir .. "/scores/ioi_gpt2", folder)
    local doc = cjson.decode(files.read(folder .. "/importances.json"))
    -- cfg keys Graph.from_model reads
    assert.equal(12, doc.cfg.n_layers)
    assert.equal(12, doc.cfg.n_heads)
    assert.equal(768, doc.cfg.d_model)
    assert.False(doc.cfg.parallel_attn_mlp)
    -- nodes: input, every head, every MLP, logits
    local n_nodes = 0
    for name, node in pairs(doc.nodes) do
      n_nodes = n_nodes + 1
      assert.truthy(name == "input" or name == "logits" or name:match("^a%d+%.h%d+$") or name:match("^m%d+$"), name)
      assert.equal("boolean", type(node.in_graph))
    end
    assert.equal(1 + 12 * 13 + 1, n_nodes)
    -- edges: exactly EAP-IG's names, each with its score
    local want = expected_edges(12, 12)
    assert.equal(32491, #want)
    local n_edges = 0
    for _ in pairs(doc.edges) do n_edges = n_edges + 1 end
    assert.equal(#want, n_edges)
    for _, name in ipairs(want) do
      local e = doc.edges[name]
      if not e then error("missing edge " .. name) end
      if type(e.score) ~= "number" or type(e.in_graph) ~= "boolean" then error("bad entry for edge " .. name) end
      -- written with 9 significant digits: the same float32
      f32[0] = e.score
      if g.scores[idx(g, name)] ~= f32[0] then error(("edge %s: score %.9g, expected %.9g"):format(name, f32[0], g.scores[idx(g, name)])) end
    end
    -- and eapig reads it back to the same scores
    local back = Graph.from_json(folder .. "/importances.json")
    for i = 0, g.n_forward * g.n_backward - 1 do
      if g.real[i] ~= 0 then assert.equal(g.scores[i], back.scores[i]) end
    end
  end)

  it("writes nine circuits: top-n by absolute score at MIB's percentages, pruned", function()
    local g = random_graph(2)
    -- Strong paths so that the small circuits are not pruned away entirely: input -> m_l -> logits.
    g.scores[idx(g, "input->logits")] = -1000
    for l = 0, 11 do
      g.scores[idx(g, ("input->m%d"):format(l))] = 500 - l
      g.scores[idx(g, ("m%d->logits"):format(l))] = -(499.5 - l)
    end
    local folder, written = mib.export(g, "ioi", "gpt2", tmpdir .. "/circuits", { circuits = true })
    assert.equal(9, #written)
    local total = 32491
    local edges = expected_edges(12, 12)
    -- rank by |score| once (ties are impossible with these random scores)
    local ranked = {}
    for _, name in ipairs(edges) do ranked[#ranked + 1] = { name = name, s = math.abs(g.scores[idx(g, name)]) } end
    table.sort(ranked, function(a, b) return a.s > b.s end)
    for k, pct in ipairs({ 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50 }) do
      local w = written[k]
      assert.equal(pct, w.percent)
      assert.equal(math.floor(pct / 100 * total), w.n)
      local doc = cjson.decode(files.read(folder .. "/" .. w.file))
      local top = {}
      for i = 1, w.n do top[ranked[i].name] = true end
      -- pruned: kept iff the source is reached from input and the destination reaches logits,
      -- both through top-n edges
      local forward, backward = { input = true }, { logits = true }
      for _, name in ipairs(edges) do -- edges are listed in topological order of their sources
        local u, v = split_edge(name)
        if top[name] and forward[u] then forward[v] = true end
      end
      for i = #edges, 1, -1 do
        local u, v = split_edge(edges[i])
        if top[edges[i]] and backward[v] then backward[u] = true end
      end
      local expect_kept = 0
      for _, name in ipairs(edges) do
        local u, v = split_edge(name)
        local keep = top[name] and forward[u] and backward[v] or false
        if keep then expect_kept = expect_kept + 1 end
        if keep ~= doc.edges[name].in_graph then
          error(("%g%%: edge %s: in_graph %s, expected %s"):format(pct, name, tostring(doc.edges[name].in_graph),
                                                                   tostring(keep)))
        end
      end
      assert.equal(expect_kept, w.kept)
      assert.True(w.kept <= w.n)
      assert.True(w.kept >= 25, "the 25 strong edges are connected and in every circuit")
    end
  end)

  it("refuses unknown names, pairs MIB does not score, the wrong model's graph, an existing folder", function()
    local g = random_graph(3)
    has(err_of(mib.export, g, "ioi2", "gpt2", tmpdir .. "/x"), "--task 'ioi2' is not an MIB task")
    has(err_of(mib.export, g, "ioi", "gpt3", tmpdir .. "/x"), "--model 'gpt3' is not an MIB model")
    has(err_of(mib.export, g, "mcqa", "gpt2", tmpdir .. "/x"), "does not score task 'mcqa' on model 'gpt2'")
    has(err_of(mib.export, g, "ioi", "qwen2.5", tmpdir .. "/x"), "cfg 'n_layers' is 12, but MIB's qwen2.5")
    assert.equal("arithmetic-addition_llama3", mib.folder_name("arithmetic_addition", "llama3"))
    mib.export(g, "ioi", "gpt2", tmpdir .. "/twice")
    has(err_of(mib.export, g, "ioi", "gpt2", tmpdir .. "/twice"), "exists already")
    -- nothing but the first export's folder is there
    local p = io.popen("ls -A '" .. tmpdir .. "/twice'")
    assert.equal("ioi_gpt2\n", p:read("*a"))
    p:close()
  end)

  it("the command line writes the folder and names what is wrong", function()
    local g = random_graph(4)
    g:to_json(tmpdir .. "/cli_scores.json")
    local function run(args)
      local p = io.popen("luajit scripts/eapig mib " .. args .. " 2>&1; echo \"rc=$?\"")
      local out = p:read("*a")
      p:close()
      return out
    end
    local out = run("export --graph " .. tmpdir .. "/cli_scores.json --task ioi --model gpt2 --out " .. tmpdir .. "/cli")
    has(out, "ioi_gpt2/importances.json: 32491 scored edges")
    has(out, "rc=0")
    assert.truthy(files.exists(tmpdir .. "/cli/ioi_gpt2/importances.json"))
    out = run("export --graph " .. tmpdir .. "/cli_scores.json --task ioi --model llama3 --out " .. tmpdir .. "/cli2")
    has(out, "eapig: mib: the graph's cfg 'n_layers' is 12")
    has(out, "rc=1")
    has(run("frobnicate"), "unknown subcommand 'frobnicate'")
  end)
end)

describe("mib score", function()
  local tiny = require("support.tiny")
  local eapig = require("eapig")
  local evaluate = require("eapig.evaluate")

  local function rows_of(model, seed, n) return tiny.rows(model, seed, n, 5) end

  it("CPR and CMD of a hand-built graph equal a direct trapezoid computation", function()
    local model = tiny.model("llama", 6)
    local data = eapig.data.from_rows(rows_of(model, 9, 5), { vocab = model.vocab })
    -- Hand-built scores: every edge gets a distinct score of either sign, larger for edges out of
    -- lower layers, so signed and absolute rankings differ.
    local graph = Graph.from_model(model)
    local k = 0
    for u = 0, graph.n_forward - 1 do
      for v = 0, graph.n_backward - 1 do
        local i = u * graph.n_backward + v
        if graph.real[i] ~= 0 then
          k = k + 1
          graph.scores[i] = (k % 3 == 0 and -1 or 1) * (1 + (graph.n_forward - u) / graph.n_forward + k * 1e-4)
        end
      end
    end
    local r = mib.score(model, graph, data, "logit_diff", { quiet = true })

    -- Directly: m(model), m(empty), the top-n circuit at each of MIB's fractions, trapezoids.
    local mean = evaluate.mean
    local clean = mean(evaluate.evaluate_baseline(model, data, "logit_diff", { quiet = true }))
    local empty = mean(evaluate.evaluate_empty(model, data, "logit_diff", { quiet = true }))
    local fractions = { 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1 }
    local total = graph:n_edges()
    local function faithfulness_curve(absolute)
      local ys = {}
      for i, f in ipairs(fractions) do
        local g = graph:clone()
        g:apply_topn(math.floor(f * total), { absolute = absolute, prune = true })
        local value = empty
        if g:count_included_edges() > 0 then value = mean(evaluate.evaluate_graph(model, g, data, "logit_diff", { quiet = true })) end
        ys[i] = (value - empty) / (clean - empty)
      end
      return ys
    end
    local signed, absolute = faithfulness_curve(false), faithfulness_curve(true)
    local cpr, cmd = 0, 0
    for i = 2, #fractions do
      local dx = fractions[i] - fractions[i - 1]
      cpr = cpr + dx * (signed[i - 1] + signed[i]) / 2
      cmd = cmd + dx * (math.abs(1 - absolute[i - 1]) + math.abs(1 - absolute[i])) / 2
    end
    assert.True(math.abs(r.cpr - cpr) < 1e-9, ("CPR %.12g, direct %.12g"):format(r.cpr, cpr))
    assert.True(math.abs(r.cmd - cmd) < 1e-9, ("CMD %.12g, direct %.12g"):format(r.cmd, cmd))
    -- the whole graph is the model; the two rankings give different curves
    assert.True(math.abs(signed[#signed] - 1) < 1e-5)
    local differ = false
    for i = 1, #fractions do
      if signed[i] ~= absolute[i] then differ = true end
    end
    assert.True(differ, "signed and absolute rankings gave the same curve: the test graph does not tell them apart")
  end)

  it("the command line prints CPR and CMD, and --json the curves", function()
    local dir = tmpdir .. "/score_model"
    assert(os.execute("mkdir -p '" .. dir .. "'") == 0)
    testing.random_model({ family = "gpt2", seed = 3, dir = dir })
    local model = eapig.load(dir)
    local lines = {}
    for i, row in ipairs(rows_of(model, 4, 4)) do lines[i] = cjson.encode(row) end
    files.write(tmpdir .. "/rows.jsonl", table.concat(lines, "\n") .. "\n")
    local graph = Graph.from_model(model)
    local rng = random.new(5)
    for i = 0, graph.n_forward * graph.n_backward - 1 do graph.scores[i] = rng:normal() end
    graph:to_json(tmpdir .. "/score_graph.json")
    local args = ("score --model %s --data %s/rows.jsonl --graph %s/score_graph.json"):format(dir, tmpdir, tmpdir)
    local p = io.popen("luajit scripts/eapig mib " .. args .. " --json 2>&1; echo \"rc=$?\"")
    local out = p:read("*a")
    p:close()
    has(out, "rc=0")
    local doc = cjson.decode(out:match("^(.-)\nrc="))
    assert.equal(10, #doc.signed)
    assert.equal(10, #doc.absolute)
    assert.equal("number", type(doc.cpr))
    assert.equal("number", type(doc.cmd))
    local r = mib.score(model, graph, eapig.data.from_rows(rows_of(model, 4, 4), { vocab = model.vocab }), "logit_diff",
                        { quiet = true })
    assert.True(math.abs(r.cpr - doc.cpr) < 1e-6 and math.abs(r.cmd - doc.cmd) < 1e-6)
    p = io.popen("luajit scripts/eapig mib " .. args .. " 2>&1")
    out = p:read("*a")
    p:close()
    has(out, "CPR ")
    has(out, "CMD ")
  end)
end)
