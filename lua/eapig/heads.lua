-- eapig.heads: attention-pattern scores that identify heads independently of any attribution
-- (Olsson et al. 2022): the previous-token score (attention from each position to the one
-- before) and the induction score (on a random segment repeated twice, attention from each token
-- of the second copy to the token after its earlier occurrence).
local core = require("eapig.core")

local M = {}

-- scores(model, {rows = 16, half = 12, seed = 1}) -> {prev[l][h], induction[l][h]} (0-based l, h)
function M.scores(model, opts)
  opts = opts or {}
  local B, T = opts.rows or 16, opts.half or 12
  if T + 1 > model.vocab then error("heads.scores: the segment is longer than the vocabulary", 0) end
  local P = 2 * T
  if P > model.n_ctx then error("heads.scores: the repeated segment is longer than the context", 0) end
  local tokens, lengths = core.int32s(B * P), core.int32s(B)
  local state = opts.seed or 1
  local function rand(n) -- a small LCG: the scores must not depend on the caller's RNG
    -- 69069 keeps every product below 2^53, so doubles hold it exactly
    state = (state * 69069 + 1) % 4294967296
    return math.floor(state / 65536) % n
  end
  for b = 0, B - 1 do
    lengths[b] = P
    local used = {}
    for t = 0, T - 1 do
      local id
      repeat id = rand(model.vocab) until not used[id]
      used[id] = true
      tokens[b * P + t], tokens[b * P + T + t] = id, id
    end
  end
  local L, H = model.n_layers, model.n_heads
  local att = core.floats(L * B * H * P * P)
  model:forward({ tokens = tokens, lengths = lengths, B = B, P = P }, { attn_probs = att, no_logits = true })
  local prev, induction = {}, {}
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
    end
  end
  return { prev = prev, induction = induction }
end

-- The head with the highest score in a layer: returns h, score.
function M.best(scores_by_layer, l)
  local best, best_s = 0, -math.huge
  for h, s in pairs(scores_by_layer[l]) do
    if s > best_s then best, best_s = h, s end
  end
  return best, best_s
end

return M
