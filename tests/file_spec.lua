-- The core's file functions (core/file.c): bounds-checked reads, exact F16/BF16/I32 -> float32
-- conversion, transposed reads, the RoPE row permutation; and the writer's float -> F16/BF16
-- rounding (lua/eapig/formats/safetensors.lua), checked against every 16-bit pattern.
local ffi = require("ffi")
local core = require("eapig.core")
local safetensors = require("eapig.formats.safetensors")
local testing = require("eapig.testing")

local C = core.C

local function write_file(path, bytes)
  local f = assert(io.open(path, "wb"))
  assert(f:write(bytes))
  assert(f:close())
end

local function open(path)
  return ffi.gc(core.check_ptr(C.eapig_file_open(path)), C.eapig_file_close)
end

local function last_error()
  return ffi.string(C.eapig_last_error())
end

-- Little-endian bytes of 16-bit / 32-bit words, and of float32 values.
local function u16_bytes(words)
  local b = ffi.new("uint16_t[?]", #words, words)
  return ffi.string(b, 2 * #words)
end

local function f32_bytes(values)
  local b = ffi.new("float[?]", #values, values)
  return ffi.string(b, 4 * #values)
end

local function is_nan(x) return x ~= x end

describe("eapig_file", function()
  local dir
  setup(function() dir = testing.tmpdir() end)
  teardown(function() testing.rmtree(dir) end)

  it("opens, sizes and reads inside the file", function()
    local path = dir .. "/bytes"
    write_file(path, "0123456789")
    local f = open(path)
    assert.are.equal(10, tonumber(C.eapig_file_size(f)))
    local buf = ffi.new("char[4]")
    assert.are.equal(0, C.eapig_file_read(f, 6, 4, buf))
    assert.are.equal("6789", ffi.string(buf, 4))
    assert.are.equal(0, C.eapig_file_read(f, 10, 0, buf)) -- empty read at the end is fine
  end)

  it("refuses reads that leave the file, naming it, also when offset + n overflows", function()
    local path = dir .. "/short"
    write_file(path, "abc")
    local f = open(path)
    local buf = ffi.new("char[8]")
    for _, case in ipairs({ { 0, 4 }, { 3, 1 }, { 4, 0 } }) do
      assert.are.equal(C.EAPIG_ERR_IO, C.eapig_file_read(f, case[1], case[2], buf))
      assert.truthy(last_error():find(path, 1, true))
    end
    local huge = 0xffffffffffffffffULL
    assert.are.equal(C.EAPIG_ERR_IO, C.eapig_file_read(f, 1, huge, buf))
    assert.are.equal(C.EAPIG_ERR_IO, C.eapig_file_read(f, huge, 2, buf))
  end)

  it("names a missing file, refuses a folder, and maps an empty file", function()
    assert.is_true(C.eapig_file_open(dir .. "/absent") == nil)
    assert.truthy(last_error():find(dir .. "/absent", 1, true))
    assert.is_true(C.eapig_file_open(dir) == nil)
    assert.truthy(last_error():find("not a regular file", 1, true))
    write_file(dir .. "/empty", "")
    local f = open(dir .. "/empty")
    assert.are.equal(0, tonumber(C.eapig_file_size(f)))
    assert.are.equal(C.EAPIG_ERR_IO, C.eapig_file_read(f, 0, 1, ffi.new("char[1]")))
  end)

  local function convert(bytes, dtype, n)
    local path = dir .. "/tensor"
    write_file(path, bytes)
    local f = open(path)
    local out = ffi.new("float[?]", n)
    assert.are.equal(0, C.eapig_file_tensor(f, 0, #bytes, dtype, out, 1, n, 0), last_error())
    return out
  end

  -- A non-finite element is an error naming its index and byte (weights must be finite).
  local function refuses(bytes, dtype, n, message)
    local path = dir .. "/tensor"
    write_file(path, bytes)
    local f = open(path)
    local out = ffi.new("float[?]", n)
    assert.are.equal(C.EAPIG_ERR_IO, C.eapig_file_tensor(f, 0, #bytes, dtype, out, 1, n, 0))
    assert.truthy(last_error():find(message, 1, true), last_error())
    assert.truthy(last_error():find(path, 1, true), last_error())
  end

  it("converts F16 exactly: normals, subnormals, signed zero; refuses inf and nan", function()
    local cases = {
      { 0x0000, 0 }, { 0x3c00, 1 }, { 0xc000, -2 }, { 0x3555, 0.333251953125 }, { 0x3bff, 0.99951171875 },
      { 0x7bff, 65504 }, { 0x0400, 2 ^ -14 }, { 0x0001, 2 ^ -24 }, { 0x03ff, 1023 * 2 ^ -24 },
      { 0x8001, -2 ^ -24 },
    }
    local words = {}
    for i, c in ipairs(cases) do words[i] = c[1] end
    words[#words + 1] = 0x8000
    local out = convert(u16_bytes(words), C.EAPIG_DTYPE_F16, #words)
    for i, c in ipairs(cases) do assert.are.equal(c[2], out[i - 1]) end
    assert.are.equal(-math.huge, 1 / out[#cases]) -- negative zero keeps its sign
    refuses(u16_bytes({ 0x3c00, 0x7c00 }), C.EAPIG_DTYPE_F16, 2, "element 1 (byte 2) is infinite")
    refuses(u16_bytes({ 0xfc00 }), C.EAPIG_DTYPE_F16, 1, "element 0 (byte 0) is infinite")
    refuses(u16_bytes({ 0, 0, 0x7e00 }), C.EAPIG_DTYPE_F16, 3, "element 2 (byte 4) is NaN")
    refuses(u16_bytes({ 0x7c01 }), C.EAPIG_DTYPE_F16, 1, "element 0 (byte 0) is NaN")
  end)

  it("converts BF16 exactly: normals, subnormals, signed zero; refuses inf and nan", function()
    local cases = {
      { 0x3f80, 1 }, { 0xc040, -3 }, { 0x3eab, 0.333984375 }, { 0x0080, 2 ^ -126 }, { 0x0001, 2 ^ -133 },
      { 0x7f7f, (2 - 2 ^ -7) * 2 ^ 127 },
    }
    local words = {}
    for i, c in ipairs(cases) do words[i] = c[1] end
    words[#words + 1] = 0x8000
    local out = convert(u16_bytes(words), C.EAPIG_DTYPE_BF16, #words)
    for i, c in ipairs(cases) do assert.are.equal(c[2], out[i - 1]) end
    assert.are.equal(-math.huge, 1 / out[#cases])
    refuses(u16_bytes({ 0x7f80 }), C.EAPIG_DTYPE_BF16, 1, "is infinite")
    refuses(u16_bytes({ 0x3f80, 0xffc1 }), C.EAPIG_DTYPE_BF16, 2, "element 1 (byte 2) is NaN")
  end)

  it("refuses NaN-payload and infinite F32 elements, also in a transposed read", function()
    -- 0xffffffff is a NaN whose payload LuaJIT could take for a tagged value
    local words = ffi.new("uint32_t[6]", { 0x3f800000, 0x3f800000, 0x3f800000, 0x3f800000, 0xffffffff, 0 })
    refuses(ffi.string(words, 24), C.EAPIG_DTYPE_F32, 6, "element 4 (byte 16) is NaN")
    local path = dir .. "/tensor"
    write_file(path, ffi.string(words, 24))
    local f = open(path)
    local out = ffi.new("float[6]")
    -- stored (3, 2) read as its (2, 3) transpose: the bad stored element is still named 4
    assert.are.equal(C.EAPIG_ERR_IO, C.eapig_file_tensor(f, 0, 24, C.EAPIG_DTYPE_F32, out, 2, 3, 1))
    assert.truthy(last_error():find("element 4 (byte 16) is NaN", 1, true), last_error())
    words[4] = 0xff800000
    refuses(ffi.string(words, 24), C.EAPIG_DTYPE_F32, 6, "element 4 (byte 16) is infinite")
  end)

  it("finds the first non-finite float and canonicalises NaN payloads", function()
    local x = ffi.new("float[4]", { 1, 2, 3, 4 })
    assert.are.equal(-1, tonumber(C.eapig_floats_first_nonfinite(x, 4)))
    local bits = ffi.cast("uint32_t *", x)
    bits[2] = 0xffffffff
    bits[3] = 0x7f800000
    assert.are.equal(2, tonumber(C.eapig_floats_first_nonfinite(x, 4)))
    local first = ffi.new("int64_t[1]")
    assert.are.equal(1, tonumber(C.eapig_floats_canonicalize_nan(x, 4, first)))
    assert.are.equal(2, tonumber(first[0]))
    assert.are.equal(0, tonumber(C.eapig_floats_canonicalize_nan(x, 4, first))) -- plain NaN stays
    assert.are.equal(-1, tonumber(first[0]))
    assert.are.equal(0xffc00000, bits[2]) -- the sign stays, the payload goes
    assert.are.equal(0x7f800000, bits[3]) -- infinities stay
    assert.is_true(is_nan(x[2]))
  end)

  it("copies F32 and converts I32", function()
    local out = convert(f32_bytes({ 1.5, -2.25, 3e-40 }), C.EAPIG_DTYPE_F32, 3)
    local subnormal = ffi.new("float[1]", 3e-40)[0]
    assert.are.same({ 1.5, -2.25, subnormal }, { out[0], out[1], out[2] })
    local ints = ffi.new("int32_t[3]", { 7, -8, 16777216 })
    out = convert(ffi.string(ints, 12), C.EAPIG_DTYPE_I32, 3)
    assert.are.same({ 7, -8, 16777216 }, { out[0], out[1], out[2] })
  end)

  it("transposes a stored (cols, rows) matrix, at an unaligned offset", function()
    -- Stored (2, 3) = [[1 2 3] [4 5 6]]; a (3, 2) read with transpose gives [[1 4] [2 5] [3 6]].
    for _, dtype in ipairs({ "F32", "F16", "BF16" }) do
      local bytes
      if dtype == "F32" then
        bytes = f32_bytes({ 1, 2, 3, 4, 5, 6 })
      else
        local enc = dtype == "F16" and safetensors.f16_bits or safetensors.bf16_bits
        local w = {}
        for i = 1, 6 do w[i] = enc(i) end
        bytes = u16_bytes(w)
      end
      local path = dir .. "/t"
      write_file(path, "x" .. bytes)
      local f = open(path)
      local out = ffi.new("float[6]")
      assert.are.equal(0, C.eapig_file_tensor(f, 1, 1 + #bytes, C["EAPIG_DTYPE_" .. dtype], out, 3, 2, 1))
      assert.are.same({ 1, 4, 2, 5, 3, 6 }, { out[0], out[1], out[2], out[3], out[4], out[5] })
    end
  end)

  it("reads big tensors split over threads exactly as on one thread, transposed or not", function()
    -- (R, Cn) = (203, 77) destination from a stored (77, 203), and 300001 plain elements: both
    -- above the split sizes (tiles of 32 rows; 65536 elements), neither a multiple of them
    local R, Cn, n = 203, 77, 300001
    local vals = {}
    for i = 1, n do vals[i] = (i * 37 % 1000) / 7 - 60 end
    local path = dir .. "/big"
    write_file(path, "xyz" .. f32_bytes(vals))
    local f = open(path)
    local eapig = require("eapig")
    local threads = C.eapig_get_num_threads()
    for _, t in ipairs({ 1, 2, 3 }) do
      eapig.set_num_threads(t)
      local tr = ffi.new("float[?]", R * Cn)
      assert.are.equal(0, C.eapig_file_tensor(f, 3, 3 + 4 * R * Cn, C.EAPIG_DTYPE_F32, tr, R, Cn, 1))
      for r = 0, R - 1 do
        for c = 0, Cn - 1 do
          if tr[r * Cn + c] ~= ffi.new("float[1]", vals[c * R + r + 1])[0] then
            error(("%d threads: transposed element (%d, %d) is %g"):format(t, r, c, tr[r * Cn + c]))
          end
        end
      end
      local plain = ffi.new("float[?]", n)
      assert.are.equal(0, C.eapig_file_tensor(f, 3, 3 + 4 * n, C.EAPIG_DTYPE_F32, plain, n, 1, 0))
      for i = 0, n - 1 do
        if plain[i] ~= ffi.new("float[1]", vals[i + 1])[0] then error(("%d threads: element %d"):format(t, i)) end
      end
    end
    eapig.set_num_threads(threads)
  end)

  it("checks a tensor's range, order, size and shape, naming the file", function()
    local path = dir .. "/eight"
    write_file(path, f32_bytes({ 1, 2 }))
    local f = open(path)
    local out = ffi.new("float[4]")
    local F32 = C.EAPIG_DTYPE_F32
    local function refused(b, e, dtype, rows, cols)
      local status = C.eapig_file_tensor(f, b, e, dtype, out, rows, cols, 0)
      return status ~= 0 and last_error():find(path, 1, true) ~= nil
    end
    assert.is_true(refused(0, 12, F32, 1, 3))       -- past the end
    assert.is_true(refused(8, 4, F32, 1, 1))        -- end before begin
    assert.is_true(refused(0, 8, F32, 1, 3))        -- byte count does not match the shape
    assert.is_true(refused(0, 8, 9, 1, 2))          -- unknown dtype
    assert.is_true(refused(0, 8, F32, -1, -2))      -- negative shape
    assert.is_true(refused(0, 8, F32, 2 ^ 62, 2 ^ 62)) -- rows * cols overflows
    local huge = 0xffffffffffffffffULL
    assert.are_not.equal(0, C.eapig_file_tensor(f, huge - 3, huge, F32, out, 1, 1, 0))
    assert.are.equal(0, C.eapig_file_tensor(f, 0, 8, F32, out, 2, 1, 0))
    assert.are.same({ 1, 2 }, { out[0], out[1] })
  end)

  it("permutes interleaved RoPE rows into the half-split layout, per head", function()
    -- 2 heads of d_head 4, d_in 1: row r holds r. Pair i = rows (2i, 2i+1) -> rows (i, i + 2).
    local w = ffi.new("float[8]", { 0, 1, 2, 3, 4, 5, 6, 7 })
    assert.are.equal(0, C.eapig_rope_permute_rows(w, 2, 4, 1))
    assert.are.same({ 0, 2, 1, 3, 4, 6, 5, 7 }, { w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7] })
    -- Whole rows move: d_in 2.
    local m = ffi.new("float[4]", { 10, 11, 20, 21 })
    assert.are.equal(0, C.eapig_rope_permute_rows(m, 1, 2, 2))
    assert.are.same({ 10, 11, 20, 21 }, { m[0], m[1], m[2], m[3] })
    assert.are.equal(C.EAPIG_ERR_ARG, C.eapig_rope_permute_rows(w, 2, 3, 1)) -- odd d_head
    assert.are.equal(C.EAPIG_ERR_ARG, C.eapig_rope_permute_rows(nil, 1, 2, 1))
  end)
end)

describe("safetensors writer rounding", function()
  it("rounds float32 to F16 to nearest even, with overflow to inf and subnormals", function()
    local f16 = safetensors.f16_bits
    local cases = {
      { 1 / 3, 0x3555 }, { 65504, 0x7bff }, { 65519, 0x7bff }, { 65520, 0x7c00 }, { 1e6, 0x7c00 },
      { -1e6, 0xfc00 }, { 2 ^ -24, 0x0001 }, { 2 ^ -25, 0x0000 }, { 0.75 * 2 ^ -24, 0x0001 },
      { 1.5 * 2 ^ -24, 0x0002 }, { 2.5 * 2 ^ -24, 0x0002 }, { 1023.5 * 2 ^ -24, 0x0400 }, { 2 ^ -14, 0x0400 },
      { 1 + 2 ^ -11, 0x3c00 }, { 1 + 3 * 2 ^ -11, 0x3c02 }, { -0.0, 0x8000 }, { math.huge, 0x7c00 },
      { -math.huge, 0xfc00 }, { 1e-30, 0 },
    }
    for _, c in ipairs(cases) do assert.are.equal(c[2], f16(c[1]), tostring(c[1])) end
    assert.are.equal(0x7e00, f16(0 / 0) % 0x8000)
  end)

  it("rounds float32 to BF16 to nearest even", function()
    local bf16 = safetensors.bf16_bits
    local cases = { { 1, 0x3f80 }, { 1 / 3, 0x3eab }, { 1 + 2 ^ -8, 0x3f80 }, { 1 + 3 * 2 ^ -8, 0x3f82 },
                    { -3, 0xc040 }, { math.huge, 0x7f80 }, { 3.4e38, 0x7f80 } }
    for _, c in ipairs(cases) do assert.are.equal(c[2], bf16(c[1]), tostring(c[1])) end
    local nan = bf16(0 / 0)
    assert.is_true(nan % 0x8000 > 0x7f80)
  end)

  it("round-trips every 16-bit pattern through the core's conversion", function()
    local dir = testing.tmpdir()
    for _, dtype in ipairs({ "F16", "BF16" }) do
      -- every finite pattern (the core refuses the others when reading)
      local inf_bits = dtype == "F16" and 0x7c00 or 0x7f80
      local words, n = ffi.new("uint16_t[65536]"), 0
      for i = 0, 65535 do
        if i % 0x8000 < inf_bits then words[n], n = i, n + 1 end
      end
      local path = dir .. "/all"
      write_file(path, ffi.string(words, 2 * n))
      local f = open(path)
      local out = ffi.new("float[?]", n)
      assert.are.equal(0, C.eapig_file_tensor(f, 0, 2 * n, C["EAPIG_DTYPE_" .. dtype], out, 1, n, 0))
      local encode = dtype == "F16" and safetensors.f16_bits or safetensors.bf16_bits
      local bad = 0
      for i = 0, n - 1 do
        if encode(out[i]) ~= words[i] then bad = bad + 1 end
      end
      assert.are.equal(0, bad, dtype)
    end
    testing.rmtree(dir)
  end)
end)
