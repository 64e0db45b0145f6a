-- The main job on the committed induction model: the heads found from attention patterns, and
-- the known mechanism in the circuit EAP-IG-inputs selects. The model was trained attention-only
-- with a head-sparsity penalty (its MODEL.md), so a circuit of at most 10% of the edges keeps
-- faithfulness >= 0.8 (measured: 11 edges selected, 10 after pruning, of 110; faithfulness 0.958;
-- the mechanism's two edges ranked 10th and 1st by |score|).
local files = require("support.files")

describe("demo on the embedded induction model", function()
  local demo = require("eapig.apps.demo")
  local r = demo.run({ quiet = true })

  it("finds a previous-token head in layer 0 and an induction head in layer 1", function()
    assert.is_true(r.prev_score > 0.5, tostring(r.prev_score))
    assert.is_true(r.ind_score > 0.5, tostring(r.ind_score))
  end)

  it("selects a circuit of at most 10% of the edges holding prev-token -> induction <k> and induction -> logits",
    function()
      assert.is_true(r.k_edge_found, r.k_edge)
      assert.is_true(r.out_edge_found, r.out_edge)
      assert.is_true(r.faithfulness >= demo.TARGET_FAITHFULNESS, tostring(r.faithfulness))
      assert.is_true(r.circuit_fraction <= demo.MAX_FRACTION, tostring(r.circuit_fraction))
      assert.is_true(r.circuit:count_included_edges() <= demo.MAX_FRACTION * r.graph:n_edges())
      -- both edges rank within the selected top-n
      assert.is_true(r.k_edge_rank <= r.n_circuit, tostring(r.k_edge_rank))
      assert.is_true(r.out_edge_rank <= r.n_circuit, tostring(r.out_edge_rank))
    end)

  it("the model does induction: clean logit_diff far above corrupted", function()
    assert.is_true(r.clean - r.corrupted > 2, ("%g vs %g"):format(r.clean, r.corrupted))
  end)

  it("draws circuit.svg and curve.svg, each with a title and a legend", function()
    local p = io.popen("mktemp -d")
    local dir = p:read("*l")
    p:close()
    local drawn, err = demo.write_files(r, dir)
    local curve = files.read(dir .. "/curve.svg")
    assert.truthy(curve:find("Faithfulness of the induction circuit against its size", 1, true))
    assert.truthy(curve:find('<g class="legend">', 1, true))
    assert.truthy(curve:find("top-n edges by |EAP-IG score|", 1, true))
    assert.truthy(files.read(dir .. "/circuit.json"):find('"in_graph": true', 1, true))
    local has_dot = os.execute("command -v dot >/dev/null 2>&1")
    if has_dot == 0 or has_dot == true then
      assert.is_true(drawn, tostring(err))
      local svg = files.read(dir .. "/circuit.svg")
      assert.truthy(svg:find("Induction circuit of induction&#45;2l", 1, true) or svg:find("Induction circuit of induction-2l", 1, true))
      assert.truthy(svg:find("edges into", 1, true)) -- the legend's heading
      assert.truthy(svg:find("a head&#39;s key", 1, true) or svg:find("a head's key", 1, true))
    else
      assert.is_false(drawn)
    end
    os.execute("rm -rf '" .. dir .. "'")
  end)
end)
