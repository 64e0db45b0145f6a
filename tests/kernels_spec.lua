-- The C kernels of core/ops.c (with core/threads.c, which splits them, core/edge_product.c and
-- core/dense_product.c) tested from C (tests/c/test_kernels.c): forwards against double
-- references written from the definitions, backwards against central differences. The program
-- is compiled here with the build's flavour (sanitizers in the sanitizer pass) and each of its
-- checks becomes one test.
local function sh(cmd)
  local out, rc = require("support.shell").run(cmd)
  return rc, out
end

local function compile(flags)
  local bin = os.tmpname()
  if not flags and os.getenv("EAPIG_SANITIZED") then
    flags = "-std=c11 -O1 -g -Wall -Wextra -Werror -D_GNU_SOURCE -fsanitize=address,undefined -fno-sanitize-recover=undefined"
  end
  flags = flags or "-std=c11 -O2 -Wall -Wextra -Werror -D_GNU_SOURCE"
  local sources = "tests/c/test_kernels.c core/ops.c core/threads.c core/edge_product.c core/dense_product.c"
  local status, out = sh(("%s %s -I core/include -I core %s -o %s $(pkg-config --cflags --libs openblas) -lm -lpthread")
    :format(os.getenv("CC") or "cc", flags, sources, bin))
  return status == 0 and bin or nil, out
end

describe("C kernels (tests/c/test_kernels.c)", function()
  local bin, log = compile()
  it("compiles", function() assert.is_not_nil(bin, log) end)
  if not bin then return end
  local status, out = sh(bin)
  os.remove(bin)
  local n = 0
  for line in out:gmatch("[^\n]+") do
    local name, verdict = line:match("^(.-)%s+max rel diff .-%s(%S+)$")
    if name then
      n = n + 1
      it(name, function() assert.are.equal("ok", verdict, line) end)
    end
  end
  it("runs every check and exits 0", function()
    assert.is_true(n >= 20, "only " .. n .. " checks ran:\n" .. out)
    assert.are.equal(0, status, out)
  end)
end)

-- The same program under ThreadSanitizer: the thread pool's hand-offs (core/threads.c) and every
-- split kernel race-free at 1-3 threads. Plain pass only (the sanitizer pass preloads ASan).
describe("C kernels under ThreadSanitizer", function()
  if os.getenv("EAPIG_SANITIZED") then
    pending("runs in the plain pass only (EAPIG_SANITIZED=1)")
    return
  end
  local bin, log = compile("-std=c11 -O1 -g -Wall -Wextra -Werror -D_GNU_SOURCE -fsanitize=thread")
  it("compiles and runs with no data race reported", function()
    assert.is_not_nil(bin, log)
    local status, out = sh(bin .. " 2>&1")
    os.remove(bin)
    assert.is_nil(out:find("ThreadSanitizer", 1, true), out)
    assert.are.equal(0, status, out)
    assert.matches("\n0 failed", out)
  end)
end)
