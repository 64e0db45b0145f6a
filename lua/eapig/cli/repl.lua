-- `eapig repl`: an interactive LuaJIT prompt with eapig loaded. Each line runs in one shared
-- environment that holds `eapig`, `help` and falls back to the globals, so `g = eapig.Graph...`
-- on one line is there on the next without touching _G. An expression (or `=expr`) prints its
-- values through eapig.pretty: objects by their tostring, plain tables (rows, model:info(),
-- result lists) as short sorted constructors. A line that does not yet compile because it is
-- unfinished (an open `function ... `) continues on the next. An error prints one line and the
-- prompt goes on; end of input (Ctrl-D) leaves.
-- Line editing, history (~/.eapig_history) and Tab completion of names come from lua-readline
-- when it is installed; otherwise lines are read plainly (the terminal still erases characters).
-- Prompts and the banner show only when stdin is a terminal, so piped input prints just results.
local cli = require("eapig.cli")

local USAGE = [[
Usage: eapig repl

An interactive LuaJIT prompt with eapig loaded as `eapig` (and eapig.tasks, eapig.data, ...).
Expressions print their values (`=expr` too); an unfinished statement continues on the next line;
help() lists the API reference and help(f) prints the entry of a function, e.g.
help(eapig.attribute); Ctrl-D exits. With lua-readline installed: line editing, history in
~/.eapig_history and Tab completion of names and fields.]]

local function stdin_is_terminal()
  local ffi = require("ffi")
  pcall(ffi.cdef, "int isatty(int fd);")
  local ok, r = pcall(function() return ffi.C.isatty(0) end)
  return ok and r == 1
end

-- Tab completion: the names visible in env, or the fields of the table before the last dot
-- or colon ("eapig.Gr" -> "eapig.Graph", "g:apply_t" -> "g:apply_topn").
-- readline calls it with the line and the word's bounds; the completions replace the word.
local function completer(env)
  return function(line, from, to)
    local word = line:sub(from, to):match("[%w_.:]*$")
    local path, sep, partial = word:match("^(.-)([.:]?)([%w_]*)$")
    local scope = env
    if sep ~= "" then
      for name in path:gmatch("[^.:]+") do
        local ok, v = pcall(function() return scope[name] end)
        scope = ok and v or nil
        if scope == nil then return {} end
      end
    end
    local found, seen = {}, {}
    local function collect(t)
      if type(t) ~= "table" then return end
      for k in pairs(t) do
        if type(k) == "string" and k:sub(1, #partial) == partial and not seen[k] and not k:match("^_") then
          seen[k] = true
          found[#found + 1] = path .. sep .. k
        end
      end
    end
    collect(scope)
    -- objects: their methods come from the metatable's __index; the environment: from _G
    local mt = getmetatable(scope)
    if mt and type(mt.__index) == "table" then collect(mt.__index) end
    if scope == env then collect(_G) end
    table.sort(found)
    return found
  end
end

-- A function(prompt) -> line or nil at end of input, and the readline module when it is used.
local function line_reader(interactive, env)
  if interactive then
    local ok, rl = pcall(require, "readline")
    if ok and type(rl) == "table" and type(rl.readline) == "function" then
      pcall(rl.set_options, { histfile = "~/.eapig_history", auto_add = true, ignoredups = true })
      if type(rl.set_readline_name) == "function" then pcall(rl.set_readline_name, "eapig") end
      if type(rl.set_complete_function) == "function" then
        local complete = completer(env)
        pcall(rl.set_complete_function, function(line, from, to)
          -- no space after a completed name: a field or call usually follows
          if type(rl.set_completion_append_character) == "function" then rl.set_completion_append_character("") end
          return complete(line, from, to)
        end)
      end
      return function(prompt) return rl.readline(prompt) end, rl
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
  local pretty = require("eapig.apps.pretty")
  local parts, multiline = {}, false
  for i = 1, n do
    local v = select(i, ...)
    local ok, s = pcall(pretty.render, v)
    parts[i] = ok and s or ("<" .. type(v) .. ": cannot show it: " .. tostring(s) .. ">")
    if parts[i]:find("\n") then multiline = true end
  end
  if n > 0 then print(table.concat(parts, multiline and "\n" or "\t")) end
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
  -- The main modules load up front (eapig loads them on first use), so Tab completion sees them.
  for _, k in ipairs({ "Graph", "Model", "data", "metrics", "tasks", "tokenizer" }) do local _ = eapig[k] end
  local env = setmetatable({ eapig = eapig, help = eapig.help }, { __index = _G })
  local interactive = stdin_is_terminal()
  local read, rl = line_reader(interactive, env)
  if interactive then
    print(("eapig %s on %s: `eapig` is loaded; expressions print their values; help() for the API; Ctrl-D exits.")
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
