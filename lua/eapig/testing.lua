-- Helpers for tests and benchmarks: random Hugging Face checkpoints of every family, temp
-- folders, and where the shared fixtures live.
--
-- The tensor names and layouts below are written out from transformers' modelling code on
-- purpose, not derived from eapig.load's tables: a loader test then checks one statement of
-- the layout against another.
local cjson = require("cjson")
local safetensors = require("eapig.formats.safetensors")
local random = require("eapig.rng")

local floor = math.floor

local testing = {}

---------------------------------------------------------------------------------------------
-- Tensor lists per family: {name, shape, kind}; kind "norm" draws 1 + N(0, scale^2).

local function w(list, name, shape, kind)
  list[#list + 1] = { name = name, shape = shape, kind = kind or "w" }
end

local LAYOUTS = {}

function LAYOUTS.gpt2(o)
  local t, p, D, F = {}, o.prefix or "", o.d_model, o.d_mlp
  w(t, p .. "wte.weight", { o.vocab, D })
  w(t, p .. "wpe.weight", { o.n_ctx, D })
  for l = 0, o.layers - 1 do
    local h = p .. "h." .. l .. "."
    -- Conv1D weights are stored (in, out).
    w(t, h .. "ln_1.weight", { D }, "norm")
    w(t, h .. "ln_1.bias", { D })
    w(t, h .. "attn.c_attn.weight", { D, 3 * D })
    w(t, h .. "attn.c_attn.bias", { 3 * D })
    w(t, h .. "attn.c_proj.weight", { D, D })
    w(t, h .. "attn.c_proj.bias", { D })
    w(t, h .. "ln_2.weight", { D }, "norm")
    w(t, h .. "ln_2.bias", { D })
    w(t, h .. "mlp.c_fc.weight", { D, F })
    w(t, h .. "mlp.c_fc.bias", { F })
    w(t, h .. "mlp.c_proj.weight", { F, D })
    w(t, h .. "mlp.c_proj.bias", { D })
  end
  w(t, p .. "ln_f.weight", { D }, "norm")
  w(t, p .. "ln_f.bias", { D })
  if not o.tied then w(t, "lm_head.weight", { o.vocab, D }) end
  return t
end

local function llama_like(o)
  local t, D, F = {}, o.d_model, o.d_mlp
  local QD, KVD = o.heads * o.d_head, o.kv_heads * o.d_head
  w(t, "model.embed_tokens.weight", { o.vocab, D })
  for l = 0, o.layers - 1 do
    local p = "model.layers." .. l .. "."
    w(t, p .. "input_layernorm.weight", { D }, "norm")
    w(t, p .. "self_attn.q_proj.weight", { QD, D })
    if o.qkv_bias then w(t, p .. "self_attn.q_proj.bias", { QD }) end
    w(t, p .. "self_attn.k_proj.weight", { KVD, D })
    if o.qkv_bias then w(t, p .. "self_attn.k_proj.bias", { KVD }) end
    w(t, p .. "self_attn.v_proj.weight", { KVD, D })
    if o.qkv_bias then w(t, p .. "self_attn.v_proj.bias", { KVD }) end
    w(t, p .. "self_attn.o_proj.weight", { D, QD })
    -- llama's attention_bias also gives o_proj a bias; qwen2's o_proj never has one.
    if o.qkv_bias and o.family == "llama" then w(t, p .. "self_attn.o_proj.bias", { D }) end
    w(t, p .. "post_attention_layernorm.weight", { D }, "norm")
    w(t, p .. "mlp.gate_proj.weight", { F, D })
    w(t, p .. "mlp.up_proj.weight", { F, D })
    w(t, p .. "mlp.down_proj.weight", { D, F })
  end
  w(t, "model.norm.weight", { D }, "norm")
  if not o.tied then w(t, "lm_head.weight", { o.vocab, D }) end
  return t
end
LAYOUTS.llama, LAYOUTS.mistral, LAYOUTS.qwen2 = llama_like, llama_like, llama_like

-- Gemma: llama's names without biases; its norms are stored as w with scale (1 + w), so they
-- are drawn like any weight, N(0, scale^2) (kind "w").
function LAYOUTS.gemma(o)
  local t, D, F = {}, o.d_model, o.d_mlp
  local QD, KVD = o.heads * o.d_head, o.kv_heads * o.d_head
  w(t, "model.embed_tokens.weight", { o.vocab, D })
  for l = 0, o.layers - 1 do
    local p = "model.layers." .. l .. "."
    w(t, p .. "input_layernorm.weight", { D })
    w(t, p .. "self_attn.q_proj.weight", { QD, D })
    w(t, p .. "self_attn.k_proj.weight", { KVD, D })
    w(t, p .. "self_attn.v_proj.weight", { KVD, D })
    w(t, p .. "self_attn.o_proj.weight", { D, QD })
    w(t, p .. "post_attention_layernorm.weight", { D })
    w(t, p .. "mlp.gate_proj.weight", { F, D })
    w(t, p .. "mlp.up_proj.weight", { F, D })
    w(t, p .. "mlp.down_proj.weight", { D, F })
  end
  w(t, "model.norm.weight", { D })
  if not o.tied then w(t, "lm_head.weight", { o.vocab, D }) end
  return t
end

-- Gemma-2: Gemma's names plus the sandwich norms (also stored as w with scale 1 + w).
function LAYOUTS.gemma2(o)
  local t, D, F = {}, o.d_model, o.d_mlp
  local QD, KVD = o.heads * o.d_head, o.kv_heads * o.d_head
  w(t, "model.embed_tokens.weight", { o.vocab, D })
  for l = 0, o.layers - 1 do
    local p = "model.layers." .. l .. "."
    w(t, p .. "input_layernorm.weight", { D })
    w(t, p .. "self_attn.q_proj.weight", { QD, D })
    w(t, p .. "self_attn.k_proj.weight", { KVD, D })
    w(t, p .. "self_attn.v_proj.weight", { KVD, D })
    w(t, p .. "self_attn.o_proj.weight", { D, QD })
    w(t, p .. "post_attention_layernorm.weight", { D })
    w(t, p .. "pre_feedforward_layernorm.weight", { D })
    w(t, p .. "mlp.gate_proj.weight", { F, D })
    w(t, p .. "mlp.up_proj.weight", { F, D })
    w(t, p .. "mlp.down_proj.weight", { D, F })
    w(t, p .. "post_feedforward_layernorm.weight", { D })
  end
  w(t, "model.norm.weight", { D })
  if not o.tied then w(t, "lm_head.weight", { o.vocab, D }) end
  return t
end

-- OLMo-2: no pre-norms; q_norm / k_norm over the whole projections; plain norm weights.
function LAYOUTS.olmo2(o)
  local t, D, F = {}, o.d_model, o.d_mlp
  local QD, KVD = o.heads * o.d_head, o.kv_heads * o.d_head
  w(t, "model.embed_tokens.weight", { o.vocab, D })
  for l = 0, o.layers - 1 do
    local p = "model.layers." .. l .. "."
    w(t, p .. "self_attn.q_proj.weight", { QD, D })
    w(t, p .. "self_attn.k_proj.weight", { KVD, D })
    w(t, p .. "self_attn.v_proj.weight", { KVD, D })
    w(t, p .. "self_attn.o_proj.weight", { D, QD })
    w(t, p .. "self_attn.q_norm.weight", { QD }, "norm")
    w(t, p .. "self_attn.k_norm.weight", { KVD }, "norm")
    w(t, p .. "post_attention_layernorm.weight", { D }, "norm")
    w(t, p .. "mlp.gate_proj.weight", { F, D })
    w(t, p .. "mlp.up_proj.weight", { F, D })
    w(t, p .. "mlp.down_proj.weight", { D, F })
    w(t, p .. "post_feedforward_layernorm.weight", { D }, "norm")
  end
  w(t, "model.norm.weight", { D }, "norm")
  if not o.tied then w(t, "lm_head.weight", { o.vocab, D }) end
  return t
end

function LAYOUTS.gpt_neox(o)
  local t, D, F = {}, o.d_model, o.d_mlp
  w(t, "gpt_neox.embed_in.weight", { o.vocab, D })
  for l = 0, o.layers - 1 do
    local p = "gpt_neox.layers." .. l .. "."
    w(t, p .. "input_layernorm.weight", { D }, "norm")
    w(t, p .. "input_layernorm.bias", { D })
    w(t, p .. "post_attention_layernorm.weight", { D }, "norm")
    w(t, p .. "post_attention_layernorm.bias", { D })
    -- Rows are [heads, (q, k, v), d_head].
    w(t, p .. "attention.query_key_value.weight", { 3 * D, D })
    w(t, p .. "attention.query_key_value.bias", { 3 * D })
    w(t, p .. "attention.dense.weight", { D, D })
    w(t, p .. "attention.dense.bias", { D })
    w(t, p .. "mlp.dense_h_to_4h.weight", { F, D })
    w(t, p .. "mlp.dense_h_to_4h.bias", { F })
    w(t, p .. "mlp.dense_4h_to_h.weight", { D, F })
    w(t, p .. "mlp.dense_4h_to_h.bias", { D })
  end
  w(t, "gpt_neox.final_layer_norm.weight", { D }, "norm")
  w(t, "gpt_neox.final_layer_norm.bias", { D })
  if not o.tied then w(t, "embed_out.weight", { o.vocab, D }) end
  return t
end

---------------------------------------------------------------------------------------------
-- config.json per family, with the keys transformers reads.

local TORCH_DTYPE = { F32 = "float32", F16 = "float16", BF16 = "bfloat16" }

local CONFIGS = {}

function CONFIGS.gpt2(o)
  return {
    model_type = "gpt2", architectures = { "GPT2LMHeadModel" }, n_layer = o.layers, n_head = o.heads,
    n_embd = o.d_model, n_inner = o.d_mlp, vocab_size = o.vocab, n_positions = o.n_ctx, n_ctx = o.n_ctx,
    layer_norm_epsilon = 1e-5, activation_function = "gelu_new", tie_word_embeddings = o.tied,
  }
end

local ARCH = { llama = "LlamaForCausalLM", mistral = "MistralForCausalLM", qwen2 = "Qwen2ForCausalLM" }

local function llama_config(o)
  local c = {
    model_type = o.family, architectures = { ARCH[o.family] }, num_hidden_layers = o.layers,
    num_attention_heads = o.heads, num_key_value_heads = o.kv_heads, hidden_size = o.d_model,
    intermediate_size = o.d_mlp, vocab_size = o.vocab, max_position_embeddings = o.n_ctx,
    rms_norm_eps = 1e-6, rope_theta = o.rope_theta or 10000.0, hidden_act = "silu",
    tie_word_embeddings = o.tied,
  }
  if o.d_head ~= o.d_model / o.heads then c.head_dim = o.d_head end
  if o.family == "llama" then c.attention_bias = o.qkv_bias end
  if o.rope_scaling then c.rope_scaling = o.rope_scaling end
  if o.family == "mistral" then c.sliding_window = 4096 end
  if o.family == "qwen2" then c.use_sliding_window = false end
  return c
end
CONFIGS.llama, CONFIGS.mistral, CONFIGS.qwen2 = llama_config, llama_config, llama_config

function CONFIGS.gemma(o)
  return {
    model_type = "gemma", architectures = { "GemmaForCausalLM" }, num_hidden_layers = o.layers,
    num_attention_heads = o.heads, num_key_value_heads = o.kv_heads, head_dim = o.d_head,
    hidden_size = o.d_model, intermediate_size = o.d_mlp, vocab_size = o.vocab,
    max_position_embeddings = o.n_ctx, rope_theta = o.rope_theta or 10000.0, rms_norm_eps = 1e-6,
    hidden_act = "gelu_pytorch_tanh", hidden_activation = "gelu_pytorch_tanh", attention_bias = false,
    tie_word_embeddings = o.tied,
  }
end

-- Gemma-2 options: query_pre_attn_scalar (d_head), attn_softcap (50), final_softcap (30), both
-- false for null; sliding_window (4096), layer_types (nil: transformers' default, even layers slide).
function CONFIGS.gemma2(o)
  local c = CONFIGS.gemma(o)
  c.model_type, c.architectures = "gemma2", { "Gemma2ForCausalLM" }
  c.query_pre_attn_scalar = o.query_pre_attn_scalar or o.d_head
  local function cap(v, default)
    if v == false then return cjson.null end
    return v or default
  end
  c.attn_logit_softcapping = cap(o.attn_softcap, 50.0)
  c.final_logit_softcapping = cap(o.final_softcap, 30.0)
  c.sliding_window = o.sliding_window or 4096
  c.layer_types = o.layer_types
  return c
end

function CONFIGS.olmo2(o)
  return {
    model_type = "olmo2", architectures = { "Olmo2ForCausalLM" }, num_hidden_layers = o.layers,
    num_attention_heads = o.heads, num_key_value_heads = o.kv_heads, hidden_size = o.d_model,
    intermediate_size = o.d_mlp, vocab_size = o.vocab, max_position_embeddings = o.n_ctx,
    rope_theta = o.rope_theta or 10000.0, rms_norm_eps = 1e-6, hidden_act = "silu", attention_bias = false,
    tie_word_embeddings = o.tied,
  }
end

function CONFIGS.gpt_neox(o)
  return {
    model_type = "gpt_neox", architectures = { "GPTNeoXForCausalLM" }, num_hidden_layers = o.layers,
    num_attention_heads = o.heads, hidden_size = o.d_model, intermediate_size = o.d_mlp, vocab_size = o.vocab,
    max_position_embeddings = o.n_ctx, rotary_pct = o.rotary_pct or 0.25, rotary_emb_base = 10000.0,
    layer_norm_eps = 1e-5, hidden_act = "gelu", use_parallel_residual = o.parallel ~= false,
    tie_word_embeddings = o.tied,
  }
end

---------------------------------------------------------------------------------------------

local function write_json(path, value)
  local f = assert(io.open(path, "wb"))
  assert(f:write(cjson.encode(value)))
  assert(f:close())
end

local function shell_quote(s)
  return "'" .. s:gsub("'", "'\\''") .. "'"
end

-- A fresh empty folder under the system temp folder.
function testing.tmpdir()
  local name = os.tmpname() -- creates the file, so the name is ours
  os.remove(name)
  local status = os.execute("mkdir -m 700 " .. shell_quote(name))
  assert(status == 0 or status == true, "testing.tmpdir: mkdir failed: " .. name)
  return name
end

-- Removes a folder made by tmpdir (refuses anything that is not an absolute path below /).
function testing.rmtree(dir)
  assert(type(dir) == "string" and dir:match("^/[^/]+/.") and not dir:find("/%.%.?/") and not dir:find("/%.%.?$"),
         "testing.rmtree: refusing " .. tostring(dir))
  os.execute("rm -rf -- " .. shell_quote(dir))
end

local DEFAULTS = {
  gpt2 = { tied = true }, llama = {}, mistral = {}, qwen2 = { qkv_bias = true, tied = true }, gpt_neox = {},
  gemma = { tied = true }, gemma2 = { tied = true }, olmo2 = {},
}

-- Writes a random Hugging Face checkpoint folder and returns its path. Options (defaults):
-- family (gpt2, llama, mistral, qwen2, gpt_neox, gemma, gemma2, olmo2), layers (2), heads (4),
-- kv_heads (heads), d_model (32), d_head (d_model / heads), d_mlp (4 d_model; 2 d_model for gated
-- MLPs), vocab (64), n_ctx (128), tied (gpt2, qwen2, gemma, gemma2),
-- qkv_bias (qwen2; llama's attention_bias), seed (1), scale (0.2), dtype ("F32"), dir (a
-- fresh temp folder), shards (1: model.safetensors; n > 1: n files and the index),
-- prefix (gpt2: "transformer." to save GPT2LMHeadModel's names), rotary_pct and parallel (neox),
-- rope_scaling (llama, mistral, qwen2: the config's object as it is, e.g. Llama-3.1's
-- { rope_type = "llama3", factor = 8, low_freq_factor = 1, high_freq_factor = 4,
-- original_max_position_embeddings = 8192 }); gemma2: query_pre_attn_scalar, attn_softcap,
-- final_softcap, sliding_window, layer_types (see CONFIGS.gemma2).
function testing.random_model(opts)
  local o = {}
  for k, v in pairs(opts or {}) do o[k] = v end
  local family = o.family
  local layout = LAYOUTS[family]
  if not layout then error("testing.random_model: unknown family " .. tostring(family), 2) end
  for k, v in pairs(DEFAULTS[family]) do
    if o[k] == nil then o[k] = v end
  end
  o.layers, o.heads, o.d_model = o.layers or 2, o.heads or 4, o.d_model or 32
  o.kv_heads = o.kv_heads or o.heads
  o.d_head = o.d_head or floor(o.d_model / o.heads)
  local gated = family ~= "gpt2" and family ~= "gpt_neox"
  o.d_mlp = o.d_mlp or (gated and 2 or 4) * o.d_model
  o.vocab, o.n_ctx = o.vocab or 64, o.n_ctx or 128
  o.tied, o.qkv_bias = o.tied or false, o.qkv_bias or false
  local dtype, scale, shards = o.dtype or "F32", o.scale or 0.2, o.shards or 1
  if not TORCH_DTYPE[dtype] then error("testing.random_model: dtype must be F32, F16 or BF16", 2) end
  if not gated and (o.kv_heads ~= o.heads or o.d_head * o.heads ~= o.d_model) then
    error("testing.random_model: " .. family .. " needs kv_heads == heads and d_head == d_model / heads", 2)
  end
  if o.qkv_bias and (family == "gemma" or family == "gemma2" or family == "olmo2") then
    error("testing.random_model: " .. family .. " has no attention biases", 2)
  end
  if family == "olmo2" and o.d_head * o.heads ~= o.d_model then
    error("testing.random_model: olmo2 needs d_head == d_model / heads (its config has no head_dim)", 2)
  end
  if o.qkv_bias and family == "mistral" then error("testing.random_model: mistral has no attention biases", 2) end
  if not o.qkv_bias and family == "qwen2" then error("testing.random_model: qwen2 always has q/k/v biases", 2) end

  local dir = o.dir or testing.tmpdir()
  local config = CONFIGS[family](o)
  config.torch_dtype = TORCH_DTYPE[dtype]
  write_json(dir .. "/config.json", config)

  -- Each tensor draws its values in file order from one stream, as the writer asks for them.
  local rng = random.new(o.seed or 1)
  local tensors = layout(o)
  for _, t in ipairs(tensors) do
    local mean = t.kind == "norm" and 1 or 0
    t.dtype = dtype
    t.data = function(buf, n)
      for i = 0, n - 1 do buf[i] = mean + scale * rng:normal() end
    end
  end
  local meta = { format = "pt" }
  if shards <= 1 then
    safetensors.write(dir .. "/model.safetensors", tensors, meta)
    return dir
  end
  -- Sharded: consecutive runs of tensors per file, named as transformers names them.
  local map, total, per = {}, 0, math.ceil(#tensors / shards)
  for s = 1, shards do
    local file = string.format("model-%05d-of-%05d.safetensors", s, shards)
    local part = {}
    for i = (s - 1) * per + 1, math.min(s * per, #tensors) do
      part[#part + 1] = tensors[i]
      map[tensors[i].name] = file
    end
    total = total + safetensors.write(dir .. "/" .. file, part, meta)
  end
  write_json(dir .. "/model.safetensors.index.json", { metadata = { total_size = total }, weight_map = map })
  return dir
end

return testing
