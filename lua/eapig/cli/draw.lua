-- `eapig draw --graph CIRCUIT.json --out FILE.svg|.png|.pdf|.dot`: the circuit's nodes and edges
-- through Graphviz (q/k/v edges coloured as EAP-IG draws them, pen width from |score|, negative
-- scores red). A .dot suffix writes the source and needs no Graphviz.
local cli = require("eapig.cli")

local FORMATS = { "svg", "png", "pdf", "dot", "gv" }

return function(argv)
  local parser = cli.parser("draw", "Render a circuit with Graphviz, or write its DOT source.",
    "Rendering runs Graphviz's `dot` program (apt install graphviz); .dot output does not need it.")
  parser:option("--graph", "Circuit (.json, or .safetensors) from eapig circuit."):argname("CIRCUIT"):count(1)
  parser:option("--out", "Picture to write: .svg, .png, .pdf, or .dot for the source."):argname("FILE"):count(1)
  local args = cli.parse(parser, argv, "draw")

  cli.check_out_suffix(args.out, FORMATS, "pictures")
  cli.check_writable(args.out)
  local graph = cli.load_graph(args.graph)
  if graph:count_included_edges() == 0 then
    cli.fail("draw: the graph '%s' has no edges in its circuit (select one with eapig circuit)", args.graph)
  end
  graph:draw(args.out)
  return 0
end
