-- Benchmark (not a test): forward, forward+backward and score accumulation on a random
-- GPT-2-small-sized model (12 layers, 12 heads, d_model 768, d_mlp 3072, vocab 50257) at
-- B = 8, P = 16, reported in GFLOP/s beside this machine's own sgemm rate, measured here.
-- Run from the repository root: luajit scripts/bench.lua [threads]
package.path = "./lua/?.lua;./lua/?/init.lua;./build/?.lua;./tests/?.lua;" .. package.path
package.cpath = "./build/?.so;" .. package.cpath
local core = require("eapig.core")
local tiny = require("support.tiny")
local C = core.C

local threads = tonumber(arg[1] or "") or C.eapig_get_num_threads()
C.eapig_set_num_threads(threads)

local function now()
  local t = io.popen("date +%s.%N"):read("*l")
  return tonumber(t)
end

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
  local up = 1 + l * (H + 1)
  score_flops = score_flops + 2 * N * D * (up * 3 * H + up + H)
end
score_flops = score_flops + 2 * N * D * NF

local t_fwd = time(function() m:forward(batch, { logit_pos = pos }) end, 3)
local t_cap = time(function() m:forward(batch, { logit_pos = pos, capture = capture }) end, 3)
local t_fb = time(function()
  m:forward(batch, { logit_pos = pos, keep = true })
  m:backward(dlogits)
end, 3)
local t_fbs = time(function()
  m:forward(batch, { logit_pos = pos, keep = true })
  m:backward(dlogits, { diff = diff, scores = scores })
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
line("  of which score accumulation", score_flops, math.max(t_fbs - t_fb, 1e-9))

-- End to end: EAP-IG-inputs (5 steps) over 32 examples of 16 tokens, batch 8, through the Lua API.
local eapig = require("eapig")
local rng = tiny.rng(5)
local rows = {}
for i = 1, 32 do
  local clean, corrupted = {}, {}
  for p = 1, P do
    clean[p] = rng.int(V)
    corrupted[p] = p > P / 2 and rng.int(V) or clean[p]
  end
  rows[i] = { clean = clean, corrupted = corrupted, correct = rng.int(V), incorrect = rng.int(V) }
end
local data = eapig.data.from_rows(rows, { vocab = V })
local graph = eapig.Graph.from_model(m)
local steps = 5
local t_e2e = time(function()
  eapig.attribute(m, graph, data, "logit_diff", { method = "EAP-IG-inputs", ig_steps = steps, batch_size = B,
    quiet = true })
end, 1)
-- Per batch: clean and corrupted forwards, m - 1 step forwards, m backwards, and two score GEMMs
-- (the k = 0 step and the summed steps).
local batches = #rows / B
local e2e_flops = batches * ((steps + 1) * fwd_flops + steps * bwd_flops + 2 * score_flops)
line(("EAP-IG-inputs, %d steps, 32 x %d tokens"):format(steps, P), e2e_flops, t_e2e)
print(("  %.2f s end to end"):format(t_e2e))
