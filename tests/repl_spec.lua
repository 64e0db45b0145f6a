-- The REPL a researcher uses: help() from docs/api.md, readable values (eapig.pretty), and the
-- interactive prompt itself driven through a pseudo-terminal (`script` from util-linux), with
-- lua-readline (editing, history, Tab completion) and with the plain fallback.
local eapig = require("eapig")
local help = require("eapig.apps.help")
local pretty = require("eapig.apps.pretty")
local testing = require("eapig.testing")
local files = require("support.files")

local function sh_quote(s)
  return "'" .. s:gsub("'", "'\\''") .. "'"
end

describe("help", function()
  it("prints a function's entry from docs/api.md", function()
    local text = help.text(eapig.attribute)
    assert.truthy(text:find("attribute(model, graph, data, metric, opts)", 1, true), text)
    assert.truthy(text:find("opts.method", 1, true), text)
    local graph = eapig.Graph.new({ n_layers = 1, n_heads = 2, d_model = 4 })
    assert.truthy(help.text(graph.apply_topn):find("^Graph:apply_topn%(n, opts%)"))
    assert.truthy(help.text("batches"):find("^Dataset:batches%(size%)"))
  end)

  it("prints an object's section and, with no argument, the list of entries", function()
    local graph = eapig.Graph.new({ n_layers = 1, n_heads = 2, d_model = 4 })
    local text = help.text(graph)
    assert.truthy(text:find("^Graph\n"), text)
    assert.truthy(text:find("Graph:apply_greedy", 1, true), text)
    local all = help.text()
    for _, section in ipairs({ "Graph:", "Attribution:", "Metrics:", "Datasets:", "Tasks:", "Tokenizers:", "Models:" }) do
      assert.truthy(all:find("\n" .. section .. "\n", 1, true), section)
    end
    assert.truthy(help.text("no_such_thing"):find("no entry named 'no_such_thing'", 1, true))
  end)

  it("has an entry for every public function of the API modules", function()
    local data, tokenizer = require("eapig.data"), require("eapig.formats.tokenizer")
    local modules = { Graph = eapig.Graph, data = data, Dataset = data.Dataset, metrics = eapig.metrics,
      tasks = eapig.tasks, tokenizer = tokenizer, Tokenizer = tokenizer.Tokenizer, Model = require("eapig.model"),
      evaluate = require("eapig.evaluate"), attribute = require("eapig.attribute"), sweep = require("eapig.sweep"),
      rng = require("eapig.rng"), eapig = eapig }
    local missing = {}
    for name, t in pairs(modules) do
      for k, f in pairs(t) do
        if type(f) == "function" and not k:match("^_") and help.text(f):match("^help:") then
          missing[#missing + 1] = name .. "." .. k
        end
      end
    end
    table.sort(missing)
    assert.are.same({}, missing)
  end)
end)

describe("pretty", function()
  it("prints result lists with a summary, rows and info tables sorted", function()
    local values = {}
    for i = 1, 200 do values[i] = i / 5 end
    assert.equal("{0.2, 0.4, 0.6, 0.8, 1, 1.2, 1.4, 1.6, … 200 values}  mean 20.1, min 0.2, max 40",
      pretty.render(values))
    assert.equal("{1, 2, 3}", pretty.render({ 1, 2, 3 }))
    assert.equal('{clean = {1, 2}, correct = {5}, note = "a\\nb"}',
      pretty.render({ note = "a\nb", clean = { 1, 2 }, correct = { 5 } }))
    local info = { n_layers = 2, n_heads = 4, d_model = 64, family = "gpt2", parallel_attn_mlp = false,
      norm = "layernorm", vocab = 50257, n_ctx = 1024, d_head = 16 }
    assert.equal(table.concat({ "{", "  d_head = 16,", "  d_model = 64,", '  family = "gpt2",', "  n_ctx = 1024,",
      "  n_heads = 4,", "  n_layers = 2,", '  norm = "layernorm",', "  parallel_attn_mlp = false,",
      "  vocab = 50257,", "}" }, "\n"), pretty.render(info))
  end)

  it("uses an object's own tostring, and leaves strings and other values as Lua prints them", function()
    local graph = eapig.Graph.new({ n_layers = 1, n_heads = 2, d_model = 4 })
    assert.equal(tostring(graph), pretty.render(graph))
    assert.equal("text", pretty.render("text"))
    assert.equal("nil", pretty.render(nil))
    assert.equal("0.5", pretty.render(0.5))
    assert.equal("{nested = {deep = {deeper = {…}}}}", pretty.render({ nested = { deep = { deeper = { 1 } } } }))
  end)
end)

describe("eapig repl on a terminal", function()
  local has_script = os.execute("command -v script >/dev/null 2>&1")
  if has_script ~= 0 and has_script ~= true then
    pending("`script` (util-linux) is absent: the pseudo-terminal sessions are skipped")
    return
  end
  local tmp
  before_each(function() tmp = testing.tmpdir() end)
  after_each(function() testing.rmtree(tmp) end)

  -- Runs `luajit [lua_args] scripts/eapig repl` on a pseudo-terminal with input typed into it;
  -- returns what the terminal shows, without carriage returns and bracketed-paste switches.
  local function session(input, lua_args)
    files.write(tmp .. "/input", input)
    local cmd = ("luajit %s scripts/eapig repl"):format(lua_args or "")
    local p = assert(io.popen(("HOME=%s timeout 60 script -q -e -c %s /dev/null < %s 2>&1"):format(
      sh_quote(tmp), sh_quote(cmd), sh_quote(tmp .. "/input"))))
    local out = p:read("*a")
    p:close()
    return (out:gsub("\r", ""):gsub("\27%[%?2004[hl]", ""))
  end

  -- Lines equal to line once the prompts before them are removed (without readline the typed
  -- text is not shown after the prompt, so a result follows "> " on the same line).
  local function count_lines(out, line)
    local n = 0
    for l in (out .. "\n"):gmatch("([^\n]*)\n") do
      repeat
        local k
        l, k = l:gsub("^>>? ", "")
      until k == 0
      if l == line then n = n + 1 end
    end
    return n
  end

  it("edits lines, recalls history, completes names, and prints values and help", function()
    if not pcall(require, "readline") then
      pending("lua-readline is absent (scripts/deps.sh installs it): line editing not tested")
      return
    end
    local out = session(table.concat({
      "=40+2\n",
      "\27[A\n",                                   -- up arrow: the previous line again
      "y = 1+3\127\1272\n=y\n",                    -- two backspaces: y = 12
      "=type(eapig.Gra\t.from_mo\t)\n",            -- Tab: eapig.Graph.from_model
      "=eapig.tasks.names()\n",
      "x = {} for i = 1, 50 do x[i] = i end\n=x\n",
      "help(eapig.attribute)\n",
    }))
    assert.truthy(out:find("help() for the API", 1, true), out)
    assert.equal(2, count_lines(out, "42"), out)
    assert.equal(1, count_lines(out, "12"), out)
    assert.equal(1, count_lines(out, "function"), out)
    assert.equal(1, count_lines(out, '{"greater_than", "induction", "ioi"}'), out)
    assert.equal(1, count_lines(out, "{1, 2, 3, 4, 5, 6, 7, 8, … 50 values}  mean 25.5, min 1, max 50"), out)
    assert.truthy(out:find("\nattribute(model, graph, data, metric, opts)\n", 1, true), out)
    local history = files.read(tmp .. "/.eapig_history")
    assert.truthy(history:find("=40+2", 1, true), history)
  end)

  it("falls back to plain lines without lua-readline", function()
    local out = session("=40+2\n=1+\27[A\nhelp(\"apply_topn\")\n",
      "-e \"package.preload.readline = function() error('absent') end\"")
    assert.truthy(out:find("help() for the API", 1, true), out)
    assert.equal(1, count_lines(out, "42"), out)
    assert.truthy(out:find("unexpected symbol", 1, true), out) -- the arrow key is just text here
    assert.truthy(out:find("Graph:apply_topn(n, opts)\n\nKeeps", 1, true), out)
    assert.is_false(files.exists(tmp .. "/.eapig_history"))
  end)
end)
