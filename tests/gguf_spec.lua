-- GGUF: the reader (every value type, alignment, tensor types F32, F16, BF16 and Q8_0 with the
-- Q8_0 error bound), models converted here the way llama.cpp's converter does it (llama with
-- permuted q/k, qwen2, gpt2 with transposed Conv1D, gemma and gemma2 with their norms + 1,
-- olmo2, Llama-3.1 rope scaling as rope_freqs.weight) loading to the same weights and logits as
-- their Hugging Face folders, the tokenizer a GGUF stores, and bad files (float metadata out of
-- float32's range, bad rope_freqs.weight among them). With ../shared:
-- stories260K.gguf holds stories260K.bin's weights and tokenizer, and the GPT-2 vocabulary GGUF
-- tokenizes llama.cpp's 47 test strings as expected.
local ffi = require("ffi")
local random = require("eapig.rng")
local cjson = require("cjson")
local eapig = require("eapig")
local gguf = require("eapig.formats.gguf")
local load = require("eapig.formats.load")
local safetensors = require("eapig.formats.safetensors")
local testing = require("eapig.testing")
local tokenizer = require("eapig.formats.tokenizer")
local writer = require("support.gguf_writer")
local files = require("support.files")

local T = writer.TYPES
local C = require("eapig.core").C

local tmpdir
setup(function() tmpdir = testing.tmpdir() end)
teardown(function() testing.rmtree(tmpdir) end)

local function path_of(name) return tmpdir .. "/" .. name end

local function dir_of(name)
  local dir = path_of(name)
  assert(os.execute("mkdir -p '" .. dir .. "'") == 0)
  return dir
end

local errors = require("support.errors")
local err_of, has = errors.error_of, errors.has

local function random_values(n, seed, scale)
  local rng = random.new(seed)
  local xs = {}
  for i = 1, n do xs[i] = rng:normal() * (scale or 1) end
  return xs
end

describe("GGUF reader", function()
  it("reads every metadata type, arrays, version 2 and a custom alignment", function()
    local path = writer.write(path_of("kv.gguf"), {
      version = 2, alignment = 64,
      kv = {
        { "general.alignment", "uint32", 64 }, { "a.u8", "uint8", 200 }, { "a.i8", "int8", -5 },
        { "a.u16", "uint16", 65535 }, { "a.i16", "int16", -300 }, { "a.i32", "int32", -70000 },
        { "a.f32", "float32", 0.5 }, { "a.bool", "bool", true }, { "a.str", "string", "héllo" },
        { "a.u64", "uint64", 2 ^ 40 }, { "a.i64", "int64", -2 ^ 40 }, { "a.f64", "float64", 1e-300 },
        { "a.strs", "array", "string", { "x", "", "yz" } }, { "a.nums", "array", "int32", { 1, -2, 3 } },
        { "a.empty", "array", "float32", {} },
      },
      tensors = { { name = "v", type = T.F32, ne = { 3 }, data = writer.f32_bytes({ 1, 2, 3 }) },
                  { name = "m", type = T.F32, ne = { 2, 2 }, data = writer.f32_bytes({ 4, 5, 6, 7 }) } },
    })
    local g = gguf.open(path)
    assert.equal(2, g.version)
    assert.equal(15, g.n_keys)
    assert.same({ 200, -5, 65535, -300, -70000, 0.5, true, "héllo", 2 ^ 40, -2 ^ 40, 1e-300 },
      { g:get("a.u8"), g:get("a.i8"), g:get("a.u16"), g:get("a.i16"), g:get("a.i32"), g:get("a.f32"),
        g:get("a.bool"), g:get("a.str"), g:get("a.u64"), g:get("a.i64"), g:get("a.f64") })
    assert.same({ "x", "", "yz" }, g:array("a.strs"))
    assert.same({ 1, -2, 3 }, g:array("a.nums"))
    assert.same({}, g:array("a.empty"))
    assert.is_nil(g:get("a.missing"))
    has(err_of(g.get, g, "a.strs"), "is an array")
    -- The data section and every tensor start at multiples of 64.
    local v, m = g:tensor("v"), g:tensor("m")
    assert.equal(0, tonumber(C.eapig_gguf_data_offset(g.handle)) % 64)
    assert.equal(0, (m.begin - v.begin) % 64)
    assert.same({ 2, 2 }, m.ne)
    local buf = ffi.new("float[4]")
    g:read("m", buf, 4)
    assert.same({ 4, 5, 6, 7 }, { buf[0], buf[1], buf[2], buf[3] })
    has(err_of(g.read, g, "m", buf, 3), "has 4 elements, not 3")
    g:close()
  end)

  it("converts F16 and BF16 exactly, and Q8_0 within its bound (quantised here, dequantised in eapig)", function()
    local n = 32 * 64
    local xs = random_values(n, 11, 0.7)
    xs[5] = 0 -- zeros and a block of all zeros (d = 0) must come back as zeros
    for j = 33, 64 do xs[j] = 0 end
    local f16_bytes, f16_vals = writer.f16(xs)
    local bf16_bytes, bf16_vals = writer.bf16(xs)
    local q8_bytes, q8_vals, ds = writer.q8_0(xs)
    local g = gguf.open(writer.write(path_of("types.gguf"), { tensors = {
      { name = "f16", type = T.F16, ne = { 32, 64 }, data = f16_bytes },
      { name = "bf16", type = T.BF16, ne = { 32, 64 }, data = bf16_bytes },
      { name = "q8", type = T.Q8_0, ne = { 64, 32 }, data = q8_bytes },
    } }))
    local buf = ffi.new("float[?]", n)
    for _, case in ipairs({ { "f16", f16_vals }, { "bf16", bf16_vals }, { "q8", q8_vals } }) do
      g:read(case[1], buf, n)
      for i = 1, n do
        if buf[i - 1] ~= case[2][i] then
          error(("%s element %d: eapig %.9g, expected %.9g"):format(case[1], i, buf[i - 1], case[2][i]))
        end
      end
    end
    -- The Q8_0 bound: rounding to the nearest step d costs d/2, and storing d as f16 (relative
    -- error 2^-11) moves a value of up to 127 steps by 127 d 2^-11 more.
    g:read("q8", buf, n)
    local worst = 0
    for i = 1, n do
      local d = ds[math.floor((i - 1) / 32) + 1]
      local err = math.abs(xs[i] - buf[i - 1])
      if d == 0 then assert.equal(0, buf[i - 1]) else worst = math.max(worst, err / d) end
      assert.True(err <= (0.5 + 127 * 2 ^ -11) * d, ("element %d: error %g above the bound for d = %g"):format(i, err, d))
    end
    -- The bound is tight: some element gets close to half a step.
    assert.True(worst > 0.45, "largest error / d = " .. worst)
    print(("\n  Q8_0 round trip: largest |x - dequant(x)| / d = %.4f (bound 0.5 + 127 * 2^-11 = %.4f)")
      :format(worst, 0.5 + 127 * 2 ^ -11))
    g:close()
  end)
end)

---------------------------------------------------------------------------------------------
-- Converting a Hugging Face folder the way llama.cpp's convert_hf_to_gguf.py does

local LLAMA_NAMES = {
  ["model.embed_tokens.weight"] = "token_embd.weight", ["model.norm.weight"] = "output_norm.weight",
  ["lm_head.weight"] = "output.weight",
  layer = "^model%.layers%.(%d+)%.(.+)$",
  ["input_layernorm.weight"] = "attn_norm.weight", ["self_attn.q_proj.weight"] = "attn_q.weight",
  ["self_attn.q_proj.bias"] = "attn_q.bias", ["self_attn.k_proj.weight"] = "attn_k.weight",
  ["self_attn.k_proj.bias"] = "attn_k.bias", ["self_attn.v_proj.weight"] = "attn_v.weight",
  ["self_attn.v_proj.bias"] = "attn_v.bias", ["self_attn.o_proj.weight"] = "attn_output.weight",
  ["self_attn.o_proj.bias"] = "attn_output.bias", ["post_attention_layernorm.weight"] = "ffn_norm.weight",
  ["mlp.gate_proj.weight"] = "ffn_gate.weight", ["mlp.up_proj.weight"] = "ffn_up.weight",
  ["mlp.down_proj.weight"] = "ffn_down.weight",
}
local GPT2_NAMES = {
  ["wte.weight"] = "token_embd.weight", ["wpe.weight"] = "position_embd.weight",
  ["ln_f.weight"] = "output_norm.weight", ["ln_f.bias"] = "output_norm.bias", ["lm_head.weight"] = "output.weight",
  layer = "^h%.(%d+)%.(.+)$",
  ["ln_1.weight"] = "attn_norm.weight", ["ln_1.bias"] = "attn_norm.bias", ["attn.c_attn.weight"] = "attn_qkv.weight",
  ["attn.c_attn.bias"] = "attn_qkv.bias", ["attn.c_proj.weight"] = "attn_output.weight",
  ["attn.c_proj.bias"] = "attn_output.bias", ["ln_2.weight"] = "ffn_norm.weight", ["ln_2.bias"] = "ffn_norm.bias",
  ["mlp.c_fc.weight"] = "ffn_up.weight", ["mlp.c_fc.bias"] = "ffn_up.bias", ["mlp.c_proj.weight"] = "ffn_down.weight",
  ["mlp.c_proj.bias"] = "ffn_down.bias",
}

-- Gemma's converter drops lm_head (llama.cpp ties gemma); Gemma-2 and OLMo-2 name their norms
-- after where they sit (tensor_mapping.py): post_attention_layernorm is the attention's post-norm.
local function names_with(base, over)
  local t = {}
  for k, v in pairs(base) do t[k] = v end
  for k, v in pairs(over) do t[k] = v end
  return t
end
local GEMMA_NAMES = names_with(LLAMA_NAMES, { ["lm_head.weight"] = false })
local GEMMA2_NAMES = names_with(GEMMA_NAMES, {
  ["post_attention_layernorm.weight"] = "post_attention_norm.weight",
  ["pre_feedforward_layernorm.weight"] = "ffn_norm.weight",
  ["post_feedforward_layernorm.weight"] = "post_ffw_norm.weight",
})
local OLMO2_NAMES = names_with(LLAMA_NAMES, {
  ["self_attn.q_norm.weight"] = "attn_q_norm.weight", ["self_attn.k_norm.weight"] = "attn_k_norm.weight",
  ["post_attention_layernorm.weight"] = "post_attention_norm.weight",
  ["post_feedforward_layernorm.weight"] = "post_ffw_norm.weight",
})
local NAMES = { llama = LLAMA_NAMES, qwen2 = LLAMA_NAMES, gpt2 = GPT2_NAMES, gemma = GEMMA_NAMES,
                gemma2 = GEMMA2_NAMES, olmo2 = OLMO2_NAMES }

-- The GGUF name of a Hugging Face tensor, or false for one the converter drops.
local function gguf_name(names, name)
  if names[name] ~= nil then return names[name] end
  local l, rest = name:match(names.layer)
  assert(rest and names[rest], "no GGUF name for " .. name)
  return "blk." .. l .. "." .. names[rest]
end

-- float32 rounding, to follow the converter's torch.float32 arithmetic step by step
local f32 = require("support.tiny").f32

-- LlamaModel.generate_extra_tensors: Llama-3.1's rope_scaling as one factor per rotary
-- frequency (the frequency is divided by it), computed in float32 as the converter does.
local function llama3_rope_factors(cfg, dim)
  local rs = cfg.rope_scaling
  local base, factor = cfg.rope_theta or 10000, rs.factor
  local low, high, ctx = rs.low_freq_factor, rs.high_freq_factor, rs.original_max_position_embeddings
  local low_wavelen, high_wavelen = ctx / low, ctx / high
  local out = {}
  for i = 0, dim / 2 - 1 do
    local freq = f32(1 / f32(base ^ f32(2 * i / dim)))
    local wavelen = f32(2 * math.pi / freq)
    if wavelen < high_wavelen then out[#out + 1] = 1
    elseif wavelen > low_wavelen then out[#out + 1] = factor
    else
      local smooth = f32(f32(f32(ctx / wavelen) - low) / (high - low))
      out[#out + 1] = f32(1 / f32(f32(f32(1 - smooth) / factor) + smooth))
    end
  end
  return out
end

-- llama.cpp's LlamaModel.permute: half-split rows (i, i + Dh/2) -> interleaved (2i, 2i + 1).
local function interleave(xs, rows, cols, d_head)
  local out, half = {}, d_head / 2
  for r = 0, rows - 1 do
    local h, within = math.floor(r / d_head), r % d_head
    local i, j = within % half, math.floor(within / half)
    local dst = h * d_head + 2 * i + j
    for c = 1, cols do out[dst * cols + c] = xs[r * cols + c] end
  end
  return out
end

local function transpose(xs, rows, cols)
  local out = {}
  for r = 0, rows - 1 do
    for c = 0, cols - 1 do out[c * rows + r + 1] = xs[r * cols + c + 1] end
  end
  return out
end

local ENCODE = {
  F32 = function(xs) return writer.f32_bytes(xs) end,
  F16 = function(xs) return (writer.f16(xs)) end,
  BF16 = function(xs) return (writer.bf16(xs)) end,
  Q8_0 = function(xs) return (writer.q8_0(xs)) end,
}

-- Writes the random Hugging Face model in `folder` as a GGUF file the way convert_hf_to_gguf.py
-- does for its architecture (metadata keys, tensor names, llama's q/k permutation, gemma's
-- norms + 1, llama3 rope_scaling as rope_freqs.weight); matrices get `ttype`, vectors stay F32
-- (as llama.cpp keeps norms in F32). edit(kv, tensors), when given, changes the file's contents.
local function convert(folder, out, ttype, edit)
  local cfg = cjson.decode(files.read(folder .. "/config.json"))
  local arch = cfg.model_type
  local names = NAMES[arch]
  local kv = { { "general.architecture", "string", arch } }
  local function meta(key, kind, v) kv[#kv + 1] = { arch .. "." .. key, kind, v } end
  local d_head
  if arch == "gpt2" then
    meta("block_count", "uint32", cfg.n_layer)
    meta("context_length", "uint32", cfg.n_positions)
    meta("embedding_length", "uint32", cfg.n_embd)
    meta("feed_forward_length", "uint32", cfg.n_inner or 4 * cfg.n_embd)
    meta("attention.head_count", "uint32", cfg.n_head)
    meta("attention.layer_norm_epsilon", "float32", cfg.layer_norm_epsilon)
  else
    d_head = cfg.head_dim or cfg.hidden_size / cfg.num_attention_heads
    meta("block_count", "uint32", cfg.num_hidden_layers)
    meta("context_length", "uint32", cfg.max_position_embeddings)
    meta("embedding_length", "uint32", cfg.hidden_size)
    meta("feed_forward_length", "uint32", cfg.intermediate_size)
    meta("attention.head_count", "uint32", cfg.num_attention_heads)
    meta("attention.head_count_kv", "uint32", cfg.num_key_value_heads or cfg.num_attention_heads)
    meta("attention.layer_norm_rms_epsilon", "float32", cfg.rms_norm_eps)
    if arch == "gemma" or arch == "gemma2" then
      -- GemmaModel / Gemma2Model write no rope base and no rope dimension count
      meta("attention.key_length", "uint32", d_head)
      meta("attention.value_length", "uint32", d_head)
      if arch == "gemma2" then
        meta("attn_logit_softcapping", "float32", cfg.attn_logit_softcapping)
        meta("final_logit_softcapping", "float32", cfg.final_logit_softcapping)
        meta("attention.sliding_window", "uint32", cfg.sliding_window)
      end
    else
      meta("rope.freq_base", "float32", cfg.rope_theta or 10000)
      if cfg.head_dim then
        meta("attention.key_length", "uint32", d_head)
        meta("attention.value_length", "uint32", d_head)
      end
      if arch ~= "olmo2" then meta("rope.dimension_count", "uint32", d_head) end
    end
  end
  local st = safetensors.open(folder .. "/model.safetensors")
  local tensors = {}
  for _, name in ipairs(st:names()) do
    local shape = st:info(name).shape
    local rows, cols = shape[1], shape[2] or 1
    local buf = ffi.new("float[?]", rows * cols)
    st:read_into(name, buf, rows, cols)
    local xs = {}
    for i = 1, rows * cols do xs[i] = buf[i - 1] end
    -- GPT-2's Conv1D is (in, out): the converter stores its transpose.
    if arch == "gpt2" and #shape == 2 and name:match("%.c_%a+%.weight$") then
      xs, rows, cols = transpose(xs, rows, cols), cols, rows
    end
    if arch == "llama" and (name:match("q_proj") or name:match("k_proj")) then
      xs = interleave(xs, rows, cols, d_head)
    end
    -- GemmaModel.modify_tensors: every norm weight gets its scale's 1 added
    if (arch == "gemma" or arch == "gemma2") and name:match("norm%.weight$") then
      for i = 1, #xs do xs[i] = xs[i] + 1 end
    end
    local ty = #shape == 2 and ttype or "F32"
    local gname = gguf_name(names, name)
    if gname then
      tensors[#tensors + 1] = { name = gname, type = T[ty], ne = #shape == 2 and { cols, rows } or { rows },
                                data = ENCODE[ty](xs) }
    end
  end
  st:close()
  local rs = cfg.rope_scaling
  if arch == "llama" and rs and (rs.rope_type or rs.type) == "llama3" then
    local factors = llama3_rope_factors(cfg, d_head)
    tensors[#tensors + 1] = { name = "rope_freqs.weight", type = T.F32, ne = { #factors },
                              data = writer.f32_bytes(factors) }
  end
  if edit then edit(kv, tensors) end
  return writer.write(out, { kv = kv, tensors = tensors })
end

local function arena(model)
  local n = ffi.new("int64_t[1]")
  local p = C.eapig_model_arena(model.handle, n)
  return p, tonumber(n[0])
end

-- The two models' weight arenas are equal, value for value.
local function assert_same_weights(a_model, b_model)
  local a, na = arena(a_model)
  local b, nb = arena(b_model)
  assert.equal(na, nb)
  for i = 0, na - 1 do
    if a[i] ~= b[i] then error(("weight %d differs: %.9g vs %.9g"):format(i, a[i], b[i])) end
  end
end

local function logits_of(model, ids)
  local n = #ids
  local tokens, lengths = ffi.new("int32_t[?]", n, ids), ffi.new("int32_t[1]", n)
  local out = model:forward({ tokens = tokens, lengths = lengths, B = 1, P = n })
  local xs = {}
  for i = 1, n * model.vocab do xs[i] = out[i - 1] end
  return xs
end

describe("GGUF models", function()
  local IDS = { 3, 17, 42, 5, 9, 30, 61, 8 }
  for _, case in ipairs({
    { family = "llama", kv_heads = 2 }, { family = "llama", qkv_bias = true }, { family = "qwen2", kv_heads = 2 },
    { family = "gpt2" }, { family = "gpt2", tied = false },
  }) do
    local label = case.family .. (case.kv_heads and " (GQA)" or "") .. (case.qkv_bias and " (biases)" or "")
      .. (case.tied == false and " (untied)" or "")
    it(label .. ": an F32 GGUF holds the same weights as the Hugging Face folder", function()
      local opts = { family = case.family, kv_heads = case.kv_heads, qkv_bias = case.qkv_bias, tied = case.tied,
                     seed = 7, dir = dir_of((label:gsub("%W", "_"))) }
      local folder = testing.random_model(opts)
      local file = convert(folder, folder .. ".gguf", "F32")
      local hf = eapig.load(folder, { finalize = false })
      local gg = eapig.load(file, { finalize = false })
      assert.equal(case.family, gg.family)
      assert_same_weights(hf, gg)
      -- Finalized, the two give the same logits.
      assert.same(logits_of(eapig.load(folder), IDS), logits_of(eapig.load(file), IDS))
    end)
  end

  -- The engine's configuration fields a loader sets (every one must agree between the two loads).
  local CONFIG_FIELDS = { "n_layers", "n_heads", "n_kv_heads", "d_model", "d_head", "d_mlp", "vocab", "n_ctx", "norm",
    "act", "pos", "rotary_dim", "parallel_attn_mlp", "norm_eps", "rope_theta", "rope_type", "rope_factor",
    "rope_low_freq_factor", "rope_high_freq_factor", "rope_original_ctx", "embed_scale", "block_norms", "qk_norm",
    "attn_scale", "attn_softcap", "final_softcap", "sliding_window", "sliding_period" }
  local function config_values(model)
    local cfg, out = C.eapig_model_config(model.handle), {}
    for i, k in ipairs(CONFIG_FIELDS) do out[i] = k .. " = " .. tostring(tonumber(cfg[k])) end
    return out
  end

  -- Largest |a - b| over the largest |a|.
  local function relative_difference(a, b)
    local worst, scale = 0, 0
    for i, v in ipairs(a) do
      worst, scale = math.max(worst, math.abs(v - b[i])), math.max(scale, math.abs(v))
    end
    return worst / scale
  end

  -- Gemma, Gemma-2 and OLMo-2 written as llama.cpp's converter writes them: the GGUF loads to the
  -- Hugging Face folder's weights bit for bit (so gemma's + 1 is undone exactly once) and its
  -- configuration (Gemma's implied embedding scale, activation and rope base; Gemma-2's query
  -- scale derived from the block count, soft-caps and window).
  local LONG_IDS = { 3, 17, 42, 5, 9, 30, 61, 8, 12, 40, 2, 33 }
  for _, case in ipairs({
    { label = "gemma (MQA, head_dim 12 != d_model / heads)", family = "gemma", kv_heads = 1, d_head = 12 },
    { label = "gemma2 (GQA, head_dim 16, window 3, soft-caps 2 and 1.5)", family = "gemma2", kv_heads = 2,
      d_head = 16, sliding_window = 3, attn_softcap = 2, final_softcap = 1.5 },
    { label = "gemma2 with 46 blocks (the 27B rule: queries scaled by (d_model / heads)^-1/2)", family = "gemma2",
      layers = 46, d_head = 16, query_pre_attn_scalar = 8, sliding_window = 4, attn_softcap = 3, final_softcap = 2 },
    { label = "olmo2 (GQA)", family = "olmo2", kv_heads = 2 },
    { label = "olmo2 (tied: the file has no output.weight)", family = "olmo2", tied = true },
  }) do
    it(case.label .. ": an F32 GGUF holds the Hugging Face folder's weights and gives its logits", function()
      local opts = { seed = 13, dir = dir_of((case.label:gsub("%W", "_"))) }
      for k, v in pairs(case) do if k ~= "label" then opts[k] = v end end
      local folder = testing.random_model(opts)
      local file = convert(folder, folder .. ".gguf", "F32")
      local hf = eapig.load(folder, { finalize = false })
      local gg = eapig.load(file, { finalize = false })
      assert.equal(case.family, gg.family)
      assert.same(config_values(hf), config_values(gg))
      assert_same_weights(hf, gg)
      local ref, got = logits_of(eapig.load(folder), LONG_IDS), logits_of(eapig.load(file), LONG_IDS)
      local rel = relative_difference(ref, got)
      assert.True(rel <= 1e-5, ("largest logit difference / largest logit = %g"):format(rel))
      print(("\n  %s: largest logit difference / largest logit = %.2e"):format(case.label, rel))
    end)
  end

  it("gemma2: a query scale the file cannot state (query_pre_attn_scalar != head size) shows in the logits", function()
    -- llama.cpp derives the scale from the block count; a model that breaks its rule converts to
    -- a GGUF that computes something else (the check above is not vacuous).
    local folder = testing.random_model({ family = "gemma2", d_head = 16, query_pre_attn_scalar = 8, seed = 13,
                                          dir = dir_of("gemma2_scalar") })
    local file = convert(folder, folder .. ".gguf", "F32")
    local rel = relative_difference(logits_of(eapig.load(folder), LONG_IDS), logits_of(eapig.load(file), LONG_IDS))
    assert.True(rel > 1e-3, "relative difference " .. rel)
  end)

  it("llama with Llama-3.1 rope scaling: rope_freqs.weight gives the folder's logits", function()
    -- d_head 16: wavelengths 6.3, 19.9, 62.8, 199, ... against original context 128 (kept below
    -- 32, blended to 128, slowed 8x beyond): every branch of the scaling is used.
    local scaling = { rope_type = "llama3", factor = 8, low_freq_factor = 1, high_freq_factor = 4,
                      original_max_position_embeddings = 128 }
    local folder = testing.random_model({ family = "llama", d_model = 64, heads = 4, kv_heads = 2, seed = 21,
                                          rope_scaling = scaling, dir = dir_of("llama3_rope") })
    local file = convert(folder, folder .. ".gguf", "F32")
    local g = gguf.open(file)
    assert.same({ 8 }, g:tensor("rope_freqs.weight").ne)
    g:close()
    local ids = {}
    for i = 1, 64 do ids[i] = (i * 37) % 64 end
    local ref = logits_of(eapig.load(folder), ids)
    local rel = relative_difference(ref, logits_of(eapig.load(file), ids))
    assert.True(rel <= 1e-5, ("largest logit difference / largest logit = %g"):format(rel))
    print(("\n  llama3 rope_freqs.weight: largest logit difference / largest logit = %.2e"):format(rel))
    -- The factors matter over 64 positions: the same file without them computes something else.
    local bare = convert(folder, folder .. "-bare.gguf", "F32", function(_, tensors)
      tensors[#tensors] = nil -- rope_freqs.weight, written last
    end)
    local without = relative_difference(ref, logits_of(eapig.load(bare), ids))
    assert.True(without > 1e-2, "without the factors the logits differ by only " .. without)
    print(("  without rope_freqs.weight: %.2e"):format(without))
    -- Setting the factors again replaces them (they do not compound); a model without RoPE refuses.
    local m = eapig.load(file)
    local factors = ffi.new("float[8]")
    for i = 0, 7 do factors[i] = 1 end
    assert.equal(0, C.eapig_model_set_rope_factors(m.handle, factors, 8))
    assert.same(logits_of(eapig.load(bare), ids), logits_of(m, ids))
    assert.equal(C.EAPIG_ERR_ARG, C.eapig_model_set_rope_factors(m.handle, factors, 7))
    has(ffi.string(C.eapig_last_error()), "7 factors, the model has 8 rotary frequencies")
    local gpt2 = eapig.load(testing.random_model({ family = "gpt2", dir = dir_of("gpt2_no_rope") }))
    assert.equal(C.EAPIG_ERR_ARG, C.eapig_model_set_rope_factors(gpt2.handle, factors, 8))
    has(ffi.string(C.eapig_last_error()), "the model has no RoPE")
  end)

  it("llama in F16, BF16 and Q8_0: logits close to the F32 model's", function()
    local folder = testing.random_model({ family = "llama", kv_heads = 2, d_model = 64, seed = 3,
                                          dir = dir_of("llama_types") })
    local ref = logits_of(eapig.load(folder), IDS)
    local scale = 0
    for _, v in ipairs(ref) do scale = math.max(scale, math.abs(v)) end
    -- Relative weight errors: f16 2^-11, bf16 2^-8, Q8_0 about 1/254 of a block's largest value.
    -- Through two layers the logits move by a few times that (relative to the largest logit).
    for _, case in ipairs({ { "F16", 1e-2 }, { "BF16", 6e-2 }, { "Q8_0", 6e-2 } }) do
      local file = convert(folder, folder .. "-" .. case[1] .. ".gguf", case[1])
      local got = logits_of(eapig.load(file), IDS)
      local worst = 0
      for i, v in ipairs(ref) do worst = math.max(worst, math.abs(v - got[i])) end
      assert.True(worst <= case[2] * scale, ("%s: largest logit difference %g (scale %g)"):format(case[1], worst, scale))
      assert.True(worst > 0, case[1] .. ": no difference at all: the conversion did not happen")
      print(("\n  %s GGUF: largest logit difference / largest logit = %.2e"):format(case[1], worst / scale))
    end
  end)

  it("eapig.load and the CLI accept a .gguf", function()
    local folder = testing.random_model({ family = "llama", seed = 5, dir = dir_of("cli_model") })
    local file = convert(folder, folder .. ".gguf", "F32")
    local out = io.popen("luajit scripts/eapig info --model '" .. file .. "' 2>&1; echo \"rc=$?\"")
    local text = out:read("*a")
    out:close()
    has(text, "llama")
    has(text, "rc=0")
    -- GGUF tensors are converted at load: keeping them stored is refused, naming the option
    local msg = err_of(eapig.load, file, { weights = "stored" })
    has(msg, file)
    has(msg, "weights = 'stored' is not available for GGUF files")
    assert.equal("f32", eapig.load(file).weights)
  end)
end)

---------------------------------------------------------------------------------------------

describe("GGUF tokenizers", function()
  local function vocab_file(name, model, tokens, extra)
    local kv = { { "general.architecture", "string", "llama" }, { "tokenizer.ggml.model", "string", model },
                 { "tokenizer.ggml.tokens", "array", "string", tokens } }
    for _, e in ipairs(extra or {}) do kv[#kv + 1] = e end
    return writer.write(path_of(name), { kv = kv })
  end

  it("builds a SentencePiece-style vocabulary with scores, byte fallback and control tokens", function()
    local tokens = { "<unk>", "<s>", "</s>", "▁", "a", "b", "▁a", "ab", "▁ab" }
    local types = { 2, 3, 3, 1, 1, 1, 1, 1, 1 }
    local scores = { 0, 0, 0, -1, -2, -3, -4, -5, -6 }
    for b = 0, 255 do
      tokens[#tokens + 1] = ("<0x%02X>"):format(b)
      types[#types + 1], scores[#scores + 1] = 6, 0
    end
    local tok = tokenizer.load(vocab_file("spm.gguf", "llama", tokens, {
      { "tokenizer.ggml.scores", "array", "float32", scores }, { "tokenizer.ggml.token_type", "array", "int32", types },
      { "tokenizer.ggml.bos_token_id", "uint32", 1 }, { "tokenizer.ggml.eos_token_id", "uint32", 2 },
      { "tokenizer.ggml.unknown_token_id", "uint32", 0 },
    }))
    assert.equal(1, tok.bos_id)
    assert.True(tok.add_bos)
    -- " ab" merges by score: ▁a (-4) before ab (-5), so ▁a + b; then ▁ab (-6).
    assert.same({ 1, 8 }, tok:encode("ab"))
    assert.same({ 1, 3, 5, 8 }, tok:encode("b ab"))
    -- "c" has no piece: its byte.
    assert.same({ 1, 3, 9 + 0x63 }, tok:encode("c"))
    assert.equal("b ab", tok:decode(tok:encode("b ab"), { skip_special = true }))
  end)

  it("names the field of a bad tokenizer", function()
    has(err_of(tokenizer.load, vocab_file("bad_model.gguf", "bert", { "a" })), "tokenizer.ggml.model")
    has(err_of(tokenizer.load, vocab_file("no_scores.gguf", "llama", { "a" })), "tokenizer.ggml.scores")
    has(err_of(tokenizer.load, vocab_file("no_merges.gguf", "gpt2", { "a" })), "tokenizer.ggml.merges")
    has(err_of(tokenizer.load, vocab_file("bad_pre.gguf", "gpt2", { "a" }, {
      { "tokenizer.ggml.merges", "array", "string", {} }, { "tokenizer.ggml.pre", "string", "mystery" } })),
      "tokenizer.ggml.pre")
    has(err_of(tokenizer.load, writer.write(path_of("none.gguf"), {})), "tokenizer.ggml.model")
  end)
end)

---------------------------------------------------------------------------------------------

describe("bad GGUF files", function()
  local function tiny_model(over)
    local kv = over.kv or {
      { "general.architecture", "string", over.arch or "llama" }, { "llama.block_count", "uint32", 1 },
      { "llama.embedding_length", "uint32", 32 }, { "llama.feed_forward_length", "uint32", 64 },
      { "llama.attention.head_count", "uint32", 4 }, { "llama.attention.layer_norm_rms_epsilon", "float32", 1e-5 },
    }
    return writer.encode({ kv = kv, tensors = over.tensors or {
      { name = "token_embd.weight", type = over.type or T.F32, ne = over.ne or { 32, 16 },
        data = over.data or string.rep("\0", 32 * 16 * 4) },
    } })
  end

  local function bad(name, bytes)
    local p = path_of(name)
    files.write(p, bytes)
    return p
  end

  local function open_error(name, bytes)
    local p = bad(name, bytes)
    local msg = err_of(gguf.open, p)
    has(msg, p)
    return msg
  end

  it("an unknown or unreadable tensor type", function()
    has(open_error("type4.gguf", tiny_model({ type = 4 })), "tensor 'token_embd.weight': unknown tensor type 4")
    has(open_error("type99.gguf", tiny_model({ type = 99 })), "unknown tensor type 99")
    local p = bad("q4k.gguf", tiny_model({ type = T.Q4_K, ne = { 256, 2 }, data = string.rep("\0", 144 * 2) }))
    local msg = err_of(eapig.load, p)
    has(msg, p)
    has(msg, "tensor 'token_embd.weight' has type Q4_K")
  end)

  it("an unknown architecture, or none", function()
    local p = bad("mamba.gguf", tiny_model({ arch = "mamba" }))
    local msg = err_of(eapig.load, p)
    has(msg, p)
    has(msg, "'general.architecture': unknown architecture 'mamba'")
    p = bad("noarch.gguf", tiny_model({ kv = { { "x", "uint8", 1 } } }))
    has(err_of(eapig.load, p), "metadata key 'general.architecture' is missing")
  end)

  it("tensor data that leaves the file", function()
    local full = tiny_model({})
    has(open_error("cut.gguf", full:sub(1, #full - 1)), "tensor 'token_embd.weight': data [0, +512 elements of type F32) leaves the data section")
    local far = writer.encode({ tensors = { { name = "w", type = T.F32, ne = { 8 }, offset = 2 ^ 40, data = "" } } })
    has(open_error("far.gguf", far), "tensor 'w': data [1099511627776")
    -- ne whose product overflows
    local huge = writer.encode({ tensors = { { name = "w", type = T.F32, ne = { 2 ^ 32, 2 ^ 32 }, data = "" } } })
    has(open_error("huge.gguf", huge), "tensor 'w': element count overflows")
  end)

  it("a missing metadata key names it", function()
    local p = bad("nokey.gguf", tiny_model({ kv = { { "general.architecture", "string", "llama" } } }))
    has(err_of(eapig.load, p), "metadata key 'llama.attention.head_count' is missing")
  end)

  it("rope_freqs.weight of the wrong length, with a bad factor, or on an architecture without it", function()
    local embd = { name = "token_embd.weight", type = T.F32, ne = { 32, 16 }, data = string.rep("\0", 32 * 16 * 4) }
    local function with_freqs(factors, arch)
      local kv = {}
      for _, e in ipairs({ { "block_count", "uint32", 1 }, { "embedding_length", "uint32", 32 },
                           { "feed_forward_length", "uint32", 64 }, { "attention.head_count", "uint32", 4 },
                           { "attention.layer_norm_rms_epsilon", "float32", 1e-5 } }) do
        kv[#kv + 1] = { arch .. "." .. e[1], e[2], e[3] }
      end
      table.insert(kv, 1, { "general.architecture", "string", arch })
      return tiny_model({ kv = kv, tensors = { embd, { name = "rope_freqs.weight", type = T.F32, ne = { #factors },
                                                       data = writer.f32_bytes(factors) } } })
    end
    -- head size 32 / 4 = 8: four frequencies
    local p = bad("freqs5.gguf", with_freqs({ 1, 1, 2, 4, 8 }, "llama"))
    local msg = err_of(eapig.load, p)
    has(msg, p)
    has(msg, "tensor 'rope_freqs.weight' has ne [5], expected [4]")
    -- zero or negative: refused by eapig_model_set_rope_factors; NaN or infinite already by the read
    for _, case in ipairs({ { 0, "factor 2 is 0; factors must be finite and > 0" },
                            { -1, "factor 2 is -1; factors must be finite and > 0" },
                            { 0 / 0, "element 2 (byte 2440) is NaN" }, { math.huge, "element 2 (byte 2440) is" } }) do
      p = bad("freqs_bad.gguf", with_freqs({ 1, 1, case[1], 8 }, "llama"))
      msg = err_of(eapig.load, p)
      has(msg, p .. ": ")
      has(msg, "tensor 'rope_freqs.weight'")
      has(msg, case[2])
    end
    p = bad("freqs_gemma.gguf", with_freqs({ 1, 1, 2, 8 }, "gemma"))
    has(err_of(eapig.load, p), "tensor 'rope_freqs.weight': llama.cpp reads per-frequency RoPE factors only for llama")
  end)

  it("a float metadata value float32 cannot hold, or not positive and finite, names the key", function()
    local function with_key(arch, key, kind, value)
      local kv = { { "general.architecture", "string", arch } }
      for _, e in ipairs({ { "block_count", "uint32", 1 }, { "embedding_length", "uint32", 32 },
                           { "feed_forward_length", "uint32", 64 }, { "attention.head_count", "uint32", 4 },
                           { "attention.layer_norm_rms_epsilon", "float32", 1e-5 },
                           { "attention.layer_norm_epsilon", "float32", 1e-5 }, { "context_length", "uint32", 16 } }) do
        if e[1] ~= key then kv[#kv + 1] = { arch .. "." .. e[1], e[2], e[3] } end
      end
      kv[#kv + 1] = { arch .. "." .. key, kind, value }
      return tiny_model({ kv = kv })
    end
    for _, case in ipairs({
      { "llama", "attention.layer_norm_rms_epsilon", "float64", 1e-50, "(1e-50) underflows float32" },
      { "llama", "attention.layer_norm_rms_epsilon", "float32", 1e-40, "underflows float32" }, -- a subnormal
      { "llama", "attention.layer_norm_rms_epsilon", "float32", 0 / 0, "must be a positive finite number" },
      { "llama", "rope.freq_base", "float64", 1e300, "(1e+300) overflows float32" },
      { "llama", "rope.freq_base", "float32", math.huge, "must be a positive finite number (got inf)" },
      { "qwen2", "rope.freq_base", "float32", -10000, "must be a positive finite number (got -10000)" },
      { "gpt2", "attention.layer_norm_epsilon", "float64", 1e-300, "underflows float32" },
      { "gemma2", "attn_logit_softcapping", "float64", 1e39, "overflows float32" },
      { "gemma2", "final_logit_softcapping", "float32", 0, "must be a positive finite number (got 0)" },
      { "olmo2", "attention.layer_norm_rms_epsilon", "float32", -math.huge, "must be a positive finite number" },
    }) do
      local arch, key = case[1], case[1] .. "." .. case[2]
      local p = bad("float_" .. arch .. ".gguf", with_key(arch, case[2], case[3], case[4]))
      local msg = err_of(eapig.load, p)
      has(msg, p .. ": metadata key '" .. key .. "'")
      has(msg, case[5])
    end
  end)

  it("a size that is not a positive integer, or a head size it cannot derive, names the key", function()
    -- tiny_model's keys for arch, with over's {kind, value} replacing or adding keys
    local function with_keys(arch, over)
      local keys = { { "block_count", "uint32", 1 }, { "embedding_length", "uint32", 32 },
                     { "feed_forward_length", "uint32", 64 }, { "attention.head_count", "uint32", 4 },
                     { "attention.layer_norm_rms_epsilon", "float32", 1e-5 } }
      local kv, seen = { { "general.architecture", "string", arch } }, {}
      for _, e in ipairs(keys) do
        local o = over[e[1]] or { e[2], e[3] }
        kv[#kv + 1], seen[e[1]] = { arch .. "." .. e[1], o[1], o[2] }, true
      end
      for key, o in pairs(over) do
        if not seen[key] then kv[#kv + 1] = { arch .. "." .. key, o[1], o[2] } end
      end
      return tiny_model({ kv = kv })
    end
    for _, case in ipairs({
      { "gemma2", { ["attention.sliding_window"] = { "uint32", 0 } },
        "metadata key 'gemma2.attention.sliding_window' must be a positive integer (got 0)" },
      { "llama", { block_count = { "float32", 1.5 } }, "metadata key 'llama.block_count' must be a positive integer (got 1.5)" },
      { "olmo2", { ["attention.head_count_kv"] = { "int32", -2 } },
        "metadata key 'olmo2.attention.head_count_kv' must be a positive integer (got -2)" },
      { "llama", { ["attention.head_count"] = { "uint32", 5 } },
        "metadata key 'llama.embedding_length' (32) is not a multiple of 'llama.attention.head_count' (5) and "
        .. "'llama.attention.key_length' is absent" },
    }) do
      local p = bad("int_" .. case[1] .. ".gguf", with_keys(case[1], case[2]))
      local msg = err_of(eapig.load, p)
      has(msg, p .. ": ")
      has(msg, case[3])
    end
  end)

  it("bad headers: magic, version, counts, strings, duplicates, alignment, overlaps", function()
    has(open_error("empty.gguf", ""), "magic")
    has(open_error("magic.gguf", "GGML" .. string.rep("\0", 20)), "does not start with \"GGUF\"")
    has(open_error("v1.gguf", writer.encode({ version = 1 })), "GGUF version 1")
    has(open_error("v9.gguf", writer.encode({ version = 9 })), "unknown GGUF version 9")
    has(open_error("be.gguf", writer.encode({ version = 0x03000000 })), "big-endian")
    has(open_error("nkeys.gguf", writer.encode({ n_keys = 2 ^ 40 })), "key count")
    has(open_error("ntensors.gguf", writer.encode({ n_tensors = 2 ^ 40 })), "tensor count")
    local s = writer.encode({ kv = { { "k", "string", "value" } } })
    has(open_error("str.gguf", s:sub(1, #s - 2)), "key 0: string length 5 at byte")
    has(open_error("arr.gguf", "GGUF" .. writer.u32(3) .. writer.u64(0) .. writer.u64(1) .. writer.str("k")
      .. writer.u32(9) .. writer.u32(4) .. writer.u64(2 ^ 50)), "key 0 'k': 1125899906842624 values")
    has(open_error("nested.gguf", "GGUF" .. writer.u32(3) .. writer.u64(0) .. writer.u64(1) .. writer.str("k")
      .. writer.u32(9) .. writer.u32(9) .. writer.u64(0)), "array element type 9")
    has(open_error("vtype.gguf", "GGUF" .. writer.u32(3) .. writer.u64(0) .. writer.u64(1) .. writer.str("k")
      .. writer.u32(13)), "unknown value type 13")
    has(open_error("dupkey.gguf", writer.encode({ kv = { { "k", "uint8", 1 }, { "k", "uint8", 2 } } })),
      "key 'k' appears twice")
    local f = writer.f32_bytes({ 1, 2, 3, 4, 5, 6, 7, 8 })
    has(open_error("dupt.gguf", writer.encode({ tensors = { { name = "w", type = 0, ne = { 8 }, data = f },
                                                            { name = "w", type = 0, ne = { 8 }, data = f } } })),
      "tensor 'w' appears twice")
    has(open_error("overlap.gguf", writer.encode({ tensors = { { name = "a", type = 0, ne = { 8 }, data = f },
                                                               { name = "b", type = 0, ne = { 8 }, offset = 0 } } })),
      "tensors 'a' and 'b' overlap")
    has(open_error("misaligned.gguf", writer.encode({ tensors = { { name = "a", type = 0, ne = { 8 }, data = f },
                                                                  { name = "b", type = 0, ne = { 1 }, offset = 4 } } })),
      "tensor 'b': offset 4 is not a multiple of the alignment 32")
    has(open_error("align.gguf", writer.encode({ kv = { { "general.alignment", "uint32", 3 } } })),
      "'general.alignment' must be a uint32 power of two")
    has(open_error("block.gguf", writer.encode({ tensors = { { name = "q", type = T.Q8_0, ne = { 16 }, data = "" } } })),
      "ne[0] = 16 is not a multiple of type Q8_0's block of 32")
    has(open_error("dims.gguf", "GGUF" .. writer.u32(3) .. writer.u64(1) .. writer.u64(0) .. writer.str("t")
      .. writer.u32(5) .. string.rep("\0", 64)), "n_dims 5")
  end)

  it("every truncation of a valid file is an error, never a crash", function()
    local full = tiny_model({})
    for n = 0, #full - 1, 7 do
      local p = bad("trunc.gguf", full:sub(1, n))
      assert.True(C.eapig_gguf_open(p) == nil, "a file cut at " .. n .. " bytes opened")
    end
  end)
end)

---------------------------------------------------------------------------------------------

describe("GGUF files from llama.cpp (../shared/models)", function()
  local shared = require("support.shared").dir()
  local stories = shared and shared .. "/models/stories260K-gguf/stories260K.gguf"
  local vocab = shared and shared .. "/models/gpt2-vocab-gguf"
  if not (stories and files.exists(stories)) then
    pending("../shared/models/stories260K-gguf is absent: GGUF model checks skipped")
    return
  end

  it("stories260K.gguf holds stories260K.bin's weights, bit for bit", function()
    local a, na = arena(load.load(stories, { finalize = false }))
    local b, nb = arena(load.load(shared .. "/models/stories260K/stories260K.bin", { finalize = false }))
    assert.equal(nb, na)
    for i = 0, na - 1 do
      if a[i] ~= b[i] then error(("weight %d differs: %.9g vs %.9g"):format(i, a[i], b[i])) end
    end
  end)

  it("stories260K.gguf's tokenizer encodes as tok512.bin does", function()
    local g = tokenizer.load(stories)
    local b = tokenizer.load(shared .. "/models/stories260K/tok512.bin")
    assert.equal(b.vocab_size, g.vocab_size)
    for _, text in ipairs({ "Once upon a time, there was a little girl named Lily.", " two  spaces\nand a line",
                            "Ünïcödé and emoji 😀", "" }) do
      assert.same(b:encode(text), g:encode(text), text)
      assert.equal(text, g:decode(g:encode(text, { bos = false })))
    end
    -- The GGUF marks <s> as a control token, which text may spell (llama.cpp's parse_special).
    assert.same({ 1, 1 }, g:encode("<s>"))
  end)

  it("the GPT-2 vocabulary GGUF tokenizes llama.cpp's 47 test strings", function()
    if not files.exists(vocab .. "/ggml-vocab-gpt-2.gguf.inp") then pending("gpt2-vocab-gguf absent"); return end
    local tok = tokenizer.load(vocab .. "/ggml-vocab-gpt-2.gguf")
    assert.equal(50257, tok.vocab_size)
    assert.equal(50000, tok.n_merges)
    local strings, expected = require("support.shared").vocab_tests(vocab .. "/ggml-vocab-gpt-2.gguf")
    assert.equal(47, #strings)
    local passed = 0
    for i, s in ipairs(strings) do
      assert.same(expected[i], tok:encode(s), ("string %d: %q"):format(i, s))
      passed = passed + 1
    end
    print(("\n  GPT-2 vocabulary GGUF: %d of %d strings as expected"):format(passed, #strings))
  end)
end)
