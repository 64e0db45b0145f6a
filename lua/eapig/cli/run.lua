-- `eapig run SCRIPT.lua [args...]`: runs a Lua experiment script as `luajit SCRIPT.lua args`
-- would, with eapig's modules on the path: `local eapig = require("eapig")` works (already
-- loaded, so the script pays nothing for it), and no global `eapig` is set, so scripts stay
-- runnable under plain luajit too. The script sees its arguments in the global `arg` (arg[0] is
-- the script) and as `...`; if it returns an integer, that is the exit status.
-- An error in the script is one line "eapig: script.lua:12: message": the line of the script (or of
-- a module of the user's) where it happened, also when eapig raised it.
local cli = require("eapig.cli")

local USAGE = [[
Usage: eapig run SCRIPT.lua [args...]

Run a Lua experiment script with eapig loaded: inside it, local eapig = require("eapig").
The script gets its arguments in arg (arg[0] = SCRIPT.lua) and as ...; returning an integer sets
the exit status. Errors print one line with the script's file and line (EAPIG_DEBUG=1: traceback).]]

local unpack = unpack -- LuaJIT (5.1)

-- True for a chunk name of eapig's own modules ("@/.../eapig/graph.lua") or of C.
local function internal(source)
  return source == "=[C]" or cli.internal_path(source)
end

-- The message of an error raised while the script ran, as "file:line: message" at the innermost
-- line of the user's own code (the script, or a module of theirs it required): an error raised
-- inside eapig (with no position, or with eapig's own) is reported where the script called it.
-- Called inside the xpcall handler, so the failing frames are still on the stack.
local function located(e, script)
  local msg = cli.one_line(e)
  local level = 3 -- 1 = this function, 2 = the handler
  while true do
    local info = debug.getinfo(level, "Sl")
    if not info then break end
    if info.currentline and info.currentline > 0 and not internal(info.source) and info.source:sub(1, 1) == "@" then
      local where = info.source:sub(2) .. ":" .. info.currentline .. ":"
      if msg:sub(1, #where) == where then return msg end
      -- the user's own error(msg) already carries a position: keep it
      if msg:match("^[^%s:]+%.lua:%d+:") then return msg end
      return where .. " " .. msg
    end
    level = level + 1
  end
  if not msg:match("^[^%s:]+:%d+:") then msg = script .. ": " .. msg end
  return msg
end

return function(argv)
  local script = argv[1]
  if script == "-h" or script == "--help" then
    print(USAGE)
    return 0
  end
  if not script then cli.fail("run: give the script to run (eapig run SCRIPT.lua [args...])") end
  if script:sub(1, 1) == "-" then cli.fail("run: unknown option '%s' (eapig run SCRIPT.lua [args...])", script) end

  local chunk, err = loadfile(script)
  if not chunk then cli.verbatim(tostring(err)) end

  require("eapig") -- loaded before the script starts, so its own require is a table lookup
  local script_arg = { [0] = script }
  for i = 2, #argv do script_arg[i - 1] = argv[i] end
  rawset(_G, "arg", script_arg) -- a script reads its arguments from the global arg, as under luajit

  local results = { xpcall(chunk, function(e)
    if cli.debugging() then
      io.stderr:write(debug.traceback(tostring(e), 2), "\n")
      return tostring(e)
    end
    return located(e, script)
  end, unpack(script_arg, 1, #script_arg)) }
  if not results[1] then cli.verbatim(tostring(results[2])) end
  local status = results[2]
  if type(status) == "number" and status == math.floor(status) then return status end
  return 0
end
