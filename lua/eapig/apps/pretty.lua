-- eapig.pretty: values as the REPL shows them. Objects with their own __tostring (Graph, Model,
-- Dataset, Tokenizer, Metric) print that; plain tables print as Lua-like constructors, sorted and
-- shortened so a row, model:info() or a list of 200 per-example values stays readable:
--
--   {0.9731, 1.204, 0.8812, 1.117, 0.9935, 1.321, … 200 values}  mean 1.046, min 0.412, max 1.873
--   {
--     clean = {464, 1175, 20838, 422, 262, 614, 1596, … 11 values},
--     clean_text = "The war lasted from the year 1732 to the year 17",
--     label = 32,
--   }
local M = {}

local fmt, concat, sort = string.format, table.concat, table.sort
local floor, huge = math.floor, math.huge

M.WIDTH = 100      -- a table that renders longer than this goes one key per line
M.ITEMS = 8        -- list items shown before "… N values"
M.LINES = 40       -- keys shown one per line before "… N more"
M.DEPTH = 3        -- nested tables below this print as {…}

local function number(x)
  if x ~= x then return "nan" end
  if x == huge then return "inf" end
  if x == -huge then return "-inf" end
  if x == floor(x) and x > -1e15 and x < 1e15 then return fmt("%d", x) end
  return fmt("%.4g", x)
end

local function quote(s)
  local q = fmt("%q", s):gsub("\\\n", "\\n"):gsub("\r", "\\r")
  return q
end

local function has_tostring(v)
  local mt = getmetatable(v)
  return type(mt) == "table" and mt.__tostring ~= nil
end

-- The array part's length when every key is 1..n (n may be 0 for an empty table), else nil.
local function list_length(t)
  local n = 0
  for _ in pairs(t) do n = n + 1 end
  for i = 1, n do
    if t[i] == nil then return nil end
  end
  return n
end

local function numbers_only(t, n)
  for i = 1, n do
    if type(t[i]) ~= "number" then return false end
  end
  return n > 0
end

-- Keys in a stable order: numbers first (ascending), then strings (alphabetical), then the rest.
local function sorted_keys(t)
  local keys = {}
  for k in pairs(t) do keys[#keys + 1] = k end
  local rank = { number = 1, string = 2 }
  sort(keys, function(a, b)
    local ra, rb = rank[type(a)] or 3, rank[type(b)] or 3
    if ra ~= rb then return ra < rb end
    if ra == 3 then return tostring(a) < tostring(b) end
    return a < b
  end)
  return keys
end

local function key_text(k)
  if type(k) == "string" and k:match("^[%a_][%w_]*$") then return k end
  if type(k) == "string" then return "[" .. quote(k) .. "]" end
  return "[" .. (type(k) == "number" and number(k) or tostring(k)) .. "]"
end

local inline

local function scalar(v)
  local t = type(v)
  if t == "string" then return quote(v) end
  if t == "number" then return number(v) end
  if t == "table" then return has_tostring(v) and tostring(v) or nil end
  return tostring(v)
end

-- One line for any value; depth counts the tables around it.
function inline(v, depth)
  local s = scalar(v)
  if s then return s end
  if depth >= M.DEPTH then return "{…}" end
  local n = list_length(v)
  if n then
    local parts = {}
    for i = 1, math.min(n, M.ITEMS) do parts[i] = inline(v[i], depth + 1) end
    if n > M.ITEMS then parts[#parts + 1] = fmt("… %d values", n) end
    return "{" .. concat(parts, ", ") .. "}"
  end
  local parts = {}
  for _, k in ipairs(sorted_keys(v)) do
    if #parts >= M.ITEMS then
      parts[#parts + 1] = "…"
      break
    end
    parts[#parts + 1] = key_text(k) .. " = " .. inline(v[k], depth + 1)
  end
  return "{" .. concat(parts, ", ") .. "}"
end

-- mean, min and max of a list of numbers, for result lists.
local function summary(t, n)
  local s, lo, hi = 0, huge, -huge
  for i = 1, n do
    local x = t[i]
    s = s + x
    if x < lo then lo = x end
    if x > hi then hi = x end
  end
  return fmt("mean %s, min %s, max %s", number(s / n), number(lo), number(hi))
end

-- The REPL's text for one value: one line when it fits, else one key (or item) per line.
function M.render(v)
  if type(v) ~= "table" or has_tostring(v) then return type(v) == "string" and v or (scalar(v)) end
  local n = list_length(v)
  if n and numbers_only(v, n) then
    local line = inline(v, 0)
    if n > M.ITEMS then line = line .. "  " .. summary(v, n) end
    return line
  end
  local one = inline(v, 0)
  if #one <= M.WIDTH then return one end
  local lines = { "{" }
  if n then
    for i = 1, math.min(n, M.LINES) do lines[#lines + 1] = "  " .. inline(v[i], 1) .. "," end
    if n > M.LINES then lines[#lines + 1] = fmt("  … %d more (%d in all)", n - M.LINES, n) end
  else
    local keys = sorted_keys(v)
    for i = 1, math.min(#keys, M.LINES) do
      local k = keys[i]
      lines[#lines + 1] = "  " .. key_text(k) .. " = " .. inline(v[k], 1) .. ","
    end
    if #keys > M.LINES then lines[#lines + 1] = fmt("  … %d more keys", #keys - M.LINES) end
  end
  lines[#lines + 1] = "}"
  return concat(lines, "\n")
end

return M
