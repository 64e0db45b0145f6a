-- Generates an FFI cdef from a public header, core/include/eapig.h or eapig_mpi.h (STYLE 10: the header is the contract).
-- ffi.cdef has no preprocessor: drop '#' lines and the EAPIG_API visibility macro.
local input, output = arg[1], arg[2]
assert(input and output, "usage: luajit gen_cdef.lua eapig.h cdef.lua")
local f = assert(io.open(input, "rb"))
local text = f:read("*a")
f:close()
local lines = {}
for line in (text .. "\n"):gmatch("(.-)\n") do
  if not line:match("^%s*#") then
    lines[#lines + 1] = (line:gsub("EAPIG_API%s+", ""))
  end
end
local body = table.concat(lines, "\n")
assert(not body:find("]]", 1, true), "header must not contain ']]'")
local out = assert(io.open(output .. ".tmp", "wb"))
out:write("-- Generated from core/include/", input:match("[^/]+$"), " by tools/gen_cdef.lua. Do not edit.\n")
out:write("return [[\n", body, "\n]]\n")
out:close()
assert(os.rename(output .. ".tmp", output))
