-- EAP-IG's greater-than notebook, ported (scripts/examples/greater_than_notebook.lua), runs end
-- to end as a user runs it, on a small random GPT-2-shaped model with GPT-2's tokenizer files, and
-- reads EAP-IG's own CSV layout.
local files = require("support.files")
local exists, read, write = files.exists, files.read, files.write

local TOKENIZER = "../shared/models/gpt2-tokenizer"

local function quote(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

describe("the ported greater-than notebook", function()
  if not exists(TOKENIZER .. "/encoder.json") then
    it("needs GPT-2's tokenizer files", function()
      pending("../shared/models/gpt2-tokenizer is absent: skipping the notebook port")
    end)
    return
  end
  local dir
  setup(function()
    local p = io.popen("mktemp -d")
    dir = p:read("*l")
    p:close()
  end)
  teardown(function() if dir and dir:match("^/tmp/") then os.execute("rm -rf " .. quote(dir)) end end)

  local function run(args)
    local p = io.popen("luajit scripts/eapig run scripts/examples/greater_than_notebook.lua " .. args ..
      ' 2>/dev/null; echo "rc=$?"')
    local out = p:read("*a")
    p:close()
    return out, tonumber(out:match("rc=(%d+)%s*$"))
  end

  it("runs end to end on a random GPT-2-shaped model, from generated rows and from EAP-IG's CSV", function()
    local model = dir .. "/gpt2"
    os.execute("mkdir -p " .. quote(model))
    require("eapig.testing").random_model({ family = "gpt2", vocab = 50257, layers = 2, d_model = 32, dir = model })
    local out, rc = run(quote(model) .. " " .. quote(TOKENIZER) .. " --n 12 --batch 6 --steps 2 --topn 200 --out "
      .. quote(dir .. "/a"))
    assert.are.equal(0, rc, out)
    local n = 0
    for _ in out:gmatch("Original performance was %-?[%d.e-]+; the circuit's performance is %-?[%d.e-]+") do n = n + 1 end
    assert.are.equal(3, n, out) -- EAP-IG, EAP and clean-corrupted circuits
    assert.truthy(out:match("\n%d+\t%d+\n"), out) -- count_included_nodes, count_included_edges
    assert.truthy(out:find("top edges of the EAP-IG circuit:", 1, true), out)
    assert.truthy(out:find("faithfulness of the EAP-IG circuit: ", 1, true), out)
    assert.truthy(exists(dir .. "/a/graph.json"))
    local g = require("eapig.graph").from_json(dir .. "/a/graph.json")
    assert.truthy(g:count_included_edges() > 0)
    -- the generated CSV is EAP-IG's layout; feeding it back as the notebook's file gives the same circuit
    assert.are.equal("clean,corrupted,label", read(dir .. "/a/greater_than_data.csv"):match("^[^\r\n]+"))
    local csv = dir .. "/greater_than_data.csv"
    write(csv, read(dir .. "/a/greater_than_data.csv"))
    out, rc = run(quote(model) .. " " .. quote(TOKENIZER) .. " " .. quote(csv) ..
      " --batch 6 --steps 2 --topn 200 --out " .. quote(dir .. "/b"))
    assert.are.equal(0, rc, out)
    assert.are.equal(read(dir .. "/a/graph.json"), read(dir .. "/b/graph.json"))
  end)
end)
