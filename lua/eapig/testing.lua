-- Helpers for tests and benchmarks: random Hugging Face checkpoints of every family, temp
-- folders, and where the shared fixtures live.
--
-- Random checkpoints are written by eapig.formats.save from the family tables the loader reads;
-- the statement of each family's names and layouts that does not come from those tables is the
-- shared fixtures-families checkpoints, saved by transformers itself (tests/fixtures_families_spec.lua).
local families = require("eapig.formats.families")
local save = require("eapig.formats.save")
local random = require("eapig.rng")

local floor = math.floor

local testing = {}

---------------------------------------------------------------------------------------------

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
  if not families.get(family) then error("testing.random_model: unknown family " .. tostring(family), 2) end
  for k, v in pairs(DEFAULTS[family] or {}) do
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
  if dtype ~= "F32" and dtype ~= "F16" and dtype ~= "BF16" then
    error("testing.random_model: dtype must be F32, F16 or BF16", 2)
  end
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

  local c = {
    n_layers = o.layers, n_heads = o.heads, n_kv_heads = o.kv_heads, d_model = o.d_model, d_head = o.d_head,
    d_mlp = o.d_mlp, vocab = o.vocab, n_ctx = o.n_ctx, tied = o.tied, rope_theta = o.rope_theta,
    rope_scaling = o.rope_scaling, rotary_pct = o.rotary_pct or 0.25, parallel_attn_mlp = o.parallel ~= false,
    query_pre_attn_scalar = o.query_pre_attn_scalar, sliding_window = o.sliding_window, layer_types = o.layer_types,
    attn_softcap = o.attn_softcap == false and 0 or o.attn_softcap,
    final_softcap = o.final_softcap == false and 0 or o.final_softcap,
    -- llama's attention_bias gives o_proj a bias too; qwen2's o_proj never has one
    flags = { qkv_bias = o.qkv_bias, o_bias = o.qkv_bias and family == "llama", bias = true },
  }
  -- Each tensor draws its values in file order from one stream, as the writer asks for them:
  -- norm gains 1 + N(0, scale^2) (a plus_one norm is stored as w: N(0, scale^2)), the rest N(0, scale^2).
  local rng = random.new(o.seed or 1)
  local function data(t)
    local mean = t.norm and 1 or 0
    return function(buf, n)
      for i = 0, n - 1 do buf[i] = mean + scale * rng:normal() end
    end
  end
  -- gpt2: the hub's bare GPT2Model names unless opts.prefix says otherwise
  local prefix = o.prefix or (family == "gpt2" and "" or nil)
  return save.folder(o.dir or testing.tmpdir(), family, c, { data = data, prefix = prefix, dtype = dtype,
                                                              shards = shards })
end

return testing
