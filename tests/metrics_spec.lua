-- Metrics: built-in values by direct formulas, every gradient (built-ins and a user metric)
-- against central finite differences in double, the registry, and run's error messages.
local ffi = require("ffi")
local metrics = require("eapig.metrics")
local files = require("support.files")

local FIXTURES = os.getenv("EAPIG_FIXTURES") or "../shared/fixtures"

local H, TOL = 1e-5, 1e-7
local B, V = 3, 7

-- Deterministic logits in double (so finite differences need no float rounding care).
local function make_logits(seed)
  local buf = ffi.new("double[?]", B * V)
  local s = seed
  for i = 0, B * V - 1 do
    s = (s * 1103515245 + 12345) % 2147483648
    buf[i] = (s / 2147483648 - 0.5) * 6
  end
  return buf
end

local ROWS = {
  { correct = { 1 }, incorrect = { 4 } },
  { correct = { 0, 3 }, incorrect = { 2, 5, 6 } },
  { correct = { 6 }, incorrect = { 0, 1 } },
}

-- Checks grad_out (with grad_scale) against central differences of each row's value.
local function assert_fd(metric, rows, clean)
  local logits = make_logits(7)
  local grad = ffi.new("double[?]", B * V)
  for i = 0, B * V - 1 do grad[i] = 99 end -- must be overwritten
  local scale = -1 / B
  local base = metrics.run(metric, { logits = logits, clean_logits = clean, rows = rows, B = B, V = V,
    grad_out = grad, grad_scale = scale })
  assert.equal(B, #base)
  for b = 0, B - 1 do
    for i = 0, V - 1 do
      local k = b * V + i
      local x0 = logits[k]
      logits[k] = x0 + H
      local fp = metrics.run(metric, { logits = logits, clean_logits = clean, rows = rows, B = B, V = V })[b + 1]
      logits[k] = x0 - H
      local fm = metrics.run(metric, { logits = logits, clean_logits = clean, rows = rows, B = B, V = V })[b + 1]
      logits[k] = x0
      local numeric = scale * (fp - fm) / (2 * H)
      local err = math.abs(grad[k] - numeric) / math.max(1, math.abs(numeric))
      assert(err < TOL, ("%s row %d logit %d: analytic %.12g, numeric %.12g"):format(
        metrics.get(metric).name, b + 1, i, grad[k], numeric))
    end
  end
  return base
end

-- Direct formulas for the built-ins on one row (0-based ids into a Lua list of logits).
local function softmax(l)
  local m, z, p = -math.huge, 0, {}
  for _, v in ipairs(l) do m = math.max(m, v) end
  for i, v in ipairs(l) do p[i] = math.exp(v - m); z = z + p[i] end
  for i = 1, #l do p[i] = p[i] / z end
  return p
end

local function row_logits(buf, b)
  local l = {}
  for i = 0, V - 1 do l[i + 1] = buf[b * V + i] end
  return l
end

-- A user-written metric mixing ops: softmax-weighted logits, log-probabilities, max, logsumexp.
local user_metric = metrics.define {
  name = "weighted_margin",
  higher_is_better = true,
  fn = function(x)
    local l = x.logits
    local p = l:softmax()
    local correct = l:gather(x.row.correct)
    local expected_logit = (p * l):sum()
    local margin = correct:mean() - expected_logit / (1 + p:gather(x.row.incorrect):sum())
    return margin * l:max() - l:log_softmax():gather(x.row.incorrect):mean():exp():log() + l:logsumexp():pow(2) / V
  end,
}

-- A user metric that reads the clean logits: squared distance of probabilities, over V.
local user_clean = metrics.define {
  name = "prob_distance",
  higher_is_better = false,
  needs_clean = true,
  fn = function(x)
    local d = x.logits:softmax() - x.clean_logits:softmax()
    return (d * d):sum() / x.logits.n
  end,
}

describe("metrics", function()
  it("defines no globals", function() files.assert_no_globals("eapig.metrics") end)

  describe("gradients match central differences", function()
    it("logit_diff", function() assert_fd("logit_diff", ROWS) end)
    it("prob_diff", function() assert_fd("prob_diff", ROWS) end)
    it("kl_div", function() assert_fd("kl_div", ROWS, make_logits(11)) end)
    it("cross_entropy", function() assert_fd("cross_entropy", ROWS) end)
    it("prob_diff, greater-than form", function()
      local years = { 2, 3, 5, 6 }
      local rows = { { year_ids = years, label = 0 }, { year_ids = years, label = 2 }, { year_ids = years, label = 3 } }
      assert_fd("prob_diff", rows)
      assert_fd("prob_diff_greater_than", rows)
    end)
    it("a user-written metric", function() assert_fd(user_metric, ROWS) end)
    it("a user-written metric of the clean logits", function() assert_fd(user_clean, ROWS, make_logits(5)) end)
  end)

  describe("values", function()
    local logits = make_logits(3)
    local clean = make_logits(4)
    local function run(name, rows, c)
      return metrics.run(name, { logits = logits, clean_logits = c, rows = rows or ROWS, B = B, V = V })
    end

    it("logit_diff = mean correct logit - mean incorrect logit", function()
      local v = run("logit_diff")
      local l = row_logits(logits, 1)
      assert.near((l[1] + l[4]) / 2 - (l[3] + l[6] + l[7]) / 3, v[2], 1e-12)
    end)

    it("prob_diff = correct mass - incorrect mass", function()
      local v = run("prob_diff")
      local p = softmax(row_logits(logits, 1))
      assert.near(p[1] + p[4] - p[3] - p[6] - p[7], v[2], 1e-12)
    end)

    it("greater-than: mass above the label year - mass at or below it", function()
      local rows = {}
      for b = 1, B do rows[b] = { year_ids = { 0, 2, 4, 6 }, label = 1 } end
      local v = run("prob_diff", rows)
      local p = softmax(row_logits(logits, 0))
      assert.near(p[5] + p[7] - p[1] - p[3], v[1], 1e-12)
    end)

    it("kl_div = sum p_clean (log p_clean - log p) / V, and 0 against itself", function()
      local v = run("kl", ROWS, clean)
      local p, q = softmax(row_logits(logits, 2)), softmax(row_logits(clean, 2))
      local kl = 0
      for i = 1, V do kl = kl + q[i] * (math.log(q[i]) - math.log(p[i])) end
      assert.near(kl / V, v[3], 1e-12)
      assert.near(0, run("kl_div", ROWS, logits)[1], 1e-15)
    end)

    it("cross_entropy = -log p(first correct id)", function()
      local v = run("cross_entropy")
      local p = softmax(row_logits(logits, 1))
      assert.near(-math.log(p[1]), v[2], 1e-12)
    end)

    it("accuracy is 1 when the top logit is a correct id", function()
      local rows = {}
      for b = 0, B - 1 do
        local l = row_logits(logits, b)
        local top = 0
        for i = 1, V do if l[i] > l[top + 1] then top = i - 1 end end
        rows[b + 1] = { correct = b == 1 and { (top + 1) % V } or { top, (top + 1) % V } }
      end
      assert.same({ 1, 0, 1 }, run("accuracy", rows))
    end)

    it("reads float logits and writes float gradients", function()
      local f, g = ffi.new("float[?]", B * V), ffi.new("float[?]", B * V)
      for i = 0, B * V - 1 do f[i] = logits[i] end
      local v = metrics.run("logit_diff", { logits = f, rows = ROWS, B = B, V = V, grad_out = g, grad_scale = -1 })
      assert.near(run("logit_diff")[1], v[1], 1e-5)
      assert.near(-1, g[1], 1e-7) -- row 1: d(l[1] - l[4])/dl[1], negated
      assert.near(1, g[4], 1e-7)
      assert.equal(0, g[0])
    end)

    it("matches the fixtures' clean baseline (logit_diff on forward.json logits)", function()
      local f = io.open(FIXTURES .. "/gpt2-tiny/expected/forward.json")
      if not f then
        pending("fixtures absent at " .. FIXTURES .. ": skipping the reference comparison")
        return
      end
      local cjson = require("cjson")
      local fwd = cjson.decode(f:read("*a"))
      f:close()
      local ef = assert(io.open(FIXTURES .. "/gpt2-tiny/expected/evaluate-topn20-patching.json"))
      local expected = cjson.decode(ef:read("*a")).baseline_per_example
      ef:close()
      local rows = {}
      for line in io.lines(FIXTURES .. "/gpt2-tiny/data.jsonl") do rows[#rows + 1] = cjson.decode(line) end
      local n, vocab = #fwd.logits, #fwd.logits[1][1]
      local buf = ffi.new("float[?]", n * vocab)
      for b = 1, n do
        local last = fwd.logits[b][#fwd.logits[b]]
        for i = 1, vocab do buf[(b - 1) * vocab + i - 1] = last[i] end
      end
      local v = metrics.run("logit_diff", { logits = buf, rows = rows, B = n, V = vocab })
      for b = 1, n do assert.near(expected[b], v[b], 1e-4) end
    end)
  end)

  describe("registry", function()
    it("resolves names and the kl alias", function()
      assert.equal(metrics.get("kl_div"), metrics.get("kl"))
      assert.equal("logit_diff", metrics.get("logit_diff").name)
      assert.True(metrics.get("logit_diff").higher_is_better)
      assert.True(metrics.get("prob_diff").higher_is_better)
      assert.False(metrics.get("kl").higher_is_better)
      assert.True(metrics.get("kl").needs_clean)
      assert.True(metrics.get("accuracy").eval_only)
    end)

    it("an unknown name lists the known ones", function()
      local ok, err = pcall(metrics.get, "logit_dif")
      assert.False(ok)
      assert.truthy(err:find("unknown metric 'logit_dif'", 1, true))
      for _, name in ipairs({ "logit_diff", "prob_diff", "kl_div", "kl", "cross_entropy", "accuracy" }) do
        assert.truthy(err:find(name, 1, true), name)
      end
    end)

    it("define validates", function()
      local function err_of(def)
        local ok, e = pcall(metrics.define, def)
        assert.False(ok)
        return e
      end
      assert.truthy(err_of({ fn = function() end, higher_is_better = true }):find("'name'"))
      assert.truthy(err_of({ name = "m", higher_is_better = true }):find("'fn'"))
      assert.truthy(err_of({ name = "m", fn = function() end }):find("higher_is_better"))
      assert.truthy(err_of({ name = "m", fn = function() end, higher_is_better = true, needs_clena = true })
        :find("unknown field 'needs_clena'"))
      assert.truthy(tostring(user_clean):find("prob_distance"))
    end)

    it("a plain function is refused with advice", function()
      local ok, err = pcall(metrics.get, function() end)
      assert.False(ok)
      assert.truthy(err:find("metrics.define"))
    end)

    it("register makes a user metric available by name", function()
      metrics.register({ name = "spec_margin", higher_is_better = true, fn = user_metric.fn }, { "spec_alias" })
      assert.equal("spec_margin", metrics.get("spec_alias").name)
    end)
  end)

  describe("run errors", function()
    local logits = make_logits(9)
    it("accuracy refuses gradients", function()
      local ok, err = pcall(metrics.run, "accuracy", { logits = logits, rows = ROWS, B = B, V = V,
        grad_out = ffi.new("double[?]", B * V) })
      assert.False(ok)
      assert.truthy(err:find("accuracy is evaluation only"))
    end)

    it("kl without clean logits", function()
      local ok, err = pcall(metrics.run, "kl", { logits = logits, rows = ROWS, B = B, V = V })
      assert.False(ok)
      assert.truthy(err:find("kl_div needs clean logits"))
    end)

    it("NaN in a value names the metric and the row", function()
      local m = metrics.define { name = "log_of_logit", higher_is_better = true,
        fn = function(x) return x.logits:gather(x.row.correct[1]):log() end }
      local rows = { { correct = { 0 } }, { correct = { 0 } }, { correct = { 0 } } }
      local buf = ffi.new("double[?]", B * V, 1)
      buf[V] = -1 -- log(-1) on the second row
      local ok, err = pcall(metrics.run, m, { logits = buf, rows = rows, B = B, V = V, first = 5 })
      assert.False(ok)
      assert.truthy(err:find("metric log_of_logit, row 6 (batch row 2): value is nan", 1, true), err)
    end)

    it("a missing label names the metric, the row and the field", function()
      local rows = { ROWS[1], { correct = { 1 } }, ROWS[3] }
      local ok, err = pcall(metrics.run, "logit_diff", { logits = logits, rows = rows, B = B, V = V })
      assert.False(ok)
      assert.truthy(err:find("metric logit_diff, row 2: row has no 'incorrect' ids", 1, true), err)
    end)

    it("a bad greater-than label", function()
      local rows = {}
      for b = 1, B do rows[b] = { year_ids = { 1, 2 }, label = 2 } end
      local ok, err = pcall(metrics.run, "prob_diff", { logits = logits, rows = rows, B = B, V = V })
      assert.False(ok)
      assert.truthy(err:find("label", 1, true), err)
    end)

    it("a metric that does not return a tape scalar", function()
      local m = metrics.define { name = "vec", higher_is_better = true, fn = function(x) return x.logits end }
      local ok, err = pcall(metrics.run, m, { logits = logits, rows = ROWS, B = B, V = V })
      assert.False(ok)
      assert.truthy(err:find("vector of length 7", 1, true), err)
    end)

    it("rows must match B", function()
      local ok, err = pcall(metrics.run, "logit_diff", { logits = logits, rows = { ROWS[1] }, B = B, V = V })
      assert.False(ok)
      assert.truthy(err:find("B = 3"), err)
    end)
  end)
end)
