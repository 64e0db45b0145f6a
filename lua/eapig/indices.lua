-- eapig.indices: the residual graph's index arithmetic (DESIGN "The one idea"), in one place for
-- every Lua user; core/internal.h's eapig_first_node, eapig_first_dest, ... are its C twin.
--
-- Sources (0-based): input 0, then per layer l its H heads 1 + l(H+1) + h and its MLP
-- 1 + l(H+1) + H: NF = 1 + L(H+1). Destinations: per layer l the J = 3H+1 slots from l*J (q of
-- head h at +h, k at +H+h, v at +2H+h, the MLP input at +3H), then the logits: NB = L*J + 1.
local floor = math.floor

local M = {}

-- Sources before layer l (input and every earlier layer's nodes): also a{l}.h0's index.
function M.first_node(H, l) return 1 + l * (H + 1) end

-- The node of head h of layer l, and of layer l's MLP.
function M.head_node(H, l, h) return 1 + l * (H + 1) + h end
function M.mlp_node(H, l) return 1 + l * (H + 1) + H end

-- Sources upstream of layer l's MLP input (its own heads too, unless attention and MLP are parallel).
function M.mlp_upstream(H, l, parallel) return 1 + l * (H + 1) + (parallel and 0 or H) end

-- Destinations per layer (J = 3H+1), the first of layer l (l = L: the logits), head h's q, k or v
-- input (c = 0, 1, 2) and layer l's MLP input.
function M.layer_dests(H) return 3 * H + 1 end
function M.first_dest(H, l) return l * (3 * H + 1) end
function M.qkv_dest(H, l, c, h) return l * (3 * H + 1) + c * H + h end
function M.mlp_dest(H, l) return l * (3 * H + 1) + 3 * H end

-- The layer of destination v (L for the logits).
function M.dest_layer(H, v) return floor(v / (3 * H + 1)) end

-- Node groups (the forward's override_group): 0 the input, 1 + 2l layer l's heads, 2 + 2l its
-- MLP; 2L + 1 in all. group_nodes gives a group's first node and its node count.
function M.heads_group(l) return 1 + 2 * l end
function M.mlp_group(l) return 2 + 2 * l end
function M.n_groups(L) return 1 + 2 * L end
function M.group_nodes(H, g)
  if g == 0 then return 0, 1 end
  local l = floor((g - 1) / 2)
  if g % 2 == 1 then return M.first_node(H, l), H end
  return M.mlp_node(H, l), 1
end

-- Residual-stream readers (the forward's resid buffer): 2l layer l's heads, 2l + 1 its MLP, 2L the
-- logits; 2L + 1 in all.
function M.attn_reader(l) return 2 * l end
function M.mlp_reader(l) return 2 * l + 1 end
function M.logits_reader(L) return 2 * L end
function M.n_readers(L) return 2 * L + 1 end

-- NF and NB of a model of L layers of H heads.
function M.sizes(L, H) return 1 + L * (H + 1), L * (3 * H + 1) + 1 end

return M
