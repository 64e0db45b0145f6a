-- `eapig demo [--out DIR] [--model PATH]`: eapig's main job on the embedded induction model.
-- Finds the circuit with EAP-IG-inputs, evaluates it at several sizes and checks it against the
-- mechanism the model was trained into, identified independently from attention patterns.
local cli = require("eapig.cli")

local function fmt_scores(by_layer, L, H)
  local lines = {}
  for l = 0, L - 1 do
    local cells = {}
    for h = 0, H - 1 do cells[#cells + 1] = ("h%d %.2f"):format(h, by_layer[l][h]) end
    lines[#lines + 1] = ("    layer %d: %s"):format(l, table.concat(cells, "  "))
  end
  return table.concat(lines, "\n")
end

return function(argv)
  local parser = cli.parser("demo", "Find the induction circuit of the embedded model and check it.",
    "Writes circuit.json, circuit.svg and curve.svg into --out.")
  parser:option("--out", "Folder for the output files (created when missing).", "."):argname("DIR")
  parser:option("--model", "Another induction-trained model folder (default: the embedded one)."):argname("PATH")
  parser:option("--rows", "Dataset rows.", "64"):argname("N"):convert(cli.integer("--rows", 1, 100000))
  parser:flag("--quiet", "No progress bar.")
  local args = cli.parse(parser, argv, "demo")
  local out = args.out:gsub("(.)/$", "%1")
  require("eapig.formats.files").mkdir_p(out, "demo --out")
  cli.check_writable(out .. "/circuit.json")

  local demo = require("eapig.apps.demo")
  local r = demo.run({ model = args.model, rows = args.rows, quiet = args.quiet })
  local model, info = r.model, r.model:info()
  print(("eapig demo: %s (%s, %d layers, %d heads, d_model %d, vocab %d)"):format(r.path, info.family,
    info.n_layers, info.n_heads, info.d_model, info.vocab))
  print(("graph: %d nodes, %d edges; dataset: %d induction rows (clean: a repeated segment; corrupted: first copy re-drawn)")
    :format(r.graph.n_forward + 1, r.graph:n_edges(), #r.data))
  print("\nheads from attention patterns (independent of attribution)")
  print("  previous-token score (attention to the previous position):")
  print(fmt_scores(r.head_scores.prev, model.n_layers, model.n_heads))
  print("  induction score (attention to the token after the earlier occurrence):")
  print(fmt_scores(r.head_scores.induction, model.n_layers, model.n_heads))
  print("  output norm (what the head writes; heads near 0 do nothing and are not picked):")
  print(fmt_scores(r.head_scores.output, model.n_layers, model.n_heads))
  print(("  -> previous-token head a0.h%d (%.2f), induction head a1.h%d (%.2f)"):format(r.prev_head, r.prev_score,
    r.ind_head, r.ind_score))

  print(("\nlogit_diff: clean %.3f, corrupted %.3f"):format(r.clean, r.corrupted))
  print("faithfulness of the top-n circuit (EAP-IG-inputs, 5 steps, absolute scores):")
  for _, p in ipairs(r.curve.points) do
    print(("  %6.1f%% of edges (%4d): %.3f"):format(100 * p.x, p.n_edges, p.y))
  end
  print(("  CMD (area under |1 - faithfulness|): %.4f"):format(r.curve.cmd))
  print("\ntop edges by |score|:")
  for i, e in ipairs(r.top_edges) do print(("  %2d. %-22s %+.4f"):format(i, e.name, e.score)) end

  print(("\ncircuit: the smallest size keeping faithfulness >= %.1f: %.0f%% of edges, %d kept after pruning, "
    .. "faithfulness %.3f"):format(demo.TARGET_FAITHFULNESS, 100 * r.circuit_fraction, r.circuit:count_included_edges(),
    r.faithfulness))
  print(("  %s  %s (previous-token head -> induction head's keys; rank %d of %d by |score|)"):format(
    r.k_edge_found and "[x]" or "[ ]", r.k_edge, r.k_edge_rank, r.graph:n_edges()))
  print(("  %s  %s (induction head -> logits; rank %d)"):format(r.out_edge_found and "[x]" or "[ ]", r.out_edge,
    r.out_edge_rank))
  print(r.found and "known induction mechanism FOUND" or "known induction mechanism NOT found")

  local drawn, err = demo.write_files(r, out)
  print(("\nwrote %s/circuit.json, %s/curve.svg%s"):format(out, out,
    drawn and (", " .. out .. "/circuit.svg") or (" (circuit.svg skipped: " .. tostring(err) .. ")")))
  return r.found and 0 or 1
end
