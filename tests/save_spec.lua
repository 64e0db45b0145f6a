-- eapig.formats.save, the writer of Hugging Face folders: for every family of
-- formats/families.lua, the folder written from a model's weights loads back to the same weights
-- (names, layouts, fused and transposed tensors, 1 + w norms, optional biases, tied or not).
local ffi = require("ffi")
local core = require("eapig.core")
local families = require("eapig.formats.families")
local load = require("eapig.formats.load")
local save = require("eapig.formats.save")
local testing = require("eapig.testing")

local C = core.C

local function arena(handle)
  local n = ffi.new("int64_t[1]")
  local p = C.eapig_model_arena(handle, n)
  return p, tonumber(n[0])
end

local CASES = {
  { family = "gpt2" },
  { family = "gpt2", tied = false, prefix = "transformer." },
  { family = "llama", kv_heads = 2 },
  { family = "llama", qkv_bias = true, d_head = 6 },
  { family = "mistral", kv_heads = 1 },
  { family = "qwen2", kv_heads = 2 },
  { family = "gpt_neox", heads = 2, rotary_pct = 0.5 },
  { family = "gemma", kv_heads = 1, d_head = 12 },
  { family = "gemma2", kv_heads = 2, attn_softcap = false },
  { family = "olmo2", kv_heads = 2 },
}

describe("eapig.formats.save", function()
  it("has a case below for every family", function()
    local seen = {}
    for _, case in ipairs(CASES) do seen[case.family] = true end
    for model_type in pairs(families.BY_MODEL_TYPE) do assert.is_true(seen[model_type], model_type) end
  end)

  for i, case in ipairs(CASES) do
    local label = case.family .. (case.tied == false and " (untied)" or "") .. (case.qkv_bias and " (biases)" or "")
    it(label .. ": the folder written from the weights loads back to the same weights", function()
      local opts = { layers = 2, d_model = 24, vocab = 40, n_ctx = 16, seed = 30 + i }
      for k, v in pairs(case) do opts[k] = v end
      local first = testing.random_model(opts)
      local a = load.load(first, { finalize = false, weights = "f32" })
      local second = testing.tmpdir()
      save.folder(second, case.family, a.config, { weights = C.eapig_model_weights(a.handle), prefix = case.prefix })
      local b = load.load(second, { finalize = false, weights = "f32" })
      local pa, na = arena(a.handle)
      local pb, nb = arena(b.handle)
      assert.are.equal(na, nb)
      local differ = 0
      for j = 0, na - 1 do
        if pa[j] ~= pb[j] then differ = differ + 1 end
      end
      assert.are.equal(0, differ)
      for _, k in ipairs({ "n_layers", "n_heads", "n_kv_heads", "d_model", "d_head", "d_mlp", "vocab", "n_ctx", "norm",
                           "act", "pos", "rotary_dim", "norm_eps", "rope_theta", "tied", "parallel_attn_mlp" }) do
        assert.are.equal(a.info[k], b.info[k], k)
      end
      C.eapig_model_free(ffi.gc(a.handle, nil))
      C.eapig_model_free(ffi.gc(b.handle, nil))
      testing.rmtree(first)
      testing.rmtree(second)
    end)
  end

  it("names the family it does not know", function()
    assert.has_error(function() save.tensors("bert", {}) end,
      "eapig.save.tensors: unknown family 'bert' (known: " .. families.KNOWN .. ")")
  end)
end)
