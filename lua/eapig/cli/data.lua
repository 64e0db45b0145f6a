-- `eapig data --task NAME --tokenizer PATH --n N --seed S --out FILE.jsonl|FILE.csv`: writes a
-- dataset of one of the built-in tasks (greater_than, ioi, induction), tokenized for a model, so
-- the CLI walk-through (attribute, circuit, evaluate, draw) starts from nothing. JSONL holds the
-- token ids (and the text beside them); CSV is EAP-IG's layout (clean, corrupted, label columns),
-- readable by its Python code and by `--data` of every eapig command.
local cli = require("eapig.cli")

local EPILOG = [[
The rows use the tokenizer's BOS token first when it has one, as EAP-IG does through
TransformerLens (--no-bos: without it). The task's metric: greater_than prob_diff, ioi and
induction logit_diff (pass it to the other commands with --metric).
Example:
   eapig data --task greater_than --tokenizer models/gpt2 --n 200 --seed 1 --out gt.jsonl]]

return function(argv)
  local tasks = require("eapig.tasks")
  local names = tasks.names()
  local parser = cli.parser("data", "Write a built-in task's dataset (JSONL or EAP-IG's CSV).", EPILOG)
  parser:option("--task", "Task: " .. table.concat(names, ", ") .. "."):argname("NAME"):count(1)
    :convert(cli.one_of("task", names))
  parser:option("--tokenizer", "The model's folder (tokenizer.json), a tokenizer.json, or a llama2.c tokenizer.bin.")
    :argname("PATH"):count(1)
  parser:option("--n", "Rows.", "100"):argname("N"):convert(cli.integer("--n", 1, cli.MAX_ROWS))
  parser:option("--seed", "Seed of the task's generator.", "0"):argname("S"):convert(cli.integer("--seed", 0))
  parser:flag("--no-bos", "Do not put the BOS token first.")
  parser:option("--out", "File to write: .jsonl (token ids) or .csv (EAP-IG's columns)."):argname("FILE"):count(1)
  local args = cli.parse(parser, argv, "data")
  local ext = cli.check_out_suffix(args.out, { "jsonl", "csv" }, "datasets")
  cli.check_writable(args.out)
  cli.check_readable(args.tokenizer, "--tokenizer")

  local eapig = require("eapig")
  local tok = eapig.tokenizer.load(args.tokenizer)
  local task = tasks.get(args.task)
  local bos = (not args.no_bos) and tok.bos_id ~= nil
  local ds = task.generate(tok, { n = args.n, seed = args.seed, bos = bos })
  if ext == "csv" then
    task.write_csv(ds, args.out)
  else
    eapig.data.write_jsonl(ds, args.out)
  end
  local metric = task.metric
  print(("%s: %d %s rows (metric %s%s)"):format(args.out, #ds, args.task,
    type(metric) == "string" and metric or require("eapig.metrics").get(metric).name, bos and ", BOS first" or ""))
  return 0
end
