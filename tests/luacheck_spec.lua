-- Static checks: luacheck (configured in .luacheckrc) over every Lua file of the project.
describe("luacheck", function()
  it("finds no warning in lua/, tests/ and scripts/", function()
    if os.getenv("EAPIG_SANITIZED") then
      pending("static check: runs once, in the plain pass")
      return
    end
    local p = assert(io.popen("luacheck --no-color --formatter plain lua tests scripts scripts/eapig 2>&1; echo \"exit $?\""))
    local out = p:read("*a")
    p:close()
    local status = tonumber(out:match("exit (%d+)%s*$"))
    assert.are.equal(0, status, "luacheck reported:\n" .. out)
  end)
end)
