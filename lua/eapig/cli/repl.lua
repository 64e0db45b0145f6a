-- `eapig repl`: an interactive LuaJIT prompt with eapig loaded. Each line runs in one shared
-- environment that holds `eapig` and falls back to the globals, so `g = eapig.Graph...` on one
-- line is there on the next without touching _G. An expression (or `=expr`) prints its values
-- with tostring, which Models, Graphs, Tokenizers and Datasets make readable. A line that does
-- not yet compile because it is unfinished (an open `function ... `) continues on the next.
-- An error prints one line and the prompt goes on; end of input (Ctrl-D) leaves.
-- Line editing and history come from lua-readline when it is installed; otherwise plain io.read.
-- Prompts and the banner show only when stdin is a terminal, so piped input prints just results.
local cli = require("eapig.cli")

local USAGE = [[
Usage: eapig repl

An interactive LuaJIT prompt with eapig loaded as `eapig`. Expressions print their values
(`=expr` too); an unfinished statement continues on the next line; Ctrl-D exits.]]

local function stdin_is_terminal()
  local ffi = require("ffi")
  pcall(ffi.cdef, "int isatty(int fd);")
  local ok, r = pcall(function() return ffi.C.isatty(0) end)
  return ok and r == 1
end

-- A function(prompt) -> line or nil at end of input.
local function line_reader(interactive)
  if interactive then
    local ok, rl = pcall(require, "readline")
    if ok and type(rl) == "table" and type(rl.readline) == "function" then
      return function(prompt)
        local line = rl.readline(prompt)
        if line and line:find("%S") and type(rl.add_history) == "function" then rl.add_history(line) end
        return line
      end, rl
    end
    return function(prompt)
      io.stdout:write(prompt)
      io.stdout:flush()
      return io.read("*l")
    end
  end
  return function() return io.read("*l") end
end

-- Compiles a chunk of input: as an expression first (so its values print), then as statements.
-- Returns fn, or nil and the error, with incomplete = true when more lines could finish it.
local function compile(src)
  local expr = src:match("^%s*=(.*)$")
  if expr then src = "return " .. expr end
  local fn = loadstring("return " .. src, "=stdin")
  if fn then return fn end
  local err
  fn, err = loadstring(src, "=stdin")
  if fn then return fn end
  return nil, err, err:find("'<eof>'$") ~= nil
end

local function show(n, ...)
  local parts = {}
  for i = 1, n do
    local v = select(i, ...)
    local ok, s = pcall(tostring, v)
    parts[i] = ok and s or ("<" .. type(v) .. ": __tostring failed: " .. tostring(s) .. ">")
  end
  if n > 0 then print(table.concat(parts, "\t")) end
end

local function report(err)
  io.stderr:write(cli.one_line(err), "\n")
  io.stderr:flush()
end

return function(argv)
  if argv[1] == "-h" or argv[1] == "--help" then
    print(USAGE)
    return 0
  end
  if argv[1] then cli.fail("repl: takes no arguments, got '%s'", argv[1]) end

  local eapig = require("eapig")
  local env = setmetatable({ eapig = eapig }, { __index = _G })
  local interactive = stdin_is_terminal()
  local read, rl = line_reader(interactive)
  if interactive then
    print(("eapig %s on %s: `eapig` is loaded; expressions print their values; Ctrl-D exits.")
      :format(eapig.version, jit and jit.version or _VERSION))
  end

  local buffer
  while true do
    local line = read(buffer and ">> " or "> ")
    if line == nil then break end
    buffer = buffer and (buffer .. "\n" .. line) or line
    if buffer:find("%S") then
      local fn, err, incomplete = compile(buffer)
      if fn then
        buffer = nil
        setfenv(fn, env)
        local function pack(ok, ...) return ok, select("#", ...), ... end
        local results = { pack(xpcall(fn, function(e)
          if cli.debugging() then return debug.traceback(tostring(e), 2) end
          return e
        end)) }
        if results[1] then
          show(results[2], unpack(results, 3, results[2] + 2))
        else
          report(results[3])
        end
        io.stdout:flush()
      elseif not incomplete then
        buffer = nil
        report(err)
      end
    else
      buffer = nil
    end
  end
  if buffer then report(select(2, compile(buffer))) end
  if interactive then io.stdout:write("\n") end
  if rl and type(rl.save_history) == "function" then pcall(rl.save_history) end
  return 0
end
