-- The two training options the embedded model uses: attention-only training keeps every MLP at
-- exactly zero, and the head-sparsity penalty's gradient is the derivative of
-- lambda * sum over heads of sqrt(||W_O[:, head]||) (checked by finite differences).
local ffi = require("ffi")
local core = require("eapig.core")
local train = require("eapig.apps.train")
local C = core.C

local function weights(model) return C.eapig_model_weights(model.handle) end

describe("attention-only training", function()
  it("keeps the MLPs at zero through training, so they add nothing", function()
    local model = train.new_model({ layers = 2, heads = 2, d_model = 16, d_mlp = 32, vocab = 20, n_ctx = 12, seed = 3 })
    local task = require("eapig.tasks.induction").new({ vocab = 20, seq_len = 12 })
    train.train(model, task, { steps = 5, batch_size = 4, attn_only = true, quiet = true, evaluate = false })
    local w, cfg = weights(model), model.cfg
    local D, F = cfg.d_model, cfg.d_mlp
    local nonzero_attn = 0
    for l = 0, cfg.n_layers - 1 do
      local lw = w.layers[l]
      for i = 0, F * D - 1 do
        assert.are.equal(0, lw.w_in[i])
        assert.are.equal(0, lw.w_out[i])
      end
      for i = 0, F - 1 do assert.are.equal(0, lw.b_in[i]) end
      for i = 0, D - 1 do assert.are.equal(0, lw.b_out[i]) end
      for i = 0, D * D - 1 do
        if lw.wo[i] ~= 0 then nonzero_attn = nonzero_attn + 1 end
      end
    end
    assert.is_true(nonzero_attn > 0) -- attention did train
  end)
end)

describe("head sparsity", function()
  it("adds the gradient of lambda * sum_h sqrt(||W_O[:, h]||) (finite differences)", function()
    local model = train.new_model({ layers = 2, heads = 4, d_model = 16, d_mlp = 32, vocab = 20, n_ctx = 8, seed = 5,
      std = 0.3 })
    local cfg = model.cfg
    local D, H, Dh = cfg.d_model, cfg.n_heads, cfg.d_head
    local lambda = 0.37
    local grads = ffi.gc(C.eapig_model_new(cfg), C.eapig_model_free) -- zeroed
    train.add_head_penalty(model, grads, lambda)
    local w, g = weights(model), C.eapig_model_weights(grads)

    local function penalty()
      local total = 0
      for l = 0, cfg.n_layers - 1 do
        local wo = w.layers[l].wo
        for h = 0, H - 1 do
          local ss = 0
          for r = 0, D - 1 do
            for c = 0, Dh - 1 do
              local x = wo[r * H * Dh + h * Dh + c]
              ss = ss + x * x
            end
          end
          total = total + ss ^ 0.25
        end
      end
      return lambda * total
    end

    local eps, worst = 1e-3, 0
    for l = 0, cfg.n_layers - 1 do
      local wo, go = w.layers[l].wo, g.layers[l].wo
      for _, i in ipairs({ 0, 5, 17, 40, 63, D * H * Dh - 1 }) do
        local x = wo[i]
        wo[i] = x + eps
        local up = penalty()
        wo[i] = x - eps
        local down = penalty()
        wo[i] = x
        local fd = (up - down) / (2 * eps)
        worst = math.max(worst, math.abs(fd - go[i]) / math.max(1e-6, math.abs(fd)))
      end
    end
    assert.is_true(worst < 1e-2, "relative error " .. worst)
    -- and nothing but W_O gets a penalty gradient
    for i = 0, D * D - 1 do assert.are.equal(0, g.layers[0].wq[i]) end
  end)

  it("rejects a negative weight", function()
    local model = train.new_model({ layers = 1, heads = 1, d_model = 8, d_mlp = 8, vocab = 10, n_ctx = 8 })
    local task = require("eapig.tasks.induction").new({ vocab = 10, seq_len = 8 })
    assert.has_error(function() train.train(model, task, { steps = 1, head_sparsity = -1, quiet = true }) end,
      "eapig.train: head_sparsity must be a number >= 0 (got -1)")
  end)
end)
