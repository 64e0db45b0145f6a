-- luarocks configuration for installing eapig on Debian (12 and later) from a checkout:
--
--   LUAROCKS_CONFIG=rockspec/debian-luajit.lua luarocks --lua-version=5.1 make rockspec/eapig-scm-1.rockspec
--
-- Two things Debian's luarocks does not know by itself:
-- - eapig's Lua runs under LuaJIT (it uses the FFI). Debian's luarocks runs `lua5.1` for Lua 5.1,
--   so it would not find LuaJIT (the rockspec's "luajit >= 2.0" dependency) and would write a
--   `bin/eapig` wrapper that starts lua5.1. With lua_interpreter = "luajit" it detects LuaJIT and
--   the wrapper starts luajit.
-- - The Lua modules eapig needs come from Debian packages (lua-cjson, lua-argparse, lua-readline;
--   scripts/deps.sh installs them), which luarocks does not see as installed rocks and would try
--   to download. rocks_provided declares them, at the versions Debian 12 ships.
-- LUAROCKS_CONFIG takes the place of your own ~/.luarocks/config-5.1.lua for this command; the
-- system configuration (/etc/luarocks) still applies.
lua_interpreter = "luajit"
rocks_provided = {
  ["lua-cjson"] = "2.1.0-1",
  argparse = "0.7.1-1",
  readline = "3.2-1",
}
