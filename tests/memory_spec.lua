-- Memory budget (lua/eapig/memory.lua, eapig_workspace_bytes): estimates grow with the batch,
-- the budget chooses how many integrated-gradient steps share a run (and the scores do not
-- depend on that choice), a run that cannot fit fails before it starts with the estimate, and
-- `eapig info --memory` / `attribute --verbose` print the phases.
local ffi = require("ffi")
local core = require("eapig.core")
local eapig = require("eapig")
local memory = require("eapig.memory")
local testing = require("eapig.testing")

local C = core.C

local function dataset(vocab, n)
  local rows = {}
  for i = 1, n do
    local clean, corrupted = {}, {}
    for p = 1, 6 do
      clean[p] = (5 * i + 3 * p) % vocab
      corrupted[p] = p == 2 and (clean[p] + 7) % vocab or clean[p]
    end
    rows[i] = { clean = clean, corrupted = corrupted, correct = (i * 11) % vocab, incorrect = (i * 3 + 1) % vocab }
  end
  return eapig.data.from_rows(rows)
end

-- Output and whether the command exited 0.
local function run_cli(args)
  local out, rc = require("support.shell").run("scripts/eapig " .. args)
  return out, rc == 0
end

describe("memory budget", function()
  local dir, model
  setup(function()
    dir = testing.random_model({ family = "llama", kv_heads = 2, layers = 2, d_model = 32, vocab = 64 })
    model = eapig.load(dir, { weights = "f32" })
  end)
  teardown(function() testing.rmtree(dir) end)

  it("the engine's workspace estimate grows with rows, positions, kept state and patching", function()
    local function ws(B, P, diff_B, flags) return tonumber(C.eapig_workspace_bytes(model.handle, B, P, diff_B, flags)) end
    assert.is_true(ws(2, 8, 0, 0) < ws(4, 8, 0, 0))
    assert.is_true(ws(2, 8, 0, 0) < ws(2, 16, 0, 0))
    assert.is_true(ws(2, 8, 0, 0) < ws(2, 8, 0, C.EAPIG_RUN_KEEP))
    assert.is_true(ws(2, 8, 0, 0) < ws(2, 8, 0, C.EAPIG_RUN_PATCH))
    assert.is_true(ws(4, 8, 2, C.EAPIG_RUN_KEEP) > 0)
    assert.are.equal(-1, ws(3, 8, 2, C.EAPIG_RUN_KEEP)) -- 3 rows are not whole steps of 2
    assert.matches("diff_B 2", ffi.string(C.eapig_last_error()))
    -- a stored model's runs add its converted layer
    local stored = eapig.load(dir, { weights = "stored" })
    local view = tonumber(C.eapig_weights_view_bytes(stored.cfg))
    assert.are.equal(ws(2, 8, 0, 0) + view, tonumber(C.eapig_workspace_bytes(stored.handle, 2, 8, 0, 0)))
  end)

  it("a reserved workspace gives the runs made in it the same results as a fresh one", function()
    local other = eapig.load(dir, { weights = "f32" })
    local data = dataset(64, 3)
    local batch
    for b in data:batches(3) do batch = b end
    local clean = require("eapig.runs").engine_batches(batch)
    local NF, NB = model.n_forward, model.n_backward
    local function scores(m, reserve)
      if reserve then m:reserve(4 * 3, batch.P, 3, C.EAPIG_RUN_KEEP) end
      local out = core.floats(NF * NB)
      local diff = m:nodes_buffer(3, batch.P)
      m:forward(clean, { capture = diff }) -- a small run first, then backward runs of 3 rows
      local logits = m:forward(clean, { logit_pos = batch.last_pos, keep = true })
      local dlogits = core.floats(3 * m.vocab)
      for i = 0, 3 * m.vocab - 1 do dlogits[i] = ((i * 7) % 13 - 6) / 13 end
      m:backward(dlogits, { diff = diff, scores = out })
      return out, logits
    end
    local a, la = scores(model, true)
    local b, lb = scores(other, false)
    assert.are.equal(0, require("support.tiny").max_abs_diff(la, lb, 3 * model.vocab))
    assert.are.equal(0, require("support.tiny").max_abs_diff(a, b, NF * NB))
    -- bad shapes are refused with the entry point named, as eapig_workspace_bytes refuses them
    assert.are.equal(C.EAPIG_ERR_ARG, C.eapig_workspace_reserve(model.workspace, model.handle, 3, 8, 2, C.EAPIG_RUN_KEEP))
    assert.matches("eapig_workspace_reserve: bad batch %(3, 8%) or diff_B 2", ffi.string(C.eapig_last_error()))
    assert.are.equal(C.EAPIG_ERR_ARG, C.eapig_workspace_reserve(nil, model.handle, 2, 8, 0, 0))
    other:free()
  end)

  it("estimates have the three phases, and stored weights need less than f32", function()
    local e = memory.estimate(model, { B = 4, P = 16, method = "EAP-IG-inputs", steps = 5, steps_per_run = 2 })
    assert.are.equal(e.total, e.weights + e.activations + e.scores)
    assert.are.equal(tonumber(C.eapig_weights_f32_bytes(model.cfg)), e.weights)
    local more = memory.estimate(model, { B = 4, P = 16, method = "EAP-IG-inputs", steps = 5, steps_per_run = 4 })
    assert.is_true(more.activations > e.activations)
    for _, method in ipairs(require("eapig.attribute").METHODS) do
      assert.is_true(memory.estimate(model, { B = 2, P = 8, method = method }).activations > 0)
    end
    assert.is_true(memory.estimate(model, { B = 2, P = 8, method = "evaluate" }).activations > 0)
  end)

  it("the budget sets the steps per run; the scores do not depend on it", function()
    local opts = { B = 3, P = 6, method = "EAP-IG-inputs", steps = 5 }
    local all = memory.steps_per_run(model, opts, 2 ^ 40)
    assert.are.equal(4, all) -- the first of 5 steps is the corrupted run itself
    local one_step = memory.estimate(model, { B = 3, P = 6, method = "EAP-IG-inputs", steps = 5, steps_per_run = 1 })
    assert.are.equal(1, memory.steps_per_run(model, opts, one_step.total + 1))
    local data = dataset(64, 3)
    for _, method in ipairs({ "EAP-IG-inputs", "EAP-IG-activations" }) do
      local o = { B = 3, P = 6, method = method, steps = 5 }
      local tight = memory.estimate(model, { B = 3, P = 6, method = method, steps = 5, steps_per_run = 1 }).total
      assert.are.equal(1, memory.steps_per_run(model, o, tight + 1))
      local ga, gb = eapig.Graph.from_model(model), eapig.Graph.from_model(model)
      eapig.attribute(model, ga, data, "logit_diff", { method = method, quiet = true })
      eapig.attribute(model, gb, data, "logit_diff", { method = method, quiet = true, memory = (tight + 1) / memory.GiB })
      local n, d, m = model.n_forward * model.n_backward, 0, 0
      for i = 0, n - 1 do
        d = math.max(d, math.abs(ga.scores[i] - gb.scores[i]))
        m = math.max(m, math.abs(ga.scores[i]))
      end
      assert(d <= 1e-5 * m, ("%s: one step per run differs by %g (largest %g)"):format(method, d, m))
    end
  end)

  it("per-batch buffers: with_batch returns fn's results, frees what it allocated, passes errors on", function()
    local kept = core.batch_floats(4) -- outside a batch: collected as usual
    local a, b = core.with_batch(function(x)
      local buf = core.batch_floats(1000)
      buf[999] = x
      local inner = core.with_batch(function() return core.batch_floats(10)[9] + buf[999] end)
      return buf[999], inner
    end, 2.5)
    assert.are.same({ 2.5, 2.5 }, { a, b })
    assert.has_error(function() core.with_batch(function() core.batch_floats(8) error("boom", 0) end) end, "boom")
    kept[3] = 1
    assert.are.equal(1, kept[3])
    assert.is_true(C.eapig_floats_new(-1) == nil)
    assert.matches("bad size", ffi.string(C.eapig_last_error()))
  end)

  it("a run that cannot fit fails before it starts, with the estimate", function()
    local g = eapig.Graph.from_model(model)
    local ok, err = pcall(eapig.attribute, model, g, dataset(64, 4), "logit_diff", { quiet = true, memory = 1e-6 })
    assert.is_false(ok)
    assert.matches("attribute: needs about .* %(weights .*, activations .* for 4 rows x 6 positions, scores .*%) but "
      .. "the memory budget is", err)
    for i = 0, model.n_forward * model.n_backward - 1 do assert.are.equal(0, g.scores[i]) end
    g:apply_topn(0) -- the empty circuit, on purpose
    ok, err = pcall(eapig.evaluate_graph, model, g, dataset(64, 4), "logit_diff", { quiet = true, memory = 1e-6 })
    assert.is_false(ok)
    assert.matches("evaluate: needs about", err)
    assert.has_error(function() memory.budget(-1) end, "memory budget must be a positive number of GiB, got -1")
  end)

  it("eapig info --memory prints weights, activations and scores; attribute --verbose the phases", function()
    local out, ok = run_cli(("info --model %s --memory --batch-size 4 --seq-len 32"):format(dir))
    assert.is_truthy(ok, out)
    assert.matches("memory estimate: 4 rows x 32 positions, EAP%-IG%-inputs %(5 steps, 4 per run%)", out)
    for _, phase in ipairs({ "weights", "activations", "scores", "total", "evaluate" }) do
      assert.matches("\n  " .. phase .. " ", out)
    end
    out = run_cli(("info --model %s --memory 0.000001 --weights stored"):format(dir))
    assert.matches("does NOT fit", out)
    assert.matches("stored F32", out)
    local data = dir .. "/d.jsonl"
    local f = assert(io.open(data, "wb"))
    f:write('{"clean": [1, 2, 3, 4], "corrupted": [1, 5, 3, 4], "correct": 7, "incorrect": 9}\n')
    f:close()
    out, ok = run_cli(("attribute --model %s --data %s --out %s/g.json --verbose --quiet"):format(dir, data, dir))
    assert.is_truthy(ok, out)
    for _, phase in ipairs({ "load model", "load data", "attribute", "write graph" }) do
      assert.matches("phase " .. phase .. " +[%d.]+ s +peak RSS [%d.]+ [KMG]iB", out)
    end
    out, ok = run_cli(("attribute --model %s --data %s --out %s/h.json --memory 0.000001"):format(dir, data, dir))
    assert.is_falsy(ok)
    assert.matches("eapig: attribute: needs about", out)
    assert.is_nil(io.open(dir .. "/h.json", "rb"))
  end)
end)
