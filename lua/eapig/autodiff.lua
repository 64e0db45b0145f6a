-- Reverse-mode differentiation over small vectors, so metrics can be plain Lua functions of the
-- logits and eapig still gets d(metric)/d(logits) for the backward pass (DESIGN "Metrics").
--
-- A tape records every operation as it runs (eager forward). backward() then walks the records
-- in reverse creation order, which is already a topological order. Values and gradients live in
-- double arrays: a metric reads V float logits once, and everything after that runs in double
-- so finite-difference checks can be tight.
--
-- Indices are 0-based everywhere, like token ids and FFI arrays: logits:gather{5} is the logit
-- of token 5. Scalars are vectors of length 1; a Lua number mixed into an op becomes a constant
-- scalar. Binary ops broadcast a length-1 side against the other side.
--
-- Glossary: n = length of a vector, g = gradient flowing into a node, a/b = its inputs.
local ffi = require("ffi")

local double_array = ffi.typeof("double[?]")
local int32_array = ffi.typeof("int32_t[?]")
local exp, log, floor, huge = math.exp, math.log, math.floor, math.huge
local type, error, setmetatable, getmetatable, tostring = type, error, setmetatable, getmetatable, tostring
local pairs = pairs
local concat, format = table.concat, string.format

local M = {}

local Vec = {}
Vec.__index = Vec

local Tape = {}
Tape.__index = Tape

local backward_of = {} -- op name -> function(node) adding node's gradient into its inputs'

---------------------------------------------------------------------------------------------------
-- Tape: node list and a pool of arrays by length, so a metric evaluated row after row reuses the
-- same few V-long buffers instead of allocating (and garbage-collecting) them per row.

function M.tape()
  return setmetatable({ nodes = {}, count = 0, pool = {} }, Tape)
end

function Tape:alloc(n)
  local free = self.pool[n]
  if free then
    local k = #free
    if k > 0 then
      local arr = free[k]
      free[k] = nil
      return arr
    end
  end
  -- at least one slot: a zero-length gather still needs a valid pointer
  return double_array(n > 0 and n or 1)
end

function Tape:release(n, arr)
  local free = self.pool[n]
  if not free then
    free = {}
    self.pool[n] = free
  end
  free[#free + 1] = arr
end

-- Forgets every node and keeps their arrays for reuse. Vectors from before the reset are dead.
function Tape:reset()
  local nodes = self.nodes
  for k = 1, self.count do
    local v = nodes[k]
    self:release(v.n, v.val)
    if v.grad then self:release(v.n, v.grad) end
    v.val, v.grad = nil, nil
    nodes[k] = nil
  end
  self.count = 0
end

local function new_node(tape, n, op, a, b)
  local needs = (a ~= nil and a.needs_grad) or (b ~= nil and b.needs_grad) or false
  local v = setmetatable({ tape = tape, n = n, val = tape:alloc(n), op = op, a = a, b = b,
    needs_grad = needs }, Vec)
  local id = tape.count + 1
  tape.count = id
  tape.nodes[id] = v
  v.id = id
  return v
end

-- Copies src (a cdata pointer/array of n numbers, a Lua list, or a number) into a fresh node.
local function leaf(tape, src, n, needs_grad, what)
  local ts = type(src)
  if ts == "number" then
    n = 1
  elseif ts == "table" then
    n = n or #src
  elseif ts == "cdata" then
    if type(n) ~= "number" then error("autodiff: " .. what .. " from a pointer needs its length", 3) end
  else
    error("autodiff: " .. what .. " needs a cdata pointer, a Lua list or a number, got " .. ts, 3)
  end
  if n < 1 or n ~= floor(n) then error("autodiff: " .. what .. ": bad length " .. tostring(n), 3) end
  local v = new_node(tape, n, what)
  v.needs_grad = needs_grad
  local val = v.val
  if ts == "number" then
    val[0] = src
  elseif ts == "table" then
    for i = 0, n - 1 do
      local x = src[i + 1]
      if type(x) ~= "number" then error(format("autodiff: %s: element %d is not a number", what, i + 1), 3) end
      val[i] = x
    end
  else
    for i = 0, n - 1 do val[i] = src[i] end
  end
  return v
end

-- A vector the result is differentiated with respect to.
function Tape:input(src, n) return leaf(self, src, n, true, "input") end

-- A vector treated as fixed data (no gradient).
function Tape:constant(src, n) return leaf(self, src, n, false, "constant") end

function Tape:scalar(x)
  if type(x) ~= "number" then error("autodiff: scalar needs a number, got " .. type(x), 2) end
  return leaf(self, x, 1, false, "constant")
end

-- Fills .grad of every node that y depends on with dy/dnode, scaled by seed (default 1).
-- Gradients are recomputed from zero on each call.
function Tape:backward(y, seed)
  if getmetatable(y) ~= Vec or y.tape ~= self then error("autodiff: backward needs a vector of this tape", 2) end
  if y.val == nil then error("autodiff: vector used after its tape was reset", 2) end
  if y.n ~= 1 then error("autodiff: backward needs a scalar (length 1), got length " .. y.n, 2) end
  local nodes = self.nodes
  for k = 1, y.id do
    local v = nodes[k]
    if v.needs_grad then
      if not v.grad then v.grad = self:alloc(v.n) end
      ffi.fill(v.grad, 8 * v.n)
    end
  end
  if not y.needs_grad then return end
  y.grad[0] = seed or 1
  for k = y.id, 1, -1 do
    local v = nodes[k]
    local back = backward_of[v.op]
    if v.needs_grad and back then back(v) end
  end
end

---------------------------------------------------------------------------------------------------
-- Argument handling

local function live(v)
  if v.val == nil then error("autodiff: vector used after its tape was reset", 3) end
  return v
end

local function is_vec(x) return getmetatable(x) == Vec end

-- Turns (a, b) where either may be a Lua number into two vectors of one tape.
local function coerce(a, b, name)
  local va, vb = is_vec(a), is_vec(b)
  if va and vb then
    if a.tape ~= b.tape then error("autodiff: " .. name .. ": vectors from different tapes", 3) end
    return live(a), live(b)
  elseif va and type(b) == "number" then
    return live(a), a.tape:scalar(b)
  elseif vb and type(a) == "number" then
    return b.tape:scalar(a), live(b)
  end
  error(format("autodiff: %s needs vectors or numbers, got %s and %s", name, type(a), type(b)), 3)
end

local function check_vec(a, name)
  if not is_vec(a) then error("autodiff: " .. name .. " needs a vector, got " .. type(a), 3) end
  return live(a)
end

-- Result length and per-side strides (0 for a broadcast scalar, else 1).
local function broadcast(a, b, name)
  local n = a.n
  if a.n == b.n then return n, 1, 1 end
  if a.n == 1 then return b.n, 0, 1 end
  if b.n == 1 then return n, 1, 0 end
  error(format("autodiff: %s: lengths %d and %d differ (use equal lengths or a scalar)", name, a.n, b.n), 3)
end

---------------------------------------------------------------------------------------------------
-- Elementwise binary ops

local function binary(op, a, b)
  a, b = coerce(a, b, op)
  local n, sa, sb = broadcast(a, b, op)
  local v = new_node(a.tape, n, op, a, b)
  v.sa, v.sb = sa, sb
  return v
end

-- Forward of each elementwise binary op: Vec.add, Vec.sub, Vec.mul, Vec.div (and the operators).
local BINARY = {
  add = function(x, y) return x + y end,
  sub = function(x, y) return x - y end,
  mul = function(x, y) return x * y end,
  div = function(x, y) return x / y end,
}
for op, f in pairs(BINARY) do
  Vec[op] = function(a, b)
    local v = binary(op, a, b)
    local out, x, y, sa, sb = v.val, v.a.val, v.b.val, v.sa, v.sb
    for i = 0, v.n - 1 do out[i] = f(x[i * sa], y[i * sb]) end
    return v
  end
  Vec["__" .. op] = Vec[op]
end

-- Backward of add (sign_b = 1) and sub (sign_b = -1): g goes to a as it is, to b times sign_b.
local function pass_gradient(v, sign_b)
  local g, sa, sb = v.grad, v.sa, v.sb
  if v.a.needs_grad then
    local ga = v.a.grad
    for i = 0, v.n - 1 do ga[i * sa] = ga[i * sa] + g[i] end
  end
  if v.b.needs_grad then
    local gb = v.b.grad
    for i = 0, v.n - 1 do gb[i * sb] = gb[i * sb] + sign_b * g[i] end
  end
end

backward_of.add = function(v) pass_gradient(v, 1) end
backward_of.sub = function(v) pass_gradient(v, -1) end

backward_of.mul = function(v)
  local g, x, y, sa, sb = v.grad, v.a.val, v.b.val, v.sa, v.sb
  if v.a.needs_grad then
    local ga = v.a.grad
    for i = 0, v.n - 1 do ga[i * sa] = ga[i * sa] + g[i] * y[i * sb] end
  end
  if v.b.needs_grad then
    local gb = v.b.grad
    for i = 0, v.n - 1 do gb[i * sb] = gb[i * sb] + g[i] * x[i * sa] end
  end
end

backward_of.div = function(v)
  local g, out, y, sa, sb = v.grad, v.val, v.b.val, v.sa, v.sb
  if v.a.needs_grad then
    local ga = v.a.grad
    for i = 0, v.n - 1 do ga[i * sa] = ga[i * sa] + g[i] / y[i * sb] end
  end
  if v.b.needs_grad then
    -- d(x/y)/dy = -(x/y)/y
    local gb = v.b.grad
    for i = 0, v.n - 1 do gb[i * sb] = gb[i * sb] - g[i] * out[i] / y[i * sb] end
  end
end

---------------------------------------------------------------------------------------------------
-- Elementwise unary ops

local function unary(op, a)
  a = check_vec(a, op)
  return new_node(a.tape, a.n, op, a)
end

-- Forward of each elementwise unary op without a parameter: Vec.neg (and unary minus), Vec.exp,
-- Vec.log.
local UNARY = {
  neg = function(x) return -x end,
  exp = exp,
  log = log,
}
for op, f in pairs(UNARY) do
  Vec[op] = function(a)
    local v = unary(op, a)
    local out, x = v.val, v.a.val
    for i = 0, v.n - 1 do out[i] = f(x[i]) end
    return v
  end
end
Vec.__unm = Vec.neg

backward_of.neg = function(v)
  local g, ga = v.grad, v.a.grad
  for i = 0, v.n - 1 do ga[i] = ga[i] - g[i] end
end

backward_of.exp = function(v)
  local g, ga, out = v.grad, v.a.grad, v.val
  for i = 0, v.n - 1 do ga[i] = ga[i] + g[i] * out[i] end
end

backward_of.log = function(v)
  local g, ga, x = v.grad, v.a.grad, v.a.val
  for i = 0, v.n - 1 do ga[i] = ga[i] + g[i] / x[i] end
end

-- a^p for a fixed Lua number p (x*x is mul(x, x)).
function Vec.pow(a, p)
  if type(p) ~= "number" then error("autodiff: pow needs a number exponent, got " .. type(p), 2) end
  local v = unary("pow", a)
  v.p = p
  local out, x = v.val, v.a.val
  for i = 0, v.n - 1 do out[i] = x[i] ^ p end
  return v
end

backward_of.pow = function(v)
  local g, ga, x, p = v.grad, v.a.grad, v.a.val, v.p
  for i = 0, v.n - 1 do ga[i] = ga[i] + g[i] * p * x[i] ^ (p - 1) end
end

---------------------------------------------------------------------------------------------------
-- Reductions (each returns a scalar)

-- x[0] + ... + x[n-1], in index order.
local function total(x, n)
  local s = 0
  for i = 0, n - 1 do s = s + x[i] end
  return s
end

function Vec.sum(a)
  a = check_vec(a, "sum")
  local v = new_node(a.tape, 1, "sum", a)
  v.val[0] = total(a.val, a.n)
  return v
end

backward_of.sum = function(v)
  local ga, g = v.a.grad, v.grad[0]
  for i = 0, v.a.n - 1 do ga[i] = ga[i] + g end
end

-- Mean of a zero-length vector (an empty gather) is NaN, as in PyTorch; callers check values.
function Vec.mean(a)
  a = check_vec(a, "mean")
  local v = new_node(a.tape, 1, "mean", a)
  v.val[0] = total(a.val, a.n) / a.n
  return v
end

backward_of.mean = function(v)
  local ga, g = v.a.grad, v.grad[0] / v.a.n
  for i = 0, v.a.n - 1 do ga[i] = ga[i] + g end
end

local function argmax_of(x, n)
  local best, arg = -huge, 0
  for i = 0, n - 1 do
    local xi = x[i]
    if xi > best then best, arg = xi, i end
  end
  return arg, best
end

-- Largest element; the gradient goes to the first position that attains it.
function Vec.max(a)
  a = check_vec(a, "max")
  local v = new_node(a.tape, 1, "max", a)
  local arg, best = argmax_of(a.val, a.n)
  v.arg = arg
  v.val[0] = best
  return v
end

backward_of.max = function(v)
  local ga = v.a.grad
  ga[v.arg] = ga[v.arg] + v.grad[0]
end

-- log(sum(exp(x))) shifted by the maximum so large logits do not overflow.
local function logsumexp_of(x, n)
  local _, m = argmax_of(x, n)
  if m == -huge or m ~= m then return m end
  local s = 0
  for i = 0, n - 1 do s = s + exp(x[i] - m) end
  return m + log(s)
end

function Vec.logsumexp(a)
  a = check_vec(a, "logsumexp")
  local v = new_node(a.tape, 1, "logsumexp", a)
  v.val[0] = logsumexp_of(a.val, a.n)
  return v
end

backward_of.logsumexp = function(v)
  local ga, x, g, lse = v.a.grad, v.a.val, v.grad[0], v.val[0]
  for i = 0, v.a.n - 1 do ga[i] = ga[i] + g * exp(x[i] - lse) end
end

---------------------------------------------------------------------------------------------------
-- Normalisations over the whole vector

function Vec.log_softmax(a)
  local v = unary("log_softmax", a)
  local out, x = v.val, v.a.val
  local lse = logsumexp_of(x, v.n)
  for i = 0, v.n - 1 do out[i] = x[i] - lse end
  return v
end

-- d/dx_i sum_j g_j (x_j - lse) = g_i - softmax_i * sum_j g_j
backward_of.log_softmax = function(v)
  local g, ga, out, n = v.grad, v.a.grad, v.val, v.n
  local sg = 0
  for i = 0, n - 1 do sg = sg + g[i] end
  for i = 0, n - 1 do ga[i] = ga[i] + g[i] - exp(out[i]) * sg end
end

function Vec.softmax(a)
  local v = unary("softmax", a)
  local out, x = v.val, v.a.val
  local lse = logsumexp_of(x, v.n)
  for i = 0, v.n - 1 do out[i] = exp(x[i] - lse) end
  return v
end

-- d/dx_i sum_j g_j p_j = p_i (g_i - sum_j g_j p_j)
backward_of.softmax = function(v)
  local g, ga, p, n = v.grad, v.a.grad, v.val, v.n
  local d = 0
  for i = 0, n - 1 do d = d + g[i] * p[i] end
  for i = 0, n - 1 do ga[i] = ga[i] + p[i] * (g[i] - d) end
end

---------------------------------------------------------------------------------------------------
-- Selection

-- Picks elements by 0-based index: ids is a number or a Lua list of numbers (repeats allowed).
function Vec.gather(a, ids)
  a = check_vec(a, "gather")
  if type(ids) == "number" then ids = { ids } end
  if type(ids) ~= "table" then error("autodiff: gather needs an index or a list of indices, got " .. type(ids), 2) end
  local k = #ids
  local idx = int32_array(k > 0 and k or 1)
  for j = 1, k do
    local id = ids[j]
    if type(id) ~= "number" or id ~= floor(id) or id < 0 or id >= a.n then
      error(format("autodiff: gather: index %s (entry %d) outside [0, %d)", tostring(id), j, a.n), 2)
    end
    idx[j - 1] = id
  end
  local v = new_node(a.tape, k, "gather", a)
  v.idx = idx
  local out, x = v.val, a.val
  for j = 0, k - 1 do out[j] = x[idx[j]] end
  return v
end

backward_of.gather = function(v)
  local g, ga, idx = v.grad, v.a.grad, v.idx
  for j = 0, v.n - 1 do
    local i = idx[j]
    ga[i] = ga[i] + g[j]
  end
end

-- A constant copy: the value flows on, the gradient stops here.
function Vec.detach(a)
  a = check_vec(a, "detach")
  local v = new_node(a.tape, a.n, "constant")
  v.needs_grad = false
  ffi.copy(v.val, a.val, 8 * a.n)
  return v
end

---------------------------------------------------------------------------------------------------
-- Reading results (plain Lua numbers; no tape records)

-- Element i (0-based, default 0: a scalar's value).
function Vec.value(a, i)
  a = check_vec(a, "value")
  i = i or 0
  if i < 0 or i >= a.n then error(format("autodiff: value: index %d outside [0, %d)", i, a.n), 2) end
  return a.val[i]
end

-- Gradient element i after tape:backward (0 where the result does not depend on this vector).
function Vec.grad_at(a, i)
  a = check_vec(a, "grad_at")
  i = i or 0
  if i < 0 or i >= a.n then error(format("autodiff: grad_at: index %d outside [0, %d)", i, a.n), 2) end
  return a.grad and a.grad[i] or 0
end

-- 0-based index of the largest element (first one on ties).
function Vec.argmax(a)
  a = check_vec(a, "argmax")
  return (argmax_of(a.val, a.n))
end

function Vec.len(a) return a.n end

function Vec.totable(a)
  a = check_vec(a, "totable")
  local t = {}
  for i = 0, a.n - 1 do t[i + 1] = a.val[i] end
  return t
end

function Vec.__tostring(a)
  if a.val == nil then return "[autodiff vector (reset)]" end
  local shown = {}
  for i = 0, (a.n < 6 and a.n or 6) - 1 do shown[#shown + 1] = format("%.6g", a.val[i]) end
  if a.n > 6 then shown[#shown + 1] = "..." end
  return format("[autodiff vector %s n=%d: %s]", a.op, a.n, concat(shown, ", "))
end

-- Every op is also a module function: ad.log_softmax(x), ad.add(x, 1).
for name, f in pairs(Vec) do
  if type(f) == "function" and name:sub(1, 2) ~= "__" then M[name] = f end
end
M.is_vector = is_vec
M.Tape, M.Vector = Tape, Vec

return M
