-- eapig.files: the few file operations every module needs, with errors that name the file and
-- the caller. This is the one place that reads an input file or writes an output file.
--
-- Inputs must be regular files: a FIFO or a device given as a model, dataset or graph would
-- block or never end, so it is refused before it is opened.
--
-- Outputs (write_atomic), by what the path is:
--   a regular file, or nothing    written to a temporary file beside it, renamed over it when
--                                 complete: a failed or interrupted write never leaves a partial
--                                 file, and an existing file stays as it was until then
--   a character device or a FIFO  written through (/dev/null, /dev/stdout, a pipe): never replaced
--   a symlink                     followed: its target is written by these same rules, and the
--                                 link stays; a link to nothing is an error
--   a folder, a block device, a socket: refused
-- Temporary files are named ".<name>.eapig-tmp-<pid>-<n>" beside the output: hidden, and
-- recognisable, so the next write to the same path removes those of processes that are gone
-- (killed mid-write), and a live writer's are left alone.
local fmt = string.format

local files = {}

local function fail(template, ...)
  error(fmt(template, ...), 0)
end

-- The core is loaded on first use, so modules that only need exists() (the command line's
-- help) work before libeapig is built.
local core_C
local function C()
  core_C = core_C or require("eapig.core").C
  return core_C
end

local KIND_NAMES = { [0] = "missing", "file", "dir", "link", "fifo", "char", "block", "socket", "other" }
local KIND_WORDS = { dir = "a folder", link = "a symlink", fifo = "a FIFO", char = "a character device",
  block = "a block device", socket = "a socket", other = "a special file" }

-- What is at path: "missing", "file", "dir", "link" (only with follow = false), "fifo", "char",
-- "block", "socket" or "other". Never opens the path.
function files.kind(path, follow)
  return KIND_NAMES[C().eapig_path_kind(path, follow == false and 0 or 1)] or "other"
end

-- True when something readable is at path. A FIFO or device counts without being opened (an
-- open would block on a FIFO); readers then refuse it with check_input's message.
function files.exists(path)
  local kind = files.kind(path)
  if kind == "missing" then return false end
  if kind ~= "file" and kind ~= "dir" then return true end
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

-- Raises unless path is a regular file (after symlinks); `where` names the caller.
function files.check_input(path, where)
  if type(path) ~= "string" or path == "" then fail("%s: path must be a non-empty string, got %s", where, tostring(path)) end
  local kind = files.kind(path)
  if kind == "missing" then fail("%s: cannot open '%s': No such file or directory", where, path) end
  if kind ~= "file" then fail("%s: '%s' is %s, not a regular file", where, path, KIND_WORDS[kind]) end
end

-- An open handle on a regular input file.
function files.open_input(path, where)
  files.check_input(path, where)
  local fh, err = io.open(path, "rb")
  if not fh then fail("%s: cannot open '%s': %s", where, path, (tostring(err):gsub("^.-: ", ""))) end
  return fh
end

-- The whole content of a regular file; `where` names the caller in the error.
function files.read(path, where)
  if type(path) ~= "string" then fail("%s: path must be a string, got %s", where, type(path)) end
  local fh = files.open_input(path, where)
  local data, rerr = fh:read("*a")
  fh:close()
  if not data then fail("%s: cannot read '%s': %s", where, path, tostring(rerr)) end
  return data
end

local function split_path(path)
  local dir, base = path:match("^(.*)/([^/]*)$")
  if not dir then return ".", path end
  return dir == "" and "/" or dir, base
end

local counter = 0

-- The prefix of every temporary file for path (without the pid part).
local function temp_prefix(base)
  return "." .. base .. ".eapig-tmp-"
end

-- A fresh temporary name beside path, for output renamed into place when complete.
function files.temp_name(path)
  local dir, base = split_path(path)
  counter = counter + 1
  return fmt("%s/%s%d-%d", dir, temp_prefix(base), C().eapig_process_id(), counter)
end

-- Where output for path goes: the path to write and whether to write through (no rename).
-- Raises for what must not be written (folders, block devices, sockets, dangling symlinks).
function files.output_target(path, where)
  if type(path) ~= "string" or path == "" then fail("%s: path must be a non-empty string", where) end
  if path:match("/$") then fail("%s: '%s' is a folder; give a file name", where, path) end
  local target = path
  if files.kind(path, false) == "link" then
    if files.kind(path) == "missing" then fail("%s: '%s' is a symlink to nothing; refusing to write through it", where, path) end
    local buf = require("ffi").new("char[4096]")
    local status = C().eapig_path_resolve(path, buf, 4096)
    if status ~= 0 then fail("%s: '%s': %s", where, path, require("ffi").string(C().eapig_last_error())) end
    target = require("ffi").string(buf)
  end
  local kind = files.kind(target)
  if kind == "missing" or kind == "file" then return target, false end
  if kind == "char" or kind == "fifo" then return target, true end
  fail("%s: cannot write '%s': it is %s", where, path, KIND_WORDS[kind])
end

-- Calls fill(write) with write(s) appending to the output for path (see the top of this file),
-- then puts it in place. Any error (from fill or from the file system) removes the temporary file
-- and is raised. fill may also be a string: the whole content.
function files.write_atomic(path, where, fill)
  local target, through = files.output_target(path, where)
  if type(fill) == "string" then
    local text = fill
    fill = function(write) write(text) end
  end
  local tmp
  if not through then
    local dir, base = split_path(target)
    local removed = require("ffi").new("int32_t[1]")
    C().eapig_remove_stale_temps(dir, temp_prefix(base), removed)
    tmp = files.temp_name(target)
  end
  local fh, err = io.open(tmp or target, "wb")
  if not fh then fail("%s: cannot write '%s': %s", where, path, (tostring(err):gsub("^.-: ", ""))) end
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
    if tmp then os.remove(tmp) end
    error(perr, 0)
  end
  if tmp then
    local renamed, rerr = os.rename(tmp, target)
    if not renamed then
      os.remove(tmp)
      fail("%s: cannot move the output into '%s': %s", where, path, tostring(rerr))
    end
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

-- Checks early that output to path can be written, so a long run does not fail at its very end:
-- what output_target checks, and for a new or regular file that its folder takes a new file
-- (a temporary one, made and removed).
function files.check_writable(path, where)
  local target, through = files.output_target(path, where)
  if through then return end
  local tmp = files.temp_name(target)
  local fh, err = io.open(tmp, "wb")
  if not fh then fail("%s: cannot write '%s': %s", where, path, (tostring(err):gsub("^.-: ", ""))) end
  fh:close()
  os.remove(tmp)
end

return files
