-- Greedy decoding of the real stories260K checkpoint (llama2.c format) reproduces the 256
-- reference ids listed in ../shared/models/stories260K/SOURCE.md; the same weights converted to
-- the Hugging Face layout (fixtures' stories260K-hf) and to GGUF (../shared/models/stories260K-gguf)
-- decode identically.
local SOURCE = "../shared/models/stories260K/SOURCE.md"

local function reference_ids()
  local f = io.open(SOURCE, "rb")
  if not f then return nil end
  local text = f:read("*a")
  f:close()
  local list = text:match("Token ids %(including the leading BOS%):%s*%[([%d,%s]+)%]")
  local ids = {}
  for id in list:gmatch("%d+") do ids[#ids + 1] = tonumber(id) end
  return ids
end

describe("greedy decoding", function()
  local expected = reference_ids()
  if not expected then
    pending("../shared/models/stories260K is absent: decoding check skipped")
    return
  end
  local eapig = require("eapig")

  it("stories260K.bin reproduces the reference ids from BOS", function()
    local model = eapig.load("../shared/models/stories260K/stories260K.bin")
    local ids = model:generate({ 1 }, #expected - 1)
    assert.are.same(expected, ids)
  end)

  it("stories260K.gguf (llama.cpp's conversion) reproduces the same reference ids", function()
    local path = "../shared/models/stories260K-gguf/stories260K.gguf"
    local f = io.open(path, "rb")
    if not f then pending(path .. " is absent") return end
    f:close()
    local ids = eapig.load(path):generate({ 1 }, #expected - 1)
    assert.are.same(expected, ids)
    local same = 0
    for i = 1, #expected do if ids[i] == expected[i] then same = same + 1 end end
    print(("\n  stories260K.gguf: %d of %d reference ids"):format(same, #expected))
  end)

  it("the Hugging Face conversion decodes the same ids", function()
    local model = eapig.load("../shared/fixtures/stories260K-hf/model")
    local ids = model:generate({ 1 }, 64)
    for i = 1, #ids do assert.are.equal(expected[i], ids[i]) end
  end)
end)
