-- The model families of Hugging Face checkpoints, one table each, read by formats/load.lua and
-- written by formats/save.lua: adding a family is adding its table here (and its tests).
--
-- A family table holds
--   config(get, model_type) -> c    config.json (through load.lua's checked field reader `get`) to
--                                   the core's config fields (load.lua's config_of) plus tied and
--                                   flags (which optional tensors the checkpoint has);
--   write_config(c, model_type)     the inverse: c to a config.json table, with the keys
--                                   transformers reads (and writes for such a model);
--   prefixes                        the tensor-name prefixes a checkpoint may use (the first one
--                                   found names the tensors; save_prefix, or the first, is written);
--   layer_prefix, global, layer     the tensors: global ones (formats/save.lua writes the
--                                   embeddings, each layer's entries, then the other global ones);
--   unembed                         the unembedding's name, present when the model is not tied.
-- An entry { slot, name, rows, cols, ... } puts the tensor `name` into the core's weight `slot`
-- (core/include/eapig.h, eapig_weights / eapig_layer_weights) of (rows, cols) floats, cols absent
-- for a vector. Options: T (stored transposed, GPT-2's Conv1D (in, out)); a list of slots (the
-- tensor holds those matrices stacked by rows, within each of `groups` row groups); plus_one (a
-- norm stored as w with scale 1 + w); when (present only when c.flags[when]).
-- Dimension symbols: D = d_model, F = d_mlp, V = vocab, C = context, QD = n_heads*d_head,
-- KVD = n_kv_heads*d_head, H = n_heads.
--
-- c beyond the core's fields (what write_config reads; config fills them where it reads them):
-- norm_eps and rope_theta as doubles, tied, flags, and per family rope_scaling (the config's
-- object), query_pre_attn_scalar, attn_softcap / final_softcap (0: null, off), sliding_window,
-- layer_types, rotary_pct.
local cjson_null = require("cjson").null
local core = require("eapig.core")

local C = core.C
local floor = math.floor

local families = {}

local function fail(fmt, ...)
  error(string.format(fmt, ...), 0)
end

-- config.json activation names of the core's activations, for the families that write one.
local PLAIN_ACT_NAMES = { [tonumber(C.EAPIG_ACT_GELU_TANH)] = "gelu_new", [tonumber(C.EAPIG_ACT_GELU_ERF)] = "gelu",
                          [tonumber(C.EAPIG_ACT_RELU)] = "relu" }
local function plain_act(c, default)
  return c.act and PLAIN_ACT_NAMES[tonumber(c.act)] or default
end

-- The keys the Llama-like families share.
local function llama_like_keys(c, model_type, architecture)
  local cfg = {
    model_type = model_type, architectures = { architecture }, num_hidden_layers = c.n_layers,
    num_attention_heads = c.n_heads, num_key_value_heads = c.n_kv_heads, hidden_size = c.d_model,
    intermediate_size = c.d_mlp, vocab_size = c.vocab, max_position_embeddings = c.n_ctx,
    rms_norm_eps = c.norm_eps or 1e-6, rope_theta = c.rope_theta or 10000, tie_word_embeddings = c.tied or false,
  }
  if c.rope_scaling then cfg.rope_scaling = c.rope_scaling end
  return cfg
end

-- rope_scaling: absent (or rope_type "default") keeps the plain frequencies; "llama3"
-- (Llama-3.1 / 3.2) rescales them. Any other type is an error: it would change every angle.
local ROPE_TYPES = "default, llama3"
local function rope_scaling(get, path, c)
  c.rope_type = C.EAPIG_ROPE_DEFAULT
  if not get.has("rope_scaling") then return c end
  local rs = get.table("rope_scaling")
  c.rope_scaling = rs
  local sub = get.sub("rope_scaling", rs)
  -- transformers before 4.43 spelled the key "type"
  local kind = sub.has("rope_type") and sub.str("rope_type") or sub.str("type")
  if kind == "default" then return c end
  if kind ~= "llama3" then
    fail("%s: field 'rope_scaling.rope_type': rope type '%s' is not supported (supported: %s)", path, kind,
         ROPE_TYPES)
  end
  c.rope_type = C.EAPIG_ROPE_LLAMA3
  c.rope_factor = sub.num("factor")
  c.rope_low_freq_factor = sub.num("low_freq_factor")
  c.rope_high_freq_factor = sub.num("high_freq_factor")
  c.rope_original_ctx = sub.int("original_max_position_embeddings")
  if c.rope_high_freq_factor <= c.rope_low_freq_factor then
    fail("%s: field 'rope_scaling.high_freq_factor' (%g) must be larger than 'rope_scaling.low_freq_factor' (%g)",
         path, c.rope_high_freq_factor, c.rope_low_freq_factor)
  end
  return c
end

-- llama, mistral and qwen2 share names and layout; they differ in biases and windows.
local function llama_config(get, model_type)
  local D, H = get.int("hidden_size"), get.int("num_attention_heads")
  get.absent("mlp_bias", "gated MLPs have no biases here")
  -- head_dim may differ from hidden_size / heads (it is its own key in newer configs).
  local d_head = get.has("head_dim") and get.int("head_dim") or get.divide("hidden_size", D, "num_attention_heads", H)
  local n_ctx = get.int("max_position_embeddings", 2048)
  -- A sliding window changes attention only beyond its length: cap the context there, so a
  -- longer sequence is refused rather than computed differently from the model.
  local windowed = model_type == "mistral" or (model_type == "qwen2" and get.bool("use_sliding_window", false))
  if windowed then n_ctx = math.min(n_ctx, get.int("sliding_window", n_ctx)) end
  local attention_bias = model_type ~= "qwen2" and get.bool("attention_bias", false)
  return rope_scaling(get, get.path, {
    n_layers = get.int("num_hidden_layers"), n_heads = H, n_kv_heads = get.int("num_key_value_heads", H),
    d_model = D, d_head = d_head, d_mlp = get.int("intermediate_size"), vocab = get.int("vocab_size"),
    n_ctx = n_ctx, norm = C.EAPIG_NORM_RMSNORM, act = get.activation("hidden_act", "silu", true),
    pos = C.EAPIG_POS_ROPE, rotary_dim = d_head, rope_theta = get.float32("rope_theta", 10000),
    norm_eps = get.float32("rms_norm_eps", 1e-6), parallel_attn_mlp = false,
    tied = get.bool("tie_word_embeddings", false),
    flags = { qkv_bias = model_type == "qwen2" or attention_bias, o_bias = attention_bias },
  })
end

local LLAMA_ARCHITECTURES = { llama = "LlamaForCausalLM", mistral = "MistralForCausalLM", qwen2 = "Qwen2ForCausalLM" }

local function llama_write_config(c, model_type)
  local cfg = llama_like_keys(c, model_type, LLAMA_ARCHITECTURES[model_type])
  cfg.hidden_act = "silu"
  if c.d_head * c.n_heads ~= c.d_model then cfg.head_dim = c.d_head end
  -- llama's attention_bias gives q, k, v and o biases; qwen2 always has q, k, v ones and no key
  if model_type ~= "qwen2" then cfg.attention_bias = c.flags.o_bias or false end
  if model_type == "mistral" then cfg.sliding_window = c.sliding_window or 4096 end
  if model_type == "qwen2" then cfg.use_sliding_window = false end
  return cfg
end

local LLAMA = {
  config = llama_config,
  write_config = llama_write_config,
  prefixes = { "model." },
  layer_prefix = "layers.%d.",
  unembed = "lm_head.weight",
  global = {
    { "wte", "embed_tokens.weight", "V", "D" },
    { "lnf_w", "norm.weight", "D" },
  },
  layer = {
    { "ln1_w", "input_layernorm.weight", "D" },
    { "wq", "self_attn.q_proj.weight", "QD", "D" },
    { "bq", "self_attn.q_proj.bias", "QD", when = "qkv_bias" },
    { "wk", "self_attn.k_proj.weight", "KVD", "D" },
    { "bk", "self_attn.k_proj.bias", "KVD", when = "qkv_bias" },
    { "wv", "self_attn.v_proj.weight", "KVD", "D" },
    { "bv", "self_attn.v_proj.bias", "KVD", when = "qkv_bias" },
    { "wo", "self_attn.o_proj.weight", "D", "QD" },
    { "bo", "self_attn.o_proj.bias", "D", when = "o_bias" },
    { "ln2_w", "post_attention_layernorm.weight", "D" },
    { "w_gate", "mlp.gate_proj.weight", "F", "D" },
    { "w_in", "mlp.up_proj.weight", "F", "D" },
    { "w_out", "mlp.down_proj.weight", "D", "F" },
  },
}

-- Gemma (1): llama's tensor names; RMSNorm scales by (1 + w), so the loader adds the 1 to every
-- stored norm weight (plus_one, as TransformerLens does); GeGLU; embeddings times sqrt(d_model)
-- in the core (the input node is the scaled embedding); unembedding tied to the unscaled matrix;
-- head_dim its own key.
local function gemma_config(get)
  local D = get.int("hidden_size")
  get.absent("attention_bias", "gemma has no attention biases here")
  -- hidden_activation decides; absent or null it is the tanh GELU (transformers up to 4.47,
  -- which ignores the Gemma 1.0 configs' hidden_act "gelu").
  local act = get.activation("hidden_activation", "gelu_pytorch_tanh", "geglu")
  return rope_scaling(get, get.path, {
    n_layers = get.int("num_hidden_layers"), n_heads = get.int("num_attention_heads"),
    n_kv_heads = get.int("num_key_value_heads", get.int("num_attention_heads")), d_model = D,
    d_head = get.int("head_dim", 256), d_mlp = get.int("intermediate_size"), vocab = get.int("vocab_size"),
    n_ctx = get.int("max_position_embeddings", 8192), norm = C.EAPIG_NORM_RMSNORM, act = act,
    pos = C.EAPIG_POS_ROPE, rotary_dim = get.int("head_dim", 256), rope_theta = get.num("rope_theta", 10000),
    norm_eps = get.num("rms_norm_eps", 1e-6), parallel_attn_mlp = false,
    tied = get.bool("tie_word_embeddings", true), embed_scale = math.sqrt(D), flags = {},
  })
end

local function gemma_write_config(c, model_type)
  local cfg = llama_like_keys(c, model_type or "gemma", "GemmaForCausalLM")
  cfg.head_dim = c.d_head
  cfg.hidden_act, cfg.hidden_activation = "gelu_pytorch_tanh", "gelu_pytorch_tanh"
  cfg.attention_bias = false
  return cfg
end

local GEMMA = {
  config = gemma_config,
  write_config = gemma_write_config,
  prefixes = { "model." },
  layer_prefix = "layers.%d.",
  unembed = "lm_head.weight",
  global = {
    { "wte", "embed_tokens.weight", "V", "D" },
    { "lnf_w", "norm.weight", "D", plus_one = true },
  },
  layer = {
    { "ln1_w", "input_layernorm.weight", "D", plus_one = true },
    { "wq", "self_attn.q_proj.weight", "QD", "D" },
    { "wk", "self_attn.k_proj.weight", "KVD", "D" },
    { "wv", "self_attn.v_proj.weight", "KVD", "D" },
    { "wo", "self_attn.o_proj.weight", "D", "QD" },
    { "ln2_w", "post_attention_layernorm.weight", "D", plus_one = true },
    { "w_gate", "mlp.gate_proj.weight", "F", "D" },
    { "w_in", "mlp.up_proj.weight", "F", "D" },
    { "w_out", "mlp.down_proj.weight", "D", "F" },
  },
}

-- Gemma-2: Gemma plus sandwich norms (each stored as w, scale 1 + w), attention scores scaled by
-- query_pre_attn_scalar^-1/2 and soft-capped, soft-capped logits, and a sliding window on the
-- layers layer_types marks "sliding_attention" (by default the even ones).
local function sliding_layers(get, n_layers)
  if not get.has("layer_types") then return 2 end -- transformers' default: layers 0, 2, 4, ... slide
  local types = get.table("layer_types")
  if #types ~= n_layers then
    fail("%s: field 'layer_types' has %d entries for %d layers", get.path, #types, n_layers)
  end
  local period = 0 -- the first global layer l gives the period l + 1; none: every layer slides
  for l = 1, n_layers do
    local t = types[l]
    if t ~= "sliding_attention" and t ~= "full_attention" then
      fail("%s: field 'layer_types' entry %d: '%s' is not sliding_attention or full_attention", get.path, l,
           tostring(t))
    end
    if t == "full_attention" and period == 0 then period = l end
  end
  for l = 1, n_layers do -- the core's rule: with period p, layers l (0-based) with (l + 1) % p == 0 are global
    local global = period > 0 and l % period == 0
    if (types[l] == "full_attention") ~= global then
      fail("%s: field 'layer_types': only a repeating pattern with one global layer at the end of each period is "
           .. "supported (entry %d breaks it)", get.path, l)
    end
  end
  return period
end

-- A soft-capping value: null turns it off (0); absent takes transformers' default.
local function softcap(get, key, default)
  if get.raw_null(key) then return 0 end
  return get.num(key, default)
end

local function gemma2_config(get)
  local c = gemma_config(get)
  c.block_norms = C.EAPIG_BLOCK_SANDWICH
  c.query_pre_attn_scalar = get.num("query_pre_attn_scalar", 256)
  c.attn_scale = 1 / math.sqrt(c.query_pre_attn_scalar)
  c.attn_softcap = softcap(get, "attn_logit_softcapping", 50)
  c.final_softcap = softcap(get, "final_logit_softcapping", 30)
  c.sliding_window = get.int("sliding_window", 4096)
  c.sliding_period = sliding_layers(get, c.n_layers)
  c.layer_types = get.has("layer_types") and get.table("layer_types") or nil
  if c.sliding_period == 1 then c.sliding_window = 0 end -- every layer global
  return c
end

-- A soft-capping value to write: 0 is null (off), absent is transformers' default.
local function cap_value(v, default)
  if v == 0 then return cjson_null end
  return v or default
end

local function gemma2_write_config(c)
  local cfg = gemma_write_config(c, "gemma2")
  cfg.architectures = { "Gemma2ForCausalLM" }
  cfg.query_pre_attn_scalar = c.query_pre_attn_scalar or c.d_head
  cfg.attn_logit_softcapping = cap_value(c.attn_softcap, 50.0)
  cfg.final_logit_softcapping = cap_value(c.final_softcap, 30.0)
  cfg.sliding_window = (c.sliding_window or 0) > 0 and c.sliding_window or 4096
  cfg.layer_types = c.layer_types
  return cfg
end

local GEMMA2 = {
  config = gemma2_config,
  write_config = gemma2_write_config,
  prefixes = GEMMA.prefixes,
  layer_prefix = GEMMA.layer_prefix,
  unembed = GEMMA.unembed,
  global = GEMMA.global,
  layer = {
    { "ln1_w", "input_layernorm.weight", "D", plus_one = true },
    { "wq", "self_attn.q_proj.weight", "QD", "D" },
    { "wk", "self_attn.k_proj.weight", "KVD", "D" },
    { "wv", "self_attn.v_proj.weight", "KVD", "D" },
    { "wo", "self_attn.o_proj.weight", "D", "QD" },
    { "attn_post_w", "post_attention_layernorm.weight", "D", plus_one = true },
    { "ln2_w", "pre_feedforward_layernorm.weight", "D", plus_one = true },
    { "w_gate", "mlp.gate_proj.weight", "F", "D" },
    { "w_in", "mlp.up_proj.weight", "F", "D" },
    { "w_out", "mlp.down_proj.weight", "D", "F" },
    { "mlp_post_w", "post_feedforward_layernorm.weight", "D", plus_one = true },
  },
}

-- OLMo-2: post-norm blocks without pre-norms (plain RMSNorm weights), RMSNorm over the whole q and
-- k projections before RoPE, SwiGLU, untied.
local function olmo2_config(get)
  get.absent("attention_bias", "olmo2 has no attention biases here")
  local c = llama_config(get, "olmo2")
  c.block_norms = C.EAPIG_BLOCK_POST_NORM
  c.qk_norm = 1
  c.norm_eps = get.num("rms_norm_eps", 1e-5)
  return c
end

local function olmo2_write_config(c)
  local cfg = llama_like_keys(c, "olmo2", "Olmo2ForCausalLM")
  cfg.hidden_act, cfg.attention_bias = "silu", false
  return cfg
end

local OLMO2 = {
  config = olmo2_config,
  write_config = olmo2_write_config,
  prefixes = { "model." },
  layer_prefix = "layers.%d.",
  unembed = "lm_head.weight",
  global = LLAMA.global,
  layer = {
    { "wq", "self_attn.q_proj.weight", "QD", "D" },
    { "wk", "self_attn.k_proj.weight", "KVD", "D" },
    { "wv", "self_attn.v_proj.weight", "KVD", "D" },
    { "q_norm_w", "self_attn.q_norm.weight", "QD" },
    { "k_norm_w", "self_attn.k_norm.weight", "KVD" },
    { "wo", "self_attn.o_proj.weight", "D", "QD" },
    { "attn_post_w", "post_attention_layernorm.weight", "D" },
    { "w_gate", "mlp.gate_proj.weight", "F", "D" },
    { "w_in", "mlp.up_proj.weight", "F", "D" },
    { "w_out", "mlp.down_proj.weight", "D", "F" },
    { "mlp_post_w", "post_feedforward_layernorm.weight", "D" },
  },
}

local GPT2 = {
  config = function(get)
    local D, H = get.int("n_embd"), get.int("n_head")
    get.absent("scale_attn_by_inverse_layer_idx", "attention scaling by layer is not implemented")
    return {
      n_layers = get.int("n_layer"), n_heads = H, n_kv_heads = H, d_model = D,
      d_head = get.divide("n_embd", D, "n_head", H), d_mlp = get.int("n_inner", 4 * D),
      vocab = get.int("vocab_size"), n_ctx = get.int("n_positions", get.int("n_ctx", 1024)),
      norm = C.EAPIG_NORM_LAYERNORM, act = get.activation("activation_function", "gelu_new", false),
      pos = C.EAPIG_POS_LEARNED, rotary_dim = 0, rope_theta = 0, parallel_attn_mlp = false,
      norm_eps = get.float32("layer_norm_epsilon", 1e-5), tied = get.bool("tie_word_embeddings", true), flags = {},
    }
  end,
  write_config = function(c)
    return {
      model_type = "gpt2", architectures = { "GPT2LMHeadModel" }, n_layer = c.n_layers, n_head = c.n_heads,
      n_embd = c.d_model, n_inner = c.d_mlp, vocab_size = c.vocab, n_positions = c.n_ctx, n_ctx = c.n_ctx,
      layer_norm_epsilon = c.norm_eps or 1e-5, activation_function = plain_act(c, "gelu_new"),
      tie_word_embeddings = c.tied or false, resid_pdrop = 0, embd_pdrop = 0, attn_pdrop = 0,
    }
  end,
  -- The hub's gpt2 stores the bare GPT2Model names; GPT2LMHeadModel saves add `transformer.`.
  prefixes = { "", "transformer." },
  save_prefix = "transformer.",
  layer_prefix = "h.%d.",
  unembed = "lm_head.weight",
  global = {
    { "wte", "wte.weight", "V", "D" },
    { "wpe", "wpe.weight", "C", "D" },
    { "lnf_w", "ln_f.weight", "D" },
    { "lnf_b", "ln_f.bias", "D" },
  },
  -- Conv1D stores (in, out): every matrix is transposed; c_attn holds q, k, v stacked.
  layer = {
    { "ln1_w", "ln_1.weight", "D" },
    { "ln1_b", "ln_1.bias", "D" },
    { { "wq", "wk", "wv" }, "attn.c_attn.weight", "QD", "D", T = true },
    { { "bq", "bk", "bv" }, "attn.c_attn.bias", "QD" },
    { "wo", "attn.c_proj.weight", "D", "QD", T = true },
    { "bo", "attn.c_proj.bias", "D" },
    { "ln2_w", "ln_2.weight", "D" },
    { "ln2_b", "ln_2.bias", "D" },
    { "w_in", "mlp.c_fc.weight", "F", "D", T = true },
    { "b_in", "mlp.c_fc.bias", "F" },
    { "w_out", "mlp.c_proj.weight", "D", "F", T = true },
    { "b_out", "mlp.c_proj.bias", "D" },
  },
}

local NEOX = {
  config = function(get)
    local D, H = get.int("hidden_size"), get.int("num_attention_heads")
    local d_head = get.divide("hidden_size", D, "num_attention_heads", H)
    -- Newer transformers renamed rotary_pct / rotary_emb_base; accept both spellings.
    local pct = get.fraction("rotary_pct", get.fraction("partial_rotary_factor", 0.25))
    return {
      n_layers = get.int("num_hidden_layers"), n_heads = H, n_kv_heads = H, d_model = D, d_head = d_head,
      d_mlp = get.int("intermediate_size"), vocab = get.int("vocab_size"),
      n_ctx = get.int("max_position_embeddings", 2048), norm = C.EAPIG_NORM_LAYERNORM,
      act = get.activation("hidden_act", "gelu", false), pos = C.EAPIG_POS_ROPE,
      rotary_dim = floor(d_head * pct), rope_theta = get.float32("rotary_emb_base", get.float32("rope_theta", 10000)),
      norm_eps = get.float32("layer_norm_eps", 1e-5), parallel_attn_mlp = get.bool("use_parallel_residual", true),
      tied = get.bool("tie_word_embeddings", false), flags = { bias = get.bool("attention_bias", true) },
      rotary_pct = pct,
    }
  end,
  write_config = function(c)
    local cfg = {
      model_type = "gpt_neox", architectures = { "GPTNeoXForCausalLM" }, num_hidden_layers = c.n_layers,
      num_attention_heads = c.n_heads, hidden_size = c.d_model, intermediate_size = c.d_mlp, vocab_size = c.vocab,
      max_position_embeddings = c.n_ctx, rotary_pct = c.rotary_pct or c.rotary_dim / c.d_head,
      rotary_emb_base = c.rope_theta or 10000, layer_norm_eps = c.norm_eps or 1e-5, hidden_act = plain_act(c, "gelu"),
      use_parallel_residual = c.parallel_attn_mlp ~= false, tie_word_embeddings = c.tied or false,
    }
    if c.flags.bias == false then cfg.attention_bias = false end
    return cfg
  end,
  prefixes = { "gpt_neox." },
  layer_prefix = "layers.%d.",
  unembed = "embed_out.weight",
  global = {
    { "wte", "embed_in.weight", "V", "D" },
    { "lnf_w", "final_layer_norm.weight", "D" },
    { "lnf_b", "final_layer_norm.bias", "D" },
  },
  -- query_key_value rows are [H, 3, Dh]: per head, its q, k and v rows.
  layer = {
    { "ln1_w", "input_layernorm.weight", "D" },
    { "ln1_b", "input_layernorm.bias", "D" },
    { "ln2_w", "post_attention_layernorm.weight", "D" },
    { "ln2_b", "post_attention_layernorm.bias", "D" },
    { { "wq", "wk", "wv" }, "attention.query_key_value.weight", "QD", "D", groups = "H" },
    { { "bq", "bk", "bv" }, "attention.query_key_value.bias", "QD", groups = "H", when = "bias" },
    { "wo", "attention.dense.weight", "D", "QD" },
    { "bo", "attention.dense.bias", "D", when = "bias" },
    { "w_in", "mlp.dense_h_to_4h.weight", "F", "D" },
    { "b_in", "mlp.dense_h_to_4h.bias", "F" },
    { "w_out", "mlp.dense_4h_to_h.weight", "D", "F" },
    { "b_out", "mlp.dense_4h_to_h.bias", "D" },
  },
}

-- By config.json's model_type.
families.BY_MODEL_TYPE = { gpt2 = GPT2, llama = LLAMA, mistral = LLAMA, qwen2 = LLAMA, gpt_neox = NEOX,
                           gemma = GEMMA, gemma2 = GEMMA2, olmo2 = OLMO2 }
families.KNOWN = "gpt2, llama, mistral, qwen2, gpt_neox, gemma, gemma2, olmo2"

-- The sizes the dimension symbols of the tables stand for, from c.
function families.dims(c)
  return { D = c.d_model, F = c.d_mlp, V = c.vocab, C = c.n_ctx, H = c.n_heads,
           QD = c.n_heads * c.d_head, KVD = c.n_kv_heads * c.d_head }
end

-- The family table of a model_type, or nil.
function families.get(model_type)
  return families.BY_MODEL_TYPE[model_type]
end

return families
