-- Times circuit selection, graph files and `eapig circuit` on a graph the size of Llama-3-8B's
-- (32 layers, 32 heads: 1,058 nodes, 1,592,881 edges) with random scores, and the peak memory
-- (resident set) of each file operation. Run from the repository root after building:
--   luajit scripts/bench_graph.lua
package.path = "./lua/?.lua;./lua/?/init.lua;./build/?.lua;" .. package.path
package.cpath = "./build/?.so;" .. package.cpath
local Graph = require("eapig.graph")
local memory = require("eapig.memory")

local function seconds(f)
  local t0 = os.clock()
  f()
  return os.clock() - t0
end

-- Resident memory in MiB (NaN where /proc/self/status is missing): the current size, and the
-- peak since the last memory.reset_peak().
local function mib(bytes) return (bytes or 0 / 0) / 2 ^ 20 end
local function rss() return mib(memory.rss()) end
local function peak() return mib(memory.peak_rss()) end
local reset_peak = memory.reset_peak

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
require("eapig.formats.files").mkdir_p(dir, "bench_graph")
g:apply_topn(1000)
collectgarbage()
print(string.format("resident before the files: %.0f MiB (the graph's buffers and the Lua state)", rss()))
for _, form in ipairs({ { "json", "to_json", "from_json" }, { "safetensors", "to_safetensors", "from_safetensors" } }) do
  local path = dir .. "/graph." .. form[1]
  collectgarbage()
  local base = rss()
  reset_peak()
  local w = seconds(function() g[form[2]](g, path) end)
  local w_peak = peak() - base
  local size = io.open(path, "rb"):seek("end")
  collectgarbage()
  base = rss()
  reset_peak()
  local r = seconds(function() Graph[form[3]](path) end) -- the new graph is dropped at once
  local r_peak = peak() - base
  print(string.format("%s: write %.2f s (peak +%.0f MiB), read %.2f s (peak +%.0f MiB, the new graph included), %.1f MB",
    form[1], w, w_peak, r, r_peak, size / 1e6))
end

-- A neuron-level graph of the same shape writes d_model neuron flags and scores per node too.
do
  local n = Graph.new(g.cfg, { level = "neuron" })
  local count = n.n_forward * n.cfg.d_model
  for i = 0, count - 1 do n.neuron_scores[i] = math.random() - 0.5 end
  local path = dir .. "/neurons.json"
  collectgarbage()
  local base = rss()
  reset_peak()
  local w = seconds(function() n:to_json(path) end)
  local w_peak = peak() - base
  local size = io.open(path, "rb"):seek("end")
  local r = seconds(function() Graph.from_json(path) end)
  print(string.format("json, neuron level (%d neurons): write %.2f s (peak +%.0f MiB), read %.2f s, %.1f MB", count,
    w, w_peak, r, size / 1e6))
  os.remove(path)
end

-- The command line end to end (start-up, read, select, write), as a user runs it: wall time, and
-- the CPU time (user + system) that bash's `times` reports for it, which a busy machine inflates less.
local function timed(cmd)
  local p = io.popen("bash -c \"s=\\$(date +%s.%N); " .. cmd .. " >/dev/null || echo FAILED; " ..
    "echo \\$(date +%s.%N) \\$s; times\"")
  local out = p:read("*a")
  p:close()
  assert(not out:find("FAILED"), "failed: " .. cmd)
  local t1, t0 = out:match("([%d.]+) ([%d.]+)")
  local um, us, sm, ss = out:match("\n(%d+)m([%d.]+)s (%d+)m([%d.]+)s\n*$") -- the children's line
  return tonumber(t1) - tonumber(t0), um * 60 + us + sm * 60 + ss
end
for _, form in ipairs({ "json", "safetensors" }) do
  local w, cpu = timed(string.format("luajit scripts/eapig circuit --graph '%s/graph.%s' --topn 1000 --out '%s/circuit.%s'",
    dir, form, dir, form))
  print(string.format("eapig circuit --topn 1000 from %s: %.2f s wall, %.2f s CPU", form, w, cpu))
end
os.execute("rm -rf '" .. dir .. "'")
