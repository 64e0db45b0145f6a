-- eapig.help: the API reference, docs/api.md, read where it is (beside this module when
-- installed, in docs/ in a checkout), so the REPL's help and the documentation are one text.
--
--   help()                    the sections and the entries of each
--   help(eapig.attribute)     the entries that document a function (found by its value)
--   help(graph), help(ds)     the section of an object's type: its intro and its entries
--   help("apply_topn")        entries by name ("Graph:apply_topn", "batches", "Datasets")
--
-- api.md's shape is the contract: `## Section` headings, and `### name(args)` entries whose
-- heading starts with the name the entry documents (Graph.new, Graph:apply_topn, data.load_csv).
local M = {}

local fmt, concat = string.format, table.concat

local function readable(path)
  local fh = io.open(path, "rb")
  if fh then fh:close() end
  return fh ~= nil
end

-- The reference's path, or nil and the places looked at.
function M.reference_path()
  local here = package.searchpath("eapig", package.path)
  local dir = here and here:match("^(.*)/[^/]*$") or "."
  local tried = { dir .. "/api.md", dir .. "/../../docs/api.md" }
  for _, p in ipairs(tried) do
    if readable(p) then return (p:gsub("/lua/eapig/%.%./%.%./", "/"):gsub("^%./", "")) end
  end
  return nil, concat(tried, ", ")
end

-- Sections {title, intro = {lines}, entries = {...}} and entries {name, title, lines, section}.
local parsed
local function reference()
  if parsed then return parsed end
  local path, tried = M.reference_path()
  if not path then error("help: the API reference (api.md) is not installed; looked in " .. tried, 0) end
  local sections, entries = {}, {}
  local section, entry
  local fenced = false
  for line in io.lines(path) do
    if line:match("^```") then
      fenced = not fenced -- code fences go; the code inside stays
    elseif not fenced and line:match("^## ") then
      section = { title = line:sub(4), intro = {}, entries = {} }
      sections[#sections + 1], entry = section, nil
    elseif not fenced and line:match("^### ") and section then
      local title = line:sub(5)
      -- "sweep.cpr(points), sweep.cmd(points)" documents both names
      local names = { title:match("^[%w_.:]+") or title }
      for other in title:gmatch(",%s*([%w_.:]+)%(") do names[#names + 1] = other end
      entry = { title = title, name = names[1], names = names, lines = {}, section = section }
      entries[#entries + 1] = entry
      section.entries[#section.entries + 1] = entry
    elseif entry then
      entry.lines[#entry.lines + 1] = line
    elseif section then
      section.intro[#section.intro + 1] = line
    end
  end
  parsed = { path = path, sections = sections, entries = entries }
  return parsed
end

-- Lines without the blank ones at either end.
local function trimmed(lines)
  local first, last = 1, #lines
  while first <= last and not lines[first]:find("%S") do first = first + 1 end
  while last >= first and not lines[last]:find("%S") do last = last - 1 end
  return concat(lines, "\n", first, last)
end

local function entry_text(e)
  return e.title .. "\n\n" .. trimmed(e.lines)
end

-- The entry names of a section, "a, b, c", wrapped into lines of at most 100 characters.
local function names_of(section, indent)
  local lines, line = {}, ""
  for i, e in ipairs(section.entries) do
    local item = e.name .. (i < #section.entries and "," or "")
    if #line > 0 and #line + 1 + #item > 100 - #indent then
      lines[#lines + 1] = line
      line = item
    else
      line = #line > 0 and (line .. " " .. item) or item
    end
  end
  lines[#lines + 1] = line
  return concat(lines, "\n" .. indent)
end

local function section_text(s)
  local parts = { s.title, "", trimmed(s.intro) }
  if #s.entries > 0 then parts[#parts + 1] = "\nEntries (help(\"name\") prints one):\n  " .. names_of(s, "  ") end
  return concat(parts, "\n")
end

local function overview()
  local ref = reference()
  local parts = { "eapig API reference (" .. ref.path .. ").",
    "help(f) prints the entry of a function, e.g. help(eapig.attribute) or help(graph.apply_topn);",
    "help(object) the section of a graph, dataset, model or tokenizer; help(\"name\") finds by name.", "" }
  for _, s in ipairs(ref.sections) do
    if #s.entries > 0 then parts[#parts + 1] = s.title .. ":\n  " .. names_of(s, "  ") end
  end
  return concat(parts, "\n")
end

-- Where each public function lives: prefix, table, and whether its entries are methods.
-- Loaded on first use; the task modules too (they are small).
local function function_names()
  local eapig = require("eapig")
  local names = {}
  local function add(f, name)
    if type(f) ~= "function" then return end
    names[f] = names[f] or {}
    local list = names[f]
    list[#list + 1] = name
  end
  local function add_table(t, prefix)
    for k, f in pairs(t) do
      if type(k) == "string" then
        add(f, prefix .. "." .. k)
        add(f, prefix .. ":" .. k)
      end
    end
  end
  -- eapig's own functions (the modules it loads lazily are tables, skipped by add), and their
  -- bare names: eapig.attribute leads to both its short entry and the full `attribute(...)` one
  for k, f in pairs(eapig) do
    if type(k) == "string" then
      add(f, "eapig." .. k)
      add(f, k)
    end
  end
  local attribute, evaluate = require("eapig.attribute"), require("eapig.evaluate")
  add(attribute.attribute, "attribute")
  add(eapig.faithfulness, "evaluate.faithfulness")
  add_table(evaluate, "evaluate")
  for k, f in pairs(evaluate) do add(f, k) end -- its entries are headed evaluate_graph(...), ...
  add_table(require("eapig.sweep"), "sweep")
  add_table(require("eapig.graph"), "Graph")
  add_table(require("eapig.metrics"), "metrics")
  local data = require("eapig.data")
  add_table(data, "data")
  add_table(data.Dataset, "Dataset")
  local tasks = require("eapig.tasks")
  add_table(tasks, "tasks")
  for _, name in ipairs({ "greater_than", "ioi", "induction" }) do add_table(tasks.get(name), name) end
  local tokenizer = require("eapig.formats.tokenizer")
  add_table(tokenizer, "tokenizer")
  add_table(tokenizer.Tokenizer, "Tokenizer")
  add_table(require("eapig.model"), "Model")
  add_table(require("eapig.rng"), "rng")
  add(eapig.help, "eapig.help")
  return names
end

-- The section an object belongs to, by its metatable (instances) or identity (modules).
local function section_title_of(x)
  local mt = getmetatable(x)
  local function is(module, field)
    local ok, m = pcall(require, module)
    if not ok then return false end
    local t = field and m[field] or m
    return x == t or mt == t
  end
  if is("eapig.graph") then return "Graph" end
  if is("eapig.data", "Dataset") or is("eapig.data") then return "Datasets" end
  if is("eapig.model") then return "Models" end
  if is("eapig.formats.tokenizer", "Tokenizer") or is("eapig.formats.tokenizer") then return "Tokenizers" end
  if is("eapig.tasks") then return "Tasks" end
  if is("eapig.metrics") then return "Metrics" end
  if require("eapig.metrics").is_metric(x) then return "Metrics" end
  if is("eapig.attribute") then return "Attribution" end
  if is("eapig.evaluate") or is("eapig.sweep") then return "Evaluation" end
  return nil
end

local function find_section(title)
  for _, s in ipairs(reference().sections) do
    if s.title:lower() == title:lower() then return s end
  end
  return nil
end

local function entries_named(wanted)
  local out = {}
  for _, e in ipairs(reference().entries) do
    for _, n in ipairs(e.names) do
      if wanted[n] then
        out[#out + 1] = entry_text(e)
        break
      end
    end
  end
  return out
end

-- The help text for x (see the top of this file).
function M.text(x)
  if x == nil then return overview() end
  if type(x) == "function" then
    local names = function_names()[x]
    if names then
      local wanted = {}
      for _, n in ipairs(names) do wanted[n] = true end
      local found = entries_named(wanted)
      if #found > 0 then return concat(found, "\n\n") end
    end
    return "help: this function has no entry in the API reference (help() lists them)"
  end
  if type(x) == "string" then
    local s = find_section(x)
    if s then return section_text(s) end
    local found = {}
    for _, e in ipairs(reference().entries) do
      for _, n in ipairs(e.names) do
        if n == x or n:sub(-#x - 1) == "." .. x or n:sub(-#x - 1) == ":" .. x then
          found[#found + 1] = entry_text(e)
          break
        end
      end
    end
    if #found > 0 then return concat(found, "\n\n") end
    return fmt("help: no entry named '%s' (help() lists them)", x)
  end
  if x == require("eapig") then return overview() end
  local title = section_title_of(x)
  if title and find_section(title) then return section_text(find_section(title)) end
  return fmt("help: no entry for a %s (help() lists them)", type(x))
end

-- Prints the help text for x.
function M.help(x)
  io.stdout:write(M.text(x), "\n")
  io.stdout:flush()
end

return M
