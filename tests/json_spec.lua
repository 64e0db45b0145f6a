-- eapig.formats.json, the one JSON writer: key order, arrays, numbers, strings, layout.
local cjson = require("cjson")
local json = require("eapig.formats.json")

describe("eapig.formats.json", function()
  it("sorts keys, or keeps the order json.ordered gives (a missing key is null)", function()
    assert.are.equal('{"a": 1, "b": [1, 2], "c": {"x": true}}', json.encode({ c = { x = true }, b = { 1, 2 }, a = 1 }))
    assert.are.equal('{"z": 1, "a": null, "m": "s"}', json.encode(json.ordered({ z = 1, m = "s" }, { "z", "a", "m" })))
  end)

  it("writes empty arrays and objects, null, and strings with '/' unescaped", function()
    assert.are.equal('{"a": [], "b": {}, "c": null, "d": "x/y\\n\\""}',
      json.encode({ a = json.array({}), b = {}, c = cjson.null, d = 'x/y\n"' }))
  end)

  it("writes numbers that read back exactly, integers in full, non-finite ones as null", function()
    local values = { 0.1, 1 / 3, 1e-5, -2.5e300, 2 ^ 52 + 1, -7, 123456789012, 1e-310 }
    local back = cjson.decode(json.encode(values))
    for i, v in ipairs(values) do assert.are.equal(v, back[i]) end
    assert.are.equal("[0.1, 4503599627370497, -7]", json.encode({ 0.1, 2 ^ 52 + 1, -7 }))
    assert.are.equal("[null, null, null]", json.encode({ 0 / 0, math.huge, -math.huge }))
  end)

  it("indents one entry per line with opts.indent", function()
    assert.are.equal('{\n  "a": [\n    1,\n    2\n  ],\n  "b": {}\n}', json.encode({ a = { 1, 2 }, b = {} }, { indent = "  " }))
  end)
end)
