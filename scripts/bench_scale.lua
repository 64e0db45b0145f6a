-- Benchmark (not a test): an 8B-class model on one machine. Writes a Llama-3-8B-shaped random
-- bf16 checkpoint with L layers (d_model 4096, 32 query / 8 key-value heads, d_mlp 14336,
-- vocab 128256) and measures, per phase, wall time and peak resident memory: load, the memory
-- estimate (what `eapig info --memory` prints), attribution (EAP-IG-inputs, 5 steps, 4 rows x 16
-- tokens) with its GFLOP/s beside this machine's sgemm rate measured in the same run, and
-- evaluation of a 1000-edge circuit.
--
-- Run from the repository root:
--   luajit scripts/bench_scale.lua LAYERS [--weights auto|stored|f32] [--memory GIB] [--dir DIR]
--                                  [--threads N] [--compare]
-- --compare then loads the checkpoint again with f32 weights, attributes again and prints the
-- largest score difference (stored and f32 weights must agree to float rounding).
-- The checkpoint is written streaming (never held in memory: 32 layers is a 16 GB file) into
-- --dir (kept, and reused when it already holds a model of that many layers) or a temporary
-- folder (removed at the end). Peak memory per phase is read from /proc/self/status after a
-- reset through /proc/self/clear_refs (Linux).
package.path = "./lua/?.lua;./lua/?/init.lua;./build/?.lua;" .. package.path
package.cpath = "./build/?.so;" .. package.cpath
local core = require("eapig.core")
local random = require("eapig.rng")
local eapig = require("eapig")
local memory = require("eapig.memory")
local testing = require("eapig.testing")
local now = require("eapig.progress").now
local C = core.C

local function usage(msg)
  io.stderr:write((msg and msg .. "\n" or "") ..
    "usage: luajit scripts/bench_scale.lua LAYERS [--weights auto|stored|f32] [--memory GIB] [--dir DIR] [--threads N]"
    .. " [--compare]\n")
  os.exit(2)
end

local args = { weights = "auto" }
do
  local i = 1
  while i <= #arg do
    local a = arg[i]
    if a == "--weights" or a == "--memory" or a == "--dir" or a == "--threads" then
      args[a:sub(3)] = arg[i + 1] or usage(a .. " needs a value")
      i = i + 2
    elseif a == "--compare" then
      args.compare = true
      i = i + 1
    elseif not args.layers and tonumber(a) then
      args.layers = tonumber(a)
      i = i + 1
    else
      usage("unknown argument " .. a)
    end
  end
end
local L = args.layers or usage()
if L < 1 or L % 1 ~= 0 then usage("LAYERS must be a positive integer") end
if args.threads then C.eapig_set_num_threads(tonumber(args.threads)) end
local budget_gib = args.memory and tonumber(args.memory)

local SHAPE = { family = "llama", layers = L, heads = 32, kv_heads = 8, d_model = 4096, d_head = 128,
  d_mlp = 14336, vocab = 128256, n_ctx = 8192, rope_theta = 500000.0, dtype = "BF16", scale = 0.02 }
local D, H, KV, Dh, F, V = SHAPE.d_model, SHAPE.heads, SHAPE.kv_heads, SHAPE.d_head, SHAPE.d_mlp, SHAPE.vocab
local B, P, STEPS = 4, 16, 5

local function log(fmt, ...) io.stdout:write(fmt:format(...), "\n") io.stdout:flush() end
local function gib(bytes) return memory.format(bytes) end

-- Runs fn as a phase: wall time and peak resident memory (reset first).
local results = {}
local function phase(name, fn)
  collectgarbage()
  memory.reset_peak()
  local t0 = now()
  local out = { fn() }
  local r = { name = name, seconds = now() - t0, peak = memory.peak_rss() or 0, rss = memory.rss() or 0 }
  results[#results + 1] = r
  log("phase %-10s %9.2f s   peak RSS %10s   RSS after %10s", name, r.seconds, gib(r.peak), gib(r.rss))
  return unpack(out)
end

-- This machine's sgemm rate on the products that dominate the run: (tokens, 4096) x (4096, 14336).
local function sgemm_rate()
  local M, N, K = 256, F, D
  local A, Bm, Cm = core.floats(M * K), core.floats(K * N), core.floats(M * N)
  for i = 0, M * K - 1 do A[i] = (i % 7) * 0.01 end
  for i = 0, K * N - 1 do Bm[i] = (i % 5) * 0.01 end
  local best = math.huge
  for _ = 1, 3 do
    local t0 = now()
    C.eapig_sgemm(M, N, K, A, Bm, Cm)
    best = math.min(best, now() - t0)
  end
  return 2 * M * N * K / best / 1e9
end

local function file_bytes(dir)
  local total = 0
  local p = io.popen("ls " .. dir .. "/*.safetensors")
  for path in p:lines() do
    local f = io.open(path, "rb")
    total = total + f:seek("end")
    f:close()
  end
  p:close()
  return total
end

local function existing_layers(dir)
  local f = io.open(dir .. "/config.json", "rb")
  if not f then return nil end
  local cfg = require("cjson").decode(f:read("*a"))
  f:close()
  return cfg.num_hidden_layers
end

log("bench_scale: Llama-3-8B shape, %d layers, bf16; %d rows x %d tokens, EAP-IG-inputs %d steps; %d BLAS threads",
  L, B, P, STEPS, C.eapig_get_num_threads())
log("machine memory %s; memory budget %s", gib(memory.machine_bytes() or 0), gib(memory.budget(budget_gib)))
local rate = sgemm_rate()
log("sgemm (256 x 4096 x 14336): %.1f GFLOP/s", rate)

local dir, temporary = args.dir, args.dir == nil
if temporary then dir = testing.tmpdir() end
if existing_layers(dir) == L then
  log("reusing the checkpoint in %s", dir)
else
  if not temporary then require("eapig.formats.files").mkdir_p(dir, "--dir") end
  SHAPE.dir, SHAPE.shards = dir, math.max(1, math.ceil(L / 8))
  phase("write", function() testing.random_model(SHAPE) end)
end
local file = file_bytes(dir)
log("checkpoint %s: %s in %d shard(s)", dir, gib(file), math.max(1, math.ceil(L / 8)))

local model = phase("load", function() return eapig.load(dir, { weights = args.weights, memory = budget_gib }) end)
local layer_f32 = tonumber(C.eapig_weights_view_bytes(model.cfg))
log("weights: %s (%s)", model.weights, model.weights_why or "")
log("RSS after load %s; file + one layer in f32 = %s (x1.1 = %s)", gib(results[#results].rss),
  gib(file + layer_f32), gib(1.1 * (file + layer_f32)))

-- The estimate `eapig info --memory --batch-size 4 --seq-len 16` prints.
local e
phase("estimate", function()
  local opts = { B = B, P = P, method = "EAP-IG-inputs", steps = STEPS }
  local n = memory.steps_per_run(model, opts, memory.budget(budget_gib))
  opts.steps_per_run = n or 1
  e = memory.estimate(model, opts)
end)
log("estimate: weights %s, activations %s, scores %s, total %s (%d steps per run)", gib(e.weights),
  gib(e.activations), gib(e.scores), gib(e.total), e.steps_per_run)

-- 4 rows of 16 random tokens; the corruption changes two positions.
local rows, rng = {}, random.new(7)
local function token() return math.floor(math.abs(rng:normal()) * 1e6) % V end
for i = 1, B do
  local clean, corrupted = {}, {}
  for p = 1, P do
    clean[p] = token()
    corrupted[p] = (p == 4 or p == 9) and token() or clean[p]
  end
  rows[i] = { clean = clean, corrupted = corrupted, correct = token(), incorrect = token() }
end
local data = eapig.data.from_rows(rows)
local graph = eapig.Graph.from_model(model)

phase("attribute", function()
  eapig.attribute(model, graph, data, "logit_diff", { method = "EAP-IG-inputs", ig_steps = STEPS, batch_size = B,
    memory = budget_gib, quiet = true })
end)
local t_attr = results[#results].seconds

-- FLOPs of the dense work (2 per multiply-add). Forward per token: q, k, v, o, gate, up, down;
-- attention's two products; the unembedding on B rows. The activation backward does the same
-- products once (dX only) plus attention's extra one. EAP-IG-inputs runs 1 + STEPS forwards (clean,
-- corrupted, STEPS - 1 steps) and STEPS backwards; scores cost 2 x tokens x D per edge per
-- backward call (1 + the batched calls).
local N = B * P
local dense = 2 * L * (D * H * Dh + 2 * D * KV * Dh + H * Dh * D + 3 * D * F)
local attn = 2 * 2 * L * B * H * P * P * Dh
local fwd = N * dense + attn + 2 * B * D * V
local bwd = fwd + attn
local calls = 1 + math.ceil((STEPS - 1) / e.steps_per_run)
local flops = (1 + STEPS) * fwd + STEPS * bwd + calls * 2 * N * D * graph:n_edges()
log("attribution: %.1f GFLOP in %.2f s = %.1f GFLOP/s (sgemm %.1f GFLOP/s: %.0f%%)", flops / 1e9, t_attr,
  flops / 1e9 / t_attr, rate, 100 * flops / 1e9 / t_attr / rate)

graph:apply_topn(1000)
local values = phase("evaluate", function() return eapig.evaluate_graph(model, graph, data, "logit_diff", { quiet = true }) end)
local t_eval = results[#results].seconds
log("evaluation of a %d-edge circuit: %.1f GFLOP/s (two forwards)", graph:count_included_edges(),
  2 * fwd / 1e9 / t_eval)
log("circuit logit_diff (mean over %d rows): %.4f", #values, require("eapig.evaluate").mean(values))

if args.compare then
  -- the same attribution with the other weights: the scores must agree to float rounding
  local other = model.weights == "stored" and "f32" or "stored"
  local n = model.n_forward * model.n_backward
  local first = core.floats(n) -- the attribution above (selection and pruning leave scores alone)
  for i = 0, n - 1 do first[i] = graph.scores[i] end
  model:free()
  model = phase("load " .. other, function() return eapig.load(dir, { weights = other, memory = budget_gib }) end)
  local g2 = eapig.Graph.from_model(model)
  phase("attr " .. other, function()
    eapig.attribute(model, g2, data, "logit_diff", { method = "EAP-IG-inputs", ig_steps = STEPS, batch_size = B,
      memory = budget_gib, quiet = true })
  end)
  local d, m = 0, 0
  for i = 0, n - 1 do
    d = math.max(d, math.abs(first[i] - g2.scores[i]))
    m = math.max(m, math.abs(first[i]))
  end
  log("stored vs f32 weights: largest score difference %.3g (largest score %.3g, relative %.3g)", d, m, d / m)
end

log("")
log("%-10s %10s %12s", "phase", "time (s)", "peak RSS")
for _, r in ipairs(results) do log("%-10s %10.2f %12s", r.name, r.seconds, gib(r.peak)) end
model:free()
if temporary then testing.rmtree(dir) end
