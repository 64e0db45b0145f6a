-- `eapig train --task induction --out DIR [--layers 2 --heads 4 --d-model 64 --d-mlp 256
--  --vocab 64 --ctx 32] [--steps N] [--seed S] [--lr X] [--batch-size B] ...`: trains a small
-- model from scratch on a built-in task and writes a Hugging Face folder: config.json,
-- model.safetensors (GPT-2 names and Conv1D layouts, as transformers saves them), a
-- character-level tokenizer.json with tokenizer_config.json, and training.json (the command,
-- the settings and the held-out numbers). eapig.load, transformers and TransformerLens load it.
-- Deterministic for a given seed and thread count (--threads).
local cli = require("eapig.cli")
local files = require("eapig.formats.files")
local json = require("eapig.formats.json")

local fmt = string.format

-- Built-in training tasks: how to make one from the parsed arguments.
local TASKS = {
  induction = function(args)
    return require("eapig.tasks.induction").new({ vocab = args.vocab, seq_len = args.ctx, min_rep = args.min_rep,
      max_rep = args.max_rep })
  end,
}
local TASK_NAMES = { "induction" }

-- The command line as one string a shell reads back (for training.json and the summary).
local function shell_words(argv)
  local out = { "eapig", "train" }
  for _, a in ipairs(argv) do
    if a:match("^[%w%-%./_=:,+]+$") then out[#out + 1] = a else out[#out + 1] = "'" .. a:gsub("'", "'\\''") .. "'" end
  end
  return table.concat(out, " ")
end

-- argv: the arguments after `train`; streams (optional, for tests): { stdout = file-like }.
return function(argv, streams)
  local stdout = streams and streams.stdout or io.stdout
  local function say(template, ...)
    stdout:write(fmt(template, ...), "\n")
  end
  local parser = cli.parser("train", "Train a small model from scratch on a built-in task and write a Hugging Face folder.",
    "Example (the embedded default model, models/induction-2l):\n" ..
    "   eapig train --task induction --out models/induction-2l --attn-only --head-sparsity 0.05 --steps 2000 \\\n" ..
    "     --seed 1 --threads 1\n" ..
    "The loss is printed as training goes and a progress bar is drawn on stderr (on a terminal).\n" ..
    "The same seed and --threads give the same weights, bit for bit.")
  parser:option("--task", "Training task: " .. table.concat(TASK_NAMES, ", ") .. "."):argname("NAME"):count(1)
    :convert(cli.one_of("task", TASK_NAMES))
  parser:option("--out", "Folder to write (created; files in it are replaced)."):argname("DIR"):count(1)
  parser:option("--family", "Architecture: gpt2 or llama.", "gpt2"):argname("NAME")
    :convert(cli.one_of("family", { "gpt2", "llama" }))
  parser:option("--layers", "Layers.", "2"):argname("N"):convert(cli.integer("--layers", 1, cli.MAX_MODEL.n_layers))
  parser:option("--heads", "Attention heads per layer.", "4"):argname("N"):convert(cli.integer("--heads", 1, cli.MAX_MODEL.n_heads))
  parser:option("--d-model", "Residual stream width.", "64"):argname("N"):convert(cli.integer("--d-model", 1, cli.MAX_MODEL.d_model))
  parser:option("--d-mlp", "MLP width.", "256"):argname("N"):convert(cli.integer("--d-mlp", 1, cli.MAX_MODEL.d_mlp))
  parser:option("--vocab", "Vocabulary size (one character per token).", "64"):argname("N")
    :convert(cli.integer("--vocab", 4, cli.MAX_MODEL.vocab))
  parser:option("--ctx", "Context length = training sequence length.", "32"):argname("N"):convert(cli.integer("--ctx", 4, cli.MAX_MODEL.n_ctx))
  parser:option("--min-rep", "Induction: shortest repeated segment.", "4"):argname("N"):convert(cli.integer("--min-rep", 2))
  parser:option("--max-rep", "Induction: longest repeated segment (default ctx / 2)."):argname("N")
    :convert(cli.integer("--max-rep", 2))
  parser:option("--steps", "Optimiser steps.", "3000"):argname("N"):convert(cli.integer("--steps", 1, cli.MAX_STEPS))
  parser:option("--batch-size", "Sequences per step.", "32"):argname("N"):convert(cli.integer("--batch-size", 1, cli.MAX_BATCH))
  parser:option("--lr", "Peak learning rate.", "1.5e-3"):argname("X"):convert(cli.number("--lr"))
  parser:option("--min-lr", "Final learning rate of the cosine (default lr / 10)."):argname("X")
    :convert(cli.number("--min-lr"))
  parser:option("--warmup", "Linear warmup steps (default steps / 20)."):argname("N"):convert(cli.integer("--warmup", 0))
  parser:option("--weight-decay", "AdamW weight decay (matrices and embeddings).", "0.1"):argname("X")
    :convert(cli.number("--weight-decay", 0))
  parser:option("--clip", "Clip the global gradient norm to this (0: no clipping).", "1"):argname("X")
    :convert(cli.number("--clip", 0))
  parser:option("--init-std", "Initialisation: GPT-2's scheme with this initializer_range (GPT-2: 0.02 at width 768).",
    "0.05"):argname("X"):convert(cli.number("--init-std"))
  parser:flag("--attn-only", "Attention only: the MLPs are zero and stay zero (saved in the usual layout).")
  parser:option("--head-sparsity", "Weight of the penalty sum over heads of sqrt(||W_O[:, head]||) (0: none): few heads stay.",
    "0"):argname("X"):convert(cli.number("--head-sparsity", 0))
  parser:option("--seed", "Seed of the initialisation and of the data.", "1"):argname("S"):convert(cli.integer("--seed", 0))
  parser:option("--threads", "Threads the core computes with (results depend on it; default: OpenBLAS's count)."):argname("N")
    :convert(cli.integer("--threads", 1, 1024))
  parser:option("--eval-rows", "Held-out sequences for the final evaluation.", "1024"):argname("N")
    :convert(cli.integer("--eval-rows", 1, cli.MAX_ROWS))
  parser:flag("--quiet", "Print only the final summary.")
  local args = cli.parse(parser, argv, "train")

  local eapig = require("eapig")
  local train = require("eapig.apps.train")
  if args.threads then eapig.set_num_threads(args.threads) end
  if args.heads > args.d_model or args.d_model % args.heads ~= 0 then
    cli.fail("train: --d-model (%d) must be a multiple of --heads (%d)", args.d_model, args.heads)
  end
  if files.exists(args.out) and not files.is_dir(args.out) then cli.fail("train: --out '%s' is a file, not a folder", args.out) end

  local task = TASKS[args.task](args)
  local model = train.new_model({ family = args.family, layers = args.layers, heads = args.heads,
    d_model = args.d_model, d_mlp = args.d_mlp, vocab = args.vocab, n_ctx = args.ctx, seed = args.seed,
    std = args.init_std })
  local command = shell_words(argv)
  if not args.quiet then
    say("%s: %s, %d layers, %d heads, d_model %d, d_mlp %d, vocab %d, context %d", command, args.family,
      args.layers, args.heads, args.d_model, args.d_mlp, args.vocab, args.ctx)
  end
  local opts = { steps = args.steps, batch_size = args.batch_size, lr = args.lr, min_lr = args.min_lr,
    warmup = args.warmup, weight_decay = args.weight_decay, clip = args.clip, seed = args.seed, quiet = args.quiet,
    out = stdout, evaluate = false, attn_only = args.attn_only, head_sparsity = args.head_sparsity }
  local result = train.train(model, task, opts)
  local ev = task:evaluate(model, { rows = args.eval_rows, seed = 1000003 + args.seed })

  train.save_pretrained(model, args.out, { tokenizer = task:pieces() })
  local record = {
    command = command, task = args.task, family = args.family, seed = args.seed, steps = args.steps,
    batch_size = args.batch_size, init_std = args.init_std, attn_only = args.attn_only,
    head_sparsity = args.head_sparsity, lr = args.lr, min_lr = args.min_lr or args.lr / 10,
    warmup = args.warmup or math.floor(args.steps / 20), weight_decay = args.weight_decay, clip = args.clip,
    threads = require("eapig.core").C.eapig_get_num_threads(),
    seconds = math.floor(result.seconds * 10 + 0.5) / 10,
    final_train_loss = result.final_loss,
    heldout = { rows = ev.rows, loss = ev.loss, induction_loss = ev.induction_loss, other_loss = ev.other_loss,
      accuracy = ev.accuracy, baseline_induction_loss = ev.baseline, baseline_loss = ev.baseline_loss },
  }
  files.write_atomic(args.out .. "/training.json", "train", json.encode(record, { indent = "  " }) .. "\n")

  say("trained %d steps in %.1fs: final training loss %.4f", args.steps, result.seconds, result.final_loss)
  say("held-out (%d sequences): loss %.4f; at the induction targets loss %.4f, accuracy %.1f%%", ev.rows, ev.loss,
    ev.induction_loss, 100 * ev.accuracy)
  say("a model that cannot do induction: %.4f at the induction targets (log V), %.4f overall", ev.baseline,
    ev.baseline_loss)
  say("wrote %s (config.json, model.safetensors, tokenizer.json, training.json)", args.out)
  return 0
end
