-- eapig.heads: attention-pattern scores that identify heads independently of any attribution
-- (Olsson et al. 2022): the previous-token score (attention from each position to the one
-- before) and the induction score (on a random segment repeated twice, attention from each token
-- of the second copy to the token after its earlier occurrence).
local core = require("eapig.core")
local indices = require("eapig.indices")
local random = require("eapig.rng")

local M = {}

-- scores(model, {rows = 16, half = 12, seed = 1}) -> {prev[l][h], induction[l][h], output[l][h]}
-- (0-based l, h). output is the root-mean-square norm of the head's output (what it writes into
-- the residual stream), centred over the rows' positions: a head whose attention looks right but whose output
-- weights are (near) zero does nothing, and a model trained for few heads has such heads.
function M.scores(model, opts)
  opts = opts or {}
  local B, T = opts.rows or 16, opts.half or 12
  if T + 1 > model.vocab then error("heads.scores: the segment is longer than the vocabulary", 0) end
  local P = 2 * T
  if P > model.n_ctx then error("heads.scores: the repeated segment is longer than the context", 0) end
  local tokens, lengths = core.int32s(B * P), core.int32s(B)
  local rng = random.new(opts.seed or 1) -- its own generator: the scores must not depend on the caller's
  for b = 0, B - 1 do
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
  local att = core.floats(L * B * H * P * P, "heads.scores: the attention patterns (layers x rows x heads x P x P)")
  local D = model.d_model
  local cap = model:nodes_buffer(B, P)
  model:forward({ tokens = tokens, lengths = lengths, B = B, P = P }, { attn_probs = att, capture = cap,
    no_logits = true })
  local prev, induction, output = {}, {}, {}
  for l = 0, L - 1 do
    prev[l], induction[l] = {}, {}
    for h = 0, H - 1 do
      local sp, si = 0, 0
      for b = 0, B - 1 do
        local a = att + (((l * B + b) * H + h) * P) * P
        for p = 1, P - 1 do sp = sp + a[p * P + p - 1] end
        for j = 0, T - 2 do -- token T + j repeats token j; the answer follows at j + 1
          si = si + a[(T + j) * P + j + 1]
        end
      end
      prev[l][h] = sp / (B * (P - 1))
      induction[l][h] = si / (B * (T - 1))
      -- node a{l}.h{h}, centred over positions (a constant offset carries nothing)
      local out, n = cap + indices.head_node(H, l, h) * B * P * D, B * P
      local ss = 0
      for d = 0, D - 1 do
        local m, q = 0, 0
        for i = 0, n - 1 do m = m + out[i * D + d] end
        m = m / n
        for i = 0, n - 1 do
          local x = out[i * D + d] - m
          q = q + x * x
        end
        ss = ss + q
      end
      output[l] = output[l] or {}
      output[l][h] = math.sqrt(ss / n)
    end
  end
  return { prev = prev, induction = induction, output = output }
end

-- The heads of layer l that write something: output norm at least `fraction` (0.05) of the
-- layer's largest. A set h -> true.
function M.writing(output_by_layer, l, fraction)
  local top = 0
  for _, v in pairs(output_by_layer[l]) do top = math.max(top, v) end
  local set = {}
  for h, v in pairs(output_by_layer[l]) do
    if v >= (fraction or 0.05) * top then set[h] = true end
  end
  return set
end

-- The head with the highest score in a layer (among the heads in `among`, a set h -> true, when
-- given): returns h, score.
function M.best(scores_by_layer, l, among)
  local best, best_s = 0, -math.huge
  for h, s in pairs(scores_by_layer[l]) do
    if s > best_s and (among == nil or among[h]) then best, best_s = h, s end
  end
  return best, best_s
end

return M
