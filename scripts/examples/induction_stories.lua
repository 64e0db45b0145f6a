-- EAP-IG on a real small model: induction in stories260K (Karpathy's 260K-parameter Llama-2
-- trained on TinyStories), with a dataset built from its own tokenizer.
--
--   eapig run scripts/examples/induction_stories.lua path/to/stories260K.bin \
--     [--tokenizer path/to/tok512.bin] [--n 32] [--half 3] [--topn 200]
--
-- stories260K.bin and tok512.bin are Karpathy's llama2.c release files (stories260K).
--
-- Each row is H random word tokens followed by their first H - 1 again; at the last position
-- induction predicts the H-th. The corrupted row re-draws the first half, so the second no longer
-- repeats anything (eapig.tasks.induction). The metric is logit_diff: the induction target minus
-- the corrupted first half's H-th token. The tokens are the tokenizer's word pieces with a leading
-- space (" the", " Lily", " happy", ...): TinyStories has no random-byte text, and the model
-- copies words far more readily than fragments. A 260K-parameter model does induction only
-- weakly, so expect a clean - corrupted gap of about half a logit.
local eapig = require("eapig")
local argparse = require("argparse")
local induction = require("eapig.tasks.induction")
local evaluate = require("eapig.evaluate")

local parser = argparse("eapig run scripts/examples/induction_stories.lua",
  "EAP-IG circuit discovery for induction on stories260K.")
parser:argument("model", "stories260K.bin (or another llama2.c checkpoint / model folder).")
parser:option("--tokenizer", "Tokenizer (default: the tokenizer file beside the model, e.g. tok512.bin).")
parser:option("--n", "Examples to generate.", "32"):convert(tonumber)
parser:option("--half", "Tokens in each half of a row.", "3"):convert(tonumber)
parser:option("--seed", "Seed of the generator.", "1"):convert(tonumber)
parser:option("--topn", "Edges in the circuit.", "200"):convert(tonumber)
parser:option("--steps", "Integrated-gradient steps.", "5"):convert(tonumber)
parser:option("--batch", "Batch size.", "16"):convert(tonumber)
parser:option("--out", "Folder for induction.csv, graph.json and circuit.svg.", ".")
local args = parser:parse(arg)

local mean = evaluate.mean

-- 1. Model, tokenizer (the llama2.c tokenizer.bin has no vocabulary size of its own: the model's
-- is passed) and dataset.
local model = eapig.load(args.model)
local tokenizer = eapig.tokenizer.load(args.tokenizer or model.folder or args.model, { vocab_size = model.vocab })
print(model)
print(tokenizer)
local ds = induction.generate(tokenizer, { n = args.n, half = args.half, seed = args.seed, pattern = "^ %a%a+$" })
print(ds)
print(string.format("  e.g. clean '%s' -> '%s'", ds[1].clean_display, tokenizer:token(ds[1].correct[1])))
print(string.format("       corrupted '%s'", ds[1].corrupted_display))
os.execute("mkdir -p '" .. args.out:gsub("'", "'\\''") .. "'")
induction.write_csv(ds, args.out .. "/induction.csv")

-- 2. Baselines.
local metric = induction.metric
local baseline = mean(eapig.evaluate_baseline(model, ds, metric, { batch_size = args.batch }))
local corrupted = mean(eapig.evaluate_baseline(model, ds, metric, { batch_size = args.batch, run_corrupted = true }))
print(string.format("logit_diff: clean %.4f, corrupted %.4f", baseline, corrupted))

-- 3. Attribution with EAP-IG on the inputs.
local graph = eapig.Graph.from_model(model)
local t0 = os.clock()
eapig.attribute(model, graph, ds, metric, { method = "EAP-IG-inputs", ig_steps = args.steps, batch_size = args.batch })
print(string.format("attributed %d edges in %.1f s", graph:n_edges(), os.clock() - t0))

-- 4. Faithfulness as the circuit grows, then the chosen top-n circuit.
local topn = math.min(args.topn, graph:n_edges())
local sizes = {}
for _, k in ipairs({ 25, 50, 100, 200, 400, 800 }) do
  if k < graph:n_edges() and k ~= topn then sizes[#sizes + 1] = k end
end
sizes[#sizes + 1] = topn
table.sort(sizes)
local circuit_graph, faithfulness
for _, k in ipairs(sizes) do
  local g = graph:clone() -- selection changes the graph; the scores stay on the original
  g:apply_topn(k, { absolute = true })
  local circuit = mean(eapig.evaluate_graph(model, g, ds, metric, { batch_size = args.batch, quiet = true }))
  local fok, f = pcall(eapig.faithfulness, circuit, baseline, corrupted)
  print(string.format("top-%-4d %4d edges %3d nodes  logit_diff %8.4f  faithfulness %s", k, g:count_included_edges(),
    g:count_included_nodes(), circuit, fok and string.format("%.4f", f) or "n/a"))
  if k == topn then circuit_graph, faithfulness = g, fok and f or nil end
end
print(string.format("faithfulness of the top-%d circuit: %s", topn,
  faithfulness and string.format("%.4f", faithfulness) or "n/a (equal baselines)"))
graph = circuit_graph

-- 5. Files.
graph:to_json(args.out .. "/graph.json")
local ok, err = pcall(graph.draw, graph, args.out .. "/circuit.svg")
print(ok and ("wrote " .. args.out .. "/circuit.svg") or ("no picture: " .. tostring(err)))
