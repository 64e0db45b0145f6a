-- The core engine on random in-memory models of every family: finite differences for the
-- destination gradients and scores, the patching identities, batched steps, bad input.
package.path = "./tests/?.lua;" .. package.path
local tiny = require("support.tiny")
local core = require("eapig.core")

local KINDS = { "gpt2", "llama", "qwen2", "neox", "llama3", "gemma", "gemma2", "olmo2" }
-- Post-norm blocks: a head's difference reaches its readers through the layer's post-norm, which
-- EAP-IG's edge score <diff_u, G_v> does not apply (by design of the method), so edges out of heads
-- are not first-order effects of the patched forward there: the reference cases check them.
local POST_NORM = { gemma2 = true, olmo2 = true }

-- EAPIG_FD_REPORT=1 prints each finite-difference check's relative error.
local function report(what, err)
  if os.getenv("EAPIG_FD_REPORT") then io.stderr:write(("%-48s %.3g\n"):format(what, err)) end
end

local function is_head(m, u)
  return u > 0 and (u - 1) % (m.n_heads + 1) < m.n_heads
end

-- Everything one attribution-style check needs: clean and corrupted captures and a linear
-- metric sum_{b,v} c[b,v] logits[b,v] at the last real positions (its dlogits is c).
local function setup(kind, seed)
  local t = tiny.clean_corrupted(kind, seed, { 5, 3, 4 })
  local VB = t.batch.B * t.m.vocab
  function t.metric(logits)
    local s = 0
    for i = 0, VB - 1 do s = s + t.c[i] * logits[i] end
    return s
  end
  return t
end

local max_abs_diff = tiny.max_abs_diff

describe("engine", function()
  for _, kind in ipairs(KINDS) do
    describe(kind, function()
      local t = setup(kind, 11)
      local m, NF, NB = t.m, t.m.n_forward, t.m.n_backward
      local S, node, neuron = core.floats(NF * NB), core.floats(NF), core.floats(NF * m.d_model)
      local blk = m:block_size(t.batch.B, t.batch.P)
      local G, g = core.floats(NB * blk), core.floats(NF * blk)
      m:forward(t.batch, { logit_pos = t.pos, keep = true })
      m:backward(t.c, { diff = t.diff, scores = S, node_scores = node, neuron_scores = neuron,
        dest_grads = G, node_grads = g })

      local additive = POST_NORM[kind] and "out of input and MLP nodes" or "on every real edge"
      it("scores match central differences of the patched forward " .. additive, function()
        -- d/dw metric(destination v reads + w (R_u - current_u)) at w = 0 is exactly S[u,v].
        -- Richardson extrapolation of two step sizes cancels the eps^2 error of float32 FD.
        local W = core.floats(NF * NB)
        local function fd(idx, eps)
          W[idx] = eps
          local fp = t.metric(m:forward(t.batch, { logit_pos = t.pos, patch_ref = t.cap_r, patch_w = W }))
          W[idx] = -eps
          local fm = t.metric(m:forward(t.batch, { logit_pos = t.pos, patch_ref = t.cap_r, patch_w = W }))
          W[idx] = 0
          return (fp - fm) / (2 * eps)
        end
        local worst, scale = 0, 0
        for u = 0, NF - 1 do
          for v = 0, NB - 1 do
            local idx = u * NB + v
            if POST_NORM[kind] and is_head(m, u) then -- not first-order effects: see POST_NORM
              assert.is_true(t.mask[idx] == 1 or S[idx] == 0)
            elseif t.mask[idx] == 1 then
              local est = (4 * fd(idx, 2e-3) - fd(idx, 4e-3)) / 3
              worst = math.max(worst, math.abs(est - S[idx]))
              scale = math.max(scale, math.abs(S[idx]))
            else
              assert.are.equal(0, S[idx]) -- no score on edges that do not exist
            end
          end
        end
        assert.is_true(scale > 0.1)
        report(kind .. " edge scores", worst / scale)
        assert.is_true(worst / scale < 1e-3, ("relative error %g"):format(worst / scale))
      end)

      it("scores are <diff_u, G_v> of the returned destination gradients", function()
        local worst = 0
        for u = 0, NF - 1 do
          for v = 0, NB - 1 do
            if t.mask[u * NB + v] == 1 then
              local s = 0
              for i = 0, blk - 1 do s = s + t.diff[u * blk + i] * G[v * blk + i] end
              worst = math.max(worst, math.abs(s - S[u * NB + v]) / (1 + math.abs(s)))
            end
          end
        end
        assert.is_true(worst < 1e-4, tostring(worst))
      end)

      if POST_NORM[kind] then
        it("head node scores match central differences of patching all of the head's out-edges", function()
          -- <diff_h, g_h> with g_h the gradient through the post-norm: the first-order effect of
          -- moving the head's output, which patching every out-edge with the same weight does.
          local W = core.floats(NF * NB)
          local function fd(u, eps)
            for v = 0, NB - 1 do W[u * NB + v] = t.mask[u * NB + v] * eps end
            local fp = t.metric(m:forward(t.batch, { logit_pos = t.pos, patch_ref = t.cap_r, patch_w = W }))
            for v = 0, NB - 1 do W[u * NB + v] = -t.mask[u * NB + v] * eps end
            local fm = t.metric(m:forward(t.batch, { logit_pos = t.pos, patch_ref = t.cap_r, patch_w = W }))
            for v = 0, NB - 1 do W[u * NB + v] = 0 end
            return (fp - fm) / (2 * eps)
          end
          local worst, scale, edge_gap = 0, 0, 0
          for u = 1, NF - 1 do
            if is_head(m, u) then
              local est = (4 * fd(u, 2e-3) - fd(u, 4e-3)) / 3
              worst = math.max(worst, math.abs(est - node[u]))
              scale = math.max(scale, math.abs(node[u]))
              local edges = 0
              for v = 0, NB - 1 do edges = edges + S[u * NB + v] end
              edge_gap = math.max(edge_gap, math.abs(edges - node[u]))
            end
          end
          assert.is_true(scale > 0.01)
          report(kind .. " head node scores", worst / scale)
          assert.is_true(worst / scale < 1e-3, ("relative error %g"):format(worst / scale))
          -- and the edge scores out of heads do differ from it: the post-norm is really skipped
          assert.is_true(edge_gap > 1e-3 * scale, ("edge sums equal node scores (%g)"):format(edge_gap))
        end)
      end

      it("node scores are the sums of out-edge scores (not heads in post-norm blocks), and of neuron scores", function()
        for u = 0, NF - 1 do
          local edges, neurons, direct = 0, 0, 0
          for v = 0, NB - 1 do edges = edges + S[u * NB + v] end
          for d = 0, m.d_model - 1 do neurons = neurons + neuron[u * m.d_model + d] end
          for i = 0, blk - 1 do direct = direct + t.diff[u * blk + i] * g[u * blk + i] end
          local tol = 1e-4 * (1 + math.abs(node[u]))
          if not (POST_NORM[kind] and is_head(m, u)) then
            assert.is_true(math.abs(edges - node[u]) < tol, ("node %d: %g vs %g"):format(u, edges, node[u]))
          end
          assert.is_true(math.abs(neurons - node[u]) < tol)
          assert.is_true(math.abs(direct - node[u]) < tol)
        end
      end)

      it("W = 0 gives exactly the plain forward", function()
        local W = core.floats(NF * NB)
        local l = m:forward(t.batch, { logit_pos = t.pos, patch_ref = t.cap_r, patch_w = W })
        assert.are.equal(0, max_abs_diff(l, t.logits_c, t.batch.B * m.vocab))
      end)

      it("patching every edge with the corrupted capture reproduces the corrupted run", function()
        local W = core.floats(NF * NB)
        for i = 0, NF * NB - 1 do W[i] = t.mask[i] end
        local l = m:forward(t.batch, { logit_pos = t.pos, patch_ref = t.cap_r, patch_w = W })
        assert.is_true(max_abs_diff(l, t.logits_r, t.batch.B * m.vocab) < 1e-4)
      end)

      it("a circuit's deltas from few terms equal the dense product's", function()
        -- The engine forms a layer's patching deltas from their few terms when a circuit patches
        -- almost every edge (the sum of every upstream difference minus the few in the circuit)
        -- or almost none, and as one dense product otherwise. Nudging the weights off 0 and 1
        -- (1e-30 on unpatched real edges, the float below 1 on patched ones) leaves the result
        -- the same to rounding but makes every term count, so the dense product runs instead.
        local rng = require("eapig.rng").new(17)
        for _, patched in ipairs({ 0.03, 0.5, 0.97 }) do
          local W, dense = core.floats(NF * NB), core.floats(NF * NB)
          for i = 0, NF * NB - 1 do
            if t.mask[i] == 1 then
              W[i] = rng:uniform() < patched and 1 or 0
              dense[i] = W[i] == 1 and 0.99999994 or 1e-30
            end
          end
          local a = m:forward(t.batch, { logit_pos = t.pos, patch_ref = t.cap_r, patch_w = W })
          local b = m:forward(t.batch, { logit_pos = t.pos, patch_ref = t.cap_r, patch_w = dense })
          assert.is_true(max_abs_diff(a, b, t.batch.B * m.vocab) < 1e-4, tostring(patched))
        end
      end)

      it("patching the edges out of input equals running on the corrupted embeddings", function()
        local W = core.floats(NF * NB)
        for v = 0, NB - 1 do W[v] = 1 end
        local l = m:forward(t.batch, { logit_pos = t.pos, patch_ref = t.cap_r, patch_w = W })
        local emb = t.cap_r -- node 0 is the first block of the corrupted capture
        local o = m:forward(t.batch, { logit_pos = t.pos, override_group = 0, override_value = emb })
        assert.is_true(max_abs_diff(l, o, t.batch.B * m.vocab) < 1e-4)
        if kind ~= "neox" then -- every position was corrupted only through its token
          assert.is_true(max_abs_diff(o, t.logits_r, t.batch.B * m.vocab) < 1e-4)
        end
      end)

      it("batched integrated-gradient steps equal separate runs", function()
        -- Two steps (the clean batch twice) in one batch with diff_B = B sum like two backwards.
        local B, P = t.batch.B, t.batch.P
        local tokens, lengths, pos = core.int32s(2 * B * P), core.int32s(2 * B), core.int32s(2 * B)
        for k = 0, 1 do
          for i = 0, B * P - 1 do tokens[k * B * P + i] = t.batch.tokens[i] end
          for b = 0, B - 1 do lengths[k * B + b], pos[k * B + b] = t.batch.lengths[b], t.pos[b] end
        end
        local c2 = core.floats(2 * B * m.vocab)
        for i = 0, B * m.vocab - 1 do c2[i], c2[B * m.vocab + i] = t.c[i], t.c[i] end
        local S2 = core.floats(NF * NB)
        m:forward({ tokens = tokens, lengths = lengths, B = 2 * B, P = P }, { logit_pos = pos, keep = true })
        m:backward(c2, { diff = t.diff, diff_B = B, scores = S2 })
        local worst = 0
        for i = 0, NF * NB - 1 do worst = math.max(worst, math.abs(S2[i] - 2 * S[i]) / (1 + math.abs(S[i]))) end
        assert.is_true(worst < 1e-4, tostring(worst))
      end)

      it("a run resumed at a layer equals the full patched run", function()
        local L = m.n_layers
        local resid = core.floats((2 * L + 1) * blk)
        m:forward(t.batch, { logit_pos = t.pos, capture = t.cap_c, resid = resid })
        local W = core.floats(NF * NB)
        local per = 3 * m.n_heads + 1
        for _, v in ipairs({ per + 1, per + 3 * m.n_heads, NB - 1 }) do -- a q input, an MLP, the logits
          for u = 0, NF - 1 do W[u * NB + v] = t.mask[u * NB + v] end
          local full = m:forward(t.batch, { logit_pos = t.pos, patch_ref = t.cap_r, patch_w = W })
          local layer = math.floor(v / per)
          local resumed = m:forward(t.batch, { logit_pos = t.pos, patch_ref = t.cap_r, patch_w = W,
            start_layer = layer, start_resid = resid + 2 * layer * blk, start_capture = t.cap_c })
          assert.is_true(max_abs_diff(full, resumed, t.batch.B * m.vocab) < 1e-5)
          for u = 0, NF - 1 do W[u * NB + v] = 0 end
        end
        W[0] = 1 -- input -> a0.h0<q>: layer 0 cannot be skipped
        assert.has_error(function()
          m:forward(t.batch, { logit_pos = t.pos, patch_ref = t.cap_r, patch_w = W, start_layer = 1,
            start_resid = resid + 2 * blk, start_capture = t.cap_c })
        end, "forward: eapig_forward: start_layer 1 skips destination 0, whose patch weight from source 0 is not zero")
      end)

      it("an overridden group passes no gradient into its own inputs", function()
        -- Replace layer 0's heads by their own clean outputs: same logits, zero q/k/v gradients.
        local H = m.n_heads
        local value = core.floats(H * blk)
        for i = 0, H * blk - 1 do value[i] = t.cap_c[blk + i] end
        local l = m:forward(t.batch, { logit_pos = t.pos, override_group = 1, override_value = value, keep = true })
        assert.is_true(max_abs_diff(l, t.logits_c, t.batch.B * m.vocab) < 1e-5)
        local G2 = core.floats(NB * blk)
        m:backward(t.c, { dest_grads = G2 })
        for i = 0, 3 * H * blk - 1 do assert.are.equal(0, G2[i]) end
        assert.is_true(max_abs_diff(G2 + 3 * H * blk, G + 3 * H * blk, (NB - 3 * H) * blk) < 1e-4)
      end)
    end)
  end

  -- A metric that reads two logits per row (a logit difference) has a logit gradient of two
  -- non-zeros per row: the backward then sums those unembedding rows instead of the dense
  -- product. Adding 1e-30 everywhere makes the same gradient dense.
  describe("a logit gradient with few non-zeros", function()
    for _, kind in ipairs({ "gpt2", "llama", "gemma2" }) do
      it(kind .. ": gives the dense product's destination gradients", function()
        local t = tiny.clean_corrupted(kind, 41, { 5, 3, 4 }, { vocab = 400 })
        local m, B, V = t.m, t.batch.B, t.m.vocab
        local blk = m:block_size(B, t.batch.P)
        local sparse, dense = core.floats(B * V), core.floats(B * V)
        for b = 0, B - 1 do
          sparse[b * V + (7 * b + 3) % V], sparse[b * V + (11 * b + 5) % V] = 0.5 + b, -1.25
        end
        for i = 0, B * V - 1 do dense[i] = sparse[i] + 1e-30 end
        local grads = {}
        for k, c in ipairs({ sparse, dense }) do
          grads[k] = core.floats(m.n_backward * blk)
          m:forward(t.batch, { logit_pos = t.pos, keep = true })
          m:backward(c, { dest_grads = grads[k] })
        end
        local worst, scale = 0, 0
        for i = 0, m.n_backward * blk - 1 do
          worst = math.max(worst, math.abs(grads[1][i] - grads[2][i]))
          scale = math.max(scale, math.abs(grads[2][i]))
        end
        assert.is_true(scale > 0)
        assert.is_true(worst <= 1e-5 * scale, ("%g of %g"):format(worst, scale))
      end)
    end
  end)

  describe("bad input", function()
    local m = tiny.model("gpt2", 5)
    it("rejects a token id outside the vocabulary, naming row and position", function()
      local batch = tiny.batch(m, { 3, 2 }, 1)
      batch.tokens[1 * batch.P + 1] = m.vocab
      assert.has_error(function() m:forward(batch) end,
        ("forward: eapig_forward: token id %d at row 2, position 2 is outside the vocabulary (0..%d)")
          :format(m.vocab, m.vocab - 1))
    end)
    it("rejects a sequence longer than the context", function()
      local lengths = { m.n_ctx + 1 }
      local batch = tiny.batch(m, lengths, 1)
      assert.has_error(function() m:forward(batch) end,
        ("forward: eapig_forward: sequence length %d is longer than the context (%d)"):format(m.n_ctx + 1, m.n_ctx))
    end)
    it("rejects a backward without a kept forward", function()
      local batch = tiny.batch(m, { 3 }, 1)
      m:forward(batch)
      local ok, err = pcall(m.backward, m, core.floats(3 * m.vocab))
      assert.is_false(ok)
      assert.matches("keep_for_backward", err)
    end)
    it("rejects a bad length", function()
      local batch = tiny.batch(m, { 3 }, 1)
      batch.lengths[0] = 0
      assert.has_error(function() m:forward(batch) end, "forward: eapig_forward: row 1 has length 0, outside 1..3")
    end)
    it("keeps model.cfg valid after model:free() (a copy, not a pointer into freed memory)", function()
      local ffi = require("ffi")
      local f = tiny.model("gpt2", 5)
      local n_layers, d_model, vocab = f.cfg.n_layers, f.cfg.d_model, f.cfg.vocab
      f:free()
      assert.is_nil(tostring(ffi.typeof(f.cfg)):find("*", 1, true))
      assert.are.same({ n_layers, d_model, vocab }, { f.cfg.n_layers, f.cfg.d_model, f.cfg.vocab })
      f:free() -- a second free is harmless
      assert.are.equal(n_layers, f.cfg.n_layers)
    end)
    local C = core.C
    it("answers a NULL model with a safe value and a message naming the accessor", function()
      local ffi = require("ffi")
      local last = function() return ffi.string(C.eapig_last_error()) end
      assert.is_true(C.eapig_model_config(nil) == nil)
      assert.are.equal("eapig_model_config: model is NULL", last())
      assert.is_true(C.eapig_model_weights(nil) == nil)
      assert.are.equal("eapig_model_weights: model is NULL", last())
      assert.are.equal(-1, C.eapig_model_n_forward(nil))
      assert.are.equal("eapig_model_n_forward: model is NULL", last())
      assert.are.equal(-1, C.eapig_model_n_backward(nil))
      assert.are.equal("eapig_model_n_backward: model is NULL", last())
      assert.are.equal(-1, tonumber(C.eapig_model_n_edges(nil)))
      assert.are.equal("eapig_model_n_edges: model is NULL", last())
    end)
    it("eapig_sgemm refuses bad sizes and NULL matrices with a message", function()
      local ffi = require("ffi")
      local a = core.floats(4)
      assert.are.equal(C.EAPIG_ERR_ARG, C.eapig_sgemm(0, 2, 2, a, a, a))
      assert.are.equal("eapig_sgemm: sizes M 0, N 2, K 2 must be positive", ffi.string(C.eapig_last_error()))
      assert.are.equal(C.EAPIG_ERR_ARG, C.eapig_sgemm(2, 2, 1, a, nil, a))
      assert.are.equal("eapig_sgemm: A, B and C are required", ffi.string(C.eapig_last_error()))
      assert.are.equal(C.EAPIG_OK, C.eapig_sgemm(1, 1, 1, a, a, a))
    end)
  end)
end)
