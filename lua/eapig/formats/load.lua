-- Checkpoint loading: Hugging Face folders (config.json + safetensors, single or sharded), GGUF
-- files (through lua/eapig/formats/gguf.lua) and llama2.c .bin files, into one eapig_model in the core's
-- layout (PyTorch Linear (out, in), half-split RoPE rows, every bias present).
--
-- Each family is a small table (lua/eapig/formats/families.lua, shared with the writer
-- formats/save.lua): how to read its config.json, and which tensor fills which weight slot.
local ffi = require("ffi")
local cjson_null = require("cjson").null
local core = require("eapig.core")
local safetensors = require("eapig.formats.safetensors")
local families = require("eapig.formats.families")

local C = core.C
local floor = math.floor

local load = {}

local function fail(fmt, ...)
  error(string.format(fmt, ...), 0)
end

local function dirname(path)
  return path:match("^(.*)/[^/]*$") or "."
end

---------------------------------------------------------------------------------------------
-- config.json fields, checked as they are read

-- hidden_act / activation_function names; gated MLP families take SiLU (SwiGLU: llama, ...) or
-- the tanh GELU (GeGLU: gemma).
local ACTIVATIONS = {
  plain = { gelu_new = C.EAPIG_ACT_GELU_TANH, gelu_pytorch_tanh = C.EAPIG_ACT_GELU_TANH,
            gelu = C.EAPIG_ACT_GELU_ERF, relu = C.EAPIG_ACT_RELU },
  gated = { silu = C.EAPIG_ACT_SILU_GATED, swish = C.EAPIG_ACT_SILU_GATED },
  geglu = { gelu_pytorch_tanh = C.EAPIG_ACT_GELU_TANH_GATED, gelu_new = C.EAPIG_ACT_GELU_TANH_GATED },
}

-- A reader of config.json fields for error messages that name the file and the field.
-- A reader of a nested object names its fields "outer.key" (prefix "outer.").
local function config_reader(path, json, prefix)
  local r = { path = path }
  prefix = prefix or ""
  local function raw(key, default)
    local v = json[key]
    if v == nil or v == cjson_null then
      if default == nil then fail("%s: field '%s%s' is missing", path, prefix, key) end
      return default
    end
    return v
  end
  function r.has(key)
    return json[key] ~= nil and json[key] ~= cjson_null
  end
  -- present, and null (a soft-capping written as null is off)
  function r.raw_null(key)
    return json[key] == cjson_null
  end
  function r.int(key, default)
    local v = raw(key, default)
    if type(v) ~= "number" or v ~= floor(v) or v < 1 or v >= 2 ^ 31 then
      fail("%s: field '%s%s' must be a positive integer (got %s)", path, prefix, key, tostring(v))
    end
    return v
  end
  function r.num(key, default)
    local v = raw(key, default)
    if type(v) ~= "number" or not (v > 0) or v == math.huge then -- luacheck: ignore 581 (NaN must fail)
      fail("%s: field '%s%s' must be a positive number (got %s)", path, prefix, key, tostring(v))
    end
    return v
  end
  -- A positive number the core keeps as a float32: one that would become infinite or lose its
  -- precision to a subnormal (or 0) there is an error here, naming the field.
  function r.float32(key, default)
    local v = r.num(key, default)
    local problem = core.float32_problem(v)
    if problem then fail("%s: field '%s' (%s) %s", path, key, tostring(v), problem) end
    return v
  end
  -- A fraction in (0, 1].
  function r.fraction(key, default)
    local v = r.num(key, default)
    if v > 1 then fail("%s: field '%s' must be in (0, 1] (got %s)", path, key, tostring(v)) end
    return v
  end
  function r.bool(key, default)
    local v = raw(key, default)
    if type(v) ~= "boolean" then fail("%s: field '%s%s' must be true or false (got %s)", path, prefix, key, tostring(v)) end
    return v
  end
  function r.str(key, default)
    local v = raw(key, default)
    if type(v) ~= "string" then fail("%s: field '%s%s' must be a string (got %s)", path, prefix, key, tostring(v)) end
    return v
  end
  function r.table(key)
    local v = raw(key)
    if type(v) ~= "table" then fail("%s: field '%s%s' must be an object (got %s)", path, prefix, key, tostring(v)) end
    return v
  end
  -- A reader of the object at key (already read with r.table).
  function r.sub(key, value)
    return config_reader(path, value, prefix .. key .. ".")
  end
  function r.absent(key, why)
    local v = json[key]
    if v ~= nil and v ~= cjson_null and v ~= false then fail("%s: field '%s' is not supported (%s)", path, key, why) end
  end
  -- a / b, with an error naming both fields when it is not whole
  function r.divide(a_key, a, b_key, b)
    if a % b ~= 0 then fail("%s: field '%s' (%d) is not a multiple of '%s' (%d)", path, a_key, a, b_key, b) end
    return a / b
  end
  -- kind: "plain", "gated" or "geglu" (true / false: gated / plain)
  function r.activation(key, default, kind)
    local name = r.str(key, default)
    if type(kind) ~= "string" then kind = kind and "gated" or "plain" end
    local act = ACTIVATIONS[kind][name]
    if not act then fail("%s: field '%s': activation '%s' is not supported here", path, key, name) end
    return act
  end
  return r
end


---------------------------------------------------------------------------------------------
-- Filling the weights

local dims_of = families.dims

local TRANSPOSE = { transpose = true }

-- The big matrices. With stored weights they are bound to the checkpoint (eapig_model_bind) and
-- converted to f32 one layer at a time when used; everything else is read into f32 at load.
local MATS = {
  wte = C.EAPIG_MAT_WTE, w_unembed = C.EAPIG_MAT_UNEMBED, wq = C.EAPIG_MAT_WQ, wk = C.EAPIG_MAT_WK,
  wv = C.EAPIG_MAT_WV, wo = C.EAPIG_MAT_WO, w_in = C.EAPIG_MAT_W_IN, w_gate = C.EAPIG_MAT_W_GATE,
  w_out = C.EAPIG_MAT_W_OUT,
}

-- Part p (0-based) of a fused tensor holding `parts` matrices of `rows` rows stacked within each
-- of `groups` row groups: the stored row of each of its rows.
local function fused_row_map(rows, parts, p, groups)
  local per = rows / groups
  local map = ffi.new("int32_t[?]", rows)
  for g = 0, groups - 1 do
    for i = 0, per - 1 do map[g * per + i] = (g * parts + p) * per + i end
  end
  return map
end

-- Reads one table entry into target's slot(s). A fused entry holds its parts stacked by rows,
-- within each of `groups` row groups (neox's per-head [3, Dh] blocks; one group for gpt2).
-- Weights are stored as floats; an integer tensor in a weight's place is a damaged or relabelled file.
local FLOAT_DTYPES = { F32 = true, F16 = true, BF16 = true }

-- bind = {handle =, layer =} (stored weights): big matrices are bound instead of read.
-- scratch = {buf =, n =}: the one buffer fused entries are read into, reused by every layer (a
-- fresh one per layer would cost its page faults again each time).
local function fill_entry(src, e, name, target, dims, bind, scratch)
  local rows, cols = dims[e[3]], e[4] and dims[e[4]] or 1
  local dtype = src.info and src:has(name) and src:info(name).dtype -- GGUF sources check their own types
  if dtype and not FLOAT_DTYPES[dtype] then
    fail("%s: tensor '%s': field 'dtype' is %s; weights must be F32, F16 or BF16", src.path, name, dtype)
  end
  local opts = e.T and TRANSPOSE or nil
  local slots = type(e[1]) == "string" and { e[1] } or e[1]
  if bind and MATS[slots[1]] then
    local groups = e.groups and dims[e.groups] or 1
    for p, slot in ipairs(slots) do
      local row_map = #slots > 1 and fused_row_map(rows, #slots, p - 1, groups) or nil
      src:bind(name, bind.handle, bind.layer, MATS[slot], #slots * rows, cols, { transpose = e.T, row_map = row_map })
    end
    return
  end
  if type(e[1]) == "string" then
    src:read_into(name, target[e[1]], rows, cols, opts)
    -- a norm stored as w with scale (1 + w); a source whose norms already hold the 1 (llama.cpp's
    -- gemma GGUF files) says so with norms_include_one
    if e.plus_one and not src.norms_include_one then
      local p = target[e[1]]
      for i = 0, rows * cols - 1 do p[i] = p[i] + 1 end
    end
    return
  end
  local parts = #e[1]
  -- allocated in C: a fused q/k/v of a wide model can pass LuaJIT's 2 GiB limit on one buffer
  if scratch.n < parts * rows * cols then
    scratch.buf, scratch.n = core.batch_floats(parts * rows * cols), parts * rows * cols
  end
  local tmp = scratch.buf
  src:read_into(name, tmp, parts * rows, cols, opts)
  local groups = e.groups and dims[e.groups] or 1
  local block = rows / groups * cols -- floats of one part in one group
  for g = 0, groups - 1 do
    for p = 0, parts - 1 do
      ffi.copy(target[e[1][p + 1]] + g * block, tmp + (g * parts + p) * block, block * ffi.sizeof("float"))
    end
  end
end

-- handle: the eapig_model when its weights stay stored (nil: f32, everything read into w).
local function fill_family(src, fam, c, w, handle)
  local dims = dims_of(c)
  local prefix
  for _, p in ipairs(fam.prefixes) do
    if src:has(p .. fam.global[1][2]) then prefix = p break end
  end
  if not prefix then
    local tried = {}
    for i, p in ipairs(fam.prefixes) do tried[i] = "'" .. p .. fam.global[1][2] .. "'" end
    fail("%s: missing tensor %s", src.path, table.concat(tried, " or "))
  end
  local global_bind = handle and { handle = handle, layer = -1 }
  core.with_batch(function() -- frees the fused entries' scratch at the end
    local scratch = { n = 0 }
    for _, e in ipairs(fam.global) do fill_entry(src, e, prefix .. e[2], w, dims, global_bind, scratch) end
    for l = 0, c.n_layers - 1 do
      local lp = prefix .. fam.layer_prefix:format(l)
      local bind = handle and { handle = handle, layer = l }
      for _, e in ipairs(fam.layer) do
        if not e.when or c.flags[e.when] then fill_entry(src, e, lp .. e[2], w.layers[l], dims, bind, scratch) end
      end
    end
  end)
  -- A tied model's checkpoint may or may not repeat the embedding; the embedding is the truth.
  -- (The first global entry of every family is the embedding.)
  local embedding = prefix .. fam.global[1][2]
  local unembed = c.tied and embedding or fam.unembed
  if handle then
    src:bind(unembed, handle, -1, C.EAPIG_MAT_UNEMBED, dims.V, dims.D)
  elseif c.tied and c.shared_unembed == 0 then
    ffi.copy(w.w_unembed, w.wte, dims.V * dims.D * ffi.sizeof("float"))
  elseif not c.tied then
    fill_entry(src, { "w_unembed", unembed, "V", "D" }, unembed, w, dims, nil, nil)
  end
  return src:dtype(embedding)
end

local NORMS = { [0] = "layernorm", "rmsnorm" }
local ACTS = { [0] = "gelu_tanh", "gelu_erf", "relu", "silu_gated", "gelu_tanh_gated" }
local POS = { [0] = "learned", "rope" }

local function config_of(c)
  local cfg = ffi.new("eapig_config")
  for _, k in ipairs({ "n_layers", "n_heads", "n_kv_heads", "d_model", "d_head", "d_mlp", "vocab", "n_ctx",
                       "norm", "act", "pos", "rotary_dim", "norm_eps", "rope_theta" }) do
    cfg[k] = c[k]
  end
  -- the later families' fields: absent means zero, the behaviour of the families before them
  for _, k in ipairs({ "rope_type", "rope_factor", "rope_low_freq_factor", "rope_high_freq_factor",
                       "rope_original_ctx", "embed_scale", "block_norms", "qk_norm", "attn_scale", "attn_softcap",
                       "final_softcap", "sliding_window", "sliding_period", "shared_unembed" }) do
    cfg[k] = c[k] or 0
  end
  cfg.parallel_attn_mlp = c.parallel_attn_mlp and 1 or 0
  return cfg
end

-- A tied model's unembedding is its embedding matrix, one copy (LayerNorm models too: finalize
-- centres embedding rows as they are read, not the table), unless the load is for training (the
-- two get separate gradients). Only f32 weights share; stored ones bind the tensor twice.
local function mark_shared_unembed(c, opts)
  local shares = c.tied and not (opts and opts.finalize == false)
  c.shared_unembed = shares and 1 or 0
end

-- Which weights a load keeps: opts.weights "f32" (converted whole at load), "stored" (kept in
-- the checkpoint's dtype, memory-mapped, converted per layer at each use) or "auto" (default:
-- f32 when its copy fits opts.memory, a budget in GiB, else stored). Unfinalized loads (training)
-- default to f32. Returns the mode and why.
local function weights_mode(c, opts, where)
  local want = opts and opts.weights or "auto"
  if want ~= "auto" and want ~= "f32" and want ~= "stored" then
    fail("%s: weights must be 'auto', 'f32' or 'stored' (got %s)", where, tostring(want))
  end
  local memory = require("eapig.memory")
  local budget = memory.budget(opts and opts.memory)
  if want == "f32" then
    -- refuse before allocating: an f32 copy larger than the budget would only end in swapping
    local f32 = tonumber(C.eapig_weights_f32_bytes(config_of(c)))
    if f32 > budget then
      fail("%s: f32 weights need %s, more than the memory budget (%s): use weights 'stored' (--weights stored) "
        .. "or a larger budget (--memory)", where, memory.format(f32), memory.format(budget))
    end
  end
  if want ~= "auto" then return want, "asked for" end
  if opts and opts.finalize == false then return "f32", "training and raw weights need f32" end
  return memory.choose_weights(config_of(c), budget)
end

local function new_model(c, where, mode)
  local cfg = config_of(c)
  local new = mode == "stored" and C.eapig_model_new_stored or C.eapig_model_new
  return ffi.gc(core.check_ptr(new(cfg), where), C.eapig_model_free)
end

local function info_of(family, c)
  return {
    family = family, n_layers = c.n_layers, n_heads = c.n_heads, n_kv_heads = c.n_kv_heads,
    d_model = c.d_model, d_head = c.d_head, d_mlp = c.d_mlp, vocab = c.vocab, n_ctx = c.n_ctx,
    parallel_attn_mlp = c.parallel_attn_mlp, norm = NORMS[c.norm], act = ACTS[c.act], pos = POS[c.pos],
    rotary_dim = c.rotary_dim, rope_theta = c.rope_theta, norm_eps = c.norm_eps, tied = c.tied,
  }
end

-- weights = {mode =, why =, dtype = the checkpoint's dtype}
local function finish(m, c, family, path, folder, opts, weights)
  if not (opts and opts.finalize == false) then core.check(C.eapig_model_finalize(m), path) end
  local info = info_of(family, c)
  info.weights, info.weights_why, info.weights_dtype = weights.mode, weights.why, weights.dtype
  -- config: the family table's fields (formats/families.lua), what formats/save.lua writes back
  return { handle = m, info = info, path = path, folder = folder, config = c }
end

local files = require("eapig.formats.files")
local file_exists = files.exists

-- The tensors of a folder: the sharded index when there is one, else model.safetensors.
local function open_weights(folder)
  local index = folder .. "/model.safetensors.index.json"
  if file_exists(index) then return safetensors.open_index(index) end
  local single = folder .. "/model.safetensors"
  if file_exists(single) then return safetensors.open(single) end
  if file_exists(folder .. "/pytorch_model.bin") then
    fail("%s: only safetensors checkpoints are read (found pytorch_model.bin; convert it)", folder)
  end
  fail("%s: missing model.safetensors (or model.safetensors.index.json)", folder)
end

-- Builds a model from config.json fields (json, read from cfg_path) and the tensor source that
-- open_src returns, opened only once the config is known to be good. mode_of(c) picks how the
-- weights are kept (weights_mode).
-- config.json fields (json, read from cfg_path) -> the family table, the family's fields, model_type.
local function read_config(json, cfg_path)
  local get = config_reader(cfg_path, json)
  local model_type = get.str("model_type")
  local fam = families.get(model_type)
  if not fam then
    fail("%s: field 'model_type': unknown model_type '%s' (known: %s)", cfg_path, model_type, families.KNOWN)
  end
  return fam, fam.config(get, model_type), model_type
end

-- The core's configuration (eapig_config) of a raw (unfinalized, unshared) model that a
-- config.json table describes, checked as eapig.load checks it (where: the name errors give).
-- eapig.train builds its models through it, from the table formats/families.lua writes.
function load.config(json, where)
  local _, c = read_config(json, where)
  return config_of(c)
end

local function load_family(json, cfg_path, open_src, path, folder, opts, mode_of)
  local fam, c, model_type = read_config(json, cfg_path)
  mark_shared_unembed(c, opts)
  local mode, why = mode_of(c)
  local m = new_model(c, cfg_path, mode)
  local src = open_src()
  -- The model keeps its own reference to the mappings it reads stored weights from. A source may
  -- adjust the new model first (prepare_model: a GGUF file's per-frequency RoPE factors).
  local ok, dtype = pcall(function()
    if src.prepare_model then src:prepare_model(m) end
    return fill_family(src, fam, c, C.eapig_model_weights(m), mode == "stored" and m or nil)
  end)
  src:close()
  if not ok then error(dtype, 0) end
  return finish(m, c, model_type, path, folder, opts, { mode = mode, why = why, dtype = dtype })
end

local function load_hf(folder, opts)
  local cfg_path = folder .. "/config.json"
  local json = safetensors.read_json(cfg_path)
  return load_family(json, cfg_path, function() return open_weights(folder) end, folder, folder, opts,
                     function(c) return weights_mode(c, opts, folder) end)
end

-- GGUF: the metadata as config.json fields and the tensors under their Hugging Face names
-- (lua/eapig/formats/gguf.lua), so the family tables above describe GGUF models too. GGUF tensors
-- (Q8_0 among them) are converted to f32 at load: weights = "stored" is refused.
local function load_gguf(path, opts)
  local function mode_of(c)
    local mode = weights_mode(c, opts, path) -- checks the option's value
    if opts and opts.weights == "stored" then
      fail("%s: weights = 'stored' is not available for GGUF files (their tensors are converted to f32 at load)", path)
    end
    if mode == "stored" then return "f32", "GGUF tensors are converted to f32 at load" end
    return mode, "GGUF tensors are converted to f32 at load"
  end
  local json, src = require("eapig.formats.gguf").checkpoint(path)
  local ok, loaded = pcall(load_family, json, path .. " (GGUF metadata)", function() return src end, path,
                           dirname(path), opts, mode_of)
  if not ok then
    src:close()
    error(loaded, 0)
  end
  return loaded
end

---------------------------------------------------------------------------------------------
-- llama2.c checkpoints (version 0 export, as read by run.c)

local LLAMA2C_HEADER = { "dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len" }
local LLAMA2C_MAGIC = 0x616b3432 -- "ak42": the later export versions, a different layout

-- The tensors in file order: name, rows, cols, slot (nil: skipped), per layer, RoPE heads to permute.
local LLAMA2C_TENSORS = {
  { "token_embedding_table", "V", "D", "wte" },
  { "rms_att_weight", "D", 1, "ln1_w", layer = true },
  { "wq", "QD", "D", "wq", layer = true, permute = "H" },
  { "wk", "KVD", "D", "wk", layer = true, permute = "KV" },
  { "wv", "KVD", "D", "wv", layer = true },
  { "wo", "D", "QD", "wo", layer = true },
  { "rms_ffn_weight", "D", 1, "ln2_w", layer = true },
  { "w1", "F", "D", "w_gate", layer = true },
  { "w2", "D", "F", "w_out", layer = true },
  { "w3", "F", "D", "w_in", layer = true },
  { "rms_final_weight", "D", 1, "lnf_w" },
  { "freq_cis_real", "C", "HALF" },
  { "freq_cis_imag", "C", "HALF" },
  { "wcls", "V", "D", "w_unembed", untied = true },
}

local function llama2c_config(path, file)
  local size = tonumber(C.eapig_file_size(file))
  if size < 28 then fail("%s: truncated: %d bytes, the llama2.c header needs 28", path, size) end
  local raw = ffi.new("int32_t[7]")
  core.check(C.eapig_file_read(file, 0, 28, raw), path)
  if raw[0] == LLAMA2C_MAGIC then
    fail("%s: header: llama2.c export version >= 1 ('ak42') is not supported; export with --version 0", path)
  end
  local h = {}
  for i, name in ipairs(LLAMA2C_HEADER) do
    h[name] = raw[i - 1]
    if name ~= "vocab_size" and h[name] <= 0 then
      fail("%s: header field '%s' is %d, must be positive", path, name, h[name])
    end
  end
  if h.vocab_size == 0 then fail("%s: header field 'vocab_size' is 0", path) end
  local function multiple(a, b)
    if h[a] % h[b] ~= 0 then fail("%s: header field '%s' (%d) is not a multiple of '%s' (%d)", path, a, h[a], b, h[b]) end
  end
  multiple("dim", "n_heads")
  multiple("n_heads", "n_kv_heads")
  local d_head = h.dim / h.n_heads
  if d_head % 2 ~= 0 then fail("%s: header: head size %d (dim / n_heads) must be even for RoPE", path, d_head) end
  return {
    n_layers = h.n_layers, n_heads = h.n_heads, n_kv_heads = h.n_kv_heads, d_model = h.dim, d_head = d_head,
    d_mlp = h.hidden_dim, vocab = math.abs(h.vocab_size), n_ctx = h.seq_len, norm = C.EAPIG_NORM_RMSNORM,
    act = C.EAPIG_ACT_SILU_GATED, pos = C.EAPIG_POS_ROPE, rotary_dim = d_head, rope_theta = 10000,
    norm_eps = 1e-5, parallel_attn_mlp = false, tied = h.vocab_size > 0, flags = {},
  }, size
end

-- Where every tensor lies, checked against the file size before anything is allocated, so a
-- corrupt header is an error naming the tensor that does not fit rather than a huge allocation.
local function llama2c_plan(path, c, dims, size)
  local plan, offset = {}, 28
  for _, t in ipairs(LLAMA2C_TENSORS) do
    if not (t.untied and c.tied) then
      local rows, cols = dims[t[2]], dims[t[3]] or t[3]
      local bytes = rows * cols * 4
      for l = 0, (t.layer and c.n_layers or 1) - 1 do
        if offset + bytes > size then
          fail("%s: truncated: tensor '%s' needs bytes [%d, %d), the file has %d", path, t[1], offset,
               offset + bytes, size)
        end
        plan[#plan + 1] = { t = t, layer = l, rows = rows, cols = cols, b = offset, e = offset + bytes }
        offset = offset + bytes
      end
    end
  end
  if offset ~= size then
    fail("%s: %d bytes after the last tensor: the header does not describe this file", path, size - offset)
  end
  return plan
end

local function load_llama2c(path, opts)
  local file = ffi.gc(core.check_ptr(C.eapig_file_open(path), "llama2.c checkpoint"), C.eapig_file_close)
  local c, size = llama2c_config(path, file)
  local dims = dims_of(c)
  dims.KV, dims.HALF = c.n_kv_heads, c.d_head / 2
  local plan = llama2c_plan(path, c, dims, size)
  mark_shared_unembed(c, opts)
  local mode, why = weights_mode(c, opts, path)
  local m = new_model(c, path, mode)
  local w = C.eapig_model_weights(m)
  local wte_plan
  for _, p in ipairs(plan) do
    local t = p.t
    if t[4] == "wte" then wte_plan = p end
    if t[4] and mode == "stored" and MATS[t[4]] then
      -- llama2.c rotates adjacent pairs; the core rotates halves: a row map reorders q and k.
      local row_map
      if t.permute then
        local Dh, half = c.d_head, c.d_head / 2
        row_map = ffi.new("int32_t[?]", p.rows)
        for h = 0, dims[t.permute] - 1 do
          for i = 0, half - 1 do
            row_map[h * Dh + i], row_map[h * Dh + half + i] = h * Dh + 2 * i, h * Dh + 2 * i + 1
          end
        end
      end
      core.check_file(C.eapig_model_bind(m, t.layer and p.layer or -1, MATS[t[4]], file, p.b, p.e,
                                         C.EAPIG_DTYPE_F32, p.rows, 0, row_map), path,
                      string.format("%s: tensor '%s'%s", path, t[1], t.layer and (" of layer " .. p.layer) or ""))
    elseif t[4] then
      local dst = t.layer and w.layers[p.layer][t[4]] or w[t[4]]
      core.check_file(C.eapig_file_tensor(file, p.b, p.e, C.EAPIG_DTYPE_F32, dst, p.rows, p.cols, 0), path,
                      string.format("%s: tensor '%s'%s", path, t[1], t.layer and (" of layer " .. p.layer) or ""))
      -- llama2.c rotates adjacent pairs; the core rotates halves: reorder q and k rows once.
      if t.permute then core.check(C.eapig_rope_permute_rows(dst, dims[t.permute], c.d_head, p.cols), path) end
    end
  end
  if c.tied and mode == "stored" then
    core.check(C.eapig_model_bind(m, -1, C.EAPIG_MAT_UNEMBED, file, wte_plan.b, wte_plan.e, C.EAPIG_DTYPE_F32,
                                  wte_plan.rows, 0, nil), path)
  elseif c.tied and c.shared_unembed == 0 then
    ffi.copy(w.w_unembed, w.wte, dims.V * dims.D * ffi.sizeof("float"))
  end
  C.eapig_file_close(ffi.gc(file, nil))
  return finish(m, c, "llama", path, dirname(path), opts, { mode = mode, why = why, dtype = "F32" })
end

---------------------------------------------------------------------------------------------

-- Loads a Hugging Face folder (or a file inside one), a GGUF file or a llama2.c .bin checkpoint.
-- opts.finalize = false skips eapig_model_finalize (tests compare the raw weights; training).
-- opts.weights = "auto" | "f32" | "stored" and opts.memory (GiB): see weights_mode.
function load.load(path, opts)
  if type(path) ~= "string" or path == "" then fail("eapig.load: path must be a non-empty string") end
  path = path:gsub("(.)/+$", "%1")
  if path:match("%.safetensors$") or path:match("%.json$") then path = dirname(path) end
  if file_exists(path .. "/config.json") then return load_hf(path, opts) end
  local kind = files.kind(path)
  if kind == "missing" then fail("%s: cannot open: no such file or folder", path) end
  if kind == "dir" then fail("%s: a folder without config.json (not a Hugging Face checkpoint)", path) end
  if kind ~= "file" then fail("%s: not a regular file, so not a GGUF or llama2.c checkpoint", path) end
  if require("eapig.formats.gguf").is_gguf(path) then return load_gguf(path, opts) end
  return load_llama2c(path, opts)
end

return load
