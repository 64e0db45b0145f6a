-- The induction task: random tokens in which a segment repeats. A model that has induction heads
-- (Olsson et al. 2022) predicts the second copy of the segment from the first: at a token that
-- occurred before, it attends to the token after that earlier occurrence and copies it. The
-- mechanism needs two layers: a previous-token head in an early layer writes "the token before
-- me" into each position, and the induction head's keys read it (K-composition).
--
-- Training rows come in two kinds, alternating in every batch:
--  * repeats: a prefix of k random tokens, then a segment A of n distinct tokens repeated until
--    the row is full (at least twice: k <= seq_len - 2n). n and k vary per row (n in
--    min_rep .. max_rep, k uniform), so the distance back to the earlier copy varies and no fixed
--    positional offset solves the task. Prefix tokens are distinct and never occur in A, so a
--    token seen before always means a copy of A. Every position from the second copy on
--    predicts its next token by induction (the induction targets).
--  * replays: a short prefix, A, then bigrams (a_i, a_i+1) of A replayed in random order. Each
--    a_i+1 follows an earlier occurrence of a_i, but what came before a_i differs every time.
-- Why both: on verbatim repeats alone a 2-layer GPT-2 learns to match windows of the last few
-- tokens (its layer-0 heads attend 2-4 tokens back) instead of the textbook circuit, and gets the
-- first tokens of a second copy wrong. Replayed bigrams reward only the one-token match, which
-- needs a previous-token head in layer 0 and an induction head in layer 1 reading it through
-- its keys (K-composition): with the mix that circuit forms, as Olsson et al. describe it.
-- Every other next token is a fresh draw: a model without induction can at best spread its guess
-- over the tokens already seen; log(V) is the level of one that cannot tell either.
--
-- The default tokenizer is one character per token: ids 0..63 are the base64 alphabet
-- "A-Za-z0-9+/" (then printable ASCII punctuation, then Latin-1 letters), so a sequence reads as
-- a string, e.g. "q7Ck" + "xYz3" + "xYz3".
--
--   local induction = require("eapig.tasks.induction")
--   local task = induction.new({ vocab = 64, seq_len = 32 })
--   task:batch(rng, 32)                      -- a training batch (eapig.train)
--   task:evaluate(model)                     -- held-out loss and induction accuracy
--   task:dataset({ rows = 100, seed = 1 })   -- clean/corrupted rows for attribution
local core = require("eapig.core")
local random = require("eapig.rng")

local C = core.C
local floor, min, log, huge = math.floor, math.min, math.log, math.huge
local fmt = string.format

local induction = {}

-- Two parts: first the training side (induction.new: the training task that eapig.train,
-- `eapig train` and the demo use, its tokenizer alphabet, and Task:dataset: attribution rows in
-- the trained distribution); then the registry's fields and induction.generate (datasets on any
-- tokenizer, with CSV helpers) further down.

local Task = {}
Task.__index = Task

---------------------------------------------------------------------------------------------------
-- The alphabet

local function utf8_char(cp)
  if cp < 0x80 then return string.char(cp) end
  return string.char(0xc0 + floor(cp / 64), 0x80 + cp % 64) -- cp < 0x800 here
end

local ALPHABET = {}
do
  local base64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
  for i = 1, #base64 do ALPHABET[#ALPHABET + 1] = base64:sub(i, i) end
  for cp = 33, 126 do -- printable ASCII not yet used (no space: pieces are whole characters)
    local ch = string.char(cp)
    if not base64:find(ch, 1, true) then ALPHABET[#ALPHABET + 1] = ch end
  end
  for cp = 0xc0, 0xff do -- Latin-1 letters, without the two signs in their middle
    if cp ~= 0xd7 and cp ~= 0xf7 then ALPHABET[#ALPHABET + 1] = utf8_char(cp) end
  end
end
induction.MAX_VOCAB = #ALPHABET

-- The first V characters of the alphabet: piece i (1-based) is token id i - 1.
function induction.pieces(V)
  if V > #ALPHABET then error(fmt("eapig.tasks.induction: vocab %d is more than the %d characters of the alphabet", V, #ALPHABET), 2) end
  local out = {}
  for i = 1, V do out[i] = ALPHABET[i] end
  return out
end

-- Token ids as text (one character each).
function induction.text(ids)
  local parts = {}
  for i, id in ipairs(ids) do parts[i] = ALPHABET[id + 1] or "?" end
  return table.concat(parts)
end

---------------------------------------------------------------------------------------------------

local function int_opt(o, k, default, lo)
  local v = o[k] == nil and default or o[k]
  if type(v) ~= "number" or v ~= floor(v) or v < lo then
    error(fmt("eapig.tasks.induction: %s must be an integer >= %d (got %s)", k, lo, tostring(v)), 3)
  end
  return v
end

-- opts: vocab (64), seq_len (32), min_rep (4), max_rep (seq_len / 2).
function induction.new(opts)
  opts = opts or {}
  local self = setmetatable({}, Task)
  self.name = "induction"
  self.vocab = int_opt(opts, "vocab", 64, 4)
  self.seq_len = int_opt(opts, "seq_len", 32, 4)
  self.max_rep = int_opt(opts, "max_rep", floor(self.seq_len / 2), 2)
  self.min_rep = int_opt(opts, "min_rep", min(4, self.max_rep), 2)
  if self.min_rep > self.max_rep or 2 * self.max_rep > self.seq_len then
    error(fmt("eapig.tasks.induction: need 2 <= min_rep (%d) <= max_rep (%d) <= seq_len / 2 (%d)", self.min_rep,
      self.max_rep, self.seq_len / 2), 2)
  end
  if self.vocab < self.seq_len then
    error(fmt("eapig.tasks.induction: vocab (%d) must be at least seq_len (%d)", self.vocab, self.seq_len), 2)
  end
  if self.vocab > #ALPHABET then
    error(fmt("eapig.tasks.induction: vocab %d is more than the %d characters of the alphabet", self.vocab, #ALPHABET), 2)
  end
  self.metric = "logit_diff"
  return self
end

function Task:__tostring()
  return fmt("[eapig.tasks.induction: vocab %d, %d tokens, repeats of %d..%d]", self.vocab, self.seq_len,
    self.min_rep, self.max_rep)
end

-- The tokenizer's pieces for this vocabulary (id order).
function Task:pieces() return induction.pieces(self.vocab) end

-- Draws `count` distinct tokens not marked in `used` (a table id -> true), marks them, returns them.
local function distinct(rng, V, count, used)
  local pool = {}
  for id = 0, V - 1 do
    if not used[id] then pool[#pool + 1] = id end
  end
  if #pool < count then
    error(fmt("eapig.tasks.induction: %d distinct tokens needed, only %d of the vocabulary are free", count, #pool), 3)
  end
  local out = {}
  for i = 1, count do -- partial Fisher-Yates
    local j = i + rng:below(#pool - i + 1)
    pool[i], pool[j] = pool[j], pool[i]
    out[i] = pool[i]
    used[pool[i]] = true
  end
  return out
end

-- One sequence: { ids = {...} (0-based ids), k = prefix length, n = segment length, seg = A,
-- used = the set of ids in A and the prefix }. n and k (optional) fix the segment and prefix
-- lengths; A repeats to the end of the sequence.
function Task:sample(rng, n, k)
  n = n or (self.min_rep + rng:below(self.max_rep - self.min_rep + 1))
  k = k or rng:below(self.seq_len - 2 * n + 1)
  local V, used = self.vocab, {}
  local seg = distinct(rng, V, n, used)
  local ids = distinct(rng, V, k, used) -- the prefix
  for i = k + 1, self.seq_len do ids[i] = seg[(i - k - 1) % n + 1] end
  return { ids = ids, k = k, n = n, seg = seg, used = used }
end

-- A replay row: a prefix of 0..3 tokens, A, then bigrams (a_i, a_i+1) of A in random order.
function Task:sample_replay(rng)
  local n = self.min_rep + rng:below(self.max_rep - self.min_rep + 1)
  local used = {}
  local ids = distinct(rng, self.vocab, min(rng:below(4), self.seq_len - n - 2), used)
  local seg = distinct(rng, self.vocab, n, used)
  for i = 1, n do ids[#ids + 1] = seg[i] end
  while #ids < self.seq_len do
    local i = 1 + rng:below(n - 1)
    ids[#ids + 1] = seg[i]
    if #ids < self.seq_len then ids[#ids + 1] = seg[i + 1] end
  end
  return { ids = ids, n = n, seg = seg }
end

-- A training batch for eapig.train: B full-length rows, repeats and replays alternating (see
-- the top), next-token loss on every position.
function Task:batch(rng, B)
  local P = self.seq_len
  local tokens, lengths = core.int32s(B * P), core.int32s(B)
  for b = 0, B - 1 do
    local s = b % 2 == 1 and self:sample_replay(rng) or self:sample(rng)
    for p = 0, P - 1 do tokens[b * P + p] = s.ids[p + 1] end
    lengths[b] = P
  end
  return { tokens = tokens, lengths = lengths, B = B, P = P }
end

-- Held-out numbers on `rows` fresh repeat rows (opts: rows (512), seed (12345), batch (64)):
--   loss            mean next-token loss over every position (what training minimises)
--   induction_loss  mean loss at the induction targets (every position from the second copy on)
--   accuracy        argmax accuracy at the induction targets
--   other_loss      mean loss everywhere else
--   baseline        log(V): the induction-target loss of any model that cannot do induction
--   baseline_loss   the overall loss of the best model without induction: log(V) at every random
--                   token, as the trained model at the one position a position code can learn
function Task:evaluate(model, opts)
  opts = opts or {}
  local rows, bsz = opts.rows or 512, opts.batch or 64
  local rng = random.new(opts.seed or 12345, "xorshift32") -- training's stream (eapig.rng)
  local P, V = self.seq_len, model.vocab
  local logits = core.floats(bsz * P * V)
  local losses = core.floats(bsz * P)
  local targets = core.int32s(bsz * P)
  local sum = { all = 0, ind = 0, other = 0 }
  local cnt = { all = 0, ind = 0, other = 0 }
  local correct = 0
  local done = 0
  while done < rows do
    local B = min(bsz, rows - done)
    local tokens, lengths = core.int32s(B * P), core.int32s(B)
    local kinds = {}
    for b = 0, B - 1 do
      local s = self:sample(rng)
      lengths[b] = P
      for p = 0, P - 1 do
        tokens[b * P + p] = s.ids[p + 1]
        local i = b * P + p
        if p + 1 < P then
          targets[i] = s.ids[p + 2]
          -- position p (0-based) predicts p+1; from the second copy on (p >= k+n) the token at p
          -- occurred n places back, followed by the token that follows here
          kinds[i] = p >= s.k + s.n and "ind" or "other"
        else
          targets[i] = -1
        end
      end
    end
    model:forward({ tokens = tokens, lengths = lengths, B = B, P = P }, { logits = logits })
    core.check(C.eapig_cross_entropy(losses, nil, logits, targets, B * P, V, 1), "induction:evaluate")
    for i = 0, B * P - 1 do
      if targets[i] >= 0 then
        local kind = kinds[i]
        sum.all, cnt.all = sum.all + losses[i], cnt.all + 1
        sum[kind], cnt[kind] = sum[kind] + losses[i], cnt[kind] + 1
        if kind == "ind" then
          local row, best, best_v = logits + i * V, 0, -huge
          for v = 0, V - 1 do
            if row[v] > best_v then best, best_v = v, row[v] end
          end
          if best == targets[i] then correct = correct + 1 end
        end
      end
    end
    done = done + B
  end
  return {
    rows = rows, loss = sum.all / cnt.all, induction_loss = sum.ind / cnt.ind, other_loss = sum.other / cnt.other,
    accuracy = correct / cnt.ind, baseline = log(V), induction_targets = cnt.ind,
    baseline_loss = (sum.other + cnt.ind * log(V)) / cnt.all,
  }
end

-- Clean/corrupted rows for attribution, in eapig.data's row format. Each clean row is a
-- sequence cut inside its second copy: prefix, A, then A's first m tokens; the answer
-- (correct) is A's next token. The corrupted row re-draws the first copy (A', disjoint from A
-- and the prefix), so nothing earlier predicts the answer. incorrect is, by default, a token in
-- neither row (opts.incorrect = "absent"): logit_diff then measures how much the model prefers
-- the answer over an unrelated token. With opts.incorrect = "alt" it is A' at the answer's
-- place, as EAP-IG's induction data does; but then restoring the previous-token (key) path
-- alone, with the corrupted values, makes the model copy exactly that token, so the key edges'
-- scores largely cancel (on models/induction-2l, EAP-IG-inputs ranked them 29th-50th of 110
-- edges instead of 17th-35th, and the top half of the edges kept 30% of the effect instead of
-- 95%). opts: rows (100), seed (1), rep (segment length n; default random per row), prefix (k;
-- default seq_len - 2n, so that the full row fits the context), copied (m, 1..n-1; default
-- random per row), incorrect ("absent" or "alt").
function Task:dataset(opts)
  opts = opts or {}
  local rng = random.new(opts.seed or 1, "xorshift32") -- training's stream (eapig.rng)
  local out = {}
  for r = 1, opts.rows or 100 do
    local n = opts.rep or (self.min_rep + rng:below(self.max_rep - self.min_rep + 1))
    local k = opts.prefix or (self.seq_len - 2 * n)
    if n < 2 or k < 0 or k + 2 * n - 1 > self.seq_len then
      error(fmt("eapig.tasks.induction: a row with a prefix of %d and a segment of %d does not fit %d tokens", k, n,
        self.seq_len), 2)
    end
    local s = self:sample(rng, n, k)
    local m = opts.copied or (1 + rng:below(n - 1))
    if m < 1 or m > n - 1 then error(fmt("eapig.tasks.induction: copied must be in 1..%d", n - 1), 2) end
    local alt = distinct(rng, self.vocab, n, s.used)
    local wrong = alt[m + 1]
    if (opts.incorrect or "absent") == "absent" and #s.ids < self.vocab then
      -- s.used now holds the prefix, A and A': draw among the rest (fall back to A' if none)
      local free = {}
      for id = 0, self.vocab - 1 do
        if not s.used[id] then free[#free + 1] = id end
      end
      if #free > 0 then wrong = free[1 + rng:below(#free)] end
    elseif opts.incorrect and opts.incorrect ~= "alt" then
      error(fmt("eapig.tasks.induction: incorrect must be \"absent\" or \"alt\", got %s", tostring(opts.incorrect)), 2)
    end
    local clean, corrupted = {}, {}
    for i = 1, k + n + m do clean[i] = s.ids[i] end
    for i = 1, k do corrupted[i] = s.ids[i] end
    for i = 1, n do corrupted[k + i] = alt[i] end
    for i = 1, m do corrupted[k + n + i] = s.seg[i] end
    out[r] = { clean = clean, corrupted = corrupted, correct = { s.seg[m + 1] }, incorrect = { wrong } }
  end
  return out
end

---------------------------------------------------------------------------------------------------
-- Attribution datasets on any model: the eapig.tasks interface (name, metric, generate,
-- write_csv, load_csv). The Task object above serves training on its own alphabet; generate
-- works on a real tokenizer's vocabulary, or on a bare vocabulary size for a model that has no
-- text tokenizer.
--
--   clean      [BOS] a1 .. aH  a1 .. a(H-1)     correct   = aH (what induction predicts)
--   corrupted  [BOS] b1 .. bH  a1 .. a(H-1)     incorrect = bH (the corrupted run's own target)
--
-- A and B are H distinct tokens each and share none, so in the corrupted run nothing earlier
-- points at aH: the first half re-drawn is the only change and the second half no longer matches.

induction.name = "induction"
induction.description = "random tokens A, then A again: predict A's next token from its first copy"
induction.metric = "logit_diff"

-- Token ids of word-like pieces (letters, with or without a leading space) of a tokenizer:
-- what generate draws from by default, so rows are made of ordinary text tokens and not of
-- control or byte tokens. opts.pattern: another Lua pattern for the pieces.
function induction.token_pool(tok, opts)
  opts = opts or {}
  if type(tok.token) ~= "function" then
    error("eapig.tasks.induction: the tokenizer has no :token(id) method; pass opts.tokens (a list of ids)", 3)
  end
  local pattern = opts.pattern or "^ ?%a+$"
  local V = tok.vocab_size
  if type(V) ~= "number" then error("eapig.tasks.induction: the tokenizer has no vocab_size; pass opts.tokens", 3) end
  local skip = {}
  for _, id in ipairs({ tok.bos_id, tok.eos_id, tok.unk_id, tok.pad_id }) do skip[id] = true end
  local out = {}
  for id = 0, V - 1 do
    local piece = not skip[id] and tok:token(id)
    if piece and piece:find(pattern) then out[#out + 1] = id end
  end
  return out
end

-- generate(tokenizer, opts) or generate({vocab = V, ...}) -> Dataset of n rows {clean,
-- corrupted (ids), correct, incorrect, clean_display and corrupted_display (decoded text, with
-- a tokenizer: only to read the rows; the ids are what counts)}. opts:
--   n (100), seed (0), half (H, 8: tokens per half),
--   tokens   the ids to draw from (default: token_pool(tokenizer), or 0..V-1 without bos)
--   bos      with a tokenizer: true / false, default its own convention (add_bos); with a bare
--            vocabulary: the BOS id to put first, or nil for none
--   vocab    (without a tokenizer) the vocabulary size
function induction.generate(tok, opts)
  local tasks = require("eapig.tasks")
  local who = "induction.generate"
  local bos_id
  if type(tok) == "table" and type(tok.encode) == "function" then
    opts = opts or {}
    local bos = opts.bos
    if bos == nil then bos = tok.add_bos end
    if bos then
      if tok.bos_id == nil then error(who .. ": bos asked for, but the tokenizer has no BOS token", 2) end
      bos_id = tok.bos_id
    end
  else
    if opts ~= nil then error(who .. ": give a tokenizer and opts, or one opts table with vocab", 2) end
    opts = tok or {}
    tok = nil
    if type(opts.vocab) ~= "number" or opts.vocab < 2 or opts.vocab ~= floor(opts.vocab) then
      error(who .. ": needs a tokenizer, or opts.vocab (the vocabulary size)", 2)
    end
    if opts.bos ~= nil and (type(opts.bos) ~= "number" or opts.bos ~= floor(opts.bos) or opts.bos < 0
      or opts.bos >= opts.vocab) then
      error(fmt("%s: opts.bos must be a token id in [0, %d) or nil", who, opts.vocab), 2)
    end
    bos_id = opts.bos
  end
  local n = tasks.count_opt(opts, "n", 100, who)
  local H = tasks.count_opt(opts, "half", 8, who, 2)
  local rng = tasks.rng(tasks.seed_opt(opts, who))
  local pool = opts.tokens
  if pool == nil then
    if tok then
      pool = induction.token_pool(tok, opts)
    else
      pool = {}
      for id = 0, opts.vocab - 1 do
        if id ~= bos_id then pool[#pool + 1] = id end
      end
    end
  end
  if type(pool) ~= "table" or #pool < 2 * H then
    error(fmt("%s: %d tokens to draw from; two disjoint halves of %d need at least %d", who,
      type(pool) == "table" and #pool or 0, H, 2 * H), 2)
  end
  local rows = {}
  for r = 1, n do
    local ab = rng:sample(pool, 2 * H) -- 2H distinct tokens: A = the first H, B = the rest
    local clean, corrupted = {}, {}
    if bos_id then clean[1], corrupted[1] = bos_id, bos_id end
    for i = 1, H do
      clean[#clean + 1] = ab[i]
      corrupted[#corrupted + 1] = ab[H + i]
    end
    for i = 1, H - 1 do
      clean[#clean + 1] = ab[i]
      corrupted[#corrupted + 1] = ab[i]
    end
    local row = { clean = clean, corrupted = corrupted, correct = { ab[H] }, incorrect = { ab[2 * H] } }
    if tok and type(tok.decode) == "function" then
      local first = bos_id and 2 or 1
      row.clean_display = tok:decode({ unpack(clean, first) })
      row.corrupted_display = tok:decode({ unpack(corrupted, first) })
    end
    rows[r] = row
  end
  return require("eapig.data").from_rows(rows, { source = "induction", vocab = tok and tok.vocab_size or opts.vocab })
end

-- CSV with the exact ids (clean_ids, corrupted_ids: decoded random tokens need not encode back
-- to the same ids) beside the decoded text.
function induction.write_csv(ds, path, opts) return require("eapig.data").write_csv(ds, path, opts) end

-- Reads induction.write_csv's file (the ids columns; no tokenizer needed). tok: optional.
function induction.load_csv(path, tok, opts)
  local o = {}
  for k, v in pairs(opts or {}) do o[k] = v end
  if type(tok) == "table" then
    o.tokenizer = o.tokenizer or tok
    o.vocab = o.vocab or tok.vocab_size
  end
  return require("eapig.data").load_csv(path, o)
end

return induction
