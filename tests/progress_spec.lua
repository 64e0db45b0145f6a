-- eapig.progress: a bar on a terminal, one line per phase elsewhere, and wall time (not os.clock,
-- which stands still while the process waits and races ahead with every BLAS thread).
local Progress = require("eapig.progress")

-- A stream that records what is written.
local function sink()
  local s = { text = "" }
  function s.write(self, ...)
    for i = 1, select("#", ...) do self.text = self.text .. select(i, ...) end
    return self
  end
  function s.flush() end
  return s
end

describe("eapig.progress", function()
  it("off a terminal writes nothing while running and one line when the phase ends", function()
    local out = sink()
    local p = Progress.new("evaluate", 3, { terminal = false, stream = out })
    p:step()
    p:step(2)
    assert.equal("", out.text)
    p:finish()
    assert.matches("^evaluate: 3/3 in %d+%.%ds\n$", out.text)
  end)

  it("on a terminal redraws one bar in place and ends it with a newline", function()
    local out = sink()
    local p = Progress.new("EAP", 4, { terminal = true, stream = out })
    for _ = 1, 4 do p:step(1, "loss 1.0000") end
    p:finish()
    assert.matches("^\rEAP %[#+%.+%]  25%% 1/4 %d+%.%ds  loss 1%.0000\r", out.text)
    assert.matches("\rEAP %[#+%] 100%% 4/4 %d+%.%ds  loss 1%.0000\n$", out.text)
    assert.equal(1, select(2, out.text:gsub("\n", ""))) -- only the final one
    -- clear() erases the bar for a log line; the next update draws it again
    local out2 = sink()
    local q = Progress.new("train", 2, { terminal = true, stream = out2 })
    q:update(1)
    q:clear()
    assert.matches("\r\27%[K$", out2.text)
    q:update(1)
    assert.matches("\27%[K\rtrain %[", out2.text)
  end)

  it("quiet writes nothing at all", function()
    local out = sink()
    local p = Progress.new("x", 2, { quiet = true, terminal = false, stream = out })
    p:step(2)
    p:finish()
    assert.equal("", out.text)
  end)

  it("measures wall time: a wait in another process counts", function()
    local p = Progress.new("wait", 1, { terminal = false, stream = sink() })
    local c0 = os.clock()
    os.execute("sleep 0.3")
    assert.is_true(p:elapsed() >= 0.25, tostring(p:elapsed()))
    assert.is_true(os.clock() - c0 < 0.25, "os.clock would not have seen the wait")
  end)
end)
