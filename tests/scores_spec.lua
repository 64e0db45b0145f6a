-- Score accumulation in the engine: edge, node and neuron scores are the same whatever memory
-- budget the edge-score gather gets (one layer at a time, a few layers, every destination), with
-- and without batched steps, and equal <diff_u, G_v> of the returned destination gradients on
-- real edges and exactly zero elsewhere.
package.path = "./tests/?.lua;" .. package.path
local tiny = require("support.tiny")
local ffi = require("ffi")
local core = require("eapig.core")
local C = core.C

local KINDS = { "gpt2", "llama", "neox" }

local function setup(kind, seed) return tiny.clean_corrupted(kind, seed, { 4, 6, 5 }, { layers = 5 }) end

-- Scores of one backward at the given budget (bytes; nil = default), on `steps` copies of the batch.
local function scores(t, budget, steps)
  local m, B, P = t.m, t.batch.B, t.batch.P
  local NF, NB = m.n_forward, m.n_backward
  local out = { edges = core.floats(NF * NB), nodes = core.floats(NF), neurons = core.floats(NF * m.d_model) }
  local tokens, lengths, pos = core.int32s(steps * B * P), core.int32s(steps * B), core.int32s(steps * B)
  local c = core.floats(steps * B * m.vocab)
  for k = 0, steps - 1 do
    for i = 0, B * P - 1 do tokens[k * B * P + i] = t.batch.tokens[i] end
    for b = 0, B - 1 do lengths[k * B + b], pos[k * B + b] = t.batch.lengths[b], t.pos[b] end
    for i = 0, B * m.vocab - 1 do c[k * B * m.vocab + i] = t.c[i] end
  end
  m:forward({ tokens = tokens, lengths = lengths, B = steps * B, P = P }, { logit_pos = pos, keep = true })
  m:backward(c, { diff = t.diff, diff_B = B, scores = out.edges, node_scores = out.nodes,
    neuron_scores = out.neurons, score_memory = budget })
  return out
end

local function worst_rel(a, b, n, scale)
  local w = 0
  for i = 0, n - 1 do w = math.max(w, math.abs(a[i] - scale * b[i]) / (1 + math.abs(b[i]))) end
  return w
end

describe("score accumulation", function()
  for _, kind in ipairs(KINDS) do
    describe(kind, function()
      local t = setup(kind, 21)
      local m, NF, NB = t.m, t.m.n_forward, t.m.n_backward
      local blk = m:block_size(t.batch.B, t.batch.P)
      local G = core.floats(NB * blk)
      m:forward(t.batch, { logit_pos = t.pos, keep = true })
      m:backward(t.c, { dest_grads = G })
      local one_layer = scores(t, 1, 1)

      it("edge scores are <diff_u, G_v> on real edges and zero elsewhere", function()
        local worst = 0
        for u = 0, NF - 1 do
          for v = 0, NB - 1 do
            local s = one_layer.edges[u * NB + v]
            if t.mask[u * NB + v] == 1 then
              local ref = 0
              for i = 0, blk - 1 do ref = ref + t.diff[u * blk + i] * G[v * blk + i] end
              worst = math.max(worst, math.abs(s - ref) / (1 + math.abs(ref)))
            else
              assert.are.equal(0, s)
            end
          end
        end
        assert.is_true(worst < 1e-4, tostring(worst))
      end)

      it("every budget gives the same scores", function()
        local per_col = 4 * blk
        for _, budget in ipairs({ false, per_col * 20, per_col * 2 * (3 * m.n_heads + 1) + per_col, per_col * NB,
          per_col * NB * 4 }) do
          local s = scores(t, budget or nil, 1)
          assert.is_true(worst_rel(s.edges, one_layer.edges, NF * NB, 1) < 1e-5, tostring(budget))
          for i = 0, NF * NB - 1 do
            if t.mask[i] == 0 then assert.are.equal(0, s.edges[i]) end
          end
          assert.is_true(worst_rel(s.nodes, one_layer.nodes, NF, 1) < 1e-5)
          assert.is_true(worst_rel(s.neurons, one_layer.neurons, NF * m.d_model, 1) < 1e-5)
        end
      end)

      it("batched steps are summed before the gather at every budget", function()
        for _, budget in ipairs({ 1, 4 * blk * NB }) do
          local s = scores(t, budget, 3)
          assert.is_true(worst_rel(s.edges, one_layer.edges, NF * NB, 3) < 1e-4, tostring(budget))
          assert.is_true(worst_rel(s.nodes, one_layer.nodes, NF, 3) < 1e-4)
          assert.is_true(worst_rel(s.neurons, one_layer.neurons, NF * m.d_model, 3) < 1e-4)
        end
      end)

      it("the engine counts the score GEMMs' work: 2 B P D flops per real edge and step block", function()
        local n_real = 0
        for i = 0, NF * NB - 1 do n_real = n_real + t.mask[i] end
        for _, case in ipairs({ { 1, 1 }, { 4 * blk * NB, 1 }, { 1, 3 } }) do
          local budget, steps = case[1], case[2]
          C.eapig_workspace_score_stats(m.workspace, nil, nil, 1)
          scores(t, budget, steps)
          local flops = ffi.new("double[2]") -- seconds, flops
          C.eapig_workspace_score_stats(m.workspace, flops, flops + 1, 0)
          assert.are.equal(2 * blk * n_real, flops[1], ("budget %d, %d steps"):format(budget, steps))
          assert.is_true(flops[0] > 0 and flops[0] < 60)
          C.eapig_workspace_score_stats(m.workspace, nil, nil, 1)
          C.eapig_workspace_score_stats(m.workspace, flops, flops + 1, 0)
          assert.are.equal(0, flops[0])
          assert.are.equal(0, flops[1])
        end
      end)

      it("node scores are sums of out-edge scores and of neuron scores", function()
        for u = 0, NF - 1 do
          -- a node's output meets the residual gradient, which is the sum of its readers' gradients
          -- downstream; out-edge scores sum over destinations reading it
          local sum_n = 0
          for d = 0, m.d_model - 1 do sum_n = sum_n + one_layer.neurons[u * m.d_model + d] end
          local tol = 1e-4 * (1 + math.abs(one_layer.nodes[u]))
          assert.is_true(math.abs(sum_n - one_layer.nodes[u]) < tol)
          local sum_e = 0
          for v = 0, NB - 1 do sum_e = sum_e + one_layer.edges[u * NB + v] end
          assert.is_true(math.abs(sum_e - one_layer.nodes[u]) < tol, ("node %d: %g vs %g"):format(u, sum_e,
            one_layer.nodes[u]))
        end
      end)
    end)
  end

  -- The heads' destination gradients (and, in a capturing or patched forward, the heads' outputs)
  -- are made in blocks of 128 rows split over the threads by head. A batch of 16 rows x 9
  -- positions (144 rows: a block and a part) must give what its two halves (72 rows, one block
  -- each) give alone; with 3 batched steps (432 rows) blocks cross the step boundaries. Every
  -- result is the same at 1, 2 and 3 threads, to the bit, and at 6 to rounding.
  describe("row blocks of the heads", function()
    -- rows [first, first + n) of a batch t (tokens, lengths, positions) and of a node-major buffer
    local function half(t, first, n)
      local m, P = t.m, t.batch.P
      local b = { tokens = t.batch.tokens + first * P, lengths = t.batch.lengths + first, B = n, P = P }
      local rows = function(buf)
        local out = core.floats(m.n_forward * n * P * m.d_model)
        local whole, part = m:block_size(t.batch.B, P), m:block_size(n, P)
        for u = 0, m.n_forward - 1 do
          ffi.copy(out + u * part, buf + u * whole + first * P * m.d_model, 4 * part)
        end
        return out
      end
      return b, t.pos + first, rows
    end
    for _, kind in ipairs({ "gpt2", "llama" }) do
      it(kind .. ": captures, patched logits, destination gradients and scores, at 1, 2, 3 and 6 threads", function()
        local before = C.eapig_get_num_threads()
        local lengths = {}
        for i = 1, 16 do lengths[i] = 5 + i % 5 end
        local t = tiny.clean_corrupted(kind, 31, lengths, { layers = 2 })
        local m, NF, NB, V = t.m, t.m.n_forward, t.m.n_backward, t.m.vocab
        local blk = m:block_size(t.batch.B, t.batch.P)
        local W = core.floats(NF * NB) -- every other real edge reads the corrupted value
        for i = 0, NF * NB - 1, 2 do W[i] = t.mask[i] end
        local ref
        for _, threads in ipairs({ 1, 2, 3, 6 }) do
          C.eapig_set_num_threads(threads)
          local got = { cap = core.floats(NF * blk), G = core.floats(NB * blk) }
          m:forward(t.batch, { logit_pos = t.pos, capture = got.cap })
          got.logits = m:forward(t.batch, { logit_pos = t.pos, patch_ref = t.cap_r, patch_w = W })
          for k = 0, 1 do -- each half alone
            local b, pos, rows = half(t, 8 * k, 8)
            local cap = core.floats(NF * m:block_size(8, b.P))
            m:forward(b, { logit_pos = pos, capture = cap })
            assert.is_true(worst_rel(cap, rows(got.cap), NF * m:block_size(8, b.P), 1) < 1e-5)
            local logits = m:forward(b, { logit_pos = pos, patch_ref = rows(t.cap_r), patch_w = W })
            assert.is_true(worst_rel(logits, got.logits + 8 * k * V, 8 * V, 1) < 1e-5)
          end
          m:forward(t.batch, { logit_pos = t.pos, keep = true })
          m:backward(t.c, { dest_grads = got.G })
          got.one = scores(t, nil, 1)
          local three = scores(t, nil, 3)
          assert.is_true(worst_rel(three.edges, got.one.edges, NF * NB, 3) < 1e-4, tostring(threads))
          if ref then
            -- the heads' sums are made in the same four parts at one to four threads: the same
            -- bits; beyond, one part per thread (rounding only)
            local tol = threads <= 4 and 0 or 1e-5
            assert.is_true(worst_rel(got.cap, ref.cap, NF * blk, 1) <= tol, tostring(threads))
            assert.is_true(worst_rel(got.logits, ref.logits, t.batch.B * V, 1) <= tol, tostring(threads))
            assert.is_true(worst_rel(got.G, ref.G, NB * blk, 1) <= tol, tostring(threads))
            assert.is_true(worst_rel(got.one.edges, ref.one.edges, NF * NB, 1) <= tol, tostring(threads))
          end
          ref = ref or got
        end
        C.eapig_set_num_threads(before)
      end)
    end
  end)
end)
