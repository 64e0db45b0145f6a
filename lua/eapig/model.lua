-- The Model object: a loaded checkpoint plus the workspace its runs reuse, with thin wrappers
-- over eapig_forward / eapig_backward. Buffers are Lua-owned (ffi.new); C fills them.
local core = require("eapig.core")
local ffi, C = core.ffi, core.C

local Model = {}
Model.__index = Model

local batch_t = ffi.typeof("eapig_batch")
local fwd_opts_t = ffi.typeof("eapig_forward_opts")
local bwd_opts_t = ffi.typeof("eapig_backward_opts")

local FAMILY_NORM = { [0] = "layernorm", [1] = "rmsnorm" }

-- handle: eapig_model* (already finalized, owned by ffi.gc); info: the loader's description.
function Model.new(handle, info, extra)
  local self = setmetatable({}, Model)
  self.handle = handle
  self.workspace = ffi.gc(core.check_ptr(C.eapig_workspace_new(), "workspace"), C.eapig_workspace_free)
  local cfg = C.eapig_model_config(handle)
  self.cfg = cfg
  self.n_layers, self.n_heads, self.n_kv_heads = cfg.n_layers, cfg.n_heads, cfg.n_kv_heads
  self.d_model, self.d_head, self.d_mlp = cfg.d_model, cfg.d_head, cfg.d_mlp
  self.vocab, self.n_ctx = cfg.vocab, cfg.n_ctx
  self.parallel_attn_mlp = cfg.parallel_attn_mlp ~= 0
  self.n_forward = C.eapig_model_n_forward(handle)
  self.n_backward = C.eapig_model_n_backward(handle)
  self.family = info and info.family or "model"
  -- "f32" (converted whole at load) or "stored" (the checkpoint's dtype, memory-mapped, one layer
  -- converted at a time), the checkpoint's dtype and why the loader chose it
  self.weights = C.eapig_model_is_stored(handle) ~= 0 and "stored" or "f32"
  self.weights_dtype = info and info.weights_dtype
  self.weights_why = info and info.weights_why
  self.source = extra and extra.path
  self.folder = extra and extra.folder
  return self
end

function Model:info()
  local cfg = self.cfg
  return {
    family = self.family, n_layers = self.n_layers, n_heads = self.n_heads, n_kv_heads = self.n_kv_heads,
    d_model = self.d_model, d_head = self.d_head, d_mlp = self.d_mlp, vocab = self.vocab,
    n_ctx = self.n_ctx, context_length = self.n_ctx, parallel_attn_mlp = self.parallel_attn_mlp,
    norm = FAMILY_NORM[cfg.norm], n_forward = self.n_forward, n_backward = self.n_backward,
    n_edges = tonumber(C.eapig_model_n_edges(self.handle)),
    weights = self.weights, weights_dtype = self.weights_dtype,
  }
end

function Model:__tostring()
  return string.format("[eapig.Model %s: %d layers, %d heads (%d kv), d_model %d, vocab %d]",
    self.family, self.n_layers, self.n_heads, self.n_kv_heads, self.d_model, self.vocab)
end

-- Floats in one (B, P, D) activation block and in a node-major (NF, B, P, D) buffer.
function Model:block_size(B, P) return B * P * self.d_model end
function Model:nodes_buffer(B, P) return core.floats(self.n_forward * B * P * self.d_model) end

-- Runs the forward. batch = {tokens = int32[B*P], lengths = int32[B], B =, P =}; opts:
--   logit_pos (int32[B] or nil: every position), logits (float buffer or nil: allocated),
--   capture (float buffer (NF,B,P,D) or nil), capture_diff (1: capture holds R and becomes
--   R - output; -1: output - R), patch_ref + patch_w (+ patch_scale), override_group +
--   override_value, resid, attn_probs, start_layer + start_resid + start_capture, keep (keep
--   activations for :backward), keep_for_weights (also keep what weight gradients need; implies
--   keep), no_logits (skip the unembedding): every field of eapig_forward_opts (core/include/eapig.h).
-- Returns the logits buffer.
function Model:forward(batch, opts)
  opts = opts or {}
  local B, P = batch.B, batch.P
  local rows = opts.logit_pos and B or B * P
  local logits = opts.logits
  if not logits and not opts.no_logits then logits = core.floats(rows * self.vocab) end
  local b = batch_t()
  b.tokens, b.lengths, b.B, b.P = batch.tokens, batch.lengths, B, P
  local o = fwd_opts_t()
  o.logit_pos = opts.logit_pos
  o.logits = logits
  o.capture = opts.capture
  o.capture_diff = opts.capture_diff or 0
  o.patch_ref, o.patch_w, o.patch_scale = opts.patch_ref, opts.patch_w, opts.patch_scale
  o.resid = opts.resid
  o.attn_probs = opts.attn_probs
  o.start_layer = opts.start_layer or 0
  o.start_resid, o.start_capture = opts.start_resid, opts.start_capture
  o.override_group = opts.override_group or C.EAPIG_GROUP_NONE
  o.override_value = opts.override_value
  o.keep_for_backward = (opts.keep or opts.keep_for_weights) and 1 or 0
  o.keep_for_weights = opts.keep_for_weights and 1 or 0
  core.check(C.eapig_forward(self.handle, self.workspace, b, o), "forward")
  return logits
end

-- Backward from dlogits (same shape as the last kept forward's logits). opts: diff, diff_B,
-- scores, node_scores, neuron_scores, dest_grads, node_grads (float buffers, see eapig.h),
-- score_memory (bytes the edge-score accumulation may gather; nil: the engine's default),
-- weight_grads (a Model or eapig_model* of the same config whose weights accumulate every
-- weight's gradient; the forward must have had keep_for_weights): every field of
-- eapig_backward_opts.
function Model:backward(dlogits, opts)
  opts = opts or {}
  local o = bwd_opts_t()
  o.dlogits = dlogits
  o.diff, o.diff_B = opts.diff, opts.diff_B or 0
  o.scores, o.node_scores, o.neuron_scores = opts.scores, opts.node_scores, opts.neuron_scores
  o.dest_grads, o.node_grads = opts.dest_grads, opts.node_grads
  o.score_memory = opts.score_memory or 0
  local wg = opts.weight_grads
  if type(wg) == "table" then wg = wg.handle end
  o.weight_grads = wg
  core.check(C.eapig_backward(self.handle, self.workspace, o), "backward")
end

-- Grows the workspace to what a run of B rows of P positions needs (diff_B and flags as in
-- eapig_workspace_bytes: C.EAPIG_RUN_KEEP for a run kept for backward), so that smaller runs
-- before it reuse that memory.
function Model:reserve(B, P, diff_B, flags)
  core.check(C.eapig_workspace_reserve(self.workspace, self.handle, B, P, diff_B or 0, flags or 0), "reserve")
end

-- Builds a one-row batch from a Lua array of ids.
local function single_batch(ids)
  local n = #ids
  local tokens, lengths = core.int32s(n), core.int32s(1)
  for i = 1, n do tokens[i - 1] = ids[i] end
  lengths[0] = n
  return { tokens = tokens, lengths = lengths, B = 1, P = n }
end

-- Greedy decoding: appends `steps` argmax tokens to ids (a Lua array); returns the new ids.
-- Each step reruns the prefix (no KV cache): fine for the checks it exists for.
function Model:generate(ids, steps)
  local out = {}
  for i = 1, #ids do out[i] = ids[i] end
  local logit_pos = core.int32s(1)
  local logits = core.floats(self.vocab)
  for _ = 1, steps do
    if #out >= self.n_ctx then break end
    local batch = single_batch(out)
    logit_pos[0] = #out - 1
    self:forward(batch, { logit_pos = logit_pos, logits = logits })
    local best, best_v = 0, logits[0]
    for v = 1, self.vocab - 1 do
      if logits[v] > best_v then best, best_v = v, logits[v] end
    end
    out[#out + 1] = best
  end
  return out
end

-- Drops the C buffers now rather than at garbage collection (STYLE 12).
function Model:free()
  if self.handle then
    -- cfg points into the model's memory: it becomes a copy, so model.cfg and model:info() stay valid
    self.cfg = ffi.new("eapig_config", self.cfg[0])
    C.eapig_model_free(ffi.gc(self.handle, nil))
  end
  if self.workspace then C.eapig_workspace_free(ffi.gc(self.workspace, nil)) end
  self.handle, self.workspace = nil, nil
end

return Model
