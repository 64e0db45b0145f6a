-- EAP-IG's IOI notebook, end to end:
--
--   eapig run scripts/examples/ioi.lua MODEL_FOLDER [--n 200] [--topn 200] [--corruption abc|flip|all]
--
-- Indirect object identification: "When Mary and John went to the store, John gave a drink to"
-- -> " Mary". The dataset is built from the model's tokenizer (names that are one token with
-- their leading space), the metric is logit_diff (logit of the indirect object's name minus the
-- subject's). The script measures the model on the clean and corrupted inputs, scores every edge
-- with EAP-IG-inputs, keeps the top-n edges, evaluates that circuit and prints its faithfulness,
-- then writes ioi.csv (EAP-IG's layout), graph.json and circuit.svg (with Graphviz) into --out.
local eapig = require("eapig")
local argparse = require("argparse")
local ioi = require("eapig.tasks.ioi")
local evaluate = require("eapig.evaluate")

local parser = argparse("eapig run scripts/examples/ioi.lua", "EAP-IG circuit discovery on indirect object identification.")
parser:argument("model", "Model folder (Hugging Face) or checkpoint file.")
parser:option("--tokenizer", "Tokenizer file or folder (default: the model's folder).")
parser:option("--n", "Examples to generate.", "200"):convert(tonumber)
parser:option("--seed", "Seed of the generator.", "0"):convert(tonumber)
parser:option("--corruption", "abc (S2 -> a third name, EAP-IG's `corrupted`), flip (S2 -> IO, "
  .. "`corrupted_hard`) or all (three new names).", "abc")
parser:option("--topn", "Edges in the circuit.", "200"):convert(tonumber)
parser:option("--steps", "Integrated-gradient steps.", "5"):convert(tonumber)
parser:option("--batch", "Batch size.", "20"):convert(tonumber)
parser:option("--out", "Folder for ioi.csv, graph.json and circuit.svg.", ".")
parser:flag("--no-bos", "Do not prepend BOS (EAP-IG, through TransformerLens, prepends it).")
local args = parser:parse(arg)

local mean = evaluate.mean

-- 1. Model, tokenizer and dataset.
local model = eapig.load(args.model)
local tokenizer = eapig.tokenizer.load(args.tokenizer or model.folder or args.model)
print(model)
print(tokenizer)
local bos = not args.no_bos and tokenizer.bos_id ~= nil
local ds = ioi.generate(tokenizer, { n = args.n, seed = args.seed, corruption = args.corruption, bos = bos })
print(ds)
print("  e.g. " .. ds[1].clean_text .. "  |  " .. ds[1].corrupted_text .. "  -> '" .. ds[1].correct_text .. "'")
os.execute("mkdir -p '" .. args.out:gsub("'", "'\\''") .. "'")
ioi.write_csv(ds, args.out .. "/ioi.csv")

-- 2. Baselines: logit_diff on the clean and on the corrupted inputs.
local metric = ioi.metric
local baseline = mean(eapig.evaluate_baseline(model, ds, metric, { batch_size = args.batch }))
local corrupted = mean(eapig.evaluate_baseline(model, ds, metric, { batch_size = args.batch, run_corrupted = true }))
local accuracy = mean(eapig.evaluate_baseline(model, ds, "accuracy", { batch_size = args.batch }))
print(string.format("logit_diff: clean %.4f, corrupted %.4f; top-1 accuracy on clean %.3f", baseline, corrupted,
  accuracy))

-- 3. Attribution: EAP-IG on the inputs.
local graph = eapig.Graph.from_model(model)
local t0 = os.clock()
eapig.attribute(model, graph, ds, metric, { method = "EAP-IG-inputs", ig_steps = args.steps, batch_size = args.batch })
print(string.format("attributed %d edges in %.1f s", graph:n_edges(), os.clock() - t0))

-- 4. The circuit: top-n edges by |score|, pruned.
graph:apply_topn(math.min(args.topn, graph:n_edges()), { absolute = true })
print(string.format("circuit: %d edges, %d nodes", graph:count_included_edges(), graph:count_included_nodes()))

-- 5. Evaluation and faithfulness (undefined when the baselines are equal).
local circuit = mean(eapig.evaluate_graph(model, graph, ds, metric, { batch_size = args.batch }))
print(string.format("logit_diff of the circuit: %.4f", circuit))
local fok, faithfulness = pcall(eapig.faithfulness, circuit, baseline, corrupted)
print(fok and string.format("faithfulness: %.4f", faithfulness) or ("faithfulness: n/a (" .. tostring(faithfulness) .. ")"))

-- 6. Files.
graph:to_json(args.out .. "/graph.json")
local ok, err = pcall(graph.draw, graph, args.out .. "/circuit.svg")
print(ok and ("wrote " .. args.out .. "/circuit.svg") or ("no picture: " .. tostring(err)))
