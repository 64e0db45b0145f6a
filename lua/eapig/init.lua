-- eapig: circuit discovery in transformer language models (EAP, EAP-IG, exact patching,
-- circuit selection, faithfulness), a C core driven from LuaJIT.
--
--   local eapig = require("eapig")
--   local model = eapig.load("path/to/hf-folder")
--   local graph = eapig.Graph.from_model(model)
--   eapig.attribute(model, graph, eapig.data.load_jsonl("data.jsonl"), "logit_diff", {method = "EAP-IG-inputs"})
--   graph:apply_topn(200)
local eapig = {}

local lazy = {
  Graph = function() return require("eapig.graph") end,
  Model = function() return require("eapig.model") end,
  data = function() return require("eapig.data") end,
  metrics = function() return require("eapig.metrics") end,
  autodiff = function() return require("eapig.autodiff") end,
  testing = function() return require("eapig.testing") end,
  tokenizer = function() return require("eapig.formats.tokenizer") end,
  tasks = function() return require("eapig.tasks") end,
  rng = function() return require("eapig.rng") end,
  help = function() return require("eapig.apps.help").help end,
  safetensors = function() return require("eapig.formats.safetensors") end,
}

-- Modules load on first use, so `require("eapig")` stays cheap in the REPL and the CLI.
setmetatable(eapig, {
  __index = function(t, k)
    local f = lazy[k]
    if not f then return nil end
    local v = f()
    rawset(t, k, v)
    return v
  end,
})

eapig.version = "scm"

-- Loads a Hugging Face folder or a llama2.c checkpoint.
function eapig.load(path, opts)
  local loaded = require("eapig.formats.load").load(path, opts)
  return require("eapig.model").new(loaded.handle, loaded.info, loaded)
end

function eapig.set_num_threads(n)
  require("eapig.core").C.eapig_set_num_threads(n)
end

function eapig.attribute(...) return require("eapig.attribute").attribute(...) end
function eapig.evaluate_graph(...) return require("eapig.evaluate").evaluate_graph(...) end
function eapig.evaluate_baseline(...) return require("eapig.evaluate").evaluate_baseline(...) end
function eapig.evaluate_empty(...) return require("eapig.evaluate").evaluate_empty(...) end
function eapig.faithfulness(...) return require("eapig.evaluate").faithfulness(...) end

return eapig
