-- `eapig generate --model PATH (--ids 1,2,3 | --prompt TEXT) [--steps N]`: greedy decoding, the
-- quickest end-to-end check that a checkpoint loads and runs right. Prints the ids (prompt and
-- continuation) on one line, then the decoded text when a tokenizer sits beside the model.
local cli = require("eapig.cli")

-- --ids may repeat and each value may hold several ids: "--ids 1 --ids 2,3" is {1, 2, 3}.
local function collect_ids(values, vocab)
  local ids = {}
  for _, value in ipairs(values) do
    for piece in (value .. ","):gmatch("([^,]*),") do
      piece = cli.trim(piece)
      if piece ~= "" then
        local id = tonumber(piece)
        if not id or id ~= math.floor(id) then cli.fail("generate: --ids: '%s' is not an integer token id", piece) end
        if id < 0 or id >= vocab then
          cli.fail("generate: --ids: token id %d is outside the vocabulary [0, %d)", id, vocab)
        end
        ids[#ids + 1] = id
      end
    end
  end
  if #ids == 0 then cli.fail("generate: --ids gives no token ids") end
  return ids
end

-- The model's tokenizer (the one a GGUF file stores, else its folder's), or nil and why: it is
-- optional unless --prompt needs it.
local function load_tokenizer(model)
  local where = model.source and model.source:match("%.gguf$") and model.source or model.folder
  if not where then return nil, "the model has no folder to look for a tokenizer in" end
  local ok, tokenizer = pcall(require, "eapig.formats.tokenizer")
  if not ok then return nil, tokenizer end
  local loaded, tok = pcall(tokenizer.load, where)
  if loaded then return tok end
  return nil, tok
end

return function(argv)
  local parser = cli.parser("generate", "Greedy decoding from token ids or a text prompt.",
    "Prints the prompt and generated ids space-separated, then the decoded text if a tokenizer\n" ..
    "loads from the model's folder.")
  cli.model_options(parser)
  local ids_opt = parser:option("--ids", "Prompt token ids: repeat the option or separate with commas.")
    :argname("IDS"):count("*")
  local prompt_opt = parser:option("--prompt", "Prompt text, encoded with the model's tokenizer."):argname("TEXT")
  parser:mutex(ids_opt, prompt_opt)
  parser:option("--steps", "Tokens to generate.", "16"):argname("N"):convert(cli.integer("--steps", 0, cli.MAX_STEPS))
  local args = cli.parse(parser, argv, "generate")
  if #args.ids == 0 and not args.prompt then cli.fail("generate: give the prompt with --ids or --prompt") end

  local model = cli.load_model(args.model, args)
  local tok, why = load_tokenizer(model)
  local ids
  if args.prompt then
    if not tok then cli.fail("generate: --prompt needs a tokenizer: %s", cli.one_line(why)) end
    ids = tok:encode(args.prompt)
    if #ids == 0 then cli.fail("generate: --prompt encodes to no tokens") end
  else
    ids = collect_ids(args.ids, model.vocab)
  end
  if #ids > model.n_ctx then
    cli.fail("generate: %d prompt ids, more than the model's context of %d", #ids, model.n_ctx)
  end
  local out = model:generate(ids, args.steps)
  print(table.concat(out, " "))
  if tok then
    local ok, text = pcall(tok.decode, tok, out, { skip_special = true })
    if ok then print(text) end
  end
  return 0
end
