-- `eapig run SCRIPT.lua [args...]`: runs a Lua experiment script as `luajit SCRIPT.lua args`
-- would, with eapig's modules on the path: `local eapig = require("eapig")` works (already
-- loaded, so the script pays nothing for it), and no global `eapig` is set, so scripts stay
-- runnable under plain luajit too. The script sees its arguments in the global `arg` (arg[0] is
-- the script) and as `...`; if it returns an integer, that is the exit status.
-- An error in the script is one line "eapig: script.lua:12: message" (its own position kept).
local cli = require("eapig.cli")

local USAGE = [[
Usage: eapig run SCRIPT.lua [args...]

Run a Lua experiment script with eapig loaded: inside it, local eapig = require("eapig").
The script gets its arguments in arg (arg[0] = SCRIPT.lua) and as ...; returning an integer sets
the exit status. Errors print one line with the script's file and line (EAPIG_DEBUG=1: traceback).]]

local unpack = unpack -- LuaJIT (5.1)

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
    if cli.debugging() then io.stderr:write(debug.traceback(tostring(e), 2), "\n") end
    return e
  end, unpack(script_arg, 1, #script_arg)) }
  if not results[1] then cli.verbatim(tostring(results[2])) end
  local status = results[2]
  if type(status) == "number" and status == math.floor(status) then return status end
  return 0
end
