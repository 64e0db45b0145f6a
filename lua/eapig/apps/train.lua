-- Training small models from scratch: GPT-2's initialisation, next-token cross-entropy, AdamW
-- with weight decay, warmup + cosine learning rate, gradient clipping by global norm; trained
-- models are saved as Hugging Face folders by eapig.formats.save.
--
--   local train = require("eapig.train")
--   local task = require("eapig.tasks.induction").new({ vocab = 64, seq_len = 32 })
--   local model = train.new_model({ family = "gpt2", layers = 2, heads = 4, d_model = 64,
--                                   d_mlp = 256, vocab = 64, n_ctx = 32, seed = 1 })
--   local result = train.train(model, task, { steps = 2000, seed = 1 })
--   train.save_pretrained(model, "out/induction-2l", { tokenizer = task:pieces() })
--
-- The arithmetic is in C (core/train.c, and the weight gradients of eapig_backward); this file
-- holds the loop and its policy. Training works on raw (not finalized) weights; a trained model
-- is saved and loaded again (which finalizes it) before attribution.
--
-- A training task is any table with
--   task:batch(rng, B) -> { tokens = int32[B*P], lengths = int32[B], B =, P =, targets = nil | int32[B*P] }
-- (rng: an eapig.rng generator, xorshift32, seeded with opts.seed)
-- targets (optional) are the next-token targets per position (-1: no loss); without them every
-- real position but the last predicts the token after it. A task may also have
--   task:evaluate(model, opts) -> table of held-out numbers (printed at the end of training).
--
-- Determinism: the same seed, thread count and build give the same weights, bit for bit.
--
-- Glossary: B = rows in a batch, P = positions, V = vocab, D = d_model, L = layers.
local ffi = require("ffi")
local core = require("eapig.core")
local Model = require("eapig.model")
local families = require("eapig.formats.families")
local load = require("eapig.formats.load")
local save = require("eapig.formats.save")
local Progress = require("eapig.progress")
local random = require("eapig.rng")

local C = core.C
local floor, max, min, cos, pi = math.floor, math.max, math.min, math.cos, math.pi
local fmt = string.format

local train = {}

local adamw_opts_t = ffi.typeof("eapig_adamw_opts")
local float_size = ffi.sizeof("float")
local norm_out = ffi.new("double[1]")
local n_out = ffi.new("int64_t[1]")

---------------------------------------------------------------------------------------------------
-- Models

-- The families training supports and its defaults for them (the rest of their configuration
-- comes from their tables in formats/families.lua). Llama has no biases: their gradients are
-- dropped so they stay zero.
local FAMILIES = {
  gpt2 = { eps = 1e-5, biases = true, tied = true },
  llama = { eps = 1e-6, biases = false, tied = false },
}

local function positive_int(o, k, who)
  local v = o[k]
  if type(v) ~= "number" or v ~= floor(v) or v < 1 then
    error(fmt("%s: %s must be a positive integer (got %s)", who, k, tostring(v)), 3)
  end
  return v
end

-- A fresh model with GPT-2's random initialisation, raw (not finalized) for training. opts:
-- family ("gpt2" | "llama"), layers, heads, kv_heads (heads), d_model, d_head (d_model / heads),
-- d_mlp (4 d_model), vocab, n_ctx, tied (gpt2: true), seed (1), std (0.02), rope_theta (10000).
function train.new_model(opts)
  local who = "eapig.train.new_model"
  opts = opts or {}
  local family = opts.family or "gpt2"
  local fam = FAMILIES[family]
  if not fam then error(fmt("%s: unknown family '%s' (gpt2 or llama)", who, tostring(family)), 2) end
  local o = {}
  for k, v in pairs(opts) do o[k] = v end
  o.layers, o.heads, o.d_model = o.layers or 2, o.heads or 4, o.d_model or 64
  o.kv_heads = o.kv_heads or o.heads
  o.d_head = o.d_head or floor(o.d_model / o.heads)
  o.d_mlp = o.d_mlp or 4 * o.d_model
  for _, k in ipairs({ "layers", "heads", "kv_heads", "d_model", "d_head", "d_mlp", "vocab", "n_ctx" }) do
    positive_int(o, k, who)
  end
  if family == "gpt2" and (o.kv_heads ~= o.heads or o.d_head * o.heads ~= o.d_model) then
    error(fmt("%s: gpt2 needs d_model (%d) = heads (%d) x d_head (%d) and no grouped heads", who, o.d_model,
      o.heads, o.d_head), 2)
  end
  if family == "llama" and o.d_head % 2 ~= 0 then error(who .. ": llama needs an even d_head for RoPE", 2) end
  local tied = o.tied
  if tied == nil then tied = fam.tied end

  -- the configuration eapig.load would give the config.json save_pretrained writes
  local c = { n_layers = o.layers, n_heads = o.heads, n_kv_heads = o.kv_heads, d_model = o.d_model, d_head = o.d_head,
              d_mlp = o.d_mlp, vocab = o.vocab, n_ctx = o.n_ctx, norm_eps = o.norm_eps or fam.eps,
              rope_theta = o.rope_theta or 10000, tied = tied, flags = {} }
  local cfg = load.config(families.get(family).write_config(c, family), who)
  local handle = ffi.gc(core.check_ptr(C.eapig_model_new(cfg), who), C.eapig_model_free)
  core.check(C.eapig_model_init(handle, o.seed or 1, o.std or 0.02, tied and 1 or 0), who)
  local model = Model.new(handle, { family = family })
  -- The config values as given (cfg holds them as float32: 1e-5 would read back 9.99999974e-06).
  model.training = { family = family, tied = tied, biases = fam.biases, norm_eps = o.norm_eps or fam.eps,
                     rope_theta = family == "llama" and (o.rope_theta or 10000) or 0, init_std = o.std or 0.02 }
  return model
end

-- A zeroed model of the same config: the layout of gradients and optimiser moments.
local function same_shape(model)
  return ffi.gc(core.check_ptr(C.eapig_model_new(model.cfg), "eapig.train"), C.eapig_model_free)
end

local function arena(handle)
  local p = C.eapig_model_arena(handle, n_out)
  return p, tonumber(n_out[0])
end

-- Gradients of the biases a family does not have are dropped, so those stay exactly zero.
local BIAS_SLOTS = { "bq", "bk", "bv", "bo", "b_in", "b_out" }
local function drop_absent_biases(model, grads)
  if model.training.biases then return end
  local cfg = model.cfg
  local gw = C.eapig_model_weights(grads)
  local sizes = { bq = cfg.n_heads * cfg.d_head, bk = cfg.n_kv_heads * cfg.d_head, bv = cfg.n_kv_heads * cfg.d_head,
                  bo = cfg.d_model, b_in = cfg.d_mlp, b_out = cfg.d_model }
  for l = 0, cfg.n_layers - 1 do
    local lw = gw.layers[l]
    for _, k in ipairs(BIAS_SLOTS) do ffi.fill(lw[k], sizes[k] * float_size) end
  end
end

-- Attention-only training (opts.attn_only): the MLPs' weights start at zero and their gradients
-- are dropped, so every MLP adds exactly 0 and the model is a pure attention model stored in the
-- family's usual layout (transformers and eapig load it as it is).
local MLP_SLOTS = { "w_in", "b_in", "w_gate", "w_out", "b_out" }
local function mlp_sizes(cfg)
  local D, F = cfg.d_model, cfg.d_mlp
  return { w_in = F * D, b_in = F, w_gate = F * D, w_out = D * F, b_out = D }
end
function train.zero_mlps(handle, cfg)
  local w, sizes = C.eapig_model_weights(handle), mlp_sizes(cfg)
  for l = 0, cfg.n_layers - 1 do
    local lw = w.layers[l]
    for _, k in ipairs(MLP_SLOTS) do
      if lw[k] ~= nil then ffi.fill(lw[k], sizes[k] * float_size) end
    end
  end
end

-- Head sparsity (opts.head_sparsity = lambda): a penalty lambda * sum over heads of
-- sqrt(||W_O[:, head]||) (the Frobenius norm of the head's output weights), added to the
-- gradient as lambda * W_h / (2 ||W_h||^1.5). The square root makes it concave in each head's
-- norm: one head doing a job costs less than two heads sharing it (2 sqrt(w/2) > sqrt(w)), so
-- copies of a head are pushed to merge into one, and heads the task does not need fade. (A plain
-- group lasso, sum ||W_h||, cannot tell one head from two halves, and in our trials left the
-- induction mechanism spread over three heads.) Under Adam each weight moves about lr per step
-- whatever its gradient's size, so the penalty wins where the loss gradient is weaker.
function train.add_head_penalty(model, grads, lambda)
  local cfg = model.cfg
  local D, H, Dh = cfg.d_model, cfg.n_heads, cfg.d_head
  local w, gw = C.eapig_model_weights(model.handle), C.eapig_model_weights(grads)
  local HD = H * Dh
  for l = 0, cfg.n_layers - 1 do
    local wo, go = w.layers[l].wo, gw.layers[l].wo -- (D, H*Dh)
    for h = 0, H - 1 do
      local ss = 0
      for r = 0, D - 1 do
        local row = r * HD + h * Dh
        for c = 0, Dh - 1 do ss = ss + wo[row + c] * wo[row + c] end
      end
      if ss > 0 then
        local k = lambda / (2 * ss ^ 0.75) -- lambda / (2 ||W_h||^1.5)
        for r = 0, D - 1 do
          local row = r * HD + h * Dh
          for c = 0, Dh - 1 do go[row + c] = go[row + c] + k * wo[row + c] end
        end
      end
    end
  end
end

---------------------------------------------------------------------------------------------------
-- One step's pieces, exposed for tests

-- Next-token targets for a right-padded batch: position p of row b predicts token p+1 while
-- that is a real token; the rest are -1. Returns the number of counted positions.
function train.next_token_targets(batch, targets)
  local B, P, count = batch.B, batch.P, 0
  for b = 0, B - 1 do
    local len = batch.lengths[b]
    for p = 0, P - 1 do
      local i = b * P + p
      if p + 1 < len then
        targets[i] = batch.tokens[i + 1]
        count = count + 1
      else
        targets[i] = -1
      end
    end
  end
  return count
end

-- Learning rate at step t (1-based) of `steps`: linear warmup to lr over `warmup` steps, then
-- a cosine from lr down to min_lr at the last step.
function train.lr_at(t, steps, lr, warmup, min_lr)
  if warmup > 0 and t <= warmup then return lr * t / warmup end
  local span = max(steps - warmup, 1)
  local progress = min(max((t - warmup) / span, 0), 1)
  return min_lr + 0.5 * (lr - min_lr) * (1 + cos(pi * progress))
end

-- Forward over every position, mean cross-entropy against targets (int32[B*P], -1 skipped),
-- its dlogits in place and, with grads, the backward into them (accumulating: zero them first).
-- bufs = { logits = float[B*P*V], losses = float[B*P] } (grown by the caller). Returns the mean
-- loss and the number of counted positions.
function train.loss_and_grads(model, batch, targets, count, bufs, grads)
  local B, P, V = batch.B, batch.P, model.vocab
  model:forward(batch, { logits = bufs.logits, keep_for_weights = grads ~= nil })
  core.check(C.eapig_cross_entropy(bufs.losses, bufs.logits, bufs.logits, targets, B * P, V, 1 / max(count, 1)),
    "eapig.train: loss")
  local total = 0
  for i = 0, B * P - 1 do total = total + bufs.losses[i] end
  if grads then model:backward(bufs.logits, { weight_grads = grads }) end
  return total / max(count, 1), count
end

---------------------------------------------------------------------------------------------------
-- The loop

local DEFAULTS = {
  steps = 1000, batch_size = 32, lr = 1e-3, min_lr = nil, warmup = nil, weight_decay = 0.1, beta1 = 0.9,
  beta2 = 0.98, eps = 1e-8, clip = 1.0, seed = 1, log_every = nil, quiet = false, progress = nil,
  attn_only = false, head_sparsity = 0,
}

local UNTRAINABLE = { gemma = true, gemma2 = true, olmo2 = true }

-- Trains model (from train.new_model, or eapig.load(path, {finalize = false})) on task.
-- opts (defaults): steps (1000), batch_size (32), lr (1e-3), min_lr (lr / 10), warmup (steps / 20),
-- weight_decay (0.1, matrices and embeddings only), beta1 (0.9), beta2 (0.98), eps (1e-8),
-- clip (1.0: global gradient norm; 0 = none), seed (1: the data stream), tied (the model's),
-- log_every (steps / 20), quiet (false: print nothing), progress (the bar on stderr; default: eapig.progress:
-- a bar on a terminal, one line at the end elsewhere), out (io.stdout, for the loss lines), on_step
-- (function(step, loss, lr, grad_norm)), evaluate (true: call task:evaluate at the end),
-- attn_only (false: true zeroes the MLPs and keeps them at zero), head_sparsity (0: the
-- group-lasso weight lambda on each head's output weights, see add_head_penalty).
-- Returns { steps, seconds, final_loss (mean of the last log_every steps), losses (per step),
--           eval (task:evaluate's table, when the task has one) }.
function train.train(model, task, opts)
  local o = {}
  for k, v in pairs(DEFAULTS) do o[k] = v end
  for k, v in pairs(opts or {}) do o[k] = v end
  local who = "eapig.train"
  if type(task) ~= "table" or type(task.batch) ~= "function" then
    error(who .. ": task must have a :batch(rng, B) method", 2)
  end
  positive_int(o, "steps", who)
  positive_int(o, "batch_size", who)
  -- The loaders of these families change the stored weights (norms as 1 + w) or the core runs
  -- parts the weight gradients do not cover (embedding scale, post-norms, soft-capping, q/k norms).
  if UNTRAINABLE[model.family] then
    error(fmt("%s: training %s models is not supported (attribution and evaluation are)", who, model.family), 2)
  end
  if model.weights == "stored" then
    error(who .. ": training needs f32 weights; this model keeps them as stored (load with weights = \"f32\")", 2)
  end
  local training = model.training or { tied = false, biases = true }
  model.training = training
  local tied = o.tied
  if tied == nil then tied = training.tied end
  o.min_lr = o.min_lr or o.lr / 10
  o.warmup = o.warmup or floor(o.steps / 20)
  o.log_every = o.log_every or max(1, floor(o.steps / 20))
  local out = o.out or io.stdout

  local hs = o.head_sparsity
  if type(hs) ~= "number" or hs ~= hs or hs < 0 then
    error(fmt("%s: head_sparsity must be a number >= 0 (got %s)", who, tostring(o.head_sparsity)), 2)
  end
  if o.attn_only then train.zero_mlps(model.handle, model.cfg) end
  local grads, m1, m2 = same_shape(model), same_shape(model), same_shape(model)
  local g_arena, g_n = arena(grads)
  local rng = random.new(o.seed, "xorshift32") -- the stream models/induction-2l was trained on
  local bufs, cap = {}, 0
  local aopts = adamw_opts_t()
  aopts.beta1, aopts.beta2, aopts.eps, aopts.weight_decay = o.beta1, o.beta2, o.eps, o.weight_decay
  aopts.tied = tied and 1 or 0
  if tied then -- one tensor from here on: the unembedding starts as the embedding
    local w = C.eapig_model_weights(model.handle)
    ffi.copy(w.w_unembed, w.wte, model.vocab * model.d_model * float_size)
  end

  local losses, window, window_n = {}, 0, 0
  -- progress = false: nothing on stderr; true: the bar even off a terminal; nil: eapig.progress decides.
  local bar = Progress.new("train", o.steps, { quiet = o.quiet or o.progress == false, terminal = o.progress or nil })
  local t0 = Progress.now()
  for step = 1, o.steps do
    local batch = task:batch(rng, o.batch_size)
    local rows = batch.B * batch.P
    if rows > cap then
      cap = rows
      bufs.logits = core.floats(rows * model.vocab, ("train: the logits of a step (--batch-size %d x %d positions " ..
        "x vocab %d)"):format(batch.B, batch.P, model.vocab))
      bufs.losses = core.floats(rows)
      bufs.targets = core.int32s(rows)
    end
    local targets, count = batch.targets, 0
    if targets then
      for i = 0, rows - 1 do
        if targets[i] >= 0 then count = count + 1 end
      end
    else
      targets = bufs.targets
      count = train.next_token_targets(batch, targets)
    end
    ffi.fill(g_arena, g_n * float_size)
    local loss = train.loss_and_grads(model, batch, targets, count, bufs, grads)
    drop_absent_biases(model, grads)
    if o.attn_only then train.zero_mlps(grads, model.cfg) end
    if o.head_sparsity > 0 then train.add_head_penalty(model, grads, o.head_sparsity) end
    core.check(C.eapig_grad_norm(grads, aopts.tied, norm_out), who)
    local gnorm = norm_out[0]
    local lr = train.lr_at(step, o.steps, o.lr, o.warmup, o.min_lr)
    aopts.lr = lr
    aopts.step = step
    aopts.grad_scale = (o.clip > 0 and gnorm > o.clip) and o.clip / gnorm or 1
    core.check(C.eapig_adamw_step(model.handle, grads, m1, m2, aopts), who)

    losses[step] = loss
    window, window_n = window + loss, window_n + 1
    if o.on_step then o.on_step(step, loss, lr, gnorm) end
    local elapsed = Progress.now() - t0
    if step % o.log_every == 0 or step == o.steps then
      if not o.quiet then
        bar:clear()
        out:write(fmt("step %6d/%d  loss %.4f  lr %.2e  grad %.3f  %.1fs\n", step, o.steps, window / window_n, lr,
          gnorm, elapsed))
        out:flush()
      end
      if step ~= o.steps then window, window_n = 0, 0 end
    end
    bar:update(step, fmt("loss %.4f", loss))
  end
  bar:finish()
  local result = { steps = o.steps, seconds = Progress.now() - t0, final_loss = window / max(window_n, 1),
                   losses = losses }
  if task.evaluate and o.evaluate ~= false then result.eval = task:evaluate(model, { seed = o.seed + 1000003 }) end
  return result
end

---------------------------------------------------------------------------------------------------
-- Hugging Face folders (written by eapig.formats.save, from the family tables the loader reads)

-- Writes a Hugging Face folder for model (gpt2 or llama family): config.json and
-- model.safetensors with the names and layouts transformers saves (gpt2: Conv1D (in, out)
-- matrices under "transformer."), and, with opts.tokenizer (a list of pieces, id order), a
-- character-level tokenizer. opts.metadata: extra string fields for the safetensors header;
-- opts.config: extra config.json fields. The weights must be raw (not finalized).
function train.save_pretrained(model, dir, opts)
  opts = opts or {}
  local training = model.training
  if not training then error("eapig.train.save_pretrained: model has no training record (use train.new_model)", 2) end
  if not FAMILIES[training.family] then
    error("eapig.train.save_pretrained: cannot save family " .. tostring(training.family), 2)
  end
  local cfg = model.cfg
  -- norm_eps and rope_theta as given (cfg holds them as float32)
  local c = { n_layers = cfg.n_layers, n_heads = cfg.n_heads, n_kv_heads = cfg.n_kv_heads, d_model = cfg.d_model,
              d_head = cfg.d_head, d_mlp = cfg.d_mlp, vocab = cfg.vocab, n_ctx = cfg.n_ctx, act = cfg.act,
              rotary_dim = cfg.rotary_dim, norm_eps = training.norm_eps, rope_theta = training.rope_theta,
              tied = training.tied, flags = {} }
  local config = { initializer_range = training.init_std }
  for k, v in pairs(opts.config or {}) do config[k] = v end
  return save.folder(dir, training.family, c, { weights = C.eapig_model_weights(model.handle), config = config,
                                                metadata = opts.metadata, tokenizer = opts.tokenizer })
end

return train
