-- The main job on the committed induction model: the heads found from attention patterns, and
-- the known mechanism in the circuit EAP-IG-inputs selects (measured: previous-token head a0.h1,
-- induction head a1.h2, faithfulness 0.978 at 50% of the 110 edges).
describe("demo on the embedded induction model", function()
  local demo = require("eapig.demo")
  local r = demo.run({ quiet = true })

  it("finds a previous-token head in layer 0 and an induction head in layer 1", function()
    assert.is_true(r.prev_score > 0.5, tostring(r.prev_score))
    assert.is_true(r.ind_score > 0.5, tostring(r.ind_score))
  end)

  it("selects a circuit holding prev-token -> induction <k> and induction -> logits", function()
    assert.is_true(r.k_edge_found, r.k_edge)
    assert.is_true(r.out_edge_found, r.out_edge)
    assert.is_true(r.faithfulness > 0.8, tostring(r.faithfulness))
    assert.is_true(r.circuit_fraction <= 0.5)
  end)

  it("the model does induction: clean logit_diff far above corrupted", function()
    assert.is_true(r.clean - r.corrupted > 2, ("%g vs %g"):format(r.clean, r.corrupted))
  end)
end)
