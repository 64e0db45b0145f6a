-- Test support: the team's shared folder beside the checkout (fixtures and real models), which
-- developer machines and CI have and users do not. Specs that read it skip when it is absent.
local M = {}

-- The folder, relative to the project root (where busted runs), or nil when absent.
function M.dir()
  local f = io.open("../shared/fixtures/README.md", "rb") or io.open("../shared/DESIGN.md", "rb")
  if not f then return nil end
  f:close()
  return "../shared"
end

-- llama.cpp's tokenizer test vectors (path .. ".inp": strings each followed by
-- "\n__ggml_vocab_test__\n"; path .. ".out": one line of ids per string): the strings, and the
-- expected ids of each as a list.
function M.vocab_tests(path)
  local function read(p)
    local f = assert(io.open(p, "rb"))
    local text = f:read("*a")
    f:close()
    return text
  end
  local inp = read(path .. ".inp")
  local strings, pos, sep = {}, 1, "\n__ggml_vocab_test__\n"
  while true do
    local a, b = inp:find(sep, pos, true)
    if not a then strings[#strings + 1] = inp:sub(pos); break end
    strings[#strings + 1] = inp:sub(pos, a - 1)
    pos = b + 1
  end
  local ids = {}
  for line in (read(path .. ".out") .. "\n"):gmatch("([^\n]*)\n") do
    local list = {}
    for n in line:gmatch("%d+") do list[#list + 1] = tonumber(n) end
    ids[#ids + 1] = list
  end
  return strings, ids
end

-- The reference fixtures (../shared/fixtures with its manifest.json), or nil when absent.
function M.fixtures()
  local f = io.open("../shared/fixtures/manifest.json", "rb")
  if not f then return nil end
  f:close()
  return "../shared/fixtures"
end

return M
