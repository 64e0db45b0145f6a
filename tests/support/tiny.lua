-- Test support: random in-memory models built straight through the C API (no files), so engine
-- tests do not depend on the loaders. Their numbers come from eapig.rng.
local core = require("eapig.core")
local random = require("eapig.rng")
local Model = require("eapig.model")
local ffi, C = core.ffi, core.C

local tiny = {}

local function fill(ptr, n, rng, scale, offset)
  if ptr == nil then return end
  for i = 0, n - 1 do ptr[i] = (offset or 0) + scale * rng:normal() end
end

local PRESETS = {
  gpt2 = { norm = 0, act = 0, pos = 0, heads = 4, kv = 4, bias = true },
  llama = { norm = 1, act = 3, pos = 1, heads = 4, kv = 2, bias = false },
  qwen2 = { norm = 1, act = 3, pos = 1, heads = 4, kv = 1, bias = true },
  neox = { norm = 0, act = 1, pos = 1, heads = 4, kv = 4, bias = true, parallel = true, rot = 4 },
  -- Llama-3.1 RoPE scaling; with d_head 4 its two frequencies fall one into the blend and one
  -- into "divide by factor".
  llama3 = { norm = 1, act = 3, pos = 1, heads = 4, kv = 2, bias = false,
             rope = { type = 1, factor = 8, low = 1, high = 4, ctx = 8 } },
  -- GeGLU, embeddings times sqrt(d_model), multi-query, d_head independent of d_model / heads
  gemma = { norm = 1, act = 4, pos = 1, heads = 4, kv = 1, bias = false, embed_scale = 4, d_head = 6 },
  -- sandwich norms, scores scaled by 0.3 and soft-capped at 1.5, logits capped at 3, a window of
  -- 2 on layer 0 (layer 1 global)
  gemma2 = { norm = 1, act = 4, pos = 1, heads = 4, kv = 2, bias = false, embed_scale = 4, block_norms = 1,
             attn_scale = 0.3, attn_softcap = 1.5, final_softcap = 3, window = 2, period = 2 },
  -- post-norm blocks without pre-norms, RMSNorm over all heads' q and k
  olmo2 = { norm = 1, act = 3, pos = 1, heads = 4, kv = 2, bias = false, block_norms = 2, qk_norm = 1 },
}

-- Builds a finalized model of a preset ("gpt2", "llama", "qwen2", "neox", "llama3", "gemma",
-- "gemma2", "olmo2").
function tiny.model(kind, seed, overrides)
  local p = PRESETS[kind]
  overrides = overrides or {}
  local cfg = ffi.new("eapig_config")
  cfg.n_layers, cfg.n_heads, cfg.n_kv_heads = overrides.layers or 2, p.heads, p.kv
  cfg.n_heads = overrides.heads or p.heads
  cfg.n_kv_heads = overrides.kv_heads or p.kv
  cfg.d_model, cfg.d_head, cfg.d_mlp = overrides.d_model or 16, overrides.d_head or p.d_head or 4,
    overrides.d_mlp or 24
  cfg.vocab, cfg.n_ctx = overrides.vocab or 32, overrides.n_ctx or 16
  cfg.norm, cfg.act, cfg.pos = p.norm, p.act, p.pos
  cfg.rotary_dim = p.rot or cfg.d_head
  cfg.embed_scale = p.embed_scale or 0
  cfg.block_norms, cfg.qk_norm = p.block_norms or 0, p.qk_norm or 0
  cfg.attn_scale, cfg.attn_softcap, cfg.final_softcap = p.attn_scale or 0, p.attn_softcap or 0, p.final_softcap or 0
  cfg.sliding_window, cfg.sliding_period = p.window or 0, p.period or 0
  cfg.parallel_attn_mlp = p.parallel and 1 or 0
  cfg.norm_eps, cfg.rope_theta = 1e-5, 10000
  if p.rope then
    cfg.rope_type, cfg.rope_factor, cfg.rope_original_ctx = p.rope.type, p.rope.factor, p.rope.ctx
    cfg.rope_low_freq_factor, cfg.rope_high_freq_factor = p.rope.low, p.rope.high
  end
  local h = ffi.gc(core.check_ptr(C.eapig_model_new(cfg)), C.eapig_model_free)
  local w = C.eapig_model_weights(h)
  local rng = random.new(seed)
  local D, V, F = cfg.d_model, cfg.vocab, cfg.d_mlp
  local qd, kvd = cfg.n_heads * cfg.d_head, cfg.n_kv_heads * cfg.d_head
  local s = overrides.scale or 0.3
  fill(w.wte, V * D, rng, s); fill(w.wpe, cfg.n_ctx * D, rng, s)
  fill(w.lnf_w, D, rng, 0.2, 1); fill(w.lnf_b, D, rng, 0.2)
  fill(w.w_unembed, V * D, rng, s)
  for l = 0, cfg.n_layers - 1 do
    local lw = w.layers[l]
    fill(lw.ln1_w, D, rng, 0.2, 1); fill(lw.ln2_w, D, rng, 0.2, 1)
    fill(lw.wq, qd * D, rng, s); fill(lw.wk, kvd * D, rng, s); fill(lw.wv, kvd * D, rng, s)
    fill(lw.wo, D * qd, rng, s); fill(lw.w_in, F * D, rng, s); fill(lw.w_out, D * F, rng, s)
    fill(lw.w_gate, F * D, rng, s)
    -- post-norm and q/k norm gains (NULL, drawing nothing, in the other presets)
    fill(lw.attn_post_w, D, rng, 0.2, 1); fill(lw.mlp_post_w, D, rng, 0.2, 1)
    fill(lw.q_norm_w, qd, rng, 0.2, 1); fill(lw.k_norm_w, kvd, rng, 0.2, 1)
    if p.bias then
      fill(lw.ln1_b, D, rng, 0.2); fill(lw.ln2_b, D, rng, 0.2)
      fill(lw.bq, qd, rng, 0.2); fill(lw.bk, kvd, rng, 0.2); fill(lw.bv, kvd, rng, 0.2)
      fill(lw.bo, D, rng, 0.2); fill(lw.b_in, F, rng, 0.2); fill(lw.b_out, D, rng, 0.2)
    end
  end
  core.check(C.eapig_model_finalize(h))
  return Model.new(h, { family = kind })
end

-- A right-padded batch of random tokens with the given lengths (drawn by eapig.rng's algorithm,
-- default splitmix64).
function tiny.batch(model, lengths, seed, algorithm)
  local rng = random.new(seed, algorithm)
  local B, P = #lengths, 0
  for _, n in ipairs(lengths) do P = math.max(P, n) end
  local tokens, lens = core.int32s(B * P), core.int32s(B)
  for b = 0, B - 1 do
    lens[b] = lengths[b + 1]
    for p = 0, lengths[b + 1] - 1 do tokens[b * P + p] = rng:below(model.vocab) end
  end
  return { tokens = tokens, lengths = lens, B = B, P = P }
end

-- Same lengths, tokens redrawn at a few positions (a corrupted input).
function tiny.corrupt(model, batch, seed)
  local rng = random.new(seed)
  local tokens = core.int32s(batch.B * batch.P)
  ffi.copy(tokens, batch.tokens, ffi.sizeof("int32_t") * batch.B * batch.P)
  for b = 0, batch.B - 1 do
    for p = 0, batch.lengths[b] - 1 do
      if rng:uniform() < 0.5 then tokens[b * batch.P + p] = rng:below(model.vocab) end
    end
  end
  return { tokens = tokens, lengths = batch.lengths, B = batch.B, P = batch.P }
end

-- n rows (plain tables, for eapig.data.from_rows) of `positions` tokens drawn from seed (a number)
-- or an eapig.rng: every corrupted token drawn apart from the clean one, then correct and
-- incorrect.
function tiny.rows(model, seed, n, positions)
  local rng = type(seed) == "number" and random.new(seed) or seed
  local rows = {}
  for i = 1, n do
    local clean, corrupted = {}, {}
    for p = 1, positions do
      clean[p] = rng:below(model.vocab)
      corrupted[p] = rng:below(model.vocab)
    end
    rows[i] = { clean = clean, corrupted = corrupted, correct = rng:below(model.vocab),
      incorrect = rng:below(model.vocab) }
  end
  return rows
end

-- A Dataset of n rows of `positions` tokens for a tiny model, drawn from seed: each corrupted
-- token redrawn with probability 1/2, incorrect = (a draw in [1, vocab) + row) mod vocab.
function tiny.dataset(model, n, seed, positions)
  local rng = random.new(seed)
  local rows = {}
  for i = 1, n do
    local clean, corrupted = {}, {}
    for p = 1, positions do
      clean[p] = rng:below(model.vocab)
      corrupted[p] = rng:uniform() < 0.5 and rng:below(model.vocab) or clean[p]
    end
    rows[i] = { clean = clean, corrupted = corrupted, correct = rng:below(model.vocab),
      incorrect = (rng:below(model.vocab - 1) + 1 + i) % model.vocab }
  end
  return require("eapig.data").from_rows(rows, { vocab = model.vocab })
end

function tiny.last_pos(batch)
  local pos = core.int32s(batch.B)
  for b = 0, batch.B - 1 do pos[b] = batch.lengths[b] - 1 end
  return pos
end

-- What the engine and score specs start from: a tiny model (overrides as tiny.model), a clean
-- batch of the given lengths (seed + 1) and a corrupted one (seed + 2), both run with their
-- activations captured (cap_c, cap_r; logits_c, logits_r at the last positions), diff =
-- cap_r - cap_c, the weights c of a random linear metric on the logits (seed + 3) and the mask of
-- real edges. Fields: m, batch, corr, pos, n (floats per capture), cap_c, cap_r, diff, logits_c,
-- logits_r, c, mask.
function tiny.clean_corrupted(kind, seed, lengths, overrides)
  local m = tiny.model(kind, seed, overrides)
  local batch = tiny.batch(m, lengths, seed + 1)
  local corr = tiny.corrupt(m, batch, seed + 2)
  local pos = tiny.last_pos(batch)
  local n = m.n_forward * m:block_size(batch.B, batch.P)
  local t = { m = m, batch = batch, corr = corr, pos = pos, n = n }
  t.cap_c, t.cap_r, t.diff = core.floats(n), core.floats(n), core.floats(n)
  t.logits_c = m:forward(batch, { logit_pos = pos, capture = t.cap_c })
  t.logits_r = m:forward(corr, { logit_pos = pos, capture = t.cap_r })
  for i = 0, n - 1 do t.diff[i] = t.cap_r[i] - t.cap_c[i] end
  local rng = random.new(seed + 3)
  t.c = core.floats(batch.B * m.vocab)
  for i = 0, batch.B * m.vocab - 1 do t.c[i] = rng:normal() end
  t.mask = core.bytes(m.n_forward * m.n_backward)
  core.check(C.eapig_model_edge_mask(m.handle, t.mask))
  return t
end

-- The bytes of a small llama2.c checkpoint: dim 8, hidden 12, 1 layer, 2 heads, 1 kv head, vocab
-- 5 (untied: negative in the header), seq_len 3; the weights 0.01 * (i % 7) in file order. The
-- weights start at byte 28, wk at float 40 + 8 + 64.
function tiny.llama2c_bytes()
  local header = ffi.new("int32_t[7]", { 8, 12, 1, 2, 1, -5, 3 })
  local total = 40 + 8 + 64 + 32 + 32 + 64 + 8 + 96 * 3 + 8 + 6 + 6 + 40
  local values = ffi.new("float[?]", total)
  for i = 0, total - 1 do values[i] = 0.01 * (i % 7) end
  return ffi.string(header, 28) .. ffi.string(values, 4 * total)
end

-- x rounded to float32.
local f32_box = ffi.new("float[1]")
function tiny.f32(x)
  f32_box[0] = x
  return f32_box[0]
end

-- Largest |a[i] - b[i]| over n numbers.
function tiny.max_abs_diff(a, b, n)
  local d = 0
  for i = 0, n - 1 do d = math.max(d, math.abs(a[i] - b[i])) end
  return d
end

return tiny
