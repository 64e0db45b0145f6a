-- Weights kept as stored (core/weights.c, load.lua's weights option): a model whose big matrices
-- stay in the memory-mapped checkpoint (F32, F16, BF16) and are converted per layer at each use
-- gives the same logits, scores and evaluations as the same checkpoint converted whole to f32, on
-- every family layout (plain, transposed Conv1D, fused q/k/v, grouped fused, llama2.c's RoPE order),
-- and keeps the resident set near what one layer needs.
local ffi = require("ffi")
local core = require("eapig.core")
local eapig = require("eapig")
local memory = require("eapig.memory")
local testing = require("eapig.testing")

local C = core.C

-- Largest |a - b| over n floats, and largest |a|.
local function max_diff(a, b, n)
  local d, m = 0, 0
  for i = 0, n - 1 do
    d = math.max(d, math.abs(a[i] - b[i]))
    m = math.max(m, math.abs(a[i]))
  end
  return d, m
end

-- Same to float rounding: the two runs do the same products (chunked unembedding may order a
-- sum differently), so the tolerance is a few float ulps of the largest value.
local function assert_close(a, b, n, what)
  local d, m = max_diff(a, b, n)
  assert(d <= 1e-5 * math.max(m, 1e-3), ("%s: stored and f32 differ by %g (largest %g)"):format(what, d, m))
end

local function rows_dataset(vocab)
  local rows = {}
  for i = 1, 3 do
    local clean, corrupted = {}, {}
    for p = 1, 5 + i do
      clean[p] = (7 * i + 3 * p) % vocab
      corrupted[p] = p == 3 and (clean[p] + 5) % vocab or clean[p]
    end
    rows[i] = { clean = clean, corrupted = corrupted, correct = (i * 11) % vocab, incorrect = (i * 13 + 1) % vocab }
  end
  return eapig.data.from_rows(rows)
end

local METHODS = { "EAP", "EAP-IG-inputs", "EAP-IG-activations", "clean-corrupted", "exact",
  "information-flow-routes" }

-- Every method's scores, the node scores of EAP-IG-inputs and an evaluation agree.
local function assert_same_everywhere(a, b, data)
  assert.are.equal("f32", a.weights)
  assert.are.equal("stored", b.weights)
  local n = a.n_forward * a.n_backward
  for _, method in ipairs(METHODS) do
    local ga, gb = eapig.Graph.from_model(a), eapig.Graph.from_model(b)
    local opts = { method = method, ig_steps = 3, quiet = true, batch_size = 2 }
    eapig.attribute(a, ga, data, "logit_diff", opts)
    eapig.attribute(b, gb, data, "logit_diff", opts)
    assert_close(ga.scores, gb.scores, n, method)
  end
  local na, nb = eapig.Graph.from_model(a, { level = "node" }), eapig.Graph.from_model(b, { level = "node" })
  eapig.attribute(a, na, data, "logit_diff", { method = "EAP-IG-inputs", quiet = true })
  eapig.attribute(b, nb, data, "logit_diff", { method = "EAP-IG-inputs", quiet = true })
  assert_close(na.node_scores, nb.node_scores, a.n_forward, "node scores")
  local ga = eapig.Graph.from_model(a)
  eapig.attribute(a, ga, data, "logit_diff", { quiet = true })
  ga:apply_topn(10)
  -- the same circuit evaluated on both models
  local ea = eapig.evaluate_graph(a, ga, data, "logit_diff", { quiet = true })
  local eb = eapig.evaluate_graph(b, ga, data, "logit_diff", { quiet = true })
  assert.are.equal(#ea, #eb)
  for i = 1, #ea do assert(math.abs(ea[i] - eb[i]) <= 1e-5 * math.max(1, math.abs(ea[i])), "evaluate_graph") end
end

-- Logits at every position (the unembedding of B*P rows, in vocabulary chunks).
local function all_logits(model, ids)
  local n = #ids
  local tokens, lengths = core.int32s(n), core.int32s(1)
  for i = 1, n do tokens[i - 1] = ids[i] end
  lengths[0] = n
  return model:forward({ tokens = tokens, lengths = lengths, B = 1, P = n }), n * model.vocab
end

describe("stored weights", function()
  local CASES = {
    { family = "llama", kv_heads = 2 },     -- grouped-query attention, separate matrices
    { family = "gpt2" },                    -- Conv1D: transposed, q/k/v fused; LayerNorm centring; tied
    { family = "gpt_neox" },                -- q/k/v fused per head; parallel attention and MLP
    { family = "qwen2" },                   -- value biases folded into b_O; tied
    { family = "gemma2", dtypes = { "BF16" } }, -- post-norms, scaled embedding, soft-capping
    { family = "olmo2", dtypes = { "BF16" } },  -- post-norms only
  }
  for _, case in ipairs(CASES) do
    for _, dtype in ipairs(case.dtypes or { "BF16", "F16", "F32" }) do
      it(("%s %s: stored and f32 weights give the same scores on every method"):format(case.family, dtype), function()
        local opts = { family = case.family, kv_heads = case.kv_heads, dtype = dtype, layers = 2, heads = 4,
          d_model = 32, vocab = 64, seed = 3 }
        local dir = testing.random_model(opts)
        local a = eapig.load(dir, { weights = "f32" })
        local b = eapig.load(dir, { weights = "stored" })
        assert.are.equal(dtype, b:info().weights_dtype)
        local la, n = all_logits(a, { 1, 2, 3, 4, 5 })
        local lb = all_logits(b, { 1, 2, 3, 4, 5 })
        assert_close(la, lb, n, "logits")
        assert_same_everywhere(a, b, rows_dataset(64))
        testing.rmtree(dir)
      end)
    end
  end

  it("a vocabulary of several unembedding chunks gives the same logits", function()
    -- chunks hold 2^20 floats: d_model 256 makes 4096 rows, so 9000 rows are three chunks
    local dir = testing.random_model({ family = "llama", dtype = "BF16", layers = 1, heads = 4, d_model = 256,
      d_mlp = 64, vocab = 9000, scale = 0.05 })
    local a = eapig.load(dir, { weights = "f32" })
    local b = eapig.load(dir, { weights = "stored" })
    local la, n = all_logits(a, { 1, 8999, 4097, 12 })
    local lb = all_logits(b, { 1, 8999, 4097, 12 })
    assert_close(la, lb, n, "logits")
    local data = rows_dataset(9000)
    local ga, gb = eapig.Graph.from_model(a), eapig.Graph.from_model(b)
    eapig.attribute(a, ga, data, "kl_div", { method = "EAP", quiet = true })
    eapig.attribute(b, gb, data, "kl_div", { method = "EAP", quiet = true })
    assert_close(ga.scores, gb.scores, a.n_forward * a.n_backward, "kl_div scores")
    testing.rmtree(dir)
  end)

  local shared = require("support.shared").dir()
  local bin = shared and shared .. "/models/stories260K/stories260K.bin"
  if bin and io.open(bin, "rb") then
    it("llama2.c: stored weights read q and k through the RoPE row order", function()
      local a = eapig.load(bin, { weights = "f32" })
      local b = eapig.load(bin, { weights = "stored" })
      local la, n = all_logits(a, { 1, 300, 72, 9, 400, 33 })
      local lb = all_logits(b, { 1, 300, 72, 9, 400, 33 })
      assert_close(la, lb, n, "logits")
      local data = rows_dataset(512)
      local ga, gb = eapig.Graph.from_model(a), eapig.Graph.from_model(b)
      eapig.attribute(a, ga, data, "logit_diff", { quiet = true })
      eapig.attribute(b, gb, data, "logit_diff", { quiet = true })
      assert_close(ga.scores, gb.scores, a.n_forward * a.n_backward, "scores")
    end)
  else
    pending("stories260K.bin is absent (../shared/models): llama2.c stored weights not checked")
  end

  it("weight gradients agree: the backward converts the same layers", function()
    local dir = testing.random_model({ family = "llama", dtype = "BF16", layers = 2, d_model = 32, vocab = 64 })
    local a = eapig.load(dir, { weights = "f32" })
    local b = eapig.load(dir, { weights = "stored" })
    local tokens, lengths = core.int32s(6), core.int32s(1)
    for i = 0, 5 do tokens[i] = (i * 9 + 2) % 64 end
    lengths[0] = 6
    local batch = { tokens = tokens, lengths = lengths, B = 1, P = 6 }
    local grads = {}
    for i, m in ipairs({ a, b }) do
      local logits = core.floats(6 * 64)
      m:forward(batch, { logits = logits, keep_for_weights = true })
      local dl = core.floats(6 * 64)
      for j = 0, 6 * 64 - 1 do dl[j] = ((j * 7) % 13 - 6) * 1e-2 end
      local g = ffi.gc(C.eapig_model_new(m.cfg), C.eapig_model_free)
      m:backward(dl, { weight_grads = g })
      local n = ffi.new("int64_t[1]")
      grads[i] = { C.eapig_model_arena(g, n), tonumber(n[0]), g }
    end
    assert.are.equal(grads[1][2], grads[2][2])
    assert_close(grads[1][1], grads[2][1], grads[1][2], "weight gradients")
    testing.rmtree(dir)
  end)

  it("training needs f32 weights: a clear error, not a crash", function()
    local task = { batch = function() end }
    local dir = testing.random_model({ family = "gpt2", dtype = "BF16" })
    local b = eapig.load(dir, { weights = "stored" })
    local n = ffi.new("int64_t[1]")
    assert.is_true(C.eapig_model_arena(b.handle, n) == nil)
    assert.matches("f32", ffi.string(C.eapig_last_error()))
    local g = ffi.gc(C.eapig_model_new(b.cfg), C.eapig_model_free)
    local opts = ffi.new("eapig_adamw_opts", { lr = 1e-3, beta1 = 0.9, beta2 = 0.95, eps = 1e-8, step = 1 })
    assert.are_not.equal(0, C.eapig_adamw_step(b.handle, g, g, g, opts))
    assert.matches("f32", ffi.string(C.eapig_last_error()))
    assert.has_error(function() require("eapig.apps.train").train(b, task, { steps = 1 }) end,
      "eapig.train: training needs f32 weights; this model keeps them as stored (load with weights = \"f32\")")
    -- unfinalized loads (training) default to f32
    assert.are.equal("f32", eapig.load(dir, { finalize = false }).weights)
    testing.rmtree(dir)
  end)

  it("bad bindings and unbound matrices are errors naming the tensor", function()
    local dir = testing.random_model({ family = "llama", dtype = "BF16", layers = 1 })
    local a = eapig.load(dir, { weights = "f32" })
    local m = ffi.gc(C.eapig_model_new_stored(a.cfg), C.eapig_model_free)
    assert.are_not.equal(0, C.eapig_model_finalize(m))
    assert.matches("wte is not bound", ffi.string(C.eapig_last_error()))
    local file = ffi.gc(C.eapig_file_open(dir .. "/model.safetensors"), C.eapig_file_close)
    -- a range that is not the matrix's size, a row map entry out of range, a layer out of range
    assert.are_not.equal(0, C.eapig_model_bind(m, 0, C.EAPIG_MAT_WQ, file, 0, 10, C.EAPIG_DTYPE_BF16, 32, 0, nil))
    assert.matches("wq", ffi.string(C.eapig_last_error()))
    local map = core.int32s(32)
    map[5] = 40
    assert.are_not.equal(0, C.eapig_model_bind(m, 0, C.EAPIG_MAT_WQ, file, 0, 2048, C.EAPIG_DTYPE_BF16, 32, 0, map))
    assert.matches("row map entry 5", ffi.string(C.eapig_last_error()))
    assert.are_not.equal(0, C.eapig_model_bind(m, 3, C.EAPIG_MAT_WQ, file, 0, 2048, C.EAPIG_DTYPE_BF16, 32, 0, nil))
    assert.matches("layer 3", ffi.string(C.eapig_last_error()))
    assert.are_not.equal(0, C.eapig_model_bind(a.handle, 0, C.EAPIG_MAT_WQ, file, 0, 2048, C.EAPIG_DTYPE_BF16, 32, 0,
                                               nil))
    assert.matches("eapig_model_new_stored", ffi.string(C.eapig_last_error()))
    -- an option that is not a mode
    assert.has_error(function() eapig.load(dir, { weights = "bf16" }) end,
      dir .. ": weights must be 'auto', 'f32' or 'stored' (got bf16)")
    testing.rmtree(dir)
  end)

  it("auto keeps f32 when the copy fits the budget, stored when it does not", function()
    local dir = testing.random_model({ family = "llama", dtype = "BF16", layers = 1 })
    assert.are.equal("f32", eapig.load(dir).weights)
    -- a budget of 1 KiB cannot hold the f32 copy
    local b = eapig.load(dir, { memory = 1 / 2 ^ 20 })
    assert.are.equal("stored", b.weights)
    assert.matches("memory budget", b.weights_why)
    -- asking for f32 beyond the budget fails before allocating
    assert.has_error(function() eapig.load(dir, { weights = "f32", memory = 1 / 2 ^ 20 }) end)
    local ok, err = pcall(eapig.load, dir, { weights = "f32", memory = 1 / 2 ^ 20 })
    assert.is_false(ok)
    assert.matches("f32 weights need .* more than the memory budget", err)
    testing.rmtree(dir)
  end)

  it("the resident set after a stored load stays far below an f32 copy", function()
    -- 4 layers of d_model 512: an 11 MB bf16 file, 22 MB in f32
    local dir = testing.random_model({ family = "llama", dtype = "BF16", layers = 4, heads = 8, d_model = 512,
      d_mlp = 1024, vocab = 2048, scale = 0.05 })
    collectgarbage()
    local before = memory.rss()
    if not before then
      pending("no /proc/self/status here")
      return
    end
    local b = eapig.load(dir, { weights = "stored" })
    local grown = memory.rss() - before
    local f32 = tonumber(C.eapig_weights_f32_bytes(b.cfg))
    local stored = tonumber(C.eapig_weights_stored_bytes(b.cfg))
    assert(grown < 0.25 * f32, ("load grew the resident set by %d bytes (f32 copy: %d)"):format(grown, f32))
    assert(stored < 0.05 * f32)
    testing.rmtree(dir)
  end)
end)
