-- Every case of ../shared/fixtures-families/manifest.json (Llama-3.1 RoPE scaling, Gemma,
-- Gemma-2, OLMo-2: forward, attribute, select, evaluate) within the tolerances its README
-- states. Skips with a message when the folder is absent. EAPIG_FIXTURE_REPORT=1 prints each
-- case's deviation (absolute for logits, relative to the largest reference value otherwise).
package.path = "./tests/?.lua;" .. package.path
local fixtures = require("support.fixtures")
local testing = require("eapig.testing")

local report
if os.getenv("EAPIG_FIXTURE_REPORT") then
  report = function(label, worst) io.stderr:write(("%-64s %.3g\n"):format(label, worst)) end
end
fixtures.run("../shared/fixtures-families", "fixtures-families",
  { describe = describe, it = it, pending = pending, assert = assert }, report)

describe("fixture runner", function()
  it("fails a case of an unknown kind instead of passing it", function()
    local dir = testing.tmpdir()
    local f = assert(io.open(dir .. "/manifest.json", "wb"))
    f:write('[{"model": "m", "kind": "stream", "expected": "x.json"}]')
    f:close()
    local cases = {}
    local fake = { describe = function(_, fn) fn() end, it = function(label, fn) cases[#cases + 1] = { label, fn } end,
                   pending = function() end, assert = assert }
    fixtures.run(dir, "fake", fake)
    testing.rmtree(dir)
    assert.are.equal(1, #cases)
    local ok, err = pcall(cases[1][2])
    assert.is_false(ok)
    assert.matches("case kind 'stream' is unknown", err)
  end)
end)

describe("families with weights kept as stored", function()
  local root = "../shared/fixtures-families"
  local f = io.open(root .. "/manifest.json", "rb")
  if not f then
    pending(root .. " is absent: stored-weight comparisons skipped")
    return
  end
  f:close()
  local eapig = require("eapig")
  for _, name in ipairs({ "llama31-tiny", "gemma-tiny", "gemma2-tiny", "olmo2-tiny" }) do
    it(name .. ": the same logits and EAP scores as float32 weights", function()
      local dir = root .. "/" .. name
      local a = eapig.load(dir .. "/model", { weights = "f32" })
      local b = eapig.load(dir .. "/model", { weights = "stored" })
      local ds = eapig.data.load_jsonl(dir .. "/data.jsonl", { vocab = a.vocab })
      for bt in ds:batches(4) do
        local batch = { tokens = bt.clean, lengths = bt.lengths, B = bt.B, P = bt.P }
        local la, lb = a:forward(batch), b:forward(batch)
        for i = 0, bt.B * bt.P * a.vocab - 1 do assert.are.equal(la[i], lb[i]) end
      end
      local ga, gb = eapig.Graph.from_model(a), eapig.Graph.from_model(b)
      eapig.attribute(a, ga, ds, "logit_diff", { method = "EAP", batch_size = 4, quiet = true })
      eapig.attribute(b, gb, ds, "logit_diff", { method = "EAP", batch_size = 4, quiet = true })
      for i = 0, ga.n_forward * ga.n_backward - 1 do assert.are.equal(ga.scores[i], gb.scores[i]) end
    end)
  end
end)
