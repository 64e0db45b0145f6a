-- eapig.rng: the one random generator of eapig. A seed gives the same numbers on every machine
-- and LuaJIT build (math.random's sequence depends on both), and each user draws from its own
-- generator, so one part's draws never move another's.
--
--   local rng = require("eapig.rng")
--   local r = rng.new(42)
--   r:below(10)   -- an integer in [0, 10)
--   r:int(1, 6)   -- an integer in [1, 6]
--   r:uniform()   -- a number in [0, 1)
--   r:normal()    -- a standard normal number (Box-Muller)
--   r:pick(list), r:sample(list, k), r:shuffle(list)
--
-- Two algorithms, one API:
--   "splitmix64" (the default): 64-bit state in a uint64 box (draws allocate nothing), 53-bit
--       uniforms; the tasks' datasets, Dataset:shuffle and everything else draw from it.
--   "xorshift32": xorshift32 on LuaJIT's 32-bit bit operations. Training's data stream
--       (eapig.apps.train, the induction task's training and held-out batches) keeps it because
--       the committed model models/induction-2l was trained from it: its MODEL.md command
--       reproduces the weights bit for bit only with this stream.
local ffi = require("ffi")
local bit = require("bit")

local bxor, lshift, rshift, tobit = bit.bxor, bit.lshift, bit.rshift, bit.tobit
local floor, sqrt, log, cos, pi = math.floor, math.sqrt, math.log, math.cos, math.pi
local format = string.format

local rng = {}

-- Methods every algorithm shares, written on its uniform() and below(n).
local function shared_methods(m)
  -- An integer in [lo, hi].
  function m:int(lo, hi) return lo + self:below(hi - lo + 1) end

  -- A standard normal number: Box-Muller on two uniforms (the cosine half).
  function m:normal()
    local u = self:uniform()
    if u < 1e-300 then u = 1e-300 end
    return sqrt(-2 * log(u)) * cos(2 * pi * self:uniform())
  end

  -- One element of a non-empty list.
  function m:pick(list)
    if #list == 0 then error("rng:pick: the list is empty", 2) end
    return list[1 + self:below(#list)]
  end

  -- k distinct elements of list (k <= #list), in random order; the list is not changed.
  function m:sample(list, k)
    if k > #list then error(format("rng:sample: %d elements asked for, the list has %d", k, #list), 2) end
    local pool = {}
    for i = 1, #list do pool[i] = list[i] end
    local out = {}
    for i = 1, k do -- partial Fisher-Yates
      local j = i + self:below(#pool - i + 1)
      pool[i], pool[j] = pool[j], pool[i]
      out[i] = pool[i]
    end
    return out
  end

  -- Shuffles list in place (Fisher-Yates) and returns it.
  function m:shuffle(list)
    for i = #list, 2, -1 do
      local j = 1 + self:below(i)
      list[i], list[j] = list[j], list[i]
    end
    return list
  end
  m.__index = m
  return m
end

---------------------------------------------------------------------------------------------------
-- splitmix64

local SplitMix = {}
local GOLDEN = 0x9E3779B97F4A7C15ULL

local function next64(self)
  local s = self.state[0] + GOLDEN
  self.state[0] = s
  local z = bxor(s, rshift(s, 30)) * 0xBF58476D1CE4E5B9ULL
  z = bxor(z, rshift(z, 27)) * 0x94D049BB133111EBULL
  return bxor(z, rshift(z, 31))
end

-- An integer in [0, n) (n < 2^32; the modulo bias is below 2^-32).
function SplitMix:below(n)
  if n < 1 then error("rng:below: n must be at least 1", 2) end
  return tonumber(next64(self) % n)
end

-- A uniform number in [0, 1) with 53 random bits.
function SplitMix:uniform() return tonumber(rshift(next64(self), 11)) / 9007199254740992 end

shared_methods(SplitMix)

---------------------------------------------------------------------------------------------------
-- xorshift32

local XorShift = {}

local function mix32(z)
  z = tobit(z)
  z = bxor(z, rshift(z, 16))
  z = tobit(z * 0x45d9f3b % 4294967296)
  z = bxor(z, rshift(z, 16))
  z = tobit(z * 0x45d9f3b % 4294967296)
  return bxor(z, rshift(z, 16))
end

-- A uniform number in [0, 1) with 32 random bits.
function XorShift:uniform()
  local x = self.x
  x = bxor(x, lshift(x, 13))
  x = bxor(x, rshift(x, 17))
  x = bxor(x, lshift(x, 5))
  self.x = x
  return (x % 4294967296) / 4294967296
end

-- An integer in [0, n): floor(uniform() * n).
function XorShift:below(n)
  if n < 1 then error("rng:below: n must be at least 1", 2) end
  return floor(self:uniform() * n)
end

shared_methods(XorShift)

---------------------------------------------------------------------------------------------------

local ALGORITHMS = {
  splitmix64 = function(seed) return setmetatable({ state = ffi.new("uint64_t[1]", seed) }, SplitMix) end,
  xorshift32 = function(seed)
    local x = mix32(seed * 2654435761 % 4294967296 + 0x9e3779b9)
    if x == 0 then x = 0x2545f491 end
    return setmetatable({ x = x }, XorShift)
  end,
}

-- A generator seeded with seed (a non-negative integer, default 0); algorithm "splitmix64"
-- (default) or "xorshift32".
function rng.new(seed, algorithm)
  seed = seed or 0
  if type(seed) ~= "number" or seed ~= floor(seed) or seed < 0 or seed >= 2 ^ 53 then
    error("eapig.rng: seed must be a non-negative integer, got " .. tostring(seed), 2)
  end
  local make = ALGORITHMS[algorithm or "splitmix64"]
  if not make then
    error(format("eapig.rng: unknown algorithm '%s' (splitmix64 or xorshift32)", tostring(algorithm)), 2)
  end
  return make(seed)
end

return rng
