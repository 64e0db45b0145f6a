-- Test support: plain file helpers the specs share (they assert rather than explain: a failing
-- helper is a broken test setup, not a behaviour under test).
local M = {}

function M.exists(path)
  local fh = io.open(path, "rb")
  if fh then fh:close() end
  return fh ~= nil
end

function M.read(path)
  local fh = assert(io.open(path, "rb"))
  local text = fh:read("*a")
  fh:close()
  return text
end

-- Writes text to path (replacing it) and returns path.
function M.write(path, text)
  local fh = assert(io.open(path, "wb"))
  fh:write(text)
  fh:close()
  return path
end

-- Requires the named modules afresh (dropped from package.loaded first) and asserts that loading
-- them defines no global.
function M.assert_no_globals(...)
  local names = { ... }
  for _, name in ipairs(names) do package.loaded[name] = nil end
  local before = {}
  for k in pairs(_G) do before[k] = true end
  for _, name in ipairs(names) do require(name) end
  for k in pairs(_G) do assert(before[k], "new global: " .. tostring(k)) end
end

-- The temporary files eapig.files left beside path (".<name>.eapig-tmp-<pid>-<n>"): none should
-- survive a write, finished or failed.
function M.temps_beside(path)
  local dir, base = path:match("^(.*)/([^/]*)$")
  local p = assert(io.popen("ls -A '" .. (dir or "."):gsub("'", "'\\''") .. "' 2>/dev/null"))
  local found = {}
  for name in p:lines() do
    if name:sub(1, #base + 12) == "." .. base .. ".eapig-tmp-" then found[#found + 1] = name end
  end
  p:close()
  return found
end

return M
