-- eapig.files: the few file operations every module needs, with errors that name the file and
-- the caller. Outputs go through a temporary file renamed into place, so a failed or
-- interrupted write never leaves a partial file behind.
local fmt = string.format

local files = {}

local function fail(template, ...)
  error(fmt(template, ...), 0)
end

function files.exists(path)
  local fh = io.open(path, "rb")
  if fh then fh:close() end
  return fh ~= nil
end

-- A directory opens as "dir/." (a file does not); io.open alone succeeds on both.
function files.is_dir(path)
  local fh = io.open(path .. "/.", "rb")
  if fh then fh:close() end
  return fh ~= nil
end

-- The whole content of a file; `where` names the caller in the error.
function files.read(path, where)
  if type(path) ~= "string" then fail("%s: path must be a string, got %s", where, type(path)) end
  local fh, err = io.open(path, "rb")
  if not fh then fail("%s: cannot open '%s': %s", where, path, tostring(err)) end
  local data, rerr = fh:read("*a")
  fh:close()
  if not data then fail("%s: cannot read '%s': %s", where, path, tostring(rerr)) end
  return data
end

-- A temporary name beside path for output that is renamed into place when complete.
function files.temp_name(path)
  -- a table's address is unique within the process; the time separates processes
  return fmt("%s.part-%d-%s", path, os.time(), tostring({}):match("0x(%x+)") or "0")
end

-- Calls fill(write) with write(s) appending to a temporary file beside path, then renames it over
-- path. Any error (from fill or from the file system) removes the temporary file and is raised.
-- fill may also be a string: the whole content.
function files.write_atomic(path, where, fill)
  if type(path) ~= "string" or path == "" then fail("%s: path must be a non-empty string", where) end
  if type(fill) == "string" then
    local text = fill
    fill = function(write) write(text) end
  end
  local tmp = files.temp_name(path)
  local fh, err = io.open(tmp, "wb")
  if not fh then fail("%s: cannot write '%s': %s", where, path, tostring(err)) end
  local function write(s)
    local ok, werr = fh:write(s)
    if not ok then error(fmt("%s: writing '%s' failed: %s", where, path, tostring(werr)), 0) end
  end
  local ok, perr = pcall(fill, write)
  local closed, cerr = fh:close()
  if ok and not closed then
    ok, perr = false, fmt("%s: writing '%s' failed: %s", where, path, tostring(cerr))
  end
  if not ok then
    os.remove(tmp)
    error(perr, 0)
  end
  local renamed, rerr = os.rename(tmp, path)
  if not renamed then
    os.remove(tmp)
    fail("%s: cannot move the output into '%s': %s", where, path, tostring(rerr))
  end
  return path
end

-- Creates a folder and its missing parents (mkdir -p), with mkdir(2) through the FFI: no shell.
-- An existing folder is fine; a file in the way, or a folder that cannot be made, is an error
-- naming `where` and the path.
function files.mkdir_p(path, where)
  if type(path) ~= "string" or path == "" then fail("%s: folder must be a non-empty string", where) end
  local ffi = require("ffi")
  pcall(ffi.cdef, "int mkdir(const char *path, unsigned int mode);")
  local prefix = path:sub(1, 1) == "/" and "/" or ""
  for part in path:gmatch("[^/]+") do
    prefix = prefix .. part
    if not files.is_dir(prefix) then
      if ffi.C.mkdir(prefix, tonumber("777", 8)) ~= 0 and not files.is_dir(prefix) then
        local why = files.exists(prefix) and "a file is in the way" or "mkdir failed (" .. ffi.errno() .. ")"
        fail("%s: cannot create the folder '%s': %s", where, prefix, why)
      end
    end
    prefix = prefix .. "/"
  end
  return path
end

return files
