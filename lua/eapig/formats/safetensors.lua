-- safetensors: reader (memory-mapped through the core, every header field checked before use),
-- writer (temp file + rename) and the sharded index that Hugging Face uses for big checkpoints.
--
-- Format: 8-byte little-endian header length N, N bytes of JSON
--   {"__metadata__": {str: str}, name: {"dtype": "F32", "shape": [..], "data_offsets": [b, e]}, ...}
-- then the data section; offsets are relative to its start (byte 8 + N).
local ffi = require("ffi")
local bit = require("bit")
local cjson = require("cjson")
local core = require("eapig.core")

local C = core.C
local floor, min = math.floor, math.min

local safetensors = {}

-- Every dtype the format defines (so a valid file from any writer parses), with its size;
-- `code` marks those the core converts to float32.
local DTYPES = {
  F64 = { size = 8 }, F32 = { size = 4, code = C.EAPIG_DTYPE_F32 },
  F16 = { size = 2, code = C.EAPIG_DTYPE_F16 }, BF16 = { size = 2, code = C.EAPIG_DTYPE_BF16 },
  I64 = { size = 8 }, I32 = { size = 4, code = C.EAPIG_DTYPE_I32 }, I16 = { size = 2 }, I8 = { size = 1 },
  U64 = { size = 8 }, U32 = { size = 4 }, U16 = { size = 2 }, U8 = { size = 1 }, BOOL = { size = 1 },
  F8_E4M3 = { size = 1 }, F8_E5M2 = { size = 1 },
}

-- The format's own bound on the JSON header; anything larger is a corrupt length field.
local MAX_HEADER = 100 * 1024 * 1024
local MAX_INT = 2 ^ 53 -- integers above this are not exact in a Lua number

local function fail(fmt, ...)
  error(string.format(fmt, ...), 0)
end

local function is_count(x)
  return type(x) == "number" and x >= 0 and x < MAX_INT and x == floor(x)
end

local function shape_string(shape)
  local parts = {}
  for i = 1, #shape do parts[i] = tostring(shape[i]) end
  return "[" .. table.concat(parts, ", ") .. "]"
end

local function u64_string(n)
  return (tostring(n):gsub("ULL$", ""))
end

---------------------------------------------------------------------------------------------
-- Reader

local Reader = {}
Reader.__index = Reader

-- Checks one header entry against the data section's size and returns {dtype, shape, b, e}
-- with offsets relative to the data section.
local function check_entry(path, name, entry, data_bytes)
  local where = string.format("%s: tensor '%s'", path, name)
  if type(entry) ~= "table" then fail("%s: header entry is not an object", where) end
  local dt = DTYPES[entry.dtype]
  if not dt then fail("%s: unknown dtype %s", where, tostring(entry.dtype)) end
  local shape = entry.shape
  if type(shape) ~= "table" then fail("%s: field 'shape' is missing", where) end
  local count = 1
  for i = 1, #shape do
    if not is_count(shape[i]) then fail("%s: field 'shape' has a bad dimension %s", where, tostring(shape[i])) end
    -- Past the data size it cannot fit anyway: cap it so the product stays exact.
    count = min(count * shape[i], data_bytes + 1)
  end
  local offs = entry.data_offsets
  if type(offs) ~= "table" or not is_count(offs[1]) or not is_count(offs[2]) or #offs ~= 2 then
    fail("%s: field 'data_offsets' must be two non-negative integers", where)
  end
  local b, e = offs[1], offs[2]
  if e < b then fail("%s: data_offsets [%d, %d] end before they begin", where, b, e) end
  if e > data_bytes then
    fail("%s: data_offsets [%d, %d] leave the data section (%d bytes): out of range or truncated file",
         where, b, e, data_bytes)
  end
  if e - b ~= count * dt.size then
    fail("%s: data_offsets [%d, %d] hold %d bytes, but dtype %s and shape %s need %s", where, b, e, e - b,
         entry.dtype, shape_string(shape), count > data_bytes and "more than the file" or tostring(count * dt.size))
  end
  local copy = {}
  for i = 1, #shape do copy[i] = shape[i] end
  return { dtype = entry.dtype, shape = copy, b = b, e = e }
end

-- The tensors must tile the data section exactly, as the format requires: sorted by offset, each
-- begins where the one before ends (no overlap, no hole), the first at 0 and the last at its end
-- (no trailing bytes). A header length that is off by a byte shows up here as a hole or a tail.
local function check_tiling(path, tensors, data_bytes)
  local spans = {}
  for name, t in pairs(tensors) do spans[#spans + 1] = { name = name, b = t.b, e = t.e } end
  table.sort(spans, function(x, y)
    if x.b ~= y.b then return x.b < y.b end
    if x.e ~= y.e then return x.e < y.e end
    return x.name < y.name
  end)
  local last
  for _, s in ipairs(spans) do
    if last and s.b < last.e then
      fail("%s: tensors '%s' [%d, %d] and '%s' [%d, %d] overlap in field 'data_offsets'", path, last.name, last.b,
           last.e, s.name, s.b, s.e)
    end
    local at = last and last.e or 0
    if s.b > at then
      fail("%s: tensor '%s': field 'data_offsets' [%d, %d] leaves bytes [%d, %d) of the data section unused " ..
           "(wrong header length, or a hole)", path, s.name, s.b, s.e, at, s.b)
    end
    if not last or s.e > last.e then last = s end
  end
  local used = last and last.e or 0
  if used ~= data_bytes then
    fail("%s: %d bytes after the last tensor's data (the data section has %d, the header's data_offsets end " ..
         "at %d): wrong header length or trailing garbage", path, data_bytes - used, data_bytes, used)
  end
end

-- Opens a .safetensors file and validates its whole header. Raises naming the file and field.
function safetensors.open(path)
  local file = core.check_ptr(C.eapig_file_open(path), "safetensors")
  file = ffi.gc(file, C.eapig_file_close)
  local size = C.eapig_file_size(file)
  if size < 8 then
    fail("%s: truncated: %s bytes, shorter than the 8-byte header length", path, u64_string(size))
  end
  local len = ffi.new("uint64_t[1]")
  core.check(C.eapig_file_read(file, 0, 8, len), path)
  local n = len[0]
  if n > size - 8 then
    fail("%s: header length %s is larger than the file (%s bytes): truncated or not safetensors", path,
         u64_string(n), u64_string(size))
  end
  if n > MAX_HEADER then fail("%s: header length %s exceeds the format's 100 MB limit", path, u64_string(n)) end
  n = tonumber(n)
  local text = ffi.new("char[?]", n)
  core.check(C.eapig_file_read(file, 8, n, text), path)
  text = ffi.string(text, n)
  local nul = text:find("\0", 1, true)
  if nul then fail("%s: header holds a NUL byte at byte %d: not safetensors, or a wrong header length", path, 8 + nul - 1) end
  local ok, header = pcall(cjson.decode, text)
  if not ok then fail("%s: header is not valid JSON (%s)", path, tostring(header)) end
  if type(header) ~= "table" then fail("%s: header is not a JSON object", path) end

  local data_start = 8 + n
  local data_bytes = tonumber(size) - data_start
  local metadata = {}
  local tensors = {}
  for name, entry in pairs(header) do
    if type(name) ~= "string" then fail("%s: header is not a JSON object", path) end
    if name == "__metadata__" then
      if type(entry) ~= "table" then fail("%s: field '__metadata__' is not an object", path) end
      for k, v in pairs(entry) do
        if type(v) ~= "string" then fail("%s: field '__metadata__.%s' is not a string", path, tostring(k)) end
        metadata[k] = v
      end
    else
      tensors[name] = check_entry(path, name, entry, data_bytes)
    end
  end
  check_tiling(path, tensors, data_bytes)
  return setmetatable({ path = path, file = file, header = tensors, metadata = metadata, data_start = data_start },
                      Reader)
end

function Reader:has(name)
  return self.header[name] ~= nil
end

-- Sorted tensor names.
function Reader:names()
  local names = {}
  for name in pairs(self.header) do names[#names + 1] = name end
  table.sort(names)
  return names
end

-- {dtype, shape, begin, end}: absolute byte offsets in the file.
function Reader:info(name)
  local t = self.header[name]
  if not t then fail("%s: missing tensor '%s'", self.path, name) end
  return { dtype = t.dtype, shape = t.shape, begin = self.data_start + t.b, ["end"] = self.data_start + t.e }
end

-- A stored shape fits a (rows, cols) read when it is exactly that matrix (or its transpose for
-- a transposed read), or a vector of rows*cols elements read as one row or one column.
local function shape_fits(shape, rows, cols, transpose)
  local r, c = rows, cols
  if transpose then r, c = cols, rows end
  if #shape == 2 then return shape[1] == r and shape[2] == c end
  if #shape == 1 then return (rows == 1 or cols == 1) and shape[1] == rows * cols end
  return false
end

-- Converts tensor `name` to float32 into dst (rows*cols floats). opts.transpose reads a stored
-- (cols, rows) matrix and writes its transpose.
function Reader:read_into(name, dst, rows, cols, opts)
  local info = self:info(name)
  local transpose = opts and opts.transpose or false
  local code = DTYPES[info.dtype].code
  if not code then fail("%s: tensor '%s': dtype %s cannot be read as float32", self.path, name, info.dtype) end
  if not shape_fits(info.shape, rows, cols, transpose) then
    local want = transpose and { cols, rows } or { rows, cols }
    fail("%s: tensor '%s' has shape %s, expected %s", self.path, name, shape_string(info.shape), shape_string(want))
  end
  if not self.file then fail("%s: file is closed", self.path) end
  local status = C.eapig_file_tensor(self.file, info.begin, info["end"], code, dst, rows, cols, transpose and 1 or 0)
  core.check_file(status, self.path, string.format("%s: tensor '%s'", self.path, name))
end

-- Copies tensor `name`'s stored bytes into dst as they are, after checking its dtype and shape:
-- for readers of their own tensors (graphs), who check the values themselves.
function Reader:read_bytes(name, dst, dtype, shape)
  local info = self:info(name)
  if info.dtype ~= dtype then fail("%s: tensor '%s' must have dtype %s, got %s", self.path, name, dtype, info.dtype) end
  local same = #info.shape == #shape
  for i = 1, #shape do same = same and info.shape[i] == shape[i] end
  if not same then
    fail("%s: tensor '%s' has shape %s, expected %s", self.path, name, shape_string(info.shape), shape_string(shape))
  end
  if not self.file then fail("%s: file is closed", self.path) end
  core.check_file(C.eapig_file_read(self.file, info.begin, info["end"] - info.begin, dst), self.path,
                  string.format("%s: tensor '%s'", self.path, name))
end

-- Binds tensor `name` as stored matrix `which` (EAPIG_MAT_*) of `layer` of a stored model
-- (eapig_model_bind): no copy is made; the model converts it at each use. stored_rows rows of
-- cols (a transposed read: the stored tensor is (cols, stored_rows)); opts.row_map (int32_t[rows])
-- picks the stored row of each matrix row (fused q/k/v, RoPE orders).
function Reader:bind(name, model, layer, which, stored_rows, cols, opts)
  local info = self:info(name)
  local transpose = opts and opts.transpose or false
  local code = DTYPES[info.dtype].code
  if not code or code == C.EAPIG_DTYPE_I32 then
    fail("%s: tensor '%s': dtype %s cannot be used as weights (F32, F16 or BF16)", self.path, name, info.dtype)
  end
  if not shape_fits(info.shape, stored_rows, cols, transpose) then
    local want = transpose and { cols, stored_rows } or { stored_rows, cols }
    fail("%s: tensor '%s' has shape %s, expected %s", self.path, name, shape_string(info.shape), shape_string(want))
  end
  if not self.file then fail("%s: file is closed", self.path) end
  local status = C.eapig_model_bind(model, layer, which, self.file, info.begin, info["end"], code, stored_rows,
                                    transpose and 1 or 0, opts and opts.row_map)
  core.check_file(status, self.path, string.format("%s: tensor '%s'", self.path, name))
end

-- The dtype of tensor `name` as the file spells it (F32, BF16, ...).
function Reader:dtype(name)
  return self:info(name).dtype
end

-- Unmaps the file now instead of at garbage collection.
function Reader:close()
  if self.file then
    C.eapig_file_close(ffi.gc(self.file, nil))
    self.file = nil
  end
end

---------------------------------------------------------------------------------------------
-- Sharded checkpoints: model.safetensors.index.json maps every tensor to one shard file.

local Sharded = {}
Sharded.__index = Sharded

local function read_json(path)
  local text = require("eapig.formats.files").read(path, "JSON file")
  local nul = text:find("\0", 1, true)
  if nul then fail("%s: not valid JSON (a NUL byte at byte %d)", path, nul - 1) end
  local ok, value = pcall(cjson.decode, text)
  if not ok then fail("%s: not valid JSON (%s)", path, tostring(value)) end
  if type(value) ~= "table" then fail("%s: not a JSON object", path) end
  return value
end
safetensors.read_json = read_json

function safetensors.open_index(index_path)
  local index = read_json(index_path)
  local map = index.weight_map
  if type(map) ~= "table" then fail("%s: field 'weight_map' is missing", index_path) end
  local folder = index_path:match("^(.*)/[^/]*$") or "."
  local shards, where = {}, {}
  local ok, err = pcall(function()
    for name, file in pairs(map) do
      -- Shard names are plain file names beside the index: never a path out of the folder.
      if type(file) ~= "string" or file == "" or file:find("/", 1, true) or file == ".." or file == "." then
        fail("%s: field 'weight_map.%s' is not a file name: %s", index_path, tostring(name), tostring(file))
      end
      if not shards[file] then shards[file] = safetensors.open(folder .. "/" .. file) end
      if not shards[file]:has(name) then
        fail("%s: field 'weight_map' puts tensor '%s' in %s, which has no such tensor", index_path, name, file)
      end
      where[name] = shards[file]
    end
  end)
  if not ok then
    for _, r in pairs(shards) do r:close() end
    error(err, 0)
  end
  local header = {}
  for name, r in pairs(where) do header[name] = r.header[name] end
  local metadata = type(index.metadata) == "table" and index.metadata or {}
  return setmetatable({ path = index_path, shards = shards, where = where, header = header, metadata = metadata },
                      Sharded)
end

Sharded.names = Reader.names

function Sharded:has(name)
  return self.where[name] ~= nil
end

function Sharded:info(name)
  local r = self.where[name]
  if not r then fail("%s: missing tensor '%s'", self.path, name) end
  return r:info(name)
end

function Sharded:read_into(name, dst, rows, cols, opts)
  local r = self.where[name]
  if not r then fail("%s: missing tensor '%s'", self.path, name) end
  return r:read_into(name, dst, rows, cols, opts)
end

function Sharded:bind(name, ...)
  local r = self.where[name]
  if not r then fail("%s: missing tensor '%s'", self.path, name) end
  return r:bind(name, ...)
end

function Sharded:dtype(name)
  return self:info(name).dtype
end

function Sharded:close()
  for _, r in pairs(self.shards) do r:close() end
end

---------------------------------------------------------------------------------------------
-- Writer

local word = ffi.new("union { float f; uint32_t u; }")

-- float32 -> IEEE half bits, round to nearest even; overflow gives inf, NaN stays a (quiet) NaN.
function safetensors.f16_bits(x)
  word.f = x
  local u = word.u
  local sign = u >= 0x80000000 and 0x8000 or 0
  local a = u % 0x80000000
  if a >= 0x7f800000 then return sign + (a > 0x7f800000 and 0x7e00 or 0x7c00) end
  local e = floor(a / 0x800000) - 127
  if e < -14 then
    -- Half subnormals are multiples of 2^-24: scale (exact in a double) and round half to even.
    -- A result of 1024 is the smallest normal, whose bits are exactly 0x0400.
    word.u = a
    local v = word.f * 2 ^ 24
    local r = floor(v)
    local d = v - r
    if d > 0.5 or (d == 0.5 and r % 2 == 1) then r = r + 1 end
    return sign + r
  end
  if e > 15 then return sign + 0x7c00 end
  local m = a % 0x800000
  local h = (e + 15) * 1024 + floor(m / 8192)
  local rest = m % 8192
  if rest > 4096 or (rest == 4096 and h % 2 == 1) then h = h + 1 end -- a carry may reach inf: correct
  return sign + h
end

-- float32 -> bfloat16 bits, round to nearest even; NaN stays a quiet NaN.
function safetensors.bf16_bits(x)
  word.f = x
  local u = word.u
  if u % 0x80000000 > 0x7f800000 then return bit.bor(floor(u / 65536), 0x40) end
  local lsb = floor(u / 65536) % 2
  return floor((u + 0x7fff + lsb) / 65536)
end

local CHUNK = 65536
local f16_bits, bf16_bits = safetensors.f16_bits, safetensors.bf16_bits

-- How each writable dtype is produced: the element type its source data holds, and how a
-- chunk of n source elements becomes bytes in out.
local WRITERS = {
  F32 = { src = "float", copy = true },
  I32 = { src = "int32_t", copy = true },
  U8 = { src = "uint8_t", copy = true },
  F16 = { src = "float", convert = f16_bits },
  BF16 = { src = "float", convert = bf16_bits },
}

local function encode(w, src, out, n)
  if w.copy then return src end
  local half = ffi.cast("uint16_t *", out)
  local convert = w.convert
  for i = 0, n - 1 do half[i] = convert(src[i]) end
  return out
end

-- Writes one tensor's data in chunks through out(bytes), so a generator can stream a model
-- larger than memory.
local function write_data(out, t, count)
  local w = WRITERS[t.dtype]
  local size = DTYPES[t.dtype].size
  local src = ffi.new(w.src .. "[?]", CHUNK)
  local buf = ffi.new("uint8_t[?]", CHUNK * size)
  local data = t.data
  local ptr = type(data) == "cdata" and ffi.cast(w.src .. " *", data) or nil
  for off = 0, count - 1, CHUNK do
    local n = min(CHUNK, count - off)
    if type(data) == "table" then
      for i = 0, n - 1 do src[i] = data[off + i + 1] end
    elseif type(data) == "function" then
      data(src, n)
    else
      ffi.copy(src, ptr + off, n * ffi.sizeof(w.src))
    end
    out(ffi.string(encode(w, src, buf, n), n * size))
  end
end

local function le64(n)
  local bytes = {}
  for i = 1, 8 do
    bytes[i] = string.char(n % 256)
    n = floor(n / 256)
  end
  return table.concat(bytes)
end

-- The JSON header's __metadata__ entry (or nil): metadata maps strings to strings (written in
-- key order) or is a list of {key, value} string pairs (written in that order). sep and colon are
-- the JSON separators.
local function metadata_entry(path, metadata, sep, colon)
  if not metadata or next(metadata) == nil then return nil end
  local pairs_list = {}
  if metadata[1] ~= nil then
    for i, kv in ipairs(metadata) do pairs_list[i] = type(kv) == "table" and kv or {} end
  else
    for k, v in pairs(metadata) do pairs_list[#pairs_list + 1] = { k, v } end
    table.sort(pairs_list, function(x, y) return tostring(x[1]) < tostring(y[1]) end)
  end
  local items = {}
  for i, kv in ipairs(pairs_list) do
    if type(kv[1]) ~= "string" or type(kv[2]) ~= "string" then
      fail("%s: metadata must map strings to strings", path)
    end
    items[i] = cjson.encode(kv[1]) .. colon .. cjson.encode(kv[2])
  end
  return '"__metadata__"' .. colon .. "{" .. table.concat(items, sep) .. "}"
end

-- tensors: list of {name=, dtype="F32"|"F16"|"BF16"|"I32"|"U8", shape={...}, data=...}, data being
-- a Lua table (1-based), a pointer to the source elements (float for the float dtypes, int32_t
-- for I32, uint8_t for U8), or a function(buf, n) that fills the next n source elements of
-- the tensor (called in order). metadata: optional, a table of strings or a list of {key, value}
-- pairs (see metadata_entry). opts (optional): where = the name errors of writing the file give
-- (default "safetensors.write"); spaced = true writes the header with ", " and ": " separators
-- (the graph files' style) instead of "," and ":". The file appears at path only once it is
-- complete (eapig.files.write_atomic). Returns the data section's size in bytes.
function safetensors.write(path, tensors, metadata, opts)
  local sep, colon = ",", ":"
  if opts and opts.spaced then sep, colon = ", ", ": " end
  local entries, offset, seen = {}, 0, {}
  entries[1] = metadata_entry(path, metadata, sep, colon)
  local counts = {}
  for i, t in ipairs(tensors) do
    if type(t.name) ~= "string" or t.name == "__metadata__" or seen[t.name] then
      fail("%s: tensor %d has a bad or repeated name %s", path, i, tostring(t.name))
    end
    seen[t.name] = true
    if not WRITERS[t.dtype] then fail("%s: tensor '%s': cannot write dtype %s", path, t.name, tostring(t.dtype)) end
    local count = 1
    for _, d in ipairs(t.shape or {}) do
      if not is_count(d) then fail("%s: tensor '%s': bad shape %s", path, t.name, shape_string(t.shape)) end
      count = count * d
    end
    if type(t.data) == "table" and #t.data ~= count then
      fail("%s: tensor '%s': %d values for shape %s", path, t.name, #t.data, shape_string(t.shape))
    end
    counts[i] = count
    local bytes = count * DTYPES[t.dtype].size
    local shape_json = "[" .. table.concat(t.shape or {}, sep) .. "]"
    entries[#entries + 1] = string.format('%s%s{"dtype"%s"%s"%s"shape"%s%s%s"data_offsets"%s[%d%s%d]}',
      cjson.encode(t.name), colon, colon, t.dtype, sep, colon, shape_json, sep, colon, offset, sep, offset + bytes)
    offset = offset + bytes
  end
  local header = "{" .. table.concat(entries, sep) .. "}"
  -- Pad with spaces (allowed by the format) so the data section starts 8-byte aligned.
  header = header .. string.rep(" ", (8 - #header % 8) % 8)

  require("eapig.formats.files").write_atomic(path, opts and opts.where or "safetensors.write", function(write)
    write(le64(#header) .. header)
    for i, t in ipairs(tensors) do write_data(write, t, counts[i]) end
  end)
  return offset
end

return safetensors
