-- The per-batch arithmetic on activation buffers (core/activations.c) and the forward's in-place
-- difference capture, each against the plain formula it replaces, plus their invariants.
package.path = "./tests/?.lua;" .. package.path
local tiny = require("support.tiny")
local random = require("eapig.rng")
local core = require("eapig.core")
local ffi, C = core.ffi, core.C

local function random_floats(n, seed)
  local rng, x = random.new(seed), core.floats(n)
  for i = 0, n - 1 do x[i] = rng:normal() end
  return x
end

local f32 = require("support.tiny").f32 -- x rounded to float32

local function lengths_of(t)
  local l = core.int32s(#t)
  for i = 1, #t do l[i - 1] = t[i] end
  return l
end

local function assert_error(pattern, status)
  assert.are_not.equal(0, status)
  local msg = ffi.string(C.eapig_last_error())
  assert.is_truthy(msg:find(pattern), msg)
end

describe("activation arithmetic", function()
  it("interpolate writes base + alpha delta per node and step, also in place", function()
    local nodes, steps, blk = 3, 4, 10
    local base, delta = random_floats(nodes * blk, 1), random_floats(nodes * blk, 2)
    local alphas = core.floats(steps)
    for s = 0, steps - 1 do alphas[s] = 1 - s / steps end
    local out = core.floats(nodes * steps * blk)
    core.check(C.eapig_interpolate(out, base, delta, alphas, steps, nodes, blk))
    for j = 0, nodes - 1 do
      for s = 0, steps - 1 do
        for i = 0, blk - 1 do
          local want = base[j * blk + i] + alphas[s] * delta[j * blk + i]
          assert.is_true(math.abs(out[(j * steps + s) * blk + i] - want) < 1e-6)
        end
      end
    end
    -- in place with alpha -1 is base - delta, rounded once
    local copy = core.floats(nodes * blk)
    ffi.copy(copy, base, 4 * nodes * blk)
    local m1 = core.floats(1)
    m1[0] = -1
    core.check(C.eapig_interpolate(copy, copy, delta, m1, 1, 1, nodes * blk))
    for i = 0, nodes * blk - 1 do assert.are.equal(f32(base[i] - delta[i]), copy[i]) end
    assert_error("positive", C.eapig_interpolate(out, base, delta, alphas, 0, nodes, blk))
  end)

  it("node sums add every real position, over D or per position", function()
    local NF, B, P, D = 3, 2, 4, 5
    local lens = lengths_of({ 4, 2 })
    local cap = random_floats(NF * B * P * D, 3)
    local sums = ffi.new("double[?]", NF * D)
    local per = ffi.new("double[?]", NF * P * D)
    core.check(C.eapig_node_sums(sums, cap, lens, NF, B, P, D, 0))
    core.check(C.eapig_node_sums(per, cap, lens, NF, B, P, D, 1))
    for u = 0, NF - 1 do
      for d = 0, D - 1 do
        local want, over_p = 0, 0
        for b = 0, B - 1 do
          for p = 0, lens[b] - 1 do want = want + cap[((u * B + b) * P + p) * D + d] end
        end
        for p = 0, P - 1 do over_p = over_p + per[(u * P + p) * D + d] end
        assert.is_true(math.abs(sums[u * D + d] - want) < 1e-9)
        assert.is_true(math.abs(over_p - want) < 1e-9)
      end
    end
    lens[1] = 5
    assert_error("row 2 has length 5", C.eapig_node_sums(sums, cap, lens, NF, B, P, D, 0))
  end)

  it("broadcast means copies each node's mean to every row and position", function()
    local NF, B, P, D, MP = 2, 3, 2, 4, 3
    local means = random_floats(NF * MP * D, 4)
    local R = core.floats(NF * B * P * D)
    core.check(C.eapig_broadcast_means(R, means, NF, B, P, D, 0, 0))
    for u = 0, NF - 1 do
      for b = 0, B - 1 do
        for p = 0, P - 1 do
          for d = 0, D - 1 do assert.are.equal(means[u * D + d], R[((u * B + b) * P + p) * D + d]) end
        end
      end
    end
    core.check(C.eapig_broadcast_means(R, means, NF, B, P, D, 1, MP))
    for u = 0, NF - 1 do
      for b = 0, B - 1 do
        for p = 0, P - 1 do
          for d = 0, D - 1 do
            assert.are.equal(means[(u * MP + p) * D + d], R[((u * B + b) * P + p) * D + d])
          end
        end
      end
    end
    assert_error("4 positions but the means have 3", C.eapig_broadcast_means(R, means, NF, B, 4, D, 1, MP))
  end)

  it("flow importance normalises proximities: each row adds one in total", function()
    local NF, B, P, D = 4, 2, 3, 6
    local lens = lengths_of({ 3, 2 })
    local cap = random_floats(NF * B * P * D, 5)
    -- the reader's input: the sum of the sources, so proximities are mostly positive
    local x = core.floats(B * P * D)
    for u = 0, NF - 1 do
      for i = 0, B * P * D - 1 do x[i] = x[i] + cap[u * B * P * D + i] end
    end
    local imp = ffi.new("double[?]", NF)
    core.check(C.eapig_flow_importance(imp, x, cap, NF, lens, B, P, D))
    local total, want = 0, ffi.new("double[?]", NF)
    for b = 0, B - 1 do
      for p = 0, lens[b] - 1 do
        local xn, prox, sum = 0, {}, 0
        for d = 0, D - 1 do xn = xn + math.abs(x[(b * P + p) * D + d]) end
        for u = 0, NF - 1 do
          local dist = 0
          for d = 0, D - 1 do
            dist = dist + math.abs(cap[((u * B + b) * P + p) * D + d] - x[(b * P + p) * D + d])
          end
          prox[u] = math.max(0, xn - dist)
          sum = sum + prox[u]
        end
        for u = 0, NF - 1 do want[u] = want[u] + prox[u] / sum / lens[b] end
      end
    end
    for u = 0, NF - 1 do
      assert.are.equal(want[u], imp[u])
      total = total + imp[u]
    end
    assert.is_true(math.abs(total - B) < 1e-12, tostring(total))
  end)

  it("the forward's capture_diff turns a reference into R - output or output - R in place", function()
    local m = tiny.model("gpt2", 3)
    local batch = tiny.batch(m, { 4, 3 }, 4)
    local n = m.n_forward * m:block_size(batch.B, batch.P)
    local cap, R = core.floats(n), random_floats(n, 6)
    m:forward(batch, { capture = cap, no_logits = true })
    local plus, minus = core.floats(n), core.floats(n)
    ffi.copy(plus, R, 4 * n)
    ffi.copy(minus, R, 4 * n)
    m:forward(batch, { capture = plus, capture_diff = 1, no_logits = true })
    m:forward(batch, { capture = minus, capture_diff = -1, no_logits = true })
    for i = 0, n - 1 do
      assert.are.equal(f32(R[i] - cap[i]), plus[i])
      assert.are.equal(f32(cap[i] - R[i]), minus[i])
    end
    assert.has_error(function() m:forward(batch, { capture = plus, capture_diff = 2, no_logits = true }) end)
    assert.has_error(function() m:forward(batch, { capture_diff = 1, no_logits = true }) end)
  end)
end)
