-- eapig.graph_io: graphs to and from files.
--   JSON         EAP-IG's to_json layout ({"cfg", "nodes": {name: {"in_graph"}}, "edges":
--                {name: {"score", "in_graph"}}}), which EAP-IG's Graph.from_json and MIB load.
--   safetensors  the compact form for big graphs: the score and mask matrices as tensors, cfg and
--                names in the header's __metadata__ (a plain safetensors file any reader opens).
--   DOT / draw   Graphviz source with EAP-IG's edge colours, rendered by the `dot` program.
-- Every writer goes through a temporary file renamed into place, so a failure leaves no partial
-- output (and an existing file untouched).
local core = require("eapig.core")
local ffi, C = core.ffi, core.C
local cjson = require("cjson.safe") -- returns nil, err on bad input: we name the file ourselves
local Graph = require("eapig.graph")
local safetensors = require("eapig.formats.safetensors")

local floor, huge = math.floor, math.huge
local fmt, concat = string.format, table.concat

local files = require("eapig.formats.files")

local M = {}

local function fail(template, ...)
  error(fmt(template, ...), 0)
end

local write_atomic = files.write_atomic

-- Graphs up to this many edge-matrix entries load from any JSON file (Llama-3-8B's is 3.3M);
-- bigger ones need a file of at least half as many bytes (a real one has tens per edge).
local MIN_JSON_MATRIX = 2 ^ 22

local first_changed = ffi.new("int64_t[1]")

-- ---- JSON ---------------------------------------------------------------------------------------

-- A float32 score as JSON: 9 significant digits read back to the same float32. NaN and infinities
-- are written as Python's json module writes them (EAP-IG reads them back; so does cjson).
local function json_number(x)
  if x ~= x then return "NaN" end
  if x == huge then return "Infinity" end
  if x == -huge then return "-Infinity" end
  return fmt("%.9g", x)
end

local function json_bool(b)
  return b and "true" or "false"
end

-- EAP-IG's four keys first (as it writes them), then any others in sorted order.
local CFG_FIRST = { "n_layers", "n_heads", "parallel_attn_mlp", "d_model" }

local function cfg_json(cfg)
  local keys, seen = {}, {}
  for _, k in ipairs(CFG_FIRST) do
    keys[#keys + 1], seen[k] = k, true
  end
  local rest = {}
  for k in pairs(cfg) do
    if not seen[k] then rest[#rest + 1] = k end
  end
  table.sort(rest, function(a, b) return tostring(a) < tostring(b) end)
  for _, k in ipairs(rest) do keys[#keys + 1] = k end
  local parts = {}
  for _, k in ipairs(keys) do
    local v, text = cfg[k]
    if type(v) == "number" and v == floor(v) and math.abs(v) < 2 ^ 53 then
      text = fmt("%d", v)
    elseif type(v) == "number" then
      text = fmt("%.17g", v)
    else
      local err
      text, err = cjson.encode(v)
      if not text then error(fmt("cfg.%s cannot be written as JSON: %s", tostring(k), tostring(err)), 0) end
    end
    parts[#parts + 1] = fmt("%s: %s", cjson.encode(tostring(k)), text)
  end
  return "{" .. concat(parts, ", ") .. "}"
end

-- `write` that runs the garbage collector every 4 MB: each chunk written is a fresh Lua string,
-- and the collector's own pace would let ~100 MB of them pile up on a big graph.
local function collecting(write)
  local since = 0
  return function(s)
    write(s)
    since = since + #s
    if since >= 4 * 1048576 then
      collectgarbage()
      since = 0
    end
  end
end

-- Writes pieces through `write` in chunks of about a megabyte (a neuron-level Llama-3-8B graph
-- has 170 KB per node: memory stays bounded whatever the pieces are).
local function chunked(write)
  local buf, n, bytes = {}, 0, 0
  local function flush()
    if n > 0 then write(concat(buf, "", 1, n)) end
    n, bytes = 0, 0
  end
  return function(s)
    n = n + 1
    buf[n] = s
    bytes = bytes + #s
    if n >= 4096 or bytes >= 1048576 then flush() end
  end, flush
end

-- The graph's names as the C codec takes them: sources then destinations, NUL-terminated, in one
-- block (cached on the graph: the names never change).
local function name_block(g)
  if not g._name_block then
    local parts = {}
    for u = 0, g.n_forward - 1 do parts[#parts + 1] = g.forward_names[u] end
    for v = 0, g.n_backward - 1 do parts[#parts + 1] = g.backward_names[v] end
    g._name_block = concat(parts, "\0") .. "\0"
  end
  return g._name_block
end

local EDGE_CHUNK = 1024 * 1024 -- bytes of edge entries formatted per C call

-- graph:to_json(path): EAP-IG's layout, nodes and edges in EAP-IG's order. Node- and neuron-level
-- graphs (those EAP-IG gives node scores) also write each node's `score`, and neuron-level ones
-- its `neurons` and `neurons_scores` lists, as EAP-IG names them; logits has none of these.
-- The edges (1.6 M on Llama-3-8B) are formatted in C a megabyte at a time: memory stays flat.
function M.to_json(g, path)
  local where = "Graph:to_json"
  local NF, NB, D = g.n_forward, g.n_backward, g.cfg.d_model
  local with_scores = g.level ~= "edge"
  local nig, nsc = g.neurons_in_graph, g.neuron_scores
  local out_len = ffi.new("size_t[1]")
  local neuron_cap = 64 * (D + 1)
  local neuron_text = nig and ffi.new("char[?]", neuron_cap)
  return write_atomic(path, where, function(write_file)
    local write = collecting(write_file)
    local put, flush = chunked(write)
    put('{"cfg": ' .. cfg_json(g.cfg) .. ', "nodes": {')
    for u = 0, NF do
      local name = u == NF and "logits" or g.forward_names[u]
      local entry = fmt('%s"%s": {"in_graph": %s', u == 0 and "" or ", ", name,
        json_bool(g.nodes_in_graph[u] ~= 0))
      if u < NF and with_scores then entry = entry .. ', "score": ' .. json_number(g.node_scores[u]) end
      if u < NF and nig then
        core.check(C.eapig_graph_json_neurons(neuron_text, neuron_cap, out_len, nig + u * D, nsc + u * D, D), where)
        entry = entry .. ", " .. ffi.string(neuron_text, out_len[0])
      end
      put(entry .. "}")
    end
    put('}, "edges": {')
    flush()
    local names = name_block(g)
    local order, n_edges = g:edge_order(), g:n_edges()
    local out, next_edge = ffi.new("char[?]", EDGE_CHUNK), ffi.new("int64_t[1]")
    while next_edge[0] < n_edges do
      core.check(C.eapig_graph_json_edges(out, EDGE_CHUNK, out_len, next_edge, order, n_edges, g.scores,
        g.in_graph, names, #names, NF, NB), where)
      write(ffi.string(out, out_len[0]))
    end
    write("}}\n")
  end)
end

local LEVELS = { [0] = "edge", "node", "neuron" }
local CFG_MAX = 1024 * 1024 -- bytes: a cfg is a few hundred

-- Graph.from_json(path): reads EAP-IG's layout (its own files and ours), streaming: a first pass
-- reads the cfg (and from the node entries, the graph's level), a second parses every node and
-- edge entry in C straight into the new graph's buffers. Edges missing from the file keep score
-- 0 and stay out, as in EAP-IG; an unknown or impossible edge is an error naming it.
function M.from_json(path)
  local where = "Graph.from_json"
  if type(path) ~= "string" then fail("%s: path must be a string, got %s", where, type(path)) end
  local function check(status)
    if status ~= 0 then fail("%s: '%s': %s", where, path, ffi.string(C.eapig_last_error())) end
  end
  files.check_input(path, where) -- a FIFO would block the reader
  local cfg_text, cfg_len, level = ffi.new("char[?]", CFG_MAX), ffi.new("size_t[1]"), ffi.new("int32_t[1]")
  check(C.eapig_graph_json_header(path, cfg_text, CFG_MAX, cfg_len, level))
  local cfg = cjson.decode(ffi.string(cfg_text, cfg_len[0]))
  if type(cfg) ~= "table" then fail("%s: '%s': missing or malformed key 'cfg'", where, path) end
  -- A file lists its edges (tens of bytes each), so a cfg far bigger than the file is a forged
  -- one: refuse it before allocating and then scanning, selecting or writing a huge graph.
  local L, H = tonumber(cfg.n_layers), tonumber(cfg.n_heads)
  if L and H and L >= 1 and H >= 1 then
    local fh = files.open_input(path, where)
    local bytes = fh:seek("end")
    fh:close()
    local NF, NB = Graph.size_of({ n_layers = L, n_heads = H })
    if NF * NB > math.max(MIN_JSON_MATRIX, 2 * bytes) then
      fail("%s: '%s': cfg.n_layers %d and cfg.n_heads %d give a %d x %d edge matrix, far more than a %d-byte " ..
           "file can list", where, path, L, H, NF, NB, bytes)
    end
  end
  local ok, g = pcall(Graph.new, cfg, { level = LEVELS[level[0]] })
  if not ok then fail("%s: '%s': bad cfg: %s", where, path, tostring(g)) end
  local names = name_block(g)
  check(C.eapig_graph_json_read(path, names, #names, g.n_forward, g.n_backward, g.cfg.d_model, g.real,
    g.scores, g.in_graph, g.nodes_in_graph, g.node_scores, g.neurons_in_graph, g.neuron_scores))
  g.nodes_in_graph[g.n_forward] = 1 -- logits is always in
  return g
end

-- ---- safetensors --------------------------------------------------------------------------------
-- A plain safetensors file (eapig.formats.safetensors writes and reads it): the score and mask
-- tensors, and the graph's format, level, cfg and names in __metadata__.

local function names_json(names, first, last)
  local t = {}
  for i = first, last do t[#t + 1] = cjson.encode(names[i]) end
  return "[" .. concat(t, ",") .. "]"
end

-- The tensors of a graph, float32 first so every F32 tensor starts 4-byte aligned.
local function tensor_list(g)
  local NF, NB, D = g.n_forward, g.n_backward, g.cfg.d_model
  local list = {
    { name = "scores", dtype = "F32", shape = { NF, NB }, buf = g.scores, size = 4 },
    { name = "node_scores", dtype = "F32", shape = { NF }, buf = g.node_scores, size = 4 },
  }
  if g.neurons_in_graph then
    list[#list + 1] = { name = "neuron_scores", dtype = "F32", shape = { NF, D }, buf = g.neuron_scores, size = 4 }
  end
  list[#list + 1] = { name = "in_graph", dtype = "U8", shape = { NF, NB }, buf = g.in_graph, size = 1 }
  -- nodes_in_graph holds the source nodes only, as EAP-IG's tensor does (logits is always in)
  list[#list + 1] = { name = "nodes_in_graph", dtype = "U8", shape = { NF }, buf = g.nodes_in_graph, size = 1 }
  if g.neurons_in_graph then
    list[#list + 1] = { name = "neurons_in_graph", dtype = "U8", shape = { NF, D }, buf = g.neurons_in_graph, size = 1 }
  end
  for _, t in ipairs(list) do
    local n = 1
    for _, s in ipairs(t.shape) do n = n * s end
    t.nbytes = n * t.size
    t.data = t.buf
  end
  return list
end

function M.to_safetensors(g, path)
  local where = "Graph:to_safetensors"
  if not ffi.abi("le") then fail("%s: only little-endian machines are supported", where) end
  local meta = {
    { "format", "eapig.graph" },
    { "level", g.level },
    { "cfg", cfg_json(g.cfg) },
    { "forward_names", names_json(g.forward_names, 0, g.n_forward - 1) },
    { "backward_names", names_json(g.backward_names, 0, g.n_backward - 1) },
  }
  safetensors.write(path, tensor_list(g), meta, { where = where, spaced = true })
  return path
end

function M.from_safetensors(path)
  local where = "Graph.from_safetensors"
  if not ffi.abi("le") then fail("%s: only little-endian machines are supported", where) end
  local function bad(msg, ...) fail("%s: '%s': " .. msg, where, path, ...) end
  -- The one safetensors reader checks the header, the offsets and that the tensors tile the file.
  local ok, reader = pcall(safetensors.open, path)
  if not ok then fail("%s: %s", where, tostring(reader)) end
  local meta = reader.metadata
  if type(meta.cfg) ~= "string" then bad("no cfg in __metadata__ (not a graph written by eapig)") end
  local cfg, cerr = cjson.decode(meta.cfg)
  if type(cfg) ~= "table" then bad("__metadata__.cfg is not a JSON object: %s", tostring(cerr)) end
  local level = meta.level or (reader:has("neurons_in_graph") and "neuron" or "edge")
  local g
  ok, g = pcall(Graph.new, cfg, { level = level })
  if not ok then bad("bad cfg: %s", tostring(g)) end

  -- The names pin the layout: a file from another node order must not load silently.
  for _, side in ipairs({ { "forward_names", g.forward_names, g.n_forward }, { "backward_names", g.backward_names, g.n_backward } }) do
    local key, names, n = side[1], side[2], side[3]
    if meta[key] ~= nil then
      local list = cjson.decode(meta[key])
      if type(list) ~= "table" or #list ~= n then bad("__metadata__.%s does not list %d names", key, n) end
      for i = 1, n do
        if list[i] ~= names[i - 1] then
          bad("__metadata__.%s[%d] is '%s', expected '%s'", key, i - 1, tostring(list[i]), names[i - 1])
        end
      end
    end
  end

  local wanted = {}
  for _, t in ipairs(tensor_list(g)) do
    wanted[t.name] = true
    if not reader:has(t.name) then
      if t.name ~= "node_scores" then bad("missing tensor '%s' (a %s-level graph has it)", t.name, g.level) end
    else
      local rok, rerr = pcall(reader.read_bytes, reader, t.name, t.buf, t.dtype, t.shape)
      if not rok then fail("%s: %s (for this cfg and level '%s')", where, tostring(rerr), g.level) end
      -- NaN is a legitimate score (a NaN metric gives one), but eapig writes only the plain quiet
      -- NaN: one with a payload, which LuaJIT could mistake for another value, means a damaged
      -- or forged file. The core makes every NaN plain before Lua reads any, then we refuse.
      if t.dtype == "F32" and C.eapig_floats_canonicalize_nan(t.buf, t.nbytes / 4, first_changed) > 0 then
        bad("tensor '%s': element %d is a NaN with a payload (eapig writes only plain NaN)", t.name,
            tonumber(first_changed[0]))
      end
    end
  end
  for _, name in ipairs(reader:names()) do
    if not wanted[name] then bad("tensor '%s' does not belong to a %s-level graph (__metadata__.level)", name, g.level) end
  end
  reader:close()

  -- Masks hold 0/1, and only real edges can be in the circuit.
  local NF, NB, ig, real = g.n_forward, g.n_backward, g.in_graph, g.real
  for i = 0, NF * NB - 1 do
    if ig[i] ~= 0 then
      if real[i] == 0 then
        local u = floor(i / NB)
        bad("in_graph marks '%s', which is not an edge of this graph", g:edge_name(u, i - u * NB))
      end
      ig[i] = 1
    end
  end
  for u = 0, NF - 1 do
    if g.nodes_in_graph[u] ~= 0 then g.nodes_in_graph[u] = 1 end
  end
  g.nodes_in_graph[NF] = 1
  if g.neurons_in_graph then
    for i = 0, NF * g.cfg.d_model - 1 do
      if g.neurons_in_graph[i] ~= 0 then g.neurons_in_graph[i] = 1 end
    end
  end
  return g
end

-- ---- DOT and drawing ------------------------------------------------------------------------------

-- EAP-IG's edge colours (eap/visualization.py): q, k and v inputs purple, green and blue; other
-- edges red when negative, else black. A negative q/k/v edge keeps its colour and is dashed so
-- the sign still shows.
local QKV_COLOURS = { q = "#FF00FF", k = "#00FF00", v = "#0000FF" }

-- Node fill colours: ColorBrewer's qualitative schemes, the cmap names EAP-IG's to_image takes
-- (colorscheme, default Pastel2).
local SCHEMES = {
  Pastel1 = { "#fbb4ae", "#b3cde3", "#ccebc5", "#decbe4", "#fed9a6", "#ffffcc", "#e5d8bd", "#fddaec", "#f2f2f2" },
  Pastel2 = { "#b3e2cd", "#fdcdac", "#cbd5e8", "#f4cae4", "#e6f5c9", "#fff2ae", "#f1e2cc", "#cccccc" },
  Set1 = { "#e41a1c", "#377eb8", "#4daf4a", "#984ea3", "#ff7f00", "#ffff33", "#a65628", "#f781bf", "#999999" },
  Set2 = { "#66c2a5", "#fc8d62", "#8da0cb", "#e78ac3", "#a6d854", "#ffd92f", "#e5c494", "#b3b3b3" },
  Set3 = { "#8dd3c7", "#ffffb3", "#bebada", "#fb8072", "#80b1d3", "#fdb462", "#b3de69", "#fccde5", "#d9d9d9",
           "#bc80bd", "#ccebc5", "#ffed6f" },
  Accent = { "#7fc97f", "#beaed4", "#fdc086", "#ffff99", "#386cb0", "#f0027f", "#bf5b17", "#666666" },
  Dark2 = { "#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666" },
}
local SCHEME_NAMES = {}
for k in pairs(SCHEMES) do SCHEME_NAMES[#SCHEME_NAMES + 1] = k end
table.sort(SCHEME_NAMES)
M.COLOUR_SCHEMES = SCHEME_NAMES

-- Graphviz layout engines (EAP-IG's `layout`).
local LAYOUTS = { dot = true, neato = true, fdp = true, sfdp = true, circo = true, twopi = true, osage = true,
  patchwork = true }

-- The drawing options (EAP-IG's to_image: colorscheme, minimum_penwidth, maximum_penwidth,
-- layout, seed; and eapig's: title, legend, dot = the Graphviz program).
local DRAW_OPTIONS = { "colorscheme", "minimum_penwidth", "maximum_penwidth", "layout", "seed", "title", "legend",
  "dot" }

local function check_draw_options(opts, where)
  opts = require("eapig.options").check(opts, DRAW_OPTIONS, where)
  if opts.colorscheme ~= nil and not SCHEMES[opts.colorscheme] then
    fail("%s: unknown colorscheme '%s' (one of: %s)", where, tostring(opts.colorscheme), concat(SCHEME_NAMES, ", "))
  end
  if opts.layout ~= nil and not LAYOUTS[opts.layout] then
    fail("%s: unknown layout '%s' (a Graphviz engine: dot, neato, fdp, sfdp, circo, twopi, osage, patchwork)",
      where, tostring(opts.layout))
  end
  for _, k in ipairs({ "minimum_penwidth", "maximum_penwidth", "seed" }) do
    if opts[k] ~= nil and (type(opts[k]) ~= "number" or opts[k] ~= opts[k] or opts[k] < 0) then
      fail("%s: %s must be a number >= 0, got %s", where, k, tostring(opts[k]))
    end
  end
  return opts
end

-- Each node's fill: without a seed, picked from the node's name (the same graph always draws the
-- same way); with a seed, drawn at random from the scheme in node order, as EAP-IG does with
-- np.random.seed(seed), from eapig's own generator (so the same seed gives the same picture).
local function node_colours(g, scheme, seed)
  local colours = {}
  local rng = seed and require("eapig.tasks").rng(seed)
  for name in g:nodes() do
    if rng then
      colours[name] = scheme[rng:below(#scheme) + 1]
    else
      local h = 0
      for i = 1, #name do h = (h * 31 + name:byte(i)) % 16777216 end
      colours[name] = scheme[h % #scheme + 1]
    end
  end
  return colours
end

local function dot_escape(s)
  return (tostring(s):gsub("\\", "\\\\"):gsub('"', '\\"'))
end

-- The legend node: what the edge colours and widths mean (an HTML-like Graphviz label).
local function legend_node()
  local function row(colour, text)
    return fmt('<TR><TD><FONT COLOR="%s">&#9473;&#9473;&#9473;</FONT></TD><TD ALIGN="LEFT">%s</TD></TR>', colour, text)
  end
  return '  legend [shape="plaintext", style="", fillcolor="white", fontname="Helvetica", label=<' ..
    '<TABLE BORDER="1" CELLBORDER="0" CELLSPACING="2" BGCOLOR="white">' ..
    '<TR><TD COLSPAN="2"><B>edges into</B></TD></TR>' ..
    row(QKV_COLOURS.q, "a head's query") .. row(QKV_COLOURS.k, "a head's key") ..
    row(QKV_COLOURS.v, "a head's value") .. row("#000000", "an MLP or the logits") ..
    row("#FF0000", "negative score (dashed on q/k/v)") ..
    '<TR><TD COLSPAN="2">width: |score|</TD></TR></TABLE>>];'
end

-- The DOT source of the circuit (nodes and edges in the circuit). Pen width grows with |score|,
-- rescaled between the smallest and largest |score| of the graph's edges, as EAP-IG does.
-- opts: see DRAW_OPTIONS (graph:draw).
function M.dot_source(g, opts)
  opts = check_draw_options(opts, "Graph:to_dot")
  local min_pw = opts.minimum_penwidth or 0.6
  local max_pw = opts.maximum_penwidth or 5.0
  local lo, hi = huge, -huge
  for _, score in g:edges() do
    local a = math.abs(score)
    if a == a then
      if a < lo then lo = a end
      if a > hi then hi = a end
    end
  end
  local title = opts.title and fmt(', label="%s", labelloc="t", fontname="Helvetica", fontsize="18"',
    dot_escape(opts.title)) or ""
  local out = {
    "digraph eapig {",
    fmt('  graph [bgcolor="white", overlap="false", splines="true", layout="%s"%s];', opts.layout or "dot", title),
    '  node [shape="box", style="filled, rounded", color="black", fontname="Helvetica"];',
  }
  local colours = node_colours(g, SCHEMES[opts.colorscheme or "Pastel2"], opts.seed)
  for name, _, in_graph in g:nodes() do
    if in_graph then out[#out + 1] = fmt('  "%s" [fillcolor="%s"];', name, colours[name]) end
  end
  for name, score, in_graph, u, v in g:edges() do
    if in_graph then
      local a = math.abs(score)
      local norm = hi > lo and (a - lo) / (hi - lo) or a
      if norm ~= norm then norm = 0 end
      local pw = math.max(min_pw, norm * max_pw)
      local dst = g.backward_names[v]
      local child, qkv = dst:match("^(.-)<(%a)>$")
      local colour = QKV_COLOURS[qkv] or (score < 0 and "#FF0000" or "#000000")
      local style = (qkv and score < 0) and ', style="dashed"' or ""
      out[#out + 1] = fmt('  "%s" -> "%s" [penwidth="%.4g", color="%s"%s, tooltip="%s %.6g"];',
        g.forward_names[u], child or dst, pw, colour, style, name, score)
    end
  end
  if opts.legend then out[#out + 1] = legend_node() end
  out[#out + 1] = "}\n"
  return concat(out, "\n")
end

function M.to_dot(g, path, opts)
  local source = M.dot_source(g, opts)
  return write_atomic(path, "Graph:to_dot", function(write) write(source) end)
end

local function shell_quote(s)
  return "'" .. s:gsub("'", "'\\''") .. "'"
end

local function succeeded(status)
  return status == 0 or status == true -- LuaJIT gives the exit status, Lua 5.2 mode a boolean
end

-- graph:draw(path, opts): renders the circuit with Graphviz into .svg, .png or .pdf (by the
-- file's suffix); .dot writes the source. opts: colorscheme ("Pastel2"; see M.COLOUR_SCHEMES),
-- minimum_penwidth (0.6), maximum_penwidth (5.0), layout (the Graphviz engine, "dot"), seed
-- (random node colours from this seed; default: by node name), title, legend (true: a key to the
-- edge colours), dot (the Graphviz program, "dot").
function M.draw(g, path, opts)
  local where = "Graph:draw"
  if type(path) ~= "string" then fail("%s: path must be a string, got %s", where, type(path)) end
  opts = check_draw_options(opts, where)
  local ext = (path:match("%.([%w]+)$") or ""):lower()
  if ext == "dot" or ext == "gv" then return M.to_dot(g, path, opts) end
  if ext ~= "svg" and ext ~= "png" and ext ~= "pdf" then
    fail("%s: cannot draw into '%s': use a .svg, .png, .pdf or .dot file", where, path)
  end
  local dot = opts.dot or "dot"
  if type(dot) ~= "string" then fail("%s: dot must be the Graphviz program's name or path", where) end
  if not succeeded(os.execute("command -v " .. shell_quote(dot) .. " >/dev/null 2>&1")) then
    fail("%s: Graphviz's `%s` program was not found; install Graphviz (e.g. apt install graphviz) " ..
      "or write the source with graph:to_dot(path)", where, dot)
  end
  -- dot renders into a private temporary file; the picture then goes through the one atomic
  -- writer like every other output (so --out may be a symlink, a FIFO or /dev/null too).
  local src, picture, errfile = os.tmpname(), os.tmpname(), os.tmpname()
  local function cleanup()
    os.remove(src)
    os.remove(picture)
    os.remove(errfile)
  end
  local fh = io.open(src, "wb")
  if not fh or not fh:write(M.dot_source(g, opts)) then
    if fh then fh:close() end
    cleanup()
    fail("%s: cannot write a temporary file '%s'", where, src)
  end
  fh:close()
  local status = os.execute(fmt("%s -T%s -o %s %s 2>%s", shell_quote(dot), ext, shell_quote(picture),
    shell_quote(src), shell_quote(errfile)))
  fh = io.open(errfile, "rb")
  local message = fh and fh:read("*a") or ""
  if fh then fh:close() end
  if not succeeded(status) then
    cleanup()
    -- dot's first line says what went wrong; the rest is its own detail, kept out of ours
    message = message:match("^%s*([^\n]*)") or ""
    if #message > 200 then message = message:sub(1, 200) .. "..." end
    fail("%s: `%s` failed: %s", where, dot, message ~= "" and message:gsub("%s+$", "") or "no message")
  end
  fh = io.open(picture, "rb")
  local content = fh and fh:read("*a")
  if fh then fh:close() end
  cleanup()
  if not content then fail("%s: `%s` wrote no picture", where, dot) end
  write_atomic(path, where, content)
  return path
end

return M
