-- Training: finite differences of every weight gradient (gpt2, llama with grouped heads, and a
-- neox-style model with parallel attention/MLP and partial rotary), the cross-entropy kernel,
-- AdamW against a hand computation, the learning-rate schedule, determinism, a short run whose
-- loss falls, and the Hugging Face folder writer read back by eapig.load and eapig.tokenizer.
local ffi = require("ffi")
local random = require("eapig.rng")
local core = require("eapig.core")
local train = require("eapig.apps.train")
local induction = require("eapig.tasks.induction")
local Model = require("eapig.model")
local testing = require("eapig.testing")
local tiny = require("support.tiny")

local C = core.C
local abs, max, sqrt, exp, log = math.abs, math.max, math.sqrt, math.exp, math.log

---------------------------------------------------------------------------------------------------
-- Raw random models of three shapes, built through the C API (no files)

local PRESETS = {
  gpt2 = { norm = 0, act = 0, pos = 0, heads = 4, kv = 4, d_head = 4 },
  llama = { norm = 1, act = 3, pos = 1, heads = 4, kv = 2, d_head = 4, rot = 4 },
  neox = { norm = 0, act = 1, pos = 1, heads = 2, kv = 2, d_head = 8, rot = 4, parallel = true },
}

-- Every tensor of a model: { name, pointer field, count, layer (nil: global), kind }.
local function tensor_list(model)
  local cfg = model.cfg
  local D, F, V, Cx = cfg.d_model, cfg.d_mlp, cfg.vocab, cfg.n_ctx
  local qd, kvd = cfg.n_heads * cfg.d_head, cfg.n_kv_heads * cfg.d_head
  local list = {
    { "wte", V * D, kind = "w" }, { "wpe", Cx * D, kind = "w", learned = true }, { "lnf_w", D, kind = "gain" },
    { "lnf_b", D, kind = "bias", layernorm = true }, { "w_unembed", V * D, kind = "w" },
  }
  local per_layer = {
    { "ln1_w", D, kind = "gain" }, { "ln1_b", D, kind = "bias", layernorm = true }, { "wq", qd * D, kind = "w" },
    { "bq", qd, kind = "bias" }, { "wk", kvd * D, kind = "w" }, { "bk", kvd, kind = "bias" },
    { "wv", kvd * D, kind = "w" }, { "bv", kvd, kind = "bias" }, { "wo", D * qd, kind = "w" },
    { "bo", D, kind = "bias" }, { "ln2_w", D, kind = "gain" }, { "ln2_b", D, kind = "bias", layernorm = true },
    { "w_in", F * D, kind = "w" }, { "b_in", F, kind = "bias" }, { "w_gate", F * D, kind = "w", gated = true },
    { "w_out", D * F, kind = "w" }, { "b_out", D, kind = "bias" },
  }
  local out = {}
  local function keep(e)
    if e.learned and cfg.pos ~= 0 then return false end
    if e.layernorm and cfg.norm ~= 0 then return false end -- RMSNorm has no bias
    if e.gated and cfg.act ~= 3 then return false end
    return true
  end
  for _, e in ipairs(list) do
    if keep(e) then out[#out + 1] = { name = e[1], field = e[1], n = e[2], kind = e.kind } end
  end
  for l = 0, cfg.n_layers - 1 do
    for _, e in ipairs(per_layer) do
      if keep(e) then out[#out + 1] = { name = ("L%d.%s"):format(l, e[1]), field = e[1], n = e[2], layer = l, kind = e.kind } end
    end
  end
  return out
end

local function ptr_of(handle, t)
  local w = C.eapig_model_weights(handle)
  if t.layer then return w.layers[t.layer][t.field] end
  return w[t.field]
end

-- A raw model of a preset with every tensor random (biases and norm gains too, so their
-- gradients are not trivially special).
local function raw_model(kind, seed)
  local p = PRESETS[kind]
  local cfg = ffi.new("eapig_config")
  cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.d_head = 2, p.heads, p.kv, p.d_head
  cfg.d_model, cfg.d_mlp, cfg.vocab, cfg.n_ctx = 16, 24, 32, 16
  cfg.norm, cfg.act, cfg.pos = p.norm, p.act, p.pos
  cfg.rotary_dim = p.rot or 0
  cfg.parallel_attn_mlp = p.parallel and 1 or 0
  cfg.norm_eps, cfg.rope_theta = 1e-5, p.pos == 1 and 10000 or 0
  local h = ffi.gc(core.check_ptr(C.eapig_model_new(cfg)), C.eapig_model_free)
  core.check(C.eapig_model_init(h, seed, 0.02, 0))
  local model = Model.new(h, { family = kind })
  local rng = random.new(seed, "xorshift32")
  for _, t in ipairs(tensor_list(model)) do
    local ptr = ptr_of(h, t)
    local scale, offset = 0.3, 0
    if t.kind == "gain" then scale, offset = 0.2, 1 elseif t.kind == "bias" then scale = 0.2 end
    for i = 0, t.n - 1 do ptr[i] = offset + scale * rng:normal() end
  end
  return model
end

local function zeros_like(model)
  return ffi.gc(core.check_ptr(C.eapig_model_new(model.cfg)), C.eapig_model_free)
end

local function arena(h)
  local n = ffi.new("int64_t[1]")
  local p = C.eapig_model_arena(h, n)
  return p, tonumber(n[0])
end

-- A right-padded batch with the given lengths.
local function make_batch(model, lengths, seed) return tiny.batch(model, lengths, seed, "xorshift32") end

-- The engine's status of a Model call: 0, or -1 with its message in eapig_last_error.
local function status(ok) return ok and 0 or -1 end

-- Forward (every position or logit_pos), keeping what weight gradients need.
local function forward(model, batch, logits, opts)
  opts = opts or {}
  return status(pcall(model.forward, model, batch, { logits = logits, logit_pos = opts.logit_pos,
    override_group = opts.override_group, override_value = opts.override_value, keep = true,
    keep_for_weights = not opts.no_weights }))
end

local function backward(model, dlogits, grads, opts)
  opts = opts or {}
  return status(pcall(model.backward, model, dlogits, { weight_grads = grads, dest_grads = opts.dest_grads }))
end

---------------------------------------------------------------------------------------------------

describe("weight gradients", function()
  for _, kind in ipairs({ "gpt2", "llama", "neox" }) do
    describe(kind, function()
      local model = raw_model(kind, 7)
      local batch = make_batch(model, { 5, 3, 4 }, 8)
      local rows = batch.B * batch.P
      local n_logits = rows * model.vocab
      local crng = random.new(9, "xorshift32")
      local c = core.floats(n_logits) -- the metric sum c . logits has dlogits = c
      for i = 0, n_logits - 1 do c[i] = crng:normal() end
      local logits = core.floats(n_logits)
      local function metric()
        core.check(forward(model, batch, logits, { no_weights = true }))
        local s = 0
        for i = 0, n_logits - 1 do s = s + c[i] * logits[i] end
        return s
      end
      local grads = zeros_like(model)
      core.check(forward(model, batch, logits))
      core.check(backward(model, c, grads))

      -- Central differences of the metric along a unit direction in tensor t (a float array),
      -- Richardson-extrapolated from steps h and 2h: the h^2 term cancels, so h can be large
      -- enough (1e-2 .. 3e-2) that float32 rounding in the forward (~1e-6 of the metric) stays
      -- far below the tolerance.
      local function fd(t, dir, H)
        local ptr = ptr_of(model.handle, t)
        local saved = ffi.new("float[?]", t.n)
        ffi.copy(saved, ptr, t.n * 4)
        local function at(h)
          for i = 0, t.n - 1 do ptr[i] = saved[i] + h * dir[i] end
          return metric()
        end
        local function central(h) return (at(h) - at(-h)) / (2 * h) end
        local est = (4 * central(H) - central(2 * H)) / 3
        ffi.copy(ptr, saved, t.n * 4)
        return est
      end

      for _, t in ipairs(tensor_list(model)) do
        it(t.name .. " matches central differences (a random direction and single entries)", function()
          local g = ptr_of(grads, t)
          local drng = random.new(#t.name * 131 + t.n, "xorshift32")
          local dir = ffi.new("float[?]", t.n)
          local norm = 0
          for i = 0, t.n - 1 do
            dir[i] = drng:normal()
            norm = norm + dir[i] * dir[i]
          end
          local analytic, gmax = 0, 0
          for i = 0, t.n - 1 do
            dir[i] = dir[i] / sqrt(norm)
            analytic = analytic + dir[i] * g[i]
            gmax = max(gmax, abs(g[i]))
          end
          local est = fd(t, dir, 3e-2)
          assert.is_true(abs(est - analytic) < 1e-3 * max(1, abs(analytic)),
            ("direction: analytic %.6g, finite differences %.6g"):format(analytic, est))
          -- Three single entries: the largest gradient and two at random.
          local best = 0
          for i = 1, t.n - 1 do
            if abs(g[i]) > abs(g[best]) then best = i end
          end
          local unit = ffi.new("float[?]", t.n)
          for _, i in ipairs({ best, drng:below(t.n), drng:below(t.n) }) do
            unit[i] = 1
            local e = fd(t, unit, 1e-2) -- a single entry can have a large curvature
            unit[i] = 0
            assert.is_true(abs(e - g[i]) < 1e-3 * max(1, abs(g[i])),
              ("entry %d: analytic %.6g, finite differences %.6g"):format(i, g[i], e))
          end
        end)
      end

      it("accumulates (+=) into the gradients and leaves the activation gradients unchanged", function()
        local G1 = core.floats(model.n_backward * rows * model.d_model)
        local G2 = core.floats(model.n_backward * rows * model.d_model)
        local twice = zeros_like(model)
        core.check(forward(model, batch, logits))
        core.check(backward(model, c, twice, { dest_grads = G1 }))
        core.check(backward(model, c, twice))
        core.check(forward(model, batch, logits, { no_weights = true }))
        core.check(backward(model, c, nil, { dest_grads = G2 }))
        local g, n = arena(grads)
        local g2 = arena(twice)
        -- the second backward's products accumulate into the first's inside the GEMM (beta = 1): a
        -- float sum of cancelling terms in another order than 2 * g, a few ulps of its terms off
        -- (a backward that overwrote instead of adding would be off by g itself)
        for i = 0, n - 1 do assert.is_true(abs(g2[i] - 2 * g[i]) <= 4e-6 * (1 + abs(g[i]))) end
        for i = 0, model.n_backward * rows * model.d_model - 1 do assert.are.equal(G2[i], G1[i]) end
      end)
    end)
  end

  describe("with logit positions and an overridden group", function()
    local model = raw_model("gpt2", 3)
    local batch = make_batch(model, { 4, 6 }, 4)
    local pos = core.int32s(2)
    pos[0], pos[1] = 3, 2
    local V = model.vocab
    local c = core.floats(2 * V)
    local rng = random.new(5, "xorshift32")
    for i = 0, 2 * V - 1 do c[i] = rng:normal() end
    local logits = core.floats(2 * V)

    it("unembeds only the chosen rows and matches finite differences", function()
      local grads = zeros_like(model)
      core.check(forward(model, batch, logits, { logit_pos = pos }))
      core.check(backward(model, c, grads))
      local function metric()
        core.check(forward(model, batch, logits, { logit_pos = pos, no_weights = true }))
        local s = 0
        for i = 0, 2 * V - 1 do s = s + c[i] * logits[i] end
        return s
      end
      for _, t in ipairs(tensor_list(model)) do
        local ptr, g = ptr_of(model.handle, t), ptr_of(grads, t)
        local i = 0
        for j = 1, t.n - 1 do
          if abs(g[j]) > abs(g[i]) then i = j end
        end
        local function central(h)
          local v = ptr[i]
          ptr[i] = v + h
          local a = metric()
          ptr[i] = v - h
          local b = metric()
          ptr[i] = v
          return (a - b) / (2 * h)
        end
        local est = (4 * central(3e-2) - central(6e-2)) / 3
        assert.is_true(abs(est - g[i]) < 1e-3 * max(1, abs(g[i])), ("%s: %.6g vs %.6g"):format(t.name, g[i], est))
      end
    end)

    it("gives an overridden MLP's weights no gradient, and b_O still one when heads are overridden", function()
      local D, blk = model.d_model, batch.B * batch.P * model.d_model
      local value = core.floats(model.n_heads * blk)
      local vrng = random.new(11, "xorshift32")
      for i = 0, model.n_heads * blk - 1 do value[i] = 0.1 * vrng:normal() end
      local grads = zeros_like(model)
      core.check(forward(model, batch, logits, { logit_pos = pos, override_group = 2, override_value = value }))
      core.check(backward(model, c, grads))
      local gl = C.eapig_model_weights(grads).layers[0]
      for _, f in ipairs({ "w_in", "b_in", "w_out", "b_out", "ln2_w", "ln2_b" }) do
        local n = (f == "w_in" or f == "w_out") and D * model.d_mlp or (f == "b_in" and model.d_mlp or D)
        for i = 0, n - 1 do assert.are.equal(0, gl[f][i]) end
      end
      grads = zeros_like(model)
      core.check(forward(model, batch, logits, { logit_pos = pos, override_group = 1, override_value = value }))
      core.check(backward(model, c, grads))
      gl = C.eapig_model_weights(grads).layers[0]
      for i = 0, D * D - 1 do assert.are.equal(0, gl.wq[i]) end
      local any = false
      for i = 0, D - 1 do any = any or gl.bo[i] ~= 0 end
      assert.is_true(any)
    end)
  end)

  describe("bad use", function()
    local model = raw_model("gpt2", 2)
    local batch = make_batch(model, { 3 }, 1)
    local logits = core.floats(3 * model.vocab)
    it("needs a forward that kept what weight gradients need", function()
      core.check(forward(model, batch, logits, { no_weights = true }))
      assert.are_not.equal(0, backward(model, logits, zeros_like(model)))
      assert.matches("keep_for_weights", ffi.string(C.eapig_last_error()))
    end)
    it("needs a gradient model of the same config", function()
      core.check(forward(model, batch, logits))
      local other = raw_model("llama", 2)
      assert.are_not.equal(0, backward(model, logits, other.handle))
      assert.matches("same config", ffi.string(C.eapig_last_error()))
      assert.are_not.equal(0, backward(model, logits, model.handle))
    end)
    it("refuses a patched run", function()
      local NF, NB = model.n_forward, model.n_backward
      local ref = core.floats(NF * 3 * model.d_model)
      local W = core.floats(NF * NB)
      W[0 * NB + 0] = 0.5
      model:forward(batch, { logits = logits, keep_for_weights = true, patch_ref = ref, patch_w = W })
      assert.are_not.equal(0, backward(model, logits, zeros_like(model)))
      assert.matches("patched", ffi.string(C.eapig_last_error()))
    end)
    it("refuses the families whose weight gradients are not implemented, naming the feature", function()
      local cfg = ffi.new("eapig_config", model.cfg[0])
      cfg.embed_scale = 4
      local h = ffi.gc(core.check_ptr(C.eapig_model_new(cfg)), C.eapig_model_free)
      core.check(C.eapig_model_init(h, 1, 0.02, 0))
      local scaled = Model.new(h, { family = "gemma" })
      core.check(forward(scaled, batch, logits))
      assert.are_not.equal(0, backward(scaled, logits, zeros_like(scaled)))
      assert.matches("weight gradients of models with embedding scaling %(gemma%) are not implemented",
        ffi.string(C.eapig_last_error()))
      local dir = testing.random_model({ family = "gemma", layers = 1 })
      local loaded = require("eapig.formats.load").load(dir, { finalize = false })
      testing.rmtree(dir)
      assert.has_error(function()
        train.train(Model.new(loaded.handle, loaded.info), { batch = function() end }, { steps = 1, quiet = true })
      end, "eapig.train: training gemma models is not supported (attribution and evaluation are)")
    end)
  end)
end)

---------------------------------------------------------------------------------------------------

describe("cross-entropy kernel", function()
  local R, V = 5, 7
  local rng = random.new(3, "xorshift32")
  local logits, targets = core.floats(R * V), core.int32s(R)
  for i = 0, R * V - 1 do logits[i] = 3 * rng:normal() end
  for r = 0, R - 1 do targets[r] = rng:below(V) end
  targets[2] = -1

  -- The loss in double, from the same float logits.
  local function loss_of(x, r)
    local mx = -math.huge
    for j = 0, V - 1 do mx = max(mx, x[r * V + j]) end
    local s = 0
    for j = 0, V - 1 do s = s + exp(x[r * V + j] - mx) end
    return mx + log(s) - x[r * V + targets[r]]
  end

  it("gives -log softmax at the target, 0 for skipped rows", function()
    local losses = core.floats(R)
    core.check(C.eapig_cross_entropy(losses, nil, logits, targets, R, V, 1))
    for r = 0, R - 1 do
      local want = targets[r] < 0 and 0 or loss_of(logits, r)
      assert.is_true(abs(losses[r] - want) < 1e-6 * (1 + want), ("row %d: %g vs %g"):format(r, losses[r], want))
    end
  end)

  it("gives scale * (softmax - onehot), matching finite differences of the loss", function()
    local d = core.floats(R * V)
    local scale = 0.25
    core.check(C.eapig_cross_entropy(nil, d, logits, targets, R, V, scale))
    local x = ffi.new("double[?]", R * V)
    for i = 0, R * V - 1 do x[i] = logits[i] end
    for r = 0, R - 1 do
      local row_sum = 0
      for j = 0, V - 1 do
        local i = r * V + j
        row_sum = row_sum + d[i]
        if targets[r] < 0 then
          assert.are.equal(0, d[i])
        else
          local h = 1e-5
          x[i] = logits[i] + h
          local a = loss_of(x, r)
          x[i] = logits[i] - h
          local b = loss_of(x, r)
          x[i] = logits[i]
          assert.is_true(abs(scale * (a - b) / (2 * h) - d[i]) < 1e-6, ("(%d,%d)"):format(r, j))
        end
      end
      assert.is_true(abs(row_sum) < 1e-6) -- softmax sums to one
    end
  end)

  it("works in place and rejects a target outside the vocabulary", function()
    local d = core.floats(R * V)
    core.check(C.eapig_cross_entropy(nil, d, logits, targets, R, V, 1))
    local x = core.floats(R * V)
    ffi.copy(x, logits, R * V * 4)
    local losses = core.floats(R)
    core.check(C.eapig_cross_entropy(losses, x, x, targets, R, V, 1))
    for i = 0, R * V - 1 do assert.are.equal(d[i], x[i]) end
    targets[0] = V
    assert.are_not.equal(0, C.eapig_cross_entropy(losses, nil, logits, targets, R, V, 1))
    assert.matches("outside %-1%.%.6", ffi.string(C.eapig_last_error()))
    targets[0] = 0
  end)
end)

---------------------------------------------------------------------------------------------------

describe("AdamW", function()
  local function hand_step(w, g, m, v, o, decay)
    local ge = g * o.grad_scale
    if decay then w = w * (1 - o.lr * o.weight_decay) end
    m = o.beta1 * m + (1 - o.beta1) * ge
    v = o.beta2 * v + (1 - o.beta2) * ge * ge
    local mhat, vhat = m / (1 - o.beta1 ^ o.step), v / (1 - o.beta2 ^ o.step)
    return w - o.lr * mhat / (sqrt(vhat) + o.eps), m, v
  end

  for _, tied in ipairs({ false, true }) do
    it(("matches a hand computation over two steps (%s)"):format(tied and "tied embeddings" or "untied"), function()
      local model = raw_model("gpt2", 4)
      local grads, m1, m2 = zeros_like(model), zeros_like(model), zeros_like(model)
      local w, n = arena(model.handle)
      local g, mm, vv = arena(grads), arena(m1), arena(m2)
      local list = tensor_list(model)
      local V, D = model.vocab, model.d_model
      local wt = C.eapig_model_weights(model.handle)
      if tied then ffi.copy(wt.w_unembed, wt.wte, V * D * 4) end
      -- Expected values in double, tensor by tensor.
      local ref = {}
      for i = 0, n - 1 do ref[i] = { w = w[i], m = 0, v = 0 } end
      local rng = random.new(6, "xorshift32")
      local o = { beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.1 }
      local offsets = {}
      for _, t in ipairs(list) do offsets[t.name] = tonumber(ffi.cast("float *", ptr_of(model.handle, t)) - w) end
      local wte_off, wu_off = offsets.wte, offsets.w_unembed
      for step = 1, 2 do
        for i = 0, n - 1 do g[i] = rng:normal() end
        o.lr, o.step, o.grad_scale = 0.01 * step, step, step == 1 and 1 or 0.5
        local c = ffi.new("eapig_adamw_opts")
        c.lr, c.beta1, c.beta2, c.eps, c.weight_decay = o.lr, o.beta1, o.beta2, o.eps, o.weight_decay
        c.grad_scale, c.step, c.tied = o.grad_scale, o.step, tied and 1 or 0
        local gd = {}
        for i = 0, n - 1 do gd[i] = g[i] end
        core.check(C.eapig_adamw_step(model.handle, grads, m1, m2, c))
        for _, t in ipairs(list) do
          local off = offsets[t.name]
          local decay = t.kind == "w"
          if not (tied and t.name == "w_unembed") then
            for e = 0, t.n - 1 do
              local i = off + e
              local ge = gd[i]
              if tied and t.name == "wte" then ge = ge + gd[wu_off + e] end
              ref[i].w, ref[i].m, ref[i].v = hand_step(ref[i].w, ge, ref[i].m, ref[i].v, o, decay)
            end
          end
        end
        if tied then
          for e = 0, V * D - 1 do ref[wu_off + e].w = ref[wte_off + e].w end
        end
        for i = 0, n - 1 do
          assert.is_true(abs(w[i] - ref[i].w) < 1e-6 * (1 + abs(ref[i].w)), ("weight %d: %.9g vs %.9g"):format(i, w[i], ref[i].w))
          if not (tied and i >= wu_off and i < wu_off + V * D) then
            assert.is_true(abs(mm[i] - ref[i].m) < 1e-6 * (1 + abs(ref[i].m)))
            assert.is_true(abs(vv[i] - ref[i].v) < 1e-6 * (1 + abs(ref[i].v)))
          end
        end
      end
    end)
  end

  it("decays matrices and embeddings only: with zero gradients only they shrink", function()
    local model = raw_model("gpt2", 5)
    local grads, m1, m2 = zeros_like(model), zeros_like(model), zeros_like(model)
    local before = {}
    for _, t in ipairs(tensor_list(model)) do before[t.name] = ptr_of(model.handle, t)[0] end
    local c = ffi.new("eapig_adamw_opts")
    c.lr, c.beta1, c.beta2, c.eps, c.weight_decay, c.grad_scale, c.step = 0.1, 0.9, 0.99, 1e-8, 0.5, 1, 1
    core.check(C.eapig_adamw_step(model.handle, grads, m1, m2, c))
    for _, t in ipairs(tensor_list(model)) do
      local now = ptr_of(model.handle, t)[0]
      local want = t.kind == "w" and before[t.name] * (1 - 0.05) or before[t.name]
      assert.is_true(abs(now - want) < 1e-6, t.name)
    end
  end)

  it("global norm: the tied pair counts as one tensor", function()
    local model = raw_model("gpt2", 6)
    local grads = zeros_like(model)
    local g, n = arena(grads)
    local rng = random.new(2, "xorshift32")
    for i = 0, n - 1 do g[i] = rng:normal() end
    local gw = C.eapig_model_weights(grads)
    local VD = model.vocab * model.d_model
    local plain = 0
    for i = 0, n - 1 do plain = plain + g[i] * g[i] end
    local tied = plain
    for i = 0, VD - 1 do
      tied = tied - gw.wte[i] ^ 2 - gw.w_unembed[i] ^ 2 + (gw.wte[i] + gw.w_unembed[i]) ^ 2
    end
    local out = ffi.new("double[1]")
    core.check(C.eapig_grad_norm(grads, 0, out))
    assert.is_true(abs(out[0] - sqrt(plain)) < 1e-9 * sqrt(plain))
    core.check(C.eapig_grad_norm(grads, 1, out))
    assert.is_true(abs(out[0] - sqrt(tied)) < 1e-9 * sqrt(tied))
  end)

  it("rejects models of another config and bad hyperparameters", function()
    local a, b = raw_model("gpt2", 1), raw_model("llama", 1)
    local c = ffi.new("eapig_adamw_opts")
    c.lr, c.beta1, c.beta2, c.eps, c.grad_scale, c.step = 0.1, 0.9, 0.99, 1e-8, 1, 1
    assert.are_not.equal(0, C.eapig_adamw_step(a.handle, b.handle, zeros_like(a), zeros_like(a), c))
    c.step = 0
    assert.are_not.equal(0, C.eapig_adamw_step(a.handle, zeros_like(a), zeros_like(a), zeros_like(a), c))
  end)
end)

---------------------------------------------------------------------------------------------------

describe("initialisation and schedule", function()
  it("initialises as GPT-2: N(0, 0.02), writers scaled by 1/sqrt(2L), gains 1, biases 0", function()
    local m = train.new_model({ family = "gpt2", layers = 2, heads = 4, d_model = 64, d_mlp = 256, vocab = 64,
      n_ctx = 32, seed = 3 })
    local w = C.eapig_model_weights(m.handle)
    local function std(p, n)
      local s = 0
      for i = 0, n - 1 do s = s + p[i] * p[i] end
      return sqrt(s / n)
    end
    assert.is_true(abs(std(w.layers[0].wq, 64 * 64) - 0.02) < 0.002)
    assert.is_true(abs(std(w.layers[1].w_out, 64 * 256) - 0.02 / 2) < 0.001)
    assert.are.equal(1, w.layers[0].ln1_w[5])
    assert.are.equal(0, w.layers[1].b_in[7])
    for i = 0, 64 * 64 - 1 do assert.are.equal(w.wte[i], w.w_unembed[i]) end -- tied
    local again = train.new_model({ family = "gpt2", layers = 2, heads = 4, d_model = 64, d_mlp = 256, vocab = 64,
      n_ctx = 32, seed = 3 })
    local a, n = arena(m.handle)
    local b = arena(again.handle)
    for i = 0, n - 1 do assert.are.equal(a[i], b[i]) end
  end)

  it("warms up linearly, then follows a cosine down to min_lr", function()
    assert.are.equal(0.5, train.lr_at(5, 100, 1, 10, 0.1))
    assert.are.equal(1, train.lr_at(10, 100, 1, 10, 0.1))
    assert.is_true(abs(train.lr_at(55, 100, 1, 10, 0.1) - 0.55) < 1e-12)
    assert.is_true(abs(train.lr_at(100, 100, 1, 10, 0.1) - 0.1) < 1e-12)
  end)
end)

---------------------------------------------------------------------------------------------------

-- A task every model can learn fast: the next token is the current one plus one (mod V).
local counting = {}
function counting:batch(rng, B)
  local P, V = 8, self.vocab
  local tokens, lengths = core.int32s(B * P), core.int32s(B)
  for b = 0, B - 1 do
    local start = rng:below(V)
    for p = 0, P - 1 do tokens[b * P + p] = (start + p) % V end
    lengths[b] = P - rng:below(3) -- some padding
  end
  return { tokens = tokens, lengths = lengths, B = B, P = P }
end

describe("training", function()
  local function small(seed, family)
    return train.new_model({ family = family or "gpt2", layers = 1, heads = 2, d_model = 16, d_mlp = 32, vocab = 16,
      n_ctx = 8, seed = seed })
  end
  local task = setmetatable({ vocab = 16 }, { __index = counting })

  it("brings the loss of a learnable task far below log(V)", function()
    local model = small(1)
    local r = train.train(model, task, { steps = 150, lr = 1e-2, batch_size = 16, quiet = true })
    assert.is_true(r.losses[1] > 2.5, tostring(r.losses[1]))
    assert.is_true(r.final_loss < 0.5, tostring(r.final_loss))
  end)

  it("trains a llama-family model too, keeping its absent biases at zero", function()
    local model = small(2, "llama")
    local r = train.train(model, task, { steps = 150, lr = 1e-2, batch_size = 16, quiet = true })
    assert.is_true(r.final_loss < 0.5, tostring(r.final_loss))
    local lw = C.eapig_model_weights(model.handle).layers[0]
    for i = 0, 15 do assert.are.equal(0, lw.bq[i]) end
    for i = 0, 31 do assert.are.equal(0, lw.b_in[i]) end
  end)

  it("is deterministic for a seed, and the seed matters", function()
    local a, b, c = small(1), small(1), small(1)
    train.train(a, task, { steps = 20, seed = 4, quiet = true })
    train.train(b, task, { steps = 20, seed = 4, quiet = true })
    train.train(c, task, { steps = 20, seed = 5, quiet = true })
    local pa, n = arena(a.handle)
    local pb, pc = arena(b.handle), arena(c.handle)
    local same, differ = true, false
    for i = 0, n - 1 do
      same = same and pa[i] == pb[i]
      differ = differ or pa[i] ~= pc[i]
    end
    assert.is_true(same)
    assert.is_true(differ)
  end)

  it("prints the loss as it goes", function()
    local lines = {}
    local out = { write = function(_, s) lines[#lines + 1] = s end, flush = function() end }
    train.train(small(1), task, { steps = 10, log_every = 5, out = out, quiet = false, progress = false })
    assert.are.equal(2, #lines)
    assert.matches("^step +5/10  loss %d%.%d+", lines[1])
  end)
end)

---------------------------------------------------------------------------------------------------

describe("induction task", function()
  local task = induction.new({ vocab = 64, seq_len = 32 })
  it("samples a prefix, then a segment A of distinct tokens repeated at least twice", function()
    local rng = random.new(1, "xorshift32")
    local ks, ns = {}, {}
    for _ = 1, 200 do
      local s = task:sample(rng)
      assert.are.equal(32, #s.ids)
      assert.is_true(s.k + 2 * s.n <= 32 and s.n >= 4 and s.n <= 16)
      ks[s.k], ns[s.n] = true, true
      local inA = {}
      for i = 1, s.n do
        assert.is_nil(inA[s.seg[i]])
        inA[s.seg[i]] = true
        assert.are.equal(s.seg[i], s.ids[s.k + i])
      end
      for i = s.k + s.n + 1, 32 do assert.are.equal(s.ids[i - s.n], s.ids[i]) end
      for i = 1, s.k do -- distinct prefix tokens, none of them in A
        assert.is_nil(inA[s.ids[i]])
        inA[s.ids[i]] = true
      end
    end
    assert.is_true(ks[0] and ks[20] and ns[4] and ns[16]) -- lengths vary over their whole range
  end)

  it("replays bigrams of A in random order, and alternates repeats and replays in a batch", function()
    local rng = random.new(2, "xorshift32")
    for _ = 1, 50 do
      local s = task:sample_replay(rng)
      assert.are.equal(32, #s.ids)
      local k = 0
      while s.ids[k + 1] ~= s.seg[1] do k = k + 1 end
      assert.is_true(k <= 3)
      local next_of = {}
      for i = 1, s.n - 1 do next_of[s.seg[i]] = s.seg[i + 1] end
      for i = k + s.n + 1, 31, 2 do assert.are.equal(next_of[s.ids[i]], s.ids[i + 1]) end
    end
    local batch = task:batch(random.new(3, "xorshift32"), 4)
    assert.are.equal(4, batch.B)
    assert.are.equal(32, batch.P)
    for b = 0, 3 do assert.are.equal(32, batch.lengths[b]) end
  end)

  it("builds clean/corrupted rows whose answer only the clean context predicts", function()
    local rows = task:dataset({ rows = 20, seed = 2 })
    for _, r in ipairs(rows) do
      assert.are.equal(#r.clean, #r.corrupted)
      local last = r.clean[#r.clean]
      local seen_clean, seen_corr = false, false
      for i = 1, #r.clean - 1 do
        if r.clean[i] == last and r.clean[i + 1] == r.correct[1] then seen_clean = true end
        if r.corrupted[i] == last then seen_corr = true end
      end
      assert.is_true(seen_clean)
      assert.is_false(seen_corr)
      for i = 1, #r.clean do -- by default the incorrect token is in neither row
        assert.are_not.equal(r.incorrect[1], r.clean[i])
        assert.are_not.equal(r.incorrect[1], r.corrupted[i])
      end
    end
    for _, r in ipairs(task:dataset({ rows = 10, seed = 2, incorrect = "alt" })) do
      local found = false -- "alt": the corrupted first copy's token at the answer's place
      for i = 1, #r.corrupted do found = found or r.corrupted[i] == r.incorrect[1] end
      assert.is_true(found)
    end
    assert.are.equal("ABC+/", induction.text({ 0, 1, 2, 62, 63 }))
  end)
end)

---------------------------------------------------------------------------------------------------

describe("Hugging Face folders", function()
  for _, family in ipairs({ "gpt2", "llama" }) do
    it(family .. ": eapig.load reads back the raw weights exactly and the same logits", function()
      local model = train.new_model({ family = family, layers = 2, heads = 4, kv_heads = family == "llama" and 2 or nil,
        d_model = 16, d_mlp = 24, vocab = 20, n_ctx = 12, seed = 5 })
      -- make every tensor non-trivial (biases stay zero for llama, which has none)
      local rng = random.new(1, "xorshift32")
      for _, t in ipairs(tensor_list(model)) do
        if family == "gpt2" or t.kind ~= "bias" then
          local p = ptr_of(model.handle, t)
          for i = 0, t.n - 1 do p[i] = p[i] + 0.1 * rng:normal() end
        end
      end
      local wt = C.eapig_model_weights(model.handle)
      if family == "gpt2" then ffi.copy(wt.w_unembed, wt.wte, 20 * 16 * 4) end -- tied
      local dir = testing.tmpdir()
      train.save_pretrained(model, dir, { tokenizer = induction.pieces(20) })
      local raw = require("eapig.formats.load").load(dir, { finalize = false })
      local a, n = arena(model.handle)
      local b, nb = arena(raw.handle)
      assert.are.equal(n, nb)
      for i = 0, n - 1 do assert.are.equal(a[i], b[i]) end
      local loaded = require("eapig").load(dir)
      local batch = make_batch(model, { 12, 7 }, 3)
      local l1 = model:forward(batch)
      local l2 = loaded:forward(batch)
      local worst = 0
      for i = 0, 2 * 12 * 20 - 1 do worst = max(worst, abs(l1[i] - l2[i])) end
      assert.is_true(worst < 1e-4, tostring(worst))
      testing.rmtree(dir)
    end)
  end

  it("writes a character tokenizer that eapig.tokenizer reads", function()
    local model = train.new_model({ family = "gpt2", layers = 1, heads = 2, d_model = 8, d_mlp = 16, vocab = 70,
      n_ctx = 8, seed = 1 })
    local dir = testing.tmpdir()
    train.save_pretrained(model, dir, { tokenizer = induction.pieces(70) })
    local tok = require("eapig.formats.tokenizer").load(dir)
    assert.are.same({ 0, 25, 26, 63, 64, 69 }, tok:encode("AZa/!&"))
    assert.are.equal("AZa/!&", tok:decode({ 0, 25, 26, 63, 64, 69 }))
    local cfg = require("cjson").decode(io.open(dir .. "/config.json"):read("*a"))
    assert.are.equal("gpt2", cfg.model_type)
    assert.are.equal(true, cfg.tie_word_embeddings)
    testing.rmtree(dir)
  end)
end)

describe("eapig train", function()
  it("writes a folder that eapig.load reads, with the training record", function()
    local dir = testing.tmpdir()
    local out = dir .. "/m"
    local lines = {}
    local stdout = { write = function(_, ...) lines[#lines + 1] = table.concat({ ... }) end, flush = function() end }
    local ok, err = pcall(require("eapig.cli.train"), { "--task", "induction", "--out", out, "--layers", "1",
      "--heads", "2", "--d-model", "16", "--d-mlp", "32", "--vocab", "20", "--ctx", "12", "--steps", "6",
      "--eval-rows", "8", "--quiet" }, { stdout = stdout })
    assert.is_true(ok, tostring(err))
    local m = require("eapig").load(out)
    assert.are.equal(20, m.vocab)
    assert.are.equal(12, m.n_ctx)
    local rec = require("cjson").decode(io.open(out .. "/training.json"):read("*a"))
    assert.are.equal(6, rec.steps)
    assert.matches("^eapig train %-%-task induction", rec.command)
    assert.matches("held%-out", table.concat(lines))
    local tok = require("eapig.formats.tokenizer").load(out)
    assert.are.same({ 0, 1, 19 }, tok:encode("ABT"))
    testing.rmtree(dir)
  end)

  it("rejects a bad task or shape with one clear message", function()
    local cli_train = require("eapig.cli.train")
    local ok, err = pcall(cli_train, { "--task", "sorting", "--out", "/tmp/x" })
    assert.is_false(ok)
    assert.matches("unknown task 'sorting'", err)
    ok, err = pcall(cli_train, { "--task", "induction", "--out", "/tmp/x", "--d-model", "30", "--heads", "4" })
    assert.is_false(ok)
    assert.matches("multiple of %-%-heads", err)
  end)
end)

---------------------------------------------------------------------------------------------------
-- The embedded default model, and retraining it with the command in its MODEL.md

-- Olsson et al.'s scores on `rows` rows of a random T-token segment repeated twice: mean attention
-- to the previous token (prev[l][h]) and from the second copy to the token after the earlier
-- occurrence (induction[l][h]).
local function head_scores(model, T, rows)
  local P = 2 * T
  local rng = random.new(5, "xorshift32")
  local tokens, lengths = core.int32s(rows * P), core.int32s(rows)
  for b = 0, rows - 1 do
    lengths[b] = P
    local used = {}
    for t = 0, T - 1 do
      local id
      repeat id = rng:below(model.vocab) until not used[id]
      used[id] = true
      tokens[b * P + t], tokens[b * P + T + t] = id, id
    end
  end
  local L, H = model.n_layers, model.n_heads
  local att = core.floats(L * rows * H * P * P)
  model:forward({ tokens = tokens, lengths = lengths, B = rows, P = P }, { attn_probs = att, no_logits = true })
  local prev, ind = {}, {}
  for l = 0, L - 1 do
    prev[l], ind[l] = {}, {}
    for h = 0, H - 1 do
      local sp, si = 0, 0
      for b = 0, rows - 1 do
        local a = att + (((l * rows + b) * H + h) * P) * P
        for p = 1, P - 1 do sp = sp + a[p * P + p - 1] end
        for j = 0, T - 2 do si = si + a[(T + j) * P + j + 1] end
      end
      prev[l][h], ind[l][h] = sp / (rows * (P - 1)), si / (rows * (T - 1))
    end
  end
  return prev, ind
end

local function best(t)
  local m = -1
  for _, v in pairs(t) do m = max(m, v) end
  return m
end

-- What makes a model an induction model here: held-out accuracy at the induction targets far
-- above chance, a previous-token head in layer 0 and an induction head in layer 1.
local function assert_induction_model(model)
  local task = induction.new({ vocab = model.vocab, seq_len = model.n_ctx })
  local ev = task:evaluate(model, { rows = 256, seed = 99 })
  assert.is_true(ev.accuracy > 0.95, ("accuracy %.3f"):format(ev.accuracy))
  assert.is_true(ev.induction_loss < 0.5 and ev.baseline > 4, ("%.3f vs log V %.3f"):format(ev.induction_loss, ev.baseline))
  local prev, ind = head_scores(model, 12, 16)
  assert.is_true(best(prev[0]) > 0.6, ("best previous-token score in layer 0: %.2f"):format(best(prev[0])))
  assert.is_true(best(ind[1]) > 0.6, ("best induction score in layer 1: %.2f"):format(best(ind[1])))
  return ev, prev, ind
end

-- What the head-sparsity penalty leaves in layer 1: heads whose output is (near) zero, by the
-- centred output norm eapig.heads measures. Returns the number of writing heads and the set.
local function writing_heads(model, l)
  local heads = require("eapig.apps.heads")
  local s = heads.scores(model, { rows = 16, half = 12, seed = 3 })
  local set, n = heads.writing(s.output, l), 0
  for _ in pairs(set) do n = n + 1 end
  return n, set, s
end

local COMMAND = "eapig train --task induction --out models/induction-2l --attn-only --head-sparsity 0.05 " ..
  "--steps 2000 --seed 1 --threads 1"

describe("the embedded model models/induction-2l", function()
  local path = "models/induction-2l"
  it("loads, and contains the circuit its MODEL.md describes", function()
    local model = require("eapig").load(path)
    assert.are.equal(2, model.n_layers)
    local ev, prev, ind = assert_induction_model(model)
    assert.is_true(ev.accuracy > 0.97)
    assert.is_true(prev[0][0] > 0.9 and prev[0][1] > 0.9) -- a0.h0 and a0.h1: previous-token heads
    assert.is_true(ind[1][2] > 0.9 and ind[1][3] > 0.9) -- a1.h2 and a1.h3: induction heads
    -- the penalty left two of layer 1's four heads writing: the induction heads
    local n, set = writing_heads(model, 1)
    assert.are.equal(2, n)
    assert.is_true(set[2] and set[3])
  end)
  it("records the command it was trained with", function()
    local rec = require("cjson").decode(io.open(path .. "/training.json"):read("*a"))
    assert.are.equal(COMMAND, rec.command)
    local doc = io.open(path .. "/MODEL.md"):read("*a")
    assert.truthy(doc:find(rec.command, 1, true))
  end)
end)

-- Retraining from scratch with the documented command (2000 steps: about 80 s on an idle core,
-- many minutes on a shared machine; skipped in the sanitizer build, where it would take far
-- longer).
describe("retraining the embedded model", function()
  if os.getenv("EAPIG_SANITIZED") then
    pending("skipped in the sanitizer build (slow); the plain build runs it")
    return
  end
  it("with its documented command gives an induction model again", function()
    local dir = testing.tmpdir()
    local stdout = { write = function() end, flush = function() end }
    local threads = C.eapig_get_num_threads() -- --threads sets the process's BLAS threads: restore them
    local ok, err = pcall(require("eapig.cli.train"), { "--task", "induction", "--out", dir .. "/m", "--attn-only",
      "--head-sparsity", "0.05", "--steps", "2000", "--seed", "1", "--threads", "1", "--quiet" }, { stdout = stdout })
    C.eapig_set_num_threads(threads)
    assert.is_true(ok, tostring(err))
    local model = require("eapig").load(dir .. "/m")
    assert_induction_model(model)
    -- sparse: at most two of layer 1's four heads write (the mechanism, not the exact bits)
    local n = writing_heads(model, 1)
    assert.is_true(n <= 2, n .. " heads of layer 1 write")
    testing.rmtree(dir)
  end)
end)
