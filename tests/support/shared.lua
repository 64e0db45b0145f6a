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

-- The reference fixtures (../shared/fixtures with its manifest.json), or nil when absent.
function M.fixtures()
  local f = io.open("../shared/fixtures/manifest.json", "rb")
  if not f then return nil end
  f:close()
  return "../shared/fixtures"
end

return M
