-- luacheck configuration: LuaJIT everywhere, busted's globals in the specs.
std = "luajit"
max_line_length = 150
files["tests/"] = { std = "+busted" }
exclude_files = { "build/", "build-sanitize/", "build.luarocks/" }
