-- Times circuit selection on a graph the size of Llama-3-8B's (32 layers, 32 heads: 1,058 nodes,
-- 1,592,881 edges) with random scores. Run from the repository root: luajit scripts/bench_graph.lua
package.path = "./lua/?.lua;./lua/?/init.lua;" .. package.path
local Graph = require("eapig.graph")

local function seconds(f)
  local t0 = os.clock()
  f()
  return os.clock() - t0
end

local g
local build = seconds(function()
  g = Graph.new({ n_layers = 32, n_heads = 32, d_model = 4096, parallel_attn_mlp = false, family = "llama" })
end)
print(string.format("%s\nbuild: %.3f s", tostring(g), build))

-- Scores: a heavy-tailed random mix of signs (a normal times an exponential), fixed seed.
math.randomseed(1234)
local NF, NB, s = g.n_forward, g.n_backward, g.scores
for i = 0, NF * NB - 1 do
  if g.real[i] ~= 0 then
    local n = math.sqrt(-2 * math.log(1 - math.random())) * math.cos(2 * math.pi * math.random())
    s[i] = n * -math.log(1 - math.random())
  end
end

for _, n in ipairs({ 100, 1000, 10000, 100000, 1000000 }) do
  local t = seconds(function() g:apply_topn(n) end)
  print(string.format("apply_topn(%d): %.3f s  -> %d edges, %d nodes after prune", n, t,
    g:count_included_edges(), g:count_included_nodes()))
end
local t = seconds(function() g:apply_topn(1000, { prune = false }) end)
print(string.format("apply_topn(1000, no prune): %.3f s", t))
t = seconds(function() g:apply_threshold(3.0) end)
print(string.format("apply_threshold(3.0): %.3f s  -> %d edges", t, g:count_included_edges()))
for _, n in ipairs({ 1000, 100000 }) do
  t = seconds(function() g:apply_greedy(n) end)
  print(string.format("apply_greedy(%d): %.3f s  -> %d edges", n, t, g:count_included_edges()))
end

-- Files: JSON (EAP-IG's layout) and the compact safetensors form, in a temporary folder.
local dir = os.tmpname()
os.remove(dir)
os.execute("mkdir -p '" .. dir .. "'")
g:apply_topn(1000)
for _, form in ipairs({ { "json", "to_json", "from_json" }, { "safetensors", "to_safetensors", "from_safetensors" } }) do
  local path = dir .. "/graph." .. form[1]
  local w = seconds(function() g[form[2]](g, path) end)
  local size = io.open(path, "rb"):seek("end")
  local r = seconds(function() Graph[form[3]](path) end)
  print(string.format("%s: write %.2f s, read %.2f s, %.1f MB", form[1], w, r, size / 1e6))
end
os.execute("rm -rf '" .. dir .. "'")
