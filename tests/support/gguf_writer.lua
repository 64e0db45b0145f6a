-- Test support: writes GGUF files byte by byte from a plain description, written from the format
-- (llama.cpp's docs/gguf.md) rather than from eapig's reader, so that reader tests compare two
-- statements of the layout. Also the float encodings the tests need: F16 and BF16 bits, and
-- Q8_0 quantisation as llama.cpp's quantize_row_q8_0_ref does it.
--
--   writer.encode({ version = 3, alignment = 32,
--     kv = { { "general.architecture", "string", "llama" }, { "llama.block_count", "uint32", 2 },
--            { "tokenizer.ggml.tokens", "array", "string", { "a", "b" } } },
--     tensors = { { name = "x", type = 0, ne = { 4, 2 }, data = bytes } } })  --> the file's bytes
local ffi = require("ffi")
local bit = require("bit")

local M = {}

local VALUE_TYPES = { uint8 = 0, int8 = 1, uint16 = 2, int16 = 3, uint32 = 4, int32 = 5, float32 = 6, bool = 7,
                      string = 8, array = 9, uint64 = 10, int64 = 11, float64 = 12 }
local CTYPES = { uint8 = "uint8_t", int8 = "int8_t", uint16 = "uint16_t", int16 = "int16_t", uint32 = "uint32_t",
                 int32 = "int32_t", float32 = "float", bool = "uint8_t", uint64 = "uint64_t", int64 = "int64_t",
                 float64 = "double" }
M.TYPES = { F32 = 0, F16 = 1, Q4_0 = 2, Q8_0 = 8, Q4_K = 12, BF16 = 30 }

local function scalar(kind, v)
  if kind == "bool" then v = v and 1 or 0 end
  local ct = CTYPES[kind]
  return ffi.string(ffi.new(ct .. "[1]", v), ffi.sizeof(ct))
end

function M.u32(v) return scalar("uint32", v) end
function M.u64(v) return scalar("uint64", v) end
function M.str(s) return scalar("uint64", #s) .. s end

local function value(kind, v, elem)
  if kind == "string" then return M.str(v) end
  if kind == "array" then
    local parts = { M.u32(VALUE_TYPES[elem]), M.u64(#v) }
    for i, x in ipairs(v) do parts[i + 2] = value(elem, x) end
    return table.concat(parts)
  end
  return scalar(kind, v)
end

-- The header and data of a GGUF file. Tensors are laid out in order, each at the next multiple
-- of the alignment, unless a tensor gives its own `offset`. spec.magic, spec.version and
-- spec.n_tensors / spec.n_keys override the header fields (bad-input tests).
function M.encode(spec)
  local align = spec.alignment or 32
  local parts = { spec.magic or "GGUF", M.u32(spec.version or 3), M.u64(spec.n_tensors or #(spec.tensors or {})),
                  M.u64(spec.n_keys or #(spec.kv or {})) }
  for _, kv in ipairs(spec.kv or {}) do
    local kind = kv[2]
    parts[#parts + 1] = M.str(kv[1]) .. M.u32(VALUE_TYPES[kind])
    if kind == "array" then parts[#parts + 1] = value("array", kv[4], kv[3])
    else parts[#parts + 1] = value(kind, kv[3]) end
  end
  local data, offset = {}, 0
  for _, t in ipairs(spec.tensors or {}) do
    local at = t.offset or offset
    parts[#parts + 1] = M.str(t.name) .. M.u32(#t.ne)
    for _, n in ipairs(t.ne) do parts[#parts + 1] = M.u64(n) end
    parts[#parts + 1] = M.u32(t.type) .. M.u64(at)
    if not t.offset then
      data[#data + 1] = t.data
      offset = offset + #t.data
      local pad = (align - offset % align) % align
      data[#data + 1] = string.rep("\0", pad)
      offset = offset + pad
    end
  end
  local header = table.concat(parts)
  local pad = #(spec.tensors or {}) > 0 and (align - #header % align) % align or 0
  return header .. string.rep("\0", pad) .. table.concat(data)
end

function M.write(path, spec)
  local fh = assert(io.open(path, "wb"))
  fh:write(M.encode(spec))
  fh:close()
  return path
end

---------------------------------------------------------------------------------------------
-- Float encodings

-- Lua array -> F32 bytes.
function M.f32_bytes(xs)
  return ffi.string(ffi.new("float[?]", #xs, xs), 4 * #xs)
end

-- Half-precision bits of x, rounded to nearest (ties away from zero), for |x| below 65504.
function M.f16_bits(x)
  if x == 0 then return 0 end
  local sign = x < 0 and 0x8000 or 0
  local m, e = math.frexp(math.abs(x)) -- |x| = m 2^e, m in [0.5, 1)
  if e + 14 < 1 then return sign + math.floor(math.abs(x) * 2 ^ 24 + 0.5) end -- subnormal (1024 = the smallest normal)
  local E, f = e + 14, math.floor((2 * m - 1) * 1024 + 0.5)
  if f == 1024 then E, f = E + 1, 0 end
  assert(E <= 30, "f16_bits: too large for f16")
  return sign + E * 1024 + f
end

function M.f16_value(h)
  local sign = bit.band(h, 0x8000) ~= 0 and -1 or 1
  local E, f = bit.band(bit.rshift(h, 10), 0x1f), bit.band(h, 0x3ff)
  if E == 0 then return sign * f * 2 ^ -24 end
  return sign * (1 + f / 1024) * 2 ^ (E - 15)
end

local function u16_bytes(hs)
  return ffi.string(ffi.new("uint16_t[?]", #hs, hs), 2 * #hs)
end

-- Lua array -> F16 bytes, and the values those bytes hold.
function M.f16(xs)
  local hs, vals = {}, {}
  for i, x in ipairs(xs) do
    hs[i] = M.f16_bits(x)
    vals[i] = M.f16_value(hs[i])
  end
  return u16_bytes(hs), vals
end

-- Lua array -> BF16 bytes (the top half of each float32), and the values they hold.
function M.bf16(xs)
  local f = ffi.new("float[?]", #xs, xs)
  local u = ffi.cast("uint32_t *", f)
  local hs, vals = {}, {}
  local back = ffi.new("uint32_t[1]")
  for i = 1, #xs do
    hs[i] = tonumber(bit.rshift(u[i - 1], 16))
    back[0] = bit.lshift(hs[i], 16)
    vals[i] = ffi.cast("float *", back)[0]
  end
  return u16_bytes(hs), vals
end

-- Q8_0 (llama.cpp's reference quantiser): per block of 32, d = max|x| / 127 stored as f16,
-- q = round(x / d) as int8. Returns the bytes, the values d16 * q they stand for, and each
-- block's unrounded d.
function M.q8_0(xs)
  assert(#xs % 32 == 0, "q8_0: length must be a multiple of 32")
  local parts, vals, ds = {}, {}, {}
  for b = 0, #xs / 32 - 1 do
    local amax = 0
    for j = 1, 32 do amax = math.max(amax, math.abs(xs[b * 32 + j])) end
    local d = amax / 127
    local id = d ~= 0 and 1 / d or 0
    local h = M.f16_bits(d)
    local d16 = M.f16_value(h)
    local qs = {}
    for j = 1, 32 do
      local v = xs[b * 32 + j] * id
      local q = v >= 0 and math.floor(v + 0.5) or -math.floor(-v + 0.5)
      qs[j] = q
      vals[b * 32 + j] = d16 * q
    end
    ds[b + 1] = d
    parts[#parts + 1] = u16_bytes({ h }) .. ffi.string(ffi.new("int8_t[32]", qs), 32)
  end
  return table.concat(parts), vals, ds
end

return M
