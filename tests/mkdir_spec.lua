-- files.mkdir_p (`eapig demo --out DIR` creates DIR): nested creation, an existing folder, and a
-- file in the way, which is an error naming the caller and the path.
local files = require("eapig.formats.files")
local testing = require("eapig.testing")

describe("files.mkdir_p", function()
  local tmp
  before_each(function() tmp = testing.tmpdir() end)
  after_each(function() testing.rmtree(tmp) end)

  it("creates a folder and its missing parents, and accepts one that exists", function()
    local dir = tmp .. "/a/b/c"
    assert.equal(dir, files.mkdir_p(dir, "test"))
    assert.is_true(files.is_dir(dir))
    files.mkdir_p(dir, "test")
    files.mkdir_p(tmp .. "/a/b/c/", "test")
    assert.is_true(files.is_dir(dir))
  end)

  it("refuses a file in the way, naming the caller and the path", function()
    local f = assert(io.open(tmp .. "/file", "wb"))
    f:close()
    local ok, err = pcall(files.mkdir_p, tmp .. "/file/sub", "demo --out")
    assert.is_false(ok)
    local want = "demo --out: cannot create the folder '" .. tmp .. "/file': a file is in the way"
    assert.is_truthy(err:find(want, 1, true), err)
  end)

  it("refuses an empty path", function()
    local ok, err = pcall(files.mkdir_p, "", "demo --out")
    assert.is_false(ok)
    assert.matches("demo %-%-out: folder must be a non%-empty string", err)
  end)
end)
