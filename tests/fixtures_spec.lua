-- Every case of ../shared/fixtures/manifest.json: forward logits, attribution scores, circuit
-- selection and evaluation against an independent PyTorch implementation of EAP-IG, within the
-- tolerances its README states. Skips with a message when ../shared is absent.
package.path = "./tests/?.lua;" .. package.path
require("support.fixtures").run("../shared/fixtures", "fixtures",
  { describe = describe, it = it, pending = pending, assert = assert })
