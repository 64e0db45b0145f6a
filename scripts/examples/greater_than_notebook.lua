-- EAP-IG's greater_than.ipynb, ported cell by cell: the same steps, in the same order, with the
-- same names (Graph, attribute, evaluate_graph, evaluate_baseline, apply_topn, to_json, to_image,
-- count_included_*). Each "-- [cell]" comment quotes the notebook's line it ports.
--
--   eapig run scripts/examples/greater_than_notebook.lua MODEL TOKENIZER [DATA.csv]
--       [--n 200] [--batch 120] [--steps 5] [--topn 200] [--out DIR]
--
-- MODEL is a GPT-2-family checkpoint folder, TOKENIZER its tokenizer (a folder with
-- tokenizer.json or GPT-2's encoder.json + vocab.bpe). DATA.csv is EAP-IG's greater_than_data.csv
-- (columns clean, corrupted, label); without it the script writes one with --n rows from
-- eapig.tasks.greater_than and reads that, as the notebook reads its CSV. Writes graph.json and
-- graph.png (when Graphviz is installed) into --out.
local argparse = require("argparse")

-- [cell] from eap.graph import Graph; from eap.evaluate import evaluate_graph, evaluate_baseline;
--        from eap.attribute import attribute
local eapig = require("eapig")
local Graph = eapig.Graph
local attribute, evaluate_graph, evaluate_baseline = eapig.attribute, eapig.evaluate_graph, eapig.evaluate_baseline
local mean = require("eapig.evaluate").mean -- torch's .mean().item()

local parser = argparse("eapig run scripts/examples/greater_than_notebook.lua",
  "EAP-IG's greater-than notebook, ported to eapig.")
parser:argument("model", "Model folder (Hugging Face, GPT-2 family).")
parser:argument("tokenizer", "Tokenizer folder or file (GPT-2's).")
parser:argument("data", "EAP-IG's greater_than_data.csv (default: generate one).", nil):args("?")
parser:option("--n", "Rows to generate when no CSV is given.", "200"):convert(tonumber)
parser:option("--batch", "Batch size (the notebook's dataloader: 120).", "120"):convert(tonumber)
parser:option("--steps", "Integrated-gradient steps.", "5"):convert(tonumber)
parser:option("--topn", "Edges to keep (the notebook: 200).", "200"):convert(tonumber)
parser:option("--out", "Folder for graph.json, graph.png (and the generated CSV).", ".")
local args = parser:parse(arg)
os.execute("mkdir -p '" .. args.out:gsub("'", "'\\''") .. "'")

-- ## Dataset and Metrics

-- [cell] class EAPDataset: reads the CSV; __getitem__ gives (clean, corrupted, label).
-- eapig's Dataset tokenizes the text with the model's tokenizer and, like TransformerLens,
-- puts the BOS token first.
local function EAPDataset(filepath, tokenizer)
  return eapig.data.load_csv(filepath, { tokenizer = tokenizer, bos = tokenizer.bos_id ~= nil, labels = { "label" } })
end

-- [cell] def get_prob_diff(tokenizer):
--            year_indices = torch.tensor([tokenizer(f'{year:02d}').input_ids[0] for year in range(100)])
--            def prob_diff(logits, clean_logits, input_length, labels, mean=True, loss=False):
--                probs = torch.softmax(logits, dim=-1)[:, year_indices]
--                results.append(prob[year + 1 :].sum() - prob[: year + 1].sum())
-- A metric here is a function of one row's logits at its last position; eapig differentiates it
-- for attribution and negates it into the loss itself (higher_is_better), so the notebook's
-- mean= and loss= switches are not needed.
local function get_prob_diff(tokenizer)
  local year_indices = {}
  for year = 0, 99 do year_indices[year + 1] = tokenizer:encode(("%02d"):format(year), { bos = false })[1] end
  return eapig.metrics.define {
    name = "prob_diff", higher_is_better = true,
    fn = function(x)
      local probs = x.logits:softmax()
      local year = x.row.label
      local above, upto = {}, {}
      for i, id in ipairs(year_indices) do
        if i - 1 > year then above[#above + 1] = id else upto[#upto + 1] = id end
      end
      local result = -probs:gather(upto):sum()
      if #above > 0 then result = probs:gather(above):sum() + result end
      return result
    end,
  }
end

-- ## Performing EAP-IG

-- [cell] model = HookedTransformer.from_pretrained(model_name); model.cfg.use_split_qkv_input = True ...
local model = eapig.load(args.model)
local tokenizer = eapig.tokenizer.load(args.tokenizer)
print(model)

local csv = args.data
if not csv then -- the notebook ships greater_than_data.csv; here it is written from the task generator
  csv = args.out .. "/greater_than_data.csv"
  local gt = require("eapig.tasks.greater_than")
  gt.write_csv(gt.generate(tokenizer, { n = args.n, seed = 0 }), csv)
end
-- [cell] ds = EAPDataset('greater_than_data.csv'); dataloader = ds.to_dataloader(120)
local ds = EAPDataset(csv, tokenizer)
print(ds)
-- [cell] prob_diff = get_prob_diff(model.tokenizer)
local prob_diff = get_prob_diff(tokenizer)

-- [cell] g = Graph.from_model(model)
local g = Graph.from_model(model)

-- [cell] attribute(model, g, dataloader, partial(prob_diff, loss=True, mean=True), method='EAP-IG-inputs', ig_steps=5)
attribute(model, g, ds, prob_diff, "EAP-IG-inputs", { ig_steps = args.steps, batch_size = args.batch })

-- [cell] g.apply_topn(200, True); g.to_json('graph.json')
-- (a small test model has fewer than 200 edges: then all of them)
local topn = math.min(args.topn, g:n_edges())
g:apply_topn(topn, true)
g:to_json(args.out .. "/graph.json")

-- [cell] try: gz = g.to_image(f'graph.png') except ImportError: print("No pygraphviz installed; skipping this part")
local ok, err = pcall(g.to_image, g, args.out .. "/graph.png")
if not ok then print("No Graphviz installed; skipping this part (" .. tostring(err) .. ")") end

-- [cell] baseline = evaluate_baseline(model, dataloader, partial(prob_diff, loss=False, mean=False)).mean().item()
--        results = evaluate_graph(model, g, dataloader, partial(prob_diff, loss=False, mean=False)).mean().item()
local baseline = mean(evaluate_baseline(model, ds, prob_diff, { batch_size = args.batch }))
local results = mean(evaluate_graph(model, g, ds, prob_diff, { batch_size = args.batch }))
print(("Original performance was %s; the circuit's performance is %s"):format(baseline, results))

-- [cell] g.count_included_nodes(), g.count_included_edges()
print(g:count_included_nodes(), g:count_included_edges())

-- [cell] g_eap = Graph.from_model(model); attribute(..., method='EAP'); g_eap.apply_topn(200, True)
local g_eap = Graph.from_model(model)
attribute(model, g_eap, ds, prob_diff, "EAP", { batch_size = args.batch })
g_eap:apply_topn(topn, true)
local results_eap = mean(evaluate_graph(model, g_eap, ds, prob_diff, { batch_size = args.batch }))
print(("Original performance was %s; the circuit's performance is %s"):format(baseline, results_eap))

-- [cell] g_cc = Graph.from_model(model); attribute(..., method='clean-corrupted'); g_cc.apply_topn(200, True)
local g_cc = Graph.from_model(model)
attribute(model, g_cc, ds, prob_diff, "clean-corrupted", { batch_size = args.batch })
g_cc:apply_topn(topn, true)
local results_cc = mean(evaluate_graph(model, g_cc, ds, prob_diff, { batch_size = args.batch }))
print(("Original performance was %s; the circuit's performance is %s"):format(baseline, results_cc))

-- Beyond the notebook: the circuit's edges and nodes as EAP-IG's objects, and its faithfulness
-- (MIB's definition: against the empty circuit, which under patching is the corrupted run).
local edges = {}
for e in g.edges:values() do
  if e.in_graph then edges[#edges + 1] = e end
end
table.sort(edges, function(a, b) return math.abs(a.score) > math.abs(b.score) end)
print("top edges of the EAP-IG circuit:")
for i = 1, math.min(5, #edges) do
  local e = edges[i]
  print(("  %-24s %+.6f  (%s -> %s%s)"):format(e.name, e.score, e.parent.name, e.child.name,
    e.qkv and (" <" .. e.qkv .. ">") or ""))
end
local parents = {}
for _, p in ipairs(g.nodes.logits.parents) do
  if p.in_graph then parents[#parents + 1] = p.name end
end
print("nodes of the circuit feeding the logits: " .. table.concat(parents, ", "))
local empty = mean(eapig.evaluate_empty(model, ds, prob_diff, { batch_size = args.batch }))
local fok, f = pcall(eapig.faithfulness, results, baseline, empty)
print(fok and ("faithfulness of the EAP-IG circuit: %.4f"):format(f) or ("faithfulness: n/a (" .. tostring(f) .. ")"))
