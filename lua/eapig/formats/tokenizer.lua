-- Tokenizers: reading tokenizer files and the Lua object over libeapig's BPE (core/tokenizer.c).
--
--   local tokenizer = require("eapig.formats.tokenizer")
--   local tok = tokenizer.load("models/gpt2")          -- a folder or a file
--   tok:encode("Hello world")                          --> {15496, 995}
--   tok:encode("Hello", {bos = true})                  --> {50256, 15496}
--   tok:decode({15496, 995})                           --> "Hello world"
--   tok:token(995), tok:id(" world")                   --> " world", 995
--
-- Formats: Hugging Face tokenizer.json with a BPE model (byte-level like GPT-2, Llama-3 and Qwen2,
-- or SentencePiece style with Metaspace / Prepend+Replace and byte_fallback like Llama-2 and
-- Mistral), GPT-2's vocab.json|encoder.json + merges.txt|vocab.bpe, llama2.c's tokenizer.bin, and
-- the tokenizer a GGUF file stores (tokenizer.ggml.model "llama" or "gpt2").
-- Anything in a tokenizer.json that would change the ids and is not supported is an error that
-- names the file and the field, never silently ignored. Two exceptions, documented here: an NFC
-- normalizer is accepted and does nothing (text is expected to be NFC already, as nearly all
-- text is), and BPE dropout is ignored (it is for training; inference never drops merges).
--
-- Text and pieces are bytes: :token(id) gives the text a token stands for (" world", not the
-- file's "Ġworld"), and :id(text) looks that text up.
local ffi = require("ffi")
local cjson = require("cjson.safe")
local core = require("eapig.core")

local C = core.C
local NULL = cjson.null

local M = {}

local Tokenizer = {}
Tokenizer.__index = Tokenizer

-- Reused out-parameters and buffers (STYLE 14): grown on demand, never shrunk.
local size_out = ffi.new("size_t[1]")
local int32_array = ffi.typeof("int32_t[?]")
local char_array = ffi.typeof("char[?]")
local id_buf, id_cap = int32_array(4096), 4096
local byte_buf, byte_cap = char_array(16384), 16384

local function fail(path, field, msg)
  error(("eapig.tokenizer: %s: %s: %s"):format(path, field, msg), 0)
end

local files = require("eapig.formats.files")
local function read_file(path) return files.read(path, "eapig.tokenizer") end
local exists, is_dir = files.exists, files.is_dir

local function dirname(path)
  return path:match("^(.*)/[^/]*$") or "."
end

local function basename(path)
  return path:match("([^/]*)$")
end

local function decode_json(path, text)
  local doc, err = cjson.decode(text)
  if doc == nil then fail(path, "JSON", err or "not valid JSON") end
  return doc
end

local function value(v) -- JSON null reads as absent
  if v == NULL then return nil end
  return v
end

local function quote(s)
  return (cjson.encode(tostring(s)))
end

-- Ids are dense in every real tokenizer: one far beyond the number of entries the file lists is a
-- typo or a forgery, and would size every per-id table (refused here, naming the field, rather
-- than failing as an allocation that blames the vocabulary size).
local function check_dense(path, field, id, entries)
  if id >= 2 * entries + 1024 then
    fail(path, field, ("id %d is far beyond the %d entries the file lists (ids must be dense)"):format(id, entries))
  end
end

local function check_id(path, field, id)
  if type(id) ~= "number" or id < 0 or id >= 2 ^ 31 - 1 or id ~= math.floor(id) then
    fail(path, field, "id must be a non-negative integer, got " .. tostring(id))
  end
  return id
end

-- ---- the tokenizer object ---------------------------------------------------------------------

local function wrap(handle, info)
  local self = setmetatable(info, Tokenizer)
  self._handle = ffi.gc(handle, C.eapig_tokenizer_free)
  self.vocab_size = tonumber(C.eapig_tokenizer_n_vocab(handle))
  self.n_merges = tonumber(C.eapig_tokenizer_n_merges(handle))
  return self
end

-- Frees the C tokenizer now rather than at garbage collection.
function Tokenizer:free()
  if self._handle ~= nil then C.eapig_tokenizer_free(ffi.gc(self._handle, nil)) end
  self._handle = nil
end

local function handle_of(self)
  local h = self._handle
  if h == nil then error("eapig.tokenizer: the tokenizer was freed", 3) end
  return h
end

-- A failed encode names the tokenizer's file: the pre-tokenizer pattern that made the core give up
-- (too much backtracking, more than linear work on this text) came from it.
local function check_encode(self, status)
  if status ~= 0 then
    local msg = ffi.string(C.eapig_last_error()):gsub("^eapig_tokenizer_encode: ", "")
    error(("eapig.tokenizer: encode: %s: %s"):format(self.path or self.name, msg), 0)
  end
end

-- encode(text, opts) -> array of ids. opts: bos, eos (default: the model's convention),
-- special (default true: added tokens written in the text become their ids).
function Tokenizer:encode(text, opts)
  if type(text) ~= "string" then
    error("eapig.tokenizer: encode: text must be a string, got " .. type(text), 2)
  end
  local h = handle_of(self)
  opts = opts or {}
  local bos, eos = self.add_bos, self.add_eos
  if opts.bos ~= nil then bos = opts.bos end
  if opts.eos ~= nil then eos = opts.eos end
  if bos and not self.bos_id then error("eapig.tokenizer: encode: bos asked for, but " .. self.name .. " has no BOS token", 2) end
  if eos and not self.eos_id then error("eapig.tokenizer: encode: eos asked for, but " .. self.name .. " has no EOS token", 2) end
  local flags = 0
  if opts.special ~= false then flags = flags + C.EAPIG_ENCODE_SPECIAL end
  if opts.reference then flags = flags + C.EAPIG_ENCODE_REFERENCE end
  if opts.whole_matches then flags = flags + C.EAPIG_ENCODE_WHOLE_MATCHES end
  -- Most text needs fewer ids than bytes; the rare text that needs more is encoded twice.
  if id_cap < #text + 16 then
    id_cap = #text + 16
    id_buf = int32_array(id_cap)
  end
  check_encode(self, C.eapig_tokenizer_encode(h, text, #text, flags, id_buf, id_cap, size_out))
  local n = tonumber(size_out[0])
  if n > id_cap then
    id_cap = n
    id_buf = int32_array(id_cap)
    check_encode(self, C.eapig_tokenizer_encode(h, text, #text, flags, id_buf, id_cap, size_out))
  end
  local out, k = {}, 0
  if bos then k = 1; out[1] = self.bos_id end
  for i = 0, n - 1 do out[k + i + 1] = id_buf[i] end
  if eos then out[k + n + 1] = self.eos_id end
  return out
end

local function decode_ids(h, ids, flags)
  local n = #ids
  if id_cap < n then
    id_cap = n
    id_buf = int32_array(id_cap)
  end
  for i = 1, n do
    local id = ids[i]
    if type(id) ~= "number" or id ~= math.floor(id) or id < -2 ^ 31 or id >= 2 ^ 31 then
      error(("eapig.tokenizer: decode: ids[%d] is not an integer id: %s"):format(i, tostring(id)), 3)
    end
    id_buf[i - 1] = id
  end
  local status = C.eapig_tokenizer_decode(h, id_buf, n, flags, byte_buf, byte_cap, size_out)
  if status ~= 0 then return nil end
  local len = tonumber(size_out[0])
  if len > byte_cap then
    byte_cap = len
    byte_buf = char_array(byte_cap)
    status = C.eapig_tokenizer_decode(h, id_buf, n, flags, byte_buf, byte_cap, size_out)
    if status ~= 0 then return nil end
  end
  return ffi.string(byte_buf, len)
end

-- decode(ids, opts) -> string. opts: skip_special (leave out BOS, EOS and other control tokens),
-- keep_prefix (keep the space a SentencePiece-style tokenizer put before the text).
function Tokenizer:decode(ids, opts)
  if type(ids) ~= "table" then error("eapig.tokenizer: decode: ids must be an array, got " .. type(ids), 2) end
  opts = opts or {}
  local flags = 0
  if opts.skip_special then flags = flags + C.EAPIG_DECODE_SKIP_SPECIAL end
  if opts.keep_prefix then flags = flags + C.EAPIG_DECODE_KEEP_PREFIX end
  local s = decode_ids(handle_of(self), ids, flags)
  if not s then error("eapig.tokenizer: decode: " .. ffi.string(C.eapig_last_error()), 2) end
  return s
end

-- The text one token stands for (with its leading space), or nil for an id with no token.
function Tokenizer:token(id)
  if type(id) ~= "number" or id ~= math.floor(id) or id < 0 or id >= self.vocab_size then return nil end
  return decode_ids(handle_of(self), { id }, C.EAPIG_DECODE_KEEP_PREFIX)
end

-- The id of the token whose text is `text` (" world", "<|endoftext|>", "\n"), or nil.
function Tokenizer:id(text)
  if type(text) ~= "string" or #text == 0 then return nil end
  local id = C.eapig_tokenizer_find(handle_of(self), text, #text)
  if id < 0 then return nil end
  return tonumber(id)
end

function Tokenizer:__tostring()
  local bos = self.bos_id and (" bos=" .. self.bos_id .. (self.add_bos and " (added)" or "")) or ""
  local eos = self.eos_id and (" eos=" .. self.eos_id) or ""
  return ("[eapig.Tokenizer %s: %d tokens, %d merges, %s%s%s]"):format(
    self.name, self.vocab_size, self.n_merges, self.style, bos, eos)
end

-- ---- building a tokenizer from pieces and merges -----------------------------------------------

local function new_handle(path, cfg)
  local c = ffi.new("eapig_tokenizer_config")
  c.n_vocab = cfg.n_vocab
  c.symbols = cfg.symbols
  c.split = cfg.split
  c.pattern = cfg.pattern -- ffi converts the Lua string; C copies it before returning
  c.space = cfg.space
  c.prefix = cfg.prefix or C.EAPIG_TOK_PREFIX_NONE
  c.byte_fallback = cfg.byte_fallback and 1 or 0
  c.ignore_merges = cfg.ignore_merges and 1 or 0
  c.fuse_unk = cfg.fuse_unk and 1 or 0
  c.unk_id = cfg.unk_id or -1
  c.strip_prefix = cfg.strip_prefix and 1 or 0
  local h = C.eapig_tokenizer_new(c)
  if h == nil then fail(path, cfg.field or "pre_tokenizer", ffi.string(C.eapig_last_error())) end
  return ffi.gc(h, C.eapig_tokenizer_free)
end

local function add_vocab(path, h, vocab, field)
  for piece, id in pairs(vocab) do
    if type(piece) ~= "string" or #piece == 0 then fail(path, field, "expected an object of non-empty piece -> id") end
    if C.eapig_tokenizer_set_token(h, id, piece, #piece, 0) ~= 0 then
      fail(path, field .. "[" .. quote(piece) .. "]", ffi.string(C.eapig_last_error()))
    end
  end
end

-- One merge written "a b" (split at the first space) or as a pair {a, b}.
local function add_merge(path, h, m, field)
  if type(m) == "string" then
    local sp = m:find(" ", 1, true)
    if not sp or sp == 1 or sp == #m or m:find(" ", sp + 1, true) then
      fail(path, field, "expected two pieces separated by one space, got " .. quote(m))
    end
    -- Pointers into the one string avoid making two new strings per merge.
    local p = ffi.cast("const char *", m)
    if C.eapig_tokenizer_add_merge(h, p, sp - 1, p + sp, #m - sp) ~= 0 then
      fail(path, field, ffi.string(C.eapig_last_error()))
    end
  elseif type(m) == "table" and type(m[1]) == "string" and type(m[2]) == "string" and m[3] == nil then
    if C.eapig_tokenizer_add_merge(h, m[1], #m[1], m[2], #m[2]) ~= 0 then
      fail(path, field, ffi.string(C.eapig_last_error()))
    end
  else
    fail(path, field, "a merge is a string \"a b\" or a pair [\"a\", \"b\"]")
  end
end

local BOS_NAMES = { "<|begin_of_text|>", "<s>", "<bos>", "<|startoftext|>", "<|endoftext|>" }
local EOS_NAMES = { "<|end_of_text|>", "</s>", "<eos>", "<|endoftext|>" }

local function first_known(tok, names)
  for _, name in ipairs(names) do
    local id = tok:id(name)
    if id then return id end
  end
end

-- tokenizer_config.json (optional, beside the tokenizer) may state the BOS convention.
local function read_tokenizer_config(dir)
  local path = dir .. "/tokenizer_config.json"
  if not exists(path) then return nil end
  local doc = decode_json(path, read_file(path))
  if type(doc) ~= "table" then fail(path, "JSON", "expected an object") end
  return doc, path
end

local function apply_tokenizer_config(tok, conf, conf_path)
  if not conf then return end
  local function token_id(field)
    local v = value(conf[field])
    if type(v) == "table" then v = value(v.content) end
    if v == nil then return nil end
    if type(v) ~= "string" then fail(conf_path, field, "expected a string") end
    local id = tok:id(v)
    if not id then fail(conf_path, field, quote(v) .. " is not a token") end
    return id
  end
  tok.bos_id = token_id("bos_token") or tok.bos_id
  tok.eos_id = token_id("eos_token") or tok.eos_id
  local add_bos, add_eos = value(conf.add_bos_token), value(conf.add_eos_token)
  if add_bos ~= nil then
    if type(add_bos) ~= "boolean" then fail(conf_path, "add_bos_token", "expected true or false") end
    tok.add_bos = add_bos
  end
  if add_eos ~= nil then
    if type(add_eos) ~= "boolean" then fail(conf_path, "add_eos_token", "expected true or false") end
    tok.add_eos = add_eos
  end
  if tok.add_bos and not tok.bos_id then fail(conf_path, "add_bos_token", "true, but there is no BOS token") end
  if tok.add_eos and not tok.eos_id then fail(conf_path, "add_eos_token", "true, but there is no EOS token") end
end

-- ---- tokenizer.json ----------------------------------------------------------------------------


-- Normalizers: NFC (accepted, see the top), and SentencePiece's Prepend("▁") + Replace(" " -> "▁").
local function parse_normalizer(path, n, field, out)
  n = value(n)
  if n == nil then return out end
  if type(n) ~= "table" then fail(path, field, "expected an object") end
  local t = value(n.type)
  if t == "Sequence" then
    local list = value(n.normalizers)
    if type(list) ~= "table" then fail(path, field .. ".normalizers", "expected an array") end
    for i, sub in ipairs(list) do parse_normalizer(path, sub, field .. ".normalizers[" .. i .. "]", out) end
  elseif t == "NFC" then
    return out
  elseif t == "Prepend" then
    local p = value(n.prepend)
    if type(p) ~= "string" or p == "" then fail(path, field .. ".prepend", "expected a non-empty string") end
    out.prepend = p
  elseif t == "Replace" then
    local pat, content = value(n.pattern), value(n.content)
    local from = type(pat) == "table" and value(pat.String)
    if from ~= " " or type(content) ~= "string" or content == "" then
      fail(path, field, "only Replace of the string \" \" by a meta symbol is supported")
    end
    out.replace = content
  else
    fail(path, field .. ".type", ("normalizer %s is not supported"):format(quote(t)))
  end
  return out
end

local function split_regex(path, field, pat)
  pat = value(pat)
  if type(pat) ~= "table" then fail(path, field, "expected {\"Regex\": ...} or {\"String\": ...}") end
  local re, s = value(pat.Regex), value(pat.String)
  if type(re) == "string" and re ~= "" then return re end
  if type(s) == "string" and s ~= "" then return "\\Q" .. s:gsub("\\E", "\\E\\\\E\\Q") .. "\\E" end
  fail(path, field, "expected a non-empty Regex or String")
end

local function prepend_scheme(path, field, p)
  local scheme = value(p.prepend_scheme)
  if scheme == nil then
    local add = value(p.add_prefix_space)
    if add == nil then scheme = "always" else scheme = add and "always" or "never" end
  end
  if scheme == "always" then return C.EAPIG_TOK_PREFIX_MISSING end
  if scheme == "first" then return C.EAPIG_TOK_PREFIX_FIRST end
  if scheme == "never" then return C.EAPIG_TOK_PREFIX_NONE end
  fail(path, field .. ".prepend_scheme", "expected always, first or never, got " .. quote(scheme))
end

-- Pre-tokenizers: ByteLevel, Metaspace, Split (Isolated), and a Sequence of them with at most one
-- pattern, which is what GPT-2, Llama-3, Qwen2, Llama-2 and Mistral use.
local function parse_pre_tokenizer(path, p, field, out, norm)
  p = value(p)
  if p == nil then return out end
  if type(p) ~= "table" then fail(path, field, "expected an object") end
  local t = value(p.type)
  local function set_split(kind, pattern)
    if out.split then fail(path, field, "more than one splitting step is not supported") end
    out.split, out.pattern = kind, pattern
  end
  if t == "Sequence" then
    local list = value(p.pretokenizers)
    if type(list) ~= "table" then fail(path, field .. ".pretokenizers", "expected an array") end
    for i, sub in ipairs(list) do
      out.after_split = out.split ~= nil
      parse_pre_tokenizer(path, sub, field .. ".pretokenizers[" .. i .. "]", out, norm)
    end
  elseif t == "ByteLevel" then
    out.byte_level = true
    if value(p.add_prefix_space) then
      -- HF adds the space to every word made by an earlier Split; only the whole text is supported.
      if out.after_split then fail(path, field .. ".add_prefix_space", "true after a Split is not supported") end
      out.prefix = C.EAPIG_TOK_PREFIX_MISSING
    end
    if value(p.use_regex) ~= false then set_split(C.EAPIG_TOK_SPLIT_GPT2, nil) end
  elseif t == "Metaspace" then
    local r = value(p.replacement)
    if type(r) ~= "string" or r == "" then fail(path, field .. ".replacement", "expected a string") end
    out.space = r
    out.prefix = prepend_scheme(path, field, p)
    if value(p.split) ~= false then set_split(C.EAPIG_TOK_SPLIT_METASPACE, nil) end
  elseif t == "Split" and norm.replace and type(value(p.pattern)) == "table" and value(p.pattern.String) == " " then
    -- Gemma: splitting on " " after the normalizer turned every space into the meta symbol
    -- finds nothing, whatever the behavior.
    return out
  elseif t == "Split" then
    local behavior = value(p.behavior)
    if behavior ~= "Isolated" then
      fail(path, field .. ".behavior", ("%s is not supported (only Isolated)"):format(quote(behavior)))
    end
    if value(p.invert) then fail(path, field .. ".invert", "true is not supported") end
    set_split(C.EAPIG_TOK_SPLIT_REGEX, split_regex(path, field .. ".pattern", p.pattern))
  else
    fail(path, field .. ".type", ("pre-tokenizer %s is not supported"):format(quote(t)))
  end
  return out
end

-- Decoders only decide whether decoding drops the prefix space (and check the file is sane).
local function parse_decoder(path, d, field, out)
  d = value(d)
  if d == nil then return out end
  if type(d) ~= "table" then fail(path, field, "expected an object") end
  local t = value(d.type)
  if t == "Sequence" then
    local list = value(d.decoders)
    if type(list) ~= "table" then fail(path, field .. ".decoders", "expected an array") end
    for i, sub in ipairs(list) do parse_decoder(path, sub, field .. ".decoders[" .. i .. "]", out) end
  elseif t == "Metaspace" then
    out.strip = prepend_scheme(path, field, d) ~= C.EAPIG_TOK_PREFIX_NONE
  elseif t == "Strip" then
    if value(d.content) == " " and (tonumber(value(d.start)) or 0) > 0 then out.strip = true end
  elseif t == "ByteLevel" or t == "ByteFallback" or t == "Fuse" or t == "Replace" then
    return out
  else
    fail(path, field .. ".type", ("decoder %s is not supported"):format(quote(t)))
  end
  return out
end

-- BOS/EOS from the post-processor: a template "<s> $A" adds BOS, "$A </s>" adds EOS.
local function parse_post_processor(path, p, field, out)
  p = value(p)
  if p == nil then return out end
  if type(p) ~= "table" then fail(path, field, "expected an object") end
  local t = value(p.type)
  if t == "Sequence" then
    local list = value(p.processors)
    if type(list) ~= "table" then fail(path, field .. ".processors", "expected an array") end
    for i, sub in ipairs(list) do parse_post_processor(path, sub, field .. ".processors[" .. i .. "]", out) end
  elseif t == "TemplateProcessing" then
    local single = value(p.single)
    if type(single) ~= "table" then fail(path, field .. ".single", "expected an array") end
    local specials = value(p.special_tokens) or {}
    local seen_a = false
    for i, item in ipairs(single) do
      local sp = type(item) == "table" and value(item.SpecialToken)
      if type(item) == "table" and value(item.Sequence) then
        seen_a = true
      elseif type(sp) == "table" and type(value(sp.id)) == "string" then
        local name = sp.id
        local entry = value(specials[name])
        local ids = type(entry) == "table" and value(entry.ids)
        local id = type(ids) == "table" and ids[1] or nil
        if id ~= nil then check_id(path, field .. ".special_tokens[" .. quote(name) .. "].ids[1]", id) end
        local which = seen_a and "eos" or "bos"
        out[which] = { name = name, id = id }
      else
        fail(path, field .. ".single[" .. i .. "]", "expected SpecialToken or Sequence")
      end
    end
  elseif t == "RobertaProcessing" or t == "BertProcessing" then
    local cls, sep = value(p.cls), value(p.sep)
    if type(cls) ~= "table" or type(sep) ~= "table" then fail(path, field, "expected cls and sep pairs") end
    out.bos = { name = cls[1], id = check_id(path, field .. ".cls[2]", cls[2]) }
    out.eos = { name = sep[1], id = check_id(path, field .. ".sep[2]", sep[2]) }
  elseif t == "ByteLevel" then
    return out
  else
    fail(path, field .. ".type", ("post-processor %s is not supported"):format(quote(t)))
  end
  return out
end

local function load_hf(path, opts)
  local doc = decode_json(path, read_file(path))
  if type(doc) ~= "table" then fail(path, "JSON", "expected an object") end
  local model = value(doc.model)
  if model == nil then fail(path, "model", "missing") end
  if type(model) ~= "table" then fail(path, "model", "expected an object") end
  local mtype = value(model.type)
  if mtype == nil and value(model.merges) ~= nil then mtype = "BPE" end
  if mtype ~= "BPE" then
    fail(path, "model.type", ("unknown type %s (only BPE is supported)"):format(mtype and quote(mtype) or "(missing)"))
  end
  local vocab = value(model.vocab)
  if type(vocab) ~= "table" then fail(path, "model.vocab", "missing or not an object") end
  local merges = value(model.merges) or {}
  if type(merges) ~= "table" then fail(path, "model.merges", "expected an array") end
  for _, f in ipairs({ "continuing_subword_prefix", "end_of_word_suffix" }) do
    local v = value(model[f])
    if v ~= nil and v ~= "" then fail(path, "model." .. f, quote(v) .. " is not supported") end
  end

  -- Ids: the vocabulary and the added tokens together.
  local n_vocab, entries, top_field = 0, 0, nil
  for piece, id in pairs(vocab) do
    local field = "model.vocab[" .. quote(piece) .. "]"
    check_id(path, field, id)
    entries = entries + 1
    if id + 1 > n_vocab then n_vocab, top_field = id + 1, field end
  end
  local added = value(doc.added_tokens) or {}
  if type(added) ~= "table" then fail(path, "added_tokens", "expected an array") end
  for i, a in ipairs(added) do
    local field = "added_tokens[" .. i .. "]"
    if type(a) ~= "table" then fail(path, field, "expected an object") end
    check_id(path, field .. ".id", value(a.id))
    if type(value(a.content)) ~= "string" or a.content == "" then fail(path, field .. ".content", "expected a non-empty string") end
    entries = entries + 1
    if a.id + 1 > n_vocab then n_vocab, top_field = a.id + 1, field .. ".id" end
  end
  if n_vocab == 0 then fail(path, "model.vocab", "empty") end
  check_dense(path, top_field, n_vocab - 1, entries)

  local norm = parse_normalizer(path, doc.normalizer, "normalizer", {})
  local pre = parse_pre_tokenizer(path, doc.pre_tokenizer, "pre_tokenizer", {}, norm)
  local dec = parse_decoder(path, doc.decoder, "decoder", {})
  local post = parse_post_processor(path, doc.post_processor, "post_processor", {})

  local cfg = { n_vocab = n_vocab, field = "pre_tokenizer" }
  cfg.symbols = pre.byte_level and C.EAPIG_TOK_BYTE_LEVEL or C.EAPIG_TOK_CHARS
  cfg.split = pre.split or C.EAPIG_TOK_SPLIT_NONE
  cfg.pattern = pre.pattern
  cfg.prefix = pre.prefix
  cfg.space = pre.space
  if norm.replace or norm.prepend then
    if pre.space and norm.replace and pre.space ~= norm.replace then
      fail(path, "normalizer", "replaces spaces by " .. quote(norm.replace) .. " but the pre-tokenizer uses " .. quote(pre.space))
    end
    if norm.prepend then
      if norm.prepend ~= (norm.replace or pre.space) then
        fail(path, "normalizer", "prepends " .. quote(norm.prepend) .. ", which is not the meta symbol for spaces")
      end
      if pre.prefix and pre.prefix ~= C.EAPIG_TOK_PREFIX_NONE then
        fail(path, "normalizer", "Prepend together with a pre-tokenizer that adds a prefix is not supported")
      end
      cfg.prefix = C.EAPIG_TOK_PREFIX_ALWAYS
    end
    cfg.space = norm.replace or pre.space
    if pre.byte_level then fail(path, "normalizer", "a meta symbol for spaces with ByteLevel is not supported") end
  end
  cfg.byte_fallback = value(model.byte_fallback) == true
  cfg.ignore_merges = value(model.ignore_merges) == true
  cfg.fuse_unk = value(model.fuse_unk) == true
  cfg.strip_prefix = dec.strip and cfg.prefix ~= nil and cfg.prefix ~= C.EAPIG_TOK_PREFIX_NONE
  local unk = value(model.unk_token)
  if unk ~= nil then
    if type(unk) ~= "string" then fail(path, "model.unk_token", "expected a string") end
    cfg.unk_id = vocab[unk]
    if not cfg.unk_id then fail(path, "model.unk_token", quote(unk) .. " is not in model.vocab") end
  end

  local h = new_handle(path, cfg)
  add_vocab(path, h, vocab, "model.vocab")
  for i, m in ipairs(merges) do add_merge(path, h, m, "model.merges[" .. i .. "]") end
  for i, a in ipairs(added) do
    local flags = C.EAPIG_TOKEN_MATCH
    if value(a.special) then flags = flags + C.EAPIG_TOKEN_CONTROL end
    if C.eapig_tokenizer_set_special(h, a.id, a.content, #a.content, flags) ~= 0 then
      fail(path, "added_tokens[" .. i .. "]", ffi.string(C.eapig_last_error()))
    end
  end

  local style = pre.byte_level and "byte-level" or (cfg.byte_fallback and "sentencepiece+byte_fallback" or "sentencepiece")
  local tok = wrap(ffi.gc(h, nil), { name = basename(dirname(path)), style = style, path = path })
  for _, which in ipairs({ "bos", "eos" }) do
    local s = post[which]
    if s then
      local id = s.id or tok:id(s.name)
      if not id then fail(path, "post_processor", quote(s.name) .. " is not a token") end
      tok[which .. "_id"] = id
      tok["add_" .. which] = true
    end
  end
  tok.bos_id = tok.bos_id or first_known(tok, BOS_NAMES)
  tok.eos_id = tok.eos_id or first_known(tok, EOS_NAMES)
  tok.add_bos, tok.add_eos = tok.add_bos or false, tok.add_eos or false
  if opts.config ~= false then apply_tokenizer_config(tok, read_tokenizer_config(dirname(path))) end
  return tok
end

-- ---- GPT-2's vocab.json + merges.txt -----------------------------------------------------------

local function load_gpt2_pair(vocab_path, merges_path, opts)
  local vocab = decode_json(vocab_path, read_file(vocab_path))
  if type(vocab) ~= "table" then fail(vocab_path, "JSON", "expected an object of piece -> id") end
  local n_vocab, entries, top_field = 0, 0, nil
  for piece, id in pairs(vocab) do
    local field = "[" .. quote(piece) .. "]"
    check_id(vocab_path, field, id)
    entries = entries + 1
    if id + 1 > n_vocab then n_vocab, top_field = id + 1, field end
  end
  if n_vocab == 0 then fail(vocab_path, "JSON", "empty vocabulary") end
  check_dense(vocab_path, top_field, n_vocab - 1, entries)
  local h = new_handle(vocab_path, {
    n_vocab = n_vocab, symbols = C.EAPIG_TOK_BYTE_LEVEL, split = C.EAPIG_TOK_SPLIT_GPT2,
  })
  add_vocab(vocab_path, h, vocab, "vocabulary")
  local text = read_file(merges_path)
  local line_no = 0
  for line in (text .. "\n"):gmatch("([^\n]*)\n") do
    line_no = line_no + 1
    line = line:gsub("\r$", "")
    if line ~= "" and not (line_no == 1 and line:find("^#version")) then
      add_merge(merges_path, h, line, "line " .. line_no)
    end
  end
  local eot = "<|endoftext|>"
  local tok = wrap(ffi.gc(h, nil), { name = basename(dirname(vocab_path)), style = "byte-level", path = vocab_path })
  local eot_id = vocab[eot]
  if eot_id then
    -- GPT-2's one special token: BOS and EOS both, and written in text it is that token.
    core.check(C.eapig_tokenizer_set_special(tok._handle, eot_id, eot, #eot, C.EAPIG_TOKEN_CONTROL + C.EAPIG_TOKEN_MATCH),
      "eapig.tokenizer: " .. vocab_path)
    tok.bos_id, tok.eos_id = eot_id, eot_id
  end
  tok.add_bos, tok.add_eos = false, false
  if opts.config ~= false then apply_tokenizer_config(tok, read_tokenizer_config(dirname(vocab_path))) end
  return tok
end

-- ---- llama2.c tokenizer.bin ---------------------------------------------------------------------

local function load_llama2c(path, opts)
  local n = opts.vocab_size or 0
  if type(n) ~= "number" or n < 0 or n ~= math.floor(n) then
    error("eapig.tokenizer: load: opts.vocab_size must be a non-negative integer", 0)
  end
  local h = C.eapig_tokenizer_load_llama2c(path, n)
  if h == nil then error("eapig.tokenizer: " .. ffi.string(C.eapig_last_error()), 0) end
  local tok = wrap(h, { name = basename(path), style = "llama2.c", path = path })
  tok.bos_id, tok.eos_id = 1, 2
  tok.add_bos, tok.add_eos = true, false
  return tok
end

-- ---- the tokenizer stored in a GGUF file ----------------------------------------------------------

-- tokenizer.ggml.pre names the pre-tokenizer of a byte-level ("gpt2") vocabulary.
local GGUF_PRE = {
  ["gpt-2"] = { split = C.EAPIG_TOK_SPLIT_GPT2 }, default = { split = C.EAPIG_TOK_SPLIT_GPT2 },
  ["llama-bpe"] = { split = C.EAPIG_TOK_SPLIT_LLAMA3, ignore_merges = true },
  ["llama3"] = { split = C.EAPIG_TOK_SPLIT_LLAMA3, ignore_merges = true },
  qwen2 = { split = C.EAPIG_TOK_SPLIT_QWEN2 },
}
-- tokenizer.ggml.token_type values (llama.cpp's llama_token_type).
local GGUF_UNKNOWN, GGUF_CONTROL, GGUF_USER_DEFINED = 2, 3, 4

-- The vocabulary in a GGUF file's tokenizer.ggml.* keys: model "llama" (SentencePiece style:
-- pieces with scores, "▁" for the space, byte fallback) or "gpt2" (byte-level BPE with merges).
local function load_gguf(path)
  local g = require("eapig.formats.gguf").open(path)
  local ok, tok = pcall(function()
    local function key(name, kind)
      local v = g:get(name)
      if v ~= nil and type(v) ~= kind then fail(path, name, "expected a " .. kind) end
      return v
    end
    local model = key("tokenizer.ggml.model", "string")
    if not model then fail(path, "tokenizer.ggml.model", "missing: the file holds no tokenizer") end
    local tokens = g:array("tokenizer.ggml.tokens")
    if type(tokens) ~= "table" or #tokens == 0 then fail(path, "tokenizer.ggml.tokens", "missing or empty") end
    local types = g:array("tokenizer.ggml.token_type")
    if types and #types ~= #tokens then fail(path, "tokenizer.ggml.token_type", "has a different length from the tokens") end
    local cfg = { n_vocab = #tokens, field = "tokenizer.ggml.model" }
    local scores, merges, style
    if model == "llama" then
      scores = g:array("tokenizer.ggml.scores")
      if type(scores) ~= "table" or #scores ~= #tokens then
        fail(path, "tokenizer.ggml.scores", "missing, or not one score per token")
      end
      local add_space = key("tokenizer.ggml.add_space_prefix", "boolean")
      cfg.symbols, cfg.split, cfg.space = C.EAPIG_TOK_CHARS, C.EAPIG_TOK_SPLIT_NONE, "\xe2\x96\x81"
      cfg.prefix = add_space == false and C.EAPIG_TOK_PREFIX_NONE or C.EAPIG_TOK_PREFIX_ALWAYS
      cfg.byte_fallback, cfg.strip_prefix = true, add_space ~= false
      cfg.unk_id = key("tokenizer.ggml.unknown_token_id", "number")
      style = "sentencepiece+byte_fallback"
    elseif model == "gpt2" then
      merges = g:array("tokenizer.ggml.merges")
      if type(merges) ~= "table" then fail(path, "tokenizer.ggml.merges", "missing") end
      local pre_name = key("tokenizer.ggml.pre", "string") or "default"
      local pre = GGUF_PRE[pre_name]
      if not pre then fail(path, "tokenizer.ggml.pre", quote(pre_name) .. " is not a known pre-tokenizer") end
      cfg.symbols, cfg.split, cfg.ignore_merges = C.EAPIG_TOK_BYTE_LEVEL, pre.split, pre.ignore_merges
      style = "byte-level"
    else
      fail(path, "tokenizer.ggml.model", quote(model) .. " is not supported (llama and gpt2 are)")
    end
    if cfg.unk_id and (cfg.unk_id < 0 or cfg.unk_id >= #tokens) then cfg.unk_id = nil end
    local h = new_handle(path, cfg)
    for id = 0, #tokens - 1 do
      local piece = tokens[id + 1]
      -- An empty piece is a hole (never produced), as in llama2.c's files.
      if #piece > 0 and C.eapig_tokenizer_set_token(h, id, piece, #piece, scores and scores[id + 1] or 0) ~= 0 then
        fail(path, "tokenizer.ggml.tokens[" .. id .. "]", ffi.string(C.eapig_last_error()))
      end
    end
    if merges then
      for i, m in ipairs(merges) do add_merge(path, h, m, "tokenizer.ggml.merges[" .. (i - 1) .. "]") end
    else
      core.check(C.eapig_tokenizer_rank_by_score(h), "eapig.tokenizer: " .. path)
    end
    -- Control tokens (BOS, EOS, ...) and user-defined ones are found in text as llama.cpp's
    -- parse_special finds them; control and unknown tokens are left out by skip_special.
    for id = 0, types and #tokens - 1 or -1 do
      local t, piece = types[id + 1], tokens[id + 1]
      local flags = 0
      if t == GGUF_CONTROL then flags = C.EAPIG_TOKEN_CONTROL + C.EAPIG_TOKEN_MATCH
      elseif t == GGUF_USER_DEFINED then flags = C.EAPIG_TOKEN_MATCH
      elseif t == GGUF_UNKNOWN then flags = C.EAPIG_TOKEN_CONTROL end
      if flags ~= 0 and #piece > 0 and C.eapig_tokenizer_set_special(h, id, piece, #piece, flags) ~= 0 then
        fail(path, "tokenizer.ggml.token_type[" .. id .. "]", ffi.string(C.eapig_last_error()))
      end
    end
    local name = basename(path):gsub("%.gguf$", "")
    local t = wrap(ffi.gc(h, nil), { name = name, style = style, path = path })
    for _, which in ipairs({ "bos", "eos" }) do
      local id = key("tokenizer.ggml." .. which .. "_token_id", "number")
      if id and id >= 0 and id < #tokens then t[which .. "_id"] = id end
    end
    -- llama.cpp adds BOS for SentencePiece vocabularies unless the file says otherwise.
    local add_bos = key("tokenizer.ggml.add_bos_token", "boolean")
    if add_bos == nil then add_bos = model == "llama" end
    local add_eos = key("tokenizer.ggml.add_eos_token", "boolean") or false
    if add_bos and not t.bos_id then fail(path, "tokenizer.ggml.add_bos_token", "true, but there is no BOS token") end
    if add_eos and not t.eos_id then fail(path, "tokenizer.ggml.add_eos_token", "true, but there is no EOS token") end
    t.add_bos, t.add_eos = add_bos, add_eos
    return t
  end)
  g:close()
  if not ok then error(tok, 0) end
  return tok
end

-- ---- finding the files ---------------------------------------------------------------------------

local function sibling(path, names)
  local dir = dirname(path)
  for _, name in ipairs(names) do
    if exists(dir .. "/" .. name) then return dir .. "/" .. name end
  end
end

local LLAMA2C_SIZES = { 512, 1024, 2048, 4096, 8192, 16384, 32000 }

local function load_dir(dir, opts)
  local function at(name)
    local p = dir .. "/" .. name
    if exists(p) then return p end
  end
  local p = at("tokenizer.json")
  if p then return load_hf(p, opts) end
  local v, m = at("vocab.json"), at("merges.txt")
  if v and m then return load_gpt2_pair(v, m, opts) end
  v, m = at("encoder.json"), at("vocab.bpe")
  if v and m then return load_gpt2_pair(v, m, opts) end
  p = at("tokenizer.bin") or (opts.vocab_size and at("tok" .. opts.vocab_size .. ".bin"))
  if not p then
    for _, size in ipairs(LLAMA2C_SIZES) do
      p = at("tok" .. size .. ".bin")
      if p then break end
    end
  end
  if p then return load_llama2c(p, opts) end
  error(("eapig.tokenizer: no tokenizer in %s (looked for tokenizer.json, vocab.json + merges.txt, "
    .. "encoder.json + vocab.bpe, tokenizer.bin, tok<N>.bin)"):format(dir), 0)
end

-- load(path, opts) -> tokenizer. path: a folder, or one of the files. opts: vocab_size (llama2.c:
-- the model's vocabulary size; default: every record in the file), config = false (ignore
-- tokenizer_config.json).
function M.load(path, opts)
  if type(path) ~= "string" then error("eapig.tokenizer: load: path must be a string", 2) end
  opts = opts or {}
  path = path:gsub("/+$", "")
  if path == "" then path = "/" end
  if is_dir(path) then return load_dir(path, opts) end
  if not exists(path) then error(("eapig.tokenizer: %s: no such file or folder"):format(path), 0) end
  local name = basename(path)
  if name == "vocab.json" or name == "encoder.json" then
    local m = sibling(path, { name == "vocab.json" and "merges.txt" or "vocab.bpe", "merges.txt", "vocab.bpe" })
    if not m then fail(path, "merges", "no merges.txt or vocab.bpe beside it") end
    return load_gpt2_pair(path, m, opts)
  elseif name == "merges.txt" or name:match("%.bpe$") then
    local v = sibling(path, { name == "merges.txt" and "vocab.json" or "encoder.json", "vocab.json", "encoder.json" })
    if not v then fail(path, "vocabulary", "no vocab.json or encoder.json beside it") end
    return load_gpt2_pair(v, path, opts)
  elseif name:match("%.json$") then
    return load_hf(path, opts)
  elseif name:match("%.gguf$") then
    return load_gguf(path)
  elseif name:match("%.bin$") then
    return load_llama2c(path, opts)
  end
  error(("eapig.tokenizer: %s: not a known tokenizer file (tokenizer.json, vocab.json, merges.txt, "
    .. "encoder.json, vocab.bpe, *.gguf, *.bin)"):format(path), 0)
end

-- The same, returning nil and the message instead of raising (STYLE 15).
function M.try_load(path, opts)
  local ok, tok = pcall(M.load, path, opts)
  if ok then return tok end
  return nil, tok
end

M.Tokenizer = Tokenizer
return M
