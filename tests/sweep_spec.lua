-- eapig sweep: faithfulness at several circuit sizes, its SVG curve, and the CPR / CMD areas
-- against a direct trapezoid computation.
local tiny = require("support.tiny")
local eapig = require("eapig")
local sweep = require("eapig.sweep")
local plot = require("eapig.apps.plot")

-- Minimal XML well-formedness: every tag closes in order, attributes are quoted.
local function check_xml(text)
  local stack = {}
  local body = text:gsub("^<%?xml.-%?>", "")
  for slash, name, attrs, self_close in body:gmatch("<(/?)([%w:_-]+)(.-)(/?)>") do
    assert(not attrs:find("=[^\"]"), "unquoted attribute in <" .. name .. ">")
    if slash == "/" then
      assert.are.equal(name, table.remove(stack))
    elseif self_close ~= "/" then
      stack[#stack + 1] = name
    end
  end
  assert.are.equal(0, #stack)
end

describe("sweep", function()
  local model = tiny.model("llama", 4)
  local data = eapig.data.from_rows(tiny.rows(model, 8, 6, 5), { vocab = model.vocab })
  local graph = eapig.Graph.from_model(model)
  eapig.attribute(model, graph, data, "logit_diff", { method = "EAP-IG-inputs", ig_steps = 3, quiet = true })

  it("evaluate_graphs equals evaluate_graph of each graph (shared references, every intervention)", function()
    local evaluate = require("eapig.evaluate")
    local metrics = { "logit_diff", "kl_div" }
    for _, intervention in ipairs({ "patching", "zero", "mean" }) do
      local graphs, single = {}, {}
      for k, n in ipairs({ 0, 3, 20, graph:n_edges() }) do
        graphs[k] = graph:clone()
        graphs[k]:apply_topn(n)
      end
      local opts = { intervention = intervention, intervention_data = data, quiet = true, batch_size = 3 }
      for k = 1, #graphs do single[k] = evaluate.evaluate_graph(model, graphs[k]:clone(), data, metrics, opts) end
      local many = evaluate.evaluate_graphs(model, graphs, data, metrics, opts)
      assert.are.equal(#graphs, #many)
      for k = 1, #graphs do assert.are.same(single[k], many[k], intervention .. " graph " .. k) end
    end
    local selected, unselected = graph:clone(), eapig.Graph.from_model(model)
    selected:apply_topn(5)
    -- baselines = true: the model on the clean and corrupted inputs, from the same pass (under
    -- patching the corrupted values are the reference run's own logits)
    for _, intervention in ipairs({ "patching", "zero" }) do
      local opts = { intervention = intervention, quiet = true, batch_size = 3, baselines = true }
      local many, clean, corrupted = evaluate.evaluate_graphs(model, { selected:clone() }, data, metrics, opts)
      assert.are.same(evaluate.evaluate_graph(model, selected:clone(), data, metrics,
        { intervention = intervention, quiet = true, batch_size = 3 }), many[1])
      local want_clean = evaluate.evaluate_baseline(model, data, metrics, { batch_size = 3 })
      local want_corrupted = evaluate.evaluate_baseline(model, data, metrics, { batch_size = 3, run_corrupted = true })
      for i = 1, #metrics do
        for r = 1, #data do
          assert.are.equal(want_clean[i][r], clean[i][r])
          local w, got = want_corrupted[i][r], corrupted[i][r]
          assert.is_true(math.abs(got - w) <= 1e-5 * (1 + math.abs(w)), ("%s row %d: %g vs %g"):format(intervention, r, got, w))
        end
      end
    end
    assert.has_error(function() evaluate.evaluate_graphs(model, { selected, unselected }, data, "logit_diff") end,
      "evaluate_graphs: graph 2 has no edges selected: choose a circuit first with graph:apply_topn(n), "
      .. "apply_threshold(t) or apply_greedy(n) (apply_topn(0) evaluates the empty circuit on purpose)")
  end)

  for _, signed in ipairs({ false, true }) do
    it(("areas match the trapezoid rule (%s scores)"):format(signed and "signed" or "absolute"), function()
      local fractions = { 0.05, 0.1, 0.3, 1.0 }
      local r = sweep.run(model, graph, data, "logit_diff", { fractions = fractions, signed = signed, quiet = true })
      assert.are.equal(4, #r.points)
      assert.is_true(math.abs(r.points[4].y - 1) < 1e-5) -- the whole graph is the model
      local area = 0
      for i = 2, 4 do
        local a, b = r.points[i - 1], r.points[i]
        local fa, fb = a.y, b.y
        if not signed then fa, fb = math.abs(1 - fa), math.abs(1 - fb) end
        area = area + (b.x - a.x) * (fa + fb) / 2
      end
      local reported = signed and r.cpr or r.cmd
      assert.is_true(math.abs(reported - area) < 1e-12)
      assert.are.equal(signed and sweep.cpr(r.points) or sweep.cmd(r.points), reported)
      -- MIB's sizes: floor(fraction * edges)
      for i, frac in ipairs(fractions) do assert.are.equal(math.floor(frac * graph:n_edges()), r.points[i].n_edges) end
      -- each point is an evaluation of the top-n circuit of that size
      local g = graph:clone()
      g:apply_topn(r.points[2].n_edges, { absolute = not signed })
      local values = eapig.evaluate_graph(model, g, data, "logit_diff", { quiet = true })
      local f = eapig.faithfulness(values, r.clean, r.empty)
      assert.is_true(math.abs(f - r.points[2].y) < 1e-6)
    end)
  end

  it("measures both: CMD on absolute ranking, CPR on signed ranking, MIB's fractions by default", function()
    local r = sweep.run(model, graph, data, "logit_diff", { measure = "both", quiet = true })
    assert.are.same(sweep.DEFAULT_FRACTIONS, { 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0 })
    assert.are.equal(10, #r.points)
    assert.are.equal(10, #r.cpr_points)
    assert.are.equal(sweep.cmd(r.points), r.cmd)
    assert.are.equal(sweep.cpr(r.cpr_points), r.cpr)
    local abs = sweep.run(model, graph, data, "logit_diff", { fractions = { 0.3 }, quiet = true })
    local signed = sweep.run(model, graph, data, "logit_diff", { fractions = { 0.3 }, signed = true, quiet = true })
    local g = graph:clone()
    g:apply_topn(abs.points[1].n_edges, { absolute = false })
    local f = eapig.faithfulness(eapig.evaluate_graph(model, g, data, "logit_diff", { quiet = true }), r.clean, r.empty)
    assert.is_true(math.abs(f - signed.points[1].y) < 1e-6)
    -- fractions that round to no edge give the empty circuit: faithfulness 0
    assert.are.equal(0, r.points[1].n_edges)
    assert.are.equal(0, r.points[1].y)
  end)

  it("rejects an unknown option and measure", function()
    assert.has_error(function() sweep.run(model, graph, data, "logit_diff", { fraction = { 0.5 } }) end,
      "sweep: unknown option 'fraction' (did you mean 'fractions'?)")
    assert.has_error(function() sweep.run(model, graph, data, "logit_diff", { measure = "auc" }) end,
      "sweep: unknown measure 'auc' (expected cmd, cpr or both)")
  end)

  it("draws a well-formed SVG with one marker per point", function()
    local pts = { { x = 0.001, y = 0.1 }, { x = 0.01, y = 0.5 }, { x = 0.1, y = 0.9 }, { x = 1, y = 1 } }
    local svg = plot.svg(pts, { logx = true, title = "a <test> & more", xlabel = "x", ylabel = "y", hline = 1 })
    check_xml(svg)
    local n = 0
    for x in svg:gmatch('<circle class="point"[^>]-data%-x="([^"]+)"') do
      n = n + 1
      assert.are.equal(pts[n].x, tonumber(x))
    end
    assert.are.equal(4, n)
  end)

  it("rejects a size outside (0, 1]", function()
    assert.has_error(function() sweep.run(model, graph, data, "logit_diff", { fractions = { 2 }, quiet = true }) end,
      "sweep: size 2 is not a fraction of the edges in (0, 1]")
  end)
end)
