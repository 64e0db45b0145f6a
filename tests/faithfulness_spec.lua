-- Faithfulness as MIB defines it, f = (m(C) - m(empty)) / (m(N) - m(empty)), under every
-- intervention: the empty circuit scores 0 and the full circuit 1, and under patching the empty
-- circuit is the corrupted run.
local tiny = require("support.tiny")
local eapig = require("eapig")
local evaluate = require("eapig.evaluate")

local function close(a, b, tol, what)
  assert(math.abs(a - b) <= tol, ("%s: %.9g vs %.9g"):format(what or "value", a, b))
end

describe("faithfulness", function()
  local model = tiny.model("gpt2", 11)
  local data = eapig.data.from_rows(tiny.rows(model, 5, 6, 5), { vocab = model.vocab })
  local mean = evaluate.mean
  local clean = mean(eapig.evaluate_baseline(model, data, "logit_diff"))

  for _, intervention in ipairs({ "patching", "zero", "mean", "mean-positional" }) do
    it("is 0 for the empty circuit and 1 for the full one under " .. intervention, function()
      local opts = { intervention = intervention, intervention_data = data, quiet = true }
      local empty = mean(evaluate.evaluate_empty(model, data, "logit_diff", opts))
      assert.are_not.equal(clean, empty)

      local g = eapig.Graph.from_model(model)
      g:apply_topn(0) -- the empty circuit, on purpose
      local value = mean(eapig.evaluate_graph(model, g, data, "logit_diff", opts))
      close(value, empty, 1e-5, "empty circuit through evaluate_graph")
      close(eapig.faithfulness(value, clean, empty), 0, 1e-5, "faithfulness of the empty circuit")

      g:reset(false) -- every edge in
      local full = mean(eapig.evaluate_graph(model, g, data, "logit_diff", opts))
      close(full, clean, 1e-5, "full circuit")
      close(eapig.faithfulness(full, clean, empty), 1, 1e-5, "faithfulness of the full circuit")
    end)
  end

  it("takes the corrupted run as the empty circuit under patching", function()
    local corrupted = mean(eapig.evaluate_baseline(model, data, "logit_diff", { run_corrupted = true }))
    local empty = mean(evaluate.evaluate_empty(model, data, "logit_diff", { quiet = true }))
    close(empty, corrupted, 1e-4 * (1 + math.abs(corrupted)), "empty circuit vs corrupted run")
  end)

  it("differs from the corrupted run under zero ablation (the reason for m(empty))", function()
    local corrupted = mean(eapig.evaluate_baseline(model, data, "logit_diff", { run_corrupted = true }))
    local empty = mean(evaluate.evaluate_empty(model, data, "logit_diff", { intervention = "zero", quiet = true }))
    assert.is_true(math.abs(empty - corrupted) > 1e-3)
  end)

  it("takes EAP-IG's skip_clean: the same values, and metrics that read the clean run still get it", function()
    local g = eapig.Graph.from_model(model)
    eapig.attribute(model, g, data, "logit_diff", { method = "EAP", quiet = true })
    g:apply_topn(20)
    local a = eapig.evaluate_graph(model, g, data, { "logit_diff", "kl_div" }, { quiet = true })
    local b = eapig.evaluate_graph(model, g, data, { "logit_diff", "kl_div" }, { quiet = true, skip_clean = false })
    assert.are.same(a, b)
    assert.is_true(a[2][1] > 0) -- kl_div against the clean run: the circuit changes the output
  end)

  it("is undefined when the model and the empty circuit agree", function()
    assert.has_error(function() eapig.faithfulness(0.5, 1, 1) end,
      "faithfulness: the model and the empty circuit score the same, so faithfulness is undefined " ..
      "(check the baselines: the model may not do the task, or the intervention changes nothing)")
  end)
end)
