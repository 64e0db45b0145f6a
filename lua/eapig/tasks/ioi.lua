-- Indirect object identification (Wang et al. 2022, "Interpretability in the Wild"), in the
-- layout of EAP-IG's ioi CSV files:
--
--   clean           "When Mary and John went to the store, John gave a drink to"   -> " Mary"
--   corrupted       "When Mary and John went to the store, Kate gave a drink to"   (abc)
--   corrupted_hard  "When Mary and John went to the store, Mary gave a drink to"   (flip)
--   correct_idx     the indirect object's token (" Mary"), incorrect_idx the subject's (" John")
--
-- The first clause names two people, the indirect object IO and the subject S, in either order
-- (ABB: IO first, "When Mary and John ..., John"; BAB: S first, "When John and Mary ..., John");
-- the second clause repeats S, and a model that does the task completes with IO. The metric is
-- logit_diff: logit(IO) - logit(S). The corruptions change the second mention of S:
--   "abc"  (default; EAP-IG's `corrupted` column) a third name, so nothing says which of the two
--          first names is the answer;
--   "flip" (EAP-IG's `corrupted_hard`) the IO name, so the answer becomes S and logit_diff
--          changes sign;
-- "all" (the IOI paper's ABC set) replaces all three names with three others.
-- Names must be single tokens with their leading space; generate keeps those of NAMES that are.
--
--   local ioi = require("eapig.tasks.ioi")
--   local ds = ioi.generate(tokenizer, { n = 200, seed = 1 })
--   ioi.write_csv(ds, "ioi.csv")
local data = require("eapig.data")
local tasks = require("eapig.tasks")

local error, ipairs, tostring = error, ipairs, tostring
local format = string.format

local M = {
  name = "ioi",
  description = "When A and B went to the store, B gave a drink to -> A",
  metric = "logit_diff", -- correct = the IO name's token, incorrect = the S name's
}

-- The IOI paper's names (those GPT-2 encodes as one token with a leading space).
M.NAMES = {
  "Aaron", "Adam", "Alan", "Alex", "Alice", "Amy", "Anderson", "Andre", "Andrew", "Andy", "Anna", "Anthony",
  "Arthur", "Austin", "Blake", "Brandon", "Brian", "Carter", "Charles", "Charlie", "Christian", "Christopher",
  "Clark", "Cole", "Collins", "Connor", "Crew", "Crystal", "Daniel", "David", "Dean", "Edward", "Elizabeth",
  "Emily", "Eric", "Eva", "Ford", "Frank", "George", "Georgia", "Graham", "Grant", "Henry", "Ian", "Jack",
  "Jacob", "Jake", "James", "Jamie", "Jane", "Jason", "Jay", "Jennifer", "Jeremy", "Jessica", "John",
  "Jonathan", "Jordan", "Joseph", "Joshua", "Justin", "Kate", "Kelly", "Kevin", "Kyle", "Laura", "Leon",
  "Lewis", "Lisa", "Louis", "Luke", "Madison", "Marco", "Marcus", "Maria", "Mark", "Martin", "Mary", "Matthew",
  "Max", "Michael", "Michelle", "Morgan", "Patrick", "Paul", "Peter", "Prince", "Rachel", "Richard", "River",
  "Robert", "Roman", "Rose", "Ruby", "Russell", "Ryan", "Sarah", "Scott", "Sean", "Simon", "Stephen", "Steven",
  "Sullivan", "Taylor", "Theresa", "Thomas", "Tyler", "Victoria", "Warren", "William",
}
M.PLACES = { "store", "garden", "restaurant", "school", "hospital", "office", "house", "station" }
M.OBJECTS = { "ring", "kiss", "bone", "basketball", "computer", "necklace", "drink", "snack" }

-- {A} and {B} are the first clause's names, {S} the second mention; the prompt stops before the
-- answer. The templates of EAP-IG's ioi files and the IOI paper's.
M.TEMPLATES = {
  "Then, {A} and {B} went to the {PLACE}. {S} gave a {OBJECT} to",
  "Then, {A} and {B} had a lot of fun at the {PLACE}. {S} gave a {OBJECT} to",
  "Then, {A} and {B} were working at the {PLACE}. {S} decided to give a {OBJECT} to",
  "Then, {A} and {B} were thinking about going to the {PLACE}. {S} wanted to give a {OBJECT} to",
  "Then, {A} and {B} had a long argument, and afterwards {S} said to",
  "After {A} and {B} went to the {PLACE}, {S} gave a {OBJECT} to",
  "When {A} and {B} got a {OBJECT} at the {PLACE}, {S} decided to give it to",
  "When {A} and {B} went to the {PLACE}, {S} gave a {OBJECT} to",
  "While {A} and {B} were working at the {PLACE}, {S} gave a {OBJECT} to",
}

local WHO = "ioi"
local CORRUPTIONS = { abc = true, flip = true, all = true }

local function fill(template, a, b, s, place, object)
  return (template:gsub("{(%u+)}", { A = a, B = b, S = s, PLACE = place, OBJECT = object }))
end

-- The names of the list whose " Name" is one token, with those ids.
function M.names(tok, list)
  local names, ids = {}, {}
  for _, name in ipairs(list or M.NAMES) do
    local id = tasks.single_token(tok, " " .. name)
    if id then names[#names + 1], ids[#names + 1] = name, id end
  end
  return names, ids
end

-- generate(tokenizer, opts) -> Dataset of n rows {clean, corrupted (ids), clean_text,
-- corrupted_text, correct (IO's id), incorrect (S's id), correct_text, incorrect_text, order
-- ("ABB" or "BAB"), corrupted_hard (the flip text, with the default corruption)}. opts:
--   n (100), seed (0), corruption ("abc", "flip" or "all"), bos (default: the tokenizer's
--   convention; EAP-IG on TransformerLens prepends one: pass true), names, places, objects,
--   templates (lists replacing the built-in ones), order ("ABB", "BAB" or nil for both, drawn
--   at random).
function M.generate(tok, opts)
  local who = WHO .. ".generate"
  local n, rng
  opts, n, rng = tasks.generate_start(tok, opts, who)
  local corruption = opts.corruption or "abc"
  if not CORRUPTIONS[corruption] then
    error(format("%s: opts.corruption must be 'abc', 'flip' or 'all', got %s", who, tostring(corruption)), 2)
  end
  if opts.order ~= nil and opts.order ~= "ABB" and opts.order ~= "BAB" then
    error(format("%s: opts.order must be 'ABB', 'BAB' or nil, got %s", who, tostring(opts.order)), 2)
  end
  local names, ids = M.names(tok, opts.names)
  local need = corruption == "all" and 5 or 3
  if #names < need then
    error(format("%s: %d of the names are single tokens (with a leading space); %d are needed", who, #names,
      need), 2)
  end
  local index = {}
  for i = 1, #names do index[i] = i end
  local templates, places, objects = opts.templates or M.TEMPLATES, opts.places or M.PLACES, opts.objects or M.OBJECTS

  local rows = {}
  for r = 1, n do
    local pick = rng:sample(index, need)
    local io, s, c = names[pick[1]], names[pick[2]], names[pick[3]]
    local template, place, object = rng:pick(templates), rng:pick(places), rng:pick(objects)
    local order = opts.order or (rng:below(2) == 0 and "ABB" or "BAB")
    local a, b = io, s
    if order == "BAB" then a, b = s, io end
    local clean = fill(template, a, b, s, place, object)
    local flip = fill(template, a, b, io, place, object)
    local corrupted
    if corruption == "abc" then
      corrupted = fill(template, a, b, c, place, object)
    elseif corruption == "flip" then
      corrupted = flip
    else
      corrupted = fill(template, c, names[pick[4]], names[pick[5]], place, object)
    end
    rows[r] = { clean = clean, corrupted = corrupted, correct = { ids[pick[1]] }, incorrect = { ids[pick[2]] },
      correct_text = " " .. io, incorrect_text = " " .. s, order = order,
      corrupted_hard = corruption == "abc" and flip or nil }
  end
  return data.from_rows(rows, { tokenizer = tok, bos = opts.bos, source = "ioi", vocab = tok.vocab_size })
end

-- EAP-IG's columns: clean, corrupted, correct_idx, incorrect_idx (and correct, incorrect, order,
-- corrupted_hard).
function M.write_csv(ds, path, opts) return data.write_csv(ds, path, opts) end

-- Reads an ioi CSV (EAP-IG's, or write_csv's). opts as data.load_csv.
function M.load_csv(path, tok, opts)
  tasks.check_tokenizer(tok, WHO .. ".load_csv")
  return tasks.load_csv(path, tok, opts)
end

return M
