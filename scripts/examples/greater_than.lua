-- EAP-IG's greater-than notebook, end to end:
--
--   eapig run scripts/examples/greater_than.lua MODEL_FOLDER [--n 200] [--topn 200] [--out DIR]
--
-- MODEL_FOLDER is a GPT-2-family checkpoint whose tokenizer has the two-digit year tokens (GPT-2's
-- does; --tokenizer PATH when it is not in the folder). The script builds the dataset from that
-- tokenizer ("The war lasted from the year 1732 to the year 17"), measures the model on the clean
-- and corrupted inputs, scores every edge with EAP-IG-inputs, keeps the top-n edges, evaluates
-- that circuit and prints its faithfulness, then writes the dataset (EAP-IG's CSV layout), the
-- graph (EAP-IG's JSON) and circuit.svg (when Graphviz's dot is installed) into --out.
local eapig = require("eapig")
local argparse = require("argparse")
local greater_than = require("eapig.tasks.greater_than")
local evaluate = require("eapig.evaluate")

local parser = argparse("eapig run scripts/examples/greater_than.lua",
  "EAP-IG circuit discovery on the greater-than task.")
parser:argument("model", "Model folder (Hugging Face) or checkpoint file.")
parser:option("--tokenizer", "Tokenizer file or folder (default: the model's folder).")
parser:option("--n", "Examples to generate.", "200"):convert(tonumber)
parser:option("--seed", "Seed of the generator.", "0"):convert(tonumber)
parser:option("--topn", "Edges in the circuit.", "200"):convert(tonumber)
parser:option("--steps", "Integrated-gradient steps.", "5"):convert(tonumber)
parser:option("--batch", "Batch size.", "20"):convert(tonumber)
parser:option("--out", "Folder for greater_than.csv, graph.json and circuit.svg.", ".")
parser:flag("--no-bos", "Do not prepend BOS (EAP-IG, through TransformerLens, prepends it).")
local args = parser:parse(arg)

local function mean(x) return evaluate.mean(x) end
local function elapsed(t0) return string.format("%.1f s", os.clock() - t0) end

-- 1. Model, tokenizer and dataset.
local model = eapig.load(args.model)
local tokenizer = eapig.tokenizer.load(args.tokenizer or model.folder or args.model)
print(model)
print(tokenizer)
local bos = not args.no_bos and tokenizer.bos_id ~= nil
local ds = greater_than.generate(tokenizer, { n = args.n, seed = args.seed, bos = bos })
print(ds)
print("  e.g. " .. ds[1].clean_text .. "  |  " .. ds[1].corrupted_text .. "  (label " .. ds[1].label .. ")")
os.execute("mkdir -p '" .. args.out:gsub("'", "'\\''") .. "'")
greater_than.write_csv(ds, args.out .. "/greater_than.csv")

-- 2. Baselines: the metric on the clean inputs and on the corrupted ones. Faithfulness puts the
-- circuit between the two (1: all of the clean behaviour, 0: none of it).
local metric = greater_than.metric
local baseline = mean(eapig.evaluate_baseline(model, ds, metric, { batch_size = args.batch }))
local corrupted = mean(eapig.evaluate_baseline(model, ds, metric, { batch_size = args.batch, run_corrupted = true }))
print(string.format("prob_diff: clean %.4f, corrupted %.4f", baseline, corrupted))

-- 3. Attribution: EAP-IG on the inputs, every edge of the graph scored.
local graph = eapig.Graph.from_model(model)
local t0 = os.clock()
eapig.attribute(model, graph, ds, metric, { method = "EAP-IG-inputs", ig_steps = args.steps, batch_size = args.batch })
print(string.format("attributed %d edges in %s", graph:n_edges(), elapsed(t0)))

-- 4. The circuit: the top-n edges by |score|, pruned to what connects input to logits.
graph:apply_topn(math.min(args.topn, graph:n_edges()), { absolute = true }) -- a small model has fewer
print(graph)
print(string.format("circuit: %d edges, %d nodes", graph:count_included_edges(), graph:count_included_nodes()))

-- 5. Evaluation: the model with every edge outside the circuit patched to its corrupted value.
local circuit = mean(eapig.evaluate_graph(model, graph, ds, metric, { batch_size = args.batch }))
print(string.format("prob_diff of the circuit: %.4f", circuit))
-- (undefined when the two baselines are equal: a model that does not do the task at all)
local fok, faithfulness = pcall(eapig.faithfulness, circuit, baseline, corrupted)
print(fok and string.format("faithfulness: %.4f", faithfulness) or ("faithfulness: n/a (" .. tostring(faithfulness) .. ")"))

-- 6. Files: the graph for EAP-IG / MIB, and the picture.
graph:to_json(args.out .. "/graph.json")
local ok, err = pcall(graph.draw, graph, args.out .. "/circuit.svg")
print(ok and ("wrote " .. args.out .. "/circuit.svg") or ("no picture: " .. tostring(err)))
