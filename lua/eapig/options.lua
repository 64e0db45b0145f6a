-- eapig.options: the one checker of option tables. Every public function that takes an options
-- table (attribute, evaluate_graph, evaluate_baseline, Graph:apply_*, ...) passes it through
-- here, so a misspelt key is an error naming the key and the nearest valid one instead of being
-- silently ignored:
--
--   evaluate_graph: unknown option 'intervension' (did you mean 'intervention'?)
--
-- Errors are raised at level 0: the message carries its own context (the function's name).
local fmt = string.format

local M = {}

-- Rows per batch when a caller gives no batch_size (attribute, evaluate_graph, evaluate_baseline,
-- mean interventions) and the default of the CLI's --batch-size.
M.DEFAULT_BATCH_SIZE = 8

-- Edit distance between two short strings (option names), case-insensitive: insertions,
-- deletions, substitutions and swaps of two neighbouring letters ("levle") each count 1.
local function distance(a, b)
  a, b = a:lower(), b:lower()
  local d = {}
  for i = 0, #a do
    d[i] = { [0] = i }
  end
  for j = 0, #b do d[0][j] = j end
  for i = 1, #a do
    for j = 1, #b do
      local cost = a:byte(i) == b:byte(j) and 0 or 1
      local v = math.min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost)
      if i > 1 and j > 1 and a:byte(i) == b:byte(j - 1) and a:byte(i - 1) == b:byte(j) then
        v = math.min(v, d[i - 2][j - 2] + 1)
      end
      d[i][j] = v
    end
  end
  return d[#a][#b]
end
M.distance = distance

-- The closest of `names` (a list) to `key`, or nil when none is close: at most a third of the
-- longer name's letters differ, or one name starts with the other.
function M.nearest(key, names)
  key = tostring(key)
  local best, best_d
  for _, name in ipairs(names) do
    local d = distance(key, name)
    local close = d <= math.max(1, math.floor(math.max(#key, #name) / 3))
      or (#key >= 3 and (name:sub(1, #key) == key or key:sub(1, #name) == name))
    if close and (best_d == nil or d < best_d or (d == best_d and name < best)) then best, best_d = name, d end
  end
  return best
end

local function sorted_keys(set)
  local out = {}
  for k in pairs(set) do out[#out + 1] = k end
  table.sort(out)
  return out
end

-- "unknown option 'x' (did you mean 'y'?)" or "... (valid options: a, b, c)".
function M.unknown_message(where, key, names)
  local near = M.nearest(key, names)
  if near then return fmt("%s: unknown option '%s' (did you mean '%s'?)", where, tostring(key), near) end
  return fmt("%s: unknown option '%s' (valid options: %s)", where, tostring(key), table.concat(names, ", "))
end

-- check(opts, allowed, where): errors unless opts is nil or a table whose keys are all in
-- `allowed` (a set: name -> true, or a list of names). Returns opts, or {} for nil.
function M.check(opts, allowed, where)
  if opts == nil then return {} end
  if type(opts) ~= "table" then error(fmt("%s: options must be a table, got %s", where, type(opts)), 0) end
  local set = allowed
  if allowed[1] ~= nil then
    set = {}
    for _, k in ipairs(allowed) do set[k] = true end
  end
  for k in pairs(opts) do
    if not set[k] then error(M.unknown_message(where, k, sorted_keys(set)), 0) end
  end
  return opts
end

-- fill(opts, defaults, where): a copy of `defaults` overridden by opts, refusing unknown keys
-- (with the nearest valid one) and values whose type differs from the default's.
function M.fill(opts, defaults, where)
  local o = {}
  for k, v in pairs(defaults) do o[k] = v end
  if opts == nil then return o end
  M.check(opts, defaults, where)
  for k, v in pairs(opts) do
    local d = defaults[k]
    if type(v) ~= type(d) then
      error(fmt("%s: option '%s' must be a %s, got %s", where, tostring(k), type(d), type(v)), 0)
    end
    o[k] = v
  end
  return o
end

return M
