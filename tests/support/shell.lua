-- Test support: running commands from the project root as a user does (scripts/eapig, compilers,
-- mpirun), with their output and exit status.
local M = {}

-- s as one shell word (single-quoted).
function M.quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

-- Runs a shell command line with redirect after it ("2>&1" unless given: stdout and stderr
-- together); returns what it printed and its exit status.
function M.run(cmd, redirect)
  local p = assert(io.popen(cmd .. " " .. (redirect or "2>&1") .. '; echo "rc=$?"'))
  local out = p:read("*a")
  p:close()
  local body, rc = out:match("^(.-)rc=(%d+)%s*$")
  return body, tonumber(rc)
end

-- The command line `luajit scripts/eapig ARGS` for a list of arguments (each quoted).
function M.eapig_line(args)
  local parts = { "luajit scripts/eapig" }
  for _, a in ipairs(args) do parts[#parts + 1] = M.quote(a) end
  return table.concat(parts, " ")
end

return M
