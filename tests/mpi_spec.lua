-- Data parallelism: `mpirun -np 2 eapig attribute` (and evaluate, sweep) on a small random model
-- gives the scores of one process, to float32 rounding (each rank sums its batches, then one
-- allreduce sums the ranks: the same terms in another grouping), and the same evaluation values
-- (every row's metric is computed by the same code on the same batch; only the rows are summed
-- over ranks, with zeros). Rank 0 alone prints.
--
-- Plain pass only (each case starts MPI processes: slow under the sanitizers); skipped when
-- mpirun or libeapig_mpi is missing.
local cjson = require("cjson")
local random = require("eapig.rng")
local testing = require("eapig.testing")
local files = require("support.files")

local METHODS = require("eapig.attribute").METHODS

local quote, shell = require("support.shell").quote, require("support.shell").run

local function skip_reason()
  if os.getenv("EAPIG_SANITIZED") == "1" then return "runs in the plain pass only (EAPIG_SANITIZED=1)" end
  local _, rc = shell("command -v mpirun")
  if rc ~= 0 then return "mpirun is not installed (Debian: openmpi-bin)" end
  if not require("eapig.parallel").available() then
    return "libeapig_mpi was not built (CMake found no MPI; Debian: libopenmpi-dev)"
  end
  return nil
end

local MPIRUN = "mpirun --allow-run-as-root --oversubscribe -np 2 "

-- `eapig ARGS`, as one process or under mpirun with 2 ranks; fails the test on a non-zero status.
local function eapig(args, ranks)
  local parts = { ranks == 2 and MPIRUN or "", "luajit scripts/eapig" }
  for _, a in ipairs(args) do parts[#parts + 1] = quote(a) end
  local out, rc = shell(table.concat(parts, " "))
  assert.are.equal(0, rc, out)
  return out
end

-- Largest |a - b| over two graphs' edge scores (and node scores where scored), and max |a|.
local function score_gap(a, b)
  local gap, top = 0, 0
  for i = 0, a.n_forward * a.n_backward - 1 do
    gap = math.max(gap, math.abs(a.scores[i] - b.scores[i]))
    top = math.max(top, math.abs(a.scores[i]))
  end
  for u = 0, a.n_forward - 1 do
    local x, y = a.node_scores[u], b.node_scores[u]
    if x == x or y == y then
      gap = math.max(gap, math.abs(x - y))
      top = math.max(top, math.abs(x))
    end
  end
  return gap, top
end

describe("mpirun -np 2", function()
  local reason = skip_reason()
  local dir, model, data

  setup(function()
    if reason then return end
    dir = testing.tmpdir()
    model = testing.random_model({ family = "gpt2", layers = 2, heads = 4, d_model = 32, vocab = 64, seed = 3,
      dir = dir })
    -- 9 rows of lengths 4..6 in batches of 2: 5 batches, 3 on rank 0 and 2 on rank 1
    local rng, lines = random.new(5), {} -- a normal stream: floor(64 x) % 64 is a token id
    for i = 1, 9 do
      local clean, corrupted = {}, {}
      for j = 1, 4 + i % 3 do
        clean[j] = math.floor(rng:normal() * 64) % 64
        corrupted[j] = math.floor(rng:normal() * 64) % 64
      end
      lines[i] = cjson.encode({ clean = clean, corrupted = corrupted, correct = i % 64, incorrect = i * 7 % 64 })
    end
    data = dir .. "/data.jsonl"
    files.write(data, table.concat(lines, "\n") .. "\n")
  end)
  teardown(function()
    if dir then testing.rmtree(dir) end
  end)

  local function attribute(method, level, ranks)
    local out = dir .. ("/%s-%s-%d.safetensors"):format(method, level, ranks)
    local printed = eapig({ "attribute", "--model", model, "--data", data, "--batch-size", "2", "--method", method,
      "--level", level, "--out", out }, ranks)
    return require("eapig.formats.graph_io").from_safetensors(out), printed
  end

  it("gives one process's scores on every method, to float32 rounding", function()
    if reason then return pending(reason) end
    local cases = {}
    for _, m in ipairs(METHODS) do cases[#cases + 1] = { m, "edge" } end
    cases[#cases + 1] = { "EAP-IG-inputs", "node" }
    for _, case in ipairs(cases) do
      local one = attribute(case[1], case[2], 1)
      local two, printed = attribute(case[1], case[2], 2)
      local gap, top = score_gap(one, two)
      assert.is_true(top > 0, case[1] .. ": all scores are zero")
      -- float32 sums of a few batch terms: a few units in the last place of the largest score
      assert.is_true(gap <= 1e-6 * top, ("%s (%s): scores differ by %.3g (largest %.3g)"):format(case[1], case[2],
        gap, top))
      -- only rank 0 prints the summary line
      local _, lines = printed:gsub("edges from 9 rows", "")
      assert.are.equal(1, lines, printed)
    end
  end)

  it("gives one process's evaluation and sweep values", function()
    if reason then return pending(reason) end
    local scored = dir .. "/scored.json"
    eapig({ "attribute", "--model", model, "--data", data, "--quiet", "--out", scored }, 1)
    local circuit = dir .. "/circuit.json"
    eapig({ "circuit", "--graph", scored, "--topn", "20", "--out", circuit }, 1)
    local values = {}
    for ranks = 1, 2 do
      local out = eapig({ "evaluate", "--model", model, "--data", data, "--graph", circuit, "--batch-size", "2",
        "--json" }, ranks)
      local _, n = out:gsub("faithfulness", "")
      assert.are.equal(1, n, out) -- one JSON object: rank 0's
      values[ranks] = cjson.decode(out:match("{.*}"))
    end
    for _, key in ipairs({ "clean", "corrupted", "circuit", "faithfulness" }) do
      assert.are.equal(values[1][key], values[2][key], key)
    end
    local curves = {}
    for ranks = 1, 2 do
      local svg = dir .. ("/sweep-%d.svg"):format(ranks)
      curves[ranks] = eapig({ "sweep", "--model", model, "--data", data, "--graph", scored, "--batch-size", "2",
        "--sizes", "10%,50%,100%", "--quiet", "--out", svg }, ranks):gsub("sweep%-%d%.svg", "")
    end
    assert.are.equal(curves[1], curves[2])
  end)

  it("reports MPI in eapig info", function()
    if reason then return pending(reason) end
    local out = eapig({ "info", "--model", model }, 1)
    assert.truthy(out:find("mpi%s+yes"), out)
  end)
end)
