-- Checkpoint loading (lua/eapig/formats/load.lua, safetensors.lua, testing.lua): every family round-trips
-- from a random checkpoint, F16/BF16 and sharded checkpoints load, the shared fixtures and
-- stories260K load, and every kind of bad input is a Lua error naming the file and the field.
local ffi = require("ffi")
local cjson = require("cjson")
local core = require("eapig.core")
local load = require("eapig.formats.load")
local safetensors = require("eapig.formats.safetensors")
local testing = require("eapig.testing")

local C = core.C

local function weights(model)
  return C.eapig_model_weights(model.handle)
end

local function floats(n)
  return ffi.new("float[?]", n)
end

-- Reads a stored tensor in its stored layout: (shape[1], shape[2]) or a vector.
local function stored(dir, name, file)
  local r = safetensors.open(dir .. "/" .. (file or "model.safetensors"))
  local shape = r:info(name).shape
  local rows, cols = shape[1], shape[2] or 1
  local buf = floats(rows * cols)
  r:read_into(name, buf, rows, cols)
  r:close()
  return buf, rows, cols
end

local max_diff = require("support.tiny").max_abs_diff

-- Every weight slot of a model with its float count, for whole-model comparisons.
local function slots(info)
  local D, F, V = info.d_model, info.d_mlp, info.vocab
  local QD, KVD = info.n_heads * info.d_head, info.n_kv_heads * info.d_head
  local global = { wte = V * D, lnf_w = D, lnf_b = D, w_unembed = V * D }
  if info.pos == "learned" then global.wpe = info.n_ctx * D end
  local layer = { ln1_w = D, ln1_b = D, wq = QD * D, bq = QD, wk = KVD * D, bk = KVD, wv = KVD * D, bv = KVD,
                  wo = D * QD, bo = D, ln2_w = D, ln2_b = D, w_in = F * D, b_in = F, w_out = D * F, b_out = D }
  if info.act == "silu_gated" or info.act == "gelu_tanh_gated" then layer.w_gate = F * D end
  return global, layer
end

-- Calls fn(label, pointer_a, pointer_b, n) for every slot of two models of the same shape.
local function each_slot(a, b, fn)
  local global, layer = slots(a.info)
  local wa, wb = weights(a), weights(b)
  for name, n in pairs(global) do fn(name, wa[name], wb[name], n) end
  for l = 0, a.info.n_layers - 1 do
    for name, n in pairs(layer) do fn(name .. "[" .. l .. "]", wa.layers[l][name], wb.layers[l][name], n) end
  end
end

local function assert_same_models(a, b)
  each_slot(a, b, function(label, pa, pb, n) assert.are.equal(0, max_diff(pa, pb, n), label) end)
end

local error_of = require("support.errors").error_of

-- Asserts the message names every given piece (the file, the field or the tensor).
local function assert_names(msg, ...)
  for _, piece in ipairs({ ... }) do
    assert.truthy(msg:find(piece, 1, true), "error '" .. msg .. "' does not name '" .. piece .. "'")
  end
end

local tmp
setup(function() tmp = testing.tmpdir() end)
teardown(function() testing.rmtree(tmp) end)

local function model_dir(name, opts)
  local dir = tmp .. "/" .. name
  os.execute("mkdir -p '" .. dir .. "'")
  opts.dir = dir
  return testing.random_model(opts)
end

describe("random checkpoints round-trip through the loader", function()
  it("gpt2: Conv1D transposed, c_attn split into q, k, v, tied, learned positions", function()
    local dir = model_dir("gpt2", { family = "gpt2", seed = 3 })
    local m = load.load(dir, { finalize = false })
    local info, w = m.info, weights(m)
    assert.are.same({ "gpt2", 2, 4, 4, 32, 8, 128, 64, 128, false, "layernorm", "gelu_tanh", "learned", true },
      { info.family, info.n_layers, info.n_heads, info.n_kv_heads, info.d_model, info.d_head, info.d_mlp,
        info.vocab, info.n_ctx, info.parallel_attn_mlp, info.norm, info.act, info.pos, info.tied })
    local D, F = 32, 128
    local attn = stored(dir, "h.1.attn.c_attn.weight") -- (D, 3D), (in, out)
    local bias = stored(dir, "h.1.attn.c_attn.bias")
    local lw = w.layers[1]
    for r = 0, D - 1 do
      for c = 0, D - 1 do
        assert.are.equal(attn[c * 3 * D + r], lw.wq[r * D + c])
        assert.are.equal(attn[c * 3 * D + D + r], lw.wk[r * D + c])
        assert.are.equal(attn[c * 3 * D + 2 * D + r], lw.wv[r * D + c])
      end
      assert.are.same({ bias[r], bias[D + r], bias[2 * D + r] }, { lw.bq[r], lw.bk[r], lw.bv[r] })
    end
    local fc = stored(dir, "h.1.mlp.c_fc.weight") -- (D, F)
    for r = 0, F - 1 do
      for c = 0, D - 1 do assert.are.equal(fc[c * F + r], lw.w_in[r * D + c]) end
    end
    local proj = stored(dir, "h.0.mlp.c_proj.weight") -- (F, D)
    for r = 0, D - 1 do
      for c = 0, F - 1 do assert.are.equal(proj[c * D + r], w.layers[0].w_out[r * F + c]) end
    end
    assert.are.equal(0, max_diff(stored(dir, "wpe.weight"), w.wpe, 128 * D))
    assert.are.equal(0, max_diff(stored(dir, "ln_f.bias"), w.lnf_b, D))
    assert.are.equal(0, max_diff(w.wte, w.w_unembed, 64 * D))
  end)

  it("gpt2: names with the transformer. prefix load the same weights", function()
    local plain = load.load(model_dir("gpt2-plain", { family = "gpt2", seed = 5 }))
    local prefixed = load.load(model_dir("gpt2-prefixed", { family = "gpt2", seed = 5, prefix = "transformer." }))
    assert_same_models(plain, prefixed)
  end)

  it("gpt2: an untied lm_head is read, and finalize centres the embedding rows tokens read", function()
    local dir = model_dir("gpt2-untied", { family = "gpt2", tied = false, seed = 9 })
    local m = load.load(dir)
    assert.is_false(m.info.tied)
    assert.are.equal(0, max_diff(stored(dir, "lm_head.weight"), weights(m).w_unembed, 64 * 32))
    assert.are.equal(0, max_diff(stored(dir, "wte.weight"), weights(m).wte, 64 * 32)) -- the table as stored
    local model = require("eapig").Model.new(m.handle, m.info, m)
    local row = ffi.new("float[?]", model.n_forward * 32)
    model:forward({ tokens = ffi.new("int32_t[1]", 5), lengths = ffi.new("int32_t[1]", 1), B = 1, P = 1 },
      { capture = row }) -- node 0, the input, is token 5's embedding row
    local mean, raw = 0, 0
    for i = 0, 31 do mean, raw = mean + row[i], raw + weights(m).wte[5 * 32 + i] end
    assert.is_true(math.abs(mean / 32) < 1e-6)
    assert.is_true(math.abs(raw / 32) > 1e-4) -- so the check above saw the centring
    model:free()
  end)

  it("llama with grouped-query attention: names, shapes and an untied head", function()
    local dir = model_dir("llama", { family = "llama", heads = 4, kv_heads = 2, seed = 4 })
    local m = load.load(dir) -- RMSNorm and no biases: finalize changes nothing
    local info, w = m.info, weights(m)
    assert.are.same({ "llama", 4, 2, 8, 64, "rmsnorm", "silu_gated", "rope", 8, 10000, false },
      { info.family, info.n_heads, info.n_kv_heads, info.d_head, info.d_mlp, info.norm, info.act, info.pos,
        info.rotary_dim, info.rope_theta, info.tied })
    local p = "model.layers.1."
    local lw = w.layers[1]
    assert.are.equal(0, max_diff(stored(dir, p .. "self_attn.q_proj.weight"), lw.wq, 32 * 32))
    assert.are.equal(0, max_diff(stored(dir, p .. "self_attn.k_proj.weight"), lw.wk, 16 * 32))
    assert.are.equal(0, max_diff(stored(dir, p .. "self_attn.v_proj.weight"), lw.wv, 16 * 32))
    assert.are.equal(0, max_diff(stored(dir, p .. "self_attn.o_proj.weight"), lw.wo, 32 * 32))
    assert.are.equal(0, max_diff(stored(dir, p .. "mlp.gate_proj.weight"), lw.w_gate, 64 * 32))
    assert.are.equal(0, max_diff(stored(dir, p .. "mlp.up_proj.weight"), lw.w_in, 64 * 32))
    assert.are.equal(0, max_diff(stored(dir, p .. "mlp.down_proj.weight"), lw.w_out, 32 * 64))
    assert.are.equal(0, max_diff(stored(dir, p .. "input_layernorm.weight"), lw.ln1_w, 32))
    assert.are.equal(0, max_diff(stored(dir, p .. "post_attention_layernorm.weight"), lw.ln2_w, 32))
    assert.are.equal(0, max_diff(stored(dir, "model.norm.weight"), w.lnf_w, 32))
    assert.are.equal(0, max_diff(stored(dir, "lm_head.weight"), w.w_unembed, 64 * 32))
    assert.is_true(max_diff(w.wte, w.w_unembed, 64 * 32) > 0)
  end)

  it("llama with attention_bias reads q, k, v and o biases", function()
    local dir = model_dir("llama-bias", { family = "llama", qkv_bias = true, seed = 6 })
    local m = load.load(dir, { finalize = false })
    local lw = weights(m).layers[0]
    assert.are.equal(0, max_diff(stored(dir, "model.layers.0.self_attn.k_proj.bias"), lw.bk, 32))
    assert.are.equal(0, max_diff(stored(dir, "model.layers.0.self_attn.o_proj.bias"), lw.bo, 32))
  end)

  it("qwen2: q/k/v biases, tied head; finalize folds the value bias into bo", function()
    local dir = model_dir("qwen2", { family = "qwen2", kv_heads = 1, seed = 7 })
    local raw = load.load(dir, { finalize = false })
    local fin = load.load(dir)
    assert.are.same({ "qwen2", 1, true }, { fin.info.family, fin.info.n_kv_heads, fin.info.tied })
    local lr, lf = weights(raw).layers[1], weights(fin).layers[1]
    assert.are.equal(0, max_diff(stored(dir, "model.layers.1.self_attn.q_proj.bias"), lr.bq, 32))
    assert.are.equal(0, max_diff(stored(dir, "model.layers.1.self_attn.v_proj.bias"), lr.bv, 8))
    assert.are.equal(0, max_diff(weights(fin).wte, weights(fin).w_unembed, 64 * 32))
    for i = 0, 31 do
      local folded = 0 -- every query head reads the single kv head's value bias
      for j = 0, 31 do folded = folded + lr.wo[i * 32 + j] * lr.bv[j % 8] end
      assert.is_true(math.abs(lf.bo[i] - folded) < 1e-5)
    end
    assert.are.equal(0, max_diff(lf.bv, floats(8), 8))
  end)

  it("llama3 rope_scaling: the config's factors reach the model", function()
    local scaling = { rope_type = "llama3", factor = 8, low_freq_factor = 1, high_freq_factor = 4,
                      original_max_position_embeddings = 64 }
    local m = load.load(model_dir("llama3", { family = "llama", rope_scaling = scaling }))
    local cfg = m.handle and C.eapig_model_config(m.handle)
    assert.are.same({ C.EAPIG_ROPE_LLAMA3, 8, 1, 4, 64 }, { cfg.rope_type, cfg.rope_factor, cfg.rope_low_freq_factor,
      cfg.rope_high_freq_factor, cfg.rope_original_ctx })
    local plain = load.load(model_dir("llama3-default", { family = "llama", rope_scaling = { rope_type = "default" } }))
    assert.are.equal(C.EAPIG_ROPE_DEFAULT, C.eapig_model_config(plain.handle).rope_type)
  end)

  it("gemma: norms stored as w load as 1 + w, GeGLU, tied, head_dim of its own, scaled embedding", function()
    local dir = model_dir("gemma", { family = "gemma", heads = 4, kv_heads = 1, d_head = 12, seed = 9 })
    local m = load.load(dir)
    local info, w = m.info, weights(m)
    assert.are.same({ "gemma", 4, 1, 12, "rmsnorm", "gelu_tanh_gated", 12, true },
      { info.family, info.n_heads, info.n_kv_heads, info.d_head, info.norm, info.act, info.rotary_dim, info.tied })
    local cfg = C.eapig_model_config(m.handle)
    assert.are.equal(ffi.new("float", math.sqrt(32)), cfg.embed_scale)
    local p, lw = "model.layers.1.", w.layers[1]
    local function plus_one(name, ptr, n)
      local s = stored(dir, name)
      for i = 0, n - 1 do assert.are.equal(ffi.new("float", s[i] + 1), ptr[i]) end
    end
    plus_one(p .. "input_layernorm.weight", lw.ln1_w, 32)
    plus_one(p .. "post_attention_layernorm.weight", lw.ln2_w, 32)
    plus_one("model.norm.weight", w.lnf_w, 32)
    assert.are.equal(0, max_diff(stored(dir, p .. "self_attn.q_proj.weight"), lw.wq, 48 * 32))
    assert.are.equal(0, max_diff(stored(dir, p .. "self_attn.k_proj.weight"), lw.wk, 12 * 32))
    assert.are.equal(0, max_diff(stored(dir, p .. "mlp.gate_proj.weight"), lw.w_gate, 64 * 32))
    assert.are.equal(0, max_diff(stored(dir, p .. "mlp.up_proj.weight"), lw.w_in, 64 * 32))
    -- the stored embedding is the unembedding; the scale is applied when tokens are embedded
    assert.are.equal(0, max_diff(stored(dir, "model.embed_tokens.weight"), w.wte, 64 * 32))
    assert.are.equal(0, max_diff(w.wte, w.w_unembed, 64 * 32))
  end)

  it("gemma2: sandwich norms as 1 + w, scale, soft-caps, windows from layer_types", function()
    local dir = model_dir("gemma2", { family = "gemma2", layers = 4, kv_heads = 2, query_pre_attn_scalar = 16,
      attn_softcap = 2.5, final_softcap = 8, sliding_window = 4, seed = 10 })
    local m = load.load(dir)
    local cfg, w = C.eapig_model_config(m.handle), weights(m)
    assert.are.same({ "gemma2", true, "gelu_tanh_gated" }, { m.info.family, m.info.tied, m.info.act })
    assert.are.same({ C.EAPIG_BLOCK_SANDWICH, 0, 2.5, 8, 4, 2 }, { cfg.block_norms, cfg.qk_norm, cfg.attn_softcap,
      cfg.final_softcap, cfg.sliding_window, cfg.sliding_period })
    assert.are.equal(ffi.new("float", 0.25), cfg.attn_scale)
    assert.are.equal(ffi.new("float", math.sqrt(32)), cfg.embed_scale)
    local p, lw = "model.layers.2.", w.layers[2]
    for name, ptr in pairs({ ["input_layernorm"] = lw.ln1_w, ["post_attention_layernorm"] = lw.attn_post_w,
                             ["pre_feedforward_layernorm"] = lw.ln2_w, ["post_feedforward_layernorm"] = lw.mlp_post_w }) do
      local s = stored(dir, p .. name .. ".weight")
      for i = 0, 31 do assert.are.equal(ffi.new("float", s[i] + 1), ptr[i], name) end
    end
    assert.is_true(lw.q_norm_w == nil)
    -- layer_types: a period with its global layer last; null soft-caps are off
    local alt = load.load(model_dir("gemma2-types", { family = "gemma2", layers = 6, attn_softcap = false,
      final_softcap = false, layer_types = { "sliding_attention", "sliding_attention", "full_attention",
        "sliding_attention", "sliding_attention", "full_attention" } }))
    local ac = C.eapig_model_config(alt.handle)
    assert.are.same({ 3, 0, 0 }, { ac.sliding_period, ac.attn_softcap, ac.final_softcap })
  end)

  it("olmo2: post-norms only, q and k norms over the whole projections, untied", function()
    local dir = model_dir("olmo2", { family = "olmo2", kv_heads = 2, seed = 11 })
    local m = load.load(dir)
    local cfg, w = C.eapig_model_config(m.handle), weights(m)
    assert.are.same({ "olmo2", false, "silu_gated", C.EAPIG_BLOCK_POST_NORM, 1, 0 },
      { m.info.family, m.info.tied, m.info.act, cfg.block_norms, cfg.qk_norm, cfg.embed_scale })
    local p, lw = "model.layers.1.", w.layers[1]
    assert.are.equal(0, max_diff(stored(dir, p .. "self_attn.q_norm.weight"), lw.q_norm_w, 32))
    assert.are.equal(0, max_diff(stored(dir, p .. "self_attn.k_norm.weight"), lw.k_norm_w, 16))
    assert.are.equal(0, max_diff(stored(dir, p .. "post_attention_layernorm.weight"), lw.attn_post_w, 32))
    assert.are.equal(0, max_diff(stored(dir, p .. "post_feedforward_layernorm.weight"), lw.mlp_post_w, 32))
    assert.are.equal(0, max_diff(stored(dir, "lm_head.weight"), w.w_unembed, 64 * 32))
  end)

  it("mistral: the sliding window caps the context", function()
    local m = load.load(model_dir("mistral", { family = "mistral", kv_heads = 2, n_ctx = 8192 }))
    assert.are.same({ "mistral", 4096, 2 }, { m.info.family, m.info.n_ctx, m.info.n_kv_heads })
  end)

  it("gpt_neox: query_key_value split per head, parallel residual, partial rotary", function()
    local dir = model_dir("neox", { family = "gpt_neox", seed = 8 })
    local m = load.load(dir, { finalize = false })
    local info, lw = m.info, weights(m).layers[1]
    assert.are.same({ "gpt_neox", true, 2, "layernorm", "gelu_erf", "rope", false },
      { info.family, info.parallel_attn_mlp, info.rotary_dim, info.norm, info.act, info.pos, info.tied })
    local qkv = stored(dir, "gpt_neox.layers.1.attention.query_key_value.weight") -- rows [H, 3, Dh]
    local bias = stored(dir, "gpt_neox.layers.1.attention.query_key_value.bias")
    local D, Dh = 32, 8
    for h = 0, 3 do
      for e = 0, Dh - 1 do
        local row = h * Dh + e
        for t, slot in ipairs({ "wq", "wk", "wv" }) do
          local src = (h * 3 + t - 1) * Dh + e
          for c = 0, D - 1 do assert.are.equal(qkv[src * D + c], lw[slot][row * D + c]) end
          assert.are.equal(bias[src], lw[({ "bq", "bk", "bv" })[t]][row])
        end
      end
    end
    assert.are.equal(0, max_diff(stored(dir, "gpt_neox.layers.1.attention.dense.weight"), lw.wo, D * D))
    assert.are.equal(0, max_diff(stored(dir, "gpt_neox.layers.1.mlp.dense_4h_to_h.bias"), lw.b_out, D))
    assert.are.equal(0, max_diff(stored(dir, "embed_out.weight"), weights(m).w_unembed, 64 * D))
  end)

  it("the same seed writes the same model; another seed does not", function()
    local a = load.load(model_dir("seed-a", { family = "llama", seed = 11 }))
    local b = load.load(model_dir("seed-b", { family = "llama", seed = 11 }))
    local c = load.load(model_dir("seed-c", { family = "llama", seed = 12 }))
    assert_same_models(a, b)
    assert.is_true(max_diff(weights(a).wte, weights(c).wte, 64 * 32) > 0)
  end)

  it("weights are N(0, scale^2) and norm weights 1 + N(0, scale^2)", function()
    local dir = model_dir("stats", { family = "llama", vocab = 1024, seed = 2, scale = 0.5 })
    -- Keep the model referenced: w points into it, and a collected model frees (or unmaps) it.
    local model = load.load(dir)
    local w = weights(model)
    local n, sum, sq = 1024 * 32, 0, 0
    for i = 0, n - 1 do sum, sq = sum + w.wte[i], sq + w.wte[i] ^ 2 end
    assert.is_true(math.abs(sum / n) < 0.02 and math.abs(math.sqrt(sq / n) - 0.5) < 0.02)
    local norm = 0
    for i = 0, 31 do norm = norm + w.layers[0].ln1_w[i] end
    assert.is_true(math.abs(norm / 32 - 1) < 0.3)
    C.eapig_model_free(ffi.gc(model.handle, nil)) -- freed here, after the last read through w
  end)
end)

describe("a tied unembedding", function()
  local function same_pointer(m)
    local w = weights(m)
    return ffi.cast("uintptr_t", w.wte) == ffi.cast("uintptr_t", w.w_unembed)
  end
  local function f32_bytes(m) return tonumber(C.eapig_weights_f32_bytes(C.eapig_model_config(m.handle))) end

  it("is the embedding matrix itself in tied RMSNorm models: one copy, the same logits", function()
    local dir = model_dir("tied-llama", { family = "llama", tied = true, seed = 31 })
    local shared = load.load(dir)
    local apart = load.load(dir, { weights = "stored" }) -- stored weights bind the tensor twice
    assert.is_true(shared.info.tied)
    assert.is_true(same_pointer(shared))
    local V, D = shared.info.vocab, shared.info.d_model
    local train = load.load(dir, { finalize = false })
    assert.is_false(same_pointer(train)) -- training updates the two apart
    assert.are.equal(4 * V * D, f32_bytes(train) - f32_bytes(shared))
    local eapig = require("eapig")
    local a = eapig.Model.new(shared.handle, shared.info, shared)
    local b = eapig.Model.new(apart.handle, apart.info, apart)
    local batch = require("support.tiny").batch(a, { 5, 3 }, 2)
    local la, lb = a:forward(batch), b:forward(batch)
    assert.are.equal(0, max_diff(la, lb, 2 * 5 * V))
    a:free()
    b:free()
    train.handle = nil
  end)

  it("is one copy in LayerNorm models too: embedding rows are centred as they are read", function()
    local dir = model_dir("tied-gpt2", { family = "gpt2", seed = 32 })
    local shared = load.load(dir)
    local apart = load.load(dir, { weights = "stored" })
    assert.is_true(shared.info.tied)
    assert.is_true(same_pointer(shared))
    local V, D = shared.info.vocab, shared.info.d_model
    local train = load.load(dir, { finalize = false })
    assert.are.equal(4 * V * D, f32_bytes(train) - f32_bytes(shared))
    -- the table is not centred in place: it is the checkpoint's embedding, as the unembedding needs
    local w, raw = weights(shared), weights(train)
    assert.are.equal(0, max_diff(w.wte, raw.wte, V * D))
    local eapig = require("eapig")
    local a = eapig.Model.new(shared.handle, shared.info, shared)
    local b = eapig.Model.new(apart.handle, apart.info, apart)
    local batch = require("support.tiny").batch(a, { 5, 3 }, 2)
    local nodes = a.n_forward * 2 * 5 * D
    local ca, cb = ffi.new("float[?]", nodes), ffi.new("float[?]", nodes)
    local la, lb = a:forward(batch, { capture = ca }), b:forward(batch, { capture = cb })
    assert.are.equal(0, max_diff(la, lb, 2 * 5 * V))
    assert.are.equal(0, max_diff(ca, cb, nodes)) -- the input node: centred embedding rows
    -- and centred they are: every captured input row has mean zero
    for r = 0, 2 * 5 - 1 do
      local sum = 0
      for i = 0, D - 1 do sum = sum + ca[r * D + i] end
      assert.is_true(math.abs(sum / D) < 1e-6)
    end
    a:free()
    b:free()
    train.handle = nil
  end)

  it("refuses weight gradients on a model that shares it", function()
    local m = load.load(model_dir("tied-llama", { family = "llama", tied = true, seed = 31 }))
    local eapig = require("eapig")
    local model = eapig.Model.new(m.handle, m.info, m)
    local grads = load.load(model_dir("tied-llama", { family = "llama", tied = true, seed = 31 }))
    local batch = require("support.tiny").batch(model, { 4 }, 3)
    local logits = model:forward(batch, { keep = true })
    local status = C.eapig_backward(m.handle, model.workspace,
      ffi.new("eapig_backward_opts", { dlogits = logits, weight_grads = grads.handle }))
    assert.are.equal(C.EAPIG_ERR_ARG, status)
    assert.matches("embedding and the unembedding apart", ffi.string(C.eapig_last_error()))
    model:free()
  end)
end)

describe("dtypes and shards", function()
  for _, case in ipairs({ { "F16", 2 ^ -11 }, { "BF16", 2 ^ -8 } }) do
    local dtype, rel = case[1], case[2]
    it(dtype .. " checkpoints load, within rounding of the float32 model", function()
      for _, family in ipairs({ "gpt2", "qwen2" }) do
        local ref = load.load(model_dir(family .. "-f32-" .. dtype, { family = family, seed = 21 }),
                              { finalize = false })
        local dir = model_dir(family .. "-" .. dtype, { family = family, seed = 21, dtype = dtype })
        local first = family == "gpt2" and "wte.weight" or "model.norm.weight"
        assert.are.equal(dtype, safetensors.open(dir .. "/model.safetensors"):info(first).dtype)
        -- Unfinalized, each weight is its float32 value rounded once: within half an ulp
        -- (relative), or 2^-25 in F16's subnormal range.
        local low = load.load(dir, { finalize = false })
        each_slot(low, ref, function(label, a, b, n)
          for i = 0, n - 1 do
            assert.is_true(math.abs(a[i] - b[i]) <= rel * math.abs(b[i]) + 2 ^ -25, label)
          end
        end)
      end
    end)
  end

  it("a sharded checkpoint loads identically to the single file", function()
    for _, family in ipairs({ "llama", "gpt2" }) do
      local single = load.load(model_dir(family .. "-single", { family = family, seed = 31 }))
      local dir = model_dir(family .. "-sharded", { family = family, seed = 31, shards = 3 })
      local index = safetensors.read_json(dir .. "/model.safetensors.index.json")
      local files = {}
      for _, file in pairs(index.weight_map) do files[file] = true end
      assert.is_true(files["model-00001-of-00003.safetensors"] and files["model-00003-of-00003.safetensors"])
      local f = io.open(dir .. "/model.safetensors")
      assert.is_nil(f)
      assert_same_models(single, load.load(dir))
    end
  end)

  it("the writer round-trips values, metadata and integer dtypes", function()
    local path = tmp .. "/mixed.safetensors"
    local ints = ffi.new("int32_t[3]", { -1, 2, 70000 })
    safetensors.write(path, {
      { name = "a", dtype = "F32", shape = { 2, 2 }, data = { 1, 2, 3, 4.5 } },
      { name = "ids", dtype = "I32", shape = { 3 }, data = ints },
      { name = "mask", dtype = "U8", shape = { 2 }, data = { 0, 255 } },
      { name = "empty", dtype = "F16", shape = { 0, 4 }, data = {} },
    }, { format = "pt", note = "x" })
    local r = safetensors.open(path)
    assert.are.same({ format = "pt", note = "x" }, r.metadata)
    assert.are.same({ "a", "empty", "ids", "mask" }, r:names())
    local a = floats(4)
    r:read_into("a", a, 2, 2)
    assert.are.same({ 1, 2, 3, 4.5 }, { a[0], a[1], a[2], a[3] })
    local at = floats(4)
    r:read_into("a", at, 2, 2, { transpose = true })
    assert.are.same({ 1, 3, 2, 4.5 }, { at[0], at[1], at[2], at[3] })
    local ids = floats(3)
    r:read_into("ids", ids, 1, 3)
    assert.are.same({ -1, 2, 70000 }, { ids[0], ids[1], ids[2] })
    local info = r:info("mask")
    assert.are.same({ "U8", { 2 } }, { info.dtype, info.shape })
    assert.are.equal(2, info["end"] - info.begin)
    assert_names(error_of(r.read_into, r, "mask", floats(2), 1, 2), path, "mask", "U8")
    r:close()
    assert.are.same({}, require("support.files").temps_beside(path))
  end)
end)

-- The shared fixtures: skip with a message when ../shared is absent (a user's machine).
local shared = require("support.shared").dir()
if not shared then
  pending("../shared is absent: fixture and stories260K loading tests skipped")
else
  describe("shared fixtures", function()
    -- config key(s) per info field, first present wins
    local KEYS = {
      n_layers = { "n_layer", "num_hidden_layers" }, n_heads = { "n_head", "num_attention_heads" },
      n_kv_heads = { "num_key_value_heads", "num_attention_heads", "n_head" }, d_model = { "n_embd", "hidden_size" },
      d_mlp = { "n_inner", "intermediate_size" }, vocab = { "vocab_size" },
      n_ctx = { "n_positions", "max_position_embeddings" }, tied = { "tie_word_embeddings" },
    }
    for _, name in ipairs({ "gpt2-tiny", "llama-gqa-tiny", "qwen2-tiny", "neox-tiny", "stories260K-hf" }) do
      it(name .. " loads and its info matches config.json", function()
        local dir = shared .. "/fixtures/" .. name .. "/model"
        local config = safetensors.read_json(dir .. "/config.json")
        local m = load.load(dir)
        assert.are.equal(config.model_type, m.info.family)
        for field, keys in pairs(KEYS) do
          local want
          for _, k in ipairs(keys) do
            if want == nil then want = config[k] end
          end
          assert.are.equal(want, m.info[field], name .. " " .. field)
        end
        assert.are.equal(dir, m.folder)
        if name == "neox-tiny" then
          assert.are.same({ true, 2 }, { m.info.parallel_attn_mlp, m.info.rotary_dim })
        end
      end)
    end

    it("stories260K.bin loads, with wq and wk permuted to the half-split layout", function()
      local bin = load.load(shared .. "/models/stories260K/stories260K.bin")
      assert.are.same({ "llama", 5, 8, 4, 64, 8, 172, 512, 512, true, "rmsnorm", 1e-5 },
        { bin.info.family, bin.info.n_layers, bin.info.n_heads, bin.info.n_kv_heads, bin.info.d_model,
          bin.info.d_head, bin.info.d_mlp, bin.info.vocab, bin.info.n_ctx, bin.info.tied, bin.info.norm,
          bin.info.norm_eps })
      assert.are.equal(shared .. "/models/stories260K", bin.folder)
      local hf_dir = shared .. "/fixtures/stories260K-hf/model"
      local w = weights(bin)
      for l = 0, 4 do
        local p = "model.layers." .. l .. ".self_attn."
        assert.are.equal(0, max_diff(stored(hf_dir, p .. "q_proj.weight"), w.layers[l].wq, 64 * 64))
        assert.are.equal(0, max_diff(stored(hf_dir, p .. "k_proj.weight"), w.layers[l].wk, 32 * 64))
      end
      -- and every other weight agrees too: both loaders build the same model
      assert_same_models(bin, load.load(hf_dir))
    end)
  end)
end

-- A llama2.c v0 checkpoint of the given header, with float t at index t (so layouts are visible).
local function write_llama2c(path, header, n_floats, cut)
  local h = ffi.new("int32_t[7]", header)
  local data = floats(n_floats)
  for i = 0, n_floats - 1 do data[i] = i end
  local bytes = ffi.string(h, 28) .. ffi.string(data, 4 * n_floats)
  local f = assert(io.open(path, "wb"))
  f:write(cut and bytes:sub(1, cut) or bytes)
  f:close()
end

describe("llama2.c checkpoints", function()
  -- dim 8, hidden 12, 1 layer, 2 heads, 1 kv head, vocab 5 untied, seq_len 3; head size 4.
  local header = { 8, 12, 1, 2, 1, -5, 3 }
  local counts = { emb = 40, att = 8, wq = 64, wk = 32, wv = 32, wo = 64, ffn = 8, w1 = 96, w2 = 96, w3 = 96,
                   final = 8, freq = 6, wcls = 40 }
  local total = 40 + 8 + 64 + 32 + 32 + 64 + 8 + 96 * 3 + 8 + 6 + 6 + 40

  it("reads every tensor in run.c's order and an untied classifier at the end", function()
    local path = tmp .. "/tiny.bin"
    write_llama2c(path, header, total)
    local m = load.load(path, { finalize = false })
    assert.are.same({ 8, 1, 2, 1, 4, 12, 5, 3, false }, { m.info.d_model, m.info.n_layers, m.info.n_heads,
      m.info.n_kv_heads, m.info.d_head, m.info.d_mlp, m.info.vocab, m.info.n_ctx, m.info.tied })
    local w = weights(m)
    local wq_at = counts.emb + counts.att
    -- Head h, half-split row i < 2 is interleaved row 2i; row i + 2 is row 2i + 1.
    for h = 0, 1 do
      for i = 0, 1 do
        assert.are.equal(wq_at + (h * 4 + 2 * i) * 8, w.layers[0].wq[(h * 4 + i) * 8])
        assert.are.equal(wq_at + (h * 4 + 2 * i + 1) * 8, w.layers[0].wq[(h * 4 + i + 2) * 8])
      end
    end
    local w1_at = wq_at + counts.wq + counts.wk + counts.wv + counts.wo + counts.ffn
    assert.are.same({ w1_at, w1_at + 96, w1_at + 192 }, { w.layers[0].w_gate[0], w.layers[0].w_out[0],
      w.layers[0].w_in[0] })
    assert.are.equal(total - 40, w.w_unembed[0])
    assert.are.equal(total - 60, w.lnf_w[0]) -- the final norm sits before the two RoPE tables
  end)

  it("rejects bad headers, truncation and trailing bytes, naming the file and field", function()
    local path = tmp .. "/bad.bin"
    local bad = {
      { { 8, 12, -1, 2, 1, -5, 3 }, "n_layers" },
      { { 8, 12, 1, 0, 1, -5, 3 }, "n_heads" },
      { { 8, 12, 1, 2, 1, 0, 3 }, "vocab_size" },
      { { 8, 12, 1, 3, 1, -5, 3 }, "n_heads" },  -- dim not a multiple of n_heads
      { { 8, 12, 1, 2, 4, -5, 3 }, "n_kv_heads" }, -- n_heads not a multiple of n_kv_heads
      { { 0x616b3432, 1, 1, 1, 1, 1, 1 }, "header" },
    }
    for _, case in ipairs(bad) do
      write_llama2c(path, case[1], total)
      assert_names(error_of(load.load, path), path, case[2])
    end
    write_llama2c(path, header, total, 20)
    assert_names(error_of(load.load, path), path, "truncated", "header")
    write_llama2c(path, header, total, 28 + 4 * (total - 1))
    assert_names(error_of(load.load, path), path, "truncated", "wcls")
    write_llama2c(path, header, total + 1)
    assert_names(error_of(load.load, path), path, "after the last tensor")
    write_llama2c(path, { 2 ^ 20, 1, 1, 1, 1, 1, 1 }, 4)
    assert_names(error_of(load.load, path), path, "truncated", "token_embedding_table")
  end)
end)

describe("bad checkpoints are Lua errors naming the file and the field or tensor", function()
  -- A folder with a valid config.json and the given model.safetensors bytes.
  local function folder_with(name, bytes)
    local dir = model_dir(name, { family = "llama" })
    local f = assert(io.open(dir .. "/model.safetensors", "wb"))
    f:write(bytes)
    f:close()
    return dir, dir .. "/model.safetensors"
  end

  local function raw_file(header, data_bytes)
    local n = #header
    local len = ffi.new("uint64_t[1]", n)
    return ffi.string(len, 8) .. header .. string.rep("\0", data_bytes)
  end

  local function good_bytes()
    local f = assert(io.open(model_dir("good", { family = "llama" }) .. "/model.safetensors", "rb"))
    local bytes = f:read("*a")
    f:close()
    return bytes
  end

  -- Rewrites a model folder's safetensors after edit(list) changes the list of tensors.
  local function rewrite(dir, edit)
    local path = dir .. "/model.safetensors"
    local r = safetensors.open(path)
    local list = {}
    for _, name in ipairs(r:names()) do
      local buf = stored(dir, name)
      list[#list + 1] = { name = name, dtype = "F32", shape = r:info(name).shape, data = buf }
    end
    r:close()
    edit(list)
    safetensors.write(path, list)
  end

  local function drop(name)
    return function(list)
      for i, t in ipairs(list) do
        if t.name == name then return table.remove(list, i) end
      end
    end
  end

  it("a truncated file", function()
    local bytes = good_bytes()
    local dir, path = folder_with("truncated", bytes:sub(1, #bytes - 100))
    assert_names(error_of(load.load, dir), path, "data_offsets", "lm_head.weight")
    dir, path = folder_with("truncated-5", bytes:sub(1, 5))
    assert_names(error_of(load.load, dir), path, "truncated", "header length")
  end)

  it("a header length larger than the file", function()
    local bytes = good_bytes()
    local len = ffi.new("uint64_t[1]", #bytes)
    local dir, path = folder_with("long-header", ffi.string(len, 8) .. bytes:sub(9))
    assert_names(error_of(load.load, dir), path, "header length")
    len[0] = 0xffffffffffffffffULL
    dir, path = folder_with("huge-header", ffi.string(len, 8) .. bytes:sub(9))
    assert_names(error_of(load.load, dir), path, "header length", "18446744073709551615")
  end)

  it("overlapping tensor offsets", function()
    local header = '{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},' ..
                   '"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}'
    local path = tmp .. "/overlap.safetensors"
    local f = assert(io.open(path, "wb"))
    f:write(raw_file(header, 12))
    f:close()
    assert_names(error_of(safetensors.open, path), path, "'a'", "'b'", "overlap", "data_offsets")
  end)

  it("out-of-range, reversed or mis-sized offsets, unknown dtypes and bad JSON", function()
    local cases = {
      { '{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}', 8, "'a'", "data_offsets" },
      { '{"a":{"dtype":"F32","shape":[0],"data_offsets":[8,4]}}', 8, "'a'", "data_offsets" },
      { '{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}', 8, "'a'", "data_offsets" },
      { '{"a":{"dtype":"F32","shape":[2],"data_offsets":[-8,0]}}', 8, "'a'", "data_offsets" },
      { '{"a":{"dtype":"F32","shape":[1e15,1e15],"data_offsets":[0,8]}}', 8, "'a'", "data_offsets" },
      { '{"a":{"dtype":"F7","shape":[2],"data_offsets":[0,8]}}', 8, "'a'", "dtype" },
      { '{"a":{"dtype":"F32","shape":[2.5],"data_offsets":[0,8]}}', 8, "'a'", "shape" },
      { '{"a":{"dtype":"F32","shape":[2]}}', 8, "'a'", "data_offsets" },
      { '{"a":', 8, "JSON" },
      { '[1, 2]', 8, "JSON object" },
      { '{"__metadata__":{"k":1}}', 0, "__metadata__" },
    }
    for i, case in ipairs(cases) do
      local dir, path = folder_with("offsets-" .. i, raw_file(case[1], case[2]))
      assert_names(error_of(load.load, dir), path, case[3], case[4])
    end
  end)

  it("a missing tensor", function()
    local dir = model_dir("missing", { family = "llama" })
    rewrite(dir, drop("model.layers.1.mlp.down_proj.weight"))
    assert_names(error_of(load.load, dir), dir .. "/model.safetensors", "missing tensor",
                 "model.layers.1.mlp.down_proj.weight")
    local untied = model_dir("missing-head", { family = "qwen2", tied = false })
    rewrite(untied, drop("lm_head.weight"))
    assert_names(error_of(load.load, untied), "lm_head.weight", "missing tensor")
    local gpt2 = model_dir("missing-wte", { family = "gpt2" })
    rewrite(gpt2, drop("wte.weight"))
    assert_names(error_of(load.load, gpt2), gpt2 .. "/model.safetensors", "wte.weight", "transformer.wte.weight")
  end)

  it("a mis-shaped tensor", function()
    local dir = model_dir("misshaped", { family = "llama", kv_heads = 2 })
    rewrite(dir, function(list)
      for _, t in ipairs(list) do
        if t.name == "model.layers.0.self_attn.k_proj.weight" then t.shape = { 32, 16 } end
      end
    end)
    assert_names(error_of(load.load, dir), dir .. "/model.safetensors", "model.layers.0.self_attn.k_proj.weight",
                 "[32, 16]", "[16, 32]")
  end)

  it("an unknown model_type, a missing or bad config field, no config and no weights", function()
    local dir = model_dir("config", { family = "llama" })
    local path = dir .. "/config.json"
    local good = safetensors.read_json(path)
    local function with_config(edit)
      local c = {}
      for k, v in pairs(good) do c[k] = v end
      edit(c)
      local f = assert(io.open(path, "wb"))
      f:write(cjson.encode(c))
      f:close()
      return error_of(load.load, dir)
    end
    assert_names(with_config(function(c) c.model_type = "bert" end), path, "model_type", "bert")
    assert_names(with_config(function(c) c.model_type = nil end), path, "model_type", "missing")
    assert_names(with_config(function(c) c.hidden_size = nil end), path, "hidden_size", "missing")
    assert_names(with_config(function(c) c.num_attention_heads = -4 end), path, "num_attention_heads")
    assert_names(with_config(function(c) c.num_key_value_heads = 3 end), path, "n_kv_heads")
    assert_names(with_config(function(c) c.hidden_act = "tanh" end), path, "hidden_act", "tanh")
    assert_names(with_config(function(c) c.rope_scaling = { type = "linear" } end), path, "rope_scaling")
    local llama3 = { rope_type = "llama3", factor = 8, low_freq_factor = 1, high_freq_factor = 4,
                     original_max_position_embeddings = 64 }
    local function rope(edit)
      return with_config(function(c)
        c.rope_scaling = {}
        for k, v in pairs(llama3) do c.rope_scaling[k] = v end
        edit(c.rope_scaling)
      end)
    end
    assert_names(rope(function(r) r.rope_type = "yarn" end), path, "'rope_scaling.rope_type'", "yarn",
                 "default, llama3")
    assert_names(rope(function(r) r.rope_type = nil end), path, "'rope_scaling.type'", "missing")
    assert_names(rope(function(r) r.factor = nil end), path, "'rope_scaling.factor'", "missing")
    assert_names(rope(function(r) r.original_max_position_embeddings = 0.5 end), path,
                 "'rope_scaling.original_max_position_embeddings'", "positive integer")
    assert_names(rope(function(r) r.high_freq_factor = 1 end), path, "'rope_scaling.high_freq_factor'")
    assert_names(with_config(function(c) c.rope_scaling = "llama3" end), path, "'rope_scaling'", "object")
    -- gemma2's layer_types: the core runs one repeating pattern
    local g2 = model_dir("gemma2-bad", { family = "gemma2", layers = 4 })
    local g2_path = g2 .. "/config.json"
    local g2_good = safetensors.read_json(g2_path)
    local function with_types(types)
      local c = {}
      for k, v in pairs(g2_good) do c[k] = v end
      c.layer_types = types
      local f = assert(io.open(g2_path, "wb"))
      f:write(cjson.encode(c))
      f:close()
      return error_of(load.load, g2)
    end
    local S, G = "sliding_attention", "full_attention"
    assert_names(with_types({ G, S, S, S }), g2_path, "'layer_types'", "entry 2")
    assert_names(with_types({ S, G, "chunked_attention", G }), g2_path, "'layer_types' entry 3", "chunked_attention")
    assert_names(with_types({ S, G }), g2_path, "'layer_types' has 2 entries for 4 layers")
    local f = assert(io.open(path, "wb"))
    f:write("{not json")
    f:close()
    assert_names(error_of(load.load, dir), path, "JSON")
    os.remove(path)
    assert_names(error_of(load.load, dir), dir, "config.json")
    local empty = model_dir("no-weights", { family = "llama" })
    os.remove(empty .. "/model.safetensors")
    assert_names(error_of(load.load, empty), empty, "model.safetensors")
    assert_names(error_of(load.load, tmp .. "/nothing-here"), tmp .. "/nothing-here")
  end)

  it("a bad sharded index", function()
    local dir = model_dir("bad-index", { family = "llama", shards = 2 })
    local index_path = dir .. "/model.safetensors.index.json"
    local index = safetensors.read_json(index_path)
    local function with_map(name, file)
      local map = {}
      for k, v in pairs(index.weight_map) do map[k] = v end
      map[name] = file
      local f = assert(io.open(index_path, "wb"))
      f:write(cjson.encode({ weight_map = map }))
      f:close()
      return error_of(load.load, dir)
    end
    assert_names(with_map("model.norm.weight", "../escape.safetensors"), index_path, "model.norm.weight")
    assert_names(with_map("model.norm.weight", "absent.safetensors"), "absent.safetensors")
    local other = index.weight_map["model.norm.weight"] == "model-00001-of-00002.safetensors"
      and "model-00002-of-00002.safetensors" or "model-00001-of-00002.safetensors"
    assert_names(with_map("model.norm.weight", other), index_path, "model.norm.weight", other)
    assert_names(with_map("model.norm.weight", nil), index_path, "missing tensor", "model.norm.weight")
  end)
end)
