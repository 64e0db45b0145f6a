-- The FFI contract: the cdef generated from eapig.h must lay out every struct exactly as the C
-- compiler did, and no module may leak globals.
local core = require("eapig.core")
local ffi, C = core.ffi, core.C

describe("ABI", function()
  local structs = {
    { "eapig_config", C.EAPIG_ABI_CONFIG }, { "eapig_layer_weights", C.EAPIG_ABI_LAYER_WEIGHTS },
    { "eapig_weights", C.EAPIG_ABI_WEIGHTS }, { "eapig_batch", C.EAPIG_ABI_BATCH },
    { "eapig_forward_opts", C.EAPIG_ABI_FORWARD_OPTS }, { "eapig_backward_opts", C.EAPIG_ABI_BACKWARD_OPTS },
  }
  for _, s in ipairs(structs) do
    it(s[1] .. " has the size C gave it", function()
      assert.are.equal(tonumber(C.eapig_abi_sizeof(s[2])), ffi.sizeof(s[1]))
    end)
  end
  it("reports 0 for an unknown struct", function()
    assert.are.equal(0, tonumber(C.eapig_abi_sizeof(999)))
  end)

  it("loading every module defines no global", function()
    local before = {}
    for k in pairs(_G) do before[k] = true end
    for _, name in ipairs({ "eapig", "eapig.core", "eapig.model", "eapig.graph", "eapig.graph_io", "eapig.data",
      "eapig.metrics", "eapig.autodiff", "eapig.attribute", "eapig.evaluate", "eapig.runs", "eapig.load",
      "eapig.safetensors", "eapig.testing", "eapig.tokenizer", "eapig.sweep", "eapig.plot", "eapig.heads",
      "eapig.progress", "eapig.cli" }) do
      require(name)
    end
    local leaked = {}
    for k in pairs(_G) do if not before[k] then leaked[#leaked + 1] = tostring(k) end end
    assert.are.same({}, leaked)
  end)
end)
