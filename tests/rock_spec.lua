-- The README's luarocks install, as a user runs it: its luarocks line(s), read from README.md so
-- the test follows the documentation, into a fresh temporary tree (`--tree`), then the installed
-- `<tree>/bin/eapig demo` from another folder, so nothing of the checkout is on its paths.
-- Nothing may be downloaded: the machine running CI has no route to a rocks server, so a
-- dependency luarocks did not find installed fails the install.
-- Slow (a full CMake build of libeapig): plain pass only.
local files = require("support.files")
local testing = require("eapig.testing")

local function sh_quote(s)
  return "'" .. s:gsub("'", "'\\''") .. "'"
end

-- The shell lines of README.md's fenced blocks that run `luarocks ... make`.
local function readme_luarocks_lines()
  local lines, fenced = {}, false
  for line in (files.read("README.md") .. "\n"):gmatch("([^\n]*)\n") do
    if line:match("^```") then
      fenced = not fenced
    elseif fenced and line:match("luarocks ") and line:match(" make ") then
      lines[#lines + 1] = (line:gsub("%s+#.*$", ""))
    end
  end
  return lines
end

-- Runs a shell command; returns its exit status and its output (stdout and stderr together).
local function run(cmd)
  local fh = assert(io.popen(cmd .. " 2>&1; echo \"exit=$?\""))
  local out = fh:read("*a")
  fh:close()
  local status = tonumber(out:match("exit=(%d+)%s*$"))
  return status, out
end

describe("luarocks install from the README", function()
  if os.getenv("EAPIG_SANITIZED") == "1" then
    pending("skipped under the sanitizer build: the install test runs in the plain pass")
    return
  end

  it("installs into a fresh tree and the installed eapig runs the demo under LuaJIT", function()
    local lines = readme_luarocks_lines()
    assert.is_true(#lines >= 1, "README.md has no `luarocks ... make` line in a code block")
    local dir = testing.tmpdir()
    local tree, out_dir = dir .. "/tree", dir .. "/demo-out"
    local ok, err = pcall(function()
      for _, line in ipairs(lines) do
        -- Install into the temporary tree instead of the system one.
        local cmd = line:gsub("luarocks ", "luarocks --tree " .. sh_quote(tree) .. " ", 1)
        local status, out = run(cmd)
        assert(status == 0, ("`%s` failed (exit %s):\n%s"):format(cmd, tostring(status), out:sub(-3000)))
        assert(not out:find("Failed downloading", 1, true), "the install tried to download:\n" .. out:sub(-3000))
      end
      local wrapper = files.read(tree .. "/bin/eapig")
      assert(wrapper:find("luajit", 1, true), "bin/eapig does not start luajit:\n" .. wrapper)
      local status, out = run(("cd %s && %s demo --quiet --out %s"):format(sh_quote(dir),
        sh_quote(tree .. "/bin/eapig"), sh_quote(out_dir)))
      assert(status == 0, ("installed eapig demo failed (exit %s):\n%s"):format(tostring(status), out))
      assert(files.exists(out_dir .. "/circuit.json"), "no circuit.json in " .. out_dir)
      assert(files.exists(out_dir .. "/circuit.svg"), "no circuit.svg in " .. out_dir)
      -- the installed REPL finds the installed API reference
      status, out = run(("cd %s && echo 'help(\"apply_topn\")' | %s repl"):format(sh_quote(dir),
        sh_quote(tree .. "/bin/eapig")))
      assert(status == 0 and out:find("Graph:apply_topn(n, opts)", 1, true), "installed repl help:\n" .. out)
    end)
    testing.rmtree(dir)
    assert(ok, err)
  end)
end)
