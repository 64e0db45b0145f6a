-- GGUF files (llama.cpp's checkpoint format): the reader over core/gguf.c, and how a GGUF
-- model maps onto the loader's families (lua/eapig/formats/load.lua).
--
--   local g = require("eapig.formats.gguf").open("model.gguf")
--   g:get("general.architecture")         --> "llama"       (a scalar key, or nil)
--   g:array("tokenizer.ggml.tokens")      --> {"<unk>", ...} (an array key, as a Lua array)
--   g:tensor("token_embd.weight")         --> {type = "F32", ne = {64, 512}, n_elements = 32768}
--
-- A GGUF model is loaded by presenting it as a Hugging Face checkpoint: its metadata becomes the
-- config.json fields its family's table reads, and its tensors answer to the Hugging Face names
-- (token_embd.weight is model.embed_tokens.weight), so each family is described once, in load.lua.
-- What differs from the Hugging Face files, and the mapping undoes it: llama.cpp stores llama's
-- q and k rows in the interleaved RoPE order (pairs 2i, 2i+1; llama2.c's order too), GPT-2's
-- Conv1D matrices already transposed to (out, in), Gemma's norm weights with the 1 of their
-- scale 1 + w already added, and Llama-3.1's rope scaling as per-frequency factors
-- (rope_freqs.weight); what it leaves implicit (Gemma's embedding scale and activation,
-- Gemma-2's query scale) is derived as llama.cpp derives it.
local ffi = require("ffi")
local core = require("eapig.core")

local C = core.C
local floor = math.floor

local gguf = {}

local function fail(fmt, ...)
  error(string.format(fmt, ...), 0)
end

local u64_out = ffi.new("uint64_t[1]")
local i32_out = ffi.new("int32_t[1]")

---------------------------------------------------------------------------------------------
-- Reader

local Reader = {}
Reader.__index = Reader

-- 1 when the file starts with GGUF's magic (so a .bin or a folder is not mistaken for one).
function gguf.is_gguf(path)
  local f = io.open(path, "rb")
  if not f then return false end
  local magic = f:read(4)
  f:close()
  return magic == "GGUF"
end

-- Opens and checks the whole header (core/gguf.c); raises naming the file and the field.
function gguf.open(path)
  local h = C.eapig_gguf_open(path)
  if h == nil then error(ffi.string(C.eapig_last_error()), 0) end
  local self = setmetatable({ path = path, handle = ffi.gc(h, C.eapig_gguf_close) }, Reader)
  self.version = tonumber(C.eapig_gguf_version(h))
  self.n_keys = tonumber(C.eapig_gguf_n_keys(h))
  self.n_tensors = tonumber(C.eapig_gguf_n_tensors(h))
  return self
end

local function handle_of(self)
  if self.handle == nil then fail("%s: the GGUF file is closed", self.path) end
  return self.handle
end

-- Key names in file order.
function Reader:keys()
  local h, out = handle_of(self), {}
  for i = 0, self.n_keys - 1 do
    local p = C.eapig_gguf_key(h, i, u64_out)
    out[i + 1] = ffi.string(p, u64_out[0])
  end
  return out
end

local INTEGER_TYPES = {
  [C.EAPIG_GGUF_UINT8] = true, [C.EAPIG_GGUF_INT8] = true, [C.EAPIG_GGUF_UINT16] = true,
  [C.EAPIG_GGUF_INT16] = true, [C.EAPIG_GGUF_UINT32] = true, [C.EAPIG_GGUF_INT32] = true,
  [C.EAPIG_GGUF_UINT64] = true, [C.EAPIG_GGUF_INT64] = true,
}

-- Elements [first, first + n) of key i as Lua values.
local function values(self, i, elem, first, n)
  local h = handle_of(self)
  local out = {}
  if n == 0 then return out end
  if elem == C.EAPIG_GGUF_STRING then
    local ptrs, lens = ffi.new("const char *[?]", n), ffi.new("uint64_t[?]", n)
    core.check(C.eapig_gguf_key_strings(h, i, first, n, ptrs, lens), self.path)
    for j = 0, n - 1 do out[j + 1] = ffi.string(ptrs[j], lens[j]) end
  elseif elem == C.EAPIG_GGUF_BOOL then
    local buf = ffi.new("int64_t[?]", n)
    core.check(C.eapig_gguf_key_integers(h, i, first, n, buf), self.path)
    for j = 0, n - 1 do out[j + 1] = buf[j] ~= 0 end
  elseif INTEGER_TYPES[elem] then
    -- Exact as int64; a Lua number holds them exactly up to 2^53, which ids and sizes are.
    local buf = ffi.new("int64_t[?]", n)
    core.check(C.eapig_gguf_key_integers(h, i, first, n, buf), self.path)
    for j = 0, n - 1 do out[j + 1] = tonumber(buf[j]) end
  else
    local buf = ffi.new("double[?]", n)
    core.check(C.eapig_gguf_key_numbers(h, i, first, n, buf), self.path)
    for j = 0, n - 1 do out[j + 1] = buf[j] end
  end
  return out
end

local function key_index(self, name)
  local i = C.eapig_gguf_find_key(handle_of(self), name)
  if i < 0 then return nil end
  return i
end

-- A scalar key's value (number, string or boolean), or nil when the key is absent. An array
-- key is an error: read it with :array.
function Reader:get(name)
  local i = key_index(self, name)
  if not i then return nil end
  local t = C.eapig_gguf_key_type(self.handle, i, i32_out, u64_out)
  if t == C.EAPIG_GGUF_ARRAY then fail("%s: key '%s' is an array, not a single value", self.path, name) end
  return values(self, i, t, 0, 1)[1]
end

-- An array key's elements as a Lua array, or nil when absent; a scalar key is an error.
function Reader:array(name)
  local i = key_index(self, name)
  if not i then return nil end
  local t = C.eapig_gguf_key_type(self.handle, i, i32_out, u64_out)
  if t ~= C.EAPIG_GGUF_ARRAY then fail("%s: key '%s' is a single value, not an array", self.path, name) end
  return values(self, i, i32_out[0], 0, tonumber(u64_out[0]))
end

-- {index, type (name), type_code, n_dims, ne = {ne0, ...}, n_elements, begin, end} or nil.
function Reader:tensor(name)
  local h = handle_of(self)
  local i = C.eapig_gguf_find_tensor(h, name)
  if i < 0 then return nil end
  local ty, nd, ne, n = ffi.new("int32_t[1]"), ffi.new("int32_t[1]"), ffi.new("int64_t[4]"), ffi.new("int64_t[1]")
  local b, e = ffi.new("uint64_t[1]"), ffi.new("uint64_t[1]")
  core.check(C.eapig_gguf_tensor_info(h, i, ty, nd, ne, n, b, e), self.path)
  local dims = {}
  for d = 1, nd[0] do dims[d] = tonumber(ne[d - 1]) end
  return { index = i, type = ffi.string(C.eapig_gguf_type_name(ty[0])), type_code = ty[0], n_dims = nd[0],
           ne = dims, n_elements = tonumber(n[0]), begin = tonumber(b[0]), ["end"] = tonumber(e[0]) }
end

-- Tensor names in file order.
function Reader:tensor_names()
  local h, out = handle_of(self), {}
  for i = 0, self.n_tensors - 1 do
    local p = C.eapig_gguf_tensor_name(h, i, u64_out)
    out[i + 1] = ffi.string(p, u64_out[0])
  end
  return out
end

-- Converts tensor `name` to float32 into dst (its element count, in stored order).
function Reader:read(name, dst, n)
  local t = self:tensor(name)
  if not t then fail("%s: missing tensor '%s'", self.path, name) end
  core.check(C.eapig_gguf_tensor_read(handle_of(self), t.index, dst, n), self.path)
  return t
end

function Reader:close()
  if self.handle ~= nil then C.eapig_gguf_close(ffi.gc(self.handle, nil)) end
  self.handle = nil
end

---------------------------------------------------------------------------------------------
-- Architectures: metadata -> config.json fields, and Hugging Face tensor names -> GGUF names
-- (llama.cpp's gguf-py tensor_mapping.py and llama-arch.cpp, for the files its
-- convert_hf_to_gguf.py writes).

-- The tensor types eapig converts; any other is refused before the model is allocated.
local READABLE = { F32 = true, F16 = true, BF16 = true, Q8_0 = true }

-- Per layer: Hugging Face suffix -> GGUF suffix; permute = the head count whose RoPE rows are
-- interleaved in llama.cpp's llama files.
local LLAMA_GLOBAL = {
  ["model.embed_tokens.weight"] = "token_embd.weight",
  ["model.norm.weight"] = "output_norm.weight",
  ["lm_head.weight"] = "output.weight",
}
local LLAMA_LAYER = {
  ["input_layernorm.weight"] = { "attn_norm.weight" },
  ["self_attn.q_proj.weight"] = { "attn_q.weight", permute = true },
  ["self_attn.q_proj.bias"] = { "attn_q.bias", permute = true },
  ["self_attn.k_proj.weight"] = { "attn_k.weight", permute = true },
  ["self_attn.k_proj.bias"] = { "attn_k.bias", permute = true },
  ["self_attn.v_proj.weight"] = { "attn_v.weight" },
  ["self_attn.v_proj.bias"] = { "attn_v.bias" },
  ["self_attn.o_proj.weight"] = { "attn_output.weight" },
  ["self_attn.o_proj.bias"] = { "attn_output.bias" },
  ["post_attention_layernorm.weight"] = { "ffn_norm.weight" },
  ["mlp.gate_proj.weight"] = { "ffn_gate.weight" },
  ["mlp.up_proj.weight"] = { "ffn_up.weight" },
  ["mlp.down_proj.weight"] = { "ffn_down.weight" },
}

-- A layer table: the shared attention and MLP projections plus the family's norms.
local function with_norms(norms)
  local t = {}
  for _, k in ipairs({ "self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
                       "self_attn.o_proj.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight",
                       "mlp.down_proj.weight" }) do
    t[k] = { LLAMA_LAYER[k][1] }
  end
  for hf, gg in pairs(norms) do t[hf] = { gg } end
  return t
end

-- Gemma: llama's names; post_attention_layernorm (the MLP's pre-norm) is ffn_norm.
local GEMMA_LAYER = with_norms({
  ["input_layernorm.weight"] = "attn_norm.weight",
  ["post_attention_layernorm.weight"] = "ffn_norm.weight",
})
-- Gemma-2: the sandwich norms. Note post_attention_layernorm is the attention's post-norm here,
-- and ffn_norm is pre_feedforward_layernorm.
local GEMMA2_LAYER = with_norms({
  ["input_layernorm.weight"] = "attn_norm.weight",
  ["post_attention_layernorm.weight"] = "post_attention_norm.weight",
  ["pre_feedforward_layernorm.weight"] = "ffn_norm.weight",
  ["post_feedforward_layernorm.weight"] = "post_ffw_norm.weight",
})
-- OLMo-2: post-norms only, and the q / k norms over whole projections.
local OLMO2_LAYER = with_norms({
  ["self_attn.q_norm.weight"] = "attn_q_norm.weight",
  ["self_attn.k_norm.weight"] = "attn_k_norm.weight",
  ["post_attention_layernorm.weight"] = "post_attention_norm.weight",
  ["post_feedforward_layernorm.weight"] = "post_ffw_norm.weight",
})

local GPT2_GLOBAL = {
  ["wte.weight"] = "token_embd.weight",
  ["wpe.weight"] = "position_embd.weight",
  ["ln_f.weight"] = "output_norm.weight",
  ["ln_f.bias"] = "output_norm.bias",
  ["lm_head.weight"] = "output.weight",
}
local GPT2_LAYER = {
  ["ln_1.weight"] = { "attn_norm.weight" },
  ["ln_1.bias"] = { "attn_norm.bias" },
  ["attn.c_attn.weight"] = { "attn_qkv.weight" },
  ["attn.c_attn.bias"] = { "attn_qkv.bias" },
  ["attn.c_proj.weight"] = { "attn_output.weight" },
  ["attn.c_proj.bias"] = { "attn_output.bias" },
  ["ln_2.weight"] = { "ffn_norm.weight" },
  ["ln_2.bias"] = { "ffn_norm.bias" },
  ["mlp.c_fc.weight"] = { "ffn_up.weight" },
  ["mlp.c_fc.bias"] = { "ffn_up.bias" },
  ["mlp.c_proj.weight"] = { "ffn_down.weight" },
  ["mlp.c_proj.bias"] = { "ffn_down.bias" },
}

-- Metadata readers that name the file and the key.
local function meta_reader(g, arch)
  local m = {}
  function m.num(name, default)
    local key = arch .. "." .. name
    local v = g:get(key)
    if v == nil then
      if default == nil then fail("%s: metadata key '%s' is missing", g.path, key) end
      return default
    end
    if type(v) ~= "number" then fail("%s: metadata key '%s' must be a number (got %s)", g.path, key, tostring(v)) end
    return v
  end
  -- A size or count: a positive integer below 2^31 (the core's int32), naming the key otherwise.
  function m.int(name, default)
    local v = m.num(name, default)
    if v ~= floor(v) or v < 1 or v >= 2 ^ 31 then
      fail("%s: metadata key '%s' must be a positive integer (got %s)", g.path, arch .. "." .. name, tostring(v))
    end
    return v
  end
  -- A positive number the core keeps as a float32 (epsilons, RoPE base, soft-caps): NaN, an
  -- infinity, 0 or less, or a value outside float32's normal range is an error naming the key.
  function m.float32(name, default)
    local v = m.num(name, default)
    local key = arch .. "." .. name
    if not (v > 0) or v == math.huge then -- luacheck: ignore 581 (NaN must fail)
      fail("%s: metadata key '%s' must be a positive finite number (got %s)", g.path, key, tostring(v))
    end
    local problem = core.float32_problem(v)
    if problem then fail("%s: metadata key '%s' (%s) %s", g.path, key, tostring(v), problem) end
    return v
  end
  function m.absent(name, why)
    local key = arch .. "." .. name
    local v = g:get(key)
    if v ~= nil and v ~= 0 and v ~= "none" and v ~= false then
      fail("%s: metadata key '%s' = %s is not supported (%s)", g.path, key, tostring(v), why)
    end
  end
  return m
end

-- The vocabulary size is the embedding's row count (the tokenizer may hold more or fewer).
local function vocab_rows(g)
  local t = g:tensor("token_embd.weight")
  if not t then fail("%s: missing tensor 'token_embd.weight' (a vocabulary-only file has no model)", g.path) end
  if t.n_dims ~= 2 then fail("%s: tensor 'token_embd.weight' has %d dimensions, expected 2", g.path, t.n_dims) end
  return t.ne[2]
end

-- What every RoPE architecture shares: heads, widths, the head size (attention.key_length, else
-- embedding_length / head_count as llama.cpp derives it), full-width RoPE, and the metadata
-- that would change the computation refused. rope_freqs: whether llama.cpp reads the
-- rope_freqs.weight tensor for this architecture (llama only).
local function rope_common(g, arch, rope_freqs)
  local m = meta_reader(g, arch)
  local H = m.int("attention.head_count")
  local D = m.int("embedding_length")
  m.absent("rope.scaling.type", "only plain RoPE and rope_freqs.weight factors are implemented")
  m.absent("expert_count", "mixture-of-experts layers are not implemented")
  if not g:get(arch .. ".attention.key_length") and D % H ~= 0 then
    fail("%s: metadata key '%s.embedding_length' (%d) is not a multiple of '%s.attention.head_count' (%d) and "
         .. "'%s.attention.key_length' is absent: the head size is unknown", g.path, arch, D, arch, H, arch)
  end
  local d_head = m.int("attention.key_length", D / H)
  if m.int("attention.value_length", d_head) ~= d_head then
    fail("%s: metadata key '%s.attention.value_length' differs from key_length: not supported", g.path, arch)
  end
  if m.int("rope.dimension_count", d_head) ~= d_head then
    fail("%s: metadata key '%s.rope.dimension_count' (%d) is not the head size %s: partial RoPE is not supported for %s",
         g.path, arch, m.int("rope.dimension_count"), tostring(d_head), arch)
  end
  local freqs = g:tensor("rope_freqs.weight")
  if freqs and not rope_freqs then
    fail("%s: tensor 'rope_freqs.weight': llama.cpp reads per-frequency RoPE factors only for llama, not %s",
         g.path, arch)
  end
  if freqs and (freqs.n_dims ~= 1 or freqs.ne[1] * 2 ~= d_head) then
    fail("%s: tensor 'rope_freqs.weight' has ne %s, expected [%s] (one factor per rotary frequency: head size / 2)",
         g.path, "[" .. table.concat(freqs.ne, ", ") .. "]", tostring(d_head / 2))
  end
  return {
    hidden_size = D, num_attention_heads = H, num_key_value_heads = m.int("attention.head_count_kv", H),
    head_dim = d_head, num_hidden_layers = m.int("block_count"), intermediate_size = m.int("feed_forward_length"),
    rms_norm_eps = m.float32("attention.layer_norm_rms_epsilon"),
    -- llama.cpp's default base when the key is absent (its gemma converter never writes it)
    rope_theta = m.float32("rope.freq_base", 10000), vocab_size = vocab_rows(g),
    -- untied when the file has an output matrix (llama2.c conversions store an explicit copy)
    tie_word_embeddings = g:tensor("output.weight") == nil,
  }, m
end

local function llama_like(g, arch, model_type)
  local f, m = rope_common(g, arch, model_type == "llama")
  f.model_type, f.hidden_act = model_type, "silu"
  f.max_position_embeddings = m.int("context_length", 2048)
  -- llama's attention_bias (q, k, v and o biases); qwen2 always has q, k, v biases.
  f.attention_bias = model_type == "llama" and g:tensor("blk.0.attn_q.bias") ~= nil
  return f
end

-- Gemma and Gemma-2. llama.cpp stores no activation (the tanh GELU is implied), no embedding
-- scale (sqrt(embedding_length) is implied) and no rope base (10000); the 1 of each norm's
-- scale 1 + w is added into the stored norm weights by the converter.
local function gemma_like(g, arch)
  local f, m = rope_common(g, arch, false)
  f.model_type, f.hidden_activation = arch, "gelu_pytorch_tanh"
  f.max_position_embeddings = m.int("context_length", 8192)
  if arch == "gemma2" then
    -- Not stored: llama.cpp scales queries by 1/sqrt(embedding_length / head_count) for the 27B
    -- model (46 blocks) and by 1/sqrt(head size) otherwise, as gemma_pytorch's configs do.
    f.query_pre_attn_scalar = f.num_hidden_layers == 46 and floor(f.hidden_size / f.num_attention_heads) or f.head_dim
    -- llama.cpp's defaults when absent; its converter always writes both (a null cap in
    -- config.json cannot be converted, so a GGUF cap is never off)
    f.attn_logit_softcapping = m.float32("attn_logit_softcapping", 50)
    f.final_logit_softcapping = m.float32("final_logit_softcapping", 30)
    -- layers 0, 2, 4, ... slide (llama.cpp's and transformers' default pattern)
    f.sliding_window = m.int("attention.sliding_window", 4096)
  end
  return f
end

local ARCHS = {
  llama = {
    model_type = "llama", global = LLAMA_GLOBAL, layer = LLAMA_LAYER, layer_name = "^model%.layers%.(%d+)%.(.+)$",
    permute = true, config = function(g) return llama_like(g, "llama", "llama") end,
  },
  qwen2 = {
    model_type = "qwen2", global = LLAMA_GLOBAL, layer = LLAMA_LAYER, layer_name = "^model%.layers%.(%d+)%.(.+)$",
    permute = false, config = function(g) return llama_like(g, "qwen2", "qwen2") end,
  },
  -- llama.cpp runs gemma, gemma2 and olmo2 with the half-split RoPE: no reordering.
  gemma = {
    model_type = "gemma", global = LLAMA_GLOBAL, layer = GEMMA_LAYER, layer_name = "^model%.layers%.(%d+)%.(.+)$",
    permute = false, norms_include_one = true, config = function(g) return gemma_like(g, "gemma") end,
  },
  gemma2 = {
    model_type = "gemma2", global = LLAMA_GLOBAL, layer = GEMMA2_LAYER, layer_name = "^model%.layers%.(%d+)%.(.+)$",
    permute = false, norms_include_one = true, config = function(g) return gemma_like(g, "gemma2") end,
  },
  olmo2 = {
    model_type = "olmo2", global = LLAMA_GLOBAL, layer = OLMO2_LAYER, layer_name = "^model%.layers%.(%d+)%.(.+)$",
    permute = false, config = function(g) return llama_like(g, "olmo2", "olmo2") end,
  },
  gpt2 = {
    model_type = "gpt2", global = GPT2_GLOBAL, layer = GPT2_LAYER, layer_name = "^h%.(%d+)%.(.+)$",
    config = function(g)
      local m = meta_reader(g, "gpt2")
      local D = m.int("embedding_length")
      return {
        model_type = "gpt2", n_embd = D, n_head = m.int("attention.head_count"), n_layer = m.int("block_count"),
        n_inner = m.int("feed_forward_length", 4 * D), n_positions = m.int("context_length"),
        layer_norm_epsilon = m.float32("attention.layer_norm_epsilon"), vocab_size = vocab_rows(g),
        activation_function = "gelu_new", tie_word_embeddings = g:tensor("output.weight") == nil,
      }
    end,
  },
}
local KNOWN_ARCHS = "llama, qwen2, gemma, gemma2, olmo2, gpt2"

-- The tensor source the family filler reads (the interface of a safetensors reader: has,
-- read_into, close, path), answering to Hugging Face names.
local Source = {}
Source.__index = Source

function Source:translate(name)
  local a = self.arch
  local global = a.global[name]
  if global then return global end
  local layer, rest = name:match(a.layer_name)
  local e = rest and a.layer[rest]
  if not e then return nil end
  return "blk." .. layer .. "." .. e[1], a.permute and e.permute
end

function Source:has(name)
  local g_name = self:translate(name)
  return g_name ~= nil and self.g:tensor(g_name) ~= nil
end

local function shape_string(t)
  return "[" .. table.concat(t, ", ") .. "]"
end

-- Reads a tensor in the (rows, cols) layout the family asks for. GGUF matrices are already
-- (out, in), so a transposed read (GPT-2's Conv1D in safetensors) reads them as they are.
function Source:read_into(name, dst, rows, cols)
  local g_name, permute = self:translate(name)
  if not g_name then fail("%s: no GGUF tensor stands for '%s' in architecture %s", self.path, name, self.arch_name) end
  local t = self.g:tensor(g_name)
  if not t then fail("%s: missing tensor '%s'", self.path, g_name) end
  -- ne = {cols, rows} for a matrix; a vector is one ne of rows*cols elements.
  local fits
  if t.n_dims == 2 then fits = t.ne[1] == cols and t.ne[2] == rows
  elseif t.n_dims == 1 then fits = (rows == 1 or cols == 1) and t.ne[1] == rows * cols end
  if not fits then
    fail("%s: tensor '%s' has ne %s, expected %s", self.path, g_name, shape_string(t.ne),
         shape_string(cols == 1 and { rows } or { cols, rows }))
  end
  core.check(C.eapig_gguf_tensor_read(self.g.handle, t.index, dst, rows * cols), self.path)
  -- Interleaved RoPE pairs -> the core's half-split rows (as for llama2.c checkpoints).
  if permute then
    core.check(C.eapig_rope_permute_rows(dst, rows / self.d_head, self.d_head, cols),
               string.format("%s: tensor '%s'", self.path, g_name))
  end
end

-- Before the weights are filled: llama.cpp's per-frequency RoPE factors (rope_freqs.weight, how
-- its converter stores Llama-3.1's rope_scaling) divide the model's rotary frequencies, as
-- ggml_rope_ext divides them. Its shape was checked when the file was opened.
function Source:prepare_model(m)
  local t = self.g:tensor("rope_freqs.weight")
  if not t then return end
  local n = t.ne[1]
  local factors = ffi.new("float[?]", n)
  core.check(C.eapig_gguf_tensor_read(self.g.handle, t.index, factors, n), self.path)
  core.check_file(C.eapig_model_set_rope_factors(m, factors, n), self.path,
                  string.format("%s: tensor 'rope_freqs.weight'", self.path))
end

-- The stored type of a tensor ("F32", "Q8_0", ...), as the loader reports the checkpoint's dtype.
function Source:dtype(name)
  local t = self.g:tensor((self:translate(name)))
  return t and t.type
end

function Source:close()
  self.g:close()
end

-- Opens a GGUF model: returns the config.json fields for its family, and the tensor source.
-- Every tensor's type is checked first, so an unreadable file fails before any allocation.
function gguf.checkpoint(path)
  local g = gguf.open(path)
  local ok, json, src = pcall(function()
    local arch_name = g:get("general.architecture")
    if arch_name == nil then fail("%s: metadata key 'general.architecture' is missing", path) end
    local arch = ARCHS[arch_name]
    if not arch then
      fail("%s: metadata key 'general.architecture': unknown architecture '%s' (known: %s)", path, tostring(arch_name),
           KNOWN_ARCHS)
    end
    for _, name in ipairs(g:tensor_names()) do
      local t = g:tensor(name)
      if not READABLE[t.type] then
        fail("%s: tensor '%s' has type %s; eapig reads F32, F16, BF16 and Q8_0 (requantize the file to one of those)",
             path, name, t.type)
      end
    end
    local fields = arch.config(g)
    local d_head = fields.head_dim or (fields.n_embd and fields.n_embd / fields.n_head)
    return fields, setmetatable({ path = path, g = g, arch = arch, arch_name = arch_name, d_head = d_head,
                                  norms_include_one = arch.norms_include_one }, Source)
  end)
  if not ok then
    g:close()
    error(json, 0)
  end
  return json, src
end

return gguf
