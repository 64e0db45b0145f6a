-- eapig.formats.json: eapig's one JSON writer (lua-cjson reads). cjson 2.1's encoder cannot write
-- what eapig's files need: keys in a given or sorted order (it orders them by hash), an empty
-- array (it writes an empty table as {}), every digit of a double (it keeps 14), "/" unescaped,
-- and NaN or infinities (it raises).
--
--   local json = require("eapig.formats.json")
--   json.encode({ b = 1, a = { 1, 2 } })                 -- {"a": [1, 2], "b": 1}
--   json.encode(v, { indent = "  " })                    -- one entry per line, 2-space indentation
--   json.encode(json.ordered(t, { "b", "a" }))          -- keys in that order
--   json.encode({ list = json.array({}) })               -- {"list": []}
--
-- Numbers: integers (|x| < 2^53) in full, others as the shortest of %.15g / %.17g that reads
-- back exactly, NaN and infinities as null (JSON cannot hold them). Strings and keys through
-- cjson, with "/" unescaped.
local cjson = require("cjson")

local floor, abs, huge = math.floor, math.abs, math.huge
local fmt, concat, sort = string.format, table.concat, table.sort
local type, pairs, ipairs, next, tostring, tonumber = type, pairs, ipairs, next, tostring, tonumber
local getmetatable, setmetatable = getmetatable, setmetatable

local json = {}

local ARRAY = {}

-- t written as an array even when empty; returns t.
function json.array(t) return setmetatable(t, ARRAY) end

-- t written as an object with exactly the keys of the list keys, in that order (a key t lacks is
-- written as null); returns t.
function json.ordered(t, keys) return setmetatable(t, { keys = keys }) end

local function number(v)
  if v ~= v or v == huge or v == -huge then return "null" end
  if v == floor(v) and abs(v) < 2 ^ 53 then return fmt("%d", v) end
  local short = fmt("%.15g", v)
  if tonumber(short) == v then return short end
  return fmt("%.17g", v)
end

local function string_(s) return (cjson.encode(s):gsub("\\/", "/")) end

local function encode(v, indent, step)
  local t = type(v)
  if t == "number" then return number(v) end
  if t == "string" then return string_(v) end
  if t == "boolean" then return tostring(v) end
  if t ~= "table" then return "null" end -- nil, cjson.null (a userdata), functions
  local inner = step and indent .. step
  local open_sep = step and "\n" .. inner or ""
  local sep = step and ",\n" .. inner or ", "
  local close_sep = step and "\n" .. indent or ""
  local mt = getmetatable(v)
  if mt == ARRAY or #v > 0 then
    if #v == 0 then return "[]" end
    local parts = {}
    for i, x in ipairs(v) do parts[i] = encode(x, inner, step) end
    return "[" .. open_sep .. concat(parts, sep) .. close_sep .. "]"
  end
  if next(v) == nil then return "{}" end
  local keys = mt and mt.keys
  if not keys then
    keys = {}
    for k in pairs(v) do keys[#keys + 1] = k end
    sort(keys, function(a, b) return tostring(a) < tostring(b) end)
  end
  local parts = {}
  for _, k in ipairs(keys) do
    parts[#parts + 1] = cjson.encode(tostring(k)) .. ": " .. encode(v[k], inner, step)
  end
  return "{" .. open_sep .. concat(parts, sep) .. close_sep .. "}"
end

-- v as JSON text: on one line, or with opts.indent (a string of spaces) one entry per line.
function json.encode(v, opts)
  local step = opts and opts.indent
  return encode(v, "", step)
end

return json
