-- Graph files: JSON in EAP-IG's layout (round trip, the fixtures' files, bad content), the
-- safetensors form, DOT output and drawing through Graphviz.
local ffi = require("ffi")
local cjson = require("cjson")
local Graph = require("eapig.graph")
local graph_io = require("eapig.formats.graph_io")

local FIXTURES = require("support.shared").fixtures() -- nil when absent

local files = require("support.files")
local testing = require("eapig.testing")
local exists, read, write = files.exists, files.read, files.write

-- A scratch folder for this run, removed at the end.
local DIR = testing.tmpdir()
teardown(function() testing.rmtree(DIR) end)

local function files_in(dir)
  local names = {}
  local p = io.popen("ls -A '" .. dir .. "'")
  for line in p:lines() do names[#names + 1] = line end
  p:close()
  table.sort(names)
  return names
end

-- Random scores of every magnitude and sign (float32 values that need all 9 digits), a selection,
-- some node scores and, on neuron graphs, neuron scores and masks.
local function random_graph(level, parallel)
  local g = Graph.new({ n_layers = 3, n_heads = 4, d_model = 6, parallel_attn_mlp = parallel, family = "test",
    n_kv_heads = 2 }, { level = level })
  math.randomseed(42)
  for i = 0, g.n_forward * g.n_backward - 1 do
    if g.real[i] ~= 0 then g.scores[i] = (math.random() - 0.5) * 10 ^ math.random(-12, 3) end
  end
  g:apply_topn(40)
  if level ~= "edge" then -- edge-level graphs have no node scores (EAP-IG's nodes_scores = None)
    for u = 0, g.n_forward - 1, 2 do g.node_scores[u] = math.random() - 0.5 end
  end
  if g.neurons_in_graph then
    for i = 0, g.n_forward * g.cfg.d_model - 1, 3 do
      g.neuron_scores[i] = math.random() - 0.5
      g.neurons_in_graph[i] = math.random(0, 1)
    end
  end
  return g
end

-- Bitwise equality of two buffers (NaN included).
local function same_bytes(a, b, n)
  return ffi.string(a, n) == ffi.string(b, n)
end

-- Writes text to DIR/name and asserts that read_graph(path) fails with an error naming the file
-- and containing pattern.
local function assert_read_fails(read_graph, name, text, pattern)
  local path = DIR .. "/" .. name
  write(path, text)
  local ok, err = pcall(read_graph, path)
  assert.is_false(ok)
  assert.is_truthy(err:find(path, 1, true), err)
  assert.is_truthy(err:find(pattern, 1, true), err)
end

local function assert_same_graph(a, b)
  local NF, NB = a.n_forward, a.n_backward
  assert.are.same(a.cfg, b.cfg)
  assert.are.equal(a.level, b.level)
  assert.is_true(same_bytes(a.scores, b.scores, NF * NB * 4), "scores differ")
  assert.is_true(same_bytes(a.in_graph, b.in_graph, NF * NB), "in_graph differs")
  assert.is_true(same_bytes(a.nodes_in_graph, b.nodes_in_graph, NF + 1), "nodes_in_graph differs")
  assert.is_true(same_bytes(a.node_scores, b.node_scores, NF * 4), "node_scores differ")
  if a.neurons_in_graph then
    local n = NF * a.cfg.d_model
    assert.is_true(same_bytes(a.neurons_in_graph, b.neurons_in_graph, n), "neurons_in_graph differs")
    assert.is_true(same_bytes(a.neuron_scores, b.neuron_scores, n * 4), "neuron_scores differ")
  else
    assert.is_nil(b.neurons_in_graph)
  end
end

describe("Graph JSON", function()
  it("round-trips scores and masks exactly", function()
    for _, case in ipairs({ { "edge", false }, { "node", true }, { "neuron", false } }) do
      local g = random_graph(case[1], case[2])
      local path = DIR .. "/g-" .. case[1] .. ".json"
      assert.are.equal(path, g:to_json(path))
      assert_same_graph(g, Graph.from_json(path))
    end
  end)

  it("writes EAP-IG's layout and order", function()
    local g = random_graph("edge", false)
    local path = DIR .. "/layout.json"
    g:to_json(path)
    local text = read(path)
    local d = cjson.decode(text)
    assert.are.same({ n_layers = 3, n_heads = 4, d_model = 6, parallel_attn_mlp = false, family = "test",
      n_kv_heads = 2 }, d.cfg)
    -- EAP-IG's cfg keys come first, in its order
    assert.is_truthy(text:find('^{"cfg": {"n_layers": 3, "n_heads": 4, "parallel_attn_mlp": false, "d_model": 6'))
    local nodes = 0
    for name, info in pairs(d.nodes) do
      nodes = nodes + 1
      assert.are.equal("boolean", type(info.in_graph))
      assert.is_nil(info.score) -- an edge-level graph without node scores writes none
      if name == "logits" then assert.is_true(info.in_graph) end
    end
    assert.are.equal(g.n_forward + 1, nodes)
    local edges = 0
    for name, info in pairs(d.edges) do
      edges = edges + 1
      assert.are.equal("number", type(info.score))
      local u, v = g:edge_index(name)
      assert.are.equal(g.in_graph[u * g.n_backward + v] ~= 0, info.in_graph)
    end
    assert.are.equal(g:n_edges(), edges)
    local order = {}
    for name in text:gmatch('"([^"]+)": {"score"') do order[#order + 1] = name end
    local i = 0
    for name in g:edges() do
      i = i + 1
      assert.are.equal(name, order[i])
    end
  end)

  it("writes node scores and per-node neuron lists where the graph has them", function()
    local g = random_graph("neuron", false)
    local path = DIR .. "/neurons.json"
    g:to_json(path)
    local d = cjson.decode(read(path))
    assert.are.equal(6, #d.nodes["a1.h2"].neurons)
    assert.are.equal(6, #d.nodes["a1.h2"].neurons_scores)
    assert.are.equal("number", type(d.nodes.input.score))
    assert.is_nil(d.nodes.logits.score)
    assert.is_nil(d.nodes.logits.neurons)
  end)

  it("leaves no partial file and keeps an existing one when writing fails", function()
    local g = random_graph("edge", false)
    local sub = DIR .. "/atomic"
    os.execute("mkdir -p '" .. sub .. "'")
    local path = sub .. "/out.json"
    write(path, "previous")
    g.cfg.broken = function() end -- cannot be written as JSON: fails in the middle of writing
    assert.has_error(function() g:to_json(path) end)
    assert.are.equal("previous", read(path))
    assert.are.same({ "out.json" }, files_in(sub))
    g.cfg.broken = nil
    assert.has_error(function() g:to_json(DIR .. "/no/such/folder/out.json") end)
  end)

  it("loads EAP-IG's own files from the fixtures", function()
    if not FIXTURES then
      pending("../shared/fixtures is absent: skipping the fixture graphs")
      return
    end
    local p = io.popen("ls " .. FIXTURES .. "/*/expected/attr-*.json " .. FIXTURES .. "/*/expected/select-*.json")
    local count = 0
    for path in p:lines() do
      local g = Graph.from_json(path)
      local d = cjson.decode(read(path))
      assert.are.equal(d.cfg.n_layers, g.cfg.n_layers)
      local n = 0
      for name, info in pairs(d.edges) do
        n = n + 1
        local u, v = g:edge_index(name)
        -- float32 of the written double, as EAP-IG's tensors hold it
        assert.are.equal(ffi.new("float[1]", info.score)[0], g.scores[u * g.n_backward + v])
        assert.are.equal(info.in_graph, g.in_graph[u * g.n_backward + v] ~= 0)
      end
      assert.are.equal(g:n_edges(), n)
      for name, info in pairs(d.nodes) do
        assert.are.equal(info.in_graph, g.nodes_in_graph[g:forward_index(name)] ~= 0)
      end
      -- and it writes back to an equal graph
      local out = DIR .. "/fixture.json"
      g:to_json(out)
      assert_same_graph(g, Graph.from_json(out))
      count = count + 1
    end
    p:close()
    assert.is_true(count >= 50, "only " .. count .. " fixture graphs found")
  end)

  it("names the file and the edge or node in bad content", function()
    local cfg = '{"n_layers": 1, "n_heads": 1, "parallel_attn_mlp": false, "d_model": 4}'
    local function fails_with(text, pattern) assert_read_fails(Graph.from_json, "bad.json", text, pattern) end
    fails_with("{not json", "not valid JSON: expected a string at byte 1")
    fails_with('{"cfg": ' .. cfg .. ', "nodes": {}}', "missing or malformed key 'edges'")
    fails_with('{"cfg": {"n_layers": 1}, "nodes": {}, "edges": {}}', "bad cfg: Graph.new: cfg.n_heads must be")
    fails_with('{"cfg": {"n_layers": 100000, "n_heads": 1000, "d_model": 4}, "nodes": {}, "edges": {}}',
      "cfg.n_layers 100000 and cfg.n_heads 1000 give a 100100001 x 300100001 edge matrix, far more than")
    fails_with('{"cfg": ' .. cfg .. ', "nodes": {}, "edges": {"input->a7.h0<q>": {"score": 1, "in_graph": true}}}',
      "unknown edge 'input->a7.h0<q>'")
    fails_with('{"cfg": ' .. cfg .. ', "nodes": {}, "edges": {"m0->a0.h0<q>": {"score": 1, "in_graph": true}}}',
      "'m0->a0.h0<q>' is not an edge of this graph")
    fails_with('{"cfg": ' .. cfg .. ', "nodes": {}, "edges": {"input->m0": {"score": "x", "in_graph": true}}}',
      "edge 'input->m0': score must be a number, got a string")
    fails_with('{"cfg": ' .. cfg .. ', "nodes": {}, "edges": {"input->m0": {"score": 1}}}',
      "edge 'input->m0': in_graph is missing")
    fails_with('{"cfg": ' .. cfg .. ', "nodes": {}, "edges": {"input->m0": {"score": 1, "in_graph": 2}}}',
      "edge 'input->m0': in_graph must be a boolean, got a number other than 0 or 1")
    fails_with('{"cfg": ' .. cfg .. ', "nodes": {}, "edges": {"input->m0": {"score": 1, "in_graph": true}',
      "not valid JSON: the file ends where")
    fails_with('{"cfg": ' .. cfg .. ', "nodes": {}, "edges": {"input->m0": {"score": 1e, "in_graph": true}}}',
      "not valid JSON: expected an exponent at byte")
    fails_with('{"cfg": ' .. cfg .. ', "nodes": {}, "edges": {}} x', "expected the end of the file")
    fails_with('{"cfg": ' .. cfg .. ', "nodes": {"m5": {"in_graph": true}}, "edges": {}}', "node 'm5': unknown node")
    fails_with('{"cfg": ' .. cfg .. ', "nodes": {"m0": {"in_graph": true, "neurons": [true]}}, "edges": {}}',
      "node 'm0': neurons must be a list of d_model (4) entries")
    local ok, err = pcall(Graph.from_json, DIR .. "/missing.json")
    assert.is_false(ok)
    assert.is_truthy(err:find("cannot open", 1, true))
  end)

  -- A graph of 12 layers of 12 heads (about 2 MB of JSON) with seeded random scores of magnitude
  -- up to 10^e, its top-n edges selected, written to DIR/name; returns it and the path.
  local function big_graph(seed, e, n, name)
    local g = Graph.new({ n_layers = 12, n_heads = 12, d_model = 8, parallel_attn_mlp = false })
    math.randomseed(seed)
    for i = 0, g.n_forward * g.n_backward - 1 do
      if g.real[i] ~= 0 then g.scores[i] = (math.random() - 0.5) * 10 ^ math.random(-e, e) end
    end
    g:apply_topn(n)
    local path = DIR .. "/" .. name
    g:to_json(path)
    return g, path
  end

  it("streams a graph bigger than its read window, written by any JSON writer", function()
    -- 2 MB of JSON, more than the reader's first 1 MiB window, so entries straddle window boundaries
    local g, path = big_graph(7, 30, 500, "big.json")
    assert.is_true(#read(path) > 2 * 1024 * 1024)
    assert_same_graph(g, Graph.from_json(path))
    -- the same content as cjson writes it: keys in hash order (edges may come before cfg), no
    -- spaces, numbers in its own format (14 digits: compare as the float32 of that double)
    local d = cjson.decode(read(path))
    local other = DIR .. "/big-cjson.json"
    write(other, cjson.encode(d))
    local h = Graph.from_json(other)
    for name, info in pairs(d.edges) do
      local u, v = g:edge_index(name)
      local i = u * g.n_backward + v
      assert.are.equal(ffi.new("float[1]", cjson.decode(cjson.encode(info.score)))[0], h.scores[i])
      assert.are.equal(g.in_graph[i], h.in_graph[i])
    end
  end)

  it("parses entries cut anywhere by the read window's edge", function()
    -- leading spaces shift the 1 MiB window boundary through every byte of an edge entry
    local g, path = big_graph(11, 9, 300, "shift.json")
    local text = read(path)
    local entry = #text:match('\n"[^\n]+}')
    for pad = 0, entry + 1 do
      local shifted = DIR .. "/shifted.json"
      write(shifted, string.rep(" ", pad) .. text)
      assert_same_graph(g, Graph.from_json(shifted))
    end
  end)

  it("fails cleanly on every truncation and on damaged bytes", function()
    local g = random_graph("neuron", false)
    local path = DIR .. "/whole.json"
    g:to_json(path)
    local text = read(path)
    local cut = DIR .. "/cut.json"
    local function loads(content)
      write(cut, content)
      local ok, err = pcall(Graph.from_json, cut)
      if not ok then assert.is_truthy(err:find(cut, 1, true), err) end
      return ok
    end
    for n = 0, #text - 2, 7 do -- text ends "}}\n": every cut removes at least the last brace
      assert.is_false(loads(text:sub(1, n)), "a file cut at byte " .. n .. " loaded")
    end
    -- one byte replaced by a JSON-significant character: an error or a graph, never a crash
    math.randomseed(5)
    local chars = { "{", "}", "[", "]", ",", ":", '"', "\\", "0", "-", "e", "\0", " ", "n", "t" }
    for _ = 1, 300 do
      local at = math.random(1, #text)
      loads(text:sub(1, at - 1) .. chars[math.random(#chars)] .. text:sub(at + 1))
    end
  end)

  it("reads escapes, any spacing and JSON's number forms", function()
    local text = '{ "edges" : {\n  "input->m0":{"in_graph":1, "note": [1, {"x": null}], "score":-2.5E+2},\n' ..
      '  "\\u0069nput->logits": {"score": 0, "in_graph": false}, "m0->logits": {"score": 1e-3, "in_graph": true}},' ..
      ' "nodes": {"m0": {"in_graph": true}, "logits": {"in_graph": false}},' ..
      ' "cfg": {"n_layers": 1, "n_heads": 1, "d_model": 4, "parallel_attn_mlp": false}, "extra": "ignored" }'
    local path = DIR .. "/forms.json"
    write(path, text)
    local g = Graph.from_json(path)
    local function at(name)
      local u, v = g:edge_index(name)
      return g.scores[u * g.n_backward + v], g.in_graph[u * g.n_backward + v]
    end
    assert.are.same({ -250, 1 }, { at("input->m0") })
    assert.are.same({ 0, 0 }, { at("input->logits") })
    assert.are.same({ ffi.new("float[1]", 1e-3)[0], 1 }, { at("m0->logits") })
    assert.are.equal(1, g.nodes_in_graph[g:forward_index("m0")])
    assert.are.equal(1, g.nodes_in_graph[g.n_forward]) -- logits is always in
  end)

  it("refuses a graph whose cfg does not match the model", function()
    local g = random_graph("edge", false)
    local path = DIR .. "/match.json"
    g:to_json(path)
    local loaded = Graph.from_json(path)
    assert.is_true(loaded:check_matches({ n_layers = 3, n_heads = 4, d_model = 6, parallel_attn_mlp = false }))
    assert.has_error(function() loaded:check_matches({ n_layers = 2, n_heads = 4, d_model = 6 }) end,
      "graph does not match the model: n_layers is 3 in the graph but 2 in the model")
  end)
end)

describe("Graph safetensors", function()
  it("round-trips every buffer exactly", function()
    for _, case in ipairs({ { "edge", false }, { "node", true }, { "neuron", false } }) do
      local g = random_graph(case[1], case[2])
      local path = DIR .. "/g-" .. case[1] .. ".safetensors"
      g:to_safetensors(path)
      assert_same_graph(g, Graph.from_safetensors(path))
    end
  end)

  it("is a standard safetensors file", function()
    local g = random_graph("edge", false)
    local path = DIR .. "/std.safetensors"
    g:to_safetensors(path)
    local data = read(path)
    local n = 0
    for i = 8, 1, -1 do n = n * 256 + data:byte(i) end
    assert.are.equal(0, n % 8)
    local header = cjson.decode(data:sub(9, 8 + n))
    local NF, NB = g.n_forward, g.n_backward
    assert.are.same({ dtype = "F32", shape = { NF, NB }, data_offsets = { 0, NF * NB * 4 } }, header.scores)
    assert.are.same({ NF, NB }, header.in_graph.shape)
    assert.are.equal("U8", header.in_graph.dtype)
    assert.are.same({ NF }, header.nodes_in_graph.shape)
    assert.are.equal("F32", header.node_scores.dtype)
    assert.are.equal(3, cjson.decode(header.__metadata__.cfg).n_layers)
    assert.are.equal("a0.h0<k>", cjson.decode(header.__metadata__.backward_names)[5])
    -- data region holds exactly the tensors, back to back
    local last = 0
    for name, info in pairs(header) do
      if name ~= "__metadata__" and info.data_offsets[2] > last then last = info.data_offsets[2] end
    end
    assert.are.equal(#data - 8 - n, last)
    -- the first score, read as a little-endian float32
    local first = ffi.new("float[1]")
    ffi.copy(first, data:sub(9 + n, 12 + n), 4)
    assert.are.equal(g.scores[0], first[0])
  end)

  it("names the file and the problem in bad content", function()
    local g = random_graph("edge", false)
    local good = DIR .. "/good.safetensors"
    g:to_safetensors(good)
    local data = read(good)
    local function fails_with(text, pattern) assert_read_fails(Graph.from_safetensors, "bad.safetensors", text, pattern) end
    fails_with("abc", "shorter than the 8-byte header length")
    fails_with(data:sub(1, 8) .. "{}", "is larger than the file")
    fails_with(data:sub(1, #data - 10), "leave the data section")
    fails_with((data:gsub('"n_heads\\": 4', '"n_heads\\": 2', 1)), "__metadata__.forward_names does not list")
    fails_with((data:gsub('"shape": %[16, 40%]', '"shape": [40, 16]', 1)), "tensor 'scores' has shape [40, 16], expected [16, 40]")
    local header = "{}      "
    fails_with(string.char(#header, 0, 0, 0, 0, 0, 0, 0) .. header, "no cfg in __metadata__")
    -- an in_graph entry on a non-edge (input's column of a0.h0<q> is real; a0.h0's is not)
    local n = 0
    for i = 8, 1, -1 do n = n * 256 + data:byte(i) end
    local NB = g.n_backward
    local at = 8 + n + g.n_forward * NB * 4 + g.n_forward * 4 + 1 * NB + 0 -- in_graph[a0.h0][a0.h0<q>]
    fails_with(data:sub(1, at) .. "\1" .. data:sub(at + 2), "in_graph marks 'a0.h0->a0.h0<q>'")
  end)
end)

describe("Graph DOT and drawing", function()
  local function circuit()
    local g = Graph.new({ n_layers = 2, n_heads = 2, d_model = 4 })
    local scores = { ["input->a0.h0<q>"] = 0.5, ["input->a0.h0<k>"] = 0.4, ["input->a0.h0<v>"] = -0.3,
      ["a0.h0->m0"] = -0.6, ["m0->logits"] = 0.9, ["a0.h0->logits"] = 0.05 }
    for name, s in pairs(scores) do
      local u, v = g:edge_index(name)
      g.scores[u * g.n_backward + v] = s
    end
    g:apply_topn(6)
    return g
  end

  it("colours q/k/v edges as EAP-IG does, negative edges red, pen width from |score|", function()
    local dot = graph_io.dot_source(circuit())
    assert.is_truthy(dot:find("^digraph"))
    assert.is_truthy(dot:find('"input" -> "a0.h0" [penwidth="2.778", color="#FF00FF"', 1, true))
    assert.is_truthy(dot:find('"input" -> "a0.h0" [penwidth="2.222", color="#00FF00"', 1, true))
    assert.is_truthy(dot:find('"input" -> "a0.h0" [penwidth="1.667", color="#0000FF", style="dashed"', 1, true))
    assert.is_truthy(dot:find('"a0.h0" -> "m0" [penwidth="3.333", color="#FF0000"', 1, true))
    assert.is_truthy(dot:find('"m0" -> "logits" [penwidth="5", color="#000000"', 1, true))
    assert.is_truthy(dot:find('"a0.h0" -> "logits" [penwidth="0.6", color="#000000"', 1, true))
    assert.is_truthy(dot:find('"logits" [fillcolor=', 1, true))
    assert.is_falsy(dot:find('"a1.h0"', 1, true)) -- not in the circuit
  end)

  it("writes DOT files and draws SVG through dot", function()
    local g = circuit()
    local path = DIR .. "/c.dot"
    g:to_dot(path)
    assert.are.equal(graph_io.dot_source(g), read(path))
    local rc = os.execute("command -v dot >/dev/null 2>&1")
    if rc ~= 0 and rc ~= true then
      pending("Graphviz's dot is not installed")
      return
    end
    local svg = DIR .. "/c.svg"
    g:draw(svg)
    assert.is_truthy(read(svg):find("<svg", 1, true))
    g:draw(DIR .. "/c2.dot")
    assert.is_true(exists(DIR .. "/c2.dot"))
  end)

  it("gives clear errors for a missing dot and unknown formats", function()
    local g = circuit()
    local out = DIR .. "/never.svg"
    assert.has_error(function() g:draw(out, { dot = "/nonexistent/dot" }) end,
      "Graph:draw: Graphviz's `/nonexistent/dot` program was not found; install Graphviz " ..
      "(e.g. apt install graphviz) or write the source with graph:to_dot(path)")
    assert.is_false(exists(out))
    assert.has_error(function() g:draw(DIR .. "/c.jpeg") end,
      "Graph:draw: cannot draw into '" .. DIR .. "/c.jpeg': use a .svg, .png, .pdf or .dot file")
  end)
end)
