-- Test support: the two checks the specs make of error messages.
local assert = require("luassert")

local M = {}

-- The error of f(...), which must fail, as a string.
function M.error_of(f, ...)
  local ok, err = pcall(f, ...)
  assert.False(ok, "expected an error")
  return tostring(err)
end

-- Asserts that haystack contains needle as plain text.
function M.has(haystack, needle)
  assert.truthy(tostring(haystack):find(needle, 1, true),
    ("%q does not contain %q"):format(tostring(haystack), needle))
end

return M
