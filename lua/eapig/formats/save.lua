-- eapig.formats.save: writes Hugging Face checkpoint folders (config.json, model.safetensors or
-- shards with their index, and a character-level tokenizer.json), the inverse of
-- formats/load.lua, driven by the same family tables (formats/families.lua): a tensor the loader
-- reads into a weight slot is written from that slot, with the name, layout and config keys the
-- loader expects. eapig.apps.train saves trained models with it; eapig.testing writes random
-- checkpoints with it.
--
--   save.folder(dir, "llama", c, { weights = C.eapig_model_weights(handle) })
--
-- c: the family table's config fields (see formats/families.lua): n_layers, n_heads,
-- n_kv_heads, d_model, d_head, d_mlp, vocab, n_ctx, norm_eps, rope_theta, tied, flags, and the
-- family's own extras.
local cjson = require("cjson")
local families = require("eapig.formats.families")
local files = require("eapig.formats.files")
local json = require("eapig.formats.json")
local safetensors = require("eapig.formats.safetensors")

local floor, ceil, min = math.floor, math.ceil, math.min
local fmt = string.format

local save = {}

local TORCH_DTYPE = { F32 = "float32", F16 = "float16", BF16 = "bfloat16" }

-- Norm gains stored as they are (scale w, around 1); a plus_one norm is stored as w - 1.
local NORM_GAINS = { ln1_w = true, ln2_w = true, lnf_w = true, attn_post_w = true, mlp_post_w = true,
                     q_norm_w = true, k_norm_w = true }
-- Written before the layers (transformers' order); the other global tensors come after them.
local EMBEDDINGS = { wte = true, wpe = true }

local function family_of(model_type, who)
  local fam = families.get(model_type)
  if not fam then
    error(fmt("%s: unknown family '%s' (known: %s)", who, tostring(model_type), families.KNOWN), 3)
  end
  return fam
end

local function plan_entry(e, name, layer, dims)
  local slots = type(e[1]) == "string" and { e[1] } or e[1]
  local rows, cols = dims[e[3]], e[4] and dims[e[4]] or nil
  local R = #slots * rows
  local shape
  if not cols then
    shape = { R }
  elseif e.T then
    shape = { cols, R }
  else
    shape = { R, cols }
  end
  return { name = name, shape = shape, slots = slots, layer = layer, rows = rows, cols = cols or 1, T = e.T,
           groups = e.groups and dims[e.groups] or 1, plus_one = e.plus_one,
           norm = #slots == 1 and NORM_GAINS[slots[1]] and not e.plus_one or false }
end

-- The tensors of a checkpoint of model_type with config c, in file order (embeddings, each
-- layer, the other global tensors, the unembedding when untied): a list of { name, shape, slots
-- (the core's weight slots it holds), layer (0-based; nil: global), rows, cols (of each slot),
-- T, groups, plus_one, norm (a norm gain stored as is: around 1) }. prefix: the tensor-name
-- prefix (default: the family's save_prefix, or its first).
function save.tensors(model_type, c, prefix)
  local fam = family_of(model_type, "eapig.save.tensors")
  prefix = prefix or fam.save_prefix or fam.prefixes[1]
  local dims = families.dims(c)
  local flags = c.flags or {}
  local list = {}
  for _, e in ipairs(fam.global) do
    if EMBEDDINGS[e[1]] then list[#list + 1] = plan_entry(e, prefix .. e[2], nil, dims) end
  end
  for l = 0, c.n_layers - 1 do
    local lp = prefix .. fam.layer_prefix:format(l)
    for _, e in ipairs(fam.layer) do
      if not e.when or flags[e.when] then list[#list + 1] = plan_entry(e, lp .. e[2], l, dims) end
    end
  end
  for _, e in ipairs(fam.global) do
    if not EMBEDDINGS[e[1]] then list[#list + 1] = plan_entry(e, prefix .. e[2], nil, dims) end
  end
  if not c.tied then list[#list + 1] = plan_entry({ "w_unembed", fam.unembed, "V", "D" }, fam.unembed, nil, dims) end
  return list
end

-- A stored tensor's elements in file order, gathered from the core's matrices ptrs (each
-- (rows, cols), stacked by rows within each of `groups` row groups; T: the stack stored
-- transposed), minus 1 for a plus_one norm. Streams: each call fills the next n elements.
local function gather(ptrs, rows, cols, groups, T, minus_one)
  local parts = #ptrs
  local R, per = parts * rows, rows / groups
  local e = 0
  return function(buf, n)
    for i = 0, n - 1 do
      local r, col
      if T then r, col = e % R, floor(e / R) else r, col = floor(e / cols), e % cols end
      local g, within = floor(r / (parts * per)), r % (parts * per)
      local p, k = floor(within / per), within % per
      local v = ptrs[p + 1][(g * per + k) * cols + col]
      buf[i] = minus_one and v - 1 or v
      e = e + 1
    end
  end
end

-- The data of tensor t (from save.tensors) taken from the core's weights w (eapig_weights *).
function save.weight_data(t, w)
  local target = t.layer and w.layers[t.layer] or w
  local ptrs = {}
  for i, slot in ipairs(t.slots) do ptrs[i] = target[slot] end
  if #ptrs == 1 and not t.T and not t.plus_one then return ptrs[1] end
  return gather(ptrs, t.rows, t.cols, t.groups, t.T, t.plus_one)
end

-- Writes tensors (safetensors.write's list) as model.safetensors, or as `shards` files of
-- consecutive tensors named as transformers names them, with model.safetensors.index.json.
local function write_weights(dir, tensors, meta, shards)
  if shards <= 1 then
    safetensors.write(dir .. "/model.safetensors", tensors, meta)
    return
  end
  local map, total, per = {}, 0, ceil(#tensors / shards)
  for s = 1, shards do
    local file = fmt("model-%05d-of-%05d.safetensors", s, shards)
    local part = {}
    for i = (s - 1) * per + 1, min(s * per, #tensors) do
      part[#part + 1] = tensors[i]
      map[tensors[i].name] = file
    end
    total = total + safetensors.write(dir .. "/" .. file, part, meta)
  end
  files.write_atomic(dir .. "/model.safetensors.index.json", "eapig.save",
    json.encode({ metadata = { total_size = total }, weight_map = map }, { indent = "  " }) .. "\n")
end

-- Writes a Hugging Face folder for a model of model_type with config c: config.json (the
-- family's write_config, plus torch_dtype and opts.config's extra fields) and the weights.
-- opts: weights (eapig_weights *: the core's raw, not finalized, weights) or data (function(t)
-- returning the data of tensor t from save.tensors, as safetensors.write takes it); prefix;
-- dtype ("F32", "F16" or "BF16"); shards (1); metadata (extra string fields for the safetensors
-- header; "format" is "pt"); config; tokenizer (a list of pieces: save.tokenizer). Returns dir.
function save.folder(dir, model_type, c, opts)
  local who = "eapig.save.folder"
  opts = opts or {}
  local fam = family_of(model_type, who)
  local dtype = opts.dtype or "F32"
  if not TORCH_DTYPE[dtype] then error(who .. ": dtype must be F32, F16 or BF16", 2) end
  if (opts.weights == nil) == (opts.data == nil) then error(who .. ": give opts.weights or opts.data", 2) end
  local config = fam.write_config(c, model_type)
  config.torch_dtype = TORCH_DTYPE[dtype]
  for k, v in pairs(opts.config or {}) do config[k] = v end
  files.mkdir_p(dir, who)
  local tensors = save.tensors(model_type, c, opts.prefix)
  for _, t in ipairs(tensors) do
    t.dtype = dtype
    if opts.weights ~= nil then t.data = save.weight_data(t, opts.weights) else t.data = opts.data(t) end
  end
  local meta = { format = "pt" }
  for k, v in pairs(opts.metadata or {}) do meta[k] = tostring(v) end
  write_weights(dir, tensors, meta, opts.shards or 1)
  files.write_atomic(dir .. "/config.json", who, json.encode(config, { indent = "  " }) .. "\n")
  if opts.tokenizer then save.tokenizer(dir, opts.tokenizer, { n_ctx = c.n_ctx }) end
  return dir
end

-- A character-level BPE tokenizer.json (no merges: one token per character, pieces[i] is id
-- i - 1) that both eapig.tokenizer and Hugging Face tokenizers read, plus tokenizer_config.json
-- (opts.n_ctx: its model_max_length).
function save.tokenizer(dir, pieces, opts)
  opts = opts or {}
  local vocab = {}
  for i, piece in ipairs(pieces) do
    if type(piece) ~= "string" or piece == "" then error("eapig.save.tokenizer: pieces must be non-empty strings", 2) end
    if vocab[piece] then error(fmt("eapig.save.tokenizer: piece '%s' appears twice", piece), 2) end
    vocab[piece] = i - 1
  end
  local null = cjson.null
  local doc = {
    version = "1.0", truncation = null, padding = null, added_tokens = json.array({}),
    normalizer = null, pre_tokenizer = null, post_processor = null,
    -- Fuse: decoding concatenates the pieces (without a decoder Hugging Face joins them with spaces).
    decoder = { type = "Fuse" },
    -- Only fields every tokenizers release reads (byte_fallback and ignore_merges are newer,
    -- and false by default).
    model = { type = "BPE", dropout = null, unk_token = null, continuing_subword_prefix = null,
              end_of_word_suffix = null, fuse_unk = false, vocab = json.ordered(vocab, pieces),
              merges = json.array({}) },
  }
  local pretty = { indent = "  " }
  files.write_atomic(dir .. "/tokenizer.json", "eapig.save.tokenizer", json.encode(doc, pretty) .. "\n")
  files.write_atomic(dir .. "/tokenizer_config.json", "eapig.save.tokenizer", json.encode({
    tokenizer_class = "PreTrainedTokenizerFast", model_max_length = opts.n_ctx, clean_up_tokenization_spaces = false,
  }, pretty) .. "\n")
end

return save
