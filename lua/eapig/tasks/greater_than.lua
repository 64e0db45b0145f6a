-- Greater-than (Hanna et al. 2023, "How does GPT-2 compute greater-than?"), as EAP-IG builds it:
--
--   clean      "The war lasted from the year 1732 to the year 17"
--   corrupted  "The war lasted from the year 1701 to the year 17"
--   label      32 (the start year's last two digits)
--
-- A model that does the task puts its probability on two-digit continuations above the label.
-- The metric is prob_diff's greater-than form: softmax mass on the year tokens "00".."99" after
-- the label minus the mass on those at or before it. "01" in the corruption leaves (almost) every
-- year after it, so the clean - corrupted difference isolates the comparison.
--
-- It needs a tokenizer with the hundred two-digit tokens and that splits " 1732" into " 17" + "32":
-- GPT-2's does; SentencePiece tokenizers that split numbers into digits (Llama) do not, and
-- generate says so.
--
--   local gt = require("eapig.tasks.greater_than")
--   local ds = gt.generate(tokenizer, { n = 200, seed = 1 })
--   gt.write_csv(ds, "greater_than.csv")            -- clean,corrupted,label like EAP-IG's file
local data = require("eapig.data")
local tasks = require("eapig.tasks")

local error, pairs, ipairs, tostring = error, pairs, ipairs, tostring
local format = string.format
local floor = math.floor

local M = {
  name = "greater_than",
  description = "The NOUN lasted from the year XXYY to the year XX -> a two-digit year above YY",
  metric = "prob_diff", -- the greater-than form: rows carry year_ids and label
}

-- EAP-IG's potential_nouns.txt. generate keeps those the tokenizer encodes as one token (EAP-IG's
-- filter), so every clean row has the same length for a given century.
M.NOUNS = {
  "abduction", "accord", "affair", "agreement", "appraisal", "assaults", "assessment", "attack", "attempts",
  "campaign", "captivity", "case", "challenge", "chaos", "clash", "collaboration", "coma", "competition",
  "confrontation", "consequence", "conspiracy", "construction", "consultation", "contact", "contract",
  "convention", "cooperation", "custody", "deal", "decline", "decrease", "demonstrations", "development",
  "disagreement", "disorder", "dispute", "domination", "dynasty", "effect", "effort", "employment", "endeavor",
  "engagement", "epidemic", "evaluation", "exchange", "existence", "expansion", "expedition", "experiments",
  "fall", "fame", "flights", "friendship", "growth", "hardship", "hostility", "illness", "impact",
  "imprisonment", "improvement", "incarceration", "increase", "insurgency", "invasion", "investigation",
  "journey", "kingdom", "marriage", "modernization", "negotiation", "notoriety", "obstruction", "operation",
  "order", "outbreak", "outcome", "overhaul", "patrols", "pilgrimage", "plague", "plan", "practice", "process",
  "program", "progress", "project", "pursuit", "quest", "raids", "reforms", "reign", "relationship",
  "retaliation", "riot", "rise", "rivalry", "romance", "rule", "sanctions", "shift", "siege", "slump",
  "stature", "stint", "strikes", "study", "test", "testing", "tests", "therapy", "tour", "tradition", "treaty",
  "trial", "trip", "unemployment", "voyage", "warfare", "work",
}

M.TEMPLATE = "The %s lasted from the year %d to the year %d"

local WHO = "greater_than"

-- The ids of the tokens "00", "01", ..., "99" (EAP-IG: tokenizer(f'{year:02d}').input_ids[0]);
-- an error when the tokenizer lacks them.
function M.year_ids(tok)
  tasks.check_tokenizer(tok, WHO .. ".year_ids")
  local ids, missing = {}, {}
  for y = 0, 99 do
    local id = tasks.single_token(tok, format("%02d", y))
    if id == nil then missing[#missing + 1] = format("%02d", y) else ids[y + 1] = id end
  end
  if #missing > 0 then
    error(format("%s: the tokenizer has no single token for %d of the two-digit years (%s%s); the task needs "
      .. "two-digit year tokens, as GPT-2's tokenizer has", WHO, #missing, table.concat(missing, ", ", 1,
      math.min(#missing, 5)), #missing > 5 and ", ..." or ""), 3)
  end
  return ids
end

-- " 1732" as [" 17", "32"]: the two tokens, or nil.
local function split_year(tok, year)
  local ids = tok:encode(" " .. tostring(year), { bos = false })
  if #ids ~= 2 then return nil end
  if tok.token then
    local second = tok:token(ids[2])
    if second ~= nil and #second ~= 2 then return nil end
  end
  return ids
end

-- Years in [start, stop) that the tokenizer splits into " XX" + "YY", without each century's
-- first and last such year (EAP-IG's get_valid_years: the last leaves no room above it, the first
-- none below).
function M.valid_years(tok, start, stop)
  start, stop = start or 1100, stop or 1800
  local out, by_century = {}, {}
  for year = start, stop - 1 do
    if split_year(tok, year) then
      local c = floor(year / 100)
      local list = by_century[c]
      if not list then list = {}; by_century[c] = list end
      list[#list + 1] = year
    end
  end
  for c = floor(start / 100), floor((stop - 1) / 100) do
    local list = by_century[c]
    if list then
      for i = 2, #list - 1 do out[#out + 1] = list[i] end
    end
  end
  return out
end

-- The nouns of the list that are one token (EAP-IG's filter: the noun alone, no leading space).
function M.nouns(tok, list)
  local out = {}
  for _, noun in ipairs(list or M.NOUNS) do
    if tasks.single_token(tok, noun) then out[#out + 1] = noun end
  end
  return out
end

-- The clean and corrupted text of one example.
function M.sentences(noun, year)
  local c = floor(year / 100)
  return format(M.TEMPLATE, noun, year, c), format(M.TEMPLATE, noun, c * 100 + 1, c)
end

-- generate(tokenizer, opts) -> Dataset of n rows {clean, corrupted (ids), clean_text,
-- corrupted_text, label (the year's YY), year_ids (the 100 year tokens)}. opts:
--   n (100), seed (0), bos (default: the tokenizer's convention; EAP-IG on TransformerLens
--   prepends one: pass true), nouns (a list; default M.NOUNS filtered to single tokens),
--   start / stop (1100 / 1800: the years sampled from), balanced (true: YY cycles 02..98 as in
--   EAP-IG, so every label is equally common; false: years uniformly).
function M.generate(tok, opts)
  local who = WHO .. ".generate"
  local n, rng
  opts, n, rng = tasks.generate_start(tok, opts, who)
  local year_ids = M.year_ids(tok)
  -- labels 02..98, as EAP-IG samples them: "01" is the corruption, so the clean year lies above
  -- it, and its century's "XX01" must split as well
  local years = {}
  for _, y in ipairs(M.valid_years(tok, opts.start, opts.stop)) do
    local yy = y % 100
    if yy >= 2 and yy <= 98 and split_year(tok, y - yy + 1) then years[#years + 1] = y end
  end
  if #years == 0 then
    error(format("%s: no year in [%d, %d) splits into ' XX' + 'YY' with this tokenizer", who, opts.start or 1100,
      opts.stop or 1800), 2)
  end
  local nouns = M.nouns(tok, opts.nouns)
  if #nouns == 0 then error(who .. ": none of the nouns is a single token", 2) end

  local by_yy = {}
  for _, y in ipairs(years) do
    local yy = y % 100
    by_yy[yy] = by_yy[yy] or {}
    local l = by_yy[yy]
    l[#l + 1] = y
  end
  local rows = {}
  local yy = 2
  for i = 1, n do
    local year
    if opts.balanced == false then
      year = rng:pick(years)
    else
      -- EAP-IG's balanced draw: the i-th row's YY is 02, 03, ..., 98, 02, ... (a YY with no valid
      -- year is passed over)
      while not by_yy[yy] do yy = yy >= 98 and 2 or yy + 1 end
      year = rng:pick(by_yy[yy])
      yy = yy >= 98 and 2 or yy + 1
    end
    local noun = rng:pick(nouns)
    local clean, corrupted = M.sentences(noun, year)
    rows[i] = { clean = clean, corrupted = corrupted, label = year % 100, year_ids = year_ids }
  end
  return data.from_rows(rows, { tokenizer = tok, bos = opts.bos, labels = { "label" }, source = "greater_than",
    vocab = tok.vocab_size })
end

-- EAP-IG's columns: clean, corrupted, label (year_ids are the tokenizer's, so they stay out).
function M.write_csv(ds, path, opts)
  local o = { omit = { "year_ids" } }
  for k, v in pairs(opts or {}) do o[k] = v end
  return data.write_csv(ds, path, o)
end

-- Reads a greater-than CSV (EAP-IG's, or write_csv's) with the tokenizer's year tokens added to
-- every row. opts as data.load_csv (bos, drop_mismatched, ...).
function M.load_csv(path, tok, opts)
  tasks.check_tokenizer(tok, WHO .. ".load_csv")
  return tasks.load_csv(path, tok, opts, { labels = { "label" } }, function(o)
    o.fields = o.fields or { year_ids = M.year_ids(tok) }
  end)
end

return M
