-- eapig.rng: the one generator, both algorithms, and its checks.
local rng = require("eapig.rng")

describe("eapig.rng", function()
  it("splitmix64 is the default and is tasks.rng", function()
    local a, b = rng.new(42), require("eapig.tasks").rng(42)
    for _ = 1, 50 do assert.equal(a:below(1000), b:below(1000)) end
    local c, d = rng.new(7), rng.new(7, "splitmix64")
    for _ = 1, 50 do assert.equal(c:uniform(), d:uniform()) end
  end)

  it("xorshift32 is Marsaglia's 13/17/5 shift on 32-bit words", function()
    -- the same shifts on plain integers, from the seeded state
    local r = rng.new(3, "xorshift32")
    local x = r.x -- the seeded state
    local function step(v)
      local function xor(p, q) -- p xor q for 0 <= p, q < 2^32
        local out, bitv = 0, 1
        for _ = 1, 32 do
          if (p % 2) ~= (q % 2) then out = out + bitv end
          p, q, bitv = math.floor(p / 2), math.floor(q / 2), bitv * 2
        end
        return out
      end
      v = xor(v, (v * 2 ^ 13) % 2 ^ 32)
      v = xor(v, math.floor(v / 2 ^ 17))
      return xor(v, (v * 2 ^ 5) % 2 ^ 32)
    end
    local v = x % 2 ^ 32
    for _ = 1, 20 do
      v = step(v)
      assert.equal(v / 2 ^ 32, r:uniform())
    end
  end)

  it("draws in range, normals with mean 0 and variance 1", function()
    for _, alg in ipairs({ "splitmix64", "xorshift32" }) do
      local r = rng.new(1, alg)
      local s, ss, n = 0, 0, 20000
      for _ = 1, n do
        local b = r:below(7)
        assert.truthy(b >= 0 and b < 7 and b == math.floor(b))
        local z = r:normal()
        s, ss = s + z, ss + z * z
      end
      assert.is_true(math.abs(s / n) < 0.05, alg)
      assert.is_true(math.abs(ss / n - 1) < 0.05, alg)
      local p = r:shuffle({ 1, 2, 3, 4, 5, 6 })
      table.sort(p)
      assert.same({ 1, 2, 3, 4, 5, 6 }, p)
    end
  end)

  it("refuses bad seeds and unknown algorithms", function()
    assert.has_error(function() rng.new(-1) end, "eapig.rng: seed must be a non-negative integer, got -1")
    assert.has_error(function() rng.new(1.5) end)
    assert.has_error(function() rng.new(1, "mt19937") end,
      "eapig.rng: unknown algorithm 'mt19937' (splitmix64 or xorshift32)")
    assert.has_error(function() rng.new(1):below(0) end)
  end)
end)
