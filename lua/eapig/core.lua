-- The FFI binding to libeapig: the generated cdef, the loaded library and the error check.
-- Every other module reaches C through here (STYLE 14: cdef and load once, at module level).
local ffi = require("ffi")

ffi.cdef(require("eapig.cdef"))

local function find_library()
  local path = package.searchpath("libeapig", package.cpath)
  if not path then
    error("eapig: libeapig.so not found on package.cpath (" .. package.cpath .. "); build it first", 0)
  end
  return path
end

local C = ffi.load(find_library())

local core = { C = C, ffi = ffi }

-- Raises the core's last error message when a status is not EAPIG_OK (STYLE 15).
function core.check(status, context)
  if status ~= 0 then
    local msg = ffi.string(C.eapig_last_error())
    if context then msg = context .. ": " .. msg end
    error(msg, 2)
  end
end

-- Same for a core call about one part of a file: the message reads "<context>: <what is wrong>",
-- without the core's own "eapig_x: <path>: " prefix repeating what context already names.
function core.check_file(status, path, context)
  if status ~= 0 then
    local msg = ffi.string(C.eapig_last_error()):gsub("^eapig_[%w_]+: ", "")
    if msg:sub(1, #path + 2) == path .. ": " then msg = msg:sub(#path + 3) end
    error(context .. ": " .. msg, 0)
  end
end

-- Same for constructors that return NULL on failure.
function core.check_ptr(ptr, context)
  if ptr == nil then
    local msg = ffi.string(C.eapig_last_error())
    if context then msg = context .. ": " .. msg end
    error(msg, 2)
  end
  return ptr
end

-- Why a positive number cannot be kept as a normal float32, or nil when it can: a config value
-- the core stores as a float would become infinite, or lose its precision to a subnormal or 0.
-- Config readers (config.json fields, GGUF metadata keys) raise it naming the field.
local FLOAT32_MAX, FLOAT32_MIN_NORMAL = 3.4028234663852886e38, 1.1754943508222875e-38
function core.float32_problem(v)
  if v > FLOAT32_MAX then return string.format("overflows float32 (largest %.8g)", FLOAT32_MAX) end
  if v < FLOAT32_MIN_NORMAL then return string.format("underflows float32 (smallest normal %.8g)", FLOAT32_MIN_NORMAL) end
  return nil
end

-- Buffers owned by Lua (zeroed by ffi.new). LuaJIT allocates at most 2^31 - 1 bytes at once and
-- reports a larger (or negative, or NaN) size as "size of C type is unknown or too large", which
-- names nothing: core.check_size refuses it first, naming what the buffer is for. Sizes read from
-- files and options are bounded where they are read, naming the field; this is the last guard.
core.MAX_BUFFER_BYTES = 2 ^ 31 - 1

-- Raises unless n elements of elem_size bytes fit one Lua buffer; what names the buffer.
function core.check_size(n, elem_size, what)
  if type(n) ~= "number" or n ~= n or n < 0 or n * elem_size > core.MAX_BUFFER_BYTES then
    error(("%s: %s elements of %d bytes (%.1f GiB) are more than one buffer may hold (2 GiB)")
      :format(what or "a Lua buffer", tostring(n), elem_size, (tonumber(n) or 0) * elem_size / 2 ^ 30), 0)
  end
  return n
end

local float_array = ffi.typeof("float[?]")
local int32_array = ffi.typeof("int32_t[?]")
local uint8_array = ffi.typeof("uint8_t[?]")
function core.floats(n, what) return float_array(core.check_size(n, 4, what)) end
function core.int32s(n, what) return int32_array(core.check_size(n, 4, what)) end
function core.bytes(n, what) return uint8_array(core.check_size(n, 1, what)) end

-- Per-batch buffers (STYLE 12): big float buffers allocated in C and freed explicitly when the
-- batch that made them ends (core.with_batch), so a run's memory does not wait for the garbage
-- collector. Outside a batch they are collected like any other (ffi.gc). Nothing allocated with
-- batch_floats may outlive its batch.
local open_batches = {}

function core.batch_floats(n)
  local p = ffi.gc(core.check_ptr(C.eapig_floats_new(n), "batch buffer"), C.eapig_floats_free)
  local batch = open_batches[#open_batches]
  if batch then batch[#batch + 1] = p end
  return p
end

-- Runs fn(...) and frees every batch_floats buffer it allocated when it returns or raises.
function core.with_batch(fn, ...)
  local batch = {}
  open_batches[#open_batches + 1] = batch
  local results = { pcall(fn, ...) }
  open_batches[#open_batches] = nil
  for i = #batch, 1, -1 do C.eapig_floats_free(ffi.gc(batch[i], nil)) end
  if not results[1] then error(results[2], 0) end
  return unpack(results, 2, table.maxn(results))
end

return core
