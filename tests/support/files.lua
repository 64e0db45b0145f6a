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

function M.write(path, text)
  local fh = assert(io.open(path, "wb"))
  fh:write(text)
  fh:close()
end

return M
