-- Benchmark (not a test): forward, forward+backward and score accumulation on a random
-- GPT-2-small-sized model (12 layers, 12 heads, d_model 768, d_mlp 3072, vocab 50257) at
-- B = 8, P = 16, reported in GFLOP/s beside this machine's own sgemm rate, measured here; then
-- EAP-IG-inputs end to end, loading that model from an f32 checkpoint (time and peak memory),
-- evaluating a circuit, and a 10-size sweep against 10 separate evaluations.
-- Run from the repository root: luajit scripts/bench.lua [threads] [scaling]
-- `scaling` adds a table of one EAP-IG-inputs batch over B in {1, 8, 32}, P in {16, 64},
-- steps in {5, 20} and threads in {1, 2} (minutes, and a few GB of memory at the largest).
package.path = "./lua/?.lua;./lua/?/init.lua;./build/?.lua;./tests/?.lua;" .. package.path
package.cpath = "./build/?.so;" .. package.cpath
local ffi = require("ffi")
local core = require("eapig.core")
local indices = require("eapig.indices")
local random = require("eapig.rng")
local tiny = require("support.tiny")
local C = core.C

local threads = tonumber(arg[1] or "") or C.eapig_get_num_threads()
local scaling = arg[2] == "scaling" or arg[1] == "scaling"
C.eapig_set_num_threads(threads)

local now = require("eapig.progress").now

-- Best of `reps` wall-clock times of fn.
local function time(fn, reps)
  local best = math.huge
  for _ = 1, reps do
    local t0 = now()
    fn()
    best = math.min(best, now() - t0)
  end
  return best
end

-- The machine's sgemm rate on a square product of the size that dominates the model.
local n = 1024
local A, Bm, Cm = core.floats(n * n), core.floats(n * n), core.floats(n * n)
for i = 0, n * n - 1 do A[i], Bm[i] = (i % 7) * 0.1, (i % 5) * 0.1 end
local t_gemm = time(function() C.eapig_sgemm(n, n, n, A, Bm, Cm) end, 5)
local sgemm_rate = 2 * n ^ 3 / t_gemm / 1e9

local L, H, D, F, V, B, P = 12, 12, 768, 3072, 50257, 8, 16
io.stderr:write("building a random GPT-2-small-sized model...\n")
local m = tiny.model("gpt2", 1, { layers = L, heads = H, kv_heads = H, d_model = D, d_head = D / H,
  d_mlp = F, vocab = V, n_ctx = 1024, scale = 0.02 })
local batch = tiny.batch(m, (function() local t = {} for i = 1, B do t[i] = P end return t end)(), 2)
local pos = tiny.last_pos(batch)
local N = B * P
local NF, NB = m.n_forward, m.n_backward
local capture = core.floats(NF * N * D)
local diff = core.floats(NF * N * D)
for i = 0, NF * N * D - 1, 97 do diff[i] = 0.01 end
local dlogits = core.floats(B * V)
for i = 0, B * V - 1, 13 do dlogits[i] = 1e-3 end
local scores = core.floats(NF * NB)

-- FLOP counts of the dense work (2 per multiply-add).
local per_token = 2 * L * (4 * D * D + 2 * D * F)
local attn = 2 * 2 * L * B * H * P * P * (D / H)
local unembed = 2 * B * D * V
local fwd_flops = N * per_token + attn + unembed
local bwd_flops = fwd_flops + attn -- dX only: the same products once more (+ attention's extra one)
local score_flops = 0
for l = 0, L - 1 do
  local up = indices.first_node(H, l)
  score_flops = score_flops + 2 * N * D * (up * 3 * H + up + H)
end
score_flops = score_flops + 2 * N * D * NF

local t_fwd = time(function() m:forward(batch, { logit_pos = pos }) end, 3)
local t_cap = time(function() m:forward(batch, { logit_pos = pos, capture = capture }) end, 3)
local t_fb = time(function()
  m:forward(batch, { logit_pos = pos, keep = true })
  m:backward(dlogits)
end, 3)
-- The score accumulation is timed inside the engine (its products and step sums) in each run;
-- like every phase here, the best of the runs counts (the host's other guests only add time).
local score_stats, best_score = ffi.new("double[2]"), { math.huge, 0 }
local t_fbs = time(function()
  C.eapig_workspace_score_stats(m.workspace, nil, nil, 1)
  m:forward(batch, { logit_pos = pos, keep = true })
  m:backward(dlogits, { diff = diff, scores = scores })
  C.eapig_workspace_score_stats(m.workspace, score_stats, score_stats + 1, 1)
  if score_stats[0] < best_score[1] then best_score = { score_stats[0], score_stats[1] } end
end, 3)

local function line(name, flops, t)
  print(("%-34s %8.1f ms %8.1f GFLOP/s  (%3.0f%% of sgemm)"):format(name, t * 1e3, flops / t / 1e9,
    100 * flops / t / 1e9 / sgemm_rate))
end
print(("machine sgemm (%dx%dx%d, %d threads): %.1f GFLOP/s"):format(n, n, n, threads, sgemm_rate))
print(("model: GPT-2-small shape, B=%d P=%d, %d sources x %d destinations"):format(B, P, NF, NB))
line("forward (logits at last positions)", fwd_flops, t_fwd)
line("forward + capture of every node", fwd_flops, t_cap)
line("forward + backward", fwd_flops + bwd_flops, t_fb)
line("forward + backward + edge scores", fwd_flops + bwd_flops + score_flops, t_fbs)
line("  of which score accumulation", best_score[2], best_score[1])

-- End to end: EAP-IG-inputs (5 steps) over 32 examples of 16 tokens, batch 8, through the Lua API.
local eapig = require("eapig")
local rng = random.new(5)
-- n random rows of p tokens whose second half the corrupted row re-draws.
local function random_data(n_rows, p)
  local rows = {}
  for i = 1, n_rows do
    local clean, corrupted = {}, {}
    for q = 1, p do
      clean[q] = rng:below(V)
      corrupted[q] = q > p / 2 and rng:below(V) or clean[q]
    end
    rows[i] = { clean = clean, corrupted = corrupted, correct = rng:below(V), incorrect = rng:below(V) }
  end
  return eapig.data.from_rows(rows, { vocab = V })
end
local data = random_data(32, P)
local graph = eapig.Graph.from_model(m)
local steps = 5
local t_e2e = time(function()
  eapig.attribute(m, graph, data, "logit_diff", { method = "EAP-IG-inputs", ig_steps = steps, batch_size = B,
    quiet = true })
end, 1)
-- Per batch: clean and corrupted forwards, m - 1 step forwards, m backwards, and two score GEMMs
-- (the k = 0 step and the summed steps).
local batches = #data / B
local e2e_flops = batches * ((steps + 1) * fwd_flops + steps * bwd_flops + 2 * score_flops)
line(("EAP-IG-inputs, %d steps, 32 x %d tokens"):format(steps, P), e2e_flops, t_e2e)
print(("  %.2f s end to end"):format(t_e2e))

-- Circuit evaluation on the same data: one top-200 circuit, then a 10-size sweep (MIB's
-- fractions, with its clean, corrupted and empty baselines) against 10 separate evaluations.
local evaluate = require("eapig.evaluate")
local sweep = require("eapig.sweep")
local function top(k)
  local g = graph:clone()
  g:apply_topn(k, { absolute = true })
  return g
end
local eval_opts = { batch_size = B, quiet = true }
local t_eval = time(function() evaluate.evaluate_graph(m, top(200), data, "logit_diff", eval_opts) end, 1)
local t_sweep = time(function() sweep.run(m, graph, data, "logit_diff", eval_opts) end, 1)
local t_separate = time(function()
  for _, frac in ipairs(sweep.DEFAULT_FRACTIONS) do
    local g = top(sweep.edges_at(frac, graph:n_edges()))
    if g:count_included_edges() > 0 then evaluate.evaluate_graph(m, g, data, "logit_diff", eval_opts) end
  end
end, 1)
print(("evaluate, top-200 circuit, 32 x %d tokens: %.2f s"):format(P, t_eval))
print(("10 circuit sizes: one sweep %.2f s, 10 evaluations %.2f s (%.1fx)"):format(t_sweep, t_separate,
  t_separate / t_sweep))

-- Loading: the same shape saved as an f32 safetensors checkpoint, loaded by a fresh process
-- (its wall time and peak resident memory, as `eapig info` would pay them).
local train = require("eapig.apps.train")
local testing = require("eapig.testing")
local dir = testing.tmpdir()
local raw = train.new_model({ family = "gpt2", layers = L, heads = H, d_model = D, d_mlp = F, vocab = V, n_ctx = 1024 })
train.save_pretrained(raw, dir)
raw:free()
local probe_path = dir .. "/probe.lua"
local probe_file = assert(io.open(probe_path, "wb"))
probe_file:write(([[
package.path = "./lua/?.lua;./lua/?/init.lua;./build/?.lua;" .. package.path
package.cpath = "./build/?.so;" .. package.cpath
local t0 = io.popen("date +%%s.%%N"):read("*l")
require("eapig").load(%q)
local t1 = io.popen("date +%%s.%%N"):read("*l")
print(tonumber(t1) - tonumber(t0), (require("eapig.memory").peak_rss() or 0 / 0) / 2 ^ 20)
]]):format(dir))
probe_file:close()
local probe = io.popen("luajit " .. probe_path)
local load_s, load_mb = probe:read("*n", "*n")
probe:close()
testing.rmtree(dir)
print(("load, GPT-2-small f32 safetensors: %.2f s, peak RSS %.0f MB"):format(load_s or 0 / 0, load_mb or 0 / 0))
local peak = require("eapig.memory").peak_rss()
if peak then print(("this benchmark's peak RSS: %.0f MB"):format(peak / 2 ^ 20)) end

if scaling then
  -- One batch of EAP-IG-inputs (B rows of P tokens, `steps` steps) through the Lua API.
  print("\nscaling: one EAP-IG-inputs batch")
  print(("%7s %3s %4s %6s %10s %10s %9s"):format("threads", "B", "P", "steps", "time", "GFLOP/s", "of sgemm"))
  for _, th in ipairs({ 1, 2 }) do
    C.eapig_set_num_threads(th)
    local rate = 2 * n ^ 3 / time(function() C.eapig_sgemm(n, n, n, A, Bm, Cm) end, 3) / 1e9
    for _, b in ipairs({ 1, 8, 32 }) do
      for _, p in ipairs({ 16, 64 }) do
        for _, k in ipairs({ 5, 20 }) do
          local sdata = random_data(b, p)
          local t = time(function()
            eapig.attribute(m, graph, sdata, "logit_diff", { method = "EAP-IG-inputs", ig_steps = k, batch_size = b,
              quiet = true })
          end, 1)
          local tokens = b * p
          local f_fwd = tokens * per_token + 2 * 2 * L * b * H * p * p * (D / H) + 2 * b * D * V
          local f_bwd = f_fwd + 2 * 2 * L * b * H * p * p * (D / H)
          local f_score = score_flops / N * tokens
          local flops = (k + 1) * f_fwd + k * f_bwd + 2 * f_score
          print(("%7d %3d %4d %6d %8.2f s %10.1f %8.0f%%"):format(th, b, p, k, t, flops / t / 1e9,
            100 * flops / t / 1e9 / rate))
          collectgarbage()
        end
      end
    end
  end
  C.eapig_set_num_threads(threads)
end
