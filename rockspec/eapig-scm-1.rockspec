-- From a checkout, on Debian (see rockspec/debian-luajit.lua for why the configuration is needed):
--   LUAROCKS_CONFIG=rockspec/debian-luajit.lua luarocks --lua-version=5.1 make rockspec/eapig-scm-1.rockspec
-- Builds libeapig with CMake and installs it, the Lua modules and the `eapig` command.
rockspec_format = "3.0"
package = "eapig"
version = "scm-1"
source = {
  url = "git+https://github.com/eapig/eapig.git",
  branch = "main",
}
description = {
  summary = "Circuit discovery in transformer language models (EAP, EAP-IG, exact patching) in C + LuaJIT",
  detailed = [[
eapig finds circuits in transformer language models: edge attribution patching, EAP with
integrated gradients, exact patching, circuit selection and faithfulness evaluation, on Hugging
Face checkpoints loaded directly, scripted in Lua.]],
  license = "MIT",
  homepage = "https://github.com/eapig/eapig",
}
dependencies = {
  "luajit >= 2.0",
  "lua-cjson",
  "argparse",
  "readline", -- line editing in `eapig repl` (which falls back to plain input without it)
}
build_dependencies = {}
-- OpenBLAS and PCRE2 come from the system (Debian: libopenblas-dev, libpcre2-dev); CMake finds
-- them with pkg-config, which also knows Debian's multiarch include folders.
build = {
  type = "cmake",
  variables = {
    CMAKE_BUILD_TYPE = "Release",
    CMAKE_INSTALL_PREFIX = "$(PREFIX)",
    LUADIR = "$(LUADIR)",
    LIBDIR = "$(LIBDIR)",
    BINDIR = "$(BINDIR)",
  },
}
test = {
  type = "busted",
}
