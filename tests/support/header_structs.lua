-- Test support: the structs declared in core/include/eapig.h, read from the header text, so that
-- the ABI test covers every struct and field without a hand-kept list.
-- Returns { { name = "eapig_config", fields = { "n_layers", ... } }, ... } in header order.
local M = {}

local function strip_comments(text)
  return (text:gsub("/%*.-%*/", " "):gsub("//[^\n]*", " "))
end

-- Field names of one declaration such as "float *ln1_w, *ln1_b" or "char name[64]".
local function declarators(decl)
  local names = {}
  -- Declarators are split on commas; each part ends with its name (and an optional array size).
  for part in (decl .. ","):gmatch("([^,]*),") do
    local name = part:match("([%a_][%w_]*)%s*%[[^%]]*%]%s*$") or part:match("([%a_][%w_]*)%s*$")
    if name then names[#names + 1] = name end
  end
  return names
end

function M.parse(path)
  local fh = assert(io.open(path, "rb"))
  local text = strip_comments(fh:read("*a"))
  fh:close()
  local structs = {}
  for name, body, alias in text:gmatch("typedef%s+struct%s+([%w_]+)%s*(%b{})%s*([%w_]+)%s*;") do
    assert(name == alias, "struct " .. name .. " is typedef'd as " .. alias)
    local fields = {}
    for decl in body:sub(2, -2):gmatch("([^;]+);") do
      decl = decl:gsub("^%s+", ""):gsub("%s+$", ""):gsub("%s+", " ")
      assert(not decl:find("[{}()]"), "unsupported declaration in struct " .. name .. ": " .. decl)
      for _, f in ipairs(declarators(decl)) do fields[#fields + 1] = f end
    end
    structs[#structs + 1] = { name = name, fields = fields }
  end
  return structs
end

return M
