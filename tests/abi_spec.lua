-- The FFI contract: the cdef generated from eapig.h must lay out every struct exactly as the C
-- compiler does, field by field, and no module may leak globals.
local core = require("eapig.core")
local ffi, C = core.ffi, core.C
local header_structs = require("support.header_structs")

local HEADER = "core/include/eapig.h"
local STRUCTS = header_structs.parse(HEADER)

-- Compiles a small C program against the same header that prints, for every struct and field,
-- "struct field offset size", and "struct - 0 sizeof" for the struct itself. (Field types are
-- covered by the offsets of the fields that follow them and by the struct's size.)
local function c_layout()
  local dir = os.tmpname()
  os.remove(dir)
  assert(os.execute("mkdir -p " .. dir) == 0)
  local src = { "#include <stdio.h>", "#include <stddef.h>", '#include "eapig.h"', "int main(void) {" }
  for _, s in ipairs(STRUCTS) do
    src[#src + 1] = ('printf("%s - 0 %%zu\\n", sizeof(%s));'):format(s.name, s.name)
    for _, f in ipairs(s.fields) do
      src[#src + 1] = ('printf("%s %s %%zu %%zu\\n", offsetof(%s, %s), sizeof(((%s *)0)->%s));')
        :format(s.name, f, s.name, f, s.name, f)
    end
  end
  src[#src + 1] = "return 0; }"
  local fh = assert(io.open(dir .. "/layout.c", "wb"))
  fh:write(table.concat(src, "\n"))
  fh:close()
  local cc = os.getenv("CC") or "cc"
  local ok = os.execute(("%s -std=c11 -I core/include -o %s/layout %s/layout.c"):format(cc, dir, dir))
  assert(ok == 0, "could not compile the layout probe with " .. cc)
  local out = assert(io.popen(dir .. "/layout"))
  local layout = {}
  for line in out:lines() do
    local s, f, a, b = line:match("^(%S+) (%S+) (%d+) (%d+)$")
    layout[s .. "." .. f] = { tonumber(a), tonumber(b) }
  end
  out:close()
  os.execute("rm -rf " .. dir)
  return layout
end

describe("ABI", function()
  it("finds the structs of the header", function()
    assert.is_true(#STRUCTS >= 8, "parsed only " .. #STRUCTS .. " structs from " .. HEADER)
    for _, s in ipairs(STRUCTS) do assert.is_true(#s.fields > 0, s.name .. " has no fields") end
  end)

  local layout = c_layout()
  for _, s in ipairs(STRUCTS) do
    it(s.name .. " has the size and field offsets C gives it", function()
      assert.are.equal(layout[s.name .. ".-"][2], ffi.sizeof(s.name))
      for _, f in ipairs(s.fields) do
        local want = layout[s.name .. "." .. f]
        assert.is_not_nil(want, s.name .. "." .. f .. " missing from the C probe")
        assert.are.equal(want[1], ffi.offsetof(s.name, f), s.name .. "." .. f .. " offset")
      end
    end)
  end

  -- The library's own view (compiled with its flags) of the structs it reports.
  local reported = {
    { "eapig_config", C.EAPIG_ABI_CONFIG }, { "eapig_layer_weights", C.EAPIG_ABI_LAYER_WEIGHTS },
    { "eapig_weights", C.EAPIG_ABI_WEIGHTS }, { "eapig_batch", C.EAPIG_ABI_BATCH },
    { "eapig_forward_opts", C.EAPIG_ABI_FORWARD_OPTS }, { "eapig_backward_opts", C.EAPIG_ABI_BACKWARD_OPTS },
  }
  for _, s in ipairs(reported) do
    it(s[1] .. " has the size libeapig gave it", function()
      assert.are.equal(tonumber(C.eapig_abi_sizeof(s[2])), ffi.sizeof(s[1]))
    end)
  end
  it("reports 0 for an unknown struct", function()
    assert.are.equal(0, tonumber(C.eapig_abi_sizeof(999)))
  end)
end)

-- Every module under lua/eapig, found on disk (a new module is covered without editing this list).
local function all_modules()
  local names = {}
  local find = assert(io.popen("find lua/eapig -name '*.lua' | sort"))
  for path in find:lines() do
    local name = path:gsub("^lua/", ""):gsub("%.lua$", ""):gsub("/init$", ""):gsub("/", ".")
    names[#names + 1] = name
  end
  find:close()
  return names
end

describe("modules", function()
  it("are all found", function()
    local names = all_modules()
    assert.is_true(#names >= 20, "found only " .. #names .. " modules under lua/eapig")
  end)
  it("loading every module defines no global", function()
    local before = {}
    for k in pairs(_G) do before[k] = true end
    for _, name in ipairs(all_modules()) do
      local ok, err = pcall(require, name)
      assert.is_true(ok, ("require %q failed: %s"):format(name, tostring(err)))
    end
    local leaked = {}
    for k in pairs(_G) do if not before[k] then leaked[#leaked + 1] = tostring(k) end end
    table.sort(leaked)
    assert.are.same({}, leaked)
  end)
end)
