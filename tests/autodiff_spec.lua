-- Reverse-mode tape: every op's gradient against central finite differences in double, values
-- against direct formulas, and the error messages a metric author will see.
local ffi = require("ffi")
local ad = require("eapig.autodiff")
local files = require("support.files")

local H = 1e-5   -- central-difference step; truncation error ~H^2, rounding ~1e-16/H
local TOL = 1e-7 -- max |analytic - numeric| / max(1, |analytic|)

-- Analytic gradient of build(tape, x) (a scalar) at x0, and its central-difference estimate.
local function gradients(build, x0)
  local t = ad.tape()
  local x = t:input(x0)
  local y = build(t, x)
  t:backward(y)
  local analytic = {}
  for i = 1, #x0 do analytic[i] = x:grad_at(i - 1) end
  local numeric = {}
  for i = 1, #x0 do
    local xp, xm = { unpack(x0) }, { unpack(x0) }
    xp[i], xm[i] = x0[i] + H, x0[i] - H
    local tp, tm = ad.tape(), ad.tape()
    local fp = build(tp, tp:input(xp)):value()
    local fm = build(tm, tm:input(xm)):value()
    numeric[i] = (fp - fm) / (2 * H)
  end
  return analytic, numeric, y:value()
end

local function assert_grad(build, x0)
  local analytic, numeric = gradients(build, x0)
  for i = 1, #x0 do
    local err = math.abs(analytic[i] - numeric[i]) / math.max(1, math.abs(analytic[i]))
    assert(err < TOL, ("d/dx[%d]: analytic %.12g, numeric %.12g"):format(i - 1, analytic[i], numeric[i]))
  end
end

local X = { 0.3, -1.2, 2.5, 0.7, -0.4 }
local POS = { 0.5, 1.7, 2.2, 0.9, 3.1 } -- for log, pow and division

describe("autodiff", function()
  it("defines no globals", function() files.assert_no_globals("eapig.autodiff") end)

  describe("gradients match central differences", function()
    local cases = {
      { "sum", X, function(_, x) return x:sum() end },
      { "mean", X, function(_, x) return x:mean() end },
      { "neg", X, function(_, x) return (-x):gather(2) end },
      { "exp", X, function(_, x) return x:exp():sum() end },
      { "log", POS, function(_, x) return x:log():sum() end },
      { "pow", POS, function(_, x) return x:pow(2.5):sum() end },
      { "max", X, function(_, x) return x:max() * 3 end },
      { "logsumexp", X, function(_, x) return x:logsumexp() end },
      { "softmax (weighted)", X, function(t, x) return (x:softmax() * t:constant({ 1, -2, 3, 0.5, 4 })):sum() end },
      { "log_softmax (weighted)", X, function(t, x)
        return (x:log_softmax() * t:constant({ 2, 1, -1, 0, 3 })):sum()
      end },
      { "gather with repeats", X, function(_, x)
        return x:gather({ 4, 1, 4, 0 }):mul(x:gather({ 2, 2, 3, 1 })):sum()
      end },
      { "vector + vector", X, function(_, x) return (x + x:exp()):sum() end },
      { "vector - vector", X, function(_, x) return (x:exp() - x * x):sum() end },
      { "vector * vector", X, function(_, x) return (x * x:softmax()):sum() end },
      { "vector / vector", POS, function(_, x) return (x:exp() / x):sum() end },
      { "vector op number", POS, function(_, x) return ((x + 2) * 3 - 1):div(4):sum() end },
      { "number op vector", POS, function(_, x) return (2 / x + (1 - x) * 0.5):sum() end },
      { "vector op scalar", POS, function(_, x) return (x / x:sum() - x * x:max() + x:mean()):sum() end },
      { "scalar op vector", POS, function(_, x) return (x:sum() / x):mean() * (x:gather(1) - x):sum() end },
      { "scalar op scalar", POS, function(_, x)
        return x:gather(0) * x:gather(1) / x:gather(2) - x:gather(3) + x:gather(4)
      end },
      { "composite", X, function(_, x)
        local lp = x:log_softmax()
        return (lp:exp() * lp):sum():neg() + x:logsumexp():pow(2) - x:softmax():gather({ 0, 2 }):sum():log()
      end },
    }
    for _, case in ipairs(cases) do
      it(case[1], function() assert_grad(case[3], case[2]) end)
    end
  end)

  describe("values", function()
    it("log_softmax and softmax are normalised, stable for large logits", function()
      local t = ad.tape()
      local x = t:input({ 1000, 1001, 999 })
      local p = x:softmax()
      assert.near(1, p:sum():value(), 1e-12) -- x - lse near 1000 keeps ~13 digits
      local e = math.exp
      local z = e(0) + e(1) + e(-1)
      assert.near(e(1) / z, p:value(1), 1e-12)
      assert.near(1 - math.log(z), x:log_softmax():value(1), 1e-12)
      assert.near(1000 + math.log(z), x:logsumexp():value(), 1e-12)
    end)

    it("reads float and double pointers with an explicit length", function()
      local f = ffi.new("float[3]", { 0.5, 1.5, -2 })
      local d = ffi.new("double[3]", { 0.1, 0.2, 0.3 })
      local t = ad.tape()
      assert.equal(0, t:input(f, 3):sum():value())
      assert.near(0.6, t:constant(d + 0, 3):sum():value(), 1e-15)
      assert.equal(2, t:scalar(2):value())
    end)

    it("argmax, totable, tostring", function()
      local t = ad.tape()
      local x = t:input({ 1, 5, 5, 2 })
      assert.equal(1, x:argmax())
      assert.same({ 1, 5, 5, 2 }, x:totable())
      assert.truthy(tostring(x):find("n=4"))
    end)

    it("module functions mirror the methods", function()
      local t = ad.tape()
      local x = t:input({ 1, 2 })
      assert.equal(5, ad.add(ad.sum(x), 2):value())
    end)

    it("a reset tape reuses its arrays without stale values or gradients", function()
      local t = ad.tape()
      local function once()
        local x = t:input(X)
        local y = (x:softmax() * x):sum()
        t:backward(y)
        local g = {}
        for i = 1, #X do g[i] = x:grad_at(i - 1) end
        return y:value(), g
      end
      local v1, g1 = once()
      t:reset()
      local v2, g2 = once()
      assert.equal(v1, v2)
      assert.same(g1, g2)
    end)

    it("backward with a seed scales every gradient, and a second call does not accumulate", function()
      local t = ad.tape()
      local x = t:input(X)
      local y = x:exp():sum()
      t:backward(y, -0.5)
      t:backward(y, -0.5)
      assert.near(-0.5 * math.exp(X[1]), x:grad_at(0), 1e-15)
    end)

    it("detach passes the value and stops the gradient", function()
      local t = ad.tape()
      local x = t:input(X)
      local y = (x * x:detach()):sum()
      t:backward(y)
      for i = 1, #X do assert.equal(X[i], x:grad_at(i - 1)) end
    end)

    it("inputs unrelated to the result get zero gradients", function()
      local t = ad.tape()
      local x, z = t:input({ 1, 2 }), t:input({ 3 })
      local y = x:sum()
      t:backward(y)
      assert.equal(0, z:grad_at(0))
      assert.equal(1, x:grad_at(1))
    end)
  end)

  describe("errors", function()
    local t = ad.tape()
    local x = t:input({ 1, 2, 3 })
    it("length mismatch", function()
      assert.has_error(function() return x + t:input({ 1, 2 }) end,
        "autodiff: add: lengths 3 and 2 differ (use equal lengths or a scalar)")
    end)
    it("gather outside the vector", function()
      local ok, err = pcall(x.gather, x, { 0, 3 })
      assert.False(ok)
      assert.truthy(err:find("index 3 (entry 2) outside [0, 3)", 1, true))
    end)
    it("backward on a non-scalar", function()
      local ok, err = pcall(t.backward, t, x)
      assert.False(ok)
      assert.truthy(err:find("needs a scalar"))
    end)
    it("vectors of different tapes", function()
      local ok, err = pcall(function() return x * ad.tape():input({ 1, 2, 3 }) end)
      assert.False(ok)
      assert.truthy(err:find("different tapes"))
    end)
    it("a vector used after reset", function()
      local t2 = ad.tape()
      local y = t2:input({ 1 })
      t2:reset()
      local ok, err = pcall(function() return y:exp() end)
      assert.False(ok)
      assert.truthy(err:find("after its tape was reset"))
    end)
    it("bad operands", function()
      assert.has_error(function() return x + "a" end)
      assert.has_error(function() return t:input(ffi.new("float[2]")) end)
      assert.has_error(function() return x:pow(x) end)
    end)
  end)
end)
